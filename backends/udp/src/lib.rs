//! # The udp backend: userspace encapsulation over a TUN device, on flannel's wire format
//!
//! flannel's third backend carries pod traffic between nodes inside UDP datagrams that the
//! daemon itself sends and receives. The kernel routes the whole cluster network into the TUN
//! device `flannel0`; the daemon reads each packet, finds the node that leases its destination
//! and sends the packet, as is, as the payload of one UDP datagram to `<node public IP>:8285`.
//! The receiving daemon writes it into its own TUN. There is no header, so a node running this
//! backend and one running flannel's exchange traffic.
//!
//! What this implementation adds to flannel's design:
//!
//! * **Closed to non-members.** A datagram is accepted only from the public IP of a current
//!   lease, only if its inner source lies in that lease's subnet and its inner destination in
//!   ours ([`table`]); everything else is dropped and counted ([`datapath::Counters`], exported
//!   on `/metrics`). flannel writes anything it receives into the node.
//! * **Speed without a new wire format.** One packet per syscall tops out at a small fraction of what the kernel's vxlan moves (the naive proxy in `scripts/bench-udp.sh`). With
//!   TUN offloads the kernel hands over whole TCP windows; they are cut into MTU-size packets
//!   in userspace and sent with UDP GSO, and received segments are glued back together before
//!   the TUN write ([`codec`], [`datapath`]). Each datagram on the wire is still exactly one
//!   IPv4 packet. Every offload falls back to flannel's behaviour when the kernel lacks it.
//! * **Dedicated threads** ([`datapath::Datapath`]), stopped and joined when the backend is
//!   dropped; lease changes swap the forwarding table atomically ([`table::SharedTable`]).
//!
//! [`UdpDriver`] is the [`backends::overlay::BackendDriver`] flanneld hands to [`backends::overlay::Overlay`]:
//! it runs a [`UdpBackend`] (the threads) and leaves the kernel side (the TUN device's
//! address and MTU, the route for the whole network) to the overlay's reconcile.
//!
//! This crate is linked by flanneld only: no build of the CNI plugin can contain TUN code.

/// Declares a struct of monotonic counters (relaxed `AtomicU64`s, one per `field => "help"`),
/// with `values()` listing `(name, help, value)` and `render()` writing them as Prometheus
/// counters `<prefix><name>_total`. The udp data path and the wireguard device use it.
#[macro_export]
macro_rules! counter_set {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, { $( $field:ident => $help:literal ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( #[doc = $help] pub $field: ::std::sync::atomic::AtomicU64, )*
        }

        impl $name {
            /// Every counter as `(name, help, value)`; names are the Prometheus metric names
            /// without the prefix and the `_total` suffix.
            pub fn values(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$( (
                    stringify!($field),
                    $help,
                    self.$field.load(::std::sync::atomic::Ordering::Relaxed),
                ), )*]
            }

            /// Prometheus text exposition of every counter, `<prefix><name>_total`.
            pub fn render(&self) -> String {
                let mut s = String::new();
                for (name, help, v) in self.values() {
                    s.push_str(&format!(
                        "# HELP {p}{name}_total {help}\n# TYPE {p}{name}_total counter\n{p}{name}_total {v}\n",
                        p = $prefix
                    ));
                }
                s
            }

            fn add(c: &::std::sync::atomic::AtomicU64, n: u64) {
                c.fetch_add(n, ::std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
}

pub mod codec;
pub mod datapath;
mod driver;
pub mod table;
pub mod threads;
pub mod tun;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnetwork::Ipv4Network;

use backends::kernel::netns::NetNs;
use datapath::{Counters, Datapath, Offloads};
pub use driver::{UdpConfig, UdpDriver};
use table::{SharedTable, Table};
use tun::{Tun, UdpSocket};

/// The TUN device name (flannel's `flannel%d` always yields `flannel0`).
pub const TUN_NAME: &str = "flannel0";
/// flannel's default `Backend.Port`.
pub const DEFAULT_PORT: u16 = 8285;
/// Encapsulation overhead: outer IPv4 (20) + UDP (8). The TUN MTU is the underlay's minus this.
pub const UDP_OVERHEAD: u32 = 28;
/// The TUN transmit queue length we set (the kernel default of 500 drops TCP bursts).
pub const TUN_TXQUEUELEN: i32 = 1000;

/// What went wrong setting up the udp datapath.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// A syscall on the TUN device or the socket failed; `what` names the object.
    #[error("udp backend: {what}: {source}")]
    Io {
        /// What was being done (`open TUN flannel0`, `bind UDP 198.18.0.1:8285`, ...).
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UdpError {
    let what = what.into();
    move |source| UdpError::Io { what, source }
}

/// How to create the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSetup {
    /// TUN device name.
    pub tun_name: String,
    /// Local address for the UDP socket (`<iface_addr>:<Port>`).
    pub local: SocketAddrV4,
    /// Try TUN/UDP offloads (they fall back individually when the kernel refuses).
    pub offload: bool,
}

/// The running udp datapath: TUN + socket + threads + the table they read.
#[derive(Debug)]
pub struct UdpBackend {
    setup: UdpSetup,
    ns: Option<NetNs>,
    datapath: Option<Datapath>,
    table: Arc<SharedTable>,
    counters: Arc<Counters>,
    own: Option<Ipv4Network>,
    peers: Vec<(Ipv4Network, Ipv4Addr)>,
}

/// Opens the TUN device and the socket in the calling thread's namespace.
fn open_fds(setup: &UdpSetup) -> Result<(Tun, UdpSocket), UdpError> {
    let tun = Tun::open(&setup.tun_name, setup.offload)
        .map_err(io_err(format!("open TUN {}", setup.tun_name)))?;
    let sock = UdpSocket::bind(setup.local.into(), setup.offload)
        .map_err(io_err(format!("bind UDP {}", setup.local)))?;
    if let Err(e) = sock.set_txqueuelen(tun.name(), TUN_TXQUEUELEN) {
        tracing::debug!(error = %e, "could not raise the TUN txqueuelen");
    }
    // The ICMP errors we write into the TUN come from the TUN's own address; without
    // accept_local the kernel drops them as martians (flannel's never arrive).
    let key = format!("net/ipv4/conf/{}/accept_local", tun.name());
    if let Err(e) = backends::kernel::sysctl::write(&key, "1") {
        tracing::warn!(error = %e, "ICMP unreachable errors will be dropped by the kernel");
    }
    Ok((tun, sock))
}

impl UdpBackend {
    /// Creates the TUN device and binds the socket (in `ns`, or the calling thread's namespace
    /// when `None`), then starts the datapath threads with an empty table.
    ///
    /// Equivalent of `ip tuntap add dev flannel0 mode tun` plus binding `<local>`.
    pub fn start(setup: UdpSetup, ns: Option<&NetNs>) -> Result<UdpBackend, UdpError> {
        let ns = match ns {
            Some(n) => Some(n.try_clone().map_err(io_err("duplicate netns handle"))?),
            None => None,
        };
        let mut b = UdpBackend {
            setup,
            ns,
            datapath: None,
            table: Arc::new(SharedTable::default()),
            counters: Arc::new(Counters::default()),
            own: None,
            peers: Vec::new(),
        };
        b.open_and_run()?;
        Ok(b)
    }

    fn open_and_run(&mut self) -> Result<(), UdpError> {
        let (tun, sock) = match &self.ns {
            Some(ns) => {
                let setup = self.setup.clone();
                ns.run(move || open_fds(&setup))
                    .map_err(io_err("enter the node's netns"))??
            }
            None => open_fds(&self.setup)?,
        };
        let dp = Datapath::start(tun, sock, self.table.clone(), self.counters.clone())
            .map_err(io_err("start datapath threads"))?;
        let o = dp.offloads();
        tracing::info!(
            device = %self.setup.tun_name,
            local = %self.setup.local,
            tun_vnet_hdr = o.tun_vnet_hdr,
            udp_gso = o.udp_gso,
            udp_gro = o.udp_gro,
            "udp datapath running"
        );
        self.datapath = Some(dp);
        Ok(())
    }

    /// Stops the threads, closes the TUN (the kernel removes the device) and the socket, and
    /// opens and starts them again; the table is kept. Used when the device disappeared.
    pub fn restart(&mut self) -> Result<(), UdpError> {
        if let Some(mut dp) = self.datapath.take() {
            dp.stop();
        }
        self.open_and_run()
    }

    /// Stops and joins the datapath threads (also done on drop).
    pub fn stop(&mut self) {
        if let Some(mut dp) = self.datapath.take() {
            dp.stop();
        }
    }

    /// Whether the datapath threads are running.
    pub fn is_running(&self) -> bool {
        self.datapath.as_ref().is_some_and(Datapath::is_running)
    }

    /// The offloads in use (`None` when stopped).
    pub fn offloads(&self) -> Option<Offloads> {
        self.datapath.as_ref().map(Datapath::offloads)
    }

    /// The TUN device's name.
    pub fn tun_name(&self) -> &str {
        &self.setup.tun_name
    }

    /// This node's subnet: destination check on receive, ICMP source, and never a route.
    pub fn set_own_subnet(&mut self, own: Option<Ipv4Network>) {
        self.own = own;
        self.publish();
    }

    /// Replaces the peers, `(subnet, public IP)`; takes effect for the next packet batch.
    pub fn set_peers(&mut self, peers: Vec<(Ipv4Network, Ipv4Addr)>) {
        self.peers = peers;
        self.publish();
    }

    fn publish(&self) {
        self.table
            .store(Table::new(self.own, &self.peers, self.setup.local.port()));
    }

    /// The live counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// A Prometheus text renderer of the counters and the offload state.
    pub fn metrics_fn(&self) -> Box<dyn Fn() -> String + Send + Sync> {
        let counters = self.counters.clone();
        let table = self.table.clone();
        let o = self.offloads();
        Box::new(move || {
            let mut s = counters.render();
            s.push_str(&format!(
                "# HELP flannel_udp_peers Peers in the forwarding table.\n# TYPE flannel_udp_peers gauge\nflannel_udp_peers {}\n",
                table.load().len()
            ));
            if let Some(o) = o {
                s.push_str(&format!(
                    "# HELP flannel_udp_offload_info Offloads granted by the kernel.\n# TYPE flannel_udp_offload_info gauge\nflannel_udp_offload_info{{tun_vnet_hdr=\"{}\",udp_gso=\"{}\",udp_gro=\"{}\"}} 1\n",
                    o.tun_vnet_hdr, o.udp_gso, o.udp_gro
                ));
            }
            s
        })
    }
}
