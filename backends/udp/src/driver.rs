//! The udp backend as an overlay driver: the TUN device `flannel0` (address `<own
//! subnet>.0/32`, MTU ext − 28) and one route `<Network> dev flannel0`; peers are not kernel
//! entries at all but rows of the userspace forwarding table, swapped on every
//! [`BackendDriver::set_peers`].

use std::any::Any;
use std::net::{IpAddr, SocketAddrV4};

use backends::kernel::netlink::IpFamily;
use backends::kernel::netns::NetNs;
use backends::overlay::driver::device_mtu;
use backends::overlay::section::{Section, SectionError};
use backends::overlay::{
    BackendDriver, DeviceSpec, ExternalInterface, OverlayError, Peer, PeerEntries, RouteDev,
    RouteSpec,
};
use ipnetwork::{IpNetwork, Ipv4Network};

use super::{DEFAULT_PORT, TUN_NAME, UDP_OVERHEAD, UdpBackend, UdpSetup};

/// udp backend options (flannel's `Backend` object for `"Type": "udp"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// `Port`, default 8285: bound on the interface address, and where peers are sent to.
    pub port: u16,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig { port: DEFAULT_PORT }
    }
}

impl UdpConfig {
    /// Reads the `Backend` section of a `"Type": "udp"` network config.
    pub fn parse(b: &Section<'_>) -> Result<UdpConfig, SectionError> {
        Ok(UdpConfig {
            port: b.port("Port", DEFAULT_PORT)?,
        })
    }
}

/// The udp backend on one node: the running data path plus what reconcile needs to know.
#[derive(Debug)]
pub struct UdpDriver {
    backend: UdpBackend,
    device: DeviceSpec,
    network: Ipv4Network,
}

impl UdpDriver {
    /// Creates the TUN device `flannel0` (`ip tuntap add dev flannel0 mode tun`) and binds
    /// the UDP socket to `<ext.iface_addr>:<port>` — inside `ns`, or the calling thread's
    /// namespace when `None` — and starts the data path threads. `network` (the whole cluster
    /// network) is routed into the device on reconcile.
    pub fn start(
        config: &UdpConfig,
        network: Ipv4Network,
        ext: &ExternalInterface,
        ns: Option<&NetNs>,
    ) -> Result<UdpDriver, OverlayError> {
        // flannel's udp backend is IPv4 only, and so is ours (its codec carries IPv4 packets
        // over an IPv4 underlay).
        let IpAddr::V4(iface_addr) = ext.iface_addr else {
            return Err(OverlayError::Unsupported {
                backend: "udp",
                reason: format!(
                    "IPv6 is not supported (external address {}); use vxlan or host-gw for \
                     IPv6 or dual-stack networks",
                    ext.iface_addr
                ),
            });
        };
        let mtu = device_mtu(ext.mtu, &ext.name, UDP_OVERHEAD, "TUN device", IpFamily::V4)?;
        let setup = UdpSetup {
            tun_name: TUN_NAME.to_string(),
            local: SocketAddrV4::new(iface_addr, config.port),
            offload: true,
        };
        let backend =
            UdpBackend::start(setup, ns).map_err(|e| OverlayError::Datapath(Box::new(e)))?;
        Ok(UdpDriver {
            backend,
            device: DeviceSpec::Owned {
                name: TUN_NAME.to_string(),
                kind: "tun",
                mtu,
                family: IpFamily::V4,
            },
            network,
        })
    }

    /// The data path (counters, offloads).
    pub fn backend(&self) -> &UdpBackend {
        &self.backend
    }
}

impl BackendDriver for UdpDriver {
    fn kind(&self) -> &'static str {
        "udp"
    }

    fn mtu(&self) -> u32 {
        self.device.mtu()
    }

    fn backend_data(&self) -> Option<serde_json::Value> {
        None
    }

    fn device(&self) -> Option<&DeviceSpec> {
        Some(&self.device)
    }

    fn fixed_entries(&self) -> Vec<PeerEntries> {
        vec![PeerEntries {
            subnet: self.network.into(),
            neigh: None,
            fdb: None,
            route: RouteSpec {
                dst: self.network.into(),
                gateway: None,
                dev: RouteDev::Overlay,
                onlink: false,
                via_nexthop: false,
            },
        }]
    }

    fn peer_entries(&self, _: &Peer, _: bool) -> Result<Option<PeerEntries>, OverlayError> {
        Ok(None)
    }

    fn set_own_subnet(&mut self, subnet: IpNetwork) {
        if let IpNetwork::V4(subnet) = subnet {
            self.backend.set_own_subnet(Some(subnet));
        }
    }

    fn set_peers(&mut self, peers: &[Peer]) {
        let v4 = peers.iter().filter_map(|p| match (p.subnet, p.public_ip) {
            (IpNetwork::V4(subnet), IpAddr::V4(ip)) => Some((subnet, ip)),
            _ => None,
        });
        self.backend.set_peers(v4.collect());
    }

    fn reopen_device(&mut self) -> Result<(), OverlayError> {
        self.backend
            .restart()
            .map_err(|e| OverlayError::Datapath(Box::new(e)))
    }

    fn metrics_fn(&self) -> Box<dyn Fn() -> String + Send + Sync> {
        let counters = self.backend.metrics_fn();
        Box::new(move || format!("flannel_backend_info{{type=\"udp\"}} 1\n{}", counters()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
