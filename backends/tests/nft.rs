//! nftables: PodMasq rule sets, checked against `nft list` output, all inside a private netns
//! (nft inherits the namespace of the thread that spawns it).

mod common;

use std::net::IpAddr;
use std::process::Command;

use backends::kernel::nft::{self, MASQ_TABLE, PodMasq};
use common::{in_new_netns, prerequisites};

fn nft_list(args: &[&str]) -> String {
    let out = Command::new("nft")
        .arg("list")
        .args(args)
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft list {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn pod_masq_v4_ruleset_and_lifecycle() {
    if !prerequisites(&["nft"]) {
        return;
    }
    in_new_netns(|| async {
        let m = PodMasq::new("cbr0");
        let (set, chain) = (m.set_name(), m.chain_name());
        assert!(set.starts_with("masq-") && chain.starts_with("post-"));
        assert_eq!(set[5..], chain[5..]);
        assert_eq!(PodMasq::new("cbr0").set_name(), set, "names must be stable");
        assert_ne!(PodMasq::new("other").set_name(), set);

        assert!(
            m.elements().unwrap().is_empty(),
            "no table yet: no elements, no error"
        );
        assert!(!m.contains(ip("10.244.1.5")).unwrap());

        m.add("10.244.1.5/24".parse().unwrap(), "cid1", "eth0")
            .unwrap();
        let expected = format!(
            "table ip {MASQ_TABLE} {{\n\
             \tset {set} {{\n\
             \t\ttype ipv4_addr\n\
             \t\telements = {{ 10.244.1.5 comment \"cid1/eth0\" }}\n\
             \t}}\n\
             \n\
             \tchain {chain} {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr @{set} ip daddr != 10.244.1.0/24 ip daddr != 224.0.0.0/4 masquerade\n\
             \t}}\n\
             }}\n"
        );
        assert_eq!(nft_list(&["table", "ip", MASQ_TABLE]), expected);

        // Idempotent add; a second pod; still exactly one rule.
        m.add("10.244.1.5/24".parse().unwrap(), "cid1", "eth0")
            .unwrap();
        m.add("10.244.1.6/24".parse().unwrap(), "cid2", "net1")
            .unwrap();
        let listed = nft_list(&["table", "ip", MASQ_TABLE]);
        assert_eq!(listed.matches("masquerade").count(), 1, "{listed}");
        let mut els = m.elements().unwrap();
        els.sort();
        assert_eq!(
            els,
            vec![
                (ip("10.244.1.5"), "cid1/eth0".to_string()),
                (ip("10.244.1.6"), "cid2/net1".to_string())
            ]
        );
        assert!(m.contains(ip("10.244.1.5")).unwrap());
        assert!(!m.contains(ip("10.244.1.7")).unwrap());
        assert!(
            !m.contains(ip("fd10:244:1::5")).unwrap(),
            "no ip6 table yet"
        );

        // A second network gets its own chain and set in the same table.
        let other = PodMasq::new("other-net");
        other
            .add("10.244.9.5/24".parse().unwrap(), "cid9", "eth0")
            .unwrap();
        assert!(!m.contains(ip("10.244.9.5")).unwrap());
        assert_eq!(
            other.elements().unwrap(),
            vec![(ip("10.244.9.5"), "cid9/eth0".to_string())]
        );

        // Remove is idempotent, also for addresses never added and networks never set up.
        m.remove(ip("10.244.1.5")).unwrap();
        m.remove(ip("10.244.1.5")).unwrap();
        m.remove(ip("10.244.1.200")).unwrap();
        PodMasq::new("never-used").remove(ip("10.244.1.5")).unwrap();
        PodMasq::new("never-used")
            .remove(ip("fd10:244:1::5"))
            .unwrap();
        assert!(!m.contains(ip("10.244.1.5")).unwrap());
        assert_eq!(
            m.elements().unwrap(),
            vec![(ip("10.244.1.6"), "cid2/net1".to_string())]
        );

        // Bad input is rejected before nft runs, and nothing changes.
        let e = m
            .add("10.244.1.7/24".parse().unwrap(), "bad\"id", "eth0")
            .unwrap_err();
        assert!(matches!(e, nft::NftError::InvalidInput { .. }), "{e:?}");
        assert!(!m.contains(ip("10.244.1.7")).unwrap());

        // delete_all drops this network's chain and set, leaving the other network alone.
        m.delete_all().unwrap();
        m.delete_all().unwrap();
        assert!(m.elements().unwrap().is_empty());
        let listed = nft_list(&["table", "ip", MASQ_TABLE]);
        assert!(
            !listed.contains(&set) && !listed.contains(&chain),
            "{listed}"
        );
        assert!(listed.contains(&other.set_name()), "{listed}");
    });
}

#[test]
fn pod_masq_v6_ruleset() {
    if !prerequisites(&["nft"]) {
        return;
    }
    in_new_netns(|| async {
        let m = PodMasq::new("cbr0");
        let (set, chain) = (m.set_name(), m.chain_name());
        m.add("fd10:244:1::5/64".parse().unwrap(), "cid1", "eth0")
            .unwrap();
        let expected = format!(
            "table ip6 {MASQ_TABLE} {{\n\
             \tset {set} {{\n\
             \t\ttype ipv6_addr\n\
             \t\telements = {{ fd10:244:1::5 comment \"cid1/eth0\" }}\n\
             \t}}\n\
             \n\
             \tchain {chain} {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip6 saddr @{set} ip6 daddr != fd10:244:1::/64 ip6 daddr != ff00::/8 masquerade\n\
             \t}}\n\
             }}\n"
        );
        assert_eq!(nft_list(&["table", "ip6", MASQ_TABLE]), expected);
        m.add("10.244.1.5/24".parse().unwrap(), "cid1", "eth0")
            .unwrap();
        let mut els = m.elements().unwrap();
        els.sort();
        assert_eq!(
            els,
            vec![
                (ip("10.244.1.5"), "cid1/eth0".to_string()),
                (ip("fd10:244:1::5"), "cid1/eth0".to_string())
            ]
        );
        m.remove(ip("fd10:244:1::5")).unwrap();
        m.remove(ip("fd10:244:1::5")).unwrap();
        assert_eq!(
            m.elements().unwrap(),
            vec![(ip("10.244.1.5"), "cid1/eth0".to_string())]
        );
    });
}

#[test]
fn apply_is_atomic_and_reports_nft_errors() {
    if !prerequisites(&["nft"]) {
        return;
    }
    in_new_netns(|| async {
        // The second line is invalid, so the first must not take effect either.
        let e =
            nft::apply("add table ip atomic_t\nadd chain ip atomic_t c { bogus }\n").unwrap_err();
        match &e {
            nft::NftError::Failed { stderr, .. } => assert!(stderr.contains("Error"), "{stderr}"),
            other => panic!("unexpected {other:?}"),
        }
        let e = nft::list_json("table ip atomic_t").unwrap_err();
        assert!(e.is_not_found(), "{e:?}");

        nft::apply("add table ip atomic_t\n").unwrap();
        let j = nft::list_json("table ip atomic_t").unwrap();
        let names: Vec<&str> = j["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("table")?.get("name")?.as_str())
            .collect();
        assert_eq!(names, vec!["atomic_t"]);
    });
}

#[test]
fn node_masq_table_exact_drift_repair_and_remove() {
    use backends::masq::{EnsureOutcome, MasqSpec, NodeMasq};
    if !prerequisites(&["nft"]) {
        return;
    }
    in_new_netns(|| async {
        let spec = MasqSpec {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.7.0/24".parse().unwrap(),
            masquerade: true,
            forward: true,
            fully_random: true,
        };
        let mut m = NodeMasq::new();
        assert_eq!(m.ensure(spec).unwrap(), EnsureOutcome::Installed);
        // Exactly what `nft list` prints for flannel's rule set; written by hand, not derived.
        let expected = "table ip flannel-rs {\n\
             \tchain postrtg {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark & 0x00004000 == 0x00004000 return\n\
             \t\tip saddr 10.244.7.0/24 ip daddr 10.244.0.0/16 return\n\
             \t\tip saddr 10.244.0.0/16 ip daddr 10.244.7.0/24 return\n\
             \t\tip saddr != 10.244.0.0/16 ip daddr 10.244.7.0/24 return\n\
             \t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
             \t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n\
             \t}\n\
             \n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr 10.244.0.0/16 accept\n\
             \t\tip daddr 10.244.0.0/16 accept\n\
             \t}\n\
             }\n";
        assert_eq!(nft_list(&["table", "ip", "flannel-rs"]), expected);

        // A second ensure with no drift changes nothing.
        assert_eq!(m.ensure(spec).unwrap(), EnsureOutcome::Unchanged);

        // Drift: an operator flushes a chain. The next ensure restores the exact table.
        nft::apply("flush chain ip flannel-rs postrtg\n").unwrap();
        assert_eq!(m.ensure(spec).unwrap(), EnsureOutcome::Installed);
        assert_eq!(nft_list(&["table", "ip", "flannel-rs"]), expected);

        // Drift: the table is deleted.
        nft::apply("delete table ip flannel-rs\n").unwrap();
        assert_eq!(m.ensure(spec).unwrap(), EnsureOutcome::Installed);
        assert_eq!(nft_list(&["table", "ip", "flannel-rs"]), expected);

        // Forward rules only: the masquerade chain disappears in the same transaction.
        let fwd_only = MasqSpec {
            masquerade: false,
            ..spec
        };
        assert_eq!(m.ensure(fwd_only).unwrap(), EnsureOutcome::Installed);
        let listing = nft_list(&["table", "ip", "flannel-rs"]);
        assert!(!listing.contains("postrtg"), "{listing}");
        assert!(
            listing.contains("ip saddr 10.244.0.0/16 accept"),
            "{listing}"
        );

        m.remove().unwrap();
        m.remove().unwrap();
        assert!(backends::masq::list_table().unwrap().is_none());
    });
}

#[test]
fn node_masq_ipv6_table_exact_and_independent_of_the_ipv4_one() {
    use backends::kernel::netlink::IpFamily;
    use backends::masq::{EnsureOutcome, MasqSpec, NodeMasq};
    if !prerequisites(&["nft"]) {
        return;
    }
    in_new_netns(|| async {
        let v4 = MasqSpec {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.7.0/24".parse().unwrap(),
            masquerade: true,
            forward: true,
            fully_random: true,
        };
        let v6 = MasqSpec {
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet: "fd00:10:244:7::/64".parse().unwrap(),
            ..v4
        };
        let (mut m4, mut m6) = (NodeMasq::new(), NodeMasq::for_family(IpFamily::V6));
        assert_eq!(m4.ensure(v4).unwrap(), EnsureOutcome::Installed);
        assert_eq!(m6.ensure(v6).unwrap(), EnsureOutcome::Installed);
        // What `nft list` prints for flannel's masqIP6Rules; written by hand, not derived.
        let expected = "table ip6 flannel-rs {\n\
             \tchain postrtg {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark & 0x00004000 == 0x00004000 return\n\
             \t\tip6 saddr fd00:10:244:7::/64 ip6 daddr fd00:10:244::/56 return\n\
             \t\tip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:7::/64 return\n\
             \t\tip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:7::/64 return\n\
             \t\tip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random\n\
             \t\tip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random\n\
             \t}\n\
             \n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip6 saddr fd00:10:244::/56 accept\n\
             \t\tip6 daddr fd00:10:244::/56 accept\n\
             \t}\n\
             }\n";
        assert_eq!(nft_list(&["table", "ip6", "flannel-rs"]), expected);
        assert_eq!(m6.ensure(v6).unwrap(), EnsureOutcome::Unchanged);
        assert_eq!(m4.ensure(v4).unwrap(), EnsureOutcome::Unchanged);

        // Deleting the IPv6 table is drift for the IPv6 keeper only.
        nft::apply("delete table ip6 flannel-rs\n").unwrap();
        assert_eq!(m4.ensure(v4).unwrap(), EnsureOutcome::Unchanged);
        assert_eq!(m6.ensure(v6).unwrap(), EnsureOutcome::Installed);
        assert_eq!(nft_list(&["table", "ip6", "flannel-rs"]), expected);

        m6.remove().unwrap();
        assert!(
            backends::masq::list_family_table(IpFamily::V6)
                .unwrap()
                .is_none()
        );
        assert!(backends::masq::list_table().unwrap().is_some(), "v4 kept");
    });
}

/// Checking a bare host's iptables (flanneld's start-up: flannel's leftover chains, and
/// whether FORWARD may drop pod traffic), for both families and both flavours, must not
/// create legacy x_tables tables: `iptables-legacy-save -t nat` would create the nat table
/// and put connection tracking on every packet of the node (measured: a few % of pod-to-pod
/// throughput). On a host that has the tables, they are read as before.
#[test]
fn checking_a_bare_hosts_iptables_creates_no_tables() {
    use backends::kernel::iptables::{FlavorOutcome, ForwardRules, legacy_table_exists};
    use backends::kernel::netlink::IpFamily;
    if !prerequisites(&[
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "iptables-nft-save",
        "ip6tables-nft-save",
    ]) {
        return;
    }
    in_new_netns(|| async {
        let tables = |family| {
            ["filter", "nat"]
                .into_iter()
                .filter(|t| legacy_table_exists(family, t))
                .collect::<Vec<_>>()
        };
        assert!(
            backends::kernel::iptables::remove_flannel_chains()
                .unwrap()
                .is_empty()
        );
        for net in ["10.244.0.0/16", "fd00:10:244::/56"] {
            let outcomes = ForwardRules::ensure(net.parse().unwrap()).unwrap();
            assert!(
                outcomes.iter().all(|(_, o)| *o == FlavorOutcome::NotNeeded),
                "{net}: {outcomes:?}"
            );
        }
        assert_eq!(tables(IpFamily::V4), Vec::<&str>::new());
        assert_eq!(tables(IpFamily::V6), Vec::<&str>::new());
        let ruleset = Command::new("nft")
            .args(["list", "ruleset"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&ruleset.stdout).trim(), "");

        // A host whose legacy FORWARD drops: the table exists, is read and gets our jump.
        let out = Command::new("ip6tables-legacy")
            .args(["-P", "FORWARD", "DROP"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(legacy_table_exists(IpFamily::V6, "filter"));
        let outcomes = ForwardRules::ensure("fd00:10:244::/56".parse().unwrap()).unwrap();
        assert!(
            outcomes.contains(&(
                backends::kernel::iptables::Flavor::Legacy,
                FlavorOutcome::Installed
            )),
            "{outcomes:?}"
        );
        assert!(
            !legacy_table_exists(IpFamily::V6, "nat"),
            "nat still untouched"
        );
    });
}
