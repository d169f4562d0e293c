//! The connection tables: `CONNTRACK` pins each client flow to a backend (with its TCP
//! state bits); a flow it does not know takes the backend of the service's Maglev table
//! (see `maglev`) and is inserted. `NAT_REVERSE` maps a NAT backend's replies back to
//! their client flow.
//!
//! Re-pick rule: a flow keeps its backend while that backend's index is live, not
//! flagged `BACKEND_F_REPICK` (admin state maint, or health down) and still holds the
//! epoch the flow was pinned under (the index was not given to another backend). If any
//! of these fails, the flow takes the backend the current Maglev table gives it and its
//! entry is rewritten. A TCP SYN (without ACK) on an entry that saw FIN or RST is a new
//! connection reusing the port, and is placed afresh too. Draining backends and
//! weight-0 backends keep their flows: they only lose their table slots.
use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{
    BACKEND_F_LIVE, BACKEND_F_REPICK, Backend, Counter, FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST,
    FLOW_SYN, FLOW_TOUCH_NS, Flow, FlowKey, NatReverse, Service,
};

use crate::{
    maglev,
    maps::{BACKENDS, CONNTRACK, NAT_REVERSE},
    parse::{IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::{self, count},
};

/// The backend a packet goes to.
pub struct Chosen<'a> {
    pub index: u32,
    pub backend: &'a Backend,
    /// The packet started (or re-placed) a flow.
    pub new_flow: bool,
    /// The flow's state is settled (UDP, or TCP past its handshake and not closing), so
    /// its next packets may use the flow cache.
    pub cacheable: bool,
}

/// Whether a flow in `state` may be served from the flow cache: its next packets
/// would not change its connection-table state.
#[inline(always)]
fn settled(state: u32, tcp: bool) -> bool {
    !tcp || state & (FLOW_ESTABLISHED | FLOW_FIN | FLOW_RST) == FLOW_ESTABLISHED
}

/// A pinned flow may stay on `be` only if this holds (see the module docs).
#[inline(always)]
pub fn keeps(be: &Backend, epoch: u32) -> bool {
    be.flags & (BACKEND_F_LIVE | BACKEND_F_REPICK) == BACKEND_F_LIVE && be.epoch == epoch
}

/// `FLOW_*` bits a client's packet contributes.
#[inline(always)]
fn state_bits(tcp_flags: u8) -> u32 {
    let mut bits = 0;
    if tcp_flags & TCP_SYN != 0 {
        bits |= FLOW_SYN;
    } else if tcp_flags & TCP_ACK != 0 {
        bits |= FLOW_ESTABLISHED;
    }
    if tcp_flags & TCP_FIN != 0 {
        bits |= FLOW_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        bits |= FLOW_RST;
    }
    bits
}

/// Finds (or creates) the flow of a client packet and returns its backend.
/// `tcp_flags` is 0 for UDP.
#[inline(always)]
pub fn for_packet<'a>(
    ctx: &XdpContext,
    key: &FlowKey,
    svc: &Service,
    hash: u32,
    tcp_flags: u8,
) -> Result<Chosen<'a>, Counter> {
    let tcp = key.proto == IPPROTO_TCP;
    // SAFETY: the helper only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let bits = state_bits(tcp_flags);
    if let Some(f) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a live LRU entry; a concurrent eviction can only make us update a
        // recycled entry's fields, which the next packet of that flow repairs.
        let f = unsafe { &mut *f };
        let reopened =
            tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && f.state & (FLOW_FIN | FLOW_RST) != 0;
        if !reopened
            && let Some(be) = BACKENDS.get(f.backend)
            && keeps(be, f.epoch)
        {
            let state = f.state | bits;
            if state != f.state {
                f.state = state;
            }
            if now.wrapping_sub(f.last_seen) >= FLOW_TOUCH_NS {
                f.last_seen = now;
            }
            count(Counter::FlowHit);
            return Ok(Chosen {
                index: f.backend,
                backend: be,
                new_flow: false,
                cacheable: settled(state, tcp),
            });
        }
        let (index, be) = maglev::backend(svc, hash)?;
        f.backend = index;
        f.epoch = be.epoch;
        f.service = svc.id;
        f.state = bits;
        f.last_seen = now;
        count(if reopened {
            Counter::FlowNew
        } else {
            Counter::FlowRepick
        });
        return Ok(Chosen {
            index,
            backend: be,
            new_flow: true,
            cacheable: settled(bits, tcp),
        });
    }
    let (index, be) = maglev::backend(svc, hash)?;
    if tcp_flags & TCP_RST != 0 {
        count(Counter::FlowRstNoEntry);
        return Ok(Chosen {
            index,
            backend: be,
            new_flow: false,
            cacheable: false,
        });
    }
    let flow = Flow {
        backend: index,
        epoch: be.epoch,
        service: svc.id,
        state: bits,
        last_seen: now,
    };
    let inserted = CONNTRACK.insert(key, flow, BPF_ANY as u64).is_ok();
    if !inserted && let Some(n) = stats::rare(Counter::FlowInsertFailed) {
        warn!(
            ctx,
            "connection-table insert failed ({} times so far on this CPU)", n
        );
    }
    count(if inserted {
        Counter::FlowNew
    } else {
        Counter::FlowInsertFailed
    });
    Ok(Chosen {
        index,
        backend: be,
        new_flow: true,
        cacheable: inserted && settled(bits, tcp),
    })
}

/// The backend of an existing flow, or the one the table would give it; changes
/// nothing (for ICMP errors about a flow).
#[inline(always)]
pub fn peek(key: &FlowKey, svc: &Service, hash: u32) -> Result<(u32, &'static Backend), Counter> {
    if let Some(f) = CONNTRACK.get_ptr(key) {
        // SAFETY: read-only look at a live entry.
        let f = unsafe { &*f };
        if let Some(be) = BACKENDS.get(f.backend)
            && keeps(be, f.epoch)
        {
            return Ok((f.backend, be));
        }
    }
    maglev::backend(svc, hash)
}

/// The NAT reverse entry of a backend's packet `key` (backend -> client), if any.
#[inline(always)]
pub fn nat_reverse(key: &FlowKey) -> Option<&'static NatReverse> {
    // SAFETY: plain data; a concurrent eviction at worst gives stale values for this one
    // packet.
    unsafe { NAT_REVERSE.get(key) }
}

/// Remembers that the backend's packets `key` (backend -> client) are replies to translate
/// back as `back` says.
#[inline(always)]
pub fn insert_nat_reverse(key: FlowKey, back: NatReverse) {
    if NAT_REVERSE.insert(key, back, 0).is_err() {
        count(Counter::FlowInsertFailed);
    }
}
