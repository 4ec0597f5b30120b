//! # backends — the only crate that programs the kernel data plane
//!
//! Everything that talks to the kernel about networking goes through this crate:
//!
//! * [`netlink`] is the one intent-level surface over `rtnetlink` (links, addresses, routes,
//!   neighbours, FDB). No other module or crate imports `rtnetlink` directly.
//! * [`netns`] opens network namespaces and runs work inside them on throw-away threads,
//!   never on an async runtime worker.
//! * [`sysctl`] reads and writes `/proc/sys` knobs in the caller's namespace.
//! * [`garp`] builds and sends gratuitous ARP frames from a packet socket (tests use it; the
//!   CNI plugin has the kernel send them, see [`netlink::Netlink::announce`]).
//! * [`ethtool`] reads link state through the ethtool ioctl, which also settles pending
//!   carrier events.
//! * [`masq`] owns flanneld's node table (`ip flannel-rs`): masquerade and forward rules.
//! * [`nft`] applies nftables rule sets as single atomic transactions.
//! * [`iptables`] keeps our accept jump in the operator's `filter FORWARD` (legacy and nft),
//!   for hosts whose FORWARD policy drops.
//! * `udp` (cargo feature `udp`) is the userspace udp backend: TUN + UDP datapath threads.

pub mod child;
pub mod ethtool;
pub mod garp;
pub mod iptables;
pub mod masq;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod sysctl;
#[cfg(feature = "udp")]
pub mod udp;
