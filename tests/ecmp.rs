//! lb nodes active-active behind a router that spreads flows over them by ECMP: each
//! node announces its VIPs (`lb run --announce-table 100`) through BIRD
//! (examples/ha/bird-lb.conf) to the router's BIRD (examples/ha/bird-router.conf), BGP
//! with BFD; DSR.
//!
//! The failover tests run, throughout, new connections (a request fails without an
//! answer within 5 s) and long-lived connections exchanging a request every 100 ms.
//! Waits are bounded with slack, never timed; the times measured are printed.
#![cfg(feature = "root-tests")]

mod support;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use lb_lab::{
    ecmp::{Ecmp, PROTOCOL, TABLE},
    lab::DSR_VIP,
    load::Traffic,
};
use support::running::{LB, QUICK_CHECK, pass_object};

/// BGP session set-up, BFD and route changes on a loaded machine.
const ROUTING_WITHIN: Duration = Duration::from_secs(20);
const GRACE_MS: &str = "4000";

fn vip() -> SocketAddr {
    SocketAddr::from((DSR_VIP.parse::<Ipv4Addr>().unwrap(), 80))
}

fn ecmp(prefix: &str, nodes: usize, config: Option<&str>) -> Ecmp {
    support::require_root();
    let mut e = Ecmp::up(prefix, nodes, Path::new(LB), &pass_object());
    let config = config.map_or_else(|| e.cluster.lab.config(QUICK_CHECK, false), str::to_string);
    e.start(&config, &["--stop-grace-ms", GRACE_MS]);
    e
}

fn all(e: &Ecmp) -> BTreeSet<usize> {
    (0..e.cluster.nodes.len()).collect()
}

/// Panics with the logs unless nothing went wrong since `before`.
fn assert_clean(e: &Ecmp, traffic: &Traffic, when: &str, before: &[usize]) {
    traffic.assert_clean(when, before, || e.cluster.logs());
}

/// `n` requests from the client, each on a new connection from its own source port
/// (from `first` on); how many failed.
fn requests(e: &Ecmp, first: u16, n: u16) -> usize {
    let script = format!(
        "for p in $(seq {first} {last}); do curl -s -m 5 --local-port $p -o /dev/null -H 'Connection: close' http://{DSR_VIP}/ || echo failed; done",
        last = first + n - 1
    );
    let out = e
        .cluster
        .lab
        .exec(&e.cluster.lab.client_ns(), &["sh", "-c", &script])
        .output()
        .expect("curl loop");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The node whose connection table holds the most of the long-lived connections.
fn busiest(e: &Ecmp, traffic: &Traffic) -> (usize, usize) {
    let ports: Vec<u16> = traffic
        .sessions
        .iter()
        .map(|s| s.seen().local_port)
        .collect();
    (0..e.cluster.nodes.len())
        .map(|i| {
            let held = e.cluster.client_ports(i);
            (i, ports.iter().filter(|p| held.contains(p)).count())
        })
        .max_by_key(|(_, n)| *n)
        .expect("nodes")
}

#[test]
fn ecmp_spreads_connections_and_a_node_leaves_and_joins_without_a_failed_request() {
    let mut e = ecmp("hae1", 3, None);
    // 300 new connections: each node within ±30 % of an equal share.
    let before = e.cluster.conns();
    assert_eq!(requests(&e, 20000, 300), 0, "requests failed");
    let spread = e.cluster.conns_since(&before);
    eprintln!("300 connections over the nodes: {spread:?}");
    assert_eq!(spread.iter().sum::<u64>(), 300, "{spread:?}");
    for (i, n) in spread.iter().enumerate() {
        assert!(
            (70..=130).contains(n),
            "lb{} took {n} of 300 connections, not 100 ± 30 %: {spread:?}",
            i + 1
        );
    }

    let traffic = Traffic::start(&e.cluster.lab.client_ns(), vip(), 6);
    sleep(Duration::from_secs(1));
    let (leaving, held) = busiest(&e, &traffic);
    assert!(held > 0, "no long-lived connection goes through any node");
    let before = traffic.answered();
    // SIGTERM with a grace: the node withdraws its VIP at once and forwards on.
    e.cluster.signal_lb(leaving, libc::SIGTERM);
    let rest: BTreeSet<usize> = all(&e).into_iter().filter(|i| *i != leaving).collect();
    let took = e.wait_next_hops(&rest, ROUTING_WITHIN);
    eprintln!(
        "lb{} left the ECMP group {:.2} s after SIGTERM ({held} long-lived connections went through it)",
        leaving + 1,
        took.as_secs_f64()
    );
    assert!(
        e.announced(leaving).is_empty() && e.cluster.nodes[leaving].lb.is_some(),
        "withdrawn at the start of the grace: {}",
        e.announced(leaving)
    );
    let status = e.cluster.wait_lb_exit(leaving, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let conns = e.cluster.conns();
    sleep(Duration::from_secs(2));
    assert_clean(&e, &traffic, "after a node left", &before);
    let taken = e.cluster.conns_since(&conns);
    assert!(
        rest.iter().all(|i| taken[*i] > 0),
        "the remaining nodes take the new connections: {taken:?}"
    );

    // It joins again: the router spreads over every node again.
    let before = traffic.answered();
    e.start_lb(leaving, &["--stop-grace-ms", GRACE_MS]);
    e.wait_next_hops(&all(&e), ROUTING_WITHIN);
    let conns = e.cluster.conns();
    sleep(Duration::from_secs(3));
    assert!(
        e.cluster.conns_since(&conns)[leaving] > 0,
        "lb{} takes new connections again",
        leaving + 1
    );
    assert_clean(&e, &traffic, "after the node joined again", &before);
}

/// TCP segments the client retransmitted so far (`RetransSegs` of its namespace).
fn retransmits(e: &Ecmp) -> u64 {
    let out = e
        .cluster
        .lab
        .exec(&e.cluster.lab.client_ns(), &["cat", "/proc/net/snmp"])
        .output()
        .expect("reading /proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .expect("RetransSegs in /proc/net/snmp")
}

#[test]
fn ecmp_a_node_cut_off_loses_no_connection() {
    let e = ecmp("hae2", 3, None);
    let traffic = Traffic::start(&e.cluster.lab.client_ns(), vip(), 6);
    sleep(Duration::from_secs(1));
    let (dead, held) = busiest(&e, &traffic);
    assert!(held > 0, "no long-lived connection goes through any node");
    let before = traffic.answered();
    let retrans = retransmits(&e);
    // No withdrawal: the node just goes silent; BFD (100 ms x 3) tells the router.
    e.link(dead, false);
    let rest: BTreeSet<usize> = all(&e).into_iter().filter(|i| *i != dead).collect();
    let took = e.wait_next_hops(&rest, ROUTING_WITHIN);
    sleep(Duration::from_secs(3));
    let retrans = retransmits(&e) - retrans;
    eprintln!(
        "lb{} cut off: out of the ECMP group after {:.2} s; {held} long-lived connections went through it; the client retransmitted {retrans} segments",
        dead + 1,
        took.as_secs_f64()
    );
    // Every connection continues: those of the dead node resumed elsewhere after
    // retransmissions, none was reset.
    assert_clean(&e, &traffic, "after a node was cut off", &before);
}

/// One HTTP service with quick checks (interval 500 ms, fall 2, rise 1).
const CHECKED: &str = r#"{"kind": "http", "path": "/", "expect_status": 200, "interval_ms": 500, "timeout_ms": 400, "rise": 1, "fall": 2}"#;

#[test]
fn a_vip_without_a_usable_backend_is_withdrawn_from_bgp_and_returns() {
    support::require_root();
    let mut e = Ecmp::up("hae3", 2, Path::new(LB), &pass_object());
    let config = e.cluster.lab.http_service(CHECKED);
    e.start(&config, &[]);
    // Detection: `fall` failed probes, `interval_ms` apart, each up to `timeout_ms`;
    // then the withdrawal through BIRD, BGP and the router's kernel.
    let (interval, timeout, fall) = (500u64, 400u64, 2u64);
    let bound =
        Duration::from_millis(fall * interval + timeout + 2 * interval) + Duration::from_secs(3);
    let stopped = Instant::now();
    for b in 0..3 {
        e.cluster.lab.stop_backend(b);
    }
    e.wait_next_hops(&BTreeSet::new(), ROUTING_WITHIN);
    let gone = stopped.elapsed();
    for i in 0..2 {
        assert!(e.announced(i).is_empty(), "lb{} still announces", i + 1);
        assert!(
            e.cluster
                .lb_log(i)
                .contains("no service of the VIP has a backend in rotation"),
            "{}",
            e.cluster.lb_log(i)
        );
    }
    let started = Instant::now();
    e.cluster.lab.start_backend(1);
    e.wait_next_hops(&all(&e), ROUTING_WITHIN);
    let back = started.elapsed();
    eprintln!(
        "all backends down -> withdrawn at the router after {:.2} s; one back -> announced after {:.2} s (bound {:.1} s)",
        gone.as_secs_f64(),
        back.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(
        gone <= bound,
        "withdrawn after {gone:?}, more than {bound:?}"
    );
    assert!(
        back <= bound,
        "announced again after {back:?}, more than {bound:?}"
    );
    assert_eq!(requests(&e, 21000, 10), 0, "the VIP answers again");
}

/// `ip route show table 100 proto 252` of node `i`, as one line per route.
fn routes(e: &Ecmp, i: usize) -> Vec<String> {
    e.announced(i)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// Waits (10 s at most) until node 0 announces exactly `want`.
fn wait_routes(e: &Ecmp, want: &[String], what: &str) {
    for _ in 0..200 {
        if routes(e, 0) == want {
            return;
        }
        sleep(Duration::from_millis(50));
    }
    panic!(
        "{what}: table {TABLE} holds {:?}, not {want:?}\n{}",
        routes(e, 0),
        e.cluster.lb_log(0)
    );
}

/// Runs `ip <args>` on node 0; its stdout.
fn ip(e: &Ecmp, args: &[&str]) -> String {
    let out = e
        .cluster
        .lab
        .exec(&e.cluster.nodes[0].ns, &[&["ip"][..], args].concat())
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sets every backend of both services of node 0 to `state`.
fn set_all(e: &Ecmp, state: &str) {
    for b in &e.cluster.lab.backends {
        for svc in ["10.100.0.10:80/tcp", "10.100.0.10:5353/udp"] {
            let out = e.cluster.lb(
                0,
                &["backend", "set", svc, &b.addr.to_string(), "--state", state],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn announcements_follow_the_daemon_through_changes_crashes_and_stops() {
    support::require_root();
    let mut e = Ecmp::up("hae4", 1, Path::new(LB), &pass_object());
    let config = e.cluster.lab.config(QUICK_CHECK, false);
    e.cluster.write_config(&config);
    let announced = vec![format!("blackhole {DSR_VIP}")];

    // A table the kernel routes by is refused.
    let out = e
        .cluster
        .lab
        .exec(
            &e.cluster.nodes[0].ns,
            &[
                LB,
                "run",
                "--iface",
                "eth0",
                "--config",
                "x",
                "--announce-table",
                "254",
            ],
        )
        .output()
        .expect("lb run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("254 main"), "{err}");

    // A stale route of lb's protocol (a crashed daemon's, a VIP gone from the file) and
    // a route of another protocol in the table.
    ip(
        &e,
        &[
            "route",
            "add",
            "blackhole",
            "10.100.0.99/32",
            "table",
            TABLE,
            "proto",
            PROTOCOL,
        ],
    );
    ip(
        &e,
        &[
            "route",
            "add",
            "blackhole",
            "10.100.0.98/32",
            "table",
            TABLE,
            "proto",
            "static",
        ],
    );
    e.start_lb(0, &["--stop-grace-ms", GRACE_MS]);
    e.cluster.wait_serving(0, Duration::from_secs(30));
    e.cluster.wait_all_in_rotation(0, Duration::from_secs(30));
    wait_routes(&e, &announced, "serving");
    let log = e.cluster.lb_log(0);
    assert!(
        log.contains(
            "withdrew 10.100.0.99/32 from routing table 100: not a VIP of the running configuration"
        ),
        "{log}"
    );
    assert!(
        ip(&e, &["route", "show", "table", TABLE, "proto", "static"]).contains("10.100.0.98"),
        "another protocol's route is left alone"
    );

    // No usable backend in any service of the VIP: withdrawn; back: announced.
    set_all(&e, "maint");
    wait_routes(&e, &[], "every backend in maintenance");
    set_all(&e, "ready");
    wait_routes(&e, &announced, "backends ready again");

    // A route removed by hand comes back (resync).
    ip(
        &e,
        &[
            "route",
            "del",
            &format!("{DSR_VIP}/32"),
            "table",
            TABLE,
            "proto",
            PROTOCOL,
        ],
    );
    wait_routes(&e, &announced, "after the route was removed by hand");

    // kill -9 and SIGUSR2: the datapath forwards on, the route stays; the next daemon
    // adopts both.
    for signal in [libc::SIGKILL, libc::SIGUSR2] {
        e.cluster.signal_lb(0, signal);
        e.cluster.wait_lb_exit(0, Duration::from_secs(10));
        sleep(Duration::from_millis(500));
        assert_eq!(routes(&e, 0), announced, "after signal {signal}");
        e.start_lb(0, &["--stop-grace-ms", GRACE_MS]);
        e.cluster.wait_serving(0, Duration::from_secs(30));
        wait_routes(&e, &announced, "after a restart");
    }

    // SIGTERM: withdrawn at the start of the grace, while lb still runs.
    e.cluster.signal_lb(0, libc::SIGTERM);
    wait_routes(&e, &[], "at the start of the grace");
    let (serving, line) = e.cluster.status(0);
    assert!(
        !serving && line.contains("stopping"),
        "lb is in its grace: {line}"
    );
    let status = e.cluster.wait_lb_exit(0, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(routes(&e, 0).is_empty());
}
