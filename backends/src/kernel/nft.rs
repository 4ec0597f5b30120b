//! # nftables through the `nft` binary, one transaction per change
//!
//! Every change is a script fed to a **single** `nft -f -` process. nft turns the whole script
//! into one netlink batch, which the kernel applies atomically: either every line takes effect or
//! none does, and no reader ever sees a half-built rule set. One process per change also keeps
//! the CNI ADD cost to a single fork/exec instead of one per rule.
//!
//! `nft` acts in the network namespace of the thread that spawns it, so run these functions inside
//! [`crate::kernel::netns::NetNs::run`] to program another namespace.
//!
//! [`PodMasq`] implements the CNI `ipMasq` option: pod addresses live in an nft set, and one
//! NAT rule per network masquerades traffic from that set unless it stays in the pod subnet or is
//! multicast — the semantics of the reference bridge plugin's per-pod iptables chains, without a
//! chain and three processes per pod.

use std::io::{self, Write};
use std::net::IpAddr;
use std::process::{Command, Output, Stdio};

use ipnetwork::IpNetwork;
use serde_json::Value;

/// Errors from running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The `nft` binary could not be started (not installed, not executable) or its pipes failed.
    #[error("cannot run nft for {action}: {source}")]
    Spawn {
        /// What we were doing.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `nft` ran and failed; `stderr` is its complaint (it names the offending line).
    #[error("nft {action} failed ({status}): {stderr}")]
    Failed {
        /// What we were doing.
        action: String,
        /// The exit status, as text.
        status: String,
        /// nft's standard error, trimmed.
        stderr: String,
    },
    /// `nft` succeeded but printed something we could not understand.
    #[error("nft {action}: unexpected output: {reason}")]
    Output {
        /// What we were doing.
        action: String,
        /// What was wrong with it.
        reason: String,
    },
    /// An argument cannot be put into an nft script safely.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidInput {
        /// Which argument.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

impl NftError {
    /// Whether nft failed because a table, chain or set does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NftError::Failed { stderr, .. } if stderr.contains("No such file or directory"))
    }
}

/// Where to look for `nft` when it is not on `PATH` (CNI plugins often run with a bare `PATH`).
const NFT_FALLBACKS: &[&str] = &["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"];

/// Runs `nft ARGS` with `stdin` as its input, falling back to well-known paths if `nft` is not on
/// `PATH`.
fn run_nft(action: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, NftError> {
    let spawn_err = |source: io::Error| NftError::Spawn {
        action: action.to_string(),
        source,
    };
    let mut last_err = None;
    for bin in std::iter::once("nft").chain(NFT_FALLBACKS.iter().copied()) {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A transaction must not land after our caller was killed (and cleaned up after).
        crate::kernel::child::die_with_parent(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(spawn_err(e)),
        };
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // nft reads the whole script before it prints anything, so writing first cannot
            // deadlock on a full stdout/stderr pipe.
            // If nft exits early the write fails with EPIPE; its exit status and stderr below
            // then tell the real story.
            if let Err(e) = pipe.write_all(input.as_bytes())
                && e.kind() != io::ErrorKind::BrokenPipe
            {
                return Err(spawn_err(e));
            }
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(NftError::Failed {
                action: action.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        return Ok(out);
    }
    Err(spawn_err(last_err.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "nft not found")
    })))
}

/// Applies `script` as one atomic transaction (`nft -f -`).
///
/// Errors carry nft's stderr, which quotes the failing line.
pub fn apply(script: &str) -> Result<(), NftError> {
    run_nft("apply", &["-f", "-"], Some(script)).map(|_| ())
}

/// Lists one object as JSON (`nft -j list OBJECT`), e.g. `"set ip cni_flannel masq-1234"` or
/// `"table ip6 cni_flannel"`. A missing object is an error for which
/// [`NftError::is_not_found`] is true.
pub fn list_json(object: &str) -> Result<Value, NftError> {
    let mut args = vec!["-j", "list"];
    args.extend(object.split_whitespace());
    let action = format!("list {object}");
    let out = run_nft(&action, &args, None)?;
    serde_json::from_slice(&out.stdout).map_err(|e| NftError::Output {
        action,
        reason: e.to_string(),
    })
}

/// Lists one object as nft prints it (`nft list OBJECT`), e.g. `"table ip flannel-rs"`. A
/// missing object is an error for which [`NftError::is_not_found`] is true.
pub fn list_text(object: &str) -> Result<String, NftError> {
    let mut args = vec!["list"];
    args.extend(object.split_whitespace());
    let action = format!("list {object}");
    let out = run_nft(&action, &args, None)?;
    String::from_utf8(out.stdout).map_err(|e| NftError::Output {
        action,
        reason: e.to_string(),
    })
}

/// The nftables table that holds every [`PodMasq`] set and chain (in family `ip` and `ip6`).
pub const MASQ_TABLE: &str = "cni_flannel";
/// Prefix of a network's postrouting chain; the rest is [`network_hash`].
pub const MASQ_CHAIN_PREFIX: &str = "post-";
/// Prefix of a network's address set; the rest is [`network_hash`].
pub const MASQ_SET_PREFIX: &str = "masq-";
/// The longest element comment nft stores.
pub const MAX_COMMENT_LEN: usize = 128;

/// A stable 64-bit FNV-1a hash of a network name, as 16 hex digits. It never changes between
/// releases: chains and sets made by an older plugin must still be found by a newer one.
pub fn network_hash(network_name: &str) -> String {
    format!("{:016x}", ipam::net::fnv1a64(network_name.bytes()))
}

/// Address-family specifics of the masquerade rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    /// nft table family, also the address selector keyword.
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
    fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }
}

/// Per-pod source NAT for the CNI `ipMasq` option.
///
/// For network `N` with hash `H` ([`network_hash`]) and family `F` (`ip` or `ip6`, from the pod
/// address) the kernel holds:
///
/// ```text
/// table F cni_flannel {
///     set masq-H { type ipv4_addr; elements = { 10.244.1.5 comment "CID/eth0", ... } }
///     chain post-H {
///         type nat hook postrouting priority srcnat; policy accept;
///         ip saddr @masq-H ip daddr != 10.244.1.0/24 ip daddr != 224.0.0.0/4 masquerade
///     }
/// }
/// ```
///
/// Pod-to-own-subnet traffic keeps its source address, multicast is left alone, everything else
/// is masqueraded — the reference bridge plugin's rules. Adding or removing a pod is one `nft`
/// process and one atomic transaction. Element comments (`CID/IFNAME`) let GC find entries whose
/// container is gone.
#[derive(Clone, Debug)]
pub struct PodMasq {
    network: String,
    hash: String,
}

impl PodMasq {
    /// The masquerade state of network `network_name` (nothing is touched until a method runs).
    pub fn new(network_name: &str) -> PodMasq {
        PodMasq {
            network: network_name.to_string(),
            hash: network_hash(network_name),
        }
    }

    /// The network name this was made for.
    pub fn network_name(&self) -> &str {
        &self.network
    }

    /// The postrouting chain name, `post-<hash>`.
    pub fn chain_name(&self) -> String {
        format!("{MASQ_CHAIN_PREFIX}{}", self.hash)
    }

    /// The address set name, `masq-<hash>`.
    pub fn set_name(&self) -> String {
        format!("{MASQ_SET_PREFIX}{}", self.hash)
    }

    /// The transaction [`PodMasq::add`] applies (exposed for logging and tests).
    pub fn add_script(
        &self,
        pod: IpNetwork,
        container_id: &str,
        ifname: &str,
    ) -> Result<String, NftError> {
        let comment = element_comment(container_id, ifname)?;
        let fam = Family::of(pod.ip());
        let f = fam.nft();
        let (chain, set) = (self.chain_name(), self.set_name());
        let subnet =
            IpNetwork::new(pod.network(), pod.prefix()).map_err(|_| NftError::InvalidInput {
                field: "pod address",
                value: pod.to_string(),
                reason: "bad prefix length",
            })?;
        Ok(format!(
            "add table {f} {MASQ_TABLE}\n\
             add chain {f} {MASQ_TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add set {f} {MASQ_TABLE} {set} {{ type {ty}; }}\n\
             flush chain {f} {MASQ_TABLE} {chain}\n\
             add rule {f} {MASQ_TABLE} {chain} {f} saddr @{set} {f} daddr != {subnet} {f} daddr != {mc} masquerade\n\
             add element {f} {MASQ_TABLE} {set} {{ {ip} comment \"{comment}\" }}\n",
            ty = fam.addr_type(),
            mc = fam.multicast(),
            ip = pod.ip(),
        ))
    }

    /// Masquerades traffic from `pod` (the pod address with its subnet prefix, e.g.
    /// `10.244.1.5/24`) that leaves the subnet, recording `container_id/ifname` as the element
    /// comment. Idempotent; one `nft -f -` run.
    pub fn add(&self, pod: IpNetwork, container_id: &str, ifname: &str) -> Result<(), NftError> {
        apply(&self.add_script(pod, container_id, ifname)?)
    }

    /// Stops masquerading `ip`. Idempotent: it succeeds when the address, the set or the table is
    /// absent (the transaction adds the element before deleting it, which cannot fail).
    pub fn remove(&self, ip: IpAddr) -> Result<(), NftError> {
        let fam = Family::of(ip);
        let f = fam.nft();
        let set = self.set_name();
        apply(&format!(
            "add table {f} {MASQ_TABLE}\n\
             add set {f} {MASQ_TABLE} {set} {{ type {ty}; }}\n\
             add element {f} {MASQ_TABLE} {set} {{ {ip} }}\n\
             delete element {f} {MASQ_TABLE} {set} {{ {ip} }}\n",
            ty = fam.addr_type(),
        ))
    }

    /// Whether `ip` is in this network's masquerade set (`false` when the set does not exist).
    pub fn contains(&self, ip: IpAddr) -> Result<bool, NftError> {
        Ok(self
            .family_elements(Family::of(ip))?
            .iter()
            .any(|(e, _)| *e == ip))
    }

    /// Every masqueraded address of this network, IPv4 then IPv6, with its comment
    /// (`CID/IFNAME`, empty if the element has none). Missing tables or sets yield nothing.
    pub fn elements(&self) -> Result<Vec<(IpAddr, String)>, NftError> {
        let mut all = self.family_elements(Family::V4)?;
        all.extend(self.family_elements(Family::V6)?);
        Ok(all)
    }

    /// Removes this network's chain and set in both families (idempotent). Other networks'
    /// objects and the table itself stay.
    pub fn delete_all(&self) -> Result<(), NftError> {
        let (chain, set) = (self.chain_name(), self.set_name());
        let mut script = String::new();
        for fam in [Family::V4, Family::V6] {
            let f = fam.nft();
            script.push_str(&format!(
                "add table {f} {MASQ_TABLE}\n\
                 add chain {f} {MASQ_TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
                 add set {f} {MASQ_TABLE} {set} {{ type {ty}; }}\n\
                 delete chain {f} {MASQ_TABLE} {chain}\n\
                 delete set {f} {MASQ_TABLE} {set}\n",
                ty = fam.addr_type(),
            ));
        }
        apply(&script)
    }

    fn family_elements(&self, fam: Family) -> Result<Vec<(IpAddr, String)>, NftError> {
        let object = format!("set {} {MASQ_TABLE} {}", fam.nft(), self.set_name());
        let json = match list_json(&object) {
            Ok(j) => j,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        parse_set_elements(&json).map_err(|reason| NftError::Output {
            action: format!("list {object}"),
            reason,
        })
    }
}

/// Builds and checks the `CID/IFNAME` element comment. Container IDs are restricted by the CNI
/// spec to letters, digits, `-`, `_` and `.`; interface names may not contain `/`, quotes,
/// backslashes or whitespace. Both rules also keep the comment safe inside nft's `"..."`.
fn element_comment(container_id: &str, ifname: &str) -> Result<String, NftError> {
    let cid_ok = !container_id.is_empty()
        && container_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !cid_ok {
        return Err(NftError::InvalidInput {
            field: "container id",
            value: container_id.to_string(),
            reason: "must be non-empty letters, digits, '-', '_' or '.'",
        });
    }
    let if_ok = !ifname.is_empty()
        && ifname.len() < 16
        && ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'"' | b'\\' | b':'));
    if !if_ok {
        return Err(NftError::InvalidInput {
            field: "interface name",
            value: ifname.to_string(),
            reason: "must be 1-15 printable characters without '/', ':', quotes or backslashes",
        });
    }
    let comment = format!("{container_id}/{ifname}");
    if comment.len() > MAX_COMMENT_LEN {
        return Err(NftError::InvalidInput {
            field: "container id",
            value: container_id.to_string(),
            reason: "too long: \"CID/IFNAME\" must fit nft's 128-byte comment",
        });
    }
    Ok(comment)
}

/// Extracts `(address, comment)` pairs from `nft -j list set ...` output. Elements appear either
/// as a bare string (`"10.244.1.5"`) or as `{"elem": {"val": "10.244.1.5", "comment": "..."}}`.
fn parse_set_elements(json: &Value) -> Result<Vec<(IpAddr, String)>, String> {
    let items = json
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    let mut out = Vec::new();
    for item in items {
        let Some(set) = item.get("set") else { continue };
        let Some(elems) = set.get("elem") else {
            continue;
        };
        let elems = elems.as_array().ok_or("\"elem\" is not an array")?;
        for e in elems {
            let (val, comment) = match e {
                Value::String(s) => (s.as_str(), ""),
                Value::Object(_) => {
                    let inner = e.get("elem").ok_or("element object without \"elem\"")?;
                    let val = inner
                        .get("val")
                        .and_then(Value::as_str)
                        .ok_or("element without a string \"val\"")?;
                    (
                        val,
                        inner.get("comment").and_then(Value::as_str).unwrap_or(""),
                    )
                }
                other => return Err(format!("unexpected element {other}")),
            };
            let ip: IpAddr = val
                .parse()
                .map_err(|_| format!("element {val:?} is not an IP address"))?;
            out.push((ip, comment.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(network_hash(""), "cbf29ce484222325");
        assert_eq!(network_hash("a"), "af63dc4c8601ec8c");
        assert_ne!(network_hash("cbr0"), network_hash("cbr1"));
    }

    #[test]
    fn comments_are_validated() {
        assert_eq!(
            element_comment("abc-1.2_3", "eth0").unwrap(),
            "abc-1.2_3/eth0"
        );
        for (cid, ifn) in [
            ("", "eth0"),
            ("a\"b", "eth0"),
            ("a b", "eth0"),
            ("ok", ""),
            ("ok", "e/0"),
            ("ok", "x\""),
        ] {
            assert!(element_comment(cid, ifn).is_err(), "{cid:?} {ifn:?}");
        }
        assert!(element_comment(&"a".repeat(123), "eth0").is_ok()); // exactly 128 bytes
        assert!(element_comment(&"a".repeat(124), "eth0").is_err());
    }

    #[test]
    fn parses_both_element_shapes() {
        let j: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "ip", "name": "masq-x", "table": "cni_flannel",
                "type": "ipv4_addr", "handle": 2,
                "elem": [{"elem": {"val": "10.244.1.5", "comment": "cid1/eth0"}}, "10.244.1.6"]}}]}"#,
        )
        .unwrap();
        let got = parse_set_elements(&j).unwrap();
        assert_eq!(
            got,
            vec![
                ("10.244.1.5".parse().unwrap(), "cid1/eth0".to_string()),
                ("10.244.1.6".parse().unwrap(), String::new())
            ]
        );
        let empty: Value =
            serde_json::from_str(r#"{"nftables": [{"set": {"name": "s"}}]}"#).unwrap();
        assert!(parse_set_elements(&empty).unwrap().is_empty());
    }
}
