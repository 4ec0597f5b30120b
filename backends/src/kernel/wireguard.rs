//! The kernel path of the wireguard backend: a kernel WireGuard device configured over
//! generic netlink, as `wg` does it, without the `wg` binary.
//!
//! Three requests, each a netlink datagram built here byte by byte and answered by an ACK:
//!
//! 1. [`create_link`]: `RTM_NEWLINK` on a `NETLINK_ROUTE` socket, the equivalent of
//!    `ip link add flannel-wg mtu 1420 type wireguard`. A kernel without the module answers
//!    `EOPNOTSUPP` ("Unknown device type"): [`LinkCreate::Unsupported`].
//! 2. [`KernelWireguard::open`]: `CTRL_CMD_GETFAMILY` of the generic netlink family
//!    `"wireguard"`, the lookup `wg` starts with (`genl ctrl get name wireguard`). `ENOENT`
//!    means no module: `Ok(None)`, and the backend uses its in-process path instead.
//! 3. [`KernelWireguard::set_device`]: `WG_CMD_SET_DEVICE`, the equivalent of
//!    `wg set flannel-wg private-key F listen-port 51820 peer P endpoint E allowed-ips A,...`.
//!    A configuration too big for one message of [`MAX_MESSAGE`] bytes is split as the uapi
//!    header asks: later messages carry the interface name and the next peers, never
//!    `WGDEVICE_F_REPLACE_PEERS` again, and a peer whose allowed IPs do not fit goes on in
//!    the next message without `WGPEER_F_REPLACE_ALLOWEDIPS`.
//!
//! The message builders and [`parse_family_id`] are pure and tested byte by byte; the
//! executor is a blocking socket with one request in flight. Netlink headers and attributes
//! are in host byte order, ports and addresses in network order.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ipnetwork::IpNetwork;

// include/uapi/linux/netlink.h, genetlink.h, rtnetlink.h and if_link.h.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = 0x3fff;
const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_VERSION: u8 = 1; // what wireguard-tools' mnlg sends; not checked by the kernel
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
// include/uapi/linux/wireguard.h (torvalds/linux); wgctrl-go's
// internal/wglinux/configure_linux.go encodes the same through golang.org/x/sys/unix.
const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;
const WG_CMD_SET_DEVICE: u8 = 1;
const WGDEVICE_F_REPLACE_PEERS: u32 = 1 << 0;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_FLAGS: u16 = 5;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_F_REMOVE_ME: u32 = 1 << 0;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 1 << 1;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

/// The largest `WG_CMD_SET_DEVICE` message sent, as in wgctrl-go (wireguard-tools splits at
/// its page-sized buffer; the kernel takes much more).
pub const MAX_MESSAGE: usize = 32 * 1024;
/// Room for one peer part: a message less its headers, name, key, port, flags and nest.
const MAX_PEER_PART: usize = MAX_MESSAGE - 128;

/// Errors of the kernel path.
#[derive(Debug, thiserror::Error)]
pub enum KernelWgError {
    /// `CTRL_CMD_GETFAMILY` answered `ENOENT`: no wireguard module.
    #[error("no \"wireguard\" generic netlink family (no kernel module)")]
    NoFamily,
    #[error("{0}: {1}")]
    Io(&'static str, #[source] io::Error),
    /// A non-zero `NLMSG_ERROR`: (request, device or family, errno).
    #[error("{0} {1}: {err}", err = io::Error::from_raw_os_error(*.2))]
    Refused(&'static str, String, i32),
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
}

/// A device's configuration, as `wg set` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDevice {
    pub ifname: String,
    pub private_key: [u8; 32],
    pub listen_port: u16,
    /// Remove the peers not listed (`wg syncconf` rather than `wg set`).
    pub replace_peers: bool,
    pub peers: Vec<WgPeer>,
}

/// One peer. Unless `remove`d (`wg set DEV peer P remove`), its allowed IPs replace the
/// kernel's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: [u8; 32],
    pub preshared_key: Option<[u8; 32]>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub allowed_ips: Vec<IpNetwork>,
    pub remove: bool,
}

/// What [`create_link`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCreate {
    Created,
    /// `EEXIST`: a link of that name (of whatever type) is already there.
    Exists,
    /// `EOPNOTSUPP`, "Unknown device type": no wireguard module.
    Unsupported,
}

/// A `struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid }`, `len` patched by
/// [`finish`], then `extra` (a genlmsghdr or an ifinfomsg).
fn header(ty: u16, flags: u16, seq: u32, extra: &[u8]) -> Vec<u8> {
    let mut b = [0u32.to_ne_bytes(), [0; 4], seq.to_ne_bytes(), [0; 4]].concat();
    b[4..6].copy_from_slice(&ty.to_ne_bytes());
    b[6..8].copy_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(extra);
    b
}

fn finish(mut b: Vec<u8>) -> Vec<u8> {
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b
}

/// Appends an attribute `{ u16 len; u16 type }` and its payload, padded to 4 bytes.
fn attr(b: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    b.extend_from_slice(&(4 + payload.len() as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(payload);
    b.resize(b.len().next_multiple_of(4), 0);
}

fn string(b: &mut Vec<u8>, ty: u16, s: &str) {
    attr(b, ty, &[s.as_bytes(), &[0]].concat());
}

/// Opens a nested attribute; returns its offset for [`end`].
fn nest(b: &mut Vec<u8>, ty: u16) -> usize {
    attr(b, ty | NLA_F_NESTED, &[]);
    b.len() - 4
}

fn end(b: &mut [u8], at: usize) {
    let len = (b.len() - at) as u16;
    b[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// `CTRL_CMD_GETFAMILY` of the family `"wireguard"` (`genl ctrl get name wireguard`).
pub fn get_family_request(seq: u32) -> Vec<u8> {
    family_request(WG_GENL_NAME, seq)
}

fn family_request(name: &str, seq: u32) -> Vec<u8> {
    let genl = [CTRL_CMD_GETFAMILY, CTRL_VERSION, 0, 0];
    let mut b = header(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, &genl);
    string(&mut b, CTRL_ATTR_FAMILY_NAME, name);
    finish(b)
}

/// The family id in a `CTRL_CMD_NEWFAMILY` reply (an ACK may follow); an `NLMSG_ERROR`
/// `ENOENT` is [`KernelWgError::NoFamily`].
pub fn parse_family_id(reply: &[u8]) -> Result<u16, KernelWgError> {
    for (ty, msg) in messages(reply)? {
        let payload = &msg[NLMSG_HDRLEN..];
        match (ty, error_code(ty, payload)?) {
            (NLMSG_ERROR, 0) => {}
            (NLMSG_ERROR, libc::ENOENT) => return Err(KernelWgError::NoFamily),
            (NLMSG_ERROR, e) => {
                return Err(KernelWgError::Refused("getfamily", "wireguard".into(), e));
            }
            (GENL_ID_CTRL, _) if payload.len() >= 4 && payload[0] == CTRL_CMD_NEWFAMILY => {
                let mut id = attrs(&payload[4..])
                    .filter(|(t, v)| t & NLA_TYPE_MASK == CTRL_ATTR_FAMILY_ID && v.len() == 2);
                if let Some((_, v)) = id.next() {
                    return Ok(u16::from_ne_bytes([v[0], v[1]]));
                }
            }
            _ => {}
        }
    }
    Err(KernelWgError::Malformed("no CTRL_ATTR_FAMILY_ID"))
}

/// `RTM_NEWLINK` for `ip link add IFNAME mtu MTU type wireguard`.
pub fn create_link_request(ifname: &str, mtu: u32, seq: u32) -> Vec<u8> {
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let mut b = header(RTM_NEWLINK, flags, seq, &[0; 16]); // ifinfomsg: AF_UNSPEC, no index
    string(&mut b, IFLA_IFNAME, ifname);
    attr(&mut b, IFLA_MTU, &mtu.to_ne_bytes());
    let info = nest(&mut b, IFLA_LINKINFO);
    string(&mut b, IFLA_INFO_KIND, WG_GENL_NAME);
    end(&mut b, info);
    finish(b)
}

/// The `WG_CMD_SET_DEVICE` messages for `wg set IFNAME private-key F listen-port N peer ...`
/// (or, with `replace_peers`, `wg syncconf`), numbered from `first_seq`, each at most
/// [`MAX_MESSAGE`] bytes.
pub fn set_device_messages(family_id: u16, dev: &WgDevice, first_seq: u32) -> Vec<Vec<u8>> {
    let mut parts = dev.peers.iter().flat_map(peer_parts).peekable();
    let mut out = Vec::new();
    loop {
        let seq = first_seq.wrapping_add(out.len() as u32);
        let genl = [WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0, 0];
        let mut b = header(family_id, NLM_F_REQUEST | NLM_F_ACK, seq, &genl);
        string(&mut b, WGDEVICE_A_IFNAME, &dev.ifname);
        if out.is_empty() {
            attr(&mut b, WGDEVICE_A_PRIVATE_KEY, &dev.private_key);
            let port = dev.listen_port.to_ne_bytes();
            attr(&mut b, WGDEVICE_A_LISTEN_PORT, &port);
            let flags = if dev.replace_peers {
                WGDEVICE_F_REPLACE_PEERS
            } else {
                0
            };
            attr(&mut b, WGDEVICE_A_FLAGS, &flags.to_ne_bytes());
        }
        let (peers, mut count) = (nest(&mut b, WGDEVICE_A_PEERS), 0u16);
        // A part is at most MAX_PEER_PART bytes, so the first always fits.
        while let Some(mut part) = parts.next_if(|p| count == 0 || b.len() + p.len() <= MAX_MESSAGE)
        {
            // The peer's nest type is its index in this message, as in wgctrl-go.
            part[2..4].copy_from_slice(&(count | NLA_F_NESTED).to_ne_bytes());
            b.extend_from_slice(&part);
            count += 1;
        }
        if count == 0 {
            b.truncate(peers); // no empty WGDEVICE_A_PEERS
        } else {
            end(&mut b, peers);
        }
        out.push(finish(b));
        if parts.peek().is_none() {
            return out;
        }
    }
}

/// A peer as nested attributes of at most [`MAX_PEER_PART`] bytes each: one, unless its
/// allowed IPs overflow. Only the first part replaces the allowed IPs and sets the rest.
fn peer_parts(peer: &WgPeer) -> Vec<Vec<u8>> {
    let ips: &[IpNetwork] = if peer.remove { &[] } else { &peer.allowed_ips };
    let (mut parts, mut done) = (Vec::new(), 0);
    while parts.is_empty() || done < ips.len() {
        let mut b = Vec::new();
        nest(&mut b, 0);
        attr(&mut b, WGPEER_A_PUBLIC_KEY, &peer.public_key);
        let flags = match (peer.remove, parts.is_empty()) {
            (true, _) => WGPEER_F_REMOVE_ME,
            (false, true) => WGPEER_F_REPLACE_ALLOWEDIPS,
            (false, false) => 0,
        };
        attr(&mut b, WGPEER_A_FLAGS, &flags.to_ne_bytes());
        if parts.is_empty() && !peer.remove {
            if let Some(psk) = &peer.preshared_key {
                attr(&mut b, WGPEER_A_PRESHARED_KEY, psk);
            }
            if let Some(ep) = &peer.endpoint {
                attr(&mut b, WGPEER_A_ENDPOINT, &sockaddr(ep));
            }
            if let Some(secs) = peer.persistent_keepalive {
                let secs = secs.to_ne_bytes();
                attr(&mut b, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &secs);
            }
        }
        if done < ips.len() {
            let list = nest(&mut b, WGPEER_A_ALLOWEDIPS);
            for (i, net) in ips[done..].iter().enumerate() {
                // 4 + FAMILY 8 + IPADDR 8 or 20 + CIDR_MASK 8, all padded
                if b.len() + if net.is_ipv4() { 28 } else { 40 } > MAX_PEER_PART {
                    break;
                }
                allowed_ip(&mut b, i as u16, net);
                done += 1;
            }
            end(&mut b, list);
        }
        end(&mut b, 0);
        parts.push(b);
    }
    parts
}

/// `struct sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes): the family in host order,
/// port and flow label in network order.
fn sockaddr(ep: &SocketAddr) -> Vec<u8> {
    let family = if ep.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut b = [family.to_ne_bytes(), ep.port().to_be_bytes()].concat();
    match ep {
        SocketAddr::V4(a) => b.extend(a.ip().octets().into_iter().chain([0; 8])),
        SocketAddr::V6(a) => {
            b.extend(a.flowinfo().to_be_bytes());
            b.extend(a.ip().octets());
            b.extend(a.scope_id().to_ne_bytes());
        }
    }
    b
}

/// One allowed IP: its network address (host bits cleared), family and prefix length.
fn allowed_ip(b: &mut Vec<u8>, index: u16, net: &IpNetwork) {
    let at = nest(b, index);
    let (family, addr) = match net.network() {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    };
    attr(b, WGALLOWEDIP_A_FAMILY, &family.to_ne_bytes());
    attr(b, WGALLOWEDIP_A_IPADDR, &addr);
    attr(b, WGALLOWEDIP_A_CIDR_MASK, &[net.prefix()]);
    end(b, at);
}

/// The messages in a reply as (type, whole message).
fn messages(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, KernelWgError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(KernelWgError::Malformed("bad nlmsg_len"));
        }
        out.push((u16::from_ne_bytes([buf[4], buf[5]]), &buf[..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

/// The errno of an `NLMSG_ERROR` payload (0 for an ACK), or 0 for any other message.
fn error_code(ty: u16, payload: &[u8]) -> Result<i32, KernelWgError> {
    match (ty, payload.get(..4)) {
        (NLMSG_ERROR, Some(e)) => Ok(-i32::from_ne_bytes(e.try_into().expect("4 bytes"))),
        (NLMSG_ERROR, None) => Err(KernelWgError::Malformed("short NLMSG_ERROR")),
        _ => Ok(0),
    }
}

/// The attributes in `buf` as (type with its flags, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes([*buf.first()?, *buf.get(1)?]));
        if len < 4 || len > buf.len() {
            return None;
        }
        let item = (u16::from_ne_bytes([buf[2], buf[3]]), &buf[4..len]);
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(item)
    })
}

/// The kernel's `dev_valid_name`: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or space.
fn check_ifname(name: &str) -> Result<(), KernelWgError> {
    let bad = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
    match name.len() {
        1..=15 if name != "." && name != ".." && !name.contains(bad) => Ok(()),
        _ => Err(KernelWgError::InvalidName(name.into())),
    }
}

/// A blocking netlink socket of `protocol`; the kernel binds it on the first send.
fn socket(protocol: libc::c_int) -> Result<OwnedFd, KernelWgError> {
    let kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes no pointers.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, kind, protocol) };
    if raw < 0 {
        return Err(os_error("socket(AF_NETLINK)"));
    }
    // SAFETY: `raw` was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn os_error(op: &'static str) -> KernelWgError {
    KernelWgError::Io(op, io::Error::last_os_error())
}

/// Sends `msg`, then reads until the kernel's `NLMSG_ERROR` (ACK or error) for `seq`;
/// returns its errno (0: done) and every reply to `seq`, that one included. The buffer
/// holds an error's echo of a whole [`MAX_MESSAGE`] request.
fn exchange(fd: &OwnedFd, msg: &[u8], seq: u32) -> Result<(i32, Vec<u8>), KernelWgError> {
    // SAFETY: `msg` is valid for `msg.len()` readable bytes.
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(os_error("netlink send"));
    }
    let (mut buf, mut replies) = (vec![0u8; MAX_MESSAGE * 2], Vec::new());
    loop {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(KernelWgError::Io("netlink recv", e));
        }
        for (ty, msg) in messages(&buf[..n as usize])? {
            if msg[8..12] != seq.to_ne_bytes() {
                continue; // a late reply to an earlier request
            }
            replies.extend_from_slice(msg);
            replies.resize(replies.len().next_multiple_of(4), 0);
            if ty == NLMSG_ERROR {
                return Ok((error_code(ty, &msg[NLMSG_HDRLEN..])?, replies));
            }
        }
    }
}

/// Creates a wireguard link: `ip link add IFNAME mtu MTU type wireguard`.
pub fn create_link(ifname: &str, mtu: u32) -> Result<LinkCreate, KernelWgError> {
    check_ifname(ifname)?;
    let fd = socket(libc::NETLINK_ROUTE)?;
    match exchange(&fd, &create_link_request(ifname, mtu, 1), 1)?.0 {
        0 => Ok(LinkCreate::Created),
        libc::EEXIST => Ok(LinkCreate::Exists),
        libc::EOPNOTSUPP => Ok(LinkCreate::Unsupported),
        errno => Err(KernelWgError::Refused("ip link add", ifname.into(), errno)),
    }
}

/// A generic netlink socket bound to the kernel's wireguard family.
#[derive(Debug)]
pub struct KernelWireguard {
    fd: OwnedFd,
    family_id: u16,
    seq: u32,
}

impl KernelWireguard {
    /// Resolves the `"wireguard"` family (`genl ctrl get name wireguard`); `Ok(None)` when
    /// the kernel has none, i.e. no module.
    pub fn open() -> Result<Option<KernelWireguard>, KernelWgError> {
        let fd = socket(libc::NETLINK_GENERIC)?;
        match parse_family_id(&exchange(&fd, &get_family_request(1), 1)?.1) {
            Ok(family_id) => Ok(Some(KernelWireguard {
                fd,
                family_id,
                seq: 2,
            })),
            Err(KernelWgError::NoFamily) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Configures `dev`, the equivalent of
    /// `wg set IFNAME private-key F listen-port N peer P ...`: one request and ACK per
    /// message of [`set_device_messages`], stopping at the first refusal.
    pub fn set_device(&mut self, dev: &WgDevice) -> Result<(), KernelWgError> {
        check_ifname(&dev.ifname)?;
        let (first, msgs) = (self.seq, set_device_messages(self.family_id, dev, self.seq));
        self.seq = first.wrapping_add(msgs.len() as u32);
        for (i, msg) in msgs.iter().enumerate() {
            let (errno, _) = exchange(&self.fd, msg, first.wrapping_add(i as u32))?;
            if errno != 0 {
                return Err(KernelWgError::Refused("wg set", dev.ifname.clone(), errno));
            }
        }
        tracing::debug!(device = %dev.ifname, messages = msgs.len(), "wg set");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }
    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }
    fn get<'a>(list: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
        list.iter().find(|a| a.0 & NLA_TYPE_MASK == ty).map(|a| a.1)
    }
    /// The nested attributes in `buf`, each as its own list.
    fn nested(buf: &[u8]) -> Vec<Vec<(u16, &[u8])>> {
        attrs(buf).map(|(_, v)| attrs(v).collect()).collect()
    }
    /// A SET_DEVICE message's top-level attributes (after nlmsghdr and genlmsghdr).
    fn top(m: &[u8]) -> Vec<(u16, &[u8])> {
        attrs(&m[20..]).collect()
    }
    fn peers(m: &[u8]) -> Vec<Vec<(u16, &[u8])>> {
        get(&top(m), WGDEVICE_A_PEERS).map_or(vec![], nested)
    }
    fn peer(n: u8, allowed_ips: Vec<IpNetwork>) -> WgPeer {
        let endpoint = Some(SocketAddr::from(([192, 0, 2, n], 51820)));
        let (public_key, persistent_keepalive) = ([n; 32], Some(25));
        let (preshared_key, remove) = (None, false);
        WgPeer {
            public_key,
            preshared_key,
            endpoint,
            persistent_keepalive,
            allowed_ips,
            remove,
        }
    }
    fn device(ifname: &str, peers: Vec<WgPeer>) -> WgDevice {
        let (ifname, private_key, listen_port) = (ifname.to_string(), [0x11; 32], 51820);
        WgDevice {
            ifname,
            private_key,
            listen_port,
            replace_peers: true,
            peers,
        }
    }

    #[test]
    #[rustfmt::skip]
    fn get_family_request_bytes() {
        let e = [
            // nlmsghdr: length, GENL_ID_CTRL, NLM_F_REQUEST|NLM_F_ACK, seq 9, pid 0
            &ne32(36)[..], &ne16(0x10), &ne16(5), &ne32(9), &ne32(0),
            &[3, 1, 0, 0], // genlmsghdr: CTRL_CMD_GETFAMILY, version 1
            &ne16(14), &ne16(2), b"wireguard\0", &[0, 0], // CTRL_ATTR_FAMILY_NAME, 2 pad
        ];
        assert_eq!(get_family_request(9), e.concat());
    }

    #[test]
    #[rustfmt::skip]
    fn set_device_exact_bytes() {
        let dev = device("wg0", vec![peer(0x22, vec!["10.244.1.0/24".parse().unwrap()])]);
        let e = [
            // nlmsghdr: len 16+4+8+36+8+8+112, type = family id, REQUEST|ACK, seq 7, pid 0
            &ne32(192)[..], &ne16(0x1a), &ne16(5), &ne32(7), &ne32(0),
            &[1, 1, 0, 0], // genlmsghdr: WG_CMD_SET_DEVICE, WG_GENL_VERSION
            &ne16(8), &ne16(2), b"wg0\0", // WGDEVICE_A_IFNAME, NUL-terminated
            &ne16(36), &ne16(3), &[0x11; 32], // WGDEVICE_A_PRIVATE_KEY
            &ne16(6), &ne16(6), &ne16(51820), &[0, 0], // WGDEVICE_A_LISTEN_PORT, 2 pad
            &ne16(8), &ne16(5), &ne32(1), // WGDEVICE_A_FLAGS: WGDEVICE_F_REPLACE_PEERS
            &ne16(112), &ne16(8 | 0x8000), // WGDEVICE_A_PEERS | NLA_F_NESTED: 4 + 108
            &ne16(108), &ne16(0x8000), // peer 0 | NLA_F_NESTED: 4 + 36 + 8 + 20 + 8 + 32
            &ne16(36), &ne16(1), &[0x22; 32], // WGPEER_A_PUBLIC_KEY
            &ne16(8), &ne16(3), &ne32(2), // WGPEER_A_FLAGS: WGPEER_F_REPLACE_ALLOWEDIPS
            // WGPEER_A_ENDPOINT: sockaddr_in { AF_INET in host order, port 51820 = 0xca6c in
            // network order, 192.0.2.34, 8 zero bytes }
            &ne16(20), &ne16(4), &ne16(2), &[0xca, 0x6c], &[192, 0, 2, 0x22], &[0; 8],
            &ne16(6), &ne16(5), &ne16(25), &[0, 0], // WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL
            &ne16(32), &ne16(9 | 0x8000), // WGPEER_A_ALLOWEDIPS | NLA_F_NESTED: 4 + 28
            &ne16(28), &ne16(0x8000), // allowed IP 0 | NLA_F_NESTED: 4 + 8 + 8 + 8
            &ne16(6), &ne16(1), &ne16(2), &[0, 0], // WGALLOWEDIP_A_FAMILY: AF_INET
            &ne16(8), &ne16(2), &[10, 244, 1, 0], // WGALLOWEDIP_A_IPADDR
            &ne16(5), &ne16(3), &[24], &[0, 0, 0], // WGALLOWEDIP_A_CIDR_MASK, 3 pad
        ];
        assert_eq!(set_device_messages(0x1a, &dev, 7), vec![e.concat()]);
    }

    #[test]
    #[rustfmt::skip]
    fn odd_length_ifname_is_padded() {
        let m = &set_device_messages(0x1a, &device("flannel-wg", vec![]), 1)[0];
        assert_eq!(m.len(), 20 + 16 + 36 + 8 + 8); // and no empty WGDEVICE_A_PEERS
        // WGDEVICE_A_IFNAME: length 4 + 11, 1 byte of padding; the key starts at 36.
        let name_then_key = [&ne16(15)[..], &ne16(2), b"flannel-wg\0", &[0], &ne16(36), &ne16(3)];
        assert_eq!(m[20..40], name_then_key.concat());
        let link = create_link_request("flannel-wg", 1420, 3);
        let e = [
            // nlmsghdr: NLM_F_REQUEST|NLM_F_ACK|NLM_F_EXCL|NLM_F_CREATE
            &ne32(76)[..], &ne16(RTM_NEWLINK), &ne16(0x605), &ne32(3), &ne32(0),
            &[0; 16], // ifinfomsg
            &ne16(15), &ne16(3), b"flannel-wg\0", &[0], // IFLA_IFNAME
            &ne16(8), &ne16(4), &ne32(1420), // IFLA_MTU
            &ne16(20), &ne16(18 | 0x8000), // IFLA_LINKINFO | NLA_F_NESTED
            &ne16(14), &ne16(1), b"wireguard\0", &[0, 0], // IFLA_INFO_KIND
        ];
        assert_eq!(link, e.concat());
    }

    #[test]
    fn ipv6_endpoint_allowed_ips_and_removal() {
        let ips = vec![
            "10.244.1.7/24".parse().unwrap(),
            "fd00:1::5/64".parse().unwrap(),
        ];
        let mut p = peer(1, ips);
        p.endpoint = Some("[2001:db8::1]:51821".parse().unwrap());
        p.preshared_key = Some([9; 32]);
        let mut gone = peer(2, vec!["10.244.2.0/24".parse().unwrap()]);
        gone.remove = true;
        let msgs = set_device_messages(0x1a, &device("wg0", vec![p, gone]), 1);
        let ps = peers(&msgs[0]);
        assert_eq!(get(&ps[0], WGPEER_A_PRESHARED_KEY), Some(&[9; 32][..]));
        let ep = get(&ps[0], WGPEER_A_ENDPOINT).unwrap();
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let sockaddr_in6 = [
            &ne16(AF_INET6)[..],
            &[0xca, 0x6d],
            &[0; 4],
            &v6.octets(),
            &[0; 4],
        ];
        assert_eq!(ep, sockaddr_in6.concat());
        let ips = nested(get(&ps[0], WGPEER_A_ALLOWEDIPS).unwrap());
        assert_eq!(
            get(&ips[0], WGALLOWEDIP_A_IPADDR),
            Some(&[10, 244, 1, 0][..])
        ); // masked
        assert_eq!(
            get(&ips[1], WGALLOWEDIP_A_FAMILY),
            Some(&ne16(AF_INET6)[..])
        );
        let v6: std::net::Ipv6Addr = "fd00:1::".parse().unwrap();
        assert_eq!(get(&ips[1], WGALLOWEDIP_A_IPADDR), Some(&v6.octets()[..]));
        assert_eq!(get(&ips[1], WGALLOWEDIP_A_CIDR_MASK), Some(&[64][..]));
        // A removed peer: its key and WGPEER_F_REMOVE_ME, nothing else.
        let remove = [
            (WGPEER_A_PUBLIC_KEY, &[2; 32][..]),
            (WGPEER_A_FLAGS, &ne32(1)),
        ];
        assert_eq!(ps[1], remove);
    }

    #[test]
    fn large_peer_list_is_split() {
        let ps = (0..1000u32).map(|i| {
            let ip = IpNetwork::new((0x0af4_0000 + i).to_be_bytes().into(), 32).unwrap();
            let mut p = peer(0, vec![ip]);
            p.public_key[..4].copy_from_slice(&i.to_ne_bytes());
            p
        });
        let msgs = set_device_messages(0x1a, &device("flannel-wg", ps.collect()), 40);
        assert!(msgs.len() >= 4, "{} messages", msgs.len());
        let mut seen = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.len() <= MAX_MESSAGE && m[..4] == ne32(m.len() as u32));
            assert_eq!(m[8..12], ne32(40 + i as u32)); // consecutive sequence numbers
            let top = top(m);
            assert_eq!(get(&top, WGDEVICE_A_IFNAME), Some(&b"flannel-wg\0"[..]));
            assert_eq!(get(&top, WGDEVICE_A_FLAGS).is_some(), i == 0); // REPLACE_PEERS once
            assert_eq!(get(&top, WGDEVICE_A_PRIVATE_KEY).is_some(), i == 0);
            for p in peers(m) {
                let key = get(&p, WGPEER_A_PUBLIC_KEY).unwrap();
                seen.push(u32::from_ne_bytes(key[..4].try_into().unwrap()));
            }
        }
        assert_eq!(seen, (0..1000).collect::<Vec<_>>()); // each peer once, in order
    }

    #[test]
    fn peer_with_many_allowed_ips_is_split() {
        let ips: Vec<IpNetwork> = (0..3000u32)
            .map(|i| IpNetwork::new((0x0a00_0000 + i).to_be_bytes().into(), 32).unwrap())
            .collect();
        let msgs = set_device_messages(0x1a, &device("wg0", vec![peer(5, ips.clone())]), 1);
        assert_eq!(msgs.len(), 3);
        let mut got = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let ps = peers(m);
            assert!(m.len() <= MAX_MESSAGE && ps.len() == 1);
            assert_eq!(get(&ps[0], WGPEER_A_PUBLIC_KEY), Some(&[5; 32][..]));
            let replace = if i == 0 {
                WGPEER_F_REPLACE_ALLOWEDIPS
            } else {
                0
            };
            assert_eq!(get(&ps[0], WGPEER_A_FLAGS), Some(&ne32(replace)[..]));
            assert_eq!(get(&ps[0], WGPEER_A_ENDPOINT).is_some(), i == 0);
            for ip in nested(get(&ps[0], WGPEER_A_ALLOWEDIPS).unwrap()) {
                let addr: [u8; 4] = get(&ip, WGALLOWEDIP_A_IPADDR).unwrap().try_into().unwrap();
                got.push(IpNetwork::new(addr.into(), 32).unwrap());
            }
        }
        assert_eq!(got, ips);
    }

    #[test]
    #[rustfmt::skip]
    fn parse_family_id_reply_and_errors() {
        let ack = [&ne32(36)[..], &ne16(NLMSG_ERROR), &[0; 10], &ne32(0), &[0; 16]].concat();
        let reply = [
            &ne32(44)[..], &ne16(GENL_ID_CTRL), &[0; 10], // nlmsghdr
            &[CTRL_CMD_NEWFAMILY, 2, 0, 0], // genlmsghdr
            &ne16(14), &ne16(CTRL_ATTR_FAMILY_NAME), b"wireguard\0", &[0, 0],
            &ne16(6), &ne16(CTRL_ATTR_FAMILY_ID), &ne16(0x1f), &[0, 0],
            &ack, // the ACK that follows the reply
        ];
        assert_eq!(parse_family_id(&reply.concat()).unwrap(), 0x1f);
        // NLMSG_ERROR { int error; struct nlmsghdr echoed }
        let error = |e: i32| {
            [&ne32(36)[..], &ne16(NLMSG_ERROR), &[0; 10], &(-e).to_ne_bytes(), &[0; 16]].concat()
        };
        assert!(matches!(parse_family_id(&error(libc::ENOENT)), Err(KernelWgError::NoFamily)));
        let eperm = parse_family_id(&error(libc::EPERM));
        assert!(matches!(eperm, Err(KernelWgError::Refused(_, _, libc::EPERM))));
        assert!(matches!(parse_family_id(&ack), Err(KernelWgError::Malformed(_))));
        assert!(matches!(parse_family_id(&[40; 16]), Err(KernelWgError::Malformed(_))));
    }

    /// Real requests to this kernel, in a throwaway network namespace: a link dies with it.
    #[test]
    fn create_link_in_throwaway_netns() {
        if !flannel_testkit::require_root("RTM_NEWLINK in a new network namespace") {
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            // A family every kernel has: the reply-then-ACK path of `exchange`.
            let fd = socket(libc::NETLINK_GENERIC).unwrap();
            let (errno, replies) = exchange(&fd, &family_request("nlctrl", 5), 5).unwrap();
            assert_eq!(errno, 0);
            assert_eq!(parse_family_id(&replies).unwrap(), GENL_ID_CTRL);
            // The wireguard family exists exactly when the module does.
            let module = KernelWireguard::open().expect("getfamily").is_some();
            let first = create_link("flannel-wg", 1420).expect("RTM_NEWLINK");
            if module {
                assert_eq!(first, LinkCreate::Created);
                assert_eq!(create_link("flannel-wg", 1420).unwrap(), LinkCreate::Exists);
            } else {
                assert_eq!(first, LinkCreate::Unsupported);
            }
            let bad_name = create_link("a/b", 1);
            assert!(matches!(bad_name, Err(KernelWgError::InvalidName(_))));
        })
        .join()
        .unwrap();
    }
}
