//! # etcd — a throw-away etcd server for tests
//!
//! [`EtcdServer::start`] runs Debian's `/usr/bin/etcd` (package `etcd-server`, 3.4) as a child
//! process listening on `127.0.0.1` only, on free client and peer ports (found by binding
//! port 0), with a temporary data directory. It returns once etcd answers a client `get`
//! (20 s at most). [`EtcdServer::stop`] / [`EtcdServer::restart`] kill and re-run the same
//! member on the same ports and data directory, to test reconnection; `Drop` kills the child
//! by its PID and reaps it. Nothing else on the machine is touched. etcd's output goes to
//! `etcd.log` in the data directory's parent, whose tail is included in start errors.
//!
//! [`EtcdServer::start_tls`] runs the same member with `https://` client URLs, a server
//! certificate and `--client-cert-auth` against a CA (see [`crate::pki`]), as production etcd
//! runs; the harness itself connects with a client certificate of that CA.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::pki::CertPair;

/// Where the etcd binary is looked for, in order (`$ETCD_BIN` first).
pub const ETCD_PATHS: &[&str] = &["/usr/bin/etcd", "/usr/local/bin/etcd"];

/// How long [`EtcdServer::start`] waits for etcd to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    /// No etcd binary was found.
    #[error("etcd binary not found (looked at $ETCD_BIN and {0:?}); apt-get install etcd-server")]
    NotFound(Vec<String>),
    /// Spawning, a temp dir or a port probe failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// etcd did not become healthy in time or exited.
    #[error("etcd did not become healthy: {reason}\n--- etcd.log (tail) ---\n{log}")]
    Unhealthy {
        /// Why we gave up.
        reason: String,
        /// The tail of etcd's output.
        log: String,
    },
}

/// Finds the etcd binary: `$ETCD_BIN`, then [`ETCD_PATHS`].
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN").map(PathBuf::from)
        && p.is_file()
    {
        return Some(p);
    }
    ETCD_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A loopback TCP port nothing listens on right now (bound and released; someone may take it
/// before the caller does).
pub fn free_port() -> Result<u16, EtcdServerError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| EtcdServerError::Io {
        what: "binding 127.0.0.1:0 to find a free port".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| EtcdServerError::Io {
            what: "reading the probe socket's port".into(),
            source,
        })
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// One etcd member's command line, and its start: the one place the workspace spells etcd's
/// flags. [`EtcdServer`] runs its loopback member with it; the examples' cluster harness runs
/// its plain and TLS members inside the underlay namespace with it
/// ([`in_netns`](Self::in_netns)).
#[derive(Debug, Clone)]
pub struct EtcdCommand {
    binary: PathBuf,
    netns: Option<String>,
    args: Vec<OsString>,
}

impl EtcdCommand {
    /// Member `name` on `data_dir`; the binary is [`etcd_binary`], else `etcd` on `$PATH`.
    pub fn new(name: &str, data_dir: impl AsRef<Path>) -> Self {
        Self {
            binary: etcd_binary().unwrap_or_else(|| PathBuf::from("etcd")),
            netns: None,
            args: Vec::new(),
        }
        .flag("--name", name)
        .flag("--data-dir", data_dir.as_ref())
    }

    /// Runs this binary instead.
    pub fn binary(mut self, binary: impl AsRef<Path>) -> Self {
        self.binary = binary.as_ref().to_path_buf();
        self
    }

    /// Runs etcd inside the named network namespace (`ip netns exec <ns>`).
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// Adds one `--flag value` pair.
    pub fn flag(mut self, flag: &str, value: impl AsRef<OsStr>) -> Self {
        self.args.push(flag.into());
        self.args.push(value.as_ref().to_os_string());
        self
    }

    /// Adds one argument (a switch such as `--client-cert-auth`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// `--listen-client-urls` (comma-separated) and `--advertise-client-urls`.
    pub fn client_urls(self, listen: &str, advertise: &str) -> Self {
        self.flag("--listen-client-urls", listen)
            .flag("--advertise-client-urls", advertise)
    }

    /// `--listen-peer-urls` and `--initial-advertise-peer-urls`, both `url`.
    pub fn peer_url(self, url: &str) -> Self {
        self.flag("--listen-peer-urls", url)
            .flag("--initial-advertise-peer-urls", url)
    }

    /// `--initial-cluster` (`name=peer-url,...`).
    pub fn initial_cluster(self, cluster: &str) -> Self {
        self.flag("--initial-cluster", cluster)
    }

    /// A new cluster (`--initial-cluster-state new`) with this `--initial-cluster-token`.
    pub fn token(self, token: &str) -> Self {
        self.flag("--initial-cluster-state", "new")
            .flag("--initial-cluster-token", token)
    }

    /// Serves clients over TLS with `cert` and requires client certificates of `ca`.
    pub fn client_tls(self, cert: &CertPair, ca: &Path) -> Self {
        self.flag("--cert-file", &cert.cert)
            .flag("--key-file", &cert.key)
            .arg("--client-cert-auth")
            .flag("--trusted-ca-file", ca)
    }

    /// Speaks TLS to peers with `cert` and requires peer certificates of `ca`.
    pub fn peer_tls(self, cert: &CertPair, ca: &Path) -> Self {
        self.arg("--peer-client-cert-auth")
            .flag("--peer-trusted-ca-file", ca)
            .flag("--peer-cert-file", &cert.cert)
            .flag("--peer-key-file", &cert.key)
    }

    /// The command (not started).
    pub fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.args(&self.args);
        cmd
    }

    /// Starts etcd with stdin closed and its output appended to `log`. The caller owns the
    /// child: it must kill it by its PID and reap it.
    pub fn spawn(&self, log: &Path) -> std::io::Result<Child> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
    }
}

/// The TLS side of a test member: its server certificate, the CA it trusts for clients,
/// and a client certificate of that CA for the harness's own probe.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The member's certificate (must carry `IP:127.0.0.1`).
    pub server: CertPair,
    /// The CA that signs the server and the accepted client certificates.
    pub ca: PathBuf,
    /// A client certificate the harness connects with.
    pub client: CertPair,
}

/// A running single-member etcd on loopback (see the module docs).
#[derive(Debug)]
pub struct EtcdServer {
    binary: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    tls: Option<ServerTls>,
}

impl EtcdServer {
    /// Starts etcd and waits until it is healthy. Retries with other ports if etcd fails to
    /// come up (a port probed free may be taken by someone else meanwhile).
    pub async fn start() -> Result<Self, EtcdServerError> {
        Self::start_with(None).await
    }

    /// Like [`start`](Self::start), but serving `https://` with client-certificate auth.
    pub async fn start_tls(tls: ServerTls) -> Result<Self, EtcdServerError> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<ServerTls>) -> Result<Self, EtcdServerError> {
        let binary = etcd_binary().ok_or_else(|| {
            let mut looked: Vec<String> = ETCD_PATHS.iter().map(|s| s.to_string()).collect();
            looked.insert(0, "$ETCD_BIN".into());
            EtcdServerError::NotFound(looked)
        })?;
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("flannel-rs-etcd-")
                .tempdir()
                .map_err(|source| EtcdServerError::Io {
                    what: "creating the etcd temp dir".into(),
                    source,
                })?;
            let mut server = Self {
                binary: binary.clone(),
                dir,
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
                tls: tls.clone(),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(EtcdServerError::Unhealthy {
            reason: "no attempt made".into(),
            log: String::new(),
        }))
    }

    /// Like [`start`](Self::start), but a missing binary is reported with
    /// [`skip_or_panic`](crate::skip_or_panic) and gives `None` (other errors panic).
    pub async fn start_or_skip() -> Option<Self> {
        match Self::start().await {
            Ok(s) => Some(s),
            Err(e @ EtcdServerError::NotFound(_)) => {
                crate::skip_or_panic(&e.to_string());
                None
            }
            Err(e) => panic!("starting etcd: {e}"),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), EtcdServerError> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = EtcdCommand::new("test", self.data_dir())
            .binary(&self.binary)
            .client_urls(&client, &client)
            .peer_url(&peer)
            .initial_cluster(&format!("test={peer}"))
            .token(&format!("flannel-rs-test-{}", self.client_port));
        if let Some(tls) = &self.tls {
            cmd = cmd.client_tls(&tls.server, &tls.ca);
        }
        let child = cmd
            .spawn(&self.log_path())
            .map_err(|source| EtcdServerError::Io {
                what: format!("spawning {}", self.binary.display()),
                source,
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = String::from("no attempt");
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(EtcdServerError::Unhealthy {
                    reason: format!("etcd exited early with {status}"),
                    log: log_tail(&self.log_path()),
                });
            }
            match self.probe().await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        Err(EtcdServerError::Unhealthy {
            reason: format!("no answer within {START_TIMEOUT:?}: {last_err}"),
            log: log_tail(&self.log_path()),
        })
    }

    /// Client options that pass this member's TLS (none for plain http).
    pub fn client_options(&self) -> etcd_client::ConnectOptions {
        let mut opts = etcd_client::ConnectOptions::new();
        if let Some(tls) = &self.tls {
            let read = |p: &Path| std::fs::read(p).unwrap_or_default();
            opts = opts.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
                    .identity(etcd_client::Identity::from_pem(
                        read(&tls.client.cert),
                        read(&tls.client.key),
                    )),
            );
        }
        opts
    }

    async fn probe(&self) -> Result<(), String> {
        let opts = self
            .client_options()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        let mut c = etcd_client::Client::connect([self.endpoint()], Some(opts))
            .await
            .map_err(|e| e.to_string())?;
        c.get("health-probe", None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The client URL, e.g. `http://127.0.0.1:40123` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The PID of the running etcd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A connected client (tests).
    pub async fn client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        etcd_client::Client::connect([self.endpoint()], Some(self.client_options())).await
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Our own child, by PID: SIGKILL, then reap.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills etcd (data dir and ports are kept for [`restart`](Self::restart)).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts etcd again on the same ports and data dir, and waits until it is healthy.
    pub async fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.kill();
        self.spawn_and_wait().await
    }

    /// Starts etcd again like [`restart`](Self::restart), with other TLS settings (a new
    /// server certificate, another client CA): a certificate rotation.
    pub async fn restart_with_tls(&mut self, tls: ServerTls) -> Result<(), EtcdServerError> {
        self.tls = Some(tls);
        self.restart().await
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_in_a_namespace_runs_under_ip_netns_exec() {
        let cmd = EtcdCommand::new("m1", "/tmp/d")
            .binary("/usr/bin/etcd")
            .in_netns("fc1-ul")
            .peer_url("https://198.18.0.201:2380")
            .arg("--client-cert-auth")
            .command();
        assert_eq!(cmd.get_program(), "ip");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "netns",
                "exec",
                "fc1-ul",
                "/usr/bin/etcd",
                "--name",
                "m1",
                "--data-dir",
                "/tmp/d",
                "--listen-peer-urls",
                "https://198.18.0.201:2380",
                "--initial-advertise-peer-urls",
                "https://198.18.0.201:2380",
                "--client-cert-auth",
            ]
        );
    }
}
