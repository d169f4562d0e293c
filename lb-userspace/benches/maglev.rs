//! `cargo xtask bench maglev`: how long a backend change takes to reach the datapath for
//! a service of 1,000 backends and a Maglev table of 65,537 slots, side by side with its
//! parts, in one run:
//!
//! - `build`: the pure Maglev builder alone (`maglev::build`);
//! - `swap`: installing a ready table alone (`Dataplane::set_table`: the service's idle
//!   table generation written in place, then the flip);
//! - `swap, burst`: the same back to back: each waits for the kernel RCU grace period
//!   that must follow the previous flip before the retired generation is written again;
//! - `resize`: installing a table of a new size (a new inner array put into `TABLES`,
//!   which the kernel makes wait for a grace period): only a `table_size` change does it;
//! - `operation`: a whole `backend_set` request through the controller (validation, the
//!   next runtime, the rebuild, the ordered map writes), as the control socket runs it,
//!   one change at a time; `operation, burst`: back to back;
//! - `load`: applying a configuration of 100 small services (each new service's table
//!   goes into `TABLES`: one grace period each).
//!
//! Every operation round is checked against the kernel's copy of the table: after
//! `maint` the backend holds no slot and at most 1/N + 1% of the others' slots moved;
//! after `ready` the table is the original again.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_userspace::api::Request;
use lb_userspace::config::Config;
use lb_userspace::daemon::controller::{self, Change, Neighbours};
use lb_userspace::dataplane::{Dataplane, Limits};
use lb_userspace::model::maglev::{self, Candidate};

const BACKENDS: usize = 1000;
const TABLE_SIZE: u32 = 65537;
const ROUNDS: usize = 50;
const BUDGET: Duration = Duration::from_millis(5);
/// Pause before each round of the "one change" rows: longer than a kernel RCU grace
/// period, as between real changes. The "burst" rows have none.
const SPACING: Duration = Duration::from_millis(100);
const SERVICE: &str = "10.100.0.10:80/tcp";
/// Services of the configuration-load row.
const LOAD_SERVICES: usize = 100;

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

/// `n` NAT services of 3 backends each, default table size, no health checks.
fn many_services(n: usize) -> Result<Config> {
    let services: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({
                "vip": "10.100.0.10", "port": 1000 + i, "forwarding": "nat",
                "health_check": { "kind": "none" },
                "backends": (1..=3).map(|b| serde_json::json!({"address": format!("10.1.0.{b}")}))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let text = serde_json::json!({ "services": services }).to_string();
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
            "{name:<18} {:>9.3} {:>9.3} {:>8.2}",
            med.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            med.as_secs_f64() / BUDGET.as_secs_f64()
        );
    }
}

/// `ROUNDS` timed calls of `f`, each after `spacing` when given.
fn time<T>(spacing: Option<Duration>, mut f: impl FnMut() -> Result<T>) -> Result<Figures> {
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        if let Some(pause) = spacing {
            std::thread::sleep(pause);
        }
        let start = Instant::now();
        std::hint::black_box(f()?);
        samples.push(start.elapsed());
    }
    Ok(Figures(samples))
}

type Controller = controller::Controller<Dataplane>;

/// Makes the change a control request line asks for, as the daemon's controller does.
fn request(controller: &mut Controller, line: &str) -> Result<()> {
    let req = Request::parse(line)?;
    let change = Change::from_request(req).context("not a change")?;
    controller
        .change(&change, Neighbours::new())
        .with_context(|| line.to_string())?;
    Ok(())
}

fn main() -> Result<()> {
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the Maglev benchmark needs root (BPF)"
    );
    let candidates: Vec<Candidate> = (0..BACKENDS)
        .map(|i| Candidate {
            addr: SocketAddrV4::new(backend(i), 8080).into(),
            weight: (i % 100 + 1) as u32,
        })
        .collect();
    let build = time(None, || Ok(maglev::build(&candidates, TABLE_SIZE)))?;

    let mut dp = Dataplane::load(Limits::default())?;
    let slots: Vec<u32> = maglev::build(&candidates, TABLE_SIZE)
        .into_iter()
        .map(|s| s.unwrap_or(lb_common::NO_BACKEND))
        .collect();
    // A service id the controller will not use (it numbers services from 0).
    let spare = lb_common::MAX_SERVICES - 1;
    // Both generations exist after two tables.
    dp.set_table(spare, &slots)?;
    dp.set_table(spare, &slots)?;
    let swap = time(Some(SPACING), || Ok(dp.set_table(spare, &slots)?))?;
    let swap_burst = time(None, || Ok(dp.set_table(spare, &slots)?))?;
    ensure!(
        dp.table(spare, TABLE_SIZE)?.as_deref() == Some(&slots[..]),
        "the installed table reads back different"
    );
    // Tables of a new size each time: new inner arrays.
    let mut round = 0;
    let resize = time(Some(SPACING), || {
        round += 1;
        let len = slots.len() - 16 * (round % 3);
        Ok(dp.set_table(spare, &slots[..len])?)
    })?;
    dp.set_table(spare, &[])?;

    let mut controller = Controller::new(dp, &config()?, "maglev-bench.json", Neighbours::new())?;
    let service = controller
        .runtime()
        .services()
        .next()
        .context("the service")?;
    let addr = SocketAddrV4::new(backend(BACKENDS / 2), 8080);
    let id = service.id;
    let mut victim = Victim {
        id,
        addr,
        index: service.backends[&addr.into()].index,
        original: table_of(&controller, id)?,
    };
    ensure!(
        victim.original.contains(&victim.index),
        "the backend under test has no slot to lose"
    );
    // The first change of a service also creates its second table generation (a new
    // inner array: one more grace period, once); timed separately.
    let first = victim.rounds(&mut controller, Some(SPACING), 2)?;
    let operation = victim.rounds(&mut controller, Some(SPACING), ROUNDS)?;
    let operation_burst = victim.rounds(&mut controller, None, ROUNDS)?;

    drop(controller);
    // Loading a configuration: every new service puts a table into TABLES.
    let load = {
        let dp = Dataplane::load(Limits::default())?;
        let config = many_services(LOAD_SERVICES)?;
        let start = Instant::now();
        let c = Controller::new(dp, &config, "maglev-bench.json", Neighbours::new())?;
        let took = start.elapsed();
        ensure!(c.runtime().services().count() == LOAD_SERVICES);
        took
    };

    println!(
        "Maglev rebuild and swap: {BACKENDS} backends (weights 1..=100), M = {TABLE_SIZE}, \
         {ROUNDS} rounds each"
    );
    println!(
        "{:<18} {:>9} {:>9} {:>8}",
        "part", "median ms", "max ms", "of 5 ms"
    );
    build.row("build");
    swap.row("swap");
    swap_burst.row("swap, burst");
    resize.row("resize");
    println!(
        "{:<18} {:>9.3} {:>9} {:>8}   (the service's first change, once: maint then ready)",
        "first operation",
        first.0[0].as_secs_f64() * 1e3,
        "",
        ""
    );
    operation.row("operation");
    operation_burst.row("operation, burst");
    println!(
        "{:<18} {:>9.1}                      ({LOAD_SERVICES} services of 3 backends: loading the configuration)",
        "load",
        load.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// The backend the operation rounds put in maintenance and back.
struct Victim {
    id: u32,
    addr: SocketAddrV4,
    index: u32,
    /// The service's table with every backend ready.
    original: Vec<u32>,
}

/// The live table of service `id`, as the kernel holds it.
fn table_of(c: &Controller, id: u32) -> Result<Vec<u32>> {
    c.maps()
        .table(id, TABLE_SIZE)?
        .context("the service has no table")
}

impl Victim {
    /// `rounds` `backend_set` requests, maint and ready in turn, each timed, then
    /// checked against the kernel's copy of the table.
    fn rounds(
        &mut self,
        c: &mut Controller,
        spacing: Option<Duration>,
        rounds: usize,
    ) -> Result<Figures> {
        let mut samples = Vec::with_capacity(rounds);
        for round in 0..rounds {
            if let Some(pause) = spacing {
                std::thread::sleep(pause);
            }
            let state = if round % 2 == 0 { "maint" } else { "ready" };
            let line = format!(
                r#"{{"op":"backend_set","service":"{SERVICE}","backend":"{}","state":"{state}"}}"#,
                self.addr
            );
            let start = Instant::now();
            request(c, &line)?;
            samples.push(start.elapsed());
            let table = table_of(c, self.id)?;
            if state == "maint" {
                let held = table.iter().filter(|&&s| s == self.index).count();
                ensure!(
                    held == 0,
                    "round {round}: {} in maint still holds {held} slots",
                    self.addr
                );
                let moved = table
                    .iter()
                    .zip(&self.original)
                    .filter(|(now, was)| now != was && **was != self.index)
                    .count();
                ensure!(
                    moved as f64 / f64::from(TABLE_SIZE) <= 1.0 / BACKENDS as f64 + 0.01,
                    "round {round}: maint of one backend moved {moved} slots of the others"
                );
            } else {
                ensure!(
                    table == self.original,
                    "round {round}: ready did not restore the table"
                );
            }
        }
        Ok(Figures(samples))
    }
}
