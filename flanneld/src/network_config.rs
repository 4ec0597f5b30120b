//! # network_config — the cluster-wide JSON at `<prefix>/config`
//!
//! Operators write one JSON document per flannel network, e.g.
//! `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}`. Go flannel decodes it
//! with `encoding/json`, which matches object keys **case-insensitively** (an exact match
//! wins) and ignores unknown keys; the documentation writes `VNI`/`DirectRouting` while the
//! Go struct tags say `vni`/`directRouting`, and real configs use both. [`NetworkConfig::parse`]
//! does the same, then validates:
//!
//! * the address pools with flannel's defaults and rules ([`ipam::subnet_alloc`]), each error
//!   naming the key at fault (`SubnetLen`, `IPv6SubnetMin`, ...);
//! * the backend into a typed [`BackendConfig`]: `Backend` absent (or without `Type`) means
//!   `udp`, as in flannel's `parseBackendType`, even though flannel's docs claim vxlan. Type
//!   names are matched case-insensitively; unknown ones are an error naming `Backend.Type`.
//!
//! Type errors name the key too (`Backend.VNI: expected a non-negative integer, got "one"`).
//!
//! Address families follow flannel: `EnableIPv4` (default true) needs `Network`,
//! `EnableIPv6` (default false) needs `IPv6Network`; IPv6-only is `EnableIPv4: false` with
//! `EnableIPv6: true`, and a config enabling neither is refused. The udp backend is IPv4
//! only, as flannel's: a config asking it for IPv6 is refused naming `Backend.Type`.

use std::net::{Ipv4Addr, Ipv6Addr};

use flannel_wireguard::WireguardConfig;

pub use backends::overlay::hostgw::HostGwConfig;
use backends::overlay::section::{Section, SectionError};
pub use backends::overlay::vxlan::{DEFAULT_VXLAN_VNI, VxlanConfig};
pub use flannel_udp::UdpConfig;
use ipam::subnet_alloc::{Ipv4Pool, Ipv6Pool, SubnetConfigError};
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::Value;

pub use backends::kernel::netlink::DEFAULT_VXLAN_PORT;
pub use flannel_udp::DEFAULT_PORT as DEFAULT_UDP_PORT;

/// A network config flanneld cannot use.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NetworkConfigError {
    /// Not JSON, or not a JSON object.
    #[error("network config is not a JSON object: {0}")]
    Json(String),
    /// A key has the wrong type or an unsupported value.
    #[error("invalid network config: {key}: {reason}")]
    Invalid {
        /// The key at fault, e.g. `Backend.VNI`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The address pools violate flannel's rules.
    #[error(transparent)]
    Subnet(#[from] SubnetConfigError),
}

impl NetworkConfigError {
    /// The key the error is about (`<json>` for a syntax error).
    pub fn key(&self) -> &str {
        match self {
            NetworkConfigError::Json(_) => "<json>",
            NetworkConfigError::Invalid { key, .. } => key,
            NetworkConfigError::Subnet(e) => e.key,
        }
    }
}

/// A validated network config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The IPv4 pool when `EnableIPv4` is true (the default).
    pub ipv4: Option<Ipv4Pool>,
    /// The IPv6 pool when `EnableIPv6` is true.
    pub ipv6: Option<Ipv6Pool>,
    /// `EnableNFTables`: program masquerade rules with nftables instead of iptables.
    pub enable_nftables: bool,
    /// The backend and its options.
    pub backend: BackendConfig,
}

/// The backend section, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    /// `"Type":"vxlan"`.
    Vxlan(VxlanConfig),
    /// `"Type":"host-gw"`.
    HostGw(HostGwConfig),
    /// `"Type":"udp"`, also the default when `Backend` or `Type` is missing.
    Udp(UdpConfig),
    /// `"Type":"wireguard"`.
    Wireguard(WireguardConfig),
}

impl BackendConfig {
    /// flannel's type string (`vxlan`, `host-gw`, `udp`).
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan(_) => "vxlan",
            BackendConfig::HostGw(_) => "host-gw",
            BackendConfig::Udp(_) => "udp",
            BackendConfig::Wireguard(_) => "wireguard",
        }
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> NetworkConfigError {
    NetworkConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl From<SectionError> for NetworkConfigError {
    fn from(e: SectionError) -> Self {
        NetworkConfigError::Invalid {
            key: e.key,
            reason: e.reason,
        }
    }
}

impl NetworkConfig {
    /// The cluster networks as subnet.env lists them: IPv4 first, then IPv6.
    pub fn describe(&self) -> String {
        let v4 = self.ipv4.as_ref().map(|p| p.network.to_string());
        let v6 = self.ipv6.as_ref().map(|p| p.network.to_string());
        v4.into_iter().chain(v6).collect::<Vec<_>>().join(",")
    }

    /// Parses and validates the JSON stored at `<prefix>/config`.
    pub fn parse(json: &str) -> Result<Self, NetworkConfigError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| NetworkConfigError::Json(e.to_string()))?;
        let Value::Object(map) = &value else {
            return Err(NetworkConfigError::Json(format!(
                "expected an object, got {value}"
            )));
        };
        let top = Section::new(map, "");

        let enable_ipv4 = top.bool("EnableIPv4", true)?;
        let enable_ipv6 = top.bool("EnableIPv6", false)?;
        if !enable_ipv4 && !enable_ipv6 {
            return Err(invalid(
                "EnableIPv4",
                "false while EnableIPv6 is not true: enable at least one address family",
            ));
        }
        let ipv4 = if enable_ipv4 {
            let network: Ipv4Network = top.parsed("Network")?.ok_or_else(|| {
                invalid(
                    "Network",
                    "missing: define the cluster IPv4 network, e.g. \"10.244.0.0/16\" \
                     (or set EnableIPv4 to false for an IPv6-only network)",
                )
            })?;
            Some(Ipv4Pool::new(
                network,
                top.uint("SubnetLen", 32)?.map(|n| n as u8),
                top.parsed::<Ipv4Addr>("SubnetMin")?,
                top.parsed::<Ipv4Addr>("SubnetMax")?,
            )?)
        } else {
            None
        };
        let ipv6 = if enable_ipv6 {
            let network: Ipv6Network = top.parsed("IPv6Network")?.ok_or_else(|| {
                invalid(
                    "IPv6Network",
                    "missing while EnableIPv6 is true: define the cluster IPv6 network, \
                     e.g. \"fd00:10:244::/56\"",
                )
            })?;
            Some(Ipv6Pool::new(
                network,
                top.uint("IPv6SubnetLen", 128)?.map(|n| n as u8),
                top.parsed::<Ipv6Addr>("IPv6SubnetMin")?,
                top.parsed::<Ipv6Addr>("IPv6SubnetMax")?,
            )?)
        } else {
            None
        };
        let enable_nftables = top.bool("EnableNFTables", false)?;
        let backend = match top.get("Backend") {
            None => BackendConfig::Udp(UdpConfig::default()),
            Some(Value::Object(b)) => parse_backend(&Section::new(b, "Backend."))?,
            Some(v) => return Err(invalid("Backend", format!("expected an object, got {v}"))),
        };
        if let (BackendConfig::Vxlan(v), Some(_)) = (&backend, &ipv6) {
            use backends::overlay::vxlan::{MAX_VNI_V6, VXLAN_V6_OVERHEAD};
            if v.vni > MAX_VNI_V6 {
                return Err(invalid(
                    "Backend.VNI",
                    format!(
                        "{} is too large with EnableIPv6: the device flannel-v6.<VNI> must fit \
                         in 15 bytes (VNI <= {MAX_VNI_V6})",
                        v.vni
                    ),
                ));
            }
            let floor = backends::overlay::MIN_IPV6_MTU + VXLAN_V6_OVERHEAD;
            if let Some(m) = v.mtu.filter(|m| *m < floor) {
                return Err(invalid(
                    "Backend.MTU",
                    format!(
                        "{m} is too small with EnableIPv6: flannel-v6.<VNI> needs MTU - 70 >= 1280"
                    ),
                ));
            }
        }
        if let BackendConfig::Wireguard(w) = &backend
            && w.mode != flannel_wireguard::Mode::Separate
            && ipv4.is_some()
            && ipv6.is_some()
        {
            return Err(invalid(
                "Backend.Mode",
                format!(
                    "{:?} (one device for both families) is not supported with EnableIPv6 and \
                     EnableIPv4 together; use \"separate\" (flanneld's default: flannel-wg and \
                     flannel-wg-v6)",
                    w.mode.as_str()
                ),
            ));
        }
        if matches!(backend, BackendConfig::Udp(_)) && ipv6.is_some() {
            return Err(invalid(
                "Backend.Type",
                "udp carries IPv4 only (as in flannel); use vxlan or host-gw with EnableIPv6",
            ));
        }
        Ok(Self {
            ipv4,
            ipv6,
            enable_nftables,
            backend,
        })
    }
}

/// The backend factory's input: `Backend.Type` picks the driver, whose own config type reads
/// the rest of the section.
fn parse_backend(b: &Section<'_>) -> Result<BackendConfig, NetworkConfigError> {
    let ty = b.string("Type")?.unwrap_or("udp").to_ascii_lowercase();
    match ty.as_str() {
        "vxlan" => Ok(BackendConfig::Vxlan(VxlanConfig::parse(b)?)),
        "host-gw" => Ok(BackendConfig::HostGw(HostGwConfig {})),
        "udp" => Ok(BackendConfig::Udp(UdpConfig::parse(b)?)),
        "wireguard" => Ok(BackendConfig::Wireguard(WireguardConfig::parse(b)?)),
        other => Err(invalid(
            "Backend.Type",
            format!(
                "unsupported backend type {other:?} (supported: vxlan, host-gw, udp, wireguard)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn flannel_documented_vxlan_config() {
        let c = ok(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#);
        let v4 = c.ipv4.as_ref().unwrap();
        assert_eq!(v4.network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(v4.subnet_len, 24);
        assert_eq!(v4.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(v4.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c.ipv6, None);
        assert!(!c.enable_nftables);
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanConfig::default()));
        assert_eq!(c.backend.type_name(), "vxlan");
        let BackendConfig::Vxlan(v) = &c.backend else {
            unreachable!()
        };
        assert_eq!((v.vni, v.port), (1, 8472));
    }

    #[test]
    fn keys_match_case_insensitively() {
        let c = ok(
            r#"{"network":"10.5.0.0/16","subnetlen":20,"SUBNETMIN":"10.5.16.0","SubnetMax":"10.5.32.0",
                      "backend":{"type":"VXLAN","vni":42,"port":4789,"directRouting":true,"learning":true,"gbp":true,"mtu":9000}}"#,
        );
        let v4 = c.ipv4.as_ref().unwrap();
        assert_eq!(v4.subnet_len, 20);
        assert_eq!(v4.subnet_min, Ipv4Addr::new(10, 5, 16, 0));
        assert_eq!(v4.subnet_max, Ipv4Addr::new(10, 5, 32, 0));
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan(VxlanConfig {
                vni: 42,
                port: 4789,
                gbp: true,
                direct_routing: true,
                learning: true,
                mtu: Some(9000)
            })
        );
    }

    #[test]
    fn backend_defaults() {
        // No Backend at all: flannel's parseBackendType says udp.
        assert_eq!(
            ok(r#"{"Network":"10.244.0.0/16"}"#).backend,
            BackendConfig::Udp(UdpConfig { port: 8285 })
        );
        assert_eq!(
            ok(r#"{"Network":"10.244.0.0/16","Backend":{}}"#)
                .backend
                .type_name(),
            "udp"
        );
        assert_eq!(
            ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9999}}"#).backend,
            BackendConfig::Udp(UdpConfig { port: 9999 })
        );
        assert_eq!(
            ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#).backend,
            BackendConfig::HostGw(HostGwConfig {})
        );
        let BackendConfig::Vxlan(v) =
            ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":0,"VNI":0}}"#)
                .backend
        else {
            panic!("not vxlan")
        };
        assert_eq!((v.vni, v.port), (0, 8472));
    }

    #[test]
    fn dual_stack() {
        let c = ok(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, "fc00:0:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(c.describe(), "10.244.0.0/16,fc00::/48");
    }

    #[test]
    fn errors_name_the_bad_key() {
        let cases = [
            (r#"{"Backend":{"Type":"vxlan"}}"#, "Network"),
            (r#"{"Network":"10.244.0.0"}"#, "Network"),
            (r#"{"Network":10}"#, "Network"),
            (r#"{"Network":"10.244.0.0/30"}"#, "Network"),
            (r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#, "SubnetLen"),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#,
                "SubnetLen",
            ),
            (r#"{"Network":"10.244.0.0/16","SubnetLen":-1}"#, "SubnetLen"),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.1"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMax":"10.9.1.0"}"#,
                "SubnetMax",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMax":"x"}"#,
                "SubnetMax",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":false}"#,
                "EnableIPv4",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":"yes"}"#,
                "EnableIPv6",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#,
                "IPv6Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#,
                "IPv6SubnetLen",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#,
                "Backend",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipsec"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":1}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"one"}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
                "Backend.Port",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"true"}}"#,
                "Backend.DirectRouting",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":100}}"#,
                "Backend.MTU",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","VNI":10000}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","MTU":1349}}"#,
                "Backend.MTU",
            ),
            (r#"not json"#, "<json>"),
            (r#"[]"#, "<json>"),
        ];
        for (json, key) in cases {
            let e = NetworkConfig::parse(json).expect_err(json);
            assert_eq!(e.key(), key, "{json}: {e}");
            if key != "<json>" {
                assert!(e.to_string().contains(key), "{e}");
            }
        }
    }

    #[test]
    fn null_and_unknown_keys_are_ignored_like_go() {
        let c = ok(
            r#"{"Network":"10.244.0.0/16","SubnetLen":null,"Comment":"x","Backend":{"Type":"vxlan","VNI":null,"MacPrefix":"0E-2A"}}"#,
        );
        assert_eq!(c.ipv4.unwrap().subnet_len, 24);
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanConfig::default()));
    }

    #[test]
    fn ipv6_only_needs_only_the_ipv6_keys() {
        let c = ok(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#,
        );
        assert_eq!(c.ipv4, None);
        let v6 = c.ipv6.as_ref().unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(c.describe(), "fd00:10:244::/56");
        // A leftover Network is ignored when IPv4 is off, as in flannel.
        let c = ok(
            r#"{"Network":"10.244.0.0/16","EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(c.ipv4, None);
    }

    /// The shipped example configs (`examples/config/network-*.json`) are valid.
    #[test]
    fn example_configs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("network-") && name.ends_with(".json") {
                let json = std::fs::read_to_string(&path).unwrap();
                let c = NetworkConfig::parse(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
                if name.contains("dual") {
                    assert!(c.ipv4.is_some() && c.ipv6.is_some(), "{name}");
                }
                if name.contains("ipv6-only") {
                    assert!(c.ipv4.is_none() && c.ipv6.is_some(), "{name}");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, 5, "network-*.json files in {}", dir.display());
    }

    #[test]
    fn udp_with_ipv6_is_refused_naming_the_backend() {
        for json in [
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
        ] {
            let e = NetworkConfig::parse(json).expect_err(json);
            assert_eq!(e.key(), "Backend.Type", "{e}");
            assert!(e.to_string().contains("udp carries IPv4 only"), "{e}");
        }
    }

    #[test]
    fn wireguard_sections_parse_and_one_device_modes_need_one_family() {
        let c = ok(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"WireGuard","PSK":"H0Ad2y0RLk4Tfn+eO4EtNqUYJ5vGJl5n0cMg7QGlYbM=","PersistentKeepaliveInterval":25}}"#,
        );
        let BackendConfig::Wireguard(w) = &c.backend else {
            panic!("{:?}", c.backend);
        };
        assert_eq!((w.listen_port, w.persistent_keepalive), (51820, 25));
        assert_eq!(c.backend.type_name(), "wireguard");
        // Separate (the default) works with both families; the one-device modes with one.
        ok(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard"}}"#,
        );
        ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Mode":"auto"}}"#);
        let e = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard","Mode":"auto"}}"#,
        )
        .expect_err("auto with both families");
        assert_eq!(e.key(), "Backend.Mode", "{e}");
        let e = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":65536}}"#,
        )
        .expect_err("port");
        assert_eq!(e.key(), "Backend.ListenPort", "{e}");
    }
}
