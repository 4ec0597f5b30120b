//! # net — small address arithmetic shared by the allocators
//!
//! flannel and host-local both reason about networks as "an integer plus a prefix length":
//! a node lease `10.244.1.0/24` is followed by `10.244.2.0/24`, the first usable host of a
//! subnet is its network address plus one, and a host-local range is walked address by
//! address. `ipnetwork` gives us parsing, `contains` and masks; this module adds the few
//! operations it lacks, for IPv4 and IPv6 alike, without ever panicking on overflow.
//!
//! Addresses are converted to `u128` (IPv4 occupies the low 32 bits) so that one code path
//! can iterate either family; the family travels alongside as a `bool`/`IpAddr` variant.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// The address as an integer (IPv4 in the low 32 bits).
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`ip_to_u128`]: `v6` selects the family; for IPv4 the value is truncated
/// to its low 32 bits.
pub fn ip_from_u128(value: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        // Truncation is the documented behaviour for out-of-range IPv4 values.
        IpAddr::V4(Ipv4Addr::from(value as u32))
    }
}

/// Number of address bits of the family of `ip` (32 or 128).
pub fn family_bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// The host mask of a prefix in a family of `bits` bits, as an integer (e.g. /24 of 32 ⇒ 0xff).
pub fn host_mask(prefix: u8, bits: u8) -> u128 {
    let host_bits = u32::from(bits.saturating_sub(prefix));
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// `ip` with its host bits cleared, same prefix (`10.244.1.1/24` ⇒ `10.244.1.0/24`).
pub fn masked(net: IpNetwork) -> IpNetwork {
    match net {
        IpNetwork::V4(n) => IpNetwork::V4(masked_v4(n)),
        IpNetwork::V6(n) => IpNetwork::V6(masked_v6(n)),
    }
}

/// IPv4 form of [`masked`].
pub fn masked_v4(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(net.network(), net.prefix()).unwrap_or(net)
}

/// IPv6 form of [`masked`].
pub fn masked_v6(net: Ipv6Network) -> Ipv6Network {
    Ipv6Network::new(net.network(), net.prefix()).unwrap_or(net)
}

/// True when `net` carries host bits (its address is not the network address).
pub fn has_host_bits(net: IpNetwork) -> bool {
    net.ip() != net.network()
}

/// First usable host of an IPv4 subnet: the network address plus one (`10.244.1.0/24` ⇒
/// `10.244.1.1`). Saturates at `255.255.255.255` for a /32 at the top of the space.
pub fn first_host(net: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(1))
}

/// IPv6 form of [`first_host`].
pub fn first_host_v6(net: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()).saturating_add(1))
}

/// The subnet with its address set to the first host — the form flanneld writes as
/// `FLANNEL_SUBNET` (`10.244.1.0/24` ⇒ `10.244.1.1/24`).
pub fn with_first_host(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(first_host(net), net.prefix()).unwrap_or(net)
}

/// IPv6 form of [`with_first_host`] (`FLANNEL_IPV6_SUBNET`).
pub fn with_first_host_v6(net: Ipv6Network) -> Ipv6Network {
    Ipv6Network::new(first_host_v6(net), net.prefix()).unwrap_or(net)
}

/// The subnet of the same size immediately after `net` (`10.244.1.0/24` ⇒ `10.244.2.0/24`),
/// or `None` when `net` is the last one of the address space (or a /0).
pub fn next_subnet(net: Ipv4Network) -> Option<Ipv4Network> {
    let size = 1u64 << (32 - u32::from(net.prefix()));
    let next = u64::from(u32::from(net.network())) + size;
    let next = u32::try_from(next).ok()?;
    Ipv4Network::new(Ipv4Addr::from(next), net.prefix()).ok()
}

/// IPv6 form of [`next_subnet`].
pub fn next_subnet_v6(net: Ipv6Network) -> Option<Ipv6Network> {
    let host_bits = 128 - u32::from(net.prefix());
    if host_bits >= 128 {
        return None;
    }
    let next = u128::from(net.network()).checked_add(1u128 << host_bits)?;
    Ipv6Network::new(Ipv6Addr::from(next), net.prefix()).ok()
}

/// True when the two networks share at least one address.
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// IPv6 form of [`overlaps`].
pub fn overlaps_v6(a: Ipv6Network, b: Ipv6Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// `ip` in its canonical family: an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) becomes
/// IPv4, as Go's `net.IP.To4` does in the reference plugins.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// 64-bit FNV-1a of `bytes`: tiny and stable across releases and platforms (unlike
/// `DefaultHasher`), for names and addresses that must not change between versions (host veth
/// names, nftables set names, VTEP MACs).
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Network {
        s.parse().expect("test network")
    }

    #[test]
    fn u128_round_trip() {
        for ip in [
            "0.0.0.0",
            "10.244.1.7",
            "255.255.255.255",
            "::",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_from_u128(ip_to_u128(ip), ip.is_ipv6()), ip);
        }
        assert_eq!(ip_to_u128("0.0.1.2".parse().expect("ip")), 258);
    }

    #[test]
    fn first_host_and_masking() {
        assert_eq!(
            first_host(v4("10.244.1.0/24")),
            Ipv4Addr::new(10, 244, 1, 1)
        );
        assert_eq!(with_first_host(v4("10.1.17.0/24")), v4("10.1.17.1/24"));
        assert_eq!(masked_v4(v4("10.1.17.1/24")), v4("10.1.17.0/24"));
        assert!(has_host_bits(IpNetwork::V4(v4("10.1.17.1/24"))));
        assert!(!has_host_bits(IpNetwork::V4(v4("10.1.17.0/24"))));
        let n6: Ipv6Network = "2001:db8:1::/64".parse().expect("net");
        assert_eq!(with_first_host_v6(n6).to_string(), "2001:db8:1::1/64");
    }

    #[test]
    fn next_subnet_walks_and_stops() {
        assert_eq!(next_subnet(v4("10.244.1.0/24")), Some(v4("10.244.2.0/24")));
        assert_eq!(
            next_subnet(v4("10.244.255.0/24")),
            Some(v4("10.245.0.0/24"))
        );
        assert_eq!(next_subnet(v4("255.255.255.0/24")), None);
        assert_eq!(next_subnet(v4("0.0.0.0/0")), None);
        let n6: Ipv6Network = "2001:db8:1::/64".parse().expect("net");
        assert_eq!(
            next_subnet_v6(n6).map(|n| n.to_string()),
            Some("2001:db8:1:1::/64".to_string())
        );
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(overlaps(v4("10.0.0.0/16"), v4("10.0.5.0/24")));
        assert!(overlaps(v4("10.0.5.0/24"), v4("10.0.0.0/16")));
        assert!(!overlaps(v4("10.0.0.0/24"), v4("10.0.1.0/24")));
    }

    #[test]
    fn host_mask_edges() {
        assert_eq!(host_mask(24, 32), 0xff);
        assert_eq!(host_mask(32, 32), 0);
        assert_eq!(host_mask(0, 128), u128::MAX);
        assert_eq!(host_mask(0, 32), 0xffff_ffff);
    }

    #[test]
    fn mapped_v6_becomes_v4() {
        let ip: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(canonical_ip(ip), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    }
}
