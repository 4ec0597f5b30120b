//! # Neighbours (ARP) and forwarding-database entries
//!
//! A VXLAN overlay without learning needs two tables per remote node, both on the VXLAN device:
//!
//! * the **neighbour** (ARP) entry `<remote gateway IP> lladdr <remote VTEP MAC> permanent`, so
//!   the kernel never has to ARP across the tunnel for the next hop of the overlay route, and
//! * the **FDB** entry `<remote VTEP MAC> dst <remote underlay IP> self permanent`, which tells
//!   the VXLAN driver where to send frames for that MAC.
//!
//! Both are written with replace semantics (`NLM_F_CREATE | NLM_F_REPLACE`), so writing the same
//! entry twice is a no-op and a changed MAC or underlay IP overwrites the old value. Deletions of
//! something already gone succeed, like every `del_*` in this crate.
//!
//! Dumps are filtered on the client side by ifindex: the per-device filter of the kernel needs
//! strict checking, and the tables involved are small.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::batch::Prepared;
use super::{Netlink, NetlinkError, Result, format_mac};

/// A neighbour (ARP/NDP) entry, as `ip neigh show dev D` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The device the entry belongs to.
    pub ifindex: u32,
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its link-layer address, if known (an `INCOMPLETE` or `FAILED` entry has none).
    pub mac: Option<[u8; 6]>,
    /// `nud permanent`: set by an administrator, never expires.
    pub permanent: bool,
}

/// A forwarding-database entry, as `bridge fdb show dev D` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// The device the entry belongs to.
    pub ifindex: u32,
    /// The MAC address the entry is for.
    pub mac: [u8; 6],
    /// `dst IP`: the remote VTEP (VXLAN entries only).
    pub dst: Option<IpAddr>,
    /// `permanent`.
    pub permanent: bool,
    /// `self`: the entry lives in the device's own table (VXLAN), not in a bridge master's.
    pub is_self: bool,
}

fn neigh_dst(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// The neighbour entry for `ip` on device `ifindex`, as requests address it: family, device
/// and `NDA_DST`.
fn entry(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(ip);
    m.header.ifindex = ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(neigh_dst(ip)));
    m
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Parses `NDA_DST` and `NDA_LLADDR` out of a dumped entry.
pub(super) fn parse_attrs(m: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut ip = None;
    let mut mac = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            // In AF_BRIDGE (FDB) messages the kernel's NDA_DST is not typed by the header
            // family, so the parser leaves it raw: decide by length.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                ip = match raw.len() {
                    4 => <[u8; 4]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(a) => {
                mac = <[u8; 6]>::try_from(a.as_slice()).ok();
            }
            _ => {}
        }
    }
    (ip, mac)
}

impl Netlink {
    async fn neigh_dump(&self, op: &str, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        let replies = self
            .request(
                op,
                RouteNetlinkMessage::GetNeighbour(m),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// The neighbour entries of device `ifindex`, IPv4 (ARP) then IPv6 (NDP) (`ip -4 neigh
    /// show dev #IFINDEX; ip -6 neigh show dev #IFINDEX`): `flannel-v6.<VNI>` keeps its
    /// peers in the IPv6 table.
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>> {
        let mut all = Vec::new();
        for (op, family) in [
            (
                format!("ip -4 neigh show dev #{ifindex}"),
                AddressFamily::Inet,
            ),
            (
                format!("ip -6 neigh show dev #{ifindex}"),
                AddressFamily::Inet6,
            ),
        ] {
            all.extend(
                self.neigh_dump(&op, family)
                    .await?
                    .into_iter()
                    .filter(|n| n.header.ifindex == ifindex)
                    .filter_map(|n| {
                        let (ip, mac) = parse_attrs(&n);
                        Some(Neighbour {
                            ifindex,
                            ip: ip?,
                            mac,
                            permanent: n.header.state == NeighbourState::Permanent,
                        })
                    }),
            );
        }
        Ok(all)
    }

    /// `ip neigh replace IP lladdr MAC dev #IFINDEX nud permanent`.
    pub async fn replace_neigh(&self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.send_prepared(Self::replace_neigh_request(ifindex, ip, mac))
            .await
    }

    pub(super) fn replace_neigh_request(ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Prepared {
        let mut m = entry(ifindex, ip);
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        let op = format!(
            "ip neigh replace {ip} lladdr {} dev #{ifindex} nud permanent",
            format_mac(&mac)
        );
        Prepared::write(op, RouteNetlinkMessage::NewNeighbour(m))
    }

    /// The link-layer address device `ifindex` has cached for `ip` (`ip neigh get IP dev
    /// #IFINDEX`), in whatever state; `None` when there is no entry (or no such device).
    pub async fn neigh_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>> {
        let m = entry(ifindex, ip);
        let op = format!("ip neigh get {ip} dev #{ifindex}");
        match self
            .request(&op, RouteNetlinkMessage::GetNeighbour(m), NLM_F_REQUEST)
            .await
        {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(n) => parse_attrs(&n).1,
                _ => None,
            })),
            Err(NetlinkError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Announces our own IPv4 address `ip` on `ifindex` with gratuitous ARPs sent by the kernel
    /// (`arping -U -c 3 -I DEV IP`, without a packet socket): an `RTM_NEWNEIGH` for our own
    /// address with `NTF_USE` makes the kernel resolve it, and resolving an address broadcasts
    /// an ARP request whose sender and target are both `ip` — a gratuitous ARP. Nobody answers,
    /// so the kernel repeats it (`mcast_solicit`, 3 in all, `retrans_time_ms` = 1 s apart) and
    /// then lets the entry fail and expire; it is never used, traffic to a local address does
    /// not go through the neighbour table.
    ///
    /// Every host on the segment that caches `ip` switches to this interface's MAC at once (a
    /// gratuitous ARP overrides the one-second `locktime` that an ordinary request respects).
    /// A packet socket would do the same at the price of an RCU grace period on close, most of
    /// a CNI ADD.
    pub async fn announce(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        let mut m = entry(ifindex, ip);
        m.header.flags = NeighbourFlags::Use;
        m.header.state = NeighbourState::None;
        m.header.kind = RouteType::Unspec;
        let op = format!("arping -U -I #{ifindex} {ip} (ip neigh replace {ip} dev #{ifindex} use)");
        self.ack(
            &op,
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// `ip neigh del IP dev #IFINDEX`. An entry (or device) that is already gone is success.
    pub async fn del_neigh(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        self.send_prepared(Self::del_neigh_request(ifindex, ip))
            .await
    }

    pub(super) fn del_neigh_request(ifindex: u32, ip: IpAddr) -> Prepared {
        let m = entry(ifindex, ip);
        let op = format!("ip neigh del {ip} dev #{ifindex}");
        Prepared::delete(op, RouteNetlinkMessage::DelNeighbour(m))
    }

    /// The FDB entries of device `ifindex` (`bridge fdb show dev #IFINDEX`). For a VXLAN device
    /// an entry with several remotes is reported once per remote.
    pub async fn fdb_entries(&self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let op = format!("bridge fdb show dev #{ifindex}");
        Ok(self
            .neigh_dump(&op, AddressFamily::Bridge)
            .await?
            .into_iter()
            .filter(|n| n.header.ifindex == ifindex)
            .filter_map(|n| {
                let (dst, mac) = parse_attrs(&n);
                Some(FdbEntry {
                    ifindex,
                    mac: mac?,
                    dst,
                    permanent: n.header.state == NeighbourState::Permanent,
                    is_self: n.header.flags.contains(NeighbourFlags::Own),
                })
            })
            .collect())
    }

    fn fdb_message(ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        if let Some(ip) = dst {
            m.attributes
                .push(NeighbourAttribute::Destination(neigh_dst(ip)));
        }
        m
    }

    /// `bridge fdb replace MAC dev #IFINDEX dst DST self permanent`. On a VXLAN device this
    /// overwrites the remote of an existing entry for `mac`.
    pub async fn replace_fdb(&self, ifindex: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.send_prepared(Self::replace_fdb_request(ifindex, mac, dst))
            .await
    }

    pub(super) fn replace_fdb_request(ifindex: u32, mac: [u8; 6], dst: IpAddr) -> Prepared {
        let m = Self::fdb_message(ifindex, mac, Some(dst));
        let op = format!(
            "bridge fdb replace {} dev #{ifindex} dst {dst} self permanent",
            format_mac(&mac)
        );
        Prepared::write(op, RouteNetlinkMessage::NewNeighbour(m))
    }

    /// `bridge fdb del MAC dev #IFINDEX [dst DST] self`. With `dst`, only that remote of the
    /// entry is removed; without, the whole entry. An entry (or device) that is already gone is
    /// success.
    pub async fn del_fdb(&self, ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Result<()> {
        self.send_prepared(Self::del_fdb_request(ifindex, mac, dst))
            .await
    }

    pub(super) fn del_fdb_request(ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Prepared {
        let m = Self::fdb_message(ifindex, mac, dst);
        let op = match dst {
            Some(d) => format!(
                "bridge fdb del {} dev #{ifindex} dst {d} self",
                format_mac(&mac)
            ),
            None => format!("bridge fdb del {} dev #{ifindex} self", format_mac(&mac)),
        };
        Prepared::delete(op, RouteNetlinkMessage::DelNeighbour(m))
    }
}
