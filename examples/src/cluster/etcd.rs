//! The cluster's etcd: starting and stopping it (plain, or the TLS cluster of
//! [`crate::etcd_tls`]), and reading and writing keys with `etcdctl` from the underlay.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use flannel_testkit::etcd::EtcdCommand;

use super::{Cluster, ETCD_IP, ETCD_IP6, Stack, kill_child, run, wait_until};

impl Cluster {
    /// The client URL(s) of etcd.
    pub fn etcd_endpoint(&self) -> String {
        match &self.tls_etcd {
            Some(t) => t.endpoints(),
            None if self.spec.stack == Stack::V6Only => format!("http://[{ETCD_IP6}]:2379"),
            None => format!("http://{ETCD_IP}:2379"),
        }
    }

    /// The TLS etcd cluster, when the spec asked for one.
    pub fn tls_etcd(&mut self) -> Option<&mut crate::etcd_tls::TlsEtcd> {
        self.tls_etcd.as_mut()
    }

    /// `etcdctl` against the cluster's etcd from the underlay namespace (TLS flags included).
    fn etcdctl_command(&self) -> Command {
        if let Some(t) = &self.tls_etcd {
            return t.etcdctl_command(None);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ul(), "etcdctl", "--endpoints"])
            .arg(format!("http://{ETCD_IP}:2379"))
            .env("ETCDCTL_API", "3");
        cmd
    }

    /// Starts etcd inside the underlay namespace (data kept across stop/start).
    pub fn start_etcd(&mut self) -> Result<(), String> {
        let listen = if self.spec.stack.ipv6() {
            format!("http://{ETCD_IP}:2379,http://[{ETCD_IP6}]:2379,http://127.0.0.1:2379")
        } else {
            format!("http://{ETCD_IP}:2379,http://127.0.0.1:2379")
        };
        let child = EtcdCommand::new("default", self.workdir.path().join("etcd"))
            .in_netns(&self.ul())
            .client_urls(&listen, &self.etcd_endpoint())
            .peer_url("http://127.0.0.1:2380")
            .initial_cluster("default=http://127.0.0.1:2380")
            .flag("--listen-metrics-urls", "http://127.0.0.1:2381")
            .spawn(&self.workdir.path().join("etcd.log"))
            .map_err(|e| format!("start etcd: {e}"))?;
        crate::cleanup::track_pid(child.id());
        self.etcd = Some(child);
        if !wait_until(Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health"]).is_ok()
        }) {
            return Err(format!(
                "etcd did not become healthy; log: {}",
                self.read_file("etcd.log")
            ));
        }
        Ok(())
    }

    /// Stops etcd (by its PID; every member of a TLS cluster).
    pub fn stop_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            kill_child(&mut c);
        }
        self.tls_etcd = None;
    }

    fn read_file(&self, rel: &str) -> String {
        std::fs::read_to_string(self.workdir.path().join(rel)).unwrap_or_default()
    }

    /// Runs `etcdctl` (v3 API) against the cluster's etcd, from the underlay namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let out = run(self.etcdctl_command().args(args));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The etcd key of a lease subnet like `10.244.5.0/24`.
    pub fn lease_key(subnet: &str) -> String {
        format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"))
    }

    /// The etcd key of node `i`'s lease, from its subnet.env: `10.244.3.0-24`, dual stack
    /// `10.244.3.0-24&fd00:10:244:7::-64`, IPv6-only `0.0.0.0-0&fd00:10:244:7::-64`.
    pub fn node_lease_key(&self, i: usize) -> Option<String> {
        let v4 = self.node_subnet(i);
        let v6 = self.node_subnet6(i);
        let mut key = v4.unwrap_or_else(|| "0.0.0.0/0".into()).replace('/', "-");
        if let Some(v6) = v6 {
            key = format!("{key}&{}", v6.replace('/', "-"));
        }
        Some(format!("/coreos.com/network/subnets/{key}"))
    }

    /// Writes many keys quickly: `etcdctl txn` batches of at most 100 puts (etcd's default
    /// limit is 128 operations per transaction).
    pub fn etcd_put_many(&self, pairs: &[(String, String)]) -> Result<(), String> {
        let ops: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                // etcdctl's txn reader unquotes double-quoted words like Go's strconv.Unquote.
                let quoted = v.replace('\\', "\\\\").replace('"', "\\\"");
                format!("put {k} \"{quoted}\"")
            })
            .collect();
        self.etcd_txn_many(&ops)
    }

    /// Deletes many keys quickly, 100 per `etcdctl txn`.
    pub fn etcd_del_many(&self, keys: &[String]) -> Result<(), String> {
        let ops: Vec<String> = keys.iter().map(|k| format!("del {k}")).collect();
        self.etcd_txn_many(&ops)
    }

    /// `etcdctl txn` with `ops` (`put K "V"`, `del K` lines), 100 per transaction.
    fn etcd_txn_many(&self, ops: &[String]) -> Result<(), String> {
        for chunk in ops.chunks(100) {
            let mut script = String::from("\n");
            for op in chunk {
                script.push_str(op);
                script.push('\n');
            }
            script.push_str("\n\n");
            let mut child = self
                .etcdctl_command()
                .arg("txn")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("etcdctl txn: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(script.as_bytes())
                    .map_err(|e| format!("etcdctl txn stdin: {e}"))?;
            }
            let out = child
                .wait_with_output()
                .map_err(|e| format!("etcdctl txn: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "etcdctl txn: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }

    /// The raw value of a key, if present.
    pub fn etcd_get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]).ok()?;
        let v = out.trim_end_matches('\n').to_string();
        (!v.is_empty()).then_some(v)
    }

    /// The etcd lease ID attached to a key (0 = none), `None` if the key is absent.
    pub fn etcd_key_lease(&self, key: &str) -> Option<i64> {
        let out = self.etcdctl(&["get", key, "-w", "json"]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let kv = v["kvs"].as_array()?.first()?;
        Some(kv["lease"].as_i64().unwrap_or(0))
    }

    /// The store's current revision.
    pub fn etcd_revision(&self) -> Option<i64> {
        let out = self
            .etcdctl(&["get", "/", "-w", "json", "--limit", "1"])
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["header"]["revision"].as_i64()
    }
}
