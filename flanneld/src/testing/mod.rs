//! # testing — harnesses shared by unit and integration tests
//!
//! Public (not `cfg(test)`) so that `tests/*.rs` and the examples can use them.
//! [`etcd::EtcdServer`] runs a throw-away etcd on loopback; [`skip_or_panic`] implements the
//! workspace rule for missing prerequisites: print `SKIP: …` and return, except under
//! `CI=true`, where a missing prerequisite is a failure.

pub mod etcd;
pub mod pki;

/// Whether the environment says we run in CI (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Reports a missing test prerequisite: panics under `CI=true`, otherwise prints
/// `SKIP: <reason>` to stderr. The caller returns right after.
pub fn skip_or_panic(reason: &str) {
    if in_ci() {
        panic!("test prerequisite missing under CI=true: {reason}");
    }
    eprintln!("SKIP: {reason}");
}
