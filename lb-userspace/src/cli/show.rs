//! Human output of the CLI, in the spirit of `ipvsadm -Ln` (pure: typed results in, text
//! out).
use crate::{
    api::{Conns, Rate, ServiceList, Stats, Traffic},
    config::ServiceKey,
    health::HealthSnapshot,
};

/// `TCP` and `10.100.0.10:80` (`[2001:db8::10]:80`) of a service.
fn proto_addr(service: &ServiceKey) -> (String, String) {
    (
        service.protocol.as_str().to_uppercase(),
        service.socket_addr().to_string(),
    )
}

/// How long ago `then_ms` (Unix milliseconds) was, shortly: 45s, 12m, 3h, 5d.
pub fn since(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "-".into();
    }
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A backend's health in a few words: state, time since the last change, consecutive
/// failures, last check result.
fn health_cols(h: Option<&HealthSnapshot>, now_ms: u64) -> (String, String, u32, String) {
    match h {
        Some(h) => (
            h.state.to_string(),
            since(now_ms, h.last_change_unix_ms),
            h.consecutive_failures,
            h.last_result.clone().unwrap_or_else(|| "-".into()),
        ),
        None => (String::new(), since(now_ms, 0), 0, "-".into()),
    }
}

/// `lb service list`.
pub fn services(list: &ServiceList) -> String {
    let now_ms = now_unix_ms();
    let mut out = String::new();
    out += "Prot LocalAddress:Port         Scheduler Forward Flags\n";
    out += "  -> RemoteAddress:Port        Weight ActiveConn InActConn Health Since  Fails State  Rotation Last check\n";
    for svc in &list.services {
        let (proto, addr) = proto_addr(&svc.service);
        let cfg = &svc.config;
        let mut flags = vec![format!("table={}", cfg.table_size)];
        if cfg.persistence {
            flags.push("persistent".into());
        }
        flags.push(format!("check={}", cfg.health_check.kind.as_str()));
        out += &format!(
            "{proto:<4} {addr:<25} {:<9} {:<7} {}\n",
            cfg.scheduler.as_str(),
            cfg.forwarding.as_str(),
            flags.join(",")
        );
        for b in &svc.backends {
            let (health, since, fails, last) = health_cols(b.summary.health.as_ref(), now_ms);
            let mut name = b.summary.backend.to_string();
            if b.backup {
                name += " (backup)";
            }
            let rotation = if b.in_rotation { "yes" } else { "no" };
            out += &format!(
                "  -> {name:<25} {:<6} {:<10} {:<9} {health:<6} {since:<6} {fails:<5} {:<6} {rotation:<8} {last}\n",
                b.summary.weight,
                b.summary.active_conns,
                b.summary.inactive_conns,
                b.summary.state.as_str(),
            );
            if let Some(crate::api::Neighbour::Problem { problem }) = &b.neighbour {
                out += &format!("       ! gets no traffic: {problem}\n");
            }
        }
    }
    out
}

fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.1}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{}", n.round())
    }
}

/// `lb stats` (`--rate` adds the per-second table).
pub fn stats(st: &Stats, rate: bool) -> String {
    let mut out = String::new();
    if rate {
        out += &format!(
            "Rates over the last {:.1} s\n",
            st.rate_window_s.unwrap_or(0.0)
        );
        out += &format!(
            "{:<4} {:<25}{:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "Prot", "LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        );
        out += "  -> RemoteAddress:Port\n";
        for svc in &st.services {
            let (proto, addr) = proto_addr(&svc.service);
            out += &format!("{proto:<4} {addr:<25}{}\n", rate_cols(svc.rate.as_ref()));
            for b in &svc.backends {
                out += &format!(
                    "  -> {:<25}{}\n",
                    b.summary.backend.to_string(),
                    rate_cols(b.rate.as_ref())
                );
            }
        }
    } else {
        out += &format!(
            "{:<4} {:<25}{:>10} {:>8} {:>8} {:>8} {:>8}  {}\n",
            "Prot",
            "LocalAddress:Port",
            "Conns",
            "InPkts",
            "OutPkts",
            "InBytes",
            "OutBytes",
            "Health (since, failures, last check)"
        );
        out += "  -> RemoteAddress:Port\n";
        for svc in &st.services {
            let (proto, addr) = proto_addr(&svc.service);
            out += &format!("{proto:<4} {addr:<25}{}\n", traffic_cols(&svc.traffic));
            for b in &svc.backends {
                let (health, since, fails, last) =
                    health_cols(b.summary.health.as_ref(), now_unix_ms());
                out += &format!(
                    "  -> {:<25}{}  {health} {since} fails={fails} {last}\n",
                    b.summary.backend.to_string(),
                    traffic_cols(&b.traffic)
                );
            }
        }
    }
    out += "\nDatapath counters (non-zero)\n";
    // The datapath's order (outcomes, then events), not the map's.
    for name in lb_common::Counter::ALL.iter().map(|c| c.name()) {
        let Some(&v) = st.counters.get(name) else {
            continue;
        };
        if v == 0 {
            continue;
        }
        match st.counters_per_s.as_ref().and_then(|p| p.get(name)) {
            Some(r) if rate => out += &format!("  {name:<24} {v:>12} {:>10}/s\n", human(*r)),
            _ => out += &format!("  {name:<24} {v:>12}\n"),
        }
    }
    out
}

fn traffic_cols(t: &Traffic) -> String {
    format!(
        "{:>10} {:>8} {:>8} {:>8} {:>8}",
        human(t.conns as f64),
        human(t.packets as f64),
        human(t.packets_out as f64),
        human(t.bytes as f64),
        human(t.bytes_out as f64)
    )
}

fn rate_cols(r: Option<&Rate>) -> String {
    let r = r.copied().unwrap_or_default();
    format!(
        "{:>8} {:>8} {:>8} {:>8} {:>8}",
        human(r.conns_per_s),
        human(r.packets_per_s),
        human(r.packets_out_per_s),
        human(r.bytes_per_s),
        human(r.bytes_out_per_s)
    )
}

/// `lb conns` (like `ipvsadm -Lnc`).
pub fn conns(c: &Conns) -> String {
    let mut out = String::from(
        "Pro Idle(s) State        Source                Virtual               Destination\n",
    );
    for row in &c.conns {
        let (_, virt) = proto_addr(&row.service);
        out += &format!(
            "{:<3} {:>7} {:<12} {:<21} {:<21} {}\n",
            row.protocol.as_str().to_uppercase(),
            row.idle_s,
            row.state.as_str(),
            row.client.to_string(),
            virt,
            row.backend
                .map_or_else(|| "(removed)".to_string(), |b| b.to_string()),
        );
    }
    if c.truncated {
        out += &format!(
            "... {} connections in all; use --limit to see more\n",
            c.total
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn service_listing_reads_like_ipvsadm() {
        let v = json!({"services": [{"service": "10.100.0.10:80/tcp",
            "config": {"vip": "10.100.0.10", "port": 80, "protocol": "tcp", "scheduler": "maglev", "forwarding": "dsr", "table_size": 65537, "persistence": false, "health_check": {"kind": "http"}},
            "backends": [
                {"backend": "10.0.0.11:80", "weight": 100, "backup": false, "state": "ready", "in_rotation": true, "active_conns": 3, "inactive_conns": 1,
                 "health": {"state": "up", "last_result": "ok", "last_change_unix_ms": 1, "consecutive_failures": 0, "consecutive_successes": 5}, "neighbour": {"mac": "02:00:00:00:00:0b"}},
                {"backend": "10.0.0.12:80", "weight": 0, "backup": true, "state": "drain", "in_rotation": false, "active_conns": 0, "inactive_conns": 0,
                 "health": {"state": "down", "last_result": "HTTP 503", "last_change_unix_ms": now_unix_ms() - 42_000, "consecutive_failures": 7, "consecutive_successes": 0}, "neighbour": {"problem": "reached through the router 10.0.0.1 on eth0: DSR needs it on a directly connected network"}}]}]});
        let t = services(&serde_json::from_value(v).unwrap());
        assert!(t.contains("TCP  10.100.0.10:80"), "{t}");
        assert!(
            t.contains("maglev    dsr     table=65537,check=http"),
            "{t}"
        );
        assert!(
            t.lines().any(|l| l.starts_with("  -> 10.0.0.11:80")
                && l.contains(" 100 ")
                && l.contains(" up ")
                && l.ends_with("yes      ok")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.contains("10.0.0.12:80") && l.contains(" down   42s    7     drain ")),
            "since and failures:\n{t}"
        );
        assert!(
            t.contains("10.0.0.12:80 (backup)") && t.contains("HTTP 503") && t.contains("drain"),
            "{t}"
        );
        assert!(
            t.contains("! gets no traffic: reached through the router 10.0.0.1 on eth0"),
            "{t}"
        );
        assert_eq!(t.matches("gets no traffic").count(), 1, "{t}");
    }

    #[test]
    fn stats_and_conns_tables() {
        let v = json!({"counters": {"tx": 10, "drop_fragment": 0, "flow_new": 2},
            "counters_per_s": {"tx": 5.0, "flow_new": 1.0},
            "rate_window_s": 2.0,
            "services": [{"service": "10.100.0.10:80/tcp", "traffic": {"conns": 2, "packets": 10, "bytes": 1500000, "packets_out": 0, "bytes_out": 0},
                "rate": {"conns_per_s": 1.0, "packets_per_s": 5.0, "packets_out_per_s": 0.0, "bytes_per_s": 0.0, "bytes_out_per_s": 0.0},
                "backends": [{"backend": "10.0.0.11:80", "weight": 100, "state": "ready", "active_conns": 0, "inactive_conns": 0,
                    "traffic": {"conns": 2, "packets": 10, "bytes": 1500000, "packets_out": 0, "bytes_out": 0},
                    "rate": {"conns_per_s": 0.0, "packets_per_s": 0.0, "packets_out_per_s": 0.0, "bytes_per_s": 0.0, "bytes_out_per_s": 0.0},
                    "health": {"state": "down", "last_change_unix_ms": now_unix_ms() - 5000, "consecutive_failures": 4, "consecutive_successes": 0, "last_result": "timeout after 500 ms"}}]}]});
        let v: Stats = serde_json::from_value(v).unwrap();
        let t = stats(&v, false);
        assert!(
            t.contains(
                "TCP  10.100.0.10:80                    2       10        0     1.5M        0"
            ),
            "{t}"
        );
        let header = t.lines().next().unwrap();
        let row = t.lines().nth(2).unwrap();
        assert_eq!(
            header.find("Conns").unwrap() + "Conns".len(),
            row.find("2 ").unwrap() + 1,
            "columns align:\n{t}"
        );
        assert!(t.contains("  tx ") && !t.contains("drop_fragment"), "{t}");
        assert!(t.contains("down 5s fails=4 timeout after 500 ms"), "{t}");
        let r = stats(&v, true);
        assert!(
            r.contains("Rates over the last 2.0 s") && r.contains("5/s"),
            "{r}"
        );
        let c = conns(
            &serde_json::from_value(json!({"conns": [{"protocol": "tcp", "client": "198.51.100.7:40000", "service": "10.100.0.10:80/tcp", "backend": "10.0.0.11:80", "state": "established", "idle_s": 3}], "total": 5, "truncated": true}))
                .unwrap(),
        );
        assert!(
            c.contains(
                "TCP       3 established  198.51.100.7:40000    10.100.0.10:80        10.0.0.11:80"
            ),
            "{c}"
        );
        assert!(c.contains("5 connections in all"), "{c}");
    }
}
