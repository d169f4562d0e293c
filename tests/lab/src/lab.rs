//! The built-in lab: network namespaces, veth pairs and a bridge on this machine, with
//! real servers (nginx, and a UDP echo) in the backends. Used by the end-to-end tests, by
//! `cargo xtask lab` (the demo) and by the benchmarks.
//!
//! DSR (one L2 segment, bridge `br0` in `<p>-sw`):
//! ```text
//!   <p>-cli  eth0 10.0.0.2 ──┐            VIP 10.100.0.10 via 10.0.0.1 (the balancer)
//!   <p>-lb   eth0 10.0.0.1 ──┤ br0        lb attaches XDP to eth0
//!   <p>-b1..3 eth0 10.0.0.11..13 ─┘       VIP on lo, arp_ignore=1, arp_announce=2
//! ```
//! NAT (the balancer routes between two networks):
//! ```text
//!   <p>-cli eth0 10.0.1.2 ── eth0 10.0.1.1 <p>-lb eth1 10.0.2.1 ── br0 ── <p>-b1..3 10.0.2.11..13
//!   VIP 10.100.0.20 via 10.0.1.1           backends' default route via 10.0.2.1
//! ```
//! [`Lab::up_dual_stack`] adds IPv6 to either topology (unique local addresses, no
//! duplicate address detection, so nothing waits):
//! ```text
//!   DSR: segment fd00:10::/64: lb ::1, client ::2, backends ::11..13;
//!        VIP fd00:100::10 on the backends' lo (/128), the client routes fd00:100::/64
//!        via fd00:10::1. (A Linux host answers neighbour solicitations only for addresses
//!        of the interface asked on, so no arp_ignore-like setting is needed.)
//!   NAT: client fd00:11::2 ── fd00:11::1 lb fd00:12::1 ── backends fd00:12::11..13;
//!        VIP fd00:100::20; the client's and the backends' default routes via the
//!        balancer, which forwards IPv6 (net.ipv6.conf.all.forwarding=1).
//! ```
//! nginx then listens on `[::]:80` and `[::]:8080` too, and each backend runs a second
//! UDP echo on its IPv6 address (the VIP in DSR).
//! veth interfaces deliver XDP_TX/XDP_REDIRECT frames only when their peer runs an XDP
//! program: the peers the balancer transmits to get the pass-only program (`xdp-pass`).
//! Client and backends send with full checksums (TX checksum offload off): a veth leaves
//! checksums partial for "hardware" to finish, which frames crossing XDP never get.
//! Everything the lab creates lives in its own namespaces and is removed when the `Lab`
//! is dropped (processes it started are stopped by PID first). `Lab::up` first removes
//! what an interrupted earlier run with the same prefix left behind.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

/// The two topologies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dsr,
    Nat,
}

pub const DSR_VIP: &str = "10.100.0.10";
pub const NAT_VIP: &str = "10.100.0.20";
pub const DSR_VIP6: &str = "fd00:100::10";
pub const NAT_VIP6: &str = "fd00:100::20";
/// Port nginx serves on besides 80 (NAT port translation: VIP:80 -> RIP:8080).
pub const ALT_PORT: u16 = 8080;
/// UDP echo port (replies with the backend's name).
pub const UDP_PORT: u16 = 5353;
/// Size of each backend's `/big` (served at 2 MiB/s: a stream of about 4 s).
pub const BIG_BYTES: usize = 8 << 20;

/// Runs a command; returns its output, panicking with its stderr when it fails.
pub fn must(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    must(Command::new("ip").args(args));
}

/// A veth pair from interface `a` in namespace `a_ns` to `b` in `b_ns`, both ends up.
pub fn veth(a_ns: &str, a: &str, b_ns: &str, b: &str) {
    ip(&[
        "link", "add", "name", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
    ]);
    ip(&["-n", a_ns, "link", "set", a, "up"]);
    ip(&["-n", b_ns, "link", "set", b, "up"]);
}

/// Adds the address `cidr` (`10.0.0.1/24`) to `dev` in namespace `ns`.
pub fn addr(ns: &str, cidr: &str, dev: &str) {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev]);
}

/// Adds the IPv6 address `cidr` (`fd00:10::1/64`) to `dev` in namespace `ns`, usable at
/// once (no duplicate address detection).
pub fn addr6(ns: &str, cidr: &str, dev: &str) {
    ip(&["-n", ns, "-6", "addr", "add", cidr, "dev", dev, "nodad"]);
}

/// A bridge `br0` in namespace `ns`, up.
pub fn bridge(ns: &str) {
    ip(&["-n", ns, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", ns, "link", "set", "br0", "up"]);
}

/// Makes `port` (in the namespace `ns` of a [`bridge`]) a port of `br0`.
pub fn to_bridge(ns: &str, port: &str) {
    ip(&["-n", ns, "link", "set", port, "master", "br0"]);
}

/// Sets a sysctl (`key=value`) inside namespace `ns`.
pub fn sysctl(ns: &str, kv: &str) {
    must(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", kv]));
}

/// Makes a lab host send full checksums on `dev`: its frames cross XDP, which cannot
/// finish a checksum the sender left partial for "hardware" (veth offload). Frames from
/// a physical NIC always carry full checksums.
pub fn full_checksums(ns: &str, dev: &str) {
    must(Command::new("ip").args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"]));
}

/// Attaches the pass-only XDP program `pass` to `dev` in `ns`: a veth delivers the
/// XDP_TX/XDP_REDIRECT frames of its peer only when it runs an XDP program itself.
pub fn attach_pass(ns: &str, dev: &str, pass: &Path) {
    let pass = pass.to_str().expect("UTF-8 path");
    ip(&[
        "-n", ns, "link", "set", "dev", dev, "xdp", "obj", pass, "sec", "xdp",
    ]);
}

/// Stops a process we started: SIGTERM, then SIGKILL after a bounded wait.
pub fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A backend: its namespace, address and servers.
pub struct Backend {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address in a dual-stack lab ([`Lab::up_dual_stack`]).
    pub addr6: Option<Ipv6Addr>,
    dir: PathBuf,
    nginx: Option<Child>,
    udp: Option<UdpEcho>,
    udp6: Option<UdpEcho>,
    /// A slow HTTP server replacing nginx (see `Lab::make_slow`).
    slow: Option<Child>,
    status: u16,
}

pub struct Lab {
    pub mode: Mode,
    pub prefix: String,
    pub dir: PathBuf,
    pub backends: Vec<Backend>,
    /// Whether the lab has IPv6 besides IPv4 ([`Lab::up_dual_stack`]).
    pub ipv6: bool,
    namespaces: Vec<String>,
    extra: Vec<Child>,
    /// Where lb pins its datapath (see [`Lab::pin_dir`]).
    bpffs: Option<crate::bpffs::BpfFs>,
}

impl Lab {
    /// The pin directory for lb's datapath, in the lab's own bpffs (`--pin-dir`).
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir_of("lb")
    }

    /// The pin directory of the lb instance `name` (labs with several balancers).
    pub fn pin_dir_of(&self, name: &str) -> PathBuf {
        self.bpffs
            .as_ref()
            .map_or_else(|| self.dir.join("bpf"), |b| b.path().to_path_buf())
            .join(name)
    }

    /// An empty lab: its directory and bpffs, no namespace yet (topologies of their own,
    /// like the redundancy labs, add theirs with [`Lab::add_ns`] and
    /// [`Lab::add_backend`]). `mode` decides the VIP and how backends are set up.
    pub fn empty(mode: Mode, prefix: &str) -> Lab {
        assert!(
            prefix.len() <= 8,
            "prefix {prefix} too long for interface names"
        );
        Lab::down_leftovers(prefix);
        let dir = std::env::temp_dir().join(format!("{prefix}-lab"));
        crate::bpffs::unmount(&dir.join("bpf"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the lab directory");
        let bpffs = crate::bpffs::BpfFs::mount(&dir.join("bpf")).expect("mounting a bpffs");
        Lab {
            mode,
            prefix: prefix.to_string(),
            dir,
            backends: Vec::new(),
            ipv6: false,
            namespaces: Vec::new(),
            extra: Vec::new(),
            bpffs: Some(bpffs),
        }
    }

    /// Builds the topology and starts nginx and the UDP echo on every backend.
    /// `pass_object`: the `xdp-pass` object (`OUT_DIR/xdp-pass` or target/ebpf/...).
    pub fn up(mode: Mode, prefix: &str, backends: usize, pass_object: &Path) -> Lab {
        Lab::build(mode, prefix, backends, pass_object, false)
    }

    /// [`Lab::up`] with IPv6 beside IPv4 (addresses in the module documentation).
    pub fn up_dual_stack(mode: Mode, prefix: &str, backends: usize, pass_object: &Path) -> Lab {
        Lab::build(mode, prefix, backends, pass_object, true)
    }

    fn build(mode: Mode, prefix: &str, backends: usize, pass_object: &Path, ipv6: bool) -> Lab {
        let mut lab = Lab::empty(mode, prefix);
        lab.ipv6 = ipv6;
        let sw = lab.add_ns("sw");
        let lb = lab.add_ns("lb");
        let cli = lab.add_ns("cli");
        bridge(&sw);
        for ns in [&lb, &cli] {
            sysctl(ns, "net.ipv4.conf.all.rp_filter=0");
            sysctl(ns, "net.ipv4.conf.default.rp_filter=0");
        }
        let (net, gateway) = match mode {
            Mode::Dsr => ("10.0.0", None),
            Mode::Nat => ("10.0.2", Some(Ipv4Addr::new(10, 0, 2, 1))),
        };
        match mode {
            Mode::Dsr => {
                veth(&lb, "eth0", &sw, "p-lb");
                veth(&cli, "eth0", &sw, "p-cli");
                to_bridge(&sw, "p-lb");
                to_bridge(&sw, "p-cli");
                ip(&["-n", &lb, "addr", "add", "10.0.0.1/24", "dev", "eth0"]);
                ip(&["-n", &cli, "addr", "add", "10.0.0.2/24", "dev", "eth0"]);
                ip(&[
                    "-n",
                    &cli,
                    "route",
                    "add",
                    "10.100.0.0/24",
                    "via",
                    "10.0.0.1",
                ]);
                // lb sends XDP_TX frames out of eth0: its peer must run an XDP program.
                attach_pass(&sw, "p-lb", pass_object);
            }
            Mode::Nat => {
                veth(&cli, "eth0", &lb, "eth0");
                veth(&lb, "eth1", &sw, "p-lb");
                to_bridge(&sw, "p-lb");
                ip(&["-n", &cli, "addr", "add", "10.0.1.2/24", "dev", "eth0"]);
                ip(&["-n", &cli, "route", "add", "default", "via", "10.0.1.1"]);
                ip(&["-n", &lb, "addr", "add", "10.0.1.1/24", "dev", "eth0"]);
                ip(&["-n", &lb, "addr", "add", "10.0.2.1/24", "dev", "eth1"]);
                sysctl(&lb, "net.ipv4.ip_forward=1");
                // lb redirects client->backend frames into eth1 and replies into eth0.
                attach_pass(&sw, "p-lb", pass_object);
                attach_pass(&cli, "eth0", pass_object);
            }
        }
        full_checksums(&cli, "eth0");
        if ipv6 {
            lab.ipv6_hosts();
        }
        for i in 0..backends {
            let addr: Ipv4Addr = format!("{net}.{}", 11 + i).parse().expect("address");
            lab.add_backend(&sw, addr, gateway);
            if ipv6 {
                lab.ipv6_backend(i);
            }
        }
        for i in 0..backends {
            lab.start_backend(i);
        }
        lab
    }

    /// IPv6 on the client and the balancer (after their IPv4 setup).
    fn ipv6_hosts(&self) {
        let (lb, cli) = (self.lb_ns(), self.client_ns());
        match self.mode {
            Mode::Dsr => {
                addr6(&lb, "fd00:10::1/64", "eth0");
                addr6(&cli, "fd00:10::2/64", "eth0");
                ip(&[
                    "-n",
                    &cli,
                    "-6",
                    "route",
                    "add",
                    "fd00:100::/64",
                    "via",
                    "fd00:10::1",
                ]);
            }
            Mode::Nat => {
                addr6(&cli, "fd00:11::2/64", "eth0");
                ip(&[
                    "-n",
                    &cli,
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    "fd00:11::1",
                ]);
                addr6(&lb, "fd00:11::1/64", "eth0");
                addr6(&lb, "fd00:12::1/64", "eth1");
                // After the interfaces exist: `all` is copied to every interface, and
                // bpf_fib_lookup checks the forwarding setting of the receiving one.
                sysctl(&lb, "net.ipv6.conf.all.forwarding=1");
            }
        }
    }

    /// IPv6 on backend `i` (added with [`Lab::add_backend`]): fd00:10::11.. (DSR, with
    /// the VIP on lo) or fd00:12::11.. routed via the balancer (NAT).
    fn ipv6_backend(&mut self, i: usize) {
        let ns = self.backends[i].ns.clone();
        let host = 0x11 + i as u16;
        let addr = match self.mode {
            Mode::Dsr => Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, host),
            Mode::Nat => Ipv6Addr::new(0xfd00, 0x12, 0, 0, 0, 0, 0, host),
        };
        addr6(&ns, &format!("{addr}/64"), "eth0");
        match self.mode {
            Mode::Dsr => addr6(&ns, &format!("{DSR_VIP6}/128"), "lo"),
            Mode::Nat => ip(&[
                "-n",
                &ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:12::1",
            ]),
        }
        self.backends[i].addr6 = Some(addr);
    }

    /// Adds a backend host (its servers not started: [`Lab::start_backend`]): namespace
    /// `b<n>`, `eth0` with `addr`/24 on the bridge of namespace `sw` (port `p-b<n>`),
    /// full checksums, the default route via `gateway` when given. For DSR it holds the
    /// VIP on `lo` and neither answers nor announces it on the wire.
    pub fn add_backend(&mut self, sw: &str, addr: Ipv4Addr, gateway: Option<Ipv4Addr>) {
        let name = format!("b{}", self.backends.len() + 1);
        let ns = self.add_ns(&name);
        let port = format!("p-{name}");
        veth(&ns, "eth0", sw, &port);
        to_bridge(sw, &port);
        self::addr(&ns, &format!("{addr}/24"), "eth0");
        full_checksums(&ns, "eth0");
        sysctl(&ns, "net.ipv4.conf.all.rp_filter=0");
        if self.mode == Mode::Dsr {
            // The VIP on lo, never announced or answered for on the wire.
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", self.vip()),
                "dev",
                "lo",
            ]);
            sysctl(&ns, "net.ipv4.conf.all.arp_ignore=1");
            sysctl(&ns, "net.ipv4.conf.all.arp_announce=2");
            sysctl(&ns, "net.ipv4.conf.eth0.arp_ignore=1");
            sysctl(&ns, "net.ipv4.conf.eth0.arp_announce=2");
        }
        if let Some(gw) = gateway {
            ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()]);
        }
        let dir = self.dir.join(&name);
        std::fs::create_dir_all(&dir).expect("backend directory");
        self.backends.push(Backend {
            name,
            ns,
            addr,
            addr6: None,
            dir,
            nginx: None,
            udp: None,
            udp6: None,
            slow: None,
            status: 200,
        });
    }

    /// Adds the namespace `<prefix>-<role>` (with `lo` up); removed with the lab.
    pub fn add_ns(&mut self, role: &str) -> String {
        let ns = format!("{}-{role}", self.prefix);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        if self.ipv6 {
            // Interfaces created later take these: no duplicate address detection (and
            // its wait) for their link-local addresses either.
            sysctl(&ns, "net.ipv6.conf.default.accept_dad=0");
            sysctl(&ns, "net.ipv6.conf.all.accept_dad=0");
        }
        self.namespaces.push(ns.clone());
        ns
    }

    /// Removes the namespaces (and their processes) an interrupted earlier run with the
    /// same prefix left behind.
    fn down_leftovers(prefix: &str) {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let ns = line.split_whitespace().next().unwrap_or("");
            if ns.starts_with(&format!("{prefix}-")) {
                kill_netns_pids(ns);
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn lb_ns(&self) -> String {
        self.ns("lb")
    }

    pub fn client_ns(&self) -> String {
        self.ns("cli")
    }

    /// Interfaces lb attaches to.
    pub fn lb_ifaces(&self) -> Vec<&'static str> {
        match self.mode {
            Mode::Dsr => vec!["eth0"],
            Mode::Nat => vec!["eth0", "eth1"],
        }
    }

    pub fn vip(&self) -> &'static str {
        match self.mode {
            Mode::Dsr => DSR_VIP,
            Mode::Nat => NAT_VIP,
        }
    }

    /// The IPv6 VIP of a dual-stack lab.
    pub fn vip6(&self) -> &'static str {
        match self.mode {
            Mode::Dsr => DSR_VIP6,
            Mode::Nat => NAT_VIP6,
        }
    }

    /// A command run inside namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// Starts a long-running process inside `ns`; it is stopped (by PID) when the lab goes.
    pub fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> u32 {
        let out = std::fs::File::create(self.dir.join(log)).expect("log file");
        let child = self
            .exec(ns, args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args:?} in {ns}: {e}"));
        let pid = child.id();
        self.extra.push(child);
        pid
    }

    /// Sends `signal` to a process started with `spawn` (only to those: never another).
    pub fn signal(&self, pid: u32, signal: i32) {
        assert!(
            self.extra.iter().any(|c| c.id() == pid),
            "{pid} is not a process this lab started"
        );
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe { libc::kill(pid as i32, signal) };
    }

    /// Waits (at most `limit`) for a process started with `spawn` to exit; its status.
    pub fn wait_exit(&mut self, pid: u32, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.extra.iter_mut().find(|c| c.id() == pid)?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Stops a process started with `spawn`.
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.extra.iter().position(|c| c.id() == pid) {
            let mut c = self.extra.remove(i);
            stop_child(&mut c);
        }
    }

    fn nginx_conf(&self, b: &Backend) -> PathBuf {
        let d = b.dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n\
             fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n\
             keepalive_requests 1000000;\n\
             server {{\n    listen 80 reuseport backlog=4096;\n    listen {ALT_PORT} reuseport backlog=4096;\n{listen6}\
             add_header X-Backend {name} always;\n\
             location / {{ return {} \"{name}\\n\"; }}\n\
             location = /big {{ alias {d}/big.bin; limit_rate 2m; }}\n  }}\n}}\n",
            b.status,
            name = b.name,
            listen6 = if b.addr6.is_some() {
                format!(
                    "    listen [::]:80 ipv6only=on reuseport backlog=4096;\n    listen [::]:{ALT_PORT} ipv6only=on reuseport backlog=4096;\n"
                )
            } else {
                String::new()
            },
        );
        // /big: 8 MiB at 2 MiB/s, a stream of about 4 s (a long-lived connection).
        let big = b.dir.join("big.bin");
        if !big.exists() {
            std::fs::write(&big, vec![b'x'; BIG_BYTES]).expect("writing big.bin");
        }
        let path = b.dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("writing nginx.conf");
        path
    }

    /// Starts nginx (HTTP on 80 and 8080, answering with the backend's name) and the UDP
    /// echo (replying with the backend's name) on backend `i`; waits until HTTP answers.
    pub fn start_backend(&mut self, i: usize) {
        let conf = self.nginx_conf(&self.backends[i]);
        let b = &self.backends[i];
        let log = std::fs::File::create(b.dir.join("nginx.out")).expect("log");
        let nginx = self
            .exec(
                &b.ns,
                &[
                    "nginx",
                    "-c",
                    conf.to_str().expect("path"),
                    "-g",
                    "daemon off;",
                ],
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting nginx (installed by scripts/setup.sh)");
        // DSR replies must come from the VIP: bind the echo there; NAT replies come from
        // the backend's own address and lb translates them.
        let bind = match self.mode {
            Mode::Dsr => DSR_VIP.to_string(),
            Mode::Nat => b.addr.to_string(),
        };
        let udp = UdpEcho::start(&b.ns, bind.parse::<IpAddr>().expect("address"), &b.name);
        let udp6 = b.addr6.map(|a6| {
            let bind: IpAddr = match self.mode {
                Mode::Dsr => DSR_VIP6.parse().expect("address"),
                Mode::Nat => a6.into(),
            };
            UdpEcho::start(&b.ns, bind, &b.name)
        });
        let (ns, addr, addr6) = (b.ns.clone(), b.addr, b.addr6);
        let b = &mut self.backends[i];
        b.nginx = Some(nginx);
        b.udp = Some(udp);
        b.udp6 = udp6;
        self.wait_http(&ns, addr.into());
        if let Some(a6) = addr6 {
            self.wait_http(&ns, a6.into());
        }
    }

    fn wait_http(&self, ns: &str, addr: IpAddr) {
        let url = format!("http://{}/", std::net::SocketAddr::new(addr, 80));
        for _ in 0..100 {
            let out = self
                .exec(ns, &["curl", "-s", "-o", "/dev/null", "-m", "1", &url])
                .output();
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!(
            "nginx did not answer on {url} within 5 s: {}",
            self.nginx_log_tail(ns)
        );
    }

    fn nginx_log_tail(&self, ns: &str) -> String {
        self.backends
            .iter()
            .find(|b| b.ns == ns)
            .and_then(|b| std::fs::read_to_string(b.dir.join("error.log")).ok())
            .unwrap_or_default()
    }

    /// Writes a complete HTTP response (200, `body`) to a file and returns the shell
    /// command that serves it after `delay` (for `socat ... SYSTEM:<command>`: socat
    /// strips quotes and unescapes `\r\n` in its addresses, so the bytes live in a file).
    pub fn http_reply(&self, name: &str, body: &str, delay: Duration) -> String {
        let path = self.dir.join(format!("{name}.http"));
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        std::fs::write(&path, reply).expect("writing a canned HTTP response");
        format!("sleep {:.3}; cat {}", delay.as_secs_f64(), path.display())
    }

    /// Replaces backend `i`'s nginx on port 80 with a server that accepts at once but
    /// answers (200, its name) only after `delay`.
    pub fn make_slow(&mut self, i: usize, delay: Duration) {
        if let Some(mut n) = self.backends[i].nginx.take() {
            stop_child(&mut n);
        }
        let name = self.backends[i].name.clone();
        let reply = self.http_reply(&format!("{name}-slow"), &format!("{name}\n"), delay);
        let slow = self
            .exec(
                &self.backends[i].ns,
                &[
                    "socat",
                    "TCP-LISTEN:80,reuseaddr,fork",
                    &format!("SYSTEM:{reply}"),
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting socat");
        self.backends[i].slow = Some(slow);
    }

    /// Stops backend `i`'s servers (its host stays up: connections are refused).
    pub fn stop_backend(&mut self, i: usize) {
        let b = &mut self.backends[i];
        b.udp = None;
        b.udp6 = None;
        for c in [b.nginx.take(), b.slow.take()].into_iter().flatten() {
            let mut c = c;
            stop_child(&mut c);
        }
    }

    /// Makes backend `i` answer HTTP with `status` (nginx reloads its configuration).
    pub fn set_status(&mut self, i: usize, status: u16) {
        self.backends[i].status = status;
        self.nginx_conf(&self.backends[i]);
        if let Some(n) = &self.backends[i].nginx {
            // SAFETY: kill(2) on the PID of the nginx master we started: SIGHUP reloads.
            unsafe { libc::kill(n.id() as i32, libc::SIGHUP) };
        }
        // nginx applies a reload asynchronously: wait until the new status is served.
        let (ns, addr) = (self.backends[i].ns.clone(), self.backends[i].addr);
        for _ in 0..100 {
            let out = self
                .exec(
                    &ns,
                    &[
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-m",
                        "1",
                        &format!("http://{addr}/"),
                    ],
                )
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == status.to_string()) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!(
            "backend {} does not answer {status} after a reload",
            self.backends[i].name
        );
    }

    /// Black-holes (or restores) TCP to backend `i`: its namespace drops incoming SYNs
    /// (nftables, rules given to `nft -f -`), so connection attempts time out instead of
    /// being refused.
    pub fn blackhole(&self, i: usize, on: bool) {
        let ns = &self.backends[i].ns;
        if on {
            let rules = "table inet lblab {\n  chain input {\n    type filter hook input priority 0;\n    tcp flags & (syn | ack) == syn drop\n  }\n}\n";
            let mut nft = self
                .exec(ns, &["nft", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting nft (installed by scripts/setup.sh)");
            {
                use std::io::Write as _;
                let mut stdin = nft.stdin.take().expect("nft stdin");
                stdin.write_all(rules.as_bytes()).expect("writing to nft");
            }
            let out = nft.wait_with_output().expect("waiting for nft");
            assert!(
                out.status.success(),
                "nft -f - in {ns} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            must(&mut self.exec(ns, &["nft", "delete", "table", "inet", "lblab"]));
        }
    }

    /// Requests served by backend `i` from `from` (nginx's access log), e.g. health probes
    /// coming from the balancer.
    pub fn requests_from(&self, i: usize, from: &str) -> usize {
        std::fs::read_to_string(self.backends[i].dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{from} ")))
            .count()
    }

    /// The address lb probes backends from.
    pub fn lb_backend_side_addr(&self) -> &'static str {
        match self.mode {
            Mode::Dsr => "10.0.0.1",
            Mode::Nat => "10.0.2.1",
        }
    }

    /// The IPv6 address lb probes backends from (dual-stack labs).
    pub fn lb_backend_side_addr6(&self) -> &'static str {
        match self.mode {
            Mode::Dsr => "fd00:10::1",
            Mode::Nat => "fd00:12::1",
        }
    }

    /// Every backend as a configuration's backend object, with `port` (else the
    /// service's), separated by commas.
    fn backend_list(&self, port: Option<u16>) -> String {
        Lab::backend_objects(self.backends.iter().map(|b| IpAddr::from(b.addr)), port)
    }

    /// [`Lab::backend_list`] of the backends' IPv6 addresses.
    fn backend_list6(&self) -> impl Fn(Option<u16>) -> String + '_ {
        |port| {
            Lab::backend_objects(
                self.backends
                    .iter()
                    .map(|b| IpAddr::from(b.addr6.expect("a dual-stack lab"))),
                port,
            )
        }
    }

    fn backend_objects(addrs: impl Iterator<Item = IpAddr>, port: Option<u16>) -> String {
        addrs
            .map(|a| match port {
                Some(p) => format!(r#"{{"address": "{a}", "port": {p}}}"#),
                None => format!(r#"{{"address": "{a}"}}"#),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A configuration with one service only: HTTP on VIP:80 over every backend's port
    /// 80, forwarded as the lab's mode says, with `check` as its health_check.
    pub fn http_service(&self, check: &str) -> String {
        let fwd = match self.mode {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
        };
        format!(
            r#"{{"services": [{{"vip": "{}", "port": 80, "forwarding": "{fwd}", "health_check": {check}, "backends": [{}]}}]}}"#,
            self.vip(),
            self.backend_list(None)
        )
    }

    /// A configuration for this lab: an HTTP (TCP) service on VIP:80 and a UDP service on
    /// VIP:5353 over all backends; NAT translates port 80 to 8080. `check` is the
    /// health_check object of the HTTP service (JSON).
    pub fn config(&self, check: &str, persistence: bool) -> String {
        Lab::config_of(&self.services(self.vip(), |p| self.backend_list(p), check, persistence))
    }

    /// [`Lab::config`] for the IPv6 VIP and the backends' IPv6 addresses (a dual-stack
    /// lab): the same two services, over IPv6 only.
    pub fn config6(&self, check: &str, persistence: bool) -> String {
        Lab::config_of(&self.services(self.vip6(), self.backend_list6(), check, persistence))
    }

    /// Both: [`Lab::config`]'s services and [`Lab::config6`]'s in one configuration.
    pub fn config_dual_stack(&self, check: &str, persistence: bool) -> String {
        let v4 = self.services(self.vip(), |p| self.backend_list(p), check, persistence);
        let v6 = self.services(self.vip6(), self.backend_list6(), check, persistence);
        Lab::config_of(&format!("{v4},\n{v6}"))
    }

    fn config_of(services: &str) -> String {
        format!(
            r#"{{"conntrack": {{"tcp_timeout_s": 900, "tcp_fin_timeout_s": 30, "udp_timeout_s": 30, "ageing_interval_s": 2}},
  "services": [
{services}]}}"#
        )
    }

    /// The HTTP and UDP services of [`Lab::config`] on `vip`, backends listed by
    /// `backends(port)`.
    fn services(
        &self,
        vip: &str,
        backends: impl Fn(Option<u16>) -> String,
        check: &str,
        persistence: bool,
    ) -> String {
        let (fwd, port) = match self.mode {
            Mode::Dsr => ("dsr", 80),
            Mode::Nat => ("nat", ALT_PORT),
        };
        format!(
            r#"    {{"vip": "{vip}", "port": 80, "protocol": "tcp", "forwarding": "{fwd}", "persistence": {persistence},
      "health_check": {check},
      "backends": [{}]}},
    {{"vip": "{vip}", "port": {UDP_PORT}, "protocol": "udp", "forwarding": "{fwd}",
      "health_check": {{"kind": "tcp", "probe_port": 80, "interval_ms": 1000, "timeout_ms": 1000, "rise": 1, "fall": 3}},
      "backends": [{}]}}"#,
            backends(Some(port)),
            backends(None),
        )
    }

    /// Writes `text` as a file in the lab directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("writing a lab file");
        p
    }

    /// One HTTP GET from the client to `url`; the body on success.
    pub fn curl(&self, url: &str) -> Result<String, String> {
        let out = self
            .exec(&self.client_ns(), &["curl", "-s", "-f", "-m", "3", url])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "curl {url}: exit {:?} {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// The UDP echo of a backend: a thread inside the backend's namespace that answers every
/// datagram to UDP_PORT with the backend's name, from the socket it arrived on (so DSR
/// replies come from the VIP). One socket and a strict request/reply loop: socat's
/// `UDP4-RECVFROM,fork` lets a forked child swallow a datagram meant for the next client.
/// Stops when dropped.
pub struct UdpEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    /// Starts answering on `bind:UDP_PORT` inside `ns`; returns once the socket is bound.
    pub fn start(ns: &str, bind: impl Into<IpAddr>, name: &str) -> UdpEcho {
        let bind = bind.into();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready, bound) = std::sync::mpsc::channel();
        let (netns, reply, flag) = (ns.to_string(), format!("{name}\n"), stop.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&netns);
            let socket = std::net::UdpSocket::bind((bind, UDP_PORT));
            let socket = match socket {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
            };
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("read timeout");
            let _ = ready.send(Ok(()));
            let mut buf = [0u8; 2048];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(reply.as_bytes(), peer);
                }
            }
        });
        match bound.recv() {
            Ok(Ok(())) => UdpEcho {
                stop,
                thread: Some(thread),
            },
            Ok(Err(e)) => panic!("UDP echo on {bind}:{UDP_PORT} in {ns}: {e}"),
            Err(_) => panic!("the UDP echo thread for {ns} died"),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Stops every process left in a namespace of ours (from an interrupted earlier run).
fn kill_netns_pids(ns: &str) {
    let out = Command::new("ip").args(["netns", "pids", ns]).output();
    if let Ok(out) = out {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2); the PID runs in a namespace this lab created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.extra {
            stop_child(c);
        }
        for i in 0..self.backends.len() {
            self.stop_backend(i);
        }
        for ns in self.namespaces.iter().rev() {
            kill_netns_pids(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        drop(self.bpffs.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Moves the calling thread into the lab namespace `ns` (for clients written in Rust).
pub fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("opening netns {ns}: {e}"));
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns(2) on an open namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({ns}): {}", std::io::Error::last_os_error());
}
