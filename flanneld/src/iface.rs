//! # iface — choosing the external interface whose addresses go into the lease
//!
//! flannel's order, kept so that existing `--iface*` settings pick the same interface:
//! `--iface` entries (an interface name or one of its addresses) in the order given, then
//! `--iface-regex` (matched against each address first, then against interface names), then
//! `--iface-can-reach` (the interface of the most specific route to that address), and finally the
//! interface of the default route. `--public-ip` (`--public-ipv6`) overrides the address
//! published in the lease; without any `--iface*` flag it also selects the interface that owns
//! that address.
//!
//! The network config says which families are needed ([`IfaceSelector::ipv4`],
//! [`IfaceSelector::ipv6`]): the chosen interface must have an address of each (IPv6: a
//! global or unique-local one; link-local addresses cannot be a tunnel endpoint for peers on
//! other links). A dual-stack node uses one interface for both, as flannel does: the IPv4
//! default route's in dual stack, the IPv6 default route's in an IPv6-only network.
//!
//! Everything is read through [`Netlink`] in the daemon's current network namespace, so one
//! flanneld per node namespace sees only its own node's interfaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use backends::kernel::netlink::{AddressEntry, IpFamily, Link, Netlink};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// Why no interface could be chosen; every message names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// Reading links, addresses or routes failed.
    #[error("reading interfaces: {0}")]
    Netlink(#[from] backends::kernel::netlink::NetlinkError),
    /// A selector matched nothing usable.
    #[error("{0}")]
    NoMatch(String),
    /// `--iface-regex` is not a valid regular expression.
    #[error("--iface-regex {regex:?} is not a valid regular expression: {reason}")]
    BadRegex {
        /// The expression.
        regex: String,
        /// The parser's complaint.
        reason: String,
    },
}

/// How to pick the interface (straight from the command line, plus the families the network
/// config enables).
#[derive(Debug, Clone)]
pub struct IfaceSelector {
    /// `--iface`: names or addresses, tried in order.
    pub ifaces: Vec<String>,
    /// `--iface-regex`, tried in order.
    pub regexes: Vec<String>,
    /// `--iface-can-reach`.
    pub can_reach: Option<IpAddr>,
    /// `--public-ip`.
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`.
    pub public_ipv6: Option<Ipv6Addr>,
    /// `EnableIPv4`: the interface needs an IPv4 address.
    pub ipv4: bool,
    /// `EnableIPv6`: the interface needs an IPv6 address.
    pub ipv6: bool,
}

impl Default for IfaceSelector {
    /// No flags, IPv4 only (flannel's default network).
    fn default() -> Self {
        IfaceSelector {
            ifaces: Vec::new(),
            regexes: Vec::new(),
            can_reach: None,
            public_ip: None,
            public_ipv6: None,
            ipv4: true,
            ipv6: false,
        }
    }
}

/// The chosen interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedInterface {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Interface MTU.
    pub mtu: u32,
    /// The IPv4 address flannel would use (vxlan `local`, host-gw next hop for peers);
    /// `None` in an IPv6-only network.
    pub iface_addr: Option<Ipv4Addr>,
    /// The interface's IPv4 subnets (directly reachable peers live here).
    pub connected: Vec<Ipv4Network>,
    /// The IPv4 address published in the lease: `--public-ip`, else `iface_addr`.
    pub public_ip: Option<Ipv4Addr>,
    /// The IPv6 address used when IPv6 is enabled (`flannel-v6.<VNI>`'s `local`).
    pub iface_addr6: Option<Ipv6Addr>,
    /// The lease's `PublicIPv6`: `--public-ipv6`, else `iface_addr6`.
    pub public_ipv6: Option<Ipv6Addr>,
}

/// A link with its usable addresses of both families.
struct Candidate {
    link: Link,
    v4: Vec<Ipv4Network>,
    v6: Vec<Ipv6Network>,
}

impl Candidate {
    fn owns(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.iter().any(|n| n.ip() == a),
            IpAddr::V6(a) => self.v6.iter().any(|n| n.ip() == a),
        }
    }

    fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.v4.iter().map(|n| IpAddr::V4(n.ip()));
        v4.chain(self.v6.iter().map(|n| IpAddr::V6(n.ip())))
    }
}

/// IPv6 addresses that can be a tunnel endpoint: not loopback, link-local or multicast.
fn usable_v6(a: &Ipv6Addr) -> bool {
    !a.is_loopback() && !a.is_multicast() && !a.is_unicast_link_local()
}

/// A link's usable addresses. IPv6 as flannel's `GetInterfaceIP6Addrs`: deprecated and
/// duplicate (DAD-failed) addresses are skipped, and configured (`permanent`) addresses come
/// before autoconfigured ones, stable ones before temporary (privacy) ones — so the tunnel
/// endpoint and `PublicIPv6` do not follow an address that rotates away.
async fn candidate(nl: &Netlink, link: Link) -> Result<Candidate, IfaceError> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for a in nl.address_entries(link.index).await? {
        match a.net {
            IpNetwork::V4(n) if !n.ip().is_link_local() && !n.ip().is_loopback() => v4.push(n),
            IpNetwork::V6(n)
                if usable_v6(&n.ip())
                    && !a.has(AddressEntry::DEPRECATED)
                    && !a.has(AddressEntry::DADFAILED) =>
            {
                let rank = (
                    !a.has(AddressEntry::PERMANENT),
                    a.has(AddressEntry::TEMPORARY),
                );
                v6.push((rank, n));
            }
            _ => {}
        }
    }
    v6.sort_by_key(|(rank, _)| *rank);
    let v6 = v6.into_iter().map(|(_, n)| n).collect();
    Ok(Candidate { link, v4, v6 })
}

impl IfaceSelector {
    fn needs(&self) -> String {
        match (self.ipv4, self.ipv6) {
            (true, true) => "an IPv4 and an IPv6 address",
            (false, true) => "an IPv6 address",
            _ => "an IPv4 address",
        }
        .to_string()
    }

    /// Whether `c` has an address of every needed family.
    fn usable(&self, c: &Candidate) -> bool {
        (!self.ipv4 || !c.v4.is_empty()) && (!self.ipv6 || !c.v6.is_empty())
    }

    /// The family whose default route picks the interface when no flag does.
    fn primary(&self) -> IpFamily {
        if self.ipv4 {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// The interface `c` with `preferred` (an address it owns) as its address of that family
    /// and the first address of every other needed family; the public addresses default to
    /// them.
    fn finish(
        &self,
        c: &Candidate,
        preferred: Option<IpAddr>,
    ) -> Result<SelectedInterface, IfaceError> {
        let missing = |family: &str| {
            IfaceError::NoMatch(format!(
                "interface {} has no {family} address, and the network config enables {family} \
                 (name another interface with --iface)",
                c.link.name
            ))
        };
        let iface_addr = if self.ipv4 {
            let want = match (preferred, self.public_ip) {
                (Some(IpAddr::V4(a)), _) => Some(a),
                (_, Some(p)) if c.owns(IpAddr::V4(p)) => Some(p),
                _ => None,
            };
            Some(
                want.or_else(|| c.v4.first().map(|n| n.ip()))
                    .ok_or_else(|| missing("IPv4"))?,
            )
        } else {
            None
        };
        let iface_addr6 = if self.ipv6 {
            let want = match (preferred, self.public_ipv6) {
                (Some(IpAddr::V6(a)), _) => Some(a),
                (_, Some(p)) if c.owns(IpAddr::V6(p)) => Some(p),
                _ => None,
            };
            Some(
                want.or_else(|| c.v6.first().map(|n| n.ip()))
                    .ok_or_else(|| missing("IPv6"))?,
            )
        } else {
            None
        };
        Ok(SelectedInterface {
            index: c.link.index,
            name: c.link.name.clone(),
            mtu: c.link.mtu,
            iface_addr,
            connected: c.v4.clone(),
            public_ip: self.public_ip.or(iface_addr).filter(|_| self.ipv4),
            iface_addr6,
            public_ipv6: self.public_ipv6.or(iface_addr6).filter(|_| self.ipv6),
        })
    }
}

/// Finds the external interface in the current network namespace.
pub async fn select(nl: &Netlink, sel: &IfaceSelector) -> Result<SelectedInterface, IfaceError> {
    let mut all = Vec::new();
    for l in nl.links().await? {
        all.push(candidate(nl, l).await?);
    }

    for wanted in &sel.ifaces {
        if let Ok(ip) = wanted.parse::<IpAddr>() {
            if let Some(c) = all.iter().find(|c| c.owns(ip) && sel.usable(c)) {
                return sel.finish(c, Some(ip));
            }
        } else if let Some(c) = all.iter().find(|c| &c.link.name == wanted && sel.usable(c)) {
            return sel.finish(c, None);
        }
    }
    if !sel.ifaces.is_empty() {
        return Err(IfaceError::NoMatch(format!(
            "--iface {:?}: no interface with that name or address has {}",
            sel.ifaces,
            sel.needs()
        )));
    }

    if !sel.regexes.is_empty() {
        let mut compiled = Vec::new();
        for r in &sel.regexes {
            compiled.push(regex::Regex::new(r).map_err(|e| IfaceError::BadRegex {
                regex: r.clone(),
                reason: e.to_string(),
            })?);
        }
        for re in &compiled {
            for c in all.iter().filter(|c| sel.usable(c)) {
                if let Some(a) = c.addresses().find(|a| re.is_match(&a.to_string())) {
                    return sel.finish(c, Some(a));
                }
            }
            if let Some(c) = all
                .iter()
                .find(|c| re.is_match(&c.link.name) && sel.usable(c))
            {
                return sel.finish(c, None);
            }
        }
        return Err(IfaceError::NoMatch(format!(
            "--iface-regex {:?}: no interface address or name matches (the interface needs {})",
            sel.regexes,
            sel.needs()
        )));
    }

    let oif = if let Some(target) = sel.can_reach {
        let routes = nl.routes(IpFamily::of(target)).await?;
        routes
            .iter()
            .filter(|r| r.dst.contains(target))
            .max_by_key(|r| r.dst.prefix())
            .and_then(|r| r.oif)
            .ok_or_else(|| {
                IfaceError::NoMatch(format!("--iface-can-reach {target}: no route to it"))
            })?
    } else if let Some((flag, pip)) = sel
        .public_ip
        .filter(|_| sel.ipv4)
        .map(|p| ("--public-ip", IpAddr::V4(p)))
        .or(sel
            .public_ipv6
            .filter(|_| sel.ipv6)
            .map(|p| ("--public-ipv6", IpAddr::V6(p))))
    {
        all.iter()
            .find(|c| c.owns(pip))
            .map(|c| c.link.index)
            .ok_or_else(|| {
                IfaceError::NoMatch(format!(
                    "{flag} {pip} is not an address of any interface; name the interface with --iface"
                ))
            })?
    } else {
        let family = sel.primary();
        let routes = nl.routes(family).await?;
        routes
            .iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.oif)
            .ok_or_else(|| {
                IfaceError::NoMatch(format!(
                    "no {}default route to pick the interface from: \
                     pass --iface, --iface-regex or --iface-can-reach",
                    if family == IpFamily::V6 { "IPv6 " } else { "" }
                ))
            })?
    };
    let c = all
        .iter()
        .find(|c| c.link.index == oif)
        .ok_or_else(|| IfaceError::NoMatch(format!("interface index {oif} vanished")))?;
    sel.finish(c, None)
}
