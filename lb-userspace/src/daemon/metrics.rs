//! Prometheus text exposition (`lb run --metrics-addr 127.0.0.1:9xxx`, opt-in).
//!
//! Conventions: one prefix (`lb_`), counters end in `_total`, byte counters carry
//! `_bytes`, labels are `vip`, `port`, `proto` and `backend` only — never a client
//! address. Datapath outcomes and events are one metric each (`lb_datapath_tx_total`,
//! `lb_datapath_drop_fragment_total`, ...), so no other label is needed.
use std::fmt::Write as _;

use lb_common::Counter;

use crate::version;

/// One sample of everything exported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub counters: Vec<(Counter, u64)>,
    pub services: Vec<ServiceSample>,
    pub conntrack_entries: u64,
    pub conntrack_max_entries: u64,
    pub conntrack_ipv6_entries: u64,
    pub conntrack_ipv6_max_entries: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceSample {
    pub vip: String,
    pub port: u16,
    pub proto: &'static str,
    pub traffic: lb_common::TrafficStats,
    pub backends: Vec<BackendSample>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendSample {
    pub backend: String,
    pub traffic: lb_common::TrafficStats,
    pub up: bool,
    pub weight: u16,
    /// 0 ready, 1 drain, 2 maint.
    pub admin_state: u8,
    pub in_rotation: bool,
    pub active: u64,
    pub inactive: u64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(self.out, "{name}{{{}}} {value}", l.join(","));
        }
    }
}

/// Renders a snapshot in the Prometheus text format (version 0.0.4).
pub fn render(s: &Sample) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    f.header(
        "lb_build_info",
        "gauge",
        "Build of the running lb (version, git commit, SHA-256 of the embedded XDP object); the value is always 1.",
    );
    f.sample(
        "lb_build_info",
        &[
            ("version", version::VERSION),
            ("commit", version::COMMIT),
            ("object", version::OBJECT_SHA256),
        ],
        1,
    );
    for (c, v) in &s.counters {
        let name = format!("lb_datapath_{}_total", c.name());
        let kind = if c.is_outcome() {
            "Packets with this outcome"
        } else {
            "Datapath event"
        };
        f.header(&name, "counter", &format!("{kind}: {}", c.help()));
        f.sample(&name, &[], v);
    }
    f.header(
        "lb_conntrack_entries",
        "gauge",
        "Entries in the connection table at the last sweep.",
    );
    f.sample("lb_conntrack_entries", &[], s.conntrack_entries);
    f.header(
        "lb_conntrack_max_entries",
        "gauge",
        "Capacity of the connection table (conntrack.max_entries).",
    );
    f.sample("lb_conntrack_max_entries", &[], s.conntrack_max_entries);
    f.header(
        "lb_conntrack_ipv6_entries",
        "gauge",
        "Entries in the IPv6 connection table at the last sweep.",
    );
    f.sample("lb_conntrack_ipv6_entries", &[], s.conntrack_ipv6_entries);
    f.header(
        "lb_conntrack_ipv6_max_entries",
        "gauge",
        "Capacity of the IPv6 connection table (conntrack.max_entries_ipv6).",
    );
    f.sample(
        "lb_conntrack_ipv6_max_entries",
        &[],
        s.conntrack_ipv6_max_entries,
    );

    type Get = fn(&lb_common::TrafficStats) -> u64;
    let traffic: [(&str, &str, Get); 5] = [
        (
            "packets_in_total",
            "Packets forwarded towards backends.",
            |t| t.packets,
        ),
        (
            "bytes_in_total",
            "Bytes forwarded towards backends, Ethernet header included.",
            |t| t.bytes,
        ),
        (
            "packets_out_total",
            "NAT replies translated back towards clients.",
            |t| t.packets_out,
        ),
        (
            "bytes_out_total",
            "Bytes of NAT replies translated back towards clients.",
            |t| t.bytes_out,
        ),
        (
            "connections_total",
            "New connections (connection-table entries created or re-placed).",
            |t| t.new_flows,
        ),
    ];
    for (suffix, help, get) in traffic {
        let name = format!("lb_service_{suffix}");
        f.header(&name, "counter", help);
        for svc in &s.services {
            let port = svc.port.to_string();
            f.sample(
                &name,
                &[("vip", &svc.vip), ("port", &port), ("proto", svc.proto)],
                get(&svc.traffic),
            );
        }
        let name = format!("lb_backend_{suffix}");
        f.header(&name, "counter", help);
        for svc in &s.services {
            let port = svc.port.to_string();
            for b in &svc.backends {
                f.sample(
                    &name,
                    &[
                        ("vip", &svc.vip),
                        ("port", &port),
                        ("proto", svc.proto),
                        ("backend", &b.backend),
                    ],
                    get(&b.traffic),
                );
            }
        }
    }
    type GetB = fn(&BackendSample) -> u64;
    let gauges: [(&str, &str, GetB); 6] = [
        ("lb_backend_up", "Health: 1 up, 0 down.", |b| b.up.into()),
        ("lb_backend_weight", "Configured weight.", |b| {
            b.weight.into()
        }),
        (
            "lb_backend_admin_state",
            "Admin state: 0 ready, 1 drain, 2 maint.",
            |b| b.admin_state.into(),
        ),
        (
            "lb_backend_in_rotation",
            "1 when the backend owns Maglev table slots (takes new connections).",
            |b| b.in_rotation.into(),
        ),
        (
            "lb_backend_active_connections",
            "TCP connections past the handshake and not closing.",
            |b| b.active,
        ),
        (
            "lb_backend_inactive_connections",
            "Other connection-table entries (opening, closing, UDP).",
            |b| b.inactive,
        ),
    ];
    for (name, help, get) in gauges {
        f.header(name, "gauge", help);
        for svc in &s.services {
            let port = svc.port.to_string();
            for b in &svc.backends {
                f.sample(
                    name,
                    &[
                        ("vip", &svc.vip),
                        ("port", &port),
                        ("proto", svc.proto),
                        ("backend", &b.backend),
                    ],
                    get(b),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_names_follow_conventions() {
        let s = Sample {
            counters: vec![(Counter::Tx, 5), (Counter::FlowNew, 2)],
            services: vec![ServiceSample {
                vip: "10.100.0.10".into(),
                port: 80,
                proto: "tcp",
                traffic: lb_common::TrafficStats {
                    packets: 7,
                    bytes: 700,
                    ..Default::default()
                },
                backends: vec![BackendSample {
                    backend: "10.0.0.11:80".into(),
                    up: true,
                    weight: 100,
                    ..Default::default()
                }],
            }],
            conntrack_entries: 3,
            conntrack_max_entries: 1024,
            conntrack_ipv6_entries: 1,
            conntrack_ipv6_max_entries: 1024,
        };
        let text = render(&s);
        assert!(text.contains("lb_datapath_tx_total 5\n"), "{text}");
        let build = format!(
            "lb_build_info{{version=\"{}\",commit=\"{}\",object=\"{}\"}} 1\n",
            version::VERSION,
            version::COMMIT,
            version::OBJECT_SHA256
        );
        assert!(text.contains(&build), "{text}");
        assert!(text.contains("lb_conntrack_max_entries 1024\n"), "{text}");
        assert!(text.contains("lb_conntrack_ipv6_entries 1\n"), "{text}");
        assert!(
            text.contains(
                "lb_service_bytes_in_total{vip=\"10.100.0.10\",port=\"80\",proto=\"tcp\"} 700\n"
            ),
            "{text}"
        );
        assert!(text.contains("lb_backend_up{vip=\"10.100.0.10\",port=\"80\",proto=\"tcp\",backend=\"10.0.0.11:80\"} 1\n"), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let w: Vec<&str> = line.split_whitespace().collect();
            assert!(w[2].starts_with("lb_"), "{line}");
            assert_eq!(w[3] == "counter", w[2].ends_with("_total"), "{line}");
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
