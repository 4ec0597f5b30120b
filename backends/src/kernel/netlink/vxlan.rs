//! # VXLAN devices
//!
//! The overlay's tunnel endpoint is one VXLAN device per VNI (`flannel.<VNI>`), bound to the
//! underlay interface and its address, with MAC learning off: every remote VTEP is programmed
//! explicitly through the neighbour table and the FDB (see [`super::neigh`]).
//!
//! [`Netlink::ensure_vxlan`] is the idempotent "make it so": a device that already carries the
//! right identity (VNI, local address, UDP port, underlay device, learning and GBP settings) is
//! adopted and only its mutable properties (MTU, MAC, up) are fixed in place, so a restarted
//! daemon keeps the device, its neighbours, FDB entries and the routes through it: traffic is
//! never interrupted. A device whose identity differs cannot be changed in place by the kernel
//! (`vxlan_changelink` refuses most of these), so it is deleted and created again; the caller
//! learns that from [`VxlanOutcome::Recreated`] and must re-program everything that hung off it.
//!
//! The identity is read back from `IFLA_INFO_DATA` ([`Netlink::vxlan_link`]) rather than
//! trusted from our own bookkeeping, because someone else may have created or changed the device.

use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::LinkVxlan;

use super::{Link, Netlink, NetlinkError, Result, check_ifname, format_mac, skip_stats};

/// The kernel's default VXLAN UDP port (`vxlan.udp_port`), used by flannel: `dstport 0`
/// means this.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// The VXLAN device [`Netlink::ensure_vxlan`] should produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name, e.g. `flannel.1`.
    pub name: String,
    /// VXLAN network identifier (`id`).
    pub vni: u32,
    /// Destination UDP port (`dstport`); 0 means [`DEFAULT_VXLAN_PORT`].
    pub port: u16,
    /// Source address of the encapsulated packets (`local`); its family is the underlay's
    /// (`flannel.<VNI>` has an IPv4 one, `flannel-v6.<VNI>` an IPv6 one).
    pub local: IpAddr,
    /// Underlay device (`dev`), as an ifindex.
    pub underlay_ifindex: u32,
    /// MAC learning from received packets (`[no]learning`); flannel runs with it off.
    pub learning: bool,
    /// Group Based Policy extension (`gbp`).
    pub gbp: bool,
    /// Device MTU.
    pub mtu: u32,
    /// Device MAC address, set at creation so udev/systemd cannot pick another one.
    pub mac: [u8; 6],
}

impl VxlanSpec {
    /// The UDP port actually used (0 resolved to [`DEFAULT_VXLAN_PORT`]).
    pub fn effective_port(&self) -> u16 {
        if self.port == 0 {
            DEFAULT_VXLAN_PORT
        } else {
            self.port
        }
    }

    /// Whether an existing device has this spec's identity (everything the kernel cannot
    /// change in place). MTU, MAC and up state are not part of it.
    pub fn identity_matches(&self, dev: &VxlanLink) -> bool {
        dev.vni == Some(self.vni)
            && dev.local == Some(self.local)
            && dev.port == Some(self.effective_port())
            && dev.underlay == Some(self.underlay_ifindex)
            && dev.learning == Some(self.learning)
            && dev.gbp == self.gbp
    }

    /// The `ip link add` command line this spec corresponds to.
    pub fn describe(&self) -> String {
        format!(
            "ip link add {} type vxlan id {} local {} dev #{} dstport {}{}{} address {} mtu {}",
            self.name,
            self.vni,
            self.local,
            self.underlay_ifindex,
            self.effective_port(),
            if self.learning { "" } else { " nolearning" },
            if self.gbp { " gbp" } else { "" },
            format_mac(&self.mac),
            self.mtu
        )
    }
}

/// A VXLAN device as `ip -d link show` describes it: the generic [`Link`] plus the VXLAN
/// attributes read back from `IFLA_INFO_DATA`. Attributes the kernel did not report are `None`.
#[derive(Clone, Debug)]
pub struct VxlanLink {
    /// The generic link description.
    pub link: Link,
    /// `IFLA_VXLAN_ID`.
    pub vni: Option<u32>,
    /// `IFLA_VXLAN_LOCAL` or `IFLA_VXLAN_LOCAL6`.
    pub local: Option<IpAddr>,
    /// `IFLA_VXLAN_PORT` (host byte order).
    pub port: Option<u16>,
    /// `IFLA_VXLAN_LINK`: the underlay ifindex.
    pub underlay: Option<u32>,
    /// `IFLA_VXLAN_LEARNING`.
    pub learning: Option<bool>,
    /// `IFLA_VXLAN_GBP` present.
    pub gbp: bool,
}

/// What [`Netlink::ensure_vxlan`] had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VxlanOutcome {
    /// The device existed with the right identity, MTU, MAC and up state.
    Kept,
    /// The device existed with the right identity; MTU, MAC or up state were fixed in place.
    Fixed,
    /// There was no such device; it was created.
    Created,
    /// A device of that name existed with another identity (or was not a VXLAN device at all);
    /// it was deleted and created again, losing its neighbours, FDB entries and routes.
    Recreated,
}

impl VxlanLink {
    /// A link that is not a VXLAN device (or whose attributes were not read): no VXLAN data.
    pub fn plain(link: Link) -> VxlanLink {
        VxlanLink {
            link,
            vni: None,
            local: None,
            port: None,
            underlay: None,
            learning: None,
            gbp: false,
        }
    }

    fn from_message(m: LinkMessage) -> VxlanLink {
        let mut v = VxlanLink {
            link: Link::from_message(m.clone()),
            vni: None,
            local: None,
            port: None,
            underlay: None,
            learning: None,
            gbp: false,
        };
        for attr in m.attributes {
            let LinkAttribute::LinkInfo(infos) = attr else {
                continue;
            };
            for info in infos {
                let LinkInfo::Data(InfoData::Vxlan(data)) = info else {
                    continue;
                };
                for d in data {
                    match d {
                        InfoVxlan::Id(id) => v.vni = Some(id),
                        InfoVxlan::Local(ip) => v.local = Some(IpAddr::V4(ip)),
                        InfoVxlan::Local6(ip) => v.local = Some(IpAddr::V6(ip)),
                        InfoVxlan::Port(p) => v.port = Some(p),
                        InfoVxlan::Link(l) if l != 0 => v.underlay = Some(l),
                        InfoVxlan::Learning(l) => v.learning = Some(l),
                        InfoVxlan::Gbp => v.gbp = true,
                        _ => {}
                    }
                }
            }
        }
        v
    }
}

impl Netlink {
    /// One link by name with its VXLAN attributes (`ip -d link show NAME`); `None` if there is
    /// no such link. For a link that is not a VXLAN device the VXLAN fields are `None`.
    pub async fn vxlan_link(&self, name: &str) -> Result<Option<VxlanLink>> {
        if check_ifname("vxlan device name", name).is_err() {
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(skip_stats());
        Ok(self
            .get_link_message(&format!("ip -d link show {name}"), m)
            .await?
            .map(VxlanLink::from_message))
    }

    /// Makes sure the VXLAN device `spec` exists, is up and has the spec's MTU and MAC:
    /// `ip link add NAME type vxlan id VNI local A dev UNDERLAY dstport PORT nolearning [gbp]
    /// address MAC mtu MTU; ip link set NAME up`.
    ///
    /// An existing device with the same identity ([`VxlanSpec::identity_matches`]) is kept and
    /// fixed in place (`ip link set NAME mtu M address MAC up`); anything else of that name is
    /// deleted (`ip link del NAME`) and recreated. Returns the device as read back from the
    /// kernel after the changes, and what was done.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(VxlanLink, VxlanOutcome)> {
        check_ifname("vxlan device name", &spec.name)?;
        let mut outcome = VxlanOutcome::Created;
        if let Some(dev) = self.vxlan_link(&spec.name).await? {
            if dev.link.kind.as_deref() == Some("vxlan") && spec.identity_matches(&dev) {
                let mut fixed = false;
                if dev.link.mtu != spec.mtu {
                    self.set_mtu(dev.link.index, spec.mtu).await?;
                    fixed = true;
                }
                if dev.link.mac != Some(spec.mac) {
                    self.set_mac(dev.link.index, spec.mac).await?;
                    fixed = true;
                }
                if !dev.link.admin_up {
                    self.set_up(dev.link.index).await?;
                    fixed = true;
                }
                if !fixed {
                    return Ok((dev, VxlanOutcome::Kept));
                }
                let dev = self.vxlan_link(&spec.name).await?.ok_or_else(|| {
                    NetlinkError::NotFound(format!(
                        "ip link set {}: device vanished while being fixed",
                        spec.name
                    ))
                })?;
                return Ok((dev, VxlanOutcome::Fixed));
            }
            tracing::info!(
                device = %spec.name,
                existing = ?dev,
                "vxlan device has another identity; deleting and recreating it"
            );
            self.del_link_index(dev.link.index).await?;
            outcome = VxlanOutcome::Recreated;
        }

        let b = LinkVxlan::new(&spec.name, spec.vni).dev(spec.underlay_ifindex);
        let mut b = match spec.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        }
        .port(spec.effective_port())
        .learning(spec.learning);
        if spec.gbp {
            b = b.gbp();
        }
        let msg = b.mtu(spec.mtu).address(spec.mac.to_vec()).up().build();
        let op = spec.describe();
        self.request(
            &op,
            RouteNetlinkMessage::NewLink(msg),
            netlink_packet_core::NLM_F_REQUEST
                | netlink_packet_core::NLM_F_ACK
                | netlink_packet_core::NLM_F_CREATE
                | netlink_packet_core::NLM_F_EXCL,
        )
        .await?;
        let dev = self.vxlan_link(&spec.name).await?.ok_or_else(|| {
            NetlinkError::NotFound(format!("{op}: {} vanished right after creation", spec.name))
        })?;
        Ok((dev, outcome))
    }
}
