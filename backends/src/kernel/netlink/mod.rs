//! # Netlink: the one module that speaks rtnetlink
//!
//! Everything the plugin and the daemon do to links, addresses and routes goes through
//! [`Netlink`], a thin intent-level layer over `rtnetlink` 0.24. Each method names the `ip`
//! command it is equivalent to, returns plain data ([`Link`], [`Route`], [`IpNetwork`]) instead of
//! netlink messages, and maps kernel errors onto the few cases callers branch on
//! ([`NetlinkError::NotFound`], [`NetlinkError::Exists`]).
//!
//! Design points:
//!
//! * **One request per intent.** A CNI ADD has about a millisecond for all of its netlink work,
//!   so nothing here dumps to look something up, sleeps or polls. A veth pair whose pod end is
//!   born inside the pod namespace with its final name, MTU and MAC is a single `RTM_NEWLINK`
//!   ([`Netlink::create_veth`]); creations ask the kernel to echo the new link (`NLM_F_ECHO`)
//!   instead of reading it back.
//! * **Sockets are bound to a namespace at creation.** [`Netlink::new`] talks to the calling
//!   thread's namespace; [`Netlink::new_in`] creates the socket on a throw-away thread inside
//!   another namespace ([`NetNs::run`]) and then drives it from the caller's runtime, so a pod can
//!   be configured without any thread of ours ever living in it.
//! * **Idempotence where the caller needs it.** Deleting something absent succeeds (or reports
//!   `false`), adding an address that is already there succeeds; creating a link or a route that
//!   exists is an [`NetlinkError::Exists`] the caller can match on.
//!
//! Requests go through the private `Netlink::request`, which sends one raw message and collects
//! the replies, so every method shares the same error mapping; [`Netlink::write_batch`] sends
//! several writes in one datagram (module `batch`). Sibling modules under `netlink/`
//! (neighbours, vxlan, monitoring) are children of this module and use the same private helpers
//! (`request`, `ack`, `create_link`, `NetlinkError::from_message`). The exception is
//! [`del_link_detached`], which speaks raw netlink from a forked child so that a CNI DEL need
//! not wait for the kernel's clean-up after a link is gone.
use std::io;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;

use crate::kernel::netns::NetNs;

pub use detached_del::del_link_detached;

mod batch;
mod blackhole;
mod detached_del;
mod error;
mod link;
mod monitor;
mod neigh;
mod nexthop;
mod route;
mod vxlan;

pub use batch::KernelWrite;
pub use blackhole::BLACKHOLE_METRIC;
pub use monitor::{Change, Monitor, MonitorEmpty, MonitorGroup};
pub use neigh::{FdbEntry, Neighbour};
pub use nexthop::{Nexthop, nexthop_id_for};
pub use vxlan::{DEFAULT_VXLAN_PORT, VxlanLink, VxlanOutcome, VxlanSpec};

pub use error::{NetlinkError, Result};
pub use link::{Link, VethSpec, format_mac, parse_mac, valid_ifname};
use link::{check_ifname, skip_stats};
use route::route_ip;
pub use route::{
    AddressEntry, IpFamily, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTPROT_BOOT,
    RTPROT_STATIC, Route,
};

/// A route-netlink socket bound to one network namespace, driven by a tokio runtime.
///
/// Cheap to clone: clones share the socket.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: netlink_proto::ConnectionHandle<RouteNetlinkMessage>,
    /// A duplicate of the socket's descriptor, for [`Netlink::netns`]: the connection task
    /// owns the socket, and a duplicate cannot be closed (and its number reused) under us.
    socket: Arc<OwnedFd>,
    /// The connection for nexthop objects (see `nexthop`), opened on first use.
    nexthop: Arc<tokio::sync::OnceCell<nexthop::NexthopHandle>>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace. The connection task is spawned
    /// on the current tokio runtime (a current-thread runtime is fine) and ends when the last
    /// clone of this handle is dropped.
    ///
    /// Errors when called outside a tokio runtime. Panics, like tokio itself, if the runtime was
    /// built without IO (`enable_io`/`enable_all`).
    pub fn new() -> Result<Netlink> {
        let op = "open netlink socket";
        let socket = bound_route_socket().map_err(|e| NetlinkError::other(op, e))?;
        Self::from_socket(op, socket)
    }

    /// The network namespace this socket works in (`ip netns identify` of the socket), from
    /// the socket itself ([`NetNs::of_socket`]) rather than a `/proc` path.
    pub fn netns(&self) -> io::Result<NetNs> {
        NetNs::of_socket(self.socket.as_fd())
    }

    /// Opens a socket inside `ns`, without moving any thread of the caller: the socket is created
    /// on a throw-away thread that entered `ns` ([`NetNs::run`]), then handed to the current
    /// tokio runtime. Everything done through the result happens in `ns`.
    ///
    /// Same runtime requirements as [`Netlink::new`].
    pub fn new_in(ns: &NetNs) -> Result<Netlink> {
        let op = format!("open netlink socket in {}", ns.path().display());
        let socket = ns
            .run(bound_route_socket)
            .and_then(|r| r)
            .map_err(|e| NetlinkError::other(&op, e))?;
        Self::from_socket(&op, socket)
    }

    /// [`Netlink::new_in`] without a helper thread: the socket is created on the calling thread
    /// inside `ns` via [`NetNs::run_on_this_thread`], which switches back to `home` right after
    /// (same restrictions: short-lived, single-threaded processes only).
    pub fn new_in_here(ns: &NetNs, home: &NetNs) -> Result<Netlink> {
        Self::new_in_here_with(ns, home, || ()).map(|(netlink, ())| netlink)
    }

    /// [`Netlink::new_in_here`] that also runs `also` inside `ns` during the same visit and
    /// returns its result — for things that, like the socket, bind to the namespace they are
    /// opened in (a `/proc/sys/net` knob, say), without paying a second pair of `setns`.
    pub fn new_in_here_with<T>(
        ns: &NetNs,
        home: &NetNs,
        also: impl FnOnce() -> T,
    ) -> Result<(Netlink, T)> {
        let op = format!("open netlink socket in {}", ns.path().display());
        let (socket, extra) = ns
            .run_on_this_thread(home, || (bound_route_socket(), also()))
            .map_err(|e| NetlinkError::other(&op, e))?;
        let socket = socket.map_err(|e| NetlinkError::other(&op, e))?;
        Ok((Self::from_socket(&op, socket)?, extra))
    }

    /// Drives an already bound route socket (whatever namespace it was made in) from the
    /// current tokio runtime.
    pub(super) fn from_socket(op: &str, socket: netlink_sys::Socket) -> Result<Netlink> {
        let rt = runtime(op)?;
        // Our own descriptor of the socket, for `netns` (the connection task owns the socket).
        let duplicate = socket
            .as_fd()
            .try_clone_to_owned()
            .map(Arc::new)
            .map_err(|e| NetlinkError::other(op, e))?;
        let (mut conn, handle, _) = connection::<RouteNetlinkMessage>(socket);
        // ACKs reach the caller: a batch (`write_batch`) tells its writes' outcomes apart by
        // them (a lone request's stream simply ends with its ACK either way).
        conn.set_forward_ack(true);
        rt.spawn(conn);
        Ok(Netlink {
            handle,
            socket: duplicate,
            nexthop: Arc::default(),
        })
    }

    /// Sends one request and collects the reply messages (dump parts, echoes) until the final
    /// ACK or `NLMSG_DONE`. A kernel error reply becomes a [`NetlinkError`] for `op`.
    pub(super) async fn request(
        &self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let replies = self
            .handle
            .request(req, netlink_sys::SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::other(op, e))?;
        collect_replies(op, replies).await
    }

    /// Sends a request that expects only an ACK.
    pub(super) async fn ack(&self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(op, msg, flags | NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(|_| ())
    }

    /// Creates a link with `NLM_F_ECHO` and returns the echoed description of it, if the kernel
    /// sent one (Linux 6.1+ does).
    pub(super) async fn create_link(
        &self,
        op: &str,
        msg: LinkMessage,
        name: &str,
    ) -> Result<Option<Link>> {
        let replies = self
            .request(
                op,
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            )
            .await?;
        Ok(replies.into_iter().rev().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => {
                Some(Link::from_message(l)).filter(|l| l.name == name)
            }
            _ => None,
        }))
    }
}
/// The messages of one request's replies (dump parts, echoes) up to its ACK or `NLM_DONE`; a
/// kernel error becomes a [`NetlinkError`] for `op`. Shared by the route and nexthop
/// connections.
async fn collect_replies<T>(
    op: &str,
    mut replies: impl futures::Stream<Item = NetlinkMessage<T>> + Unpin,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(NetlinkError::from_message(op, &e));
            }
            NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => break,
            NetlinkPayload::Overrun(_) => {
                return Err(NetlinkError::Other(format!("{op}: netlink reply overrun")));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A `NETLINK_ROUTE` socket bound in the calling thread's namespace.
fn bound_route_socket() -> io::Result<netlink_sys::Socket> {
    let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    s.bind_auto()?;
    Ok(s)
}

/// Hands a bound socket to tokio. Must be called inside a runtime context (callers check with
/// [`runtime`] first), which registering the descriptor needs.
fn tokio_socket(socket: netlink_sys::Socket) -> netlink_sys::TokioSocket {
    let raw = socket.into_raw_fd();
    // SAFETY: `raw` is an open netlink socket whose ownership we just released from `socket`;
    // the TokioSocket takes it over (and closes it on drop).
    unsafe { netlink_sys::TokioSocket::from_raw_fd(raw) }
}

/// A netlink-proto connection over `socket` for messages of type `T` (route messages, or our
/// own nexthop messages), to be spawned by the caller. Same runtime requirement as
/// [`tokio_socket`].
#[allow(clippy::type_complexity)]
fn connection<T>(
    socket: netlink_sys::Socket,
) -> (
    netlink_proto::Connection<T, netlink_sys::TokioSocket>,
    netlink_proto::ConnectionHandle<T>,
    futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<T>, netlink_sys::SocketAddr)>,
)
where
    T: std::fmt::Debug
        + netlink_packet_core::NetlinkSerializable
        + netlink_packet_core::NetlinkDeserializable
        + Unpin,
{
    netlink_proto::from_socket_with_codec::<T, netlink_sys::TokioSocket, netlink_proto::NetlinkCodec>(
        tokio_socket(socket),
    )
}

/// The runtime to spawn connection tasks on.
fn runtime(op: &str) -> Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        NetlinkError::Other(format!("{op}: must be called from inside a tokio runtime"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnetwork::IpNetwork;

    #[test]
    fn errno_mapping() {
        assert!(matches!(
            NetlinkError::from_errno("x", libc::EEXIST),
            NetlinkError::Exists(_)
        ));
        for e in [libc::ENODEV, libc::ENOENT, libc::ESRCH] {
            assert!(matches!(
                NetlinkError::from_errno("x", e),
                NetlinkError::NotFound(_)
            ));
        }
        let k = NetlinkError::from_errno("ip link add x", libc::EPERM);
        assert_eq!(k.errno(), Some(libc::EPERM));
        assert!(k.to_string().starts_with("ip link add x: "), "{k}");
    }

    #[test]
    fn ifname_validation() {
        for ok in [
            "eth0",
            "cni0",
            "veth1234abcd",
            "a.b",
            "x-y_z",
            "fifteen-chars-x",
        ] {
            assert!(valid_ifname(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn route_message_round_trip() {
        let r = Route::new("10.244.2.0/24".parse().unwrap())
            .via("10.244.2.0".parse().unwrap())
            .dev(7)
            .onlink();
        let back = Route::from_message(r.to_message(false)).unwrap();
        assert_eq!(back, r);
        let big = Route::new("10.244.0.0/16".parse().unwrap()).table(1000);
        let m = big.to_message(false);
        assert_eq!(m.header.table, 0);
        assert_eq!(Route::from_message(m).unwrap().table, 1000);
        let del = r.to_message(true);
        assert_eq!(u8::from(del.header.scope), 255);
        assert_eq!(u8::from(del.header.protocol), 0);
        let default =
            Route::from_message(Route::new("::/0".parse().unwrap()).to_message(false)).unwrap();
        assert_eq!(default.dst, "::/0".parse::<IpNetwork>().unwrap());
    }
}
