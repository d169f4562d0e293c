//! A private network namespace per test thread.
//!
//! `unshare(CLONE_NEWNET)` moves only the calling thread; commands it starts inherit
//! the namespace, and the namespace (with every interface created in it) disappears
//! when the thread ends, whether the test passed or panicked. Nothing outside it is
//! touched.
use std::process::Command;

/// Moves the calling thread into a new, empty network namespace with `lo` up.
pub fn enter_new() {
    // SAFETY: unshare has no memory-safety preconditions.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    ip("link set lo up");
}

/// Runs `ip <args>` in the current thread's namespace; panics when it fails.
pub fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("starting ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets a sysctl of the current thread's namespace (`net.ipv4.ip_forward` style).
pub fn sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

/// Index of an interface in the current thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}
