//! Reading the datapath's counters (`STATS`, `SERVICE_STATS`, `BACKEND_STATS`): per-CPU
//! arrays summed over CPUs. A [`Counters`] has file descriptors of its own, so readers
//! (requests, metrics, rate samples) use theirs beside the controller, which writes.
use super::error::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use lb_common::{Counter, TrafficStats};

use super::maps::second_handle;

pub struct Counters {
    stats: PerCpuArray<MapData, u64>,
    service_stats: PerCpuArray<MapData, TrafficStats>,
    backend_stats: PerCpuArray<MapData, TrafficStats>,
}

impl Counters {
    pub(super) fn new(
        stats: PerCpuArray<MapData, u64>,
        service_stats: PerCpuArray<MapData, TrafficStats>,
        backend_stats: PerCpuArray<MapData, TrafficStats>,
    ) -> Self {
        Counters {
            stats,
            service_stats,
            backend_stats,
        }
    }

    /// Another handle on the same maps.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Counters {
            stats: second_handle(&self.stats, Map::PerCpuArray)?,
            service_stats: second_handle(&self.service_stats, Map::PerCpuArray)?,
            backend_stats: second_handle(&self.backend_stats, Map::PerCpuArray)?,
        })
    }

    /// Global counters, summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<u64>> {
        Counter::ALL
            .iter()
            .map(|c| {
                let v = self.stats.get(&(*c as u32), 0).context("reading STATS")?;
                Ok(v.iter().sum())
            })
            .collect()
    }

    pub fn service_stats(&self, id: u32) -> Result<TrafficStats> {
        sum_stats(&self.service_stats, id).context("reading SERVICE_STATS")
    }

    pub fn backend_stats(&self, index: u32) -> Result<TrafficStats> {
        sum_stats(&self.backend_stats, index).context("reading BACKEND_STATS")
    }

    /// Zeroes the statistics of a backend index (before it is given to a new backend).
    pub fn reset_backend_stats(&mut self, index: u32) -> Result<()> {
        self.backend_stats
            .set(index, zeroes()?, 0)
            .context("writing BACKEND_STATS")
    }

    /// Zeroes the statistics of a service id (before it is given to a new service).
    pub fn reset_service_stats(&mut self, id: u32) -> Result<()> {
        self.service_stats
            .set(id, zeroes()?, 0)
            .context("writing SERVICE_STATS")
    }
}

fn zeroes() -> Result<PerCpuValues<TrafficStats>> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting CPUs")?;
    PerCpuValues::try_from(vec![TrafficStats::default(); cpus]).context("sizing per-CPU values")
}

fn sum_stats(
    map: &PerCpuArray<MapData, TrafficStats>,
    index: u32,
) -> Result<TrafficStats, aya::maps::MapError> {
    let per_cpu = map.get(&index, 0)?;
    Ok(per_cpu.iter().fold(TrafficStats::default(), |mut a, s| {
        a.packets += s.packets;
        a.bytes += s.bytes;
        a.new_flows += s.new_flows;
        a.packets_out += s.packets_out;
        a.bytes_out += s.bytes_out;
        a
    }))
}
