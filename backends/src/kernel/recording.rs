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

use super::Kernel;
use super::masq_table::MasqTable;
use super::netlink::{
    FdbEntry, IpFamily, Link, Neighbour, NetlinkError, Result, Route, VethSpec, VxlanLink,
    VxlanOutcome, VxlanSpec,
};
use super::netns::NetNs;
use super::nft::NftError;

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

impl Kernel for RecordingKernel {
    type Masq = RecordingMasq;

    fn enter(&self, ns: &NetNs, knobs: &[(String, String)]) -> Result<(Self, Vec<io::Result<()>>)> {
        let name = ns.path().display().to_string();
        self.call(format!("enter {name}"))?;
        let other = RecordingKernel {
            world: self.world.clone(),
            ns: name.clone(),
        };
        other.with(|_, _| ());
        let mut w = self.world();
        let results = knobs
            .iter()
            .map(|(k, v)| {
                w.sysctls.insert((name.clone(), k.clone()), v.clone());
                Ok(())
            })
            .collect();
        Ok((other, results))
    }

    async fn link(&self, name: &str) -> Result<Option<Link>> {
        self.call(format!("link {name}"))?;
        Ok(self.with(|t, _| t.by_name(name).map(|l| l.link.clone())))
    }

    async fn links(&self) -> Result<Vec<Link>> {
        self.call("links".into())?;
        Ok(self.with(|t, _| t.links.values().map(|l| l.link.clone()).collect()))
    }

    async fn vxlan_link(&self, name: &str) -> Result<Option<VxlanLink>> {
        self.call(format!("vxlan_link {name}"))?;
        Ok(self.with(|t, _| {
            t.by_name(name)
                .map(|l| Self::vxlan_of(l).unwrap_or_else(|| VxlanLink::plain(l.link.clone())))
        }))
    }

    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(VxlanLink, VxlanOutcome)> {
        self.call(format!("ensure_vxlan {}", spec.describe()))?;
        Ok(self.with(|t, next| {
            let mut outcome = VxlanOutcome::Created;
            if let Some(existing) = t.by_name(&spec.name).cloned() {
                let same = existing.vxlan.as_ref().is_some_and(|s| {
                    Self::vxlan_of(&existing).is_some_and(|v| spec.identity_matches(&v))
                        && s.name == spec.name
                });
                if same {
                    let l = &existing.link;
                    outcome = if l.mtu == spec.mtu && l.mac == Some(spec.mac) && l.admin_up {
                        VxlanOutcome::Kept
                    } else {
                        VxlanOutcome::Fixed
                    };
                    let fl = t.links.get_mut(&l.index).expect("present");
                    fl.link.mtu = spec.mtu;
                    fl.link.mac = Some(spec.mac);
                    fl.link.admin_up = true;
                    fl.vxlan = Some(spec.clone());
                    return (Self::vxlan_of(fl).expect("vxlan"), outcome);
                }
                t.remove_link(existing.link.index);
                outcome = VxlanOutcome::Recreated;
            }
            let index = *next;
            *next += 1;
            let mut link = Self::new_link(&spec.name, "vxlan", index, spec.mtu);
            link.mac = Some(spec.mac);
            link.admin_up = true;
            link.link = Some(spec.underlay_ifindex);
            let fl = FakeLink {
                link,
                vxlan: Some(spec.clone()),
                peer: None,
            };
            let v = Self::vxlan_of(&fl).expect("vxlan");
            t.links.insert(index, fl);
            (v, outcome)
        }))
    }

    async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        self.call(format!("ensure_bridge {name}"))?;
        Ok(self.with(|t, next| {
            if let Some(l) = t.by_name(name) {
                return l.link.clone();
            }
            let index = *next;
            *next += 1;
            let mut link = Self::new_link(name, "bridge", index, mtu.unwrap_or(1500));
            link.admin_up = true;
            t.links.insert(
                index,
                FakeLink {
                    link: link.clone(),
                    vxlan: None,
                    peer: None,
                },
            );
            link
        }))
    }

    async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link> {
        let peer_ns = spec.peer_ns.path().display().to_string();
        self.call(format!(
            "create_veth {} {} netns {peer_ns}",
            spec.host_name, spec.peer_name
        ))?;
        let mut w = self.world();
        let (host_index, peer_index) = (w.next_index, w.next_index + 1);
        w.next_index += 2;
        let exists = |w: &World, ns: &str, name: &str| {
            w.namespaces
                .get(ns)
                .is_some_and(|t| t.by_name(name).is_some())
        };
        if exists(&w, &self.ns, spec.host_name) || exists(&w, &peer_ns, spec.peer_name) {
            return Err(NetlinkError::Exists(format!(
                "create_veth {}: File exists",
                spec.host_name
            )));
        }
        let mtu = spec.mtu.unwrap_or(1500);
        let mut host = Self::new_link(spec.host_name, "veth", host_index, mtu);
        host.master = spec.master;
        host.admin_up = spec.host_up;
        host.link = Some(peer_index);
        let mut peer = Self::new_link(spec.peer_name, "veth", peer_index, mtu);
        if let Some(mac) = spec.peer_mac {
            peer.mac = Some(mac);
        }
        peer.link = Some(host_index);
        w.namespaces
            .entry(peer_ns.clone())
            .or_insert_with(Tables::new)
            .links
            .insert(
                peer_index,
                FakeLink {
                    link: peer,
                    vxlan: None,
                    peer: Some((self.ns.clone(), host_index)),
                },
            );
        w.namespaces
            .entry(self.ns.clone())
            .or_insert_with(Tables::new)
            .links
            .insert(
                host_index,
                FakeLink {
                    link: host.clone(),
                    vxlan: None,
                    peer: Some((peer_ns, peer_index)),
                },
            );
        Ok(host)
    }

    async fn setup_bridge_port(&self, index: u32, hairpin: bool) -> Result<()> {
        self.call(format!("setup_bridge_port {index} hairpin {hairpin}"))?;
        self.update_link(index, "setup_bridge_port", |l| l.admin_up = true)
    }

    async fn set_up(&self, index: u32) -> Result<()> {
        self.call(format!("set_up {index}"))?;
        self.update_link(index, "set_up", |l| l.admin_up = true)
    }

    async fn set_up_with_arp_notify(&self, index: u32) -> Result<()> {
        self.call(format!("set_up_with_arp_notify {index}"))?;
        self.update_link(index, "set_up", |l| l.admin_up = true)
    }

    async fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        self.call(format!("set_promisc {index} {on}"))?;
        self.update_link(index, "set_promisc", |l| l.promisc = on)
    }

    async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.call(format!("set_mac {index}"))?;
        self.update_link(index, "set_mac", |l| l.mac = Some(mac))
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.call(format!("set_mtu {index} {mtu}"))?;
        self.update_link(index, "set_mtu", |l| l.mtu = mtu)
    }

    async fn del_link(&self, name: &str) -> Result<bool> {
        self.call(format!("del_link {name}"))?;
        Ok(self.remove_by(|t| t.by_name(name).map(|l| l.link.index)))
    }

    async fn del_link_index(&self, index: u32) -> Result<bool> {
        self.call(format!("del_link_index {index}"))?;
        Ok(self.remove_by(|t| t.links.contains_key(&index).then_some(index)))
    }

    fn del_link_detached(&self, name: &str) -> io::Result<bool> {
        self.io_call(format!("del_link_detached {name}"))?;
        Ok(self.remove_by(|t| t.by_name(name).map(|l| l.link.index)))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        self.call(format!("addresses {index}"))?;
        Ok(self.with(|t, _| {
            t.addresses
                .iter()
                .filter(|(i, _)| *i == index)
                .map(|(_, a)| *a)
                .collect()
        }))
    }

    async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        self.call(format!("add_address {index} {addr}"))?;
        self.with(|t, _| {
            if !t.links.contains_key(&index) {
                return Err(Self::not_found("add_address"));
            }
            if t.addresses
                .iter()
                .any(|(i, a)| *i == index && a.ip() == addr.ip())
            {
                return Err(NetlinkError::Exists(format!(
                    "add_address {addr}: File exists"
                )));
            }
            t.addresses.push((index, addr));
            Ok(())
        })
    }

    async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        self.call(format!("del_address {index} {addr}"))?;
        self.with(|t, _| {
            let before = t.addresses.len();
            t.addresses
                .retain(|(i, a)| !(*i == index && a.ip() == addr.ip()));
            if t.addresses.len() == before {
                return Err(NetlinkError::NotFound(format!("del_address {addr}")));
            }
            Ok(())
        })
    }

    async fn routes(&self, family: IpFamily) -> Result<Vec<Route>> {
        self.call(format!("routes {family:?}"))?;
        Ok(self.with(|t, _| {
            t.routes
                .iter()
                .filter(|r| r.dst.is_ipv4() == (family == IpFamily::V4))
                .cloned()
                .collect()
        }))
    }

    async fn add_route(&self, route: &Route) -> Result<()> {
        self.call(format!("add_route {}", route.dst))?;
        self.with(|t, _| {
            if t.routes.iter().any(|r| same_route(r, route)) {
                return Err(NetlinkError::Exists(format!("add_route {}", route.dst)));
            }
            t.routes.push(route.clone());
            Ok(())
        })
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        self.call(format!("replace_route {}", route.dst))?;
        self.with(|t, _| {
            t.routes.retain(|r| !same_route(r, route));
            t.routes.push(route.clone());
        });
        Ok(())
    }

    async fn del_route(&self, route: &Route) -> Result<()> {
        self.call(format!("del_route {}", route.dst))?;
        self.with(|t, _| {
            let before = t.routes.len();
            t.routes.retain(|r| !same_route(r, route));
            if before == t.routes.len() {
                return Err(NetlinkError::NotFound(format!("del_route {}", route.dst)));
            }
            Ok(())
        })
    }

    async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>> {
        self.call(format!("neighbours {ifindex}"))?;
        Ok(self.with(|t, _| {
            t.neighs
                .iter()
                .filter(|n| n.ifindex == ifindex)
                .cloned()
                .collect()
        }))
    }

    async fn replace_neigh(&self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.call(format!("replace_neigh {ifindex} {ip}"))?;
        self.with(|t, _| {
            t.neighs.retain(|n| !(n.ifindex == ifindex && n.ip == ip));
            t.neighs.push(Neighbour {
                ifindex,
                ip,
                mac: Some(mac),
                permanent: true,
            });
        });
        Ok(())
    }

    async fn neigh_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>> {
        self.call(format!("neigh_mac {ifindex} {ip}"))?;
        Ok(self.with(|t, _| {
            t.neighs
                .iter()
                .find(|n| n.ifindex == ifindex && n.ip == ip)
                .and_then(|n| n.mac)
        }))
    }

    async fn announce(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        self.call(format!("announce {ifindex} {ip}"))
    }

    async fn del_neigh(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        self.call(format!("del_neigh {ifindex} {ip}"))?;
        self.with(|t, _| t.neighs.retain(|n| !(n.ifindex == ifindex && n.ip == ip)));
        Ok(())
    }

    async fn fdb_entries(&self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        self.call(format!("fdb_entries {ifindex}"))?;
        Ok(self.with(|t, _| {
            t.fdb
                .iter()
                .filter(|f| f.ifindex == ifindex)
                .cloned()
                .collect()
        }))
    }

    async fn replace_fdb(&self, ifindex: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.call(format!("replace_fdb {ifindex} {dst}"))?;
        self.with(|t, _| {
            t.fdb.retain(|f| !(f.ifindex == ifindex && f.mac == mac));
            t.fdb.push(FdbEntry {
                ifindex,
                mac,
                dst: Some(dst),
                permanent: true,
                is_self: true,
            });
        });
        Ok(())
    }

    async fn del_fdb(&self, ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Result<()> {
        self.call(format!("del_fdb {ifindex}"))?;
        self.with(|t, _| {
            t.fdb.retain(|f| {
                !(f.ifindex == ifindex && f.mac == mac && (dst.is_none() || f.dst == dst))
            })
        });
        Ok(())
    }

    fn sysctl_write(&self, key: &str, value: &str) -> io::Result<()> {
        self.io_call(format!("sysctl_write {key} {value}"))?;
        self.world()
            .sysctls
            .insert((self.ns.clone(), key.into()), value.into());
        Ok(())
    }

    fn sysctl_ensure(&self, key: &str, value: &str) -> io::Result<bool> {
        self.io_call(format!("sysctl_ensure {key} {value}"))?;
        let mut w = self.world();
        let slot = (self.ns.clone(), key.to_string());
        if w.sysctls.get(&slot).map(String::as_str) == Some(value) {
            return Ok(false);
        }
        w.sysctls.insert(slot, value.into());
        Ok(true)
    }

    fn settle_link(&self, name: &str) -> io::Result<()> {
        self.io_call(format!("settle_link {name}"))
    }

    fn pod_masq(&self, network_name: &str) -> RecordingMasq {
        RecordingMasq {
            kernel: self.clone(),
            network: network_name.into(),
        }
    }
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

/// The masquerade set of one network in a [`RecordingKernel`].
#[derive(Clone, Debug)]
pub struct RecordingMasq {
    kernel: RecordingKernel,
    network: String,
}

impl RecordingMasq {
    fn nft_call(&self, what: String) -> std::result::Result<(), NftError> {
        self.kernel.call(what).map_err(|e| NftError::Output {
            action: "recorded".into(),
            reason: e.to_string(),
        })
    }
}

impl MasqTable for RecordingMasq {
    fn add(
        &self,
        pod: IpNetwork,
        container_id: &str,
        ifname: &str,
    ) -> std::result::Result<(), NftError> {
        self.nft_call(format!("masq_add {} {}", self.network, pod.ip()))?;
        self.kernel
            .world()
            .masq
            .entry(self.network.clone())
            .or_default()
            .insert(pod.ip(), format!("{container_id}/{ifname}"));
        Ok(())
    }

    fn remove(&self, ip: IpAddr) -> std::result::Result<(), NftError> {
        self.nft_call(format!("masq_remove {} {ip}", self.network))?;
        if let Some(set) = self.kernel.world().masq.get_mut(&self.network) {
            set.remove(&ip);
        }
        Ok(())
    }

    fn elements(&self) -> std::result::Result<Vec<(IpAddr, String)>, NftError> {
        self.nft_call(format!("masq_elements {}", self.network))?;
        Ok(self
            .kernel
            .masq_entries(&self.network)
            .into_iter()
            .collect())
    }
}
