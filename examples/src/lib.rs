//! # flannel_examples — a whole cluster on one machine, in network namespaces
//!
//! [`cluster::Cluster`] builds the topology every multi-node test and the demo use:
//!
//! ```text
//!  <p>-ul   bridge br0 198.18.0.254/16 ── etcd (listens on 198.18.0.254:2379)
//!    ├─ veth ── <p>-n1  eth0 198.18.0.1/16  flanneld ── cbr0 ── pods (<p>-n1-*)
//!    ├─ veth ── <p>-n2  eth0 198.18.0.2/16  flanneld ── cbr0 ── pods
//!    └─ veth ── <p>-n3  eth0 198.18.0.3/16  flanneld ── cbr0 ── pods
//! ```
//!
//! With [`cluster::ClusterSpec::etcd_tls_members`] set, etcd is instead a production-shaped
//! TLS cluster of that many members on 198.18.0.201.. ([`etcd_tls::TlsEtcd`]).
//!
//! Nodes reach each other only over the underlay bridge; nothing has a path to the
//! machine's real network. Pods are attached by the real `flannel` CNI binary run inside
//! their node's namespace, exactly as a runtime would. Every process is started by the
//! harness and stopped by its PID; every namespace is deleted on drop, also after a
//! failed assertion.

pub mod cleanup;
pub mod cluster;
pub mod etcd_tls;
