//! Dual-stack and IPv6-only clusters: a real etcd, three nodes running `flanneld` with
//! `EnableIPv6` (and, IPv6-only, `EnableIPv4: false`), pods attached by the `flannel` CNI
//! plugin, for vxlan and host-gw. Underlay fd00:198:18::/64 (and 198.18.0.0/16 for dual
//! stack), pods 10.244.0.0/16 and fd00:10:244::/56, all inside the test's namespaces.
//!
//! Each scenario checks, in one cluster: ping and TCP between every pair of pods over every
//! family; the lease as flannel writes it (key, `PublicIPv6`, `BackendV6Data`); each
//! family's routes in the backend's shape; a deleted IPv6 device or route put back; a
//! restart keeping both subnets; a node leaving taking both families' routes with it.

use std::time::Duration;

use flannel_examples::cluster::{Backend, Cluster, ClusterSpec, Pod, Stack, wait_until};

fn prerequisites(test: &str) -> bool {
    flannel_examples::cluster::prerequisites(test, &["bridge"])
}

fn start(backend: Backend, stack: Stack) -> Cluster {
    Cluster::start(ClusterSpec::new(3, backend).with_stack(stack))
        .unwrap_or_else(|e| panic!("cluster start: {e}"))
}

/// Every pod reaches every other pod at each of its addresses: ping, and with `tcp` a TCP
/// connection.
fn assert_mesh_all_families(c: &Cluster, pods: &[Pod], tcp: bool) {
    for a in pods {
        for b in pods {
            if a.ns == b.ns {
                continue;
            }
            for dst in &b.ips {
                assert!(
                    c.ping_within(a, *dst, Duration::from_secs(5)),
                    "ping {} (node {}) -> {dst} (node {})",
                    a.ns,
                    a.node + 1,
                    b.node + 1
                );
                if tcp {
                    c.tcp_to(a, b, *dst).unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
    }
}

fn family_count(stack: Stack) -> usize {
    usize::from(stack.ipv4()) + usize::from(stack.ipv6())
}

fn v6_route(c: &Cluster, i: usize, dst: &str) -> Option<(String, String, String)> {
    c.node_routes6(i).into_iter().find(|(d, _, _)| d == dst)
}

fn v4_route(c: &Cluster, i: usize, dst: &str) -> Option<(String, String, String)> {
    c.node_routes(i).into_iter().find(|(d, _, _)| d == dst)
}

/// Each node routes every peer's subnets in the backend's shape.
fn assert_routes(c: &Cluster, backend: Backend, stack: Stack) {
    for i in 0..3 {
        for j in (0..3).filter(|j| *j != i) {
            if stack.ipv6() {
                let dst = c.node_subnet6(j).expect("v6 subnet");
                let r = v6_route(c, i, &dst).unwrap_or_else(|| {
                    panic!(
                        "node {} has no route to {dst}: {:?}",
                        i + 1,
                        c.node_routes6(i)
                    )
                });
                match backend {
                    Backend::Vxlan => {
                        let net = dst.split('/').next().unwrap();
                        assert_eq!((r.1.as_str(), r.2.as_str()), (net, "flannel-v6.1"), "{r:?}");
                    }
                    _ => {
                        let peer = c.nodes[j].ip6.expect("peer v6").to_string();
                        assert_eq!((r.1.as_str(), r.2.as_str()), (peer.as_str(), "eth0"));
                    }
                }
            }
            if stack.ipv4() {
                let dst = c.node_subnet(j).expect("v4 subnet");
                assert!(v4_route(c, i, &dst).is_some(), "node {} -> {dst}", i + 1);
            } else {
                assert!(c.node_subnet(j).is_none(), "IPv6-only: no FLANNEL_SUBNET");
            }
        }
    }
}

/// The permanent NDP entries (IP → MAC) and the FDB remotes on node `i`'s `flannel-v6.1`.
fn v6_overlay_state(c: &Cluster, i: usize) -> (Vec<String>, Vec<String>) {
    let mut neigh: Vec<String> = c
        .node_ip_json(i, &["-6", "neigh", "show", "dev", "flannel-v6.1"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|n| {
            n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))
        })
        .filter_map(|n| n["dst"].as_str().map(str::to_string))
        .collect();
    neigh.sort();
    let fdb = c.node_exec(i, &["bridge", "-j", "fdb", "show", "dev", "flannel-v6.1"]);
    let fdb: serde_json::Value = serde_json::from_slice(&fdb.stdout).unwrap_or_default();
    let mut remotes: Vec<String> = fdb
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["dst"].as_str().map(str::to_string))
        .collect();
    remotes.sort();
    (neigh, remotes)
}

/// What `flannel-v6.1` must hold for `peers`: their subnets' first addresses, their nodes'
/// IPv6 addresses.
fn expected_v6_overlay_state(c: &Cluster, peers: &[usize]) -> (Vec<String>, Vec<String>) {
    let mut neigh: Vec<String> = peers
        .iter()
        .map(|j| {
            let s = c.node_subnet6(*j).unwrap();
            s.split('/').next().unwrap().to_string()
        })
        .collect();
    neigh.sort();
    let mut remotes: Vec<String> = peers
        .iter()
        .map(|j| c.nodes[*j].ip6.unwrap().to_string())
        .collect();
    remotes.sort();
    (neigh, remotes)
}

fn scenario(backend: Backend, stack: Stack) {
    let name = format!("{}_{stack:?}", backend.type_name());
    if !prerequisites(&name) {
        return;
    }
    let mut c = start(backend, stack);
    let mut pods = Vec::new();
    for i in 0..3 {
        for p in 0..2 {
            pods.push(c.add_pod(i, &format!("p{p}")).expect("ADD"));
        }
    }
    for p in &pods {
        assert_eq!(p.ips.len(), family_count(stack), "{:?}", p.result);
    }

    // subnet.env and the lease as flannel writes them.
    for i in 0..3 {
        let env = std::fs::read_to_string(c.nodes[i].subnet_file()).expect("subnet.env");
        let keys: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        let want: Vec<&str> = match stack {
            Stack::Dual => vec![
                "FLANNEL_NETWORK",
                "FLANNEL_SUBNET",
                "FLANNEL_IPV6_NETWORK",
                "FLANNEL_IPV6_SUBNET",
                "FLANNEL_MTU",
                "FLANNEL_IPMASQ",
            ],
            _ => vec![
                "FLANNEL_IPV6_NETWORK",
                "FLANNEL_IPV6_SUBNET",
                "FLANNEL_MTU",
                "FLANNEL_IPMASQ",
            ],
        };
        assert_eq!(keys, want, "{env}");
        let key = c.node_lease_key(i).expect("key");
        if stack == Stack::V6Only {
            assert!(key.contains("/0.0.0.0-0&fd00:10:244:"), "{key}");
        }
        let value: serde_json::Value =
            serde_json::from_str(&c.etcd_get(&key).unwrap_or_else(|| panic!("no lease {key}")))
                .expect("lease json");
        let ip6 = c.nodes[i].ip6.expect("node v6").to_string();
        assert_eq!(value["PublicIPv6"], ip6.as_str(), "{value}");
        if stack == Stack::V6Only {
            assert_eq!(value["PublicIP"], "0.0.0.0", "{value}");
        }
        assert_eq!(value["BackendType"], backend.type_name());
        if backend == Backend::Vxlan {
            assert!(value["BackendV6Data"]["VtepMAC"].is_string(), "{value}");
            assert_eq!(value.get("BackendData").is_some(), stack.ipv4(), "{value}");
        }
    }

    assert_routes(&c, backend, stack);
    assert_mesh_all_families(&c, &pods, true);

    // A deleted IPv6 route (and, vxlan, the IPv6 device) is put back.
    let peer6 = c.node_subnet6(1).expect("v6 subnet");
    let del = c.node_exec(0, &["ip", "-6", "route", "del", &peer6]);
    assert!(del.status.success(), "ip -6 route del {peer6}: {del:?}");
    assert!(
        wait_until(Duration::from_secs(3), || v6_route(&c, 0, &peer6).is_some()),
        "route to {peer6} not restored; log:\n{}",
        c.flanneld_log(0)
    );
    if backend == Backend::Vxlan {
        assert_eq!(
            v6_overlay_state(&c, 0),
            expected_v6_overlay_state(&c, &[1, 2])
        );
        let out = c.node_exec(0, &["ip", "link", "del", "flannel-v6.1"]);
        assert!(out.status.success());
        assert!(
            wait_until(Duration::from_secs(3), || {
                (1..3).all(|j| v6_route(&c, 0, &c.node_subnet6(j).unwrap()).is_some())
            }),
            "flannel-v6.1 and its peers not restored; log:\n{}",
            c.flanneld_log(0)
        );
        // Recreated with NDP entries for both peers and FDB entries to both peers' IPv6
        // addresses.
        assert_eq!(
            v6_overlay_state(&c, 0),
            expected_v6_overlay_state(&c, &[1, 2])
        );
    }
    assert_mesh_all_families(&c, &pods, false);

    // A restart keeps both subnets (and the lease value).
    let (sub4, sub6) = (c.node_subnet(0), c.node_subnet6(0));
    let key = c.node_lease_key(0).unwrap();
    let value = c.etcd_get(&key);
    c.stop_flanneld(0);
    c.start_flanneld(0).expect("restart");
    c.wait_ready(0, Duration::from_secs(20)).expect("ready");
    assert_eq!((c.node_subnet(0), c.node_subnet6(0)), (sub4, sub6));
    assert_eq!(c.etcd_get(&key), value, "same lease after restart");
    assert_mesh_all_families(&c, &pods, false);

    // Node 3 leaves (its lease deleted): both families' routes to it go from both peers.
    let (gone4, gone6) = (c.node_subnet(2), c.node_subnet6(2).unwrap());
    c.stop_flanneld(2);
    c.etcdctl(&["del", &c.node_lease_key(2).unwrap()])
        .expect("del");
    assert!(
        wait_until(Duration::from_secs(3), || {
            (0..2).all(|i| {
                v6_route(&c, i, &gone6).is_none()
                    && gone4.as_ref().is_none_or(|g| v4_route(&c, i, g).is_none())
            })
        }),
        "routes to the departed node remain: {:?} {:?}",
        c.node_routes(0),
        c.node_routes6(0)
    );
    if backend == Backend::Vxlan {
        // The departed peer's NDP and FDB entries went with its route.
        assert!(
            wait_until(Duration::from_secs(3), || v6_overlay_state(&c, 0)
                == expected_v6_overlay_state(&c, &[1])),
            "{:?}",
            v6_overlay_state(&c, 0)
        );
    }
    let rest: Vec<Pod> = pods.iter().filter(|p| p.node < 2).cloned().collect();
    assert_mesh_all_families(&c, &rest, false);
}

#[test]
fn dual_stack_vxlan() {
    scenario(Backend::Vxlan, Stack::Dual);
}

#[test]
fn dual_stack_host_gw() {
    scenario(Backend::HostGw, Stack::Dual);
}

#[test]
fn ipv6_only_vxlan() {
    scenario(Backend::Vxlan, Stack::V6Only);
}

#[test]
fn ipv6_only_host_gw() {
    scenario(Backend::HostGw, Stack::V6Only);
}

/// udp is IPv4 only, as in flannel: a dual-stack udp network is refused with a message that
/// names the backend, and flanneld waits (it never half-starts).
#[test]
fn udp_with_ipv6_is_refused_clearly() {
    if !prerequisites("udp_with_ipv6_is_refused_clearly") {
        return;
    }
    let mut spec = ClusterSpec::new(1, Backend::Udp).with_stack(Stack::Dual);
    spec.start_daemons = false;
    let mut c = Cluster::start(spec).expect("cluster");
    c.start_flanneld(0).expect("start");
    assert!(
        wait_until(Duration::from_secs(10), || c
            .flanneld_log(0)
            .contains("udp carries IPv4 only")),
        "log:\n{}",
        c.flanneld_log(0)
    );
    assert!(!c.nodes[0].subnet_file().exists());
}

/// `--ip-masq` on a dual-stack cluster whose nodes drop forwarded traffic by default in both
/// iptables and ip6tables (Docker's `-P FORWARD DROP`): the exact `ip6 flannel-rs` table,
/// our accept jump first in ip6tables' FORWARD, pod → underlay traffic over IPv6 leaving
/// with the node's IPv6 address, and pod-to-pod IPv6 keeping the pod's.
#[test]
fn dual_stack_masquerade_and_ip6tables_forward_drop() {
    if !flannel_examples::cluster::prerequisites(
        "dual_stack_masquerade_and_ip6tables_forward_drop",
        &["iptables-nft", "ip6tables-nft", "ip6tables-nft-save"],
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(2, Backend::Vxlan).with_stack(Stack::Dual);
    spec.ip_masq = true;
    spec.start_daemons = false;
    let mut c = Cluster::start(spec).expect("cluster");
    for i in 0..2 {
        for tool in ["iptables-nft", "ip6tables-nft"] {
            let out = c.node_exec(i, &[tool, "-P", "FORWARD", "DROP"]);
            assert!(out.status.success(), "{tool}: {:?}", out);
        }
        c.start_flanneld(i).expect("start");
    }
    for i in 0..2 {
        c.wait_ready(i, Duration::from_secs(20)).expect("ready");
    }
    let sub6 = c.node_subnet6(0).unwrap();
    let out = c.node_exec(0, &["nft", "list", "table", "ip6", "flannel-rs"]);
    let expected = format!(
        "table ip6 flannel-rs {{\n\
         \tchain postrtg {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x00004000 == 0x00004000 return\n\
         \t\tip6 saddr {sub6} ip6 daddr fd00:10:244::/56 return\n\
         \t\tip6 saddr fd00:10:244::/56 ip6 daddr {sub6} return\n\
         \t\tip6 saddr != fd00:10:244::/56 ip6 daddr {sub6} return\n\
         \t\tip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random\n\
         \t\tip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random\n\
         \t}}\n\
         \n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip6 saddr fd00:10:244::/56 accept\n\
         \t\tip6 daddr fd00:10:244::/56 accept\n\
         \t}}\n\
         }}\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    let save = c.node_exec(0, &["ip6tables-nft-save", "-t", "filter"]);
    let save = String::from_utf8_lossy(&save.stdout);
    let forward: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A FORWARD"))
        .collect();
    assert_eq!(
        forward.first().copied(),
        Some("-A FORWARD -m comment --comment \"flannel-rs forward\" -j FLANNEL-RS-FWD"),
        "{save}"
    );
    assert!(
        save.contains("-A FLANNEL-RS-FWD -s fd00:10:244::/56 -m comment --comment \"flannel-rs forward\" -j ACCEPT"),
        "{save}"
    );

    let pods: Vec<Pod> = (0..2).map(|i| c.add_pod(i, "p0").expect("ADD")).collect();
    // Pod-to-pod over both families despite the DROP policies.
    assert_mesh_all_families(&c, &pods, true);

    // A TCP server on the underlay's IPv6 address sees the node's IPv6 address.
    let etcd6 = flannel_examples::cluster::ETCD_IP6;
    let server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.ul(),
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5302",
            "-B",
            etcd6,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let ok = wait_until(Duration::from_secs(5), || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &pods[0].ns, "iperf3", "-c", etcd6])
            .args(["-p", "5302", "-n", "64K", "--connect-timeout", "1000"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let log =
        String::from_utf8_lossy(&server.wait_with_output().expect("server").stdout).into_owned();
    assert!(ok, "pod could not reach the underlay over IPv6: {log}");
    let node6 = c.nodes[0].ip6.unwrap();
    assert!(
        log.contains(&format!("Accepted connection from {node6}")),
        "the server must see the node's IPv6 address, not the pod's ({:?}): {log}",
        pods[0].ips
    );
}

/// Dual stack turned IPv4-only: on its next start a node removes what it had for IPv6
/// (`flannel-v6.1`, IPv6 routes of ours, the `ip6 flannel-rs` table), and IPv4 keeps working.
#[test]
fn a_family_turned_off_leaves_nothing_behind() {
    if !prerequisites("a_family_turned_off_leaves_nothing_behind") {
        return;
    }
    let mut spec = ClusterSpec::new(2, Backend::Vxlan).with_stack(Stack::Dual);
    spec.ip_masq = true;
    let mut c = Cluster::start(spec).expect("cluster");
    let ours6 = |c: &Cluster| {
        c.node_ip_json(0, &["-6", "route", "show", "proto", "150"])
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(
        wait_until(Duration::from_secs(5), || ours6(&c) == 1),
        "{:?}",
        c.node_routes6(0)
    );
    let has_v6_table = |c: &Cluster| {
        c.node_exec(0, &["nft", "list", "table", "ip6", "flannel-rs"])
            .status
            .success()
    };
    assert!(has_v6_table(&c));
    c.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        &format!(
            r#"{{"Network":"{}","Backend":{{"Type":"vxlan"}}}}"#,
            flannel_examples::cluster::NETWORK
        ),
    ])
    .expect("put config");
    c.stop_flanneld(0);
    c.start_flanneld(0).expect("restart");
    c.wait_ready(0, Duration::from_secs(20)).expect("ready");
    let log = c.flanneld_log(0);
    assert!(log.contains("address family no longer enabled"), "{log}");
    assert!(
        c.node_ip_json(0, &["link", "show", "flannel-v6.1"])
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    assert_eq!(ours6(&c), 0, "{:?}", c.node_routes6(0));
    assert!(!has_v6_table(&c));
    assert!(
        c.node_ip_json(0, &["link", "show", "flannel.1"])
            .as_array()
            .is_some_and(|a| a.len() == 1)
    );
    assert_eq!(c.nodes[0].subnet_env("FLANNEL_IPV6_SUBNET"), None);
    c.spec.stack = Stack::V4; // node 2 has not restarted yet; IPv4 is what both still share
    let pods: Vec<Pod> = (0..2).map(|i| c.add_pod(i, "p0").expect("ADD")).collect();
    assert!(c.ping_within(&pods[0], pods[1].ip, Duration::from_secs(5)));
}
