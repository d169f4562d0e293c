//! Bounds-checked access to the frame, and parsing: Ethernet (and one VLAN tag), the
//! IPv4 header, the IPv6 header and its extension headers, the TCP/UDP header, the ICMP
//! (ICMPv6) header and the packet an ICMP error quotes. Parsing only reads and reports;
//! what happens to a packet that does not parse is the pipeline's choice (see
//! `pipeline`).
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr6, Counter};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

// IPv6 extension headers the parser knows (RFC 8200 §4).
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DEST_OPTS: u8 = 60;
/// Extension headers parsed over at most; a longer chain to a VIP is dropped.
pub const MAX_EXT_HEADERS: usize = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offsets past this are never inside a frame.
const MAX_OFFSET: usize = 0xffff;

/// The one bounds check: a pointer to a `T` at byte `off` of the frame, or `None` when
/// the frame is too short. Every header access goes through here.
///
/// Verifier note: `data`/`data_end` are read with volatile loads. Otherwise LLVM
/// proves some checks redundant (e.g. "the frame is longer than the Ethernet header"
/// once a deeper offset was checked) and drops them, but the verifier tracks ranges
/// per loaded pointer and rejects the access ("invalid access to packet").
///
/// Verifier note: offsets the IPv6 path keeps in memory (see `scratch`) come back as
/// unknown scalars, and the verifier refuses packet-pointer arithmetic with an
/// unbounded one; the `MAX_OFFSET` test bounds them. (No frame is that long; where the
/// offset is a computed one, as on the IPv4 path, LLVM knows its range and drops the
/// test.)
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    if off > MAX_OFFSET {
        return None;
    }
    // SAFETY: ctx.ctx points at the program's xdp_md for the whole run.
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Reads a 32-bit field as it sits in the packet (network order, native integer).
#[inline(always)]
pub fn ne32(b: &[u8; 4]) -> u32 {
    u32::from_ne_bytes(*b)
}

/// Reads a 16-bit field as it sits in the packet (network order, native integer).
#[inline(always)]
pub fn ne16(b: &[u8; 2]) -> u16 {
    u16::from_ne_bytes(*b)
}

/// Reads an IPv6 address as it sits in the packet ([`Addr6`]).
#[inline(always)]
pub fn addr6(b: &[u8; 16]) -> Addr6 {
    lb_common::ipv6_words(*b)
}

/// What the pipeline knows about an IP packet once its header is validated (`A`: `u32`
/// for IPv4, [`Addr6`] for IPv6).
#[derive(Clone, Copy)]
pub struct Ip<A> {
    /// Offset of the IP header (14, or 18 behind one VLAN tag).
    pub l3: usize,
    /// Offset of the layer-4 header (IPv4: `l3` + IHL × 4; IPv6: past the 40-byte header
    /// and the extension headers skipped).
    pub l4: usize,
    /// Length of the IP packet: the IPv4 total length; 40 + the IPv6 payload length.
    pub tot_len: usize,
    pub src: A,
    pub dst: A,
    /// The layer-4 protocol (IPv6: the last next header).
    pub proto: u8,
    /// TTL (IPv6: hop limit).
    pub ttl: u8,
    /// For the FIB lookup: the IPv4 TOS byte; IPv6 traffic class and flow label (the
    /// header's first word, network order, version bits cleared).
    pub tos: u32,
    /// The frame carries one 802.1Q/802.1ad tag.
    pub vlan: bool,
}

/// An IPv4 packet's header facts.
pub type Ip4 = Ip<u32>;
/// An IPv6 packet's header facts.
pub type Ip6 = Ip<Addr6>;

impl<A> Ip<A> {
    /// Bytes of the IP packet from the layer-4 header on.
    #[inline(always)]
    pub fn l4_len(&self) -> usize {
        self.tot_len - (self.l4 - self.l3)
    }
}

/// Ports of a TCP/UDP header, in network order.
#[derive(Clone, Copy)]
pub struct Ports {
    pub sport: u16,
    pub dport: u16,
}

/// Why a frame is not an IP packet the pipeline can classify.
#[derive(Clone, Copy)]
pub enum Unparsed<A> {
    /// Not for the pipeline (nested VLAN tags, or too short to tell whom it is for):
    /// passed, with this counter.
    Pass(Counter),
    /// An IP packet from `src` to `dst` whose header is broken in the way `counter`
    /// names.
    Broken { src: A, dst: A, counter: Counter },
}

/// The link layer: (ethertype, offset of the layer-3 header, one VLAN tag seen).
pub struct L2 {
    pub ethertype: u16,
    pub l3: usize,
    pub vlan: bool,
}

/// Parses the Ethernet header and at most one VLAN tag. `Err` is the pass counter of a
/// frame that is too short or carries nested tags.
#[inline(always)]
pub fn l2(ctx: &XdpContext) -> Result<L2, Counter> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Err(Counter::PassNotIpv4);
    };
    // SAFETY: bounds checked by ptr_at.
    let mut ethertype = unsafe { (*eth).ether_type };
    let mut l3 = EthHdr::LEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q.to_be() || ethertype == ETH_P_8021AD.to_be() {
        // The tag's own ethertype sits 2 bytes past the end of the Ethernet header.
        let Some(inner) = ptr_at::<[u8; 2]>(ctx, EthHdr::LEN + 2) else {
            return Err(Counter::PassNotIpv4);
        };
        // SAFETY: bounds checked by ptr_at.
        ethertype = ne16(unsafe { &*inner });
        if ethertype == ETH_P_8021Q.to_be() || ethertype == ETH_P_8021AD.to_be() {
            return Err(Counter::PassVlanNested);
        }
        l3 += 4;
        vlan = true;
    }
    Ok(L2 {
        ethertype,
        l3,
        vlan,
    })
}

/// Parses the IPv4 header at `l3` and checks it against the frame.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, l3: usize, vlan: bool) -> Result<Ip4, Unparsed<u32>> {
    let Some(iph) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        // Not even a whole minimal header: we cannot tell whom it is for.
        return Err(Unparsed::Pass(Counter::PassNotVip));
    };
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*iph };
    let dst = ne32(&h.dst_addr);
    let src = ne32(&h.src_addr);
    let broken = |counter| Err(Unparsed::Broken { src, dst, counter });
    if h.vihl >> 4 != 4 {
        return broken(Counter::DropIpVersion);
    }
    let ihl = ((h.vihl & 0x0f) as usize) << 2;
    let len = frame_len(ctx);
    if ihl < Ipv4Hdr::LEN || l3 + ihl > len {
        return broken(Counter::DropIpHeaderLen);
    }
    let tot_len = u16::from_be_bytes(h.tot_len) as usize;
    if tot_len < ihl || l3 + tot_len > len {
        return broken(Counter::DropIpTotalLen);
    }
    // MF set or a non-zero offset: a fragment.
    if u16::from_be_bytes(h.frags) & 0x3fff != 0 {
        return broken(Counter::DropFragment);
    }
    Ok(Ip {
        l3,
        l4: l3 + ihl,
        tot_len,
        src: ne32(&h.src_addr),
        dst,
        proto: h.proto,
        ttl: h.ttl,
        tos: u32::from(h.tos),
        vlan,
    })
}

/// Parses the IPv6 header at `l3` and skips up to [`MAX_EXT_HEADERS`] extension headers
/// (hop-by-hop and destination options, a routing header with no segments left, an
/// atomic fragment header). Returns the packet's facts and whether any extension
/// header was skipped.
///
/// Broken, for the pipeline to drop when the packet is for a VIP: version not 6
/// (`drop_ip_version`), payload past the frame (`drop_ip_total_len`), an extension
/// header truncated, past the payload, one too many or a hop-by-hop header after the
/// first (`drop_ipv6_ext_header`), a routing header with segments left
/// (`drop_ipv6_routing`: the VIP is not the final destination, and the L4 checksum
/// covers that one), a fragment (`drop_fragment`).
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, l3: usize, vlan: bool) -> Result<(Ip6, bool), Unparsed<Addr6>> {
    let Some(iph) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        // Not even a whole fixed header: we cannot tell whom it is for.
        return Err(Unparsed::Pass(Counter::PassNotVip));
    };
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*iph };
    let dst = addr6(&h.dst_addr);
    let src = addr6(&h.src_addr);
    let broken = |counter| Err(Unparsed::Broken { src, dst, counter });
    if h.vcf[0] >> 4 != 6 {
        return broken(Counter::DropIpVersion);
    }
    let tot_len = Ipv6Hdr::LEN + u16::from_be_bytes(h.payload_len) as usize;
    if l3 + tot_len > frame_len(ctx) {
        return broken(Counter::DropIpTotalLen);
    }
    let end = l3 + tot_len;
    let mut next = h.next_hdr;
    let mut off = l3 + Ipv6Hdr::LEN;
    let mut skipped = false;
    for _ in 0..MAX_EXT_HEADERS {
        if next != NEXT_HOP_BY_HOP
            && next != NEXT_DEST_OPTS
            && next != NEXT_ROUTING
            && next != NEXT_FRAGMENT
        {
            break;
        }
        // Hop-by-hop options only directly after the IPv6 header (RFC 8200, 4.1).
        if next == NEXT_HOP_BY_HOP && skipped {
            return broken(Counter::DropIpv6ExtHeader);
        }
        // Every extension header starts with next header and length, and is at least 8
        // bytes long; a fragment header is exactly 8.
        let Some(ext) = ptr_at::<[u8; 8]>(ctx, off) else {
            return broken(Counter::DropIpv6ExtHeader);
        };
        // SAFETY: bounds checked by ptr_at.
        let e = unsafe { &*ext };
        let len = if next == NEXT_FRAGMENT {
            8
        } else {
            (e[1] as usize + 1) << 3
        };
        if off + len > end {
            return broken(Counter::DropIpv6ExtHeader);
        }
        // Routing: segments left.
        if next == NEXT_ROUTING && e[3] != 0 {
            return broken(Counter::DropIpv6Routing);
        }
        // Fragment: an offset or more fragments to come (an atomic fragment, RFC 6946,
        // is a whole packet).
        if next == NEXT_FRAGMENT && u16::from_be_bytes([e[2], e[3]]) & 0xfff9 != 0 {
            return broken(Counter::DropFragment);
        }
        next = e[0];
        off += len;
        skipped = true;
    }
    if next == NEXT_HOP_BY_HOP
        || next == NEXT_DEST_OPTS
        || next == NEXT_ROUTING
        || next == NEXT_FRAGMENT
    {
        return broken(Counter::DropIpv6ExtHeader);
    }
    let ip = Ip {
        l3,
        l4: off,
        tot_len,
        src,
        dst,
        proto: next,
        ttl: h.hop_limit,
        tos: u32::from_ne_bytes(h.vcf) & 0x0fff_ffffu32.to_be(),
        vlan,
    };
    Ok((ip, skipped))
}

/// Validates the TCP/UDP header of `ip` and returns its ports and TCP flags (0 for UDP).
#[inline(always)]
pub fn l4_header<A>(ctx: &XdpContext, ip: &Ip<A>) -> Option<(Ports, u8)> {
    let l4_len = ip.l4_len();
    if ip.proto == IPPROTO_TCP {
        // Ports, sequence numbers, data offset and flags: the first 14 bytes of 20.
        let tcp: *const [u8; 20] = ptr_at(ctx, ip.l4)?;
        // SAFETY: bounds checked by ptr_at.
        let t = unsafe { &*tcp };
        let doff = ((t[12] >> 4) as usize) << 2;
        if doff < 20 || doff > l4_len {
            return None;
        }
        let ports = Ports {
            sport: u16::from_ne_bytes([t[0], t[1]]),
            dport: u16::from_ne_bytes([t[2], t[3]]),
        };
        Some((ports, t[13]))
    } else {
        let udp: *const [u8; 8] = ptr_at(ctx, ip.l4)?;
        // SAFETY: bounds checked by ptr_at.
        let u = unsafe { &*udp };
        let ulen = u16::from_be_bytes([u[4], u[5]]) as usize;
        if ulen < 8 || ulen > l4_len {
            return None;
        }
        let ports = Ports {
            sport: u16::from_ne_bytes([u[0], u[1]]),
            dport: u16::from_ne_bytes([u[2], u[3]]),
        };
        Some((ports, 0))
    }
}

/// The type of the ICMP (ICMPv6) message in `ip`, or `None` when its 8-byte header is
/// cut short by the frame or by the IP packet's length.
#[inline(always)]
pub fn icmp_type<A>(ctx: &XdpContext, ip: &Ip<A>) -> Option<u8> {
    let hdr = ptr_at::<[u8; 8]>(ctx, ip.l4)?;
    if ip.l4_len() < 8 {
        return None;
    }
    // SAFETY: bounds checked by ptr_at.
    Some(unsafe { (*hdr)[0] })
}

/// The packet an ICMP (ICMPv6) error quotes.
pub struct Quoted<A> {
    /// Offset of the quoted IP header.
    pub l3: usize,
    /// Offset of its TCP/UDP ports.
    pub l4: usize,
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The IPv4 header and the ports an ICMP error in `ip` quotes, or `None` when they are
/// not all there.
#[inline(always)]
pub fn icmp_quoted(ctx: &XdpContext, ip: &Ip4) -> Option<Quoted<u32>> {
    let l3 = ip.l4 + 8;
    let inner: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*inner };
    let ihl = ((h.vihl & 0x0f) as usize) << 2;
    if h.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return None;
    }
    let (src, dst) = (ne32(&h.src_addr), ne32(&h.dst_addr));
    quoted_ports(ctx, ip, l3, l3 + ihl, src, dst, h.proto)
}

/// The quoted packet at `l3` (its L4 header at `l4`) of the ICMP error in `ip`, once its
/// ports are read: they must lie inside the ICMP packet, not just inside the frame.
#[inline(always)]
fn quoted_ports<A>(
    ctx: &XdpContext,
    ip: &Ip<A>,
    l3: usize,
    l4: usize,
    src: A,
    dst: A,
    proto: u8,
) -> Option<Quoted<A>> {
    if l4 + 4 > ip.l3 + ip.tot_len {
        return None;
    }
    let ports: *const [u8; 4] = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let p = unsafe { &*ports };
    Some(Quoted {
        l3,
        l4,
        src,
        dst,
        sport: u16::from_ne_bytes([p[0], p[1]]),
        dport: u16::from_ne_bytes([p[2], p[3]]),
        proto,
    })
}

/// The IPv6 header and the ports an ICMPv6 error in `ip` quotes, or `None` when they
/// are not all there. A quoted packet with extension headers is not parsed (its next
/// header is then not TCP or UDP, and the pipeline passes the error).
#[inline(always)]
pub fn icmp6_quoted(ctx: &XdpContext, ip: &Ip6) -> Option<Quoted<Addr6>> {
    let l3 = ip.l4 + 8;
    let inner: *const Ipv6Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*inner };
    if h.vcf[0] >> 4 != 6 {
        return None;
    }
    let (src, dst) = (addr6(&h.src_addr), addr6(&h.dst_addr));
    quoted_ports(ctx, ip, l3, l3 + Ipv6Hdr::LEN, src, dst, h.next_hdr)
}
