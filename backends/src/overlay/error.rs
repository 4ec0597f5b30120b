//! [`OverlayError`]: what can go wrong setting up a backend or programming its peers.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::kernel::netlink::NetlinkError;

/// The smallest MTU the kernel accepts for IPv4.
pub const MIN_IPV4_MTU: u32 = 68;
/// The smallest MTU IPv6 allows (RFC 8200); the kernel removes IPv6 from a device below it.
pub const MIN_IPV6_MTU: u32 = 1280;

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
        subnet: ipnetwork::IpNetwork,
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
        subnet: IpNetwork,
        /// Its public IP.
        public_ip: IpAddr,
        /// Our external interface.
        iface: String,
    },
    /// vxlan: the peer's lease carries no VTEP MAC.
    #[error("vxlan peer {subnet}: lease has no BackendData.VtepMAC")]
    PeerMissingVtepMac {
        /// The peer's subnet.
        subnet: IpNetwork,
    },
    /// Two peers claim the same subnet; the later one is ignored.
    #[error("peer {subnet}: listed twice; ignoring the later entry")]
    DuplicatePeer {
        /// The subnet.
        subnet: IpNetwork,
    },
    /// `Backend.VNI` out of range.
    #[error("Backend.VNI {vni} out of range 0..={max} ({device}<VNI> must fit in 15 bytes)")]
    InvalidVni {
        /// The configured VNI.
        vni: u32,
        /// The largest VNI that fits.
        max: u32,
        /// The device name prefix (`flannel.`, `flannel-v6.`).
        device: &'static str,
    },
    /// The external interface has no address of the family a backend needs.
    #[error("{backend}: {reason}")]
    Unsupported {
        /// The backend (`udp`).
        backend: &'static str,
        /// What is not supported.
        reason: String,
    },
    /// The resulting device MTU is too small.
    #[error("MTU {mtu} of {iface} leaves a {device} MTU below {minimum} (overhead {overhead})")]
    InvalidMtu {
        /// The smallest MTU the device's family allows (IPv4 68, IPv6 1280).
        minimum: u32,
        /// The underlay MTU used.
        mtu: u32,
        /// Where it came from.
        iface: String,
        /// The overlay device kind (`VXLAN device`, `TUN device`).
        device: &'static str,
        /// The encapsulation overhead subtracted.
        overhead: u32,
    },
    /// host-gw cannot work behind NAT.
    #[error(
        "host-gw: public IP {public_ip} differs from {iface}'s address {iface_addr}; host-gw does not work behind NAT"
    )]
    PublicIpMismatch {
        /// The published address.
        public_ip: IpAddr,
        /// The interface address.
        iface_addr: IpAddr,
        /// The interface.
        iface: String,
    },
    /// A userspace data path (TUN device, socket or threads) could not be set up.
    #[error(transparent)]
    Datapath(Box<dyn std::error::Error + Send + Sync>),
    /// `BackendData` of a lease could not be understood.
    #[error("BackendData {data}: {reason}")]
    BadBackendData {
        /// The JSON as received.
        data: String,
        /// What is wrong with it.
        reason: String,
    },
}
