//! The datapath's address prefilters (`VIP_FILTER`, `NAT_FILTER`): a bitmap the XDP
//! program tests before it looks an address up in a hash map, so most packets that are
//! not for lb cost one array read. Each 64-bit word is written with one map update, so
//! the datapath sees a word either before or after a change, never half of it.
use std::collections::BTreeSet;

use aya::maps::MapError;
use aya::maps::{Array, MapData};
use lb_common::{Addr6, filter_bit, filter_bit6};

/// An address of either family in the datapath's form (IPv4: network order; IPv6:
/// `lb_common::Addr6`). Both families share the two prefilters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum FilterAddr {
    V4(u32),
    V6(Addr6),
}

impl FilterAddr {
    /// Its (word, bit) in a prefilter.
    fn bit(&self) -> (u32, u64) {
        match self {
            FilterAddr::V4(a) => filter_bit(*a),
            FilterAddr::V6(a) => filter_bit6(a),
        }
    }
}

/// A prefilter map and the set of addresses it was built from.
pub(super) struct AddressFilter {
    map: Array<MapData, u64>,
    addrs: BTreeSet<FilterAddr>,
}

/// Word `index` of the bitmap of `addrs`.
fn word(addrs: &BTreeSet<FilterAddr>, index: u32) -> u64 {
    addrs
        .iter()
        .map(FilterAddr::bit)
        .filter(|(w, _)| *w == index)
        .fold(0, |acc, (_, bit)| acc | bit)
}

impl AddressFilter {
    pub(super) fn new(map: Array<MapData, u64>) -> Self {
        AddressFilter {
            map,
            addrs: BTreeSet::new(),
        }
    }

    /// Counts an address the map already holds (a pinned datapath being adopted).
    pub(super) fn adopt(&mut self, addr: FilterAddr) {
        self.addrs.insert(addr);
    }

    pub(super) fn add(&mut self, addr: FilterAddr) -> Result<(), MapError> {
        if self.addrs.insert(addr) {
            let (index, _) = addr.bit();
            self.map.set(index, word(&self.addrs, index), 0)?;
        }
        Ok(())
    }

    pub(super) fn remove(&mut self, addr: FilterAddr) -> Result<(), MapError> {
        if self.addrs.remove(&addr) {
            let (index, _) = addr.bit();
            self.map.set(index, word(&self.addrs, index), 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_holds_the_bits_of_its_addresses_only() {
        let a = FilterAddr::V4(u32::from_ne_bytes([10, 100, 0, 10]));
        let b = FilterAddr::V6(lb_common::ipv6_words([
            0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]));
        let (wa, bit_a) = a.bit();
        let (wb, bit_b) = b.bit();
        let set = BTreeSet::from([a, b]);
        if wa == wb {
            assert_eq!(word(&set, wa), bit_a | bit_b);
        } else {
            assert_eq!(word(&set, wa), bit_a);
            assert_eq!(word(&set, wb), bit_b);
        }
        let only_b = BTreeSet::from([b]);
        assert_eq!(
            word(&only_b, wa) & bit_a,
            if bit_a == bit_b && wa == wb { bit_a } else { 0 },
            "removing an address clears its bit unless another address shares it"
        );
    }
}
