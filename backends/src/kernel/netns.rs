//! # Network namespaces as values
//!
//! A network namespace is named by a file: `/var/run/netns/NAME`, `/proc/PID/ns/net`, or a bind
//! mount the container runtime made. [`NetNs`] opens such a file once and keeps the descriptor, so
//! the namespace stays alive and cannot be swapped under us while we work on it.
//!
//! The namespace of a *thread* is what the kernel consults for sockets, `/proc/sys/net` and child
//! processes. Switching it (`setns`) is only safe on a thread we own and throw away afterwards:
//! a thread that fails to switch back would leak the pod namespace into unrelated work, and an
//! async runtime would happily schedule other tasks on it. [`NetNs::run`] therefore spawns a fresh
//! `std` thread, enters the namespace there, runs the closure and lets the thread exit. Nothing
//! ever calls `setns` on the caller's thread, and never on a tokio worker — except
//! [`NetNs::run_on_this_thread`], reserved for short-lived single-threaded processes (the CNI
//! plugin), which switches back at once and aborts if it cannot.
//!
//! Sockets remember the namespace they were created in, so the usual pattern is to create a
//! netlink socket inside [`NetNs::run`] and then drive it from the caller's runtime
//! (see [`crate::kernel::netlink::Netlink::new_in`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns, unshare};

/// The per-thread path of the calling thread's network namespace.
pub const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// `SIOCGSKNS` from `<linux/sockios.h>`: a descriptor for a socket's network namespace.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// An open handle on a network namespace.
///
/// The descriptor keeps the namespace alive for as long as the handle exists, even if the file it
/// was opened from is unmounted or the last process in it exits.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// Opens the network namespace named by `path` (like `ip netns exec` or `nsenter --net=PATH`
    /// would).
    ///
    /// Errors: [`io::ErrorKind::NotFound`] when the path does not exist (the container is gone),
    /// [`io::ErrorKind::InvalidInput`] when it exists but is not a network namespace (a plain
    /// file, or another kind of namespace such as `/proc/self/ns/uts`).
    pub fn open(path: &Path) -> io::Result<NetNs> {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        let fd = OwnedFd::from(file);
        check_is_netns(&fd, path)?;
        Ok(NetNs {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens the calling thread's network namespace (`/proc/thread-self/ns/net`).
    ///
    /// [`NetNs::path`] of the result is `/proc/PID/fd/N`, which names this handle's descriptor and
    /// so stays valid (for this process and for root outside it) while the handle lives, even
    /// after the calling thread has exited.
    pub fn current() -> io::Result<NetNs> {
        let file = File::open(THREAD_SELF_NET)
            .map_err(|e| io::Error::new(e.kind(), format!("open {THREAD_SELF_NET}: {e}")))?;
        let fd = OwnedFd::from(file);
        let path = fd_path(&fd);
        Ok(NetNs { fd, path })
    }

    /// Opens the network namespace a socket belongs to (`ioctl(SIOCGSKNS)`, Linux 4.9+; needs
    /// `CAP_NET_ADMIN` over that namespace). Sockets keep the namespace they were created in,
    /// so for a process that already holds a socket this names "home" without a path walk:
    /// opening `/proc/thread-self/ns/net` in a new process builds every `/proc/PID` entry on
    /// the way afresh, which costs several times the ioctl (README, "Design measurements").
    ///
    /// [`NetNs::path`] of the result is `/proc/PID/fd/N`, as for [`NetNs::current`].
    pub fn of_socket(socket: BorrowedFd<'_>) -> io::Result<NetNs> {
        // SAFETY: SIOCGSKNS takes no argument; the kernel returns a new descriptor or -1.
        let raw = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS as _) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("ioctl(SIOCGSKNS) on socket {}: {e}", socket.as_raw_fd()),
            ));
        }
        // SAFETY: `raw` is a descriptor the kernel just opened for us and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = fd_path(&fd);
        Ok(NetNs { fd, path })
    }

    /// Creates a new, empty network namespace (only `lo`, down) that is not bound to any file
    /// (`unshare --net` on a helper thread). It lives as long as this handle, or longer if
    /// something else (a process, a socket, a bind mount) holds it.
    ///
    /// Useful for tests and for scratch work; [`NetNs::path`] is `/proc/PID/fd/N`.
    pub fn create_anonymous() -> io::Result<NetNs> {
        let handle = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(|| -> io::Result<NetNs> {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::other(format!("unshare(CLONE_NEWNET): {e}")))?;
                NetNs::current()
            })?;
        join(handle)
    }

    /// The path this namespace was opened from (informational: the descriptor is what counts).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    ///
    /// The thread exits when `f` returns, so the namespace switch can never leak into other work.
    /// Sockets `f` creates stay bound to this namespace after the thread is gone, and processes
    /// it spawns start inside it. A panic in `f` is re-raised on the caller's thread.
    ///
    /// Errors: the thread could not be spawned, or `setns` failed (for example without
    /// `CAP_SYS_ADMIN`).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let fd = self.fd.try_clone()?;
        let path = self.path.clone();
        let handle = std::thread::Builder::new().name("netns-run".into()).spawn(
            move || -> io::Result<T> {
                setns(&fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::other(format!("setns into {}: {e}", path.display())))?;
                drop(fd);
                Ok(f())
            },
        )?;
        join(handle)
    }

    /// Runs `f` on the **calling** thread inside this namespace, then switches the thread back
    /// to `home` (normally [`NetNs::current`] taken beforehand). Saves [`NetNs::run`]'s thread
    /// spawn and join (a sizeable part of a CNI ADD); meant only for short-lived, effectively
    /// single-threaded processes such as the CNI plugin, where nothing else can be scheduled on
    /// the thread while `f` runs (`f` is synchronous). Processes `f` forks start inside this
    /// namespace. If the thread cannot switch back the process aborts: continuing in the wrong
    /// namespace would be worse than dying.
    pub fn run_on_this_thread<T>(&self, home: &NetNs, f: impl FnOnce() -> T) -> io::Result<T> {
        setns(&self.fd, CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("setns into {}: {e}", self.path.display())))?;
        let out = f();
        if let Err(e) = setns(&home.fd, CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "fatal: cannot switch back from {} to {}: {e}",
                self.path.display(),
                home.path.display()
            );
            std::process::abort();
        }
        Ok(out)
    }

    /// Whether this is the namespace the calling thread is in (compares the nsfs `(dev, inode)`
    /// pairs, like `ip netns identify` does).
    pub fn is_same_as_current(&self) -> io::Result<bool> {
        let mine = File::from(self.fd.try_clone()?).metadata()?;
        let current = std::fs::metadata(THREAD_SELF_NET)?;
        Ok(mine.dev() == current.dev() && mine.ino() == current.ino())
    }

    /// A new handle on the same namespace (duplicates the descriptor).
    pub fn try_clone(&self) -> io::Result<NetNs> {
        Ok(NetNs {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// `/proc/PID/fd/N` for a descriptor of this process.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

/// Rejects descriptors that are not network namespaces, using `NS_GET_NSTYPE` (Linux 4.11+).
fn check_is_netns(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only inspects the descriptor, which is open
    // for the duration of the call.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            // Not an nsfs file at all.
            Some(libc::ENOTTY) | Some(libc::EINVAL) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a network namespace (not an nsfs file)",
                    path.display()
                ),
            )),
            _ => Err(io::Error::new(
                err.kind(),
                format!("inspect {}: {err}", path.display()),
            )),
        };
    }
    if kind != libc::CLONE_NEWNET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a namespace but not a network namespace (type {kind:#x})",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Joins a helper thread, re-raising its panic on the caller.
fn join<T>(handle: std::thread::JoinHandle<T>) -> T {
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
