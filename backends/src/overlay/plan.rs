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
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{ExternalInterface, OverlayConfig, OverlayError, Peer};

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
    pub dst: Ipv4Network,
    /// Next hop.
    pub gateway: Option<Ipv4Addr>,
    /// Output device.
    pub dev: RouteDev,
    /// `onlink`: the next hop is not inside any subnet of the device (VXLAN routes).
    pub onlink: bool,
}

/// Everything one peer needs in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntries {
    /// The peer's subnet (identifies the peer in errors and ops).
    pub subnet: Ipv4Network,
    /// ARP entry on the VXLAN device: `(<subnet>.0, VTEP MAC)`.
    pub neigh: Option<(Ipv4Addr, [u8; 6])>,
    /// FDB entry on the VXLAN device: `(VTEP MAC, peer public IP)`.
    pub fdb: Option<([u8; 6], Ipv4Addr)>,
    /// The route to the peer's subnet.
    pub route: RouteSpec,
}

/// The desired kernel state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Whether a VXLAN device is wanted at all (false for host-gw).
    pub overlay_device: bool,
    /// The address the VXLAN device carries: `<own subnet>.0/32`.
    pub address: Option<Ipv4Network>,
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
    pub ip: Ipv4Addr,
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
    /// IPv4 addresses on the VXLAN device.
    pub addresses: Vec<Ipv4Network>,
    /// IPv4 neighbours on the VXLAN device.
    pub neighs: Vec<ObservedNeigh>,
    /// FDB entries on the VXLAN device: `(MAC, remote)`.
    pub fdb: Vec<([u8; 6], Option<Ipv4Addr>)>,
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
    /// Create, adopt or fix the VXLAN device ([`crate::netlink::Netlink::ensure_vxlan`]).
    EnsureDevice,
    /// `ip addr add A dev flannel.<VNI>`.
    AddAddress(Ipv4Network),
    /// `ip addr del A dev flannel.<VNI>`.
    DelAddress(Ipv4Network),
    /// `ip neigh replace IP lladdr MAC dev flannel.<VNI> nud permanent`.
    ReplaceNeigh {
        /// The peer this is for.
        peer: Ipv4Network,
        /// `<peer subnet>.0`.
        ip: Ipv4Addr,
        /// The peer's VTEP MAC.
        mac: [u8; 6],
    },
    /// `bridge fdb replace MAC dev flannel.<VNI> dst IP self permanent`.
    ReplaceFdb {
        /// The peer this is for.
        peer: Ipv4Network,
        /// The peer's VTEP MAC.
        mac: [u8; 6],
        /// The peer's public IP.
        dst: Ipv4Addr,
    },
    /// `ip route replace ROUTE proto <ROUTE_PROTOCOL>`.
    ReplaceRoute {
        /// The peer this is for.
        peer: Ipv4Network,
        /// The route.
        route: RouteSpec,
    },
    /// `ip route del ROUTE` (a stale route of ours).
    DelRoute(RouteSpec),
    /// `ip neigh del IP dev flannel.<VNI>`.
    DelNeigh(Ipv4Addr),
    /// `bridge fdb del MAC dev flannel.<VNI> [dst IP] self`.
    DelFdb {
        /// MAC of the entry.
        mac: [u8; 6],
        /// The remote to remove (`None`: the whole entry).
        dst: Option<Ipv4Addr>,
    },
}

impl Op {
    /// The peer an add belongs to; `None` for device work and deletions of stale entries.
    pub fn peer(&self) -> Option<Ipv4Network> {
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
/// is not our own address), i.e. is reachable without a router.
pub fn on_link(ip: Ipv4Addr, ext: &ExternalInterface, ext_nets: &[Ipv4Network]) -> bool {
    ip != ext.iface_addr && ext_nets.iter().any(|n| n.prefix() > 0 && n.contains(ip))
}

/// Computes the desired kernel state for `peers` (pure).
///
/// `ext_nets` are the IPv4 subnets directly connected to the external interface (its
/// addresses with their prefix lengths). The peer holding `own` (if any) is skipped. Peers
/// that cannot be served come back as errors and get no entries; a later peer with the subnet
/// of an earlier one is refused the same way.
pub fn desired_state(
    cfg: &OverlayConfig,
    ext: &ExternalInterface,
    ext_nets: &[Ipv4Network],
    own: Option<Ipv4Network>,
    peers: &[Peer],
) -> (Desired, Vec<OverlayError>) {
    let mut desired = Desired::default();
    let mut errors = Vec::new();
    // udp: the TUN device, its address and one route for the whole network; peers live in the
    // datapath's own table, not in the kernel.
    #[cfg(feature = "udp")]
    if let OverlayConfig::Udp(u) = cfg {
        desired.overlay_device = true;
        desired.address = own.and_then(|s| Ipv4Network::new(s.network(), 32).ok());
        desired.peers.push(PeerEntries {
            subnet: u.network,
            neigh: None,
            fdb: None,
            route: RouteSpec {
                dst: u.network,
                gateway: None,
                dev: RouteDev::Overlay,
                onlink: false,
            },
        });
        return (desired, errors);
    }
    if let OverlayConfig::Vxlan(_) = cfg {
        desired.overlay_device = true;
        desired.address = own.and_then(|s| Ipv4Network::new(s.network(), 32).ok());
    }
    let mut seen = HashSet::new();
    for p in peers {
        if Some(p.subnet) == own {
            continue;
        }
        if !seen.insert(p.subnet) {
            errors.push(OverlayError::DuplicatePeer { subnet: p.subnet });
            continue;
        }
        let direct = RouteSpec {
            dst: p.subnet,
            gateway: Some(p.public_ip),
            dev: RouteDev::External,
            onlink: false,
        };
        let reachable = on_link(p.public_ip, ext, ext_nets);
        let entries = match cfg {
            OverlayConfig::HostGw => {
                if !reachable {
                    errors.push(OverlayError::PeerNotDirectlyReachable {
                        subnet: p.subnet,
                        public_ip: p.public_ip,
                        iface: ext.name.clone(),
                    });
                    continue;
                }
                PeerEntries {
                    subnet: p.subnet,
                    neigh: None,
                    fdb: None,
                    route: direct,
                }
            }
            OverlayConfig::Vxlan(v) if v.direct_routing && reachable => PeerEntries {
                subnet: p.subnet,
                neigh: None,
                fdb: None,
                route: direct,
            },
            #[cfg(feature = "udp")]
            OverlayConfig::Udp(_) => continue,
            OverlayConfig::Vxlan(_) => {
                let Some(mac) = p.vtep_mac else {
                    errors.push(OverlayError::PeerMissingVtepMac { subnet: p.subnet });
                    continue;
                };
                let gw = p.subnet.network();
                PeerEntries {
                    subnet: p.subnet,
                    neigh: Some((gw, mac)),
                    fdb: Some((mac, p.public_ip)),
                    route: RouteSpec {
                        dst: p.subnet,
                        gateway: Some(gw),
                        dev: RouteDev::Overlay,
                        onlink: true,
                    },
                }
            }
        };
        desired.peers.push(entries);
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
    let none_f: &[([u8; 6], Option<Ipv4Addr>)] = &[];
    let none_a: &[Ipv4Network] = &[];
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
    let want_routes: HashSet<Ipv4Network> = desired.peers.iter().map(|p| p.route.dst).collect();
    for r in &routes {
        if !want_routes.contains(&r.dst) {
            ops.push(Op::DelRoute((*r).clone()));
        }
    }
    let want_neigh: HashSet<Ipv4Addr> = desired
        .peers
        .iter()
        .filter_map(|p| p.neigh.map(|(ip, _)| ip))
        .collect();
    for n in neighs {
        if !want_neigh.contains(&n.ip) {
            ops.push(Op::DelNeigh(n.ip));
        }
    }
    let want_fdb: HashSet<([u8; 6], Option<Ipv4Addr>)> = desired
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

    // Per peer: neighbour, FDB, route.
    for p in &desired.peers {
        if let Some((ip, mac)) = p.neigh {
            if neighs
                .iter()
                .any(|n| n.ip == ip && n.mac == Some(mac) && n.permanent)
            {
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
            if fdb.contains(&(mac, Some(dst))) {
                kept += 1;
            } else {
                ops.push(Op::ReplaceFdb {
                    peer: p.subnet,
                    mac,
                    dst,
                });
            }
        }
        if routes.iter().any(|r| **r == p.route) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::VxlanParams;

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("test network")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn ext() -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            iface_addr: ip("198.18.0.1"),
            public_ip: ip("198.18.0.1"),
        }
    }

    fn ext_nets() -> Vec<Ipv4Network> {
        vec![net("198.18.0.0/24")]
    }

    fn vxlan(direct_routing: bool) -> OverlayConfig {
        OverlayConfig::Vxlan(VxlanParams {
            direct_routing,
            ..VxlanParams::default()
        })
    }

    const MAC2: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const MAC3: [u8; 6] = [0x02, 0, 0, 0, 0, 3];

    fn peers() -> Vec<Peer> {
        vec![
            Peer {
                subnet: net("10.244.2.0/24"),
                public_ip: ip("198.18.0.2"),
                vtep_mac: Some(MAC2),
            },
            Peer {
                subnet: net("10.244.3.0/24"),
                public_ip: ip("198.18.1.3"),
                vtep_mac: Some(MAC3),
            },
        ]
    }

    fn own() -> Option<Ipv4Network> {
        Some(net("10.244.1.0/24"))
    }

    fn vx_route(subnet: &str) -> RouteSpec {
        RouteSpec {
            dst: net(subnet),
            gateway: Some(net(subnet).network()),
            dev: RouteDev::Overlay,
            onlink: true,
        }
    }

    #[test]
    fn vxlan_fresh_node_orders_device_address_then_neigh_fdb_route_per_peer() {
        let (d, errs) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
        assert!(errs.is_empty(), "{errs:?}");
        let p = plan(&d, &Observed::empty(DeviceState::Missing));
        let p2 = net("10.244.2.0/24");
        let p3 = net("10.244.3.0/24");
        assert_eq!(
            p.ops,
            vec![
                Op::EnsureDevice,
                Op::AddAddress(net("10.244.1.0/32")),
                Op::ReplaceNeigh {
                    peer: p2,
                    ip: ip("10.244.2.0"),
                    mac: MAC2
                },
                Op::ReplaceFdb {
                    peer: p2,
                    mac: MAC2,
                    dst: ip("198.18.0.2")
                },
                Op::ReplaceRoute {
                    peer: p2,
                    route: vx_route("10.244.2.0/24")
                },
                Op::ReplaceNeigh {
                    peer: p3,
                    ip: ip("10.244.3.0"),
                    mac: MAC3
                },
                Op::ReplaceFdb {
                    peer: p3,
                    mac: MAC3,
                    dst: ip("198.18.1.3")
                },
                Op::ReplaceRoute {
                    peer: p3,
                    route: vx_route("10.244.3.0/24")
                },
            ]
        );
        assert_eq!(p.kept, 0);
    }

    fn converged(d: &Desired) -> Observed {
        let mut o = Observed::empty(DeviceState::Ok);
        o.addresses = d.address.into_iter().collect();
        for p in &d.peers {
            if let Some((ip, mac)) = p.neigh {
                o.neighs.push(ObservedNeigh {
                    ip,
                    mac: Some(mac),
                    permanent: true,
                });
            }
            if let Some((mac, dst)) = p.fdb {
                o.fdb.push((mac, Some(dst)));
            }
            o.routes.push(p.route.clone());
        }
        o
    }

    #[test]
    fn converged_state_plans_nothing_and_counts_kept() {
        let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
        let p = plan(&d, &converged(&d));
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        // address + 2 x (neigh, fdb, route)
        assert_eq!(p.kept, 7);
    }

    #[test]
    fn stale_entries_are_deleted_route_first_before_any_add() {
        let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers()[..1]);
        let (full, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
        let mut o = converged(&full);
        // Also a dynamic neighbour the kernel made for the wanted peer, and a stray address.
        o.neighs[0].permanent = false;
        o.addresses.push(net("10.244.9.0/32"));
        let p = plan(&d, &o);
        assert_eq!(
            p.ops,
            vec![
                Op::DelRoute(vx_route("10.244.3.0/24")),
                Op::DelNeigh(ip("10.244.3.0")),
                Op::DelFdb {
                    mac: MAC3,
                    dst: Some(ip("198.18.1.3"))
                },
                Op::DelAddress(net("10.244.9.0/32")),
                Op::ReplaceNeigh {
                    peer: net("10.244.2.0/24"),
                    ip: ip("10.244.2.0"),
                    mac: MAC2
                },
            ]
        );
        assert_eq!(p.kept, 3); // address, fdb and route of 10.244.2.0/24
    }

    #[test]
    fn missing_device_voids_observed_device_entries() {
        let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
        let mut o = converged(&d);
        o.device = DeviceState::Missing;
        // A host-gw style route of ours survives a device deletion and must still be seen.
        o.routes.push(RouteSpec {
            dst: net("10.244.7.0/24"),
            gateway: Some(ip("198.18.0.7")),
            dev: RouteDev::External,
            onlink: false,
        });
        let p = plan(&d, &o);
        assert_eq!(p.ops[0], Op::EnsureDevice);
        assert_eq!(p.ops[1], Op::AddAddress(net("10.244.1.0/32")));
        assert!(matches!(p.ops[2], Op::DelRoute(ref r) if r.dst == net("10.244.7.0/24")));
        // Everything else is re-added: 2 peers x 3 entries.
        assert_eq!(p.ops.len(), 3 + 6, "{:?}", p.ops);
        assert_eq!(p.kept, 0);
    }

    #[test]
    fn device_needing_fix_keeps_its_entries() {
        let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
        let mut o = converged(&d);
        o.device = DeviceState::NeedsFix;
        let p = plan(&d, &o);
        assert_eq!(p.ops, vec![Op::EnsureDevice]);
        assert_eq!(p.kept, 7);
    }

    #[test]
    fn changed_mac_and_changed_public_ip() {
        let (old, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &peers());
        let o = converged(&old);
        let mut ps = peers();
        let new_mac = [0x02, 0, 0, 0, 0, 0x22];
        ps[0].vtep_mac = Some(new_mac);
        ps[1].public_ip = ip("198.18.1.33");
        let (d, _) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &ps);
        let p = plan(&d, &o);
        let p2 = net("10.244.2.0/24");
        let p3 = net("10.244.3.0/24");
        assert_eq!(
            p.ops,
            vec![
                // The old MAC's entry goes; the moved remote of MAC3 is overwritten in place.
                Op::DelFdb {
                    mac: MAC2,
                    dst: Some(ip("198.18.0.2"))
                },
                Op::ReplaceNeigh {
                    peer: p2,
                    ip: ip("10.244.2.0"),
                    mac: new_mac
                },
                Op::ReplaceFdb {
                    peer: p2,
                    mac: new_mac,
                    dst: ip("198.18.0.2")
                },
                Op::ReplaceFdb {
                    peer: p3,
                    mac: MAC3,
                    dst: ip("198.18.1.33")
                },
            ]
        );
    }

    #[test]
    fn foreign_routes_are_not_in_observed_and_own_subnet_is_skipped() {
        let mut ps = peers();
        ps.push(Peer {
            subnet: net("10.244.1.0/24"),
            public_ip: ip("198.18.0.1"),
            vtep_mac: Some([2, 0, 0, 0, 0, 1]),
        });
        let (d, errs) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &ps);
        assert!(errs.is_empty());
        assert_eq!(d.peers.len(), 2);
        assert!(d.peers.iter().all(|p| p.subnet != net("10.244.1.0/24")));
    }

    #[test]
    fn direct_routing_uses_plain_routes_only_for_on_link_peers() {
        let (d, errs) = desired_state(&vxlan(true), &ext(), &ext_nets(), own(), &peers());
        assert!(errs.is_empty());
        assert_eq!(
            d.peers[0],
            PeerEntries {
                subnet: net("10.244.2.0/24"),
                neigh: None,
                fdb: None,
                route: RouteSpec {
                    dst: net("10.244.2.0/24"),
                    gateway: Some(ip("198.18.0.2")),
                    dev: RouteDev::External,
                    onlink: false,
                },
            }
        );
        assert_eq!(d.peers[1].route, vx_route("10.244.3.0/24"));
        assert_eq!(d.peers[1].fdb, Some((MAC3, ip("198.18.1.3"))));
    }

    #[test]
    fn host_gw_refuses_peers_off_link_and_programs_the_rest() {
        let (d, errs) = desired_state(&OverlayConfig::HostGw, &ext(), &ext_nets(), own(), &peers());
        assert!(!d.overlay_device);
        assert_eq!(d.address, None);
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[0].route.gateway, Some(ip("198.18.0.2")));
        assert_eq!(d.peers[0].route.dev, RouteDev::External);
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(
            matches!(&errs[0], OverlayError::PeerNotDirectlyReachable { subnet, public_ip, .. }
                if *subnet == net("10.244.3.0/24") && *public_ip == ip("198.18.1.3")),
            "{msg}"
        );
        assert!(
            msg.contains("10.244.3.0/24") && msg.contains("198.18.1.3") && msg.contains("eth0"),
            "{msg}"
        );
        let p = plan(&d, &Observed::empty(DeviceState::Ok));
        assert_eq!(p.ops.len(), 1);
        assert!(!p.ops.contains(&Op::EnsureDevice));
    }

    #[test]
    fn vxlan_peer_without_mac_is_refused_alone_and_duplicates_are_reported() {
        let mut ps = peers();
        ps[0].vtep_mac = None;
        ps.push(ps[1].clone());
        let (d, errs) = desired_state(&vxlan(false), &ext(), &ext_nets(), own(), &ps);
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[0].subnet, net("10.244.3.0/24"));
        assert!(matches!(errs[0], OverlayError::PeerMissingVtepMac { .. }));
        assert!(matches!(errs[1], OverlayError::DuplicatePeer { .. }));
    }

    #[test]
    fn on_link_excludes_own_address_and_default_routes() {
        let e = ext();
        assert!(on_link(ip("198.18.0.200"), &e, &ext_nets()));
        assert!(!on_link(ip("198.18.0.1"), &e, &ext_nets()));
        assert!(!on_link(ip("198.19.0.2"), &e, &ext_nets()));
        assert!(!on_link(ip("198.19.0.2"), &e, &[net("0.0.0.0/0")]));
    }
}
