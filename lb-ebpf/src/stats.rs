//! Counters. Per-CPU slots: no atomics needed, the control plane sums the CPUs.
use lb_common::{Counter, TrafficStats};

use crate::maps::{BACKEND_STATS, SERVICE_STATS, STATS};

/// Adds one to a global counter.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(v) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: this CPU's own slot; XDP runs with preemption disabled.
        unsafe { *v += 1 };
    }
}

/// Whether the next bump of `c` on this CPU reaches a power of two (1, 2, 4, 8, ...),
/// and that count. Rare events are logged only then, so their log grows
/// logarithmically with their number and never per packet. Called on rare paths only.
#[inline(always)]
pub fn rare(c: Counter) -> Option<u64> {
    let n = STATS.get(c as u32).map_or(0, |v| *v) + 1;
    n.is_power_of_two().then_some(n)
}

/// Direction of a forwarded packet, for the per-service and per-backend statistics.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client -> backend.
    In,
    /// NAT reply, backend -> client.
    Out,
}

/// Accounts one forwarded packet to its service and backend.
#[inline(always)]
pub fn traffic(service: u32, backend: u32, bytes: u64, dir: Dir, new_flow: bool) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: as in `count`.
        unsafe { add(&mut *s, bytes, dir, new_flow) };
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as in `count`.
        unsafe { add(&mut *b, bytes, dir, new_flow) };
    }
}

#[inline(always)]
fn add(s: &mut TrafficStats, bytes: u64, dir: Dir, new_flow: bool) {
    match dir {
        Dir::In => {
            s.packets += 1;
            s.bytes += bytes;
        }
        Dir::Out => {
            s.packets_out += 1;
            s.bytes_out += bytes;
        }
    }
    if new_flow {
        s.new_flows += 1;
    }
}
