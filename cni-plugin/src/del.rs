//! DEL: detach a pod. Idempotent, and it never needs subnet.env or the pod's namespace.
//!
//! 1. Delete the host end of the veth by its stable name (`veth<hash>`); the kernel removes
//!    the pod end with it. DEL returns as soon as the kernel has unlisted the pair (bridge
//!    port, addresses and names gone) and leaves the kernel's slower memory clean-up, most of
//!    the time a plain `ip link del` takes, to a detached child process. Only when that name
//!    is absent (an attachment made by another plugin) do we look inside the pod's namespace
//!    for `CNI_IFNAME`. A namespace path that is empty or gone is fine: the veth died with
//!    the namespace.
//! 2. Remove the pod's masquerade entries — *before* releasing its addresses, so that a DEL
//!    killed half-way still finds them through the reservation next time: the addresses the
//!    store holds for the attachment, else those of `prevResult`, else every entry whose
//!    comment names the attachment (`CID/IFNAME`).
//! 3. Release the addresses (after the device is gone, as the reference does since #702).
//! 4. Remove flannel's per-container cache file if a node migrated from flannel's plugin
//!    left one behind.
//!
//! Any real kernel error is reported (the runtime retries DEL); "not there" never is.

use std::net::IpAddr;

use backends::kernel::netlink::{Netlink, del_link_detached};
use backends::kernel::netns::NetNs;
use backends::kernel::nft::PodMasq;
use ipam::host_local::HostLocal;
use ipam::subnet_env::SubnetEnv;

use crate::conf::DEFAULT_FLANNEL_DATA_DIR;
use crate::error::{CniError, CniResult};
use crate::names::host_veth_name;
use crate::result::CniOutput;
use crate::skel::Invocation;
use crate::{ipam_exec, netlink_err};

/// Runs DEL.
pub async fn del(inv: &Invocation) -> CniResult<()> {
    let conf = &inv.conf;
    let host_name = host_veth_name(&inv.container_id, &inv.ifname);
    // Returns once the pair is gone from both namespaces; the kernel's ~20 ms of clean-up after
    // that finishes in a detached child (see backends::kernel::netlink::del_link_detached).
    let removed = del_link_detached(&host_name)
        .map_err(|e| CniError::internal(format!("delete {host_name}: {e}")))?;
    if !removed && let Some(path) = &inv.netns {
        match NetNs::open(path) {
            Ok(ns) => {
                let pod = Netlink::new_in(&ns)
                    .map_err(netlink_err("open netlink socket in the pod namespace"))?;
                pod.del_link(&inv.ifname)
                    .await
                    .map_err(netlink_err(&format!(
                        "delete {} in the pod namespace",
                        inv.ifname
                    )))?;
            }
            Err(e) => {
                // Gone, or no longer a namespace: the veth went with it.
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("flannel cni: DEL: ignoring netns {}: {e}", path.display());
                }
            }
        }
    }

    ipam::fault::point("del:veth");
    let store = if conf.ipam_type() == "host-local" {
        Some(HostLocal::open(&conf.ipam_data_dir(), conf.network_name()).map_err(crate::ipam_err)?)
    } else {
        None
    };
    if should_unmasquerade(inv) {
        let held = match &store {
            Some(store) => store
                .lookup(&inv.container_id, &inv.ifname)
                .map_err(crate::ipam_err)?,
            None => Vec::new(),
        };
        unmasquerade(inv, held)?;
        ipam::fault::point("del:unmasq");
    }
    match &store {
        Some(store) => {
            store
                .release(&inv.container_id, &inv.ifname)
                .map_err(crate::ipam_err)?;
            ipam::fault::point("del:released");
        }
        None => {
            // The delegate needs its config; subnet.env may be gone, so render what we can.
            let ipam = delegated_ipam_config(inv);
            ipam_exec::exec(inv, conf.ipam_type(), "DEL", &ipam, None)?;
        }
    }

    let cache = conf
        .data_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_FLANNEL_DATA_DIR.into())
        .join(&inv.container_id);
    if let Err(e) = std::fs::remove_file(&cache)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("flannel cni: DEL: cannot remove {}: {e}", cache.display());
    }
    Ok(())
}

/// Removes the attachment's masquerade entries: those of `held` (its reservations), else of
/// `prevResult`, else every entry whose comment names the attachment — the last case covers a
/// DEL that an older version was killed in between releasing and unmasquerading.
fn unmasquerade(inv: &Invocation, mut ips: Vec<IpAddr>) -> CniResult<()> {
    let conf = &inv.conf;
    let masq = PodMasq::new(conf.network_name());
    if ips.is_empty()
        && let Some(prev) = conf
            .prev_result
            .as_ref()
            .and_then(|p| CniOutput::parse(p).ok())
    {
        ips = prev.ips.iter().map(|i| i.address.ip()).collect();
    }
    if ips.is_empty() {
        let owner = format!("{}/{}", inv.container_id, inv.ifname);
        ips = masq
            .elements()
            .map_err(|e| CniError::internal(format!("list masquerade entries: {e}")))?
            .into_iter()
            .filter(|(_, comment)| *comment == owner)
            .map(|(ip, _)| ip)
            .collect();
    }
    for ip in &ips {
        masq.remove(*ip)
            .map_err(|e| CniError::internal(format!("remove masquerade for {ip}: {e}")))?;
    }
    Ok(())
}

/// Whether DEL should look for masquerade entries. Explicit `delegate.ipMasq` decides;
/// otherwise subnet.env does (flannel's rule: ipMasq = !FLANNEL_IPMASQ); if subnet.env is
/// unreadable we cannot know, so we clean up to be safe.
fn should_unmasquerade(inv: &Invocation) -> bool {
    if let Some(explicit) = inv.conf.explicit_ip_masq() {
        return explicit;
    }
    match SubnetEnv::load(&inv.conf.subnet_file()) {
        Ok(env) => !env.ipmasq,
        Err(_) => true,
    }
}

/// The `ipam` object for a delegated plugin when subnet.env may be unavailable.
pub(crate) fn delegated_ipam_config(inv: &Invocation) -> serde_json::Value {
    let args = crate::conf::CniArgs::default();
    match SubnetEnv::load(&inv.conf.subnet_file())
        .ok()
        .and_then(|env| inv.conf.plan(&env, &args).ok())
    {
        Some(crate::conf::PodNetwork {
            ipam: crate::conf::IpamPlan::Delegated { config, .. },
            ..
        }) => config,
        _ => {
            let mut obj = inv.conf.ipam.clone().unwrap_or_default().extra;
            obj.insert("type".into(), inv.conf.ipam_type().into());
            serde_json::Value::Object(obj)
        }
    }
}
