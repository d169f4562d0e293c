//! The command line: `lb run` (the daemon) and the client commands that talk to it.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::{
    api::{Request, Response},
    config::{
        AdminState, BackendConfig, BackendRef, CheckKind, Forwarding, HealthCheckConfig,
        ServiceConfig, ServiceKey, StatusSpec,
    },
    daemon::{self, RunOptions},
    dataplane::object::AttachMode,
};

pub mod show;

const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

/// lb — a Layer-4 load balancer whose packet path runs in XDP.
///
/// `lb run` is the daemon; every other command talks to it over its control socket.
/// A service is written VIP:PORT/PROTO (10.100.0.10:80/tcp), a backend ADDR[:PORT].
#[derive(Parser)]
#[command(version, about)]
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
    Run(RunArgs),
    /// List, add or remove virtual services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Add, remove or change the real servers of a service.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Traffic per service and backend, and the datapath's counters (like `ipvsadm -Ln --stats`).
    Stats {
        /// Per-second rates instead of totals (like `ipvsadm -Ln --rate`).
        #[arg(long)]
        rate: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Connections in the connection table (like `ipvsadm -Lnc`).
    Conns {
        /// Only connections of this service (VIP:PORT/PROTO).
        #[arg(long)]
        service: Option<ServiceKey>,
        /// Only connections to this backend (ADDR[:PORT]).
        #[arg(long)]
        backend: Option<BackendRef>,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the configuration file of the running daemon; an invalid file changes nothing.
    Reload,
}

#[derive(Args)]
struct RunArgs {
    /// Interface to attach to (repeat for several: NAT needs the client-side and the
    /// backend-side interface).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// XDP attach mode: native (in the driver) or skb (generic, any interface).
    #[arg(long, value_enum, default_value = "native")]
    xdp_mode: AttachMode,
    /// Configuration file (JSON; see docs/CONFIG.md).
    #[arg(long)]
    config: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9180); off by default.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// List services and backends with weight, state, health and connections.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Add a service.
    Add(ServiceAddArgs),
    /// Remove a service (its backends and connection-table entries with it).
    Del {
        /// VIP:PORT/PROTO
        service: ServiceKey,
    },
}

#[derive(Args)]
struct ServiceAddArgs {
    /// VIP:PORT/PROTO
    service: ServiceKey,
    /// dsr (rewrite MACs; backends hold the VIP on lo) or nat (rewrite VIP:port).
    #[arg(long, value_enum, default_value = "dsr")]
    forwarding: ForwardingArg,
    /// Maglev table size (a prime from the offered list; 65537 by default).
    #[arg(long, default_value_t = lb_common::DEFAULT_TABLE_SIZE)]
    table_size: u32,
    /// Send every connection of a client to the same backend (hash on the source address).
    #[arg(long)]
    persistence: bool,
    /// Health check: tcp, http or none. Default: http when --check-path, --check-status,
    /// --check-host or --check-body is given; else tcp when another check option is
    /// given (a UDP service then needs --check-port); else tcp for TCP services and
    /// none for UDP.
    #[arg(long, value_enum)]
    check: Option<CheckArg>,
    /// HTTP check: path to GET (default /).
    #[arg(long)]
    check_path: Option<String>,
    /// HTTP check: expected status or range (200, 200-399; default 200-399).
    #[arg(long)]
    check_status: Option<String>,
    /// HTTP check: Host header (default: the probed address).
    #[arg(long)]
    check_host: Option<String>,
    /// HTTP check: text the response body must contain.
    #[arg(long)]
    check_body: Option<String>,
    /// Probe this address instead of each backend's own.
    #[arg(long)]
    check_address: Option<std::net::Ipv4Addr>,
    /// Probe this port instead of each backend's own (needed for checks of UDP services).
    #[arg(long)]
    check_port: Option<u16>,
    /// Milliseconds between probes (default 2000).
    #[arg(long)]
    check_interval_ms: Option<u32>,
    /// Probe timeout in milliseconds (default 1000).
    #[arg(long)]
    check_timeout_ms: Option<u32>,
    /// Successes to come up (default 2).
    #[arg(long)]
    rise: Option<u32>,
    /// Failures to go down (default 3).
    #[arg(long)]
    fall: Option<u32>,
    /// A backend to start with, ADDR[:PORT] (repeatable).
    #[arg(long = "backend")]
    backends: Vec<BackendRef>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ForwardingArg {
    Dsr,
    Nat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CheckArg {
    Tcp,
    Http,
    None,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StateArg {
    Ready,
    Drain,
    Maint,
}

impl From<StateArg> for AdminState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Ready => AdminState::Ready,
            StateArg::Drain => AdminState::Drain,
            StateArg::Maint => AdminState::Maint,
        }
    }
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Add a backend to a service.
    Add {
        /// VIP:PORT/PROTO
        service: ServiceKey,
        /// ADDR[:PORT] (the port defaults to the service's)
        backend: BackendRef,
        /// Relative weight, 0..=65535 (0: no new connections).
        #[arg(long, default_value_t = crate::config::DEFAULT_WEIGHT)]
        weight: u16,
        /// Use only while no primary backend is usable.
        #[arg(long)]
        backup: bool,
        /// Admin state to start in.
        #[arg(long, value_enum, default_value = "ready")]
        state: StateArg,
    },
    /// Remove a backend (its connections choose another backend).
    Del {
        /// VIP:PORT/PROTO
        service: ServiceKey,
        /// ADDR[:PORT]
        backend: BackendRef,
    },
    /// Change a backend's weight and/or admin state (drain: no new connections, existing
    /// ones continue; maint: out of rotation, its connections choose again).
    Set {
        /// VIP:PORT/PROTO
        service: ServiceKey,
        /// ADDR[:PORT]
        backend: BackendRef,
        /// New weight, 0..=65535.
        #[arg(long)]
        weight: Option<u16>,
        /// New admin state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
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
    let socket = cli.socket;
    match cli.command {
        Command::Run(a) => daemon::run(RunOptions {
            ifaces: a.ifaces,
            mode: a.xdp_mode,
            config: a.config,
            socket,
            metrics_addr: a.metrics_addr,
        }),
        Command::Service(ServiceCmd::List { json }) => {
            let v = call(&socket, &Request::List)?;
            print(json, &v, show::services)
        }
        Command::Service(ServiceCmd::Add(a)) => {
            let service = service_config(a)?;
            call(&socket, &Request::ServiceAdd { service }).map(|_| ())
        }
        Command::Service(ServiceCmd::Del { service }) => {
            call(&socket, &Request::ServiceDel { service }).map(|_| ())
        }
        Command::Backend(BackendCmd::Add {
            service,
            backend,
            weight,
            backup,
            state,
        }) => {
            let backend = BackendConfig {
                address: backend.address,
                port: backend.port,
                weight,
                backup,
                state: state.into(),
            };
            call(&socket, &Request::BackendAdd { service, backend }).map(|_| ())
        }
        Command::Backend(BackendCmd::Del { service, backend }) => {
            call(&socket, &Request::BackendDel { service, backend }).map(|_| ())
        }
        Command::Backend(BackendCmd::Set {
            service,
            backend,
            weight,
            state,
        }) => {
            if weight.is_none() && state.is_none() {
                bail!("nothing to change: give --weight and/or --state");
            }
            call(
                &socket,
                &Request::BackendSet {
                    service,
                    backend,
                    weight,
                    state: state.map(Into::into),
                },
            )
            .map(|_| ())
        }
        Command::Stats { rate, json } => {
            let v = call(&socket, &Request::Stats { rate })?;
            print(json, &v, |v| show::stats(v, rate))
        }
        Command::Conns {
            service,
            backend,
            limit,
            json,
        } => {
            let v = call(
                &socket,
                &Request::Conns {
                    service,
                    backend,
                    limit,
                },
            )?;
            print(json, &v, show::conns)
        }
        Command::Reload => call(&socket, &Request::Reload).map(|_| ()),
    }
}

fn service_config(a: ServiceAddArgs) -> Result<ServiceConfig> {
    let http_hint = a.check_path.is_some()
        || a.check_status.is_some()
        || a.check_host.is_some()
        || a.check_body.is_some();
    let any = http_hint
        || a.check.is_some()
        || a.check_address.is_some()
        || a.check_port.is_some()
        || a.check_interval_ms.is_some()
        || a.check_timeout_ms.is_some()
        || a.rise.is_some()
        || a.fall.is_some();
    let health_check = if any {
        let d = HealthCheckConfig::default();
        let kind = match a.check {
            Some(CheckArg::Tcp) => CheckKind::Tcp,
            Some(CheckArg::Http) => CheckKind::Http,
            Some(CheckArg::None) => CheckKind::None,
            None if http_hint => CheckKind::Http,
            None => CheckKind::Tcp,
        };
        let expect_status = match &a.check_status {
            Some(s) => serde_json::from_value::<StatusSpec>(Value::String(s.clone()))
                .map_err(|e| anyhow::anyhow!("--check-status: {e}"))?,
            None => d.expect_status,
        };
        Some(HealthCheckConfig {
            kind,
            path: a.check_path.unwrap_or(d.path),
            expect_status,
            host: a.check_host,
            body_contains: a.check_body,
            interval_ms: a.check_interval_ms.unwrap_or(d.interval_ms),
            timeout_ms: a.check_timeout_ms.unwrap_or(d.timeout_ms),
            rise: a.rise.unwrap_or(d.rise),
            fall: a.fall.unwrap_or(d.fall),
            probe_address: a.check_address,
            probe_port: a.check_port,
        })
    } else {
        None
    };
    Ok(ServiceConfig {
        vip: a.service.vip,
        port: a.service.port,
        protocol: a.service.protocol,
        forwarding: match a.forwarding {
            ForwardingArg::Dsr => Forwarding::Dsr,
            ForwardingArg::Nat => Forwarding::Nat,
        },
        scheduler: Default::default(),
        table_size: a.table_size,
        persistence: a.persistence,
        health_check,
        backends: a
            .backends
            .iter()
            .map(|b| BackendConfig {
                address: b.address,
                port: b.port,
                weight: crate::config::DEFAULT_WEIGHT,
                backup: false,
                state: AdminState::Ready,
            })
            .collect(),
    })
}

fn print(json: bool, v: &Value, human: impl Fn(&Value) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", human(v));
    }
    Ok(())
}

/// Sends one request and returns the result, or the daemon's error.
fn call(socket: &Path, req: &Request) -> Result<Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach lb at {} (is `lb run` running? is --socket right?)",
            socket.display()
        )
    })?;
    stream.write_all(format!("{}\n", req.to_line()).as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the response")?;
    let resp: Response =
        serde_json::from_str(&line).with_context(|| format!("unreadable response: {line}"))?;
    match (resp.ok, resp.result, resp.error) {
        (true, Some(v), _) => Ok(v),
        (true, None, _) => Ok(Value::Null),
        (false, _, e) => bail!("{}", e.unwrap_or_else(|| "request failed".into())),
    }
}
