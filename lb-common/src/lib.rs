//! Types and constants shared by the XDP program (`lb-ebpf`) and the control plane
//! (`lb-userspace`): one definition of every map key, value and counter, used by both.
//!
//! All map types are `#[repr(C)]`, made of fixed-width integers with explicit padding.
//! With the `user` feature they implement `aya::Pod` so userspace can read and write them.
#![cfg_attr(not(test), no_std)]

pub mod counters;

pub use counters::Counter;
