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
//! checks the files first; they are read again for each new connection, `members`).
//! `--etcd-username/--etcd-password` authenticate once at connect and again whenever etcd
//! says the token expired. Every failure becomes a
//! [`StoreError::Etcd`] whose message names the cause and what to fix
//! ([`super::etcd_error`]) and is counted by kind in [`StoreMetrics`].
//!
//! **Several endpoints.** The store talks to one member at a time and moves to the next
//! endpoint when that member fails a request (`members`; etcd-client's own balanced channel
//! kept choosing a dead member, etcdv3/etcd-client#39). A request that failed at one member is
//! sent to the next at once when that is safe ([`Resend`]), all of it within the request
//! timeout. A watch requires a leader, so a member cut off from the majority ends it; a
//! broken watch is re-opened by the manager on whichever member is in use then.
//! [`LeaseStore::position`] reads the revision and cluster ID, so that the
//! manager can tell a restored etcd from a reconnect.
//!
//! Connecting — the `--etcd-*` settings ([`EtcdConfig`]), their checks, TLS and auth options,
//! and the handshake probe that explains a failed request — lives in `connect`; this file
//! is the store's operations.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use futures::StreamExt;
use ipam::lease::{Lease, SubnetId, subnet_key};

use super::etcd_error::{EtcdContext, EtcdErrorKind, chain_text, classify};
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
mod members;

pub use connect::EtcdConfig;
use connect::{etcd_error, refine};
use members::{Members, Purpose};

/// A lease keep-alive stream kept open between rounds (see `EtcdLeaseStore::keeper`).
struct OpenKeepAlive {
    lease_id: i64,
    generation: u64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    /// The member's client, which keeps its connection up while the stream is in use also
    /// after the store moved to another member.
    _client: Client,
}

/// The etcd v3 [`LeaseStore`] (see the module docs).
pub struct EtcdLeaseStore {
    /// The member in use and its client ([`members`]).
    members: Arc<Members>,
    prefix: String,
    ctx: EtcdContext,
    endpoints: Vec<String>,
    metrics: Arc<StoreMetrics>,
    request_timeout: Duration,
    /// The open keep-alive stream: the lease it belongs to, the generation of the member
    /// it runs on ([`Members::failed`]), its sender and its responses.
    keeper: tokio::sync::Mutex<Option<OpenKeepAlive>>,
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

/// Whether a request that failed at one member may be sent to the next (see
/// [`EtcdLeaseStore::call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Reads, lease grants, revokes and keep-alives, watch opens: asking another member is
    /// harmless whatever the failed one did with the request (a grant it did apply leaves a
    /// lease with no key, which expires).
    Always,
    /// Writes (the compare-and-swap transactions): only when the failed member cannot have
    /// seen the request because no connection was made. A create that did apply, sent
    /// again, would find its own key and report it as another node's.
    IfNeverSent,
}

/// Whether a failure is the member's (down, unreachable, slow, without leader, or its TLS
/// refused), so that another member may answer, rather than etcd's verdict on the request.
fn is_member_failure(kind: EtcdErrorKind) -> bool {
    matches!(
        kind,
        EtcdErrorKind::Unreachable
            | EtcdErrorKind::Timeout
            | EtcdErrorKind::TlsUnknownCa
            | EtcdErrorKind::TlsServerName
            | EtcdErrorKind::TlsServerCertExpired
            | EtcdErrorKind::TlsClientRejected
            | EtcdErrorKind::TlsOther
    )
}

/// Whether the request cannot have reached etcd: the connection to the member was never
/// made (refused, no route, name not resolved). A reset or a timeout may come after the
/// member applied the request.
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = chain_text(e).to_ascii_lowercase();
    [
        "connect error",
        "connection refused",
        "no route to host",
        "network is unreachable",
        "dns error",
        "failed to lookup",
    ]
    .iter()
    .any(|n| text.contains(n))
}

/// The member picked in `generation` failed `op` (`why`): the store moves to the next one
/// ([`Members::failed`]), which `/metrics` counts and the log tells — a warning, at most one
/// per interval (`members::Moved::warn`), else a debug line. Nothing when another request had
/// already moved on.
fn move_on(members: &Members, metrics: &StoreMetrics, generation: u64, op: &str, why: &str) {
    let Some(moved) = members.failed(generation) else {
        return;
    };
    metrics.member_moved(&moved.to);
    let (from, to) = (moved.from.as_str(), moved.to.as_str());
    match moved.warn {
        Some(quiet) => tracing::warn!(
            failed = from,
            next = to,
            op,
            error = why,
            moves_since_last_warning = quiet,
            "etcd member failed; using the next endpoint of --etcd-endpoints"
        ),
        None => tracing::debug!(
            failed = from,
            next = to,
            op,
            error = why,
            "etcd member failed; using the next endpoint of --etcd-endpoints"
        ),
    }
}

impl EtcdLeaseStore {
    /// The counters this store reports failures to.
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }

    /// The client of the etcd member in use (tools and tests), connected (and
    /// authenticated) if it was not yet.
    pub async fn client(&self) -> Result<Client, StoreError> {
        self.call("connect", Resend::Always, |c| async move { Ok(c) })
            .await
    }

    /// The endpoint of the member in use.
    pub fn endpoint_in_use(&self) -> String {
        self.members.endpoint_in_use()
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

    /// Sends a request to the member in use, bounded by the request timeout as a whole.
    /// When that member fails it ([`is_member_failure`]), the store moves to the next
    /// member ([`Members::failed`]), and `request` is sent there at once if `resend` allows
    /// it and time is left, up to once per endpoint.
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        resend: Resend,
        mut request: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_member(op, resend, Purpose::Requests, |client, _| request(client))
            .await
    }

    /// [`call`](Self::call) for a request that opens a stream: `request` also gets the
    /// member's generation, to report a failure of the stream later ([`Members::failed`]).
    async fn call_member<T, F, Fut>(
        &self,
        op: &'static str,
        resend: Resend,
        purpose: Purpose,
        mut request: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client, u64) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut tries = 0;
        loop {
            tries += 1;
            // The member this attempt went to, for a timeout (while still connecting to it,
            // the one in use now).
            let picked = AtomicU64::new(self.members.generation());
            let attempt = async {
                let pick = self.members.pick(purpose).await?;
                picked.store(pick.generation, Ordering::Relaxed);
                request(pick.client, pick.generation)
                    .await
                    .map_err(|e| (pick.generation, e))
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err((generation, e))) => {
                    let kind = classify(&e);
                    if !is_member_failure(kind) {
                        return Err(self.explained(e).await);
                    }
                    self.member_failed(generation, op, &e);
                    let again = match resend {
                        Resend::Always => true,
                        Resend::IfNeverSent => never_sent(&e),
                    };
                    if again && tries < self.members.len() && tokio::time::Instant::now() < deadline
                    {
                        self.metrics.error(kind.label());
                        continue;
                    }
                    return Err(self.explained(e).await);
                }
                Err(_) => return Err(self.timed_out(picked.load(Ordering::Relaxed), op)),
            }
        }
    }

    /// Bounds a round on an open stream (the lease keep-alive) by the request timeout; a
    /// failure that is the member's moves the store on, as in [`call`](Self::call).
    async fn timed<T>(
        &self,
        op: &'static str,
        generation: u64,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                if is_member_failure(classify(&e)) {
                    self.member_failed(generation, op, &e);
                }
                Err(self.explained(e).await)
            }
            Err(_) => Err(self.timed_out(generation, op)),
        }
    }

    /// A failed request as a [`StoreError`], counted, and explained by a TLS handshake probe
    /// where gRPC's text hides the cause ([`refine`]).
    async fn explained(&self, e: etcd_client::Error) -> StoreError {
        let e = self.error(e);
        let tls = self.members.tls_material();
        refine(e, &self.ctx, &self.endpoints, tls.as_ref()).await
    }

    /// A request to the member picked in `generation` got no answer in time: counted, and
    /// the store moves to the next member.
    fn timed_out(&self, generation: u64, op: &'static str) -> StoreError {
        move_on(
            &self.members,
            &self.metrics,
            generation,
            op,
            "no answer in time",
        );
        self.metrics.error(EtcdErrorKind::Timeout.label());
        StoreError::Timeout {
            op,
            after: self.request_timeout,
        }
    }

    fn member_failed(&self, generation: u64, op: &str, e: &etcd_client::Error) {
        move_on(&self.members, &self.metrics, generation, op, &chain_text(e));
    }

    /// Sends one of the compare-and-swap transactions (a write: see [`Resend::IfNeverSent`]).
    async fn send_txn(&self, op: &'static str, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.call(op, Resend::IfNeverSent, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    async fn read_position(&self, opts: GetOptions) -> Result<StorePosition, StoreError> {
        let key = self.config_location();
        let resp = self
            .call("read revision", Resend::Always, |mut c| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { c.get(key, Some(opts)).await }
            })
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
        let resp = self
            .call("lease grant", Resend::Always, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        let granted = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
        Ok((resp.id(), granted))
    }

    /// Best-effort revoke; a lease that is already gone is fine.
    async fn revoke(&self, id: i64) {
        let revoked = self
            .call("lease revoke", Resend::Always, |mut c| async move {
                c.lease_revoke(id).await
            })
            .await;
        match revoked {
            Ok(_) => {}
            Err(e) if is_lease_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(lease = id, error = %e, "could not revoke etcd lease; it will expire")
            }
        }
    }

    /// Revokes `id` unless keys still use it (after moving our key to a fresh lease).
    async fn revoke_if_unused(&self, id: i64) {
        let ttl = self
            .call("lease time-to-live", Resend::Always, |mut c| async move {
                let opts = LeaseTimeToLiveOptions::new().with_keys();
                c.lease_time_to_live(id, Some(opts)).await
            })
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
        let resp = match self.send_txn("create subnet", txn).await {
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
        let key = self.config_location();
        let resp = self
            .call("get config", Resend::Always, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
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
        let prefix = self.subnets_prefix();
        let resp = self
            .call("list subnets", Resend::Always, |c| {
                let mut kv = c.kv_client().max_decoding_message_size(MAX_LIST_BYTES);
                let prefix = prefix.clone();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
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
        let key = self.key_of(id);
        let resp = self
            .call("get subnet", Resend::Always, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
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
        let resp = match self.send_txn("update subnet", txn).await {
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
        if let Some(open) = guard.as_mut()
            && open.lease_id == lease_id
        {
            let round = async {
                open.keeper.keep_alive().await?;
                open.stream.message().await
            };
            match self.timed("lease keep-alive", open.generation, round).await {
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
        let opened = self
            .call_member(
                "lease keep-alive",
                Resend::Always,
                Purpose::Requests,
                |mut c, generation| async move {
                    let (keeper, stream) = c.lease_keep_alive(lease_id).await?;
                    Ok((generation, keeper, stream, c))
                },
            )
            .await;
        let (generation, mut keeper, mut stream, client) = match opened {
            Ok(open) => open,
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
        let ttl = match self.timed("lease keep-alive", generation, round).await? {
            Some(resp) if resp.ttl() > 0 => Duration::from_secs(resp.ttl().unsigned_abs()),
            Some(_) => return Ok(KeepAliveOutcome::Lost),
            None => {
                return Err(StoreError::Protocol {
                    op: "lease keep-alive",
                    message: "etcd closed the keep-alive stream".into(),
                });
            }
        };
        *guard = Some(OpenKeepAlive {
            lease_id,
            generation,
            keeper,
            stream,
            _client: client,
        });
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
        let resp = self.send_txn("delete subnet", txn).await?;
        if resp.succeeded() && expected != 0 {
            self.revoke(expected).await;
        }
        Ok(resp.succeeded())
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_prev_key();
        let prefix = self.subnets_prefix();
        // The stream keeps its member's client: moving to another member does not cut a
        // watch that still works.
        let (client, generation, ws) = self
            .call_member(
                "watch subnets",
                Resend::Always,
                Purpose::Watch,
                |mut c, generation| {
                    let (prefix, opts) = (prefix.clone(), opts.clone());
                    async move {
                        let ws = c.watch(prefix, Some(opts)).await?;
                        Ok((c, generation, ws))
                    }
                },
            )
            .await?;
        let this = self.mapper();
        let (ctx, metrics, members) =
            (self.ctx.clone(), self.metrics.clone(), self.members.clone());
        let stream = futures::stream::unfold(Some((ws, this, client)), move |state| {
            let (ctx, metrics, members) = (ctx.clone(), metrics.clone(), members.clone());
            async move {
                let (mut ws, this, client) = state?;
                loop {
                    let resp = match ws.message().await {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            let err = StoreError::WatchInterrupted("etcd closed the watch".into());
                            return Some((Err(err), None));
                        }
                        Err(e) => {
                            if is_member_failure(classify(&e)) {
                                let why = chain_text(&e);
                                move_on(&members, &metrics, generation, "watch subnets", &why);
                            }
                            return Some((Err(etcd_error(&ctx, &metrics, e)), None));
                        }
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
                        Some((ws, this, client)),
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
