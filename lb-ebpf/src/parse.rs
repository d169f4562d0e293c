//! Bounds-checked access to the frame, and parsing: Ethernet (and one VLAN tag), the
//! IPv4 header, the TCP/UDP header, the ICMP header and the packet an ICMP error quotes.
//! Parsing only reads and reports; what happens to a packet that does not parse is the
//! pipeline's choice (see `pipeline`).
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::Counter;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The one bounds check: a pointer to a `T` at byte `off` of the frame, or `None` when
/// the frame is too short. Every header access goes through here.
///
/// Verifier note: `data`/`data_end` are read with volatile loads. Otherwise LLVM
/// proves some checks redundant (e.g. "the frame is longer than the Ethernet header"
/// once a deeper offset was checked) and drops them, but the verifier tracks ranges
/// per loaded pointer and rejects the access ("invalid access to packet").
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
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

/// What the pipeline knows about an IPv4 packet once its header is validated.
#[derive(Clone, Copy)]
pub struct Ip {
    /// Offset of the IPv4 header (14, or 18 behind one VLAN tag).
    pub l3: usize,
    /// Offset of the layer-4 header (`l3` + IHL × 4).
    pub l4: usize,
    /// IPv4 total length.
    pub tot_len: usize,
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub ttl: u8,
    pub tos: u8,
    /// The frame carries one 802.1Q/802.1ad tag.
    pub vlan: bool,
}

impl Ip {
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

/// Why a frame is not an IPv4 packet the pipeline can classify.
#[derive(Clone, Copy)]
pub enum Unparsed {
    /// Not for the pipeline (not IPv4, nested VLAN tags, or too short to tell whom it is
    /// for): passed, with this counter.
    Pass(Counter),
    /// An IPv4 packet from `src` to `dst` whose header is broken in the way `counter`
    /// names.
    Broken {
        src: u32,
        dst: u32,
        counter: Counter,
    },
}

/// Parses the Ethernet header, at most one VLAN tag and the IPv4 header, and checks the
/// IPv4 header against the frame.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Ip, Unparsed> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Err(Unparsed::Pass(Counter::PassNotIpv4));
    };
    // SAFETY: bounds checked by ptr_at.
    let mut ethertype = unsafe { (*eth).ether_type };
    let mut l3 = EthHdr::LEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q.to_be() || ethertype == ETH_P_8021AD.to_be() {
        // The tag's own ethertype sits 2 bytes past the end of the Ethernet header.
        let Some(inner) = ptr_at::<[u8; 2]>(ctx, EthHdr::LEN + 2) else {
            return Err(Unparsed::Pass(Counter::PassNotIpv4));
        };
        // SAFETY: bounds checked by ptr_at.
        ethertype = ne16(unsafe { &*inner });
        if ethertype == ETH_P_8021Q.to_be() || ethertype == ETH_P_8021AD.to_be() {
            return Err(Unparsed::Pass(Counter::PassVlanNested));
        }
        l3 += 4;
        vlan = true;
    }
    if ethertype != ETH_P_IP.to_be() {
        return Err(Unparsed::Pass(Counter::PassNotIpv4));
    }
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
        tos: h.tos,
        vlan,
    })
}

/// Validates the TCP/UDP header of `ip` and returns its ports and TCP flags (0 for UDP).
#[inline(always)]
pub fn l4_header(ctx: &XdpContext, ip: &Ip) -> Option<(Ports, u8)> {
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

/// The type of the ICMP message in `ip`, or `None` when its 8-byte header is cut short
/// by the frame or by the IPv4 total length.
#[inline(always)]
pub fn icmp_type(ctx: &XdpContext, ip: &Ip) -> Option<u8> {
    let hdr = ptr_at::<[u8; 8]>(ctx, ip.l4)?;
    if ip.l4_len() < 8 {
        return None;
    }
    // SAFETY: bounds checked by ptr_at.
    Some(unsafe { (*hdr)[0] })
}

/// The packet an ICMP error quotes.
pub struct Quoted {
    /// Offset of the quoted IPv4 header.
    pub l3: usize,
    /// Offset of its TCP/UDP ports.
    pub l4: usize,
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The IPv4 header and the ports an ICMP error in `ip` quotes, or `None` when they are
/// not all there.
#[inline(always)]
pub fn icmp_quoted(ctx: &XdpContext, ip: &Ip) -> Option<Quoted> {
    let l3 = ip.l4 + 8;
    let inner: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*inner };
    let ihl = ((h.vihl & 0x0f) as usize) << 2;
    if h.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return None;
    }
    let l4 = l3 + ihl;
    // The quoted ports must lie inside the ICMP packet, not just inside the frame.
    if l4 + 4 > ip.l3 + ip.tot_len {
        return None;
    }
    let ports: *const [u8; 4] = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let p = unsafe { &*ports };
    Some(Quoted {
        l3,
        l4,
        src: ne32(&h.src_addr),
        dst: ne32(&h.dst_addr),
        sport: u16::from_ne_bytes([p[0], p[1]]),
        dport: u16::from_ne_bytes([p[2], p[3]]),
        proto: h.proto,
    })
}
