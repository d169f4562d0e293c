//! `cargo xtask`: the project's own build/test/lab/bench helper.
//!
//! Every command that needs the machine prepared runs `scripts/setup.sh` first (it is
//! idempotent and takes about a second when nothing is missing).
mod baseline;
mod bench;
mod deb;
mod lab;
mod monitoring;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "lb's build, test, lab and benchmark helper")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install and check everything the build, tests, lab and benchmarks need.
    Setup,
    /// Run every test: formatting, clippy, unit tests, BPF packet tests, namespace tests,
    /// the Debian package (built first) and the stats page in headless Chromium.
    Test,
    /// Run the demo on the built-in lab (network namespaces on this machine); `ha`: a
    /// keepalived pair failing over, `ecmp`: nodes leaving and joining an ECMP group.
    Lab {
        #[arg(value_enum)]
        what: Option<LabDemo>,
    },
    /// Build the Debian package `lb` (cargo-deb) into target/debian/.
    Deb,
    /// Run a benchmark (not a test): side by side with its floor/peer, ratios reported.
    Bench {
        #[arg(value_enum)]
        what: Bench,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LabDemo {
    /// An active/standby pair (keepalived, DSR): maintenance, SIGTERM and kill -9 of lb
    /// on the master, under load.
    Ha,
    /// Three nodes behind a BIRD router (BGP, BFD, ECMP): one leaves and joins, one is
    /// cut off, under load.
    Ecmp,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// ns per packet of the XDP pipeline vs a MAC-swap floor (BPF_PROG_TEST_RUN), and
    /// the memory of every map.
    Datapath,
    /// ms to rebuild a 65537-slot Maglev table for 1,000 backends and swap it into the
    /// kernel: the builder, the swap and a whole `backend_set` request, side by side.
    Maglev,
    /// TCP throughput (iperf3 -P 4, both directions): direct vs lb DSR vs lb NAT vs
    /// HAProxy vs nftables DNAT (and a bare XDP forwarder), on the lab.
    Throughput,
    /// 64-byte UDP packets per second delivered to the backends: lb vs nftables DNAT vs
    /// a bare XDP forwarder, on the lab (XDP live-frame injection).
    Pps,
    /// New TCP connections per second (wrk, Connection: close): lb vs HAProxy, on the lab.
    Cps,
    /// The control plane with a large connection table (10 % and 100 % of 1M, and 10M
    /// entries): `list`/`backend_set` latency, daemon CPU per minute, how long until the
    /// connection counts cover the table; 341a9ec vs this build.
    Control,
    /// ns per packet with one BPF_PROG_TEST_RUN call per packet, the production program
    /// of 341a9ec beside this build's and the floor; established connections kept
    /// through a 2x-capacity SYN flood and a table change; memory per connection.
    Packets,
    /// Failovers under load, ten of each kind: a keepalived pair (keepalived stopped,
    /// SIGTERM and kill -9 of lb, maintenance) and ECMP node loss (SIGTERM, link down):
    /// detection, time to the first answer through the new node, failed requests.
    Failover,
}

fn main() {
    let result = match Cli::parse().command {
        Command::Setup => util::setup(),
        Command::Test => test(),
        Command::Lab { what: None } => lab::demo(),
        Command::Lab {
            what: Some(LabDemo::Ha),
        } => lab::ha::demo(),
        Command::Lab {
            what: Some(LabDemo::Ecmp),
        } => lab::ecmp::demo(),
        Command::Deb => util::setup().and_then(|()| deb::build()).map(drop),
        Command::Bench { what } => bench(what),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn test() -> Result<()> {
    // Every step uses the same features so the eBPF object (built by lb-userspace's
    // build script) is compiled once.
    const FEATURES: [&str; 2] = ["--features", "lb-userspace/root-tests"];
    const CRATES: [&str; 3] = ["--workspace", "--exclude", "lb-ebpf"];
    util::setup()?;
    util::step("formatting (cargo fmt --check)");
    util::cargo(&["fmt", "--all", "--check"])?;
    util::step("lints (cargo clippy -D warnings)");
    util::cargo(
        &[
            &["clippy", "--all-targets"][..],
            &CRATES,
            &FEATURES,
            &["--", "-D", "warnings"],
        ]
        .concat(),
    )?;
    // The XDP program's library, linted for the host (its no_std binaries only build
    // for BPF, through lb-userspace's build.rs).
    util::cargo(&[
        "clippy",
        "--package",
        "lb-ebpf",
        "--lib",
        "--",
        "-D",
        "warnings",
    ])?;
    util::step("unit tests");
    util::cargo(&[&["test", "--lib", "--bins"][..], &CRATES, &FEATURES].concat())?;
    util::step("monitoring examples: promtool check/test rules, dashboard PromQL, metric names");
    monitoring::check()?;
    let (root, lab) = root_test_targets()?;
    // The package test (tests/package.rs) checks the .deb built here: a release build
    // of lb, a few minutes on a fresh machine.
    deb::build()?;
    util::step(
        "root tests: BPF_PROG_TEST_RUN on the real object; the control plane in a namespace; the Debian package",
    );
    util::cargo(&[&["test"][..], &root, &CRATES, &FEATURES].concat())?;
    // Each lab test builds six namespaces with real servers: two at a time keep a
    // 2-core machine responsive enough for their health checks.
    util::step(
        "lab tests: end-to-end and health checks with real clients and servers; the stats page in Chromium",
    );
    util::cargo(
        &[
            &["test"][..],
            &lab,
            &CRATES,
            &FEATURES,
            &["--", "--test-threads=2"],
        ]
        .concat(),
    )?;
    util::step("all tests passed");
    Ok(())
}

/// Runs one of lb-userspace's benchmark targets (they need root, like the root tests).
fn cargo_bench(name: &str, title: &str) -> Result<()> {
    util::step(title);
    util::cargo(&[
        "bench",
        "--quiet",
        "--package",
        "lb-userspace",
        "--features",
        "root-tests",
        "--bench",
        name,
    ])
}

fn bench(what: Bench) -> Result<()> {
    util::setup()?;
    match what {
        Bench::Datapath => cargo_bench(
            "datapath",
            "datapath benchmark (BPF_PROG_TEST_RUN, pinned to one CPU)",
        ),
        Bench::Maglev => cargo_bench("maglev", "Maglev rebuild-and-swap benchmark"),
        Bench::Throughput => bench::throughput(),
        Bench::Pps => bench::pps(),
        Bench::Cps => bench::cps(),
        Bench::Failover => bench::failover(),
        Bench::Control => {
            let old = baseline::lb_binary("341a9ec")?;
            // SAFETY: set before any thread of ours starts.
            unsafe { std::env::set_var("LB_BASELINE", &old) };
            cargo_bench(
                "control",
                "control-plane benchmark (requests with a large connection table)",
            )
        }
        Bench::Packets => {
            let old = baseline::object("341a9ec", "lb")?;
            // SAFETY: set before any thread of ours starts.
            unsafe { std::env::set_var("LB_BASELINE_OBJECT", &old) };
            cargo_bench(
                "packets",
                "per-packet benchmark (one BPF_PROG_TEST_RUN call per packet, 341a9ec vs this build)",
            )
        }
    }
}

/// Integration test targets, as `--test NAME` arguments: (BPF and control-plane tests,
/// lab tests). Fails when lb-userspace declares a test target that is in neither list, so
/// a new test file cannot silently stay out of `cargo xtask test`.
fn root_test_targets() -> Result<(Vec<&'static str>, Vec<&'static str>)> {
    const ROOT: [&str; 5] = ["datapath", "control", "wire", "net", "package"];
    const LAB: [&str; 9] = [
        "e2e",
        "health",
        "observability",
        "lifecycle",
        "ha",
        "ecmp",
        "stats_page",
        "service_unit",
        "systemd",
    ];
    let manifest = std::fs::read_to_string(util::root().join("lb-userspace/Cargo.toml"))?;
    let mut in_test = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_test = line == "[[test]]";
        } else if in_test && let Some(name) = line.strip_prefix("name = ") {
            let name = name.trim_matches('"');
            if !ROOT.contains(&name) && !LAB.contains(&name) {
                anyhow::bail!(
                    "test target `{name}` is not run by `cargo xtask test`: add it to xtask's lists"
                );
            }
        }
    }
    let args = |names: &[&'static str]| {
        names
            .iter()
            .flat_map(|n| ["--test", *n])
            .collect::<Vec<_>>()
    };
    Ok((args(&ROOT), args(&LAB)))
}
