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

use std::path::PathBuf;

use ipam::host_local::RangeConfig;
use serde::Deserialize;

use crate::error::{CniError, CniResult};
use crate::result::{Dns, RouteEntry};

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
    /// Keep the kernel's IPv6 (link-local address, router solicitations, MLD) on the
    /// interface of a pod that gets no IPv6 address, as flannel with the reference bridge
    /// plugin leaves it. Ours, default off: such an interface gets `disable_ipv6=1`.
    #[serde(rename = "podIPv6LinkLocal", alias = "podIpv6LinkLocal", default)]
    pub pod_ipv6_link_local: bool,
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

mod plan;

pub use plan::{CniArgs, IpamPlan, PodNetwork};

#[cfg(test)]
mod tests;
