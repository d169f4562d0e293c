//! `lb`: the load balancer daemon and its command-line client.
use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_userspace::ebpf::{self, AttachMode};

/// lb — a Layer-4 load balancer whose packet path runs in XDP.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it and serve until SIGINT/SIGTERM.
    Run {
        /// Interface to attach to (repeat for several).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: AttachMode,
    },
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run { ifaces, xdp_mode } => run(&ifaces, xdp_mode),
    }
}

fn run(ifaces: &[String], mode: AttachMode) -> Result<()> {
    let mut ebpf = ebpf::load()?;
    for iface in ifaces {
        ebpf::attach(&mut ebpf, iface, mode)?;
        log::info!(
            "attached XDP program {} to {iface} ({mode:?})",
            ebpf::PROGRAM
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    drop(ebpf);
    log::info!("detached and stopped");
    Ok(())
}
