//! NAT: every address and port rewrite, in both directions and for the ICMP errors
//! about NAT flows, for IPv4 and IPv6 (NAT66). NAT routes the packet, so each rewrite
//! also decrements the TTL (hop limit). Checksums are updated incrementally (see
//! `csum`); IPv6 has no header checksum, but its addresses are in the TCP, UDP and
//! ICMPv6 checksums' pseudo-header.
use aya_ebpf::programs::XdpContext;
use lb_common::{Addr6, ipv6_octets};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    csum,
    parse::{IPPROTO_TCP, IPPROTO_UDP, Ip4, Ip6, Quoted, addr6, ne16, ne32, ptr_at},
};

/// Which end of the packet a NAT rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Decrements the TTL of the IPv4 header at `iph` and updates its checksum.
///
/// # Safety
/// `iph` must point at a whole IPv4 header inside the packet (from `ptr_at`).
#[inline(always)]
unsafe fn decrement_ttl(iph: *mut Ipv4Hdr) {
    // SAFETY: the caller's contract.
    unsafe {
        // TTL shares a 16-bit word with the protocol.
        let old = u16::from_ne_bytes([(*iph).ttl, (*iph).proto]);
        (*iph).ttl -= 1;
        let new = u16::from_ne_bytes([(*iph).ttl, (*iph).proto]);
        csum::set(
            &mut (*iph).check,
            csum::replace16(csum::get(&(*iph).check), old, new),
        );
    }
}

/// The IPv4 header part of every NAT rewrite: sets the address at `end` of the header at
/// `iph` to `addr`, decrements the TTL, updates the header checksum, and returns the
/// address it replaced.
///
/// # Safety
/// `iph` must point at a whole IPv4 header inside the packet (from `ptr_at`).
#[inline(always)]
unsafe fn rewrite_ipv4(iph: *mut Ipv4Hdr, end: End, addr: u32) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        let field = match end {
            End::Src => &mut (*iph).src_addr,
            End::Dst => &mut (*iph).dst_addr,
        };
        let old = ne32(field);
        *field = addr.to_ne_bytes();
        csum::set(
            &mut (*iph).check,
            csum::replace32(csum::get(&(*iph).check), old, addr),
        );
        decrement_ttl(iph);
        old
    }
}

/// The IPv6 header part of every NAT66 rewrite: sets the address at `end` of the header
/// at `iph` to `addr`, decrements the hop limit, and returns the address it replaced.
///
/// # Safety
/// `iph` must point at a whole IPv6 header inside the packet (from `ptr_at`).
#[inline(always)]
unsafe fn rewrite_ipv6(iph: *mut Ipv6Hdr, end: End, addr: &Addr6) -> Addr6 {
    // SAFETY: the caller's contract.
    unsafe {
        let field = match end {
            End::Src => &mut (*iph).src_addr,
            End::Dst => &mut (*iph).dst_addr,
        };
        let old = addr6(field);
        *field = ipv6_octets(*addr);
        (*iph).hop_limit -= 1;
        old
    }
}

/// The TCP/UDP part of a rewrite: the port at `end` becomes `port`, and the checksum
/// takes `pseudo` (the change of the pseudo-header's address) and the port's change.
/// A UDP checksum of 0 (none) stays 0.
#[inline(always)]
fn rewrite_ports(
    ctx: &XdpContext,
    l4: usize,
    proto: u8,
    end: End,
    port: u16,
    pseudo: impl Fn(u16) -> u16,
) -> Option<()> {
    // Ports: source at +0, destination at +2, in both TCP and UDP.
    let port_off = l4 + if end == End::Src { 0 } else { 2 };
    let port_field: *mut [u8; 2] = ptr_at(ctx, port_off)?;
    // SAFETY: bounds checked by ptr_at (here and below).
    unsafe {
        let old_port = ne16(&*port_field);
        *port_field = port.to_ne_bytes();
        // The TCP/UDP checksum covers the pseudo-header (addresses) and the ports.
        if proto == IPPROTO_TCP {
            let check: *mut [u8; 2] = ptr_at(ctx, l4 + 16)?;
            let mut c = pseudo(csum::get(&*check));
            c = csum::replace16(c, old_port, port);
            csum::set(&mut *check, c);
        } else if proto == IPPROTO_UDP {
            let check: *mut [u8; 2] = ptr_at(ctx, l4 + 6)?;
            let old = csum::get(&*check);
            if old != 0 {
                let mut c = pseudo(old);
                c = csum::replace16(c, old_port, port);
                csum::set(&mut *check, csum::udp_fixup(c));
            }
        }
    }
    Some(())
}

/// Rewrites the address and port of one end of a TCP/UDP packet, decrements the TTL,
/// and updates the IPv4 and TCP/UDP checksums incrementally. The caller validated both
/// headers.
#[inline(always)]
pub fn rewrite_tcp_udp(ctx: &XdpContext, ip: &Ip4, end: End, addr: u32, port: u16) -> Option<()> {
    let iph: *mut Ipv4Hdr = ptr_at(ctx, ip.l3)?;
    // SAFETY: bounds checked by ptr_at; the L4 header was validated by the caller and
    // is re-checked by ptr_at in `rewrite_ports`.
    let old_addr = unsafe { rewrite_ipv4(iph, end, addr) };
    rewrite_ports(ctx, ip.l4, ip.proto, end, port, |c| {
        csum::replace32(c, old_addr, addr)
    })
}

/// NAT66: rewrites the address and port of one end of a TCP/UDP packet, decrements the
/// hop limit, and updates the TCP/UDP checksum (its pseudo-header holds the addresses)
/// incrementally. The caller validated the headers.
#[inline(always)]
pub fn rewrite_tcp_udp6(
    ctx: &XdpContext,
    ip: &Ip6,
    end: End,
    addr: &Addr6,
    port: u16,
) -> Option<()> {
    let iph: *mut Ipv6Hdr = ptr_at(ctx, ip.l3)?;
    // SAFETY: bounds checked by ptr_at.
    let old_addr = unsafe { rewrite_ipv6(iph, end, addr) };
    rewrite_ports(ctx, ip.l4, ip.proto, end, port, |c| {
        csum::replace128(c, &old_addr, addr)
    })
}

/// Rewrites an ICMP error about a NAT flow. `outer` is the end of the outer header that
/// changes to `addr` (Dst: towards the backend, Src: towards the client); the quoted
/// packet changes at the opposite end (its source was the VIP, or its destination the
/// backend) to `addr:port`. The outer TTL is decremented; the outer IPv4, quoted IPv4
/// and ICMP checksums are updated incrementally. The quoted TCP/UDP checksum is left
/// as quoted: receivers do not check it, and routers often cut it off.
#[inline(always)]
pub fn rewrite_icmp_error(
    ctx: &XdpContext,
    ip: &Ip4,
    outer: End,
    q: &Quoted<u32>,
    addr: u32,
    port: u16,
) -> Option<()> {
    let iph: *mut Ipv4Hdr = ptr_at(ctx, ip.l3)?;
    let inner: *mut Ipv4Hdr = ptr_at(ctx, q.l3)?;
    let ports: *mut [u8; 4] = ptr_at(ctx, q.l4)?;
    let icmph: *mut [u8; 4] = ptr_at(ctx, ip.l4)?;
    // SAFETY: all four bounds checked by ptr_at.
    unsafe {
        rewrite_ipv4(iph, outer, addr);

        let field = if outer == End::Dst {
            &mut (*inner).src_addr
        } else {
            &mut (*inner).dst_addr
        };
        let old_addr = ne32(field);
        *field = addr.to_ne_bytes();
        let old_check = csum::get(&(*inner).check);
        let new_check = csum::replace32(old_check, old_addr, addr);
        csum::set(&mut (*inner).check, new_check);

        let p = &mut *ports;
        let at = if outer == End::Dst { 0 } else { 2 };
        let old_port = u16::from_ne_bytes([p[at], p[at + 1]]);
        [p[at], p[at + 1]] = port.to_ne_bytes();

        let h = &mut *icmph;
        let mut c = ne16(&[h[2], h[3]]);
        c = csum::replace32(c, old_addr, addr);
        c = csum::replace16(c, old_check, new_check);
        c = csum::replace16(c, old_port, port);
        [h[2], h[3]] = c.to_ne_bytes();
    }
    Some(())
}

/// NAT66: rewrites an ICMPv6 error about a NAT flow, as [`rewrite_icmp_error`] does for
/// IPv4: the outer address at `outer` and the quoted packet's opposite end become
/// `addr` (and that end's port `port`), the hop limit is decremented, and the ICMPv6
/// checksum takes all three changes (the outer address through its pseudo-header). IPv6
/// headers have no checksum; the quoted TCP/UDP checksum is left as quoted.
#[inline(always)]
pub fn rewrite_icmp6_error(
    ctx: &XdpContext,
    ip: &Ip6,
    outer: End,
    q: &Quoted<Addr6>,
    addr: &Addr6,
    port: u16,
) -> Option<()> {
    let iph: *mut Ipv6Hdr = ptr_at(ctx, ip.l3)?;
    let inner: *mut Ipv6Hdr = ptr_at(ctx, q.l3)?;
    let ports: *mut [u8; 4] = ptr_at(ctx, q.l4)?;
    let icmph: *mut [u8; 4] = ptr_at(ctx, ip.l4)?;
    // SAFETY: all four bounds checked by ptr_at.
    unsafe {
        let old_outer = rewrite_ipv6(iph, outer, addr);

        let field = if outer == End::Dst {
            &mut (*inner).src_addr
        } else {
            &mut (*inner).dst_addr
        };
        let old_inner = addr6(field);
        *field = ipv6_octets(*addr);

        let p = &mut *ports;
        let at = if outer == End::Dst { 0 } else { 2 };
        let old_port = u16::from_ne_bytes([p[at], p[at + 1]]);
        [p[at], p[at + 1]] = port.to_ne_bytes();

        let h = &mut *icmph;
        let mut c = ne16(&[h[2], h[3]]);
        c = csum::replace128(c, &old_outer, addr);
        c = csum::replace128(c, &old_inner, addr);
        c = csum::replace16(c, old_port, port);
        [h[2], h[3]] = c.to_ne_bytes();
    }
    Some(())
}
