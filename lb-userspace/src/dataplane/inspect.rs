//! Reading the maps of an lb datapath that another process loaded (by program id).
//!
//! `lb run` owns its maps and pins nothing, but root may open any loaded map by its id.
//! [`Inspector::for_program`] takes the id of an attached XDP program (what
//! `ip -d link show` prints as `prog/xdp id N`), asks the kernel which maps that program
//! uses, and opens lb's by name. Everything here only reads: tools and tests use it to
//! see what the datapath will see, independently of the daemon's own bookkeeping.
//!
//! IPv6 services live in maps of the IPv6 program (`lb6`, tail-called through
//! `PROGRAMS`): it is found as the loaded program of that name sharing the XDP program's
//! `STATS` map.
//!
//! Keys and values are the datapath's (`lb_common`): addresses and ports in network byte
//! order (`crate::model::runtime::datapath_key` builds a [`ServiceKey`] from a service name).
use std::collections::BTreeMap;

use super::error::{Context as _, Error, Result};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::loaded_programs,
};
use lb_common::{
    Backend, Counter, MAP_BACKENDS, MAP_NAT_BACKENDS, MAP_SERVICES, MAP_SERVICES6, MAP_STATS,
    MAP_TABLES, MAP_VIPS, NatBackend, NatBackendKey, PROG_IPV6, Service, Service6, ServiceKey,
    ServiceKey6, ServiceOf, TABLE_CHUNK, TAIL_PROGRAMS, TableChunk, table_index,
};

/// The kernel keeps at most 15 bytes of a map's name (`BPF_OBJ_NAME_LEN` is 16, with
/// the terminating NUL).
const KERNEL_NAME_LEN: usize = 15;

/// Read-only handles on the maps of one loaded lb XDP program.
pub struct Inspector {
    prog_id: u32,
    services: HashMap<MapData, ServiceKey, Service>,
    tables: ArrayOfMaps<MapData, Array<MapData, TableChunk>>,
    backends: Array<MapData, Backend>,
    vips: HashMap<MapData, u32, u32>,
    /// `None` for a program of an older layout (the benchmarks inspect those too).
    nat_backends: Option<HashMap<MapData, NatBackendKey, NatBackend>>,
    stats: PerCpuArray<MapData, u64>,
    /// `SERVICES6`, from the IPv6 program; `None` when there is none (an older layout).
    services6: Option<HashMap<MapData, ServiceKey6, Service6>>,
}

/// The maps of program `prog_id`, by (kernel-truncated) name.
fn maps_of(prog_id: u32, ids: Vec<u32>) -> Result<BTreeMap<String, MapData>> {
    let mut maps = BTreeMap::new();
    for id in ids {
        let data = MapData::from_id(id).with_context(|| format!("opening map id {id}"))?;
        let info = data
            .info()
            .with_context(|| format!("reading the info of map id {id} (program {prog_id})"))?;
        if let Some(name) = info.name_as_str() {
            maps.insert(name.to_string(), data);
        }
    }
    Ok(maps)
}

/// The map ids of the loaded program `prog_id`.
fn map_ids(info: &aya::programs::ProgramInfo) -> Result<Vec<u32>> {
    let prog_id = info.id();
    info.map_ids()
        .with_context(|| format!("reading the map ids of BPF program {prog_id}"))?
        .context("this kernel does not report the maps of a program")
}

/// The maps of the IPv6 program loaded with the XDP program whose `STATS` map has id
/// `stats_id` (tail-called programs share their object's maps); `None` when there is none.
fn ipv6_program_maps(stats_id: u32) -> Result<Option<BTreeMap<String, MapData>>> {
    let name = TAIL_PROGRAMS
        .iter()
        .find(|(slot, _)| *slot == PROG_IPV6)
        .map(|(_, name)| *name)
        .context("no IPv6 program in TAIL_PROGRAMS")?;
    for info in loaded_programs().filter_map(Result::ok) {
        if info.name_as_str() != Some(name) {
            continue;
        }
        let Ok(ids) = map_ids(&info) else { continue };
        if ids.contains(&stats_id) {
            return maps_of(info.id(), ids).map(Some);
        }
    }
    Ok(None)
}

/// Opens the map called `name` (as the kernel truncates it) from `maps` as type `T`.
fn open<T>(maps: &mut BTreeMap<String, MapData>, prog_id: u32, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let kernel_name = &name[..name.len().min(KERNEL_NAME_LEN)];
    let data = maps.remove(kernel_name).with_context(|| {
        format!("BPF program {prog_id} uses no map named {name}: is it lb's datapath?")
    })?;
    let map = Map::from_map_data(data).with_context(|| format!("opening map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

impl Inspector {
    /// Opens the maps of the loaded XDP program with this id (the id `ip -d link show`
    /// prints as `prog/xdp id N`).
    pub fn for_program(prog_id: u32) -> Result<Self> {
        // aya 0.14 has no ProgramInfo::from_id: walk the loaded programs. A program that
        // goes away during the walk yields an error; those are not the one we want.
        let info = loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == prog_id)
            .with_context(|| format!("no BPF program with id {prog_id} is loaded"))?;
        let mut maps = maps_of(prog_id, map_ids(&info)?)?;
        let stats_id = maps
            .get(MAP_STATS)
            .map(|m| m.info().map(|i| i.id()))
            .transpose()
            .context("reading the info of STATS")?;
        let services6 = match stats_id {
            Some(id) => match ipv6_program_maps(id)? {
                Some(mut v6) => Some(open(&mut v6, prog_id, MAP_SERVICES6)?),
                None => None,
            },
            None => None,
        };
        Ok(Inspector {
            prog_id,
            services: open(&mut maps, prog_id, MAP_SERVICES)?,
            tables: open(&mut maps, prog_id, MAP_TABLES)?,
            backends: open(&mut maps, prog_id, MAP_BACKENDS)?,
            vips: open(&mut maps, prog_id, MAP_VIPS)?,
            nat_backends: maps
                .contains_key(&MAP_NAT_BACKENDS[..MAP_NAT_BACKENDS.len().min(KERNEL_NAME_LEN)])
                .then(|| open(&mut maps, prog_id, MAP_NAT_BACKENDS))
                .transpose()?,
            stats: open(&mut maps, prog_id, MAP_STATS)?,
            services6,
        })
    }

    /// The program id the maps were found through.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// The `SERVICES` record of a service, if the datapath has one.
    pub fn service(&self, key: &ServiceKey) -> Result<Option<Service>> {
        super::maps::get_if_present(&self.services, key).context("reading SERVICES")
    }

    /// Every `SERVICES` entry, sorted by key.
    pub fn services(&self) -> Result<Vec<(ServiceKey, Service)>> {
        let mut out = self
            .services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading SERVICES")?;
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Every `SERVICES6` entry, sorted by key (empty without an IPv6 program).
    pub fn services6(&self) -> Result<Vec<(ServiceKey6, Service6)>> {
        let Some(map) = &self.services6 else {
            return Ok(Vec::new());
        };
        let mut out = map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading SERVICES6")?;
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// The `BACKENDS` record at `index` (all zero when never written; flags 0 when the
    /// backend was removed).
    pub fn backend(&self, index: u32) -> Result<Backend> {
        self.backends.get(&index, 0).context("reading BACKENDS")
    }

    /// The live Maglev table of the service with record `svc` (its first `size` slots),
    /// or `None` when `TABLES` has no table there. (A table flip at the same moment can
    /// make the copy a mix of two tables: this is a tool's view, not the datapath's.)
    /// Services of both families share `TABLES`.
    pub fn table<A>(&self, svc: &ServiceOf<A>, size: u32) -> Result<Option<Vec<u32>>> {
        let id = svc.id;
        let inner = match self.tables.get(&table_index(svc.id, svc.table_gen), 0) {
            Ok(inner) => inner,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e).context("reading TABLES"),
        };
        let chunks = size.div_ceil(TABLE_CHUNK as u32);
        if inner.len() < chunks {
            return Err(Error::Invalid(format!(
                "the table of service {id} has {} slots, fewer than {size}",
                inner.len() as usize * TABLE_CHUNK
            )));
        }
        // One lookup per 16-slot element.
        let mut slots = Vec::with_capacity(chunks as usize * TABLE_CHUNK);
        for i in 0..chunks {
            let chunk = inner.get(&i, 0).context("reading a Maglev table")?;
            slots.extend_from_slice(&chunk);
        }
        slots.truncate(size as usize);
        Ok(Some(slots))
    }

    /// `VIPS`: (VIP address in network order, number of services on it), sorted.
    pub fn vips(&self) -> Result<Vec<(u32, u32)>> {
        let mut out = self
            .vips
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading VIPS")?;
        out.sort_unstable();
        Ok(out)
    }

    /// `NAT_BACKENDS`: (NAT backend, how its replies are translated), sorted; the
    /// per-address markers left out.
    pub fn nat_backends(&self) -> Result<Vec<(NatBackendKey, NatBackend)>> {
        let map = self.nat_backends.as_ref().with_context(|| {
            format!(
                "BPF program {} uses no map named {MAP_NAT_BACKENDS}",
                self.prog_id
            )
        })?;
        let mut out = map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading NAT_BACKENDS")?;
        out.retain(|(k, _)| !super::adopt::is_marker(k));
        out.sort_unstable_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// A global datapath counter, summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64> {
        let per_cpu = self.stats.get(&(c as u32), 0).context("reading STATS")?;
        Ok(per_cpu.iter().sum())
    }
}
