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
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    Counter, FlowKey, SERVICE_F_HASH_SRC, SERVICE_F_NAT, ServiceKey,
    hash::{flow_hash, ports_word, source_hash},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    forward::{self, End},
    icmp,
    maps::{NAT_REVERSE, NAT_SOURCES, SERVICES, VIPS},
    packet::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ip, Ports,
        frame_len, ne16, ne32, ptr_at,
    },
    select,
    stats::{self, Dir},
};

/// What happens to a packet, and the outcome counter it bumps.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub counter: Counter,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(counter: Counter) -> Self {
        Verdict {
            action: xdp_action::XDP_PASS,
            counter,
        }
    }
    #[inline(always)]
    pub const fn drop(counter: Counter) -> Self {
        Verdict {
            action: xdp_action::XDP_DROP,
            counter,
        }
    }
    #[inline(always)]
    pub const fn tx() -> Self {
        Verdict {
            action: xdp_action::XDP_TX,
            counter: Counter::Tx,
        }
    }
    #[inline(always)]
    pub const fn redirect() -> Self {
        Verdict {
            action: xdp_action::XDP_REDIRECT,
            counter: Counter::Redirect,
        }
    }
    #[inline(always)]
    pub const fn forwarded(self) -> bool {
        self.action == xdp_action::XDP_TX || self.action == xdp_action::XDP_REDIRECT
    }
}

/// Entry point of the XDP program.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let v = handle(ctx);
    stats::count(v.counter);
    v.action
}

#[inline(always)]
pub fn is_vip(addr: u32) -> bool {
    VIPS.get_ptr(addr).is_some()
}

/// A packet with a broken header: dropped when it is addressed to a VIP, otherwise left
/// to the kernel.
#[inline(always)]
pub fn malformed(dst: u32, c: Counter) -> Verdict {
    if is_vip(dst) {
        Verdict::drop(c)
    } else {
        Verdict::pass(Counter::PassNotVip)
    }
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
        return malformed(dst, Counter::DropIpVersion);
    }
    let ihl = ((h.vihl & 0x0f) as usize) << 2;
    let len = frame_len(ctx);
    if ihl < Ipv4Hdr::LEN || l3 + ihl > len {
        return malformed(dst, Counter::DropIpHeaderLen);
    }
    let tot_len = u16::from_be_bytes(h.tot_len) as usize;
    if tot_len < ihl || l3 + tot_len > len {
        return malformed(dst, Counter::DropIpTotalLen);
    }
    // MF set or a non-zero offset: a fragment.
    if u16::from_be_bytes(h.frags) & 0x3fff != 0 {
        return malformed(dst, Counter::DropFragment);
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
        return malformed(ip.dst, Counter::DropL4Header);
    };
    let key = ServiceKey {
        vip: ip.dst,
        port: ports.dport,
        proto: ip.proto,
        _pad: 0,
    };
    // SAFETY: the control plane never deletes a service while it could be in use
    // without first removing it from this map; values are plain data.
    if let Some(svc) = unsafe { SERVICES.get(&key) } {
        if ip.ttl <= 1 {
            return Verdict::drop(Counter::DropTtl);
        }
        let flow = FlowKey {
            src: ip.src,
            dst: ip.dst,
            sport: ports.sport,
            dport: ports.dport,
            proto: ip.proto,
            _pad: [0; 3],
        };
        let hash = if svc.flags & SERVICE_F_HASH_SRC != 0 {
            source_hash(ip.src)
        } else {
            flow_hash(
                ip.src,
                ip.dst,
                ports_word(ports.sport, ports.dport),
                ip.proto,
            )
        };
        let chosen = match select::for_packet(&flow, svc, hash, tcp_flags) {
            Ok(c) => c,
            Err(c) => return Verdict::drop(c),
        };
        let be = chosen.backend;
        let v = if svc.flags & SERVICE_F_NAT != 0 {
            if chosen.new_flow {
                let reverse = FlowKey {
                    src: be.addr,
                    dst: ip.src,
                    sport: be.port,
                    dport: ports.sport,
                    proto: ip.proto,
                    _pad: [0; 3],
                };
                let back = lb_common::NatReverse {
                    vip: ip.dst,
                    vport: ports.dport,
                    _pad: 0,
                    backend: chosen.index,
                    service: svc.id,
                };
                if NAT_REVERSE.insert(&reverse, &back, 0).is_err() {
                    stats::count(Counter::FlowInsertFailed);
                }
            }
            forward::nat(ctx, ip, End::Dst, be.addr, be.port)
        } else {
            forward::dsr(ctx, ip, be)
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
        return v;
    }
    // A reply from a NAT backend?
    if NAT_SOURCES.get_ptr(ip.src).is_some() {
        let reverse = FlowKey {
            src: ip.src,
            dst: ip.dst,
            sport: ports.sport,
            dport: ports.dport,
            proto: ip.proto,
            _pad: [0; 3],
        };
        // SAFETY: plain data; a concurrent eviction at worst gives stale values for
        // this one packet.
        if let Some(back) = unsafe { NAT_REVERSE.get(&reverse) } {
            if ip.ttl <= 1 {
                return Verdict::drop(Counter::DropTtl);
            }
            let (service, backend) = (back.service, back.backend);
            let v = forward::nat(ctx, ip, End::Src, back.vip, back.vport);
            if v.forwarded() || v.counter == Counter::PassNoNeigh {
                stats::count(Counter::NatReply);
                stats::traffic(service, backend, frame_len(ctx) as u64, Dir::Out, false);
            }
            return v;
        }
    }
    if is_vip(ip.dst) {
        Verdict::pass(Counter::PassVipOther)
    } else {
        Verdict::pass(Counter::PassNotVip)
    }
}
