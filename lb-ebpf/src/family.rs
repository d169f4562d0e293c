//! What differs between IPv4 and IPv6 in the pipeline, behind one trait: the address
//! type, the family's own maps (connection table, half-open slots, flow cache, backend
//! addresses), the flow hash, and the NAT rewrites. `conntrack`, `flow_cache`, `icmp`
//! and `pipeline` are written once, generic over [`Family`]; each family's instance is
//! compiled separately, so IPv4 packets run exactly the IPv4 code (no family test per
//! packet beyond the ethertype).
use aya_ebpf::{bindings::BPF_ANY, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{
    Addr6, Backend, CachedFlowOf, FLOW_CACHE_SLOTS, FLOW_CACHE6_SLOTS, Flow, FlowKeyOf,
    HALF_OPEN_SLOTS, HalfOpenOf, SERVICE_F_HASH_SRC, Service, half_open_check, half_open_check6,
    hash::{flow_hash, flow_hash6, ports_word, source_hash, source_hash6},
    ipv6_octets,
};

use crate::{
    maps::{BACKEND_ADDRS6, CONNTRACK, CONNTRACK6, FLOW_CACHE, FLOW_CACHE6, HALF_OPEN, HALF_OPEN6},
    nat::{self, End},
    parse::{self, Ip, Quoted},
    route::FibAddr,
    scratch,
};

/// An address family: its address type and everything the generic pipeline asks of it.
pub trait Family: 'static {
    type A: FibAddr;
    /// The flow cache entry's tail padding type (see `lb_common::CachedFlowOf`).
    type Tail: Copy;

    /// Runs `f` with the flow key of these fields (IPv4: a local; IPv6: in the per-CPU
    /// scratch area, see `scratch`). `None` only if that area is missing.
    fn with_key<R>(
        src: &Self::A,
        dst: &Self::A,
        sport: u16,
        dport: u16,
        proto: u8,
        f: impl FnOnce(&FlowKeyOf<Self::A>) -> R,
    ) -> Option<R>;

    /// The connection-table entry of `key`, for update in place.
    fn ct_get_mut(key: &FlowKeyOf<Self::A>) -> Option<*mut Flow>;
    /// The connection-table entry of `key`, to read.
    fn ct_get(key: &FlowKeyOf<Self::A>) -> Option<*const Flow>;
    /// Creates (or replaces) the entry of `key`; whether it was stored.
    fn ct_insert(key: &FlowKeyOf<Self::A>, flow: Flow) -> bool;

    /// Index of a flow's half-open slot (a hash of the 5-tuple, not the flow cache's).
    fn half_open_slot(key: &FlowKeyOf<Self::A>) -> u32;
    /// The check word of a half-open slot's fields.
    fn half_open_check(key: &FlowKeyOf<Self::A>, backend: u32, epoch: u32, born: u32) -> u32;
    fn half_open(slot: u32) -> Option<&'static HalfOpenOf<Self::A>>;
    fn half_open_mut(slot: u32) -> Option<*mut HalfOpenOf<Self::A>>;

    /// Index of a flow's flow-cache slot.
    fn cache_slot(key: &FlowKeyOf<Self::A>) -> u32;
    fn cache(slot: u32) -> Option<*const CachedFlowOf<Self::A, Self::Tail>>;
    fn cache_mut(slot: u32) -> Option<*mut CachedFlowOf<Self::A, Self::Tail>>;

    /// The hash that places `flow` in the service's Maglev table: of the source address
    /// alone when the service hashes on the source, of the 5-tuple otherwise.
    fn hash(svc: &Service, flow: &FlowKeyOf<Self::A>) -> u32;

    /// The address of backend `index` (record `be`), for NAT.
    fn backend_addr(index: u32, be: &Backend) -> Option<Self::A>;

    /// NAT: rewrites one end of a TCP/UDP packet (see `nat`).
    fn rewrite_tcp_udp(
        ctx: &XdpContext,
        ip: &Ip<Self::A>,
        end: End,
        addr: &Self::A,
        port: u16,
    ) -> Option<()>;
    /// The packet an ICMP error quotes (see `parse`).
    fn quoted(ctx: &XdpContext, ip: &Ip<Self::A>) -> Option<Quoted<Self::A>>;
    /// NAT: rewrites an ICMP error about a NAT flow (see `nat`).
    fn rewrite_icmp_error(
        ctx: &XdpContext,
        ip: &Ip<Self::A>,
        outer: End,
        q: &Quoted<Self::A>,
        addr: &Self::A,
        port: u16,
    ) -> Option<()>;

    /// The rare log line of a service without a usable backend.
    fn warn_no_backend(ctx: &XdpContext, vip: &Self::A, port: u16, n: u64);
}

/// IPv4.
pub struct V4;
/// IPv6.
pub struct V6;

/// The ports word of a flow key (as the hashes take it).
#[inline(always)]
fn ports<A>(key: &FlowKeyOf<A>) -> u32 {
    u32::from(key.sport) | (u32::from(key.dport) << 16)
}

/// An IPv6 address folded to one word, for the cheap slot hashes.
#[inline(always)]
fn fold(a: &Addr6) -> u32 {
    a[0] ^ a[1] ^ a[2] ^ a[3]
}

impl Family for V4 {
    type A = u32;
    type Tail = ();

    #[inline(always)]
    fn with_key<R>(
        src: &u32,
        dst: &u32,
        sport: u16,
        dport: u16,
        proto: u8,
        f: impl FnOnce(&FlowKeyOf<u32>) -> R,
    ) -> Option<R> {
        Some(f(&FlowKeyOf::new(*src, *dst, sport, dport, proto)))
    }

    #[inline(always)]
    fn ct_get_mut(key: &FlowKeyOf<u32>) -> Option<*mut Flow> {
        CONNTRACK.get_ptr_mut(key)
    }
    #[inline(always)]
    fn ct_get(key: &FlowKeyOf<u32>) -> Option<*const Flow> {
        CONNTRACK.get_ptr(key)
    }
    #[inline(always)]
    fn ct_insert(key: &FlowKeyOf<u32>, flow: Flow) -> bool {
        CONNTRACK.insert(key, flow, BPF_ANY as u64).is_ok()
    }

    #[inline(always)]
    fn half_open_slot(key: &FlowKeyOf<u32>) -> u32 {
        let x =
            (key.src.rotate_left(5) ^ key.dst ^ ports(key).rotate_left(19) ^ u32::from(key.proto))
                .wrapping_mul(0x85eb_ca6b);
        (x >> 15) & (HALF_OPEN_SLOTS - 1)
    }
    #[inline(always)]
    fn half_open_check(key: &FlowKeyOf<u32>, backend: u32, epoch: u32, born: u32) -> u32 {
        half_open_check(key, backend, epoch, born)
    }
    #[inline(always)]
    fn half_open(slot: u32) -> Option<&'static HalfOpenOf<u32>> {
        HALF_OPEN.get(slot)
    }
    #[inline(always)]
    fn half_open_mut(slot: u32) -> Option<*mut HalfOpenOf<u32>> {
        HALF_OPEN.get_ptr_mut(slot)
    }

    #[inline(always)]
    fn cache_slot(key: &FlowKeyOf<u32>) -> u32 {
        let x =
            (key.src ^ key.dst.rotate_left(11) ^ ports(key).rotate_left(22) ^ u32::from(key.proto))
                .wrapping_mul(0x9e37_79b1);
        (x >> 16) & (FLOW_CACHE_SLOTS - 1)
    }
    #[inline(always)]
    fn cache(slot: u32) -> Option<*const CachedFlowOf<u32, ()>> {
        FLOW_CACHE.get_ptr(slot)
    }
    #[inline(always)]
    fn cache_mut(slot: u32) -> Option<*mut CachedFlowOf<u32, ()>> {
        FLOW_CACHE.get_ptr_mut(slot)
    }

    #[inline(always)]
    fn hash(svc: &Service, flow: &FlowKeyOf<u32>) -> u32 {
        if svc.flags & SERVICE_F_HASH_SRC != 0 {
            source_hash(flow.src)
        } else {
            flow_hash(
                flow.src,
                flow.dst,
                ports_word(flow.sport, flow.dport),
                flow.proto,
            )
        }
    }

    #[inline(always)]
    fn backend_addr(_index: u32, be: &Backend) -> Option<u32> {
        Some(be.addr)
    }

    #[inline(always)]
    fn rewrite_tcp_udp(
        ctx: &XdpContext,
        ip: &Ip<u32>,
        end: End,
        addr: &u32,
        port: u16,
    ) -> Option<()> {
        nat::rewrite_tcp_udp(ctx, ip, end, *addr, port)
    }
    #[inline(always)]
    fn quoted(ctx: &XdpContext, ip: &Ip<u32>) -> Option<Quoted<u32>> {
        parse::icmp_quoted(ctx, ip)
    }
    #[inline(always)]
    fn rewrite_icmp_error(
        ctx: &XdpContext,
        ip: &Ip<u32>,
        outer: End,
        q: &Quoted<u32>,
        addr: &u32,
        port: u16,
    ) -> Option<()> {
        nat::rewrite_icmp_error(ctx, ip, outer, q, *addr, port)
    }

    #[inline(always)]
    fn warn_no_backend(ctx: &XdpContext, vip: &u32, port: u16, n: u64) {
        warn!(
            ctx,
            "service {:i}:{} has no usable backend: its new flows are dropped ({} so far on this CPU)",
            u32::from_be(*vip),
            u16::from_be(port),
            n
        );
    }
}

impl Family for V6 {
    type A = Addr6;
    type Tail = u32;

    #[inline(always)]
    fn with_key<R>(
        src: &Addr6,
        dst: &Addr6,
        sport: u16,
        dport: u16,
        proto: u8,
        f: impl FnOnce(&FlowKeyOf<Addr6>) -> R,
    ) -> Option<R> {
        let k = scratch::key6()?;
        k.src = *src;
        k.dst = *dst;
        k.sport = sport;
        k.dport = dport;
        k.proto = proto;
        k._pad0 = 0;
        k._pad1 = 0;
        Some(f(k))
    }

    #[inline(always)]
    fn ct_get_mut(key: &FlowKeyOf<Addr6>) -> Option<*mut Flow> {
        CONNTRACK6.get_ptr_mut(key)
    }
    #[inline(always)]
    fn ct_get(key: &FlowKeyOf<Addr6>) -> Option<*const Flow> {
        CONNTRACK6.get_ptr(key)
    }
    #[inline(always)]
    fn ct_insert(key: &FlowKeyOf<Addr6>, flow: Flow) -> bool {
        CONNTRACK6.insert(key, flow, BPF_ANY as u64).is_ok()
    }

    #[inline(always)]
    fn half_open_slot(key: &FlowKeyOf<Addr6>) -> u32 {
        let x = (fold(&key.src).rotate_left(5)
            ^ fold(&key.dst)
            ^ ports(key).rotate_left(19)
            ^ u32::from(key.proto))
        .wrapping_mul(0x85eb_ca6b);
        (x >> 15) & (HALF_OPEN_SLOTS - 1)
    }
    #[inline(always)]
    fn half_open_check(key: &FlowKeyOf<Addr6>, backend: u32, epoch: u32, born: u32) -> u32 {
        half_open_check6(key, backend, epoch, born)
    }
    #[inline(always)]
    fn half_open(slot: u32) -> Option<&'static HalfOpenOf<Addr6>> {
        HALF_OPEN6.get(slot)
    }
    #[inline(always)]
    fn half_open_mut(slot: u32) -> Option<*mut HalfOpenOf<Addr6>> {
        HALF_OPEN6.get_ptr_mut(slot)
    }

    #[inline(always)]
    fn cache_slot(key: &FlowKeyOf<Addr6>) -> u32 {
        let x = (fold(&key.src)
            ^ fold(&key.dst).rotate_left(11)
            ^ ports(key).rotate_left(22)
            ^ u32::from(key.proto))
        .wrapping_mul(0x9e37_79b1);
        (x >> 16) & (FLOW_CACHE6_SLOTS - 1)
    }
    #[inline(always)]
    fn cache(slot: u32) -> Option<*const CachedFlowOf<Addr6, u32>> {
        FLOW_CACHE6.get_ptr(slot)
    }
    #[inline(always)]
    fn cache_mut(slot: u32) -> Option<*mut CachedFlowOf<Addr6, u32>> {
        FLOW_CACHE6.get_ptr_mut(slot)
    }

    #[inline(always)]
    fn hash(svc: &Service, flow: &FlowKeyOf<Addr6>) -> u32 {
        if svc.flags & SERVICE_F_HASH_SRC != 0 {
            source_hash6(&flow.src)
        } else {
            flow_hash6(
                &flow.src,
                &flow.dst,
                ports_word(flow.sport, flow.dport),
                flow.proto,
            )
        }
    }

    #[inline(always)]
    fn backend_addr(index: u32, _be: &Backend) -> Option<Addr6> {
        BACKEND_ADDRS6.get(index).copied()
    }

    #[inline(always)]
    fn rewrite_tcp_udp(
        ctx: &XdpContext,
        ip: &Ip<Addr6>,
        end: End,
        addr: &Addr6,
        port: u16,
    ) -> Option<()> {
        nat::rewrite_tcp_udp6(ctx, ip, end, addr, port)
    }
    #[inline(always)]
    fn quoted(ctx: &XdpContext, ip: &Ip<Addr6>) -> Option<Quoted<Addr6>> {
        parse::icmp6_quoted(ctx, ip)
    }
    #[inline(always)]
    fn rewrite_icmp_error(
        ctx: &XdpContext,
        ip: &Ip<Addr6>,
        outer: End,
        q: &Quoted<Addr6>,
        addr: &Addr6,
        port: u16,
    ) -> Option<()> {
        nat::rewrite_icmp6_error(ctx, ip, outer, q, addr, port)
    }

    #[inline(always)]
    fn warn_no_backend(ctx: &XdpContext, vip: &Addr6, port: u16, n: u64) {
        warn!(
            ctx,
            "service [{:i}]:{} has no usable backend: its new flows are dropped ({} so far on this CPU)",
            ipv6_octets(*vip),
            u16::from_be(port),
            n
        );
    }
}
