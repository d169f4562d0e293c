//! The command line: `lb run` (the daemon) and the client commands that talk to it over
//! its control socket. One module per subcommand; the doc comments are the help text.
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    api::{Client, Request},
    version,
};

pub mod backend;
pub mod conns;
pub mod detach;
pub mod run;
pub mod service;
pub mod show;
pub mod stats;
pub mod status;

pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

/// lb — a Layer-4 load balancer whose packet path runs in XDP.
///
/// `lb run` is the daemon; every other command talks to it over its control socket.
/// A service is written VIP:PORT/PROTO (10.100.0.10:80/tcp; IPv6 in brackets:
/// [2001:db8::10]:80/tcp), a backend ADDR[:PORT] (10.0.0.11:8080, [2001:db8::11]:8080,
/// or the bare address).
/// `lb --version` also prints the git commit and the SHA-256 of the embedded XDP object.
#[derive(Parser)]
#[command(name = "lb", version = version::VERSION, long_version = version::LONG, about)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach the XDP program, apply the configuration, serve the control
    /// socket, run health checks; SIGINT/SIGTERM detaches and stops.
    Run(run::RunArgs),
    /// List, add or remove virtual services.
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Add, remove or change the real servers of a service.
    #[command(subcommand)]
    Backend(backend::BackendCmd),
    /// Traffic per service and backend, and the datapath's counters (like `ipvsadm -Ln --stats`).
    Stats(stats::StatsArgs),
    /// Connections in the connection table (like `ipvsadm -Lnc`).
    Conns(conns::ConnsArgs),
    /// Re-read the configuration file of the running daemon; an invalid file changes nothing.
    Reload,
    /// Whether the daemon serves (exit status 0) or not (1, with the reason): for
    /// keepalived's track_script and BGP health checks.
    Status(status::StatusArgs),
    /// Remove a datapath that no daemon runs: detach its program and remove its pins.
    Detach(detach::DetachArgs),
}

/// Parses the command line and runs it; exits 1 with the error on failure.
pub fn main() {
    let cli = Cli::parse();
    let logging = env_logger::Env::default().default_filter_or("info");
    env_logger::Builder::from_env(logging)
        .format_target(false)
        .init();
    if let Err(e) = dispatch(cli) {
        eprintln!("lb: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let target = Target {
        socket: cli.socket.clone(),
    };
    match cli.command {
        Command::Run(a) => a.run(cli.socket),
        Command::Service(c) => c.run(&target),
        Command::Backend(c) => c.run(&target),
        Command::Stats(a) => a.run(&target),
        Command::Conns(a) => a.run(&target),
        Command::Reload => target.send(&Request::Reload {}).map(drop),
        Command::Status(a) => a.run(&target),
        Command::Detach(a) => a.run(),
    }
}

/// The daemon a client command talks to.
pub struct Target {
    socket: PathBuf,
}

impl Target {
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }
}

impl Target {
    /// Sends one request; returns its result, or the daemon's error.
    fn send(&self, req: &Request) -> Result<Value> {
        let mut client = Client::connect(&self.socket, None)?;
        Ok(client.send(req)?)
    }
}

/// Prints a result: as the daemon sent it (`--json`), or read as `T` for people.
fn print<T: DeserializeOwned>(json: bool, v: Value, human: impl Fn(T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let line = v.to_string();
        let typed: T =
            serde_json::from_value(v).with_context(|| format!("unreadable response: {line}"))?;
        print!("{}", human(typed));
    }
    Ok(())
}
