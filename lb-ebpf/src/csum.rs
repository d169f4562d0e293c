//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')).
//!
//! Every value is taken as it sits in the packet, loaded as a native integer
//! (`from_ne_bytes`): one's-complement sums do not depend on byte order as long as all
//! words are taken the same way (RFC 1071 §2(B)), so no byte swapping is needed.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The checksum after a 16-bit word covered by it changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The checksum after a 32-bit word (two 16-bit words) changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!check) + ((!old) >> 16) + ((!old) & 0xffff) + (new >> 16) + (new & 0xffff);
    fold(sum)
}

/// The checksum after a 128-bit value (an IPv6 address in a pseudo-header or a quoted
/// header) changed from `old` to `new` (both as [`lb_common::Addr6`] words).
#[inline(always)]
pub fn replace128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    let mut sum = u32::from(!check);
    for i in 0..4 {
        let (o, n) = (!old[i], new[i]);
        sum += (o >> 16) + (o & 0xffff) + (n >> 16) + (n & 0xffff);
    }
    fold(sum)
}

/// Reads a 16-bit checksum field.
#[inline(always)]
pub fn get(field: &[u8; 2]) -> u16 {
    u16::from_ne_bytes(*field)
}

/// Writes a 16-bit checksum field.
#[inline(always)]
pub fn set(field: &mut [u8; 2], value: u16) {
    *field = value.to_ne_bytes();
}

/// A UDP checksum of 0 means "none" and stays 0; a computed 0 is sent as 0xffff
/// (RFC 768).
#[inline(always)]
pub fn udp_fixup(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}
