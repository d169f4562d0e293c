//! The connection table (`CONNTRACK`) seen from userspace: walks and deletes in batches
//! (for the sweeper and `lb conns`), single entries (for tests and tools). A
//! [`ConnTable`] has a file descriptor of its own, so the sweeper and the readers work
//! beside the controller.
use std::os::fd::{AsFd as _, AsRawFd as _};

use super::error::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{Flow, FlowKey};

use super::{
    batch::{self, Walk},
    maps::{get_if_present, remove_if_present, second_handle},
};

pub struct ConnTable {
    conntrack: HashMap<MapData, FlowKey, Flow>,
}

impl ConnTable {
    pub(super) fn new(conntrack: HashMap<MapData, FlowKey, Flow>) -> Self {
        ConnTable { conntrack }
    }

    /// Another handle on the same map.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(ConnTable {
            conntrack: second_handle(&self.conntrack, Map::LruHashMap)?,
        })
    }

    fn fd(&self) -> i32 {
        aya::maps::IterableMap::map(&self.conntrack)
            .fd()
            .as_fd()
            .as_raw_fd()
    }

    /// Every connection-table entry (a snapshot; entries may come and go meanwhile).
    /// Whole-table reads are for tests and tools: the daemon walks in batches.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        batch::dump(self.fd()).context("reading CONNTRACK")
    }

    /// The next batch of about `chunk` entries of `walk` (see [`Walk`]), `None` at the end.
    pub fn walk(&self, walk: &mut Walk, chunk: usize) -> Result<Option<Vec<(FlowKey, Flow)>>> {
        walk.next(self.fd(), chunk).context("reading CONNTRACK")
    }

    /// Deletes connection-table entries (missing ones are fine).
    pub fn remove_flows(&self, keys: &[FlowKey]) -> Result<()> {
        batch::delete(self.fd(), keys).context("deleting from CONNTRACK")
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>> {
        get_if_present(&self.conntrack, key).context("reading CONNTRACK")
    }

    pub fn insert_flow(&mut self, key: FlowKey, flow: Flow) -> Result<()> {
        self.conntrack
            .insert(key, flow, 0)
            .context("writing CONNTRACK")
    }

    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        remove_if_present(&mut self.conntrack, key).context("removing from CONNTRACK")
    }

    /// Writes many entries at once (benchmarks and tests fill the table with it).
    pub fn insert_flows(&self, keys: &[FlowKey], flows: &[Flow]) -> Result<()> {
        batch::update(self.fd(), keys, flows).context("writing CONNTRACK")
    }
}
