//! # `wg show` for the userspace device: the cross-platform UAPI socket
//!
//! `wg` talks to a userspace WireGuard implementation through a Unix socket
//! `/var/run/wireguard/<interface>.sock` with a line protocol
//! (<https://www.wireguard.com/xplatform/>): the client writes `get=1\n\n` and reads
//! `key=value` lines ending with `errno=0` and an empty line. wireguard-go and boringtun serve
//! it; so does flanneld's userspace path, so `wg show flannel-wg` lists the peers, their
//! endpoints, allowed IPs, handshakes and byte counts exactly as on a node with the kernel
//! module.
//!
//! Configuration through the socket (`set=1`) is refused with `EPERM`: the peers are the
//! leases, and a peer added or removed by hand would be undone at the next reconcile. The
//! socket hands out the private key, as the kernel does to root only: it is mode 0600, its
//! directory 0700 when we create it, and a client that is neither root nor flanneld's own user
//! (`SO_PEERCRED`) is hung up on. One client at a time, each with [`CLIENT_DEADLINE`] and
//! [`MAX_REQUEST`] bytes in all, so a stuck client cannot hold `wg show` (or flanneld's
//! shutdown) for longer.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use flannel_udp::table::Shared;

use crate::peers::PeerTable;

/// Where wireguard-go, boringtun and `wg` put and look for UAPI sockets.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// How long one client may take, request and answer together.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// The most one client may send.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// `EPERM`, the answer to `set=1`.
const EPERM: i32 = 1;
/// `EINVAL`, the answer to anything else.
const EINVAL: i32 = 22;

/// What `get=1` reports besides the peers.
#[derive(Clone)]
pub struct InterfaceInfo {
    /// Our private key.
    pub private_key: [u8; 32],
    /// The UDP port we listen on.
    pub listen_port: u16,
    /// The pre-shared key of every peer.
    pub psk: Option<[u8; 32]>,
    /// Persistent keepalive of every peer (seconds).
    pub keepalive: u16,
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The answer to `get=1`, ending with `errno=0` and an empty line.
pub fn render_get(info: &InterfaceInfo, peers: &PeerTable, now: SystemTime) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "private_key={}", hex(&info.private_key));
    let _ = writeln!(s, "listen_port={}", info.listen_port);
    for (peer, allowed) in peers.iter() {
        let (since, tx, rx) = {
            let t = peer.lock();
            let (since, tx, rx, _, _) = t.stats();
            (since, tx, rx)
        };
        let _ = writeln!(s, "public_key={}", hex(&peer.public_key));
        if let Some(psk) = &info.psk {
            let _ = writeln!(s, "preshared_key={}", hex(psk));
        }
        let _ = writeln!(s, "protocol_version=1");
        let _ = writeln!(s, "endpoint={}", peer.endpoint());
        let last = since
            .and_then(|d| now.checked_sub(d))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .unwrap_or(Duration::ZERO);
        let _ = writeln!(s, "last_handshake_time_sec={}", last.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", last.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={tx}");
        let _ = writeln!(s, "rx_bytes={rx}");
        let _ = writeln!(s, "persistent_keepalive_interval={}", info.keepalive);
        for net in allowed {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s.push_str("errno=0\n\n");
    s
}

/// The running UAPI socket; removed when dropped.
#[derive(Debug)]
pub struct UapiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UapiServer {
    /// Serves `<dir>/<interface>.sock` (a stale socket from a previous run is replaced).
    pub fn start(
        dir: &Path,
        interface: &str,
        info: InterfaceInfo,
        peers: Arc<Shared<PeerTable>>,
    ) -> io::Result<UapiServer> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.join(format!("{interface}.sock"));
        if UnixStream::connect(&path).is_ok() {
            tracing::warn!(socket = %path.display(), "another process answered on the UAPI socket; taking it over");
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flannel-wg-uapi".into())
            .spawn(move || serve(&listener, &info, &peers, &s))?;
        Ok(UapiServer {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    listener: &UnixListener,
    info: &InterfaceInfo,
    peers: &Shared<PeerTable>,
    stop: &AtomicBool,
) {
    use std::os::fd::AsRawFd;
    while !stop.load(Ordering::Relaxed) {
        match flannel_udp::tun::poll_readable(listener.as_raw_fd(), 200) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "UAPI socket poll failed; `wg show` will not answer");
                return;
            }
        }
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        // SAFETY: geteuid has no preconditions.
        let own_uid = unsafe { libc::geteuid() };
        match peer_uid(&conn) {
            Ok(uid) if uid == 0 || uid == own_uid => {}
            Ok(uid) => {
                tracing::warn!(
                    uid,
                    "UAPI client is neither root nor flanneld's user; hung up"
                );
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "UAPI client credentials");
                continue;
            }
        }
        if let Err(e) = answer(conn, info, peers) {
            tracing::debug!(error = %e, "UAPI client");
        }
    }
}

/// The uid of the process at the other end (`SO_PEERCRED`).
fn peer_uid(conn: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain old data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and describe a ucred.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Answers the requests of one client connection, within [`CLIENT_DEADLINE`] and
/// [`MAX_REQUEST`] bytes.
fn answer(conn: UnixStream, info: &InterfaceInfo, peers: &Shared<PeerTable>) -> io::Result<()> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + CLIENT_DEADLINE;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "UAPI client too slow"))
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(CLIENT_DEADLINE))?;
    conn.set_write_timeout(Some(CLIENT_DEADLINE))?;
    let mut reader = BufReader::new(conn.try_clone()?.take(MAX_REQUEST));
    let mut out = conn;
    loop {
        let mut line = String::new();
        out.set_read_timeout(Some(left()?))?;
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let op = line.trim_end_matches('\n').to_string();
        // Swallow the rest of the request, up to its empty line.
        while !line.is_empty() && line != "\n" {
            line.clear();
            out.set_read_timeout(Some(left()?))?;
            if reader.read_line(&mut line)? == 0 {
                break;
            }
        }
        let reply = match op.as_str() {
            "get=1" => render_get(info, &peers.load(), SystemTime::now()),
            "set=1" => {
                tracing::warn!("refused a `wg set` on the UAPI socket: peers come from the leases");
                format!("errno={EPERM}\n\n")
            }
            _ => format!("errno={EINVAL}\n\n"),
        };
        out.set_write_timeout(Some(left()?))?;
        out.write_all(reply.as_bytes())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{Identity, PeerSpec};
    use boringtun::noise::rate_limiter::RateLimiter;
    use boringtun::x25519::{PublicKey, StaticSecret};

    #[test]
    fn get_lists_interface_and_peers_in_wg_format() {
        let private = StaticSecret::from(crate::key::clamp([1; 32]));
        let public = PublicKey::from(&private);
        let id = Identity {
            rate_limiter: Arc::new(RateLimiter::new(&public, 10)),
            private: private.clone(),
            public,
            psk: None,
            keepalive: 25,
        };
        let peer_key = *PublicKey::from(&StaticSecret::from([2; 32])).as_bytes();
        let mut slot = 1;
        let table = PeerTable::build(
            &PeerTable::default(),
            &[PeerSpec {
                public_key: peer_key,
                endpoint: "198.18.0.2:51820".parse().unwrap(),
                allowed: vec!["10.244.2.0/24".parse().unwrap()],
            }],
            &id,
            &mut slot,
        );
        let info = InterfaceInfo {
            private_key: private.to_bytes(),
            listen_port: 51820,
            psk: None,
            keepalive: 25,
        };
        let text = render_get(&info, &table, SystemTime::now());
        let expected = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nprotocol_version=1\nendpoint=198.18.0.2:51820\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=25\nallowed_ip=10.244.2.0/24\nerrno=0\n\n",
            hex(&private.to_bytes()),
            hex(&peer_key)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn socket_answers_get_and_refuses_set() {
        let dir = tempfile::tempdir().unwrap();
        let info = InterfaceInfo {
            private_key: [3; 32],
            listen_port: 4000,
            psk: Some([4; 32]),
            keepalive: 0,
        };
        let peers = Arc::new(Shared::new(PeerTable::default()));
        let server = UapiServer::start(dir.path(), "flannel-wg", info, peers).unwrap();
        let mode = std::fs::metadata(server.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let ask = |req: &str| {
            let mut c = UnixStream::connect(server.path()).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut s = String::new();
            io::Read::read_to_string(&mut c, &mut s).unwrap();
            s
        };
        let got = ask("get=1\n\n");
        assert!(got.starts_with(&format!(
            "private_key={}\nlisten_port=4000\n",
            hex(&[3; 32])
        )));
        assert!(got.ends_with("errno=0\n\n"), "{got:?}");
        assert_eq!(ask("set=1\nlisten_port=1\n\n"), "errno=1\n\n");
        // A client that sends half a request and waits is dropped after the deadline; the
        // next one is answered.
        let mut slow = UnixStream::connect(server.path()).unwrap();
        slow.write_all(b"get=1\n").unwrap();
        let t0 = std::time::Instant::now();
        let got = ask("get=1\n\n");
        assert!(got.ends_with("errno=0\n\n"));
        assert!(t0.elapsed() < CLIENT_DEADLINE + Duration::from_secs(1));
        drop(slow);
        let path = server.path().to_path_buf();
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
    }
}
