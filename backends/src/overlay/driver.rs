//! [`BackendDriver`]: what a backend is, seen from the backend-agnostic reconcile.
//!
//! A driver owns its `Backend` config section, its device's specification, its MTU rule, the
//! `BackendData` it publishes in the lease, how it reads a peer's `BackendData`, and the
//! kernel entries each peer needs. It does no kernel I/O of its own: [`super::Overlay`]
//! observes the kernel, asks the driver what should be, plans the difference and applies it
//! through the [`crate::kernel::Kernel`] trait. A driver with a userspace data path (udp)
//! keeps that data path itself and hears about the own subnet and the peers through
//! [`BackendDriver::set_own_subnet`] and [`BackendDriver::set_peers`].
//!
//! The drivers: [`super::vxlan::VxlanDriver`], [`super::hostgw::HostGwDriver`], and udp's in
//! the `flannel-udp` crate. flanneld picks one with a `match` on `Backend.Type` (netavark's
//! driver factory is the model).

use std::any::Any;

use ipnetwork::IpNetwork;

use super::plan::PeerEntries;
use super::{OverlayError, Peer};
use crate::kernel::netlink::{IpFamily, VxlanSpec};

/// The overlay device a driver needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A VXLAN device, created, adopted or repaired by reconcile
    /// ([`crate::kernel::Kernel::ensure_vxlan`]).
    Vxlan(VxlanSpec),
    /// A device the driver creates itself (udp's and wireguard's TUN device, a kernel
    /// wireguard device): reconcile keeps its MTU and up state right and asks the driver to
    /// [`BackendDriver::reopen_device`] when it is gone.
    Owned {
        /// Device name (`flannel0`, `flannel-wg`).
        name: String,
        /// `IFLA_INFO_KIND` it must have (`tun`, `wireguard`).
        kind: &'static str,
        /// Device MTU.
        mtu: u32,
        /// The family of the traffic it carries.
        family: IpFamily,
    },
}

impl DeviceSpec {
    /// The device's name.
    pub fn name(&self) -> &str {
        match self {
            DeviceSpec::Vxlan(s) => &s.name,
            DeviceSpec::Owned { name, .. } => name,
        }
    }

    /// The address family whose traffic the device carries: a VXLAN device's is its
    /// `local`'s (`flannel.<VNI>` IPv4, `flannel-v6.<VNI>` IPv6); an owned device's is the
    /// driver's word (udp's `flannel0` IPv4, `flannel-wg-v6` IPv6).
    pub fn family(&self) -> IpFamily {
        match self {
            DeviceSpec::Vxlan(s) => IpFamily::of(s.local),
            DeviceSpec::Owned { family, .. } => *family,
        }
    }

    /// The MTU the device must have.
    pub fn mtu(&self) -> u32 {
        match self {
            DeviceSpec::Vxlan(s) => s.mtu,
            DeviceSpec::Owned { mtu, .. } => *mtu,
        }
    }
}

/// One backend. See the module docs.
pub trait BackendDriver: Send + Sync + std::fmt::Debug {
    /// flannel's `Backend.Type` and the lease's `BackendType`: `vxlan`, `host-gw`, `udp`.
    fn kind(&self) -> &'static str;

    /// The MTU pods should use.
    fn mtu(&self) -> u32;

    /// The lease's `BackendData` (vxlan: `{"VNI":1,"VtepMAC":"aa:bb:.."}`); `None` for none.
    fn backend_data(&self) -> Option<serde_json::Value>;

    /// The overlay device, if the backend has one.
    fn device(&self) -> Option<&DeviceSpec>;

    /// Entries wanted whatever the peers (udp: `<Network> dev flannel0`).
    fn fixed_entries(&self) -> Vec<PeerEntries> {
        Vec::new()
    }

    /// The kernel entries `peer` needs; `Ok(None)` when it needs none (udp keeps peers in
    /// userspace); `Err` refuses that one peer. `on_link`: the peer's public IP is inside one
    /// of the external interface's directly connected subnets.
    fn peer_entries(&self, peer: &Peer, on_link: bool)
    -> Result<Option<PeerEntries>, OverlayError>;

    /// The node's own subnet (of the overlay's family) changed.
    fn set_own_subnet(&mut self, _subnet: IpNetwork) {}

    /// The desired peer list changed (replaced as a whole).
    fn set_peers(&mut self, _peers: &[Peer]) {}

    /// A [`DeviceSpec::Owned`] device vanished: create it again.
    fn reopen_device(&mut self) -> Result<(), OverlayError> {
        Ok(())
    }

    /// A renderer of the driver's counters in Prometheus text format, for `/metrics`.
    fn metrics_fn(&self) -> Box<dyn Fn() -> String + Send + Sync> {
        let kind = self.kind();
        Box::new(move || format!("flannel_backend_info{{type=\"{kind}\"}} 1\n"))
    }

    /// For callers that know the concrete driver (tests, udp's counters).
    fn as_any(&self) -> &dyn Any;
}

/// Checks that `ext` leaves room for an overlay device carrying `family`:
/// `ext MTU − overhead ≥ 68` (IPv4) or `≥ 1280` (IPv6).
pub fn device_mtu(
    underlay_mtu: u32,
    source: &str,
    overhead: u32,
    device: &'static str,
    family: IpFamily,
) -> Result<u32, OverlayError> {
    let mtu = underlay_mtu.saturating_sub(overhead);
    let minimum = match family {
        IpFamily::V4 => super::error::MIN_IPV4_MTU,
        IpFamily::V6 => super::error::MIN_IPV6_MTU,
    };
    if mtu < minimum {
        return Err(OverlayError::InvalidMtu {
            minimum,
            mtu: underlay_mtu,
            iface: source.to_string(),
            device,
            overhead,
        });
    }
    Ok(mtu)
}

/// The address an overlay device carries: the own subnet's network address as a /32
/// (IPv6: /128), as flannel assigns it.
pub fn device_address(own: IpNetwork) -> Option<IpNetwork> {
    let host = if own.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(own.network(), host).ok()
}
