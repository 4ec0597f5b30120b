//! The levers tests pull: write reservations and unreadable values, delete keys behind the
//! policy's back, move the manual clock, compact, snapshot and restore, break watches,
//! inject failures, and read the store's state.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ipam::lease::{Lease, SubnetId, subnet_key};

use super::{MemoryLeaseStore, MemorySnapshot, Msg};
use crate::subnet::Revision;

impl MemoryLeaseStore {
    /// Writes `lease` as a **reservation** (a key without TTL lease), overwriting any value.
    /// Returns the new revision.
    pub fn put_reservation(&self, lease: &Lease) -> Revision {
        let mut st = self.lock();
        self.put_entry(&mut st, &lease.key(), lease.attrs.to_json().into_bytes(), 0)
    }

    /// Writes a raw value under the key basename `key` (e.g. `10.244.9.0-24`), without TTL.
    /// For tests of unreadable values. Returns the new revision.
    pub fn put_raw(&self, key: &str, value: &[u8]) -> Revision {
        let mut st = self.lock();
        self.put_entry(&mut st, key, value.to_vec(), 0)
    }

    /// Deletes the key of `id` unconditionally (an operator's `etcdctl del`), keeping its TTL
    /// lease. Returns whether it existed.
    pub fn delete_key(&self, id: &SubnetId) -> bool {
        let key = subnet_key(&id.0, id.1.as_ref());
        let mut st = self.lock();
        match Self::delete_entry(&key, &mut st) {
            Some(ev) => {
                self.commit(&mut st, vec![ev]);
                true
            }
            None => false,
        }
    }

    /// Advances the manual clock; every TTL lease now overdue is revoked and its keys are
    /// deleted (one revision per lease, like etcd). Returns how many leases expired.
    pub fn advance(&self, by: Duration) -> usize {
        let mut st = self.lock();
        st.now += by;
        let now = st.now;
        let mut overdue: Vec<i64> = st
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        overdue.sort_unstable();
        for id in &overdue {
            self.revoke_locked(&mut st, *id);
        }
        overdue.len()
    }

    /// Compacts the history before `rev` (etcd semantics: `rev` itself is kept): a later
    /// `watch(from < rev)` yields [`WatchBatch::Compacted`]. Every open watch is cancelled
    /// with `Compacted` too (the worst case of etcd, where a watcher that fell behind is
    /// cancelled).
    pub fn compact(&self, rev: Revision) {
        let mut st = self.lock();
        st.compacted = st.compacted.max(rev.min(st.revision));
        let c = st.compacted;
        st.history.retain(|(r, _)| *r >= c);
        let _ = self.tx.send(Msg::Compacted(c));
    }

    /// The keys and TTL leases now, as `etcdctl snapshot save` would keep them.
    pub fn snapshot(&self) -> MemorySnapshot {
        let st = self.lock();
        MemorySnapshot {
            keys: st.keys.clone(),
            leases: st.leases.clone(),
            revision: st.revision,
        }
    }

    /// Replaces the data with `snap`, as `etcdctl snapshot restore` plus a restart does: the
    /// revision goes back to the snapshot's, history after it is gone, leases granted since
    /// are unknown, the cluster ID changes when `new_cluster_id` (a restore with a new
    /// cluster token), and every open watch breaks.
    pub fn restore(&self, snap: &MemorySnapshot, new_cluster_id: bool) {
        let mut st = self.lock();
        st.keys = snap.keys.clone();
        st.leases = snap.leases.clone();
        st.revision = snap.revision;
        st.history.retain(|(r, _)| *r <= snap.revision);
        if new_cluster_id {
            st.cluster_id += 1;
        }
        let _ = self.tx.send(Msg::Break);
    }

    /// Ends every open watch stream with an error, as a lost connection would.
    pub fn break_watches(&self) {
        let _st = self.lock();
        let _ = self.tx.send(Msg::Break);
    }

    /// Makes the next `n` store calls fail with a [`StoreError::Protocol`].
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// The manual clock's reading (time since the store was created).
    pub fn now(&self) -> Duration {
        self.lock().now
    }

    /// The number of live TTL leases.
    pub fn lease_count(&self) -> usize {
        self.lock().leases.len()
    }

    /// The time left on TTL lease `id`, if it exists.
    pub fn remaining(&self, id: i64) -> Option<Duration> {
        let st = self.lock();
        st.leases
            .get(&id)
            .map(|l| l.expires_at.saturating_sub(st.now))
    }

    /// The TTL lease ID of the key of `id` (0 for a reservation), if the key exists.
    pub fn key_lease(&self, id: &SubnetId) -> Option<i64> {
        let key = subnet_key(&id.0, id.1.as_ref());
        self.lock().keys.get(&key).map(|e| e.lease)
    }
}
