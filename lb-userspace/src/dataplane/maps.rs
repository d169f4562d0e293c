//! Small helpers over aya's maps: opening lb's maps from the object by name, handles of
//! our own on them (for the readers that run beside the writer), and the lookups and
//! deletes that treat a missing key as normal.
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use super::error::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, IterableMap, Map, MapData, MapError},
};

/// Takes map `name` out of a loaded object as type `T`.
pub(super) fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

/// The data of a map of the types lb uses.
pub(super) fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::ProgramArray(d) => Some(d),
        _ => None,
    }
}

/// A second handle on the map under `typed`, of its own type `T`, with a file
/// descriptor of its own (`wrap` names the kind of map, e.g. `Map::PerCpuArray`).
pub(super) fn second_handle<M: IterableMap<K, V>, K: aya::Pod, V, T>(
    typed: &M,
    wrap: fn(MapData) -> Map,
) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let fd = typed
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating a map's file descriptor")?;
    let data = MapData::from_fd(fd).context("opening a map by its file descriptor")?;
    T::try_from(wrap(data)).context("a map has an unexpected type or layout")
}

/// The `memlock` line of a BPF object's fdinfo: what the kernel charges for it.
pub(super) fn memlock(fd: BorrowedFd<'_>) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let info = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{path} has no memlock line"))
}

/// An entry of a hash map; a missing key is `None`.
pub(super) fn get_if_present<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
) -> Result<Option<V>, MapError> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes an entry of a hash map; a missing key is fine.
pub(super) fn remove_if_present<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
) -> Result<(), MapError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets a count kept in a hash map (0 removes the key).
pub(super) fn set_count<K: aya::Pod>(
    map: &mut HashMap<MapData, K, u32>,
    addr: K,
    n: u32,
) -> Result<(), MapError> {
    if n == 0 {
        remove_if_present(map, &addr)
    } else {
        map.insert(addr, n, 0)
    }
}
