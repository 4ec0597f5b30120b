//! # The TUN device and the UDP socket, at the syscall level
//!
//! Two file descriptors make the whole datapath:
//!
//! * [`Tun`]: `/dev/net/tun` attached to `flannel0` with `IFF_TUN | IFF_NO_PI` (flannel's
//!   flags), plus, when [`Tun::open`] is asked for offloads and the kernel agrees,
//!   `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4)`. With those, every read starts
//!   with a [`super::codec::VirtioNetHdr`] and may return a TCP super-packet of up to 64 KB, and
//!   every write must start with one (and may carry a `GSO_TCPV4` super-packet). Without them
//!   the device behaves exactly as flannel's.
//! * [`UdpSocket`]: bound to `<iface_addr>:<port>`, with `SO_{RCV,SND}BUFFORCE` so no global
//!   sysctl has to change, and, when available, `UDP_GRO` (receive many datagrams of one sender
//!   as one buffer plus their size) and `UDP_SEGMENT` (send many equal-size datagrams with one
//!   `sendmsg`). [`UdpSocket::send_batch`] uses one `sendmmsg` for a whole batch of messages.
//!
//! Both are created in the calling thread's network namespace (a TUN device is born in the
//! namespace `/dev/net/tun` was opened in), so [`backends::kernel::netns::NetNs::run`] places them in
//! another one.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `IFF_TUN`.
const IFF_TUN: libc::c_short = 0x0001;
/// `IFF_NO_PI`.
const IFF_NO_PI: libc::c_short = 0x1000;
/// `IFF_VNET_HDR`.
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETPERSIST` = `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `sizeof(struct virtio_net_hdr)` (see `codec::VNET_HDR_LEN`).
const VNET_HDR_BYTES: usize = 10;
/// `TUN_F_CSUM`.
const TUN_F_CSUM: libc::c_uint = 0x01;
/// `TUN_F_TSO4`.
const TUN_F_TSO4: libc::c_uint = 0x02;

/// `struct ifreq` with the union as flags / an int.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..bytes.len()].copy_from_slice(bytes);
        Ok(r)
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn with_context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// An open TUN queue.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
}

impl Tun {
    /// Opens `/dev/net/tun` and attaches it to the TUN device `name` (creating it, non-persistent:
    /// it disappears with the last descriptor), non-blocking. With `offload`, tries
    /// `IFF_VNET_HDR` + `TUNSETOFFLOAD(CSUM|TSO4)` first and silently falls back to the plain
    /// device when the kernel refuses ([`Tun::vnet_hdr`] tells which one it got).
    ///
    /// Equivalent of `ip tuntap add dev NAME mode tun` plus attaching to it.
    pub fn open(name: &str, offload: bool) -> io::Result<Tun> {
        if offload {
            match Tun::open_with(name, true) {
                Ok(t) => return Ok(t),
                Err(e) => {
                    tracing::info!(device = name, error = %e, "TUN offloads unavailable; plain TUN");
                }
            }
        }
        Tun::open_with(name, false)
    }

    fn open_with(name: &str, vnet: bool) -> io::Result<Tun> {
        // SAFETY: plain open(2) of a constant, NUL-terminated path.
        let raw = cvt(unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        })
        .map_err(|e| with_context(e, "open /dev/net/tun".into()))?;
        // SAFETY: `raw` was just returned by open(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq::new(name)?;
        let mut flags = IFF_TUN | IFF_NO_PI;
        if vnet {
            flags |= IFF_VNET_HDR;
        }
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` has the layout of and
        // outlives the call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) })
            .map_err(|e| with_context(e, format!("TUNSETIFF {name}")))?;
        if vnet {
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            cvt(unsafe {
                libc::ioctl(
                    fd.as_raw_fd(),
                    TUNSETOFFLOAD as _,
                    (TUN_F_CSUM | TUN_F_TSO4) as libc::c_ulong,
                )
            })
            .map_err(|e| with_context(e, format!("TUNSETOFFLOAD {name}")))?;
        }
        let end = req
            .name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(req.name.len());
        Ok(Tun {
            fd,
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
            vnet_hdr: vnet,
        })
    }

    /// Makes the device outlive this descriptor (or not): a persistent TUN device keeps its
    /// addresses and routes while no process has it open, so traffic routed into it is
    /// queued or dropped, never sent elsewhere, until a process attaches again
    /// ([`Tun::open`] attaches to an existing device of the same name).
    ///
    /// Equivalent of `ip tuntap add dev NAME mode tun` (persistent) / `ip tuntap del`.
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETPERSIST as _,
                libc::c_ulong::from(persist),
            )
        })
        .map(|_| ())
        .map_err(|e| with_context(e, format!("TUNSETPERSIST {}", self.name)))
    }

    /// The device name the kernel gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether reads and writes carry a virtio-net header (offloads on).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// One packet (non-blocking): `Ok(None)` when the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(n as usize))
    }

    /// Writes one plain packet (no offload): behind an all-zero vnet header when the device
    /// wants one.
    pub fn write_plain(&self, pkt: &[u8]) -> io::Result<()> {
        if !self.vnet_hdr {
            return self.write(pkt);
        }
        let hdr = [0u8; VNET_HDR_BYTES];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: pkt.as_ptr() as *mut libc::c_void,
                iov_len: pkt.len(),
            },
        ];
        // SAFETY: both iovecs describe live, readable buffers for the whole call.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Writes one packet (with its vnet header when [`Tun::vnet_hdr`]).
    pub fn write(&self, pkt: &[u8]) -> io::Result<()> {
        // SAFETY: `pkt` is valid for `pkt.len()` readable bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `writev(2)`: one packet gathered from `parts` (with a vnet-header TUN, the first
    /// `codec::VNET_HDR_LEN` bytes are the header).
    pub fn write_vectored(&self, parts: &[std::io::IoSlice]) -> io::Result<()> {
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix, and every slice is
        // valid for reading during the call.
        let n = unsafe {
            libc::writev(
                self.fd.as_raw_fd(),
                parts.as_ptr().cast(),
                parts.len() as libc::c_int,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One datagram (or, with a segment size, a UDP GSO train) queued for [`UdpSocket::send_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutMsg {
    /// Destination.
    pub to: SocketAddr,
    /// Offset of the bytes in the batch buffer.
    pub start: usize,
    /// Number of bytes.
    pub len: usize,
    /// `UDP_SEGMENT` size: the bytes are `len / seg` datagrams of `seg` bytes (the last may be
    /// shorter); 0 = one datagram.
    pub seg: u16,
}

impl OutMsg {
    /// The single datagrams of a GSO train (itself when it is one datagram).
    pub fn datagrams(&self) -> impl Iterator<Item = OutMsg> + '_ {
        let seg = if self.seg == 0 {
            self.len.max(1)
        } else {
            usize::from(self.seg)
        };
        (self.start..self.start + self.len)
            .step_by(seg)
            .map(move |at| OutMsg {
                to: self.to,
                start: at,
                len: seg.min(self.start + self.len - at),
                seg: 0,
            })
    }
}

/// Whether a UDP GSO send failed because of the train itself, so that its datagrams sent one
/// by one may go through: `EIO` (the path cannot segment) or [`train_exceeds_route_mtu`].
fn is_train_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO) || train_exceeds_route_mtu(e)
}

/// Whether a UDP GSO send was refused because a segment exceeds the route's MTU: `EMSGSIZE`
/// on current kernels (6.18 here), `EINVAL` on older ones.
pub fn train_exceeds_route_mtu(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EMSGSIZE))
}

/// What [`UdpSocket::send_batch_gso`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GsoSend {
    /// `sendmmsg` calls made.
    pub syscalls: usize,
    /// GSO trains the kernel took.
    pub gso_messages: usize,
    /// Trains refused because their segments do not fit the route (sent again one by one).
    pub refused: usize,
    /// The first such refusal: where to, and the errno.
    pub first_refusal: Option<(SocketAddr, i32)>,
    /// The kernel cannot segment on this path (`EIO`): send single datagrams from now on.
    pub gso_unsupported: bool,
}

/// Whether a data path builds UDP GSO trains, shared by the udp backend and the wireguard
/// device. Trains are off for good once the kernel cannot segment on the path (`EIO`), and
/// for [`Trains::PAUSE`] after one did not fit the route's MTU (`EMSGSIZE`/`EINVAL`: the
/// underlay's MTU was lowered under the TUN's at runtime): meanwhile segments go out as single
/// datagrams, which the kernel fragments as it does flannel's, instead of one refused
/// `sendmsg` (a copy of the whole train, then thrown away) per batch. After the pause a
/// train probes whether they fit again. The first refusal is a warning, the return of
/// trains an info line.
#[derive(Debug)]
pub struct Trains {
    gso: bool,
    paused_until: Option<std::time::Instant>,
    refusal_warned: bool,
    /// The data path, in log lines.
    sender: &'static str,
}

impl Trains {
    /// How long no trains are built after one was refused for its size.
    pub const PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

    /// Trains as far as the socket can send them ([`UdpSocket::gso`]).
    pub fn new(gso: bool, sender: &'static str) -> Self {
        Self {
            gso,
            paused_until: None,
            refusal_warned: false,
            sender,
        }
    }

    /// Whether to build trains now.
    pub fn allowed(&mut self) -> bool {
        if !self.gso {
            return false;
        }
        match self.paused_until {
            Some(until) if std::time::Instant::now() < until => false,
            Some(_) => {
                self.paused_until = None;
                true
            }
            None => true,
        }
    }

    /// A train to `to` was refused with `errno` because it does not fit the route: trains
    /// paused (the caller counts the refusals).
    pub fn refused(&mut self, to: SocketAddr, errno: i32) {
        if !self.refusal_warned {
            tracing::warn!(
                %to, error = %io::Error::from_raw_os_error(errno), sender = self.sender,
                "a UDP GSO train does not fit the route (underlay MTU lowered below the \
                 TUN's?); sending single datagrams, fragmented by the kernel, and retrying \
                 trains every {:?}", Self::PAUSE
            );
            self.refusal_warned = true;
        }
        self.paused_until = Some(std::time::Instant::now() + Self::PAUSE);
    }

    /// A train went through: after refusals, says so once.
    pub fn went_through(&mut self) {
        if self.refusal_warned {
            tracing::info!(sender = self.sender, "UDP GSO trains fit the route again");
            self.refusal_warned = false;
        }
    }

    /// The kernel cannot segment on this path (`EIO`): no trains from now on.
    pub fn unsupported(&mut self) {
        if self.gso {
            tracing::warn!(
                sender = self.sender,
                "UDP GSO refused by the kernel; sending datagrams one by one"
            );
        }
        self.gso = false;
    }
}

/// The counters a data path keeps for [`UdpSocket::flush_queue`].
#[derive(Clone, Copy, Debug)]
pub struct SendCounters<'a> {
    /// Datagrams the kernel refused.
    pub errors: &'a std::sync::atomic::AtomicU64,
    /// `sendmmsg` calls.
    pub syscalls: &'a std::sync::atomic::AtomicU64,
    /// GSO trains the kernel took.
    pub gso_messages: &'a std::sync::atomic::AtomicU64,
    /// Trains refused because they do not fit the route ([`Trains::refused`]).
    pub trains_refused: &'a std::sync::atomic::AtomicU64,
}

/// One received buffer from [`UdpSocket::recv_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InMsg {
    /// Sender.
    pub from: SocketAddr,
    /// Bytes received.
    pub len: usize,
    /// Datagram size when the kernel coalesced several (`UDP_GRO`); 0 = one datagram.
    pub seg: usize,
}

/// A socket address in the kernel's layout: `sockaddr_in6`-sized storage holding a
/// `sockaddr_in` or a `sockaddr_in6`, with the length to pass.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_in6, libc::socklen_t) {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut s: libc::sockaddr_in6 = unsafe { zeroed() };
    match a {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut v4: libc::sockaddr_in = unsafe { zeroed() };
            v4.sin_family = libc::AF_INET as libc::sa_family_t;
            v4.sin_port = a.port().to_be();
            v4.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: sockaddr_in (16 bytes) fits in sockaddr_in6 (28 bytes); both are POD.
            unsafe {
                std::ptr::write_unaligned((&mut s as *mut libc::sockaddr_in6).cast(), v4);
            }
            (s, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_scope_id = a.scope_id();
            (s, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// The address the kernel wrote into `s` (either family).
fn from_sockaddr(s: &libc::sockaddr_in6) -> SocketAddr {
    if i32::from(s.sin6_family) == libc::AF_INET6 {
        return SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(s.sin6_addr.s6_addr),
            u16::from_be(s.sin6_port),
            0,
            s.sin6_scope_id,
        ));
    }
    // SAFETY: the kernel wrote a sockaddr_in (16 bytes) at the start of the storage.
    let v4: libc::sockaddr_in =
        unsafe { std::ptr::read_unaligned((s as *const libc::sockaddr_in6).cast()) };
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(v4.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(v4.sin_port),
    ))
}

const CMSG_U16_SPACE: usize = 32;
const CMSG_INT_SPACE: usize = 32;

/// The flannel-format UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    fd: OwnedFd,
    local: SocketAddr,
    gso: bool,
    gro: bool,
}

impl UdpSocket {
    /// Binds `local` (blocking socket: receives use `MSG_DONTWAIT`), with 8 MB buffers and, when
    /// `offload` is set and the kernel supports them, `UDP_GRO` and `UDP_SEGMENT`.
    pub fn bind(local: SocketAddr, offload: bool) -> io::Result<UdpSocket> {
        let domain = if local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket(2) with constant arguments.
        let raw = cvt(unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
            .map_err(|e| with_context(e, format!("socket({domain}, SOCK_DGRAM)")))?;
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut s = UdpSocket {
            fd,
            local,
            gso: false,
            gro: false,
        };
        let size: libc::c_int = 8 << 20;
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if s.setsockopt(libc::SOL_SOCKET, force, size).is_err() {
                let _ = s.setsockopt(libc::SOL_SOCKET, plain, size);
            }
        }
        if local.is_ipv6() {
            // IPv6 only: an IPv4 socket of the other overlay may bind the same port.
            s.setsockopt(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)
                .map_err(|e| with_context(e, "IPV6_V6ONLY".into()))?;
        }
        let (sa, sa_len) = sockaddr(local);
        // SAFETY: `sa` holds a valid socket address of `sa_len` bytes and outlives the call.
        cvt(unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                sa_len,
            )
        })
        .map_err(|e| with_context(e, format!("bind UDP {local}")))?;
        if offload {
            s.gro = s.setsockopt(libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
            // Setting a zero default segment size only probes for support.
            s.gso = s.setsockopt(libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        }
        Ok(s)
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: `v` is a c_int that outlives the call; the length matches.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    /// The bound address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Whether UDP GSO (`UDP_SEGMENT`) may be used.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Whether `UDP_GRO` is on.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Sets the transmit queue length of a device in this socket's namespace with
    /// `SIOCSIFTXQLEN` (`ip link set DEV txqueuelen N`).
    pub fn set_txqueuelen(&self, dev: &str, qlen: i32) -> io::Result<()> {
        let mut req = IfReq::new(dev)?;
        req.data[..4].copy_from_slice(&qlen.to_ne_bytes());
        // SAFETY: SIOCSIFTXQLEN reads a `struct ifreq` that `req` lays out and that outlives
        // the call.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SIOCSIFTXQLEN as _,
                &mut req as *mut IfReq,
            )
        })
        .map(|_| ())
    }

    /// Sends `msgs` (slices of `buf`) with as few `sendmmsg` calls as the kernel allows.
    /// Returns `(messages handled, syscalls)`; a message the kernel refuses is skipped and
    /// reported through `on_error` with its error.
    pub fn send_batch(
        &self,
        buf: &[u8],
        msgs: &[OutMsg],
        mut on_error: impl FnMut(&OutMsg, io::Error),
    ) -> (usize, usize) {
        let n = msgs.len();
        let mut addrs: Vec<(libc::sockaddr_in6, libc::socklen_t)> =
            msgs.iter().map(|m| sockaddr(m.to)).collect();
        let mut iovs: Vec<libc::iovec> = msgs
            .iter()
            .map(|m| libc::iovec {
                iov_base: buf[m.start..m.start + m.len].as_ptr() as *mut libc::c_void,
                iov_len: m.len,
            })
            .collect();
        let mut ctrl: Vec<[u64; CMSG_U16_SPACE / 8]> = vec![[0u64; CMSG_U16_SPACE / 8]; n];
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed() }).collect();
        for i in 0..n {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = addrs[i].1;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if msgs[i].seg > 0 {
                h.msg_control = ctrl[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure computation.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: the control buffer is CMSG_U16_SPACE bytes, enough for one cmsghdr with
                // a u16 payload, and msg_control/msg_controllen describe it.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), msgs[i].seg);
                }
            }
        }
        let mut done = 0;
        let mut calls = 0;
        while done < n {
            calls += 1;
            // SAFETY: hdrs[done..] are initialised mmsghdrs whose pointers (addresses, iovecs,
            // control buffers, `buf`) stay alive and unmoved for the whole call.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                on_error(&msgs[done], e);
                done += 1;
            } else {
                done += r as usize;
            }
        }
        (n, calls)
    }

    /// `sendmsg` of one UDP GSO train gathered from `parts` (`iov_len` each), cut by the
    /// kernel every `seg` bytes of their concatenation (`seg` 0: one datagram): the caller's
    /// headers and payloads go out without being copied together first.
    pub fn send_gather(&self, to: SocketAddr, parts: &[libc::iovec], seg: u16) -> io::Result<()> {
        let (mut addr, addr_len) = sockaddr(to);
        let mut ctrl = [0u64; CMSG_U16_SPACE / 8];
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut h: libc::msghdr = unsafe { zeroed() };
        h.msg_name = (&mut addr as *mut libc::sockaddr_in6).cast();
        h.msg_namelen = addr_len;
        h.msg_iov = parts.as_ptr() as *mut libc::iovec;
        h.msg_iovlen = parts.len() as _;
        if seg > 0 {
            h.msg_control = ctrl.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure computation.
            h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
            // SAFETY: the control buffer is CMSG_U16_SPACE bytes, enough for one cmsghdr with a
            // u16 payload, and msg_control/msg_controllen describe it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            }
        }
        loop {
            // SAFETY: `h` points at the address, the control buffer and `parts`, whose iovecs
            // the caller keeps valid for reading during the call.
            let r = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &h, 0) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// [`UdpSocket::send_batch`] for batches that may hold UDP GSO trains: a train the kernel
    /// refuses goes out again datagram by datagram. Returns what happened, for the caller's
    /// counters and its decision to stop building trains (`gso_unsupported`: the egress device
    /// cannot segment, `EIO`). `EMSGSIZE` (current kernels) or `EINVAL` (older ones) only
    /// mean that this train's segments do not fit the route's MTU now — the underlay's MTU
    /// was lowered under the TUN's: the single datagrams are then fragmented by the kernel
    /// (the socket keeps the default `IP_PMTUDISC_WANT`), as flannel's are.
    /// Other refusals are reported through `on_error`.
    pub fn send_batch_gso(
        &self,
        buf: &[u8],
        msgs: &[OutMsg],
        mut on_error: impl FnMut(&OutMsg, io::Error),
    ) -> GsoSend {
        let mut refused = Vec::new();
        let mut report = GsoSend::default();
        let (_, calls) = self.send_batch(buf, msgs, |m, e| {
            if m.seg > 0 && is_train_refusal(&e) {
                let errno = e.raw_os_error().unwrap_or(0);
                report.gso_unsupported |= errno == libc::EIO;
                if errno != libc::EIO {
                    report.refused += 1;
                    report.first_refusal.get_or_insert((m.to, errno));
                }
                refused.push(*m);
            } else {
                on_error(m, e);
            }
        });
        report.syscalls = calls;
        report.gso_messages = msgs.iter().filter(|m| m.seg > 0).count() - refused.len();
        if !refused.is_empty() {
            let single: Vec<OutMsg> = refused.iter().flat_map(OutMsg::datagrams).collect();
            let (_, calls) = self.send_batch(buf, &single, on_error);
            report.syscalls += calls;
        }
        report
    }

    /// Sends a data path's queued `msgs` (slices of `out`) with
    /// [`UdpSocket::send_batch_gso`], counts what happened into `counters` and empties both.
    /// Refusals go to `trains`: when the kernel cannot segment on the route (`EIO`: IPsec on
    /// it, or on older kernels an egress device without checksum offload) no more trains are
    /// built; when a train does not fit the route's MTU, none for a while ([`Trains`]).
    pub fn flush_queue(
        &self,
        out: &mut Vec<u8>,
        msgs: &mut Vec<OutMsg>,
        trains: &mut Trains,
        counters: SendCounters<'_>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        if !msgs.is_empty() {
            let sender = trains.sender;
            let sent = self.send_batch_gso(out, msgs, |m, e| {
                tracing::debug!(to = %m.to, error = %e, sender, "udp send failed");
                counters.errors.fetch_add(1, Relaxed);
            });
            counters.syscalls.fetch_add(sent.syscalls as u64, Relaxed);
            counters
                .gso_messages
                .fetch_add(sent.gso_messages as u64, Relaxed);
            if sent.gso_unsupported {
                trains.unsupported();
            }
            counters
                .trains_refused
                .fetch_add(sent.refused as u64, Relaxed);
            if let Some((to, errno)) = sent.first_refusal {
                trains.refused(to, errno);
            } else if sent.gso_messages > 0 {
                trains.went_through();
            }
        }
        msgs.clear();
        out.clear();
    }

    /// Receives up to `bufs.len()` messages without blocking (`recvmmsg` + `MSG_DONTWAIT`) into
    /// `bufs`, describing them in `out` (cleared first). `Ok(0)` when nothing is queued.
    pub fn recv_batch(&self, bufs: &mut [Vec<u8>], out: &mut Vec<InMsg>) -> io::Result<usize> {
        out.clear();
        let n = bufs.len();
        // SAFETY: sockaddr_in6 and mmsghdr are plain old data; all-zero is valid.
        let mut addrs: Vec<libc::sockaddr_in6> = (0..n).map(|_| unsafe { zeroed() }).collect();
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut ctrl: Vec<[u64; CMSG_INT_SPACE / 8]> = vec![[0u64; CMSG_INT_SPACE / 8]; n];
        // SAFETY: as above.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed() }).collect();
        for i in 0..n {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_INT_SPACE as _;
        }
        // SAFETY: every header points at live buffers of the stated sizes for the whole call.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        for i in 0..r as usize {
            let h = &hdrs[i].msg_hdr;
            let mut seg = 0usize;
            // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_FIRSTHDR/NXTHDR stay
            // within them, and a UDP_GRO cmsg carries one int.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        seg = v.max(0) as usize;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
            let len = hdrs[i].msg_len as usize;
            out.push(InMsg {
                from: from_sockaddr(&addrs[i]),
                len,
                seg: if seg >= len { 0 } else { seg },
            });
        }
        Ok(r as usize)
    }

    /// Sends one datagram to `to` (blocking); used by tests and tools.
    pub fn send_to(&self, pkt: &[u8], to: SocketAddr) -> io::Result<usize> {
        let (sa, sa_len) = sockaddr(to);
        // SAFETY: `pkt` and `sa` are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa as *const libc::sockaddr_in6).cast(),
                sa_len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits until `fd` is readable or `timeout_ms` passes; `Ok(true)` when readable.
pub fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0 && p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
}
