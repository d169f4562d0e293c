//! The controller's thread: it owns the [`Controller`] (and through it the only writable
//! handles on the configuration maps) and takes its work from a channel, one command at
//! a time. After every command that changed something it publishes a new [`Snapshot`]
//! for the readers, which never wait for it.
//!
//! Commands come from the control socket (changes, with their reply channel), the health
//! checks (probe results) and the neighbour refresh. A change that has to wait for the
//! kernel (an RCU grace period before a table generation is reused) delays only the
//! commands queued behind it, never a read.
use std::{net::SocketAddr, sync::Arc, thread::JoinHandle};

use tokio::sync::{oneshot, watch};

use super::controller::{Change, ChangeError, Changed, Controller, Neighbours, Snapshot};
use crate::{config::ServiceKey, dataplane::Dataplane, health::ProbeResult, model::apply::Maps};

enum Command {
    Change {
        change: Change,
        found: Neighbours,
        reply: oneshot::Sender<Result<Changed, ChangeError>>,
    },
    Probe {
        service: ServiceKey,
        backend: SocketAddr,
        result: ProbeResult,
    },
    Neighbours(Neighbours),
}

/// The sending side of the controller's channel (cheap to clone).
#[derive(Clone)]
pub struct Writer {
    tx: std::sync::mpsc::Sender<Command>,
}

/// The controller's thread is gone (the daemon is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the controller has stopped (lb is shutting down)")]
pub struct Stopped;

impl Writer {
    /// Asks for a change and waits for its outcome.
    pub async fn change(
        &self,
        change: Change,
        found: Neighbours,
    ) -> Result<Result<Changed, ChangeError>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Change {
                change,
                found,
                reply,
            })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Hands over a probe result (the controller acts on transitions).
    pub fn probe(&self, service: ServiceKey, backend: SocketAddr, result: ProbeResult) {
        let _ = self.tx.send(Command::Probe {
            service,
            backend,
            result,
        });
    }

    /// Hands over a complete lookup of the DSR backends' neighbours.
    pub fn neighbours(&self, found: Neighbours) {
        let _ = self.tx.send(Command::Neighbours(found));
    }
}

/// Starts the controller's thread. `after_change` runs on that thread after every change
/// an operator made (e.g. to warn about settings the change needs). The thread ends when
/// every [`Writer`] is dropped, and returns the controller.
pub fn spawn<M: Maps + Send + 'static>(
    controller: Controller<M>,
    publish: watch::Sender<Arc<Snapshot>>,
    after_change: impl Fn(&Controller<M>) + Send + 'static,
) -> (Writer, JoinHandle<Controller<M>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("lb-controller".into())
        .spawn(move || run(controller, &rx, &publish, after_change))
        .expect("spawning the controller thread");
    (Writer { tx }, thread)
}

fn run<M: Maps>(
    mut c: Controller<M>,
    rx: &std::sync::mpsc::Receiver<Command>,
    publish: &watch::Sender<Arc<Snapshot>>,
    after_change: impl Fn(&Controller<M>),
) -> Controller<M> {
    while let Ok(cmd) = rx.recv() {
        let changed = match cmd {
            Command::Change {
                change,
                found,
                reply,
            } => {
                let outcome = c.change(&change, found);
                let ok = outcome.is_ok();
                if ok {
                    after_change(&c);
                }
                // The snapshot goes out before the reply: a client that reads right after
                // its change sees it.
                if ok {
                    publish.send_replace(Arc::new(c.snapshot()));
                }
                let _ = reply.send(outcome);
                false
            }
            Command::Probe {
                service,
                backend,
                result,
            } => {
                // Every result moves the record (failure counts, last result) that
                // readers show, transition or not.
                c.probe_result(service, backend, &result);
                true
            }
            Command::Neighbours(found) => match c.set_neighbours(found) {
                Ok(changed) => changed,
                Err(e) => {
                    log::warn!("applying a neighbour change: {e}");
                    false
                }
            },
        };
        if changed {
            publish.send_replace(Arc::new(c.snapshot()));
        }
    }
    c
}

/// The controller of a running daemon.
pub type DaemonController = Controller<Dataplane>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, model::apply::tests::CheckedMaps};

    #[tokio::test]
    async fn changes_are_answered_in_order_and_published_before_the_reply() {
        let config = Config::parse(
            r#"{"services": [{"vip": "10.100.0.20", "port": 80, "forwarding": "nat",
                "table_size": 251, "backends": [{"address": "10.1.0.11"}]}]}"#,
        )
        .unwrap();
        let c = Controller::new(
            CheckedMaps::default(),
            &config,
            "lb.json",
            Neighbours::new(),
        )
        .unwrap();
        let (publish, mut seen) = watch::channel(Arc::new(c.snapshot()));
        let (writer, thread) = spawn(c, publish, |_| {});
        let svc: ServiceKey = "10.100.0.20:80/tcp".parse().unwrap();
        for last in 12..20u8 {
            let change = Change::BackendAdd(crate::api::BackendAdd {
                service: svc,
                backend: serde_json::from_str(&format!(r#"{{"address": "10.1.0.{last}"}}"#))
                    .unwrap(),
            });
            writer
                .change(change, Neighbours::new())
                .await
                .unwrap()
                .unwrap();
            let snap = seen.borrow_and_update().clone();
            assert_eq!(
                snap.runtime.service(&svc).unwrap().backends.len(),
                usize::from(last - 10),
                "the snapshot shows the change once it is answered"
            );
        }
        let refused = writer
            .change(
                Change::ServiceDel(crate::api::ServiceDel {
                    service: "10.9.9.9:80/tcp".parse().unwrap(),
                }),
                Neighbours::new(),
            )
            .await
            .unwrap();
        assert!(refused.is_err());
        drop(writer);
        let c = thread.join().unwrap();
        assert_eq!(c.runtime().service(&svc).unwrap().backends.len(), 9);
    }
}
