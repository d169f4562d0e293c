//! The controller: the one writer of the datapath's configuration maps, and the keeper of
//! the running state (services, backends, their health, their neighbours).
//!
//! Every change of the balancer ends here, one at a time: control requests and reloads
//! ([`Change`]), probe results ([`Controller::probe_result`]), neighbour updates
//! ([`Controller::set_neighbours`]). A change is computed on a copy of the [`Runtime`],
//! turned into an [`Image`], and written by [`apply`] in an order that never shows a
//! packet an inconsistent state; only then does the copy become the running state. If a
//! write fails halfway, the previous image is written back and the change is refused.
//!
//! The controller does no slow work itself: no neighbour waits (callers resolve new
//! neighbours before they ask for a change), no table dumps (the sweeper's), no reads
//! for presentation (readers use the [`Snapshot`] published after every change). It is
//! generic over [`Maps`], so its orchestration and rollback are tested with a fake.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use crate::{
    api::{BackendAdd, BackendDel, BackendSet, Request, ServiceAdd, ServiceDel},
    config::{CheckKind, Config, Forwarding, ServiceKey},
    dataplane::error::chain,
    health::{BackendHealth, Health, HealthSnapshot, ProbeResult, Thresholds, Transition},
    model::{
        adopt::Pinned,
        apply::{Maps, apply},
        runtime::{Image, Neighbour, OpError, Runtime},
    },
    net::neighbour::Unreachable,
};

/// What the kernel's tables say about each DSR backend address.
pub type Neighbours = BTreeMap<IpAddr, Result<Neighbour, Unreachable>>;

/// A change asked for by an operator (control request, reload, SIGHUP).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    ServiceAdd(ServiceAdd),
    ServiceDel(ServiceDel),
    BackendAdd(BackendAdd),
    BackendDel(BackendDel),
    BackendSet(BackendSet),
    /// Replace the whole configuration (already read and validated).
    Reload(Config),
}

impl Change {
    /// The change a request asks for; `None` for the reading requests, `reload` (whose
    /// configuration the caller reads first), `status` and `takeover`.
    pub fn from_request(req: Request) -> Option<Change> {
        Some(match req {
            Request::ServiceAdd(r) => Change::ServiceAdd(r),
            Request::ServiceDel(r) => Change::ServiceDel(r),
            Request::BackendAdd(r) => Change::BackendAdd(r),
            Request::BackendDel(r) => Change::BackendDel(r),
            Request::BackendSet(r) => Change::BackendSet(r),
            Request::List {}
            | Request::Stats { .. }
            | Request::Conns { .. }
            | Request::Reload {}
            | Request::Status {}
            | Request::Takeover {} => return None,
        })
    }

    /// What the log says once the change is made.
    fn describe(&self, config_path: &str) -> String {
        match self {
            Change::ServiceAdd(r) => format!("added service {}", r.service.key()),
            Change::ServiceDel(r) => format!("removed service {}", r.service),
            Change::BackendAdd(r) => format!(
                "added backend {} to {}",
                r.backend.socket_addr(r.service.port),
                r.service
            ),
            Change::BackendDel(r) => {
                format!(
                    "removed backend {} from {}",
                    r.backend.resolve(&r.service),
                    r.service
                )
            }
            Change::BackendSet(r) => {
                let mut what = format!(
                    "backend {} of {}:",
                    r.backend.resolve(&r.service),
                    r.service
                );
                if let Some(w) = r.weight {
                    what += &format!(" weight {w}");
                }
                if let Some(s) = r.state {
                    what += &format!(" state {}", s.as_str());
                }
                what
            }
            Change::Reload(_) => format!("reloaded {config_path}"),
        }
    }

    /// Applies the change to `runtime` (all or nothing).
    pub fn apply_to(&self, runtime: &mut Runtime) -> Result<(), OpError> {
        match self {
            Change::ServiceAdd(r) => runtime.add_service(r.service.clone(), Health::Up),
            Change::ServiceDel(r) => runtime.remove_service(&r.service),
            Change::BackendAdd(r) => runtime.add_backend(&r.service, r.backend.clone(), Health::Up),
            Change::BackendDel(r) => {
                runtime.remove_backend(&r.service, r.backend.resolve(&r.service))
            }
            Change::BackendSet(r) => {
                runtime.set_backend(&r.service, r.backend.resolve(&r.service), r.weight, r.state)
            }
            Change::Reload(config) => runtime.reload(config, Health::Up),
        }
    }
}

/// Why a change was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The operation itself is not possible (no such service, a duplicate, ...).
    #[error(transparent)]
    Op(#[from] OpError),
    /// The maps could not be written; the previous state was written back.
    #[error("writing the datapath maps failed: {}", chain(.0.as_ref()))]
    Datapath(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What happened to the running state after a change was made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Services that are gone (their connection-table entries can go too).
    pub removed_services: Vec<ServiceKey>,
}

/// Health of one backend incarnation: (index, epoch) tell a re-created backend from the
/// one the record was about.
#[derive(Clone, Debug)]
struct HealthRecord {
    index: u32,
    epoch: u32,
    health: BackendHealth,
}

/// Everything readers need, as of one moment (published after every change).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub runtime: Runtime,
    pub health: BTreeMap<(ServiceKey, SocketAddr), HealthSnapshot>,
    pub neighbours: Neighbours,
}

impl Snapshot {
    /// The next hop of a DSR backend, when it has one.
    pub fn neighbour(&self, addr: IpAddr) -> Option<Neighbour> {
        self.neighbours
            .get(&addr)
            .and_then(|r| r.as_ref().ok())
            .copied()
    }

    /// Backend indexes that own table slots, per service.
    pub fn rotation(&self, service: &ServiceKey) -> BTreeSet<u32> {
        self.runtime
            .service(service)
            .map_or_else(BTreeSet::new, |s| {
                s.in_rotation(&|a| self.neighbour(a))
                    .iter()
                    .map(|b| b.index)
                    .collect()
            })
    }
}

/// DSR backend addresses of a runtime (their neighbours are looked up).
pub fn dsr_addresses(runtime: &Runtime) -> BTreeSet<IpAddr> {
    runtime
        .services()
        .filter(|s| s.config.forwarding == Forwarding::Dsr)
        .flat_map(|s| s.backends.values().map(|b| b.config.address))
        .collect()
}

/// The DSR addresses `change` would bring that `known` has no entry for: the caller
/// looks them up (and may wait for them) before asking for the change.
pub fn new_dsr_addresses(change: &Change, runtime: &Runtime, known: &Neighbours) -> Vec<IpAddr> {
    let mut next = runtime.clone();
    if change.apply_to(&mut next).is_err() {
        return Vec::new();
    }
    dsr_addresses(&next)
        .into_iter()
        .filter(|a| !known.contains_key(a))
        .collect()
}

pub struct Controller<M: Maps> {
    maps: M,
    runtime: Runtime,
    applied: Image,
    neighbours: Neighbours,
    health: BTreeMap<(ServiceKey, SocketAddr), HealthRecord>,
    /// The configuration file, for messages.
    config_path: String,
}

impl<M: Maps> Controller<M> {
    /// Takes over the maps of a loaded datapath and applies `config` with the neighbours
    /// already looked up (`neighbours`).
    pub fn new(
        maps: M,
        config: &Config,
        config_path: &str,
        neighbours: Neighbours,
    ) -> Result<Self, ChangeError> {
        let runtime = Runtime::from_config(config, Health::Up)?;
        Self::start(maps, Image::default(), runtime, config_path, neighbours)
    }

    /// Takes over the maps of a datapath that outlived its daemon (`pinned`, as read
    /// from them) and applies `config` as one change: services and backends that stay
    /// keep their ids (their connections continue), and only the differences are
    /// written.
    pub fn adopt(
        maps: M,
        config: &Config,
        config_path: &str,
        neighbours: Neighbours,
        pinned: &Pinned,
    ) -> Result<Self, ChangeError> {
        let runtime = Runtime::adopt(config, pinned)?;
        Self::start(
            maps,
            Image::from_pinned(pinned),
            runtime,
            config_path,
            neighbours,
        )
    }

    /// A controller over maps holding `applied`, bringing them to `runtime`.
    fn start(
        maps: M,
        applied: Image,
        runtime: Runtime,
        config_path: &str,
        neighbours: Neighbours,
    ) -> Result<Self, ChangeError> {
        let mut c = Controller {
            maps,
            runtime: Runtime::new(runtime.conntrack.clone()),
            applied,
            neighbours: Neighbours::new(),
            health: BTreeMap::new(),
            config_path: config_path.to_string(),
        };
        c.merge_neighbours(neighbours);
        c.commit(runtime)?;
        Ok(c)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn neighbours(&self) -> &Neighbours {
        &self.neighbours
    }

    /// The state readers see.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            runtime: self.runtime.clone(),
            health: self
                .health
                .iter()
                .map(|(k, r)| (*k, r.health.snapshot()))
                .collect(),
            neighbours: self.neighbours.clone(),
        }
    }

    /// Makes a change (`found`: neighbours the caller looked up for it). Logs it when
    /// made; on an error nothing changed.
    pub fn change(&mut self, change: &Change, found: Neighbours) -> Result<Changed, ChangeError> {
        let before: BTreeSet<ServiceKey> =
            self.runtime.services().map(|s| s.config.key()).collect();
        let mut next = self.next_runtime();
        change.apply_to(&mut next)?;
        self.merge_neighbours(found);
        self.commit(next)?;
        log::info!("{}", change.describe(&self.config_path));
        let after: BTreeSet<ServiceKey> = self.runtime.services().map(|s| s.config.key()).collect();
        Ok(Changed {
            removed_services: before.difference(&after).copied().collect(),
        })
    }

    /// Replaces what is known of DSR backends' neighbours with `found` (a complete
    /// lookup of every DSR address) and applies any change.
    pub fn set_neighbours(&mut self, mut found: Neighbours) -> Result<bool, ChangeError> {
        self.purge_retired()?;
        // A failed entry is solicited again, which makes it "being resolved": it stays
        // failed until it resolves.
        for (a, r) in found.iter_mut() {
            if matches!(r, Err(Unreachable::Unresolved { .. }))
                && let Some(Err(Unreachable::Failed { iface })) = self.neighbours.get(a)
            {
                *r = Err(Unreachable::Failed {
                    iface: iface.clone(),
                });
            }
        }
        if found == self.neighbours {
            return Ok(false);
        }
        self.log_problems(&found);
        self.neighbours = found;
        let next = self.next_runtime();
        self.commit(next)?;
        Ok(true)
    }

    /// Records one probe result; a rise/fall transition changes the datapath.
    pub fn probe_result(
        &mut self,
        service: ServiceKey,
        backend: SocketAddr,
        result: &ProbeResult,
    ) -> Option<Transition> {
        let svc = self.runtime.service(&service)?; // removed meanwhile
        let hc = svc.config.effective_health_check();
        let thresholds = Thresholds {
            rise: hc.rise,
            fall: hc.fall,
        };
        let record = self.health.get_mut(&(service, backend))?;
        let t = record
            .health
            .record(result, &thresholds, SystemTime::now())?;
        let msg = format!(
            "backend {backend} of {service} is {} ({})",
            if t.to == Health::Up { "UP" } else { "DOWN" },
            t.reason
        );
        if t.to == Health::Up {
            log::info!("{msg}");
        } else {
            log::warn!("{msg}");
        }
        let mut next = self.next_runtime();
        next.set_health(&service, backend, t.to);
        if let Err(e) = self.commit(next) {
            log::error!("applying the health change of {backend} failed: {e}");
        }
        Some(t)
    }

    /// Adds lookups of new addresses to what is known, logging their problems.
    fn merge_neighbours(&mut self, found: Neighbours) {
        self.log_problems(&found);
        self.neighbours.extend(found);
    }

    /// Warns about DSR backends that newly cannot get traffic (their flows re-pick), and
    /// says when one that could not is reached again.
    fn log_problems(&self, found: &Neighbours) {
        for (a, r) in found {
            let before = self.neighbours.get(a);
            if before == Some(r) {
                continue;
            }
            match r {
                Err(why) => log::warn!("DSR backend {a} gets no traffic: {why}"),
                Ok(n) if matches!(before, Some(Err(_))) => log::info!(
                    "DSR backend {a} is reachable again (MAC {}): it gets traffic again",
                    crate::net::neighbour::format_mac(&n.mac)
                ),
                Ok(_) => {}
            }
        }
    }

    /// The health records `next` needs, and `next`'s Up/Down made to agree with them: a
    /// backend keeps its record while it is the same incarnation (index and epoch); a new
    /// one starts with the runtime's initial health; services without checks are up.
    fn sync_health(&self, next: &mut Runtime) -> BTreeMap<(ServiceKey, SocketAddr), HealthRecord> {
        let now = SystemTime::now();
        let mut records = BTreeMap::new();
        let mut updates = Vec::new();
        for s in next.services() {
            let unchecked = s.config.effective_health_check().kind == CheckKind::None;
            for (addr, b) in &s.backends {
                let k = (s.config.key(), *addr);
                let same = |r: &&HealthRecord| r.index == b.index && r.epoch == b.epoch;
                let health = match self.health.get(&k).filter(same) {
                    Some(r) if !(unchecked && r.health.state() == Health::Down) => r.health.clone(),
                    // The same backend, down, and its service no longer checks.
                    Some(_) => {
                        log::info!("backend {addr} of {} is UP (health check set to none)", k.0);
                        BackendHealth::new(Health::Up, now)
                    }
                    None => BackendHealth::new(if unchecked { Health::Up } else { b.health }, now),
                };
                if health.state() != b.health {
                    updates.push((k, health.state()));
                }
                records.insert(
                    k,
                    HealthRecord {
                        index: b.index,
                        epoch: b.epoch,
                        health,
                    },
                );
            }
        }
        for ((service, addr), health) in updates {
            next.set_health(&service, addr, health);
        }
        records
    }

    /// Makes `next` the running state: image, ordered writes, rollback on failure.
    fn commit(&mut self, mut next: Runtime) -> Result<(), ChangeError> {
        next.set_clock(now_s());
        let health = self.sync_health(&mut next);
        let neighbours = &self.neighbours;
        let lookup = |a: IpAddr| neighbours.get(&a).and_then(|r| r.as_ref().ok()).copied();
        // Only a MAC not known *yet* keeps a DSR backend's flows where they are.
        let lost = |a: IpAddr| {
            !matches!(
                neighbours.get(&a),
                None | Some(Ok(_) | Err(Unreachable::Unresolved { .. }))
            )
        };
        let image = next.image_with(&lookup, &lost);
        if let Err(e) = apply(&mut self.maps, &self.applied, &image) {
            log::error!(
                "writing the datapath failed ({}); restoring the previous state",
                chain(&e)
            );
            if let Err(e2) = apply(&mut self.maps, &image, &self.applied) {
                log::error!(
                    "restoring the previous datapath state failed too: {}",
                    chain(&e2)
                );
            }
            return Err(ChangeError::Datapath(Box::new(e)));
        }
        self.health = health;
        self.runtime = next;
        // Ids this change freed may still be named by a packet in flight: reusable
        // after a grace period.
        if self.runtime.has_released() {
            self.runtime.cool(self.maps.grace_request());
        }
        self.applied = image;
        Ok(())
    }

    /// Drops the translations of retired NAT backends whose connections have all timed
    /// out (called with each neighbour refresh, every few seconds).
    pub fn purge_retired(&mut self) -> Result<(), ChangeError> {
        let now = now_s();
        if self.runtime.retired_due(now) {
            let mut next = self.next_runtime();
            next.purge_retired(now);
            self.commit(next)?;
        }
        Ok(())
    }

    /// A copy of the running state to build the next one from, with the ids whose
    /// grace period has passed made reusable first.
    fn next_runtime(&mut self) -> Runtime {
        let maps = &self.maps;
        self.runtime.thaw(|ticket| maps.grace_passed(ticket));
        self.runtime.clone()
    }
}

/// Wall-clock seconds: when NAT backends were retired (see `Runtime::set_clock`).
fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The snapshot of a controller running the configuration `text` over the checked fake
/// datapath, without neighbours (the readers' tests build their views from it).
#[cfg(test)]
pub(crate) fn snapshot_of(text: &str) -> Snapshot {
    Controller::new(
        crate::model::apply::tests::CheckedMaps::default(),
        &Config::parse(text).unwrap_or_else(|e| panic!("{e}")),
        "lb.json",
        Neighbours::new(),
    )
    .unwrap()
    .snapshot()
}

#[cfg(test)]
mod tests {
    use lb_common::{BACKEND_F_LIVE, BACKEND_F_REPICK, NO_BACKEND};

    use super::*;
    use crate::model::apply::tests::CheckedMaps;

    const CONFIG: &str = r#"{"services": [
        {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
            {"address": "10.0.0.11"}, {"address": "10.0.0.12"}]},
        {"vip": "10.100.0.20", "port": 8080, "forwarding": "nat", "table_size": 251,
         "health_check": {"kind": "none"}, "backends": [{"address": "10.1.0.11", "port": 80}]}]}"#;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn key(s: &str) -> ServiceKey {
        s.parse().unwrap()
    }

    fn found(addrs: &[&str]) -> Neighbours {
        addrs
            .iter()
            .map(|a| {
                let a: IpAddr = a.parse().unwrap();
                (
                    a,
                    Ok(Neighbour {
                        ifindex: 2,
                        mac: [2, 0, 0, 0, 0, crate::model::runtime::last_octet(a)],
                        src_mac: [2, 0, 0, 0, 0, 1],
                    }),
                )
            })
            .collect()
    }

    fn controller() -> Controller<CheckedMaps> {
        Controller::new(
            CheckedMaps::default(),
            &config(CONFIG),
            "lb.json",
            found(&["10.0.0.11", "10.0.0.12"]),
        )
        .unwrap()
    }

    /// Backend indexes holding slots in a service's table, as the fake datapath has it.
    fn slots_of(c: &Controller<CheckedMaps>, service: &str) -> BTreeSet<u32> {
        let id = c.runtime().service(&key(service)).unwrap().id;
        c.maps().tables[&id]
            .iter()
            .copied()
            .filter(|i| *i != NO_BACKEND)
            .collect()
    }

    fn index_of(c: &Controller<CheckedMaps>, service: &str, backend: &str) -> u32 {
        c.runtime().service(&key(service)).unwrap().backends[&backend.parse().unwrap()].index
    }

    #[test]
    fn a_new_controller_writes_the_whole_configuration() {
        let c = controller();
        assert_eq!(c.maps().services.len(), 2);
        assert_eq!(
            slots_of(&c, "10.100.0.10:80/tcp"),
            BTreeSet::from([
                index_of(&c, "10.100.0.10:80/tcp", "10.0.0.11:80"),
                index_of(&c, "10.100.0.10:80/tcp", "10.0.0.12:80")
            ])
        );
        let snap = c.snapshot();
        assert_eq!(snap.health.len(), 3, "every backend has a health record");
        assert_eq!(snap.rotation(&key("10.100.0.20:8080/tcp")).len(), 1);
    }

    #[test]
    fn changes_reach_the_maps_and_refusals_change_nothing() {
        let mut c = controller();
        let svc = key("10.100.0.10:80/tcp");
        c.change(
            &Change::BackendAdd(BackendAdd {
                service: svc,
                backend: serde_json::from_str(r#"{"address": "10.0.0.13"}"#).unwrap(),
            }),
            found(&["10.0.0.13"]),
        )
        .unwrap();
        assert_eq!(slots_of(&c, "10.100.0.10:80/tcp").len(), 3);
        let before = (c.maps().writes, c.runtime().to_config());
        let refused = [
            Change::BackendDel(BackendDel {
                service: svc,
                backend: "10.0.0.99".parse().unwrap(),
            }),
            Change::ServiceDel(ServiceDel {
                service: key("10.9.9.9:80/tcp"),
            }),
            Change::ServiceAdd(ServiceAdd {
                service: config(CONFIG).services[0].clone(),
            }),
            Change::BackendSet(BackendSet {
                service: svc,
                backend: "10.0.0.11".parse().unwrap(),
                weight: None,
                state: None,
            }),
        ];
        for change in &refused {
            let e = c.change(change, Neighbours::new()).unwrap_err();
            assert!(matches!(e, ChangeError::Op(_)), "{change:?}: {e}");
        }
        assert_eq!(
            (c.maps().writes, c.runtime().to_config()),
            before,
            "a refused change writes nothing and keeps the running state"
        );
    }

    /// `lb backend add` and `lb service add` refuse a backend of the other family than
    /// the VIP's, with a message that says so, and change nothing.
    #[test]
    fn mixing_families_in_a_service_is_refused_and_changes_nothing() {
        let mut c = Controller::new(
            CheckedMaps::default(),
            &config(
                r#"{"services": [
                {"vip": "10.100.0.10", "port": 80, "table_size": 251, "health_check": {"kind": "none"},
                 "backends": [{"address": "10.0.0.11"}]},
                {"vip": "2001:db8::10", "port": 80, "forwarding": "nat", "table_size": 251,
                 "health_check": {"kind": "none"}, "backends": [{"address": "2001:db8:1::11"}]}]}"#,
            ),
            "lb.json",
            found(&["10.0.0.11"]),
        )
        .unwrap();
        let before = (c.maps().writes, c.runtime().to_config());
        let backend = |a: &str| serde_json::from_str(&format!(r#"{{"address": "{a}"}}"#)).unwrap();
        let refused = [
            Change::BackendAdd(BackendAdd {
                service: key("[2001:db8::10]:80/tcp"),
                backend: backend("10.0.0.12"),
            }),
            Change::BackendAdd(BackendAdd {
                service: key("10.100.0.10:80/tcp"),
                backend: backend("2001:db8:1::12"),
            }),
            Change::ServiceAdd(ServiceAdd {
                service: serde_json::from_str(
                    r#"{"vip": "2001:db8::20", "port": 80, "backends": [{"address": "10.0.0.13"}]}"#,
                )
                .unwrap(),
            }),
        ];
        for change in &refused {
            let e = c.change(change, Neighbours::new()).unwrap_err().to_string();
            assert!(
                e.contains("a service's backends are of its VIP's family"),
                "{change:?}: {e}"
            );
        }
        assert_eq!(
            (c.maps().writes, c.runtime().to_config()),
            before,
            "a refused change writes nothing and keeps the running state"
        );
    }

    #[test]
    fn a_failed_write_is_rolled_back_and_the_state_kept() {
        let mut c = controller();
        let svc = key("10.100.0.10:80/tcp");
        let maps_before = (
            c.maps().services.clone(),
            c.maps().tables.clone(),
            c.maps().backends.clone(),
        );
        let config_before = c.runtime().to_config();
        // The third write of the next change fails.
        c.maps_mut().fail_at = Some(c.maps().writes + 3);
        let e = c
            .change(
                &Change::ServiceAdd(ServiceAdd {
                    service: serde_json::from_str(
                        r#"{"vip": "10.100.0.30", "port": 80, "table_size": 251, "backends": [
                        {"address": "10.0.0.11"}, {"address": "10.0.0.14"}]}"#,
                    )
                    .unwrap(),
                }),
                found(&["10.0.0.14"]),
            )
            .unwrap_err();
        assert!(matches!(e, ChangeError::Datapath(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("writing the datapath maps failed")
        );
        assert_eq!(c.runtime().to_config(), config_before);
        let maps_after = (
            c.maps().services.clone(),
            c.maps().tables.clone(),
            c.maps().backends.clone(),
        );
        // The records written before the failure are retired again: the same services,
        // tables and live backends as before.
        assert_eq!(maps_after.0, maps_before.0);
        assert_eq!(maps_after.1, maps_before.1);
        let live = |b: &BTreeMap<u32, lb_common::Backend>| -> BTreeMap<u32, lb_common::Backend> {
            b.iter()
                .filter(|(_, r)| r.flags & BACKEND_F_LIVE != 0)
                .map(|(i, r)| (*i, *r))
                .collect()
        };
        assert_eq!(live(&maps_after.2), live(&maps_before.2));
        // And the next change works.
        c.change(
            &Change::ServiceDel(ServiceDel { service: svc }),
            Neighbours::new(),
        )
        .unwrap();
        assert_eq!(c.maps().services.len(), 1);
    }

    #[test]
    fn health_transitions_follow_rise_and_fall_and_move_slots() {
        let mut c = controller();
        let svc = key("10.100.0.10:80/tcp");
        let b11: SocketAddr = "10.0.0.11:80".parse().unwrap();
        let i11 = index_of(&c, "10.100.0.10:80/tcp", "10.0.0.11:80");
        let fail = ProbeResult::Fail("connection refused".into());
        // fall 3 (the default): two failures change nothing.
        assert!(c.probe_result(svc, b11, &fail).is_none());
        assert!(c.probe_result(svc, b11, &fail).is_none());
        assert!(slots_of(&c, "10.100.0.10:80/tcp").contains(&i11));
        let t = c.probe_result(svc, b11, &fail).expect("third failure");
        assert_eq!((t.from, t.to), (Health::Up, Health::Down));
        assert!(!slots_of(&c, "10.100.0.10:80/tcp").contains(&i11));
        assert_eq!(
            c.maps().backends[&i11].flags,
            BACKEND_F_LIVE | BACKEND_F_REPICK,
            "a down backend's flows re-pick"
        );
        // rise 2.
        assert!(c.probe_result(svc, b11, &ProbeResult::Up).is_none());
        let t = c.probe_result(svc, b11, &ProbeResult::Up).expect("rise");
        assert_eq!(t.to, Health::Up);
        assert!(slots_of(&c, "10.100.0.10:80/tcp").contains(&i11));
        // Results for backends that are gone are ignored.
        assert!(c.probe_result(key("10.9.9.9:80/tcp"), b11, &fail).is_none());
    }

    #[test]
    fn a_recreated_backend_starts_a_new_health_record() {
        let mut c = controller();
        let svc = key("10.100.0.10:80/tcp");
        let b11: SocketAddr = "10.0.0.11:80".parse().unwrap();
        for _ in 0..3 {
            c.probe_result(svc, b11, &ProbeResult::Fail("timeout".into()));
        }
        assert_eq!(c.snapshot().health[&(svc, b11)].state, Health::Down);
        let del = Change::BackendDel(BackendDel {
            service: svc,
            backend: "10.0.0.11".parse().unwrap(),
        });
        c.change(&del, Neighbours::new()).unwrap();
        let add = Change::BackendAdd(BackendAdd {
            service: svc,
            backend: serde_json::from_str(r#"{"address": "10.0.0.11"}"#).unwrap(),
        });
        c.change(&add, Neighbours::new()).unwrap();
        assert_eq!(
            c.snapshot().health[&(svc, b11)].state,
            Health::Up,
            "a new incarnation starts up"
        );
    }

    #[test]
    fn neighbours_decide_dsr_rotation() {
        let mut c = controller();
        let i12 = index_of(&c, "10.100.0.10:80/tcp", "10.0.0.12:80");
        let mut lost = found(&["10.0.0.11"]);
        lost.insert(
            "10.0.0.12".parse().unwrap(),
            Err(Unreachable::Unresolved {
                iface: "eth0".into(),
            }),
        );
        assert!(c.set_neighbours(lost.clone()).unwrap());
        assert!(!slots_of(&c, "10.100.0.10:80/tcp").contains(&i12));
        assert_eq!(
            c.maps().backends[&i12].flags,
            BACKEND_F_LIVE,
            "not known *yet*: no slots, but its flows stay"
        );
        assert!(!c.set_neighbours(lost).unwrap(), "no change, no writes");
        let mut failed = found(&["10.0.0.11"]);
        failed.insert(
            "10.0.0.12".parse().unwrap(),
            Err(Unreachable::Failed {
                iface: "eth0".into(),
            }),
        );
        assert!(c.set_neighbours(failed).unwrap());
        assert_eq!(
            c.maps().backends[&i12].flags,
            BACKEND_F_LIVE | BACKEND_F_REPICK,
            "failed: its flows choose again"
        );
        // Solicited again, the failed entry is "being resolved": still failed.
        let mut again = found(&["10.0.0.11"]);
        again.insert(
            "10.0.0.12".parse().unwrap(),
            Err(Unreachable::Unresolved {
                iface: "eth0".into(),
            }),
        );
        assert!(!c.set_neighbours(again).unwrap(), "still failed, no writes");
        assert_eq!(
            c.maps().backends[&i12].flags,
            BACKEND_F_LIVE | BACKEND_F_REPICK
        );
        assert!(
            c.set_neighbours(found(&["10.0.0.11", "10.0.0.12"]))
                .unwrap()
        );
        assert!(slots_of(&c, "10.100.0.10:80/tcp").contains(&i12));
    }

    #[test]
    fn new_dsr_addresses_are_those_a_change_brings_and_nobody_looked_up() {
        let c = controller();
        let known = c.neighbours().clone();
        let add = Change::BackendAdd(BackendAdd {
            service: key("10.100.0.10:80/tcp"),
            backend: serde_json::from_str(r#"{"address": "10.0.0.15"}"#).unwrap(),
        });
        assert_eq!(
            new_dsr_addresses(&add, c.runtime(), &known),
            vec!["10.0.0.15".parse::<IpAddr>().unwrap()]
        );
        let nat = Change::BackendAdd(BackendAdd {
            service: key("10.100.0.20:8080/tcp"),
            backend: serde_json::from_str(r#"{"address": "10.1.0.15"}"#).unwrap(),
        });
        assert!(
            new_dsr_addresses(&nat, c.runtime(), &known).is_empty(),
            "NAT backends need no neighbour"
        );
        let refused = Change::ServiceDel(ServiceDel {
            service: key("10.9.9.9:80/tcp"),
        });
        assert!(new_dsr_addresses(&refused, c.runtime(), &known).is_empty());
    }

    #[test]
    fn a_reload_reports_the_services_it_removed() {
        let mut c = controller();
        let mut next = config(CONFIG);
        next.services.remove(1);
        let changed = c.change(&Change::Reload(next), Neighbours::new()).unwrap();
        assert_eq!(changed.removed_services, vec![key("10.100.0.20:8080/tcp")]);
        assert_eq!(c.maps().services.len(), 1);
    }
}
