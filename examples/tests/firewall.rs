//! Hardened hosts: every node namespace gets the firewall Docker leaves behind —
//! `iptables -P FORWARD DROP`, a `DOCKER-USER` chain jumped to from `FORWARD`, plus an
//! operator's own `DROP` rule — in the legacy or the nft flavour of iptables, before flanneld
//! starts. Then, for vxlan, host-gw, udp and wireguard: the ping/TCP matrix (same-node pairs included),
//! our rule, the `--ip-blackhole-route` route and the backend's device deleted by hand and put
//! back, a restart, a node leaving, and `flanneld --cleanup`
//! removing our rules while the operator's stay exactly as they were.

use std::time::Duration;

use flannel_examples::cluster::{Backend, Cluster, ClusterSpec, Pod, wait_until};

mod common;
use common::assert_full_mesh;

const JUMP: &str = "-A FORWARD -m comment --comment \"flannel-rs forward\" -j FLANNEL-RS-FWD";

fn prerequisites(test: &str) -> bool {
    flannel_examples::cluster::prerequisites(
        test,
        &[
            "iptables-legacy",
            "iptables-nft",
            "iptables-legacy-save",
            "iptables-nft-save",
        ],
    )
}

fn sh(c: &Cluster, i: usize, args: &[&str]) -> String {
    let out = c.node_exec(i, args);
    assert!(
        out.status.success(),
        "{args:?} on node {}: {}",
        i + 1,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Docker's FORWARD shape and an operator rule, in `flavor` (`legacy` or `nft`).
fn harden(c: &Cluster, i: usize, flavor: &str) {
    let ipt = format!("iptables-{flavor}");
    for rule in [
        &["-P", "FORWARD", "DROP"][..],
        &["-N", "DOCKER-USER"],
        &["-A", "DOCKER-USER", "-j", "RETURN"],
        &["-A", "FORWARD", "-j", "DOCKER-USER"],
        &["-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "DROP"],
    ] {
        let mut args = vec![ipt.as_str()];
        args.extend_from_slice(rule);
        sh(c, i, &args);
    }
}

/// The operator's part of `iptables-save -t filter`: every line but ours and the counters.
fn operator_rules(c: &Cluster, i: usize, flavor: &str) -> Vec<String> {
    sh(c, i, &[&format!("iptables-{flavor}-save"), "-t", "filter"])
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("FLANNEL-RS-FWD"))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string())
        .collect()
}

fn save(c: &Cluster, i: usize, flavor: &str) -> String {
    sh(c, i, &[&format!("iptables-{flavor}-save"), "-t", "filter"])
}

fn scenario(flavor: &str, backend: Backend) {
    let name = format!("forward_drop_{flavor}_{}", backend.type_name());
    if !prerequisites(&name) {
        return;
    }
    let mut spec = ClusterSpec::new(3, backend);
    spec.start_daemons = false;
    spec.flanneld_args = vec![
        "--iptables-resync".into(),
        "1".into(),
        "--ip-blackhole-route".into(),
    ];
    let mut c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    for i in 0..3 {
        harden(&c, i, flavor);
    }
    let before: Vec<Vec<String>> = (0..3).map(|i| operator_rules(&c, i, flavor)).collect();
    for i in 0..3 {
        c.start_flanneld(i).expect("start flanneld");
    }
    for i in 0..3 {
        c.wait_subnet_env(i, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut pods: Vec<Pod> = Vec::new();
    for i in 0..3 {
        pods.push(c.add_pod(i, "a").expect("ADD"));
    }
    pods.push(c.add_pod(0, "b").expect("ADD")); // a same-node pair on node 1
    for i in 0..3 {
        let rules = save(&c, i, flavor);
        let first = rules.lines().find(|l| l.starts_with("-A FORWARD"));
        assert_eq!(
            first,
            Some(JUMP),
            "node {}: our jump is not first:\n{rules}",
            i + 1
        );
    }
    assert_full_mesh(&c, &pods, true);

    // --ip-blackhole-route: below the bridge's route, and put back when deleted.
    let blackhole = |c: &Cluster, i: usize| sh(c, i, &["ip", "route", "show", "type", "blackhole"]);
    let s1 = c.node_subnet(0).expect("subnet");
    let want = format!("blackhole {s1} proto 150 metric 4294901760");
    assert!(blackhole(&c, 0).contains(&want), "{}", blackhole(&c, 0));
    sh(
        &c,
        0,
        &[
            "ip",
            "route",
            "del",
            "blackhole",
            &s1,
            "metric",
            "4294901760",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(10), || blackhole(&c, 0).contains(&want)),
        "blackhole route not restored"
    );

    // Someone deletes our jump: it is back within the resync period, first again.
    sh(
        &c,
        1,
        &[
            &format!("iptables-{flavor}"),
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "flannel-rs forward",
            "-j",
            "FLANNEL-RS-FWD",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            save(&c, 1, flavor)
                .lines()
                .find(|l| l.starts_with("-A FORWARD"))
                == Some(JUMP)
        }),
        "our jump was not restored:\n{}\n{}",
        save(&c, 1, flavor),
        c.flanneld_log(1)
    );

    // The backend's device deleted by hand: put back with its peers.
    let device = match backend {
        Backend::Vxlan => Some("flannel.1"),
        Backend::Udp => Some("flannel0"),
        Backend::Wireguard => Some("flannel-wg"),
        Backend::HostGw => None,
    };
    if let Some(dev) = device {
        sh(&c, 1, &["ip", "link", "del", dev]);
        assert!(
            wait_until(Duration::from_secs(10), || {
                c.node_exec(1, &["ip", "link", "show", dev])
                    .status
                    .success()
            }),
            "{dev} not restored"
        );
        assert_full_mesh(&c, &pods, false);
    }

    // A restart keeps traffic flowing.
    c.stop_flanneld(2);
    c.start_flanneld(2).expect("restart");
    c.wait_ready(2, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_full_mesh(&c, &pods, false);

    // Node 3 leaves: the others remove its routes.
    let s3 = c.node_subnet(2).expect("subnet");
    c.stop_flanneld(2);
    c.etcdctl(&["del", &Cluster::lease_key(&s3)]).expect("del");
    for i in 0..2 {
        assert!(
            wait_until(Duration::from_secs(15), || {
                !c.node_routes(i).iter().any(|(d, _, _)| *d == s3)
            }),
            "node {} still routes to the departed {s3}",
            i + 1
        );
    }

    // Uninstall: our rules go, the operator's stay exactly as they were.
    let subnets: Vec<Option<String>> = (0..3).map(|i| c.node_subnet(i)).collect();
    for (i, operator_before) in before.iter().enumerate() {
        c.stop_flanneld(i);
        let endpoint = c.etcd_endpoint();
        let subnet_file = c.nodes[i].subnet_file();
        let mut args = vec![
            c.flanneld_binary().to_str().unwrap(),
            "--cleanup",
            "--subnet-file",
            subnet_file.to_str().unwrap(),
        ];
        // Node 1 is retired: its lease goes too.
        if i == 0 {
            args.extend(["--etcd-endpoints", &endpoint, "--release-lease-on-shutdown"]);
        }
        let out = c.node_exec(i, &args);
        assert!(
            out.status.success(),
            "cleanup on node {}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        let after = save(&c, i, flavor);
        assert!(
            !after.contains("FLANNEL-RS-FWD"),
            "node {}:\n{after}",
            i + 1
        );
        assert_eq!(
            &operator_rules(&c, i, flavor),
            operator_before,
            "node {}",
            i + 1
        );
        assert!(!c.nodes[i].subnet_file().exists());
        let left = sh(&c, i, &["ip", "route", "show", "type", "blackhole"]);
        assert!(left.trim().is_empty(), "node {}: {left}", i + 1);
        let proto150 = sh(&c, i, &["ip", "route", "show", "proto", "150"]);
        assert!(proto150.trim().is_empty(), "node {}: {proto150}", i + 1);
        let links = sh(&c, i, &["ip", "-o", "link", "show"]);
        assert!(
            !links.contains("flannel.1")
                && !links.contains("flannel0")
                && !links.contains("flannel-wg"),
            "node {}: {links}",
            i + 1
        );
        let nft = c.node_exec(i, &["nft", "list", "table", "ip", "flannel-rs"]);
        assert!(
            !nft.status.success(),
            "node {}: nft table still there",
            i + 1
        );
    }
    let s1 = subnets[0].as_deref().expect("node 1 subnet");
    assert_eq!(
        c.etcd_get(&Cluster::lease_key(s1)),
        None,
        "node 1's lease kept"
    );
    let s2 = subnets[1].as_deref().expect("node 2 subnet");
    assert!(
        c.etcd_get(&Cluster::lease_key(s2)).is_some(),
        "node 2's lease lost"
    );
}

#[test]
fn forward_drop_legacy_vxlan() {
    scenario("legacy", Backend::Vxlan);
}

#[test]
fn forward_drop_legacy_host_gw() {
    scenario("legacy", Backend::HostGw);
}

#[test]
fn forward_drop_legacy_udp() {
    scenario("legacy", Backend::Udp);
}

#[test]
fn forward_drop_nft_vxlan() {
    scenario("nft", Backend::Vxlan);
}

#[test]
fn forward_drop_nft_host_gw() {
    scenario("nft", Backend::HostGw);
}

#[test]
fn forward_drop_nft_udp() {
    scenario("nft", Backend::Udp);
}

#[test]
fn forward_drop_nft_wireguard() {
    scenario("nft", Backend::Wireguard);
}
