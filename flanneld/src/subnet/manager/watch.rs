//! Watch: one listing (a snapshot), then the watch from its revision; a broken stream resumes
//! where it broke, and only a compaction or a restored etcd (revision back, cluster ID
//! changed) costs a re-list.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use ipam::lease::{Lease, LeaseAttrs, LeaseEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Shutdown, SubnetManager, WatchUpdate, log_store_error};
use crate::backoff::Backoff;
use crate::subnet::{
    LeaseStore, Listing, Revision, StoreError, StorePosition, WatchBatch, WatchEvent,
};

impl<S: LeaseStore> SubnetManager<S> {
    /// Streams the subnet directory to `tx` until shutdown or until `tx` is closed (see the
    /// module docs). Never returns on store errors: it backs off (100 ms doubling to 5 s by
    /// default) and resumes the watch where it broke, re-listing only after a compaction or
    /// a restore.
    pub async fn run_watch(&self, tx: mpsc::Sender<WatchUpdate>, shutdown: impl Into<Shutdown>) {
        let mut shutdown = shutdown.into();
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        // `Some(rev)`: a watch broke after delivering everything up to `rev - 1`; resume from
        // `rev` without re-listing (history still holds the gap). `None`: take a new snapshot
        // first (start-up, compaction, restore).
        let mut resume: Option<Revision> = None;
        // The cluster the last listing came from.
        let mut cluster: Option<u64> = None;
        let mut listed_before = false;
        loop {
            let from = match resume {
                Some(rev) => {
                    // Is the history we hold still etcd's? (see the module docs)
                    let pos = tokio::select! {
                        biased;
                        _ = shutdown.requested() => return,
                        p = self.store.position() => p,
                    };
                    // A lagging member answers a lower revision too: confirm with the leader.
                    let pos = match pos {
                        Ok(p) if restored(p, rev, cluster) => {
                            self.store.position_linearizable().await
                        }
                        other => other,
                    };
                    match pos {
                        Ok(pos) if restored(pos, rev, cluster) => {
                            self.metrics.restore_detected();
                            tracing::warn!(
                                revision = pos.revision, last_seen = rev - 1,
                                cluster_id = format!("{:x}", pos.cluster_id),
                                previous_cluster_id = ?cluster.map(|c| format!("{c:x}")),
                                "etcd went back in revision or changed cluster ID (restored \
                                 from a snapshot?); re-listing every lease"
                            );
                            resume = None;
                            continue;
                        }
                        Ok(_) => rev,
                        Err(e) => {
                            let d = backoff.next_delay();
                            log_store_error(
                                &e,
                                d,
                                "reading the etcd revision before resuming the watch",
                            );
                            if shutdown.sleep(d).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
                None => {
                    let listed = tokio::select! {
                        biased;
                        _ = shutdown.requested() => return,
                        r = self.list_with_position() => r,
                    };
                    let (listing, pos) = match listed {
                        Ok(l) => l,
                        Err(e) => {
                            let d = backoff.next_delay();
                            log_store_error(&e, d, "listing subnet leases");
                            if shutdown.sleep(d).await {
                                return;
                            }
                            continue;
                        }
                    };
                    if listed_before {
                        self.metrics.relist();
                    }
                    listed_before = true;
                    cluster = Some(pos.cluster_id);
                    self.check_own_snapshot(&listing);
                    let from = listing.revision + 1;
                    if tx
                        .send(WatchUpdate::Snapshot(listing.leases))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    from
                }
            };
            resume = Some(from);
            let mut stream = match self.store.watch(from).await {
                Ok(s) => s,
                Err(e) => {
                    if e.history_lost() {
                        tracing::warn!(error = %e, from, "etcd no longer has the revision to resume from; re-listing");
                        resume = None;
                        continue;
                    }
                    let d = backoff.next_delay();
                    log_store_error(&e, d, "starting the subnet watch");
                    if shutdown.sleep(d).await {
                        return;
                    }
                    continue;
                }
            };
            let started = Instant::now();
            let why = loop {
                let item = tokio::select! {
                    biased;
                    _ = shutdown.requested() => return,
                    i = stream.next() => i,
                };
                match item {
                    Some(Ok(WatchBatch::Events { events, revision })) => {
                        backoff.reset();
                        resume = Some(revision + 1);
                        self.check_own_events(&events);
                        let events = events.into_iter().map(to_lease_event).collect();
                        if tx.send(WatchUpdate::Events(events)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(WatchBatch::Compacted { compact_revision })) => {
                        tracing::info!(
                            compact_revision,
                            "subnet watch fell behind a compaction; re-listing"
                        );
                        resume = None;
                        break None;
                    }
                    Some(Err(e)) if e.history_lost() => {
                        tracing::warn!(error = %e, "etcd no longer has the watched revisions; re-listing");
                        resume = None;
                        break None;
                    }
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some("the watch stream ended".to_string()),
                }
            };
            if let Some(why) = why {
                self.metrics.watch_restart();
                if started.elapsed() > Duration::from_secs(5) {
                    backoff.reset();
                }
                let d = backoff.next_delay();
                tracing::warn!(error = %why, retry_in = ?d, resume_from = ?resume,
                    "subnet watch broke; reconnecting");
                if shutdown.sleep(d).await {
                    return;
                }
            }
        }
    }

    /// The store position (for its cluster ID), then a listing.
    async fn list_with_position(&self) -> Result<(Listing, StorePosition), StoreError> {
        let pos = self.store.position().await?;
        let listing = self.store.list().await?;
        Ok((listing, pos))
    }
}

/// Whether `pos` shows a store that is not the one whose history we hold: its revision is
/// below the last one we delivered (`resume_from - 1`), or another cluster answers.
fn restored(pos: StorePosition, resume_from: Revision, cluster: Option<u64>) -> bool {
    pos.revision < resume_from - 1 || cluster.is_some_and(|c| c != pos.cluster_id)
}

fn to_lease_event(ev: WatchEvent) -> LeaseEvent {
    match ev {
        WatchEvent::Put(l) => LeaseEvent::Added(l),
        WatchEvent::Delete { id, prev } => {
            LeaseEvent::Removed(prev.unwrap_or_else(|| {
                Lease::new(id.0, id.1, LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, ""))
            }))
        }
    }
}
