//! End-to-end tests on the lab: real clients (curl, socat, iperf3) and servers (nginx,
//! socat) in network namespaces, through `lb run`, in both DSR and NAT modes. The
//! `ipv6_` tests run the same scenarios over IPv6 (a dual-stack lab, IPv6 services).
mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    thread::sleep,
    time::Duration,
};

use support::{
    lab::Mode,
    running::{QUICK_CHECK, Running},
};

fn assert_even(counts: &BTreeMap<String, usize>, n: usize, backends: &[&str]) {
    assert_eq!(
        counts.get("error"),
        None,
        "every request answered: {counts:?}"
    );
    let share = n as f64 / backends.len() as f64;
    for b in backends {
        let got = counts.get(*b).copied().unwrap_or(0) as f64;
        assert!(
            (got - share).abs() <= share * 0.25,
            "{b} got {got} of {n} (equal share {share:.0} ± 25%): {counts:?}"
        );
    }
    assert_eq!(counts.values().sum::<usize>(), n, "{counts:?}");
}

#[test]
fn dsr_spreads_new_connections_evenly() {
    let r = Running::start(Mode::Dsr, "lbt-d1", QUICK_CHECK, false);
    let counts = r.spread(300);
    assert_even(&counts, 300, &["b1", "b2", "b3"]);
}

#[test]
fn nat_spreads_new_connections_evenly() {
    let r = Running::start(Mode::Nat, "lbt-n1", QUICK_CHECK, false);
    let counts = r.spread(300);
    assert_even(&counts, 300, &["b1", "b2", "b3"]);
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Dsr => "dsr",
        Mode::Nat => "nat",
    }
}

/// The address family of a scenario's services and clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The lab of a scenario: its services over `family`, [`QUICK_CHECK`]ed.
fn start(mode: Mode, family: Family, prefix: &str) -> Running {
    match family {
        Family::V4 => Running::start(mode, prefix, QUICK_CHECK, false),
        Family::V6 => Running::start6(mode, prefix, QUICK_CHECK, false),
    }
}

fn run_ok(r: &Running, args: &[&str]) {
    let out = r.cli(args);
    assert!(
        out.status.success(),
        "lb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The HTTP service of the lab and a backend of it as lb names them (`[v6]:port` for
/// IPv6).
fn web(r: &Running) -> String {
    format!("{}/tcp", SocketAddr::new(r.vip(), 80))
}

fn backend_addr(r: &Running, name: &str) -> String {
    let i: usize = name[1..].parse::<usize>().expect("b<n>") - 1;
    let port = match r.lab.mode {
        Mode::Dsr => 80,
        Mode::Nat => support::lab::ALT_PORT,
    };
    let b = &r.lab.backends[i];
    let addr = if r.ipv6 {
        IpAddr::from(b.addr6.expect("a dual-stack lab"))
    } else {
        IpAddr::from(b.addr)
    };
    SocketAddr::new(addr, port).to_string()
}

/// The Maglev slot of a TCP connection to the lab's web service (of the client's
/// family), and the backend index the live table gives that slot (read from the
/// datapath's maps).
fn slot_owner(r: &Running, client: SocketAddr) -> (u32, u32) {
    use lb_common::{
        hash::{flow_hash, flow_hash6, ports_word},
        ipv6_words,
    };
    let prog = r.prog_ids()[0];
    let insp = lb_userspace::dataplane::inspect::Inspector::for_program(prog).expect("inspector");
    let ports = ports_word(client.port().to_be(), 80u16.to_be());
    let web = |port: u16, proto: u8| u16::from_be(port) == 80 && proto == 6;
    let (hash, size, table) = match (client.ip(), r.vip()) {
        (IpAddr::V4(client), IpAddr::V4(vip)) => {
            let ne = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
            let (_, svc) = insp
                .services()
                .expect("SERVICES")
                .into_iter()
                .find(|(k, _)| k.vip == ne(vip) && web(k.port, k.proto))
                .expect("the web service's record");
            let table = insp.table(&svc, svc.table_size).expect("TABLES");
            (
                flow_hash(ne(client), ne(vip), ports, 6),
                svc.table_size,
                table,
            )
        }
        (IpAddr::V6(client), IpAddr::V6(vip)) => {
            let words = |a: Ipv6Addr| ipv6_words(a.octets());
            let (_, svc) = insp
                .services6()
                .expect("SERVICES6")
                .into_iter()
                .find(|(k, _)| k.vip == words(vip) && web(k.port, k.proto))
                .expect("the web service's record");
            let table = insp.table(&svc, svc.table_size).expect("TABLES");
            let hash = flow_hash6(&words(client), &words(vip), ports, 6);
            (hash, svc.table_size, table)
        }
        _ => panic!("client {client} and VIP {} of different families", r.vip()),
    };
    let slot = hash % size;
    (slot, table.expect("a table")[slot as usize])
}

/// `lb conns --json` lists a connection from `client` (bracketed for IPv6).
fn conns_list(r: &Running, client: SocketAddr) -> bool {
    let out = r.cli(&["conns", "--json", "--limit", "100000"]);
    assert!(
        out.status.success(),
        "lb conns: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conns: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    conns["conns"].as_array().is_some_and(|rows| {
        rows.iter()
            .any(|c| c["client"].as_str() == Some(client.to_string().as_str()))
    })
}

/// The connection table keeps a connection on its backend when the Maglev table moves
/// the connection's own slot elsewhere: backends are added (secondary addresses of the
/// backends that do not serve it) until the slot changes hands, and the download goes
/// on to the end. Without the connection table it breaks (its packets follow the
/// table to a backend that knows nothing of it).
fn long_lived_connection_survives_table_changes(mode: Mode, family: Family, prefix: &str) {
    let r = start(mode, family, prefix);
    // Slower than the lab's rate (about 12 s): time to move the slot while it runs.
    // From a port of its own, so its slot is known without asking lb.
    let client: SocketAddr = match (mode, family) {
        (Mode::Dsr, Family::V4) => "10.0.0.2:47123",
        (Mode::Nat, Family::V4) => "10.0.1.2:47123",
        (Mode::Dsr, Family::V6) => "[fd00:10::2]:47123",
        (Mode::Nat, Family::V6) => "[fd00:11::2]:47123",
    }
    .parse()
    .unwrap();
    let stream = r.stream_with(&["--limit-rate", "700K", "--local-port", "47123"]);
    let serving = stream.backend();
    assert!(
        conns_list(&r, client),
        "{}: lb conns lists the connection from {client}",
        mode_name(mode)
    );
    let (slot, owner) = slot_owner(&r, client);
    let others: Vec<usize> = (0..r.lab.backends.len())
        .filter(|i| r.lab.backends[*i].name != serving)
        .collect();
    let port = match mode {
        Mode::Dsr => 80,
        Mode::Nat => support::lab::ALT_PORT,
    };
    let mut added = 0;
    while slot_owner(&r, client).1 == owner {
        assert!(
            added < 8,
            "{}: slot {slot} still owned by backend index {owner} after {added} backends were added",
            mode_name(mode)
        );
        let host = &r.lab.backends[others[added % others.len()]];
        let extra: IpAddr = match family {
            Family::V4 => {
                let o = host.addr.octets();
                let extra = Ipv4Addr::new(o[0], o[1], o[2], 100 + added as u8);
                support::lab::addr(&host.ns, &format!("{extra}/24"), "eth0");
                extra.into()
            }
            Family::V6 => {
                let mut s = host.addr6.expect("a dual-stack lab").segments();
                s[7] = 0x100 + added as u16;
                let extra = Ipv6Addr::from(s);
                support::lab::addr6(&host.ns, &format!("{extra}/64"), "eth0");
                extra.into()
            }
        };
        // A heavy one takes nearly every slot (the others keep their top preferences
        // only): one or two adds move the connection's slot.
        run_ok(
            &r,
            &[
                "backend",
                "add",
                &web(&r),
                &SocketAddr::new(extra, port).to_string(),
                "--weight",
                "65535",
            ],
        );
        added += 1;
    }
    // Past the flow cache's resync (1 s at HZ=250, 2.5 s at HZ=100): later packets are
    // decided by the connection table.
    sleep(Duration::from_secs(3));
    assert_eq!(
        stream.finish(),
        support::lab::BIG_BYTES as u64,
        "{}: the stream must complete after its slot moved ({added} backends added)",
        mode_name(mode)
    );
}

#[test]
fn dsr_long_lived_connection_survives_table_changes() {
    long_lived_connection_survives_table_changes(Mode::Dsr, Family::V4, "lbt-d2");
}

#[test]
fn nat_long_lived_connection_survives_table_changes() {
    long_lived_connection_survives_table_changes(Mode::Nat, Family::V4, "lbt-n2");
}

#[test]
fn ipv6_dsr_long_lived_connection_survives_table_changes() {
    long_lived_connection_survives_table_changes(Mode::Dsr, Family::V6, "lbt6-d2");
}

#[test]
fn ipv6_nat_long_lived_connection_survives_table_changes() {
    long_lived_connection_survives_table_changes(Mode::Nat, Family::V6, "lbt6-n2");
}

fn drain_keeps_connections_and_sends_new_ones_elsewhere(mode: Mode, family: Family, prefix: &str) {
    let r = start(mode, family, prefix);
    let stream = r.stream();
    let draining = stream.backend();
    run_ok(
        &r,
        &[
            "backend",
            "set",
            &web(&r),
            &backend_addr(&r, &draining),
            "--state",
            "drain",
        ],
    );
    let counts = r.spread(90);
    assert_eq!(
        counts.get(&draining),
        None,
        "new connections reached the draining {draining}: {counts:?}"
    );
    assert_eq!(counts.get("error"), None, "{counts:?}");
    assert_eq!(
        stream.finish(),
        support::lab::BIG_BYTES as u64,
        "the existing connection to the draining backend completes"
    );
}

#[test]
fn dsr_drain_keeps_connections_and_sends_new_ones_elsewhere() {
    drain_keeps_connections_and_sends_new_ones_elsewhere(Mode::Dsr, Family::V4, "lbt-d3");
}

#[test]
fn nat_drain_keeps_connections_and_sends_new_ones_elsewhere() {
    drain_keeps_connections_and_sends_new_ones_elsewhere(Mode::Nat, Family::V4, "lbt-n3");
}

#[test]
fn ipv6_dsr_drain_keeps_connections_and_sends_new_ones_elsewhere() {
    drain_keeps_connections_and_sends_new_ones_elsewhere(Mode::Dsr, Family::V6, "lbt6-d3");
}

#[test]
fn ipv6_nat_drain_keeps_connections_and_sends_new_ones_elsewhere() {
    drain_keeps_connections_and_sends_new_ones_elsewhere(Mode::Nat, Family::V6, "lbt6-n3");
}

fn failed_backend_is_taken_out(mode: Mode, family: Family, prefix: &str) {
    let mut r = start(mode, family, prefix);
    r.lab.stop_backend(1);
    let b2 = backend_addr(&r, "b2");
    r.wait_until("b2 down and out of rotation", |list| {
        list["services"][0]["backends"]
            .as_array()
            .is_some_and(|bs| {
                bs.iter().any(|b| {
                    b["backend"] == b2.as_str()
                        && b["health"]["state"] == "down"
                        && b["in_rotation"] == false
                })
            })
    });
    let counts = r.spread(150);
    assert_eq!(
        counts.get("error"),
        None,
        "after detection no request fails: {counts:?}"
    );
    assert_eq!(counts.get("b2"), None, "{counts:?}");
    assert!(
        r.log().contains("is DOWN (connection refused)"),
        "{}",
        r.log()
    );
}

#[test]
fn dsr_failed_backend_is_taken_out_and_no_request_fails_after_detection() {
    failed_backend_is_taken_out(Mode::Dsr, Family::V4, "lbt-d4");
}

#[test]
fn nat_failed_backend_is_taken_out_and_no_request_fails_after_detection() {
    failed_backend_is_taken_out(Mode::Nat, Family::V4, "lbt-n4");
}

#[test]
fn ipv6_dsr_failed_backend_is_taken_out_and_no_request_fails_after_detection() {
    failed_backend_is_taken_out(Mode::Dsr, Family::V6, "lbt6-d4");
}

#[test]
fn ipv6_nat_failed_backend_is_taken_out_and_no_request_fails_after_detection() {
    failed_backend_is_taken_out(Mode::Nat, Family::V6, "lbt6-n4");
}

/// IPv6 services spread TCP connections and UDP flows evenly over the three backends;
/// lb names the service `[VIP]:80/tcp`. In NAT, IPv6 traffic to a backend's own address
/// (not a VIP) crosses the balancer untouched (its kernel routes it).
fn ipv6_tcp_and_udp_services_are_balanced(mode: Mode, prefix: &str) {
    let r = start(mode, Family::V6, prefix);
    let list = r.list();
    assert_eq!(
        list["services"][0]["service"],
        format!("[{}]:80/tcp", r.lab.vip6()).as_str(),
        "{list}"
    );
    assert_even(&r.spread(300), 300, &["b1", "b2", "b3"]);
    assert_even(&r.udp_spread(300), 300, &["b1", "b2", "b3"]);
    if mode == Mode::Nat {
        let b1 = r.lab.backends[0].addr6.expect("IPv6");
        assert_eq!(r.lab.curl(&format!("http://[{b1}]/")), Ok("b1".to_string()));
    }
}

#[test]
fn ipv6_dsr_tcp_and_udp_services_are_balanced() {
    ipv6_tcp_and_udp_services_are_balanced(Mode::Dsr, "lbt6-d1");
}

#[test]
fn ipv6_nat_tcp_and_udp_services_are_balanced() {
    ipv6_tcp_and_udp_services_are_balanced(Mode::Nat, "lbt6-n1");
}

#[test]
fn dsr_udp_service_is_balanced() {
    let r = Running::start(Mode::Dsr, "lbt-d5", QUICK_CHECK, false);
    assert_even(&r.udp_spread(300), 300, &["b1", "b2", "b3"]);
}

#[test]
fn nat_udp_service_is_balanced() {
    let r = Running::start(Mode::Nat, "lbt-n5", QUICK_CHECK, false);
    assert_even(&r.udp_spread(300), 300, &["b1", "b2", "b3"]);
}

/// A request to an address that is not a VIP, through the balancer's host: in DSR the
/// balancer's own address (a server runs there), in NAT a backend's real address routed
/// by the balancer's kernel.
fn non_vip_url(r: &Running) -> String {
    match r.lab.mode {
        Mode::Dsr => "http://10.0.0.1:8081/".into(),
        Mode::Nat => format!("http://{}/", r.lab.backends[0].addr),
    }
}

fn sigterm_detaches_and_other_traffic_never_breaks(mode: Mode, prefix: &str) {
    let mut r = Running::start(mode, prefix, QUICK_CHECK, false);
    if mode == Mode::Dsr {
        let lb_ns = r.lab.lb_ns();
        let reply = r.lab.http_reply("lbhost", "lbhost\n", Duration::ZERO);
        r.lab.spawn(
            &lb_ns,
            &[
                "socat",
                "TCP-LISTEN:8081,reuseaddr,fork",
                &format!("SYSTEM:{reply}"),
            ],
            "host-server.log",
        );
        sleep(Duration::from_millis(300));
    }
    let url = non_vip_url(&r);
    let mut failures = Vec::new();
    let mut check = |r: &Running, when: &str| {
        for _ in 0..10 {
            if let Err(e) = r.lab.curl(&url) {
                failures.push(format!("{when}: {e}"));
            }
        }
    };
    check(&r, "with lb attached");
    assert!(
        !r.spread(30).contains_key("error"),
        "VIP traffic works while attached"
    );
    // SIGTERM to lb run, by its PID: it detaches and stops.
    // SAFETY: kill(2) on the PID of the lb we started.
    unsafe { libc::kill(r.lb_pid as i32, libc::SIGTERM) };
    for _ in 0..100 {
        check(&r, "while lb stops");
        if r.log().contains("stopped") {
            break;
        }
    }
    assert!(r.log().contains("detached from"), "{}", r.log());
    for iface in r.lab.lb_ifaces() {
        let out = r
            .lab
            .exec(&r.lab.lb_ns(), &["ip", "-d", "link", "show", "dev", iface])
            .output()
            .expect("ip");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("prog/xdp"),
            "{iface} still runs an XDP program"
        );
    }
    check(&r, "after lb stopped");
    assert!(
        failures.is_empty(),
        "{}: traffic to {url} broke: {failures:?}",
        mode_name(mode)
    );
}

#[test]
fn dsr_sigterm_detaches_and_other_traffic_never_breaks() {
    sigterm_detaches_and_other_traffic_never_breaks(Mode::Dsr, "lbt-d6");
}

#[test]
fn nat_sigterm_detaches_and_other_traffic_never_breaks() {
    sigterm_detaches_and_other_traffic_never_breaks(Mode::Nat, "lbt-n6");
}

/// Handshakes in flight while the table keeps changing complete: a SYN's backend is
/// kept for its handshake (lb's half-open slots), whatever the table says when the ACK
/// comes. The table changes every 100 ms (weights move slots between all backends)
/// while 300 connections are made one after the other; none fails.
fn handshakes_complete_while_the_table_changes(mode: Mode, prefix: &str) {
    let r = Running::start(mode, prefix, QUICK_CHECK, false);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (counts, changes) = std::thread::scope(|s| {
        let changer = s.spawn(|| {
            let mut changes = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let b = format!("b{}", changes % 3 + 1);
                let weight = if changes % 2 == 0 { "300" } else { "100" };
                run_ok(
                    &r,
                    &[
                        "backend",
                        "set",
                        &web(&r),
                        &backend_addr(&r, &b),
                        "--weight",
                        weight,
                    ],
                );
                changes += 1;
                sleep(Duration::from_millis(100));
            }
            changes
        });
        let counts = r.spread(300);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (counts, changer.join().expect("the changer"))
    });
    assert!(changes >= 10, "only {changes} table changes happened");
    assert_eq!(
        counts.get("error"),
        None,
        "{}: connections failed while the table changed {changes} times: {counts:?}",
        mode_name(mode)
    );
    assert_eq!(counts.values().sum::<usize>(), 300);
}

#[test]
fn dsr_handshakes_complete_while_the_table_changes() {
    handshakes_complete_while_the_table_changes(Mode::Dsr, "lbt-d9");
}

#[test]
fn nat_handshakes_complete_while_the_table_changes() {
    handshakes_complete_while_the_table_changes(Mode::Nat, "lbt-n9");
}

/// A DSR backend whose MAC can no longer be resolved (it stops answering ARP) leaves
/// rotation, with the reason logged, and the flows pinned to it choose another backend;
/// when it answers again it comes back. Health checks are off, so the neighbour alone
/// decides. Detection is bounded by lb's neighbour refresh (5 s) plus the kernel's
/// probes of a stale entry (delay_first_probe_time, set to 1 s here, and 3 unicast
/// probes 1 s apart), with slack.
#[test]
fn dsr_backend_whose_mac_is_lost_leaves_rotation_and_returns() {
    let udp_check = r#"{"kind": "tcp", "probe_port": 80, "interval_ms": 1000, "timeout_ms": 1000, "rise": 1, "fall": 3}"#;
    let r = Running::start_with(
        Mode::Dsr,
        "lbt-d10",
        |lab| {
            lab.config(r#"{"kind": "none"}"#, false)
                .replace(udp_check, r#"{"kind": "none"}"#)
        },
        "every backend in rotation",
        support::running::all_in_rotation,
    );
    support::lab::must(&mut r.lab.exec(
        &r.lab.lb_ns(),
        &[
            "sysctl",
            "-qw",
            "net.ipv4.neigh.eth0.delay_first_probe_time=1",
        ],
    ));
    // A UDP flow pinned to b1 (found by trying source ports).
    let port = (40000..40100)
        .find(|p| r.udp_from(*p) == "b1")
        .expect("a source port whose flow b1 serves");
    let b1 = r.lab.backends[0].addr.to_string();
    support::lab::must(&mut r.lab.exec(
        &r.lab.backends[0].ns,
        &["ip", "link", "set", "dev", "eth0", "arp", "off"],
    ));
    let b1_state = |list: &serde_json::Value, in_rotation: bool| {
        list["services"].as_array().is_some_and(|s| {
            s.iter().all(|svc| {
                svc["backends"].as_array().is_some_and(|bs| {
                    bs.iter().any(|b| {
                        b["backend"]
                            .as_str()
                            .is_some_and(|a| a.starts_with(&format!("{b1}:")))
                            && b["in_rotation"] == in_rotation
                    })
                })
            })
        })
    };
    r.wait_until_within(
        "b1 out of rotation once its MAC is lost",
        Duration::from_secs(60),
        |l| b1_state(l, false),
    );
    assert!(
        r.log()
            .contains(&format!("DSR backend {b1} gets no traffic: ")),
        "the reason is logged:\n{}",
        r.log()
    );
    // Its flows choose again, and new ones avoid it.
    let now = r.udp_from(port);
    assert!(
        now == "b2" || now == "b3",
        "the flow pinned to b1 moved: answered by {now}"
    );
    let counts = r.spread(30);
    assert_eq!(counts.get("b1"), None, "{counts:?}");
    assert_eq!(counts.get("error"), None, "{counts:?}");

    support::lab::must(&mut r.lab.exec(
        &r.lab.backends[0].ns,
        &["ip", "link", "set", "dev", "eth0", "arp", "on"],
    ));
    r.wait_until_within(
        "b1 back in rotation once it answers ARP again",
        Duration::from_secs(60),
        |l| b1_state(l, true),
    );
    assert!(
        r.log()
            .contains(&format!("DSR backend {b1} is reachable again")),
        "the return is logged:\n{}",
        r.log()
    );
    let counts = r.spread(60);
    assert!(counts.get("b1").is_some_and(|n| *n > 0), "{counts:?}");
}
