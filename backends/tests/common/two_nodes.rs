//! The two-node topology of the userspace backends' netns tests (udp, wireguard), with the
//! commands they run in it. Included with `#[path]` next to `common`.
//!
//! ```text
//! pod1 10.244.1.2 - cni0 [node1 198.18.0.1] - br0 (198.18.0.99) - [node2 198.18.0.2] cni0 - pod2 10.244.2.2
//! ```
#![allow(dead_code)] // each test file uses its own part

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use backends::kernel::netlink::{Netlink, Route, VethSpec};
use backends::kernel::netns::NetNs;
use backends::overlay::ExternalInterface;
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::common::net4;

/// One node of the topology.
pub struct Node {
    pub ns: NetNs,
    pub nl: Netlink,
    pub ext: ExternalInterface,
    pub subnet: Ipv4Network,
    pub pod: NetNs,
    pub pod_ip: Ipv4Addr,
}

/// Runs a command inside `ns` and returns its output.
pub fn run_in(ns: &NetNs, prog: &str, args: &[&str]) -> Output {
    let what = format!("{prog} {args:?}");
    let prog = prog.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    ns.run(move || Command::new(&prog).args(&args).output())
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("run {what}: {e}"))
}

/// Starts a background process inside `ns`.
pub fn spawn_in(ns: &NetNs, prog: &str, args: &[&str]) -> Child {
    let what = prog.to_string();
    let prog = prog.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    ns.run(move || {
        Command::new(&prog)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    })
    .expect("enter netns")
    .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

pub fn ping(from: &NetNs, dst: Ipv4Addr, extra: &[&str]) -> Output {
    let dst = dst.to_string();
    let mut args = vec!["-c", "2", "-i", "0.2", "-W", "2"];
    args.extend_from_slice(extra);
    args.push(&dst);
    run_in(from, "ping", &args)
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A TCP transfer of `bytes` from `client` to the iperf3 server started in `server`.
pub fn iperf(client: &NetNs, server: &NetNs, server_ip: Ipv4Addr, bytes: &str, reverse: bool) {
    let mut srv = spawn_in(server, "iperf3", &["-s", "-1", "-p", "5201"]);
    let dst = server_ip.to_string();
    let mut args = vec![
        "-c",
        &dst,
        "-p",
        "5201",
        "-n",
        bytes,
        "--connect-timeout",
        "2000",
    ];
    if reverse {
        args.push("-R");
    }
    let mut last = String::new();
    let start = Instant::now();
    let mut ok = false;
    while start.elapsed() < Duration::from_secs(10) {
        let out = run_in(client, "iperf3", &args);
        if out.status.success() {
            ok = true;
            break;
        }
        last = text(&out);
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = srv.kill();
    let _ = srv.wait();
    assert!(ok, "iperf3 {args:?} failed: {last}");
}

/// Builds the two-node topology (module docs) below the caller's namespace.
pub async fn topology() -> Vec<Node> {
    let here = Netlink::new().expect("netlink in the underlay netns");
    let br = here.ensure_bridge("br0", None).await.expect("br0");
    here.add_address(br.index, "198.18.0.99/24".parse().expect("addr"))
        .await
        .expect("outsider address");
    here.set_up(br.index).await.expect("br0 up");
    let mut nodes = Vec::new();
    for n in 1..=2u8 {
        let ns = NetNs::create_anonymous().expect("node netns");
        here.create_veth(&VethSpec {
            host_name: &format!("u{n}"),
            peer_name: "eth0",
            mtu: None,
            master: Some(br.index),
            host_up: true,
            peer_ns: &ns,
            peer_mac: None,
        })
        .await
        .expect("veth into node");
        let nl = Netlink::new_in(&ns).expect("netlink in node");
        let lo = nl.link("lo").await.expect("lo").expect("lo");
        nl.set_up(lo.index).await.expect("lo up");
        let eth0 = nl.link("eth0").await.expect("eth0").expect("eth0");
        nl.set_up(eth0.index).await.expect("eth0 up");
        let a: Ipv4Network = net4(&format!("198.18.0.{n}/24"));
        nl.add_address(eth0.index, IpNetwork::V4(a))
            .await
            .expect("eth0 address");
        let cni0 = nl.ensure_bridge("cni0", Some(1472)).await.expect("cni0");
        nl.add_address(cni0.index, format!("10.244.{n}.1/24").parse().expect("a"))
            .await
            .expect("cni0 address");
        nl.set_up(cni0.index).await.expect("cni0 up");
        ns.run(|| backends::kernel::sysctl::write("net/ipv4/ip_forward", "1"))
            .expect("enter node")
            .expect("ip_forward");
        let pod = NetNs::create_anonymous().expect("pod netns");
        nl.create_veth(&VethSpec {
            host_name: "vpod",
            peer_name: "eth0",
            mtu: Some(1472),
            master: Some(cni0.index),
            host_up: true,
            peer_ns: &pod,
            peer_mac: None,
        })
        .await
        .expect("pod veth");
        let pnl = Netlink::new_in(&pod).expect("netlink in pod");
        let plo = pnl.link("lo").await.expect("lo").expect("lo");
        pnl.set_up(plo.index).await.expect("pod lo up");
        let peth = pnl.link("eth0").await.expect("eth0").expect("pod eth0");
        let pod_ip = Ipv4Addr::new(10, 244, n, 2);
        pnl.add_address(peth.index, format!("{pod_ip}/24").parse().expect("a"))
            .await
            .expect("pod address");
        pnl.set_up(peth.index).await.expect("pod eth0 up");
        pnl.add_route(
            &Route::new("0.0.0.0/0".parse().expect("default"))
                .via(std::net::IpAddr::V4(Ipv4Addr::new(10, 244, n, 1))),
        )
        .await
        .expect("pod default route");
        nodes.push(Node {
            ns,
            nl,
            ext: ExternalInterface {
                index: eth0.index,
                name: "eth0".into(),
                mtu: eth0.mtu,
                iface_addr: a.ip().into(),
                public_ip: a.ip().into(),
            },
            subnet: net4(&format!("10.244.{n}.0/24")),
            pod,
            pod_ip,
        });
    }
    nodes
}
