//! The connection table: `CONNTRACK` pins each client flow to a backend (with its TCP
//! state bits); a flow it does not know takes the backend of the service's Maglev table
//! (see `maglev`).
//!
//! When an entry is created:
//! - UDP: at the flow's first packet.
//! - TCP: **not at the SYN**. A SYN takes its backend from the table and leaves it in a
//!   `HALF_OPEN` slot (an array: no insert, nothing evicted); the first packet without
//!   SYN (the client's ACK that completes the handshake) creates the entry with the
//!   slot's backend. So a flood of spoofed SYNs overwrites half-open slots but never
//!   pushes an established connection out of the table, and a handshake in flight while
//!   the table changes still completes on the backend its SYN went to. A TCP packet
//!   that finds neither (its SYN was not seen here: a failover, a slot overwritten by a
//!   flood) takes the table's backend and creates the entry.
//!
//! Re-pick rule: a flow keeps its backend while that backend's index is live, not
//! flagged `BACKEND_F_REPICK` (admin state maint, health down, DSR neighbour lost) and
//! still holds the epoch the flow was pinned under (the index was not given to another
//! backend). If any of these fails, the flow takes the backend the current Maglev table
//! gives it and its entry is rewritten. A TCP SYN on an entry that saw FIN or RST is a
//! new connection reusing the port, and is placed afresh too. Draining backends and
//! weight-0 backends keep their flows: they only lose their table slots.
//!
//! Ageing: an entry idle for longer than its timeout (`TIMEOUTS`, written by the control
//! plane) is treated as gone: its packet is placed afresh and the entry rewritten. The
//! control plane's scan only counts and tidies; correctness never waits for it.
//!
//! Written once for both families (`CONNTRACK`/`HALF_OPEN` and `CONNTRACK6`/`HALF_OPEN6`,
//! through [`Family`]).
use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{
    BACKEND_F_LIVE, BACKEND_F_REPICK, Backend, Counter, FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST,
    FLOW_SYN, Flow, FlowKeyOf, HalfOpenOf, Service, Timeouts, coarse_seconds,
};

use crate::{
    family::Family,
    maglev,
    maps::{BACKENDS, TIMEOUTS},
    parse::{IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::{self, count},
};

/// The backend a packet goes to.
pub struct Chosen<'a> {
    pub index: u32,
    pub backend: &'a Backend,
    /// The packet started (or re-placed) a connection: counted as a new one.
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

/// Whether an entry last seen at `last_seen` (seconds) in `state` is past its timeout at
/// `now` (seconds). A timeout of 0 (a datapath whose control plane has not written
/// `TIMEOUTS` yet) never expires anything.
#[inline(always)]
fn expired(t: Option<&Timeouts>, state: u32, tcp: bool, last_seen: u32, now: u32) -> bool {
    let Some(t) = t else {
        return false;
    };
    let timeout = if !tcp {
        t.udp_s
    } else if state & (FLOW_ESTABLISHED | FLOW_FIN | FLOW_RST) == FLOW_ESTABLISHED {
        t.tcp_s
    } else {
        t.tcp_fin_s
    };
    timeout != 0 && older_than(last_seen, now, timeout)
}

/// Whether `then` is at least `age` seconds before `now`. Signed: another CPU may have
/// written a `then` one second past the `now` this one read (that is not old).
#[inline(always)]
fn older_than(then: u32, now: u32, age: u32) -> bool {
    let d = now.wrapping_sub(then) as i32;
    d >= 0 && d as u32 >= age
}

/// The backend a SYN of `key` was given, if its slot still holds it (not overwritten,
/// not torn by a concurrent write, not older than the half-open timeout, backend still
/// keeps it).
#[inline(always)]
fn half_open<F: Family>(
    key: &FlowKeyOf<F::A>,
    t: Option<&Timeouts>,
    now: u32,
) -> Option<(u32, &'static Backend)> {
    let h = F::half_open(F::half_open_slot(key))?;
    let k = &h.key;
    if !k.same_flow(key)
        || h.check != F::half_open_check(k, h.backend, h.epoch, h.born)
        || t.is_some_and(|t| t.half_open_s != 0 && older_than(h.born, now, t.half_open_s))
    {
        return None;
    }
    let be = BACKENDS.get(h.backend)?;
    keeps(be, h.epoch).then_some((h.backend, be))
}

/// Leaves a SYN's backend in its half-open slot.
#[inline(always)]
fn remember_syn<F: Family>(key: &FlowKeyOf<F::A>, index: u32, epoch: u32, now: u32) {
    let Some(h) = F::half_open_mut(F::half_open_slot(key)) else {
        return;
    };
    // SAFETY: a slot of a plain array; another CPU may write it at the same time, which
    // `check` makes a reader detect.
    let h: &mut HalfOpenOf<F::A> = unsafe { &mut *h };
    h.check = 0;
    h.key.set(key);
    h.backend = index;
    h.epoch = epoch;
    h.born = now;
    h.check = F::half_open_check(key, index, epoch, now);
}

/// Finds (or creates) the flow of a client packet and returns its backend.
/// `tcp_flags` is 0 for UDP.
#[inline(always)]
pub fn for_packet<'a, F: Family>(
    ctx: &XdpContext,
    key: &FlowKeyOf<F::A>,
    svc: &Service,
    hash: u32,
    tcp_flags: u8,
) -> Result<Chosen<'a>, Counter> {
    let tcp = key.proto == IPPROTO_TCP;
    // SAFETY: the helper only reads the clock.
    let now = coarse_seconds(unsafe { bpf_ktime_get_coarse_ns() });
    let timeouts = TIMEOUTS.get(0);
    let bits = state_bits(tcp_flags);
    let syn = tcp && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(f) = F::ct_get_mut(key) {
        // SAFETY: a live LRU entry, updated in place only on a hit (state bits and the
        // clock). Another CPU may evict and recycle it meanwhile; that makes this update
        // land in another flow's entry, whose next packet then sees a backend of
        // another service (`be.service` below) or a newer clock, nothing worse. An entry
        // re-placed is rewritten by key, never through this pointer.
        let f = unsafe { &mut *f };
        let reopened = syn && f.state & (FLOW_FIN | FLOW_RST) != 0;
        let stale = expired(timeouts, f.state, tcp, f.last_seen, now);
        if !reopened
            && !stale
            && let Some(be) = BACKENDS.get(f.backend)
            && keeps(be, f.epoch)
            && be.service == svc.id
        {
            let state = f.state | bits;
            if state != f.state {
                f.state = state;
            }
            if f.last_seen != now {
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
        // Re-placed: a new connection on the port, an expired entry, or a backend that
        // cannot keep it. The table decides (a half-open slot of this 5-tuple would be an
        // earlier connection's; this SYN's retransmits find the rewritten entry).
        let (index, be) = maglev::backend(svc, hash)?;
        if syn {
            remember_syn::<F>(key, index, be.epoch, now);
        }
        let flow = Flow {
            backend: index,
            epoch: be.epoch,
            state: bits,
            last_seen: now,
        };
        if !F::ct_insert(key, flow) {
            insert_failed(ctx);
        }
        count(if reopened {
            Counter::FlowNew
        } else if stale {
            Counter::FlowExpired
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
    if syn {
        // A retransmitted SYN finds its slot (the same connection, not a new one); a
        // new one takes the table's backend.
        let (index, be, new_flow) = match half_open::<F>(key, timeouts, now) {
            Some((index, be)) => (index, be, false),
            None => {
                let (index, be) = maglev::backend(svc, hash)?;
                remember_syn::<F>(key, index, be.epoch, now);
                (index, be, true)
            }
        };
        count(Counter::FlowSyn);
        return Ok(Chosen {
            index,
            backend: be,
            new_flow,
            cacheable: false,
        });
    }
    // The handshake's ACK takes its SYN's backend; a flow whose SYN was not seen here
    // takes the table's.
    let (index, be, seen_syn) = match tcp.then(|| half_open::<F>(key, timeouts, now)).flatten() {
        Some((index, be)) => (index, be, true),
        None => {
            let (index, be) = maglev::backend(svc, hash)?;
            (index, be, false)
        }
    };
    // A RST, or a client's SYN|ACK (a reflection: clients do not send those), of a flow
    // without an entry is forwarded but makes none, so such floods evict nothing.
    if tcp_flags & (TCP_RST | TCP_SYN) != 0 {
        count(if tcp_flags & TCP_RST != 0 {
            Counter::FlowRstNoEntry
        } else {
            Counter::FlowSynAckNoEntry
        });
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
        state: bits,
        last_seen: now,
    };
    let inserted = F::ct_insert(key, flow);
    if inserted {
        count(Counter::FlowNew);
    } else {
        insert_failed(ctx);
    }
    Ok(Chosen {
        index,
        backend: be,
        // Its SYN was counted as the new connection already.
        new_flow: !seen_syn,
        cacheable: inserted && settled(bits, tcp),
    })
}

/// Counts (and, rarely, logs) a connection-table insert the kernel refused.
#[inline(always)]
fn insert_failed(ctx: &XdpContext) {
    if let Some(n) = stats::rare(Counter::FlowInsertFailed) {
        warn!(
            ctx,
            "connection-table insert failed ({} times so far on this CPU)", n
        );
    }
    count(Counter::FlowInsertFailed);
}

/// The backend of an existing flow, or the one the table would give it; changes
/// nothing (for ICMP errors about a flow).
#[inline(always)]
pub fn peek<F: Family>(
    key: &FlowKeyOf<F::A>,
    svc: &Service,
    hash: u32,
) -> Result<(u32, &'static Backend), Counter> {
    if let Some(f) = F::ct_get(key) {
        // SAFETY: read-only look at a live entry.
        let f = unsafe { &*f };
        if let Some(be) = BACKENDS.get(f.backend)
            && keeps(be, f.epoch)
            && be.service == svc.id
        {
            return Ok((f.backend, be));
        }
    }
    // A handshake in progress: its SYN's backend.
    // SAFETY: the helper only reads the clock.
    let now = coarse_seconds(unsafe { bpf_ktime_get_coarse_ns() });
    if key.proto == IPPROTO_TCP
        && let Some(chosen) = half_open::<F>(key, TIMEOUTS.get(0), now)
    {
        return Ok(chosen);
    }
    maglev::backend(svc, hash)
}
