//! # The forwarding and membership table of the udp backend
//!
//! Built from the leases ([`Table::new`]) and swapped whole whenever they change
//! ([`Shared::store`]), so the datapath threads never see a half-updated table and never
//! wait for the control plane:
//!
//! * **Forwarding** ([`Table::lookup`]): longest-prefix match of an inner destination address
//!   onto the peer that leases it. Routes are grouped by prefix length (in practice every lease
//!   has the same one), so a lookup is one hash probe per distinct length, longest first.
//! * **Membership** ([`Table::check_source`]): a datagram is accepted only from the public IP of
//!   a current lease, and only if the inner source address lies in a subnet leased to that same
//!   public IP. flannel accepts anything from anyone; this is what keeps a host outside the
//!   cluster (or a member lying about its pods' addresses) from injecting packets.
//! * **Destination** ([`Table::own_subnet`]): received packets must be addressed to this node's
//!   own subnet, so the node is not an open relay into whatever else it can route to.
//!
//! [`SharedTable`] is read-mostly: the writer bumps a generation counter after swapping the
//! `Arc` under a lock; readers keep their own `Arc` and only take the (uncontended) read lock
//! when the generation moved, i.e. once per table change, not per packet.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ipnetwork::Ipv4Network;

/// One route: a peer's subnet and where to send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The peer's subnet.
    pub subnet: Ipv4Network,
    /// `<peer public IP>:<port>`.
    pub endpoint: SocketAddrV4,
}

/// Why a received datagram was refused by [`Table::check_source`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceVerdict {
    /// Sender and inner source check out.
    Accept,
    /// The datagram's source IP holds no current lease.
    NonMember,
    /// The sender is a member, but the inner source address is outside its subnet(s).
    BadSource,
    /// The inner destination is outside this node's subnet.
    BadDestination,
}

/// An immutable snapshot of the routes and members.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// (prefix length, mask, network → route), longest prefix first.
    by_len: Vec<(u8, u32, HashMap<u32, Route>)>,
    /// public IP → subnets it leases.
    members: HashMap<Ipv4Addr, Vec<Ipv4Network>>,
    own: Option<Ipv4Network>,
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl Table {
    /// Builds a table from `(subnet, public IP)` pairs; every peer is reached at `port`. The own
    /// subnet (if among them) gets no route. On duplicate subnets the first one wins.
    pub fn new(own: Option<Ipv4Network>, peers: &[(Ipv4Network, Ipv4Addr)], port: u16) -> Table {
        let mut by_len: Vec<(u8, u32, HashMap<u32, Route>)> = Vec::new();
        let mut members: HashMap<Ipv4Addr, Vec<Ipv4Network>> = HashMap::new();
        for &(subnet, ip) in peers {
            if Some(subnet) == own {
                continue;
            }
            let len = subnet.prefix();
            let m = mask(len);
            let slot = match by_len.iter().position(|(l, _, _)| *l == len) {
                Some(i) => i,
                None => {
                    by_len.push((len, m, HashMap::new()));
                    by_len.len() - 1
                }
            };
            let key = u32::from(subnet.network()) & m;
            if by_len[slot].2.contains_key(&key) {
                continue;
            }
            by_len[slot].2.insert(
                key,
                Route {
                    subnet,
                    endpoint: SocketAddrV4::new(ip, port),
                },
            );
            members.entry(ip).or_default().push(subnet);
        }
        by_len.sort_by_key(|e| std::cmp::Reverse(e.0));
        Table {
            by_len,
            members,
            own,
        }
    }

    /// The longest-prefix route for `dst`.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Route> {
        let d = u32::from(dst);
        self.by_len
            .iter()
            .find_map(|(_, m, routes)| routes.get(&(d & m)))
    }

    /// Whether a datagram from `sender` carrying a packet `inner_src → inner_dst` is acceptable.
    pub fn check_source(
        &self,
        sender: Ipv4Addr,
        inner_src: Ipv4Addr,
        inner_dst: Ipv4Addr,
    ) -> SourceVerdict {
        let Some(subnets) = self.members.get(&sender) else {
            return SourceVerdict::NonMember;
        };
        if !subnets.iter().any(|s| s.contains(inner_src)) {
            return SourceVerdict::BadSource;
        }
        match self.own {
            Some(own) if !own.contains(inner_dst) => SourceVerdict::BadDestination,
            _ => SourceVerdict::Accept,
        }
    }

    /// This node's subnet, if known.
    pub fn own_subnet(&self) -> Option<Ipv4Network> {
        self.own
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.by_len.iter().map(|(_, _, r)| r.len()).sum()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A snapshot shared between one writer and the datapath threads: the writer swaps it whole
/// ([`Shared::store`]), readers keep their own `Arc` and re-read only when the generation
/// moved. The udp backend shares its [`Table`] this way, the wireguard backend its peers.
#[derive(Debug, Default)]
pub struct Shared<T> {
    current: RwLock<Arc<T>>,
    generation: AtomicU64,
}

/// The udp backend's shared forwarding table.
pub type SharedTable = Shared<Table>;
/// A datapath thread's view of the [`SharedTable`].
pub type TableReader = Reader<Table>;

impl<T> Shared<T> {
    /// A shared snapshot holding `t`.
    pub fn new(t: T) -> Shared<T> {
        Shared {
            current: RwLock::new(Arc::new(t)),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the snapshot; readers pick it up at their next [`Reader::get`].
    pub fn store(&self, t: T) {
        let new = Arc::new(t);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<T> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A reader for one datapath thread.
    pub fn reader(self: &Arc<Self>) -> Reader<T> {
        Reader {
            shared: self.clone(),
            seen: self.generation.load(Ordering::Acquire),
            snapshot: self.load(),
        }
    }
}

/// A datapath thread's view of a [`Shared`] snapshot.
#[derive(Debug)]
pub struct Reader<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
    snapshot: Arc<T>,
}

impl<T> Reader<T> {
    /// The current snapshot: one atomic load, plus a read-lock only when it changed.
    pub fn get(&mut self) -> &T {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.seen {
            self.seen = g;
            self.snapshot = self.shared.load();
        }
        &self.snapshot
    }

    /// Like [`Reader::get`], as a shared handle (a reference-count increment).
    pub fn current(&mut self) -> Arc<T> {
        self.get();
        self.snapshot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("test network")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn table() -> Table {
        Table::new(
            Some(net("10.244.1.0/24")),
            &[
                (net("10.244.1.0/24"), ip("198.18.0.1")),
                (net("10.244.2.0/24"), ip("198.18.0.2")),
                (net("10.244.3.0/24"), ip("198.18.0.3")),
                (net("10.244.3.128/25"), ip("198.18.0.4")),
                (net("10.244.16.0/20"), ip("198.18.0.5")),
                (net("10.244.2.0/24"), ip("198.18.0.9")),
            ],
            8285,
        )
    }

    #[test]
    fn longest_prefix_wins_and_own_subnet_has_no_route() {
        let t = table();
        assert_eq!(t.len(), 4, "own subnet and the duplicate are skipped");
        let ep = |d: &str| t.lookup(ip(d)).map(|r| r.endpoint);
        assert_eq!(
            ep("10.244.2.77"),
            Some("198.18.0.2:8285".parse().expect("ep"))
        );
        assert_eq!(
            ep("10.244.3.5"),
            Some("198.18.0.3:8285".parse().expect("ep"))
        );
        assert_eq!(
            ep("10.244.3.200"),
            Some("198.18.0.4:8285".parse().expect("ep"))
        );
        assert_eq!(
            ep("10.244.20.1"),
            Some("198.18.0.5:8285".parse().expect("ep"))
        );
        assert_eq!(ep("10.244.1.5"), None);
        assert_eq!(ep("10.244.9.9"), None);
        assert_eq!(ep("192.0.2.1"), None);
    }

    #[test]
    fn membership_checks_sender_inner_source_and_destination() {
        let t = table();
        let v = |s: &str, src: &str, dst: &str| t.check_source(ip(s), ip(src), ip(dst));
        assert_eq!(
            v("198.18.0.2", "10.244.2.9", "10.244.1.3"),
            SourceVerdict::Accept
        );
        assert_eq!(
            v("198.18.0.99", "10.244.2.9", "10.244.1.3"),
            SourceVerdict::NonMember
        );
        // The duplicate lease's holder did not get in.
        assert_eq!(
            v("198.18.0.9", "10.244.2.9", "10.244.1.3"),
            SourceVerdict::NonMember
        );
        assert_eq!(
            v("198.18.0.2", "10.244.3.9", "10.244.1.3"),
            SourceVerdict::BadSource
        );
        assert_eq!(
            v("198.18.0.3", "10.244.3.200", "10.244.1.3"),
            SourceVerdict::Accept
        );
        assert_eq!(
            v("198.18.0.2", "10.244.2.9", "10.244.3.3"),
            SourceVerdict::BadDestination
        );
        let no_own = Table::new(None, &[(net("10.244.2.0/24"), ip("198.18.0.2"))], 1);
        assert_eq!(
            no_own.check_source(ip("198.18.0.2"), ip("10.244.2.1"), ip("8.8.8.8")),
            SourceVerdict::Accept
        );
    }

    #[test]
    fn readers_see_a_swap_at_once() {
        let shared = Arc::new(SharedTable::new(table()));
        let mut r = shared.reader();
        assert!(r.get().lookup(ip("10.244.2.1")).is_some());
        shared.store(Table::new(Some(net("10.244.1.0/24")), &[], 8285));
        assert!(r.get().lookup(ip("10.244.2.1")).is_none());
        assert!(r.get().is_empty());
    }
}
