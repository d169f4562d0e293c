//! `cargo xtask bench throughput|pps|cps`: lb side by side with its peers (a direct path,
//! a bare XDP forwarder, HAProxy, nftables DNAT) in one run, on the lab's topologies
//! (network namespaces, veths and a bridge on this machine), with ratios; and `bench
//! failover`: failovers of a keepalived pair and of ECMP nodes under load.
//!
//! Every benchmark brings up one DSR lab and one NAT lab (the `lb-lab` crate) at once
//! and runs every row of its table in each of a few interleaved rounds, so that the noise
//! of a shared machine hits every row alike; a row reports its best round (noise only
//! ever slows a run down). Only one thing handles a lab's VIP at a time: lb is stopped
//! (by its PID) before HAProxy, nftables or the bare forwarder take the VIP over.
//!
//! The labs are torn down when this returns, fails, panics or is interrupted (Ctrl-C sets
//! a flag that every step checks; the `Lab` guards then unwind).
//!
//! This module holds what every benchmark shares: interruption, the build, the two labs
//! and the round loop over a table's rows, lab helpers, and the result tables.
//! `peers` starts and stops what takes a lab's traffic (lb, HAProxy, nftables, the bare
//! forwarder); `generator` is the XDP live-frame generator of `pps`.
mod cps;
mod failover;
mod generator;
mod peers;
mod pps;
mod throughput;

use std::{
    collections::BTreeMap,
    marker::PhantomData,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_lab::lab::{Lab, Mode};

pub use self::{cps::cps, failover::failover, pps::pps, throughput::throughput};
use crate::util::{self, root, step};

// ---- interruption ---------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag instead of killing us, so the labs are torn down.
fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: tearing the labs down");
    }
    Ok(())
}

/// Sleeps in small steps, returning early (with an error) when interrupted.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    check_interrupt()
}

// ---- the build --------------------------------------------------------------------------

/// The built binaries and XDP objects.
struct Objects {
    lb: String,
    pass: PathBuf,
    fwd: String,
    /// The frame generator (`xdp-gen`), loaded by `generator` with aya.
    generator: PathBuf,
}

fn prepare(what: &str) -> Result<Objects> {
    catch_interrupts();
    step("building lb and the XDP objects (release)");
    util::cargo(&["build", "--release", "--package", "lb-userspace"])?;
    let ebpf = root().join("target/ebpf/bpfel-unknown-none/release");
    let path = |p: PathBuf| -> Result<PathBuf> {
        ensure!(p.exists(), "{} is missing after the build", p.display());
        Ok(p)
    };
    let objects = Objects {
        lb: path(root().join("target/release/lb"))?
            .to_string_lossy()
            .into_owned(),
        pass: path(ebpf.join("xdp-pass"))?,
        fwd: path(ebpf.join("xdp-fwd"))?.to_string_lossy().into_owned(),
        generator: path(ebpf.join("xdp-gen"))?,
    };
    step(&format!("{what} benchmark: {}", machine_note()));
    Ok(objects)
}

/// The date, CPUs and load, for the record.
fn machine_note() -> String {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{date}; {} CPUs; load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---- the two labs and the rounds over a table's rows -----------------------------------

/// One row of a benchmark's table: a path measured on one of the two labs.
trait Row: Copy + PartialEq + 'static {
    /// Every row, in the table's order (and the order of a round).
    const ALL: &'static [Self];

    fn name(self) -> &'static str;

    /// Whether the row runs on the DSR lab (else on the NAT lab).
    fn dsr(self) -> bool;

    /// The lab column of the tables.
    fn lab(self) -> &'static str {
        if self.dsr() { "DSR" } else { "NAT" }
    }
}

/// A benchmark's DSR lab (`PREFIX-d`) and NAT lab (`PREFIX-n`), 3 backends each, whose
/// switch is a plain bridge.
struct Labs {
    dsr: Lab,
    nat: Lab,
}

impl Labs {
    fn up(prefix: &str, pass: &Path) -> Result<Labs> {
        let labs = Labs {
            dsr: Lab::up(Mode::Dsr, &format!("{prefix}-d"), 3, pass),
            nat: Lab::up(Mode::Nat, &format!("{prefix}-n"), 3, pass),
        };
        for lab in labs.both() {
            plain_switch(lab)?;
        }
        Ok(labs)
    }

    fn both(&self) -> [&Lab; 2] {
        [&self.dsr, &self.nat]
    }

    /// The lab `row` runs on.
    fn of(&mut self, row: impl Row) -> &mut Lab {
        if row.dsr() {
            &mut self.dsr
        } else {
            &mut self.nat
        }
    }
}

/// Every round of every row: `runs[i]` holds the rounds of `R::ALL[i]`, in order.
struct Results<R, T> {
    runs: Vec<Vec<T>>,
    rows: PhantomData<R>,
}

impl<R: Row, T: Clone + Default> Results<R, T> {
    /// The rounds of `row`.
    fn of(&self, row: R) -> &[T] {
        let i = R::ALL.iter().position(|r| *r == row).expect("a row of ALL");
        &self.runs[i]
    }

    /// The round of `row` with the highest `key` (the earliest of equals).
    fn best(&self, row: R, key: impl Fn(&T) -> f64) -> T {
        self.of(row)
            .iter()
            .fold(None::<&T>, |a, b| match a {
                Some(a) if key(a) >= key(b) => Some(a),
                _ => Some(b),
            })
            .cloned()
            .unwrap_or_default()
    }
}

/// Measures every row with `run(labs, row, round)`, a round after another, `rounds`
/// times; each round is announced as `round N/ROUNDS{what} (load average …)`.
fn rounds<R: Row, T>(
    labs: &mut Labs,
    rounds: usize,
    what: &str,
    mut run: impl FnMut(&mut Labs, R, usize) -> Result<T>,
) -> Result<Results<R, T>> {
    let mut runs: Vec<Vec<T>> = R::ALL.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        step(&format!(
            "round {round}/{rounds}{what} (load average {})",
            loadavg()
        ));
        for (i, row) in R::ALL.iter().enumerate() {
            runs[i].push(run(labs, *row, round)?);
        }
    }
    Ok(Results {
        runs,
        rows: PhantomData,
    })
}

// ---- lab helpers ------------------------------------------------------------------------

/// Runs `args` in namespace `ns`; its stdout, or an error with its stderr.
fn run_in(lab: &Lab, ns: &str, args: &[&str]) -> Result<String> {
    check_interrupt()?;
    let out = lab
        .exec(ns, args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {args:?} in {ns}"))?;
    check_interrupt()?;
    if !out.status.success() {
        bail!(
            "{} (in {ns}) failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An interface statistic (`/sys/class/net/IFACE/statistics/NAME`) in namespace `ns`.
fn if_stat(lab: &Lab, ns: &str, iface: &str, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{iface}/statistics/{name}");
    let v = run_in(lab, ns, &["cat", &path])?;
    v.trim().parse().with_context(|| format!("{path}: {v:?}"))
}

fn mac_of(lab: &Lab, ns: &str, iface: &str) -> Result<[u8; 6]> {
    let text = run_in(
        lab,
        ns,
        &["cat", &format!("/sys/class/net/{iface}/address")],
    )?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC of {iface} in {ns}: {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC of {iface} in {ns}: {text:?}"))
}

/// Frames dropped in the lab, per place (`namespace/interface rx|tx`): every interface's
/// rx and tx drops (a veth whose peer runs XDP drops what does not fit in the peer's
/// 256-frame ring, and counts it as a tx drop of the sender).
fn lab_drops(lab: &Lab) -> Result<BTreeMap<String, u64>> {
    let mut roles = vec!["sw".to_string(), "lb".into(), "cli".into()];
    roles.extend(lab.backends.iter().map(|b| b.name.clone()));
    let mut drops = BTreeMap::new();
    for role in roles {
        let text = run_in(
            lab,
            &lab.ns(&role),
            &[
                "sh",
                "-c",
                "cd /sys/class/net && for i in *; do echo $i $(cat $i/statistics/rx_dropped) $(cat $i/statistics/tx_dropped); done",
            ],
        )?;
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let [iface, rx, tx] = w[..] {
                for (dir, v) in [("rx", rx), ("tx", tx)] {
                    let v: u64 = v.parse().unwrap_or(0);
                    drops.insert(format!("{role}/{iface} {dir}"), v);
                }
            }
        }
    }
    Ok(drops)
}

/// What was dropped between two `lab_drops` snapshots: the total and the place with
/// the most drops.
fn drops_since(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> (u64, String) {
    let mut total = 0;
    let mut worst = (0, String::new());
    for (place, v) in after {
        let d = v.saturating_sub(before.get(place).copied().unwrap_or(0));
        total += d;
        if d > worst.0 {
            worst = (d, place.clone());
        }
    }
    (total, worst.1)
}

/// The switch is a plain bridge, as a hardware switch would be: frames crossing it do
/// not go through the switch namespace's netfilter hooks (br_netfilter is on by default
/// here and costs every bridged frame a trip through them).
fn plain_switch(lab: &Lab) -> Result<()> {
    run_in(
        lab,
        &lab.ns("sw"),
        &[
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ],
    )
    .map(drop)
}

/// Gives the DSR lab's backends the fixed MACs the bare forwarder (`xdp-fwd`) sends to.
fn fixed_backend_macs(lab: &Lab) -> Result<()> {
    for (i, b) in lab.backends.iter().enumerate() {
        let mac = format!("02:00:00:00:0b:{:02x}", i + 1);
        run_in(
            lab,
            &b.ns,
            &["ip", "link", "set", "dev", "eth0", "address", &mac],
        )?;
    }
    Ok(())
}

fn xdp_attach(lab: &Lab, ns: &str, iface: &str, object: &str, program: &str) -> Result<()> {
    run_in(
        lab,
        ns,
        &[
            "ip", "link", "set", "dev", iface, "xdp", "obj", object, "program", program,
        ],
    )
    .map(drop)
}

fn xdp_detach(lab: &Lab, ns: &str, iface: &str) -> Result<()> {
    run_in(lab, ns, &["ip", "link", "set", "dev", iface, "xdp", "off"]).map(drop)
}

/// Whether a process we started is still running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Polls `cond` every 50 ms for at most `limit`; fails naming `what`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        check_interrupt()?;
        if cond()? {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        sleep(Duration::from_millis(50));
    }
}

/// A TCP listener on `port` in `ns`.
fn listening(lab: &Lab, ns: &str, port: u16) -> Result<bool> {
    let out = run_in(lab, ns, &["ss", "-Hltn", &format!("sport = :{port}")])?;
    Ok(!out.trim().is_empty())
}

// ---- tables ------------------------------------------------------------------------------

/// Prints the table of `what`, best of `rounds` rounds (announced with the load average
/// now), as Markdown: a line per row of `R::ALL`, its name, its lab, then `cells(row)`
/// under the columns of `header` (separated by ` | `, as they print).
fn print_table<R: Row>(what: &str, rounds: usize, header: &str, cells: impl Fn(R) -> Vec<String>) {
    step(&format!(
        "{what}, best of {rounds} rounds (load average now {})",
        loadavg()
    ));
    let columns = 2 + header.split(" | ").count();
    println!("\n| path | lab | {header} |");
    println!("|---{}|", "|---:".repeat(columns - 1));
    for &row in R::ALL {
        let line = [row.name().to_string(), row.lab().to_string()];
        println!(
            "| {} |",
            line.into_iter()
                .chain(cells(row))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

/// One line per round, for the record.
fn round_line(name: &str, values: &[f64], unit: &str) {
    let v: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
    println!("    {name:<34} rounds: {} {unit}", v.join(", "));
}

/// The round lines of every row: `value` of each of its rounds.
fn round_lines<R: Row, T: Clone + Default>(
    results: &Results<R, T>,
    value: impl Fn(&T) -> f64,
    unit: &str,
) {
    for row in R::ALL {
        let values: Vec<f64> = results.of(*row).iter().map(&value).collect();
        round_line(row.name(), &values, unit);
    }
}

fn verdict(value: f64, target: f64) -> String {
    if value >= target {
        format!("met (by {:.0}%)", (value / target - 1.0) * 100.0)
    } else {
        format!("MISSED by {:.0}%", (1.0 - value / target) * 100.0)
    }
}
