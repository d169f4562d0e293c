//! The package under a real systemd: a container (systemd-nspawn) boots this machine's
//! own Debian, read-only under a throw-away overlay, inside the lab's balancer namespace,
//! with the lab's bpffs as its /sys/fs/bpf. There the test installs the .deb with dpkg and
//! drives lb.service with systemctl while a client in the lab keeps opening connections
//! and keeps one connection exchanging:
//! - the first install neither enables nor starts lb; `systemctl enable --now` starts it
//!   with the options of /etc/default/lb and the capabilities of the unit;
//! - `systemctl reload` applies a good configuration and fails on a bad one;
//! - an upgrade (`dpkg -i` of the package over itself: postinst `configure` with the
//!   old version) hands over: a new daemon adopts, and no request fails;
//! - a crash (SIGKILL) is restarted by `Restart=on-failure` and adopts;
//! - `systemctl stop` detaches, and `dpkg --purge` removes the package and its conffiles.
//!
//! Nothing of the host changes: the container's writes go to a tmpfs.
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    lab::{Lab, Mode},
    running::{QUICK_CHECK, all_in_rotation, pass_object},
    traffic::Traffic,
};

const NSPAWN: &str = "/usr/bin/systemd-nspawn";

/// A booted container of this machine's OS (see the module's comment).
struct Container {
    nspawn: Option<Child>,
    /// The container's PID 1 (systemd), as the host sees it.
    init: u32,
    /// The container's root: an overlay of / with `upper` on top.
    root: PathBuf,
    /// A tmpfs holding the overlay's writable layer.
    upper: PathBuf,
    log: PathBuf,
}

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().expect("mount");
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first process under `pid` (itself included) whose name is `comm`.
fn find_descendant(pid: u32, comm: &str) -> Option<u32> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if name.trim() == comm {
        return Some(pid);
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            if let Some(found) = find_descendant(child, comm) {
                return Some(found);
            }
        }
    }
    None
}

impl Container {
    /// Boots the container in the lab's balancer namespace (to basic.target: none of
    /// the host's own services start).
    fn boot(lab: &Lab) -> Container {
        assert!(
            Path::new(NSPAWN).exists(),
            "{NSPAWN} is missing: run `cargo xtask setup` (scripts/setup.sh installs systemd-container)"
        );
        let dir = lab.dir.join("container");
        let root = dir.join("root");
        let upper = dir.join("upper");
        std::fs::create_dir_all(&root).expect("container root");
        std::fs::create_dir_all(&upper).expect("container upper");
        mount(&["-t", "tmpfs", "lb-container", upper.to_str().unwrap()]);
        for d in ["u", "w"] {
            std::fs::create_dir(upper.join(d)).expect("overlay dirs");
        }
        let layers = format!(
            "lowerdir=/,upperdir={},workdir={}",
            upper.join("u").display(),
            upper.join("w").display()
        );
        mount(&[
            "-t",
            "overlay",
            "lb-container",
            "-o",
            &layers,
            root.to_str().unwrap(),
        ]);
        let bpffs = lab
            .pin_dir()
            .parent()
            .expect("the lab's bpffs")
            .to_path_buf();
        let log = lab.dir.join("container.log");
        let out = std::fs::File::create(&log).expect("container log");
        let nspawn = Command::new(NSPAWN)
            .args(["--quiet", "--boot", "--register=no", "--keep-unit"])
            .args(["--link-journal=no", "--machine=lb-test"])
            .arg("--directory")
            .arg(&root)
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                lab.lb_ns()
            ))
            // lb loads BPF: every capability, and bpf(2) past nspawn's seccomp filter.
            .args([
                "--capability=all",
                "--system-call-filter=bpf perf_event_open",
            ])
            .arg(format!("--bind={}:/sys/fs/bpf", bpffs.display()))
            .args(["--", "systemd.unit=basic.target"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("starting systemd-nspawn");
        let nspawn_pid = nspawn.id();
        let mut c = Container {
            nspawn: Some(nspawn),
            init: 0,
            root,
            upper,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        c.init = loop {
            if let Some(pid) = find_descendant(nspawn_pid, "systemd") {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container within 30 s:\n{}",
                c.log()
            );
            sleep(Duration::from_millis(100));
        };
        // Until systemd listens, systemctl answers nothing; then "starting" until booted.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = c.sh("systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not boot within 60 s ({state}):\n{}\n{}",
                c.log(),
                String::from_utf8_lossy(&c.sh("systemctl --failed --no-pager").stdout)
            );
            sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `script` (sh) inside the container.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a", "sh", "-c", script])
            .output()
            .expect("nsenter")
    }

    /// Runs `script` inside the container; panics when it fails. Its stdout.
    fn must(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in the container: {script}\n{}{}\njournal of lb:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn journal(&self) -> String {
        String::from_utf8_lossy(&self.sh("journalctl -u lb --no-pager -o cat").stdout).into_owned()
    }

    fn main_pid(&self) -> u32 {
        self.must("systemctl show -P MainPID lb.service")
            .trim()
            .parse()
            .expect("MainPID")
    }

    /// Polls `lb service list --json` in the container until `cond` (20 s at most).
    fn wait_list(&self, what: &str, cond: impl Fn(&Value) -> bool) {
        for _ in 0..200 {
            let out = self.sh("lb service list --json");
            if out.status.success()
                && cond(&serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
            {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; journal:\n{}", self.journal());
    }

    /// Waits (20 s at most) for a new main process of lb.service, other than `old`, that
    /// serves; returns its pid.
    fn wait_new_daemon(&self, old: u32) -> u32 {
        for _ in 0..200 {
            let pid = self.main_pid();
            if pid != 0 && pid != old && self.sh("lb status").status.success() {
                return pid;
            }
            sleep(Duration::from_millis(100));
        }
        panic!(
            "no new serving daemon after pid {old}; journal:\n{}",
            self.journal()
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("container log:\n{}", self.log());
        }
        // SIGTERM to systemd-nspawn (the process this test started) halts the container
        // cleanly; SIGKILL if that takes more than 30 s.
        if let Some(mut child) = self.nspawn.take() {
            // SAFETY: kill(2) on the PID of a child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for m in [&self.root, &self.upper] {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

#[test]
fn the_package_under_systemd_starts_reloads_upgrades_and_stops_lb() {
    support::require_root();
    let deb = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target")
        .join("debian/lb_0.1.0-1_amd64.deb");
    assert!(
        deb.exists(),
        "{} is missing: build it with `cargo xtask deb`",
        deb.display()
    );
    let lab = Lab::up(Mode::Nat, "sysd", 3, &pass_object());
    let c = Container::boot(&lab);
    std::fs::copy(&deb, c.root.join("root/lb.deb")).expect("copying the package in");

    // This machine's image forbids service actions in package scripts (a docker-style
    // policy-rc.d that answers 101); a server has none. man-db's index is not needed.
    c.must("rm -f /usr/sbin/policy-rc.d /var/lib/man-db/auto-update");
    c.must("dpkg -i /root/lb.deb");
    assert_eq!(
        String::from_utf8_lossy(&c.sh("systemctl is-enabled lb.service").stdout).trim(),
        "disabled",
        "a first install does not enable lb"
    );
    assert!(
        !c.sh("systemctl is-active --quiet lb.service")
            .status
            .success(),
        "a first install does not start lb"
    );

    // The operator's part: interfaces in /etc/default/lb, services in /etc/lb/lb.json.
    let default = c.root.join("etc/default/lb");
    let text = std::fs::read_to_string(&default).expect("/etc/default/lb");
    let ifaces: String = lab
        .lb_ifaces()
        .iter()
        .map(|i| format!("--iface {i} "))
        .collect();
    std::fs::write(
        &default,
        text.replace(
            "LB_IFACES=\"\"",
            &format!("LB_IFACES=\"{}\"", ifaces.trim()),
        ),
    )
    .expect("writing /etc/default/lb");
    let config = lab.config(QUICK_CHECK, false);
    std::fs::write(c.root.join("etc/lb/lb.json"), &config).expect("writing lb.json");
    c.must("systemctl enable --now lb.service");
    c.wait_list("every backend up and in rotation", all_in_rotation);
    let first = c.main_pid();
    // systemd applied the unit: the daemon has exactly CAP_SYS_ADMIN and CAP_NET_ADMIN
    // (bits 21 and 12), and the package's default options (metrics and stats page).
    let caps = c.must(&format!("grep CapBnd /proc/{first}/status"));
    assert_eq!(
        caps.split_whitespace().nth(1),
        Some("0000000000201000"),
        "{caps}"
    );
    let page = c.must("curl -sf http://127.0.0.1:9180/stats.json");
    assert!(page.contains("\"serving\":true"), "{page}");

    let traffic = Traffic::start(&lab);
    let mut answered = traffic.assert_clean("under systemd", 0);

    // Reload: a good file applies, a bad one fails the reload and changes nothing.
    c.must("systemctl reload lb.service");
    assert!(
        c.journal().contains("reloaded /etc/lb/lb.json"),
        "{}",
        c.journal()
    );
    std::fs::write(c.root.join("etc/lb/lb.json"), "{").expect("a bad lb.json");
    assert!(
        !c.sh("systemctl reload lb.service").status.success(),
        "a bad configuration must fail the reload"
    );
    std::fs::write(c.root.join("etc/lb/lb.json"), &config).expect("lb.json back");
    assert_eq!(c.main_pid(), first, "a reload keeps the daemon");

    // Upgrade: the postinst hands over (SIGUSR2, start); the new daemon adopts.
    c.must("dpkg -i /root/lb.deb");
    let upgraded = c.wait_new_daemon(first);
    let journal = c.journal();
    assert!(
        journal.contains("SIGUSR2: stopping, leaving the datapath running"),
        "{journal}"
    );
    assert!(
        journal.contains("adopted the datapath on eth0"),
        "{journal}"
    );
    sleep(Duration::from_secs(1));
    answered = traffic.assert_clean("across the package upgrade", answered);

    // A crash: systemd restarts lb (Restart=on-failure), which adopts.
    c.must("systemctl kill --kill-whom=main --signal=SIGKILL lb.service");
    let restarted = c.wait_new_daemon(upgraded);
    assert_ne!(restarted, first);
    c.wait_list("every backend up and in rotation", all_in_rotation);
    sleep(Duration::from_secs(1));
    traffic.assert_clean("across a crash and its restart", answered);
    drop(traffic);

    // Stop detaches (the pins go); purge removes the package and its conffiles.
    c.must("systemctl stop lb.service");
    assert!(
        c.journal().contains("detached from eth0, eth1; stopped"),
        "{}",
        c.journal()
    );
    assert!(!lab.pin_dir().join("lb").exists(), "the pins are removed");
    c.must("dpkg --purge lb");
    for gone in [
        "usr/bin/lb",
        "etc/lb/lb.json",
        "etc/default/lb",
        "usr/lib/systemd/system/lb.service",
    ] {
        assert!(!c.root.join(gone).exists(), "/{gone} is left after purge");
    }
}
