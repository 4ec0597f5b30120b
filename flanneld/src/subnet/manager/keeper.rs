//! Keep: renew the TTL lease before it runs out, check the key is still ours, re-acquire when
//! it is not (the keeper loop); and the checks by which the watch loop pokes the keeper.

use std::time::{Duration, SystemTime};

use ipam::lease::{Lease, same_node};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{OwnLeaseEvent, Shutdown, SubnetManager, renew_delay, same_lease};
use crate::backoff::Backoff;
use crate::subnet::{KeepAliveOutcome, LeaseStore, Listing, WatchEvent};

impl<S: LeaseStore> SubnetManager<S> {
    /// The delay before the keeper's next look at `lease`, and whether a renewal is due then.
    fn next_check(&self, lease: &Lease) -> (Duration, bool) {
        if !lease.leased {
            return (self.cfg.verify_interval, false);
        }
        let remaining = lease
            .expiration
            .and_then(|e| e.duration_since(SystemTime::now()).ok())
            .unwrap_or(self.cfg.ttl);
        let renew = renew_delay(remaining, self.cfg.renew_margin);
        if renew <= self.cfg.verify_interval {
            (renew, true)
        } else {
            (self.cfg.verify_interval, false)
        }
    }

    /// Keeps `lease` (see the module docs) until shutdown; returns the lease held at the end,
    /// for an optional [`release`](Self::release). Never returns early on store errors.
    pub async fn run_lease_keeper(
        &self,
        lease: Lease,
        tx: mpsc::Sender<OwnLeaseEvent>,
        shutdown: impl Into<Shutdown>,
    ) -> Lease {
        let mut shutdown = shutdown.into();
        let mut lease = lease;
        self.set_own(Some(lease.clone()));
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let (mut delay, mut renew_due) = self.next_check(&lease);
        let mut deadline = Instant::now() + delay;
        loop {
            let notified = tokio::select! {
                biased;
                _ = shutdown.requested() => return lease,
                _ = self.own_changed.notified() => true,
                _ = tokio::time::sleep_until(deadline) => false,
            };
            if notified {
                // The watch just heard from the store about our key: it is reachable again,
                // so whatever an outage did to the backoff no longer applies. (After an
                // outage the client may still return one stale connect error per member
                // that was down; short delays get past them at once.)
                backoff.reset();
            }
            // Renew when due (the timer fired for it).
            let mut lost = false;
            if !notified && renew_due && lease.leased {
                let id = lease.lease_id.unwrap_or(0);
                match self.store.keep_alive(id).await {
                    Ok(KeepAliveOutcome::Alive { ttl }) => {
                        lease.expiration = SystemTime::now().checked_add(ttl);
                        self.set_own(Some(lease.clone()));
                        self.metrics.renewed();
                        tracing::debug!(key = %lease.key(), ?ttl, "renewed subnet lease");
                    }
                    Ok(KeepAliveOutcome::Lost) => {
                        tracing::warn!(key = %lease.key(), "our subnet lease expired or was revoked");
                        // The store answered: re-acquiring starts from the shortest delay, not
                        // from where an outage before this answer left the backoff.
                        backoff.reset();
                        lost = true;
                    }
                    Err(e) => {
                        delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "renewing the subnet lease failed");
                        deadline = Instant::now() + delay;
                        continue;
                    }
                }
            }
            // Check the key still holds our lease.
            if !lost {
                match self.store.get(&lease.id()).await {
                    Ok(Some(cur)) if same_lease(&cur, &lease) => {}
                    Ok(cur) => {
                        tracing::warn!(key = %lease.key(), now = ?cur.map(|c| c.attrs.public_ip),
                            "our subnet key was deleted or taken over");
                        backoff.reset();
                        lost = true;
                    }
                    Err(e) => {
                        delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "checking our subnet key failed");
                        // A pending renewal stays pending (`renew_due` is unchanged).
                        deadline = Instant::now() + delay;
                        continue;
                    }
                }
            }
            if lost {
                let _ = tx.send(OwnLeaseEvent::Lost(lease.clone())).await;
                match self.reacquire(&lease, &mut shutdown, &mut backoff).await {
                    Some(new) => {
                        lease = new;
                        self.metrics.reacquired();
                        let _ = tx.send(OwnLeaseEvent::Reacquired(lease.clone())).await;
                    }
                    None => return lease,
                }
            }
            backoff.reset();
            (delay, renew_due) = self.next_check(&lease);
            deadline = Instant::now() + delay;
        }
    }

    /// Re-acquires after losing `old`, preferring its subnet. `None` on shutdown.
    async fn reacquire(
        &self,
        old: &Lease,
        shutdown: &mut Shutdown,
        backoff: &mut Backoff,
    ) -> Option<Lease> {
        loop {
            if shutdown.is_requested() {
                return None;
            }
            match self.acquire(&old.attrs, Some(old.id())).await {
                Ok(l) => {
                    tracing::info!(old = %old.key(), new = %l.key(), "re-acquired a subnet lease");
                    return Some(l);
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?d, "re-acquiring a subnet lease failed");
                    if shutdown.sleep(d).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Pokes the keeper if `listing` shows our key gone or changed.
    pub(super) fn check_own_snapshot(&self, listing: &Listing) {
        let Some(own) = self.current_lease() else {
            return;
        };
        let ok = listing.leases.iter().any(|l| same_lease(l, &own));
        if !ok {
            self.own_changed.notify_one();
        }
    }

    /// Pokes the keeper if an event deletes or overwrites our key.
    pub(super) fn check_own_events(&self, events: &[WatchEvent]) {
        let Some(own) = self.current_lease() else {
            return;
        };
        let touched = events.iter().any(|e| match e {
            WatchEvent::Put(l) => same_node(&l.id(), &own.id()) && !same_lease(l, &own),
            WatchEvent::Delete { id, .. } => same_node(id, &own.id()),
        });
        if touched {
            self.own_changed.notify_one();
        }
    }
}
