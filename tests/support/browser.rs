//! Headless Chromium (Debian's `chromium`, installed by scripts/setup.sh) driven over the
//! DevTools protocol on `--remote-debugging-pipe`: the browser reads commands on its fd 3
//! and writes answers and events on its fd 4, each a JSON text ended by a NUL byte. A
//! test opens one page, evaluates JavaScript in it (to read what the page shows) and
//! takes screenshots; the page lives on between reads, so what changes is what the page
//! redrew by itself.
//!
//! Chromium runs inside a network namespace of the test (`ip netns exec`), with the flags
//! that keep it off every network but the page's: no background networking, component
//! updates, sync or QUIC, and a fresh profile directory.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium with one page, driven over its DevTools pipe.
pub struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    /// The DevTools session of the page.
    session: String,
}

/// The flags every run uses (see the module's comment).
pub fn flags(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--hide-scrollbars",
        "--mute-audio",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

impl Browser {
    /// Starts Chromium with `url` open, through `launcher` (e.g. `ip netns exec NS`) and
    /// with a fresh profile in `profile`; `size` is the window's (width, height).
    pub fn open(launcher: Command, profile: &Path, url: &str, size: (u32, u32)) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run `cargo xtask setup` (scripts/setup.sh installs Debian's chromium)"
        );
        let _ = std::fs::remove_dir_all(profile);
        std::fs::create_dir_all(profile).expect("creating the browser profile directory");
        let (cmd_read, cmd_write) = std::io::pipe().expect("pipe");
        let (ans_read, ans_write) = std::io::pipe().expect("pipe");
        let mut command = launcher;
        command
            .arg(CHROMIUM)
            .args(flags(profile))
            .arg("--remote-debugging-pipe")
            .arg(format!("--window-size={},{}", size.0, size.1))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile.with_extension("log")).expect("browser log"));
        let (r, w) = (cmd_read.as_raw_fd(), ans_write.as_raw_fd());
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec.
        // The two ends are first copied above fd 9, so that placing them on 3 and 4 cannot
        // overwrite one with the other.
        unsafe {
            command.pre_exec(move || {
                let high_r = libc::fcntl(r, libc::F_DUPFD, 10);
                let high_w = libc::fcntl(w, libc::F_DUPFD, 10);
                if high_r < 0
                    || high_w < 0
                    || libc::dup2(high_r, 3) < 0
                    || libc::dup2(high_w, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(high_r);
                libc::close(high_w);
                Ok(())
            })
        };
        let child = command.spawn().expect("starting chromium");
        drop((cmd_read, ans_write));
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(ans_read);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop_if(|b| *b == 0);
                        let Ok(v) = serde_json::from_slice::<Value>(&buf) else {
                            continue;
                        };
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            commands: cmd_write,
            answers,
            next_id: 0,
            session: String::new(),
        };
        // The page target appears shortly after the start.
        let deadline = Instant::now() + Duration::from_secs(30);
        let target = loop {
            let targets = b.call(None, "Target.getTargets", json!({}));
            let page = targets["targetInfos"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["targetId"].as_str())
                .map(str::to_string);
            if let Some(id) = page {
                break id;
            }
            assert!(Instant::now() < deadline, "chromium opened no page");
            std::thread::sleep(Duration::from_millis(100));
        };
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("a DevTools session id")
            .to_string();
        b
    }

    /// Sends one DevTools command (to the page's session, or to the browser with `None`)
    /// and returns its result; panics on an error answer or after [`COMMAND_TIMEOUT`].
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("sending {method} to chromium: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if answer["id"] != json!(id) {
                continue; // an event, or a late answer
            }
            if let Some(err) = answer.get("error") {
                panic!("chromium answered {method} with an error: {err}");
            }
            return answer["result"].clone();
        }
    }

    /// Evaluates `expression` in the page; its value (which must be JSON-serializable).
    pub fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("the page threw evaluating {expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// A PNG of the page's viewport.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask the browser to close (it ends its own helper processes), then make sure the
        // process we started is gone.
        let _ = self
            .commands
            .write_all(b"{\"id\":999999,\"method\":\"Browser.close\"}\0");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        super::lab::stop_child(&mut self.child);
    }
}
