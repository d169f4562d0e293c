//! Bounds-checked access to the frame and the parsed view of a packet.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

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

/// Ports of a TCP/UDP header, in network order.
#[derive(Clone, Copy)]
pub struct Ports {
    pub sport: u16,
    pub dport: u16,
}
