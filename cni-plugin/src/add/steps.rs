//! The kernel half of ADD: each step of [`super::attach`] that changes the node or the pod,
//! through the [`Kernel`] trait (the real kernel in the plugin, the recording twin in tests).

use std::net::IpAddr;

use backends::kernel::Kernel;
use backends::kernel::netlink::{Link, NetlinkError, VethSpec};
use backends::kernel::netns::NetNs;
use ipnetwork::IpNetwork;

use super::plan::{Attachment, forwarding_knob};
use crate::conf::PodNetwork;
use crate::error::{CniError, CniResult};
use crate::netlink_err;
use crate::skel::Invocation;

/// The outcome of one of ADD's IPv6 sysctls (the pod's IPv6 and DAD knobs, the bridge's
/// `accept_ra`). As in the reference, a failure is logged and ADD goes on; a knob that does
/// not exist (IPv6 disabled at boot) is no failure at all.
pub fn tolerate_knob_failure<T>(result: std::io::Result<T>) {
    match result {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("flannel cni: {e} (continuing)"),
    }
}

/// `sysctl -w net.ipv6.conf.<bridge>.accept_ra=0`, as the reference bridge plugin does on
/// every ADD. The bridge is the node's own interface on the pod link, and every pod's
/// multicast reaches it: with the kernel default (`accept_ra=1`, IPv6 forwarding off) one
/// Router Advertisement from any pod gives the node an IPv6 default route through that pod.
/// Checked on every ADD and written only if it differs, so a bridge made by an older version
/// or by hand is fixed too. The check reads the value from the bridge's link dump, which ADD
/// has anyway: a `/proc/sys` path lookup gets slower with every pod namespace on the node
/// (each one leaves its own `net`, `ipv6`, `conf` entries in the same dentry hash chains;
/// README, "Design measurements").
fn refuse_router_advertisements<K: Kernel>(host: &K, bridge: &Link) {
    let key = format!("net/ipv6/conf/{}/accept_ra", bridge.name);
    match bridge.ipv6_accept_ra {
        Some(0) => {}
        Some(_) => tolerate_knob_failure(host.sysctl_write(&key, "0")),
        // The dump had no IPv6 state: ask /proc/sys (a missing knob is fine).
        None => tolerate_knob_failure(host.sysctl_ensure(&key, "0")),
    }
}

/// Another bridge of the node that already carries `gw`'s address: a node migrating from
/// flannel has `cni0` holding the gateway, and a second bridge with the same address would
/// split the subnet in two. Only asked when the gateway is about to be added (the first pod).
async fn other_bridge_holding<K: Kernel>(
    host: &K,
    ours: &Link,
    gw: IpNetwork,
) -> CniResult<Option<String>> {
    let links = host.links().await.map_err(netlink_err("list links"))?;
    for l in links
        .iter()
        .filter(|l| l.index != ours.index && l.kind.as_deref() == Some("bridge"))
    {
        let addrs = host
            .addresses(l.index)
            .await
            .map_err(netlink_err("list bridge addresses"))?;
        if addrs.iter().any(|a| a.ip() == gw.ip()) {
            return Ok(Some(l.name.clone()));
        }
    }
    Ok(None)
}

/// Ensures the bridge exists and carries each family's gateway address.
pub async fn ensure_bridge<K: Kernel>(
    host: &K,
    plan: &PodNetwork,
    attachment: &Attachment,
) -> CniResult<Link> {
    let bridge = host
        .ensure_bridge(&plan.bridge, plan.mtu)
        .await
        .map_err(netlink_err(&format!("ensure bridge {}", plan.bridge)))?;
    refuse_router_advertisements(host, &bridge);
    if plan.promisc && !bridge.promisc {
        host.set_promisc(bridge.index, true)
            .await
            .map_err(netlink_err("set bridge promiscuous"))?;
    }
    if !plan.is_gateway {
        return Ok(bridge);
    }
    let gateways = attachment.bridge_gateways();
    if gateways.is_empty() {
        return Ok(bridge);
    }
    let present = host
        .addresses(bridge.index)
        .await
        .map_err(netlink_err("list bridge addresses"))?;
    let mut added = false;
    for gw in gateways {
        if present.iter().any(|p| p.ip() == gw.ip()) {
            continue;
        }
        let conflicting: Vec<IpNetwork> = present
            .iter()
            .copied()
            .filter(|p| {
                if gw.is_ipv4() {
                    p.is_ipv4()
                } else {
                    // IPv6: only an overlapping prefix conflicts (link-local never does)
                    p.is_ipv6() && (p.contains(gw.ip()) || gw.contains(p.ip()))
                }
            })
            .collect();
        if let Some(other) = other_bridge_holding(host, &bridge, gw).await? {
            let unused = present
                .iter()
                .all(|p| matches!(p.ip(), IpAddr::V6(v6) if v6.is_unicast_link_local()));
            if unused {
                // No address but link-local: made for this pod only; take it away again.
                let _ = host.del_link_index(bridge.index).await;
            }
            return Err(CniError::config(format!(
                "the gateway {} of this node's subnet is already on bridge {other:?} (left by \
                 flannel's bridge plugin?); keep using it: set \"delegate\": {{\"bridge\": \
                 \"{other}\"}} in the conflist (e.g. /etc/cni/net.d/10-flannel.conflist), or \
                 delete {other} once no pod uses it",
                gw.ip()
            )));
        }
        if !conflicting.is_empty() {
            if !plan.force_address {
                return Err(CniError::internal(format!(
                    "{:?} already has an IP address different from {gw}: {conflicting:?} \
                     (the node subnet changed? set delegate.forceAddress to replace it)",
                    plan.bridge
                )));
            }
            for old in conflicting {
                host.del_address(bridge.index, old)
                    .await
                    .map_err(netlink_err("remove old bridge address"))?;
            }
        }
        host.add_address(bridge.index, gw)
            .await
            .map_err(netlink_err("add bridge gateway address"))?;
        added = true;
        let key = forwarding_knob(gw.ip());
        host.sysctl_ensure(key, "1")
            .map_err(|e| CniError::internal(format!("enable {key}: {e}")))?;
    }
    if added {
        // Pin the bridge MAC (setting it explicitly stops it following the lowest port MAC).
        if let Some(mac) = bridge.mac {
            host.set_mac(bridge.index, mac)
                .await
                .map_err(netlink_err("pin bridge MAC"))?;
        }
    } else {
        // Gateway already present: still make sure forwarding is on (cheap read).
        for a in &attachment.addresses {
            let key = forwarding_knob(a.address.ip());
            host.sysctl_ensure(key, "1")
                .map_err(|e| CniError::internal(format!("enable {key}: {e}")))?;
        }
    }
    Ok(bridge)
}

/// Creates the veth pair in one request: host end `veth<hash>` attached to `bridge`, born
/// down, container end born inside `pod_ns` as `CNI_IFNAME` with the planned MAC, MTU on both
/// (`ip link add veth<hash> mtu M master BRIDGE type veth peer name IFNAME netns POD address
/// MAC`).
pub async fn create_veth<K: Kernel>(
    host: &K,
    inv: &Invocation,
    plan: &PodNetwork,
    attachment: &Attachment,
    bridge: &Link,
    pod_ns: &NetNs,
) -> CniResult<Link> {
    let spec = VethSpec {
        host_name: &attachment.host_name,
        peer_name: &inv.ifname,
        mtu: plan.mtu,
        master: Some(bridge.index),
        host_up: false,
        peer_ns: pod_ns,
        peer_mac: Some(attachment.pod_mac),
    };
    match host.create_veth(&spec).await {
        Ok(link) => Ok(link),
        Err(NetlinkError::Exists(_)) => Err(CniError::internal(format!(
            "cannot create veth {}/{}: an interface with one of these names already exists \
             (is container {} already attached as {}?)",
            attachment.host_name, inv.ifname, inv.container_id, inv.ifname
        ))),
        Err(e) => Err(netlink_err("create veth pair")(e)),
    }
}

/// Configures the pod side through a handle opened inside its namespace (which also writes
/// the IPv6 knobs there, before the link goes up): `ip link set lo up`, `ip addr add`,
/// `ip link set IFNAME up` with `arp_notify`, `ip route add` per route. Returns the pod's
/// kernel handle for the announcement.
pub async fn configure_pod<K: Kernel>(
    host: &K,
    attachment: &Attachment,
    host_veth: &Link,
    pod_ns: &NetNs,
) -> CniResult<(K, u32)> {
    let (pod, knob_results) = host
        .enter(pod_ns, &attachment.pod_knobs)
        .map_err(netlink_err("open netlink socket in the pod namespace"))?;
    for r in knob_results {
        tolerate_knob_failure(r);
    }
    // The echo of the host end names its peer's index in the pod namespace (IFLA_LINK).
    let pod_index = host_veth.link.ok_or_else(|| {
        CniError::internal(format!(
            "kernel did not report the peer of {}",
            attachment.host_name
        ))
    })?;
    // `ip link set lo up`: lo is always index 1 in a namespace; up on up is a no-op.
    pod.set_up(LOOPBACK_INDEX)
        .await
        .map_err(netlink_err("set lo up"))?;
    for a in &attachment.addresses {
        pod.add_address(pod_index, a.address)
            .await
            .map_err(netlink_err("add the pod address"))?;
    }
    // Up, with `arp_notify` (the kernel then announces any later MAC change by itself).
    pod.set_up_with_arp_notify(pod_index)
        .await
        .map_err(netlink_err("set the pod interface up"))?;
    ipam::fault::point("add:addresses");
    for route in &attachment.kernel_routes {
        let route = route.clone().dev(pod_index);
        match pod.add_route(&route).await {
            Ok(()) | Err(NetlinkError::Exists(_)) => {}
            Err(e) => {
                return Err(netlink_err(&format!("add route {} in the pod", route.dst))(
                    e,
                ));
            }
        }
    }
    Ok((pod, pod_index))
}

/// Announces the pod with gratuitous ARPs sent by the pod's kernel ([`Kernel::announce`]),
/// the first right now, two repeats a second apart — but only when a cached entry may be
/// wrong: the MAC is not the derived one (requested by the runtime), or the node itself
/// holds another MAC for the address (a previous owner with a different MAC, e.g. from before
/// a switch from the reference plugins). Each announcement floods every bridge port, and with
/// the IP-derived MAC a cached entry for this IP is normally already right. The bridge port
/// must be forwarding for the first one to get anywhere: its carrier event is settled first.
pub async fn announce_if_stale<K: Kernel>(
    host: &K,
    pod: &K,
    attachment: &Attachment,
    bridge: &Link,
    pod_index: u32,
) {
    let Some(ip4) = attachment.addresses.iter().find(|a| a.address.is_ipv4()) else {
        return;
    };
    let ip = ip4.address.ip();
    // The node's cache is only asked when the MAC is the derived one.
    let may_be_stale = !attachment.mac_is_derived
        || match host.neigh_mac(bridge.index, ip).await {
            Ok(cached) => cached.is_some_and(|mac| mac != attachment.pod_mac),
            Err(_) => true,
        };
    if may_be_stale {
        settle_bridge_port(host, &attachment.host_name);
        if let Err(e) = pod.announce(pod_index, ip).await {
            eprintln!("flannel cni: gratuitous ARP failed (continuing): {e}");
        }
    }
}

/// Makes the kernel process the pending carrier event of the host end `name`, so its bridge
/// port's state matches its carrier ([`Kernel::settle_link`]). A failure only costs
/// timing, so it is logged and ADD goes on.
pub fn settle_bridge_port<K: Kernel>(host: &K, name: &str) {
    if let Err(e) = host.settle_link(name) {
        eprintln!("flannel cni: settle {name} (continuing): {e}");
    }
}

/// `lo`'s interface index, the same in every network namespace.
pub const LOOPBACK_INDEX: u32 = 1;
