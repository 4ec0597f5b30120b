//! The backend factory and the lease → peer mapping: the only place flanneld knows which
//! backends exist.
//!
//! `Backend.Type` picks a driver with a plain `match` (netavark's driver factory is the
//! model); everything after that goes through [`BackendDriver`]. Adding a backend means a
//! driver module (config section, device, MTU, `BackendData`, per-peer entries), a variant of
//! [`BackendConfig`] and one arm here.

use backends::overlay::hostgw::HostGwDriver;
use backends::overlay::vxlan::VxlanDriver;
use backends::overlay::{BackendDriver, ExternalInterface, OverlayError, Peer};
use flannel_udp::UdpDriver;
use ipam::lease::LeaseWatcher;

use crate::iface::SelectedInterface;
use crate::network_config::{BackendConfig, NetworkConfig};

/// The driver for the network config's backend on `ext`. udp's data path starts here (TUN
/// device and socket in the calling thread's namespace).
pub fn backend_driver(
    network: &NetworkConfig,
    ext: &ExternalInterface,
) -> Result<Box<dyn BackendDriver>, OverlayError> {
    Ok(match &network.backend {
        BackendConfig::Vxlan(c) => Box::new(VxlanDriver::new(c, ext)?),
        BackendConfig::HostGw(c) => Box::new(HostGwDriver::new(c, ext)?),
        BackendConfig::Udp(c) => Box::new(UdpDriver::start(c, network.ipv4.network, ext, None)?),
    })
}

/// The overlay's view of the chosen external interface.
pub fn external(ext: &SelectedInterface) -> ExternalInterface {
    ExternalInterface {
        index: ext.index,
        name: ext.name.clone(),
        mtu: ext.mtu,
        iface_addr: ext.iface_addr,
        public_ip: ext.public_ip,
    }
}

/// The desired peers: every other node's lease of our backend type, with its `BackendData`
/// for our driver to read.
pub fn peers(watcher: &LeaseWatcher, backend_type: &str) -> Vec<Peer> {
    watcher
        .leases()
        .filter_map(|lease| {
            if lease.attrs.backend_type != backend_type {
                tracing::debug!(subnet = %lease.subnet, kind = %lease.attrs.backend_type,
                    "ignoring a lease of another backend type");
                return None;
            }
            Some(Peer {
                subnet: lease.subnet,
                public_ip: lease.attrs.public_ip,
                backend_data: lease.attrs.backend_data.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::overlay::vxlan::VxlanConfig;
    use flannel_udp::UdpConfig;
    use ipam::lease::{Lease, LeaseAttrs};
    use ipnetwork::Ipv4Network;
    use std::net::Ipv4Addr;

    fn lease(subnet: &str, ip: [u8; 4], kind: &str, data: Option<serde_json::Value>) -> Lease {
        let mut attrs = LeaseAttrs::new(Ipv4Addr::from(ip), kind);
        attrs.backend_data = data;
        Lease::new(subnet.parse().unwrap(), None, attrs)
    }

    fn ext() -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            iface_addr: Ipv4Addr::new(198, 18, 0, 1),
            public_ip: Ipv4Addr::new(198, 18, 0, 1),
        }
    }

    #[test]
    fn vtep_mac_is_parsed_from_backend_data() {
        let driver = VxlanDriver::new(&VxlanConfig::default(), &ext()).unwrap();
        let vtep_mac = |l: &Lease| {
            let mut w = LeaseWatcher::new(None);
            w.reset(std::slice::from_ref(l));
            let p = peers(&w, "vxlan");
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
        let mut w = LeaseWatcher::new(Some("10.244.1.0/24".parse().unwrap()));
        w.reset(&[
            lease("10.244.1.0/24", [198, 18, 0, 1], "host-gw", None),
            lease("10.244.2.0/24", [198, 18, 0, 2], "host-gw", None),
            lease("10.244.3.0/24", [198, 18, 0, 3], "vxlan", None),
        ]);
        let p = peers(&w, "host-gw");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].subnet, "10.244.2.0/24".parse::<Ipv4Network>().unwrap());
        assert_eq!(p[0].public_ip, Ipv4Addr::new(198, 18, 0, 2));
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
        assert_eq!(net.ipv4.network.to_string(), "10.244.0.0/16");
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
