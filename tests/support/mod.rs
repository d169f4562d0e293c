//! Helpers shared by the root-only integration tests.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different subset"
)]

pub mod browser;
pub mod daemon;
pub mod running;
pub mod traffic;

pub use lb_lab::{frame, lab, netns};

/// Panics (fails the test) unless we run as root: these tests need BPF and namespaces,
/// and a test that cannot run must never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (BPF, network namespaces); run it through `cargo xtask test` as root"
    );
}

/// A small deterministic PRNG (xorshift64*), so a failing randomized run can be replayed
/// from its printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
