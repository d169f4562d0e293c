//! The datapath outlives the daemon: a crash keeps it forwarding, the next `lb run`
//! adopts it, `--takeover` hands it over for an upgrade, SIGTERM with a grace stops
//! serving at once and detaches later; and pin directories that are not this instance's
//! datapath are left alone.
//!
//! Each lab test runs, throughout, a client that opens a new TCP connection for every
//! request (a request fails if it has no answer within 5 s) and one long-lived
//! connection that exchanges a request every 100 ms, in DSR and in NAT.
#![cfg(feature = "root-tests")]

mod support;

use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    lab::Mode,
    running::{QUICK_CHECK, Running},
    traffic::Traffic,
};

fn connections(r: &Running) -> Value {
    let out = r.cli(&["conns", "--json", "--limit", "100000"]);
    assert!(
        out.status.success(),
        "lb conns: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn lists_client_port(conns: &Value, port: u16) -> bool {
    conns["conns"].as_array().is_some_and(|rows| {
        rows.iter().any(|c| {
            c["client"]
                .as_str()
                .is_some_and(|a| a.ends_with(&format!(":{port}")))
        })
    })
}

fn crash_and_adoption(mode: Mode, prefix: &str) {
    stop_and_adoption(mode, prefix, libc::SIGKILL);
}

/// The daemon goes (`signal`: SIGKILL, or SIGUSR2, which leaves the datapath on
/// purpose); the datapath forwards on; a new daemon adopts it.
fn stop_and_adoption(mode: Mode, prefix: &str, signal: i32) {
    let mut r = Running::start(mode, prefix, QUICK_CHECK, false);
    let progs = r.prog_ids();
    assert!(progs.iter().all(|p| *p != 0), "{progs:?}");
    let traffic = Traffic::start(&r.lab);
    let answered = traffic.assert_clean("before the crash", 0);
    let port = traffic.session.seen().local_port;
    assert!(lists_client_port(&connections(&r), port));

    // kill -9: nothing of the daemon runs, the datapath keeps forwarding.
    r.lab.signal(r.lb_pid, signal);
    let status = r
        .lab
        .wait_exit(r.lb_pid, Duration::from_secs(10))
        .expect("lb exits");
    if signal == libc::SIGUSR2 {
        assert!(status.success(), "SIGUSR2 is a clean exit: {status}");
        assert!(
            r.log().contains("stopped, leaving the datapath running"),
            "{}",
            r.log()
        );
    }
    sleep(Duration::from_secs(5));
    let answered = traffic.assert_clean("5 s after the daemon went", answered);
    let (serving, line) = r.status();
    assert!(!serving, "lb status after kill -9: {line}");
    assert!(line.contains("no daemon answers"), "{line}");
    assert_eq!(r.prog_ids(), progs, "the program stays attached");

    // A new daemon adopts the datapath: the same program, the connections kept.
    let (pid, log) = r.start_daemon(&[], &[]);
    r.wait_serving(&log);
    sleep(Duration::from_secs(1));
    traffic.assert_clean("after the restart", answered);
    assert!(
        r.log_of(&log).contains("adopted the datapath"),
        "{}",
        r.log_of(&log)
    );
    assert_eq!(r.prog_ids(), progs, "the same object: the program is kept");
    assert!(
        lists_client_port(&connections(&r), port),
        "lb conns lists the connection made before the crash"
    );
    let t = traffic.load.stop();
    assert!(t.failed.is_empty(), "{:?}", t.failed);
    assert!(t.ok > 100, "the load ran: {} answers", t.ok);
    r.lb_pid = pid;
}

#[test]
fn dsr_kill_9_keeps_forwarding_and_a_restart_adopts() {
    crash_and_adoption(Mode::Dsr, "lcd1");
}

#[test]
fn nat_kill_9_keeps_forwarding_and_a_restart_adopts() {
    crash_and_adoption(Mode::Nat, "lcn1");
}

#[test]
fn dsr_sigusr2_leaves_the_datapath_for_the_next_lb_run() {
    stop_and_adoption(Mode::Dsr, "lcd4", libc::SIGUSR2);
}

/// The benchmark object: its `lb` program is the same datapath in another object, so
/// a daemon running it must replace the program.
fn other_object() -> String {
    concat!(env!("OUT_DIR"), "/lb-bench").to_string()
}

fn takeover(mode: Mode, prefix: &str) {
    let mut r = Running::start(mode, prefix, QUICK_CHECK, false);
    let progs = r.prog_ids();
    let traffic = Traffic::start(&r.lab);
    let mut answered = traffic.assert_clean("before the takeovers", 0);
    for (env, same) in [(None, true), (Some(other_object()), false)] {
        let old = r.lb_pid;
        let env: Vec<(&str, &str)> = env
            .as_deref()
            .map(|o| ("LB_XDP_OBJECT", o))
            .into_iter()
            .collect();
        let (pid, log) = r.start_daemon(&["--takeover"], &env);
        let status = r
            .lab
            .wait_exit(old, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the old daemon did not exit; new log:\n{}", r.log_of(&log)));
        assert!(status.success(), "the old daemon exits 0: {status}");
        r.wait_serving(&log);
        r.lb_pid = pid;
        sleep(Duration::from_secs(1));
        answered =
            traffic.assert_clean(&format!("after a takeover (same object: {same})"), answered);
        let now = r.prog_ids();
        if same {
            assert_eq!(now, progs, "the same object: the program id stays");
        } else {
            assert!(
                now.iter().zip(&progs).all(|(a, b)| a != b && *a != 0),
                "another object: every interface runs a new program ({progs:?} -> {now:?})"
            );
            assert!(r.log_of(&log).contains("replaced by"), "{}", r.log_of(&log));
        }
        let (serving, line) = r.status();
        assert!(serving, "{line}");
        assert!(
            line.contains(&format!("pid {pid}")),
            "the new daemon answers: {line}"
        );
    }
    let t = traffic.load.stop();
    assert!(t.failed.is_empty(), "{:?}", t.failed);
}

#[test]
fn dsr_takeover_hands_over_without_a_failed_request() {
    takeover(Mode::Dsr, "lcd2");
}

#[test]
fn nat_takeover_hands_over_without_a_failed_request() {
    takeover(Mode::Nat, "lcn2");
}

fn graceful_stop(mode: Mode, prefix: &str) {
    let mut r = Running::start(mode, prefix, QUICK_CHECK, false);
    // The first daemon stops: start one with the grace, by takeover.
    let old = r.lb_pid;
    let (pid, log) = r.start_daemon(&["--takeover", "--stop-grace-ms", "2000"], &[]);
    r.lab
        .wait_exit(old, Duration::from_secs(30))
        .expect("the first daemon hands over");
    r.wait_serving(&log);
    r.lb_pid = pid;
    let traffic = Traffic::start(&r.lab);
    let answered = traffic.assert_clean("before SIGTERM", 0);
    let pin_dir = r.lab.pin_dir();
    assert!(pin_dir.exists());
    r.lab.signal(pid, libc::SIGTERM);
    let stopped = Instant::now();
    // Not serving at once...
    sleep(Duration::from_millis(200));
    let (serving, line) = r.status();
    assert!(
        !serving && line.contains("stopping"),
        "lb status during the grace: {line}"
    );
    // ...forwarding for the grace...
    sleep(Duration::from_millis(1300));
    assert!(
        stopped.elapsed() < Duration::from_millis(2000),
        "the check ran late"
    );
    traffic.assert_clean("during the grace", answered);
    assert!(
        r.prog_ids().iter().all(|p| *p != 0),
        "attached during the grace"
    );
    // ...then detached, pins gone.
    let status = r
        .lab
        .wait_exit(pid, Duration::from_secs(20))
        .expect("lb exits after the grace");
    assert!(status.success(), "{status}");
    assert!(
        stopped.elapsed() >= Duration::from_millis(2000),
        "lb detached before its grace was over"
    );
    assert_eq!(
        r.prog_ids(),
        vec![0; r.lab.lb_ifaces().len()],
        "no XDP program left"
    );
    assert!(!pin_dir.exists(), "the pin directory is gone");
    assert!(
        r.log_of(&log).contains("detached from"),
        "{}",
        r.log_of(&log)
    );
    let (serving, line) = r.status();
    assert!(!serving && line.contains("no daemon answers"), "{line}");
    drop(traffic);
}

#[test]
fn dsr_sigterm_with_a_grace_stops_serving_at_once_then_detaches() {
    graceful_stop(Mode::Dsr, "lcd3");
}

#[test]
fn nat_sigterm_with_a_grace_stops_serving_at_once_then_detaches() {
    graceful_stop(Mode::Nat, "lcn3");
}

// ---- pin directories that are not this instance's datapath ----------------------------

mod pins {
    use std::path::{Path, PathBuf};

    use aya::maps::{Array, IterableMap as _, MapData};
    use lb_common::{MAP_PIN_META, PIN_MAGIC, PinMeta};
    use lb_lab::bpffs::BpfFs;

    use super::support::daemon::{Daemon, Netns, Scratch};

    const CONFIG: &str = r#"{"conntrack": {"max_entries": 1024}, "services": [
        {"vip": "10.100.0.10", "port": 80, "table_size": 251, "health_check": {"kind": "none"},
         "backends": [{"address": "10.0.0.11"}]}]}"#;

    /// A namespace with two veth pairs (v0 and v2 for lb), a config and a bpffs.
    fn setup() -> (Netns, Scratch, PathBuf, BpfFs) {
        let ns = Netns::new();
        for (a, b, net) in [("v0", "v1", 0), ("v2", "v3", 2)] {
            ns.ip(&format!("link add {a} type veth peer name {b}"));
            ns.ip(&format!("link set {a} up"));
            ns.ip(&format!("link set {b} up"));
            ns.ip(&format!("addr add 10.0.{net}.1/24 dev {a}"));
        }
        ns.ip("neigh add 10.0.0.11 lladdr 02:00:00:00:00:0b dev v0 nud permanent");
        let scratch = Scratch::new("pins");
        let config = scratch.write("lb.json", CONFIG);
        let bpffs = BpfFs::mount(&scratch.path().join("bpf")).expect("mounting a bpffs");
        (ns, scratch, config, bpffs)
    }

    fn pin_dir_arg(dir: &Path) -> String {
        dir.display().to_string()
    }

    /// Pins a one-entry array at `path` holding `value` (a u64 for a foreign map, a
    /// PinMeta for a record).
    fn pin_array<T: aya::Pod>(path: &Path, value: T) {
        let mut a = Array::<MapData, T>::create(1, 0).expect("creating a map");
        a.set(0, value, 0).expect("writing it");
        a.map().pin(path).expect("pinning it");
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("reading the directory")
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn refused(ns: &Netns, iface: &str, config: &Path, dir: &Path) -> String {
        let mut d = Daemon::spawn(ns, &[iface], config, &["--pin-dir", &pin_dir_arg(dir)]);
        let status = d
            .wait_exit(std::time::Duration::from_secs(20))
            .expect("lb run exits");
        assert!(
            !status.success(),
            "lb run started over {}: {}",
            dir.display(),
            d.log()
        );
        assert!(
            ns.xdp_program(iface).is_none(),
            "nothing attached to {iface}"
        );
        d.log()
    }

    #[test]
    fn foreign_and_other_layout_pins_are_refused_and_left_untouched() {
        super::support::require_root();
        let (ns, _scratch, config, bpffs) = setup();
        let foreign = bpffs.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        pin_array(&foreign.join("their_map"), 7u64);
        let log = refused(&ns, "v0", &config, &foreign);
        assert!(
            log.contains(&format!(
                "the pin directory {} holds pins that are not an lb datapath's",
                foreign.display()
            )),
            "{log}"
        );
        assert_eq!(listing(&foreign), vec!["their_map"], "left as it was");

        let old = bpffs.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        pin_array(
            &old.join(MAP_PIN_META),
            PinMeta {
                magic: PIN_MAGIC,
                layout: 999,
                ..Default::default()
            },
        );
        let log = refused(&ns, "v0", &config, &old);
        assert!(
            log.contains("holds an lb datapath of layout version 999")
                && log.contains(&format!("lb detach --pin-dir {}", old.display())),
            "{log}"
        );
        assert_eq!(listing(&old), vec![MAP_PIN_META], "left as it was");
    }

    #[test]
    fn another_instance_is_left_alone_and_one_instance_runs_once() {
        super::support::require_root();
        let (ns, _scratch, config, bpffs) = setup();
        let a = bpffs.path().join("a");
        let b = bpffs.path().join("b");
        // Instance b runs on v2, then crashes: its datapath stays, pinned.
        let mut db = Daemon::start(
            &ns,
            &["v2"],
            &config,
            &["--name", "b", "--pin-dir", &pin_dir_arg(&b)],
        );
        let b_prog = ns.xdp_program("v2").expect("b attached").id;
        db.signal(libc::SIGKILL);
        db.wait_exit(std::time::Duration::from_secs(10))
            .expect("b exits");
        let b_pins = listing(&b);
        // Instance a starts on v0, fresh: b's pins and program are not touched.
        let da = Daemon::start(
            &ns,
            &["v0"],
            &config,
            &["--name", "a", "--pin-dir", &pin_dir_arg(&a)],
        );
        assert!(!da.log().contains("adopted"), "{}", da.log());
        assert_eq!(listing(&b), b_pins, "b's pins are left alone");
        assert_eq!(ns.xdp_program("v2").map(|p| p.id), Some(b_prog));
        // A second daemon of instance a (another socket) is refused; the first runs on.
        let log = {
            let mut second = Daemon::spawn(
                &ns,
                &["v0"],
                &config,
                &["--name", "a", "--pin-dir", &pin_dir_arg(&a)],
            );
            let status = second
                .wait_exit(std::time::Duration::from_secs(20))
                .expect("the second daemon exits");
            assert!(!status.success());
            second.log()
        };
        assert!(
            log.contains(&format!(
                "another lb run is using the pin directory {} (the same instance)",
                a.display()
            )),
            "{log}"
        );
        let list = da.request(r#"{"op":"status"}"#);
        assert_eq!(list["result"]["serving"], true, "{list}");
        // `lb detach` removes b's orphaned datapath on purpose.
        let out = super::support::daemon::output_within(
            std::process::Command::new(super::support::daemon::LB).args([
                "detach",
                "--pin-dir",
                &pin_dir_arg(&b),
            ]),
            std::time::Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!b.exists(), "b's pins are gone");
        assert!(ns.xdp_program("v2").is_none(), "b's program is detached");
        // It refuses a running instance.
        let out = super::support::daemon::output_within(
            std::process::Command::new(super::support::daemon::LB).args([
                "detach",
                "--pin-dir",
                &pin_dir_arg(&a),
            ]),
            std::time::Duration::from_secs(30),
        );
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("a daemon of this instance is running"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(da);
    }
}
