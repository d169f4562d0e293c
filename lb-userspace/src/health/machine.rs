//! The per-backend rise/fall state machine, its serializable snapshot, and the spreading of
//! probe start times over the check interval.
//!
//! A backend changes state only after a run of agreeing results: `Down -> Up` after
//! [`Thresholds::rise`] consecutive successes, `Up -> Down` after [`Thresholds::fall`]
//! consecutive failures. A result of the other kind resets the run.

use std::{
    fmt,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::probe::ProbeResult;

/// Default time between two probes of one backend (HAProxy's `inter`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Default overall timeout of one probe (HAProxy's `timeout check`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Health parameters (defaults follow HAProxy: inter 2 s, rise 2, fall 3; timeout 1 s —
/// see [`DEFAULT_INTERVAL`] and [`DEFAULT_TIMEOUT`]).
///
/// A value of 0 is treated as 1: one result is always enough to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successes that bring a `Down` backend `Up`.
    pub rise: u32,
    /// Consecutive failures that bring an `Up` backend `Down`.
    pub fall: u32,
}

impl Default for Thresholds {
    /// rise 2, fall 3.
    fn default() -> Self {
        Thresholds { rise: 2, fall: 3 }
    }
}

/// A backend's health as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Takes traffic.
    Up,
    /// Checks fail: takes no new traffic.
    Down,
}

impl fmt::Display for Health {
    /// `up` or `down`, as in JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// A change of state, reported by [`BackendHealth::record`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: Health,
    /// The state after.
    pub to: Health,
    /// The reason of the probe that caused it ("HTTP 503", or "2 checks passed").
    pub reason: String,
}

/// Per-backend health: current state, consecutive successes/failures, last result and
/// reason, time of the last transition (as a [`SystemTime`], for display).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    state: Health,
    consecutive_successes: u32,
    consecutive_failures: u32,
    last_result: Option<ProbeResult>,
    last_change: SystemTime,
}

impl BackendHealth {
    /// `initial`: the state before any probe. The caller decides (a new backend starts Up
    /// when checks are `none`, and — like HAProxy — Up otherwise too, so a fresh config
    /// takes traffic at once; keepalived's `alpha` starts Down; support both via this argument).
    /// `now` becomes the time of the last change.
    pub fn new(initial: Health, now: SystemTime) -> Self {
        BackendHealth {
            state: initial,
            consecutive_successes: 0,
            consecutive_failures: 0,
            last_result: None,
            last_change: now,
        }
    }

    /// Records one probe result. Returns `Some(transition)` when the state changes:
    /// Down -> Up after `rise` consecutive successes, Up -> Down after `fall` consecutive
    /// failures. A success resets the failure count and the other way round; counts go on
    /// past the thresholds (saturating), without further transitions.
    pub fn record(
        &mut self,
        result: &ProbeResult,
        t: &Thresholds,
        now: SystemTime,
    ) -> Option<Transition> {
        let change = match result {
            ProbeResult::Up => {
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                self.consecutive_failures = 0;
                let n = self.consecutive_successes;
                (self.state == Health::Down && n >= t.rise.max(1)).then(|| {
                    let checks = if n == 1 { "check" } else { "checks" };
                    (Health::Up, format!("{n} {checks} passed"))
                })
            }
            ProbeResult::Fail(reason) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.consecutive_successes = 0;
                (self.state == Health::Up && self.consecutive_failures >= t.fall.max(1))
                    .then(|| (Health::Down, reason.clone()))
            }
        };
        self.last_result = Some(result.clone());
        let (to, reason) = change?;
        let from = self.state;
        self.state = to;
        self.last_change = now;
        Some(Transition { from, to, reason })
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Failures in a row, up to the latest result (0 after a success).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Successes in a row, up to the latest result (0 after a failure).
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    /// The latest result, `None` before the first probe.
    pub fn last_result(&self) -> Option<&ProbeResult> {
        self.last_result.as_ref()
    }

    /// When the state last changed (or the creation time, if it never did).
    pub fn last_change(&self) -> SystemTime {
        self.last_change
    }

    /// The state for display (CLI, JSON).
    pub fn snapshot(&self) -> HealthSnapshot {
        let since_epoch = self
            .last_change
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        HealthSnapshot {
            state: self.state,
            last_result: self.last_result.as_ref().map(ToString::to_string),
            last_change_unix_ms: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
            consecutive_failures: self.consecutive_failures,
            consecutive_successes: self.consecutive_successes,
        }
    }
}

/// A backend's health for display: what the CLI prints and the control socket sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    /// The current state.
    pub state: Health,
    /// `"ok"` or the latest failure reason; `None` before the first probe.
    pub last_result: Option<String>,
    /// When the state last changed, in milliseconds since the Unix epoch (0 if before it).
    pub last_change_unix_ms: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Successes in a row.
    pub consecutive_successes: u32,
}

/// The delay before a backend's first probe, so that a pool is not probed in lockstep:
/// deterministic per backend (a hash of its address and port) and spread uniformly over
/// `[0, interval)`. A zero `interval` gives zero.
pub fn start_offset(addr: SocketAddr, interval: Duration) -> Duration {
    let hash = match addr {
        SocketAddr::V4(a) => splitmix64((u64::from(a.ip().to_bits()) << 16) | u64::from(a.port())),
        SocketAddr::V6(a) => {
            let bits = a.ip().to_bits();
            splitmix64(
                splitmix64((bits >> 64) as u64 ^ splitmix64(bits as u64)) ^ u64::from(a.port()),
            )
        }
    };
    // Intervals beyond u64 nanoseconds (~584 years) are spread over the first 584 years.
    let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    // hash / 2^64 is in [0, 1): the product stays below `nanos` and fits in u64.
    let offset = (u128::from(hash) * u128::from(nanos)) >> 64;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(0))
}

/// SplitMix64's output function: a bijective mix of all 64 bits (Steele et al., 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// A fixed, non-epoch time, plus `secs`.
    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123) + Duration::from_secs(secs)
    }

    fn fail(reason: &str) -> ProbeResult {
        ProbeResult::Fail(reason.to_owned())
    }

    fn transition(from: Health, to: Health, reason: &str) -> Option<Transition> {
        Some(Transition {
            from,
            to,
            reason: reason.to_owned(),
        })
    }

    const DEFAULT: Thresholds = Thresholds { rise: 2, fall: 3 };

    #[test]
    fn defaults_follow_haproxy() {
        assert_eq!(Thresholds::default(), DEFAULT);
        assert_eq!(DEFAULT_INTERVAL, Duration::from_secs(2));
        assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(1));
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = BackendHealth::new(Health::Up, at(0));
        assert_eq!(h.record(&fail("connection refused"), &DEFAULT, at(1)), None);
        assert_eq!(
            h.record(&fail("timeout after 500 ms"), &DEFAULT, at(2)),
            None
        );
        assert_eq!(h.state(), Health::Up);
        assert_eq!(h.consecutive_failures(), 2);
        assert_eq!(h.last_change(), at(0));
        // The third failure's own reason is the transition's.
        assert_eq!(
            h.record(&fail("HTTP 503"), &DEFAULT, at(3)),
            transition(Health::Up, Health::Down, "HTTP 503")
        );
        assert_eq!(h.state(), Health::Down);
        assert_eq!(h.last_change(), at(3));
        // Further failures count on without another transition.
        assert_eq!(h.record(&fail("HTTP 503"), &DEFAULT, at(4)), None);
        assert_eq!(h.consecutive_failures(), 4);
        assert_eq!(h.last_change(), at(3));

        assert_eq!(h.record(&ProbeResult::Up, &DEFAULT, at(5)), None);
        assert_eq!(h.consecutive_failures(), 0);
        assert_eq!(h.consecutive_successes(), 1);
        assert_eq!(
            h.record(&ProbeResult::Up, &DEFAULT, at(6)),
            transition(Health::Down, Health::Up, "2 checks passed")
        );
        assert_eq!(h.state(), Health::Up);
        assert_eq!(h.last_change(), at(6));
        assert_eq!(h.record(&ProbeResult::Up, &DEFAULT, at(7)), None);
        assert_eq!(h.consecutive_successes(), 3);
    }

    #[test]
    fn interleaved_results_reset_the_counts() {
        let mut h = BackendHealth::new(Health::Up, at(0));
        for (i, result) in [fail("a"), fail("b"), ProbeResult::Up, fail("c"), fail("d")]
            .iter()
            .enumerate()
        {
            assert_eq!(h.record(result, &DEFAULT, at(i as u64)), None, "result {i}");
        }
        assert_eq!(h.state(), Health::Up);
        assert_eq!(h.consecutive_failures(), 2);
        assert_eq!(h.consecutive_successes(), 0);
        assert_eq!(
            h.record(&fail("e"), &DEFAULT, at(9)),
            transition(Health::Up, Health::Down, "e")
        );

        // And on the way up.
        for (i, result) in [ProbeResult::Up, fail("f"), ProbeResult::Up]
            .iter()
            .enumerate()
        {
            assert_eq!(
                h.record(result, &DEFAULT, at(10 + i as u64)),
                None,
                "result {i}"
            );
        }
        assert_eq!(h.state(), Health::Down);
        assert_eq!(h.consecutive_successes(), 1);
        assert!(h.record(&ProbeResult::Up, &DEFAULT, at(20)).is_some());
    }

    #[test]
    fn initial_down_needs_rise_successes() {
        let mut h = BackendHealth::new(Health::Down, at(0));
        assert_eq!(h.state(), Health::Down);
        assert_eq!(h.last_result(), None);
        // Failures while Down change nothing.
        assert_eq!(h.record(&fail("connection refused"), &DEFAULT, at(1)), None);
        assert_eq!(h.record(&ProbeResult::Up, &DEFAULT, at(2)), None);
        assert_eq!(h.state(), Health::Down);
        assert_eq!(
            h.record(&ProbeResult::Up, &DEFAULT, at(3)),
            transition(Health::Down, Health::Up, "2 checks passed")
        );
        assert_eq!(h.last_result(), Some(&ProbeResult::Up));
    }

    #[test]
    fn rise_one_and_fall_one() {
        let t = Thresholds { rise: 1, fall: 1 };
        let mut h = BackendHealth::new(Health::Up, at(0));
        assert_eq!(
            h.record(&fail("connection reset"), &t, at(1)),
            transition(Health::Up, Health::Down, "connection reset")
        );
        assert_eq!(
            h.record(&ProbeResult::Up, &t, at(2)),
            transition(Health::Down, Health::Up, "1 check passed")
        );
        assert_eq!(
            h.record(&fail("HTTP 500"), &t, at(3)),
            transition(Health::Up, Health::Down, "HTTP 500")
        );
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let t = Thresholds { rise: 0, fall: 0 };
        let mut h = BackendHealth::new(Health::Up, at(0));
        assert!(h.record(&fail("x"), &t, at(1)).is_some());
        assert!(h.record(&ProbeResult::Up, &t, at(2)).is_some());
        // A success while Up (or a failure while Down) is never a transition.
        assert_eq!(h.record(&ProbeResult::Up, &t, at(3)), None);
    }

    #[test]
    fn snapshot_content() {
        let mut h = BackendHealth::new(Health::Up, at(0));
        assert_eq!(
            h.snapshot(),
            HealthSnapshot {
                state: Health::Up,
                last_result: None,
                last_change_unix_ms: 1_700_000_000_123,
                consecutive_failures: 0,
                consecutive_successes: 0,
            }
        );
        let t = Thresholds { rise: 2, fall: 1 };
        h.record(&fail("HTTP 200 but body lacks \"ok\""), &t, at(5));
        h.record(&fail("HTTP 503"), &t, at(6));
        let snapshot = h.snapshot();
        assert_eq!(
            snapshot,
            HealthSnapshot {
                state: Health::Down,
                last_result: Some("HTTP 503".to_owned()),
                last_change_unix_ms: 1_700_000_005_123,
                consecutive_failures: 2,
                consecutive_successes: 0,
            }
        );
        assert_eq!(
            serde_json::to_value(&snapshot).expect("serialize"),
            serde_json::json!({
                "state": "down",
                "last_result": "HTTP 503",
                "last_change_unix_ms": 1_700_000_005_123_u64,
                "consecutive_failures": 2,
                "consecutive_successes": 0,
            })
        );
        h.record(&ProbeResult::Up, &t, at(7));
        let snapshot = h.snapshot();
        assert_eq!(snapshot.last_result.as_deref(), Some("ok"));
        assert_eq!(snapshot.consecutive_successes, 1);
        assert_eq!(snapshot.state, Health::Down);
    }

    #[test]
    fn snapshot_before_epoch_is_zero() {
        let h = BackendHealth::new(Health::Up, UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(h.snapshot().last_change_unix_ms, 0);
    }

    #[test]
    fn health_display_matches_json() {
        for health in [Health::Up, Health::Down] {
            assert_eq!(
                serde_json::to_value(health).expect("serialize"),
                serde_json::Value::String(health.to_string())
            );
        }
        assert_eq!(Health::Down.to_string(), "down");
    }

    fn pool(n: u32) -> impl Iterator<Item = SocketAddr> {
        let base = Ipv4Addr::new(10, 0, 0, 1).to_bits();
        (0..n).map(move |i| SocketAddr::new(Ipv4Addr::from_bits(base + i).into(), 8080))
    }

    #[test]
    fn start_offset_is_deterministic_and_below_interval() {
        let interval = Duration::from_secs(1);
        let a = SocketAddr::new(Ipv4Addr::new(192, 0, 2, 7).into(), 80);
        assert_eq!(start_offset(a, interval), start_offset(a, interval));
        assert_ne!(
            start_offset(a, interval),
            start_offset(SocketAddr::new(a.ip(), 81), interval)
        );
        for interval in [
            Duration::from_nanos(1),
            Duration::from_millis(3),
            Duration::from_secs(2),
            Duration::MAX,
        ] {
            for addr in pool(1000) {
                assert!(
                    start_offset(addr, interval) < interval,
                    "{addr} {interval:?}"
                );
            }
        }
        assert_eq!(start_offset(a, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn start_offset_spreads() {
        let interval = Duration::from_secs(1);
        let buckets = |addrs: &mut dyn Iterator<Item = SocketAddr>| {
            let mut hit = [false; 10];
            for addr in addrs {
                hit[(start_offset(addr, interval).as_millis() / 100) as usize] = true;
            }
            hit.iter().filter(|&&h| h).count()
        };
        // Consecutive addresses, one port.
        assert!(buckets(&mut pool(100)) >= 8);
        // One address, consecutive ports.
        let ip = Ipv4Addr::new(10, 1, 2, 3).into();
        assert!(buckets(&mut (8000..8100).map(|port| SocketAddr::new(ip, port))) >= 8);
    }
}
