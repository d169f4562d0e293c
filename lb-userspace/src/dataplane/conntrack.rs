//! The connection tables (`CONNTRACK`, `NAT_REVERSE`) seen from userspace: whole-table
//! reads and deletes in batches (for the sweeper and `lb conns`), single entries (for
//! tests and tools). A [`ConnTable`] has file descriptors of its own, so the sweeper and
//! the readers work beside the controller.
use std::os::fd::{AsFd as _, AsRawFd as _};

use super::error::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{Flow, FlowKey, NatReverse};

use super::{
    batch,
    maps::{get_if_present, remove_if_present, second_handle},
};

pub struct ConnTable {
    conntrack: HashMap<MapData, FlowKey, Flow>,
    nat_reverse: HashMap<MapData, FlowKey, NatReverse>,
}

impl ConnTable {
    pub(super) fn new(
        conntrack: HashMap<MapData, FlowKey, Flow>,
        nat_reverse: HashMap<MapData, FlowKey, NatReverse>,
    ) -> Self {
        ConnTable {
            conntrack,
            nat_reverse,
        }
    }

    /// Another handle on the same maps.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(ConnTable {
            conntrack: second_handle(&self.conntrack, Map::LruHashMap)?,
            nat_reverse: second_handle(&self.nat_reverse, Map::LruHashMap)?,
        })
    }

    fn conntrack_fd(&self) -> i32 {
        aya::maps::IterableMap::map(&self.conntrack)
            .fd()
            .as_fd()
            .as_raw_fd()
    }

    fn nat_reverse_fd(&self) -> i32 {
        aya::maps::IterableMap::map(&self.nat_reverse)
            .fd()
            .as_fd()
            .as_raw_fd()
    }

    /// Every connection-table entry (a snapshot; entries may come and go meanwhile).
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        batch::dump(self.conntrack_fd()).context("reading CONNTRACK")
    }

    /// Deletes connection-table entries (missing ones are fine).
    pub fn remove_flows(&self, keys: &[FlowKey]) -> Result<()> {
        batch::delete(self.conntrack_fd(), keys).context("deleting from CONNTRACK")
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

    /// Every NAT reverse entry (a snapshot).
    pub fn nat_reverse_entries(&self) -> Result<Vec<(FlowKey, NatReverse)>> {
        batch::dump(self.nat_reverse_fd()).context("reading NAT_REVERSE")
    }

    /// Deletes NAT reverse entries (missing ones are fine).
    pub fn remove_nat_reverses(&self, keys: &[FlowKey]) -> Result<()> {
        batch::delete(self.nat_reverse_fd(), keys).context("deleting from NAT_REVERSE")
    }

    pub fn nat_reverse(&self, key: &FlowKey) -> Result<Option<NatReverse>> {
        get_if_present(&self.nat_reverse, key).context("reading NAT_REVERSE")
    }

    pub fn remove_nat_reverse(&mut self, key: &FlowKey) -> Result<()> {
        remove_if_present(&mut self.nat_reverse, key).context("removing from NAT_REVERSE")
    }
}
