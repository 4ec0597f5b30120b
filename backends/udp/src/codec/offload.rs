//! TUN offloads on the way out: the virtio-net header and TSO-style segmentation of TCP
//! super-packets into MTU-size IPv4 packets.

use super::*;

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
    /// What one TUN read returned, as (header, packet): with `vnet` (the device was opened
    /// with `IFF_VNET_HDR`) the buffer starts with the header; without it the whole buffer is
    /// the packet, behind an all-zero header (no offload).
    pub fn split_read(buf: &mut [u8], vnet: bool) -> Result<(VirtioNetHdr, &mut [u8]), CodecError> {
        if !vnet {
            return Ok((VirtioNetHdr::default(), buf));
        }
        let hdr = VirtioNetHdr::parse(buf)?;
        Ok((hdr, &mut buf[VNET_HDR_LEN..]))
    }

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
