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

/// TCP between pods `a` and `b` (on two nodes) before, during and after the nodes' underlay
/// MTU is lowered from 1500 to 1400 at runtime — under the overlay device's MTU, which keeps
/// the value computed at start, as flannel's does: at least `min_bytes` in 2 s each time,
/// both ways while the MTU is low, and node `a`'s kernel fragmented the overlay's datagrams.
/// `while_low` runs before the MTU is raised again and returns a value for `after`, which
/// runs once traffic has flowed at 1500 again.
#[allow(dead_code)]
pub fn tcp_survives_an_underlay_mtu_drop<T>(
    c: &Cluster,
    a: &Pod,
    b: &Pod,
    min_bytes: u64,
    while_low: impl FnOnce() -> T,
    after: impl FnOnce(T),
) {
    let enough = min_bytes;
    let r = iperf3(a, b, &["-t", "2"]);
    assert!(received_bytes(&r) > enough, "{r}");
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
        assert!(received_bytes(&r) > enough, "reverse {reverse}: {r}");
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
    let low = while_low();
    set_underlay_mtu(c, 1500);
    std::thread::sleep(Duration::from_millis(1200));
    let r = iperf3(a, b, &["-t", "2"]);
    assert!(received_bytes(&r) > enough, "{r}");
    after(low);
}
