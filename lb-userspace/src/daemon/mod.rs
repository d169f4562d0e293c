//! `lb run`: load and attach the XDP program, apply the configuration, serve the control
//! socket, run the health checks, age the connection table; detach and clean up on
//! SIGINT/SIGTERM.
//!
//! The daemon is a handful of parts that share no lock:
//! - the controller's thread ([`writer`] around [`controller`]): the one writer of the
//!   configuration maps, fed by a channel; it publishes a [`Snapshot`] after each change;
//! - the control socket ([`control`]) and the metrics endpoint ([`metrics`]): reads are
//!   answered from the snapshot and the datapath's counters, changes queued;
//! - the health checks ([`checks`]), the connection-table [`sweeper`] (a thread of its
//!   own), and the periodic [`housekeeping`] (datapath log, rate samples, neighbours).
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tokio::{sync::watch, task::JoinHandle};

pub mod checks;
pub mod control;
pub mod controller;
pub mod http;
pub mod metrics;
pub mod neighbours;
pub mod sweeper;
pub mod views;
pub mod writer;

use self::{
    control::SocketFile,
    controller::{Controller, Snapshot},
    sweeper::{ConnCounts, Sweeper},
    views::{Readings, Samples},
    writer::Writer,
};
use crate::{
    config::{Config, Forwarding},
    dataplane::{
        ConnTable, Counters, Dataplane, Limits,
        object::{self as ebpf, AttachMode},
    },
    net::{NetError, Netlink},
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

/// What the daemon's tasks share: the latest state, the controller's queue, handles of
/// their own on the datapath's counters and connection table. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    counts: watch::Receiver<Arc<ConnCounts>>,
    samples: Arc<Mutex<Samples>>,
    pub writer: Writer,
    pub sweeper: Sweeper,
    pub counters: Arc<Counters>,
    pub conn_table: Arc<ConnTable>,
    pub netlink: Netlink,
    pub config_path: PathBuf,
}

impl Context {
    /// The running state as of the last change.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Connection counts as of the last sweep.
    pub fn conn_counts(&self) -> Arc<ConnCounts> {
        self.counts.borrow().clone()
    }

    /// The latest rate samples.
    pub fn samples(&self) -> Samples {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A receiver of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }
}

/// The name the kernel gives the BPF program `id` ("?" when it is gone). aya 0.14 has
/// no lookup by id: the loaded programs are walked.
fn program_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// Makes `iface` free for lb's program: an `lb` program left attached by an earlier run
/// (through netlink, so it outlived its process) is detached, with a message; any other
/// program is left alone and the start refused.
async fn free_interface(nl: &Netlink, iface: &str) -> Result<()> {
    let link = nl.link(iface).await?;
    let Some(id) = link.xdp.first().map(|x| x.prog_id) else {
        return Ok(());
    };
    for x in &link.xdp {
        let name = program_name(x.prog_id);
        if name != ebpf::PROGRAM {
            bail!(
                "{iface} already runs the XDP program `{name}` (id {}); lb will not replace another program: detach it first (ip link set dev {iface} xdp off)",
                x.prog_id
            );
        }
    }
    let held = || {
        anyhow::anyhow!(
            "{iface} runs lb's XDP program (id {id}) held by a live process: another `lb run` is attached there; stop it first"
        )
    };
    match nl.detach_xdp(link.index).await {
        Ok(_) => {}
        Err(NetError::XdpHeldByLink { .. }) => return Err(held()),
        Err(e) => {
            return Err(e).with_context(|| format!("detaching lb's XDP program from {iface}"));
        }
    }
    if !nl.link_by_index(link.index).await?.xdp.is_empty() {
        return Err(held());
    }
    log::warn!("replaced the XDP program lb (id {id}) left attached to {iface} by an earlier run");
    Ok(())
}

/// Loads and validates a config file, for `lb run`: refuses to start on an invalid one.
pub fn load_config(path: &std::path::Path) -> Result<Config> {
    Config::load(path).context("refusing to start: the configuration is invalid")
}

/// Warns when NAT services cannot forward because IP forwarding is off on an
/// interface lb is attached to.
fn check_forwarding<M: crate::model::apply::Maps>(c: &Controller<M>, ifaces: &[String]) {
    if !c
        .runtime()
        .services()
        .any(|s| s.config.forwarding == Forwarding::Nat)
    {
        return;
    }
    for iface in ifaces {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            log::warn!(
                "NAT services need IP forwarding on {iface}, which is off: NAT packets are dropped (drop_no_route) until `sysctl -w net.ipv4.conf.{iface}.forwarding=1` (or net.ipv4.ip_forward=1)"
            );
        }
    }
}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(opts: RunOptions) -> Result<()> {
    let config = load_config(&opts.config)?;
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
        control::bind(&opts.socket)?
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
    let nl = {
        let _guard = rt.enter();
        Netlink::new()?
    };
    for iface in &opts.ifaces {
        rt.block_on(free_interface(&nl, iface))?;
        dp.attach(iface, opts.mode)?;
        log::info!(
            "attached XDP program {} to {iface} ({:?} mode)",
            ebpf::PROGRAM,
            opts.mode
        );
    }
    let logger = dp.take_logger();
    let counters = Arc::new(dp.counters_handle()?);
    let (sweeper_table, reader_table) = (dp.conn_table()?, dp.conn_table()?);
    let initial = {
        let runtime =
            crate::model::runtime::Runtime::from_config(&config, crate::health::Health::Up)?;
        rt.block_on(neighbours::resolve_waiting(
            &nl,
            controller::dsr_addresses(&runtime).into_iter().collect(),
        ))?
    };
    let path = opts.config.display().to_string();
    let ctl = Controller::new(dp, &config, &path, initial)?;
    check_forwarding(&ctl, &opts.ifaces);
    log::info!(
        "serving {} services; control socket {}",
        ctl.runtime().services().count(),
        opts.socket.display()
    );
    let (publish, snapshots) = watch::channel(Arc::new(ctl.snapshot()));
    let ifaces = opts.ifaces.clone();
    let (writer, controller_thread) =
        writer::spawn(ctl, publish, move |c| check_forwarding(c, &ifaces));
    let (publish_counts, counts) = watch::channel(Arc::new(ConnCounts::default()));
    let (sweeper, sweeper_thread) =
        Sweeper::spawn(sweeper_table, snapshots.clone(), publish_counts);
    let ctx = Context {
        snapshots,
        counts,
        samples: Arc::default(),
        writer,
        sweeper,
        counters,
        conn_table: Arc::new(reader_table),
        netlink: nl,
        config_path: opts.config.clone(),
    };
    rt.block_on(async {
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(control::serve(listener, ctx.clone())),
            tokio::spawn(checks::schedule(ctx.subscribe(), ctx.writer.clone())),
            tokio::spawn(housekeeping(ctx.clone(), logger)),
        ];
        if let Some(listener) = metrics {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tasks.push(tokio::spawn(metrics::serve(listener, ctx.clone())));
        }
        loop {
            tokio::select! {
                _ = int.recv() => { log::info!("SIGINT: stopping"); break; }
                _ = term.recv() => { log::info!("SIGTERM: stopping"); break; }
                _ = hup.recv() => {
                    // SIGHUP reloads the configuration file, as with HAProxy and keepalived.
                    let resp = control::reload(&ctx).await;
                    match resp.error {
                        None => log::info!("SIGHUP: configuration reloaded"),
                        Some(e) => log::error!("SIGHUP: {e}"),
                    }
                }
            }
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })?;
    // Every sender of the controller's queue goes with the tasks and the context: its
    // thread returns the controller, whose dataplane detaches when dropped.
    drop(ctx);
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = sweeper_thread.join();
    match controller_thread.join() {
        // Dropping the controller drops the dataplane: the XDP links close and the
        // program leaves every interface.
        Ok(c) => drop(c),
        Err(_) => log::error!("the controller thread panicked"),
    }
    log::info!("detached from {}; stopped", opts.ifaces.join(", "));
    Ok(())
}

/// Periodic upkeep: the datapath's log (1 s), rate samples (2 s), neighbour refresh (5 s).
async fn housekeeping(ctx: Context, mut logger: Option<crate::dataplane::Logger>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        if let Some(l) = &mut logger {
            l.flush();
        }
        if n.is_multiple_of(2) {
            let c = ctx.clone();
            let sampled = tokio::task::spawn_blocking(move || -> Result<()> {
                let snap = c.snapshot();
                let readings = Readings::read(&c.counters, &snap)?;
                c.samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Instant::now(), readings);
                Ok(())
            })
            .await;
            match sampled {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("housekeeping: {e:#}"),
                Err(e) => log::warn!("housekeeping task: {e}"),
            }
        }
        if n > 0 && n.is_multiple_of(5) {
            let addrs = controller::dsr_addresses(&ctx.snapshot().runtime);
            match neighbours::refresh(&ctx.netlink, addrs).await {
                Ok(found) => ctx.writer.neighbours(found),
                Err(e) => log::warn!("housekeeping: {e:#}"),
            }
        }
        n += 1;
    }
}
