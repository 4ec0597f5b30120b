//! # The thread scaffolding of the userspace data paths
//!
//! The udp backend and the wireguard backend's userspace device run the same shape: a few
//! dedicated OS threads (never async runtime workers) that sleep in `poll` on one descriptor
//! (the TUN device or the UDP socket), wake at least every [`POLL_MS`] to look at a shared
//! stop flag, and are joined when the data path is stopped or dropped. [`Threads`] owns them;
//! [`wait_loop`] and [`receive_loop`] are their bodies' outer loops.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::tun::{InMsg, UdpSocket, poll_readable};

/// How long a thread sleeps in `poll` before looking at the stop flag again.
pub const POLL_MS: i32 = 100;
/// `recvmmsg` batches handled per wake-up before `poll` is asked again.
pub const RECV_ROUNDS: usize = 16;

/// Running threads sharing one stop flag; stopped and joined on [`Threads::stop`] or drop.
#[derive(Debug, Default)]
pub struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    /// No threads yet.
    pub fn new() -> Threads {
        Threads::default()
    }

    /// Starts `body` on a thread called `name`; it gets the stop flag to watch.
    pub fn spawn(
        &mut self,
        name: &str,
        body: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> io::Result<()> {
        let stop = self.stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || body(&stop))?;
        self.handles.push(handle);
        Ok(())
    }

    /// Sets the stop flag and joins every thread (each returns within about [`POLL_MS`]).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.handles.drain(..) {
            let _ = t.join();
        }
    }

    /// Whether there are threads and all of them still run.
    pub fn is_running(&self) -> bool {
        !self.handles.is_empty() && self.handles.iter().all(|t| !t.is_finished())
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Until `stop` is set: waits for `fd` to be readable (at most [`POLL_MS`] at a time), then
/// calls `on_ready`. A failing `poll` ends the loop with an error log naming `thread`.
pub fn wait_loop(fd: RawFd, stop: &AtomicBool, thread: &str, mut on_ready: impl FnMut()) {
    while !stop.load(Ordering::Relaxed) {
        match poll_readable(fd, POLL_MS) {
            Ok(true) => on_ready(),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, thread, "poll failed; the thread stops");
                return;
            }
        }
    }
}

/// The receiving thread's loop: whenever `sock` is readable, up to [`RECV_ROUNDS`] `recvmmsg`
/// batches into `bufs`, each handed to `on_batch` with the messages' descriptions.
pub fn receive_loop(
    sock: &UdpSocket,
    bufs: &mut [Vec<u8>],
    stop: &AtomicBool,
    thread: &str,
    mut on_batch: impl FnMut(&[InMsg], &mut [Vec<u8>]),
) {
    let mut ins: Vec<InMsg> = Vec::with_capacity(bufs.len());
    wait_loop(sock.as_raw_fd(), stop, thread, || {
        for _ in 0..RECV_ROUNDS {
            match sock.recv_batch(bufs, &mut ins) {
                Ok(0) => break,
                Ok(_) => on_batch(&ins, bufs),
                Err(e) => {
                    tracing::debug!(error = %e, thread, "udp receive failed");
                    break;
                }
            }
        }
    });
}
