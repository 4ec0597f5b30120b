//! Pods on the cluster's nodes: attached and detached through the CNI plugin, and the
//! connectivity and routing checks the tests make between them.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{Cluster, Pod, ip, kill_child, run, wait_until};

impl Cluster {
    /// The stock flannel CNI config for node `i`.
    pub fn cni_conf(&self, i: usize) -> serde_json::Value {
        let d = &self.nodes[i].dir;
        let mut conf = serde_json::json!({
            "cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
            "subnetFile": self.nodes[i].subnet_file(), "dataDir": d.join("flannel"),
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
            "ipam": {"dataDir": d.join("ipam")},
        });
        if let (Some(delegate), Some(extra)) = (
            conf["delegate"].as_object_mut(),
            self.spec.cni_delegate_extra.as_object(),
        ) {
            for (k, v) in extra {
                delegate.insert(k.clone(), v.clone());
            }
        }
        conf
    }

    /// Runs the CNI plugin inside node `i`'s namespace.
    pub fn cni(
        &self,
        i: usize,
        command: &str,
        id: &str,
        netns: &str,
        conf: &serde_json::Value,
    ) -> Output {
        self.cni_exec(i, &self.spec.bins.cni, command, id, netns, conf)
    }

    /// Runs CNI plugin `binary` (ours or a reference plugin) inside node `i`'s namespace.
    pub fn cni_exec(
        &self,
        i: usize,
        binary: &Path,
        command: &str,
        id: &str,
        netns: &str,
        conf: &serde_json::Value,
    ) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].ns])
            .arg(binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cni");
        let _ = child
            .stdin
            .take()
            .map(|mut s| s.write_all(conf.to_string().as_bytes()));
        child.wait_with_output().expect("cni output")
    }

    /// Creates a pod namespace on node `i` and attaches it with the CNI plugin.
    pub fn add_pod(&mut self, i: usize, name: &str) -> Result<Pod, String> {
        let (conf, bin) = (self.cni_conf(i), self.spec.bins.cni.clone());
        self.add_pod_with(i, name, &conf, &bin)
    }

    /// Like [`add_pod`](Self::add_pod) with another config or plugin binary (e.g. the
    /// reference `bridge` plugin, as flannel delegates to it).
    pub fn add_pod_with(
        &mut self,
        i: usize,
        name: &str,
        conf: &serde_json::Value,
        binary: &Path,
    ) -> Result<Pod, String> {
        let ns = format!("{}-n{}-{name}", self.prefix, i + 1);
        self.add_ns(&ns)?;
        let id = format!("{}-{name}", self.prefix);
        let out = self.cni_exec(i, binary, "ADD", &id, &ns, conf);
        if !out.status.success() {
            return Err(format!(
                "CNI ADD {name} on node {}: {}",
                i + 1,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let result: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("ADD result: {e}"))?;
        let ips: Vec<IpAddr> = result["ips"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        let ip = match ips.first() {
            Some(IpAddr::V4(a)) => *a,
            Some(IpAddr::V6(_)) if !self.spec.stack.ipv4() => Ipv4Addr::UNSPECIFIED,
            _ => {
                return Err(format!(
                    "ADD result without the expected addresses: {result}"
                ));
            }
        };
        if self.spec.stack.ipv6() && !ips.iter().any(IpAddr::is_ipv6) {
            return Err(format!("ADD result without an IPv6 address: {result}"));
        }
        let pod = Pod {
            ns,
            id,
            node: i,
            ip,
            ips,
            result,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// DELs a pod through the CNI plugin and removes its namespace.
    pub fn del_pod(&mut self, pod: &Pod) -> Result<(), String> {
        let out = self.cni(pod.node, "DEL", &pod.id, &pod.ns, &self.cni_conf(pod.node));
        if !out.status.success() {
            return Err(format!(
                "CNI DEL {}: {}",
                pod.id,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let _ = ip(&["netns", "del", &pod.ns]);
        crate::cleanup::untrack_namespace(&pod.ns);
        self.namespaces.retain(|n| n != &pod.ns);
        self.pods.retain(|p| p.ns != pod.ns);
        Ok(())
    }

    /// One ping from `pod` to `dst` (1 s timeout); either family.
    pub fn ping(&self, pod: &Pod, dst: impl Into<IpAddr>) -> bool {
        let dst: IpAddr = dst.into();
        run(Command::new("ip").args([
            "netns",
            "exec",
            &pod.ns,
            "ping",
            "-c1",
            "-W1",
            "-q",
            &dst.to_string(),
        ]))
        .status
        .success()
    }

    /// Pings until success or `timeout`.
    pub fn ping_within(&self, pod: &Pod, dst: impl Into<IpAddr>, timeout: Duration) -> bool {
        let dst: IpAddr = dst.into();
        wait_until(timeout, || self.ping(pod, dst))
    }

    /// Opens a TCP connection from `from` to `to` and moves a little data (iperf3 one-off).
    pub fn tcp(&self, from: &Pod, to: &Pod) -> Result<(), String> {
        self.tcp_to(from, to, IpAddr::V4(to.ip))
    }

    /// Opens a TCP connection from `from` to `to`'s address `dst` (either family) and moves
    /// a little data.
    pub fn tcp_to(&self, from: &Pod, to: &Pod, dst: IpAddr) -> Result<(), String> {
        let mut server = Command::new("ip")
            .args(["netns", "exec", &to.ns, "iperf3", "-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("iperf3 server: {e}"))?;
        let mut ok = false;
        let mut last = String::new();
        for _ in 0..20 {
            let out = run(Command::new("ip").args([
                "netns",
                "exec",
                &from.ns,
                "iperf3",
                "-c",
                &dst.to_string(),
                "-p",
                "5201",
                "-n",
                "256K",
                "--connect-timeout",
                "1000",
            ]));
            if out.status.success() {
                ok = true;
                break;
            }
            last = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            std::thread::sleep(Duration::from_millis(100));
        }
        kill_child(&mut server);
        if ok {
            Ok(())
        } else {
            Err(format!("TCP {} -> {dst}: {last}", from.ns))
        }
    }

    /// Runs `ip -j <args>` in node `i` and parses it.
    pub fn node_ip_json(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-n", self.nodes[i].ns.as_str(), "-j"];
        full.extend_from_slice(args);
        match ip(&full) {
            Ok(t) if !t.trim().is_empty() => {
                serde_json::from_str(&t).unwrap_or(serde_json::Value::Null)
            }
            _ => serde_json::Value::Array(vec![]),
        }
    }

    /// IPv6 routes in node `i`'s main table as (dst, gateway, dev).
    pub fn node_routes6(&self, i: usize) -> Vec<(String, String, String)> {
        self.routes_of(i, &["-6", "route", "show"])
    }

    /// Routes in node `i`'s main table as (dst, gateway, dev).
    pub fn node_routes(&self, i: usize) -> Vec<(String, String, String)> {
        self.routes_of(i, &["route", "show"])
    }

    fn routes_of(&self, i: usize, args: &[&str]) -> Vec<(String, String, String)> {
        self.node_ip_json(i, args)
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                (
                    r["dst"].as_str().unwrap_or("").to_string(),
                    r["gateway"].as_str().unwrap_or("").to_string(),
                    r["dev"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}
