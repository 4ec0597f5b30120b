//! Assertions shared by the multi-node test files.

use std::time::Duration;

use flannel_examples::cluster::{Cluster, Pod};

/// Every pod reaches every pod on another namespace: a ping (within 5 s) and, with `tcp`, a
/// TCP connection.
pub fn assert_full_mesh(c: &Cluster, pods: &[Pod], tcp: bool) {
    for a in pods {
        for b in pods {
            if a.ns == b.ns {
                continue;
            }
            assert!(
                c.ping_within(a, b.ip, Duration::from_secs(5)),
                "ping {} (node {}) -> {} (node {})",
                a.ip,
                a.node + 1,
                b.ip,
                b.node + 1
            );
            if tcp {
                c.tcp(a, b).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}
