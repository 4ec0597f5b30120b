//! Multi-node scenarios on the udp backend: a real etcd, three nodes running `flanneld` with
//! `"Backend": {"Type": "udp"}`, pods attached by the `flannel` CNI plugin, all in network
//! namespaces the harness creates and removes.
//!
//! Needs root, iproute2, etcd, iperf3 and the debug binaries (`cargo build -p flanneld -p
//! cni-plugin`); without them a test prints SKIP on a laptop and fails under `CI=true`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use flannel_examples::cluster::{Backend, Cluster, ClusterSpec, Pod};

mod common;
use common::{
    HEALTHZ_PORT, assert_full_mesh, counter, iperf3, metrics, tcp_survives_an_underlay_mtu_drop,
};

fn prerequisites(test: &str) -> bool {
    flannel_examples::cluster::prerequisites(test, &["bash", "python3"])
}

fn start_udp_cluster(nodes: usize) -> Cluster {
    let mut spec = ClusterSpec::new(nodes, Backend::Udp);
    spec.flanneld_args = vec![
        "--healthz-ip".into(),
        "127.0.0.1".into(),
        "--healthz-port".into(),
        HEALTHZ_PORT.into(),
    ];
    match Cluster::start(spec) {
        Ok(c) => c,
        Err(e) => panic!("cluster start: {e}"),
    }
}

fn in_pod(pod: &Pod, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &pod.ns])
        .args(args)
        .output()
        .expect("run in pod")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn udp_three_nodes_full_mesh_df_and_bulk_transfers() {
    if !prerequisites("udp_three_nodes_full_mesh_df_and_bulk_transfers") {
        return;
    }
    let mut c = start_udp_cluster(3);
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].subnet_env("FLANNEL_MTU").as_deref(),
            Some("1472")
        );
        let routes = c.node_routes(i);
        assert!(
            routes
                .iter()
                .any(|(d, g, dev)| d == "10.244.0.0/16" && g.is_empty() && dev == "flannel0"),
            "node {}: {routes:?}",
            i + 1
        );
        let subnet = c.node_subnet(i).expect("subnet");
        let addrs = c.node_ip_json(i, &["-4", "addr", "show", "dev", "flannel0"]);
        let local = addrs[0]["addr_info"][0]["local"].as_str().unwrap_or("");
        assert_eq!(
            format!("{local}/24"),
            subnet,
            "flannel0 carries <subnet>.0/32"
        );
    }
    let mut pods = Vec::new();
    for i in 0..3 {
        for p in 0..2 {
            pods.push(c.add_pod(i, &format!("p{p}")).expect("ADD"));
        }
    }
    // Every pair: ping and a TCP connection.
    assert_full_mesh(&c, &pods, true);
    // Full-size packets with DF across nodes (MTU 1472 = 1500 - 28), and one byte more fails.
    let (a, b) = (&pods[0], &pods[2]);
    let dst = b.ip.to_string();
    let ok = in_pod(
        a,
        &[
            "ping", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1444", &dst,
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let too_big = in_pod(
        a,
        &["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1445", &dst],
    );
    assert!(!too_big.status.success(), "{}", text(&too_big));

    // Bulk transfers both ways between nodes 1 and 2, and a timed smoke run 2 -> 1.
    let before = metrics(&c, b.node);
    for reverse in [false, true] {
        let mut args = vec!["-n", "64M"];
        if reverse {
            args.push("-R");
        }
        let r = iperf3(a, b, &args);
        // With -n, iperf3 3.12's receiver report may stop a few windows short of the end of
        // the transfer; the sender's total is exact (TCP delivered it all or it would fail).
        let sent = r["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
        let received = r["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        assert!(
            sent >= 64 << 20 && received >= 48 << 20,
            "sent {sent}, received {received}: {r}"
        );
    }
    let r = iperf3(&pods[3], &pods[1], &["-t", "3"]);
    let gbps = r["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    eprintln!("udp iperf3 smoke (debug build): {gbps:.2} Gbit/s");
    assert!(gbps > 0.01, "{r}");

    let after = metrics(&c, b.node);
    assert!(
        after.contains("flannel_backend_info{type=\"udp\"} 1"),
        "{after}"
    );
    let rx = |m: &str| counter(m, "flannel_udp_rx_packets_total");
    assert!(
        rx(&after) > rx(&before) + 40_000,
        "node {} received the bulk transfers: {} -> {}",
        b.node + 1,
        rx(&before),
        rx(&after)
    );
    assert_eq!(
        counter(&after, "flannel_udp_rx_dropped_non_member_total"),
        0
    );
    assert_eq!(
        counter(&after, "flannel_udp_rx_dropped_bad_source_total"),
        0
    );
    assert_eq!(counter(&after, "flannel_udp_peers"), 2);
}

#[test]
fn udp_rejects_a_datagram_from_outside_the_cluster() {
    if !prerequisites("udp_rejects_a_datagram_from_outside_the_cluster") {
        return;
    }
    let mut c = start_udp_cluster(2);
    let pod = c.add_pod(1, "p0").expect("ADD");
    let peer_pod = c.add_pod(0, "p0").expect("ADD");
    assert!(c.ping_within(&peer_pod, pod.ip, Duration::from_secs(5)));
    // The underlay namespace (etcd's host, 198.18.0.254) is no cluster member: a datagram from
    // it carrying a ping to the pod must be dropped and counted.
    let o = pod.ip.octets();
    let inner_src = Ipv4Addr::new(o[0], o[1], o[2] ^ 0x80, 7);
    let before = counter(&metrics(&c, 1), "flannel_udp_rx_dropped_non_member_total");
    let script = format!(
        "import socket,struct\n\
         def ck(b):\n s=sum(struct.unpack('!%dH'%(len(b)//2),b)); s=(s>>16)+(s&0xffff); s+=s>>16; return (~s)&0xffff\n\
         icmp=bytearray(struct.pack('!BBHHH',8,0,0,1,1)+b'outsider')\n\
         icmp[2:4]=struct.pack('!H',ck(bytes(icmp)))\n\
         ip=bytearray(struct.pack('!BBHHHBBH4s4s',0x45,0,20+len(icmp),1,0,64,1,0,socket.inet_aton('{inner_src}'),socket.inet_aton('{dst}')))\n\
         ip[10:12]=struct.pack('!H',ck(bytes(ip)))\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for _ in range(5): s.sendto(bytes(ip+icmp),('{node}',8285))\n",
        dst = pod.ip,
        node = c.nodes[1].ip,
    );
    let out = c.underlay_exec(&["python3", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let ok = flannel_examples::cluster::wait_until(Duration::from_secs(3), || {
        counter(&metrics(&c, 1), "flannel_udp_rx_dropped_non_member_total") >= before + 5
    });
    assert!(ok, "{}", metrics(&c, 1));
}

/// Lowering the underlay MTU under the TUN's at runtime (1500 → 1400, the TUN stays at 1472)
/// used to stall TCP: the kernel refused every UDP GSO train with `EMSGSIZE`, which was
/// taken for a hard error. Now the segments go out as single datagrams that the kernel
/// fragments, as flannel's do, and trains come back once the MTU is raised again.
#[test]
fn udp_carries_tcp_after_the_underlay_mtu_drops_at_runtime() {
    if !prerequisites("udp_carries_tcp_after_the_underlay_mtu_drops_at_runtime") {
        return;
    }
    let mut c = start_udp_cluster(2);
    let a = c.add_pod(0, "a").expect("ADD");
    let b = c.add_pod(1, "b").expect("ADD");
    tcp_survives_an_underlay_mtu_drop(&c, &a, &b, 16 << 20, "flannel_udp_");
}
