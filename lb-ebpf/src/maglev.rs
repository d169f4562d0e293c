//! Maglev: the backend a flow's hash selects in its service's table (the hash itself is
//! the family's: `family::Family::hash`).
use lb_common::{
    BACKEND_F_LIVE, BACKEND_F_REPICK, Backend, Counter, NO_BACKEND, Service, TABLE_CHUNK,
    table_index,
};

use crate::maps::{BACKENDS, TABLES};

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
