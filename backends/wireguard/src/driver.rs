//! The wireguard backend as an overlay driver.
//!
//! Like flannel: one device per family in `Mode: separate` (`flannel-wg` for IPv4 on
//! `ListenPort`, `flannel-wg-v6` for IPv6 on `ListenPortV6`), MTU = underlay − 80, the device
//! address `<own subnet>.0/32`, one route `<Network> dev flannel-wg` for the whole cluster
//! network, and no per-peer kernel routes: the device picks the peer by its allowed IPs (the
//! peer's lease subnet). The lease's `BackendData` is `{"PublicKey":"<base64>","Port":N}`;
//! a peer's missing `Port` (flannel before 0.26.5) means our own port.
//!
//! Two paths behind one driver, chosen at start-up ([`WireguardDriver::start`]):
//! * **kernel**: `ip link add flannel-wg type wireguard` works, so the kernel module is the
//!   device, configured over generic netlink (`backends::kernel::wireguard`). The first
//!   update after start-up replaces the device's peer list (an adopted device may hold an
//!   earlier run's peers); after that peers are added, updated and removed one by one, so
//!   sessions survive lease updates. A failed update makes the next one replace the list.
//! * **userspace**: the kernel answers "Unknown device type": flanneld is the device
//!   ([`crate::userspace`]).

use std::any::Any;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use backends::kernel::netlink::IpFamily;
use backends::kernel::netns::NetNs;
use backends::overlay::driver::device_mtu;
use backends::overlay::{
    BackendDriver, DeviceSpec, ExternalInterface, OverlayError, Peer, PeerEntries, RouteDev,
    RouteSpec,
};
use ipnetwork::IpNetwork;

use crate::config::{Mode, WireguardConfig, decode_key, encode_key};
use crate::key::NodeKey;
use crate::peers::PeerSpec;
use crate::userspace::{UserspaceDevice, UserspaceSetup};
use backends::kernel::wireguard::{KernelWireguard, LinkCreate, WgDevice, WgPeer};

/// flannel's encapsulation overhead: outer IPv6 header (40, the larger), UDP (8), type,
/// receiver index, counter (16) and tag (16).
pub const WG_OVERHEAD: u32 = 80;
/// The IPv4 device (and the only one outside `Mode: separate`).
pub const DEVICE_V4: &str = "flannel-wg";
/// The IPv6 device of `Mode: separate`.
pub const DEVICE_V6: &str = "flannel-wg-v6";

/// Where things live on the node (flanneld's flags and environment).
#[derive(Clone, Debug)]
pub struct WireguardPaths {
    /// The private key file (`$WIREGUARD_KEY_FILE`, default `/run/flannel/wgkey`).
    pub key_file: PathBuf,
    /// Directory of the userspace device's UAPI socket (`/var/run/wireguard`); `None`: none.
    pub socket_dir: Option<PathBuf>,
    /// Force the userspace path even where the kernel module exists (tests, benchmarks).
    pub force_userspace: bool,
}

/// Which implementation is the device.
#[derive(Debug)]
enum Path {
    Kernel {
        wg: KernelWireguard,
        /// What the kernel holds, by public key (as far as we know).
        configured: BTreeMap<[u8; 32], WgPeer>,
        /// The next peer update replaces the device's whole peer list (`REPLACE_PEERS`):
        /// after start-up (an adopted device may hold peers of an earlier run) and after a
        /// failed update (what the kernel holds is unknown).
        replace_all: bool,
    },
    Userspace(Box<UserspaceDevice>),
}

/// The wireguard backend of one family on one node.
#[derive(Debug)]
pub struct WireguardDriver {
    path: Path,
    device: DeviceSpec,
    network: IpNetwork,
    config: WireguardConfig,
    key: NodeKey,
    port: u16,
    ns: Option<NetNs>,
}

/// A peer's `BackendData`, read.
pub fn peer_key_and_port(data: &serde_json::Value) -> Result<([u8; 32], Option<u16>), String> {
    let map = data.as_object().ok_or("not a JSON object")?;
    let key = ipam::lease::lookup_ci(map, "PublicKey")
        .and_then(|v| v.as_str())
        .ok_or("no PublicKey")?;
    let key = decode_key(key).map_err(|e| format!("PublicKey: {e}"))?;
    let port = match ipam::lease::lookup_ci(map, "Port") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(0) => None,
            Some(p) if p <= u64::from(u16::MAX) => Some(p as u16),
            _ => return Err(format!("Port: {v} is not a UDP port")),
        },
    };
    Ok((key, port))
}

impl WireguardDriver {
    /// Sets up the device for `ext`'s family: detects the path, creates or adopts the device
    /// and configures our key and port (inside `ns`, or the calling thread's namespace).
    /// `network` (the whole cluster network of the family) is routed into the device on
    /// reconcile.
    pub fn start(
        config: &WireguardConfig,
        network: IpNetwork,
        ext: &ExternalInterface,
        paths: &WireguardPaths,
        ns: Option<&NetNs>,
    ) -> Result<WireguardDriver, OverlayError> {
        let family = ext.family();
        let (name, port) = match (config.mode, family) {
            (Mode::Separate, IpFamily::V6) => (DEVICE_V6, config.listen_port_v6),
            _ => (DEVICE_V4, config.listen_port),
        };
        let underlay_mtu = config.mtu.unwrap_or(ext.mtu);
        let source = if config.mtu.is_some() {
            "Backend.MTU".to_string()
        } else {
            ext.name.clone()
        };
        let mtu = device_mtu(
            underlay_mtu,
            &source,
            WG_OVERHEAD,
            "WireGuard device",
            family,
        )?;
        let key = crate::key::load_or_create(&paths.key_file)
            .map_err(|e| OverlayError::Datapath(Box::new(e)))?;
        if key.created {
            tracing::info!(file = %paths.key_file.display(), "made a new wireguard private key");
        }
        let datapath = |e: String| OverlayError::Datapath(e.into());
        let in_ns = |f: Box<dyn FnOnce() -> Result<LinkCreate, String> + Send>| match ns {
            Some(ns) => ns.run(f).map_err(|e| e.to_string()).and_then(|r| r),
            None => f(),
        };
        let link_name = name.to_string();
        let created = if paths.force_userspace {
            LinkCreate::Unsupported
        } else {
            in_ns(Box::new(move || {
                backends::kernel::wireguard::create_link(&link_name, mtu).map_err(|e| e.to_string())
            }))
            .map_err(datapath)?
        };
        let kernel = match created {
            LinkCreate::Created => true,
            LinkCreate::Unsupported => false,
            // Ours from an earlier run of the userspace path (a persistent TUN), or a kernel
            // device: attaching as a TUN tells them apart.
            LinkCreate::Exists => !is_tun(name, ns),
        };
        let path = if kernel {
            tracing::info!(
                device = name,
                "wireguard: kernel module path (generic netlink)"
            );
            let wg = match ns {
                Some(ns) => ns
                    .run(KernelWireguard::open)
                    .map_err(|e| datapath(e.to_string()))?,
                None => KernelWireguard::open(),
            }
            .map_err(|e| datapath(e.to_string()))?
            .ok_or_else(|| datapath("the wireguard generic netlink family is missing".into()))?;
            let mut p = Path::Kernel {
                wg,
                configured: BTreeMap::new(),
                replace_all: true,
            };
            configure_kernel_device(&mut p, name, &key, port, false)?;
            p
        } else {
            tracing::info!(
                device = name,
                "wireguard: userspace path (no kernel module: `ip link add type wireguard` is unsupported here)"
            );
            let setup = UserspaceSetup {
                name: name.to_string(),
                local: SocketAddr::new(ext.iface_addr, port),
                socket_dir: paths.socket_dir.clone(),
                psk: config.psk,
                keepalive: config.persistent_keepalive,
            };
            Path::Userspace(Box::new(
                UserspaceDevice::start(setup, &key, ns).map_err(|e| datapath(e.to_string()))?,
            ))
        };
        let kind = if kernel { "wireguard" } else { "tun" };
        Ok(WireguardDriver {
            path,
            device: DeviceSpec::Owned {
                name: name.to_string(),
                kind,
                mtu,
                family,
            },
            network,
            config: config.clone(),
            key,
            port,
            ns: ns
                .map(NetNs::try_clone)
                .transpose()
                .map_err(|e| datapath(e.to_string()))?,
        })
    }

    /// Whether the kernel module is the device.
    pub fn is_kernel(&self) -> bool {
        matches!(self.path, Path::Kernel { .. })
    }

    /// The userspace device, when that path runs.
    pub fn userspace(&self) -> Option<&UserspaceDevice> {
        match &self.path {
            Path::Userspace(u) => Some(u),
            Path::Kernel { .. } => None,
        }
    }

    /// Our public key, base64.
    pub fn public_key(&self) -> String {
        encode_key(self.key.public.as_bytes())
    }

    /// A peer's public key and endpoint, from its lease.
    fn peer_spec(&self, p: &Peer) -> Result<([u8; 32], SocketAddr), OverlayError> {
        let data = p
            .backend_data
            .as_ref()
            .ok_or_else(|| OverlayError::BadBackendData {
                data: "null".into(),
                reason: format!("peer {}: wireguard lease has no BackendData", p.subnet),
            })?;
        let (key, port) =
            peer_key_and_port(&data.value()).map_err(|reason| OverlayError::BadBackendData {
                data: data.as_str().to_string(),
                reason: format!("peer {}: {reason}", p.subnet),
            })?;
        Ok((key, SocketAddr::new(p.public_ip, port.unwrap_or(self.port))))
    }
}

fn is_tun(name: &str, ns: Option<&NetNs>) -> bool {
    let name = name.to_string();
    let attach = move || flannel_udp::tun::Tun::open(&name, false).is_ok();
    match ns {
        Some(ns) => ns.run(attach).unwrap_or(false),
        None => attach(),
    }
}

/// Sets our key and port on the kernel device; with `with_peers`, also every peer we believe
/// configured, replacing whatever the device holds (a re-created device).
///
/// Equivalent of `wg set flannel-wg private-key F listen-port P [peer ...]`.
fn configure_kernel_device(
    path: &mut Path,
    name: &str,
    key: &NodeKey,
    port: u16,
    with_peers: bool,
) -> Result<(), OverlayError> {
    let Path::Kernel { wg, configured, .. } = path else {
        return Ok(());
    };
    let dev = WgDevice {
        ifname: name.to_string(),
        private_key: key.private.to_bytes(),
        listen_port: port,
        replace_peers: with_peers,
        peers: if with_peers {
            configured.values().cloned().collect()
        } else {
            Vec::new()
        },
    };
    wg.set_device(&dev)
        .map_err(|e| OverlayError::Datapath(Box::new(e)))
}

impl BackendDriver for WireguardDriver {
    fn kind(&self) -> &'static str {
        "wireguard"
    }

    fn mtu(&self) -> u32 {
        self.device.mtu()
    }

    fn backend_data(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"PublicKey": self.public_key(), "Port": self.port}))
    }

    fn device(&self) -> Option<&DeviceSpec> {
        Some(&self.device)
    }

    fn fixed_entries(&self) -> Vec<PeerEntries> {
        vec![PeerEntries {
            subnet: self.network,
            neigh: None,
            fdb: None,
            route: RouteSpec {
                dst: self.network,
                gateway: None,
                dev: RouteDev::Overlay,
                onlink: false,
                via_nexthop: false,
            },
        }]
    }

    fn peer_entries(&self, peer: &Peer, _: bool) -> Result<Option<PeerEntries>, OverlayError> {
        self.peer_spec(peer).map(|_| None)
    }

    fn set_own_subnet(&mut self, subnet: IpNetwork) {
        if let Path::Userspace(u) = &mut self.path {
            u.set_own_subnet(Some(subnet));
        }
    }

    fn set_peers(&mut self, peers: &[Peer]) {
        let mut wanted: BTreeMap<[u8; 32], (SocketAddr, Vec<IpNetwork>)> = BTreeMap::new();
        for p in peers {
            // Refusals are reported by peer_entries on every reconcile.
            let Ok((key, endpoint)) = self.peer_spec(p) else {
                continue;
            };
            if key == *self.key.public.as_bytes() {
                continue;
            }
            wanted
                .entry(key)
                .or_insert_with(|| (endpoint, Vec::new()))
                .1
                .push(p.subnet);
        }
        match &mut self.path {
            Path::Userspace(u) => {
                let specs = wanted
                    .into_iter()
                    .map(|(key, (endpoint, allowed))| PeerSpec {
                        public_key: key,
                        endpoint,
                        allowed,
                    })
                    .collect();
                u.set_peers(specs);
            }
            Path::Kernel {
                wg,
                configured,
                replace_all,
            } => {
                let mut next = BTreeMap::new();
                for (key, (endpoint, allowed_ips)) in wanted {
                    let peer = WgPeer {
                        public_key: key,
                        preshared_key: self.config.psk,
                        endpoint: Some(endpoint),
                        persistent_keepalive: Some(self.config.persistent_keepalive),
                        allowed_ips,
                        remove: false,
                    };
                    next.insert(key, peer);
                }
                // Removals first, then new and changed peers; or the whole list at once.
                let changes: Vec<WgPeer> = if *replace_all {
                    next.values().cloned().collect()
                } else {
                    let removed = configured
                        .iter()
                        .filter(|(k, _)| !next.contains_key(*k))
                        .map(|(_, old)| WgPeer {
                            remove: true,
                            ..old.clone()
                        });
                    let changed = next
                        .iter()
                        .filter(|(k, p)| configured.get(*k) != Some(*p))
                        .map(|(_, p)| p.clone());
                    removed.chain(changed).collect()
                };
                if changes.is_empty() && !*replace_all {
                    return;
                }
                let dev = WgDevice {
                    ifname: self.device.name().to_string(),
                    private_key: self.key.private.to_bytes(),
                    listen_port: self.port,
                    replace_peers: *replace_all,
                    peers: changes,
                };
                match wg.set_device(&dev) {
                    Ok(()) => {
                        *configured = next;
                        *replace_all = false;
                    }
                    Err(e) => {
                        // What the kernel holds is unknown now (a split update may have
                        // stopped half-way): the next update replaces the whole list, so a
                        // peer that should be gone cannot stay.
                        tracing::error!(error = %e, "could not configure wireguard peers; retrying with the whole list at the next update");
                        *configured = next;
                        *replace_all = true;
                    }
                }
            }
        }
    }

    fn reopen_device(&mut self) -> Result<(), OverlayError> {
        let name = self.device.name().to_string();
        match &mut self.path {
            Path::Userspace(u) => u.restart().map_err(|e| OverlayError::Datapath(Box::new(e))),
            Path::Kernel { .. } => {
                let mtu = self.device.mtu();
                let n = name.clone();
                let create = move || backends::kernel::wireguard::create_link(&n, mtu);
                let r = match &self.ns {
                    Some(ns) => ns
                        .run(create)
                        .map_err(|e| OverlayError::Datapath(Box::new(e)))?,
                    None => create(),
                };
                r.map_err(|e| OverlayError::Datapath(Box::new(e)))?;
                configure_kernel_device(&mut self.path, &name, &self.key, self.port, true)
            }
        }
    }

    fn metrics_fn(&self) -> Box<dyn Fn() -> String + Send + Sync> {
        let path = if self.is_kernel() {
            "kernel"
        } else {
            "userspace"
        };
        let device = self.device.name().to_string();
        let info = format!(
            "flannel_backend_info{{type=\"wireguard\"}} 1\n# HELP flannel_wireguard_info The device and which implementation runs it.\n# TYPE flannel_wireguard_info gauge\nflannel_wireguard_info{{device=\"{device}\",path=\"{path}\",public_key=\"{}\"}} 1\n",
            self.public_key()
        );
        match &self.path {
            Path::Userspace(u) => {
                let m = u.metrics_fn();
                Box::new(move || format!("{info}{}", m()))
            }
            Path::Kernel { .. } => Box::new(move || info.clone()),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_data_is_read_like_flannel() {
        let key = encode_key(&[9; 32]);
        let (k, p) =
            peer_key_and_port(&serde_json::json!({"PublicKey": key, "Port": 51830})).unwrap();
        assert_eq!((k, p), ([9; 32], Some(51830)));
        // Peers of flannel < 0.26.5 publish no Port.
        let (_, p) = peer_key_and_port(&serde_json::json!({"PublicKey": key})).unwrap();
        assert_eq!(p, None);
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"PublicKey": "nope"}),
            serde_json::json!({"PublicKey": key, "Port": 70000}),
            serde_json::json!("text"),
        ] {
            assert!(peer_key_and_port(&bad).is_err(), "{bad}");
        }
    }
}
