//! Continuing a datapath that outlived its daemon (pure: the maps are read by the
//! dataplane). A new daemon must give every service and backend that is still there
//! the id, index and epoch it has in the maps: a connection-table entry names its
//! backend by index and epoch, so a backend that changed either would lose its
//! connections. [`Runtime::adopt`] does that; [`Image::from_pinned`] is what the maps
//! hold, so the first change writes only what the configuration changes.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use lb_common::{
    BACKEND_F_IPV6, BACKEND_F_LIVE, BACKEND_F_REPICK, Backend, NO_BACKEND, SERVICE_F_NAT, Service,
};

use super::runtime::{
    BackendState, DatapathKey, Image, Neighbour, OpError, Runtime, ServiceState, datapath_key,
    from_v4_word, from_v6_words,
};
use crate::{
    config::{AdminState, Config, Forwarding, Protocol, ServiceConfig},
    health::Health,
};

/// What a pinned datapath holds (read by `Dataplane::adopt`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    /// Service records, by key.
    pub services: BTreeMap<lb_common::ServiceKey, Service>,
    /// Every backend record ever written (epoch > 0): live ones, and retired ones whose
    /// epoch a new incarnation of their index must go past.
    pub backends: BTreeMap<u32, Backend>,
    /// The live table of each service id: its first `table_size` slots.
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// VIP address (network order) -> services on it.
    pub vips: BTreeMap<u32, u32>,
    /// NAT backends' reply translations.
    pub nat_backends: BTreeMap<lb_common::NatBackendKey, lb_common::NatBackend>,
    /// The connection table's timeouts.
    pub timeouts: lb_common::Timeouts,
    /// IPv6 service records, by key.
    pub services6: BTreeMap<lb_common::ServiceKey6, lb_common::Service6>,
    /// IPv6 VIPs -> services on them.
    pub vips6: BTreeMap<lb_common::Addr6, u32>,
    /// IPv6 NAT backends' reply translations.
    pub nat_backends6: BTreeMap<lb_common::NatBackendKey6, lb_common::NatBackend6>,
    /// The addresses of the IPv6 backends among `backends`.
    pub backend_addrs6: BTreeMap<u32, lb_common::Addr6>,
}

fn live(b: &Backend) -> bool {
    b.flags & BACKEND_F_LIVE != 0
}

impl Pinned {
    /// The address of the backend at `index` (record `b`): IPv6 ones are in
    /// `backend_addrs6`.
    fn address(&self, index: u32, b: &Backend) -> Option<IpAddr> {
        if b.flags & BACKEND_F_IPV6 != 0 {
            self.backend_addrs6.get(&index).map(|a| from_v6_words(*a))
        } else {
            Some(from_v4_word(b.addr))
        }
    }

    fn socket_addr(&self, index: u32, b: &Backend) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.address(index, b)?,
            u16::from_be(b.port),
        ))
    }

    /// The service records of both families, by their datapath keys.
    fn record(&self, key: &DatapathKey) -> Option<Service> {
        match key {
            DatapathKey::V4(k) => self.services.get(k).copied(),
            DatapathKey::V6(k) => self.services6.get(k).map(|s| s.common()),
        }
    }

    /// The ids of every service record, of both families.
    pub fn service_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.services
            .values()
            .map(|s| s.id)
            .chain(self.services6.values().map(|s| s.id))
    }

    /// The next hops DSR backends had in the maps: what the datapath uses until lb looks
    /// them up again.
    pub fn neighbours(&self) -> BTreeMap<IpAddr, Neighbour> {
        self.backends
            .iter()
            .filter(|(_, b)| live(b) && b.mac != [0; 6])
            .filter_map(|(i, b)| {
                Some((
                    self.address(*i, b)?,
                    Neighbour {
                        ifindex: b.ifindex,
                        mac: b.mac,
                        src_mac: b.src_mac,
                    },
                ))
            })
            .collect()
    }
}

impl Image {
    /// The image of what a pinned datapath holds (records as `Runtime::image` makes
    /// them: the writer sets `table_gen` and `key`).
    pub fn from_pinned(p: &Pinned) -> Image {
        Image {
            services: p
                .services
                .iter()
                .map(|(k, s)| {
                    (
                        *k,
                        Service {
                            table_gen: 0,
                            key: Default::default(),
                            ..*s
                        },
                    )
                })
                .collect(),
            tables: p
                .tables
                .iter()
                .map(|(id, t)| (*id, Arc::new(t.clone())))
                .collect(),
            backends: p
                .backends
                .iter()
                .filter(|(_, b)| live(b))
                .map(|(i, b)| (*i, *b))
                .collect(),
            vips: p.vips.clone(),
            nat_backends: p.nat_backends.clone(),
            timeouts: p.timeouts,
            services6: p
                .services6
                .iter()
                .map(|(k, s)| {
                    (
                        *k,
                        Service {
                            table_gen: 0,
                            ..s.common()
                        },
                    )
                })
                .collect(),
            vips6: p.vips6.clone(),
            nat_backends6: p.nat_backends6.clone(),
            backend_addrs6: p
                .backend_addrs6
                .iter()
                .filter(|(i, _)| p.backends.get(i).is_some_and(live))
                .map(|(i, a)| (*i, *a))
                .collect(),
        }
    }
}

impl Runtime {
    /// A runtime holding `config` over a datapath that holds `pinned`. Services and
    /// backends in both keep their service id, backend index and epoch; a backend the
    /// datapath had taken out after failed checks (re-pick, and not in maintenance)
    /// starts down, the others up. Everything else is new (indexes past every epoch the
    /// maps have seen), and what the configuration no longer has is released: its ids
    /// become reusable once the change that retires it has passed a grace period.
    pub fn adopt(config: &Config, pinned: &Pinned) -> Result<Self, OpError> {
        config.validate()?;
        let mut r = Runtime::new(config.conntrack.clone());
        // What the maps hold, by service key: (id, NAT?) and (backend -> record).
        let mut kept_ids = BTreeSet::new();
        let mut kept_indexes = BTreeSet::new();
        let mut placed = Vec::new();
        for s in &config.services {
            let key = s.key();
            let Some(rec) = pinned.record(&datapath_key(&key)) else {
                continue;
            };
            let nat = rec.flags & SERVICE_F_NAT != 0;
            if nat != (s.forwarding == Forwarding::Nat) {
                continue; // DSR <-> NAT: a different service to the datapath
            }
            kept_ids.insert(rec.id);
            let mut backends = BTreeMap::new();
            for (index, b) in &pinned.backends {
                if !live(b) || b.service != rec.id {
                    continue;
                }
                let Some(addr) = pinned.socket_addr(*index, b) else {
                    continue;
                };
                let Some(cfg) = s.backends.iter().find(|c| c.socket_addr(s.port) == addr) else {
                    continue;
                };
                kept_indexes.insert(*index);
                // Re-pick marks a backend down, in maintenance, or (DSR) without a
                // neighbour: only the first is a failed check (the others are looked
                // at again by the new daemon).
                let unreachable = !nat && b.mac == [0; 6];
                let failed = b.flags & BACKEND_F_REPICK != 0
                    && cfg.state != AdminState::Maint
                    && !unreachable;
                backends.insert(
                    addr,
                    BackendState {
                        config: cfg.clone(),
                        index: *index,
                        epoch: b.epoch,
                        health: if failed { Health::Down } else { Health::Up },
                    },
                );
            }
            placed.push((s.clone(), rec.id, backends));
        }
        let released_ids: BTreeSet<u32> = pinned
            .service_ids()
            .filter(|id| !kept_ids.contains(id))
            .collect();
        let released_indexes: BTreeSet<u32> = pinned
            .backends
            .iter()
            .filter(|(i, b)| live(b) && !kept_indexes.contains(i))
            .map(|(i, _)| *i)
            .collect();
        let epochs: BTreeMap<u32, u32> =
            pinned.backends.iter().map(|(i, b)| (*i, b.epoch)).collect();
        r.adopt_ids(pinned.service_ids(), &kept_ids, released_ids);
        r.adopt_indexes(&kept_indexes, released_indexes, epochs);
        let mut rest: Vec<ServiceConfig> = Vec::new();
        for s in &config.services {
            match placed.iter().position(|(p, ..)| p.key() == s.key()) {
                Some(i) => {
                    let (cfg, id, backends) = placed.swap_remove(i);
                    let extra: Vec<_> = cfg
                        .backends
                        .iter()
                        .filter(|b| !backends.contains_key(&b.socket_addr(cfg.port)))
                        .cloned()
                        .collect();
                    r.insert_adopted(ServiceState::adopted(
                        ServiceConfig {
                            backends: Vec::new(),
                            ..cfg.clone()
                        },
                        id,
                        backends,
                    ));
                    for b in extra {
                        r.add_backend(&cfg.key(), b, Health::Up)?;
                    }
                }
                None => rest.push(s.clone()),
            }
        }
        for s in rest {
            r.add_service(s, Health::Up)?;
        }
        // Retired NAT backends stay retired (their connections may still be open), with
        // a new clock.
        let retired = pinned
            .nat_backends
            .iter()
            .map(|(k, v)| {
                (
                    (from_v4_word(k.addr), k.port, k.proto),
                    (from_v4_word(v.vip), v.vport, v.backend),
                )
            })
            .chain(pinned.nat_backends6.iter().map(|(k, v)| {
                (
                    (from_v6_words(k.addr), k.port, k.proto),
                    (from_v6_words(v.vip), v.vport, v.backend),
                )
            }));
        for ((addr, port, proto), (vip, vport, backend)) in retired {
            let protocol = match proto {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                _ => continue,
            };
            if backend == NO_BACKEND {
                r.adopt_retired(
                    SocketAddr::new(addr, u16::from_be(port)),
                    protocol,
                    vip,
                    u16::from_be(vport),
                );
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{NO_BACKEND, SERVICE_F_HASH_SRC};

    use super::*;
    use crate::model::apply::{apply, tests::CheckedMaps};

    const CONFIG: &str = r#"{"services": [
        {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
            {"address": "10.0.0.11"}, {"address": "10.0.0.12"}, {"address": "10.0.0.13"}]},
        {"vip": "10.100.0.20", "port": 8080, "forwarding": "nat", "table_size": 251,
         "persistence": true, "backends": [{"address": "10.1.0.11", "port": 80}]}]}"#;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    fn hop(a: IpAddr) -> Option<Neighbour> {
        Some(Neighbour {
            ifindex: 3,
            mac: [2, 0, 0, 0, 0, crate::model::runtime::last_octet(a)],
            src_mac: [2, 0, 0, 0, 0, 1],
        })
    }

    /// The maps a daemon leaves behind after running `text` (through the checked fake),
    /// read back as a pinned datapath; with backend 10.0.0.12 down when `down`.
    fn left_behind(text: &str, down: bool) -> (Runtime, Pinned) {
        let mut r = Runtime::from_config(&config(text), Health::Up).unwrap();
        if down {
            r.set_health(
                &"10.100.0.10:80/tcp".parse().unwrap(),
                "10.0.0.12:80".parse().unwrap(),
                Health::Down,
            );
        }
        let img = r.image(&hop);
        let mut maps = CheckedMaps::default();
        apply(&mut maps, &Image::default(), &img).unwrap();
        let pinned = Pinned {
            services: maps
                .services
                .iter()
                .map(|(k, s)| (*k, Service { table_gen: 1, ..*s }))
                .collect(),
            backends: maps.backends.clone(),
            tables: maps.tables.clone(),
            vips: maps.vips.clone(),
            nat_backends: maps.nat_backends.clone(),
            timeouts: maps.timeouts,
            services6: maps
                .services6
                .iter()
                .map(|(k, s)| {
                    (
                        *k,
                        lb_common::Service6 {
                            id: s.id,
                            flags: s.flags,
                            table_size: s.table_size,
                            table_gen: 1,
                            key: *k,
                        },
                    )
                })
                .collect(),
            vips6: maps.vips6.clone(),
            nat_backends6: maps.nat_backends6.clone(),
            backend_addrs6: maps.backend_addrs6.clone(),
        };
        (r, pinned)
    }

    #[test]
    fn ipv6_services_keep_their_ids_indexes_and_neighbours() {
        const BOTH: &str = r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [{"address": "10.0.0.11"}]},
            {"vip": "2001:db8::10", "port": 80, "table_size": 251, "backends": [
                {"address": "2001:db8::11"}, {"address": "2001:db8::12"}]},
            {"vip": "2001:db8::20", "port": 8080, "forwarding": "nat", "table_size": 251,
             "backends": [{"address": "2001:db8:1::11", "port": 80}]}]}"#;
        let (before, pinned) = left_behind(BOTH, false);
        let mut r = Runtime::adopt(&config(BOTH), &pinned).unwrap();
        for s in before.services() {
            let a = r.service(&s.config.key()).unwrap();
            assert_eq!(a.id, s.id, "{}", s.config.key());
            for (addr, b) in &s.backends {
                let k = &a.backends[addr];
                assert_eq!((k.index, k.epoch), (b.index, b.epoch), "{addr}");
            }
        }
        let neighbours = pinned.neighbours();
        assert_eq!(
            neighbours[&"2001:db8::12".parse::<IpAddr>().unwrap()].mac,
            [2, 0, 0, 0, 0, 0x12],
            "an IPv6 DSR backend's next hop, found by its address in BACKEND_ADDRS6"
        );
        let mut maps = CheckedMaps::default();
        apply(&mut maps, &Image::from_pinned(&pinned), &r.image(&hop)).unwrap();
        assert_eq!(maps.writes, 0, "nothing to write");
    }

    #[test]
    fn the_same_configuration_keeps_every_id_and_writes_nothing() {
        let (before, pinned) = left_behind(CONFIG, true);
        let mut r = Runtime::adopt(&config(CONFIG), &pinned).unwrap();
        for s in before.services() {
            let a = r.service(&s.config.key()).unwrap();
            assert_eq!(a.id, s.id, "{}", s.config.key());
            for (addr, b) in &s.backends {
                let k = &a.backends[addr];
                assert_eq!(
                    (k.index, k.epoch, k.health),
                    (b.index, b.epoch, b.health),
                    "{addr}"
                );
            }
        }
        let mut maps = CheckedMaps::default();
        let old = Image::from_pinned(&pinned);
        apply(&mut maps, &old, &r.image(&hop)).unwrap();
        assert_eq!(
            maps.writes, 0,
            "nothing to write: the maps hold the configuration"
        );
    }

    #[test]
    fn changes_keep_what_stays_and_never_reuse_an_epoch() {
        let (before, pinned) = left_behind(CONFIG, false);
        let web = before
            .service(&"10.100.0.10:80/tcp".parse().unwrap())
            .unwrap();
        let b12 = web.backends[&"10.0.0.12:80".parse().unwrap()].clone();
        let b13 = web.backends[&"10.0.0.13:80".parse().unwrap()].clone();
        let nat_id = before
            .service(&"10.100.0.20:8080/tcp".parse().unwrap())
            .unwrap()
            .id;
        // 10.0.0.13 leaves, 10.0.0.14 joins; the NAT service becomes DSR (a new service).
        let next = config(
            r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
                {"address": "10.0.0.11"}, {"address": "10.0.0.12"}, {"address": "10.0.0.14"}]},
            {"vip": "10.100.0.20", "port": 8080, "table_size": 251,
             "backends": [{"address": "10.1.0.11"}]}]}"#,
        );
        let mut r = Runtime::adopt(&next, &pinned).unwrap();
        let web = r.service(&"10.100.0.10:80/tcp".parse().unwrap()).unwrap();
        let k12 = &web.backends[&"10.0.0.12:80".parse().unwrap()];
        assert_eq!((k12.index, k12.epoch), (b12.index, b12.epoch));
        let b14 = &web.backends[&"10.0.0.14:80".parse().unwrap()];
        assert_ne!(
            b14.index, b13.index,
            "an index freed by this change is not reused by it"
        );
        let dsr = r.service(&"10.100.0.20:8080/tcp".parse().unwrap()).unwrap();
        assert_ne!(dsr.id, nat_id, "DSR <-> NAT is a new service");
        // Once the retired ids have cooled, a new backend may take 13's index, with an
        // epoch past the one its stale connections carry.
        r.cool(1);
        r.thaw(|_| true);
        for last in 15..=30u8 {
            r.add_backend(
                &"10.100.0.10:80/tcp".parse().unwrap(),
                serde_json::from_str(&format!(r#"{{"address": "10.0.0.{last}"}}"#)).unwrap(),
                Health::Up,
            )
            .unwrap();
        }
        let reused = r
            .service(&"10.100.0.10:80/tcp".parse().unwrap())
            .unwrap()
            .backends
            .values()
            .find(|b| b.index == b13.index)
            .expect("13's index is reused after cooling");
        assert!(reused.epoch > b13.epoch, "{} > {}", reused.epoch, b13.epoch);
        // The maps go from the pinned state to the new one consistently.
        let mut maps = CheckedMaps::default();
        let old = Image::from_pinned(&pinned);
        apply(&mut maps, &Image::default(), &old).unwrap();
        apply(&mut maps, &old, &r.image(&hop)).unwrap();
        assert!(
            maps.services
                .values()
                .all(|s| s.flags & SERVICE_F_HASH_SRC == 0)
        );
    }

    #[test]
    fn next_hops_come_from_live_dsr_records() {
        let (_, pinned) = left_behind(CONFIG, false);
        let n = pinned.neighbours();
        assert_eq!(n.len(), 3, "the three DSR backends; the NAT one has no MAC");
        assert_eq!(n[&"10.0.0.12".parse().unwrap()].mac, [2, 0, 0, 0, 0, 12]);
        assert!(
            pinned
                .tables
                .values()
                .all(|t| t.iter().any(|s| *s != NO_BACKEND))
        );
    }
}
