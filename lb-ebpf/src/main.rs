//! The `lb` XDP program: the packet path of the load balancer.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::PerCpuArray,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::Counter;

/// Global outcome counters, indexed by [`Counter`].
#[btf_map]
static STATS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

#[xdp]
pub fn lb(_ctx: XdpContext) -> u32 {
    count(Counter::PassNotIpv4);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(v) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *v += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
