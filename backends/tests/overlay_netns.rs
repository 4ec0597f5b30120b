//! The overlay backends against the real kernel, in namespaces the tests create.
//!
//! Topology (built fresh for every test): the test thread unshares its own namespace, which
//! plays the underlay switch (bridge `br0`). Three node namespaces hang off it through veth
//! pairs (`eth0` in the node):
//!
//! ```text
//! node1 eth0 198.18.0.1/24   pods 10.244.1.0/24 (cni0 10.244.1.1)
//! node2 eth0 198.18.0.2/24   pods 10.244.2.0/24 (cni0 10.244.2.1)
//! node3 eth0 198.18.1.3/24   pods 10.244.3.0/24 (cni0 10.244.3.1)
//! ```
//!
//! All three share one L2 segment, but node3 is in another IP subnet (reached through a
//! `scope link` route), so for node1 it is *not* directly connected: host-gw refuses it and
//! DirectRouting tunnels to it, while node2 is directly connected.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use backends::kernel::netlink::{
    Change, IpFamily, MonitorGroup, Netlink, RT_SCOPE_LINK, Route, VethSpec, VxlanOutcome,
};
use backends::kernel::netns::NetNs;
use backends::overlay::hostgw::{HostGwConfig, HostGwDriver};
use backends::overlay::vxlan::{VxlanConfig, VxlanDriver};
use backends::overlay::{
    BackendDriver, ExternalInterface, Overlay, OverlayError, Peer, ROUTE_PROTOCOL, format_mac,
    vtep_mac, vtep_mac_from_backend_data,
};
use common::{in_new_netns, ip, ip_in, net, net4, prerequisites, v4};
use ipnetwork::{IpNetwork, Ipv4Network};

struct Node {
    ns: NetNs,
    nl: Netlink,
    ext: ExternalInterface,
    subnet: Ipv4Network,
}

impl Node {
    fn pod_ip(&self) -> Ipv4Addr {
        let o = self.subnet.network().octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    fn ip(&self, args: &[&str]) -> String {
        ip_in(&self.ns, args)
    }

    /// `ping -c 2 -W 2 -I <own pod IP> <dst>` inside the node; true on a reply.
    fn ping(&self, dst: Ipv4Addr) -> bool {
        let (src, dst) = (self.pod_ip().to_string(), dst.to_string());
        self.ns
            .run(move || {
                Command::new("ping")
                    .args(["-c", "2", "-i", "0.2", "-W", "2", "-I", &src, &dst])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            })
            .expect("enter node netns")
    }
}

/// Builds the three-node topology (see the module docs) below the caller's namespace.
async fn cluster() -> Vec<Node> {
    let here = Netlink::new().expect("netlink in the underlay netns");
    let br = here.ensure_bridge("br0", None).await.expect("br0");
    let layout = [
        ("198.18.0.1/24", "198.18.1.0/24"),
        ("198.18.0.2/24", "198.18.1.0/24"),
        ("198.18.1.3/24", "198.18.0.0/24"),
    ];
    let mut nodes = Vec::new();
    for (i, (addr, other)) in layout.iter().enumerate() {
        let n = i + 1;
        let ns = NetNs::create_anonymous().expect("node netns");
        let host = format!("u{n}");
        here.create_veth(&VethSpec {
            host_name: &host,
            peer_name: "eth0",
            mtu: None,
            master: Some(br.index),
            host_up: true,
            peer_ns: &ns,
            peer_mac: None,
        })
        .await
        .expect("veth into node");
        let nl = Netlink::new_in(&ns).expect("netlink in node");
        let lo = nl.link("lo").await.unwrap().expect("lo");
        nl.set_up(lo.index).await.unwrap();
        let eth0 = nl.link("eth0").await.unwrap().expect("eth0");
        nl.set_up(eth0.index).await.unwrap();
        let a = net4(addr);
        nl.add_address(eth0.index, IpNetwork::V4(a)).await.unwrap();
        nl.add_route(&Route::new(net(other)).dev(eth0.index).scope(RT_SCOPE_LINK))
            .await
            .unwrap();
        let subnet = net4(&format!("10.244.{n}.0/24"));
        let cni0 = nl.ensure_bridge("cni0", None).await.expect("cni0");
        nl.add_address(cni0.index, net(&format!("10.244.{n}.1/24")))
            .await
            .unwrap();
        nodes.push(Node {
            ns,
            nl,
            ext: ExternalInterface {
                index: eth0.index,
                name: "eth0".into(),
                mtu: eth0.mtu,
                iface_addr: a.ip().into(),
                public_ip: a.ip().into(),
            },
            subnet,
        });
    }
    nodes
}

/// Which backend a test runs (the drivers are built by [`start_overlay`], as flanneld's
/// factory does).
#[derive(Clone)]
enum OverlayConfig {
    Vxlan(VxlanConfig),
    HostGw,
}

async fn start_overlay(
    nl: Netlink,
    cfg: OverlayConfig,
    ext: ExternalInterface,
) -> Result<Overlay, OverlayError> {
    let driver: Box<dyn BackendDriver> = match cfg {
        OverlayConfig::Vxlan(c) => Box::new(VxlanDriver::new(&c, &ext)?),
        OverlayConfig::HostGw => Box::new(HostGwDriver::new(&HostGwConfig::default(), &ext)?),
    };
    Overlay::new(nl, driver, ext).await
}

fn vxlan(direct_routing: bool) -> OverlayConfig {
    OverlayConfig::Vxlan(VxlanConfig {
        direct_routing,
        ..VxlanConfig::default()
    })
}

/// The peer every other node would see for `node`, built from the lease data `overlay`
/// publishes (BackendData round trip, like the daemon does).
fn peer_of(node: &Node, overlay: &Overlay) -> Peer {
    Peer {
        subnet: node.subnet.into(),
        public_ip: node.ext.public_ip,
        backend_data: overlay
            .backend_data()
            .inspect(|d| {
                vtep_mac_from_backend_data(d).expect("own BackendData parses");
            })
            .map(Into::into),
    }
}

/// Starts an overlay on every node, gives each the full lease list (its own included: it must
/// skip it) and reconciles once. Returns the overlays and the peer list.
async fn start_all(nodes: &[Node], cfg: &OverlayConfig) -> (Vec<Overlay>, Vec<Peer>) {
    let mut overlays = Vec::new();
    for n in nodes {
        let o = start_overlay(n.nl.clone(), cfg.clone(), n.ext.clone())
            .await
            .expect("Overlay::new");
        overlays.push(o);
    }
    let peers: Vec<Peer> = nodes
        .iter()
        .zip(&overlays)
        .map(|(n, o)| peer_of(n, o))
        .collect();
    for (n, o) in nodes.iter().zip(overlays.iter_mut()) {
        o.set_own_subnet(n.subnet.into());
        o.set_peers(peers.clone());
    }
    (overlays, peers)
}

type NeighSet = BTreeSet<(Ipv4Addr, [u8; 6])>;
type FdbSet = BTreeSet<([u8; 6], Ipv4Addr)>;
type RouteSet = BTreeSet<(String, Option<String>, Option<u32>, bool)>;

/// The permanent neighbours, the FDB and our-protocol routes of a node, as sets.
async fn kernel_state(node: &Node, dev: &str) -> (NeighSet, FdbSet, RouteSet) {
    let mut neighs = NeighSet::new();
    let mut fdb = FdbSet::new();
    if let Some(l) = node.nl.link(dev).await.unwrap() {
        for n in node.nl.neighbours(l.index).await.unwrap() {
            if let (IpAddr::V4(ip), Some(mac), true) = (n.ip, n.mac, n.permanent) {
                neighs.insert((ip, mac));
            }
        }
        for e in node.nl.fdb_entries(l.index).await.unwrap() {
            assert!(e.is_self && e.permanent, "unexpected FDB entry {e:?}");
            if let Some(IpAddr::V4(dst)) = e.dst {
                fdb.insert((e.mac, dst));
            } else {
                panic!("FDB entry without IPv4 remote: {e:?}");
            }
        }
    }
    let routes = node
        .nl
        .routes(IpFamily::V4)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL)
        .map(|r| {
            (
                r.dst.to_string(),
                r.gateway.map(|g| g.to_string()),
                r.oif,
                r.onlink,
            )
        })
        .collect();
    (neighs, fdb, routes)
}

/// What node1 (index 0) must have with plain vxlan and peers 2 and 3.
async fn expected_vxlan_state(nodes: &[Node], macs: &[[u8; 6]]) -> (NeighSet, FdbSet, RouteSet) {
    let dev = nodes[0]
        .nl
        .link("flannel.1")
        .await
        .unwrap()
        .expect("flannel.1");
    let neighs = [(v4("10.244.2.0"), macs[1]), (v4("10.244.3.0"), macs[2])]
        .into_iter()
        .collect();
    let fdb = [(macs[1], v4("198.18.0.2")), (macs[2], v4("198.18.1.3"))]
        .into_iter()
        .collect();
    let routes = [
        (
            "10.244.2.0/24".to_string(),
            Some("10.244.2.0".to_string()),
            Some(dev.index),
            true,
        ),
        (
            "10.244.3.0/24".to_string(),
            Some("10.244.3.0".to_string()),
            Some(dev.index),
            true,
        ),
    ]
    .into_iter()
    .collect();
    (neighs, fdb, routes)
}

fn macs_of(peers: &[Peer]) -> Vec<[u8; 6]> {
    peers
        .iter()
        .map(|p| {
            let data = p.backend_data.as_ref().expect("vxlan peer has data");
            vtep_mac_from_backend_data(&data.value()).expect("vxlan peer has a MAC")
        })
        .collect()
}

#[test]
fn vxlan_device_entries_and_ping_across_three_nodes() {
    if !prerequisites(&["ip", "ping"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = cluster().await;
        let (mut overlays, peers) = start_all(&nodes, &vxlan(false)).await;
        assert!(
            !nodes[0].ping(nodes[1].pod_ip()),
            "no pod route before the first reconcile"
        );
        for o in overlays.iter_mut() {
            let r = o.reconcile().await.expect("reconcile");
            assert!(r.is_clean(), "{:?}", r.errors);
            // address + 2 peers x (neigh, fdb, route), nothing there before
            assert_eq!((r.added, r.removed, r.kept), (7, 0, 0), "{r:?}");
        }

        // The device, read back through netlink.
        let n1 = &nodes[0];
        let dev = n1
            .nl
            .vxlan_link("flannel.1")
            .await
            .unwrap()
            .expect("flannel.1 exists");
        assert_eq!(dev.link.kind.as_deref(), Some("vxlan"));
        assert_eq!(dev.vni, Some(1));
        assert_eq!(dev.local, Some(v4("198.18.0.1").into()));
        assert_eq!(dev.port, Some(8472));
        assert_eq!(dev.learning, Some(false));
        assert!(!dev.gbp);
        assert_eq!(dev.underlay, Some(n1.ext.index));
        assert_eq!(dev.link.mtu, n1.ext.mtu - 50);
        assert_eq!(dev.link.mac, Some(vtep_mac(v4("198.18.0.1").into(), 1)));
        assert!(dev.link.admin_up);
        assert_eq!(overlays[0].mtu(), n1.ext.mtu - 50);
        assert_eq!(overlays[0].backend_type(), "vxlan");
        assert_eq!(
            overlays[0].backend_data(),
            Some(serde_json::json!({
                "VNI": 1,
                "VtepMAC": format_mac(&vtep_mac(v4("198.18.0.1").into(), 1)),
            }))
        );
        // ... and through iproute2.
        let shown = n1.ip(&["-d", "link", "show", "flannel.1"]);
        for want in [
            "vxlan id 1 local 198.18.0.1 dev eth0",
            "dstport 8472",
            "nolearning",
            &format!("mtu {}", n1.ext.mtu - 50),
        ] {
            assert!(shown.contains(want), "{want:?} not in {shown}");
        }
        let v4_addrs: Vec<IpNetwork> = n1
            .nl
            .addresses(dev.link.index)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.is_ipv4())
            .collect();
        assert_eq!(v4_addrs, vec![net("10.244.1.0/32")]);

        // Per-peer entries, exactly.
        let macs = macs_of(&peers);
        assert_eq!(
            kernel_state(n1, "flannel.1").await,
            expected_vxlan_state(&nodes, &macs).await
        );
        // IPv4 peer routes name a nexthop object (id = the subnet's address as a number,
        // 10.244.2.0 = 183763456) that carries the gateway, tagged with our protocol.
        let routes = n1.ip(&["route", "show", "proto", &ROUTE_PROTOCOL.to_string()]);
        assert!(
            routes.contains("10.244.2.0/24 nhid 183763456 via 10.244.2.0 dev flannel.1 onlink"),
            "{routes}"
        );
        let objects = n1.ip(&["nexthop", "show", "proto", &ROUTE_PROTOCOL.to_string()]);
        assert!(
            objects
                .contains("id 183763456 via 10.244.2.0 dev flannel.1 scope link proto 150 onlink"),
            "{objects}"
        );
        assert_eq!(objects.lines().count(), 2, "one object per peer: {objects}");
        let fdb = n1.ip(&["neigh", "show", "dev", "flannel.1"]);
        assert!(
            fdb.contains(&format!(
                "10.244.3.0 lladdr {} PERMANENT",
                format_mac(&macs[2])
            )),
            "{fdb}"
        );

        // Pod-to-pod traffic through the tunnels, both subnets of the underlay.
        assert!(
            nodes[0].ping(nodes[1].pod_ip()),
            "node1 -> node2 over vxlan"
        );
        assert!(
            nodes[0].ping(nodes[2].pod_ip()),
            "node1 -> node3 over vxlan"
        );
        assert!(
            nodes[2].ping(nodes[1].pod_ip()),
            "node3 -> node2 over vxlan"
        );

        // A second reconcile finds nothing to do.
        let r = overlays[0].reconcile().await.unwrap();
        assert_eq!((r.added, r.removed, r.kept), (0, 0, 7), "{r:?}");
        assert!(r.device.is_none());
    });
}

#[test]
fn host_gw_routes_ping_and_refuses_unreachable_peer() {
    if !prerequisites(&["ip", "ping"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = cluster().await;
        let (mut overlays, _) = start_all(&nodes[..2], &OverlayConfig::HostGw).await;
        // node1 also hears about node3, which is not on a directly connected subnet.
        let mut peers: Vec<Peer> = overlays[0].peers().to_vec();
        peers.push(Peer {
            subnet: nodes[2].subnet.into(),
            public_ip: nodes[2].ext.public_ip,
            backend_data: None,
        });
        overlays[0].set_peers(peers);
        let r = overlays[0].reconcile().await.expect("reconcile");
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        match &r.errors[0] {
            OverlayError::PeerNotDirectlyReachable {
                subnet,
                public_ip,
                iface,
            } => {
                assert_eq!(*subnet, IpNetwork::from(nodes[2].subnet));
                assert_eq!(*public_ip, v4("198.18.1.3"));
                assert_eq!(iface, "eth0");
            }
            e => panic!("unexpected error {e}"),
        }
        assert!(r.errors[0].to_string().contains("10.244.3.0/24"));
        assert_eq!(r.added, 1);
        assert!(overlays[1].reconcile().await.unwrap().is_clean());

        assert_eq!(overlays[0].backend_type(), "host-gw");
        assert_eq!(overlays[0].backend_data(), None);
        assert_eq!(overlays[0].mtu(), nodes[0].ext.mtu);
        assert!(nodes[0].nl.link("flannel.1").await.unwrap().is_none());
        let (neighs, fdb, routes) = kernel_state(&nodes[0], "flannel.1").await;
        assert!(neighs.is_empty() && fdb.is_empty());
        let want: RouteSet = [(
            "10.244.2.0/24".to_string(),
            Some("198.18.0.2".to_string()),
            Some(nodes[0].ext.index),
            false,
        )]
        .into_iter()
        .collect();
        assert_eq!(routes, want, "nothing programmed for the refused peer");

        assert!(
            nodes[0].ping(nodes[1].pod_ip()),
            "node1 -> node2 over host-gw"
        );
        assert!(
            nodes[1].ping(nodes[0].pod_ip()),
            "node2 -> node1 over host-gw"
        );

        // host-gw cannot work behind NAT.
        let mut natted = nodes[0].ext.clone();
        natted.public_ip = v4("198.18.0.99").into();
        let err = start_overlay(nodes[0].nl.clone(), OverlayConfig::HostGw, natted)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OverlayError::PublicIpMismatch { .. }),
            "{err}"
        );
    });
}

#[test]
fn reconcile_repairs_drift_and_leaves_foreign_routes_alone() {
    if !prerequisites(&["ip", "ping"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = cluster().await;
        let (mut overlays, peers) = start_all(&nodes, &vxlan(false)).await;
        for o in overlays.iter_mut() {
            assert!(o.reconcile().await.unwrap().is_clean());
        }
        let n1 = &nodes[0];
        let macs = macs_of(&peers);
        let eth0 = n1.ext.index;

        // A stale route of ours (from a previous run) and a foreign one.
        let stale = Route::new(net("10.244.99.0/24"))
            .via("198.18.0.2".parse().unwrap())
            .dev(eth0)
            .protocol(ROUTE_PROTOCOL);
        n1.nl.add_route(&stale).await.unwrap();
        n1.ip(&[
            "route",
            "add",
            "10.244.98.0/24",
            "via",
            "198.18.0.2",
            "dev",
            "eth0",
        ]);
        // Someone deletes a route, a neighbour and an FDB entry.
        n1.ip(&["route", "del", "10.244.2.0/24"]);
        n1.ip(&["neigh", "del", "10.244.3.0", "dev", "flannel.1"]);
        let mac2 = format_mac(&macs[1]);
        n1.ns
            .run(move || {
                let st = Command::new("bridge")
                    .args([
                        "fdb",
                        "del",
                        &mac2,
                        "dev",
                        "flannel.1",
                        "dst",
                        "198.18.0.2",
                        "self",
                    ])
                    .status()
                    .expect("run bridge");
                assert!(st.success(), "bridge fdb del failed");
            })
            .unwrap();
        assert_ne!(
            kernel_state(n1, "flannel.1").await,
            expected_vxlan_state(&nodes, &macs).await
        );

        let r = overlays[0].reconcile().await.unwrap();
        assert!(r.is_clean(), "{:?}", r.errors);
        assert_eq!((r.added, r.removed, r.kept), (3, 1, 4), "{r:?}");
        assert_eq!(
            kernel_state(n1, "flannel.1").await,
            expected_vxlan_state(&nodes, &macs).await
        );
        let all = n1.ip(&["route", "show"]);
        assert!(
            all.contains("10.244.98.0/24 via 198.18.0.2 dev eth0"),
            "{all}"
        );
        assert!(!all.contains("10.244.99.0/24"), "{all}");

        // The device is deleted: recreated with every peer.
        let old = n1.nl.link("flannel.1").await.unwrap().unwrap();
        assert!(n1.nl.del_link("flannel.1").await.unwrap());
        let r = overlays[0].reconcile().await.unwrap();
        assert!(r.is_clean(), "{:?}", r.errors);
        assert_eq!(r.device, Some(VxlanOutcome::Created));
        assert_eq!(r.added, 7, "{r:?}");
        let new = n1.nl.link("flannel.1").await.unwrap().unwrap();
        assert_ne!(old.index, new.index);
        assert_eq!(new.mac, old.mac);
        assert_eq!(
            kernel_state(n1, "flannel.1").await,
            expected_vxlan_state(&nodes, &macs).await
        );
        assert!(
            nodes[0].ping(nodes[1].pod_ip()),
            "traffic after device recreation"
        );

        // Someone recreates it with another identity (port 4789): replaced.
        assert!(n1.nl.del_link("flannel.1").await.unwrap());
        n1.ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            "198.18.0.1",
            "dev",
            "eth0",
            "dstport",
            "4789",
            "nolearning",
        ]);
        let r = overlays[0].reconcile().await.unwrap();
        assert_eq!(r.device, Some(VxlanOutcome::Recreated));
        let dev = n1.nl.vxlan_link("flannel.1").await.unwrap().unwrap();
        assert_eq!(dev.port, Some(8472));
        assert_eq!(
            kernel_state(n1, "flannel.1").await,
            expected_vxlan_state(&nodes, &macs).await
        );

        // MTU changed and device down: fixed in place, entries kept.
        n1.ip(&["link", "set", "flannel.1", "mtu", "1300", "down"]);
        let r = overlays[0].reconcile().await.unwrap();
        assert_eq!(r.device, Some(VxlanOutcome::Fixed));
        let fixed = n1.nl.vxlan_link("flannel.1").await.unwrap().unwrap();
        assert_eq!(fixed.link.index, dev.link.index);
        assert_eq!(fixed.link.mtu, n1.ext.mtu - 50);
        assert!(fixed.link.admin_up);
        assert!(
            nodes[0].ping(nodes[2].pod_ip()),
            "traffic after in-place fix"
        );

        // remove_all takes everything of ours, and nothing else.
        overlays[0].remove_all().await.unwrap();
        assert!(n1.nl.link("flannel.1").await.unwrap().is_none());
        let (_, _, routes) = kernel_state(n1, "flannel.1").await;
        assert!(routes.is_empty());
        assert!(n1.ip(&["route", "show"]).contains("10.244.98.0/24"));
    });
}

#[test]
fn peer_value_changes_replace_entries() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = cluster().await;
        let (mut overlays, mut peers) = start_all(&nodes, &vxlan(false)).await;
        assert!(overlays[0].reconcile().await.unwrap().is_clean());
        let n1 = &nodes[0];
        let old = macs_of(&peers);
        let new_mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        peers[1].backend_data =
            Some(serde_json::json!({"VNI": 1, "VtepMAC": format_mac(&new_mac)}).into()); // node2 got a new MAC
        peers[2].public_ip = v4("198.18.1.33").into(); // node3 moved
        overlays[0].set_peers(peers.clone());
        let r = overlays[0].reconcile().await.unwrap();
        assert!(r.is_clean(), "{:?}", r.errors);
        let (neighs, fdb, routes) = kernel_state(n1, "flannel.1").await;
        let want_n: NeighSet = [(v4("10.244.2.0"), new_mac), (v4("10.244.3.0"), old[2])]
            .into_iter()
            .collect();
        let want_f: FdbSet = [(new_mac, v4("198.18.0.2")), (old[2], v4("198.18.1.33"))]
            .into_iter()
            .collect();
        assert_eq!(neighs, want_n);
        assert_eq!(
            fdb, want_f,
            "old MAC's FDB entry is gone, moved remote replaced"
        );
        assert_eq!(routes.len(), 2);

        // A peer that leaves takes its entries with it.
        peers.truncate(2);
        overlays[0].set_peers(peers);
        let r = overlays[0].reconcile().await.unwrap();
        assert_eq!(r.removed, 3, "{r:?}");
        let (neighs, fdb, routes) = kernel_state(n1, "flannel.1").await;
        assert_eq!(neighs.len(), 1);
        assert_eq!(fdb.len(), 1);
        assert_eq!(routes.len(), 1);
        assert!(routes.iter().all(|r| r.0 == "10.244.2.0/24"));
    });
}

#[test]
fn direct_routing_uses_plain_routes_for_same_l2_peers() {
    if !prerequisites(&["ip", "ping"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = cluster().await;
        let (mut overlays, peers) = start_all(&nodes, &vxlan(true)).await;
        for o in overlays.iter_mut() {
            let r = o.reconcile().await.unwrap();
            assert!(r.is_clean(), "{:?}", r.errors);
        }
        let n1 = &nodes[0];
        let dev = n1.nl.link("flannel.1").await.unwrap().unwrap();
        let macs = macs_of(&peers);
        let (neighs, fdb, routes) = kernel_state(n1, "flannel.1").await;
        let want_r: RouteSet = [
            (
                "10.244.2.0/24".to_string(),
                Some("198.18.0.2".to_string()),
                Some(n1.ext.index),
                false,
            ),
            (
                "10.244.3.0/24".to_string(),
                Some("10.244.3.0".to_string()),
                Some(dev.index),
                true,
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(routes, want_r);
        assert_eq!(neighs, [(v4("10.244.3.0"), macs[2])].into_iter().collect());
        assert_eq!(fdb, [(macs[2], v4("198.18.1.3"))].into_iter().collect());
        assert!(nodes[0].ping(nodes[1].pod_ip()), "direct route to node2");
        assert!(nodes[0].ping(nodes[2].pod_ip()), "tunnel to node3");
    });
}

#[test]
fn restart_keeps_device_and_vtep_mac() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = cluster().await;
        let n1 = &nodes[0];
        let (mut overlays, peers) = start_all(&nodes, &vxlan(false)).await;
        assert!(overlays[0].reconcile().await.unwrap().is_clean());
        let before = n1.nl.link("flannel.1").await.unwrap().unwrap();
        let data = overlays[0].backend_data();
        drop(overlays);

        let mut again = start_overlay(n1.nl.clone(), vxlan(false), n1.ext.clone())
            .await
            .unwrap();
        assert_eq!(again.backend_data(), data, "VtepMAC survives a restart");
        let after = n1.nl.link("flannel.1").await.unwrap().unwrap();
        assert_eq!(after.index, before.index, "device adopted, not recreated");
        assert_eq!(after.mac, before.mac);
        again.set_own_subnet(n1.subnet.into());
        again.set_peers(peers);
        let r = again.reconcile().await.unwrap();
        assert_eq!((r.added, r.removed, r.kept), (0, 0, 7), "hitless: {r:?}");

        // Backend.MTU overrides the interface MTU; the device is fixed in place.
        let cfg = OverlayConfig::Vxlan(VxlanConfig {
            mtu: Some(1400),
            ..VxlanConfig::default()
        });
        let o = start_overlay(n1.nl.clone(), cfg, n1.ext.clone())
            .await
            .unwrap();
        assert_eq!(o.mtu(), 1350);
        let l = n1.nl.link("flannel.1").await.unwrap().unwrap();
        assert_eq!((l.index, l.mtu), (before.index, 1350));
    });
}

#[test]
fn monitor_reports_route_deletion() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = cluster().await;
        let (mut overlays, _) = start_all(&nodes[..2], &vxlan(false)).await;
        assert!(overlays[0].reconcile().await.unwrap().is_clean());
        let n1 = &nodes[0];
        let mut mon = Netlink::monitor_in(&n1.ns, &MonitorGroup::ALL).unwrap();
        n1.ip(&["route", "del", "10.244.2.0/24"]);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match mon.next_change().await {
                    Some(
                        c @ Change::Route {
                            dst,
                            protocol,
                            deleted: true,
                        },
                    ) if dst == Some(net("10.244.2.0/24")) => {
                        assert!(overlays[0].is_relevant(&c), "{c:?}");
                        break protocol;
                    }
                    Some(_) => continue,
                    None => panic!("monitor ended"),
                }
            }
        })
        .await
        .expect("a route deletion event within 5 s");
        assert_eq!(got, ROUTE_PROTOCOL);

        // Deleting the route's nexthop object takes the route without a route notification;
        // the object's deletion is reported, and is news.
        assert!(overlays[0].reconcile().await.unwrap().is_clean());
        n1.ip(&["nexthop", "del", "id", "183763456"]);
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match mon.next_change().await {
                    Some(
                        c @ Change::Nexthop {
                            id: Some(183763456),
                            deleted: true,
                            ..
                        },
                    ) => {
                        assert!(overlays[0].is_relevant(&c), "{c:?}");
                        break;
                    }
                    Some(_) => continue,
                    None => panic!("monitor ended"),
                }
            }
        })
        .await
        .expect("a nexthop deletion event within 5 s");

        // A link deletion is reported too, and the reconcile it triggers repairs everything.
        assert!(n1.nl.del_link("flannel.1").await.unwrap());
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(Change::Link {
                    name,
                    deleted: true,
                    ..
                }) = mon.next_change().await
                    && name.as_deref() == Some("flannel.1")
                {
                    break;
                }
            }
        })
        .await
        .expect("a link deletion event within 5 s");
        let r = overlays[0].reconcile().await.unwrap();
        assert_eq!(r.device, Some(VxlanOutcome::Created));
        // The reconcile's own writes come back as a burst, which can be drained without
        // waiting; a reconcile that changes nothing produces none (no feedback loop).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut drained = 0;
        while mon.try_recv().is_ok() {
            drained += 1;
        }
        assert!(
            drained >= 3,
            "device, neighbour, FDB and route events: {drained}"
        );
        // Let late link-state notifications (linkwatch batches them for up to 1 s) settle.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while mon.try_recv().is_ok() {}
        let r = overlays[0].reconcile().await.unwrap();
        assert!(!r.changed(), "{r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The kernel's own late IPv6 work on the new device (its fe80::/64 and multicast
        // routes, once addrconf runs) may still arrive; nothing that would trigger another
        // reconcile may.
        let mut late = Vec::new();
        while let Ok(c) = mon.try_recv() {
            late.push(c);
        }
        assert!(
            late.iter().all(|c| !overlays[0].is_relevant(c)),
            "a no-op reconcile caused relevant kernel events: {late:?}"
        );

        // The monitor is bound to node1: changes in the underlay are not reported.
        ip(&["link", "set", "u1", "mtu", "1400"]);
        n1.ip(&["route", "add", "10.244.77.0/24", "dev", "eth0"]);
        let next = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match mon.next_change().await {
                    Some(c @ Change::Route { dst, .. }) if dst == Some(net("10.244.77.0/24")) => {
                        assert!(!overlays[0].is_relevant(&c), "foreign route: {c:?}");
                        break true;
                    }
                    Some(Change::Link { name, .. }) if name.as_deref() == Some("u1") => {
                        break false;
                    }
                    Some(_) => continue,
                    None => break false,
                }
            }
        })
        .await
        .expect("the node1 route event");
        assert!(next, "an underlay link change leaked into node1's monitor");
    });
}

/// IPv4 peer routes through nexthop objects: an inline route of ours (an older release's, or
/// flannel's form) is rewritten to name an object; an object deleted or changed by someone
/// is restored by the next reconcile (deleting an object takes its routes without a route
/// notification); `nexthop_compat_mode=0`, where routes do not show the object's gateway,
/// changes nothing; a removed peer's object goes with it, and `remove_all` leaves none.
#[test]
fn nexthop_objects_are_converged_repaired_and_removed() {
    if !prerequisites(&["ip", "ping", "sysctl"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = cluster().await;
        let (mut overlays, peers) = start_all(&nodes, &vxlan(false)).await;
        for o in overlays.iter_mut() {
            assert!(o.reconcile().await.unwrap().is_clean());
        }
        let n1 = &nodes[0];
        let macs = macs_of(&peers);
        let objects = || n1.ip(&["nexthop", "show", "proto", "150"]);
        let route_to_2 = || n1.ip(&["route", "show", "10.244.2.0/24"]);
        let expected = expected_vxlan_state(&nodes, &macs).await;
        let settled = |r: &backends::overlay::ReconcileReport| {
            assert!(r.is_clean(), "{:?}", r.errors);
        };

        // The inline form (what flannel writes) is converted.
        n1.ip(&[
            "route",
            "replace",
            "10.244.2.0/24",
            "via",
            "10.244.2.0",
            "dev",
            "flannel.1",
            "onlink",
            "proto",
            "150",
        ]);
        assert!(!route_to_2().contains("nhid"), "{}", route_to_2());
        let r = overlays[0].reconcile().await.unwrap();
        settled(&r);
        assert_eq!(r.added, 1, "{r:?}");
        assert!(route_to_2().contains("nhid 183763456"), "{}", route_to_2());

        // Someone deletes the object: the route goes silently; the reconcile restores both.
        n1.ip(&["nexthop", "del", "id", "183763456"]);
        assert_eq!(route_to_2(), "");
        let r = overlays[0].reconcile().await.unwrap();
        settled(&r);
        assert_eq!(r.added, 1, "{r:?}");
        assert_eq!(kernel_state(n1, "flannel.1").await, expected);
        assert!(
            nodes[0].ping(nodes[1].pod_ip()),
            "node1 -> node2 after repair"
        );

        // Someone points the object elsewhere: put back.
        n1.ip(&[
            "nexthop",
            "replace",
            "id",
            "183763456",
            "via",
            "10.244.9.0",
            "dev",
            "flannel.1",
            "onlink",
            "proto",
            "150",
        ]);
        let r = overlays[0].reconcile().await.unwrap();
        settled(&r);
        assert_eq!(r.added, 1, "{r:?}");
        assert_eq!(kernel_state(n1, "flannel.1").await, expected);

        // Routes that show only `nhid`: read through the objects, nothing to do.
        n1.ns
            .run(|| {
                let st = Command::new("sysctl")
                    .args(["-qw", "net.ipv4.nexthop_compat_mode=0"])
                    .status()
                    .expect("run sysctl");
                assert!(st.success(), "sysctl nexthop_compat_mode=0");
            })
            .unwrap();
        assert!(!route_to_2().contains("via"), "{}", route_to_2());
        let r = overlays[0].reconcile().await.unwrap();
        settled(&r);
        assert_eq!((r.added, r.removed), (0, 0), "{r:?}");
        assert_eq!(kernel_state(n1, "flannel.1").await, expected);

        // A peer leaves: its object goes, the other stays.
        overlays[0]
            .remove_peer(nodes[1].subnet.into())
            .await
            .unwrap();
        let left = objects();
        assert!(!left.contains("183763456"), "{left}");
        assert!(left.contains("id 183763712 via 10.244.3.0"), "{left}");
        assert_eq!(route_to_2(), "");
        // It comes back (one batch: object, then neighbour, FDB entry and route together).
        let back = overlays[0].upsert_peer(peers[1].clone()).await.unwrap();
        assert_eq!(back.added, 3, "{back:?}");
        assert!(route_to_2().contains("nhid 183763456"), "{}", route_to_2());
        assert_eq!(kernel_state(n1, "flannel.1").await, expected);
        assert!(
            nodes[0].ping(nodes[1].pod_ip()),
            "node1 -> node2 after re-adding"
        );

        // Everything of ours removed: no object left either.
        overlays[0].remove_all().await.unwrap();
        assert_eq!(objects(), "");
    });
}
