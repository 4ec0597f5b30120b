//! # The datapath threads
//!
//! Two dedicated OS threads (never async runtime workers) move packets, one per direction:
//!
//! * **`flannel-udp-tx`** (TUN → UDP): drains the TUN (up to [`MAX_TUN_READS`] reads per
//!   wake-up), looks each packet up in the forwarding table, answers unknown destinations with
//!   ICMP *net unreachable* into the TUN, decrements the TTL, and turns TSO super-packets into
//!   MTU-size packets ([`codec::segment`]). The resulting datagrams are queued and sent with one
//!   `sendmmsg` per batch; a run of equal-size segments to one peer becomes a single UDP GSO
//!   message (`UDP_SEGMENT`), so the kernel's UDP stack handles a 64 KB window as one skb while
//!   the wire still carries flannel's one-IPv4-packet-per-datagram format. A train refused
//!   because its segments exceed the route's MTU (the underlay's MTU lowered under the TUN's
//!   at runtime) goes out datagram by datagram, fragmented by the kernel as flannel's are, and
//!   trains pause for a second.
//! * **`flannel-udp-rx`** (UDP → TUN): `recvmmsg` with `UDP_GRO` (one buffer may hold many
//!   datagrams of one sender, cut at the size the kernel reports); every datagram is checked
//!   against the membership table (sender holds a lease, inner source in that lease's subnet,
//!   inner destination in ours), has its TTL decremented, and is handed, where it lies in the
//!   receive buffer, to a [`codec::GatherCoalescer`]: consecutive TCP segments of a flow go to
//!   the TUN as one `GSO_TCPV4` super-packet, one `writev` over the segments in place.
//!
//! Without TUN offloads (`IFF_VNET_HDR` refused) both threads do one packet per TUN read or
//! write, as flannel does; without UDP GSO/GRO the batches are plain `sendmmsg`/`recvmmsg`.
//!
//! **The answer goes out on the thread that brought the question.** A packet written to the
//! TUN is processed by the kernel inside that `write`, so a reply (an echo reply, a TCP ACK)
//! is often queued on the TUN before the call returns. Left to the TX thread, it would wait
//! for that thread to be woken and scheduled — a second hand-off per hop that flannel's
//! single-threaded proxy does not pay, and why our low-rate RTT used to be higher than its.
//! So after each batch written to the TUN, the RX thread drains the TUN itself if the TX
//! state is free ([`std::sync::Mutex::try_lock`]); the TX thread finds nothing left and
//! sleeps again. Under load the TX thread usually holds the state and RX carries on.
//!
//! Threads wake at least every [`POLL_MS`] to look at the stop flag, so [`Datapath::stop`] (and
//! `Drop`) joins them within that time. The table is re-read once per batch ([`TableReader`]),
//! so a peer removed from the leases stops receiving traffic within one batch.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::codec::{
    self, GatherCoalescer, Ipv4Header, Place, TtlOutcome, VNET_HDR_LEN, VirtioNetHdr,
    decrement_ttl, icmp_net_unreachable,
};
use super::table::{SharedTable, SourceVerdict, Table, TableReader};
use super::threads::{Threads, receive_loop, wait_loop};
use super::tun::{InMsg, OutMsg, SendCounters, Trains, Tun, UdpSocket, train_exceeds_route_mtu};

pub use super::threads::POLL_MS;
/// TUN reads per wake-up before the batch is sent.
pub const MAX_TUN_READS: usize = 64;
/// Messages per `recvmmsg`.
pub const RECV_BATCH: usize = 8;
/// The most a UDP GSO message may carry (`0xffff` minus IPv4 and UDP headers).
pub const MAX_GSO_BYTES: usize = 65_507;
/// The kernel's `UDP_MAX_SEGMENTS`.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Send the queued batch once it holds this many bytes.
const FLUSH_BYTES: usize = 256 * 1024;
/// TUN read buffer: vnet header plus the largest IPv4 packet.
const TUN_BUF: usize = VNET_HDR_LEN + 65_536;

crate::counter_set!(
    /// The datapath's counters (monotonic, relaxed atomics).
    Counters, "flannel_udp_", {
    tx_packets => "Inner IPv4 packets sent to peers (after segmentation).",
    tx_bytes => "Bytes of inner IPv4 packets sent to peers.",
    rx_packets => "Inner IPv4 packets accepted from peers and written to the TUN.",
    rx_bytes => "Bytes of inner IPv4 packets accepted from peers.",
    tx_no_route => "Packets from the TUN whose destination no lease covers.",
    icmp_unreachable_sent => "ICMP net-unreachable errors written back into the TUN.",
    rx_dropped_non_member => "Datagrams dropped because their source IP holds no current lease.",
    rx_dropped_bad_source => "Datagrams dropped because the inner source is outside the sender's subnet.",
    rx_dropped_bad_destination => "Datagrams dropped because the inner destination is outside this node's subnet.",
    rx_dropped_malformed => "Datagrams dropped because they do not hold one well-formed IPv4 packet.",
    tx_dropped_malformed => "TUN packets dropped as malformed or with unsupported offload requests.",
    ttl_expired => "Packets dropped because their TTL reached zero.",
    tx_errors => "Datagrams the kernel refused to send.",
    tun_read_errors => "Failed TUN reads.",
    tun_write_errors => "Failed TUN writes.",
    tun_reads => "TUN reads that returned a packet.",
    tun_writes => "TUN writes (a coalesced super-packet counts once).",
    tx_syscalls => "sendmmsg calls.",
    rx_syscalls => "recvmmsg calls that returned data.",
    tx_gso_messages => "UDP GSO messages sent (each carries several datagrams).",
    rx_gro_segments => "Received segments merged into TUN super-packets.",
    tx_drained_by_rx => "TUN packets read and sent by the RX thread right after its own TUN writes.",
    tx_trains_refused => "UDP GSO trains refused because a segment exceeds the route's MTU (each pauses trains for a second).",
});

/// Which offloads the running datapath got from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offloads {
    /// TUN with `IFF_VNET_HDR` + TSO (super-packets in both directions).
    pub tun_vnet_hdr: bool,
    /// UDP GSO (`UDP_SEGMENT`) on send.
    pub udp_gso: bool,
    /// UDP GRO on receive.
    pub udp_gro: bool,
}

/// The two running threads; stopped and joined on [`Datapath::stop`] or drop.
#[derive(Debug)]
pub struct Datapath {
    threads: Threads,
    offloads: Offloads,
}

impl Datapath {
    /// Starts the threads on `tun` and `sock` (created in the node's namespace), routing with
    /// `table` and counting into `counters`.
    pub fn start(
        tun: Tun,
        sock: UdpSocket,
        table: Arc<SharedTable>,
        counters: Arc<Counters>,
    ) -> io::Result<Datapath> {
        let offloads = Offloads {
            tun_vnet_hdr: tun.vnet_hdr(),
            udp_gso: sock.gso(),
            udp_gro: sock.gro(),
        };
        let tun = Arc::new(tun);
        let sock = Arc::new(sock);
        let mut dp = Datapath {
            threads: Threads::new(),
            offloads,
        };
        let tx = Arc::new(Mutex::new(Tx {
            tun: tun.clone(),
            sock: sock.clone(),
            table: table.reader(),
            counters: counters.clone(),
            trains: Trains::new(sock.gso(), "udp"),
            buf: vec![0u8; TUN_BUF],
            out: Vec::with_capacity(FLUSH_BYTES + TUN_BUF * 2),
            msgs: Vec::with_capacity(MAX_TUN_READS * 2),
            hdrs: Vec::with_capacity(MAX_GSO_SEGMENTS * 120),
        }));
        let tx_thread = tx.clone();
        let tun_fd = tun.as_raw_fd();
        dp.threads.spawn("flannel-udp-tx", move |stop| {
            Tx::run(&tx_thread, tun_fd, stop)
        })?;
        let rx = Rx {
            tun,
            sock,
            table: table.reader(),
            counters,
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; 65_536]).collect(),
            accepted: Vec::with_capacity(RECV_BATCH * MAX_GSO_SEGMENTS),
            coalescer: GatherCoalescer::new(),
            tx,
        };
        dp.threads
            .spawn("flannel-udp-rx", move |stop| rx.run(stop))?;
        Ok(dp)
    }

    /// What the kernel granted.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Stops both threads and waits for them (at most about [`POLL_MS`]; also on drop).
    pub fn stop(&mut self) {
        self.threads.stop();
    }

    /// Whether both threads still run.
    pub fn is_running(&self) -> bool {
        self.threads.is_running()
    }
}

/// Writes `pkt` to the TUN, with an all-zero vnet header when the TUN wants one.
fn write_plain(tun: &Tun, pkt: &[u8], counters: &Counters) {
    match tun.write_plain(pkt) {
        Ok(()) => Counters::add(&counters.tun_writes, 1),
        Err(_) => Counters::add(&counters.tun_write_errors, 1),
    }
}

/// The TX state: whichever thread holds it drains the TUN (see the module docs).
struct Tx {
    tun: Arc<Tun>,
    sock: Arc<UdpSocket>,
    table: TableReader,
    counters: Arc<Counters>,
    /// Whether to build UDP GSO trains now.
    trains: Trains,
    buf: Vec<u8>,
    out: Vec<u8>,
    msgs: Vec<OutMsg>,
    /// Segment headers of the super-packet being sent from the TUN buffer.
    hdrs: Vec<u8>,
}

impl Tx {
    /// The TX thread: sleeps until the TUN is readable, then drains it.
    fn run(tx: &Mutex<Tx>, tun_fd: std::os::fd::RawFd, stop: &AtomicBool) {
        wait_loop(tun_fd, stop, "flannel-udp-tx", || {
            // A poisoned lock means the other thread panicked mid-batch; the state is still
            // a valid (possibly half-filled) batch, which drain sends or clears.
            let mut state = tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            state.drain();
        });
    }

    /// Reads what the TUN holds (up to [`MAX_TUN_READS`] packets, without waiting) and sends
    /// it. Returns the number of packets read.
    fn drain(&mut self) -> usize {
        let mut buf = std::mem::take(&mut self.buf);
        let mut read = 0;
        for _ in 0..MAX_TUN_READS {
            match self.tun.read(&mut buf) {
                Ok(Some(n)) => {
                    read += 1;
                    Counters::add(&self.counters.tun_reads, 1);
                    self.handle(&mut buf[..n]);
                    if self.out.len() >= FLUSH_BYTES {
                        self.flush();
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    Counters::add(&self.counters.tun_read_errors, 1);
                    break;
                }
            }
        }
        self.buf = buf;
        self.flush();
        read
    }

    fn handle(&mut self, buf: &mut [u8]) {
        let Ok((hdr, pkt)) = VirtioNetHdr::split_read(buf, self.tun.vnet_hdr()) else {
            Counters::add(&self.counters.tx_dropped_malformed, 1);
            return;
        };
        let Ok(ip) = Ipv4Header::parse(pkt) else {
            Counters::add(&self.counters.tx_dropped_malformed, 1);
            return;
        };
        let table: Arc<Table> = self.table.current();
        let Some(route) = table.lookup(ip.dst).copied() else {
            Counters::add(&self.counters.tx_no_route, 1);
            if let Some(own) = table.own_subnet()
                && let Some(icmp) = icmp_net_unreachable(pkt, own.network())
            {
                Counters::add(&self.counters.icmp_unreachable_sent, 1);
                write_plain(&self.tun, &icmp, &self.counters);
            }
            return;
        };
        if decrement_ttl(pkt) == TtlOutcome::Expired {
            Counters::add(&self.counters.ttl_expired, 1);
            return;
        }
        if self.trains.allowed() && self.send_train_in_place(&hdr, pkt, route.endpoint.into()) {
            return;
        }
        let start = self.out.len();
        let segs = match codec::segment(&hdr, pkt, &mut self.out) {
            Ok(s) => s,
            Err(e) => {
                self.out.truncate(start);
                tracing::debug!(error = %e, "dropping a TUN packet");
                Counters::add(&self.counters.tx_dropped_malformed, 1);
                return;
            }
        };
        let total = self.out.len() - start;
        Counters::add(&self.counters.tx_packets, segs.count as u64);
        Counters::add(&self.counters.tx_bytes, total as u64);
        if segs.count == 1 {
            self.msgs.push(OutMsg {
                to: route.endpoint.into(),
                start,
                len: total,
                seg: 0,
            });
            return;
        }
        // Asked again: a train refused just now paused them.
        if self.trains.allowed() {
            let per = (MAX_GSO_BYTES / segs.size).clamp(1, MAX_GSO_SEGMENTS);
            let mut at = start;
            let mut left = segs.count;
            while left > 0 {
                let k = left.min(per);
                let len = if k == left {
                    (k - 1) * segs.size + segs.last
                } else {
                    k * segs.size
                };
                self.msgs.push(OutMsg {
                    to: route.endpoint.into(),
                    start: at,
                    len,
                    seg: if k > 1 { segs.size as u16 } else { 0 },
                });
                at += len;
                left -= k;
            }
        } else {
            for i in 0..segs.count {
                let len = if i + 1 == segs.count {
                    segs.last
                } else {
                    segs.size
                };
                self.msgs.push(OutMsg {
                    to: route.endpoint.into(),
                    start: start + i * segs.size,
                    len,
                    seg: 0,
                });
            }
        }
    }

    /// Sends a TCP super-packet as UDP GSO trains straight from the TUN read buffer: the
    /// segment headers are built in `self.hdrs` and each `sendmsg` gathers header, payload,
    /// header, payload… (no copy of the payload into the send buffer). Whatever is queued goes
    /// first, so a flow's packets keep their order. `false` when `pkt` is no super-packet, or
    /// when the kernel refused a train: the caller then takes the copying path for the whole
    /// packet, which has the fallbacks (one datagram at a time; GSO off for good on `EIO`).
    /// A refusal after an earlier train of the same packet went out resends that train's
    /// segments, which TCP takes as duplicates.
    fn send_train_in_place(&mut self, hdr: &VirtioNetHdr, pkt: &[u8], to: SocketAddr) -> bool {
        self.hdrs.clear();
        let train = match codec::segment_headers(hdr, pkt, &mut self.hdrs) {
            Ok(Some(train)) if train.count > 1 => train,
            _ => return false,
        };
        self.flush();
        let per = (MAX_GSO_BYTES / train.size()).clamp(1, MAX_GSO_SEGMENTS);
        // Header and payload per segment, on the stack: no allocation per super-packet.
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iovs = [empty; 2 * MAX_GSO_SEGMENTS];
        let mut first = 0;
        while first < train.count {
            let end = (first + per).min(train.count);
            let parts = &mut iovs[..2 * (end - first)];
            for (k, i) in (first..end).enumerate() {
                let h = &self.hdrs[i * train.hl..(i + 1) * train.hl];
                let chunk = train.chunk(pkt, i);
                for (slot, part) in parts[2 * k..2 * k + 2].iter_mut().zip([h, chunk]) {
                    *slot = libc::iovec {
                        iov_base: part.as_ptr() as *mut libc::c_void,
                        iov_len: part.len(),
                    };
                }
            }
            let seg = if end - first > 1 {
                train.size() as u16
            } else {
                0
            };
            Counters::add(&self.counters.tx_syscalls, 1);
            if let Err(e) = self.sock.send_gather(to, parts, seg) {
                tracing::debug!(%to, error = %e, "udp GSO send from the TUN buffer failed");
                if seg > 0 && train_exceeds_route_mtu(&e) {
                    Counters::add(&self.counters.tx_trains_refused, 1);
                    self.trains.refused(to, e.raw_os_error().unwrap_or(0));
                }
                return false;
            }
            if seg > 0 {
                Counters::add(&self.counters.tx_gso_messages, 1);
                self.trains.went_through();
            }
            first = end;
        }
        Counters::add(&self.counters.tx_packets, train.count as u64);
        Counters::add(
            &self.counters.tx_bytes,
            (train.total_len - train.hl + train.count * train.hl) as u64,
        );
        true
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

struct Rx {
    tun: Arc<Tun>,
    sock: Arc<UdpSocket>,
    table: TableReader,
    counters: Arc<Counters>,
    bufs: Vec<Vec<u8>>,
    /// Where this batch's accepted packets lie in `bufs` (vnet-header TUN only).
    accepted: Vec<Place>,
    coalescer: GatherCoalescer,
    /// The TX state, drained here after each TUN write when the TX thread is not using it.
    tx: Arc<Mutex<Tx>>,
}

impl Rx {
    fn run(mut self, stop: &AtomicBool) {
        let mut bufs = std::mem::take(&mut self.bufs);
        let sock = self.sock.clone();
        receive_loop(&sock, &mut bufs, stop, "flannel-udp-rx", |ins, bufs| {
            Counters::add(&self.counters.rx_syscalls, 1);
            self.handle(ins, bufs);
            // Replies the kernel queued during those writes leave now.
            if let Ok(mut tx) = self.tx.try_lock() {
                let sent = tx.drain();
                Counters::add(&self.counters.tx_drained_by_rx, sent as u64);
            }
        });
    }

    fn handle(&mut self, ins: &[InMsg], bufs: &mut [Vec<u8>]) {
        let vnet = self.tun.vnet_hdr();
        let table = self.table.current();
        self.accepted.clear();
        for (i, m) in ins.iter().enumerate() {
            let seg = if m.seg == 0 { m.len } else { m.seg };
            if seg == 0 {
                Counters::add(&self.counters.rx_dropped_malformed, 1);
                continue;
            }
            let std::net::SocketAddr::V4(from) = m.from else {
                Counters::add(&self.counters.rx_dropped_malformed, 1);
                continue;
            };
            let sender: Ipv4Addr = *from.ip();
            for (k, dg) in bufs[i][..m.len].chunks_mut(seg).enumerate() {
                let Ok(ip) = Ipv4Header::parse(dg) else {
                    Counters::add(&self.counters.rx_dropped_malformed, 1);
                    continue;
                };
                let c = &self.counters;
                match table.check_source(sender, ip.src, ip.dst) {
                    SourceVerdict::Accept => {}
                    SourceVerdict::NonMember => {
                        Counters::add(&c.rx_dropped_non_member, 1);
                        continue;
                    }
                    SourceVerdict::BadSource => {
                        Counters::add(&c.rx_dropped_bad_source, 1);
                        continue;
                    }
                    SourceVerdict::BadDestination => {
                        Counters::add(&c.rx_dropped_bad_destination, 1);
                        continue;
                    }
                }
                let pkt = &mut dg[..ip.total_len];
                if decrement_ttl(pkt) == TtlOutcome::Expired {
                    Counters::add(&c.ttl_expired, 1);
                    continue;
                }
                Counters::add(&c.rx_packets, 1);
                Counters::add(&c.rx_bytes, ip.total_len as u64);
                if vnet {
                    self.accepted.push(Place {
                        buf: i,
                        start: k * seg,
                        len: ip.total_len,
                    });
                } else {
                    match self.tun.write(pkt) {
                        Ok(()) => Counters::add(&c.tun_writes, 1),
                        Err(_) => Counters::add(&c.tun_write_errors, 1),
                    }
                }
            }
        }
        if vnet {
            // The packets stay where they were received: coalesced super-packets are written
            // with `writev` over the receive buffers.
            for at in &self.accepted {
                self.coalescer.push(bufs, *at);
            }
            self.coalescer.flush(bufs);
            let (tun, counters) = (&self.tun, &self.counters);
            self.coalescer
                .for_each_packet(bufs, |parts| match tun.write_vectored(parts) {
                    Ok(()) => Counters::add(&counters.tun_writes, 1),
                    Err(_) => Counters::add(&counters.tun_write_errors, 1),
                });
            Counters::add(
                &self.counters.rx_gro_segments,
                self.coalescer.merged_segments() as u64,
            );
            self.coalescer.clear();
        }
    }
}
