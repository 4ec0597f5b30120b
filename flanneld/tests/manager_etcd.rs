//! `SubnetManager` over a real etcd (Debian's etcd-server 3.4): create races, reservations,
//! prompt re-acquire of a deleted key, keep-alive with a short TTL, watch recovery after a
//! compaction and after an etcd restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flannel_testkit::etcd::EtcdServer;
use flanneld::network_config::NetworkConfig;
use flanneld::subnet::{
    CreateOutcome, EtcdConfig, EtcdLeaseStore, HookedStore, KeepAliveOutcome, LeaseStore,
    ManagerConfig, OwnLeaseEvent, StoreCall, SubnetManager, WatchUpdate,
};
use ipam::lease::{Lease, LeaseAttrs, LeaseEvent, LeaseWatcher};
use ipnetwork::Ipv4Network;
use serde_json::json;
use tokio::sync::{mpsc, watch};

const NET22: &str = r#"{"Network":"10.244.0.0/22","Backend":{"Type":"vxlan"}}"#;
const NET16: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn attrs(ip: &str, mac: &str) -> LeaseAttrs {
    let mut a = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
    a.backend_data = Some(json!({"VNI": 1, "VtepMAC": mac}).into());
    a
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn cfg(ttl_secs: u64, margin_secs: u64) -> ManagerConfig {
    ManagerConfig {
        ttl: Duration::from_secs(ttl_secs),
        renew_margin: Duration::from_secs(margin_secs),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ManagerConfig::default()
    }
}

async fn store(server: &EtcdServer) -> Arc<EtcdLeaseStore> {
    let cfg = EtcdConfig {
        endpoints: vec![server.endpoint()],
        request_timeout: Duration::from_secs(3),
        ..EtcdConfig::default()
    };
    Arc::new(EtcdLeaseStore::connect(&cfg).await.expect("connect"))
}

async fn manager(
    server: &EtcdServer,
    json: &str,
    c: ManagerConfig,
) -> Arc<SubnetManager<EtcdLeaseStore>> {
    Arc::new(SubnetManager::new(
        store(server).await,
        NetworkConfig::parse(json).unwrap(),
        c,
    ))
}

async fn recv<T>(rx: &mut mpsc::Receiver<T>, within: Duration) -> T {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("message in time")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_racing_for_the_last_two_subnets_get_distinct_ones() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    // /22 → subnets 10.244.1.0, .2.0, .3.0. One is taken; two nodes race for the rest, both
    // preferring the same previous subnet so the first round is a guaranteed collision.
    for round in 0..5 {
        let a = manager(&server, NET22, cfg(60, 10)).await;
        let b = manager(&server, NET22, cfg(60, 10)).await;
        let other = a
            .acquire(
                &attrs("198.18.0.10", "0a:00:00:00:00:10"),
                Some((net("10.244.1.0/24"), None)),
            )
            .await
            .unwrap();
        let prev = Some((net("10.244.2.0/24"), None));
        let (aa, ab) = (
            attrs("198.18.0.1", "0a:00:00:00:00:01"),
            attrs("198.18.0.2", "0a:00:00:00:00:02"),
        );
        let (ra, rb) = tokio::join!(a.acquire(&aa, prev), b.acquire(&ab, prev));
        let (la, lb) = (ra.unwrap(), rb.unwrap());
        assert_ne!(la.subnet, lb.subnet, "round {round}");
        for l in [&la, &lb] {
            assert!(
                a.network()
                    .ipv4
                    .as_ref()
                    .unwrap()
                    .contains_subnet(&l.subnet)
            );
            assert_ne!(l.subnet, other.subnet);
        }
        // Full now: a third node is told so.
        let err = b
            .acquire(&attrs("198.18.0.3", "0a:00:00:00:00:03"), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no free /24 subnet"), "{err}");
        for (m, l) in [(&a, &other), (&a, &la), (&b, &lb)] {
            assert!(m.release(l).await.unwrap());
        }
        assert!(a.store().list().await.unwrap().leases.is_empty());
    }
}

#[tokio::test]
async fn reservation_is_honoured_and_never_given_a_lease() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let mut c = server.client().await.unwrap();
    // `etcdctl put` without --lease, as in flannel's Documentation/reservations.md.
    c.put(
        "/coreos.com/network/subnets/10.244.77.0-24",
        r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}}"#,
        None,
    )
    .await
    .unwrap();
    let m = manager(&server, NET16, cfg(60, 10)).await;
    let got = m
        .acquire(
            &attrs("198.18.0.1", "0a:00:00:00:00:02"),
            Some((net("10.244.5.0/24"), None)),
        )
        .await
        .unwrap();
    assert_eq!(got.subnet, net("10.244.77.0/24"));
    assert!(!got.leased);
    let raw = c
        .get("/coreos.com/network/subnets/10.244.77.0-24", None)
        .await
        .unwrap();
    assert_eq!(raw.kvs()[0].lease(), 0, "still a reservation");
    assert!(
        raw.kvs()[0]
            .value_str()
            .unwrap()
            .contains("0a:00:00:00:00:02")
    );
    assert!(
        c.leases().await.unwrap().leases().is_empty(),
        "no etcd lease was granted"
    );
    assert!(!m.release(&got).await.unwrap());
    assert_eq!(
        c.get("/coreos.com/network/subnets/10.244.77.0-24", None)
            .await
            .unwrap()
            .kvs()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_own_key_is_reacquired_within_a_second() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let m = manager(&server, NET16, cfg(60, 10)).await;
    let me = attrs("198.18.0.1", "0a:00:00:00:00:01");
    let lease = m.acquire(&me, None).await.unwrap();
    let (otx, mut orx) = mpsc::channel(8);
    let (wtx, mut wrx) = mpsc::channel(64);
    let (stop, shutdown) = watch::channel(false);
    let keeper = tokio::spawn({
        let (m, l, sd) = (m.clone(), lease.clone(), shutdown.clone());
        async move { m.run_lease_keeper(l, otx, sd).await }
    });
    let watcher = tokio::spawn({
        let m = m.clone();
        async move { m.run_watch(wtx, shutdown).await }
    });
    assert!(matches!(
        recv(&mut wrx, Duration::from_secs(5)).await,
        WatchUpdate::Snapshot(_)
    ));

    let mut c = server.client().await.unwrap();
    let key = format!("/coreos.com/network/subnets/{}", lease.key());
    let t0 = Instant::now();
    c.delete(key.as_str(), None).await.unwrap();
    assert!(matches!(
        recv(&mut orx, Duration::from_secs(1)).await,
        OwnLeaseEvent::Lost(_)
    ));
    let OwnLeaseEvent::Reacquired(again) = recv(&mut orx, Duration::from_secs(1)).await else {
        panic!("expected Reacquired");
    };
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(again.subnet, lease.subnet);
    let raw = c.get(key.as_str(), None).await.unwrap();
    assert_eq!(Some(raw.kvs()[0].lease()), again.lease_id);

    // Revoking our etcd lease (what expiry does): same.
    c.lease_revoke(again.lease_id.unwrap()).await.unwrap();
    assert!(matches!(
        recv(&mut orx, Duration::from_secs(1)).await,
        OwnLeaseEvent::Lost(_)
    ));
    let OwnLeaseEvent::Reacquired(third) = recv(&mut orx, Duration::from_secs(1)).await else {
        panic!("expected Reacquired");
    };
    assert_eq!(third.subnet, lease.subnet);

    stop.send(true).unwrap();
    let last = keeper.await.unwrap();
    watcher.await.unwrap();
    assert_eq!(last.lease_id, third.lease_id);
    assert!(m.release(&last).await.unwrap());
    assert!(c.get(key.as_str(), None).await.unwrap().kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_holds_a_short_ttl_lease() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let m = manager(&server, NET16, cfg(5, 2)).await;
    let lease = m
        .acquire(&attrs("198.18.0.1", "0a:00:00:00:00:01"), None)
        .await
        .unwrap();
    let (otx, mut orx) = mpsc::channel(8);
    let (stop, shutdown) = watch::channel(false);
    let keeper = tokio::spawn({
        let (m, l) = (m.clone(), lease.clone());
        async move { m.run_lease_keeper(l, otx, shutdown).await }
    });
    tokio::time::sleep(Duration::from_secs(12)).await;
    let cur = m
        .store()
        .get(&lease.id())
        .await
        .unwrap()
        .expect("key still exists after 12 s");
    assert_eq!(cur.lease_id, lease.lease_id, "kept alive, not re-created");
    assert!(orx.try_recv().is_err(), "no loss was reported");
    stop.send(true).unwrap();
    let last = keeper.await.unwrap();
    // Without the keeper the 5 s lease runs out.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(m.store().get(&lease.id()).await.unwrap().is_none());
    assert_eq!(
        m.store().keep_alive(last.lease_id.unwrap()).await.unwrap(),
        KeepAliveOutcome::Lost
    );
}

/// Forwards to etcd; right before the first `watch`, another node writes a lease and the
/// store is compacted past the watch's start, so etcd answers that watch with a compaction.
fn compact_before_watch(
    inner: Arc<EtcdLeaseStore>,
    client: etcd_client::Client,
) -> HookedStore<EtcdLeaseStore> {
    let armed = AtomicBool::new(true);
    HookedStore::new(inner).before(move |call| {
        let StoreCall::Watch(from) = call else {
            return None;
        };
        if !armed.swap(false, Ordering::SeqCst) {
            return None;
        }
        let mut c = client.clone();
        Some(Box::pin(async move {
            let peer = attrs("198.18.0.7", "0a:00:00:00:00:07");
            // Two writes, so the compaction point lies beyond `from` (etcd keeps the
            // compaction revision itself: a watch from exactly there still works).
            c.put(
                "/coreos.com/network/subnets/10.244.7.0-24",
                peer.to_json(),
                None,
            )
            .await
            .expect("put");
            let put = c.put("unrelated-key", "x", None).await.expect("put");
            let head = put.header().map(|h| h.revision()).unwrap_or(0);
            assert!(head > from);
            c.compact(head, None).await.expect("compact");
            Ok(())
        }))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_recovers_from_compaction_with_a_fresh_snapshot() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let inner = store(&server).await;
    let st = Arc::new(compact_before_watch(
        inner.clone(),
        server.client().await.unwrap(),
    ));
    let m = Arc::new(SubnetManager::new(
        st,
        NetworkConfig::parse(NET16).unwrap(),
        cfg(60, 10),
    ));
    let own = m
        .acquire(&attrs("198.18.0.1", "0a:00:00:00:00:01"), None)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let m = m.clone();
        async move { m.run_watch(tx, shutdown).await }
    });
    let mut w = LeaseWatcher::new(Some(own.id()));
    let WatchUpdate::Snapshot(first) = recv(&mut rx, Duration::from_secs(5)).await else {
        panic!()
    };
    assert!(w.reset(&first).is_empty(), "only our own lease at first");
    // The peer written between list and watch is only visible through the relist.
    let WatchUpdate::Snapshot(second) = recv(&mut rx, Duration::from_secs(5)).await else {
        panic!("expected a second snapshot after the compaction")
    };
    let added = w.reset(&second);
    assert!(
        matches!(&added[..], [LeaseEvent::Added(l)] if l.subnet == net("10.244.7.0/24")),
        "{added:?}"
    );
    // And the watch after the relist delivers events again.
    inner
        .create_if_absent(
            &Lease::new(
                net("10.244.8.0/24"),
                None,
                attrs("198.18.0.8", "0a:00:00:00:00:08"),
            ),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let WatchUpdate::Events(ev) = recv(&mut rx, Duration::from_secs(5)).await else {
        panic!()
    };
    assert!(
        matches!(&w.update(&ev)[..], [LeaseEvent::Added(l)] if l.subnet == net("10.244.8.0/24"))
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_keeper_survive_an_etcd_restart() {
    let Some(mut server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let m = manager(&server, NET16, cfg(30, 25)).await; // renew every 5 s
    let own = m
        .acquire(&attrs("198.18.0.1", "0a:00:00:00:00:01"), None)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (otx, mut orx) = mpsc::channel(8);
    let (stop, shutdown) = watch::channel(false);
    let watcher = tokio::spawn({
        let (m, sd) = (m.clone(), shutdown.clone());
        async move { m.run_watch(tx, sd).await }
    });
    let keeper = tokio::spawn({
        let (m, l) = (m.clone(), own.clone());
        async move { m.run_lease_keeper(l, otx, shutdown).await }
    });
    let mut w = LeaseWatcher::new(Some(own.id()));
    let WatchUpdate::Snapshot(s) = recv(&mut rx, Duration::from_secs(5)).await else {
        panic!()
    };
    w.reset(&s);

    server.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server
        .restart()
        .await
        .expect("etcd restarts on the same data dir");

    // A peer joins after the restart: the watcher must see it, whether through re-listing
    // or through the re-established watch.
    let peer = Lease::new(
        net("10.244.9.0/24"),
        None,
        attrs("198.18.0.9", "0a:00:00:00:00:09"),
    );
    let other = store(&server).await;
    assert!(matches!(
        other
            .create_if_absent(&peer, Duration::from_secs(60))
            .await
            .unwrap(),
        CreateOutcome::Created(_)
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        let out = match recv(&mut rx, Duration::from_secs(20)).await {
            WatchUpdate::Snapshot(s) => w.reset(&s),
            WatchUpdate::Events(e) => w.update(&e),
        };
        seen = out
            .iter()
            .any(|e| matches!(e, LeaseEvent::Added(l) if l.subnet == peer.subnet));
    }
    assert!(
        seen,
        "the watcher never saw the peer added after the restart"
    );
    // Our key survived (etcd keeps leases across a restart) and the keeper did not re-acquire.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(orx.try_recv().is_err(), "no loss across the restart");
    let cur = m
        .store()
        .get(&own.id())
        .await
        .unwrap()
        .expect("own key exists");
    assert_eq!(cur.lease_id, own.lease_id);
    stop.send(true).unwrap();
    watcher.await.unwrap();
    keeper.await.unwrap();
}

/// Dual stack over the real etcd: another node takes the IPv6 half we picked, under another
/// key (another IPv4 subnet), between our listing and our create. The key compare alone
/// would let both leases exist; the create's revision guard (a `mod_revision` compare over
/// the whole `subnets/` prefix) makes ours lose the round, and the next round picks a free
/// IPv6 subnet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_create_guard_holds_on_etcd() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
    let inner = store(&server).await;
    let thief_store = inner.clone();
    let stolen = Arc::new(AtomicBool::new(false));
    let once = stolen.clone();
    let hooked = HookedStore::new(inner.clone()).before(move |call| {
        let StoreCall::CreateIfAbsent(lease, ttl) = call else {
            return None;
        };
        if once.swap(true, Ordering::SeqCst) {
            return None;
        }
        let other_v4 = ipam::net::next_subnet(lease.subnet).expect("next subnet");
        let mut a = attrs("198.18.9.9", "0a:00:00:00:09:09");
        a.public_ipv6 = Some("fd00:198:18::99".parse().unwrap());
        let thief = Lease::new(other_v4, lease.ipv6_subnet, a);
        let st = thief_store.clone();
        Some(Box::pin(async move {
            match st.create_if_absent(&thief, ttl).await {
                Ok(CreateOutcome::Created(_)) => Ok(()),
                other => panic!("thief: {other:?}"),
            }
        }))
    });
    let hooked = Arc::new(hooked);
    let m = SubnetManager::new(
        hooked.clone(),
        NetworkConfig::parse(DUAL).unwrap(),
        cfg(60, 10),
    );
    let mut me = attrs("198.18.0.1", "0a:00:00:00:00:01");
    me.public_ipv6 = Some("fd00:198:18::1".parse().unwrap());
    let got = m.acquire(&me, None).await.expect("acquire");
    assert!(stolen.load(Ordering::SeqCst));
    assert_eq!(hooked.counts().create_if_absent, 2, "lost one round");
    let leases = inner.list().await.unwrap().leases;
    assert_eq!(leases.len(), 2);
    let v6: std::collections::HashSet<_> = leases.iter().map(|l| l.ipv6_subnet).collect();
    let v4: std::collections::HashSet<_> = leases.iter().map(|l| l.subnet).collect();
    assert_eq!((v4.len(), v6.len()), (2, 2), "{leases:#?}");
    assert!(leases.iter().any(|l| l.id() == got.id()));
}
