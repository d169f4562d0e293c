//! Per-CPU scratch memory for the IPv6 path.
//!
//! BPF has ten registers and a 512-byte stack. A 128-bit address is four words, and an
//! IPv6 flow carries two of them through helper calls that clobber every scratch
//! register: kept in locals, LLVM spills them all to the stack, and the IPv6 path ran
//! past the stack limit. The largest of them (the flow key, the FIB lookup's parameters)
//! are kept in this per-CPU array (one entry; the verifier inlines its lookup) and
//! loaded where they are used. IPv4 keeps its locals: its words fit the registers.
use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, btf_maps::PerCpuArray, macros::btf_map};
use lb_common::FlowKey6;

/// What the IPv6 path of one packet keeps in memory.
#[repr(C)]
pub struct Scratch6 {
    /// The packet's flow (or the flow an ICMPv6 error quotes, as the client sent it).
    pub key: FlowKey6,
    /// The FIB lookup's parameters.
    pub fib: FibParams,
}

#[btf_map]
static SCRATCH6: PerCpuArray<Scratch6, 1> = PerCpuArray::new();

// Each accessor lends one field of this CPU's entry. XDP runs to completion on its CPU,
// so no other program run uses the entry meanwhile; each field is lent to one user at a
// time (the flow key to one flow's handling, the FIB parameters to one lookup), and the
// fields never overlap.

/// The flow key of the packet (or of the flow an ICMPv6 error quotes).
#[inline(always)]
pub fn key6() -> Option<&'static mut FlowKey6> {
    // SAFETY: see above; a field of this CPU's own entry.
    SCRATCH6.get_ptr_mut(0).map(|p| unsafe { &mut (*p).key })
}

/// The FIB lookup's parameters.
#[inline(always)]
pub fn fib6() -> Option<&'static mut FibParams> {
    // SAFETY: as for `key6`.
    SCRATCH6.get_ptr_mut(0).map(|p| unsafe { &mut (*p).fib })
}
