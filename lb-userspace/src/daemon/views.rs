//! What the readers answer, built from a [`Snapshot`] and readings of the datapath's
//! counters and connection table (pure: the readings are taken by the caller).
//!
//! - [`list`]: `lb service list`; [`stats`]: `lb stats`; [`conns`]: `lb conns`;
//! - [`metrics`]: the Prometheus endpoint's sample;
//! - [`Readings`] and [`Samples`]: the counters as of one moment, and the two latest
//!   samples rates are computed from.
use std::{collections::BTreeMap, net::SocketAddr, time::Instant};

use anyhow::Result;
use lb_common::{Counter, FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, Flow, FlowKey, TrafficStats};

use super::{
    controller::Snapshot,
    metrics,
    sweeper::{ConnCount, ConnCounts, ConnKey, Judge, flow_service},
};
use crate::{
    api::{
        BackendEntry, BackendStats, BackendSummary, ConnEntry, ConnState, Conns, Neighbour, Rate,
        ServiceEntry, ServiceList, ServiceSettings, ServiceStats, Stats, Traffic,
    },
    config::{AdminState, BackendRef, Forwarding, Protocol, ServiceKey},
    dataplane::Counters,
    health::{Health, HealthSnapshot},
    model::runtime::{BackendState, ServiceState},
    net::neighbour::format_mac,
};

/// One backend as every view shows it.
struct Row<'a> {
    addr: SocketAddr,
    backend: &'a BackendState,
    health: Option<HealthSnapshot>,
    in_rotation: bool,
    conns: ConnCount,
}

impl Row<'_> {
    fn summary(&self) -> BackendSummary {
        BackendSummary {
            backend: self.addr,
            weight: self.backend.config.weight,
            state: self.backend.config.state,
            health: self.health.clone(),
            active_conns: self.conns.active,
            inactive_conns: self.conns.inactive,
        }
    }
}

/// Every service of the snapshot with the rows of its backends, in order.
fn services<'a>(
    snap: &'a Snapshot,
    counts: &'a ConnCounts,
) -> impl Iterator<Item = (&'a ServiceState, Vec<Row<'a>>)> {
    snap.runtime.services().map(move |s| {
        let key = s.config.key();
        let rotation = snap.rotation(&key);
        let rows = s
            .backends
            .iter()
            .map(|(addr, b)| Row {
                addr: *addr,
                backend: b,
                health: snap.health.get(&(key, *addr)).cloned(),
                in_rotation: rotation.contains(&b.index),
                conns: counts.of(b.index),
            })
            .collect();
        (s, rows)
    })
}

/// `lb service list`.
pub fn list(snap: &Snapshot, counts: &ConnCounts) -> ServiceList {
    let services = services(snap, counts)
        .map(|(s, rows)| {
            let dsr = s.config.forwarding == Forwarding::Dsr;
            let backends = rows
                .into_iter()
                .map(|r| BackendEntry {
                    backup: r.backend.config.backup,
                    in_rotation: r.in_rotation,
                    summary: r.summary(),
                    neighbour: dsr.then(|| match snap.neighbours.get(&r.backend.config.address) {
                        Some(Ok(nb)) => Neighbour::Mac {
                            mac: format_mac(&nb.mac),
                        },
                        Some(Err(why)) => Neighbour::Problem {
                            problem: why.to_string(),
                        },
                        None => Neighbour::Problem {
                            problem: "not looked up yet".into(),
                        },
                    }),
                })
                .collect();
            let c = &s.config;
            ServiceEntry {
                service: c.key(),
                config: ServiceSettings {
                    vip: c.vip,
                    port: c.port,
                    protocol: c.protocol,
                    forwarding: c.forwarding,
                    scheduler: c.scheduler,
                    table_size: c.table_size,
                    persistence: c.persistence,
                    health_check: c.effective_health_check(),
                },
                backends,
            }
        })
        .collect();
    ServiceList { services }
}

/// The datapath's counters as of one moment, for the services of a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Readings {
    /// In [`Counter::ALL`] order.
    pub counters: Vec<u64>,
    /// By service id.
    pub services: BTreeMap<u32, TrafficStats>,
    /// By backend index.
    pub backends: BTreeMap<u32, TrafficStats>,
}

impl Readings {
    /// Reads every counter the snapshot's services and backends need.
    pub fn read(counters: &Counters, snap: &Snapshot) -> Result<Self> {
        let mut r = Readings {
            counters: counters.counters()?,
            ..Default::default()
        };
        for s in snap.runtime.services() {
            r.services.insert(s.id, counters.service_stats(s.id)?);
            for b in s.backends.values() {
                r.backends.insert(b.index, counters.backend_stats(b.index)?);
            }
        }
        Ok(r)
    }

    fn service(&self, id: u32) -> TrafficStats {
        self.services.get(&id).copied().unwrap_or_default()
    }

    fn backend(&self, index: u32) -> TrafficStats {
        self.backends.get(&index).copied().unwrap_or_default()
    }
}

/// The two latest samples of the counters (older, newer), for rates.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    older: Option<(Instant, Readings)>,
    newer: Option<(Instant, Readings)>,
}

impl Samples {
    /// Adds a sample taken at `at`.
    pub fn push(&mut self, at: Instant, readings: Readings) {
        self.older = self.newer.take();
        self.newer = Some((at, readings));
    }

    /// The window between the two samples, and the samples; `None` before two.
    fn window(&self) -> Option<(f64, &Readings, &Readings)> {
        let ((a, old), (b, new)) = (self.older.as_ref()?, self.newer.as_ref()?);
        (b > a).then(|| ((*b - *a).as_secs_f64(), old, new))
    }
}

fn per_s(dt: f64, old: Option<&TrafficStats>, new: Option<&TrafficStats>) -> Rate {
    match (old, new) {
        (Some(o), Some(n)) if dt > 0.0 => {
            let r = |n: u64, o: u64| n.saturating_sub(o) as f64 / dt;
            Rate {
                conns_per_s: r(n.new_flows, o.new_flows),
                packets_per_s: r(n.packets, o.packets),
                packets_out_per_s: r(n.packets_out, o.packets_out),
                bytes_per_s: r(n.bytes, o.bytes),
                bytes_out_per_s: r(n.bytes_out, o.bytes_out),
            }
        }
        _ => Rate::default(),
    }
}

/// `lb stats` (with `samples`: `lb stats --rate`).
pub fn stats(
    snap: &Snapshot,
    counts: &ConnCounts,
    now: &Readings,
    samples: Option<&Samples>,
) -> Stats {
    let counters = Counter::ALL
        .iter()
        .zip(&now.counters)
        .map(|(c, v)| (c.name().to_string(), *v))
        .collect();
    let window = samples.map(|s| s.window());
    let rate = |old: Option<&TrafficStats>, new: Option<&TrafficStats>| {
        window.map(|w| match w {
            Some((dt, ..)) => per_s(dt, old, new),
            None => Rate::default(),
        })
    };
    let (old, new) = match window.flatten() {
        Some((_, o, n)) => (Some(o), Some(n)),
        None => (None, None),
    };
    let services = services(snap, counts)
        .map(|(s, rows)| {
            let backends = rows
                .into_iter()
                .map(|r| BackendStats {
                    summary: r.summary(),
                    traffic: Traffic::from(&now.backend(r.backend.index)),
                    rate: rate(
                        old.and_then(|o| o.backends.get(&r.backend.index)),
                        new.and_then(|n| n.backends.get(&r.backend.index)),
                    ),
                })
                .collect();
            ServiceStats {
                service: s.config.key(),
                traffic: Traffic::from(&now.service(s.id)),
                backends,
                rate: rate(
                    old.and_then(|o| o.services.get(&s.id)),
                    new.and_then(|n| n.services.get(&s.id)),
                ),
            }
        })
        .collect();
    let (rate_window_s, counters_per_s) = match window {
        None => (None, None),
        Some(w) => {
            let dt = w.map_or(0.0, |(dt, ..)| dt);
            let per_s = Counter::ALL
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let o = old.and_then(|o| o.counters.get(i)).copied().unwrap_or(0);
                    let n = new.and_then(|n| n.counters.get(i)).copied().unwrap_or(0);
                    let v = if dt > 0.0 {
                        n.saturating_sub(o) as f64 / dt
                    } else {
                        0.0
                    };
                    (c.name().to_string(), v)
                })
                .collect();
            (Some(dt), Some(per_s))
        }
    };
    Stats {
        counters,
        services,
        rate_window_s,
        counters_per_s,
    }
}

/// Which connections `lb conns` lists.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnFilter {
    pub service: Option<ServiceKey>,
    pub backend: Option<BackendRef>,
    pub limit: usize,
}

fn conn_state(k: &impl ConnKey, f: &Flow) -> ConnState {
    if k.proto() == Protocol::Udp.number() {
        ConnState::Udp
    } else if f.state & FLOW_RST != 0 {
        ConnState::Closed
    } else if f.state & FLOW_FIN != 0 {
        ConnState::FinWait
    } else if f.state & FLOW_ESTABLISHED != 0 {
        ConnState::Established
    } else {
        ConnState::Syn
    }
}

/// `lb conns`, built batch by batch as the connection table is walked: the entries
/// that belong to a running service, are not past their timeout (the datapath treats
/// those as gone) and pass the filter.
pub struct ConnsView {
    judge: Judge,
    now_s: u32,
    filter: ConnFilter,
    /// index -> (epoch, backend); a flow whose epoch differs belongs to a backend that
    /// was removed (the index may already serve another one).
    by_index: BTreeMap<u32, (u32, SocketAddr)>,
    rows: Vec<ConnEntry>,
    total: usize,
}

impl ConnsView {
    /// `now_s` is the datapath's clock in seconds (`sweeper::now_seconds`).
    pub fn new(snap: &Snapshot, now_s: u32, filter: ConnFilter) -> Self {
        ConnsView {
            judge: Judge::new(snap),
            now_s,
            filter,
            by_index: snap
                .runtime
                .services()
                .flat_map(|s| s.backends.iter().map(|(a, b)| (b.index, (b.epoch, *a))))
                .collect(),
            rows: Vec::new(),
            total: 0,
        }
    }

    /// Adds a batch of entries of either table.
    pub fn add<K: ConnKey>(&mut self, flows: &[(K, Flow)]) {
        for (k, f) in flows {
            let svc = flow_service(k);
            if !self.judge.serves(k) || self.judge.expired(k, f, self.now_s) {
                continue;
            }
            let be = match self.by_index.get(&f.backend) {
                Some((epoch, be)) if *epoch == f.epoch => Some(*be),
                _ => None,
            };
            if self.filter.service.is_some_and(|s| s != svc) {
                continue;
            }
            if let Some(b) = self.filter.backend
                && !be
                    .is_some_and(|be| b.address == be.ip() && b.port.is_none_or(|p| p == be.port()))
            {
                continue;
            }
            self.total += 1;
            if self.rows.len() >= self.filter.limit {
                continue;
            }
            self.rows.push(ConnEntry {
                protocol: svc.protocol,
                client: k.client(),
                service: svc,
                backend: be,
                state: conn_state(k, f),
                idle_s: u64::from(self.now_s.saturating_sub(f.last_seen)),
            });
        }
    }

    pub fn finish(self) -> Conns {
        Conns {
            truncated: self.total > self.rows.len(),
            conns: self.rows,
            total: self.total,
        }
    }
}

/// `lb conns` over entries read at once (see [`ConnsView`]).
pub fn conns(snap: &Snapshot, flows: &[(FlowKey, Flow)], now_s: u32, filter: ConnFilter) -> Conns {
    let mut view = ConnsView::new(snap, now_s, filter);
    view.add(flows);
    view.finish()
}

/// Everything the metrics endpoint exports.
pub fn metrics(snap: &Snapshot, counts: &ConnCounts, now: &Readings) -> metrics::Sample {
    let services = services(snap, counts)
        .map(|(s, rows)| {
            let key = s.config.key();
            metrics::ServiceSample {
                vip: key.vip.to_string(),
                port: key.port,
                proto: key.protocol.as_str(),
                traffic: now.service(s.id),
                backends: rows
                    .into_iter()
                    .map(|r| metrics::BackendSample {
                        backend: r.addr.to_string(),
                        traffic: now.backend(r.backend.index),
                        up: r.backend.health == Health::Up,
                        weight: r.backend.config.weight,
                        admin_state: match r.backend.config.state {
                            AdminState::Ready => 0,
                            AdminState::Drain => 1,
                            AdminState::Maint => 2,
                        },
                        in_rotation: r.in_rotation,
                        active: r.conns.active,
                        inactive: r.conns.inactive,
                    })
                    .collect(),
            }
        })
        .collect();
    metrics::Sample {
        counters: Counter::ALL
            .iter()
            .copied()
            .zip(now.counters.iter().copied())
            .collect(),
        services,
        conntrack_entries: counts.entries as u64,
        conntrack_max_entries: u64::from(snap.runtime.conntrack.max_entries),
        conntrack_ipv6_entries: counts.entries6 as u64,
        conntrack_ipv6_max_entries: u64::from(snap.runtime.conntrack.ipv6_entries()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        daemon::{
            controller::{Controller, Neighbours},
            sweeper::ConnCount,
        },
        model::{apply::tests::CheckedMaps, runtime::Neighbour as Hop},
        net::neighbour::Unreachable,
    };

    fn snapshot() -> Snapshot {
        let config = Config::parse(
            r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "health_check": {"kind": "none"},
             "backends": [{"address": "10.0.0.11"}, {"address": "10.0.0.12", "backup": true},
                          {"address": "10.0.0.13"}]},
            {"vip": "10.100.0.20", "port": 53, "protocol": "udp", "forwarding": "nat",
             "table_size": 251, "backends": [{"address": "10.1.0.11", "state": "drain"}]}]}"#,
        )
        .unwrap();
        let mut n = Neighbours::new();
        for last in [11u8, 12] {
            n.insert(
                std::net::IpAddr::from([10, 0, 0, last]),
                Ok(Hop {
                    ifindex: 2,
                    mac: [2, 0, 0, 0, 0, last],
                    src_mac: [2, 0, 0, 0, 0, 1],
                }),
            );
        }
        n.insert(
            std::net::IpAddr::from([10, 0, 0, 13]),
            Err(Unreachable::Unresolved {
                iface: "eth0".into(),
            }),
        );
        Controller::new(CheckedMaps::default(), &config, "lb.json", n)
            .unwrap()
            .snapshot()
    }

    fn index(snap: &Snapshot, service: &str, backend: &str) -> u32 {
        snap.runtime
            .service(&service.parse().unwrap())
            .unwrap()
            .backends[&backend.parse().unwrap()]
            .index
    }

    #[test]
    fn the_list_shows_rotation_neighbours_and_connections() {
        let snap = snapshot();
        let mut counts = ConnCounts::default();
        counts.backends.insert(
            index(&snap, "10.100.0.10:80/tcp", "10.0.0.11:80"),
            ConnCount {
                active: 3,
                inactive: 1,
            },
        );
        let l = list(&snap, &counts);
        assert_eq!(l.services.len(), 2);
        let web = &l.services[0];
        assert_eq!(web.service.to_string(), "10.100.0.10:80/tcp");
        assert_eq!(web.config.health_check.kind, crate::config::CheckKind::None);
        let rows: Vec<(String, bool, u64, Option<Neighbour>)> = web
            .backends
            .iter()
            .map(|b| {
                (
                    b.summary.backend.to_string(),
                    b.in_rotation,
                    b.summary.active_conns,
                    b.neighbour.clone(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    "10.0.0.11:80".into(),
                    true,
                    3,
                    Some(Neighbour::Mac {
                        mac: "02:00:00:00:00:0b".into()
                    })
                ),
                (
                    "10.0.0.12:80".into(),
                    false,
                    0,
                    Some(Neighbour::Mac {
                        mac: "02:00:00:00:00:0c".into()
                    })
                ),
                (
                    "10.0.0.13:80".into(),
                    false,
                    0,
                    Some(Neighbour::Problem {
                        problem: "its MAC on eth0 is not known yet".into()
                    })
                ),
            ],
            "the backup stays out while a primary is usable; no MAC, no slot"
        );
        let udp = &l.services[1];
        assert_eq!(udp.backends[0].neighbour, None, "NAT backends need no MAC");
        assert!(!udp.backends[0].in_rotation, "drained");
    }

    #[test]
    fn rates_need_two_samples_and_count_per_second() {
        let snap = snapshot();
        let id = snap.runtime.services().next().unwrap().id;
        let reading = |packets: u64, tx: u64| Readings {
            counters: Counter::ALL
                .iter()
                .map(|c| if *c == Counter::Tx { tx } else { 0 })
                .collect(),
            services: BTreeMap::from([(
                id,
                TrafficStats {
                    packets,
                    ..Default::default()
                },
            )]),
            backends: BTreeMap::new(),
        };
        let mut samples = Samples::default();
        let t0 = Instant::now();
        samples.push(t0, reading(100, 10));
        let s = stats(
            &snap,
            &ConnCounts::default(),
            &reading(100, 10),
            Some(&samples),
        );
        assert_eq!(s.rate_window_s, Some(0.0), "one sample: no window yet");
        assert_eq!(s.services[0].rate, Some(Rate::default()));
        samples.push(t0 + std::time::Duration::from_secs(2), reading(300, 50));
        let s = stats(
            &snap,
            &ConnCounts::default(),
            &reading(400, 60),
            Some(&samples),
        );
        assert_eq!(s.rate_window_s, Some(2.0));
        assert_eq!(s.services[0].rate.unwrap().packets_per_s, 100.0);
        assert_eq!(s.counters_per_s.as_ref().unwrap()["tx"], 20.0);
        assert_eq!(s.services[0].traffic.packets, 400, "totals are read now");
        assert_eq!(s.counters["tx"], 60);
        let plain = stats(&snap, &ConnCounts::default(), &reading(400, 60), None);
        assert_eq!((plain.rate_window_s, plain.services[0].rate), (None, None));
    }

    #[test]
    fn conns_are_filtered_limited_and_name_removed_backends() {
        let snap = snapshot();
        let web = snap
            .runtime
            .service(&"10.100.0.10:80/tcp".parse().unwrap())
            .unwrap();
        let b11 = &web.backends[&"10.0.0.11:80".parse().unwrap()];
        let ne = |a: [u8; 4]| u32::from_ne_bytes(a);
        let flow = |sport: u16, epoch: u32, state: u32| {
            (
                FlowKey::new(
                    ne([198, 51, 100, 7]),
                    ne([10, 100, 0, 10]),
                    sport.to_be(),
                    80u16.to_be(),
                    6,
                ),
                Flow {
                    backend: b11.index,
                    epoch,
                    state,
                    last_seen: 9_997,
                },
            )
        };
        let flows = vec![
            flow(1000, b11.epoch, FLOW_ESTABLISHED),
            flow(1001, b11.epoch, FLOW_ESTABLISHED | FLOW_FIN),
            flow(1002, b11.epoch + 1, 0),
        ];
        // Past its timeout (the datapath treats it as gone), and of no running service.
        let mut expired = flow(1003, b11.epoch, FLOW_ESTABLISHED);
        expired.1.last_seen = 10_000 - snap.runtime.conntrack.tcp_timeout_s;
        let mut elsewhere = flow(1004, b11.epoch, FLOW_ESTABLISHED);
        elsewhere.0.dport = 81u16.to_be();
        let all = conns(
            &snap,
            &[flows.clone(), vec![expired, elsewhere]].concat(),
            10_000,
            ConnFilter {
                limit: 100,
                ..Default::default()
            },
        );
        assert_eq!(all.total, 3);
        assert_eq!(
            all.conns
                .iter()
                .map(|c| (c.state, c.backend.is_some(), c.idle_s))
                .collect::<Vec<_>>(),
            vec![
                (ConnState::Established, true, 3),
                (ConnState::FinWait, true, 3),
                (ConnState::Syn, false, 3)
            ]
        );
        let by_backend = conns(
            &snap,
            &flows,
            10_000,
            ConnFilter {
                backend: Some("10.0.0.11".parse().unwrap()),
                limit: 1,
                ..Default::default()
            },
        );
        assert_eq!(
            (
                by_backend.total,
                by_backend.conns.len(),
                by_backend.truncated
            ),
            (2, 1, true)
        );
        let other = conns(
            &snap,
            &flows,
            10_000,
            ConnFilter {
                service: Some("10.100.0.20:53/udp".parse().unwrap()),
                limit: 100,
                ..Default::default()
            },
        );
        assert_eq!(other.total, 0);
    }

    /// IPv6 services in the metrics (VIP label as written, backend label bracketed) and
    /// in `lb conns` (the IPv6 table's entries, bracketed addresses).
    #[test]
    fn ipv6_services_show_bracketed_socket_addresses() {
        let snap = crate::daemon::controller::snapshot_of(
            r#"{"services": [{"vip": "2001:db8::10", "port": 80, "forwarding": "nat",
             "table_size": 251, "health_check": {"kind": "none"},
             "backends": [{"address": "2001:db8:1::11", "port": 8080}]}]}"#,
        );
        let text = metrics::render(&metrics(
            &snap,
            &ConnCounts::default(),
            &Readings::default(),
        ));
        assert!(
            text.contains("lb_backend_up{vip=\"2001:db8::10\",port=\"80\",proto=\"tcp\",backend=\"[2001:db8:1::11]:8080\"} 1\n"),
            "{text}"
        );
        let index = index(&snap, "[2001:db8::10]:80/tcp", "[2001:db8:1::11]:8080");
        let words =
            |a: &str| lb_common::ipv6_words(a.parse::<std::net::Ipv6Addr>().unwrap().octets());
        let flow = (
            lb_common::FlowKey6::new(
                words("2001:db8:cafe::7"),
                words("2001:db8::10"),
                40000u16.to_be(),
                80u16.to_be(),
                6,
            ),
            Flow {
                backend: index,
                epoch: snap
                    .runtime
                    .services()
                    .next()
                    .unwrap()
                    .backends
                    .values()
                    .next()
                    .unwrap()
                    .epoch,
                state: FLOW_ESTABLISHED,
                last_seen: 9_997,
            },
        );
        let mut view = ConnsView::new(
            &snap,
            10_000,
            ConnFilter {
                limit: 100,
                ..Default::default()
            },
        );
        view.add(&[flow]);
        let c = view.finish();
        assert_eq!(c.total, 1);
        let row = serde_json::to_value(&c.conns[0]).unwrap();
        assert_eq!(row["client"], "[2001:db8:cafe::7]:40000");
        assert_eq!(row["service"], "[2001:db8::10]:80/tcp");
        assert_eq!(row["backend"], "[2001:db8:1::11]:8080");
    }
}
