//! Every map of the datapath. Layouts and sizes live in `lb_common::maps`; the control
//! plane fills these, the datapath only reads them (except the connection table, the
//! half-open slots and the statistics, which it writes).
use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    BPF_F_NO_PREALLOC, Backend, CachedFlow, Counter, DEFAULT_CONNTRACK_ENTRIES, FILTER_WORDS,
    FLOW_CACHE_SLOTS, Flow, FlowKey, HALF_OPEN_SLOTS, HalfOpen, MAX_BACKENDS, MAX_NAT_BACKENDS,
    MAX_SERVICES, MAX_VIPS, NatBackend, NatBackendKey, Service, ServiceKey, TABLE_MAP_FLAGS,
    TABLE_SLOTS, TableChunk, Timeouts, TrafficStats, filter_bit,
};

const SERVICES_N: usize = MAX_SERVICES as usize;
const BACKENDS_N: usize = MAX_BACKENDS as usize;
const CONNTRACK_N: usize = DEFAULT_CONNTRACK_ENTRIES as usize;

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
/// marker per NAT backend address (port and protocol 0: see `is_nat_source`). Not
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

/// Whether `addr` may be in the filter (no false negatives).
#[inline(always)]
pub fn in_filter(filter: &Array<u64, { FILTER_WORDS as usize }>, addr: u32) -> bool {
    let (word, bit) = filter_bit(addr);
    filter.get(word).is_some_and(|w| w & bit != 0)
}

/// Whether `addr` is a VIP (the bitmap prefilter spares a hash lookup for others).
#[inline(always)]
pub fn is_vip(addr: u32) -> bool {
    in_filter(&VIP_FILTER, addr) && VIPS.get_ptr(addr).is_some()
}

/// Whether `addr` is the address of a NAT backend (its marker in `NAT_BACKENDS`).
#[inline(always)]
pub fn is_nat_source(addr: u32) -> bool {
    in_filter(&NAT_FILTER, addr)
        && NAT_BACKENDS
            .get_ptr(NatBackendKey {
                addr,
                port: 0,
                proto: 0,
                _pad: 0,
            })
            .is_some()
}

/// How to translate back the replies of the NAT backend `addr:port` (`proto`), when
/// it is one (the bitmap prefilter spares a hash lookup for other sources).
#[inline(always)]
pub fn nat_backend(addr: u32, port: u16, proto: u8) -> Option<NatBackend> {
    if !in_filter(&NAT_FILTER, addr) {
        return None;
    }
    let key = NatBackendKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: plain data, copied out; an update meanwhile gives this one packet either
    // the old or the new translation (the map is not preallocated: no element reuse).
    unsafe { NAT_BACKENDS.get(key).copied() }
}
