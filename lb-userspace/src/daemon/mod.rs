//! `lb run`: load and attach the XDP program, apply the configuration, serve the control
//! socket, run the health checks, age the connection table; detach and clean up on
//! SIGINT/SIGTERM.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{sync::Notify, task::JoinHandle};

pub mod control;
pub mod controller;
pub mod http;
pub mod metrics;

use self::{
    control::{self as server, Shared, SocketFile},
    controller::{Check, Controller},
};
use crate::{
    dataplane::{
        Dataplane, Limits,
        object::{self as ebpf, AttachMode},
    },
    health,
};

/// Options of `lb run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The XDP program attached to an interface, as `ip -d link` shows it.
fn attached_program(iface: &str) -> Result<Option<(u32, String)>> {
    let out = Command::new("ip")
        .args(["-d", "link", "show", "dev", iface])
        .output()
        .context("running `ip -d link show`")?;
    if !out.status.success() {
        bail!(
            "no interface {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_xdp_program(&String::from_utf8_lossy(&out.stdout)).map(|p| (p.id, p.name)))
}

/// The XDP program attached to an interface, as `ip -d link show` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpProgram {
    pub id: u32,
    pub name: String,
}

/// Parses `prog/xdp id N name NAME ...` (also `prog/xdpgeneric`, `prog/xdpdrv`) out of
/// `ip -d link show` output, e.g. `prog/xdp id 587 name lb tag 0e1e9bc8a1c1e2b4 jited`.
pub fn parse_xdp_program(text: &str) -> Option<XdpProgram> {
    let rest = text.split("prog/xdp").nth(1)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    Some(XdpProgram {
        id: field("id").and_then(|v| v.parse().ok()).unwrap_or(0),
        name: field("name").unwrap_or("?").to_string(),
    })
}

/// Makes `iface` free for lb's program: an `lb` program left attached by an earlier run
/// (through netlink, so it outlived its process) is detached, with a message; any other
/// program is left alone and the start refused.
fn free_interface(iface: &str) -> Result<()> {
    let Some((id, name)) = attached_program(iface)? else {
        return Ok(());
    };
    if name != ebpf::PROGRAM {
        bail!(
            "{iface} already runs the XDP program `{name}` (id {id}); lb will not replace another program: detach it first (ip link set dev {iface} xdp off)"
        );
    }
    for mode in ["xdp", "xdpgeneric", "xdpdrv"] {
        let _ = Command::new("ip")
            .args(["link", "set", "dev", iface, mode, "off"])
            .output();
    }
    if attached_program(iface)?.is_some() {
        bail!(
            "{iface} runs lb's XDP program (id {id}) held by a live process: another `lb run` is attached there; stop it first"
        );
    }
    log::warn!("replaced the XDP program lb (id {id}) left attached to {iface} by an earlier run");
    Ok(())
}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(opts: RunOptions) -> Result<()> {
    let config = controller::load_config(&opts.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Signals are caught from here on: one that arrives while the daemon starts (the
    // neighbour lookups can take a second) waits for the start to finish, then stops or
    // reloads it properly instead of killing it half-attached.
    let (mut int, mut term, mut hup) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    // The socket first: if another lb serves it, stop before touching any interface.
    let listener = {
        let _guard = rt.enter();
        server::bind(&opts.socket)?
    };
    let _socket = SocketFile(opts.socket.clone());
    // The metrics address too: a wrong one refuses the start instead of running blind.
    let metrics = match opts.metrics_addr {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the metrics address {addr} (--metrics-addr)"))?,
        ),
        None => None,
    };
    let mut dp = Dataplane::load(Limits {
        conntrack_entries: config.conntrack.max_entries,
    })?;
    for iface in &opts.ifaces {
        free_interface(iface)?;
        dp.attach(iface, opts.mode)?;
        log::info!(
            "attached XDP program {} to {iface} ({:?} mode)",
            ebpf::PROGRAM,
            opts.mode
        );
    }
    let ctl = Controller::new(dp, config, opts.config.clone(), opts.ifaces.clone())?;
    let services = ctl.runtime().services().count();
    log::info!(
        "serving {services} services; control socket {}",
        opts.socket.display()
    );
    let ctl: Shared = Arc::new(Mutex::new(ctl));

    rt.block_on(async {
        let changed = Arc::new(Notify::new());
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(server::serve(listener, ctl.clone(), changed.clone())),
            tokio::spawn(health_scheduler(ctl.clone(), changed.clone())),
            tokio::spawn(housekeeping(ctl.clone())),
        ];
        if let Some(listener) = metrics {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tasks.push(tokio::spawn(self::metrics::serve(listener, ctl.clone())));
        }
        loop {
            tokio::select! {
                _ = int.recv() => { log::info!("SIGINT: stopping"); break; }
                _ = term.recv() => { log::info!("SIGTERM: stopping"); break; }
                _ = hup.recv() => {
                    // SIGHUP reloads the configuration file, as with HAProxy and keepalived.
                    let c = ctl.clone();
                    let r = tokio::task::spawn_blocking(move || c.lock().unwrap_or_else(|p| p.into_inner()).reload()).await;
                    match r {
                        Ok(resp) if resp.ok => { log::info!("SIGHUP: configuration reloaded"); changed.notify_one(); }
                        Ok(resp) => log::error!("SIGHUP: {}", resp.error.unwrap_or_default()),
                        Err(e) => log::error!("SIGHUP: reload task failed: {e}"),
                    }
                }
            }
        }
        for t in &tasks {
            t.abort();
        }
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(2));
    // Dropping the controller drops the dataplane: the XDP links close and the program
    // leaves every interface.
    match Arc::try_unwrap(ctl) {
        Ok(m) => drop(m.into_inner().unwrap_or_else(|p| p.into_inner())),
        Err(_) => log::warn!("the controller is still referenced at shutdown"),
    }
    log::info!("detached from {}; stopped", opts.ifaces.join(", "));
    Ok(())
}

/// A task aborted when this handle is dropped (a plain `JoinHandle` detaches instead).
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one task per health check; restarts a check whose parameters change. Aborting
/// this task stops every probe.
async fn health_scheduler(ctl: Shared, changed: Arc<Notify>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Check, health::ProbeResult)>(1024);
    let _results = Owned({
        let ctl = ctl.clone();
        tokio::spawn(async move {
            while let Some((check, result)) = rx.recv().await {
                let ctl = ctl.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mut c = ctl.lock().unwrap_or_else(|p| p.into_inner());
                    c.probe_result(check.service, check.backend, result);
                })
                .await;
            }
        })
    });
    let mut running: BTreeMap<Check, Owned> = BTreeMap::new();
    loop {
        let wanted = ctl.lock().unwrap_or_else(|p| p.into_inner()).checks();
        running.retain(|check, _| wanted.contains(check));
        for check in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(check) {
                let task = Owned(tokio::spawn(probe_loop(slot.key().clone(), tx.clone())));
                slot.insert(task);
            }
        }
        changed.notified().await;
    }
}

/// Probes one backend forever, on its own schedule (first probe spread over the interval).
async fn probe_loop(check: Check, tx: tokio::sync::mpsc::Sender<(Check, health::ProbeResult)>) {
    tokio::time::sleep(health::start_offset(check.backend, check.interval)).await;
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = health::probe(&check.kind, check.target.into(), check.timeout).await;
        if tx.send((check.clone(), result)).await.is_err() {
            return;
        }
    }
}

/// Periodic upkeep: the datapath's log (1 s), rate samples (2 s), neighbour refresh (5 s),
/// connection-table sweeps.
async fn housekeeping(ctl: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let ctl = ctl.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut c = ctl.lock().unwrap_or_else(|p| p.into_inner());
            c.drain_datapath_logs();
            if n.is_multiple_of(2) {
                c.sample()?;
            }
            if n.is_multiple_of(5) {
                c.refresh_neighbours()?;
            }
            let every = u64::from(c.runtime().conntrack.ageing_interval_s.max(1));
            if n.is_multiple_of(every) {
                let (kept, removed) = c.sweep()?;
                if removed > 0 {
                    log::debug!("connection table: {kept} entries, {removed} aged out");
                }
            }
            Ok(())
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("housekeeping: {e:#}"),
            Err(e) => log::warn!("housekeeping task: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_program_is_read_from_ip_link_output() {
        let text = "2: v0@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdpgeneric qdisc noqueue\n    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n    prog/xdp id 587 name lb tag 0e1e9bc8a1c1e2b4 jited \n";
        assert_eq!(
            parse_xdp_program(text),
            Some(XdpProgram {
                id: 587,
                name: "lb".into()
            })
        );
        assert_eq!(parse_xdp_program("2: v0: <UP> mtu 1500\n"), None);
    }
}
