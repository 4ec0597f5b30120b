//! # Blackhole routes
//!
//! `--ip-blackhole-route` keeps `blackhole <own subnet>` in the main table, so that packets
//! for addresses of this node's subnet that no pod holds are dropped here instead of following
//! the default route out of the node (and, on some networks, back in: a loop). It is installed
//! with a very high metric, so the bridge's connected route for the same prefix (metric 0)
//! keeps winning while it exists; the blackhole only answers when there is no bridge (e.g.
//! Canal-style setups) or the bridge is down.
//!
//! Route dumps elsewhere in this crate ([`super::Netlink::routes`]) list unicast routes only, so
//! the overlay's reconcile never mistakes the blackhole for a stale route of its own.

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{IpFamily, Netlink, NetlinkError, Result, route_ip};

/// The metric of our blackhole routes: below every ordinary route in preference.
pub const BLACKHOLE_METRIC: u32 = 0xffff_0000;

fn message(dst: IpNetwork, protocol: u8, metric: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    let h = &mut m.header;
    h.address_family = if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    h.destination_prefix_length = dst.prefix();
    h.table = RouteHeader::RT_TABLE_MAIN;
    h.protocol = RouteProtocol::from(protocol);
    h.scope = RouteScope::Universe;
    h.kind = RouteType::BlackHole;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst.ip())));
    m.attributes.push(RouteAttribute::Priority(metric));
    m
}

impl Netlink {
    /// `ip route replace blackhole DST proto PROTOCOL metric BLACKHOLE_METRIC`.
    pub async fn replace_blackhole_route(&self, dst: IpNetwork, protocol: u8) -> Result<()> {
        let op =
            format!("ip route replace blackhole {dst} proto {protocol} metric {BLACKHOLE_METRIC}");
        let msg = RouteNetlinkMessage::NewRoute(message(dst, protocol, BLACKHOLE_METRIC));
        self.ack(&op, msg, NLM_F_CREATE | NLM_F_REPLACE).await
    }

    /// `ip route del blackhole DST metric BLACKHOLE_METRIC`; gone already is success.
    pub async fn del_blackhole_route(&self, dst: IpNetwork) -> Result<()> {
        let op = format!("ip route del blackhole {dst} metric {BLACKHOLE_METRIC}");
        let mut m = message(dst, 0, BLACKHOLE_METRIC);
        m.header.protocol = RouteProtocol::Unspec;
        match self.ack(&op, RouteNetlinkMessage::DelRoute(m), 0).await {
            Ok(()) | Err(NetlinkError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `ip route show type blackhole`: destinations and protocols in the main table.
    pub async fn blackhole_routes(&self, family: IpFamily) -> Result<Vec<(IpNetwork, u8)>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family.address_family();
        let replies = self
            .request(
                "ip route show type blackhole",
                RouteNetlinkMessage::GetRoute(m),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r) if r.header.kind == RouteType::BlackHole => {
                    let dst = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Destination(d) => route_ip(d),
                        _ => None,
                    })?;
                    let net = IpNetwork::new(dst, r.header.destination_prefix_length).ok()?;
                    Some((net, u8::from(r.header.protocol)))
                }
                _ => None,
            })
            .collect())
    }
}
