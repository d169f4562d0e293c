//! One instance's pin directory on a bpffs: the maps and XDP links that let the datapath
//! outlive the daemon, the record that says whose pins they are, and the instance lock.
//!
//! Layout of the directory (`--pin-dir`, default `/sys/fs/bpf/lb/<name>`):
//! - `LB_META`: a one-entry array ([`PinMeta`]): lb's magic, the layout version, the
//!   SHA-256 of the XDP object the links run;
//! - one pin per map of [`PINNED_MAPS`], named like the map;
//! - `link_<interface>`: the XDP link of each interface.
//!
//! The directory itself is the instance lock: a daemon holds `flock(LOCK_EX)` on it for
//! its whole life, so a second daemon of the instance cannot start beside it (a takeover
//! waits for the lock). bpffs holds no regular files, which is why the lock and the
//! record are what they are.
use std::{
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use lb_common::{MAP_PIN_META, PIN_LAYOUT_VERSION, PIN_LINK_PREFIX, PIN_MAGIC, PinMeta};
use rustix::fs::{FlockOperation, OFlags, flock, open, statfs};

use super::error::{Context as _, Error, Result};

/// `f_type` of a bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What a pin directory holds when a daemon opens it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the datapath starts afresh.
    Empty,
    /// An lb datapath of this layout: the daemon adopts it.
    Datapath(PinMeta),
}

/// An instance's pin directory, locked for this process while the value lives.
pub struct PinDir {
    path: PathBuf,
    /// The directory, opened and `flock`ed (released when closed).
    _lock: OwnedFd,
}

/// The file system type of `path`, or of its nearest existing parent.
fn fs_type(path: &Path) -> Result<(PathBuf, i64)> {
    let mut p = path.to_path_buf();
    loop {
        match statfs(&p) {
            Ok(s) => return Ok((p, s.f_type)),
            Err(rustix::io::Errno::NOENT) if p.pop() => {}
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("statfs {}", p.display()));
            }
        }
    }
}

impl PinDir {
    /// Opens the pin directory `path` (creating it), checks it is on a bpffs and takes
    /// the instance lock: at once, or within `wait` (a takeover waits for the daemon it
    /// replaces to let go). Nothing in the directory is read or changed.
    pub fn open(path: &Path, wait: Option<Duration>) -> Result<PinDir> {
        Self::open_with(path, wait, true)
    }

    /// Like [`Self::open`]; `create`: make the directory when it is missing (else a
    /// missing directory is an error).
    pub fn open_with(path: &Path, wait: Option<Duration>, create: bool) -> Result<PinDir> {
        let (checked, kind) = fs_type(path)?;
        if kind != BPF_FS_MAGIC {
            return Err(Error::Invalid(format!(
                "the pin directory {} is not on a bpffs ({} is on a file system of type {kind:#x}): \
                 mount one (mount -t bpf bpf /sys/fs/bpf) or give --pin-dir a directory on a bpffs \
                 (inside `ip netns exec`, /sys/fs/bpf is not the host's bpffs: mount one elsewhere)",
                path.display(),
                checked.display()
            )));
        }
        if create {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        let dir = open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            0.into(),
        )
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening {}", path.display()))?;
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK)
                    if deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(Error::InstanceRunning {
                        pin_dir: path.to_path_buf(),
                    });
                }
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .with_context(|| format!("locking {}", path.display()));
                }
            }
        }
        Ok(PinDir {
            path: path.to_path_buf(),
            _lock: dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Where the XDP link of `iface` is pinned.
    pub fn link_path(&self, iface: &str) -> PathBuf {
        self.path.join(format!("{PIN_LINK_PREFIX}{iface}"))
    }

    /// The interfaces that have a pinned link.
    pub fn linked_ifaces(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?
        {
            let e = e.with_context(|| format!("reading {}", self.path.display()))?;
            if let Some(iface) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(PIN_LINK_PREFIX))
            {
                out.push(iface.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// What the directory holds. Refuses, naming the directory and the fix, pins that are
    /// not lb's or of a layout this binary does not understand (it reads nothing else).
    pub fn found(&self) -> Result<Found> {
        read_meta(&self.path)
    }

    /// Records (or updates) who the pins belong to: this layout, this object.
    pub fn write_meta(&self, object_sha256: [u8; 32]) -> Result<()> {
        let path = self.map_path(MAP_PIN_META);
        let mut meta: Array<MapData, PinMeta> = if path.exists() {
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Array::try_from(Map::Array(data)).context("LB_META has an unexpected layout")?
        } else {
            let m = Array::<MapData, PinMeta>::create(1, 0).context("creating LB_META")?;
            aya::maps::IterableMap::map(&m)
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
            m
        };
        let created = match meta.get(&0, 0) {
            Ok(m) if m.magic == PIN_MAGIC && m.created_unix_ms != 0 => m.created_unix_ms,
            _ => now_unix_ms(),
        };
        meta.set(
            0,
            PinMeta {
                magic: PIN_MAGIC,
                layout: PIN_LAYOUT_VERSION,
                _pad: 0,
                object_sha256,
                created_unix_ms: created,
            },
            0,
        )
        .context("writing LB_META")
    }

    /// Removes the datapath: every link (which detaches the program from its interface
    /// once nothing else holds the link), every map pin, the record and the directory.
    pub fn remove(self) -> Result<()> {
        remove_pins(&self.path)
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whose pins a directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Empty,
    /// An lb datapath, of whatever layout version.
    Lb(PinMeta),
    /// Pins without lb's record: another program's.
    Foreign(Vec<String>),
}

/// Tells whose pins `dir` holds, reading only the record.
pub fn identify(dir: &Path) -> Result<Identity> {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if entries.is_empty() {
        return Ok(Identity::Empty);
    }
    let foreign = || Identity::Foreign(entries.clone());
    if !entries.iter().any(|e| e == MAP_PIN_META) {
        return Ok(foreign());
    }
    let meta = MapData::from_pin(dir.join(MAP_PIN_META))
        .ok()
        .and_then(|d| Array::<MapData, PinMeta>::try_from(Map::Array(d)).ok())
        .and_then(|a| a.get(&0, 0).ok());
    Ok(match meta {
        Some(m) if m.magic == PIN_MAGIC => Identity::Lb(m),
        _ => foreign(),
    })
}

/// Reads the record of the pin directory `dir` (see [`PinDir::found`]).
pub fn read_meta(dir: &Path) -> Result<Found> {
    match identify(dir)? {
        Identity::Empty => Ok(Found::Empty),
        Identity::Foreign(entries) => Err(Error::Invalid(format!(
            "the pin directory {} holds pins that are not an lb datapath's ({}): lb leaves them \
             alone; give --pin-dir another directory, or remove them if they are not needed",
            dir.display(),
            entries.join(", ")
        ))),
        Identity::Lb(m) if m.layout != PIN_LAYOUT_VERSION => Err(Error::Invalid(format!(
            "the pin directory {} holds an lb datapath of layout version {}, and this lb \
             understands version {PIN_LAYOUT_VERSION} only: it is left as it is. Run the lb \
             that made it, or remove it with `lb detach --pin-dir {}` (its connections are \
             lost) and start again",
            dir.display(),
            m.layout,
            dir.display()
        ))),
        Identity::Lb(m) => Ok(Found::Datapath(m)),
    }
}

/// Unpins every link in `dir` (detaching each program whose link nobody else holds),
/// then removes the map pins, the record and the directory.
pub fn remove_pins(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let path = e.path();
        let is_link = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PIN_LINK_PREFIX));
        if is_link {
            let link = PinnedLink::from_pin(&path)
                .with_context(|| format!("opening the link {}", path.display()))?;
            let fd: FdLink = link
                .unpin()
                .with_context(|| format!("unpinning {}", path.display()))?;
            drop(fd);
        }
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        std::fs::remove_file(e.path())
            .with_context(|| format!("removing {}", e.path().display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// What the kernel says of a pinned XDP link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIds {
    /// The program the link runs.
    pub prog_id: u32,
    /// The interface it is attached to (0: its interface is gone).
    pub ifindex: u32,
}

/// Reads the program and interface of the link pinned at `path` (`BPF_OBJ_GET`, then
/// `BPF_OBJ_GET_INFO_BY_FD`: aya's `LinkInfo` exposes neither).
pub fn link_ids(path: &Path) -> Result<LinkIds> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("{} is not a valid path", path.display())))?;
    // union bpf_attr's obj member: pathname, bpf_fd, file_flags.
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix of the size passed; the path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut ObjAttr,
            size_of::<ObjAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening the pinned link {}", path.display()));
    }
    // SAFETY: the kernel gave us this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the per-type union,
    // whose xdp member starts with the ifindex.
    let mut info = [0u8; 64];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: a valid bpf_attr prefix; `info` is writable for `info_len` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the link {}", path.display()));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().expect("4 bytes"));
    Ok(LinkIds {
        prog_id: u32_at(8),
        ifindex: u32_at(16),
    })
}
