//! [`Kernel`] for [`RecordingKernel`]: each call recorded, then applied to the tables.

use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::*;
use crate::kernel::Kernel;
use crate::kernel::netlink::{IpFamily, VethSpec, VxlanOutcome};
use crate::kernel::netns::NetNs;

impl Kernel for RecordingKernel {
    type Masq = RecordingMasq;

    fn enter(&self, ns: &NetNs, knobs: &[(String, String)]) -> Result<(Self, Vec<io::Result<()>>)> {
        let name = ns.path().display().to_string();
        self.call(format!("enter {name}"))?;
        let mut w = self.world();
        w.namespaces.entry(name.clone()).or_insert_with(Tables::new);
        let results = knobs
            .iter()
            .map(|(k, v)| {
                w.sysctls.insert((name.clone(), k.clone()), v.clone());
                Ok(())
            })
            .collect();
        drop(w);
        let other = RecordingKernel {
            world: self.world.clone(),
            ns: name,
        };
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

    async fn nexthops_supported(&self) -> bool {
        self.has_nexthops()
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
