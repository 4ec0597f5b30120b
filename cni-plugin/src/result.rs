//! The CNI result object, and its conversion to each spec version.
//!
//! Internally there is one shape (the 1.1.0 one). [`CniOutput::render`] prints it for the
//! caller's version: before 1.0.0 every `ips[]` entry carries `"version": "4"|"6"`; the
//! interface `mtu`/`socketPath`/`pciID` and the route `mtu`/`advmss`/`priority`/`table`/
//! `scope` fields exist only from 1.1.0 on. Parsing (`prevResult`, a delegated IPAM
//! plugin's output) accepts any of the supported versions and ignores what it does not
//! know, so a result cached by a runtime at 0.3.1 reads the same as a 1.1.0 one.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::version::SpecVersion;

/// One interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for container-side interfaces; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Socket path (1.1.0+; unused by this plugin but kept from prevResult).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI id (1.1.0+; unused by this plugin but kept from prevResult).
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One IP configuration in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.244.1.2/24`.
    pub address: IpNetwork,
    /// Gateway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route in a result (or in an IPAM config's `routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNetwork,
    /// Next hop; absent means "via the interface's gateway".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority / metric (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl RouteEntry {
    /// A plain route to `dst`, optionally via `gw`.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        RouteEntry {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A full result (ADD output, `prevResult`, or an IPAM delegate's output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniOutput {
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// IP configurations.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    /// DNS.
    #[serde(default)]
    pub dns: Dns,
}

impl CniOutput {
    /// Parses a result of any supported version (`prevResult`, IPAM output).
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    /// Renders the result as JSON for spec version `version` (the string is echoed as given).
    pub fn render(&self, version: &str, spec: SpecVersion) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("result types always serialize");
        v["cniVersion"] = serde_json::Value::String(version.to_string());
        if !spec.at_least_1_1() {
            for iface in v["interfaces"].as_array_mut().into_iter().flatten() {
                if let Some(o) = iface.as_object_mut() {
                    o.remove("mtu");
                    o.remove("socketPath");
                    o.remove("pciID");
                }
            }
            for route in v["routes"].as_array_mut().into_iter().flatten() {
                if let Some(o) = route.as_object_mut() {
                    for k in ["mtu", "advmss", "priority", "table", "scope"] {
                        o.remove(k);
                    }
                }
            }
        }
        if !spec.is_1x() {
            for ip in v["ips"].as_array_mut().into_iter().flatten() {
                let fam = match ip["address"].as_str() {
                    Some(a) if a.contains(':') => "6",
                    _ => "4",
                };
                ip["version"] = serde_json::Value::String(fam.into());
            }
        }
        v
    }
}

pub use backends::kernel::netlink::format_mac;

/// Parses `aa:bb:cc:dd:ee:ff`, also with `-` separators (runtime-supplied MACs).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    backends::kernel::netlink::parse_mac(&text.replace('-', ":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniOutput {
        CniOutput {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("0a:58:0a:f4:01:01".into()),
                    ..Default::default()
                },
                Interface {
                    name: "veth1".into(),
                    mac: Some("aa:aa:aa:aa:aa:aa".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("bb:bb:bb:bb:bb:bb".into()),
                    sandbox: Some("/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.2/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(2),
                },
                IpConfig {
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(2),
                },
            ],
            routes: vec![RouteEntry {
                priority: Some(5),
                ..RouteEntry::new("10.244.0.0/16".parse().unwrap(), None)
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_no_new_fields() {
        let r = sample();
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let j = r.render(v, SpecVersion::parse(v).unwrap());
            assert_eq!(j["cniVersion"], v);
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
            assert!(j["interfaces"][1].get("mtu").is_none());
            assert!(j["routes"][0].get("priority").is_none());
        }
    }

    #[test]
    fn v1_results_have_no_ip_version() {
        let r = sample();
        let j = r.render("1.0.0", SpecVersion(1, 0, 0));
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][1].get("mtu").is_none());
        let j = r.render("1.1.0", SpecVersion(1, 1, 0));
        assert!(j["ips"][0].get("version").is_none());
        assert_eq!(j["interfaces"][1]["mtu"], 1450);
        assert_eq!(j["routes"][0]["priority"], 5);
        assert!(j["interfaces"][0].get("sandbox").is_none());
    }

    #[test]
    fn parses_every_version_back() {
        let r = sample();
        for v in crate::version::SUPPORTED {
            let j = r.render(v, SpecVersion::parse(v).unwrap());
            let back = CniOutput::parse(&j).unwrap();
            assert_eq!(back.ips, r.ips, "{v}");
            assert_eq!(back.interfaces.len(), 3);
        }
    }

    #[test]
    fn parses_reference_bridge_output() {
        let text = r#"{"cniVersion":"0.3.1","interfaces":[{"name":"cni0","mac":"06:30:00:00:00:01"},
            {"name":"veth9bbdaf67","mac":"de:68:00:00:00:01"},{"name":"eth0","mac":"52:4d:00:00:00:01","sandbox":"/run/netns/p"}],
            "ips":[{"version":"4","interface":2,"address":"10.244.1.2/24","gateway":"10.244.1.1"}],
            "routes":[{"dst":"10.244.0.0/16"},{"dst":"0.0.0.0/0","gw":"10.244.1.1"}],"dns":{}}"#;
        let r = CniOutput::parse(&serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.routes[1].gw, Some("10.244.1.1".parse().unwrap()));
    }

    #[test]
    fn mac_round_trip() {
        let m = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0xff];
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(parse_mac("0a:58:0a:f4:01"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:ff:00"), None);
        assert_eq!(parse_mac("zz:58:0a:f4:01:ff"), None);
    }
}
