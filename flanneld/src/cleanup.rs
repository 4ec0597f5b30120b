//! # cleanup — `flanneld --cleanup`: remove what flanneld created on this node
//!
//! For `scripts/uninstall.sh`, for a node leaving the cluster, and for switching back to
//! flannel. Run with flanneld stopped; everything here is idempotent and each step carries on
//! when another failed (the errors are reported together at the end):
//!
//! * devices: `flannel.<VNI>` and `flannel-v6.<VNI>` (vxlan) and `flannel0` (udp TUN) —
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
    /// Routes, as `dst`.
    pub routes: Vec<String>,
    /// Whether the nftables table existed.
    pub nft_table: bool,
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
    match kind {
        Some("vxlan") => name
            .strip_prefix("flannel.")
            .or_else(|| name.strip_prefix("flannel-v6."))
            .is_some_and(|vni| !vni.is_empty() && vni.bytes().all(|b| b.is_ascii_digit())),
        Some("tun") => name == "flannel0",
        _ => false,
    }
}

/// What flanneld left for `family` on an earlier run, when the network config no longer
/// enables it (dual stack turned IPv4-only, say): its proto-150 routes and blackholes, its
/// VXLAN device (`flannel.<VNI>` / `flannel-v6.<VNI>`; `flannel0` for IPv4), its nftables
/// table and its FORWARD accept jump. Otherwise they would keep routing and masquerading
/// that family until `flanneld --cleanup`. Returns what was removed, for the log; failures
/// are logged and skipped (the rest still goes).
pub async fn retire_family(nl: &Netlink, family: IpFamily) -> Vec<String> {
    let mut removed = Vec::new();
    match nl.routes(family).await {
        Ok(routes) => {
            for r in routes.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
                match nl.del_route(r).await {
                    Ok(()) => removed.push(format!("route {}", r.dst)),
                    Err(e) => tracing::warn!(dst = %r.dst, error = %e, "removing a stale route"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing routes"),
    }
    if let Ok(holes) = nl.blackhole_routes(family).await {
        for (dst, _) in holes.iter().filter(|(_, p)| *p == ROUTE_PROTOCOL) {
            if nl.del_blackhole_route(*dst).await.is_ok() {
                removed.push(format!("blackhole {dst}"));
            }
        }
    }
    let prefix = backends::overlay::vxlan::device_prefix(family);
    if let Ok(links) = nl.links().await {
        for l in links.iter().filter(|l| {
            let vxlan = l.kind.as_deref() == Some("vxlan")
                && l.name
                    .strip_prefix(prefix)
                    .is_some_and(|vni| !vni.is_empty() && vni.bytes().all(|b| b.is_ascii_digit()));
            let tun = family == IpFamily::V4
                && is_our_device(&l.name, l.kind.as_deref())
                && l.kind.as_deref() == Some("tun");
            vxlan || tun
        }) {
            match nl.del_link_index(l.index).await {
                Ok(_) => removed.push(format!("device {}", l.name)),
                Err(e) => tracing::warn!(device = %l.name, error = %e, "removing a stale device"),
            }
        }
    }
    let blocking = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        if matches!(backends::masq::list_family_table(family), Ok(Some(_)))
            && backends::masq::NodeMasq::for_family(family)
                .remove()
                .is_ok()
        {
            out.push(format!(
                "nftables table {family:?} {}",
                backends::masq::NODE_TABLE
            ));
        }
        match backends::kernel::iptables::ForwardRules::remove_family(family) {
            Ok(flavors) => out.extend(
                flavors
                    .iter()
                    .map(|f| format!("{} FORWARD jump", f.binary(family))),
            ),
            Err(e) => tracing::warn!(error = %e, "removing a stale FORWARD jump"),
        }
        out
    })
    .await;
    removed.extend(blocking.unwrap_or_default());
    removed
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
    }
    match nl.links().await {
        Ok(links) => {
            for l in links
                .iter()
                .filter(|l| is_our_device(&l.name, l.kind.as_deref()))
            {
                match nl.del_link_index(l.index).await {
                    Ok(_) => removed.devices.push(l.name.clone()),
                    Err(e) => errors.push(format!("device {}: {e}", l.name)),
                }
            }
        }
        Err(e) => errors.push(format!("listing devices: {e}")),
    }
    let blocking = tokio::task::spawn_blocking(|| {
        let mut errs = Vec::new();
        let mut had_table = false;
        for family in [IpFamily::V4, IpFamily::V6] {
            let had = matches!(backends::masq::list_family_table(family), Ok(Some(_)));
            had_table |= had;
            if had && let Err(e) = backends::masq::NodeMasq::for_family(family).remove() {
                errs.push(format!(
                    "nftables table {family:?} {}: {e}",
                    backends::masq::NODE_TABLE
                ));
            }
        }
        if let Err(e) = backends::kernel::iptables::ForwardRules::remove() {
            errs.push(format!("iptables FORWARD rules: {e}"));
        }
        (had_table, errs)
    })
    .await
    .context("cleanup task panicked")?;
    removed.nft_table = blocking.0;
    errors.extend(blocking.1);
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
        assert!(is_our_device("flannel0", Some("tun")));
        assert!(!is_our_device("flannel.1", Some("bridge")));
        assert!(!is_our_device("flannel.x", Some("vxlan")));
        assert!(!is_our_device("flannel.", Some("vxlan")));
        assert!(!is_our_device("cni0", Some("bridge")));
        assert!(!is_our_device("eth0", None));
    }
}
