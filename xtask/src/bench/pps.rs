//! `cargo xtask bench pps`: 64-byte UDP packets delivered to the backends, and the CPU
//! each costs, direct, through lb DSR and NAT, a bare XDP forwarder, plain kernel routing
//! and nftables DNAT. The frames come from `generator` (XDP live frames).
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lb_lab::lab::{self, Lab};
use serde_json::json;

use super::{
    INTERRUPTED, Labs, Row, fixed_backend_macs,
    generator::{self, Generator},
    if_stat, mac_of, pause,
    peers::{self, Peer, lb_stats},
    prepare, print_table, ratio, round_lines, rounds, run_in, verdict, xdp_attach,
};
use crate::util::step;

/// The UDP port of the packet-rate test: discard. Backends drop it at once (`xdp-fwd`'s
/// `sink` program), and count it in their interface's receive counter.
const PPS_PORT: u16 = 9;
const PPS_ROUNDS: usize = 3;
const PPS_SECONDS: f64 = 3.0;

#[derive(Clone, Copy, PartialEq)]
enum PpsRow {
    Direct,
    Fwd,
    LbDsr,
    Routed,
    Nft,
    LbNat,
}

impl Row for PpsRow {
    const ALL: &'static [PpsRow] = &[
        PpsRow::Direct,
        PpsRow::Fwd,
        PpsRow::LbDsr,
        PpsRow::Routed,
        PpsRow::Nft,
        PpsRow::LbNat,
    ];

    fn name(self) -> &'static str {
        match self {
            PpsRow::Direct => "direct (client → one backend)",
            PpsRow::Fwd => "bare XDP forwarder (xdp-fwd)",
            PpsRow::LbDsr => "lb DSR",
            PpsRow::Routed => "routed (kernel forwarding, no balancing)",
            PpsRow::Nft => "nftables DNAT, jhash ip saddr . udp sport",
            PpsRow::LbNat => "lb NAT",
        }
    }

    fn dsr(self) -> bool {
        matches!(self, PpsRow::Direct | PpsRow::Fwd | PpsRow::LbDsr)
    }
}

impl PpsRow {
    /// What takes the row's traffic on the balancer. (In the NAT lab the client's eth0
    /// peers with the balancer's: that side must run an XDP program to receive the
    /// generator's frames, lb or xdp-pass.)
    fn peers(self, lab: &Lab) -> Vec<Peer<'static>> {
        match self {
            PpsRow::Direct => vec![],
            PpsRow::Fwd => vec![Peer::Fwd],
            PpsRow::LbDsr | PpsRow::LbNat => {
                let extra = json!({"health_check": {"kind": "none"}});
                let config = peers::lb_config(lab, "udp", PPS_PORT, None, extra);
                vec![Peer::Lb {
                    name: "lb-udp",
                    config,
                }]
            }
            PpsRow::Routed => vec![Peer::Pass(lab.lb_ns())],
            PpsRow::Nft => vec![
                Peer::Pass(lab.lb_ns()),
                Peer::Nft {
                    proto: "udp",
                    port: PPS_PORT,
                    key: "ip saddr . udp sport",
                },
            ],
        }
    }
}

/// A 64-byte UDP frame (no FCS on a veth) from `src` to `dst`, port 9, from `src_mac`
/// to `dst_mac` (the next hop).
fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes()); // 20 + 8 + 22 bytes of payload
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&1024u16.to_be_bytes()); // varied by the generator
    udp[2..4].copy_from_slice(&PPS_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&30u16.to_be_bytes());
    // UDP checksum 0: none (IPv4), so the generator may vary the source port.
    f
}

fn delivered(lab: &Lab) -> Result<u64> {
    let mut n = 0;
    for b in &lab.backends {
        n += if_stat(lab, &b.ns, "eth0", "rx_packets")?;
    }
    Ok(n)
}

/// One packet-rate run: frames injected, frames delivered to the backends, and the
/// generator thread's wall and CPU time.
#[derive(Clone, Copy, Default)]
struct PpsRun {
    sent: u64,
    delivered: u64,
    wall: f64,
    cpu: f64,
}

impl PpsRun {
    fn pps(&self) -> f64 {
        if self.wall > 0.0 {
            self.delivered as f64 / self.wall
        } else {
            0.0
        }
    }

    /// CPU time per delivered packet. The generator runs pinned to one CPU, and every
    /// step of the path (veths, bridge, balancer, the backends' receive) runs on that CPU
    /// in softirq context: in the generating thread, or in that CPU's ksoftirqd when the
    /// kernel defers. Both are counted, nothing else: what one packet costs, whatever
    /// else the shared machine runs meanwhile.
    fn ns_per_packet(&self) -> f64 {
        self.cpu * 1e9 / self.delivered.max(1) as f64
    }

    /// Packets per second of one CPU (1 / `ns_per_packet`).
    fn pps_per_cpu(&self) -> f64 {
        if self.cpu > 0.0 {
            self.delivered as f64 / self.cpu
        } else {
            0.0
        }
    }
}

fn pps_run(lab: &Lab, generator: &mut Generator, frame: &[u8; 64], seconds: f64) -> Result<PpsRun> {
    let before = delivered(lab)?;
    let blast = generator.blast(
        &lab.client_ns(),
        "eth0",
        frame,
        Duration::from_secs_f64(seconds),
        &INTERRUPTED,
    )?;
    // Frames still in flight arrive within a few ms.
    pause(Duration::from_millis(100))?;
    let after = delivered(lab)?;
    Ok(PpsRun {
        sent: blast.packets,
        delivered: after - before,
        wall: blast.wall.as_secs_f64(),
        cpu: blast.cpu.as_secs_f64(),
    })
}

pub fn pps() -> Result<()> {
    let obj = prepare("packet rate")?;
    step(
        "labs: DSR (bp-d) and NAT (bp-n), 3 backends each, UDP sink (xdp-fwd sink) on every backend",
    );
    let mut labs = Labs::up("bp", &obj.pass)?;
    let pass = obj.pass.to_string_lossy().into_owned();
    for lab in labs.both() {
        for b in &lab.backends {
            xdp_attach(lab, &b.ns, "eth0", &obj.fwd, "sink")?;
        }
    }
    let (dsr, nat) = (&labs.dsr, &labs.nat);
    fixed_backend_macs(dsr)?;
    // The generator transmits XDP frames out of the client's eth0: its peer must run an
    // XDP program (in the NAT lab the peer is the balancer's eth0: lb, or xdp-pass).
    xdp_attach(dsr, &dsr.ns("sw"), "p-cli", &pass, "pass")?;

    let cli_mac_d = mac_of(dsr, &dsr.client_ns(), "eth0")?;
    let cli_mac_n = mac_of(nat, &nat.client_ns(), "eth0")?;
    let lb_mac_d = mac_of(dsr, &dsr.lb_ns(), "eth0")?;
    let lb_mac_n = mac_of(nat, &nat.lb_ns(), "eth0")?;
    let b1_mac_d = mac_of(dsr, &dsr.backends[0].ns, "eth0")?;
    let b1_n = nat.backends[0].addr.octets();
    let ip4 = |s: &str| -> [u8; 4] { s.parse::<std::net::Ipv4Addr>().expect("address").octets() };
    let frame = |row: PpsRow| match row {
        // To the first backend's MAC; it holds the VIP on lo.
        PpsRow::Direct => udp_frame(cli_mac_d, b1_mac_d, [10, 0, 0, 2], ip4(lab::DSR_VIP)),
        PpsRow::Fwd | PpsRow::LbDsr => {
            udp_frame(cli_mac_d, lb_mac_d, [10, 0, 0, 2], ip4(lab::DSR_VIP))
        }
        PpsRow::Routed => udp_frame(cli_mac_n, lb_mac_n, [10, 0, 1, 2], b1_n),
        PpsRow::Nft | PpsRow::LbNat => {
            udp_frame(cli_mac_n, lb_mac_n, [10, 0, 1, 2], ip4(lab::NAT_VIP))
        }
    };
    let mut generator = Generator::new(&obj.generator);

    let what = format!(": 64-byte UDP frames for {PPS_SECONDS} s per row");
    let results = rounds(&mut labs, PPS_ROUNDS, &what, |labs, row: PpsRow, round| {
        let lab = labs.of(row);
        let peers = row.peers(lab);
        let run = peers::around(lab, &obj, peers, |lab| {
            // A short warm-up (flows, neighbours, caches), then the timed run.
            pps_run(lab, &mut generator, &frame(row), 0.3)?;
            let run = pps_run(lab, &mut generator, &frame(row), PPS_SECONDS)?;
            if row == PpsRow::LbNat && round == PPS_ROUNDS {
                println!("{}", lb_stats(lab, &obj.lb, "lb-udp").unwrap_or_default());
            }
            Ok(run)
        })
        .with_context(|| row.name())?;
        println!(
            "    {:<44} {:>9.0} pps delivered ({:>5.1}% of {:>9} injected), {:>6.0} ns of CPU per packet",
            row.name(),
            run.pps(),
            run.delivered as f64 * 100.0 / run.sent.max(1) as f64,
            run.sent,
            run.ns_per_packet()
        );
        Ok(run)
    })?;

    // Each row's best round: the least CPU per packet, and (apart) the highest rate.
    let per_cpu = |r: PpsRow| results.best(r, PpsRun::pps_per_cpu);
    let wall = |r: PpsRow| results.of(r).iter().map(PpsRun::pps).fold(0.0, f64::max);
    let rate = |r: PpsRow| per_cpu(r).pps_per_cpu();

    // What each balancer costs per packet inside its XDP program, measured apart
    // (kernel BPF run-time statistics slow every program a little while on).
    step("profile: ns per packet inside the XDP program (kernel BPF statistics, 2 s each)");
    let mut prog_ns = Vec::new();
    for row in [PpsRow::Fwd, PpsRow::LbDsr, PpsRow::LbNat] {
        let lab = labs.of(row);
        let peers = row.peers(lab);
        let ns = peers::around(lab, &obj, peers, |lab| {
            prog_profile(lab, &mut generator, &frame(row))
        })
        .with_context(|| format!("profiling {}", row.name()))?;
        println!(
            "    {:<44} {ns:>6.1} ns per run of the XDP program",
            row.name()
        );
        prog_ns.push((row, ns));
    }
    let prog = |r: PpsRow| {
        prog_ns
            .iter()
            .find(|x| x.0 == r)
            .map_or("".to_string(), |x| format!("{:.0}", x.1))
    };

    print_table(
        "packet rate, 64-byte UDP frames",
        PPS_ROUNDS,
        "CPU ns per packet (whole path) | packets per CPU-second | × direct | × bare forwarder | × nftables | ns added over direct / routed | ns in the XDP program | delivered pps (wall clock)",
        |row: PpsRow| {
            let r = per_cpu(row);
            let base = if row.dsr() {
                per_cpu(PpsRow::Direct)
            } else {
                per_cpu(PpsRow::Routed)
            };
            let added = match row {
                PpsRow::Direct | PpsRow::Routed => "".to_string(),
                _ => format!("{:+.0}", r.ns_per_packet() - base.ns_per_packet()),
            };
            vec![
                format!("{:.0}", r.ns_per_packet()),
                format!("{:.0}", r.pps_per_cpu()),
                ratio(rate(row), rate(PpsRow::Direct)),
                ratio(rate(row), rate(PpsRow::Fwd)),
                ratio(rate(row), rate(PpsRow::Nft)),
                added,
                prog(row),
                format!("{:.0}", wall(row)),
            ]
        },
    );
    round_lines(&results, PpsRun::ns_per_packet, "CPU ns per packet");
    let (d, n, f) = (rate(PpsRow::LbDsr), rate(PpsRow::LbNat), rate(PpsRow::Fwd));
    let nft = rate(PpsRow::Nft);
    println!(
        "\ntarget: lb ≥ 2× nftables DNAT (packets per CPU-second): lb NAT {:.2}× ({}), lb DSR {:.2}× ({})",
        n / nft,
        verdict(n / nft, 2.0),
        d / nft,
        verdict(d / nft, 2.0)
    );
    println!(
        "target: lb ≥ 0.8× the bare forwarder (packets per CPU-second): lb DSR {:.2}× ({})",
        d / f,
        verdict(d / f, 0.8)
    );
    println!(
        "wall-clock rates: lb NAT {:.2}× nftables, lb DSR {:.2}× nftables, lb DSR {:.2}× the bare forwarder",
        wall(PpsRow::LbNat) / wall(PpsRow::Nft),
        wall(PpsRow::LbDsr) / wall(PpsRow::Nft),
        wall(PpsRow::LbDsr) / wall(PpsRow::Fwd)
    );
    Ok(())
}

/// ns per run of the XDP program attached to the balancer's eth0, while the generator
/// sends `frame` for 2 s, from the kernel's BPF run-time statistics.
fn prog_profile(lab: &Lab, generator: &mut Generator, frame: &[u8; 64]) -> Result<f64> {
    let show = run_in(lab, &lab.lb_ns(), &["ip", "link", "show", "dev", "eth0"])?;
    let id = show
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .context("no XDP program on the balancer's eth0")?
        .to_string();
    let stats = || -> Result<(u64, u64)> {
        let out = run_in(lab, &lab.lb_ns(), &["bpftool", "prog", "show", "id", &id])?;
        let field = |name: &str| -> u64 {
            out.split_whitespace()
                .skip_while(|w| *w != name)
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((field("run_time_ns"), field("run_cnt")))
    };
    let _on = generator::enable_stats()?;
    pps_run(lab, generator, frame, 0.3)?;
    let (t0, n0) = stats()?;
    pps_run(lab, generator, frame, 2.0)?;
    let (t1, n1) = stats()?;
    ensure!(n1 > n0, "the program did not run");
    Ok((t1 - t0) as f64 / (n1 - n0) as f64)
}
