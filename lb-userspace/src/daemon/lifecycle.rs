//! The daemon's life beside its datapath's: what `lb status` reports, and the hand-over
//! of a running datapath to a new daemon (`lb run --takeover`).
//!
//! The datapath lives in pins (see `dataplane::pins`) and outlives any daemon. A daemon
//! is *serving* once every interface runs the datapath and its configuration is
//! applied, until it starts stopping. A hand-over goes like this: the new daemon asks
//! the old one over the control socket (`{"op":"takeover"}`); the old one answers with
//! its pid and, beside the answer line (SCM_RIGHTS), the control socket's listening
//! descriptor, then exits without detaching; the new one serves that same socket (a
//! client that connects meanwhile waits in its backlog), waits for the old process to
//! end and its instance lock to be released, and adopts the pins.
use std::{
    io::{BufRead as _, IoSlice, IoSliceMut, Write as _},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

use crate::api::{Handover, Interface, Request, Response, Status};

/// What `lb status` reads: set as the daemon starts and stops, read without any lock
/// the controller takes.
pub struct Lifecycle {
    attached: AtomicBool,
    applied: AtomicBool,
    stopping: AtomicBool,
    name: String,
    pin_dir: String,
    interfaces: Mutex<Vec<Interface>>,
}

impl Lifecycle {
    pub fn new(name: &str, pin_dir: &Path) -> Self {
        Lifecycle {
            attached: AtomicBool::new(false),
            applied: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            name: name.to_string(),
            pin_dir: pin_dir.display().to_string(),
            interfaces: Mutex::new(Vec::new()),
        }
    }

    /// Every interface runs the datapath, these programs.
    pub fn attached(&self, interfaces: Vec<Interface>) {
        *self.interfaces.lock().unwrap_or_else(|p| p.into_inner()) = interfaces;
        self.attached.store(true, Ordering::SeqCst);
    }

    /// The configuration is in the datapath.
    pub fn applied(&self) {
        self.applied.store(true, Ordering::SeqCst);
    }

    /// A stop has begun: the daemon no longer reports itself serving.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn status(&self) -> Status {
        let attached = self.attached.load(Ordering::SeqCst);
        let applied = self.applied.load(Ordering::SeqCst);
        let stopping = self.stopping.load(Ordering::SeqCst);
        Status {
            serving: attached && applied && !stopping,
            attached,
            applied,
            stopping,
            pid: std::process::id(),
            name: self.name.clone(),
            pin_dir: self.pin_dir.clone(),
            interfaces: self
                .interfaces
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Answers a takeover request on `conn`: the answer line, and beside it `listener`.
pub fn hand_over(conn: impl AsFd, listener: impl AsFd) -> std::io::Result<()> {
    let line = format!(
        "{}\n",
        Response::ok(&Handover {
            pid: std::process::id()
        })
        .to_line()
    );
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds = [listener.as_fd()];
    cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = sendmsg(
        conn,
        &[IoSlice::new(line.as_bytes())],
        &mut cmsg,
        SendFlags::NOSIGNAL,
    )?;
    if sent != line.len() {
        return Err(std::io::Error::other("the takeover answer was cut short"));
    }
    Ok(())
}

/// Asks the daemon serving `socket` to hand over. `None` when no daemon answers there
/// (nothing to take over); else the listening socket it served and its pid.
pub fn take_over(socket: &Path) -> Result<Option<(std::os::unix::net::UnixListener, u32)>> {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream
        .write_all(format!("{}\n", Request::Takeover {}.to_line()).as_bytes())
        .context("asking the running daemon to hand over")?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 4096];
    let got = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("reading the running daemon's answer")?;
    let mut fd: Option<OwnedFd> = None;
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            fd = fds.into_iter().next();
        }
    }
    let mut line = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
    if !line.ends_with('\n') {
        // The rest of the line (without descriptors) follows.
        std::io::BufReader::new(&stream).read_line(&mut line)?;
    }
    let resp: Response = serde_json::from_str(line.trim())
        .with_context(|| format!("unreadable takeover answer: {line}"))?;
    if !resp.ok {
        bail!(
            "the running daemon refused to hand over: {}",
            resp.error.unwrap_or_default()
        );
    }
    let handover: Handover = serde_json::from_value(resp.result.unwrap_or_default())
        .context("unreadable takeover answer")?;
    let fd = fd.context("the running daemon answered without its control socket")?;
    Ok(Some((
        std::os::unix::net::UnixListener::from(fd),
        handover.pid,
    )))
}

/// Waits until process `pid` has ended (at most `limit`).
pub fn wait_for_exit(pid: u32, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let proc = format!("/proc/{pid}");
    while Path::new(&proc).exists() {
        // A zombie has exited: its /proc entry stays until its parent reaps it.
        if std::fs::read_to_string(format!("{proc}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the daemon handing over (pid {pid}) did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn status_serves_only_when_attached_applied_and_not_stopping() {
        let l = Lifecycle::new("lb", Path::new("/sys/fs/bpf/lb/lb"));
        assert!(!l.status().serving);
        l.attached(vec![Interface {
            name: "eth0".into(),
            prog_id: 7,
        }]);
        assert!(!l.status().serving, "attached, not applied");
        l.applied();
        let s = l.status();
        assert!(s.serving && s.attached && s.applied && !s.stopping);
        assert_eq!(s.interfaces[0].prog_id, 7);
        l.stopping();
        let s = l.status();
        assert!(!s.serving && s.stopping);
    }

    #[test]
    fn a_handover_carries_the_listening_socket() {
        let dir = std::env::temp_dir().join(format!("lb-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.sock");
        let served = UnixListener::bind(&path).unwrap();
        let server = {
            let served = served.try_clone().unwrap();
            std::thread::spawn(move || {
                let (conn, _) = served.accept().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(&conn).read_line(&mut line).unwrap();
                assert_eq!(Request::parse(line.trim()).unwrap(), Request::Takeover {});
                hand_over(&conn, &served).unwrap();
            })
        };
        let (inherited, pid) = take_over(&path).unwrap().expect("a daemon answered");
        server.join().unwrap();
        assert_eq!(pid, std::process::id());
        drop(served);
        // The inherited descriptor is the same listening socket: a client connecting to
        // the path is accepted through it.
        let client = std::thread::spawn({
            let path = path.clone();
            move || UnixStream::connect(path).unwrap()
        });
        let (_conn, _) = inherited.accept().unwrap();
        client.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_to_take_over_without_a_daemon() {
        assert!(
            take_over(Path::new("/nonexistent/lb.sock"))
                .unwrap()
                .is_none()
        );
    }
}
