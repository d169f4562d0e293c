//! `cargo xtask lab ha`: an active/standby pair failing over under load.
//!
//! Builds the DSR pair (namespaces lbha-{cli,sw,lb1,lb2,b1,b2,b3}: lb_lab::ha::Pair),
//! runs lb and keepalived (examples/ha/keepalived-dsr-lb{1,2}.conf) on both nodes and,
//! with new connections and long-lived connections running throughout and the counts
//! per node and per backend printed every second: puts lb1 in maintenance and takes it
//! out again (failover, failback), stops lb on lb1 with SIGTERM (a grace) and starts it
//! again, kills it with -9 and starts it again. Torn down on success, failure and
//! Ctrl-C.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use lb_lab::{
    ha::Pair,
    lab::{DSR_VIP, Mode},
    load::Traffic,
};

use super::{check_interrupt, summary, wait_event, watch};
use crate::util::step;

/// The HTTP check of the demo's service (the lab's configuration).
const CHECK: &str = r#"{"kind": "http", "path": "/", "interval_ms": 1000, "timeout_ms": 500, "rise": 2, "fall": 2}"#;

pub fn demo() -> Result<()> {
    let (lb, pass) = super::build()?;
    super::catch_ctrl_c();
    step(
        "lab: a DSR pair — namespaces lbha-{cli,sw,lb1,lb2,b1,b2,b3}, bridge br0, nginx on 10.0.0.11-13",
    );
    println!(
        "  client 10.0.0.2 --> VIP {DSR_VIP} (on-link: the VRRP master answers ARP for it) --> lb1 10.0.0.3 or lb2 10.0.0.4 --> backends"
    );
    let mut pair = Pair::up(Mode::Dsr, "lbha", &lb, &pass);
    let result = run(&mut pair);
    if result.is_err() {
        eprintln!("{}", pair.cluster.logs());
    }
    drop(pair);
    step("lab torn down (namespaces removed, processes stopped)");
    result
}

fn master(p: &Pair) -> String {
    match p.master() {
        Some(i) => format!("master lb{}", i + 1),
        None => "master: changing".into(),
    }
}

/// Waits until node `to` is the master, says how long it took (`said` … `after 2.1 s`)
/// and shows the traffic for 3 s.
fn moved(p: &Pair, traffic: &Traffic, to: usize, said: &str) -> Result<()> {
    let took = wait_event(said, || p.master() == Some(to))?;
    println!("  {said} after {:.1} s", took.as_secs_f64());
    watch(3, traffic, || master(p), || p.cluster.conns())
}

fn run(p: &mut Pair) -> Result<()> {
    let config = p.cluster.lab.config(CHECK, false);
    step(
        "lb run --stop-grace-ms 5000 on lb1 and lb2 (the same configuration), keepalived beside each",
    );
    p.start(&config, &["--stop-grace-ms", "5000"]);
    println!(
        "  lb1 (priority 150) is the master: it holds {DSR_VIP} on eth0; lb2 (100) is the standby"
    );
    let vip: SocketAddr = format!("{DSR_VIP}:80").parse().context("VIP")?;
    let traffic = Traffic::start(&p.cluster.lab.client_ns(), vip, 4);
    step(
        "traffic: a new connection every 20 ms, and 4 long-lived connections (a request every 100 ms)",
    );
    watch(3, &traffic, || master(p), || p.cluster.conns())?;

    step("maintenance: touch lb1's maintenance file (its priority drops to 50)");
    p.maintenance(0, true);
    moved(p, &traffic, 1, "the VIP moved to lb2")?;
    step("maintenance over: rm lb1's maintenance file (failback: lb1 preempts)");
    p.maintenance(0, false);
    moved(p, &traffic, 0, "the VIP moved back to lb1")?;

    step("SIGTERM to lb run on lb1: `lb status` fails at once, the datapath forwards 5 s more");
    p.cluster.signal_lb(0, libc::SIGTERM);
    moved(
        p,
        &traffic,
        1,
        "keepalived's track_script moved the VIP to lb2",
    )?;
    let status = p.cluster.wait_lb_exit(0, Duration::from_secs(30));
    println!("  lb run on lb1 detached after its grace and exited ({status})");
    step("lb run on lb1 again: once it serves, keepalived gives it the VIP back");
    p.cluster.start_lb(0, &["--stop-grace-ms", "5000"]);
    moved(p, &traffic, 0, "lb1 is the master again")?;

    step("kill -9 of lb run on lb1: its datapath keeps forwarding, keepalived moves the VIP");
    p.cluster.signal_lb(0, libc::SIGKILL);
    p.cluster.wait_lb_exit(0, Duration::from_secs(10));
    moved(p, &traffic, 1, "the VIP moved to lb2")?;
    step("lb run on lb1 again: it adopts its datapath, then takes the VIP back");
    p.cluster.start_lb(0, &["--stop-grace-ms", "5000"]);
    moved(p, &traffic, 0, "lb1 is the master again")?;
    check_interrupt()?;
    summary(&traffic)
}
