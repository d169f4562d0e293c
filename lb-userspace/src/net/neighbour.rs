//! Where DSR backends are: egress interface, the backend's MAC, the interface's MAC.
//!
//! DSR rewrites only MAC addresses, so every DSR backend must sit on a network directly
//! connected to the balancer. Routes come from `/proc/net/route`, neighbours from
//! `/proc/net/arp` (both show the network namespace of the reading process), interface
//! MACs from `SIOCGIFHWADDR`. A backend whose MAC the kernel does not know yet is sent
//! one ICMP echo request, which makes the kernel resolve it; the next refresh finds it.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

use crate::model::runtime::Neighbour;

/// An IPv4 route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub dest: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub metric: u32,
}

fn hex_addr(s: &str) -> Option<Ipv4Addr> {
    // /proc/net/route prints addresses as the native-endian hex of the network-order u32.
    u32::from_str_radix(s, 16)
        .ok()
        .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
}

/// Parses `/proc/net/route`.
pub fn parse_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            if flags & 0x1 == 0 {
                return None; // RTF_UP
            }
            let gateway = hex_addr(f[2]).filter(|g| !g.is_unspecified() && flags & 0x2 != 0);
            Some(Route {
                iface: f[0].to_string(),
                dest: hex_addr(f[1])?,
                mask: hex_addr(f[7])?,
                gateway,
                metric: f[6].parse().ok()?,
            })
        })
        .collect()
}

/// The route the kernel would use to reach `addr` (longest prefix, then lowest metric).
pub fn route_to(routes: &[Route], addr: Ipv4Addr) -> Option<&Route> {
    let a = u32::from(addr);
    routes
        .iter()
        .filter(|r| a & u32::from(r.mask) == u32::from(r.dest) & u32::from(r.mask))
        .max_by_key(|r| (u32::from(r.mask).count_ones(), std::cmp::Reverse(r.metric)))
}

/// Parses `/proc/net/arp` into complete entries: (address, interface) -> MAC.
pub fn parse_arp(text: &str) -> BTreeMap<(Ipv4Addr, String), [u8; 6]> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let (Ok(ip), Some(flags)) = (
            f[0].parse::<Ipv4Addr>(),
            u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok(),
        ) else {
            continue;
        };
        if flags & 0x2 == 0 {
            continue; // ATF_COM: not resolved (yet)
        }
        if let Some(mac) = parse_mac(f[3])
            && mac != [0; 6]
        {
            out.insert((ip, f[5].to_string()), mac);
        }
    }
    out
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn socket(kind: libc::c_int, proto: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// MAC address of a local interface.
pub fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    let s = socket(libc::SOCK_DGRAM, 0)?;
    // SAFETY: zeroed ifreq is valid; the name is bounded below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= req.ifr_name.len() {
        bail!("interface name {iface} is too long");
    }
    for (d, c) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = c as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of a valid ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        bail!(
            "reading the MAC of {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the ioctl succeeded, so the union holds a sockaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// Index of a local interface.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {iface}"),
        i => Ok(i),
    }
}

/// Sends one ICMP echo request to `addr`: the kernel resolves its MAC on the way.
pub fn solicit(addr: Ipv4Addr) -> Result<()> {
    let s = socket(libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    let mut pkt = [8u8, 0, 0, 0, 0x6c, 0x62, 0, 1];
    let sum = pkt
        .chunks(2)
        .fold(0u32, |a, w| a + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    // SAFETY: zeroed sockaddr_in is valid; fields set below.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from_ne_bytes(addr.octets());
    // SAFETY: valid buffer and address for the call's duration.
    let n = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            libc::MSG_DONTWAIT,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        bail!(
            "sending an ICMP echo to {addr}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Why a DSR backend cannot be reached at layer 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreachable {
    NoRoute,
    /// Behind a router: DSR needs the backend on a directly connected network.
    Routed {
        via: Ipv4Addr,
        iface: String,
    },
    /// On-link, but its MAC is not known yet (a solicitation was sent).
    Unresolved {
        iface: String,
    },
    /// On-link through an interface lb is not attached to... (informational; still usable
    /// through XDP_REDIRECT when that interface supports it).
    Other(String),
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::NoRoute => f.write_str("no route to it"),
            Unreachable::Routed { via, iface } => write!(
                f,
                "reached through the router {via} on {iface}: DSR needs it on a directly connected network"
            ),
            Unreachable::Unresolved { iface } => write!(f, "its MAC on {iface} is not known yet"),
            Unreachable::Other(s) => f.write_str(s),
        }
    }
}

/// Looks up the neighbours of `addrs` from the kernel's tables (one read of each file).
/// Unresolved on-link addresses are solicited when `solicit_missing` is set.
pub fn resolve(
    addrs: &[Ipv4Addr],
    solicit_missing: bool,
) -> Result<BTreeMap<Ipv4Addr, Result<Neighbour, Unreachable>>> {
    let routes = parse_routes(
        &std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?,
    );
    let arp =
        parse_arp(&std::fs::read_to_string("/proc/net/arp").context("reading /proc/net/arp")?);
    let mut out = BTreeMap::new();
    for &a in addrs {
        let r = match route_to(&routes, a) {
            None => Err(Unreachable::NoRoute),
            Some(Route {
                gateway: Some(via),
                iface,
                ..
            }) => Err(Unreachable::Routed {
                via: *via,
                iface: iface.clone(),
            }),
            Some(route) => match arp.get(&(a, route.iface.clone())) {
                Some(mac) => match (ifindex(&route.iface), iface_mac(&route.iface)) {
                    (Ok(ifindex), Ok(src_mac)) => Ok(Neighbour {
                        ifindex,
                        mac: *mac,
                        src_mac,
                    }),
                    (Err(e), _) | (_, Err(e)) => Err(Unreachable::Other(e.to_string())),
                },
                None => {
                    if solicit_missing && let Err(e) = solicit(a) {
                        log::debug!("{e:#}");
                    }
                    Err(Unreachable::Unresolved {
                        iface: route.iface.clone(),
                    })
                }
            },
        };
        out.insert(a, r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
lbd0\t0000640A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t0000000A\t00000000\t0001\t0\t0\t50\t0000FFFF\t0\t0\t0
";

    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
10.0.0.11        0x1         0x2         02:00:00:00:00:0b     *        eth0
10.0.0.12        0x1         0x0         00:00:00:00:00:00     *        eth0
10.100.0.5       0x1         0x6         02:aa:bb:cc:dd:ee     *        lbd0
";

    #[test]
    fn routes_longest_prefix_then_metric() {
        let routes = parse_routes(ROUTE);
        assert_eq!(routes.len(), 4);
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            route_to(&routes, a("10.0.0.11")).unwrap().iface,
            "eth0",
            "/24 beats /16"
        );
        assert_eq!(route_to(&routes, a("10.0.9.9")).unwrap().iface, "eth1");
        let default = route_to(&routes, a("192.0.2.1")).unwrap();
        assert_eq!(
            (default.iface.as_str(), default.gateway),
            ("eth0", Some(a("10.0.0.1")))
        );
        assert_eq!(route_to(&routes, a("10.100.0.7")).unwrap().gateway, None);
        assert!(
            route_to(
                &parse_routes(&ROUTE.lines().take(1).collect::<String>()),
                a("10.0.0.1")
            )
            .is_none()
        );
    }

    #[test]
    fn arp_keeps_complete_entries_only() {
        let arp = parse_arp(ARP);
        assert_eq!(arp.len(), 2);
        assert_eq!(
            arp[&("10.0.0.11".parse().unwrap(), "eth0".into())],
            [2, 0, 0, 0, 0, 0x0b]
        );
        assert!(
            !arp.contains_key(&("10.0.0.12".parse().unwrap(), "eth0".into())),
            "incomplete entry"
        );
    }

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(
            parse_mac("02:aa:bb:cc:dd:0e"),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e])
        );
        assert_eq!(parse_mac("02:aa:bb:cc:dd"), None);
        assert_eq!(parse_mac("02:aa:bb:cc:dd:ee:ff"), None);
        assert_eq!(format_mac(&[2, 0xaa, 0, 1, 2, 3]), "02:aa:00:01:02:03");
    }
}
