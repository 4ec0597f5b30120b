//! External interface selection (`--iface`, `--iface-regex`, `--iface-can-reach`,
//! `--public-ip`, default route) against real links, in a private network namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use backends::kernel::netlink::Netlink;
use flannel_testkit::require_root;
use flanneld::iface::{IfaceSelector, SelectedInterface, select};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `body` on a thread inside a fresh network namespace holding:
/// `ul0` 198.18.0.1/24 and fd00:198:18::1/64 (default routes via 198.18.0.254 and
/// fd00:198:18::fe), `ul1` 198.19.5.7/24 (route to 198.19.128.0/17) and fd00:198:19::7/64,
/// `ul2` with only fd00:198:1a::9/64, `lo`.
fn in_topology(body: impl FnOnce(Netlink, tokio::runtime::Runtime) + Send + 'static) {
    if !require_root("iface selection tests need network namespaces") {
        return;
    }
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        ip(&["link", "set", "lo", "up"]);
        for (dev, addr) in [
            ("ul0", "198.18.0.1/24"),
            ("ul1", "198.19.5.7/24"),
            ("ul2", ""),
        ] {
            // A veth pair (this kernel has no dummy driver); the peer stays down, so the
            // routes below need `onlink`.
            ip(&[
                "link",
                "add",
                dev,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{dev}p"),
            ]);
            if !addr.is_empty() {
                ip(&["addr", "add", addr, "dev", dev]);
            }
            ip(&["link", "set", dev, "up"]);
        }
        for (dev, addr) in [
            ("ul0", "fd00:198:18::1/64"),
            ("ul1", "fd00:198:19::7/64"),
            ("ul2", "fd00:198:1a::9/64"),
        ] {
            ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
        }
        ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:198:18::fe",
            "dev",
            "ul0",
            "onlink",
        ]);
        ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.18.0.254",
            "dev",
            "ul0",
            "onlink",
        ]);
        ip(&[
            "route",
            "add",
            "198.19.128.0/17",
            "via",
            "198.19.5.1",
            "dev",
            "ul1",
            "onlink",
        ]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let nl = rt.block_on(async { Netlink::new() }).expect("netlink");
        body(nl, rt);
    })
    .join()
    .expect("test thread");
}

fn pick(nl: &Netlink, rt: &tokio::runtime::Runtime, sel: IfaceSelector) -> SelectedInterface {
    rt.block_on(select(nl, &sel))
        .unwrap_or_else(|e| panic!("{sel:?}: {e}"))
}

fn pick_err(nl: &Netlink, rt: &tokio::runtime::Runtime, sel: IfaceSelector) -> String {
    match rt.block_on(select(nl, &sel)) {
        Ok(s) => panic!("{sel:?} should fail, chose {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn selection_follows_flannels_order() {
    in_topology(|nl, rt| {
        // Default route.
        let s = pick(&nl, &rt, IfaceSelector::default());
        assert_eq!(
            (s.name.as_str(), s.iface_addr),
            ("ul0", Some(Ipv4Addr::new(198, 18, 0, 1)))
        );
        assert_eq!(s.public_ip, s.iface_addr);
        assert_eq!(s.connected, vec!["198.18.0.1/24".parse().unwrap()]);

        // --iface by name, by address; the first that matches wins.
        let by_name = IfaceSelector {
            ifaces: vec!["nope".into(), "ul1".into()],
            ..Default::default()
        };
        assert_eq!(pick(&nl, &rt, by_name).name, "ul1");
        let by_addr = IfaceSelector {
            ifaces: vec!["198.19.5.7".into()],
            ..Default::default()
        };
        let s = pick(&nl, &rt, by_addr);
        assert_eq!((s.name.as_str(), s.mtu), ("ul1", 1500));

        // --iface-regex: addresses first, then names.
        let by_regex_addr = IfaceSelector {
            regexes: vec![r"^198\.19\.".into()],
            ..Default::default()
        };
        assert_eq!(pick(&nl, &rt, by_regex_addr).name, "ul1");
        let by_regex_name = IfaceSelector {
            regexes: vec!["^ul1$".into()],
            ..Default::default()
        };
        assert_eq!(pick(&nl, &rt, by_regex_name).name, "ul1");

        // --iface-can-reach: the most specific route's device.
        let reach = IfaceSelector {
            can_reach: Some(IpAddr::V4(Ipv4Addr::new(198, 19, 200, 1))),
            ..Default::default()
        };
        assert_eq!(pick(&nl, &rt, reach).name, "ul1");

        // --public-ip alone picks its owner; with --iface it only overrides the lease IP.
        let owner = IfaceSelector {
            public_ip: Some(Ipv4Addr::new(198, 19, 5, 7)),
            ..Default::default()
        };
        assert_eq!(pick(&nl, &rt, owner).name, "ul1");
        let nat = IfaceSelector {
            ifaces: vec!["ul0".into()],
            public_ip: Some(Ipv4Addr::new(198, 18, 99, 9)),
            ..Default::default()
        };
        let s = pick(&nl, &rt, nat);
        assert_eq!(s.iface_addr, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(s.public_ip, Some(Ipv4Addr::new(198, 18, 99, 9)));
        assert_eq!(
            (s.iface_addr6, s.public_ipv6),
            (None, None),
            "IPv6 not enabled"
        );
    });
}

#[test]
fn errors_name_the_flag() {
    in_topology(|nl, rt| {
        let e = pick_err(
            &nl,
            &rt,
            IfaceSelector {
                ifaces: vec!["eth9".into()],
                ..Default::default()
            },
        );
        assert!(e.contains("--iface"), "{e}");
        let e = pick_err(
            &nl,
            &rt,
            IfaceSelector {
                regexes: vec!["(".into()],
                ..Default::default()
            },
        );
        assert!(
            e.contains("--iface-regex") && e.contains("not a valid"),
            "{e}"
        );
        let e = pick_err(
            &nl,
            &rt,
            IfaceSelector {
                public_ip: Some(Ipv4Addr::new(198, 18, 77, 77)),
                ..Default::default()
            },
        );
        assert!(e.contains("--public-ip"), "{e}");
        ip(&["route", "del", "default"]);
        let e = pick_err(&nl, &rt, IfaceSelector::default());
        assert!(e.contains("no default route"), "{e}");
    });
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn dual_stack_takes_both_addresses_of_one_interface() {
    in_topology(|nl, rt| {
        let dual = IfaceSelector {
            ipv6: true,
            ..Default::default()
        };
        // Default route (IPv4's interface), its IPv6 address too.
        let s = pick(&nl, &rt, dual.clone());
        assert_eq!(s.name, "ul0");
        assert_eq!(s.iface_addr, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(s.iface_addr6, Some(v6("fd00:198:18::1")));
        assert_eq!(s.public_ipv6, s.iface_addr6);

        // --iface by IPv6 address: that interface, its IPv4 address for IPv4.
        let s = pick(
            &nl,
            &rt,
            IfaceSelector {
                ifaces: vec!["fd00:198:19::7".into()],
                ..dual.clone()
            },
        );
        assert_eq!(s.name, "ul1");
        assert_eq!(s.iface_addr, Some(Ipv4Addr::new(198, 19, 5, 7)));
        assert_eq!(s.iface_addr6, Some(v6("fd00:198:19::7")));

        // --public-ipv6 overrides only the published IPv6 address.
        let s = pick(
            &nl,
            &rt,
            IfaceSelector {
                ifaces: vec!["ul0".into()],
                public_ipv6: Some(v6("fd00:198:18::99")),
                ..dual.clone()
            },
        );
        assert_eq!(s.iface_addr6, Some(v6("fd00:198:18::1")));
        assert_eq!(s.public_ipv6, Some(v6("fd00:198:18::99")));
        assert_eq!(s.public_ip, Some(Ipv4Addr::new(198, 18, 0, 1)));

        // An interface with only IPv6 cannot serve a dual-stack network.
        let e = pick_err(
            &nl,
            &rt,
            IfaceSelector {
                ifaces: vec!["ul2".into()],
                ..dual.clone()
            },
        );
        assert!(
            e.contains("--iface") && e.contains("an IPv4 and an IPv6 address"),
            "{e}"
        );
    });
}

#[test]
fn ipv6_only_uses_the_ipv6_default_route_and_needs_no_ipv4() {
    in_topology(|nl, rt| {
        let v6_only = IfaceSelector {
            ipv4: false,
            ipv6: true,
            ..Default::default()
        };
        let s = pick(&nl, &rt, v6_only.clone());
        assert_eq!(s.name, "ul0");
        assert_eq!((s.iface_addr, s.public_ip), (None, None));
        assert_eq!(s.iface_addr6, Some(v6("fd00:198:18::1")));

        let s = pick(
            &nl,
            &rt,
            IfaceSelector {
                ifaces: vec!["ul2".into()],
                ..v6_only.clone()
            },
        );
        assert_eq!(
            (s.name.as_str(), s.iface_addr6),
            ("ul2", Some(v6("fd00:198:1a::9")))
        );

        // --public-ipv6 alone picks its owner.
        let s = pick(
            &nl,
            &rt,
            IfaceSelector {
                public_ipv6: Some(v6("fd00:198:19::7")),
                ..v6_only.clone()
            },
        );
        assert_eq!(s.name, "ul1");

        // --iface-can-reach with an IPv6 target.
        let s = pick(
            &nl,
            &rt,
            IfaceSelector {
                can_reach: Some("fd00:198:1a::1".parse().unwrap()),
                ..v6_only.clone()
            },
        );
        assert_eq!(s.name, "ul2");

        // Newer addresses are listed first; a deprecated one and a dynamic (autoconfigured,
        // not `permanent`) one must not become the tunnel endpoint.
        ip(&[
            "-6",
            "addr",
            "add",
            "fd00:198:1a::d/64",
            "dev",
            "ul2",
            "nodad",
            "preferred_lft",
            "0",
        ]);
        ip(&[
            "-6",
            "addr",
            "add",
            "fd00:198:1a::5/64",
            "dev",
            "ul2",
            "nodad",
            "valid_lft",
            "300",
            "preferred_lft",
            "300",
        ]);
        let only_ul2 = IfaceSelector {
            ifaces: vec!["ul2".into()],
            ..v6_only.clone()
        };
        assert_eq!(
            pick(&nl, &rt, only_ul2.clone()).iface_addr6,
            Some(v6("fd00:198:1a::9"))
        );
        ip(&["-6", "addr", "del", "fd00:198:1a::9/64", "dev", "ul2"]);
        assert_eq!(
            pick(&nl, &rt, only_ul2).iface_addr6,
            Some(v6("fd00:198:1a::5")),
            "a dynamic address beats a deprecated one"
        );

        ip(&["-6", "route", "del", "default"]);
        let e = pick_err(&nl, &rt, v6_only);
        assert!(e.contains("no IPv6 default route"), "{e}");
    });
}
