//! The manager's unit tests, over the in-memory store. They run on paused tokio time: a
//! sleep or a timeout advances the clock at once when every task waits, so the keeper's
//! timers and the loops' backoff cost no real time and a test that waits for the wrong
//! thing fails on its (virtual) timeout instead of racing a loaded machine.

use ipam::lease::{LeaseAttrs, LeaseWatcher};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::subnet::{
    CreateOutcome, HookedStore, Listing, MemoryLeaseStore, StoreCall, UpdateOutcome,
};

const NET16: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn attrs(ip: &str, mac: &str) -> LeaseAttrs {
    let mut a = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
    a.backend_data = Some(json!({"VNI": 1, "VtepMAC": mac}).into());
    a
}

fn fast_cfg() -> ManagerConfig {
    ManagerConfig {
        ttl: Duration::from_secs(60),
        renew_margin: Duration::from_secs(10),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        verify_interval: Duration::from_secs(30),
        ..ManagerConfig::default()
    }
}

fn manager<S: LeaseStore>(store: Arc<S>, json: &str) -> SubnetManager<S> {
    SubnetManager::new(store, NetworkConfig::parse(json).unwrap(), fast_cfg())
}

async fn leased(st: &MemoryLeaseStore, subnet: &str, ip: &str) -> Lease {
    let l = Lease::new(net(subnet), None, attrs(ip, "0a:00:00:00:00:01"));
    match st
        .create_if_absent(&l, Duration::from_secs(600))
        .await
        .unwrap()
    {
        CreateOutcome::Created(l) => l,
        other => panic!("{other:?}"),
    }
}

async fn recv<T>(rx: &mut mpsc::Receiver<T>, within: Duration) -> T {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("message in time")
        .expect("channel open")
}

#[test]
fn renew_delay_math() {
    let h = Duration::from_secs(3600);
    assert_eq!(renew_delay(24 * h, h), 23 * h);
    assert_eq!(
        renew_delay(Duration::from_secs(5), Duration::from_secs(2)),
        Duration::from_secs(3)
    );
    // Margin >= TTL: every third of the TTL.
    assert_eq!(
        renew_delay(Duration::from_secs(6), Duration::from_secs(6)),
        Duration::from_secs(2)
    );
    assert_eq!(
        renew_delay(Duration::from_secs(3), h),
        Duration::from_secs(1)
    );
}

/// The acquire decision alone: no store, no runtime.
#[test]
fn plan_is_a_pure_decision_over_the_listing() {
    use super::acquire::{Plan, plan};
    let network = NetworkConfig::parse(NET16).unwrap();
    let lease = |subnet: &str, ip: &str, leased: bool| {
        let mut l = Lease::new(net(subnet), None, attrs(ip, "0a:00:00:00:00:01"));
        l.leased = leased;
        l.lease_id = leased.then_some(7);
        l
    };
    let listing = |leases: Vec<Lease>| Listing {
        leases,
        unreadable: vec![(net("10.244.8.0/24"), None)],
        revision: 1,
    };
    let me = attrs("198.18.0.1", "0a:00:00:00:00:01");
    let mut first = |_n: usize| 0;

    // A reservation of ours with our attrs is taken as is, before a leased key of ours.
    let reserved = lease("10.244.3.0/24", "198.18.0.1", false);
    let ours = lease("10.244.4.0/24", "198.18.0.1", true);
    let l = listing(vec![ours.clone(), reserved.clone()]);
    assert_eq!(
        plan(&network, &l, &me, None, &mut first).unwrap(),
        Plan::Take(reserved)
    );
    // Our leased key gets our new attrs; one outside the network is deleted first.
    let new = attrs("198.18.0.1", "0a:00:00:00:00:02");
    let l = listing(vec![ours.clone()]);
    let Plan::Update(want) = plan(&network, &l, &new, None, &mut first).unwrap() else {
        panic!("expected an update")
    };
    assert_eq!((want.subnet, &want.attrs), (ours.subnet, &new));
    let stale = lease("10.245.4.0/24", "198.18.0.1", true);
    let l = listing(vec![stale.clone()]);
    assert_eq!(
        plan(&network, &l, &me, None, &mut first).unwrap(),
        Plan::DeleteStale(stale)
    );
    // Else the free previous subnet; a taken (here: unreadable) one falls back to the pool.
    let other = lease("10.244.5.0/24", "198.18.0.2", true);
    let l = listing(vec![other]);
    let mut created =
        |p: Option<&str>| match plan(&network, &l, &me, p.map(|p| (net(p), None)), &mut first) {
            Ok(Plan::Create(c)) => c.subnet,
            other => panic!("{other:?}"),
        };
    assert_eq!(created(Some("10.244.9.0/24")), net("10.244.9.0/24"));
    assert_eq!(created(Some("10.244.8.0/24")), net("10.244.1.0/24"));
    assert_eq!(created(None), net("10.244.1.0/24"));
}

/// IPv6-only (flannel's `0.0.0.0-0&<v6>` keys, `PublicIP` `0.0.0.0`): our lease is found by
/// `PublicIPv6` (flannel matches `PublicIP` and so hands every node the first node's lease),
/// and the previous IPv6 subnet is reused when free.
#[test]
fn ipv6_only_plan_matches_by_public_ipv6_and_reuses_the_previous_v6_subnet() {
    use super::acquire::{Plan, plan};
    use ipam::lease::NO_IPV4_SUBNET;
    let network = NetworkConfig::parse(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let v6 = |s: &str| -> ipnetwork::Ipv6Network { s.parse().unwrap() };
    let attrs6 = |ip6: &str| {
        let mut a = LeaseAttrs::new(std::net::Ipv4Addr::UNSPECIFIED, "vxlan");
        a.public_ipv6 = Some(ip6.parse().unwrap());
        a.backend_v6_data = Some(json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:06"}).into());
        a
    };
    let first_node = {
        let mut l = Lease::new(
            NO_IPV4_SUBNET,
            Some(v6("fd00:10:244:1::/64")),
            attrs6("fd00:198:18::1"),
        );
        l.leased = true;
        l
    };
    let l = Listing {
        leases: vec![first_node.clone()],
        unreadable: vec![],
        revision: 1,
    };
    let mut first = |_n: usize| 0;

    // A second node (same PublicIP 0.0.0.0, another PublicIPv6) gets a new subnet.
    let me = attrs6("fd00:198:18::2");
    let Plan::Create(mine) = plan(&network, &l, &me, None, &mut first).unwrap() else {
        panic!("a second node must not take the first node's lease")
    };
    assert_eq!(mine.subnet, NO_IPV4_SUBNET);
    assert_eq!(mine.ipv6_subnet, Some(v6("fd00:10:244:2::/64")));
    assert_eq!(mine.key(), "0.0.0.0-0&fd00:10:244:2::-64");

    // The previous IPv6 subnet from subnet.env, when free; a taken one falls back.
    let prev = Some((NO_IPV4_SUBNET, Some(v6("fd00:10:244:9::/64"))));
    let Plan::Create(again) = plan(&network, &l, &me, prev, &mut first).unwrap() else {
        panic!("expected a create")
    };
    assert_eq!(again.ipv6_subnet, Some(v6("fd00:10:244:9::/64")));
    let taken = Some((NO_IPV4_SUBNET, Some(v6("fd00:10:244:1::/64"))));
    let Plan::Create(moved) = plan(&network, &l, &me, taken, &mut first).unwrap() else {
        panic!("expected a create")
    };
    assert_eq!(moved.ipv6_subnet, Some(v6("fd00:10:244:2::/64")));

    // The first node finds its own key again by its PublicIPv6.
    let back = plan(&network, &l, &first_node.attrs, None, &mut first).unwrap();
    assert!(
        matches!(&back, Plan::Update(u) if u.id() == first_node.id()),
        "{back:?}"
    );
}

/// Dual stack: one lease carries both subnets; IPv6-only leases left by an earlier config
/// (IPv4 half `0.0.0.0/0`) occupy no IPv4 subnet.
#[test]
fn dual_stack_plan_takes_one_subnet_per_family() {
    use super::acquire::{Plan, plan};
    use ipam::lease::NO_IPV4_SUBNET;
    let network = NetworkConfig::parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let leftover = Lease::new(
        NO_IPV4_SUBNET,
        Some("fd00:10:244:1::/64".parse().unwrap()),
        LeaseAttrs::new(std::net::Ipv4Addr::UNSPECIFIED, "vxlan"),
    );
    let l = Listing {
        leases: vec![leftover],
        unreadable: vec![],
        revision: 1,
    };
    let mut me = attrs("198.18.0.1", "0a:00:00:00:00:01");
    me.public_ipv6 = Some("fd00:198:18::1".parse().unwrap());
    let Plan::Create(c) = plan(&network, &l, &me, None, &mut |_| 0).unwrap() else {
        panic!("expected a create")
    };
    assert_eq!(c.key(), "10.244.1.0-24&fd00:10:244:2::-64");
}

#[tokio::test(start_paused = true)]
async fn acquire_order_own_ip_then_previous_then_random() {
    let st = Arc::new(MemoryLeaseStore::new());
    let other = leased(&st, "10.244.5.0/24", "198.18.0.2").await;
    let old = leased(&st, "10.244.7.0/24", "198.18.0.1").await;
    let m = manager(st.clone(), NET16);
    let me = attrs("198.18.0.1", "0a:00:00:00:00:99");

    // (a) our public IP wins over `previous`; the attrs are refreshed under a new lease.
    let got = m
        .acquire(&me, Some((net("10.244.9.0/24"), None)))
        .await
        .unwrap();
    assert_eq!(got.subnet, old.subnet);
    assert_eq!(got.attrs, me);
    assert!(got.leased);
    assert_ne!(got.lease_id, old.lease_id);
    assert_eq!(st.get(&got.id()).await.unwrap().unwrap().attrs, me);
    assert_eq!(m.current_lease(), Some(got.clone()));

    // (b) another node: its free previous subnet.
    let you = attrs("198.18.0.3", "0a:00:00:00:00:03");
    let got = m
        .acquire(&you, Some((net("10.244.9.0/24"), None)))
        .await
        .unwrap();
    assert_eq!(got.subnet, net("10.244.9.0/24"));

    // (c) previous taken, outside [SubnetMin, SubnetMax] or misaligned: a random free one.
    for (i, prev) in [
        "10.244.5.0/24",
        "10.244.0.0/24",
        "10.245.3.0/24",
        "10.244.8.0/23",
    ]
    .into_iter()
    .enumerate()
    {
        let ip = format!("198.18.1.{}", i + 1);
        let got = m
            .acquire(&attrs(&ip, "0a:00:00:00:01:01"), Some((net(prev), None)))
            .await
            .unwrap();
        assert!(
            m.network()
                .ipv4
                .as_ref()
                .unwrap()
                .contains_subnet(&got.subnet),
            "{got:?}"
        );
        assert_ne!(got.subnet, net(prev));
        assert_ne!(got.subnet, other.subnet);
    }
    // Random picks spread: 20 seeds over an empty /16 give several distinct subnets.
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let st = Arc::new(MemoryLeaseStore::new());
        let m = manager(st, NET16).with_rng_seed(seed);
        seen.insert(m.acquire(&me, None).await.unwrap().subnet);
    }
    assert!(seen.len() > 5, "random picks did not spread: {seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.ip() >= "10.244.1.0".parse::<Ipv4Addr>().unwrap())
    );
}

#[tokio::test(start_paused = true)]
async fn reservation_is_honoured_and_never_gets_a_ttl() {
    let inner = Arc::new(MemoryLeaseStore::new());
    // Reserved outside SubnetMin..SubnetMax on purpose (min is 10.244.10.0 here).
    let net_json =
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","Backend":{"Type":"vxlan"}}"#;
    let reserved = Lease::new(
        net("10.244.3.0/24"),
        None,
        attrs("198.18.0.1", "0a:00:00:00:00:01"),
    );
    inner.put_reservation(&reserved);
    let st = Arc::new(HookedStore::new(inner.clone()));
    let m = manager(st.clone(), net_json);

    // Same attrs: taken as is, no write at all.
    let got = m
        .acquire(&reserved.attrs, Some((net("10.244.20.0/24"), None)))
        .await
        .unwrap();
    assert_eq!(got, reserved);
    assert_eq!(st.counts().update + st.counts().create_if_absent, 0);
    // New attrs (a new VTEP MAC): written, still without a lease.
    let me = attrs("198.18.0.1", "0a:00:00:00:00:02");
    let got = m.acquire(&me, None).await.unwrap();
    assert_eq!(got.subnet, reserved.subnet);
    assert!(!got.leased && got.lease_id.is_none());
    assert_eq!(inner.key_lease(&got.id()), Some(0));
    assert_eq!(inner.lease_count(), 0);
    assert_eq!(inner.get(&got.id()).await.unwrap().unwrap().attrs, me);

    // The keeper never calls keep_alive for it, and time does not expire it.
    st.reset();
    let (tx, _rx) = mpsc::channel(8);
    let (stop, shutdown) = watch::channel(false);
    let cfg = ManagerConfig {
        verify_interval: Duration::from_millis(50),
        ..fast_cfg()
    };
    let m = Arc::new(SubnetManager::new(
        st.clone(),
        NetworkConfig::parse(net_json).unwrap(),
        cfg,
    ));
    let keeper = tokio::spawn({
        let (m, got) = (m.clone(), got.clone());
        async move { m.run_lease_keeper(got, tx, shutdown).await }
    });
    inner.advance(Duration::from_secs(365 * 24 * 3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    let last = keeper.await.unwrap();
    assert_eq!(last, got);
    assert_eq!(st.counts().keep_alive, 0);
    assert!(st.counts().get >= 2, "the keeper verifies the reservation");
    assert_eq!(inner.key_lease(&got.id()), Some(0));
    // And release never deletes a reservation.
    assert!(!m.release(&got).await.unwrap());
    assert!(inner.get(&got.id()).await.unwrap().is_some());
}

/// A store where another "node" writes `thief(our lease)` right before our first `n` creates.
fn racing_with<S: LeaseStore + 'static>(
    inner: Arc<S>,
    n: usize,
    thief: impl Fn(&Lease) -> Lease + Send + Sync + 'static,
) -> HookedStore<S> {
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let thief_store = inner.clone();
    HookedStore::new(inner).before(move |call| {
        use std::sync::atomic::Ordering;
        let StoreCall::CreateIfAbsent(lease, ttl) = call else {
            return None;
        };
        if left.load(Ordering::SeqCst) == 0 {
            return None;
        }
        left.fetch_sub(1, Ordering::SeqCst);
        let stolen = thief(lease);
        let st = thief_store.clone();
        Some(Box::pin(async move {
            st.create_if_absent(&stolen, ttl).await.map(|_| ())
        }))
    })
}

/// A memory store where another "node" grabs the key right before our first `n` creates.
fn racing(inner: Arc<MemoryLeaseStore>, n: usize) -> HookedStore<MemoryLeaseStore> {
    racing_with(inner, n, |lease| {
        Lease::new(lease.subnet, None, attrs("198.18.9.9", "0a:00:00:00:09:09"))
    })
}

#[tokio::test(start_paused = true)]
async fn lost_race_relists_and_repicks() {
    let inner = Arc::new(MemoryLeaseStore::new());
    let st = Arc::new(racing(inner.clone(), 3));
    let m = manager(st.clone(), NET16);
    let me = attrs("198.18.0.1", "0a:00:00:00:00:01");
    let got = m
        .acquire(&me, Some((net("10.244.9.0/24"), None)))
        .await
        .unwrap();
    assert_ne!(got.subnet, net("10.244.9.0/24"), "previous was stolen");
    let c = st.counts();
    assert_eq!(
        (c.list, c.create_if_absent),
        (4, 4),
        "one list per round: {c:?}"
    );
    let listing = inner.list().await.unwrap();
    assert_eq!(listing.leases.len(), 4);
    assert_eq!(listing.leases.iter().filter(|l| l.attrs == me).count(), 1);

    // Losing every round is an error, not an exit or a hang.
    let m = manager(
        Arc::new(racing(Arc::new(MemoryLeaseStore::new()), 100)),
        NET16,
    );
    assert!(matches!(
        m.acquire(&me, None).await,
        Err(ManagerError::RaceLost { rounds: 10 })
    ));
}

const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// Dual stack: right before our first `n` creates, another node takes the IPv6 half we
/// picked under a different key (another IPv4 subnet) — keys differ, so only the revision
/// guard can see it. The thief's IPv4 subnets are 10.244.255.0/24, .254, … (never the one we
/// picked, never one it took before): taking the subnet after ours, as this test once did,
/// gave the thief the same IPv4 half twice whenever we picked the same subnet again after
/// losing the first round (about one run in 250).
fn racing_for_the_ipv6_half<S: LeaseStore + 'static>(inner: Arc<S>, n: usize) -> HookedStore<S> {
    let next_third_octet = std::sync::atomic::AtomicU8::new(255);
    racing_with(inner, n, move |lease| {
        let other_v4 = loop {
            let octet = next_third_octet.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            let candidate = net(&format!("10.244.{octet}.0/24"));
            if candidate != lease.subnet {
                break candidate;
            }
        };
        let mut a = attrs("198.18.9.9", "0a:00:00:00:09:09");
        a.public_ipv6 = Some("fd00:198:18::99".parse().unwrap());
        Lease::new(other_v4, lease.ipv6_subnet, a)
    })
}

/// No two dual-stack leases share a half: (IPv4 subnets, IPv6 subnets) all distinct.
pub(crate) fn assert_halves_distinct(leases: &[Lease]) {
    let v4: std::collections::HashSet<_> = leases.iter().map(|l| l.subnet).collect();
    let v6: std::collections::HashSet<_> = leases.iter().map(|l| l.ipv6_subnet).collect();
    assert_eq!(
        (v4.len(), v6.len()),
        (leases.len(), leases.len()),
        "{leases:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dual_stack_create_loses_to_a_node_that_took_either_half_under_another_key() {
    let inner = Arc::new(MemoryLeaseStore::new());
    let st = Arc::new(racing_for_the_ipv6_half(inner.clone(), 2));
    let m = manager(st.clone(), DUAL);
    let mut me = attrs("198.18.0.1", "0a:00:00:00:00:01");
    me.public_ipv6 = Some("fd00:198:18::1".parse().unwrap());
    let got = m.acquire(&me, None).await.unwrap();
    let c = st.counts();
    assert_eq!(
        (c.list, c.create_if_absent),
        (3, 3),
        "two lost rounds: {c:?}"
    );
    let listing = inner.list().await.unwrap();
    assert_eq!(listing.leases.len(), 3);
    assert_halves_distinct(&listing.leases);
    assert!(listing.leases.iter().any(|l| l.id() == got.id()));
}

#[tokio::test(start_paused = true)]
async fn exhausted_pool_is_a_clear_error_and_unreadable_keys_count_as_taken() {
    let st = Arc::new(MemoryLeaseStore::new());
    // /22 network: subnets .1, .2, .3 are handed out (.0 is skipped).
    let json = r#"{"Network":"10.244.0.0/22","Backend":{"Type":"vxlan"}}"#;
    leased(&st, "10.244.1.0/24", "198.18.0.1").await;
    leased(&st, "10.244.2.0/24", "198.18.0.2").await;
    st.put_raw("10.244.3.0-24", b"{garbage");
    let m = manager(st.clone(), json);
    let err = m
        .acquire(
            &attrs("198.18.0.4", "0a:00:00:00:00:04"),
            Some((net("10.244.3.0/24"), None)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::Exhausted { taken: 3, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("10.244.0.0/22") && msg.contains("10.244.3.0"),
        "{msg}"
    );
    // Free one: the next acquire succeeds.
    assert!(st.delete_key(&(net("10.244.2.0/24"), None)));
    let got = m
        .acquire(&attrs("198.18.0.4", "0a:00:00:00:00:04"), None)
        .await
        .unwrap();
    assert_eq!(got.subnet, net("10.244.2.0/24"));
}

#[tokio::test(start_paused = true)]
async fn one_range_read_per_acquire_among_5000_leases() {
    let inner = Arc::new(MemoryLeaseStore::new());
    let json = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
    for i in 0..5000u32 {
        let subnet = Ipv4Network::new(Ipv4Addr::from(0x0A00_0000 + ((i + 1) << 8)), 24).unwrap();
        let ip = Ipv4Addr::from(0xC612_0000 + i + 1); // 198.18.x.y
        let l = Lease::new(subnet, None, LeaseAttrs::new(ip, "vxlan"));
        inner
            .create_if_absent(&l, Duration::from_secs(600))
            .await
            .unwrap();
    }
    let st = Arc::new(HookedStore::new(inner.clone()));
    let m = manager(st.clone(), json);
    let got = m
        .acquire(&attrs("198.19.0.1", "0a:00:00:00:00:01"), None)
        .await
        .unwrap();
    let c = st.counts();
    assert_eq!(
        (c.list, c.create_if_absent, c.get, c.update),
        (1, 1, 0, 0),
        "{c:?}"
    );
    assert!(
        got.subnet.ip() > Ipv4Addr::new(10, 19, 136, 0),
        "picked a taken subnet: {got:?}"
    );
    // Re-acquire by public IP among them: also one read.
    st.reset();
    let again = m
        .acquire(&attrs("198.18.7.208", "0a:00:00:00:00:02"), None)
        .await
        .unwrap();
    assert_eq!(again.subnet, net("10.7.208.0/24")); // 198.18.7.208 is lease #2000
    let c = st.counts();
    assert_eq!((c.list, c.update, c.create_if_absent), (1, 1, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn deleted_own_key_is_reacquired_promptly_with_the_same_subnet() {
    let st = Arc::new(MemoryLeaseStore::new());
    let m = Arc::new(manager(st.clone(), NET16));
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
        recv(&mut wrx, Duration::from_secs(2)).await,
        WatchUpdate::Snapshot(_)
    ));

    // An operator deletes our key (`etcdctl del`): the TTL lease itself stays alive.
    let t0 = Instant::now();
    assert!(st.delete_key(&lease.id()));
    assert_eq!(
        recv(&mut orx, Duration::from_secs(1)).await,
        OwnLeaseEvent::Lost(lease.clone())
    );
    let OwnLeaseEvent::Reacquired(again) = recv(&mut orx, Duration::from_secs(1)).await else {
        panic!("expected Reacquired");
    };
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(again.subnet, lease.subnet);
    assert_eq!(st.get(&again.id()).await.unwrap().unwrap().attrs, me);

    // TTL expiry on the manual clock: same story.
    st.advance(Duration::from_secs(61));
    assert!(matches!(
        recv(&mut orx, Duration::from_secs(1)).await,
        OwnLeaseEvent::Lost(_)
    ));
    let OwnLeaseEvent::Reacquired(third) = recv(&mut orx, Duration::from_secs(1)).await else {
        panic!("expected Reacquired");
    };
    assert_eq!(third.subnet, lease.subnet);

    // Someone else takes the subnet: we move to another one.
    let thief = Lease::new(
        third.subnet,
        None,
        attrs("198.18.0.66", "0a:00:00:00:00:66"),
    );
    st.delete_key(&third.id());
    st.put_reservation(&thief);
    let mut moved = None;
    while moved.is_none() {
        if let OwnLeaseEvent::Reacquired(l) = recv(&mut orx, Duration::from_secs(1)).await {
            moved = Some(l);
        }
    }
    let moved = moved.unwrap();
    assert_ne!(moved.subnet, lease.subnet);
    assert_eq!(
        st.get(&thief.id()).await.unwrap().unwrap().attrs,
        thief.attrs
    );

    stop.send(true).unwrap();
    let last = keeper.await.unwrap();
    watcher.await.unwrap();
    assert_eq!(last.subnet, moved.subnet);
    assert!(m.release(&last).await.unwrap());
    assert!(st.get(&last.id()).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn keeper_alone_renews_and_notices_expiry_on_its_next_tick() {
    let st = Arc::new(MemoryLeaseStore::new());
    let cfg = ManagerConfig {
        ttl: Duration::from_secs(1),
        renew_margin: Duration::from_secs(5), // > ttl: renew every ttl/3
        ..fast_cfg()
    };
    let m = Arc::new(SubnetManager::new(
        st.clone(),
        NetworkConfig::parse(NET16).unwrap(),
        cfg,
    ));
    let lease = m
        .acquire(&attrs("198.18.0.1", "0a:00:00:00:00:01"), None)
        .await
        .unwrap();
    let id = lease.lease_id.unwrap();
    let (otx, mut orx) = mpsc::channel(8);
    let (stop, shutdown) = watch::channel(false);
    let keeper = tokio::spawn({
        let (m, l) = (m.clone(), lease.clone());
        async move { m.run_lease_keeper(l, otx, shutdown).await }
    });
    // Move the manual clock in steps below the TTL: renewals keep the lease alive.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        st.advance(Duration::from_millis(900));
        assert!(st.remaining(id).is_some(), "lease expired despite renewals");
    }
    // A store outage is retried, not fatal.
    st.fail_next(3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(orx.try_recv().is_err(), "no event for a transient error");
    // Jump past the TTL at once: the keeper sees Lost at its next keep-alive.
    st.advance(Duration::from_secs(5));
    assert!(matches!(
        recv(&mut orx, Duration::from_secs(2)).await,
        OwnLeaseEvent::Lost(_)
    ));
    let OwnLeaseEvent::Reacquired(l) = recv(&mut orx, Duration::from_secs(2)).await else {
        panic!()
    };
    assert_eq!(l.subnet, lease.subnet);
    stop.send(true).unwrap();
    keeper.await.unwrap();
}

/// Drains `rx` until a snapshot arrives (events before it are skipped).
async fn next_snapshot(rx: &mut mpsc::Receiver<WatchUpdate>) -> Vec<Lease> {
    loop {
        if let WatchUpdate::Snapshot(s) = recv(rx, Duration::from_secs(3)).await {
            return s;
        }
    }
}

fn subnets(leases: &[Lease]) -> Vec<String> {
    let mut v: Vec<String> = leases.iter().map(|l| l.subnet.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn a_restore_that_moves_the_revision_back_is_relisted_not_awaited() {
    let st = Arc::new(MemoryLeaseStore::new());
    leased(&st, "10.244.2.0/24", "198.18.0.2").await;
    let m = Arc::new(manager(st.clone(), NET16));
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let m = m.clone();
        async move { m.run_watch(tx, shutdown).await }
    });
    assert_eq!(subnets(&next_snapshot(&mut rx).await), ["10.244.2.0/24"]);
    let snap = st.snapshot();
    // Changes after the snapshot: two leases the restored etcd will not have.
    leased(&st, "10.244.3.0/24", "198.18.0.3").await;
    leased(&st, "10.244.4.0/24", "198.18.0.4").await;
    for _ in 0..2 {
        assert!(matches!(
            recv(&mut rx, Duration::from_secs(2)).await,
            WatchUpdate::Events(_)
        ));
    }
    // Restored (same cluster ID), then one write: the revision is still below the last
    // one delivered, so a resumed watch would wait forever.
    st.restore(&snap, false);
    leased(&st, "10.244.5.0/24", "198.18.0.5").await;
    assert_eq!(
        subnets(&next_snapshot(&mut rx).await),
        ["10.244.2.0/24", "10.244.5.0/24"]
    );
    let counts = m.metrics().counts();
    assert_eq!(counts.restores_detected, 1);
    assert_eq!(counts.relists, 1);
    assert!(counts.watch_restarts >= 1);
    // The watch works on the restored store.
    leased(&st, "10.244.6.0/24", "198.18.0.6").await;
    let WatchUpdate::Events(ev) = recv(&mut rx, Duration::from_secs(2)).await else {
        panic!("expected events after the re-list")
    };
    assert!(matches!(&ev[..], [LeaseEvent::Added(l)] if l.subnet == net("10.244.6.0/24")));
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_new_cluster_id_is_relisted_even_when_the_revision_is_ahead() {
    let st = Arc::new(MemoryLeaseStore::new());
    leased(&st, "10.244.2.0/24", "198.18.0.2").await;
    let snap = st.snapshot();
    let m = Arc::new(manager(st.clone(), NET16));
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let m = m.clone();
        async move { m.run_watch(tx, shutdown).await }
    });
    next_snapshot(&mut rx).await;
    // Another cluster whose history has moved well past ours.
    st.restore(&snap, true);
    st.delete_key(&(net("10.244.2.0/24"), None));
    for i in 10..20 {
        leased(&st, &format!("10.244.{i}.0/24"), &format!("198.18.0.{i}")).await;
    }
    let relisted = next_snapshot(&mut rx).await;
    assert_eq!(relisted.len(), 10, "{:?}", subnets(&relisted));
    assert_eq!(m.metrics().counts().restores_detected, 1);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn watch_sends_snapshot_events_changed_values_and_resnapshots() {
    let st = Arc::new(MemoryLeaseStore::new());
    let a = leased(&st, "10.244.2.0/24", "198.18.0.2").await;
    let m = Arc::new(manager(st.clone(), NET16));
    let own = m
        .acquire(&attrs("198.18.0.1", "0a:00:00:00:00:01"), None)
        .await
        .unwrap();
    st.fail_next(1); // the first list fails: retried.
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let m = m.clone();
        async move { m.run_watch(tx, shutdown).await }
    });
    let wait = Duration::from_secs(2);
    let mut w = LeaseWatcher::new(Some(own.id()));
    let WatchUpdate::Snapshot(snap) = recv(&mut rx, wait).await else {
        panic!()
    };
    assert_eq!(snap.len(), 2);
    assert_eq!(
        w.reset(&snap),
        vec![LeaseEvent::Added(Lease {
            expiration: None,
            ..a.clone()
        })]
    );

    // A new peer, then a changed VTEP MAC of `a`, then a deletion. (Our own lease took a
    // random free subnet: the peer's must be another one.)
    let b_subnet = ["10.244.3.0/24", "10.244.4.0/24"]
        .into_iter()
        .find(|s| net(s) != own.subnet)
        .unwrap();
    let b = leased(&st, b_subnet, "198.18.0.3").await;
    let WatchUpdate::Events(ev) = recv(&mut rx, wait).await else {
        panic!()
    };
    assert_eq!(
        w.update(&ev),
        vec![LeaseEvent::Added(Lease {
            expiration: None,
            ..b.clone()
        })]
    );
    let mut a2 = a.clone();
    a2.attrs = attrs("198.18.0.2", "0a:00:00:00:00:22");
    let UpdateOutcome::Updated(a2) = st.update(&a2, Duration::from_secs(600)).await.unwrap() else {
        panic!()
    };
    let WatchUpdate::Events(ev) = recv(&mut rx, wait).await else {
        panic!()
    };
    let out = w.update(&ev);
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0], LeaseEvent::Added(l) if l.attrs == a2.attrs),
        "{out:?}"
    );
    st.delete_key(&b.id());
    let WatchUpdate::Events(ev) = recv(&mut rx, wait).await else {
        panic!()
    };
    assert!(matches!(&w.update(&ev)[..], [LeaseEvent::Removed(l)] if l.subnet == b.subnet));

    // Compaction: a fresh snapshot; a value changed meanwhile is re-emitted by the diff.
    let mut a3 = a2.clone();
    a3.attrs = attrs("198.18.0.22", "0a:00:00:00:00:23");
    let UpdateOutcome::Updated(a3_stored) = st.update(&a3, Duration::from_secs(600)).await.unwrap()
    else {
        panic!()
    };
    st.compact(st.revision());
    let snap = loop {
        match recv(&mut rx, wait).await {
            WatchUpdate::Snapshot(s) => break s,
            WatchUpdate::Events(_) => continue, // the a3 event may come first
        }
    };
    assert_eq!(snap.len(), 2);
    let _ = w.reset(&snap);
    assert_eq!(w.get(&a.id()).unwrap().attrs, a3.attrs);

    // A broken connection: backoff, then the watch resumes where it broke — no re-list —
    // and a change made meanwhile is replayed from history.
    st.break_watches();
    let mut a4 = a3_stored.clone();
    a4.attrs = attrs("198.18.0.22", "0a:00:00:00:00:24");
    let UpdateOutcome::Updated(_) = st.update(&a4, Duration::from_secs(600)).await.unwrap() else {
        panic!()
    };
    match recv(&mut rx, wait).await {
        WatchUpdate::Events(ev) => {
            assert!(
                ev.iter()
                    .any(|e| matches!(e, LeaseEvent::Added(l) if l.attrs == a4.attrs)),
                "{ev:?}"
            );
        }
        WatchUpdate::Snapshot(_) => panic!("a plain break must resume, not re-list"),
    }

    stop.send(true).unwrap();
    tokio::time::timeout(wait, task).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn loops_stop_on_a_cancellation_token_too() {
    let st = Arc::new(MemoryLeaseStore::new());
    let m = Arc::new(manager(st.clone(), NET16));
    let lease = m
        .acquire(&attrs("198.18.0.1", "0a:00:00:00:00:01"), None)
        .await
        .unwrap();
    let token = CancellationToken::new();
    let (otx, _orx) = mpsc::channel(8);
    let (wtx, mut wrx) = mpsc::channel(8);
    let keeper = tokio::spawn({
        let (m, l, t) = (m.clone(), lease.clone(), token.clone());
        async move { m.run_lease_keeper(l, otx, t).await }
    });
    let watcher = tokio::spawn({
        let (m, t) = (m.clone(), token.clone());
        async move { m.run_watch(wtx, t).await }
    });
    assert!(matches!(
        recv(&mut wrx, Duration::from_secs(1)).await,
        WatchUpdate::Snapshot(_)
    ));
    token.cancel();
    let wait = Duration::from_secs(1);
    assert_eq!(
        tokio::time::timeout(wait, keeper).await.unwrap().unwrap(),
        lease
    );
    tokio::time::timeout(wait, watcher).await.unwrap().unwrap();
    // A dropped watch sender counts as shutdown as well.
    let (tx, rx) = watch::channel(false);
    drop(tx);
    assert!(Shutdown::from(rx).is_requested());
}
