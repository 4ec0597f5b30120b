//! `flannel-bench`: control-plane and data-plane benchmarks on the namespace cluster.
//!
//! ```text
//! flannel-bench convergence [--backend B] [--rounds N]   new lease -> programmed on all 3 nodes
//!                                                         (etcd put over HTTP, routes polled via netlink)
//! flannel-bench scale       [--backend B] [--leases N] [--churn S]
//!                                                         N synthetic leases (up to 16,383) -> all
//!                                                         programmed; RSS; with --churn, S s of
//!                                                         200 lease changes/s: flanneld CPU per change
//!                                                         (and, first, its CPU over S idle seconds);
//!                           [--relist yes]                with --relist, a forced re-list after a
//!                                                         compaction: time until converged
//! flannel-bench acquire     [--leases N]                 acquire time with N existing leases
//! flannel-bench throughput  [--backend B] [--dur S] [--reps R] [--stack v4|dual|v6]
//!                           [--pod-masq yes|no]           pod-to-pod TCP (iperf3); v6 and dual
//!                                                         measure the pods' IPv6 addresses;
//!                                                         `--pod-masq no` sets the delegate's
//!                                                         `ipMasq: false` (no NAT chain, so no
//!                                                         conntrack, like a hand-built topology)
//! flannel-bench failover    [--rounds N]                 3-member TLS etcd: leader SIGKILLed ->
//!                                                         a lease written after it programmed on
//!                                                         all 3 nodes; lowest lease TTL left
//! ```
//!
//! Release binaries are used when built (`cargo build --release`), debug ones otherwise.
//! Every cluster lives in namespaces created and removed by the harness; Ctrl-C cleans up too.
//! Numbers are printed as `RESULT <name> <value> <unit>` lines for scripts to collect.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use flannel_examples::cluster::{Backend, Binaries, Cluster, ClusterSpec, Stack, wait_until};

fn usage() -> ExitCode {
    eprintln!(
        "usage: flannel-bench convergence|scale|acquire|throughput|failover [--backend vxlan|host-gw|udp|wireguard|wireguard-go] \
         [--rounds N] [--leases N] [--churn S] [--relist yes|no] [--dur S] [--reps R] [--stack v4|dual|v6] [--pod-masq yes|no]"
    );
    ExitCode::from(2)
}

struct Args {
    backend: Backend,
    rounds: usize,
    leases: usize,
    dur: u32,
    reps: usize,
    stack: Stack,
    pod_masq: bool,
    churn: usize,
    relist: bool,
    /// `--backend wireguard-go`: the wireguard topology with Debian's wireguard-go + wg on
    /// both nodes instead of flanneld (the reference of the wireguard benchmark).
    wireguard_go: bool,
}

fn bins() -> Binaries {
    let release = Binaries::from_target("release");
    if release.flanneld.exists() && release.cni.exists() {
        release
    } else {
        Binaries::from_target("debug")
    }
}

fn spec(nodes: usize, backend: Backend) -> ClusterSpec {
    let mut s = ClusterSpec::new(nodes, backend);
    s.bins = bins();
    s
}

fn lease_value(backend: Backend, public_ip: &str, mac_tail: usize) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"{}","BackendData":{{"VNI":1,"VtepMAC":"02:42:00:00:{:02x}:{:02x}"}}}}"#,
        backend.type_name(),
        (mac_tail >> 8) & 0xff,
        mac_tail & 0xff
    )
}

/// Routes flanneld owns on node `i` (`proto 150`).
fn owned_routes(c: &Cluster, i: usize) -> usize {
    c.node_ip_json(i, &["route", "show", "proto", "150"])
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Standard base64 (for etcd's JSON gateway).
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A TCP connection to etcd's client port, made from inside the underlay namespace (a socket
/// keeps the namespace it was created in), so puts cost one HTTP round trip instead of an
/// `etcdctl` process.
fn etcd_connection(c: &Cluster) -> Result<std::net::TcpStream, String> {
    let ns = backends::kernel::netns::NetNs::open(std::path::Path::new(&format!(
        "/run/netns/{}",
        c.ul()
    )))
    .map_err(|e| format!("open underlay netns: {e}"))?;
    let addr = format!("{}:2379", flannel_examples::cluster::ETCD_IP);
    ns.run(move || std::net::TcpStream::connect(addr))
        .map_err(|e| format!("enter underlay netns: {e}"))?
        .map_err(|e| format!("connect to etcd: {e}"))
}

/// `PUT key value` through etcd's v3 JSON gateway on a kept-alive connection.
fn etcd_http_put(conn: &mut std::net::TcpStream, key: &str, value: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64(key.as_bytes()),
        base64(value.as_bytes())
    );
    let req = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // Read the response head and its Content-Length body.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("etcd closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            if !text.starts_with("HTTP/1.1 200") {
                return Err(format!("etcd put failed: {text}"));
            }
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return Ok(());
            }
        }
    }
}

/// Netlink sockets into every node's namespace, to poll routes without spawning `ip`.
struct RouteProbe {
    rt: tokio::runtime::Runtime,
    nodes: Vec<backends::kernel::netlink::Netlink>,
}

impl RouteProbe {
    fn new(c: &Cluster) -> Result<RouteProbe, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        for n in &c.nodes {
            let ns = backends::kernel::netns::NetNs::open(std::path::Path::new(&format!(
                "/run/netns/{}",
                n.ns
            )))
            .map_err(|e| format!("open {}: {e}", n.ns))?;
            let nl = rt
                .block_on(async { backends::kernel::netlink::Netlink::new_in(&ns) })
                .map_err(|e| e.to_string())?;
            nodes.push(nl);
        }
        Ok(RouteProbe { rt, nodes })
    }

    fn has_route(&self, node: usize, dst: &str) -> bool {
        let nl = &self.nodes[node];
        self.rt
            .block_on(nl.routes(backends::kernel::netlink::IpFamily::V4))
            .map(|routes| routes.iter().any(|r| r.dst.to_string() == dst))
            .unwrap_or(false)
    }
}

fn convergence(a: &Args) -> Result<(), String> {
    let c = Cluster::start(spec(3, a.backend))?;
    let mut conn = etcd_connection(&c)?;
    let probe = RouteProbe::new(&c)?;
    // Baseline: one put's round trip (included in the numbers below).
    let mut put_ms = Vec::new();
    for r in 0..10 {
        let t = Instant::now();
        etcd_http_put(&mut conn, &format!("/bench/noise{r}"), "x")?;
        put_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut ms = Vec::new();
    for r in 0..a.rounds {
        let dst = format!("10.244.{}.0/24", 100 + r);
        let value = lease_value(a.backend, &format!("198.18.1.{}", r + 1), r);
        let t0 = Instant::now();
        etcd_http_put(&mut conn, &Cluster::lease_key(&dst), &value)?;
        let mut pending: Vec<usize> = (0..3).collect();
        while !pending.is_empty() {
            pending.retain(|&i| !probe.has_route(i, &dst));
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("lease {dst} not programmed on nodes {pending:?}"));
            }
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(100));
    }
    let max = ms.iter().cloned().fold(0.0, f64::max);
    let b = a.backend.type_name();
    println!("RESULT convergence_{b}_median {:.2} ms", median(&mut ms));
    println!("RESULT convergence_{b}_max {:.2} ms", max);
    println!(
        "RESULT etcd_put_roundtrip_median {:.2} ms",
        median(&mut put_ms)
    );
    Ok(())
}

/// Seconds left on the etcd lease behind node `i`'s key (`None` when unreadable).
fn lease_ttl_left(c: &Cluster, i: usize) -> Option<i64> {
    let key = Cluster::lease_key(&c.node_subnet(i)?);
    let id = c.etcd_key_lease(&key)?;
    let out = c
        .etcdctl(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"])
        .ok()?;
    serde_json::from_str::<serde_json::Value>(&out).ok()?["ttl"].as_i64()
}

/// The leader of a 3-member TLS etcd is SIGKILLed; a lease is written as soon as the rest
/// accept writes; the time from the kill until it is programmed on all 3 nodes, per round.
/// flanneld runs with a 20 s lease TTL (renewed every ~6.7 s); the lowest TTL left seen on
/// any node's lease after each round shows how close a renewal gap came to expiry.
fn failover(a: &Args) -> Result<(), String> {
    let mut s = spec(3, Backend::Vxlan);
    s.etcd_tls_members = 3;
    s.flanneld_args = vec!["--subnet-lease-ttl".into(), "20s".into()];
    let mut c = Cluster::start(s)?;
    let probe = RouteProbe::new(&c)?;
    let mut ms = Vec::new();
    let mut write_ms = Vec::new();
    let mut after_write_ms: Vec<f64> = Vec::new();
    let mut min_ttl = i64::MAX;
    for r in 0..a.rounds {
        let etcd = c.tls_etcd().ok_or("no TLS etcd")?;
        let mut leader = None;
        wait_until(Duration::from_secs(20), || {
            leader = etcd.leader();
            leader.is_some()
        });
        let leader = leader.ok_or("no etcd leader")?;
        let dst = format!("10.244.{}.0/24", 100 + r);
        let value = lease_value(Backend::Vxlan, &format!("198.18.1.{}", r + 1), r);
        let t0 = Instant::now();
        etcd.kill_member(leader);
        // A put that reaches a member still following the dead leader hangs until etcd's own
        // request timeout (~5 s); a short client timeout and a retry measure the election
        // instead of that timeout.
        loop {
            match c.etcdctl(&[
                "--command-timeout=300ms",
                "put",
                &Cluster::lease_key(&dst),
                &value,
            ]) {
                Ok(_) => break,
                Err(e) if t0.elapsed() > Duration::from_secs(30) => return Err(e),
                Err(_) => {}
            }
        }
        let written = t0.elapsed().as_secs_f64() * 1e3;
        write_ms.push(written);
        let mut pending: Vec<usize> = (0..3).collect();
        while !pending.is_empty() {
            pending.retain(|&i| !probe.has_route(i, &dst));
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!("lease {dst} not programmed on nodes {pending:?}"));
            }
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        let took = t0.elapsed().as_secs_f64() * 1e3;
        ms.push(took);
        after_write_ms.push(took - written);
        println!(
            "round {r}: killed member {}: write accepted after {written:.1} ms, programmed \
             everywhere after {took:.1} ms",
            leader + 1
        );
        let etcd = c.tls_etcd().ok_or("no TLS etcd")?;
        etcd.start_member(leader)?;
        etcd.wait_healthy(Duration::from_secs(30))?;
        for i in 0..3 {
            if let Some(t) = lease_ttl_left(&c, i) {
                min_ttl = min_ttl.min(t);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let max = ms.iter().cloned().fold(0.0, f64::max);
    println!(
        "RESULT failover_programmed_median {:.1} ms",
        median(&mut ms)
    );
    println!("RESULT failover_programmed_max {max:.1} ms");
    println!(
        "RESULT failover_write_accepted_median {:.1} ms",
        median(&mut write_ms)
    );
    let max_after = after_write_ms.iter().cloned().fold(0.0, f64::max);
    println!(
        "RESULT failover_programmed_after_write_median {:.1} ms",
        median(&mut after_write_ms)
    );
    println!("RESULT failover_programmed_after_write_max {max_after:.1} ms");
    println!("RESULT failover_min_lease_ttl_left {min_ttl} s (TTL 20 s)");
    for i in 0..3 {
        let log = c.flanneld_log(i);
        println!(
            "RESULT failover_node{}_renewal_failures {} lines",
            i + 1,
            log.matches("renewing the subnet lease failed").count()
        );
    }
    Ok(())
}

/// flanneld's CPU time so far (`utime + stime` of `/proc/<pid>/stat`), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn scale(a: &Args) -> Result<(), String> {
    let mut s = spec(1, a.backend);
    // Leases small enough that `--leases` of them fit in 10.244.0.0/16: /26 (1,024) up to
    // 1,023 leases, else /30 (16,384).
    let (len, per_third) = if a.leases < 1024 { (26, 4) } else { (30, 64) };
    if a.leases >= 16_384 {
        return Err("--leases: at most 16,383 (/30 subnets of 10.244.0.0/16)".into());
    }
    s.config_extra = serde_json::json!({ "SubnetLen": len });
    let mut c = Cluster::start(s)?;
    let own = c.node_subnet(0).unwrap_or_default();
    let step = 256 / per_third;
    let mut pairs = Vec::new();
    for k in 0..(a.leases + 1) {
        let dst = format!("10.244.{}.{}/{len}", k / per_third, (k % per_third) * step);
        if dst == own {
            continue;
        }
        if pairs.len() == a.leases {
            break;
        }
        let ip = format!("198.18.{}.{}", 1 + k / 250, 1 + k % 250);
        pairs.push((Cluster::lease_key(&dst), lease_value(a.backend, &ip, k)));
    }
    let rss_before = c.nodes[0].daemon_pid().and_then(rss_kib).unwrap_or(0);
    let t0 = Instant::now();
    c.etcd_put_many(&pairs)?;
    let written = t0.elapsed();
    let ok = wait_until(Duration::from_secs(120), || owned_routes(&c, 0) >= a.leases);
    let took = t0.elapsed();
    if !ok {
        return Err(format!(
            "only {} of {} routes programmed",
            owned_routes(&c, 0),
            a.leases
        ));
    }
    let pid = c.nodes[0].daemon_pid().ok_or("flanneld not running")?;
    let rss = rss_kib(pid).unwrap_or(0);
    let b = a.backend.type_name();
    println!(
        "RESULT scale_{b}_{}_write {:.0} ms",
        a.leases,
        written.as_secs_f64() * 1e3
    );
    println!(
        "RESULT scale_{b}_{}_programmed {:.0} ms",
        a.leases,
        took.as_secs_f64() * 1e3
    );
    println!("RESULT scale_{b}_rss_idle {rss_before} KiB");
    println!("RESULT scale_{b}_rss_{}_leases {rss} KiB", a.leases);

    if a.churn > 0 {
        // A rolling upgrade: every second 100 leases are deleted and, half a second later,
        // written back (200 changes/s), for `--churn` seconds. flanneld's CPU time over the
        // whole phase, divided by the changes, is the cost of one change.
        // First the same time without any change: what holding N leases costs (the periodic
        // full reconcile, the etcd keepalives), which the churn figure below includes too.
        let idle0 = cpu_seconds(pid).ok_or("flanneld's /proc/<pid>/stat")?;
        let idle_start = Instant::now();
        std::thread::sleep(Duration::from_secs(a.churn as u64));
        let idle1 = cpu_seconds(pid).ok_or("flanneld's /proc/<pid>/stat")?;
        println!(
            "RESULT scale_{b}_{}_idle_cpu {:.2} ms/s",
            a.leases,
            (idle1 - idle0) * 1e3 / idle_start.elapsed().as_secs_f64()
        );
        let cpu0 = cpu_seconds(pid).ok_or("flanneld's /proc/<pid>/stat")?;
        let t0 = Instant::now();
        let mut changes = 0usize;
        for sec in 0..a.churn {
            let from = (sec * 100) % pairs.len();
            let batch: Vec<(String, String)> =
                pairs.iter().cycle().skip(from).take(100).cloned().collect();
            let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
            c.etcd_del_many(&keys)?;
            changes += keys.len();
            let half = Duration::from_millis(500 + 1000 * sec as u64);
            std::thread::sleep(half.saturating_sub(t0.elapsed()));
            c.etcd_put_many(&batch)?;
            changes += batch.len();
            let next = Duration::from_millis(1000 * (sec as u64 + 1));
            std::thread::sleep(next.saturating_sub(t0.elapsed()));
        }
        let settled = wait_until(Duration::from_secs(30), || owned_routes(&c, 0) == a.leases);
        let cpu1 = cpu_seconds(pid).ok_or("flanneld's /proc/<pid>/stat")?;
        if !settled {
            return Err(format!(
                "after churn {} routes, want {}",
                owned_routes(&c, 0),
                a.leases
            ));
        }
        let rss = rss_kib(pid).unwrap_or(0);
        println!(
            "RESULT scale_{b}_{}_churn_changes {changes} ({:.0} changes/s)",
            a.leases,
            changes as f64 / t0.elapsed().as_secs_f64()
        );
        println!(
            "RESULT scale_{b}_{}_cpu_per_change {:.3} ms",
            a.leases,
            (cpu1 - cpu0) * 1e3 / changes as f64
        );
        println!("RESULT scale_{b}_rss_after_churn {rss} KiB");
    }

    if a.relist {
        // A re-list: flanneld frozen while etcd restarts (its watch dropped), 100 leases
        // are replaced by 100 others and the history compacted away; thawed, it cannot
        // resume and must re-list all N leases. Time from the thaw until its routes are
        // exactly the new set.
        let gone: Vec<(String, String)> = pairs.iter().take(100).cloned().collect();
        let mut fresh = Vec::new();
        for k in 0..100usize {
            // /30s of 10.244.255.0/24 (or /26s of 10.244.255.0/24 for small runs): not
            // used by the first N leases unless N is near the maximum.
            let sub = if len == 30 {
                format!("10.244.255.{}/30", k * 4 % 256)
            } else {
                format!("10.244.255.{}/26", (k % 4) * 64)
            };
            if fresh
                .iter()
                .any(|(key, _): &(String, String)| *key == Cluster::lease_key(&sub))
            {
                continue;
            }
            fresh.push((
                Cluster::lease_key(&sub),
                lease_value(a.backend, &format!("198.19.255.{}", 1 + k), 60_000 + k),
            ));
        }
        c.signal_flanneld(0, nix::sys::signal::Signal::SIGSTOP);
        c.stop_etcd();
        c.start_etcd()?;
        let keys: Vec<String> = gone.iter().map(|(k, _)| k.clone()).collect();
        c.etcd_del_many(&keys)?;
        c.etcd_put_many(&fresh)?;
        let rev = c.etcd_revision().ok_or("etcd revision")?;
        c.etcdctl(&["compact", &rev.to_string()])?;
        let want = a.leases - gone.len() + fresh.len();
        let t0 = Instant::now();
        c.signal_flanneld(0, nix::sys::signal::Signal::SIGCONT);
        let ok = wait_until(Duration::from_secs(30), || owned_routes(&c, 0) == want);
        let took = t0.elapsed();
        if !ok {
            return Err(format!(
                "after the re-list {} routes, want {want}",
                owned_routes(&c, 0)
            ));
        }
        if !c.flanneld_log(0).contains("fell behind a compaction") {
            return Err("the watch did not hit the compaction; no re-list measured".into());
        }
        println!(
            "RESULT scale_{b}_{}_relist_converged {:.0} ms",
            a.leases,
            took.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn acquire(a: &Args) -> Result<(), String> {
    let mut s = spec(1, Backend::Vxlan);
    s.start_daemons = false;
    // /29 leases: 8192 of them fit in 10.244.0.0/16.
    s.config_extra = serde_json::json!({"SubnetLen": 29});
    let mut c = Cluster::start(s)?;
    let mut pairs = Vec::new();
    for k in 0..a.leases {
        let dst = format!("10.244.{}.{}/29", k / 32, (k % 32) * 8);
        let ip = format!("198.18.{}.{}", 1 + k / 250, 1 + k % 250);
        pairs.push((
            Cluster::lease_key(&dst),
            lease_value(Backend::Vxlan, &ip, k),
        ));
    }
    c.etcd_put_many(&pairs)?;
    let mut took = Vec::new();
    for round in 0..3 {
        if round > 0 {
            c.stop_flanneld(0);
            // Forget the subnet so that each round runs the full acquire (random pick).
            let sub = c.node_subnet(0).unwrap_or_default();
            c.etcdctl(&["del", &Cluster::lease_key(&sub)])?;
            let _ = std::fs::remove_file(c.nodes[0].subnet_file());
        }
        c.start_flanneld(0)?;
        c.wait_subnet_env(0, Duration::from_secs(60))?;
        let log = c.flanneld_log(0);
        let ms = log
            .lines()
            .find_map(|l| l.split("took_ms=").nth(1))
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(|| format!("no acquire timing in the log:\n{log}"))?;
        took.push(ms);
    }
    println!(
        "RESULT acquire_with_{}_leases_median {:.1} ms",
        a.leases,
        median(&mut took)
    );
    Ok(())
}

/// `/proc/stat`'s aggregate CPU line: (busy, total) jiffies.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn ncpu() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

/// Ping RTTs (ms) from `from` to `to`, one sample per reply.
fn ping_rtts(from: &str, to: &str, count: u32) -> Vec<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", from, "ping", "-i", "0.01", "-W", "1", "-c"])
        .arg(count.to_string())
        .arg(to)
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect()
}

fn throughput(a: &Args) -> Result<(), String> {
    let mut spec = spec(2, a.backend).with_stack(a.stack);
    if !a.pod_masq {
        spec.cni_delegate_extra = serde_json::json!({"ipMasq": false});
    }
    spec.start_daemons &= !a.wireguard_go;
    let mut c = Cluster::start(spec)?;
    // The reference: both nodes are wireguard-go endpoints configured as flannel nodes.
    let mut _reference = Vec::new();
    if a.wireguard_go {
        use flannel_examples::cluster::wggo::WireguardGo;
        let subnets = ["10.244.1.0/24", "10.244.2.0/24"];
        for (i, s) in subnets.iter().enumerate() {
            _reference.push(WireguardGo::start_node(&c, i, s)?);
        }
        for i in 0..2 {
            let other = _reference[1 - i].as_peer(&c, 1 - i, subnets[1 - i]);
            _reference[i].configure(&[other])?;
        }
    }
    let p1 = c.add_pod(0, "a")?;
    let p2 = c.add_pod(1, "b")?;
    let name = if a.wireguard_go {
        "wireguard-go"
    } else {
        a.backend.type_name()
    };
    // IPv4 unless the cluster has IPv6: then the pods' IPv6 addresses (`<backend>-v6`).
    let (dst, b) = match p2.ips.iter().find(|ip| ip.is_ipv6()) {
        Some(v6) if a.stack != Stack::V4 => (*v6, format!("{name}-v6")),
        _ => (std::net::IpAddr::V4(p2.ip), name.to_string()),
    };
    if !c.ping_within(&p1, dst, Duration::from_secs(5)) {
        return Err("pods cannot reach each other".into());
    }
    let mut rtts = ping_rtts(&p1.ns, &dst.to_string(), 200);
    if !rtts.is_empty() {
        rtts.sort_by(|x, y| x.total_cmp(y));
        let p99 = rtts[((rtts.len() * 99).div_ceil(100)).saturating_sub(1)];
        println!("RESULT rtt_{b}_median {:.4} ms", median(&mut rtts.clone()));
        println!("RESULT rtt_{b}_p99 {p99:.4} ms");
    }
    let mut server = Command::new("ip")
        .args(["netns", "exec", &p2.ns, "iperf3", "-s", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 -s: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let mut gbps = Vec::new();
    let mut cores_per_gbps = Vec::new();
    for _ in 0..a.reps {
        let (busy0, total0) = cpu_jiffies();
        let out = Command::new("ip")
            .args(["netns", "exec", &p1.ns, "iperf3", "-c"])
            .arg(dst.to_string())
            .args(["-p", "5201", "-J", "-t"])
            .arg(a.dur.to_string())
            .output()
            .map_err(|e| format!("iperf3 -c: {e}"))?;
        let (busy1, total1) = cpu_jiffies();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 JSON: {e}"))?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| format!("iperf3 failed: {}", v["error"]))?;
        // Busy cores during the run (all processes: sender, receiver, kernel, flanneld).
        let busy_cores = (busy1 - busy0) as f64 / ((total1 - total0).max(1) as f64) * ncpu();
        println!(
            "sample {b} {:.3} Gbit/s, {:.2} busy cores",
            bps / 1e9,
            busy_cores
        );
        gbps.push(bps / 1e9);
        cores_per_gbps.push(busy_cores / (bps / 1e9));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = server.wait();
    println!("RESULT tcp1_{b}_median {:.3} Gbit/s", median(&mut gbps));
    println!(
        "RESULT cpu_per_gbps_{b}_median {:.3} cores/(Gbit/s)",
        median(&mut cores_per_gbps)
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let Some(cmd) = argv.next() else {
        return usage();
    };
    let mut a = Args {
        backend: Backend::Vxlan,
        rounds: 20,
        leases: 1000,
        dur: 10,
        reps: 3,
        stack: Stack::V4,
        pod_masq: true,
        churn: 0,
        relist: false,
        wireguard_go: false,
    };
    while let Some(flag) = argv.next() {
        let value = argv.next();
        let ok = match (flag.as_str(), value.as_deref()) {
            ("--backend", Some("wireguard-go")) => {
                a.backend = Backend::Wireguard;
                a.wireguard_go = true;
                true
            }
            ("--backend", Some(v)) => Backend::parse(v).map(|b| a.backend = b).is_some(),
            ("--rounds", Some(v)) => v.parse().map(|n| a.rounds = n).is_ok(),
            ("--leases", Some(v)) => v.parse().map(|n| a.leases = n).is_ok(),
            ("--dur", Some(v)) => v.parse().map(|n| a.dur = n).is_ok(),
            ("--reps", Some(v)) => v.parse().map(|n| a.reps = n).is_ok(),
            ("--churn", Some(v)) => v.parse().map(|n| a.churn = n).is_ok(),
            ("--relist", Some(v @ ("yes" | "no"))) => {
                a.relist = v == "yes";
                true
            }
            ("--pod-masq", Some(v @ ("yes" | "no"))) => {
                a.pod_masq = v == "yes";
                true
            }
            ("--stack", Some("v4")) => {
                a.stack = Stack::V4;
                true
            }
            ("--stack", Some("dual")) => {
                a.stack = Stack::Dual;
                true
            }
            ("--stack", Some("v6")) => {
                a.stack = Stack::V6Only;
                true
            }
            _ => false,
        };
        if !ok {
            return usage();
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("flannel-bench: must run as root (it creates network namespaces)");
        return ExitCode::FAILURE;
    }
    if let Err(e) = flannel_examples::cleanup::install_signal_cleanup() {
        eprintln!("flannel-bench: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cmd.as_str() {
        "convergence" => convergence(&a),
        "scale" => scale(&a),
        "acquire" => acquire(&a),
        "throughput" => throughput(&a),
        "failover" => failover(&a),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flannel-bench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}
