//! `EtcdLeaseStore` with several `--etcd-endpoints` of which some are down, refuse, or never
//! answer, against real etcd servers on loopback: the store stays with a member that
//! answers, passes a failed one over for the next endpoint at once, and does not go back to
//! it while the one in use answers.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use flannel_testkit::etcd::{EtcdCommand, EtcdServer, etcd_binary, free_port};
use flanneld::subnet::{
    CreateOutcome, EtcdConfig, EtcdLeaseStore, KeepAliveOutcome, LeaseStore, StoreError,
    UpdateOutcome, WatchBatch, WatchEvent,
};
use futures::StreamExt;
use ipam::lease::{Lease, LeaseAttrs};
use serde_json::json;

const TTL: Duration = Duration::from_secs(30);

fn lease(subnet: &str, ip: &str) -> Lease {
    let mut attrs = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
    attrs.backend_data = Some(json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"}).into());
    Lease::new(subnet.parse().unwrap(), None, attrs)
}

/// An endpoint where nothing listens: a port just bound and released (connection refused).
fn refusing_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port().expect("free port"))
}

async fn connect(endpoints: Vec<String>, request_timeout: Duration) -> EtcdLeaseStore {
    let cfg = EtcdConfig {
        endpoints,
        request_timeout,
        first_endpoint: Some(0),
        ..EtcdConfig::default()
    };
    EtcdLeaseStore::connect(&cfg).await.expect("connect")
}

fn errors(st: &EtcdLeaseStore) -> BTreeMap<&'static str, u64> {
    st.metrics().counts().errors
}

#[tokio::test]
async fn members_that_are_down_are_passed_over_and_not_asked_again() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let live = server.endpoint();
    let st = connect(
        vec![refusing_endpoint(), live.clone(), refusing_endpoint()],
        Duration::from_secs(5),
    )
    .await;

    // Every kind of request succeeds although the first member is down.
    for _ in 0..20 {
        assert_eq!(st.network_config().await.expect("get config"), None);
        st.list().await.expect("list");
        st.position().await.expect("position");
    }
    let mut watch = st.watch(1).await.expect("watch");
    let mine = match st
        .create_if_absent(&lease("10.244.1.0/24", "198.18.0.1"), TTL)
        .await
        .expect("create")
    {
        CreateOutcome::Created(l) => l,
        other => panic!("not created: {other:?}"),
    };
    let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
        .expect("no watch error");
    assert!(
        matches!(&batch, WatchBatch::Events { events, .. }
            if matches!(&events[..], [WatchEvent::Put(l)] if l.subnet == mine.subnet)),
        "{batch:?}"
    );
    for _ in 0..3 {
        assert!(matches!(
            st.keep_alive(mine.lease_id.unwrap())
                .await
                .expect("keep-alive"),
            KeepAliveOutcome::Alive { .. }
        ));
    }
    let UpdateOutcome::Updated(mine) = st.update(&mine, TTL).await.expect("update") else {
        panic!("update conflicted")
    };
    assert!(st.delete(&mine).await.expect("delete"));

    // All of that cost one failed attempt: the first request found the first member down
    // and went on to the second, where everything after it stayed.
    assert_eq!(errors(&st), BTreeMap::from([("unreachable", 1)]));
    assert_eq!(st.endpoint_in_use(), live);
    // What /metrics says about it.
    assert_eq!(st.metrics().counts().member_moves, 1);
    let text = st.metrics().render();
    assert!(
        text.contains(&format!(
            "flannel_etcd_member_in_use{{endpoint=\"{live}\"}} 1"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_member_that_dies_is_left_for_the_next_and_rejoined_after_the_last() {
    // Two single-member clusters stand in for two members; each holds its own config value,
    // so every answer says which member gave it.
    let Some(mut a) = EtcdServer::start_or_skip().await else {
        return;
    };
    let Some(mut b) = EtcdServer::start_or_skip().await else {
        return;
    };
    for (server, name) in [(&a, "a"), (&b, "b")] {
        let mut c = server.client().await.unwrap();
        c.put("/coreos.com/network/config", name, None)
            .await
            .unwrap();
    }
    let st = connect(vec![a.endpoint(), b.endpoint()], Duration::from_secs(5)).await;
    let config = || async { st.network_config().await.expect("get config").unwrap() };

    for _ in 0..5 {
        assert_eq!(config().await, "a");
    }
    a.stop();
    // The request that finds `a` dead is answered by `b`, and so is every later one, also
    // after `a` is back: the store stays with the member that answers.
    assert_eq!(config().await, "b");
    a.restart().await.expect("restart a");
    for _ in 0..5 {
        assert_eq!(config().await, "b");
    }
    // `b` dies: back to `a`, on a fresh connection (its old one died with it).
    b.stop();
    assert_eq!(config().await, "a");
    assert_eq!(st.endpoint_in_use(), a.endpoint());
    let failures: u64 = errors(&st).values().sum();
    assert_eq!(
        failures,
        2,
        "one failed attempt per death: {:?}",
        errors(&st)
    );
}

#[tokio::test]
async fn a_member_that_never_answers_costs_one_timeout() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    // Accepts connections (the kernel completes them into the backlog) and never reads.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let timeout = Duration::from_secs(1);
    let st = connect(vec![silent_endpoint, server.endpoint()], timeout).await;

    let started = Instant::now();
    match st.network_config().await {
        Err(StoreError::Timeout { after, .. }) => assert_eq!(after, timeout),
        other => panic!("expected a timeout from the silent member, got {other:?}"),
    }
    assert!(started.elapsed() < timeout + Duration::from_millis(500));
    for _ in 0..10 {
        assert_eq!(st.network_config().await.expect("get config"), None);
    }
    assert_eq!(errors(&st), BTreeMap::from([("timeout", 1)]));
    assert_eq!(st.endpoint_in_use(), server.endpoint());
}

/// One member of a two-member cluster on loopback, killed (by its PID, our child) on drop.
struct Member {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two members, each the other's only peer, with a short election timeout (300 ms) so that
/// losing the leader is noticed quickly. `None` when etcd is not installed (outside CI).
async fn two_members(dir: &std::path::Path) -> Option<(Member, Member)> {
    if etcd_binary().is_none() {
        flannel_testkit::skip_or_panic("etcd not installed");
        return None;
    }
    let port = || free_port().expect("free port");
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (port(), port())).collect();
    let cluster = format!(
        "a=http://127.0.0.1:{},b=http://127.0.0.1:{}",
        ports[0].1, ports[1].1
    );
    let mut members = Vec::new();
    for (name, (client, peer)) in ["a", "b"].into_iter().zip(ports.iter().copied()) {
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = EtcdCommand::new(name, dir.join(name))
            .client_urls(&endpoint, &endpoint)
            .peer_url(&format!("http://127.0.0.1:{peer}"))
            .initial_cluster(&cluster)
            .token(&format!("flannel-rs-two-{}", ports[0].0))
            .flag("--heartbeat-interval", "50")
            .flag("--election-timeout", "300")
            .spawn(&dir.join(format!("{name}.log")))
            .expect("spawn etcd");
        members.push(Member { child, endpoint });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for m in &members {
        loop {
            let healthy = async {
                let mut c = etcd_client::Client::connect([m.endpoint.as_str()], None).await?;
                c.put("health", "ok", None).await
            };
            match tokio::time::timeout(Duration::from_secs(2), healthy).await {
                Ok(Ok(_)) => break,
                _ if Instant::now() > deadline => panic!(
                    "two-member etcd not healthy:\n{}",
                    std::fs::read_to_string(dir.join("a.log")).unwrap_or_default()
                ),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let b = members.pop().unwrap();
    let a = members.pop().unwrap();
    Some((a, b))
}

#[tokio::test]
async fn a_watch_on_a_member_that_lost_its_leader_ends_instead_of_going_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let Some((a, b)) = two_members(dir.path()).await else {
        return;
    };
    let (a_endpoint, b_endpoint) = (a.endpoint.clone(), b.endpoint.clone());
    let st = connect(
        vec![a_endpoint.clone(), b_endpoint.clone()],
        Duration::from_secs(5),
    )
    .await;
    let from = st.position().await.expect("position").revision + 1;
    let mut watch = st.watch(from).await.expect("watch");
    st.create_if_absent(&lease("10.244.1.0/24", "198.18.0.1"), TTL)
        .await
        .expect("create");
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("event in time");
    assert!(
        matches!(first, Some(Ok(WatchBatch::Events { .. }))),
        "{first:?}"
    );
    assert_eq!(st.endpoint_in_use(), a_endpoint);

    // Without `b`, `a` has no leader. It stays up and would keep a watch open and silent —
    // what a member cut off from the majority does while the others accept writes. The
    // watch asked for a leader, so etcd ends it, and the store leaves `a`.
    drop(b);
    let ended = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the watch on a leaderless member ended within 15 s");
    match ended {
        Some(Err(e)) => assert!(e.to_string().contains("no leader"), "{e}"),
        other => panic!("expected the watch to end with 'no leader', got {other:?}"),
    }
    assert_eq!(st.endpoint_in_use(), b_endpoint);
    drop(a);
}

#[tokio::test]
async fn nodes_start_at_different_members() {
    // Connecting is lazy without a user name: nothing is sent to these addresses.
    let endpoints: Vec<String> = (1..=3)
        .map(|i| format!("http://198.18.0.{i}:2379"))
        .collect();
    let mut first = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let cfg = EtcdConfig {
            endpoints: endpoints.clone(),
            ..EtcdConfig::default()
        };
        let st = EtcdLeaseStore::connect(&cfg).await.expect("lazy connect");
        first.insert(st.endpoint_in_use());
    }
    // Each of 60 stores picks one of 3 at random: all three show up but with p ≈ 1e-10.
    assert_eq!(first.len(), 3, "{first:?}");
}
