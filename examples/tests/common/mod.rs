//! Assertions shared by the multi-node test files.

use std::time::Duration;

use flannel_examples::cluster::{Cluster, Pod};

/// The fenced ```sh block after `<!-- test: name -->` in the README: documented command
/// sequences are run by the tests exactly as written.
#[allow(dead_code)] // not every test file runs README blocks
pub fn readme_block(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let marker = format!("<!-- test: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"))
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1;
    body.split_once("```")
        .expect("the block's closing fence")
        .0
        .to_string()
}

/// Every pod reaches every pod on another namespace: a ping (within 5 s) and, with `tcp`, a
/// TCP connection.
#[allow(dead_code)] // not every test file has pods
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
