//! Writing the difference between two [`Image`]s into the datapath, in an order that
//! never shows a packet an inconsistent state (pure: the writes go through [`Maps`]).
//!
//! Invariants a packet may rely on at every moment (the tests check them after every
//! single write):
//! 1. every service in `SERVICES` has a table, and every slot of it names a backend whose
//!    record is live and not flagged re-pick;
//! 2. every service's VIP is in `VIPS` and every live NAT backend in `NAT_BACKENDS` (its
//!    replies are translated back; the prefilters are kept with both by `Dataplane`);
//! 3. a table never shrinks under a service record that still announces the old size
//!    (slot = hash % size must stay inside the table).
//!
//! Order: (1) timeouts, counts, NAT reply translations and backend records that become
//! usable; (2) tables; (3) service records; then, retiring: (4) service records that
//! go, (5) their counts, (6) backend records that stop being usable or go, then the NAT
//! reply translations of those that went, (7) tables of services that went (replaced by
//! empty ones, which frees their memory).
use std::{collections::BTreeSet, sync::Arc};

use lb_common::{
    BACKEND_F_LIVE, BACKEND_F_REPICK, Backend, NO_BACKEND, NatBackend, NatBackendKey, Service,
    ServiceKey, Timeouts,
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

/// Brings the datapath from `old` to `new`. On error the datapath may hold a mix of both,
/// still consistent (every step keeps the invariants); applying `new` again finishes it.
pub fn apply<M: Maps + ?Sized>(maps: &mut M, old: &Image, new: &Image) -> Result<(), M::Error> {
    // (1) timeouts, counts that grow, NAT reply translations, backend records that
    // become (or stay) usable.
    if old.timeouts != new.timeouts {
        maps.set_timeouts(new.timeouts)?;
    }
    for (addr, n) in &new.vips {
        if old.vips.get(addr).is_none_or(|o| o < n) {
            maps.set_vip(*addr, *n)?;
        }
    }
    for (key, back) in &new.nat_backends {
        if old.nat_backends.get(key) != Some(back) {
            maps.set_nat_backend(*key, Some(*back))?;
        }
    }
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
        let is_new_id = !old.services.values().any(|s| s.id == *id);
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
    for (key, svc) in &new.services {
        if old.services.get(key) != Some(svc) {
            maps.set_service(*key, *svc)?;
        }
    }
    // A table that was padded in (2) can shrink now that its record has the new size.
    for (id, table) in &new.tables {
        if old.tables.get(id).is_some_and(|t| t.len() > table.len()) && !table.is_empty() {
            maps.set_table(*id, table)?;
        }
    }
    // (4) services that go.
    for key in old.services.keys() {
        if !new.services.contains_key(key) {
            maps.remove_service(key)?;
        }
    }
    // (5) counts that shrink.
    for (addr, n) in &old.vips {
        let now = new.vips.get(addr).copied().unwrap_or(0);
        if now < *n {
            maps.set_vip(*addr, now)?;
        }
    }
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
    for key in old.nat_backends.keys() {
        if !new.nat_backends.contains_key(key) {
            maps.set_nat_backend(*key, None)?;
        }
    }
    // (7) tables of services that went: an empty table frees the old one's memory.
    let live: BTreeSet<u32> = new.services.values().map(|s| s.id).collect();
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
    use std::collections::BTreeMap;

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
        pub writes: usize,
        /// The write (counted from 1) that fails, to test rollbacks.
        pub fail_at: Option<usize>,
        pub grace_requests: std::cell::Cell<u64>,
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

        fn check(&mut self) -> Result<()> {
            for (key, svc) in &self.services {
                let table = self.tables.get(&svc.id).unwrap_or_else(|| {
                    panic!("write {}: service {key:?} has no table", self.writes)
                });
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
                }
                assert!(
                    self.vips.get(&key.vip).is_some_and(|n| *n > 0),
                    "write {}: VIP of {key:?} missing from VIPS",
                    self.writes
                );
                if svc.flags & lb_common::SERVICE_F_NAT != 0 {
                    for be in self
                        .backends
                        .values()
                        .filter(|b| b.service == svc.id && b.flags != 0)
                    {
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
        fn reset_backend_stats(&mut self, _: u32) -> Result<()> {
            Ok(())
        }
        fn reset_service_stats(&mut self, _: u32) -> Result<()> {
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

    fn neighbours(a: std::net::Ipv4Addr) -> Option<Neighbour> {
        Some(Neighbour {
            ifindex: 3,
            mac: [2, 0, 0, 0, 0, a.octets()[3]],
            src_mac: [2, 0, 0, 0, 0, 1],
        })
    }

    /// Applies a sequence of runtime changes, each through the checked fake, and checks
    /// the fake ends equal to the last image.
    fn walk(steps: &[&dyn Fn(&mut Runtime)]) {
        let c = Config::parse(
            r#"{"services": [
            {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
                {"address": "10.0.0.11"}, {"address": "10.0.0.12"}, {"address": "10.0.0.13", "backup": true}]},
            {"vip": "10.100.0.10", "port": 443, "table_size": 509, "backends": [{"address": "10.0.0.11", "port": 443}]},
            {"vip": "10.100.0.20", "port": 8080, "forwarding": "nat", "table_size": 251, "backends": [
                {"address": "10.1.0.11", "port": 80}, {"address": "10.1.0.12", "port": 80}]}]}"#,
        )
        .unwrap();
        let mut r = Runtime::from_config(&c, Health::Up).unwrap();
        let mut maps = CheckedMaps::default();
        let mut old = Image::default();
        let initial: &dyn Fn(&mut Runtime) = &|_| {};
        for step in std::iter::once(&initial).chain(steps.iter()) {
            step(&mut r);
            let new = r.image(&neighbours);
            apply(&mut maps, &old, &new).unwrap();
            assert_eq!(maps.services, new.services);
            assert_eq!(maps.vips, new.vips);
            assert_eq!(maps.nat_backends, new.nat_backends);
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
    fn a(s: &str) -> std::net::SocketAddrV4 {
        s.parse().unwrap()
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
