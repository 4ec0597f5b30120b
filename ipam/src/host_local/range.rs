//! # Ranges and range sets
//!
//! A host-local config names address pools as `ranges: [[{subnet, rangeStart?, rangeEnd?,
//! gateway?}, ...], ...]`. The outer list holds *range sets* (one address is allocated from
//! each — typically one IPv4 set and one IPv6 set); the inner list holds *ranges*, pools tried
//! in order within a set. [`Range::from_config`] is the reference `Canonicalize`: it fills in
//! defaults (start = network+1, end = broadcast-1 for IPv4 / last address for IPv6, gateway =
//! network+1) and rejects what the reference rejects, with the reference's wording.
//!
//! All comparisons go through `u128` (see [`crate::net`]), so IPv4 and IPv6 share one code
//! path; a range never mixes families.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::IpamError;
use crate::net::{family_bits, has_host_bits, host_mask, ip_from_u128, ip_to_u128, masked};

/// One `ranges[i][j]` entry of a host-local config, as written in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConfig {
    /// The subnet, which must be a network address (`10.244.1.0/24`, not `10.244.1.1/24`).
    pub subnet: IpNetwork,
    /// First allocatable address (default: network + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Last allocatable address (default: broadcast − 1 for IPv4, last address for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// Gateway returned with the address and never allocated (default: network + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

impl RangeConfig {
    /// A config with only a subnet, everything else defaulted (flannel's generated form).
    pub fn from_subnet(subnet: IpNetwork) -> Self {
        RangeConfig {
            subnet,
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }
}

/// A validated range with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// The network (host bits clear).
    pub subnet: IpNetwork,
    /// First address of the pool (inclusive).
    pub start: IpAddr,
    /// Last address of the pool (inclusive).
    pub end: IpAddr,
    /// The gateway: returned with allocations, never allocated itself.
    pub gateway: IpAddr,
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

impl Range {
    /// Validate a config entry and fill in its defaults (reference `Range.Canonicalize`).
    pub fn from_config(c: &RangeConfig) -> Result<Range, IpamError> {
        let subnet = c.subnet;
        let bits = family_bits(subnet.ip());
        if subnet.prefix() > bits - 2 {
            return Err(IpamError::InvalidConfig(format!(
                "Network {subnet} too small to allocate from"
            )));
        }
        if has_host_bits(subnet) {
            return Err(IpamError::InvalidConfig(format!(
                "Network has host bits set. For a subnet mask of length {} the network address is {}",
                subnet.prefix(),
                subnet.network()
            )));
        }
        let subnet = masked(subnet);
        let v6 = subnet.is_ipv6();
        let net = ip_to_u128(subnet.network());
        let first = ip_from_u128(net + 1, v6);
        let in_subnet = |ip: IpAddr| same_family(ip, subnet.ip()) && subnet.contains(ip);

        let gateway = match c.gateway.map(|a| a.to_canonical()) {
            None => first,
            Some(gw) if in_subnet(gw) => gw,
            Some(gw) => {
                return Err(IpamError::InvalidConfig(format!(
                    "gateway {gw} not in network {subnet}"
                )));
            }
        };
        let start = match c.range_start.map(|a| a.to_canonical()) {
            None => first,
            Some(s) if in_subnet(s) => s,
            Some(s) => {
                return Err(IpamError::InvalidConfig(format!(
                    "RangeStart {s} not in network {subnet}"
                )));
            }
        };
        let end = match c.range_end.map(|a| a.to_canonical()) {
            None => {
                let last = net | host_mask(subnet.prefix(), bits);
                ip_from_u128(if v6 { last } else { last - 1 }, v6)
            }
            Some(e) if in_subnet(e) => e,
            Some(e) => {
                return Err(IpamError::InvalidConfig(format!(
                    "RangeEnd {e} not in network {subnet}"
                )));
            }
        };
        if ip_to_u128(start) > ip_to_u128(end) {
            return Err(IpamError::InvalidConfig(format!(
                "RangeStart {start} is after RangeEnd {end} in network {subnet}"
            )));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    /// True when `ip` is of this family, inside the subnet and within `start..=end`
    /// (reference `Range.Contains`). The gateway counts as contained.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if !same_family(ip, self.start) || !self.subnet.contains(ip) {
            return false;
        }
        let v = ip_to_u128(ip);
        v >= ip_to_u128(self.start) && v <= ip_to_u128(self.end)
    }

    /// True when `ip` may be handed out: contained, and not the gateway, the network
    /// address or (IPv4) the broadcast address.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && !self.is_reserved_address(ip_to_u128(ip.to_canonical()))
    }

    /// Gateway, network or IPv4 broadcast: never allocated even when inside start..=end.
    pub(crate) fn is_reserved_address(&self, v: u128) -> bool {
        let net = ip_to_u128(self.subnet.network());
        v == ip_to_u128(self.gateway)
            || v == net
            || (self.subnet.is_ipv4()
                && v == net | host_mask(self.subnet.prefix(), family_bits(self.start)))
    }

    /// Number of addresses [`is_allocatable`](Self::is_allocatable) accepts.
    pub fn size(&self) -> u128 {
        let (s, e) = (ip_to_u128(self.start), ip_to_u128(self.end));
        let net = ip_to_u128(self.subnet.network());
        let mut specials = vec![ip_to_u128(self.gateway), net];
        if self.subnet.is_ipv4() {
            specials.push(net | host_mask(self.subnet.prefix(), 32));
        }
        specials.sort_unstable();
        specials.dedup();
        let inside = specials.iter().filter(|v| **v >= s && **v <= e).count() as u128;
        // Only an IPv6 range spanning the whole space could overflow `e - s + 1`: saturate.
        (e - s).saturating_add(1).saturating_sub(inside)
    }

    /// Reference `Range.Overlaps`: same family and either range contains an end of the other.
    pub fn overlaps(&self, other: &Range) -> bool {
        same_family(self.start, other.start)
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }

    /// The prefix length returned with addresses of this range.
    pub fn prefix(&self) -> u8 {
        self.subnet.prefix()
    }
}

impl fmt::Display for Range {
    /// `start-end`, as the reference prints ranges in its error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The pools of one `ranges[i]` entry: tried in order, one address allocated per set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet {
    /// The validated ranges, in config order.
    pub ranges: Vec<Range>,
}

impl RangeSet {
    /// Validate a set (reference `RangeSet.Canonicalize`): not empty, one family, no two
    /// ranges overlapping.
    pub fn from_config(c: &[RangeConfig]) -> Result<RangeSet, IpamError> {
        if c.is_empty() {
            return Err(IpamError::InvalidConfig("empty range set".into()));
        }
        let ranges = c
            .iter()
            .map(Range::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        if ranges
            .iter()
            .any(|r| r.start.is_ipv4() != ranges[0].start.is_ipv4())
        {
            return Err(IpamError::InvalidConfig("mixed address families".into()));
        }
        for (i, r1) in ranges.iter().enumerate() {
            for r2 in &ranges[i + 1..] {
                if r1.overlaps(r2) {
                    return Err(IpamError::InvalidConfig(format!(
                        "subnets {r1} and {r2} overlap"
                    )));
                }
            }
        }
        Ok(RangeSet { ranges })
    }

    /// True when some range of the set contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// The range containing `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// True when any range of `self` overlaps any range of `other`.
    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges
            .iter()
            .any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }

    /// True for an IPv6 set.
    pub fn is_ipv6(&self) -> bool {
        self.ranges.first().is_some_and(|r| r.start.is_ipv6())
    }

    /// Total number of allocatable addresses over all ranges.
    pub fn size(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.size()))
    }
}

impl fmt::Display for RangeSet {
    /// `start-end,start-end`, as in the reference's "no IP addresses available" message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Reject configs where two range sets overlap (reference `LoadIPAMConfig`).
pub fn validate_range_sets(sets: &[RangeSet]) -> Result<(), IpamError> {
    for (i, a) in sets.iter().enumerate() {
        for (j, b) in sets.iter().enumerate().skip(i + 1) {
            if a.overlaps(b) {
                return Err(IpamError::InvalidConfig(format!(
                    "range set {i} overlaps with range set {j}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(subnet: &str) -> RangeConfig {
        RangeConfig::from_subnet(subnet.parse().expect("subnet"))
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }
    fn err_text(r: Result<Range, IpamError>) -> String {
        match r {
            Err(IpamError::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn v4_defaults() {
        for (net, end) in [
            ("192.0.2.0/24", "192.0.2.254"),
            ("192.0.2.0/25", "192.0.2.126"),
        ] {
            let r = Range::from_config(&cfg(net)).expect("valid");
            assert_eq!(r.subnet.to_string(), net);
            assert_eq!(r.start, ip("192.0.2.1"));
            assert_eq!(r.end, ip(end));
            assert_eq!(r.gateway, ip("192.0.2.1"));
        }
    }

    #[test]
    fn v6_defaults() {
        let r = Range::from_config(&cfg("2001:DB8:1::/64")).expect("valid");
        assert_eq!(r.start, ip("2001:db8:1::1"));
        assert_eq!(r.end, ip("2001:db8:1::ffff:ffff:ffff:ffff"));
        assert_eq!(r.gateway, ip("2001:db8:1::1"));
    }

    #[test]
    fn validation_table() {
        let cases: [(RangeConfig, &str); 10] = [
            (
                cfg("192.0.2.12/24"),
                "Network has host bits set. For a subnet mask of length 24 the network address is 192.0.2.0",
            ),
            (
                cfg("2001:DB8:1::24:19ff:fee1:c44a/64"),
                "Network has host bits set. For a subnet mask of length 64 the network address is 2001:db8:1::",
            ),
            (
                cfg("2001:DB8:24:19ff::/63"),
                "Network has host bits set. For a subnet mask of length 63 the network address is 2001:db8:24:19fe::",
            ),
            (
                cfg("192.168.127.0/23"),
                "Network has host bits set. For a subnet mask of length 23 the network address is 192.168.126.0",
            ),
            (
                cfg("192.0.2.0/31"),
                "Network 192.0.2.0/31 too small to allocate from",
            ),
            (
                cfg("192.0.2.0/32"),
                "Network 192.0.2.0/32 too small to allocate from",
            ),
            (
                cfg("2001:db8::/127"),
                "Network 2001:db8::/127 too small to allocate from",
            ),
            (
                RangeConfig {
                    range_start: Some(ip("192.0.3.0")),
                    ..cfg("192.0.2.0/24")
                },
                "RangeStart 192.0.3.0 not in network 192.0.2.0/24",
            ),
            (
                RangeConfig {
                    range_end: Some(ip("192.0.4.0")),
                    ..cfg("192.0.2.0/24")
                },
                "RangeEnd 192.0.4.0 not in network 192.0.2.0/24",
            ),
            (
                RangeConfig {
                    gateway: Some(ip("10.0.0.1")),
                    ..cfg("192.0.2.0/24")
                },
                "gateway 10.0.0.1 not in network 192.0.2.0/24",
            ),
        ];
        for (c, want) in cases {
            assert_eq!(err_text(Range::from_config(&c)), want, "{c:?}");
        }
        let swapped = RangeConfig {
            range_start: Some(ip("192.0.2.50")),
            range_end: Some(ip("192.0.2.40")),
            ..cfg("192.0.2.0/24")
        };
        assert!(err_text(Range::from_config(&swapped)).contains("RangeStart 192.0.2.50"));
        let wrong_family = RangeConfig {
            range_start: Some(ip("2001:db8::5")),
            ..cfg("192.0.2.0/24")
        };
        assert!(err_text(Range::from_config(&wrong_family)).contains("not in network"));
        // /30 is the smallest usable IPv4 network.
        assert!(Range::from_config(&cfg("10.0.0.0/30")).is_ok());
    }

    #[test]
    fn explicit_fields_and_contains() {
        let r = Range::from_config(&RangeConfig {
            range_start: Some(ip("192.0.2.40")),
            range_end: Some(ip("192.0.2.50")),
            gateway: Some(ip("192.0.2.254")),
            ..cfg("192.0.2.0/24")
        })
        .expect("valid");
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("192.0.2.40"), ip("192.0.2.50"), ip("192.0.2.254"))
        );
        for (a, inside) in [
            ("192.0.3.0", false),
            ("192.0.2.39", false),
            ("192.0.2.40", true),
            ("192.0.2.50", true),
            ("192.0.2.51", false),
            ("::ffff:192.0.2.45", true),
            ("2001:db8::40", false),
        ] {
            assert_eq!(r.contains(ip(a)), inside, "{a}");
        }
        assert_eq!(r.size(), 11);
        assert_eq!(r.to_string(), "192.0.2.40-192.0.2.50");

        let r6 = Range::from_config(&RangeConfig {
            range_start: Some(ip("2001:db8:1::40")),
            range_end: Some(ip("2001:db8:1::50")),
            ..cfg("2001:DB8:1::/64")
        })
        .expect("valid");
        assert!(!r6.contains(ip("2001:db8:2::")));
        assert!(!r6.contains(ip("2001:db8:1::39")));
        assert!(r6.contains(ip("2001:db8:1::40")));
        assert!(r6.contains(ip("2001:db8:1::50")));
        assert!(!r6.contains(ip("2001:db8:1::51")));
    }

    #[test]
    fn size_excludes_gateway_network_broadcast() {
        assert_eq!(
            Range::from_config(&cfg("10.0.0.0/24")).expect("r").size(),
            253
        );
        assert_eq!(
            Range::from_config(&cfg("10.0.0.0/30")).expect("r").size(),
            1
        );
        let whole = Range::from_config(&RangeConfig {
            range_start: Some(ip("10.0.0.0")),
            range_end: Some(ip("10.0.0.7")),
            ..cfg("10.0.0.0/29")
        })
        .expect("r");
        assert_eq!(whole.size(), 5);
        assert!(!whole.is_allocatable(ip("10.0.0.0")));
        assert!(!whole.is_allocatable(ip("10.0.0.1")));
        assert!(!whole.is_allocatable(ip("10.0.0.7")));
        assert!(whole.is_allocatable(ip("10.0.0.6")));
    }

    #[test]
    fn overlap_detection() {
        let r = |c: RangeConfig| Range::from_config(&c).expect("valid");
        let table = [
            (cfg("10.0.0.0/24"), cfg("10.0.1.0/24"), false),
            (cfg("0.0.0.0/24"), cfg("::/24"), false),
            (cfg("10.0.0.0/24"), cfg("10.0.0.0/24"), true),
            (cfg("10.0.0.0/20"), cfg("10.0.1.0/24"), true),
            (
                RangeConfig {
                    range_end: Some(ip("10.0.0.127")),
                    ..cfg("10.0.0.0/24")
                },
                RangeConfig {
                    range_start: Some(ip("10.0.0.128")),
                    ..cfg("10.0.0.0/24")
                },
                false,
            ),
            (
                RangeConfig {
                    range_end: Some(ip("10.0.0.127")),
                    ..cfg("10.0.0.0/24")
                },
                RangeConfig {
                    range_start: Some(ip("10.0.0.127")),
                    ..cfg("10.0.0.0/24")
                },
                true,
            ),
        ];
        for (a, b, want) in table {
            let (a, b) = (r(a), r(b));
            assert_eq!(a.overlaps(&b), want, "{a} vs {b}");
            assert_eq!(b.overlaps(&a), want, "{b} vs {a}");
        }
    }

    #[test]
    fn range_set_validation() {
        let e = RangeSet::from_config(&[]).expect_err("empty");
        assert_eq!(e.to_string(), "empty range set");
        let e =
            RangeSet::from_config(&[cfg("10.0.0.0/24"), cfg("2001:db8::/64")]).expect_err("mixed");
        assert_eq!(e.to_string(), "mixed address families");
        let e =
            RangeSet::from_config(&[cfg("10.0.0.0/20"), cfg("10.0.1.0/24")]).expect_err("overlap");
        assert_eq!(
            e.to_string(),
            "subnets 10.0.0.1-10.0.15.254 and 10.0.1.1-10.0.1.254 overlap"
        );
        let ok = RangeSet::from_config(&[cfg("10.1.2.0/24"), cfg("10.2.2.0/24")]).expect("ok");
        assert_eq!(ok.to_string(), "10.1.2.1-10.1.2.254,10.2.2.1-10.2.2.254");
        assert!(ok.contains(ip("10.2.2.9")));
        assert!(!ok.contains(ip("10.3.2.9")));
        assert!(!ok.is_ipv6());
    }

    #[test]
    fn range_sets_must_not_overlap() {
        let a = RangeSet::from_config(&[cfg("10.0.0.0/24")]).expect("a");
        let b = RangeSet::from_config(&[cfg("10.0.1.0/24"), cfg("10.0.0.0/16")]);
        // 10.0.0.0/16 overlaps 10.0.1.0/24 inside b itself.
        assert!(b.is_err());
        let b = RangeSet::from_config(&[cfg("10.0.0.0/16")]).expect("b");
        let c = RangeSet::from_config(&[cfg("2001:db8::/64")]).expect("c");
        assert!(validate_range_sets(&[a.clone(), c.clone()]).is_ok());
        let e = validate_range_sets(&[c, a, b]).expect_err("overlap");
        assert_eq!(e.to_string(), "range set 1 overlaps with range set 2");
    }

    #[test]
    fn config_json_shape() {
        let c: RangeConfig = serde_json::from_str(
            r#"{"subnet":"10.1.17.0/24","rangeStart":"10.1.17.10","gateway":"10.1.17.1"}"#,
        )
        .expect("json");
        assert_eq!(c.range_start, Some(ip("10.1.17.10")));
        assert_eq!(c.range_end, None);
        let back = serde_json::to_string(&cfg("10.1.17.0/24")).expect("ser");
        assert_eq!(back, r#"{"subnet":"10.1.17.0/24"}"#);
    }
}
