//! # Link state through the ethtool ioctl
//!
//! The kernel handles a carrier change asynchronously: `netif_carrier_on` only queues the device
//! for the *linkwatch* worker, which later updates its operational state and notifies the
//! bridge (which only then starts forwarding on that port) and IPv6 address configuration.
//! Asking for the link state with `ETHTOOL_GLINK` (`ethtool IFACE | grep 'Link detected'`)
//! makes the kernel run that pending work for the device first (`__linkwatch_sync_dev`), so
//! when the call returns the port's state matches its carrier.
//!
//! Used by the CNI plugin between bringing a pod's veth up and announcing the pod, so the
//! announcement is not dropped by a bridge port that has not noticed its carrier yet.

use std::io;

/// `SIOCETHTOOL`, from `linux/sockios.h`.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GLINK`, from `linux/ethtool.h`.
const ETHTOOL_GLINK: u32 = 0x0000_000a;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Whether `name` (in the calling thread's network namespace) has link, after the kernel has
/// processed any pending carrier event for it (`ethtool NAME` → `Link detected`). Calling it is
/// how a caller waits for a bridge port to react to its carrier.
pub fn settle_link(name: &str) -> io::Result<bool> {
    let bytes = name.as_bytes();
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GLINK,
        data: 0,
    };
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: plain socket(2); the result is checked and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `req` and the `value` it points to outlive the call; SIOCETHTOOL reads the
    // interface name and the command and writes `value.data`.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(io::Error::new(
            err.kind(),
            format!("ethtool {name} (ETHTOOL_GLINK): {err}"),
        ));
    }
    Ok(value.data != 0)
}
