//! # metrics — counters of the control plane's conversation with etcd
//!
//! One [`StoreMetrics`] is shared (behind an `Arc`) by the etcd store, which counts failed
//! requests by [`EtcdErrorKind`](super::etcd_error::EtcdErrorKind), and the subnet manager,
//! which counts watch restarts, re-lists, detected restores, renewals and re-acquisitions and
//! remembers when the lease was last renewed. [`StoreMetrics::render`] prints them in the
//! Prometheus text format for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Control-plane counters (see the module docs).
#[derive(Debug, Default)]
pub struct StoreMetrics {
    errors: Mutex<BTreeMap<&'static str, u64>>,
    watch_restarts: AtomicU64,
    relists: AtomicU64,
    restores_detected: AtomicU64,
    renewals: AtomicU64,
    reacquisitions: AtomicU64,
    last_renewal: Mutex<Option<Instant>>,
    member_moves: AtomicU64,
    /// The etcd endpoint the store uses now.
    member: Mutex<Option<String>>,
}

/// A snapshot of the counters (tests, logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Failed requests by kind label.
    pub errors: BTreeMap<&'static str, u64>,
    /// Watches re-opened after they broke.
    pub watch_restarts: u64,
    /// Full listings after the first (compaction, restore).
    pub relists: u64,
    /// Times the store was seen restored from a snapshot or replaced.
    pub restores_detected: u64,
    /// Successful TTL renewals of our lease.
    pub renewals: u64,
    /// Times our lease was acquired again after being lost.
    pub reacquisitions: u64,
    /// Times the store moved to the next etcd endpoint because the member in use failed.
    pub member_moves: u64,
}

impl StoreMetrics {
    /// Counts one failed request of `kind` (an `EtcdErrorKind` label).
    pub fn error(&self, kind: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    /// Records the etcd endpoint the store starts with.
    pub fn member_in_use(&self, endpoint: &str) {
        *self.member.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoint.to_string());
    }

    /// Counts a move to the next etcd endpoint, `to`.
    pub fn member_moved(&self, to: &str) {
        self.member_moves.fetch_add(1, Ordering::Relaxed);
        self.member_in_use(to);
    }

    /// Counts a watch re-opened after it broke.
    pub fn watch_restart(&self) {
        self.watch_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a re-list.
    pub fn relist(&self) {
        self.relists.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a detected restore (revision went back, cluster ID changed).
    pub fn restore_detected(&self) {
        self.restores_detected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a successful renewal (or acquisition) and remembers when it happened.
    pub fn renewed(&self) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
        self.touch_renewal();
    }

    /// Counts a re-acquisition.
    pub fn reacquired(&self) {
        self.reacquisitions.fetch_add(1, Ordering::Relaxed);
        self.touch_renewal();
    }

    /// Marks the lease as freshly confirmed (acquired) without counting a renewal.
    pub fn touch_renewal(&self) {
        *self.last_renewal.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Seconds since the lease was last acquired or renewed.
    pub fn seconds_since_renewal(&self) -> Option<f64> {
        self.last_renewal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64())
    }

    /// The counters now.
    pub fn counts(&self) -> StoreCounts {
        StoreCounts {
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            watch_restarts: self.watch_restarts.load(Ordering::Relaxed),
            relists: self.relists.load(Ordering::Relaxed),
            restores_detected: self.restores_detected.load(Ordering::Relaxed),
            renewals: self.renewals.load(Ordering::Relaxed),
            reacquisitions: self.reacquisitions.load(Ordering::Relaxed),
            member_moves: self.member_moves.load(Ordering::Relaxed),
        }
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let c = self.counts();
        let mut out = String::new();
        out.push_str(
            "# HELP flannel_etcd_request_errors_total Failed etcd requests by cause.\n\
             # TYPE flannel_etcd_request_errors_total counter\n",
        );
        for (kind, n) in &c.errors {
            let _ = writeln!(
                out,
                "flannel_etcd_request_errors_total{{kind=\"{kind}\"}} {n}"
            );
        }
        let counters = [
            (
                "flannel_etcd_watch_restarts_total",
                "Subnet watches re-opened after they broke.",
                c.watch_restarts,
            ),
            (
                "flannel_etcd_relists_total",
                "Full re-reads of the subnet directory after the first (compaction, restore).",
                c.relists,
            ),
            (
                "flannel_etcd_restores_detected_total",
                "Times etcd was seen restored from a snapshot or replaced.",
                c.restores_detected,
            ),
            (
                "flannel_etcd_member_moves_total",
                "Times the store moved to the next etcd endpoint because the member in use failed.",
                c.member_moves,
            ),
            (
                "flannel_lease_renewals_total",
                "Successful renewals of this node's subnet lease.",
                c.renewals,
            ),
            (
                "flannel_lease_reacquisitions_total",
                "Times this node's subnet lease was acquired again after being lost.",
                c.reacquisitions,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        if let Some(endpoint) = self
            .member
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
        {
            let _ = writeln!(
                out,
                "# HELP flannel_etcd_member_in_use The etcd endpoint the store talks to now.\n\
                 # TYPE flannel_etcd_member_in_use gauge\n\
                 flannel_etcd_member_in_use{{endpoint=\"{endpoint}\"}} 1"
            );
        }
        if let Some(s) = self.seconds_since_renewal() {
            let _ = writeln!(
                out,
                "# HELP flannel_lease_seconds_since_renewal Seconds since the subnet lease \
                 was last acquired or renewed.\n\
                 # TYPE flannel_lease_seconds_since_renewal gauge\n\
                 flannel_lease_seconds_since_renewal {s:.3}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_counter() {
        let m = StoreMetrics::default();
        m.error("tls_unknown_ca");
        m.error("tls_unknown_ca");
        m.error("unreachable");
        m.watch_restart();
        m.relist();
        m.renewed();
        let text = m.render();
        assert!(!text.contains("flannel_etcd_member_in_use"), "{text}");
        m.member_in_use("https://198.18.0.201:2379");
        m.member_moved("https://198.18.0.202:2379");
        let text = m.render();
        assert!(text.contains("flannel_etcd_member_moves_total 1"), "{text}");
        assert!(
            text.contains("flannel_etcd_member_in_use{endpoint=\"https://198.18.0.202:2379\"} 1"),
            "{text}"
        );
        assert!(text.contains("flannel_etcd_request_errors_total{kind=\"tls_unknown_ca\"} 2"));
        assert!(text.contains("flannel_etcd_request_errors_total{kind=\"unreachable\"} 1"));
        assert!(text.contains("flannel_etcd_watch_restarts_total 1"));
        assert!(text.contains("flannel_etcd_relists_total 1"));
        assert!(text.contains("flannel_lease_renewals_total 1"));
        assert!(text.contains("flannel_lease_reacquisitions_total 0"));
        assert!(text.contains("flannel_lease_seconds_since_renewal 0."));
    }
}
