//! # iptables — pod traffic through the operator's `filter FORWARD` chain
//!
//! flanneld's own rules live in one nftables table ([`crate::masq`]). That is not enough on a
//! hardened host: netfilter runs *every* base chain on a hook, an `accept` only ends the chain
//! it is in, and a `drop` anywhere is final. Docker (and many hardening guides) set
//! `iptables -P FORWARD DROP`, so every forwarded pod packet dies in iptables' `FORWARD`
//! whatever our table accepted. flannel avoids that by jumping from `filter FORWARD` to its
//! own `FLANNEL-FWD`; so do we, with our own names so that a node migrating from flannel can
//! have flannel's chains removed without touching ours:
//!
//! ```text
//! -I FORWARD 1 -m comment --comment "flannel-rs forward" -j FLANNEL-RS-FWD
//! -A FLANNEL-RS-FWD -s <network> -m comment --comment "flannel-rs forward" -j ACCEPT
//! -A FLANNEL-RS-FWD -d <network> -m comment --comment "flannel-rs forward" -j ACCEPT
//! ```
//!
//! Where flannel departs from what an operator expects, we do not copy it:
//!
//! * **First, not last.** flannel *appends* its jump, so any earlier `DROP` in `FORWARD` wins
//!   (flannel #2116). Ours is inserted at position 1; the operator's other rules keep their
//!   order and are never edited.
//! * **Both iptables flavours.** A host may run `iptables-legacy` (older Docker) or
//!   `iptables-nft` (Debian's default); the two keep separate rule sets and both are
//!   consulted by the kernel. Each flavour whose `filter FORWARD` could drop (a policy other
//!   than `ACCEPT`, or any rule) gets the jump; a flavour that is absent or empty is left
//!   alone, so a pure-nftables host gains no iptables tables.
//! * **One batch, one check.** Installing is one `iptables-restore --noflush` per flavour
//!   (atomic per table); the periodic check is one `iptables-save -t filter` per flavour,
//!   not one `iptables -C` per rule. Drift (our jump or a rule deleted, a duplicate jump, a
//!   flush) re-installs the whole set.
//! * **Clean removal.** [`ForwardRules::remove`] deletes every jump of ours and the chain, in
//!   both flavours, and nothing else.
//!
//! IPv6 is the same through `ip6tables-{legacy,nft}`: a host with `ip6tables -P FORWARD DROP`
//! gets the jump and `-s/-d <IPv6Network> -j ACCEPT` in its IPv6 `filter` table.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;

use crate::kernel::netlink::IpFamily;

/// Our chain in `filter`.
pub const FWD_CHAIN: &str = "FLANNEL-RS-FWD";
/// The comment on every rule we write.
pub const COMMENT: &str = "flannel-rs forward";

/// An iptables back end with its own rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (the iptables ABI on nf_tables).
    Nft,
}

impl Flavor {
    /// Both, in the order they are handled.
    pub const ALL: [Flavor; 2] = [Flavor::Legacy, Flavor::Nft];

    /// The `iptables` binary of this flavour.
    pub fn iptables(self) -> &'static str {
        self.binary(IpFamily::V4)
    }

    /// The `iptables` (IPv4) or `ip6tables` (IPv6) binary of this flavour.
    pub fn binary(self, family: IpFamily) -> &'static str {
        match (self, family) {
            (Flavor::Legacy, IpFamily::V4) => "iptables-legacy",
            (Flavor::Nft, IpFamily::V4) => "iptables-nft",
            (Flavor::Legacy, IpFamily::V6) => "ip6tables-legacy",
            (Flavor::Nft, IpFamily::V6) => "ip6tables-nft",
        }
    }

    fn save(self, family: IpFamily) -> &'static str {
        match (self, family) {
            (Flavor::Legacy, IpFamily::V4) => "iptables-legacy-save",
            (Flavor::Nft, IpFamily::V4) => "iptables-nft-save",
            (Flavor::Legacy, IpFamily::V6) => "ip6tables-legacy-save",
            (Flavor::Nft, IpFamily::V6) => "ip6tables-nft-save",
        }
    }

    fn restore(self, family: IpFamily) -> &'static str {
        match (self, family) {
            (Flavor::Legacy, IpFamily::V4) => "iptables-legacy-restore",
            (Flavor::Nft, IpFamily::V4) => "iptables-nft-restore",
            (Flavor::Legacy, IpFamily::V6) => "ip6tables-legacy-restore",
            (Flavor::Nft, IpFamily::V6) => "ip6tables-nft-restore",
        }
    }
}

/// Failures of the iptables tools.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The tool could not be run.
    #[error("{tool}: {source}")]
    Spawn {
        /// The binary.
        tool: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{tool} failed: {stderr}")]
    Failed {
        /// The binary.
        tool: &'static str,
        /// Its complaint.
        stderr: String,
    },
}

fn run(tool: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, IptablesError> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn { tool, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| IptablesError::Spawn { tool, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| IptablesError::Spawn { tool, source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(IptablesError::Failed {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip[6]tables-save -t TABLE` of `flavor`; `None` when that flavour cannot be used here (not
/// installed, or its kernel side missing) — one process whether or not it is there.
///
/// A legacy table that does not exist in this namespace is reported empty without running
/// the tool: `iptables-legacy-save -t TABLE` *creates* the table it reads, and with it that
/// table's netfilter hooks on every packet of the namespace — for `nat`, connection tracking
/// of all traffic. (nft's `iptables-nft-save` creates nothing.)
fn save_table(flavor: Flavor, family: IpFamily, table: &str) -> Option<String> {
    if flavor == Flavor::Legacy && !legacy_table_exists(family, table) {
        return Some(String::new());
    }
    run(flavor.save(family), &["-t", table], None).ok()
}

/// Whether x_tables has `table` of `family` in the calling thread's namespace
/// (`/proc/thread-self/net/ip{,6}_tables_names`; absent when the module is not loaded, and
/// then there is no table either).
pub fn legacy_table_exists(family: IpFamily, table: &str) -> bool {
    let file = match family {
        IpFamily::V4 => "ip_tables_names",
        IpFamily::V6 => "ip6_tables_names",
    };
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .is_ok_and(|names| names.lines().any(|l| l.trim() == table))
}

/// What `iptables-save -t filter` says about `FORWARD` and our chain.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FilterState {
    /// `FORWARD`'s policy (`ACCEPT`, `DROP`), if the chain exists.
    pub forward_policy: Option<String>,
    /// Every `-A FORWARD ...` line, in order.
    pub forward_rules: Vec<String>,
    /// Whether our chain exists.
    pub has_chain: bool,
    /// Every `-A FLANNEL-RS-FWD ...` line, in order.
    pub chain_rules: Vec<String>,
}

impl FilterState {
    /// Parses `iptables-save -t filter` output.
    pub fn parse(save: &str) -> FilterState {
        let mut st = FilterState::default();
        for line in save.lines() {
            if let Some(rest) = line.strip_prefix(":FORWARD ") {
                st.forward_policy = rest.split_whitespace().next().map(str::to_string);
            } else if line.starts_with(&format!(":{FWD_CHAIN} ")) {
                st.has_chain = true;
            } else if line.starts_with("-A FORWARD ") {
                st.forward_rules.push(line.to_string());
            } else if line.starts_with(&format!("-A {FWD_CHAIN} ")) {
                st.chain_rules.push(line.to_string());
            }
        }
        st
    }

    /// Our jumps in `FORWARD`.
    pub fn our_jumps(&self) -> usize {
        self.forward_rules
            .iter()
            .filter(|r| r.contains(&format!("-j {FWD_CHAIN}")))
            .count()
    }

    /// Whether `FORWARD` could drop forwarded pod traffic: a non-ACCEPT policy, or any rule
    /// that is not ours (the operator's rules may drop).
    pub fn may_drop(&self) -> bool {
        self.forward_policy
            .as_deref()
            .is_some_and(|p| p != "ACCEPT")
            || self.forward_rules.len() > self.our_jumps()
    }

    /// Whether our rules are exactly as [`desired_chain_rules`] says, with one jump, first.
    pub fn is_installed(&self, network: IpNetwork) -> bool {
        self.has_chain
            && self.our_jumps() == 1
            && self
                .forward_rules
                .first()
                .is_some_and(|r| r.contains(&format!("-j {FWD_CHAIN}")))
            && self.chain_rules == desired_chain_rules(network)
    }
}

/// Our chain's rules as `iptables-save` prints them.
pub fn desired_chain_rules(network: IpNetwork) -> Vec<String> {
    let net = format!("{}/{}", network.network(), network.prefix());
    vec![
        format!("-A {FWD_CHAIN} -s {net} -m comment --comment \"{COMMENT}\" -j ACCEPT"),
        format!("-A {FWD_CHAIN} -d {net} -m comment --comment \"{COMMENT}\" -j ACCEPT"),
    ]
}

/// The `iptables-restore --noflush` batch that (re)installs our rules given `current`:
/// removes every jump of ours, declares (hence flushes) our chain, inserts one jump first in
/// `FORWARD` and fills the chain.
pub fn install_batch(current: &FilterState, network: IpNetwork) -> String {
    let mut b = String::from("*filter\n");
    b.push_str(&format!(":{FWD_CHAIN} - [0:0]\n"));
    for _ in 0..current.our_jumps() {
        b.push_str(&format!(
            "-D FORWARD -m comment --comment \"{COMMENT}\" -j {FWD_CHAIN}\n"
        ));
    }
    b.push_str(&format!(
        "-I FORWARD 1 -m comment --comment \"{COMMENT}\" -j {FWD_CHAIN}\n"
    ));
    for rule in desired_chain_rules(network) {
        b.push_str(&rule);
        b.push('\n');
    }
    b.push_str("COMMIT\n");
    b
}

/// The batch that removes our jumps and chain (nothing when there is none).
pub fn remove_batch(current: &FilterState) -> Option<String> {
    if !current.has_chain && current.our_jumps() == 0 {
        return None;
    }
    let mut b = String::from("*filter\n");
    for _ in 0..current.our_jumps() {
        b.push_str(&format!(
            "-D FORWARD -m comment --comment \"{COMMENT}\" -j {FWD_CHAIN}\n"
        ));
    }
    if current.has_chain {
        b.push_str(&format!(":{FWD_CHAIN} - [0:0]\n-X {FWD_CHAIN}\n"));
    }
    b.push_str("COMMIT\n");
    Some(b)
}

/// What [`ForwardRules::ensure`] did in one flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlavorOutcome {
    /// Not installed, or its `filter` table cannot be read: nothing to do.
    Unavailable,
    /// `FORWARD` accepts everything and has no rules: nothing needed.
    NotNeeded,
    /// Our rules were already in place.
    Unchanged,
    /// Our rules were (re)installed.
    Installed,
}

/// Keeps our accept rules in the operator's `filter FORWARD` (see the module docs).
#[derive(Debug, Default)]
pub struct ForwardRules;

impl ForwardRules {
    /// Reads `flavor`'s `filter` table of `family`.
    pub fn state(flavor: Flavor, family: IpFamily) -> Result<Option<FilterState>, IptablesError> {
        Ok(save_table(flavor, family, "filter").map(|save| FilterState::parse(&save)))
    }

    /// Makes sure pod traffic of `network` is accepted in every flavour that could drop it,
    /// in the iptables of `network`'s family (`ip6tables` for an IPv6 network).
    pub fn ensure(network: IpNetwork) -> Result<Vec<(Flavor, FlavorOutcome)>, IptablesError> {
        let family = IpFamily::of(network.ip());
        let mut out = Vec::new();
        for flavor in Flavor::ALL {
            let Some(state) = Self::state(flavor, family)? else {
                out.push((flavor, FlavorOutcome::Unavailable));
                continue;
            };
            let outcome = if state.is_installed(network) {
                FlavorOutcome::Unchanged
            } else if !state.may_drop() && !state.has_chain {
                FlavorOutcome::NotNeeded
            } else {
                run(
                    flavor.restore(family),
                    &["--noflush"],
                    Some(&install_batch(&state, network)),
                )?;
                FlavorOutcome::Installed
            };
            out.push((flavor, outcome));
        }
        Ok(out)
    }

    /// Removes our jumps and chain from every flavour of both families; the operator's rules
    /// stay.
    pub fn remove() -> Result<(), IptablesError> {
        for family in [IpFamily::V4, IpFamily::V6] {
            Self::remove_family(family)?;
        }
        Ok(())
    }

    /// Removes our jumps and chain from every flavour of `family`; returns the flavours that
    /// had any.
    pub fn remove_family(family: IpFamily) -> Result<Vec<Flavor>, IptablesError> {
        let mut removed = Vec::new();
        for flavor in Flavor::ALL {
            let Some(state) = Self::state(flavor, family)? else {
                continue;
            };
            if let Some(batch) = remove_batch(&state) {
                run(flavor.restore(family), &["--noflush"], Some(&batch))?;
                removed.push(flavor);
            }
        }
        Ok(removed)
    }
}

/// flannel's own chains: `(table, chain, the built-in chain that jumps to it)`.
pub const FLANNEL_CHAINS: [(&str, &str, &str); 2] = [
    ("nat", "FLANNEL-POSTRTG", "POSTROUTING"),
    ("filter", "FLANNEL-FWD", "FORWARD"),
];

/// The batch that removes flannel's chain `chain` of `table` and every jump to it, from an
/// `iptables-save -t <table>` listing; `None` when the chain is not there.
pub fn flannel_removal_batch(save: &str, table: &str, chain: &str) -> Option<String> {
    let declared = save.lines().any(|l| l.starts_with(&format!(":{chain} ")));
    let jumps: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A ") && l.ends_with(&format!("-j {chain}")))
        .collect();
    if !declared && jumps.is_empty() {
        return None;
    }
    let mut b = format!("*{table}\n");
    for j in jumps {
        b.push_str(&j.replacen("-A ", "-D ", 1));
        b.push('\n');
    }
    if declared {
        b.push_str(&format!(":{chain} - [0:0]\n-X {chain}\n"));
    }
    b.push_str("COMMIT\n");
    Some(b)
}

/// Removes flannel's `FLANNEL-POSTRTG` and `FLANNEL-FWD` chains and their jumps from both
/// flavours of both families (a node migrating from flannel). Returns what was removed, as
/// `iptables-nft nat FLANNEL-POSTRTG` or `ip6tables-legacy filter FLANNEL-FWD`.
pub fn remove_flannel_chains() -> Result<Vec<String>, IptablesError> {
    let mut removed = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for flavor in Flavor::ALL {
            for (table, chain, _) in FLANNEL_CHAINS {
                let Some(save) = save_table(flavor, family, table) else {
                    continue;
                };
                if let Some(batch) = flannel_removal_batch(&save, table, chain) {
                    run(flavor.restore(family), &["--noflush"], Some(&batch))?;
                    removed.push(format!("{} {table} {chain}", flavor.binary(family)));
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_SAVE: &str = "# Generated by iptables-nft-save v1.8.9\n*filter\n\
        :INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n\
        -A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\n\
        -A DOCKER-USER -j RETURN\nCOMMIT\n";

    fn net() -> IpNetwork {
        "10.244.0.0/16".parse().unwrap()
    }

    #[test]
    fn flannels_chains_and_jumps_are_removed_and_nothing_else() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
            :FLANNEL-POSTRTG - [0:0]\n:CNI-abc - [0:0]\n\
            -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
            -A POSTROUTING -s 10.244.1.5/32 -j CNI-abc\n\
            -A FLANNEL-POSTRTG -s 10.244.0.0/16 -j RETURN\nCOMMIT\n";
        let b = flannel_removal_batch(save, "nat", "FLANNEL-POSTRTG").unwrap();
        assert_eq!(
            b,
            "*nat\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             :FLANNEL-POSTRTG - [0:0]\n-X FLANNEL-POSTRTG\nCOMMIT\n"
        );
        assert!(!b.contains("CNI-abc"));
        assert_eq!(flannel_removal_batch(save, "filter", "FLANNEL-FWD"), None);
    }

    #[test]
    fn docker_host_needs_rules_and_a_bare_host_does_not() {
        let st = FilterState::parse(DOCKER_SAVE);
        assert_eq!(st.forward_policy.as_deref(), Some("DROP"));
        assert_eq!(st.forward_rules.len(), 2);
        assert!(st.may_drop());
        assert!(!st.is_installed(net()));
        let bare =
            FilterState::parse("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
        assert!(!bare.may_drop());
        assert!(!FilterState::parse("").may_drop());
    }

    #[test]
    fn installed_means_one_jump_first_and_exact_chain() {
        let mut save = DOCKER_SAVE.replace(
            "-A FORWARD -j DOCKER-USER",
            &format!(
                "-A FORWARD -m comment --comment \"{COMMENT}\" -j {FWD_CHAIN}\n-A FORWARD -j DOCKER-USER"
            ),
        );
        save = save.replace(
            ":DOCKER - [0:0]",
            &format!(":DOCKER - [0:0]\n:{FWD_CHAIN} - [0:0]"),
        );
        let with_chain = format!(
            "{}\n{}\nCOMMIT\n",
            save.trim_end_matches("COMMIT\n"),
            desired_chain_rules(net()).join("\n")
        );
        let st = FilterState::parse(&with_chain);
        assert!(st.is_installed(net()), "{st:?}");
        // Another network, or the jump not first, is drift.
        assert!(!st.is_installed("10.5.0.0/16".parse().unwrap()));
        let moved = with_chain.replacen(
            &format!("-A FORWARD -m comment --comment \"{COMMENT}\" -j {FWD_CHAIN}\n"),
            "",
            1,
        ) .replace("-A FORWARD -o docker0 -j DOCKER", &format!("-A FORWARD -o docker0 -j DOCKER\n-A FORWARD -m comment --comment \"{COMMENT}\" -j {FWD_CHAIN}"));
        assert!(!FilterState::parse(&moved).is_installed(net()));
    }

    #[test]
    fn batches_delete_duplicates_and_insert_first() {
        let st = FilterState {
            forward_policy: Some("DROP".into()),
            forward_rules: vec![
                format!("-A FORWARD -m comment --comment \"{COMMENT}\" -j {FWD_CHAIN}"),
                "-A FORWARD -j DOCKER-USER".into(),
                format!("-A FORWARD -m comment --comment \"{COMMENT}\" -j {FWD_CHAIN}"),
            ],
            has_chain: true,
            chain_rules: vec![],
        };
        let b = install_batch(&st, net());
        assert_eq!(b.matches("-D FORWARD").count(), 2);
        assert_eq!(b.matches("-I FORWARD 1").count(), 1);
        assert!(b.contains("-s 10.244.0.0/16") && b.contains("-d 10.244.0.0/16"));
        assert!(b.starts_with("*filter\n") && b.ends_with("COMMIT\n"));
        let r = remove_batch(&st).unwrap();
        assert_eq!(r.matches("-D FORWARD").count(), 2);
        assert!(r.contains(&format!("-X {FWD_CHAIN}")));
        assert_eq!(remove_batch(&FilterState::default()), None);
    }
}
