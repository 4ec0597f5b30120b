//! The pure half of ADD: from the network plan and the reserved addresses to everything the
//! kernel steps will do and what the result will say — no kernel, no files.

use std::net::IpAddr;

use backends::kernel::netlink::{Link, Route};
use ipnetwork::IpNetwork;

use crate::conf::PodNetwork;
use crate::names::host_veth_name;
use crate::result::{CniOutput, Dns, Interface, IpConfig, RouteEntry, format_mac};
use crate::skel::Invocation;

/// One address handed to the pod.
#[derive(Debug, Clone)]
pub struct PodAddress {
    /// Address with prefix.
    pub address: IpNetwork,
    /// Gateway for its family.
    pub gateway: Option<IpAddr>,
}

/// Everything ADD will set up for one attachment, decided before the first kernel call.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Host end of the veth, `veth<hash of (container id, ifname)>`.
    pub host_name: String,
    /// The pod interface's MAC: requested, else derived from the IPv4 address, else random.
    pub pod_mac: [u8; 6],
    /// Whether `pod_mac` is the one derived from the IPv4 address (see [`pod_mac_for`]).
    pub mac_is_derived: bool,
    /// The pod's addresses with their gateways.
    pub addresses: Vec<PodAddress>,
    /// The routes as the result reports them (configured, IPAM's, default per family).
    pub routes: Vec<RouteEntry>,
    /// The same routes as the pod's kernel gets them (gateway filled in per family).
    pub kernel_routes: Vec<Route>,
    /// `/proc/sys` knobs of the pod interface (IPv6 on/off, DAD), written inside the pod
    /// namespace.
    pub pod_knobs: Vec<(String, String)>,
    /// DNS for the result.
    pub dns: Dns,
}

impl Attachment {
    /// Decides the attachment of `inv` for `plan` with the reserved `addresses`, plus the
    /// routes and DNS a delegated IPAM plugin returned.
    pub fn plan(
        inv: &Invocation,
        plan: &PodNetwork,
        addresses: Vec<PodAddress>,
        ipam_routes: Vec<RouteEntry>,
        ipam_dns: Dns,
    ) -> Attachment {
        let derived = pod_mac_for(&addresses);
        let pod_mac = plan
            .mac
            .unwrap_or_else(|| derived.unwrap_or_else(random_mac));
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
        let kernel_routes = routes
            .iter()
            .map(|r| {
                let gateway = r.gw.or_else(|| {
                    addresses
                        .iter()
                        .find(|a| a.address.is_ipv4() == r.dst.is_ipv4())
                        .and_then(|a| a.gateway)
                });
                Route {
                    dst: r.dst,
                    gateway,
                    oif: None,
                    onlink: false,
                    protocol: backends::kernel::netlink::RTPROT_BOOT,
                    table: r.table.unwrap_or(backends::kernel::netlink::RT_TABLE_MAIN),
                    scope: r.scope.unwrap_or(0),
                    nexthop_id: None,
                }
            })
            .collect();
        let has_ipv6_address = addresses.iter().any(|a| a.address.is_ipv6());
        let pod_knobs =
            pod_ipv6_settings(has_ipv6_address, plan.pod_ipv6_link_local, plan.enable_dad)
                .iter()
                .map(|(knob, value)| {
                    (
                        format!("net/ipv6/conf/{}/{knob}", inv.ifname),
                        value.to_string(),
                    )
                })
                .collect();
        Attachment {
            host_name: host_veth_name(&inv.container_id, &inv.ifname),
            pod_mac,
            mac_is_derived: derived == Some(pod_mac),
            addresses,
            routes,
            kernel_routes,
            pod_knobs,
            dns: if plan.dns == Dns::default() {
                ipam_dns
            } else {
                plan.dns.clone()
            },
        }
    }

    /// The ADD result: bridge, host end, pod end (index 2, which every IP names).
    pub fn result(&self, inv: &Invocation, bridge: &Link, host_veth: &Link) -> CniOutput {
        CniOutput {
            interfaces: vec![
                iface(bridge, None),
                iface(host_veth, None),
                Interface {
                    name: inv.ifname.clone(),
                    mac: Some(format_mac(&self.pod_mac)),
                    mtu: Some(host_veth.mtu),
                    sandbox: Some(inv.netns.clone().unwrap_or_default().display().to_string()),
                    ..Default::default()
                },
            ],
            ips: self
                .addresses
                .iter()
                .map(|a| IpConfig {
                    address: a.address,
                    gateway: a.gateway,
                    interface: Some(2),
                })
                .collect(),
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }

    /// The gateway addresses the bridge must carry (`<gateway>/<pod prefix>` per family).
    pub fn bridge_gateways(&self) -> Vec<IpNetwork> {
        self.addresses
            .iter()
            .filter_map(|a| {
                a.gateway
                    .and_then(|g| IpNetwork::new(g, a.address.prefix()).ok())
            })
            .collect()
    }
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

/// The pod interface's IPv6 knobs and the values ADD gives them, written before the link
/// goes up.
///
/// A pod given no IPv6 address gets `disable_ipv6=1` unless `keep_link_local`
/// (`podIPv6LinkLocal`). With the kernel default such a pod still has a link-local address
/// and the autoconfiguration that comes with it: an MLD report for its solicited-node group
/// (several, with repeats), router solicitations at once and 4 and 8 s later, and it accepts
/// router advertisements — so on an IPv4-only network one pod can send an RA and become
/// the IPv6 default router of every other pod on the bridge (the between-pods form of
/// CVE-2020-10749; `a_pod_cannot_become_the_nodes_ipv6_router` shows it). Docker turns IPv6
/// off on interfaces given only an IPv4 address since 26.0.2 (CVE-2024-32473); flannel
/// with the reference bridge plugin leaves it on. It also costs every ADD in proportion to
/// the pods already on the node: the bridge has no multicast querier, so it floods each of
/// those packets to every port (`scripts/bench-cni-growth.sh` measures the difference).
///
/// A pod with an IPv6 address keeps IPv6 with `accept_ra=0` — its addresses and routes come
/// from the CNI result, and on the bridge only another pod could be sending an RA (the
/// reference leaves the kernel default, so a dual-stack pod takes a rogue pod's RA) — and
/// the reference bridge plugin's DAD knobs: `accept_dad=0` by default, or with `enabledad`
/// `enhanced_dad=1` and `accept_dad=1`. The reference turns DAD off because with
/// `hairpinMode` the bridge reflects the pod's own probe back to it, which a kernel without
/// enhanced DAD's nonce takes for a duplicate; it also makes the link-local address usable at
/// once. IPv6 pod addresses are added `nodad` either way. A pod without one that keeps IPv6
/// (`podIPv6LinkLocal`) gets the DAD knobs only: it asked for flannel's behaviour.
pub fn pod_ipv6_settings(
    has_ipv6_address: bool,
    keep_link_local: bool,
    enable_dad: bool,
) -> &'static [(&'static str, &'static str)] {
    match (has_ipv6_address, keep_link_local, enable_dad) {
        (false, false, _) => &[("disable_ipv6", "1")],
        (true, _, false) => &[("accept_ra", "0"), ("accept_dad", "0")],
        (true, _, true) => &[
            ("accept_ra", "0"),
            ("enhanced_dad", "1"),
            ("accept_dad", "1"),
        ],
        (false, true, false) => &[("accept_dad", "0")],
        (false, true, true) => &[("enhanced_dad", "1"), ("accept_dad", "1")],
    }
}

/// A random locally administered unicast MAC (what the kernel would pick for the veth end),
/// chosen here so the ADD result needs no read-back from the pod namespace.
pub fn random_mac() -> [u8; 6] {
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
pub fn pod_mac_for(addresses: &[PodAddress]) -> Option<[u8; 6]> {
    addresses.iter().find_map(|a| match a.address.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            Some([0x0a, 0x58, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(_) => None,
    })
}

/// The forwarding knob of an address's family.
pub fn forwarding_knob(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "net/ipv4/ip_forward"
    } else {
        "net/ipv6/conf/all/forwarding"
    }
}
