//! Direct server return: the frame goes to the backend as it is, only its MACs change;
//! the backend answers the client itself.
use aya_ebpf::programs::XdpContext;
use lb_common::{Backend, Counter};

use crate::{
    egress::{set_macs, transmit},
    parse::Ip,
    verdict::Verdict,
};

/// New destination MAC (the backend's), new source MAC (the egress interface's); the IP
/// packet is not touched.
#[inline(always)]
pub fn forward<A>(ctx: &XdpContext, ip: &Ip<A>, be: &Backend) -> Verdict {
    if be.mac == [0; 6] {
        return Verdict::drop(Counter::DropNoMac);
    }
    if ip.vlan && be.ifindex != ctx.ingress_ifindex() as u32 {
        return Verdict::drop(Counter::DropVlanUnsupported);
    }
    if set_macs(ctx, be.mac, be.src_mac).is_none() {
        return Verdict::drop(Counter::DropInternal);
    }
    transmit(ctx, ip.vlan, be.ifindex)
}
