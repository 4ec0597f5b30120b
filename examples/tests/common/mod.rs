//! Assertions shared by the multi-node test files.

use std::process::{Command, Stdio};
use std::time::Duration;

use flannel_examples::cluster::{Cluster, Pod};

/// The fenced ```sh block after `<!-- test: name -->` in the README: documented command
/// sequences are run by the tests exactly as written.
#[allow(dead_code)] // not every test file runs README blocks
pub fn readme_block(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let marker = format!("<!-- test: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"))
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1;
    body.split_once("```")
        .expect("the block's closing fence")
        .0
        .to_string()
}

/// Every pod reaches every pod on another namespace: a ping (within 5 s) and, with `tcp`, a
/// TCP connection.
#[allow(dead_code)] // not every test file has pods
pub fn assert_full_mesh(c: &Cluster, pods: &[Pod], tcp: bool) {
    for a in pods {
        for b in pods {
            if a.ns == b.ns {
                continue;
            }
            assert!(
                c.ping_within(a, b.ip, Duration::from_secs(5)),
                "ping {} (node {}) -> {} (node {})",
                a.ip,
                a.node + 1,
                b.ip,
                b.node + 1
            );
            if tcp {
                c.tcp(a, b).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

/// iperf3 server in `to`, `client_args` from `from`; returns the client's JSON.
#[allow(dead_code)] // not every test file moves bulk data
pub fn iperf3(from: &Pod, to: &Pod, client_args: &[&str]) -> serde_json::Value {
    let mut server = Command::new("ip")
        .args(["netns", "exec", &to.ns, "iperf3", "-s", "-1", "-p", "5202"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    let dst = to.ip.to_string();
    let mut args = vec![
        "iperf3",
        "-J",
        "-c",
        &dst,
        "-p",
        "5202",
        "--connect-timeout",
        "2000",
    ];
    args.extend_from_slice(client_args);
    let mut result = serde_json::Value::Null;
    for _ in 0..20 {
        let out = Command::new("ip")
            .args(["netns", "exec", &from.ns])
            .args(&args)
            .output()
            .expect("iperf3 client");
        // iperf3 -J may exit 0 with an "error" member (e.g. server not listening yet).
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && out.status.success()
            && v.get("error").is_none()
        {
            result = v;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        !result.is_null(),
        "iperf3 {args:?} from {} never succeeded",
        from.ip
    );
    result
}

/// Bytes the receiver got, from an iperf3 client's JSON.
#[allow(dead_code)]
pub fn received_bytes(r: &serde_json::Value) -> u64 {
    r["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0)
}

/// `ip link set eth0 mtu MTU` on every node's underlay device.
#[allow(dead_code)]
pub fn set_underlay_mtu(c: &Cluster, mtu: u32) {
    for i in 0..c.nodes.len() {
        let o = c.node_exec(i, &["ip", "link", "set", "eth0", "mtu", &mtu.to_string()]);
        assert!(o.status.success(), "node {}: {o:?}", i + 1);
    }
}

/// The healthz/metrics port the udp and wireguard test clusters give flanneld.
#[allow(dead_code)]
pub const HEALTHZ_PORT: &str = "9102";

/// `GET /metrics` from node `i`'s flanneld (bash `/dev/tcp`, inside the node).
#[allow(dead_code)]
pub fn metrics(c: &Cluster, i: usize) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{HEALTHZ_PORT}; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
    );
    String::from_utf8_lossy(&c.node_exec(i, &["bash", "-c", &script]).stdout).into_owned()
}

/// The value of metric `name` (the first series, with or without labels) in `metrics`.
#[allow(dead_code)]
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest.strip_prefix(' ').or_else(|| {
                rest.strip_prefix('{')
                    .and_then(|r| r.split_once("} ").map(|x| x.1))
            })?;
            rest.trim().parse::<f64>().ok()
        })
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
}

/// TCP between pods `a` and `b` (on two nodes) before, during and after the nodes' underlay
/// MTU is lowered from 1500 to 1400 at runtime — under the overlay device's MTU, which keeps
/// the value computed at start, as flannel's does: at least `min_bytes` in 2 s each time,
/// both ways while the MTU is low, and node `a`'s kernel fragmented the overlay's datagrams.
/// The userspace data path (metrics `<prefix>tx_…`, e.g. `flannel_udp_`) refused UDP GSO
/// trains on both nodes, warned once, lost nothing as a send error, and paused trains after
/// each refusal (a few refusals a second, not one per batch); back at 1500 its trains go
/// through again and it says so.
#[allow(dead_code)]
pub fn tcp_survives_an_underlay_mtu_drop(
    c: &Cluster,
    a: &Pod,
    b: &Pod,
    min_bytes: u64,
    prefix: &str,
) {
    let refused = |m: &str| counter(m, &format!("{prefix}tx_trains_refused_total"));
    let trains = |m: &str| counter(m, &format!("{prefix}tx_gso_messages_total"));
    let before = [metrics(c, 0), metrics(c, 1)];
    let r = iperf3(a, b, &["-t", "2"]);
    assert!(received_bytes(&r) > min_bytes, "{r}");
    set_underlay_mtu(c, 1400);
    for reverse in [false, true] {
        let mut args = vec!["-t", "2"];
        if reverse {
            args.push("-R");
        }
        let r = iperf3(a, b, &args);
        eprintln!(
            "underlay MTU 1400, reverse {reverse}: {} bytes in 2 s",
            received_bytes(&r)
        );
        assert!(received_bytes(&r) > min_bytes, "reverse {reverse}: {r}");
    }
    let nstat = c.node_exec(a.node, &["nstat", "-asz", "IpFragCreates"]);
    let nstat = String::from_utf8_lossy(&nstat.stdout).into_owned();
    let frags: u64 = nstat
        .lines()
        .find_map(|l| {
            l.strip_prefix("IpFragCreates")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        frags > 10_000,
        "node {} fragmented the datagrams: {nstat}",
        a.node + 1
    );
    for (i, m) in before.iter().enumerate() {
        let now = metrics(c, i);
        let n = refused(&now) - refused(m);
        eprintln!("node {}: {n} trains refused", i + 1);
        assert!(n > 0, "node {}: {now}", i + 1);
        assert!(n < 200, "node {}: {n} refusals: trains not paused", i + 1);
        assert_eq!(counter(&now, &format!("{prefix}tx_errors_total")), 0);
        let log = c.flanneld_log(i);
        assert!(
            log.contains("does not fit the route"),
            "node {}: {log}",
            i + 1
        );
    }
    let low = metrics(c, 0);
    set_underlay_mtu(c, 1500);
    std::thread::sleep(Duration::from_millis(1200));
    let r = iperf3(a, b, &["-t", "2"]);
    assert!(received_bytes(&r) > min_bytes, "{r}");
    // After the pause, trains go through again.
    let now = metrics(c, 0);
    assert!(trains(&now) > trains(&low) + 100, "{low}\n{now}");
    assert!(c.flanneld_log(0).contains("fit the route again"));
}
