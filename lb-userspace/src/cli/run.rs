//! `lb run`: the daemon.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{
    daemon::{self, RunOptions},
    dataplane::object::AttachMode,
};

#[derive(Args)]
pub struct RunArgs {
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

impl RunArgs {
    pub fn run(self, socket: PathBuf) -> Result<()> {
        daemon::run(RunOptions {
            ifaces: self.ifaces,
            mode: self.xdp_mode,
            config: self.config,
            socket,
            metrics_addr: self.metrics_addr,
        })
    }
}
