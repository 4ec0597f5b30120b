//! # iface — choosing the external interface whose address goes into the lease
//!
//! flannel's order, kept so that existing `--iface*` settings pick the same interface:
//! `--iface` entries (an interface name or one of its addresses) in the order given, then
//! `--iface-regex` (matched against each address first, then against interface names), then
//! `--iface-can-reach` (the interface of the most specific route to that address), and finally the
//! interface of the default route. `--public-ip` overrides the address published in the lease;
//! without any `--iface*` flag it also selects the interface that owns that address.
//!
//! Everything is read through [`Netlink`] in the daemon's current network namespace, so one
//! flanneld per node namespace sees only its own node's interfaces.

use std::net::{IpAddr, Ipv4Addr};

use backends::kernel::netlink::{IpFamily, Link, Netlink};
use ipnetwork::{IpNetwork, Ipv4Network};

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

/// How to pick the interface (straight from the command line).
#[derive(Debug, Clone, Default)]
pub struct IfaceSelector {
    /// `--iface`: names or addresses, tried in order.
    pub ifaces: Vec<String>,
    /// `--iface-regex`, tried in order.
    pub regexes: Vec<String>,
    /// `--iface-can-reach`.
    pub can_reach: Option<IpAddr>,
    /// `--public-ip`.
    pub public_ip: Option<Ipv4Addr>,
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
    /// The interface address flannel would use (vxlan `local`, host-gw next hop for peers).
    pub iface_addr: Ipv4Addr,
    /// The interface's IPv4 subnets (directly reachable peers live here).
    pub connected: Vec<Ipv4Network>,
    /// The address published in the lease: `--public-ip`, else `iface_addr`.
    pub public_ip: Ipv4Addr,
}

async fn v4_addrs(nl: &Netlink, link: &Link) -> Result<Vec<Ipv4Network>, IfaceError> {
    Ok(nl
        .addresses(link.index)
        .await?
        .into_iter()
        .filter_map(|a| match a {
            IpNetwork::V4(n) if !n.ip().is_link_local() && !n.ip().is_loopback() => Some(n),
            _ => None,
        })
        .collect())
}

fn selected(link: &Link, addrs: Vec<Ipv4Network>, addr: Ipv4Addr) -> SelectedInterface {
    SelectedInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        iface_addr: addr,
        connected: addrs,
        public_ip: addr,
    }
}

/// Finds the external interface in the current network namespace.
pub async fn select(nl: &Netlink, sel: &IfaceSelector) -> Result<SelectedInterface, IfaceError> {
    let links = nl.links().await?;
    let mut with_addrs = Vec::with_capacity(links.len());
    for l in links {
        let addrs = v4_addrs(nl, &l).await?;
        with_addrs.push((l, addrs));
    }
    let mut chosen = None;

    'iface: for wanted in &sel.ifaces {
        if let Ok(ip) = wanted.parse::<Ipv4Addr>() {
            for (l, addrs) in &with_addrs {
                if addrs.iter().any(|a| a.ip() == ip) {
                    chosen = Some(selected(l, addrs.clone(), ip));
                    break 'iface;
                }
            }
        } else if let Some((l, addrs)) = with_addrs.iter().find(|(l, _)| &l.name == wanted)
            && let Some(first) = addrs.first()
        {
            chosen = Some(selected(l, addrs.clone(), first.ip()));
            break;
        }
    }
    if chosen.is_none() && !sel.ifaces.is_empty() {
        return Err(IfaceError::NoMatch(format!(
            "--iface {:?}: no interface with that name or address has an IPv4 address",
            sel.ifaces
        )));
    }

    if chosen.is_none() && !sel.regexes.is_empty() {
        let mut compiled = Vec::new();
        for r in &sel.regexes {
            compiled.push(regex::Regex::new(r).map_err(|e| IfaceError::BadRegex {
                regex: r.clone(),
                reason: e.to_string(),
            })?);
        }
        'regex: for re in &compiled {
            for (l, addrs) in &with_addrs {
                if let Some(a) = addrs.iter().find(|a| re.is_match(&a.ip().to_string())) {
                    chosen = Some(selected(l, addrs.clone(), a.ip()));
                    break 'regex;
                }
            }
            for (l, addrs) in &with_addrs {
                if re.is_match(&l.name)
                    && let Some(first) = addrs.first()
                {
                    chosen = Some(selected(l, addrs.clone(), first.ip()));
                    break 'regex;
                }
            }
        }
        if chosen.is_none() {
            return Err(IfaceError::NoMatch(format!(
                "--iface-regex {:?}: no interface address or name matches",
                sel.regexes
            )));
        }
    }

    if chosen.is_none() {
        let oif = if let Some(target) = sel.can_reach {
            let IpAddr::V4(t) = target else {
                return Err(IfaceError::NoMatch(format!(
                    "--iface-can-reach {target}: only IPv4 is supported"
                )));
            };
            let routes = nl.routes(IpFamily::V4).await?;
            routes
                .iter()
                .filter(|r| r.dst.contains(IpAddr::V4(t)))
                .max_by_key(|r| r.dst.prefix())
                .and_then(|r| r.oif)
                .ok_or_else(|| {
                    IfaceError::NoMatch(format!("--iface-can-reach {t}: no route to it"))
                })?
        } else if let Some(pip) = sel.public_ip {
            with_addrs
                .iter()
                .find(|(_, addrs)| addrs.iter().any(|a| a.ip() == pip))
                .map(|(l, _)| l.index)
                .ok_or_else(|| {
                    IfaceError::NoMatch(format!(
                        "--public-ip {pip} is not an address of any interface; \
                         name the interface with --iface"
                    ))
                })?
        } else {
            let routes = nl.routes(IpFamily::V4).await?;
            routes
                .iter()
                .find(|r| r.dst.prefix() == 0)
                .and_then(|r| r.oif)
                .ok_or_else(|| {
                    IfaceError::NoMatch(
                        "no default route to pick the interface from: \
                         pass --iface, --iface-regex or --iface-can-reach"
                            .to_string(),
                    )
                })?
        };
        let (l, addrs) = with_addrs
            .iter()
            .find(|(l, _)| l.index == oif)
            .ok_or_else(|| IfaceError::NoMatch(format!("interface index {oif} vanished")))?;
        let addr = match sel.public_ip {
            Some(pip) if addrs.iter().any(|a| a.ip() == pip) => pip,
            _ => addrs
                .first()
                .ok_or_else(|| {
                    IfaceError::NoMatch(format!("interface {} has no IPv4 address", l.name))
                })?
                .ip(),
        };
        chosen = Some(selected(l, addrs.clone(), addr));
    }

    let mut ext = chosen.ok_or_else(|| IfaceError::NoMatch("no interface".into()))?;
    if let Some(pip) = sel.public_ip {
        ext.public_ip = pip;
    }
    Ok(ext)
}
