//! The wireguard backend's userspace path against the real kernel: TUN devices, sockets and
//! device threads in namespaces the tests create (the two-node topology of
//! `backends/tests/common/two_nodes.rs`; the test thread's own namespace is the underlay
//! switch, 198.18.0.99 a host outside the cluster). What the cluster tests in
//! `examples/tests/wireguard.rs` cannot reach from outside flanneld: spoofed inner sources,
//! roaming, cookie replies under a handshake flood, persistent keepalives.
//!
//! Needs root, `ip`, `ping` and `iperf3`.
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/two_nodes.rs"]
mod two_nodes;

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backends::overlay::{Overlay, Peer};
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use common::{in_new_netns, ip_in, net4, prerequisites};
use flannel_wireguard::device::Counters;
use flannel_wireguard::{WireguardConfig, WireguardDriver, WireguardPaths};
use two_nodes::{Node, iperf, ping, run_in, text, topology};

const PORT: u16 = 51820;

fn paths(dir: &std::path::Path, n: usize) -> WireguardPaths {
    WireguardPaths {
        key_file: dir.join(format!("wgkey{n}")),
        socket_dir: Some(dir.join(format!("sock{n}"))),
        force_userspace: true,
    }
}

fn driver(node: &Node, config: &WireguardConfig, paths: &WireguardPaths) -> WireguardDriver {
    WireguardDriver::start(
        config,
        net4("10.244.0.0/16").into(),
        &node.ext,
        paths,
        Some(&node.ns),
    )
    .expect("WireguardDriver::start")
}

fn wg(o: &Overlay) -> &WireguardDriver {
    o.driver()
        .as_any()
        .downcast_ref::<WireguardDriver>()
        .expect("wireguard driver")
}

fn counters(o: &Overlay) -> &Counters {
    wg(o).userspace().expect("userspace path").counters()
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// `node` as its lease describes it to the others.
fn peer_of(node: &Node, public_key: &str, public_ip: Ipv4Addr) -> Peer {
    Peer {
        subnet: node.subnet.into(),
        public_ip: IpAddr::V4(public_ip),
        backend_data: Some(serde_json::json!({"PublicKey": public_key, "Port": PORT}).into()),
    }
}

async fn overlay(node: &Node, driver: WireguardDriver, peers: Vec<Peer>) -> Overlay {
    let mut o = Overlay::new(node.nl.clone(), Box::new(driver), node.ext.clone())
        .await
        .expect("Overlay::new wireguard");
    o.set_own_subnet(node.subnet.into());
    o.set_peers(peers);
    let report = o.reconcile().await.expect("reconcile");
    assert!(report.is_clean(), "{:?}", report.errors);
    o
}

/// Both nodes up, each with the other as its peer.
async fn two_overlays(
    nodes: &[Node],
    dir: &std::path::Path,
    configs: [WireguardConfig; 2],
) -> (Overlay, Overlay) {
    let d1 = driver(&nodes[0], &configs[0], &paths(dir, 1));
    let d2 = driver(&nodes[1], &configs[1], &paths(dir, 2));
    let (k1, k2) = (d1.public_key(), d2.public_key());
    let ip = |n: &Node| match n.ext.public_ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!(),
    };
    let o1 = overlay(&nodes[0], d1, vec![peer_of(&nodes[1], &k2, ip(&nodes[1]))]).await;
    let o2 = overlay(&nodes[1], d2, vec![peer_of(&nodes[0], &k1, ip(&nodes[0]))]).await;
    (o1, o2)
}

#[test]
fn userspace_device_carries_traffic_drops_spoofed_sources_and_keeps_alive() {
    if !prerequisites(&["ip", "ping", "iperf3"]) {
        return;
    }
    in_new_netns(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = topology().await;
        let keepalive = WireguardConfig {
            persistent_keepalive: 1,
            ..WireguardConfig::default()
        };
        let (mut o1, o2) =
            two_overlays(&nodes, dir.path(), [keepalive, WireguardConfig::default()]).await;
        assert_eq!(o1.backend_type(), "wireguard");
        assert_eq!(o1.mtu(), 1420);
        let link = ip_in(&nodes[0].ns, &["-d", "link", "show", "flannel-wg"]);
        assert!(link.contains("mtu 1420") && link.contains("tun"), "{link}");
        let routes = ip_in(&nodes[0].ns, &["route", "show", "proto", "150"]);
        assert_eq!(routes.trim(), "10.244.0.0/16 dev flannel-wg scope link");

        // Full-size packets with DF both ways (MTU 1420), TCP both ways.
        for (a, b) in [(0, 1), (1, 0)] {
            let out = ping(&nodes[a].pod, nodes[b].pod_ip, &["-M", "do", "-s", "1392"]);
            assert!(out.status.success(), "DF ping: {}", text(&out));
        }
        let out = ping(&nodes[0].pod, nodes[1].pod_ip, &["-M", "do", "-s", "1393"]);
        assert!(!out.status.success(), "1421-byte packets must not fit");
        iperf(&nodes[0].pod, &nodes[1].pod, nodes[1].pod_ip, "20M", false);
        iperf(&nodes[0].pod, &nodes[1].pod, nodes[1].pod_ip, "20M", true);
        let (c1, c2) = (counters(&o1), counters(&o2));
        assert!(get(&c1.tx_packets) > 10_000, "tx {}", get(&c1.tx_packets));
        assert!(get(&c2.handshakes_completed) >= 1);
        assert!(get(&c1.tx_gso_messages) > 0, "UDP GSO in use");

        // A packet whose inner source is outside node 1's allowed IPs (its subnet): node 1
        // encrypts it (routing is by destination), node 2 decrypts and drops it, counted.
        run_in(
            &nodes[0].ns,
            "ip",
            &["addr", "add", "10.244.9.1/32", "dev", "lo"],
        );
        let before = get(&c2.rx_dropped_allowed_ips);
        let out = ping(&nodes[0].ns, nodes[1].pod_ip, &["-I", "10.244.9.1"]);
        assert!(
            !out.status.success(),
            "spoofed source got through: {}",
            text(&out)
        );
        assert!(get(&c2.rx_dropped_allowed_ips) >= before + 2);
        let peer1 = wg(&o2).userspace().unwrap().peers();
        let (p, _) = peer1.iter().next().expect("node 1 as peer");
        assert!(
            get(&p.counters.rx_dropped_allowed_ips) >= 2,
            "per-peer count"
        );

        // Persistent keepalive (1 s on node 1): sent while idle.
        let k0 = get(&c1.keepalives_sent);
        std::thread::sleep(Duration::from_millis(2600));
        assert!(get(&c1.keepalives_sent) >= k0 + 2, "keepalives while idle");

        // A removed peer is gone at once; added back, traffic resumes.
        o1.set_peers(Vec::new());
        o1.reconcile().await.expect("reconcile");
        assert!(wg(&o1).userspace().unwrap().peers().is_empty());
        let out = ping(&nodes[0].pod, nodes[1].pod_ip, &[]);
        assert!(!out.status.success(), "removed peer still reachable");
        let k2 = wg(&o2).public_key();
        o1.set_peers(vec![peer_of(&nodes[1], &k2, Ipv4Addr::new(198, 18, 0, 2))]);
        o1.reconcile().await.expect("reconcile");
        let back = (0..20).any(|_| ping(&nodes[0].pod, nodes[1].pod_ip, &[]).status.success());
        assert!(back, "peer added back");
        drop(o2);
    });
}

#[test]
fn a_peer_that_moves_is_followed_by_its_authenticated_packets_and_by_its_lease() {
    if !prerequisites(&["ip", "ping"]) {
        return;
    }
    in_new_netns(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = topology().await;
        let (mut o1, o2) = two_overlays(&nodes, dir.path(), Default::default()).await;
        let out = ping(&nodes[1].pod, nodes[0].pod_ip, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let k1 = wg(&o1).public_key();
        let k2 = wg(&o2).public_key();
        // Node 2 moves to 198.18.0.22 (its daemon restarts there with the same key); node 1
        // still has the old address from the lease.
        drop(o2);
        run_in(
            &nodes[1].ns,
            "ip",
            &["addr", "add", "198.18.0.22/24", "dev", "eth0"],
        );
        nodes[1].ext.iface_addr = Ipv4Addr::new(198, 18, 0, 22).into();
        nodes[1].ext.public_ip = nodes[1].ext.iface_addr;
        let d2 = driver(
            &nodes[1],
            &WireguardConfig::default(),
            &paths(dir.path(), 2),
        );
        let _o2 = overlay(
            &nodes[1],
            d2,
            vec![peer_of(&nodes[0], &k1, Ipv4Addr::new(198, 18, 0, 1))],
        )
        .await;
        // Node 2 speaks first: its authenticated handshake moves node 1's endpoint for it.
        let out = ping(&nodes[1].pod, nodes[0].pod_ip, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let peers = wg(&o1).userspace().unwrap().peers();
        let (p, _) = peers.iter().next().expect("peer");
        assert_eq!(
            p.endpoint(),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 22), PORT).into()
        );
        let out = ping(&nodes[0].pod, nodes[1].pod_ip, &[]);
        assert!(
            out.status.success(),
            "node 1 -> node 2 at its new address: {}",
            text(&out)
        );

        // The lease catches up with the new address: nothing moves, traffic flows. Then node
        // 2 moves back to 198.18.0.2 and only its lease says so (it stays silent): the lease
        // moves the endpoint.
        let new_ip = Ipv4Addr::new(198, 18, 0, 22);
        o1.set_peers(vec![peer_of(&nodes[1], &k2, new_ip)]);
        o1.reconcile().await.expect("reconcile");
        let peers = wg(&o1).userspace().unwrap().peers();
        let (p, _) = peers.iter().next().expect("peer");
        assert_eq!(p.endpoint(), SocketAddrV4::new(new_ip, PORT).into());
        assert!(ping(&nodes[0].pod, nodes[1].pod_ip, &[]).status.success());
        drop(_o2);
        nodes[1].ext.iface_addr = Ipv4Addr::new(198, 18, 0, 2).into();
        nodes[1].ext.public_ip = nodes[1].ext.iface_addr;
        let d2 = driver(
            &nodes[1],
            &WireguardConfig::default(),
            &paths(dir.path(), 2),
        );
        let _o2 = overlay(
            &nodes[1],
            d2,
            vec![peer_of(&nodes[0], &k1, Ipv4Addr::new(198, 18, 0, 1))],
        )
        .await;
        let old_ip = Ipv4Addr::new(198, 18, 0, 2);
        o1.set_peers(vec![peer_of(&nodes[1], &k2, old_ip)]);
        o1.reconcile().await.expect("reconcile");
        let peers = wg(&o1).userspace().unwrap().peers();
        let (p, _) = peers.iter().next().expect("peer");
        assert_eq!(p.endpoint(), SocketAddrV4::new(old_ip, PORT).into());
        let out = ping(&nodes[0].pod, nodes[1].pod_ip, &[]);
        assert!(
            out.status.success(),
            "node 1 -> node 2 after its lease moved: {}",
            text(&out)
        );
    });
}

#[test]
fn a_handshake_flood_gets_cookie_replies_and_a_member_still_gets_through() {
    if !prerequisites(&["ip", "ping"]) {
        return;
    }
    in_new_netns(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = topology().await;
        let (o1, _o2) = two_overlays(&nodes, dir.path(), Default::default()).await;
        let target_key = {
            let text = wg(&o1).public_key();
            flannel_wireguard::config::decode_key(&text).expect("key")
        };
        // From 198.18.0.99 (no member): 400 handshake initiations with a valid MAC1 (made
        // for node 1's key) within a second, far above the rate limit.
        let sock = std::net::UdpSocket::bind("198.18.0.99:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = vec![0u8; 256];
        let mut cookies = 0;
        let t0 = Instant::now();
        for i in 0..400u32 {
            let secret =
                StaticSecret::from(flannel_wireguard::key::clamp([(i % 250) as u8 + 1; 32]));
            let mut t = Tunn::new(secret, PublicKey::from(target_key), None, None, i, None);
            if let TunnResult::WriteToNetwork(m) = t.format_handshake_initiation(&mut buf, true) {
                sock.send_to(m, "198.18.0.1:51820").expect("send");
            }
        }
        let mut reply = [0u8; 256];
        while let Ok((n, _)) = sock.recv_from(&mut reply) {
            if n == 64 && reply[0] == 3 {
                cookies += 1;
            }
        }
        eprintln!(
            "flood: 400 initiations in {:?}, {cookies} cookie replies",
            t0.elapsed()
        );
        let c1 = counters(&o1);
        assert!(cookies > 0, "no cookie reply received");
        assert!(get(&c1.cookie_replies_sent) >= cookies);
        assert!(
            get(&c1.rx_dropped_unknown_peer) > 0,
            "the flood's keys are no peers"
        );
        // The member's traffic still flows (within the next rate-limit second).
        let ok = (0..10).any(|_| ping(&nodes[1].pod, nodes[0].pod_ip, &[]).status.success());
        assert!(ok, "member blocked after the flood");
    });
}

/// Rekeying takes WireGuard's REKEY_AFTER_TIME (120 s) of traffic: the slowest test here
/// (~135 s), but rekeying is what keeps a long-lived session alive.
#[test]
fn sessions_are_rekeyed_under_traffic_without_loss() {
    if !prerequisites(&["ip", "ping"]) {
        return;
    }
    in_new_netns(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = topology().await;
        let (o1, o2) = two_overlays(&nodes, dir.path(), Default::default()).await;
        let dst = nodes[1].pod_ip.to_string();
        let out = run_in(
            &nodes[0].pod,
            "ping",
            &["-q", "-i", "0.5", "-c", "260", "-W", "1", &dst],
        );
        let summary = text(&out);
        eprintln!("{summary}");
        let rekeys = get(&counters(&o1).rekeys) + get(&counters(&o2).rekeys);
        let handshakes = get(&counters(&o1).handshakes_completed);
        eprintln!("rekeys {rekeys}, handshakes completed on node 1: {handshakes}");
        assert!(rekeys >= 1, "no rekey after 130 s of traffic");
        assert!(handshakes >= 2, "the rekey handshake completed");
        assert!(out.status.success(), "{summary}");
        assert!(
            summary.contains(" 0% packet loss"),
            "pings lost across the rekey: {summary}"
        );
    });
}
