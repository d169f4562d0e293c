//! Helpers shared by the root-only integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

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
