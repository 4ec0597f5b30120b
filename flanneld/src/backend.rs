//! The backend factory and the lease → peer mapping: the only place flanneld knows which
//! backends exist.
//!
//! `Backend.Type` picks a driver with a plain `match` (netavark's driver factory is the
//! model); everything after that goes through [`BackendDriver`]. Adding a backend means a
//! driver module (config section, device, MTU, `BackendData`, per-peer entries), a variant of
//! [`BackendConfig`] and one arm here.
//!
//! Address families: a dual-stack node runs one driver per family, each on that family's
//! view of the external interface ([`external`]) and fed that family's half of every lease
//! ([`peers`]): `Subnet`/`PublicIP`/`BackendData` for IPv4, `IPv6Subnet`/`PublicIPv6`/
//! `BackendV6Data` for IPv6.

use std::net::IpAddr;

use backends::kernel::netlink::IpFamily;
use backends::overlay::hostgw::HostGwDriver;
use backends::overlay::vxlan::VxlanDriver;
use backends::overlay::{BackendDriver, ExternalInterface, OverlayError, Peer};
use flannel_udp::UdpDriver;
use flannel_wireguard::{WireguardDriver, WireguardPaths};
use ipam::lease::{Lease, LeaseWatcher};
use ipnetwork::IpNetwork;

use crate::iface::SelectedInterface;
use crate::network_config::{BackendConfig, NetworkConfig};

/// The driver for the network config's backend on `ext` (one family's view). udp's data path
/// starts here (TUN device and socket in the calling thread's namespace).
pub fn backend_driver(
    network: &NetworkConfig,
    ext: &ExternalInterface,
    wireguard: &WireguardPaths,
) -> Result<Box<dyn BackendDriver>, OverlayError> {
    Ok(match &network.backend {
        BackendConfig::Vxlan(c) => Box::new(VxlanDriver::new(c, ext)?),
        BackendConfig::HostGw(c) => Box::new(HostGwDriver::new(c, ext)?),
        BackendConfig::Udp(c) => {
            let Some(pool) = &network.ipv4 else {
                return Err(OverlayError::Unsupported {
                    backend: "udp",
                    reason: "IPv6-only networks are not supported".into(),
                });
            };
            Box::new(UdpDriver::start(c, pool.network, ext, None)?)
        }
        BackendConfig::Wireguard(c) => {
            let cluster = match ext.family() {
                IpFamily::V4 => network.ipv4.as_ref().map(|p| IpNetwork::V4(p.network)),
                IpFamily::V6 => network.ipv6.as_ref().map(|p| IpNetwork::V6(p.network)),
            };
            let Some(cluster) = cluster else {
                return Err(OverlayError::Unsupported {
                    backend: "wireguard",
                    reason: format!("no {:?} network configured", ext.family()),
                });
            };
            Box::new(WireguardDriver::start(c, cluster, ext, wireguard, None)?)
        }
    })
}

/// The families the network config enables, IPv4 first.
pub fn families(network: &NetworkConfig) -> Vec<IpFamily> {
    let v4 = network.ipv4.is_some().then_some(IpFamily::V4);
    let v6 = network.ipv6.is_some().then_some(IpFamily::V6);
    v4.into_iter().chain(v6).collect()
}

/// The overlay's view of the chosen external interface for `family`; `None` when the
/// interface has no address of that family.
pub fn external(ext: &SelectedInterface, family: IpFamily) -> Option<ExternalInterface> {
    let (iface_addr, public_ip) = match family {
        IpFamily::V4 => (
            IpAddr::V4(ext.iface_addr?),
            IpAddr::V4(ext.public_ip.or(ext.iface_addr)?),
        ),
        IpFamily::V6 => (
            IpAddr::V6(ext.iface_addr6?),
            IpAddr::V6(ext.public_ipv6.or(ext.iface_addr6)?),
        ),
    };
    Some(ExternalInterface {
        index: ext.index,
        name: ext.name.clone(),
        mtu: ext.mtu,
        iface_addr,
        public_ip,
    })
}

/// The desired peers of `family`: every other node's lease of our backend type that has a
/// subnet and a public address of that family, with that family's `BackendData` for our
/// driver to read. A lease without them (an IPv4-only node in a dual-stack network) is
/// simply no peer of that family.
pub fn peers(watcher: &LeaseWatcher, backend_type: &str, family: IpFamily) -> Vec<Peer> {
    watcher
        .leases()
        .filter_map(|lease| peer_of(lease, backend_type, family))
        .collect()
}

/// `lease` as a peer of `family` (see [`peers`]); `None` when it is not one.
pub fn peer_of(lease: &Lease, backend_type: &str, family: IpFamily) -> Option<Peer> {
    if lease.attrs.backend_type != backend_type {
        tracing::debug!(key = %lease.key(), kind = %lease.attrs.backend_type,
            "ignoring a lease of another backend type");
        return None;
    }
    match family {
        IpFamily::V4 => Some(Peer {
            subnet: IpNetwork::V4(lease.ipv4_subnet()?),
            public_ip: IpAddr::V4(lease.attrs.public_ip),
            backend_data: lease.attrs.backend_data.clone(),
        }),
        IpFamily::V6 => {
            let (Some(subnet), Some(public_ip)) = (lease.ipv6_subnet, lease.attrs.public_ipv6)
            else {
                tracing::debug!(key = %lease.key(),
                    "lease has no IPv6 subnet or PublicIPv6: no IPv6 peer");
                return None;
            };
            Some(Peer {
                subnet: IpNetwork::V6(subnet),
                public_ip: IpAddr::V6(public_ip),
                backend_data: lease.attrs.backend_v6_data.clone(),
            })
        }
    }
}

/// The subnet of `family` a lease names, if any.
pub fn subnet_of(lease: &Lease, family: IpFamily) -> Option<IpNetwork> {
    match family {
        IpFamily::V4 => lease.ipv4_subnet().map(IpNetwork::V4),
        IpFamily::V6 => lease.ipv6_subnet.map(IpNetwork::V6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::overlay::vxlan::VxlanConfig;
    use flannel_udp::UdpConfig;
    use ipam::lease::{Lease, LeaseAttrs};
    use std::net::Ipv4Addr;

    fn lease(subnet: &str, ip: [u8; 4], kind: &str, data: Option<serde_json::Value>) -> Lease {
        let mut attrs = LeaseAttrs::new(Ipv4Addr::from(ip), kind);
        attrs.backend_data = data.map(Into::into);
        Lease::new(subnet.parse().unwrap(), None, attrs)
    }

    fn ext() -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            iface_addr: Ipv4Addr::new(198, 18, 0, 1).into(),
            public_ip: Ipv4Addr::new(198, 18, 0, 1).into(),
        }
    }

    #[test]
    fn vtep_mac_is_parsed_from_backend_data() {
        let driver = VxlanDriver::new(&VxlanConfig::default(), &ext()).unwrap();
        let vtep_mac = |l: &Lease| {
            let mut w = LeaseWatcher::new(None);
            w.reset(std::slice::from_ref(l));
            let p = peers(&w, "vxlan", IpFamily::V4);
            driver
                .peer_entries(&p[0], false)
                .ok()
                .flatten()
                .and_then(|e| e.neigh.map(|(_, mac)| mac))
        };
        let l = lease(
            "10.244.2.0/24",
            [198, 18, 0, 2],
            "vxlan",
            Some(serde_json::json!({"VNI": 1, "VtepMAC": "0a:1b:2c:3d:4e:5f"})),
        );
        assert_eq!(vtep_mac(&l), Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        let bad = lease(
            "10.244.2.0/24",
            [198, 18, 0, 2],
            "vxlan",
            Some(serde_json::json!({"VtepMAC": "0a:1b:2c"})),
        );
        assert_eq!(vtep_mac(&bad), None);
    }

    #[test]
    fn peers_skip_other_backend_types_and_own_subnet() {
        let mut w = LeaseWatcher::new(Some(("10.244.1.0/24".parse().unwrap(), None)));
        w.reset(&[
            lease("10.244.1.0/24", [198, 18, 0, 1], "host-gw", None),
            lease("10.244.2.0/24", [198, 18, 0, 2], "host-gw", None),
            lease("10.244.3.0/24", [198, 18, 0, 3], "vxlan", None),
        ]);
        let p = peers(&w, "host-gw", IpFamily::V4);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].subnet, "10.244.2.0/24".parse::<IpNetwork>().unwrap());
        assert_eq!(p[0].public_ip, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(
            peers(&w, "host-gw", IpFamily::V6).is_empty(),
            "no IPv6 halves"
        );
    }

    #[test]
    fn each_family_reads_its_half_of_the_lease() {
        use ipam::lease::NO_IPV4_SUBNET;
        let mut dual = LeaseAttrs::new(Ipv4Addr::new(198, 18, 0, 2), "vxlan");
        dual.public_ipv6 = Some("fd00:198:18::2".parse().unwrap());
        dual.backend_data =
            Some(serde_json::json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:04"}).into());
        dual.backend_v6_data =
            Some(serde_json::json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:06"}).into());
        let mut v6_only = LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, "vxlan");
        v6_only.public_ipv6 = Some("fd00:198:18::3".parse().unwrap());
        v6_only.backend_v6_data = dual.backend_v6_data.clone();
        let mut w = LeaseWatcher::new(None);
        w.reset(&[
            Lease::new(
                "10.244.2.0/24".parse().unwrap(),
                Some("fd00:10:244:2::/64".parse().unwrap()),
                dual,
            ),
            Lease::new(
                NO_IPV4_SUBNET,
                Some("fd00:10:244:3::/64".parse().unwrap()),
                v6_only,
            ),
            lease("10.244.4.0/24", [198, 18, 0, 4], "vxlan", None),
        ]);
        let v4 = peers(&w, "vxlan", IpFamily::V4);
        let v4_subnets: Vec<String> = v4.iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(v4_subnets, ["10.244.2.0/24", "10.244.4.0/24"]);
        assert_eq!(
            v4[0].backend_data.as_ref().unwrap().value()["VtepMAC"],
            "0a:00:00:00:00:04"
        );
        let mut v6 = peers(&w, "vxlan", IpFamily::V6);
        v6.sort_by_key(|p| p.subnet);
        let v6_view: Vec<(String, String)> = v6
            .iter()
            .map(|p| (p.subnet.to_string(), p.public_ip.to_string()))
            .collect();
        assert_eq!(
            v6_view,
            [
                ("fd00:10:244:2::/64".into(), "fd00:198:18::2".into()),
                ("fd00:10:244:3::/64".into(), "fd00:198:18::3".into())
            ]
        );
        assert_eq!(
            v6[0].backend_data.as_ref().unwrap().value()["VtepMAC"],
            "0a:00:00:00:00:06"
        );
    }

    #[test]
    fn udp_maps_port_and_network() {
        // The udp driver gets `Port` from its section and the cluster `Network` from the
        // config (starting it needs a TUN device: see examples/tests/udp.rs).
        let net = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9000}}"#,
        )
        .unwrap();
        assert_eq!(net.backend, BackendConfig::Udp(UdpConfig { port: 9000 }));
        assert_eq!(net.ipv4.unwrap().network.to_string(), "10.244.0.0/16");
        let default_port =
            NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#).unwrap();
        assert_eq!(
            default_port.backend,
            BackendConfig::Udp(UdpConfig { port: 8285 })
        );
        let vx = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert!(matches!(vx.backend, BackendConfig::Vxlan(_)));
    }
}
