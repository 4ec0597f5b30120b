//! # The wireguard backend: encrypted pod traffic, flannel-compatible, on every kernel
//!
//! flannel's `wireguard` backend (k3s's `wireguard-native`) puts a kernel WireGuard device
//! `flannel-wg` on each node, routes the whole cluster network into it and makes every other
//! node a WireGuard peer whose allowed IPs are its pod subnet; the peer's public key travels in
//! its lease (`BackendData: {"PublicKey":"…","Port":51820}`). That needs the kernel module,
//! which many kernels lack. This backend keeps flannel's devices, keys, lease data and config
//! keys ([`config`]), so nodes of both implementations form one mesh, and runs on two paths:
//!
//! * **Kernel module** (`backends::kernel::wireguard`, in the kernel room with every other
//!   netlink socket): where `ip link add … type wireguard` works, the device is configured
//!   over generic netlink (no `wg` binary needed).
//! * **Userspace** ([`userspace`], [`device`]): where it does not, flanneld is the device:
//!   boringtun's sans-IO `noise` state machine (handshakes, sessions, rekeying, keepalives,
//!   cookies; no hand-written crypto) runs on the udp backend's TUN data path, with the same
//!   offloads (TSO super-packets from the TUN, UDP GSO out, UDP GRO in, coalesced TUN writes)
//!   that make that backend fast. `wg show flannel-wg` works there too ([`uapi`]).
//!
//! Peers come from the lease watch like every backend's ([`driver::WireguardDriver`]): a
//! peer's allowed IPs are exactly its subnet, a packet from a peer with an inner source outside
//! them is dropped and counted, a removed lease removes the peer at once, a peer whose key
//! changed replaces the old one (flannel leaves the old one configured).
//!
//! ## Restarts
//! The node's private key is persisted ([`key`]) so peers keep working across restarts. On
//! the userspace path the TUN device is *persistent*: when flanneld stops, `flannel-wg` keeps
//! its address and the cluster route, so pod traffic to other nodes waits in (or is dropped
//! by) the device instead of leaving unencrypted through the default route; the next flanneld
//! attaches to the same device, and the first packet to each peer starts a fresh handshake
//! (one round trip). `flanneld --cleanup` removes the device.

pub mod config;
pub mod device;
pub mod driver;

pub mod key;
pub mod peers;
pub mod uapi;
pub mod userspace;

pub use config::{Mode, WireguardConfig};
pub use driver::{DEVICE_V4, DEVICE_V6, WG_OVERHEAD, WireguardDriver, WireguardPaths};
