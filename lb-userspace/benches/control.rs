//! `cargo xtask bench control`: what the control plane costs with a large connection
//! table, for two builds side by side in one run: the daemon before the control plane
//! lost its global lock and its whole-table sweeps (commit 341a9ec, built by xtask;
//! `LB_BASELINE` names its binary) and this build.
//!
//! For each table (`LB_BENCH_TABLES`, `FILL/MAX_ENTRIES,...`; by default 10 % and 100 %
//! of 1M, and 10M) and each build: `lb run` in a namespace of its own with one NAT
//! service, `conntrack.max_entries` MAX_ENTRIES and the default `ageing_interval_s` (5);
//! the table is filled from userspace with FILL live, established entries of that
//! service (none ages out), half from each CPU. Then:
//! - how long until `lb service list` counts every kept entry as an active connection
//!   (the counts of a complete walk of the table), at most `COUNT_WAIT`;
//! - for `SECONDS`: one `list` request every 20 ms and one `backend_set` every 500 ms,
//!   each timed on one connection from send to the whole response line: median, 99th
//!   percentile and maximum in ms, and the daemon's CPU time per minute.
//!
//! Not a test: figures go into docs/BENCHMARKS.md with the command.
mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{maps::MapData, programs::loaded_programs};
use lb_common::{BACKEND_F_LIVE, FLOW_ESTABLISHED, Flow, FlowKey, MAP_CONNTRACK};
use lb_userspace::dataplane::{batch, inspect::Inspector};
use serde_json::Value;

const SECONDS: u64 = 30;
/// How long to wait for the counts to cover the whole table.
const COUNT_WAIT: Duration = Duration::from_secs(150);

const VIP: &str = "10.100.0.20";
const SERVICE: &str = "10.100.0.20:80/tcp";

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the control benchmark needs root (BPF, namespaces)"
    );
    let tables = std::env::var("LB_BENCH_TABLES")
        .unwrap_or_else(|_| "100000/1000000,1000000/1000000,10000000/10000000".into());
    let tables: Vec<(u32, u32)> = tables
        .split(',')
        .map(|t| {
            let (fill, max) = t
                .split_once('/')
                .context("LB_BENCH_TABLES: write FILL/MAX_ENTRIES,...")?;
            Ok((fill.trim().parse()?, max.trim().parse()?))
        })
        .collect::<Result<_>>()?;
    let mut builds: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(b) = std::env::var("LB_BASELINE") {
        builds.push(("341a9ec (one lock)".into(), b.into()));
    } else {
        eprintln!("LB_BASELINE is not set: measuring this build only");
    }
    builds.push(("this build".into(), env!("CARGO_BIN_EXE_lb").into()));
    println!(
        "Control plane with a large connection table: ageing_interval_s 5, {SECONDS} s of requests per build and table"
    );
    let head = [
        ("build", ""),
        ("max", "entries"),
        ("entries", "kept"),
        ("counted", "after s"),
        ("list", "p50 ms"),
        ("p99", "ms"),
        ("max", "ms"),
        ("change", "p50 ms"),
        ("p99", "ms"),
        ("max", "ms"),
        ("daemon", "CPU s/min"),
        ("conns", "total"),
        ("conns", "ms"),
    ];
    for line in [0, 1] {
        let cells: Vec<&str> = head
            .iter()
            .map(|h| if line == 0 { h.0 } else { h.1 })
            .collect();
        print!("{:<20}", cells[0]);
        for c in &cells[1..] {
            print!(" {c:>9}");
        }
        println!();
    }
    for (fill, max) in tables {
        for (label, bin) in &builds {
            let f = measure(bin, fill, max)?;
            let counted = f
                .counted_after
                .map_or("never".to_string(), |d| format!("{:.0}", d.as_secs_f64()));
            print!("{label:<20} {max:>9} {:>9} {counted:>9}", f.kept);
            for v in [
                f.list.percentile(50),
                f.list.percentile(99),
                f.list.percentile(100),
                f.change.percentile(50),
                f.change.percentile(99),
                f.change.percentile(100),
                f.cpu_s * 60.0 / SECONDS as f64,
            ] {
                print!(" {v:>9.2}");
            }
            println!(" {:>9} {:>9.0}", f.conns_total, f.conns_ms);
        }
    }
    Ok(())
}

struct Latencies(Vec<f64>);

impl Latencies {
    /// The `p`th percentile in ms (100: the maximum).
    fn percentile(&self, p: usize) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) * p) / 100]
    }
}

struct Figures {
    kept: usize,
    /// When `list` counted every kept entry (from the end of the fill).
    counted_after: Option<Duration>,
    /// `conns` (limit 10): the total it reports, and how long it took.
    conns_total: u64,
    conns_ms: f64,
    list: Latencies,
    change: Latencies,
    cpu_s: f64,
}

/// A namespace with one veth pair, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Self> {
        let name = format!("lbctl{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns(name);
        ns.ip("link set lo up")?;
        ns.ip("link add v0 type veth peer name v1")?;
        ns.ip("link set v0 up")?;
        ns.ip("link set v1 up")?;
        ns.ip("addr add 10.1.0.1/24 dev v0")?;
        Ok(ns)
    }

    fn ip(&self, args: &str) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.0]).args(args.split_whitespace());
        run(&mut cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The daemon under test, stopped (SIGTERM, by PID) on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
    /// Where the daemon pins its datapath (the build before pinning ignores it).
    bpffs: Option<lb_lab::bpffs::BpfFs>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let bpffs = self.bpffs.take();
        // SAFETY: signalling the one process this benchmark started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                drop(bpffs);
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(bin: &Path, ns: &Netns, entries: u32) -> Result<Daemon> {
    let dir = std::env::temp_dir().join(format!("lb-bench-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("lb.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "conntrack": {"max_entries": entries},
            "services": [{"vip": VIP, "port": 80, "forwarding": "nat", "table_size": 251,
                "health_check": {"kind": "none"},
                "backends": [{"address": "10.1.0.11"}, {"address": "10.1.0.12"}]}]
        })
        .to_string(),
    )?;
    let socket = dir.join("lb.sock");
    let log = std::fs::File::create(dir.join("lb.log"))?;
    let bpffs = lb_lab::bpffs::BpfFs::mount(&dir.join("bpf"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(bin)
        .arg("--socket")
        .arg(&socket)
        .args(["run", "--iface", "v0", "--config"])
        .arg(&config);
    if pins(bin)? {
        cmd.arg("--pin-dir").arg(bpffs.path().join("lb"));
    }
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting lb run")?;
    let d = Daemon {
        child,
        socket,
        dir,
        bpffs: Some(bpffs),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = Client::connect(&d.socket)
            && c.call(r#"{"op":"list"}"#).is_ok()
        {
            return Ok(d);
        }
        ensure!(
            Instant::now() < deadline,
            "lb run did not answer within a minute; its log: {}",
            std::fs::read_to_string(d.dir.join("lb.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `bin` pins its datapath (takes --pin-dir): the build before it does not.
fn pins(bin: &Path) -> Result<bool> {
    let help = Command::new(bin).args(["run", "--help"]).output()?;
    Ok(String::from_utf8_lossy(&help.stdout).contains("--pin-dir"))
}

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(socket: &Path) -> Result<Self> {
        let s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one request line; returns the response and how long it took (ms).
    fn call(&mut self, line: &str) -> Result<(Value, f64)> {
        let start = Instant::now();
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut resp = String::new();
        self.reader.read_line(&mut resp)?;
        let took = start.elapsed().as_secs_f64() * 1e3;
        let v: Value = serde_json::from_str(&resp).with_context(|| resp.clone())?;
        ensure!(v["ok"] == true, "{line}: {resp}");
        Ok((v, took))
    }
}

/// The id of the XDP program attached to v0 in the namespace.
fn prog_id(ns: &Netns) -> Result<u32> {
    let text = ns.ip("-d link show dev v0")?;
    let rest = text
        .split("prog/xdp")
        .nth(1)
        .context("no XDP program on v0")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "id").context("no id")?;
    Ok(words[i + 1].parse()?)
}

/// The connection table of a loaded lb program.
fn conntrack(prog: u32) -> Result<MapData> {
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog)
        .context("the program is gone")?;
    for id in info.map_ids()?.context("no map ids")? {
        let data = MapData::from_id(id)?;
        if data.info()?.name_as_str() == Some(&MAP_CONNTRACK[..MAP_CONNTRACK.len().min(15)]) {
            return Ok(data);
        }
    }
    bail!("the program has no {MAP_CONNTRACK} map")
}

/// Fills the connection table with `entries` established flows of the service, from
/// every online CPU in turn; returns how many it kept.
fn fill(ns: &Netns, entries: u32) -> Result<usize> {
    let insp = Inspector::for_program(prog_id(ns)?)?;
    let key =
        lb_userspace::model::runtime::datapath_key(&SERVICE.parse().map_err(anyhow::Error::msg)?);
    let key = key.v4().context("the benchmark's service is IPv4")?;
    let svc = insp.service(&key)?.context("the service has no record")?;
    let (index, be) = (0..64u32)
        .filter_map(|i| insp.backend(i).ok().map(|b| (i, b)))
        .find(|(_, b)| b.service == svc.id && b.flags & BACKEND_F_LIVE != 0)
        .context("no live backend of the service")?;
    let map = conntrack(insp.prog_id())?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(map.fd()));
    let now = {
        // SAFETY: clock_gettime writes a timespec.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    // The baseline's entries are 24 bytes (with the service, in nanoseconds).
    let old = map.info()?.value_size() as usize == size_of::<common::OldFlow>();
    let vip = u32::from_ne_bytes(VIP.parse::<Ipv4Addr>()?.octets());
    let cpus = std::thread::available_parallelism()?.get().min(2);
    let per_cpu = entries as usize / cpus;
    let flow = Flow {
        backend: index,
        epoch: be.epoch,
        state: FLOW_ESTABLISHED,
        last_seen: lb_common::coarse_seconds(now),
    };
    let old_flow = common::OldFlow {
        backend: index,
        epoch: be.epoch,
        service: svc.id,
        state: FLOW_ESTABLISHED,
        last_seen: now,
    };
    std::thread::scope(|s| -> Result<()> {
        let mut threads = Vec::new();
        for cpu in 0..cpus {
            threads.push(s.spawn(move || -> Result<()> {
                common::pin(cpu)?;
                let keys: Vec<FlowKey> = (0..per_cpu)
                    .map(|i| {
                        let n = (cpu * per_cpu + i) as u32;
                        // 10.200.0.0/16 clients, 16,384 ports each.
                        let src = u32::from_ne_bytes([10, 200, (n >> 22) as u8, (n >> 14) as u8]);
                        FlowKey::new(
                            src,
                            vip,
                            (1024 + (n & 0x3fff) as u16).to_be(),
                            80u16.to_be(),
                            6,
                        )
                    })
                    .collect();
                if old {
                    batch::update(fd, &keys, &vec![old_flow; keys.len()])
                } else {
                    batch::update(fd, &keys, &vec![flow; keys.len()])
                }
                .context("filling CONNTRACK")?;
                Ok(())
            }));
        }
        for t in threads {
            t.join().expect("filler thread")?;
        }
        Ok(())
    })?;
    let mut walk = batch::Walk::default();
    let mut kept = 0;
    if old {
        while let Some(b) = walk.next::<FlowKey, common::OldFlow>(fd, 65536)? {
            kept += b.len();
        }
    } else {
        while let Some(b) = walk.next::<FlowKey, Flow>(fd, 65536)? {
            kept += b.len();
        }
    }
    Ok(kept)
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Active connections `list` shows in all.
fn counted(v: &Value) -> u64 {
    v["result"]["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["backends"].as_array().into_iter().flatten())
        .map(|b| b["active_conns"].as_u64().unwrap_or(0))
        .sum()
}

fn measure(bin: &Path, fill_entries: u32, max_entries: u32) -> Result<Figures> {
    let ns = Netns::new()?;
    let daemon = start(bin, &ns, max_entries)?;
    let kept = fill(&ns, fill_entries)?;
    let filled = Instant::now();
    let mut client = Client::connect(&daemon.socket)?;
    let counted_after = loop {
        let (v, _) = client.call(r#"{"op":"list"}"#)?;
        if counted(&v) >= kept as u64 {
            break Some(filled.elapsed());
        }
        if filled.elapsed() > COUNT_WAIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (mut list, mut change) = (Vec::new(), Vec::new());
    let cpu0 = cpu_seconds(daemon.child.id())?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(SECONDS) {
        let (_, took) = client.call(r#"{"op":"list"}"#)?;
        list.push(took);
        if n.is_multiple_of(25) {
            let weight = 50 + (n / 25) % 2;
            let (_, took) = client.call(&format!(
                r#"{{"op":"backend_set","service":"{SERVICE}","backend":"10.1.0.12","weight":{weight}}}"#
            ))?;
            change.push(took);
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu_s = cpu_seconds(daemon.child.id())? - cpu0;
    // `lb conns` over the whole table: its total must be every kept entry.
    let (v, conns_ms) = client.call(r#"{"op":"conns","limit":10}"#)?;
    let conns_total = v["result"]["total"].as_u64().unwrap_or(0);
    drop(daemon);
    Ok(Figures {
        kept,
        counted_after,
        conns_total,
        conns_ms,
        list: Latencies(list),
        change: Latencies(change),
        cpu_s,
    })
}
