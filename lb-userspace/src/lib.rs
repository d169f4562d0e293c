//! The `lb` control plane as a library: the binary (`src/main.rs`) is a thin CLI over it,
//! and the integration tests under `../tests` use it directly.
//!
//! Modules that touch the kernel (aya) are kept apart from the pure logic so that plain
//! `cargo test` covers the latter without root: `dataplane` and `ebpf` use aya;
//! `maglev`, `health` and the configuration/state modules do not.
pub mod dataplane;
pub mod ebpf;
pub mod health;
pub mod maglev;
