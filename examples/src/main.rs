//! `flannel-demo`: a three-node cluster on one machine, in network namespaces.
//!
//! etcd on an underlay bridge, `flanneld` in every node namespace, two pods per node
//! attached by the `flannel` CNI plugin, then a connectivity matrix (ping + TCP) between
//! every pair of pods. Everything is removed at the end, also on failure.
//!
//! Usage: flannel-demo [--backend vxlan|host-gw|udp] [--nodes N] [--pods-per-node M] [--release]

use std::process::ExitCode;

use flannel_examples::cluster::{Backend, Binaries, Cluster, ClusterSpec};

fn usage() -> ExitCode {
    eprintln!(
        "usage: flannel-demo [--backend vxlan|host-gw|udp] [--nodes N] [--pods-per-node M] [--release]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut backend = Backend::Vxlan;
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
    let mut spec = ClusterSpec::new(nodes, backend);
    spec.bins = Binaries::from_target(profile);
    println!(
        "# starting etcd + {nodes} nodes (backend {})",
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
        println!(
            "node {} underlay {} subnet {} mtu {}",
            i + 1,
            cluster.nodes[i].ip,
            cluster.node_subnet(i).unwrap_or_default(),
            cluster.nodes[i]
                .subnet_env("FLANNEL_MTU")
                .unwrap_or_default()
        );
    }
    let mut pods = Vec::new();
    for i in 0..nodes {
        for j in 0..per_node {
            match cluster.add_pod(i, &format!("p{j}")) {
                Ok(p) => {
                    println!("pod {} on node {} -> {}", p.ns, i + 1, p.ip);
                    pods.push(p);
                }
                Err(e) => {
                    eprintln!("flannel-demo: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!("# connectivity matrix (row -> column): ping/tcp");
    print!("{:>14}", "");
    for p in &pods {
        print!("{:>14}", p.ip.to_string());
    }
    println!();
    let mut failures = 0;
    for a in &pods {
        print!("{:>14}", a.ip.to_string());
        for b in &pods {
            if a.ns == b.ns {
                print!("{:>14}", "-");
                continue;
            }
            let ping = cluster.ping_within(a, b.ip, std::time::Duration::from_secs(3));
            let tcp = cluster.tcp(a, b).is_ok();
            if !(ping && tcp) {
                failures += 1;
            }
            let cell = format!(
                "{}/{}",
                if ping { "ok" } else { "FAIL" },
                if tcp { "ok" } else { "FAIL" }
            );
            print!("{cell:>14}");
        }
        println!();
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
