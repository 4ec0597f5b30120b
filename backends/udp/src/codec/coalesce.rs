//! GRO-style coalescing on the way in: consecutive in-order segments of one TCP flow glued
//! back into a super-packet for one TUN write.

use super::*;

/// The flow identity and header template of a super-packet being built.
#[derive(Clone, Debug)]
struct Flow {
    /// Where the super-packet starts in the output buffer (at its vnet header).
    start: usize,
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

/// Glues consecutive TCP segments of one flow into `GSO_TCPV4` super-packets, the way GRO
/// does, for writing to a vnet-header TUN. Feed packets with [`Coalescer::push`] in arrival
/// order; every finished packet (vnet header included) is in [`Coalescer::packets`] after
/// [`Coalescer::flush`].
///
/// A segment joins the open super-packet only if it continues it exactly: same addresses,
/// ports, TTL, TOS, IP flags, acknowledgement, window and TCP options; sequence number right
/// after the previous payload; only ACK (and PSH) set; payload no longer than the first
/// segment's, and every earlier one full-sized. A shorter or PSH segment closes the
/// super-packet. Anything else (non-TCP, IP options, fragments, SYN/FIN/RST/URG) passes through
/// alone with an all-zero vnet header.
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
        let start = self.buf.len();
        match tcp_candidate(pkt) {
            Some((ihl, hl, plen)) => {
                self.buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
                self.buf.extend_from_slice(pkt);
                let seq =
                    u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
                self.open = Some(Flow {
                    start,
                    ihl,
                    hl,
                    mss: plen,
                    next_seq: seq.wrapping_add(plen as u32),
                    segs: 1,
                    closed: pkt[ihl + 13] & TCP_PSH != 0,
                });
            }
            None => {
                self.buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
                self.buf.extend_from_slice(pkt);
                self.ends.push(self.buf.len());
            }
        }
    }

    fn try_append(&mut self, mut flow: Flow, pkt: &[u8]) -> bool {
        if flow.closed {
            return false;
        }
        let Some((ihl, hl, plen)) = tcp_candidate(pkt) else {
            return false;
        };
        let cur_len = self.buf.len() - flow.start - VNET_HDR_LEN;
        if ihl != flow.ihl || hl != flow.hl || plen > flow.mss || cur_len + plen > MAX_IPV4_PACKET {
            return false;
        }
        let first = &self.buf[flow.start + VNET_HDR_LEN..flow.start + VNET_HDR_LEN + hl];
        // IP: version/IHL/TOS (0..2), flags+fragment (6..8), TTL/protocol (8..10),
        // addresses (12..20) must match.
        if first[0..2] != pkt[0..2] || first[6..10] != pkt[6..10] || first[12..20] != pkt[12..20] {
            return false;
        }
        let t = ihl;
        // TCP: ports (0..4), ack (8..12), data offset (12), window (14..16), options (20..).
        if first[t..t + 4] != pkt[t..t + 4]
            || first[t + 8..t + 13] != pkt[t + 8..t + 13]
            || first[t + 14..t + 16] != pkt[t + 14..t + 16]
            || first[t + 20..hl] != pkt[t + 20..hl]
        {
            return false;
        }
        let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]]);
        if seq != flow.next_seq {
            return false;
        }
        let flags = pkt[t + 13];
        self.buf.extend_from_slice(&pkt[hl..]);
        if flags & TCP_PSH != 0 {
            let at = flow.start + VNET_HDR_LEN + t + 13;
            self.buf[at] |= TCP_PSH;
        }
        flow.next_seq = seq.wrapping_add(plen as u32);
        flow.segs += 1;
        flow.closed = plen < flow.mss || flags & TCP_PSH != 0;
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
            let p = &mut self.buf[flow.start + VNET_HDR_LEN..end];
            let total = p.len();
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            set_ipv4_checksum(p);
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let partial = fold(pseudo_header_sum(src, dst, PROTO_TCP, total - flow.ihl));
            let t = flow.ihl;
            p[t + 16..t + 18].copy_from_slice(&partial.to_be_bytes());
            let hdr = VirtioNetHdr {
                flags: VNET_F_NEEDS_CSUM,
                gso_type: VNET_GSO_TCPV4,
                hdr_len: flow.hl as u16,
                gso_size: flow.mss as u16,
                csum_start: flow.ihl as u16,
                csum_offset: 16,
            };
            self.buf[flow.start..flow.start + VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
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
