//! `xdp-pass`: an XDP program that passes every frame. The lab attaches it to the peers
//! of veth interfaces lb transmits on: a veth delivers XDP_TX/XDP_REDIRECT frames only
//! when its peer runs an XDP program (physical NICs need nothing of the kind). It has no
//! maps, so iproute2 (`ip link set dev X xdp obj xdp-pass sec xdp`) loads it.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
