//! # notify — systemd's readiness protocol (`Type=notify`), without libsystemd
//!
//! Under `Type=notify`, systemd starts the units ordered after flanneld (containerd, kubelet)
//! only when flanneld sends `READY=1` on the datagram socket named by `$NOTIFY_SOCKET`. We send
//! it once subnet.env is written — never earlier, so nothing that reads subnet.env can start
//! too soon — and `STATUS=<line>` whenever the reason we are not ready changes ("waiting for
//! the network config at ...", "waiting for etcd: TLS: ..."), which `systemctl status` shows.
//! With `WatchdogSec=` set, systemd passes `$WATCHDOG_USEC`; [`spawn_watchdog`] then sends
//! `WATCHDOG=1` at half that period from the daemon's own runtime, so a wedged event loop
//! stops the pings and systemd restarts the service.
//!
//! `$NOTIFY_SOCKET` is a path, or an abstract socket when it starts with `@`. Without it every
//! call is a no-op, so flanneld runs the same outside systemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A connection to systemd's notification socket (see the module docs).
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
    last_status: Mutex<String>,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, if set and usable.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        Self::new(&path.to_string_lossy())
            .inspect_err(|e| tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable"))
            .ok()
    }

    /// A notifier sending to `addr` (a path, or `@name` for an abstract socket).
    pub fn new(addr: &str) -> std::io::Result<Notifier> {
        let target = match addr.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(addr)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
            last_status: Mutex::new(String::new()),
        })
    }

    /// Sends one notification (`KEY=value` lines). Failures are logged, never fatal.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.target) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// `STATUS=<line>`, only when it differs from the last one sent.
    pub fn status(&self, line: &str) {
        let mut last = self.last_status.lock().unwrap_or_else(|p| p.into_inner());
        if *last != line {
            line.clone_into(&mut last);
            drop(last);
            self.send(&format!("STATUS={}", line.replace('\n', " ")));
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        *self.last_status.lock().unwrap_or_else(|p| p.into_inner()) = status.to_string();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

/// The watchdog period systemd asked for, if any and if it is meant for this process.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings `WATCHDOG=1` every half period until `cancel` fires.
pub fn spawn_watchdog(notifier: std::sync::Arc<Notifier>, cancel: CancellationToken) {
    let Some(period) = watchdog_period() else {
        return;
    };
    tracing::info!(?period, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => notifier.send("WATCHDOG=1"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_and_status_is_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.status("waiting for etcd");
        n.status("waiting for etcd");
        n.status("acquiring a subnet lease");
        n.ready("ready: 10.244.3.0/24");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            let len = rx.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(
            got,
            [
                "STATUS=waiting for etcd",
                "STATUS=acquiring a subnet lease",
                "READY=1\nSTATUS=ready: 10.244.3.0/24"
            ]
        );
        rx.set_nonblocking(true).unwrap();
        assert!(rx.recv(&mut buf).is_err(), "no duplicate STATUS");
    }

    #[test]
    fn abstract_sockets_are_supported() {
        let name = format!("flannel-rs-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Notifier::new(&format!("@{name}")).unwrap().send("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }
}
