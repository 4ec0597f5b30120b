//! # subnet_alloc — carving the cluster network into per-node subnets
//!
//! flannel's network config names one cluster network (`Network`, e.g. `10.244.0.0/16`) and
//! the size of the slice each node gets (`SubnetLen`, e.g. 24). This module owns the two
//! pieces of arithmetic behind that:
//!
//! 1. **Validation with flannel's defaults** ([`Ipv4Pool::new`], [`Ipv6Pool::new`]), exactly as
//!    `pkg/subnet/config.go` computes them:
//!    * `SubnetLen` unset: 24 when the network is /22 or larger, else prefix + 2; a network
//!      smaller than /28 is refused. Set: at most /30 and at least prefix + 2, so the network
//!      holds at least four subnets. (IPv6: /64 up to a /62 network, max network /124,
//!      `IPv6SubnetLen` ≤ 126.)
//!    * `SubnetMin` defaults to the **second** subnet: the first one would put a node's
//!      `.0/32` VTEP address on the network address. `SubnetMax` defaults to the last subnet.
//!      Both must lie inside the network and sit on a `SubnetLen` boundary, and min ≤ max.
//!    * Every error names the JSON key at fault (`SubnetLen`, `IPv6SubnetMin`, ...).
//! 2. **Choosing a free subnet** ([`Ipv4Pool::free_subnets`] + [`pick`]): walk `[SubnetMin,
//!    SubnetMax]` in `SubnetLen` steps, skip every candidate that overlaps an existing lease or
//!    reservation (of any length), stop after [`MAX_CANDIDATES`] free ones and pick one at
//!    random. Randomness spreads concurrent joiners apart so that their create transactions
//!    rarely collide; the first-100 window keeps allocations dense at the bottom of the range.
//!    The walk jumps over occupied ranges instead of testing every slot against every lease,
//!    so it costs O(leases · log leases + 100) even in a sparse IPv6 /48.
//!
//! The random source is the caller's `FnMut(usize) -> usize` (tests pass a deterministic
//! one); [`SmallRng`] is a tiny SplitMix64 seeded from the clock and the PID for production,
//! which is all a load-spreading choice needs.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnetwork::{Ipv4Network, Ipv6Network};

/// How many free candidates the picker collects before choosing one (flannel's value).
pub const MAX_CANDIDATES: usize = 100;

/// A network config value that flannel would refuse.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid network config: {key}: {reason}")]
pub struct SubnetConfigError {
    /// The JSON key at fault, e.g. `SubnetLen` or `IPv6SubnetMax`.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Per-family constants and key names.
struct Family {
    bits: u8,
    max_subnet_len: u8,
    smallest_network: u8,
    default_len: u8,
    default_len_up_to: u8,
    network_key: &'static str,
    len_key: &'static str,
    min_key: &'static str,
    max_key: &'static str,
}

const V4: Family = Family {
    bits: 32,
    max_subnet_len: 30,
    smallest_network: 28,
    default_len: 24,
    default_len_up_to: 22,
    network_key: "Network",
    len_key: "SubnetLen",
    min_key: "SubnetMin",
    max_key: "SubnetMax",
};

const V6: Family = Family {
    bits: 128,
    max_subnet_len: 126,
    smallest_network: 124,
    default_len: 64,
    default_len_up_to: 62,
    network_key: "IPv6Network",
    len_key: "IPv6SubnetLen",
    min_key: "IPv6SubnetMin",
    max_key: "IPv6SubnetMax",
};

/// Validated `(subnet_len, min, max)` in integer form.
fn validate(
    fam: &Family,
    net: u128,
    prefix: u8,
    subnet_len: Option<u8>,
    min: Option<u128>,
    max: Option<u128>,
    show: impl Fn(u128) -> String,
) -> Result<(u8, u128, u128), SubnetConfigError> {
    let err = |key: &'static str, reason: String| SubnetConfigError { key, reason };
    let len = match subnet_len {
        Some(len) => {
            if len > fam.max_subnet_len {
                return Err(err(
                    fam.len_key,
                    format!("/{len} is too long: at most /{}", fam.max_subnet_len),
                ));
            }
            if u16::from(len) < u16::from(prefix) + 2 {
                return Err(err(
                    fam.len_key,
                    format!(
                        "/{len} must be at least /{} so that the /{prefix} network holds at least four subnets",
                        u16::from(prefix) + 2
                    ),
                ));
            }
            len
        }
        None if prefix > fam.smallest_network => {
            return Err(err(
                fam.network_key,
                format!(
                    "/{prefix} is too small: the minimum useful network prefix is /{}",
                    fam.smallest_network
                ),
            ));
        }
        None if prefix <= fam.default_len_up_to => fam.default_len,
        None => prefix + 2,
    };
    let size = crate::net::host_mask(len, fam.bits) + 1;
    let last = net | crate::net::host_mask(prefix, fam.bits);
    let inside = |a: u128| a >= net && a <= last;
    let aligned = |a: u128| a & crate::net::host_mask(len, fam.bits) == 0;
    let check = |key: &'static str, a: u128| -> Result<u128, SubnetConfigError> {
        if !inside(a) {
            return Err(err(key, format!("{} is outside the network", show(a))));
        }
        if !aligned(a) {
            return Err(err(key, format!("{} is not on a /{len} boundary", show(a))));
        }
        Ok(a)
    };
    let min = match min {
        Some(a) => check(fam.min_key, a)?,
        None => net + size,
    };
    let max = match max {
        Some(a) => check(fam.max_key, a)?,
        None => last - (size - 1),
    };
    if min > max {
        return Err(err(
            fam.min_key,
            format!("{} is above {} {}", show(min), fam.max_key, show(max)),
        ));
    }
    Ok((len, min, max))
}

/// Merged, sorted `[start, end]` ranges.
fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Walks `[min, max]` in `size` steps, skipping `taken` ranges, returning up to `limit` starts.
fn walk_free(
    min: u128,
    max: u128,
    size: u128,
    taken: Vec<(u128, u128)>,
    limit: usize,
) -> Vec<u128> {
    let taken = merge(taken);
    let mut out = Vec::new();
    let mut idx = 0;
    let mut cand = min;
    while cand <= max && out.len() < limit {
        let end = cand + (size - 1);
        while idx < taken.len() && taken[idx].1 < cand {
            idx += 1;
        }
        match taken.get(idx) {
            Some(&(s, e)) if s <= end => {
                // Overlaps: jump to the first aligned slot after this occupied range.
                let Some(next) = e.checked_add(1) else { break };
                let Some(next) = next.checked_add(size - 1).map(|n| n / size * size) else {
                    break;
                };
                cand = next;
            }
            _ => {
                out.push(cand);
                let Some(next) = cand.checked_add(size) else {
                    break;
                };
                cand = next;
            }
        }
    }
    out
}

/// Chooses one candidate with the caller's random source (`chooser(n)` → index, taken mod n).
pub fn pick<T: Copy>(candidates: &[T], chooser: &mut impl FnMut(usize) -> usize) -> Option<T> {
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[chooser(candidates.len()) % candidates.len()])
}

/// The validated IPv4 half of a flannel network config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Pool {
    /// The cluster network, host bits cleared (`Network`).
    pub network: Ipv4Network,
    /// Prefix length of each node's subnet (`SubnetLen`).
    pub subnet_len: u8,
    /// Lowest subnet handed out (`SubnetMin`).
    pub subnet_min: Ipv4Addr,
    /// Highest subnet handed out (`SubnetMax`).
    pub subnet_max: Ipv4Addr,
}

impl Ipv4Pool {
    /// Validates the config values and fills in flannel's defaults for the unset ones.
    ///
    /// `None` (or, as in Go, `Some(0)` / `Some(0.0.0.0)`) means "use the default".
    pub fn new(
        network: Ipv4Network,
        subnet_len: Option<u8>,
        subnet_min: Option<Ipv4Addr>,
        subnet_max: Option<Ipv4Addr>,
    ) -> Result<Self, SubnetConfigError> {
        let prefix = network.prefix();
        let net = u128::from(u32::from(network.network()));
        let unset_addr = |a: Option<Ipv4Addr>| a.filter(|a| !a.is_unspecified());
        let (len, min, max) = validate(
            &V4,
            net,
            prefix,
            subnet_len.filter(|l| *l != 0),
            unset_addr(subnet_min).map(|a| u128::from(u32::from(a))),
            unset_addr(subnet_max).map(|a| u128::from(u32::from(a))),
            |a| v4(a).to_string(),
        )?;
        Ok(Self {
            network: Ipv4Network::new(network.network(), prefix).map_err(|e| {
                SubnetConfigError {
                    key: "Network",
                    reason: e.to_string(),
                }
            })?,
            subnet_len: len,
            subnet_min: v4(min),
            subnet_max: v4(max),
        })
    }

    /// Whether `subnet` is one this config could have handed out: right length, aligned, and
    /// within `[SubnetMin, SubnetMax]` (flannel's `isSubnetConfigCompat`, plus alignment).
    pub fn contains_subnet(&self, subnet: &Ipv4Network) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.ip() == subnet.network()
            && subnet.ip() >= self.subnet_min
            && subnet.ip() <= self.subnet_max
    }

    /// The first `limit` subnets in `[SubnetMin, SubnetMax]` overlapping none of `taken`.
    pub fn free_subnets(&self, taken: &[Ipv4Network], limit: usize) -> Vec<Ipv4Network> {
        let ranges = taken
            .iter()
            .map(|t| {
                let s = u128::from(u32::from(t.network()));
                (s, s | crate::net::host_mask(t.prefix(), 32))
            })
            .collect();
        let size = crate::net::host_mask(self.subnet_len, 32) + 1;
        walk_free(
            u128::from(u32::from(self.subnet_min)),
            u128::from(u32::from(self.subnet_max)),
            size,
            ranges,
            limit,
        )
        .into_iter()
        .filter_map(|a| Ipv4Network::new(v4(a), self.subnet_len).ok())
        .collect()
    }

    /// Number of subnets in `[SubnetMin, SubnetMax]`.
    pub fn capacity(&self) -> u64 {
        let size = crate::net::host_mask(self.subnet_len, 32) + 1;
        let span = u128::from(u32::from(self.subnet_max)) - u128::from(u32::from(self.subnet_min));
        (span / size + 1) as u64
    }
}

/// The validated IPv6 half of a flannel network config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Pool {
    /// The cluster IPv6 network, host bits cleared (`IPv6Network`).
    pub network: Ipv6Network,
    /// Prefix length of each node's subnet (`IPv6SubnetLen`).
    pub subnet_len: u8,
    /// Lowest subnet handed out (`IPv6SubnetMin`).
    pub subnet_min: Ipv6Addr,
    /// Highest subnet handed out (`IPv6SubnetMax`).
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Pool {
    /// Validates the config values and fills in flannel's defaults for the unset ones.
    pub fn new(
        network: Ipv6Network,
        subnet_len: Option<u8>,
        subnet_min: Option<Ipv6Addr>,
        subnet_max: Option<Ipv6Addr>,
    ) -> Result<Self, SubnetConfigError> {
        let prefix = network.prefix();
        let net = u128::from(network.network());
        let unset_addr = |a: Option<Ipv6Addr>| a.filter(|a| !a.is_unspecified());
        let (len, min, max) = validate(
            &V6,
            net,
            prefix,
            subnet_len.filter(|l| *l != 0),
            unset_addr(subnet_min).map(u128::from),
            unset_addr(subnet_max).map(u128::from),
            |a| Ipv6Addr::from(a).to_string(),
        )?;
        Ok(Self {
            network: Ipv6Network::new(network.network(), prefix).map_err(|e| {
                SubnetConfigError {
                    key: "IPv6Network",
                    reason: e.to_string(),
                }
            })?,
            subnet_len: len,
            subnet_min: Ipv6Addr::from(min),
            subnet_max: Ipv6Addr::from(max),
        })
    }

    /// Whether `subnet` is one this config could have handed out.
    pub fn contains_subnet(&self, subnet: &Ipv6Network) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.ip() == subnet.network()
            && subnet.ip() >= self.subnet_min
            && subnet.ip() <= self.subnet_max
    }

    /// The first `limit` subnets in `[IPv6SubnetMin, IPv6SubnetMax]` overlapping none of `taken`.
    pub fn free_subnets(&self, taken: &[Ipv6Network], limit: usize) -> Vec<Ipv6Network> {
        let ranges = taken
            .iter()
            .map(|t| {
                let s = u128::from(t.network());
                (s, s | crate::net::host_mask(t.prefix(), 128))
            })
            .collect();
        let size = crate::net::host_mask(self.subnet_len, 128) + 1;
        walk_free(
            u128::from(self.subnet_min),
            u128::from(self.subnet_max),
            size,
            ranges,
            limit,
        )
        .into_iter()
        .filter_map(|a| Ipv6Network::new(Ipv6Addr::from(a), self.subnet_len).ok())
        .collect()
    }
}

fn v4(a: u128) -> Ipv4Addr {
    // Only ever called with values derived from 32-bit addresses.
    Ipv4Addr::from(a as u32)
}

/// A tiny SplitMix64 generator: enough to spread concurrent allocations, not for secrets.
#[derive(Debug, Clone)]
pub struct SmallRng(u64);

impl SmallRng {
    /// A generator with a fixed seed (tests).
    pub fn with_seed(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from the clock, the PID and a per-process counter.
    pub fn from_entropy() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let pid = u64::from(std::process::id());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut rng = Self(nanos ^ (pid << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n4(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }
    fn a4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_defaults_table() {
        // (network, SubnetLen given, expected len, expected min, expected max)
        let cases = [
            ("10.244.0.0/16", None, 24, "10.244.1.0", "10.244.255.0"),
            ("10.0.0.0/8", None, 24, "10.0.1.0", "10.255.255.0"),
            ("10.244.0.0/22", None, 24, "10.244.1.0", "10.244.3.0"),
            ("10.244.0.0/23", None, 25, "10.244.0.128", "10.244.1.128"),
            ("10.244.0.0/28", None, 30, "10.244.0.4", "10.244.0.12"),
            ("10.244.0.0/16", Some(20), 20, "10.244.16.0", "10.244.240.0"),
            ("10.244.0.0/16", Some(18), 18, "10.244.64.0", "10.244.192.0"),
            (
                "10.244.0.0/16",
                Some(30),
                30,
                "10.244.0.4",
                "10.244.255.252",
            ),
            // Host bits in Network are masked off; 0 means default as in Go.
            ("10.244.7.9/16", Some(0), 24, "10.244.1.0", "10.244.255.0"),
        ];
        for (net, len, want_len, min, max) in cases {
            let p = Ipv4Pool::new(n4(net), len, None, None).unwrap();
            assert_eq!(
                p.network,
                n4(&format!("{}/{}", n4(net).network(), n4(net).prefix()))
            );
            assert_eq!(
                (p.subnet_len, p.subnet_min, p.subnet_max),
                (want_len, a4(min), a4(max)),
                "{net}"
            );
        }
    }

    #[test]
    fn v4_validation_errors_name_the_key() {
        /// (Network, SubnetLen, SubnetMin, SubnetMax, the key the error must name)
        type Case<'a> = (
            &'a str,
            Option<u8>,
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
        );
        let cases: [Case; 9] = [
            ("10.244.0.0/29", None, None, None, "Network"),
            ("10.244.0.0/16", Some(31), None, None, "SubnetLen"),
            ("10.244.0.0/16", Some(17), None, None, "SubnetLen"),
            ("10.244.0.0/16", Some(8), None, None, "SubnetLen"),
            ("10.244.0.0/16", None, Some("10.245.1.0"), None, "SubnetMin"),
            (
                "10.244.0.0/16",
                None,
                Some("10.244.1.128"),
                None,
                "SubnetMin",
            ),
            ("10.244.0.0/16", None, None, Some("10.1.0.0"), "SubnetMax"),
            ("10.244.0.0/16", None, None, Some("10.244.3.1"), "SubnetMax"),
            (
                "10.244.0.0/16",
                None,
                Some("10.244.9.0"),
                Some("10.244.3.0"),
                "SubnetMin",
            ),
        ];
        for (net, len, min, max, key) in cases {
            let e = Ipv4Pool::new(n4(net), len, min.map(a4), max.map(a4)).unwrap_err();
            assert_eq!(e.key, key, "{net} {len:?} {min:?} {max:?}: {e}");
            assert!(e.to_string().contains(key));
        }
    }

    #[test]
    fn v6_defaults_and_errors() {
        let p = Ipv6Pool::new("fc00::/48".parse().unwrap(), None, None, None).unwrap();
        assert_eq!(p.subnet_len, 64);
        assert_eq!(p.subnet_min, "fc00:0:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.subnet_max, "fc00:0:0:ffff::".parse::<Ipv6Addr>().unwrap());
        let p = Ipv6Pool::new("fc00::/63".parse().unwrap(), None, None, None).unwrap();
        assert_eq!(p.subnet_len, 65);
        let p = Ipv6Pool::new("fc00::/120".parse().unwrap(), Some(126), None, None).unwrap();
        assert_eq!(p.subnet_min, "fc00::4".parse::<Ipv6Addr>().unwrap());
        let e = Ipv6Pool::new("fc00::/125".parse().unwrap(), None, None, None).unwrap_err();
        assert_eq!(e.key, "IPv6Network");
        let e = Ipv6Pool::new("fc00::/48".parse().unwrap(), Some(127), None, None).unwrap_err();
        assert_eq!(e.key, "IPv6SubnetLen");
        let e = Ipv6Pool::new(
            "fc00::/48".parse().unwrap(),
            None,
            Some("fc00:0:0:1::1".parse().unwrap()),
            None,
        )
        .unwrap_err();
        assert_eq!(e.key, "IPv6SubnetMin");
    }

    #[test]
    fn contains_subnet_checks_len_alignment_and_range() {
        let p = Ipv4Pool::new(
            n4("10.244.0.0/16"),
            None,
            Some(a4("10.244.10.0")),
            Some(a4("10.244.20.0")),
        )
        .unwrap();
        assert!(p.contains_subnet(&n4("10.244.10.0/24")));
        assert!(p.contains_subnet(&n4("10.244.20.0/24")));
        assert!(!p.contains_subnet(&n4("10.244.9.0/24")));
        assert!(!p.contains_subnet(&n4("10.244.21.0/24")));
        assert!(!p.contains_subnet(&n4("10.244.12.0/23")));
        assert!(!p.contains_subnet(&n4("10.244.12.1/24")));
        assert_eq!(p.capacity(), 11);
    }

    #[test]
    fn free_subnets_skip_overlaps_of_any_length() {
        let p = Ipv4Pool::new(n4("10.244.0.0/16"), None, None, None).unwrap();
        let taken = [
            n4("10.244.1.0/24"),
            n4("10.244.2.0/23"),   // covers .2 and .3
            n4("10.244.5.128/25"), // part of .5
            n4("10.244.0.0/24"),   // below SubnetMin: irrelevant
        ];
        let free = p.free_subnets(&taken, 4);
        assert_eq!(
            free,
            vec![
                n4("10.244.4.0/24"),
                n4("10.244.6.0/24"),
                n4("10.244.7.0/24"),
                n4("10.244.8.0/24")
            ]
        );
        // Brute force cross-check over the whole range.
        let all = p.free_subnets(&taken, usize::MAX);
        let brute: Vec<_> = (1..=255u32)
            .map(|i| n4(&format!("10.244.{i}.0/24")))
            .filter(|c| !taken.iter().any(|t| t.overlaps(*c)))
            .collect();
        assert_eq!(all, brute);
        assert_eq!(p.free_subnets(&taken, MAX_CANDIDATES).len(), MAX_CANDIDATES);
    }

    #[test]
    fn free_subnets_when_full_or_wide_lease() {
        let p = Ipv4Pool::new(n4("10.244.0.0/16"), None, None, None).unwrap();
        assert!(p.free_subnets(&[n4("10.244.0.0/16")], 100).is_empty());
        assert!(p.free_subnets(&[n4("0.0.0.0/0")], 100).is_empty());
        let p = Ipv4Pool::new(n4("255.255.255.0/24"), Some(26), None, None).unwrap();
        assert_eq!(
            p.free_subnets(&[], 100),
            vec![
                n4("255.255.255.64/26"),
                n4("255.255.255.128/26"),
                n4("255.255.255.192/26")
            ]
        );
        assert!(
            p.free_subnets(&[n4("255.255.255.64/26"), n4("255.255.255.128/25")], 100)
                .is_empty()
        );
    }

    #[test]
    fn v6_free_subnets_in_sparse_space() {
        let p = Ipv6Pool::new("fc00::/48".parse().unwrap(), None, None, None).unwrap();
        let taken: Vec<Ipv6Network> = vec![
            "fc00:0:0:1::/64".parse().unwrap(),
            "fc00:0:0:3::/64".parse().unwrap(),
        ];
        let free = p.free_subnets(&taken, 2);
        assert_eq!(
            free,
            vec![
                "fc00:0:0:2::/64".parse::<Ipv6Network>().unwrap(),
                "fc00:0:0:4::/64".parse().unwrap()
            ]
        );
        let p = Ipv6Pool::new(
            "ffff:ffff:ffff:ffff::/64".parse().unwrap(),
            None,
            None,
            None,
        )
        .unwrap();
        let free = p.free_subnets(&[], usize::MAX);
        assert_eq!(free.len(), 3);
        assert_eq!(
            free[2].ip(),
            "ffff:ffff:ffff:ffff:c000::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn pick_uses_the_chooser_and_stays_in_range() {
        let p = Ipv4Pool::new(
            n4("10.244.0.0/16"),
            None,
            Some(a4("10.244.50.0")),
            Some(a4("10.244.60.0")),
        )
        .unwrap();
        let free = p.free_subnets(&[], MAX_CANDIDATES);
        assert_eq!(free.len(), 11);
        assert_eq!(pick(&free, &mut |_| 3), Some(n4("10.244.53.0/24")));
        assert_eq!(pick(&free, &mut |n| n + 1), Some(n4("10.244.51.0/24")));
        let mut rng = SmallRng::from_entropy();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let s = pick(&free, &mut |n| rng.below(n)).unwrap();
            assert!(p.contains_subnet(&s));
            seen.insert(s);
        }
        // 500 draws over 11 slots: every slot is hit (probability of a miss ~ 1e-19).
        assert_eq!(seen.len(), 11);
        assert_eq!(pick::<Ipv4Network>(&[], &mut |_| 0), None);
    }

    #[test]
    fn small_rng_is_deterministic_per_seed() {
        let mut a = SmallRng::with_seed(42);
        let mut b = SmallRng::with_seed(42);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        assert_eq!(a.below(0), 0);
        assert!(a.below(7) < 7);
    }
}
