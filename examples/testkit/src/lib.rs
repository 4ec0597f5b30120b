//! # flannel_testkit — test support for the whole workspace (dev-only, never in a release)
//!
//! * The **one CI rule** for missing prerequisites: [`skip_or_panic`] and [`require_root`]
//!   print a line starting with `SKIPPED` and let the test return, except in CI ([`in_ci`]:
//!   `CI` is `true` or `1`, any case), where a missing prerequisite is a failure, never a
//!   silent skip. Every skip prints the same prefix, so `grep -c SKIPPED` over a test run's
//!   output counts them.
//! * [`etcd::EtcdServer`] (feature `etcd`) runs a throw-away etcd on loopback, and
//!   [`etcd::EtcdCommand`] is the one place that builds an etcd command line — the examples'
//!   cluster harness starts its members with it too.
//! * [`pki::Pki`] makes test CAs and certificates with `openssl`.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod pki;

/// Whether the environment says we run in CI (`CI` is `true` or `1`, any case).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The prefix of every skip message (see the crate docs).
pub const SKIPPED: &str = "SKIPPED";

fn skip(kind: &str, reason: &str) {
    if in_ci() {
        panic!("test prerequisite missing under CI=true{kind}: {reason}");
    }
    eprintln!("{SKIPPED}{kind}: {reason}");
}

/// Reports a missing test prerequisite: panics in CI ([`in_ci`]), otherwise prints
/// `SKIPPED: <reason>` to stderr. The caller returns right after.
pub fn skip_or_panic(reason: &str) {
    skip("", reason);
}

/// Whether the test runs as root. When not: panics in CI ([`in_ci`]), otherwise prints
/// `SKIPPED (needs root): <reason>` to stderr and returns `false` (the caller returns).
pub fn require_root(reason: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(" (needs root)", reason);
    false
}
