//! Addresses and routes: [`Route`], [`IpFamily`] and the address/route operations of
//! [`Netlink`] (`ip addr ...`, `ip route ...`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::AddressMessageBuilder;

use super::batch::{KernelWrite, Prepared};
use super::*;

/// IP version of a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpFamily {
    /// IPv4 (`ip -4`).
    V4,
    /// IPv6 (`ip -6`).
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    pub(super) fn address_family(self) -> AddressFamily {
        match self {
            IpFamily::V4 => AddressFamily::Inet,
            IpFamily::V6 => AddressFamily::Inet6,
        }
    }
}

/// `RTPROT_BOOT`: what `ip route add` records (`proto boot`, shown as nothing by `ip route`).
pub const RTPROT_BOOT: u8 = 3;
/// `RTPROT_STATIC`: `proto static`.
pub const RTPROT_STATIC: u8 = 4;
/// `RT_TABLE_MAIN`.
pub const RT_TABLE_MAIN: u32 = 254;
/// `RT_SCOPE_UNIVERSE` (`scope global`).
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_LINK` (`scope link`): directly reachable, no gateway.
pub const RT_SCOPE_LINK: u8 = 253;

/// A unicast route, as `ip route` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination; `0.0.0.0/0` or `::/0` is the default route.
    pub dst: IpNetwork,
    /// `via GATEWAY`.
    pub gateway: Option<IpAddr>,
    /// `dev X`, as an ifindex.
    pub oif: Option<u32>,
    /// `onlink`: use the gateway even if no local subnet covers it.
    pub onlink: bool,
    /// `RTPROT_*`; [`RTPROT_BOOT`] is what `ip route add` uses.
    pub protocol: u8,
    /// Routing table; [`RT_TABLE_MAIN`] is the main table.
    pub table: u32,
    /// `RT_SCOPE_*`; [`RT_SCOPE_UNIVERSE`] for gateway routes, [`RT_SCOPE_LINK`] for device routes.
    pub scope: u8,
    /// `nhid ID`: the gateway, device and `onlink` live in nexthop object `ID` (see the
    /// `nexthop` module for why). Writing such a route writes the object first; a dumped one
    /// shows the object's gateway and device in the other fields.
    pub nexthop_id: Option<u32>,
}

impl Route {
    /// A route to `dst` in the main table with `ip route add`'s defaults (proto boot, scope
    /// global, no gateway, no device). Fill in the rest with the builder methods.
    pub fn new(dst: IpNetwork) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            protocol: RTPROT_BOOT,
            table: RT_TABLE_MAIN,
            scope: RT_SCOPE_UNIVERSE,
            nexthop_id: None,
        }
    }

    /// `nhid ID`: write the gateway, device and `onlink` as nexthop object `ID`, and the route
    /// pointing at it.
    pub fn nexthop(mut self, id: u32) -> Route {
        self.nexthop_id = Some(id);
        self
    }

    /// `via GATEWAY`.
    pub fn via(mut self, gateway: IpAddr) -> Route {
        self.gateway = Some(gateway);
        self
    }

    /// `dev IFINDEX`.
    pub fn dev(mut self, oif: u32) -> Route {
        self.oif = Some(oif);
        self
    }

    /// `onlink`.
    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    /// `scope SCOPE`.
    pub fn scope(mut self, scope: u8) -> Route {
        self.scope = scope;
        self
    }

    /// `proto PROTOCOL`.
    pub fn protocol(mut self, protocol: u8) -> Route {
        self.protocol = protocol;
        self
    }

    /// `table TABLE`.
    pub fn table(mut self, table: u32) -> Route {
        self.table = table;
        self
    }

    pub(super) fn describe(&self) -> String {
        let mut s = self.dst.to_string();
        if let Some(id) = self.nexthop_id {
            s.push_str(&format!(" nhid {id}"));
        }
        s.push_str(&next_hop_text(self.gateway, self.oif, self.onlink));
        if self.table != RT_TABLE_MAIN {
            s.push_str(&format!(" table {}", self.table));
        }
        s
    }

    /// The `RTM_NEWROUTE`/`RTM_DELROUTE` body. A delete leaves protocol, scope and type
    /// unspecified, like `ip route del`, so it matches whatever installed the route. With
    /// [`Route::nexthop_id`] the message names the object (`nhid ID`) instead of the gateway
    /// and device.
    pub(super) fn to_message(&self, for_delete: bool) -> RouteMessage {
        let by_object = self.nexthop_id;
        let mut m = RouteMessage::default();
        let h = &mut m.header;
        h.address_family = if self.dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        h.destination_prefix_length = self.dst.prefix();
        if let Ok(t) = u8::try_from(self.table) {
            h.table = t;
        } else {
            h.table = RouteHeader::RT_TABLE_UNSPEC;
            m.attributes.push(RouteAttribute::Table(self.table));
        }
        if for_delete {
            h.protocol = RouteProtocol::Unspec;
            h.scope = RouteScope::NoWhere;
            h.kind = RouteType::Unspec;
        } else {
            h.protocol = RouteProtocol::from(self.protocol);
            h.scope = RouteScope::from(self.scope);
            h.kind = RouteType::Unicast;
        }
        if self.onlink && by_object.is_none() {
            h.flags.insert(RouteFlags::Onlink);
        }
        if self.dst.prefix() != 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.ip(),
                )));
        }
        if let Some(id) = by_object {
            m.attributes.push(RouteAttribute::NhId(id));
            return m;
        }
        if let Some(g) = self.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        if let Some(o) = self.oif {
            m.attributes.push(RouteAttribute::Oif(o));
        }
        m
    }

    /// The nexthop object a route with [`Route::nexthop_id`] needs.
    pub(super) fn nexthop_object(&self, id: u32) -> Nexthop {
        Nexthop {
            id,
            gateway: self.gateway,
            oif: self.oif,
            onlink: self.onlink,
            protocol: self.protocol,
        }
    }

    /// Parses a dumped route; `None` for routes this type cannot describe (non-unicast,
    /// non-IP, malformed).
    pub(super) fn from_message(m: RouteMessage) -> Option<Route> {
        let h = &m.header;
        if h.kind != RouteType::Unicast {
            return None;
        }
        let mut table = u32::from(h.table);
        let mut dst_ip: Option<IpAddr> = None;
        let mut gateway = None;
        let mut oif = None;
        let mut nexthop_id = None;
        for attr in &m.attributes {
            match attr {
                RouteAttribute::NhId(id) => nexthop_id = Some(*id),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => dst_ip = route_ip(a),
                RouteAttribute::Gateway(a) => gateway = route_ip(a),
                RouteAttribute::Oif(o) => oif = Some(*o),
                _ => {}
            }
        }
        let dst_ip = match (dst_ip, h.address_family) {
            (Some(ip), _) => ip,
            (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        Some(Route {
            dst: IpNetwork::new(dst_ip, h.destination_prefix_length).ok()?,
            gateway,
            oif,
            onlink: h.flags.contains(RouteFlags::Onlink),
            protocol: u8::from(h.protocol),
            table,
            scope: u8::from(h.scope),
            nexthop_id,
        })
    }
}

/// An address of a link with its `IFA_F_*` flags (see [`Netlink::address_entries`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressEntry {
    /// The address with its prefix length.
    pub net: IpNetwork,
    /// `IFA_F_*` bits.
    pub flags: u32,
}

impl AddressEntry {
    /// `IFA_F_TEMPORARY` (an IPv6 privacy address; the same bit as `IFA_F_SECONDARY`).
    pub const TEMPORARY: u32 = 0x01;
    /// `IFA_F_DADFAILED`.
    pub const DADFAILED: u32 = 0x08;
    /// `IFA_F_DEPRECATED`.
    pub const DEPRECATED: u32 = 0x20;
    /// `IFA_F_PERMANENT` (configured, not from autoconfiguration).
    pub const PERMANENT: u32 = 0x80;

    /// Whether `flag` is set.
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// ` via GATEWAY dev #OIF onlink`, each part only when set: how `ip route` and `ip nexthop`
/// name a next hop, for messages.
pub(super) fn next_hop_text(gateway: Option<IpAddr>, oif: Option<u32>, onlink: bool) -> String {
    let mut s = String::new();
    if let Some(g) = gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(o) = oif {
        s.push_str(&format!(" dev #{o}"));
    }
    if onlink {
        s.push_str(" onlink");
    }
    s
}

pub(super) fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Netlink {
    /// Global- and link-scope addresses of link `index` with their prefix lengths
    /// (`ip addr show dev #INDEX scope global` plus `scope link`).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        Ok(self
            .address_entries(index)
            .await?
            .into_iter()
            .map(|a| a.net)
            .collect())
    }

    /// [`Netlink::addresses`] with each address's `IFA_FLAGS` (`ip addr show` prints them:
    /// `temporary`, `deprecated`, `dadfailed`, `permanent` ...), for choosing among IPv6
    /// addresses the way flannel does.
    pub async fn address_entries(&self, index: u32) -> Result<Vec<AddressEntry>> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        let replies = self
            .request(
                &format!("ip addr show dev #{index}"),
                RouteNetlinkMessage::GetAddress(m),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index
                || !matches!(a.header.scope, AddressScope::Universe | AddressScope::Link)
            {
                continue;
            }
            let mut local = None;
            let mut address = None;
            // The header carries the low 8 flag bits; IFA_FLAGS, when present, all of them.
            let mut flags = u32::from(a.header.flags.bits());
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    AddressAttribute::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(net) = IpNetwork::new(ip, a.header.prefix_len)
            {
                out.push(AddressEntry { net, flags });
            }
        }
        Ok(out)
    }

    pub(super) fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
        match addr.ip() {
            IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(ip, addr.prefix())
                .build(),
            IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(ip, addr.prefix())
                .build(),
        }
    }

    /// `ip addr add ADDR dev #INDEX` (`nodad` for IPv6, so the address is usable at once instead
    /// of after duplicate address detection). An address that is already there is success.
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let mut m = Self::address_message(index, addr);
        let mut op = format!("ip addr add {addr} dev #{index}");
        if addr.is_ipv6() {
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            op.push_str(" nodad");
        }
        match self
            .ack(
                &op,
                RouteNetlinkMessage::NewAddress(m),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) | Err(NetlinkError::Exists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `ip addr del ADDR dev #INDEX`. An address (or link) that is already gone is success.
    pub async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let m = Self::address_message(index, addr);
        let op = format!("ip addr del {addr} dev #{index}");
        match self.ack(&op, RouteNetlinkMessage::DelAddress(m), 0).await {
            Ok(()) | Err(NetlinkError::NotFound(_)) => Ok(()),
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::EADDRNOTAVAIL => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The unicast routes of the main table (`ip [-6] route show table main`).
    pub async fn routes(&self, family: IpFamily) -> Result<Vec<Route>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family.address_family();
        let op = match family {
            IpFamily::V4 => "ip -4 route show",
            IpFamily::V6 => "ip -6 route show",
        };
        let replies = self
            .request(
                op,
                RouteNetlinkMessage::GetRoute(m),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await?;
        let mut routes: Vec<Route> = replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .filter(|r| r.table == RT_TABLE_MAIN)
            .collect();
        // With `net.ipv4.nexthop_compat_mode=0` a route through an object shows only `nhid`:
        // fill in the object's gateway and device, so callers see the same either way.
        if routes
            .iter()
            .any(|r| r.nexthop_id.is_some() && r.gateway.is_none() && r.oif.is_none())
        {
            let objects: std::collections::HashMap<u32, Nexthop> = self
                .nexthops()
                .await?
                .into_iter()
                .map(|n| (n.id, n))
                .collect();
            for r in routes
                .iter_mut()
                .filter(|r| r.gateway.is_none() && r.oif.is_none())
            {
                if let Some(n) = r.nexthop_id.and_then(|id| objects.get(&id)) {
                    r.gateway = n.gateway;
                    r.oif = n.oif;
                    r.onlink = n.onlink;
                }
            }
        }
        Ok(routes)
    }

    /// `ip route add ROUTE`. [`NetlinkError::Exists`] if the same route is already there (the
    /// caller decides whether that is fine).
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        let op = format!("ip route add {}", route.describe());
        let msg = RouteNetlinkMessage::NewRoute(route.to_message(false));
        self.ack(&op, msg, NLM_F_CREATE | NLM_F_EXCL).await
    }

    /// `ip route replace ROUTE`: creates it, or overwrites the route to the same destination.
    /// With [`Route::nexthop_id`], `ip nexthop replace id ID via GATEWAY dev DEV [onlink]`
    /// first, then `ip route replace DST nhid ID`.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        self.write_one(KernelWrite::ReplaceRoute(route.clone()))
            .await
    }

    /// The `RTM_NEWROUTE` of [`Netlink::replace_route`] (the object, if any, not included).
    pub(super) fn replace_route_request(route: &Route) -> Prepared {
        let op = format!("ip route replace {}", route.describe());
        Prepared::write(op, RouteNetlinkMessage::NewRoute(route.to_message(false)))
    }

    /// One `RTM_DELROUTE` for `route` as given (`nhid` form when it names an object); "no
    /// such route" is success.
    pub(super) fn del_route_request(route: &Route) -> Prepared {
        let op = format!("ip route del {}", route.describe());
        Prepared::delete(op, RouteNetlinkMessage::DelRoute(route.to_message(true)))
    }

    /// `ip route del ROUTE`, matching destination, gateway, device and table (not protocol or
    /// scope). A route (or device) that is already gone is success.
    ///
    /// With [`Route::nexthop_id`]: `ip route del DST nhid ID` and, for a route written the old
    /// way, the same with its gateway inline, then `ip nexthop del id ID` (see
    /// [`Netlink::write_batch`] for why in that order).
    pub async fn del_route(&self, route: &Route) -> Result<()> {
        self.write_one(KernelWrite::DelRoute(route.clone())).await
    }
}
