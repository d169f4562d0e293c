//! What happens to a packet: an XDP action and the one outcome counter it bumps.
use aya_ebpf::bindings::xdp_action;
use lb_common::Counter;

use crate::maps::Addr;

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
    /// A packet with a broken header (or a fragment): dropped when it is addressed to a
    /// VIP, or comes from a NAT backend (it may be a reply, which must not leave
    /// untranslated); otherwise left to the kernel.
    #[inline(always)]
    pub fn malformed<A: Addr>(src: &A, dst: &A, c: Counter) -> Self {
        if dst.is_vip() || src.is_nat_source() {
            Verdict::drop(c)
        } else {
            Verdict::pass(Counter::PassNotVip)
        }
    }
    #[inline(always)]
    pub const fn forwarded(self) -> bool {
        self.action == xdp_action::XDP_TX || self.action == xdp_action::XDP_REDIRECT
    }
}
