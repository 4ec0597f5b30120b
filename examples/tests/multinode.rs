//! Multi-node scenarios: a real etcd, three nodes running `flanneld`, pods attached by the
//! `flannel` CNI plugin, all in network namespaces the harness creates and removes.
//!
//! Every scenario runs for both kernel backends (`vxlan`, `host-gw`): the `scenario!` macro at
//! the bottom instantiates one test per backend. They need root, iproute2, etcd and iperf3;
//! without them a test prints SKIP on a laptop and fails under `CI=true`.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flannel_examples::cluster::{Backend, Cluster, ClusterSpec, Pod, wait_until};

fn prerequisites(test: &str) -> bool {
    flannel_examples::cluster::prerequisites(test, &[])
}
use nix::sys::signal::Signal;

mod common;
use common::assert_full_mesh;

/// The route protocol flanneld marks its routes with (`ip route ... proto 150`).
const FLANNEL_PROTO: &str = "150";

fn start(spec: ClusterSpec) -> Cluster {
    match Cluster::start(spec) {
        Ok(c) => c,
        Err(e) => panic!("cluster start: {e}"),
    }
}

/// Adds `per_node` pods on every node.
fn add_pods(c: &mut Cluster, per_node: usize) -> Vec<Pod> {
    let mut pods = Vec::new();
    for i in 0..c.nodes.len() {
        for p in 0..per_node {
            pods.push(c.add_pod(i, &format!("p{p}")).expect("ADD"));
        }
    }
    pods
}

fn subnet(c: &Cluster, i: usize) -> String {
    c.node_subnet(i).expect("node subnet")
}

fn has_route(c: &Cluster, i: usize, dst: &str) -> bool {
    c.node_routes(i).iter().any(|(d, _, _)| d == dst)
}

/// Every node has a route to every other node's subnet, shaped as the backend programs it.
fn assert_routes(c: &Cluster, backend: Backend) {
    for i in 0..c.nodes.len() {
        let routes = c.node_routes(i);
        for j in 0..c.nodes.len() {
            if i == j {
                continue;
            }
            let dst = subnet(c, j);
            let r = routes
                .iter()
                .find(|(d, _, _)| *d == dst)
                .unwrap_or_else(|| panic!("node {} has no route to {dst}: {routes:?}", i + 1));
            let network: Ipv4Addr = dst.split('/').next().unwrap().parse().unwrap();
            match backend {
                Backend::Vxlan => {
                    assert_eq!(r.1, network.to_string(), "vxlan gateway is <subnet>.0");
                    assert_eq!(r.2, "flannel.1");
                }
                Backend::HostGw => {
                    assert_eq!(r.1, c.nodes[j].ip.to_string(), "host-gw via peer IP");
                    assert_eq!(r.2, "eth0");
                }
                Backend::Udp | Backend::Wireguard => {}
            }
        }
    }
}

/// `ping -c count -i interval` from `from` to `to`; returns (sent, received).
fn ping_series(from: &Pod, to: Ipv4Addr, count: u32, interval: &str) -> (u32, u32) {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &from.ns, "ping", "-q", "-W", "1", "-i", interval,
        ])
        .arg("-c")
        .arg(count.to_string())
        .arg(to.to_string())
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping_summary(&text).unwrap_or_else(|| panic!("no ping summary: {text}"))
}

fn parse_ping_summary(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    Some((nums.next()?, nums.next()?))
}

fn vtep_mac_of(c: &Cluster, i: usize) -> String {
    let v = c.node_ip_json(i, &["link", "show", "flannel.1"]);
    v[0]["address"].as_str().unwrap_or("").to_string()
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// 3 nodes × 2 pods: every pod pings and opens a TCP connection to every other pod.
fn pod_matrix(backend: Backend) {
    let mut c = start(ClusterSpec::new(3, backend));
    let pods = add_pods(&mut c, 2);
    let subnets: Vec<String> = (0..3).map(|i| subnet(&c, i)).collect();
    assert_eq!(
        subnets
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "distinct subnets: {subnets:?}"
    );
    assert_routes(&c, backend);
    assert_full_mesh(&c, &pods, true);
    if backend == Backend::Vxlan {
        for i in 0..3 {
            let link = c.node_ip_json(i, &["-d", "link", "show", "flannel.1"]);
            let info = &link[0]["linkinfo"]["info_data"];
            assert_eq!(info["id"], 1, "VNI");
            assert_eq!(info["port"], 8472, "dstport");
            assert_eq!(info["local"], c.nodes[i].ip.to_string());
            assert_eq!(info["learning"], false);
            assert_eq!(link[0]["mtu"], 1450, "eth0 MTU 1500 - 50");
            assert_eq!(
                c.nodes[i].subnet_env("FLANNEL_MTU").as_deref(),
                Some("1450")
            );
        }
    } else {
        assert_eq!(
            c.nodes[0].subnet_env("FLANNEL_MTU").as_deref(),
            Some("1500")
        );
    }
    for p in pods {
        c.del_pod(&p).expect("DEL");
    }
}

/// A restarted node keeps its subnet and VTEP MAC; pods keep connectivity throughout.
fn restart_is_hitless(backend: Backend) {
    let mut c = start(ClusterSpec::new(3, backend));
    let pods = add_pods(&mut c, 1);
    assert_full_mesh(&c, &pods, false);
    let sub = subnet(&c, 0);
    let key = Cluster::lease_key(&sub);
    let value_before = c.etcd_get(&key).expect("own lease in etcd");
    let mac_before = (backend == Backend::Vxlan).then(|| vtep_mac_of(&c, 0));

    // Ping node 2's pod -> node 1's pod at 10/s while node 1's flanneld restarts.
    let (from, to) = (pods[1].clone(), pods[0].ip);
    let prober = std::thread::spawn({
        let ns = from.ns.clone();
        move || {
            Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-q", "-W", "1", "-i", "0.1", "-c", "40",
                ])
                .arg(to.to_string())
                .output()
                .expect("ping")
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    c.stop_flanneld(0);
    std::thread::sleep(Duration::from_millis(500));
    c.start_flanneld(0).expect("restart");
    c.wait_ready(0, Duration::from_secs(20)).expect("ready");
    let out = prober.join().expect("prober");
    let (sent, received) =
        parse_ping_summary(&String::from_utf8_lossy(&out.stdout)).expect("summary");
    assert_eq!(sent, received, "no packet lost across the restart");

    assert_eq!(subnet(&c, 0), sub, "same subnet after restart");
    assert_eq!(
        c.etcd_get(&key).as_deref(),
        Some(value_before.as_str()),
        "same lease value"
    );
    if let Some(mac) = mac_before {
        assert_eq!(vtep_mac_of(&c, 0), mac, "same VTEP MAC after restart");
    }
    assert_full_mesh(&c, &pods, false);
}

/// A deleted lease disappears from every peer within 1 s; a running node whose own lease is
/// deleted re-acquires the same subnet.
fn deleted_lease(backend: Backend) {
    let mut c = start(ClusterSpec::new(3, backend));
    let pods = add_pods(&mut c, 1);
    assert_full_mesh(&c, &pods, false);

    // Node 3 is down; an operator deletes its lease.
    let sub3 = subnet(&c, 2);
    c.stop_flanneld(2);
    assert!(has_route(&c, 0, &sub3) && has_route(&c, 1, &sub3));
    c.etcdctl(&["del", &Cluster::lease_key(&sub3)])
        .expect("del");
    let t0 = Instant::now();
    let gone = wait_until(Duration::from_secs(3), || {
        !has_route(&c, 0, &sub3) && !has_route(&c, 1, &sub3)
    });
    let took = t0.elapsed();
    assert!(gone, "peers still route to the deleted lease {sub3}");
    assert!(took <= Duration::from_secs(1), "removal took {took:?}");
    eprintln!("deleted lease removed from both peers in {took:?}");

    // Node 3 comes back: it asks for the subnet recorded in its subnet.env and gets it.
    c.start_flanneld(2).expect("start");
    c.wait_ready(2, Duration::from_secs(20)).expect("ready");
    assert_eq!(subnet(&c, 2), sub3);
    assert_full_mesh(&c, &pods, false);

    // Node 2's own lease is deleted while it runs: it re-acquires the same subnet at once.
    let sub2 = subnet(&c, 1);
    let key2 = Cluster::lease_key(&sub2);
    let value2 = c.etcd_get(&key2).expect("lease 2");
    c.etcdctl(&["del", &key2]).expect("del");
    assert!(
        wait_until(Duration::from_secs(3), || c.etcd_get(&key2).is_some()),
        "node 2 did not re-acquire its lease; log:\n{}",
        c.flanneld_log(1)
    );
    assert_eq!(c.etcd_get(&key2), Some(value2));
    assert!(
        c.flanneld_running(1),
        "flanneld must not exit when its lease vanishes"
    );
    assert_ne!(
        c.etcd_key_lease(&key2),
        Some(0),
        "re-acquired with a TTL lease"
    );
    assert_full_mesh(&c, &pods, false);
}

/// Two daemons started together for the last two free subnets end with distinct subnets.
fn race_for_last_subnets(backend: Backend) {
    let mut spec = ClusterSpec::new(3, backend);
    spec.start_daemons = false;
    spec.config_extra = serde_json::json!({"SubnetMin": "10.244.7.0", "SubnetMax": "10.244.9.0"});
    let mut c = start(spec);
    c.start_flanneld(0).expect("start 1");
    c.wait_subnet_env(0, Duration::from_secs(20))
        .expect("node 1");
    c.start_flanneld(1).expect("start 2");
    c.start_flanneld(2).expect("start 3");
    c.wait_subnet_env(1, Duration::from_secs(20))
        .expect("node 2");
    c.wait_subnet_env(2, Duration::from_secs(20))
        .expect("node 3");
    let mut subs: Vec<String> = (0..3).map(|i| subnet(&c, i)).collect();
    subs.sort();
    assert_eq!(subs, ["10.244.7.0/24", "10.244.8.0/24", "10.244.9.0/24"]);
    let pods = add_pods(&mut c, 1);
    assert_full_mesh(&c, &pods, false);
}

/// Reservations (keys without a TTL lease) are honoured and never turned into leases.
fn reservation_honoured(backend: Backend) {
    let mut spec = ClusterSpec::new(3, backend);
    spec.start_daemons = false;
    spec.config_extra = serde_json::json!({"SubnetMin": "10.244.77.0", "SubnetMax": "10.244.80.0"});
    let mut c = start(spec);
    let kind = backend.type_name();
    let mine = Cluster::lease_key("10.244.77.0/24");
    let foreign = Cluster::lease_key("10.244.78.0/24");
    c.etcdctl(&[
        "put",
        &mine,
        &format!(r#"{{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"{kind}"}}"#),
    ])
    .expect("reserve");
    c.etcdctl(&[
        "put",
        &foreign,
        &format!(r#"{{"PublicIP":"198.18.0.99","PublicIPv6":null,"BackendType":"{kind}"}}"#),
    ])
    .expect("reserve");
    for i in 0..3 {
        c.start_flanneld(i).expect("start");
    }
    for i in 0..3 {
        c.wait_subnet_env(i, Duration::from_secs(20)).expect("up");
    }
    assert_eq!(
        subnet(&c, 1),
        "10.244.77.0/24",
        "node 2 takes its reservation"
    );
    let others = [subnet(&c, 0), subnet(&c, 2)];
    assert!(
        !others.contains(&"10.244.78.0/24".to_string()),
        "{others:?}"
    );
    assert_eq!(c.etcd_key_lease(&mine), Some(0), "reservation keeps no TTL");
    assert_eq!(c.etcd_key_lease(&foreign), Some(0));
    let pods = add_pods(&mut c, 1);
    assert_full_mesh(&c, &pods, false);
    // Restarting node 2 must not convert its reservation into a lease either.
    c.stop_flanneld(1);
    c.start_flanneld(1).expect("restart");
    c.wait_ready(1, Duration::from_secs(20)).expect("ready");
    assert_eq!(c.etcd_key_lease(&mine), Some(0));
    assert_eq!(subnet(&c, 1), "10.244.77.0/24");
}

/// A watcher that missed compacted history re-lists and converges.
fn watch_recovers_after_compaction(backend: Backend) {
    let mut c = start(ClusterSpec::new(3, backend));
    let kind = backend.type_name();
    let value = |ip: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"{kind}","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:42"}}}}"#
        )
    };
    let old = "10.244.201.0/24";
    let new = "10.244.202.0/24";
    c.etcdctl(&["put", &Cluster::lease_key(old), &value("198.18.0.201")])
        .expect("put");
    assert!(
        wait_until(Duration::from_secs(3), || has_route(&c, 0, old)),
        "node 1 programs the synthetic lease"
    );
    // Node 1 is frozen while etcd restarts (dropping its watch), history changes and is
    // compacted away; when it thaws, its watch cannot resume from its last revision.
    c.signal_flanneld(0, Signal::SIGSTOP);
    c.stop_etcd();
    c.start_etcd().expect("etcd restart");
    c.etcdctl(&["del", &Cluster::lease_key(old)]).expect("del");
    c.etcdctl(&["put", &Cluster::lease_key(new), &value("198.18.0.202")])
        .expect("put");
    let rev = c.etcd_revision().expect("revision");
    c.etcdctl(&["compact", &rev.to_string()]).expect("compact");
    c.signal_flanneld(0, Signal::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(10), || has_route(&c, 0, new)
            && !has_route(&c, 0, old)),
        "node 1 did not converge after compaction; routes {:?}; log:\n{}",
        c.node_routes(0),
        c.flanneld_log(0)
    );
    assert!(c.flanneld_running(0));
    assert!(
        c.flanneld_log(0).contains("fell behind a compaction"),
        "the resumed watch must have hit the compaction; log:\n{}",
        c.flanneld_log(0)
    );
    let pods = add_pods(&mut c, 1);
    assert_full_mesh(&c, &pods, false);
}

/// Kernel state deleted by hand is restored (the vxlan device with all its peers; routes).
fn deleted_state_restored(backend: Backend) {
    let mut c = start(ClusterSpec::new(3, backend));
    let pods = add_pods(&mut c, 1);
    assert_full_mesh(&c, &pods, false);
    let peer = subnet(&c, 1);
    c.node_exec(0, &["ip", "route", "del", &peer]);
    assert!(
        wait_until(Duration::from_secs(3), || has_route(&c, 0, &peer)),
        "route to {peer} not restored"
    );
    if backend == Backend::Vxlan {
        let mac = vtep_mac_of(&c, 0);
        let out = c.node_exec(0, &["ip", "link", "del", "flannel.1"]);
        assert!(out.status.success());
        assert!(
            wait_until(Duration::from_secs(3), || {
                !vtep_mac_of(&c, 0).is_empty()
                    && has_route(&c, 0, &subnet(&c, 1))
                    && has_route(&c, 0, &subnet(&c, 2))
            }),
            "flannel.1 and its peers not restored; log:\n{}",
            c.flanneld_log(0)
        );
        assert_eq!(vtep_mac_of(&c, 0), mac, "recreated with the same MAC");
        let neigh = c.node_ip_json(0, &["neigh", "show", "dev", "flannel.1"]);
        assert_eq!(neigh.as_array().map(Vec::len), Some(2), "{neigh}");
        let out = c.node_exec(0, &["bridge", "-j", "fdb", "show", "dev", "flannel.1"]);
        let fdb: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fdb json");
        let dsts: std::collections::BTreeSet<String> = fdb
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["dst"].as_str().map(str::to_string))
            .collect();
        let want: std::collections::BTreeSet<String> =
            [c.nodes[1].ip.to_string(), c.nodes[2].ip.to_string()].into();
        assert_eq!(dsts, want, "FDB entries to both peers");
    }
    assert_full_mesh(&c, &pods, false);
}

/// Routes and neighbours we own that no lease explains are removed at start; foreign routes
/// stay.
fn stale_state_removed_at_start(backend: Backend) {
    let mut c = start(ClusterSpec::new(3, backend));
    c.stop_flanneld(0);
    let stale = "10.244.123.0/24";
    let foreign = "10.244.124.0/24";
    let out = c.node_exec(
        0,
        &[
            "ip",
            "route",
            "add",
            stale,
            "via",
            "198.18.0.123",
            "dev",
            "eth0",
            "proto",
            FLANNEL_PROTO,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = c.node_exec(
        0,
        &[
            "ip",
            "route",
            "add",
            foreign,
            "via",
            "198.18.0.124",
            "dev",
            "eth0",
            "proto",
            "static",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    if backend == Backend::Vxlan {
        let out = c.node_exec(
            0,
            &[
                "ip",
                "neigh",
                "add",
                "10.244.123.0",
                "lladdr",
                "02:00:00:00:01:23",
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    c.start_flanneld(0).expect("start");
    c.wait_ready(0, Duration::from_secs(20)).expect("ready");
    assert!(
        !has_route(&c, 0, stale),
        "stale route kept: {:?}",
        c.node_routes(0)
    );
    assert!(has_route(&c, 0, foreign), "foreign route removed");
    if backend == Backend::Vxlan {
        let neigh = c.node_ip_json(0, &["neigh", "show", "dev", "flannel.1"]);
        assert!(!neigh.to_string().contains("10.244.123.0"), "{neigh}");
    }
    assert_routes(&c, backend);
}

/// etcd down for 30 s: pod-to-pod traffic is not interrupted, and the daemons resume watching.
fn etcd_outage(backend: Backend) {
    let mut c = start(ClusterSpec::new(3, backend));
    let pods = add_pods(&mut c, 1);
    assert_full_mesh(&c, &pods, false);
    c.stop_etcd();
    let (sent, received) = ping_series(&pods[0], pods[2].ip, 150, "0.2");
    assert_eq!(sent, 150);
    assert_eq!(received, sent, "packets lost while etcd was down");
    for i in 0..3 {
        assert!(c.flanneld_running(i), "node {} exited without etcd", i + 1);
    }
    c.start_etcd().expect("etcd back");
    let kind = backend.type_name();
    let extra = "10.244.210.0/24";
    c.etcdctl(&[
        "put",
        &Cluster::lease_key(extra),
        &format!(r#"{{"PublicIP":"198.18.0.210","PublicIPv6":null,"BackendType":"{kind}","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:02:10"}}}}"#),
    ])
    .expect("put");
    assert!(
        wait_until(Duration::from_secs(15), || (0..3)
            .all(|i| has_route(&c, i, extra))),
        "watch did not resume after the outage"
    );
    assert_full_mesh(&c, &pods, false);
}

/// `--ip-masq`: the exact nftables table, and pod → underlay traffic leaves with the node's IP.
fn ip_masq(backend: Backend) {
    let mut spec = ClusterSpec::new(2, backend);
    spec.ip_masq = true;
    let mut c = start(spec);
    let sub = subnet(&c, 0);
    let out = c.node_exec(0, &["nft", "list", "table", "ip", "flannel-rs"]);
    let expected = format!(
        "table ip flannel-rs {{\n\
         \tchain postrtg {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x00004000 == 0x00004000 return\n\
         \t\tip saddr {sub} ip daddr 10.244.0.0/16 return\n\
         \t\tip saddr 10.244.0.0/16 ip daddr {sub} return\n\
         \t\tip saddr != 10.244.0.0/16 ip daddr {sub} return\n\
         \t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n\
         \t}}\n\
         \n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr 10.244.0.0/16 accept\n\
         \t\tip daddr 10.244.0.0/16 accept\n\
         \t}}\n\
         }}\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert_eq!(
        c.nodes[0].subnet_env("FLANNEL_IPMASQ").as_deref(),
        Some("true")
    );

    // A TCP server on the underlay (outside the pod network) reports the client address.
    let pods = add_pods(&mut c, 1);
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.ul(),
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5301",
            "-B",
        ])
        .arg(flannel_examples::cluster::ETCD_IP)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let mut ok = false;
    for _ in 0..20 {
        let out = Command::new("ip")
            .args(["netns", "exec", &pods[0].ns, "iperf3", "-c"])
            .arg(flannel_examples::cluster::ETCD_IP)
            .args(["-p", "5301", "-n", "64K", "--connect-timeout", "1000"])
            .output()
            .expect("iperf3 -c");
        if out.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        Signal::SIGTERM,
    );
    let out = server.wait_with_output().expect("server output");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(ok, "pod could not reach the underlay server: {log}");
    assert!(
        log.contains(&format!("Accepted connection from {}", c.nodes[0].ip)),
        "the server must see the node's address, not the pod's ({}): {log}",
        pods[0].ip
    );
    // Pod-to-pod traffic keeps the pod source (no masquerade inside the network).
    assert_full_mesh(&c, &pods, true);
}

/// `GET path` against flanneld's health port inside node `i`; returns (status line, body).
fn http_get(c: &Cluster, i: usize, port: u16, path: &str) -> (String, String) {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = c.node_exec(i, &["bash", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// While `<prefix>/config` is absent flanneld waits with a clear message and `/readyz` is 503;
/// once the config appears it comes up and `/readyz` turns 200. An invalid config names the
/// bad key and is re-read until fixed.
#[test]
fn readyz_and_config_wait() {
    if !prerequisites("readyz_and_config_wait") {
        return;
    }
    let mut spec = ClusterSpec::new(1, Backend::Vxlan);
    spec.start_daemons = false;
    spec.flanneld_args = vec![
        "--healthz-ip=127.0.0.1".into(),
        "--healthz-port=10256".into(),
    ];
    let mut c = start(spec);
    let good = c
        .etcd_get("/coreos.com/network/config")
        .expect("config written by the harness");
    c.etcdctl(&["del", "/coreos.com/network/config"])
        .expect("del");
    c.start_flanneld(0).expect("start");
    assert!(
        wait_until(Duration::from_secs(5), || c
            .flanneld_log(0)
            .contains("network config not found; waiting for it")),
        "no wait message; log:\n{}",
        c.flanneld_log(0)
    );
    assert!(http_get(&c, 0, 10256, "/healthz").0.contains("200"));
    assert!(http_get(&c, 0, 10256, "/readyz").0.contains("503"));

    c.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16","SubnetLen":33,"Backend":{"Type":"vxlan"}}"#,
    ])
    .expect("put bad");
    assert!(
        wait_until(Duration::from_secs(10), || c
            .flanneld_log(0)
            .contains("SubnetLen")),
        "the error must name the bad key; log:\n{}",
        c.flanneld_log(0)
    );
    assert!(http_get(&c, 0, 10256, "/readyz").0.contains("503"));

    c.etcdctl(&["put", "/coreos.com/network/config", &good])
        .expect("put good");
    c.wait_ready(0, Duration::from_secs(15)).expect("ready");
    let (status, body) = http_get(&c, 0, 10256, "/readyz");
    assert!(status.contains("200"), "{status} {body}");
    let (status, body) = http_get(&c, 0, 10256, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains("flannel_backend_info{type=\"vxlan\"} 1"),
        "{body}"
    );
    assert!(c.nodes[0].subnet_file().exists());
}

macro_rules! scenario {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn vxlan() {
                if prerequisites(concat!(stringify!($name), "::vxlan")) {
                    super::$name(Backend::Vxlan);
                }
            }
            #[test]
            fn host_gw() {
                if prerequisites(concat!(stringify!($name), "::host_gw")) {
                    super::$name(Backend::HostGw);
                }
            }
        }
    };
}

scenario!(pod_matrix);
scenario!(restart_is_hitless);
scenario!(deleted_lease);
scenario!(race_for_last_subnets);
scenario!(reservation_honoured);
scenario!(watch_recovers_after_compaction);
scenario!(deleted_state_restored);
scenario!(stale_state_removed_at_start);
scenario!(etcd_outage);
scenario!(ip_masq);

#[test]
fn ping_summary_parser() {
    let text = "--- 10.0.0.1 ping statistics ---\n150 packets transmitted, 149 received, 0.666% packet loss, time 29800ms\n";
    assert_eq!(parse_ping_summary(text), Some((150, 149)));
    assert_eq!(parse_ping_summary("garbage"), None);
}
