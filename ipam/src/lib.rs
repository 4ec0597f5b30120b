//! # ipam — addresses for pods and subnets for nodes
//!
//! Two jobs live here, both pure logic with no async runtime:
//!
//! * [`host_local`] allocates one pod address per range set exactly like the reference
//!   `host-local` CNI plugin, including its on-disk layout (`<dataDir>/<network>/<ip>` files
//!   holding `<containerid>\r\n<ifname>`, `last_reserved_ip.<n>` and a `lock` file taken
//!   with `flock`), so a node can switch between the reference plugins and ours without
//!   losing a single reservation.
//! * [`subnet_env`] owns the `/run/flannel/subnet.env` format that flanneld writes and the
//!   CNI plugin reads, and [`subnet_alloc`] / [`lease`] hold the arithmetic flanneld uses to
//!   carve the cluster network into per-node subnets.

pub mod fault;
pub mod host_local;
pub mod lease;
pub mod net;
pub mod subnet_alloc;
pub mod subnet_env;
