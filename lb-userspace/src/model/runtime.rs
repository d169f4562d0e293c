//! The running state of the balancer, as the control plane sees it (pure: no aya).
//!
//! [`Runtime`] holds the services and backends with everything the datapath needs to know
//! about them (service ids, backend indexes and epochs, admin state, health). Every change
//! (from the configuration, the control socket or a health check) is validated in full
//! before anything is modified: an operation either applies whole or returns an error and
//! leaves the runtime as it was. [`Runtime::image`] derives what the datapath's maps should
//! hold; `apply.rs` writes the difference between two images in a safe order.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::Arc,
};

use lb_common::{
    Addr6, BACKEND_F_IPV6, BACKEND_F_LIVE, BACKEND_F_REPICK, MAX_BACKENDS, MAX_SERVICES,
    NO_BACKEND, SERVICE_F_HASH_SRC, SERVICE_F_NAT,
};

use crate::{
    config::{
        AdminState, BackendConfig, Config, ConfigError, ConntrackConfig, Forwarding, Protocol,
        ServiceConfig, ServiceKey,
    },
    health::Health,
};

use super::maglev;

/// An operation that cannot be done, and why. The messages are what the operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("no service {0}; `lb service list` shows the services")]
    NoService(ServiceKey),
    #[error("service {0} exists already; `lb service del {0}` first to replace it")]
    ServiceExists(ServiceKey),
    #[error("no backend {backend} in service {service}")]
    NoBackend {
        service: ServiceKey,
        backend: SocketAddr,
    },
    #[error("backend {backend} is already in service {service}; use `lb backend set` to change it")]
    BackendExists {
        service: ServiceKey,
        backend: SocketAddr,
    },
    #[error("nothing to change: give a weight and/or a state")]
    NothingToChange,
    /// The service or backend given is not valid (the field and the reason).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("no free service id: lb runs at most {MAX_SERVICES} services{}", cooling_hint(*.waiting))]
    NoServiceId { waiting: usize },
    #[error("not enough free backend slots for {wanted} more backends (limit {MAX_BACKENDS}){}", cooling_hint(*.waiting))]
    NoBackendSlots { wanted: usize, waiting: usize },
    #[error("no free backend slot: lb runs at most {MAX_BACKENDS} backends in all{}", cooling_hint(*.waiting))]
    NoBackendSlot { waiting: usize },
    #[error(
        "conntrack.{setting} cannot change while running ({from} -> {to}): restart lb to resize the connection table"
    )]
    MaxEntriesChanged {
        setting: &'static str,
        from: u32,
        to: u32,
    },
    #[error(
        "backend {backend}/{} already serves NAT service {owner}: a NAT backend's address:port can serve one NAT service only (its replies are translated back to that service's VIP:port); give it another port",
        .protocol.as_str()
    )]
    NatBackendShared {
        backend: SocketAddr,
        protocol: Protocol,
        owner: ServiceKey,
    },
}

/// Where a DSR backend is reached: egress interface and the MACs to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// One backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub config: BackendConfig,
    /// Index in the datapath's `BACKENDS` array.
    pub index: u32,
    /// Epoch the index was given to this backend under.
    pub epoch: u32,
    pub health: Health,
}

/// One service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceState {
    /// The service's configuration; its `backends` list is kept empty (see `backends`).
    pub config: ServiceConfig,
    /// Index in the datapath's `TABLES` and `SERVICE_STATS`.
    pub id: u32,
    pub backends: BTreeMap<SocketAddr, BackendState>,
    /// The last table built, and what it was built from.
    table: Option<(Vec<maglev::Candidate>, u32, Arc<Vec<u32>>)>,
}

impl ServiceState {
    /// A service taken over from a pinned datapath, with the id and backends it has there.
    pub(super) fn adopted(
        config: ServiceConfig,
        id: u32,
        backends: BTreeMap<SocketAddr, BackendState>,
    ) -> Self {
        ServiceState {
            config,
            id,
            backends,
            table: None,
        }
    }

    /// The service as configuration again (backends in address order).
    pub fn to_config(&self) -> ServiceConfig {
        ServiceConfig {
            backends: self.backends.values().map(|b| b.config.clone()).collect(),
            ..self.config.clone()
        }
    }

    /// Whether a backend may get table slots (before the primary/backup choice).
    fn usable(&self, b: &BackendState, neighbours: &dyn Fn(IpAddr) -> Option<Neighbour>) -> bool {
        b.config.state == AdminState::Ready
            && b.health == Health::Up
            && b.config.weight > 0
            && (self.config.forwarding == Forwarding::Nat || neighbours(b.config.address).is_some())
    }

    /// The backends that get slots: usable primaries, or, when there is none, usable
    /// backups; empty when nothing is usable (the service then drops new flows).
    pub fn in_rotation(
        &self,
        neighbours: &dyn Fn(IpAddr) -> Option<Neighbour>,
    ) -> Vec<&BackendState> {
        let usable: Vec<&BackendState> = self
            .backends
            .values()
            .filter(|b| self.usable(b, neighbours))
            .collect();
        let primaries: Vec<&BackendState> = usable
            .iter()
            .copied()
            .filter(|b| !b.config.backup)
            .collect();
        if primaries.is_empty() {
            usable
        } else {
            primaries
        }
    }

    fn table(&mut self, neighbours: &dyn Fn(IpAddr) -> Option<Neighbour>) -> Arc<Vec<u32>> {
        let members = self.in_rotation(neighbours);
        let candidates: Vec<maglev::Candidate> = members
            .iter()
            .map(|b| maglev::Candidate {
                addr: b.config.socket_addr(self.config.port),
                weight: u32::from(b.config.weight),
            })
            .collect();
        let indexes: Vec<u32> = members.iter().map(|b| b.index).collect();
        let size = self.config.table_size;
        if let Some((c, s, t)) = &self.table
            && *c == candidates
            && *s == size
        {
            return t.clone();
        }
        let slots: Vec<u32> = maglev::build(&candidates, size)
            .into_iter()
            .map(|pos| pos.map_or(NO_BACKEND, |p| indexes[p as usize]))
            .collect();
        let table = Arc::new(slots);
        self.table = Some((candidates, size, table.clone()));
        table
    }
}

/// Hands out ids `0..limit`, lowest free first, remembering how often each was given out
/// (its epoch). An id given back is not reused at once: it stays `released` until the
/// change that freed it is in the datapath ([`IdPool::cool`], with a mark the caller
/// chooses, e.g. a grace-period ticket), then `cooling` until the caller says that mark
/// has passed ([`IdPool::thaw`]): until then a packet may still hold a record or a table
/// slot that names it, which must not start naming another service or backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IdPool {
    free: BTreeSet<u32>,
    /// Given back by the change being built.
    released: BTreeSet<u32>,
    /// Given back by applied changes, with their marks.
    cooling: Vec<(u64, Vec<u32>)>,
    next: u32,
    limit: u32,
    epochs: BTreeMap<u32, u32>,
}

impl IdPool {
    fn new(limit: u32) -> Self {
        IdPool {
            limit,
            ..Default::default()
        }
    }

    /// A pool over ids a datapath already uses: `kept` stay taken, `released` are given
    /// back by the change being built, every other id below the highest one seen is free;
    /// `epochs` continue where the datapath's records left them.
    fn adopted(
        limit: u32,
        seen: impl IntoIterator<Item = u32>,
        kept: &BTreeSet<u32>,
        released: BTreeSet<u32>,
        epochs: BTreeMap<u32, u32>,
    ) -> Self {
        let next = seen
            .into_iter()
            .chain(kept.iter().copied())
            .chain(released.iter().copied())
            .chain(epochs.keys().copied())
            .map(|id| id + 1)
            .max()
            .unwrap_or(0)
            .min(limit);
        IdPool {
            free: (0..next)
                .filter(|id| !kept.contains(id) && !released.contains(id))
                .collect(),
            released,
            cooling: Vec::new(),
            next,
            limit,
            epochs,
        }
    }

    fn available(&self) -> u32 {
        self.limit - self.next + self.free.len() as u32
    }

    /// Ids given back but not reusable yet.
    fn unavailable(&self) -> usize {
        self.released.len() + self.cooling.iter().map(|(_, ids)| ids.len()).sum::<usize>()
    }

    /// Takes an id; returns (id, epoch).
    fn take(&mut self) -> Option<(u32, u32)> {
        let id = match self.free.pop_first() {
            Some(id) => id,
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        let epoch = self.epochs.entry(id).or_insert(0);
        *epoch += 1;
        Some((id, *epoch))
    }

    fn give_back(&mut self, id: u32) {
        self.released.insert(id);
    }

    fn cool(&mut self, mark: u64) {
        if !self.released.is_empty() {
            let ids = std::mem::take(&mut self.released).into_iter().collect();
            self.cooling.push((mark, ids));
        }
    }

    fn thaw(&mut self, passed: &impl Fn(u64) -> bool) {
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.cooling)
            .into_iter()
            .partition(|(m, _)| passed(*m));
        self.cooling = wait;
        self.free.extend(done.into_iter().flat_map(|(_, ids)| ids));
    }
}

/// What to add to a "no free id" error when some ids are only waiting to be reused.
fn cooling_hint(waiting: usize) -> String {
    if waiting == 0 {
        String::new()
    } else {
        format!(
            " ({waiting} freed just now become reusable once the datapath is done with them, \
             within a few ms: apply the removal first, then retry)"
        )
    }
}

/// The running services and backends.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub conntrack: ConntrackConfig,
    services: BTreeMap<ServiceKey, ServiceState>,
    service_ids: IdPool,
    backend_indexes: IdPool,
    /// The NAT service each NAT backend address:port (per protocol) serves: one at most,
    /// since its replies are translated back by it.
    nat_owners: BTreeMap<(SocketAddr, Protocol), ServiceKey>,
    /// NAT backends taken out of their service, whose replies are still translated (see
    /// [`Retired`]).
    retired_nat: BTreeMap<(SocketAddr, Protocol), Retired>,
}

/// A NAT backend taken out of its service (removed, or its service removed or switched
/// to DSR). Its connections may still be open on its side: its retransmissions, FINs and
/// keepalives are replies that must not leave with its address. So its translation back
/// to VIP:port stays for the longest connection-table timeout, unless another NAT
/// service takes the address:port first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired {
    pub vip: IpAddr,
    pub vport: u16,
    /// When it was retired ([`Runtime::set_clock`] stamps it); `None` until then.
    pub since_s: Option<u64>,
}

/// What the datapath's maps should hold (see `apply.rs`). IPv6 services have maps of
/// their own (the `*6` fields); service ids, backend indexes, tables and backend records
/// are shared by both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// IPv4 service records; their `key` and `table_gen` are the writer's.
    pub services: BTreeMap<lb_common::ServiceKey, lb_common::Service>,
    pub tables: BTreeMap<u32, Arc<Vec<u32>>>,
    pub backends: BTreeMap<u32, lb_common::Backend>,
    /// VIP address (network order) -> number of services on it.
    pub vips: BTreeMap<u32, u32>,
    /// NAT backends and how their replies are translated back.
    pub nat_backends: BTreeMap<lb_common::NatBackendKey, lb_common::NatBackend>,
    /// The connection table's timeouts.
    pub timeouts: lb_common::Timeouts,
    /// IPv6 service records (the family-independent part, as for IPv4).
    pub services6: BTreeMap<lb_common::ServiceKey6, lb_common::Service>,
    /// IPv6 VIP -> number of services on it.
    pub vips6: BTreeMap<Addr6, u32>,
    /// IPv6 NAT backends and how their replies are translated back.
    pub nat_backends6: BTreeMap<lb_common::NatBackendKey6, lb_common::NatBackend6>,
    /// The address of each IPv6 backend, by backend index.
    pub backend_addrs6: BTreeMap<u32, Addr6>,
}

impl Image {
    /// Records how replies from NAT backend `addr`/`protocol` are translated back to
    /// `vip`:`vport` (host order), in its family's map.
    fn set_nat_translation(
        &mut self,
        (addr, protocol): (SocketAddr, Protocol),
        (vip, vport): (IpAddr, u16),
        backend: u32,
        service: u32,
    ) {
        let vport = vport.to_be();
        match (addr, vip) {
            (SocketAddr::V4(a), IpAddr::V4(vip)) => {
                let value = lb_common::NatBackend {
                    vip: v4_word(vip),
                    vport,
                    _pad: 0,
                    backend,
                    service,
                };
                let key = nat_backend_key(a, protocol);
                self.nat_backends.insert(key, value);
            }
            (SocketAddr::V6(a), IpAddr::V6(vip)) => {
                let value = lb_common::NatBackend6 {
                    vip: v6_words(vip),
                    vport,
                    _pad: 0,
                    backend,
                    service,
                };
                let key = nat_backend_key6(a, protocol);
                self.nat_backends6.insert(key, value);
            }
            _ => unreachable!("a NAT backend is of its VIP's family"),
        }
    }

    /// The ids of every service record, of both families (one id space).
    pub fn service_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.services
            .values()
            .chain(self.services6.values())
            .map(|s| s.id)
    }
}

/// The datapath form of an IPv4 address (network order in a native integer).
pub fn v4_word(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// The datapath form of an IPv6 address.
pub fn v6_words(a: Ipv6Addr) -> Addr6 {
    lb_common::ipv6_words(a.octets())
}

/// The address a datapath IPv4 word holds.
pub fn from_v4_word(w: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes()))
}

/// The address a datapath IPv6 address holds.
pub fn from_v6_words(w: Addr6) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(lb_common::ipv6_octets(w)))
}

/// The `NAT_BACKENDS` key of an IPv4 NAT backend.
pub fn nat_backend_key(addr: SocketAddrV4, protocol: Protocol) -> lb_common::NatBackendKey {
    lb_common::NatBackendKey {
        addr: v4_word(*addr.ip()),
        port: addr.port().to_be(),
        proto: protocol.number(),
        _pad: 0,
    }
}

/// The `NAT_BACKENDS6` key of an IPv6 NAT backend.
pub fn nat_backend_key6(addr: SocketAddrV6, protocol: Protocol) -> lb_common::NatBackendKey6 {
    lb_common::NatBackendKey6 {
        addr: v6_words(*addr.ip()),
        port: addr.port().to_be(),
        proto: protocol.number(),
        _pad: 0,
    }
}

/// The datapath key of a service, in its family's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatapathKey {
    /// A key of `SERVICES`.
    V4(lb_common::ServiceKey),
    /// A key of `SERVICES6`.
    V6(lb_common::ServiceKey6),
}

impl DatapathKey {
    /// The `SERVICES` key, for an IPv4 service.
    pub fn v4(self) -> Option<lb_common::ServiceKey> {
        match self {
            DatapathKey::V4(k) => Some(k),
            DatapathKey::V6(_) => None,
        }
    }
}

/// The datapath key of a service.
pub fn datapath_key(k: &ServiceKey) -> DatapathKey {
    let (port, proto) = (k.port.to_be(), k.protocol.number());
    match k.vip {
        IpAddr::V4(vip) => DatapathKey::V4(lb_common::ServiceKey {
            vip: v4_word(vip),
            port,
            proto,
            _pad: 0,
        }),
        IpAddr::V6(vip) => DatapathKey::V6(lb_common::ServiceKey6 {
            vip: v6_words(vip),
            port,
            proto,
            _pad: 0,
        }),
    }
}

impl Runtime {
    /// An empty runtime.
    pub fn new(conntrack: ConntrackConfig) -> Self {
        Runtime {
            conntrack,
            services: BTreeMap::new(),
            service_ids: IdPool::new(MAX_SERVICES),
            backend_indexes: IdPool::new(MAX_BACKENDS),
            nat_owners: BTreeMap::new(),
            retired_nat: BTreeMap::new(),
        }
    }

    /// Stamps the NAT backends retired since the last call with `now_s` (seconds of a
    /// clock the caller keeps; the controller's is wall-clock seconds).
    pub fn set_clock(&mut self, now_s: u64) {
        for r in self.retired_nat.values_mut() {
            r.since_s.get_or_insert(now_s);
        }
    }

    /// Whether a retired NAT backend's connections have all timed out by `now_s`.
    fn done_retiring(&self, r: &Retired, now_s: u64) -> bool {
        let c = &self.conntrack;
        let linger = u64::from(
            c.tcp_timeout_s
                .max(c.tcp_fin_timeout_s)
                .max(c.udp_timeout_s),
        );
        r.since_s.is_some_and(|t| now_s.saturating_sub(t) >= linger)
    }

    /// Whether [`Runtime::purge_retired`] has anything to do at `now_s`.
    pub fn retired_due(&self, now_s: u64) -> bool {
        self.retired_nat
            .values()
            .any(|r| self.done_retiring(r, now_s))
    }

    /// Forgets retired NAT backends whose connections have all timed out by `now_s`.
    pub fn purge_retired(&mut self, now_s: u64) {
        let done: Vec<_> = self
            .retired_nat
            .iter()
            .filter(|(_, r)| self.done_retiring(r, now_s))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            self.retired_nat.remove(&k);
        }
    }

    /// The NAT backends retired and still translated.
    pub fn retired_nat(&self) -> &BTreeMap<(SocketAddr, Protocol), Retired> {
        &self.retired_nat
    }

    /// Retires a NAT backend of `key` (its translation stays, see [`Retired`]).
    fn retire_nat(&mut self, key: &ServiceKey, addr: SocketAddr) {
        self.retired_nat.insert(
            (addr, key.protocol),
            Retired {
                vip: key.vip,
                vport: key.port,
                since_s: None,
            },
        );
    }

    /// A retired NAT backend found in a pinned datapath (adoption): retired again, with
    /// a new clock.
    pub(super) fn adopt_retired(
        &mut self,
        addr: SocketAddr,
        protocol: Protocol,
        vip: IpAddr,
        vport: u16,
    ) {
        if !self.nat_owners.contains_key(&(addr, protocol)) {
            self.retired_nat.insert(
                (addr, protocol),
                Retired {
                    vip,
                    vport,
                    since_s: None,
                },
            );
        }
    }

    /// A runtime holding exactly `config` (backends start `initial`).
    pub fn from_config(config: &Config, initial: Health) -> Result<Self, OpError> {
        let mut r = Runtime::new(config.conntrack.clone());
        r.reload(config, initial)?;
        Ok(r)
    }

    /// Service ids over a pinned datapath (see [`IdPool::adopted`]).
    pub(super) fn adopt_ids(
        &mut self,
        seen: impl IntoIterator<Item = u32>,
        kept: &BTreeSet<u32>,
        released: BTreeSet<u32>,
    ) {
        self.service_ids = IdPool::adopted(MAX_SERVICES, seen, kept, released, BTreeMap::new());
    }

    /// Backend indexes over a pinned datapath (see [`IdPool::adopted`]).
    pub(super) fn adopt_indexes(
        &mut self,
        kept: &BTreeSet<u32>,
        released: BTreeSet<u32>,
        epochs: BTreeMap<u32, u32>,
    ) {
        self.backend_indexes = IdPool::adopted(MAX_BACKENDS, [], kept, released, epochs);
    }

    /// Puts a service taken over from a pinned datapath (ids already taken).
    pub(super) fn insert_adopted(&mut self, svc: ServiceState) {
        let key = svc.config.key();
        if svc.config.forwarding == Forwarding::Nat {
            for addr in svc.backends.keys() {
                self.nat_owners.insert((*addr, key.protocol), key);
            }
        }
        self.services.insert(key, svc);
    }

    /// Whether the change built so far freed ids (they wait for [`Runtime::cool`]).
    pub fn has_released(&self) -> bool {
        !self.service_ids.released.is_empty() || !self.backend_indexes.released.is_empty()
    }

    /// The change built so far is in the datapath: the ids it freed wait for `mark`.
    pub fn cool(&mut self, mark: u64) {
        self.service_ids.cool(mark);
        self.backend_indexes.cool(mark);
    }

    /// Ids whose mark has `passed` become reusable.
    pub fn thaw(&mut self, passed: impl Fn(u64) -> bool) {
        self.service_ids.thaw(&passed);
        self.backend_indexes.thaw(&passed);
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceState> {
        self.services.values()
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceState> {
        self.services.get(key)
    }

    /// The whole running configuration.
    pub fn to_config(&self) -> Config {
        Config {
            conntrack: self.conntrack.clone(),
            services: self
                .services
                .values()
                .map(ServiceState::to_config)
                .collect(),
        }
    }

    fn service_mut(&mut self, key: &ServiceKey) -> Result<&mut ServiceState, OpError> {
        match self.services.get_mut(key) {
            Some(s) => Ok(s),
            None => Err(OpError::NoService(*key)),
        }
    }

    /// Replaces the running configuration with `config` (already validated as a whole).
    /// Services and backends that stay keep their ids, indexes and health; everything
    /// else is added or removed. `max_entries` cannot change while running.
    pub fn reload(&mut self, config: &Config, initial: Health) -> Result<(), OpError> {
        if config.conntrack.max_entries != self.conntrack.max_entries {
            return Err(OpError::MaxEntriesChanged {
                setting: "max_entries",
                from: self.conntrack.max_entries,
                to: config.conntrack.max_entries,
            });
        }
        if config.conntrack.ipv6_entries() != self.conntrack.ipv6_entries() {
            return Err(OpError::MaxEntriesChanged {
                setting: "max_entries_ipv6",
                from: self.conntrack.ipv6_entries(),
                to: config.conntrack.ipv6_entries(),
            });
        }
        let mut next = self.clone();
        next.conntrack = config.conntrack.clone();
        let wanted: BTreeSet<ServiceKey> = config.services.iter().map(ServiceConfig::key).collect();
        let gone: Vec<ServiceKey> = next
            .services
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for k in gone {
            next.remove_service(&k)?;
        }
        // Everything that goes, goes first, so a NAT backend may move between services
        // in one reload.
        for s in &config.services {
            let key = s.key();
            let Some(old) = next.services.get(&key) else {
                continue;
            };
            if old.config.forwarding != s.forwarding {
                // DSR <-> NAT is a different service to the datapath: start it afresh.
                next.remove_service(&key)?;
                continue;
            }
            let wanted: BTreeSet<SocketAddr> =
                s.backends.iter().map(|b| b.socket_addr(s.port)).collect();
            let gone: Vec<SocketAddr> = old
                .backends
                .keys()
                .filter(|a| !wanted.contains(a))
                .copied()
                .collect();
            for a in gone {
                next.remove_backend(&key, a)?;
            }
        }
        for s in &config.services {
            let key = s.key();
            if !next.services.contains_key(&key) {
                next.add_service(s.clone(), initial)?;
                continue;
            }
            let svc = next.service_mut(&key)?;
            svc.config = ServiceConfig {
                backends: Vec::new(),
                ..s.clone()
            };
            for b in &s.backends {
                let addr = b.socket_addr(s.port);
                match next.service_mut(&key)?.backends.get_mut(&addr) {
                    Some(existing) => existing.config = b.clone(),
                    None => next.add_backend(&key, b.clone(), initial)?,
                }
            }
        }
        *self = next;
        Ok(())
    }

    /// Adds a service (and its backends).
    pub fn add_service(&mut self, config: ServiceConfig, initial: Health) -> Result<(), OpError> {
        let key = config.key();
        config.validate("service")?;
        if self.services.contains_key(&key) {
            return Err(OpError::ServiceExists(key));
        }
        if self.service_ids.available() == 0 {
            return Err(OpError::NoServiceId {
                waiting: self.service_ids.unavailable(),
            });
        }
        if config.forwarding == Forwarding::Nat {
            for b in &config.backends {
                self.check_nat_owner(&key, b.socket_addr(key.port))?;
            }
        }
        if self.backend_indexes.available() < config.backends.len() as u32 {
            return Err(OpError::NoBackendSlots {
                wanted: config.backends.len(),
                waiting: self.backend_indexes.unavailable(),
            });
        }
        let (id, _) = self.service_ids.take().expect("checked above");
        let backends = config.backends.clone();
        let svc = ServiceState {
            config: ServiceConfig {
                backends: Vec::new(),
                ..config
            },
            id,
            backends: BTreeMap::new(),
            table: None,
        };
        self.services.insert(key, svc);
        for b in backends {
            self.add_backend(&key, b, initial)
                .expect("validated and capacity checked");
        }
        Ok(())
    }

    /// Removes a service and its backends.
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), OpError> {
        let Some(svc) = self.services.remove(key) else {
            return Err(OpError::NoService(*key));
        };
        for (addr, b) in &svc.backends {
            self.backend_indexes.give_back(b.index);
            if svc.config.forwarding == Forwarding::Nat {
                self.forget_nat_owner(key, *addr);
                self.retire_nat(key, *addr);
            }
        }
        self.service_ids.give_back(svc.id);
        Ok(())
    }

    /// Adds a backend to a service.
    pub fn add_backend(
        &mut self,
        key: &ServiceKey,
        config: BackendConfig,
        initial: Health,
    ) -> Result<(), OpError> {
        let svc = self.services.get(key).ok_or(OpError::NoService(*key))?;
        config.validate("backend", &svc.config)?;
        let addr = config.socket_addr(key.port);
        if svc.backends.contains_key(&addr) {
            return Err(OpError::BackendExists {
                service: *key,
                backend: addr,
            });
        }
        let nat = svc.config.forwarding == Forwarding::Nat;
        if nat {
            self.check_nat_owner(key, addr)?;
        }
        let Some((index, epoch)) = self.backend_indexes.take() else {
            return Err(OpError::NoBackendSlot {
                waiting: self.backend_indexes.unavailable(),
            });
        };
        let svc = self.service_mut(key)?;
        svc.backends.insert(
            addr,
            BackendState {
                config,
                index,
                epoch,
                health: initial,
            },
        );
        if nat {
            self.nat_owners.insert((addr, key.protocol), *key);
            self.retired_nat.remove(&(addr, key.protocol));
        }
        Ok(())
    }

    fn forget_nat_owner(&mut self, key: &ServiceKey, addr: SocketAddr) {
        if self.nat_owners.get(&(addr, key.protocol)) == Some(key) {
            self.nat_owners.remove(&(addr, key.protocol));
        }
    }

    /// Refuses a NAT backend address:port that another NAT service has already.
    fn check_nat_owner(&self, key: &ServiceKey, addr: SocketAddr) -> Result<(), OpError> {
        match self.nat_owners.get(&(addr, key.protocol)) {
            Some(owner) if owner != key => Err(OpError::NatBackendShared {
                backend: addr,
                protocol: key.protocol,
                owner: *owner,
            }),
            _ => Ok(()),
        }
    }

    /// Removes a backend from a service.
    pub fn remove_backend(&mut self, key: &ServiceKey, addr: SocketAddr) -> Result<(), OpError> {
        let svc = self.service_mut(key)?;
        let Some(b) = svc.backends.remove(&addr) else {
            return Err(OpError::NoBackend {
                service: *key,
                backend: addr,
            });
        };
        self.backend_indexes.give_back(b.index);
        if self.nat_owners.get(&(addr, key.protocol)) == Some(key) {
            self.forget_nat_owner(key, addr);
            self.retire_nat(key, addr);
        }
        Ok(())
    }

    /// Changes a backend's weight and/or admin state.
    pub fn set_backend(
        &mut self,
        key: &ServiceKey,
        addr: SocketAddr,
        weight: Option<u16>,
        state: Option<AdminState>,
    ) -> Result<(), OpError> {
        if weight.is_none() && state.is_none() {
            return Err(OpError::NothingToChange);
        }
        let svc = self.service_mut(key)?;
        let Some(b) = svc.backends.get_mut(&addr) else {
            return Err(OpError::NoBackend {
                service: *key,
                backend: addr,
            });
        };
        if let Some(w) = weight {
            b.config.weight = w;
        }
        if let Some(s) = state {
            b.config.state = s;
        }
        Ok(())
    }

    /// Records a backend's health; returns whether it changed.
    pub fn set_health(&mut self, key: &ServiceKey, addr: SocketAddr, health: Health) -> bool {
        match self
            .services
            .get_mut(key)
            .and_then(|s| s.backends.get_mut(&addr))
        {
            Some(b) if b.health != health => {
                b.health = health;
                true
            }
            _ => false,
        }
    }

    /// What the datapath should hold. `neighbours` gives DSR backends' next hops; a DSR
    /// backend without one gets no slot, and its flows re-pick.
    pub fn image(&mut self, neighbours: &dyn Fn(IpAddr) -> Option<Neighbour>) -> Image {
        self.image_with(neighbours, &|a| neighbours(a).is_none())
    }

    /// [`Runtime::image`], where a DSR backend without a next hop makes its flows re-pick
    /// only when `lost` says so (its MAC failed to resolve, not merely "not known yet":
    /// a neighbour entry flushed for a moment must not move its connections).
    pub fn image_with(
        &mut self,
        neighbours: &dyn Fn(IpAddr) -> Option<Neighbour>,
        lost: &dyn Fn(IpAddr) -> bool,
    ) -> Image {
        let c = &self.conntrack;
        let mut img = Image {
            timeouts: lb_common::Timeouts {
                tcp_s: c.tcp_timeout_s,
                tcp_fin_s: c.tcp_fin_timeout_s,
                udp_s: c.udp_timeout_s,
                half_open_s: lb_common::HALF_OPEN_TIMEOUT_S,
            },
            ..Default::default()
        };
        // Retired NAT backends keep their translation (no stats: their ids may be
        // reused), unless a service has that backend again (written over below).
        for ((addr, protocol), r) in &self.retired_nat {
            img.set_nat_translation((*addr, *protocol), (r.vip, r.vport), NO_BACKEND, u32::MAX);
        }
        for (key, svc) in self.services.iter_mut() {
            let nat = svc.config.forwarding == Forwarding::Nat;
            let mut flags = 0;
            if nat {
                flags |= SERVICE_F_NAT;
            }
            if svc.config.persistence {
                flags |= SERVICE_F_HASH_SRC;
            }
            let rec = lb_common::Service {
                id: svc.id,
                flags,
                table_size: svc.config.table_size,
                table_gen: 0,
                key: Default::default(),
            };
            match (datapath_key(key), key.vip) {
                (DatapathKey::V4(k), IpAddr::V4(vip)) => {
                    img.services.insert(k, rec);
                    *img.vips.entry(v4_word(vip)).or_default() += 1;
                }
                (DatapathKey::V6(k), IpAddr::V6(vip)) => {
                    img.services6.insert(k, rec);
                    *img.vips6.entry(v6_words(vip)).or_default() += 1;
                }
                _ => unreachable!("a datapath key has its VIP's family"),
            }
            img.tables.insert(svc.id, svc.table(neighbours));
            for b in svc.backends.values() {
                let addr = b.config.socket_addr(key.port);
                let n = if nat {
                    None
                } else {
                    neighbours(b.config.address)
                };
                // Flows re-pick away from backends in maintenance, down, or (DSR) whose
                // MAC is lost; drained and weight-0 backends keep theirs.
                let repick = b.config.state == AdminState::Maint
                    || b.health == Health::Down
                    || (!nat && n.is_none() && lost(b.config.address));
                let (word, family) = match addr {
                    SocketAddr::V4(a) => (v4_word(*a.ip()), 0),
                    SocketAddr::V6(a) => {
                        img.backend_addrs6.insert(b.index, v6_words(*a.ip()));
                        (0, BACKEND_F_IPV6)
                    }
                };
                img.backends.insert(
                    b.index,
                    lb_common::Backend {
                        addr: word,
                        port: addr.port().to_be(),
                        flags: BACKEND_F_LIVE | family | if repick { BACKEND_F_REPICK } else { 0 },
                        epoch: b.epoch,
                        ifindex: n.map_or(0, |n| n.ifindex),
                        mac: n.map_or([0; 6], |n| n.mac),
                        src_mac: n.map_or([0; 6], |n| n.src_mac),
                        service: svc.id,
                    },
                );
                if nat {
                    img.set_nat_translation(
                        (addr, key.protocol),
                        (key.vip, key.port),
                        b.index,
                        svc.id,
                    );
                }
            }
        }
        img
    }
}

/// The last byte of an address (tests give hosts MACs from it).
#[cfg(test)]
pub(crate) fn last_octet(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neighbours(a: IpAddr) -> Option<Neighbour> {
        Some(Neighbour {
            ifindex: 3,
            mac: [2, 0, 0, 0, 0, last_octet(a)],
            src_mac: [2, 0, 0, 0, 0, 1],
        })
    }

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const TWO: &str = r#"{"services": [
        {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
            {"address": "10.0.0.11"}, {"address": "10.0.0.12"}, {"address": "10.0.0.13", "backup": true}]},
        {"vip": "10.100.0.20", "port": 8080, "forwarding": "nat", "table_size": 251, "backends": [
            {"address": "10.1.0.11", "port": 80}]}]}"#;

    fn key(s: &str) -> ServiceKey {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn addr4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    /// Backend indexes that own at least one slot of a service's table.
    fn members(img: &Image, id: u32) -> BTreeSet<u32> {
        img.tables[&id]
            .iter()
            .copied()
            .filter(|i| *i != NO_BACKEND)
            .collect()
    }

    fn index(r: &Runtime, s: &str, b: &str) -> u32 {
        r.service(&key(s)).unwrap().backends[&addr(b)].index
    }

    #[test]
    fn image_of_a_config() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let img = r.image(&neighbours);
        assert_eq!(img.services.len(), 2);
        let web = r.service(&key("10.100.0.10:80/tcp")).unwrap().id;
        let a = index(&r, "10.100.0.10:80/tcp", "10.0.0.11:80");
        let b = index(&r, "10.100.0.10:80/tcp", "10.0.0.12:80");
        assert_eq!(
            members(&img, web),
            BTreeSet::from([a, b]),
            "the backup gets no slot while primaries are usable"
        );
        let be = img.backends[&a];
        assert_eq!(
            (be.flags, be.ifindex, be.mac, be.port),
            (BACKEND_F_LIVE, 3, [2, 0, 0, 0, 0, 11], 80u16.to_be())
        );
        let nat = r.service(&key("10.100.0.20:8080/tcp")).unwrap();
        let nat_be = img.backends[&nat.backends[&addr("10.1.0.11:80")].index];
        assert_eq!(
            (nat_be.port, nat_be.mac),
            (80u16.to_be(), [0; 6]),
            "NAT backends need no MAC"
        );
        assert_eq!(
            img.services[&datapath_key(&key("10.100.0.20:8080/tcp")).v4().unwrap()].flags,
            SERVICE_F_NAT
        );
        assert_eq!(img.vips.len(), 2);
        assert_eq!(
            img.nat_backends.keys().copied().collect::<Vec<_>>(),
            vec![nat_backend_key(addr4("10.1.0.11:80"), Protocol::Tcp)]
        );
    }

    #[test]
    fn image_of_an_ipv6_config() {
        let mut r = Runtime::from_config(
            &config(
                r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [{"address": "10.0.0.11"}]},
            {"vip": "2001:db8::10", "port": 80, "table_size": 251, "backends": [
                {"address": "2001:db8::11"}, {"address": "2001:db8::12"}]},
            {"vip": "2001:db8::20", "port": 8080, "forwarding": "nat", "table_size": 251, "backends": [
                {"address": "2001:db8:1::11", "port": 80}]}]}"#,
            ),
            Health::Up,
        )
        .unwrap();
        let img = r.image(&neighbours);
        assert_eq!(
            (img.services.len(), img.services6.len()),
            (1, 2),
            "each family's records in its own map"
        );
        assert_eq!(img.vips.len(), 1);
        assert_eq!(img.vips6.len(), 2);
        // One id space and one index space for both families.
        let ids: BTreeSet<u32> = img
            .services
            .values()
            .chain(img.services6.values())
            .map(|s| s.id)
            .collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(img.tables.len(), 3);
        let web6 = r.service(&key("[2001:db8::10]:80/tcp")).unwrap();
        let b11 = &web6.backends[&addr("[2001:db8::11]:80")];
        let rec = img.backends[&b11.index];
        assert_eq!(
            (rec.addr, rec.flags, rec.mac),
            (0, BACKEND_F_LIVE | BACKEND_F_IPV6, [2, 0, 0, 0, 0, 0x11]),
            "an IPv6 backend's record has no IPv4 address, and its DSR next hop"
        );
        assert_eq!(
            img.backend_addrs6[&b11.index],
            v6_words("2001:db8::11".parse().unwrap())
        );
        assert_eq!(img.backend_addrs6.len(), 3, "every IPv6 backend's address");
        let nat = r.service(&key("[2001:db8::20]:8080/tcp")).unwrap();
        let key6 = nat_backend_key6("[2001:db8:1::11]:80".parse().unwrap(), Protocol::Tcp);
        let back = img.nat_backends6[&key6];
        assert_eq!(
            (back.vip, u16::from_be(back.vport), back.service),
            (v6_words("2001:db8::20".parse().unwrap()), 8080, nat.id)
        );
        assert!(img.nat_backends.is_empty());
        let DatapathKey::V6(dk) = datapath_key(&key("[2001:db8::20]:8080/tcp")) else {
            panic!("an IPv6 service has an IPv6 datapath key");
        };
        assert_eq!(img.services6[&dk].flags, SERVICE_F_NAT);
    }

    #[test]
    fn drain_maint_down_weight_zero_and_backups() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let s = key("10.100.0.10:80/tcp");
        let id = r.service(&s).unwrap().id;
        let (a, b, c) = (
            index(&r, "10.100.0.10:80/tcp", "10.0.0.11:80"),
            index(&r, "10.100.0.10:80/tcp", "10.0.0.12:80"),
            index(&r, "10.100.0.10:80/tcp", "10.0.0.13:80"),
        );

        r.set_backend(&s, addr("10.0.0.11:80"), None, Some(AdminState::Drain))
            .unwrap();
        let img = r.image(&neighbours);
        assert_eq!(members(&img, id), BTreeSet::from([b]), "drain: no slots");
        assert_eq!(img.backends[&a].flags, BACKEND_F_LIVE, "drain: flows stay");

        r.set_backend(&s, addr("10.0.0.12:80"), Some(0), None)
            .unwrap();
        let img = r.image(&neighbours);
        assert_eq!(
            members(&img, id),
            BTreeSet::from([c]),
            "no usable primary: the backup takes over"
        );
        assert_eq!(
            img.backends[&b].flags, BACKEND_F_LIVE,
            "weight 0: flows stay"
        );

        r.set_backend(&s, addr("10.0.0.12:80"), Some(100), None)
            .unwrap();
        assert_eq!(
            members(&r.image(&neighbours), id),
            BTreeSet::from([b]),
            "a primary back: the backup steps aside"
        );

        assert!(r.set_health(&s, addr("10.0.0.12:80"), Health::Down));
        assert!(
            !r.set_health(&s, addr("10.0.0.12:80"), Health::Down),
            "no change reported twice"
        );
        let img = r.image(&neighbours);
        assert_eq!(members(&img, id), BTreeSet::from([c]));
        assert_eq!(
            img.backends[&b].flags,
            BACKEND_F_LIVE | BACKEND_F_REPICK,
            "down: flows re-pick"
        );

        r.set_backend(&s, addr("10.0.0.13:80"), None, Some(AdminState::Maint))
            .unwrap();
        let img = r.image(&neighbours);
        assert!(
            members(&img, id).is_empty(),
            "nothing usable: the service drops new flows"
        );
        assert_eq!(
            img.backends[&c].flags,
            BACKEND_F_LIVE | BACKEND_F_REPICK,
            "maint: flows re-pick"
        );
    }

    #[test]
    fn dsr_backends_without_a_neighbour_get_no_slot() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let id = r.service(&key("10.100.0.10:80/tcp")).unwrap().id;
        let only_12 = |a: IpAddr| {
            if last_octet(a) == 12 {
                neighbours(a)
            } else {
                None
            }
        };
        let img = r.image(&only_12);
        assert_eq!(
            members(&img, id),
            BTreeSet::from([index(&r, "10.100.0.10:80/tcp", "10.0.0.12:80")])
        );
    }

    #[test]
    fn a_nat_backend_serves_one_nat_service_and_may_move_in_a_reload() {
        let nat = |a: &str, b: &str| -> Config {
            Config::parse(&format!(
                r#"{{"services": [
                    {{"vip": "10.100.0.10", "port": 80, "forwarding": "nat", "backends": [{a}]}},
                    {{"vip": "10.100.0.11", "port": 80, "forwarding": "nat", "backends": [{b}]}}
                ]}}"#
            ))
            .unwrap()
        };
        let one = r#"{"address": "10.0.0.1"}"#;
        let two = r#"{"address": "10.0.0.2"}"#;
        let mut r = Runtime::from_config(&nat(one, two), Health::Up).unwrap();
        let (a, b) = (key("10.100.0.10:80/tcp"), key("10.100.0.11:80/tcp"));
        let before = r.to_config();
        let cfg: BackendConfig = serde_json::from_str(one).unwrap();
        let e = r.add_backend(&b, cfg.clone(), Health::Up).unwrap_err();
        assert_eq!(
            e,
            OpError::NatBackendShared {
                backend: addr("10.0.0.1:80"),
                protocol: Protocol::Tcp,
                owner: a
            }
        );
        assert!(e.to_string().contains("another port"), "{e}");
        let mut svc = nat(one, two).services[0].clone();
        svc.vip = "10.100.0.12".parse().unwrap();
        assert!(matches!(
            r.add_service(svc, Health::Up).unwrap_err(),
            OpError::NatBackendShared { .. }
        ));
        assert_eq!(r.to_config(), before, "refused: nothing changed");

        // The image translates each backend's replies back to its own service.
        let img = r.image(&neighbours);
        let back = img.nat_backends[&nat_backend_key(addr4("10.0.0.1:80"), Protocol::Tcp)];
        assert_eq!(back.vip, u32::from_ne_bytes([10, 100, 0, 10]));
        assert_eq!(back.service, r.service(&a).unwrap().id);
        assert_eq!(img.nat_backends.len(), 2);

        // A reload may move it: removals go first.
        r.reload(&nat(two, one), Health::Up).unwrap();
        let img = r.image(&neighbours);
        let back = img.nat_backends[&nat_backend_key(addr4("10.0.0.1:80"), Protocol::Tcp)];
        assert_eq!(back.vip, u32::from_ne_bytes([10, 100, 0, 11]));
        assert_eq!(back.service, r.service(&b).unwrap().id);
        // And once it left a service, another may take it.
        r.remove_backend(&b, addr("10.0.0.1:80")).unwrap();
        r.add_backend(&a, cfg, Health::Up).unwrap();
    }

    #[test]
    fn removed_nat_backends_keep_their_translation_until_their_connections_time_out() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let nat = key("10.100.0.20:8080/tcp");
        let k11 = nat_backend_key(addr4("10.1.0.11:80"), Protocol::Tcp);
        r.remove_backend(&nat, addr("10.1.0.11:80")).unwrap();
        r.set_clock(1000);
        let img = r.image(&neighbours);
        let back = img.nat_backends[&k11];
        assert_eq!(
            (back.vip, u16::from_be(back.vport), back.backend),
            (u32::from_ne_bytes([10, 100, 0, 20]), 8080, NO_BACKEND),
            "still translated, without stats"
        );
        // Any NAT service may take it meanwhile (its own translation replaces it).
        assert!(!r.retired_due(1000 + 899));
        r.purge_retired(1000 + 899);
        assert!(r.image(&neighbours).nat_backends.contains_key(&k11));
        assert!(r.retired_due(1000 + 900), "tcp_timeout_s (900) has passed");
        r.purge_retired(1000 + 900);
        assert!(!r.image(&neighbours).nat_backends.contains_key(&k11));

        // Retired with its (now empty) service, then taken by a new NAT service: a live
        // translation, and no longer retired.
        r.add_backend(
            &nat,
            serde_json::from_str(r#"{"address": "10.1.0.11", "port": 80}"#).unwrap(),
            Health::Up,
        )
        .unwrap();
        r.remove_service(&nat).unwrap();
        r.set_clock(2000);
        assert_eq!(r.image(&neighbours).nat_backends[&k11].backend, NO_BACKEND);
        let svc: ServiceConfig = serde_json::from_str(
            r#"{"vip": "10.100.0.30", "port": 80, "forwarding": "nat", "table_size": 251,
                "backends": [{"address": "10.1.0.11"}]}"#,
        )
        .unwrap();
        r.add_service(svc, Health::Up).unwrap();
        let back = r.image(&neighbours).nat_backends[&k11];
        assert_eq!(back.vip, u32::from_ne_bytes([10, 100, 0, 30]));
        assert_ne!(back.backend, NO_BACKEND);
        assert!(r.retired_nat().is_empty());
    }

    #[test]
    fn a_dsr_backend_without_a_neighbour_makes_its_flows_repick() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let b = index(&r, "10.100.0.10:80/tcp", "10.0.0.11:80");
        let img = r.image(&|_| None);
        assert_eq!(img.backends[&b].flags, BACKEND_F_LIVE | BACKEND_F_REPICK);
        let img = r.image(&neighbours);
        assert_eq!(img.backends[&b].flags, BACKEND_F_LIVE);
    }

    #[test]
    fn failed_operations_change_nothing() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let before = r.to_config();
        let s = key("10.100.0.10:80/tcp");
        let b = |t: &str| -> BackendConfig { serde_json::from_str(t).unwrap() };
        let errors = [
            r.add_backend(&s, b(r#"{"address": "10.0.0.11"}"#), Health::Up)
                .unwrap_err(),
            r.add_backend(&s, b(r#"{"address": "10.0.0.20", "port": 81}"#), Health::Up)
                .unwrap_err(),
            r.add_backend(
                &key("10.9.9.9:80/tcp"),
                b(r#"{"address": "10.0.0.20"}"#),
                Health::Up,
            )
            .unwrap_err(),
            r.remove_backend(&s, addr("10.0.0.99:80")).unwrap_err(),
            r.set_backend(&s, addr("10.0.0.99:80"), Some(1), None)
                .unwrap_err(),
            r.set_backend(&s, addr("10.0.0.11:80"), None, None)
                .unwrap_err(),
            r.remove_service(&key("10.9.9.9:80/tcp")).unwrap_err(),
            r.add_service(config(TWO).services[0].clone(), Health::Up)
                .unwrap_err(),
        ];
        for e in &errors {
            assert!(!e.to_string().is_empty());
        }
        assert!(
            matches!(errors[0], OpError::BackendExists { .. })
                && errors[0].to_string().contains("already"),
            "{}",
            errors[0]
        );
        assert!(
            matches!(&errors[1], OpError::Invalid(e) if e.field == "backend.port")
                && errors[1].to_string().contains("DSR cannot change the port"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2] == OpError::NoService(key("10.9.9.9:80/tcp"))
                && errors[2].to_string().contains("no service 10.9.9.9:80/tcp"),
            "{}",
            errors[2]
        );
        assert_eq!(errors[5], OpError::NothingToChange);
        assert_eq!(r.to_config(), before);
        let mut bigger = config(TWO);
        bigger.conntrack.max_entries *= 2;
        assert!(
            r.reload(&bigger, Health::Up)
                .unwrap_err()
                .to_string()
                .contains("restart")
        );
        assert_eq!(r.to_config(), before);
    }

    #[test]
    fn reload_keeps_what_stays_and_reuses_indexes_with_new_epochs() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let s = key("10.100.0.10:80/tcp");
        let kept = r.service(&s).unwrap().backends[&addr("10.0.0.12:80")].clone();
        r.set_health(&s, addr("10.0.0.12:80"), Health::Down);
        let freed = index(&r, "10.100.0.10:80/tcp", "10.0.0.11:80");
        let next = config(
            r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
                {"address": "10.0.0.12"}, {"address": "10.0.0.14"}]}]}"#,
        );
        r.reload(&next, Health::Up).unwrap();
        let svc = r.service(&s).unwrap();
        let b12 = &svc.backends[&addr("10.0.0.12:80")];
        assert_eq!(
            (b12.index, b12.epoch, b12.health),
            (kept.index, kept.epoch, Health::Down),
            "a staying backend keeps index, epoch and health"
        );
        assert!(r.service(&key("10.100.0.20:8080/tcp")).is_none());
        // An index freed by this change is not reused by it (the datapath may still
        // hold its old owner's records while the change is applied)...
        let b14 = svc.backends[&addr("10.0.0.14:80")].clone();
        assert_ne!(b14.index, freed);
        assert_eq!(b14.epoch, 1);
        // ...but by the next one, with a new epoch.
        r.cool(1);
        r.thaw(|_| true);
        r.add_backend(
            &s,
            serde_json::from_str(r#"{"address": "10.0.0.15"}"#).unwrap(),
            Health::Up,
        )
        .unwrap();
        let b15 = &r.service(&s).unwrap().backends[&addr("10.0.0.15:80")];
        assert_eq!(
            (b15.index, b15.epoch),
            (freed, 2),
            "reused, with a new epoch"
        );
        assert_eq!(r.to_config().services.len(), 1);
    }

    #[test]
    fn a_change_never_gives_a_freed_service_id_to_another_service() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let gone = r.service(&key("10.100.0.20:8080/tcp")).unwrap().id;
        let next = config(
            r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
                {"address": "10.0.0.12"}]},
            {"vip": "10.100.0.30", "port": 80, "backends": [{"address": "10.0.0.12"}]}]}"#,
        );
        r.reload(&next, Health::Up).unwrap();
        let new = r.service(&key("10.100.0.30:80/tcp")).unwrap().id;
        assert_ne!(
            new, gone,
            "the removed service's id is not reused in the same change"
        );
        // Applied, but its grace period has not passed: still not reusable.
        r.cool(1);
        r.thaw(|mark| mark != 1);
        let svc = |port: u16| -> ServiceConfig {
            serde_json::from_str(&format!(r#"{{"vip": "10.100.0.40", "port": {port}}}"#)).unwrap()
        };
        r.add_service(svc(81), Health::Up).unwrap();
        assert_ne!(r.service(&key("10.100.0.40:81/tcp")).unwrap().id, gone);
        // Once it has passed, the id is the lowest free one again.
        r.thaw(|_| true);
        r.add_service(svc(82), Health::Up).unwrap();
        assert_eq!(r.service(&key("10.100.0.40:82/tcp")).unwrap().id, gone);
    }

    #[test]
    fn ids_waiting_to_be_reused_are_named_when_none_is_free() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        r.service_ids = IdPool::new(2);
        r.service_ids.next = 2;
        r.service_ids.give_back(0);
        let e = r
            .add_service(
                serde_json::from_str(r#"{"vip": "10.100.0.40", "port": 80}"#).unwrap(),
                Health::Up,
            )
            .unwrap_err();
        assert_eq!(e, OpError::NoServiceId { waiting: 1 });
        assert!(e.to_string().contains("1 freed just now"), "{e}");
    }

    #[test]
    fn switching_forwarding_replaces_the_service() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let mut c = config(TWO);
        c.services[0].forwarding = Forwarding::Nat;
        let old = index(&r, "10.100.0.10:80/tcp", "10.0.0.11:80");
        let old_epoch =
            r.service(&key("10.100.0.10:80/tcp")).unwrap().backends[&addr("10.0.0.11:80")].epoch;
        r.reload(&c, Health::Up).unwrap();
        let b = &r.service(&key("10.100.0.10:80/tcp")).unwrap().backends[&addr("10.0.0.11:80")];
        assert!(
            b.index != old || b.epoch != old_epoch,
            "flows of the DSR service must not follow into the NAT one"
        );
    }

    #[test]
    fn tables_are_reused_when_nothing_changed() {
        let mut r = Runtime::from_config(&config(TWO), Health::Up).unwrap();
        let a = r.image(&neighbours);
        let b = r.image(&neighbours);
        for (id, t) in &a.tables {
            assert!(
                Arc::ptr_eq(t, &b.tables[id]),
                "service {id}: table rebuilt without a change"
            );
        }
    }
}
