//! # memory — an in-memory twin of the etcd lease store
//!
//! [`MemoryLeaseStore`] implements [`LeaseStore`] with the same observable semantics as
//! [`EtcdLeaseStore`](super::EtcdLeaseStore), so the leasing policy can be unit-tested without
//! an etcd process:
//!
//! * keys live in a `BTreeMap` and every write bumps a store-wide **revision**, like etcd's MVCC
//!   revision; each committed change is kept in a history so that `watch(from)` can replay the
//!   past before it follows live changes (a `broadcast` channel);
//! * TTL leases run on a **manual clock**: nothing expires until a test calls
//!   [`MemoryLeaseStore::advance`], which revokes the overdue leases and deletes their keys,
//!   emitting `Delete` events exactly as etcd does on expiry;
//! * [`MemoryLeaseStore::compact`]`(rev)` drops the history before `rev`, so — as in etcd,
//!   which keeps the compaction revision itself — a watch from a revision `< rev` yields
//!   [`WatchBatch::Compacted`]; as a worst case it also cancels every open watch as if it had
//!   fallen behind the compaction;
//! * [`MemoryLeaseStore::break_watches`] simulates a lost connection and
//!   [`MemoryLeaseStore::fail_next`] makes the next calls fail, to exercise retry paths.
//!
//! The mutex is a `std` one and is never held across an `.await`.
//!
//! The store and its [`LeaseStore`] operations live here; the levers tests pull (writes behind
//! the policy's back, the clock, compaction, snapshot/restore, failures) in `levers`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use ipam::lease::{Lease, SubnetId, subnet_key};
use tokio::sync::broadcast;

use super::{
    CreateOutcome, Decoded, KeepAliveOutcome, LeaseStore, Listing, Revision, StoreError,
    UpdateOutcome, WatchBatch, WatchEvent, WatchStream, decode, listing_from,
};

mod levers;

/// flannel's default key prefix.
const DEFAULT_PREFIX: &str = "/coreos.com/network";

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    /// TTL lease ID, 0 for none (a reservation).
    lease: i64,
}

#[derive(Debug, Clone, Copy)]
struct TtlLease {
    ttl: Duration,
    expires_at: Duration,
}

#[derive(Debug, Clone)]
enum Msg {
    Batch(Revision, Vec<WatchEvent>),
    Compacted(Revision),
    Break,
}

#[derive(Debug, Default)]
struct State {
    keys: BTreeMap<String, Entry>,
    leases: HashMap<i64, TtlLease>,
    revision: Revision,
    compacted: Revision,
    history: Vec<(Revision, Vec<WatchEvent>)>,
    now: Duration,
    next_lease: i64,
    /// Changes on [`MemoryLeaseStore::restore`], like etcd's cluster ID after a restore.
    cluster_id: u64,
}

/// A copy of the store's data at one revision (see [`MemoryLeaseStore::snapshot`]).
#[derive(Debug, Clone)]
pub struct MemorySnapshot {
    keys: BTreeMap<String, Entry>,
    leases: HashMap<i64, TtlLease>,
    revision: Revision,
}

/// An in-memory [`LeaseStore`] with a manual clock (see the module docs).
#[derive(Debug)]
pub struct MemoryLeaseStore {
    prefix: String,
    state: Mutex<State>,
    tx: broadcast::Sender<Msg>,
    fail_next: AtomicUsize,
}

impl Default for MemoryLeaseStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Decodes a stored entry into a lease, or `None` when the value is unreadable.
fn entry_lease(key: &str, e: &Entry) -> Option<Lease> {
    match decode(key, &e.value, e.lease) {
        Decoded::Lease(l) => Some(l),
        _ => None,
    }
}

impl MemoryLeaseStore {
    /// An empty store under flannel's default prefix `/coreos.com/network`.
    pub fn new() -> Self {
        Self::with_prefix(DEFAULT_PREFIX)
    }

    /// An empty store under `prefix` (only used in messages).
    pub fn with_prefix(prefix: &str) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
            state: Mutex::new(State {
                next_lease: 0x1000,
                cluster_id: 1,
                ..State::default()
            }),
            tx,
            fail_next: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (no multi-step invariants
        // are broken half-way), so recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_fail(&self, op: &'static str) -> Result<(), StoreError> {
        let n = self.fail_next.load(Ordering::SeqCst);
        if n > 0
            && self
                .fail_next
                .compare_exchange(n, n - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(StoreError::Protocol {
                op,
                message: "injected failure (MemoryLeaseStore::fail_next)".into(),
            });
        }
        Ok(())
    }

    /// Commits one revision holding `events` and broadcasts it. Caller holds the lock.
    fn commit(&self, st: &mut State, events: Vec<WatchEvent>) -> Revision {
        st.revision += 1;
        let rev = st.revision;
        st.history.push((rev, events.clone()));
        // No receivers is fine.
        let _ = self.tx.send(Msg::Batch(rev, events));
        rev
    }

    fn grant(st: &mut State, ttl: Duration) -> i64 {
        st.next_lease += 1;
        let id = st.next_lease;
        st.leases.insert(
            id,
            TtlLease {
                ttl,
                expires_at: st.now + ttl,
            },
        );
        id
    }

    fn put_entry(&self, st: &mut State, key: &str, value: Vec<u8>, lease: i64) -> Revision {
        let entry = Entry { value, lease };
        let event = match entry_lease(key, &entry) {
            Some(l) => WatchEvent::Put(l),
            // An unreadable value reads like a deletion of whatever was there (see etcd.rs).
            None => WatchEvent::Delete {
                id: match ipam::lease::parse_subnet_key(key) {
                    Ok(id) => id,
                    Err(_) => {
                        st.keys.insert(key.to_string(), entry);
                        return self.commit(st, Vec::new());
                    }
                },
                prev: st.keys.get(key).and_then(|e| entry_lease(key, e)),
            },
        };
        st.keys.insert(key.to_string(), entry);
        self.commit(st, vec![event])
    }

    fn delete_entry(key: &str, st: &mut State) -> Option<WatchEvent> {
        let old = st.keys.remove(key)?;
        let id = ipam::lease::parse_subnet_key(key).ok()?;
        Some(WatchEvent::Delete {
            id,
            prev: entry_lease(key, &old),
        })
    }

    /// Removes TTL lease `id` and deletes its keys in one revision. Caller holds the lock.
    fn revoke_locked(&self, st: &mut State, id: i64) -> bool {
        if st.leases.remove(&id).is_none() {
            return false;
        }
        let keys: Vec<String> = st
            .keys
            .iter()
            .filter(|(_, e)| e.lease == id)
            .map(|(k, _)| k.clone())
            .collect();
        let events: Vec<WatchEvent> = keys
            .iter()
            .filter_map(|k| Self::delete_entry(k, st))
            .collect();
        if !keys.is_empty() {
            self.commit(st, events);
        }
        true
    }
}

fn with_expiry(mut lease: Lease, id: i64, ttl: Duration) -> Lease {
    lease.leased = true;
    lease.lease_id = Some(id);
    lease.expiration = SystemTime::now().checked_add(ttl);
    lease
}

impl MemoryLeaseStore {
    /// Both creates: the key must be absent and, with `listed`, no write may have happened
    /// after that revision. Every revision here is a subnet write (or a TTL expiry), so this
    /// is stricter than etcd's mod-revision compare over the prefix, never looser.
    fn create(
        &self,
        lease: &Lease,
        ttl: Duration,
        listed: Option<Revision>,
    ) -> Result<CreateOutcome, StoreError> {
        self.check_fail("create_if_absent")?;
        let key = lease.key();
        let mut st = self.lock();
        if let Some(e) = st.keys.get(&key) {
            return Ok(CreateOutcome::Exists(entry_lease(&key, e)));
        }
        if listed.is_some_and(|rev| st.revision > rev) {
            return Ok(CreateOutcome::Exists(None));
        }
        let id = Self::grant(&mut st, ttl);
        self.put_entry(&mut st, &key, lease.attrs.to_json().into_bytes(), id);
        Ok(CreateOutcome::Created(with_expiry(lease.clone(), id, ttl)))
    }
}

impl LeaseStore for MemoryLeaseStore {
    fn config_location(&self) -> String {
        format!("{}/config", self.prefix)
    }

    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        self.check_fail("network_config")?;
        // The policy under test gets its network config from the caller; this store holds none.
        Ok(None)
    }

    async fn position(&self) -> Result<super::StorePosition, StoreError> {
        self.check_fail("position")?;
        let st = self.lock();
        Ok(super::StorePosition {
            revision: st.revision,
            cluster_id: st.cluster_id,
        })
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.check_fail("list")?;
        let st = self.lock();
        Ok(listing_from(
            st.keys
                .iter()
                .map(|(k, e)| (k.as_str(), e.value.as_slice(), e.lease)),
            st.revision,
        ))
    }

    async fn get(&self, id: &SubnetId) -> Result<Option<Lease>, StoreError> {
        self.check_fail("get")?;
        let key = subnet_key(&id.0, id.1.as_ref());
        let st = self.lock();
        Ok(st.keys.get(&key).and_then(|e| entry_lease(&key, e)))
    }

    async fn create_if_absent(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<CreateOutcome, StoreError> {
        self.create(lease, ttl, None)
    }

    async fn create_if_unchanged(
        &self,
        lease: &Lease,
        ttl: Duration,
        listed: Revision,
    ) -> Result<CreateOutcome, StoreError> {
        self.create(lease, ttl, Some(listed))
    }

    async fn update(&self, lease: &Lease, ttl: Duration) -> Result<UpdateOutcome, StoreError> {
        self.check_fail("update")?;
        let key = lease.key();
        let expected = if lease.leased {
            lease.lease_id.unwrap_or(0)
        } else {
            0
        };
        let mut st = self.lock();
        match st.keys.get(&key) {
            Some(e) if e.lease == expected && !(lease.leased && expected == 0) => {}
            other => {
                return Ok(UpdateOutcome::Conflict(
                    other.and_then(|e| entry_lease(&key, e)),
                ));
            }
        }
        let value = lease.attrs.to_json().into_bytes();
        if lease.leased {
            let id = Self::grant(&mut st, ttl);
            self.put_entry(&mut st, &key, value, id);
            if !st.keys.values().any(|e| e.lease == expected) {
                st.leases.remove(&expected);
            }
            Ok(UpdateOutcome::Updated(with_expiry(lease.clone(), id, ttl)))
        } else {
            self.put_entry(&mut st, &key, value, 0);
            let mut l = lease.clone();
            l.lease_id = None;
            l.expiration = None;
            Ok(UpdateOutcome::Updated(l))
        }
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<KeepAliveOutcome, StoreError> {
        self.check_fail("keep_alive")?;
        let mut st = self.lock();
        let now = st.now;
        match st.leases.get_mut(&lease_id) {
            Some(l) => {
                l.expires_at = now + l.ttl;
                Ok(KeepAliveOutcome::Alive { ttl: l.ttl })
            }
            None => Ok(KeepAliveOutcome::Lost),
        }
    }

    async fn delete(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.check_fail("delete")?;
        let key = lease.key();
        let expected = if lease.leased {
            lease.lease_id.unwrap_or(0)
        } else {
            0
        };
        let mut st = self.lock();
        if st.keys.get(&key).is_none_or(|e| e.lease != expected) {
            return Ok(false);
        }
        if let Some(ev) = Self::delete_entry(&key, &mut st) {
            self.commit(&mut st, vec![ev]);
        } else {
            st.keys.remove(&key);
        }
        if expected != 0 {
            self.revoke_locked(&mut st, expected);
        }
        Ok(true)
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        self.check_fail("watch")?;
        let st = self.lock();
        if from < st.compacted {
            let c = st.compacted;
            return Ok(Box::pin(futures::stream::once(async move {
                Ok(WatchBatch::Compacted {
                    compact_revision: c,
                })
            })));
        }
        let rx = self.tx.subscribe();
        let backlog: Vec<Result<WatchBatch, StoreError>> = st
            .history
            .iter()
            .filter(|(r, ev)| *r >= from && !ev.is_empty())
            .map(|(r, ev)| {
                Ok(WatchBatch::Events {
                    events: ev.clone(),
                    revision: *r,
                })
            })
            .collect();
        let seen = st.revision;
        drop(st);
        let live = futures::stream::unfold(Some(rx), move |state| async move {
            let mut rx = state?;
            loop {
                match rx.recv().await {
                    Ok(Msg::Batch(rev, events)) => {
                        if rev <= seen || rev < from || events.is_empty() {
                            continue;
                        }
                        let batch = WatchBatch::Events {
                            events,
                            revision: rev,
                        };
                        return Some((Ok(batch), Some(rx)));
                    }
                    Ok(Msg::Compacted(c)) => {
                        let batch = WatchBatch::Compacted {
                            compact_revision: c,
                        };
                        return Some((Ok(batch), None));
                    }
                    Ok(Msg::Break) => {
                        let err =
                            StoreError::WatchInterrupted("connection lost (simulated)".into());
                        return Some((Err(err), None));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let err =
                            StoreError::WatchInterrupted(format!("watcher lagged by {n} batches"));
                        return Some((Err(err), None));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Box::pin(futures::stream::iter(backlog).chain(live)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipam::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: &str) -> Lease {
        Lease::new(
            subnet.parse().unwrap(),
            None,
            LeaseAttrs::new(ip.parse().unwrap(), "vxlan"),
        )
    }

    async fn next(s: &mut WatchStream) -> WatchBatch {
        tokio::time::timeout(Duration::from_secs(2), s.next())
            .await
            .expect("watch batch in time")
            .expect("stream open")
            .expect("no error")
    }

    #[tokio::test]
    async fn create_is_conditional_and_ttl_expires_on_the_manual_clock() {
        let st = MemoryLeaseStore::new();
        let a = lease("10.244.1.0/24", "198.18.0.1");
        let ttl = Duration::from_secs(10);
        let CreateOutcome::Created(mine) = st.create_if_absent(&a, ttl).await.unwrap() else {
            panic!("first create must win");
        };
        assert!(mine.leased && mine.lease_id.is_some());
        let b = lease("10.244.1.0/24", "198.18.0.2");
        match st.create_if_absent(&b, ttl).await.unwrap() {
            CreateOutcome::Exists(Some(cur)) => assert_eq!(cur.attrs, a.attrs),
            other => panic!("expected Exists, got {other:?}"),
        }
        let from = st.revision() + 1;
        let mut w = st.watch(from).await.unwrap();
        assert_eq!(st.advance(Duration::from_secs(9)), 0);
        assert!(st.get(&a.id()).await.unwrap().is_some());
        // keep-alive restarts the TTL from "now".
        assert_eq!(
            st.keep_alive(mine.lease_id.unwrap()).await.unwrap(),
            KeepAliveOutcome::Alive { ttl }
        );
        assert_eq!(st.advance(Duration::from_secs(9)), 0);
        assert_eq!(st.advance(Duration::from_secs(1)), 1);
        assert!(st.get(&a.id()).await.unwrap().is_none());
        match next(&mut w).await {
            WatchBatch::Events { events, .. } => assert_eq!(
                events,
                vec![WatchEvent::Delete {
                    id: a.id(),
                    prev: Some(Lease {
                        expiration: None,
                        ..mine.clone()
                    })
                }]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            st.keep_alive(mine.lease_id.unwrap()).await.unwrap(),
            KeepAliveOutcome::Lost
        );
    }

    #[tokio::test]
    async fn update_and_delete_compare_the_lease() {
        let st = MemoryLeaseStore::new();
        let ttl = Duration::from_secs(10);
        let CreateOutcome::Created(mine) = st
            .create_if_absent(&lease("10.244.1.0/24", "198.18.0.1"), ttl)
            .await
            .unwrap()
        else {
            panic!()
        };
        // A stale lease ID conflicts.
        let mut stale = mine.clone();
        stale.lease_id = Some(1);
        assert!(matches!(
            st.update(&stale, ttl).await.unwrap(),
            UpdateOutcome::Conflict(Some(_))
        ));
        assert!(!st.delete(&stale).await.unwrap());
        // The right one moves the key to a fresh lease and drops the old lease.
        let mut want = mine.clone();
        want.attrs.backend_type = "host-gw".into();
        let UpdateOutcome::Updated(new) = st.update(&want, ttl).await.unwrap() else {
            panic!()
        };
        assert_ne!(new.lease_id, mine.lease_id);
        assert_eq!(st.lease_count(), 1);
        assert_eq!(st.key_lease(&new.id()), new.lease_id);
        // Reservations: update keeps them lease-less; a leased update of one conflicts.
        let r = lease("10.244.2.0/24", "198.18.0.2");
        st.put_reservation(&r);
        let mut r2 = r.clone();
        r2.attrs.backend_type = "udp".into();
        let UpdateOutcome::Updated(u) = st.update(&r2, ttl).await.unwrap() else {
            panic!()
        };
        assert!(!u.leased && u.lease_id.is_none());
        assert_eq!(st.key_lease(&r.id()), Some(0));
        assert_eq!(st.lease_count(), 1);
        // An update of a missing reservation conflicts (no key is created).
        let gone = lease("10.244.3.0/24", "198.18.0.3");
        assert_eq!(
            st.update(&gone, ttl).await.unwrap(),
            UpdateOutcome::Conflict(None)
        );
        assert!(st.get(&gone.id()).await.unwrap().is_none());
        assert!(st.delete(&new).await.unwrap());
        assert_eq!(st.lease_count(), 0);
    }

    #[tokio::test]
    async fn watch_replays_history_then_follows_and_compaction_cancels() {
        let st = MemoryLeaseStore::new();
        let a = lease("10.244.1.0/24", "198.18.0.1");
        let b = lease("10.244.2.0/24", "198.18.0.2");
        let r1 = st.put_reservation(&a);
        let mut w = st.watch(r1).await.unwrap();
        assert_eq!(
            next(&mut w).await,
            WatchBatch::Events {
                events: vec![WatchEvent::Put(a.clone())],
                revision: r1
            }
        );
        let r2 = st.put_reservation(&b);
        assert_eq!(
            next(&mut w).await,
            WatchBatch::Events {
                events: vec![WatchEvent::Put(b.clone())],
                revision: r2
            }
        );
        st.compact(r2);
        assert_eq!(
            next(&mut w).await,
            WatchBatch::Compacted {
                compact_revision: r2
            }
        );
        assert!(w.next().await.is_none(), "the stream ends after Compacted");
        let mut old = st.watch(r1).await.unwrap();
        assert_eq!(
            next(&mut old).await,
            WatchBatch::Compacted {
                compact_revision: r2
            }
        );
        // From the compaction point on works (etcd keeps that revision), and break_watches
        // ends it with an error.
        let mut w = st.watch(r2).await.unwrap();
        assert!(
            matches!(next(&mut w).await, WatchBatch::Events { revision, .. } if revision == r2)
        );
        st.break_watches();
        assert!(matches!(
            w.next().await,
            Some(Err(StoreError::WatchInterrupted(_)))
        ));
        // An unreadable value is listed as unreadable and watched as a deletion.
        let mut w = st.watch(st.revision() + 1).await.unwrap();
        st.put_raw("10.244.2.0-24", b"not json");
        let listing = st.list().await.unwrap();
        assert_eq!(listing.leases, vec![a.clone()]);
        assert_eq!(listing.unreadable, vec![b.id()]);
        assert_eq!(
            next(&mut w).await,
            WatchBatch::Events {
                events: vec![WatchEvent::Delete {
                    id: b.id(),
                    prev: Some(b.clone())
                }],
                revision: st.revision()
            }
        );
        st.fail_next(1);
        assert!(st.list().await.is_err());
        assert!(st.list().await.is_ok());
    }
}
