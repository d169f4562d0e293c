//! What the benchmarks share (each uses a part of it).
#![allow(dead_code, reason = "each benchmark target uses only some of these")]

use anyhow::{Result, ensure};
use lb_common::{
    BACKEND_F_IPV6, BACKEND_F_LIVE, Backend, DEFAULT_TABLE_SIZE, NatBackend6, NatBackendKey6,
    SERVICE_F_NAT, Service, ServiceKey6, ipv6_words,
};
use lb_lab::{
    frame::{self, TCP},
    netns::{self, LB_CLI_MAC},
};
use lb_userspace::dataplane::Dataplane;

/// Moves the calling thread to one CPU.
pub fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid set for the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    ensure!(
        rc == 0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Moves the calling thread to the last CPU; returns it.
pub fn pin_to_last_cpu() -> Result<usize> {
    let cpu = std::thread::available_parallelism()?.get() - 1;
    pin(cpu)?;
    Ok(cpu)
}

/// `Flow` as commit 341a9ec wrote it into `CONNTRACK` (24 bytes, with the service and
/// nanoseconds), to fill that build's connection table.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OldFlow {
    pub backend: u32,
    pub epoch: u32,
    pub service: u32,
    pub state: u32,
    pub last_seen: u64,
}

// SAFETY: plain data without padding.
unsafe impl aya::Pod for OldFlow {}

/// The benchmarks' IPv6 VIPs (see [`setup_ipv6`]).
pub const DSR_VIP6: &str = "2001:db8:100::10";
pub const NAT_VIP6: &str = "2001:db8:100::20";

/// The IPv6 services of the benchmarks, beside their IPv4 ones: DSR [`DSR_VIP6`]:80/tcp
/// (three backends, indexes 100..), NAT [`NAT_VIP6`]:8080/tcp -> :80 (two, 110..; they
/// are 2001:db8:b::11 and ::12 behind `srv0`). Ids 10 and 11.
pub fn setup_ipv6(dp: &mut Dataplane, cli: u32) -> Result<()> {
    let w = |a: &str| ipv6_words(frame::addr6(a).octets());
    netns::ip("-6 neigh add 2001:db8:c::fe lladdr 02:00:00:00:01:fe dev cli0 nud permanent");
    netns::ip("-6 neigh add 2001:db8:b::11 lladdr 02:00:00:00:06:11 dev srv0 nud permanent");
    netns::ip("-6 neigh add 2001:db8:b::12 lladdr 02:00:00:00:06:12 dev srv0 nud permanent");
    let dsr: Vec<u32> = vec![100, 101, 102];
    for (i, last) in dsr.iter().zip([0x61u8, 0x62, 0x63]) {
        dp.set_backend_addr6(*i, w(&format!("2001:db8:a::{last:x}")))?;
        dp.set_backend(
            *i,
            Backend {
                addr: 0,
                port: 80u16.to_be(),
                flags: BACKEND_F_LIVE | BACKEND_F_IPV6,
                epoch: 1,
                ifindex: cli,
                mac: [2, 0, 0, 0, 3, last],
                src_mac: LB_CLI_MAC,
                service: 10,
            },
        )?;
    }
    let nat: Vec<u32> = vec![110, 111];
    for (i, a) in nat.iter().zip(["2001:db8:b::11", "2001:db8:b::12"]) {
        dp.set_backend_addr6(*i, w(a))?;
        dp.set_backend(
            *i,
            Backend {
                addr: 0,
                port: 80u16.to_be(),
                flags: BACKEND_F_LIVE | BACKEND_F_IPV6,
                epoch: 1,
                service: 11,
                ..Default::default()
            },
        )?;
        dp.set_nat_backend6(
            NatBackendKey6 {
                addr: w(a),
                port: 80u16.to_be(),
                proto: TCP,
                _pad: 0,
            },
            Some(NatBackend6 {
                vip: w(NAT_VIP6),
                vport: 8080u16.to_be(),
                _pad: 0,
                backend: *i,
                service: 11,
            }),
        )?;
    }
    for (id, vip, port, flags, backends) in [
        (10u32, DSR_VIP6, 80u16, 0u32, &dsr),
        (11, NAT_VIP6, 8080, SERVICE_F_NAT, &nat),
    ] {
        let slots: Vec<u32> = (0..DEFAULT_TABLE_SIZE as usize)
            .map(|s| backends[s % backends.len()])
            .collect();
        dp.set_table(id, &slots)?;
        dp.set_service6(
            ServiceKey6 {
                vip: w(vip),
                port: port.to_be(),
                proto: TCP,
                _pad: 0,
            },
            Service {
                id,
                flags,
                table_size: DEFAULT_TABLE_SIZE,
                table_gen: 0,
                key: Default::default(),
            },
        )?;
        dp.set_vip6(w(vip), 1)?;
    }
    Ok(())
}
