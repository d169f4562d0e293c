//! Pure logic of the control plane (no aya, no I/O): the running services and backends
//! ([`runtime`]), the Maglev table builder ([`maglev`]), the order in which a change
//! is written into the datapath ([`apply`]), and taking over a datapath that outlived
//! its daemon ([`adopt`]).
pub mod adopt;
pub mod apply;
pub mod maglev;
pub mod runtime;
