//! # cleanup — `flanneld --cleanup`: remove what flanneld created on this node
//!
//! For `scripts/uninstall.sh`, for a node leaving the cluster, and for switching back to
//! flannel. Run with flanneld stopped; everything here is idempotent and each step carries on
//! when another failed (the errors are reported together at the end):
//!
//! * devices: `flannel.<VNI>` and `flannel-v6.<VNI>` (vxlan), `flannel0` (udp TUN) and
//!   `flannel-wg`/`flannel-wg-v6` (wireguard: kernel device or our persistent TUN) —
//!   `ip link del`;
//! * routes flanneld installed, IPv4 and IPv6, recognised by their protocol 150 —
//!   `ip [-6] route del ... proto 150` (the `--ip-blackhole-route` blackholes too);
//! * the nftables tables `ip flannel-rs` and `ip6 flannel-rs`;
//! * our jump and chain in the operator's iptables and ip6tables `filter FORWARD` (legacy
//!   and nft), leaving every other rule as it was;
//! * `--subnet-file`.
//!
//! The etcd lease is kept (the node keeps its subnet if it comes back), unless
//! `--release-lease-on-shutdown` is given too: then the lease of the subnet in subnet.env is
//! deleted if it still carries one of this node's addresses (never a reservation). The CNI
//! bridge and pods belong to the CNI plugin and stay.

use anyhow::{Context, Result};
use backends::kernel::netlink::{IpFamily, Netlink};
use backends::overlay::ROUTE_PROTOCOL;

use crate::config::Opts;

/// What [`run`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Device names.
    pub devices: Vec<String>,
    /// Routes, as `dst` (`blackhole dst` for blackholes, `nexthop id N` for nexthop objects).
    pub routes: Vec<String>,
    /// Whether an nftables table of ours existed.
    pub nft_table: bool,
    /// The iptables flavours our FORWARD jump was removed from (`ip6tables-nft`, ...).
    pub forward: Vec<String>,
    /// Whether the subnet file existed.
    pub subnet_file: bool,
    /// The lease deleted from etcd (with `--release-lease-on-shutdown`).
    pub released: Option<String>,
}

/// Deletes this node's lease: the subnet in subnet.env, if its key still carries one of
/// `local` addresses and is a lease (not a reservation).
async fn release_lease(opts: &Opts, local: &[std::net::IpAddr]) -> Result<Option<String>> {
    use crate::subnet::{EtcdLeaseStore, LeaseStore};
    let env = match ipam::subnet_env::SubnetEnv::load(&opts.subnet_file) {
        Ok(env) => env,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", opts.subnet_file.display())),
    };
    let v6 = env.ipv6_subnet_network();
    let subnet = match env.subnet_network() {
        Some(s) => s,
        None if v6.is_some() => ipam::lease::NO_IPV4_SUBNET,
        None => return Ok(None),
    };
    let store = EtcdLeaseStore::connect(opts.etcd.config()).await?;
    let Some(lease) = store.get(&(subnet, v6)).await? else {
        return Ok(None);
    };
    let ours = local.contains(&std::net::IpAddr::V4(lease.attrs.public_ip))
        || lease
            .attrs
            .public_ipv6
            .is_some_and(|a| local.contains(&std::net::IpAddr::V6(a)));
    if !lease.leased || !ours {
        tracing::warn!(key = %store.key_of(&lease.id()), public_ip = %lease.attrs.public_ip,
            leased = lease.leased, "not releasing: the key is a reservation or another node's");
        return Ok(None);
    }
    Ok(store
        .delete(&lease)
        .await?
        .then(|| store.key_of(&lease.id())))
}

/// Whether a device of this name and kind is one flanneld creates.
pub fn is_our_device(name: &str, kind: Option<&str>) -> bool {
    device_family(name, kind).is_some()
}

/// The address family a device of ours carries (`flannel.<VNI>` and udp's `flannel0` IPv4,
/// `flannel-v6.<VNI>` IPv6); `None` for any other device.
pub fn device_family(name: &str, kind: Option<&str>) -> Option<IpFamily> {
    use backends::overlay::vxlan::device_prefix;
    let vxlan_of = |family| {
        name.strip_prefix(device_prefix(family))
            .is_some_and(|vni| !vni.is_empty() && vni.bytes().all(|b| b.is_ascii_digit()))
    };
    match kind {
        Some("vxlan") => [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .find(|f| vxlan_of(*f)),
        Some("tun") if name == "flannel0" => Some(IpFamily::V4),
        Some("tun" | "wireguard") if name == flannel_wireguard::DEVICE_V4 => Some(IpFamily::V4),
        Some("tun" | "wireguard") if name == flannel_wireguard::DEVICE_V6 => Some(IpFamily::V6),
        _ => None,
    }
}

/// What flanneld left for `family` on an earlier run, when the network config no longer
/// enables it (dual stack turned IPv4-only, say): its proto-150 routes and blackholes, its
/// VXLAN device (`flannel.<VNI>` / `flannel-v6.<VNI>`; `flannel0` for IPv4), its nftables
/// table and its FORWARD accept jump. Otherwise they would keep routing and masquerading
/// that family until `flanneld --cleanup`. Returns what was removed, for the log; failures
/// are logged and skipped (the rest still goes).
pub async fn retire_family(nl: &Netlink, family: IpFamily) -> Vec<String> {
    let mut removed = Removed::default();
    let mut errors = Vec::new();
    remove_family_state(nl, family, &mut removed, &mut errors).await;
    for e in errors {
        tracing::warn!(?family, error = %e, "removing what an earlier run left");
    }
    // Routes come as `dst`, `blackhole dst` or `nexthop id N`.
    let routes = removed.routes.into_iter().map(|r| {
        if r.starts_with("blackhole ") || r.starts_with("nexthop ") {
            r
        } else {
            format!("route {r}")
        }
    });
    let devices = removed.devices.into_iter().map(|d| format!("device {d}"));
    let table = removed
        .nft_table
        .then(|| format!("nftables table {family:?} {}", backends::masq::NODE_TABLE));
    let forward = removed
        .forward
        .into_iter()
        .map(|f| format!("{f} FORWARD jump"));
    routes.chain(devices).chain(table).chain(forward).collect()
}

/// Removes everything of ours for `family`: proto-150 routes and blackholes (`ip [-6] route
/// del ... proto 150`), its devices, its nftables table and its FORWARD jump in every
/// iptables flavour. Each step carries on when another failed.
async fn remove_family_state(
    nl: &Netlink,
    family: IpFamily,
    removed: &mut Removed,
    errors: &mut Vec<String>,
) {
    match nl.routes(family).await {
        Ok(routes) => {
            for r in routes.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
                match nl.del_route(r).await {
                    Ok(()) => removed.routes.push(r.dst.to_string()),
                    Err(e) => errors.push(format!("route {}: {e}", r.dst)),
                }
            }
        }
        Err(e) => errors.push(format!("listing routes: {e}")),
    }
    // Nexthop objects of ours that no route used any more (a crash between writing the object
    // and its route); the routes' own went with them above. Kernels without nexthop objects
    // have none.
    if family == IpFamily::V4 && nl.nexthops_supported().await {
        match nl.nexthops().await {
            Ok(objects) => {
                for n in objects.iter().filter(|n| n.protocol == ROUTE_PROTOCOL) {
                    match nl.del_nexthop(n.id).await {
                        Ok(()) => removed.routes.push(format!("nexthop id {}", n.id)),
                        Err(e) => errors.push(format!("nexthop id {}: {e}", n.id)),
                    }
                }
            }
            Err(e) => errors.push(format!("listing nexthop objects: {e}")),
        }
    }
    match nl.blackhole_routes(family).await {
        Ok(routes) => {
            for (dst, _) in routes.iter().filter(|(_, p)| *p == ROUTE_PROTOCOL) {
                match nl.del_blackhole_route(*dst).await {
                    Ok(()) => removed.routes.push(format!("blackhole {dst}")),
                    Err(e) => errors.push(format!("blackhole route {dst}: {e}")),
                }
            }
        }
        Err(e) => errors.push(format!("listing blackhole routes: {e}")),
    }
    match nl.links().await {
        Ok(links) => {
            for l in links
                .iter()
                .filter(|l| device_family(&l.name, l.kind.as_deref()) == Some(family))
            {
                match nl.del_link_index(l.index).await {
                    Ok(_) => removed.devices.push(l.name.clone()),
                    Err(e) => errors.push(format!("device {}: {e}", l.name)),
                }
            }
        }
        Err(e) => errors.push(format!("listing devices: {e}")),
    }
    // nft and iptables are child processes: keep them off the async worker.
    let rules = tokio::task::spawn_blocking(move || {
        let mut errs = Vec::new();
        let had = matches!(backends::masq::list_family_table(family), Ok(Some(_)));
        if had && let Err(e) = backends::masq::NodeMasq::for_family(family).remove() {
            errs.push(format!(
                "nftables table {family:?} {}: {e}",
                backends::masq::NODE_TABLE
            ));
        }
        let forward = match backends::kernel::iptables::ForwardRules::remove_family(family) {
            Ok(flavors) => flavors
                .iter()
                .map(|f| f.binary(family).to_string())
                .collect(),
            Err(e) => {
                errs.push(format!("iptables FORWARD rules: {e}"));
                Vec::new()
            }
        };
        (had, forward, errs)
    })
    .await;
    match rules {
        Ok((had, forward, errs)) => {
            removed.nft_table |= had;
            removed.forward.extend(forward);
            errors.extend(errs);
        }
        Err(e) => errors.push(format!("firewall clean-up task: {e}")),
    }
}

/// Removes flanneld's node state (see the module docs).
pub async fn run(opts: &Opts) -> Result<Removed> {
    let mut removed = Removed::default();
    let mut errors: Vec<String> = Vec::new();
    let nl = Netlink::new().context("open netlink socket")?;
    if opts.release_lease_on_shutdown {
        let mut local = Vec::new();
        for l in nl.links().await.unwrap_or_default() {
            for a in nl.addresses(l.index).await.unwrap_or_default() {
                local.push(a.ip());
            }
        }
        match release_lease(opts, &local).await {
            Ok(r) => removed.released = r,
            Err(e) => errors.push(format!("releasing the lease: {e:#}")),
        }
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        remove_family_state(&nl, family, &mut removed, &mut errors).await;
    }
    match std::fs::remove_file(&opts.subnet_file) {
        Ok(()) => removed.subnet_file = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("{}: {e}", opts.subnet_file.display())),
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        anyhow::bail!(
            "cleanup incomplete ({} removed devices, {} routes): {}",
            removed.devices.len(),
            removed.routes.len(),
            errors.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_device_names_and_kinds() {
        assert!(is_our_device("flannel.1", Some("vxlan")));
        assert!(is_our_device("flannel.4096", Some("vxlan")));
        assert!(is_our_device("flannel-v6.1", Some("vxlan")));
        assert!(!is_our_device("flannel-v6.", Some("vxlan")));
        assert_eq!(
            device_family("flannel.1", Some("vxlan")),
            Some(IpFamily::V4)
        );
        assert_eq!(
            device_family("flannel-v6.1", Some("vxlan")),
            Some(IpFamily::V6)
        );
        assert_eq!(device_family("flannel0", Some("tun")), Some(IpFamily::V4));
        assert!(is_our_device("flannel0", Some("tun")));
        assert!(!is_our_device("flannel.1", Some("bridge")));
        assert!(!is_our_device("flannel.x", Some("vxlan")));
        assert!(!is_our_device("flannel.", Some("vxlan")));
        assert!(!is_our_device("cni0", Some("bridge")));
        assert!(!is_our_device("eth0", None));
    }
}
