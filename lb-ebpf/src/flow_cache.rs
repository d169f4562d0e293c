//! The fast path: forwarding a known flow with array lookups only.
//!
//! Every helper call costs about as much as the whole floor program on machines with
//! return-thunk mitigations (see docs/BENCHMARKS.md), so the packets of established
//! flows avoid them all: the per-CPU `FLOW_CACHE` (an array, whose lookups the verifier
//! inlines) remembers what the full path decided; `bpf_jiffies64` (inlined too) dates
//! it. A hit is used only when the backend's record still lets the flow stay (the same
//! rule as the connection table's), the TCP packet carries no SYN/FIN/RST, a NAT entry's
//! packet carries no VLAN tag (the full path refuses those), and the entry is younger
//! than `FLOW_CACHE_SYNC_JIFFIES`; otherwise the full path runs and refills. Only
//! packets it forwards count as hits and as traffic.
//!
//! One cache per family (`FLOW_CACHE`, `FLOW_CACHE6`), one code path (see `family`).
use aya_ebpf::{helpers::bpf_jiffies64, programs::XdpContext};
use lb_common::{
    Backend, CACHE_DSR, CACHE_EMPTY, CACHE_NAT_FORWARD, CACHE_NAT_REPLY, CachedFlowOf, Counter,
    FLOW_CACHE_SYNC_JIFFIES, FlowKeyOf,
};

use crate::{
    conntrack, dsr,
    family::Family,
    maps::BACKENDS,
    nat::End,
    parse::{Ip, TCP_FIN, TCP_RST, TCP_SYN, frame_len},
    route::{self, Hop},
    stats::{self, Dir},
    verdict::Verdict,
};

/// Index of a flow's cache slot: a cheap multiplicative hash of the 5-tuple.
#[inline(always)]
pub fn slot<F: Family>(key: &FlowKeyOf<F::A>) -> u32 {
    F::cache_slot(key)
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: reads jiffies; inlined by the verifier on 64-bit JITs.
    unsafe { bpf_jiffies64() }
}

/// Forwards the packet from the cache, or returns `None` for the full path.
#[inline(always)]
pub fn forward<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F::A>,
    key: &FlowKeyOf<F::A>,
    slot: u32,
    tcp_flags: u8,
) -> Option<Verdict> {
    let e = F::cache(slot)?;
    // SAFETY: this CPU's slot; only this CPU writes it, and not while we read.
    let e = unsafe { &*e };
    if !e.key.same_flow(key)
        || ip.ttl <= 1
        || now().wrapping_sub(e.synced) >= FLOW_CACHE_SYNC_JIFFIES
    {
        return None;
    }
    let be = BACKENDS.get(e.backend)?;
    if !conntrack::keeps(be, e.epoch) {
        return None;
    }
    let hop = Hop {
        resolved: true,
        ifindex: e.ifindex,
        smac: e.smac,
        dmac: e.dmac,
    };
    let bytes = frame_len(ctx) as u64;
    // What the full path would refuse or must see, it gets: a SYN, FIN or RST changes the
    // flow's state; NAT does not forward VLAN-tagged packets.
    if tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 || (ip.vlan && e.kind != CACHE_DSR) {
        return None;
    }
    let (v, dir) = match e.kind {
        CACHE_DSR => (dsr::forward(ctx, ip, be), Dir::In),
        // The cached address and port: the backend's (as its record had them at this
        // epoch), or the VIP's for replies.
        CACHE_NAT_FORWARD => {
            F::rewrite_tcp_udp(ctx, ip, End::Dst, &e.addr, e.port)?;
            (route::send(ctx, hop), Dir::In)
        }
        CACHE_NAT_REPLY => {
            F::rewrite_tcp_udp(ctx, ip, End::Src, &e.addr, e.port)?;
            (route::send(ctx, hop), Dir::Out)
        }
        _ => return None,
    };
    // Only what was forwarded counts as a hit and as traffic; a drop keeps its counter.
    if v.forwarded() {
        if dir == Dir::Out {
            stats::count(Counter::NatReply);
        } else {
            stats::count(Counter::FlowCacheHit);
        }
        stats::traffic(e.service, e.backend, bytes, dir, false);
    }
    Some(v)
}

/// Forgets the flow in `slot` (the full path saw it change state: closing, re-placed
/// without being settled, ...), so its next packets take the full path too.
#[inline(always)]
pub fn forget<F: Family>(slot: u32) {
    if let Some(e) = F::cache_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { (*e).kind = CACHE_EMPTY };
    }
}

/// Remembers what the full path decided for this flow.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "flat so BPF inlines it without a struct copy"
)]
pub fn fill<F: Family>(
    slot: u32,
    key: &FlowKeyOf<F::A>,
    kind: u32,
    index: u32,
    be: &Backend,
    service: u32,
    nat: (F::A, u16),
    hop: Hop,
) {
    let Some(e) = F::cache_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let e: &mut CachedFlowOf<F::A, F::Tail> = unsafe { &mut *e };
    e.key.set(key);
    e.kind = kind;
    e.backend = index;
    e.epoch = be.epoch;
    e.service = service;
    e.synced = now();
    e.addr = nat.0;
    e.port = nat.1;
    e.ifindex = hop.ifindex;
    e.smac = hop.smac;
    e.dmac = hop.dmac;
}
