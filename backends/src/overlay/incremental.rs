//! # One peer at a time: a lease change costs that peer's entries, not a kernel dump
//!
//! [`Overlay::reconcile`] reads every table we own and plans the whole difference: right at
//! start, after a netlink notification and every 10 s, where it catches whatever anyone did
//! to the kernel. Paying it for every lease change makes one change cost O(peers) (a
//! rolling upgrade of a 5,000-node cluster keeps a core busy). So a lease change goes
//! through [`Overlay::upsert_peer`] / [`Overlay::remove_peer`] instead: the driver's entries
//! for that one peer are compared with what [`Programmed`] says is in the kernel for it, and
//! only the difference is written (`ip neigh replace`, `bridge fdb replace`, `ip route
//! replace`, or their deletes) — no dump, a constant number of requests.
//!
//! Our own writes come back as netlink notifications. [`Programmed`] also answers whether a
//! notification is news (a wanted entry deleted or changed by someone else) or the echo of
//! our own write, so that those echoes do not trigger the full reconcile we just avoided.
//!
//! If a single-peer write fails, or the device is not there, the caller falls back to the
//! full reconcile, which repairs everything.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::plan::{Op, PeerEntries, on_link};
use super::{Overlay, OverlayError, Peer, ReconcileReport};
use crate::kernel::Kernel;

/// Keys wanted by one or more programmed entries, each with the value of the latest one
/// (a neighbour's MAC, an FDB entry's remote) and how many entries want it: an entry
/// replaced or removed gives up only its own claim.
#[derive(Debug)]
struct Claims<K, V>(HashMap<K, (V, usize)>);

impl<K, V> Default for Claims<K, V> {
    fn default() -> Self {
        Claims(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq, V> Claims<K, V> {
    /// One more entry wants `key`; its `value` becomes the wanted one.
    fn claim(&mut self, key: K, value: V) {
        use std::collections::hash_map::Entry;
        match self.0.entry(key) {
            Entry::Occupied(mut o) => {
                let slot = o.get_mut();
                slot.0 = value;
                slot.1 += 1;
            }
            Entry::Vacant(v) => {
                v.insert((value, 1));
            }
        }
    }

    /// One entry fewer wants `key`.
    fn release(&mut self, key: &K) {
        if let Some(slot) = self.0.get_mut(key) {
            slot.1 -= 1;
            if slot.1 == 0 {
                self.0.remove(key);
            }
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.0.get(key).map(|(v, _)| v)
    }

    fn count(&self, key: &K) -> usize {
        self.0.get(key).map_or(0, |(_, n)| *n)
    }
}

/// What is programmed in the kernel for each peer (its subnet), plus the fixed entries, and
/// indexes over them for classifying notifications.
#[derive(Debug, Default)]
pub(super) struct Programmed {
    per_peer: HashMap<IpNetwork, PeerEntries>,
    /// Every wanted route destination (peers' and fixed entries').
    routes: Claims<IpNetwork, ()>,
    /// Wanted neighbours: IP → MAC.
    neighs: Claims<IpAddr, [u8; 6]>,
    /// Wanted FDB entries: MAC → remote.
    fdb: Claims<[u8; 6], IpAddr>,
    /// Wanted nexthop objects: id → gateway.
    nexthops: Claims<u32, Option<IpAddr>>,
}

impl Programmed {
    /// Replaces everything with `entries` (after a full reconcile).
    pub(super) fn reset(&mut self, peers: Vec<PeerEntries>, fixed: &[PeerEntries]) {
        *self = Programmed::default();
        for e in fixed {
            self.routes.claim(e.route.dst, ());
        }
        for e in peers {
            self.insert(e);
        }
    }

    fn insert(&mut self, e: PeerEntries) {
        self.routes.claim(e.route.dst, ());
        if let Some(id) = nexthop_of(&e) {
            self.nexthops.claim(id, e.route.gateway);
        }
        if let Some((ip, mac)) = e.neigh {
            self.neighs.claim(ip, mac);
        }
        if let Some((mac, dst)) = e.fdb {
            self.fdb.claim(mac, dst);
        }
        if let Some(old) = self.per_peer.insert(e.subnet, e) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, subnet: &IpNetwork) -> Option<PeerEntries> {
        let old = self.per_peer.remove(subnet)?;
        self.forget(&old);
        Some(old)
    }

    /// Gives up `old`'s claims (a replacement inserted before keeps its own).
    fn forget(&mut self, old: &PeerEntries) {
        self.routes.release(&old.route.dst);
        if let Some(id) = nexthop_of(old) {
            self.nexthops.release(&id);
        }
        if let Some((ip, _)) = old.neigh {
            self.neighs.release(&ip);
        }
        if let Some((mac, _)) = old.fdb {
            self.fdb.release(&mac);
        }
    }

    /// Whether a route to `dst` is wanted.
    pub(super) fn wants_route(&self, dst: &IpNetwork) -> bool {
        self.routes.count(dst) > 0
    }

    /// Whether a neighbour/FDB notification on our device is news: a wanted entry deleted,
    /// or rewritten with another MAC (neighbour) or another remote (FDB). Additions of
    /// wanted entries are our own echoes; anything the kernel adds by itself is left to
    /// the periodic reconcile.
    pub(super) fn neigh_is_news(
        &self,
        deleted: bool,
        fdb: bool,
        ip: Option<IpAddr>,
        mac: Option<[u8; 6]>,
    ) -> bool {
        if fdb {
            match mac.and_then(|m| self.fdb.get(&m)) {
                Some(want) => deleted || ip.is_some_and(|i| i != *want),
                None => false,
            }
        } else {
            match ip.and_then(|i| self.neighs.get(&i)) {
                Some(want) => deleted || mac.is_some_and(|m| m != *want),
                None => false,
            }
        }
    }

    /// Whether a nexthop notification is news: a wanted object deleted (its route went with
    /// it, unannounced) or pointed at another gateway. Our own writes come back with the
    /// wanted gateway; deletions of objects no longer wanted are our own too.
    pub(super) fn nexthop_is_news(
        &self,
        id: Option<u32>,
        gateway: Option<IpAddr>,
        deleted: bool,
    ) -> bool {
        match id.and_then(|id| self.nexthops.get(&id)) {
            Some(want) => deleted || gateway != *want,
            None => false,
        }
    }

    /// The entries programmed for `subnet`.
    pub(super) fn get(&self, subnet: &IpNetwork) -> Option<&PeerEntries> {
        self.per_peer.get(subnet)
    }

    /// Whether `mac` is wanted in the FDB for a peer other than `subnet`.
    fn mac_wanted_by_other(&self, mac: [u8; 6], subnet: &IpNetwork) -> bool {
        let own = self
            .per_peer
            .get(subnet)
            .is_some_and(|e| e.fdb.is_some_and(|(m, _)| m == mac));
        self.fdb.count(&mac) > usize::from(own)
    }
}

/// The nexthop object id `e`'s route is written through, if any.
fn nexthop_of(e: &PeerEntries) -> Option<u32> {
    e.route
        .via_nexthop
        .then(|| crate::kernel::netlink::nexthop_id_for(&e.route.dst))
        .flatten()
}

impl<K: Kernel> Overlay<K> {
    /// One peer added or changed (its lease appeared, or its public IP or `BackendData`
    /// changed): writes only the difference between its entries and what is programmed for
    /// it. `Err` means the single-peer path could not do it (device gone, a write failed):
    /// run [`Overlay::reconcile`].
    pub async fn upsert_peer(&mut self, peer: Peer) -> Result<ReconcileReport, OverlayError> {
        let mut report = ReconcileReport::default();
        if Some(peer.subnet) == self.own {
            return Ok(report);
        }
        match self.peer_index.get(&peer.subnet) {
            Some(&i) if self.peers[i] == peer => {}
            Some(&i) => self.peers[i] = peer.clone(),
            None => {
                self.peer_index.insert(peer.subnet, self.peers.len());
                self.peers.push(peer.clone());
            }
        }
        self.driver_peers_stale = true;
        let on = on_link(peer.public_ip, &self.ext, &self.ext_nets);
        let wanted = match self.driver.peer_entries(&peer, on) {
            Ok(mut w) => {
                if let Some(w) = &mut w {
                    self.encode_route(&mut w.route);
                }
                w
            }
            Err(e) => {
                report.errors.push(e);
                None
            }
        };
        let old = self.programmed.get(&peer.subnet).cloned();
        if old == wanted {
            report.kept += usize::from(wanted.is_some());
            return Ok(report);
        }
        let mut ops = Vec::new();
        if let Some(old) = &old {
            let new = wanted.as_ref();
            if new.is_none_or(|n| n.route.dst != old.route.dst) {
                ops.push(Op::DelRoute(old.route.clone()));
            }
            if let Some((ip, _)) = old.neigh
                && new.and_then(|n| n.neigh).map(|(i, _)| i) != Some(ip)
            {
                ops.push(Op::DelNeigh(ip));
            }
            if let Some((mac, dst)) = old.fdb
                && new.and_then(|n| n.fdb).map(|(m, _)| m) != Some(mac)
                && !self.programmed.mac_wanted_by_other(mac, &peer.subnet)
            {
                ops.push(Op::DelFdb {
                    mac,
                    dst: Some(dst),
                });
            }
        }
        if let Some(new) = &wanted {
            if let Some((ip, mac)) = new.neigh
                && old.as_ref().is_none_or(|o| o.neigh != new.neigh)
            {
                ops.push(Op::ReplaceNeigh {
                    peer: new.subnet,
                    ip,
                    mac,
                });
            }
            if let Some((mac, dst)) = new.fdb
                && old.as_ref().is_none_or(|o| o.fdb != new.fdb)
            {
                ops.push(Op::ReplaceFdb {
                    peer: new.subnet,
                    mac,
                    dst,
                });
            }
            if old.as_ref().is_none_or(|o| o.route != new.route) {
                ops.push(Op::ReplaceRoute {
                    peer: new.subnet,
                    route: new.route.clone(),
                });
            }
        }
        self.apply_single(&ops, &mut report).await?;
        self.programmed.remove(&peer.subnet);
        if let Some(new) = wanted {
            self.programmed.insert(new);
        }
        Ok(report)
    }

    /// One peer gone (its lease expired or was deleted): deletes exactly its entries.
    /// `Err`: run [`Overlay::reconcile`].
    pub async fn remove_peer(
        &mut self,
        subnet: IpNetwork,
    ) -> Result<ReconcileReport, OverlayError> {
        let mut report = ReconcileReport::default();
        if let Some(i) = self.peer_index.remove(&subnet) {
            self.peers.swap_remove(i);
            if let Some(moved) = self.peers.get(i) {
                self.peer_index.insert(moved.subnet, i);
            }
            self.driver_peers_stale = true;
        }
        let Some(old) = self.programmed.get(&subnet).cloned() else {
            return Ok(report);
        };
        let mut ops = vec![Op::DelRoute(old.route.clone())];
        if let Some((ip, _)) = old.neigh {
            ops.push(Op::DelNeigh(ip));
        }
        if let Some((mac, dst)) = old.fdb
            && !self.programmed.mac_wanted_by_other(mac, &subnet)
        {
            ops.push(Op::DelFdb {
                mac,
                dst: Some(dst),
            });
        }
        self.apply_single(&ops, &mut report).await?;
        self.programmed.remove(&subnet);
        Ok(report)
    }

    /// Hands the driver the peer list once after a burst of [`Overlay::upsert_peer`] /
    /// [`Overlay::remove_peer`] calls (a userspace data path rebuilds its forwarding table from
    /// it: O(peers) once per burst rather than per change). A no-op when nothing changed.
    pub fn sync_driver_peers(&mut self) {
        if std::mem::take(&mut self.driver_peers_stale) {
            self.driver.set_peers(&self.peers);
        }
    }

    /// Applies one peer's ops in order, as one batch ([`Kernel::write_batch`]: one netlink
    /// datagram, plus the route's nexthop object); any failure makes it `Err` (the caller
    /// reconciles).
    async fn apply_single(
        &mut self,
        ops: &[Op],
        report: &mut ReconcileReport,
    ) -> Result<(), OverlayError> {
        let writes = ops
            .iter()
            .map(|op| self.kernel_write(op))
            .collect::<Result<Vec<_>, _>>()?;
        let results = self.kernel.write_batch(&writes).await;
        let mut first_error = None;
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) if op.is_removal() => report.removed += 1,
                Ok(()) => report.added += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
