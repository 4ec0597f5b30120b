//! The multi-node test bed: underlay, etcd, nodes running flanneld, pods via the CNI plugin.
//!
//! This file builds the topology and runs the nodes' flanneld; `etcd` starts the cluster's
//! etcd and talks to it, `pods` attaches pods and checks connectivity between them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod etcd;
mod pods;
pub mod wggo;

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Underlay address of etcd (on the underlay bridge).
pub const ETCD_IP: &str = "198.18.0.254";
/// Underlay IPv6 address of etcd in dual-stack and IPv6-only clusters.
pub const ETCD_IP6: &str = "fd00:198:18::fe";
/// The cluster network.
pub const NETWORK: &str = "10.244.0.0/16";
/// The cluster IPv6 network (dual-stack and IPv6-only clusters).
pub const IPV6_NETWORK: &str = "fd00:10:244::/56";

/// The address families of the cluster: node underlay addresses, the network config's
/// `EnableIPv4`/`EnableIPv6`, and so the pods' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stack {
    /// IPv4 only (flannel's default).
    #[default]
    V4,
    /// IPv4 and IPv6: nodes on 198.18.0.N/16 and fd00:198:18::N/64, pods get one address of each.
    Dual,
    /// IPv6 only (`EnableIPv4: false`): nodes and etcd on fd00:198:18::/64 only.
    V6Only,
}

impl Stack {
    /// Whether the cluster has IPv4.
    pub fn ipv4(self) -> bool {
        self != Stack::V6Only
    }

    /// Whether the cluster has IPv6.
    pub fn ipv6(self) -> bool {
        self != Stack::V4
    }
}

/// Which backend the cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Kernel vxlan (`flannel.1`).
    Vxlan,
    /// Plain routes via peer node IPs.
    HostGw,
    /// Userspace UDP encapsulation over TUN.
    Udp,
    /// WireGuard (`flannel-wg`; flanneld's userspace device where the kernel lacks the
    /// module). Each node gets its own key file (`<node dir>/wgkey`) and UAPI socket
    /// directory (`<node dir>/wireguard`).
    Wireguard,
}

impl Backend {
    /// flannel's `Backend.Type` string.
    pub fn type_name(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Udp => "udp",
            Backend::Wireguard => "wireguard",
        }
    }

    /// Parses `vxlan`, `host-gw` or `udp`.
    pub fn parse(s: &str) -> Option<Backend> {
        Some(match s {
            "vxlan" => Backend::Vxlan,
            "host-gw" | "hostgw" => Backend::HostGw,
            "udp" => Backend::Udp,
            "wireguard" => Backend::Wireguard,
            _ => return None,
        })
    }
}

/// Paths of the two binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The node daemon.
    pub flanneld: PathBuf,
    /// The CNI plugin.
    pub cni: PathBuf,
}

impl Binaries {
    /// Finds `flanneld` and `flannel` in the workspace target dir (`CARGO_TARGET_DIR`
    /// honoured), preferring `profile` ("debug" or "release").
    pub fn from_target(profile: &str) -> Binaries {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        Binaries {
            flanneld: target.join(profile).join("flanneld"),
            cni: target.join(profile).join("flannel"),
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of nodes (1..=200).
    pub nodes: usize,
    /// Backend for the network config.
    pub backend: Backend,
    /// Pass `--ip-masq` to flanneld.
    pub ip_masq: bool,
    /// Extra flanneld flags for every node.
    pub flanneld_args: Vec<String>,
    /// Extra keys merged into the `Backend` object of the network config.
    pub backend_extra: serde_json::Value,
    /// Extra top-level keys of the network config (`SubnetMin`, `SubnetLen`, ...).
    pub config_extra: serde_json::Value,
    /// Binaries.
    pub bins: Binaries,
    /// Start flanneld on every node right away (and wait for subnet.env).
    pub start_daemons: bool,
    /// 0: one plain-http etcd on 198.18.0.254. N: an N-member etcd cluster with TLS and
    /// client certificates ([`crate::etcd_tls::TlsEtcd`]), which flanneld uses over mTLS.
    pub etcd_tls_members: usize,
    /// Address families.
    pub stack: Stack,
    /// Extra keys merged into the CNI config's `delegate` object (e.g. `{"ipMasq": false}`).
    pub cni_delegate_extra: serde_json::Value,
}

impl ClusterSpec {
    /// `nodes` nodes on `backend`, debug binaries, daemons started.
    pub fn new(nodes: usize, backend: Backend) -> ClusterSpec {
        ClusterSpec {
            nodes,
            backend,
            ip_masq: false,
            flanneld_args: Vec::new(),
            backend_extra: serde_json::json!({}),
            config_extra: serde_json::json!({}),
            bins: Binaries::from_target("debug"),
            start_daemons: true,
            etcd_tls_members: 0,
            stack: Stack::V4,
            cni_delegate_extra: serde_json::json!({}),
        }
    }

    /// The same spec with address families `stack`.
    pub fn with_stack(mut self, stack: Stack) -> ClusterSpec {
        self.stack = stack;
        self
    }
}

/// A pod attached through the CNI plugin.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its namespace name.
    pub ns: String,
    /// Container id used with the plugin.
    pub id: String,
    /// Node index.
    pub node: usize,
    /// Its IPv4 address (`0.0.0.0` in an IPv6-only cluster: use [`Pod::ips`]).
    pub ip: Ipv4Addr,
    /// Every address of the pod, IPv4 first (the ADD result's `ips`).
    pub ips: Vec<IpAddr>,
    /// The ADD result.
    pub result: serde_json::Value,
}

/// One node.
pub struct Node {
    /// Namespace name.
    pub ns: String,
    /// Underlay address (`0.0.0.0` in an IPv6-only cluster).
    pub ip: Ipv4Addr,
    /// Underlay IPv6 address (dual-stack and IPv6-only clusters).
    pub ip6: Option<Ipv6Addr>,
    /// Working directory (subnet.env, IPAM store, logs).
    pub dir: PathBuf,
    daemon: Option<Child>,
    restarts: u32,
}

impl Node {
    /// Path of this node's subnet.env.
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    /// The wireguard backend's private key file on this node.
    pub fn wireguard_key_file(&self) -> PathBuf {
        self.dir.join("wgkey")
    }

    /// Where this node's flanneld serves the UAPI socket (`flannel-wg.sock`) for `wg`.
    pub fn wireguard_socket_dir(&self) -> PathBuf {
        self.dir.join("wireguard")
    }

    /// flanneld's log file of the current run.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(format!("flanneld.{}.log", self.restarts))
    }

    /// PID of the running flanneld.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// `KEY` from subnet.env, if present.
    pub fn subnet_env(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.subnet_file()).ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{key}="))
                .map(|v| v.trim().to_string())
        })
    }
}

/// The whole test bed. Dropping it stops every process and deletes every namespace.
pub struct Cluster {
    /// Namespace prefix, unique per cluster.
    pub prefix: String,
    /// The spec it was built from.
    pub spec: ClusterSpec,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    workdir: tempfile::TempDir,
    etcd: Option<Child>,
    tls_etcd: Option<crate::etcd_tls::TlsEtcd>,
    namespaces: Vec<String>,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = run(Command::new("ip").args(args));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether a multi-node test can run: root and the tools the harness uses (`ip`, `etcd`,
/// `etcdctl`, `iperf3`, `ping`, `nft`) plus `extra`. Without them the test prints
/// `SKIPPED …: <test>: <why>` and should return — except in CI, where this panics: a
/// missing prerequisite in CI is a failure, never a silent skip ([`flannel_testkit`]'s rule).
pub fn prerequisites(test: &str, extra: &[&str]) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let missing: Vec<&str> = ["ip", "etcd", "etcdctl", "iperf3", "ping", "nft"]
        .iter()
        .chain(extra)
        .copied()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
        .collect();
    if !root {
        return flannel_testkit::require_root(test);
    }
    if missing.is_empty() {
        return true;
    }
    flannel_testkit::skip_or_panic(&format!("{test}: missing tools {missing:?}"));
    false
}

/// Polls `cond` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// Builds the underlay, starts etcd, writes the network config, creates the nodes and
    /// (if `spec.start_daemons`) starts flanneld everywhere and waits for every subnet.env.
    pub fn start(spec: ClusterSpec) -> Result<Cluster, String> {
        for b in [&spec.bins.flanneld, &spec.bins.cni] {
            if !b.exists() {
                return Err(format!(
                    "binary {} not built (cargo build --workspace)",
                    b.display()
                ));
            }
        }
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("fc{}{}", std::process::id() % 100_000, n);
        let workdir = tempfile::Builder::new()
            .prefix("flannel-cluster.")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        crate::cleanup::track_dir(workdir.path());
        let mut c = Cluster {
            prefix: prefix.clone(),
            spec: spec.clone(),
            nodes: Vec::new(),
            pods: Vec::new(),
            workdir,
            etcd: None,
            tls_etcd: None,
            namespaces: Vec::new(),
        };
        let ul = c.ul();
        c.add_ns(&ul)?;
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{ETCD_IP}/16"),
            "dev",
            "br0",
        ])?;
        if spec.stack.ipv6() {
            ip(&[
                "-n",
                &ul,
                "-6",
                "addr",
                "add",
                &format!("{ETCD_IP6}/64"),
                "dev",
                "br0",
                "nodad",
            ])?;
        }
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        if spec.etcd_tls_members > 0 {
            let etcd = crate::etcd_tls::TlsEtcd::start(
                &ul,
                "br0",
                c.workdir.path(),
                spec.etcd_tls_members,
            )?;
            c.tls_etcd = Some(etcd);
        } else {
            c.start_etcd()?;
        }
        let mut backend = serde_json::json!({"Type": spec.backend.type_name()});
        if let (Some(b), Some(extra)) = (backend.as_object_mut(), spec.backend_extra.as_object()) {
            for (k, v) in extra {
                b.insert(k.clone(), v.clone());
            }
        }
        let mut config = match spec.stack {
            Stack::V4 => serde_json::json!({"Network": NETWORK, "Backend": backend}),
            Stack::Dual => serde_json::json!({"Network": NETWORK, "EnableIPv6": true,
                "IPv6Network": IPV6_NETWORK, "Backend": backend}),
            Stack::V6Only => serde_json::json!({"EnableIPv4": false, "EnableIPv6": true,
                "IPv6Network": IPV6_NETWORK, "Backend": backend}),
        };
        if let (Some(c), Some(extra)) = (config.as_object_mut(), spec.config_extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        c.etcdctl(&["put", "/coreos.com/network/config", &config.to_string()])?;

        for i in 0..spec.nodes {
            let ns = format!("{prefix}-n{}", i + 1);
            c.add_ns(&ns)?;
            let port = format!("n{}", i + 1);
            ip(&[
                "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
            let addr = if spec.stack.ipv4() {
                let a = Ipv4Addr::new(198, 18, 0, (i + 1) as u8);
                ip(&["-n", &ns, "addr", "add", &format!("{a}/16"), "dev", "eth0"])?;
                a
            } else {
                Ipv4Addr::UNSPECIFIED
            };
            let addr6 = if spec.stack.ipv6() {
                let a = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, (i + 1) as u16);
                ip(&[
                    "-n",
                    &ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
                Some(a)
            } else {
                None
            };
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            let dir = c.workdir.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir: {e}"))?;
            c.nodes.push(Node {
                ns,
                ip: addr,
                ip6: addr6,
                dir,
                daemon: None,
                restarts: 0,
            });
        }
        if spec.start_daemons {
            for i in 0..c.nodes.len() {
                c.start_flanneld(i)?;
            }
            for i in 0..c.nodes.len() {
                c.wait_subnet_env(i, Duration::from_secs(30))?;
            }
        }
        Ok(c)
    }

    /// The underlay namespace's name.
    pub fn ul(&self) -> String {
        format!("{}-ul", self.prefix)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        crate::cleanup::track_namespace(name);
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Starts flanneld on node `i` (args: the spec's plus `extra`).
    pub fn start_flanneld_with(&mut self, i: usize, extra: &[&str]) -> Result<(), String> {
        let etcd_args = match &self.tls_etcd {
            Some(t) => t.flanneld_args(),
            None => vec!["--etcd-endpoints".to_string(), self.etcd_endpoint()],
        };
        self.start_flanneld_etcd(i, &etcd_args, extra)
    }

    /// Starts flanneld on node `i` with `etcd_args` instead of the cluster's etcd flags
    /// (e.g. another client certificate), then the spec's flags and `extra`.
    pub fn start_flanneld_etcd(
        &mut self,
        i: usize,
        etcd_args: &[String],
        extra: &[&str],
    ) -> Result<(), String> {
        self.start_flanneld_full(i, etcd_args, extra, &[])
    }

    /// Starts flanneld on node `i` with the cluster's etcd flags, `extra` flags and `env`.
    pub fn start_flanneld_env(
        &mut self,
        i: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(), String> {
        let etcd_args = match &self.tls_etcd {
            Some(t) => t.flanneld_args(),
            None => vec!["--etcd-endpoints".to_string(), self.etcd_endpoint()],
        };
        self.start_flanneld_full(i, &etcd_args, extra, env)
    }

    fn start_flanneld_full(
        &mut self,
        i: usize,
        etcd_args: &[String],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(), String> {
        let node = &mut self.nodes[i];
        node.restarts += 1;
        let log = std::fs::File::create(node.log_file()).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.ns])
            .arg(&self.spec.bins.flanneld)
            .args(etcd_args)
            .args(["--iface", "eth0"])
            .arg("--subnet-file")
            .arg(node.subnet_file());
        if self.spec.ip_masq {
            cmd.arg("--ip-masq");
        }
        if self.spec.backend == Backend::Wireguard {
            cmd.arg("--wireguard-socket-dir")
                .arg(node.wireguard_socket_dir())
                .env("WIREGUARD_KEY_FILE", node.wireguard_key_file());
        }
        cmd.args(&self.spec.flanneld_args).args(extra);
        cmd.envs(env.iter().copied());
        cmd.env(
            "RUST_LOG",
            std::env::var("FLANNELD_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
        let child = cmd.spawn().map_err(|e| format!("start flanneld: {e}"))?;
        crate::cleanup::track_pid(child.id());
        node.daemon = Some(child);
        Ok(())
    }

    /// Starts flanneld on node `i`.
    pub fn start_flanneld(&mut self, i: usize) -> Result<(), String> {
        self.start_flanneld_with(i, &[])
    }

    /// Stops flanneld on node `i` with SIGTERM (by PID), waiting for it to exit.
    pub fn stop_flanneld(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].daemon.take() {
            kill_child(&mut c);
        }
    }

    /// Whether flanneld on node `i` is still running.
    pub fn flanneld_running(&mut self, i: usize) -> bool {
        match self.nodes[i].daemon.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// flanneld's log for node `i` (current run).
    pub fn flanneld_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log_file()).unwrap_or_default()
    }

    /// Sends `signal` to node `i`'s flanneld (e.g. SIGSTOP / SIGCONT to freeze it).
    pub fn signal_flanneld(&self, i: usize, signal: nix::sys::signal::Signal) {
        if let Some(c) = self.nodes[i].daemon.as_ref() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
        }
    }

    /// Waits until node `i`'s current flanneld run logged that it is ready (subnet.env written
    /// with the backend and rules in place).
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let ok = wait_until(timeout, || {
            self.flanneld_log(i).contains("ready: subnet file written")
        });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "node {} not ready within {timeout:?} (flanneld running: {}); log:\n{}",
                i + 1,
                self.flanneld_running(i),
                self.flanneld_log(i)
            ))
        }
    }

    /// The CNI plugin binary the pods are attached with.
    pub fn cni_binary(&self) -> &Path {
        &self.spec.bins.cni
    }

    /// The flanneld binary the nodes run.
    pub fn flanneld_binary(&self) -> &Path {
        &self.spec.bins.flanneld
    }

    /// Runs a command inside the underlay namespace.
    pub fn underlay_exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ul()])
            .args(args))
    }

    /// Waits until node `i` has written subnet.env.
    pub fn wait_subnet_env(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let file = self.nodes[i].subnet_file();
        let ok = wait_until(timeout, || file.exists());
        if ok {
            Ok(())
        } else {
            let running = self.flanneld_running(i);
            Err(format!(
                "node {} wrote no subnet.env within {timeout:?} (flanneld running: {running}); log:\n{}",
                i + 1,
                self.flanneld_log(i)
            ))
        }
    }

    /// Node `i`'s IPv6 lease subnet from subnet.env (network form, e.g. fd00:10:244:5::/64).
    pub fn node_subnet6(&self, i: usize) -> Option<String> {
        let s = self.nodes[i].subnet_env("FLANNEL_IPV6_SUBNET")?;
        let (addr, len) = s.split_once('/')?;
        let a: Ipv6Addr = addr.parse().ok()?;
        let len: u32 = len.parse().ok()?;
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        Some(format!("{}/{len}", Ipv6Addr::from(u128::from(a) & mask)))
    }

    /// Node `i`'s lease subnet from subnet.env (network form, e.g. 10.244.5.0/24).
    pub fn node_subnet(&self, i: usize) -> Option<String> {
        let s = self.nodes[i].subnet_env("FLANNEL_SUBNET")?;
        let (addr, len) = s.split_once('/')?;
        let a: Ipv4Addr = addr.parse().ok()?;
        let len: u32 = len.parse().ok()?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Some(format!("{}/{len}", Ipv4Addr::from(u32::from(a) & mask)))
    }

    /// Runs a command inside node `i`'s namespace.
    pub fn node_exec(&self, i: usize, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].ns])
            .args(args))
    }

    /// The working directory (logs, stores).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }
}

fn kill_child(c: &mut Child) {
    crate::cleanup::untrack_pid(c.id());
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    loop {
        match c.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_flanneld(i);
        }
        self.stop_etcd();
        // pods first, then nodes, then the underlay
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            crate::cleanup::untrack_namespace(ns);
        }
        crate::cleanup::untrack_dir(self.workdir.path());
        if std::env::var_os("FLANNEL_KEEP_LOGS").is_some() {
            let kept = PathBuf::from(format!("{}.kept", self.workdir.path().display()));
            let _ = std::fs::rename(self.workdir.path(), &kept);
            eprintln!("logs kept in {}", kept.display());
        }
    }
}
