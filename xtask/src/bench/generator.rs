//! The frame generator of `bench pps`: a packet generator without pktgen (absent from
//! this kernel) or a userspace sender. BPF_PROG_TEST_RUN with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18, Documentation/bpf/bpf_prog_run.rst) runs a
//! tiny XDP program over a frame in a loop, and every XDP_TX it returns really transmits
//! the frame out of the given interface.
//!
//! The program is lb-ebpf's `xdp-gen` (src/bin/xdp-gen.rs): it writes the frame's
//! 42-byte Ethernet/IPv4/UDP header each run from its global `HEADER` and a random
//! source port from 1024..1280, so the traffic is 256 flows. It is loaded here with aya,
//! one copy per frame template, `HEADER` set at load time; aya's `test_run` drives the
//! live frames (`TestRunAttrs::xdp_live_frames`).
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
    sys::{Stats, SyscallError},
};

/// The program's name in the object (its function in xdp-gen.rs).
const PROGRAM: &str = "generate";
/// Bytes of header the program writes: Ethernet, IPv4, UDP.
const HEADER_LEN: usize = 42;
/// Frames of the first BPF_PROG_TEST_RUN call of a run; later calls are sized from
/// the rate seen so far to last about `CALL` each: every live-frame call sets up and
/// tears down a page pool, and the teardown sleeps (an RCU grace period, 10 ms or
/// more here), so short calls would leave the CPU idle a third of the time.
const FIRST_REPEAT: u32 = 1 << 14;
const CALL: Duration = Duration::from_millis(500);

/// The generator: the `xdp-gen` object, and one loaded copy of it per frame template.
pub struct Generator {
    object: PathBuf,
    loaded: Vec<([u8; 64], Ebpf)>,
}

/// One blast: frames injected, and the wall time and CPU time it took (the generator
/// thread's and its CPU's ksoftirqd's).
pub struct Blast {
    pub packets: u64,
    pub wall: Duration,
    pub cpu: Duration,
}

/// Kernel BPF run-time statistics, on while the returned descriptor is open.
pub fn enable_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")
}

/// The program's global `HEADER`: the first 42 bytes of `frame` in six 8-byte words, as
/// they lie in memory (the last word holds two bytes of header and six of nothing).
fn header_words(frame: &[u8; 64]) -> [u64; 6] {
    let mut bytes = [0u8; 48];
    bytes[..HEADER_LEN].copy_from_slice(&frame[..HEADER_LEN]);
    std::array::from_fn(|i| {
        u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    })
}

impl Generator {
    pub fn new(object: &Path) -> Generator {
        Generator {
            object: object.to_path_buf(),
            loaded: Vec::new(),
        }
    }

    /// The program that writes `frame`'s header, loaded the first time it is asked for.
    fn program(&mut self, frame: &[u8; 64]) -> Result<&Xdp> {
        let i = match self.loaded.iter().position(|(f, _)| f == frame) {
            Some(i) => i,
            None => {
                let words = header_words(frame);
                let mut ebpf = EbpfLoader::new()
                    .override_global("HEADER", &words, true)
                    .load_file(&self.object)
                    .with_context(|| format!("loading {}", self.object.display()))?;
                let program: &mut Xdp = ebpf
                    .program_mut(PROGRAM)
                    .with_context(|| format!("no program {PROGRAM} in xdp-gen"))?
                    .try_into()?;
                program.load().context("loading the generator program")?;
                self.loaded.push((*frame, ebpf));
                self.loaded.len() - 1
            }
        };
        let program = self.loaded[i]
            .1
            .program(PROGRAM)
            .expect("loaded above")
            .try_into()?;
        Ok(program)
    }

    /// Transmits `frame` (varying its source port) out of `iface` of namespace `ns`
    /// for `duration`, as fast as the path takes it. The injection runs on a thread
    /// of its own that enters the namespace.
    pub fn blast(
        &mut self,
        ns: &str,
        iface: &str,
        frame: &[u8; 64],
        duration: Duration,
        stop: &AtomicBool,
    ) -> Result<Blast> {
        let program = self.program(frame)?;
        let netns = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening network namespace {ns}"))?;
        let iface = CString::new(iface)?;
        // A fixed CPU (the last one), so every run's path shares one CPU alike.
        let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<Blast> {
                // SAFETY: setns(2) on an open namespace descriptor: moves only this
                // thread, which ends with the scope.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {ns}: {}", std::io::Error::last_os_error());
                }
                // SAFETY: a NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
                if ifindex == 0 {
                    bail!("no {iface:?} in {ns}");
                }
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex.
                let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|v| v.to_ne_bytes())
                    .collect();
                pin_to(cpu)?;
                let softirqd = ksoftirqd(cpu)?;
                let cpu0 = thread_cpu() + softirqd.runtime()?;
                let start = Instant::now();
                let mut packets = 0u64;
                let mut repeat = FIRST_REPEAT;
                while start.elapsed() < duration && !stop.load(Ordering::SeqCst) {
                    let run = program.test_run(TestRunOptions {
                        data_in: Some(&frame[..]),
                        ctx_in: Some(&ctx),
                        repeat,
                        // Batch size 0: the kernel's default (64 frames).
                        attrs: TestRunAttrs::new().xdp_live_frames(0),
                        ..TestRunOptions::new()
                    });
                    match run {
                        Ok(_) => {}
                        Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                            if io_error.kind() == std::io::ErrorKind::Interrupted =>
                        {
                            continue;
                        }
                        Err(e) => {
                            return Err(e)
                                .context(format!("BPF_PROG_TEST_RUN (live frames) in {ns}"));
                        }
                    }
                    packets += u64::from(repeat);
                    let elapsed = start.elapsed();
                    let left = duration.saturating_sub(elapsed).min(CALL);
                    let rate = packets as f64 / elapsed.as_secs_f64().max(1e-6);
                    repeat = (rate * left.as_secs_f64()).clamp(1024.0, f64::from(u32::MAX)) as u32;
                }
                Ok(Blast {
                    packets,
                    wall: start.elapsed(),
                    cpu: (thread_cpu() + softirqd.runtime()?).saturating_sub(cpu0),
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
        })
    }
}

/// Pins the calling thread to `cpu`: one CPU for the whole path (see
/// `PpsRun::ns_per_packet`).
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays in it.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set)
    };
    if pinned != 0 {
        bail!(
            "pinning the generator to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The kernel thread that runs deferred softirqs on one CPU.
struct Ksoftirqd(PathBuf);

impl Ksoftirqd {
    /// Its total run time so far (the first field of /proc/PID/schedstat).
    fn runtime(&self) -> Result<Duration> {
        let text = std::fs::read_to_string(&self.0)
            .with_context(|| format!("reading {}", self.0.display()))?;
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{}: {text:?}", self.0.display()))?;
        Ok(Duration::from_nanos(ns))
    }
}

fn ksoftirqd(cpu: usize) -> Result<Ksoftirqd> {
    let name = format!("ksoftirqd/{cpu}");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return Ok(Ksoftirqd(entry.path().join("schedstat")));
        }
    }
    bail!("no {name} thread")
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_words_hold_the_header_bytes_in_order() {
        let frame: [u8; 64] = std::array::from_fn(|i| i as u8);
        let words = header_words(&frame);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&bytes[..HEADER_LEN], &frame[..HEADER_LEN]);
        assert_eq!(&bytes[HEADER_LEN..], &[0; 6]);
    }
}
