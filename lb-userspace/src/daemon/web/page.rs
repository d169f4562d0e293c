//! The live stats page, in the spirit of HAProxy's `stats uri`: `GET /` on the
//! `--metrics-addr` listener serves one self-contained HTML page (`stats.html`: inline CSS
//! and JS, no external asset), which polls `GET /stats.json` and redraws itself. Both are
//! read-only: the page has no form, and the server answers GET and HEAD only.
//!
//! `/stats.json` is [`PageData`]: the same typed views `lb service list` and
//! `lb stats --rate` answer (one snapshot, one reading of the counters), joined per
//! backend, with the daemon's status, the build and every datapath counter with its help.
use serde::Serialize;

use lb_common::Counter;

use crate::{
    api::{BackendStats, Neighbour, Rate, ServiceList, ServiceSettings, Stats, Status, Traffic},
    config::ServiceKey,
    version,
};

/// The page (`GET /`).
pub const HTML: &str = include_str!("stats.html");

/// What `GET /stats.json` answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PageData {
    pub build: Build,
    /// What `lb status` reports (serving, pid, instance, interfaces).
    pub status: Status,
    /// The daemon's clock when this was read (ms since the Unix epoch): the page measures
    /// "time since the last health change" against it, not against the browser's clock.
    pub now_unix_ms: u64,
    /// The window the rates cover, seconds (0 until two samples were taken).
    pub rate_window_s: f64,
    pub conntrack: Conntrack,
    /// Every datapath counter, in the datapath's order.
    pub counters: Vec<CounterRow>,
    pub services: Vec<ServiceRow>,
}

/// This build of lb (as `lb --version` and `lb_build_info` show it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Build {
    pub version: &'static str,
    pub commit: &'static str,
    pub object_sha256: &'static str,
}

impl Build {
    pub fn this() -> Self {
        Build {
            version: version::VERSION,
            commit: version::COMMIT,
            object_sha256: version::OBJECT_SHA256,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Conntrack {
    /// Entries kept at the last sweep.
    pub entries: u64,
    /// `conntrack.max_entries`.
    pub max_entries: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CounterRow {
    pub name: &'static str,
    /// A packet outcome (every packet bumps exactly one) or an event.
    pub outcome: bool,
    pub help: &'static str,
    pub total: u64,
    pub per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceRow {
    pub service: ServiceKey,
    /// The settings in effect (the health check with its defaults applied).
    pub config: ServiceSettings,
    pub traffic: Traffic,
    pub rate: Rate,
    pub backends: Vec<BackendRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendRow {
    /// Address, weight, admin state, health, connections, traffic and rates.
    #[serde(flatten)]
    pub stats: BackendStats,
    pub backup: bool,
    /// Owns Maglev table slots: takes new connections.
    pub in_rotation: bool,
    /// DSR backends: the MAC in use, or why there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbour: Option<Neighbour>,
}

/// Joins `lb service list` and `lb stats --rate` (built from the same snapshot, so their
/// services and backends come in the same order) into the page's data.
pub fn data(
    status: Status,
    list: ServiceList,
    stats: Stats,
    conntrack: Conntrack,
    now_unix_ms: u64,
) -> PageData {
    let per_s = stats.counters_per_s.unwrap_or_default();
    let counters = Counter::ALL
        .iter()
        .map(|c| CounterRow {
            name: c.name(),
            outcome: c.is_outcome(),
            help: c.help(),
            total: stats.counters.get(c.name()).copied().unwrap_or(0),
            per_s: per_s.get(c.name()).copied().unwrap_or(0.0),
        })
        .collect();
    let services = list
        .services
        .into_iter()
        .zip(stats.services)
        .map(|(entry, s)| {
            debug_assert_eq!(entry.service, s.service, "list and stats in one order");
            let backends = entry
                .backends
                .into_iter()
                .zip(s.backends)
                .map(|(e, b)| BackendRow {
                    backup: e.backup,
                    in_rotation: e.in_rotation,
                    neighbour: e.neighbour,
                    stats: b,
                })
                .collect();
            ServiceRow {
                service: entry.service,
                config: entry.config,
                traffic: s.traffic,
                rate: s.rate.unwrap_or_default(),
                backends,
            }
        })
        .collect();
    PageData {
        build: Build::this(),
        status,
        now_unix_ms,
        rate_window_s: stats.rate_window_s.unwrap_or(0.0),
        conntrack,
        counters,
        services,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Instant};

    use lb_common::TrafficStats;

    use super::*;
    use crate::daemon::{
        controller::snapshot_of,
        sweeper::ConnCounts,
        views::{self, Readings, Samples},
    };

    fn status() -> Status {
        Status {
            serving: true,
            attached: true,
            applied: true,
            stopping: false,
            pid: 42,
            name: "lb".into(),
            pin_dir: "/sys/fs/bpf/lb/lb".into(),
            interfaces: vec![],
        }
    }

    #[test]
    fn services_and_backends_carry_list_and_stats_fields() {
        let snap = snapshot_of(
            r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "forwarding": "nat",
             "backends": [{"address": "10.0.0.11", "weight": 7}, {"address": "10.0.0.12", "backup": true}]},
            {"vip": "10.100.0.20", "port": 53, "protocol": "udp", "forwarding": "nat",
             "table_size": 251, "backends": [{"address": "10.1.0.11", "state": "maint"}]}]}"#,
        );
        let counts = ConnCounts::default();
        let web = snap.runtime.services().next().unwrap();
        let b11 = web.backends[&"10.0.0.11:80".parse().unwrap()].index;
        let reading = |packets: u64| Readings {
            counters: Counter::ALL
                .iter()
                .map(|c| {
                    if *c == Counter::DropFragment {
                        packets
                    } else {
                        0
                    }
                })
                .collect(),
            services: BTreeMap::from([(
                web.id,
                TrafficStats {
                    packets,
                    ..Default::default()
                },
            )]),
            backends: BTreeMap::from([(
                b11,
                TrafficStats {
                    packets,
                    ..Default::default()
                },
            )]),
        };
        let mut samples = Samples::default();
        let t0 = Instant::now();
        samples.push(t0, reading(10));
        samples.push(t0 + std::time::Duration::from_secs(2), reading(30));
        let stats = views::stats(&snap, &counts, &reading(40), Some(&samples));
        let page = data(
            status(),
            views::list(&snap, &counts),
            stats,
            Conntrack {
                entries: 3,
                max_entries: 1024,
            },
            1_700_000_000_000,
        );
        assert_eq!(page.rate_window_s, 2.0);
        let frag = page
            .counters
            .iter()
            .find(|c| c.name == "drop_fragment")
            .unwrap();
        assert_eq!((frag.total, frag.per_s, frag.outcome), (40, 10.0, true));
        assert_eq!(page.counters.len(), Counter::ALL.len());
        let svc = &page.services[0];
        assert_eq!(svc.service.to_string(), "10.100.0.10:80/tcp");
        assert_eq!((svc.traffic.packets, svc.rate.packets_per_s), (40, 10.0));
        let rows: Vec<(String, u16, bool, u64)> = svc
            .backends
            .iter()
            .map(|b| {
                (
                    b.stats.summary.backend.to_string(),
                    b.stats.summary.weight,
                    b.backup,
                    b.stats.traffic.packets,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("10.0.0.11:80".into(), 7, false, 40),
                ("10.0.0.12:80".into(), 100, true, 0)
            ]
        );
        assert_eq!(
            page.services[1].backends[0].stats.summary.state,
            crate::config::AdminState::Maint
        );

        let json = serde_json::to_value(&page).unwrap();
        assert_eq!(json["build"]["commit"], version::COMMIT);
        assert_eq!(json["status"]["pid"], 42);
        let b = &json["services"][0]["backends"][0];
        // The page reads these names: flattened backend fields, not nested ones.
        for key in [
            "backend",
            "weight",
            "state",
            "health",
            "active_conns",
            "traffic",
            "rate",
            "in_rotation",
        ] {
            assert!(b.get(key).is_some(), "{key} missing in {b}");
        }
        assert_eq!(json["services"][0]["config"]["vip"], "10.100.0.10");
    }

    #[test]
    fn the_page_is_self_contained_and_read_only() {
        // No external asset: no URL with a scheme or a protocol-relative one, no
        // stylesheet or script by reference.
        for banned in [
            "http://",
            "https://",
            "//cdn",
            "<link",
            "<script src",
            "<form",
            "@import",
        ] {
            assert!(!HTML.contains(banned), "stats.html contains {banned}");
        }
        // It polls the JSON endpoint with GET only.
        assert!(
            HTML.contains("fetch(\"stats.json\""),
            "the page polls stats.json"
        );
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            assert!(!HTML.contains(method), "stats.html mentions {method}");
        }
    }
}
