//! # masq — flanneld's node-level masquerade and forward rules, as one nftables table
//!
//! With `--ip-masq`, flannel installs (iptables, table `nat`, chain `FLANNEL-POSTRTG`) rules that
//! keep pod-to-pod traffic untouched and source-NAT everything else that leaves the pod network;
//! with `--iptables-forward-rules` (the default) it also accepts forwarded traffic from and to the
//! pod network. Flannel forks one `iptables` process per rule at start-up and one `iptables -C`
//! per rule every resync period, contending on the xtables lock at scale.
//!
//! Here the same semantics live in **one nftables table of our own**, `ip flannel-rs`, replaced as
//! a whole in a single atomic transaction (`add table; delete table; table { … }` in one
//! `nft -f -` batch): readers never see a half-built rule set, and nothing outside the table is
//! touched. For network `<net>` and this node's lease `<pod>`:
//!
//! ```text
//! table ip flannel-rs {
//!     chain postrtg {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         meta mark & 0x4000 == 0x4000 return          # kube-proxy's mark: no double NAT
//!         ip saddr <pod> ip daddr <net> return          # pod -> pod: keep the pod source
//!         ip saddr <net> ip daddr <pod> return          # remote pod -> local pod
//!         ip saddr != <net> ip daddr <pod> return       # outside -> local pod (e.g. NodePort)
//!         ip saddr <net> ip daddr != 224.0.0.0/4 masquerade fully-random   # pod -> outside
//!         ip saddr != <net> ip daddr <net> masquerade fully-random         # host -> remote pod
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         ip saddr <net> accept
//!         ip daddr <net> accept
//!     }
//! }
//! ```
//!
//! The mark is matched under its mask, as flannel's iptables rules do (its nftables mode compares
//! the whole mark, which misses packets carrying other mark bits too).
//!
//! [`NodeMasq::ensure`] is the periodic re-check: one `nft list table` (one process, however many
//! rules) compared with what the kernel printed right after our last install; any drift — a rule
//! deleted, the table flushed or removed — re-installs the whole table.
//!
//! IPv6 (dual-stack and IPv6-only networks) gets the same table in family `ip6`,
//! `ip6 flannel-rs`, with `ip6 saddr/daddr`, the `IPv6Network` and the node's IPv6 subnet,
//! and `ff00::/8` in place of `224.0.0.0/4` (flannel's `masqIP6Rules`). Each family's table
//! is its own atomic transaction and its own drift check ([`NodeMasq`] per family).
//!
//! A note for operators: in nftables an `accept` only ends the current base chain, so a `drop`
//! policy in another table's forward chain (iptables-nft's `FORWARD`, say) still drops pod traffic;
//! such firewalls need their own accept for the pod network.

use ipnetwork::IpNetwork;

use crate::kernel::netlink::IpFamily;
use crate::kernel::nft::{self, NftError};

/// The nftables table (family `ip`, and `ip6` for IPv6) that holds every rule flanneld
/// installs.
pub const NODE_TABLE: &str = "flannel-rs";

/// nftables' name of `family` as a table family and as the address match keyword.
fn nft_family(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The kube-proxy "masquerade me / do not touch" mark bit flannel respects.
pub const KUBE_MARK: u32 = 0x4000;

/// What the node's table should contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqSpec {
    /// The cluster pod network (`Network`, or `IPv6Network` for the `ip6` table).
    pub network: IpNetwork,
    /// This node's lease subnet of the same family.
    pub subnet: IpNetwork,
    /// `masquerade fully-random` (flannel's default); `false` for
    /// `--ip-masq-fully-random-disable`.
    pub fully_random: bool,
    /// Install the masquerade chain (`--ip-masq`).
    pub masquerade: bool,
    /// Install the forward accept chain (`--iptables-forward-rules`).
    pub forward: bool,
}

impl MasqSpec {
    /// Whether this spec needs a table at all.
    pub fn is_empty(&self) -> bool {
        !self.masquerade && !self.forward
    }

    /// The address family of the table (the network's).
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.network.ip())
    }

    /// The full-replace transaction for this spec: creates the table if absent, deletes it (and
    /// with it any old content), and declares it anew — atomically, in one batch.
    pub fn script(&self) -> String {
        let masked = |n: IpNetwork| IpNetwork::new(n.network(), n.prefix()).unwrap_or(n);
        let (net, pod) = (masked(self.network), masked(self.subnet));
        let ip = nft_family(self.family());
        let multicast = match self.family() {
            IpFamily::V4 => "224.0.0.0/4",
            IpFamily::V6 => "ff00::/8",
        };
        let mut s = format!("add table {ip} {NODE_TABLE}\ndelete table {ip} {NODE_TABLE}\n");
        if self.is_empty() {
            return s;
        }
        s.push_str(&format!("table {ip} {NODE_TABLE} {{\n"));
        let random = if self.fully_random {
            " fully-random"
        } else {
            ""
        };
        if self.masquerade {
            s.push_str(&format!(
                "  chain postrtg {{\n\
                 \x20   type nat hook postrouting priority srcnat; policy accept;\n\
                 \x20   meta mark & {KUBE_MARK:#x} == {KUBE_MARK:#x} return\n\
                 \x20   {ip} saddr {pod} {ip} daddr {net} return\n\
                 \x20   {ip} saddr {net} {ip} daddr {pod} return\n\
                 \x20   {ip} saddr != {net} {ip} daddr {pod} return\n\
                 \x20   {ip} saddr {net} {ip} daddr != {multicast} masquerade{random}\n\
                 \x20   {ip} saddr != {net} {ip} daddr {net} masquerade{random}\n\
                 \x20 }}\n"
            ));
        }
        if self.forward {
            s.push_str(&format!(
                "  chain forward {{\n\
                 \x20   type filter hook forward priority filter; policy accept;\n\
                 \x20   {ip} saddr {net} accept\n\
                 \x20   {ip} daddr {net} accept\n\
                 \x20 }}\n"
            ));
        }
        s.push_str("}\n");
        s
    }
}

/// Outcome of [`NodeMasq::ensure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnsureOutcome {
    /// The kernel already held exactly our table.
    Unchanged,
    /// The table was (re)installed: first install, spec change, or drift repaired.
    Installed,
}

/// Keeps one family's node table in the current network namespace equal to a [`MasqSpec`].
///
/// `nft` acts in the namespace of the calling thread: call from the node's namespace.
#[derive(Debug, Default)]
pub struct NodeMasq {
    /// The family whose table this keeps (IPv4 unless made with [`NodeMasq::for_family`]).
    family: Option<IpFamily>,
    spec: Option<MasqSpec>,
    /// `nft list table` as printed right after our last install: the drift reference.
    installed_listing: Option<String>,
}

impl NodeMasq {
    /// Nothing installed yet (any existing table is replaced at the first [`NodeMasq::ensure`]).
    pub fn new() -> NodeMasq {
        NodeMasq::default()
    }

    /// The keeper of `family`'s table (`ip6 flannel-rs` for IPv6).
    pub fn for_family(family: IpFamily) -> NodeMasq {
        NodeMasq {
            family: Some(family),
            ..NodeMasq::default()
        }
    }

    fn family(&self) -> IpFamily {
        self.family.unwrap_or(IpFamily::V4)
    }

    /// The spec last installed.
    pub fn spec(&self) -> Option<&MasqSpec> {
        self.spec.as_ref()
    }

    /// Makes the kernel's table match `spec`: re-installs (one atomic transaction) when the spec
    /// changed or the kernel's copy drifted from what we installed; otherwise costs one
    /// `nft list table ip flannel-rs` and changes nothing.
    pub fn ensure(&mut self, spec: MasqSpec) -> Result<EnsureOutcome, NftError> {
        self.family = Some(spec.family());
        if self.spec == Some(spec) {
            let now = list_family_table(spec.family())?;
            if now.is_some() && now == self.installed_listing {
                return Ok(EnsureOutcome::Unchanged);
            }
            tracing::warn!(
                table = NODE_TABLE,
                "nftables table drifted; reinstalling it"
            );
        }
        nft::apply(&spec.script())?;
        self.spec = Some(spec);
        self.installed_listing = list_family_table(spec.family())?;
        Ok(EnsureOutcome::Installed)
    }

    /// Deletes the table (idempotent).
    pub fn remove(&mut self) -> Result<(), NftError> {
        let ip = nft_family(self.family());
        nft::apply(&format!(
            "add table {ip} {NODE_TABLE}\ndelete table {ip} {NODE_TABLE}\n"
        ))?;
        self.spec = None;
        self.installed_listing = None;
        Ok(())
    }
}

/// flannel's nftables-mode tables (`--iptables-mode nftables`, via knftables).
pub const FLANNEL_NFT_TABLES: [(&str, &str); 2] = [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// Deletes flannel's own nftables tables (a node migrating from flannel); returns the ones
/// that existed, as `ip flannel-ipv4`.
pub fn remove_flannel_tables() -> Result<Vec<String>, NftError> {
    let mut removed = Vec::new();
    for (family, name) in FLANNEL_NFT_TABLES {
        let object = format!("table {family} {name}");
        match nft::list_text(&object) {
            Ok(_) => {
                nft::apply(&format!("delete table {family} {name}\n"))?;
                removed.push(format!("{family} {name}"));
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// `nft list table ip flannel-rs`, or `None` when the table does not exist.
pub fn list_table() -> Result<Option<String>, NftError> {
    list_family_table(IpFamily::V4)
}

/// `nft list table ip|ip6 flannel-rs`, or `None` when the table does not exist.
pub fn list_family_table(family: IpFamily) -> Result<Option<String>, NftError> {
    match nft::list_text(&format!("table {} {NODE_TABLE}", nft_family(family))) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(masquerade: bool, forward: bool) -> MasqSpec {
        MasqSpec {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            masquerade,
            forward,
            fully_random: true,
        }
    }

    #[test]
    fn fully_random_can_be_disabled() {
        let mut sp = spec(true, false);
        assert_eq!(sp.script().matches("masquerade fully-random").count(), 2);
        sp.fully_random = false;
        let s = sp.script();
        assert!(!s.contains("fully-random"), "{s}");
        assert_eq!(s.matches("masquerade\n").count(), 2, "{s}");
    }

    #[test]
    fn script_has_flannels_rules_in_order() {
        let s = spec(true, true).script();
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        let want = [
            "add table ip flannel-rs",
            "delete table ip flannel-rs",
            "table ip flannel-rs {",
            "chain postrtg {",
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x4000 == 0x4000 return",
            "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
            "}",
            "chain forward {",
            "type filter hook forward priority filter; policy accept;",
            "ip saddr 10.244.0.0/16 accept",
            "ip daddr 10.244.0.0/16 accept",
            "}",
            "}",
        ];
        assert_eq!(lines, want);
    }

    #[test]
    fn host_bits_are_dropped_from_prefixes() {
        let mut s = spec(true, false);
        s.subnet = "10.244.3.1/24".parse().unwrap();
        assert!(s.script().contains("ip saddr 10.244.3.0/24 ip daddr"));
        assert!(!s.script().contains("chain forward"));
    }

    #[test]
    fn ipv6_table_is_flannels_masqip6rules_in_an_ip6_table() {
        let s = MasqSpec {
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet: "fd00:10:244:3::1/64".parse().unwrap(),
            masquerade: true,
            forward: true,
            fully_random: true,
        }
        .script();
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        let want = [
            "add table ip6 flannel-rs",
            "delete table ip6 flannel-rs",
            "table ip6 flannel-rs {",
            "chain postrtg {",
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x4000 == 0x4000 return",
            "ip6 saddr fd00:10:244:3::/64 ip6 daddr fd00:10:244::/56 return",
            "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return",
            "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return",
            "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random",
            "}",
            "chain forward {",
            "type filter hook forward priority filter; policy accept;",
            "ip6 saddr fd00:10:244::/56 accept",
            "ip6 daddr fd00:10:244::/56 accept",
            "}",
            "}",
        ];
        assert_eq!(lines, want);
    }

    #[test]
    fn empty_spec_only_deletes() {
        let s = spec(false, false).script();
        assert_eq!(
            s, "add table ip flannel-rs\ndelete table ip flannel-rs\n",
            "no rules requested means no table"
        );
    }
}
