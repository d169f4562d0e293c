//! Traffic that notices every failure: a stream of new TCP connections, each one HTTP
//! request that must be answered within 5 s ([`Load`]), and long-lived connections that
//! exchange a request every 100 ms ([`Session`]). The lifecycle, failover and ECMP tests
//! run them across crashes, restarts and failovers and count what failed.
//!
//! Clients run on threads of their own that enter the client's network namespace; the
//! servers are the lab's nginx, which answers with its backend's name.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How long a request may take before it counts as failed.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What a load saw so far.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub ok: usize,
    /// Failed requests: when (since the load started) and why.
    pub failed: Vec<(Duration, String)>,
    /// Answers by backend name.
    pub by_backend: BTreeMap<String, usize>,
}

/// One HTTP/1.0 request on a new connection; the backend's name, or why it failed.
fn request(target: SocketAddr) -> Result<String, String> {
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut s = TcpStream::connect_timeout(&target, ANSWER_WITHIN).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(ANSWER_WITHIN))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: lb\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if Instant::now() > deadline {
            return Err("no answer within 5 s".into());
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&text);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.trim().to_string())
}

/// New connections, one after the other, each one request, until stopped.
pub struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts requesting `target` from namespace `ns`, one request every `pace` at most.
    pub fn start(ns: &str, target: SocketAddr, pace: Duration) -> Load {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (tally, stop, ns) = (tally.clone(), stop.clone(), ns.to_string());
            std::thread::spawn(move || {
                crate::lab::enter_netns(&ns);
                let began = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let at = Instant::now();
                    let r = request(target);
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(backend) => {
                            t.ok += 1;
                            *t.by_backend.entry(backend).or_default() += 1;
                        }
                        Err(why) => t.failed.push((at - began, why)),
                    }
                    drop(t);
                    std::thread::sleep(pace.saturating_sub(at.elapsed()));
                }
            })
        };
        Load {
            tally,
            stop,
            thread: Some(thread),
        }
    }

    /// What it saw so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops it (after the request under way) and returns what it saw.
    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.tally()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a long-lived connection saw.
#[derive(Clone, Debug, Default)]
pub struct Exchanges {
    /// Requests answered.
    pub answered: usize,
    /// The backends that answered, in order of first answer (one, if the connection
    /// stayed where it started).
    pub backends: Vec<String>,
    /// The error that ended the connection, if one did.
    pub broken: Option<String>,
    /// The connection's local port (to find it in `lb conns`).
    pub local_port: u16,
}

/// One TCP connection that sends an HTTP/1.1 keep-alive request every `every` and reads
/// the answer, until stopped or until it breaks.
pub struct Session {
    seen: Arc<Mutex<Exchanges>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Reads one HTTP/1.1 response with a Content-Length; returns its body.
fn response(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut len = None;
    let mut line = String::new();
    let mut status = None;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        let l = line.trim_end();
        if status.is_none() {
            status = Some(l.to_string());
            continue;
        }
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse::<usize>().ok();
        }
    }
    let status = status.unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(status);
    }
    let mut body = vec![0u8; len.ok_or("no Content-Length")?];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

impl Session {
    /// Opens the connection to `target` from namespace `ns` and starts exchanging.
    pub fn start(ns: &str, target: SocketAddr, every: Duration) -> Session {
        let seen = Arc::new(Mutex::new(Exchanges::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (seen, stop, ns) = (seen.clone(), stop.clone(), ns.to_string());
            std::thread::spawn(move || {
                crate::lab::enter_netns(&ns);
                let s = match TcpStream::connect_timeout(&target, ANSWER_WITHIN) {
                    Ok(s) => s,
                    Err(e) => {
                        seen.lock().unwrap().broken = Some(format!("connect: {e}"));
                        let _ = ready_tx.send(());
                        return;
                    }
                };
                let _ = s.set_read_timeout(Some(ANSWER_WITHIN));
                seen.lock().unwrap().local_port = s.local_addr().map_or(0, |a| a.port());
                let _ = ready_tx.send(());
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                while !stop.load(Ordering::SeqCst) {
                    let r = w
                        .write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
                        .map_err(|e| e.to_string())
                        .and_then(|()| response(&mut r));
                    let mut e = seen.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(backend) => {
                            e.answered += 1;
                            if !e.backends.contains(&backend) {
                                e.backends.push(backend);
                            }
                        }
                        Err(why) => {
                            e.broken = Some(why);
                            return;
                        }
                    }
                    drop(e);
                    std::thread::sleep(every);
                }
            })
        };
        let _ = ready_rx.recv_timeout(ANSWER_WITHIN * 2);
        Session {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Exchanges {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops exchanging and returns what it saw.
    pub fn stop(mut self) -> Exchanges {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the redundancy tests and demos keep running: a [`Load`] of new connections (one
/// every 20 ms at most) and long-lived [`Session`]s (a request every 100 ms each).
pub struct Traffic {
    pub load: Load,
    pub sessions: Vec<Session>,
}

impl Traffic {
    /// Starts `sessions` long-lived connections to `target` from namespace `ns` (each
    /// must connect), then the load.
    pub fn start(ns: &str, target: SocketAddr, sessions: usize) -> Traffic {
        let sessions: Vec<Session> = (0..sessions)
            .map(|_| Session::start(ns, target, Duration::from_millis(100)))
            .collect();
        for s in &sessions {
            let seen = s.seen();
            assert!(
                seen.broken.is_none(),
                "a long-lived connection failed: {seen:?}"
            );
        }
        Traffic {
            load: Load::start(ns, target, Duration::from_millis(20)),
            sessions,
        }
    }

    /// Requests answered by each long-lived connection so far.
    pub fn answered(&self) -> Vec<usize> {
        self.sessions.iter().map(|s| s.seen().answered).collect()
    }

    /// Panics unless nothing went wrong since `before` (see [`Traffic::problems`]),
    /// with the first problems and `logs()` (what the balancers said).
    pub fn assert_clean(&self, when: &str, before: &[usize], logs: impl FnOnce() -> String) {
        let problems = self.problems(before);
        if !problems.is_empty() {
            let t = self.load.tally();
            panic!(
                "{when}: {} of {} requests failed, {} problems: {:#?}\n{}",
                t.failed.len(),
                t.ok + t.failed.len(),
                problems.len(),
                &problems[..problems.len().min(10)],
                logs()
            );
        }
    }

    /// What went wrong so far, one line each (empty: nothing): failed requests, and
    /// long-lived connections that broke, moved to another backend or have answered
    /// nothing since `before` (what [`Traffic::answered`] returned).
    pub fn problems(&self, before: &[usize]) -> Vec<String> {
        let t = self.load.tally();
        let mut out: Vec<String> = t
            .failed
            .iter()
            .map(|(at, why)| format!("request at {:.2} s failed: {why}", at.as_secs_f64()))
            .collect();
        for (i, s) in self.sessions.iter().enumerate() {
            let seen = s.seen();
            let then = before.get(i).copied().unwrap_or(0);
            if let Some(why) = &seen.broken {
                out.push(format!(
                    "long-lived connection {i} (port {}) broke: {why}",
                    seen.local_port
                ));
            } else if seen.backends.len() != 1 {
                out.push(format!(
                    "long-lived connection {i} moved between backends: {:?}",
                    seen.backends
                ));
            } else if seen.answered <= then {
                out.push(format!(
                    "long-lived connection {i} answered nothing since {then}"
                ));
            }
        }
        out
    }
}
