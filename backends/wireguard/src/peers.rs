//! # The userspace device's peers: cryptokey routing and per-peer protocol state
//!
//! A [`PeerTable`] is an immutable snapshot built from the leases and swapped whole
//! ([`flannel_udp::table::Shared`]) whenever they change; the datapath threads never wait for
//! the control plane. It answers the three questions WireGuard asks per packet:
//!
//! * **Which peer gets this packet?** ([`PeerTable::route`]): longest-prefix match of the inner
//!   destination over every peer's allowed IPs (its lease's subnet).
//! * **Whose session is this?** ([`PeerTable::by_index`]): a handshake response, cookie reply or
//!   data message names our receiver index; its top 24 bits are the peer's slot, as in
//!   boringtun's device.
//! * **Who is initiating?** ([`PeerTable::by_key`]): a handshake initiation reveals the
//!   initiator's static public key once decrypted.
//!
//! The per-peer state ([`PeerState`]: boringtun's `Tunn` with sessions and timers, the
//! endpoint, the counters) lives behind an `Arc` and is carried over from one snapshot to the
//! next as long as the peer's public key and pre-shared key are unchanged, so a lease update
//! (a new endpoint after roaming, a changed subnet) keeps the session. A peer whose key
//! changed (the node lost `/run/flannel/wgkey` in a reboot) is a new peer; the old one is gone
//! with the snapshot, where flannel leaves it configured forever (its bug B4).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnetwork::IpNetwork;

/// One peer as the leases describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its public key (the lease's `BackendData.PublicKey`).
    pub public_key: [u8; 32],
    /// Where to send to (`PublicIP:Port`, or `[PublicIPv6]:Port`).
    pub endpoint: SocketAddr,
    /// Its allowed IPs: exactly its lease's subnet(s).
    pub allowed: Vec<IpNetwork>,
}

/// Per-peer counters (relaxed atomics).
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Handshakes completed (as initiator or responder).
    pub handshakes: AtomicU64,
    /// Handshake initiations sent because a session was getting old (rekeys).
    pub rekeys: AtomicU64,
    /// Packets from this peer dropped because the inner source is outside its allowed IPs.
    pub rx_dropped_allowed_ips: AtomicU64,
    /// When (ms on the process clock) we last answered a data message for a session we do not
    /// know with a handshake initiation.
    pub last_stale_session_handshake_ms: AtomicU64,
}

/// One peer's protocol state, shared by the datapath threads.
pub struct PeerState {
    /// The public key.
    pub public_key: [u8; 32],
    /// Our slot for it: receiver indices `slot << 8 | n` are its sessions.
    pub slot: u32,
    /// Handshake, sessions, timers (boringtun's sans-IO state machine).
    pub tunn: Mutex<Tunn>,
    /// The endpoint in use and the one the lease names: roaming moves the first; a lease
    /// update that changes the second moves both, one that does not leaves a roamed endpoint.
    endpoint: Mutex<(SocketAddr, SocketAddr)>,
    /// Counters.
    pub counters: PeerCounters,
    psk: Option<[u8; 32]>,
}

impl std::fmt::Debug for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerState")
            .field("public_key", &crate::config::encode_key(&self.public_key))
            .field("slot", &self.slot)
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl PeerState {
    /// The peer's current endpoint.
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
    }

    /// Moves the endpoint (a lease update, or an authenticated packet from elsewhere: roaming).
    /// Returns whether it changed.
    pub fn set_endpoint(&self, a: SocketAddr) -> bool {
        let mut e = self
            .endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut e.0, a) != a
    }

    /// The lease names `a`: the endpoint moves there if the lease's address changed.
    fn set_lease_endpoint(&self, a: SocketAddr) {
        let mut e = self
            .endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if e.1 != a {
            *e = (a, a);
        }
    }

    /// The peer's protocol state, locked (a panicked holder leaves a usable state).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What every peer's protocol state is made with.
#[derive(Clone)]
pub struct Identity {
    /// Our private key.
    pub private: StaticSecret,
    /// Our public key.
    pub public: PublicKey,
    /// `PSK`, the same for all peers.
    pub psk: Option<[u8; 32]>,
    /// `PersistentKeepaliveInterval` (seconds, 0 = off).
    pub keepalive: u16,
    /// The handshake rate limiter shared by all peers (cookie replies under load).
    pub rate_limiter: Arc<RateLimiter>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &crate::config::encode_key(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// The routes of one prefix length: masked key → (position in the peer list, network).
type RoutesOfLength = HashMap<u128, (usize, IpNetwork)>;

/// An immutable snapshot of the peers. See the module docs.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// This node's subnet (the source of the ICMP errors for destinations no peer holds).
    pub own: Option<IpNetwork>,
    peers: Vec<(Arc<PeerState>, Vec<IpNetwork>)>,
    /// (prefix length in the IPv6-mapped space, mask, network → position in `peers`),
    /// longest prefix first. IPv4 networks are keyed as IPv4-mapped IPv6 (`::ffff:a.b.c.d`),
    /// so one structure serves both families.
    /// The network is kept to tell an IPv4 route from an IPv6 address that maps onto it.
    routes: Vec<(u8, u128, RoutesOfLength)>,
    by_slot: HashMap<u32, usize>,
    by_key: HashMap<[u8; 32], usize>,
    by_endpoint: HashMap<SocketAddr, usize>,
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// `ip` in the IPv6-mapped key space.
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// `net`'s prefix length in the IPv6-mapped key space.
fn mapped_prefix(net: &IpNetwork) -> u8 {
    match net {
        IpNetwork::V4(n) => n.prefix() + 96,
        IpNetwork::V6(n) => n.prefix(),
    }
}

impl PeerTable {
    /// Builds the next snapshot from `specs`, reusing `previous`'s state for every peer whose
    /// key is unchanged (its endpoint moves only when the lease's address changed).
    /// `next_slot` hands out slots for new peers (24 bits, from a random start, reused only
    /// after 2^24 more peers, so a late packet of a removed peer cannot reach a new one). A subnet claimed twice goes to the first peer; a key
    /// listed twice keeps its first entry.
    pub fn build(
        previous: &PeerTable,
        specs: &[PeerSpec],
        id: &Identity,
        next_slot: &mut u32,
    ) -> PeerTable {
        let mut t = PeerTable::default();
        for spec in specs {
            if t.by_key.contains_key(&spec.public_key) || spec.public_key == *id.public.as_bytes() {
                continue;
            }
            let state = match previous.by_key(&spec.public_key) {
                Some(old) if old.psk == id.psk => {
                    old.set_lease_endpoint(spec.endpoint);
                    old.clone()
                }
                _ => {
                    let slot = *next_slot & 0x00ff_ffff;
                    *next_slot = next_slot.wrapping_add(1);
                    // The device checks the rate limit (shared, cookies under load) before a
                    // message reaches a peer; the peer's own check only verifies MAC1, so
                    // nothing is counted twice and a peer never answers with a cookie.
                    let unlimited = Arc::new(RateLimiter::new(&id.public, u64::MAX));
                    let tunn = Tunn::new(
                        id.private.clone(),
                        PublicKey::from(spec.public_key),
                        id.psk,
                        (id.keepalive > 0).then_some(id.keepalive),
                        slot,
                        Some(unlimited),
                    );
                    Arc::new(PeerState {
                        public_key: spec.public_key,
                        slot,
                        tunn: Mutex::new(tunn),
                        endpoint: Mutex::new((spec.endpoint, spec.endpoint)),
                        counters: PeerCounters::default(),
                        psk: id.psk,
                    })
                }
            };
            let at = t.peers.len();
            let mut allowed = Vec::new();
            for &net in &spec.allowed {
                let len = mapped_prefix(&net);
                let m = mask(len);
                let slot = match t.routes.iter().position(|(l, _, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        t.routes.push((len, m, HashMap::new()));
                        t.routes.len() - 1
                    }
                };
                let key = key(net.network()) & m;
                if t.routes[slot].2.contains_key(&key) {
                    tracing::warn!(subnet = %net, "two peers claim one subnet; keeping the first");
                    continue;
                }
                t.routes[slot].2.insert(key, (at, net));
                allowed.push(net);
            }
            t.by_slot.insert(state.slot, at);
            t.by_key.insert(state.public_key, at);
            t.by_endpoint.entry(spec.endpoint).or_insert(at);
            t.peers.push((state, allowed));
        }
        t.routes.sort_by_key(|e| std::cmp::Reverse(e.0));
        t
    }

    /// The peer whose allowed IPs hold `dst` (longest prefix).
    pub fn route(&self, dst: IpAddr) -> Option<&Arc<PeerState>> {
        let d = key(dst);
        self.routes
            .iter()
            .find_map(|(_, m, r)| r.get(&(d & m)).filter(|(_, net)| net.contains(dst)))
            .map(|&(i, _)| &self.peers[i].0)
    }

    /// The peer owning receiver index `index` (`slot << 8 | session`).
    pub fn by_index(&self, index: u32) -> Option<&Arc<PeerState>> {
        self.by_slot.get(&(index >> 8)).map(|&i| &self.peers[i].0)
    }

    /// The peer with public key `key`.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<PeerState>> {
        self.by_key.get(key).map(|&i| &self.peers[i].0)
    }

    /// The peer whose lease names endpoint `from` (the first, if several share it).
    pub fn by_endpoint(&self, from: SocketAddr) -> Option<&Arc<PeerState>> {
        self.by_endpoint.get(&from).map(|&i| &self.peers[i].0)
    }

    /// Whether `src` lies in the allowed IPs of `peer` (the source check on receive).
    pub fn allows(&self, peer: &PeerState, src: IpAddr) -> bool {
        self.by_slot
            .get(&peer.slot)
            .is_some_and(|&i| self.peers[i].1.iter().any(|n| n.contains(src)))
    }

    /// Every peer with its allowed IPs.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<PeerState>, &[IpNetwork])> {
        self.peers.iter().map(|(p, a)| (p, a.as_slice()))
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn identity(seed: u8) -> Identity {
        let private = StaticSecret::from(crate::key::clamp([seed; 32]));
        let public = PublicKey::from(&private);
        Identity {
            rate_limiter: Arc::new(RateLimiter::new(&public, 100)),
            private,
            public,
            psk: None,
            keepalive: 0,
        }
    }

    fn spec(seed: u8, ep: &str, nets: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: *identity(seed).public.as_bytes(),
            endpoint: ep.parse().unwrap(),
            allowed: nets.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn routes_indices_and_keys() {
        let id = identity(1);
        let mut slot = 1;
        let t = PeerTable::build(
            &PeerTable::default(),
            &[
                spec(2, "198.18.0.2:51820", &["10.244.2.0/24"]),
                spec(3, "198.18.0.3:51820", &["10.244.3.0/24", "10.244.16.0/20"]),
                spec(4, "198.18.0.4:51820", &["10.244.2.0/24"]),
                spec(1, "198.18.0.1:51820", &["10.244.1.0/24"]),
            ],
            &id,
            &mut slot,
        );
        assert_eq!(t.len(), 3, "own key skipped");
        let p2 = t.route("10.244.2.7".parse().unwrap()).unwrap();
        assert_eq!(p2.endpoint().to_string(), "198.18.0.2:51820");
        let p3 = t.route("10.244.17.1".parse().unwrap()).unwrap();
        assert_eq!(p3.endpoint().to_string(), "198.18.0.3:51820");
        assert!(t.route("10.244.1.1".parse().unwrap()).is_none());
        // An IPv4 route never answers for the IPv6 address it is keyed as.
        assert!(t.route("::ffff:10.244.2.7".parse().unwrap()).is_none());
        assert!(t.route("10.245.0.1".parse().unwrap()).is_none());
        assert!(Arc::ptr_eq(t.by_index(p3.slot << 8 | 5).unwrap(), p3));
        assert!(t.by_index(0xabcd_0000).is_none());
        assert!(Arc::ptr_eq(t.by_key(&p2.public_key).unwrap(), p2));
        assert!(t.allows(p3, "10.244.3.9".parse().unwrap()));
        assert!(t.allows(p3, "10.244.20.9".parse().unwrap()));
        assert!(!t.allows(p3, "10.244.2.9".parse().unwrap()));
        let p4 = t.by_key(identity(4).public.as_bytes()).unwrap();
        assert!(
            !t.allows(p4, "10.244.2.1".parse().unwrap()),
            "the duplicate subnet went to the first peer"
        );
    }

    #[test]
    fn state_survives_a_lease_update_but_not_a_key_change() {
        let id = identity(1);
        let mut slot = 1;
        let t1 = PeerTable::build(
            &PeerTable::default(),
            &[
                spec(2, "198.18.0.2:51820", &["10.244.2.0/24"]),
                spec(3, "198.18.0.3:51820", &["10.244.3.0/24"]),
            ],
            &id,
            &mut slot,
        );
        let old2 = t1.by_key(identity(2).public.as_bytes()).unwrap().clone();
        let t2 = PeerTable::build(
            &t1,
            &[
                spec(2, "198.18.0.22:4000", &["10.244.2.0/24"]),
                spec(5, "198.18.0.3:51820", &["10.244.3.0/24"]),
            ],
            &id,
            &mut slot,
        );
        let new2 = t2.by_key(identity(2).public.as_bytes()).unwrap();
        assert!(Arc::ptr_eq(&old2, new2), "same session state");
        assert_eq!(new2.endpoint().to_string(), "198.18.0.22:4000");
        assert!(t2.by_key(identity(3).public.as_bytes()).is_none());
        // Roamed (an authenticated packet from elsewhere): a rebuild with the same lease
        // keeps the roamed endpoint; a lease with a new address moves it.
        new2.set_endpoint("198.18.0.99:4000".parse().unwrap());
        let same = [
            spec(2, "198.18.0.22:4000", &["10.244.2.0/24"]),
            spec(5, "198.18.0.3:51820", &["10.244.3.0/24"]),
        ];
        let t3 = PeerTable::build(&t2, &same, &id, &mut slot);
        let p2 = t3.by_key(identity(2).public.as_bytes()).unwrap();
        assert_eq!(p2.endpoint().to_string(), "198.18.0.99:4000");
        let moved = [spec(2, "198.18.0.23:4000", &["10.244.2.0/24"])];
        let t4 = PeerTable::build(&t3, &moved, &id, &mut slot);
        let p2 = t4.by_key(identity(2).public.as_bytes()).unwrap();
        assert_eq!(p2.endpoint().to_string(), "198.18.0.23:4000");
        let p5 = t2.route("10.244.3.1".parse().unwrap()).unwrap();
        assert_eq!(p5.public_key, *identity(5).public.as_bytes());
        assert_ne!(
            p5.slot,
            t1.by_key(identity(3).public.as_bytes()).unwrap().slot
        );
    }
}
