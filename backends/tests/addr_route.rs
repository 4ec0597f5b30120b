//! Addresses and routes, checked through our own dumps and through `ip`.

mod common;

use std::net::IpAddr;

use backends::kernel::netlink::{
    IpFamily, Netlink, NetlinkError, RT_SCOPE_LINK, RT_TABLE_MAIN, RTPROT_BOOT, Route, VethSpec,
};
use backends::kernel::netns::NetNs;
use common::{in_new_netns, ip, net, prerequisites};

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A veth pair `rt0`/`rt0p` in the current namespace, both up; returns rt0's index.
async fn uplink(nl: &Netlink) -> u32 {
    let here = NetNs::current().unwrap();
    let spec = VethSpec {
        host_name: "rt0",
        peer_name: "rt0p",
        mtu: None,
        master: None,
        host_up: true,
        peer_ns: &here,
        peer_mac: None,
    };
    let l = nl.create_veth(&spec).await.unwrap();
    let p = nl.link("rt0p").await.unwrap().unwrap();
    nl.set_up(p.index).await.unwrap();
    l.index
}

#[test]
fn addresses_add_twice_and_delete_twice() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::new().unwrap();
        let idx = uplink(&nl).await;
        let v4 = net("10.244.1.1/24");
        let v6 = net("fd10:244:1::1/64");
        for a in [v4, v6] {
            nl.add_address(idx, a).await.unwrap();
            nl.add_address(idx, a).await.unwrap(); // EEXIST is success
        }
        let have = nl.addresses(idx).await.unwrap();
        assert!(have.contains(&v4) && have.contains(&v6), "{have:?}");
        assert_eq!(have.iter().filter(|a| **a == v4).count(), 1);
        // Link-scope addresses are reported too (the kernel's own fe80:: one appears only once
        // carrier is seen, asynchronously, so add one explicitly).
        let ll = net("fe80::5/64");
        nl.add_address(idx, ll).await.unwrap();
        assert!(nl.addresses(idx).await.unwrap().contains(&ll));
        // Host-scope addresses are not: bringing lo up gives it 127.0.0.1/8 scope host.
        let lo = nl.link("lo").await.unwrap().unwrap();
        nl.set_up(lo.index).await.unwrap();
        assert!(ip(&["addr", "show", "dev", "lo"]).contains("inet 127.0.0.1/8 scope host lo"));
        assert!(
            !nl.addresses(lo.index)
                .await
                .unwrap()
                .iter()
                .any(|a| a.ip().is_loopback())
        );

        let shown = ip(&["addr", "show", "dev", "rt0"]);
        assert!(
            shown.contains("inet 10.244.1.1/24 brd 10.244.1.255 scope global rt0"),
            "{shown}"
        );
        let v6line = shown
            .lines()
            .find(|l| l.contains("fd10:244:1::1/64"))
            .unwrap_or_else(|| panic!("{shown}"));
        assert!(
            v6line.contains("nodad") && !v6line.contains("tentative"),
            "{v6line}"
        );

        // Addresses of other links are not reported.
        let lo = nl.link("lo").await.unwrap().unwrap();
        assert!(
            nl.addresses(lo.index)
                .await
                .unwrap()
                .iter()
                .all(|a| *a != v4)
        );

        for a in [v4, v6] {
            nl.del_address(idx, a).await.unwrap();
            nl.del_address(idx, a).await.unwrap(); // already gone: success
        }
        let have = nl.addresses(idx).await.unwrap();
        assert!(!have.contains(&v4) && !have.contains(&v6), "{have:?}");
        nl.del_address(987_654, v4).await.unwrap(); // link gone: success

        assert!(nl.add_address(987_654, v4).await.is_err());
    });
}

#[test]
fn routes_add_replace_dump_delete() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::new().unwrap();
        let idx = uplink(&nl).await;
        nl.add_address(idx, net("10.244.1.1/24")).await.unwrap();
        nl.add_address(idx, net("fd10:244:1::1/64")).await.unwrap();

        let gw = Route::new(net("10.244.2.0/24"))
            .via(addr("10.244.1.254"))
            .dev(idx);
        let onlink = Route::new(net("10.244.3.0/24"))
            .via(addr("10.244.3.0"))
            .dev(idx)
            .onlink();
        let device = Route::new(net("10.244.4.0/24"))
            .dev(idx)
            .scope(RT_SCOPE_LINK);
        let default = Route::new(net("0.0.0.0/0"))
            .via(addr("10.244.1.1"))
            .dev(idx);
        assert_eq!((gw.protocol, gw.table), (RTPROT_BOOT, RT_TABLE_MAIN));
        for r in [&gw, &onlink, &device, &default] {
            nl.add_route(r).await.unwrap();
        }
        let err = nl.add_route(&gw).await.unwrap_err();
        assert!(matches!(err, NetlinkError::Exists(_)), "{err:?}");
        assert!(err.to_string().contains("10.244.2.0/24"), "{err}");

        let dump = nl.routes(IpFamily::V4).await.unwrap();
        for r in [&gw, &onlink, &device, &default] {
            assert!(dump.contains(r), "{r:?} not in {dump:#?}");
        }
        // The kernel's own prefix route shows up as proto kernel, scope link.
        assert!(
            dump.iter().any(|r| r.dst == net("10.244.1.0/24")
                && r.protocol == 2
                && r.scope == RT_SCOPE_LINK)
        );

        let shown = ip(&["route", "show"]);
        assert!(shown.contains("default via 10.244.1.1 dev rt0"), "{shown}");
        assert!(
            shown.contains("10.244.2.0/24 via 10.244.1.254 dev rt0"),
            "{shown}"
        );
        assert!(
            shown.contains("10.244.3.0/24 via 10.244.3.0 dev rt0 onlink"),
            "{shown}"
        );
        assert!(
            shown.contains("10.244.4.0/24 dev rt0 scope link"),
            "{shown}"
        );

        // Replace moves the route to a new gateway instead of adding a second one.
        let moved = Route::new(net("10.244.2.0/24"))
            .via(addr("10.244.1.253"))
            .dev(idx);
        nl.replace_route(&moved).await.unwrap();
        let dump = nl.routes(IpFamily::V4).await.unwrap();
        let to_2: Vec<_> = dump
            .iter()
            .filter(|r| r.dst == net("10.244.2.0/24"))
            .collect();
        assert_eq!(to_2, vec![&moved]);
        // Replace also creates.
        let fresh = Route::new(net("10.244.5.0/24"))
            .via(addr("10.244.1.5"))
            .dev(idx);
        nl.replace_route(&fresh).await.unwrap();
        assert!(nl.routes(IpFamily::V4).await.unwrap().contains(&fresh));

        // A route in another table is not in the main-table dump.
        let other_table = Route::new(net("10.244.6.0/24"))
            .via(addr("10.244.1.6"))
            .dev(idx)
            .table(1000);
        nl.add_route(&other_table).await.unwrap();
        assert!(
            !nl.routes(IpFamily::V4)
                .await
                .unwrap()
                .iter()
                .any(|r| r.dst == other_table.dst)
        );
        assert!(
            ip(&["route", "show", "table", "1000"])
                .contains("10.244.6.0/24 via 10.244.1.6 dev rt0")
        );

        // IPv6.
        let v6 = Route::new(net("fd10:244:2::/64"))
            .via(addr("fd10:244:1::2"))
            .dev(idx);
        nl.add_route(&v6).await.unwrap();
        let dump6 = nl.routes(IpFamily::V6).await.unwrap();
        assert!(dump6.contains(&v6), "{dump6:#?}");
        assert!(
            !nl.routes(IpFamily::V4)
                .await
                .unwrap()
                .iter()
                .any(|r| r.dst.is_ipv6())
        );

        // Delete: matches regardless of protocol/scope; twice is fine.
        for r in [
            &moved,
            &onlink,
            &device,
            &default,
            &fresh,
            &other_table,
            &v6,
        ] {
            nl.del_route(r).await.unwrap();
            nl.del_route(r).await.unwrap();
        }
        let dump = nl.routes(IpFamily::V4).await.unwrap();
        assert!(
            dump.iter().all(|r| r.dst == net("10.244.1.0/24")),
            "{dump:#?}"
        );
        assert!(!nl.routes(IpFamily::V6).await.unwrap().contains(&v6));
        assert!(!ip(&["route", "show", "table", "1000"]).contains("10.244.6.0"));

        // A route through a missing device: NotFound.
        let bad = Route::new(net("10.244.7.0/24"))
            .dev(987_654)
            .scope(RT_SCOPE_LINK);
        assert!(matches!(
            nl.add_route(&bad).await,
            Err(NetlinkError::NotFound(_))
        ));
        // A gateway that no subnet covers, without onlink: the kernel's own error.
        let unreachable = Route::new(net("10.244.8.0/24"))
            .via(addr("198.18.0.1"))
            .dev(idx);
        let e = nl.add_route(&unreachable).await.unwrap_err();
        assert!(matches!(e, NetlinkError::Kernel { .. }), "{e:?}");
    });
}

/// A batch of writes (one netlink datagram, plus the nexthop objects around it): one result
/// per write, a refused write in the middle does not stop the ones after it, deletions of
/// absent entries succeed, and a route through an object leaves no object behind when
/// deleted in a batch.
#[test]
fn write_batch_answers_each_write_and_goes_on_after_a_refusal() {
    use backends::kernel::netlink::KernelWrite;
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::new().unwrap();
        let idx = uplink(&nl).await;
        nl.add_address(idx, net("198.18.0.1/24")).await.unwrap();
        let mac = [0x02, 0, 0, 0, 0, 0x07];
        let via_object = Route::new(net("10.244.3.0/24"))
            .via(addr("10.244.3.0"))
            .dev(idx)
            .onlink()
            .protocol(150)
            .nexthop(0x0af4_0300);
        // No subnet of rt0 covers 10.244.200.1 and there is no `onlink`: the kernel refuses.
        let unreachable = Route::new(net("10.244.4.0/24"))
            .via(addr("10.244.200.1"))
            .dev(idx)
            .protocol(150);
        let writes = [
            KernelWrite::ReplaceNeigh {
                ifindex: idx,
                ip: addr("198.18.0.7"),
                mac,
            },
            KernelWrite::ReplaceRoute(via_object.clone()),
            KernelWrite::ReplaceRoute(unreachable),
            KernelWrite::DelNeigh {
                ifindex: idx,
                ip: addr("198.18.0.99"),
            },
            KernelWrite::DelRoute(Route::new(net("10.244.9.0/24")).dev(idx)),
            KernelWrite::ReplaceNeigh {
                ifindex: idx,
                ip: addr("198.18.0.8"),
                mac,
            },
        ];
        let results = nl.write_batch(&writes).await;
        assert_eq!(results.len(), writes.len());
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 2, "write {i}: {r:?}");
        }
        let refused = results[2].as_ref().unwrap_err().to_string();
        assert!(
            refused.starts_with("ip route replace 10.244.4.0/24"),
            "{refused}"
        );

        let neighs = ip(&["neigh", "show", "dev", "rt0"]);
        assert!(
            neighs.contains("198.18.0.7 lladdr 02:00:00:00:00:07 PERMANENT"),
            "{neighs}"
        );
        assert!(
            neighs.contains("198.18.0.8 lladdr 02:00:00:00:00:07 PERMANENT"),
            "{neighs}"
        );
        let routes = ip(&["route", "show", "proto", "150"]);
        assert!(
            routes.contains("10.244.3.0/24 nhid 183763712 via 10.244.3.0 dev rt0 onlink"),
            "{routes}"
        );
        assert!(!routes.contains("10.244.4.0"), "{routes}");
        assert!(ip(&["nexthop", "show"]).contains("id 183763712 via 10.244.3.0 dev rt0"));

        // Deleted in a batch: route, then its object; the neighbour too.
        let results = nl
            .write_batch(&[
                KernelWrite::DelRoute(via_object),
                KernelWrite::DelNeigh {
                    ifindex: idx,
                    ip: addr("198.18.0.7"),
                },
            ])
            .await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(ip(&["route", "show", "proto", "150"]), "");
        assert_eq!(ip(&["nexthop", "show"]), "");
        assert!(!ip(&["neigh", "show", "dev", "rt0"]).contains("198.18.0.7 "));
    });
}
