//! Connection-table upkeep, on a thread of its own. It walks the connection tables (IPv4,
//! then IPv6) in batches, at most [`SCAN_RATE`] entries a second, resuming where it
//! stopped: it
//! removes entries idle past their timeout and entries of services that are gone, and
//! counts connections per backend (ipvsadm's ActiveConn/InActConn); when a walk has
//! covered the whole table it publishes the counts for the readers and starts again.
//!
//! Its cost is bounded whatever the table's size: a table of up to
//! `SCAN_RATE × ageing_interval_s` entries (1M with the defaults) is walked once per
//! interval; a larger one takes proportionally more intervals per walk, so at 10M
//! entries the counts are up to ten intervals old. Correctness never waits for it: the
//! datapath itself treats an entry idle past its timeout as gone (see lb-ebpf's
//! `conntrack`), and an entry of a removed service re-picks at its next packet (its
//! backend's index is no longer live at that epoch). Removing such entries only frees
//! their room sooner.
//!
//! Nothing waits for the sweeper: control requests, health transitions and scrapes read
//! the last published counts.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_common::{FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, Flow, FlowKey, FlowKey6, coarse_seconds};
use tokio::sync::watch;

use super::controller::Snapshot;
use crate::{
    config::{ConntrackConfig, Protocol, ServiceKey},
    dataplane::{ConnTable, batch::Walk},
    model::runtime::{from_v4_word, from_v6_words},
};

/// Entries the sweeper reads per second, at most.
pub const SCAN_RATE: u64 = 200_000;
/// Entries per batch read.
const CHUNK: usize = 4096;

/// Connection counts of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCount {
    /// TCP flows past their handshake and not closing.
    pub active: u64,
    /// Everything else: TCP opening or closing, UDP flows (ipvsadm's InActConn).
    pub inactive: u64,
}

/// What the last complete walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnCounts {
    /// By backend index (flows of the backend's current incarnation only).
    pub backends: BTreeMap<u32, ConnCount>,
    /// Entries the IPv4 connection table kept.
    pub entries: usize,
    /// Entries the IPv6 connection table kept.
    pub entries6: usize,
}

/// A connection-table key of either family.
pub trait ConnKey: Copy {
    /// Whether it is a key of the IPv6 table.
    const IPV6: bool;
    /// The client's address and port.
    fn client(&self) -> SocketAddr;
    /// The service it belongs to (from its destination).
    fn service(&self) -> ServiceKey;
    fn proto(&self) -> u8;
}

fn protocol(proto: u8) -> Protocol {
    if proto == Protocol::Udp.number() {
        Protocol::Udp
    } else {
        Protocol::Tcp
    }
}

impl ConnKey for FlowKey {
    const IPV6: bool = false;
    fn client(&self) -> SocketAddr {
        SocketAddr::new(from_v4_word(self.src), u16::from_be(self.sport))
    }
    fn service(&self) -> ServiceKey {
        ServiceKey {
            vip: from_v4_word(self.dst),
            port: u16::from_be(self.dport),
            protocol: protocol(self.proto),
        }
    }
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl ConnKey for FlowKey6 {
    const IPV6: bool = true;
    fn client(&self) -> SocketAddr {
        SocketAddr::new(from_v6_words(self.src), u16::from_be(self.sport))
    }
    fn service(&self) -> ServiceKey {
        ServiceKey {
            vip: from_v6_words(self.dst),
            port: u16::from_be(self.dport),
            protocol: protocol(self.proto),
        }
    }
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl ConnCounts {
    pub fn of(&self, index: u32) -> ConnCount {
        self.backends.get(&index).copied().unwrap_or_default()
    }
}

/// Whether a TCP flow is past its handshake and not closing.
fn active(k: &impl ConnKey, f: &Flow) -> bool {
    k.proto() == Protocol::Tcp.number()
        && f.state & FLOW_ESTABLISHED != 0
        && f.state & (FLOW_FIN | FLOW_RST) == 0
}

/// What a walk judges entries by: the running services, their backends' incarnations
/// and the timeouts, taken from a snapshot.
pub struct Judge {
    conntrack: ConntrackConfig,
    services: BTreeSet<ServiceKey>,
    /// Backend index -> the epoch of its current incarnation.
    epochs: BTreeMap<u32, u32>,
}

impl Judge {
    pub fn new(snap: &Snapshot) -> Self {
        Judge {
            conntrack: snap.runtime.conntrack.clone(),
            services: snap.runtime.services().map(|s| s.config.key()).collect(),
            epochs: snap
                .runtime
                .services()
                .flat_map(|s| s.backends.values().map(|b| (b.index, b.epoch)))
                .collect(),
        }
    }

    /// Whether an entry is past its timeout at `now_s` (the datapath's rule: it would
    /// place the flow's next packet afresh).
    pub fn expired(&self, k: &impl ConnKey, f: &Flow, now_s: u32) -> bool {
        let c = &self.conntrack;
        let timeout = if k.proto() == Protocol::Tcp.number() {
            if active(k, f) {
                c.tcp_timeout_s
            } else {
                c.tcp_fin_timeout_s
            }
        } else {
            c.udp_timeout_s
        };
        now_s.saturating_sub(f.last_seen) >= timeout
    }

    /// Whether the entry's service runs.
    pub fn serves(&self, k: &impl ConnKey) -> bool {
        self.services.contains(&k.service())
    }

    /// Whether the entry is pinned to its backend's current incarnation.
    pub fn current(&self, f: &Flow) -> bool {
        self.epochs.get(&f.backend) == Some(&f.epoch)
    }
}

/// A walk's running tally.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Connections by backend incarnation (index, epoch): a walk of a large table spans
    /// changes, and an index may be given to another backend meanwhile.
    by_incarnation: BTreeMap<(u32, u32), ConnCount>,
    /// IPv4 entries kept.
    pub entries: usize,
    /// IPv6 entries kept.
    pub entries6: usize,
    /// Entries removed.
    pub removed: usize,
}

impl Tally {
    /// Judges a batch of entries: those idle past their timeout, or of services that are
    /// gone, are returned (to be removed); the others are counted for their backend when
    /// it is still the incarnation the flow was pinned to. `now_s` is on the datapath's
    /// clock ([`now_seconds`]).
    pub fn add<K: ConnKey>(&mut self, judge: &Judge, now_s: u32, flows: &[(K, Flow)]) -> Vec<K> {
        let mut doomed = Vec::new();
        for (k, f) in flows {
            if judge.expired(k, f, now_s) || !judge.serves(k) {
                doomed.push(*k);
                continue;
            }
            if K::IPV6 {
                self.entries6 += 1;
            } else {
                self.entries += 1;
            }
            if !judge.current(f) {
                continue; // pinned to a removed backend: it re-picks at its next packet
            }
            let n = self.by_incarnation.entry((f.backend, f.epoch)).or_default();
            if active(k, f) {
                n.active += 1;
            } else {
                n.inactive += 1;
            }
        }
        self.removed += doomed.len();
        doomed
    }

    /// The counts to publish: those of the backends' incarnations `judge` knows (the
    /// running state when the walk ends).
    pub fn counts(&self, judge: &Judge) -> ConnCounts {
        ConnCounts {
            backends: self
                .by_incarnation
                .iter()
                .filter(|((index, epoch), _)| judge.epochs.get(index) == Some(epoch))
                .map(|((index, _), n)| (*index, *n))
                .collect(),
            entries: self.entries,
            entries6: self.entries6,
        }
    }
}

/// The service a connection-table key belongs to (from its destination).
pub fn flow_service(k: &impl ConnKey) -> ServiceKey {
    k.service()
}

/// The datapath's clock: `bpf_ktime_get_coarse_ns`, which dates flows, reads
/// CLOCK_MONOTONIC_COARSE.
pub fn monotonic_coarse_ns() -> u64 {
    // SAFETY: clock_gettime writes a timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The datapath's clock in the whole seconds entries are dated with.
pub fn now_seconds() -> u32 {
    coarse_seconds(monotonic_coarse_ns())
}

/// The handle on the sweeper's thread: it stops when every handle is dropped.
#[derive(Clone)]
pub struct Sweeper {
    _alive: mpsc::Sender<()>,
}

impl Sweeper {
    /// Starts the thread: it walks `table` as the latest snapshot says and publishes
    /// counts on `publish` after each complete walk.
    pub fn spawn(
        table: ConnTable,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        publish: watch::Sender<Arc<ConnCounts>>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lb-sweeper".into())
            .spawn(move || run(&table, &snapshots, &publish, &rx))
            .expect("spawning the sweeper thread");
        (Sweeper { _alive: tx }, thread)
    }
}

/// Where a walk over the tables stands: the IPv4 table first, then the IPv6 one.
#[derive(Default)]
struct Pass {
    walk: Walk,
    walk6: Walk,
    /// The IPv4 table is done; the walk is in the IPv6 one.
    in_ipv6: bool,
    tally: Tally,
}

fn run(
    table: &ConnTable,
    snapshots: &watch::Receiver<Arc<Snapshot>>,
    publish: &watch::Sender<Arc<ConnCounts>>,
    rx: &mpsc::Receiver<()>,
) {
    let mut pass = Pass::default();
    loop {
        let every = u64::from(
            snapshots
                .borrow()
                .runtime
                .conntrack
                .ageing_interval_s
                .max(1),
        );
        match rx.recv_timeout(Duration::from_secs(every)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let budget = (SCAN_RATE * every) as usize;
                match step(table, snapshots, &mut pass, budget) {
                    Ok(Some(counts)) => {
                        publish.send_replace(Arc::new(counts));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::warn!("connection-table upkeep: {e:#}");
                        pass = Pass::default();
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Walks on for up to `budget` entries, each batch judged by the latest snapshot;
/// returns the counts when the walk has covered the whole table (the next step starts a
/// new walk).
fn step(
    table: &ConnTable,
    snapshots: &watch::Receiver<Arc<Snapshot>>,
    pass: &mut Pass,
    budget: usize,
) -> anyhow::Result<Option<ConnCounts>> {
    let started = Instant::now();
    let mut read = 0usize;
    let mut snap = snapshots.borrow().clone();
    let mut judge = Judge::new(&snap);
    while read < budget {
        // A change made meanwhile judges the next batches.
        let latest = snapshots.borrow().clone();
        if !Arc::ptr_eq(&latest, &snap) {
            snap = latest;
            judge = Judge::new(&snap);
        }
        if !pass.in_ipv6 {
            match table.walk(&mut pass.walk, CHUNK)? {
                Some(batch) => {
                    read += batch.len();
                    let doomed = pass.tally.add(&judge, now_seconds(), &batch);
                    table.remove_flows(&doomed)?;
                }
                None => pass.in_ipv6 = true,
            }
            continue;
        }
        let Some(batch) = table.walk6(&mut pass.walk6, CHUNK)? else {
            let done = std::mem::take(pass);
            let counts = done.tally.counts(&judge);
            log::debug!(
                "connection table: {} entries, {} aged out (walk done; {read} read in this step, {:?})",
                counts.entries,
                done.tally.removed,
                started.elapsed()
            );
            return Ok(Some(counts));
        };
        read += batch.len();
        let doomed = pass.tally.add(&judge, now_seconds(), &batch);
        table.remove_flows6(&doomed)?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::controller::snapshot_of;

    fn snapshot() -> Snapshot {
        snapshot_of(
            r#"{"conntrack": {"tcp_timeout_s": 900, "tcp_fin_timeout_s": 120, "udp_timeout_s": 300},
            "services": [{"vip": "10.100.0.20", "port": 80, "forwarding": "nat", "table_size": 251,
                "backends": [{"address": "10.1.0.11"}, {"address": "10.1.0.12"}]},
                {"vip": "10.100.0.20", "port": 53, "protocol": "udp", "forwarding": "nat",
                "table_size": 251, "backends": [{"address": "10.1.0.11"}]}]}"#,
        )
    }

    fn ne(a: &str) -> u32 {
        u32::from_ne_bytes(a.parse::<std::net::Ipv4Addr>().unwrap().octets())
    }

    fn key(sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey::new(
            ne("198.51.100.7"),
            ne("10.100.0.20"),
            sport.to_be(),
            dport.to_be(),
            proto,
        )
    }

    #[test]
    fn idle_entries_go_and_the_rest_are_counted_per_backend() {
        let snap = snapshot();
        let web = snap
            .runtime
            .service(&"10.100.0.20:80/tcp".parse().unwrap())
            .unwrap();
        let dns = snap
            .runtime
            .service(&"10.100.0.20:53/udp".parse().unwrap())
            .unwrap();
        let b11 = &web.backends[&"10.1.0.11:80".parse().unwrap()];
        let b12 = &web.backends[&"10.1.0.12:80".parse().unwrap()];
        let d11 = &dns.backends[&"10.1.0.11:53".parse().unwrap()];
        let now = 10_000u32;
        let flow = |b: &crate::model::runtime::BackendState, state: u32, idle_s: u32| Flow {
            backend: b.index,
            epoch: b.epoch,
            state,
            last_seen: now - idle_s,
        };
        let est = FLOW_ESTABLISHED;
        let flows = vec![
            (key(1, 80, 6), flow(b11, est, 899)),            // active, kept
            (key(2, 80, 6), flow(b11, est, 900)),            // idle past 900 s: goes
            (key(3, 80, 6), flow(b12, est | FLOW_FIN, 119)), // closing: inactive
            (key(4, 80, 6), flow(b12, est | FLOW_RST, 120)), // closing, idle: goes
            (key(5, 80, 6), flow(b12, 0, 5)),                // handshake: inactive
            (key(6, 53, 17), flow(d11, 0, 299)),             // UDP: inactive
            (key(7, 53, 17), flow(d11, 0, 300)),             // UDP idle: goes
            (key(8, 81, 6), flow(b11, est, 1)),              // no such service: goes
            (
                key(9, 80, 6),
                Flow {
                    epoch: b11.epoch + 1,
                    ..flow(b11, est, 1)
                },
            ), // old incarnation: kept, not counted
            // Touched by the datapath after the walk read the clock: not idle.
            (
                key(10, 80, 6),
                Flow {
                    last_seen: now + 1,
                    ..flow(b11, est, 0)
                },
            ),
        ];
        let judge = Judge::new(&snap);
        // In two batches, as a walk reads them.
        let mut tally = Tally::default();
        let mut doomed = tally.add(&judge, now, &flows[..4]);
        doomed.extend(tally.add(&judge, now, &flows[4..]));
        let doomed: BTreeSet<u16> = doomed.iter().map(|k| u16::from_be(k.sport)).collect();
        assert_eq!(doomed, BTreeSet::from([2, 4, 7, 8]));
        assert_eq!(tally.removed, 4);
        let counts = tally.counts(&judge);
        assert_eq!(counts.entries, 6);
        assert_eq!(
            counts.of(b11.index),
            ConnCount {
                active: 2,
                inactive: 0
            }
        );
        assert_eq!(
            counts.of(b12.index),
            ConnCount {
                active: 0,
                inactive: 2
            }
        );
        assert_eq!(
            counts.of(d11.index),
            ConnCount {
                active: 0,
                inactive: 1
            }
        );
    }

    #[test]
    fn a_key_names_its_service() {
        assert_eq!(
            flow_service(&key(1, 53, 17)),
            "10.100.0.20:53/udp".parse().unwrap()
        );
        let w = |a: &str| lb_common::ipv6_words(a.parse::<std::net::Ipv6Addr>().unwrap().octets());
        let k6 = FlowKey6::new(
            w("2001:db8:cafe::7"),
            w("2001:db8::20"),
            40000u16.to_be(),
            80u16.to_be(),
            6,
        );
        assert_eq!(flow_service(&k6).to_string(), "[2001:db8::20]:80/tcp");
        assert_eq!(k6.client().to_string(), "[2001:db8:cafe::7]:40000");
    }

    #[test]
    fn ipv6_entries_are_judged_and_counted_apart() {
        let snap = snapshot_of(
            r#"{"services": [{"vip": "2001:db8::20", "port": 80, "forwarding": "nat", "table_size": 251,
                "backends": [{"address": "2001:db8:1::11"}]}]}"#,
        );
        let svc = snap
            .runtime
            .service(&"[2001:db8::20]:80/tcp".parse().unwrap())
            .unwrap();
        let b = &svc.backends[&"[2001:db8:1::11]:80".parse().unwrap()];
        let w = |a: &str| lb_common::ipv6_words(a.parse::<std::net::Ipv6Addr>().unwrap().octets());
        let k = |sport: u16, dport: u16| {
            FlowKey6::new(
                w("2001:db8:cafe::7"),
                w("2001:db8::20"),
                sport.to_be(),
                dport.to_be(),
                6,
            )
        };
        let now = 10_000u32;
        let flow = |idle: u32| Flow {
            backend: b.index,
            epoch: b.epoch,
            state: FLOW_ESTABLISHED,
            last_seen: now - idle,
        };
        let judge = Judge::new(&snap);
        let mut tally = Tally::default();
        let doomed = tally.add(
            &judge,
            now,
            &[
                (k(1, 80), flow(5)),
                (k(2, 80), flow(900)),
                (k(3, 81), flow(5)),
            ],
        );
        assert_eq!(doomed.len(), 2, "idle, and of no service");
        let counts = tally.counts(&judge);
        assert_eq!((counts.entries, counts.entries6), (0, 1));
        assert_eq!(counts.of(b.index).active, 1);
    }
}
