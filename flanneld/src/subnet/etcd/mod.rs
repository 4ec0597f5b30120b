//! # etcd — the lease store on etcd v3, with flannel's keys and values
//!
//! Layout (byte-compatible with Go flanneld, `flannel-reference.md` §2.1):
//!
//! * `<prefix>/config` holds the network config JSON;
//! * `<prefix>/subnets/10.244.1.0-24` (dual stack `…-24&fc00::-64`) holds one node's
//!   `LeaseAttrs` JSON, attached to an etcd lease (TTL) — or to none for a *reservation*.
//!
//! How each [`LeaseStore`] operation maps onto etcd, and where it departs from flannel:
//!
//! * **list** is one range read with a prefix. The `lease` field every `KeyValue` carries tells
//!   leased from reserved, so there is no per-key `TimeToLive` RPC (flannel makes N of them).
//! * **create_if_absent** grants a TTL lease, then `Txn(If Version(key)==0 Then Put(key, value,
//!   lease) Else Get(key))`; when the compare fails the granted lease is revoked again.
//! * **update / delete** compare the key's lease ID (and `Version > 0`: etcd compares a
//!   missing key as if its fields were zero, which would match "no lease") before writing, so a
//!   key that changed hands is never overwritten. A reservation stays lease-less.
//! * **keep_alive** drives one long-lived `LeaseKeepAlive` stream per lease, reopened when it
//!   breaks; a response with TTL ≤ 0 or "lease not found" means the lease is gone.
//! * **watch** asks for `prev_kv` so deletions carry the last value; a cancelled watch with a
//!   compact revision becomes [`WatchBatch::Compacted`], and the stream ends (or yields an
//!   error) when the connection breaks: the caller re-lists and re-watches.
//!
//! Unary calls are bounded by [`EtcdConfig::request_timeout`]; streams are not (a watch lives
//! as long as the connection, whose health HTTP/2 keep-alive pings check).
//!
//! **TLS and auth.** `https://` endpoints use rustls; `--etcd-cafile` replaces the system roots
//! and `--etcd-certfile/--etcd-keyfile` present a client certificate ([`super::etcd_tls`]
//! checks the files first). `--etcd-username/--etcd-password` authenticate once at connect
//! and again whenever etcd says the token expired. Every failure becomes a
//! [`StoreError::Etcd`] whose message names the cause and what to fix
//! ([`super::etcd_error`]) and is counted by kind in [`StoreMetrics`].
//!
//! **Several endpoints.** The client balances over all of them, and a broken watch is
//! re-opened by the manager on whichever member answers. A member that stops answering is
//! not always skipped: tonic's `Reconnect` reports a lazily connected endpoint whose connect
//! failed as ready and returns the stored error on the next call, so the balancer can keep
//! choosing a dead member (etcdv3/etcd-client#39; seen in `examples/tests/etcd_tls.rs`). The
//! fix still to do: one client per endpoint, used stickily and rotated on failure. [`LeaseStore::position`] reads the revision and cluster ID, so that the
//! manager can tell a restored etcd from a reconnect.
//!
//! Connecting — the `--etcd-*` settings ([`EtcdConfig`]), their checks, TLS and auth options,
//! and the handshake probe that explains a failed request — lives in `connect`; this file
//! is the store's operations.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use ipam::lease::{Lease, SubnetId, subnet_key};

use super::etcd_error::{EtcdContext, EtcdErrorKind};
use super::etcd_tls::TlsMaterial;
use super::{
    CreateOutcome, Decoded, KeepAliveOutcome, LeaseStore, Listing, Revision, StoreError,
    StoreMetrics, StorePosition, UpdateOutcome, WatchBatch, WatchEvent, WatchStream, decode,
    listing_from,
};

/// flannel's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// Largest listing we accept in one gRPC message (about 400 000 leases).
const MAX_LIST_BYTES: usize = 64 << 20;

mod connect;

pub use connect::EtcdConfig;
use connect::{etcd_error, refine};

/// The etcd v3 [`LeaseStore`] (see the module docs).
pub struct EtcdLeaseStore {
    client: Client,
    prefix: String,
    ctx: EtcdContext,
    endpoints: Vec<String>,
    /// The TLS files' contents, for [`refine`]'s handshake probe (`None` over http).
    tls: Option<TlsMaterial>,
    metrics: Arc<StoreMetrics>,
    request_timeout: Duration,
    /// The open keep-alive stream, for the lease it belongs to.
    keeper: tokio::sync::Mutex<Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>>,
}

impl std::fmt::Debug for EtcdLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLeaseStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Whether an error says "this lease does not exist (any more)": etcd answers
/// "etcdserver: requested lease not found", and etcd-client's keep-alive opener reports
/// "lease not found" itself.
fn is_lease_not_found(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Etcd {
            kind: EtcdErrorKind::LeaseNotFound,
            ..
        }
    )
}

impl EtcdLeaseStore {
    /// The counters this store reports failures to.
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }

    /// A clone of the underlying client (tests and tools).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The key prefix, without trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/subnets/`, the directory of all subnet keys.
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The full key of a subnet, e.g. `/coreos.com/network/subnets/10.244.1.0-24`.
    pub fn key_of(&self, id: &SubnetId) -> String {
        format!(
            "{}{}",
            self.subnets_prefix(),
            subnet_key(&id.0, id.1.as_ref())
        )
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let e = self.error(e);
                Err(refine(e, &self.ctx, &self.endpoints, self.tls.as_ref()).await)
            }
            Err(_) => {
                self.metrics.error(EtcdErrorKind::Timeout.label());
                Err(StoreError::Timeout {
                    op,
                    after: self.request_timeout,
                })
            }
        }
    }

    async fn read_position(&self, opts: GetOptions) -> Result<StorePosition, StoreError> {
        let mut c = self.client.clone();
        let key = self.config_location();
        let resp = self
            .timed("read revision", c.get(key.as_str(), Some(opts)))
            .await?;
        let header = resp.header().ok_or_else(|| StoreError::Protocol {
            op: "read revision",
            message: "etcd answered without a response header".into(),
        })?;
        Ok(StorePosition {
            revision: header.revision(),
            cluster_id: header.cluster_id(),
        })
    }

    fn error(&self, e: etcd_client::Error) -> StoreError {
        etcd_error(&self.ctx, &self.metrics, e)
    }

    fn mapper(&self) -> Mapper {
        Mapper {
            prefix: self.subnets_prefix(),
        }
    }

    fn lease_of(&self, kv: &KeyValue) -> Option<Lease> {
        self.mapper().lease_of(kv)
    }

    async fn grant(&self, ttl: Duration) -> Result<(i64, Duration), StoreError> {
        let secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        let mut c = self.client.clone();
        let resp = self.timed("lease grant", c.lease_grant(secs, None)).await?;
        let granted = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
        Ok((resp.id(), granted))
    }

    /// Best-effort revoke; a lease that is already gone is fine.
    async fn revoke(&self, id: i64) {
        let mut c = self.client.clone();
        match self.timed("lease revoke", c.lease_revoke(id)).await {
            Ok(_) => {}
            Err(e) if is_lease_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(lease = id, error = %e, "could not revoke etcd lease; it will expire")
            }
        }
    }

    /// Revokes `id` unless keys still use it (after moving our key to a fresh lease).
    async fn revoke_if_unused(&self, id: i64) {
        let mut c = self.client.clone();
        let ttl = self
            .timed(
                "lease time-to-live",
                c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())),
            )
            .await;
        match ttl {
            Ok(r) if r.keys().is_empty() && r.ttl() > 0 => self.revoke(id).await,
            Ok(_) => {}
            Err(e) => tracing::debug!(lease = id, error = %e, "not revoking the old etcd lease"),
        }
    }

    fn current_from(&self, resp: &etcd_client::TxnResponse) -> Option<Lease> {
        resp.op_responses().iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| self.lease_of(kv)),
            _ => None,
        })
    }

    /// `create_if_absent`, plus, with `listed`, `mod_revision < listed + 1` over every
    /// subnet key (`etcdctl txn` compare with a prefix range): nothing under `subnets/` was
    /// written since the listing.
    async fn create_guarded(
        &self,
        lease: &Lease,
        ttl: Duration,
        listed: Option<Revision>,
    ) -> Result<CreateOutcome, StoreError> {
        let key = self.key_of(&lease.id());
        let (lease_id, granted) = self.grant(ttl).await?;
        let mut when = vec![Compare::version(key.as_str(), CompareOp::Equal, 0)];
        if let Some(rev) = listed {
            when.push(
                Compare::mod_revision(self.subnets_prefix().as_str(), CompareOp::Less, rev + 1)
                    .with_prefix(),
            );
        }
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(
                key.as_str(),
                lease.attrs.to_json(),
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut c = self.client.clone();
        let resp = match self.timed("create subnet", c.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                self.revoke(lease_id).await;
                return Err(e);
            }
        };
        if !resp.succeeded() {
            self.revoke(lease_id).await;
            // With the revision guard, a miss may be another key written since the listing.
            return Ok(CreateOutcome::Exists(self.current_from(&resp)));
        }
        let mut created = lease.clone();
        created.leased = true;
        created.lease_id = Some(lease_id);
        created.expiration = SystemTime::now().checked_add(granted);
        Ok(CreateOutcome::Created(created))
    }
}

impl LeaseStore for EtcdLeaseStore {
    fn config_location(&self) -> String {
        format!("{}/config", self.prefix)
    }

    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        let mut c = self.client.clone();
        let key = self.config_location();
        let resp = self.timed("get config", c.get(key.as_str(), None)).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => String::from_utf8(kv.value().to_vec())
                .map(Some)
                .map_err(|e| StoreError::Protocol {
                    op: "get config",
                    message: format!("{key} is not UTF-8: {e}"),
                }),
        }
    }

    async fn position(&self) -> Result<StorePosition, StoreError> {
        // Serializable: any live member answers at once, also during a leader election (a
        // linearizable read would fail until a new leader exists, and the watch resume
        // behind it would back off for seconds). A member that lags shows a slightly lower
        // revision; the manager confirms a suspected restore with `position_linearizable`.
        self.read_position(GetOptions::new().with_count_only().with_serializable())
            .await
    }

    async fn position_linearizable(&self) -> Result<StorePosition, StoreError> {
        self.read_position(GetOptions::new().with_count_only())
            .await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_LIST_BYTES);
        let prefix = self.subnets_prefix();
        let resp = self
            .timed(
                "list subnets",
                kv.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let pairs: Vec<(String, &[u8], i64)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let base = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                (base, kv.value(), kv.lease())
            })
            .collect();
        Ok(listing_from(
            pairs.iter().map(|(k, v, l)| (k.as_str(), *v, *l)),
            revision,
        ))
    }

    async fn get(&self, id: &SubnetId) -> Result<Option<Lease>, StoreError> {
        let mut c = self.client.clone();
        let resp = self
            .timed("get subnet", c.get(self.key_of(id), None))
            .await?;
        Ok(resp.kvs().first().and_then(|kv| self.lease_of(kv)))
    }

    async fn create_if_absent(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<CreateOutcome, StoreError> {
        self.create_guarded(lease, ttl, None).await
    }

    async fn create_if_unchanged(
        &self,
        lease: &Lease,
        ttl: Duration,
        listed: Revision,
    ) -> Result<CreateOutcome, StoreError> {
        self.create_guarded(lease, ttl, Some(listed)).await
    }

    async fn update(&self, lease: &Lease, ttl: Duration) -> Result<UpdateOutcome, StoreError> {
        let key = self.key_of(&lease.id());
        let expected = if lease.leased {
            match lease.lease_id {
                Some(id) if id != 0 => id,
                _ => {
                    return Err(StoreError::Protocol {
                        op: "update subnet",
                        message: format!("{key}: leased lease without a lease ID"),
                    });
                }
            }
        } else {
            0
        };
        let new = if lease.leased {
            Some(self.grant(ttl).await?)
        } else {
            None
        };
        let put_opts = new.map(|(id, _)| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([
                Compare::version(key.as_str(), CompareOp::Greater, 0),
                Compare::lease(key.as_str(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(key.as_str(), lease.attrs.to_json(), put_opts)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut c = self.client.clone();
        let resp = match self.timed("update subnet", c.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                if let Some((id, _)) = new {
                    self.revoke(id).await;
                }
                return Err(e);
            }
        };
        if !resp.succeeded() {
            if let Some((id, _)) = new {
                self.revoke(id).await;
            }
            return Ok(UpdateOutcome::Conflict(self.current_from(&resp)));
        }
        let mut updated = lease.clone();
        match new {
            Some((id, granted)) => {
                updated.lease_id = Some(id);
                updated.expiration = SystemTime::now().checked_add(granted);
                self.revoke_if_unused(expected).await;
            }
            None => {
                updated.lease_id = None;
                updated.expiration = None;
            }
        }
        Ok(UpdateOutcome::Updated(updated))
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<KeepAliveOutcome, StoreError> {
        let mut guard = self.keeper.lock().await;
        // Reuse the open stream for this lease, if any.
        if let Some((id, keeper, stream)) = guard.as_mut()
            && *id == lease_id
        {
            let round = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match self.timed("lease keep-alive", round).await {
                Ok(Some(resp)) if resp.ttl() > 0 => {
                    return Ok(KeepAliveOutcome::Alive {
                        ttl: Duration::from_secs(resp.ttl().unsigned_abs()),
                    });
                }
                Ok(Some(_)) => {
                    *guard = None;
                    return Ok(KeepAliveOutcome::Lost);
                }
                Ok(None) | Err(_) => {
                    // The stream broke: reopen it below.
                    *guard = None;
                }
            }
        }
        *guard = None;
        let mut c = self.client.clone();
        let (mut keeper, mut stream) = match self
            .timed("lease keep-alive", c.lease_keep_alive(lease_id))
            .await
        {
            Ok(pair) => pair,
            Err(e) if is_lease_not_found(&e) => {
                return Ok(KeepAliveOutcome::Lost);
            }
            Err(e) => return Err(e),
        };
        // Opening the stream refreshed the lease once; one more round reports the TTL.
        let round = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let ttl = match self.timed("lease keep-alive", round).await? {
            Some(resp) if resp.ttl() > 0 => Duration::from_secs(resp.ttl().unsigned_abs()),
            Some(_) => return Ok(KeepAliveOutcome::Lost),
            None => {
                return Err(StoreError::Protocol {
                    op: "lease keep-alive",
                    message: "etcd closed the keep-alive stream".into(),
                });
            }
        };
        *guard = Some((lease_id, keeper, stream));
        Ok(KeepAliveOutcome::Alive { ttl })
    }

    async fn delete(&self, lease: &Lease) -> Result<bool, StoreError> {
        let key = self.key_of(&lease.id());
        let expected = if lease.leased {
            lease.lease_id.unwrap_or(0)
        } else {
            0
        };
        if lease.leased && expected == 0 {
            return Ok(false);
        }
        let txn = Txn::new()
            .when([
                Compare::version(key.as_str(), CompareOp::Greater, 0),
                Compare::lease(key.as_str(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut c = self.client.clone();
        let resp = self.timed("delete subnet", c.txn(txn)).await?;
        if resp.succeeded() && expected != 0 {
            self.revoke(expected).await;
        }
        Ok(resp.succeeded())
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        let mut c = self.client.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_prev_key();
        let prefix = self.subnets_prefix();
        let ws = self
            .timed("watch subnets", c.watch(prefix.as_str(), Some(opts)))
            .await?;
        let this = self.mapper();
        let (ctx, metrics) = (self.ctx.clone(), self.metrics.clone());
        let stream = futures::stream::unfold(Some((ws, this)), move |state| {
            let (ctx, metrics) = (ctx.clone(), metrics.clone());
            async move {
                let (mut ws, this) = state?;
                loop {
                    let resp = match ws.message().await {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            let err = StoreError::WatchInterrupted("etcd closed the watch".into());
                            return Some((Err(err), None));
                        }
                        Err(e) => return Some((Err(etcd_error(&ctx, &metrics, e)), None)),
                    };
                    if resp.compact_revision() != 0 {
                        let batch = WatchBatch::Compacted {
                            compact_revision: resp.compact_revision(),
                        };
                        return Some((Ok(batch), None));
                    }
                    if resp.canceled() {
                        let err = StoreError::WatchInterrupted(format!(
                            "etcd cancelled the watch: {}",
                            resp.cancel_reason()
                        ));
                        return Some((Err(err), None));
                    }
                    if resp.events().is_empty() {
                        continue; // created / progress notification
                    }
                    let events: Vec<WatchEvent> =
                        resp.events().iter().filter_map(|e| this.map(e)).collect();
                    let revision = resp
                        .events()
                        .iter()
                        .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
                        .max()
                        .or_else(|| resp.header().map(|h| h.revision()))
                        .unwrap_or(0);
                    if events.is_empty() {
                        continue;
                    }
                    return Some((
                        Ok(WatchBatch::Events { events, revision }),
                        Some((ws, this)),
                    ));
                }
            }
        });
        Ok(stream.boxed())
    }
}

/// Turns etcd key/values and events into leases; owned by a watch stream, which outlives
/// the `&self` borrow of [`LeaseStore::watch`].
struct Mapper {
    prefix: String,
}

impl Mapper {
    fn decode_kv(&self, kv: &KeyValue) -> Decoded {
        let key = String::from_utf8_lossy(kv.key());
        let base = key.strip_prefix(self.prefix.as_str()).unwrap_or(&key);
        decode(base, kv.value(), kv.lease())
    }

    fn lease_of(&self, kv: &KeyValue) -> Option<Lease> {
        match self.decode_kv(kv) {
            Decoded::Lease(l) => Some(l),
            _ => None,
        }
    }

    fn map(&self, ev: &etcd_client::Event) -> Option<WatchEvent> {
        let kv = ev.kv()?;
        let prev = || ev.prev_kv().and_then(|p| self.lease_of(p));
        match ev.event_type() {
            EventType::Put => match self.decode_kv(kv) {
                Decoded::Lease(l) => Some(WatchEvent::Put(l)),
                Decoded::BadValue(id, e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e,
                        "unreadable lease value written; treating the subnet as gone for routing");
                    Some(WatchEvent::Delete { id, prev: prev() })
                }
                Decoded::BadKey(_) => None,
            },
            EventType::Delete => {
                let key = String::from_utf8_lossy(kv.key());
                let base = key.strip_prefix(self.prefix.as_str()).unwrap_or(&key);
                let id = ipam::lease::parse_subnet_key(base).ok()?;
                Some(WatchEvent::Delete { id, prev: prev() })
            }
        }
    }
}
