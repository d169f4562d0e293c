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
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::{error, warn};
use lb_common::{
    CACHE_DSR, CACHE_NAT_FORWARD, CACHE_NAT_REPLY, Counter, FlowKey, NatBackend, SERVICE_F_NAT,
    Service, ServiceKey,
};

use crate::{
    conntrack, dsr, flow_cache, icmp, maglev,
    maps::{BACKENDS, VIP_FILTER, VIPS, in_filter, is_vip, nat_backend, service},
    nat::{self, End},
    parse::{
        self, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ip, TCP_FIN, TCP_RST, TCP_SYN, Unparsed,
        frame_len,
    },
    route::{self, Hop, Way},
    stats::{self, Dir},
    verdict::Verdict,
};

/// Entry point of the XDP program.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let v = handle(ctx);
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

#[inline(always)]
fn handle(ctx: &XdpContext) -> Verdict {
    let ip = match parse::ipv4(ctx) {
        Ok(ip) => ip,
        Err(Unparsed::Pass(c)) => return Verdict::pass(c),
        Err(Unparsed::Broken { src, dst, counter }) => {
            return Verdict::malformed(src, dst, counter);
        }
    };
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => l4(ctx, &ip),
        IPPROTO_ICMP => icmp::handle(ctx, &ip),
        _ if is_vip(ip.dst) => Verdict::pass(Counter::PassVipOther),
        _ => Verdict::pass(Counter::PassNotVip),
    }
}

#[inline(always)]
fn l4(ctx: &XdpContext, ip: &Ip) -> Verdict {
    let Some((ports, tcp_flags)) = parse::l4_header(ctx, ip) else {
        return Verdict::malformed(ip.src, ip.dst, Counter::DropL4Header);
    };
    let flow = FlowKey::new(ip.src, ip.dst, ports.sport, ports.dport, ip.proto);
    let slot = flow_cache::slot(&flow);
    if let Some(v) = flow_cache::forward(ctx, ip, &flow, slot, tcp_flags) {
        return v;
    }
    let maybe_vip = in_filter(&VIP_FILTER, ip.dst);
    if maybe_vip {
        let key = ServiceKey {
            vip: ip.dst,
            port: ports.dport,
            proto: ip.proto,
            _pad: 0,
        };
        // The control plane removes a service from this map before it retires anything
        // the service points to.
        if let Some(svc) = service(&key) {
            return to_service(ctx, ip, &flow, slot, tcp_flags, &svc);
        }
    }
    if let Some(back) = nat_backend(ip.src, ports.sport, ip.proto) {
        return nat_reply(ctx, ip, &flow, slot, tcp_flags, &back);
    }
    if maybe_vip && VIPS.get_ptr(ip.dst).is_some() {
        Verdict::pass(Counter::PassVipOther)
    } else {
        Verdict::pass(Counter::PassNotVip)
    }
}

/// A client packet for a service: choose the backend, forward, cache the decision.
#[inline(always)]
fn to_service(
    ctx: &XdpContext,
    ip: &Ip,
    flow: &FlowKey,
    slot: u32,
    tcp_flags: u8,
    svc: &Service,
) -> Verdict {
    if ip.ttl <= 1 {
        return Verdict::drop(Counter::DropTtl);
    }
    let hash = maglev::hash(svc, flow);
    let chosen = match conntrack::for_packet(ctx, flow, svc, hash, tcp_flags) {
        Ok(c) => c,
        Err(c) => {
            if c == Counter::DropNoBackend
                && let Some(n) = stats::rare(c)
            {
                warn!(
                    ctx,
                    "service {:i}:{} has no usable backend: its new flows are dropped ({} so far on this CPU)",
                    u32::from_be(ip.dst),
                    u16::from_be(flow.dport),
                    n
                );
            }
            return Verdict::drop(c);
        }
    };
    let be = chosen.backend;
    if !chosen.cacheable {
        flow_cache::forget(slot);
    }
    let v = if svc.flags & SERVICE_F_NAT != 0 {
        let hop = match route::next_hop(ctx, ip, ip.src, be.addr, Way::ToBackend) {
            Ok(hop) => hop,
            Err(v) => return v,
        };
        if nat::rewrite_tcp_udp(ctx, ip, End::Dst, be.addr, be.port).is_none() {
            return Verdict::drop(Counter::DropInternal);
        }
        if chosen.cacheable && hop.resolved {
            flow_cache::fill(
                slot,
                flow,
                CACHE_NAT_FORWARD,
                chosen.index,
                be,
                svc.id,
                (be.addr, be.port),
                hop,
            );
        }
        route::send(ctx, hop)
    } else {
        let v = dsr::forward(ctx, ip, be);
        if chosen.cacheable && v.forwarded() {
            flow_cache::fill(
                slot,
                flow,
                CACHE_DSR,
                chosen.index,
                be,
                svc.id,
                (0, 0),
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
fn nat_reply(
    ctx: &XdpContext,
    ip: &Ip,
    flow: &FlowKey,
    slot: u32,
    tcp_flags: u8,
    back: &NatBackend,
) -> Verdict {
    let (vip, vport, service, backend) = (back.vip, back.vport, back.service, back.backend);
    // Routed first: a reply addressed to this host passes whatever its TTL.
    let hop = match route::next_hop(ctx, ip, vip, ip.dst, Way::ToClient) {
        Ok(hop) => hop,
        Err(v) => return v,
    };
    if ip.ttl <= 1 {
        return Verdict::drop(Counter::DropTtl);
    }
    if nat::rewrite_tcp_udp(ctx, ip, End::Src, vip, vport).is_none() {
        return Verdict::drop(Counter::DropInternal);
    }
    if hop.resolved
        && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && let Some(be) = BACKENDS.get(backend)
    {
        flow_cache::fill(
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
