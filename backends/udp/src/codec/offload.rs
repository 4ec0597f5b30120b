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

/// A TCP super-packet cut by [`segment_headers`]: segment `i` on the wire is header `i`
/// (`hdrs[i * hl..(i + 1) * hl]`) followed by payload chunk `i` of the super-packet
/// (`pkt[hl + i * mss..]`, `mss` bytes, the last one shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTrain {
    /// Number of segments.
    pub count: usize,
    /// IPv4 + TCP header length: of every header, and where the payload starts in `pkt`.
    pub hl: usize,
    /// Payload bytes per segment but the last.
    pub mss: usize,
    /// Length of the super-packet (`pkt[..total_len]`).
    pub total_len: usize,
    /// What every segment header is made from.
    template: HeaderTemplate,
}

/// The fields of a super-packet's header that the segment headers are computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeaderTemplate {
    ihl: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    seq0: u32,
    id0: u16,
    flags0: u8,
}

impl TcpTrain {
    /// Payload chunk `i` of the super-packet `pkt`.
    pub fn chunk<'a>(&self, pkt: &'a [u8], i: usize) -> &'a [u8] {
        let from = self.hl + i * self.mss;
        &pkt[from..(from + self.mss).min(self.total_len)]
    }

    /// On-wire size of every segment but the last.
    pub fn size(&self) -> usize {
        self.hl + self.mss
    }

    /// Turns `s`, a copy of the super-packet's `hl` header bytes, into the header of segment
    /// `i` carrying `chunk`: total length, ID, IPv4 checksum, sequence number, flags, TCP
    /// checksum (over the header and `chunk`, wherever `chunk` lies).
    fn finish_header(&self, i: usize, chunk: &[u8], s: &mut [u8]) {
        let HeaderTemplate {
            ihl: t,
            src,
            dst,
            seq0,
            id0,
            flags0,
        } = self.template;
        let hl = self.hl;
        let total = hl + chunk.len();
        s[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        s[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        set_ipv4_checksum(&mut s[..hl]);
        let seq = seq0.wrapping_add((i * self.mss) as u32);
        s[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < self.count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        s[t + 13] = flags;
        s[t + 16] = 0;
        s[t + 17] = 0;
        // The payload starts at an even offset (`hl` is a multiple of 4): its sum adds to
        // the TCP header's.
        let sum = sum_bytes(
            sum_bytes(pseudo_header_sum(src, dst, PROTO_TCP, total - t), chunk),
            &s[t..hl],
        );
        s[t + 16..t + 18].copy_from_slice(&(!fold(sum)).to_be_bytes());
    }
}

/// How a TUN read is cut: left whole (its IPv4 `total_len`), or a TCP super-packet.
enum Cut {
    Whole(usize),
    Train(TcpTrain),
}

/// Decides the [`Cut`] of `pkt` for `hdr`, refusing what cannot be segmented.
fn cut(hdr: &VirtioNetHdr, pkt: &[u8]) -> Result<Cut, CodecError> {
    let h = Ipv4Header::parse(pkt)?;
    let pkt = &pkt[..h.total_len];
    let gso = hdr.gso_type & !VNET_GSO_ECN;
    if gso == VNET_GSO_NONE {
        return Ok(Cut::Whole(h.total_len));
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
    if pkt.len() == hl {
        return Err(unsupported);
    }
    let t = h.ihl;
    Ok(Cut::Train(TcpTrain {
        count: (pkt.len() - hl).div_ceil(mss),
        hl,
        mss,
        total_len: pkt.len(),
        template: HeaderTemplate {
            ihl: t,
            src: h.src,
            dst: h.dst,
            seq0: u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]]),
            id0: u16::from_be_bytes([pkt[4], pkt[5]]),
            flags0: pkt[t + 13],
        },
    }))
}

/// The per-segment headers of a TCP super-packet (`GSO_TCPV4`), appended to `hdrs` with both
/// checksums final, the payload left where it is: the caller sends each header followed by
/// its chunk of `pkt` ([`TcpTrain::chunk`]). `Ok(None)` (nothing appended) when `hdr` asks for
/// no segmentation. The IPv4 header of `pkt` (TTL included) is the template for every
/// segment; IDs count up from it, sequence numbers advance by the chunk sizes, FIN and PSH
/// stay on the last segment only and CWR on the first.
pub fn segment_headers(
    hdr: &VirtioNetHdr,
    pkt: &[u8],
    hdrs: &mut Vec<u8>,
) -> Result<Option<TcpTrain>, CodecError> {
    let Cut::Train(train) = cut(hdr, pkt)? else {
        return Ok(None);
    };
    hdrs.reserve(train.count * train.hl);
    for i in 0..train.count {
        let at = hdrs.len();
        hdrs.extend_from_slice(&pkt[..train.hl]);
        train.finish_header(i, train.chunk(pkt, i), &mut hdrs[at..]);
    }
    Ok(Some(train))
}

/// Turns what a vnet-header TUN read returned (`hdr` + `pkt`) into wire packets appended to
/// `out`, laid out back to back: all of size [`Segments::size`] but the last. A TCP super-packet
/// (`GSO_TCPV4`) is cut into segments of `gso_size` payload bytes, each header made as
/// [`segment_headers`] makes it and followed by its payload; a single packet with a partial
/// checksum gets it finished; anything else is copied as is.
pub fn segment(hdr: &VirtioNetHdr, pkt: &[u8], out: &mut Vec<u8>) -> Result<Segments, CodecError> {
    let train = match cut(hdr, pkt)? {
        Cut::Train(train) => train,
        Cut::Whole(total_len) => {
            let pkt = &pkt[..total_len];
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
    };
    out.reserve(train.total_len - train.hl + train.count * train.hl);
    for i in 0..train.count {
        let at = out.len();
        let chunk = train.chunk(pkt, i);
        out.extend_from_slice(&pkt[..train.hl]);
        out.extend_from_slice(chunk);
        train.finish_header(i, chunk, &mut out[at..]);
    }
    let last = train.total_len - (train.count - 1) * train.mss;
    Ok(Segments {
        count: train.count,
        size: if train.count == 1 { last } else { train.size() },
        last,
    })
}
