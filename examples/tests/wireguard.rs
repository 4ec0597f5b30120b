//! Multi-node scenarios on the wireguard backend: a real etcd, nodes running `flanneld` with
//! `"Backend": {"Type": "wireguard"}`, pods attached by the `flannel` CNI plugin, all in
//! network namespaces the harness creates and removes. This kernel has no wireguard module,
//! so flanneld is the WireGuard device (the userspace path); one test puts a node running
//! Debian's `wireguard-go` + `wg` (an implementation nobody here wrote) in the mesh.
//!
//! Needs root, iproute2, etcd, iperf3, tcpdump, wireguard-go, wireguard-tools and the debug
//! binaries; without them a test prints SKIP on a laptop and fails under `CI=true`.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flannel_examples::cluster::wggo::WireguardGo;
use flannel_examples::cluster::{Backend, Cluster, ClusterSpec, Pod, Stack, wait_until};

mod common;
use common::{HEALTHZ_PORT, assert_full_mesh, counter, metrics, tcp_survives_an_underlay_mtu_drop};

fn prerequisites(test: &str, extra: &[&str]) -> bool {
    let mut tools = vec!["bash", "python3", "wg", "tcpdump", "nsenter", "unshare"];
    tools.extend_from_slice(extra);
    flannel_examples::cluster::prerequisites(test, &tools)
}

fn spec(nodes: usize) -> ClusterSpec {
    let mut spec = ClusterSpec::new(nodes, Backend::Wireguard);
    spec.flanneld_args = vec![
        "--healthz-ip".into(),
        "127.0.0.1".into(),
        "--healthz-port".into(),
        HEALTHZ_PORT.into(),
    ];
    spec
}

fn start(nodes: usize) -> Cluster {
    Cluster::start(spec(nodes)).unwrap_or_else(|e| panic!("cluster start: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn in_pod(pod: &Pod, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &pod.ns])
        .args(args)
        .output()
        .expect("run in pod")
}

/// `wg show ARGS` against node `i`'s flanneld: `wg` looks for the UAPI socket in
/// /var/run/wireguard, so it runs in a private mount namespace where that directory is the
/// node's socket directory.
fn wg_show(c: &Cluster, i: usize, args: &[&str]) -> String {
    let dir = c.nodes[i].wireguard_socket_dir();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs wgrun /run && mkdir -p /run/wireguard && \
         mount --bind {} /run/wireguard && exec wg show {}",
        dir.display(),
        args.join(" ")
    );
    let ns = &c.nodes[i].ns;
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "unshare", "-m", "sh", "-c", &script])
        .output()
        .expect("wg show");
    assert!(
        out.status.success(),
        "wg show on node {}: {}",
        i + 1,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `wg show flannel-wg dump` on node `i`. Rows: the interface, then one per peer.
fn wg_dump(c: &Cluster, i: usize) -> Vec<Vec<String>> {
    wg_dump_of(c, i, "flannel-wg")
}

/// [`wg_dump`] of `device`.
fn wg_dump_of(c: &Cluster, i: usize, device: &str) -> Vec<Vec<String>> {
    wg_show(c, i, &[device, "dump"])
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn lease_data(c: &Cluster, i: usize) -> serde_json::Value {
    let key = c.node_lease_key(i).expect("lease key");
    let v = c.etcd_get(&key).expect("lease");
    serde_json::from_str(&v).expect("lease JSON")
}

/// Longest gap (ms) between answered pings of `ping -D -i 0.05` output.
fn longest_gap_ms(ping_output: &str) -> f64 {
    let times: Vec<f64> = ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    times
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1000.0)
        .fold(0.0, f64::max)
}

#[test]
fn wireguard_three_nodes_mesh_restart_device_loss_and_leaving_node() {
    if !prerequisites(
        "wireguard_three_nodes_mesh_restart_device_loss_and_leaving_node",
        &[],
    ) {
        return;
    }
    let mut c = start(3);
    let mut keys = Vec::new();
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].subnet_env("FLANNEL_MTU").as_deref(),
            Some("1420")
        );
        let routes = c.node_routes(i);
        assert!(
            routes
                .iter()
                .any(|(d, g, dev)| d == "10.244.0.0/16" && g.is_empty() && dev == "flannel-wg"),
            "node {}: {routes:?}",
            i + 1
        );
        // The key file: made once, mode 0600, and its public key is the lease's.
        let key_file = c.nodes[i].wireguard_key_file();
        let mode = std::fs::metadata(&key_file)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
        let lease = lease_data(&c, i);
        assert_eq!(lease["BackendType"], "wireguard");
        assert_eq!(lease["BackendData"]["Port"], 51820);
        let out = Command::new("sh")
            .args(["-c", &format!("wg pubkey < {}", key_file.display())])
            .output()
            .unwrap();
        let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(lease["BackendData"]["PublicKey"], public.as_str());
        keys.push(public);
    }
    let log = c.flanneld_log(0);
    assert!(log.contains("wireguard: userspace path"), "{log}");

    let mut pods = Vec::new();
    for i in 0..3 {
        for p in 0..2 {
            pods.push(c.add_pod(i, &format!("p{p}")).expect("ADD"));
        }
    }
    assert_full_mesh(&c, &pods, true);

    // `wg show` lists the other two nodes with their subnets, endpoints and handshakes.
    let shown = wg_show(&c, 0, &["flannel-wg"]);
    eprintln!("wg show flannel-wg (node 1):\n{shown}");
    assert!(shown.contains("listening port: 51820"), "{shown}");
    let dump = wg_dump(&c, 0);
    assert_eq!(dump.len(), 3, "{dump:?}");
    assert_eq!(dump[0][2], "51820", "listen port: {dump:?}");
    for (j, other) in [1usize, 2].into_iter().enumerate() {
        let row = dump
            .iter()
            .find(|r| r[0] == keys[other])
            .unwrap_or_else(|| panic!("peer {} in {dump:?}", other + 1));
        assert_eq!(
            row[2],
            format!("{}:51820", c.nodes[other].ip),
            "endpoint {j}"
        );
        assert_eq!(Some(row[3].clone()), c.node_subnet(other), "allowed ips");
        assert_ne!(row[4], "0", "latest handshake");
    }
    let m = metrics(&c, 0);
    assert_eq!(counter(&m, "flannel_wireguard_peers"), 2);
    assert!(
        counter(&m, "flannel_wireguard_handshakes_completed_total") >= 2,
        "{m}"
    );
    assert!(
        m.contains("flannel_wireguard_peer_last_handshake_seconds{"),
        "{m}"
    );
    assert!(m.contains("path=\"userspace\""), "{m}");
    assert_eq!(
        counter(&m, "flannel_wireguard_rx_dropped_allowed_ips_total"),
        0
    );

    // Restart node 1's flanneld during a ping stream from node 2: same key, traffic back
    // within 2 s.
    let (a, b) = (pods[2].clone(), pods[0].clone());
    let stream = Command::new("ip")
        .args([
            "netns", "exec", &a.ns, "ping", "-D", "-i", "0.05", "-W", "1", "-w", "8",
        ])
        .arg(b.ip.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping stream");
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    c.stop_flanneld(0);
    c.start_flanneld(0).expect("restart");
    c.wait_ready(0, Duration::from_secs(20)).expect("ready");
    let ready_after = t0.elapsed();
    // A node that sent nothing to node 1 during the restart still holds its old session:
    // its first packets must bring a new one (node 1 answers them with a handshake).
    let idle_back = wait_until(Duration::from_secs(20), || {
        in_pod(
            &pods[4],
            &["ping", "-c", "1", "-W", "0.2", &pods[1].ip.to_string()],
        )
        .status
        .success()
    });
    let idle_after = t0.elapsed();
    let out = stream.wait_with_output().expect("ping stream");
    let gap = longest_gap_ms(&String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "wireguard restart: flanneld ready after {:.0} ms; longest gap of a ping stream across \
         it {gap:.0} ms; an idle peer's first ping answered {:.0} ms after the stop",
        ready_after.as_secs_f64() * 1000.0,
        idle_after.as_secs_f64() * 1000.0
    );
    assert!(gap > 0.0, "{}", text(&out));
    assert!(gap <= 2000.0, "traffic gap {gap:.0} ms across the restart");
    assert!(idle_back, "node 3 -> node 1 never recovered");
    assert!(
        idle_after <= Duration::from_secs(2),
        "node 3 -> node 1 back only {idle_after:?} after the restart"
    );
    let m = metrics(&c, 0);
    assert!(
        counter(&m, "flannel_wireguard_stale_session_handshakes_total") >= 1,
        "{m}"
    );
    assert_eq!(
        lease_data(&c, 0)["BackendData"]["PublicKey"],
        keys[0].as_str()
    );
    assert_full_mesh(&c, &pods[..4], false);

    // The device deleted by hand is restored with every peer.
    let del = c.node_exec(0, &["ip", "link", "del", "flannel-wg"]);
    assert!(del.status.success(), "{}", text(&del));
    let back = wait_until(Duration::from_secs(15), || {
        c.ping(&pods[0], pods[2].ip) && c.ping(&pods[0], pods[4].ip)
    });
    assert!(back, "device not restored: {}", c.flanneld_log(0));
    assert_eq!(wg_dump(&c, 0).len(), 3);

    // Node 3 leaves (lease released): node 1 drops the peer at once.
    c.stop_flanneld(2);
    let key = c.node_lease_key(2).expect("lease key");
    c.etcd_del_many(&[key]).expect("delete lease");
    let gone = wait_until(Duration::from_secs(5), || wg_dump(&c, 0).len() == 2);
    assert!(gone, "{:?}", wg_dump(&c, 0));
    assert!(!wg_dump(&c, 0).iter().any(|r| r[0] == keys[2]));
    assert!(c.ping(&pods[0], pods[2].ip), "node 2 still reachable");
}

/// A capture (`tcpdump -w`) running in a namespace; stopped with SIGINT by PID.
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
    /// tcpdump's stderr after "listening on", read to the end by a thread (a closed pipe
    /// would kill tcpdump with SIGPIPE when it prints its statistics).
    stderr: std::thread::JoinHandle<String>,
}

impl Capture {
    fn start(ns: &str, iface: &str, filter: &str, file: std::path::PathBuf) -> Capture {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "--immediate-mode",
                "-B",
                "32768",
                "-i",
                iface,
                "-s",
                "0",
                "-U",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        flannel_examples::cleanup::track_pid(child.id());
        // tcpdump says "listening on" once the capture runs.
        let mut err = child.stderr.take().expect("stderr");
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !String::from_utf8_lossy(&seen).contains("listening on")
        {
            let mut b = [0u8; 256];
            match std::io::Read::read(&mut err, &mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&b[..n]),
            }
        }
        assert!(
            String::from_utf8_lossy(&seen).contains("listening on"),
            "tcpdump on {ns}/{iface}: {}",
            String::from_utf8_lossy(&seen)
        );
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut rest);
            rest
        });
        Capture {
            child,
            file,
            stderr,
        }
    }

    /// Waits (up to 10 s) until the pcap written so far satisfies `done`: tcpdump writes
    /// what it captured when it gets to run, which on a loaded machine can be well after
    /// the traffic.
    fn wait_for(&self, done: impl Fn(&[u8]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::fs::read(&self.file).is_ok_and(|b| done(&b)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the capture and returns the pcap bytes.
    fn finish(mut self) -> Vec<u8> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        flannel_examples::cleanup::untrack_pid(self.child.id());
        let stderr = self.stderr.join().unwrap_or_default();
        eprintln!("tcpdump: {}", stderr.trim());
        std::fs::read(&self.file).expect("pcap")
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn wireguard_no_plaintext_on_the_underlay() {
    if !prerequisites("wireguard_no_plaintext_on_the_underlay", &[]) {
        return;
    }
    let mut c = start(2);
    let a = c.add_pod(0, "a").expect("ADD");
    let b = c.add_pod(1, "b").expect("ADD");
    assert!(c.ping_within(&a, b.ip, Duration::from_secs(5)));
    let dir = c.workdir().to_path_buf();
    // The underlay of node 2, and, as the control that the marker is visible in clear where
    // it is not encrypted, node 2's pod bridge.
    let wire = Capture::start(&c.nodes[1].ns, "eth0", "udp", dir.join("wire.pcap"));
    let bridge = Capture::start(&c.nodes[1].ns, "cbr0", "tcp", dir.join("bridge.pcap"));
    let marker = "FLANNEL-WG-PLAINTEXT-MARKER-0123456789";
    let received = dir.join("received");
    let server = format!(
        "import socket\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{ip}',7000)); s.listen(1); c,_=s.accept(); n=0\n\
         while True:\n  d=c.recv(65536)\n  if not d: break\n  n+=len(d)\n\
         open('{out}','w').write(str(n))\n",
        ip = b.ip,
        out = received.display()
    );
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &b.ns, "python3", "-c", &server])
        .spawn()
        .expect("server");
    let total = 2000 * marker.len();
    let client = format!(
        "import socket,time\n\
         for _ in range(50):\n  try:\n    s=socket.create_connection(('{ip}',7000),timeout=2); break\n  except OSError: time.sleep(0.1)\n\
         s.sendall(b'{marker}'*2000); s.close()\n",
        ip = b.ip
    );
    let out = in_pod(&a, &["python3", "-c", &client]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = srv.wait();
    assert_eq!(
        std::fs::read_to_string(&received).expect("server result"),
        total.to_string()
    );
    wire.wait_for(|pcap| pcap.len() > total);
    bridge.wait_for(|pcap| contains(pcap, marker.as_bytes()));
    let wire = wire.finish();
    let bridge = bridge.finish();
    eprintln!(
        "captured: underlay {} bytes, bridge {} bytes",
        wire.len(),
        bridge.len()
    );
    assert!(
        contains(&bridge, marker.as_bytes()),
        "control: the marker is visible in clear on the pod bridge"
    );
    assert!(
        wire.len() > total,
        "the transfer crossed the captured underlay ({} bytes captured)",
        wire.len()
    );
    assert!(
        !contains(&wire, marker.as_bytes()),
        "plaintext marker found on the underlay"
    );
    // Not even a part of it: every 12-byte window of the marker is absent.
    for w in marker.as_bytes().windows(12) {
        assert!(
            !contains(&wire, w),
            "{:?} on the wire",
            String::from_utf8_lossy(w)
        );
    }
}

#[test]
fn wireguard_interoperates_with_wireguard_go() {
    if !prerequisites(
        "wireguard_interoperates_with_wireguard_go",
        &["wireguard-go"],
    ) {
        return;
    }
    let mut s = spec(3);
    s.start_daemons = false;
    let mut c = Cluster::start(s).unwrap_or_else(|e| panic!("cluster start: {e}"));
    // Node 3 is a plain WireGuard endpoint set up exactly as a flannel wireguard node is
    // (see flannel_examples::cluster::wggo), its lease written before the flanneld nodes
    // start.
    let subnet3 = "10.244.200.0/24";
    let wg_go = WireguardGo::start_node(&c, 2, subnet3).unwrap_or_else(|e| panic!("{e}"));
    let public = wg_go.public_key.clone();
    let mut peers = Vec::new();
    for i in 0..2 {
        c.start_flanneld(i).expect("flanneld");
        c.wait_subnet_env(i, Duration::from_secs(30))
            .expect("subnet.env");
        let data = lease_data(&c, i);
        peers.push((
            data["BackendData"]["PublicKey"]
                .as_str()
                .unwrap()
                .to_string(),
            format!("{}:{}", c.nodes[i].ip, data["BackendData"]["Port"]),
            c.node_subnet(i).unwrap(),
        ));
    }
    wg_go.configure(&peers).unwrap_or_else(|e| panic!("{e}"));

    let mut pods = Vec::new();
    for i in 0..3 {
        pods.push(c.add_pod(i, "p0").expect("ADD"));
    }
    // Pods on both sides: ping and TCP, both ways, every pair.
    assert_full_mesh(&c, &pods, true);

    // Both implementations saw handshakes with each other.
    let dump = wg_go.wg(&["show", "flannel-wg", "latest-handshakes"]);
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    let rows: Vec<&str> = dump.lines().collect();
    assert_eq!(rows.len(), 2, "{dump}");
    assert!(rows.iter().all(|r| !r.ends_with("\t0")), "{dump}");
    let ours = wg_dump(&c, 0);
    let row = ours
        .iter()
        .find(|r| r[0] == public)
        .expect("wireguard-go peer");
    assert_eq!(row[3], subnet3);
    assert_ne!(row[4], "0", "handshake with wireguard-go");
}

/// flannel's `Mode: separate` on a dual-stack and an IPv6-only network: `flannel-wg` (IPv4,
/// `ListenPort`) and `flannel-wg-v6` (IPv6, `ListenPortV6`), one key, `BackendData` and
/// `BackendV6Data` with each port, pods reaching each other over every family.
fn ipv6_scenario(stack: Stack) {
    let c = Cluster::start(spec(2).with_stack(stack));
    let mut c = c.unwrap_or_else(|e| panic!("cluster start: {e}"));
    for i in 0..2 {
        let lease = lease_data(&c, i);
        assert_eq!(lease["BackendV6Data"]["Port"], 51821, "{lease}");
        let key6 = lease["BackendV6Data"]["PublicKey"].clone();
        if stack.ipv4() {
            assert_eq!(lease["BackendData"]["Port"], 51820, "{lease}");
            assert_eq!(
                lease["BackendData"]["PublicKey"], key6,
                "one key for both devices"
            );
            assert!(
                c.node_routes(i)
                    .iter()
                    .any(|(d, _, dev)| d == "10.244.0.0/16" && dev == "flannel-wg"),
                "{:?}",
                c.node_routes(i)
            );
        }
        assert!(
            c.node_routes6(i)
                .iter()
                .any(|(d, _, dev)| d == "fd00:10:244::/56" && dev == "flannel-wg-v6"),
            "{:?}",
            c.node_routes6(i)
        );
        let mtu = c.node_ip_json(i, &["link", "show", "flannel-wg-v6"]);
        assert_eq!(mtu[0]["mtu"], 1420);
    }
    let a = c.add_pod(0, "a").expect("ADD");
    let b = c.add_pod(1, "b").expect("ADD");
    for (x, y) in [(&a, &b), (&b, &a)] {
        for dst in &y.ips {
            assert!(c.ping_within(x, *dst, Duration::from_secs(5)), "ping {dst}");
            c.tcp_to(x, y, *dst).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let dump = wg_dump_of(&c, 0, "flannel-wg-v6");
    assert_eq!(dump.len(), 2, "{dump:?}");
    assert_eq!(dump[0][2], "51821");
    let ip6 = c.nodes[1].ip6.expect("node 2 IPv6");
    assert_eq!(dump[1][2], format!("[{ip6}]:51821"), "{dump:?}");
    assert_eq!(Some(dump[1][3].clone()), c.node_subnet6(1));
    assert_ne!(dump[1][4], "0", "handshake over IPv6");
}

#[test]
fn wireguard_dual_stack_uses_flannel_wg_and_flannel_wg_v6() {
    if !prerequisites(
        "wireguard_dual_stack_uses_flannel_wg_and_flannel_wg_v6",
        &[],
    ) {
        return;
    }
    ipv6_scenario(Stack::Dual);
}

#[test]
fn wireguard_ipv6_only() {
    if !prerequisites("wireguard_ipv6_only", &[]) {
        return;
    }
    ipv6_scenario(Stack::V6Only);
}

/// The userspace device sends its encrypted datagrams as UDP GSO trains too: after the
/// underlay MTU drops under what the device was sized for, the refused trains go out datagram
/// by datagram and the kernel fragments them (the kernel module's device fragments as well),
/// and the device builds no trains for a second after each refusal (`Trains`).
#[test]
fn wireguard_carries_tcp_after_the_underlay_mtu_drops_at_runtime() {
    if !prerequisites(
        "wireguard_carries_tcp_after_the_underlay_mtu_drops_at_runtime",
        &["iperf3"],
    ) {
        return;
    }
    let mut c = start(2);
    let a = c.add_pod(0, "a").expect("ADD");
    let b = c.add_pod(1, "b").expect("ADD");
    tcp_survives_an_underlay_mtu_drop(&c, &a, &b, 4 << 20, "flannel_wireguard_");
}
