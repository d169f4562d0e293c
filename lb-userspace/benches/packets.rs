//! `cargo xtask bench packets`: ns per packet of the production XDP program with one
//! BPF_PROG_TEST_RUN call per packet (repeat = 1: the kernel never feeds a program its
//! own output, and no wrapper restores the frame), for two builds side by side in one
//! run: the program of commit 341a9ec (built by xtask; `LB_BASELINE_OBJECT` names its
//! object file) and this build's. Also, for each build: established connections kept
//! through a SYN flood of twice the connection table's capacity followed by a table
//! change, and the kernel memory per connection. Then this build's IPv6 rows (341a9ec
//! has no IPv6 path), beside its IPv4 figures, and its memory per IPv6 connection.
//!
//! Both programs get the same services, written straight into their maps (each in its
//! own map layout): DSR 10.100.0.10:80/tcp and :53/udp, NAT 10.100.0.20:8080/tcp -> :80.
//! The floor is a program that only swaps the MACs and returns XDP_TX (from this build's
//! benchmark object). Each row is timed in rounds that alternate the builds, each round
//! `PACKETS` packets, one call each; the row's figure is the median of the round
//! medians. Every call's return code is checked, and so is every output of the rows that
//! forward.
//!
//! Not a test: figures go into docs/BENCHMARKS.md with the command.
mod common;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{
    BACKEND_F_LIVE, Backend, Counter, DEFAULT_CONNTRACK_ENTRIES, DEFAULT_TABLE_SIZE,
    FLOW_ESTABLISHED, Flow, FlowKey, HALF_OPEN_TIMEOUT_S, MAP_BACKENDS, MAP_CONNTRACK,
    MAP_CONNTRACK6, MAP_NAT_BACKENDS, MAP_NAT_FILTER, MAP_SERVICES, MAP_STATS, MAP_TABLES,
    MAP_TIMEOUTS, MAP_VIP_FILTER, MAP_VIPS, NatBackend, NatBackendKey, SERVICE_F_NAT, Service,
    ServiceKey, TABLE_CHUNK, TABLE_MAP_FLAGS, TableChunk, Timeouts, coarse_seconds, filter_bit,
    table_index,
};
use lb_lab::{
    frame::{self, ACK, Frame, SYN, TCP, UDP, addr, ipv4, tcp, udp},
    netns,
};
use lb_userspace::dataplane::{Dataplane, Limits, batch};

const BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench"));
const THIS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
/// Packets per round, rounds per build and row.
const PACKETS: u32 = 20_000;
const ROUNDS: usize = 3;
/// Established connections in the SYN-flood count.
const KEPT: u32 = 10_000;

use frame::{XDP_PASS, XDP_REDIRECT, XDP_TX};
use netns::{LB_CLI_MAC, LB_SRV_MAC, ROUTER_MAC};
const DSR_VIP: &str = "10.100.0.10";
const NAT_VIP: &str = "10.100.0.20";

fn ne(a: &str) -> u32 {
    u32::from_ne_bytes(addr(a).octets())
}

/// Which map layout a program has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// 341a9ec: per-CPU LRU lists, `NAT_REVERSE` and `NAT_SOURCES`, 24-byte flows.
    Old,
    /// This build: common LRU, `HALF_OPEN`, `NAT_BACKENDS`, `TIMEOUTS`, 16-byte flows.
    New,
}

/// One build's program and maps, loaded from its object.
struct Build {
    name: &'static str,
    layout: Layout,
    ebpf: Ebpf,
}

/// A backend of the benchmark's services: (index, record).
fn backends(cli: u32) -> Vec<(u32, Backend)> {
    // Addresses 10.0.0.11.., MACs 02:00:00:00:03:11..
    let dsr = |i: u32, last: u8, port: u16, service: u32| {
        (
            i,
            Backend {
                addr: ne(&format!("10.0.0.{last:x}")),
                port: port.to_be(),
                flags: BACKEND_F_LIVE,
                epoch: 1,
                ifindex: cli,
                mac: [2, 0, 0, 0, 3, last],
                src_mac: LB_CLI_MAC,
                service,
            },
        )
    };
    let nat = |i: u32, last: u8| {
        (
            i,
            Backend {
                addr: ne(&format!("10.1.0.{last:x}")),
                port: 80u16.to_be(),
                flags: BACKEND_F_LIVE,
                epoch: 1,
                service: 1,
                ..Default::default()
            },
        )
    };
    vec![
        dsr(0, 0x11, 80, 0),
        dsr(1, 0x12, 80, 0),
        dsr(2, 0x13, 80, 0),
        dsr(3, 0x14, 80, 0),
        nat(10, 0x11),
        nat(11, 0x12),
        dsr(20, 0x11, 53, 2),
        dsr(21, 0x12, 53, 2),
    ]
}

impl Build {
    fn load(name: &'static str, object: &[u8]) -> Result<Build> {
        let ebpf = EbpfLoader::new()
            .map_max_entries(MAP_CONNTRACK, DEFAULT_CONNTRACK_ENTRIES)
            .load(object)
            .with_context(|| format!("loading the {name} object"))?;
        let layout = if ebpf.map(MAP_NAT_BACKENDS).is_some() {
            Layout::New
        } else {
            Layout::Old
        };
        let mut b = Build { name, layout, ebpf };
        let prog: &mut Xdp = b
            .ebpf
            .program_mut("lb")
            .context("no program lb")?
            .try_into()?;
        prog.load().context("the verifier refused the program")?;
        Ok(b)
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("{}: no map {name}", self.name))
    }

    /// Writes the benchmark's services into the maps: slot i of each table holds the
    /// service's i-th backend modulo their number (`extra`: DSR web gets backend 3 in
    /// every fourth slot).
    fn install(&mut self, cli: u32, extra: bool) -> Result<()> {
        let all = backends(cli);
        {
            let mut bes: Array<_, Backend> = Array::try_from(self.map(MAP_BACKENDS)?)?;
            for (i, b) in &all {
                bes.set(*i, *b, 0)?;
            }
        }
        let services = [
            (0u32, DSR_VIP, 80u16, TCP, 0u32, vec![0u32, 1, 2]),
            (1, NAT_VIP, 8080, TCP, SERVICE_F_NAT, vec![10, 11]),
            (2, DSR_VIP, 53, UDP, 0, vec![20, 21]),
        ];
        for (id, vip, port, proto, flags, members) in services {
            let slots: Vec<u32> = (0..DEFAULT_TABLE_SIZE as usize)
                .map(|s| {
                    if extra && id == 0 && s % 4 == 0 {
                        3
                    } else {
                        members[s % members.len()]
                    }
                })
                .collect();
            self.set_table(id, &slots)?;
            let key = ServiceKey {
                vip: ne(vip),
                port: port.to_be(),
                proto,
                _pad: 0,
            };
            let mut svcs: HashMap<_, ServiceKey, Service> =
                HashMap::try_from(self.map(MAP_SERVICES)?)?;
            svcs.insert(
                key,
                Service {
                    id,
                    flags,
                    table_size: DEFAULT_TABLE_SIZE,
                    table_gen: 0,
                    key,
                },
                0,
            )?;
            let mut vips: HashMap<_, u32, u32> = HashMap::try_from(self.map(MAP_VIPS)?)?;
            vips.insert(ne(vip), 1, 0)?;
            self.set_filter(MAP_VIP_FILTER, ne(vip))?;
        }
        for (i, b) in all.iter().filter(|(_, b)| b.service == 1) {
            self.set_filter(MAP_NAT_FILTER, b.addr)?;
            match self.layout {
                Layout::Old => {
                    let mut m: HashMap<_, u32, u32> = HashMap::try_from(self.map("NAT_SOURCES")?)?;
                    m.insert(b.addr, 1, 0)?;
                }
                Layout::New => {
                    let mut m: HashMap<_, NatBackendKey, NatBackend> =
                        HashMap::try_from(self.map(MAP_NAT_BACKENDS)?)?;
                    m.insert(
                        NatBackendKey {
                            addr: b.addr,
                            port: b.port,
                            proto: TCP,
                            _pad: 0,
                        },
                        NatBackend {
                            vip: ne(NAT_VIP),
                            vport: 8080u16.to_be(),
                            _pad: 0,
                            backend: *i,
                            service: 1,
                        },
                        0,
                    )?;
                }
            }
        }
        if self.layout == Layout::New {
            let mut t: Array<_, Timeouts> = Array::try_from(self.map(MAP_TIMEOUTS)?)?;
            t.set(
                0,
                Timeouts {
                    tcp_s: 900,
                    tcp_fin_s: 120,
                    udp_s: 300,
                    half_open_s: HALF_OPEN_TIMEOUT_S,
                },
                0,
            )?;
        }
        Ok(())
    }

    fn set_table(&mut self, id: u32, slots: &[u32]) -> Result<()> {
        let chunks = slots.len().div_ceil(TABLE_CHUNK) as u32;
        let mut inner = Array::<MapData, TableChunk>::create(chunks, TABLE_MAP_FLAGS)?;
        for (i, c) in slots.chunks(TABLE_CHUNK).enumerate() {
            let mut chunk = [0u32; TABLE_CHUNK];
            chunk[..c.len()].copy_from_slice(c);
            inner.set(i as u32, chunk, 0)?;
        }
        let mut outer: ArrayOfMaps<_, Array<MapData, TableChunk>> =
            ArrayOfMaps::try_from(self.map(MAP_TABLES)?)?;
        outer.set(table_index(id, 0), &inner, 0)?;
        Ok(())
    }

    fn set_filter(&mut self, name: &str, addr: u32) -> Result<()> {
        let mut f: Array<_, u64> = Array::try_from(self.map(name)?)?;
        let (word, bit) = filter_bit(addr);
        let old = f.get(&word, 0)?;
        f.set(word, old | bit, 0)?;
        Ok(())
    }

    fn conntrack_fd(&self) -> Result<i32> {
        let m = self.ebpf.map(MAP_CONNTRACK).context("no CONNTRACK")?;
        let data = match m {
            aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => d,
            _ => anyhow::bail!("CONNTRACK is not a hash map"),
        };
        Ok(data.fd().as_fd().as_raw_fd())
    }

    /// Fills the connection table with `n` established flows of DSR web from
    /// 172.16.0.0/12, from this thread (so on the benchmark's CPU).
    fn fill(&self, n: u32) -> Result<()> {
        let fd = self.conntrack_fd()?;
        let now = monotonic_coarse_ns();
        let keys: Vec<FlowKey> = (0..n)
            .map(|i| {
                FlowKey::new(
                    u32::from_ne_bytes(std::net::Ipv4Addr::from(0xac10_0000 + (i >> 12)).octets()),
                    ne(DSR_VIP),
                    (1024 + (i & 0xfff) as u16).to_be(),
                    80u16.to_be(),
                    TCP,
                )
            })
            .collect();
        match self.layout {
            Layout::Old => {
                let v = common::OldFlow {
                    backend: 0,
                    epoch: 1,
                    service: 0,
                    state: FLOW_ESTABLISHED,
                    last_seen: now,
                };
                batch::update(fd, &keys, &vec![v; keys.len()])?;
            }
            Layout::New => {
                let v = Flow {
                    backend: 0,
                    epoch: 1,
                    state: FLOW_ESTABLISHED,
                    last_seen: coarse_seconds(now),
                };
                batch::update(fd, &keys, &vec![v; keys.len()])?;
            }
        }
        Ok(())
    }

    /// Kernel memory per connection: (DSR, NAT) bytes, and the fixed cost of the
    /// half-open slots (this build).
    fn memory_per_connection(&self) -> Result<(f64, f64, u64)> {
        let mem = |name: &str| -> Result<(u64, u32)> {
            let m = self.ebpf.map(name).with_context(|| format!("no {name}"))?;
            let data = match m {
                aya::maps::Map::LruHashMap(d)
                | aya::maps::Map::HashMap(d)
                | aya::maps::Map::Array(d) => d,
                _ => anyhow::bail!("{name}: unexpected map type"),
            };
            let fd = data.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            let bytes = info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .context("no memlock in fdinfo")?
                .trim()
                .parse()?;
            Ok((bytes, data.info()?.max_entries()))
        };
        let (ct, entries) = mem(MAP_CONNTRACK)?;
        let dsr = ct as f64 / f64::from(entries);
        Ok(match self.layout {
            Layout::Old => {
                let (rev, rev_entries) = mem("NAT_REVERSE")?;
                (dsr, dsr + rev as f64 / f64::from(rev_entries), 0)
            }
            Layout::New => (dsr, dsr, mem("HALF_OPEN")?.0),
        })
    }

    /// A global counter (this build's layout only).
    fn counter(&self, c: Counter) -> Result<u64> {
        let m = self.ebpf.map(MAP_STATS).context("no STATS")?;
        let stats: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(m)?;
        Ok(stats.get(&(c as u32), 0)?.iter().sum())
    }
}

/// A program the rows time: its column's name, and one frame run through it once.
trait Program {
    fn name(&self) -> &str;
    /// Runs `frame` once; returns (action, ns the kernel measured, output).
    fn run(&self, frame: &[u8], ingress: u32) -> Result<(u32, u32, Vec<u8>)>;
}

impl Program for Build {
    fn name(&self) -> &str {
        self.name
    }
    fn run(&self, frame: &[u8], ingress: u32) -> Result<(u32, u32, Vec<u8>)> {
        run_prog(&self.ebpf, "lb", frame, ingress)
    }
}

/// The floor: swaps the MACs, returns XDP_TX.
struct Floor(Ebpf);

impl Program for Floor {
    fn name(&self) -> &str {
        "floor"
    }
    fn run(&self, frame: &[u8], ingress: u32) -> Result<(u32, u32, Vec<u8>)> {
        run_prog(&self.0, "floor", frame, ingress)
    }
}

/// This build as `lb run` loads it (`lb` and the programs it tail-calls, `lb6` for
/// IPv6), with the benchmarks' IPv6 services; 341a9ec has no IPv6 path to compare.
struct Ipv6Build(Dataplane);

impl Program for Ipv6Build {
    fn name(&self) -> &str {
        "IPv6"
    }
    fn run(&self, frame: &[u8], ingress: u32) -> Result<(u32, u32, Vec<u8>)> {
        let (r, out) = self.0.test_run(frame, ingress)?;
        Ok((r.return_value, r.duration.as_nanos() as u32, out))
    }
}

fn monotonic_coarse_ns() -> u64 {
    lb_userspace::daemon::sweeper::monotonic_coarse_ns()
}

fn run_prog(ebpf: &Ebpf, prog: &str, frame: &[u8], ingress: u32) -> Result<(u32, u32, Vec<u8>)> {
    let p: &Xdp = ebpf.program(prog).context("no program")?.try_into()?;
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let r = p.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx[..]),
        repeat: 1,
        ..TestRunOptions::new()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, r.duration.as_nanos() as u32, out))
}

fn median(mut v: Vec<u32>) -> f64 {
    v.sort_unstable();
    f64::from(v[v.len() / 2])
}

/// A frame from the client side.
fn from_client(src: &str, dst: &str, l4: frame::L4) -> Vec<u8> {
    Frame::new(ROUTER_MAC, LB_CLI_MAC, ipv4(src, dst, l4)).bytes()
}

/// The source address of the `i`-th new flow: 10.64.0.0/10, never reused in one run.
fn fresh(i: u32) -> String {
    std::net::Ipv4Addr::from(0x0a40_0000 + i).to_string()
}

/// One packet stream of a row: for packet `i`, the frames to send first (untimed) and
/// the timed one.
type Packets<'a> = &'a dyn Fn(u32) -> (Vec<Vec<u8>>, Vec<u8>);

struct Env {
    floor: Floor,
    /// Next fresh source (shared by both builds, so neither meets the other's flows).
    next: std::cell::Cell<u32>,
}

impl Env {
    /// Median ns of one round of `PACKETS` packets through `prog`, which must return
    /// `expected` for each.
    fn round(
        &self,
        prog: &dyn Program,
        ingress: u32,
        expected: u32,
        packets: Packets<'_>,
    ) -> Result<f64> {
        let mut ns = Vec::with_capacity(PACKETS as usize);
        for _ in 0..PACKETS {
            let i = self.next.get();
            self.next.set(i + 1);
            let (before, frame) = packets(i);
            for f in before {
                prog.run(&f, ingress)?;
            }
            let (rc, t, _) = prog.run(&frame, ingress)?;
            if rc != expected {
                let (_, _, out) = prog.run(&frame, ingress)?;
                anyhow::bail!(
                    "{}: returned {rc}, not {expected}, for {:02x?} (output {:02x?})",
                    prog.name(),
                    &frame[..frame.len().min(74)],
                    &out[..out.len().min(74)]
                );
            }
            ns.push(t);
        }
        Ok(median(ns))
    }

    /// One row: the floor and each program, in alternating rounds; medians of rounds.
    fn row<P: Program>(
        &self,
        progs: &[P],
        ingress: u32,
        action: u32,
        packets: Packets<'_>,
    ) -> Result<(f64, Vec<f64>)> {
        let mut floor = Vec::new();
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); progs.len()];
        for _ in 0..ROUNDS {
            floor.push(self.round(&self.floor, ingress, XDP_TX, packets)?);
            for (p, v) in progs.iter().zip(per.iter_mut()) {
                v.push(self.round(p, ingress, action, packets)?);
            }
        }
        let mid = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Ok((mid(floor), per.into_iter().map(mid).collect()))
    }
}

fn load_builds(cli: u32) -> Result<Vec<Build>> {
    let mut builds = Vec::new();
    match std::env::var_os("LB_BASELINE_OBJECT") {
        Some(p) => {
            let object = std::fs::read(PathBuf::from(&p))
                .with_context(|| format!("reading {}", p.to_string_lossy()))?;
            builds.push(Build::load("341a9ec", &object)?);
        }
        None => eprintln!("LB_BASELINE_OBJECT is not set: measuring this build only"),
    }
    builds.push(Build::load("this build", THIS_OBJECT)?);
    for b in &mut builds {
        b.install(cli, false)?;
    }
    Ok(builds)
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the packet benchmark needs root (BPF, namespaces)"
    );
    let cpu = common::pin_to_last_cpu()?;
    let (cli, srv) = netns::enter_two_legs();
    netns::ip("neigh add 192.0.2.254 lladdr 02:00:00:00:01:fe dev cli0 nud permanent");
    netns::ip("neigh add 10.1.0.11 lladdr 02:00:00:00:02:11 dev srv0 nud permanent");
    netns::ip("neigh add 10.1.0.12 lladdr 02:00:00:00:02:12 dev srv0 nud permanent");
    let mut floor = EbpfLoader::new().load(BENCH_OBJECT)?;
    let p: &mut Xdp = floor.program_mut("floor").context("floor")?.try_into()?;
    p.load()?;
    let env = Env {
        floor: Floor(floor),
        next: std::cell::Cell::new(0),
    };
    let builds = load_builds(cli)?;

    // Established flows, made once per build: DSR and NAT (SYN then ACK).
    let dsr_ack = from_client("198.51.100.7", DSR_VIP, tcp(40000, 80, ACK));
    let nat_ack = from_client("198.51.100.7", NAT_VIP, tcp(40001, 8080, ACK));
    let mut rip = String::new();
    for b in &builds {
        for (vip, port) in [(DSR_VIP, 40000u16), (NAT_VIP, 40001)] {
            let dport = if vip == DSR_VIP { 80 } else { 8080 };
            b.run(
                &from_client("198.51.100.7", vip, tcp(port, dport, SYN)),
                cli,
            )?;
            b.run(
                &from_client("198.51.100.7", vip, tcp(port, dport, ACK)),
                cli,
            )?;
        }
        let (_, _, out) = b.run(&nat_ack, cli)?;
        rip = frame::ip_dst(&out).context("NAT output")?.to_string();
    }
    let nat_reply = Frame::new(
        [2, 0, 0, 0, 2, 0x11],
        LB_SRV_MAC,
        ipv4(&rip, "198.51.100.7", tcp(80, 40001, ACK)),
    )
    .bytes();
    let pass = from_client("198.51.100.7", "192.0.2.1", tcp(40000, 22, ACK));

    let same = |f: Vec<u8>| move |_: u32| (Vec::new(), f.clone());
    let syn = |i: u32| {
        (
            Vec::new(),
            from_client(&fresh(i), DSR_VIP, tcp(1024 + (i % 60000) as u16, 80, SYN)),
        )
    };
    let first_ack = |i: u32| {
        let (src, port) = (fresh(i), 1024 + (i % 60000) as u16);
        (
            vec![from_client(&src, DSR_VIP, tcp(port, 80, SYN))],
            from_client(&src, DSR_VIP, tcp(port, 80, ACK)),
        )
    };
    let udp_first = |i: u32| {
        (
            Vec::new(),
            from_client(&fresh(i), DSR_VIP, udp(1024 + (i % 60000) as u16, 53, b"q")),
        )
    };

    let mut rows: Vec<(&str, f64, Vec<f64>)> = Vec::new();
    let mut add = |name: &'static str, r: Result<(f64, Vec<f64>)>| -> Result<()> {
        let r = r.with_context(|| format!("row {name}"))?;
        rows.push((name, r.0, r.1));
        Ok(())
    };
    add(
        "established flow, DSR",
        env.row(&builds, cli, XDP_TX, &same(dsr_ack.clone())),
    )?;
    add(
        "NAT forward, established",
        env.row(&builds, cli, XDP_REDIRECT, &same(nat_ack.clone())),
    )?;
    add(
        "NAT return",
        env.row(&builds, srv, XDP_REDIRECT, &same(nat_reply.clone())),
    )?;
    add(
        "not for a VIP (passed)",
        env.row(&builds, cli, XDP_PASS, &same(pass.clone())),
    )?;
    // New flows while the table fills (it holds 1M; these rows add a few 100k).
    add(
        "TCP SYN, new flow (= SYN flood packet), filling",
        env.row(&builds, cli, XDP_TX, &syn),
    )?;
    add(
        "TCP first ACK after the SYN, filling",
        env.row(&builds, cli, XDP_TX, &first_ack),
    )?;
    add(
        "UDP first datagram, filling",
        env.row(&builds, cli, XDP_TX, &udp_first),
    )?;
    let rows6 = ipv6_rows(&env, cli, srv)?;
    // The same with the table full: every insert evicts.
    for b in &builds {
        b.fill(DEFAULT_CONNTRACK_ENTRIES + (DEFAULT_CONNTRACK_ENTRIES >> 2))?;
    }
    add(
        "TCP SYN, new flow (= SYN flood packet), full",
        env.row(&builds, cli, XDP_TX, &syn),
    )?;
    add(
        "TCP first ACK after the SYN, full",
        env.row(&builds, cli, XDP_TX, &first_ack),
    )?;
    add(
        "UDP first datagram, full",
        env.row(&builds, cli, XDP_TX, &udp_first),
    )?;

    println!(
        "XDP program per packet, one BPF_PROG_TEST_RUN call each (repeat = 1), CPU {cpu}; \
         {ROUNDS} rounds x {PACKETS} packets per build and row (median of round medians)"
    );
    print!("{:<48} {:>7}", "path", "floor");
    for b in &builds {
        print!(" {:>12} {:>8}", b.name, "x floor");
    }
    println!();
    for (name, floor, per) in &rows {
        print!("{name:<48} {floor:>7.0}");
        for ns in per {
            print!(" {ns:>12.0} {:>8.2}", ns / floor);
        }
        println!();
    }
    // A new TCP connection costs its SYN and its first ACK.
    let find = |n: &str| rows.iter().find(|r| r.0 == n).expect("row");
    for state in ["filling", "full"] {
        let s = find(&format!("TCP SYN, new flow (= SYN flood packet), {state}"));
        let a = find(&format!("TCP first ACK after the SYN, {state}"));
        print!(
            "{:<48} {:>7.0}",
            format!("new TCP connection (SYN + first ACK), {state}"),
            s.1 + a.1
        );
        for i in 0..builds.len() {
            let total = s.2[i] + a.2[i];
            print!(" {total:>12.0} {:>8.2}", total / (s.1 + a.1));
        }
        println!();
    }

    println!();
    println!(
        "IPv6, this build (same run; lb tail-calls lb6 for every IPv6 packet), beside its \
         IPv4 figure above"
    );
    println!(
        "{:<48} {:>7} {:>12} {:>8} {:>12} {:>8}",
        "path", "floor", "IPv6", "x floor", "IPv4", "x floor"
    );
    let this = builds.len() - 1;
    for (name, floor, ns) in &rows6 {
        let v4 = find(name);
        println!(
            "{name:<48} {floor:>7.0} {ns:>12.0} {:>8.2} {:>12.0} {:>8.2}",
            ns / floor,
            v4.2[this],
            v4.2[this] / v4.1
        );
    }
    let find6 = |n: &str| rows6.iter().find(|r| r.0 == n).expect("IPv6 row");
    let (s6, a6) = (
        find6("TCP SYN, new flow (= SYN flood packet), filling"),
        find6("TCP first ACK after the SYN, filling"),
    );
    let (s4, a4) = (
        find("TCP SYN, new flow (= SYN flood packet), filling"),
        find("TCP first ACK after the SYN, filling"),
    );
    let (floor6, ns6) = (s6.1 + a6.1, s6.2 + a6.2);
    let (floor4, ns4) = (s4.1 + a4.1, s4.2[this] + a4.2[this]);
    println!(
        "{:<48} {floor6:>7.0} {ns6:>12.0} {:>8.2} {ns4:>12.0} {:>8.2}",
        "new TCP connection (SYN + first ACK), filling",
        ns6 / floor6,
        ns4 / floor4
    );

    println!();
    syn_flood(cli)?;

    println!();
    println!("kernel memory per connection (memlock / max_entries, 1M entries)");
    for b in &builds {
        let (dsr, nat, fixed) = b.memory_per_connection()?;
        print!("  {:<12} DSR {dsr:>6.1} B, NAT {nat:>6.1} B", b.name);
        if fixed > 0 {
            print!(
                " (+ half-open slots: {:.1} MiB, fixed)",
                fixed as f64 / 1048576.0
            );
        }
        println!();
    }
    let (v6, entries) = rows6_memory()?;
    println!(
        "  {:<12} DSR {v6:>6.1} B, NAT {v6:>6.1} B per IPv6 connection (CONNTRACK6, {entries} \
         entries)",
        "this build"
    );
    Ok(())
}

/// Kernel memory per IPv6 connection of this build (`CONNTRACK6` at its default size),
/// and that size.
fn rows6_memory() -> Result<(f64, u32)> {
    let dp = Dataplane::load_object(THIS_OBJECT, &[], Limits::default())?;
    let m = dp
        .memory()
        .iter()
        .find(|m| m.name == MAP_CONNTRACK6)
        .context("no CONNTRACK6")?;
    Ok((m.bytes as f64 / f64::from(m.max_entries), m.max_entries))
}

/// This build's IPv6 rows, named as the IPv4 rows they match: (name, floor, ns). The
/// floor runs the same IPv6 frames.
fn ipv6_rows(env: &Env, cli: u32, srv: u32) -> Result<Vec<(&'static str, f64, f64)>> {
    use common::{DSR_VIP6, frame6};
    let mut dp = Dataplane::load_object(THIS_OBJECT, &["lb"], Limits::default())?;
    common::setup_ipv6(&mut dp, cli)?;
    let v6 = [Ipv6Build(dp)];
    let common::Frames6 {
        dsr_ack,
        nat_ack,
        nat_reply,
        pass,
    } = common::frames6(&|f| Ok(v6[0].run(f, cli)?.2))?;
    // Fresh sources: 2001:db8:cafe:1::/64, never reused in one run.
    let fresh6 = |i: u32| format!("2001:db8:cafe:1::{:x}:{:x}", i >> 16, i & 0xffff);
    let same = |f: Vec<u8>| move |_: u32| (Vec::new(), f.clone());
    let syn = |i: u32| {
        (
            Vec::new(),
            frame6(
                &fresh6(i),
                DSR_VIP6,
                tcp(1024 + (i % 60000) as u16, 80, SYN),
            ),
        )
    };
    let first_ack = |i: u32| {
        let (src, port) = (fresh6(i), 1024 + (i % 60000) as u16);
        (
            vec![frame6(&src, DSR_VIP6, tcp(port, 80, SYN))],
            frame6(&src, DSR_VIP6, tcp(port, 80, ACK)),
        )
    };
    let rows: [(&'static str, u32, u32, Packets<'_>); 6] = [
        ("established flow, DSR", cli, XDP_TX, &same(dsr_ack)),
        (
            "NAT forward, established",
            cli,
            XDP_REDIRECT,
            &same(nat_ack),
        ),
        ("NAT return", srv, XDP_REDIRECT, &same(nat_reply)),
        ("not for a VIP (passed)", cli, XDP_PASS, &same(pass)),
        (
            "TCP SYN, new flow (= SYN flood packet), filling",
            cli,
            XDP_TX,
            &syn,
        ),
        (
            "TCP first ACK after the SYN, filling",
            cli,
            XDP_TX,
            &first_ack,
        ),
    ];
    let mut out = Vec::new();
    for (name, ingress, action, packets) in rows {
        let (floor, ns) = env
            .row(&v6, ingress, action, packets)
            .with_context(|| format!("IPv6 row {name}"))?;
        out.push((name, floor, ns[0]));
    }
    Ok(out)
}

/// Established connections kept through a SYN flood of twice the table's capacity and
/// then a table change that moves a quarter of the slots, per build (fresh maps).
fn syn_flood(cli: u32) -> Result<()> {
    println!(
        "SYN flood: {KEPT} established DSR connections, then {} spoofed SYNs (2 x the \
         table's {DEFAULT_CONNTRACK_ENTRIES} entries), then a table change (a backend \
         added: 1/4 of the slots move); connections still on their backend",
        2 * DEFAULT_CONNTRACK_ENTRIES
    );
    for mut b in load_builds(cli)? {
        let conn = |i: u32, flags| {
            from_client(
                &std::net::Ipv4Addr::from(0x0a30_0000 + i).to_string(),
                DSR_VIP,
                tcp(2000 + (i % 50000) as u16, 80, flags),
            )
        };
        let mut macs = Vec::new();
        for i in 0..KEPT {
            b.run(&conn(i, SYN), cli)?;
            let (_, _, out) = b.run(&conn(i, ACK), cli)?;
            macs.push(out[..6].to_vec());
        }
        let syns_before = (b.layout == Layout::New)
            .then(|| b.counter(Counter::FlowSyn))
            .transpose()?;
        for i in 0..2 * DEFAULT_CONNTRACK_ENTRIES {
            let x = i.wrapping_mul(2_654_435_761);
            let src = std::net::Ipv4Addr::from(0x6400_0000 | (x >> 8)).to_string();
            b.run(
                &from_client(&src, DSR_VIP, tcp(1024 + (x & 0x7fff) as u16, 80, SYN)),
                cli,
            )?;
        }
        if let Some(before) = syns_before {
            let moved = b.counter(Counter::FlowSyn)? - before;
            ensure!(
                moved == u64::from(2 * DEFAULT_CONNTRACK_ENTRIES),
                "{}: flow_syn moved {moved}",
                b.name
            );
        }
        b.install(cli, true)?;
        // Past the flow cache's resync, so the connection table decides.
        std::thread::sleep(Duration::from_millis(2600));
        let mut kept = 0;
        for i in 0..KEPT {
            let (_, _, out) = b.run(&conn(i, ACK), cli)?;
            if out[..6] == macs[i as usize][..] {
                kept += 1;
            }
        }
        println!(
            "  {:<12} {kept} of {KEPT} kept ({} moved with the table)",
            b.name,
            KEPT - kept
        );
    }
    Ok(())
}
