//! An active/standby pair: two lb nodes with the same configuration and keepalived
//! (examples/ha/keepalived-*.conf) floating the VIP — and, for NAT, the backends'
//! gateway — between them.
//!
//! Every failover test runs, throughout, new connections (a request fails without an
//! answer within 5 s) and long-lived connections exchanging a request every 100 ms, and
//! demands: 0 failed requests, every long-lived connection alive on its backend, the new
//! master serving (it takes new connections). Detection is keepalived's (adverts every
//! 1 s, `lb status` every 1 s, fall 2): waits are bounded with slack, never timed.
//!
//! In NAT, the new master also translates the replies of connections it never saw:
//! usually the client's next packet reaches it first (the connection gets an entry
//! there); `nat_the_new_master_translates_the_reply_of_a_connection_it_never_saw` makes
//! the reply come first, which takes a reverse translation derived from the
//! configuration.
#![cfg(feature = "root-tests")]

mod support;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    thread::sleep,
    time::Duration,
};

use lb_lab::{ha::Pair, lab::Mode, load::Traffic};
use lb_userspace::dataplane::inspect::Inspector;
use support::running::{LB, QUICK_CHECK, pass_object};

/// keepalived's detection, with slack for a loaded machine: an advert interval of 1 s,
/// `lb status` failing twice 1 s apart, three missed adverts for a silent master.
const FAILOVER_WITHIN: Duration = Duration::from_secs(20);
/// `--stop-grace-ms`: longer than keepalived takes to move the VIP after `lb status`
/// fails (about 2–3 s).
const GRACE_MS: &str = "8000";

fn vip(p: &Pair) -> SocketAddr {
    SocketAddr::from((p.cluster.lab.vip().parse::<Ipv4Addr>().unwrap(), 80))
}

/// A pair serving with keepalived, lb1 the master, traffic running.
fn pair(mode: Mode, prefix: &str) -> (Pair, Traffic) {
    support::require_root();
    let mut p = Pair::up(mode, prefix, Path::new(LB), &pass_object());
    let config = p.cluster.lab.config(QUICK_CHECK, false);
    p.start(&config, &["--stop-grace-ms", GRACE_MS]);
    let traffic = Traffic::start(&p.cluster.lab.client_ns(), vip(&p), 4);
    sleep(Duration::from_secs(1));
    let problems = traffic.problems(&[]);
    assert!(problems.is_empty(), "before the failover: {problems:#?}");
    (p, traffic)
}

/// Panics with the nodes' logs unless nothing went wrong since `before`.
fn assert_clean(p: &Pair, traffic: &Traffic, when: &str, before: &[usize]) {
    traffic.assert_clean(when, before, || p.cluster.logs());
}

/// After a failover to lb2: traffic goes on for 3 s, lb2 takes the new connections,
/// nothing failed.
fn after_failover(p: &Pair, traffic: &Traffic, what: &str, before: &[usize]) {
    let conns = p.cluster.conns();
    sleep(Duration::from_secs(3));
    let taken = p.cluster.conns_since(&conns);
    if taken[1] == 0 {
        // Something is stuck: a failed request shows after its 5 s.
        sleep(lb_lab::load::ANSWER_WITHIN);
    }
    assert_clean(p, traffic, &format!("after {what}"), before);
    assert!(
        taken[1] > 0,
        "{what}: lb2, the new master, took no new connection ({taken:?})"
    );
}

fn stop_keepalived(mode: Mode, prefix: &str) {
    let (mut p, traffic) = pair(mode, prefix);
    let before = traffic.answered();
    p.stop_keepalived(0);
    p.wait_master(1, FAILOVER_WITHIN);
    after_failover(&p, &traffic, "keepalived stopped on lb1", &before);
}

#[test]
fn dsr_stopping_keepalived_on_the_master_fails_no_request() {
    stop_keepalived(Mode::Dsr, "had1");
}

#[test]
fn nat_stopping_keepalived_on_the_master_fails_no_request() {
    stop_keepalived(Mode::Nat, "han1");
}

fn sigterm(mode: Mode, prefix: &str) {
    let (mut p, traffic) = pair(mode, prefix);
    let before = traffic.answered();
    p.cluster.signal_lb(0, libc::SIGTERM);
    // `lb status` fails at once; keepalived moves the VIP within the grace.
    p.wait_master(1, FAILOVER_WITHIN);
    assert!(
        p.cluster.nodes[0].lb.is_some() && p.cluster.lb_log(0).contains("forwarding for"),
        "lb1 is in its grace: {}",
        p.cluster.lb_log(0)
    );
    after_failover(&p, &traffic, "SIGTERM to lb run on lb1", &before);
    // The grace ends, lb1 detaches: nothing changes for the traffic.
    let status = p.cluster.wait_lb_exit(0, Duration::from_secs(30));
    assert!(status.success(), "lb run on lb1 exits 0: {status}");
    let before = traffic.answered();
    sleep(Duration::from_secs(2));
    assert_clean(&p, &traffic, "after lb1 detached", &before);
}

#[test]
fn dsr_sigterm_to_lb_on_the_master_fails_no_request() {
    sigterm(Mode::Dsr, "had2");
}

#[test]
fn nat_sigterm_to_lb_on_the_master_fails_no_request() {
    sigterm(Mode::Nat, "han2");
}

fn kill_9(mode: Mode, prefix: &str) {
    let (mut p, traffic) = pair(mode, prefix);
    let before = traffic.answered();
    p.cluster.signal_lb(0, libc::SIGKILL);
    p.cluster.wait_lb_exit(0, Duration::from_secs(10));
    // The datapath forwards on; keepalived's `lb status` fails and the VIP moves.
    p.wait_master(1, FAILOVER_WITHIN);
    after_failover(&p, &traffic, "kill -9 of lb run on lb1", &before);
}

#[test]
fn dsr_kill_9_of_lb_on_the_master_fails_no_request() {
    kill_9(Mode::Dsr, "had3");
}

#[test]
fn nat_kill_9_of_lb_on_the_master_fails_no_request() {
    kill_9(Mode::Nat, "han3");
}

fn maintenance(mode: Mode, prefix: &str) {
    let (p, traffic) = pair(mode, prefix);
    let before = traffic.answered();
    p.maintenance(0, true);
    p.wait_master(1, FAILOVER_WITHIN);
    after_failover(&p, &traffic, "maintenance of lb1", &before);
    // Failback: lb1 takes the VIP back.
    let before = traffic.answered();
    p.maintenance(0, false);
    p.wait_master(0, FAILOVER_WITHIN);
    let conns = p.cluster.conns();
    sleep(Duration::from_secs(3));
    assert!(
        p.cluster.conns_since(&conns)[0] > 0,
        "lb1 took no new connection after the failback"
    );
    assert_clean(&p, &traffic, "after the failback to lb1", &before);
}

#[test]
fn dsr_maintenance_moves_the_vip_and_back_without_a_failed_request() {
    maintenance(Mode::Dsr, "had4");
}

#[test]
fn nat_maintenance_moves_the_vip_and_back_without_a_failed_request() {
    maintenance(Mode::Nat, "han4");
}

/// A NAT connection whose reply reaches the new master before any packet of the client
/// does: the client sent its request through lb1, the backend answers 4 s later, after
/// keepalived moved the VIP and the backends' gateway to lb2. lb2 never saw the
/// connection (the client is silent, waiting), so only a reverse translation derived
/// from the configuration gets the answer to the client.
#[test]
fn nat_the_new_master_translates_the_reply_of_a_connection_it_never_saw() {
    support::require_root();
    let delay = Duration::from_secs(4);
    let mut p = Pair::up(Mode::Nat, "han5", Path::new(LB), &pass_object());
    let config = p.cluster.lab.http_service(r#"{"kind": "none"}"#);
    for b in 0..3 {
        p.cluster.lab.make_slow(b, delay);
    }
    p.start(&config, &[]);
    let url = format!("http://{}/", p.cluster.lab.vip());
    let curl = p
        .cluster
        .lab
        .exec(
            &p.cluster.lab.client_ns(),
            &["curl", "-s", "-S", "-m", "15", &url],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    // The request is through lb1; lb1 gives the VIP and the gateway up.
    sleep(Duration::from_millis(500));
    p.stop_keepalived(0);
    let took = p.wait_master(1, FAILOVER_WITHIN);
    assert!(
        took + Duration::from_millis(500) < delay,
        "the failover took {took:?}, longer than the backend's {delay:?}: nothing was tested"
    );
    let out = curl.wait_with_output().expect("curl");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with('b'),
        "the answer did not reach the client through lb2 ({}): {}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        p.cluster.logs()
    );
}

// ---- determinism ------------------------------------------------------------------------

/// Every service's live Maglev table on node `i`, slot by slot as backend address and
/// port (indexes are each node's own; what a flow reaches is the address).
fn tables(p: &Pair, i: usize) -> BTreeMap<String, Vec<Option<(u32, u16)>>> {
    let out = p
        .cluster
        .lab
        .exec(
            &p.cluster.nodes[i].ns,
            &["ip", "-d", "link", "show", "dev", "eth0"],
        )
        .output()
        .expect("ip link");
    let prog = support::daemon::parse_xdp_program(&String::from_utf8_lossy(&out.stdout))
        .expect("lb's program is attached");
    let inspector = Inspector::for_program(prog.id).expect("inspecting the datapath");
    inspector
        .services()
        .expect("services")
        .into_iter()
        .map(|(key, svc)| {
            let slots = inspector
                .table(&svc, svc.table_size)
                .expect("table")
                .expect("a live table");
            let slots = slots
                .iter()
                .map(|&b| {
                    (b != lb_common::NO_BACKEND).then(|| {
                        let r = inspector.backend(b).expect("backend");
                        (r.addr, r.port)
                    })
                })
                .collect();
            (format!("{key:?} flags {}", svc.flags), slots)
        })
        .collect()
}

#[test]
fn the_same_configuration_gives_the_same_tables_on_two_nodes() {
    support::require_root();
    let mut p = Pair::up(Mode::Dsr, "hadet", Path::new(LB), &pass_object());
    let config = p.cluster.lab.config(QUICK_CHECK, false);
    // lb2 gets there by another road: its backends listed in reverse order, then one
    // removed and added back at run time (new indexes and epochs), then a reload.
    let reversed = {
        let addrs: Vec<String> = p
            .cluster
            .lab
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        let mut text = config.clone();
        for (k, a) in addrs.iter().enumerate() {
            text = text.replace(a, &format!("@{k}@"));
        }
        for (k, a) in addrs.iter().rev().enumerate() {
            text = text.replace(&format!("@{k}@"), a);
        }
        text
    };
    assert_ne!(reversed, config);
    p.start_lbs(&reversed, &[]);
    let run = |args: &[&str]| {
        let out = p.cluster.lb(1, args);
        assert!(
            out.status.success(),
            "lb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["backend", "del", "10.100.0.10:80/tcp", "10.0.0.12"]);
    run(&["backend", "add", "10.100.0.10:80/tcp", "10.0.0.12"]);
    // lb1 keeps the reversed file it started with; lb2 reloads the lab's order.
    p.cluster.write_config(&config);
    run(&["reload"]);
    p.cluster.wait_all_in_rotation(1, Duration::from_secs(30));
    let (t1, t2) = (tables(&p, 0), tables(&p, 1));
    assert_eq!(t1.len(), 2, "two services: {:?}", t1.keys());
    for (svc, slots) in &t1 {
        assert!(
            slots.iter().all(Option::is_some),
            "{svc}: every slot is taken"
        );
        assert!(
            t2.get(svc) == Some(slots),
            "{svc}: lb1 and lb2 send some flows to different backends"
        );
    }
    // The comparison sees a difference when there is one: another weight on lb2.
    run(&[
        "backend",
        "set",
        "10.100.0.10:80/tcp",
        "10.0.0.12",
        "--weight",
        "50",
    ]);
    assert_ne!(tables(&p, 0), tables(&p, 1), "a weight changes the table");
}
