//! A bpffs of its own: lb pins its datapath in one, and inside `ip netns exec` the host's
//! `/sys/fs/bpf` is out of sight (the command gets a fresh sysfs), so the lab, the tests
//! and the benchmarks mount one elsewhere and give lb `--pin-dir` in it. Every
//! `ip netns exec` started after the mount sees it.
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// A bpffs mounted at a directory of ours; unmounted (lazily: a daemon killed before
/// may still hold it) and removed when dropped. Unmounting releases whatever is
/// pinned in it, which detaches a datapath no process holds any more.
pub struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    /// Mounts a new bpffs at `path` (created; a leftover mount there is removed first).
    pub fn mount(path: &Path) -> std::io::Result<Self> {
        unmount(path);
        std::fs::create_dir_all(path)?;
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: valid C strings for the duration of the call; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(BpfFs {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Lazily unmounts whatever is mounted at `path` (nothing: fine).
pub fn unmount(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a valid C string; MNT_DETACH only unmounts.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        unmount(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }
}
