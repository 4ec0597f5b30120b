//! Crash injection: the plugin as installed, SIGKILLed at a random instant of ADD — as a
//! runtime does on a timeout, an OOM kill or a node shutdown — then DEL, and in every fifth
//! trial DEL + ADD + DEL again, as runtimes retry; and SIGKILLed at a random instant of DEL,
//! then DEL again. After each trial nothing may be left: no reservation, no host veth, no
//! masquerade entry, no interface in the pod.
//!
//! `every_crash_point_is_cleaned_by_del` is the deterministic variant: the debug build of the
//! plugin SIGKILLs itself at each named point between two state changes
//! (`ipam::fault::POINTS`, chosen by `FLANNEL_CNI_FAULT`), so every window is hit, not only
//! the likely ones.
//!
//! The kill delays are spread uniformly over 1.3× the measured length of an uninterrupted ADD
//! (the median of five),
//! so every phase (config, IPAM, veth, addresses, routes, masquerade) is hit. Trials:
//! `CRASH_TRIALS` (default 300; `scripts/bench-crash.sh` runs thousands).

use std::time::{Duration, Instant};

mod common;
use common::{Netns, Node, require_root, spawn_bin_in_ns, spawn_in_ns};

/// A small xorshift generator: reproducible delays from `CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Everything a pod of `node` could leave behind, as a list of findings (empty = clean).
fn leftovers(node: &Node, pod: &Netns) -> Vec<String> {
    let mut found = Vec::new();
    for r in node.reservations("cbr0") {
        found.push(format!("reservation {r}"));
    }
    for l in node.ns.link_names() {
        if l.starts_with("veth") {
            found.push(format!("host veth {l}"));
        }
    }
    let ruleset = node.ns.exec(&["nft", "list", "ruleset"]);
    let text = String::from_utf8_lossy(&ruleset.stdout);
    // The per-network set of masqueraded pods must be empty again.
    if text.contains("elements =") {
        found.push(format!("masquerade entry: {text}"));
    }
    for l in pod.link_names() {
        if l != "lo" {
            found.push(format!("pod interface {l}"));
        }
    }
    found
}

fn run(node: &Node, cmd: &str, cid: &str, pod: &Netns, conf: &serde_json::Value) -> i32 {
    node.run(cmd, cid, Some(&pod.path()), "eth0", conf).code
}

/// Runs `cmd` and SIGKILLs it after `delay` unless it finished; returns whether it was killed.
fn kill_after(
    node: &Node,
    cmd: &str,
    cid: &str,
    pod: &Netns,
    stdin: &str,
    delay: Duration,
) -> bool {
    let path = pod.path();
    let mut child = spawn_in_ns(&node.ns, stdin, |c| {
        c.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", &path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni");
    });
    std::thread::sleep(delay);
    let killed = match child.try_wait().expect("try_wait") {
        Some(_) => false,
        None => {
            child.kill().expect("SIGKILL");
            true
        }
    };
    let _ = child.wait();
    killed
}

/// The node every trial runs on: FLANNEL_IPMASQ=false, so the plugin masquerades pods itself
/// and its nftables entries are part of what a crash could leak.
fn crash_node(tag: &str) -> (Node, serde_json::Value) {
    let node = Node::new(tag);
    node.write_subnet_env("10.244.0.0/16", "10.244.1.1/24", 1450, false);
    let conf = node.conf("1.0.0");
    (node, conf)
}

/// The median length of 5 uninterrupted runs of `cmd` (ADD, or DEL of a just-added pod).
fn calibrate(node: &Node, conf: &serde_json::Value, cmd: &str) -> Duration {
    let mut lengths = Vec::new();
    for i in 0..5 {
        let pod = Netns::new(&format!("cal{cmd}{i}"));
        let cid = format!("calibrate-{cmd}-{i}");
        let t = Instant::now();
        assert_eq!(run(node, "ADD", &cid, &pod, conf), 0);
        let added = t.elapsed();
        if i == 0 {
            // The detector sees every kind of state a pod leaves.
            let seen = leftovers(node, &pod).join("\n");
            for kind in [
                "reservation",
                "host veth",
                "masquerade entry",
                "pod interface",
            ] {
                assert!(
                    seen.contains(kind),
                    "an attached pod shows no {kind}: {seen}"
                );
            }
        }
        let t = Instant::now();
        assert_eq!(run(node, "DEL", &cid, &pod, conf), 0);
        lengths.push(if cmd == "ADD" { added } else { t.elapsed() });
    }
    lengths.sort();
    lengths[2]
}

#[test]
fn sigkill_anywhere_in_add_then_del_leaves_nothing() {
    if !require_root("sigkill_anywhere_in_add_then_del_leaves_nothing") {
        return;
    }
    let (node, conf) = crash_node("crash");
    let stdin = conf.to_string();
    let length = calibrate(&node, &conf, "ADD");
    let span = length.mul_f64(1.3);

    let trials = env_num("CRASH_TRIALS", 300);
    let mut rng = Rng(env_num("CRASH_SEED", 0x5eed_cafe).max(1));
    let (mut killed, mut completed) = (0, 0);
    for t in 0..trials {
        let mut pod = Netns::new(&format!("k{t}"));
        let cid = format!("crash-{t}");
        let delay = Duration::from_nanos(rng.next() % span.as_nanos().max(1) as u64);
        if kill_after(&node, "ADD", &cid, &pod, &stdin, delay) {
            killed += 1;
        } else {
            completed += 1;
        }
        assert_eq!(
            run(&node, "DEL", &cid, &pod, &conf),
            0,
            "trial {t}: DEL after a kill at {delay:?} failed"
        );
        if t % 5 == 0 {
            // A runtime retrying the sandbox: ADD again, then DEL.
            assert_eq!(run(&node, "ADD", &cid, &pod, &conf), 0, "trial {t}: re-ADD");
            assert_eq!(run(&node, "DEL", &cid, &pod, &conf), 0, "trial {t}: re-DEL");
        }
        let left = leftovers(&node, &pod);
        assert!(
            left.is_empty(),
            "trial {t}: killed at {delay:?} of an ADD of {span:?}, DEL left {left:?}"
        );
        pod.delete();
    }
    eprintln!(
        "{trials} trials: {killed} killed mid-ADD, {completed} finished first; \
         ADD length {:?} (kills spread over {span:?}); nothing left behind",
        length
    );
    assert!(
        killed * 3 >= trials,
        "only {killed} of {trials} trials killed the plugin mid-ADD"
    );
}

#[test]
fn sigkill_anywhere_in_del_then_del_leaves_nothing() {
    if !require_root("sigkill_anywhere_in_del_then_del_leaves_nothing") {
        return;
    }
    let (node, conf) = crash_node("crashdel");
    let stdin = conf.to_string();
    let span = calibrate(&node, &conf, "DEL").mul_f64(1.3);
    let trials = env_num("CRASH_TRIALS", 300) / 3;
    let mut rng = Rng(env_num("CRASH_SEED", 0x5eed_cafe).max(1) ^ 0xde1);
    let mut killed = 0;
    for t in 0..trials {
        let mut pod = Netns::new(&format!("d{t}"));
        let cid = format!("crashdel-{t}");
        assert_eq!(run(&node, "ADD", &cid, &pod, &conf), 0, "trial {t}: ADD");
        let delay = Duration::from_nanos(rng.next() % span.as_nanos().max(1) as u64);
        if kill_after(&node, "DEL", &cid, &pod, &stdin, delay) {
            killed += 1;
        }
        assert_eq!(
            run(&node, "DEL", &cid, &pod, &conf),
            0,
            "trial {t}: DEL after a DEL killed at {delay:?}"
        );
        let left = leftovers(&node, &pod);
        assert!(
            left.is_empty(),
            "trial {t}: DEL killed at {delay:?} of {span:?}, the next DEL left {left:?}"
        );
        pod.delete();
    }
    eprintln!("{trials} DEL trials: {killed} killed mid-DEL (spread over {span:?}); nothing left");
    assert!(
        killed * 3 >= trials,
        "only {killed} of {trials} DELs killed"
    );
}

/// Runs the debug plugin (which has the crash points) with `FLANNEL_CNI_FAULT=point`; returns
/// whether it died of SIGKILL.
fn run_to_fault(node: &Node, cmd: &str, cid: &str, pod: &Netns, stdin: &str, point: &str) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let path = pod.path();
    let child = spawn_bin_in_ns(
        std::path::Path::new(env!("CARGO_BIN_EXE_flannel")),
        &node.ns,
        stdin,
        |c| {
            c.env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", cid)
                .env("CNI_NETNS", &path)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .env("FLANNEL_CNI_FAULT", point);
        },
    );
    let out = child.wait_with_output().expect("wait");
    out.status.signal() == Some(9)
}

#[test]
fn every_crash_point_is_cleaned_by_del() {
    if !require_root("every_crash_point_is_cleaned_by_del") {
        return;
    }
    if !cfg!(debug_assertions) {
        // A release test build runs a release plugin, which has no crash points.
        eprintln!("crash points exist in debug builds only; run without --release");
        return;
    }
    let (node, conf) = crash_node("points");
    let stdin = conf.to_string();
    for (n, point) in ipam::fault::POINTS.iter().enumerate() {
        let mut pod = Netns::new(&format!("p{n}"));
        let cid = format!("point-{n}");
        if point.starts_with("del:") {
            assert_eq!(run(&node, "ADD", &cid, &pod, &conf), 0, "{point}: ADD");
            assert!(
                run_to_fault(&node, "DEL", &cid, &pod, &stdin, point),
                "{point}: DEL did not reach the point"
            );
        } else {
            assert!(
                run_to_fault(&node, "ADD", &cid, &pod, &stdin, point),
                "{point}: ADD did not reach the point"
            );
        }
        assert_eq!(run(&node, "DEL", &cid, &pod, &conf), 0, "{point}: DEL");
        let left = leftovers(&node, &pod);
        assert!(left.is_empty(), "killed at {point}, DEL left {left:?}");
        // And the runtime's retry works from there.
        assert_eq!(run(&node, "ADD", &cid, &pod, &conf), 0, "{point}: re-ADD");
        assert_eq!(run(&node, "DEL", &cid, &pod, &conf), 0, "{point}: re-DEL");
        assert!(
            leftovers(&node, &pod).is_empty(),
            "{point}: after re-ADD + DEL"
        );
        pod.delete();
    }
    eprintln!(
        "{} crash points, each cleaned by one DEL",
        ipam::fault::POINTS.len()
    );
}

#[test]
fn sigkill_anywhere_in_gc_then_gc_finishes_the_job() {
    if !require_root("sigkill_anywhere_in_gc_then_gc_finishes_the_job") {
        return;
    }
    let (node, _) = crash_node("crashgc");
    let conf = node.conf("1.1.0");
    let mut rng = Rng(env_num("CRASH_SEED", 0x5eed_cafe).max(1) ^ 0x9c);
    let trials = (env_num("CRASH_TRIALS", 300) / 10).max(1);
    let mut killed = 0;
    for t in 0..trials {
        // Six attached pods; the runtime still knows two of them.
        let pods: Vec<(String, Netns)> = (0..6)
            .map(|p| (format!("gc{t}-{p}"), Netns::new(&format!("g{t}x{p}"))))
            .collect();
        for (cid, pod) in &pods {
            assert_eq!(
                run(&node, "ADD", cid, pod, &conf),
                0,
                "trial {t}: ADD {cid}"
            );
        }
        let mut gc_conf = conf.clone();
        gc_conf["cni.dev/valid-attachments"] = serde_json::json!([
            {"containerID": pods[0].0, "ifname": "eth0"},
            {"containerID": pods[1].0, "ifname": "eth0"},
        ]);
        let stdin = gc_conf.to_string();
        // GC of four attachments takes a few nft and file operations: kill within 15 ms.
        let delay = Duration::from_micros(rng.next() % 15_000);
        if kill_after(&node, "GC", "", &pods[0].1, &stdin, delay) {
            killed += 1;
        }
        assert_eq!(
            node.run("GC", "", None, "", &gc_conf).code,
            0,
            "trial {t}: GC after a GC killed at {delay:?}"
        );
        let mut kept = node.reservations("cbr0");
        kept.sort();
        assert_eq!(
            kept.len(),
            2,
            "trial {t}: GC killed at {delay:?} kept {kept:?}"
        );
        let ruleset =
            String::from_utf8_lossy(&node.ns.exec(&["nft", "list", "ruleset"]).stdout).into_owned();
        for (p, (cid, _)) in pods.iter().enumerate() {
            let has = ruleset.contains(&format!("\"{cid}/eth0\""));
            assert_eq!(
                has,
                p < 2,
                "trial {t}: masquerade entry of {cid}: {ruleset}"
            );
        }
        for (cid, mut pod) in pods {
            assert_eq!(
                run(&node, "DEL", &cid, &pod, &conf),
                0,
                "trial {t}: DEL {cid}"
            );
            pod.delete();
        }
        assert!(
            node.reservations("cbr0").is_empty(),
            "trial {t}: DEL left reservations"
        );
    }
    eprintln!("{trials} GC trials: {killed} killed mid-GC; the next GC finished every one");
}
