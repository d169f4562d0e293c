//! A lab with `lb run` attached, for the end-to-end and health tests.
use std::{collections::BTreeMap, path::PathBuf, thread::sleep, time::Duration};

use serde_json::Value;

use super::lab::{Lab, Mode};

pub const LB: &str = env!("CARGO_BIN_EXE_lb");

pub fn pass_object() -> PathBuf {
    PathBuf::from(concat!(env!("OUT_DIR"), "/xdp-pass"))
}

/// A lab with `lb run` attached.
pub struct Running {
    pub lab: Lab,
    pub socket: String,
    pub lb_pid: u32,
}

/// Fast checks so tests do not wait long for health.
pub const QUICK_CHECK: &str = r#"{"kind": "http", "path": "/", "expect_status": 200, "interval_ms": 300, "timeout_ms": 250, "rise": 1, "fall": 2}"#;

impl Running {
    pub fn start(mode: Mode, prefix: &str, check: &str, persistence: bool) -> Running {
        super::require_root();
        let mut lab = Lab::up(mode, prefix, 3, &pass_object());
        let config = lab.write("lb.json", &lab.config(check, persistence));
        let socket = lab.dir.join("lb.sock").to_string_lossy().into_owned();
        let mut args = vec![LB.to_string(), "run".into()];
        for iface in lab.lb_ifaces() {
            args.push("--iface".into());
            args.push(iface.into());
        }
        args.extend([
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--socket".into(),
            socket.clone(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let lb_ns = lab.lb_ns();
        let lb_pid = lab.spawn(&lb_ns, &args, "lb.log");
        let r = Running {
            lab,
            socket,
            lb_pid,
        };
        r.wait_until("every backend up and in rotation", |list| {
            list["services"].as_array().is_some_and(|s| {
                s.iter().all(|svc| {
                    svc["backends"]
                        .as_array()
                        .is_some_and(|b| b.iter().all(|b| b["in_rotation"] == true))
                })
            })
        });
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.lab.dir.join("lb.log")).unwrap_or_default()
    }

    /// `lb <args>` against this daemon, inside the balancer's namespace.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec![LB, "--socket", &self.socket];
        all.extend(args);
        self.lab
            .exec(&self.lab.lb_ns(), &all)
            .output()
            .expect("running lb")
    }

    pub fn list(&self) -> Value {
        let out = self.cli(&["service", "list", "--json"]);
        assert!(
            out.status.success(),
            "lb service list: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// Polls `lb service list` until `cond` holds (bounded: 20 s).
    pub fn wait_until(&self, what: &str, cond: impl Fn(&Value) -> bool) {
        for _ in 0..200 {
            let out = self.cli(&["service", "list", "--json"]);
            if out.status.success()
                && cond(&serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
            {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for: {what}\nlast list: {}\nlb log:\n{}",
            self.list(),
            self.log()
        );
    }

    /// `n` HTTP requests from the client to the VIP, each on its own TCP connection;
    /// returns how many each backend answered (and failures under "error").
    pub fn spread(&self, n: usize) -> BTreeMap<String, usize> {
        let url = format!("http://{}/", self.lab.vip());
        let mut counts = BTreeMap::new();
        // One curl for all requests: `Connection: close` makes each one a new connection.
        let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), n).collect();
        let mut args = vec![
            "curl",
            "-s",
            "-m",
            "5",
            "-H",
            "Connection: close",
            "-w",
            "\n",
        ];
        args.extend(urls);
        let out = self
            .lab
            .exec(&self.lab.client_ns(), &args)
            .output()
            .expect("curl");
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            *counts.entry(line.to_string()).or_default() += 1;
        }
        let answered: usize = counts.values().sum();
        if answered < n {
            counts.insert("error".into(), n - answered);
        }
        counts
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lb log:\n{}", self.log());
        }
        self.lab.stop(self.lb_pid);
    }
}
