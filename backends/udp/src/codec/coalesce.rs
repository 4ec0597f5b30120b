//! GRO-style coalescing on the way in: consecutive in-order segments of one TCP flow glued
//! back into a super-packet for one TUN write. [`Coalescer`] copies the packets it is given
//! into its own buffer; [`GatherCoalescer`] leaves them where they were received and
//! describes each super-packet as a list of slices of the receive buffers, for one `writev`.
//! Both follow the same rules ([`Flow::accepts`]) and write the same headers
//! ([`Flow::finish`]), so their output is byte for byte the same.

use super::*;

/// At most this many segments go into one super-packet (as many as one UDP GSO train carries);
/// it bounds the slices of a gathered write.
pub const MAX_COALESCED_SEGMENTS: usize = 64;

/// What [`Flow::accepts`] found out about a segment that continues the flow.
struct Continuation {
    seq: u32,
    flags: u8,
    plen: usize,
}

/// The flow identity and header template of a super-packet being built.
#[derive(Clone, Debug)]
struct Flow {
    /// IP header length.
    ihl: usize,
    /// IP + TCP header length.
    hl: usize,
    /// Payload bytes per segment (from the first segment).
    mss: usize,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    /// Segments merged so far.
    segs: usize,
    /// Whether no more segments may be added (short or PSH segment seen).
    closed: bool,
}

impl Flow {
    /// The flow a coalescable first segment opens (`shape` from [`tcp_candidate`]).
    fn open(pkt: &[u8], (ihl, hl, plen): (usize, usize, usize)) -> Flow {
        let seq = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
        Flow {
            ihl,
            hl,
            mss: plen,
            next_seq: seq.wrapping_add(plen as u32),
            segs: 1,
            closed: pkt[ihl + 13] & TCP_PSH != 0,
        }
    }

    /// Whether `pkt` continues this flow's super-packet, whose first segment's headers start
    /// `first` and which holds `cur_len` bytes so far (see [`Coalescer`] for the rules).
    fn accepts(&self, first: &[u8], cur_len: usize, pkt: &[u8]) -> Option<Continuation> {
        if self.closed || self.segs >= MAX_COALESCED_SEGMENTS {
            return None;
        }
        let (ihl, hl, plen) = tcp_candidate(pkt)?;
        if ihl != self.ihl || hl != self.hl || plen > self.mss || cur_len + plen > MAX_IPV4_PACKET {
            return None;
        }
        let first = &first[..hl];
        // IP: version/IHL/TOS (0..2), flags+fragment (6..8), TTL/protocol (8..10),
        // addresses (12..20) must match.
        if first[0..2] != pkt[0..2] || first[6..10] != pkt[6..10] || first[12..20] != pkt[12..20] {
            return None;
        }
        let t = ihl;
        // TCP: ports (0..4), ack (8..12), data offset (12), window (14..16), options (20..).
        if first[t..t + 4] != pkt[t..t + 4]
            || first[t + 8..t + 13] != pkt[t + 8..t + 13]
            || first[t + 14..t + 16] != pkt[t + 14..t + 16]
            || first[t + 20..hl] != pkt[t + 20..hl]
        {
            return None;
        }
        let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]]);
        (seq == self.next_seq).then_some(Continuation {
            seq,
            flags: pkt[t + 13],
            plen,
        })
    }

    /// Takes an accepted segment into the flow's state.
    fn advance(&mut self, next: &Continuation) {
        self.next_seq = next.seq.wrapping_add(next.plen as u32);
        self.segs += 1;
        self.closed = next.plen < self.mss || next.flags & TCP_PSH != 0;
    }

    /// Turns the first segment's headers (`first`, at least `hl` bytes) into the headers of a
    /// `total`-byte super-packet — IP length and checksum, the TCP pseudo-header sum as a
    /// partial checksum — and returns the vnet header that goes before it.
    fn finish(&self, first: &mut [u8], total: usize) -> [u8; VNET_HDR_LEN] {
        let p = first;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        set_ipv4_checksum(p);
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let partial = fold(pseudo_header_sum(src, dst, PROTO_TCP, total - self.ihl));
        let t = self.ihl;
        p[t + 16..t + 18].copy_from_slice(&partial.to_be_bytes());
        VirtioNetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: VNET_GSO_TCPV4,
            hdr_len: self.hl as u16,
            gso_size: self.mss as u16,
            csum_start: self.ihl as u16,
            csum_offset: 16,
        }
        .to_bytes()
    }
}

/// Glues consecutive TCP segments of one flow into `GSO_TCPV4` super-packets, the way GRO
/// does, for writing to a vnet-header TUN. Feed packets with [`Coalescer::push`] in arrival
/// order; every finished packet (vnet header included) is in [`Coalescer::packets`] after
/// [`Coalescer::flush`].
///
/// A segment joins the open super-packet only if it continues it exactly: same addresses,
/// ports, TTL, TOS, IP flags, acknowledgement, window and TCP options; sequence number right
/// after the previous payload; only ACK (and PSH) set; payload no longer than the first
/// segment's, and every earlier one full-sized; at most [`MAX_COALESCED_SEGMENTS`]. A shorter
/// or PSH segment closes the super-packet. Anything else (non-TCP, IP options, fragments,
/// SYN/FIN/RST/URG) passes through alone with an all-zero vnet header.
#[derive(Debug, Default)]
pub struct Coalescer {
    buf: Vec<u8>,
    ends: Vec<usize>,
    open: Option<Flow>,
    merged: usize,
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new() -> Coalescer {
        Coalescer::default()
    }

    /// Adds one validated IPv4 packet (`pkt` is exactly the packet: `total_len` bytes).
    pub fn push(&mut self, pkt: &[u8]) {
        if let Some(flow) = self.open.as_ref()
            && self.try_append(flow.clone(), pkt)
        {
            return;
        }
        self.close();
        match tcp_candidate(pkt) {
            Some(shape) => {
                self.buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
                self.buf.extend_from_slice(pkt);
                self.open = Some(Flow::open(pkt, shape));
            }
            None => {
                self.buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
                self.buf.extend_from_slice(pkt);
                self.ends.push(self.buf.len());
            }
        }
    }

    /// Where the open super-packet starts in `buf` (at its vnet header): right after the
    /// last finished packet.
    fn open_start(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    fn try_append(&mut self, mut flow: Flow, pkt: &[u8]) -> bool {
        let start = self.open_start();
        let cur_len = self.buf.len() - start - VNET_HDR_LEN;
        let first = &self.buf[start + VNET_HDR_LEN..];
        let Some(next) = flow.accepts(first, cur_len, pkt) else {
            return false;
        };
        self.buf.extend_from_slice(&pkt[flow.hl..]);
        if next.flags & TCP_PSH != 0 {
            let at = start + VNET_HDR_LEN + flow.ihl + 13;
            self.buf[at] |= TCP_PSH;
        }
        flow.advance(&next);
        self.open = Some(flow);
        true
    }

    /// Finishes the open super-packet, if any.
    fn close(&mut self) {
        let Some(flow) = self.open.take() else {
            return;
        };
        let end = self.buf.len();
        if flow.segs > 1 {
            let start = self.open_start();
            let total = end - start - VNET_HDR_LEN;
            let vnet = flow.finish(&mut self.buf[start + VNET_HDR_LEN..end], total);
            self.buf[start..start + VNET_HDR_LEN].copy_from_slice(&vnet);
            self.merged += flow.segs;
        }
        self.ends.push(end);
    }

    /// Closes the open super-packet; afterwards [`Coalescer::packets`] has everything pushed.
    pub fn flush(&mut self) {
        self.close();
    }

    /// The finished packets, each starting with its vnet header.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let p = &self.buf[start..end];
            start = end;
            p
        })
    }

    /// Number of finished packets.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether nothing is finished.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Segments that went into multi-segment super-packets since the last [`Coalescer::clear`].
    pub fn merged_segments(&self) -> usize {
        self.merged
    }

    /// Forgets everything (keeps the allocation).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.open = None;
        self.merged = 0;
    }
}

/// Where a received packet lies in the caller's receive buffers: `bufs[buf][start..start + len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Index of the buffer.
    pub buf: usize,
    /// Offset of the packet's first byte.
    pub start: usize,
    /// The packet's length (its IPv4 `total_len`).
    pub len: usize,
}

/// One finished packet of a [`GatherCoalescer`]: its vnet header and its slices.
#[derive(Clone, Debug)]
struct Gathered {
    vnet: [u8; VNET_HDR_LEN],
    /// Indices into `GatherCoalescer::parts`.
    parts: std::ops::Range<usize>,
}

/// The open super-packet of a [`GatherCoalescer`].
#[derive(Clone, Debug)]
struct OpenGather {
    flow: Flow,
    /// The first segment, headers and payload; its headers are rewritten in place at close.
    first: Place,
    /// Where this super-packet's slices start in `parts`.
    parts_from: usize,
    /// Bytes so far (headers once, all payloads).
    len: usize,
}

/// [`Coalescer`] without the copy: the packets stay in the receive buffers and each finished
/// packet is a vnet header plus slices — the first segment whole (headers rewritten in
/// place), then the payload of every segment merged into it — handed to
/// [`GatherCoalescer::for_each_packet`] for one `writev` each. The same rules and headers
/// as [`Coalescer`]'s.
#[derive(Debug, Default)]
pub struct GatherCoalescer {
    packets: Vec<Gathered>,
    parts: Vec<Place>,
    open: Option<OpenGather>,
    merged: usize,
}

impl GatherCoalescer {
    /// An empty coalescer.
    pub fn new() -> GatherCoalescer {
        GatherCoalescer::default()
    }

    /// Adds the validated IPv4 packet at `at` in `bufs` (exactly `total_len` bytes). The
    /// buffers must not change until the packets are written and [`GatherCoalescer::clear`]
    /// is called, other than by this coalescer.
    pub fn push(&mut self, bufs: &mut [Vec<u8>], at: Place) {
        let pkt = &bufs[at.buf][at.start..at.start + at.len];
        if let Some(open) = self.open.as_mut() {
            let first = &bufs[open.first.buf][open.first.start..];
            if let Some(next) = open.flow.accepts(first, open.len, pkt) {
                let hl = open.flow.hl;
                self.parts.push(Place {
                    buf: at.buf,
                    start: at.start + hl,
                    len: at.len - hl,
                });
                open.len += next.plen;
                open.flow.advance(&next);
                // A merged PSH goes onto the super-packet, as in `Coalescer::try_append`.
                if next.flags & TCP_PSH != 0 {
                    bufs[open.first.buf][open.first.start + open.flow.ihl + 13] |= TCP_PSH;
                }
                return;
            }
        }
        self.close(bufs);
        let pkt = &bufs[at.buf][at.start..at.start + at.len];
        let parts_from = self.parts.len();
        self.parts.push(at);
        match tcp_candidate(pkt) {
            Some(shape) => {
                self.open = Some(OpenGather {
                    flow: Flow::open(pkt, shape),
                    first: at,
                    parts_from,
                    len: at.len,
                })
            }
            None => self.packets.push(Gathered {
                vnet: [0; VNET_HDR_LEN],
                parts: parts_from..parts_from + 1,
            }),
        }
    }

    /// Finishes the open super-packet, if any, rewriting its first header in `bufs`.
    fn close(&mut self, bufs: &mut [Vec<u8>]) {
        let Some(open) = self.open.take() else {
            return;
        };
        let mut vnet = [0; VNET_HDR_LEN];
        if open.flow.segs > 1 {
            let first = &mut bufs[open.first.buf][open.first.start..];
            vnet = open.flow.finish(first, open.len);
            self.merged += open.flow.segs;
        }
        self.packets.push(Gathered {
            vnet,
            parts: open.parts_from..self.parts.len(),
        });
    }

    /// Closes the open super-packet; afterwards every pushed packet is finished.
    pub fn flush(&mut self, bufs: &mut [Vec<u8>]) {
        self.close(bufs);
    }

    /// Calls `write` with each finished packet as slices: its vnet header, then its parts in
    /// `bufs` (at most 1 + [`MAX_COALESCED_SEGMENTS`] slices).
    pub fn for_each_packet(&self, bufs: &[Vec<u8>], mut write: impl FnMut(&[std::io::IoSlice])) {
        let mut slices = [std::io::IoSlice::new(&[]); 1 + MAX_COALESCED_SEGMENTS];
        for p in &self.packets {
            slices[0] = std::io::IoSlice::new(&p.vnet);
            let parts = &self.parts[p.parts.clone()];
            for (slot, at) in slices[1..].iter_mut().zip(parts) {
                *slot = std::io::IoSlice::new(&bufs[at.buf][at.start..at.start + at.len]);
            }
            write(&slices[..1 + parts.len()]);
        }
    }

    /// Number of finished packets.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether nothing is finished.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Segments that went into multi-segment super-packets since the last
    /// [`GatherCoalescer::clear`].
    pub fn merged_segments(&self) -> usize {
        self.merged
    }

    /// Forgets everything (keeps the allocations).
    pub fn clear(&mut self) {
        self.packets.clear();
        self.parts.clear();
        self.open = None;
        self.merged = 0;
    }
}

/// `(ihl, ip+tcp header len, payload len)` of a TCP packet that may be coalesced: no IP options,
/// not a fragment, a payload, and no flags but ACK (+PSH).
fn tcp_candidate(pkt: &[u8]) -> Option<(usize, usize, usize)> {
    let h = Ipv4Header::parse(pkt).ok()?;
    if h.protocol != PROTO_TCP || h.ihl != 20 || h.is_fragment() || pkt.len() < 40 {
        return None;
    }
    let thl = usize::from(pkt[20 + 12] >> 4) * 4;
    let hl = 20 + thl;
    if thl < 20 || h.total_len <= hl {
        return None;
    }
    let flags = pkt[20 + 13];
    if flags & TCP_ACK == 0 || flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) != 0 {
        return None;
    }
    Some((20, hl, h.total_len - hl))
}
