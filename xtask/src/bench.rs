//! `cargo xtask bench throughput|pps|cps`: lb side by side with its peers (a direct path,
//! a bare XDP forwarder, HAProxy, nftables DNAT) in one run, on the lab's topologies
//! (network namespaces, veths and a bridge on this machine), with ratios.
//!
//! Every benchmark brings up one DSR lab and one NAT lab (tests/support/lab.rs) at once
//! and runs every row of its table in each of a few interleaved rounds, so that the noise
//! of a shared machine hits every row alike; a row reports its best round (noise only
//! ever slows a run down). Only one thing handles a lab's VIP at a time: lb is stopped
//! (by its PID) before HAProxy, nftables or the bare forwarder take the VIP over.
//!
//! The labs are torn down when this returns, fails, panics or is interrupted (Ctrl-C sets
//! a flag that every step checks; the `Lab` guards then unwind).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use lb_lab::lab::{self, Lab, Mode};

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

// ---- what every benchmark needs --------------------------------------------------------

/// The built binaries and XDP objects.
struct Objects {
    lb: String,
    pass: PathBuf,
    fwd: String,
    /// The frame generator (`xdp-gen`), loaded by `inject` with aya.
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

// ---- lb, HAProxy, nftables -------------------------------------------------------------

/// Starts `lb run` on the lab's balancer with `config`; returns its PID once every
/// backend is in rotation.
fn start_lb(lab: &mut Lab, lb: &str, name: &str, config: &str) -> Result<u32> {
    let file = lab.write(&format!("{name}.json"), config);
    let socket = lab
        .dir
        .join(format!("{name}.sock"))
        .to_string_lossy()
        .into_owned();
    let mut args = vec![lb.to_string(), "run".into()];
    for iface in lab.lb_ifaces() {
        args.extend(["--iface".into(), iface.to_string()]);
    }
    args.extend([
        "--config".into(),
        file.to_string_lossy().into_owned(),
        "--socket".into(),
        socket.clone(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ns = lab.lb_ns();
    let log = format!("{name}.log");
    let pid = lab.spawn(&ns, &args, &log);
    let in_rotation = wait_for(
        "lb: every backend in rotation",
        Duration::from_secs(20),
        || {
            if !alive(pid) {
                bail!("lb exited");
            }
            let out = lab
                .exec(&ns, &[lb, "--socket", &socket, "service", "list", "--json"])
                .stderr(Stdio::null())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(out.status.success()
                && text.contains("\"in_rotation\": true")
                && !text.contains("\"in_rotation\": false"))
        },
    );
    if let Err(e) = in_rotation {
        let log = std::fs::read_to_string(lab.dir.join(&log)).unwrap_or_default();
        lab.stop(pid);
        return Err(e.context(format!("starting lb; its log:\n{log}")));
    }
    Ok(pid)
}

/// `lb stats` of the running daemon `name` (for the record of a run).
fn lb_stats(lab: &Lab, lb: &str, name: &str) -> Result<String> {
    let socket = lab.dir.join(format!("{name}.sock"));
    run_in(
        lab,
        &lab.lb_ns(),
        &[lb, "--socket", &socket.to_string_lossy(), "stats"],
    )
}

/// The largest HAProxy `maxconn` whose file descriptors (two per connection plus
/// HAProxy's own) fit our hard limit: HAProxy refuses to start otherwise ("Cannot raise
/// FD limit").
fn haproxy_maxconn() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        1024
    };
    (hard.saturating_sub(200) / 2).clamp(256, 20_000)
}

/// HAProxy in TCP mode on the NAT lab's balancer, listening on `VIP:port` (the VIP is
/// added to the balancer's `lo` meanwhile) and spreading over `servers` with `balance`.
struct Haproxy {
    pid: u32,
    vip: String,
}

fn start_haproxy(
    lab: &mut Lab,
    name: &str,
    port: u16,
    servers: &[(String, u16)],
    balance: &str,
) -> Result<Haproxy> {
    let ns = lab.lb_ns();
    let vip = lab.vip().to_string();
    let mut conf = format!(
        "global\n  maxconn {}\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend fe\n  bind {vip}:{port}\n  default_backend be\n\
         backend be\n  balance {balance}\n",
        haproxy_maxconn()
    );
    for (i, (addr, p)) in servers.iter().enumerate() {
        let _ = writeln!(conf, "  server b{} {addr}:{p}", i + 1);
    }
    let file = lab.write(&format!("{name}.cfg"), &conf);
    run_in(
        lab,
        &ns,
        &["haproxy", "-c", "-q", "-f", &file.to_string_lossy()],
    )
    .context("checking the HAProxy configuration")?;
    run_in(
        lab,
        &ns,
        &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
    )?;
    let pid = lab.spawn(
        &ns,
        &["haproxy", "-db", "-f", &file.to_string_lossy()],
        &format!("{name}.log"),
    );
    let up = wait_for("HAProxy listening", Duration::from_secs(10), || {
        if !alive(pid) {
            bail!("HAProxy exited");
        }
        listening(lab, &ns, port)
    });
    let h = Haproxy { pid, vip };
    if let Err(e) = up {
        let log = std::fs::read_to_string(lab.dir.join(format!("{name}.log"))).unwrap_or_default();
        stop_haproxy(lab, h)?;
        return Err(e.context(format!("starting HAProxy; its log:\n{log}")));
    }
    Ok(h)
}

fn stop_haproxy(lab: &mut Lab, h: Haproxy) -> Result<()> {
    lab.stop(h.pid);
    run_in(
        lab,
        &lab.lb_ns(),
        &["ip", "addr", "del", &format!("{}/32", h.vip), "dev", "lo"],
    )
    .map(drop)
}

/// nftables DNAT on the NAT lab's balancer: `VIP:port/proto` to the backends, picked by
/// `jhash` over `key` (e.g. `ip saddr`).
fn start_nft(lab: &Lab, proto: &str, port: u16, key: &str) -> Result<()> {
    let map: Vec<String> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {}", b.addr))
        .collect();
    let rules = format!(
        "table ip lbbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {} {proto} dport {port} dnat to jhash {key} mod {} map {{ {} }}\n  }}\n}}\n",
        lab.vip(),
        lab.backends.len(),
        map.join(", ")
    );
    let file = lab.write("nft.conf", &rules);
    run_in(lab, &lab.lb_ns(), &["nft", "-f", &file.to_string_lossy()]).map(drop)
}

fn stop_nft(lab: &Lab) -> Result<()> {
    run_in(
        lab,
        &lab.lb_ns(),
        &["nft", "delete", "table", "ip", "lbbench"],
    )
    .map(drop)
}

// ---- tables ------------------------------------------------------------------------------

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn print(&self) {
        println!("\n| {} |", self.header.join(" | "));
        let align: Vec<&str> = (0..self.header.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        println!("|{}|", align.join("|"));
        for r in &self.rows {
            println!("| {} |", r.join(" | "));
        }
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

// ---- throughput ------------------------------------------------------------------------------

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

impl TpRow {
    const ALL: [TpRow; 8] = [
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

fn lb_tcp_config(lab: &Lab, port: u16, persistence: bool, probe_port: u16) -> String {
    let fwd = match lab.mode {
        Mode::Dsr => "dsr",
        Mode::Nat => "nat",
    };
    let backends: Vec<String> = lab
        .backends
        .iter()
        .map(|b| format!(r#"{{"address": "{}", "port": {port}}}"#, b.addr))
        .collect();
    format!(
        r#"{{"services": [{{"vip": "{}", "port": {port}, "protocol": "tcp", "forwarding": "{fwd}",
  "persistence": {persistence}, "health_check": {{"kind": "tcp", "probe_port": {probe_port}}},
  "backends": [{}]}}]}}"#,
        lab.vip(),
        backends.join(", ")
    )
}

pub fn throughput() -> Result<()> {
    let obj = prepare("throughput")?;
    step("labs: DSR (bt-d) and NAT (bt-n), 3 backends each, iperf3 servers on every backend");
    let mut dsr = Lab::up(Mode::Dsr, "bt-d", 3, &obj.pass);
    let mut nat = Lab::up(Mode::Nat, "bt-n", 3, &obj.pass);
    for lab in [&mut dsr, &mut nat] {
        plain_switch(lab)?;
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
    fixed_backend_macs(&dsr)?;
    let pass = obj.pass.to_string_lossy().into_owned();
    let b1_dsr = dsr.backends[0].addr.to_string();
    let b1_nat = nat.backends[0].addr.to_string();
    let nat_servers: Vec<(String, u16)> = nat
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), IPERF_PORT))
        .collect();

    let mut results = vec![Vec::<TpRun>::new(); TpRow::ALL.len()];
    for round in 1..=TP_ROUNDS {
        step(&format!(
            "round {round}/{TP_ROUNDS} (load average {})",
            loadavg()
        ));
        for (i, row) in TpRow::ALL.into_iter().enumerate() {
            let lab = if row.dsr() { &mut dsr } else { &mut nat };
            let lb_ns = lab.lb_ns();
            // Set up.
            let mut lb_pid = None;
            let mut haproxy = None;
            let target = match row {
                TpRow::Direct => b1_dsr.clone(),
                TpRow::DirectXdp => {
                    let b1 = lab.backends[0].ns.clone();
                    xdp_attach(lab, &b1, "eth0", &pass, "pass")?;
                    b1_dsr.clone()
                }
                TpRow::Routed => b1_nat.clone(),
                TpRow::LbDsr | TpRow::LbNat => {
                    let config = lb_tcp_config(lab, IPERF_PORT, true, 80);
                    lb_pid = Some(start_lb(lab, &obj.lb, "lb-tcp", &config)?);
                    lab.vip().to_string()
                }
                TpRow::Fwd => {
                    xdp_attach(lab, &lb_ns, "eth0", &obj.fwd, "fwd")?;
                    lab.vip().to_string()
                }
                TpRow::Haproxy => {
                    haproxy = Some(start_haproxy(
                        lab,
                        "haproxy-tcp",
                        IPERF_PORT,
                        &nat_servers,
                        "source",
                    )?);
                    lab.vip().to_string()
                }
                TpRow::Nft => {
                    start_nft(lab, "tcp", IPERF_PORT, "ip saddr")?;
                    lab.vip().to_string()
                }
            };
            // Measure.
            let before = lab_drops(lab)?;
            let fwd = iperf(lab, &target, false);
            let (drops, at) = drops_since(&before, &lab_drops(lab)?);
            let rev = fwd.as_ref().ok().map(|_| iperf(lab, &target, true));
            // Tear down, whatever happened.
            if let Some(pid) = lb_pid {
                lab.stop(pid);
            }
            if let Some(h) = haproxy {
                stop_haproxy(lab, h)?;
            }
            match row {
                TpRow::Fwd => xdp_detach(lab, &lb_ns, "eth0")?,
                TpRow::DirectXdp => {
                    let b1 = lab.backends[0].ns.clone();
                    xdp_detach(lab, &b1, "eth0")?;
                }
                TpRow::Nft => stop_nft(lab)?,
                _ => {}
            }
            let (fwd, rev) = (
                fwd.with_context(|| row.name())?,
                rev.expect("run after a forward run")
                    .with_context(|| row.name())?,
            );
            println!(
                "    {:<40} {:>5.0} Mbit/s ({:>5} retr, {:>5} drops, most at {at:<13})   -R {:>5.0} Mbit/s ({:>5} retr)",
                row.name(),
                fwd.mbps,
                fwd.retr,
                drops,
                rev.mbps,
                rev.retr
            );
            results[i].push(TpRun {
                fwd,
                rev,
                drops,
                at,
            });
        }
    }

    // Each row's best round, for each direction.
    let best_of = |i: usize, reverse: bool| -> TpRun {
        let mbps = |r: &TpRun| if reverse { r.rev.mbps } else { r.fwd.mbps };
        results[i]
            .iter()
            .fold(None::<&TpRun>, |a, b| match a {
                Some(a) if mbps(a) >= mbps(b) => Some(a),
                _ => Some(b),
            })
            .cloned()
            .unwrap_or_default()
    };
    let direct = (best_of(0, false).fwd.mbps, best_of(0, true).rev.mbps);
    let at = |r: TpRow| TpRow::ALL.iter().position(|x| *x == r).expect("row");
    let routed = (
        best_of(at(TpRow::Routed), false).fwd.mbps,
        best_of(at(TpRow::Routed), true).rev.mbps,
    );
    step(&format!(
        "throughput, iperf3 -P 4, best of {TP_ROUNDS} rounds (load average now {})",
        loadavg()
    ));
    let mut t = Table::new(&[
        "path",
        "lab",
        "client→server Gbit/s",
        "× direct",
        "× routed",
        "retransmits",
        "frames dropped in the lab (most at)",
        "server→client (-R) Gbit/s",
        "× direct",
        "× routed",
    ]);
    for (i, row) in TpRow::ALL.into_iter().enumerate() {
        let run = best_of(i, false);
        let (f, retr) = (run.fwd.mbps, run.fwd.retr);
        let r = best_of(i, true).rev.mbps;
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
        t.row(vec![
            row.name().into(),
            if row.dsr() { "DSR" } else { "NAT" }.into(),
            format!("{:.2}", f / 1000.0),
            ratio(f, direct.0),
            x_routed_f,
            retr.to_string(),
            drops,
            format!("{:.2}", r / 1000.0),
            ratio(r, direct.1),
            x_routed_r,
        ]);
    }
    t.print();
    let lbdsr = best_of(at(TpRow::LbDsr), false).fwd.mbps / direct.0;
    println!(
        "\ntarget: lb DSR client→server ≥ 0.9× direct: {:.2}× — {}",
        lbdsr,
        verdict(lbdsr, 0.9)
    );
    Ok(())
}

fn verdict(value: f64, target: f64) -> String {
    if value >= target {
        format!("met (by {:.0}%)", (value / target - 1.0) * 100.0)
    } else {
        format!("MISSED by {:.0}%", (1.0 - value / target) * 100.0)
    }
}

// ---- packets per second -------------------------------------------------------------------

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

impl PpsRow {
    const ALL: [PpsRow; 6] = [
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

fn lb_udp_config(lab: &Lab) -> String {
    let fwd = match lab.mode {
        Mode::Dsr => "dsr",
        Mode::Nat => "nat",
    };
    let backends: Vec<String> = lab
        .backends
        .iter()
        .map(|b| format!(r#"{{"address": "{}"}}"#, b.addr))
        .collect();
    format!(
        r#"{{"services": [{{"vip": "{}", "port": {PPS_PORT}, "protocol": "udp", "forwarding": "{fwd}",
  "health_check": {{"kind": "none"}}, "backends": [{}]}}]}}"#,
        lab.vip(),
        backends.join(", ")
    )
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

fn pps_run(
    lab: &Lab,
    generator: &mut inject::Generator,
    frame: &[u8; 64],
    seconds: f64,
) -> Result<PpsRun> {
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
    let mut dsr = Lab::up(Mode::Dsr, "bp-d", 3, &obj.pass);
    let mut nat = Lab::up(Mode::Nat, "bp-n", 3, &obj.pass);
    let pass = obj.pass.to_string_lossy().into_owned();
    for lab in [&dsr, &nat] {
        plain_switch(lab)?;
        for b in &lab.backends {
            xdp_attach(lab, &b.ns, "eth0", &obj.fwd, "sink")?;
        }
    }
    fixed_backend_macs(&dsr)?;
    // The generator transmits XDP frames out of the client's eth0: its peer must run an
    // XDP program (in the NAT lab the peer is the balancer's eth0: lb, or xdp-pass).
    xdp_attach(&dsr, &dsr.ns("sw"), "p-cli", &pass, "pass")?;

    let cli_mac_d = mac_of(&dsr, &dsr.client_ns(), "eth0")?;
    let cli_mac_n = mac_of(&nat, &nat.client_ns(), "eth0")?;
    let lb_mac_d = mac_of(&dsr, &dsr.lb_ns(), "eth0")?;
    let lb_mac_n = mac_of(&nat, &nat.lb_ns(), "eth0")?;
    let b1_mac_d = mac_of(&dsr, &dsr.backends[0].ns, "eth0")?;
    let ip4 = |s: &str| -> [u8; 4] { s.parse::<std::net::Ipv4Addr>().expect("address").octets() };
    let frame = |row: PpsRow| match row {
        // To the first backend's MAC; it holds the VIP on lo.
        PpsRow::Direct => udp_frame(cli_mac_d, b1_mac_d, [10, 0, 0, 2], ip4(lab::DSR_VIP)),
        PpsRow::Fwd | PpsRow::LbDsr => {
            udp_frame(cli_mac_d, lb_mac_d, [10, 0, 0, 2], ip4(lab::DSR_VIP))
        }
        PpsRow::Routed => udp_frame(
            cli_mac_n,
            lb_mac_n,
            [10, 0, 1, 2],
            nat.backends[0].addr.octets(),
        ),
        PpsRow::Nft | PpsRow::LbNat => {
            udp_frame(cli_mac_n, lb_mac_n, [10, 0, 1, 2], ip4(lab::NAT_VIP))
        }
    };
    let frames: Vec<[u8; 64]> = PpsRow::ALL.into_iter().map(frame).collect();
    let frame = |row: PpsRow| frames[PpsRow::ALL.iter().position(|x| *x == row).expect("row")];
    let mut generator = inject::Generator::new(&obj.generator);

    let mut results = vec![Vec::<PpsRun>::new(); PpsRow::ALL.len()];
    for round in 1..=PPS_ROUNDS {
        step(&format!(
            "round {round}/{PPS_ROUNDS}: 64-byte UDP frames for {PPS_SECONDS} s per row (load average {})",
            loadavg()
        ));
        for (i, row) in PpsRow::ALL.into_iter().enumerate() {
            let lab = if row.dsr() { &mut dsr } else { &mut nat };
            let lb_ns = lab.lb_ns();
            let mut lb_pid = None;
            match row {
                PpsRow::Direct => {}
                PpsRow::Fwd => xdp_attach(lab, &lb_ns, "eth0", &obj.fwd, "fwd")?,
                PpsRow::LbDsr | PpsRow::LbNat => {
                    let config = lb_udp_config(lab);
                    lb_pid = Some(start_lb(lab, &obj.lb, "lb-udp", &config)?);
                }
                PpsRow::Routed => xdp_attach(lab, &lb_ns, "eth0", &pass, "pass")?,
                PpsRow::Nft => {
                    xdp_attach(lab, &lb_ns, "eth0", &pass, "pass")?;
                    start_nft(lab, "udp", PPS_PORT, "ip saddr . udp sport")?;
                }
            }
            // A short warm-up (flows, neighbours, caches), then the timed run.
            let run = pps_run(lab, &mut generator, &frame(row), 0.3)
                .and_then(|_| pps_run(lab, &mut generator, &frame(row), PPS_SECONDS));
            if let Some(pid) = lb_pid {
                if row == PpsRow::LbNat && round == PPS_ROUNDS {
                    println!("{}", lb_stats(lab, &obj.lb, "lb-udp").unwrap_or_default());
                }
                lab.stop(pid);
            }
            match row {
                PpsRow::Fwd | PpsRow::Routed => xdp_detach(lab, &lb_ns, "eth0")?,
                PpsRow::Nft => {
                    stop_nft(lab)?;
                    xdp_detach(lab, &lb_ns, "eth0")?;
                }
                _ => {}
            }
            let run = run.with_context(|| row.name())?;
            println!(
                "    {:<44} {:>9.0} pps delivered ({:>5.1}% of {:>9} injected), {:>6.0} ns of CPU per packet",
                row.name(),
                run.pps(),
                run.delivered as f64 * 100.0 / run.sent.max(1) as f64,
                run.sent,
                run.ns_per_packet()
            );
            results[i].push(run);
        }
    }

    // Each row's best round: the least CPU per packet, and (apart) the highest rate.
    let at = |r: PpsRow| PpsRow::ALL.iter().position(|x| *x == r).expect("row");
    let per_cpu = |r: PpsRow| -> PpsRun {
        results[at(r)]
            .iter()
            .copied()
            .fold(PpsRun::default(), |a, b| {
                if b.pps_per_cpu() > a.pps_per_cpu() {
                    b
                } else {
                    a
                }
            })
    };
    let wall = |r: PpsRow| results[at(r)].iter().map(PpsRun::pps).fold(0.0, f64::max);
    let rate = |r: PpsRow| per_cpu(r).pps_per_cpu();

    // What each balancer costs per packet inside its XDP program, measured apart
    // (kernel BPF run-time statistics slow every program a little while on).
    step("profile: ns per packet inside the XDP program (kernel BPF statistics, 2 s each)");
    let mut prog_ns = Vec::new();
    for row in [PpsRow::Fwd, PpsRow::LbDsr, PpsRow::LbNat] {
        let lab = if row.dsr() { &mut dsr } else { &mut nat };
        let lb_ns = lab.lb_ns();
        let mut lb_pid = None;
        if row == PpsRow::Fwd {
            xdp_attach(lab, &lb_ns, "eth0", &obj.fwd, "fwd")?;
        } else {
            let config = lb_udp_config(lab);
            lb_pid = Some(start_lb(lab, &obj.lb, "lb-udp", &config)?);
        }
        let measured = prog_profile(lab, &mut generator, &frame(row));
        if let Some(pid) = lb_pid {
            lab.stop(pid);
        } else {
            xdp_detach(lab, &lb_ns, "eth0")?;
        }
        let ns = measured.with_context(|| format!("profiling {}", row.name()))?;
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

    step(&format!(
        "packet rate, 64-byte UDP frames, best of {PPS_ROUNDS} rounds (load average now {})",
        loadavg()
    ));
    let mut t = Table::new(&[
        "path",
        "lab",
        "CPU ns per packet (whole path)",
        "packets per CPU-second",
        "× direct",
        "× bare forwarder",
        "× nftables",
        "ns added over direct / routed",
        "ns in the XDP program",
        "delivered pps (wall clock)",
    ]);
    for row in PpsRow::ALL {
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
        t.row(vec![
            row.name().into(),
            if row.dsr() { "DSR" } else { "NAT" }.into(),
            format!("{:.0}", r.ns_per_packet()),
            format!("{:.0}", r.pps_per_cpu()),
            ratio(rate(row), rate(PpsRow::Direct)),
            ratio(rate(row), rate(PpsRow::Fwd)),
            ratio(rate(row), rate(PpsRow::Nft)),
            added,
            prog(row),
            format!("{:.0}", wall(row)),
        ]);
    }
    t.print();
    for (i, row) in PpsRow::ALL.into_iter().enumerate() {
        round_line(
            row.name(),
            &results[i]
                .iter()
                .map(PpsRun::ns_per_packet)
                .collect::<Vec<_>>(),
            "CPU ns per packet",
        );
    }
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
fn prog_profile(lab: &Lab, generator: &mut inject::Generator, frame: &[u8; 64]) -> Result<f64> {
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
    let _on = inject::enable_stats()?;
    pps_run(lab, generator, frame, 0.3)?;
    let (t0, n0) = stats()?;
    pps_run(lab, generator, frame, 2.0)?;
    let (t1, n1) = stats()?;
    ensure!(n1 > n0, "the program did not run");
    Ok((t1 - t0) as f64 / (n1 - n0) as f64)
}

// ---- connections per second --------------------------------------------------------------

const CPS_ROUNDS: usize = 3;
const CPS_SECONDS: &str = "3";

#[derive(Clone, Copy, PartialEq)]
enum CpsRow {
    Direct,
    LbDsr,
    LbNat,
    Haproxy,
}

impl CpsRow {
    const ALL: [CpsRow; 4] = [
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
    let mut dsr = Lab::up(Mode::Dsr, "bc-d", 3, &obj.pass);
    let mut nat = Lab::up(Mode::Nat, "bc-n", 3, &obj.pass);
    for lab in [&dsr, &nat] {
        plain_switch(lab)?;
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
    let dsr_config = dsr.config(check, false);
    let dsr_pid = start_lb(&mut dsr, &obj.lb, "lb-http", &dsr_config)?;
    let nat_servers: Vec<(String, u16)> = nat
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), lab::ALT_PORT))
        .collect();
    let direct_url = format!("http://{}/", dsr.backends[0].addr);
    let mut results = vec![Vec::<Wrk>::new(); CpsRow::ALL.len()];
    for round in 1..=CPS_ROUNDS {
        step(&format!(
            "round {round}/{CPS_ROUNDS}: wrk -t 2 -c 64 -d {CPS_SECONDS}s, Connection: close (load average {})",
            loadavg()
        ));
        for (i, row) in CpsRow::ALL.into_iter().enumerate() {
            let lab = if row.dsr() { &mut dsr } else { &mut nat };
            let url = format!("http://{}/", lab.vip());
            let mut lb_pid = None;
            let mut haproxy = None;
            match row {
                CpsRow::LbNat => {
                    let config = lab.config(check, false);
                    lb_pid = Some(start_lb(lab, &obj.lb, "lb-http", &config)?);
                }
                CpsRow::Haproxy => {
                    haproxy = Some(start_haproxy(
                        lab,
                        "haproxy-http",
                        80,
                        &nat_servers,
                        "roundrobin",
                    )?);
                }
                _ => {}
            }
            let run = wrk(
                lab,
                if row == CpsRow::Direct {
                    &direct_url
                } else {
                    &url
                },
            );
            if let Some(pid) = lb_pid {
                lab.stop(pid);
            }
            if let Some(h) = haproxy {
                stop_haproxy(lab, h)?;
            }
            let run = run.with_context(|| row.name())?;
            println!(
                "    {:<40} {:>8.0} connections/s ({} errors)",
                row.name(),
                run.rps,
                run.errors
            );
            results[i].push(run);
            // Let TIME_WAIT and the last FINs settle between rows.
            pause(Duration::from_millis(500))?;
        }
    }
    println!("{}", lb_stats(&dsr, &obj.lb, "lb-http").unwrap_or_default());
    dsr.stop(dsr_pid);

    let best_of = |i: usize| -> Wrk {
        results[i]
            .iter()
            .copied()
            .fold(Wrk::default(), |a, b| if b.rps > a.rps { b } else { a })
    };
    let haproxy = best_of(3).rps;
    step(&format!(
        "connections per second, best of {CPS_ROUNDS} rounds (load average now {})",
        loadavg()
    ));
    let mut t = Table::new(&["path", "lab", "connections/s", "× HAProxy", "errors"]);
    for (i, row) in CpsRow::ALL.into_iter().enumerate() {
        let w = best_of(i);
        t.row(vec![
            row.name().into(),
            if row.dsr() { "DSR" } else { "NAT" }.into(),
            format!("{:.0}", w.rps),
            ratio(w.rps, haproxy),
            w.errors.to_string(),
        ]);
    }
    t.print();
    for (i, row) in CpsRow::ALL.into_iter().enumerate() {
        round_line(
            row.name(),
            &results[i].iter().map(|w| w.rps).collect::<Vec<_>>(),
            "conn/s",
        );
    }
    let (d, n) = (best_of(1).rps / haproxy, best_of(2).rps / haproxy);
    println!(
        "\ntarget: lb ≥ 2× HAProxy: lb DSR {d:.2}× ({}), lb NAT {n:.2}× ({})",
        verdict(d, 2.0),
        verdict(n, 2.0)
    );
    Ok(())
}

// ---- the frame generator: XDP live frames ----------------------------------------------

/// The frame generator of `bench pps`: a packet generator without pktgen (absent from
/// this kernel) or a userspace sender. BPF_PROG_TEST_RUN with
/// `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18, Documentation/bpf/bpf_prog_run.rst) runs a
/// tiny XDP program over a frame in a loop, and every XDP_TX it returns really transmits
/// the frame out of the given interface.
///
/// The program is lb-ebpf's `xdp-gen` (src/bin/xdp-gen.rs): it writes the frame's
/// 42-byte Ethernet/IPv4/UDP header each run from its global `HEADER` and a random
/// source port from 1024..1280, so the traffic is 256 flows. It is loaded here with aya,
/// one copy per frame template, `HEADER` set at load time; aya's `test_run` drives the
/// live frames (`TestRunAttrs::xdp_live_frames`).
mod inject {
    use std::{
        ffi::CString,
        os::fd::{AsRawFd as _, OwnedFd},
        path::{Path, PathBuf},
        sync::atomic::{AtomicBool, Ordering},
        time::{Duration, Instant},
    };

    use anyhow::{Context as _, Result, bail};
    use aya::{
        Ebpf, EbpfLoader,
        programs::{ProgramError, TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
        sys::{Stats, SyscallError},
    };

    /// The program's name in the object (its function in xdp-gen.rs).
    const PROGRAM: &str = "generate";
    /// Bytes of header the program writes: Ethernet, IPv4, UDP.
    const HEADER: usize = 42;
    /// Frames of the first BPF_PROG_TEST_RUN call of a run; later calls are sized from
    /// the rate seen so far to last about `CALL` each: every live-frame call sets up and
    /// tears down a page pool, and the teardown sleeps (an RCU grace period, 10 ms or
    /// more here), so short calls would leave the CPU idle a third of the time.
    const FIRST_REPEAT: u32 = 1 << 14;
    const CALL: Duration = Duration::from_millis(500);

    /// The generator: the `xdp-gen` object, and one loaded copy of it per frame template.
    pub struct Generator {
        object: PathBuf,
        loaded: Vec<([u8; 64], Ebpf)>,
    }

    pub struct Blast {
        pub packets: u64,
        pub wall: Duration,
        pub cpu: Duration,
    }

    /// Kernel BPF run-time statistics, on while the returned descriptor is open.
    pub fn enable_stats() -> Result<OwnedFd> {
        aya::sys::enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")
    }

    /// The program's global `HEADER`: the first 42 bytes of `frame` in six 8-byte words, as
    /// they lie in memory (the last word holds two bytes of header and six of nothing).
    fn header_words(frame: &[u8; 64]) -> [u64; 6] {
        let mut bytes = [0u8; 48];
        bytes[..HEADER].copy_from_slice(&frame[..HEADER]);
        std::array::from_fn(|i| {
            u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
        })
    }

    impl Generator {
        pub fn new(object: &Path) -> Generator {
            Generator {
                object: object.to_path_buf(),
                loaded: Vec::new(),
            }
        }

        /// The program that writes `frame`'s header, loaded the first time it is asked for.
        fn program(&mut self, frame: &[u8; 64]) -> Result<&Xdp> {
            let i = match self.loaded.iter().position(|(f, _)| f == frame) {
                Some(i) => i,
                None => {
                    let words = header_words(frame);
                    let mut ebpf = EbpfLoader::new()
                        .override_global("HEADER", &words, true)
                        .load_file(&self.object)
                        .with_context(|| format!("loading {}", self.object.display()))?;
                    let program: &mut Xdp = ebpf
                        .program_mut(PROGRAM)
                        .with_context(|| format!("no program {PROGRAM} in xdp-gen"))?
                        .try_into()?;
                    program.load().context("loading the generator program")?;
                    self.loaded.push((*frame, ebpf));
                    self.loaded.len() - 1
                }
            };
            let program = self.loaded[i]
                .1
                .program(PROGRAM)
                .expect("loaded above")
                .try_into()?;
            Ok(program)
        }

        /// Transmits `frame` (varying its source port) out of `iface` of namespace `ns`
        /// for `duration`, as fast as the path takes it. The injection runs on a thread
        /// of its own that enters the namespace.
        pub fn blast(
            &mut self,
            ns: &str,
            iface: &str,
            frame: &[u8; 64],
            duration: Duration,
            stop: &AtomicBool,
        ) -> Result<Blast> {
            let program = self.program(frame)?;
            let netns = std::fs::File::open(format!("/run/netns/{ns}"))
                .with_context(|| format!("opening network namespace {ns}"))?;
            let iface = CString::new(iface)?;
            // A fixed CPU (the last one), so every run's path shares one CPU alike.
            let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
            std::thread::scope(|s| {
                s.spawn(move || -> Result<Blast> {
                    // SAFETY: setns(2) on an open namespace descriptor: moves only this
                    // thread, which ends with the scope.
                    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns {ns}: {}", std::io::Error::last_os_error());
                    }
                    // SAFETY: a NUL-terminated name.
                    let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
                    if ifindex == 0 {
                        bail!("no {iface:?} in {ns}");
                    }
                    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                    // rx_queue_index, egress_ifindex.
                    let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0]
                        .iter()
                        .flat_map(|v| v.to_ne_bytes())
                        .collect();
                    pin_to(cpu)?;
                    let softirqd = ksoftirqd(cpu)?;
                    let cpu0 = thread_cpu() + softirqd.runtime()?;
                    let start = Instant::now();
                    let mut packets = 0u64;
                    let mut repeat = FIRST_REPEAT;
                    while start.elapsed() < duration && !stop.load(Ordering::SeqCst) {
                        let run = program.test_run(TestRunOptions {
                            data_in: Some(&frame[..]),
                            ctx_in: Some(&ctx),
                            repeat,
                            // Batch size 0: the kernel's default (64 frames).
                            attrs: TestRunAttrs::new().xdp_live_frames(0),
                            ..TestRunOptions::new()
                        });
                        match run {
                            Ok(_) => {}
                            Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                                if io_error.kind() == std::io::ErrorKind::Interrupted =>
                            {
                                continue;
                            }
                            Err(e) => {
                                return Err(e)
                                    .context(format!("BPF_PROG_TEST_RUN (live frames) in {ns}"));
                            }
                        }
                        packets += u64::from(repeat);
                        let elapsed = start.elapsed();
                        let left = duration.saturating_sub(elapsed).min(CALL);
                        let rate = packets as f64 / elapsed.as_secs_f64().max(1e-6);
                        repeat =
                            (rate * left.as_secs_f64()).clamp(1024.0, f64::from(u32::MAX)) as u32;
                    }
                    Ok(Blast {
                        packets,
                        wall: start.elapsed(),
                        cpu: (thread_cpu() + softirqd.runtime()?).saturating_sub(cpu0),
                    })
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
            })
        }
    }

    /// Pins the calling thread to `cpu`: one CPU for the whole path (see
    /// `PpsRun::ns_per_packet`).
    fn pin_to(cpu: usize) -> Result<()> {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays in it.
        let pinned = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set)
        };
        if pinned != 0 {
            bail!(
                "pinning the generator to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The kernel thread that runs deferred softirqs on one CPU.
    struct Ksoftirqd(PathBuf);

    impl Ksoftirqd {
        /// Its total run time so far (the first field of /proc/PID/schedstat).
        fn runtime(&self) -> Result<Duration> {
            let text = std::fs::read_to_string(&self.0)
                .with_context(|| format!("reading {}", self.0.display()))?;
            let ns = text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{}: {text:?}", self.0.display()))?;
            Ok(Duration::from_nanos(ns))
        }
    }

    fn ksoftirqd(cpu: usize) -> Result<Ksoftirqd> {
        let name = format!("ksoftirqd/{cpu}");
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                return Ok(Ksoftirqd(entry.path().join("schedstat")));
            }
        }
        bail!("no {name} thread")
    }

    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fills the struct we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn header_words_hold_the_header_bytes_in_order() {
            let frame: [u8; 64] = std::array::from_fn(|i| i as u8);
            let words = header_words(&frame);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            assert_eq!(&bytes[..HEADER], &frame[..HEADER]);
            assert_eq!(&bytes[HEADER..], &[0; 6]);
        }
    }
}

#[cfg(test)]
mod iperf_tests {
    use super::*;

    // Real `iperf3 -J -P 4 -t 2 -O 1` output (iperf 3.12) of this benchmark's bare
    // forwarder row, both directions. (iperf3 repeats some keys, `sock_bufsize` among
    // them; serde_json keeps the last.)
    const FORWARD: &str = include_str!("bench/testdata/iperf3-P4.json");
    const REVERSE: &str = include_str!("bench/testdata/iperf3-P4-R.json");

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

#[cfg(test)]
mod wrk_tests {
    use super::*;

    // Real output of wrk 4.1.0 (Debian) as this benchmark runs it (-t 2 -c 64 -d 3
    // --timeout 2s -H 'Connection: close'), on the lab: a clean run, a backend answering
    // 503, and a backend answering only after 2.5 s.
    #[test]
    fn wrk_clean_run() {
        let w = parse_wrk(include_str!("bench/testdata/wrk.txt")).expect("a summary");
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
        let w = parse_wrk(include_str!("bench/testdata/wrk-non2xx.txt")).expect("a summary");
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
        let w = parse_wrk(include_str!("bench/testdata/wrk-timeout.txt")).expect("a summary");
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
