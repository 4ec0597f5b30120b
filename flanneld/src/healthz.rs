//! # healthz — `/healthz` and `/readyz` on `--healthz-ip:--healthz-port`
//!
//! `/healthz` answers 200 while the process runs. `/readyz` answers 200 only once the daemon
//! has written subnet.env with the backend and the rules in place, 503 before (and again when
//! the own lease is lost until it is re-acquired). `/metrics` prints the backend's counters in
//! Prometheus text format (e.g. the udp backend's dropped datagrams), once a backend is up. A minimal HTTP/1.0 responder — one request
//! per connection, no keep-alive — so that the daemon needs no HTTP stack.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Renders the backend's counters (Prometheus text format), set once the backend exists.
pub type MetricsSource = Arc<OnceLock<Box<dyn Fn() -> String + Send + Sync>>>;

/// The status line and body for a request path.
pub fn respond(path: &str, ready: bool, metrics: &MetricsSource) -> (&'static str, String) {
    match path {
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" if ready => ("200 OK", "ready\n".into()),
        "/readyz" => ("503 Service Unavailable", "not ready\n".into()),
        "/metrics" => match metrics.get() {
            Some(render) => ("200 OK", render()),
            None => ("503 Service Unavailable", "backend not set up yet\n".into()),
        },
        _ => ("404 Not Found", "not found\n".into()),
    }
}

/// Binds `addr` (fails at once if it cannot, so the daemon reports a clear error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves health checks on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    metrics: MetricsSource,
    cancel: CancellationToken,
) {
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
        let ready = ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = respond(path, ready.load(Ordering::SeqCst), &metrics);
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
    fn readyz_follows_the_flag_and_metrics_the_backend() {
        let m = MetricsSource::default();
        assert_eq!(respond("/healthz", false, &m).0, "200 OK");
        assert_eq!(respond("/readyz", false, &m).0, "503 Service Unavailable");
        assert_eq!(respond("/readyz", true, &m).0, "200 OK");
        assert_eq!(respond("/other", true, &m).0, "404 Not Found");
        assert_eq!(respond("/metrics", true, &m).0, "503 Service Unavailable");
        let _ = m.set(Box::new(|| "flannel_udp_rx_dropped_total 3\n".to_string()));
        assert_eq!(
            respond("/metrics", true, &m),
            ("200 OK", "flannel_udp_rx_dropped_total 3\n".to_string())
        );
    }
}
