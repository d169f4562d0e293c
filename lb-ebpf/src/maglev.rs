//! Maglev: the backend a flow's hash selects in its service's table, and that hash.
use lb_common::{
    BACKEND_F_LIVE, BACKEND_F_REPICK, Backend, Counter, FlowKey, NO_BACKEND, SERVICE_F_HASH_SRC,
    Service, TABLE_CHUNK,
    hash::{flow_hash, ports_word, source_hash},
    table_index,
};

use crate::maps::{BACKENDS, TABLES};

/// The hash that places `flow` in the service's table: of the source address alone when
/// the service hashes on the source, of the 5-tuple otherwise.
#[inline(always)]
pub fn hash(svc: &Service, flow: &FlowKey) -> u32 {
    if svc.flags & SERVICE_F_HASH_SRC != 0 {
        source_hash(flow.src)
    } else {
        flow_hash(
            flow.src,
            flow.dst,
            ports_word(flow.sport, flow.dport),
            flow.proto,
        )
    }
}

/// The backend in the slot `hash` selects in the service's Maglev table.
#[inline(always)]
pub fn backend(svc: &Service, hash: u32) -> Result<(u32, &'static Backend), Counter> {
    if svc.table_size == 0 {
        return Err(Counter::DropNoBackend);
    }
    let slot = hash % svc.table_size;
    let chunk = TABLES
        .get_value(
            table_index(svc.id, svc.table_gen),
            &(slot / TABLE_CHUNK as u32),
        )
        .ok_or(Counter::DropNoBackend)?;
    let index = chunk[slot as usize & (TABLE_CHUNK - 1)];
    if index == NO_BACKEND {
        return Err(Counter::DropNoBackend);
    }
    let be = BACKENDS.get(index).ok_or(Counter::DropInternal)?;
    if be.flags & (BACKEND_F_LIVE | BACKEND_F_REPICK) != BACKEND_F_LIVE {
        // Only between a flag change and the table flip that follows it.
        return Err(Counter::DropNoBackend);
    }
    Ok((index, be))
}
