//! # The round-robin candidate order
//!
//! The reference allocator does not look for the *lowest* free address: it starts right
//! after the last address it handed out (`last_reserved_ip.<set>`) and walks forward,
//! stepping from the end of one range to the start of the next and from the last range back
//! to the first, until it comes back to where it started. A crash-looping pod therefore
//! does not get its old address back until the whole set has been cycled through, which
//! keeps stale conntrack entries and caches from hitting a new owner.
//!
//! [`RangeIter`] reproduces that order exactly (the reference's `RangeIter.Next`), with one
//! addition: besides the gateway it also skips the network address and, for IPv4, the
//! broadcast address, which only matter when an explicit `rangeStart`/`rangeEnd` reaches
//! them. A cursor outside the set (ranges changed since) means "start from the first range's
//! `rangeStart`", losing round-robin once, as in the reference.

use std::net::IpAddr;

use super::range::RangeSet;
use crate::net::{ip_from_u128, ip_to_u128};

/// Candidate addresses of a [`RangeSet`] in allocation order. Yields `(range index, ip)`;
/// finite (each allocatable address once).
#[derive(Clone, Debug)]
pub struct RangeIter<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<u128>,
    start: Option<u128>,
    done: bool,
}

impl<'a> RangeIter<'a> {
    /// Iterate `set` starting after `last_reserved` when the set contains it, else from the
    /// first range's start.
    pub fn new(set: &'a RangeSet, last_reserved: Option<IpAddr>) -> Self {
        let mut it = RangeIter {
            set,
            idx: 0,
            cur: None,
            start: None,
            done: set.ranges.is_empty(),
        };
        let found = last_reserved.and_then(|ip| {
            set.ranges
                .iter()
                .position(|r| r.contains(ip))
                .map(|i| (i, ip))
        });
        if let Some((i, ip)) = found {
            // Next() advances before returning, so the first candidate is last + 1.
            it.idx = i;
            it.cur = Some(ip_to_u128(ip.to_canonical()));
        }
        it
    }

    /// The address iteration stops at (the first candidate considered), once known.
    pub fn start_ip(&self) -> Option<IpAddr> {
        self.start.map(|v| ip_from_u128(v, self.set.is_ipv6()))
    }
}

impl Iterator for RangeIter<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<(usize, IpAddr)> {
        if self.done {
            return None;
        }
        let n = self.set.ranges.len();
        loop {
            let r = &self.set.ranges[self.idx];
            let cur = match self.cur {
                None => {
                    let c = ip_to_u128(r.start);
                    self.start = Some(c);
                    c
                }
                Some(c) => {
                    let next = if c == ip_to_u128(r.end) {
                        self.idx = (self.idx + 1) % n;
                        ip_to_u128(self.set.ranges[self.idx].start)
                    } else {
                        c + 1
                    };
                    match self.start {
                        None => self.start = Some(next),
                        Some(s) if s == next => {
                            self.done = true;
                            return None;
                        }
                        Some(_) => {}
                    }
                    next
                }
            };
            self.cur = Some(cur);
            let r = &self.set.ranges[self.idx];
            if !r.is_reserved_address(cur) {
                return Some((self.idx, ip_from_u128(cur, r.start.is_ipv6())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_local::range::RangeConfig;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }
    fn set(subnets: &[&str]) -> RangeSet {
        let c: Vec<RangeConfig> = subnets
            .iter()
            .map(|s| RangeConfig::from_subnet(s.parse().expect("subnet")))
            .collect();
        RangeSet::from_config(&c).expect("valid set")
    }
    fn order(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        RangeIter::new(set, last.map(ip))
            .map(|(_, a)| a.to_string())
            .collect()
    }

    #[test]
    fn from_the_beginning() {
        let s = set(&["192.168.1.0/29"]);
        assert_eq!(
            order(&s, None),
            [
                "192.168.1.2",
                "192.168.1.3",
                "192.168.1.4",
                "192.168.1.5",
                "192.168.1.6"
            ]
        );
    }

    #[test]
    fn from_the_end() {
        let s = set(&["192.168.1.0/29"]);
        assert_eq!(
            order(&s, Some("192.168.1.6")),
            [
                "192.168.1.2",
                "192.168.1.3",
                "192.168.1.4",
                "192.168.1.5",
                "192.168.1.6"
            ]
        );
    }

    #[test]
    fn from_the_middle() {
        let s = set(&["192.168.1.0/29"]);
        assert_eq!(
            order(&s, Some("192.168.1.3")),
            [
                "192.168.1.4",
                "192.168.1.5",
                "192.168.1.6",
                "192.168.1.2",
                "192.168.1.3"
            ]
        );
    }

    #[test]
    fn foreign_cursor_restarts_at_range_start() {
        let s = set(&["10.0.0.0/29"]);
        assert_eq!(order(&s, Some("10.0.0.128"))[0], "10.0.0.2");
        assert_eq!(order(&s, Some("2001:db8::1"))[0], "10.0.0.2");
    }

    #[test]
    fn end_of_one_range_moves_to_next_range() {
        let s = set(&["10.0.0.0/29", "10.0.1.0/29"]);
        let mut it = RangeIter::new(&s, Some(ip("10.0.0.6")));
        assert_eq!(it.next(), Some((1, ip("10.0.1.2"))));
        // The stop marker is the first address of the next range (the reference's startIP).
        assert_eq!(it.start_ip(), Some(ip("10.0.1.1")));
        let rest: Vec<_> = it.map(|(_, a)| a.to_string()).collect();
        assert_eq!(rest.len(), 9);
        assert_eq!(rest.last().map(String::as_str), Some("10.0.0.6"));
    }

    #[test]
    fn no_cursor_starts_at_first_range_start() {
        let s = set(&["10.0.0.0/29", "10.0.1.0/29"]);
        let mut it = RangeIter::new(&s, None);
        assert_eq!(it.next(), Some((0, ip("10.0.0.2"))));
        assert_eq!(it.start_ip(), Some(ip("10.0.0.1")));
    }

    #[test]
    fn last_range_wraps_to_first() {
        let s = set(&["10.0.0.0/30", "10.0.1.0/30", "10.0.2.0/30"]);
        assert_eq!(
            order(&s, Some("10.0.2.2")),
            ["10.0.0.2", "10.0.1.2", "10.0.2.2"]
        );
        assert_eq!(
            order(&s, Some("10.0.0.2")),
            ["10.0.1.2", "10.0.2.2", "10.0.0.2"]
        );
    }

    #[test]
    fn never_gateway_network_or_broadcast() {
        let c = RangeConfig {
            range_start: Some(ip("10.0.0.0")),
            range_end: Some(ip("10.0.0.7")),
            gateway: Some(ip("10.0.0.4")),
            ..RangeConfig::from_subnet("10.0.0.0/29".parse().expect("net"))
        };
        let s = RangeSet::from_config(&[c]).expect("set");
        for last in [None, Some("10.0.0.3"), Some("10.0.0.7"), Some("10.0.0.0")] {
            let mut got = order(&s, last);
            got.sort();
            assert_eq!(
                got,
                ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"],
                "{last:?}"
            );
        }
    }

    #[test]
    fn single_address_range_is_finite() {
        let c = RangeConfig {
            range_start: Some(ip("10.0.0.1")),
            range_end: Some(ip("10.0.0.1")),
            ..RangeConfig::from_subnet("10.0.0.0/29".parse().expect("net"))
        };
        let s = RangeSet::from_config(&[c]).expect("set");
        // The only address is the gateway.
        assert_eq!(order(&s, None), Vec::<String>::new());
        assert_eq!(order(&s, Some("10.0.0.1")), Vec::<String>::new());
    }

    #[test]
    fn v6_order() {
        let s = set(&["2001:db8:1::/64"]);
        let first: Vec<_> = RangeIter::new(&s, None).take(2).map(|(_, a)| a).collect();
        assert_eq!(first, [ip("2001:db8:1::2"), ip("2001:db8:1::3")]);
        let wrap: Vec<_> = RangeIter::new(&s, Some(ip("2001:db8:1::ffff:ffff:ffff:ffff")))
            .take(1)
            .map(|(_, a)| a)
            .collect();
        assert_eq!(wrap, [ip("2001:db8:1::2")]);
    }
}
