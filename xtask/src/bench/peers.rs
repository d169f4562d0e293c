//! What takes a lab's traffic during a row of a benchmark: lb, HAProxy, nftables DNAT,
//! the bare XDP forwarder, or xdp-pass where a veth must receive XDP frames. Each is
//! started before the row is measured and stopped after it (processes by the PID we
//! started them with), whatever the measurement returned.
use std::{fmt::Write as _, process::Stdio, time::Duration};

use anyhow::{Context as _, Result, bail};
use lb_lab::lab::{Lab, Mode};
use serde_json::{Value, json};

use super::{Objects, alive, listening, run_in, wait_for, xdp_attach, xdp_detach};

/// One thing set up on a lab for a row.
pub enum Peer<'a> {
    /// `lb run` on the balancer with `config`; its files are named after `name`.
    Lb { name: &'static str, config: String },
    /// HAProxy in TCP mode on the VIP (see `start_haproxy`).
    Haproxy {
        name: &'static str,
        port: u16,
        servers: &'a [(String, u16)],
        balance: &'static str,
    },
    /// nftables DNAT on the balancer (see `start_nft`).
    Nft {
        proto: &'static str,
        port: u16,
        key: &'static str,
    },
    /// The bare XDP forwarder (`xdp-fwd`'s `fwd`) on the balancer's eth0.
    Fwd,
    /// `xdp-pass` on eth0 of the namespace.
    Pass(String),
}

/// A peer while it runs: what stopping it needs.
enum Running {
    Lb(u32),
    Haproxy(Haproxy),
    Nft,
    Xdp(String),
}

/// Runs `measure` with `peers` set up on `lab`, in order, and stops them, in reverse
/// order, whatever `measure` returned. A failure to stop a peer is reported first: the
/// next row would not find the lab as it expects.
pub fn around<T>(
    lab: &mut Lab,
    obj: &Objects,
    peers: Vec<Peer<'_>>,
    measure: impl FnOnce(&mut Lab) -> Result<T>,
) -> Result<T> {
    let mut running = Vec::new();
    let mut started = Ok(());
    for peer in peers {
        match start(lab, obj, peer) {
            Ok(r) => running.push(r),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let measured = started.and_then(|()| measure(lab));
    for r in running.into_iter().rev() {
        stop(lab, r)?;
    }
    measured
}

fn start(lab: &mut Lab, obj: &Objects, peer: Peer<'_>) -> Result<Running> {
    let pass = obj.pass.to_string_lossy();
    Ok(match peer {
        Peer::Lb { name, config } => Running::Lb(start_lb(lab, &obj.lb, name, &config)?),
        Peer::Haproxy {
            name,
            port,
            servers,
            balance,
        } => Running::Haproxy(start_haproxy(lab, name, port, servers, balance)?),
        Peer::Nft { proto, port, key } => {
            start_nft(lab, proto, port, key)?;
            Running::Nft
        }
        Peer::Fwd => {
            let ns = lab.lb_ns();
            xdp_attach(lab, &ns, "eth0", &obj.fwd, "fwd")?;
            Running::Xdp(ns)
        }
        Peer::Pass(ns) => {
            xdp_attach(lab, &ns, "eth0", &pass, "pass")?;
            Running::Xdp(ns)
        }
    })
}

fn stop(lab: &mut Lab, running: Running) -> Result<()> {
    match running {
        Running::Lb(pid) => {
            lab.stop(pid);
            Ok(())
        }
        Running::Haproxy(h) => stop_haproxy(lab, h),
        Running::Nft => stop_nft(lab),
        Running::Xdp(ns) => xdp_detach(lab, &ns, "eth0"),
    }
}

// ---- lb ----------------------------------------------------------------------------------

/// An lb configuration: one service on the lab's VIP, `protocol` `port`, forwarded as
/// the lab's mode says to every backend (on `backend_port`, when given), with the
/// service fields of `extra` (health check, persistence) added.
pub fn lb_config(
    lab: &Lab,
    protocol: &str,
    port: u16,
    backend_port: Option<u16>,
    extra: Value,
) -> String {
    let forwarding = match lab.mode {
        Mode::Dsr => "dsr",
        Mode::Nat => "nat",
    };
    let backends: Vec<Value> = lab
        .backends
        .iter()
        .map(|b| match backend_port {
            Some(p) => json!({"address": b.addr.to_string(), "port": p}),
            None => json!({"address": b.addr.to_string()}),
        })
        .collect();
    let mut service = json!({
        "vip": lab.vip(),
        "port": port,
        "protocol": protocol,
        "forwarding": forwarding,
        "backends": backends,
    });
    if let (Some(service), Value::Object(extra)) = (service.as_object_mut(), extra) {
        service.extend(extra);
    }
    json!({ "services": [service] }).to_string()
}

/// Starts `lb run` on the lab's balancer with `config`; returns its PID once every
/// backend is in rotation.
pub fn start_lb(lab: &mut Lab, lb: &str, name: &str, config: &str) -> Result<u32> {
    let file = lab.write(&format!("{name}.json"), config);
    let socket = lab
        .dir
        .join(format!("{name}.sock"))
        .to_string_lossy()
        .into_owned();
    let mut args = vec![lb.to_string(), "run".into()];
    for iface in lab.lb_ifaces() {
        args.extend(["--iface".into(), iface.to_string()]);
    }
    args.extend([
        "--config".into(),
        file.to_string_lossy().into_owned(),
        "--socket".into(),
        socket.clone(),
        "--pin-dir".into(),
        lab.pin_dir().join(name).to_string_lossy().into_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ns = lab.lb_ns();
    let log = format!("{name}.log");
    let pid = lab.spawn(&ns, &args, &log);
    let in_rotation = wait_for(
        "lb: every backend in rotation",
        Duration::from_secs(20),
        || {
            if !alive(pid) {
                bail!("lb exited");
            }
            let out = lab
                .exec(&ns, &[lb, "--socket", &socket, "service", "list", "--json"])
                .stderr(Stdio::null())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(out.status.success()
                && text.contains("\"in_rotation\": true")
                && !text.contains("\"in_rotation\": false"))
        },
    );
    if let Err(e) = in_rotation {
        let log = std::fs::read_to_string(lab.dir.join(&log)).unwrap_or_default();
        lab.stop(pid);
        return Err(e.context(format!("starting lb; its log:\n{log}")));
    }
    Ok(pid)
}

/// `lb stats` of the running daemon `name` (for the record of a run).
pub fn lb_stats(lab: &Lab, lb: &str, name: &str) -> Result<String> {
    let socket = lab.dir.join(format!("{name}.sock"));
    run_in(
        lab,
        &lab.lb_ns(),
        &[lb, "--socket", &socket.to_string_lossy(), "stats"],
    )
}

// ---- HAProxy -----------------------------------------------------------------------------

/// The largest HAProxy `maxconn` whose file descriptors (two per connection plus
/// HAProxy's own) fit our hard limit: HAProxy refuses to start otherwise ("Cannot raise
/// FD limit").
fn haproxy_maxconn() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        1024
    };
    (hard.saturating_sub(200) / 2).clamp(256, 20_000)
}

/// HAProxy in TCP mode on the NAT lab's balancer, listening on `VIP:port` (the VIP is
/// added to the balancer's `lo` meanwhile) and spreading over `servers` with `balance`.
struct Haproxy {
    pid: u32,
    vip: String,
}

fn start_haproxy(
    lab: &mut Lab,
    name: &str,
    port: u16,
    servers: &[(String, u16)],
    balance: &str,
) -> Result<Haproxy> {
    let ns = lab.lb_ns();
    let vip = lab.vip().to_string();
    let mut conf = format!(
        "global\n  maxconn {}\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend fe\n  bind {vip}:{port}\n  default_backend be\n\
         backend be\n  balance {balance}\n",
        haproxy_maxconn()
    );
    for (i, (addr, p)) in servers.iter().enumerate() {
        let _ = writeln!(conf, "  server b{} {addr}:{p}", i + 1);
    }
    let file = lab.write(&format!("{name}.cfg"), &conf);
    run_in(
        lab,
        &ns,
        &["haproxy", "-c", "-q", "-f", &file.to_string_lossy()],
    )
    .context("checking the HAProxy configuration")?;
    run_in(
        lab,
        &ns,
        &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
    )?;
    let pid = lab.spawn(
        &ns,
        &["haproxy", "-db", "-f", &file.to_string_lossy()],
        &format!("{name}.log"),
    );
    let up = wait_for("HAProxy listening", Duration::from_secs(10), || {
        if !alive(pid) {
            bail!("HAProxy exited");
        }
        listening(lab, &ns, port)
    });
    let h = Haproxy { pid, vip };
    if let Err(e) = up {
        let log = std::fs::read_to_string(lab.dir.join(format!("{name}.log"))).unwrap_or_default();
        stop_haproxy(lab, h)?;
        return Err(e.context(format!("starting HAProxy; its log:\n{log}")));
    }
    Ok(h)
}

fn stop_haproxy(lab: &mut Lab, h: Haproxy) -> Result<()> {
    lab.stop(h.pid);
    run_in(
        lab,
        &lab.lb_ns(),
        &["ip", "addr", "del", &format!("{}/32", h.vip), "dev", "lo"],
    )
    .map(drop)
}

// ---- nftables ----------------------------------------------------------------------------

/// nftables DNAT on the NAT lab's balancer: `VIP:port/proto` to the backends, picked by
/// `jhash` over `key` (e.g. `ip saddr`).
fn start_nft(lab: &Lab, proto: &str, port: u16, key: &str) -> Result<()> {
    let map: Vec<String> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {}", b.addr))
        .collect();
    let rules = format!(
        "table ip lbbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {} {proto} dport {port} dnat to jhash {key} mod {} map {{ {} }}\n  }}\n}}\n",
        lab.vip(),
        lab.backends.len(),
        map.join(", ")
    );
    let file = lab.write("nft.conf", &rules);
    run_in(lab, &lab.lb_ns(), &["nft", "-f", &file.to_string_lossy()]).map(drop)
}

fn stop_nft(lab: &Lab) -> Result<()> {
    run_in(
        lab,
        &lab.lb_ns(),
        &["nft", "delete", "table", "ip", "lbbench"],
    )
    .map(drop)
}
