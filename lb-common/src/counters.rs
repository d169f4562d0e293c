//! Global datapath counters: one per packet outcome, so every packet is counted once.

/// Index into the global per-CPU `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not an IPv4 frame (ARP, IPv6, ...): handed to the kernel untouched.
    PassNotIpv4 = 0,
}

impl Counter {
    /// Number of counters; the length of the `STATS` map.
    pub const COUNT: u32 = 1;
    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [Counter::PassNotIpv4];

    /// The stable name used by `lb stats` and the metrics endpoint.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotIpv4 => "pass_not_ipv4",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order_with_unique_names() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} is out of order");
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len(), "duplicate counter names");
    }
}
