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

/// The benchmarks' IPv6 client.
pub const CLIENT6: &str = "2001:db8:cafe::7";

/// An IPv6 frame from the client-side router to the balancer.
pub fn frame6(src: &str, dst: &str, l4: frame::L4) -> Vec<u8> {
    frame::Frame6::new(netns::ROUTER_MAC, LB_CLI_MAC, frame::ipv6(src, dst, l4)).bytes()
}

/// The IPv6 frames of the established-flow rows, for [`setup_ipv6`]'s services.
pub struct Frames6 {
    /// An ACK of an established DSR flow.
    pub dsr_ack: Vec<u8>,
    /// An ACK of an established NAT66 flow, client to VIP.
    pub nat_ack: Vec<u8>,
    /// The backend's reply on that flow, as it reaches the balancer.
    pub nat_reply: Vec<u8>,
    /// A packet for another host.
    pub pass: Vec<u8>,
}

/// Establishes a DSR and a NAT66 flow of [`CLIENT6`] through `run` (a frame in, the
/// output frame out) and returns the frames of those flows.
pub fn frames6(run: &dyn Fn(&[u8]) -> Result<Vec<u8>>) -> Result<Frames6> {
    use frame::{ACK, SYN, tcp};
    for (vip, port, dport) in [(DSR_VIP6, 40000u16, 80u16), (NAT_VIP6, 40001, 8080)] {
        for flags in [SYN, ACK] {
            run(&frame6(CLIENT6, vip, tcp(port, dport, flags)))?;
        }
    }
    let nat_ack = frame6(CLIENT6, NAT_VIP6, tcp(40001, 8080, ACK));
    let out = run(&nat_ack)?;
    let rip = frame::ip6_dst(&out)
        .ok_or_else(|| anyhow::anyhow!("the NAT66 flow's output is not IPv6"))?
        .to_string();
    let nat_reply = frame::Frame6::new(
        [2, 0, 0, 0, 6, 0x11],
        netns::LB_SRV_MAC,
        frame::ipv6(&rip, CLIENT6, tcp(80, 40001, ACK)),
    )
    .bytes();
    Ok(Frames6 {
        dsr_ack: frame6(CLIENT6, DSR_VIP6, tcp(40000, 80, ACK)),
        nat_ack,
        nat_reply,
        pass: frame6(CLIENT6, "2001:db8:c::1", tcp(40000, 22, ACK)),
    })
}
