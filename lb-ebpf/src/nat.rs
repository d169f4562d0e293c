//! NAT: every address and port rewrite, in both directions and for the ICMP errors
//! about NAT flows. NAT routes the packet, so each rewrite also decrements the TTL.
//! Checksums are updated incrementally (see `csum`).
use aya_ebpf::programs::XdpContext;
use network_types::ip::Ipv4Hdr;

use crate::{
    csum,
    parse::{IPPROTO_TCP, IPPROTO_UDP, Ip, Quoted, ne16, ne32, ptr_at},
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

/// Rewrites the address and port of one end of a TCP/UDP packet, decrements the TTL,
/// and updates the IPv4 and TCP/UDP checksums incrementally. The caller validated both
/// headers.
#[inline(always)]
pub fn rewrite_tcp_udp(ctx: &XdpContext, ip: &Ip, end: End, addr: u32, port: u16) -> Option<()> {
    let iph: *mut Ipv4Hdr = ptr_at(ctx, ip.l3)?;
    // SAFETY: bounds checked by ptr_at; the L4 header was validated by the caller and
    // is re-checked by ptr_at below.
    unsafe {
        let old_addr = rewrite_ipv4(iph, end, addr);

        // Ports: source at +0, destination at +2, in both TCP and UDP.
        let port_off = ip.l4 + if end == End::Src { 0 } else { 2 };
        let port_field: *mut [u8; 2] = ptr_at(ctx, port_off)?;
        let old_port = ne16(&*port_field);
        *port_field = port.to_ne_bytes();
        // The TCP/UDP checksum covers the pseudo-header (addresses) and the ports.
        if ip.proto == IPPROTO_TCP {
            let check: *mut [u8; 2] = ptr_at(ctx, ip.l4 + 16)?;
            let mut c = csum::replace32(csum::get(&*check), old_addr, addr);
            c = csum::replace16(c, old_port, port);
            csum::set(&mut *check, c);
        } else if ip.proto == IPPROTO_UDP {
            let check: *mut [u8; 2] = ptr_at(ctx, ip.l4 + 6)?;
            let old = csum::get(&*check);
            if old != 0 {
                let mut c = csum::replace32(old, old_addr, addr);
                c = csum::replace16(c, old_port, port);
                csum::set(&mut *check, csum::udp_fixup(c));
            }
        }
    }
    Some(())
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
    ip: &Ip,
    outer: End,
    q: &Quoted,
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
