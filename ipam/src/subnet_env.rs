//! # subnet_env — the `/run/flannel/subnet.env` contract
//!
//! flanneld tells the CNI plugin what it leased through a tiny `KEY=VALUE` file:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! This module is the only place that knows the format, so writer and reader cannot drift.
//! Writing follows flanneld's `WriteSubnetFile`: keys in a fixed order (NETWORK, SUBNET,
//! IPV6_NETWORK, IPV6_SUBNET, MTU, IPMASQ), the IPv6 keys only when IPv6 is on, and an
//! atomic replace (temp file in the same directory, fsync, rename, mode 0644) so a CNI ADD
//! racing a flanneld restart reads either the old file or the new one, never half of one.
//!
//! Reading follows the flannel CNI plugin, a little more forgiving: blank lines, `#`
//! comments and unknown keys are ignored, whitespace and CRLF line ends are tolerated, and
//! values wrapped in quotes by other tools are unquoted. `FLANNEL_SUBNET` keeps its host
//! bits (`10.244.1.1/24` — the first host, which becomes the bridge gateway); the network
//! lists are masked and de-duplicated in order, as the reference does with `ParseCIDR`.
//! A file lacking required keys is rejected with *all* the missing keys named at once, so
//! the operator fixes it in one go.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::net::{masked_v4, masked_v6};

/// Key of the comma-separated list of IPv4 cluster networks.
pub const KEY_NETWORK: &str = "FLANNEL_NETWORK";
/// Key of this node's IPv4 subnet (first host address and prefix).
pub const KEY_SUBNET: &str = "FLANNEL_SUBNET";
/// Key of the comma-separated list of IPv6 cluster networks.
pub const KEY_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
/// Key of this node's IPv6 subnet (first host address and prefix).
pub const KEY_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";
/// Key of the MTU pods should use (the backend's MTU).
pub const KEY_MTU: &str = "FLANNEL_MTU";
/// Key of flanneld's `--ip-masq` flag (`true` means flanneld masquerades, so bridge must not).
pub const KEY_IPMASQ: &str = "FLANNEL_IPMASQ";

/// Default location of the file.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

/// The parsed contents of `subnet.env`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the IPv4 cluster networks (masked, de-duplicated, order kept).
    pub networks: Vec<Ipv4Network>,
    /// `FLANNEL_SUBNET` exactly as written, e.g. `10.244.1.1/24` (host bits = first host).
    pub subnet: Option<Ipv4Network>,
    /// `FLANNEL_IPV6_NETWORK`: the IPv6 cluster networks (masked, de-duplicated, order kept).
    pub ipv6_networks: Vec<Ipv6Network>,
    /// `FLANNEL_IPV6_SUBNET` exactly as written, e.g. `fd00:1::1/64`.
    pub ipv6_subnet: Option<Ipv6Network>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ` (`"true"` ⇒ true, anything else false).
    pub ipmasq: bool,
}

/// Why `subnet.env` could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// The file could not be read; `kind` tells `NotFound` (flanneld not up yet) apart.
    #[error("failed to read {}: {source}", path.display())]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// `source.kind()`, kept separately for easy matching.
        kind: std::io::ErrorKind,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Required keys are absent; every missing key is listed.
    #[error("{}is missing {}", display_path(path), keys.join(", "))]
    Missing {
        /// The file, when the text came from [`SubnetEnv::load`].
        path: Option<PathBuf>,
        /// The missing keys, in flannel's order.
        keys: Vec<&'static str>,
    },
    /// A key holds a value that does not parse.
    #[error("{}invalid {key}={value:?}: {reason}", display_path(path))]
    Invalid {
        /// The file, when the text came from [`SubnetEnv::load`].
        path: Option<PathBuf>,
        /// The offending key.
        key: &'static str,
        /// The offending value (unquoted, trimmed).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SubnetEnvError {
    /// True when the file does not exist (flanneld has not written it yet).
    pub fn is_not_found(&self) -> bool {
        matches!(self, SubnetEnvError::Io { kind, .. } if *kind == std::io::ErrorKind::NotFound)
    }

    fn with_path(self, p: &Path) -> Self {
        match self {
            SubnetEnvError::Missing { keys, .. } => SubnetEnvError::Missing {
                path: Some(p.to_path_buf()),
                keys,
            },
            SubnetEnvError::Invalid {
                key, value, reason, ..
            } => SubnetEnvError::Invalid {
                path: Some(p.to_path_buf()),
                key,
                value,
                reason,
            },
            other => other,
        }
    }
}

fn display_path(p: &Option<PathBuf>) -> String {
    match p {
        Some(p) => format!("{}: ", p.display()),
        None => "subnet.env: ".to_string(),
    }
}

fn invalid(key: &'static str, value: &str, reason: impl ToString) -> SubnetEnvError {
    SubnetEnvError::Invalid {
        path: None,
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Strip one pair of matching surrounding quotes (`"…"` or `'…'`).
fn unquote(v: &str) -> &str {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        v[1..v.len() - 1].trim()
    } else {
        v
    }
}

/// Parse a comma list of networks; each is masked, duplicates dropped, order kept.
fn parse_list<N: std::str::FromStr + PartialEq + Copy>(
    key: &'static str,
    value: &str,
    mask: fn(N) -> N,
) -> Result<Vec<N>, SubnetEnvError>
where
    N::Err: std::fmt::Display,
{
    let mut out: Vec<N> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !item.contains('/') {
            return Err(invalid(key, value, format!("{item:?} is not a CIDR")));
        }
        let n = item
            .parse::<N>()
            .map_err(|e| invalid(key, value, format!("{item:?}: {e}")))?;
        let n = mask(n);
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err(invalid(key, value, "empty network list"));
    }
    Ok(out)
}

fn parse_cidr<N: std::str::FromStr>(key: &'static str, value: &str) -> Result<N, SubnetEnvError>
where
    N::Err: std::fmt::Display,
{
    if !value.contains('/') {
        return Err(invalid(key, value, "not a CIDR (missing /prefix)"));
    }
    value.parse::<N>().map_err(|e| invalid(key, value, e))
}

impl SubnetEnv {
    /// Parse the text of a `subnet.env` file.
    ///
    /// Required: (`FLANNEL_NETWORK` or `FLANNEL_IPV6_NETWORK`), (`FLANNEL_SUBNET` or
    /// `FLANNEL_IPV6_SUBNET`), `FLANNEL_MTU` and `FLANNEL_IPMASQ`; the error lists every one
    /// that is missing. A present key with a bad value is an error naming key and value.
    /// A key given twice keeps its last value (like the reference's line-by-line reader).
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let mut networks: Option<Vec<Ipv4Network>> = None;
        let mut subnet: Option<Ipv4Network> = None;
        let mut ipv6_networks: Option<Vec<Ipv6Network>> = None;
        let mut ipv6_subnet: Option<Ipv6Network> = None;
        let mut mtu: Option<u32> = None;
        let mut ipmasq: Option<bool> = None;

        // `lines()` strips "\n" and "\r\n"; trim() takes care of stray whitespace.
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match key.trim() {
                KEY_NETWORK => networks = Some(parse_list(KEY_NETWORK, value, masked_v4)?),
                KEY_IPV6_NETWORK => {
                    ipv6_networks = Some(parse_list(KEY_IPV6_NETWORK, value, masked_v6)?)
                }
                KEY_SUBNET => subnet = Some(parse_cidr(KEY_SUBNET, value)?),
                KEY_IPV6_SUBNET => ipv6_subnet = Some(parse_cidr(KEY_IPV6_SUBNET, value)?),
                KEY_MTU => {
                    mtu = Some(
                        value
                            .parse::<u32>()
                            .map_err(|e| invalid(KEY_MTU, value, e))?,
                    )
                }
                KEY_IPMASQ => ipmasq = Some(value == "true"),
                _ => {}
            }
        }

        let mut keys = Vec::new();
        if networks.is_none() && ipv6_networks.is_none() {
            keys.extend([KEY_NETWORK, KEY_IPV6_NETWORK]);
        }
        if subnet.is_none() && ipv6_subnet.is_none() {
            keys.extend([KEY_SUBNET, KEY_IPV6_SUBNET]);
        }
        if mtu.is_none() {
            keys.push(KEY_MTU);
        }
        if ipmasq.is_none() {
            keys.push(KEY_IPMASQ);
        }
        match (mtu, ipmasq) {
            (Some(mtu), Some(ipmasq)) if keys.is_empty() => Ok(SubnetEnv {
                networks: networks.unwrap_or_default(),
                subnet,
                ipv6_networks: ipv6_networks.unwrap_or_default(),
                ipv6_subnet,
                mtu,
                ipmasq,
            }),
            _ => Err(SubnetEnvError::Missing { path: None, keys }),
        }
    }

    /// Read and parse the file at `path`; errors carry the path.
    pub fn load(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = std::fs::read_to_string(path).map_err(|source| SubnetEnvError::Io {
            path: path.to_path_buf(),
            kind: source.kind(),
            source,
        })?;
        SubnetEnv::parse(&text).map_err(|e| e.with_path(path))
    }

    /// This node's IPv4 subnet as a network (`10.244.1.1/24` ⇒ `10.244.1.0/24`).
    pub fn subnet_network(&self) -> Option<Ipv4Network> {
        self.subnet.map(masked_v4)
    }

    /// This node's IPv6 subnet as a network (host bits cleared).
    pub fn ipv6_subnet_network(&self) -> Option<Ipv6Network> {
        self.ipv6_subnet.map(masked_v6)
    }

    /// The file text, keys in flanneld's order, one `KEY=VALUE\n` per line; the network and
    /// subnet keys of a family appear only when set.
    pub fn render(&self) -> String {
        fn join<T: std::fmt::Display>(v: &[T]) -> String {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
        let mut out = String::with_capacity(160);
        // Writing into a String cannot fail.
        if !self.networks.is_empty() {
            let _ = writeln!(out, "{KEY_NETWORK}={}", join(&self.networks));
        }
        if let Some(s) = self.subnet {
            let _ = writeln!(out, "{KEY_SUBNET}={s}");
        }
        if !self.ipv6_networks.is_empty() {
            let _ = writeln!(out, "{KEY_IPV6_NETWORK}={}", join(&self.ipv6_networks));
        }
        if let Some(s) = self.ipv6_subnet {
            let _ = writeln!(out, "{KEY_IPV6_SUBNET}={s}");
        }
        let _ = writeln!(out, "{KEY_MTU}={}", self.mtu);
        let _ = writeln!(out, "{KEY_IPMASQ}={}", self.ipmasq);
        out
    }

    /// Replace `path` atomically with [`render`](Self::render)'s output: the parent
    /// directory is created (0755) if needed, a temp file in the same directory is written,
    /// fsynced, set to mode 0644 and renamed over `path`, then the directory is fsynced.
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} has no file name", path.display()),
            )
        })?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".tmp{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
            // Explicit chmod: the umask must not narrow the mode readers rely on.
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n4(s: &str) -> Ipv4Network {
        s.parse().expect("test network")
    }
    fn n6(s: &str) -> Ipv6Network {
        s.parse().expect("test network")
    }

    #[test]
    fn flannel_example_parses() {
        let text = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
        let env = SubnetEnv::parse(text).expect("parse");
        assert_eq!(env.networks, vec![n4("10.1.0.0/16")]);
        assert_eq!(env.subnet, Some(n4("10.1.17.1/24")));
        assert_eq!(env.subnet_network(), Some(n4("10.1.17.0/24")));
        assert_eq!(
            env.subnet.map(|s| s.ip().to_string()).as_deref(),
            Some("10.1.17.1")
        );
        assert!(env.ipv6_networks.is_empty());
        assert_eq!(env.ipv6_subnet, None);
        assert_eq!(env.mtu, 1472);
        assert!(env.ipmasq);
        // flanneld writes exactly this text, so rendering gives it back byte for byte.
        assert_eq!(env.render(), text);
    }

    #[test]
    fn round_trip_dual_stack() {
        let env = SubnetEnv {
            networks: vec![n4("10.244.0.0/16"), n4("10.245.0.0/16")],
            subnet: Some(n4("10.244.3.1/24")),
            ipv6_networks: vec![n6("fd00:10:244::/56")],
            ipv6_subnet: Some(n6("fd00:10:244:3::1/64")),
            mtu: 1450,
            ipmasq: false,
        };
        let text = env.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16",
                "FLANNEL_SUBNET=10.244.3.1/24",
                "FLANNEL_IPV6_NETWORK=fd00:10:244::/56",
                "FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64",
                "FLANNEL_MTU=1450",
                "FLANNEL_IPMASQ=false",
            ]
        );
        assert_eq!(SubnetEnv::parse(&text).expect("parse"), env);
    }

    #[test]
    fn ipv6_only() {
        let text = "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:5::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";
        let env = SubnetEnv::parse(text).expect("parse");
        assert!(env.networks.is_empty());
        assert_eq!(env.subnet, None);
        assert_eq!(env.ipv6_networks, vec![n6("fd00::/48")]);
        assert_eq!(env.ipv6_subnet_network(), Some(n6("fd00:0:0:5::/64")));
        assert_eq!(env.render(), text);
    }

    #[test]
    fn comma_list_is_deduplicated_in_order() {
        let text = "FLANNEL_NETWORK=10.2.0.0/16, 10.1.0.0/16,10.2.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.2.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false";
        let env = SubnetEnv::parse(text).expect("parse");
        assert_eq!(env.networks, vec![n4("10.2.0.0/16"), n4("10.1.0.0/16")]);
        // Host bits in a network entry are masked away, like ParseCIDR does.
        let env =
            SubnetEnv::parse(&text.replace("10.1.0.0/16,10.2", "10.1.9.9/16,10.2")).expect("parse");
        assert_eq!(env.networks, vec![n4("10.2.0.0/16"), n4("10.1.0.0/16")]);
    }

    #[test]
    fn tolerant_syntax() {
        let text = "# written by flanneld\r\n\r\n  FLANNEL_NETWORK = \"10.1.0.0/16\"  \r\nFLANNEL_SUBNET='10.1.17.1/24'\r\nSOMETHING_ELSE=42\r\nnot a pair\r\nFLANNEL_MTU=1472\r\nFLANNEL_IPMASQ=yes\r\n";
        let env = SubnetEnv::parse(text).expect("parse");
        assert_eq!(env.networks, vec![n4("10.1.0.0/16")]);
        assert_eq!(env.subnet, Some(n4("10.1.17.1/24")));
        assert_eq!(env.mtu, 1472);
        assert!(!env.ipmasq, "only the exact string true enables ipmasq");
    }

    #[test]
    fn every_missing_key_is_named() {
        let err = SubnetEnv::parse("").expect_err("empty must fail");
        match &err {
            SubnetEnvError::Missing { keys, .. } => assert_eq!(
                keys,
                &vec![
                    KEY_NETWORK,
                    KEY_IPV6_NETWORK,
                    KEY_SUBNET,
                    KEY_IPV6_SUBNET,
                    KEY_MTU,
                    KEY_IPMASQ
                ]
            ),
            other => panic!("unexpected {other:?}"),
        }
        let full = [
            "FLANNEL_NETWORK=10.1.0.0/16",
            "FLANNEL_SUBNET=10.1.17.1/24",
            "FLANNEL_MTU=1472",
            "FLANNEL_IPMASQ=true",
        ];
        let expect_missing: [&[&str]; 4] = [
            &[KEY_NETWORK, KEY_IPV6_NETWORK],
            &[KEY_SUBNET, KEY_IPV6_SUBNET],
            &[KEY_MTU],
            &[KEY_IPMASQ],
        ];
        for (skip, want) in expect_missing.iter().enumerate() {
            let text: Vec<&str> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            let err = SubnetEnv::parse(&text.join("\n")).expect_err("must fail");
            let msg = err.to_string();
            match err {
                SubnetEnvError::Missing { keys, .. } => assert_eq!(&keys[..], *want),
                other => panic!("unexpected {other:?}"),
            }
            for k in want.iter() {
                assert!(msg.contains(k), "{msg} should name {k}");
            }
        }
    }

    #[test]
    fn garbage_values_name_the_key() {
        let base = [
            ("FLANNEL_NETWORK", "10.1.0.0/16"),
            ("FLANNEL_SUBNET", "10.1.17.1/24"),
            ("FLANNEL_IPV6_NETWORK", "fd00::/48"),
            ("FLANNEL_IPV6_SUBNET", "fd00:0:0:5::1/64"),
            ("FLANNEL_MTU", "1472"),
            ("FLANNEL_IPMASQ", "true"),
        ];
        let bad: [(&str, &[&str]); 5] = [
            (
                "FLANNEL_NETWORK",
                &["banana", "10.1.0.0/33", "10.1.0.0", ""],
            ),
            ("FLANNEL_SUBNET", &["10.1.17.1", "x/24", "fd00::1/64"]),
            ("FLANNEL_IPV6_NETWORK", &["10.0.0.0/8", "fd00::/129"]),
            ("FLANNEL_IPV6_SUBNET", &["::1", "zz::/64"]),
            ("FLANNEL_MTU", &["-1", "abc", "99999999999", ""]),
        ];
        for (key, values) in bad {
            for v in values {
                let text: String = base
                    .iter()
                    .map(|(k, val)| format!("{k}={}\n", if *k == key { v } else { val }))
                    .collect();
                let err = SubnetEnv::parse(&text).expect_err("must fail");
                match &err {
                    SubnetEnvError::Invalid {
                        key: k, value: got, ..
                    } => {
                        assert_eq!(*k, key);
                        assert_eq!(got, v);
                    }
                    other => panic!("{key}={v}: unexpected {other:?}"),
                }
                assert!(err.to_string().contains(key));
            }
        }
    }

    #[test]
    fn load_reports_path_and_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.env");
        let err = SubnetEnv::load(&missing).expect_err("missing file");
        assert!(err.is_not_found());
        assert!(err.to_string().contains("nope.env"));

        let bad = dir.path().join("bad.env");
        std::fs::write(&bad, "FLANNEL_MTU=1450\n").expect("write");
        let err = SubnetEnv::load(&bad).expect_err("incomplete file");
        assert!(!err.is_not_found());
        let msg = err.to_string();
        assert!(msg.contains("bad.env") && msg.contains(KEY_IPMASQ), "{msg}");
    }

    #[test]
    fn write_atomic_creates_dir_and_mode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/flannel/subnet.env");
        let env = SubnetEnv {
            networks: vec![n4("10.244.0.0/16")],
            subnet: Some(n4("10.244.1.1/24")),
            ipv6_networks: vec![],
            ipv6_subnet: None,
            mtu: 1450,
            ipmasq: true,
        };
        env.write_atomic(&path).expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o644);
        let parent = std::fs::metadata(dir.path().join("run/flannel")).expect("stat dir");
        assert!(parent.is_dir());
        assert_eq!(SubnetEnv::load(&path).expect("load"), env);

        // Overwrite: the new content replaces the old; no temp files are left behind.
        let env2 = SubnetEnv { mtu: 1400, ..env };
        env2.write_atomic(&path).expect("rewrite");
        assert_eq!(SubnetEnv::load(&path).expect("load").mtu, 1400);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("run/flannel"))
            .expect("readdir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("subnet.env")]);
    }
}
