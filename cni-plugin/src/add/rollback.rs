//! Undoing a failed ADD.

use std::net::IpAddr;

use backends::kernel::{Kernel, MasqTable};
use ipam::host_local::HostLocal;

use crate::conf::{IpamPlan, PodNetwork};
use crate::context::Context;
use crate::ipam_exec;

/// What ADD has done so far, undone in reverse on failure.
#[derive(Default)]
pub struct Rollback {
    pub ipam_reserved: bool,
    /// Host-local addresses this invocation claimed (released one by one on rollback).
    pub host_local_ips: Vec<IpAddr>,
    pub host_veth: Option<String>,
    pub masq: Vec<IpAddr>,
}

/// Undoes what ADD did, in reverse: the veth (which takes both ends along), masquerade
/// entries, then only the addresses this invocation reserved. Failures are logged; there is
/// nothing better to do with them while an ADD error is already on its way.
pub async fn undo<K: Kernel>(ctx: &Context<'_, K>, plan: &PodNetwork, rb: Rollback) {
    let inv = ctx.inv;
    if let Some(name) = &rb.host_veth
        && let Err(e) = ctx.host.del_link(name).await
    {
        eprintln!("flannel cni: rollback: delete {name}: {e}");
    }
    if !rb.masq.is_empty() {
        let masq = ctx.host.pod_masq(&plan.name);
        for ip in &rb.masq {
            if let Err(e) = masq.remove(*ip) {
                eprintln!("flannel cni: rollback: masquerade {ip}: {e}");
            }
        }
    }
    if rb.ipam_reserved {
        match &plan.ipam {
            IpamPlan::HostLocal { data_dir, .. } => {
                if let Err(e) = HostLocal::open(data_dir, &plan.name).and_then(|s| {
                    s.release_addresses(&inv.container_id, &inv.ifname, &rb.host_local_ips)
                }) {
                    eprintln!("flannel cni: rollback: release addresses: {e}");
                }
            }
            IpamPlan::Delegated { plugin, config } => {
                if let Err(e) = ipam_exec::exec(inv, plugin, "DEL", config, None) {
                    eprintln!("flannel cni: rollback: {e}");
                }
            }
        }
    }
}
