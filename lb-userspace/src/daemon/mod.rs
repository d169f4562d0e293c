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
//!   own), and the periodic [`housekeeping`] (datapath log, rate samples, neighbours);
//! - with `--announce-table`, the [`announce`] task: the VIPs it can serve, as routes
//!   for BGP.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tokio::{sync::watch, task::JoinHandle};

pub mod announce;
pub mod checks;
pub mod control;
pub mod controller;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod neighbours;
pub mod sweeper;
pub mod views;
pub mod web;
pub mod writer;

use self::{
    control::SocketFile,
    controller::{Controller, Snapshot},
    lifecycle::Lifecycle,
    sweeper::{ConnCounts, Sweeper},
    views::{Readings, Samples},
    writer::Writer,
};
use crate::{
    config::{Config, Forwarding},
    dataplane::{
        Attached, ConnTable, Counters, Dataplane, Limits,
        object::{self as ebpf, AttachMode},
        pins::{self, PinDir},
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
    /// The instance's name (`--name`).
    pub name: String,
    /// The instance's pin directory (`--pin-dir`).
    pub pin_dir: PathBuf,
    /// Take over from a running daemon of the instance (`--takeover`).
    pub takeover: bool,
    /// How long a stopping daemon keeps forwarding before it detaches.
    pub stop_grace: Duration,
    /// The routing table to announce the VIPs in (`--announce-table`).
    pub announce_table: Option<u32>,
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
    /// What `lb status` reports.
    pub lifecycle: Arc<Lifecycle>,
    /// The control socket's listening descriptor, for a hand-over.
    pub listener: Arc<std::os::fd::OwnedFd>,
    /// Ends the daemon (a hand-over).
    pub stop: tokio::sync::mpsc::UnboundedSender<Stop>,
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
    let nat = |v6: bool| {
        c.runtime()
            .services()
            .any(|s| s.config.forwarding == Forwarding::Nat && s.config.vip.is_ipv6() == v6)
    };
    let off = |family: &str, iface: &str| {
        let path = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
        std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0")
    };
    for iface in ifaces {
        if nat(false) && off("ipv4", iface) {
            log::warn!(
                "NAT services need IP forwarding on {iface}, which is off: NAT packets are dropped (drop_no_route) until `sysctl -w net.ipv4.conf.{iface}.forwarding=1` (or net.ipv4.ip_forward=1)"
            );
        }
        if nat(true) && off("ipv6", iface) {
            log::warn!(
                "IPv6 NAT services need IPv6 forwarding on {iface}, which is off: their packets are dropped (drop_no_route) until `sysctl -w net.ipv6.conf.{iface}.forwarding=1` (or net.ipv6.conf.all.forwarding=1)"
            );
        }
    }
}

/// Why the daemon stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM/SIGINT: detach and remove the datapath (after the grace).
    Detach,
    /// A new daemon took over: leave the datapath running.
    Handover,
    /// SIGUSR2: exit, leaving the datapath running (the next `lb run` adopts it).
    Leave,
}

/// The XDP object to run and its SHA-256: the embedded one, or the file `LB_XDP_OBJECT`
/// names (for testing upgrades and hotfixes; it must define lb's maps and a program
/// named `lb`).
fn xdp_object() -> Result<(std::borrow::Cow<'static, [u8]>, [u8; 32])> {
    let object: std::borrow::Cow<'static, [u8]> = match std::env::var_os("LB_XDP_OBJECT") {
        Some(path) => {
            let bytes = std::fs::read(&path).with_context(|| {
                format!("reading the XDP object {} (LB_XDP_OBJECT)", path.display())
            })?;
            log::warn!(
                "running the XDP object {} (LB_XDP_OBJECT) instead of the embedded one",
                std::path::Path::new(&path).display()
            );
            bytes.into()
        }
        None => ebpf::OBJECT.into(),
    };
    let sha = ebpf::sha256(&object);
    Ok((object, sha))
}

/// Makes every interface run the datapath through links pinned in `pins` (adopting
/// those already there, switching them to this object's program when `replace`), and
/// removes pinned links of interfaces no longer listed. Returns what each runs.
async fn attach_all(
    dp: &mut Dataplane,
    nl: &Netlink,
    pins: &PinDir,
    ifaces: &[String],
    mode: AttachMode,
    replace: bool,
) -> Result<Vec<crate::api::Interface>> {
    let mut out = Vec::new();
    for iface in ifaces {
        let link = nl.link(iface).await?;
        let ours = pins.link_path(iface).exists()
            && pins::link_ids(&pins.link_path(iface)).is_ok_and(|l| l.ifindex == link.index);
        if !ours {
            free_interface(nl, iface).await?;
        }
        let how = dp.attach_pinned(iface, link.index, mode, pins, replace)?;
        match how {
            Attached::New { prog_id } => log::info!(
                "attached XDP program {} to {iface} ({mode:?} mode, program id {prog_id})",
                ebpf::PROGRAM
            ),
            Attached::Kept { prog_id } => {
                log::info!("adopted the datapath on {iface}: it keeps running program id {prog_id}")
            }
            Attached::Replaced { from, to } => log::info!(
                "adopted the datapath on {iface}: program id {from} replaced by {to} in one update"
            ),
        }
        out.push(crate::api::Interface {
            name: iface.clone(),
            prog_id: how.prog_id(),
        });
    }
    for old in pins.linked_ifaces()? {
        if !ifaces.contains(&old) {
            let path = pins.link_path(&old);
            let link = aya::programs::links::PinnedLink::from_pin(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            drop(
                link.unpin()
                    .with_context(|| format!("removing {}", path.display()))?,
            );
            log::info!("detached from {old} (no longer given with --iface)");
        }
    }
    Ok(out)
}

/// The neighbours of DSR backends at start: what the kernel knows now; for backends it
/// does not know yet, what a pinned datapath was using, else a wait for ARP.
async fn initial_neighbours(
    nl: &Netlink,
    config: &Config,
    pinned: Option<&crate::model::adopt::Pinned>,
) -> Result<controller::Neighbours> {
    let runtime = crate::model::runtime::Runtime::from_config(config, crate::health::Health::Up)?;
    let addrs = controller::dsr_addresses(&runtime);
    let mut found = neighbours::refresh(nl, addrs).await?;
    if let Some(p) = pinned {
        for (addr, hop) in p.neighbours() {
            if let Some(r @ Err(crate::net::neighbour::Unreachable::Unresolved { .. })) =
                found.get_mut(&addr)
            {
                *r = Ok(hop);
            }
        }
    }
    let missing: Vec<_> = found
        .iter()
        .filter(|(_, r)| {
            matches!(
                r,
                Err(crate::net::neighbour::Unreachable::Unresolved { .. })
            )
        })
        .map(|(a, _)| *a)
        .collect();
    if !missing.is_empty() {
        found.extend(neighbours::resolve_waiting(nl, missing).await?);
    }
    Ok(found)
}

/// Runs the daemon until it stops: SIGINT/SIGTERM (detach, after `--stop-grace-ms`) or
/// a hand-over to a new daemon (the datapath keeps running).
pub fn run(opts: RunOptions) -> Result<()> {
    let config = load_config(&opts.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Signals are caught from here on: one that arrives while the daemon starts (the
    // neighbour lookups can take a second) waits for the start to finish, then stops or
    // reloads it properly instead of killing it half-attached.
    let (mut int, mut term, mut hup, mut usr2) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
            signal(SignalKind::user_defined2())?,
        )
    };
    // The control socket first: taken over from the daemon being replaced, or bound
    // (refusing when another lb serves it) before touching any interface.
    let (listener, replaced) = match opts
        .takeover
        .then(|| lifecycle::take_over(&opts.socket))
        .transpose()?
        .flatten()
    {
        Some((listener, pid)) => {
            log::info!("taking over from lb run pid {pid}");
            (listener, Some(pid))
        }
        None => (control::bind(&opts.socket)?, None),
    };
    let socket_file = SocketFile(opts.socket.clone());
    listener.set_nonblocking(true)?;
    let listener_fd = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::UnixListener::from_std(listener)?
    };
    // The metrics address too: a wrong one refuses the start instead of running blind.
    let metrics = match opts.metrics_addr {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the metrics address {addr} (--metrics-addr)"))?,
        ),
        None => None,
    };
    if let Some(pid) = replaced {
        lifecycle::wait_for_exit(pid, Duration::from_secs(30))?;
    }
    let pins = PinDir::open(&opts.pin_dir, replaced.map(|_| Duration::from_secs(10)))?;
    let found = pins.found()?;
    let fresh = found == pins::Found::Empty;
    let started = start(&rt, &opts, &config, &pins, found);
    let (ctl, lifecycle_state, logger, counters, tables, nl) = match started {
        Ok(s) => s,
        Err(e) => {
            // A datapath this start created goes again; one it adopted keeps running.
            if fresh && let Err(e2) = pins.remove() {
                log::warn!("removing the half-made datapath: {e2:#}");
            }
            return Err(e);
        }
    };
    let stop = serve(
        &rt,
        ctl,
        lifecycle_state,
        logger,
        counters,
        tables,
        nl,
        listener,
        listener_fd,
        metrics,
        &opts,
        (&mut int, &mut term, &mut hup, &mut usr2),
    )?;
    match stop {
        Stop::Detach => {
            pins.remove().context("removing the datapath's pins")?;
            log::info!("detached from {}; stopped", opts.ifaces.join(", "));
        }
        Stop::Handover => {
            // The new daemon serves the socket now: its path stays.
            std::mem::forget(socket_file);
            drop(pins);
            log::info!("handed over; stopped (the datapath keeps running)");
        }
        Stop::Leave => {
            drop(pins);
            log::info!(
                "stopped, leaving the datapath running in {} (the next lb run adopts it; `lb detach` removes it)",
                opts.pin_dir.display()
            );
        }
    }
    Ok(())
}

type Started = (
    Controller<Dataplane>,
    Arc<Lifecycle>,
    Option<crate::dataplane::Logger>,
    Arc<Counters>,
    (ConnTable, ConnTable),
    Netlink,
);

/// Loads (or adopts) the datapath, attaches it and applies the configuration.
fn start(
    rt: &tokio::runtime::Runtime,
    opts: &RunOptions,
    config: &Config,
    pins: &PinDir,
    found: pins::Found,
) -> Result<Started> {
    let (object, sha) = xdp_object()?;
    let mut dp = Dataplane::load_pinned(
        &object,
        Limits {
            conntrack_entries: config.conntrack.max_entries,
            conntrack6_entries: config.conntrack.ipv6_entries(),
        },
        pins,
    )?;
    let nl = {
        let _guard = rt.enter();
        Netlink::new()?
    };
    let replace = match found {
        pins::Found::Empty => false,
        pins::Found::Datapath(meta) => meta.object_sha256 != sha,
    };
    let lifecycle = Arc::new(Lifecycle::new(&opts.name, &opts.pin_dir));
    let interfaces = rt.block_on(attach_all(
        &mut dp,
        &nl,
        pins,
        &opts.ifaces,
        opts.mode,
        replace,
    ))?;
    pins.write_meta(sha)?;
    lifecycle.attached(interfaces);
    let logger = dp.take_logger();
    let counters = Arc::new(dp.counters_handle()?);
    let tables = (dp.conn_table()?, dp.conn_table()?);
    let pinned = match found {
        pins::Found::Datapath(_) => Some(dp.adopt()?),
        pins::Found::Empty => None,
    };
    let neighbours = rt.block_on(initial_neighbours(&nl, config, pinned.as_ref()))?;
    let path = opts.config.display().to_string();
    let ctl = match &pinned {
        Some(p) => Controller::adopt(dp, config, &path, neighbours, p)?,
        None => Controller::new(dp, config, &path, neighbours)?,
    };
    if pinned.is_some() {
        log::info!("adopted the datapath pinned in {}", pins.path().display());
    }
    check_forwarding(&ctl, &opts.ifaces);
    lifecycle.applied();
    log::info!(
        "serving {} services; control socket {}",
        ctl.runtime().services().count(),
        opts.socket.display()
    );
    Ok((ctl, lifecycle, logger, counters, tables, nl))
}

type Signals<'a> = (
    &'a mut tokio::signal::unix::Signal,
    &'a mut tokio::signal::unix::Signal,
    &'a mut tokio::signal::unix::Signal,
    &'a mut tokio::signal::unix::Signal,
);

/// Serves until a stop: the controller's thread, the sweeper, the control socket, the
/// health checks, housekeeping and metrics. Returns once everything has ended and the
/// controller (with the dataplane) is dropped.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts `start` made, handed over once"
)]
fn serve(
    rt: &tokio::runtime::Runtime,
    ctl: Controller<Dataplane>,
    lifecycle: Arc<Lifecycle>,
    logger: Option<crate::dataplane::Logger>,
    counters: Arc<Counters>,
    (sweeper_table, reader_table): (ConnTable, ConnTable),
    nl: Netlink,
    listener: tokio::net::UnixListener,
    listener_fd: std::os::fd::OwnedFd,
    metrics: Option<std::net::TcpListener>,
    opts: &RunOptions,
    (int, term, hup, usr2): Signals<'_>,
) -> Result<Stop> {
    let (publish, snapshots) = watch::channel(Arc::new(ctl.snapshot()));
    let ifaces = opts.ifaces.clone();
    let (writer, controller_thread) =
        writer::spawn(ctl, publish, move |c| check_forwarding(c, &ifaces));
    let (publish_counts, counts) = watch::channel(Arc::new(ConnCounts::default()));
    let (sweeper, sweeper_thread) =
        Sweeper::spawn(sweeper_table, snapshots.clone(), publish_counts);
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::unbounded_channel();
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
        lifecycle: lifecycle.clone(),
        listener: Arc::new(listener_fd),
        stop: stop_tx,
    };
    let grace = opts.stop_grace;
    let announcer = opts
        .announce_table
        .map(|table| announce::Announcer::new(ctx.netlink.clone(), table));
    let stop = rt.block_on(async {
        let mut announcing = announcer
            .clone()
            .map(|a| tokio::spawn(announce::run(ctx.clone(), a)));
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(control::serve(listener, ctx.clone())),
            tokio::spawn(checks::schedule(ctx.subscribe(), ctx.writer.clone())),
            tokio::spawn(housekeeping(ctx.clone(), logger)),
        ];
        if let Some(listener) = metrics {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tasks.push(tokio::spawn(web::serve(listener, ctx.clone())));
        }
        let stop = loop {
            tokio::select! {
                _ = int.recv() => { log::info!("SIGINT: stopping"); break Stop::Detach; }
                _ = term.recv() => { log::info!("SIGTERM: stopping"); break Stop::Detach; }
                Some(stop) = stop_rx.recv() => break stop,
                _ = usr2.recv() => {
                    log::info!("SIGUSR2: stopping, leaving the datapath running");
                    lifecycle.stopping();
                    break Stop::Leave;
                }
                _ = hup.recv() => {
                    // SIGHUP reloads the configuration file, as with HAProxy and keepalived.
                    let resp = control::reload(&ctx).await;
                    match resp.error {
                        None => log::info!("SIGHUP: configuration reloaded"),
                        Some(e) => log::error!("SIGHUP: {e}"),
                    }
                }
            }
        };
        if stop == Stop::Detach {
            // Not serving from now on (`lb status` says so), but forwarding on for the
            // grace, so a peer can take over first; a second signal ends it early.
            lifecycle.stopping();
            // BGP peers stop sending first: the VIPs are withdrawn before the grace.
            if let (Some(task), Some(a)) = (announcing.take(), &announcer) {
                a.stop(task).await;
            }
            if !grace.is_zero() {
                log::info!(
                    "forwarding for {} ms more before detaching",
                    grace.as_millis()
                );
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {}
                    _ = int.recv() => log::info!("SIGINT: detaching now"),
                    _ = term.recv() => log::info!("SIGTERM: detaching now"),
                }
            }
        }
        // SIGUSR2 and a hand-over leave announced routes for the next daemon.
        tasks.extend(announcing);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(stop)
    })?;
    // Every sender of the controller's queue goes with the tasks and the context: its
    // thread returns the controller, dropped with its dataplane (the pins keep the
    // datapath; `run` removes them or not).
    drop(ctx);
    let _ = sweeper_thread.join();
    match controller_thread.join() {
        Ok(c) => drop(c),
        Err(_) => log::error!("the controller thread panicked"),
    }
    Ok(stop)
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
