//! Waiting for an RCU grace period, in the background.
//!
//! After the control plane flips a service to its other Maglev table generation, a
//! packet that read the service record just before the flip may still be reading the
//! retired generation; that generation can be written again only once every such packet
//! is done, that is after an RCU grace period (XDP programs run inside RCU read-side
//! sections). The kernel offers no direct "wait for a grace period" to userspace for
//! BPF programs, but every update of a map-in-map returns only after one
//! (`maybe_wait_bpf_programs()`), so a thread here updates an entry of `TABLES` that no
//! packet reads ([`lb_common::GRACE_SLOT`]).
//!
//! One wait costs 10–30 ms here. Flips ask for one ([`Grace::request`]) and go on;
//! the thread runs them, one covering every request made before it started; a writer
//! that needs the retired generation back [`Grace::wait`]s for its ticket, which has
//! usually completed long before.
use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
};

use super::error::{Error, Result};

#[derive(Default)]
struct State {
    /// Tickets handed out (each request takes the next number).
    requested: u64,
    /// Every ticket up to this one has had a grace period after it.
    completed: u64,
    /// The last failed wait: every ticket up to the first number was meant to be
    /// covered by it, and why it failed (the thread tries again on the next request).
    failed: Option<(u64, String)>,
    stop: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Grace {
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

impl Grace {
    /// Starts the thread; `wait_once` blocks for one grace period.
    pub fn start(wait_once: impl FnMut() -> std::io::Result<()> + Send + 'static) -> Self {
        let shared: Shared = Arc::default();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("lb-grace".into())
                .spawn(move || run(&shared, wait_once))
                .expect("spawning the grace-period thread")
        };
        Grace {
            shared,
            thread: Some(thread),
        }
    }

    /// Waits by updating entry `slot` of the map-in-map `outer` with `inner`.
    pub fn with_map_in_map(outer: OwnedFd, slot: u32, inner: OwnedFd) -> Self {
        Grace::start(move || {
            super::batch::set_inner_map(outer.as_raw_fd(), slot, inner.as_raw_fd())
        })
    }

    /// Asks for a grace period after this moment; returns its ticket.
    pub fn request(&self) -> u64 {
        let mut s = lock(&self.shared);
        s.requested += 1;
        self.shared.1.notify_all();
        s.requested
    }

    /// Blocks until a grace period has passed since `ticket` was requested.
    pub fn wait(&self, ticket: u64) -> Result<()> {
        let mut s = lock(&self.shared);
        while s.completed < ticket {
            if let Some((covered, why)) = &s.failed
                && ticket <= *covered
            {
                return Err(Error::Invalid(format!(
                    "waiting for a kernel RCU grace period failed: {why}"
                )));
            }
            s = self.shared.1.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// Whether `ticket`'s grace period is over (without waiting).
    pub fn passed(&self, ticket: u64) -> bool {
        lock(&self.shared).completed >= ticket
    }
}

fn run(shared: &Shared, mut wait_once: impl FnMut() -> std::io::Result<()>) {
    loop {
        let target = {
            let mut s = lock(shared);
            while s.requested == s.completed && !s.stop {
                s = shared.1.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.stop {
                return;
            }
            s.requested
        };
        let r = wait_once();
        let failed = r.is_err();
        let mut s = lock(shared);
        match r {
            Ok(()) => {
                s.completed = target;
                s.failed = None;
            }
            Err(e) => s.failed = Some((target, e.to_string())),
        }
        shared.1.notify_all();
        drop(s);
        if failed {
            // Do not spin on a persistent error: the next request retries.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Grace {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_ticket_completes_only_after_a_wait_that_started_after_it() {
        let waits = Arc::new(AtomicU32::new(0));
        let g = {
            let waits = waits.clone();
            Grace::start(move || {
                waits.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                Ok(())
            })
        };
        assert!(g.passed(0), "nothing asked, nothing to wait for");
        let t1 = g.request();
        g.wait(t1).unwrap();
        assert!(g.passed(t1));
        let before = waits.load(Ordering::SeqCst);
        let t2 = g.request();
        let t3 = g.request();
        g.wait(t3).unwrap();
        assert!(g.passed(t2) && g.passed(t3));
        // At least one whole wait ran after t2 and t3 were requested.
        assert!(waits.load(Ordering::SeqCst) > before);
    }

    #[test]
    fn a_failing_wait_is_reported_to_its_waiters_only() {
        let calls = Arc::new(AtomicU32::new(0));
        let g = {
            let calls = calls.clone();
            // The first wait fails, the next ones succeed.
            Grace::start(move || match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(std::io::Error::from_raw_os_error(libc::EPERM)),
                _ => Ok(()),
            })
        };
        let t = g.request();
        let e = g.wait(t).unwrap_err().to_string();
        assert!(e.contains("grace period failed"), "{e}");
        // A later ticket is not blamed for the earlier failure; the retry covers it.
        let later = g.request();
        g.wait(later).unwrap();
        assert!(g.passed(t) && g.passed(later));
    }
}
