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
//! the replies, so every method shares the same error mapping. Sibling modules under `netlink/`
//! (neighbours, vxlan, monitoring) are children of this module and use the same private helpers
//! (`request`, `ack`, `create_link`, `NetlinkError::from_message`). The exception is
//! [`del_link_detached`], which speaks raw netlink from a forked child so that a CNI DEL need
//! not wait for the kernel's ~20 ms of clean-up after a link is gone.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use futures::StreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, InfoBridgePort, InfoData,
    InfoPortData, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{AddressMessageBuilder, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth};

use crate::kernel::netns::NetNs;

pub use detached_del::del_link_detached;

mod blackhole;
mod detached_del;
mod monitor;
mod neigh;
mod vxlan;

pub use blackhole::BLACKHOLE_METRIC;
pub use monitor::{Change, Monitor, MonitorEmpty, MonitorGroup};
pub use neigh::{FdbEntry, Neighbour};
pub use vxlan::{DEFAULT_VXLAN_PORT, VxlanLink, VxlanOutcome, VxlanSpec};

/// Result of a netlink operation.
pub type Result<T> = std::result::Result<T, NetlinkError>;

/// What went wrong talking to the kernel. Every message starts with the operation, written like
/// the `ip` command that would have failed the same way.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The object, or something it refers to, does not exist (`ENODEV`, `ENOENT`, `ESRCH`).
    #[error("{0}")]
    NotFound(String),
    /// The object already exists (`EEXIST`).
    #[error("{0}")]
    Exists(String),
    /// Any other kernel refusal.
    #[error("{op}: {msg}")]
    Kernel {
        /// The operation, e.g. `ip link add cni0 type bridge`.
        op: String,
        /// The positive errno value.
        errno: i32,
        /// The kernel's error text.
        msg: String,
    },
    /// Not a kernel error: bad input, socket trouble, an unexpected reply.
    #[error("{0}")]
    Other(String),
}

impl NetlinkError {
    /// The errno behind this error, when it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Exists(_) => Some(libc::EEXIST),
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    fn from_errno(op: &str, errno: i32) -> NetlinkError {
        let msg = io::Error::from_raw_os_error(errno).to_string();
        match errno {
            libc::EEXIST => NetlinkError::Exists(format!("{op}: {msg}")),
            libc::ENODEV | libc::ENOENT | libc::ESRCH => {
                NetlinkError::NotFound(format!("{op}: {msg}"))
            }
            _ => NetlinkError::Kernel {
                op: op.to_string(),
                errno,
                msg,
            },
        }
    }

    fn from_message(op: &str, e: &ErrorMessage) -> NetlinkError {
        NetlinkError::from_errno(op, -e.raw_code())
    }

    fn other(op: &str, e: impl std::fmt::Display) -> NetlinkError {
        NetlinkError::Other(format!("{op}: {e}"))
    }
}

/// A network interface, as `ip -d link show` describes it.
#[derive(Clone, Debug)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND`: `"bridge"`, `"veth"`, `"vxlan"`, ...; `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// Hardware address, when it is a 6-byte Ethernet address.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Index of the master device (bridge), `IFLA_MASTER`.
    pub master: Option<u32>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace); for a vxlan, the
    /// underlay device.
    pub link: Option<u32>,
    /// `IFF_UP`: administratively up (`ip link set X up`).
    pub admin_up: bool,
    /// `IFF_RUNNING`: operationally up (state UP, or UNKNOWN for devices like `lo` that do not
    /// report carrier).
    pub oper_up: bool,
    /// `IFF_PROMISC` as requested by a user (`ip link set X promisc on`), not the bridge-port
    /// promiscuity counter.
    pub promisc: bool,
    /// `net.ipv6.conf.<name>.accept_ra` as the link dump reports it (`IFLA_AF_SPEC` >
    /// `AF_INET6` > `IFLA_INET6_CONF`), so a caller can check the knob without a `/proc/sys`
    /// lookup; `None` when the device has no IPv6 state (IPv6 disabled at boot).
    pub ipv6_accept_ra: Option<i32>,
}

impl Link {
    fn from_message(m: LinkMessage) -> Link {
        let flags = m.header.flags;
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            master: None,
            link: None,
            admin_up: flags.contains(LinkFlags::Up),
            oper_up: flags.contains(LinkFlags::Running),
            promisc: flags.contains(LinkFlags::Promisc),
            ipv6_accept_ra: None,
        };
        for attr in m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(v) => link.mtu = v,
                LinkAttribute::Controller(v) if v != 0 => link.master = Some(v),
                LinkAttribute::Link(v) if v != 0 => link.link = Some(v),
                LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                LinkAttribute::AfSpecUnspec(families) => {
                    link.ipv6_accept_ra = ipv6_accept_ra(&families);
                }
                _ => {}
            }
        }
        link
    }
}

/// `accept_ra` from a link's per-family data (`IFLA_AF_SPEC` > `AF_INET6` > `IFLA_INET6_CONF`).
fn ipv6_accept_ra(families: &[AfSpecUnspec]) -> Option<i32> {
    families
        .iter()
        .filter_map(|family| match family {
            AfSpecUnspec::Inet6(inet6) => Some(inet6),
            _ => None,
        })
        .flatten()
        .find_map(|a| match a {
            AfSpecInet6::DevConf(conf) => Some(conf.accept_ra),
            _ => None,
        })
}

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

    fn address_family(self) -> AddressFamily {
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
        }
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

    fn describe(&self) -> String {
        let mut s = self.dst.to_string();
        if let Some(g) = self.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(o) = self.oif {
            s.push_str(&format!(" dev #{o}"));
        }
        if self.onlink {
            s.push_str(" onlink");
        }
        if self.table != RT_TABLE_MAIN {
            s.push_str(&format!(" table {}", self.table));
        }
        s
    }

    /// The `RTM_NEWROUTE`/`RTM_DELROUTE` body. A delete leaves protocol, scope and type
    /// unspecified, like `ip route del`, so it matches whatever installed the route.
    fn to_message(&self, for_delete: bool) -> RouteMessage {
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
        if self.onlink {
            h.flags.insert(RouteFlags::Onlink);
        }
        if self.dst.prefix() != 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.ip(),
                )));
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

    /// Parses a dumped route; `None` for routes this type cannot describe (non-unicast,
    /// non-IP, malformed).
    fn from_message(m: RouteMessage) -> Option<Route> {
        let h = &m.header;
        if h.kind != RouteType::Unicast {
            return None;
        }
        let mut table = u32::from(h.table);
        let mut dst_ip: Option<IpAddr> = None;
        let mut gateway = None;
        let mut oif = None;
        for attr in &m.attributes {
            match attr {
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
        })
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A veth pair to create with [`Netlink::create_veth`].
pub struct VethSpec<'a> {
    /// Name of the end that stays in this namespace.
    pub host_name: &'a str,
    /// Name of the other end, created directly inside `peer_ns` (e.g. `eth0`).
    pub peer_name: &'a str,
    /// MTU of **both** ends.
    pub mtu: Option<u32>,
    /// Bridge to attach the host end to.
    pub master: Option<u32>,
    /// Bring the host end up. The peer end is left down for its owner to configure.
    pub host_up: bool,
    /// Namespace the peer end is born in (may be the current one).
    pub peer_ns: &'a NetNs,
    /// MAC address of the peer end; the kernel picks a random one when `None`.
    pub peer_mac: Option<[u8; 6]>,
}

/// Whether `name` is an acceptable interface name (the kernel's `dev_valid_name`): 1 to 15 bytes,
/// not `.` or `..`, no `/`, `:` or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

fn check_ifname(field: &str, name: &str) -> Result<()> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(NetlinkError::Other(format!(
            "invalid {field} {name:?}: interface names are 1-15 bytes without '/', ':' or whitespace"
        )))
    }
}

/// A MAC address as `ip link` prints it: `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits in either case, exactly two per byte); `None` if
/// malformed.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `numtxqueues 1 numrxqueues 1`.
fn single_queue() -> [LinkAttribute; 2] {
    [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]
}

/// `addrgenmode none`: the link gets no IPv6 link-local address (so sends no DAD, RS or MLD).
fn no_ipv6_address_generation() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])])
}

/// Requests the kernel to leave statistics out of link replies (`RTEXT_FILTER_SKIP_STATS`):
/// we never read them and they are most of a link message.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

/// A route-netlink socket bound to one network namespace, driven by a tokio runtime.
///
/// Cheap to clone: clones share the socket.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// A duplicate of the socket's descriptor, for [`Netlink::netns`]: the connection task
    /// owns the socket, and a duplicate cannot be closed (and its number reused) under us.
    socket: Arc<OwnedFd>,
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
    fn from_socket(op: &str, socket: netlink_sys::Socket) -> Result<Netlink> {
        let rt = runtime(op)?;
        // Our own descriptor of the socket, for `netns` (the connection task owns the socket).
        let duplicate = socket
            .as_fd()
            .try_clone_to_owned()
            .map(Arc::new)
            .map_err(|e| NetlinkError::other(op, e))?;
        let raw = socket.into_raw_fd();
        // SAFETY: `raw` is an open netlink socket whose ownership we just released from `socket`;
        // the TokioSocket takes it over (and closes it on drop). We are inside a runtime context
        // (checked above), which `from_raw_fd` needs to register the descriptor.
        let socket = unsafe { netlink_sys::TokioSocket::from_raw_fd(raw) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        rt.spawn(conn);
        Ok(Netlink {
            handle,
            socket: duplicate,
        })
    }

    /// Sends one request and collects the reply messages (dump parts, echoes) until the final
    /// ACK or `NLMSG_DONE`. A kernel error reply becomes a [`NetlinkError`] for `op`.
    async fn request(
        &self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(req)
            .map_err(|e| NetlinkError::other(op, e))?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NetlinkError::from_message(op, &e));
                }
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => break,
                NetlinkPayload::Noop => {}
                NetlinkPayload::Overrun(_) => {
                    return Err(NetlinkError::Other(format!("{op}: netlink reply overrun")));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Sends a request that expects only an ACK.
    async fn ack(&self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(op, msg, flags | NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(|_| ())
    }

    /// Creates a link with `NLM_F_ECHO` and returns the echoed description of it, if the kernel
    /// sent one (Linux 6.1+ does).
    async fn create_link(&self, op: &str, msg: LinkMessage, name: &str) -> Result<Option<Link>> {
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

    /// One link by name (`ip link show NAME`); `None` if there is no such link.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        if !valid_ifname(name) {
            // No such link can exist.
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(skip_stats());
        self.get_link(&format!("ip link show {name}"), m).await
    }

    /// One link by index (`ip link show dev #INDEX`); `None` if there is no such link.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(skip_stats());
        self.get_link(&format!("ip link show #{index}"), m).await
    }

    async fn get_link(&self, op: &str, m: LinkMessage) -> Result<Option<Link>> {
        Ok(self.get_link_message(op, m).await?.map(Link::from_message))
    }

    async fn get_link_message(&self, op: &str, m: LinkMessage) -> Result<Option<LinkMessage>> {
        match self
            .request(op, RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST)
            .await
        {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(NetlinkError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace (`ip link show`).
    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(skip_stats());
        let replies = self
            .request(
                "ip link show",
                RouteNetlinkMessage::GetLink(m),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Makes sure bridge `name` exists and is up: `ip link add NAME type bridge [mtu M]; ip link
    /// set NAME up`.
    ///
    /// The usual case (the bridge exists and is up) costs one lookup. A concurrent creator
    /// winning the race (`EEXIST`) is success. The MTU of an existing bridge is left alone.
    /// Errors with [`NetlinkError::Other`] naming the device if `name` exists but is not a
    /// bridge.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        check_ifname("bridge name", name)?;
        if let Some(link) = self.link(name).await? {
            return self.bridge_up(link).await;
        }
        let op = match mtu {
            Some(m) => format!("ip link add {name} type bridge mtu {m}"),
            None => format!("ip link add {name} type bridge"),
        };
        let mut builder = LinkBridge::new(name); // includes `up`
        if let Some(m) = mtu {
            builder = builder.mtu(m);
        }
        match self.create_link(&op, builder.build(), name).await {
            Ok(Some(link)) => Ok(link),
            Ok(None) | Err(NetlinkError::Exists(_)) => match self.link(name).await? {
                Some(link) => self.bridge_up(link).await,
                None => Err(NetlinkError::NotFound(format!(
                    "{op}: {name} vanished right after creation"
                ))),
            },
            Err(e) => Err(e),
        }
    }

    async fn bridge_up(&self, mut link: Link) -> Result<Link> {
        if link.kind.as_deref() != Some("bridge") {
            return Err(NetlinkError::Other(format!(
                "{} exists but is not a bridge (kind {})",
                link.name,
                link.kind.as_deref().unwrap_or("none")
            )));
        }
        if !link.admin_up {
            self.set_up(link.index).await?;
            link.admin_up = true;
        }
        Ok(link)
    }

    /// Creates a veth pair in one `RTM_NEWLINK`: `ip link add HOST [mtu M] [master BR] [up] type
    /// veth peer name PEER [mtu M] [address MAC] netns PEER_NS`, both ends with
    /// `numtxqueues 1 numrxqueues 1`.
    ///
    /// The peer is born inside `spec.peer_ns` with its final name, MTU and MAC, so it never
    /// appears in this namespace. Returns the host end (its `link` is the peer's ifindex).
    /// [`NetlinkError::Exists`] if either name is taken in its namespace.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link> {
        check_ifname("host veth name", spec.host_name)?;
        check_ifname("peer veth name", spec.peer_name)?;
        let mut op = format!("ip link add {}", spec.host_name);
        let mut peer =
            LinkUnspec::new_with_name(spec.peer_name).setns_by_fd(spec.peer_ns.as_raw_fd());
        let mut host = LinkVeth::new(spec.host_name, spec.peer_name);
        if let Some(m) = spec.mtu {
            peer = peer.mtu(m);
            host = host.mtu(m);
            op.push_str(&format!(" mtu {m}"));
        }
        if let Some(br) = spec.master {
            host = host.controller(br);
            op.push_str(&format!(" master #{br}"));
        }
        if spec.host_up {
            host = host.up();
            op.push_str(" up");
        }
        op.push_str(&format!(" type veth peer name {}", spec.peer_name));
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.to_vec());
            op.push_str(&format!(" address {}", format_mac(&mac)));
        }
        op.push_str(&format!(" netns {}", spec.peer_ns.path().display()));
        // One TX and one RX queue per end (`numtxqueues 1 numrxqueues 1`). Without them the
        // kernel allocates one of each per possible CPU for a veth (veth transmits without a
        // queue lock, so the extra queues buy nothing). Kernels that then expose only one
        // (6.18 here: default `numtxqueues 2`, but sysfs holds only `rx-0`/`tx-0`) still
        // allocate the rest; older ones also give each a sysfs directory.
        let mut peer_msg = peer.build();
        peer_msg.attributes.extend(single_queue());
        let mut msg = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        msg.attributes.extend(single_queue());

        let link = match self.create_link(&op, msg, spec.host_name).await? {
            Some(mut link) => {
                // The kernel echoes the link before it attaches it to the master.
                if spec.master.is_some() {
                    link.master = spec.master;
                }
                link
            }
            None => self.link(spec.host_name).await?.ok_or_else(|| {
                NetlinkError::NotFound(format!(
                    "{op}: {} vanished right after creation",
                    spec.host_name
                ))
            })?,
        };
        Ok(link)
    }

    /// `ip link set dev #INDEX type bridge_slave hairpin on|off` (`IFLA_BRPORT_MODE`). The link
    /// must be a bridge port.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        let op = format!(
            "ip link set #{index} type bridge_slave hairpin {}",
            if on { "on" } else { "off" }
        );
        self.ack(&op, RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// The hairpin setting of bridge port `index` (`ip -d link show` → `hairpin on`); `None` if
    /// the link does not exist or is not a bridge port.
    pub async fn bridge_port_hairpin(&self, index: u32) -> Result<Option<bool>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(skip_stats());
        let Some(msg) = self
            .get_link_message(&format!("ip -d link show #{index}"), m)
            .await?
        else {
            return Ok(None);
        };
        for attr in msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    if let LinkInfo::PortData(InfoPortData::BridgePort(port)) = info {
                        for p in port {
                            if let InfoBridgePort::HairpinMode(h) = p {
                                return Ok(Some(h));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// `ip link set dev #INDEX up`.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.ack(
            &format!("ip link set #{index} up"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// `ip link set dev #INDEX addrgenmode none`: the link gets no IPv6 link-local address, so
    /// it sends no DAD, router solicitation or MLD traffic. For bridge ports, which need no
    /// address of their own: on a node with hundreds of pods that background multicast floods
    /// every port. Set it before the link gets carrier (address generation starts then).
    pub async fn set_ipv6_addr_gen_none(&self, index: u32) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes.push(no_ipv6_address_generation());
        self.ack(
            &format!("ip link set #{index} addrgenmode none"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// Readies a fresh bridge port in one request: `ip link set dev #INDEX up addrgenmode none
    /// type bridge_slave hairpin on|off`. See [`Netlink::set_ipv6_addr_gen_none`] for why the
    /// port gets no IPv6 address.
    ///
    /// The kernel applies `up` before `addrgenmode`, so call this on a port whose link has no
    /// carrier yet and whose pending carrier event has been processed
    /// ([`crate::kernel::ethtool::settle_link`]): the `up` then neither starts IPv6 address
    /// generation nor enables the bridge port, both of which wait for carrier.
    pub async fn setup_bridge_port(&self, index: u32, hairpin: bool) -> Result<()> {
        let mut msg = LinkBridgePort::new(index).hairpin(hairpin).build();
        msg.header.flags |= LinkFlags::Up;
        msg.header.change_mask |= LinkFlags::Up;
        msg.attributes.push(no_ipv6_address_generation());
        let op = format!(
            "ip link set #{index} up addrgenmode none type bridge_slave hairpin {}",
            if hairpin { "on" } else { "off" }
        );
        self.ack(&op, RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// `ip link set dev #INDEX up` and `sysctl net.ipv4.conf.<dev>.arp_notify=1` in one request
    /// (the sysctl travels as `IFLA_AF_SPEC` → `AF_INET` → `IFLA_INET_CONF`, which sets only the
    /// values present). With `arp_notify` the kernel announces the interface's addresses with a
    /// gratuitous ARP whenever its MAC changes. The kernel applies the flags before
    /// `IFLA_AF_SPEC`, so this `up` itself is not announced; see [`Netlink::announce`].
    pub async fn set_up_with_arp_notify(&self, index: u32) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(index).up().build();
        let mut conf = InetDevConf::default();
        conf.arp_notify = 1;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.ack(
            &format!("ip link set #{index} up && sysctl net.ipv4.conf.#{index}.arp_notify=1"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// `ip link set dev #INDEX down`.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.ack(
            &format!("ip link set #{index} down"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// `ip link set dev #INDEX promisc on|off`.
    pub async fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).promiscuous(on).build();
        let op = format!(
            "ip link set #{index} promisc {}",
            if on { "on" } else { "off" }
        );
        self.ack(&op, RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// `ip link set dev #INDEX address MAC`.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        let op = format!("ip link set #{index} address {}", format_mac(&mac));
        self.ack(&op, RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// `ip link set dev #INDEX mtu MTU`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.ack(
            &format!("ip link set #{index} mtu {mtu}"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// `ip link set dev #INDEX master #MASTER`.
    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(master).build();
        self.ack(
            &format!("ip link set #{index} master #{master}"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// Global- and link-scope addresses of link `index` with their prefix lengths
    /// (`ip addr show dev #INDEX scope global` plus `scope link`).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
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
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(net) = IpNetwork::new(ip, a.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
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
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .filter(|r| r.table == RT_TABLE_MAIN)
            .collect())
    }

    /// `ip route add ROUTE`. [`NetlinkError::Exists`] if the same route is already there (the
    /// caller decides whether that is fine).
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        let op = format!("ip route add {}", route.describe());
        let msg = RouteNetlinkMessage::NewRoute(route.to_message(false));
        self.ack(&op, msg, NLM_F_CREATE | NLM_F_EXCL).await
    }

    /// `ip route replace ROUTE`: creates it, or overwrites the route to the same destination.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        let op = format!("ip route replace {}", route.describe());
        let msg = RouteNetlinkMessage::NewRoute(route.to_message(false));
        self.ack(&op, msg, NLM_F_CREATE | NLM_F_REPLACE).await
    }

    /// `ip route del ROUTE`, matching destination, gateway, device and table (not protocol or
    /// scope). A route (or device) that is already gone is success.
    pub async fn del_route(&self, route: &Route) -> Result<()> {
        let op = format!("ip route del {}", route.describe());
        let msg = RouteNetlinkMessage::DelRoute(route.to_message(true));
        match self.ack(&op, msg, 0).await {
            Ok(()) | Err(NetlinkError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `ip link del NAME`. Returns `false` if there was no such link. Deleting one end of a veth
    /// pair removes both.
    pub async fn del_link(&self, name: &str) -> Result<bool> {
        if !valid_ifname(name) {
            return Ok(false);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.del_link_message(&format!("ip link del {name}"), m)
            .await
    }

    /// `ip link del dev #INDEX`. Returns `false` if there was no such link.
    pub async fn del_link_index(&self, index: u32) -> Result<bool> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.del_link_message(&format!("ip link del #{index}"), m)
            .await
    }

    async fn del_link_message(&self, op: &str, m: LinkMessage) -> Result<bool> {
        match self.ack(op, RouteNetlinkMessage::DelLink(m), 0).await {
            Ok(()) => Ok(true),
            Err(NetlinkError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A `NETLINK_ROUTE` socket bound in the calling thread's namespace.
fn bound_route_socket() -> io::Result<netlink_sys::Socket> {
    let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    s.bind_auto()?;
    Ok(s)
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
