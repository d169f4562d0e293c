//! The redundancy labs' balancer nodes, and the active/standby pair.
//!
//! A [`Cluster`] is a [`Lab`] with several balancer nodes, each a namespace of its own
//! running `lb run` (own socket, pin directory and log) and, beside it, keepalived or
//! BIRD with files of its own (nothing under the host's /etc or /run is touched). The
//! keepalived and BIRD configurations are the repository's examples (examples/ha/), run
//! as they are apart from a few paths ([`render`]), so the examples are what the tests
//! prove.
//!
//! A [`Pair`] is the VRRP lab: a client, two balancers and three backends.
//! DSR (one L2 segment, bridge `br0` in `<p>-sw`):
//! ```text
//!   <p>-cli eth0 10.0.0.2 ──┐        10.100.0.0/24 on-link: the master answers ARP
//!   <p>-lb1 eth0 10.0.0.3 ──┤ br0    for the VIP 10.100.0.10, which keepalived
//!   <p>-lb2 eth0 10.0.0.4 ──┤        floats on eth0
//!   <p>-b1..3 10.0.0.11..13 ┘        VIP on lo
//! ```
//! NAT (the balancers route between two segments):
//! ```text
//!   <p>-cli 10.0.1.2 ── br0 (<p>-swc) ── eth0 10.0.1.3 <p>-lb1 eth1 10.0.2.3 ── br0 (<p>-swb) ── <p>-b1..3
//!                                    └── eth0 10.0.1.4 <p>-lb2 eth1 10.0.2.4 ──┘    10.0.2.11..13
//!   VIP 10.100.0.20 on the master's eth0, the backends' gateway 10.0.2.1 on its eth1
//!   (one keepalived sync group)
//! ```
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::lab::{
    Lab, Mode, addr, attach_pass, bridge, full_checksums, must, sysctl, to_bridge, veth,
};

/// The NAT pair's floating gateway of the backends.
pub const NAT_GATEWAY: &str = "10.0.2.1";

/// The keepalived examples, by mode and node (index 0: lb1, the preferred master).
const KEEPALIVED: [[&str; 2]; 2] = [
    [
        include_str!("../../../examples/ha/keepalived-dsr-lb1.conf"),
        include_str!("../../../examples/ha/keepalived-dsr-lb2.conf"),
    ],
    [
        include_str!("../../../examples/ha/keepalived-nat-lb1.conf"),
        include_str!("../../../examples/ha/keepalived-nat-lb2.conf"),
    ],
];

/// `text` with each `(from, to)` replaced; panics when `from` is missing, so that an
/// example and the lab cannot drift apart unnoticed.
pub fn render(name: &str, text: &str, replace: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in replace {
        assert!(
            out.contains(from),
            "{name} no longer contains `{from}`, which the lab replaces"
        );
        out = out.replace(from, to);
    }
    out
}

/// Runs `ip <args>`, panicking when it fails.
fn ip(args: &[&str]) {
    must(Command::new("ip").args(args));
}

/// One balancer node.
pub struct Node {
    /// `lb1`, `lb2`, ...
    pub name: String,
    pub ns: String,
    /// The interfaces lb attaches to.
    pub ifaces: Vec<&'static str>,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    /// The running `lb run`, keepalived and BIRD (pids of processes the lab started).
    pub lb: Option<u32>,
    pub keepalived: Option<u32>,
    pub bird: Option<u32>,
    /// The node's own directory (configurations, pid files, logs).
    pub dir: PathBuf,
    /// How many times `lb run` was started here (names its logs).
    lb_runs: u32,
}

impl Node {
    /// The log of the latest `lb run`, relative to the lab directory.
    fn lb_log(&self) -> String {
        format!("{}/lb-{}.log", self.name, self.lb_runs)
    }
}

/// A lab with balancer nodes.
pub struct Cluster {
    pub lab: Lab,
    pub nodes: Vec<Node>,
    /// The `lb` binary the nodes run.
    pub lb_bin: PathBuf,
    /// The configuration every node runs (the same file: determinism across nodes).
    pub config: PathBuf,
}

impl Cluster {
    pub fn new(lab: Lab, lb_bin: &Path) -> Cluster {
        let config = lab.dir.join("lb.json");
        Cluster {
            lab,
            nodes: Vec::new(),
            lb_bin: lb_bin.to_path_buf(),
            config,
        }
    }

    /// Adds node `name` (its namespace and directory); returns its index.
    pub fn add_node(&mut self, name: &str, ifaces: &[&'static str]) -> usize {
        let ns = self.lab.add_ns(name);
        sysctl(&ns, "net.ipv4.conf.all.rp_filter=0");
        sysctl(&ns, "net.ipv4.conf.default.rp_filter=0");
        let dir = self.lab.dir.join(name);
        std::fs::create_dir_all(&dir).expect("node directory");
        self.nodes.push(Node {
            name: name.to_string(),
            ns,
            ifaces: ifaces.to_vec(),
            socket: dir.join("lb.sock"),
            pin_dir: self.lab.pin_dir_of(name),
            lb: None,
            keepalived: None,
            bird: None,
            dir,
            lb_runs: 0,
        });
        self.nodes.len() - 1
    }

    /// Writes the configuration all nodes run.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("writing the lb configuration");
    }

    /// Starts `lb run` on node `i` (with `extra` arguments); does not wait for it.
    pub fn start_lb(&mut self, i: usize, extra: &[&str]) -> u32 {
        let n = &mut self.nodes[i];
        assert!(n.lb.is_none(), "lb already runs on {}", n.name);
        n.lb_runs += 1;
        let mut args: Vec<String> = vec![self.lb_bin.display().to_string(), "run".into()];
        for iface in &n.ifaces {
            args.extend(["--iface".into(), iface.to_string()]);
        }
        args.extend([
            "--config".into(),
            self.config.display().to_string(),
            "--socket".into(),
            n.socket.display().to_string(),
            "--name".into(),
            n.name.clone(),
            "--pin-dir".into(),
            n.pin_dir.display().to_string(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ns, log) = (n.ns.clone(), n.lb_log());
        let pid = self.lab.spawn(&ns, &args, &log);
        self.nodes[i].lb = Some(pid);
        pid
    }

    /// `lb <args>` against node `i`'s daemon, inside its namespace.
    pub fn lb(&self, i: usize, args: &[&str]) -> Output {
        let n = &self.nodes[i];
        let socket = n.socket.display().to_string();
        let mut all = vec![
            self.lb_bin.to_str().expect("UTF-8 path"),
            "--socket",
            &socket,
        ];
        all.extend(args);
        self.lab.exec(&n.ns, &all).output().expect("running lb")
    }

    /// `lb status` of node `i`: whether it serves, and its line.
    pub fn status(&self, i: usize) -> (bool, String) {
        let out = self.lb(i, &["status"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    /// The latest `lb run` log of node `i`.
    pub fn lb_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.lab.dir.join(self.nodes[i].lb_log())).unwrap_or_default()
    }

    /// Waits (at most `limit`) until node `i`'s daemon serves.
    pub fn wait_serving(&self, i: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.status(i).0 {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!(
            "{} does not serve within {limit:?}: {}\nits log:\n{}",
            self.nodes[i].name,
            self.status(i).1,
            self.lb_log(i)
        );
    }

    /// `lb service list --json` of node `i` (Null when it does not answer).
    pub fn list(&self, i: usize) -> Value {
        let out = self.lb(i, &["service", "list", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Waits (at most `limit`) until every backend of every service is in rotation on
    /// node `i`.
    pub fn wait_all_in_rotation(&self, i: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if all_in_rotation(&self.list(i)) {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!(
            "{}: not every backend is in rotation within {limit:?}: {}\n{}",
            self.nodes[i].name,
            self.list(i),
            self.lb_log(i)
        );
    }

    /// Sends `signal` to node `i`'s `lb run`.
    pub fn signal_lb(&self, i: usize, signal: i32) {
        let pid = self.nodes[i].lb.expect("lb runs on the node");
        self.lab.signal(pid, signal);
    }

    /// Waits (at most `limit`) for node `i`'s `lb run` to exit after a signal.
    pub fn wait_lb_exit(&mut self, i: usize, limit: Duration) -> ExitStatus {
        let pid = self.nodes[i].lb.take().expect("lb runs on the node");
        let status = self.lab.wait_exit(pid, limit).unwrap_or_else(|| {
            panic!(
                "lb run on {} did not exit within {limit:?}:\n{}",
                self.nodes[i].name,
                self.lb_log(i)
            )
        });
        self.lab.stop(pid);
        status
    }

    /// New connections node `i` has taken, all services together (`lb stats`).
    pub fn new_conns(&self, i: usize) -> u64 {
        let out = self.lb(i, &["stats", "--json"]);
        let stats: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        stats["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["traffic"]["conns"].as_u64())
            .sum()
    }

    /// New connections per node so far.
    pub fn conns(&self) -> Vec<u64> {
        (0..self.nodes.len()).map(|i| self.new_conns(i)).collect()
    }

    /// New connections per node since `before` (what [`Cluster::conns`] returned).
    pub fn conns_since(&self, before: &[u64]) -> Vec<u64> {
        self.conns()
            .iter()
            .zip(before)
            .map(|(now, then)| now.saturating_sub(*then))
            .collect()
    }

    /// The client ports of the connections node `i`'s connection table holds.
    pub fn client_ports(&self, i: usize) -> BTreeSet<u16> {
        let out = self.lb(i, &["conns", "--json", "--limit", "100000"]);
        let conns: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        conns["conns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["client"].as_str())
            .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
            .collect()
    }

    /// Every node's latest `lb run` log, and its keepalived and BIRD logs when it has
    /// them, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            out += &format!("{} lb:\n{}\n", n.name, self.lb_log(i));
            for daemon in ["keepalived.log", "bird.log"] {
                let text = self.read(i, daemon);
                if !text.is_empty() {
                    out += &format!("{} {daemon}:\n{text}\n", n.name);
                }
            }
        }
        out
    }

    /// A daemon beside lb on node `i` (keepalived, BIRD), with its log in the node's
    /// directory; returns its pid.
    pub fn spawn_on(&mut self, i: usize, args: &[&str], log: &str) -> u32 {
        let (ns, name) = (self.nodes[i].ns.clone(), self.nodes[i].name.clone());
        self.lab.spawn(&ns, args, &format!("{name}/{log}"))
    }

    /// A file of node `i`'s directory, as text ("" when missing).
    pub fn read(&self, i: usize, name: &str) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join(name)).unwrap_or_default()
    }

    /// Whether the interface `dev` of namespace `ns` holds the address `addr` (any
    /// prefix length).
    pub fn holds(&self, ns: &str, dev: &str, addr: &str) -> bool {
        let out = self
            .lab
            .exec(ns, &["ip", "-o", "-4", "addr", "show", "dev", dev])
            .output()
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(addr))
    }
}

impl Drop for Cluster {
    /// Ends the daemons' grace (`--stop-grace-ms`) at once: a second SIGTERM makes lb
    /// detach now. The lab then stops every process it started and removes the rest.
    fn drop(&mut self) {
        let running: Vec<u32> = self.nodes.iter().filter_map(|n| n.lb).collect();
        for signal in [libc::SIGTERM, libc::SIGTERM] {
            for pid in &running {
                self.lab.signal(*pid, signal);
            }
            sleep(Duration::from_millis(100));
        }
    }
}

/// Whether `lb service list --json` shows every backend of every service in rotation.
pub fn all_in_rotation(list: &Value) -> bool {
    list["services"].as_array().is_some_and(|s| {
        !s.is_empty()
            && s.iter().all(|svc| {
                svc["backends"]
                    .as_array()
                    .is_some_and(|b| b.iter().all(|b| b["in_rotation"] == true))
            })
    })
}

/// The VRRP pair.
pub struct Pair {
    pub cluster: Cluster,
}

impl Pair {
    /// Builds the pair's topology (DSR or NAT) with three backends serving; neither lb
    /// nor keepalived runs yet ([`Pair::start`]).
    pub fn up(mode: Mode, prefix: &str, lb_bin: &Path, pass: &Path) -> Pair {
        let lab = Lab::empty(mode, prefix);
        let mut c = Cluster::new(lab, lb_bin);
        let cli = c.lab.add_ns("cli");
        sysctl(&cli, "net.ipv4.conf.all.rp_filter=0");
        let (client_sw, backend_sw, gateway) = match mode {
            Mode::Dsr => {
                let sw = c.lab.add_ns("sw");
                bridge(&sw);
                (sw.clone(), sw, None)
            }
            Mode::Nat => {
                let swc = c.lab.add_ns("swc");
                let swb = c.lab.add_ns("swb");
                bridge(&swc);
                bridge(&swb);
                (swc, swb, Some(NAT_GATEWAY.parse().expect("address")))
            }
        };
        let client_net = if mode == Mode::Dsr {
            "10.0.0"
        } else {
            "10.0.1"
        };
        veth(&cli, "eth0", &client_sw, "p-cli");
        to_bridge(&client_sw, "p-cli");
        addr(&cli, &format!("{client_net}.2/24"), "eth0");
        // The VIPs are on-link: whichever node holds the VIP answers ARP for it.
        ip(&["-n", &cli, "route", "add", "10.100.0.0/24", "dev", "eth0"]);
        full_checksums(&cli, "eth0");
        for k in 0..2u8 {
            let name = format!("lb{}", k + 1);
            let port = format!("p-{name}");
            let ifaces: &[&'static str] = match mode {
                Mode::Dsr => &["eth0"],
                Mode::Nat => &["eth0", "eth1"],
            };
            let i = c.add_node(&name, ifaces);
            let ns = c.nodes[i].ns.clone();
            veth(&ns, "eth0", &client_sw, &port);
            to_bridge(&client_sw, &port);
            addr(&ns, &format!("{client_net}.{}/24", 3 + k), "eth0");
            // lb transmits out of eth0 (DSR: to the backends; NAT: to the client).
            attach_pass(&client_sw, &port, pass);
            if mode == Mode::Nat {
                veth(&ns, "eth1", &backend_sw, &port);
                to_bridge(&backend_sw, &port);
                addr(&ns, &format!("10.0.2.{}/24", 3 + k), "eth1");
                attach_pass(&backend_sw, &port, pass);
                sysctl(&ns, "net.ipv4.ip_forward=1");
                // A reply lb translates before it knows the client's MAC goes to the
                // kernel to be forwarded (and the MAC resolved); its source is the VIP,
                // an address of the master, which the kernel drops as a martian unless
                // the interface accepts local sources.
                sysctl(&ns, "net.ipv4.conf.eth1.accept_local=1");
            }
        }
        let net = if mode == Mode::Dsr {
            "10.0.0"
        } else {
            "10.0.2"
        };
        for b in 0..3 {
            let addr: Ipv4Addr = format!("{net}.{}", 11 + b).parse().expect("address");
            c.lab.add_backend(&backend_sw, addr, gateway);
        }
        for b in 0..3 {
            c.lab.start_backend(b);
        }
        Pair { cluster: c }
    }

    /// [`Pair::start_lbs`], then keepalived on both nodes, waiting until lb1 is the
    /// master.
    pub fn start(&mut self, config: &str, lb_extra: &[&str]) {
        self.start_lbs(config, lb_extra);
        for i in 0..2 {
            self.start_keepalived(i);
        }
        self.wait_master(0, Duration::from_secs(30));
    }

    /// Writes `config` for both nodes, starts `lb run` (with `lb_extra`) on both and
    /// waits until both serve with every backend in rotation.
    pub fn start_lbs(&mut self, config: &str, lb_extra: &[&str]) {
        self.cluster.write_config(config);
        for i in 0..2 {
            self.cluster.start_lb(i, lb_extra);
        }
        for i in 0..2 {
            self.cluster.wait_serving(i, Duration::from_secs(30));
            self.cluster
                .wait_all_in_rotation(i, Duration::from_secs(30));
        }
    }

    pub fn mode(&self) -> Mode {
        self.cluster.lab.mode
    }

    /// Node `i`'s maintenance file (present: its priority is lowered).
    pub fn maintenance_file(&self, i: usize) -> PathBuf {
        self.cluster.nodes[i].dir.join("maintenance")
    }

    /// Starts keepalived on node `i` with the example configuration of its mode and
    /// node, its paths replaced by the node's.
    pub fn start_keepalived(&mut self, i: usize) {
        let c = &self.cluster;
        let mode = usize::from(self.mode() == Mode::Nat);
        let name = format!(
            "examples/ha/keepalived-{}-lb{}.conf",
            if mode == 0 { "dsr" } else { "nat" },
            i + 1
        );
        let node = &c.nodes[i];
        let text = render(
            &name,
            KEEPALIVED[mode][i],
            &[
                ("/usr/bin/lb", c.lb_bin.to_str().expect("UTF-8 path")),
                ("/run/lb/lb.sock", node.socket.to_str().expect("UTF-8 path")),
                (
                    "/etc/lb/maintenance",
                    self.maintenance_file(i).to_str().expect("UTF-8 path"),
                ),
            ],
        );
        let conf = node.dir.join("keepalived.conf");
        std::fs::write(&conf, text).expect("writing keepalived.conf");
        let d = node.dir.display();
        let args = [
            "keepalived".to_string(),
            "--dont-fork".into(),
            "--log-console".into(),
            "--no-syslog".into(),
            "--vrrp".into(),
            format!("--use-file={}", conf.display()),
            format!("--pid={d}/keepalived.pid"),
            format!("--vrrp_pid={d}/keepalived-vrrp.pid"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = self.cluster.spawn_on(i, &args, "keepalived.log");
        self.cluster.nodes[i].keepalived = Some(pid);
    }

    /// Stops keepalived on node `i` (SIGTERM: it gives its addresses up and tells its
    /// peer) and waits for it to exit.
    pub fn stop_keepalived(&mut self, i: usize) {
        let pid = self.cluster.nodes[i]
            .keepalived
            .take()
            .expect("keepalived runs on the node");
        self.cluster.lab.signal(pid, libc::SIGTERM);
        self.cluster
            .lab
            .wait_exit(pid, Duration::from_secs(10))
            .expect("keepalived exits after SIGTERM");
        self.cluster.lab.stop(pid);
    }

    /// The floating addresses of the pair: (interface, address).
    fn floating(&self) -> Vec<(&'static str, &'static str)> {
        match self.mode() {
            Mode::Dsr => vec![("eth0", crate::lab::DSR_VIP)],
            Mode::Nat => vec![("eth0", crate::lab::NAT_VIP), ("eth1", NAT_GATEWAY)],
        }
    }

    /// The node holding every floating address, if exactly one does and the other
    /// holds none.
    pub fn master(&self) -> Option<usize> {
        let holds = |i: usize| -> Vec<bool> {
            self.floating()
                .iter()
                .map(|(dev, a)| self.cluster.holds(&self.cluster.nodes[i].ns, dev, a))
                .collect()
        };
        let (a, b) = (holds(0), holds(1));
        match (a.iter().all(|x| *x), b.iter().all(|x| *x)) {
            (true, false) if !b.iter().any(|x| *x) => Some(0),
            (false, true) if !a.iter().any(|x| *x) => Some(1),
            _ => None,
        }
    }

    /// Waits (at most `limit`) until node `i` is the master; returns how long it took.
    pub fn wait_master(&self, i: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.master() == Some(i) {
                return start.elapsed();
            }
            sleep(Duration::from_millis(20));
        }
        panic!(
            "{} is not the master within {limit:?} (master: {:?})\nkeepalived lb1:\n{}\nkeepalived lb2:\n{}",
            self.cluster.nodes[i].name,
            self.master(),
            self.cluster.read(0, "keepalived.log"),
            self.cluster.read(1, "keepalived.log"),
        );
    }

    /// Puts node `i` in maintenance (creates its maintenance file) or out of it.
    pub fn maintenance(&self, i: usize, on: bool) {
        let f = self.maintenance_file(i);
        if on {
            std::fs::write(&f, "").expect("creating the maintenance file");
        } else {
            std::fs::remove_file(&f).expect("removing the maintenance file");
        }
    }
}

/// Answers by backend, as `b1: 12, b2: 10, ...`.
pub fn by_backend(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(b, n)| format!("{b}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
