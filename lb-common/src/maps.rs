//! Map names, sizes, keys and values.
//!
//! | map | kind | key -> value |
//! |---|---|---|
//! | `SERVICES` | hash | [`ServiceKey`] -> [`Service`] |
//! | `TABLES` | array of maps | [`table_index`]\(service id, generation) -> inner array of [`TableChunk`] (a Maglev table) |
//! | `BACKENDS` | array | backend index -> [`Backend`] |
//! | `CONNTRACK` | LRU hash (one LRU for all CPUs) | [`FlowKey`] (client -> VIP) -> [`Flow`] |
//! | `HALF_OPEN` | array | slot of a [`FlowKey`] -> [`HalfOpen`] (a TCP SYN's backend) |
//! | `NAT_BACKENDS` | hash | [`NatBackendKey`] (a NAT backend) -> [`NatBackend`] (its replies' VIP:port) |
//! | `TIMEOUTS` | array (1) | [`Timeouts`] |
//! | `VIPS` | hash | VIP address -> number of services on it |
//! | `STATS` | per-CPU array | [`Counter`](crate::Counter) -> packets |
//! | `SERVICE_STATS` | per-CPU array | service id -> [`TrafficStats`] |
//! | `BACKEND_STATS` | per-CPU array | backend index -> [`TrafficStats`] |
//! | `SERVICES6` | hash | [`ServiceKey6`] -> [`Service6`] |
//! | `VIPS6` | hash | IPv6 VIP ([`Addr6`]) -> number of services on it |
//! | `BACKEND_ADDRS6` | array | backend index -> [`Addr6`] (IPv6 backends) |
//! | `CONNTRACK6` | LRU hash (one LRU for all CPUs) | [`FlowKey6`] -> [`Flow`] |
//! | `HALF_OPEN6` | array | slot of a [`FlowKey6`] -> [`HalfOpen6`] |
//! | `NAT_BACKENDS6` | hash | [`NatBackendKey6`] -> [`NatBackend6`] |
//!
//! The keys and values that hold addresses are generic over the address (`u32` for
//! IPv4, [`Addr6`] for IPv6), so both families share one definition and the datapath one
//! generic code path; the IPv4 instances keep their names and sizes (`FlowKey` is
//! `FlowKeyOf<u32>`, 16 bytes).

pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_TABLES: &str = "TABLES";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_CONNTRACK: &str = "CONNTRACK";
pub const MAP_HALF_OPEN: &str = "HALF_OPEN";
pub const MAP_NAT_BACKENDS: &str = "NAT_BACKENDS";
pub const MAP_TIMEOUTS: &str = "TIMEOUTS";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";

/// Service ids are `0..MAX_SERVICES` (index into `SERVICE_STATS`; see [`table_index`]).
pub const MAX_SERVICES: u32 = 1024;
/// Entries of `TABLES`: two table generations per service id, then [`GRACE_SLOT`].
pub const TABLE_SLOTS: u32 = 2 * MAX_SERVICES + 1;
/// The entry of `TABLES` no packet reads: the control plane updates it to wait for an
/// RCU grace period (a map-in-map update returns only when every program that may have
/// seen the old value has finished).
pub const GRACE_SLOT: u32 = 2 * MAX_SERVICES;

/// The `TABLES` entry of generation `generation` (0 or 1; only its low bit counts) of
/// service `id`'s Maglev table. [`Service::table_gen`] says which generation is live.
#[inline(always)]
pub const fn table_index(id: u32, generation: u32) -> u32 {
    id * 2 + (generation & 1)
}
/// Distinct VIP addresses.
pub const MAX_VIPS: u32 = 1024;
/// Backend indexes are `0..MAX_BACKENDS`; one per (service, backend) pair.
pub const MAX_BACKENDS: u32 = 65536;
/// Entries of `NAT_BACKENDS` (one per NAT backend address:port/protocol).
pub const MAX_NAT_BACKENDS: u32 = MAX_BACKENDS;
/// Entries each CPU of a common-LRU hash map may hold in its local free list
/// (`LOCAL_FREE_TARGET` in the kernel's bpf_lru_list.c): when the shared free list runs
/// short, a CPU refills its own by evicting live entries even while others hold free
/// ones, so a table of N entries holds at least N - 128 x CPUs live ones. (Making
/// `CONNTRACK` that much larger would double its hash buckets at the default size, a
/// power of two: 16 more bytes per entry.)
pub const LRU_LOCAL_FREE: u32 = 128;

/// Default size of `CONNTRACK` (configurable at start).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 1 << 20;

/// Maglev table sizes a service may use: primes, as Cilium offers them, plus 65537
/// (the Maglev paper's and Katran's size), the default.
pub const TABLE_SIZES: [u32; 11] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 65537, 131071,
];
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Slots per element of a Maglev table's inner array: one 64-byte element holds 16
/// slots, so a table of M slots is `ceil(M / 16)` elements and costs about M × 4 bytes
/// (a plain `u32` array would cost M × 8: the kernel rounds array values up to 8 bytes).
pub const TABLE_CHUNK: usize = 16;
/// A table slot holding this value has no backend (the service drops new flows).
pub const NO_BACKEND: u32 = u32::MAX;

/// `BPF_F_NO_PREALLOC`: hash-map elements allocated on update and freed after an RCU
/// grace period (a preallocated element is reused at once, even for another key).
pub const BPF_F_NO_PREALLOC: u32 = 1 << 0;
/// `BPF_F_MMAPABLE`: userspace writes a whole Maglev table through mmap.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// `BPF_F_INNER_MAP`: inner tables of different sizes fit the same outer map.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// Flags of every Maglev inner table; the outer map's template uses the same.
pub const TABLE_MAP_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

/// Key of `SERVICES` ([`ServiceKey`]) and `SERVICES6` ([`ServiceKey6`]): a virtual
/// service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKeyOf<A> {
    /// VIP, network byte order (IPv6: [`Addr6`]).
    pub vip: A,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    pub _pad: u8,
}

/// An IPv4 service's key.
pub type ServiceKey = ServiceKeyOf<u32>;
/// An IPv6 service's key.
pub type ServiceKey6 = ServiceKeyOf<Addr6>;

/// Value of `SERVICES` ([`Service`]) and `SERVICES6` ([`Service6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceOf<A> {
    /// Index into `SERVICE_STATS`; with `table_gen`, into `TABLES` ([`table_index`]).
    pub id: u32,
    /// `SERVICE_F_*`.
    pub flags: u32,
    /// M, the number of slots of this service's Maglev table (a prime).
    pub table_size: u32,
    /// Which of the service's two table generations is live (0 or 1). The control plane
    /// writes the other one and then flips this field by rewriting the record.
    pub table_gen: u32,
    /// The record's own key. The kernel recycles a replaced hash element at once (for
    /// another key's update, too), so a packet that looked a record up just before it
    /// was replaced checks this to know it read the record it asked for.
    pub key: ServiceKeyOf<A>,
}

/// An IPv4 service's record.
pub type Service = ServiceOf<u32>;
/// An IPv6 service's record.
pub type Service6 = ServiceOf<Addr6>;

/// Forward by NAT (rewrite VIP:port to RIP:port) instead of DSR (rewrite MACs).
pub const SERVICE_F_NAT: u32 = 1 << 0;
/// Hash on the client address only (persistence: a client always reaches one backend).
pub const SERVICE_F_HASH_SRC: u32 = 1 << 1;

/// One element of a Maglev table: [`TABLE_CHUNK`] slots, each a backend index or
/// [`NO_BACKEND`]. Slot `s` lives in element `s / 16`, position `s % 16`.
pub type TableChunk = [u32; TABLE_CHUNK];

/// Value of `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Real server address, network byte order.
    pub addr: u32,
    /// Real server port, network byte order (NAT rewrites the destination port to it).
    pub port: u16,
    /// `BACKEND_F_*`.
    pub flags: u16,
    /// Bumped by the control plane every time this index is given to another backend:
    /// a flow remembers the epoch it was pinned under, so a reused index never captures
    /// the flows of the backend that had it before.
    pub epoch: u32,
    /// DSR: interface towards the backend (XDP_TX when it is the ingress interface,
    /// XDP_REDIRECT otherwise).
    pub ifindex: u32,
    /// DSR: the backend's MAC address (the new destination MAC).
    pub mac: [u8; 6],
    /// DSR: the MAC address of `ifindex` (the new source MAC).
    pub src_mac: [u8; 6],
    /// Id of the service this backend belongs to.
    pub service: u32,
}

/// The index holds a backend (cleared when the backend is removed).
pub const BACKEND_F_LIVE: u16 = 1 << 0;
/// Flows pinned to this backend choose again (admin state maint, or health down).
pub const BACKEND_F_REPICK: u16 = 1 << 1;

/// Key of `CONNTRACK` ([`FlowKey`], 16 bytes) and `CONNTRACK6` ([`FlowKey6`], 40 bytes),
/// and of their half-open slots and flow caches: a client -> VIP flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FlowKeyOf<A> {
    /// Source address, network byte order (IPv6: [`Addr6`]).
    pub src: A,
    /// Destination address, network byte order.
    pub dst: A,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    // Padding as plain integers: a `[u8; 3]` would make LLVM zero it with a call to
    // a byte-loop memset in BPF, on every packet.
    pub _pad0: u8,
    pub _pad1: u16,
}

/// An address as the maps hold it: `u32` (IPv4, network order) or [`Addr6`].
pub trait AddrWords: Copy + Default + Ord {
    /// Equality, word by word (in BPF an array `==` may become a `bcmp` call).
    fn same(&self, other: &Self) -> bool;
}

impl AddrWords for u32 {
    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        *self == *other
    }
}

impl AddrWords for Addr6 {
    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        // Most selective word first: the interface identifier.
        self[3] == other[3] && self[2] == other[2] && self[1] == other[1] && self[0] == other[0]
    }
}

/// An IPv4 flow.
pub type FlowKey = FlowKeyOf<u32>;
/// An IPv6 flow.
pub type FlowKey6 = FlowKeyOf<Addr6>;

impl<A> FlowKeyOf<A> {
    /// A flow key; addresses and ports in network byte order.
    #[inline(always)]
    pub const fn new(src: A, dst: A, sport: u16, dport: u16, proto: u8) -> Self {
        FlowKeyOf {
            src,
            dst,
            sport,
            dport,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

impl<A: AddrWords> FlowKeyOf<A> {
    /// Whether `self` and `other` name the same flow: field by field (the padding never
    /// differs), the most selective first.
    #[inline(always)]
    pub fn same_flow(&self, other: &Self) -> bool {
        self.sport == other.sport
            && self.src.same(&other.src)
            && self.dport == other.dport
            && self.dst.same(&other.dst)
            && self.proto == other.proto
    }

    /// Copies `from` into `self` field by field: in BPF a whole-struct store goes
    /// through a stack copy and a memcpy call.
    #[inline(always)]
    pub fn set(&mut self, from: &Self) {
        self.src = from.src;
        self.dst = from.dst;
        self.sport = from.sport;
        self.dport = from.dport;
        self.proto = from.proto;
    }
}

/// Value of `CONNTRACK`: the backend a flow is pinned to. 16 bytes, so an entry costs
/// the kernel under 100 bytes (see docs/BENCHMARKS.md). The service is the one the key's
/// destination names.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// Backend index the flow is pinned to.
    pub backend: u32,
    /// [`Backend::epoch`] at the time the flow was pinned.
    pub epoch: u32,
    /// `FLOW_*` bits seen on the client's packets.
    pub state: u32,
    /// Last client packet, in whole seconds of `CLOCK_MONOTONIC` (the coarse clock:
    /// [`coarse_seconds`]); rewritten at most once a second.
    pub last_seen: u32,
}

/// Seconds of the coarse monotonic clock, as `Flow::last_seen` and the half-open slots
/// keep them (`bpf_ktime_get_coarse_ns` in the datapath).
#[inline(always)]
pub const fn coarse_seconds(ns: u64) -> u32 {
    (ns / 1_000_000_000) as u32
}

pub const FLOW_SYN: u32 = 1 << 0;
/// A packet with ACK and without SYN was seen: the handshake completed.
pub const FLOW_ESTABLISHED: u32 = 1 << 1;
pub const FLOW_FIN: u32 = 1 << 2;
pub const FLOW_RST: u32 = 1 << 3;

/// Value of `TIMEOUTS` (one entry): how long an idle entry stays valid, in seconds. The
/// datapath treats an entry idle for longer as gone (its packet is placed afresh), so
/// ageing does not wait for the control plane's scan.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// TCP past its handshake, no FIN or RST seen.
    pub tcp_s: u32,
    /// TCP opening or closing.
    pub tcp_fin_s: u32,
    /// UDP.
    pub udp_s: u32,
    /// A half-open slot (SYN seen, no ACK yet).
    pub half_open_s: u32,
}

/// How long a SYN's half-open slot holds its backend for the ACK that completes the
/// handshake (the SYN retransmits of a slow client included).
pub const HALF_OPEN_TIMEOUT_S: u32 = 30;

/// Slots of `HALF_OPEN` (a power of two).
pub const HALF_OPEN_SLOTS: u32 = 1 << 17;

/// A slot of `HALF_OPEN` ([`HalfOpen`]) or `HALF_OPEN6` ([`HalfOpen6`]): the backend a TCP SYN was sent to, kept for the ACK that
/// completes the handshake, which creates the flow's `CONNTRACK` entry. SYNs never
/// create connection-table entries, so a SYN flood cannot evict an established
/// connection: it only overwrites slots. A slot is written by whichever CPU sees the
/// SYN and read by the one that sees the ACK; `check` guards against a read that meets a
/// concurrent write (see [`half_open_check`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HalfOpenOf<A> {
    pub key: FlowKeyOf<A>,
    pub backend: u32,
    pub epoch: u32,
    /// When the SYN was seen, [`coarse_seconds`].
    pub born: u32,
    /// [`half_open_check`] ([`half_open_check6`]) of the fields above.
    pub check: u32,
}

/// An IPv4 half-open slot.
pub type HalfOpen = HalfOpenOf<u32>;
/// An IPv6 half-open slot.
pub type HalfOpen6 = HalfOpenOf<Addr6>;

/// The check word of a half-open slot: a mix of every other field.
#[inline(always)]
pub const fn half_open_check(key: &FlowKey, backend: u32, epoch: u32, born: u32) -> u32 {
    let ports = key.sport as u32 | ((key.dport as u32) << 16);
    let x = key.src
        ^ key.dst.rotate_left(7)
        ^ ports.rotate_left(13)
        ^ (key.proto as u32).rotate_left(21)
        ^ backend.rotate_left(3)
        ^ epoch.rotate_left(17)
        ^ born.rotate_left(27);
    x.wrapping_mul(0x9e37_79b1) | 1
}

/// Key of `NAT_BACKENDS` ([`NatBackendKey`]) and `NAT_BACKENDS6` ([`NatBackendKey6`]): a
/// NAT backend's address, port and protocol, as its replies carry them (network byte
/// order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NatBackendKeyOf<A> {
    pub addr: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// An IPv4 NAT backend.
pub type NatBackendKey = NatBackendKeyOf<u32>;
/// An IPv6 NAT backend.
pub type NatBackendKey6 = NatBackendKeyOf<Addr6>;

/// Value of `NAT_BACKENDS` ([`NatBackend`]) and `NAT_BACKENDS6` ([`NatBackend6`]): how to translate a NAT backend's replies back to the
/// client: the source becomes VIP:port. Derived from the configuration, not from any
/// connection (a backend address:port belongs to one NAT service), so replies of a
/// connection this node never saw are translated too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatBackendOf<A> {
    /// The VIP (new source address), network byte order.
    pub vip: A,
    /// The service port (new source port), network byte order.
    pub vport: u16,
    pub _pad: u16,
    /// Backend index (for its statistics).
    pub backend: u32,
    /// Service id.
    pub service: u32,
}

/// An IPv4 NAT backend's reply translation.
pub type NatBackend = NatBackendOf<u32>;
/// An IPv6 NAT backend's reply translation.
pub type NatBackend6 = NatBackendOf<Addr6>;

/// Value of `SERVICE_STATS` and `BACKEND_STATS` (one copy per CPU; sum them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficStats {
    /// Packets forwarded towards backends (client -> server).
    pub packets: u64,
    /// Bytes of those packets, Ethernet header included.
    pub bytes: u64,
    /// New flows (connection-table entries created or re-picked).
    pub new_flows: u64,
    /// NAT: packets translated back towards clients (server -> client).
    pub packets_out: u64,
    /// NAT: bytes of those packets.
    pub bytes_out: u64,
}

const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 8);
    assert!(core::mem::size_of::<Service>() == 24);
    assert!(core::mem::size_of::<TableChunk>() == 64);
    assert!(core::mem::size_of::<Backend>() == 32);
    assert!(core::mem::size_of::<FlowKey>() == 16);
    assert!(core::mem::size_of::<Flow>() == 16);
    assert!(core::mem::size_of::<Timeouts>() == 16);
    assert!(core::mem::size_of::<HalfOpen>() == 32);
    assert!(HALF_OPEN_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<NatBackendKey>() == 8);
    assert!(core::mem::size_of::<NatBackend>() == 16);
    assert!(core::mem::size_of::<TrafficStats>() == 40);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made only of integers and byte arrays, with
    // explicit padding fields: every bit pattern is valid and there are no holes.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for NatBackend {}
    unsafe impl aya::Pod for NatBackendKey {}
    unsafe impl aya::Pod for HalfOpen {}
    unsafe impl aya::Pod for Timeouts {}
    unsafe impl aya::Pod for TrafficStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_prime(n: u32) -> bool {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn table_sizes_are_ascending_primes_and_include_the_default() {
        assert!(TABLE_SIZES.iter().all(|&m| is_prime(m)), "{TABLE_SIZES:?}");
        assert!(TABLE_SIZES.windows(2).all(|w| w[0] < w[1]));
        assert!(TABLE_SIZES.contains(&DEFAULT_TABLE_SIZE));
    }
}

// ---- fast path -------------------------------------------------------------------

pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
pub const MAP_VIP_FILTER: &str = "VIP_FILTER";
pub const MAP_NAT_FILTER: &str = "NAT_FILTER";

/// Slots of the per-CPU flow cache (a power of two). Each CPU caches at most this many
/// flows; a collision only sends a packet down the full path.
pub const FLOW_CACHE_SLOTS: u32 = 1 << 16;
/// A cached flow takes the full path again after this many jiffies (0.25 s at HZ=1000,
/// 2.5 s at HZ=100): that refreshes its connection-table entry (so an active flow is
/// never aged out) and its NAT next hop.
pub const FLOW_CACHE_SYNC_JIFFIES: u64 = 250;

/// `CachedFlow::kind`: the slot is empty.
pub const CACHE_EMPTY: u32 = 0;
/// A client -> VIP flow of a DSR service.
pub const CACHE_DSR: u32 = 1;
/// A client -> VIP flow of a NAT service.
pub const CACHE_NAT_FORWARD: u32 = 2;
/// A backend -> client reply of a NAT service.
pub const CACHE_NAT_REPLY: u32 = 3;

/// Value of the per-CPU `FLOW_CACHE` ([`CachedFlow`]) and `FLOW_CACHE6` ([`CachedFlow6`])
/// arrays: what the full path decided for a flow, so
/// its next packets can be forwarded with array lookups only (no helper calls).
///
/// The connection table stays the truth: the cache is filled only from it, is checked
/// against the backend's record (live, not re-pick, same epoch) on every hit, is
/// bypassed by TCP SYN/FIN/RST (so connection state reaches the table), and expires
/// after [`FLOW_CACHE_SYNC_JIFFIES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedFlowOf<A, P> {
    pub key: FlowKeyOf<A>,
    /// `CACHE_*`.
    pub kind: u32,
    /// Backend index (its record is checked on every hit).
    pub backend: u32,
    /// The backend's epoch when the entry was made.
    pub epoch: u32,
    /// Service id (statistics).
    pub service: u32,
    /// `bpf_jiffies64()` when the full path last saw this flow.
    pub synced: u64,
    /// NAT: the address written into the packet (backend's, or the VIP for replies).
    pub addr: A,
    /// NAT: the port written, network byte order.
    pub port: u16,
    pub _pad: u16,
    /// NAT: egress interface of the next hop.
    pub ifindex: u32,
    /// NAT: next hop MACs.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Explicit tail padding (none for IPv4; 4 bytes for IPv6).
    pub _tail: P,
}

/// An IPv4 flow-cache entry (64 bytes).
pub type CachedFlow = CachedFlowOf<u32, ()>;
/// An IPv6 flow-cache entry (104 bytes).
pub type CachedFlow6 = CachedFlowOf<Addr6, u32>;

/// Words of the `VIP_FILTER` and `NAT_FILTER` bitmaps (64 bits each): 256 Ki bits.
pub const FILTER_WORDS: u32 = 4096;

/// Where an address sits in an address filter: (word index, bit mask). A bit set
/// means "maybe": the hash maps (`VIPS`, `NAT_BACKENDS`) decide; a bit clear means
/// "certainly not", which lets traffic for other hosts skip every hash lookup.
#[inline(always)]
pub const fn filter_bit(addr: u32) -> (u32, u64) {
    filter_position(crate::hash::source_hash(addr))
}

/// The (word index, bit mask) an address hash `h` selects in an address filter.
#[inline(always)]
const fn filter_position(h: u32) -> (u32, u64) {
    ((h >> 6) % FILTER_WORDS, 1u64 << (h & 63))
}

const _: () = {
    assert!(core::mem::size_of::<CachedFlow>() == 64);
    assert!(FLOW_CACHE_SLOTS.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod_fast {
    // SAFETY: repr(C), integers and byte arrays only, explicit padding.
    unsafe impl aya::Pod for super::CachedFlow {}
}

// ---- IPv6 ------------------------------------------------------------------------
//
// IPv6 has maps of its own, so that IPv4 entries keep their size (a connection-table
// entry keyed by two 128-bit addresses is 40 bytes of key against 16): the datapath
// picks the family's maps once, at the ethertype. What both families share: service ids
// (one id space: `TABLES`, `SERVICE_STATS`), backend indexes (one index space:
// `BACKENDS`, `BACKEND_STATS`; an IPv6 backend's address is in `BACKEND_ADDRS6`),
// `TIMEOUTS`, `STATS`, and the two prefilter bitmaps (an IPv6 address sets the bit of
// [`filter_bit6`]).
//
// Addresses are `[u32; 4]`: the 16 bytes as they sit in the packet, read as four native
// integers (`u32::from_ne_bytes` of each 4-byte group; [`ipv6_words`] on the host side).

pub const MAP_SERVICES6: &str = "SERVICES6";
pub const MAP_VIPS6: &str = "VIPS6";
pub const MAP_BACKEND_ADDRS6: &str = "BACKEND_ADDRS6";
pub const MAP_CONNTRACK6: &str = "CONNTRACK6";
pub const MAP_HALF_OPEN6: &str = "HALF_OPEN6";
pub const MAP_NAT_BACKENDS6: &str = "NAT_BACKENDS6";
pub const MAP_FLOW_CACHE6: &str = "FLOW_CACHE6";
/// The program array of tail calls: `lb` -> `lb6` (every packet with ethertype
/// 0x86dd), `lb6` -> `lb6_icmp` (ICMPv6). Each program has a BPF stack of its own.
pub const MAP_PROGRAMS: &str = "PROGRAMS";
/// Slots of `PROGRAMS`.
pub const PROGRAM_SLOTS: u32 = 4;
/// `PROGRAMS` slot of the IPv6 program.
pub const PROG_IPV6: u32 = 0;
/// `PROGRAMS` slot of the ICMPv6 program.
pub const PROG_ICMP6: u32 = 1;
/// The tail-called programs: (slot in `PROGRAMS`, program name).
pub const TAIL_PROGRAMS: [(u32, &str); 2] = [(PROG_IPV6, "lb6"), (PROG_ICMP6, "lb6_icmp")];

/// An IPv6 address as the datapath keeps it: four 32-bit words in packet order, each
/// read as a native integer (network byte order within each word).
pub type Addr6 = [u32; 4];

/// The datapath form of IPv6 address `octets` (the same 16 bytes, as four words).
#[inline(always)]
pub const fn ipv6_words(octets: [u8; 16]) -> Addr6 {
    // SAFETY: both types are 16 bytes of plain data; each word holds its 4 bytes in
    // memory order, which is what `u32::from_ne_bytes` of each group gives.
    unsafe { core::mem::transmute(octets) }
}

/// The octets of a datapath IPv6 address (inverse of [`ipv6_words`]).
#[inline(always)]
pub const fn ipv6_octets(words: Addr6) -> [u8; 16] {
    // SAFETY: as in `ipv6_words`.
    unsafe { core::mem::transmute(words) }
}

/// Default size of `CONNTRACK6` (`conntrack.max_entries_ipv6`, configurable at start).
pub const DEFAULT_CONNTRACK6_ENTRIES: u32 = 1 << 18;

impl Service6 {
    /// The family-independent part of the record (the Maglev lookup and the flags).
    #[inline(always)]
    pub const fn common(&self) -> Service {
        Service {
            id: self.id,
            flags: self.flags,
            table_size: self.table_size,
            table_gen: self.table_gen,
            key: ServiceKey {
                vip: 0,
                port: 0,
                proto: 0,
                _pad: 0,
            },
        }
    }
}

/// A `BACKENDS` record of an IPv6 backend: its address is in `BACKEND_ADDRS6` at the
/// same index, and `Backend::addr` is 0.
pub const BACKEND_F_IPV6: u16 = 1 << 2;

/// The check word of an IPv6 half-open slot: a mix of every other field.
#[inline(always)]
pub const fn half_open_check6(key: &FlowKey6, backend: u32, epoch: u32, born: u32) -> u32 {
    let ports = key.sport as u32 | ((key.dport as u32) << 16);
    let mut x = ports.rotate_left(13)
        ^ (key.proto as u32).rotate_left(21)
        ^ backend.rotate_left(3)
        ^ epoch.rotate_left(17)
        ^ born.rotate_left(27);
    let mut i = 0;
    while i < 4 {
        x ^= key.src[i].rotate_left(5 * i as u32) ^ key.dst[i].rotate_left(7 + 5 * i as u32);
        i += 1;
    }
    x.wrapping_mul(0x9e37_79b1) | 1
}

/// Slots of the per-CPU IPv6 flow cache (a power of two). Its entries are 104 bytes
/// against 64 for IPv4, so it has half the slots (3.3 MiB per CPU).
pub const FLOW_CACHE6_SLOTS: u32 = 1 << 15;

/// Where an IPv6 address sits in the (shared) address filters.
#[inline(always)]
pub const fn filter_bit6(addr: &Addr6) -> (u32, u64) {
    filter_position(crate::hash::source_hash6(addr))
}

const _: () = {
    assert!(core::mem::size_of::<ServiceKey6>() == 20);
    assert!(core::mem::size_of::<Service6>() == 36);
    assert!(core::mem::size_of::<FlowKey6>() == 40);
    assert!(core::mem::size_of::<HalfOpen6>() == 56);
    assert!(core::mem::size_of::<NatBackendKey6>() == 20);
    assert!(core::mem::size_of::<NatBackend6>() == 28);
    assert!(core::mem::size_of::<CachedFlow6>() == 104);
    assert!(FLOW_CACHE6_SLOTS.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod6 {
    use super::*;
    // SAFETY: repr(C), integers and integer arrays only, explicit padding.
    unsafe impl aya::Pod for ServiceKey6 {}
    unsafe impl aya::Pod for Service6 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for HalfOpen6 {}
    unsafe impl aya::Pod for NatBackendKey6 {}
    unsafe impl aya::Pod for NatBackend6 {}
    unsafe impl aya::Pod for CachedFlow6 {}
}
