//! ICMPv6 for VIPs: the IPv6 counterpart of `icmp`.
//!
//! - Neighbour discovery (router and neighbour solicitations and advertisements,
//!   redirects: types 133–137) always passes untouched, whatever its address
//!   (`pass_ndp`): the kernel answers for the balancer's own addresses, and DSR
//!   backends hold the VIP without answering for it.
//! - Echo request (128) to a VIP: answered by the balancer (echo reply, XDP_TX), as
//!   IPv4 pings are.
//! - Errors (destination unreachable, packet too big, time exceeded, parameter problem:
//!   types 1–4) about a VIP flow go to the flow's backend (NAT translates them), and
//!   a NAT backend's errors about a client's packet go back to the client, by the same
//!   code as IPv4's (`icmp::error`). A quoted packet with extension headers is not
//!   matched (passed).
//! - Anything else: passed.
use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, ipv6_octets};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    csum,
    family::V6,
    icmp,
    maps::Addr,
    parse::{self, Ip6, addr6, ptr_at},
    stats,
    verdict::Verdict,
};

const DEST_UNREACH: u8 = 1;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const PARAM_PROBLEM: u8 = 4;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;
const REPLY_HOP_LIMIT: u8 = 64;

/// An ICMPv6 packet.
#[inline(always)]
pub fn handle(ctx: &XdpContext, ip: &Ip6) -> Verdict {
    let Some(kind) = parse::icmp_type(ctx, ip) else {
        return Verdict::malformed(&ip.src, &ip.dst, Counter::DropIcmpHeader);
    };
    match kind {
        ND_FIRST..=ND_LAST => Verdict::pass(Counter::PassNdp),
        ECHO_REQUEST => echo(ctx, ip),
        DEST_UNREACH | PACKET_TOO_BIG | TIME_EXCEEDED | PARAM_PROBLEM => error(ctx, ip),
        _ if ip.dst.is_vip() => Verdict::pass(Counter::PassVipOther),
        _ => Verdict::pass(Counter::PassNotVip),
    }
}

/// An ICMPv6 error.
#[inline(always)]
fn error(ctx: &XdpContext, ip: &Ip6) -> Verdict {
    icmp::error::<V6>(ctx, ip)
}

/// Answers an echo request to a VIP: swap the MACs and the addresses, reset the hop
/// limit, turn the type into echo reply, and send it back where it came from. Swapping
/// the addresses leaves the pseudo-header's sum as it was, so only the type changes the
/// checksum.
#[inline(always)]
fn echo(ctx: &XdpContext, ip: &Ip6) -> Verdict {
    if !ip.dst.is_vip() {
        return Verdict::pass(Counter::PassNotVip);
    }
    let (Some(eth), Some(iph), Some(icmph)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, ip.l3),
        ptr_at::<[u8; 4]>(ctx, ip.l4),
    ) else {
        return Verdict::drop(Counter::DropInternal);
    };
    // SAFETY: all three bounds checked by ptr_at.
    unsafe {
        core::mem::swap(&mut (*eth).dst_addr, &mut (*eth).src_addr);
        let src = addr6(&(*iph).src_addr);
        (*iph).src_addr = ipv6_octets(ip.dst);
        (*iph).dst_addr = ipv6_octets(src);
        (*iph).hop_limit = REPLY_HOP_LIMIT;
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
