//! The connection tables (`CONNTRACK`, `CONNTRACK6`) seen from userspace: walks and
//! deletes in batches (for the sweeper and `lb conns`), single entries (for tests and
//! tools). A [`ConnTable`] has file descriptors of its own, so the sweeper and the
//! readers work beside the controller.
use std::os::fd::{AsFd as _, AsRawFd as _};

use super::error::{Context as _, Result};
use aya::maps::{HashMap, IterableMap, Map, MapData};
use lb_common::{Flow, FlowKey, FlowKey6};

use super::{
    batch::{self, Walk},
    maps::{get_if_present, remove_if_present, second_handle},
};

pub struct ConnTable {
    conntrack: HashMap<MapData, FlowKey, Flow>,
    conntrack6: HashMap<MapData, FlowKey6, Flow>,
}

/// The raw fd of a table.
fn fd<K: aya::Pod>(map: &HashMap<MapData, K, Flow>) -> i32 {
    IterableMap::map(map).fd().as_fd().as_raw_fd()
}

impl ConnTable {
    pub(super) fn new(
        conntrack: HashMap<MapData, FlowKey, Flow>,
        conntrack6: HashMap<MapData, FlowKey6, Flow>,
    ) -> Self {
        ConnTable {
            conntrack,
            conntrack6,
        }
    }

    /// Other handles on the same maps.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(ConnTable {
            conntrack: second_handle(&self.conntrack, Map::LruHashMap)?,
            conntrack6: second_handle(&self.conntrack6, Map::LruHashMap)?,
        })
    }

    /// Every IPv4 connection-table entry (a snapshot; entries may come and go
    /// meanwhile). Whole-table reads are for tests and tools: the daemon walks in batches.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        batch::dump(fd(&self.conntrack)).context("reading CONNTRACK")
    }

    /// Every IPv6 connection-table entry (see [`Self::flows`]).
    pub fn flows6(&self) -> Result<Vec<(FlowKey6, Flow)>> {
        batch::dump(fd(&self.conntrack6)).context("reading CONNTRACK6")
    }

    /// The next batch of about `chunk` IPv4 entries of `walk` (see [`Walk`]), `None` at
    /// the end.
    pub fn walk(&self, walk: &mut Walk, chunk: usize) -> Result<Option<Vec<(FlowKey, Flow)>>> {
        walk.next(fd(&self.conntrack), chunk)
            .context("reading CONNTRACK")
    }

    /// The next batch of IPv6 entries of `walk` (see [`Self::walk`]).
    pub fn walk6(&self, walk: &mut Walk, chunk: usize) -> Result<Option<Vec<(FlowKey6, Flow)>>> {
        walk.next(fd(&self.conntrack6), chunk)
            .context("reading CONNTRACK6")
    }

    /// Deletes IPv4 connection-table entries (missing ones are fine).
    pub fn remove_flows(&self, keys: &[FlowKey]) -> Result<()> {
        batch::delete(fd(&self.conntrack), keys).context("deleting from CONNTRACK")
    }

    /// Deletes IPv6 connection-table entries (missing ones are fine).
    pub fn remove_flows6(&self, keys: &[FlowKey6]) -> Result<()> {
        batch::delete(fd(&self.conntrack6), keys).context("deleting from CONNTRACK6")
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>> {
        get_if_present(&self.conntrack, key).context("reading CONNTRACK")
    }

    pub fn flow6(&self, key: &FlowKey6) -> Result<Option<Flow>> {
        get_if_present(&self.conntrack6, key).context("reading CONNTRACK6")
    }

    pub fn insert_flow(&mut self, key: FlowKey, flow: Flow) -> Result<()> {
        self.conntrack
            .insert(key, flow, 0)
            .context("writing CONNTRACK")
    }

    pub fn insert_flow6(&mut self, key: FlowKey6, flow: Flow) -> Result<()> {
        self.conntrack6
            .insert(key, flow, 0)
            .context("writing CONNTRACK6")
    }

    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        remove_if_present(&mut self.conntrack, key).context("removing from CONNTRACK")
    }

    pub fn remove_flow6(&mut self, key: &FlowKey6) -> Result<()> {
        remove_if_present(&mut self.conntrack6, key).context("removing from CONNTRACK6")
    }

    /// Writes many IPv4 entries at once (benchmarks and tests fill the table with it).
    pub fn insert_flows(&self, keys: &[FlowKey], flows: &[Flow]) -> Result<()> {
        batch::update(fd(&self.conntrack), keys, flows).context("writing CONNTRACK")
    }

    /// Writes many IPv6 entries at once.
    pub fn insert_flows6(&self, keys: &[FlowKey6], flows: &[Flow]) -> Result<()> {
        batch::update(fd(&self.conntrack6), keys, flows).context("writing CONNTRACK6")
    }
}
