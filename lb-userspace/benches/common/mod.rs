//! What the benchmarks share (each uses a part of it).
#![allow(dead_code, reason = "each benchmark target uses only some of these")]

use anyhow::{Result, ensure};

/// Moves the calling thread to one CPU.
pub fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid set for the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    ensure!(
        rc == 0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Moves the calling thread to the last CPU; returns it.
pub fn pin_to_last_cpu() -> Result<usize> {
    let cpu = std::thread::available_parallelism()?.get() - 1;
    pin(cpu)?;
    Ok(cpu)
}

/// `Flow` as commit 341a9ec wrote it into `CONNTRACK` (24 bytes, with the service and
/// nanoseconds), to fill that build's connection table.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OldFlow {
    pub backend: u32,
    pub epoch: u32,
    pub service: u32,
    pub state: u32,
    pub last_seen: u64,
}

// SAFETY: plain data without padding.
unsafe impl aya::Pod for OldFlow {}
