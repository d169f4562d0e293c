//! The memory behind the Maglev tables: each service id has two table generations (inner
//! arrays of `TABLES`, `BPF_F_MMAPABLE`), written through a shared mapping.
use std::ptr::NonNull;

use lb_common::NO_BACKEND;

/// The two generations of one service id's Maglev table.
#[derive(Default)]
pub(super) struct TableGens {
    /// Mapping of each generation's inner array, once it has one.
    pub(super) maps: [Option<Mmap>; 2],
    /// The generation the service record names.
    pub(super) live: u32,
    /// Grace-period ticket taken when the other generation was retired: it may be
    /// written once that has passed (0: nothing to wait for).
    pub(super) retired: u64,
}

impl TableGens {
    /// The generation the next table goes into: the live one while there is none yet (a
    /// new inner array is complete before the kernel publishes it), else the other.
    pub(super) fn target(&self) -> u32 {
        if self.maps[self.live as usize].is_none() {
            self.live
        } else {
            self.live ^ 1
        }
    }
}

/// Copies a table into an inner array's words; the rest of the array reads
/// `NO_BACKEND`.
pub(super) fn fill(words: &mut [u32], slots: &[u32]) {
    words[..slots.len()].copy_from_slice(slots);
    words[slots.len()..].fill(NO_BACKEND);
}

/// A shared, writable mapping of a `BPF_F_MMAPABLE` array map, unmapped on drop.
pub(super) struct Mmap {
    ptr: NonNull<u8>,
    /// Bytes mapped (whole pages).
    len: usize,
    /// Bytes asked for.
    pub(super) bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; nothing in it is tied
// to the thread that created it.
unsafe impl Send for Mmap {}

impl Mmap {
    pub(super) fn new(fd: i32, bytes: usize) -> std::io::Result<Self> {
        let page = 4096;
        let len = bytes.div_ceil(page) * page;
        // SAFETY: mapping a map fd we own; the kernel checks the length against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
            bytes,
        })
    }

    pub(super) fn as_u32_slice(&self) -> &[u32] {
        // SAFETY: the mapping is at least `bytes` long, page aligned, alive while self is.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.bytes / 4) }
    }

    pub(super) fn as_u32_slice_mut(&mut self) -> &mut [u32] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.bytes / 4) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_fills_its_array_and_the_rest_reads_no_backend() {
        let mut words = [7u32; 6];
        fill(&mut words, &[1, 2, 3]);
        assert_eq!(words, [1, 2, 3, NO_BACKEND, NO_BACKEND, NO_BACKEND]);
        fill(&mut words, &[]);
        assert_eq!(words, [NO_BACKEND; 6]);
    }

    #[test]
    fn the_first_table_goes_live_at_once_and_the_next_into_the_other_generation() {
        let mut g = TableGens::default();
        assert_eq!(g.target(), 0, "no table yet: fill the live generation");
        // Pretend generation 0 got a mapping (an anonymous page stands in for a map).
        g.maps[0] = Some(anonymous_page());
        assert_eq!(g.target(), 1);
        g.live = 1;
        assert_eq!(g.target(), 1, "generation 1 has no mapping yet");
        g.maps[1] = Some(anonymous_page());
        assert_eq!(g.target(), 0);
    }

    fn anonymous_page() -> Mmap {
        // SAFETY: an anonymous private mapping of one page; Mmap unmaps it on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Mmap {
            ptr: NonNull::new(ptr.cast()).unwrap(),
            len: 4096,
            bytes: 4096,
        }
    }
}
