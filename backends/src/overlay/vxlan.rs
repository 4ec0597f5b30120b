//! # The vxlan driver
//!
//! One VXLAN device `flannel.<VNI>` carrying the own subnet's network address as a /32. Per
//! peer: a permanent ARP entry `<peer subnet>.0 → VTEP MAC`, an FDB entry `VTEP MAC → peer
//! public IP`, and the route `<peer subnet> via <peer subnet>.0 dev flannel.<VNI> onlink`
//! (flannel's three steps, in that order). With `DirectRouting`, a peer on the same layer-2
//! segment gets a plain route via its public IP instead, and no tunnel.
//!
//! IPv6 is the same driver on the IPv6 view of the external interface, as flannel does it:
//! the device is `flannel-v6.<VNI>` with an IPv6 `local` (IPv6 underlay), carries
//! `<own v6 subnet>::/128`, and per peer gets a permanent NDP entry, an FDB entry towards the
//! peer's `PublicIPv6` and `<peer v6 subnet> via <peer v6 subnet>:: onlink`. Its
//! `BackendData` goes into the lease's `BackendV6Data`. The outer IPv6 header is 20 bytes
//! longer than IPv4's, so its MTU leaves 70 bytes rather than 50.
//!
//! The VTEP MAC is derived from the public IP and the VNI ([`vtep_mac`]) instead of being
//! random, so a restarted (or rebooted) node keeps the MAC its peers have in their ARP and
//! FDB tables: flannel picks a new one and leaves peers with stale entries until they catch up.

use std::any::Any;
use std::net::IpAddr;

use super::driver::{BackendDriver, DeviceSpec, device_mtu};
use super::plan::{PeerEntries, RouteDev, RouteSpec};
use super::section::{Section, SectionError};
use super::{ExternalInterface, OverlayError, Peer};
use crate::kernel::netlink::{IpFamily, VxlanSpec, format_mac, parse_mac};

/// VXLAN encapsulation overhead subtracted from the underlay MTU (outer IPv4 20 + UDP 8 +
/// VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The same over an IPv6 underlay (outer IPv6 header 40).
pub const VXLAN_V6_OVERHEAD: u32 = 70;

/// The largest VNI whose device name `flannel.<VNI>` fits in 15 bytes (and below 2^24).
pub const MAX_VNI: u32 = 9_999_999;

/// The largest VNI whose IPv6 device name `flannel-v6.<VNI>` fits in 15 bytes.
pub const MAX_VNI_V6: u32 = 9_999;

/// The device name prefix of `family`'s VXLAN device.
pub fn device_prefix(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "flannel.",
        IpFamily::V6 => "flannel-v6.",
    }
}

/// The VNI flannel uses when the config has none.
pub const DEFAULT_VXLAN_VNI: u32 = 1;

/// vxlan backend options (flannel `Documentation/backends.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// `VNI`, default 1.
    pub vni: u32,
    /// UDP destination port: `Port`, with 0 / absent meaning the kernel default 8472.
    pub port: u16,
    /// `GBP`: VXLAN Group Based Policy extension.
    pub gbp: bool,
    /// `DirectRouting`: plain routes to peers on the same L2 segment.
    pub direct_routing: bool,
    /// `Learning`: enable source-address learning on the VXLAN device.
    pub learning: bool,
    /// `MTU`: the *underlay* MTU to derive the device MTU from (device = MTU − 50);
    /// `None` = the external interface's MTU.
    pub mtu: Option<u32>,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        Self {
            vni: DEFAULT_VXLAN_VNI,
            port: crate::kernel::netlink::DEFAULT_VXLAN_PORT,
            gbp: false,
            direct_routing: false,
            learning: false,
            mtu: None,
        }
    }
}

impl VxlanConfig {
    /// Reads the `Backend` section of a `"Type": "vxlan"` network config.
    pub fn parse(b: &Section<'_>) -> Result<VxlanConfig, SectionError> {
        let mtu = match b.uint("MTU", 65_535)? {
            None | Some(0) => None,
            Some(m) if u32::try_from(m).unwrap_or(u32::MAX) < 68 + VXLAN_OVERHEAD => {
                return Err(b.invalid(
                    "MTU",
                    format!("{m} is too small: the VXLAN device needs MTU - 50 >= 68"),
                ));
            }
            Some(m) => Some(m as u32),
        };
        Ok(VxlanConfig {
            vni: b
                .uint("VNI", (1 << 24) - 1)?
                .map_or(DEFAULT_VXLAN_VNI, |v| v as u32),
            port: b.port("Port", crate::kernel::netlink::DEFAULT_VXLAN_PORT)?,
            gbp: b.bool("GBP", false)?,
            direct_routing: b.bool("DirectRouting", false)?,
            learning: b.bool("Learning", false)?,
            mtu,
        })
    }
}

/// The vxlan backend on one node.
#[derive(Debug)]
pub struct VxlanDriver {
    config: VxlanConfig,
    device: DeviceSpec,
    spec: VxlanSpec,
}

impl VxlanDriver {
    /// The driver for `config` on `ext` (either family's view): device `flannel.<VNI>`
    /// (IPv6: `flannel-v6.<VNI>`) with `local <ext address> dev <ext>`, MTU (`MTU` or the
    /// interface's) − 50 (IPv6 underlay: − 70), MAC [`vtep_mac`]. Refuses a VNI whose device
    /// name would not fit and an MTU that leaves less than the family's minimum.
    pub fn new(config: &VxlanConfig, ext: &ExternalInterface) -> Result<VxlanDriver, OverlayError> {
        let family = ext.family();
        let (max_vni, overhead) = match family {
            IpFamily::V4 => (MAX_VNI, VXLAN_OVERHEAD),
            IpFamily::V6 => (MAX_VNI_V6, VXLAN_V6_OVERHEAD),
        };
        if config.vni > max_vni {
            return Err(OverlayError::InvalidVni {
                vni: config.vni,
                max: max_vni,
                device: device_prefix(family),
            });
        }
        let (underlay_mtu, source) = match config.mtu {
            Some(m) => (m, "Backend.MTU".to_string()),
            None => (ext.mtu, ext.name.clone()),
        };
        let mtu = device_mtu(underlay_mtu, &source, overhead, "VXLAN device", family)?;
        let spec = VxlanSpec {
            name: format!("{}{}", device_prefix(family), config.vni),
            vni: config.vni,
            port: config.port,
            local: ext.iface_addr,
            underlay_ifindex: ext.index,
            learning: config.learning,
            gbp: config.gbp,
            mtu,
            mac: vtep_mac(ext.public_ip, config.vni),
        };
        Ok(VxlanDriver {
            config: config.clone(),
            device: DeviceSpec::Vxlan(spec.clone()),
            spec,
        })
    }

    /// The device specification.
    pub fn spec(&self) -> &VxlanSpec {
        &self.spec
    }
}

impl BackendDriver for VxlanDriver {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    fn mtu(&self) -> u32 {
        self.spec.mtu
    }

    fn backend_data(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "VNI": self.spec.vni,
            "VtepMAC": format_mac(&self.spec.mac),
        }))
    }

    fn device(&self) -> Option<&DeviceSpec> {
        Some(&self.device)
    }

    fn peer_entries(&self, p: &Peer, on_link: bool) -> Result<Option<PeerEntries>, OverlayError> {
        if self.config.direct_routing && on_link {
            return Ok(Some(PeerEntries::direct(p)));
        }
        let data = p.backend_data.as_ref().map(|d| d.value());
        let mac = match &data {
            Some(data) if data.get("VtepMAC").is_some() => vtep_mac_from_backend_data(data)?,
            _ => return Err(OverlayError::PeerMissingVtepMac { subnet: p.subnet }),
        };
        let gw = p.subnet.network();
        Ok(Some(PeerEntries {
            subnet: p.subnet,
            neigh: Some((gw, mac)),
            fdb: Some((mac, p.public_ip)),
            route: RouteSpec {
                dst: p.subnet,
                gateway: Some(gw),
                dev: RouteDev::Overlay,
                onlink: true,
                via_nexthop: false,
            },
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The deterministic VTEP MAC of a node: a locally administered unicast address derived
/// (FNV-1a) from the public IP and the VNI, so it survives restarts and reboots. The IPv4
/// and IPv6 devices of a dual-stack node get different MACs (their public IPs differ).
pub fn vtep_mac(public_ip: IpAddr, vni: u32) -> [u8; 6] {
    let ip: Vec<u8> = match public_ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let vni = vni.to_be_bytes();
    let seed = b"flannel-rs vtep".iter().chain(&ip).chain(&vni).copied();
    let b = ipam::net::fnv1a64(seed).to_be_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The VTEP MAC in a VXLAN lease's `BackendData` (`{"VNI":1,"VtepMAC":"aa:bb:.."}`).
pub fn vtep_mac_from_backend_data(data: &serde_json::Value) -> Result<[u8; 6], OverlayError> {
    let bad = |reason: &str| OverlayError::BadBackendData {
        data: data.to_string(),
        reason: reason.to_string(),
    };
    let s = data
        .get("VtepMAC")
        .ok_or_else(|| bad("no VtepMAC field"))?
        .as_str()
        .ok_or_else(|| bad("VtepMAC is not a string"))?;
    parse_mac(s).ok_or_else(|| bad("VtepMAC is not a MAC address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_stable_unicast_local_and_distinct() {
        let a: IpAddr = "198.18.0.1".parse().expect("ip");
        let b: IpAddr = "198.18.0.2".parse().expect("ip");
        let a6: IpAddr = "fd00:198:18::1".parse().expect("ip");
        let m = vtep_mac(a, 1);
        assert_eq!(m, vtep_mac(a, 1));
        // The IPv4 derivation is what earlier releases used: a node keeps its MAC on upgrade.
        assert_eq!(format_mac(&m), format_mac(&vtep_mac_v4_as_released(a, 1)));
        assert_ne!(m, vtep_mac(a6, 1));
        assert_eq!(
            vtep_mac(a6, 1)[0] & 0x03,
            0x02,
            "v6: unicast, locally administered"
        );
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_ne!(m, vtep_mac(b, 1));
        assert_ne!(m, vtep_mac(a, 2));
    }

    /// The derivation of the IPv4-only releases, kept here to pin it.
    fn vtep_mac_v4_as_released(ip: IpAddr, vni: u32) -> [u8; 6] {
        let IpAddr::V4(ip) = ip else { unreachable!() };
        let (ip, vni) = (ip.octets(), vni.to_be_bytes());
        let seed = b"flannel-rs vtep".iter().chain(&ip).chain(&vni).copied();
        let b = ipam::net::fnv1a64(seed).to_be_bytes();
        [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
    }

    fn ext(addr: &str, mtu: u32) -> ExternalInterface {
        let ip: IpAddr = addr.parse().expect("ip");
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu,
            iface_addr: ip,
            public_ip: ip,
        }
    }

    #[test]
    fn the_ipv6_device_is_flannel_v6_with_an_ipv6_local_and_70_bytes_overhead() {
        let d = VxlanDriver::new(&VxlanConfig::default(), &ext("fd00:198:18::1", 1500)).unwrap();
        assert_eq!(d.spec().name, "flannel-v6.1");
        assert_eq!(d.spec().local, "fd00:198:18::1".parse::<IpAddr>().unwrap());
        assert_eq!(d.mtu(), 1430);
        assert_eq!(d.device().unwrap().family(), IpFamily::V6);
        let v4 = VxlanDriver::new(&VxlanConfig::default(), &ext("198.18.0.1", 1500)).unwrap();
        assert_eq!((v4.spec().name.as_str(), v4.mtu()), ("flannel.1", 1450));

        let big = VxlanConfig {
            vni: 10_000,
            ..VxlanConfig::default()
        };
        let err = VxlanDriver::new(&big, &ext("fd00:198:18::1", 1500)).unwrap_err();
        assert!(err.to_string().contains("flannel-v6.<VNI>"), "{err}");
        assert!(VxlanDriver::new(&big, &ext("198.18.0.1", 1500)).is_ok());
        // IPv6 needs 1280 on the device: 1349 − 70 = 1279 is refused, 1350 accepted.
        let err = VxlanDriver::new(&VxlanConfig::default(), &ext("fd00:198:18::1", 1349));
        assert!(err.unwrap_err().to_string().contains("below 1280"));
        assert!(VxlanDriver::new(&VxlanConfig::default(), &ext("fd00:198:18::1", 1350)).is_ok());
    }

    #[test]
    fn an_ipv6_peer_gets_ndp_fdb_and_an_onlink_route_via_its_subnet_address() {
        let d = VxlanDriver::new(&VxlanConfig::default(), &ext("fd00:198:18::1", 1500)).unwrap();
        let peer = Peer {
            subnet: "fd00:10:244:2::/64".parse().unwrap(),
            public_ip: "fd00:198:18::2".parse().unwrap(),
            backend_data: Some(
                serde_json::json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"}).into(),
            ),
        };
        let e = d.peer_entries(&peer, true).unwrap().unwrap();
        let gw: IpAddr = "fd00:10:244:2::".parse().unwrap();
        let mac = [0x0a, 0, 0, 0, 0, 2];
        assert_eq!(e.neigh, Some((gw, mac)));
        assert_eq!(e.fdb, Some((mac, peer.public_ip)));
        assert_eq!(e.route.gateway, Some(gw));
        assert!(e.route.onlink);
        assert_eq!(e.route.dev, RouteDev::Overlay);
    }

    #[test]
    fn direct_routing_sends_on_link_ipv6_peers_straight_to_their_public_ipv6() {
        let cfg = VxlanConfig {
            direct_routing: true,
            ..VxlanConfig::default()
        };
        let d = VxlanDriver::new(&cfg, &ext("fd00:198:18::1", 1500)).unwrap();
        let peer = Peer {
            subnet: "fd00:10:244:2::/64".parse().unwrap(),
            public_ip: "fd00:198:18::2".parse().unwrap(),
            backend_data: Some(
                serde_json::json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"}).into(),
            ),
        };
        let direct = d.peer_entries(&peer, true).unwrap().unwrap();
        assert_eq!(direct.route.gateway, Some(peer.public_ip));
        assert_eq!(direct.route.dev, RouteDev::External);
        assert_eq!((direct.neigh, direct.fdb), (None, None));
        let tunnelled = d.peer_entries(&peer, false).unwrap().unwrap();
        assert_eq!(tunnelled.route.dev, RouteDev::Overlay);
    }

    #[test]
    fn mac_text_round_trip_and_backend_data_parsing() {
        let m = [0x0a, 0xbc, 0x00, 0x01, 0xfe, 0xff];
        assert_eq!(format_mac(&m), "0a:bc:00:01:fe:ff");
        assert_eq!(parse_mac("0A:BC:00:01:FE:FF"), Some(m));
        for bad in [
            "",
            "0a:bc:00:01:fe",
            "0a:bc:00:01:fe:ff:00",
            "0a:bc:00:01:fe:fg",
            "a:bc:00:01:fe:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        let data = serde_json::json!({"VNI": 1, "VtepMAC": "0a:bc:00:01:fe:ff"});
        assert_eq!(vtep_mac_from_backend_data(&data).expect("valid"), m);
        let err = vtep_mac_from_backend_data(&serde_json::json!({"VNI": 1})).unwrap_err();
        assert!(err.to_string().contains("VtepMAC"), "{err}");
    }
}
