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
//!   [`GatherCoalescer`] does the same without copying: the segments stay in the receive
//!   buffers and a super-packet is a list of slices for one `writev` (the udp data path; the
//!   wireguard device decrypts into a scratch buffer and uses [`Coalescer`]).
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
///
/// The data is summed as native-endian 16-bit words and only the folded 16 bits are turned
/// into big-endian order: the ones' complement sum does not care about byte order beyond one
/// swap at the end (RFC 1071, 2(B)). A per-word byte swap is what made the straightforward
/// loop slow: x86-64's baseline SSE2 has no byte shuffle, so the vectorised loop spent most
/// of its instructions emulating one, and the TCP checksums of the udp backend's
/// segmentation were its hottest code. The loop itself is `sum_native_words`.
pub fn sum_bytes(acc: u64, data: &[u8]) -> u64 {
    let folded = fold(sum_native_words(data));
    acc + u64::from(if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    })
}

/// Bytes per block whose 16-bit words are added in 32-bit lanes: 16,384 32-bit words, each
/// adding at most 2 × 0xffff, stay below 2^32.
const SUM_BLOCK: usize = 64 * 1024;

/// The unfolded sum of `data`'s native-endian 16-bit words (zero padded to a whole 32-bit
/// word). Each 32-bit word adds its two halves into a 32-bit accumulator — the form that
/// vectorises into 32-bit lanes without widening — and a block's sum goes into the `u64`.
/// On x86-64 with AVX2 the same loop runs compiled for 256-bit vectors (twice the SSE2
/// width); that is chosen at run time, once, by the standard library's feature cache.
fn sum_native_words(data: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= 128 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been found to support AVX2.
        return unsafe { sum_native_words_avx2(data) };
    }
    sum_native_words_portable(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_native_words_avx2(data: &[u8]) -> u64 {
    sum_native_words_portable(data)
}

#[inline(always)]
fn sum_native_words_portable(data: &[u8]) -> u64 {
    let mut total: u64 = 0;
    for block in data.chunks(SUM_BLOCK) {
        let mut words = block.chunks_exact(4);
        let mut lanes: u32 = 0;
        for w in &mut words {
            let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            lanes += (v & 0xffff) + (v >> 16);
        }
        // The last 0..=3 bytes start at an even offset; zero padding is what RFC 1071 asks
        // for an odd last byte, and neutral otherwise.
        let rest = words.remainder();
        let mut tail = [0u8; 4];
        tail[..rest.len()].copy_from_slice(rest);
        let v = u32::from_ne_bytes(tail);
        total += u64::from(lanes) + u64::from(v & 0xffff) + u64::from(v >> 16);
    }
    total
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

mod coalesce;
mod offload;

pub use coalesce::{Coalescer, GatherCoalescer, MAX_COALESCED_SEGMENTS, Place};
pub use offload::{
    Segments, TcpTrain, VirtioNetHdr, finish_partial_checksum, segment, segment_headers,
};

#[cfg(test)]
mod tests;
