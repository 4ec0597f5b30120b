//! ADD: attach a pod to the node bridge.
//!
//! Three files: [`plan`] decides everything that can be decided without the kernel (names,
//! MAC, routes, knobs, the result), [`steps`] are the kernel steps, [`rollback`] undoes them.
//!
//! The order is chosen so that a failure at any step leaves nothing the next DEL or ADD
//! cannot clean up, and so that a duplicate ADD changes nothing:
//!
//! 1. read subnet.env (missing → code 11) and build the plan;
//! 2. refuse a duplicate ADD before touching anything: the host end's name is a hash of
//!    (container id, ifname), so an existing attachment is one netlink lookup away — which
//!    also spares host-local the reference plugin's read of every reservation file;
//!    reserve the addresses (claimed with `O_EXCL`, round robin from `last_reserved_ip`);
//! 3. ensure the bridge (refusing IPv6 router advertisements from pods), its gateway address
//!    (pinning the bridge MAC the first time) and `ip_forward`;
//! 4. create the veth pair in one netlink request — host end `veth<hash>` attached to the
//!    bridge, container end born inside the pod namespace as `CNI_IFNAME`, MTU on both;
//! 5. configure the pod through a netlink socket opened inside its namespace: `lo` up,
//!    addresses, IPv6 off on a pod without an IPv6 address (`podIPv6LinkLocal` keeps it) and
//!    DAD off on one with (as the reference sets it; `enabledad` keeps it), link up, routes;
//! 6. the MAC is derived from the IPv4 address (`0a:58:<ip>`), so a pod restarted with the
//!    same IP keeps its MAC and the neighbour entries cached for it stay right. When one may
//!    be wrong — a MAC requested by the runtime, or the node caching another MAC for the IP —
//!    the kernel announces the pod with gratuitous ARPs (an `NTF_USE` neighbour request for
//!    its own address, after settling the bridge port's carrier event), so peers switch to
//!    the new MAC at once instead of after ~50 s;
//! 7. masquerade (`ipMasq`) as one nftables transaction.
//!
//! Any failure after step 2 runs [`Rollback`]: delete the veth (which removes both ends),
//! remove masquerade entries, release the addresses this invocation reserved (only those: a
//! racing duplicate ADD must not release the winner's address).

mod plan;
mod rollback;
mod steps;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use backends::kernel::netns::NetNs;
use backends::kernel::{Kernel, MasqTable};
use ipam::fault;
use ipam::host_local::HostLocal;
use ipam::subnet_env::SubnetEnv;
use ipnetwork::IpNetwork;

pub use plan::{Attachment, PodAddress, pod_ipv6_settings, pod_mac_for};
use rollback::{Rollback, undo};

use crate::conf::{IpamPlan, PodNetwork};
use crate::context::Context;
use crate::error::{CniError, CniResult, TRY_AGAIN_LATER, UNKNOWN_CONTAINER};
use crate::result::{CniOutput, RouteEntry};
use crate::skel::Invocation;
use crate::{ipam_exec, netlink_err};

/// Runs ADD and returns the result (printed by the caller in the requested version).
pub async fn add<K: Kernel>(ctx: &Context<'_, K>) -> CniResult<CniOutput> {
    let inv = ctx.inv;
    let subnet_file = inv.conf.subnet_file();
    let env = SubnetEnv::load(&subnet_file).map_err(|e| {
        CniError::new(
            TRY_AGAIN_LATER,
            format!("cannot use subnet file {}: {e}", subnet_file.display()),
        )
        .with_details(
            "flanneld writes this file once the node has a subnet lease; retry when it is running",
        )
    })?;
    let plan = inv.conf.plan(&env, &inv.cni_args)?;
    let netns_path = inv.netns.clone().unwrap_or_default();
    let pod_ns = NetNs::open(&netns_path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            UNKNOWN_CONTAINER
        } else {
            crate::error::INTERNAL
        };
        CniError::new(
            code,
            format!(
                "cannot open network namespace {}: {e}",
                netns_path.display()
            ),
        )
    })?;

    let mut rollback = Rollback::default();
    match attach(ctx, &plan, &pod_ns, &mut rollback).await {
        Ok(out) => Ok(out),
        Err(e) => {
            undo(ctx, &plan, rollback).await;
            Err(e)
        }
    }
}

/// Steps 2–7 of the module docs, recording in `rb` what is to be undone on failure.
async fn attach<K: Kernel>(
    ctx: &Context<'_, K>,
    plan: &PodNetwork,
    pod_ns: &NetNs,
    rb: &mut Rollback,
) -> CniResult<CniOutput> {
    let (inv, host) = (ctx.inv, &ctx.host);
    // 2. not attached yet, then addresses
    let host_name = crate::names::host_veth_name(&inv.container_id, &inv.ifname);
    if host
        .link(&host_name)
        .await
        .map_err(netlink_err("look up the host interface"))?
        .is_some()
    {
        return Err(CniError::internal(format!(
            "duplicate ADD: container {} is already attached as {} (host interface {host_name} \
             exists); DEL it first",
            inv.container_id, inv.ifname
        )));
    }
    let (addresses, ipam_routes, ipam_dns) = reserve(inv, plan)?;
    rb.ipam_reserved = true;
    if matches!(plan.ipam, IpamPlan::HostLocal { .. }) {
        rb.host_local_ips = addresses.iter().map(|a| a.address.ip()).collect();
    }
    fault::point("add:reserved");
    let attachment = Attachment::plan(inv, plan, addresses, ipam_routes, ipam_dns);

    // 3. bridge
    let bridge = steps::ensure_bridge(host, plan, &attachment).await?;
    fault::point("add:bridge");

    // 4. veth pair, container end created directly inside the pod namespace, with a MAC we
    //    chose (so nothing has to be read back from the pod side)
    let host_veth = steps::create_veth(host, inv, plan, &attachment, &bridge, pod_ns).await?;
    rb.host_veth = Some(attachment.host_name.clone());
    fault::point("add:veth");
    // The host end is born down, so its bridge port starts disabled and is enabled exactly
    // once, when the pod end brings carrier (each enable or disable walks every port and FDB
    // entry of the bridge). Settle the creation's carrier event first; then bring it up with
    // `addrgenmode none` — the port needs no IPv6 address and without one sends no DAD, RS or
    // MLD — and hairpin, in one request.
    steps::settle_bridge_port(host, &attachment.host_name);
    host.setup_bridge_port(host_veth.index, plan.hairpin)
        .await
        .map_err(netlink_err(
            "set up the bridge port (up, addrgenmode none, hairpin)",
        ))?;
    fault::point("add:port-up");

    // 5. the pod side, through a handle bound to the pod namespace
    let (pod, pod_index) = steps::configure_pod(host, &attachment, &host_veth, pod_ns).await?;
    fault::point("add:routes");

    // 6. announce the pod when a cached neighbour entry may be wrong
    steps::announce_if_stale(host, &pod, &attachment, &bridge, pod_index).await;

    // 7. masquerade
    if plan.ip_masq {
        let masq = host.pod_masq(&plan.name);
        for a in &attachment.addresses {
            masq.add(a.address, &inv.container_id, &inv.ifname)
                .map_err(|e| {
                    CniError::internal(format!("set up masquerade for {}: {e}", a.address))
                })?;
            rb.masq.push(a.address.ip());
        }
    }
    fault::point("add:masq");

    fault::point("add:done");
    // The bridge MAC is pinned and the host end's comes from its creation echo: nothing to
    // read back.
    Ok(attachment.result(inv, &bridge, &host_veth))
}

/// Reserves the pod's addresses: in-process host-local, or the delegated plugin.
pub(crate) fn reserve(
    inv: &Invocation,
    plan: &PodNetwork,
) -> CniResult<(Vec<PodAddress>, Vec<RouteEntry>, crate::result::Dns)> {
    match &plan.ipam {
        IpamPlan::HostLocal {
            data_dir,
            range_sets,
        } => {
            let store = HostLocal::open(data_dir, &plan.name).map_err(crate::ipam_err)?;
            let allocs = store
                .allocate_unclaimed(
                    &inv.container_id,
                    &inv.ifname,
                    range_sets,
                    &plan.requested_ips,
                )
                .map_err(crate::ipam_err)?;
            let addrs = allocs
                .into_iter()
                .map(|a| PodAddress {
                    address: a.address,
                    gateway: plan.is_gateway.then_some(a.gateway),
                })
                .collect();
            Ok((addrs, Vec::new(), Default::default()))
        }
        IpamPlan::Delegated { plugin, config } => {
            let out = ipam_exec::add(inv, plugin, config)?;
            if out.ips.is_empty() {
                let _ = ipam_exec::exec(inv, plugin, "DEL", config, None);
                return Err(CniError::internal(format!(
                    "IPAM plugin {plugin} returned no IP addresses"
                )));
            }
            let addrs = out
                .ips
                .iter()
                .map(|ip| PodAddress {
                    address: ip.address,
                    gateway: ip
                        .gateway
                        .or_else(|| plan.is_gateway.then(|| first_host(ip.address))),
                })
                .collect();
            // routes already include the cluster network (we rendered them into the ipam config)
            Ok((addrs, Vec::new(), out.dns))
        }
    }
}

fn first_host(net: IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => ipam::net::first_host(n).into(),
        IpNetwork::V6(n) => ipam::net::first_host_v6(n).into(),
    }
}
