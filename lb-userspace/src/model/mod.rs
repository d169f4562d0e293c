//! Pure logic of the control plane (no aya, no I/O): the running services and backends
//! ([`runtime`]), the Maglev table builder ([`maglev`]) and the order in which a change
//! is written into the datapath ([`apply`]).
pub mod apply;
pub mod maglev;
pub mod runtime;
