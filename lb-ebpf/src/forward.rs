//! Sending a packet on: DSR (MAC rewrite) and NAT (address/port rewrite plus a FIB
//! lookup for the next hop), and the choice between XDP_TX and XDP_REDIRECT.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{Backend, Counter};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    csum,
    datapath::Verdict,
    packet::{IPPROTO_TCP, IPPROTO_UDP, Ip, ne16, ne32, ptr_at},
};

const AF_INET: u8 = 2;

/// Sends the (already rewritten) frame out of `ifindex`: XDP_TX when that is the
/// interface it came in on, XDP_REDIRECT otherwise. A VLAN-tagged frame only goes back
/// out where it came from: its tag means nothing on another interface.
#[inline(always)]
pub fn out(ctx: &XdpContext, vlan: bool, ifindex: u32) -> Verdict {
    if ifindex == ctx.ingress_ifindex() as u32 {
        return Verdict::tx();
    }
    if vlan {
        return Verdict::drop(Counter::DropVlanUnsupported);
    }
    // SAFETY: plain helper call; it only records the target for the driver.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        Verdict::redirect()
    } else {
        Verdict::drop(Counter::DropInternal)
    }
}

#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Option<()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst_addr = dst;
        (*eth).src_addr = src;
    }
    Some(())
}

/// DSR: new destination MAC (the backend's), new source MAC (the egress interface's);
/// the IP packet is not touched.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, ip: &Ip, be: &Backend) -> Verdict {
    if be.mac == [0; 6] {
        return Verdict::drop(Counter::DropNoMac);
    }
    if ip.vlan && be.ifindex != ctx.ingress_ifindex() as u32 {
        return Verdict::drop(Counter::DropVlanUnsupported);
    }
    if set_macs(ctx, be.mac, be.src_mac).is_none() {
        return Verdict::drop(Counter::DropInternal);
    }
    out(ctx, ip.vlan, be.ifindex)
}

/// Which end of the packet a NAT rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// The next hop towards `dst`, as the kernel's FIB sees it from the ingress interface.
/// On success returns (egress ifindex, source MAC, destination MAC).
#[inline(always)]
fn fib(ctx: &XdpContext, ip: &Ip, src: u32, dst: u32) -> Result<(u32, [u8; 6], [u8; 6]), u32> {
    // SAFETY: the struct is plain data; all-zero is its documented initial state.
    let mut p: FibParams = unsafe { zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.__bindgen_anon_1.tot_len = ip.tot_len as u16;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = src;
    p.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: `p` is a valid, writable bpf_fib_lookup of the size we pass.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &raw mut p, size_of::<FibParams>() as i32, 0) }
        as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        Ok((p.ifindex, p.smac, p.dmac))
    } else {
        Err(rc)
    }
}

/// NAT: rewrites one end of the packet to `addr:port`, routes it with the kernel's FIB
/// and sends it on.
#[inline(always)]
pub fn nat(ctx: &XdpContext, ip: &Ip, end: End, addr: u32, port: u16) -> Verdict {
    let (src, dst) = match end {
        End::Src => (addr, ip.dst),
        End::Dst => (ip.src, addr),
    };
    route(ctx, ip, src, dst, || rewrite(ctx, ip, end, addr, port))
}

/// Looks up the next hop from `src` to `dst` (the addresses the packet will carry),
/// then applies `rewrite` and sends the packet on. Nothing is rewritten when the
/// packet is dropped. When only the neighbour's MAC is unknown, the rewritten packet
/// goes to the kernel, which resolves it and forwards the packet itself.
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    ip: &Ip,
    src: u32,
    dst: u32,
    rewrite: impl FnOnce() -> Option<()>,
) -> Verdict {
    if ip.vlan {
        return Verdict::drop(Counter::DropVlanUnsupported);
    }
    let hop = match fib(ctx, ip, src, dst) {
        Ok(hop) => Some(hop),
        Err(BPF_FIB_LKUP_RET_NO_NEIGH) => None,
        Err(BPF_FIB_LKUP_RET_FRAG_NEEDED) => return Verdict::drop(Counter::DropMtu),
        Err(_) => return Verdict::drop(Counter::DropNoRoute),
    };
    if rewrite().is_none() {
        return Verdict::drop(Counter::DropInternal);
    }
    match hop {
        Some((ifindex, smac, dmac)) => {
            if set_macs(ctx, dmac, smac).is_none() {
                return Verdict::drop(Counter::DropInternal);
            }
            out(ctx, false, ifindex)
        }
        None => Verdict::pass(Counter::PassNoNeigh),
    }
}

/// Decrements the TTL of the IPv4 header at `l3` and updates its checksum.
#[inline(always)]
pub fn decrement_ttl(iph: *mut Ipv4Hdr) {
    // SAFETY: the caller got `iph` from ptr_at.
    unsafe {
        // TTL shares a 16-bit word with the protocol.
        let old = u16::from_ne_bytes([(*iph).ttl, (*iph).proto]);
        (*iph).ttl -= 1;
        let new = u16::from_ne_bytes([(*iph).ttl, (*iph).proto]);
        csum::set(
            &mut (*iph).check,
            csum::replace16(csum::get(&(*iph).check), old, new),
        );
    }
}

/// Rewrites the address and port of one end, decrements the TTL, and updates the IPv4
/// and TCP/UDP checksums incrementally. The caller validated both headers.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, ip: &Ip, end: End, addr: u32, port: u16) -> Option<()> {
    let iph: *mut Ipv4Hdr = ptr_at(ctx, ip.l3)?;
    // SAFETY: bounds checked by ptr_at; the L4 header was validated by the caller and
    // is re-checked by ptr_at below.
    unsafe {
        let field = match end {
            End::Src => &mut (*iph).src_addr,
            End::Dst => &mut (*iph).dst_addr,
        };
        let old_addr = ne32(field);
        *field = addr.to_ne_bytes();
        csum::set(
            &mut (*iph).check,
            csum::replace32(csum::get(&(*iph).check), old_addr, addr),
        );
        decrement_ttl(iph);

        // Ports: source at +0, destination at +2, in both TCP and UDP.
        let port_off = ip.l4 + if end == End::Src { 0 } else { 2 };
        let port_field: *mut [u8; 2] = ptr_at(ctx, port_off)?;
        let old_port = ne16(&*port_field);
        *port_field = port.to_ne_bytes();
        // The TCP/UDP checksum covers the pseudo-header (addresses) and the ports.
        if ip.proto == IPPROTO_TCP {
            let check: *mut [u8; 2] = ptr_at(ctx, ip.l4 + 16)?;
            let mut c = csum::replace32(csum::get(&*check), old_addr, addr);
            c = csum::replace16(c, old_port, port);
            csum::set(&mut *check, c);
        } else if ip.proto == IPPROTO_UDP {
            let check: *mut [u8; 2] = ptr_at(ctx, ip.l4 + 6)?;
            let old = csum::get(&*check);
            if old != 0 {
                let mut c = csum::replace32(old, old_addr, addr);
                c = csum::replace16(c, old_port, port);
                csum::set(&mut *check, csum::udp_fixup(c));
            }
        }
    }
    Some(())
}
