//! End-to-end tests of the `flannel` CNI binary, run exactly as a runtime runs it, in
//! namespaces the tests create (a node namespace holding the bridge, one per pod).
//! Assertions read kernel state with `ip -j` and the IPAM store on disk.

mod common;

use common::*;

fn links_by_name(ns: &Netns) -> std::collections::HashMap<String, serde_json::Value> {
    ns.ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["ifname"].as_str().unwrap().to_string(), l.clone()))
        .collect()
}

fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    ns.ip_json(&["addr", "show", "dev", dev])
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn routes(ns: &Netns) -> Vec<(String, String)> {
    routes_of(ns, &["route", "show"])
}

fn routes6(ns: &Netns) -> Vec<(String, String)> {
    routes_of(ns, &["-6", "route", "show"])
}

/// `ip -j ARGS` as (dst, gateway) pairs.
fn routes_of(ns: &Netns, args: &[&str]) -> Vec<(String, String)> {
    ns.ip_json(args)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn add_check_del_every_version_programs_the_kernel() {
    if !require_root("add_check_del_every_version_programs_the_kernel") {
        return;
    }
    let node = Node::new("ver");
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let pod = Netns::new("vp");
        let cid = format!("ctr-{i}");
        let conf = node.conf(version);
        let res = node.add_ok(&cid, &pod, &conf);

        // result shape in the requested version
        assert_eq!(res["cniVersion"], *version);
        let ifaces = res["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 3);
        assert_eq!(ifaces[0]["name"], "cbr0");
        assert!(ifaces[1]["name"].as_str().unwrap().starts_with("veth"));
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], pod.path().display().to_string());
        assert!(ifaces[0].get("sandbox").is_none());
        let ip0 = &res["ips"][0];
        assert_eq!(ip0["interface"], 2);
        assert_eq!(ip0["gateway"], "10.244.1.1");
        assert_eq!(
            ip0.get("version").is_some(),
            !version.starts_with('1'),
            "ips[].version only below 1.0.0"
        );
        assert_eq!(
            ifaces[1].get("mtu").is_some(),
            *version == "1.1.0",
            "interface mtu only from 1.1.0"
        );
        let ip = result_ip(&res);
        assert_eq!(ip, format!("10.244.1.{}", i + 2), "round-robin from .2");
        let dsts: Vec<&str> = res["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dst"].as_str().unwrap())
            .collect();
        assert!(
            dsts.contains(&"10.244.0.0/16") && dsts.contains(&"0.0.0.0/0"),
            "{dsts:?}"
        );

        // node side: bridge with gateway, veth attached with hairpin, MTU
        let links = links_by_name(&node.ns);
        let br = &links["cbr0"];
        assert_eq!(br["linkinfo"]["info_kind"], "bridge");
        assert_eq!(
            br["address"], ifaces[0]["mac"],
            "result carries the bridge MAC"
        );
        assert_eq!(addrs(&node.ns, "cbr0"), vec!["10.244.1.1/24".to_string()]);
        let veth_name = ifaces[1]["name"].as_str().unwrap();
        let veth = &links[veth_name];
        assert_eq!(veth["master"], "cbr0");
        assert_eq!(veth["mtu"], 1450);
        assert_eq!(
            veth["linkinfo"]["info_slave_data"]["hairpin"], true,
            "{veth}"
        );
        assert_eq!(veth["address"], ifaces[1]["mac"]);
        let fwd = node.ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
        assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

        // pod side
        let plinks = links_by_name(&pod);
        assert_eq!(plinks["eth0"]["mtu"], 1450);
        assert_eq!(plinks["eth0"]["address"], ifaces[2]["mac"]);
        assert_eq!(plinks["eth0"]["linkinfo"]["info_kind"], "veth");
        assert!(
            plinks["lo"]["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "UP")
        );
        assert_eq!(addrs(&pod, "eth0"), vec![format!("{ip}/24")]);
        let r = routes(&pod);
        assert!(
            r.contains(&("default".into(), "10.244.1.1".into())),
            "{r:?}"
        );
        assert!(
            r.contains(&("10.244.0.0/16".into(), "10.244.1.1".into())),
            "{r:?}"
        );
        let arp_notify = pod.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]);
        assert_eq!(String::from_utf8_lossy(&arp_notify.stdout).trim(), "1");
        assert!(pod.ping("10.244.1.1"), "pod reaches its gateway");

        // IPAM store in the reference format
        let file = node.ipam_dir().join("cbr0").join(&ip);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            format!("{cid}\r\neth0").into_bytes()
        );

        // CHECK (0.4.0+) with prevResult
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = res.clone();
        if !version.starts_with("0.3") {
            let out = node.run("CHECK", &cid, Some(&pod.path()), "eth0", &with_prev);
            assert_eq!(out.code, 0, "CHECK {version}: {}", out.stdout);
            assert!(out.stdout.trim().is_empty());
        }

        // DEL, twice
        node.del_ok(&cid, Some(&pod.path()), &with_prev);
        assert!(!file.exists(), "IP released");
        assert!(
            !links_by_name(&node.ns).contains_key(veth_name),
            "host veth gone"
        );
        assert!(
            !pod.link_names().contains(&"eth0".to_string()),
            "pod eth0 gone"
        );
        node.del_ok(&cid, Some(&pod.path()), &with_prev);
    }
    assert!(node.reservations("cbr0").is_empty());
}

#[test]
fn three_pods_reach_each_other_and_dup_add_leaves_first_intact() {
    if !require_root("three_pods_reach_each_other_and_dup_add_leaves_first_intact") {
        return;
    }
    let node = Node::new("ping");
    let conf = node.conf("0.3.1");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("pp")).collect();
    let ips: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| result_ip(&node.add_ok(&format!("p{i}"), p, &conf)))
        .collect();
    for (i, p) in pods.iter().enumerate() {
        for (j, ip) in ips.iter().enumerate() {
            if i != j {
                assert!(p.ping(ip), "pod {i} -> pod {j} ({ip})");
            }
        }
    }
    // A second ADD for the same (container, ifname) fails and changes nothing.
    let before = node.reservations("cbr0");
    let links_before = node.ns.link_names();
    let out = node.run("ADD", "p0", Some(&pods[0].path()), "eth0", &conf);
    assert_ne!(out.code, 0);
    let err = out.json();
    assert!(err["msg"].as_str().unwrap().contains("duplicate"), "{err}");
    assert_eq!(node.reservations("cbr0"), before);
    assert_eq!(node.ns.link_names(), links_before);
    assert!(pods[1].ping(&ips[0]), "first attachment still works");
    for (i, pod) in pods.iter().enumerate() {
        node.del_ok(&format!("p{i}"), Some(&pod.path()), &conf);
    }
    assert!(node.reservations("cbr0").is_empty());
}

/// Polls `probe` every 5 ms until it gives `Ok`, failing the test after `timeout` with
/// `what` and the probe's last word.
fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match probe() {
            Ok(found) => return found,
            Err(last) => assert!(
                std::time::Instant::now() < deadline,
                "{what} not within {timeout:?}: {last}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The pod's IPv6 link-local address on `eth0`, once the kernel has added it (it follows the
/// carrier event, so it can trail ADD by a few ms): `(address, tentative)`.
fn pod_link_local(pod: &Netns) -> (String, bool) {
    wait_for(
        "a link-local address on eth0",
        std::time::Duration::from_secs(3),
        || {
            let out = pod.exec(&[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            match text.lines().find(|l| l.contains("fe80::")) {
                Some(line) => Ok((
                    line.split_whitespace()
                        .nth(3)
                        .unwrap_or_default()
                        .to_string(),
                    line.contains("tentative"),
                )),
                None => Err(text),
            }
        },
    )
}

/// [`pod_link_local`], polled for up to `within` until the address is no longer tentative:
/// the kernel clears the flag in its DAD work item, which runs just after the address is born
/// (at once with DAD off, after the ~1 s probe with DAD on), so a read in between still sees
/// it. Returns what the last read saw.
fn pod_link_local_after(pod: &Netns, within: std::time::Duration) -> (String, bool) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (addr, tentative) = pod_link_local(pod);
        if !tentative || std::time::Instant::now() >= deadline {
            return (addr, tentative);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A sysctl as seen inside `ns` (`KEY` with slashes, as under `/proc/sys`).
fn sysctl_in(ns: &Netns, key: &str) -> String {
    let out = ns.exec(&["cat", &format!("/proc/sys/{key}")]);
    assert!(
        out.status.success(),
        "read {key} in {}",
        ns.path().display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// IPv6 multicast packets `eth0` in `pod` has sent (`Ip6OutMcastPkts` of its
/// `/proc/net/dev_snmp6` counters).
fn ipv6_multicast_sent(pod: &Netns) -> u64 {
    let out = pod.exec(&["cat", "/proc/net/dev_snmp6/eth0"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutMcastPkts"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Ip6OutMcastPkts for eth0 in {}", pod.path().display()))
}

/// The flannel delegate with `podIPv6LinkLocal`: pods without an IPv6 address keep the
/// kernel's IPv6, as with flannel and the reference bridge plugin.
fn with_link_local(conf: &serde_json::Value) -> serde_json::Value {
    let mut conf = conf.clone();
    conf["delegate"]["podIPv6LinkLocal"] = serde_json::json!(true);
    conf
}

#[test]
fn an_ipv4_only_pod_has_no_ipv6_unless_asked_for() {
    if !require_root("an_ipv4_only_pod_has_no_ipv6_unless_asked_for") {
        return;
    }
    let node = Node::new("v6off");
    let conf = node.conf("1.0.0");
    let pod = Netns::new("vo");
    node.add_ok("vo", &pod, &conf);
    assert_eq!(sysctl_in(&pod, "net/ipv6/conf/eth0/disable_ipv6"), "1");
    let out = pod.exec(&["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "no IPv6 address"
    );
    // Only eth0: loopback keeps ::1 for programs that bind it.
    assert_eq!(sysctl_in(&pod, "net/ipv6/conf/lo/disable_ipv6"), "0");
    // IPv4 works as before: the pod reaches its gateway.
    let ping = pod.exec(&["ping", "-c1", "-W2", "-q", "10.244.1.1"]);
    assert!(ping.status.success(), "IPv4 to the gateway");
    // A pod that keeps IPv6 (`podIPv6LinkLocal`) sends multicast at once (an MLD report for
    // its link-local address's group, a router solicitation), which the bridge floods to
    // every port; the default pod has sent none by then.
    let kept = with_link_local(&conf);
    let chatty = Netns::new("vk");
    node.add_ok("vk", &chatty, &kept);
    wait_for(
        "IPv6 multicast from the pod that keeps IPv6",
        std::time::Duration::from_secs(3),
        || match ipv6_multicast_sent(&chatty) {
            0 => Err("none yet".to_string()),
            n => Ok(n),
        },
    );
    assert_eq!(
        ipv6_multicast_sent(&pod),
        0,
        "IPv6 multicast from an IPv4-only pod"
    );
    assert_eq!(sysctl_in(&node.ns, "net/ipv6/conf/cbr0/disable_ipv6"), "0");
    node.del_ok("vo", Some(&pod.path()), &conf);
    node.del_ok("vk", Some(&chatty.path()), &kept);
    assert!(node.reservations("cbr0").is_empty());
}

#[test]
fn ipv6_dad_on_the_pod_follows_enabledad_like_the_reference() {
    if !require_root("ipv6_dad_on_the_pod_follows_enabledad_like_the_reference") {
        return;
    }
    let node = Node::new("dad");
    // IPv6 kept on (`podIPv6LinkLocal`): DAD off, so the link-local address is usable at once.
    let conf = with_link_local(&node.conf("1.0.0"));
    let quiet = Netns::new("dq");
    node.add_ok("dq", &quiet, &conf);
    assert_eq!(sysctl_in(&quiet, "net/ipv6/conf/eth0/disable_ipv6"), "0");
    assert_eq!(sysctl_in(&quiet, "net/ipv6/conf/eth0/accept_dad"), "0");
    // Usable within 200 ms (the DAD work item, no probe), where DAD on takes over 1 s.
    let (addr, tentative) = pod_link_local_after(&quiet, std::time::Duration::from_millis(200));
    assert!(!tentative, "DAD off: {addr} is not tentative");
    // `enabledad: true`: DAD on with enhanced DAD (a hairpin echo of the probe is not a
    // duplicate); the address stays tentative for the probe's ~1 s.
    let mut dad_conf = conf.clone();
    dad_conf["delegate"]["enabledad"] = serde_json::json!(true);
    let probing = Netns::new("dp");
    node.add_ok("dp", &probing, &dad_conf);
    assert_eq!(sysctl_in(&probing, "net/ipv6/conf/eth0/accept_dad"), "1");
    assert_eq!(sysctl_in(&probing, "net/ipv6/conf/eth0/enhanced_dad"), "1");
    let (addr, tentative) = pod_link_local(&probing);
    assert!(tentative, "DAD on: {addr} starts tentative");
    node.del_ok("dq", Some(&quiet.path()), &conf);
    node.del_ok("dp", Some(&probing.path()), &dad_conf);
    assert!(node.reservations("cbr0").is_empty());
}

/// Sends one ICMPv6 Router Advertisement (router lifetime 1800 s, no options) from `pod`'s
/// `eth0` to ff02::1 — link scope, so it never leaves the test bridge.
fn send_router_advertisement(pod: &Netns) {
    let out = pod.exec(&["python3", "-c", RA_SENDER]);
    assert!(
        out.status.success(),
        "send RA: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python behind [`send_router_advertisement`].
const RA_SENDER: &str = r#"
import socket, struct
idx = socket.if_nametoindex("eth0")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
s.sendto(struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0), ("ff02::1", 0, 0, idx))
"#;

fn ipv6_default_routes(ns: &Netns) -> String {
    let out = ns.exec(&["ip", "-6", "route", "show", "default"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_pod_cannot_become_the_nodes_ipv6_router() {
    if !require_root("a_pod_cannot_become_the_nodes_ipv6_router") {
        return;
    }
    let node = Node::new("ra");
    let conf = node.conf("1.0.0");
    // Pods that keep the kernel's IPv6 (`podIPv6LinkLocal`, flannel's behaviour): one can send
    // router advertisements, the other takes them.
    let kept = with_link_local(&conf);
    let rogue = Netns::new("rr");
    let witness = Netns::new("rw");
    let guarded = Netns::new("rg");
    node.add_ok("rr", &rogue, &kept);
    node.add_ok("rw", &witness, &kept);
    node.add_ok("rg", &guarded, &conf);
    assert_eq!(sysctl_in(&node.ns, "net/ipv6/conf/cbr0/accept_ra"), "0");
    // The RA needs a usable link-local source address (immediate: DAD is off).
    let (addr, tentative) = pod_link_local(&rogue);
    assert!(!tentative, "{addr}");
    pod_link_local(&witness);
    send_router_advertisement(&rogue);
    // The witness pod (kernel defaults) takes the advertisement: it did cross the bridge,
    // and a pod is now the other pod's IPv6 router. This is why IPv6 is off by default on
    // pods that have no IPv6 address.
    wait_for(
        "the RA reaching the other pod",
        std::time::Duration::from_secs(3),
        || match ipv6_default_routes(&witness) {
            routes if routes.is_empty() => Err("no IPv6 default route in the witness".into()),
            _ => Ok(()),
        },
    );
    // The node's bridge saw it as well, and ignored it; so did the pod with the default
    // config, which has no IPv6 on its interface at all.
    assert_eq!(ipv6_default_routes(&node.ns), "", "node took a pod's RA");
    assert_eq!(
        ipv6_default_routes(&guarded),
        "",
        "a default pod took a pod's RA"
    );
    // And such a pod cannot send one: no IPv6 source on its interface.
    let out = guarded.exec(&["python3", "-c", RA_SENDER]);
    assert!(!out.status.success(), "a pod with IPv6 off sent an RA");
    // A bridge with the kernel default (made by hand or by an older version) is fixed by the
    // next ADD.
    let out = node.ns.exec(&[
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv6/conf/cbr0/accept_ra",
    ]);
    assert!(out.status.success(), "reset accept_ra");
    assert_eq!(sysctl_in(&node.ns, "net/ipv6/conf/cbr0/accept_ra"), "1");
    let late = Netns::new("rl");
    node.add_ok("rl", &late, &conf);
    assert_eq!(sysctl_in(&node.ns, "net/ipv6/conf/cbr0/accept_ra"), "0");
    node.del_ok("rr", Some(&rogue.path()), &kept);
    node.del_ok("rw", Some(&witness.path()), &kept);
    node.del_ok("rg", Some(&guarded.path()), &conf);
    node.del_ok("rl", Some(&late.path()), &conf);
}

#[test]
fn a_dual_stack_pod_ignores_router_advertisements() {
    if !require_root("a_dual_stack_pod_ignores_router_advertisements") {
        return;
    }
    let node = Node::new("dsra");
    node.write_dual_stack_subnet_env();
    let conf = node.conf("1.0.0");
    let rogue = Netns::new("dr");
    let victim = Netns::new("dv");
    node.add_ok("dr", &rogue, &conf);
    node.add_ok("dv", &victim, &conf);
    assert_eq!(sysctl_in(&victim, "net/ipv6/conf/eth0/accept_ra"), "0");
    let (addr, tentative) = pod_link_local(&rogue);
    assert!(!tentative, "{addr}");
    pod_link_local(&victim);
    let routes_before = ipv6_default_routes(&victim);
    assert!(
        routes_before.contains("fd00:10:244:1::1") && !routes_before.contains("proto ra"),
        "{routes_before}"
    );
    send_router_advertisement(&rogue);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        ipv6_default_routes(&victim),
        routes_before,
        "the victim took the RA"
    );
    // The same RA is taken once the victim accepts them (kernel default): it did arrive.
    let out = victim.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1"]);
    assert!(out.status.success(), "accept_ra=1 in the victim");
    send_router_advertisement(&rogue);
    wait_for(
        "the RA taken by a pod that accepts them",
        std::time::Duration::from_secs(3),
        || match ipv6_default_routes(&victim) {
            r if r.contains("proto ra") => Ok(()),
            r => Err(r),
        },
    );
    node.del_ok("dr", Some(&rogue.path()), &conf);
    node.del_ok("dv", Some(&victim.path()), &conf);
}

#[test]
fn del_edge_cases_always_succeed_and_release() {
    if !require_root("del_edge_cases_always_succeed_and_release") {
        return;
    }
    let node = Node::new("del");
    let conf = node.conf("1.0.0");
    // unknown container, no netns
    node.del_ok("never-added", None, &conf);
    // netns deleted before DEL
    let mut pod = Netns::new("dp");
    let res = node.add_ok("gone", &pod, &conf);
    let path = pod.path();
    let veth = res["interfaces"][1]["name"].as_str().unwrap().to_string();
    pod.delete();
    node.del_ok("gone", Some(&path), &conf);
    assert!(
        node.reservations("cbr0").is_empty(),
        "IP released although the netns is gone"
    );
    assert!(!node.ns.link_names().contains(&veth));
    // empty CNI_NETNS while the pod still exists: the veth is removed by its host name
    let pod2 = Netns::new("dp");
    node.add_ok("empty", &pod2, &conf);
    node.del_ok("empty", None, &conf);
    assert!(
        !pod2.link_names().contains(&"eth0".to_string()),
        "pod end removed with the host end"
    );
    assert!(node.reservations("cbr0").is_empty());
    // subnet.env missing: DEL does not need it
    let pod3 = Netns::new("dp");
    node.add_ok("nosubnet", &pod3, &conf);
    std::fs::remove_file(node.subnet_file()).unwrap();
    node.del_ok("nosubnet", Some(&pod3.path()), &conf);
    node.del_ok("nosubnet", Some(&pod3.path()), &conf);
    assert!(node.reservations("cbr0").is_empty());
}

#[test]
fn failed_add_rolls_back_everything() {
    if !require_root("failed_add_rolls_back_everything") {
        return;
    }
    let node = Node::new("rb");
    let conf = node.conf("1.0.0");
    let pod = Netns::new("rp");
    // Occupy the name eth0 inside the pod so the veth creation fails after IPAM.
    ip(&[
        "-n", &pod.name, "link", "add", "eth0", "type", "veth", "peer", "name", "blocker",
    ]);
    let out = node.run("ADD", "rb1", Some(&pod.path()), "eth0", &conf);
    assert_ne!(out.code, 0);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{}",
        out.stdout
    );
    assert!(
        node.reservations("cbr0").is_empty(),
        "IP released on rollback"
    );
    let host_veths: Vec<String> = node
        .ns
        .link_names()
        .into_iter()
        .filter(|n| n.starts_with("veth"))
        .collect();
    assert!(host_veths.is_empty(), "no veth left: {host_veths:?}");
    // The next ADD for another pod still works and gets the first address.
    let pod2 = Netns::new("rp");
    let res = node.add_ok("rb2", &pod2, &conf);
    assert_eq!(
        result_ip(&res),
        "10.244.1.3",
        "round-robin continues after the released .2"
    );
    node.del_ok("rb2", Some(&pod2.path()), &conf);
}

#[test]
fn bad_input_changes_nothing() {
    if !require_root("bad_input_changes_nothing") {
        return;
    }
    let node = Node::new("bad");
    let pod = Netns::new("bp");
    /// (stdin config, env overrides, expected CNI error code)
    type BadCase<'a> = (serde_json::Value, Vec<(&'a str, &'a str)>, u64);
    let cases: Vec<BadCase> = vec![
        (
            serde_json::json!({"cniVersion":"9.9.9","name":"cbr0"}),
            vec![],
            1,
        ),
        (
            serde_json::json!({"cniVersion":"1.0.0","name":"../../etc"}),
            vec![],
            7,
        ),
        (
            serde_json::json!({"cniVersion":"1.0.0","name":"cbr0","delegate":{"name":"x"}}),
            vec![],
            7,
        ),
        (
            node.conf("1.0.0"),
            vec![("CNI_IFNAME", "this-is-too-long-0")],
            4,
        ),
        (node.conf("1.0.0"), vec![("CNI_CONTAINERID", "-bad")], 4),
    ];
    for (conf, env, want) in cases {
        let stdin = conf.to_string();
        let out = run_in_ns(&node.ns, &stdin, |c| {
            c.env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", "ok1")
                .env("CNI_NETNS", pod.path())
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni");
            for (k, v) in &env {
                c.env(k, v);
            }
        });
        assert_eq!(out.err_code(), want, "{conf} {env:?}: {}", out.stdout);
        assert!(!out.json()["msg"].as_str().unwrap().is_empty());
    }
    // malformed JSON
    let out = run_in_ns(&node.ns, "{not json", |c| {
        c.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "ok1")
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni");
    });
    assert_eq!(out.err_code(), 6);
    // subnet.env missing: code 11 naming the path
    std::fs::remove_file(node.subnet_file()).unwrap();
    let out = node.run("ADD", "ok1", Some(&pod.path()), "eth0", &node.conf("1.0.0"));
    assert_eq!(out.err_code(), 11);
    assert!(
        out.stdout
            .contains(&node.subnet_file().display().to_string())
    );
    // nothing was created anywhere
    assert_eq!(node.ns.link_names(), vec!["lo".to_string()]);
    assert_eq!(pod.link_names(), vec!["lo".to_string()]);
    assert!(!node.ipam_dir().exists());
}

#[test]
fn check_detects_drift() {
    if !require_root("check_detects_drift") {
        return;
    }
    let node = Node::new("chk");
    let conf = node.conf("1.0.0");
    let pod = Netns::new("cp");
    let res = node.add_ok("c1", &pod, &conf);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = res.clone();
    assert_eq!(
        node.run("CHECK", "c1", Some(&pod.path()), "eth0", &with_prev)
            .code,
        0
    );
    // without prevResult
    let out = node.run("CHECK", "c1", Some(&pod.path()), "eth0", &conf);
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains("prevResult"));
    // a deleted route is reported by name
    ip(&["-n", &pod.name, "route", "del", "10.244.0.0/16"]);
    let out = node.run("CHECK", "c1", Some(&pod.path()), "eth0", &with_prev);
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains("10.244.0.0/16"), "{}", out.stdout);
    // a removed address too
    ip(&[
        "-n",
        &pod.name,
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        "10.244.1.1",
    ]);
    assert_eq!(
        node.run("CHECK", "c1", Some(&pod.path()), "eth0", &with_prev)
            .code,
        0
    );
    let ip_cidr = res["ips"][0]["address"].as_str().unwrap().to_string();
    ip(&["-n", &pod.name, "addr", "del", &ip_cidr, "dev", "eth0"]);
    let out = node.run("CHECK", "c1", Some(&pod.path()), "eth0", &with_prev);
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains(&ip_cidr), "{}", out.stdout);
    node.del_ok("c1", Some(&pod.path()), &with_prev);
    // after DEL the reservation is gone and CHECK says so
    let out = node.run("CHECK", "c1", Some(&pod.path()), "eth0", &with_prev);
    assert_ne!(out.code, 0);
}

#[test]
fn gc_and_status() {
    if !require_root("gc_and_status") {
        return;
    }
    let node = Node::new("gc");
    let conf = node.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("gp")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.add_ok(&format!("g{i}"), p, &conf);
    }
    assert_eq!(node.reservations("cbr0").len(), 3);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "g1", "ifname": "eth0"}]);
    let out = node.run("GC", "", None, "", &gc);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let left = node.reservations("cbr0");
    assert_eq!(left.len(), 1);
    let owner = std::fs::read_to_string(node.ipam_dir().join("cbr0").join(&left[0])).unwrap();
    assert_eq!(owner, "g1\r\neth0");

    // STATUS: ready
    assert_eq!(node.run("STATUS", "", None, "", &conf).code, 0);
    // STATUS: exhausted range -> 50
    let mut tiny = conf.clone();
    tiny["name"] = "tiny".into();
    tiny["ipam"]["ranges"] = serde_json::json!([[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.200", "rangeEnd": "10.244.1.200"}]]);
    assert_eq!(node.run("STATUS", "", None, "", &tiny).code, 0);
    let p = Netns::new("gp");
    let res = node.add_ok("t1", &p, &tiny);
    assert_eq!(result_ip(&res), "10.244.1.200");
    let out = node.run("STATUS", "", None, "", &tiny);
    assert_eq!(out.err_code(), 50);
    node.del_ok("t1", Some(&p.path()), &tiny);
    // STATUS: subnet.env missing -> 50
    std::fs::write(node.subnet_file(), "garbage").unwrap();
    assert_eq!(node.run("STATUS", "", None, "", &conf).err_code(), 50);
    std::fs::remove_file(node.subnet_file()).unwrap();
    let out = node.run("STATUS", "", None, "", &conf);
    assert_eq!(out.err_code(), 50);
    for (i, p) in pods.iter().enumerate() {
        node.del_ok(&format!("g{i}"), Some(&p.path()), &conf);
    }
}

#[test]
fn restarted_pod_with_same_ip_is_reachable_at_once() {
    if !require_root("restarted_pod_with_same_ip_is_reachable_at_once") {
        return;
    }
    let node = Node::new("garp");
    let conf = node.conf("1.0.0");
    let a = Netns::new("ga");
    node.add_ok("peer", &a, &conf);
    let mut b = Netns::new("gb");
    let res = node.add_ok("restart", &b, &conf);
    let ip_b = result_ip(&res);
    let mac1 = res["interfaces"][2]["mac"].as_str().unwrap().to_string();
    // The MAC is derived from the IPv4 address: 0a:58:<ip>.
    let octets: Vec<String> = ip_b
        .split('.')
        .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
        .collect();
    assert_eq!(mac1, format!("0a:58:{}", octets.join(":")));
    assert!(a.ping(&ip_b));
    assert_eq!(a.neigh_mac(&ip_b).as_deref(), Some(mac1.as_str()));

    // ADD of the restarted pod (same container id, same IP) with extra CNI_ARGS.
    let readd = |ns: &Netns, args: &str| -> serde_json::Value {
        let args = format!("IgnoreUnknown=1;IP={ip_b}{args}");
        let out = node.run_env(
            "ADD",
            "restart",
            Some(&ns.path()),
            "eth0",
            &conf,
            &[("CNI_ARGS", &args)],
        );
        assert_eq!(out.code, 0, "{}", out.stdout);
        let res = out.json();
        assert_eq!(result_ip(&res), ip_b);
        res
    };
    // The MAC the peer caches for the pod once it equals `mac` (or after 200 ms). The pod has
    // sent nothing yet: only an announcement can change the peer's entry.
    let peer_entry_becomes = |mac: &str| -> Option<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
        loop {
            let cached = a.neigh_mac(&ip_b);
            if cached.as_deref() == Some(mac) || std::time::Instant::now() > deadline {
                return cached;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let reachable_at_once = |what: &str| {
        let t0 = std::time::Instant::now();
        assert!(a.ping(&ip_b), "{what}: reachable on the first ping");
        assert!(t0.elapsed() < std::time::Duration::from_secs(1), "{what}");
    };

    // 1. The pod dies and comes back with the same IP in a new namespace: same MAC, so the
    //    peer's cached entry is still right.
    node.del_ok("restart", Some(&b.path()), &conf);
    b.delete();
    let b2 = Netns::new("gb");
    let res2 = readd(&b2, "");
    assert_eq!(res2["interfaces"][2]["mac"].as_str().unwrap(), mac1);
    reachable_at_once("restarted pod");

    // 2. It comes back once more with the same IP but a different MAC (requested by the
    //    runtime, or a node that switched from the reference plugins): the gratuitous ARP
    //    must update the peer's entry before ADD returns.
    node.del_ok("restart", Some(&b2.path()), &conf);
    drop(b2);
    let b3 = Netns::new("gb");
    let new_mac = "02:00:00:00:be:ef";
    let res3 = readd(&b3, &format!(";MAC={new_mac}"));
    assert_eq!(res3["interfaces"][2]["mac"].as_str().unwrap(), new_mac);
    assert_eq!(
        peer_entry_becomes(new_mac).as_deref(),
        Some(new_mac),
        "peer learned the new MAC from the announcement"
    );
    reachable_at_once("pod with a new MAC");

    // 3. Back to the derived MAC while the node (which talked to the pod) and the peer still
    //    cache the requested one: the node's stale entry triggers the announcement.
    assert!(node.ns.ping(&ip_b));
    node.del_ok("restart", Some(&b3.path()), &conf);
    drop(b3);
    let b4 = Netns::new("gb");
    let res4 = readd(&b4, "");
    assert_eq!(res4["interfaces"][2]["mac"].as_str().unwrap(), mac1);
    assert_eq!(
        peer_entry_becomes(&mac1).as_deref(),
        Some(mac1.as_str()),
        "peer switched back to the derived MAC"
    );
    reachable_at_once("pod back on the derived MAC");
    node.del_ok("restart", Some(&b4.path()), &conf);
    node.del_ok("peer", Some(&a.path()), &conf);
}

#[test]
fn masquerade_is_one_nft_transaction_and_is_removed() {
    if !require_root("masquerade_is_one_nft_transaction_and_is_removed") {
        return;
    }
    let node = Node::new("masq");
    node.write_subnet_env("10.244.0.0/16", "10.244.1.1/24", 1450, false); // flanneld not masquerading -> per-pod ipMasq
    let conf = node.conf("1.0.0");
    let pod = Netns::new("mp");
    let res = node.add_ok("m1", &pod, &conf);
    let ip = result_ip(&res);
    let ruleset =
        String::from_utf8_lossy(&node.ns.exec(&["nft", "list", "ruleset"]).stdout).into_owned();
    assert!(ruleset.contains(&ip), "{ruleset}");
    assert!(ruleset.contains("masquerade"), "{ruleset}");
    assert!(ruleset.contains("ip daddr != 10.244.1.0/24"), "{ruleset}");
    assert!(ruleset.contains("ip daddr != 224.0.0.0/4"), "{ruleset}");
    let mut prev = conf.clone();
    prev["prevResult"] = res;
    assert_eq!(
        node.run("CHECK", "m1", Some(&pod.path()), "eth0", &prev)
            .code,
        0
    );
    node.del_ok("m1", Some(&pod.path()), &prev);
    let ruleset =
        String::from_utf8_lossy(&node.ns.exec(&["nft", "list", "ruleset"]).stdout).into_owned();
    assert!(!ruleset.contains(&ip), "element removed: {ruleset}");
    node.del_ok("m1", Some(&pod.path()), &prev);
}

#[test]
fn delegated_ipam_runs_the_named_plugin() {
    if !require_root("delegated_ipam_runs_the_named_plugin") {
        return;
    }
    let reference = std::path::Path::new("/usr/lib/cni/host-local");
    if !reference.exists() {
        flannel_testkit::skip_or_panic("no /usr/lib/cni/host-local");
        return;
    }
    let node = Node::new("dlg");
    let bin = node.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(reference, bin.join("ref-ipam")).unwrap();
    let mut conf = node.conf("1.0.0");
    conf["ipam"] =
        serde_json::json!({"type": "ref-ipam", "dataDir": node.dir.path().join("refstore")});
    let pod = Netns::new("dlp");
    let path = bin.display().to_string();
    let out = node.run_env(
        "ADD",
        "d1",
        Some(&pod.path()),
        "eth0",
        &conf,
        &[("CNI_PATH", &path)],
    );
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let res = out.json();
    assert_eq!(result_ip(&res), "10.244.1.2");
    let file = node.dir.path().join("refstore/cbr0/10.244.1.2");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "d1\r\neth0");
    assert!(pod.ping("10.244.1.1"));
    let out = node.run_env(
        "DEL",
        "d1",
        Some(&pod.path()),
        "eth0",
        &conf,
        &[("CNI_PATH", &path)],
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(!file.exists());
}

#[test]
fn concurrent_adds_64_pods_16_parallel() {
    if !require_root("concurrent_adds_64_pods_16_parallel") {
        return;
    }
    let node = std::sync::Arc::new(Node::new("conc"));
    let pods: std::sync::Arc<Vec<Netns>> =
        std::sync::Arc::new((0..64).map(|_| Netns::new("cc")).collect());
    let conf = node.conf("0.3.1");
    let run_all = |cmd: &'static str| -> Vec<PluginOut> {
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..16 {
            let (node, pods, conf, next) = (node.clone(), pods.clone(), conf.clone(), next.clone());
            handles.push(std::thread::spawn(move || {
                let mut outs = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= 64 {
                        break outs;
                    }
                    outs.push(node.run(
                        cmd,
                        &format!("c{i}"),
                        Some(&pods[i].path()),
                        "eth0",
                        &conf,
                    ));
                }
            }));
        }
        // Join every worker before re-raising a panic: a worker left running would keep its
        // clone of `pods` past the end of the test, and its namespaces would never be deleted.
        let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        joined
            .into_iter()
            .flat_map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    };
    let adds = run_all("ADD");
    let mut ips = std::collections::HashSet::new();
    for o in &adds {
        assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
        ips.insert(result_ip(&o.json()));
    }
    assert_eq!(ips.len(), 64, "64 distinct IPs");
    assert_eq!(node.reservations("cbr0").len(), 64);
    let ports = node.ip_ports();
    assert_eq!(ports, 64);
    for o in run_all("DEL") {
        assert_eq!(o.code, 0, "{}", o.stdout);
    }
    assert!(node.reservations("cbr0").is_empty(), "no reservation left");
    assert_eq!(node.ip_ports(), 0, "no veth left");
}

trait Ports {
    fn ip_ports(&self) -> usize;
}
impl Ports for Node {
    fn ip_ports(&self) -> usize {
        self.ns
            .ip_json(&["link", "show", "master", "cbr0"])
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0)
    }
}

fn ping6(from: &Netns, dst: &str) -> bool {
    from.exec(&["ping", "-6", "-c1", "-W2", "-q", dst])
        .status
        .success()
}

/// The `ips` of a result as (address/prefix, gateway).
fn result_ips(res: &serde_json::Value) -> Vec<(String, String)> {
    res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["address"].as_str().unwrap().to_string(),
                i["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn dual_stack_pods_get_an_address_gateway_and_default_route_per_family() {
    if !require_root("dual_stack_pods_get_an_address_gateway_and_default_route_per_family") {
        return;
    }
    let node = Node::new("ds");
    node.write_dual_stack_subnet_env();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let conf = node.conf(version);
        let (a, b) = (Netns::new("dsa"), Netns::new("dsb"));
        let (ca, cb) = (format!("dsa-{i}"), format!("dsb-{i}"));
        let ra = node.add_ok(&ca, &a, &conf);
        let rb = node.add_ok(&cb, &b, &conf);

        // Result: IPv4 then IPv6 (flannel's range order), each with its gateway, on eth0.
        let ips = result_ips(&ra);
        assert_eq!(ips.len(), 2, "{ra}");
        assert!(
            ips[0].0.starts_with("10.244.1.") && ips[0].0.ends_with("/24"),
            "{ips:?}"
        );
        assert_eq!(ips[0].1, "10.244.1.1");
        assert!(
            ips[1].0.starts_with("fd00:10:244:1::") && ips[1].0.ends_with("/64"),
            "{ips:?}"
        );
        assert_eq!(ips[1].1, "fd00:10:244:1::1");
        assert!(
            ra["ips"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["interface"] == 2)
        );
        if !version.starts_with('1') {
            assert_eq!(
                (
                    ra["ips"][0]["version"].as_str(),
                    ra["ips"][1]["version"].as_str()
                ),
                (Some("4"), Some("6"))
            );
        }
        let dsts: Vec<&str> = ra["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dst"].as_str().unwrap())
            .collect();
        for want in ["0.0.0.0/0", "::/0", "10.244.0.0/16", "fd00:10:244::/56"] {
            assert!(dsts.contains(&want), "{want} not in {dsts:?}");
        }

        // Node: the bridge carries both gateways; IPv6 forwarding on.
        assert_eq!(
            addrs(&node.ns, "cbr0"),
            vec![
                "10.244.1.1/24".to_string(),
                "fd00:10:244:1::1/64".to_string()
            ]
        );
        assert_eq!(sysctl_in(&node.ns, "net/ipv6/conf/all/forwarding"), "1");

        // Pod: both addresses, a default route per family via the bridge.
        let (ipa4, ipa6) = (
            ips[0].0.split('/').next().unwrap().to_string(),
            ips[1].0.split('/').next().unwrap().to_string(),
        );
        assert_eq!(addrs(&a, "eth0"), vec![ips[0].0.clone(), ips[1].0.clone()]);
        assert!(routes(&a).contains(&("default".into(), "10.244.1.1".into())));
        assert!(
            routes6(&a).contains(&("default".into(), "fd00:10:244:1::1".into())),
            "{:?}",
            routes6(&a)
        );
        // Both families work at once (DAD is off: no wait for the addresses).
        assert!(ping6(&a, "fd00:10:244:1::1"), "pod -> IPv6 gateway");
        let ipb6 = result_ips(&rb)[1].0.split('/').next().unwrap().to_string();
        assert!(ping6(&a, &ipb6), "pod a -> pod b over IPv6");
        assert!(b.ping(&ipa4), "pod b -> pod a over IPv4");

        // host-local: both addresses in the network's store, reference format.
        let res = node.reservations("cbr0");
        assert!(res.contains(&ipa4) && res.contains(&ipa6), "{res:?}");
        assert_eq!(
            std::fs::read(node.ipam_dir().join("cbr0").join(&ipa6)).unwrap(),
            format!("{ca}\r\neth0").into_bytes()
        );

        // CHECK sees both families.
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = ra.clone();
        if !version.starts_with("0.3") {
            let out = node.run("CHECK", &ca, Some(&a.path()), "eth0", &with_prev);
            assert_eq!(out.code, 0, "CHECK {version}: {}", out.stdout);
            // Drift in the IPv6 half is caught: remove the pod's IPv6 default route.
            a.exec(&["ip", "-6", "route", "del", "default"]);
            let out = node.run("CHECK", &ca, Some(&a.path()), "eth0", &with_prev);
            assert_ne!(
                out.code, 0,
                "CHECK {version} missed a lost IPv6 default route"
            );
        }
        node.del_ok(&ca, Some(&a.path()), &with_prev);
        node.del_ok(&cb, Some(&b.path()), &conf);
    }
    assert!(node.reservations("cbr0").is_empty());
}

#[test]
fn ipv6_only_pods_get_only_ipv6() {
    if !require_root("ipv6_only_pods_get_only_ipv6") {
        return;
    }
    let node = Node::new("v6o");
    node.write_ipv6_only_subnet_env();
    let conf = node.conf("1.0.0");
    let (a, b) = (Netns::new("v6a"), Netns::new("v6b"));
    let ra = node.add_ok("v6a", &a, &conf);
    let rb = node.add_ok("v6b", &b, &conf);
    let ips = result_ips(&ra);
    assert_eq!(ips.len(), 1, "{ra}");
    assert_eq!(ips[0].1, "fd00:10:244:1::1");
    let dsts: Vec<&str> = ra["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert!(
        dsts.contains(&"::/0") && dsts.contains(&"fd00:10:244::/56"),
        "{dsts:?}"
    );
    assert!(
        !dsts.iter().any(|d| d.contains('.')),
        "no IPv4 route: {dsts:?}"
    );
    assert_eq!(
        addrs(&node.ns, "cbr0"),
        vec!["fd00:10:244:1::1/64".to_string()]
    );
    assert_eq!(addrs(&a, "eth0"), vec![ips[0].0.clone()]);
    let ipb = result_ips(&rb)[0].0.split('/').next().unwrap().to_string();
    assert!(ping6(&a, &ipb), "pod a -> pod b");
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = ra.clone();
    let out = node.run("CHECK", "v6a", Some(&a.path()), "eth0", &with_prev);
    assert_eq!(out.code, 0, "CHECK: {}", out.stdout);
    node.del_ok("v6a", Some(&a.path()), &with_prev);
    node.del_ok("v6b", Some(&b.path()), &conf);
    assert!(node.reservations("cbr0").is_empty());
}

#[test]
fn dual_stack_gc_releases_both_families_and_status_reads_the_ipv6_keys() {
    if !require_root("dual_stack_gc_releases_both_families_and_status_reads_the_ipv6_keys") {
        return;
    }
    let node = Node::new("dgc");
    node.write_dual_stack_subnet_env();
    let conf = node.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("dgp")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.add_ok(&format!("d{i}"), p, &conf);
    }
    assert_eq!(
        node.reservations("cbr0").len(),
        6,
        "one address per family per pod"
    );
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "d1", "ifname": "eth0"}]);
    let out = node.run("GC", "", None, "", &gc);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let left = node.reservations("cbr0");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|a| a.contains(':')) && left.iter().any(|a| a.contains('.')));
    for ip in &left {
        let owner = std::fs::read_to_string(node.ipam_dir().join("cbr0").join(ip)).unwrap();
        assert_eq!(owner, "d1\r\neth0");
    }
    assert_eq!(node.run("STATUS", "", None, "", &conf).code, 0);
    // IPv6-only subnet.env: still ready; a broken IPv6 key is not.
    node.write_ipv6_only_subnet_env();
    assert_eq!(node.run("STATUS", "", None, "", &conf).code, 0);
    std::fs::write(
        node.subnet_file(),
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=zz::/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    assert_eq!(node.run("STATUS", "", None, "", &conf).err_code(), 50);
    node.write_dual_stack_subnet_env();
    for (i, p) in pods.iter().enumerate() {
        node.del_ok(&format!("d{i}"), Some(&p.path()), &conf);
    }
    assert!(node.reservations("cbr0").is_empty());
}
