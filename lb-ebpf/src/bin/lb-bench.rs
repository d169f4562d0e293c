//! Benchmark-only XDP object (never attached, never shipped in `lb`): the production
//! pipeline plus the programs that make BPF_PROG_TEST_RUN timings honest.
//!
//! With `repeat` > 1 the kernel reruns a program on the same buffer, so a program that
//! rewrites the packet (NAT) sees its own output from the second round on. The
//! `*_restore` programs copy the original frame back (from `BENCH_FRAME`) before each
//! round, and `*_newflow` also give every round a new source port/address so each
//! round is a new flow. Each wrapper exists around the floor too, so the wrapper's own
//! cost can be measured and subtracted.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{FlowKey, ServiceKey};
use lb_ebpf::parse::ptr_at;

/// Bytes restored before each round (frames are padded to this size).
const FRAME: usize = 64;

/// The frame to restore.
#[btf_map]
static BENCH_FRAME: Array<[u8; FRAME], 1> = Array::new();

/// Same shape as CONNTRACK, but one LRU list shared by all CPUs (for comparison).
#[btf_map]
static BENCH_LRU_COMMON: aya_ebpf::btf_maps::LruHashMap<FlowKey, lb_common::Flow, { 1 << 20 }> =
    aya_ebpf::btf_maps::LruHashMap::new();

/// Per-CPU round counter, for distinct flows.
#[btf_map]
static BENCH_ROUND: PerCpuArray<u32, 1> = PerCpuArray::new();

/// The production pipeline, unchanged.
#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    lb_ebpf::pipeline::run(&ctx)
}

/// The production IPv6 programs (`lb` tail-calls them).
#[xdp]
pub fn lb6(ctx: XdpContext) -> u32 {
    lb_ebpf::pipeline::run6(&ctx)
}

#[xdp]
pub fn lb6_icmp(ctx: XdpContext) -> u32 {
    lb_ebpf::pipeline::run6_icmp(&ctx)
}

/// The floor: swap the MACs and send the frame back.
#[xdp]
pub fn floor(ctx: XdpContext) -> u32 {
    swap_macs(&ctx)
}

#[xdp]
pub fn floor_restore(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    swap_macs(&ctx)
}

#[xdp]
pub fn lb_restore(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    lb_ebpf::pipeline::run(&ctx)
}

#[xdp]
pub fn floor_newflow(ctx: XdpContext) -> u32 {
    if restore(&ctx).and_then(|()| new_flow(&ctx)).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    swap_macs(&ctx)
}

#[xdp]
pub fn lb_newflow(ctx: XdpContext) -> u32 {
    if restore(&ctx).and_then(|()| new_flow(&ctx)).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    lb_ebpf::pipeline::run(&ctx)
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> u32 {
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at.
    let e = unsafe { &mut *eth };
    for i in 0..6 {
        e.swap(i, i + 6);
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let src = BENCH_FRAME.get(0)?;
    let dst: *mut [u64; FRAME / 8] = ptr_at(ctx, 0)?;
    let src = (src as *const [u8; FRAME]).cast::<u64>();
    // Word by word with volatile accesses: a plain struct copy becomes a call to a
    // byte-loop memcpy in BPF (64 iterations).
    for i in 0..FRAME / 8 {
        // SAFETY: both are FRAME bytes (map values are 8-aligned); the packet range was
        // checked by ptr_at.
        unsafe {
            let w = core::ptr::read_volatile(src.add(i));
            core::ptr::write_volatile(dst.cast::<u64>().add(i), w);
        }
    }
    Some(())
}

// ---- cost of the building blocks (one each, then XDP_TX) ----

/// Nothing: the cost of BPF_PROG_TEST_RUN's loop itself.
#[xdp]
pub fn part_nop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// One lookup in SERVICES (hash map, 8-byte key).
#[xdp]
pub fn part_hash(_ctx: XdpContext) -> u32 {
    let key = ServiceKey {
        vip: 0x0a00_640a,
        port: 80u16.to_be(),
        proto: 6,
        _pad: 0,
    };
    core::hint::black_box(lb_ebpf::maps::SERVICES.get_ptr(&key));
    xdp_action::XDP_TX
}

/// One lookup in CONNTRACK (LRU hash, 16-byte key).
#[xdp]
pub fn part_lru(_ctx: XdpContext) -> u32 {
    let key = FlowKey::new(0x0764_33c6, 0x0a00_640a, 40000u16.to_be(), 80u16.to_be(), 6);
    core::hint::black_box(lb_ebpf::maps::CONNTRACK.get_ptr(&key));
    xdp_action::XDP_TX
}

/// bpf_ktime_get_coarse_ns().
#[xdp]
pub fn part_ktime(_ctx: XdpContext) -> u32 {
    // SAFETY: reads the clock.
    core::hint::black_box(unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() });
    xdp_action::XDP_TX
}

/// bpf_jiffies64() (inlined by the verifier on x86-64).
#[xdp]
pub fn part_jiffies(_ctx: XdpContext) -> u32 {
    // SAFETY: reads jiffies.
    core::hint::black_box(unsafe { aya_ebpf::helpers::bpf_jiffies64() });
    xdp_action::XDP_TX
}

/// One per-CPU counter increment (array lookup inlined by the verifier).
#[xdp]
pub fn part_percpu(_ctx: XdpContext) -> u32 {
    lb_ebpf::stats::count(lb_common::Counter::FlowHit);
    xdp_action::XDP_TX
}

#[xdp]
pub fn lb_newflow6(ctx: XdpContext) -> u32 {
    if restore(&ctx).and_then(|()| new_flow6(&ctx)).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    lb_ebpf::pipeline::run(&ctx)
}

#[xdp]
pub fn floor_newflow6(ctx: XdpContext) -> u32 {
    if restore(&ctx).and_then(|()| new_flow6(&ctx)).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    swap_macs(&ctx)
}

/// As [`new_flow`], for an untagged IPv6 frame without extension headers: the source
/// address at 22..38, the source port at 54..56.
#[inline(always)]
fn new_flow6(ctx: &XdpContext) -> Option<()> {
    let round = BENCH_ROUND.get_ptr_mut(0)?;
    let f: *mut [u8; 56] = ptr_at(ctx, 0)?;
    // SAFETY: per-CPU slot; packet range checked by ptr_at.
    unsafe {
        let n = *round;
        *round = n.wrapping_add(1);
        (*f)[37] = (n >> 16) as u8;
        (*f)[54] = (n >> 8) as u8;
        (*f)[55] = n as u8;
    }
    Some(())
}

/// Source port <- round, last byte of the source address <- round >> 16 (an untagged
/// IPv4 frame without options: address at 26..30, port at 34..36).
#[inline(always)]
fn new_flow(ctx: &XdpContext) -> Option<()> {
    let round = BENCH_ROUND.get_ptr_mut(0)?;
    let f: *mut [u8; 36] = ptr_at(ctx, 0)?;
    // SAFETY: per-CPU slot; packet range checked by ptr_at.
    unsafe {
        let n = *round;
        *round = n.wrapping_add(1);
        (*f)[29] = (n >> 16) as u8;
        (*f)[34] = (n >> 8) as u8;
        (*f)[35] = n as u8;
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Inserts a new key each round into CONNTRACK (per-CPU LRU lists).
#[xdp]
pub fn part_insert_percpu_lru(_ctx: XdpContext) -> u32 {
    insert(&lb_ebpf::maps::CONNTRACK)
}

/// Inserts a new key each round into a common-LRU map of the same size.
#[xdp]
pub fn part_insert_common_lru(_ctx: XdpContext) -> u32 {
    insert(&BENCH_LRU_COMMON)
}

#[inline(always)]
fn insert<const N: usize, const F: usize>(
    map: &aya_ebpf::btf_maps::LruHashMap<FlowKey, lb_common::Flow, N, F>,
) -> u32 {
    let Some(round) = BENCH_ROUND.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot.
    let n = unsafe {
        let n = *round;
        *round = n.wrapping_add(1);
        n
    };
    let key = FlowKey::new(n, 0x0a00_640a, 1, 80, 6);
    let flow = lb_common::Flow::default();
    let _ = map.insert(&key, &flow, 0);
    xdp_action::XDP_TX
}
