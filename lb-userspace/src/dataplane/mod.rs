//! The datapath's maps, seen from userspace: the one place that writes them.
//!
//! Everything else in the control plane computes *what* the maps should hold (pure
//! code, no aya) and hands it to a [`Dataplane`], which knows *how* to write it without
//! a packet ever seeing a half-done change:
//! - a Maglev table is written into the service's table generation that no packet
//!   reads, then the service record flips to it (see [`Dataplane::set_table`]);
//! - a backend record is complete before any table slot names its index.
//!
//! Readers that run beside the writer get handles of their own: [`Counters`] (traffic
//! and datapath counters) and [`ConnTable`] (the connection tables).
use std::{
    collections::HashMap as StdHashMap,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use self::error::{Context as _, Error, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap, InnerMap, MapData, ProgramArray},
    programs::{
        TestRun as _, TestRunOptions, TestRunResult, Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Addr6, Backend, Flow, FlowKey, FlowKey6, GRACE_SLOT, HalfOpen, HalfOpen6, MAP_BACKEND_ADDRS6,
    MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONNTRACK, MAP_CONNTRACK6, MAP_HALF_OPEN, MAP_HALF_OPEN6,
    MAP_NAT_BACKENDS, MAP_NAT_BACKENDS6, MAP_NAT_FILTER, MAP_PROGRAMS, MAP_SERVICE_STATS,
    MAP_SERVICES, MAP_SERVICES6, MAP_STATS, MAP_TABLES, MAP_TIMEOUTS, MAP_VIP_FILTER, MAP_VIPS,
    MAP_VIPS6, NatBackend, NatBackend6, NatBackendKey, NatBackendKey6, PINNED_MAPS, Service,
    Service6, ServiceKey, ServiceKey6, TABLE_CHUNK, TABLE_MAP_FLAGS, TableChunk, Timeouts,
    TrafficStats, table_index,
};

pub mod adopt;
pub mod batch;
pub mod conntrack;
pub mod counters;
pub mod error;
mod filter;
pub mod grace;
pub mod inspect;
mod maps;
pub mod object;
pub mod pins;
mod tables;

pub use self::{conntrack::ConnTable, counters::Counters};
use self::{
    filter::{AddressFilter, FilterAddr},
    grace::Grace,
    maps::{get_if_present, map_data, memlock, remove_if_present, set_count, take},
    object::{self as ebpf, AttachMode},
    pins::PinDir,
    tables::{Mmap, TableGens, fill},
};

/// Sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Entries of `CONNTRACK` (`conntrack.max_entries`).
    pub conntrack_entries: u32,
    /// Connections `CONNTRACK6` must hold (`conntrack.max_entries_ipv6`).
    pub conntrack6_entries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            conntrack_entries: lb_common::DEFAULT_CONNTRACK_ENTRIES,
            conntrack6_entries: lb_common::DEFAULT_CONNTRACK6_ENTRIES,
        }
    }
}

/// A service record as the control plane last wrote it (for the table flips).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    V4(ServiceKey, Service),
    V6(ServiceKey6, Service),
}

impl Record {
    fn svc(&self) -> &Service {
        match self {
            Record::V4(_, s) | Record::V6(_, s) => s,
        }
    }
    fn svc_mut(&mut self) -> &mut Service {
        match self {
            Record::V4(_, s) | Record::V6(_, s) => s,
        }
    }
}

/// The loaded XDP object and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Reader of the datapath's log ring buffer (rare events only; see `stats::rare` in
    /// lb-ebpf), until [`Dataplane::take_logger`] hands it to its own task. It must live
    /// as long as the program: dropping it closes the map.
    logger: Option<Logger>,
    /// The program `test_run` runs (the production one unless loaded otherwise).
    program: String,
    /// (map name, max entries, kernel memory in bytes), read at load time.
    memory: Vec<MapMemory>,
    services: HashMap<MapData, ServiceKey, Service>,
    tables: ArrayOfMaps<MapData, Array<MapData, TableChunk>>,
    /// The table generations of each service id (see `set_table`).
    gens: StdHashMap<u32, TableGens>,
    /// The service records written, by service id (for the table flips).
    records: StdHashMap<u32, Record>,
    /// Grace periods after table flips.
    grace: Grace,
    backends: Array<MapData, Backend>,
    vips: HashMap<MapData, u32, u32>,
    nat_backends: HashMap<MapData, NatBackendKey, NatBackend>,
    /// The keys `NAT_BACKENDS` holds (the NAT prefilter has their addresses).
    nat_keys: std::collections::BTreeSet<NatBackendKey>,
    timeouts: Array<MapData, Timeouts>,
    vip_filter: AddressFilter,
    nat_filter: AddressFilter,
    counters: Counters,
    conns: ConnTable,
    /// The programs `lb` tail-calls (IPv6).
    tail_calls: ProgramArray<MapData>,
    services6: HashMap<MapData, ServiceKey6, Service6>,
    vips6: HashMap<MapData, Addr6, u32>,
    backend_addrs6: Array<MapData, Addr6>,
    nat_backends6: HashMap<MapData, NatBackendKey6, NatBackend6>,
    /// The keys `NAT_BACKENDS6` holds.
    nat_keys6: std::collections::BTreeSet<NatBackendKey6>,
}

/// How an interface came to run the datapath (see [`Dataplane::attach_pinned`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Newly attached.
    New { prog_id: u32 },
    /// Adopted as it was (same object).
    Kept { prog_id: u32 },
    /// Adopted, and switched atomically from one program to this object's.
    Replaced { from: u32, to: u32 },
}

impl Attached {
    /// The program the interface runs now.
    pub fn prog_id(self) -> u32 {
        match self {
            Attached::New { prog_id } | Attached::Kept { prog_id } => prog_id,
            Attached::Replaced { to, .. } => to,
        }
    }
}

/// Checks every pinned map is what this binary reads and writes: its kernel type, key
/// and value sizes, and the connection table's size.
fn check_pinned_shapes(ebpf: &Ebpf, limits: Limits, pins: &PinDir) -> Result<()> {
    use lb_common::TrafficStats as Ts;
    let expected: [(&str, usize, usize); 20] = [
        (MAP_SERVICES, size_of::<ServiceKey>(), size_of::<Service>()),
        (MAP_TABLES, 4, 4),
        (MAP_BACKENDS, 4, size_of::<Backend>()),
        (MAP_CONNTRACK, size_of::<FlowKey>(), size_of::<Flow>()),
        (MAP_HALF_OPEN, 4, size_of::<HalfOpen>()),
        (
            MAP_NAT_BACKENDS,
            size_of::<NatBackendKey>(),
            size_of::<NatBackend>(),
        ),
        (MAP_TIMEOUTS, 4, size_of::<Timeouts>()),
        (MAP_VIPS, 4, 4),
        (MAP_VIP_FILTER, 4, 8),
        (MAP_NAT_FILTER, 4, 8),
        (MAP_STATS, 4, 8),
        (MAP_SERVICE_STATS, 4, size_of::<Ts>()),
        (MAP_BACKEND_STATS, 4, size_of::<Ts>()),
        (
            MAP_SERVICES6,
            size_of::<ServiceKey6>(),
            size_of::<Service6>(),
        ),
        (MAP_VIPS6, size_of::<Addr6>(), 4),
        (MAP_BACKEND_ADDRS6, 4, size_of::<Addr6>()),
        (MAP_CONNTRACK6, size_of::<FlowKey6>(), size_of::<Flow>()),
        (MAP_HALF_OPEN6, 4, size_of::<HalfOpen6>()),
        (
            MAP_NAT_BACKENDS6,
            size_of::<NatBackendKey6>(),
            size_of::<NatBackend6>(),
        ),
        (MAP_PROGRAMS, 4, 4),
    ];
    for (name, key, value) in expected {
        let data = ebpf
            .map(name)
            .and_then(map_data)
            .with_context(|| format!("the eBPF object has no map {name}"))?;
        let info = data
            .info()
            .with_context(|| format!("reading the info of map {name}"))?;
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            return Err(Error::Invalid(format!(
                "the pinned map {} has keys of {} and values of {} bytes, where this lb writes {key} and {value}: \
                 the pins come from another build of lb; remove them with `lb detach --pin-dir {}` \
                 (their connections are lost) and start again",
                pins.map_path(name).display(),
                info.key_size(),
                info.value_size(),
                pins.path().display()
            )));
        }
        for (map, configured, table, setting) in [
            (
                MAP_CONNTRACK,
                limits.conntrack_entries,
                "connection table",
                "conntrack.max_entries",
            ),
            (
                MAP_CONNTRACK6,
                limits.conntrack6_entries,
                "IPv6 connection table",
                "conntrack.max_entries_ipv6",
            ),
        ] {
            if name == map && info.max_entries() != configured {
                let held = info.max_entries();
                return Err(Error::Invalid(format!(
                    "the pinned {table} in {} has {held} entries and the configuration asks for {configured} \
                     ({setting}): set it back to {held}, or stop lb, remove the datapath with \
                     `lb detach --pin-dir {}` (its connections are lost) and start again",
                    pins.path().display(),
                    pins.path().display()
                )));
            }
        }
    }
    Ok(())
}

/// The reader of the datapath's log ring buffer.
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Kernel memory of one map.
#[derive(Clone, Debug)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    /// What the kernel charges for the map (`memlock` in its fdinfo).
    pub bytes: u64,
}

impl Dataplane {
    /// Loads the embedded object and the XDP program into the kernel (not attached).
    pub fn load(limits: Limits) -> Result<Self> {
        Self::load_object(ebpf::OBJECT, &[ebpf::PROGRAM], limits)
    }

    /// Loads `object` with the programs `programs` (the first is the one `test_run`
    /// runs); the object must define lb's maps. Used by the benchmarks and tests.
    pub fn load_object(object: &[u8], programs: &[&str], limits: Limits) -> Result<Self> {
        Self::open(object, programs, limits, None)
    }

    /// Loads `object` over the pins of `pins`: maps pinned there are reused with what
    /// they hold (connections, tables, counters), the others are created and pinned. The
    /// program is loaded only when an interface needs it ([`Self::attach_pinned`]).
    /// Refuses pinned maps whose key, value or size are not what this binary writes.
    pub fn load_pinned(object: &[u8], limits: Limits, pins: &PinDir) -> Result<Self> {
        Self::open(object, &[], limits, Some(pins))
    }

    fn open(
        object: &[u8],
        programs: &[&str],
        limits: Limits,
        pins: Option<&PinDir>,
    ) -> Result<Self> {
        if limits.conntrack_entries < 1024 || limits.conntrack6_entries < 1024 {
            return Err(Error::Invalid(format!(
                "the connection tables need at least 1024 entries (got {} and {} for IPv6)",
                limits.conntrack_entries, limits.conntrack6_entries
            )));
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_CONNTRACK, limits.conntrack_entries);
        loader.map_max_entries(MAP_CONNTRACK6, limits.conntrack6_entries);
        if let Some(pins) = pins {
            for name in PINNED_MAPS {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader.load(object).context(
            "loading the lb eBPF object into the kernel (are you root, with BPF enabled?)",
        )?;
        if let Some(pins) = pins {
            check_pinned_shapes(&ebpf, limits, pins)?;
        }
        // Objects built from lb-ebpf's library carry its log ring buffer.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(aya_log::Error::MapNotFound) => None,
            Err(e) => return Err(e).context("opening the datapath's log ring buffer"),
        };
        for name in programs {
            let prog = ebpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?;
            let prog = <&mut Xdp>::try_from(prog)
                .with_context(|| format!("program {name} is not an XDP program"))?;
            ebpf::load(prog, name)?;
        }
        let mut tail_calls: ProgramArray<MapData> = take(&mut ebpf, MAP_PROGRAMS)?;
        if !programs.is_empty() {
            ebpf::install_tail_programs(&mut ebpf, &mut tail_calls)?;
        }
        let mut memory = Vec::new();
        for (name, map) in ebpf.maps() {
            if let Some(data) = map_data(map) {
                let info = data
                    .info()
                    .with_context(|| format!("reading the info of map {name}"))?;
                memory.push(MapMemory {
                    name: name.to_string(),
                    max_entries: info.max_entries(),
                    bytes: memlock(data.fd().as_fd())?,
                });
            }
        }
        memory.sort_by(|a, b| a.name.cmp(&b.name));
        let grace = {
            // The thread owns copies of the fds: TABLES and a one-element inner array.
            let outer = map_data(
                ebpf.map(MAP_TABLES)
                    .with_context(|| format!("the eBPF object has no map {MAP_TABLES}"))?,
            )
            .with_context(|| format!("map {MAP_TABLES} has an unexpected type"))?
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the file descriptor of TABLES")?;
            let inner = Array::<MapData, TableChunk>::create(1, TABLE_MAP_FLAGS)
                .context("creating the grace-period map")?;
            let inner = owned_fd(&inner).context("duplicating the grace-period map's fd")?;
            Grace::with_map_in_map(outer, GRACE_SLOT, inner)
        };
        Ok(Dataplane {
            logger,
            program: programs.first().unwrap_or(&ebpf::PROGRAM).to_string(),
            memory,
            services: take(&mut ebpf, MAP_SERVICES)?,
            tables: take(&mut ebpf, MAP_TABLES)?,
            gens: Default::default(),
            records: Default::default(),
            grace,
            backends: take(&mut ebpf, MAP_BACKENDS)?,
            vips: take(&mut ebpf, MAP_VIPS)?,
            nat_backends: take(&mut ebpf, MAP_NAT_BACKENDS)?,
            nat_keys: Default::default(),
            timeouts: take(&mut ebpf, MAP_TIMEOUTS)?,
            vip_filter: AddressFilter::new(take(&mut ebpf, MAP_VIP_FILTER)?),
            nat_filter: AddressFilter::new(take(&mut ebpf, MAP_NAT_FILTER)?),
            counters: Counters::new(
                take(&mut ebpf, MAP_STATS)?,
                take(&mut ebpf, MAP_SERVICE_STATS)?,
                take(&mut ebpf, MAP_BACKEND_STATS)?,
            ),
            conns: ConnTable::new(
                take(&mut ebpf, MAP_CONNTRACK)?,
                take(&mut ebpf, MAP_CONNTRACK6)?,
            ),
            tail_calls,
            services6: take(&mut ebpf, MAP_SERVICES6)?,
            vips6: take(&mut ebpf, MAP_VIPS6)?,
            backend_addrs6: take(&mut ebpf, MAP_BACKEND_ADDRS6)?,
            nat_backends6: take(&mut ebpf, MAP_NAT_BACKENDS6)?,
            nat_keys6: Default::default(),
            ebpf,
        })
    }

    /// Attaches the program to `iface` (for as long as this value lives).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        ebpf::attach(&mut self.ebpf, iface, mode)
    }

    /// Loads the XDP program into the kernel, unless it is loaded already; returns its id.
    /// The programs it tail-calls are loaded and installed with it (before it is
    /// attached, or switched to).
    fn load_program(&mut self) -> Result<u32> {
        let prog = ebpf::program_mut(&mut self.ebpf)?;
        if prog.fd().is_err() {
            ebpf::load(prog, ebpf::PROGRAM)?;
        }
        let id = prog.info().context("reading the XDP program's info")?.id();
        ebpf::install_tail_programs(&mut self.ebpf, &mut self.tail_calls)?;
        Ok(id)
    }

    /// Makes `iface` (index `ifindex`) run the datapath through a link pinned in `pins`:
    /// - a pinned link already on the interface stays, running its program, unless
    ///   `replace`: then it is switched to this object's program in one atomic update
    ///   (`bpf_link_update`: no packet meets the interface without a program);
    /// - a pinned link whose interface is gone (or was recreated) is removed;
    /// - otherwise the program is attached and the new link pinned.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        ifindex: u32,
        mode: AttachMode,
        pins: &PinDir,
        replace: bool,
    ) -> Result<Attached> {
        let path = pins.link_path(iface);
        if path.exists() {
            let ids = pins::link_ids(&path)?;
            if ids.ifindex == ifindex {
                if !replace {
                    return Ok(Attached::Kept {
                        prog_id: ids.prog_id,
                    });
                }
                let to = self.load_program()?;
                let link = PinnedLink::from_pin(&path)
                    .with_context(|| format!("opening the link {}", path.display()))?;
                let link = XdpLink::try_from(FdLink::from(link))
                    .with_context(|| format!("{} is not an XDP link", path.display()))?;
                let prog = ebpf::program_mut(&mut self.ebpf)?;
                let id = prog.attach_to_link(link).with_context(|| {
                    format!("replacing the program of the link {}", path.display())
                })?;
                // The pin keeps the link; this process needs no handle on it.
                drop(prog.take_link(id).context("releasing the updated link")?);
                return Ok(Attached::Replaced {
                    from: ids.prog_id,
                    to,
                });
            }
            let stale = PinnedLink::from_pin(&path)
                .with_context(|| format!("opening the link {}", path.display()))?;
            drop(
                stale
                    .unpin()
                    .with_context(|| format!("removing the stale link {}", path.display()))?,
            );
        }
        let prog_id = self.load_program()?;
        let prog = ebpf::program_mut(&mut self.ebpf)?;
        let id = ebpf::attach_program(prog, iface, mode)?;
        let link = prog.take_link(id).context("taking the new link")?;
        let link = FdLink::try_from(link).with_context(|| {
            format!("the XDP link of {iface} cannot be pinned (this kernel attached it through netlink, without a BPF link)")
        })?;
        drop(
            link.pin(&path)
                .with_context(|| format!("pinning the link {}", path.display()))?,
        );
        Ok(Attached::New { prog_id })
    }

    /// Prints what the datapath logged since the last call (through the `log` crate).
    pub fn drain_logs(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// Hands the reader of the datapath's log to its own task (`None` when the object
    /// has no log, or it was taken already).
    pub fn take_logger(&mut self) -> Option<Logger> {
        self.logger.take()
    }

    /// Handles of their own on the counters, for readers beside the writer.
    pub fn counters_handle(&self) -> Result<Counters> {
        self.counters.try_clone()
    }

    /// Handles of their own on the connection tables, for readers beside the writer.
    pub fn conn_table(&self) -> Result<ConnTable> {
        self.conns.try_clone()
    }

    /// Kernel memory of every map, as loaded.
    pub fn memory(&self) -> &[MapMemory] {
        &self.memory
    }

    /// Kernel memory of one Maglev table of `size` slots.
    pub fn table_memory(size: u32) -> Result<u64> {
        let chunks = size.div_ceil(TABLE_CHUNK as u32);
        let inner = Array::<MapData, TableChunk>::create(chunks, TABLE_MAP_FLAGS)
            .context("creating a Maglev table map")?;
        // SAFETY: the fd is owned by `inner`, alive for this call.
        memlock(unsafe { std::os::fd::BorrowedFd::borrow_raw(raw_fd(&inner)) })
    }

    /// The loaded object, for maps and programs beyond lb's own (benchmarks).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Runs one frame through the program with BPF_PROG_TEST_RUN. `ingress_ifindex` 0
    /// means the loopback device. Returns the result and the output frame.
    pub fn test_run(&self, frame: &[u8], ingress_ifindex: u32) -> Result<(TestRunResult, Vec<u8>)> {
        self.run(&self.program, frame, ingress_ifindex, 1)
    }

    /// Runs `frame` through program `name`, `repeat` times on the same buffer.
    pub fn run(
        &self,
        name: &str,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<(TestRunResult, Vec<u8>)> {
        let prog = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?;
        let prog = <&Xdp>::try_from(prog)
            .with_context(|| format!("program {name} is not an XDP program"))?;
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: the kernel wants data = 0 and data_end = the frame length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
                repeat,
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok((result, out))
    }

    /// Writes a service record; its `table_gen` and `key` are set here (callers leave
    /// them at their defaults): the live generation of its table, and `key`.
    pub fn set_service(&mut self, key: ServiceKey, svc: Service) -> Result<()> {
        self.put_record(Record::V4(key, svc))
    }

    /// Writes the record of an IPv6 service (`svc` as for [`Self::set_service`]).
    pub fn set_service6(&mut self, key: ServiceKey6, svc: Service) -> Result<()> {
        self.put_record(Record::V6(key, svc))
    }

    /// Writes a service record with the live table generation of its id.
    fn put_record(&mut self, mut record: Record) -> Result<()> {
        let id = record.svc().id;
        record.svc_mut().table_gen = self.gens.get(&id).map_or(0, |g| g.live);
        self.write_record(&record)?;
        // One record per key: a key that now names another id (a service replaced under
        // the same key) no longer belongs to the old id, whose table flips must not
        // touch it.
        self.records
            .retain(|i, r| *i == id || !same_key(r, &record));
        self.records.insert(id, record);
        Ok(())
    }

    /// Writes a record as it is (with its own key).
    fn write_record(&mut self, record: &Record) -> Result<()> {
        match *record {
            Record::V4(key, svc) => self
                .services
                .insert(key, Service { key, ..svc }, 0)
                .context("writing SERVICES"),
            Record::V6(key, svc) => self
                .services6
                .insert(
                    key,
                    Service6 {
                        id: svc.id,
                        flags: svc.flags,
                        table_size: svc.table_size,
                        table_gen: svc.table_gen,
                        key,
                    },
                    0,
                )
                .context("writing SERVICES6"),
        }
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        remove_if_present(&mut self.services, key).context("removing from SERVICES")?;
        self.records
            .retain(|_, r| !matches!(r, Record::V4(k, _) if k == key));
        Ok(())
    }

    pub fn remove_service6(&mut self, key: &ServiceKey6) -> Result<()> {
        remove_if_present(&mut self.services6, key).context("removing from SERVICES6")?;
        self.records
            .retain(|_, r| !matches!(r, Record::V6(k, _) if k == key));
        Ok(())
    }

    pub fn service6(&self, key: &ServiceKey6) -> Result<Option<Service6>> {
        get_if_present(&self.services6, key).context("reading SERVICES6")
    }

    pub fn service(&self, key: &ServiceKey) -> Result<Option<Service>> {
        get_if_present(&self.services, key).context("reading SERVICES")
    }

    /// Replaces the Maglev table of service `id` with `slots` (backend indexes or
    /// [`NO_BACKEND`]); no packet ever sees a partly written table.
    ///
    /// Each service id has two table generations in `TABLES`, and its record names the
    /// live one. The new table goes into the other generation, which no packet reads:
    /// written in place through its mapping when it has the right size (about 40 µs for
    /// 65,537 slots), else built complete in a new inner array and put in `TABLES` (an
    /// update the kernel makes wait for an RCU grace period, 10–30 ms: only on a change
    /// of `table_size`). Then the record is rewritten with `table_gen` flipped, one
    /// atomic update. The retired generation is written again only after a grace
    /// period has passed since the flip (waited for in the background; see `grace.rs`).
    ///
    /// An empty `slots` is a one-element table of `NO_BACKEND` (the service drops new
    /// flows); for an id with no service record (the service is gone) it frees both
    /// generations instead.
    pub fn set_table(&mut self, id: u32, slots: &[u32]) -> Result<()> {
        let record = self.records.get(&id).copied();
        if slots.is_empty() && record.is_none() {
            return self.free_tables(id);
        }
        let gens = self.gens.entry(id).or_default();
        let target = gens.target();
        if target != gens.live {
            self.grace.wait(gens.retired)?;
        }
        let chunks = slots.len().div_ceil(TABLE_CHUNK).max(1);
        let bytes = chunks * size_of::<TableChunk>();
        match &mut gens.maps[target as usize] {
            Some(mapped) if mapped.bytes == bytes => fill(mapped.as_u32_slice_mut(), slots),
            slot => {
                let inner = Array::<MapData, TableChunk>::create(chunks as u32, TABLE_MAP_FLAGS)
                    .context("creating a Maglev table map")?;
                let mut mapped =
                    Mmap::new(raw_fd(&inner), bytes).context("mapping a Maglev table")?;
                fill(mapped.as_u32_slice_mut(), slots);
                self.tables
                    .set(table_index(id, target), &inner, 0)
                    .context("putting a Maglev table into TABLES")?;
                *slot = Some(mapped);
            }
        }
        if target != gens.live {
            gens.live = target;
            gens.retired = self.grace.request();
            if let Some(mut record) = record {
                record.svc_mut().table_gen = target;
                self.write_record(&record)?;
                self.records.insert(id, record);
            }
        }
        Ok(())
    }

    /// Asks for an RCU grace period from now on (see `grace.rs`); returns its ticket.
    pub fn grace_request(&self) -> u64 {
        self.grace.request()
    }

    /// Whether the grace period of `ticket` has passed.
    pub fn grace_passed(&self, ticket: u64) -> bool {
        self.grace.passed(ticket)
    }

    /// Frees both table generations of a service id that has no record any more.
    fn free_tables(&mut self, id: u32) -> Result<()> {
        let Some(gens) = self.gens.remove(&id) else {
            return Ok(());
        };
        for (generation, mapped) in gens.maps.iter().enumerate() {
            if mapped.is_some() {
                let empty = Array::<MapData, TableChunk>::create(1, TABLE_MAP_FLAGS)
                    .context("creating an empty Maglev table map")?;
                let mut words = Mmap::new(raw_fd(&empty), size_of::<TableChunk>())
                    .context("mapping a Maglev table")?;
                fill(words.as_u32_slice_mut(), &[]);
                self.tables
                    .set(table_index(id, generation as u32), &empty, 0)
                    .context("freeing a Maglev table")?;
            }
        }
        Ok(())
    }

    /// The live table of service `id` (for tests and tools): its first `size` slots, or
    /// `None` when the id has no table.
    pub fn table(&self, id: u32, size: u32) -> Result<Option<Vec<u32>>> {
        let Some(mapped) = self
            .gens
            .get(&id)
            .and_then(|g| g.maps[g.live as usize].as_ref())
        else {
            return Ok(None);
        };
        let words = mapped.as_u32_slice();
        if words.len() < size as usize {
            return Err(Error::Invalid(format!(
                "table of service {id} is shorter than {size}"
            )));
        }
        Ok(Some(words[..size as usize].to_vec()))
    }

    pub fn set_backend(&mut self, index: u32, be: Backend) -> Result<()> {
        self.backends.set(index, be, 0).context("writing BACKENDS")
    }

    pub fn backend(&self, index: u32) -> Result<Backend> {
        self.backends.get(&index, 0).context("reading BACKENDS")
    }

    /// Writes the address of an IPv6 backend (before its `BACKENDS` record names it).
    pub fn set_backend_addr6(&mut self, index: u32, addr: Addr6) -> Result<()> {
        self.backend_addrs6
            .set(index, addr, 0)
            .context("writing BACKEND_ADDRS6")
    }

    pub fn backend_addr6(&self, index: u32) -> Result<Addr6> {
        self.backend_addrs6
            .get(&index, 0)
            .context("reading BACKEND_ADDRS6")
    }

    /// Sets the number of services on a VIP address (0 removes it). The address's
    /// prefilter bit is set before it enters `VIPS` and cleared after it leaves.
    pub fn set_vip(&mut self, addr: u32, services: u32) -> Result<()> {
        let a = FilterAddr::V4(addr);
        if services > 0 {
            self.vip_filter.add(a).context("writing VIP_FILTER")?;
        }
        set_count(&mut self.vips, addr, services).context("writing VIPS")?;
        if services == 0 {
            self.vip_filter.remove(a).context("writing VIP_FILTER")?;
        }
        Ok(())
    }

    /// As [`Self::set_vip`], for an IPv6 VIP (`VIPS6`; the prefilter is shared).
    pub fn set_vip6(&mut self, addr: Addr6, services: u32) -> Result<()> {
        let a = FilterAddr::V6(addr);
        if services > 0 {
            self.vip_filter.add(a).context("writing VIP_FILTER")?;
        }
        set_count(&mut self.vips6, addr, services).context("writing VIPS6")?;
        if services == 0 {
            self.vip_filter.remove(a).context("writing VIP_FILTER")?;
        }
        Ok(())
    }

    /// Sets (or, with `None`, removes) how a NAT backend's replies are translated back.
    /// The backend's address enters the NAT prefilter and gets its marker entry (port
    /// and protocol 0: "a NAT backend's address", for the datapath's drop of its broken
    /// packets) before its first entry, and leaves both after its last, like
    /// [`Self::set_vip`].
    pub fn set_nat_backend(&mut self, key: NatBackendKey, back: Option<NatBackend>) -> Result<()> {
        set_nat(
            &mut self.nat_backends,
            &mut self.nat_keys,
            &mut self.nat_filter,
            FilterAddr::V4(key.addr),
            key,
            back,
        )
        .context("writing NAT_BACKENDS")
    }

    /// As [`Self::set_nat_backend`], for an IPv6 NAT backend (`NAT_BACKENDS6`).
    pub fn set_nat_backend6(
        &mut self,
        key: NatBackendKey6,
        back: Option<NatBackend6>,
    ) -> Result<()> {
        set_nat(
            &mut self.nat_backends6,
            &mut self.nat_keys6,
            &mut self.nat_filter,
            FilterAddr::V6(key.addr),
            key,
            back,
        )
        .context("writing NAT_BACKENDS6")
    }

    pub fn nat_backend6(&self, key: &NatBackendKey6) -> Result<Option<NatBackend6>> {
        get_if_present(&self.nat_backends6, key).context("reading NAT_BACKENDS6")
    }

    /// The reply translation of a NAT backend, if it has one (tests and tools).
    pub fn nat_backend(&self, key: &NatBackendKey) -> Result<Option<NatBackend>> {
        get_if_present(&self.nat_backends, key).context("reading NAT_BACKENDS")
    }

    pub fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<()> {
        self.timeouts
            .set(0, timeouts, 0)
            .context("writing TIMEOUTS")
    }

    /// Global counters, summed over CPUs, in [`lb_common::Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<u64>> {
        self.counters.counters()
    }

    pub fn service_stats(&self, id: u32) -> Result<TrafficStats> {
        self.counters.service_stats(id)
    }

    pub fn backend_stats(&self, index: u32) -> Result<TrafficStats> {
        self.counters.backend_stats(index)
    }

    /// Zeroes the statistics of a backend index (before it is given to a new backend).
    pub fn reset_backend_stats(&mut self, index: u32) -> Result<()> {
        self.counters.reset_backend_stats(index)
    }

    /// Zeroes the statistics of a service id (before it is given to a new service).
    pub fn reset_service_stats(&mut self, id: u32) -> Result<()> {
        self.counters.reset_service_stats(id)
    }

    /// Every connection-table entry (a snapshot; entries may come and go meanwhile).
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.conns.flows()
    }

    /// Deletes connection-table entries (missing ones are fine).
    pub fn remove_flows(&mut self, keys: &[FlowKey]) -> Result<()> {
        self.conns.remove_flows(keys)
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>> {
        self.conns.flow(key)
    }

    pub fn insert_flow(&mut self, key: FlowKey, flow: Flow) -> Result<()> {
        self.conns.insert_flow(key, flow)
    }

    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        self.conns.remove_flow(key)
    }

    /// Every IPv6 connection-table entry (a snapshot).
    pub fn flows6(&self) -> Result<Vec<(FlowKey6, Flow)>> {
        self.conns.flows6()
    }

    pub fn flow6(&self, key: &FlowKey6) -> Result<Option<Flow>> {
        self.conns.flow6(key)
    }

    pub fn insert_flow6(&mut self, key: FlowKey6, flow: Flow) -> Result<()> {
        self.conns.insert_flow6(key, flow)
    }

    pub fn remove_flow6(&mut self, key: &FlowKey6) -> Result<()> {
        self.conns.remove_flow6(key)
    }
}

/// Whether two records are for the same service key.
fn same_key(a: &Record, b: &Record) -> bool {
    match (a, b) {
        (Record::V4(x, _), Record::V4(y, _)) => x == y,
        (Record::V6(x, _), Record::V6(y, _)) => x == y,
        _ => false,
    }
}

/// Sets (or, with `None`, removes) a NAT backend's reply translation in `map`, keeping
/// `keys` (what the map holds) and the NAT prefilter with it: the backend's address
/// `addr` enters the prefilter and gets its marker entry (port and protocol 0: "a NAT
/// backend's address", for the datapath's drop of its broken packets) before its first
/// key, and leaves both after its last.
fn set_nat<A: Copy + Ord + Default, V: aya::Pod + Default>(
    map: &mut HashMap<MapData, lb_common::NatBackendKeyOf<A>, V>,
    keys: &mut std::collections::BTreeSet<lb_common::NatBackendKeyOf<A>>,
    filter: &mut AddressFilter,
    addr: FilterAddr,
    key: lb_common::NatBackendKeyOf<A>,
    back: Option<V>,
) -> std::result::Result<(), aya::maps::MapError>
where
    lb_common::NatBackendKeyOf<A>: aya::Pod,
{
    use lb_common::NatBackendKeyOf;
    let marker = NatBackendKeyOf {
        addr: key.addr,
        ..Default::default()
    };
    let same_addr = |keys: &std::collections::BTreeSet<NatBackendKeyOf<A>>| {
        keys.range(
            NatBackendKeyOf {
                addr: key.addr,
                ..Default::default()
            }..=NatBackendKeyOf {
                addr: key.addr,
                port: u16::MAX,
                proto: u8::MAX,
                _pad: u8::MAX,
            },
        )
        .count()
    };
    match back {
        Some(b) => {
            if same_addr(keys) == 0 {
                filter.add(addr)?;
                map.insert(marker, V::default(), 0)?;
            }
            map.insert(key, b, 0)?;
            keys.insert(key);
        }
        None => {
            remove_if_present(map, &key)?;
            keys.remove(&key);
            if same_addr(keys) == 0 {
                remove_if_present(map, &marker)?;
                filter.remove(addr)?;
            }
        }
    }
    Ok(())
}

/// The raw fd of a map usable as an inner map.
fn raw_fd<T: InnerMap>(map: &T) -> i32 {
    map.fd().as_fd().as_raw_fd()
}

/// A new fd of its own for a map usable as an inner map.
fn owned_fd<T: InnerMap>(map: &T) -> std::io::Result<OwnedFd> {
    map.fd().as_fd().try_clone_to_owned()
}

impl crate::model::apply::Maps for Dataplane {
    type Error = Error;
    fn set_backend(&mut self, index: u32, be: Backend) -> Result<()> {
        Dataplane::set_backend(self, index, be)
    }
    fn set_table(&mut self, id: u32, slots: &[u32]) -> Result<()> {
        Dataplane::set_table(self, id, slots)
    }
    fn set_service(&mut self, key: ServiceKey, svc: Service) -> Result<()> {
        Dataplane::set_service(self, key, svc)
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        Dataplane::remove_service(self, key)
    }
    fn set_vip(&mut self, addr: u32, services: u32) -> Result<()> {
        Dataplane::set_vip(self, addr, services)
    }
    fn set_nat_backend(&mut self, key: NatBackendKey, back: Option<NatBackend>) -> Result<()> {
        Dataplane::set_nat_backend(self, key, back)
    }
    fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<()> {
        Dataplane::set_timeouts(self, timeouts)
    }
    fn set_service6(&mut self, key: ServiceKey6, svc: Service) -> Result<()> {
        Dataplane::set_service6(self, key, svc)
    }
    fn remove_service6(&mut self, key: &ServiceKey6) -> Result<()> {
        Dataplane::remove_service6(self, key)
    }
    fn set_vip6(&mut self, addr: Addr6, services: u32) -> Result<()> {
        Dataplane::set_vip6(self, addr, services)
    }
    fn set_nat_backend6(&mut self, key: NatBackendKey6, back: Option<NatBackend6>) -> Result<()> {
        Dataplane::set_nat_backend6(self, key, back)
    }
    fn set_backend_addr6(&mut self, index: u32, addr: Addr6) -> Result<()> {
        Dataplane::set_backend_addr6(self, index, addr)
    }
    fn reset_backend_stats(&mut self, index: u32) -> Result<()> {
        Dataplane::reset_backend_stats(self, index)
    }
    fn reset_service_stats(&mut self, id: u32) -> Result<()> {
        Dataplane::reset_service_stats(self, id)
    }
    fn grace_request(&self) -> u64 {
        Dataplane::grace_request(self)
    }
    fn grace_passed(&self, ticket: u64) -> bool {
        Dataplane::grace_passed(self, ticket)
    }
}
