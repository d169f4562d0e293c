//! Health checks with real servers in the lab (issue: health checks and backend lifecycle).
//!
//! Each test runs `lb run` on its own lab (prefix `lbh-N`) and acts on the real servers:
//! nginx stopped, answering 500/503, replaced by a slow server, or black-holed with
//! nftables. The health seen through `lb service list --json`, the daemon's log, the
//! servers' access logs and the traffic through the XDP path must follow. Only the HTTP
//! service (VIP:80/tcp) is checked: the lab's UDP service probes port 80 too, so its
//! backends go down along with the HTTP ones, which these tests ignore.
mod support;

use std::{
    collections::BTreeMap,
    thread::sleep,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use support::{
    lab::{ALT_PORT, DSR_VIP, Mode},
    running::Running,
};

/// What the measured detection times may exceed the schedule by: one `lb service list`
/// round trip (`ip netns exec` + the CLI + the socket, ~10-50 ms), the 20 ms polling step,
/// the probe result's trip through the daemon's lock, and scheduling noise on a loaded
/// 2-core VM.
const POLL_ALLOWANCE: Duration = Duration::from_millis(300);
/// Timer jitter allowed below a lower bound (tokio timers are late, never early, but
/// the two clocks' readings are taken in different processes).
const EARLY_JITTER: Duration = Duration::from_millis(50);
/// Longest wait for a state that should come far sooner; past it the test fails.
const WAIT_LIMIT: Duration = Duration::from_secs(15);

/// A health check's parameters, as they go in the configuration.
#[derive(Clone, Copy)]
struct Check {
    interval_ms: u64,
    timeout_ms: u64,
    rise: u64,
    fall: u64,
}

impl Check {
    /// The `health_check` object (HTTP GET / expecting 200).
    fn json(&self) -> String {
        format!(
            r#"{{"kind": "http", "path": "/", "expect_status": 200, "interval_ms": {}, "timeout_ms": {}, "rise": {}, "fall": {}}}"#,
            self.interval_ms, self.timeout_ms, self.rise, self.fall
        )
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// Longest time from a failure starting to DOWN shown: `fall` intervals (the first
    /// failing probe comes within one interval, then `fall - 1` more), one interval of
    /// slack (which also covers a probe's timeout, at most one interval), and the polling
    /// allowance.
    fn down_bound(&self) -> Duration {
        self.interval() * (self.fall as u32 + 1) + POLL_ALLOWANCE
    }

    /// Longest time from the server answering again to UP shown: `rise` intervals, one
    /// interval of slack, and the polling allowance.
    fn up_bound(&self) -> Duration {
        self.interval() * (self.rise as u32 + 1) + POLL_ALLOWANCE
    }
}

/// Fast checks for the tests that do not measure times closely.
const FAST: Check = Check {
    interval_ms: 300,
    timeout_ms: 250,
    rise: 1,
    fall: 2,
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The lab's HTTP service, `VIP:80/tcp`.
fn http_service(r: &Running) -> String {
    format!("{}:80/tcp", r.lab.vip())
}

/// Backend `i` of the HTTP service as lb names it (NAT translates port 80 to 8080).
fn backend(r: &Running, i: usize) -> String {
    let port = match r.lab.mode {
        Mode::Dsr => 80,
        Mode::Nat => ALT_PORT,
    };
    format!("{}:{port}", r.lab.backends[i].addr)
}

/// The entry of `backend` in `service` of a `list` result.
fn entry<'a>(list: &'a Value, service: &str, backend: &str) -> Option<&'a Value> {
    list["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["backend"] == backend)
}

/// Backend `i`'s entry of the HTTP service in `list` (panics when it is missing).
fn backend_entry<'a>(r: &Running, list: &'a Value, i: usize) -> &'a Value {
    let (s, b) = (http_service(r), backend(r, i));
    entry(list, &s, &b).unwrap_or_else(|| panic!("no backend {b} of {s} in {list:#}"))
}

fn health_state(e: &Value) -> &str {
    e["health"]["state"].as_str().unwrap_or("?")
}

fn last_result(e: &Value) -> &str {
    e["health"]["last_result"].as_str().unwrap_or("?")
}

fn u64_field(e: &Value, field: &str) -> u64 {
    e["health"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("health.{field} missing or not a number in {e}"))
}

/// One poll of `lb service list --json` that satisfied a condition.
struct Seen {
    /// When its answer arrived.
    at: Instant,
    /// The same moment, wall clock, in ms since the epoch.
    wall_ms: u64,
    list: Value,
}

/// Polls `lb service list --json` every 20 ms until `cond` holds for the list (bounded by
/// [`WAIT_LIMIT`]); returns the poll that saw it.
fn poll(r: &Running, what: &str, cond: impl Fn(&Value) -> bool) -> Seen {
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let out = r.cli(&["service", "list", "--json"]);
        let at = Instant::now();
        let wall_ms = now_ms();
        if out.status.success() {
            last = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if cond(&last) {
                return Seen {
                    at,
                    wall_ms,
                    list: last,
                };
            }
        }
        sleep(Duration::from_millis(20));
    }
    panic!(
        "timed out after {WAIT_LIMIT:?} waiting for: {what}\nlast list: {last:#}\nlb log:\n{}",
        r.log()
    );
}

/// Polls until backend `i` of the HTTP service satisfies `cond`.
fn poll_backend(r: &Running, i: usize, what: &str, cond: impl Fn(&Value) -> bool) -> Seen {
    let (s, b) = (http_service(r), backend(r, i));
    poll(r, &format!("{b} of {s}: {what}"), |list| {
        entry(list, &s, &b).is_some_and(&cond)
    })
}

/// Waits until every backend of the HTTP service has been probed successfully, so that
/// a test starts from a steady state (the backends start up before their first probe).
fn wait_probed(r: &Running) {
    let s = http_service(r);
    let n = r.lab.backends.len();
    poll(r, "every backend of the HTTP service probed ok", |list| {
        (0..n).all(|i| {
            entry(list, &s, &backend(r, i)).is_some_and(|e| {
                health_state(e) == "up" && last_result(e) == "ok" && e["in_rotation"] == true
            })
        })
    });
}

/// How many lines of the daemon's log contain `text`.
fn log_lines(r: &Running, text: &str) -> usize {
    r.log().lines().filter(|l| l.contains(text)).count()
}

/// Asserts that the daemon logged `text` exactly once (transitions are logged once each).
fn assert_logged_once(r: &Running, text: &str) {
    let n = log_lines(r, text);
    assert_eq!(
        n,
        1,
        "expected one log line with {text:?}, got {n}:\n{}",
        r.log()
    );
}

/// The transition log line of backend `i` of the HTTP service, e.g.
/// `backend 10.0.0.11:80 of 10.100.0.10:80/tcp is DOWN (connection refused)`.
fn transition_line(r: &Running, i: usize, to: &str, reason: &str) -> String {
    format!(
        "backend {} of {} is {to} ({reason})",
        backend(r, i),
        http_service(r)
    )
}

/// Asserts that a measured time lies within `[low, high]`, printing it for the record.
fn assert_within(what: &str, took: Duration, low: Duration, high: Duration) {
    eprintln!("{what}: {} ms", took.as_millis());
    assert!(
        took <= high,
        "{what} took {} ms, more than the bound {} ms",
        took.as_millis(),
        high.as_millis()
    );
    assert!(
        took >= low,
        "{what} took {} ms, less than {} ms: the rise/fall count was not respected",
        took.as_millis(),
        low.as_millis()
    );
}

/// Waits for backend `i` to go DOWN after a failure that started at `began` and was fully
/// in place at `in_place`; checks the time against the schedule and the reason. Returns
/// the poll that saw it.
fn expect_down(
    r: &Running,
    i: usize,
    check: &Check,
    (began, in_place): (Instant, Instant),
    reason: &str,
) -> Seen {
    let seen = poll_backend(r, i, "health down", |e| health_state(e) == "down");
    let e = backend_entry(r, &seen.list, i);
    assert_eq!(last_result(e), reason, "{e}");
    assert_eq!(e["in_rotation"], false, "a down backend has no slots: {e}");
    assert!(
        u64_field(e, "consecutive_failures") >= check.fall,
        "down after fewer than fall={} failures: {e}",
        check.fall
    );
    assert_eq!(u64_field(e, "consecutive_successes"), 0, "{e}");
    assert_within(
        &format!("{} down ({reason})", backend(r, i)),
        seen.at - in_place,
        (check.interval() * (check.fall as u32 - 1))
            .saturating_sub(EARLY_JITTER)
            .saturating_sub(in_place - began),
        check.down_bound(),
    );
    assert_logged_once(r, &transition_line(r, i, "DOWN", reason));
    seen
}

/// Waits for backend `i` to come UP after its server came back (between `began` and
/// `in_place`); checks the time against the schedule. Returns the poll that saw it.
fn expect_up(r: &Running, i: usize, check: &Check, (began, in_place): (Instant, Instant)) -> Seen {
    let seen = poll_backend(r, i, "health up", |e| health_state(e) == "up");
    let e = backend_entry(r, &seen.list, i);
    assert_eq!(last_result(e), "ok", "{e}");
    assert_eq!(u64_field(e, "consecutive_failures"), 0, "{e}");
    assert!(
        u64_field(e, "consecutive_successes") >= check.rise,
        "up after fewer than rise={} successes: {e}",
        check.rise
    );
    assert_within(
        &format!("{} up", backend(r, i)),
        seen.at - in_place,
        (check.interval() * (check.rise as u32 - 1))
            .saturating_sub(EARLY_JITTER)
            .saturating_sub(in_place - began),
        check.up_bound(),
    );
    let checks = if check.rise == 1 { "check" } else { "checks" };
    assert_logged_once(
        r,
        &transition_line(r, i, "UP", &format!("{} {checks} passed", check.rise)),
    );
    // The datapath gets the slots back (the list shows the rotation lb applied).
    poll_backend(r, i, "back in rotation", |e| e["in_rotation"] == true)
}

/// Runs `f` and returns the instants before and after it.
fn timed(f: impl FnOnce()) -> (Instant, Instant) {
    let began = Instant::now();
    f();
    (began, Instant::now())
}

/// A stopped server goes DOWN ("connection refused") within fall × interval + one
/// interval, and UP within rise × interval + one interval once restarted; the health
/// fields (last result, time of last change, consecutive counts) follow.
#[test]
fn dsr_stopped_server_goes_down_and_comes_back() {
    let check = Check {
        interval_ms: 400,
        timeout_ms: 300,
        rise: 2,
        fall: 3,
    };
    let mut r = Running::start(Mode::Dsr, "lbh-1", &check.json(), false);
    wait_probed(&r);
    let before = backend_entry(&r, &r.list(), 0).clone();
    assert_eq!(u64_field(&before, "consecutive_failures"), 0, "{before}");
    let created_ms = u64_field(&before, "last_change_unix_ms");

    let wall_stop = now_ms();
    let stop = timed(|| r.lab.stop_backend(0));
    let down = expect_down(&r, 0, &check, stop, "connection refused");
    let e = backend_entry(&r, &down.list, 0);
    let down_ms = u64_field(e, "last_change_unix_ms");
    assert!(
        down_ms != created_ms && (wall_stop..=down.wall_ms).contains(&down_ms),
        "last_change_unix_ms {down_ms} should move to the DOWN, between the stop \
         ({wall_stop}) and the poll that saw it ({}); before: {created_ms}",
        down.wall_ms
    );
    let failures = u64_field(e, "consecutive_failures");
    for other in [1, 2] {
        let o = backend_entry(&r, &down.list, other);
        assert!(
            health_state(o) == "up" && o["in_rotation"] == true,
            "the other backends stay up and in rotation: {o}"
        );
    }

    // Failures go on counting while down, with no new transition.
    sleep(check.interval() * 3);
    let later = r.list();
    let e = backend_entry(&r, &later, 0);
    assert_eq!(health_state(e), "down", "{e}");
    assert_eq!(last_result(e), "connection refused", "{e}");
    assert!(
        u64_field(e, "consecutive_failures") >= failures + 2,
        "consecutive_failures should grow by about 3 in 3 intervals (was {failures}): {e}"
    );
    assert_eq!(u64_field(e, "last_change_unix_ms"), down_ms, "{e}");
    assert_logged_once(&r, &transition_line(&r, 0, "DOWN", "connection refused"));

    let wall_start = now_ms();
    let start = timed(|| r.lab.start_backend(0));
    let up = expect_up(&r, 0, &check, start);
    let e = backend_entry(&r, &up.list, 0);
    let up_ms = u64_field(e, "last_change_unix_ms");
    assert!(
        up_ms > down_ms && (wall_start..=up.wall_ms).contains(&up_ms),
        "last_change_unix_ms {up_ms} should move to the UP, between the restart \
         ({wall_start}) and the poll that saw it ({})",
        up.wall_ms
    );
    assert_logged_once(&r, &transition_line(&r, 0, "DOWN", "connection refused"));
}

/// A server answering HTTP 500 goes DOWN with the reason "HTTP 500"; answering 200
/// again, it comes UP.
#[test]
fn dsr_http_500_goes_down_and_200_comes_back() {
    let check = Check {
        interval_ms: 300,
        timeout_ms: 250,
        rise: 2,
        fall: 2,
    };
    let mut r = Running::start(Mode::Dsr, "lbh-2", &check.json(), false);
    wait_probed(&r);
    let failing = timed(|| r.lab.set_status(1, 500));
    expect_down(&r, 1, &check, failing, "HTTP 500");
    let fixed = timed(|| r.lab.set_status(1, 200));
    expect_up(&r, 1, &check, fixed);
}

/// A server slower than the probe timeout goes DOWN with "timeout after N ms"
/// (N = timeout_ms); restored, it comes UP.
#[test]
fn dsr_slow_server_goes_down_with_timeout() {
    let check = Check {
        interval_ms: 300,
        timeout_ms: 200,
        rise: 1,
        fall: 2,
    };
    let mut r = Running::start(Mode::Dsr, "lbh-3", &check.json(), false);
    wait_probed(&r);
    let slow = timed(|| r.lab.make_slow(0, Duration::from_secs(1)));
    expect_down(
        &r,
        0,
        &check,
        slow,
        &format!("timeout after {} ms", check.timeout_ms),
    );
    let restored = timed(|| {
        r.lab.stop_backend(0);
        r.lab.start_backend(0);
    });
    expect_up(&r, 0, &check, restored);
}

/// A black-holed server (SYNs dropped) goes DOWN with "timeout after N ms"; restored,
/// it comes UP.
#[test]
fn dsr_blackholed_server_goes_down_with_timeout_and_comes_back() {
    let check = Check {
        interval_ms: 300,
        timeout_ms: 200,
        rise: 2,
        fall: 2,
    };
    let r = Running::start(Mode::Dsr, "lbh-4", &check.json(), false);
    wait_probed(&r);
    let holed = timed(|| r.lab.blackhole(2, true));
    expect_down(
        &r,
        2,
        &check,
        holed,
        &format!("timeout after {} ms", check.timeout_ms),
    );
    let restored = timed(|| r.lab.blackhole(2, false));
    expect_up(&r, 2, &check, restored);
}

/// Whether backend `i` of the HTTP service is in rotation in `list`.
fn in_rotation(r: &Running, list: &Value, i: usize) -> bool {
    backend_entry(r, list, i)["in_rotation"] == true
}

/// Asserts that `n` new connections were all answered, and only by `allowed`.
fn assert_answered_by(counts: &BTreeMap<String, usize>, n: usize, allowed: &[&str]) {
    assert!(
        counts.keys().all(|k| allowed.contains(&k.as_str())),
        "connections answered by others than {allowed:?} (or failed): {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), n, "{counts:?}");
}

/// A backup has no slots and no traffic while a primary is usable; it takes over when
/// every primary is down, and steps aside again when one comes back.
#[test]
fn dsr_backup_promoted_and_demoted() {
    let check = FAST;
    let tcp = format!("{DSR_VIP}:80/tcp");
    let mut r = Running::start_with(
        Mode::Dsr,
        "lbh-5",
        |lab| {
            let mut config: Value =
                serde_json::from_str(&lab.config(&check.json(), false)).expect("lab config");
            assert_eq!(config["services"][0]["port"], 80, "{config}");
            config["services"][0]["backends"][2]["backup"] = true.into();
            config.to_string()
        },
        "b1, b2 in rotation, the backup b3 not, all probed ok",
        |list| {
            let e = |a| entry(list, &tcp, a);
            let ok = |a| e(a).is_some_and(|e| last_result(e) == "ok");
            ["10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:80"]
                .into_iter()
                .all(ok)
                && e("10.0.0.11:80").is_some_and(|e| e["in_rotation"] == true)
                && e("10.0.0.12:80").is_some_and(|e| e["in_rotation"] == true)
                && e("10.0.0.13:80")
                    .is_some_and(|e| e["in_rotation"] == false && e["backup"] == true)
        },
    );
    let list = r.list();
    assert_eq!(health_state(backend_entry(&r, &list, 2)), "up");
    let counts = r.spread(90);
    assert_answered_by(&counts, 90, &["b1", "b2"]);
    assert!(
        counts.get("b1").is_some_and(|&n| n > 0) && counts.get("b2").is_some_and(|&n| n > 0),
        "both primaries take connections: {counts:?}"
    );

    r.lab.stop_backend(0);
    r.lab.stop_backend(1);
    let seen = poll(&r, "both primaries down, the backup in rotation", |list| {
        (0..2)
            .all(|i| entry(list, &tcp, &backend(&r, i)).is_some_and(|e| health_state(e) == "down"))
            && entry(list, &tcp, &backend(&r, 2)).is_some_and(|e| e["in_rotation"] == true)
    });
    assert!(
        !in_rotation(&r, &seen.list, 0) && !in_rotation(&r, &seen.list, 1),
        "{:#}",
        seen.list
    );
    assert_answered_by(&r.spread(30), 30, &["b3"]);

    r.lab.start_backend(0);
    let seen = poll(&r, "b1 up again, the backup out of rotation", |list| {
        entry(list, &tcp, &backend(&r, 0)).is_some_and(|e| e["in_rotation"] == true)
            && entry(list, &tcp, &backend(&r, 2)).is_some_and(|e| e["in_rotation"] == false)
    });
    assert_eq!(
        health_state(backend_entry(&r, &seen.list, 2)),
        "up",
        "the backup stays healthy, only demoted"
    );
    assert_answered_by(&r.spread(30), 30, &["b1"]);
}

/// Over a measured window of T seconds, each backend's server sees T / interval probes
/// from the balancer (at most one more, at most two fewer): no extra probes.
#[test]
fn dsr_probe_count_follows_the_schedule() {
    let check = Check {
        interval_ms: 250,
        timeout_ms: 200,
        rise: 2,
        fall: 3,
    };
    let r = Running::start(Mode::Dsr, "lbh-6", &check.json(), false);
    wait_probed(&r);
    let from = r.lab.lb_backend_side_addr();
    let n = r.lab.backends.len();
    let count = || -> Vec<usize> { (0..n).map(|i| r.lab.requests_from(i, from)).collect() };
    // The window: the access logs are read every 5 ms, and each new probe is dated by the
    // read that first shows it (nginx logs a request when it has answered it).
    let first = count();
    let t0 = Instant::now();
    let mut seen = first.clone();
    let mut arrivals: Vec<Vec<Duration>> = vec![Vec::new(); n];
    while t0.elapsed() < Duration::from_secs(4) {
        sleep(Duration::from_millis(5));
        let now = count();
        let at = t0.elapsed();
        for i in 0..n {
            arrivals[i].extend(std::iter::repeat_n(at, now[i].saturating_sub(seen[i])));
        }
        seen = now;
    }
    let window = t0.elapsed();
    let last = count();
    let expected = (window.as_millis() / u128::from(check.interval_ms)) as usize;
    for i in 0..n {
        let probes = last[i] - first[i];
        eprintln!(
            "{}: {probes} probes in {} ms (schedule: {expected})",
            r.lab.backends[i].name,
            window.as_millis()
        );
        assert!(
            probes <= expected + 1 && probes + 2 >= expected,
            "{} got {probes} probes from {from} in {} ms at one per {} ms: expected {} to {}",
            r.lab.backends[i].name,
            window.as_millis(),
            check.interval_ms,
            expected.saturating_sub(2),
            expected + 1
        );
    }

    // Not in lockstep: each backend's probes keep a phase within the interval (the median
    // of arrival time modulo the interval), and the phases differ. lb spreads the first
    // probes by a hash of the backend's address: for 10.0.0.11-13:80 at 250 ms the
    // offsets are about 140, 113 and 82 ms, so the widest pair is ~58 ms apart; probes
    // started together would arrive within a few ms of each other.
    let interval = check.interval_ms as i64;
    let phases: Vec<i64> = arrivals
        .iter()
        .map(|a| {
            let mut p: Vec<i64> = a.iter().map(|d| d.as_millis() as i64 % interval).collect();
            p.sort_unstable();
            p.get(p.len() / 2).copied().unwrap_or(0)
        })
        .collect();
    let apart = |a: i64, b: i64| {
        let d = (a - b).rem_euclid(interval);
        d.min(interval - d)
    };
    let widest = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| apart(phases[i], phases[j]))
        .max()
        .unwrap_or(0);
    eprintln!("probe phases (ms within the interval): {phases:?}; widest pair {widest} ms");
    assert!(
        widest >= 20,
        "the backends are probed in lockstep: phases {phases:?} ms within {interval} ms"
    );
}

/// With a backend answering 500, once its DOWN is visible, new connections never land
/// on it and none fail; once it is UP again, it takes connections again.
fn traffic_follows(mode: Mode, prefix: &str) {
    let mut r = Running::start(mode, prefix, &FAST.json(), false);
    wait_probed(&r);
    let counts = r.spread(60);
    assert_answered_by(&counts, 60, &["b1", "b2", "b3"]);
    assert!(counts.get("b1").is_some_and(|&n| n > 0), "{counts:?}");

    // A request that lands on b1 from now on is visible: its body is "b1" (with a 500).
    r.lab.set_status(0, 500);
    poll_backend(&r, 0, "down", |e| {
        health_state(e) == "down" && e["in_rotation"] == false
    });
    assert_answered_by(&r.spread(100), 100, &["b2", "b3"]);

    r.lab.set_status(0, 200);
    poll_backend(&r, 0, "up and in rotation", |e| {
        health_state(e) == "up" && e["in_rotation"] == true
    });
    let counts = r.spread(60);
    assert_answered_by(&counts, 60, &["b1", "b2", "b3"]);
    assert!(
        counts.get("b1").is_some_and(|&n| n > 0),
        "b1 takes connections again: {counts:?}"
    );
}

#[test]
fn dsr_traffic_follows_health() {
    traffic_follows(Mode::Dsr, "lbh-7");
}

#[test]
fn nat_traffic_follows_health() {
    traffic_follows(Mode::Nat, "lbh-8");
}

/// The backend line of `addr` in the HTTP service's part of `lb service list`.
fn human_line(text: &str, addr: &str) -> String {
    let start = format!("  -> {addr} ");
    text.lines()
        .skip_while(|l| !l.starts_with("TCP  10.100.0.10:80 "))
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("no line for {addr} under the TCP service:\n{text}"))
        .to_string()
}

/// `lb service list` (human) shows each backend's health and last check result; `lb
/// stats --json` carries the health of every backend.
#[test]
fn dsr_cli_and_stats_show_health() {
    let mut r = Running::start(Mode::Dsr, "lbh-9", &FAST.json(), false);
    wait_probed(&r);
    r.lab.set_status(0, 503);
    poll_backend(&r, 0, "down", |e| health_state(e) == "down");
    assert_logged_once(&r, &transition_line(&r, 0, "DOWN", "HTTP 503"));

    let out = r.cli(&["service", "list"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().nth(1).unwrap_or("");
    assert!(
        header.contains("Health") && header.contains("Last check"),
        "{text}"
    );
    assert!(
        header.contains("Since") && header.contains("Fails"),
        "{text}"
    );
    // Columns: -> addr weight active inactive health since fails state rotation last...
    let line = human_line(&text, "10.0.0.11:80");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.get(5), Some(&"down"), "health of b1: {line}\n{text}");
    assert!(
        cols.get(6).is_some_and(|s| s.ends_with('s')),
        "time since the change: {line}"
    );
    let fails: u64 = cols.get(7).and_then(|f| f.parse().ok()).unwrap_or(0);
    assert!(
        fails >= FAST.fall,
        "consecutive failures shown ({fails}): {line}"
    );
    assert_eq!(
        cols.get(8..10),
        Some(&["ready", "no"][..]),
        "state, rotation of b1: {line}\n{text}"
    );
    assert!(line.ends_with(" HTTP 503"), "{line}\n{text}");
    for addr in ["10.0.0.12:80", "10.0.0.13:80"] {
        let line = human_line(&text, addr);
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.get(5), Some(&"up"), "{line}\n{text}");
        assert_eq!(
            cols.get(7..11),
            Some(&["0", "ready", "yes", "ok"][..]),
            "{line}\n{text}"
        );
    }

    let stats_health = |r: &Running| -> BTreeMap<String, String> {
        let out = r.cli(&["stats", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let stats: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        let svc = stats["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == "10.100.0.10:80/tcp"))
            .unwrap_or_else(|| panic!("no HTTP service in {stats:#}"))
            .clone();
        svc["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                (
                    b["backend"].as_str().unwrap_or("?").to_string(),
                    b["health"]["state"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    };
    let expect = |b1: &str| -> BTreeMap<String, String> {
        [
            ("10.0.0.11:80", b1),
            ("10.0.0.12:80", "up"),
            ("10.0.0.13:80", "up"),
        ]
        .into_iter()
        .map(|(a, h)| (a.to_string(), h.to_string()))
        .collect()
    };
    assert_eq!(stats_health(&r), expect("down"));

    r.lab.set_status(0, 200);
    poll_backend(&r, 0, "up and in rotation", |e| {
        health_state(e) == "up" && e["in_rotation"] == true
    });
    let out = r.cli(&["service", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = human_line(&text, "10.0.0.11:80");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.get(5), Some(&"up"), "{line}\n{text}");
    assert_eq!(
        cols.get(7..11),
        Some(&["0", "ready", "yes", "ok"][..]),
        "{line}\n{text}"
    );
    assert_eq!(stats_health(&r), expect("up"));
}
