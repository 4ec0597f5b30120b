//! # Gratuitous ARP
//!
//! When a pod restarts with the same IP but a new veth (and so a new MAC), neighbours on the
//! bridge still hold the old MAC in their ARP caches until the entries go stale. A gratuitous ARP
//! — an ARP request for our own address, broadcast, with sender and target IP both set to it —
//! makes every listener on the segment update its entry at once. This is what the reference
//! bridge plugin sends through `arping.GratuitousArpOverIface`, and we build the same frame:
//! Ethernet broadcast destination, `op = request`, `sha = mac`, `spa = tpa = ip`,
//! `tha = ff:ff:ff:ff:ff:ff`.
//!
//! The frame goes out through an `AF_PACKET`/`SOCK_DGRAM` socket bound to the interface, so the
//! kernel adds the Ethernet header. The socket is created in the calling **thread's** network
//! namespace; call [`send_gratuitous_arp`] inside [`crate::kernel::netns::NetNs::run`] for a pod
//! interface. The interface must be up.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETH_P_ARP`, the ARP EtherType.
pub const ETH_P_ARP: u16 = 0x0806;
/// The Ethernet broadcast address.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// Builds the 28-byte ARP payload of a gratuitous ARP request for `ip` owned by `mac`.
pub fn gratuitous_arp_payload(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype: IPv4
    p[4] = 6; // hlen
    p[5] = 4; // plen
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // op: request
    p[8..14].copy_from_slice(&mac); // sender hardware address
    p[14..18].copy_from_slice(&ip.octets()); // sender protocol address
    p[18..24].copy_from_slice(&BROADCAST_MAC); // target hardware address
    p[24..28].copy_from_slice(&ip.octets()); // target protocol address
    p
}

/// Broadcasts one gratuitous ARP request for `ip` (owned by `mac`) out of interface `ifindex`
/// (`arping -U -c 1 -I IFACE IP`), in the calling thread's network namespace.
///
/// Errors: the socket could not be opened (needs `CAP_NET_RAW`) or the send failed (interface
/// missing or down: `ENXIO`/`ENETDOWN`).
pub fn send_gratuitous_arp(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("gratuitous ARP for {ip} on ifindex {ifindex}: {what}: {e}"),
        )
    };
    let ifindex_c = i32::try_from(ifindex).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ifindex {ifindex} out of range"),
        )
    })?;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if raw < 0 {
        return Err(ctx("socket(AF_PACKET)", io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex_c;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&BROADCAST_MAC);

    let payload = gratuitous_arp_payload(mac, ip);
    // SAFETY: the buffer and address pointers are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(ctx("sendto", io::Error::last_os_error()));
    }
    if n as usize != payload.len() {
        return Err(ctx(
            "sendto",
            io::Error::other(format!("short send: {n} of {} bytes", payload.len())),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_layout_matches_rfc826() {
        let mac = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
        let ip = Ipv4Addr::new(10, 244, 1, 5);
        let p = gratuitous_arp_payload(mac, ip);
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &mac);
        assert_eq!(&p[14..18], &[10, 244, 1, 5]);
        assert_eq!(&p[18..24], &[0xff; 6]);
        assert_eq!(&p[24..28], &[10, 244, 1, 5]);
    }
}
