//! The capabilities the systemd unit keeps (`CapabilityBoundingSet=` of
//! lb-userspace/debian/lb.service) are enough for lb, and each is needed. lb runs in the
//! lab (DSR, health checks off, so a backend's MAC is only learnt through lb's own
//! neighbour solicitation) under `setpriv --bounding-set` with exactly that set, as
//! systemd would run it:
//! - with the set: it starts, serves requests, stops on SIGUSR2 leaving the datapath,
//!   the next start adopts it and serves, SIGTERM detaches;
//! - without CAP_SYS_ADMIN: lb cannot load its maps; with CAP_BPF and CAP_PERFMON in its
//!   place a fresh start works, but adopting a pinned datapath fails;
//! - without CAP_NET_ADMIN: soliciting the backends' neighbours is refused, and no
//!   backend gets into rotation.
mod support;

use std::{thread::sleep, time::Duration};

use serde_json::Value;
use support::{
    lab::{Lab, Mode},
    running::{LB, all_in_rotation, pass_object},
};

/// The unit's `CapabilityBoundingSet=`, as written (`CAP_SYS_ADMIN`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit = include_str!("../lb-userspace/debian/lb.service");
    let sets: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .collect();
    let [set] = sets.as_slice() else {
        panic!("lb.service should have one CapabilityBoundingSet= line: {sets:?}");
    };
    set.split_whitespace().map(str::to_string).collect()
}

/// `setpriv` arguments giving a root process exactly `caps` (bounding set; nothing
/// inheritable), as systemd's CapabilityBoundingSet= does.
fn setpriv(caps: &[String]) -> Vec<String> {
    let bounding: String = caps
        .iter()
        .map(|c| {
            format!(
                ",+{}",
                c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase()
            )
        })
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all{bounding}"),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

struct Setup {
    lab: Lab,
    config: String,
    socket: String,
    pin_dir: String,
    logs: u32,
}

impl Setup {
    /// Starts `lb run` with only `caps` (and `env`); returns its pid and log name.
    fn start(&mut self, caps: &[String], env: &[&str]) -> (u32, String) {
        self.logs += 1;
        let log = format!("lb-{}.log", self.logs);
        let mut args: Vec<String> = vec!["env".into()];
        args.extend(env.iter().map(|e| e.to_string()));
        args.extend(setpriv(caps));
        args.extend(
            [
                LB,
                "--socket",
                &self.socket,
                "run",
                "--iface",
                "eth0",
                "--config",
                &self.config,
                "--pin-dir",
                &self.pin_dir,
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ns = self.lab.lb_ns();
        (self.lab.spawn(&ns, &args, &log), log)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.lab.dir.join(name)).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec![LB, "--socket", &self.socket];
        all.extend(args);
        self.lab
            .exec(&self.lab.lb_ns(), &all)
            .output()
            .expect("running lb")
    }

    /// Polls `lb service list --json` (20 s at most) until `cond`; panics with the log.
    fn wait_list(&self, what: &str, log: &str, cond: impl Fn(&Value) -> bool) {
        for _ in 0..200 {
            let out = self.cli(&["service", "list", "--json"]);
            if out.status.success()
                && cond(&serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
            {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; the log:\n{}", self.log(log));
    }

    /// Polls the daemon's log (20 s at most) until it contains `text`.
    fn wait_log(&self, log: &str, text: &str) {
        for _ in 0..200 {
            if self.log(log).contains(text) {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!("the log never said `{text}`:\n{}", self.log(log));
    }

    /// `n` HTTP requests from the client to the VIP, each on a new connection; how many
    /// were answered.
    fn answered(&self, n: usize) -> usize {
        let script = format!(
            "for i in $(seq 1 {n}); do curl -s -m 5 -H 'Connection: close' http://{}/ || echo; done",
            self.lab.vip()
        );
        let out = self
            .lab
            .exec(&self.lab.client_ns(), &["sh", "-c", &script])
            .output()
            .expect("curl loop");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("b"))
            .count()
    }

    /// Starts `lb run` with only `caps` and expects it to exit with a failure within 20 s,
    /// the kernel having said "Operation not permitted"; `what` names the failure to see.
    fn refused(&mut self, caps: &[String], what: &str) {
        let (pid, log) = self.start(caps, &[]);
        let status = self
            .lab
            .wait_exit(pid, Duration::from_secs(20))
            .expect("lb gives up within 20 s");
        assert!(!status.success(), "{what}:\n{}", self.log(&log));
        assert!(
            self.log(&log).contains("Operation not permitted"),
            "{}",
            self.log(&log)
        );
    }

    fn stop(&mut self, pid: u32, signal: i32, log: &str) {
        self.lab.signal(pid, signal);
        let status = self
            .lab
            .wait_exit(pid, Duration::from_secs(20))
            .expect("lb stops within 20 s");
        assert!(status.success(), "lb exited {status}:\n{}", self.log(log));
    }

    /// Forgets the neighbours the balancer's namespace knows, so that only lb's own
    /// solicitation can find the backends' MACs again.
    fn flush_neighbours(&self) {
        let out = self
            .lab
            .exec(&self.lab.lb_ns(), &["ip", "neigh", "flush", "all"])
            .output()
            .expect("ip neigh flush");
        assert!(out.status.success(), "ip neigh flush failed");
    }
}

#[test]
fn the_units_capabilities_run_lb_and_each_is_needed() {
    support::require_root();
    let caps = unit_capabilities();
    assert_eq!(
        caps.iter().map(String::as_str).collect::<Vec<_>>(),
        ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"],
        "this test shows why each capability is kept: update it with the unit"
    );
    let lab = Lab::up(Mode::Dsr, "caps", 3, &pass_object());
    // One DSR service and no health check at all: no probe makes the kernel resolve a
    // backend's MAC behind lb's back.
    let backends: Vec<String> = lab
        .backends
        .iter()
        .map(|b| format!(r#"{{"address": "{}"}}"#, b.addr))
        .collect();
    let text = format!(
        r#"{{"services": [{{"vip": "{}", "port": 80, "forwarding": "dsr",
            "health_check": {{"kind": "none"}}, "backends": [{}]}}]}}"#,
        lab.vip(),
        backends.join(", ")
    );
    let config = lab.write("lb.json", &text).to_string_lossy().into_owned();
    let mut s = Setup {
        socket: lab.dir.join("lb.sock").to_string_lossy().into_owned(),
        pin_dir: lab.pin_dir().to_string_lossy().into_owned(),
        config,
        lab,
        logs: 0,
    };
    let without =
        |cap: &str| -> Vec<String> { caps.iter().filter(|c| *c != cap).cloned().collect() };

    // With the unit's set: start, traffic, SIGUSR2, adoption, traffic, SIGTERM.
    s.flush_neighbours();
    let (pid, log) = s.start(&caps, &[]);
    s.wait_list("every backend in rotation", &log, all_in_rotation);
    assert_eq!(s.answered(20), 20, "the log:\n{}", s.log(&log));
    s.stop(pid, libc::SIGUSR2, &log);
    let (pid, log) = s.start(&caps, &[]);
    s.wait_log(&log, "adopted the datapath on eth0");
    s.wait_list("every backend in rotation", &log, all_in_rotation);
    assert_eq!(s.answered(20), 20, "the log:\n{}", s.log(&log));
    s.stop(pid, libc::SIGTERM, &log);
    assert!(
        s.log(&log).contains("detached from eth0"),
        "{}",
        s.log(&log)
    );

    // Without CAP_SYS_ADMIN lb cannot load anything (the unit grants no CAP_BPF: CAP_SYS_ADMIN
    // carries it). The narrower CAP_BPF and CAP_PERFMON instead of it start a fresh
    // datapath, but one left running cannot be adopted (its maps are opened by id).
    s.refused(&without("CAP_SYS_ADMIN"), "started without CAP_SYS_ADMIN");
    let no_sys_admin: Vec<String> = ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        .map(String::from)
        .to_vec();
    let (pid, log) = s.start(&no_sys_admin, &[]);
    s.wait_list("every backend in rotation", &log, all_in_rotation);
    s.stop(pid, libc::SIGUSR2, &log);
    s.refused(&no_sys_admin, "adopted without CAP_SYS_ADMIN");
    let detach = s.cli(&["detach", "--pin-dir", &s.pin_dir]);
    assert!(
        detach.status.success(),
        "lb detach: {}",
        String::from_utf8_lossy(&detach.stderr)
    );

    // Without CAP_NET_ADMIN, the kernel refuses lb's neighbour solicitations (logged at
    // debug level), so the backends' MACs stay unknown and none is in rotation.
    s.flush_neighbours();
    let (pid, log) = s.start(&without("CAP_NET_ADMIN"), &["RUST_LOG=debug"]);
    s.wait_log(&log, "asking the kernel to resolve");
    let refused = s.log(&log);
    let line = refused
        .lines()
        .find(|l| l.contains("asking the kernel to resolve"))
        .unwrap_or_default();
    assert!(line.contains("Operation not permitted"), "{refused}");
    let list = s.cli(&["service", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).expect("JSON");
    let dsr = &list["services"][0]["backends"];
    assert!(
        dsr.as_array()
            .is_some_and(|b| b.iter().all(|b| b["in_rotation"] == false)),
        "{list:#}"
    );
    s.stop(pid, libc::SIGTERM, &log);
}
