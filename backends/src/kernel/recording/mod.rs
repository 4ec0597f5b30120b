//! [`RecordingKernel`]: an in-memory kernel that records every call — the test twin of
//! [`Netlink`](super::netlink::Netlink) behind the [`Kernel`] trait (cargo feature `testing`).
//!
//! It keeps per-namespace tables of links, addresses, routes, neighbours and FDB entries with
//! the kernel's semantics where the callers depend on them: a veth pair's two ends live in
//! two namespaces and die together, deleting a link takes its addresses, routes, neighbours and
//! FDB entries along, `ip route add` of an existing route is `EEXIST`, a replace overwrites.
//! Every namespace starts with `lo` at index 1. Each call is logged as one line (`"<ns>:
//! <op> <args>"`, see [`RecordingKernel::calls`]), and [`RecordingKernel::fail_next`] makes
//! the next call of one operation fail with an errno, as youki's `TestHelperSyscall` does. The
//! nftables masquerade set of [`Kernel::pod_masq`] is kept here too.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnetwork::IpNetwork;

use crate::kernel::netlink::{
    FdbEntry, Link, Neighbour, NetlinkError, Result, Route, VxlanLink, VxlanSpec,
};

mod masq;
mod ops;

pub use masq::RecordingMasq;

/// The namespace name of the handle made by [`RecordingKernel::new`].
pub const HOST: &str = "host";

#[derive(Clone, Debug)]
struct FakeLink {
    link: Link,
    vxlan: Option<VxlanSpec>,
    /// The other end of a veth: (namespace, index).
    peer: Option<(String, u32)>,
}

#[derive(Debug)]
struct Tables {
    links: BTreeMap<u32, FakeLink>,
    addresses: Vec<(u32, IpNetwork)>,
    routes: Vec<Route>,
    neighs: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
}

impl Tables {
    fn new() -> Tables {
        let lo = Link {
            index: 1,
            name: "lo".into(),
            kind: None,
            mac: None,
            mtu: 65_536,
            master: None,
            link: None,
            admin_up: false,
            oper_up: false,
            promisc: false,
            ipv6_accept_ra: None,
        };
        let mut links = BTreeMap::new();
        links.insert(
            1,
            FakeLink {
                link: lo,
                vxlan: None,
                peer: None,
            },
        );
        Tables {
            links,
            addresses: Vec::new(),
            routes: Vec::new(),
            neighs: Vec::new(),
            fdb: Vec::new(),
        }
    }

    fn by_name(&self, name: &str) -> Option<&FakeLink> {
        self.links.values().find(|l| l.link.name == name)
    }

    /// Removes link `index` and everything hanging off it; returns the veth peer to remove too.
    fn remove_link(&mut self, index: u32) -> Option<(String, u32)> {
        let gone = self.links.remove(&index)?;
        self.addresses.retain(|(i, _)| *i != index);
        self.routes.retain(|r| r.oif != Some(index));
        self.neighs.retain(|n| n.ifindex != index);
        self.fdb.retain(|f| f.ifindex != index);
        for l in self.links.values_mut() {
            if l.link.master == Some(index) {
                l.link.master = None;
            }
        }
        gone.peer
    }
}

#[derive(Debug, Default)]
struct World {
    namespaces: BTreeMap<String, Tables>,
    next_index: u32,
    calls: Vec<String>,
    failures: Vec<(String, i32)>,
    sysctls: BTreeMap<(String, String), String>,
    masq: BTreeMap<String, BTreeMap<IpAddr, String>>,
    /// Behave like a kernel older than 5.3 ([`RecordingKernel::without_nexthops`]).
    no_nexthops: bool,
}

/// An in-memory kernel bound to one of its namespaces; clones and [`Kernel::enter`] handles
/// share the same world.
#[derive(Clone, Debug)]
pub struct RecordingKernel {
    world: Arc<Mutex<World>>,
    ns: String,
}

impl Default for RecordingKernel {
    fn default() -> Self {
        RecordingKernel::new()
    }
}

impl RecordingKernel {
    /// A fresh world with one namespace, [`HOST`], holding only `lo`.
    pub fn new() -> RecordingKernel {
        let mut world = World {
            next_index: 2,
            ..World::default()
        };
        world.namespaces.insert(HOST.into(), Tables::new());
        RecordingKernel {
            world: Arc::new(Mutex::new(world)),
            ns: HOST.into(),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The namespace this handle acts in.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Every call made so far through any handle of this world, in order.
    pub fn calls(&self) -> Vec<String> {
        self.world().calls.clone()
    }

    /// The calls made so far whose operation is `op` (`"replace_route"`, ...).
    pub fn calls_of(&self, op: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.split_whitespace().nth(1) == Some(op))
            .collect()
    }

    /// From now on, answer [`Kernel::nexthops_supported`] with `false`, like a kernel older
    /// than 5.3.
    pub fn without_nexthops(&self) {
        self.world().no_nexthops = true;
    }

    /// Whether [`RecordingKernel::without_nexthops`] was called (the answer of
    /// [`Kernel::nexthops_supported`], which is not recorded as a call: it asks about the
    /// kernel, not its state).
    pub(super) fn has_nexthops(&self) -> bool {
        !self.world().no_nexthops
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.world().calls.clear();
    }

    /// The next call of `op` (in any namespace) fails with `errno` — `libc::EEXIST` and
    /// `libc::ENOENT` map to [`NetlinkError::Exists`] / [`NetlinkError::NotFound`] as the real
    /// kernel's do. Queue several to fail several calls.
    pub fn fail_next(&self, op: &str, errno: i32) {
        self.world().failures.push((op.to_string(), errno));
    }

    /// Links of namespace `ns` ([`HOST`], or a [`NetNs`] path).
    pub fn links_in(&self, ns: &str) -> Vec<Link> {
        self.world()
            .namespaces
            .get(ns)
            .map(|t| t.links.values().map(|l| l.link.clone()).collect())
            .unwrap_or_default()
    }

    /// Addresses of every link in namespace `ns`: `(ifindex, address)`.
    pub fn addresses_in(&self, ns: &str) -> Vec<(u32, IpNetwork)> {
        self.world()
            .namespaces
            .get(ns)
            .map(|t| t.addresses.clone())
            .unwrap_or_default()
    }

    /// Routes of namespace `ns`.
    pub fn routes_in(&self, ns: &str) -> Vec<Route> {
        self.world()
            .namespaces
            .get(ns)
            .map(|t| t.routes.clone())
            .unwrap_or_default()
    }

    /// The masquerade set of network `network`: address → comment.
    pub fn masq_entries(&self, network: &str) -> BTreeMap<IpAddr, String> {
        self.world().masq.get(network).cloned().unwrap_or_default()
    }

    /// A `/proc/sys` value written in namespace `ns`.
    pub fn sysctl(&self, ns: &str, key: &str) -> Option<String> {
        self.world()
            .sysctls
            .get(&(ns.to_string(), key.to_string()))
            .cloned()
    }

    /// Adds a plain link (a physical uplink, say) in this handle's namespace behind the
    /// caller's back, up, not recorded; returns its index.
    pub fn add_link_externally(&self, name: &str, mtu: u32) -> u32 {
        self.with(|t, next| {
            let index = *next;
            *next += 1;
            let mut link = Self::new_link(name, "", index, mtu);
            link.kind = None;
            link.admin_up = true;
            t.links.insert(
                index,
                FakeLink {
                    link,
                    vxlan: None,
                    peer: None,
                },
            );
            index
        })
    }

    /// Adds an address behind the caller's back, not recorded.
    pub fn add_address_externally(&self, index: u32, addr: IpNetwork) {
        self.with(|t, _| t.addresses.push((index, addr)));
    }

    /// Deletes a link behind the caller's back (an operator's `ip link del`), not recorded.
    pub fn remove_link_externally(&self, name: &str) {
        let mut w = self.world();
        let t = w.namespaces.get_mut(&self.ns).expect("own namespace");
        if let Some(i) = t.by_name(name).map(|l| l.link.index) {
            t.remove_link(i);
        }
    }

    /// Deletes routes to `dst` behind the caller's back, not recorded.
    pub fn remove_route_externally(&self, dst: IpNetwork) {
        let mut w = self.world();
        let t = w.namespaces.get_mut(&self.ns).expect("own namespace");
        t.routes.retain(|r| r.dst != dst);
    }

    /// Records `what` and consumes a queued failure for its operation.
    fn call(&self, what: String) -> Result<()> {
        let mut w = self.world();
        let op = what
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        w.calls.push(format!("{}: {what}", self.ns));
        if let Some(pos) = w.failures.iter().position(|(o, _)| *o == op) {
            let (_, errno) = w.failures.remove(pos);
            let msg = format!("{what}: {}", io::Error::from_raw_os_error(errno));
            return Err(match errno {
                libc::EEXIST => NetlinkError::Exists(msg),
                libc::ENOENT | libc::ENODEV | libc::ESRCH => NetlinkError::NotFound(msg),
                _ => NetlinkError::Kernel {
                    op: what,
                    errno,
                    msg,
                },
            });
        }
        Ok(())
    }

    fn io_call(&self, what: String) -> io::Result<()> {
        self.call(what).map_err(|e| match e.errno() {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::from_raw_os_error(libc::ENOENT),
        })
    }

    /// Runs `f` on this handle's tables.
    fn with<T>(&self, f: impl FnOnce(&mut Tables, &mut u32) -> T) -> T {
        let mut w = self.world();
        let World {
            namespaces,
            next_index,
            ..
        } = &mut *w;
        let t = namespaces
            .entry(self.ns.clone())
            .or_insert_with(Tables::new);
        f(t, next_index)
    }

    fn not_found(what: &str) -> NetlinkError {
        NetlinkError::NotFound(format!("{what}: No such device"))
    }

    fn update_link(&self, index: u32, what: &str, f: impl FnOnce(&mut Link)) -> Result<()> {
        self.with(|t, _| match t.links.get_mut(&index) {
            Some(l) => {
                f(&mut l.link);
                Ok(())
            }
            None => Err(Self::not_found(what)),
        })
    }

    fn new_link(name: &str, kind: &str, index: u32, mtu: u32) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            mac: Some([0x02, 0, 0, 0, (index >> 8) as u8, index as u8]),
            mtu,
            master: None,
            link: None,
            admin_up: false,
            oper_up: false,
            promisc: false,
            ipv6_accept_ra: Some(1),
        }
    }

    fn vxlan_of(l: &FakeLink) -> Option<VxlanLink> {
        let s = l.vxlan.as_ref()?;
        Some(VxlanLink {
            link: l.link.clone(),
            vni: Some(s.vni),
            local: Some(s.local),
            port: Some(s.effective_port()),
            underlay: Some(s.underlay_ifindex),
            learning: Some(s.learning),
            gbp: s.gbp,
        })
    }
}

fn same_route(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.table == b.table
}

impl RecordingKernel {
    /// Removes the link `find` names in this namespace, and its veth peer; `false` if none.
    fn remove_by(&self, find: impl FnOnce(&Tables) -> Option<u32>) -> bool {
        let mut w = self.world();
        let Some(t) = w.namespaces.get_mut(&self.ns) else {
            return false;
        };
        let Some(index) = find(t) else {
            return false;
        };
        if let Some((ns, peer)) = t.remove_link(index)
            && let Some(pt) = w.namespaces.get_mut(&ns)
        {
            pt.remove_link(peer);
        }
        true
    }
}
