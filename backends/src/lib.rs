//! # backends — the only crate that programs the kernel data plane
//!
//! Two rooms:
//!
//! * [`kernel`] is the only code that talks to the kernel (netlink, namespaces, sysctl,
//!   ethtool, nftables, iptables), behind the [`kernel::Kernel`] trait where callers need a
//!   test twin.
//! * [`overlay`] turns "this node's subnet and these peers" into kernel state, level-triggered,
//!   with one driver module per backend (vxlan, host-gw; the userspace udp backend lives in the
//!   `flannel-udp` crate, which only flanneld links).
//! * [`masq`] owns flanneld's node table (`ip flannel-rs`): masquerade and forward rules.

pub mod kernel;
pub mod masq;
pub mod overlay;
