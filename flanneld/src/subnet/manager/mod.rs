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
//!
//! Layout: `acquire` decides which key to take as a pure function of the listing and
//! carries the decision out; `keeper` renews and re-acquires; `watch` lists, watches and
//! detects restores; `shutdown` is what stops the loops. The types and the shared state
//! live here.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipam::lease::{Lease, LeaseEvent};
use ipam::subnet_alloc::SmallRng;
use ipnetwork::{Ipv4Network, Ipv6Network};
use tokio::sync::Notify;

use super::{LeaseStore, StoreError, StoreMetrics};
use crate::network_config::NetworkConfig;

mod acquire;
mod keeper;
mod watch;

#[cfg(test)]
mod tests;

pub use crate::shutdown::Shutdown;

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

/// Whether `cur` (read from the store) is still the lease we hold.
fn same_lease(cur: &Lease, ours: &Lease) -> bool {
    cur.id() == ours.id() && cur.lease_id == ours.lease_id && cur.attrs == ours.attrs
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
