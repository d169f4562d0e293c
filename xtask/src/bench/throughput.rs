//! `cargo xtask bench throughput`: TCP throughput (iperf3 -P 4, both directions) direct,
//! through lb DSR and NAT, a bare XDP forwarder, plain kernel routing, HAProxy and
//! nftables DNAT.
use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_lab::lab::Lab;
use serde_json::{Value, json};

use super::{
    Labs, Row, drops_since, fixed_backend_macs, lab_drops, listening,
    peers::{self, Peer},
    prepare, print_table, ratio, rounds, run_in, verdict, wait_for,
};
use crate::util::step;

const IPERF_PORT: u16 = 5201;
const TP_ROUNDS: usize = 2;
/// Seconds measured per iperf3 run (after one omitted second of slow start).
const TP_SECONDS: &str = "2";

/// One iperf3 result: Mbit/s at the receiver and the sender's retransmissions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Iperf {
    mbps: f64,
    retr: u64,
}

/// iperf3 from the client to `target`, 4 streams; `reverse`: the server sends (-R).
fn iperf(lab: &Lab, target: &str, reverse: bool) -> Result<Iperf> {
    let mut args = vec![
        "timeout", "30", "iperf3", "-c", target, "-p", "5201", "-P", "4", "-t", TP_SECONDS, "-O",
        "1", "-J",
    ];
    if reverse {
        args.push("-R");
    }
    let out = run_in(lab, &lab.client_ns(), &args)?;
    parse_iperf(&out).with_context(|| format!("iperf3 to {target}: unexpected output:\n{out}"))
}

/// The totals of an `iperf3 -J` run, all streams together, whichever side sent:
/// `end.sum_received.bits_per_second` (what the receiver got, as Mbit/s of 10^6 bits)
/// and `end.sum_sent.retransmits` (the sender's).
fn parse_iperf(json: &str) -> Result<Iperf> {
    let v: Value = serde_json::from_str(json).context("not JSON")?;
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")?;
    let retr = end["sum_sent"]["retransmits"]
        .as_u64()
        .context("no end.sum_sent.retransmits")?;
    Ok(Iperf {
        mbps: bps / 1e6,
        retr,
    })
}

/// One round of a throughput row: both directions, and the frames dropped in the lab
/// during the client→server run (with the place that dropped most).
#[derive(Clone, Default)]
struct TpRun {
    fwd: Iperf,
    rev: Iperf,
    drops: u64,
    at: String,
}

/// A throughput row: where it runs and what to set up and tear down around it.
#[derive(Clone, Copy, PartialEq)]
enum TpRow {
    Direct,
    DirectXdp,
    LbDsr,
    Fwd,
    Routed,
    LbNat,
    Haproxy,
    Nft,
}

impl Row for TpRow {
    const ALL: &'static [TpRow] = &[
        TpRow::Direct,
        TpRow::DirectXdp,
        TpRow::LbDsr,
        TpRow::Fwd,
        TpRow::Routed,
        TpRow::LbNat,
        TpRow::Haproxy,
        TpRow::Nft,
    ];

    fn name(self) -> &'static str {
        match self {
            TpRow::Direct => "direct (client → one backend)",
            TpRow::DirectXdp => "direct, backend's eth0 runs xdp-pass",
            TpRow::LbDsr => "lb DSR",
            TpRow::Fwd => "bare XDP forwarder (xdp-fwd)",
            TpRow::Routed => "routed (kernel forwarding, no balancing)",
            TpRow::LbNat => "lb NAT",
            TpRow::Haproxy => "HAProxy 2.6, TCP mode, balance source",
            TpRow::Nft => "nftables DNAT, jhash ip saddr",
        }
    }

    fn dsr(self) -> bool {
        matches!(
            self,
            TpRow::Direct | TpRow::DirectXdp | TpRow::LbDsr | TpRow::Fwd
        )
    }
}

pub fn throughput() -> Result<()> {
    let obj = prepare("throughput")?;
    step("labs: DSR (bt-d) and NAT (bt-n), 3 backends each, iperf3 servers on every backend");
    let mut labs = Labs::up("bt", &obj.pass)?;
    for lab in [&mut labs.dsr, &mut labs.nat] {
        for i in 0..lab.backends.len() {
            let ns = lab.backends[i].ns.clone();
            let log = format!("iperf3-{}.log", lab.backends[i].name);
            lab.spawn(&ns, &["iperf3", "-s", "-p", "5201"], &log);
        }
        for b in &lab.backends {
            wait_for("iperf3 -s", Duration::from_secs(5), || {
                listening(lab, &b.ns, IPERF_PORT)
            })?;
        }
    }
    fixed_backend_macs(&labs.dsr)?;
    let b1_dsr = labs.dsr.backends[0].addr.to_string();
    let b1_nat = labs.nat.backends[0].addr.to_string();
    let nat_servers: Vec<(String, u16)> = labs
        .nat
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), IPERF_PORT))
        .collect();

    let results = rounds(&mut labs, TP_ROUNDS, "", |labs, row: TpRow, _| {
        let lab = labs.of(row);
        let vip = lab.vip().to_string();
        let (target, peers) = match row {
            TpRow::Direct => (b1_dsr.clone(), vec![]),
            TpRow::DirectXdp => (b1_dsr.clone(), vec![Peer::Pass(lab.backends[0].ns.clone())]),
            TpRow::Routed => (b1_nat.clone(), vec![]),
            TpRow::LbDsr | TpRow::LbNat => {
                let extra = json!({"persistence": true,
                                   "health_check": {"kind": "tcp", "probe_port": 80}});
                let config = peers::lb_config(lab, "tcp", IPERF_PORT, Some(IPERF_PORT), extra);
                let lb = Peer::Lb {
                    name: "lb-tcp",
                    config,
                };
                (vip, vec![lb])
            }
            TpRow::Fwd => (vip, vec![Peer::Fwd]),
            TpRow::Haproxy => {
                let haproxy = Peer::Haproxy {
                    name: "haproxy-tcp",
                    port: IPERF_PORT,
                    servers: &nat_servers,
                    balance: "source",
                };
                (vip, vec![haproxy])
            }
            TpRow::Nft => {
                let nft = Peer::Nft {
                    proto: "tcp",
                    port: IPERF_PORT,
                    key: "ip saddr",
                };
                (vip, vec![nft])
            }
        };
        let run = peers::around(lab, &obj, peers, |lab| {
            let before = lab_drops(lab)?;
            let fwd = iperf(lab, &target, false).with_context(|| row.name())?;
            let (drops, at) = drops_since(&before, &lab_drops(lab)?);
            let rev = iperf(lab, &target, true).with_context(|| row.name())?;
            Ok(TpRun {
                fwd,
                rev,
                drops,
                at,
            })
        })?;
        println!(
            "    {:<40} {:>5.0} Mbit/s ({:>5} retr, {:>5} drops, most at {:<13})   -R {:>5.0} Mbit/s ({:>5} retr)",
            row.name(),
            run.fwd.mbps,
            run.fwd.retr,
            run.drops,
            run.at,
            run.rev.mbps,
            run.rev.retr
        );
        Ok(run)
    })?;

    // Each row's best round, for each direction.
    let best_fwd = |row| results.best(row, |r| r.fwd.mbps);
    let best_rev = |row| results.best(row, |r| r.rev.mbps).rev.mbps;
    let direct = (best_fwd(TpRow::Direct).fwd.mbps, best_rev(TpRow::Direct));
    let routed = (best_fwd(TpRow::Routed).fwd.mbps, best_rev(TpRow::Routed));
    print_table(
        "throughput, iperf3 -P 4",
        TP_ROUNDS,
        "client→server Gbit/s | × direct | × routed | retransmits | frames dropped in the lab (most at) | server→client (-R) Gbit/s | × direct | × routed",
        |row: TpRow| {
            let run = best_fwd(row);
            let (f, retr) = (run.fwd.mbps, run.fwd.retr);
            let r = best_rev(row);
            let drops = if run.drops > 0 {
                format!("{} ({})", run.drops, run.at)
            } else {
                "0".into()
            };
            let (x_routed_f, x_routed_r) = if row.dsr() {
                ("".to_string(), "".to_string())
            } else {
                (ratio(f, routed.0), ratio(r, routed.1))
            };
            vec![
                format!("{:.2}", f / 1000.0),
                ratio(f, direct.0),
                x_routed_f,
                retr.to_string(),
                drops,
                format!("{:.2}", r / 1000.0),
                ratio(r, direct.1),
                x_routed_r,
            ]
        },
    );
    let lbdsr = best_fwd(TpRow::LbDsr).fwd.mbps / direct.0;
    println!(
        "\ntarget: lb DSR client→server ≥ 0.9× direct: {:.2}× — {}",
        lbdsr,
        verdict(lbdsr, 0.9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real `iperf3 -J -P 4 -t 2 -O 1` output (iperf 3.12) of this benchmark's bare
    // forwarder row, both directions. (iperf3 repeats some keys, `sock_bufsize` among
    // them; serde_json keeps the last.)
    const FORWARD: &str = include_str!("testdata/iperf3-P4.json");
    const REVERSE: &str = include_str!("testdata/iperf3-P4-R.json");

    #[test]
    fn iperf_gives_the_receivers_rate_and_the_senders_retransmits() {
        // end.sum_received.bits_per_second and end.sum_sent.retransmits of the samples
        // (serde_json may round a float's last digit: compared to within 1 bit/s).
        let fwd = parse_iperf(FORWARD).expect("a complete run");
        assert!((fwd.mbps - 1_828.744_172_778_645).abs() < 1e-6, "{fwd:?}");
        assert_eq!(fwd.retr, 11_607);
        // With -R the server sends: its retransmits come back in the client's report.
        let rev = parse_iperf(REVERSE).expect("a complete -R run");
        assert!((rev.mbps - 3_748.435_279_761_547_6).abs() < 1e-6, "{rev:?}");
        assert_eq!(rev.retr, 282);
    }

    #[test]
    fn iperf_without_totals_is_an_error() {
        // What iperf3 -J prints when it cannot run (its shape, not a recorded sample).
        let failed = r#"{"start": {}, "intervals": [], "end": {},
                         "error": "unable to connect to server: Connection refused"}"#;
        assert!(parse_iperf(failed).is_err());
        assert!(parse_iperf("iperf3: error").is_err());
    }
}
