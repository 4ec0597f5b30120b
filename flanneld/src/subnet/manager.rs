//! # manager — the leasing policy: acquire, keep, watch, release
//!
//! [`SubnetManager`] is flannel's `LocalManager` on top of any [`LeaseStore`], minus its bugs
//! (`flannel-reference.md` §2, §6):
//!
//! * **Acquire** reads the subnet directory **once** per round and then, in flannel's order:
//!   (a) takes over a lease that already carries our public IP — a leased key gets our fresh
//!   attributes under a fresh TTL lease, a *reservation* is taken as is and never given a TTL;
//!   (b) re-creates the `previous` subnet (from `subnet.env`) when it is in the pool and free;
//!   (c) picks at random among the first 100 free subnets of `[SubnetMin, SubnetMax]`.
//!   Creation is a compare-and-create; losing the race re-lists and re-picks (bounded rounds)
//!   instead of exiting. Unreadable keys count as taken. No free subnet is a typed
//!   [`ManagerError::Exhausted`] that the daemon retries.
//! * **Keep** ([`SubnetManager::run_lease_keeper`]) refreshes the TTL lease `renew_margin`
//!   before it would expire and checks the key is still ours. When it is not (lease expired,
//!   key deleted, key overwritten) it re-acquires — the same subnet when still free — and
//!   reports [`OwnLeaseEvent`]s; store errors back off and retry, the loop never gives up.
//! * **Watch** ([`SubnetManager::run_watch`]) sends a full snapshot, then incremental events
//!   from the snapshot's revision + 1. A broken stream (etcd restarted, connection lost) is
//!   resumed, with backoff, from the revision after the last event delivered — no re-list;
//!   only when that history was compacted away does it re-list and send a new snapshot (the
//!   consumer diffs it with `ipam::lease::LeaseWatcher::reset`). Before resuming it reads the
//!   store's [`StorePosition`]: a revision below the last one delivered or another cluster
//!   ID means etcd was **restored from a snapshot** (or replaced), and a watch from the old
//!   revision would wait forever for revisions that will not come, so it re-lists instead;
//!   so it does when etcd answers that the revision is compacted or in the future. It also tells
//!   the keeper at once when an event touches our own key, so a deleted lease is re-acquired
//!   within a second rather than at the next renewal: run both loops.
//! * **Release** deletes our key on a graceful shutdown if it is still ours — never a
//!   reservation.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use ipam::lease::{Lease, LeaseAttrs, LeaseEvent};
use ipam::subnet_alloc::{MAX_CANDIDATES, SmallRng, pick};
use ipnetwork::{Ipv4Network, Ipv6Network};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    CreateOutcome, KeepAliveOutcome, LeaseStore, Listing, StoreError, StoreMetrics, StorePosition,
    UpdateOutcome, WatchBatch, WatchEvent,
};
use crate::backoff::Backoff;
use crate::network_config::NetworkConfig;

/// Tuning of the leasing policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// TTL of the store lease behind our key (flannel: a fixed 24 h).
    pub ttl: Duration,
    /// Renew this long before the TTL runs out (`--subnet-lease-renew-margin`, 60 min).
    pub renew_margin: Duration,
    /// How many list + create rounds one acquire may lose to other nodes before giving up.
    pub race_rounds: usize,
    /// First retry delay after a store error (doubles up to `backoff_max`).
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How often the keeper re-reads our key even without a renewal due (reservations have
    /// none) — a safety net behind the watch-driven check.
    pub verify_interval: Duration,
}

impl ManagerConfig {
    /// The defaults with the given TTL and renew margin.
    pub fn new(ttl: Duration, renew_margin: Duration) -> Self {
        Self {
            ttl,
            renew_margin,
            ..Self::default()
        }
    }
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            renew_margin: Duration::from_secs(3600),
            race_rounds: 10,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            verify_interval: Duration::from_secs(300),
        }
    }
}

/// Errors of [`SubnetManager::acquire`] and [`SubnetManager::release`].
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The store failed; retry later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every subnet of the pool is leased, reserved or unreadable.
    #[error(
        "no free /{subnet_len} subnet left in {network} between SubnetMin {min} and SubnetMax \
         {max} ({taken} keys occupy it); delete stale leases or widen the range"
    )]
    Exhausted {
        /// The cluster network.
        network: Ipv4Network,
        /// The subnet length handed out.
        subnet_len: u8,
        /// `SubnetMin`.
        min: Ipv4Addr,
        /// `SubnetMax`.
        max: Ipv4Addr,
        /// Keys found in the subnet directory.
        taken: usize,
    },
    /// Every IPv6 subnet of the pool is taken.
    #[error("no free IPv6 /{subnet_len} subnet left in {network}")]
    Ipv6Exhausted {
        /// The cluster IPv6 network.
        network: Ipv6Network,
        /// The IPv6 subnet length handed out.
        subnet_len: u8,
    },
    /// Other nodes won the create race `rounds` times in a row.
    #[error("lost the subnet create race {rounds} times in a row; retry later")]
    RaceLost {
        /// Rounds tried.
        rounds: usize,
    },
}

/// What happened to our own lease, as reported by [`SubnetManager::run_lease_keeper`].
#[derive(Debug, Clone, PartialEq)]
pub enum OwnLeaseEvent {
    /// Our key is gone or held by someone else (the lease as we knew it). Re-acquiring.
    Lost(Lease),
    /// We hold a lease again: the same subnet when it was still free, else another one.
    /// The backend and `subnet.env` must follow if the subnet changed.
    Reacquired(Lease),
}

/// One message of [`SubnetManager::run_watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// Every lease in the store, our own included: diff it with `LeaseWatcher::reset`.
    /// Sent first, and again after every compaction or reconnect.
    Snapshot(Vec<Lease>),
    /// Changes since the previous message, in order, our own key included: feed them to
    /// `LeaseWatcher::update`. A `Removed` may carry unspecified attrs (`0.0.0.0`) when the
    /// store had no previous value; the watcher substitutes the remembered ones.
    Events(Vec<LeaseEvent>),
}

/// When to renew a TTL lease of `ttl`: `margin` before it expires, or every `ttl / 3` when the
/// margin does not fit into the TTL.
pub fn renew_delay(ttl: Duration, margin: Duration) -> Duration {
    if ttl > margin { ttl - margin } else { ttl / 3 }
}

/// What stops the long-running loops ([`SubnetManager::run_lease_keeper`],
/// [`SubnetManager::run_watch`]): a `tokio::sync::watch::Receiver<bool>` (stop once `true` is
/// sent or the sender is dropped) or a `tokio_util` `CancellationToken`. Both convert with
/// `.into()`.
#[derive(Debug, Clone)]
pub enum Shutdown {
    /// Stop when the value becomes `true` or the sender is dropped.
    Watch(watch::Receiver<bool>),
    /// Stop when the token is cancelled.
    Token(CancellationToken),
}

impl From<watch::Receiver<bool>> for Shutdown {
    fn from(rx: watch::Receiver<bool>) -> Self {
        Shutdown::Watch(rx)
    }
}

impl From<CancellationToken> for Shutdown {
    fn from(t: CancellationToken) -> Self {
        Shutdown::Token(t)
    }
}

impl Shutdown {
    /// Whether shutdown was requested already.
    pub fn is_requested(&self) -> bool {
        match self {
            Shutdown::Watch(rx) => *rx.borrow() || rx.has_changed().is_err(),
            Shutdown::Token(t) => t.is_cancelled(),
        }
    }

    /// Resolves once shutdown is requested.
    pub async fn requested(&mut self) {
        match self {
            Shutdown::Watch(rx) => loop {
                if *rx.borrow_and_update() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            },
            Shutdown::Token(t) => t.cancelled().await,
        }
    }

    /// Sleeps for `d`; returns `true` if shutdown was requested meanwhile.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.requested() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

fn overlaps(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Whether `cur` (read from the store) is still the lease we hold.
fn same_lease(cur: &Lease, ours: &Lease) -> bool {
    cur.id() == ours.id() && cur.lease_id == ours.lease_id && cur.attrs == ours.attrs
}

fn to_lease_event(ev: WatchEvent) -> LeaseEvent {
    match ev {
        WatchEvent::Put(l) => LeaseEvent::Added(l),
        WatchEvent::Delete { id, prev } => {
            LeaseEvent::Removed(prev.unwrap_or_else(|| {
                Lease::new(id.0, id.1, LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, ""))
            }))
        }
    }
}

/// The leasing policy over a [`LeaseStore`] (see the module docs).
#[derive(Debug)]
pub struct SubnetManager<S> {
    store: Arc<S>,
    network: NetworkConfig,
    cfg: ManagerConfig,
    rng: Mutex<SmallRng>,
    /// The lease we currently hold, as last written by acquire / the keeper.
    own: Mutex<Option<Lease>>,
    /// Poked by the watch loop when an event touches our key.
    own_changed: Notify,
    /// Renewal, re-acquisition, watch and re-list counters for `/metrics`.
    metrics: Arc<StoreMetrics>,
}

impl<S: LeaseStore> SubnetManager<S> {
    /// A manager for `network` over `store`.
    pub fn new(store: Arc<S>, network: NetworkConfig, cfg: ManagerConfig) -> Self {
        Self {
            store,
            network,
            cfg,
            rng: Mutex::new(SmallRng::from_entropy()),
            own: Mutex::new(None),
            own_changed: Notify::new(),
            metrics: Arc::default(),
        }
    }

    /// Reports renewals, re-acquisitions, watch restarts and re-lists to `metrics` (share it
    /// with the store to get its error counts on the same page).
    pub fn with_metrics(mut self, metrics: Arc<StoreMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters this manager reports to.
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }

    /// Replaces the random source with a seeded one (deterministic tests).
    pub fn with_rng_seed(self, seed: u64) -> Self {
        *self.rng.lock().unwrap_or_else(|p| p.into_inner()) = SmallRng::with_seed(seed);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The network config the pool comes from.
    pub fn network(&self) -> &NetworkConfig {
        &self.network
    }

    /// The policy tuning.
    pub fn config(&self) -> &ManagerConfig {
        &self.cfg
    }

    /// The lease we hold, as last acquired or renewed.
    pub fn current_lease(&self) -> Option<Lease> {
        self.own.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_own(&self, lease: Option<Lease>) {
        *self.own.lock().unwrap_or_else(|p| p.into_inner()) = lease;
    }

    fn random_index(&self, n: usize) -> usize {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).below(n)
    }

    /// Acquires a lease for `attrs` (see the module docs for the order). `previous` is the
    /// subnet recorded in `subnet.env`, if any.
    pub async fn acquire(
        &self,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
    ) -> Result<Lease, ManagerError> {
        let rounds = self.cfg.race_rounds.max(1);
        for round in 1..=rounds {
            let listing = self.store.list().await?;
            if let Some(lease) = self.try_acquire(&listing, attrs, previous).await? {
                tracing::info!(subnet = %lease.subnet, leased = lease.leased, round, "acquired subnet lease");
                self.metrics.touch_renewal();
                self.set_own(Some(lease.clone()));
                return Ok(lease);
            }
            tracing::info!(
                round,
                "another node changed the subnet we picked; re-listing"
            );
        }
        Err(ManagerError::RaceLost { rounds })
    }

    /// A reservation of ours is honoured if it has the configured shape inside the network
    /// (operators may reserve outside `[SubnetMin, SubnetMax]`).
    fn reservation_fits(&self, l: &Lease) -> bool {
        let p = &self.network.ipv4;
        let v4 = l.subnet.prefix() == p.subnet_len
            && l.subnet.ip() == l.subnet.network()
            && p.network.contains(l.subnet.ip());
        let v6 = match &self.network.ipv6 {
            None => true,
            Some(p6) => l.ipv6_subnet.is_some_and(|s| {
                s.prefix() == p6.subnet_len && s.ip() == s.network() && p6.network.contains(s.ip())
            }),
        };
        v4 && v6
    }

    /// A leased key of ours is reused if the current config could have handed it out.
    fn lease_fits(&self, l: &Lease) -> bool {
        let v6 = match &self.network.ipv6 {
            None => true,
            Some(p6) => l.ipv6_subnet.is_some_and(|s| p6.contains_subnet(&s)),
        };
        self.network.ipv4.contains_subnet(&l.subnet) && v6
    }

    /// One acquire round on `listing`. `Ok(None)`: a compare failed, re-list and retry.
    async fn try_acquire(
        &self,
        listing: &Listing,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
    ) -> Result<Option<Lease>, ManagerError> {
        // (a) a key that already carries our public IP; reservations first.
        let mut mine: Vec<&Lease> = listing
            .leases
            .iter()
            .filter(|l| l.attrs.public_ip == attrs.public_ip)
            .collect();
        mine.sort_by_key(|l| l.leased);
        for l in mine {
            if !l.leased {
                if !self.reservation_fits(l) {
                    tracing::warn!(key = %l.key(), "a reservation carries our public IP but does not fit the network config; ignoring it");
                    continue;
                }
                if l.attrs == *attrs {
                    return Ok(Some(l.clone()));
                }
            } else if !self.lease_fits(l) {
                tracing::info!(key = %l.key(), "our previous lease does not fit the network config any more; deleting it");
                self.store.delete(l).await?;
                return Ok(None);
            }
            let mut want = l.clone();
            want.attrs = attrs.clone();
            return match self.store.update(&want, self.cfg.ttl).await? {
                UpdateOutcome::Updated(u) => Ok(Some(u)),
                UpdateOutcome::Conflict(_) => Ok(None),
            };
        }

        // (b) the previous subnet, (c) a random free one.
        let pool = &self.network.ipv4;
        let taken = listing.taken_v4();
        let prev =
            previous.filter(|p| pool.contains_subnet(p) && !taken.iter().any(|t| overlaps(t, p)));
        let v4 = match prev {
            Some(p) => p,
            None => {
                let free = pool.free_subnets(&taken, MAX_CANDIDATES);
                pick(&free, &mut |n| self.random_index(n)).ok_or(ManagerError::Exhausted {
                    network: pool.network,
                    subnet_len: pool.subnet_len,
                    min: pool.subnet_min,
                    max: pool.subnet_max,
                    taken: listing.leases.len() + listing.unreadable.len(),
                })?
            }
        };
        let v6 = match &self.network.ipv6 {
            None => None,
            Some(p6) => {
                let free = p6.free_subnets(&listing.taken_v6(), MAX_CANDIDATES);
                Some(pick(&free, &mut |n| self.random_index(n)).ok_or(
                    ManagerError::Ipv6Exhausted {
                        network: p6.network,
                        subnet_len: p6.subnet_len,
                    },
                )?)
            }
        };
        let want = Lease::new(v4, v6, attrs.clone());
        match self.store.create_if_absent(&want, self.cfg.ttl).await? {
            CreateOutcome::Created(l) => Ok(Some(l)),
            CreateOutcome::Exists(_) => Ok(None),
        }
    }

    /// Deletes our key if it is still ours. Reservations are never deleted. Returns whether a
    /// key was deleted.
    pub async fn release(&self, lease: &Lease) -> Result<bool, ManagerError> {
        if !lease.leased {
            return Ok(false);
        }
        let deleted = self.store.delete(lease).await?;
        if deleted {
            let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
            if own.as_ref().is_some_and(|o| o.id() == lease.id()) {
                *own = None;
            }
        }
        Ok(deleted)
    }

    /// The delay before the keeper's next look at `lease`, and whether a renewal is due then.
    fn next_check(&self, lease: &Lease) -> (Duration, bool) {
        if !lease.leased {
            return (self.cfg.verify_interval, false);
        }
        let remaining = lease
            .expiration
            .and_then(|e| e.duration_since(SystemTime::now()).ok())
            .unwrap_or(self.cfg.ttl);
        let renew = renew_delay(remaining, self.cfg.renew_margin);
        if renew <= self.cfg.verify_interval {
            (renew, true)
        } else {
            (self.cfg.verify_interval, false)
        }
    }

    /// Keeps `lease` (see the module docs) until shutdown; returns the lease held at the end,
    /// for an optional [`release`](Self::release). Never returns early on store errors.
    pub async fn run_lease_keeper(
        &self,
        lease: Lease,
        tx: mpsc::Sender<OwnLeaseEvent>,
        shutdown: impl Into<Shutdown>,
    ) -> Lease {
        let mut shutdown = shutdown.into();
        let mut lease = lease;
        self.set_own(Some(lease.clone()));
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let (mut delay, mut renew_due) = self.next_check(&lease);
        let mut deadline = Instant::now() + delay;
        loop {
            let notified = tokio::select! {
                biased;
                _ = shutdown.requested() => return lease,
                _ = self.own_changed.notified() => true,
                _ = tokio::time::sleep_until(deadline.into()) => false,
            };
            // Renew when due (the timer fired for it).
            let mut lost = false;
            if !notified && renew_due && lease.leased {
                let id = lease.lease_id.unwrap_or(0);
                match self.store.keep_alive(id).await {
                    Ok(KeepAliveOutcome::Alive { ttl }) => {
                        lease.expiration = SystemTime::now().checked_add(ttl);
                        self.set_own(Some(lease.clone()));
                        self.metrics.renewed();
                        tracing::debug!(subnet = %lease.subnet, ?ttl, "renewed subnet lease");
                    }
                    Ok(KeepAliveOutcome::Lost) => {
                        tracing::warn!(subnet = %lease.subnet, "our subnet lease expired or was revoked");
                        lost = true;
                    }
                    Err(e) => {
                        delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "renewing the subnet lease failed");
                        deadline = Instant::now() + delay;
                        continue;
                    }
                }
            }
            // Check the key still holds our lease.
            if !lost {
                match self.store.get(&lease.id()).await {
                    Ok(Some(cur)) if same_lease(&cur, &lease) => {}
                    Ok(cur) => {
                        tracing::warn!(subnet = %lease.subnet, now = ?cur.map(|c| c.attrs.public_ip),
                            "our subnet key was deleted or taken over");
                        lost = true;
                    }
                    Err(e) => {
                        delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "checking our subnet key failed");
                        // A pending renewal stays pending (`renew_due` is unchanged).
                        deadline = Instant::now() + delay;
                        continue;
                    }
                }
            }
            if lost {
                let _ = tx.send(OwnLeaseEvent::Lost(lease.clone())).await;
                match self.reacquire(&lease, &mut shutdown, &mut backoff).await {
                    Some(new) => {
                        lease = new;
                        self.metrics.reacquired();
                        let _ = tx.send(OwnLeaseEvent::Reacquired(lease.clone())).await;
                    }
                    None => return lease,
                }
            }
            backoff.reset();
            (delay, renew_due) = self.next_check(&lease);
            deadline = Instant::now() + delay;
        }
    }

    /// Re-acquires after losing `old`, preferring its subnet. `None` on shutdown.
    async fn reacquire(
        &self,
        old: &Lease,
        shutdown: &mut Shutdown,
        backoff: &mut Backoff,
    ) -> Option<Lease> {
        loop {
            if shutdown.is_requested() {
                return None;
            }
            match self.acquire(&old.attrs, Some(old.subnet)).await {
                Ok(l) => {
                    tracing::info!(old = %old.subnet, new = %l.subnet, "re-acquired a subnet lease");
                    return Some(l);
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?d, "re-acquiring a subnet lease failed");
                    if shutdown.sleep(d).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Pokes the keeper if `listing` shows our key gone or changed.
    fn check_own_snapshot(&self, listing: &Listing) {
        let Some(own) = self.current_lease() else {
            return;
        };
        let ok = listing.leases.iter().any(|l| same_lease(l, &own));
        if !ok {
            self.own_changed.notify_one();
        }
    }

    /// Pokes the keeper if an event deletes or overwrites our key.
    fn check_own_events(&self, events: &[WatchEvent]) {
        let Some(own) = self.current_lease() else {
            return;
        };
        let touched = events.iter().any(|e| match e {
            WatchEvent::Put(l) => l.subnet == own.subnet && !same_lease(l, &own),
            WatchEvent::Delete { id, .. } => id.0 == own.subnet,
        });
        if touched {
            self.own_changed.notify_one();
        }
    }

    /// Streams the subnet directory to `tx` until shutdown or until `tx` is closed (see the
    /// module docs). Never returns on store errors: it backs off (100 ms doubling to 5 s by
    /// default) and resumes the watch where it broke, re-listing only after a compaction or
    /// a restore.
    pub async fn run_watch(&self, tx: mpsc::Sender<WatchUpdate>, shutdown: impl Into<Shutdown>) {
        let mut shutdown = shutdown.into();
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        // `Some(rev)`: a watch broke after delivering everything up to `rev - 1`; resume from
        // `rev` without re-listing (history still holds the gap). `None`: take a new snapshot
        // first (start-up, compaction, restore).
        let mut resume: Option<super::Revision> = None;
        // The cluster the last listing came from.
        let mut cluster: Option<u64> = None;
        let mut listed_before = false;
        loop {
            let from = match resume {
                Some(rev) => {
                    // Is the history we hold still etcd's? (see the module docs)
                    let pos = tokio::select! {
                        biased;
                        _ = shutdown.requested() => return,
                        p = self.store.position() => p,
                    };
                    // A lagging member answers a lower revision too: confirm with the leader.
                    let pos = match pos {
                        Ok(p) if restored(p, rev, cluster) => {
                            self.store.position_linearizable().await
                        }
                        other => other,
                    };
                    match pos {
                        Ok(pos) if restored(pos, rev, cluster) => {
                            self.metrics.restore_detected();
                            tracing::warn!(
                                revision = pos.revision, last_seen = rev - 1,
                                cluster_id = format!("{:x}", pos.cluster_id),
                                previous_cluster_id = ?cluster.map(|c| format!("{c:x}")),
                                "etcd went back in revision or changed cluster ID (restored \
                                 from a snapshot?); re-listing every lease"
                            );
                            resume = None;
                            continue;
                        }
                        Ok(_) => rev,
                        Err(e) => {
                            let d = backoff.next_delay();
                            log_store_error(
                                &e,
                                d,
                                "reading the etcd revision before resuming the watch",
                            );
                            if shutdown.sleep(d).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
                None => {
                    let listed = tokio::select! {
                        biased;
                        _ = shutdown.requested() => return,
                        r = self.list_with_position() => r,
                    };
                    let (listing, pos) = match listed {
                        Ok(l) => l,
                        Err(e) => {
                            let d = backoff.next_delay();
                            log_store_error(&e, d, "listing subnet leases");
                            if shutdown.sleep(d).await {
                                return;
                            }
                            continue;
                        }
                    };
                    if listed_before {
                        self.metrics.relist();
                    }
                    listed_before = true;
                    cluster = Some(pos.cluster_id);
                    self.check_own_snapshot(&listing);
                    let from = listing.revision + 1;
                    if tx
                        .send(WatchUpdate::Snapshot(listing.leases))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    from
                }
            };
            resume = Some(from);
            let mut stream = match self.store.watch(from).await {
                Ok(s) => s,
                Err(e) => {
                    if e.history_lost() {
                        tracing::warn!(error = %e, from, "etcd no longer has the revision to resume from; re-listing");
                        resume = None;
                        continue;
                    }
                    let d = backoff.next_delay();
                    log_store_error(&e, d, "starting the subnet watch");
                    if shutdown.sleep(d).await {
                        return;
                    }
                    continue;
                }
            };
            let started = Instant::now();
            let why = loop {
                let item = tokio::select! {
                    biased;
                    _ = shutdown.requested() => return,
                    i = stream.next() => i,
                };
                match item {
                    Some(Ok(WatchBatch::Events { events, revision })) => {
                        backoff.reset();
                        resume = Some(revision + 1);
                        self.check_own_events(&events);
                        let events = events.into_iter().map(to_lease_event).collect();
                        if tx.send(WatchUpdate::Events(events)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(WatchBatch::Compacted { compact_revision })) => {
                        tracing::info!(
                            compact_revision,
                            "subnet watch fell behind a compaction; re-listing"
                        );
                        resume = None;
                        break None;
                    }
                    Some(Err(e)) if e.history_lost() => {
                        tracing::warn!(error = %e, "etcd no longer has the watched revisions; re-listing");
                        resume = None;
                        break None;
                    }
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some("the watch stream ended".to_string()),
                }
            };
            if let Some(why) = why {
                self.metrics.watch_restart();
                if started.elapsed() > Duration::from_secs(5) {
                    backoff.reset();
                }
                let d = backoff.next_delay();
                tracing::warn!(error = %why, retry_in = ?d, resume_from = ?resume,
                    "subnet watch broke; reconnecting");
                if shutdown.sleep(d).await {
                    return;
                }
            }
        }
    }

    /// The store position (for its cluster ID), then a listing.
    async fn list_with_position(&self) -> Result<(Listing, StorePosition), StoreError> {
        let pos = self.store.position().await?;
        let listing = self.store.list().await?;
        Ok((listing, pos))
    }
}

/// Whether `pos` shows a store that is not the one whose history we hold: its revision is
/// below the last one we delivered (`resume_from - 1`), or another cluster answers.
fn restored(pos: StorePosition, resume_from: super::Revision, cluster: Option<u64>) -> bool {
    pos.revision < resume_from - 1 || cluster.is_some_and(|c| c != pos.cluster_id)
}

/// Logs a store failure: as an error when only an operator can fix it (certificates,
/// password, role), as a warning otherwise (etcd unreachable, a timeout).
pub fn log_store_error(e: &StoreError, retry_in: Duration, doing: &str) {
    if e.needs_operator() {
        tracing::error!("{doing}: {e}; retrying in {retry_in:?}");
    } else {
        tracing::warn!("{doing}: {e}; retrying in {retry_in:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::{HookedStore, MemoryLeaseStore, StoreCall};
    use ipam::lease::LeaseWatcher;
    use serde_json::json;

    const NET16: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn attrs(ip: &str, mac: &str) -> LeaseAttrs {
        let mut a = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
        a.backend_data = Some(json!({"VNI": 1, "VtepMAC": mac}));
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

    #[tokio::test]
    async fn acquire_order_own_ip_then_previous_then_random() {
        let st = Arc::new(MemoryLeaseStore::new());
        let other = leased(&st, "10.244.5.0/24", "198.18.0.2").await;
        let old = leased(&st, "10.244.7.0/24", "198.18.0.1").await;
        let m = manager(st.clone(), NET16);
        let me = attrs("198.18.0.1", "0a:00:00:00:00:99");

        // (a) our public IP wins over `previous`; the attrs are refreshed under a new lease.
        let got = m.acquire(&me, Some(net("10.244.9.0/24"))).await.unwrap();
        assert_eq!(got.subnet, old.subnet);
        assert_eq!(got.attrs, me);
        assert!(got.leased);
        assert_ne!(got.lease_id, old.lease_id);
        assert_eq!(st.get(&got.id()).await.unwrap().unwrap().attrs, me);
        assert_eq!(m.current_lease(), Some(got.clone()));

        // (b) another node: its free previous subnet.
        let you = attrs("198.18.0.3", "0a:00:00:00:00:03");
        let got = m.acquire(&you, Some(net("10.244.9.0/24"))).await.unwrap();
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
                .acquire(&attrs(&ip, "0a:00:00:00:01:01"), Some(net(prev)))
                .await
                .unwrap();
            assert!(m.network().ipv4.contains_subnet(&got.subnet), "{got:?}");
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

    #[tokio::test]
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
            .acquire(&reserved.attrs, Some(net("10.244.20.0/24")))
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

    /// A memory store where another "node" grabs the key right before our first `n` creates.
    fn racing(inner: Arc<MemoryLeaseStore>, n: usize) -> HookedStore<MemoryLeaseStore> {
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
            let thief = Lease::new(lease.subnet, None, attrs("198.18.9.9", "0a:00:00:00:09:09"));
            let st = thief_store.clone();
            Some(Box::pin(async move {
                st.create_if_absent(&thief, ttl).await.map(|_| ())
            }))
        })
    }

    #[tokio::test]
    async fn lost_race_relists_and_repicks() {
        let inner = Arc::new(MemoryLeaseStore::new());
        let st = Arc::new(racing(inner.clone(), 3));
        let m = manager(st.clone(), NET16);
        let me = attrs("198.18.0.1", "0a:00:00:00:00:01");
        let got = m.acquire(&me, Some(net("10.244.9.0/24"))).await.unwrap();
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

    #[tokio::test]
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
                Some(net("10.244.3.0/24")),
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

    #[tokio::test]
    async fn one_range_read_per_acquire_among_5000_leases() {
        let inner = Arc::new(MemoryLeaseStore::new());
        let json = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
        for i in 0..5000u32 {
            let subnet =
                Ipv4Network::new(Ipv4Addr::from(0x0A00_0000 + ((i + 1) << 8)), 24).unwrap();
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

    #[tokio::test]
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

    #[tokio::test]
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

    #[tokio::test]
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

    #[tokio::test]
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

    #[tokio::test]
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
        let mut w = LeaseWatcher::new(Some(own.subnet));
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

        // A new peer, then a changed VTEP MAC of `a`, then a deletion.
        let b = leased(&st, "10.244.3.0/24", "198.18.0.3").await;
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
        let UpdateOutcome::Updated(a2) = st.update(&a2, Duration::from_secs(600)).await.unwrap()
        else {
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
        let UpdateOutcome::Updated(a3_stored) =
            st.update(&a3, Duration::from_secs(600)).await.unwrap()
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
        let UpdateOutcome::Updated(_) = st.update(&a4, Duration::from_secs(600)).await.unwrap()
        else {
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

    #[tokio::test]
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
}
