//! The `lb` control plane as a library: the binary (`src/main.rs`) is a thin CLI over it,
//! and the integration tests under `../tests` use it directly.
//!
//! Pure logic, covered by plain `cargo test` without root: `config` (the JSON contract),
//! `state` (services, backends, ids; the image the datapath should hold), `apply` (writing
//! image differences in a safe order), `maglev`, `health`, `proto` (control-socket
//! requests), `neigh`'s parsers. Kernel-facing: `dataplane` and `ebpf` (aya), `sys` (batch
//! map syscalls), `controller` (owns the maps).
pub mod apply;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod ebpf;
pub mod grace;
pub mod health;
pub mod inspect;
pub mod maglev;
pub mod metrics;
pub mod neigh;
pub mod proto;
pub mod server;
pub mod show;
pub mod state;
pub mod sys;
