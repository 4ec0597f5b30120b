//! Clean-up on Ctrl-C: what `Drop` cannot cover.
//!
//! `Drop for Cluster` removes everything after a normal return or a panic, but a SIGINT or
//! SIGTERM ends the process without unwinding. The harness therefore also records, in a
//! process-wide registry, every namespace it creates and every process it starts;
//! [`install_signal_cleanup`] installs a handler that, on SIGINT/SIGTERM/SIGHUP, stops those
//! processes by PID, deletes those namespaces (newest first) and exits with 128 + signal.
//!
//! The handler itself only writes the signal number to a pipe (async-signal-safe); a helper
//! thread does the work.

use std::os::fd::IntoRawFd;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

#[derive(Default)]
struct Registry {
    namespaces: Vec<String>,
    pids: Vec<i32>,
    dirs: Vec<std::path::PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
});
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// Records a namespace the harness created.
pub fn track_namespace(name: &str) {
    with(|r| r.namespaces.push(name.to_string()));
}

/// Forgets a namespace the harness deleted.
pub fn untrack_namespace(name: &str) {
    with(|r| r.namespaces.retain(|n| n != name));
}

/// Records a scratch directory the harness created.
pub fn track_dir(dir: &std::path::Path) {
    with(|r| r.dirs.push(dir.to_path_buf()));
}

/// Forgets a scratch directory (removed by its owner).
pub fn untrack_dir(dir: &std::path::Path) {
    with(|r| r.dirs.retain(|d| d != dir));
}

/// Records a process the harness started.
pub fn track_pid(pid: u32) {
    with(|r| r.pids.push(pid as i32));
}

/// Forgets a process the harness stopped.
pub fn untrack_pid(pid: u32) {
    with(|r| r.pids.retain(|p| *p != pid as i32));
}

/// Stops every recorded process (SIGTERM, then SIGKILL after 3 s), deletes every recorded
/// namespace, newest first, and removes the scratch directories.
pub fn cleanup_everything() {
    let (pids, namespaces, dirs) = with(|r| {
        (
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.namespaces),
            std::mem::take(&mut r.dirs),
        )
    });
    for pid in &pids {
        let _ = signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    for pid in &pids {
        let pid = nix::unistd::Pid::from_raw(*pid);
        while signal::kill(pid, None).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = signal::kill(pid, Signal::SIGKILL);
    }
    for ns in namespaces.iter().rev() {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(std::process::Stdio::null())
            .status();
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `byte` lives for the call.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Installs the SIGINT/SIGTERM/SIGHUP handler that cleans up and exits. Call once, early.
pub fn install_signal_cleanup() -> std::io::Result<()> {
    let (read, write) = nix::unistd::pipe().map_err(std::io::Error::from)?;
    PIPE_WRITE.store(write.into_raw_fd(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2) on a pipe.
        unsafe { signal::sigaction(sig, &action) }.map_err(std::io::Error::from)?;
    }
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        if nix::unistd::read(&read, &mut byte).is_ok() {
            eprintln!(
                "\ncaught signal {}; removing namespaces and processes",
                byte[0]
            );
            cleanup_everything();
            std::process::exit(128 + i32::from(byte[0]));
        }
    });
    Ok(())
}
