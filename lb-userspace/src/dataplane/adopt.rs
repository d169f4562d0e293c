//! Taking over a pinned datapath: what its maps hold, read back so that a new daemon
//! continues where the last one stopped (same service ids, backend indexes and epochs,
//! the same tables), and the writer's own bookkeeping rebuilt from them.
use std::collections::BTreeMap;

use aya::maps::{IterableMap as _, MapError};
use lb_common::{BACKEND_F_IPV6, TableChunk, table_index};

pub use crate::model::adopt::Pinned;

use super::{
    Dataplane, Record,
    error::{Context as _, Result},
    filter::FilterAddr,
    tables::{Mmap, TableGens},
};

/// An address marker of `NAT_BACKENDS` or `NAT_BACKENDS6` (kept by
/// `Dataplane::set_nat_backend`, `set_nat_backend6`).
pub(super) fn is_marker<A>(k: &lb_common::NatBackendKeyOf<A>) -> bool {
    k.port == 0 && k.proto == 0
}

fn entries<K: aya::Pod + Ord, V: aya::Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &str,
) -> Result<BTreeMap<K, V>> {
    map.iter()
        .collect::<std::result::Result<BTreeMap<K, V>, MapError>>()
        .with_context(|| format!("reading {name}"))
}

impl Dataplane {
    /// Reads the datapath this dataplane was loaded over (its pins) and takes it over:
    /// the table generations (mapped again), the service records and the prefilters'
    /// address sets are rebuilt from the maps, so the next writes continue them.
    pub fn adopt(&mut self) -> Result<Pinned> {
        let mut p = Pinned {
            services: entries(&self.services, "SERVICES")?,
            vips: entries(&self.vips, "VIPS")?,
            nat_backends: entries(&self.nat_backends, "NAT_BACKENDS")?
                .into_iter()
                .filter(|(k, _)| !is_marker(k))
                .collect(),
            timeouts: self.timeouts.get(&0, 0).context("reading TIMEOUTS")?,
            services6: entries(&self.services6, "SERVICES6")?,
            vips6: entries(&self.vips6, "VIPS6")?,
            nat_backends6: entries(&self.nat_backends6, "NAT_BACKENDS6")?
                .into_iter()
                .filter(|(k, _)| !is_marker(k))
                .collect(),
            ..Default::default()
        };
        for (i, be) in self.backends.iter().enumerate() {
            let be = be.context("reading BACKENDS")?;
            if be.epoch != 0 {
                p.backends.insert(i as u32, be);
                if be.flags & BACKEND_F_IPV6 != 0 {
                    p.backend_addrs6
                        .insert(i as u32, self.backend_addr6(i as u32)?);
                }
            }
        }
        let records = p
            .services
            .iter()
            .map(|(k, s)| Record::V4(*k, *s))
            .chain(p.services6.iter().map(|(k, s)| Record::V6(*k, s.common())))
            .collect::<Vec<_>>();
        for record in records {
            let svc = *record.svc();
            let mut gens = TableGens {
                live: svc.table_gen,
                ..Default::default()
            };
            for generation in 0..2u32 {
                let inner = match self.tables.get(&table_index(svc.id, generation), 0) {
                    Ok(inner) => inner,
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(e).context("reading TABLES"),
                };
                let chunks = inner
                    .map()
                    .info()
                    .context("reading a Maglev table's info")?;
                let bytes = chunks.max_entries() as usize * size_of::<TableChunk>();
                let fd =
                    std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(inner.map().fd()));
                let mapped = Mmap::new(fd, bytes).context("mapping a pinned Maglev table")?;
                if generation == svc.table_gen {
                    let words = mapped.as_u32_slice();
                    let size = (svc.table_size as usize).min(words.len());
                    p.tables.insert(svc.id, words[..size].to_vec());
                }
                gens.maps[generation as usize] = Some(mapped);
            }
            // A generation retired just before the last daemon went may still be read by
            // a packet: wait a grace period before writing it again.
            gens.retired = self.grace.request();
            self.gens.insert(svc.id, gens);
            self.records.insert(svc.id, record);
        }
        for addr in p.vips.keys() {
            self.vip_filter.adopt(FilterAddr::V4(*addr));
        }
        for addr in p.vips6.keys() {
            self.vip_filter.adopt(FilterAddr::V6(*addr));
        }
        for key in p.nat_backends.keys() {
            self.nat_filter.adopt(FilterAddr::V4(key.addr));
            self.nat_keys.insert(*key);
        }
        for key in p.nat_backends6.keys() {
            self.nat_filter.adopt(FilterAddr::V6(key.addr));
            self.nat_keys6.insert(*key);
        }
        Ok(p)
    }
}
