//! flanneld SIGKILLed at random instants of its start-up — while it acquires the lease, while
//! it programs the kernel, while it writes subnet.env — then started again: the new run must
//! repair everything. After each trial: subnet.env is absent or complete (never half
//! written), the node holds exactly one lease (no duplicate from a create whose answer was
//! lost), subnet.env names that lease, and the peer routes to it.
//!
//! Trials: `FLANNELD_CRASH_TRIALS` (default 15).

use std::time::{Duration, Instant};

use flannel_examples::cluster::{Backend, Cluster, ClusterSpec, wait_until};
use nix::sys::signal::Signal;

/// Keys under the subnet prefix whose value names `public_ip`.
fn leases_of(c: &Cluster, public_ip: &str) -> Vec<String> {
    let out = c
        .etcdctl(&["get", "/coreos.com/network/subnets/", "--prefix"])
        .expect("etcdctl get");
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|kv| kv.len() == 2 && kv[1].contains(&format!("\"PublicIP\":\"{public_ip}\"")))
        .map(|kv| kv[0].to_string())
        .collect()
}

#[test]
fn sigkill_during_startup_leaves_state_the_next_start_repairs() {
    if !flannel_examples::cluster::prerequisites("sigkill_during_startup", &[]) {
        return;
    }
    let mut spec = ClusterSpec::new(2, Backend::Vxlan);
    spec.start_daemons = false;
    spec.ip_masq = true;
    let mut c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    // The peer runs throughout; node 1 is the one killed.
    c.start_flanneld(1).expect("start peer");
    c.wait_ready(1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    c.start_flanneld(0).expect("start");
    c.wait_ready(0, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let startup = started.elapsed();
    c.stop_flanneld(0);
    // Each trial starts from a fresh node state half the time (first boot) and from the
    // previous run's state otherwise (restart).
    let trials: u64 = std::env::var("FLANNELD_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut seed: u64 = 0x0f1a_77e1;
    let ip = c.nodes[0].ip.to_string();
    for t in 0..trials {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        if t % 2 == 0 {
            let _ = std::fs::remove_file(c.nodes[0].subnet_file());
        }
        let delay = Duration::from_nanos(seed % (startup.as_nanos() as u64 * 13 / 10).max(1));
        c.start_flanneld(0).expect("start");
        std::thread::sleep(delay);
        c.signal_flanneld(0, Signal::SIGKILL);
        c.stop_flanneld(0); // reaps the killed process

        // Never half written.
        if c.nodes[0].subnet_file().exists() {
            for key in [
                "FLANNEL_NETWORK",
                "FLANNEL_SUBNET",
                "FLANNEL_MTU",
                "FLANNEL_IPMASQ",
            ] {
                assert!(
                    c.nodes[0].subnet_env(key).is_some_and(|v| !v.is_empty()),
                    "trial {t} (killed at {delay:?}): subnet.env lacks {key}: {:?}",
                    std::fs::read_to_string(c.nodes[0].subnet_file())
                );
            }
        }

        // The next start repairs everything.
        c.start_flanneld(0).expect("restart");
        c.wait_ready(0, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("trial {t}: {e}"));
        let keys = leases_of(&c, &ip);
        assert_eq!(
            keys.len(),
            1,
            "trial {t} (killed at {delay:?}): leases {keys:?}"
        );
        let subnet = c.node_subnet(0).expect("subnet.env");
        assert_eq!(keys[0], Cluster::lease_key(&subnet), "trial {t}");
        assert!(
            wait_until(Duration::from_secs(10), || {
                c.node_routes(1).iter().any(|(d, _, _)| *d == subnet)
            }),
            "trial {t}: the peer has no route to {subnet}"
        );
        c.stop_flanneld(0);
    }
}
