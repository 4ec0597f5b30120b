//! # etcd_tls — a production-shaped etcd: three members, TLS everywhere, client certificates
//!
//! [`TlsEtcd`] runs N etcd members (Debian's `etcd-server`) inside the cluster's underlay
//! namespace, member `k` on `198.18.0.20<k>` (an extra address on the underlay bridge):
//! clients and peers speak `https://`, both sides require a certificate of the cluster CA
//! (`--client-cert-auth`, `--peer-client-cert-auth`), as a kubeadm etcd does. Certificates are
//! made at start with `openssl` ([`flannel_testkit::pki`]): one per member (its IP in the
//! subjectAltName, server and client usage), one client certificate for flanneld and the
//! harness's `etcdctl`.
//!
//! The tests need to break it the ways production breaks: [`TlsEtcd::kill_member`] (SIGKILL by
//! PID; data kept), [`TlsEtcd::start_member`], [`TlsEtcd::leader`], and
//! [`TlsEtcd::restore_from`], which does what an operator does after a disaster: stop every
//! member, `etcdctl snapshot restore` the same snapshot into a fresh data directory per
//! member (new cluster token, hence a new cluster ID), start them again.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use flannel_testkit::etcd::EtcdCommand;
use flannel_testkit::pki::{CertPair, Pki};

use crate::cluster::wait_until;

/// Client port of every member.
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member.
pub const PEER_PORT: u16 = 2380;

struct Member {
    name: String,
    ip: Ipv4Addr,
    cert: CertPair,
    child: Option<Child>,
}

/// A TLS etcd cluster in a namespace (see the module docs).
pub struct TlsEtcd {
    ns: String,
    dir: PathBuf,
    pki: Pki,
    ca: PathBuf,
    client: CertPair,
    members: Vec<Member>,
    token: String,
    generation: u32,
}

/// The underlay address of member `k` (0-based).
pub fn member_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 201 + k as u8)
}

/// Runs `cmd`; its stdout, or `what` with its stderr as the error.
fn checked(what: &str, cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    checked(&format!("ip {args:?}"), Command::new("ip").args(args)).map(|_| ())
}

impl TlsEtcd {
    /// Adds the member addresses to `bridge` in `ns`, makes the certificates and starts
    /// `members` members, waiting until all are healthy.
    pub fn start(ns: &str, bridge: &str, dir: &Path, members: usize) -> Result<Self, String> {
        let pki = Pki::new()?;
        let ca = pki.ca("etcd-ca")?;
        let client = pki.leaf("etcd-ca", "flanneld-client", &[], 2)?;
        let mut ms = Vec::new();
        for k in 0..members {
            let addr = member_ip(k);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                bridge,
            ])?;
            let name = format!("m{}", k + 1);
            // etcd checks a peer's certificate against the address the connection comes
            // from, and members dial their peers from the bridge's primary address.
            let cert = pki.leaf(
                "etcd-ca",
                &name,
                &[
                    &format!("IP:{addr}"),
                    &format!("IP:{}", crate::cluster::ETCD_IP),
                    "IP:127.0.0.1",
                ],
                2,
            )?;
            ms.push(Member {
                name,
                ip: addr,
                cert,
                child: None,
            });
        }
        let mut etcd = TlsEtcd {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            pki,
            ca,
            client,
            members: ms,
            token: format!("flannel-rs-{}", std::process::id()),
            generation: 1,
        };
        for k in 0..members {
            etcd.start_member(k)?;
        }
        etcd.wait_healthy(Duration::from_secs(30))?;
        Ok(etcd)
    }

    /// The certificate directory (tests make more certificates there).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The CA that signs members and accepted clients.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The client certificate flanneld uses.
    pub fn client(&self) -> &CertPair {
        &self.client
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `https://198.18.0.201:2379,...` (every member).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("https://{}:{CLIENT_PORT}", m.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The etcd flags for flanneld with `client` as its certificate.
    pub fn flanneld_args_with(&self, client: &CertPair) -> Vec<String> {
        vec![
            "--etcd-endpoints".into(),
            self.endpoints(),
            "--etcd-cafile".into(),
            self.ca.display().to_string(),
            "--etcd-certfile".into(),
            client.cert.display().to_string(),
            "--etcd-keyfile".into(),
            client.key.display().to_string(),
        ]
    }

    /// The etcd flags for flanneld.
    pub fn flanneld_args(&self) -> Vec<String> {
        self.flanneld_args_with(&self.client)
    }

    /// `etcdctl` in the namespace with TLS flags, against every live member (or `endpoint`).
    pub fn etcdctl_command(&self, endpoint: Option<String>) -> Command {
        let endpoints = endpoint.unwrap_or_else(|| {
            self.members
                .iter()
                .filter(|m| m.child.is_some())
                .map(|m| format!("https://{}:{CLIENT_PORT}", m.ip))
                .collect::<Vec<_>>()
                .join(",")
        });
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            "etcdctl",
            "--endpoints",
            &endpoints,
        ])
        .arg("--cacert")
        .arg(&self.ca)
        .arg("--cert")
        .arg(&self.client.cert)
        .arg("--key")
        .arg(&self.client.key)
        .args(["--dial-timeout", "2s", "--command-timeout", "5s"])
        .env("ETCDCTL_API", "3");
        cmd
    }

    /// Runs `etcdctl args` (see [`etcdctl_command`](Self::etcdctl_command)).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        checked(
            &format!("etcdctl {args:?}"),
            self.etcdctl_command(None).args(args),
        )
    }

    fn data_dir(&self, k: usize) -> PathBuf {
        self.dir.join(format!(
            "etcd-{}-g{}",
            self.members[k].name, self.generation
        ))
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=https://{}:{PEER_PORT}", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `k` on its data directory (a new one joins the initial cluster).
    pub fn start_member(&mut self, k: usize) -> Result<(), String> {
        if self.members[k].child.is_some() {
            return Ok(());
        }
        let m = &self.members[k];
        let client_url = format!("https://{}:{CLIENT_PORT}", m.ip);
        let peer_url = format!("https://{}:{PEER_PORT}", m.ip);
        let child = EtcdCommand::new(&m.name, self.data_dir(k))
            .in_netns(&self.ns)
            .client_urls(&client_url, &client_url)
            .peer_url(&peer_url)
            .initial_cluster(&self.initial_cluster())
            .token(&self.token)
            .client_tls(&m.cert, &self.ca)
            .peer_tls(&m.cert, &self.ca)
            .spawn(&self.dir.join(format!("etcd-{}.log", m.name)))
            .map_err(|e| format!("start etcd member: {e}"))?;
        crate::cleanup::track_pid(child.id());
        self.members[k].child = Some(child);
        Ok(())
    }

    /// SIGKILLs member `k` (by the PID we started), keeping its data.
    pub fn kill_member(&mut self, k: usize) {
        if let Some(mut c) = self.members[k].child.take() {
            crate::cleanup::untrack_pid(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every running member answers `endpoint health`.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let mut last = String::new();
        let ok = wait_until(timeout, || match self.etcdctl(&["endpoint", "health"]) {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "etcd members not healthy: {last}\n{}",
                self.log_tail()
            ))
        }
    }

    /// The last lines of every member's log.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(self.dir.join(format!("etcd-{}.log", m.name)))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(8)..].join("\n");
            out.push_str(&format!("--- etcd {} ---\n{tail}\n", m.name));
        }
        out
    }

    /// The index of the current leader, if the running members agree on one.
    pub fn leader(&self) -> Option<usize> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        for st in v.as_array()? {
            let status = &st["Status"];
            let me = status["header"]["member_id"].as_u64()?;
            if status["leader"].as_u64() == Some(me) {
                let ep = st["Endpoint"].as_str()?;
                return self
                    .members
                    .iter()
                    .position(|m| ep.contains(&format!("//{}:", m.ip)));
            }
        }
        None
    }

    /// `etcdctl snapshot save <path>` from one live member.
    pub fn snapshot_save(&self, path: &Path) -> Result<(), String> {
        let live = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .ok_or("no live etcd member")?;
        checked(
            "snapshot save",
            self.etcdctl_command(Some(format!("https://{}:{CLIENT_PORT}", live.ip)))
                .arg("snapshot")
                .arg("save")
                .arg(path),
        )
        .map(|_| ())
    }

    /// Disaster recovery (see the module docs): every member restored from `snapshot` into a
    /// new data directory, with a new cluster token, then started; waits until healthy.
    pub fn restore_from(&mut self, snapshot: &Path) -> Result<(), String> {
        for k in 0..self.members.len() {
            self.kill_member(k);
        }
        self.generation += 1;
        self.token = format!("{}-restored{}", self.token, self.generation);
        for k in 0..self.members.len() {
            let m = &self.members[k];
            checked(
                &format!("snapshot restore {}", m.name),
                Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .arg("snapshot")
                    .arg("restore")
                    .arg(snapshot)
                    .args([
                        "--name",
                        &m.name,
                        "--initial-cluster",
                        &self.initial_cluster(),
                    ])
                    .args(["--initial-cluster-token", &self.token])
                    .arg("--initial-advertise-peer-urls")
                    .arg(format!("https://{}:{PEER_PORT}", m.ip))
                    .arg("--data-dir")
                    .arg(self.data_dir(k)),
            )?;
        }
        for k in 0..self.members.len() {
            self.start_member(k)?;
        }
        self.wait_healthy(Duration::from_secs(30))
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        for k in 0..self.members.len() {
            self.kill_member(k);
        }
    }
}
