//! Reconcile against the recording kernel: what the real-kernel tests in
//! `tests/overlay_netns.rs` prove with namespaces, here without root, plus failure paths the
//! real kernel cannot be made to take on demand.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::kernel::netlink::VxlanOutcome;
use crate::kernel::recording::RecordingKernel;
use crate::overlay::hostgw::{HostGwConfig, HostGwDriver};
use crate::overlay::vxlan::{VxlanConfig, VxlanDriver};
use crate::overlay::*;

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test network")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A node namespace with `eth0` 198.18.0.1/24.
fn node() -> (RecordingKernel, ExternalInterface) {
    let k = RecordingKernel::new();
    let index = k.add_link_externally("eth0", 1500);
    k.add_address_externally(index, "198.18.0.1/24".parse().expect("cidr"));
    let ext = ExternalInterface {
        index,
        name: "eth0".into(),
        mtu: 1500,
        iface_addr: ip("198.18.0.1"),
        public_ip: ip("198.18.0.1"),
    };
    (k, ext)
}

fn vtep(last: u8) -> Option<ipam::lease::BackendData> {
    Some(serde_json::json!({"VNI": 1, "VtepMAC": format!("02:00:00:00:00:{last:02x}")}).into())
}

fn peers() -> Vec<Peer> {
    vec![
        Peer {
            subnet: net("10.244.2.0/24"),
            public_ip: ip("198.18.0.2"),
            backend_data: vtep(2),
        },
        Peer {
            subnet: net("10.244.3.0/24"),
            public_ip: ip("198.18.1.3"),
            backend_data: vtep(3),
        },
    ]
}

async fn vxlan_overlay() -> (RecordingKernel, Overlay<RecordingKernel>) {
    let (k, ext) = node();
    vxlan_overlay_on(k, ext).await
}

/// [`vxlan_overlay`] on a kernel prepared by the caller.
async fn vxlan_overlay_on(
    k: RecordingKernel,
    ext: ExternalInterface,
) -> (RecordingKernel, Overlay<RecordingKernel>) {
    let driver = VxlanDriver::new(&VxlanConfig::default(), &ext).expect("driver");
    let mut o = Overlay::new(k.clone(), Box::new(driver), ext)
        .await
        .expect("overlay");
    o.set_own_subnet(net("10.244.1.0/24"));
    o.set_peers(peers());
    (k, o)
}

fn ours(k: &RecordingKernel) -> Vec<(IpNetwork, Option<std::net::IpAddr>, bool)> {
    let mut r: Vec<_> = k
        .routes_in("host")
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL)
        .map(|r| (r.dst, r.gateway, r.onlink))
        .collect();
    r.sort();
    r
}

/// The calls that change something (reads excluded).
fn writes(k: &RecordingKernel) -> Vec<String> {
    let reads = [
        "link",
        "links",
        "vxlan_link",
        "addresses",
        "routes",
        "neighbours",
        "fdb_entries",
    ];
    k.calls()
        .into_iter()
        .filter(|c| !reads.contains(&c.split_whitespace().nth(1).unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn vxlan_programs_neighbour_fdb_then_route_per_peer_and_converges() {
    let (k, mut o) = vxlan_overlay().await;
    assert_eq!(k.calls_of("ensure_vxlan").len(), 1, "device made at start");
    k.clear_calls();
    let r = o.reconcile().await.expect("reconcile");
    assert!(r.is_clean(), "{:?}", r.errors);
    assert_eq!((r.added, r.removed), (7, 0), "{r:?}");
    let w = writes(&k);
    let pos = |needle: &str| {
        w.iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {w:?}"))
    };
    assert!(pos("add_address") < pos("replace_neigh"));
    assert!(pos("replace_neigh 3 10.244.2.0") < pos("replace_fdb 3 198.18.0.2"));
    assert!(pos("replace_fdb 3 198.18.0.2") < pos("replace_route 10.244.2.0/24"));
    assert_eq!(
        ours(&k),
        vec![
            (
                "10.244.2.0/24".parse().unwrap(),
                Some("10.244.2.0".parse().unwrap()),
                true
            ),
            (
                "10.244.3.0/24".parse().unwrap(),
                Some("10.244.3.0".parse().unwrap()),
                true
            ),
        ]
    );

    k.clear_calls();
    let again = o.reconcile().await.expect("reconcile");
    assert_eq!((again.added, again.removed, again.kept), (0, 0, 7));
    assert!(
        writes(&k).is_empty(),
        "converged state writes nothing: {:?}",
        writes(&k)
    );
}

#[tokio::test]
async fn deleted_route_and_deleted_device_are_restored() {
    let (k, mut o) = vxlan_overlay().await;
    o.reconcile().await.expect("reconcile");
    k.remove_route_externally("10.244.3.0/24".parse().unwrap());
    let r = o.reconcile().await.expect("reconcile");
    assert_eq!((r.added, r.removed), (1, 0), "{r:?}");
    assert_eq!(ours(&k).len(), 2);

    k.remove_link_externally("flannel.1");
    assert!(ours(&k).is_empty(), "the device took its routes");
    let r = o.reconcile().await.expect("reconcile");
    assert_eq!(r.device, Some(VxlanOutcome::Created));
    assert_eq!(ours(&k).len(), 2, "{r:?}");
    assert_eq!(
        k.calls_of("replace_fdb").len(),
        4,
        "both FDB entries written again after the device came back"
    );
}

#[tokio::test]
async fn a_failing_peer_gets_no_route_and_the_others_are_programmed() {
    let (k, mut o) = vxlan_overlay().await;
    k.fail_next("replace_fdb", libc::ENOBUFS);
    let r = o.reconcile().await.expect("reconcile");
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        matches!(&r.errors[0], OverlayError::Peer { subnet, .. } if *subnet == net("10.244.2.0/24")),
        "{:?}",
        r.errors
    );
    assert_eq!(
        ours(&k),
        vec![(
            "10.244.3.0/24".parse().unwrap(),
            Some("10.244.3.0".parse().unwrap()),
            true
        )],
        "no route without its FDB entry"
    );
    let r = o.reconcile().await.expect("reconcile");
    assert!(r.is_clean(), "{:?}", r.errors);
    assert_eq!(ours(&k).len(), 2, "the next pass repairs it");
}

#[tokio::test]
async fn a_departed_peer_loses_route_neighbour_and_fdb_entry() {
    let (k, mut o) = vxlan_overlay().await;
    o.reconcile().await.expect("reconcile");
    o.set_peers(peers()[..1].to_vec());
    k.clear_calls();
    let r = o.reconcile().await.expect("reconcile");
    assert_eq!((r.added, r.removed), (0, 3), "{r:?}");
    let w = writes(&k);
    assert!(
        w[0].contains("del_route 10.244.3.0/24"),
        "route first: {w:?}"
    );
    assert_eq!(ours(&k).len(), 1);
}

#[tokio::test]
async fn device_failure_aborts_and_peer_failures_do_not() {
    let (k, mut o) = vxlan_overlay().await;
    k.remove_link_externally("flannel.1");
    k.fail_next("ensure_vxlan", libc::EPERM);
    assert!(
        o.reconcile().await.is_err(),
        "no device, nothing to program"
    );
    assert!(o.reconcile().await.expect("second pass").is_clean());
}

#[tokio::test]
async fn host_gw_routes_on_link_peers_and_refuses_the_rest() {
    let (k, ext) = node();
    let driver = HostGwDriver::new(&HostGwConfig::default(), &ext).expect("driver");
    let mut o = Overlay::new(k.clone(), Box::new(driver), ext)
        .await
        .expect("overlay");
    o.set_own_subnet(net("10.244.1.0/24"));
    o.set_peers(peers());
    let r = o.reconcile().await.expect("reconcile");
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(matches!(
        r.errors[0],
        OverlayError::PeerNotDirectlyReachable { .. }
    ));
    assert_eq!(
        ours(&k),
        vec![(
            "10.244.2.0/24".parse().unwrap(),
            Some("198.18.0.2".parse().unwrap()),
            false
        )]
    );
    assert!(
        k.calls_of("ensure_vxlan").is_empty(),
        "host-gw has no device"
    );
}

/// A dual-stack node: `eth0` also carries fd00:198:18::1/64, and a second overlay serves
/// IPv6 on that view of the interface.
fn dual_stack_ext(k: &RecordingKernel, v4: &ExternalInterface) -> ExternalInterface {
    k.add_address_externally(v4.index, "fd00:198:18::1/64".parse().expect("cidr"));
    ExternalInterface {
        iface_addr: ip("fd00:198:18::1"),
        public_ip: ip("fd00:198:18::1"),
        ..v4.clone()
    }
}

fn v6_peers() -> Vec<Peer> {
    vec![
        Peer {
            subnet: net("fd00:10:244:2::/64"),
            public_ip: ip("fd00:198:18::2"),
            backend_data: vtep(0x62),
        },
        Peer {
            subnet: net("fd00:10:244:3::/64"),
            public_ip: ip("fd00:198:19::3"),
            backend_data: vtep(0x63),
        },
    ]
}

#[tokio::test]
async fn dual_stack_vxlan_overlays_own_their_family_and_never_delete_each_other() {
    let (k, v4_ext) = node();
    let v6_ext = dual_stack_ext(&k, &v4_ext);
    let mut o4 = Overlay::new(
        k.clone(),
        Box::new(VxlanDriver::new(&VxlanConfig::default(), &v4_ext).expect("driver")),
        v4_ext,
    )
    .await
    .expect("overlay");
    let mut o6 = Overlay::new(
        k.clone(),
        Box::new(VxlanDriver::new(&VxlanConfig::default(), &v6_ext).expect("driver")),
        v6_ext,
    )
    .await
    .expect("overlay");
    assert_eq!(o6.device_name(), Some("flannel-v6.1"));
    o4.set_own_subnet(net("10.244.1.0/24"));
    o4.set_peers(peers());
    o6.set_own_subnet(net("fd00:10:244:1::/64"));
    o6.set_peers(v6_peers());
    for _ in 0..2 {
        let r4 = o4.reconcile().await.expect("v4");
        let r6 = o6.reconcile().await.expect("v6");
        assert!(r4.is_clean() && r6.is_clean(), "{r4:?} {r6:?}");
    }
    // Converged: a third round changes nothing in either family.
    let (r4, r6) = (o4.reconcile().await.unwrap(), o6.reconcile().await.unwrap());
    assert_eq!((r4.added + r4.removed, r6.added + r6.removed), (0, 0));

    let v6_dev = k
        .links_in("host")
        .into_iter()
        .find(|l| l.name == "flannel-v6.1")
        .expect("v6 device");
    assert_eq!(v6_dev.mtu, 1430, "1500 − 70 for an IPv6 underlay");
    let addrs: Vec<IpNetwork> = k
        .addresses_in("host")
        .into_iter()
        .filter(|(i, _)| *i == v6_dev.index)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(addrs, vec![net("fd00:10:244:1::/128")]);
    let routes = ours(&k);
    assert!(routes.contains(&(net("fd00:10:244:2::/64"), Some(ip("fd00:10:244:2::")), true)));
    assert!(routes.contains(&(net("10.244.2.0/24"), Some(ip("10.244.2.0")), true)));
    assert_eq!(routes.len(), 4, "{routes:?}");

    // A v6 peer leaves: only its route goes; IPv4 untouched.
    o6.set_peers(v6_peers()[..1].to_vec());
    let r6 = o6.reconcile().await.unwrap();
    assert_eq!(r6.removed, 3, "route, neighbour, FDB entry: {r6:?}");
    assert_eq!(ours(&k).len(), 3);
    assert_eq!(o4.reconcile().await.unwrap().added, 0);
}

#[tokio::test]
async fn host_gw_ipv6_routes_via_the_peers_public_ipv6_and_refuses_off_link_peers() {
    let (k, v4_ext) = node();
    let v6_ext = dual_stack_ext(&k, &v4_ext);
    let driver = HostGwDriver::new(&HostGwConfig::default(), &v6_ext).expect("driver");
    let mut o = Overlay::new(k.clone(), Box::new(driver), v6_ext)
        .await
        .expect("overlay");
    o.set_own_subnet(net("fd00:10:244:1::/64"));
    o.set_peers(v6_peers());
    let r = o.reconcile().await.expect("reconcile");
    assert_eq!(r.added, 1, "{r:?}");
    assert!(
        matches!(&r.errors[..], [OverlayError::PeerNotDirectlyReachable { subnet, .. }]
            if *subnet == net("fd00:10:244:3::/64")),
        "{:?}",
        r.errors
    );
    assert_eq!(
        ours(&k),
        vec![(net("fd00:10:244:2::/64"), Some(ip("fd00:198:18::2")), false)]
    );
}

#[tokio::test]
async fn a_slash_128_host_address_with_an_on_link_prefix_route_still_reaches_its_peers() {
    use crate::kernel::Kernel;
    use crate::kernel::netlink::Route;
    // DHCPv6-style: fd00:198:18::1/128 on eth0, the /64 known only as a route (RA).
    let k = RecordingKernel::new();
    let index = k.add_link_externally("eth0", 1500);
    k.add_address_externally(index, "fd00:198:18::1/128".parse().expect("cidr"));
    k.replace_route(&Route::new(net("fd00:198:18::/64")).dev(index))
        .await
        .expect("prefix route");
    let ext = ExternalInterface {
        index,
        name: "eth0".into(),
        mtu: 1500,
        iface_addr: ip("fd00:198:18::1"),
        public_ip: ip("fd00:198:18::1"),
    };
    let driver = HostGwDriver::new(&HostGwConfig::default(), &ext).expect("driver");
    let mut o = Overlay::new(k.clone(), Box::new(driver), ext)
        .await
        .expect("overlay");
    o.set_own_subnet(net("fd00:10:244:1::/64"));
    o.set_peers(v6_peers());
    let r = o.reconcile().await.expect("reconcile");
    assert_eq!(r.added, 1, "the on-link peer is programmed: {r:?}");
    assert_eq!(
        r.errors.len(),
        1,
        "the off-link one is still refused: {r:?}"
    );
}

/// `n` vxlan peers 10.244.<i>.0/24 behind 198.18.0.<i> (i from 2), VTEP MAC 02:..:<i>.
fn many_peers(n: u16) -> Vec<Peer> {
    (2..2 + n)
        .map(|i| {
            let (hi, lo) = ((i >> 8) as u8, (i & 0xff) as u8);
            Peer {
                subnet: net(&format!(
                    "10.{}.{lo}.0/24",
                    244 - u16::from(hi > 0) * 10 + u16::from(hi)
                )),
                public_ip: ip(&format!("198.18.{hi}.{lo}")),
                backend_data: Some(
                    serde_json::json!({
                        "VNI": 1,
                        "VtepMAC": format!("02:00:00:00:{hi:02x}:{lo:02x}")
                    })
                    .into(),
                ),
            }
        })
        .collect()
}

/// What one lease change costs at `n` peers: the calls made by the single-peer updates
/// (an added peer, a changed VTEP MAC, a removed peer), after a full reconcile.
async fn single_peer_calls(n: u16) -> Vec<Vec<String>> {
    let (k, ext) = node();
    // Every peer on-link for the recording kernel's address table: a /16 on eth0.
    k.add_address_externally(ext.index, "198.18.0.1/16".parse().expect("cidr"));
    let driver = VxlanDriver::new(&VxlanConfig::default(), &ext).expect("driver");
    let mut o = Overlay::new(k.clone(), Box::new(driver), ext)
        .await
        .expect("overlay");
    o.set_own_subnet(net("10.244.1.0/24"));
    let peers = many_peers(n);
    o.set_peers(peers.clone());
    assert!(o.reconcile().await.expect("reconcile").is_clean());
    let strip = |calls: Vec<String>| -> Vec<String> {
        calls
            .into_iter()
            .map(|c| c.split_whitespace().nth(1).unwrap_or_default().to_string())
            .collect()
    };
    let mut out = Vec::new();
    // Added.
    k.clear_calls();
    let other_vtep = |last: u8| {
        Some(serde_json::json!({"VNI": 1, "VtepMAC": format!("0a:00:00:00:00:{last:02x}")}).into())
    };
    let new = Peer {
        subnet: net("10.250.1.0/24"),
        public_ip: ip("198.18.250.1"),
        backend_data: other_vtep(0xfe),
    };
    let r = o.upsert_peer(new.clone()).await.expect("upsert");
    assert_eq!((r.added, r.removed), (3, 0), "{r:?}");
    out.push(strip(k.calls()));
    // Changed: a new VTEP MAC (the node was rebuilt).
    k.clear_calls();
    let mut moved = new.clone();
    moved.backend_data = other_vtep(0xfd);
    o.upsert_peer(moved).await.expect("upsert");
    out.push(strip(k.calls()));
    // Unchanged: nothing at all.
    k.clear_calls();
    let mut again = new.clone();
    again.backend_data = other_vtep(0xfd);
    o.upsert_peer(again).await.expect("upsert");
    out.push(strip(k.calls()));
    // Removed.
    k.clear_calls();
    o.remove_peer(new.subnet).await.expect("remove");
    out.push(strip(k.calls()));
    // And a full reconcile afterwards finds nothing to do: the single-peer path left the
    // kernel exactly as planned.
    k.clear_calls();
    let r = o.reconcile().await.expect("reconcile");
    assert!(!r.changed(), "{r:?} {:?}", writes(&k));
    assert_eq!(r.kept, 3 * peers.len() + 1);
    out
}

#[tokio::test]
async fn a_lease_change_costs_a_constant_number_of_netlink_requests() {
    let small = single_peer_calls(10).await;
    let large = single_peer_calls(1000).await;
    assert_eq!(small, large, "the same requests at 10 and at 1,000 peers");
    assert_eq!(
        large,
        vec![
            vec!["replace_neigh", "replace_fdb", "replace_route"],
            vec!["del_fdb", "replace_neigh", "replace_fdb"],
            Vec::<&str>::new(),
            vec!["del_route", "del_neigh", "del_fdb"],
        ]
    );
}

#[tokio::test]
async fn echoes_of_our_own_writes_are_not_relevant_and_real_changes_are() {
    use crate::kernel::netlink::Change;
    let (_k, mut o) = vxlan_overlay().await;
    o.reconcile().await.expect("reconcile");
    let dev = o.dev_index.expect("device");
    let route = |dst: &str, protocol: u8, deleted: bool| Change::Route {
        dst: Some(net(dst)),
        protocol,
        deleted,
    };
    // Our route to a peer appearing: an echo. Disappearing: news.
    assert!(!o.is_relevant(&route("10.244.2.0/24", ROUTE_PROTOCOL, false)));
    assert!(o.is_relevant(&route("10.244.2.0/24", ROUTE_PROTOCOL, true)));
    // A route of ours nobody wants appearing (a leftover): news; going: an echo.
    assert!(o.is_relevant(&route("10.244.99.0/24", ROUTE_PROTOCOL, false)));
    assert!(!o.is_relevant(&route("10.244.99.0/24", ROUTE_PROTOCOL, true)));
    // Someone else's route to a peer's subnet: news.
    assert!(o.is_relevant(&route("10.244.2.0/24", 4, false)));
    let neigh = |deleted, fdb, ip_: &str, mac: [u8; 6]| Change::Neigh {
        ifindex: dev,
        deleted,
        fdb,
        ip: Some(ip(ip_)),
        mac: Some(mac),
    };
    let mac2 = [2, 0, 0, 0, 0, 2];
    assert!(
        !o.is_relevant(&neigh(false, false, "10.244.2.0", mac2)),
        "echo"
    );
    assert!(
        o.is_relevant(&neigh(true, false, "10.244.2.0", mac2)),
        "deleted"
    );
    assert!(
        o.is_relevant(&neigh(false, false, "10.244.2.0", [2, 0, 0, 0, 0, 9])),
        "rewritten"
    );
    assert!(
        !o.is_relevant(&neigh(false, false, "10.244.7.7", mac2)),
        "the kernel's own"
    );
    assert!(
        !o.is_relevant(&neigh(false, true, "198.18.0.2", mac2)),
        "FDB echo"
    );
    assert!(
        o.is_relevant(&neigh(true, true, "198.18.0.2", mac2)),
        "FDB deleted"
    );
    assert!(
        o.is_relevant(&neigh(false, true, "198.18.0.77", mac2)),
        "FDB moved"
    );
    // Nexthop objects (10.244.2.0's is id 0x0af40200): our own write comes back with the
    // wanted gateway; deleted (its route went silently) or repointed is news; others' are not.
    let object = |id: u32, gw: &str, deleted| Change::Nexthop {
        id: Some(id),
        gateway: Some(ip(gw)),
        deleted,
    };
    assert!(
        !o.is_relevant(&object(0x0af4_0200, "10.244.2.0", false)),
        "echo"
    );
    assert!(
        o.is_relevant(&object(0x0af4_0200, "10.244.2.0", true)),
        "deleted"
    );
    assert!(
        o.is_relevant(&object(0x0af4_0200, "10.244.9.0", false)),
        "repointed"
    );
    assert!(!o.is_relevant(&object(77, "10.1.1.1", true)), "not ours");
    // A peer removed: the deletion of its object that follows is our own.
    o.remove_peer(net("10.244.2.0/24")).await.expect("remove");
    assert!(
        !o.is_relevant(&object(0x0af4_0200, "10.244.2.0", true)),
        "own delete"
    );
}

#[tokio::test]
async fn after_remove_all_a_single_peer_update_writes_its_entries_again() {
    let (k, mut o) = vxlan_overlay().await;
    assert!(o.reconcile().await.expect("reconcile").is_clean());
    o.remove_all().await.expect("remove_all");
    // The device is gone too: the single-peer path cannot write and says so (the caller
    // then reconciles), instead of believing the entries are still there.
    let peer = peers()[0].clone();
    assert!(o.upsert_peer(peer.clone()).await.is_err());
    assert!(o.reconcile().await.expect("reconcile").is_clean());
    assert!(ours(&k).iter().any(|(dst, _, _)| *dst == peer.subnet));
}

#[tokio::test]
async fn ipv4_gateway_routes_name_nexthop_objects_unless_the_kernel_has_none() {
    let ids = |k: &RecordingKernel| -> Vec<Option<u32>> {
        let mut ids: Vec<_> = k
            .routes_in("host")
            .into_iter()
            .filter(|r| r.protocol == ROUTE_PROTOCOL)
            .map(|r| r.nexthop_id)
            .collect();
        ids.sort();
        ids
    };
    // Ids are the subnets' addresses: 10.244.2.0 and 10.244.3.0.
    let (k, mut o) = vxlan_overlay().await;
    assert!(o.reconcile().await.unwrap().is_clean());
    assert_eq!(ids(&k), vec![Some(0x0af4_0200), Some(0x0af4_0300)]);
    // Converged: nothing more to write.
    let again = o.reconcile().await.unwrap();
    assert_eq!((again.added, again.removed), (0, 0), "{again:?}");

    // A kernel before 5.3: the gateway inline, as flannel writes it.
    let (k, ext) = node();
    k.without_nexthops();
    let (k, mut o) = vxlan_overlay_on(k, ext).await;
    assert!(o.reconcile().await.unwrap().is_clean());
    assert_eq!(ids(&k), vec![None, None]);
    assert_eq!(
        ours(&k),
        vec![
            (net("10.244.2.0/24"), Some(ip("10.244.2.0")), true),
            (net("10.244.3.0/24"), Some(ip("10.244.3.0")), true),
        ]
    );
}
