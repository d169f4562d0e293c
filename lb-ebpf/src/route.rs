//! Routing a translated (NAT) packet: its next hop from the kernel's FIB
//! (`bpf_fib_lookup`, AF_INET or AF_INET6), and sending it there.
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
use lb_common::{Addr6, Counter, ipv6_octets};

use crate::{
    egress::{set_macs, transmit},
    maps::Addr,
    parse::Ip,
    scratch, stats,
    verdict::Verdict,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// An address family's part of a FIB lookup, and of its rare log lines.
pub trait FibAddr: Addr {
    /// Runs `f` with zeroed lookup parameters (IPv4: on the stack; IPv6: in the
    /// per-CPU scratch area, see `scratch`). `None` only if that area is missing.
    fn with_params<R>(f: impl FnOnce(&mut FibParams) -> R) -> Option<R>;
    /// Fills the family-specific fields of the (zeroed) lookup parameters.
    fn fill(p: &mut FibParams, ip: &Ip<Self>, src: &Self, dst: &Self);
    fn warn_mtu(ctx: &XdpContext, dst: &Self, n: u64);
    fn warn_no_route(ctx: &XdpContext, dst: &Self, rc: u32, n: u64);
}

/// Zeroes the lookup parameters at `p`. All-zero is the documented initial state, and
/// the verifier wants the whole struct initialised. Zeroed with volatile u64 stores:
/// `zeroed()` (or any zero idiom LLVM recognises) becomes a call to a byte-loop memset
/// in BPF.
///
/// # Safety
/// `p` must point at a writable `FibParams`.
#[inline(always)]
unsafe fn zero(p: *mut FibParams) {
    let words = p.cast::<u64>();
    for i in 0..size_of::<FibParams>() / 8 {
        // SAFETY: writes stay inside the 64-byte struct.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

impl FibAddr for u32 {
    #[inline(always)]
    fn with_params<R>(f: impl FnOnce(&mut FibParams) -> R) -> Option<R> {
        let mut p = core::mem::MaybeUninit::<FibParams>::uninit();
        // SAFETY: the struct is ours.
        unsafe { zero(p.as_mut_ptr()) };
        // SAFETY: every byte was just written; the struct is plain data. A reference, not
        // `assume_init()`: moving the known-zero struct becomes a memset again.
        Some(f(unsafe { &mut *p.as_mut_ptr() }))
    }
    #[inline(always)]
    fn fill(p: &mut FibParams, ip: &Ip<u32>, src: &u32, dst: &u32) {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = ip.tos as u8;
        p.__bindgen_anon_3.ipv4_src = *src;
        p.__bindgen_anon_4.ipv4_dst = *dst;
    }
    #[inline(always)]
    fn warn_mtu(ctx: &XdpContext, dst: &u32, n: u64) {
        warn!(
            ctx,
            "NAT: a packet to {:i} is larger than the egress MTU: dropped ({} so far on this CPU)",
            u32::from_be(*dst),
            n
        );
    }
    #[inline(always)]
    fn warn_no_route(ctx: &XdpContext, dst: &u32, rc: u32, n: u64) {
        warn!(
            ctx,
            "NAT: no route to {:i} (FIB lookup result {}; is IP forwarding on?): dropped ({} so far on this CPU)",
            u32::from_be(*dst),
            rc,
            n
        );
    }
}

impl FibAddr for Addr6 {
    #[inline(always)]
    fn with_params<R>(f: impl FnOnce(&mut FibParams) -> R) -> Option<R> {
        let p = scratch::fib6()?;
        // SAFETY: a field of this CPU's scratch entry.
        unsafe { zero(p) };
        Some(f(p))
    }
    #[inline(always)]
    fn fill(p: &mut FibParams, ip: &Ip<Addr6>, src: &Addr6, dst: &Addr6) {
        p.family = AF_INET6;
        p.__bindgen_anon_2.flowinfo = ip.tos;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    #[inline(always)]
    fn warn_mtu(ctx: &XdpContext, dst: &Addr6, n: u64) {
        warn!(
            ctx,
            "NAT: a packet to {:i} is larger than the egress MTU: dropped ({} so far on this CPU)",
            ipv6_octets(*dst),
            n
        );
    }
    #[inline(always)]
    fn warn_no_route(ctx: &XdpContext, dst: &Addr6, rc: u32, n: u64) {
        warn!(
            ctx,
            "NAT: no route to {:i} (FIB lookup result {}; is IPv6 forwarding on?): dropped ({} so far on this CPU)",
            ipv6_octets(*dst),
            rc,
            n
        );
    }
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
pub fn next_hop<A: FibAddr>(
    ctx: &XdpContext,
    ip: &Ip<A>,
    src: &A,
    dst: &A,
    way: Way,
) -> Result<Hop, Verdict> {
    if ip.vlan && way == Way::ToBackend {
        return Err(Verdict::drop(Counter::DropVlanUnsupported));
    }
    let looked_up = A::with_params(
        #[inline(always)]
        |p| {
            A::fill(p, ip, src, dst);
            p.l4_protocol = ip.proto;
            p.__bindgen_anon_1.tot_len = ip.tot_len as u16;
            p.ifindex = ctx.ingress_ifindex() as u32;
            // SAFETY: `p` is a valid, writable bpf_fib_lookup of the size we pass.
            let rc = unsafe {
                bpf_fib_lookup(ctx.as_ptr(), &raw mut *p, size_of::<FibParams>() as i32, 0)
            } as u32;
            let hop = Hop {
                resolved: rc == BPF_FIB_LKUP_RET_SUCCESS,
                ifindex: p.ifindex,
                smac: p.smac,
                dmac: p.dmac,
            };
            (rc, hop)
        },
    );
    let Some((rc, hop)) = looked_up else {
        return Err(Verdict::drop(Counter::DropInternal));
    };
    if way == Way::ToClient {
        if rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_FWD_DISABLED {
            return Err(Verdict::pass(Counter::PassNatLocal));
        }
        if ip.vlan {
            return Err(Verdict::drop(Counter::DropVlanUnsupported));
        }
    }
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => Ok(hop),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            if let Some(n) = stats::rare(Counter::DropMtu) {
                A::warn_mtu(ctx, dst, n);
            }
            Err(Verdict::drop(Counter::DropMtu))
        }
        _ => {
            if let Some(n) = stats::rare(Counter::DropNoRoute) {
                A::warn_no_route(ctx, dst, rc, n);
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
