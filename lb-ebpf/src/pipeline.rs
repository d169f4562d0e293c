//! The pipeline: parse, classify, choose a backend, forward. Every packet ends in one
//! [`Verdict`], whose counter is bumped exactly once in [`run`].
//!
//! Defined actions for what is not a clean VIP packet (see also docs/DATAPATH.md):
//! - not IPv4, or shorter than an Ethernet header: pass (`pass_not_ipv4`);
//! - two or more VLAN tags: pass (`pass_vlan_nested`); one tag is parsed;
//! - IPv4 whose destination is not a VIP: pass untouched (`pass_not_vip`), malformed or
//!   not; the kernel judges it. NAT replies from backends are the exception (below);
//! - IPv4 to a VIP address with a broken header: dropped, one counter per kind: version
//!   (`drop_ip_version`), IHL < 5 or past the frame (`drop_ip_header_len`), total length
//!   shorter than the header or past the frame (`drop_ip_total_len`), any fragment
//!   (`drop_fragment`), truncated/inconsistent TCP or UDP header (`drop_l4_header`);
//! - IP options are parsed over (any valid IHL) and forwarded as they are;
//! - TTL 0 or 1 on a packet we would forward: dropped (`drop_ttl`);
//! - to a VIP address but no service for the port/protocol: pass (`pass_vip_other`).
//!
//! IPv6 (ethertype 0x86dd) takes [`handle6`], which parses the fixed header and the
//! extension headers (see `parse::ipv6` for the defined actions) and then the same
//! generic path ([`l4`] over `family::V6`, `icmp6`); IPv4 packets never run IPv6 code.
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::error;
use lb_common::{
    CACHE_DSR, CACHE_NAT_FORWARD, CACHE_NAT_REPLY, Counter, FlowKeyOf, NatBackendOf, SERVICE_F_NAT,
    Service,
};

use crate::{
    conntrack, dsr,
    family::{Family, V4, V6},
    flow_cache, icmp, icmp6,
    maps::{Addr, BACKENDS, PROG_ICMP6, PROG_IPV6, PROGRAMS},
    nat::End,
    parse::{
        self, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ip,
        TCP_FIN, TCP_RST, TCP_SYN, Unparsed, frame_len,
    },
    route::{self, Hop, Way},
    stats::{self, Dir},
    verdict::Verdict,
};

/// Entry point of the XDP program.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    finish(ctx, handle(ctx))
}

#[inline(always)]
fn handle(ctx: &XdpContext) -> Verdict {
    let l2 = match parse::l2(ctx) {
        Ok(l2) => l2,
        Err(c) => return Verdict::pass(c),
    };
    if l2.ethertype != ETH_P_IP.to_be() {
        if l2.ethertype == ETH_P_IPV6.to_be() {
            // A program of its own (a stack of its own, and no IPv6 code in this one).
            // SAFETY: the context is the program's own; on success this does not return.
            unsafe { PROGRAMS.tail_call(ctx, PROG_IPV6) };
            // Only when the control plane has not installed `lb6`.
            return Verdict::drop(Counter::DropInternal);
        }
        return Verdict::pass(Counter::PassNotIpv4);
    }
    let ip = match parse::ipv4(ctx, l2.l3, l2.vlan) {
        Ok(ip) => ip,
        Err(Unparsed::Pass(c)) => return Verdict::pass(c),
        Err(Unparsed::Broken { src, dst, counter }) => {
            return Verdict::malformed(&src, &dst, counter);
        }
    };
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => l4::<V4>(ctx, &ip),
        IPPROTO_ICMP => icmp::handle(ctx, &ip),
        _ if ip.dst.is_vip() => Verdict::pass(Counter::PassVipOther),
        _ => Verdict::pass(Counter::PassNotVip),
    }
}

/// Entry point of the IPv6 program `lb6`, which `lb` tail-calls for ethertype 0x86dd:
/// TCP and UDP are handled here, ICMPv6 by `lb6_icmp` (tail-called in turn: each
/// program has a BPF stack of its own, and the two paths together would not fit one).
#[inline(always)]
pub fn run6(ctx: &XdpContext) -> u32 {
    finish(ctx, ipv6(ctx, false))
}

/// Entry point of the ICMPv6 program `lb6_icmp` (tail-called by `lb6`).
#[inline(always)]
pub fn run6_icmp(ctx: &XdpContext) -> u32 {
    finish(ctx, ipv6(ctx, true))
}

/// Counts the outcome of a packet, and logs the rare internal inconsistency.
#[inline(always)]
fn finish(ctx: &XdpContext, v: Verdict) -> u32 {
    if v.counter == Counter::DropInternal
        && let Some(n) = stats::rare(Counter::DropInternal)
    {
        error!(
            ctx,
            "internal inconsistency: a map entry the control plane should have written is missing ({} packets dropped so far on this CPU)",
            n
        );
    }
    stats::count(v.counter);
    v.action
}

/// An IPv6 packet: its headers parsed, then TCP/UDP (or, with `icmp`, ICMPv6) handled.
#[inline(always)]
fn ipv6(ctx: &XdpContext, icmp: bool) -> Verdict {
    let l2 = match parse::l2(ctx) {
        Ok(l2) if l2.ethertype == ETH_P_IPV6.to_be() => l2,
        Ok(_) => return Verdict::pass(Counter::PassNotIpv4),
        Err(c) => return Verdict::pass(c),
    };
    let (ip, ext) = match parse::ipv6(ctx, l2.l3, l2.vlan) {
        Ok(parsed) => parsed,
        Err(Unparsed::Pass(c)) => return Verdict::pass(c),
        Err(Unparsed::Broken { src, dst, counter }) => {
            return Verdict::malformed(&src, &dst, counter);
        }
    };
    let ip = &ip;
    let v = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP if !icmp => l4::<V6>(ctx, ip),
        IPPROTO_ICMPV6 if icmp => icmp6::handle(ctx, ip),
        IPPROTO_ICMPV6 => {
            // SAFETY: the context is the program's own; on success this does not return.
            unsafe { PROGRAMS.tail_call(ctx, PROG_ICMP6) };
            Verdict::drop(Counter::DropInternal)
        }
        // (`lb6_icmp` is only ever given ICMPv6.)
        IPPROTO_TCP | IPPROTO_UDP => Verdict::drop(Counter::DropInternal),
        _ if ip.dst.is_vip() => Verdict::pass(Counter::PassVipOther),
        _ => Verdict::pass(Counter::PassNotVip),
    };
    if ext && (v.forwarded() || v.counter == Counter::PassNoNeigh) {
        stats::count(Counter::Ipv6ExtSkipped);
    }
    v
}

/// A TCP or UDP packet, of either family.
#[inline(always)]
fn l4<F: Family>(ctx: &XdpContext, ip: &Ip<F::A>) -> Verdict {
    let Some((ports, tcp_flags)) = parse::l4_header(ctx, ip) else {
        return Verdict::malformed(&ip.src, &ip.dst, Counter::DropL4Header);
    };
    F::with_key(
        &ip.src,
        &ip.dst,
        ports.sport,
        ports.dport,
        ip.proto,
        // Inlined like everything on the packet path (a BPF-to-BPF call costs a return).
        #[inline(always)]
        |flow| flow_packet::<F>(ctx, ip, flow, ports.dport, ports.sport, tcp_flags),
    )
    .unwrap_or(Verdict::drop(Counter::DropInternal))
}

/// A TCP or UDP packet of `flow`: the flow cache, else a service or a NAT reply.
#[inline(always)]
fn flow_packet<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F::A>,
    flow: &FlowKeyOf<F::A>,
    dport: u16,
    sport: u16,
    tcp_flags: u8,
) -> Verdict {
    let slot = flow_cache::slot::<F>(flow);
    if let Some(v) = flow_cache::forward::<F>(ctx, ip, flow, slot, tcp_flags) {
        return v;
    }
    let maybe_vip = ip.dst.maybe_vip();
    if maybe_vip {
        // The control plane removes a service from this map before it retires anything
        // the service points to.
        if let Some(svc) = ip.dst.service(dport, ip.proto) {
            return to_service::<F>(ctx, ip, flow, slot, tcp_flags, &svc);
        }
    }
    if let Some(back) = ip.src.nat_backend(sport, ip.proto) {
        return nat_reply::<F>(ctx, ip, flow, slot, tcp_flags, &back);
    }
    if maybe_vip && ip.dst.in_vips() {
        Verdict::pass(Counter::PassVipOther)
    } else {
        Verdict::pass(Counter::PassNotVip)
    }
}

/// A client packet for a service: choose the backend, forward, cache the decision.
#[inline(always)]
fn to_service<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F::A>,
    flow: &FlowKeyOf<F::A>,
    slot: u32,
    tcp_flags: u8,
    svc: &Service,
) -> Verdict {
    if ip.ttl <= 1 {
        return Verdict::drop(Counter::DropTtl);
    }
    let hash = F::hash(svc, flow);
    let chosen = match conntrack::for_packet::<F>(ctx, flow, svc, hash, tcp_flags) {
        Ok(c) => c,
        Err(c) => {
            if c == Counter::DropNoBackend
                && let Some(n) = stats::rare(c)
            {
                F::warn_no_backend(ctx, &ip.dst, flow.dport, n);
            }
            return Verdict::drop(c);
        }
    };
    let be = chosen.backend;
    if !chosen.cacheable {
        flow_cache::forget::<F>(slot);
    }
    let v = if svc.flags & SERVICE_F_NAT != 0 {
        let Some(addr) = F::backend_addr(chosen.index, be) else {
            return Verdict::drop(Counter::DropInternal);
        };
        let hop = match route::next_hop(ctx, ip, &ip.src, &addr, Way::ToBackend) {
            Ok(hop) => hop,
            Err(v) => return v,
        };
        if F::rewrite_tcp_udp(ctx, ip, End::Dst, &addr, be.port).is_none() {
            return Verdict::drop(Counter::DropInternal);
        }
        if chosen.cacheable && hop.resolved {
            flow_cache::fill::<F>(
                slot,
                flow,
                CACHE_NAT_FORWARD,
                chosen.index,
                be,
                svc.id,
                (addr, be.port),
                hop,
            );
        }
        route::send(ctx, hop)
    } else {
        let v = dsr::forward(ctx, ip, be);
        if chosen.cacheable && v.forwarded() {
            flow_cache::fill::<F>(
                slot,
                flow,
                CACHE_DSR,
                chosen.index,
                be,
                svc.id,
                (F::A::default(), 0),
                Hop::NONE,
            );
        }
        v
    };
    if v.forwarded() || v.counter == Counter::PassNoNeigh {
        stats::traffic(
            svc.id,
            chosen.index,
            frame_len(ctx) as u64,
            Dir::In,
            chosen.new_flow,
        );
    }
    v
}

/// A NAT backend's reply: translate the source back to VIP:port (as the configuration
/// says: no per-connection state, so replies of connections another node placed are
/// translated too), cache the decision.
#[inline(always)]
fn nat_reply<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F::A>,
    flow: &FlowKeyOf<F::A>,
    slot: u32,
    tcp_flags: u8,
    back: &NatBackendOf<F::A>,
) -> Verdict {
    let (vip, vport, service, backend) = (back.vip, back.vport, back.service, back.backend);
    // Routed first: a reply addressed to this host passes whatever its TTL.
    let hop = match route::next_hop(ctx, ip, &vip, &ip.dst, Way::ToClient) {
        Ok(hop) => hop,
        Err(v) => return v,
    };
    if ip.ttl <= 1 {
        return Verdict::drop(Counter::DropTtl);
    }
    if F::rewrite_tcp_udp(ctx, ip, End::Src, &vip, vport).is_none() {
        return Verdict::drop(Counter::DropInternal);
    }
    if hop.resolved
        && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && let Some(be) = BACKENDS.get(backend)
    {
        flow_cache::fill::<F>(
            slot,
            flow,
            CACHE_NAT_REPLY,
            backend,
            be,
            service,
            (vip, vport),
            hop,
        );
    }
    stats::count(Counter::NatReply);
    stats::traffic(service, backend, frame_len(ctx) as u64, Dir::Out, false);
    route::send(ctx, hop)
}
