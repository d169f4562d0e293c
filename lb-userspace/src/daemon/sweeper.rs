//! Connection-table upkeep, on a thread of its own: every `ageing_interval_s` it reads the
//! connection table, removes idle entries (and those of services that are gone), removes
//! NAT reverse entries whose connection is gone, and counts connections per backend
//! (ipvsadm's ActiveConn/InActConn), which it publishes for the readers. Services an
//! operator removes have their entries removed on request ([`Sweeper::forget`]).
//!
//! Nothing waits for a sweep: control requests, health transitions and scrapes read the
//! last published counts.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use lb_common::{FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, Flow, FlowKey, NatReverse};
use tokio::sync::watch;

use super::controller::Snapshot;
use crate::{
    config::{ConntrackConfig, Protocol, ServiceKey},
    dataplane::ConnTable,
};

/// Connection counts of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCount {
    /// TCP flows past their handshake and not closing.
    pub active: u64,
    /// Everything else: TCP opening or closing, UDP flows (ipvsadm's InActConn).
    pub inactive: u64,
}

/// What the last sweep found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnCounts {
    /// By backend index (flows of the backend's current incarnation only).
    pub backends: BTreeMap<u32, ConnCount>,
    /// Entries the connection table kept.
    pub entries: usize,
}

impl ConnCounts {
    pub fn of(&self, index: u32) -> ConnCount {
        self.backends.get(&index).copied().unwrap_or_default()
    }
}

/// What one sweep does with the entries it read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub doomed: Vec<FlowKey>,
    pub kept: BTreeSet<FlowKey>,
    pub counts: ConnCounts,
}

/// Whether a TCP flow is past its handshake and not closing.
fn active(k: &FlowKey, f: &Flow) -> bool {
    k.proto == Protocol::Tcp.number()
        && f.state & FLOW_ESTABLISHED != 0
        && f.state & (FLOW_FIN | FLOW_RST) == 0
}

/// Decides a sweep: entries idle past their timeout, or of services that are gone, go;
/// the others are counted for their backend when it is still the incarnation the flow
/// was pinned to. `now_ns` is on the datapath's clock (CLOCK_MONOTONIC_COARSE).
pub fn plan(now_ns: u64, flows: &[(FlowKey, Flow)], snap: &Snapshot) -> Plan {
    let c: &ConntrackConfig = &snap.runtime.conntrack;
    let live: BTreeSet<u32> = snap.runtime.services().map(|s| s.id).collect();
    let epochs: BTreeMap<u32, u32> = snap
        .runtime
        .services()
        .flat_map(|s| s.backends.values().map(|b| (b.index, b.epoch)))
        .collect();
    let mut p = Plan::default();
    for (k, f) in flows {
        let timeout = if k.proto == Protocol::Tcp.number() {
            if active(k, f) {
                c.tcp_timeout_s
            } else {
                c.tcp_fin_timeout_s
            }
        } else {
            c.udp_timeout_s
        };
        let idle_s = now_ns.saturating_sub(f.last_seen) / 1_000_000_000;
        if idle_s >= u64::from(timeout) || !live.contains(&f.service) {
            p.doomed.push(*k);
            continue;
        }
        p.kept.insert(*k);
        if epochs.get(&f.backend) != Some(&f.epoch) {
            continue; // pinned to a removed backend: it re-picks at its next packet
        }
        let n = p.counts.backends.entry(f.backend).or_default();
        if active(k, f) {
            n.active += 1;
        } else {
            n.inactive += 1;
        }
    }
    p.counts.entries = p.kept.len();
    p
}

/// NAT reverse entries whose connection the table no longer keeps.
pub fn orphans(reverse: &[(FlowKey, NatReverse)], kept: &BTreeSet<FlowKey>) -> Vec<FlowKey> {
    reverse
        .iter()
        .filter(|(k, v)| !kept.contains(&FlowKey::new(k.dst, v.vip, k.dport, v.vport, k.proto)))
        .map(|(k, _)| *k)
        .collect()
}

/// The service a connection-table key belongs to (from its destination).
pub fn flow_service(k: &FlowKey) -> ServiceKey {
    ServiceKey {
        vip: Ipv4Addr::from(k.dst.to_ne_bytes()),
        port: u16::from_be(k.dport),
        protocol: if k.proto == Protocol::Udp.number() {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
    }
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

enum Job {
    Forget(Vec<ServiceKey>),
}

/// The handle on the sweeper's thread.
#[derive(Clone)]
pub struct Sweeper {
    tx: mpsc::Sender<Job>,
}

impl Sweeper {
    /// Starts the thread: it sweeps `table` on the interval of the latest snapshot and
    /// publishes counts on `publish`. It stops when every handle is dropped.
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
        (Sweeper { tx }, thread)
    }

    /// Removes the connection-table entries of these services (they are gone).
    pub fn forget(&self, services: Vec<ServiceKey>) {
        if !services.is_empty() {
            let _ = self.tx.send(Job::Forget(services));
        }
    }
}

fn run(
    table: &ConnTable,
    snapshots: &watch::Receiver<Arc<Snapshot>>,
    publish: &watch::Sender<Arc<ConnCounts>>,
    rx: &mpsc::Receiver<Job>,
) {
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
            Ok(Job::Forget(services)) => forget(table, &services),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let snap = snapshots.borrow().clone();
                match sweep(table, &snap) {
                    Ok((counts, removed)) => {
                        if removed > 0 {
                            log::debug!(
                                "connection table: {} entries, {removed} aged out",
                                counts.entries
                            );
                        }
                        publish.send_replace(Arc::new(counts));
                    }
                    Err(e) => log::warn!("housekeeping: {e:#}"),
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One sweep; returns the counts and how many entries went.
fn sweep(table: &ConnTable, snap: &Snapshot) -> anyhow::Result<(ConnCounts, usize)> {
    let flows = table.flows()?;
    let p = plan(monotonic_coarse_ns(), &flows, snap);
    table.remove_flows(&p.doomed)?;
    let gone = orphans(&table.nat_reverse_entries()?, &p.kept);
    table.remove_nat_reverses(&gone)?;
    Ok((p.counts, p.doomed.len() + gone.len()))
}

fn forget(table: &ConnTable, services: &[ServiceKey]) {
    let Ok(flows) = table.flows() else { return };
    let keys: Vec<FlowKey> = flows
        .iter()
        .filter(|(k, _)| services.contains(&flow_service(k)))
        .map(|(k, _)| *k)
        .collect();
    if let Err(e) = table.remove_flows(&keys) {
        log::warn!("removing connection-table entries: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        daemon::controller::{Controller, Neighbours},
        model::apply::tests::CheckedMaps,
    };

    const S: u64 = 1_000_000_000;

    fn snapshot() -> Snapshot {
        let config = Config::parse(
            r#"{"conntrack": {"tcp_timeout_s": 900, "tcp_fin_timeout_s": 120, "udp_timeout_s": 300},
            "services": [{"vip": "10.100.0.20", "port": 80, "forwarding": "nat", "table_size": 251,
                "backends": [{"address": "10.1.0.11"}, {"address": "10.1.0.12"}]},
                {"vip": "10.100.0.20", "port": 53, "protocol": "udp", "forwarding": "nat",
                "table_size": 251, "backends": [{"address": "10.1.0.11"}]}]}"#,
        )
        .unwrap();
        Controller::new(
            CheckedMaps::default(),
            &config,
            "lb.json",
            Neighbours::new(),
        )
        .unwrap()
        .snapshot()
    }

    fn ne(a: &str) -> u32 {
        u32::from_ne_bytes(a.parse::<Ipv4Addr>().unwrap().octets())
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
        let now = 10_000 * S;
        let flow =
            |svc: u32, b: &crate::model::runtime::BackendState, state: u32, idle_s: u64| Flow {
                backend: b.index,
                epoch: b.epoch,
                service: svc,
                state,
                last_seen: now - idle_s * S,
            };
        let est = FLOW_ESTABLISHED;
        let flows = vec![
            (key(1, 80, 6), flow(web.id, b11, est, 899)), // active, kept
            (key(2, 80, 6), flow(web.id, b11, est, 900)), // idle past 900 s: goes
            (key(3, 80, 6), flow(web.id, b12, est | FLOW_FIN, 119)), // closing: inactive
            (key(4, 80, 6), flow(web.id, b12, est | FLOW_RST, 120)), // closing, idle: goes
            (key(5, 80, 6), flow(web.id, b12, 0, 5)),     // handshake: inactive
            (key(6, 53, 17), flow(dns.id, d11, 0, 299)),  // UDP: inactive
            (key(7, 53, 17), flow(dns.id, d11, 0, 300)),  // UDP idle: goes
            (key(8, 80, 6), flow(999, b11, est, 1)),      // service gone: goes
            (
                key(9, 80, 6),
                Flow {
                    epoch: b11.epoch + 1,
                    ..flow(web.id, b11, est, 1)
                },
            ), // old incarnation
        ];
        let p = plan(now, &flows, &snap);
        let doomed: BTreeSet<u16> = p.doomed.iter().map(|k| u16::from_be(k.sport)).collect();
        assert_eq!(doomed, BTreeSet::from([2, 4, 7, 8]));
        assert_eq!(p.counts.entries, 5);
        assert_eq!(
            p.counts.of(b11.index),
            ConnCount {
                active: 1,
                inactive: 0
            }
        );
        assert_eq!(
            p.counts.of(b12.index),
            ConnCount {
                active: 0,
                inactive: 2
            }
        );
        assert_eq!(
            p.counts.of(d11.index),
            ConnCount {
                active: 0,
                inactive: 1
            }
        );
    }

    #[test]
    fn reverse_entries_without_their_connection_are_orphans() {
        let kept = BTreeSet::from([key(1, 80, 6)]);
        let reverse = |sport: u16| {
            (
                // backend -> client direction: src backend, dst client.
                FlowKey::new(
                    ne("10.1.0.11"),
                    ne("198.51.100.7"),
                    8080u16.to_be(),
                    sport.to_be(),
                    6,
                ),
                NatReverse {
                    vip: ne("10.100.0.20"),
                    vport: 80u16.to_be(),
                    ..Default::default()
                },
            )
        };
        let gone = orphans(&[reverse(1), reverse(2)], &kept);
        assert_eq!(gone, vec![reverse(2).0]);
    }

    #[test]
    fn a_key_names_its_service() {
        assert_eq!(
            flow_service(&key(1, 53, 17)),
            "10.100.0.20:53/udp".parse().unwrap()
        );
    }
}
