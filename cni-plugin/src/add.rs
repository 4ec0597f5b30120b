//! ADD: attach a pod to the node bridge.
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
//!    addresses, IPv6 DAD off (as the reference sets it; `enabledad` keeps it), link up,
//!    routes;
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

use std::net::IpAddr;

use backends::kernel::netlink::{Link, Netlink, NetlinkError, Route, VethSpec};
use backends::kernel::netns::NetNs;
use backends::kernel::nft::PodMasq;
use backends::kernel::sysctl;
use ipam::host_local::HostLocal;
use ipam::subnet_env::SubnetEnv;
use ipnetwork::IpNetwork;

use crate::conf::{IpamPlan, PodNetwork};
use ipam::fault;

use crate::error::{CniError, CniResult, TRY_AGAIN_LATER, UNKNOWN_CONTAINER};
use crate::names::host_veth_name;
use crate::result::{CniOutput, Interface, IpConfig, RouteEntry, format_mac};
use crate::skel::Invocation;
use crate::{ipam_exec, netlink_err};

/// One address handed to the pod.
#[derive(Debug, Clone)]
pub struct PodAddress {
    /// Address with prefix.
    pub address: IpNetwork,
    /// Gateway for its family.
    pub gateway: Option<IpAddr>,
}

/// What ADD has done so far, undone in reverse on failure.
#[derive(Default)]
struct Rollback {
    ipam_reserved: bool,
    /// Host-local addresses this invocation claimed (released one by one on rollback).
    host_local_ips: Vec<IpAddr>,
    host_veth: Option<String>,
    masq: Vec<IpAddr>,
}

/// The pod interface's IPv6 duplicate address detection knobs and the values ADD gives them —
/// what the reference bridge plugin writes: `accept_dad=0` by default, or with `enabledad`
/// `enhanced_dad=1` and `accept_dad=1`. The reference turns DAD off because with
/// `hairpinMode` the bridge reflects the pod's own probe back to it, which a kernel without
/// enhanced DAD's nonce takes for a duplicate. Matching it keeps what the pod sees the same
/// after a switch of plugins; it also makes the link-local address usable at once instead of
/// after the ~1 s probe, and spares every bridge port the probe's flood. IPv6 pod addresses
/// are added `nodad` either way.
fn dad_settings(enable_dad: bool) -> &'static [(&'static str, &'static str)] {
    if enable_dad {
        &[("enhanced_dad", "1"), ("accept_dad", "1")]
    } else {
        &[("accept_dad", "0")]
    }
}

/// Sets the knobs of [`dad_settings`] on `ifname`; call inside the pod namespace, before the
/// interface goes up (its link-local address is born at `up`).
fn set_pod_dad(ifname: &str, enable_dad: bool) {
    for (knob, value) in dad_settings(enable_dad) {
        tolerate_knob_failure(sysctl::write(
            &format!("net/ipv6/conf/{ifname}/{knob}"),
            value,
        ));
    }
}

/// The outcome of one of ADD's IPv6 sysctls (pod DAD, bridge `accept_ra`). As in the
/// reference, a failure is logged and ADD goes on; a knob that does not exist (IPv6 disabled
/// at boot) is no failure at all.
fn tolerate_knob_failure<T>(result: std::io::Result<T>) {
    match result {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("flannel cni: {e} (continuing)"),
    }
}

/// Runs ADD and returns the result (printed by the caller in the requested version).
pub async fn add(inv: &Invocation) -> CniResult<CniOutput> {
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
    match attach(inv, &plan, &pod_ns, &mut rollback).await {
        Ok(out) => Ok(out),
        Err(e) => {
            undo(inv, &plan, rollback).await;
            Err(e)
        }
    }
}

async fn attach(
    inv: &Invocation,
    plan: &PodNetwork,
    pod_ns: &NetNs,
    rb: &mut Rollback,
) -> CniResult<CniOutput> {
    // 2. not attached yet, then addresses
    let host = Netlink::new().map_err(netlink_err("open netlink socket"))?;
    let host_name = host_veth_name(&inv.container_id, &inv.ifname);
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

    // 3. bridge
    let bridge = ensure_bridge(&host, plan, &addresses).await?;
    fault::point("add:bridge");

    // 4. veth pair, container end created directly inside the pod namespace, with a MAC we
    //    choose (so nothing has to be read back from the pod side)
    let derived_mac = pod_mac_for(&addresses);
    let pod_mac = plan
        .mac
        .unwrap_or_else(|| derived_mac.unwrap_or_else(random_mac));
    let spec = VethSpec {
        host_name: &host_name,
        peer_name: &inv.ifname,
        mtu: plan.mtu,
        master: Some(bridge.index),
        host_up: false,
        peer_ns: pod_ns,
        peer_mac: Some(pod_mac),
    };
    let host_veth = match host.create_veth(&spec).await {
        Ok(link) => link,
        Err(NetlinkError::Exists(_)) => {
            return Err(CniError::internal(format!(
                "cannot create veth {host_name}/{}: an interface with one of these names already exists \
                 (is container {} already attached as {}?)",
                inv.ifname, inv.container_id, inv.ifname
            )));
        }
        Err(e) => return Err(netlink_err("create veth pair")(e)),
    };
    rb.host_veth = Some(host_name.clone());
    fault::point("add:veth");
    // The host end is born down, so its bridge port starts disabled and is enabled exactly
    // once, when the pod end brings carrier (each enable or disable walks every port and FDB
    // entry of the bridge). Settle the creation's carrier event first; then bring it up with
    // `addrgenmode none` — the port needs no IPv6 address and without one sends no DAD, RS or
    // MLD — and hairpin, in one request.
    settle_bridge_port(&host_name);
    host.setup_bridge_port(host_veth.index, plan.hairpin)
        .await
        .map_err(netlink_err(
            "set up the bridge port (up, addrgenmode none, hairpin)",
        ))?;
    fault::point("add:port-up");

    // 5. the pod side, through a socket bound to the pod namespace
    // The plugin is a short-lived process on a current-thread runtime: visiting the pod
    // namespace on this very thread (and coming straight back) is safe and spares a thread.
    let home = host
        .netns()
        .map_err(|e| CniError::internal(format!("open own netns: {e}")))?;
    // The same visit sets IPv6 DAD on the pod interface as the reference does (`/proc/sys/net`
    // is the visiting thread's namespace), before the link goes up below.
    let (pod, ()) =
        Netlink::new_in_here_with(pod_ns, &home, || set_pod_dad(&inv.ifname, plan.enable_dad))
            .map_err(netlink_err("open netlink socket in the pod namespace"))?;
    // The echo of the host end names its peer's index in the pod namespace (IFLA_LINK).
    let pod_index = host_veth.link.ok_or_else(|| {
        CniError::internal(format!("kernel did not report the peer of {host_name}"))
    })?;
    // `ip link set lo up`: lo is always index 1 in a namespace; up on up is a no-op.
    pod.set_up(LOOPBACK_INDEX)
        .await
        .map_err(netlink_err("set lo up"))?;
    for a in &addresses {
        pod.add_address(pod_index, a.address)
            .await
            .map_err(netlink_err("add the pod address"))?;
    }
    // Up, with `arp_notify` (the kernel then announces any later MAC change by itself).
    pod.set_up_with_arp_notify(pod_index)
        .await
        .map_err(netlink_err("set the pod interface up"))?;
    fault::point("add:addresses");

    let mut routes = plan.routes.clone();
    routes.extend(ipam_routes);
    if plan.is_default_gateway {
        for a in &addresses {
            let default: IpNetwork = if a.address.is_ipv4() {
                "0.0.0.0/0".parse().expect("literal")
            } else {
                "::/0".parse().expect("literal")
            };
            if a.gateway.is_some() && !routes.iter().any(|r| r.dst == default) {
                routes.push(RouteEntry::new(default, a.gateway));
            }
        }
    }
    for r in &routes {
        let gw = r.gw.or_else(|| {
            addresses
                .iter()
                .find(|a| a.address.is_ipv4() == r.dst.is_ipv4())
                .and_then(|a| a.gateway)
        });
        let route = Route {
            dst: r.dst,
            gateway: gw,
            oif: Some(pod_index),
            onlink: false,
            protocol: 3,
            table: r.table.unwrap_or(254),
            scope: r.scope.unwrap_or(0),
        };
        match pod.add_route(&route).await {
            Ok(()) | Err(NetlinkError::Exists(_)) => {}
            Err(e) => return Err(netlink_err(&format!("add route {} in the pod", r.dst))(e)),
        }
    }
    fault::point("add:routes");

    // 6. announce the pod: gratuitous ARPs sent by the pod's kernel (Netlink::announce), the
    //    first right now, two repeats a second apart. Each one floods every bridge port (at
    //    100 pods ~0.6 ms of this ADD), and with the IP-derived MAC a cached entry for this IP
    //    is normally already right, so announce only when one may be wrong: the MAC is not the
    //    derived one (requested by the runtime), or the node itself holds another MAC for the
    //    address (a previous owner with a different MAC, e.g. from before a switch from the
    //    reference plugins). The bridge port must be forwarding for the first one to get
    //    anywhere: settle its carrier event (linkwatch) first.
    if let Some(ip4) = addresses.iter().find(|a| a.address.is_ipv4()) {
        let ip = ip4.address.ip();
        // The node's cache is only asked when the MAC is the derived one.
        let may_be_stale = derived_mac != Some(pod_mac)
            || match host.neigh_mac(bridge.index, ip).await {
                Ok(cached) => cached.is_some_and(|mac| mac != pod_mac),
                Err(_) => true,
            };
        if may_be_stale {
            settle_bridge_port(&host_name);
            if let Err(e) = pod.announce(pod_index, ip).await {
                eprintln!("flannel cni: gratuitous ARP failed (continuing): {e}");
            }
        }
    }

    // 7. masquerade
    if plan.ip_masq {
        let masq = PodMasq::new(&plan.name);
        for a in &addresses {
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
    Ok(CniOutput {
        interfaces: vec![
            iface(&bridge, None),
            iface(&host_veth, None),
            Interface {
                name: inv.ifname.clone(),
                mac: Some(format_mac(&pod_mac)),
                mtu: Some(host_veth.mtu),
                sandbox: Some(inv.netns.clone().unwrap_or_default().display().to_string()),
                ..Default::default()
            },
        ],
        ips: addresses
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: Some(2),
            })
            .collect(),
        routes,
        dns: if plan.dns == Default::default() {
            ipam_dns
        } else {
            plan.dns.clone()
        },
    })
}

fn iface(link: &Link, sandbox: Option<String>) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.as_ref().map(format_mac),
        mtu: Some(link.mtu),
        sandbox,
        ..Default::default()
    }
}

/// Reserves the pod's addresses: in-process host-local, or the delegated plugin.
fn reserve(
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

/// `sysctl -w net.ipv6.conf.<bridge>.accept_ra=0`, as the reference bridge plugin does on
/// every ADD. The bridge is the node's own interface on the pod link, and every pod's
/// multicast reaches it: with the kernel default (`accept_ra=1`, IPv6 forwarding off) one
/// Router Advertisement from any pod gives the node an IPv6 default route through that pod.
/// Checked on every ADD and written only if it differs, so a bridge made by an older version
/// or by hand is fixed too. The check reads the value from the bridge's link dump, which ADD
/// has anyway: a `/proc/sys` path lookup gets slower with every pod namespace on the node
/// (each one leaves its own `net`, `ipv6`, `conf` entries in the same dentry hash chains;
/// measured 3 us per open in a lone namespace, 30 us with 200 others).
fn refuse_router_advertisements(bridge: &Link) {
    let key = format!("net/ipv6/conf/{}/accept_ra", bridge.name);
    match bridge.ipv6_accept_ra {
        Some(0) => {}
        Some(_) => tolerate_knob_failure(sysctl::write(&key, "0")),
        // The dump had no IPv6 state: ask /proc/sys (a missing knob is fine).
        None => tolerate_knob_failure(sysctl::ensure(&key, "0")),
    }
}

/// Another bridge of the node that already carries `gw`'s address: a node migrating from
/// flannel has `cni0` holding the gateway, and a second bridge with the same address would
/// split the subnet in two. Only asked when the gateway is about to be added (the first pod).
async fn other_bridge_holding(
    host: &Netlink,
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
async fn ensure_bridge(
    host: &Netlink,
    plan: &PodNetwork,
    addresses: &[PodAddress],
) -> CniResult<Link> {
    let bridge = host
        .ensure_bridge(&plan.bridge, plan.mtu)
        .await
        .map_err(netlink_err(&format!("ensure bridge {}", plan.bridge)))?;
    refuse_router_advertisements(&bridge);
    if plan.promisc && !bridge.promisc {
        host.set_promisc(bridge.index, true)
            .await
            .map_err(netlink_err("set bridge promiscuous"))?;
    }
    if !plan.is_gateway {
        return Ok(bridge);
    }
    let gateways: Vec<IpNetwork> = addresses
        .iter()
        .filter_map(|a| {
            a.gateway
                .and_then(|g| IpNetwork::new(g, a.address.prefix()).ok())
        })
        .collect();
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
                .all(|p| matches!(p.ip(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80));
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
        let key = if gw.is_ipv4() {
            "net/ipv4/ip_forward"
        } else {
            "net/ipv6/conf/all/forwarding"
        };
        sysctl::ensure(key, "1").map_err(|e| CniError::internal(format!("enable {key}: {e}")))?;
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
        for a in addresses {
            let key = if a.address.is_ipv4() {
                "net/ipv4/ip_forward"
            } else {
                "net/ipv6/conf/all/forwarding"
            };
            sysctl::ensure(key, "1")
                .map_err(|e| CniError::internal(format!("enable {key}: {e}")))?;
        }
    }
    Ok(bridge)
}

/// Makes the kernel process the pending carrier event of the host end `name`, so its bridge
/// port's state matches its carrier ([`backends::kernel::ethtool::settle_link`]). A failure only costs
/// timing, so it is logged and ADD goes on.
fn settle_bridge_port(name: &str) {
    if let Err(e) = backends::kernel::ethtool::settle_link(name) {
        eprintln!("flannel cni: settle {name} (continuing): {e}");
    }
}

/// `lo`'s interface index, the same in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// A random locally administered unicast MAC (what the kernel would pick for the veth end),
/// chosen here so the ADD result needs no read-back from the pod namespace.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom(2) writes at most `mac.len()` bytes into `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // Fallback: time and pid, mixed (uniqueness on one bridge is all that matters).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 20);
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// The pod MAC for its addresses: `0a:58:` followed by the IPv4 address (the scheme of
/// OVN-Kubernetes). A pod that comes back with the same IP comes back with the same MAC, so
/// every neighbour entry cached for it — on the node and in the other pods — stays right and
/// it is reachable at once even where an announcement got lost. `None` for IPv6-only pods.
pub(crate) fn pod_mac_for(addresses: &[PodAddress]) -> Option<[u8; 6]> {
    addresses.iter().find_map(|a| match a.address.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            Some([0x0a, 0x58, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(_) => None,
    })
}

async fn undo(inv: &Invocation, plan: &PodNetwork, rb: Rollback) {
    if let Some(name) = &rb.host_veth {
        match Netlink::new() {
            Ok(h) => {
                if let Err(e) = h.del_link(name).await {
                    eprintln!("flannel cni: rollback: delete {name}: {e}");
                }
            }
            Err(e) => eprintln!("flannel cni: rollback: netlink: {e}"),
        }
    }
    if !rb.masq.is_empty() {
        let masq = PodMasq::new(&plan.name);
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
