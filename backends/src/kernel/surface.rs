//! The [`Kernel`] trait: every kernel operation the overlay and the CNI verbs make, in one
//! place, so that they can run against the real kernel ([`Netlink`]) or against the in-memory
//! [`super::recording::RecordingKernel`] in tests that need no root.
//!
//! A value of this trait is bound to one network namespace: the netlink calls act there, and
//! so do the `/proc/sys` and ethtool calls (for [`Netlink`], they act in the namespace of the
//! calling thread, which is the same one for every handle made with [`Netlink::new`]).
//! [`Kernel::enter`] gives a handle for another namespace.

use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::masq_table::MasqTable;
use super::netlink::{
    FdbEntry, IpFamily, KernelWrite, Link, Neighbour, Netlink, Result, Route, VethSpec, VxlanLink,
    VxlanOutcome, VxlanSpec,
};
use super::netns::NetNs;
use super::nft::PodMasq;

/// The kernel, as the overlay and the CNI verbs use it. Each method names the `ip` (or
/// `bridge`, `sysctl`) command it corresponds to on [`Netlink`], where it is documented.
#[allow(async_fn_in_trait)] // Used through generics only; Send-ness leaks from the impls.
pub trait Kernel: Sized {
    /// The nftables masquerade set of one CNI network, as this kernel keeps it.
    type Masq: MasqTable;

    /// The masquerade set of CNI network `network_name` (`ipMasq`).
    fn pod_masq(&self, network_name: &str) -> Self::Masq;

    // --- namespaces ---

    /// A handle for the namespace `ns`, and `knobs` (`/proc/sys` keys and values) written
    /// inside it during the same visit (each write's outcome is returned in order).
    fn enter(&self, ns: &NetNs, knobs: &[(String, String)]) -> Result<(Self, Vec<io::Result<()>>)>;

    // --- links ---

    /// `ip link show NAME`.
    async fn link(&self, name: &str) -> Result<Option<Link>>;
    /// `ip link show`.
    async fn links(&self) -> Result<Vec<Link>>;
    /// `ip -d link show NAME type vxlan`.
    async fn vxlan_link(&self, name: &str) -> Result<Option<VxlanLink>>;
    /// `ip link add NAME type vxlan ...`, adopting or repairing an existing device.
    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(VxlanLink, VxlanOutcome)>;
    /// `ip link add NAME type bridge` unless it exists; `ip link set NAME up`.
    async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link>;
    /// `ip link add HOST type veth peer name PEER netns NS ...`.
    async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link>;
    /// `ip link set IDX up addrgenmode none` + `bridge link set dev IDX hairpin on|off`.
    async fn setup_bridge_port(&self, index: u32, hairpin: bool) -> Result<()>;
    /// `ip link set IDX up`.
    async fn set_up(&self, index: u32) -> Result<()>;
    /// `ip link set IDX up` with `arp_notify` on.
    async fn set_up_with_arp_notify(&self, index: u32) -> Result<()>;
    /// `ip link set IDX promisc on|off`.
    async fn set_promisc(&self, index: u32, on: bool) -> Result<()>;
    /// `ip link set IDX address MAC`.
    async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()>;
    /// `ip link set IDX mtu MTU`.
    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()>;
    /// `ip link del NAME`; `false` if there was none.
    async fn del_link(&self, name: &str) -> Result<bool>;
    /// `ip link del` by index; `false` if there was none.
    async fn del_link_index(&self, index: u32) -> Result<bool>;
    /// `ip link del NAME`, returning once the link is unlisted and leaving the kernel's
    /// slower clean-up to a detached child; `false` if there was none.
    fn del_link_detached(&self, name: &str) -> io::Result<bool>;

    // --- addresses and routes ---

    /// `ip addr show dev IDX`.
    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>>;
    /// `ip addr add ADDR dev IDX`.
    async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()>;
    /// `ip addr del ADDR dev IDX`.
    async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()>;
    /// `ip -4|-6 route show table all` (unicast routes).
    async fn routes(&self, family: IpFamily) -> Result<Vec<Route>>;
    /// `ip route add ROUTE`.
    async fn add_route(&self, route: &Route) -> Result<()>;
    /// `ip route replace ROUTE`.
    async fn replace_route(&self, route: &Route) -> Result<()>;
    /// `ip route del ROUTE`.
    async fn del_route(&self, route: &Route) -> Result<()>;
    /// Whether routes may name nexthop objects ([`Route::nexthop`]; Linux 5.3+).
    async fn nexthops_supported(&self) -> bool;

    /// Several neighbour/FDB/route writes in order, sent together where the kernel allows it
    /// ([`Netlink::write_batch`]: one datagram); one result per write, and a failed write does
    /// not stop the others. The default does them one at a time.
    async fn write_batch(&self, writes: &[KernelWrite]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(writes.len());
        for w in writes {
            results.push(match w {
                KernelWrite::ReplaceNeigh { ifindex, ip, mac } => {
                    self.replace_neigh(*ifindex, *ip, *mac).await
                }
                KernelWrite::DelNeigh { ifindex, ip } => self.del_neigh(*ifindex, *ip).await,
                KernelWrite::ReplaceFdb { ifindex, mac, dst } => {
                    self.replace_fdb(*ifindex, *mac, *dst).await
                }
                KernelWrite::DelFdb { ifindex, mac, dst } => {
                    self.del_fdb(*ifindex, *mac, *dst).await
                }
                KernelWrite::ReplaceRoute(r) => self.replace_route(r).await,
                KernelWrite::DelRoute(r) => self.del_route(r).await,
            });
        }
        results
    }

    // --- neighbours and FDB ---

    /// `ip neigh show dev IDX`.
    async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>>;
    /// `ip neigh replace IP lladdr MAC dev IDX nud permanent`.
    async fn replace_neigh(&self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()>;
    /// `ip neigh get IP dev IDX` (the cached MAC, if any).
    async fn neigh_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>>;
    /// Gratuitous ARP for `ip` sent by the kernel from `ifindex`.
    async fn announce(&self, ifindex: u32, ip: IpAddr) -> Result<()>;
    /// `ip neigh del IP dev IDX`.
    async fn del_neigh(&self, ifindex: u32, ip: IpAddr) -> Result<()>;
    /// `bridge fdb show dev IDX`.
    async fn fdb_entries(&self, ifindex: u32) -> Result<Vec<FdbEntry>>;
    /// `bridge fdb replace MAC dev IDX dst IP self permanent`.
    async fn replace_fdb(&self, ifindex: u32, mac: [u8; 6], dst: IpAddr) -> Result<()>;
    /// `bridge fdb del MAC dev IDX [dst IP] self`.
    async fn del_fdb(&self, ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Result<()>;

    // --- /proc/sys and ethtool, in this handle's namespace ---

    /// `sysctl -w KEY=VALUE` (key as a `/proc/sys` path, `net/ipv4/ip_forward`).
    fn sysctl_write(&self, key: &str, value: &str) -> io::Result<()>;
    /// Writes `value` unless the knob already has it; `true` if it wrote.
    fn sysctl_ensure(&self, key: &str, value: &str) -> io::Result<bool>;
    /// Settles the pending carrier event of `name` (ethtool `GLINK`).
    fn settle_link(&self, name: &str) -> io::Result<()>;
}

impl Kernel for Netlink {
    type Masq = PodMasq;

    fn pod_masq(&self, network_name: &str) -> PodMasq {
        PodMasq::new(network_name)
    }

    fn enter(&self, ns: &NetNs, knobs: &[(String, String)]) -> Result<(Self, Vec<io::Result<()>>)> {
        let home = self
            .netns()
            .map_err(|e| super::netlink::NetlinkError::Other(format!("open own netns: {e}")))?;
        Netlink::new_in_here_with(ns, &home, || {
            knobs
                .iter()
                .map(|(k, v)| super::sysctl::write(k, v))
                .collect()
        })
    }
    async fn link(&self, name: &str) -> Result<Option<Link>> {
        Netlink::link(self, name).await
    }
    async fn links(&self) -> Result<Vec<Link>> {
        Netlink::links(self).await
    }
    async fn vxlan_link(&self, name: &str) -> Result<Option<VxlanLink>> {
        Netlink::vxlan_link(self, name).await
    }
    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(VxlanLink, VxlanOutcome)> {
        Netlink::ensure_vxlan(self, spec).await
    }
    async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        Netlink::ensure_bridge(self, name, mtu).await
    }
    async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link> {
        Netlink::create_veth(self, spec).await
    }
    async fn setup_bridge_port(&self, index: u32, hairpin: bool) -> Result<()> {
        Netlink::setup_bridge_port(self, index, hairpin).await
    }
    async fn set_up(&self, index: u32) -> Result<()> {
        Netlink::set_up(self, index).await
    }
    async fn set_up_with_arp_notify(&self, index: u32) -> Result<()> {
        Netlink::set_up_with_arp_notify(self, index).await
    }
    async fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        Netlink::set_promisc(self, index, on).await
    }
    async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        Netlink::set_mac(self, index, mac).await
    }
    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        Netlink::set_mtu(self, index, mtu).await
    }
    async fn del_link(&self, name: &str) -> Result<bool> {
        Netlink::del_link(self, name).await
    }
    async fn del_link_index(&self, index: u32) -> Result<bool> {
        Netlink::del_link_index(self, index).await
    }
    fn del_link_detached(&self, name: &str) -> io::Result<bool> {
        super::netlink::del_link_detached(name)
    }
    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        Netlink::addresses(self, index).await
    }
    async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        Netlink::add_address(self, index, addr).await
    }
    async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        Netlink::del_address(self, index, addr).await
    }
    async fn routes(&self, family: IpFamily) -> Result<Vec<Route>> {
        Netlink::routes(self, family).await
    }
    async fn add_route(&self, route: &Route) -> Result<()> {
        Netlink::add_route(self, route).await
    }
    async fn replace_route(&self, route: &Route) -> Result<()> {
        Netlink::replace_route(self, route).await
    }
    async fn del_route(&self, route: &Route) -> Result<()> {
        Netlink::del_route(self, route).await
    }
    async fn nexthops_supported(&self) -> bool {
        Netlink::nexthops_supported(self).await
    }
    async fn write_batch(&self, writes: &[KernelWrite]) -> Vec<Result<()>> {
        Netlink::write_batch(self, writes).await
    }
    async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>> {
        Netlink::neighbours(self, ifindex).await
    }
    async fn replace_neigh(&self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        Netlink::replace_neigh(self, ifindex, ip, mac).await
    }
    async fn neigh_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>> {
        Netlink::neigh_mac(self, ifindex, ip).await
    }
    async fn announce(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        Netlink::announce(self, ifindex, ip).await
    }
    async fn del_neigh(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        Netlink::del_neigh(self, ifindex, ip).await
    }
    async fn fdb_entries(&self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        Netlink::fdb_entries(self, ifindex).await
    }
    async fn replace_fdb(&self, ifindex: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        Netlink::replace_fdb(self, ifindex, mac, dst).await
    }
    async fn del_fdb(&self, ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Result<()> {
        Netlink::del_fdb(self, ifindex, mac, dst).await
    }
    fn sysctl_write(&self, key: &str, value: &str) -> io::Result<()> {
        super::sysctl::write(key, value)
    }
    fn sysctl_ensure(&self, key: &str, value: &str) -> io::Result<bool> {
        super::sysctl::ensure(key, value)
    }
    fn settle_link(&self, name: &str) -> io::Result<()> {
        super::ethtool::settle_link(name).map(|_| ())
    }
}
