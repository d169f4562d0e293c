//! The flow hash that picks a Maglev slot.
//!
//! Shared so the control plane (and its tests) compute exactly the slot the datapath
//! picks. Inputs are the raw header words as loaded from the packet (network byte
//! order read as native integers); every `lb` instance of the same build and
//! architecture therefore picks the same slot for the same flow. The mixing is
//! MurmurHash3's (x86_32) block and finalisation steps over 32-bit words: cheap in BPF
//! (multiplies, rotates, xors) and well spread even for sequential ports.

const SEED: u32 = 0x6c62_5f31; // "lb_1"

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a 5-tuple. `ports` is `(sport as u32) | (dport as u32) << 16` of the raw
/// (network-order) port fields.
#[inline(always)]
pub const fn flow_hash(src: u32, dst: u32, ports: u32, proto: u8) -> u32 {
    finish(mix(mix(mix(mix(SEED, src), dst), ports), proto as u32))
}

/// Hash of the client address alone (services with persistence).
#[inline(always)]
pub const fn source_hash(src: u32) -> u32 {
    finish(mix(SEED, src))
}

/// Hash of an IPv6 5-tuple ([`crate::Addr6`] words): the same mixing over the eight
/// address words, then ports and protocol.
#[inline(always)]
pub const fn flow_hash6(src: &[u32; 4], dst: &[u32; 4], ports: u32, proto: u8) -> u32 {
    let h = mix(mix(mix(mix(SEED, src[0]), src[1]), src[2]), src[3]);
    let h = mix(mix(mix(mix(h, dst[0]), dst[1]), dst[2]), dst[3]);
    finish(mix(mix(h, ports), proto as u32))
}

/// Hash of an IPv6 client address alone (persistence, and the address filters).
#[inline(always)]
pub const fn source_hash6(src: &[u32; 4]) -> u32 {
    finish(mix(mix(mix(mix(SEED, src[0]), src[1]), src[2]), src[3]))
}

/// The `ports` word of [`flow_hash`].
#[inline(always)]
pub const fn ports_word(sport: u16, dport: u16) -> u32 {
    (sport as u32) | ((dport as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned values (computed independently with a Python transcription of MurmurHash3's
        // steps): a change here changes which backend every flow reaches
        // (across an upgrade) and must be deliberate.
        assert_eq!(
            flow_hash(0x0100_000a, 0x0a00_640a, ports_word(0x3930, 0x5000), 6),
            0x9f61_360f
        );
        assert_eq!(source_hash(0x0100_000a), 0xd5eb_4924);
        // IPv6 (2001:db8::2 -> 2001:db8::10, ports 12345 -> 80, TCP), pinned likewise.
        let src = crate::ipv6_words([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let dst = crate::ipv6_words([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert_eq!(
            flow_hash6(&src, &dst, ports_word(0x3930, 0x5000), 6),
            0x417a_f676
        );
        assert_eq!(source_hash6(&src), 0xef8d_21a0);
    }

    #[test]
    fn sequential_client_ports_spread_evenly_over_three_slots() {
        let mut buckets = [0u32; 3];
        for p in 30000u16..33000 {
            let h = flow_hash(
                0x0100_000a,
                0x0a00_640a,
                ports_word(p.to_be(), 80u16.to_be()),
                6,
            );
            buckets[(h % 3) as usize] += 1;
        }
        for b in buckets {
            assert!((900..=1100).contains(&b), "{buckets:?}");
        }
    }
}
