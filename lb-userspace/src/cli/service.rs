//! `lb service list|add|del`.
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Target, print};
use crate::{
    api::{Request, ServiceAdd, ServiceDel, ServiceList},
    config::{
        AdminState, BackendConfig, BackendRef, CheckKind, Forwarding, HealthCheckConfig,
        ServiceConfig, ServiceKey, StatusSpec,
    },
};

#[derive(Subcommand)]
pub enum ServiceCmd {
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
pub struct ServiceAddArgs {
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
    check_address: Option<std::net::IpAddr>,
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

impl ServiceCmd {
    pub fn run(self, target: &Target) -> Result<()> {
        match self {
            ServiceCmd::List { json } => {
                let v = target.send(&Request::List {})?;
                print::<ServiceList>(json, v, |l| super::show::services(&l))
            }
            ServiceCmd::Add(a) => {
                let service = service_config(a)?;
                target
                    .send(&Request::ServiceAdd(ServiceAdd { service }))
                    .map(drop)
            }
            ServiceCmd::Del { service } => target
                .send(&Request::ServiceDel(ServiceDel { service }))
                .map(drop),
        }
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
