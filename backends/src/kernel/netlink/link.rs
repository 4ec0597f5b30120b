//! Links: the [`Link`] description, the veth/bridge specifications, and the link
//! operations of [`Netlink`] (`ip link ...`, `bridge link ...`).

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, InfoBridgePort, InfoData,
    InfoPortData, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth};
use std::os::fd::AsRawFd;

use crate::kernel::netns::NetNs;

use super::*;

/// A network interface, as `ip -d link show` describes it.
#[derive(Clone, Debug)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND`: `"bridge"`, `"veth"`, `"vxlan"`, ...; `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// Hardware address, when it is a 6-byte Ethernet address.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Index of the master device (bridge), `IFLA_MASTER`.
    pub master: Option<u32>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace); for a vxlan, the
    /// underlay device.
    pub link: Option<u32>,
    /// `IFF_UP`: administratively up (`ip link set X up`).
    pub admin_up: bool,
    /// `IFF_RUNNING`: operationally up (state UP, or UNKNOWN for devices like `lo` that do not
    /// report carrier).
    pub oper_up: bool,
    /// `IFF_PROMISC` as requested by a user (`ip link set X promisc on`), not the bridge-port
    /// promiscuity counter.
    pub promisc: bool,
    /// `net.ipv6.conf.<name>.accept_ra` as the link dump reports it (`IFLA_AF_SPEC` >
    /// `AF_INET6` > `IFLA_INET6_CONF`), so a caller can check the knob without a `/proc/sys`
    /// lookup; `None` when the device has no IPv6 state (IPv6 disabled at boot).
    pub ipv6_accept_ra: Option<i32>,
}

impl Link {
    pub(super) fn from_message(m: LinkMessage) -> Link {
        let flags = m.header.flags;
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            master: None,
            link: None,
            admin_up: flags.contains(LinkFlags::Up),
            oper_up: flags.contains(LinkFlags::Running),
            promisc: flags.contains(LinkFlags::Promisc),
            ipv6_accept_ra: None,
        };
        for attr in m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(v) => link.mtu = v,
                LinkAttribute::Controller(v) if v != 0 => link.master = Some(v),
                LinkAttribute::Link(v) if v != 0 => link.link = Some(v),
                LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                LinkAttribute::AfSpecUnspec(families) => {
                    link.ipv6_accept_ra = ipv6_accept_ra(&families);
                }
                _ => {}
            }
        }
        link
    }
}

/// `accept_ra` from a link's per-family data (`IFLA_AF_SPEC` > `AF_INET6` > `IFLA_INET6_CONF`).
pub(super) fn ipv6_accept_ra(families: &[AfSpecUnspec]) -> Option<i32> {
    families
        .iter()
        .filter_map(|family| match family {
            AfSpecUnspec::Inet6(inet6) => Some(inet6),
            _ => None,
        })
        .flatten()
        .find_map(|a| match a {
            AfSpecInet6::DevConf(conf) => Some(conf.accept_ra),
            _ => None,
        })
}

/// A veth pair to create with [`Netlink::create_veth`].
pub struct VethSpec<'a> {
    /// Name of the end that stays in this namespace.
    pub host_name: &'a str,
    /// Name of the other end, created directly inside `peer_ns` (e.g. `eth0`).
    pub peer_name: &'a str,
    /// MTU of **both** ends.
    pub mtu: Option<u32>,
    /// Bridge to attach the host end to.
    pub master: Option<u32>,
    /// Bring the host end up. The peer end is left down for its owner to configure.
    pub host_up: bool,
    /// Namespace the peer end is born in (may be the current one).
    pub peer_ns: &'a NetNs,
    /// MAC address of the peer end; the kernel picks a random one when `None`.
    pub peer_mac: Option<[u8; 6]>,
}

/// Whether `name` is an acceptable interface name (the kernel's `dev_valid_name`): 1 to 15 bytes,
/// not `.` or `..`, no `/`, `:` or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

pub(super) fn check_ifname(field: &str, name: &str) -> Result<()> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(NetlinkError::Other(format!(
            "invalid {field} {name:?}: interface names are 1-15 bytes without '/', ':' or whitespace"
        )))
    }
}

/// A MAC address as `ip link` prints it: `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits in either case, exactly two per byte); `None` if
/// malformed.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `numtxqueues 1 numrxqueues 1`.
pub(super) fn single_queue() -> [LinkAttribute; 2] {
    [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]
}

/// `addrgenmode none`: the link gets no IPv6 link-local address (so sends no DAD, RS or MLD).
pub(super) fn no_ipv6_address_generation() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])])
}

/// Requests the kernel to leave statistics out of link replies (`RTEXT_FILTER_SKIP_STATS`):
/// we never read them and they are most of a link message.
pub(super) fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

impl Netlink {
    /// One link by name (`ip link show NAME`); `None` if there is no such link.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        if !valid_ifname(name) {
            // No such link can exist.
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(skip_stats());
        self.get_link(&format!("ip link show {name}"), m).await
    }

    /// One link by index (`ip link show dev #INDEX`); `None` if there is no such link.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(skip_stats());
        self.get_link(&format!("ip link show #{index}"), m).await
    }

    pub(super) async fn get_link(&self, op: &str, m: LinkMessage) -> Result<Option<Link>> {
        Ok(self.get_link_message(op, m).await?.map(Link::from_message))
    }

    pub(super) async fn get_link_message(
        &self,
        op: &str,
        m: LinkMessage,
    ) -> Result<Option<LinkMessage>> {
        match self
            .request(op, RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST)
            .await
        {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(NetlinkError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace (`ip link show`).
    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(skip_stats());
        let replies = self
            .request(
                "ip link show",
                RouteNetlinkMessage::GetLink(m),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Makes sure bridge `name` exists and is up: `ip link add NAME type bridge [mtu M]; ip link
    /// set NAME up`.
    ///
    /// The usual case (the bridge exists and is up) costs one lookup. A concurrent creator
    /// winning the race (`EEXIST`) is success. The MTU of an existing bridge is left alone.
    /// Errors with [`NetlinkError::Other`] naming the device if `name` exists but is not a
    /// bridge.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        check_ifname("bridge name", name)?;
        if let Some(link) = self.link(name).await? {
            return self.bridge_up(link).await;
        }
        let op = match mtu {
            Some(m) => format!("ip link add {name} type bridge mtu {m}"),
            None => format!("ip link add {name} type bridge"),
        };
        let mut builder = LinkBridge::new(name); // includes `up`
        if let Some(m) = mtu {
            builder = builder.mtu(m);
        }
        match self.create_link(&op, builder.build(), name).await {
            Ok(Some(link)) => Ok(link),
            Ok(None) | Err(NetlinkError::Exists(_)) => match self.link(name).await? {
                Some(link) => self.bridge_up(link).await,
                None => Err(NetlinkError::NotFound(format!(
                    "{op}: {name} vanished right after creation"
                ))),
            },
            Err(e) => Err(e),
        }
    }

    pub(super) async fn bridge_up(&self, mut link: Link) -> Result<Link> {
        if link.kind.as_deref() != Some("bridge") {
            return Err(NetlinkError::Other(format!(
                "{} exists but is not a bridge (kind {})",
                link.name,
                link.kind.as_deref().unwrap_or("none")
            )));
        }
        if !link.admin_up {
            self.set_up(link.index).await?;
            link.admin_up = true;
        }
        Ok(link)
    }

    /// Creates a veth pair in one `RTM_NEWLINK`: `ip link add HOST [mtu M] [master BR] [up] type
    /// veth peer name PEER [mtu M] [address MAC] netns PEER_NS`, both ends with
    /// `numtxqueues 1 numrxqueues 1`.
    ///
    /// The peer is born inside `spec.peer_ns` with its final name, MTU and MAC, so it never
    /// appears in this namespace. Returns the host end (its `link` is the peer's ifindex).
    /// [`NetlinkError::Exists`] if either name is taken in its namespace.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link> {
        check_ifname("host veth name", spec.host_name)?;
        check_ifname("peer veth name", spec.peer_name)?;
        let mut op = format!("ip link add {}", spec.host_name);
        let mut peer =
            LinkUnspec::new_with_name(spec.peer_name).setns_by_fd(spec.peer_ns.as_raw_fd());
        let mut host = LinkVeth::new(spec.host_name, spec.peer_name);
        if let Some(m) = spec.mtu {
            peer = peer.mtu(m);
            host = host.mtu(m);
            op.push_str(&format!(" mtu {m}"));
        }
        if let Some(br) = spec.master {
            host = host.controller(br);
            op.push_str(&format!(" master #{br}"));
        }
        if spec.host_up {
            host = host.up();
            op.push_str(" up");
        }
        op.push_str(&format!(" type veth peer name {}", spec.peer_name));
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.to_vec());
            op.push_str(&format!(" address {}", format_mac(&mac)));
        }
        op.push_str(&format!(" netns {}", spec.peer_ns.path().display()));
        // One TX and one RX queue per end (`numtxqueues 1 numrxqueues 1`). Without them the
        // kernel allocates one of each per possible CPU for a veth (veth transmits without a
        // queue lock, so the extra queues buy nothing). Kernels that then expose only one
        // (6.18 here: default `numtxqueues 2`, but sysfs holds only `rx-0`/`tx-0`) still
        // allocate the rest; older ones also give each a sysfs directory.
        let mut peer_msg = peer.build();
        peer_msg.attributes.extend(single_queue());
        let mut msg = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        msg.attributes.extend(single_queue());

        let link = match self.create_link(&op, msg, spec.host_name).await? {
            Some(mut link) => {
                // The kernel echoes the link before it attaches it to the master.
                if spec.master.is_some() {
                    link.master = spec.master;
                }
                link
            }
            None => self.link(spec.host_name).await?.ok_or_else(|| {
                NetlinkError::NotFound(format!(
                    "{op}: {} vanished right after creation",
                    spec.host_name
                ))
            })?,
        };
        Ok(link)
    }

    /// `ip link set dev #INDEX type bridge_slave hairpin on|off` (`IFLA_BRPORT_MODE`). The link
    /// must be a bridge port.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        let op = format!(
            "ip link set #{index} type bridge_slave hairpin {}",
            if on { "on" } else { "off" }
        );
        self.ack(&op, RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// The hairpin setting of bridge port `index` (`ip -d link show` → `hairpin on`); `None` if
    /// the link does not exist or is not a bridge port.
    pub async fn bridge_port_hairpin(&self, index: u32) -> Result<Option<bool>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(skip_stats());
        let Some(msg) = self
            .get_link_message(&format!("ip -d link show #{index}"), m)
            .await?
        else {
            return Ok(None);
        };
        for attr in msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    if let LinkInfo::PortData(InfoPortData::BridgePort(port)) = info {
                        for p in port {
                            if let InfoBridgePort::HairpinMode(h) = p {
                                return Ok(Some(h));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// `ip link set dev #INDEX up`.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.ack(
            &format!("ip link set #{index} up"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// Readies a fresh bridge port in one request: `ip link set dev #INDEX up addrgenmode none
    /// type bridge_slave hairpin on|off`. `addrgenmode none`: the port gets no IPv6 link-local
    /// address, so it sends no DAD, router solicitation or MLD traffic — a bridge port needs no
    /// address of its own, and on a node with hundreds of pods that background multicast floods
    /// every port.
    ///
    /// The kernel applies `up` before `addrgenmode`, so call this on a port whose link has no
    /// carrier yet and whose pending carrier event has been processed
    /// ([`crate::kernel::ethtool::settle_link`]): the `up` then neither starts IPv6 address
    /// generation nor enables the bridge port, both of which wait for carrier.
    pub async fn setup_bridge_port(&self, index: u32, hairpin: bool) -> Result<()> {
        let mut msg = LinkBridgePort::new(index).hairpin(hairpin).build();
        msg.header.flags |= LinkFlags::Up;
        msg.header.change_mask |= LinkFlags::Up;
        msg.attributes.push(no_ipv6_address_generation());
        let op = format!(
            "ip link set #{index} up addrgenmode none type bridge_slave hairpin {}",
            if hairpin { "on" } else { "off" }
        );
        self.ack(&op, RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// `ip link set dev #INDEX up` and `sysctl net.ipv4.conf.<dev>.arp_notify=1` in one request
    /// (the sysctl travels as `IFLA_AF_SPEC` → `AF_INET` → `IFLA_INET_CONF`, which sets only the
    /// values present). With `arp_notify` the kernel announces the interface's addresses with a
    /// gratuitous ARP whenever its MAC changes. The kernel applies the flags before
    /// `IFLA_AF_SPEC`, so this `up` itself is not announced; see [`Netlink::announce`].
    pub async fn set_up_with_arp_notify(&self, index: u32) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(index).up().build();
        let mut conf = InetDevConf::default();
        conf.arp_notify = 1;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.ack(
            &format!("ip link set #{index} up && sysctl net.ipv4.conf.#{index}.arp_notify=1"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// `ip link set dev #INDEX down`.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.ack(
            &format!("ip link set #{index} down"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// `ip link set dev #INDEX promisc on|off`.
    pub async fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).promiscuous(on).build();
        let op = format!(
            "ip link set #{index} promisc {}",
            if on { "on" } else { "off" }
        );
        self.ack(&op, RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// `ip link set dev #INDEX address MAC`.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        let op = format!("ip link set #{index} address {}", format_mac(&mac));
        self.ack(&op, RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// `ip link set dev #INDEX mtu MTU`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.ack(
            &format!("ip link set #{index} mtu {mtu}"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// `ip link del NAME`. Returns `false` if there was no such link. Deleting one end of a veth
    /// pair removes both.
    pub async fn del_link(&self, name: &str) -> Result<bool> {
        if !valid_ifname(name) {
            return Ok(false);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.del_link_message(&format!("ip link del {name}"), m)
            .await
    }

    /// `ip link del dev #INDEX`. Returns `false` if there was no such link.
    pub async fn del_link_index(&self, index: u32) -> Result<bool> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.del_link_message(&format!("ip link del #{index}"), m)
            .await
    }

    pub(super) async fn del_link_message(&self, op: &str, m: LinkMessage) -> Result<bool> {
        match self.ack(op, RouteNetlinkMessage::DelLink(m), 0).await {
            Ok(()) => Ok(true),
            Err(NetlinkError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
