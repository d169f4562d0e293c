//! Observability with real traffic in the lab: counters equal the packets sent, the
//! Prometheus endpoint parses (promtool, and a parser crate for the values) and its
//! values move with traffic, rates and the connection listing follow, and rare datapath
//! events reach the daemon's log. Every metric the monitoring examples (Grafana
//! dashboard, Prometheus rules) name is in a real scrape.
/// Which metric names a text refers to (shared with `cargo xtask test`'s static check).
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    lab::{Mode, UDP_PORT},
    running::{QUICK_CHECK, Running, all_in_rotation},
};

const METRICS: &str = "127.0.0.1:9180";
const N: usize = 200;

fn start(mode: Mode, prefix: &str) -> Running {
    Running::start_with_args(
        mode,
        prefix,
        |lab| lab.config(QUICK_CHECK, false),
        &["--metrics-addr", METRICS],
        "every backend up and in rotation",
        all_in_rotation,
    )
}

/// The exposition text, checked by promtool (format and naming conventions).
fn scrape_text(r: &Running) -> String {
    let out = r
        .lab
        .exec(
            &r.lab.lb_ns(),
            &[
                "curl",
                "-s",
                "-f",
                "-m",
                "5",
                &format!("http://{METRICS}/metrics"),
            ],
        )
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "scraping /metrics failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 exposition");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by scripts/setup.sh)");
    {
        use std::io::Write as _;
        promtool
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing to promtool");
    }
    let check = promtool.wait_with_output().expect("promtool");
    assert!(
        check.status.success(),
        "promtool check metrics rejected the exposition:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    text
}

/// (metric name, sorted labels) -> value, parsed with prometheus-parse.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn scrape(r: &Running) -> Samples {
    let text = scrape_text(r);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("parsing the exposition");
    assert!(!scrape.samples.is_empty());
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample kind {other:?} for {}", s.metric),
            };
            ((s.metric, labels), value)
        })
        .collect()
}

fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    *s.get(&(name.to_string(), want))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// Sum of a per-backend metric over the backends of one service.
fn backend_sum(s: &Samples, name: &str, vip: &str, port: &str, proto: &str) -> f64 {
    s.iter()
        .filter(|((n, l), _)| {
            n == name
                && l.contains(&("vip".into(), vip.into()))
                && l.contains(&("port".into(), port.into()))
                && l.contains(&("proto".into(), proto.into()))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Every metric named by the Grafana dashboard, the alert rules and their unit tests is
/// in this scrape, except the ones the daemon does not export yet.
fn examples_metrics_are_scraped(m: &Samples) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scraped: BTreeSet<&str> = m.keys().map(|(n, _)| n.as_str()).collect();
    for file in [
        "examples/grafana/lb-dashboard.json",
        "examples/prometheus/lb-alerts.yml",
        "examples/prometheus/lb-alerts.test.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let names = lb_lab::metric_names::referenced(&text);
        assert!(!names.is_empty(), "{file} names no lb_ metric");
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !scraped.contains(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the daemon does not export: {missing:?}"
        );
    }
}

fn stats(r: &Running, rate: bool) -> Value {
    let mut args = vec!["stats", "--json"];
    if rate {
        args.push("--rate");
    }
    let out = r.cli(&args);
    assert!(
        out.status.success(),
        "lb stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats JSON")
}

fn udp_service<'a>(st: &'a Value, vip: &str) -> &'a Value {
    let name = format!("{vip}:{UDP_PORT}/udp");
    st["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == name.as_str()))
        .expect("the UDP service")
}

fn counters_equal_packets_and_metrics_move(mode: Mode, prefix: &str) {
    let r = start(mode, prefix);
    let vip = r.lab.vip();
    let port = UDP_PORT.to_string();
    let (m0, s0) = (scrape(&r), stats(&r, false));

    let counts = r.udp_spread(N);
    assert_eq!(
        counts.get("error"),
        None,
        "every datagram answered: {counts:?}"
    );

    let (m1, s1) = (scrape(&r), stats(&r, false));
    let delta =
        |name: &str, labels: &[(&str, &str)]| get(&m1, name, labels) - get(&m0, name, labels);
    let svc = [("vip", vip), ("port", port.as_str()), ("proto", "udp")];
    let n = N as f64;
    // N datagrams, each a new flow (its own source port), each one packet.
    assert_eq!(delta("lb_service_packets_in_total", &svc), n);
    assert_eq!(delta("lb_service_connections_total", &svc), n);
    assert_eq!(
        backend_sum(&m1, "lb_backend_packets_in_total", vip, &port, "udp")
            - backend_sum(&m0, "lb_backend_packets_in_total", vip, &port, "udp"),
        n,
        "backends add up to the service"
    );
    let forwarded = |s: &Value, c: &str| s["counters"][c].as_u64().unwrap_or(0) as f64;
    match mode {
        // DSR: one XDP_TX per datagram; replies go straight to the client.
        Mode::Dsr => {
            assert_eq!(delta("lb_datapath_tx_total", &[]), n);
            assert_eq!(
                forwarded(&s1, "tx") - forwarded(&s0, "tx"),
                n,
                "lb stats agrees"
            );
        }
        // NAT: each datagram redirected to the backend side, each reply back — except
        // the first replies to a client whose MAC the balancer has not learned yet:
        // translated and handed to the kernel (pass_no_neigh), which resolves it.
        Mode::Nat => {
            let sent = delta("lb_datapath_redirect_total", &[])
                + delta("lb_datapath_pass_no_neigh_total", &[]);
            assert_eq!(sent, 2.0 * n);
            assert_eq!(delta("lb_datapath_nat_reply_total", &[]), n);
            assert_eq!(delta("lb_service_packets_out_total", &svc), n);
            let both = |s: &Value| forwarded(s, "redirect") + forwarded(s, "pass_no_neigh");
            assert_eq!(both(&s1) - both(&s0), 2.0 * n, "lb stats agrees");
        }
    }
    examples_metrics_are_scraped(&m1);
    let traffic = |s: &Value| {
        udp_service(s, vip)["traffic"]["packets"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(
        traffic(&s1) - traffic(&s0),
        N as u64,
        "lb stats per service"
    );

    // Every flow is listed.
    let out = r.cli(&[
        "conns",
        "--service",
        &format!("{vip}:{UDP_PORT}/udp"),
        "--limit",
        "1000",
        "--json",
    ]);
    let conns: Value = serde_json::from_slice(&out.stdout).expect("conns JSON");
    assert!(conns["total"].as_u64().unwrap_or(0) >= N as u64, "{conns}");
    assert!(
        conns["conns"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|c| c["state"] == "udp" && c["protocol"] == "udp")
    );

    // Rates move while traffic flows (samples every 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = r.udp_spread(20);
        let pps = udp_service(&stats(&r, true), vip)["rate"]["packets_per_s"]
            .as_f64()
            .unwrap_or(0.0);
        if pps > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lb stats --rate never showed UDP traffic"
        );
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn dsr_counters_equal_packets_and_metrics_move() {
    counters_equal_packets_and_metrics_move(Mode::Dsr, "lbo-d1");
}

#[test]
fn nat_counters_equal_packets_and_metrics_move() {
    counters_equal_packets_and_metrics_move(Mode::Nat, "lbo-n1");
}

/// A rare datapath event (a service without usable backends) reaches the daemon's log
/// from the datapath's log ring buffer, once per power of two of its count.
#[test]
fn rare_datapath_events_reach_the_log() {
    let r = start(Mode::Dsr, "lbo-d2");
    let vip = r.lab.vip();
    let service = format!("{vip}:{UDP_PORT}/udp");
    for b in &r.lab.backends {
        let out = r.cli(&[
            "backend",
            "set",
            &service,
            &b.addr.to_string(),
            "--state",
            "maint",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let counts = r.udp_spread(5);
    assert_eq!(
        counts.get("error"),
        Some(&5),
        "no backend answers: {counts:?}"
    );
    let m = scrape(&r);
    assert!(get(&m, "lb_datapath_drop_no_backend_total", &[]) >= 5.0);
    let want = format!("service {vip}:{UDP_PORT} has no usable backend");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r.log().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "no `{want}` in the log:\n{}",
            r.log()
        );
        sleep(Duration::from_millis(100));
    }
    // 5 drops on at most 2 CPUs: counts 1, 2, 4 per CPU are logged, not every packet.
    let lines = r.log().lines().filter(|l| l.contains(&want)).count();
    assert!(
        (1..=6).contains(&lines),
        "{lines} log lines for 5 drops:\n{}",
        r.log()
    );
}
