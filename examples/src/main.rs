//! `flannel-demo`: a three-node cluster on one machine, in network namespaces.
//!
//! etcd on an underlay bridge, `flanneld` in every node namespace, two pods per node
//! attached by the `flannel` CNI plugin, then a connectivity matrix (ping + TCP) between
//! every pair of pods. Everything is removed at the end, also on failure.
//!
//! Usage: flannel-demo [--backend vxlan|host-gw|udp|wireguard] [--stack v4|dual|v6] [--nodes N]
//! [--pods-per-node M] [--release]. With `--stack dual` there is one matrix per family.

use std::net::IpAddr;
use std::process::ExitCode;

use flannel_examples::cluster::{Backend, Binaries, Cluster, ClusterSpec, Pod, Stack};

fn usage() -> ExitCode {
    eprintln!(
        "usage: flannel-demo [--backend vxlan|host-gw|udp|wireguard] [--stack v4|dual|v6] [--nodes N] \
         [--pods-per-node M] [--release]"
    );
    ExitCode::from(2)
}

/// Pod `p`'s address of the family `v6` says.
fn addr_of(p: &Pod, v6: bool) -> Option<IpAddr> {
    p.ips.iter().copied().find(|a| a.is_ipv6() == v6)
}

/// Prints the ping/TCP matrix over one family; returns the failing pairs.
fn matrix(cluster: &Cluster, pods: &[Pod], v6: bool) -> usize {
    let w = if v6 { 24 } else { 14 };
    println!(
        "# connectivity matrix over {} (row -> column): ping/tcp",
        if v6 { "IPv6" } else { "IPv4" }
    );
    let label = |p: &Pod| addr_of(p, v6).map(|a| a.to_string()).unwrap_or_default();
    print!("{:>w$}", "");
    for p in pods {
        print!("{:>w$}", label(p));
    }
    println!();
    let mut failures = 0;
    for a in pods {
        print!("{:>w$}", label(a));
        for b in pods {
            let Some(dst) = addr_of(b, v6).filter(|_| a.ns != b.ns) else {
                print!("{:>w$}", "-");
                continue;
            };
            let ping = cluster.ping_within(a, dst, std::time::Duration::from_secs(3));
            let tcp = cluster.tcp_to(a, b, dst).is_ok();
            if !(ping && tcp) {
                failures += 1;
            }
            let cell = format!(
                "{}/{}",
                if ping { "ok" } else { "FAIL" },
                if tcp { "ok" } else { "FAIL" }
            );
            print!("{cell:>w$}");
        }
        println!();
    }
    failures
}

fn main() -> ExitCode {
    let mut backend = Backend::Vxlan;
    let mut stack = Stack::V4;
    let mut nodes = 3;
    let mut per_node = 2;
    let mut profile = "debug";
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--backend" => match args.next().as_deref().and_then(Backend::parse) {
                Some(b) => backend = b,
                None => return usage(),
            },
            "--stack" => match args.next().as_deref() {
                Some("v4") => stack = Stack::V4,
                Some("dual") => stack = Stack::Dual,
                Some("v6") => stack = Stack::V6Only,
                _ => return usage(),
            },
            "--nodes" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if (1..=50).contains(&n) => nodes = n,
                _ => return usage(),
            },
            "--pods-per-node" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if (1..=20).contains(&n) => per_node = n,
                _ => return usage(),
            },
            "--release" => profile = "release",
            _ => return usage(),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("flannel-demo: must run as root (it creates network namespaces)");
        return ExitCode::FAILURE;
    }
    if let Err(e) = flannel_examples::cleanup::install_signal_cleanup() {
        eprintln!("flannel-demo: cannot install the Ctrl-C clean-up: {e}");
        return ExitCode::FAILURE;
    }
    let mut spec = ClusterSpec::new(nodes, backend).with_stack(stack);
    spec.bins = Binaries::from_target(profile);
    println!(
        "# starting etcd + {nodes} nodes (backend {}, {stack:?})",
        backend.type_name()
    );
    let mut cluster = match Cluster::start(spec) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flannel-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    for i in 0..nodes {
        let node = &cluster.nodes[i];
        let underlay: Vec<String> = stack
            .ipv4()
            .then(|| node.ip.to_string())
            .into_iter()
            .chain(node.ip6.map(|a| a.to_string()))
            .collect();
        let subnets: Vec<String> = cluster
            .node_subnet(i)
            .into_iter()
            .chain(cluster.node_subnet6(i))
            .collect();
        println!(
            "node {} underlay {} subnet {} mtu {}",
            i + 1,
            underlay.join(","),
            subnets.join(","),
            node.subnet_env("FLANNEL_MTU").unwrap_or_default()
        );
    }
    let mut pods = Vec::new();
    for i in 0..nodes {
        for j in 0..per_node {
            match cluster.add_pod(i, &format!("p{j}")) {
                Ok(p) => {
                    let ips: Vec<String> = p.ips.iter().map(|a| a.to_string()).collect();
                    println!("pod {} on node {} -> {}", p.ns, i + 1, ips.join(","));
                    pods.push(p);
                }
                Err(e) => {
                    eprintln!("flannel-demo: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let mut failures = 0;
    if stack.ipv4() {
        failures += matrix(&cluster, &pods, false);
    }
    if stack.ipv6() {
        failures += matrix(&cluster, &pods, true);
    }
    for p in pods {
        if let Err(e) = cluster.del_pod(&p) {
            eprintln!("flannel-demo: {e}");
            failures += 1;
        }
    }
    drop(cluster);
    println!("# everything removed; {failures} failing pair(s)");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
