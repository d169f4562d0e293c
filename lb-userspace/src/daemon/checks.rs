//! Scheduling the health checks: one task per check the running state asks for, each
//! probing on its own schedule and handing results to the controller. The set of checks
//! follows every published snapshot; a check whose parameters change is restarted.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use super::{controller::Snapshot, writer::Writer};
use crate::{
    config::{AdminState, CheckKind, ServiceKey},
    health::{self, ProbeKind},
};

/// One health check to run: what the scheduler keeps a task for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Check {
    pub service: ServiceKey,
    pub backend: SocketAddr,
    /// Where the probe connects (the backend, or the configured probe address/port).
    pub target: SocketAddr,
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The checks a running state asks for (none for `none`, none for backends in
/// maintenance).
pub fn checks(snap: &Snapshot) -> BTreeSet<Check> {
    let mut out = BTreeSet::new();
    for s in snap.runtime.services() {
        let hc = s.config.effective_health_check();
        let kind = match hc.kind {
            CheckKind::None => continue,
            CheckKind::Tcp => ProbeKind::Tcp,
            CheckKind::Http => ProbeKind::Http {
                path: hc.path.clone(),
                expect: (hc.expect_status.low, hc.expect_status.high),
                host: hc.host.clone(),
                body_contains: hc.body_contains.clone(),
                tls: None,
            },
        };
        for (addr, b) in &s.backends {
            if b.config.state == AdminState::Maint {
                continue;
            }
            out.insert(Check {
                service: s.config.key(),
                backend: *addr,
                target: SocketAddr::new(
                    hc.probe_address.unwrap_or(addr.ip()),
                    hc.probe_port.unwrap_or(addr.port()),
                ),
                kind: kind.clone(),
                interval: Duration::from_millis(hc.interval_ms.into()),
                timeout: Duration::from_millis(hc.timeout_ms.into()),
            });
        }
    }
    out
}

/// A task aborted when this handle is dropped (a plain `JoinHandle` detaches instead).
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one task per check of the latest snapshot, until aborted (which stops every
/// probe).
pub async fn schedule(mut snapshots: watch::Receiver<Arc<Snapshot>>, writer: Writer) {
    let mut running: BTreeMap<Check, Owned> = BTreeMap::new();
    loop {
        let wanted = checks(&snapshots.borrow_and_update());
        running.retain(|check, _| wanted.contains(check));
        for check in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(check) {
                let task = tokio::spawn(probe_loop(slot.key().clone(), writer.clone()));
                slot.insert(Owned(task));
            }
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

/// Probes one backend forever, on its own schedule (first probe spread over the interval).
async fn probe_loop(check: Check, writer: Writer) {
    tokio::time::sleep(health::start_offset(check.backend, check.interval)).await;
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = health::probe(&check.kind, check.target, check.timeout).await;
        writer.probe(check.service, check.backend, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::controller::snapshot_of;

    #[test]
    fn checks_follow_the_configuration() {
        let snap = snapshot_of(
            r#"{"services": [
            {"vip": "10.100.0.20", "port": 80, "forwarding": "nat", "table_size": 251,
             "health_check": {"kind": "http", "path": "/healthz", "probe_port": 8081, "interval_ms": 500, "timeout_ms": 400},
             "backends": [{"address": "10.1.0.11"}, {"address": "10.1.0.12", "state": "maint"},
                          {"address": "10.1.0.13", "state": "drain"}]},
            {"vip": "10.100.0.20", "port": 53, "protocol": "udp", "forwarding": "nat", "table_size": 251,
             "backends": [{"address": "10.1.0.11"}]},
            {"vip": "10.100.0.20", "port": 443, "forwarding": "nat", "table_size": 251,
             "backends": [{"address": "10.1.0.11"}]}]}"#,
        );
        let got: Vec<(String, String, bool)> = checks(&snap)
            .into_iter()
            .map(|c| {
                (
                    c.backend.to_string(),
                    c.target.to_string(),
                    matches!(c.kind, ProbeKind::Http { .. }),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                // port 80: HTTP on the probe port; the backend in maint is not checked.
                ("10.1.0.11:80".into(), "10.1.0.11:8081".into(), true),
                ("10.1.0.13:80".into(), "10.1.0.13:8081".into(), true),
                // port 443: the default TCP check; the UDP service has none.
                ("10.1.0.11:443".into(), "10.1.0.11:443".into(), false),
            ]
        );
    }
}
