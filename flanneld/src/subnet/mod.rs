//! # subnet — where leases are stored, and the policy that acquires and keeps one
//!
//! The split follows Go flannel's etcd subnet manager, which is its best-layered part:
//!
//! * [`LeaseStore`] is pure storage (flannel's `Registry`): read the network config, list
//!   the subnet keys in **one** range read, create a key only if it is absent, update or delete
//!   a key only if it is still the one we saw, keep a TTL lease alive, and watch the subnet
//!   prefix from a revision. [`EtcdLeaseStore`] speaks etcd v3 with flannel's keys and JSON;
//!   [`MemoryLeaseStore`] is its in-memory twin with a manual clock, used by the unit tests.
//! * [`SubnetManager`] is the policy (flannel's `LocalManager`): flannel's acquire order, the
//!   keep-alive loop, re-acquiring a lost lease, and the watch loop that feeds the backends.
//!
//! Where the policy deliberately departs from flannel (see `flannel-reference.md` §2, §6):
//! a lost create race re-lists and re-picks instead of exiting; listing costs one range read
//! whatever the number of nodes (the etcd lease ID in each key tells leased from reserved, no
//! per-key `TimeToLive`); reservations are never given a TTL; a lost own lease is re-acquired
//! (the same subnet when still free) instead of exiting; and a relist after compaction
//! re-emits leases whose attributes changed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use ipam::lease::{Lease, LeaseAttrs, LeaseError, SubnetId, parse_subnet_key};

pub mod etcd;
pub mod etcd_error;
pub mod etcd_tls;
#[cfg(any(test, feature = "testing"))]
pub mod hooked;
pub mod manager;
pub mod memory;
pub mod metrics;

pub use etcd::{EtcdConfig, EtcdLeaseStore};
pub use etcd_error::{EtcdContext, EtcdErrorKind};
#[cfg(any(test, feature = "testing"))]
pub use hooked::{CallCounts, HookFuture, HookedStore, StoreCall};
pub use manager::{
    ManagerConfig, ManagerError, OwnLeaseEvent, Shutdown, SubnetManager, WatchUpdate, renew_delay,
};
pub use memory::MemoryLeaseStore;
pub use metrics::{StoreCounts, StoreMetrics};

/// An etcd (or memory store) revision.
pub type Revision = i64;

/// Errors from a [`LeaseStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The etcd client failed (connection, TLS, auth, gRPC status, ...). `message` is one
    /// line naming the cause and the endpoint, file or flag to fix
    /// ([`EtcdContext::explain`]).
    #[error("etcd: {message}")]
    Etcd {
        /// The cause.
        kind: EtcdErrorKind,
        /// The explanation, with the raw error chain at its end.
        message: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// A TLS file (`--etcd-cafile/certfile/keyfile`) is missing, unreadable, malformed or
    /// expired. Retried: the file may be provisioned or rotated later.
    #[error("etcd: {0}")]
    TlsFile(#[from] etcd_tls::EtcdFileError),
    /// The etcd settings are contradictory or malformed (no retry can fix them).
    #[error("etcd: {0}")]
    Config(String),
    /// The store answered something we cannot use.
    #[error("{op}: {message}")]
    Protocol {
        /// The operation that failed.
        op: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A watch stream broke (connection lost, lagged, closed by the server).
    #[error("watch interrupted: {0}")]
    WatchInterrupted(String),
    /// A request got no answer in time.
    #[error("{op}: no answer from the store within {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// The bound that was exceeded.
        after: Duration,
    },
}

impl StoreError {
    /// Whether only an operator can fix this (certificates, password, role): the daemon
    /// logs it as an error instead of a warning, and keeps retrying.
    pub fn needs_operator(&self) -> bool {
        match self {
            StoreError::Etcd { kind, .. } => kind.needs_operator(),
            StoreError::TlsFile(_) | StoreError::Config(_) => true,
            _ => false,
        }
    }

    /// Whether the store says the requested revision is gone or not there yet: the history
    /// we hold no longer matches it, so the caller must re-list.
    pub fn history_lost(&self) -> bool {
        let lost = |k| matches!(k, EtcdErrorKind::Compacted | EtcdErrorKind::FutureRevision);
        match self {
            StoreError::Etcd { kind, .. } => lost(*kind),
            // A watch cancelled by the server carries etcd's reason as text.
            StoreError::WatchInterrupted(why) => lost(etcd_error::classify_text(why)),
            _ => false,
        }
    }
}

/// Where the store is: its current revision and the identity of the cluster that answered.
/// A revision lower than one already seen, or another cluster ID, means the store was
/// restored from a snapshot (or replaced): every revision-based assumption is void.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePosition {
    /// The store's current revision.
    pub revision: Revision,
    /// etcd's cluster ID (a fixed value for the memory store until it is "restored").
    pub cluster_id: u64,
}

/// The result of one listing of `<prefix>/subnets/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// Every key that decoded into a lease (leased or reservation).
    pub leases: Vec<Lease>,
    /// Subnets of keys whose value did not decode: still occupied, never handed out.
    pub unreadable: Vec<SubnetId>,
    /// The store revision the listing was taken at.
    pub revision: Revision,
}

impl Listing {
    /// Every occupied IPv4 subnet, readable or not.
    /// IPv6-only leases (IPv4 half `0.0.0.0/0`) occupy no IPv4 subnet.
    pub fn taken_v4(&self) -> Vec<ipnetwork::Ipv4Network> {
        self.leases
            .iter()
            .map(|l| l.subnet)
            .chain(self.unreadable.iter().map(|(v4, _)| *v4))
            .filter(|n| n.prefix() > 0)
            .collect()
    }

    /// Every occupied IPv6 subnet, readable or not.
    pub fn taken_v6(&self) -> Vec<ipnetwork::Ipv6Network> {
        self.leases
            .iter()
            .filter_map(|l| l.ipv6_subnet)
            .chain(self.unreadable.iter().filter_map(|(_, v6)| *v6))
            .collect()
    }
}

/// Outcome of [`LeaseStore::create_if_absent`].
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The key was absent and now holds our value under a fresh TTL lease.
    Created(Lease),
    /// Someone else holds the key (its current value, if it decodes). Nothing was written.
    Exists(Option<Lease>),
}

/// Outcome of [`LeaseStore::update`].
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// The key now holds the new attributes: under a fresh TTL lease if it was leased, still
    /// without one if it was a reservation.
    Updated(Lease),
    /// The key changed since it was read (deleted, re-leased, turned into a reservation...).
    /// Carries its current value, if any. Nothing was written.
    Conflict(Option<Lease>),
}

/// Outcome of [`LeaseStore::keep_alive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveOutcome {
    /// The TTL lease was refreshed; it now expires after `ttl`.
    Alive {
        /// The refreshed time to live.
        ttl: Duration,
    },
    /// The TTL lease no longer exists (expired or revoked): its keys are gone.
    Lost,
}

/// One change under `<prefix>/subnets/`.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A key was created or overwritten.
    Put(Lease),
    /// A key was deleted (explicitly or by TTL expiry).
    Delete {
        /// The subnet(s) of the deleted key.
        id: SubnetId,
        /// The value before deletion, when the store still had it.
        prev: Option<Lease>,
    },
}

impl WatchEvent {
    /// The IPv4 subnet the event is about.
    pub fn subnet(&self) -> ipnetwork::Ipv4Network {
        match self {
            WatchEvent::Put(l) => l.subnet,
            WatchEvent::Delete { id, .. } => id.0,
        }
    }
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchBatch {
    /// Changes, in revision order.
    Events {
        /// The changes.
        events: Vec<WatchEvent>,
        /// Revision of the last change: resume from `revision + 1`.
        revision: Revision,
    },
    /// The requested start revision was compacted away: re-list, then watch again from the
    /// listing's revision + 1. The stream ends after this.
    Compacted {
        /// The store's compaction revision.
        compact_revision: Revision,
    },
}

/// A stream of watch batches; it ends (or yields an error) when the watch breaks.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// Storage of the network config and the subnet leases (flannel's `Registry`).
///
/// All writes are conditional, so several nodes can share one store without locks.
pub trait LeaseStore: Send + Sync + 'static {
    /// Where the network config lives, for messages (`/coreos.com/network/config`).
    fn config_location(&self) -> String;

    /// The raw network config JSON, or `None` while the key is absent.
    fn network_config(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Every subnet key, in one consistent read.
    fn list(&self) -> impl Future<Output = Result<Listing, StoreError>> + Send;

    /// One subnet key, if present and readable.
    fn get(&self, id: &SubnetId) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Writes `lease` under a fresh TTL lease of `ttl`, only if its key is absent.
    fn create_if_absent(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send;

    /// [`LeaseStore::create_if_absent`], and only if no subnet key was written after
    /// revision `listed` (the listing the subnets were picked from); otherwise
    /// `Exists(None)`. A dual-stack key names two subnets, so two nodes can pick the same
    /// half under different keys: the key compare alone cannot see that, this guard can.
    fn create_if_unchanged(
        &self,
        lease: &Lease,
        ttl: Duration,
        listed: Revision,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send;

    /// Writes `lease.attrs` to an existing key, only if the key still has the TTL lease
    /// `lease.lease_id` (or, when `!lease.leased`, still has none). A leased key moves to a
    /// fresh TTL lease of `ttl` (the old one is revoked when nothing else uses it); a
    /// reservation stays a reservation.
    fn update(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<UpdateOutcome, StoreError>> + Send;

    /// Refreshes the TTL lease `lease_id`.
    fn keep_alive(
        &self,
        lease_id: i64,
    ) -> impl Future<Output = Result<KeepAliveOutcome, StoreError>> + Send;

    /// Deletes `lease`'s key if it still has the same TTL lease (or none, for a
    /// reservation), then revokes that TTL lease. Returns whether a key was deleted.
    fn delete(&self, lease: &Lease) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Watches `<prefix>/subnets/` from revision `from` (inclusive).
    fn watch(&self, from: Revision)
    -> impl Future<Output = Result<WatchStream, StoreError>> + Send;

    /// The store's current revision and cluster identity, in one cheap request (no keys
    /// are transferred). The watch loop compares it with what it has seen before resuming.
    fn position(&self) -> impl Future<Output = Result<StorePosition, StoreError>> + Send;

    /// Like [`position`](Self::position), but as of the cluster's latest committed revision
    /// (etcd: a linearizable read through the leader), to confirm a suspected restore.
    fn position_linearizable(
        &self,
    ) -> impl Future<Output = Result<StorePosition, StoreError>> + Send {
        self.position()
    }
}

/// A decoded key/value, or why it did not decode.
pub(crate) enum Decoded {
    Lease(Lease),
    /// The key names a subnet but the value is not valid `LeaseAttrs`.
    BadValue(SubnetId, LeaseError),
    /// The key is not a subnet key.
    BadKey(LeaseError),
}

/// Decodes one `<basename> = <value>` pair with its store lease ID (0 = none).
pub(crate) fn decode(basename: &str, value: &[u8], lease_id: i64) -> Decoded {
    let id = match parse_subnet_key(basename) {
        Ok(id) => id,
        Err(e) => return Decoded::BadKey(e),
    };
    match LeaseAttrs::from_json(value) {
        Ok(attrs) => {
            let mut lease = Lease::new(id.0, id.1, attrs);
            lease.leased = lease_id != 0;
            lease.lease_id = (lease_id != 0).then_some(lease_id);
            Decoded::Lease(lease)
        }
        Err(e) => Decoded::BadValue(id, e),
    }
}

/// Builds a [`Listing`] from decoded pairs, logging the unusable ones.
pub(crate) fn listing_from<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a [u8], i64)>,
    revision: Revision,
) -> Listing {
    let mut listing = Listing {
        revision,
        ..Listing::default()
    };
    for (key, value, lease_id) in pairs {
        match decode(key, value, lease_id) {
            Decoded::Lease(l) => listing.leases.push(l),
            Decoded::BadValue(id, e) => {
                tracing::warn!(key, error = %e, "unreadable lease value; keeping its subnet out of the pool");
                listing.unreadable.push(id);
            }
            Decoded::BadKey(e) => tracing::warn!(key, error = %e, "ignoring a non-subnet key"),
        }
    }
    listing
}
