//! # counting — a store wrapper that counts calls
//!
//! [`CountingStore`] forwards every [`LeaseStore`] call to an inner store and counts it per
//! operation. Tests use it to pin down the cost of the policy, e.g. that an acquire among
//! thousands of existing leases costs exactly **one** range read (flannel made one
//! `TimeToLive` RPC per key). It is cheap enough to wrap a production store for metrics too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipam::lease::{Lease, SubnetId};

use super::{
    CreateOutcome, KeepAliveOutcome, LeaseStore, Listing, Revision, StoreError, UpdateOutcome,
    WatchStream,
};

/// Per-operation call counts of a [`CountingStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// [`LeaseStore::network_config`] calls.
    pub network_config: u64,
    /// [`LeaseStore::list`] calls (range reads of the subnet directory).
    pub list: u64,
    /// [`LeaseStore::get`] calls.
    pub get: u64,
    /// [`LeaseStore::create_if_absent`] calls.
    pub create_if_absent: u64,
    /// [`LeaseStore::update`] calls.
    pub update: u64,
    /// [`LeaseStore::keep_alive`] calls.
    pub keep_alive: u64,
    /// [`LeaseStore::delete`] calls.
    pub delete: u64,
    /// [`LeaseStore::watch`] calls.
    pub watch: u64,
}

#[derive(Debug, Default)]
struct Counters {
    network_config: AtomicU64,
    list: AtomicU64,
    get: AtomicU64,
    create_if_absent: AtomicU64,
    update: AtomicU64,
    keep_alive: AtomicU64,
    delete: AtomicU64,
    watch: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A [`LeaseStore`] that counts the calls it forwards to `S`.
#[derive(Debug)]
pub struct CountingStore<S> {
    inner: Arc<S>,
    counters: Counters,
}

impl<S: LeaseStore> CountingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            inner,
            counters: Counters::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// The counts so far.
    pub fn counts(&self) -> CallCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CallCounts {
            network_config: l(&c.network_config),
            list: l(&c.list),
            get: l(&c.get),
            create_if_absent: l(&c.create_if_absent),
            update: l(&c.update),
            keep_alive: l(&c.keep_alive),
            delete: l(&c.delete),
            watch: l(&c.watch),
        }
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.network_config,
            &c.list,
            &c.get,
            &c.create_if_absent,
            &c.update,
            &c.keep_alive,
            &c.delete,
            &c.watch,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

impl<S: LeaseStore> LeaseStore for CountingStore<S> {
    fn config_location(&self) -> String {
        self.inner.config_location()
    }

    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        bump(&self.counters.network_config);
        self.inner.network_config().await
    }

    async fn position(&self) -> Result<super::StorePosition, StoreError> {
        self.inner.position().await
    }
    async fn position_linearizable(&self) -> Result<super::StorePosition, StoreError> {
        self.inner.position_linearizable().await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        bump(&self.counters.list);
        self.inner.list().await
    }

    async fn get(&self, id: &SubnetId) -> Result<Option<Lease>, StoreError> {
        bump(&self.counters.get);
        self.inner.get(id).await
    }

    async fn create_if_absent(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<CreateOutcome, StoreError> {
        bump(&self.counters.create_if_absent);
        self.inner.create_if_absent(lease, ttl).await
    }

    async fn update(&self, lease: &Lease, ttl: Duration) -> Result<UpdateOutcome, StoreError> {
        bump(&self.counters.update);
        self.inner.update(lease, ttl).await
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<KeepAliveOutcome, StoreError> {
        bump(&self.counters.keep_alive);
        self.inner.keep_alive(lease_id).await
    }

    async fn delete(&self, lease: &Lease) -> Result<bool, StoreError> {
        bump(&self.counters.delete);
        self.inner.delete(lease).await
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        bump(&self.counters.watch);
        self.inner.watch(from).await
    }
}
