//! # The udp backend's packet codec: pure functions over byte buffers
//!
//! Everything the datapath does to a packet lives here, without any I/O, so it can be tested
//! byte for byte:
//!
//! * **Parsing** ([`Ipv4Header::parse`]): the few IPv4 fields forwarding needs, refusing
//!   anything that is not a well-formed IPv4 packet (the wire format is one raw IPv4 packet per
//!   UDP datagram, flannel's, so the datagram *is* the packet).
//! * **TTL** ([`decrement_ttl`]): one hop less, with the header checksum patched incrementally
//!   (RFC 1624, eqn. 3) instead of recomputed; a packet whose TTL reaches 0 is dropped.
//! * **ICMP** ([`icmp_net_unreachable`]): the *destination net unreachable* error flannel's proxy
//!   writes back into the TUN for a destination no lease covers, never about an ICMP error or a
//!   non-first fragment (RFC 1812 §4.3.2.7).
//! * **Offloads.** With `IFF_VNET_HDR` the TUN hands us TCP super-packets of up to 64 KB behind a
//!   [`VirtioNetHdr`]. flannel's wire format has no room for those, so [`segment`] cuts each
//!   into MTU-size IPv4/TCP packets exactly as a NIC's TSO would (IP id/length/checksum, TCP
//!   sequence number, flags and checksum per segment) and finishes partial checksums of small
//!   packets. On the way in, [`Coalescer`] does the reverse of that, like the kernel's GRO: it
//!   glues consecutive in-order segments of one TCP flow back into a super-packet with a
//!   `GSO_TCPV4` header, so the kernel takes a whole window in one TUN write.
//!
//! Checksums are RFC 1071 ones' complement sums ([`checksum`]); the inner TCP checksum of a
//! coalesced packet is left *partial* (pseudo-header only, `NEEDS_CSUM`), which is what the
//! kernel expects of a GSO packet. Received segments are not re-verified before coalescing:
//! the outer UDP checksum, which the kernel checks, already covers every byte of them.

use std::net::Ipv4Addr;

/// Size of `struct virtio_net_hdr` (no `num_buffers`), the TUN default `TUNSETVNETHDRSZ`.
pub const VNET_HDR_LEN: usize = 10;
/// IPv4 protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IPv4 protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IPv4 protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VNET_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const VNET_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_ECN` (flag bit of `gso_type`).
pub const VNET_GSO_ECN: u8 = 0x80;
/// The TTL of the ICMP errors we generate (flannel's proxy uses 8).
pub const ICMP_TTL: u8 = 8;
/// The largest IPv4 packet (total length is a 16-bit field).
pub const MAX_IPV4_PACKET: usize = 65_535;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// Why a buffer is not a packet we forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the headers it announces.
    #[error("packet truncated: {len} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// IP version field is not 4.
    #[error("not IPv4: version field {0}")]
    NotIpv4(u8),
    /// IHL below 5 or total length below the header length.
    #[error("bad IPv4 header: ihl {ihl}, total length {total_len}")]
    BadHeader {
        /// Header length in bytes.
        ihl: usize,
        /// Total length field.
        total_len: usize,
    },
    /// The virtio-net header asks for something we do not implement.
    #[error("unsupported virtio_net_hdr: gso_type {gso_type:#x}, gso_size {gso_size}")]
    UnsupportedGso {
        /// `gso_type`.
        gso_type: u8,
        /// `gso_size`.
        gso_size: u16,
    },
    /// A partial checksum location outside the packet.
    #[error("checksum offset {start}+{offset} outside a {len}-byte packet")]
    BadChecksumOffset {
        /// `csum_start`.
        start: usize,
        /// `csum_offset`.
        offset: usize,
        /// Packet length.
        len: usize,
    },
}

/// The IPv4 fields forwarding looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Header length in bytes (IHL × 4).
    pub ihl: usize,
    /// Total length field (the packet proper; trailing bytes beyond it are ignored).
    pub total_len: usize,
    /// Protocol.
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Fragment offset in 8-byte units (0 for first fragments and unfragmented packets).
    pub frag_offset: u16,
    /// More-fragments flag.
    pub more_fragments: bool,
}

impl Ipv4Header {
    /// Parses and sanity-checks the IPv4 header at the start of `pkt`. A total length of 0
    /// (TSO super-packets beyond 64 KB) is refused.
    pub fn parse(pkt: &[u8]) -> Result<Ipv4Header, CodecError> {
        if pkt.len() < 20 {
            return Err(CodecError::Truncated {
                len: pkt.len(),
                need: 20,
            });
        }
        let version = pkt[0] >> 4;
        if version != 4 {
            return Err(CodecError::NotIpv4(version));
        }
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
        if ihl < 20 || total_len < ihl {
            return Err(CodecError::BadHeader { ihl, total_len });
        }
        if pkt.len() < total_len {
            return Err(CodecError::Truncated {
                len: pkt.len(),
                need: total_len,
            });
        }
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
        Ok(Ipv4Header {
            ihl,
            total_len,
            protocol: pkt[9],
            ttl: pkt[8],
            src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
            dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
            frag_offset: frag & 0x1fff,
            more_fragments: frag & 0x2000 != 0,
        })
    }

    /// Whether this is a fragment other than the first.
    pub fn is_non_first_fragment(&self) -> bool {
        self.frag_offset != 0
    }

    /// Whether this is a fragment at all (first or later).
    pub fn is_fragment(&self) -> bool {
        self.frag_offset != 0 || self.more_fragments
    }
}

/// Adds `data` to a running ones' complement sum (big-endian 16-bit words; an odd last byte is
/// padded with zero). Fold the result with [`fold`].
pub fn sum_bytes(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Adding the two 32-bit halves keeps the sum congruent mod 0xffff and cannot overflow
        // a u64 for any packet-sized input.
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (not inverted).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (RFC 1071): the inverted folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_bytes(0, data))
}

/// The running sum of the TCP/UDP pseudo-header.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u64 {
    let s = src.octets();
    let d = dst.octets();
    u64::from(u16::from_be_bytes([s[0], s[1]]))
        + u64::from(u16::from_be_bytes([s[2], s[3]]))
        + u64::from(u16::from_be_bytes([d[0], d[1]]))
        + u64::from(u16::from_be_bytes([d[2], d[3]]))
        + u64::from(protocol)
        + len as u64
}

/// Recomputes the IPv4 header checksum of `pkt` (header length from its IHL).
pub fn set_ipv4_checksum(pkt: &mut [u8]) {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    pkt[10] = 0;
    pkt[11] = 0;
    let c = checksum(&pkt[..ihl]);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
}

/// What [`decrement_ttl`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlOutcome {
    /// TTL decremented, checksum patched.
    Forward,
    /// TTL was 0 or 1: the packet must be dropped (left unmodified).
    Expired,
}

/// Decrements the TTL of the IPv4 packet in `pkt` and patches the header checksum
/// incrementally (RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`, over the TTL/protocol word).
/// `pkt` must hold at least a 20-byte header.
pub fn decrement_ttl(pkt: &mut [u8]) -> TtlOutcome {
    let ttl = pkt[8];
    if ttl <= 1 {
        return TtlOutcome::Expired;
    }
    let old_word = u16::from_be_bytes([pkt[8], pkt[9]]);
    pkt[8] = ttl - 1;
    let new_word = u16::from_be_bytes([pkt[8], pkt[9]]);
    let hc = u16::from_be_bytes([pkt[10], pkt[11]]);
    let sum = u64::from(!hc) + u64::from(!old_word) + u64::from(new_word);
    let new_hc = !fold(sum);
    pkt[10..12].copy_from_slice(&new_hc.to_be_bytes());
    TtlOutcome::Forward
}

/// Whether an ICMP message type is an error (unreachable, source quench, redirect, time
/// exceeded, parameter problem), about which no further error may be sent.
fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// Builds the ICMP *destination net unreachable* (type 3, code 0) answering `orig`, sent from
/// `from` (the TUN's address) with TTL [`ICMP_TTL`]; the body carries the original header plus
/// its first 8 data bytes. `None` when no error may be sent: `orig` unparsable, an ICMP error
/// itself, or a non-first fragment.
pub fn icmp_net_unreachable(orig: &[u8], from: Ipv4Addr) -> Option<Vec<u8>> {
    let h = Ipv4Header::parse(orig).ok()?;
    if h.is_non_first_fragment() {
        return None;
    }
    if h.protocol == PROTO_ICMP {
        let icmp_type = *orig.get(h.ihl)?;
        if is_icmp_error(icmp_type) {
            return None;
        }
    }
    let quoted = &orig[..h.total_len.min(h.ihl + 8)];
    let total = 20 + 8 + quoted.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = ICMP_TTL;
    p[9] = PROTO_ICMP;
    p[12..16].copy_from_slice(&from.octets());
    p[16..20].copy_from_slice(&h.src.octets());
    set_ipv4_checksum(&mut p);
    p[20] = 3; // destination unreachable
    p[21] = 0; // net unreachable
    p[28..].copy_from_slice(quoted);
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    Some(p)
}

/// `struct virtio_net_hdr`, in host byte order (a TUN without `TUNSETVNETLE/BE` uses the host's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VNET_F_*` flags.
    pub flags: u8,
    /// `VNET_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to replicate per segment.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS).
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, relative to `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Reads the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<VirtioNetHdr, CodecError> {
        if buf.len() < VNET_HDR_LEN {
            return Err(CodecError::Truncated {
                len: buf.len(),
                need: VNET_HDR_LEN,
            });
        }
        let u = |i: usize| u16::from_ne_bytes([buf[i], buf[i + 1]]);
        Ok(VirtioNetHdr {
            flags: buf[0],
            gso_type: buf[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The 10 bytes of this header.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Writes the finished checksum of a `NEEDS_CSUM` packet: the field at `start + offset` holds
/// the partial (pseudo-header) sum; the sum over `pkt[start..]` goes there, inverted.
pub fn finish_partial_checksum(
    pkt: &mut [u8],
    start: usize,
    offset: usize,
) -> Result<(), CodecError> {
    let field = start + offset;
    if field + 2 > pkt.len() {
        return Err(CodecError::BadChecksumOffset {
            start,
            offset,
            len: pkt.len(),
        });
    }
    let mut c = !fold(sum_bytes(0, &pkt[start..]));
    if c == 0 {
        c = 0xffff; // as the kernel does (a zero UDP checksum means "none")
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Where [`segment`] put the packets it made: `out[ranges[i]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    /// Number of packets appended.
    pub count: usize,
    /// Size of every packet but the last (the last may be shorter).
    pub size: usize,
    /// Size of the last packet.
    pub last: usize,
}

/// Turns what a vnet-header TUN read returned (`hdr` + `pkt`) into wire packets appended to
/// `out`, laid out back to back: all of size [`Segments::size`] but the last. A TCP super-packet
/// (`GSO_TCPV4`) is cut into segments of `gso_size` payload bytes; a single packet with a
/// partial checksum gets it finished; anything else is copied as is. The IPv4 header of `pkt`
/// (TTL included) is the template for every segment.
pub fn segment(hdr: &VirtioNetHdr, pkt: &[u8], out: &mut Vec<u8>) -> Result<Segments, CodecError> {
    let h = Ipv4Header::parse(pkt)?;
    let pkt = &pkt[..h.total_len];
    let gso = hdr.gso_type & !VNET_GSO_ECN;
    if gso == VNET_GSO_NONE {
        let at = out.len();
        out.extend_from_slice(pkt);
        if hdr.flags & VNET_F_NEEDS_CSUM != 0 {
            finish_partial_checksum(
                &mut out[at..],
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )?;
        }
        return Ok(Segments {
            count: 1,
            size: pkt.len(),
            last: pkt.len(),
        });
    }
    let unsupported = CodecError::UnsupportedGso {
        gso_type: hdr.gso_type,
        gso_size: hdr.gso_size,
    };
    if gso != VNET_GSO_TCPV4 || hdr.gso_size == 0 || h.protocol != PROTO_TCP || h.is_fragment() {
        return Err(unsupported);
    }
    if pkt.len() < h.ihl + 20 {
        return Err(CodecError::Truncated {
            len: pkt.len(),
            need: h.ihl + 20,
        });
    }
    let thl = usize::from(pkt[h.ihl + 12] >> 4) * 4;
    let hl = h.ihl + thl;
    if thl < 20 || pkt.len() < hl {
        return Err(CodecError::Truncated {
            len: pkt.len(),
            need: hl.max(h.ihl + 20),
        });
    }
    let mss = usize::from(hdr.gso_size);
    let payload = &pkt[hl..];
    if payload.is_empty() {
        return Err(unsupported);
    }
    let seq0 = u32::from_be_bytes([
        pkt[h.ihl + 4],
        pkt[h.ihl + 5],
        pkt[h.ihl + 6],
        pkt[h.ihl + 7],
    ]);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let flags0 = pkt[h.ihl + 13];
    let count = payload.len().div_ceil(mss);
    out.reserve(payload.len() + count * hl);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let at = out.len();
        out.extend_from_slice(&pkt[..hl]);
        out.extend_from_slice(chunk);
        let s = &mut out[at..];
        let total = hl + chunk.len();
        s[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        s[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        set_ipv4_checksum(s);
        let t = h.ihl;
        let seq = seq0.wrapping_add((i * mss) as u32);
        s[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        s[t + 13] = flags;
        s[t + 16] = 0;
        s[t + 17] = 0;
        let sum = sum_bytes(
            pseudo_header_sum(h.src, h.dst, PROTO_TCP, total - t),
            &s[t..total],
        );
        s[t + 16..t + 18].copy_from_slice(&(!fold(sum)).to_be_bytes());
    }
    let last = hl + (payload.len() - (count - 1) * mss);
    Ok(Segments {
        count,
        size: if count == 1 { last } else { hl + mss },
        last,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent reference: straightforward RFC 1071 over 16-bit words.
    fn ref_sum(data: &[u8]) -> u32 {
        let mut s: u32 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            s += (u32::from(data[i]) << 8) | u32::from(data[i + 1]);
            i += 2;
        }
        if i < data.len() {
            s += u32::from(data[i]) << 8;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s
    }

    fn valid_ip_header(p: &[u8]) -> bool {
        let ihl = usize::from(p[0] & 0xf) * 4;
        ref_sum(&p[..ihl]) == 0xffff
    }

    fn valid_tcp(p: &[u8]) -> bool {
        let ihl = usize::from(p[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, PROTO_TCP]);
        pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[ihl..total]);
        ref_sum(&pseudo) == 0xffff
    }

    /// Deterministic filler (xorshift).
    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, body: &[u8]) -> Vec<u8> {
        let total = 20 + body.len();
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = ttl;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p.extend_from_slice(body);
        set_ipv4_checksum(&mut p);
        p
    }

    /// A TCP packet with a timestamp option; `csum` true fills a valid TCP checksum.
    fn tcp(seq: u32, flags: u8, payload: &[u8], csum: bool) -> Vec<u8> {
        let mut t = vec![0u8; 32];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&777u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&500u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
        t.extend_from_slice(payload);
        let mut p = ipv4([10, 244, 1, 2], [10, 244, 2, 2], PROTO_TCP, 64, &t);
        if csum {
            let s = sum_bytes(
                pseudo_header_sum(
                    Ipv4Addr::new(10, 244, 1, 2),
                    Ipv4Addr::new(10, 244, 2, 2),
                    PROTO_TCP,
                    t.len(),
                ),
                &p[20..],
            );
            p[36..38].copy_from_slice(&(!fold(s)).to_be_bytes());
        }
        p
    }

    #[test]
    fn checksum_matches_rfc1071_example_and_reference() {
        // RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_bytes(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
        for n in [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 1499, 65_535] {
            let d = bytes(n, n as u32 + 7);
            assert_eq!(u32::from(fold(sum_bytes(0, &d))), ref_sum(&d), "len {n}");
        }
    }

    #[test]
    fn parse_rejects_malformed_packets() {
        let good = ipv4([10, 244, 1, 2], [10, 244, 2, 3], PROTO_UDP, 64, &[0u8; 12]);
        let h = Ipv4Header::parse(&good).expect("valid");
        assert_eq!(h.src, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(h.dst, Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!(h.total_len, 32);
        assert!(!h.is_fragment());
        assert!(matches!(
            Ipv4Header::parse(&good[..19]),
            Err(CodecError::Truncated { .. })
        ));
        assert!(matches!(
            Ipv4Header::parse(&good[..31]),
            Err(CodecError::Truncated { .. })
        ));
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(Ipv4Header::parse(&v6), Err(CodecError::NotIpv4(6)));
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        assert!(matches!(
            Ipv4Header::parse(&short_ihl),
            Err(CodecError::BadHeader { .. })
        ));
        let mut tiny_total = good;
        tiny_total[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert!(matches!(
            Ipv4Header::parse(&tiny_total),
            Err(CodecError::BadHeader { .. })
        ));
    }

    #[test]
    fn ttl_decrement_patches_checksum_like_a_full_recompute() {
        for ttl in 2..=255u8 {
            for proto in [PROTO_ICMP, PROTO_TCP, PROTO_UDP, 0xff, 0] {
                let mut p = ipv4([10, 244, 1, 2], [10, 244, 2, 3], proto, ttl, &[1, 2, 3]);
                assert_eq!(decrement_ttl(&mut p), TtlOutcome::Forward);
                assert_eq!(p[8], ttl - 1);
                assert!(valid_ip_header(&p), "ttl {ttl} proto {proto}");
                let mut full = p.clone();
                set_ipv4_checksum(&mut full);
                // Both 0x0000 and 0xffff are valid encodings of a zero sum; RFC 1624 never
                // produces 0x0000 from a non-zero field, so compare validity, then value.
                assert!(valid_ip_header(&full));
            }
        }
        for ttl in [0u8, 1] {
            let mut p = ipv4([10, 244, 1, 2], [10, 244, 2, 3], PROTO_UDP, ttl, &[]);
            let before = p.clone();
            assert_eq!(decrement_ttl(&mut p), TtlOutcome::Expired);
            assert_eq!(p, before, "an expired packet is left alone");
        }
    }

    #[test]
    fn ttl_decrement_handles_the_rfc1624_corner_case() {
        // Find a header whose checksum field is 0x0000 before the update (sum 0xffff):
        // eqn. 3 must still give a valid header afterwards.
        let mut found = false;
        for a in 0..=255u8 {
            let mut p = ipv4([10, 244, a, 2], [10, 244, 2, 3], PROTO_UDP, 64, &[]);
            for b in 0..=255u8 {
                p[5] = b;
                set_ipv4_checksum(&mut p);
                if p[10] == 0 && p[11] == 0 {
                    found = true;
                    assert_eq!(decrement_ttl(&mut p), TtlOutcome::Forward);
                    assert!(valid_ip_header(&p));
                    break;
                }
            }
            if found {
                break;
            }
        }
        assert!(found, "no header with a zero checksum field found");
    }

    #[test]
    fn icmp_unreachable_quotes_the_packet_and_has_valid_checksums() {
        let body: Vec<u8> = (0..40).collect();
        let orig = ipv4([10, 244, 1, 2], [10, 244, 9, 9], PROTO_UDP, 63, &body);
        let from = Ipv4Addr::new(10, 244, 1, 0);
        let r = icmp_net_unreachable(&orig, from).expect("an error is due");
        let h = Ipv4Header::parse(&r).expect("valid reply");
        assert_eq!(h.src, from);
        assert_eq!(h.dst, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(h.protocol, PROTO_ICMP);
        assert_eq!(h.ttl, ICMP_TTL);
        assert_eq!(h.total_len, 20 + 8 + 28);
        assert!(valid_ip_header(&r));
        assert_eq!((r[20], r[21]), (3, 0), "type 3 code 0");
        assert_eq!(ref_sum(&r[20..]), 0xffff, "ICMP checksum");
        assert_eq!(&r[28..], &orig[..28], "quotes header + 8 bytes");

        // A short original is quoted whole.
        let short = ipv4([10, 244, 1, 2], [10, 244, 9, 9], PROTO_UDP, 63, &[1, 2, 3]);
        let r = icmp_net_unreachable(&short, from).expect("an error is due");
        assert_eq!(&r[28..], &short[..]);

        // Echo requests get an answer; ICMP errors and non-first fragments do not.
        let echo = ipv4(
            [10, 244, 1, 2],
            [10, 244, 9, 9],
            PROTO_ICMP,
            63,
            &[8, 0, 0, 0, 0, 1, 0, 1],
        );
        assert!(icmp_net_unreachable(&echo, from).is_some());
        for t in [3u8, 11, 12] {
            let err = ipv4(
                [10, 244, 1, 2],
                [10, 244, 9, 9],
                PROTO_ICMP,
                63,
                &[t, 0, 0, 0, 0, 0, 0, 0],
            );
            assert!(icmp_net_unreachable(&err, from).is_none(), "type {t}");
        }
        let mut frag = orig.clone();
        frag[6] = 0x00;
        frag[7] = 0x10; // offset 16 * 8
        set_ipv4_checksum(&mut frag);
        assert!(icmp_net_unreachable(&frag, from).is_none());
        let mut first_frag = orig.clone();
        first_frag[6] = 0x20; // MF, offset 0
        set_ipv4_checksum(&mut first_frag);
        assert!(icmp_net_unreachable(&first_frag, from).is_some());
        assert!(icmp_net_unreachable(&orig[..10], from).is_none());
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VirtioNetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: VNET_GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1420,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VirtioNetHdr::parse(&h.to_bytes()).expect("parse"), h);
        assert!(VirtioNetHdr::parse(&[0u8; 9]).is_err());
    }

    /// A TSO super-packet as the kernel hands it over: partial checksum, flags PSH|ACK.
    fn super_packet(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = tcp(1_000_000, flags, payload, false);
        let partial = fold(pseudo_header_sum(
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 2, 2),
            PROTO_TCP,
            p.len() - 20,
        ));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        p
    }

    #[test]
    fn segmentation_cuts_a_tso_super_packet_into_valid_segments() {
        let payload = bytes(10_000, 42);
        let sp = super_packet(&payload, TCP_ACK | TCP_PSH | TCP_CWR);
        let mss = 1420;
        let hdr = VirtioNetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: VNET_GSO_TCPV4,
            hdr_len: 52,
            gso_size: mss as u16,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = vec![0xaa; 3]; // appends after existing content
        let s = segment(&hdr, &sp, &mut out).expect("segment");
        assert_eq!(s.count, 8); // ceil(10000 / 1420)
        assert_eq!(s.size, 52 + mss);
        assert_eq!(s.last, 52 + 10_000 - 7 * mss);
        assert_eq!(out.len(), 3 + 7 * s.size + s.last);
        let mut joined = Vec::new();
        for i in 0..s.count {
            let at = 3 + i * s.size;
            let len = if i + 1 == s.count { s.last } else { s.size };
            let p = &out[at..at + len];
            let h = Ipv4Header::parse(p).expect("segment parses");
            assert_eq!(h.total_len, len);
            assert!(valid_ip_header(p), "IP checksum of segment {i}");
            assert!(valid_tcp(p), "TCP checksum of segment {i}");
            assert_eq!(u16::from_be_bytes([p[4], p[5]]), 0x1234 + i as u16, "IP id");
            let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
            assert_eq!(seq, 1_000_000 + (i * mss) as u32);
            let f = p[33];
            assert_eq!(f & TCP_PSH != 0, i + 1 == s.count, "PSH only on the last");
            assert_eq!(f & TCP_CWR != 0, i == 0, "CWR only on the first");
            assert!(f & TCP_ACK != 0);
            assert_eq!(&p[40..52], &sp[40..52], "options copied");
            joined.extend_from_slice(&p[52..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn segmentation_finishes_partial_checksums_and_refuses_garbage() {
        // A small packet with a partial checksum (TUN_F_CSUM, no GSO).
        let sp = super_packet(b"hello", TCP_ACK | TCP_PSH);
        let hdr = VirtioNetHdr {
            flags: VNET_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        };
        let mut out = Vec::new();
        let s = segment(&hdr, &sp, &mut out).expect("segment");
        assert_eq!((s.count, s.size, s.last), (1, sp.len(), sp.len()));
        assert!(valid_tcp(&out));
        // No flags: copied untouched, trailing bytes beyond total_len dropped.
        let mut padded = tcp(5, TCP_ACK, b"x", true);
        let want = padded.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        out.clear();
        segment(&VirtioNetHdr::default(), &padded, &mut out).expect("plain");
        assert_eq!(out, want);
        // A partial checksum pointing outside the packet, UDP GSO, zero gso_size.
        let bad = VirtioNetHdr {
            flags: VNET_F_NEEDS_CSUM,
            csum_start: 60,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        };
        assert!(matches!(
            segment(&bad, &sp, &mut out),
            Err(CodecError::BadChecksumOffset { .. })
        ));
        for (gso_type, gso_size) in [(3u8, 1400u16), (VNET_GSO_TCPV4, 0)] {
            let h = VirtioNetHdr {
                gso_type,
                gso_size,
                ..VirtioNetHdr::default()
            };
            assert!(matches!(
                segment(&h, &sp, &mut out),
                Err(CodecError::UnsupportedGso { .. })
            ));
        }
    }

    fn segments_of(payload: &[u8], mss: usize, seq0: u32) -> Vec<Vec<u8>> {
        payload
            .chunks(mss)
            .enumerate()
            .map(|(i, c)| tcp(seq0 + (i * mss) as u32, TCP_ACK, c, true))
            .collect()
    }

    #[test]
    fn coalescing_rebuilds_a_super_packet_that_segments_back_identically() {
        let payload = bytes(9_000, 3);
        let mss = 1400;
        let segs = segments_of(&payload, mss, 5000);
        let mut c = Coalescer::new();
        for s in &segs {
            c.push(s);
        }
        c.flush();
        assert_eq!(c.len(), 1);
        assert_eq!(c.merged_segments(), segs.len());
        let out: Vec<&[u8]> = c.packets().collect();
        let hdr = VirtioNetHdr::parse(out[0]).expect("vnet hdr");
        assert_eq!(hdr.gso_type, VNET_GSO_TCPV4);
        assert_eq!(hdr.flags, VNET_F_NEEDS_CSUM);
        assert_eq!(usize::from(hdr.gso_size), mss);
        assert_eq!((hdr.hdr_len, hdr.csum_start, hdr.csum_offset), (52, 20, 16));
        let sp = &out[0][VNET_HDR_LEN..];
        assert_eq!(sp.len(), 52 + payload.len());
        assert!(valid_ip_header(sp));
        assert_eq!(&sp[52..], &payload[..]);
        // Finishing the partial checksum yields a valid full-packet TCP checksum.
        let mut finished = sp.to_vec();
        finish_partial_checksum(&mut finished, 20, 16).expect("finish");
        assert!(valid_tcp(&finished));
        // And cutting it again gives back exactly the original segments (ids aside).
        let mut again = Vec::new();
        let s = segment(&hdr, sp, &mut again).expect("segment");
        assert_eq!(s.count, segs.len());
        for (i, orig) in segs.iter().enumerate() {
            let at = i * s.size;
            let mut mine = again[at..at + orig.len()].to_vec();
            mine[4..6].copy_from_slice(&orig[4..6]);
            set_ipv4_checksum(&mut mine);
            assert_eq!(&mine, orig, "segment {i}");
        }
    }

    #[test]
    fn coalescing_stops_at_gaps_other_flows_and_special_segments() {
        let mss = 1000;
        let payload = bytes(4 * mss, 9);
        let segs = segments_of(&payload, mss, 1);
        let other_flow = {
            let mut p = segs[1].clone();
            p[20..22].copy_from_slice(&40001u16.to_be_bytes());
            p
        };
        let syn = tcp(1, TCP_SYN, &[], true);
        let psh = tcp(
            1 + 2 * mss as u32,
            TCP_ACK | TCP_PSH,
            &payload[2 * mss..3 * mss],
            true,
        );
        let udp = ipv4([10, 244, 1, 2], [10, 244, 2, 2], PROTO_UDP, 64, &[0u8; 8]);
        let mut c = Coalescer::new();
        // seg0, seg1 merge; a gap (seg3) starts anew; other flow alone; SYN and UDP alone;
        // seg1+psh(seg2 data)... are exercised below.
        for p in [&segs[0], &segs[1], &segs[3], &other_flow, &syn, &udp] {
            c.push(p);
        }
        c.flush();
        let lens: Vec<usize> = c.packets().map(|p| p.len() - VNET_HDR_LEN).collect();
        assert_eq!(
            lens,
            vec![52 + 2 * mss, 52 + mss, 52 + mss, syn.len(), udp.len()]
        );
        for p in c.packets().skip(1) {
            assert_eq!(
                &p[..VNET_HDR_LEN],
                &[0u8; VNET_HDR_LEN],
                "single packets: zero header"
            );
        }
        // A PSH segment closes the super-packet and lends it its PSH flag.
        c.clear();
        for p in [&segs[0], &segs[1], &psh, &segs[3]] {
            c.push(p);
        }
        c.flush();
        let out: Vec<&[u8]> = c.packets().collect();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len() - VNET_HDR_LEN, 52 + 3 * mss);
        assert!(out[0][VNET_HDR_LEN + 33] & TCP_PSH != 0);
        // A short segment closes too; a longer one after a short one cannot join.
        c.clear();
        let short = tcp(1 + mss as u32, TCP_ACK, &payload[mss..mss + 10], true);
        let next = tcp(1 + mss as u32 + 10, TCP_ACK, &payload[..mss], true);
        for p in [&segs[0], &short, &next] {
            c.push(p);
        }
        c.flush();
        let lens: Vec<usize> = c.packets().map(|p| p.len() - VNET_HDR_LEN).collect();
        assert_eq!(lens, vec![52 + mss + 10, 52 + mss]);
        // A different ACK number or TTL prevents merging.
        c.clear();
        let mut other_ack = segs[1].clone();
        other_ack[28..32].copy_from_slice(&778u32.to_be_bytes());
        let mut other_ttl = segs[1].clone();
        other_ttl[8] = 10;
        set_ipv4_checksum(&mut other_ttl);
        for p in [&segs[0], &other_ack] {
            c.push(p);
        }
        c.push(&segs[0]);
        c.push(&other_ttl);
        c.flush();
        assert_eq!(c.len(), 4);
        assert_eq!(c.merged_segments(), 0);
    }
}
