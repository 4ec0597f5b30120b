//! # flanneld — the node daemon
//!
//! One process per node. It reads the cluster's network config from etcd, leases a per-node
//! pod subnet under flannel's v3 key layout, programs one backend (vxlan, host-gw) so that
//! every other node's pod subnet is reachable, optionally installs masquerade rules for pod
//! egress, and writes `subnet.env` for the CNI plugin once all of that is in place.
//!
//! The crate is a library with a thin binary: [`config`] parses flannel's flags,
//! [`network_config`] the `<prefix>/config` JSON, [`subnet`] owns the lease store and the
//! leasing policy, and [`daemon`] wires everything together.

pub mod backend;
pub mod backoff;
pub mod cleanup;
pub mod config;
pub mod daemon;
pub mod healthz;
pub mod heap;
pub mod iface;
pub mod network_config;
pub mod notify;
pub mod overlays;
pub mod shutdown;
pub mod subnet;
