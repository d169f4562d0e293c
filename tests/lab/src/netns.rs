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

/// MAC of `cli0` in [`enter_two_legs`] (the balancer's client-side interface).
pub const LB_CLI_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc0];
/// MAC of `srv0` in [`enter_two_legs`] (the balancer's server-side interface).
pub const LB_SRV_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb0];
/// MAC the packet tests give the router 192.0.2.254 (a permanent neighbour on `cli0`).
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xfe];

/// The packet tests' and the datapath benchmark's namespace: a new one, with a client
/// leg `cli0` (192.0.2.1/24, MAC 02:00:00:00:00:c0, default for 198.51.100.0/24 via the
/// router 192.0.2.254) and a server leg `srv0` (10.1.0.1/24, MAC 02:00:00:00:00:b0),
/// each a veth whose peer (`cli1`, `srv1`) is up, and forwarding on. IPv6 likewise:
/// `cli0` 2001:db8:c::1/64 (2001:db8:cafe::/48 via the router 2001:db8:c::fe), `srv0`
/// 2001:db8:b::1/64, IPv6 forwarding on. Returns the ifindexes of `cli0` and `srv0`.
/// Neighbours are the caller's.
pub fn enter_two_legs() -> (u32, u32) {
    enter_new();
    ip("link add name cli0 address 02:00:00:00:00:c0 type veth peer name cli1");
    ip("link add name srv0 address 02:00:00:00:00:b0 type veth peer name srv1");
    for dev in ["cli0", "cli1", "srv0", "srv1"] {
        ip(&format!("link set {dev} up"));
    }
    ip("addr add 192.0.2.1/24 dev cli0");
    ip("addr add 10.1.0.1/24 dev srv0");
    ip("route add 198.51.100.0/24 via 192.0.2.254");
    sysctl("net.ipv4.ip_forward", "1");
    // No duplicate address detection: the addresses are usable at once.
    ip("-6 addr add 2001:db8:c::1/64 dev cli0 nodad");
    ip("-6 addr add 2001:db8:b::1/64 dev srv0 nodad");
    ip("-6 route add 2001:db8:cafe::/48 via 2001:db8:c::fe");
    sysctl("net.ipv6.conf.all.forwarding", "1");
    (ifindex("cli0"), ifindex("srv0"))
}
