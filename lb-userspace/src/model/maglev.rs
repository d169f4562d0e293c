//! Weighted Maglev table builder (pure: no aya, no I/O).
//!
//! The datapath picks a backend for a new flow by hashing the flow's 5-tuple into one slot
//! of the service's Maglev table; this module computes that table from the service's
//! backends and their weights. The control plane calls [`build`] on every change of the
//! backend set (configuration, health) and swaps the result into the kernel, so the
//! builder has to be fast (well under the 5 ms rebuild-and-swap budget for 65537 slots and
//! 1000 backends) and must move as few slots as possible between surviving backends.
//!
//! # Algorithm
//!
//! Maglev hashing (Eisenbud et al., NSDI 2016) with the weighted population scheme of
//! Facebook's Katran:
//!
//! - Each backend gets a permutation of the slots `0..size`: with two hashes `h1`, `h2` of
//!   its address and port, `offset = h1 % size` and `skip = h2 % (size - 1) + 1`, the
//!   permutation is `offset, offset + skip, offset + 2·skip, …` modulo `size`. Because
//!   `size` is prime and `1 <= skip < size`, it visits every slot exactly once.
//! - The table is filled in rounds. Each round, every backend (in a fixed order) adds its
//!   weight to an accumulator; when the accumulator reaches the largest weight, the
//!   backend takes the next still-free slot of its permutation and the accumulator drops
//!   by the largest weight. Filling stops as soon as every slot is taken. A backend of the
//!   largest weight thus takes a slot every round, one of half that weight every other
//!   round, and so on; with equal weights this is plain Maglev, where slot counts differ
//!   by at most one.
//!
//! Stepping through every round costs `rounds × backends` even when most backends are
//! idle (one heavy backend among many light ones: up to `size × backends`). The builder
//! instead computes when each backend acts: from a zero accumulator, a backend of weight
//! `w` takes its `k`-th slot in round `ceil(k · max / w)`. A calendar (one list per round)
//! holds each backend's next turn, and each round's turns are taken in the fixed backend
//! order, which replays exactly the sequence of Katran's loop (a unit test compares the
//! two) at a cost proportional to the number of slots. The permutation walks keep one
//! cursor per backend (`next = (cur + skip) % size`), probe a bitmap of taken slots
//! (8 KiB for 65537 slots) and allocate nothing per slot. Most of the time goes to those
//! walks: near the end few slots are free, and the walks make about `size · ln(size)`
//! probes in all (about 750 000 for 65537 slots), whatever the number of backends.
//!
//! # Determinism
//!
//! The table depends only on the *set* of `(address, port, weight)` given, never on the
//! order of the input, the machine, the run or the Rust version:
//!
//! - backends are sorted by address, then port, before filling (the slots record positions
//!   in the caller's slice, which play no part in the filling);
//! - the hashes are fixed arithmetic written out here (`hash`: the murmur3 64-bit
//!   finalizer over address and port, with two seeds), not `std`'s hashers, whose keys and
//!   algorithm may change between Rust versions; a unit test pins their output;
//! - there is no randomness and no floating point.
//!
//! Backends of weight 0 are dropped before anything else, so they get no slot and leave
//! the others' slots exactly as if they were absent.
//!
//! Two candidates with the same address and port are a caller bug; the builder does not
//! reject them but treats them as distinct backends told apart by position: each takes
//! slots on its own (they share one permutation), ordered among themselves by weight, then
//! position. Their positions in the result then depend on the input order, but the table
//! read by address does not when the duplicates have the same weight.

use std::net::SocketAddr;

/// One backend offered to the builder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Identity: the backend's address and port. Never the insertion order.
    pub addr: SocketAddr,
    /// Relative weight; 0 means "gets no slot".
    pub weight: u32,
}

/// Seed of the hash that gives a backend's permutation `offset`.
const OFFSET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Seed of the hash that gives a backend's permutation `skip`.
const SKIP_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The fixed 64-bit hash of a backend's address and port under `seed`.
///
/// The 6 bytes (address then port, both big-endian, i.e. `a.b.c.d:p` as
/// `0x0000_aabb_ccdd_pppp`) are packed into a `u64`, XORed with the seed and run through
/// the murmur3 `fmix64` finalizer. Packing and finalizer are both bijections, so distinct
/// backends never share a hash under one seed, and the finalizer's avalanche makes the
/// two seeded variants behave as independent hashes. An IPv6 backend's 18 bytes go
/// through the finalizer three times (high half with the seed, then the low half, then
/// the port). Never change this function: every table built by `lb` would change with
/// it (the `hash_is_pinned` test guards it).
fn hash(addr: SocketAddr, seed: u64) -> u64 {
    match addr {
        SocketAddr::V4(a) => {
            fmix64(((u64::from(a.ip().to_bits()) << 16) | u64::from(a.port())) ^ seed)
        }
        SocketAddr::V6(a) => {
            let bits = a.ip().to_bits();
            let h = fmix64((bits >> 64) as u64 ^ seed);
            let h = fmix64(h ^ bits as u64);
            fmix64(h ^ u64::from(a.port()))
        }
    }
}

/// murmur3's `fmix64` finalizer.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The `(offset, skip)` of a backend's permutation in a table of `size` slots.
fn permutation(addr: SocketAddr, size: u32) -> (u32, u32) {
    let size = u64::from(size);
    // Both remainders are below `size`, itself a `u32`: the casts cannot truncate.
    let offset = (hash(addr, OFFSET_SEED) % size) as u32;
    let skip = (hash(addr, SKIP_SEED) % (size - 1) + 1) as u32;
    (offset, skip)
}

/// Whether `n` is prime (trial division: at most 2^15 divisions for a `u32`).
fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// A backend of weight > 0 while the table is being filled.
struct Backend {
    addr: SocketAddr,
    weight: u32,
    /// Position in the caller's `candidates`.
    pos: u32,
    skip: u32,
    /// The next slot of the permutation to try.
    cursor: u32,
    /// Slots taken so far.
    taken: u64,
}

/// Builds a Maglev lookup table of `size` slots (size is prime, >= 2).
/// Returns one entry per slot: the position in `candidates` of the backend that owns the
/// slot, or `None` for every slot when no candidate has a weight > 0.
///
/// The table is a function of the set of `(addr, weight)` only, not of the order of
/// `candidates` (see the [module documentation](self)). Candidates of weight 0 get no slot
/// and do not affect the others. Of `n` backends, one of weight `w` gets `size · w / Σw`
/// slots, give or take at most `2 + n · w / Σw` (with equal weights, slot counts differ by
/// at most one). Duplicate addresses are treated as distinct backends, told apart by
/// position (see the module documentation).
///
/// # Panics
///
/// If `size` is not a prime (a permutation would then not visit every slot), or if
/// `candidates` has `u32::MAX` entries or more.
#[must_use]
pub fn build(candidates: &[Candidate], size: u32) -> Vec<Option<u32>> {
    assert!(
        is_prime(size),
        "Maglev table size must be a prime >= 2, got {size}"
    );
    assert!(
        candidates.len() < u32::MAX as usize,
        "too many Maglev candidates: {}",
        candidates.len()
    );
    let mut table = vec![None; size as usize];

    let mut backends: Vec<Backend> = candidates
        .iter()
        .zip(0u32..)
        .filter(|(c, _)| c.weight > 0)
        .map(|(c, pos)| {
            let (offset, skip) = permutation(c.addr, size);
            Backend {
                addr: c.addr,
                weight: c.weight,
                pos,
                skip,
                cursor: offset,
                taken: 0,
            }
        })
        .collect();
    // The fill order. Address and port identify a backend; weight and position only
    // order duplicates (a caller bug), the position last so that the order is total.
    backends.sort_unstable_by_key(|b| (b.addr.ip(), b.addr.port(), b.weight, b.pos));
    let Some(max_weight) = backends.iter().map(|b| u64::from(b.weight)).max() else {
        return table;
    };

    // The round in which a backend of weight `w` takes its `k`-th slot (k >= 1): the
    // first round `r` with `r · w >= k · max`. k <= size and max < 2^32, so `k · max`
    // and the division's rounding fit in a u64.
    let round = |k: u64, w: u32| (k * max_weight).div_ceil(u64::from(w));
    let last = last_round(&backends, size, max_weight);

    let mut calendar = Calendar::new(last, backends.len());
    for (i, b) in (0u32..).zip(&backends) {
        calendar.schedule(i, round(1, b.weight));
    }

    // Which slots are taken, one bit each: the permutation walks probe this (8 KiB for
    // 65537 slots, so it stays in the L1 cache) rather than the table.
    let mut occupied = vec![0u64; (size as usize).div_ceil(64)];
    let mut filled = 0u32;
    let mut due = Vec::with_capacity(backends.len());
    for r in 1..=last {
        // This round's turns, in fill order as in Katran's loop.
        calendar.take(r, &mut due);
        for &i in &due {
            let b = &mut backends[i as usize];
            // A free slot exists (filled < size) and the permutation reaches every slot.
            let mut cur = b.cursor;
            while occupied[cur as usize / 64] & (1 << (cur % 64)) != 0 {
                cur = step(cur, b.skip, size);
            }
            occupied[cur as usize / 64] |= 1 << (cur % 64);
            table[cur as usize] = Some(b.pos);
            b.cursor = step(cur, b.skip, size);
            b.taken += 1;
            filled += 1;
            if filled == size {
                return table;
            }
            calendar.schedule(i, round(b.taken + 1, b.weight));
        }
    }
    unreachable!("Maglev table not full after {last} rounds: {filled} of {size} slots");
}

/// Which backends take a slot in which round: one singly linked list per round, so that
/// a round with few turns costs little however many backends there are.
struct Calendar {
    /// `first[r]`: the first backend (index in the sorted backends) of round `r`'s list.
    first: Vec<u32>,
    /// `link[i]`: the backend after backend `i` in the list it is in. A backend is in
    /// one list at a time (that of its next turn), or in none.
    link: Vec<u32>,
}

/// Ends a list of the [`Calendar`].
const NONE: u32 = u32::MAX;

impl Calendar {
    /// An empty calendar for rounds `1..=last` and `backends` backends.
    fn new(last: u64, backends: usize) -> Self {
        Calendar {
            first: vec![NONE; last as usize + 1],
            link: vec![NONE; backends],
        }
    }

    /// Gives backend `i` a turn in `round`; a round past the last is dropped.
    fn schedule(&mut self, i: u32, round: u64) {
        let slot = usize::try_from(round)
            .ok()
            .and_then(|r| self.first.get_mut(r));
        if let Some(first) = slot {
            self.link[i as usize] = *first;
            *first = i;
        }
    }

    /// Replaces the contents of `due` with the backends that have a turn in `round`,
    /// in fill order.
    fn take(&mut self, round: u64, due: &mut Vec<u32>) {
        due.clear();
        let mut i = self.first[round as usize];
        while i != NONE {
            due.push(i);
            i = self.link[i as usize];
        }
        // Lists are built by pushing at the front: with equal weights, reversing
        // restores the fill order and the sort only checks it.
        due.reverse();
        due.sort_unstable();
    }
}

/// The round by which the table of `size` slots is full: at most `size`, since a backend
/// of the largest weight takes a slot every round; and at most the first round `r` with
/// `Σ (r · w - (max - 1)) / max >= size`, since by the end of round `r` a backend of
/// weight `w` has taken `floor(r · w / max)` slots.
fn last_round(backends: &[Backend], size: u32, max_weight: u64) -> u64 {
    let n = backends.len() as u128;
    let total: u128 = backends.iter().map(|b| u128::from(b.weight)).sum();
    let max = u128::from(max_weight);
    let bound = (u128::from(size) * max + n * (max - 1)).div_ceil(total);
    // The minimum is at most `size`, a u32.
    bound.min(u128::from(size)) as u64
}

/// The slot after `cur` in a permutation of stride `skip` over `size` slots.
fn step(cur: u32, skip: u32, size: u32) -> u32 {
    let back = size - skip;
    if cur >= back { cur - back } else { cur + skip }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Instant;

    /// The default table size, as in the Maglev paper and Katran.
    const SIZE: u32 = 65537;

    /// A tiny seeded xorshift64* generator: deterministic test data without new crates.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            // Any seed, including 0, gives a non-zero state.
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Uniform enough in `lo..=hi` for tests.
        fn range(&mut self, lo: u32, hi: u32) -> u32 {
            lo + (self.next() % (u64::from(hi - lo) + 1)) as u32
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = (self.next() % (i as u64 + 1)) as usize;
                v.swap(i, j);
            }
        }
    }

    fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
    }

    /// `n` backends with distinct random addresses and ports and weights from `weight`.
    fn random_set(
        rng: &mut Rng,
        n: usize,
        mut weight: impl FnMut(&mut Rng) -> u32,
    ) -> Vec<Candidate> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let ip = IpAddr::V4(Ipv4Addr::from_bits(rng.next() as u32));
            let port = if rng.next().is_multiple_of(2) {
                80
            } else {
                rng.range(1, 65535) as u16
            };
            let addr = SocketAddr::new(ip, port);
            if seen.insert(addr) {
                let weight = weight(rng);
                out.push(Candidate { addr, weight });
            }
        }
        out
    }

    /// `n` backends as an operator would number them: 10.0.x.y:8080, consecutive.
    fn sequential_set(n: usize, weight: u32) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                addr: SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0001 + i as u32)),
                    8080,
                ),
                weight,
            })
            .collect()
    }

    /// Backend sets of `n` equal-weight backends: sequential, then random ones.
    fn equal_sets(n: usize, seed: u64) -> Vec<Vec<Candidate>> {
        let mut rng = Rng::new(seed);
        let mut sets = vec![sequential_set(n, 1)];
        for _ in 0..3 {
            sets.push(random_set(&mut rng, n, |_| 1));
        }
        sets
    }

    /// Slots per candidate position.
    fn counts(table: &[Option<u32>], n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for pos in table.iter().flatten() {
            counts[*pos as usize] += 1;
        }
        counts
    }

    /// The table with positions replaced by the addresses they point to.
    fn by_addr(table: &[Option<u32>], candidates: &[Candidate]) -> Vec<Option<SocketAddr>> {
        table
            .iter()
            .map(|p| p.map(|p| candidates[p as usize].addr))
            .collect()
    }

    /// A literal transcription of Katran's `MaglevHashV2::generateHashRing` (round by
    /// round, permutation entries recomputed as `(offset + j · skip) % size`), over the
    /// same sorted order and hashes as `build`: the reference for the heap schedule.
    fn reference(candidates: &[Candidate], size: u32) -> Vec<Option<u32>> {
        let mut order: Vec<u32> = (0..candidates.len() as u32)
            .filter(|&i| candidates[i as usize].weight > 0)
            .collect();
        order.sort_by_key(|&i| {
            let c = candidates[i as usize];
            (c.addr.ip(), c.addr.port(), c.weight, i)
        });
        let mut table = vec![None; size as usize];
        let Some(max) = order.iter().map(|&i| candidates[i as usize].weight).max() else {
            return table;
        };
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let (o, s) = permutation(candidates[i as usize].addr, size);
                (u64::from(o), u64::from(s))
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut cum = vec![0u64; order.len()];
        let mut runs = 0;
        loop {
            for (k, &i) in order.iter().enumerate() {
                cum[k] += u64::from(candidates[i as usize].weight);
                if cum[k] >= u64::from(max) {
                    cum[k] -= u64::from(max);
                    let (offset, skip) = perms[k];
                    let mut cur = (offset + next[k] * skip) % u64::from(size);
                    while table[cur as usize].is_some() {
                        next[k] += 1;
                        cur = (offset + next[k] * skip) % u64::from(size);
                    }
                    table[cur as usize] = Some(i);
                    next[k] += 1;
                    runs += 1;
                    if runs == size {
                        return table;
                    }
                }
            }
        }
    }

    #[test]
    fn hash_is_pinned() {
        // Computed independently with this Python transcription of `hash`:
        //   M = (1 << 64) - 1
        //   def fmix(h):
        //       h ^= h >> 33; h = (h * 0xff51afd7ed558ccd) & M
        //       h ^= h >> 33; h = (h * 0xc4ceb9fe1a85ec53) & M
        //       return h ^ (h >> 33)
        //   key = (0x0a000001 << 16) | 80                  # 10.0.0.1:80
        //   h1 = fmix(key ^ 0x9e3779b97f4a7c15)
        //   h2 = fmix(key ^ 0xc2b2ae3d27d4eb4f)
        //   print(hex(h1), hex(h2), h1 % 65537, h2 % 65536 + 1)
        let a = addr(10, 0, 0, 1, 80);
        assert_eq!(hash(a, OFFSET_SEED), H1);
        assert_eq!(hash(a, SKIP_SEED), H2);
        assert_eq!(permutation(a, SIZE), (OFFSET, SKIP));
    }
    // Output of the Python above: 0x108446c4322240b8 0x687515faa50e0434 17622 1077
    const H1: u64 = 0x1084_46c4_3222_40b8;
    const H2: u64 = 0x6875_15fa_a50e_0434;
    const OFFSET: u32 = 17622;
    const SKIP: u32 = 1077;

    #[test]
    fn ipv6_hash_is_pinned() {
        // The same Python's fmix, for [2001:db8::11]:8080:
        //   bits = int(ipaddress.IPv6Address('2001:db8::11'))
        //   h = fmix((bits >> 64) ^ seed); h = fmix(h ^ (bits & M)); h = fmix(h ^ 8080)
        let a: SocketAddr = "[2001:db8::11]:8080".parse().unwrap();
        assert_eq!(hash(a, OFFSET_SEED), 0x5c85_4511_500d_ac65);
        assert_eq!(hash(a, SKIP_SEED), 0x6d45_f677_fca5_f6f6);
    }

    #[test]
    fn matches_katran_round_loop() {
        let mut rng = Rng::new(1);
        for (n, size, max_w) in [
            (1, 251, 1),
            (2, 2, 5),
            (3, 251, 3),
            (10, 251, 1000),
            (10, 4093, 1),
            (37, 4093, 7),
            (100, 4093, 1000),
            (20, SIZE, 100),
        ] {
            for _ in 0..3 {
                let set = random_set(&mut rng, n, |r| r.range(0, max_w));
                assert_eq!(
                    build(&set, size),
                    reference(&set, size),
                    "n={n} size={size}"
                );
            }
        }
        // Very uneven weights: one backend acts every round, the others rarely.
        let mut set = sequential_set(50, 1);
        set[17].weight = 1_000_000;
        assert_eq!(build(&set, 4093), reference(&set, 4093));
    }

    #[test]
    fn equal_weights_balanced() {
        for size in [SIZE, 4093, 251] {
            for n in [1, 2, 3, 7, 10, 100, 1000] {
                for set in equal_sets(n, n as u64 * 31 + u64::from(size)) {
                    let table = build(&set, size);
                    assert!(table.iter().all(Option::is_some));
                    let c = counts(&table, n);
                    let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
                    assert!(max - min <= 1, "n={n} size={size}: {min}..{max}");
                }
            }
        }
    }

    #[test]
    fn weighted_shares_within_one_percent() {
        let mut rng = Rng::new(2);
        let mut worst = 0f64;
        for n in [1, 2, 3, 5, 10, 30, 100] {
            for _ in 0..5 {
                let set = random_set(&mut rng, n, |r| r.range(1, 1000));
                let table = build(&set, SIZE);
                let total: u64 = set.iter().map(|c| u64::from(c.weight)).sum();
                for (c, slots) in set.iter().zip(counts(&table, n)) {
                    let want = f64::from(c.weight) / total as f64;
                    let got = slots as f64 / f64::from(SIZE);
                    worst = worst.max((got - want).abs());
                    assert!((got - want).abs() <= 0.01, "n={n}: {got} vs {want}");
                }
            }
        }
        println!("maglev weighted shares: worst |share - weight share| = {worst:.6}");
    }

    /// Among the slots that belonged to surviving backends, the fraction whose owner
    /// changed when `set[gone]` was removed.
    fn moved_on_removal(set: &[Candidate], gone: usize, size: u32) -> f64 {
        let before = by_addr(&build(set, size), set);
        let mut rest = set.to_vec();
        let removed = rest.remove(gone).addr;
        let after = by_addr(&build(&rest, size), &rest);
        let (mut kept, mut moved) = (0u64, 0u64);
        for (b, a) in before.iter().zip(&after) {
            if *b != Some(removed) {
                kept += 1;
                moved += u64::from(b != a);
            }
        }
        moved as f64 / kept as f64
    }

    /// The fraction of other backends' slots that move when `gone` leaves `set`, checked
    /// against the bound 1/n + 0.01.
    fn removal_within_bound(set: &[Candidate], gone: usize) -> f64 {
        let n = set.len();
        let moved = moved_on_removal(set, gone, SIZE);
        let bound = 1.0 / n as f64 + 0.01;
        assert!(moved <= bound, "n={n}: moved {moved} > {bound}");
        moved
    }

    // Worst moved fractions measured (the data is fixed, so debug and release agree;
    // `--nocapture` prints them), against the bound 1/n + 0.01:
    //   n=2: 0 | n=3: 0.00034 | n=5: 0.00128 | n=10: 0.00312 | n=30: 0.00469
    //   n=100: 0.00615 | n=1000: 0.00637 (bound 0.011)
    // Each n: 4 sets (10.0.x.y:8080 consecutive, 3 random) x 3 random removals.
    #[test]
    fn removal_moves_few_slots() {
        let mut rng = Rng::new(3);
        let mut report = BTreeMap::new();
        for n in [2, 3, 5, 10, 30, 100, 1000] {
            let mut worst = 0f64;
            for set in equal_sets(n, n as u64) {
                for _ in 0..3 {
                    let gone = rng.range(0, n as u32 - 1) as usize;
                    worst = worst.max(removal_within_bound(&set, gone));
                }
            }
            report.insert(n, worst);
        }
        for (n, worst) in &report {
            println!(
                "maglev removal, equal weights: n={n:4} worst moved {worst:.5} (bound {:.5})",
                1.0 / *n as f64 + 0.01
            );
        }
    }

    // Worst moved fractions measured, weights random in 1..=1000, 5 sets per n, each
    // losing its heaviest backend and a random one:
    //   n=2: 0 | n=3: 0.00692 | n=10: 0.00374 | n=30: 0.00538 | n=100: 0.00753
    #[test]
    fn weighted_removal_moves_few_slots() {
        // Removing the heaviest backend changes the largest weight, hence every other
        // backend's turns, so it is tried every time besides a random one.
        let mut rng = Rng::new(4);
        let mut report = BTreeMap::new();
        for n in [2, 3, 10, 30, 100] {
            let mut worst = 0f64;
            for _ in 0..5 {
                let set = random_set(&mut rng, n, |r| r.range(1, 1000));
                let heaviest = (0..n).max_by_key(|&i| set[i].weight).unwrap();
                let random = rng.range(0, n as u32 - 1) as usize;
                for gone in [heaviest, random] {
                    worst = worst.max(removal_within_bound(&set, gone));
                }
            }
            report.insert(n, worst);
        }
        for (n, worst) in &report {
            println!("maglev removal, random weights: n={n:4} worst moved {worst:.5}");
        }
    }

    #[test]
    fn re_adding_restores_table() {
        let mut rng = Rng::new(5);
        for n in [2, 10, 100] {
            let mut set = random_set(&mut rng, n, |r| r.range(1, 10));
            let before = by_addr(&build(&set, SIZE), &set);
            let gone = rng.range(0, n as u32 - 1) as usize;
            let back = set.remove(gone);
            assert_ne!(by_addr(&build(&set, SIZE), &set), before);
            // Put it back somewhere else in the list: identity is the address.
            set.push(back);
            assert_eq!(by_addr(&build(&set, SIZE), &set), before);
        }
    }

    #[test]
    fn order_independent() {
        let mut rng = Rng::new(6);
        for n in [2, 3, 10, 100, 1000] {
            let set = random_set(&mut rng, n, |r| r.range(0, 100));
            let want = by_addr(&build(&set, SIZE), &set);
            for _ in 0..3 {
                let mut shuffled = set.clone();
                rng.shuffle(&mut shuffled);
                assert_eq!(by_addr(&build(&shuffled, SIZE), &shuffled), want, "n={n}");
            }
        }
    }

    #[test]
    fn positions_refer_to_the_callers_slice() {
        let set = [
            Candidate {
                addr: addr(10, 0, 0, 3, 80),
                weight: 1,
            },
            Candidate {
                addr: addr(10, 0, 0, 1, 80),
                weight: 0,
            },
            Candidate {
                addr: addr(10, 0, 0, 2, 80),
                weight: 2,
            },
        ];
        let c = counts(&build(&set, 251), set.len());
        assert_eq!(c[1], 0);
        assert_eq!(c[0] + c[2], 251);
        // Weights 1 : 2 of 251 slots.
        assert!((83..=85).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn zero_weight_is_invisible() {
        let mut rng = Rng::new(7);
        for n in [1, 5, 100] {
            let set = random_set(&mut rng, n, |r| r.range(1, 50));
            let want = by_addr(&build(&set, SIZE), &set);
            let mut with_zeros = set.clone();
            with_zeros.extend(random_set(&mut rng, 10, |_| 0));
            rng.shuffle(&mut with_zeros);
            let table = build(&with_zeros, SIZE);
            for (c, slots) in with_zeros.iter().zip(counts(&table, with_zeros.len())) {
                assert_eq!(c.weight == 0, slots == 0, "{c:?}");
            }
            assert_eq!(by_addr(&table, &with_zeros), want);
        }
    }

    #[test]
    fn empty_and_all_zero_give_no_slots() {
        for size in [2, 251, SIZE] {
            assert_eq!(build(&[], size), vec![None; size as usize]);
            let zeros = sequential_set(5, 0);
            assert_eq!(build(&zeros, size), vec![None; size as usize]);
        }
    }

    #[test]
    fn small_tables() {
        // size 2: skip is always 1.
        let one = sequential_set(1, 7);
        assert_eq!(build(&one, 2), vec![Some(0), Some(0)]);
        let two = sequential_set(2, 1);
        let t = build(&two, 2);
        assert_eq!(counts(&t, 2), vec![1, 1]);
        let three = sequential_set(3, 1);
        let c = counts(&build(&three, 2), 3);
        assert_eq!(c.iter().sum::<u64>(), 2);
        assert!(c.iter().all(|&c| c <= 1));
        // Weight 1 : 1000 of 2 slots: the heavy one acts first and every round.
        let uneven = [
            Candidate {
                addr: addr(10, 0, 0, 1, 80),
                weight: 1,
            },
            Candidate {
                addr: addr(10, 0, 0, 2, 80),
                weight: 1000,
            },
        ];
        assert_eq!(build(&uneven, 2), vec![Some(1), Some(1)]);

        // size 251: one backend owns everything, 251 backends get one slot each.
        assert_eq!(build(&one, 251), vec![Some(0); 251]);
        let many = sequential_set(251, 3);
        let c = counts(&build(&many, 251), 251);
        assert!(c.iter().all(|&c| c == 1));
        // Weights 1 : 2 : 3 of 251 slots: 251 / 6 = 41.8 per unit.
        let weighted: Vec<Candidate> = (1..=3u32)
            .map(|w| Candidate {
                addr: addr(10, 0, 1, w as u8, 443),
                weight: w,
            })
            .collect();
        let c = counts(&build(&weighted, 251), 3);
        assert_eq!(c.iter().sum::<u64>(), 251);
        for (w, c) in (1..=3u64).zip(&c) {
            assert!(c.abs_diff(w * 251 / 6) <= 1, "{c:?}");
        }
    }

    #[test]
    fn extreme_weights() {
        let set = [
            Candidate {
                addr: addr(10, 0, 0, 1, 80),
                weight: u32::MAX,
            },
            Candidate {
                addr: addr(10, 0, 0, 2, 80),
                weight: 1,
            },
            Candidate {
                addr: addr(10, 0, 0, 3, 80),
                weight: u32::MAX - 1,
            },
        ];
        let c = counts(&build(&set, SIZE), 3);
        assert_eq!(c.iter().sum::<u64>(), u64::from(SIZE));
        assert!(c[1] <= 1, "{c:?}");
        assert!(c[0].abs_diff(c[2]) <= 1, "{c:?}");
    }

    #[test]
    fn duplicates_are_distinct_by_position() {
        let a = addr(10, 0, 0, 1, 80);
        let b = addr(10, 0, 0, 2, 80);
        let set = [
            Candidate { addr: a, weight: 1 },
            Candidate { addr: b, weight: 1 },
            Candidate { addr: a, weight: 1 },
        ];
        let table = build(&set, 251);
        // Both copies of `a` take slots: `a` gets two thirds of the table.
        let c = counts(&table, 3);
        assert!(c.iter().all(|&c| c.abs_diff(251 / 3) <= 1), "{c:?}");
        // Read by address, the order of the input does not matter.
        let want = by_addr(&table, &set);
        let other = [set[2], set[0], set[1]];
        assert_eq!(by_addr(&build(&other, 251), &other), want);
    }

    #[test]
    fn primes() {
        for n in [2, 3, 5, 7, 251, 4093, SIZE, 131_071, 4_294_967_291] {
            assert!(is_prime(n), "{n}");
        }
        for n in [0, 1, 4, 9, 65535, 65536, 4_294_967_295] {
            assert!(!is_prime(n), "{n}");
        }
    }

    #[test]
    #[should_panic(expected = "Maglev table size must be a prime >= 2, got 65536")]
    fn non_prime_size_panics() {
        let _ = build(&sequential_set(3, 1), 65536);
    }

    #[test]
    #[should_panic(expected = "Maglev table size must be a prime >= 2, got 1")]
    fn size_one_panics() {
        let _ = build(&[], 1);
    }

    #[test]
    fn builds_default_size_with_1000_backends() {
        let set = sequential_set(1000, 100);
        let start = Instant::now();
        let table = build(&set, SIZE);
        let elapsed = start.elapsed();
        assert!(table.iter().all(Option::is_some));
        println!("maglev build: {SIZE} slots x 1000 equal-weight backends in {elapsed:?}");
    }
}
