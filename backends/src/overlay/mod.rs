//! # The overlay backends: vxlan, host-gw and (feature `udp`) udp
//!
//! Every node owns one subnet of the cluster network and learns the others' subnets (with
//! their public IPs and, for VXLAN, their VTEP MACs) from the lease store. This module makes
//! the node's kernel route to all of them:
//!
//! * **vxlan**: one VXLAN device `flannel.<VNI>` with the own subnet's network address as a
//!   /32. Per peer: a permanent ARP entry `<peer subnet>.0 → VTEP MAC`, an FDB entry `VTEP MAC →
//!   peer public IP`, and the route `<peer subnet> via <peer subnet>.0 dev flannel.<VNI>
//!   onlink`. With `DirectRouting`, a peer on the same layer-2 segment gets a plain route via
//!   its public IP instead, and no tunnel.
//! * **host-gw**: per peer only `<peer subnet> via <peer public IP> dev <ext>`, which needs the
//!   peer on our layer-2 segment; a peer that is not is refused with
//!   [`OverlayError::PeerNotDirectlyReachable`] and nothing is programmed for it.
//! * **udp** (cargo feature `udp`): the TUN device `flannel0` (address `<own subnet>.0/32`,
//!   MTU ext − 28) and one route `<Network> dev flannel0`; peers are not kernel entries at all
//!   but rows of the userspace forwarding table of `crate::udp`, swapped on every
//!   [`Overlay::set_peers`].
//!
//! ## Level-triggered, not event-driven
//!
//! flannel programs entries when a lease event arrives and otherwise trusts the kernel, so a
//! route someone deleted, an event missed across a restart, or a recreated device leaves the
//! node broken until the next event for that lease. Here the caller only *states* what it
//! wants ([`Overlay::set_own_subnet`], [`Overlay::set_peers`]) and [`Overlay::reconcile`]
//! reads the kernel, computes the difference ([`plan()`]) and applies it. It is cheap enough to
//! run periodically and whenever [`crate::netlink::Monitor`] reports a change.
//!
//! ## Ownership
//!
//! Every route we install carries [`ROUTE_PROTOCOL`]; reconcile deletes routes with that
//! protocol that are no longer wanted (including those left over from before a restart) and
//! never touches routes with any other protocol. Neighbours, FDB entries and addresses on the
//! VXLAN device are all ours, because the device is.
//!
//! ## Restarts are hitless
//!
//! Nothing is torn down at shutdown, and the device is adopted on start when its identity
//! matches. The VTEP MAC is derived from the public IP and the VNI ([`vtep_mac`]) instead of
//! being random, so a restarted (or rebooted) node keeps the MAC its peers have in their ARP and
//! FDB tables: flannel picks a new one and leaves peers with stale entries until they catch up.

pub mod plan;
mod reconcile;

use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::netlink::{Change, Netlink, NetlinkError, VxlanOutcome, VxlanSpec};
use crate::netns::NetNs;

pub use plan::{
    Desired, DeviceState, Observed, ObservedNeigh, Op, PeerEntries, Plan, RouteDev, RouteSpec,
    desired_state, on_link, plan,
};

/// The route protocol (`proto 150`) tagging every route this module installs.
pub const ROUTE_PROTOCOL: u8 = 150;

/// VXLAN encapsulation overhead subtracted from the underlay MTU (outer IPv4 20 + UDP 8 +
/// VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The largest VNI whose device name `flannel.<VNI>` fits in 15 bytes (and below 2^24).
pub const MAX_VNI: u32 = 9_999_999;

/// The smallest MTU the kernel accepts for IPv4.
const MIN_IPV4_MTU: u32 = 68;

/// The node's uplink: where underlay traffic leaves, and the address peers reach us at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalInterface {
    /// Interface index.
    pub index: u32,
    /// Interface name (for messages).
    pub name: String,
    /// Interface MTU.
    pub mtu: u32,
    /// The interface's own IPv4 address (VXLAN `local`).
    pub iface_addr: Ipv4Addr,
    /// The address published in our lease (differs from `iface_addr` behind NAT).
    pub public_ip: Ipv4Addr,
}

/// Another node, as its lease describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The node's pod subnet.
    pub subnet: Ipv4Network,
    /// The node's public IP (underlay next hop / VXLAN remote).
    pub public_ip: Ipv4Addr,
    /// The node's VTEP MAC (from `BackendData.VtepMAC`); required for VXLAN peers that are not
    /// served by direct routing.
    pub vtep_mac: Option<[u8; 6]>,
}

/// VXLAN backend settings (flannel's `Backend` object for `"Type": "vxlan"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanParams {
    /// `VNI` (flannel's default is 1).
    pub vni: u32,
    /// `Port`; 0 means the kernel default 8472.
    pub port: u16,
    /// `GBP`.
    pub gbp: bool,
    /// `Learning` (flannel's default is off).
    pub learning: bool,
    /// `DirectRouting`: plain routes for peers on the same layer-2 segment.
    pub direct_routing: bool,
    /// `MTU`: the underlay MTU to assume instead of the external interface's (the device MTU is
    /// this minus [`VXLAN_OVERHEAD`]).
    pub mtu: Option<u32>,
}

impl Default for VxlanParams {
    fn default() -> Self {
        VxlanParams {
            vni: 1,
            port: 0,
            gbp: false,
            learning: false,
            direct_routing: false,
            mtu: None,
        }
    }
}

/// udp backend settings (flannel's `Backend` object for `"Type": "udp"`).
#[cfg(feature = "udp")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpParams {
    /// `Port` (flannel's default is 8285): bound on the interface address, and where peers are
    /// sent to.
    pub port: u16,
    /// The whole cluster network (`Network`): routed into the TUN device.
    pub network: Ipv4Network,
}

/// Which backend to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayConfig {
    /// VXLAN tunnels.
    Vxlan(VxlanParams),
    /// Plain routes via the peers' public IPs (layer-2 adjacency required).
    HostGw,
    /// Userspace encapsulation over TUN, flannel's wire format.
    #[cfg(feature = "udp")]
    Udp(UdpParams),
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A kernel operation not tied to one peer failed (the message names the `ip` command).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Programming one peer failed; other peers were still programmed.
    #[error("peer {subnet}: {source}")]
    Peer {
        /// The peer's subnet.
        subnet: Ipv4Network,
        /// The kernel error.
        #[source]
        source: NetlinkError,
    },
    /// host-gw: the peer's public IP is not on one of our directly connected subnets.
    #[error(
        "host-gw peer {subnet}: public IP {public_ip} is not inside any subnet directly connected to {iface}; host-gw needs layer-2 adjacency (use vxlan, or vxlan with DirectRouting)"
    )]
    PeerNotDirectlyReachable {
        /// The peer's subnet.
        subnet: Ipv4Network,
        /// Its public IP.
        public_ip: Ipv4Addr,
        /// Our external interface.
        iface: String,
    },
    /// vxlan: the peer's lease carries no VTEP MAC.
    #[error("vxlan peer {subnet}: lease has no BackendData.VtepMAC")]
    PeerMissingVtepMac {
        /// The peer's subnet.
        subnet: Ipv4Network,
    },
    /// Two peers claim the same subnet; the later one is ignored.
    #[error("peer {subnet}: listed twice; ignoring the later entry")]
    DuplicatePeer {
        /// The subnet.
        subnet: Ipv4Network,
    },
    /// `Backend.VNI` out of range.
    #[error("Backend.VNI {vni} out of range 0..={MAX_VNI} (flannel.<VNI> must fit in 15 bytes)")]
    InvalidVni {
        /// The configured VNI.
        vni: u32,
    },
    /// The resulting device MTU is too small.
    #[error(
        "MTU {mtu} of {iface} leaves a VXLAN device MTU below {MIN_IPV4_MTU} (overhead {VXLAN_OVERHEAD})"
    )]
    InvalidMtu {
        /// The underlay MTU used.
        mtu: u32,
        /// Where it came from.
        iface: String,
    },
    /// host-gw cannot work behind NAT.
    #[error(
        "host-gw: public IP {public_ip} differs from {iface}'s address {iface_addr}; host-gw does not work behind NAT"
    )]
    PublicIpMismatch {
        /// The published address.
        public_ip: Ipv4Addr,
        /// The interface address.
        iface_addr: Ipv4Addr,
        /// The interface.
        iface: String,
    },
    /// The udp datapath (TUN device, socket or threads) could not be set up.
    #[cfg(feature = "udp")]
    #[error(transparent)]
    Udp(#[from] crate::udp::UdpError),
    /// `BackendData` of a lease could not be understood.
    #[error("BackendData {data}: {reason}")]
    BadBackendData {
        /// The JSON as received.
        data: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What one [`Overlay::reconcile`] did.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// Entries written (address, neighbours, FDB entries, routes).
    pub added: usize,
    /// Stale entries deleted.
    pub removed: usize,
    /// Desired entries that were already right.
    pub kept: usize,
    /// What happened to the VXLAN device, when something had to be done to it.
    pub device: Option<VxlanOutcome>,
    /// Per-peer (and per-stale-entry) failures; the rest was still applied.
    pub errors: Vec<OverlayError>,
}

impl ReconcileReport {
    /// No errors.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether anything in the kernel was changed (entries written or deleted, device created,
    /// recreated or fixed).
    pub fn changed(&self) -> bool {
        self.added + self.removed > 0 || self.device.is_some_and(|d| d != VxlanOutcome::Kept)
    }
}

/// `Fixed`, unless something bigger (a creation) already happened.
#[cfg(feature = "udp")]
fn fixed(o: VxlanOutcome) -> VxlanOutcome {
    if o == VxlanOutcome::Kept {
        VxlanOutcome::Fixed
    } else {
        o
    }
}

/// The deterministic VTEP MAC of a node: a locally administered unicast address derived
/// (FNV-1a) from the public IP and the VNI, so it survives restarts and reboots.
pub fn vtep_mac(public_ip: Ipv4Addr, vni: u32) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let (ip, vni) = (public_ip.octets(), vni.to_be_bytes());
    for b in b"flannel-rs vtep".iter().chain(&ip).chain(&vni) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

pub use crate::netlink::{format_mac, parse_mac};

/// The VTEP MAC in a VXLAN lease's `BackendData` (`{"VNI":1,"VtepMAC":"aa:bb:.."}`).
pub fn vtep_mac_from_backend_data(data: &serde_json::Value) -> Result<[u8; 6], OverlayError> {
    let bad = |reason: &str| OverlayError::BadBackendData {
        data: data.to_string(),
        reason: reason.to_string(),
    };
    let s = data
        .get("VtepMAC")
        .ok_or_else(|| bad("no VtepMAC field"))?
        .as_str()
        .ok_or_else(|| bad("VtepMAC is not a string"))?;
    parse_mac(s).ok_or_else(|| bad("VtepMAC is not a MAC address"))
}

/// One node's overlay: the desired state plus the handle to make the kernel match it.
#[derive(Debug)]
pub struct Overlay {
    nl: Netlink,
    cfg: OverlayConfig,
    ext: ExternalInterface,
    /// The VXLAN device as it must be (vxlan only).
    spec: Option<VxlanSpec>,
    /// The VXLAN device's current ifindex, refreshed on every reconcile.
    dev_index: Option<u32>,
    own: Option<Ipv4Network>,
    peers: Vec<Peer>,
    /// The running udp datapath (udp only).
    #[cfg(feature = "udp")]
    udp: Option<crate::udp::UdpBackend>,
}

impl Overlay {
    /// Sets up the backend on `ext` using the netlink handle `nl` (whose namespace is the
    /// node's).
    ///
    /// vxlan: creates or adopts `flannel.<VNI>` (`ip link add flannel.<VNI> type vxlan id VNI
    /// local <ext.iface_addr> dev <ext> dstport PORT nolearning address <vtep_mac> mtu
    /// (cfg.mtu or ext.mtu) − 50`, see [`Netlink::ensure_vxlan`]). host-gw: checks that the
    /// public IP is the interface's own (no NAT). No peer state is touched until
    /// [`Overlay::reconcile`].
    ///
    /// udp: creates the TUN device `flannel0` (`ip tuntap add dev flannel0 mode tun`), sets its
    /// MTU to ext − 28 and brings it up, binds the UDP socket to `<ext.iface_addr>:<port>` and
    /// starts the datapath threads; address and route follow on reconcile. The TUN device and
    /// the socket are created in the calling thread's namespace, which must be `nl`'s (see
    /// [`Overlay::new_in`] otherwise).
    pub async fn new(
        nl: Netlink,
        cfg: OverlayConfig,
        ext: ExternalInterface,
    ) -> Result<Overlay, OverlayError> {
        Overlay::create(nl, cfg, ext, None).await
    }

    /// [`Overlay::new`] for a netlink handle bound to another namespace `ns` (see
    /// [`Netlink::new_in`]): the udp backend's TUN device and socket are created inside `ns`.
    /// The kernel backends behave exactly as with [`Overlay::new`].
    pub async fn new_in(
        nl: Netlink,
        cfg: OverlayConfig,
        ext: ExternalInterface,
        ns: &NetNs,
    ) -> Result<Overlay, OverlayError> {
        Overlay::create(nl, cfg, ext, Some(ns)).await
    }

    async fn create(
        nl: Netlink,
        cfg: OverlayConfig,
        ext: ExternalInterface,
        #[cfg_attr(not(feature = "udp"), allow(unused_variables))] ns: Option<&NetNs>,
    ) -> Result<Overlay, OverlayError> {
        let mut spec = None;
        #[cfg(feature = "udp")]
        let mut udp = None;
        match &cfg {
            OverlayConfig::Vxlan(v) => {
                if v.vni > MAX_VNI {
                    return Err(OverlayError::InvalidVni { vni: v.vni });
                }
                let (underlay_mtu, source) = match v.mtu {
                    Some(m) => (m, "Backend.MTU".to_string()),
                    None => (ext.mtu, ext.name.clone()),
                };
                let mtu = underlay_mtu.saturating_sub(VXLAN_OVERHEAD);
                if mtu < MIN_IPV4_MTU {
                    return Err(OverlayError::InvalidMtu {
                        mtu: underlay_mtu,
                        iface: source,
                    });
                }
                spec = Some(VxlanSpec {
                    name: format!("flannel.{}", v.vni),
                    vni: v.vni,
                    port: v.port,
                    local: ext.iface_addr,
                    underlay_ifindex: ext.index,
                    learning: v.learning,
                    gbp: v.gbp,
                    mtu,
                    mac: vtep_mac(ext.public_ip, v.vni),
                });
            }
            OverlayConfig::HostGw => {
                if ext.public_ip != ext.iface_addr {
                    return Err(OverlayError::PublicIpMismatch {
                        public_ip: ext.public_ip,
                        iface_addr: ext.iface_addr,
                        iface: ext.name.clone(),
                    });
                }
            }
            #[cfg(feature = "udp")]
            OverlayConfig::Udp(u) => {
                if ext.mtu.saturating_sub(crate::udp::UDP_OVERHEAD) < MIN_IPV4_MTU {
                    return Err(OverlayError::InvalidMtu {
                        mtu: ext.mtu,
                        iface: ext.name.clone(),
                    });
                }
                let setup = crate::udp::UdpSetup {
                    tun_name: crate::udp::TUN_NAME.to_string(),
                    local: std::net::SocketAddrV4::new(ext.iface_addr, u.port),
                    offload: true,
                };
                udp = Some(crate::udp::UdpBackend::start(setup, ns)?);
            }
        }
        let mut overlay = Overlay {
            nl,
            cfg,
            ext,
            spec,
            dev_index: None,
            own: None,
            peers: Vec::new(),
            #[cfg(feature = "udp")]
            udp,
        };
        #[cfg(feature = "udp")]
        if overlay.udp.is_some() {
            overlay.ensure_tun_link().await?;
        }
        if let Some(spec) = &overlay.spec {
            let (dev, outcome) = overlay.nl.ensure_vxlan(spec).await?;
            tracing::info!(device = %spec.name, ?outcome, index = dev.link.index, "vxlan device ready");
            overlay.dev_index = Some(dev.link.index);
        }
        Ok(overlay)
    }

    /// `"vxlan"`, `"host-gw"` or `"udp"` (the lease's `BackendType`).
    pub fn backend_type(&self) -> &'static str {
        match self.cfg {
            OverlayConfig::Vxlan(_) => "vxlan",
            OverlayConfig::HostGw => "host-gw",
            #[cfg(feature = "udp")]
            OverlayConfig::Udp(_) => "udp",
        }
    }

    /// A renderer of this backend's counters in Prometheus text format, for flanneld's
    /// `/metrics`. The kernel backends keep no counters of their own (the kernel's link
    /// statistics cover them), so they only report which backend runs; udp adds its datapath
    /// counters (`flannel_udp_*_total`, e.g. `flannel_udp_rx_dropped_non_member_total`).
    pub fn metrics_fn(&self) -> Box<dyn Fn() -> String + Send + Sync> {
        let kind = self.backend_type();
        #[cfg(feature = "udp")]
        if let Some(u) = &self.udp {
            let counters = u.metrics_fn();
            return Box::new(move || {
                format!("flannel_backend_info{{type=\"{kind}\"}} 1\n{}", counters())
            });
        }
        Box::new(move || format!("flannel_backend_info{{type=\"{kind}\"}} 1\n"))
    }

    /// The udp datapath (udp backend only): counters, offloads.
    #[cfg(feature = "udp")]
    pub fn udp(&self) -> Option<&crate::udp::UdpBackend> {
        self.udp.as_ref()
    }

    /// udp: makes the TUN device right in place: MTU ext − 28 and up (`ip link set flannel0
    /// mtu M up`); reopens it (new device, restarted threads) when it vanished. Returns what was
    /// done, with the device index recorded.
    #[cfg(feature = "udp")]
    async fn ensure_tun_link(&mut self) -> Result<VxlanOutcome, OverlayError> {
        let name = crate::udp::TUN_NAME;
        let mtu = self.mtu();
        let mut outcome = VxlanOutcome::Kept;
        let link = match self.nl.link(name).await? {
            Some(l) if l.kind.as_deref() == Some("tun") => l,
            _ => {
                if let Some(u) = self.udp.as_mut() {
                    tracing::warn!(device = name, "TUN device missing; reopening it");
                    u.restart()?;
                }
                outcome = VxlanOutcome::Created;
                self.nl
                    .link(name)
                    .await?
                    .ok_or_else(|| NetlinkError::NotFound(format!("{name}: TUN device missing")))?
            }
        };
        if link.mtu != mtu {
            self.nl.set_mtu(link.index, mtu).await?;
            outcome = fixed(outcome);
        }
        if !link.admin_up {
            self.nl.set_up(link.index).await?;
            outcome = fixed(outcome);
        }
        self.dev_index = Some(link.index);
        Ok(outcome)
    }

    /// The lease's `BackendData`: vxlan `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}` (flannel's
    /// shape); host-gw `None`.
    pub fn backend_data(&self) -> Option<serde_json::Value> {
        let spec = self.spec.as_ref()?;
        Some(serde_json::json!({
            "VNI": spec.vni,
            "VtepMAC": format_mac(&spec.mac),
        }))
    }

    /// The MTU pods should use: the VXLAN device's MTU, the external interface's for host-gw,
    /// the external interface's minus 28 for udp.
    pub fn mtu(&self) -> u32 {
        #[cfg(feature = "udp")]
        if let OverlayConfig::Udp(_) = self.cfg {
            return self.ext.mtu.saturating_sub(crate::udp::UDP_OVERHEAD);
        }
        match &self.spec {
            Some(s) => s.mtu,
            None => self.ext.mtu,
        }
    }

    /// The overlay device's name (`flannel.<VNI>`, or `flannel0` for udp); `None` for host-gw.
    pub fn device_name(&self) -> Option<&str> {
        #[cfg(feature = "udp")]
        if let Some(u) = &self.udp {
            return Some(u.tun_name());
        }
        self.spec.as_ref().map(|s| s.name.as_str())
    }

    /// Our VTEP MAC; `None` for host-gw.
    pub fn vtep_mac(&self) -> Option<[u8; 6]> {
        self.spec.as_ref().map(|s| s.mac)
    }

    /// The external interface this overlay runs on.
    pub fn external_interface(&self) -> &ExternalInterface {
        &self.ext
    }

    /// The node's own subnet (vxlan puts `<subnet>.0/32` on the device; a peer with this subnet
    /// is ignored). Takes effect on the next reconcile.
    pub fn set_own_subnet(&mut self, subnet: Ipv4Network) {
        self.own = Some(subnet);
        #[cfg(feature = "udp")]
        if let Some(u) = self.udp.as_mut() {
            u.set_own_subnet(Some(subnet));
        }
    }

    /// The complete desired peer list (replaces the previous one). Takes effect on the next
    /// reconcile; for udp the datapath's forwarding and membership table is swapped at once.
    pub fn set_peers(&mut self, peers: Vec<Peer>) {
        #[cfg(feature = "udp")]
        if let Some(u) = self.udp.as_mut() {
            u.set_peers(peers.iter().map(|p| (p.subnet, p.public_ip)).collect());
        }
        self.peers = peers;
    }

    /// The current desired peer list.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Whether a kernel change notification may concern this overlay, i.e. is worth a
    /// reconcile: anything about our device or the external interface, routes with
    /// [`ROUTE_PROTOCOL`] or to a peer's subnet, neighbours/FDB of our device, and overruns.
    /// Filters out the constant ARP churn on other interfaces and unrelated routes.
    pub fn is_relevant(&self, change: &Change) -> bool {
        match change {
            Change::Link { index, name, .. } => {
                Some(*index) == self.dev_index
                    || *index == self.ext.index
                    || (name.is_some() && name.as_deref() == self.device_name())
            }
            Change::Route { dst, protocol, .. } => {
                *protocol == ROUTE_PROTOCOL
                    || dst.is_some_and(|d| self.peers.iter().any(|p| IpNetwork::V4(p.subnet) == d))
            }
            Change::Neigh { ifindex, .. } => Some(*ifindex) == self.dev_index,
            Change::Overrun => true,
            Change::Other => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_stable_unicast_local_and_distinct() {
        let a: Ipv4Addr = "198.18.0.1".parse().expect("ip");
        let b: Ipv4Addr = "198.18.0.2".parse().expect("ip");
        let m = vtep_mac(a, 1);
        assert_eq!(m, vtep_mac(a, 1));
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_ne!(m, vtep_mac(b, 1));
        assert_ne!(m, vtep_mac(a, 2));
    }

    #[test]
    fn mac_text_round_trip_and_backend_data_parsing() {
        let m = [0x0a, 0xbc, 0x00, 0x01, 0xfe, 0xff];
        assert_eq!(format_mac(&m), "0a:bc:00:01:fe:ff");
        assert_eq!(parse_mac("0A:BC:00:01:FE:FF"), Some(m));
        for bad in [
            "",
            "0a:bc:00:01:fe",
            "0a:bc:00:01:fe:ff:00",
            "0a:bc:00:01:fe:fg",
            "a:bc:00:01:fe:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        let data = serde_json::json!({"VNI": 1, "VtepMAC": "0a:bc:00:01:fe:ff"});
        assert_eq!(vtep_mac_from_backend_data(&data).expect("valid"), m);
        let err = vtep_mac_from_backend_data(&serde_json::json!({"VNI": 1})).unwrap_err();
        assert!(err.to_string().contains("VtepMAC"), "{err}");
    }
}
