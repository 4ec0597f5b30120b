//! Shared helpers for the kernel tests: every test body runs on a fresh thread that has unshared
//! its network namespace, so nothing here can touch the root namespace.

#![allow(dead_code)]

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;

use backends::kernel::netns::NetNs;
use ipnetwork::{IpNetwork, Ipv4Network};
use nix::sched::{CloneFlags, unshare};

/// Whether the kernel tests can run. Without root (or a needed tool) they print `SKIPPED` and
/// return, except in CI, where a missing prerequisite is a failure (`flannel_testkit`'s rule).
pub fn prerequisites(tools: &[&str]) -> bool {
    if !flannel_testkit::require_root("the kernel tests unshare network namespaces") {
        return false;
    }
    let mut missing = Vec::new();
    for t in tools {
        let found = Command::new(t).arg("--version").output().is_ok()
            || ["/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .any(|d| std::path::Path::new(d).join(t).exists());
        if !found {
            missing.push(format!("the `{t}` binary"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    flannel_testkit::skip_or_panic(&format!("needs {}", missing.join(", ")));
    false
}

/// Runs `body` on a new thread inside a new, private network namespace, on a current-thread
/// tokio runtime. Panics in the body fail the test.
pub fn in_new_netns<T, Fut>(body: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T>,
{
    let root = NetNs::current().expect("open the test's own netns");
    let handle = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        // Guard: everything below must run outside the namespace we started in.
        assert!(
            !root.is_same_as_current().expect("compare netns"),
            "unshare did not switch netns"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(body())
    });
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Runs `ip ARGS` in the calling thread's namespace and returns its stdout (panics on failure).
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip ARGS` inside `ns`.
pub fn ip_in(ns: &NetNs, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    ns.run(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ip(&a)
    })
    .expect("enter netns")
}

/// A test address literal.
pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

/// A test IPv4 network literal.
pub fn net4(s: &str) -> Ipv4Network {
    s.parse().expect("test network")
}

/// A test network literal, either family.
pub fn net(s: &str) -> IpNetwork {
    s.parse().expect("test network")
}
