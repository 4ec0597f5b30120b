//! # The userspace WireGuard device: boringtun's protocol on the udp backend's data path
//!
//! Where the kernel has no WireGuard module, flanneld is the device. The kernel routes the
//! cluster network into the TUN device `flannel-wg`; three threads do what the module would:
//!
//! * **`flannel-wg-tx`** (TUN → UDP): drains the TUN (a TCP window arrives as one super-packet
//!   behind a virtio-net header: `IFF_VNET_HDR` + TSO, as in the udp backend), picks the peer
//!   whose allowed IPs hold the destination ([`PeerTable::route`]; none: ICMP unreachable back
//!   into the TUN), cuts super-packets into MTU-size packets ([`flannel_udp::codec::segment`]),
//!   and encrypts each with the peer's current session (`Tunn::encapsulate`: no session yet
//!   means the packet waits in boringtun's queue and a handshake initiation goes out). The
//!   equal-size data messages of one super-packet leave as one UDP GSO send, all of a batch in
//!   one `sendmmsg`.
//! * **`flannel-wg-rx`** (UDP → TUN): `recvmmsg` with UDP GRO; each message is dispatched by
//!   type, as boringtun's own device does: handshake initiations pass the shared rate limiter
//!   first (under load it answers with a cookie reply instead of doing Diffie-Hellman) and are
//!   matched to a peer by the initiator's static key; responses, cookie replies and data by
//!   receiver index. A decrypted packet whose inner source is outside the sending peer's
//!   allowed IPs is dropped and counted; the rest are glued back into TCP super-packets
//!   ([`flannel_udp::codec::Coalescer`]) and written to the TUN. Any authenticated message
//!   moves the peer's endpoint to where it came from (roaming). After writing, the RX thread
//!   drains the TUN itself when the TX state is free, so a reply leaves without waking TX
//!   (see the udp backend's datapath docs for why that matters for latency).
//! * **`flannel-wg-timers`**: every 250 ms runs each peer's `update_timers` (handshake retries,
//!   rekeying, keepalives, session expiry) and resets the rate limiter's count once a second.
//!
//! `flannel-wg` carries the IPv4 pod network over an IPv4 underlay with every offload;
//! `flannel-wg-v6` (flannel's `Mode: separate` for IPv6) carries IPv6 over IPv6, one packet
//! per TUN read and write (the segmentation and coalescing code is IPv4's).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use flannel_udp::codec::{self, Coalescer, Ipv4Header, VNET_HDR_LEN, VirtioNetHdr};
use flannel_udp::datapath::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS, Offloads};
use flannel_udp::table::{Reader, Shared};
use flannel_udp::threads::{Threads, receive_loop, wait_loop};
use flannel_udp::tun::{InMsg, OutMsg, SendCounters, Trains, Tun, UdpSocket};

use crate::peers::{Identity, PeerState, PeerTable};

/// TUN reads per wake-up before the batch is sent.
const MAX_TUN_READS: usize = 64;
/// Messages per `recvmmsg`.
const RECV_BATCH: usize = 8;
/// Send the queued batch once it holds this many bytes.
const FLUSH_BYTES: usize = 256 * 1024;
/// TUN read buffer: vnet header plus the largest IPv4 packet.
const TUN_BUF: usize = VNET_HDR_LEN + 65_536;
/// boringtun's minimum output buffer (a handshake initiation).
const MIN_DST: usize = 148;
/// Data message overhead: type, receiver index, counter (16) + tag (16).
pub const DATA_OVERHEAD: usize = 32;
/// How often the timers run (boringtun's device uses the same period).
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// Handshakes per second all peers together may ask of us before cookies are required
/// (boringtun's device default).
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

flannel_udp::counter_set!(
    /// The device's counters (monotonic, relaxed atomics).
    Counters, "flannel_wireguard_", {
    tx_packets => "Inner packets encrypted and sent to peers.",
    tx_bytes => "Bytes of inner packets sent to peers.",
    rx_packets => "Inner packets decrypted, accepted and written to the TUN.",
    rx_bytes => "Bytes of inner packets accepted from peers.",
    tx_no_peer => "TUN packets whose destination is in no peer's allowed IPs.",
    tx_queued => "TUN packets queued while a handshake is in progress.",
    tx_errors => "Datagrams the kernel refused to send.",
    tx_dropped_malformed => "TUN packets dropped as malformed or with unsupported offload requests.",
    handshake_initiations_sent => "Handshake initiations sent (first contact, retries and rekeys).",
    handshake_responses_sent => "Handshake responses sent (a peer's initiation accepted).",
    handshakes_completed => "Handshakes completed, as initiator or responder.",
    rekeys => "Handshake initiations sent to replace a session that was getting old.",
    cookie_replies_sent => "Cookie replies sent because handshakes came in faster than the rate limit.",
    keepalives_sent => "Keepalive messages sent.",
    stale_session_handshakes => "Handshakes started because a peer sent on a session we do not know (we restarted).",
    rx_dropped_unknown_peer => "Messages dropped: no peer for the key or receiver index.",
    rx_dropped_allowed_ips => "Decrypted packets dropped: inner source outside the peer's allowed IPs.",
    rx_dropped_invalid_mac => "Handshake messages dropped: bad MAC (not meant for our key).",
    rx_dropped_decrypt => "Data messages dropped: authentication failed.",
    rx_dropped_replay => "Data messages dropped: counter replayed or too old.",
    rx_dropped_no_session => "Messages dropped: no session for the receiver index.",
    rx_dropped_handshake => "Handshake messages dropped: stale timestamp, unexpected or invalid.",
    rx_dropped_under_load => "Handshake initiations dropped under load without a valid cookie.",
    rx_dropped_malformed => "Datagrams that are no WireGuard message or hold no IPv4 packet.",
    tun_writes => "TUN writes (a coalesced super-packet counts once).",
    tun_write_errors => "Failed TUN writes.",
    tun_reads => "TUN reads that returned a packet.",
    tx_syscalls => "sendmmsg calls.",
    rx_syscalls => "recvmmsg calls that returned data.",
    tx_gso_messages => "UDP GSO messages sent (each carries several datagrams).",
    tx_trains_refused => "UDP GSO trains refused because a segment exceeds the route's MTU (each pauses trains for a second).",
    tx_drained_by_rx => "TUN packets read and sent by the RX thread right after its own TUN writes.",
});

impl Counters {
    /// Counts an error boringtun returned for a received message.
    fn count_rx_error(&self, e: &WireGuardError) {
        let c = match e {
            WireGuardError::InvalidMac => &self.rx_dropped_invalid_mac,
            WireGuardError::InvalidAeadTag => &self.rx_dropped_decrypt,
            WireGuardError::InvalidCounter | WireGuardError::DuplicateCounter => {
                &self.rx_dropped_replay
            }
            WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => {
                &self.rx_dropped_no_session
            }
            WireGuardError::UnderLoad => &self.rx_dropped_under_load,
            WireGuardError::InvalidPacket | WireGuardError::IncorrectPacketLength => {
                &self.rx_dropped_malformed
            }
            _ => &self.rx_dropped_handshake,
        };
        Counters::add(c, 1);
    }
}

/// The running device threads; stopped and joined on [`Device::stop`] or drop.
#[derive(Debug)]
pub struct Device {
    threads: Threads,
    offloads: Offloads,
}

impl Device {
    /// Starts the threads on `tun` and `sock` (both opened in the node's namespace); `identity`
    /// gives the RX thread the keys to identify an initiator and the shared rate limiter.
    pub fn start(
        tun: Tun,
        sock: UdpSocket,
        peers: Arc<Shared<PeerTable>>,
        identity: Identity,
        counters: Arc<Counters>,
    ) -> io::Result<Device> {
        let offloads = Offloads {
            tun_vnet_hdr: tun.vnet_hdr(),
            udp_gso: sock.gso(),
            udp_gro: sock.gro(),
        };
        let tun = Arc::new(tun);
        let sock = Arc::new(sock);
        let mut dev = Device {
            threads: Threads::new(),
            offloads,
        };
        let tx = Arc::new(Mutex::new(Tx {
            tun: tun.clone(),
            sock: sock.clone(),
            peers: peers.reader(),
            counters: counters.clone(),
            trains: Trains::new(sock.gso(), "wireguard"),
            buf: vec![0u8; TUN_BUF],
            plain: Vec::with_capacity(TUN_BUF * 2),
            out: Vec::with_capacity(FLUSH_BYTES + TUN_BUF * 2),
            msgs: Vec::with_capacity(MAX_TUN_READS * 2),
        }));
        let (tx_thread, tun_fd) = (tx.clone(), tun.as_raw_fd());
        dev.threads.spawn("flannel-wg-tx", move |stop| {
            Tx::run(&tx_thread, tun_fd, stop)
        })?;
        let timers = Timers {
            sock: sock.clone(),
            peers: peers.reader(),
            counters: counters.clone(),
            rate_limiter: identity.rate_limiter.clone(),
        };
        dev.threads
            .spawn("flannel-wg-timers", move |stop| timers.run(stop))?;
        let rx = Rx {
            tun,
            sock,
            peers: peers.reader(),
            counters,
            identity,
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; 65_536]).collect(),
            plain: vec![0u8; 65_536],
            coalescer: Coalescer::new(),
            tx,
        };
        dev.threads
            .spawn("flannel-wg-rx", move |stop| rx.run(stop))?;
        Ok(dev)
    }

    /// What the kernel granted.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Stops the threads and waits for them (at most about
    /// [`POLL_MS`](flannel_udp::threads::POLL_MS); also on drop).
    pub fn stop(&mut self) {
        self.threads.stop();
    }

    /// Whether every thread still runs.
    pub fn is_running(&self) -> bool {
        self.threads.is_running()
    }
}

/// Counts and classifies a message we are about to send (first byte = message type).
fn count_sent(counters: &Counters, msg: &[u8], rekey_of: Option<&PeerState>) {
    match msg.first() {
        Some(1) => {
            Counters::add(&counters.handshake_initiations_sent, 1);
            if let Some(p) = rekey_of {
                Counters::add(&counters.rekeys, 1);
                Counters::add(&p.counters.rekeys, 1);
            }
        }
        Some(2) => Counters::add(&counters.handshake_responses_sent, 1),
        Some(3) => Counters::add(&counters.cookie_replies_sent, 1),
        Some(4) if msg.len() == DATA_OVERHEAD => Counters::add(&counters.keepalives_sent, 1),
        _ => {}
    }
}

fn send_one(sock: &UdpSocket, counters: &Counters, msg: &[u8], to: SocketAddr) {
    if let Err(e) = sock.send_to(msg, to) {
        tracing::debug!(%to, error = %e, "wireguard send failed");
        Counters::add(&counters.tx_errors, 1);
    }
}

/// The TX state: whichever thread holds it drains the TUN.
struct Tx {
    tun: Arc<Tun>,
    sock: Arc<UdpSocket>,
    peers: Reader<PeerTable>,
    counters: Arc<Counters>,
    /// Whether to build UDP GSO trains now.
    trains: Trains,
    buf: Vec<u8>,
    /// Plaintext packets of the super-packet being sent.
    plain: Vec<u8>,
    /// Encrypted messages of the batch, back to back.
    out: Vec<u8>,
    msgs: Vec<OutMsg>,
}

impl Tx {
    fn run(tx: &Mutex<Tx>, tun_fd: std::os::fd::RawFd, stop: &AtomicBool) {
        wait_loop(tun_fd, stop, "flannel-wg-tx", || {
            let mut state = tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            state.drain();
        });
    }

    /// Reads what the TUN holds (up to [`MAX_TUN_READS`] packets) and sends it.
    fn drain(&mut self) -> usize {
        let mut buf = std::mem::take(&mut self.buf);
        let table = self.peers.current();
        let mut read = 0;
        for _ in 0..MAX_TUN_READS {
            match self.tun.read(&mut buf) {
                Ok(Some(n)) => {
                    read += 1;
                    Counters::add(&self.counters.tun_reads, 1);
                    self.handle(&table, &mut buf[..n]);
                    if self.out.len() >= FLUSH_BYTES {
                        self.flush();
                    }
                }
                Ok(None) => break,
                Err(_) => break,
            }
        }
        self.buf = buf;
        self.flush();
        read
    }

    fn handle(&mut self, table: &PeerTable, buf: &mut [u8]) {
        let Ok((hdr, pkt)) = VirtioNetHdr::split_read(buf, self.tun.vnet_hdr()) else {
            Counters::add(&self.counters.tx_dropped_malformed, 1);
            return;
        };
        let ipv4 = pkt.first().is_some_and(|b| b >> 4 == 4);
        let dst = if ipv4 {
            Ipv4Header::parse(pkt).ok().map(|ip| IpAddr::V4(ip.dst))
        } else {
            Tunn::dst_address(pkt)
        };
        let Some(dst) = dst else {
            Counters::add(&self.counters.tx_dropped_malformed, 1);
            return;
        };
        let Some(peer) = table.route(dst) else {
            Counters::add(&self.counters.tx_no_peer, 1);
            if let Some(IpAddr::V4(own)) = table.own.map(|n| n.network())
                && ipv4
                && let Some(icmp) = codec::icmp_net_unreachable(pkt, own)
            {
                write_plain(&self.tun, &icmp, &self.counters);
            }
            return;
        };
        self.plain.clear();
        let segs = if ipv4 {
            match codec::segment(&hdr, pkt, &mut self.plain) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "dropping a TUN packet");
                    Counters::add(&self.counters.tx_dropped_malformed, 1);
                    return;
                }
            }
        } else {
            // IPv6 (`flannel-wg-v6`, opened without offloads): one packet per read.
            self.plain.extend_from_slice(pkt);
            codec::Segments {
                count: 1,
                size: pkt.len(),
                last: pkt.len(),
            }
        };
        let endpoint = peer.endpoint();
        let mut tunn = peer.lock();
        let had_session = tunn.time_since_last_handshake().is_some();
        // Data messages of this super-packet: (start, len), contiguous in `out`.
        let first_data = self.msgs.len();
        for i in 0..segs.count {
            let at = i * segs.size;
            let len = if i + 1 == segs.count {
                segs.last
            } else {
                segs.size
            };
            let src = &self.plain[at..at + len];
            let start = self.out.len();
            self.out
                .resize(start + (len + DATA_OVERHEAD).max(MIN_DST), 0);
            match tunn.encapsulate(src, &mut self.out[start..]) {
                TunnResult::WriteToNetwork(m) => {
                    let n = m.len();
                    let kind = m[0];
                    self.out.truncate(start + n);
                    if kind == 4 {
                        Counters::add(&self.counters.tx_packets, 1);
                        Counters::add(&self.counters.tx_bytes, len as u64);
                    } else {
                        // No session: boringtun queued the packet and asks for a handshake.
                        Counters::add(&self.counters.tx_queued, 1);
                        count_sent(
                            &self.counters,
                            &self.out[start..],
                            had_session.then_some(peer),
                        );
                    }
                    self.msgs.push(OutMsg {
                        to: endpoint,
                        start,
                        len: n,
                        seg: 0,
                    });
                }
                TunnResult::Done => {
                    // Queued behind a handshake already in flight.
                    self.out.truncate(start);
                    Counters::add(&self.counters.tx_queued, 1);
                }
                TunnResult::Err(e) => {
                    self.out.truncate(start);
                    tracing::debug!(error = ?e, "encapsulate failed");
                    Counters::add(&self.counters.tx_errors, 1);
                }
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                    self.out.truncate(start);
                }
            }
        }
        drop(tunn);
        if self.trains.allowed() {
            merge_gso_runs(&mut self.msgs, first_data);
        }
    }

    fn flush(&mut self) {
        let c = &self.counters;
        let counters = SendCounters {
            errors: &c.tx_errors,
            syscalls: &c.tx_syscalls,
            gso_messages: &c.tx_gso_messages,
            trains_refused: &c.tx_trains_refused,
        };
        self.sock
            .flush_queue(&mut self.out, &mut self.msgs, &mut self.trains, counters);
    }
}

/// Merges `msgs[from..]` runs of contiguous, equal-size messages to one endpoint (the last of a
/// run may be shorter) into UDP GSO messages of at most [`MAX_GSO_SEGMENTS`] /
/// [`MAX_GSO_BYTES`].
pub fn merge_gso_runs(msgs: &mut Vec<OutMsg>, from: usize) {
    let tail: Vec<OutMsg> = msgs.drain(from..).collect();
    let mut i = 0;
    while i < tail.len() {
        let first = tail[i];
        let size = first.len;
        let mut end = first.start + size;
        let mut count = 1;
        let mut j = i + 1;
        while j < tail.len() {
            let m = tail[j];
            let fits = count < MAX_GSO_SEGMENTS && (end - first.start) + m.len <= MAX_GSO_BYTES;
            if m.to != first.to || m.start != end || m.len > size || !fits {
                break;
            }
            end += m.len;
            count += 1;
            j += 1;
            if m.len < size {
                break;
            }
        }
        msgs.push(OutMsg {
            to: first.to,
            start: first.start,
            len: end - first.start,
            seg: if count > 1 { size as u16 } else { 0 },
        });
        i = j;
    }
}

/// Writes `pkt` to the TUN, with an all-zero vnet header when the TUN wants one.
fn write_plain(tun: &Tun, pkt: &[u8], counters: &Counters) {
    match tun.write_plain(pkt) {
        Ok(()) => Counters::add(&counters.tun_writes, 1),
        Err(_) => Counters::add(&counters.tun_write_errors, 1),
    }
}

struct Rx {
    tun: Arc<Tun>,
    sock: Arc<UdpSocket>,
    peers: Reader<PeerTable>,
    counters: Arc<Counters>,
    identity: Identity,
    bufs: Vec<Vec<u8>>,
    /// Decryption output (and handshake replies).
    plain: Vec<u8>,
    coalescer: Coalescer,
    tx: Arc<Mutex<Tx>>,
}

impl Rx {
    fn run(mut self, stop: &AtomicBool) {
        let mut bufs = std::mem::take(&mut self.bufs);
        let sock = self.sock.clone();
        receive_loop(&sock, &mut bufs, stop, "flannel-wg-rx", |ins, bufs| {
            Counters::add(&self.counters.rx_syscalls, 1);
            self.handle(ins, bufs);
            if let Ok(mut tx) = self.tx.try_lock() {
                let sent = tx.drain();
                Counters::add(&self.counters.tx_drained_by_rx, sent as u64);
            }
        });
    }

    fn handle(&mut self, ins: &[InMsg], bufs: &[Vec<u8>]) {
        let table = self.peers.current();
        for (i, m) in ins.iter().enumerate() {
            let seg = if m.seg == 0 { m.len } else { m.seg };
            if seg == 0 {
                Counters::add(&self.counters.rx_dropped_malformed, 1);
                continue;
            }
            for dg in bufs[i][..m.len].chunks(seg) {
                self.message(&table, m.from, dg);
            }
        }
        self.coalescer.flush();
        for p in self.coalescer.packets() {
            match self.tun.write(p) {
                Ok(()) => Counters::add(&self.counters.tun_writes, 1),
                Err(_) => Counters::add(&self.counters.tun_write_errors, 1),
            }
        }
        self.coalescer.clear();
    }

    /// The shared rate limit for handshake messages: MAC1 always, and under load MAC2 (a
    /// cookie from us); a message without it is answered with a cookie reply. `None`: the
    /// message goes no further.
    fn admit_handshake<'a>(&self, from: SocketAddr, dg: &'a [u8]) -> Option<Packet<'a>> {
        let c = &*self.counters;
        let mut cookie = [0u8; 64];
        match self
            .identity
            .rate_limiter
            .verify_packet(Some(from.ip()), dg, &mut cookie)
        {
            Ok(p) => Some(p),
            Err(TunnResult::WriteToNetwork(reply)) => {
                count_sent(c, reply, None);
                send_one(&self.sock, c, reply, from);
                None
            }
            Err(TunnResult::Err(e)) => {
                c.count_rx_error(&e);
                None
            }
            Err(_) => None,
        }
    }

    /// One WireGuard message from `from`.
    fn message(&mut self, table: &PeerTable, from: SocketAddr, dg: &[u8]) {
        let c = &*self.counters;
        let peer = match Tunn::parse_incoming_packet(dg) {
            Err(_) => {
                Counters::add(&c.rx_dropped_malformed, 1);
                return;
            }
            Ok(Packet::HandshakeInit(_)) => {
                // Rate limit (cookie under load) before any Diffie-Hellman.
                let Some(Packet::HandshakeInit(init)) = self.admit_handshake(from, dg) else {
                    return;
                };
                let r = &self.identity;
                match parse_handshake_anon(&r.private, &r.public, &init) {
                    Ok(half) => match table.by_key(&half.peer_static_public) {
                        Some(p) => p.clone(),
                        None => {
                            Counters::add(&c.rx_dropped_unknown_peer, 1);
                            return;
                        }
                    },
                    Err(e) => {
                        c.count_rx_error(&e);
                        return;
                    }
                }
            }
            Ok(Packet::HandshakeResponse(p)) => {
                // The same rate limit for responses.
                if self.admit_handshake(from, dg).is_none() {
                    return;
                }
                match table.by_index(p.receiver_idx) {
                    Some(p) => p.clone(),
                    None => {
                        Counters::add(&c.rx_dropped_unknown_peer, 1);
                        return;
                    }
                }
            }
            Ok(Packet::PacketCookieReply(p)) => match table.by_index(p.receiver_idx) {
                Some(p) => p.clone(),
                None => {
                    Counters::add(&c.rx_dropped_unknown_peer, 1);
                    return;
                }
            },
            Ok(Packet::PacketData(p)) => match table.by_index(p.receiver_idx) {
                Some(p) => p.clone(),
                None => {
                    Counters::add(&c.rx_dropped_unknown_peer, 1);
                    self.stale_session(table, from);
                    return;
                }
            },
        };
        let kind = dg[0];
        let mut tunn = peer.lock();
        let result = tunn.decapsulate(Some(from.ip()), dg, &mut self.plain);
        let authenticated = authenticates(kind, &result);
        match result {
            TunnResult::WriteToTunnelV4(pkt, src) => {
                if !table.allows(&peer, IpAddr::V4(src)) {
                    Counters::add(&c.rx_dropped_allowed_ips, 1);
                    Counters::add(&peer.counters.rx_dropped_allowed_ips, 1);
                } else if Ipv4Header::parse(pkt).is_ok() {
                    Counters::add(&c.rx_packets, 1);
                    Counters::add(&c.rx_bytes, pkt.len() as u64);
                    if self.tun.vnet_hdr() {
                        self.coalescer.push(pkt);
                    } else {
                        match self.tun.write(pkt) {
                            Ok(()) => Counters::add(&c.tun_writes, 1),
                            Err(_) => Counters::add(&c.tun_write_errors, 1),
                        }
                    }
                } else {
                    Counters::add(&c.rx_dropped_malformed, 1);
                }
            }
            TunnResult::WriteToTunnelV6(pkt, src) => {
                if !table.allows(&peer, IpAddr::V6(src)) {
                    Counters::add(&c.rx_dropped_allowed_ips, 1);
                    Counters::add(&peer.counters.rx_dropped_allowed_ips, 1);
                } else {
                    Counters::add(&c.rx_packets, 1);
                    Counters::add(&c.rx_bytes, pkt.len() as u64);
                    // boringtun checked the length; no offloads for IPv6.
                    write_plain(&self.tun, pkt, c);
                }
            }
            TunnResult::WriteToNetwork(reply) => {
                count_sent(c, reply, None);
                send_one(&self.sock, c, reply, from);
                if authenticated {
                    // Our response to an initiation, or the keepalive confirming our own.
                    Counters::add(&c.handshakes_completed, 1);
                    Counters::add(&peer.counters.handshakes, 1);
                }
            }
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                c.count_rx_error(&e);
                if kind == 4
                    && matches!(
                        e,
                        WireGuardError::NoCurrentSession | WireGuardError::WrongIndex
                    )
                {
                    drop(tunn);
                    self.stale_session(table, from);
                    return;
                }
            }
        }
        if authenticated {
            // Packets boringtun queued while no session existed leave now: after a
            // handshake, or after the first data message of a session we answered.
            while let TunnResult::WriteToNetwork(m) = tunn.decapsulate(None, &[], &mut self.plain) {
                let m: &[u8] = m;
                if m.first() == Some(&4) && m.len() > DATA_OVERHEAD {
                    Counters::add(&c.tx_packets, 1);
                    Counters::add(&c.tx_bytes, (m.len() - DATA_OVERHEAD) as u64);
                } else {
                    count_sent(c, m, None);
                }
                send_one(&self.sock, c, m, from);
            }
        }
        drop(tunn);
        if authenticated && peer.set_endpoint(from) {
            tracing::info!(peer = %crate::config::encode_key(&peer.public_key), endpoint = %from,
                "wireguard peer roamed");
        }
    }
}

impl Rx {
    /// A data message for a session we do not know, from a peer's endpoint: the peer still
    /// uses a session we lost (we restarted, or its device outlived ours). WireGuard would
    /// leave it to the peer's timers, which notice only after 15 s of sending without
    /// hearing back; we start a handshake at once instead (at most once per
    /// [`STALE_SESSION_HANDSHAKE_EVERY`] per peer), so the peer moves to a new session
    /// within a round trip.
    fn stale_session(&mut self, table: &PeerTable, from: SocketAddr) {
        let Some(peer) = table.by_endpoint(from) else {
            return;
        };
        let mut tunn = peer.lock();
        if tunn.time_since_last_handshake().is_some() {
            // We have a session with this peer: a stray of an old one, or junk.
            return;
        }
        let now = process_ms();
        let last = &peer.counters.last_stale_session_handshake_ms;
        let previous = last.load(Ordering::Relaxed);
        if previous != 0
            && now.saturating_sub(previous) < STALE_SESSION_HANDSHAKE_EVERY.as_millis() as u64
        {
            return;
        }
        last.store(now, Ordering::Relaxed);
        if let TunnResult::WriteToNetwork(m) =
            tunn.format_handshake_initiation(&mut self.plain, false)
        {
            let m: &[u8] = m;
            Counters::add(&self.counters.stale_session_handshakes, 1);
            count_sent(&self.counters, m, None);
            send_one(&self.sock, &self.counters, m, peer.endpoint());
        }
    }
}

/// Whether boringtun's `result` for a received message of type `kind` proves that the sender
/// holds the peer's key, so its address may become the peer's endpoint (roaming) and the
/// handshake counts: an initiation answered with a response (type 2), a response answered
/// with the confirming keepalive (type 4), a data message that decrypted (a packet, or a
/// keepalive: `Done`). A cookie reply proves nothing, nor does a cookie we send back.
pub fn authenticates(kind: u8, result: &TunnResult<'_>) -> bool {
    match (kind, result) {
        (1, TunnResult::WriteToNetwork(r)) => r.first() == Some(&2),
        (2, TunnResult::WriteToNetwork(r)) => r.first() == Some(&4),
        (
            4,
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) | TunnResult::Done,
        ) => true,
        _ => false,
    }
}

/// Milliseconds since the first call (a monotonic process clock).
fn process_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// How often a peer sending on a session we do not know may make us start a handshake.
pub const STALE_SESSION_HANDSHAKE_EVERY: Duration = Duration::from_secs(1);

/// The timer thread: protocol timers of every peer, and the rate limiter's second.
struct Timers {
    sock: Arc<UdpSocket>,
    peers: Reader<PeerTable>,
    counters: Arc<Counters>,
    rate_limiter: Arc<RateLimiter>,
}

impl Timers {
    fn run(mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 256];
        let mut last_reset = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TIMER_TICK);
            if last_reset.elapsed() >= Duration::from_secs(1) {
                self.rate_limiter.reset_count();
                last_reset = Instant::now();
            }
            let table = self.peers.current();
            for (peer, _) in table.iter() {
                let mut tunn = peer.lock();
                let had_session = tunn.time_since_last_handshake().is_some();
                if let TunnResult::WriteToNetwork(m) = tunn.update_timers(&mut buf) {
                    let m: &[u8] = m;
                    count_sent(&self.counters, m, had_session.then_some(&**peer));
                    send_one(&self.sock, &self.counters, m, peer.endpoint());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(start: usize, len: usize, to: &str) -> OutMsg {
        OutMsg {
            to: to.parse().unwrap(),
            start,
            len,
            seg: 0,
        }
    }

    #[test]
    fn gso_runs_merge_equal_contiguous_messages_to_one_endpoint() {
        let a = "198.18.0.2:51820";
        let b = "198.18.0.3:51820";
        let mut msgs = vec![msg(0, 148, a)];
        // Four 1432-byte messages and a short tail, then one to another peer.
        let mut at = 148;
        for len in [1432, 1432, 1432, 1432, 500] {
            msgs.push(msg(at, len, a));
            at += len;
        }
        msgs.push(msg(at, 1432, b));
        merge_gso_runs(&mut msgs, 1);
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            (msgs[1].start, msgs[1].len, msgs[1].seg),
            (148, 4 * 1432 + 500, 1432)
        );
        assert_eq!((msgs[2].len, msgs[2].seg), (1432, 0));
        // A split message gives back the datagrams.
        let parts: Vec<OutMsg> = msgs[1].datagrams().collect();
        let lens: Vec<usize> = parts.iter().map(|m| m.len).collect();
        assert_eq!(lens, [1432, 1432, 1432, 1432, 500]);
    }

    #[test]
    fn only_proof_of_the_peer_key_authenticates() {
        let mut b = [2u8, 0, 0, 0];
        assert!(authenticates(1, &TunnResult::WriteToNetwork(&mut b)));
        let mut cookie = [3u8; 64];
        assert!(!authenticates(1, &TunnResult::WriteToNetwork(&mut cookie)));
        assert!(!authenticates(2, &TunnResult::WriteToNetwork(&mut cookie)));
        let mut keepalive = [4u8; 32];
        assert!(authenticates(
            2,
            &TunnResult::WriteToNetwork(&mut keepalive)
        ));
        assert!(!authenticates(3, &TunnResult::Done), "a cookie reply");
        assert!(authenticates(4, &TunnResult::Done), "a keepalive");
        let mut pkt = [0x45u8; 20];
        assert!(authenticates(
            4,
            &TunnResult::WriteToTunnelV4(&mut pkt, std::net::Ipv4Addr::LOCALHOST)
        ));
        assert!(!authenticates(
            4,
            &TunnResult::Err(WireGuardError::InvalidAeadTag)
        ));
        assert!(!authenticates(
            1,
            &TunnResult::Err(WireGuardError::InvalidMac)
        ));
    }

    #[test]
    fn gso_runs_respect_the_kernel_limits() {
        let a = "198.18.0.2:51820";
        let mut msgs: Vec<OutMsg> = (0..100).map(|i| msg(i * 600, 600, a)).collect();
        merge_gso_runs(&mut msgs, 0);
        assert!(msgs.iter().all(|m| m.len <= MAX_GSO_BYTES));
        assert!(msgs.iter().all(|m| m.len / 600 <= MAX_GSO_SEGMENTS));
        assert_eq!(msgs.iter().map(|m| m.len).sum::<usize>(), 60_000);
        // A longer message after a shorter one starts a new run.
        let mut msgs = vec![msg(0, 500, a), msg(500, 600, a)];
        merge_gso_runs(&mut msgs, 0);
        assert_eq!(msgs.len(), 2);
    }
}
