//! Sending a packet on: DSR (MAC rewrite) and NAT (address/port rewrite plus a FIB
//! lookup for the next hop), and the choice between XDP_TX and XDP_REDIRECT.
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use lb_common::{Backend, Counter};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    csum,
    parse::{IPPROTO_TCP, IPPROTO_UDP, Ip, ne16, ne32, ptr_at},
    verdict::Verdict,
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

/// Where a routed packet goes next: egress interface and the MACs to write, or (not
/// `resolved`) the kernel, when the neighbour's MAC is unknown.
///
/// Verifier note: always fully initialised (no `Option`): LLVM leaves the payload of a
/// `None` undefined and may still store it, which the verifier rejects.
#[derive(Clone, Copy)]
pub struct Hop {
    pub resolved: bool,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

impl Hop {
    /// No next hop (DSR entries of the flow cache do not use one).
    pub const NONE: Hop = Hop {
        resolved: false,
        ifindex: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };
}

/// The next hop from `src` to `dst` (the addresses the packet will carry), as the
/// kernel's FIB sees it from the ingress interface. `Err` means drop, and nothing
/// should be rewritten. An unresolved hop means: rewrite the packet and hand it to the
/// kernel, which resolves the neighbour and forwards it.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, ip: &Ip, src: u32, dst: u32) -> Result<Hop, Verdict> {
    if ip.vlan {
        return Err(Verdict::drop(Counter::DropVlanUnsupported));
    }
    // All-zero is the documented initial state, and the verifier wants the whole struct
    // initialised. Zeroed with volatile u64 stores: `zeroed()` (or any zero idiom LLVM
    // recognises) becomes a call to a byte-loop memset in BPF.
    let mut p = core::mem::MaybeUninit::<FibParams>::uninit();
    let words = p.as_mut_ptr().cast::<u64>();
    for i in 0..size_of::<FibParams>() / 8 {
        // SAFETY: writes stay inside the 64-byte struct.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte was just written; the struct is plain data. A reference, not
    // `assume_init()`: moving the known-zero struct becomes a memset again.
    let p = unsafe { &mut *p.as_mut_ptr() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.__bindgen_anon_1.tot_len = ip.tot_len as u16;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = src;
    p.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: `p` is a valid, writable bpf_fib_lookup of the size we pass.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &raw mut *p, size_of::<FibParams>() as i32, 0) }
        as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Hop {
            resolved: rc == BPF_FIB_LKUP_RET_SUCCESS,
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            if let Some(n) = crate::stats::rare(Counter::DropMtu) {
                warn!(
                    ctx,
                    "NAT: a packet to {:i} is larger than the egress MTU: dropped ({} so far on this CPU)",
                    u32::from_be(dst),
                    n
                );
            }
            Err(Verdict::drop(Counter::DropMtu))
        }
        _ => {
            if let Some(n) = crate::stats::rare(Counter::DropNoRoute) {
                warn!(
                    ctx,
                    "NAT: no route to {:i} (FIB lookup result {}; is IP forwarding on?): dropped ({} so far on this CPU)",
                    u32::from_be(dst),
                    rc,
                    n
                );
            }
            Err(Verdict::drop(Counter::DropNoRoute))
        }
    }
}

/// Sends a rewritten packet to `hop` (or to the kernel when the hop is unresolved).
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: Hop) -> Verdict {
    if !hop.resolved {
        return Verdict::pass(Counter::PassNoNeigh);
    }
    if set_macs(ctx, hop.dmac, hop.smac).is_none() {
        return Verdict::drop(Counter::DropInternal);
    }
    out(ctx, false, hop.ifindex)
}

/// Decrements the TTL of the IPv4 header at `iph` and updates its checksum.
///
/// # Safety
/// `iph` must point at a whole IPv4 header inside the packet (from `ptr_at`).
#[inline(always)]
pub unsafe fn decrement_ttl(iph: *mut Ipv4Hdr) {
    // SAFETY: the caller's contract.
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
