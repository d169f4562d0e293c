//! Batched map operations (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, kernel 5.6+),
//! which aya 0.14 does not offer: reading a 1M-entry connection table one entry at a time
//! costs two syscalls per entry; in batches it costs a few hundred.
use std::{io, os::fd::RawFd};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix of the size we pass; the buffers it points
    // to are alive and sized for `count` elements (checked by the callers).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of a hash-type map (a snapshot taken bucket by bucket; entries added or
/// removed meanwhile may or may not appear).
pub fn dump<K: Pod, V: Pod>(fd: RawFd) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut walk = Walk::default();
    while let Some(batch) = walk.next(fd, 4096)? {
        out.extend(batch);
    }
    Ok(out)
}

/// A walk over a hash-type map, one batch at a time, that can pause between batches for
/// as long as it likes (it resumes at the bucket it stopped at). Entries added or
/// removed meanwhile may or may not appear; none appears twice unless it is re-added.
#[derive(Clone, Copy, Debug, Default)]
pub struct Walk {
    /// Where the next batch starts (the kernel's bucket token), after the first.
    token: Option<u32>,
    done: bool,
}

impl Walk {
    /// The next entries (about `chunk`; a batch ends at a bucket's end, so it may hold
    /// fewer, even none), or `None` once the walk has passed the map's end.
    pub fn next<K: Pod, V: Pod>(
        &mut self,
        fd: RawFd,
        chunk: usize,
    ) -> io::Result<Option<Vec<(K, V)>>> {
        if self.done {
            return Ok(None);
        }
        let mut chunk = chunk.max(1);
        loop {
            let mut keys: Vec<K> = Vec::with_capacity(chunk);
            let mut values: Vec<V> = Vec::with_capacity(chunk);
            let token = self.token.unwrap_or(0);
            let mut next: u32 = 0;
            let mut attr = BatchAttr {
                in_batch: if self.token.is_some() {
                    (&raw const token) as u64
                } else {
                    0
                },
                out_batch: (&raw mut next) as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: fd as u32,
                ..Default::default()
            };
            let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            // Entries are filled on success and on the final ENOENT alike.
            let filled = (attr.count as usize).min(chunk);
            // SAFETY: the kernel wrote `filled` (<= chunk) whole keys and values.
            unsafe {
                keys.set_len(filled);
                values.set_len(filled);
            }
            match r {
                Ok(()) => self.token = Some(next),
                // The end of the map.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.done = true,
                // One bucket holds more entries than fit: retry it with room for them.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && filled == 0 => {
                    chunk *= 2;
                    continue;
                }
                Err(e) => return Err(e),
            }
            return Ok(Some(keys.into_iter().zip(values).collect()));
        }
    }
}

/// Deletes `keys` from a hash-type map; keys already gone are fine.
pub fn delete<K: Pod>(fd: RawFd, keys: &[K]) -> io::Result<()> {
    for part in keys.chunks(4096) {
        let mut attr = BatchAttr {
            keys: part.as_ptr() as u64,
            count: part.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => {}
            // Stops at the first missing key: delete the rest one by one from there.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let done = attr.count as usize;
                if done + 1 < part.len() {
                    delete(fd, &part[done + 1..])?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `keys[i] -> values[i]` into a hash-type map, in batches (tools and
/// benchmarks fill tables with it). The entries land on the calling CPU's LRU list.
pub fn update<K: Pod, V: Pod>(fd: RawFd, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    for (k, v) in keys.chunks(4096).zip(values.chunks(4096)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// `union bpf_attr`'s element-operation member.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Puts the map `inner` at `key` of the map-in-map `outer`. The kernel returns only
/// after an RCU grace period (every program that could have seen the old entry has
/// finished), which is what callers use it for.
pub fn set_inner_map(outer: RawFd, key: u32, inner: RawFd) -> io::Result<()> {
    let value = inner as u32;
    let mut attr = ElemAttr {
        map_fd: outer as u32,
        _pad: 0,
        key: (&raw const key) as u64,
        value: (&raw const value) as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size we pass; key and value
    // point at live u32s.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &mut attr as *mut ElemAttr,
            size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
