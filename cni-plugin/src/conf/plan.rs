//! From a validated [`NetConf`] and subnet.env to the [`PodNetwork`] ADD carries out, with
//! flannel's defaults; and `CNI_ARGS`.

use std::net::IpAddr;
use std::path::PathBuf;

use ipam::host_local::{RangeConfig, RangeSet};
use ipam::subnet_env::SubnetEnv;
use ipnetwork::IpNetwork;

use crate::error::{CniError, CniResult};
use crate::result::{Dns, RouteEntry, parse_mac};

use super::*;

impl NetConf {
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
            pod_ipv6_link_local: self.delegate.pod_ipv6_link_local,
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
    /// IPv6 stays on the interface of a pod without an IPv6 address (`podIPv6LinkLocal`).
    pub pod_ipv6_link_local: bool,
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
