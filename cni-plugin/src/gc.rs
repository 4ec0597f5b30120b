//! GC (CNI 1.1): release what belongs to attachments the runtime no longer knows.
//!
//! Every host-local reservation whose (container id, ifname) is not in
//! `cni.dev/valid-attachments` is released (a legacy id-only file is kept while any valid
//! attachment has that container id), and so is every masquerade entry recorded for such
//! an attachment. An empty list releases everything, as the spec says. GC keeps going past
//! individual failures and reports them all at the end.

use std::collections::HashSet;

use backends::kernel::{Kernel, MasqTable};
use ipam::host_local::HostLocal;

use crate::context::Context;
use crate::error::{CniError, CniResult};
use crate::ipam_exec;

/// Runs GC.
pub async fn gc<K: Kernel>(ctx: &Context<'_, K>) -> CniResult<()> {
    let inv = ctx.inv;
    let conf = &inv.conf;
    let valid = conf.gc_valid_attachments();
    let pairs: HashSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let mut errors = Vec::new();

    if conf.ipam_type() == "host-local" {
        match HostLocal::open(&conf.ipam_data_dir(), conf.network_name()) {
            Ok(store) => {
                let keep = |r: &ipam::host_local::Reservation| match &r.ifname {
                    Some(ifn) => pairs.contains(&(r.container_id.clone(), ifn.clone())),
                    None => ids.contains(r.container_id.as_str()),
                };
                if let Err(e) = store.gc(&keep) {
                    errors.push(format!("host-local: {e}"));
                }
            }
            Err(e) => errors.push(format!("host-local: {e}")),
        }
    } else {
        let ipam = crate::del::delegated_ipam_config(inv);
        let list = serde_json::to_value(
            valid
                .iter()
                .map(|a| serde_json::json!({"containerID": a.container_id, "ifname": a.ifname}))
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        if let Err(e) = ipam_exec::exec(
            inv,
            conf.ipam_type(),
            "GC",
            &ipam,
            Some(("cni.dev/valid-attachments", list)),
        ) {
            errors.push(e.msg);
        }
    }

    // Masquerade entries carry "<cid>/<ifname>" as their comment.
    let masq = ctx.host.pod_masq(conf.network_name());
    match masq.elements() {
        Ok(elements) => {
            for (ip, owner) in elements {
                let keep = owner
                    .split_once('/')
                    .is_some_and(|(cid, ifn)| pairs.contains(&(cid.to_string(), ifn.to_string())));
                if !keep && let Err(e) = masq.remove(ip) {
                    errors.push(format!("masquerade {ip}: {e}"));
                }
            }
        }
        Err(e) => {
            // No table / no nft binary means nothing was ever masqueraded; only an explicit
            // ipMasq makes that an error.
            if conf.explicit_ip_masq() == Some(true) {
                errors.push(format!("masquerade: {e}"));
            }
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(format!(
            "GC finished with {} error(s): {}",
            errors.len(),
            errors.join("; ")
        )))
    }
}
