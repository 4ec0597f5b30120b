//! # healthz — `/healthz`, `/readyz` and `/metrics` on `--healthz-ip:--healthz-port`
//!
//! * `/healthz` answers 200 while the process runs — also while etcd is unreachable: the data
//!   plane keeps forwarding with the last known state, so restarting flanneld would not help.
//! * `/readyz` answers 200 once the daemon has written subnet.env with the backend and the
//!   rules in place; before that (and again while the own lease is lost) 503 with the reason,
//!   e.g. `not ready: waiting for etcd: TLS: ...` or `not ready: re-acquiring the lease`.
//! * `/metrics` prints the control plane's counters ([`StoreMetrics`]: etcd errors by kind,
//!   watch restarts, re-lists, renewals, re-acquisitions, seconds since the last renewal) and,
//!   once a backend is up, the backend's (e.g. the udp backend's dropped datagrams), in the
//!   Prometheus text format.
//!
//! A minimal HTTP/1.0 responder — one request per connection, no keep-alive — so that the
//! daemon needs no HTTP stack.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::subnet::StoreMetrics;

/// Renders a backend's counters (Prometheus text format).
pub type BackendMetrics = Box<dyn Fn() -> String + Send + Sync>;

/// What the health endpoints report, shared between the daemon and the server.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    reason: Mutex<String>,
    backend: OnceLock<BackendMetrics>,
    store: Arc<StoreMetrics>,
    /// systemd's notification socket: readiness and status lines go there too.
    notifier: Option<Arc<crate::notify::Notifier>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.is_ready())
            .field("reason", &self.reason())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Not ready yet ("starting"), reporting `store`'s counters.
    pub fn new(store: Arc<StoreMetrics>) -> Self {
        Self {
            reason: Mutex::new("starting".into()),
            store,
            ..Self::default()
        }
    }

    /// Also reports readiness (`READY=1`) and reasons (`STATUS=`) to systemd.
    pub fn with_notifier(mut self, notifier: Option<Arc<crate::notify::Notifier>>) -> Self {
        if let Some(n) = &notifier {
            n.status("starting");
        }
        self.notifier = notifier;
        self
    }

    /// The control-plane counters.
    pub fn store_metrics(&self) -> &Arc<StoreMetrics> {
        &self.store
    }

    /// Marks the node ready (`status` is what systemd shows, e.g. the subnet).
    pub fn set_ready(&self, status: &str) {
        self.ready.store(true, Ordering::SeqCst);
        if let Some(n) = &self.notifier {
            n.ready(status);
        }
    }

    /// Marks the node not ready, saying why (shown by `/readyz`). Only the last reason is
    /// kept; it is replaced as the daemon moves on.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let reason = reason.into();
        if let Some(n) = &self.notifier {
            n.status(&format!("not ready: {reason}"));
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Updates the reason without changing readiness (while still starting).
    pub fn waiting_for(&self, reason: impl Into<String>) {
        if !self.is_ready() {
            let reason = reason.into();
            if let Some(n) = &self.notifier {
                n.status(&reason);
            }
            *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        }
    }

    /// Whether the node is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Why the node is not ready.
    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the backend's metrics (once).
    pub fn set_backend_metrics(&self, f: BackendMetrics) {
        let _ = self.backend.set(f);
    }

    /// The `/metrics` page.
    pub fn render_metrics(&self) -> String {
        let mut out = self.store.render();
        if let Some(render) = self.backend.get() {
            out.push_str(&render());
        }
        out
    }
}

/// The status line and body for a request path.
pub fn respond(path: &str, health: &Health) -> (&'static str, String) {
    match path {
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" if health.is_ready() => ("200 OK", "ready\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            format!("not ready: {}\n", health.reason()),
        ),
        "/metrics" => ("200 OK", health.render_metrics()),
        _ => ("404 Not Found", "not found\n".into()),
    }
}

/// Binds `addr` (fails at once if it cannot, so the daemon reports a clear error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves health checks on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, health: Arc<Health>, cancel: CancellationToken) {
    loop {
        let mut sock = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "healthz accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = respond(path, &health);
            let response = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_says_why_and_metrics_show_store_and_backend() {
        let h = Health::new(Arc::default());
        assert_eq!(respond("/healthz", &h).0, "200 OK");
        assert_eq!(
            respond("/readyz", &h),
            ("503 Service Unavailable", "not ready: starting\n".into())
        );
        h.waiting_for("waiting for etcd: no etcd member answered");
        assert!(respond("/readyz", &h).1.contains("waiting for etcd"));
        h.set_ready("ready");
        assert_eq!(respond("/readyz", &h).0, "200 OK");
        h.waiting_for("ignored once ready");
        assert_eq!(respond("/readyz", &h).0, "200 OK");
        h.set_not_ready("own lease lost; re-acquiring");
        assert_eq!(
            respond("/readyz", &h).1,
            "not ready: own lease lost; re-acquiring\n"
        );
        assert_eq!(respond("/other", &h).0, "404 Not Found");
        h.store_metrics().error("unreachable");
        let (status, body) = respond("/metrics", &h);
        assert_eq!(status, "200 OK");
        assert!(body.contains("flannel_etcd_request_errors_total{kind=\"unreachable\"} 1"));
        h.set_backend_metrics(Box::new(|| "flannel_udp_rx_dropped_total 3\n".to_string()));
        assert!(
            respond("/metrics", &h)
                .1
                .ends_with("flannel_udp_rx_dropped_total 3\n")
        );
    }
}
