//! The built-in lab: network namespaces on this machine.
//!
//! For now the demo loads the XDP program onto a veth in a throw-away namespace and
//! shows it attached; the namespaces are removed on success, failure and Ctrl-C.
use std::{
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, root, step};

const NS: &str = "lbdemo";

/// A network namespace that is deleted when dropped.
struct Netns(&'static str);

impl Netns {
    fn create(name: &'static str) -> Result<Self> {
        // A namespace left by an interrupted earlier run is ours to replace.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        util::run(Command::new("ip").args(["netns", "add", name]))?;
        Ok(Netns(name))
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.0]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
    }
}

/// A child process stopped with SIGTERM (by its PID) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
}

pub fn demo() -> Result<()> {
    util::setup()?;
    step("building lb");
    util::cargo(&["build", "--release", "--package", "lb-userspace"])?;
    let lb = root().join("target/release/lb");

    step(&format!(
        "lab: namespace {NS} with a veth pair lbd0 <-> lbd1"
    ));
    let ns = Netns::create(NS)?;
    util::run(&mut ns.exec(&[
        "ip", "link", "add", "lbd0", "type", "veth", "peer", "name", "lbd1",
    ]))?;
    util::run(&mut ns.exec(&["ip", "link", "set", "lbd0", "up"]))?;
    util::run(&mut ns.exec(&["ip", "link", "set", "lbd1", "up"]))?;

    step("lb run --iface lbd0 (native XDP)");
    let lb = lb.to_str().context("target path is not UTF-8")?;
    let mut daemon = Daemon(
        ns.exec(&[lb, "run", "--iface", "lbd0"])
            .spawn()
            .context("starting lb run")?,
    );
    let mut attached = false;
    for _ in 0..100 {
        if let Some(status) = daemon.0.try_wait()? {
            bail!("lb run exited early ({status})");
        }
        let out = ns.exec(&["ip", "link", "show", "dev", "lbd0"]).output()?;
        if String::from_utf8_lossy(&out.stdout).contains("prog/xdp") {
            attached = true;
            break;
        }
        sleep(Duration::from_millis(100));
    }
    if !attached {
        bail!("the XDP program did not show up on lbd0 within 10 s");
    }
    step("ip link show dev lbd0");
    util::run(&mut ns.exec(&["ip", "link", "show", "dev", "lbd0"]))?;
    step("stopping lb (SIGTERM): the program is detached");
    stop(&mut daemon.0);
    util::run(&mut ns.exec(&["ip", "link", "show", "dev", "lbd0"]))?;
    drop(ns);
    step("lab torn down");
    Ok(())
}
