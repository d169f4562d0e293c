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
    /// Serve Prometheus metrics (/metrics) and the live stats page (/) on this address
    /// (e.g. 127.0.0.1:9180); off by default.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Name of this instance: its datapath is pinned in /sys/fs/bpf/lb/NAME.
    #[arg(long, default_value = "lb", value_parser = instance_name)]
    name: String,
    /// Pin directory of the datapath, on a bpffs (default: /sys/fs/bpf/lb/NAME). The
    /// datapath lives there, so it keeps forwarding when the daemon dies; the next
    /// `lb run` of the instance adopts it.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Take over from the running daemon of this instance (an upgrade): it hands over
    /// the control socket and exits without detaching; this one adopts the datapath.
    #[arg(long)]
    takeover: bool,
    /// On SIGTERM/SIGINT, report not serving at once but keep forwarding this long
    /// before detaching (lets a redundant peer take over first).
    #[arg(long, default_value_t = 0)]
    stop_grace_ms: u64,
    /// Announce the VIPs for BGP: while serving, each VIP with a backend in rotation is
    /// a /32 blackhole route of protocol 252 in this routing table, for BIRD (`kernel
    /// table N; learn;`) or FRR (`redistribute table N`) to announce; withdrawn when
    /// its last backend leaves rotation and at the start of a stop (docs/HA.md).
    #[arg(long, value_name = "N", value_parser = announce_table)]
    announce_table: Option<u32>,
}

fn announce_table(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a routing table number"))?;
    daemon::announce::check_table(n)
}

/// An instance name: used as a directory name.
fn instance_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not an instance name: use letters, digits, '-', '_' and '.' (not first), at most 64"
        ))
    }
}

/// The default pin directory of instance `name`.
pub fn default_pin_dir(name: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/lb").join(name)
}

impl RunArgs {
    pub fn run(self, socket: PathBuf) -> Result<()> {
        daemon::run(RunOptions {
            ifaces: self.ifaces,
            mode: self.xdp_mode,
            config: self.config,
            socket,
            metrics_addr: self.metrics_addr,
            pin_dir: self.pin_dir.unwrap_or_else(|| default_pin_dir(&self.name)),
            name: self.name,
            takeover: self.takeover,
            stop_grace: std::time::Duration::from_millis(self.stop_grace_ms),
            announce_table: self.announce_table,
        })
    }
}
