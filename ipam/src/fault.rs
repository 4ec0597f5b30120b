//! # fault — crash points for the deterministic crash tests (debug builds only)
//!
//! A runtime may SIGKILL the CNI plugin at any instant; the random crash test samples those
//! instants, this makes every window between two state changes certain to be hit. Each
//! [`point`] has a name listed in [`POINTS`]; when the environment variable
//! `FLANNEL_CNI_FAULT` names it, the process SIGKILLs itself right there — no destructors, no
//! rollback, exactly like a kill from outside.
//!
//! The check is compiled only with `debug_assertions`: release builds, and so the installable
//! plugin (`scripts/build-cni.sh`), contain neither the check nor the variable's name.

/// Every crash point, in the order an ADD and then a DEL reach them.
pub const POINTS: &[&str] = &[
    "ipam:written",
    "ipam:linked",
    "add:reserved",
    "add:bridge",
    "add:veth",
    "add:port-up",
    "add:addresses",
    "add:routes",
    "add:masq",
    "add:done",
    "del:veth",
    "del:unmasq",
    "del:released",
];

/// Kills the process here if `FLANNEL_CNI_FAULT` names this point (debug builds only).
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("FLANNEL_CNI_FAULT").is_some_and(|v| v == name) {
        debug_assert!(POINTS.contains(&name), "unlisted crash point {name}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
