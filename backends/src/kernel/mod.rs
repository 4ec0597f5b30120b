//! # kernel — the only code that talks to the kernel
//!
//! Everything that reads or changes kernel networking state lives in this room, and nothing
//! outside it opens a netlink socket, writes `/proc/sys`, enters a namespace or runs `nft`:
//!
//! * [`netlink`] is the one intent-level surface over `rtnetlink` (links, addresses, routes,
//!   neighbours, FDB). No other module or crate imports `rtnetlink` directly.
//! * [`netns`] opens network namespaces and runs work inside them on throw-away threads,
//!   never on an async runtime worker.
//! * [`sysctl`] reads and writes `/proc/sys` knobs in the caller's namespace.
//! * [`ethtool`] reads link state through the ethtool ioctl, which also settles pending
//!   carrier events.
//! * [`garp`] builds and sends gratuitous ARP frames from a packet socket (tests use it; the
//!   CNI plugin has the kernel send them, see [`netlink::Netlink::announce`]).
//! * [`nft`] applies nftables rule sets as single atomic transactions.
//! * [`iptables`] keeps our accept jump in the operator's `filter FORWARD` (legacy and nft),
//!   for hosts whose FORWARD policy drops.
//! * [`child`] spawns helper processes that die with us.
//!
//! The overlay and the CNI verbs do not call these modules' functions directly where a test
//! without root should see what they do: they go through the [`Kernel`] trait, which
//! [`netlink::Netlink`] implements for real and [`recording::RecordingKernel`] (feature
//! `testing`) implements in memory, recording every call.

pub mod child;
pub mod ethtool;
pub mod garp;
pub mod iptables;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod sysctl;
pub mod wireguard;

mod lazy;
mod masq_table;
#[cfg(any(test, feature = "testing"))]
pub mod recording;
mod surface;

pub use lazy::LazyNetlink;
pub use masq_table::MasqTable;
pub use surface::Kernel;
