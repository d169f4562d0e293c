//! The controller: the one owner of the datapath's maps and of the running state.
//!
//! Everything that changes the balancer goes through here (control requests, config
//! reloads, health transitions, neighbour changes), under one lock held by the daemon.
//! A change is computed on a copy of the [`Runtime`], turned into an [`Image`], and written
//! by [`apply`] in a safe order; only then does the copy become the running state. If a
//! map write fails halfway, the previous image is written back and the request fails.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use lb_common::{Counter, FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, FlowKey, TrafficStats};
use serde_json::{Value, json};

use crate::{
    api::{Request, Response},
    config::{CheckKind, Config, Forwarding, Protocol, ServiceKey},
    dataplane::Dataplane,
    health::{BackendHealth, Health, ProbeKind, ProbeResult, Thresholds},
    model::{
        apply::apply,
        runtime::{Image, Neighbour, Runtime},
    },
    net::neighbour::{self as neigh, Unreachable},
};

/// One health check to run: what the health scheduler keeps a task for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Check {
    pub service: ServiceKey,
    pub backend: SocketAddrV4,
    /// Where the probe connects (the backend, or the configured probe address/port).
    pub target: SocketAddrV4,
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Per-backend connection counts from the last sweep of the connection table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCount {
    /// TCP flows past their handshake and not closing.
    pub active: u64,
    /// Everything else: TCP opening or closing, UDP flows (ipvsadm's InActConn).
    pub inactive: u64,
}

/// Traffic counters at one moment, for rates.
#[derive(Clone, Debug, Default)]
struct Sample {
    at: Option<Instant>,
    services: BTreeMap<u32, TrafficStats>,
    backends: BTreeMap<u32, TrafficStats>,
    counters: Vec<u64>,
}

pub struct Controller {
    dp: Dataplane,
    runtime: Runtime,
    applied: Image,
    neighbours: BTreeMap<Ipv4Addr, Result<Neighbour, Unreachable>>,
    /// Health of each backend incarnation: (index, epoch) tell a re-created backend
    /// (new index or epoch) from the one the record was about.
    health: BTreeMap<(ServiceKey, SocketAddrV4), (u32, u32, BackendHealth)>,
    config_path: PathBuf,
    /// Interfaces the program is attached to.
    ifaces: Vec<String>,
    conns: BTreeMap<u32, ConnCount>,
    /// Entries the connection table kept at the last sweep (any backend, removed too).
    conntrack_len: usize,
    /// The two most recent samples (older, newer).
    samples: (Sample, Sample),
}

fn monotonic_coarse_ns() -> u64 {
    // SAFETY: clock_gettime writes a timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // CLOCK_MONOTONIC_COARSE is the clock of bpf_ktime_get_coarse_ns, which dates flows.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Controller {
    /// Takes over a loaded datapath, attached to `ifaces`, and applies `config`.
    pub fn new(
        dp: Dataplane,
        config: Config,
        config_path: PathBuf,
        ifaces: Vec<String>,
    ) -> Result<Self> {
        let runtime = Runtime::from_config(&config, Health::Up).map_err(anyhow::Error::msg)?;
        let mut c = Controller {
            dp,
            runtime: Runtime::new(config.conntrack.clone()),
            applied: Image::default(),
            neighbours: BTreeMap::new(),
            health: BTreeMap::new(),
            config_path,
            ifaces,
            conns: BTreeMap::new(),
            conntrack_len: 0,
            samples: Default::default(),
        };
        c.resolve_neighbours(&runtime, true)?;
        c.commit(runtime).map_err(anyhow::Error::msg)?;
        c.check_forwarding();
        c.sample()?;
        Ok(c)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    /// DSR backend addresses of a runtime.
    fn dsr_addresses(runtime: &Runtime) -> Vec<Ipv4Addr> {
        let set: BTreeSet<Ipv4Addr> = runtime
            .services()
            .filter(|s| s.config.forwarding == Forwarding::Dsr)
            .flat_map(|s| s.backends.values().map(|b| b.config.address))
            .collect();
        set.into_iter().collect()
    }

    /// Looks up the neighbours of every DSR backend; when `wait`, gives unresolved ones
    /// up to a second to answer the solicitation. Returns whether anything changed.
    fn resolve_neighbours(&mut self, runtime: &Runtime, wait: bool) -> Result<bool> {
        let addrs = Self::dsr_addresses(runtime);
        let mut found = neigh::resolve(&addrs, true)?;
        for _ in 0..if wait { 20 } else { 0 } {
            if !found
                .values()
                .any(|r| matches!(r, Err(Unreachable::Unresolved { .. })))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            found = neigh::resolve(&addrs, false)?;
        }
        for (a, r) in &found {
            if self.neighbours.get(a) != Some(r)
                && let Err(why) = r
            {
                log::warn!("DSR backend {a} gets no traffic: {why}");
            }
        }
        let changed = found != self.neighbours;
        self.neighbours = found;
        Ok(changed)
    }

    /// Re-reads the neighbours of DSR backends and applies any change.
    pub fn refresh_neighbours(&mut self) -> Result<()> {
        let runtime = self.next_runtime();
        if self.resolve_neighbours(&runtime, false)? {
            self.commit(runtime).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// The health records `next` needs, and `next`'s Up/Down made to agree with them: a
    /// backend keeps its record while it is the same incarnation (index and epoch); a new
    /// one starts with the runtime's initial health; services without checks are up.
    fn sync_health(
        &self,
        next: &mut Runtime,
    ) -> BTreeMap<(ServiceKey, SocketAddrV4), (u32, u32, BackendHealth)> {
        let now = SystemTime::now();
        let mut records = BTreeMap::new();
        let mut updates = Vec::new();
        for s in next.services() {
            let unchecked = s.config.effective_health_check().kind == CheckKind::None;
            for (addr, b) in &s.backends {
                let k = (s.config.key(), *addr);
                let record = match self.health.get(&k) {
                    Some((i, e, h))
                        if *i == b.index
                            && *e == b.epoch
                            && !(unchecked && h.state() == Health::Down) =>
                    {
                        h.clone()
                    }
                    // The same backend, down, and its service no longer checks.
                    Some((i, e, _)) if *i == b.index && *e == b.epoch => {
                        log::info!("backend {addr} of {} is UP (health check set to none)", k.0);
                        BackendHealth::new(Health::Up, now)
                    }
                    _ => BackendHealth::new(if unchecked { Health::Up } else { b.health }, now),
                };
                if record.state() != b.health {
                    updates.push((k, record.state()));
                }
                records.insert(k, (b.index, b.epoch, record));
            }
        }
        for ((service, addr), health) in updates {
            next.set_health(&service, addr, health);
        }
        records
    }

    /// Makes `next` the running state: image, ordered writes, rollback on failure.
    fn commit(&mut self, mut next: Runtime) -> Result<(), String> {
        let health = self.sync_health(&mut next);
        let neighbours = self.neighbours.clone();
        let lookup = move |a: Ipv4Addr| neighbours.get(&a).and_then(|r| r.as_ref().ok()).copied();
        let image = next.image(&lookup);
        if let Err(e) = apply(&mut self.dp, &self.applied, &image) {
            log::error!("writing the datapath failed ({e:#}); restoring the previous state");
            if let Err(e2) = apply(&mut self.dp, &image, &self.applied) {
                log::error!("restoring the previous datapath state failed too: {e2:#}");
            }
            return Err(format!("writing the datapath maps failed: {e:#}"));
        }
        self.health = health;
        self.runtime = next;
        // Ids this change freed may still be named by a packet in flight: reusable
        // after a grace period.
        if self.runtime.has_released() {
            self.runtime.cool(self.dp.grace_request());
        }
        self.applied = image;
        Ok(())
    }

    /// A copy of the running state to build the next one from, with the ids whose
    /// grace period has passed made reusable first.
    fn next_runtime(&mut self) -> Runtime {
        let dp = &self.dp;
        self.runtime.thaw(|ticket| dp.grace_passed(ticket));
        self.runtime.clone()
    }

    /// Runs one operation on a copy of the runtime and commits it.
    fn change(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Runtime) -> Result<(), crate::model::runtime::OpError>,
    ) -> Response {
        let mut next = self.next_runtime();
        if let Err(e) = f(&mut next) {
            return Response::error(e.0);
        }
        let new_dsr = Self::dsr_addresses(&next)
            .into_iter()
            .any(|a| !self.neighbours.contains_key(&a));
        if new_dsr && let Err(e) = self.resolve_neighbours(&next, true) {
            return Response::error(format!("{e:#}"));
        }
        match self.commit(next) {
            Ok(()) => {
                log::info!("{what}");
                self.check_forwarding();
                Response::ok(json!({}))
            }
            Err(e) => Response::error(e),
        }
    }

    /// Answers one control request.
    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::List => Response::ok(self.list()),
            Request::ServiceAdd { service } => {
                let key = service.key();
                self.change(&format!("added service {key}"), |r| {
                    r.add_service(service, Health::Up)
                })
            }
            Request::ServiceDel { service } => {
                let r = self.change(&format!("removed service {service}"), |r| {
                    r.remove_service(&service)
                });
                if r.ok {
                    self.forget_flows(|s, _| s == service);
                }
                r
            }
            Request::BackendAdd { service, backend } => {
                let addr = backend.socket_addr(service.port);
                self.change(&format!("added backend {addr} to {service}"), |r| {
                    r.add_backend(&service, backend, Health::Up)
                })
            }
            Request::BackendDel { service, backend } => {
                let addr = backend.resolve(&service);
                self.change(&format!("removed backend {addr} from {service}"), |r| {
                    r.remove_backend(&service, addr)
                })
            }
            Request::BackendSet {
                service,
                backend,
                weight,
                state,
            } => {
                let addr = backend.resolve(&service);
                let mut what = format!("backend {addr} of {service}:");
                if let Some(w) = weight {
                    what += &format!(" weight {w}");
                }
                if let Some(s) = state {
                    what += &format!(" state {}", s.as_str());
                }
                self.change(&what, |r| r.set_backend(&service, addr, weight, state))
            }
            Request::Stats { rate } => match self.stats(rate) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::error(format!("{e:#}")),
            },
            Request::Conns {
                service,
                backend,
                limit,
            } => match self.conns(service, backend, limit) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::error(format!("{e:#}")),
            },
            Request::Reload => self.reload(),
        }
    }

    /// Re-reads the configuration file; an invalid file changes nothing.
    pub fn reload(&mut self) -> Response {
        let config = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                return Response::error(format!(
                    "reload rejected, the running configuration stays: {e}"
                ));
            }
        };
        let before: BTreeSet<ServiceKey> =
            self.runtime.services().map(|s| s.config.key()).collect();
        let r = self.change(&format!("reloaded {}", self.config_path.display()), |r| {
            r.reload(&config, Health::Up)
        });
        if r.ok {
            let after: BTreeSet<ServiceKey> =
                self.runtime.services().map(|s| s.config.key()).collect();
            let gone: BTreeSet<ServiceKey> = before.difference(&after).copied().collect();
            if !gone.is_empty() {
                self.forget_flows(|s, _| gone.contains(&s));
            }
        } else if let Some(e) = &r.error {
            return Response::error(format!(
                "reload rejected, the running configuration stays: {e}"
            ));
        }
        r
    }

    /// The health checks the running state asks for (none for `none`, none for
    /// backends in maintenance).
    pub fn checks(&self) -> BTreeSet<Check> {
        let mut out = BTreeSet::new();
        for s in self.runtime.services() {
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
                if b.config.state == crate::config::AdminState::Maint {
                    continue;
                }
                let target = SocketAddrV4::new(
                    hc.probe_address.unwrap_or(*addr.ip()),
                    hc.probe_port.unwrap_or(addr.port()),
                );
                out.insert(Check {
                    service: s.config.key(),
                    backend: *addr,
                    target,
                    kind: kind.clone(),
                    interval: Duration::from_millis(hc.interval_ms.into()),
                    timeout: Duration::from_millis(hc.timeout_ms.into()),
                });
            }
        }
        out
    }

    /// Records a probe result; a rise/fall transition changes the datapath.
    pub fn probe_result(
        &mut self,
        service: ServiceKey,
        backend: SocketAddrV4,
        result: ProbeResult,
    ) {
        let Some(svc) = self.runtime.service(&service) else {
            return; // removed meanwhile
        };
        let hc = svc.config.effective_health_check();
        let thresholds = Thresholds {
            rise: hc.rise,
            fall: hc.fall,
        };
        let Some((_, _, h)) = self.health.get_mut(&(service, backend)) else {
            return;
        };
        let Some(t) = h.record(&result, &thresholds, SystemTime::now()) else {
            return;
        };
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
    }

    /// Deletes the connection-table entries whose service matches `doomed`.
    fn forget_flows(&mut self, doomed: impl Fn(ServiceKey, &FlowKey) -> bool) {
        let Ok(flows) = self.dp.flows() else { return };
        let keys: Vec<FlowKey> = flows
            .iter()
            .filter(|(k, _)| doomed(flow_service(k), k))
            .map(|(k, _)| *k)
            .collect();
        if let Err(e) = self.dp.remove_flows(&keys) {
            log::warn!("removing connection-table entries: {e:#}");
        }
    }

    /// One sweep of the connection tables: removes idle entries (and entries of services
    /// that are gone), NAT reverse entries whose flow is gone, and counts connections per
    /// backend. Returns (entries kept, entries removed).
    pub fn sweep(&mut self) -> Result<(usize, usize)> {
        let now = monotonic_coarse_ns();
        let c = &self.runtime.conntrack;
        let (tcp, fin, udp) = (
            u64::from(c.tcp_timeout_s),
            u64::from(c.tcp_fin_timeout_s),
            u64::from(c.udp_timeout_s),
        );
        let live: BTreeSet<u32> = self.runtime.services().map(|s| s.id).collect();
        let epochs = self.epochs();
        let flows = self.dp.flows()?;
        let mut doomed = Vec::new();
        let mut kept = BTreeSet::new();
        let mut conns: BTreeMap<u32, ConnCount> = BTreeMap::new();
        for (k, f) in &flows {
            let timeout = if k.proto == Protocol::Tcp.number() {
                if f.state & FLOW_ESTABLISHED != 0 && f.state & (FLOW_FIN | FLOW_RST) == 0 {
                    tcp
                } else {
                    fin
                }
            } else {
                udp
            };
            let idle_s = now.saturating_sub(f.last_seen) / 1_000_000_000;
            if idle_s >= timeout || !live.contains(&f.service) {
                doomed.push(*k);
                continue;
            }
            kept.insert(*k);
            if epochs.get(&f.backend) != Some(&f.epoch) {
                continue; // pinned to a removed backend: it re-picks at its next packet
            }
            let n = conns.entry(f.backend).or_default();
            if k.proto == Protocol::Tcp.number()
                && f.state & FLOW_ESTABLISHED != 0
                && f.state & (FLOW_FIN | FLOW_RST) == 0
            {
                n.active += 1;
            } else {
                n.inactive += 1;
            }
        }
        self.dp.remove_flows(&doomed)?;
        let orphans: Vec<FlowKey> = self
            .dp
            .nat_reverse_entries()?
            .into_iter()
            .filter(|(k, v)| !kept.contains(&FlowKey::new(k.dst, v.vip, k.dport, v.vport, k.proto)))
            .map(|(k, _)| k)
            .collect();
        self.dp.remove_nat_reverses(&orphans)?;
        self.conns = conns;
        self.conntrack_len = kept.len();
        Ok((kept.len(), doomed.len() + orphans.len()))
    }

    /// Prints what the datapath logged (rare events) since the last call.
    pub fn drain_datapath_logs(&mut self) {
        self.dp.drain_logs();
    }

    /// Takes a statistics sample (for rates); called every couple of seconds.
    pub fn sample(&mut self) -> Result<()> {
        let mut s = Sample {
            at: Some(Instant::now()),
            counters: self.dp.counters()?,
            ..Default::default()
        };
        for svc in self.runtime.services() {
            s.services.insert(svc.id, self.dp.service_stats(svc.id)?);
            for b in svc.backends.values() {
                s.backends.insert(b.index, self.dp.backend_stats(b.index)?);
            }
        }
        self.samples = (std::mem::take(&mut self.samples.1), s);
        Ok(())
    }

    /// Backend index -> epoch of the backends running now.
    fn epochs(&self) -> BTreeMap<u32, u32> {
        self.runtime
            .services()
            .flat_map(|s| s.backends.values().map(|b| (b.index, b.epoch)))
            .collect()
    }

    /// Warns when NAT services cannot forward because IP forwarding is off on an
    /// interface lb is attached to.
    pub fn check_forwarding(&self) {
        if !self
            .runtime
            .services()
            .any(|s| s.config.forwarding == Forwarding::Nat)
        {
            return;
        }
        for iface in &self.ifaces {
            let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
            if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
                log::warn!(
                    "NAT services need IP forwarding on {iface}, which is off: NAT packets are dropped (drop_no_route) until `sysctl -w net.ipv4.conf.{iface}.forwarding=1` (or net.ipv4.ip_forward=1)"
                );
            }
        }
    }

    /// Entries in the connection table at the last sweep.
    pub fn conntrack_len(&self) -> usize {
        self.conntrack_len
    }

    /// Connection counts per backend index, from the last sweep.
    pub fn conn_counts(&self) -> &BTreeMap<u32, ConnCount> {
        &self.conns
    }

    /// Per-service and per-backend samples for the metrics endpoint.
    pub fn service_samples(&self) -> Result<Vec<crate::daemon::metrics::ServiceSample>> {
        let lookup = |a: Ipv4Addr| {
            self.neighbours
                .get(&a)
                .and_then(|r| r.as_ref().ok())
                .copied()
        };
        let mut out = Vec::new();
        for s in self.runtime.services() {
            let key = s.config.key();
            let rotation: BTreeSet<u32> = s.in_rotation(&lookup).iter().map(|b| b.index).collect();
            let mut backends = Vec::new();
            for (addr, b) in &s.backends {
                let n = self.conns.get(&b.index).copied().unwrap_or_default();
                backends.push(crate::daemon::metrics::BackendSample {
                    backend: addr.to_string(),
                    traffic: self.dp.backend_stats(b.index)?,
                    up: b.health == Health::Up,
                    weight: b.config.weight,
                    admin_state: match b.config.state {
                        crate::config::AdminState::Ready => 0,
                        crate::config::AdminState::Drain => 1,
                        crate::config::AdminState::Maint => 2,
                    },
                    in_rotation: rotation.contains(&b.index),
                    active: n.active,
                    inactive: n.inactive,
                });
            }
            out.push(crate::daemon::metrics::ServiceSample {
                vip: key.vip.to_string(),
                port: key.port,
                proto: key.protocol.as_str(),
                traffic: self.dp.service_stats(s.id)?,
                backends,
            });
        }
        Ok(out)
    }

    fn list(&self) -> Value {
        let services: Vec<Value> = self
            .runtime
            .services()
            .map(|s| {
                let key = s.config.key();
                let lookup = |a: Ipv4Addr| self.neighbours.get(&a).and_then(|r| r.as_ref().ok()).copied();
                let rotation: BTreeSet<u32> = s.in_rotation(&lookup).iter().map(|b| b.index).collect();
                let backends: Vec<Value> = s
                    .backends
                    .iter()
                    .map(|(addr, b)| {
                        let n = self.conns.get(&b.index).copied().unwrap_or_default();
                        let mut v = json!({
                            "backend": addr.to_string(),
                            "weight": b.config.weight,
                            "backup": b.config.backup,
                            "state": b.config.state.as_str(),
                            "health": self.health.get(&(key, *addr)).map(|(_, _, h)| serde_json::to_value(h.snapshot()).unwrap_or(Value::Null)),
                            "in_rotation": rotation.contains(&b.index),
                            "active_conns": n.active,
                            "inactive_conns": n.inactive,
                        });
                        if s.config.forwarding == Forwarding::Dsr {
                            v["neighbour"] = match self.neighbours.get(&b.config.address) {
                                Some(Ok(nb)) => json!({"mac": neigh::format_mac(&nb.mac)}),
                                Some(Err(why)) => json!({"problem": why.to_string()}),
                                None => json!({"problem": "not looked up yet"}),
                            };
                        }
                        v
                    })
                    .collect();
                let mut cfg = serde_json::to_value(s.to_config()).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut cfg {
                    m.remove("backends");
                    m.insert("health_check".into(), serde_json::to_value(s.config.effective_health_check()).unwrap_or(Value::Null));
                }
                json!({"service": key.to_string(), "config": cfg, "backends": backends})
            })
            .collect();
        json!({ "services": services })
    }

    fn stats(&mut self, rate: bool) -> Result<Value> {
        let counters = self.dp.counters()?;
        let mut global = serde_json::Map::new();
        for (c, v) in Counter::ALL.iter().zip(&counters) {
            global.insert(c.name().into(), (*v).into());
        }
        let (old, new) = &self.samples;
        let dt = match (old.at, new.at) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let per_s = |o: Option<&TrafficStats>, n: Option<&TrafficStats>| -> Value {
            match (o, n) {
                (Some(o), Some(n)) if dt > 0.0 => json!({
                    "conns_per_s": n.new_flows.saturating_sub(o.new_flows) as f64 / dt,
                    "packets_per_s": n.packets.saturating_sub(o.packets) as f64 / dt,
                    "packets_out_per_s": n.packets_out.saturating_sub(o.packets_out) as f64 / dt,
                    "bytes_per_s": n.bytes.saturating_sub(o.bytes) as f64 / dt,
                    "bytes_out_per_s": n.bytes_out.saturating_sub(o.bytes_out) as f64 / dt,
                }),
                _ => {
                    json!({"conns_per_s": 0.0, "packets_per_s": 0.0, "packets_out_per_s": 0.0, "bytes_per_s": 0.0, "bytes_out_per_s": 0.0})
                }
            }
        };
        let traffic = |t: &TrafficStats| json!({"conns": t.new_flows, "packets": t.packets, "bytes": t.bytes, "packets_out": t.packets_out, "bytes_out": t.bytes_out});
        let mut services = Vec::new();
        for s in self.runtime.services() {
            let t = self.dp.service_stats(s.id)?;
            let mut backends = Vec::new();
            for (addr, b) in &s.backends {
                let bt = self.dp.backend_stats(b.index)?;
                let n = self.conns.get(&b.index).copied().unwrap_or_default();
                let mut v = json!({"backend": addr.to_string(), "weight": b.config.weight, "state": b.config.state.as_str(),
                    "health": self.health.get(&(s.config.key(), *addr)).map(|(_, _, h)| serde_json::to_value(h.snapshot()).unwrap_or(Value::Null)), "active_conns": n.active, "inactive_conns": n.inactive, "traffic": traffic(&bt)});
                if rate {
                    v["rate"] = per_s(old.backends.get(&b.index), new.backends.get(&b.index));
                }
                backends.push(v);
            }
            let mut v = json!({"service": s.config.key().to_string(), "traffic": traffic(&t), "backends": backends});
            if rate {
                v["rate"] = per_s(old.services.get(&s.id), new.services.get(&s.id));
            }
            services.push(v);
        }
        let mut out = json!({"counters": global, "services": services});
        if rate {
            out["rate_window_s"] = dt.into();
            let mut per_s = serde_json::Map::new();
            for (i, c) in Counter::ALL.iter().enumerate() {
                let (o, n) = (
                    old.counters.get(i).copied().unwrap_or(0),
                    new.counters.get(i).copied().unwrap_or(0),
                );
                per_s.insert(
                    c.name().into(),
                    if dt > 0.0 {
                        (n.saturating_sub(o) as f64 / dt).into()
                    } else {
                        0.0.into()
                    },
                );
            }
            out["counters_per_s"] = per_s.into();
        }
        Ok(out)
    }

    fn conns(
        &self,
        service: Option<ServiceKey>,
        backend: Option<crate::config::BackendRef>,
        limit: usize,
    ) -> Result<Value> {
        let now = monotonic_coarse_ns();
        // index -> (epoch, service, backend); a flow whose epoch differs belongs to a
        // backend that was removed (the index may already serve another one).
        let by_index: BTreeMap<u32, (u32, ServiceKey, SocketAddrV4)> = self
            .runtime
            .services()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |(a, b)| (b.index, (b.epoch, s.config.key(), *a)))
            })
            .collect();
        let by_id: BTreeMap<u32, ServiceKey> = self
            .runtime
            .services()
            .map(|s| (s.id, s.config.key()))
            .collect();
        let mut rows = Vec::new();
        let mut total = 0usize;
        for (k, f) in self.dp.flows()? {
            let Some(svc) = by_id.get(&f.service) else {
                continue;
            };
            let be = match by_index.get(&f.backend) {
                Some((epoch, _, be)) if *epoch == f.epoch => Some(*be),
                _ => None,
            };
            if service.is_some_and(|s| s != *svc) {
                continue;
            }
            if let Some(b) = backend
                && !be.is_some_and(|be| {
                    b.address == *be.ip() && b.port.is_none_or(|p| p == be.port())
                })
            {
                continue;
            }
            total += 1;
            if rows.len() >= limit {
                continue;
            }
            let state = if k.proto == Protocol::Udp.number() {
                "udp"
            } else if f.state & FLOW_RST != 0 {
                "closed"
            } else if f.state & FLOW_FIN != 0 {
                "fin_wait"
            } else if f.state & FLOW_ESTABLISHED != 0 {
                "established"
            } else {
                "syn"
            };
            rows.push(json!({
                "protocol": if k.proto == 6 { "tcp" } else { "udp" },
                "client": SocketAddrV4::new(Ipv4Addr::from(k.src.to_ne_bytes()), u16::from_be(k.sport)).to_string(),
                "service": svc.to_string(),
                "backend": be.map_or_else(|| "(removed)".to_string(), |b| b.to_string()),
                "state": state,
                "idle_s": now.saturating_sub(f.last_seen) / 1_000_000_000,
            }));
        }
        Ok(json!({"conns": rows, "total": total, "truncated": total > rows.len()}))
    }
}

/// The service a connection-table key belongs to (from its destination).
fn flow_service(k: &FlowKey) -> ServiceKey {
    ServiceKey {
        vip: Ipv4Addr::from(k.dst.to_ne_bytes()),
        port: u16::from_be(k.dport),
        protocol: if k.proto == 17 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
    }
}

/// Loads and validates a config file, for `lb run`: refuses to start on an invalid one.
pub fn load_config(path: &std::path::Path) -> Result<Config> {
    Config::load(path)
        .with_context(|| "refusing to start: the configuration is invalid".to_string())
}
