//! The control plane against a production-shaped etcd: three members with TLS and client
//! certificates made at test time ([`flannel_examples::etcd_tls::TlsEtcd`]), nodes running
//! flanneld over mutual TLS with a 20 s lease TTL, pods attached by the CNI plugin, all in
//! namespaces the harness creates and removes.
//!
//! * `survives_leader_kill_member_loss_quorum_loss_and_revoke`: the leader SIGKILLed while
//!   pods ping at 20/s (0 loss; every lease still held after longer than the TTL), a node
//!   joining while a member is down, 2 of 3 members down for 30 s (0 loss, every flanneld
//!   alive, same subnets after, the watch still sees a node leave), and an operator's
//!   `etcdctl lease revoke` of a node's lease (re-acquired, same subnet, no restart).
//! * `snapshot_restore_converges_and_a_foreign_client_cert_is_refused`: etcd restored from a
//!   snapshot after leases changed (every node converges on the restored truth and keeps its
//!   own lease), and a node whose client certificate comes from another CA: a clear error,
//!   no subnet.env, retrying.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flannel_examples::cluster::{Backend, Cluster, ClusterSpec, Pod, wait_until};

mod common;
use common::assert_full_mesh;

const TTL: Duration = Duration::from_secs(20);

fn prerequisites(test: &str) -> bool {
    flannel_examples::cluster::prerequisites(test, &["openssl"])
}

/// A cluster of `nodes` nodes over a 3-member TLS etcd, flanneld started on the first
/// `running` of them.
fn start(nodes: usize, running: usize) -> Cluster {
    let mut spec = ClusterSpec::new(nodes, Backend::Vxlan);
    spec.etcd_tls_members = 3;
    spec.start_daemons = false;
    spec.flanneld_args = vec!["--subnet-lease-ttl".into(), format!("{}s", TTL.as_secs())];
    let mut c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    for i in 0..running {
        c.start_flanneld(i).expect("start flanneld");
    }
    for i in 0..running {
        c.wait_subnet_env(i, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    c
}

/// `ping -c count -i 0.05` (20/s) running in the background; [`Pinger::finish`] waits for
/// it and returns (sent, received).
struct Pinger {
    child: Child,
    what: String,
}

impl Pinger {
    fn start(from: &Pod, to: Ipv4Addr, count: u32) -> Pinger {
        let child = Command::new("ip")
            .args([
                "netns", "exec", &from.ns, "ping", "-q", "-W", "1", "-i", "0.05",
            ])
            .arg("-c")
            .arg(count.to_string())
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        Pinger {
            child,
            what: format!("{} -> {to}", from.ip),
        }
    }

    fn finish(self) -> (u32, u32, String) {
        let out = self.child.wait_with_output().expect("ping exit");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary for {}: {text}", self.what));
        let mut nums = line
            .split(',')
            .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
        (
            nums.next().unwrap_or(0),
            nums.next().unwrap_or(0),
            self.what,
        )
    }
}

fn assert_no_loss(pingers: Vec<Pinger>, when: &str) {
    for p in pingers {
        let (sent, received, what) = p.finish();
        assert!(sent > 0, "{when}: no ping sent for {what}");
        assert_eq!(
            received,
            sent,
            "{when}: ping {what} lost {} of {sent}",
            sent - received
        );
        eprintln!("{when}: ping {what}: {received}/{sent}");
    }
}

fn subnet(c: &Cluster, i: usize) -> String {
    c.node_subnet(i).expect("node subnet")
}

fn has_route(c: &Cluster, i: usize, dst: &str) -> bool {
    c.node_routes(i).iter().any(|(d, _, _)| d == dst)
}

/// The node's lease key exists, carries its public IP and hangs on a live etcd lease.
fn lease_held(c: &Cluster, i: usize, subnet: &str) -> bool {
    let key = Cluster::lease_key(subnet);
    let ip = c.nodes[i].ip.to_string();
    let value_ok = c.etcd_get(&key).is_some_and(|v| v.contains(&ip));
    let lease = c.etcd_key_lease(&key).unwrap_or(0);
    value_ok && lease != 0 && lease_ttl(c, lease) > 0
}

/// `etcdctl lease timetolive`'s TTL for `id` (-1 when gone).
fn lease_ttl(c: &Cluster, id: i64) -> i64 {
    let out = c
        .etcdctl(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"])
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["ttl"].as_i64())
        .unwrap_or(-1)
}

fn all_alive(c: &mut Cluster, nodes: &[usize]) {
    for &i in nodes {
        assert!(
            c.flanneld_running(i),
            "flanneld on node {} exited:\n{}",
            i + 1,
            c.flanneld_log(i)
        );
    }
}

#[test]
fn survives_leader_kill_member_loss_quorum_loss_and_revoke() {
    if !prerequisites("survives_leader_kill_member_loss_quorum_loss_and_revoke") {
        return;
    }
    let mut c = start(4, 3);
    let pods: Vec<Pod> = (0..3).map(|i| c.add_pod(i, "p").expect("ADD")).collect();
    assert_full_mesh(&c, &pods, false);
    let subnets: Vec<String> = (0..3).map(|i| subnet(&c, i)).collect();

    // 1. The leader SIGKILLed while pods ping at 20/s.
    let pingers = vec![
        Pinger::start(&pods[0], pods[1].ip, 200),
        Pinger::start(&pods[1], pods[2].ip, 200),
        Pinger::start(&pods[2], pods[0].ip, 200),
    ];
    std::thread::sleep(Duration::from_secs(1));
    let etcd = c.tls_etcd().expect("tls etcd");
    let leader = etcd.leader().expect("an etcd leader");
    let killed_at = Instant::now();
    etcd.kill_member(leader);
    assert_no_loss(pingers, "leader killed");
    // Longer than the TTL later, every lease is still held (renewed through the others).
    std::thread::sleep((TTL + Duration::from_secs(5)).saturating_sub(killed_at.elapsed()));
    for (i, s) in subnets.iter().enumerate() {
        assert!(
            lease_held(&c, i, s),
            "node {} lost its lease {s} after the leader died:\n{}",
            i + 1,
            c.flanneld_log(i)
        );
        assert_eq!(&subnet(&c, i), s);
    }
    all_alive(&mut c, &[0, 1, 2]);

    // 2. A node joins while that member is still down; the others program it.
    c.start_flanneld(3).expect("start node 4");
    c.wait_subnet_env(3, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let s4 = subnet(&c, 3);
    for i in 0..3 {
        assert!(
            wait_until(Duration::from_secs(10), || has_route(&c, i, &s4)),
            "node {} has no route to the new node's {s4}",
            i + 1
        );
    }
    let p4 = c.add_pod(3, "p").expect("ADD on node 4");
    assert!(c.ping_within(&pods[0], p4.ip, Duration::from_secs(5)));

    // 3. The member comes back; then 2 of 3 members are down for 30 s.
    let etcd = c.tls_etcd().unwrap();
    etcd.start_member(leader).expect("restart member");
    etcd.wait_healthy(Duration::from_secs(30)).expect("healthy");
    let down: Vec<usize> = (0..3).filter(|k| *k != leader).collect();
    for &k in &down {
        etcd.kill_member(k);
    }
    let pingers = vec![
        Pinger::start(&pods[0], pods[1].ip, 600),
        Pinger::start(&pods[1], pods[2].ip, 600),
        Pinger::start(&p4, pods[0].ip, 600),
    ];
    assert_no_loss(pingers, "2 of 3 members down");
    all_alive(&mut c, &[0, 1, 2, 3]);
    let etcd = c.tls_etcd().unwrap();
    for &k in &down {
        etcd.start_member(k).expect("restart member");
    }
    etcd.wait_healthy(Duration::from_secs(30)).expect("healthy");
    // Recovered by itself: same subnets, leases held.
    for (i, s) in subnets.iter().chain([&s4]).enumerate() {
        assert!(
            wait_until(Duration::from_secs(30), || lease_held(&c, i, s)),
            "node {} does not hold {s} after quorum came back:\n{}",
            i + 1,
            c.flanneld_log(i)
        );
        assert_eq!(&subnet(&c, i), s);
    }
    // The watch still works: node 4 leaves (stopped, its lease deleted), all others see it.
    c.stop_flanneld(3);
    c.etcdctl(&["del", &Cluster::lease_key(&s4)]).expect("del");
    for i in 0..3 {
        assert!(
            wait_until(Duration::from_secs(10), || !has_route(&c, i, &s4)),
            "node {} still routes to the departed {s4}:\n{}",
            i + 1,
            c.flanneld_log(i)
        );
    }

    // 4. An operator revokes node 1's etcd lease: re-acquired, same subnet, same process.
    let key = Cluster::lease_key(&subnets[0]);
    let old = c.etcd_key_lease(&key).expect("node 1 key");
    c.etcdctl(&["lease", "revoke", &format!("{old:x}")])
        .expect("revoke");
    assert!(
        wait_until(Duration::from_secs(10), || {
            c.etcd_key_lease(&key).is_some_and(|l| l != 0 && l != old)
        }),
        "node 1 did not re-acquire after its lease was revoked:\n{}",
        c.flanneld_log(0)
    );
    assert!(lease_held(&c, 0, &subnets[0]));
    all_alive(&mut c, &[0, 1, 2]);
    assert_full_mesh(&c, &pods, true);
}

#[test]
fn snapshot_restore_converges_and_a_foreign_client_cert_is_refused() {
    if !prerequisites("snapshot_restore_converges_and_a_foreign_client_cert_is_refused") {
        return;
    }
    let mut c = start(4, 3);
    let pods: Vec<Pod> = (0..3).map(|i| c.add_pod(i, "p").expect("ADD")).collect();
    let subnets: Vec<String> = (0..3).map(|i| subnet(&c, i)).collect();
    let synthetic = |ip: &str, mac: &str| {
        serde_json::json!({"PublicIP": ip, "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": mac}})
        .to_string()
    };
    // A peer lease that the snapshot will hold, and then one that it will not.
    let (kept, gone) = ("10.244.250.0/24", "10.244.251.0/24");
    c.etcdctl(&[
        "put",
        &Cluster::lease_key(kept),
        &synthetic("198.18.0.250", "0a:00:00:00:02:50"),
    ])
    .expect("put kept");
    for i in 0..3 {
        assert!(wait_until(Duration::from_secs(10), || has_route(
            &c, i, kept
        )));
    }
    let snapshot = c.workdir().join("etcd.snapshot");
    c.tls_etcd()
        .unwrap()
        .snapshot_save(&snapshot)
        .expect("snapshot");

    // After the snapshot: `kept` deleted, `gone` added, node 2's lease revoked (it
    // re-acquires under a lease ID the snapshot does not know).
    c.etcdctl(&["del", &Cluster::lease_key(kept)]).expect("del");
    c.etcdctl(&[
        "put",
        &Cluster::lease_key(gone),
        &synthetic("198.18.0.251", "0a:00:00:00:02:51"),
    ])
    .expect("put gone");
    let key2 = Cluster::lease_key(&subnets[1]);
    let old2 = c.etcd_key_lease(&key2).expect("node 2 key");
    c.etcdctl(&["lease", "revoke", &format!("{old2:x}")])
        .expect("revoke");
    assert!(wait_until(Duration::from_secs(10), || {
        c.etcd_key_lease(&key2).is_some_and(|l| l != 0 && l != old2)
    }));
    for i in 0..3 {
        assert!(wait_until(Duration::from_secs(10), || {
            has_route(&c, i, gone) && !has_route(&c, i, kept)
        }));
    }

    // Disaster recovery from the snapshot: every node converges on the restored truth.
    c.tls_etcd()
        .unwrap()
        .restore_from(&snapshot)
        .expect("restore");
    for i in 0..3 {
        assert!(
            wait_until(Duration::from_secs(30), || {
                has_route(&c, i, kept) && !has_route(&c, i, gone)
            }),
            "node {} did not converge on the restored leases:\n{}",
            i + 1,
            c.flanneld_log(i)
        );
        assert!(
            c.flanneld_log(i).contains("re-listing"),
            "node {} never re-listed:\n{}",
            i + 1,
            c.flanneld_log(i)
        );
    }
    for (i, s) in subnets.iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(30), || lease_held(&c, i, s)),
            "node {} does not hold {s} after the restore:\n{}",
            i + 1,
            c.flanneld_log(i)
        );
        assert_eq!(&subnet(&c, i), s);
    }
    all_alive(&mut c, &[0, 1, 2]);
    assert_full_mesh(&c, &pods, false);

    // A client certificate from another CA: refused clearly, no subnet.env, retried.
    let (rogue, rogue_cert, good_cert) = {
        let etcd = c.tls_etcd().unwrap();
        etcd.pki().ca("rogue-ca").expect("rogue ca");
        let cert = etcd
            .pki()
            .leaf("rogue-ca", "rogue-client", &[], 2)
            .expect("rogue cert");
        (etcd.flanneld_args_with(&cert), cert, etcd.client().clone())
    };
    c.start_flanneld_etcd(3, &rogue, &[]).expect("start node 4");
    let refused = "rejected the client certificate --etcd-certfile";
    assert!(
        wait_until(Duration::from_secs(20), || {
            c.flanneld_log(3).matches(refused).count() >= 2
        }),
        "no repeated clear refusal in node 4's log:\n{}",
        c.flanneld_log(3)
    );
    assert!(!c.nodes[3].subnet_file().exists());
    all_alive(&mut c, &[3]);
    let line = c
        .flanneld_log(3)
        .lines()
        .find(|l| l.contains(refused))
        .unwrap_or_default()
        .to_string();
    eprintln!("the operator sees: {line}");

    // The operator installs a certificate of the right CA at the same paths: picked up
    // without a restart.
    std::fs::copy(&good_cert.cert, &rogue_cert.cert).expect("replace cert");
    std::fs::copy(&good_cert.key, &rogue_cert.key).expect("replace key");
    c.wait_subnet_env(3, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("fixed certificate not picked up: {e}"));
    all_alive(&mut c, &[3]);
}
