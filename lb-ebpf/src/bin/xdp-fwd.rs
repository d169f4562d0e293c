//! `xdp-fwd`: two helper programs of the lab benchmarks (`cargo xtask bench pps` and
//! `throughput`), never shipped in `lb`. No maps, so iproute2 loads them
//! (`ip link set dev X xdp obj xdp-fwd program fwd|sink`).
//!
//! - `fwd`, the bare XDP forwarder (the ceiling): it does the least a DSR balancer must
//!   do and nothing else. An IPv4 frame for the lab's DSR VIP goes to one of three
//!   backends (UDP: picked by source port; TCP: by source address) by rewriting the MACs
//!   and sending it back out (XDP_TX); everything else passes. No lookups, no state, no
//!   counters. The backends' MACs are fixed, `02:00:00:00:0b:01..03`: the benchmarks
//!   set the lab backends' interfaces to those addresses.
//! - `sink`, on the backends: drops UDP to the discard port (9) as soon as it arrives,
//!   so the backends' own stack does not weigh on the measured path; the interface's
//!   receive counter still counts every delivered frame. Everything else passes.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The lab's DSR VIP, 10.100.0.10, as it sits in the packet.
const VIP: [u8; 4] = [10, 100, 0, 10];
/// Backend `i` (0..3) has the MAC `BACKEND_MAC` with `i + 1` as its last byte.
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0];
const BACKENDS: u16 = 3;

/// Ethernet (14) + IPv4 without options (20) + source and destination ports (4).
type Head = [u8; 38];

/// The first 38 bytes of the frame, or `None` when it is shorter. Standalone on purpose:
/// using the `lb_ebpf` library would link its maps into this object, aya-log's among
/// them in the legacy `maps` section, which iproute2's libbpf refuses.
#[inline(always)]
fn head(ctx: &XdpContext) -> Option<*mut Head> {
    // SAFETY: ctx.ctx points at the program's xdp_md for the whole run. Volatile loads
    // keep LLVM from dropping the bounds check the verifier needs (see lb_ebpf::parse).
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    if start + core::mem::size_of::<Head>() > end {
        return None;
    }
    Some(start as *mut Head)
}

#[xdp]
pub fn fwd(ctx: XdpContext) -> u32 {
    let Some(head) = head(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds checked by head().
    let h = unsafe { &mut *head };
    // IPv4 (0x0800), no options (0x45), to the VIP.
    if h[12] != 0x08 || h[13] != 0x00 || h[14] != 0x45 || h[30..34] != VIP {
        return xdp_action::XDP_PASS;
    }
    // UDP flows spread by source port; anything else (TCP) by source address, so all
    // the connections of one client (iperf3's control and data) reach the same backend.
    let key = if h[23] == 17 {
        u16::from_be_bytes([h[34], h[35]])
    } else {
        u16::from_be_bytes([h[28], h[29]])
    };
    // The frame arrived for our MAC: that becomes the source.
    for i in 0..6 {
        h[6 + i] = h[i];
        h[i] = BACKEND_MAC[i];
    }
    h[5] = (key % BACKENDS) as u8 + 1;
    xdp_action::XDP_TX
}

/// UDP to port 9 (discard) in an IPv4 frame without options.
#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    let Some(head) = head(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds checked by head().
    let h = unsafe { &*head };
    if h[12] == 0x08 && h[13] == 0x00 && h[14] == 0x45 && h[23] == 17 && h[36] == 0 && h[37] == 9 {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
