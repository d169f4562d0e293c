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
    /// The `lb run` command line (to start the daemon again).
    run_args: Vec<String>,
    /// Daemons started after the first (`Running::start_daemon`).
    started: u32,
    /// Next client source port for `spread` and `udp_spread`.
    next_port: std::sync::atomic::AtomicU16,
    /// Whether the clients (`spread`, `stream`, `udp_spread`) use the IPv6 VIP.
    pub ipv6: bool,
}

/// Fast checks so tests do not wait long for health.
/// (They leave room for a loaded machine: e2e tests check balancing, not detection time;
/// tests/health.rs checks the timing of transitions.)
pub const QUICK_CHECK: &str = r#"{"kind": "http", "path": "/", "expect_status": 200, "interval_ms": 500, "timeout_ms": 500, "rise": 1, "fall": 3}"#;

/// Whether `lb service list --json` shows every backend of every service in rotation.
pub fn all_in_rotation(list: &Value) -> bool {
    list["services"].as_array().is_some_and(|s| {
        s.iter().all(|svc| {
            svc["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|b| b["in_rotation"] == true))
        })
    })
}

impl Running {
    pub fn start(mode: Mode, prefix: &str, check: &str, persistence: bool) -> Running {
        Running::start_with(
            mode,
            prefix,
            |lab| lab.config(check, persistence),
            "every backend up and in rotation",
            all_in_rotation,
        )
    }

    /// Like [`Running::start`], but with the configuration `config` writes for the lab
    /// (e.g. [`Lab::config`] edited to add a backup), and waiting until `ready` holds for
    /// `lb service list --json` (described by `what`) instead of until every backend is in
    /// rotation, which a configuration with backups never reaches.
    pub fn start_with(
        mode: Mode,
        prefix: &str,
        config: impl FnOnce(&Lab) -> String,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Running {
        Running::start_with_args(mode, prefix, config, &[], what, ready)
    }

    /// Like [`Running::start_with`], with `extra` appended to `lb run`'s arguments.
    pub fn start_with_args(
        mode: Mode,
        prefix: &str,
        config: impl FnOnce(&Lab) -> String,
        extra: &[&str],
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Running {
        super::require_root();
        let lab = Lab::up(mode, prefix, 3, &pass_object());
        Running::launch(lab, false, config, extra, what, ready)
    }

    /// [`Running::start`] over IPv6: a dual-stack lab running [`Lab::config6`] (the same
    /// services on the IPv6 VIP and the backends' IPv6 addresses), whose clients
    /// (`spread`, `stream`, `udp_spread`) use the IPv6 VIP.
    pub fn start6(mode: Mode, prefix: &str, check: &str, persistence: bool) -> Running {
        super::require_root();
        let lab = Lab::up_dual_stack(mode, prefix, 3, &pass_object());
        Running::launch(
            lab,
            true,
            |lab| lab.config6(check, persistence),
            &[],
            "every backend up and in rotation",
            all_in_rotation,
        )
    }

    fn launch(
        mut lab: Lab,
        ipv6: bool,
        config: impl FnOnce(&Lab) -> String,
        extra: &[&str],
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Running {
        let text = config(&lab);
        let config = lab.write("lb.json", &text);
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
            "--pin-dir".into(),
            lab.pin_dir().to_string_lossy().into_owned(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let run_args = args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let lb_ns = lab.lb_ns();
        let lb_pid = lab.spawn(&lb_ns, &args, "lb.log");
        let r = Running {
            lab,
            socket,
            lb_pid,
            run_args,
            started: 0,
            next_port: std::sync::atomic::AtomicU16::new(30000),
            ipv6,
        };
        r.wait_until(what, ready);
        r
    }

    /// The VIP the clients use.
    pub fn vip(&self) -> std::net::IpAddr {
        let vip = if self.ipv6 {
            self.lab.vip6()
        } else {
            self.lab.vip()
        };
        vip.parse().expect("a VIP")
    }

    /// `http://<VIP>` (the address bracketed for IPv6).
    pub fn vip_url(&self) -> String {
        match self.vip() {
            std::net::IpAddr::V4(a) => format!("http://{a}"),
            std::net::IpAddr::V6(a) => format!("http://[{a}]"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.lab.dir.join("lb.log")).unwrap_or_default()
    }

    /// Starts another `lb run` with the first one's command line, `extra` appended and
    /// `env` set; returns its pid and the name of its log (in the lab directory). It does
    /// not wait for it.
    pub fn start_daemon(&mut self, extra: &[&str], env: &[(&str, &str)]) -> (u32, String) {
        self.started += 1;
        let log = format!("lb-{}.log", self.started);
        let mut args: Vec<String> = vec!["env".into()];
        args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        args.extend(self.run_args.iter().cloned());
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ns = self.lab.lb_ns();
        (self.lab.spawn(&ns, &args, &log), log)
    }

    /// A log in the lab directory (e.g. of a daemon `start_daemon` started).
    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.lab.dir.join(name)).unwrap_or_default()
    }

    /// `lb status`: whether it exited 0, and its line.
    pub fn status(&self) -> (bool, String) {
        let out = self.cli(&["status"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    /// Waits (20 s at most) until `lb status` says the daemon serves.
    pub fn wait_serving(&self, log: &str) {
        for _ in 0..200 {
            if self.status().0 {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!(
            "no daemon serving within 20 s: {}\nits log:\n{}",
            self.status().1,
            self.log_of(log)
        );
    }

    /// The XDP program each of the balancer's interfaces runs (0: none).
    pub fn prog_ids(&self) -> Vec<u32> {
        self.lab
            .lb_ifaces()
            .into_iter()
            .map(|iface| {
                let out = self
                    .lab
                    .exec(
                        &self.lab.lb_ns(),
                        &["ip", "-d", "link", "show", "dev", iface],
                    )
                    .output()
                    .expect("ip");
                super::daemon::parse_xdp_program(&String::from_utf8_lossy(&out.stdout))
                    .map_or(0, |p| p.id)
            })
            .collect()
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
        self.wait_until_within(what, Duration::from_secs(20), cond)
    }

    /// [`Running::wait_until`] with another bound.
    pub fn wait_until_within(&self, what: &str, limit: Duration, cond: impl Fn(&Value) -> bool) {
        for _ in 0..limit.as_millis() / 100 {
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

    /// `n` HTTP requests from the client to the VIP, each on its own TCP connection
    /// from its own source port (taken in order from a per-lab range, so the spread is
    /// a fixed property of the hash and the table, not of random ephemeral ports);
    /// returns how many each backend answered (and failures under "error").
    pub fn spread(&self, n: usize) -> BTreeMap<String, usize> {
        let first = self
            .next_port
            .fetch_add(n as u16, std::sync::atomic::Ordering::Relaxed);
        let url = format!("{}/", self.vip_url());
        let script = format!(
            "for p in $(seq {first} {last}); do curl -s -m 5 --local-port $p -H 'Connection: close' -w '\\n' {url} || echo error; done",
            last = first as usize + n - 1
        );
        let out = self
            .lab
            .exec(&self.lab.client_ns(), &["sh", "-c", &script])
            .output()
            .expect("curl loop");
        let mut counts = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            *counts.entry(line.to_string()).or_default() += 1;
        }
        let answered: usize = counts.values().sum();
        if answered < n {
            *counts.entry("error".into()).or_default() += n - answered;
        }
        counts
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lb log:\n{}", self.log());
            for i in 1..=self.started {
                let name = format!("lb-{i}.log");
                eprintln!("{name}:\n{}", self.log_of(&name));
            }
        }
        self.lab.stop(self.lb_pid);
    }
}

/// A long download (`/big`) from the client through the VIP.
pub struct Stream {
    child: std::process::Child,
    headers: PathBuf,
}

impl Stream {
    /// The backend serving it (from its X-Backend header), once the headers arrived.
    pub fn backend(&self) -> String {
        for _ in 0..100 {
            let text = std::fs::read_to_string(&self.headers).unwrap_or_default();
            if let Some(v) = text.lines().find_map(|l| {
                l.strip_prefix("X-Backend: ")
                    .or_else(|| l.strip_prefix("x-backend: "))
            }) {
                return v.trim().to_string();
            }
            sleep(Duration::from_millis(50));
        }
        panic!("no X-Backend header within 5 s");
    }

    /// Waits for the download; returns the bytes received (panics if curl failed).
    pub fn finish(mut self) -> u64 {
        let out = self.child.wait().expect("waiting for curl");
        let mut stdout = String::new();
        use std::io::Read as _;
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout)
            .expect("curl output");
        assert!(out.success(), "the stream broke: curl {out}");
        stdout.trim().parse().expect("curl size_download")
    }
}

impl Running {
    /// Starts downloading `/big` from the VIP (about 4 s at the lab's rate limit).
    pub fn stream(&self) -> Stream {
        self.stream_with(&[])
    }

    /// [`Running::stream`] with more arguments for curl (e.g. `--limit-rate`).
    pub fn stream_with(&self, extra: &[&str]) -> Stream {
        let headers = self
            .lab
            .dir
            .join(format!("stream-{}.headers", std::process::id()));
        let _ = std::fs::remove_file(&headers);
        let url = format!("{}/big", self.vip_url());
        let child = self
            .lab
            .exec(
                &self.lab.client_ns(),
                &[
                    "curl",
                    "-s",
                    "-f",
                    "-m",
                    "30",
                    "-D",
                    headers.to_str().expect("path"),
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                ]
                .into_iter()
                .chain(extra.iter().copied())
                .chain([url.as_str()])
                .collect::<Vec<_>>(),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl");
        Stream { child, headers }
    }

    /// `n` UDP datagrams to VIP:5353, each from its own source port; counts replies by
    /// the backend named in them (missing replies under "error").
    pub fn udp_spread(&self, n: usize) -> BTreeMap<String, usize> {
        let ns = self.lab.client_ns();
        let vip = self.vip();
        let first = self
            .next_port
            .fetch_add(n as u16, std::sync::atomic::Ordering::Relaxed);
        std::thread::spawn(move || {
            super::lab::enter_netns(&ns);
            let mut counts = BTreeMap::new();
            for i in 0..n {
                *counts.entry(udp_ask(vip, first + i as u16)).or_default() += 1;
            }
            counts
        })
        .join()
        .expect("udp client thread")
    }

    /// One UDP datagram to VIP:5353 from the client's port `port`: the backend that
    /// answered ("error" when none did).
    pub fn udp_from(&self, port: u16) -> String {
        let ns = self.lab.client_ns();
        let vip = self.vip();
        std::thread::spawn(move || {
            super::lab::enter_netns(&ns);
            udp_ask(vip, port)
        })
        .join()
        .expect("udp client thread")
    }
}

/// Sends one datagram to `vip`:5353 from `port` (in the calling thread's namespace);
/// returns the answer's backend name, or "error".
fn udp_ask(vip: std::net::IpAddr, port: u16) -> String {
    let any: std::net::IpAddr = if vip.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let s = std::net::UdpSocket::bind((any, port)).expect("udp socket");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s.send_to(b"hello\n", (vip, super::lab::UDP_PORT))
        .expect("send");
    let mut buf = [0u8; 64];
    match s.recv(&mut buf) {
        Ok(len) => String::from_utf8_lossy(&buf[..len]).trim().to_string(),
        Err(_) => "error".to_string(),
    }
}
