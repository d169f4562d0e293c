//! Every map of the datapath. Layouts and sizes live in `lb_common::maps`; the control
//! plane fills these, the datapath only reads them (except the connection table, the
//! half-open slots and the statistics, which it writes).
use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    macros::btf_map,
};
use lb_common::{
    Addr6, AddrWords, BPF_F_NO_PREALLOC, Backend, CachedFlow, CachedFlow6, Counter,
    DEFAULT_CONNTRACK_ENTRIES, DEFAULT_CONNTRACK6_ENTRIES, FILTER_WORDS, FLOW_CACHE_SLOTS,
    FLOW_CACHE6_SLOTS, Flow, FlowKey, FlowKey6, HALF_OPEN_SLOTS, HalfOpen, HalfOpen6, MAX_BACKENDS,
    MAX_NAT_BACKENDS, MAX_SERVICES, MAX_VIPS, NatBackend, NatBackend6, NatBackendKey,
    NatBackendKey6, NatBackendKeyOf, NatBackendOf, Service, Service6, ServiceKey, ServiceKey6,
    TABLE_MAP_FLAGS, TABLE_SLOTS, TableChunk, Timeouts, TrafficStats, filter_bit, filter_bit6,
};

const SERVICES_N: usize = MAX_SERVICES as usize;
const BACKENDS_N: usize = MAX_BACKENDS as usize;
const CONNTRACK_N: usize = DEFAULT_CONNTRACK_ENTRIES as usize;
const CONNTRACK6_N: usize = DEFAULT_CONNTRACK6_ENTRIES as usize;

#[btf_map]
pub static SERVICES: HashMap<ServiceKey, Service, SERVICES_N> = HashMap::new();

/// A copy of the record of service `key`. The kernel reuses a replaced element of a
/// hash map at once, even for another key, so a record read through the lookup's
/// pointer could change under us: the copy is checked against the key it carries, and
/// the lookup made once more if a reuse got in between.
#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<Service> {
    // SAFETY: plain data, copied out; see above for what a concurrent update can do.
    let svc = unsafe { *SERVICES.get(key)? };
    if svc.key == *key {
        return Some(svc);
    }
    // SAFETY: as above.
    let svc = unsafe { *SERVICES.get(key)? };
    (svc.key == *key).then_some(svc)
}

/// Maglev tables: two generations per service id ([`lb_common::table_index`]); the
/// service record's `table_gen` names the live one. The control plane fills the other
/// generation, flips `table_gen`, and writes the retired generation again only after
/// an RCU grace period, so a packet never sees a table being written. The last entry
/// ([`lb_common::GRACE_SLOT`]) is never read: updating it is how the control plane waits
/// for a grace period. The template's max_entries (1) does not bind: `BPF_F_INNER_MAP`
/// lets inner arrays of any size in.
#[btf_map]
pub static TABLES: ArrayOfMaps<
    Array<TableChunk, 1, { TABLE_MAP_FLAGS as usize }>,
    { TABLE_SLOTS as usize },
> = ArrayOfMaps::new();

#[btf_map]
pub static BACKENDS: Array<Backend, BACKENDS_N> = Array::new();

/// Client -> VIP flows. Size set by the control plane at load time. One LRU for all
/// CPUs (no `BPF_F_NO_COMMON_LRU`): per-CPU LRU lists would split the preallocated
/// entries evenly over every possible CPU, so with skewed RSS (or more possible than
/// online CPUs) the table would fill long before `max_entries`.
#[btf_map]
pub static CONNTRACK: LruHashMap<FlowKey, Flow, CONNTRACK_N> = LruHashMap::new();

/// TCP SYNs' backends until the handshake completes (see `lb_common::HalfOpen`).
#[btf_map]
pub static HALF_OPEN: Array<HalfOpen, { HALF_OPEN_SLOTS as usize }> = Array::new();

/// NAT backends -> how to translate their replies (from the configuration), and one
/// marker per NAT backend address (port and protocol 0: see `Addr::is_nat_source`). Not
/// preallocated: the kernel reuses a preallocated element at once, even for another key,
/// so a reader could copy another backend's translation; these elements are freed only
/// after a grace period.
#[btf_map]
pub static NAT_BACKENDS: HashMap<
    NatBackendKey,
    NatBackend,
    { 2 * MAX_NAT_BACKENDS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// The connection table's timeouts (one entry, written by the control plane).
#[btf_map]
pub static TIMEOUTS: Array<Timeouts, 1> = Array::new();

/// VIP addresses (value: number of services on the address).
#[btf_map]
pub static VIPS: HashMap<u32, u32, { MAX_VIPS as usize }> = HashMap::new();

#[btf_map]
pub static STATS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static SERVICE_STATS: PerCpuArray<TrafficStats, SERVICES_N> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<TrafficStats, BACKENDS_N> = PerCpuArray::new();

/// Per-CPU flow cache, indexed by a hash of the 5-tuple (see `lb_common::CachedFlow`).
#[btf_map]
pub static FLOW_CACHE: PerCpuArray<CachedFlow, { FLOW_CACHE_SLOTS as usize }> = PerCpuArray::new();

/// Bitmap prefilter of VIP addresses (see `lb_common::filter_bit`).
#[btf_map]
pub static VIP_FILTER: Array<u64, { FILTER_WORDS as usize }> = Array::new();

/// Bitmap prefilter of NAT backend addresses: only packets from these are looked up in
/// `NAT_BACKENDS`.
#[btf_map]
pub static NAT_FILTER: Array<u64, { FILTER_WORDS as usize }> = Array::new();

/// Whether the filter has the bit `(word, bit)` of an address (no false negatives).
#[inline(always)]
fn in_filter(filter: &Array<u64, { FILTER_WORDS as usize }>, (word, bit): (u32, u64)) -> bool {
    filter.get(word).is_some_and(|w| w & bit != 0)
}

/// An address of either family, as the datapath keeps it (`u32` for IPv4, [`Addr6`]
/// for IPv6), with the lookups that depend only on it.
pub trait Addr: AddrWords {
    /// Whether the VIP prefilter may hold it (no false negatives).
    fn maybe_vip(&self) -> bool;
    /// Whether it is in `VIPS` (`VIPS6`); ask [`Addr::maybe_vip`] first.
    fn in_vips(&self) -> bool;
    /// Whether it is a VIP (the bitmap prefilter spares a hash lookup for others).
    #[inline(always)]
    fn is_vip(&self) -> bool {
        self.maybe_vip() && self.in_vips()
    }
    /// Whether the NAT prefilter may hold it (no false negatives).
    fn maybe_nat_backend(&self) -> bool;
    /// Whether it is the address of a NAT backend (its marker in `NAT_BACKENDS`,
    /// `NAT_BACKENDS6`: port and protocol 0).
    fn is_nat_source(&self) -> bool;
    /// How to translate back the replies of the NAT backend `self:port` (`proto`), when
    /// it is one (the bitmap prefilter spares a hash lookup for other sources).
    fn nat_backend(&self, port: u16, proto: u8) -> Option<NatBackendOf<Self>>;
    /// The record of the service `self:port` (`proto`): see [`service`].
    fn service(&self, port: u16, proto: u8) -> Option<Service>;
}

impl Addr for u32 {
    #[inline(always)]
    fn maybe_vip(&self) -> bool {
        in_filter(&VIP_FILTER, filter_bit(*self))
    }
    #[inline(always)]
    fn in_vips(&self) -> bool {
        VIPS.get_ptr(*self).is_some()
    }
    #[inline(always)]
    fn maybe_nat_backend(&self) -> bool {
        in_filter(&NAT_FILTER, filter_bit(*self))
    }
    #[inline(always)]
    fn is_nat_source(&self) -> bool {
        self.maybe_nat_backend()
            && NAT_BACKENDS
                .get_ptr(NatBackendKey {
                    addr: *self,
                    port: 0,
                    proto: 0,
                    _pad: 0,
                })
                .is_some()
    }
    #[inline(always)]
    fn nat_backend(&self, port: u16, proto: u8) -> Option<NatBackend> {
        if !self.maybe_nat_backend() {
            return None;
        }
        let key = NatBackendKey {
            addr: *self,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: plain data, copied out; an update meanwhile gives this one packet either
        // the old or the new translation (the map is not preallocated: no element reuse).
        unsafe { NAT_BACKENDS.get(key).copied() }
    }
    #[inline(always)]
    fn service(&self, port: u16, proto: u8) -> Option<Service> {
        service(&ServiceKey {
            vip: *self,
            port,
            proto,
            _pad: 0,
        })
    }
}

impl Addr for Addr6 {
    #[inline(always)]
    fn maybe_vip(&self) -> bool {
        in_filter(&VIP_FILTER, filter_bit6(self))
    }
    #[inline(always)]
    fn in_vips(&self) -> bool {
        VIPS6.get_ptr(self).is_some()
    }
    #[inline(always)]
    fn maybe_nat_backend(&self) -> bool {
        in_filter(&NAT_FILTER, filter_bit6(self))
    }
    #[inline(always)]
    fn is_nat_source(&self) -> bool {
        self.maybe_nat_backend()
            && NAT_BACKENDS6
                .get_ptr(NatBackendKeyOf {
                    addr: *self,
                    port: 0,
                    proto: 0,
                    _pad: 0,
                })
                .is_some()
    }
    #[inline(always)]
    fn nat_backend(&self, port: u16, proto: u8) -> Option<NatBackend6> {
        if !self.maybe_nat_backend() {
            return None;
        }
        let key = NatBackendKeyOf {
            addr: *self,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: as for IPv4 (not preallocated either).
        unsafe { NAT_BACKENDS6.get(key).copied() }
    }
    #[inline(always)]
    fn service(&self, port: u16, proto: u8) -> Option<Service> {
        let key = ServiceKey6 {
            vip: *self,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: plain data, copied out; checked against its key as in `service`.
        let svc = unsafe { *SERVICES6.get(key)? };
        if same_key6(&svc.key, &key) {
            return Some(svc.common());
        }
        // SAFETY: as above.
        let svc = unsafe { *SERVICES6.get(key)? };
        same_key6(&svc.key, &key).then(|| svc.common())
    }
}

#[inline(always)]
fn same_key6(a: &ServiceKey6, b: &ServiceKey6) -> bool {
    a.port == b.port && a.proto == b.proto && a.vip.same(&b.vip)
}

/// The programs `lb` tail-calls: [`PROG_IPV6`] (`lb6`), which tail-calls [`PROG_ICMP6`]
/// (`lb6_icmp`). Filled by the control plane
/// with the object's other programs (a tail call gives IPv6 a BPF stack of its own,
/// and keeps its code out of the IPv4 program).
#[btf_map]
pub static PROGRAMS: ProgramArray<{ lb_common::PROGRAM_SLOTS as usize }> = ProgramArray::new();
/// Slot of the IPv6 program in [`PROGRAMS`].
pub const PROG_IPV6: u32 = lb_common::PROG_IPV6;
/// Slot of the ICMPv6 program in [`PROGRAMS`].
pub const PROG_ICMP6: u32 = lb_common::PROG_ICMP6;

// ---- IPv6 (see `lb_common::maps`: the family's own maps; the rest is shared) ----

#[btf_map]
pub static SERVICES6: HashMap<ServiceKey6, Service6, SERVICES_N> = HashMap::new();

/// IPv6 VIP addresses (value: number of services on the address).
#[btf_map]
pub static VIPS6: HashMap<Addr6, u32, { MAX_VIPS as usize }> = HashMap::new();

/// The address of each IPv6 backend (its `BACKENDS` record has `BACKEND_F_IPV6`).
#[btf_map]
pub static BACKEND_ADDRS6: Array<Addr6, BACKENDS_N> = Array::new();

/// Client -> VIP flows over IPv6 (sized by the control plane at load time; one LRU for
/// all CPUs, as `CONNTRACK`).
#[btf_map]
pub static CONNTRACK6: LruHashMap<FlowKey6, Flow, CONNTRACK6_N> = LruHashMap::new();

#[btf_map]
pub static HALF_OPEN6: Array<HalfOpen6, { HALF_OPEN_SLOTS as usize }> = Array::new();

/// As `NAT_BACKENDS` (markers included, not preallocated), for IPv6 NAT backends.
#[btf_map]
pub static NAT_BACKENDS6: HashMap<
    NatBackendKey6,
    NatBackend6,
    { 2 * MAX_NAT_BACKENDS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

#[btf_map]
pub static FLOW_CACHE6: PerCpuArray<CachedFlow6, { FLOW_CACHE6_SLOTS as usize }> =
    PerCpuArray::new();
