//! `cargo xtask bench datapath`: ns per packet of the XDP pipeline with
//! BPF_PROG_TEST_RUN, side by side with the floor (a program that only swaps MACs and
//! returns XDP_TX), in one run, on one pinned CPU; plus the kernel memory of every map
//! at default sizes.
//!
//! Paths that rewrite the packet (NAT) or must see a new flow every round run inside
//! wrappers that restore the frame (and vary the source) before each round; the same
//! wrapper around the floor measures the wrapper's own cost, which is subtracted.
//! Every timed run is checked: its return code, and counters that moved by exactly the
//! number of rounds, prove the intended path ran every time.
mod common;

use lb_lab::{frame, netns};

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use aya::maps::Array;
use frame::{ACK, Frame, SYN, TCP, addr, ipv4, tcp};
use lb_common::{
    BACKEND_F_LIVE, Backend, Counter, DEFAULT_TABLE_SIZE, NatBackend, NatBackendKey, SERVICE_F_NAT,
    Service, ServiceKey,
};
use lb_userspace::dataplane::{Dataplane, Limits};

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench"));
const PROGRAMS: [&str; 16] = [
    "lb",
    "floor",
    "floor_restore",
    "lb_restore",
    "floor_newflow",
    "lb_newflow",
    "part_nop",
    "part_hash",
    "part_lru",
    "part_ktime",
    "part_jiffies",
    "part_percpu",
    "part_insert_percpu_lru",
    "part_insert_common_lru",
    "lb_newflow6",
    "floor_newflow6",
];
const FRAME: usize = 64;
const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;

use frame::{XDP_PASS, XDP_REDIRECT, XDP_TX};
use netns::{LB_CLI_MAC, LB_SRV_MAC, ROUTER_MAC};

fn ne(a: &str) -> u32 {
    u32::from_ne_bytes(addr(a).octets())
}

fn padded(f: Frame) -> Vec<u8> {
    let mut b = f.bytes();
    assert!(b.len() <= FRAME);
    b.resize(FRAME, 0);
    b
}

struct Bench {
    dp: Dataplane,
    cli: u32,
    srv: u32,
}

impl Bench {
    fn counters(&self) -> Result<Vec<u64>> {
        Ok(self.dp.counters()?)
    }

    fn set_frame(&mut self, frame: &[u8]) -> Result<()> {
        let mut map: Array<_, [u8; FRAME]> = Array::try_from(
            self.dp
                .ebpf_mut()
                .map_mut("BENCH_FRAME")
                .context("BENCH_FRAME")?,
        )?;
        // The first FRAME bytes: every header the timed paths rewrite (an IPv6 frame's
        // TCP checksum, past them, drifts from round to round; its path does not).
        map.set(0, <[u8; FRAME]>::try_from(&frame[..FRAME])?, 0)?;
        Ok(())
    }

    /// Median ns per packet of `ROUNDS` runs of `REPEAT` rounds each; checks every run.
    fn time(
        &mut self,
        program: &str,
        frame: &[u8],
        ingress: u32,
        action: u32,
        expect: &[Counter],
    ) -> Result<f64> {
        self.time_n(program, frame, ingress, action, expect, REPEAT)
    }

    fn time_n(
        &mut self,
        program: &str,
        frame: &[u8],
        ingress: u32,
        action: u32,
        expect: &[Counter],
        repeat: u32,
    ) -> Result<f64> {
        if program.contains("_restore") || program.contains("_newflow") {
            self.set_frame(frame)?;
        }
        let mut samples = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            // One untimed packet first: it (re)creates the flow when another run's
            // million new flows evicted it from the LRU connection table.
            self.dp.run(program, frame, ingress, 1)?;
            let before = self.counters()?;
            let (r, _) = self.dp.run(program, frame, ingress, repeat)?;
            let after = self.counters()?;
            let moved: Vec<_> = Counter::ALL
                .iter()
                .filter(|c| after[**c as usize] != before[**c as usize])
                .map(|c| (c.name(), after[*c as usize] - before[*c as usize]))
                .collect();
            ensure!(
                r.return_value == action,
                "{program} on {:02x?}: returned {} instead of {action}; counters moved: {moved:?}",
                &frame[..40],
                r.return_value
            );
            for c in expect {
                let mut moved = after[*c as usize] - before[*c as usize];
                if *c == Counter::FlowCacheHit {
                    // A cached flow takes the full path again every 250 jiffies, by
                    // design (it refreshes its connection-table entry): a run may cross
                    // that moment once.
                    moved += after[Counter::FlowHit as usize] - before[Counter::FlowHit as usize];
                }
                ensure!(
                    moved == u64::from(repeat),
                    "{program}: counter {} moved {moved}, not {repeat} (counters moved: {moved_all:?})",
                    c.name(),
                    moved_all = Counter::ALL
                        .iter()
                        .filter(|c| after[**c as usize] != before[**c as usize])
                        .map(|c| (c.name(), after[*c as usize] - before[*c as usize]))
                        .collect::<Vec<_>>()
                );
            }
            samples.push(r.duration);
        }
        samples.sort();
        Ok(nanos(samples[ROUNDS / 2]))
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn setup() -> Result<Bench> {
    let (cli, srv) = netns::enter_two_legs();
    netns::ip("neigh add 192.0.2.254 lladdr 02:00:00:00:01:fe dev cli0 nud permanent");
    netns::ip("neigh add 10.1.0.11 lladdr 02:00:00:00:02:11 dev srv0 nud permanent");
    netns::ip("neigh add 10.1.0.12 lladdr 02:00:00:00:02:12 dev srv0 nud permanent");
    let mut dp = Dataplane::load_object(OBJECT, &PROGRAMS, Limits::default())?;

    // DSR 10.100.0.10:80/tcp, three backends; NAT 10.100.0.20:8080/tcp -> :80, two.
    let dsr: Vec<u32> = (0..3).collect();
    for (i, last) in dsr.iter().zip([0x11u8, 0x12, 0x13]) {
        dp.set_backend(
            *i,
            Backend {
                addr: ne(&format!("10.0.0.{}", 11 + i)),
                port: 80u16.to_be(),
                flags: BACKEND_F_LIVE,
                epoch: 1,
                ifindex: cli,
                mac: [2, 0, 0, 0, 3, last],
                src_mac: LB_CLI_MAC,
                service: 0,
            },
        )?;
    }
    let nat: Vec<u32> = vec![10, 11];
    for (i, a) in nat.iter().zip(["10.1.0.11", "10.1.0.12"]) {
        dp.set_backend(
            *i,
            Backend {
                addr: ne(a),
                port: 80u16.to_be(),
                flags: BACKEND_F_LIVE,
                epoch: 1,
                service: 1,
                ..Default::default()
            },
        )?;
        dp.set_nat_backend(
            NatBackendKey {
                addr: ne(a),
                port: 80u16.to_be(),
                proto: TCP,
                _pad: 0,
            },
            Some(NatBackend {
                vip: ne("10.100.0.20"),
                vport: 8080u16.to_be(),
                _pad: 0,
                backend: *i,
                service: 1,
            }),
        )?;
    }
    for (id, vip, port, flags, backends) in [
        (0u32, "10.100.0.10", 80u16, 0u32, &dsr),
        (1, "10.100.0.20", 8080, SERVICE_F_NAT, &nat),
    ] {
        let slots: Vec<u32> = (0..DEFAULT_TABLE_SIZE as usize)
            .map(|s| backends[s % backends.len()])
            .collect();
        dp.set_table(id, &slots)?;
        dp.set_service(
            ServiceKey {
                vip: ne(vip),
                port: port.to_be(),
                proto: TCP,
                _pad: 0,
            },
            Service {
                id,
                flags,
                table_size: DEFAULT_TABLE_SIZE,
                table_gen: 0,
                key: Default::default(),
            },
        )?;
        dp.set_vip(ne(vip), 1)?;
    }
    Ok(Bench { dp, cli, srv })
}

fn main() -> Result<()> {
    // cargo bench passes --bench; nothing else is accepted.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the datapath benchmark needs root (BPF, namespaces)"
    );
    let cpu = common::pin_to_last_cpu()?;
    let mut b = setup()?;
    let (cli, srv) = (b.cli, b.srv);
    let client = |l4| {
        padded(Frame::new(
            ROUTER_MAC,
            LB_CLI_MAC,
            ipv4("198.51.100.7", "10.100.0.10", l4),
        ))
    };

    let pass = padded(Frame::new(
        ROUTER_MAC,
        LB_CLI_MAC,
        ipv4("198.51.100.7", "192.0.2.1", tcp(40000, 22, ACK)),
    ));
    let dsr_syn = client(tcp(40000, 80, SYN));
    // New flows vary the last byte of the source and the source port: from a network no
    // other flow of this benchmark uses, so they never run into an existing flow.
    let new_syn = padded(Frame::new(
        ROUTER_MAC,
        LB_CLI_MAC,
        ipv4("203.0.113.0", "10.100.0.10", tcp(0, 80, SYN)),
    ));
    // The same with ACK: a flow whose SYN was not seen here, which makes its entry (an
    // insert, as the first ACK of every handshake does).
    let new_ack = padded(Frame::new(
        ROUTER_MAC,
        LB_CLI_MAC,
        ipv4("203.0.113.0", "10.100.0.10", tcp(0, 80, ACK)),
    ));
    let dsr_ack = client(tcp(40000, 80, ACK));
    let nat_ack = padded(Frame::new(
        ROUTER_MAC,
        LB_CLI_MAC,
        ipv4("198.51.100.7", "10.100.0.20", tcp(40001, 8080, ACK)),
    ));
    // Create the established flows (DSR and NAT), then find the NAT flow's backend.
    b.dp.test_run(&dsr_syn, cli)?;
    let (_, out) = b.dp.test_run(&nat_ack, cli)?;
    let rip = frame::ip_dst(&out).context("NAT output")?.to_string();
    let nat_reply = padded(Frame::new(
        [2, 0, 0, 0, 2, 0x11],
        LB_SRV_MAC,
        ipv4(&rip, "198.51.100.7", tcp(80, 40001, ACK)),
    ));

    use Counter::*;
    // New entries while the connection table still has free ones (7 x 50,000 stays
    // below its 1M): first, before anything fills it.
    let floor_newflow_fresh = b.time_n("floor_newflow", &new_ack, cli, XDP_TX, &[], 50_000)?;
    let newflow_fresh = b.time_n("lb_newflow", &new_ack, cli, XDP_TX, &[Tx, FlowNew], 50_000)?;
    let floor = b.time("floor", &dsr_ack, cli, XDP_TX, &[])?;
    let floor_restore = b.time("floor_restore", &dsr_ack, cli, XDP_TX, &[])?;
    let floor_newflow = b.time("floor_newflow", &new_syn, cli, XDP_TX, &[])?;
    let rows = [
        (
            "established flow, DSR",
            b.time("lb", &dsr_ack, cli, XDP_TX, &[Tx, FlowCacheHit])?,
            0.0,
            1.5,
        ),
        (
            "new flow, SYN (half-open slot)",
            b.time("lb_newflow", &new_syn, cli, XDP_TX, &[Tx, FlowSyn])?,
            floor_newflow - floor,
            3.0,
        ),
        (
            "new entry, DSR (table filling)",
            newflow_fresh,
            floor_newflow_fresh - floor,
            3.0,
        ),
        (
            "new entry, DSR (table full)",
            b.time("lb_newflow", &new_ack, cli, XDP_TX, &[Tx, FlowNew])?,
            floor_newflow - floor,
            3.0,
        ),
        (
            "NAT forward (established)",
            b.time(
                "lb_restore",
                &nat_ack,
                cli,
                XDP_REDIRECT,
                &[Redirect, FlowCacheHit],
            )?,
            floor_restore - floor,
            0.0,
        ),
        (
            "NAT return",
            b.time(
                "lb_restore",
                &nat_reply,
                srv,
                XDP_REDIRECT,
                &[Redirect, NatReply],
            )?,
            floor_restore - floor,
            0.0,
        ),
        (
            "not for a VIP (pass)",
            b.time("lb", &pass, cli, XDP_PASS, &[PassNotVip])?,
            0.0,
            0.0,
        ),
    ];

    println!(
        "XDP datapath, BPF_PROG_TEST_RUN, {REPEAT} rounds x {ROUNDS} runs (median), CPU {cpu}"
    );
    println!("floor (swap MACs, XDP_TX): {floor:.1} ns/packet");
    println!(
        "wrapper cost: restore frame {:.1} ns, restore + new source {:.1} ns (measured around the floor, subtracted below)",
        floor_restore - floor,
        floor_newflow - floor
    );
    println!();
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>8}",
        "path", "raw ns", "ns", "x floor", "target"
    );
    for (name, raw, wrapper, target) in rows {
        let net = raw - wrapper;
        let ratio = net / floor;
        let target = if target > 0.0 {
            format!("<= {target:.1}")
        } else {
            "-".into()
        };
        println!("{name:<30} {raw:>8.1} {net:>8.1} {ratio:>8.2} {target:>8}");
    }

    ipv6_rows(&mut b, floor, floor_restore)?;

    println!();
    println!(
        "building blocks (each alone, then XDP_TX; the first line is the test-run loop itself)"
    );
    for (name, what) in [
        ("part_nop", "return XDP_TX"),
        ("part_hash", "+ 1 hash-map lookup (SERVICES)"),
        ("part_lru", "+ 1 LRU-hash lookup (CONNTRACK)"),
        ("part_ktime", "+ bpf_ktime_get_coarse_ns()"),
        ("part_jiffies", "+ bpf_jiffies64()"),
        ("part_percpu", "+ 1 per-CPU counter"),
        (
            "part_insert_percpu_lru",
            "+ insert, full LRU (per-CPU lists)",
        ),
        ("part_insert_common_lru", "+ insert, full LRU (common list)"),
    ] {
        if name.starts_with("part_insert") {
            // Fill the map first, so every timed insert evicts.
            b.dp.run(name, &dsr_ack, cli, 3 << 20)?;
        }
        let ns = b.time(name, &dsr_ack, cli, XDP_TX, &[])?;
        println!("  {what:<36} {ns:>6.1} ns");
    }

    println!();
    println!("map memory at default sizes (kernel memlock)");
    let mut total = 0;
    for m in
        b.dp.memory()
            .iter()
            .filter(|m| !m.name.starts_with("BENCH"))
    {
        println!(
            "  {:<14} {:>9} entries {:>12} bytes",
            m.name, m.max_entries, m.bytes
        );
        total += m.bytes;
    }
    for (map, family) in [("CONNTRACK", "IPv4"), ("CONNTRACK6", "IPv6")] {
        if let Some(m) = b.dp.memory().iter().find(|m| m.name == map) {
            println!(
                "  {family} connection: {:.1} bytes ({map}: {} bytes / {} entries)",
                m.bytes as f64 / f64::from(m.max_entries),
                m.bytes,
                m.max_entries
            );
        }
    }
    let table = Dataplane::table_memory(DEFAULT_TABLE_SIZE)?;
    println!(
        "  {:<14} {:>9} slots   {:>12} bytes per table (inner map of TABLES; two per service, \
         once it has changed)",
        "Maglev table", DEFAULT_TABLE_SIZE, table
    );
    println!(
        "  total without tables: {:.1} MiB; each service adds {:.2} MiB (both generations)",
        total as f64 / 1048576.0,
        2.0 * table as f64 / 1048576.0
    );
    Ok(())
}

// ---- IPv6 rows (kept apart from the IPv4 ones above) ----

/// The IPv6 rows, in the same run as the IPv4 ones (`floor`, `floor_restore`: the
/// floor and the restoring wrapper's cost, measured above).
fn ipv6_rows(b: &mut Bench, floor: f64, floor_restore: f64) -> Result<()> {
    use Counter::*;
    use common::frame6;
    common::setup_ipv6(&mut b.dp, b.cli)?;
    let (cli, srv) = (b.cli, b.srv);
    let new_syn = frame6("2001:db8:cafe:1::", common::DSR_VIP6, tcp(0, 80, SYN));
    let new_ack = frame6("2001:db8:cafe:1::", common::DSR_VIP6, tcp(0, 80, ACK));
    let common::Frames6 {
        dsr_ack,
        nat_ack,
        nat_reply,
        pass,
    } = common::frames6(&|f| Ok(b.dp.test_run(f, cli)?.1))?;
    // Inserts while the IPv6 table (2^18 entries by default) still has room: 7 x 30,000.
    let floor_newflow6 = b.time_n("floor_newflow6", &new_ack, cli, XDP_TX, &[], 30_000)?;
    let newflow6 = b.time_n("lb_newflow6", &new_ack, cli, XDP_TX, &[Tx, FlowNew], 30_000)?;
    let syn6 = b.time("lb_newflow6", &new_syn, cli, XDP_TX, &[Tx, FlowSyn])?;
    let floor_newflow6_m = b.time("floor_newflow6", &new_syn, cli, XDP_TX, &[])?;
    let rows = [
        (
            "IPv6 established flow, DSR",
            b.time("lb", &dsr_ack, cli, XDP_TX, &[Tx, FlowCacheHit])?,
            0.0,
        ),
        (
            "IPv6 new flow, SYN (half-open slot)",
            syn6,
            floor_newflow6_m - floor,
        ),
        (
            "IPv6 new entry, DSR (table filling)",
            newflow6,
            floor_newflow6 - floor,
        ),
        (
            "IPv6 NAT forward (established)",
            b.time(
                "lb_restore",
                &nat_ack,
                cli,
                XDP_REDIRECT,
                &[Redirect, FlowCacheHit],
            )?,
            floor_restore - floor,
        ),
        (
            "IPv6 NAT return",
            b.time(
                "lb_restore",
                &nat_reply,
                srv,
                XDP_REDIRECT,
                &[Redirect, NatReply],
            )?,
            floor_restore - floor,
        ),
        (
            "IPv6 not for a VIP (pass)",
            b.time("lb", &pass, cli, XDP_PASS, &[PassNotVip])?,
            0.0,
        ),
    ];
    println!();
    println!("IPv6 (same run, same floor; lb tail-calls lb6 for every IPv6 packet)");
    println!(
        "{:<36} {:>8} {:>8} {:>8}",
        "path", "raw ns", "ns", "x floor"
    );
    for (name, raw, wrapper) in rows {
        let net = raw - wrapper;
        println!("{name:<36} {raw:>8.1} {net:>8.1} {:>8.2}", net / floor);
    }
    Ok(())
}
