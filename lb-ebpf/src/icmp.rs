//! ICMP for VIPs.
//!
//! - Echo request to a VIP address: answered by the balancer itself (XDP_TX), so
//!   `ping VIP` works in both modes whether or not backends answer pings.
//! - Errors (destination unreachable — including "fragmentation needed" —, time
//!   exceeded, parameter problem) addressed to a VIP quote a packet a backend sent as
//!   VIP:port -> client. They go to the backend that owns that flow (connection table,
//!   else the Maglev table), so path MTU discovery works through the balancer. DSR
//!   forwards the frame as it is; NAT rewrites the outer destination and the quoted
//!   source back to the backend's address and port. An error whose quoted source is not
//!   the address it was sent to is not genuine and is passed.
//! - NAT: errors a backend sends about a client's packet (e.g. UDP port unreachable)
//!   are translated back to come from the VIP, like any other reply. An error from a
//!   NAT backend's address whose quote cannot be matched (cut short, extension headers,
//!   neither TCP nor UDP) is dropped (`drop_icmp_header`), as malformed packets from
//!   NAT backends are: it must not leave with the backend's address.
//! - Other ICMP to a VIP address: passed (`pass_vip_other`); to anything else: passed.
//!
//! The error handling ([`error`]) serves ICMPv6 too (`icmp6` calls it for its error
//! types), generic over the family.
use aya_ebpf::programs::XdpContext;
use lb_common::{AddrWords as _, Counter, NatBackendOf, SERVICE_F_NAT};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    conntrack, csum, dsr,
    family::{Family, V4},
    maps::Addr,
    nat::End,
    parse::{self, IPPROTO_TCP, IPPROTO_UDP, Ip, Ip4, Quoted, frame_len, ptr_at},
    route::{self, Way},
    stats::{self, Dir},
    verdict::Verdict,
};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACH: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAM_PROBLEM: u8 = 12;
const REPLY_TTL: u8 = 64;

#[inline(always)]
pub fn handle(ctx: &XdpContext, ip: &Ip4) -> Verdict {
    let Some(kind) = parse::icmp_type(ctx, ip) else {
        return Verdict::malformed(&ip.src, &ip.dst, Counter::DropIcmpHeader);
    };
    match kind {
        ECHO_REQUEST => echo(ctx, ip),
        DEST_UNREACH | TIME_EXCEEDED | PARAM_PROBLEM => error::<V4>(ctx, ip),
        _ if ip.dst.is_vip() => Verdict::pass(Counter::PassVipOther),
        _ => Verdict::pass(Counter::PassNotVip),
    }
}

/// Answers an echo request to a VIP: swap the MACs and the addresses, reset the TTL,
/// turn the type into echo reply, and send it back where it came from.
#[inline(always)]
fn echo(ctx: &XdpContext, ip: &Ip4) -> Verdict {
    if !ip.dst.is_vip() {
        return Verdict::pass(Counter::PassNotVip);
    }
    let (Some(eth), Some(iph), Some(icmph)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, ip.l3),
        ptr_at::<[u8; 4]>(ctx, ip.l4),
    ) else {
        return Verdict::drop(Counter::DropInternal);
    };
    // SAFETY: all three bounds checked by ptr_at.
    unsafe {
        core::mem::swap(&mut (*eth).dst_addr, &mut (*eth).src_addr);
        // Swapping two words of the header leaves its checksum as it is.
        core::mem::swap(&mut (*iph).dst_addr, &mut (*iph).src_addr);
        let old = u16::from_ne_bytes([(*iph).ttl, (*iph).proto]);
        (*iph).ttl = REPLY_TTL;
        let new = u16::from_ne_bytes([(*iph).ttl, (*iph).proto]);
        csum::set(
            &mut (*iph).check,
            csum::replace16(csum::get(&(*iph).check), old, new),
        );
        let h = &mut *icmph;
        let old = u16::from_ne_bytes([h[0], h[1]]);
        h[0] = ECHO_REPLY;
        let new = u16::from_ne_bytes([h[0], h[1]]);
        let c = csum::replace16(u16::from_ne_bytes([h[2], h[3]]), old, new);
        [h[2], h[3]] = c.to_ne_bytes();
    }
    stats::count(Counter::IcmpEchoReply);
    Verdict::tx()
}

/// An ICMP (ICMPv6) error: to the backend of the VIP flow it quotes, or (NAT) back to
/// the client whose packet a backend's error quotes; anything else passes.
#[inline(always)]
pub fn error<F: Family>(ctx: &XdpContext, ip: &Ip<F::A>) -> Verdict {
    let to_vip = ip.dst.is_vip();
    // An error from a NAT backend's address that cannot be matched to a flow (quote
    // cut short, extension headers in it, neither TCP nor UDP) may be about a client's
    // packet: it is dropped, never passed on with the backend's address in it.
    let Some(q) = F::quoted(ctx, ip) else {
        return Verdict::malformed(&ip.src, &ip.dst, Counter::DropIcmpHeader);
    };
    if q.proto != IPPROTO_TCP && q.proto != IPPROTO_UDP {
        return if to_vip {
            Verdict::pass(Counter::PassVipOther)
        } else if ip.src.is_nat_source() {
            Verdict::drop(Counter::DropIcmpHeader)
        } else {
            Verdict::pass(Counter::PassNotVip)
        };
    }
    // A genuine error goes to the sender of the packet it quotes: to the VIP that sent
    // it, or (from a NAT backend) to the client that sent it to that backend. Anything
    // else is left to the kernel, never forwarded into somebody else's flow.
    if to_vip {
        if !q.src.same(&ip.dst) {
            return Verdict::pass(Counter::PassVipOther);
        }
        return error_to_backend::<F>(ctx, ip, &q);
    }
    if q.dst.same(&ip.src)
        && q.src.same(&ip.dst)
        && let Some(back) = q.dst.nat_backend(q.dport, q.proto)
    {
        return error_to_client::<F>(ctx, ip, &q, &back);
    }
    Verdict::pass(Counter::PassNotVip)
}

/// An error about a packet a backend sent as VIP:port -> client.
#[inline(always)]
fn error_to_backend<F: Family>(ctx: &XdpContext, ip: &Ip<F::A>, q: &Quoted<F::A>) -> Verdict {
    let Some(svc) = q.src.service(q.sport, q.proto) else {
        return Verdict::pass(Counter::PassVipOther);
    };
    if ip.ttl <= 1 {
        return Verdict::drop(Counter::DropTtl);
    }
    // The flow, as the client sent it.
    let chosen = F::with_key(
        &q.dst,
        &q.src,
        q.dport,
        q.sport,
        q.proto,
        #[inline(always)]
        |flow| conntrack::peek::<F>(flow, &svc, F::hash(&svc, flow)),
    );
    let (index, be) = match chosen {
        Some(Ok(chosen)) => chosen,
        Some(Err(c)) => return Verdict::drop(c),
        None => return Verdict::drop(Counter::DropInternal),
    };
    let v = if svc.flags & SERVICE_F_NAT != 0 {
        let Some(addr) = F::backend_addr(index, be) else {
            return Verdict::drop(Counter::DropInternal);
        };
        translate::<F>(ctx, ip, &ip.src, &addr, End::Dst, q, &addr, be.port)
    } else {
        dsr::forward(ctx, ip, be)
    };
    if v.forwarded() || v.counter == Counter::PassNoNeigh {
        stats::count(Counter::IcmpErrorToBackend);
        stats::traffic(svc.id, index, frame_len(ctx) as u64, Dir::In, false);
    }
    v
}

/// NAT: an error a backend sent about a client's packet (quoted client -> backend).
#[inline(always)]
fn error_to_client<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F::A>,
    q: &Quoted<F::A>,
    back: &NatBackendOf<F::A>,
) -> Verdict {
    if ip.ttl <= 1 {
        return Verdict::drop(Counter::DropTtl);
    }
    let (vip, vport, service, backend) = (back.vip, back.vport, back.service, back.backend);
    let v = translate::<F>(ctx, ip, &vip, &ip.dst, End::Src, q, &vip, vport);
    if v.forwarded() || v.counter == Counter::PassNoNeigh {
        stats::count(Counter::IcmpErrorToClient);
        stats::traffic(service, backend, frame_len(ctx) as u64, Dir::Out, false);
    }
    v
}

/// Routes a translated ICMP error from `src` to `dst` and rewrites it (see
/// [`Family::rewrite_icmp_error`]).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "kept flat so BPF inlines it without a struct copy"
)]
fn translate<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F::A>,
    src: &F::A,
    dst: &F::A,
    outer: End,
    q: &Quoted<F::A>,
    addr: &F::A,
    port: u16,
) -> Verdict {
    let way = match outer {
        End::Dst => Way::ToBackend,
        End::Src => Way::ToClient,
    };
    let hop = match route::next_hop(ctx, ip, src, dst, way) {
        Ok(hop) => hop,
        Err(v) => return v,
    };
    if F::rewrite_icmp_error(ctx, ip, outer, q, addr, port).is_none() {
        return Verdict::drop(Counter::DropInternal);
    }
    route::send(ctx, hop)
}
