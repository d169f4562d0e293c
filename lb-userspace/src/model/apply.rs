//! Writing the difference between two [`Image`]s into the datapath, in an order that
//! never shows a packet an inconsistent state (pure: the writes go through [`Maps`]).
//!
//! Invariants a packet may rely on at every moment (the tests check them after every
//! single write):
//! 1. every service in `SERVICES` has a table, and every slot of it names a backend whose
//!    record is live and not flagged re-pick;
//! 2. every service's VIP is in `VIPS` and every live NAT backend in `NAT_BACKENDS` (its
//!    replies are translated back; the prefilters are kept with both by `Dataplane`),
//!    and every live IPv6 backend's address is in `BACKEND_ADDRS6` (IPv6 services: the
//!    same in their `*6` maps);
//! 3. a table never shrinks under a service record that still announces the old size
//!    (slot = hash % size must stay inside the table).
//!
//! Order: (1) timeouts, counts, NAT reply translations, IPv6 backend addresses and
//! backend records that become usable; (2) tables; (3) service records; then, retiring:
//! (4) service records that go, (5) their counts, (6) backend records that stop being
//! usable or go, then the NAT reply translations of those that went, (7) tables of
//! services that went (replaced by empty ones, which frees their memory). Each step
//! covers both families.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::{
    Addr6, BACKEND_F_LIVE, BACKEND_F_REPICK, Backend, NO_BACKEND, NatBackend, NatBackend6,
    NatBackendKey, NatBackendKey6, Service, ServiceKey, ServiceKey6, Timeouts,
};

use crate::model::runtime::Image;

/// The datapath writes the control plane makes (implemented by `Dataplane`).
pub trait Maps {
    /// Why a write failed.
    type Error: std::error::Error + Send + Sync + 'static;
    fn set_backend(&mut self, index: u32, be: Backend) -> Result<(), Self::Error>;
    fn set_table(&mut self, id: u32, slots: &[u32]) -> Result<(), Self::Error>;
    fn set_service(&mut self, key: ServiceKey, svc: Service) -> Result<(), Self::Error>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), Self::Error>;
    fn set_vip(&mut self, addr: u32, services: u32) -> Result<(), Self::Error>;
    /// Sets (or, with `None`, removes) how a NAT backend's replies are translated back.
    fn set_nat_backend(
        &mut self,
        key: NatBackendKey,
        back: Option<NatBackend>,
    ) -> Result<(), Self::Error>;
    fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<(), Self::Error>;
    /// IPv6: a service record (its `key` and `table_gen` are the writer's), its removal,
    /// a VIP's count, a NAT backend's translation, a backend's address.
    fn set_service6(&mut self, key: ServiceKey6, svc: Service) -> Result<(), Self::Error>;
    fn remove_service6(&mut self, key: &ServiceKey6) -> Result<(), Self::Error>;
    fn set_vip6(&mut self, addr: Addr6, services: u32) -> Result<(), Self::Error>;
    fn set_nat_backend6(
        &mut self,
        key: NatBackendKey6,
        back: Option<NatBackend6>,
    ) -> Result<(), Self::Error>;
    fn set_backend_addr6(&mut self, index: u32, addr: Addr6) -> Result<(), Self::Error>;
    /// Zeroes the statistics of a backend index / service id before it is reused.
    fn reset_backend_stats(&mut self, index: u32) -> Result<(), Self::Error>;
    fn reset_service_stats(&mut self, id: u32) -> Result<(), Self::Error>;
    /// Asks for an RCU grace period from now on; returns its ticket (ids a change
    /// frees are reused only once it has passed).
    fn grace_request(&self) -> u64;
    /// Whether the grace period of `ticket` has passed.
    fn grace_passed(&self, ticket: u64) -> bool;
}

fn usable(b: &Backend) -> bool {
    b.flags & (BACKEND_F_LIVE | BACKEND_F_REPICK) == BACKEND_F_LIVE
}

/// Writes the counts of `new` that grow (or appear) since `old`.
fn grow_counts<M: Maps + ?Sized, K: Ord + Copy>(
    maps: &mut M,
    old: &BTreeMap<K, u32>,
    new: &BTreeMap<K, u32>,
    set: fn(&mut M, K, u32) -> Result<(), M::Error>,
) -> Result<(), M::Error> {
    for (k, n) in new {
        if old.get(k).is_none_or(|o| o < n) {
            set(maps, *k, *n)?;
        }
    }
    Ok(())
}

/// Writes the counts of `old` that shrink (or go, as 0) in `new`.
fn shrink_counts<M: Maps + ?Sized, K: Ord + Copy>(
    maps: &mut M,
    old: &BTreeMap<K, u32>,
    new: &BTreeMap<K, u32>,
    set: fn(&mut M, K, u32) -> Result<(), M::Error>,
) -> Result<(), M::Error> {
    for (k, n) in old {
        let now = new.get(k).copied().unwrap_or(0);
        if now < *n {
            set(maps, *k, now)?;
        }
    }
    Ok(())
}

/// Writes the entries of `new` that are new or changed since `old`.
fn put_changed<M: Maps + ?Sized, K: Ord + Copy, V: PartialEq + Copy>(
    maps: &mut M,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    set: fn(&mut M, K, V) -> Result<(), M::Error>,
) -> Result<(), M::Error> {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            set(maps, *k, *v)?;
        }
    }
    Ok(())
}

/// Removes the keys of `old` that `new` no longer has.
fn remove_gone<M: Maps + ?Sized, K: Ord + Copy, V>(
    maps: &mut M,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    remove: fn(&mut M, K) -> Result<(), M::Error>,
) -> Result<(), M::Error> {
    for k in old.keys() {
        if !new.contains_key(k) {
            remove(maps, *k)?;
        }
    }
    Ok(())
}

/// Brings the datapath from `old` to `new`. On error the datapath may hold a mix of both,
/// still consistent (every step keeps the invariants); applying `new` again finishes it.
pub fn apply<M: Maps + ?Sized>(maps: &mut M, old: &Image, new: &Image) -> Result<(), M::Error> {
    // (1) timeouts, counts that grow, NAT reply translations, backend records that
    // become (or stay) usable.
    if old.timeouts != new.timeouts {
        maps.set_timeouts(new.timeouts)?;
    }
    grow_counts(maps, &old.vips, &new.vips, M::set_vip)?;
    grow_counts(maps, &old.vips6, &new.vips6, M::set_vip6)?;
    put_changed(maps, &old.nat_backends, &new.nat_backends, |m, k, b| {
        m.set_nat_backend(k, Some(b))
    })?;
    put_changed(maps, &old.nat_backends6, &new.nat_backends6, |m, k, b| {
        m.set_nat_backend6(k, Some(b))
    })?;
    // An IPv6 backend's address before any record names it as live.
    put_changed(
        maps,
        &old.backend_addrs6,
        &new.backend_addrs6,
        M::set_backend_addr6,
    )?;
    for (index, be) in &new.backends {
        let was = old.backends.get(index);
        if usable(be) && was != Some(be) {
            if was.is_none_or(|w| w.epoch != be.epoch) {
                maps.reset_backend_stats(*index)?;
            }
            maps.set_backend(*index, *be)?;
        }
    }
    // (2) tables. A service whose table size changes gets a table at least as large as
    // both sizes (slots past the new size repeat it), so the old record still finds a
    // slot inside it until (3) updates the record.
    for (id, table) in &new.tables {
        if old
            .tables
            .get(id)
            .is_some_and(|t| Arc::ptr_eq(t, table) || t == table)
        {
            continue;
        }
        let old_len = old.tables.get(id).map_or(0, |t| t.len());
        // (Of either family: IPv6 services take ids from the same space.)
        let is_new_id = !old.service_ids().any(|s| s == *id);
        if is_new_id {
            maps.reset_service_stats(*id)?;
        }
        if old_len > table.len() && !table.is_empty() {
            let padded: Vec<u32> = (0..old_len).map(|i| table[i % table.len()]).collect();
            maps.set_table(*id, &padded)?;
        } else {
            maps.set_table(*id, table)?;
        }
    }
    // (3) service records, new or changed.
    put_changed(maps, &old.services, &new.services, M::set_service)?;
    put_changed(maps, &old.services6, &new.services6, M::set_service6)?;
    // A table that was padded in (2) can shrink now that its record has the new size.
    for (id, table) in &new.tables {
        if old.tables.get(id).is_some_and(|t| t.len() > table.len()) && !table.is_empty() {
            maps.set_table(*id, table)?;
        }
    }
    // (4) services that go.
    remove_gone(maps, &old.services, &new.services, |m, k| {
        m.remove_service(&k)
    })?;
    remove_gone(maps, &old.services6, &new.services6, |m, k| {
        m.remove_service6(&k)
    })?;
    // (5) counts that shrink.
    shrink_counts(maps, &old.vips, &new.vips, M::set_vip)?;
    shrink_counts(maps, &old.vips6, &new.vips6, M::set_vip6)?;
    // (6) backend records that stop being usable, and those that go.
    for (index, be) in &new.backends {
        if !usable(be) && old.backends.get(index) != Some(be) {
            maps.set_backend(*index, *be)?;
        }
    }
    for (index, be) in &old.backends {
        if !new.backends.contains_key(index) {
            maps.set_backend(*index, Backend { flags: 0, ..*be })?;
        }
    }
    remove_gone(maps, &old.nat_backends, &new.nat_backends, |m, k| {
        m.set_nat_backend(k, None)
    })?;
    remove_gone(maps, &old.nat_backends6, &new.nat_backends6, |m, k| {
        m.set_nat_backend6(k, None)
    })?;
    // (7) tables of services that went: an empty table frees the old one's memory.
    let live: BTreeSet<u32> = new.service_ids().collect();
    for id in old.tables.keys() {
        if !live.contains(id) && !new.tables.contains_key(id) {
            maps.set_table(*id, &[])?;
        }
    }
    Ok(())
}

/// Slots a table of `slots.len()` entries holds (the empty table has none).
pub fn used_slots(slots: &[u32]) -> usize {
    slots.iter().filter(|s| **s != NO_BACKEND).count()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        config::{AdminState, Config},
        health::Health,
        model::runtime::{Neighbour, Runtime},
    };

    /// A fake datapath that checks the invariants after every write.
    #[derive(Default)]
    pub(crate) struct CheckedMaps {
        pub services: BTreeMap<ServiceKey, Service>,
        pub tables: BTreeMap<u32, Vec<u32>>,
        pub backends: BTreeMap<u32, Backend>,
        pub vips: BTreeMap<u32, u32>,
        pub nat_backends: BTreeMap<NatBackendKey, NatBackend>,
        pub timeouts: Timeouts,
        pub services6: BTreeMap<ServiceKey6, Service>,
        pub vips6: BTreeMap<Addr6, u32>,
        pub nat_backends6: BTreeMap<NatBackendKey6, NatBackend6>,
        pub backend_addrs6: BTreeMap<u32, Addr6>,
        pub writes: usize,
        /// The write (counted from 1) that fails, to test rollbacks.
        pub fail_at: Option<usize>,
        pub grace_requests: std::cell::Cell<u64>,
        /// Service ids whose statistics were zeroed, in order.
        pub service_stats_resets: Vec<u32>,
    }

    /// The write `fail_at` asked to fail.
    #[derive(Debug, thiserror::Error)]
    #[error("write {0} fails (test)")]
    pub(crate) struct WriteFailed(usize);

    type Result<T> = std::result::Result<T, WriteFailed>;

    impl CheckedMaps {
        /// Counts a write about to be made; fails it when it is `fail_at`.
        fn write(&mut self) -> Result<()> {
            self.writes += 1;
            if self.fail_at == Some(self.writes) {
                return Err(WriteFailed(self.writes));
            }
            Ok(())
        }

        /// Invariants 1 and 3 for the service `svc`: a table at least as long as its
        /// record says, every slot a usable backend (with its address, for IPv6).
        fn check_table(&self, name: &str, svc: &Service, ipv6: bool) {
            let table = self
                .tables
                .get(&svc.id)
                .unwrap_or_else(|| panic!("write {}: service {name} has no table", self.writes));
            assert!(
                table.len() >= svc.table_size as usize,
                "write {}: table of service {} shorter ({}) than its record's size {}",
                self.writes,
                svc.id,
                table.len(),
                svc.table_size
            );
            for slot in table.iter().filter(|s| **s != NO_BACKEND) {
                let be = self.backends.get(slot).unwrap_or_else(|| {
                    panic!("write {}: slot names unknown backend {slot}", self.writes)
                });
                assert!(
                    usable(be),
                    "write {}: a table of service {} names backend {slot}, which is not usable",
                    self.writes,
                    svc.id
                );
                assert!(
                    !ipv6 || self.backend_addrs6.contains_key(slot),
                    "write {}: IPv6 backend {slot} has no address",
                    self.writes
                );
            }
        }

        /// The live backends of service `id`.
        fn live_backends(&self, id: u32) -> impl Iterator<Item = (&u32, &Backend)> {
            self.backends
                .iter()
                .filter(move |(_, b)| b.service == id && b.flags != 0)
        }

        fn check(&mut self) -> Result<()> {
            for (key, svc) in &self.services {
                self.check_table(&format!("{key:?}"), svc, false);
                assert!(
                    self.vips.get(&key.vip).is_some_and(|n| *n > 0),
                    "write {}: VIP of {key:?} missing from VIPS",
                    self.writes
                );
                if svc.flags & lb_common::SERVICE_F_NAT != 0 {
                    for (_, be) in self.live_backends(svc.id) {
                        let nb = NatBackendKey {
                            addr: be.addr,
                            port: be.port,
                            proto: key.proto,
                            _pad: 0,
                        };
                        // Its translation: its service's, or (while it moves to another
                        // NAT service in one change) already the new one's.
                        assert!(
                            self.nat_backends.contains_key(&nb),
                            "write {}: NAT backend {nb:?} of service {} has no reply translation",
                            self.writes,
                            svc.id
                        );
                    }
                }
            }
            for (key, svc) in &self.services6 {
                self.check_table(&format!("{key:?}"), svc, true);
                assert!(
                    self.vips6.get(&key.vip).is_some_and(|n| *n > 0),
                    "write {}: VIP of {key:?} missing from VIPS6",
                    self.writes
                );
                if svc.flags & lb_common::SERVICE_F_NAT != 0 {
                    for (index, be) in self.live_backends(svc.id) {
                        let addr = self.backend_addrs6.get(index).unwrap_or_else(|| {
                            panic!("write {}: IPv6 backend {index} has no address", self.writes)
                        });
                        let nb = NatBackendKey6 {
                            addr: *addr,
                            port: be.port,
                            proto: key.proto,
                            _pad: 0,
                        };
                        // As for IPv4: its service's translation, or a newer one.
                        assert!(
                            self.nat_backends6.contains_key(&nb),
                            "write {}: NAT backend {nb:?} of service {} has no reply translation",
                            self.writes,
                            svc.id
                        );
                    }
                }
            }
            Ok(())
        }
    }

    impl Maps for CheckedMaps {
        type Error = WriteFailed;
        fn set_backend(&mut self, index: u32, be: Backend) -> Result<()> {
            self.write()?;
            self.backends.insert(index, be);
            self.check()
        }
        fn set_table(&mut self, id: u32, slots: &[u32]) -> Result<()> {
            self.write()?;
            // As the real datapath: an empty table frees the id's tables.
            if slots.is_empty() {
                self.tables.remove(&id);
            } else {
                self.tables.insert(id, slots.to_vec());
            }
            self.check()
        }
        fn set_service(&mut self, key: ServiceKey, svc: Service) -> Result<()> {
            self.write()?;
            self.services.insert(key, svc);
            self.check()
        }
        fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
            self.write()?;
            self.services.remove(key);
            self.check()
        }
        fn set_vip(&mut self, addr: u32, n: u32) -> Result<()> {
            self.write()?;
            if n == 0 {
                self.vips.remove(&addr);
            } else {
                self.vips.insert(addr, n);
            }
            self.check()
        }
        fn set_nat_backend(&mut self, key: NatBackendKey, back: Option<NatBackend>) -> Result<()> {
            self.write()?;
            match back {
                Some(b) => self.nat_backends.insert(key, b),
                None => self.nat_backends.remove(&key),
            };
            self.check()
        }
        fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<()> {
            self.write()?;
            self.timeouts = timeouts;
            self.check()
        }
        fn set_service6(&mut self, key: ServiceKey6, svc: Service) -> Result<()> {
            self.write()?;
            self.services6.insert(key, svc);
            self.check()
        }
        fn remove_service6(&mut self, key: &ServiceKey6) -> Result<()> {
            self.write()?;
            self.services6.remove(key);
            self.check()
        }
        fn set_vip6(&mut self, addr: Addr6, n: u32) -> Result<()> {
            self.write()?;
            if n == 0 {
                self.vips6.remove(&addr);
            } else {
                self.vips6.insert(addr, n);
            }
            self.check()
        }
        fn set_nat_backend6(
            &mut self,
            key: NatBackendKey6,
            back: Option<NatBackend6>,
        ) -> Result<()> {
            self.write()?;
            match back {
                Some(b) => self.nat_backends6.insert(key, b),
                None => self.nat_backends6.remove(&key),
            };
            self.check()
        }
        fn set_backend_addr6(&mut self, index: u32, addr: Addr6) -> Result<()> {
            self.write()?;
            self.backend_addrs6.insert(index, addr);
            self.check()
        }
        fn reset_backend_stats(&mut self, _: u32) -> Result<()> {
            Ok(())
        }
        fn reset_service_stats(&mut self, id: u32) -> Result<()> {
            self.service_stats_resets.push(id);
            Ok(())
        }
        fn grace_request(&self) -> u64 {
            self.grace_requests.set(self.grace_requests.get() + 1);
            self.grace_requests.get()
        }
        fn grace_passed(&self, _ticket: u64) -> bool {
            true
        }
    }

    fn neighbours(a: std::net::IpAddr) -> Option<Neighbour> {
        Some(Neighbour {
            ifindex: 3,
            mac: [2, 0, 0, 0, 0, crate::model::runtime::last_octet(a)],
            src_mac: [2, 0, 0, 0, 0, 1],
        })
    }

    /// Applies a sequence of runtime changes, each through the checked fake, and checks
    /// the fake ends equal to the last image.
    fn walk(steps: &[&dyn Fn(&mut Runtime)]) {
        walk_from(
            r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
                {"address": "10.0.0.11"}, {"address": "10.0.0.12"}, {"address": "10.0.0.13", "backup": true}]},
            {"vip": "10.100.0.10", "port": 443, "table_size": 509, "backends": [{"address": "10.0.0.11", "port": 443}]},
            {"vip": "10.100.0.20", "port": 8080, "forwarding": "nat", "table_size": 251, "backends": [
                {"address": "10.1.0.11", "port": 80}, {"address": "10.1.0.12", "port": 80}]}]}"#,
            steps,
        )
    }

    /// [`walk`] from the configuration `config`.
    fn walk_from(config: &str, steps: &[&dyn Fn(&mut Runtime)]) {
        let c = Config::parse(config).unwrap();
        let mut r = Runtime::from_config(&c, Health::Up).unwrap();
        let mut maps = CheckedMaps::default();
        let mut old = Image::default();
        let initial: &dyn Fn(&mut Runtime) = &|_| {};
        for step in std::iter::once(&initial).chain(steps.iter()) {
            step(&mut r);
            let new = r.image(&neighbours);
            let resets = maps.service_stats_resets.len();
            apply(&mut maps, &old, &new).unwrap();
            // Only a new service's id starts its statistics afresh (either family).
            for id in &maps.service_stats_resets[resets..] {
                assert!(
                    !old.service_ids().any(|o| o == *id),
                    "the statistics of service {id}, live before, were reset"
                );
            }
            assert_eq!(maps.services, new.services);
            assert_eq!(maps.vips, new.vips);
            assert_eq!(maps.nat_backends, new.nat_backends);
            assert_eq!(maps.services6, new.services6);
            assert_eq!(maps.vips6, new.vips6);
            assert_eq!(maps.nat_backends6, new.nat_backends6);
            for (i, a) in &new.backend_addrs6 {
                assert_eq!(&maps.backend_addrs6[i], a);
            }
            assert_eq!(maps.timeouts, new.timeouts);
            for (id, t) in &new.tables {
                assert_eq!(&maps.tables[id], t.as_ref());
            }
            for (i, b) in &new.backends {
                assert_eq!(&maps.backends[i], b);
            }
            old = new;
        }
    }

    fn k(s: &str) -> crate::config::ServiceKey {
        s.parse().unwrap()
    }
    fn a(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap()
    }

    /// Both families side by side: IPv6 services get their own maps, share ids, backend
    /// indexes and tables, and every write keeps both consistent.
    #[test]
    fn ipv6_services_keep_the_datapath_consistent() {
        walk_from(
            r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [{"address": "10.0.0.11"}]},
            {"vip": "2001:db8::10", "port": 80, "table_size": 251, "backends": [
                {"address": "2001:db8::11"}, {"address": "2001:db8::12"}, {"address": "2001:db8::13", "backup": true}]},
            {"vip": "2001:db8::20", "port": 8080, "forwarding": "nat", "table_size": 251, "backends": [
                {"address": "2001:db8:1::11", "port": 80}, {"address": "2001:db8:1::12", "port": 80}]}]}"#,
            &[
                &|r| {
                    r.set_backend(
                        &k("[2001:db8::10]:80/tcp"),
                        a("[2001:db8::11]:80"),
                        None,
                        Some(AdminState::Maint),
                    )
                    .unwrap()
                },
                &|r| {
                    r.set_health(
                        &k("[2001:db8::20]:8080/tcp"),
                        a("[2001:db8:1::11]:80"),
                        Health::Down,
                    );
                },
                &|r| {
                    r.remove_backend(&k("[2001:db8::20]:8080/tcp"), a("[2001:db8:1::12]:80"))
                        .unwrap()
                },
                &|r| {
                    r.add_backend(
                        &k("[2001:db8::20]:8080/tcp"),
                        serde_json::from_str(r#"{"address": "2001:db8:1::14", "port": 80}"#)
                            .unwrap(),
                        Health::Up,
                    )
                    .unwrap()
                },
                &|r| r.remove_service(&k("[2001:db8::10]:80/tcp")).unwrap(),
                &|r| {
                    let mut c = r.to_config();
                    c.services[1].table_size = 509;
                    r.reload(&c, Health::Up).unwrap();
                },
                &|r| r.remove_service(&k("[2001:db8::20]:8080/tcp")).unwrap(),
            ],
        );
    }

    #[test]
    fn every_write_keeps_the_datapath_consistent() {
        walk(&[
            &|r| {
                r.set_backend(
                    &k("10.100.0.10:80/tcp"),
                    a("10.0.0.11:80"),
                    None,
                    Some(AdminState::Maint),
                )
                .unwrap()
            },
            &|r| {
                r.set_health(&k("10.100.0.10:80/tcp"), a("10.0.0.12:80"), Health::Down);
            },
            &|r| {
                r.remove_backend(&k("10.100.0.10:80/tcp"), a("10.0.0.13:80"))
                    .unwrap()
            },
            &|r| {
                r.add_backend(
                    &k("10.100.0.10:80/tcp"),
                    serde_json::from_str(r#"{"address": "10.0.0.14"}"#).unwrap(),
                    Health::Up,
                )
                .unwrap()
            },
            // A NAT backend moves to another NAT service in one reload.
            &|r| {
                let mut c = r.to_config();
                let moved = c.services[2].backends.remove(1);
                let mut other = c.services[2].clone();
                other.vip = "10.100.0.21".parse().unwrap();
                other.backends = vec![moved];
                c.services.push(other);
                r.reload(&c, Health::Up).unwrap();
            },
            &|r| r.remove_service(&k("10.100.0.21:8080/tcp")).unwrap(),
            &|r| r.remove_service(&k("10.100.0.20:8080/tcp")).unwrap(),
            &|r| r.remove_service(&k("10.100.0.10:443/tcp")).unwrap(),
            &|r| {
                let mut c = r.to_config();
                c.services[0].table_size = 131071;
                r.reload(&c, Health::Up).unwrap();
            },
            &|r| {
                let mut c = r.to_config();
                c.services[0].table_size = 251;
                r.reload(&c, Health::Up).unwrap();
            },
            &|r| {
                r.set_backend(
                    &k("10.100.0.10:80/tcp"),
                    a("10.0.0.11:80"),
                    None,
                    Some(AdminState::Ready),
                )
                .unwrap()
            },
            &|r| r.remove_service(&k("10.100.0.10:80/tcp")).unwrap(),
        ]);
    }

    #[test]
    fn nothing_is_written_when_nothing_changed() {
        let c = Config::parse(r#"{"services": [{"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [{"address": "10.0.0.11"}]}]}"#).unwrap();
        let mut r = Runtime::from_config(&c, Health::Up).unwrap();
        let mut maps = CheckedMaps::default();
        let img = r.image(&neighbours);
        apply(&mut maps, &Image::default(), &img).unwrap();
        let writes = maps.writes;
        apply(&mut maps, &img, &r.image(&neighbours)).unwrap();
        assert_eq!(maps.writes, writes);
    }
}
