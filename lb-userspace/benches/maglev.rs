//! `cargo xtask bench maglev`: how long a backend change takes to reach the datapath for
//! a service of 1,000 backends and a Maglev table of 65,537 slots, side by side with its
//! parts, in one run:
//!
//! - `build`: the pure Maglev builder alone (`maglev::build`);
//! - `swap`: installing a ready table in the kernel alone (`Dataplane::set_table`, which
//!   writes a table of unchanged size in place through its mapping);
//! - `resize`: the same for a table of a new size (a new inner map, filled through its
//!   mapping and swapped into `TABLES`: a map-in-map update, which waits for an RCU
//!   grace period), for comparison: only a change of `table_size` takes this path;
//! - `operation`: a whole `backend_set` request through the controller (validation, the
//!   next runtime, the rebuild, the ordered map writes), as the control socket runs it.
//!
//! Every timed operation is checked: the table read back from the kernel must give the
//! changed backend no slot after `maint` (and move at most 1/N + 1% of the slots of the
//! others) and be the original table again after `ready`.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_userspace::config::Config;
use lb_userspace::controller::Controller;
use lb_userspace::dataplane::{Dataplane, Limits};
use lb_userspace::maglev::{self, Candidate};
use lb_userspace::proto;

const BACKENDS: usize = 1000;
const TABLE_SIZE: u32 = 65537;
const ROUNDS: usize = 50;
const BUDGET: Duration = Duration::from_millis(5);
const SERVICE: &str = "10.100.0.10:80/tcp";

fn backend(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// One NAT service (NAT backends need no neighbour lookups, so the benchmark needs no
/// network) with `BACKENDS` backends of weights 1..=100 and no health checks.
fn config() -> Result<Config> {
    let backends: Vec<_> = (0..BACKENDS)
        .map(|i| {
            serde_json::json!({
                "address": backend(i).to_string(), "port": 8080, "weight": i % 100 + 1
            })
        })
        .collect();
    let text = serde_json::json!({ "services": [{
        "vip": "10.100.0.10", "port": 80, "protocol": "tcp", "forwarding": "nat",
        "table_size": TABLE_SIZE, "health_check": { "kind": "none" }, "backends": backends
    }]})
    .to_string();
    Config::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))
}

struct Figures(Vec<Duration>);

impl Figures {
    fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[v.len() / 2]
    }

    fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }

    fn row(&self, name: &str) {
        let (med, max) = (self.median(), self.max());
        println!(
            "{name:<10} {:>9.3} {:>9.3} {:>11.2}",
            med.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            med.as_secs_f64() / BUDGET.as_secs_f64()
        );
    }
}

fn time<T>(mut f: impl FnMut() -> Result<T>) -> Result<Figures> {
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        std::hint::black_box(f()?);
        samples.push(start.elapsed());
    }
    Ok(Figures(samples))
}

fn request(controller: &mut Controller, line: &str) -> Result<()> {
    let req = proto::parse(line).map_err(anyhow::Error::msg)?;
    let resp = controller.handle(req);
    ensure!(resp.ok, "{line}: {}", resp.to_line());
    Ok(())
}

fn main() -> Result<()> {
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the Maglev benchmark needs root (BPF)"
    );
    let candidates: Vec<Candidate> = (0..BACKENDS)
        .map(|i| Candidate {
            addr: SocketAddrV4::new(backend(i), 8080),
            weight: (i % 100 + 1) as u32,
        })
        .collect();
    let build = time(|| Ok(maglev::build(&candidates, TABLE_SIZE)))?;

    let mut dp = Dataplane::load(Limits::default())?;
    let slots: Vec<u32> = maglev::build(&candidates, TABLE_SIZE)
        .into_iter()
        .map(|s| s.unwrap_or(lb_common::NO_BACKEND))
        .collect();
    // A service id the controller will not use (it numbers services from 0).
    let spare = lb_common::MAX_SERVICES - 1;
    // A table of a new size: a new inner map, swapped in (and an RCU grace period).
    let mut round = 0;
    let resize = time(|| {
        round += 1;
        let len = if round % 2 == 0 {
            slots.len()
        } else {
            slots.len() - 16
        };
        dp.set_table(spare, &slots[..len])
    })?;
    // A table of the same size: written in place.
    let swap = time(|| dp.set_table(spare, &slots))?;
    ensure!(
        dp.table(spare, TABLE_SIZE)?.as_deref() == Some(&slots[..]),
        "the swapped table reads back different"
    );
    dp.set_table(spare, &[])?;

    let mut controller = Controller::new(dp, config()?, "maglev-bench.json".into(), Vec::new())?;
    let service = controller
        .runtime()
        .services()
        .next()
        .context("the service")?;
    let id = service.id;
    let victim = SocketAddrV4::new(backend(BACKENDS / 2), 8080);
    let victim_index = service.backends[&victim].index;
    let read = |c: &Controller| -> Result<Vec<u32>> {
        c.dataplane()
            .table(id, TABLE_SIZE)?
            .context("the service has no table")
    };
    let original = read(&controller)?;
    ensure!(
        original.iter().filter(|&&s| s == victim_index).count() > 0,
        "the backend under test has no slot to lose"
    );
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let state = if round % 2 == 0 { "maint" } else { "ready" };
        let line = format!(
            r#"{{"op":"backend_set","service":"{SERVICE}","backend":"{victim}","state":"{state}"}}"#
        );
        let start = Instant::now();
        request(&mut controller, &line)?;
        samples.push(start.elapsed());
        let table = read(&controller)?;
        if state == "maint" {
            let held = table.iter().filter(|&&s| s == victim_index).count();
            ensure!(
                held == 0,
                "round {round}: {victim} in maint still holds {held} slots"
            );
            let moved = table
                .iter()
                .zip(&original)
                .filter(|(now, was)| now != was && **was != victim_index)
                .count();
            ensure!(
                moved as f64 / f64::from(TABLE_SIZE) <= 1.0 / BACKENDS as f64 + 0.01,
                "round {round}: maint of one backend moved {moved} slots of the others"
            );
        } else {
            ensure!(
                table == original,
                "round {round}: ready did not restore the table"
            );
        }
    }
    let operation = Figures(samples);

    println!(
        "Maglev rebuild and swap: {BACKENDS} backends (weights 1..=100), M = {TABLE_SIZE}, \
         {ROUNDS} rounds each"
    );
    println!(
        "{:<10} {:>9} {:>9} {:>11}",
        "part", "median ms", "max ms", "of 5 ms"
    );
    build.row("build");
    swap.row("swap");
    resize.row("resize");
    operation.row("operation");
    Ok(())
}
