//! The udp backend against the real kernel: TUN devices, sockets and datapath threads in
//! namespaces the tests create.
//!
//! Topology (fresh per test): the test thread unshares its own namespace, which plays the
//! underlay switch (bridge `br0`, and 198.18.0.99/24 for a host that is *not* a cluster
//! member). Two node namespaces hang off it (`eth0` 198.18.0.N/24), each with a bridge `cni0`
//! (10.244.N.1/24) and one pod namespace behind it (`eth0` 10.244.N.2/24, MTU 1472, default
//! via 10.244.N.1):
//!
//! ```text
//! pod1 10.244.1.2 - cni0 [node1 198.18.0.1, flannel0] - br0 (198.18.0.99) - [node2 198.18.0.2, flannel0] cni0 - pod2 10.244.2.2
//! ```
//!
//! Needs root, `ip`, `ping`,
//! `iperf3`, and for the interop test `gcc` (it builds `tests/fixtures/udptun.c`, a copy of
//! `shared/bench/udptun.c`).
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/two_nodes.rs"]
mod two_nodes;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backends::kernel::netns::NetNs;
use backends::overlay::{Overlay, Peer};
use common::{in_new_netns, ip_in, net4, prerequisites, v4};
use flannel_udp::codec::{self, PROTO_UDP};
use flannel_udp::datapath::Counters;
use flannel_udp::{UdpBackend, UdpConfig, UdpDriver};
use two_nodes::{Node, iperf, ping, run_in, spawn_in, text, topology};

const PORT: u16 = 8285;

trait UdpPeer {
    fn peer(&self) -> Peer;
}

impl UdpPeer for Node {
    fn peer(&self) -> Peer {
        Peer {
            subnet: self.subnet.into(),
            public_ip: self.ext.public_ip,
            backend_data: None,
        }
    }
}

fn udp_driver(node: &Node) -> UdpDriver {
    let config = UdpConfig { port: PORT };
    UdpDriver::start(&config, net4("10.244.0.0/16"), &node.ext, Some(&node.ns))
        .expect("UdpDriver::start")
}

fn udp(o: &Overlay) -> &UdpBackend {
    o.driver()
        .as_any()
        .downcast_ref::<UdpDriver>()
        .expect("udp backend")
        .backend()
}

/// Starts our udp overlay on `node` with `peers` and reconciles once (must be clean).
async fn start_overlay(node: &Node, peers: Vec<Peer>) -> Overlay {
    let driver = Box::new(udp_driver(node));
    let mut o = Overlay::new(node.nl.clone(), driver, node.ext.clone())
        .await
        .expect("Overlay::new udp");
    o.set_own_subnet(node.subnet.into());
    o.set_peers(peers);
    let report = o.reconcile().await.expect("reconcile");
    assert!(report.is_clean(), "{:?}", report.errors);
    o
}

fn counters(o: &Overlay) -> &Counters {
    udp(o).counters()
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// An IPv4/UDP packet `src:4000 -> dst:port` carrying `payload` (UDP checksum 0 = none).
fn inner_udp(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(payload);
    codec::set_ipv4_checksum(&mut p);
    p
}

/// Sends `pkt` as one datagram from `from` (an address of `ns`, any port) to `to`.
fn send_datagram(ns: Option<&NetNs>, from: Ipv4Addr, to: SocketAddrV4, pkt: Vec<u8>) {
    let send = move || {
        let s = std::net::UdpSocket::bind(SocketAddrV4::new(from, 0)).expect("bind sender");
        s.send_to(&pkt, to).expect("send datagram");
    };
    match ns {
        Some(ns) => ns.run(send).expect("enter netns"),
        None => send(),
    }
}

#[test]
fn udp_backend_sets_up_the_node_and_carries_ping_and_tcp() {
    if !prerequisites(&["ip", "ping", "iperf3"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = topology().await;
        let peers: Vec<Peer> = nodes.iter().map(Node::peer).collect();
        let o1 = start_overlay(&nodes[0], peers.clone()).await;
        let o2 = start_overlay(&nodes[1], peers).await;
        assert_eq!(o1.backend_type(), "udp");
        assert_eq!(o1.mtu(), 1472);
        assert_eq!(o1.backend_data(), None);

        // Kernel state, read back with `ip` (not with our own netlink code).
        let link = ip_in(&nodes[0].ns, &["-d", "link", "show", "flannel0"]);
        assert!(link.contains("mtu 1472") && link.contains("tun"), "{link}");
        assert!(link.contains(",UP"), "{link}");
        let addr = ip_in(&nodes[0].ns, &["-4", "addr", "show", "dev", "flannel0"]);
        assert!(addr.contains("inet 10.244.1.0/32"), "{addr}");
        let routes = ip_in(&nodes[0].ns, &["route", "show", "proto", "150"]);
        assert_eq!(
            routes.trim(),
            "10.244.0.0/16 dev flannel0 scope link",
            "{routes}"
        );

        // Full-size packets with DF, both ways, and TCP both ways.
        let out = ping(&nodes[0].pod, nodes[1].pod_ip, &["-M", "do", "-s", "1444"]);
        assert!(out.status.success(), "DF ping pod1 -> pod2: {}", text(&out));
        let out = ping(&nodes[1].pod, nodes[0].pod_ip, &["-M", "do", "-s", "1444"]);
        assert!(out.status.success(), "DF ping pod2 -> pod1: {}", text(&out));
        let out = ping(&nodes[0].pod, nodes[1].pod_ip, &["-M", "do", "-s", "1445"]);
        assert!(
            !out.status.success(),
            "1473-byte DF packets must not fit: {}",
            text(&out)
        );
        iperf(&nodes[0].pod, &nodes[1].pod, nodes[1].pod_ip, "20M", false);
        iperf(&nodes[0].pod, &nodes[1].pod, nodes[1].pod_ip, "20M", true);

        let (c1, c2) = (counters(&o1), counters(&o2));
        // Pod 2's echo replies and TCP ACKs were queued on its TUN while node 2's RX thread
        // wrote the requests and data there; at least some left from that thread at once.
        assert!(
            get(&c2.tx_drained_by_rx) > 0,
            "replies sent by the RX thread: {}",
            get(&c2.tx_drained_by_rx)
        );
        assert!(get(&c1.tx_packets) > 10_000, "tx {}", get(&c1.tx_packets));
        assert!(get(&c2.rx_packets) > 10_000, "rx {}", get(&c2.rx_packets));
        assert_eq!(get(&c2.rx_dropped_non_member), 0);
        assert_eq!(get(&c2.rx_dropped_bad_source), 0);
        let off = udp(&o1).offloads().expect("running");
        eprintln!("offloads: {off:?}");
        if off.tun_vnet_hdr && off.udp_gso {
            assert!(
                get(&c1.tx_gso_messages) > 0,
                "TSO super-packets went out as GSO trains"
            );
            assert!(
                get(&c1.tun_reads) < get(&c1.tx_packets),
                "super-packets: {} reads for {} packets",
                get(&c1.tun_reads),
                get(&c1.tx_packets)
            );
        }
        if off.tun_vnet_hdr {
            assert!(get(&c2.rx_gro_segments) > 0, "segments were coalesced");
        }
        let m = o2.metrics_fn()();
        assert!(m.contains("flannel_backend_info{type=\"udp\"} 1"), "{m}");
        assert!(
            m.contains("flannel_udp_rx_dropped_non_member_total 0"),
            "{m}"
        );
        assert!(m.contains("flannel_udp_peers 1"), "{m}");

        // Shutdown joins the threads and the TUN device goes with its descriptor.
        drop(o1);
        let gone = ip_in(&nodes[0].ns, &["link", "show"]);
        assert!(!gone.contains("flannel0"), "{gone}");
    });
}

#[test]
fn udp_drops_non_members_and_foreign_inner_sources() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = topology().await;
        let peers: Vec<Peer> = nodes.iter().map(Node::peer).collect();
        let o2 = start_overlay(&nodes[1], peers).await;
        let sink = nodes[1]
            .pod
            .run(|| {
                let s = std::net::UdpSocket::bind("10.244.2.2:9999").expect("bind in pod");
                s.set_read_timeout(Some(Duration::from_millis(1500)))
                    .expect("timeout");
                s
            })
            .expect("enter pod");
        let to = SocketAddrV4::new(v4("198.18.0.2"), PORT);
        let pod2 = nodes[1].pod_ip;
        // 1. From a host holding no lease (the underlay's 198.18.0.99), well-formed inner packet.
        send_datagram(
            None,
            v4("198.18.0.99"),
            to,
            inner_udp(v4("10.244.1.2"), pod2, 9999, b"non-member"),
        );
        // 2. From a member (node1's address, another port), inner source outside its subnet.
        send_datagram(
            Some(&nodes[0].ns),
            v4("198.18.0.1"),
            to,
            inner_udp(v4("10.244.3.7"), pod2, 9999, b"foreign-source"),
        );
        // 3. From the member, inner destination outside node2's subnet.
        send_datagram(
            Some(&nodes[0].ns),
            v4("198.18.0.1"),
            to,
            inner_udp(v4("10.244.1.2"), v4("198.18.0.99"), 9999, b"relay"),
        );
        // 4. Control: the same from the member with a proper source must arrive.
        send_datagram(
            Some(&nodes[0].ns),
            v4("198.18.0.1"),
            to,
            inner_udp(v4("10.244.1.2"), pod2, 9999, b"member"),
        );
        let mut buf = [0u8; 256];
        let (n, from) = sink
            .recv_from(&mut buf)
            .expect("the member's datagram arrives");
        assert_eq!(&buf[..n], b"member");
        assert_eq!(from.ip(), std::net::IpAddr::V4(v4("10.244.1.2")));
        sink.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        if let Ok((n, _)) = sink.recv_from(&mut buf) {
            panic!("a dropped datagram reached the pod: {:?}", &buf[..n]);
        }
        let c = counters(&o2);
        assert_eq!(get(&c.rx_dropped_non_member), 1);
        assert_eq!(get(&c.rx_dropped_bad_source), 1);
        assert_eq!(get(&c.rx_dropped_bad_destination), 1);
        assert_eq!(get(&c.rx_packets), 1);
        let m = o2.metrics_fn()();
        assert!(
            m.contains("flannel_udp_rx_dropped_non_member_total 1"),
            "{m}"
        );
        assert!(
            m.contains("flannel_udp_rx_dropped_bad_source_total 1"),
            "{m}"
        );
        // Garbage is counted, not forwarded.
        send_datagram(None, v4("198.18.0.99"), to, vec![0x45, 0, 0]);
        send_datagram(Some(&nodes[0].ns), v4("198.18.0.1"), to, vec![0x60; 40]);
        let start = Instant::now();
        while get(&c.rx_dropped_malformed) < 2 && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(get(&c.rx_dropped_malformed), 2);
    });
}

#[test]
fn udp_unknown_destination_gets_net_unreachable_and_removed_peers_stop_at_once() {
    if !prerequisites(&["ip", "ping"]) {
        return;
    }
    in_new_netns(|| async {
        let nodes = topology().await;
        let peers: Vec<Peer> = nodes.iter().map(Node::peer).collect();
        let mut o1 = start_overlay(&nodes[0], peers.clone()).await;
        let _o2 = start_overlay(&nodes[1], peers).await;
        let out = ping(&nodes[0].pod, v4("10.244.9.9"), &[]);
        let t = text(&out);
        assert!(!out.status.success(), "{t}");
        assert!(
            t.contains("From 10.244.1.0") && t.contains("Net Unreachable"),
            "{t}"
        );
        let c = counters(&o1);
        assert!(get(&c.tx_no_route) >= 2, "{}", get(&c.tx_no_route));
        assert!(get(&c.icmp_unreachable_sent) >= 2, "{}", o1.metrics_fn()());

        // The peer is reachable, then its lease goes: traffic stops at once, with the error.
        let out = ping(&nodes[0].pod, nodes[1].pod_ip, &[]);
        assert!(out.status.success(), "{}", text(&out));
        o1.set_peers(vec![nodes[0].peer()]);
        let started = Instant::now();
        let out = run_in(
            &nodes[0].pod,
            "ping",
            &["-c", "1", "-W", "1", &nodes[1].pod_ip.to_string()],
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(text(&out).contains("Net Unreachable"), "{}", text(&out));
        o1.set_peers(vec![nodes[0].peer(), nodes[1].peer()]);
        let out = ping(&nodes[0].pod, nodes[1].pod_ip, &[]);
        assert!(out.status.success(), "peer back: {}", text(&out));
    });
}

/// The naive flannel-style proxy: a copy of `shared/bench/udptun.c` kept in the repository
/// (`tests/fixtures/`), so that the interop test runs wherever the repository is cloned.
fn udptun_source() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/udptun.c")
}

#[test]
fn udp_interoperates_with_a_flannel_style_naive_proxy() {
    if !prerequisites(&["ip", "ping", "iperf3", "gcc"]) {
        return;
    }
    let src = udptun_source();
    let dir = tempfile_dir();
    let bin = dir.join("udptun");
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run gcc");
    assert!(out.status.success(), "gcc: {}", text(&out));
    in_new_netns(move || async move {
        let nodes = topology().await;
        // node1: ours. node2: flannel's design, set up as flannel does it (address with the
        // network's prefix, so the kernel route covers the whole network).
        let o1 = start_overlay(&nodes[0], nodes.iter().map(Node::peer).collect()).await;
        let n2 = &nodes[1].ns;
        ip_in(n2, &["tuntap", "add", "dev", "flannel0", "mode", "tun"]);
        ip_in(n2, &["link", "set", "flannel0", "mtu", "1472"]);
        ip_in(n2, &["addr", "add", "10.244.2.0/16", "dev", "flannel0"]);
        ip_in(n2, &["link", "set", "flannel0", "up"]);
        let bin = bin.to_string_lossy().into_owned();
        let proxy = spawn_in(n2, &bin, &["flannel0", "198.18.0.1", "8285", "naive"]);
        std::thread::sleep(Duration::from_millis(200));

        let ok1 = ping(&nodes[0].pod, nodes[1].pod_ip, &["-M", "do", "-s", "1444"]);
        let ok2 = ping(&nodes[1].pod, nodes[0].pod_ip, &["-M", "do", "-s", "1444"]);
        // TCP both ways: our TSO segmentation towards it, its single packets towards us.
        let tcp = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            iperf(&nodes[0].pod, &nodes[1].pod, nodes[1].pod_ip, "10M", false);
            iperf(&nodes[0].pod, &nodes[1].pod, nodes[1].pod_ip, "10M", true);
        }));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(proxy.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let proxy_out = proxy.wait_with_output().expect("udptun exit");
        let stats = String::from_utf8_lossy(&proxy_out.stderr).into_owned();
        assert!(
            ok1.status.success(),
            "ours -> naive: {} / {stats}",
            text(&ok1)
        );
        assert!(
            ok2.status.success(),
            "naive -> ours: {} / {stats}",
            text(&ok2)
        );
        if let Err(p) = tcp {
            eprintln!("udptun: {stats}");
            std::panic::resume_unwind(p);
        }
        let c = counters(&o1);
        assert!(
            get(&c.rx_packets) > 1000 && get(&c.tx_packets) > 1000,
            "{stats}"
        );
        assert_eq!(
            get(&c.rx_dropped_non_member) + get(&c.rx_dropped_bad_source),
            0
        );
        eprintln!("udptun: {stats}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("udptun-test.{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
