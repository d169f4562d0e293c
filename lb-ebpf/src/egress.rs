//! How a frame leaves: the Ethernet addresses it carries out, and the choice between
//! XDP_TX and XDP_REDIRECT.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use lb_common::Counter;
use network_types::eth::EthHdr;

use crate::{parse::ptr_at, verdict::Verdict};

/// Writes the destination and source MAC addresses of the frame.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Option<()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst_addr = dst;
        (*eth).src_addr = src;
    }
    Some(())
}

/// Sends the (already rewritten) frame out of `ifindex`: XDP_TX when that is the
/// interface it came in on, XDP_REDIRECT otherwise. A VLAN-tagged frame only goes back
/// out where it came from: its tag means nothing on another interface.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, vlan: bool, ifindex: u32) -> Verdict {
    if ifindex == ctx.ingress_ifindex() as u32 {
        return Verdict::tx();
    }
    if vlan {
        return Verdict::drop(Counter::DropVlanUnsupported);
    }
    // SAFETY: plain helper call; it only records the target for the driver.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        Verdict::redirect()
    } else {
        Verdict::drop(Counter::DropInternal)
    }
}
