//! [`LazyNetlink`]: a [`Netlink`] handle opened on first use.
//!
//! A CNI DEL usually needs no netlink socket at all: the host end of the veth is deleted by a
//! detached child ([`Kernel::del_link_detached`]) and masquerade entries go through `nft`.
//! Opening the socket (and its connection task) eagerly would cost every DEL that much for
//! nothing, so the plugin hands its verbs this instead of a [`Netlink`].

use std::cell::OnceCell;
use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::Kernel;
use super::netlink::{
    FdbEntry, IpFamily, Link, Neighbour, Netlink, Result, Route, VethSpec, VxlanLink, VxlanOutcome,
    VxlanSpec,
};
use super::netns::NetNs;
use super::nft::PodMasq;

/// A [`Netlink`] in the calling thread's namespace, opened by the first call that needs it.
#[derive(Debug, Default)]
pub struct LazyNetlink {
    socket: OnceCell<Netlink>,
}

impl LazyNetlink {
    /// Nothing is opened yet.
    pub fn new() -> LazyNetlink {
        LazyNetlink::default()
    }

    /// The handle, opened now if it was not ([`Netlink::new`]).
    pub fn get(&self) -> Result<&Netlink> {
        if let Some(nl) = self.socket.get() {
            return Ok(nl);
        }
        let nl = Netlink::new()?;
        Ok(self.socket.get_or_init(|| nl))
    }
}

/// Delegates async [`Kernel`] methods to the opened handle.
macro_rules! delegate {
    ($( fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        $(
            async fn $name(&self $(, $arg: $ty)*) -> $ret {
                Kernel::$name(self.get()?, $($arg),*).await
            }
        )*
    };
}

impl Kernel for LazyNetlink {
    type Masq = PodMasq;

    fn pod_masq(&self, network_name: &str) -> PodMasq {
        PodMasq::new(network_name)
    }

    /// The pod side's handle is opened at once (it is always used).
    fn enter(&self, ns: &NetNs, knobs: &[(String, String)]) -> Result<(Self, Vec<io::Result<()>>)> {
        let (pod, results) = Kernel::enter(self.get()?, ns, knobs)?;
        let lazy = LazyNetlink::new();
        let _ = lazy.socket.set(pod);
        Ok((lazy, results))
    }

    async fn write_batch(&self, writes: &[crate::kernel::netlink::KernelWrite]) -> Vec<Result<()>> {
        match self.get() {
            Ok(nl) => nl.write_batch(writes).await,
            Err(e) => writes
                .iter()
                .map(|_| Err(crate::kernel::netlink::NetlinkError::Other(e.to_string())))
                .collect(),
        }
    }

    async fn nexthops_supported(&self) -> bool {
        match self.get() {
            Ok(nl) => nl.nexthops_supported().await,
            Err(_) => false,
        }
    }

    delegate! {
        fn link(&self, name: &str) -> Result<Option<Link>>;
        fn links(&self) -> Result<Vec<Link>>;
        fn vxlan_link(&self, name: &str) -> Result<Option<VxlanLink>>;
        fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(VxlanLink, VxlanOutcome)>;
        fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link>;
        fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link>;
        fn setup_bridge_port(&self, index: u32, hairpin: bool) -> Result<()>;
        fn set_up(&self, index: u32) -> Result<()>;
        fn set_up_with_arp_notify(&self, index: u32) -> Result<()>;
        fn set_promisc(&self, index: u32, on: bool) -> Result<()>;
        fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()>;
        fn set_mtu(&self, index: u32, mtu: u32) -> Result<()>;
        fn del_link(&self, name: &str) -> Result<bool>;
        fn del_link_index(&self, index: u32) -> Result<bool>;
        fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>>;
        fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()>;
        fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()>;
        fn routes(&self, family: IpFamily) -> Result<Vec<Route>>;
        fn add_route(&self, route: &Route) -> Result<()>;
        fn replace_route(&self, route: &Route) -> Result<()>;
        fn del_route(&self, route: &Route) -> Result<()>;
        fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>>;
        fn replace_neigh(&self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()>;
        fn neigh_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>>;
        fn announce(&self, ifindex: u32, ip: IpAddr) -> Result<()>;
        fn del_neigh(&self, ifindex: u32, ip: IpAddr) -> Result<()>;
        fn fdb_entries(&self, ifindex: u32) -> Result<Vec<FdbEntry>>;
        fn replace_fdb(&self, ifindex: u32, mac: [u8; 6], dst: IpAddr) -> Result<()>;
        fn del_fdb(&self, ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Result<()>;
    }

    fn del_link_detached(&self, name: &str) -> io::Result<bool> {
        super::netlink::del_link_detached(name)
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
