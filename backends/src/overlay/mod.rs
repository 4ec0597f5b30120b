//! # The overlay: one node's routes to every other node's pod subnet
//!
//! Every node owns one subnet of the cluster network and learns the others' subnets (with
//! their public IPs and their backend's `BackendData`) from the lease store. [`Overlay`] makes
//! the node's kernel route to all of them, through one [`BackendDriver`]:
//!
//! * [`vxlan`]: the device `flannel.<VNI>`, and per peer a neighbour, an FDB entry and an
//!   onlink route (or, with `DirectRouting`, a plain route to on-link peers);
//! * [`hostgw`]: per peer a plain route via its public IP, layer-2 adjacency required;
//! * udp (crate `flannel-udp`): the TUN device `flannel0`, one route for the whole network,
//!   peers in a userspace table.
//!
//! A new backend is a new driver module: its config section, device, MTU rule, `BackendData`
//! and per-peer entries (see [`driver`]). Reconcile itself knows nothing of backends.
//!
//! ## Level-triggered, not event-driven
//!
//! flannel programs entries when a lease event arrives and otherwise trusts the kernel, so a
//! route someone deleted, an event missed across a restart, or a recreated device leaves the
//! node broken until the next event for that lease. Here the caller only *states* what it
//! wants ([`Overlay::set_own_subnet`], [`Overlay::set_peers`]) and [`Overlay::reconcile`]
//! reads the kernel, computes the difference ([`plan()`]) and applies it. It is cheap enough to
//! run periodically and whenever [`crate::kernel::netlink::Monitor`] reports a change.
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
//! matches (vxlan also keeps its VTEP MAC, see [`vxlan::vtep_mac`]).

pub mod driver;
mod error;
pub mod hostgw;
mod incremental;
pub mod plan;
mod reconcile;
pub mod section;
pub mod vxlan;

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::kernel::Kernel;
use crate::kernel::netlink::{Change, IpFamily, Netlink, VxlanOutcome};

pub use crate::kernel::netlink::{format_mac, parse_mac};
pub use driver::{BackendDriver, DeviceSpec};
pub use error::{MIN_IPV4_MTU, MIN_IPV6_MTU, OverlayError};
pub use plan::{
    Desired, DeviceState, Observed, ObservedNeigh, Op, PeerEntries, Plan, RouteDev, RouteSpec,
    desired_state, on_link, plan, plan_by_family,
};
pub use vxlan::{VXLAN_OVERHEAD, vtep_mac, vtep_mac_from_backend_data};

/// The route protocol (`proto 150`) tagging every route this module installs.
pub const ROUTE_PROTOCOL: u8 = 150;

/// The node's uplink as one address family sees it: where underlay traffic leaves, and the
/// address peers reach us at. A dual-stack node has two views of the same interface, one per
/// [`Overlay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalInterface {
    /// Interface index.
    pub index: u32,
    /// Interface name (for messages).
    pub name: String,
    /// Interface MTU.
    pub mtu: u32,
    /// The interface's own address of this family (VXLAN `local`).
    pub iface_addr: IpAddr,
    /// The address published in our lease (differs from `iface_addr` behind NAT); same family.
    pub public_ip: IpAddr,
}

impl ExternalInterface {
    /// The family of the underlay addresses, which is also the family of the pod subnets
    /// this overlay routes (flannel pairs IPv4 pods with an IPv4 underlay and IPv6 pods with
    /// an IPv6 one).
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.iface_addr)
    }
}

/// Another node, as its lease describes it for one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The node's pod subnet of this family (`Subnet` or `IPv6Subnet` of the lease).
    pub subnet: IpNetwork,
    /// The node's public IP of this family (`PublicIP` or `PublicIPv6`): underlay next hop
    /// or tunnel remote.
    pub public_ip: IpAddr,
    /// The lease's `BackendData` (IPv6: `BackendV6Data`), as published by the peer's driver
    /// (vxlan: its VTEP MAC); read by our driver of the same type. Shared with the lease.
    pub backend_data: Option<ipam::lease::BackendData>,
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
    /// What happened to the overlay device, when something had to be done to it.
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

/// One node's overlay: a driver, the desired state, and the kernel to make match it.
#[derive(Debug)]
pub struct Overlay<K: Kernel = Netlink> {
    kernel: K,
    driver: Box<dyn BackendDriver>,
    ext: ExternalInterface,
    /// The overlay device's current ifindex, refreshed on every reconcile.
    dev_index: Option<u32>,
    own: Option<IpNetwork>,
    peers: Vec<Peer>,
    /// Position of each peer in `peers`, by subnet (O(1) updates of one peer).
    peer_index: HashMap<IpNetwork, usize>,
    /// What is in the kernel for each peer, as of the last reconcile and the single-peer
    /// updates since: what a lease change diffs against and what `is_relevant` compares
    /// notifications with.
    programmed: incremental::Programmed,
    /// The external interface's directly connected networks, as of the last reconcile.
    ext_nets: Vec<IpNetwork>,
    /// The driver has not been handed the latest `peers` yet
    /// ([`Overlay::sync_driver_peers`]).
    driver_peers_stale: bool,
    /// IPv4 gateway routes go through nexthop objects ([`plan::RouteSpec::via_nexthop`]):
    /// the overlay is IPv4 and the kernel has them.
    nexthops: bool,
}

impl<K: Kernel> Overlay<K> {
    /// Starts `driver` on `ext` through `kernel` (whose namespace is the node's): a VXLAN
    /// device is created or adopted at once ([`Kernel::ensure_vxlan`]); a driver-owned device
    /// (udp's TUN) gets its MTU and up state fixed. No peer state is touched until
    /// [`Overlay::reconcile`].
    pub async fn new(
        kernel: K,
        driver: Box<dyn BackendDriver>,
        ext: ExternalInterface,
    ) -> Result<Overlay<K>, OverlayError> {
        let mut overlay = Overlay {
            kernel,
            driver,
            ext,
            dev_index: None,
            own: None,
            peers: Vec::new(),
            peer_index: HashMap::new(),
            programmed: incremental::Programmed::default(),
            ext_nets: Vec::new(),
            nexthops: false,
            driver_peers_stale: false,
        };
        if overlay.family() == IpFamily::V4 {
            overlay.nexthops = overlay.kernel.nexthops_supported().await;
        }
        if let Some(device) = overlay.driver.device().cloned() {
            let outcome = overlay.ensure_device(&device).await?;
            tracing::info!(device = device.name(), ?outcome, index = ?overlay.dev_index,
                "overlay device ready");
        }
        Ok(overlay)
    }

    /// The driver (`as_any` reaches the concrete one).
    pub fn driver(&self) -> &dyn BackendDriver {
        self.driver.as_ref()
    }

    /// The kernel handle.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The address family this overlay serves (its external interface view's).
    pub fn family(&self) -> IpFamily {
        self.ext.family()
    }

    /// `"vxlan"`, `"host-gw"` or `"udp"` (the lease's `BackendType`).
    pub fn backend_type(&self) -> &'static str {
        self.driver.kind()
    }

    /// A renderer of the backend's counters in Prometheus text format, for flanneld's
    /// `/metrics` (`flannel_backend_info{type=..}`, plus udp's datapath counters).
    pub fn metrics_fn(&self) -> Box<dyn Fn() -> String + Send + Sync> {
        self.driver.metrics_fn()
    }

    /// The lease's `BackendData`.
    pub fn backend_data(&self) -> Option<serde_json::Value> {
        self.driver.backend_data()
    }

    /// The MTU pods should use.
    pub fn mtu(&self) -> u32 {
        self.driver.mtu()
    }

    /// The overlay device's name (`flannel.<VNI>`, `flannel0`); `None` for host-gw.
    pub fn device_name(&self) -> Option<&str> {
        self.driver.device().map(DeviceSpec::name)
    }

    /// The node's own subnet of this overlay's family (an overlay device carries
    /// `<subnet>.0/32`, or `<subnet>::/128`; a peer with this subnet is ignored). Takes effect
    /// on the next reconcile.
    pub fn set_own_subnet(&mut self, subnet: IpNetwork) {
        self.own = Some(subnet);
        self.driver.set_own_subnet(subnet);
    }

    /// The complete desired peer list (replaces the previous one). Takes effect on the next
    /// reconcile; a userspace data path (udp) swaps its table at once.
    pub fn set_peers(&mut self, peers: Vec<Peer>) {
        self.driver.set_peers(&peers);
        self.driver_peers_stale = false;
        self.peer_index = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.subnet, i))
            .collect();
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
            // Our own writes come back as notifications too: a route of ours appearing where
            // we want one, or going where we want none, is an echo, not news. What is news: a
            // wanted route deleted, an unwanted one of ours appearing, anyone else's route to
            // a peer's subnet.
            Change::Route {
                dst,
                protocol,
                deleted,
            } => {
                let wanted = dst.is_some_and(|d| self.programmed.wants_route(&d));
                if *protocol == ROUTE_PROTOCOL {
                    wanted == *deleted
                } else {
                    dst.is_some_and(|d| self.peer_index.contains_key(&d))
                }
            }
            Change::Neigh {
                ifindex,
                deleted,
                fdb,
                ip,
                mac,
            } => {
                Some(*ifindex) == self.dev_index
                    && self.programmed.neigh_is_news(*deleted, *fdb, *ip, *mac)
            }
            Change::Nexthop {
                id,
                gateway,
                deleted,
            } => self.programmed.nexthop_is_news(*id, *gateway, *deleted),
            Change::Overrun => true,
            Change::Other => false,
        }
    }
}
