//! The datapath's pins in bpffs: what marks a directory as an lb datapath, and which
//! layout of maps it holds.
//!
//! `lb run` pins its maps and XDP links in one directory per instance, so the datapath
//! outlives the daemon; the next daemon of the instance adopts them. A daemon reads the
//! [`PinMeta`] record (map [`MAP_PIN_META`]) before anything else and refuses pins whose
//! magic is not lb's or whose layout version it does not know: it never misreads maps
//! laid out by another version.

/// The one-entry array that identifies an lb pin directory.
pub const MAP_PIN_META: &str = "LB_META";

/// `PinMeta::magic`: "lb-pins!".
pub const PIN_MAGIC: u64 = u64::from_be_bytes(*b"lb-pins!");

/// The layout of the pinned maps: their set, names, key and value types and meaning.
/// Bump it with any incompatible change of a pinned map (a new field in `Backend`, a new
/// key type for `CONNTRACK`, ...): a daemon adopts only pins of its own version.
/// 2: `Flow` of 16 bytes, `HALF_OPEN`, `NAT_BACKENDS` and `TIMEOUTS`; no `NAT_REVERSE`,
/// no `NAT_SOURCES`.
/// 3: the IPv6 maps (`SERVICES6`, `VIPS6`, `BACKEND_ADDRS6`, `CONNTRACK6`, `HALF_OPEN6`,
/// `NAT_BACKENDS6`) and `PROGRAMS` (the IPv6 programs `lb` tail-calls); counters
/// `pass_ndp`, `drop_ipv6_ext_header`, `drop_ipv6_routing` and `ipv6_ext_skipped`
/// (indexes of `STATS` moved).
pub const PIN_LAYOUT_VERSION: u32 = 3;

/// Pin name prefix of an XDP link: `link_<interface>`.
pub const PIN_LINK_PREFIX: &str = "link_";

/// The maps that are pinned (and so survive the daemon), besides [`MAP_PIN_META`]: every
/// map whose content matters across restarts. Scratch state (the per-CPU flow cache,
/// constants) is created afresh with each program.
pub const PINNED_MAPS: [&str; 21] = [
    crate::MAP_SERVICES,
    crate::MAP_TABLES,
    crate::MAP_BACKENDS,
    crate::MAP_CONNTRACK,
    crate::MAP_HALF_OPEN,
    crate::MAP_NAT_BACKENDS,
    crate::MAP_TIMEOUTS,
    crate::MAP_VIPS,
    crate::MAP_VIP_FILTER,
    crate::MAP_NAT_FILTER,
    crate::MAP_STATS,
    crate::MAP_SERVICE_STATS,
    crate::MAP_BACKEND_STATS,
    crate::MAP_SERVICES6,
    crate::MAP_VIPS6,
    crate::MAP_BACKEND_ADDRS6,
    crate::MAP_CONNTRACK6,
    crate::MAP_HALF_OPEN6,
    crate::MAP_NAT_BACKENDS6,
    // The tail-called programs: pinned so the running program keeps finding them after
    // the daemon that installed them is gone (the kernel empties a program array when
    // its last user reference goes).
    crate::MAP_PROGRAMS,
    // The datapath's log ring buffer (aya-log's), so a daemon that keeps the running
    // program reads what it logs.
    "AYA_LOGS",
];

/// Value of [`MAP_PIN_META`] (key 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PinMeta {
    /// [`PIN_MAGIC`].
    pub magic: u64,
    /// [`PIN_LAYOUT_VERSION`] of the daemon that created the pins.
    pub layout: u32,
    pub _pad: u32,
    /// SHA-256 of the XDP object whose program the links run.
    pub object_sha256: [u8; 32],
    /// When the pins were created, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

const _: () = assert!(core::mem::size_of::<PinMeta>() == 56);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and byte arrays only, explicit padding.
    unsafe impl aya::Pod for super::PinMeta {}
}
