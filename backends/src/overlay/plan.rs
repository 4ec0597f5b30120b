//! # The pure half of reconcile: what should be, what is, and the steps in between
//!
//! Reconcile is split in three so the interesting decisions can be tested without a kernel:
//!
//! 1. [`desired_state`] turns the configuration, the node's own subnet and the peer list into
//!    the exact kernel entries each peer needs ([`Desired`]), refusing peers that cannot be
//!    served (a host-gw peer that is not on our layer-2 segment, a VXLAN peer without a VTEP
//!    MAC) with a typed error per peer, and leaving every other peer alone.
//! 2. The caller reads the kernel tables into an [`Observed`] (only what we own: the VXLAN
//!    device's addresses, neighbours and FDB, and routes carrying [`super::ROUTE_PROTOCOL`]).
//! 3. [`plan`] compares the two and returns the [`Op`]s that make the kernel match, plus how
//!    many desired entries were already right.
//!
//! Ordering rules (the reason this is a separate, tested function):
//!
//! * The device comes first ([`Op::EnsureDevice`]), then its address.
//! * Stale entries are deleted before anything is added, routes first (so no route ever points
//!   at a neighbour or FDB entry that is already gone), then neighbours, FDB entries and
//!   addresses.
//! * Per peer, entries are written neighbour → FDB → route, flannel's order: when the route
//!   appears the kernel already knows the next hop's MAC and where to tunnel it, so it never
//!   ARPs across the overlay.
//! * An FDB entry whose MAC is still wanted but whose remote moved is not deleted: the
//!   replace that follows overwrites it in place, so the peer never loses its entry.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::driver::{BackendDriver, device_address};
use super::{ExternalInterface, OverlayError, Peer};
use crate::kernel::netlink::IpFamily;

/// Which device a route leaves through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteDev {
    /// The VXLAN device (`flannel.<VNI>`).
    Overlay,
    /// The external (underlay) interface.
    External,
    /// Anything else (only ever observed, never desired); `None` for routes without a device.
    Other(Option<u32>),
}

/// A route we install, in the terms of `ip route`: `DST via GATEWAY dev DEV [onlink] proto
/// <ROUTE_PROTOCOL>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination: a peer's subnet.
    pub dst: IpNetwork,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output device.
    pub dev: RouteDev,
    /// `onlink`: the next hop is not inside any subnet of the device (VXLAN routes).
    pub onlink: bool,
    /// Written as a nexthop object plus a route naming it (`ip nexthop replace id ID via
    /// GATEWAY dev DEV [onlink]`, `ip route replace DST nhid ID`) instead of with the gateway
    /// inline: the overlay sets this for IPv4 gateway routes where the kernel has nexthop
    /// objects (an inline one costs the kernel O(routes) per insert; see
    /// [`crate::kernel::netlink::nexthop_id_for`]). Drivers leave it `false`.
    pub via_nexthop: bool,
}

impl RouteSpec {
    /// Whether this route is one that goes through a nexthop object when the kernel has them:
    /// IPv4, with a gateway, and a destination that gives a usable object id.
    pub fn wants_nexthop(&self) -> bool {
        self.gateway.is_some() && crate::kernel::netlink::nexthop_id_for(&self.dst).is_some()
    }
}

/// Everything one peer needs in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntries {
    /// The peer's subnet (identifies the peer in errors and ops).
    pub subnet: IpNetwork,
    /// ARP entry on the VXLAN device: `(<subnet>.0, VTEP MAC)`.
    pub neigh: Option<(IpAddr, [u8; 6])>,
    /// FDB entry on the VXLAN device: `(VTEP MAC, peer public IP)`.
    pub fdb: Option<([u8; 6], IpAddr)>,
    /// The route to the peer's subnet.
    pub route: RouteSpec,
}

impl PeerEntries {
    /// A plain route to the peer's subnet via its public IP on the external interface
    /// (host-gw, and vxlan's `DirectRouting`).
    pub fn direct(p: &Peer) -> PeerEntries {
        PeerEntries {
            subnet: p.subnet,
            neigh: None,
            fdb: None,
            route: RouteSpec {
                dst: p.subnet,
                gateway: Some(p.public_ip),
                dev: RouteDev::External,
                onlink: false,
                via_nexthop: false,
            },
        }
    }
}

/// The desired kernel state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Whether a VXLAN device is wanted at all (false for host-gw).
    pub overlay_device: bool,
    /// The address the VXLAN device carries: `<own subnet>.0/32`.
    pub address: Option<IpNetwork>,
    /// Per peer, in the order they were given.
    pub peers: Vec<PeerEntries>,
}

/// State of the VXLAN device as observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Present with the right identity, MTU, MAC and up.
    Ok,
    /// Present with the right identity, but MTU, MAC or up state need fixing in place (its
    /// entries survive that).
    NeedsFix,
    /// Absent, or present with another identity (it will be recreated): nothing that hangs off
    /// it survives.
    Missing,
}

/// A neighbour entry as observed on the VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedNeigh {
    /// IP address.
    pub ip: IpAddr,
    /// Link-layer address, if resolved.
    pub mac: Option<[u8; 6]>,
    /// `nud permanent`.
    pub permanent: bool,
}

/// The observed kernel state: only entries we own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The VXLAN device (use [`DeviceState::Ok`] for host-gw, which has none).
    pub device: DeviceState,
    /// Addresses on the overlay device.
    pub addresses: Vec<IpNetwork>,
    /// Neighbours on the overlay device.
    pub neighs: Vec<ObservedNeigh>,
    /// FDB entries on the VXLAN device: `(MAC, remote)`.
    pub fdb: Vec<([u8; 6], Option<IpAddr>)>,
    /// Routes in the main table carrying our route protocol.
    pub routes: Vec<RouteSpec>,
}

impl Observed {
    /// An observation of a namespace where nothing of ours exists yet.
    pub fn empty(device: DeviceState) -> Observed {
        Observed {
            device,
            addresses: Vec::new(),
            neighs: Vec::new(),
            fdb: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// One step of a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create, adopt or fix the VXLAN device ([`crate::kernel::netlink::Netlink::ensure_vxlan`]).
    EnsureDevice,
    /// `ip addr add A dev flannel.<VNI>`.
    AddAddress(IpNetwork),
    /// `ip addr del A dev flannel.<VNI>`.
    DelAddress(IpNetwork),
    /// `ip neigh replace IP lladdr MAC dev flannel.<VNI> nud permanent`.
    ReplaceNeigh {
        /// The peer this is for.
        peer: IpNetwork,
        /// `<peer subnet>.0`.
        ip: IpAddr,
        /// The peer's VTEP MAC.
        mac: [u8; 6],
    },
    /// `bridge fdb replace MAC dev flannel.<VNI> dst IP self permanent`.
    ReplaceFdb {
        /// The peer this is for.
        peer: IpNetwork,
        /// The peer's VTEP MAC.
        mac: [u8; 6],
        /// The peer's public IP.
        dst: IpAddr,
    },
    /// `ip route replace ROUTE proto <ROUTE_PROTOCOL>`.
    ReplaceRoute {
        /// The peer this is for.
        peer: IpNetwork,
        /// The route.
        route: RouteSpec,
    },
    /// `ip route del ROUTE` (a stale route of ours).
    DelRoute(RouteSpec),
    /// `ip neigh del IP dev flannel.<VNI>`.
    DelNeigh(IpAddr),
    /// `bridge fdb del MAC dev flannel.<VNI> [dst IP] self`.
    DelFdb {
        /// MAC of the entry.
        mac: [u8; 6],
        /// The remote to remove (`None`: the whole entry).
        dst: Option<IpAddr>,
    },
}

impl Op {
    /// The peer an add belongs to; `None` for device work and deletions of stale entries.
    pub fn peer(&self) -> Option<IpNetwork> {
        match self {
            Op::ReplaceNeigh { peer, .. }
            | Op::ReplaceFdb { peer, .. }
            | Op::ReplaceRoute { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    /// Whether this op removes something.
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Op::DelAddress(_) | Op::DelRoute(_) | Op::DelNeigh(_) | Op::DelFdb { .. }
        )
    }
}

/// The result of [`plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in the order they must be applied.
    pub ops: Vec<Op>,
    /// Desired entries (address, neighbours, FDB entries, routes) that are already right.
    pub kept: usize,
}

/// Whether `ip` lies inside one of the external interface's directly connected subnets (and
/// is not our own address), i.e. is reachable without a router. Either family.
pub fn on_link(ip: IpAddr, ext: &ExternalInterface, ext_nets: &[IpNetwork]) -> bool {
    ip != ext.iface_addr && ext_nets.iter().any(|n| n.prefix() > 0 && n.contains(ip))
}

/// Computes the desired kernel state for `peers` (pure): the driver says what each peer
/// needs; this function applies the rules common to every backend.
///
/// `ext_nets` are the subnets directly connected to the external interface (its addresses
/// with their prefix lengths). The peer holding `own` (if any) is skipped. Peers
/// that cannot be served come back as errors and get no entries; a later peer with the subnet
/// of an earlier one is refused the same way.
pub fn desired_state(
    driver: &dyn BackendDriver,
    ext: &ExternalInterface,
    ext_nets: &[IpNetwork],
    own: Option<IpNetwork>,
    peers: &[Peer],
) -> (Desired, Vec<OverlayError>) {
    let mut desired = Desired {
        overlay_device: driver.device().is_some(),
        address: None,
        peers: driver.fixed_entries(),
    };
    if desired.overlay_device {
        desired.address = own.and_then(device_address);
    }
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for p in peers {
        if Some(p.subnet) == own {
            continue;
        }
        if !seen.insert(p.subnet) {
            errors.push(OverlayError::DuplicatePeer { subnet: p.subnet });
            continue;
        }
        match driver.peer_entries(p, on_link(p.public_ip, ext, ext_nets)) {
            Ok(Some(entries)) => desired.peers.push(entries),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (desired, errors)
}

/// Computes the steps that turn `observed` into `desired` (pure). See the module docs for the
/// ordering rules.
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut ops = Vec::new();
    let mut kept = 0;
    // A missing (or to-be-recreated) device takes its addresses, neighbours, FDB entries and
    // routes with it, whatever was read before.
    let fresh = observed.device == DeviceState::Missing;
    let none_n: &[ObservedNeigh] = &[];
    let none_f: &[([u8; 6], Option<IpAddr>)] = &[];
    let none_a: &[IpNetwork] = &[];
    let (addrs, neighs, fdb) = if fresh {
        (none_a, none_n, none_f)
    } else {
        (
            observed.addresses.as_slice(),
            observed.neighs.as_slice(),
            observed.fdb.as_slice(),
        )
    };
    let routes: Vec<&RouteSpec> = observed
        .routes
        .iter()
        .filter(|r| !(fresh && r.dev == RouteDev::Overlay))
        .collect();

    if desired.overlay_device && observed.device != DeviceState::Ok {
        ops.push(Op::EnsureDevice);
    }
    if desired.overlay_device
        && let Some(a) = desired.address
    {
        if addrs.contains(&a) {
            kept += 1;
        } else {
            ops.push(Op::AddAddress(a));
        }
    }

    // Stale entries, route first.
    let want_routes: HashSet<IpNetwork> = desired.peers.iter().map(|p| p.route.dst).collect();
    for r in &routes {
        if !want_routes.contains(&r.dst) {
            ops.push(Op::DelRoute((*r).clone()));
        }
    }
    let want_neigh: HashSet<IpAddr> = desired
        .peers
        .iter()
        .filter_map(|p| p.neigh.map(|(ip, _)| ip))
        .collect();
    for n in neighs {
        if !want_neigh.contains(&n.ip) {
            ops.push(Op::DelNeigh(n.ip));
        }
    }
    let want_fdb: HashSet<([u8; 6], Option<IpAddr>)> = desired
        .peers
        .iter()
        .filter_map(|p| p.fdb.map(|(mac, dst)| (mac, Some(dst))))
        .collect();
    let want_macs: HashSet<[u8; 6]> = want_fdb.iter().map(|(m, _)| *m).collect();
    let mut remotes_per_mac: HashMap<[u8; 6], usize> = HashMap::new();
    for (mac, _) in fdb {
        *remotes_per_mac.entry(*mac).or_default() += 1;
    }
    for entry in fdb {
        if want_fdb.contains(entry) {
            continue;
        }
        let (mac, dst) = *entry;
        // The single remote of a still-wanted MAC is overwritten by the replace below.
        if want_macs.contains(&mac) && remotes_per_mac.get(&mac) == Some(&1) {
            continue;
        }
        ops.push(Op::DelFdb { mac, dst });
    }
    if desired.overlay_device {
        for a in addrs {
            if Some(*a) != desired.address {
                ops.push(Op::DelAddress(*a));
            }
        }
    }

    // Per peer: neighbour, FDB, route. The observed entries are indexed once, so a plan is
    // O(entries), not O(peers × entries) (10,000 peers: milliseconds, not a tenth of a second).
    let right_neighs: HashSet<(IpAddr, [u8; 6])> = neighs
        .iter()
        .filter(|n| n.permanent)
        .filter_map(|n| n.mac.map(|mac| (n.ip, mac)))
        .collect();
    let observed_fdb: HashSet<&([u8; 6], Option<IpAddr>)> = fdb.iter().collect();
    let observed_routes: HashMap<IpNetwork, Vec<&RouteSpec>> =
        routes.iter().fold(HashMap::new(), |mut by_dst, r| {
            by_dst.entry(r.dst).or_default().push(*r);
            by_dst
        });
    for p in &desired.peers {
        if let Some((ip, mac)) = p.neigh {
            if right_neighs.contains(&(ip, mac)) {
                kept += 1;
            } else {
                ops.push(Op::ReplaceNeigh {
                    peer: p.subnet,
                    ip,
                    mac,
                });
            }
        }
        if let Some((mac, dst)) = p.fdb {
            if observed_fdb.contains(&(mac, Some(dst))) {
                kept += 1;
            } else {
                ops.push(Op::ReplaceFdb {
                    peer: p.subnet,
                    mac,
                    dst,
                });
            }
        }
        if observed_routes
            .get(&p.route.dst)
            .is_some_and(|same_dst| same_dst.iter().any(|r| **r == p.route))
        {
            kept += 1;
        } else {
            ops.push(Op::ReplaceRoute {
                peer: p.subnet,
                route: p.route.clone(),
            });
        }
    }
    Plan { ops, kept }
}

fn family_of_net(n: &IpNetwork) -> IpFamily {
    IpFamily::of(n.ip())
}

impl Desired {
    /// The part of the desired state in `family`; the device (and its address) only in the
    /// family that owns it.
    pub fn family(&self, family: IpFamily, owns_device: bool) -> Desired {
        Desired {
            overlay_device: self.overlay_device && owns_device,
            address: self.address.filter(|a| family_of_net(a) == family),
            peers: self
                .peers
                .iter()
                .filter(|p| family_of_net(&p.route.dst) == family)
                .cloned()
                .collect(),
        }
    }
}

impl Observed {
    /// The part of the observation in `family` (the device state is shared).
    pub fn family(&self, family: IpFamily) -> Observed {
        Observed {
            device: self.device,
            addresses: self
                .addresses
                .iter()
                .filter(|a| family_of_net(a) == family)
                .copied()
                .collect(),
            neighs: self
                .neighs
                .iter()
                .filter(|n| IpFamily::of(n.ip) == family)
                .cloned()
                .collect(),
            fdb: self
                .fdb
                .iter()
                .filter(|(_, dst)| dst.is_none_or(|d| IpFamily::of(d) == family))
                .copied()
                .collect(),
            routes: self
                .routes
                .iter()
                .filter(|r| family_of_net(&r.dst) == family)
                .cloned()
                .collect(),
        }
    }
}

/// [`plan`] per address family: the family that owns the overlay device first (its device
/// op leads), then the other. An entry of one family never makes an entry of the other
/// stale, and each family's ops keep the ordering rules of [`plan`].
pub fn plan_by_family(desired: &Desired, observed: &Observed, device_family: IpFamily) -> Plan {
    let other = match device_family {
        IpFamily::V4 => IpFamily::V6,
        IpFamily::V6 => IpFamily::V4,
    };
    let mut all = Plan::default();
    for (family, owns_device) in [(device_family, true), (other, false)] {
        let p = plan(
            &desired.family(family, owns_device),
            &observed.family(family),
        );
        all.ops.extend(p.ops);
        all.kept += p.kept;
    }
    all
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
