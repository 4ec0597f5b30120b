//! Tests of the pure planner.
use super::*;
use crate::kernel::netlink::format_mac;
use crate::overlay::hostgw::{HostGwConfig, HostGwDriver};
use crate::overlay::vxlan::{VxlanConfig, VxlanDriver};
use std::net::IpAddr;

/// A network of whichever type the context wants (`Ipv4Network` for leases, `IpNetwork` in
/// the family-agnostic plan).
fn net<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("test network")
}

/// An address of whichever type the context wants.
fn ip<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("test address")
}

fn ext() -> ExternalInterface {
    ExternalInterface {
        index: 2,
        name: "eth0".into(),
        mtu: 1500,
        iface_addr: ip("198.18.0.1"),
        public_ip: ip("198.18.0.1"),
    }
}

fn ext_nets() -> Vec<IpNetwork> {
    vec![net("198.18.0.0/24")]
}

fn vxlan(direct_routing: bool) -> VxlanDriver {
    let cfg = VxlanConfig {
        direct_routing,
        ..VxlanConfig::default()
    };
    VxlanDriver::new(&cfg, &ext()).expect("vxlan driver")
}

/// A vxlan lease's `BackendData` carrying `mac`.
fn vtep(mac: [u8; 6]) -> Option<ipam::lease::BackendData> {
    Some(serde_json::json!({"VNI": 1, "VtepMAC": format_mac(&mac)}).into())
}

const MAC2: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const MAC3: [u8; 6] = [0x02, 0, 0, 0, 0, 3];

fn peers() -> Vec<Peer> {
    vec![
        Peer {
            subnet: net("10.244.2.0/24"),
            public_ip: ip("198.18.0.2"),
            backend_data: vtep(MAC2),
        },
        Peer {
            subnet: net("10.244.3.0/24"),
            public_ip: ip("198.18.1.3"),
            backend_data: vtep(MAC3),
        },
    ]
}

fn own() -> Option<IpNetwork> {
    Some(net("10.244.1.0/24"))
}

fn vx_route(subnet: &str) -> RouteSpec {
    RouteSpec {
        dst: net(subnet),
        gateway: Some(net::<IpNetwork>(subnet).network()),
        dev: RouteDev::Overlay,
        onlink: true,
        via_nexthop: false,
    }
}

#[test]
fn vxlan_fresh_node_orders_device_address_then_neigh_fdb_route_per_peer() {
    let (d, errs) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
    assert!(errs.is_empty(), "{errs:?}");
    let p = plan(&d, &Observed::empty(DeviceState::Missing));
    let p2 = net("10.244.2.0/24");
    let p3 = net("10.244.3.0/24");
    assert_eq!(
        p.ops,
        vec![
            Op::EnsureDevice,
            Op::AddAddress(net("10.244.1.0/32")),
            Op::ReplaceNeigh {
                peer: p2,
                ip: ip("10.244.2.0"),
                mac: MAC2
            },
            Op::ReplaceFdb {
                peer: p2,
                mac: MAC2,
                dst: ip("198.18.0.2")
            },
            Op::ReplaceRoute {
                peer: p2,
                route: vx_route("10.244.2.0/24")
            },
            Op::ReplaceNeigh {
                peer: p3,
                ip: ip("10.244.3.0"),
                mac: MAC3
            },
            Op::ReplaceFdb {
                peer: p3,
                mac: MAC3,
                dst: ip("198.18.1.3")
            },
            Op::ReplaceRoute {
                peer: p3,
                route: vx_route("10.244.3.0/24")
            },
        ]
    );
    assert_eq!(p.kept, 0);
}

fn converged(d: &Desired) -> Observed {
    let mut o = Observed::empty(DeviceState::Ok);
    o.addresses = d.address.into_iter().collect();
    for p in &d.peers {
        if let Some((ip, mac)) = p.neigh {
            o.neighs.push(ObservedNeigh {
                ip,
                mac: Some(mac),
                permanent: true,
            });
        }
        if let Some((mac, dst)) = p.fdb {
            o.fdb.push((mac, Some(dst)));
        }
        o.routes.push(p.route.clone());
    }
    o
}

#[test]
fn converged_state_plans_nothing_and_counts_kept() {
    let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
    let p = plan(&d, &converged(&d));
    assert!(p.ops.is_empty(), "{:?}", p.ops);
    // address + 2 x (neigh, fdb, route)
    assert_eq!(p.kept, 7);
}

#[test]
fn stale_entries_are_deleted_route_first_before_any_add() {
    let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers()[..1]);
    let (full, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
    let mut o = converged(&full);
    // Also a dynamic neighbour the kernel made for the wanted peer, and a stray address.
    o.neighs[0].permanent = false;
    o.addresses.push(net("10.244.9.0/32"));
    let p = plan(&d, &o);
    assert_eq!(
        p.ops,
        vec![
            Op::DelRoute(vx_route("10.244.3.0/24")),
            Op::DelNeigh(ip("10.244.3.0")),
            Op::DelFdb {
                mac: MAC3,
                dst: Some(ip("198.18.1.3"))
            },
            Op::DelAddress(net("10.244.9.0/32")),
            Op::ReplaceNeigh {
                peer: net("10.244.2.0/24"),
                ip: ip("10.244.2.0"),
                mac: MAC2
            },
        ]
    );
    assert_eq!(p.kept, 3); // address, fdb and route of 10.244.2.0/24
}

#[test]
fn missing_device_voids_observed_device_entries() {
    let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
    let mut o = converged(&d);
    o.device = DeviceState::Missing;
    // A host-gw style route of ours survives a device deletion and must still be seen.
    o.routes.push(RouteSpec {
        dst: net("10.244.7.0/24"),
        gateway: Some(ip("198.18.0.7")),
        dev: RouteDev::External,
        onlink: false,
        via_nexthop: false,
    });
    let p = plan(&d, &o);
    assert_eq!(p.ops[0], Op::EnsureDevice);
    assert_eq!(p.ops[1], Op::AddAddress(net("10.244.1.0/32")));
    assert!(matches!(p.ops[2], Op::DelRoute(ref r) if r.dst == net("10.244.7.0/24")));
    // Everything else is re-added: 2 peers x 3 entries.
    assert_eq!(p.ops.len(), 3 + 6, "{:?}", p.ops);
    assert_eq!(p.kept, 0);
}

#[test]
fn device_needing_fix_keeps_its_entries() {
    let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
    let mut o = converged(&d);
    o.device = DeviceState::NeedsFix;
    let p = plan(&d, &o);
    assert_eq!(p.ops, vec![Op::EnsureDevice]);
    assert_eq!(p.kept, 7);
}

#[test]
fn changed_mac_and_changed_public_ip() {
    let (old, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
    let o = converged(&old);
    let mut ps = peers();
    let new_mac = [0x02, 0, 0, 0, 0, 0x22];
    ps[0].backend_data = vtep(new_mac);
    ps[1].public_ip = ip("198.18.1.33");
    let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &ps);
    let p = plan(&d, &o);
    let p2 = net("10.244.2.0/24");
    let p3 = net("10.244.3.0/24");
    assert_eq!(
        p.ops,
        vec![
            // The old MAC's entry goes; the moved remote of MAC3 is overwritten in place.
            Op::DelFdb {
                mac: MAC2,
                dst: Some(ip("198.18.0.2"))
            },
            Op::ReplaceNeigh {
                peer: p2,
                ip: ip("10.244.2.0"),
                mac: new_mac
            },
            Op::ReplaceFdb {
                peer: p2,
                mac: new_mac,
                dst: ip("198.18.0.2")
            },
            Op::ReplaceFdb {
                peer: p3,
                mac: MAC3,
                dst: ip("198.18.1.33")
            },
        ]
    );
}

#[test]
fn foreign_routes_are_not_in_observed_and_own_subnet_is_skipped() {
    let mut ps = peers();
    ps.push(Peer {
        subnet: net("10.244.1.0/24"),
        public_ip: ip("198.18.0.1"),
        backend_data: vtep([2, 0, 0, 0, 0, 1]),
    });
    let (d, errs) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &ps);
    assert!(errs.is_empty());
    assert_eq!(d.peers.len(), 2);
    assert!(d.peers.iter().all(|p| p.subnet != net("10.244.1.0/24")));
}

#[test]
fn direct_routing_uses_plain_routes_only_for_on_link_peers() {
    let (d, errs) = desired_state(&vxlan(true), &ext(), &ext_nets(), own(), &peers());
    assert!(errs.is_empty());
    assert_eq!(
        d.peers[0],
        PeerEntries {
            subnet: net("10.244.2.0/24"),
            neigh: None,
            fdb: None,
            route: RouteSpec {
                dst: net("10.244.2.0/24"),
                gateway: Some(ip("198.18.0.2")),
                dev: RouteDev::External,
                onlink: false,
                via_nexthop: false,
            },
        }
    );
    assert_eq!(d.peers[1].route, vx_route("10.244.3.0/24"));
    assert_eq!(d.peers[1].fdb, Some((MAC3, ip("198.18.1.3"))));
}

#[test]
fn host_gw_refuses_peers_off_link_and_programs_the_rest() {
    let (d, errs) = desired_state(
        &HostGwDriver::new(&HostGwConfig::default(), &ext()).expect("host-gw"),
        &ext(),
        &ext_nets(),
        own(),
        &peers(),
    );
    assert!(!d.overlay_device);
    assert_eq!(d.address, None);
    assert_eq!(d.peers.len(), 1);
    assert_eq!(d.peers[0].route.gateway, Some(ip("198.18.0.2")));
    assert_eq!(d.peers[0].route.dev, RouteDev::External);
    assert_eq!(errs.len(), 1);
    let msg = errs[0].to_string();
    assert!(
        matches!(&errs[0], OverlayError::PeerNotDirectlyReachable { subnet, public_ip, .. }
            if *subnet == net("10.244.3.0/24") && *public_ip == ip::<IpAddr>("198.18.1.3")),
        "{msg}"
    );
    assert!(
        msg.contains("10.244.3.0/24") && msg.contains("198.18.1.3") && msg.contains("eth0"),
        "{msg}"
    );
    let p = plan(&d, &Observed::empty(DeviceState::Ok));
    assert_eq!(p.ops.len(), 1);
    assert!(!p.ops.contains(&Op::EnsureDevice));
}

#[test]
fn vxlan_peer_without_mac_is_refused_alone_and_duplicates_are_reported() {
    let mut ps = peers();
    ps[0].backend_data = None;
    ps.push(ps[1].clone());
    let (d, errs) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &ps);
    assert_eq!(d.peers.len(), 1);
    assert_eq!(d.peers[0].subnet, net("10.244.3.0/24"));
    assert!(matches!(errs[0], OverlayError::PeerMissingVtepMac { .. }));
    assert!(matches!(errs[1], OverlayError::DuplicatePeer { .. }));
}

#[test]
fn on_link_excludes_own_address_and_default_routes() {
    let e = ext();
    assert!(on_link(ip("198.18.0.200"), &e, &ext_nets()));
    assert!(!on_link(ip("198.18.0.1"), &e, &ext_nets()));
    assert!(!on_link(ip("198.19.0.2"), &e, &ext_nets()));
    assert!(!on_link(ip("198.19.0.2"), &e, &[net("0.0.0.0/0")]));
}

#[test]
fn families_are_planned_apart_with_the_device_family_first() {
    let v6_route = |dst: &str, gw: &str| RouteSpec {
        dst: net(dst),
        gateway: Some(ip(gw)),
        dev: RouteDev::External,
        onlink: false,
        via_nexthop: false,
    };
    let wanted_v6 = v6_route("fd00:10:244:2::/64", "fd00:198:18::2");
    let stale_v6 = v6_route("fd00:10:244:9::/64", "fd00:198:18::9");
    let d = Desired {
        overlay_device: true,
        address: Some(net("10.244.1.0/32")),
        peers: vec![
            PeerEntries {
                subnet: net("fd00:10:244:2::/64"),
                neigh: None,
                fdb: None,
                route: wanted_v6.clone(),
            },
            PeerEntries {
                subnet: net("10.244.2.0/24"),
                neigh: Some((ip("10.244.2.0"), MAC2)),
                fdb: Some((MAC2, ip("198.18.0.2"))),
                route: vx_route("10.244.2.0/24"),
            },
        ],
    };
    let mut o = Observed::empty(DeviceState::Missing);
    o.routes.push(stale_v6.clone());
    let p = plan_by_family(&d, &o, IpFamily::V4);
    let p2 = net("10.244.2.0/24");
    assert_eq!(
        p.ops,
        vec![
            // IPv4, the device's family: device, address, neighbour, FDB, route.
            Op::EnsureDevice,
            Op::AddAddress(net("10.244.1.0/32")),
            Op::ReplaceNeigh {
                peer: p2,
                ip: ip("10.244.2.0"),
                mac: MAC2
            },
            Op::ReplaceFdb {
                peer: p2,
                mac: MAC2,
                dst: ip("198.18.0.2")
            },
            Op::ReplaceRoute {
                peer: p2,
                route: vx_route("10.244.2.0/24")
            },
            // IPv6: its own stale route first, then its peer; no device op.
            Op::DelRoute(stale_v6),
            Op::ReplaceRoute {
                peer: net("fd00:10:244:2::/64"),
                route: wanted_v6
            },
        ]
    );
}
