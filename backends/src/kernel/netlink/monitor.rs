//! # Kernel change notifications (`ip monitor`)
//!
//! Reconcile is level-triggered: it reads the kernel tables and fixes whatever differs from the
//! desired state. It runs periodically, and [`Monitor`] lets it also run soon after someone
//! (an administrator, another agent, a NIC bounce) changed links, IPv4 or IPv6 routes or
//! neighbours.
//!
//! The events are deliberately coarse ([`Change`]): the consumer does not patch state from them,
//! it only debounces and re-runs reconcile. That makes lost events harmless, and a socket buffer
//! overrun (`ENOBUFS`, when the kernel produces events faster than we read them) is simply
//! reported as [`Change::Overrun`], which means "something changed, look again".
//!
//! Nexthop objects ([`MonitorGroup::Nexthop`]) come on a second socket with our own message
//! type (`netlink-packet-route` has none for them); deleting an object removes its routes
//! without any route notification, so this is the only way to hear of it. Kernels without
//! nexthop objects refuse that group; the monitor then goes on without it.
//!
//! The multicast socket is bound to the namespace it is created in: [`Netlink::monitor`] uses
//! the calling thread's namespace, [`Netlink::monitor_in`] creates the socket inside another one
//! (on a throw-away thread, see [`NetNs::run`]) and drives it from the caller's runtime.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::channel::mpsc::UnboundedReceiver;
use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::RouteAttribute;
use netlink_sys::SocketAddr;

use super::nexthop::NexthopMessage;
use super::{Netlink, NetlinkError, Result, route_ip, runtime};
use crate::kernel::netns::NetNs;

/// A multicast group to subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MonitorGroup {
    /// `RTNLGRP_LINK`: links created, changed, deleted.
    Link,
    /// `RTNLGRP_IPV4_ROUTE`: IPv4 routes added or deleted.
    Ipv4Route,
    /// `RTNLGRP_IPV6_ROUTE`: IPv6 routes added or deleted.
    Ipv6Route,
    /// `RTNLGRP_NEIGH`: neighbour and FDB entries.
    Neigh,
    /// `RTNLGRP_NEXTHOP`: nexthop objects created, changed, deleted (Linux 5.3+).
    Nexthop,
}

impl MonitorGroup {
    /// Every group the overlay reconcile cares about.
    pub const ALL: [MonitorGroup; 5] = [
        MonitorGroup::Link,
        MonitorGroup::Ipv4Route,
        MonitorGroup::Ipv6Route,
        MonitorGroup::Neigh,
        MonitorGroup::Nexthop,
    ];

    fn rtnlgrp(self) -> u32 {
        match self {
            MonitorGroup::Link => libc::RTNLGRP_LINK,
            MonitorGroup::Ipv4Route => libc::RTNLGRP_IPV4_ROUTE,
            MonitorGroup::Ipv6Route => libc::RTNLGRP_IPV6_ROUTE,
            MonitorGroup::Neigh => libc::RTNLGRP_NEIGH,
            MonitorGroup::Nexthop => libc::RTNLGRP_NEXTHOP,
        }
    }
}

/// One coarse kernel change notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A link was created or changed (`deleted: false`) or deleted.
    Link {
        /// The link's ifindex.
        index: u32,
        /// Its name, when the notification carried it.
        name: Option<String>,
        /// `RTM_DELLINK`.
        deleted: bool,
    },
    /// A route was added or deleted.
    Route {
        /// Its destination, when it could be parsed.
        dst: Option<IpNetwork>,
        /// Its `RTPROT_*` protocol.
        protocol: u8,
        /// `RTM_DELROUTE`.
        deleted: bool,
    },
    /// A neighbour or FDB entry changed.
    Neigh {
        /// The device the entry belongs to.
        ifindex: u32,
        /// `RTM_DELNEIGH`.
        deleted: bool,
        /// An FDB entry (`AF_BRIDGE`) rather than an ARP/NDP entry.
        fdb: bool,
        /// The entry's IP address (a neighbour's; an FDB entry's remote), when present.
        ip: Option<std::net::IpAddr>,
        /// The link-layer address, when present.
        mac: Option<[u8; 6]>,
    },
    /// A nexthop object was created or changed (`deleted: false`) or deleted (which takes the
    /// routes using it along, silently).
    Nexthop {
        /// The object's id.
        id: Option<u32>,
        /// Its gateway, when it has one.
        gateway: Option<std::net::IpAddr>,
        /// `RTM_DELNEXTHOP`.
        deleted: bool,
    },
    /// The kernel dropped notifications (socket buffer overrun): anything may have changed.
    Overrun,
    /// Some other notification on a subscribed group.
    Other,
}

/// A stream of [`Change`]s from a multicast netlink socket (`ip monitor link route neigh`).
///
/// Ends (yields `None`) only if the socket fails. Dropping it closes the socket.
pub struct Monitor {
    rx: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    // Keeps the connection task's request side open for as long as the monitor lives.
    _handle: rtnetlink::Handle,
    /// Nexthop notifications, when subscribed and the kernel has them.
    nexthops: Option<NexthopReceiver>,
}

type NexthopReceiver = (
    UnboundedReceiver<(NetlinkMessage<NexthopMessage>, SocketAddr)>,
    netlink_proto::ConnectionHandle<NexthopMessage>,
);

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

/// The route-message socket for `groups`, and a second one for nexthop objects when asked
/// for (`None` inside when the kernel refuses the group; the reason is logged).
type MonitorSockets = (netlink_sys::Socket, Option<netlink_sys::Socket>);

/// A route-netlink socket subscribed to `groups`.
fn subscribed<'a>(
    groups: impl IntoIterator<Item = &'a MonitorGroup>,
) -> io::Result<netlink_sys::Socket> {
    let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(0, 0))?;
    for g in groups {
        s.add_membership(g.rtnlgrp())?;
    }
    Ok(s)
}

fn open_socket(groups: &[MonitorGroup]) -> io::Result<MonitorSockets> {
    let s = subscribed(groups.iter().filter(|g| **g != MonitorGroup::Nexthop))?;
    let nexthops = if groups.contains(&MonitorGroup::Nexthop) {
        match subscribed(&[MonitorGroup::Nexthop]) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::info!(error = %e, "no nexthop notifications from this kernel");
                None
            }
        }
    } else {
        None
    };
    Ok((s, nexthops))
}

impl Netlink {
    /// Subscribes to `groups` in the calling thread's network namespace (`ip monitor link route
    /// neigh`). Must be called inside a tokio runtime.
    pub fn monitor(groups: &[MonitorGroup]) -> Result<Monitor> {
        let op = "ip monitor";
        let socket = open_socket(groups).map_err(|e| NetlinkError::other(op, e))?;
        Monitor::from_socket(op, socket)
    }

    /// Subscribes to `groups` inside `ns`, without moving any thread of the caller (the socket
    /// is created on a throw-away thread in `ns`). Must be called inside a tokio runtime.
    pub fn monitor_in(ns: &NetNs, groups: &[MonitorGroup]) -> Result<Monitor> {
        let op = format!("ip -n {} monitor", ns.path().display());
        let groups = groups.to_vec();
        let socket = ns
            .run(move || open_socket(&groups))
            .and_then(|r| r)
            .map_err(|e| NetlinkError::other(&op, e))?;
        Monitor::from_socket(&op, socket)
    }
}

impl Monitor {
    fn from_socket(op: &str, (socket, nexthop_socket): MonitorSockets) -> Result<Monitor> {
        let rt = runtime(op)?;
        let (conn, handle, rx) = rtnetlink::from_socket(super::tokio_socket(socket));
        rt.spawn(conn);
        let nexthops = nexthop_socket.map(|s| {
            let (conn, handle, rx) = super::connection::<NexthopMessage>(s);
            rt.spawn(conn);
            (rx, handle)
        });
        Ok(Monitor {
            rx,
            _handle: handle,
            nexthops,
        })
    }

    /// The next change; `None` if the socket failed.
    pub async fn next_change(&mut self) -> Option<Change> {
        futures::StreamExt::next(self).await
    }

    /// Same as [`Monitor::next_change`] (named like a channel receiver's `recv`).
    pub async fn recv(&mut self) -> Option<Change> {
        self.next_change().await
    }

    /// An already queued change, without waiting (for draining a burst after a debounce).
    /// `Err` when nothing is queued or the socket failed.
    pub fn try_recv(&mut self) -> std::result::Result<Change, MonitorEmpty> {
        if let Ok((msg, _)) = self.rx.try_recv() {
            return Ok(classify(msg));
        }
        match &mut self.nexthops {
            Some((rx, _)) => rx
                .try_recv()
                .map(|(msg, _)| classify_nexthop(msg))
                .map_err(|_| MonitorEmpty),
            None => Err(MonitorEmpty),
        }
    }
}

/// [`Monitor::try_recv`] found nothing queued (or the socket failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no netlink change queued")]
pub struct MonitorEmpty;

fn classify(msg: NetlinkMessage<RouteNetlinkMessage>) -> Change {
    match msg.payload {
        NetlinkPayload::InnerMessage(m) => match m {
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                let deleted = msg.header.message_type == libc::RTM_DELLINK;
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                Change::Link {
                    index: l.header.index,
                    name,
                    deleted,
                }
            }
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                let deleted = msg.header.message_type == libc::RTM_DELROUTE;
                let ip = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => route_ip(d),
                    _ => None,
                });
                let dst =
                    ip.and_then(|ip| IpNetwork::new(ip, r.header.destination_prefix_length).ok());
                Change::Route {
                    dst,
                    protocol: u8::from(r.header.protocol),
                    deleted,
                }
            }
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                let (ip, mac) = super::neigh::parse_attrs(&n);
                Change::Neigh {
                    ifindex: n.header.ifindex,
                    deleted: msg.header.message_type == libc::RTM_DELNEIGH,
                    fdb: n.header.family == netlink_packet_route::AddressFamily::Bridge,
                    ip,
                    mac,
                }
            }
            _ => Change::Other,
        },
        NetlinkPayload::Overrun(_) => Change::Overrun,
        NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOBUFS => Change::Overrun,
        _ => Change::Other,
    }
}

fn classify_nexthop(msg: NetlinkMessage<NexthopMessage>) -> Change {
    match msg.payload {
        NetlinkPayload::InnerMessage(m) => Change::Nexthop {
            id: m.id(),
            gateway: m.gateway(),
            deleted: msg.header.message_type == super::nexthop::RTM_DELNEXTHOP,
        },
        NetlinkPayload::Overrun(_) => Change::Overrun,
        NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOBUFS => Change::Overrun,
        _ => Change::Other,
    }
}

impl Stream for Monitor {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        if let Poll::Ready(m) = Pin::new(&mut self.rx).poll_next(cx) {
            return Poll::Ready(m.map(|(msg, _)| classify(msg)));
        }
        match &mut self.nexthops {
            // A nexthop socket that failed leaves the route socket going.
            Some((rx, _)) => match Pin::new(rx).poll_next(cx) {
                Poll::Ready(Some((msg, _))) => Poll::Ready(Some(classify_nexthop(msg))),
                Poll::Ready(None) => {
                    self.nexthops = None;
                    Poll::Pending
                }
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Pending,
        }
    }
}
