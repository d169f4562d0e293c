//! `cargo xtask lab`: the demo on the built-in lab.
//!
//! Builds the DSR lab (network namespaces with three nginx backends), starts `lb run` in
//! the balancer's namespace with the example configuration from the repository
//! (examples/lb.json), sends requests from the client with curl and shows how they
//! spread, does the same over IPv6 (the lab is dual-stack and the example has an IPv6
//! service), stops one backend to show the health check taking it out while requests
//! keep being answered, brings it back, kills lb with SIGKILL while requests over both
//! families keep being answered by the pinned datapath, starts it again to adopt it, and
//! tears everything down — on success, on failure and on Ctrl-C.
pub mod ecmp;
pub mod ha;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use lb_lab::{
    lab::{Lab, Mode},
    load::{Load, Traffic},
};

use crate::util::{self, root, step};

/// The example's HTTP services (examples/lb.json), IPv4 and IPv6.
const WEB: &str = "10.100.0.10:80/tcp";
const WEB6: &str = "[fd00:100::10]:80/tcp";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets a flag the demo checks between steps; the lab is then torn down by its
/// destructor. (lb and nginx get the SIGINT too and stop on their own.)
fn catch_ctrl_c() {
    // SAFETY: installing an async-signal-safe handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: tearing the lab down");
    }
    Ok(())
}

struct Demo {
    lab: Lab,
    lb: String,
    socket: String,
    lb_pid: Option<u32>,
}

impl Demo {
    fn lb_cmd(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec![self.lb.as_str(), "--socket", self.socket.as_str()];
        all.extend(args);
        self.lab
            .exec(&self.lab.lb_ns(), &all)
            .output()
            .expect("running lb")
    }

    fn list(&self) -> Result<Value> {
        let out = self.lb_cmd(&["service", "list", "--json"]);
        if !out.status.success() {
            bail!("lb service list: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Health state and rotation of every backend of the HTTP service.
    fn web_backends(&self) -> Result<BTreeMap<String, (String, bool)>> {
        self.backends_of(WEB)
    }

    /// Health state and rotation of every backend of `service`.
    fn backends_of(&self, service: &str) -> Result<BTreeMap<String, (String, bool)>> {
        let list = self.list()?;
        let web = list["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == service))
            .with_context(|| format!("the example's service {service} is not listed"))?;
        Ok(web["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                let state = b["health"]["state"].as_str().unwrap_or("?").to_string();
                (
                    b["backend"].as_str().unwrap_or("?").to_string(),
                    (state, b["in_rotation"] == true),
                )
            })
            .collect())
    }

    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&BTreeMap<String, (String, bool)>) -> bool,
    ) -> Result<Duration> {
        self.wait_for(WEB, what, timeout, cond)
    }

    /// [`Demo::wait`] for the backends of `service`.
    fn wait_for(
        &self,
        service: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&BTreeMap<String, (String, bool)>) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            check_interrupt()?;
            // Errors are "not yet" (the daemon may still be starting); the timeout decides.
            if self.backends_of(service).is_ok_and(|b| cond(&b)) {
                return Ok(start.elapsed());
            }
            sleep(Duration::from_millis(100));
        }
        bail!(
            "timed out after {timeout:?} waiting for {what}:\n{}",
            self.log()
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.lab.dir.join("lb.log")).unwrap_or_default()
    }

    /// `n` requests from the client, each a new connection; (answers by backend, failures).
    fn requests(&self, n: usize) -> (BTreeMap<String, usize>, usize) {
        self.requests_to("http://10.100.0.10/", n)
    }

    /// [`Demo::requests`] to `url`.
    fn requests_to(&self, url: &str, n: usize) -> (BTreeMap<String, usize>, usize) {
        let script = format!(
            "for i in $(seq {n}); do curl -s -f -m 2 -H 'Connection: close' -w '\\n' {url} || echo FAILED; done"
        );
        let out = self
            .lab
            .exec(&self.lab.client_ns(), &["sh", "-c", &script])
            .output()
            .expect("curl");
        let mut counts = BTreeMap::new();
        let mut failed = 0;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            if line.ends_with("FAILED") {
                failed += 1;
            } else {
                *counts.entry(line.to_string()).or_default() += 1;
            }
        }
        (counts, failed)
    }
}

fn bars(counts: &BTreeMap<String, usize>, total: usize) {
    for (b, n) in counts {
        let width = n * 50 / total.max(1);
        println!(
            "  {b:<4} {:<50} {n:>4} ({:.0}%)",
            "█".repeat(width),
            *n as f64 * 100.0 / total as f64
        );
    }
}

/// Sets the machine up and builds lb (release); the `lb` binary and the `xdp-pass`
/// object the labs need.
fn build() -> Result<(PathBuf, PathBuf)> {
    util::setup()?;
    step("building lb (release)");
    util::cargo(&["build", "--release", "--package", "lb-userspace"])?;
    let root = root();
    Ok((
        root.join("target/release/lb"),
        root.join("target/ebpf/bpfel-unknown-none/release/xdp-pass"),
    ))
}

/// Prints, once a second for `secs` seconds, what `traffic` saw in that second (answers
/// per backend, failures, long-lived connections alive) beside `state()` (who holds
/// the VIP, say) and the new connections each node took (`conns()`: the nodes'
/// running totals, in order).
fn watch(
    secs: u64,
    traffic: &Traffic,
    state: impl Fn() -> String,
    conns: impl Fn() -> Vec<u64>,
) -> Result<()> {
    let mut last = traffic.load.tally();
    let mut last_conns = conns();
    for _ in 0..secs {
        check_interrupt()?;
        sleep(Duration::from_secs(1));
        let t = traffic.load.tally();
        let now = conns();
        let per_node: Vec<String> = now
            .iter()
            .zip(&last_conns)
            .enumerate()
            .map(|(i, (n, l))| format!("lb{} {:>3}", i + 1, n.saturating_sub(*l)))
            .collect();
        let per_backend: Vec<String> = t
            .by_backend
            .iter()
            .map(|(b, n)| {
                format!(
                    "{b} {:>3}",
                    n - last.by_backend.get(b).copied().unwrap_or(0)
                )
            })
            .collect();
        let alive = traffic
            .sessions
            .iter()
            .filter(|s| s.seen().broken.is_none())
            .count();
        println!(
            "  {:<22} new conns/s: {} | answers/s: {} | failed {} | long-lived {alive}/{} alive",
            state(),
            per_node.join("  "),
            per_backend.join("  "),
            t.failed.len(),
            traffic.sessions.len()
        );
        last = t;
        last_conns = now;
    }
    Ok(())
}

/// Polls `cond` every 20 ms, for a minute at most; how long it took to hold.
fn wait_event(what: &str, cond: impl Fn() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        check_interrupt()?;
        if cond() {
            return Ok(start.elapsed());
        }
        sleep(Duration::from_millis(20));
    }
    bail!("timed out after 60 s waiting for {what}")
}

/// The end of a redundancy demo: what the traffic saw in all; an error if anything
/// failed.
fn summary(traffic: &Traffic) -> Result<()> {
    let t = traffic.load.tally();
    let problems = traffic.problems(&[]);
    step(&format!(
        "in all: {} requests answered, {} failed; {} long-lived connections, {} problems",
        t.ok,
        t.failed.len(),
        traffic.sessions.len(),
        problems.len()
    ));
    for p in &problems {
        println!("  {p}");
    }
    if !problems.is_empty() {
        bail!("{} problems", problems.len());
    }
    Ok(())
}

pub fn demo() -> Result<()> {
    let (lb, pass) = build()?;
    let lb = lb.to_string_lossy().into_owned();
    let config = root().join("examples/lb.json");
    catch_ctrl_c();

    step(
        "lab: DSR topology — namespaces lbdemo-{cli,lb,sw,b1,b2,b3}, bridge br0, nginx on 10.0.0.11-13 and fd00:10::11-13",
    );
    println!(
        "  client 10.0.0.2 --> VIP 10.100.0.10 via the balancer 10.0.0.1 --> backends (VIP on lo), replies go straight back"
    );
    println!(
        "  client fd00:10::2 --> VIP fd00:100::10 via the balancer fd00:10::1 --> backends (VIP on lo), the same over IPv6"
    );
    let lab = Lab::up_dual_stack(Mode::Dsr, "lbdemo", 3, &pass);
    let socket = lab.dir.join("lb.sock").to_string_lossy().into_owned();
    let mut demo = Demo {
        lab,
        lb,
        socket,
        lb_pid: None,
    };
    let result = run(&mut demo, &config);
    if let Some(pid) = demo.lb_pid.take() {
        demo.lab.stop(pid);
    }
    if result.is_err() {
        eprintln!("lb log:\n{}", demo.log());
    }
    drop(demo);
    step("lab torn down (namespaces removed, processes stopped)");
    result
}

fn run(demo: &mut Demo, config: &Path) -> Result<()> {
    step(&format!(
        "lb run --iface eth0 --config {} (in lbdemo-lb)",
        config.display()
    ));
    let lb_ns = demo.lab.lb_ns();
    let pin_dir = demo.lab.pin_dir();
    let args = [
        demo.lb.as_str(),
        "run",
        "--iface",
        "eth0",
        "--config",
        config.to_str().context("path")?,
        "--socket",
        demo.socket.as_str(),
        "--pin-dir",
        pin_dir.to_str().context("path")?,
    ];
    demo.lb_pid = Some(demo.lab.spawn(&lb_ns, &args, "lb.log"));
    demo.wait("every backend up", Duration::from_secs(20), |b| {
        b.values().all(|(h, r)| h == "up" && *r)
    })?;
    demo.wait_for(
        WEB6,
        "every IPv6 backend up",
        Duration::from_secs(20),
        |b| b.values().all(|(h, r)| h == "up" && *r),
    )?;
    let out = demo
        .lab
        .exec(&lb_ns, &["ip", "-d", "link", "show", "dev", "eth0"])
        .output()?;
    let link = String::from_utf8_lossy(&out.stdout);
    println!(
        "  {}",
        link.lines()
            .find(|l| l.contains("prog/xdp"))
            .unwrap_or("(no XDP program?)")
            .trim()
    );
    print!(
        "{}",
        String::from_utf8_lossy(&demo.lb_cmd(&["service", "list"]).stdout)
    );
    check_interrupt()?;

    step("300 requests from the client (curl, a new connection each)");
    let (counts, failed) = demo.requests(300);
    bars(&counts, 300);
    println!("  failed: {failed}");

    step("300 requests over IPv6, to http://[fd00:100::10]/ (the service beside it)");
    let (counts, failed) = demo.requests_to("http://[fd00:100::10]/", 300);
    bars(&counts, 300);
    println!("  failed: {failed}");
    if failed > 0 {
        bail!("{failed} IPv6 requests failed");
    }

    step("stopping nginx on b2 (10.0.0.12): the HTTP check (every 1 s, fall 3) takes it out");
    demo.lab.stop_backend(1);
    let stopped = Instant::now();
    let mut failed_before = 0;
    loop {
        check_interrupt()?;
        let (counts, failed) = demo.requests(10);
        failed_before += failed;
        let b = demo.web_backends()?;
        let (health, rotation) = b.get("10.0.0.12:80").cloned().unwrap_or_default();
        println!(
            "  t={:>4.1}s  10 requests: {:?}, failed {failed}  | b2 health={health} in_rotation={rotation}",
            stopped.elapsed().as_secs_f64(),
            counts
        );
        if health == "down" && !rotation {
            break;
        }
        if stopped.elapsed() > Duration::from_secs(20) {
            bail!("b2 was not taken out within 20 s");
        }
        sleep(Duration::from_millis(300));
    }
    println!(
        "  taken out after {:.1} s; requests that hashed to b2 before that: {failed_before} failed",
        stopped.elapsed().as_secs_f64()
    );
    for line in demo
        .log()
        .lines()
        .filter(|l| l.contains("10.0.0.12:80") && l.contains("DOWN"))
    {
        println!("  lb: {line}");
    }
    let (counts, failed) = demo.requests(300);
    println!("  300 requests after detection:");
    bars(&counts, 300);
    println!("  failed: {failed}");
    if failed > 0 || counts.contains_key("b2") {
        bail!("after detection {failed} requests failed / b2 still answered");
    }

    step("starting nginx on b2 again (rise 2): it comes back into rotation");
    demo.lab.start_backend(1);
    let took = demo.wait("b2 up", Duration::from_secs(20), |b| {
        b.get("10.0.0.12:80").is_some_and(|(h, r)| h == "up" && *r)
    })?;
    println!("  back after {:.1} s", took.as_secs_f64());
    let (counts, failed) = demo.requests(300);
    bars(&counts, 300);
    println!("  failed: {failed}");

    step(&format!(
        "kill -9 of lb run: the datapath keeps forwarding (it is pinned in {})",
        pin_dir.display()
    ));
    let load = Load::start(
        &demo.lab.client_ns(),
        "10.100.0.10:80".parse().context("address")?,
        Duration::from_millis(20),
    );
    let load6 = Load::start(
        &demo.lab.client_ns(),
        "[fd00:100::10]:80".parse().context("address")?,
        Duration::from_millis(20),
    );
    sleep(Duration::from_secs(1));
    if let Some(pid) = demo.lb_pid.take() {
        demo.lab.signal(pid, libc::SIGKILL);
        demo.lab.wait_exit(pid, Duration::from_secs(10));
    }
    for second in 1..=4 {
        check_interrupt()?;
        sleep(Duration::from_secs(1));
        let (t, t6) = (load.tally(), load6.tally());
        println!(
            "  t={second}s without a daemon: {} requests answered, {} failed; over IPv6 {} answered, {} failed",
            t.ok,
            t.failed.len(),
            t6.ok,
            t6.failed.len()
        );
    }
    println!(
        "  lb status: {}",
        String::from_utf8_lossy(&demo.lb_cmd(&["status"]).stdout).trim()
    );
    step("lb run again: it adopts the pinned datapath (connections, tables, counters kept)");
    demo.lb_pid = Some(demo.lab.spawn(&lb_ns, &args, "lb.log"));
    demo.wait("every backend up", Duration::from_secs(20), |b| {
        b.values().all(|(h, r)| h == "up" && *r)
    })?;
    for line in demo.log().lines().filter(|l| l.contains("adopted")) {
        println!("  lb: {line}");
    }
    sleep(Duration::from_secs(1));
    let (t, t6) = (load.stop(), load6.stop());
    println!(
        "  through the crash and the restart: {} requests answered, {} failed; over IPv6 {} answered, {} failed",
        t.ok,
        t.failed.len(),
        t6.ok,
        t6.failed.len()
    );
    if !t.failed.is_empty() || !t6.failed.is_empty() {
        bail!(
            "requests failed through the crash: {:?} {:?}",
            t.failed,
            t6.failed
        );
    }

    step("lb stats");
    print!(
        "{}",
        String::from_utf8_lossy(&demo.lb_cmd(&["stats"]).stdout)
    );

    step("stopping lb (SIGTERM): the program is detached");
    if let Some(pid) = demo.lb_pid.take() {
        demo.lab.stop(pid);
    }
    let out = demo
        .lab
        .exec(&lb_ns, &["ip", "-d", "link", "show", "dev", "eth0"])
        .output()?;
    let attached = String::from_utf8_lossy(&out.stdout).contains("prog/xdp");
    println!(
        "  eth0 {}",
        if attached {
            "still has an XDP program!"
        } else {
            "has no XDP program"
        }
    );
    if attached {
        bail!("the program is still attached after SIGTERM");
    }
    Ok(())
}
