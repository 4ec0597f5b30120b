//! # hooked — the one test wrapper around a store: count calls, run a hook before them
//!
//! [`HookedStore`] forwards every [`LeaseStore`] call to an inner store. It counts the calls
//! per operation, so tests can pin down the cost of the policy (e.g. that an acquire among
//! thousands of existing leases costs exactly **one** range read; flannel made one
//! `TimeToLive` RPC per key), and it runs an optional hook before each call, so tests can
//! play another node at exactly the wrong moment (steal the subnet we are about to create,
//! compact the store before a watch starts) or fail a call.
//!
//! Test support only: compiled for this crate's unit tests and with the `testing` feature,
//! which the crate's own dev-dependency on itself turns on for its integration tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use ipam::lease::{Lease, SubnetId};

use super::{
    CreateOutcome, KeepAliveOutcome, LeaseStore, Listing, Revision, StoreError, StorePosition,
    UpdateOutcome, WatchStream,
};

/// Per-operation call counts of a [`HookedStore`].
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

/// A call about to be forwarded, as the hook sees it.
#[derive(Debug, Clone, Copy)]
pub enum StoreCall<'a> {
    /// [`LeaseStore::network_config`].
    NetworkConfig,
    /// [`LeaseStore::position`].
    Position,
    /// [`LeaseStore::position_linearizable`].
    PositionLinearizable,
    /// [`LeaseStore::list`].
    List,
    /// [`LeaseStore::get`].
    Get(&'a SubnetId),
    /// [`LeaseStore::create_if_absent`].
    CreateIfAbsent(&'a Lease, Duration),
    /// [`LeaseStore::update`].
    Update(&'a Lease, Duration),
    /// [`LeaseStore::keep_alive`].
    KeepAlive(i64),
    /// [`LeaseStore::delete`].
    Delete(&'a Lease),
    /// [`LeaseStore::watch`] from this revision.
    Watch(Revision),
}

/// What the hook does before a call: nothing (`None`), or a future to await first. An error
/// from that future is the call's result; the inner store is not called then.
pub type HookFuture = Option<BoxFuture<'static, Result<(), StoreError>>>;

type Hook = Box<dyn Fn(StoreCall<'_>) -> HookFuture + Send + Sync>;

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

impl Counters {
    fn all(&self) -> [&AtomicU64; 8] {
        [
            &self.network_config,
            &self.list,
            &self.get,
            &self.create_if_absent,
            &self.update,
            &self.keep_alive,
            &self.delete,
            &self.watch,
        ]
    }

    fn of(&self, call: &StoreCall<'_>) -> Option<&AtomicU64> {
        Some(match call {
            StoreCall::NetworkConfig => &self.network_config,
            StoreCall::Position | StoreCall::PositionLinearizable => return None,
            StoreCall::List => &self.list,
            StoreCall::Get(_) => &self.get,
            StoreCall::CreateIfAbsent(..) => &self.create_if_absent,
            StoreCall::Update(..) => &self.update,
            StoreCall::KeepAlive(_) => &self.keep_alive,
            StoreCall::Delete(_) => &self.delete,
            StoreCall::Watch(_) => &self.watch,
        })
    }
}

/// A [`LeaseStore`] that counts the calls it forwards to `S` and runs a hook before each
/// (see the module docs).
pub struct HookedStore<S> {
    inner: Arc<S>,
    counters: Counters,
    hook: Option<Hook>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for HookedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStore")
            .field("inner", &self.inner)
            .field("counters", &self.counters)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl<S: LeaseStore> HookedStore<S> {
    /// Wraps `inner`, counting only.
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            inner,
            counters: Counters::default(),
            hook: None,
        }
    }

    /// Runs `hook` before every call (it sees the call and may return a future to await
    /// first; see [`HookFuture`]).
    pub fn before(
        mut self,
        hook: impl Fn(StoreCall<'_>) -> HookFuture + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// The counts so far.
    pub fn counts(&self) -> CallCounts {
        let [
            network_config,
            list,
            get,
            create_if_absent,
            update,
            keep_alive,
            delete,
            watch,
        ] = self.counters.all().map(|a| a.load(Ordering::Relaxed));
        CallCounts {
            network_config,
            list,
            get,
            create_if_absent,
            update,
            keep_alive,
            delete,
            watch,
        }
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        for a in self.counters.all() {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// Counts `call` and runs the hook for it.
    async fn enter(&self, call: StoreCall<'_>) -> Result<(), StoreError> {
        if let Some(c) = self.counters.of(&call) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        match self.hook.as_ref().and_then(|h| h(call)) {
            Some(f) => f.await,
            None => Ok(()),
        }
    }
}

impl<S: LeaseStore> LeaseStore for HookedStore<S> {
    fn config_location(&self) -> String {
        self.inner.config_location()
    }

    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        self.enter(StoreCall::NetworkConfig).await?;
        self.inner.network_config().await
    }

    async fn position(&self) -> Result<StorePosition, StoreError> {
        self.enter(StoreCall::Position).await?;
        self.inner.position().await
    }

    async fn position_linearizable(&self) -> Result<StorePosition, StoreError> {
        self.enter(StoreCall::PositionLinearizable).await?;
        self.inner.position_linearizable().await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.enter(StoreCall::List).await?;
        self.inner.list().await
    }

    async fn get(&self, id: &SubnetId) -> Result<Option<Lease>, StoreError> {
        self.enter(StoreCall::Get(id)).await?;
        self.inner.get(id).await
    }

    async fn create_if_absent(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<CreateOutcome, StoreError> {
        self.enter(StoreCall::CreateIfAbsent(lease, ttl)).await?;
        self.inner.create_if_absent(lease, ttl).await
    }

    async fn create_if_unchanged(
        &self,
        lease: &Lease,
        ttl: Duration,
        listed: Revision,
    ) -> Result<CreateOutcome, StoreError> {
        self.enter(StoreCall::CreateIfAbsent(lease, ttl)).await?;
        self.inner.create_if_unchanged(lease, ttl, listed).await
    }

    async fn update(&self, lease: &Lease, ttl: Duration) -> Result<UpdateOutcome, StoreError> {
        self.enter(StoreCall::Update(lease, ttl)).await?;
        self.inner.update(lease, ttl).await
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<KeepAliveOutcome, StoreError> {
        self.enter(StoreCall::KeepAlive(lease_id)).await?;
        self.inner.keep_alive(lease_id).await
    }

    async fn delete(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.enter(StoreCall::Delete(lease)).await?;
        self.inner.delete(lease).await
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        self.enter(StoreCall::Watch(from)).await?;
        self.inner.watch(from).await
    }
}
