//! # Deleting a link without waiting for the kernel's clean-up
//!
//! `ip link del veth0` returns only when the kernel has finished with the device: after it has
//! unlisted it, it waits for an RCU barrier and for every reference to drain
//! (`netdev_run_todo`), all inside the caller's `sendmsg`. For a veth pair that tail is most
//! of the call (README, "Design measurements"), while the part anybody can observe — the device gone from the
//! namespace, its name free, its bridge port and addresses removed — is done in about a
//! millisecond, at the point where the kernel broadcasts `RTM_DELLINK`.
//!
//! [`del_link_detached`] splits the two: a forked child sends the `RTM_DELLINK` request and sits
//! through the clean-up, while the caller listens on the link multicast group and returns as
//! soon as the kernel announces the deletion. What the caller returns to is the same
//! observable state `ip link del` leaves; only memory is still being freed.
//!
//! Meant for short-lived processes such as the CNI plugin: nobody waits for the child. When the
//! caller exits the child is re-parented to init (or the runtime's subreaper), which reaps it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};

use super::valid_ifname;

/// `RTMGRP_LINK`: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;
/// `NLMSG_ERROR`, the type of an ACK.
const NLMSG_ERROR: u16 = 2;
/// How long to wait for the kernel before reporting an error.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `ip link del NAME` in the calling thread's network namespace, returning once the kernel has
/// removed the link from the namespace (see the module docs) rather than after its clean-up.
/// `Ok(false)` if there was no such link. Deleting one end of a veth pair removes both.
pub fn del_link_detached(name: &str) -> io::Result<bool> {
    if !valid_ifname(name) {
        return Ok(false);
    }
    // Listen before anything can happen.
    let mut monitor = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    monitor.bind(&netlink_sys::SocketAddr::new(0, RTMGRP_LINK))?;
    // A burst of other link events must not crowd ours out; if it still does (ENOBUFS) the
    // child's answer decides.
    let _ = monitor.set_rx_buf_sz(1 << 20);
    let request_socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;

    // Everything the child needs is prepared before fork: it must not allocate.
    let request = del_link_request(name);
    let (answer_read, answer_write) = pipe()?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;

    // SAFETY: fork(2). The child runs only async-signal-safe calls on data prepared above and
    // ends with _exit, never returning into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; see `child`.
        unsafe {
            child(
                request_socket.as_raw_fd(),
                answer_write.as_raw_fd(),
                devnull.as_raw_fd(),
                &request,
            )
        }
    }
    drop(answer_write);
    drop(request_socket);
    wait_for_deletion(&monitor, &answer_read, name)
}

/// The `RTM_DELLINK` request for `name`, serialized, asking for an ACK.
fn del_link_request(name: &str) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// The child: standard streams to /dev/null (a runtime reading our stdout must see EOF when the
/// parent exits), every other inherited descriptor closed except the two it uses, then send the
/// request, read the ACK and report its error code (0 = deleted) through the pipe.
///
/// # Safety
/// Only to be called in a freshly forked child; it never returns.
unsafe fn child(request_fd: RawFd, answer_fd: RawFd, devnull_fd: RawFd, request: &[u8]) -> ! {
    // SAFETY: async-signal-safe calls only, on descriptors and buffers that exist in the child.
    unsafe {
        libc::dup2(devnull_fd, 0);
        libc::dup2(devnull_fd, 1);
        libc::dup2(devnull_fd, 2);
        let (low, high) = if request_fd < answer_fd {
            (request_fd as u32, answer_fd as u32)
        } else {
            (answer_fd as u32, request_fd as u32)
        };
        close_range(3, low.saturating_sub(1));
        close_range(low + 1, high - 1);
        close_range(high + 1, u32::MAX);

        let mut code: i32 = -libc::EIO;
        if libc::send(request_fd, request.as_ptr().cast(), request.len(), 0) >= 0 {
            let mut reply = [0u8; 1024];
            loop {
                let n = libc::recv(request_fd, reply.as_mut_ptr().cast(), reply.len(), 0);
                if n < 0 {
                    break;
                }
                if let Some(ack) = ack_code(&reply[..n as usize]) {
                    code = ack;
                    break;
                }
            }
        }
        let bytes = code.to_ne_bytes();
        libc::write(answer_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(0);
    }
}

/// `close_range(2)` for `first..=last`; nothing when the range is empty.
///
/// # Safety
/// Closes descriptors the caller may still own elsewhere; only for the forked child.
unsafe fn close_range(first: u32, last: u32) {
    if first <= last {
        // SAFETY: plain syscall; see above.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    }
}

/// The error code of the first `NLMSG_ERROR` (ACK) in `buf`: 0 for success, a negative errno
/// otherwise. Parsed by hand: the child may not allocate.
fn ack_code(buf: &[u8]) -> Option<i32> {
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        if len < 16 || len > rest.len() {
            return None;
        }
        if kind == NLMSG_ERROR && len >= 20 {
            return Some(i32::from_ne_bytes(rest[16..20].try_into().ok()?));
        }
        rest = &rest[(len + 3) & !3..];
    }
    None
}

/// Waits for whichever comes first: the kernel's `RTM_DELLINK` for `name` (deleted, clean-up
/// still running in the child) or the child's report (an error, or success if we somehow missed
/// the notification).
fn wait_for_deletion(
    monitor: &netlink_sys::Socket,
    answer: &OwnedFd,
    name: &str,
) -> io::Result<bool> {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    let mut listening = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("ip link del {name}: no answer from the kernel in {TIMEOUT:?}"),
            ));
        }
        let mut fds = [
            libc::pollfd {
                fd: if listening { monitor.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: answer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, left.as_millis() as libc::c_int + 1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            // SAFETY: `buf` is valid for writes of its length.
            let got = unsafe {
                libc::recv(
                    monitor.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                    // Overrun: events were lost, maybe ours; the child's answer will tell.
                    Some(libc::ENOBUFS) => listening = false,
                    _ => return Err(e),
                }
            } else if announces_deletion(&buf[..got as usize], name) {
                return Ok(true);
            }
        }
        if fds[1].revents != 0 {
            let mut code = [0u8; 4];
            // SAFETY: `code` is valid for writes of 4 bytes.
            let got = unsafe { libc::read(answer.as_raw_fd(), code.as_mut_ptr().cast(), 4) };
            if got != 4 {
                return Err(io::Error::other(format!(
                    "ip link del {name}: the helper process ended without an answer"
                )));
            }
            return match -i32::from_ne_bytes(code) {
                0 => Ok(true),
                libc::ENODEV => Ok(false),
                errno => Err(io::Error::new(
                    io::Error::from_raw_os_error(errno).kind(),
                    format!(
                        "ip link del {name}: {}",
                        io::Error::from_raw_os_error(errno)
                    ),
                )),
            };
        }
    }
}

/// Whether the datagram `buf` holds an `RTM_DELLINK` for a link called `name`.
fn announces_deletion(buf: &[u8], name: &str) -> bool {
    let mut offset = 0;
    while offset < buf.len() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..]) else {
            return false;
        };
        let len = msg.header.length as usize;
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = &msg.payload
            && link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name))
        {
            return true;
        }
        if len == 0 {
            return false;
        }
        offset += (len + 3) & !3;
    }
    false
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_a_dellink_by_name_with_ack() {
        let buf = del_link_request("veth1234");
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                assert!(
                    l.attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::IfName(n) if n == "veth1234"))
                );
            }
            other => panic!("not a DelLink: {other:?}"),
        }
    }

    #[test]
    fn ack_code_reads_the_error_field() {
        // nlmsghdr (len 36, NLMSG_ERROR) + error -19 + echoed header
        let mut buf = vec![0u8; 36];
        buf[0..4].copy_from_slice(&36u32.to_ne_bytes());
        buf[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf[16..20].copy_from_slice(&(-19i32).to_ne_bytes());
        assert_eq!(ack_code(&buf), Some(-19));
        buf[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(ack_code(&buf), Some(0));
        assert_eq!(ack_code(&buf[..10]), None);
        // a malformed length never loops or panics
        buf[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(ack_code(&buf), None);
    }

    #[test]
    fn deletion_of_another_link_is_not_ours() {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName("other".into()));
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        assert!(announces_deletion(&buf, "other"));
        assert!(!announces_deletion(&buf, "veth1"));
        assert!(!announces_deletion(&buf[..5], "other"));
    }
}
