//! `cargo xtask lab ecmp`: lb nodes active-active behind a router that spreads flows
//! over them by ECMP, under load.
//!
//! Builds the ECMP lab (namespaces lbecmp-{cli,rt,sw,lb1,lb2,lb3,b1,b2,b3}:
//! lb_lab::ecmp::Ecmp), runs `lb run --announce-table 100` and BIRD
//! (examples/ha/bird-lb.conf) on every node and BIRD (examples/ha/bird-router.conf) on
//! the router and, with new connections and long-lived connections running throughout
//! and the counts per node and per backend printed every second: stops lb on lb2 with
//! SIGTERM (it withdraws its VIP, then forwards for its grace) and starts it again, then
//! cuts lb3 off (link down: BFD notices) and connects it again. Torn down on success,
//! failure and Ctrl-C.
use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use lb_lab::{ecmp::Ecmp, lab::DSR_VIP, load::Traffic};

use super::{check_interrupt, summary, wait_event, watch};
use crate::util::step;

const CHECK: &str = r#"{"kind": "http", "path": "/", "interval_ms": 1000, "timeout_ms": 500, "rise": 2, "fall": 2}"#;

pub fn demo() -> Result<()> {
    let (lb, pass) = super::build()?;
    super::catch_ctrl_c();
    step("lab: ECMP — namespaces lbecmp-{cli,rt,sw,lb1,lb2,lb3,b1,b2,b3}");
    println!(
        "  client 10.0.9.2 --> router 10.0.9.1/10.0.5.1 (BIRD, ECMP on the L4 hash) --> lb1..3 10.0.5.11-13 --> backends 10.0.5.21-23, which answer through the router"
    );
    let mut e = Ecmp::up("lbecmp", 3, &lb, &pass);
    let result = run(&mut e);
    if result.is_err() {
        eprintln!("{}", e.cluster.logs());
        eprintln!("router: {}", e.birdc_router(&["show", "protocols"]));
    }
    drop(e);
    step("lab torn down (namespaces removed, processes stopped)");
    result
}

fn route(e: &Ecmp) -> String {
    let hops: Vec<String> = e
        .next_hops()
        .iter()
        .map(|i| format!("lb{}", i + 1))
        .collect();
    if hops.is_empty() {
        "no route".into()
    } else {
        format!("route via {}", hops.join(","))
    }
}

/// Waits until the router's route leads to `nodes`, says how long it took (`said` …
/// `after 0.25 s`) and shows the traffic for 3 s.
fn routed(e: &Ecmp, traffic: &Traffic, nodes: &[usize], said: &str) -> Result<()> {
    let nodes: BTreeSet<usize> = nodes.iter().copied().collect();
    let took = wait_event(said, || e.next_hops() == nodes)?;
    println!("  {said} after {:.2} s", took.as_secs_f64());
    watch(3, traffic, || route(e), || e.cluster.conns())
}

fn run(e: &mut Ecmp) -> Result<()> {
    let config = e.cluster.lab.config(CHECK, false);
    step(
        "BIRD on the router; lb run --announce-table 100 --stop-grace-ms 3000 and BIRD on every node",
    );
    e.start(&config, &["--stop-grace-ms", "3000"]);
    println!(
        "  lb1 announces: {}  (ip route show table 100 proto 252)",
        e.announced(0)
    );
    print!("{}", e.birdc_router(&["show", "route", "for", DSR_VIP]));
    let vip: SocketAddr = format!("{DSR_VIP}:80").parse().context("VIP")?;
    let traffic = Traffic::start(&e.cluster.lab.client_ns(), vip, 6);
    step(
        "traffic: a new connection every 20 ms, and 6 long-lived connections (a request every 100 ms)",
    );
    watch(3, &traffic, || route(e), || e.cluster.conns())?;

    step("SIGTERM to lb run on lb2: it withdraws the VIP at once, then forwards for 3 s");
    e.cluster.signal_lb(1, libc::SIGTERM);
    routed(e, &traffic, &[0, 2], "the router dropped lb2")?;
    let status = e.cluster.wait_lb_exit(1, Duration::from_secs(30));
    println!("  lb run on lb2 detached after its grace and exited ({status})");
    step("lb run on lb2 again: it announces the VIP, the router spreads over three nodes");
    e.start_lb(1, &["--stop-grace-ms", "3000"]);
    routed(e, &traffic, &[0, 1, 2], "lb2 is back")?;

    step("lb3 cut off (ip link set eth0 down): nothing is withdrawn, BFD (100 ms x 3) notices");
    e.link(2, false);
    routed(
        e,
        &traffic,
        &[0, 1],
        "the router dropped lb3 (its connections resume on lb1 and lb2, same backends)",
    )?;
    step("lb3 connected again: BGP comes back up (after BIRD's error wait of 5 s)");
    e.link(2, true);
    routed(e, &traffic, &[0, 1, 2], "lb3 is back")?;
    check_interrupt()?;
    summary(&traffic)
}
