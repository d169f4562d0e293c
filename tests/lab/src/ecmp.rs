//! The ECMP lab: lb nodes active-active behind a router that spreads flows over them.
//!
//! ```text
//!   <p>-cli eth0 10.0.9.2 ── eth0 10.0.9.1 <p>-rt eth1 10.0.5.1 ── br0 (<p>-sw) ─┬─ <p>-lb1..3 eth0 10.0.5.11..13
//!   default via 10.0.9.1     BIRD, ECMP (L4 hash)                              └─ <p>-b1..3 eth0 10.0.5.21..23
//!                                                                                 VIP on lo, default via 10.0.5.1
//! ```
//! Every node runs `lb run --announce-table 100` (DSR) and BIRD with
//! examples/ha/bird-lb.conf; the router runs BIRD with examples/ha/bird-router.conf
//! (BGP and BFD to each node, `merge paths`) and hashes flows on their L4 tuple
//! (`net.ipv4.fib_multipath_hash_policy=1`). The backends answer the client directly,
//! through the router.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use crate::{
    ha::{Cluster, render},
    lab::{
        DSR_VIP, Lab, Mode, addr, attach_pass, bridge, full_checksums, must, sysctl, to_bridge,
        veth,
    },
};

/// The routing table the nodes announce their VIPs in (`--announce-table`).
pub const TABLE: &str = "100";
/// lb's route protocol number (`lb run --announce-table` marks its routes with it).
pub const PROTOCOL: &str = "252";

const BIRD_NODE: &str = include_str!("../../../examples/ha/bird-lb.conf");
const BIRD_ROUTER: &str = include_str!("../../../examples/ha/bird-router.conf");

/// The router's address on the nodes' segment.
pub const ROUTER: &str = "10.0.5.1";

/// The address of node `i` (0-based) on the segment.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 5, 11 + i as u8)
}

fn ip(args: &[&str]) {
    must(std::process::Command::new("ip").args(args));
}

/// The ECMP lab.
pub struct Ecmp {
    pub cluster: Cluster,
    /// The router's namespace.
    pub router: String,
    router_bird: Option<u32>,
}

impl Ecmp {
    /// Builds the topology with `nodes` lb nodes (at most 3, those the router's example
    /// configuration names) and three backends serving; nothing else runs yet
    /// ([`Ecmp::start`]).
    pub fn up(prefix: &str, nodes: usize, lb_bin: &Path, pass: &Path) -> Ecmp {
        assert!(
            (1..=3).contains(&nodes),
            "the router peers with 3 nodes at most"
        );
        let lab = Lab::empty(Mode::Dsr, prefix);
        let mut c = Cluster::new(lab, lb_bin);
        let cli = c.lab.add_ns("cli");
        let rt = c.lab.add_ns("rt");
        let sw = c.lab.add_ns("sw");
        bridge(&sw);
        veth(&cli, "eth0", &rt, "eth0");
        addr(&cli, "10.0.9.2/24", "eth0");
        ip(&["-n", &cli, "route", "add", "default", "via", "10.0.9.1"]);
        full_checksums(&cli, "eth0");
        veth(&rt, "eth1", &sw, "p-rt");
        to_bridge(&sw, "p-rt");
        addr(&rt, "10.0.9.1/24", "eth0");
        addr(&rt, &format!("{ROUTER}/24"), "eth1");
        for ns in [&cli, &rt] {
            sysctl(ns, "net.ipv4.conf.all.rp_filter=0");
            sysctl(ns, "net.ipv4.conf.default.rp_filter=0");
        }
        sysctl(&rt, "net.ipv4.ip_forward=1");
        // ECMP by the L4 hash, so one client's connections spread too.
        sysctl(&rt, "net.ipv4.fib_multipath_hash_policy=1");
        // A fixed hash seed (Linux 6.11 and later) makes the spread of given source
        // ports the same on every run; older kernels pick a random one.
        if Path::new("/proc/sys/net/ipv4/fib_multipath_hash_seed").exists() {
            sysctl(&rt, "net.ipv4.fib_multipath_hash_seed=1");
        }
        for i in 0..nodes {
            let name = format!("lb{}", i + 1);
            let port = format!("p-{name}");
            let n = c.add_node(&name, &["eth0"]);
            let ns = c.nodes[n].ns.clone();
            veth(&ns, "eth0", &sw, &port);
            to_bridge(&sw, &port);
            // No unknown unicast to the nodes, as a NIC's MAC filter would have it: XDP
            // on a veth sees every frame that reaches it, and without this a frame for a
            // node cut off (flooded once the bridge forgets its MAC) would be balanced
            // by another node's XDP program instead of being lost.
            must(
                std::process::Command::new("bridge")
                    .args(["-n", &sw, "link", "set", "dev", &port, "flood", "off"]),
            );
            addr(&ns, &format!("{}/24", node_addr(i)), "eth0");
            // lb sends XDP_TX frames (to the backends) out of eth0.
            attach_pass(&sw, &port, pass);
        }
        let gateway = Some(ROUTER.parse().expect("address"));
        for b in 0..3 {
            c.lab
                .add_backend(&sw, Ipv4Addr::new(10, 0, 5, 21 + b), gateway);
        }
        for b in 0..3 {
            c.lab.start_backend(b);
        }
        Ecmp {
            cluster: c,
            router: rt,
            router_bird: None,
        }
    }

    /// Writes `config`, starts BIRD on the router, `lb run --announce-table 100` (with
    /// `lb_extra`) and BIRD on every node, and waits until the router spreads the VIP
    /// over every node.
    pub fn start(&mut self, config: &str, lb_extra: &[&str]) {
        self.cluster.write_config(config);
        self.start_router_bird();
        let nodes = self.cluster.nodes.len();
        for i in 0..nodes {
            self.start_lb(i, lb_extra);
        }
        for i in 0..nodes {
            self.cluster.wait_serving(i, Duration::from_secs(30));
            self.cluster
                .wait_all_in_rotation(i, Duration::from_secs(30));
            self.start_bird(i);
        }
        self.wait_next_hops(&(0..nodes).collect(), Duration::from_secs(60));
    }

    /// Starts `lb run --announce-table 100` on node `i` (and `extra`).
    pub fn start_lb(&mut self, i: usize, extra: &[&str]) -> u32 {
        let mut args = vec!["--announce-table", TABLE];
        args.extend(extra);
        self.cluster.start_lb(i, &args)
    }

    fn bird_args(dir: &Path) -> Vec<String> {
        let d = dir.display();
        vec![
            "bird".into(),
            "-f".into(),
            "-c".into(),
            format!("{d}/bird.conf"),
            "-s".into(),
            format!("{d}/bird.ctl"),
            "-P".into(),
            format!("{d}/bird.pid"),
        ]
    }

    fn write_bird(dir: &Path, name: &str, text: &str) {
        let conf = render(name, text, &[("log syslog all;", "log stderr all;")]);
        std::fs::write(dir.join("bird.conf"), conf).expect("writing bird.conf");
    }

    /// Starts BIRD on the router, with examples/ha/bird-router.conf.
    pub fn start_router_bird(&mut self) {
        let dir = self.cluster.lab.dir.join("rt");
        std::fs::create_dir_all(&dir).expect("router directory");
        Self::write_bird(&dir, "examples/ha/bird-router.conf", BIRD_ROUTER);
        let args = Self::bird_args(&dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let rt = self.router.clone();
        self.router_bird = Some(self.cluster.lab.spawn(&rt, &args, "rt/bird.log"));
    }

    /// Starts BIRD on node `i`, with examples/ha/bird-lb.conf.
    pub fn start_bird(&mut self, i: usize) {
        let dir = self.cluster.nodes[i].dir.clone();
        Self::write_bird(&dir, "examples/ha/bird-lb.conf", BIRD_NODE);
        let args = Self::bird_args(&dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = self.cluster.spawn_on(i, &args, "bird.log");
        self.cluster.nodes[i].bird = Some(pid);
    }

    /// The nodes the router's route to the VIP leads to (none: no route).
    pub fn next_hops(&self) -> BTreeSet<usize> {
        let out = self
            .cluster
            .lab
            .exec(
                &self.router,
                &[
                    "ip",
                    "-4",
                    "route",
                    "show",
                    "exact",
                    &format!("{DSR_VIP}/32"),
                ],
            )
            .output()
            .expect("ip route");
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse::<Ipv4Addr>().ok())
            .filter_map(|a| (0..self.cluster.nodes.len()).find(|i| node_addr(*i) == a))
            .collect()
    }

    /// Waits (at most `limit`) until the router's route to the VIP leads to exactly
    /// `nodes`; returns how long it took.
    pub fn wait_next_hops(&self, nodes: &BTreeSet<usize>, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.next_hops() == *nodes {
                return start.elapsed();
            }
            sleep(Duration::from_millis(20));
        }
        panic!(
            "the router's route to {DSR_VIP} leads to nodes {:?}, not {nodes:?}, after {limit:?}\nrouter's BIRD:\n{}\n{}",
            self.next_hops(),
            self.birdc_router(&["show", "protocols"]),
            std::fs::read_to_string(self.cluster.lab.dir.join("rt/bird.log")).unwrap_or_default(),
        );
    }

    /// `birdc` on the router.
    pub fn birdc_router(&self, args: &[&str]) -> String {
        let ctl = self.cluster.lab.dir.join("rt/bird.ctl");
        let mut all = vec!["birdc", "-s", ctl.to_str().expect("UTF-8 path")];
        all.extend(args);
        let out = self
            .cluster
            .lab
            .exec(&self.router, &all)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The routes lb announces on node `i` (`ip route show table 100 proto 252`).
    pub fn announced(&self, i: usize) -> String {
        let out = self
            .cluster
            .lab
            .exec(
                &self.cluster.nodes[i].ns,
                &["ip", "route", "show", "table", TABLE, "proto", PROTOCOL],
            )
            .output()
            .expect("ip route");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Sets node `i`'s link to the segment down (cut off: no withdrawal, BFD notices)
    /// or up.
    pub fn link(&self, i: usize, up: bool) {
        let ns = &self.cluster.nodes[i].ns;
        ip(&[
            "-n",
            ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }
}
