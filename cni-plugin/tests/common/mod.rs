//! Test harness: throw-away network namespaces and a runtime-like plugin driver.
//!
//! Every namespace is created with `ip netns add` under a unique name and deleted by a
//! Drop guard, so a failing assertion still cleans up. The plugin runs exactly as a
//! runtime runs it: the built binary, CNI_* variables, config on stdin, executed inside
//! the "node" namespace (setns in the child before exec), so the root namespace is never
//! touched.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Returns false (skip) when not root outside CI; panics in CI (`flannel_testkit`'s rule).
pub fn require_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root {
        return flannel_testkit::require_root(test);
    }
    if !has_ip {
        flannel_testkit::skip_or_panic(&format!("{test}: iproute2 `ip` missing"));
    }
    has_ip
}

/// Runs `ip` with args, panicking with stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("fct{}-{tag}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NS -j <args>` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-n", &self.name, "-j", "-d"];
        full.extend_from_slice(args);
        let text = ip(&full);
        if text.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&text).expect("ip -j output")
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("ip netns exec")
    }

    /// One ping (1 s timeout) from this namespace.
    pub fn ping(&self, dst: &str) -> bool {
        self.exec(&["ping", "-c1", "-W1", "-q", dst])
            .status
            .success()
    }

    /// The MAC this namespace's neighbour table holds for `ip` (`ip neigh show IP`), if any.
    pub fn neigh_mac(&self, ip: &str) -> Option<String> {
        self.ip_json(&["neigh", "show", ip])
            .as_array()?
            .iter()
            .find_map(|n| n["lladdr"].as_str().map(str::to_string))
    }

    /// Interface names in the namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// Deletes the namespace now (idempotent with Drop).
    pub fn delete(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
            self.name.clear();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// The plugin binary under test: `FLANNEL_CNI_BIN` when set (scripts/test.sh points it at the
/// installable build from scripts/build-cni.sh), else the one cargo built for this test run.
pub fn plugin_path() -> PathBuf {
    match std::env::var_os("FLANNEL_CNI_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_flannel")),
    }
}

/// A node: its namespace plus a temp dir holding subnet.env and the IPAM store.
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// A node with subnet.env for 10.244.1.0/24 in 10.244.0.0/16, MTU 1450, FLANNEL_IPMASQ=true.
    pub fn new(tag: &str) -> Node {
        let node = Node {
            ns: Netns::new(tag),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        node.write_subnet_env("10.244.0.0/16", "10.244.1.1/24", 1450, true);
        node
    }

    pub fn write_subnet_env(&self, network: &str, subnet: &str, mtu: u32, ipmasq: bool) {
        std::fs::write(
            self.subnet_file(),
            format!("FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n"),
        )
        .unwrap();
    }

    /// Writes subnet.env as flanneld writes it for dual stack (both families' keys).
    pub fn write_dual_stack_subnet_env(&self) {
        std::fs::write(
            self.subnet_file(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
    }

    /// Writes subnet.env as flanneld writes it for an IPv6-only network (no IPv4 keys).
    pub fn write_ipv6_only_subnet_env(&self) {
        std::fs::write(
            self.subnet_file(),
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// Reservation files (named by IP) in the store of network `net`.
    pub fn reservations(&self, net: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam_dir().join(net))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// flannel's stock config (kube-flannel delegate), with paths inside the temp dir.
    pub fn conf(&self, version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": version,
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.subnet_file(),
            "dataDir": self.dir.path().join("flannel"),
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
            "ipam": {"dataDir": self.ipam_dir()},
        })
    }

    /// Runs the plugin inside the node namespace.
    pub fn run(
        &self,
        cmd: &str,
        cid: &str,
        netns: Option<&Path>,
        ifname: &str,
        conf: &serde_json::Value,
    ) -> PluginOut {
        self.run_env(cmd, cid, netns, ifname, conf, &[])
    }

    pub fn run_env(
        &self,
        cmd: &str,
        cid: &str,
        netns: Option<&Path>,
        ifname: &str,
        conf: &serde_json::Value,
        extra: &[(&str, &str)],
    ) -> PluginOut {
        let stdin = conf.to_string();
        run_in_ns(&self.ns, &stdin, |c| {
            c.env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", cid)
                .env(
                    "CNI_NETNS",
                    netns.map(|p| p.display().to_string()).unwrap_or_default(),
                )
                .env("CNI_IFNAME", ifname)
                .env("CNI_PATH", "/usr/lib/cni");
            for (k, v) in extra {
                c.env(k, v);
            }
        })
    }

    /// ADD that must succeed; returns the result.
    pub fn add_ok(&self, cid: &str, pod: &Netns, conf: &serde_json::Value) -> serde_json::Value {
        let out = self.run("ADD", cid, Some(&pod.path()), "eth0", conf);
        assert_eq!(
            out.code, 0,
            "ADD {cid} failed: {} / {}",
            out.stdout, out.stderr
        );
        out.json()
    }

    /// DEL that must succeed.
    pub fn del_ok(&self, cid: &str, netns: Option<&Path>, conf: &serde_json::Value) {
        let out = self.run("DEL", cid, netns, "eth0", conf);
        assert_eq!(
            out.code, 0,
            "DEL {cid} failed: {} / {}",
            out.stdout, out.stderr
        );
        assert!(
            out.stdout.trim().is_empty(),
            "DEL prints nothing on success: {}",
            out.stdout
        );
    }
}

/// A plugin run's outcome.
#[derive(Debug)]
pub struct PluginOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOut {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The error code of a failed run.
    pub fn err_code(&self) -> u64 {
        assert_ne!(
            self.code, 0,
            "expected failure, got success: {}",
            self.stdout
        );
        self.json()["code"].as_u64().expect("error code")
    }
}

/// Runs the plugin binary inside `ns` with env set by `setup`.
pub fn run_in_ns(ns: &Netns, stdin: &str, setup: impl FnOnce(&mut Command)) -> PluginOut {
    let child = spawn_in_ns(ns, stdin, setup);
    let out = child.wait_with_output().expect("wait plugin");
    PluginOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts the plugin binary inside `ns` with env set by `setup` and its config written to
/// its stdin; the caller waits for it (or kills it).
pub fn spawn_in_ns(
    ns: &Netns,
    stdin: &str,
    setup: impl FnOnce(&mut Command),
) -> std::process::Child {
    spawn_bin_in_ns(&plugin_path(), ns, stdin, setup)
}

/// [`spawn_in_ns`] with another plugin binary.
pub fn spawn_bin_in_ns(
    binary: &Path,
    ns: &Netns,
    stdin: &str,
    setup: impl FnOnce(&mut Command),
) -> std::process::Child {
    let nsfile = std::fs::File::open(ns.path()).expect("open netns");
    let fd = nsfile.as_raw_fd();
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    setup(&mut cmd);
    // SAFETY: setns is async-signal-safe; the fd stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    // A plugin may exit before reading its config (bad environment): a broken pipe is its
    // answer, not a harness failure; the exit code and stdout below say what happened.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.expect("write plugin stdin"),
    }
    drop(nsfile);
    child
}

/// The result's IPv4 address without prefix.
pub fn result_ip(result: &serde_json::Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}
