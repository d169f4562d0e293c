//! Routing a translated (NAT) packet: its next hop from the kernel's FIB
//! (`bpf_fib_lookup`), and sending it there.
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use lb_common::Counter;

use crate::{
    egress::{set_macs, transmit},
    parse::Ip,
    stats,
    verdict::Verdict,
};

const AF_INET: u8 = 2;

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

/// Which way a translated packet goes, for what a local destination means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Client -> backend: a backend on this host is a misconfiguration (dropped,
    /// `drop_no_route`).
    ToBackend,
    /// Backend -> client: a packet from a NAT backend addressed to this host is not a
    /// balanced connection's reply (a health check's, say): passed untranslated
    /// (`pass_nat_local`), whatever else is wrong with it (a VLAN tag); so is one
    /// arriving where forwarding is off (the kernel then delivers it only when it is for
    /// this host, and forwards nothing).
    ToClient,
}

/// The next hop from `src` to `dst` (the addresses the packet will carry), as the
/// kernel's FIB sees it from the ingress interface. `Err` means the verdict to give the
/// packet untouched. An unresolved hop means: rewrite the packet and hand it to the
/// kernel, which resolves the neighbour and forwards it.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, ip: &Ip, src: u32, dst: u32, way: Way) -> Result<Hop, Verdict> {
    if ip.vlan && way == Way::ToBackend {
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
    if way == Way::ToClient {
        if rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_FWD_DISABLED {
            return Err(Verdict::pass(Counter::PassNatLocal));
        }
        if ip.vlan {
            return Err(Verdict::drop(Counter::DropVlanUnsupported));
        }
    }
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Hop {
            resolved: rc == BPF_FIB_LKUP_RET_SUCCESS,
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            if let Some(n) = stats::rare(Counter::DropMtu) {
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
            if let Some(n) = stats::rare(Counter::DropNoRoute) {
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
    transmit(ctx, false, hop.ifindex)
}
