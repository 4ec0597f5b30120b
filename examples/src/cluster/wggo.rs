//! A node that is a plain WireGuard endpoint run by Debian's `wireguard-go` and configured
//! with `wg`, exactly as a flannel wireguard node is: a key pair, a lease with its subnet and
//! `{"PublicKey","Port"}`, the device `flannel-wg` with `<subnet>.0/32` and MTU 1500 − 80, the
//! route for the cluster network, the other nodes as peers, and a subnet.env for the CNI
//! plugin. The interop test puts one in a mesh of flanneld nodes; the wireguard benchmark
//! runs two of them as the reference.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{Cluster, NETWORK, wait_until};

/// `wireguard-go` serving `flannel-wg` in a node's namespace, in a private mount namespace
/// (its UAPI socket lives on a private /run, so it meets no other node's); stopped by PID on
/// drop.
pub struct WireguardGo {
    child: Child,
    /// Its public key.
    pub public_key: String,
}

/// A peer for [`WireguardGo::configure`]: public key, `ip:port`, allowed IPs.
pub type WgPeer = (String, String, String);

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl WireguardGo {
    /// Makes node `i` a wireguard-go node with `subnet` (`10.244.200.0/24`): key pair, lease
    /// in etcd, subnet.env, device with address and route. Peers come with
    /// [`WireguardGo::configure`].
    pub fn start_node(c: &Cluster, i: usize, subnet: &str) -> Result<WireguardGo, String> {
        let node = &c.nodes[i];
        let key_file = node.dir.join("wg-go.key");
        let private = run(Command::new("wg").arg("genkey"))?;
        std::fs::write(&key_file, format!("{private}\n")).map_err(|e| e.to_string())?;
        let public =
            run(Command::new("sh").args(["-c", &format!("wg pubkey < {}", key_file.display())]))?;
        let lease = serde_json::json!({
            "PublicIP": node.ip.to_string(), "PublicIPv6": null, "BackendType": "wireguard",
            "BackendData": {"PublicKey": public, "Port": 51820},
        });
        c.etcdctl(&["put", &Cluster::lease_key(subnet), &lease.to_string()])?;
        let net: ipnetwork::Ipv4Network = subnet.parse().map_err(|e| format!("{subnet}: {e}"))?;
        let gateway = std::net::Ipv4Addr::from(u32::from(net.network()) + 1);
        std::fs::write(
            node.subnet_file(),
            format!(
                "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={gateway}/{}\nFLANNEL_MTU=1420\nFLANNEL_IPMASQ=false\n",
                net.prefix()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns, "unshare", "-m", "sh", "-c"])
            .arg(
                "mount --make-rprivate / && mount -t tmpfs wgrun /run && \
                 exec wireguard-go -f flannel-wg",
            )
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("wireguard-go: {e}"))?;
        crate::cleanup::track_pid(child.id());
        let wg = WireguardGo {
            child,
            public_key: public,
        };
        if !wait_until(Duration::from_secs(5), || {
            wg.wg(&["show", "flannel-wg"]).status.success()
        }) {
            return Err("wireguard-go did not come up".into());
        }
        wg.run_wg(&[
            "set",
            "flannel-wg",
            "private-key",
            &key_file.display().to_string(),
            "listen-port",
            "51820",
        ])?;
        for cmd in [
            format!("ip addr add {}/32 dev flannel-wg", net.network()),
            "ip link set flannel-wg mtu 1420 up".to_string(),
            format!("ip route add {NETWORK} dev flannel-wg"),
        ] {
            run(Command::new("ip")
                .args(["netns", "exec", &node.ns])
                .args(cmd.split(' ')))?;
        }
        Ok(wg)
    }

    /// Adds `peers` (`wg set flannel-wg peer KEY endpoint EP allowed-ips NETS`).
    pub fn configure(&self, peers: &[WgPeer]) -> Result<(), String> {
        let mut args: Vec<String> = vec!["set".into(), "flannel-wg".into()];
        for (key, endpoint, allowed) in peers {
            args.extend([
                "peer".into(),
                key.clone(),
                "endpoint".into(),
                endpoint.clone(),
                "allowed-ips".into(),
                allowed.clone(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_wg(&args).map(|_| ())
    }

    /// The peer entry other nodes need for this one.
    pub fn as_peer(&self, c: &Cluster, i: usize, subnet: &str) -> WgPeer {
        (
            self.public_key.clone(),
            format!("{}:51820", c.nodes[i].ip),
            subnet.to_string(),
        )
    }

    /// `wg ARGS` in wireguard-go's namespaces (network and mount), by its PID.
    pub fn wg(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.child.id().to_string(), "-m", "-n", "wg"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("nsenter wg: {e}"))
    }

    fn run_wg(&self, args: &[&str]) -> Result<String, String> {
        let out = self.wg(args);
        if !out.status.success() {
            return Err(format!(
                "wg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// wireguard-go's PID (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where node `i` keeps wireguard-go's key.
    pub fn key_file(c: &Cluster, i: usize) -> PathBuf {
        c.nodes[i].dir.join("wg-go.key")
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        crate::cleanup::untrack_pid(self.child.id());
    }
}
