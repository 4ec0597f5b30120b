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
//! Any real error is reported (the runtime retries DEL); "not there" never is. A failing
//! step does not stop the others: DEL collects the errors, carries on, and reports them all
//! in one message (with the first one's code), so one broken piece never leaves the rest of
//! the attachment in place. A retried DEL finds what is left: the veth by its name, the
//! masquerade entries by their `CID/IFNAME` comment even once the reservation is gone.

use std::net::IpAddr;

use backends::kernel::netns::NetNs;
use backends::kernel::{Kernel, MasqTable};
use ipam::host_local::HostLocal;
use ipam::subnet_env::SubnetEnv;

use crate::conf::DEFAULT_FLANNEL_DATA_DIR;
use crate::context::Context;
use crate::error::{CniError, CniResult};
use crate::names::host_veth_name;
use crate::result::CniOutput;
use crate::skel::Invocation;
use crate::{ipam_exec, netlink_err};

/// Runs DEL: every step, whatever the previous one did; the errors together.
pub async fn del<K: Kernel>(ctx: &Context<'_, K>) -> CniResult<()> {
    let inv = ctx.inv;
    let conf = &inv.conf;
    let mut errors = Vec::new();
    if let Err(e) = remove_veth(ctx).await {
        errors.push(e);
    }
    ipam::fault::point("del:veth");

    let store = if conf.ipam_type() == "host-local" {
        match HostLocal::open(&conf.ipam_data_dir(), conf.network_name()) {
            Ok(store) => Some(store),
            Err(e) => {
                errors.push(crate::ipam_err(e));
                None
            }
        }
    } else {
        None
    };
    if should_unmasquerade(inv) {
        let held = match &store {
            Some(store) => store
                .lookup(&inv.container_id, &inv.ifname)
                .unwrap_or_else(|e| {
                    errors.push(crate::ipam_err(e));
                    Vec::new()
                }),
            None => Vec::new(),
        };
        if let Err(e) = unmasquerade(ctx, held) {
            errors.push(e);
        }
        ipam::fault::point("del:unmasq");
    }
    if let Some(store) = &store {
        match store.release(&inv.container_id, &inv.ifname) {
            Ok(_) => ipam::fault::point("del:released"),
            Err(e) => errors.push(crate::ipam_err(e)),
        }
    } else if conf.ipam_type() != "host-local" {
        // The delegate needs its config; subnet.env may be gone, so render what we can.
        let ipam = delegated_ipam_config(inv);
        if let Err(e) = ipam_exec::exec(inv, conf.ipam_type(), "DEL", &ipam, None) {
            errors.push(e);
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
    combine(errors)
}

/// One error for all of DEL's failures: the first one's code, every message.
fn combine(mut errors: Vec<CniError>) -> CniResult<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let msg = errors
                .iter()
                .map(|e| e.msg.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            Err(CniError::new(
                errors[0].code,
                format!("{n} DEL steps failed: {msg}"),
            ))
        }
    }
}

/// Deletes the host end of the veth by its stable name; the kernel removes the pod end with
/// it. Returns once the pair is gone from both namespaces; the kernel's clean-up
/// after that finishes in a detached child ([`Kernel::del_link_detached`]). Only when that
/// name is absent is `CNI_IFNAME` looked for inside the pod's namespace.
async fn remove_veth<K: Kernel>(ctx: &Context<'_, K>) -> CniResult<()> {
    let inv = ctx.inv;
    let host_name = host_veth_name(&inv.container_id, &inv.ifname);
    let removed = ctx
        .host
        .del_link_detached(&host_name)
        .map_err(|e| CniError::internal(format!("delete {host_name}: {e}")))?;
    if !removed && let Some(path) = &inv.netns {
        match NetNs::open(path) {
            Ok(ns) => {
                let (pod, _) = ctx
                    .host
                    .enter(&ns, &[])
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
    Ok(())
}

/// Removes the attachment's masquerade entries: those of `held` (its reservations), else of
/// `prevResult`, else every entry whose comment names the attachment — the last case covers a
/// DEL that an older version was killed in between releasing and unmasquerading.
fn unmasquerade<K: Kernel>(ctx: &Context<'_, K>, mut ips: Vec<IpAddr>) -> CniResult<()> {
    let inv = ctx.inv;
    let conf = &inv.conf;
    let masq = ctx.host.pod_masq(conf.network_name());
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
    let mut failed = Vec::new();
    for ip in &ips {
        if let Err(e) = masq.remove(*ip) {
            failed.push(format!("remove masquerade for {ip}: {e}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(failed.join("; ")))
    }
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
