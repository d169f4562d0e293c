//! `cargo xtask bench cps`: new TCP connections per second (wrk, `Connection: close`)
//! direct, through lb DSR and NAT, and through HAProxy.
use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_lab::lab::{self, Lab};

use super::{
    Labs, Row, pause,
    peers::{self, Peer, lb_stats, start_lb},
    prepare, print_table, ratio, round_lines, rounds, run_in, verdict,
};
use crate::util::step;

const CPS_ROUNDS: usize = 3;
const CPS_SECONDS: &str = "3";

#[derive(Clone, Copy, PartialEq)]
enum CpsRow {
    Direct,
    LbDsr,
    LbNat,
    Haproxy,
}

impl Row for CpsRow {
    const ALL: &'static [CpsRow] = &[
        CpsRow::Direct,
        CpsRow::LbDsr,
        CpsRow::LbNat,
        CpsRow::Haproxy,
    ];

    fn name(self) -> &'static str {
        match self {
            CpsRow::Direct => "direct (client → one backend)",
            CpsRow::LbDsr => "lb DSR",
            CpsRow::LbNat => "lb NAT",
            CpsRow::Haproxy => "HAProxy 2.6, TCP mode, roundrobin",
        }
    }

    fn dsr(self) -> bool {
        matches!(self, CpsRow::Direct | CpsRow::LbDsr)
    }
}

/// wrk result: requests (= connections) per second and socket errors.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Wrk {
    rps: f64,
    errors: u64,
}

fn wrk(lab: &Lab, url: &str) -> Result<Wrk> {
    let out = run_in(
        lab,
        &lab.client_ns(),
        &[
            "timeout",
            "30",
            "wrk",
            "-t",
            "2",
            "-c",
            "64",
            "-d",
            CPS_SECONDS,
            "--timeout",
            "2s",
            "-H",
            "Connection: close",
            url,
        ],
    )?;
    parse_wrk(&out).with_context(|| format!("wrk {url}: unexpected output:\n{out}"))
}

/// wrk's summary (it has no machine-readable output): `Requests/sec:`, plus every
/// `Socket errors:` count and `Non-2xx or 3xx responses:` as errors.
fn parse_wrk(out: &str) -> Option<Wrk> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let mut errors = 0;
    for l in out.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Some(Wrk { rps, errors })
}

pub fn cps() -> Result<()> {
    let obj = prepare("connections per second")?;
    step("labs: DSR (bc-d) and NAT (bc-n), 3 nginx backends each");
    let mut labs = Labs::up("bc", &obj.pass)?;
    for lab in labs.both() {
        // Every side that opens connections (the client; HAProxy on the balancer) may
        // reuse ports in TIME_WAIT and use the whole port range, as load generators and
        // proxies are set up. Without this, after some 14,000 connections to one VIP
        // the client's connect() scans the port range in the kernel for a free port
        // (100% system time in wrk) and the rate collapses tenfold.
        for ns in [lab.client_ns(), lab.lb_ns()] {
            run_in(
                lab,
                &ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv4.tcp_tw_reuse=1",
                    "net.ipv4.ip_local_port_range=1024 65535",
                ],
            )?;
        }
    }
    let check = r#"{"kind": "tcp", "interval_ms": 1000}"#;
    // lb DSR runs throughout (nothing else uses the DSR lab's VIP).
    let dsr_config = labs.dsr.config(check, false);
    let dsr_pid = start_lb(&mut labs.dsr, &obj.lb, "lb-http", &dsr_config)?;
    let nat_servers: Vec<(String, u16)> = labs
        .nat
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), lab::ALT_PORT))
        .collect();
    let direct_url = format!("http://{}/", labs.dsr.backends[0].addr);
    let what = format!(": wrk -t 2 -c 64 -d {CPS_SECONDS}s, Connection: close");
    let results = rounds(&mut labs, CPS_ROUNDS, &what, |labs, row: CpsRow, _| {
        let lab = labs.of(row);
        let url = match row {
            CpsRow::Direct => direct_url.clone(),
            _ => format!("http://{}/", lab.vip()),
        };
        let peers = match row {
            CpsRow::Direct | CpsRow::LbDsr => vec![],
            CpsRow::LbNat => vec![Peer::Lb {
                name: "lb-http",
                config: lab.config(check, false),
            }],
            CpsRow::Haproxy => vec![Peer::Haproxy {
                name: "haproxy-http",
                port: 80,
                servers: &nat_servers,
                balance: "roundrobin",
            }],
        };
        let run =
            peers::around(lab, &obj, peers, |lab| wrk(lab, &url)).with_context(|| row.name())?;
        println!(
            "    {:<40} {:>8.0} connections/s ({} errors)",
            row.name(),
            run.rps,
            run.errors
        );
        // Let TIME_WAIT and the last FINs settle between rows.
        pause(Duration::from_millis(500))?;
        Ok(run)
    })?;
    println!(
        "{}",
        lb_stats(&labs.dsr, &obj.lb, "lb-http").unwrap_or_default()
    );
    labs.dsr.stop(dsr_pid);

    let best = |row| results.best(row, |w| w.rps);
    let haproxy = best(CpsRow::Haproxy).rps;
    print_table(
        "connections per second",
        CPS_ROUNDS,
        "connections/s | × HAProxy | errors",
        |row: CpsRow| {
            let w = best(row);
            vec![
                format!("{:.0}", w.rps),
                ratio(w.rps, haproxy),
                w.errors.to_string(),
            ]
        },
    );
    round_lines(&results, |w| w.rps, "conn/s");
    let (d, n) = (
        best(CpsRow::LbDsr).rps / haproxy,
        best(CpsRow::LbNat).rps / haproxy,
    );
    println!(
        "\ntarget: lb ≥ 2× HAProxy: lb DSR {d:.2}× ({}), lb NAT {n:.2}× ({})",
        verdict(d, 2.0),
        verdict(n, 2.0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real output of wrk 4.1.0 (Debian) as this benchmark runs it (-t 2 -c 64 -d 3
    // --timeout 2s -H 'Connection: close'), on the lab: a clean run, a backend answering
    // 503, and a backend answering only after 2.5 s.
    #[test]
    fn wrk_clean_run() {
        let w = parse_wrk(include_str!("testdata/wrk.txt")).expect("a summary");
        assert_eq!(
            w,
            Wrk {
                rps: 9306.80,
                errors: 0
            }
        );
    }

    #[test]
    fn wrk_counts_non_2xx_responses_as_errors() {
        let w = parse_wrk(include_str!("testdata/wrk-non2xx.txt")).expect("a summary");
        assert_eq!(
            w,
            Wrk {
                rps: 7131.99,
                errors: 22_230
            }
        );
    }

    #[test]
    fn wrk_counts_socket_errors() {
        let w = parse_wrk(include_str!("testdata/wrk-timeout.txt")).expect("a summary");
        assert_eq!(
            w,
            Wrk {
                rps: 2.32,
                errors: 7
            }
        );
    }

    #[test]
    fn wrk_without_a_rate_is_not_a_result() {
        assert_eq!(
            parse_wrk("unable to connect to 10.0.0.11:81 Connection refused\n"),
            None
        );
    }
}
