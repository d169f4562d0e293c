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
    CACHE_DSR, CACHE_NAT_FORWARD, CACHE_NAT_REPLY, Counter, FlowKey, NatReverse,
    SERVICE_F_HASH_SRC, SERVICE_F_NAT, Service, ServiceKey,
    hash::{flow_hash, ports_word, source_hash},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    cache,
    forward::{self, End, Hop},
    icmp,
    maps::{BACKENDS, NAT_FILTER, NAT_REVERSE, VIP_FILTER, VIPS, in_filter, is_vip, service},
    packet::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ip, Ports,
        frame_len, ne16, ne32, ptr_at,
    },
    select,
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
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::pass(Counter::PassNotIpv4);
    };
    // SAFETY: bounds checked by ptr_at.
    let mut ethertype = unsafe { (*eth).ether_type };
    let mut l3 = EthHdr::LEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q.to_be() || ethertype == ETH_P_8021AD.to_be() {
        // The tag's own ethertype sits 2 bytes past the end of the Ethernet header.
        let Some(inner) = ptr_at::<[u8; 2]>(ctx, EthHdr::LEN + 2) else {
            return Verdict::pass(Counter::PassNotIpv4);
        };
        // SAFETY: bounds checked by ptr_at.
        ethertype = ne16(unsafe { &*inner });
        if ethertype == ETH_P_8021Q.to_be() || ethertype == ETH_P_8021AD.to_be() {
            return Verdict::pass(Counter::PassVlanNested);
        }
        l3 += 4;
        vlan = true;
    }
    if ethertype != ETH_P_IP.to_be() {
        return Verdict::pass(Counter::PassNotIpv4);
    }
    let Some(iph) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        // Not even a whole minimal header: we cannot tell whom it is for.
        return Verdict::pass(Counter::PassNotVip);
    };
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*iph };
    let dst = ne32(&h.dst_addr);
    if h.vihl >> 4 != 4 {
        return Verdict::malformed(dst, Counter::DropIpVersion);
    }
    let ihl = ((h.vihl & 0x0f) as usize) << 2;
    let len = frame_len(ctx);
    if ihl < Ipv4Hdr::LEN || l3 + ihl > len {
        return Verdict::malformed(dst, Counter::DropIpHeaderLen);
    }
    let tot_len = u16::from_be_bytes(h.tot_len) as usize;
    if tot_len < ihl || l3 + tot_len > len {
        return Verdict::malformed(dst, Counter::DropIpTotalLen);
    }
    // MF set or a non-zero offset: a fragment.
    if u16::from_be_bytes(h.frags) & 0x3fff != 0 {
        return Verdict::malformed(dst, Counter::DropFragment);
    }
    let ip = Ip {
        l3,
        l4: l3 + ihl,
        tot_len,
        src: ne32(&h.src_addr),
        dst,
        proto: h.proto,
        ttl: h.ttl,
        tos: h.tos,
        vlan,
    };
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => l4(ctx, &ip),
        IPPROTO_ICMP => icmp::handle(ctx, &ip),
        _ if is_vip(dst) => Verdict::pass(Counter::PassVipOther),
        _ => Verdict::pass(Counter::PassNotVip),
    }
}

/// Validates the TCP/UDP header of `ip` and returns its ports and TCP flags (0 for UDP).
#[inline(always)]
pub fn l4_header(ctx: &XdpContext, ip: &Ip) -> Option<(Ports, u8)> {
    let l4_len = ip.tot_len - (ip.l4 - ip.l3);
    if ip.proto == IPPROTO_TCP {
        // Ports, sequence numbers, data offset and flags: the first 14 bytes of 20.
        let tcp: *const [u8; 20] = ptr_at(ctx, ip.l4)?;
        // SAFETY: bounds checked by ptr_at.
        let t = unsafe { &*tcp };
        let doff = ((t[12] >> 4) as usize) << 2;
        if doff < 20 || doff > l4_len {
            return None;
        }
        let ports = Ports {
            sport: u16::from_ne_bytes([t[0], t[1]]),
            dport: u16::from_ne_bytes([t[2], t[3]]),
        };
        Some((ports, t[13]))
    } else {
        let udp: *const [u8; 8] = ptr_at(ctx, ip.l4)?;
        // SAFETY: bounds checked by ptr_at.
        let u = unsafe { &*udp };
        let ulen = u16::from_be_bytes([u[4], u[5]]) as usize;
        if ulen < 8 || ulen > l4_len {
            return None;
        }
        let ports = Ports {
            sport: u16::from_ne_bytes([u[0], u[1]]),
            dport: u16::from_ne_bytes([u[2], u[3]]),
        };
        Some((ports, 0))
    }
}

#[inline(always)]
fn l4(ctx: &XdpContext, ip: &Ip) -> Verdict {
    let Some((ports, tcp_flags)) = l4_header(ctx, ip) else {
        return Verdict::malformed(ip.dst, Counter::DropL4Header);
    };
    let flow = FlowKey::new(ip.src, ip.dst, ports.sport, ports.dport, ip.proto);
    let slot = cache::slot(&flow);
    if let Some(v) = cache::forward(ctx, ip, &flow, slot, tcp_flags) {
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
    if in_filter(&NAT_FILTER, ip.src) {
        // SAFETY: plain data; a concurrent eviction at worst gives stale values for
        // this one packet.
        if let Some(back) = unsafe { NAT_REVERSE.get(flow) } {
            return nat_reply(ctx, ip, &flow, slot, back);
        }
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
    let hash = if svc.flags & SERVICE_F_HASH_SRC != 0 {
        source_hash(ip.src)
    } else {
        flow_hash(ip.src, ip.dst, ports_word(flow.sport, flow.dport), ip.proto)
    };
    let chosen = match select::for_packet(ctx, flow, svc, hash, tcp_flags) {
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
        cache::forget(slot);
    }
    let v = if svc.flags & SERVICE_F_NAT != 0 {
        if chosen.new_flow {
            let reverse = FlowKey::new(be.addr, ip.src, be.port, flow.sport, ip.proto);
            let back = NatReverse {
                vip: ip.dst,
                vport: flow.dport,
                _pad: 0,
                backend: chosen.index,
                service: svc.id,
            };
            if NAT_REVERSE.insert(reverse, back, 0).is_err() {
                stats::count(Counter::FlowInsertFailed);
            }
        }
        let hop = match forward::next_hop(ctx, ip, ip.src, be.addr) {
            Ok(hop) => hop,
            Err(v) => return v,
        };
        if forward::rewrite(ctx, ip, End::Dst, be.addr, be.port).is_none() {
            return Verdict::drop(Counter::DropInternal);
        }
        if chosen.cacheable && hop.resolved {
            cache::fill(
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
        forward::send(ctx, hop)
    } else {
        let v = forward::dsr(ctx, ip, be);
        if chosen.cacheable && v.forwarded() {
            cache::fill(
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

/// A NAT backend's reply: translate the source back to VIP:port, cache the decision.
#[inline(always)]
fn nat_reply(ctx: &XdpContext, ip: &Ip, flow: &FlowKey, slot: u32, back: &NatReverse) -> Verdict {
    if ip.ttl <= 1 {
        return Verdict::drop(Counter::DropTtl);
    }
    let (vip, vport, service, backend) = (back.vip, back.vport, back.service, back.backend);
    let hop = match forward::next_hop(ctx, ip, vip, ip.dst) {
        Ok(hop) => hop,
        Err(v) => return v,
    };
    if forward::rewrite(ctx, ip, End::Src, vip, vport).is_none() {
        return Verdict::drop(Counter::DropInternal);
    }
    if hop.resolved
        && let Some(be) = BACKENDS.get(backend)
    {
        cache::fill(
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
    forward::send(ctx, hop)
}
