//! `cargo xtask bench failover`: failovers under load, ten of each kind, and what each
//! cost.
//!
//! - A keepalived pair (DSR, lb_lab::ha::Pair with examples/ha/keepalived-dsr-*.conf,
//!   `--stop-grace-ms 5000`): keepalived stopped on the master, SIGTERM to its lb, kill -9
//!   of its lb, its maintenance file. Each failover is followed by the restore (start it
//!   again, remove the file) and the failback to lb1.
//! - ECMP (lb_lab::ecmp::Ecmp, three nodes, BIRD with BGP and BFD): one node stopped with
//!   SIGTERM (it withdraws, then forwards for its grace) and started again; one node cut
//!   off (link down) and connected again.
//!
//! Throughout, new connections (one every 20 ms at most; a request fails without an
//! answer within 5 s) and long-lived connections (a request every 100 ms) run. For each
//! failover it measures: detection (the event → the VIP on the new master / the node out
//! of the router's route), then the time from there to the first request answered
//! through a new node (pair: the first new connection the new master counts; ECMP: the
//! first answer of the load), and the requests that failed from the event until the
//! restore began.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_lab::{
    ecmp::Ecmp,
    ha::Pair,
    lab::{DSR_VIP, Mode},
    load::Traffic,
};

use super::{check_interrupt, pause};
use crate::util::step;

const ROUNDS: usize = 10;
const CHECK: &str = r#"{"kind": "http", "path": "/", "interval_ms": 1000, "timeout_ms": 500, "rise": 2, "fall": 2}"#;
const PAIR_GRACE: &str = "5000";
const ECMP_GRACE: &str = "3000";

/// One failover.
#[derive(Clone, Copy, Debug)]
struct Sample {
    detection: Duration,
    /// From the detection to the first answer through a new node.
    first_answer: Duration,
    failed: usize,
}

/// Polls `cond` every 5 ms, for `limit` at most; how long it took.
fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        check_interrupt()?;
        if cond() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

fn vip() -> Result<SocketAddr> {
    format!("{DSR_VIP}:80").parse().context("VIP")
}

#[derive(Clone, Copy, PartialEq)]
enum PairEvent {
    KeepalivedStop,
    Sigterm,
    Kill9,
    Maintenance,
}

impl PairEvent {
    const ALL: [PairEvent; 4] = [
        PairEvent::KeepalivedStop,
        PairEvent::Sigterm,
        PairEvent::Kill9,
        PairEvent::Maintenance,
    ];

    fn name(self) -> &'static str {
        match self {
            PairEvent::KeepalivedStop => "pair: keepalived stopped on the master",
            PairEvent::Sigterm => "pair: SIGTERM to lb on the master (grace 5 s)",
            PairEvent::Kill9 => "pair: kill -9 of lb on the master",
            PairEvent::Maintenance => "pair: maintenance file on the master",
        }
    }
}

/// One failover of the pair from lb1 to lb2, then the restore and failback.
fn pair_failover(p: &mut Pair, traffic: &Traffic, event: PairEvent) -> Result<Sample> {
    let failed = traffic.load.tally().failed.len();
    let start = Instant::now();
    match event {
        PairEvent::KeepalivedStop => p.stop_keepalived(0),
        PairEvent::Sigterm => p.cluster.signal_lb(0, libc::SIGTERM),
        PairEvent::Kill9 => p.cluster.signal_lb(0, libc::SIGKILL),
        PairEvent::Maintenance => p.maintenance(0, true),
    }
    until("the VIP on lb2", Duration::from_secs(30), || {
        p.master() == Some(1)
    })?;
    let detection = start.elapsed();
    let conns = p.cluster.new_conns(1);
    let first_answer = until(
        "a new connection through lb2",
        Duration::from_secs(10),
        || p.cluster.new_conns(1) > conns,
    )?;
    pause(Duration::from_secs(2))?;
    if event == PairEvent::Sigterm {
        p.cluster.wait_lb_exit(0, Duration::from_secs(30));
    }
    let failed = traffic.load.tally().failed.len() - failed;
    match event {
        PairEvent::KeepalivedStop => p.start_keepalived(0),
        PairEvent::Sigterm | PairEvent::Kill9 => {
            if event == PairEvent::Kill9 {
                p.cluster.wait_lb_exit(0, Duration::from_secs(10));
            }
            p.cluster.start_lb(0, &["--stop-grace-ms", PAIR_GRACE]);
        }
        PairEvent::Maintenance => p.maintenance(0, false),
    }
    until("the failback to lb1", Duration::from_secs(60), || {
        p.master() == Some(0)
    })?;
    pause(Duration::from_secs(2))?;
    Ok(Sample {
        detection,
        first_answer,
        failed,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum EcmpEvent {
    Sigterm,
    LinkDown,
}

impl EcmpEvent {
    fn name(self) -> &'static str {
        match self {
            EcmpEvent::Sigterm => "ECMP: SIGTERM to lb on a node (grace 3 s)",
            EcmpEvent::LinkDown => "ECMP: a node cut off (link down; BFD)",
        }
    }
}

/// One node of three leaves the ECMP group, then joins again.
fn ecmp_failover(e: &mut Ecmp, traffic: &Traffic, event: EcmpEvent, node: usize) -> Result<Sample> {
    let all: BTreeSet<usize> = (0..3).collect();
    let rest: BTreeSet<usize> = all.iter().copied().filter(|i| *i != node).collect();
    let failed = traffic.load.tally().failed.len();
    let start = Instant::now();
    match event {
        EcmpEvent::Sigterm => e.cluster.signal_lb(node, libc::SIGTERM),
        EcmpEvent::LinkDown => e.link(node, false),
    }
    until("the node out of the route", Duration::from_secs(30), || {
        e.next_hops() == rest
    })?;
    let detection = start.elapsed();
    let ok = traffic.load.tally().ok;
    let first_answer = until("an answer", Duration::from_secs(10), || {
        traffic.load.tally().ok > ok
    })?;
    pause(Duration::from_secs(2))?;
    if event == EcmpEvent::Sigterm {
        e.cluster.wait_lb_exit(node, Duration::from_secs(30));
    }
    let failed = traffic.load.tally().failed.len() - failed;
    match event {
        EcmpEvent::Sigterm => {
            e.start_lb(node, &["--stop-grace-ms", ECMP_GRACE]);
        }
        EcmpEvent::LinkDown => e.link(node, true),
    }
    // BIRD waits 5 s (doubling on repeated errors, up to 30 s) before a new session.
    until(
        "the node back in the route",
        Duration::from_secs(120),
        || e.next_hops() == all,
    )?;
    pause(Duration::from_secs(2))?;
    Ok(Sample {
        detection,
        first_answer,
        failed,
    })
}

/// Long-lived connections that broke so far.
fn broken(traffic: &Traffic) -> usize {
    traffic
        .sessions
        .iter()
        .filter(|s| s.seen().broken.is_some())
        .count()
}

/// A row of the table: the kind of failover, its samples, the long-lived connections
/// that broke during them (`N of M` alive before).
type Row = (&'static str, Vec<Sample>, String);

/// `ROUNDS` failovers of one kind (`one(round)`: the sample and what its two times
/// measure, for the line it prints).
fn series(
    traffic: &Traffic,
    name: &'static str,
    mut one: impl FnMut(usize) -> Result<(Sample, String)>,
) -> Result<Row> {
    let before = broken(traffic);
    let mut samples = Vec::new();
    for round in 1..=ROUNDS {
        let (s, what) = one(round)?;
        println!(
            "  {name} {round}/{ROUNDS}: {what}: {:.0} ms + {:.0} ms, {} failed",
            ms(s.detection),
            ms(s.first_answer),
            s.failed
        );
        samples.push(s);
    }
    let alive = traffic.sessions.len() - before;
    Ok((
        name,
        samples,
        format!("{} of {alive}", broken(traffic) - before),
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `median (max)` in ms of `f` over `samples`.
fn median_max(samples: &[Sample], f: impl Fn(&Sample) -> Duration) -> String {
    let mut v: Vec<f64> = samples.iter().map(|s| ms(f(s))).collect();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!("{median:.0} ({:.0})", v.last().copied().unwrap_or(0.0))
}

fn record(name: &str, samples: &[Sample]) {
    let line: Vec<String> = samples
        .iter()
        .map(|s| {
            format!(
                "{:.0}+{:.0}ms/{}",
                ms(s.detection),
                ms(s.first_answer),
                s.failed
            )
        })
        .collect();
    println!("    {name}: {}", line.join(" "));
}

pub fn failover() -> Result<()> {
    let objects = super::prepare("failover")?;
    let lb = Path::new(&objects.lb);
    let mut rows: Vec<Row> = Vec::new();

    step("the keepalived pair (DSR): lbfo-p");
    let mut p = Pair::up(Mode::Dsr, "lbfo-p", lb, &objects.pass);
    let config = p.cluster.lab.config(CHECK, false);
    p.start(&config, &["--stop-grace-ms", PAIR_GRACE]);
    let traffic = Traffic::start(&p.cluster.lab.client_ns(), vip()?, 4);
    for event in PairEvent::ALL {
        let row = series(&traffic, event.name(), |_| {
            let s = pair_failover(&mut p, &traffic, event)?;
            Ok((s, "the VIP moved; a new connection through lb2".into()))
        })?;
        rows.push(row);
    }
    drop(traffic);
    drop(p);

    step("ECMP, three nodes: lbfo-e");
    let mut e = Ecmp::up("lbfo-e", 3, lb, &objects.pass);
    let config = e.cluster.lab.config(CHECK, false);
    e.start(&config, &["--stop-grace-ms", ECMP_GRACE]);
    let traffic = Traffic::start(&e.cluster.lab.client_ns(), vip()?, 6);
    for event in [EcmpEvent::Sigterm, EcmpEvent::LinkDown] {
        let row = series(&traffic, event.name(), |round| {
            // Each node in turn.
            let node = round % 3;
            let s = ecmp_failover(&mut e, &traffic, event, node)?;
            Ok((s, format!("lb{} out of the route; an answer", node + 1)))
        })?;
        rows.push(row);
    }
    drop(traffic);
    drop(e);

    step(&format!(
        "failovers under load, {ROUNDS} of each kind ({})",
        super::machine_note()
    ));
    println!(
        "\n| failover | detection: event → VIP moved / node out of the route, ms median (max) | then → first answer through a new node, ms median (max) | failed requests, all {ROUNDS} | long-lived connections broken |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, samples, broken) in &rows {
        println!(
            "| {name} | {} | {} | {} | {broken} |",
            median_max(samples, |s| s.detection),
            median_max(samples, |s| s.first_answer),
            samples.iter().map(|s| s.failed).sum::<usize>()
        );
    }
    println!("\n  every failover (detection+first answer/failed):");
    for (name, samples, _) in &rows {
        record(name, samples);
    }
    Ok(())
}
