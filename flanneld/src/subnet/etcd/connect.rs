//! Connecting: the `--etcd-*` settings ([`EtcdConfig`]), their checks, the client's TLS and
//! auth options, and how a failed request is explained (a TLS handshake probe names what a
//! bare "connection closed" hides).

use std::borrow::Borrow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::ConnectOptions;

use super::members::{Members, TlsSource};
use super::{DEFAULT_PREFIX, EtcdLeaseStore};
use crate::subnet::etcd_error::{EtcdContext, EtcdErrorKind, chain_text, classify};
use crate::subnet::etcd_tls::{TlsFiles, TlsMaterial, probe_handshake};
use crate::subnet::{StoreError, StoreMetrics};

/// How to reach etcd (flannel's `--etcd-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix, `/coreos.com/network` by default.
    pub prefix: String,
    /// Basic-auth user name (`--etcd-username`).
    pub username: Option<String>,
    /// Basic-auth password (`--etcd-password`).
    pub password: Option<String>,
    /// CA bundle that verifies the servers (`--etcd-cafile`); system roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS (`--etcd-certfile`).
    pub cert_file: Option<PathBuf>,
    /// Key of the client certificate (`--etcd-keyfile`).
    pub key_file: Option<PathBuf>,
    /// Bound on each unary request (get, txn, grant, ...).
    pub request_timeout: Duration,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Which endpoint to try first. `None` (the default): one chosen at random, so that the
    /// nodes of a cluster spread over the members instead of all using the first one
    /// (each node stays with its member while it answers). `Some(i)`: endpoint `i` (tests).
    pub first_endpoint: Option<usize>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec![
                "http://127.0.0.1:4001".into(),
                "http://127.0.0.1:2379".into(),
            ],
            prefix: DEFAULT_PREFIX.into(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            first_endpoint: None,
        }
    }
}

impl EtcdConfig {
    /// What error messages name.
    pub fn context(&self) -> EtcdContext {
        EtcdContext {
            endpoints: self.endpoints.join(","),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            username: self.username.clone(),
            prefix: self.prefix.trim_end_matches('/').to_string(),
        }
    }

    fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

/// Turns a client error into a [`StoreError::Etcd`] with an explanation, counting it.
pub(super) fn etcd_error(
    ctx: &EtcdContext,
    metrics: &StoreMetrics,
    e: etcd_client::Error,
) -> StoreError {
    let kind = classify(&e);
    metrics.error(kind.label());
    StoreError::Etcd {
        kind,
        message: ctx.explain(kind, &chain_text(&e)),
        source: e,
    }
}

/// How long the handshake probe of [`refine`] may take per endpoint.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Over TLS, gRPC reports a server that rejects our client certificate after a TLS 1.3
/// handshake as a bare "connection closed", which reads like an outage. When a request fails
/// that way, each endpoint gets one TLS handshake of our own ([`probe_handshake`]); if one
/// of them names a TLS cause, the error is re-filed under it and names that endpoint.
pub(super) async fn refine(
    e: StoreError,
    ctx: &EtcdContext,
    endpoints: &[String],
    tls: Option<&TlsMaterial>,
) -> StoreError {
    let (Some(tls), StoreError::Etcd { kind, source, .. }) = (tls, &e) else {
        return e;
    };
    if !matches!(kind, EtcdErrorKind::Unreachable | EtcdErrorKind::Other) {
        return e;
    }
    for ep in endpoints {
        let Some((host, port)) = host_port(ep) else {
            continue;
        };
        let Err(why) = probe_handshake(&host, port, tls, PROBE_TIMEOUT).await else {
            continue;
        };
        let refined = crate::subnet::etcd_error::classify_text(&why);
        if refined == EtcdErrorKind::Unreachable || refined == EtcdErrorKind::Other {
            continue;
        }
        let ep_ctx = EtcdContext {
            endpoints: ep.clone(),
            ..ctx.clone()
        };
        let raw = format!("{why}; the request failed with: {}", chain_text(source));
        let StoreError::Etcd { source, .. } = e else {
            unreachable!("matched above")
        };
        return StoreError::Etcd {
            kind: refined,
            message: ep_ctx.explain(refined, &raw),
            source,
        };
    }
    e
}

/// A number that differs from process to process (std's hasher keys are random per
/// process): where a node starts in the endpoint list.
fn random_index() -> usize {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as usize
}

/// `https://host:port/...` → (`host`, `port`); IPv6 hosts lose their brackets.
fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

impl EtcdLeaseStore {
    /// Connects to etcd. Without a user name the connection is lazy: this succeeds while etcd
    /// is down and calls fail (and are retried by the manager) until it is reachable; with
    /// one, etcd-client authenticates at once, so a wrong password fails here.
    ///
    /// Errors: [`StoreError::Config`] for settings no retry can fix (no endpoints, a scheme
    /// other than http/https, a password without user name), [`StoreError::TlsFile`] for a
    /// TLS file that is missing, malformed or expired, [`StoreError::Etcd`] when
    /// authenticating fails.
    pub async fn connect(cfg: impl Borrow<EtcdConfig>) -> Result<Self, StoreError> {
        Self::connect_with_metrics(cfg, Arc::default()).await
    }

    /// [`connect`](Self::connect), counting failures into `metrics`.
    pub async fn connect_with_metrics(
        cfg: impl Borrow<EtcdConfig>,
        metrics: Arc<StoreMetrics>,
    ) -> Result<Self, StoreError> {
        let cfg: &EtcdConfig = cfg.borrow();
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Config(
                "no etcd endpoints given (--etcd-endpoints)".into(),
            ));
        }
        let mut https = 0;
        for ep in &cfg.endpoints {
            let lower = ep.trim().to_ascii_lowercase();
            if lower.starts_with("https://") {
                https += 1;
            } else if !lower.starts_with("http://") {
                return Err(StoreError::Config(format!(
                    "--etcd-endpoints: {ep:?} must start with http:// or https://"
                )));
            }
        }
        if https != 0 && https != cfg.endpoints.len() {
            return Err(StoreError::Config(format!(
                "--etcd-endpoints mixes http:// and https:// ({}); use one scheme",
                cfg.endpoints.join(",")
            )));
        }
        let tls = cfg.tls_files();
        if https == 0 && tls.any() {
            tracing::warn!(
                endpoints = %cfg.endpoints.join(","),
                "--etcd-cafile/--etcd-certfile/--etcd-keyfile are ignored for http:// endpoints; \
                 use https:// to talk TLS"
            );
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let mut tls_source = None;
        if https > 0 {
            // Read once here so that a bad file fails the start; again at each connection.
            let loaded = tls.load(SystemTime::now()).inspect_err(|e| {
                metrics.error(e.kind);
            })?;
            tls_source = Some(TlsSource::new(tls, loaded));
        }
        match (&cfg.username, &cfg.password) {
            (Some(u), p) => opts = opts.with_user(u.clone(), p.clone().unwrap_or_default()),
            (None, Some(_)) => {
                return Err(StoreError::Config(
                    "--etcd-password given without --etcd-username".into(),
                ));
            }
            (None, None) => {}
        }
        let ctx = cfg.context();
        let endpoints: Vec<String> = cfg.endpoints.iter().map(|e| e.trim().to_string()).collect();
        let authenticate = cfg.username.is_some();
        let first = cfg.first_endpoint.unwrap_or_else(random_index) % endpoints.len();
        metrics.member_in_use(&endpoints[first]);
        let store = Self {
            members: Arc::new(Members::new(endpoints.clone(), first, opts, tls_source)),
            prefix: cfg.prefix.trim_end_matches('/').to_string(),
            ctx,
            endpoints,
            metrics,
            request_timeout: cfg.request_timeout,
            keeper: tokio::sync::Mutex::new(None),
        };
        if authenticate {
            // Connecting authenticates: a wrong password fails here, and a member that is
            // down is passed over for the next.
            store.client().await.map_err(|e| match e {
                StoreError::Timeout { after, .. } => StoreError::Timeout {
                    op: "connect (authenticate)",
                    after,
                },
                e => e,
            })?;
        }
        Ok(store)
    }
}
