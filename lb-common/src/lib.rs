//! Types and constants shared by the XDP program (`lb-ebpf`) and the control plane
//! (`lb-userspace`): one definition of every map key, value and counter, used by both.
//!
//! All map types are `#[repr(C)]`, made of fixed-width integers with explicit padding
//! and a compile-time size check. Addresses and ports are stored exactly as they sit in
//! the packet (network byte order); on the host side build them with
//! `u32::from_ne_bytes(ip.octets())` and `port.to_be()`. With the `user` feature the
//! types implement `aya::Pod` so userspace can read and write them.
#![cfg_attr(not(test), no_std)]

pub mod counters;
pub mod hash;
pub mod maps;
pub mod pins;

pub use counters::Counter;
pub use maps::*;
pub use pins::*;
