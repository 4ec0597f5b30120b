//! The network configuration: flannel's netconf on stdin, turned into one plan for the pod.
//!
//! The runtime hands us flannel's config (`subnetFile`, `dataDir`, `delegate`, `ipam`,
//! `runtimeConfig`, …). flannel's own plugin would render a `bridge` delegate config from it
//! and exec two more binaries; we build the same decisions into a [`PodNetwork`] and act on
//! it in-process. Defaults: bridge `cbr0` (flannel's own plugin leaves the reference bridge
//! plugin's `cni0`; set `delegate.bridge` to keep that name), `isGateway` true, `ipMasq` =
//! !`FLANNEL_IPMASQ`, `mtu` = `FLANNEL_MTU`, and host-local IPAM over `FLANNEL_SUBNET` with a
//! route to every `FLANNEL_NETWORK`.
//!
//! Unknown keys are ignored, as the spec requires. Keys that flannel rejects (`delegate.name`,
//! `delegate.ipam`) are rejected here too, with code 7 and the key's name.

use std::net::IpAddr;
use std::path::PathBuf;

use ipam::host_local::{RangeConfig, RangeSet};
use ipam::subnet_env::SubnetEnv;
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::error::{CniError, CniResult};
use crate::result::{Dns, RouteEntry, parse_mac};

/// Default `subnetFile`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default flannel `dataDir` (where flannel's own plugin caches delegate configs).
pub const DEFAULT_FLANNEL_DATA_DIR: &str = "/var/lib/cni/flannel";
/// Default host-local `dataDir`.
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/cni/networks";
/// Default bridge name (the reference bridge plugin's default).
pub const DEFAULT_BRIDGE: &str = "cbr0";

/// flannel's netconf as read from stdin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version of this config.
    pub cni_version: Option<String>,
    /// Network name; also the host-local directory name.
    pub name: Option<String>,
    /// Plugin type (`flannel`).
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    /// Path of subnet.env.
    pub subnet_file: Option<PathBuf>,
    /// flannel's delegate cache directory (only read for migration clean-up).
    pub data_dir: Option<PathBuf>,
    /// Bridge options.
    #[serde(default)]
    pub delegate: DelegateConf,
    /// IPAM options.
    pub ipam: Option<IpamConf>,
    /// Runtime-provided capability arguments.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// Result of the previous plugin / the runtime's cache.
    pub prev_result: Option<serde_json::Value>,
    /// Runtime metadata (`args.cni.ips`, `args.cni.mac`).
    pub args: Option<ArgsConf>,
    /// DNS settings copied into the result.
    pub dns: Option<Dns>,
    /// GC: the attachments that are still valid.
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC: the key libcni also sets (misspelt in some versions, cni#1101).
    #[serde(rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

/// The `delegate` object: the options flannel passes to the bridge plugin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegateConf {
    /// Delegate plugin type; only `bridge` is built in.
    #[serde(rename = "type")]
    pub plugin_type: Option<serde_json::Value>,
    /// Bridge name.
    pub bridge: Option<String>,
    /// MTU of the bridge and both veth ends.
    pub mtu: Option<u32>,
    /// Hairpin on the host-side bridge port.
    #[serde(default)]
    pub hairpin_mode: bool,
    /// Bridge in promiscuous mode.
    #[serde(default)]
    pub promisc_mode: bool,
    /// Gateway address on the bridge.
    pub is_gateway: Option<bool>,
    /// Default route in the pod via the gateway (implies isGateway).
    #[serde(default)]
    pub is_default_gateway: bool,
    /// Replace a different address already on the bridge.
    #[serde(default)]
    pub force_address: bool,
    /// Per-pod masquerade.
    pub ip_masq: Option<bool>,
    /// IPv6 duplicate address detection on the pod interface (the reference bridge plugin's
    /// `enabledad`, default off).
    #[serde(rename = "enabledad", alias = "enableDad", default)]
    pub enable_dad: bool,
    /// Forbidden (flannel sets it).
    pub name: Option<serde_json::Value>,
    /// Forbidden (flannel builds it).
    pub ipam: Option<serde_json::Value>,
}

/// The `ipam` object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    /// IPAM type; `host-local` (default) runs in-process, anything else is exec'd.
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    /// host-local store directory.
    pub data_dir: Option<PathBuf>,
    /// Extra routes (the cluster network route is appended).
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    /// Range sets overriding the ones derived from subnet.env.
    pub ranges: Option<Vec<Vec<RangeConfig>>>,
    /// All keys as given, forwarded to a delegated IPAM plugin.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `runtimeConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Requested IPs (`ips` capability).
    #[serde(default)]
    pub ips: Vec<String>,
    /// Requested MAC (`mac` capability).
    pub mac: Option<String>,
}

/// `args`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ArgsConf {
    /// `args.cni`.
    #[serde(default)]
    pub cni: CniArgsConf,
}

/// `args.cni`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CniArgsConf {
    /// Requested IPs.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Requested MAC.
    pub mac: Option<String>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

impl NetConf {
    /// Decodes the config (already known to be JSON); a type error names the key (code 7).
    pub fn from_value(value: &serde_json::Value) -> CniResult<NetConf> {
        let conf: NetConf = serde_path_to_error::deserialize(value).map_err(|e| {
            CniError::config(format!(
                "invalid network config at `{}`: {}",
                e.path(),
                e.inner()
            ))
        })?;
        conf.validate()?;
        Ok(conf)
    }

    fn validate(&self) -> CniResult<()> {
        let name = self.name.as_deref().unwrap_or("");
        if !is_valid_network_name(name) {
            return Err(CniError::config(format!(
                "invalid network name {name:?}: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
            )));
        }
        if self.delegate.name.is_some() {
            return Err(CniError::config(
                "\"delegate\" must not contain \"name\" (it is taken from the network name)",
            ));
        }
        if self.delegate.ipam.is_some() {
            return Err(CniError::config(
                "\"delegate\" must not contain \"ipam\" (use the top-level \"ipam\" key)",
            ));
        }
        match &self.delegate.plugin_type {
            None => {}
            Some(serde_json::Value::String(t)) if t == "bridge" => {}
            Some(serde_json::Value::String(t)) => {
                return Err(CniError::new(
                    crate::error::UNSUPPORTED_FIELD,
                    format!(
                        "delegate.type {t:?} is not supported: this plugin implements the \"bridge\" delegate in-process"
                    ),
                ));
            }
            Some(_) => return Err(CniError::config("\"delegate.type\" must be a string")),
        }
        if self.delegate.hairpin_mode && self.delegate.promisc_mode {
            return Err(CniError::config(
                "delegate: \"hairpinMode\" and \"promiscMode\" cannot both be true",
            ));
        }
        if let Some(mtu) = self.delegate.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::config(format!(
                "delegate.mtu {mtu} is outside 68..65535"
            )));
        }
        if let Some(b) = &self.delegate.bridge
            && !is_valid_ifname(b)
        {
            return Err(CniError::config(format!(
                "delegate.bridge {b:?} is not a valid interface name"
            )));
        }
        Ok(())
    }

    /// The network name (validated non-empty).
    pub fn network_name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The subnet.env path.
    pub fn subnet_file(&self) -> PathBuf {
        self.subnet_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE))
    }

    /// The bridge name.
    pub fn bridge_name(&self) -> &str {
        self.delegate.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)
    }

    /// The IPAM type (`host-local` unless configured otherwise).
    pub fn ipam_type(&self) -> &str {
        self.ipam
            .as_ref()
            .and_then(|i| i.plugin_type.as_deref())
            .unwrap_or("host-local")
    }

    /// The host-local data directory.
    pub fn ipam_data_dir(&self) -> PathBuf {
        self.ipam
            .as_ref()
            .and_then(|i| i.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IPAM_DATA_DIR))
    }

    /// The attachments a GC must keep (either key), if the runtime sent any.
    pub fn gc_valid_attachments(&self) -> Vec<Attachment> {
        let mut v = self.valid_attachments.clone().unwrap_or_default();
        v.extend(self.attachments.clone().unwrap_or_default());
        v
    }

    /// `ipMasq` when it can be decided without subnet.env (explicit in `delegate`).
    pub fn explicit_ip_masq(&self) -> Option<bool> {
        self.delegate.ip_masq
    }

    /// Builds the full plan for ADD/CHECK/STATUS from the node's subnet.env.
    pub fn plan(&self, env: &SubnetEnv, cni_args: &CniArgs) -> CniResult<PodNetwork> {
        let ipam_conf = self.ipam.clone().unwrap_or_default();
        let mut routes = ipam_conf.routes.clone();
        for net in &env.networks {
            routes.push(RouteEntry::new(IpNetwork::V4(*net), None));
        }
        for net in &env.ipv6_networks {
            routes.push(RouteEntry::new(IpNetwork::V6(*net), None));
        }
        let range_configs: Vec<Vec<RangeConfig>> = match &ipam_conf.ranges {
            Some(r) if !r.is_empty() => r.clone(),
            _ => {
                let mut sets = Vec::new();
                if let Some(s) = env.subnet {
                    sets.push(vec![range_for(IpNetwork::V4(s))?]);
                }
                if let Some(s) = env.ipv6_subnet {
                    sets.push(vec![range_for(IpNetwork::V6(s))?]);
                }
                sets
            }
        };
        let ipam = if self.ipam_type() == "host-local" {
            let mut sets = Vec::with_capacity(range_configs.len());
            for (i, rc) in range_configs.iter().enumerate() {
                sets.push(
                    RangeSet::from_config(rc)
                        .map_err(|e| CniError::config(format!("ipam.ranges[{i}]: {e}")))?,
                );
            }
            ipam::host_local::validate_range_sets(&sets)
                .map_err(|e| CniError::config(format!("ipam.ranges: {e}")))?;
            if sets.is_empty() {
                return Err(CniError::config(
                    "no address range: subnet.env has no subnet and ipam.ranges is empty",
                ));
            }
            IpamPlan::HostLocal {
                data_dir: self.ipam_data_dir(),
                range_sets: sets,
            }
        } else {
            let mut ipam_obj = ipam_conf.extra.clone();
            ipam_obj.insert("type".into(), self.ipam_type().into());
            ipam_obj.insert(
                "ranges".into(),
                serde_json::to_value(&range_configs).unwrap_or_default(),
            );
            ipam_obj.insert(
                "routes".into(),
                serde_json::to_value(&routes).unwrap_or_default(),
            );
            if let Some(d) = &ipam_conf.data_dir {
                ipam_obj.insert(
                    "dataDir".into(),
                    serde_json::Value::String(d.display().to_string()),
                );
            }
            IpamPlan::Delegated {
                plugin: self.ipam_type().to_string(),
                config: serde_json::Value::Object(ipam_obj),
            }
        };
        let mut requested = Vec::new();
        let mac_text = self
            .runtime_config
            .mac
            .clone()
            .or_else(|| self.args.as_ref().and_then(|a| a.cni.mac.clone()))
            .or_else(|| cni_args.get("MAC").map(str::to_string));
        let mac = match mac_text {
            Some(m) => Some(
                parse_mac(&m)
                    .ok_or_else(|| CniError::config(format!("invalid requested MAC {m:?}")))?,
            ),
            None => None,
        };
        let ip_texts: Vec<String> = if !self.runtime_config.ips.is_empty() {
            self.runtime_config.ips.clone()
        } else if let Some(a) = self.args.as_ref().filter(|a| !a.cni.ips.is_empty()) {
            a.cni.ips.clone()
        } else if let Some(ip) = cni_args.get("IP") {
            ip.split(',').map(str::to_string).collect()
        } else {
            Vec::new()
        };
        for t in ip_texts {
            let addr = t.split('/').next().unwrap_or("");
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| CniError::config(format!("invalid requested IP {t:?}")))?;
            requested.push(ip);
        }
        Ok(PodNetwork {
            name: self.network_name().to_string(),
            bridge: self.bridge_name().to_string(),
            mtu: self.delegate.mtu.or(Some(env.mtu)).filter(|m| *m > 0),
            hairpin: self.delegate.hairpin_mode,
            promisc: self.delegate.promisc_mode,
            is_gateway: self.delegate.is_gateway.unwrap_or(true)
                || self.delegate.is_default_gateway,
            is_default_gateway: self.delegate.is_default_gateway,
            force_address: self.delegate.force_address,
            ip_masq: self.delegate.ip_masq.unwrap_or(!env.ipmasq),
            enable_dad: self.delegate.enable_dad,
            ipam,
            routes,
            requested_ips: requested,
            mac,
            dns: self.dns.clone().unwrap_or_default(),
        })
    }
}

fn range_for(subnet: IpNetwork) -> CniResult<RangeConfig> {
    let net = IpNetwork::new(subnet.network(), subnet.prefix())
        .map_err(|e| CniError::config(format!("subnet.env subnet {subnet}: {e}")))?;
    Ok(RangeConfig {
        subnet: net,
        range_start: None,
        range_end: None,
        gateway: None,
    })
}

/// Where addresses come from.
#[derive(Debug, Clone)]
pub enum IpamPlan {
    /// In-process host-local.
    HostLocal {
        /// Store directory (the network name is appended).
        data_dir: PathBuf,
        /// One address per set.
        range_sets: Vec<RangeSet>,
    },
    /// Another IPAM plugin, exec'd through CNI_PATH with this `ipam` object.
    Delegated {
        /// Plugin binary name.
        plugin: String,
        /// The `ipam` object to send.
        config: serde_json::Value,
    },
}

/// Everything ADD needs to know, decided once.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// Network name.
    pub name: String,
    /// Bridge name.
    pub bridge: String,
    /// MTU for bridge and veth (None = kernel default).
    pub mtu: Option<u32>,
    /// Hairpin on the bridge port.
    pub hairpin: bool,
    /// Bridge promiscuous.
    pub promisc: bool,
    /// Gateway on the bridge.
    pub is_gateway: bool,
    /// Default route in the pod.
    pub is_default_gateway: bool,
    /// Replace a conflicting bridge address.
    pub force_address: bool,
    /// Per-pod masquerade.
    pub ip_masq: bool,
    /// IPv6 DAD on the pod interface (`accept_dad`); off unless `enabledad`.
    pub enable_dad: bool,
    /// Address source.
    pub ipam: IpamPlan,
    /// Routes for the pod (cluster network + configured ones).
    pub routes: Vec<RouteEntry>,
    /// Requested IPs.
    pub requested_ips: Vec<IpAddr>,
    /// Requested container MAC.
    pub mac: Option<[u8; 6]>,
    /// DNS for the result.
    pub dns: Dns,
}

/// `CNI_ARGS` (`K=V;K2=V2`).
#[derive(Debug, Clone, Default)]
pub struct CniArgs(pub Vec<(String, String)>);

impl CniArgs {
    /// Parses `CNI_ARGS`; a pair without `=` is an invalid-env error (4).
    pub fn parse(text: &str) -> CniResult<CniArgs> {
        let mut out = Vec::new();
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    crate::error::INVALID_ENV,
                    format!("CNI_ARGS: invalid pair {pair:?}, expected KEY=VALUE"),
                )
            })?;
            out.push((k.to_string(), v.to_string()));
        }
        Ok(CniArgs(out))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// libcni's rule for network names and container ids: alphanumeric first, then `[A-Za-z0-9_.-]`.
pub fn is_valid_network_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {
            bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        }
        _ => false,
    }
}

pub use backends::kernel::netlink::valid_ifname as is_valid_ifname;

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap()
    }

    fn conf(v: serde_json::Value) -> CniResult<NetConf> {
        NetConf::from_value(&v)
    }

    #[test]
    fn stock_flannel_conflist_entry_gets_flannel_defaults() {
        let c = conf(
            serde_json::json!({"name":"cbr0","cniVersion":"0.3.1","type":"flannel",
            "delegate":{"hairpinMode":true,"isDefaultGateway":true}}),
        )
        .unwrap();
        let p = c.plan(&env(), &CniArgs::default()).unwrap();
        assert_eq!(p.bridge, "cbr0");
        assert_eq!(p.mtu, Some(1450));
        assert!(p.hairpin && p.is_gateway && p.is_default_gateway);
        assert!(
            !p.enable_dad,
            "DAD is off unless asked for, as with the reference"
        );
        assert!(!p.ip_masq, "ipMasq is the inverse of FLANNEL_IPMASQ=true");
        assert_eq!(
            p.routes,
            vec![RouteEntry::new("10.244.0.0/16".parse().unwrap(), None)]
        );
        match &p.ipam {
            IpamPlan::HostLocal {
                data_dir,
                range_sets,
            } => {
                assert_eq!(data_dir, &PathBuf::from(DEFAULT_IPAM_DATA_DIR));
                assert_eq!(range_sets.len(), 1);
                assert_eq!(
                    range_sets[0].ranges[0].subnet,
                    "10.244.1.0/24".parse::<IpNetwork>().unwrap()
                );
                assert_eq!(
                    range_sets[0].ranges[0].gateway,
                    "10.244.1.1".parse::<IpAddr>().unwrap()
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(c.subnet_file(), PathBuf::from(DEFAULT_SUBNET_FILE));
    }

    #[test]
    fn delegate_options_override_defaults() {
        let c = conf(serde_json::json!({"name":"n","cniVersion":"1.0.0","delegate":{"bridge":"br9","mtu":1400,
            "isGateway":false,"ipMasq":true,"forceAddress":true,"promiscMode":true,"enabledad":true},
            "ipam":{"dataDir":"/tmp/x","routes":[{"dst":"192.0.2.0/24"}],
                    "ranges":[[{"subnet":"10.244.1.0/24","rangeStart":"10.244.1.10","rangeEnd":"10.244.1.20"}]]}})).unwrap();
        let p = c.plan(&env(), &CniArgs::default()).unwrap();
        assert_eq!(p.bridge, "br9");
        assert_eq!(p.mtu, Some(1400));
        assert!(!p.is_gateway && p.ip_masq && p.force_address && p.promisc && p.enable_dad);
        assert_eq!(p.routes.len(), 2, "configured route + cluster network");
        let IpamPlan::HostLocal {
            data_dir,
            range_sets,
        } = &p.ipam
        else {
            panic!()
        };
        assert_eq!(data_dir, &PathBuf::from("/tmp/x"));
        assert_eq!(
            range_sets[0].ranges[0].start,
            "10.244.1.10".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn dual_stack_subnet_env_gives_two_range_sets() {
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();
        let c = conf(serde_json::json!({"name":"n","cniVersion":"1.0.0"})).unwrap();
        let p = c.plan(&e, &CniArgs::default()).unwrap();
        let IpamPlan::HostLocal { range_sets, .. } = &p.ipam else {
            panic!()
        };
        assert_eq!(range_sets.len(), 2);
        assert_eq!(p.routes.len(), 2);
        assert!(p.ip_masq);
    }

    #[test]
    fn forbidden_and_bad_keys_are_code_7_naming_the_key() {
        for (v, needle) in [
            (
                serde_json::json!({"name":"n","delegate":{"name":"x"}}),
                "name",
            ),
            (
                serde_json::json!({"name":"n","delegate":{"ipam":{}}}),
                "ipam",
            ),
            (
                serde_json::json!({"name":"n","delegate":{"type":5}}),
                "delegate.type",
            ),
            (
                serde_json::json!({"name":"n","delegate":{"mtu":"big"}}),
                "delegate.mtu",
            ),
            (
                serde_json::json!({"name":"n","delegate":{"hairpinMode":true,"promiscMode":true}}),
                "promiscMode",
            ),
            (serde_json::json!({"name":"../../etc"}), "network name"),
            (serde_json::json!({"name":""}), "network name"),
            (
                serde_json::json!({"name":"n","ipam":{"routes":[{"dst":"nope"}]}}),
                "ipam.routes",
            ),
        ] {
            let e = conf(v.clone()).unwrap_err();
            assert_eq!(e.code, crate::error::INVALID_CONFIG, "{v}");
            assert!(e.msg.contains(needle), "{v}: {}", e.msg);
        }
        let e = conf(serde_json::json!({"name":"n","delegate":{"type":"ipvlan"}})).unwrap_err();
        assert_eq!(e.code, crate::error::UNSUPPORTED_FIELD);
    }

    #[test]
    fn unknown_keys_are_ignored() {
        conf(serde_json::json!({"name":"n","whatever":{"x":1},"delegate":{"vlan":0,"foo":"bar"},"ipam":{"resolvConf":"/x"}})).unwrap();
    }

    #[test]
    fn requested_ip_and_mac_sources_in_precedence_order() {
        let c = conf(serde_json::json!({"name":"n","runtimeConfig":{"ips":["10.244.1.7/24"],"mac":"02:00:00:00:00:07"},
            "args":{"cni":{"ips":["10.244.1.8"],"mac":"02:00:00:00:00:08"}}})).unwrap();
        let a = CniArgs::parse("IgnoreUnknown=1;IP=10.244.1.9;MAC=02:00:00:00:00:09").unwrap();
        let p = c.plan(&env(), &a).unwrap();
        assert_eq!(
            p.requested_ips,
            vec!["10.244.1.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(p.mac, Some([2, 0, 0, 0, 0, 7]));
        let c = conf(serde_json::json!({"name":"n"})).unwrap();
        let p = c.plan(&env(), &a).unwrap();
        assert_eq!(
            p.requested_ips,
            vec!["10.244.1.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(p.mac, Some([2, 0, 0, 0, 0, 9]));
        assert!(
            c.plan(&env(), &CniArgs::parse("IP=bogus").unwrap())
                .is_err()
        );
    }

    #[test]
    fn delegated_ipam_keeps_user_keys() {
        let c = conf(serde_json::json!({"name":"n","ipam":{"type":"static","foo":1}})).unwrap();
        let p = c.plan(&env(), &CniArgs::default()).unwrap();
        let IpamPlan::Delegated { plugin, config } = &p.ipam else {
            panic!()
        };
        assert_eq!(plugin, "static");
        assert_eq!(config["foo"], 1);
        assert_eq!(config["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(config["routes"][0]["dst"], "10.244.0.0/16");
    }

    #[test]
    fn name_and_ifname_rules() {
        assert!(is_valid_network_name("cbr0"));
        assert!(is_valid_network_name("a.b-c_d"));
        for bad in ["", ".", "..", "-a", "a/b", "a b", "é"] {
            assert!(!is_valid_network_name(bad), "{bad:?}");
        }
        assert!(is_valid_ifname("eth0"));
        assert!(is_valid_ifname("a23456789012345"));
        for bad in [
            "",
            ".",
            "..",
            "a234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert!(!is_valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn cni_args_parsing() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.1.5").unwrap();
        assert_eq!(a.get("IP"), Some("10.244.1.5"));
        assert_eq!(a.get("K8S_POD_NAME"), Some("x"));
        assert_eq!(
            CniArgs::parse("novalue").unwrap_err().code,
            crate::error::INVALID_ENV
        );
        assert!(CniArgs::parse("").unwrap().0.is_empty());
    }
}
