//! ADD and DEL against the recording kernel: no root, no namespaces, every kernel call seen.
//! The pod "namespace" is `/proc/self/ns/net` opened read-only (the twin only uses its path
//! as a name); host-local writes into a temporary directory.

use std::collections::HashMap;
use std::path::Path;

use backends::kernel::recording::{HOST, RecordingKernel};

use crate::context::Context;
use crate::skel::{Invocation, Parsed, parse};

const POD_NS: &str = "/proc/self/ns/net";

struct Node {
    dir: tempfile::TempDir,
    kernel: RecordingKernel,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("subnet.env"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .expect("subnet.env");
        Node {
            dir,
            kernel: RecordingKernel::new(),
        }
    }

    fn conf(&self) -> String {
        let d = self.dir.path();
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": d.join("subnet.env"),
            "dataDir": d.join("flannel"),
            "ipam": {"dataDir": d.join("ipam")},
        })
        .to_string()
    }

    fn invocation(&self, command: &str, container: &str) -> Invocation {
        let vars: HashMap<&str, String> = HashMap::from([
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container.to_string()),
            ("CNI_NETNS", POD_NS.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/nonexistent".to_string()),
        ]);
        let mut version = String::new();
        match parse(
            &|k| vars.get(k).cloned(),
            &mut self.conf().as_bytes(),
            &mut version,
        ) {
            Ok(Parsed::Invocation(inv)) => *inv,
            other => panic!("not an invocation: {:?}", other.err()),
        }
    }

    fn reserved(&self) -> Vec<String> {
        reservations(&self.dir.path().join("ipam/cbr0"))
    }
}

/// The reserved addresses in a host-local directory.
fn reservations(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

fn pod_links(k: &RecordingKernel) -> Vec<String> {
    k.links_in(POD_NS).into_iter().map(|l| l.name).collect()
}

async fn add(node: &Node, container: &str) -> crate::error::CniResult<crate::result::CniOutput> {
    let inv = node.invocation("ADD", container);
    super::add(&Context::new(&inv, node.kernel.clone())).await
}

async fn del(node: &Node, container: &str) -> crate::error::CniResult<()> {
    let inv = node.invocation("DEL", container);
    crate::del::del(&Context::new(&inv, node.kernel.clone())).await
}

#[tokio::test(flavor = "current_thread")]
async fn add_builds_bridge_veth_addresses_and_routes() {
    let node = Node::new();
    let out = add(&node, "c1").await.expect("ADD");
    assert_eq!(out.ips[0].address.to_string(), "10.244.1.2/24");
    assert_eq!(node.reserved(), vec!["10.244.1.2"]);
    let host: Vec<String> = node
        .kernel
        .links_in(HOST)
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(host.contains(&"cbr0".to_string()), "{host:?}");
    assert!(host.iter().any(|n| n.starts_with("veth")), "{host:?}");
    assert_eq!(pod_links(&node.kernel), vec!["lo", "eth0"]);
    let pod_addrs: Vec<String> = node
        .kernel
        .addresses_in(POD_NS)
        .into_iter()
        .map(|(_, a)| a.to_string())
        .collect();
    assert_eq!(pod_addrs, vec!["10.244.1.2/24"]);
    let routes: Vec<String> = node
        .kernel
        .routes_in(POD_NS)
        .into_iter()
        .map(|r| format!("{} via {:?}", r.dst, r.gateway))
        .collect();
    assert!(
        routes.contains(&"10.244.0.0/16 via Some(10.244.1.1)".to_string()),
        "{routes:?}"
    );
    assert_eq!(
        node.kernel.sysctl(HOST, "net/ipv4/ip_forward").as_deref(),
        Some("1"),
        "forwarding on with the first gateway"
    );
    assert_eq!(
        node.kernel
            .sysctl(POD_NS, "net/ipv6/conf/eth0/disable_ipv6")
            .as_deref(),
        Some("1"),
        "IPv6 off on an IPv4-only pod, written inside the pod namespace"
    );
    assert_eq!(
        node.kernel
            .sysctl(POD_NS, "net/ipv6/conf/eth0/accept_dad")
            .as_deref(),
        None,
        "no DAD knob where IPv6 is off"
    );
}

/// Which IPv6 knobs a pod gets: IPv6 off without an IPv6 address unless `podIPv6LinkLocal`;
/// with one, no router advertisements and the reference's DAD settings; with the knob only
/// the DAD settings.
#[test]
fn pod_ipv6_knobs_follow_the_pods_addresses_and_the_config() {
    use super::pod_ipv6_settings;
    let off: &[(&str, &str)] = &[("disable_ipv6", "1")];
    assert_eq!(pod_ipv6_settings(false, false, false), off);
    assert_eq!(pod_ipv6_settings(false, false, true), off);
    assert_eq!(
        pod_ipv6_settings(false, true, false),
        &[("accept_dad", "0")]
    );
    assert_eq!(
        pod_ipv6_settings(false, true, true),
        &[("enhanced_dad", "1"), ("accept_dad", "1")]
    );
    assert_eq!(
        pod_ipv6_settings(true, false, false),
        &[("accept_ra", "0"), ("accept_dad", "0")]
    );
    assert_eq!(
        pod_ipv6_settings(true, true, true),
        &[
            ("accept_ra", "0"),
            ("enhanced_dad", "1"),
            ("accept_dad", "1")
        ]
    );
}

/// Every kernel step of ADD that can fail, made to fail in turn: each time ADD reports an
/// error and leaves no veth, no pod interface and no reservation behind.
#[tokio::test(flavor = "current_thread")]
async fn every_failing_step_is_rolled_back() {
    for op in [
        "ensure_bridge",
        "add_address",
        "create_veth",
        "setup_bridge_port",
        "enter",
        "set_up",
        "set_up_with_arp_notify",
        "add_route",
        "masq_add",
    ] {
        let node = Node::new();
        // The first add_address is the bridge gateway's; fail the pod's (second) one too.
        node.kernel.fail_next(op, libc::EIO);
        let masq = op == "masq_add";
        let inv = {
            let mut inv = node.invocation("ADD", "c1");
            if masq {
                inv.conf.delegate.ip_masq = Some(true);
            }
            inv
        };
        let err = super::add(&Context::new(&inv, node.kernel.clone()))
            .await
            .expect_err(op);
        assert!(err.msg.contains("Input/output error"), "{op}: {}", err.msg);
        let host: Vec<String> = node
            .kernel
            .links_in(HOST)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(
            !host.iter().any(|n| n.starts_with("veth")),
            "{op}: veth left: {host:?}"
        );
        assert!(
            !pod_links(&node.kernel).contains(&"eth0".to_string()),
            "{op}: pod interface left"
        );
        assert!(
            node.reserved().is_empty(),
            "{op}: reservation left: {:?}",
            node.reserved()
        );
        assert!(
            node.kernel.masq_entries("cbr0").is_empty(),
            "{op}: masquerade left"
        );
        // And the node is usable afterwards: the same ADD succeeds.
        super::add(&Context::new(&inv, node.kernel.clone()))
            .await
            .unwrap_or_else(|e| panic!("{op}: retry: {}", e.msg));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn del_removes_everything_and_is_idempotent() {
    let node = Node::new();
    add(&node, "c1").await.expect("ADD");
    del(&node, "c1").await.expect("DEL");
    assert_eq!(pod_links(&node.kernel), vec!["lo"]);
    assert!(node.reserved().is_empty());
    del(&node, "c1").await.expect("second DEL");
    del(&node, "never-added")
        .await
        .expect("DEL of an unknown container");
}

/// A DEL whose first step fails still runs the rest, reports the failure, and a retry
/// finishes the job.
#[tokio::test(flavor = "current_thread")]
async fn del_carries_on_past_a_failing_step() {
    let node = Node::new();
    let mut inv = node.invocation("ADD", "c1");
    inv.conf.delegate.ip_masq = Some(true);
    super::add(&Context::new(&inv, node.kernel.clone()))
        .await
        .expect("ADD");
    assert_eq!(node.kernel.masq_entries("cbr0").len(), 1);

    let mut del_inv = node.invocation("DEL", "c1");
    del_inv.conf.delegate.ip_masq = Some(true);
    node.kernel.fail_next("del_link_detached", libc::EBUSY);
    node.kernel.fail_next("masq_remove", libc::EIO);
    let ctx = Context::new(&del_inv, node.kernel.clone());
    let err = crate::del::del(&ctx).await.expect_err("two steps failed");
    assert!(err.msg.starts_with("2 DEL steps failed"), "{}", err.msg);
    assert!(node.reserved().is_empty(), "the address was still released");

    crate::del::del(&ctx).await.expect("retried DEL");
    assert_eq!(pod_links(&node.kernel), vec!["lo"], "veth gone on retry");
    assert!(
        node.kernel.masq_entries("cbr0").is_empty(),
        "masquerade entry found by its comment once the reservation was gone"
    );
}
