//! # shutdown — the daemon's one cancellation rule
//!
//! Every long-running loop and every retry wait of the daemon stops the same way: on a
//! [`Shutdown`] (a `CancellationToken`, or a `watch` channel in tests), and waits through
//! [`Shutdown::sleep`], which returns early when shutdown is requested.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What stops the long-running loops ([`crate::subnet::SubnetManager::run_lease_keeper`],
/// [`crate::subnet::SubnetManager::run_watch`], the daemon's retry loops): a `tokio::sync::watch::Receiver<bool>` (stop once `true` is
/// sent or the sender is dropped) or a `tokio_util` `CancellationToken`. Both convert with
/// `.into()`.
#[derive(Debug, Clone)]
pub enum Shutdown {
    /// Stop when the value becomes `true` or the sender is dropped.
    Watch(watch::Receiver<bool>),
    /// Stop when the token is cancelled.
    Token(CancellationToken),
}

impl From<watch::Receiver<bool>> for Shutdown {
    fn from(rx: watch::Receiver<bool>) -> Self {
        Shutdown::Watch(rx)
    }
}

impl From<CancellationToken> for Shutdown {
    fn from(t: CancellationToken) -> Self {
        Shutdown::Token(t)
    }
}

impl Shutdown {
    /// Whether shutdown was requested already.
    pub fn is_requested(&self) -> bool {
        match self {
            Shutdown::Watch(rx) => *rx.borrow() || rx.has_changed().is_err(),
            Shutdown::Token(t) => t.is_cancelled(),
        }
    }

    /// Resolves once shutdown is requested.
    pub async fn requested(&mut self) {
        match self {
            Shutdown::Watch(rx) => loop {
                if *rx.borrow_and_update() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            },
            Shutdown::Token(t) => t.cancelled().await,
        }
    }

    /// Sleeps for `d`; returns `true` if shutdown was requested meanwhile.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.requested() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}
