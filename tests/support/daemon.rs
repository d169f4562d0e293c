//! Running the real `lb run` in a network namespace of its own, for end-to-end tests.
//!
//! - [`Netns`]: a named namespace (`ip netns add`), deleted when its last handle drops;
//!   veth pairs inside it or between two of them, commands run inside it.
//! - [`Daemon`]: `lb run` started inside a [`Netns`] with its own control socket and log
//!   file; requests over the socket, the CLI, the attached program's id and an
//!   [`Inspector`] on its maps. Dropping it sends SIGTERM (then SIGKILL) to the one
//!   process it started, by PID.
//! - [`Scratch`]: a private directory under /tmp for configs and sockets, removed on drop.
//!
//! Names carry the test process id and a counter, so tests may run concurrently. Every
//! wait is bounded; every failure panics with what is needed to understand it (the
//! daemon's log, the command's stderr).
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lb_userspace::dataplane::inspect::Inspector;
use serde_json::Value;

/// The `lb` binary under test.
pub const LB: &str = env!("CARGO_BIN_EXE_lb");

/// How long a daemon may take to answer its first request.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to stop after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request, or one command, may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process: `<prefix><pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// Runs `cmd` to its end, at most `timeout`; panics (after killing it) when it takes
/// longer. Stdout and stderr are captured.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {timeout:?}");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Like [`output_within`], and panics unless the command succeeds; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = output_within(cmd, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private directory under /tmp, removed with its contents on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(&format!("lb-{tag}-")));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {path:?}: {e}"));
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to the file `name` in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("writing {p:?}: {e}"));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The XDP program attached to an interface, as `ip -d link show` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpProgram {
    pub id: u32,
    pub name: String,
}

/// Parses `prog/xdp id N name NAME ...` (also `prog/xdpgeneric`, `prog/xdpdrv`) out of
/// `ip -d link show` output, e.g. `prog/xdp id 587 name lb tag 0e1e9bc8a1c1e2b4 jited`.
/// Tests read what `ip` shows, independently of lb's own netlink code.
pub fn parse_xdp_program(text: &str) -> Option<XdpProgram> {
    let rest = text.split("prog/xdp").nth(1)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    Some(XdpProgram {
        id: field("id").and_then(|v| v.parse().ok()).unwrap_or(0),
        name: field("name").unwrap_or("?").to_string(),
    })
}

struct NetnsInner {
    name: String,
}

impl Drop for NetnsInner {
    fn drop(&mut self) {
        // Interfaces inside go with the namespace once no process is left in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The control-plane tests' namespace (no daemon): `v0` (the balancer's interface,
/// 10.0.0.1/24, MAC 02:00:00:00:00:01) paired with `v1`, and static neighbour entries on
/// `v0` for 10.0.0.11..=10.0.0.30 (MAC 02:00:00:00:00:<last octet>), so DSR backends
/// there get table slots without any traffic.
pub fn topology() -> Netns {
    let ns = Netns::new();
    ns.ip("link add v0 address 02:00:00:00:00:01 type veth peer name v1");
    ns.ip("link set v0 up");
    ns.ip("link set v1 up");
    ns.ip("addr add 10.0.0.1/24 dev v0");
    for last in 11..=30u8 {
        ns.ip(&format!(
            "neigh add 10.0.0.{last} lladdr 02:00:00:00:00:{last:02x} dev v0 nud permanent"
        ));
    }
    ns
}

/// A named network namespace with `lo` up, deleted when the last clone is dropped
/// (a [`Daemon`] keeps a clone, so its namespace outlives it).
#[derive(Clone)]
pub struct Netns(Arc<NetnsInner>);

impl Netns {
    pub fn new() -> Self {
        super::require_root();
        let name = unique("lbns");
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(Arc::new(NetnsInner { name }));
        ns.ip("link set lo up");
        ns
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The namespace's file (for `nsenter --net=` or `setns`).
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.name())
    }

    /// `ip netns exec <ns> <args...>`: the command runs in the namespace (with /sys
    /// remounted for it, as `ip netns exec` does).
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name()]).args(args);
        c
    }

    /// `nsenter --net=<ns> <args...>`: enters only the network namespace, so the
    /// command still sees the host's mounts (e.g. programs pinned in /sys/fs/bpf, which
    /// `ip netns exec` and `ip -n` hide by remounting /sys).
    pub fn nsenter<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).args(args);
        c
    }

    /// Runs `ip -n <ns> <args>` (split on whitespace); panics when it fails; returns
    /// its stdout.
    pub fn ip(&self, args: &str) -> String {
        run_ok(
            Command::new("ip")
                .args(["-n", self.name()])
                .args(args.split_whitespace()),
        )
    }

    /// Creates a veth pair: `name` in this namespace, `peer_name` in `peer` (which may
    /// be this namespace too); both up.
    pub fn veth(&self, name: &str, peer: &Netns, peer_name: &str) {
        self.ip(&format!(
            "link add {name} type veth peer name {peer_name} netns {}",
            peer.name()
        ));
        self.ip(&format!("link set {name} up"));
        peer.ip(&format!("link set {peer_name} up"));
    }

    /// The XDP program attached to `iface`, if any.
    pub fn xdp_program(&self, iface: &str) -> Option<XdpProgram> {
        parse_xdp_program(&self.ip(&format!("-d link show dev {iface}")))
    }

    /// The index of `iface` inside the namespace.
    pub fn ifindex(&self, iface: &str) -> u32 {
        let text = self.ip(&format!("-o link show dev {iface}"));
        text.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no index in: {text}"))
    }

    /// The MAC address of `iface`.
    pub fn mac(&self, iface: &str) -> [u8; 6] {
        let text = self.ip(&format!("-o link show dev {iface}"));
        let mac = text
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no MAC in: {text}"));
        lb_userspace::net::neighbour::parse_mac(mac).unwrap_or_else(|| panic!("bad MAC {mac}"))
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

/// A connection to a daemon's control socket (one request per line).
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(socket: &Path) -> std::io::Result<Self> {
        Self::from_stream(UnixStream::connect(socket)?)
    }

    /// Wraps a connection the caller opened (and may have written to already).
    pub fn from_stream(s: UnixStream) -> std::io::Result<Self> {
        Self::with_timeout(s, COMMAND_TIMEOUT)
    }

    /// Wraps a connection; reads and writes fail after `timeout`.
    pub fn with_timeout(s: UnixStream, timeout: Duration) -> std::io::Result<Self> {
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends `bytes` as they are (the caller ends the request with a newline) and
    /// returns the parsed response line, or what went wrong.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> Result<Value, String> {
        self.writer
            .write_all(bytes)
            .map_err(|e| format!("writing a request: {e}"))?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("reading a response: {e}"))?;
        if n == 0 {
            return Err("the daemon closed the connection without answering".into());
        }
        if !line.ends_with('\n') {
            return Err(format!("a response is one whole line: {line:?}"));
        }
        serde_json::from_str(&line).map_err(|e| format!("response is not JSON ({e}): {line}"))
    }

    /// Like [`Self::try_send_bytes`]; panics on failure.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Value {
        self.try_send_bytes(bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one request line (a newline is added) and returns the parsed response.
    pub fn send(&mut self, line: &str) -> Value {
        self.send_bytes(format!("{line}\n").as_bytes())
    }
}

/// `lb run` in a namespace. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct Daemon {
    child: Child,
    netns: Netns,
    /// Where this daemon pins its datapath (dropped after `dir`'s files, before it).
    bpffs: Option<lb_lab::bpffs::BpfFs>,
    dir: Scratch,
    socket: PathBuf,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `lb run --iface <ifaces...> --config <config> <extra_args>` inside `netns`
    /// with a control socket of its own, without waiting for it. Output goes to
    /// [`Self::log`]; `RUST_LOG` is `info` unless the environment sets it.
    pub fn spawn(netns: &Netns, ifaces: &[&str], config: &Path, extra_args: &[&str]) -> Self {
        super::require_root();
        let dir = Scratch::new("daemon");
        let socket = dir.path().join("lb.sock");
        let log = dir.path().join("lb.log");
        let file = std::fs::File::create(&log).expect("creating the daemon log");
        let bpffs = lb_lab::bpffs::BpfFs::mount(&dir.path().join("bpf")).expect("mounting a bpffs");
        let mut args: Vec<String> = vec![
            LB.into(),
            "--socket".into(),
            socket.display().to_string(),
            "run".into(),
        ];
        // Unless the test names its own pin directory, one in the daemon's own bpffs.
        if !extra_args.contains(&"--pin-dir") {
            args.extend([
                "--pin-dir".into(),
                bpffs.path().join("lb").display().to_string(),
            ]);
        }
        for i in ifaces {
            args.extend(["--iface".into(), i.to_string()]);
        }
        args.extend(["--config".into(), config.display().to_string()]);
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut cmd = netns.exec(&args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // `ip netns exec` execs the command in place: the PID is lb's own.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Daemon {
            child,
            netns: netns.clone(),
            bpffs: Some(bpffs),
            dir,
            socket,
            log,
            status: None,
        }
    }

    /// Starts the daemon and waits (at most [`START_TIMEOUT`]) until its socket answers
    /// `{"op":"list"}`; panics with its log when it exits or does not answer.
    pub fn start(netns: &Netns, ifaces: &[&str], config: &Path, extra_args: &[&str]) -> Self {
        let mut d = Self::spawn(netns, ifaces, config, extra_args);
        if let Err(e) = d.wait_ready(START_TIMEOUT) {
            panic!("{e}");
        }
        d
    }

    /// Waits until the socket answers a list request. Errors (with the log) when the
    /// daemon exits first or the time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Err(format!(
                    "lb run exited before serving ({status}); its log:\n{}",
                    self.log()
                ));
            }
            // The socket is bound before the program is loaded and served only once
            // everything is attached: probe with a short timeout and try again.
            let probe = UnixStream::connect(&self.socket)
                .and_then(|s| Client::with_timeout(s, Duration::from_millis(500)));
            if let Ok(mut c) = probe
                && c.try_send_bytes(b"{\"op\":\"list\"}\n")
                    .is_ok_and(|r| r["ok"] == Value::Bool(true))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "lb run did not answer on {} within {timeout:?}; its log:\n{}",
                    self.socket.display(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status, if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap_or_else(|e| {
                // Only if the child was reaped behind our back; never signal it again.
                eprintln!("waiting for lb run (pid {}): {e}", self.child.id());
                Some(std::os::unix::process::ExitStatusExt::from_raw(-1))
            });
        }
        self.status
    }

    /// Waits (bounded) for the process to end on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.try_status()
    }

    pub fn signal(&mut self, sig: libc::c_int) {
        // Only a process we started and have not reaped: its PID cannot have been reused.
        if self.try_status().is_none() {
            // SAFETY: kill(2) on the PID of our own unreaped child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    /// Sends SIGTERM and waits (at most [`STOP_TIMEOUT`]); kills it and panics when it
    /// does not stop in time. Returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_exit(STOP_TIMEOUT) {
            return s;
        }
        self.signal(libc::SIGKILL);
        let _ = self.wait_exit(STOP_TIMEOUT);
        panic!(
            "lb run did not stop within {STOP_TIMEOUT:?} of SIGTERM (killed); its log:\n{}",
            self.log()
        );
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// A private directory that lives as long as the daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new connection to the control socket.
    pub fn connect(&self) -> Client {
        Client::connect(&self.socket).unwrap_or_else(|e| {
            panic!(
                "connecting to {}: {e}; log:\n{}",
                self.socket.display(),
                self.log()
            )
        })
    }

    /// Sends one raw JSON request line on a new connection; returns the parsed response.
    pub fn request(&self, line: &str) -> Value {
        self.connect().send(line)
    }

    /// Sends a request and panics unless it succeeds; returns its `result`.
    pub fn request_ok(&self, line: &str) -> Value {
        let r = self.request(line);
        assert_eq!(r["ok"], Value::Bool(true), "{line} failed: {r}");
        r["result"].clone()
    }

    /// Runs `lb --socket <socket> <args...>` inside the namespace (bounded).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = vec![
            LB.into(),
            "--socket".into(),
            self.socket.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        output_within(&mut self.netns.exec(&all), COMMAND_TIMEOUT)
    }

    /// Runs the CLI and panics unless it succeeds; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "lb {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Id of the XDP program attached to `iface` (panics when none is).
    pub fn prog_id(&self, iface: &str) -> u32 {
        self.netns
            .xdp_program(iface)
            .unwrap_or_else(|| panic!("no XDP program on {iface}; daemon log:\n{}", self.log()))
            .id
    }

    /// An [`Inspector`] on the maps of the program attached to `iface`.
    pub fn inspector(&self, iface: &str) -> Inspector {
        let id = self.prog_id(iface);
        Inspector::for_program(id).unwrap_or_else(|e| panic!("inspecting program {id}: {e:#}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(STOP_TIMEOUT).is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_exit(STOP_TIMEOUT);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_program_is_read_from_ip_link_output() {
        let text = "2: v0@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdpgeneric qdisc noqueue\n    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n    prog/xdp id 587 name lb tag 0e1e9bc8a1c1e2b4 jited \n";
        assert_eq!(
            parse_xdp_program(text),
            Some(XdpProgram {
                id: 587,
                name: "lb".into()
            })
        );
        assert_eq!(parse_xdp_program("2: v0: <UP> mtu 1500\n"), None);
    }
}
