//! CHECK: verify that an attachment is still what ADD made of it.
//!
//! Driven by `prevResult` (required, as the spec says). It checks the IPAM reservation
//! first, then the bridge (exists, is a bridge, MAC as recorded, promiscuous as configured),
//! the pod interface (exists in the recorded sandbox, is a veth, MAC as recorded, carries
//! every recorded address), the host veth (a veth on the bridge whose peer is the pod
//! interface), every recorded route inside the pod — a route recorded without a gateway
//! matches on destination alone, which the reference got wrong before v1.3.0 — and the
//! masquerade entries when `ipMasq` is on. The first mismatch is reported by name.

use backends::kernel::netlink::IpFamily;
use backends::kernel::netns::NetNs;
use backends::kernel::{Kernel, MasqTable};
use ipam::host_local::HostLocal;
use ipam::subnet_env::SubnetEnv;

use crate::conf::IpamPlan;
use crate::context::Context;
use crate::error::{CniError, CniResult, INVALID_CONFIG, TRY_AGAIN_LATER, UNKNOWN_CONTAINER};
use crate::result::{CniOutput, format_mac};
use crate::{ipam_exec, netlink_err};

fn fail(msg: String) -> CniError {
    CniError::internal(msg)
}

/// Runs CHECK.
pub async fn check<K: Kernel>(ctx: &Context<'_, K>) -> CniResult<()> {
    let inv = ctx.inv;
    let conf = &inv.conf;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "CHECK requires \"prevResult\" (the result of ADD)",
        )
    })?;
    let prev = CniOutput::parse(prev)
        .map_err(|e| CniError::new(crate::error::DECODE_FAILURE, format!("prevResult: {e}")))?;
    let subnet_file = conf.subnet_file();
    let env = SubnetEnv::load(&subnet_file).map_err(|e| {
        CniError::new(
            TRY_AGAIN_LATER,
            format!("cannot use subnet file {}: {e}", subnet_file.display()),
        )
    })?;
    let plan = conf.plan(&env, &inv.cni_args)?;

    // IPAM first, as the reference does.
    match &plan.ipam {
        IpamPlan::HostLocal { data_dir, .. } => {
            let store = HostLocal::open(data_dir, &plan.name).map_err(crate::ipam_err)?;
            let ips = store
                .lookup(&inv.container_id, &inv.ifname)
                .map_err(crate::ipam_err)?;
            if ips.is_empty() {
                return Err(fail(format!(
                    "host-local has no reservation for {}/{} in network {}",
                    inv.container_id, inv.ifname, plan.name
                )));
            }
            for ip in prev.ips.iter().map(|i| i.address.ip()) {
                if !ips.contains(&ip) {
                    return Err(fail(format!(
                        "{ip} is in prevResult but not reserved for {}/{}",
                        inv.container_id, inv.ifname
                    )));
                }
            }
        }
        IpamPlan::Delegated { plugin, config } => {
            ipam_exec::exec(
                inv,
                plugin,
                "CHECK",
                config,
                Some(("prevResult", conf.prev_result.clone().unwrap_or_default())),
            )?;
        }
    }

    let netns_path = inv.netns.clone().unwrap_or_default();
    let netns_text = netns_path.display().to_string();
    let (ci_index, ci) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == inv.ifname && i.sandbox.as_deref() == Some(netns_text.as_str()))
        .ok_or_else(|| {
            fail(format!(
                "prevResult has no interface {} in sandbox {netns_text}",
                inv.ifname
            ))
        })?;

    let host = &ctx.host;
    let bridge = host
        .link(&plan.bridge)
        .await
        .map_err(netlink_err("look up bridge"))?
        .ok_or_else(|| fail(format!("bridge {} does not exist", plan.bridge)))?;
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(fail(format!(
            "{} is not a bridge (kind {:?})",
            plan.bridge, bridge.kind
        )));
    }
    if let Some(recorded) = prev
        .interfaces
        .iter()
        .find(|i| i.name == plan.bridge && i.sandbox.is_none())
        && let (Some(want), Some(have)) = (&recorded.mac, bridge.mac)
        && !want.eq_ignore_ascii_case(&format_mac(&have))
    {
        return Err(fail(format!(
            "bridge {} MAC is {} but prevResult says {want}",
            plan.bridge,
            format_mac(&have)
        )));
    }
    if plan.promisc != bridge.promisc {
        return Err(fail(format!(
            "bridge {} promiscuous mode is {}, config says {}",
            plan.bridge, bridge.promisc, plan.promisc
        )));
    }

    let ns = NetNs::open(&netns_path).map_err(|e| {
        CniError::new(
            UNKNOWN_CONTAINER,
            format!("cannot open network namespace {netns_text}: {e}"),
        )
    })?;
    let (pod, _) = host
        .enter(&ns, &[])
        .map_err(netlink_err("open netlink socket in the pod namespace"))?;
    let pod_link = pod
        .link(&inv.ifname)
        .await
        .map_err(netlink_err("look up the pod interface"))?
        .ok_or_else(|| fail(format!("{} does not exist in {netns_text}", inv.ifname)))?;
    if pod_link.kind.as_deref() != Some("veth") {
        return Err(fail(format!(
            "{} in {netns_text} is not a veth (kind {:?})",
            inv.ifname, pod_link.kind
        )));
    }
    if let (Some(want), Some(have)) = (&ci.mac, pod_link.mac)
        && !want.eq_ignore_ascii_case(&format_mac(&have))
    {
        return Err(fail(format!(
            "{} MAC is {} but prevResult says {want}",
            inv.ifname,
            format_mac(&have)
        )));
    }

    // The host end: a recorded host interface that is a veth on the bridge peered with the pod end.
    let mut host_ok = false;
    for hi in prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.is_none() && i.name != plan.bridge)
    {
        if let Ok(Some(l)) = host.link(&hi.name).await
            && l.kind.as_deref() == Some("veth")
            && l.master == Some(bridge.index)
            && pod_link.link == Some(l.index)
        {
            host_ok = true;
            break;
        }
    }
    if !host_ok {
        return Err(fail(format!(
            "no host veth on bridge {} is peered with {} in {netns_text}",
            plan.bridge, inv.ifname
        )));
    }

    let have_addrs = pod
        .addresses(pod_link.index)
        .await
        .map_err(netlink_err("list pod addresses"))?;
    for ip in prev
        .ips
        .iter()
        .filter(|i| i.interface.is_none_or(|x| x == ci_index))
    {
        if !have_addrs
            .iter()
            .any(|a| a.ip() == ip.address.ip() && a.prefix() == ip.address.prefix())
        {
            return Err(fail(format!(
                "address {} is missing from {} in {netns_text}",
                ip.address, inv.ifname
            )));
        }
    }

    let mut v4 = None;
    let mut v6 = None;
    for r in &prev.routes {
        let table = if r.dst.is_ipv4() {
            if v4.is_none() {
                v4 = Some(
                    pod.routes(IpFamily::V4)
                        .await
                        .map_err(netlink_err("list pod routes"))?,
                );
            }
            v4.as_ref()
        } else {
            if v6.is_none() {
                v6 = Some(
                    pod.routes(IpFamily::V6)
                        .await
                        .map_err(netlink_err("list pod routes"))?,
                );
            }
            v6.as_ref()
        };
        let found = table.into_iter().flatten().any(|k| {
            k.dst == r.dst
                && r.gw.is_none_or(|g| k.gateway == Some(g))
                && r.table.is_none_or(|t| t == k.table)
        });
        if !found {
            return Err(fail(format!(
                "route to {}{} is missing in {netns_text}",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }

    if plan.ip_masq {
        let masq = host.pod_masq(&plan.name);
        for ip in &prev.ips {
            let present = masq
                .contains(ip.address.ip())
                .map_err(|e| fail(format!("read masquerade set: {e}")))?;
            if !present {
                return Err(fail(format!(
                    "masquerade entry for {} is missing",
                    ip.address.ip()
                )));
            }
        }
    }
    Ok(())
}
