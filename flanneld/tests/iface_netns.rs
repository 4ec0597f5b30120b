//! External interface selection (`--iface`, `--iface-regex`, `--iface-can-reach`,
//! `--public-ip`, default route) against real links, in a private network namespace.

use std::net::{IpAddr, Ipv4Addr};
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
/// `ul0` 198.18.0.1/24 (default route via 198.18.0.254), `ul1` 198.19.5.7/24 (route to
/// 198.19.128.0/17), `lo`.
fn in_topology(body: impl FnOnce(Netlink, tokio::runtime::Runtime) + Send + 'static) {
    if !require_root("iface selection tests need network namespaces") {
        return;
    }
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        ip(&["link", "set", "lo", "up"]);
        for (dev, addr) in [("ul0", "198.18.0.1/24"), ("ul1", "198.19.5.7/24")] {
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
            ip(&["addr", "add", addr, "dev", dev]);
            ip(&["link", "set", dev, "up"]);
        }
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
            ("ul0", Ipv4Addr::new(198, 18, 0, 1))
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
        assert_eq!(s.iface_addr, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(s.public_ip, Ipv4Addr::new(198, 18, 99, 9));
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
