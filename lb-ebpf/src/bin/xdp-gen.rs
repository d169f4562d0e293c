//! `xdp-gen`: the frame generator of `cargo xtask bench pps`, never shipped in `lb` and
//! never attached to an interface. xtask loads it with aya, one copy per frame template,
//! and runs it with BPF_PROG_TEST_RUN and `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18,
//! Documentation/bpf/bpf_prog_run.rst): the kernel runs it over a frame in a loop, and
//! every XDP_TX it returns really transmits the frame out of the interface xtask names.
//!
//! Every run writes the whole Ethernet/IPv4/UDP header (42 bytes) from `HEADER`, because
//! a page can come back from a previous round already rewritten by a balancer
//! downstream, then a random UDP source port from 1024..1280, so the traffic is 256
//! flows (the template's UDP checksum is 0, "none", so the port may vary).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_get_prandom_u32, macros::xdp, programs::XdpContext,
};

/// Bytes of header written: Ethernet (14), IPv4 without options (20), UDP (8).
const HEADER_LEN: usize = 42;
/// Where the UDP source port sits in the frame.
const SOURCE_PORT: usize = 34;

/// The header to write, in 8-byte words: the first five hold bytes 0..40, the first two
/// bytes (in memory) of the sixth hold bytes 40..42, the rest is unused. Set by xtask
/// with aya's `EbpfLoader::override_global` before the program is loaded; it lives in
/// `.rodata`, a map the kernel freezes, so the verifier knows its bytes.
#[unsafe(no_mangle)]
static HEADER: [u64; 6] = [0; 6];

#[xdp]
pub fn generate(ctx: XdpContext) -> u32 {
    // SAFETY: ctx.ctx points at the program's xdp_md for the whole run. Volatile loads
    // keep LLVM from dropping the bounds check the verifier needs (see lb_ebpf::packet).
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    if start + HEADER_LEN > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 42 bytes from `start` are inside the frame (checked above). Live
    // frames start XDP_PACKET_HEADROOM (256) bytes into a page, so the word stores are
    // aligned. `HEADER` is read with volatile loads: it is an immutable static that
    // holds zeros at compile time, and LLVM would fold plain loads into those zeros.
    unsafe {
        let words = start as *mut u64;
        for i in 0..5 {
            words
                .add(i)
                .write(core::ptr::read_volatile(&raw const HEADER[i]));
        }
        let tail = core::ptr::read_volatile((&raw const HEADER[5]).cast::<u16>());
        (start as *mut u16).add(20).write(tail);
        let port = 1024 + (bpf_get_prandom_u32() & 0xff) as u16;
        ((start + SOURCE_PORT) as *mut u16).write(port.to_be());
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
