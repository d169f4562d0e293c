//! `cargo xtask`: the project's own build/test/lab/bench helper.
//!
//! Every command that needs the machine prepared runs `scripts/setup.sh` first (it is
//! idempotent and takes about a second when nothing is missing).
mod lab;
/// The lab the tests use (network namespaces with real servers), shared with the demo
/// and the benchmarks.
#[path = "../../tests/support/lab.rs"]
mod testlab;
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
    /// Run every test: formatting, clippy, unit tests, BPF packet tests, namespace tests.
    Test,
    /// Run the demo on the built-in lab (network namespaces on this machine).
    Lab,
    /// Run a benchmark (not a test): side by side with its floor/peer, ratios reported.
    Bench {
        #[arg(value_enum)]
        what: Bench,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// ns per packet of the XDP pipeline vs a MAC-swap floor (BPF_PROG_TEST_RUN), and
    /// the memory of every map.
    Datapath,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => util::setup(),
        Command::Test => test(),
        Command::Lab => lab::demo(),
        Command::Bench { what } => bench(what),
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
    util::step("unit tests");
    util::cargo(&[&["test", "--lib", "--bins"][..], &CRATES, &FEATURES].concat())?;
    util::step("root tests: BPF_PROG_TEST_RUN on the real object, network namespaces");
    util::cargo(&[&["test", "--test", "*"][..], &CRATES, &FEATURES].concat())?;
    util::step("all tests passed");
    Ok(())
}

fn bench(what: Bench) -> Result<()> {
    util::setup()?;
    match what {
        Bench::Datapath => {
            util::step("datapath benchmark (BPF_PROG_TEST_RUN, pinned to one CPU)");
            util::cargo(&[
                "bench",
                "--quiet",
                "--package",
                "lb-userspace",
                "--features",
                "root-tests",
                "--bench",
                "datapath",
            ])
        }
    }
}
