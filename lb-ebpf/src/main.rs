//! The production XDP object: the program `lb`, and `lb6` and `lb6_icmp`, which it
//! tail-calls for IPv6 (see `pipeline`).
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    lb_ebpf::pipeline::run(&ctx)
}

/// IPv6: `lb` tail-calls it (slot `PROG_IPV6` of `PROGRAMS`).
#[xdp]
pub fn lb6(ctx: XdpContext) -> u32 {
    lb_ebpf::pipeline::run6(&ctx)
}

/// ICMPv6: `lb6` tail-calls it (slot `PROG_ICMP6` of `PROGRAMS`).
#[xdp]
pub fn lb6_icmp(ctx: XdpContext) -> u32 {
    lb_ebpf::pipeline::run6_icmp(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
