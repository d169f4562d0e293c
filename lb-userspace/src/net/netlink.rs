//! lb's one way of asking the kernel about the network: rtnetlink (NETLINK_ROUTE).
//!
//! [`Netlink`] is a cheap-to-clone handle over one netlink socket, opened in the network
//! namespace of the calling thread; the task that drives the socket runs on the tokio
//! runtime that opened it and ends when the last clone is dropped. It answers:
//! - [`Netlink::route_get`]: the kernel's own FIB choice for one destination, like
//!   `ip route get`, so policy rules (`ip rule`), metrics and every table count;
//! - [`Netlink::neighbour`]: the neighbour (ARP/NDP) entry of an address on an interface,
//!   and [`Netlink::solicit`], which makes the kernel resolve one;
//! - [`Netlink::link`] / [`Netlink::link_by_index`]: an interface's MAC and the XDP
//!   programs attached to it (IFLA_XDP), and [`Netlink::detach_xdp`];
//! - [`Netlink::route_replace`], [`Netlink::route_delete`], [`Netlink::routes`]: the
//!   routes lb owns in a table, marked with its protocol number;
//! - [`neighbour_events`]: the kernel's neighbour changes (RTNLGRP_NEIGH) as a stream.
//!
//! Everything is IPv4 and IPv6 alike. The socket asks for strict checking
//! (NETLINK_GET_STRICT_CHK, like iproute2), so the kernel filters dumps by table and
//! protocol and refuses a request it does not understand instead of ignoring parts of it.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures_util::{Stream, StreamExt as _};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage},
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteScope, RouteVia,
    },
};

use super::error::NetError;

/// An Ethernet (EUI-48) address.
pub type Mac = [u8; 6];

/// The type of a route (`rtm_type`, RTN_*), as `ip route` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Nat,
    Other(u8),
}

impl RouteKind {
    /// From `rtm_type` (include/uapi/linux/rtnetlink.h).
    pub fn from_raw(t: u8) -> Self {
        match t {
            1 => RouteKind::Unicast,
            2 => RouteKind::Local,
            3 => RouteKind::Broadcast,
            4 => RouteKind::Anycast,
            5 => RouteKind::Multicast,
            6 => RouteKind::Blackhole,
            7 => RouteKind::Unreachable,
            8 => RouteKind::Prohibit,
            9 => RouteKind::Throw,
            10 => RouteKind::Nat,
            t => RouteKind::Other(t),
        }
    }

    pub fn raw(self) -> u8 {
        match self {
            RouteKind::Unicast => 1,
            RouteKind::Local => 2,
            RouteKind::Broadcast => 3,
            RouteKind::Anycast => 4,
            RouteKind::Multicast => 5,
            RouteKind::Blackhole => 6,
            RouteKind::Unreachable => 7,
            RouteKind::Prohibit => 8,
            RouteKind::Throw => 9,
            RouteKind::Nat => 10,
            RouteKind::Other(t) => t,
        }
    }

    /// The kind of route a failed output lookup ended on, from its errno. The kernel
    /// answers RTM_GETROUTE with an error instead of a route when the route it finds
    /// drops the packet: `fib_props` in net/ipv4/fib_semantics.c and
    /// `ip6_rt_type_to_error` in net/ipv6/route.c give blackhole EINVAL, unreachable
    /// EHOSTUNREACH, prohibit EACCES.
    fn from_lookup_errno(errno: i32) -> Option<Self> {
        match errno {
            libc::EINVAL => Some(RouteKind::Blackhole),
            libc::EHOSTUNREACH => Some(RouteKind::Unreachable),
            libc::EACCES => Some(RouteKind::Prohibit),
            _ => None,
        }
    }
}

impl std::fmt::Display for RouteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteKind::Unicast => f.write_str("unicast"),
            RouteKind::Local => f.write_str("local"),
            RouteKind::Broadcast => f.write_str("broadcast"),
            RouteKind::Anycast => f.write_str("anycast"),
            RouteKind::Multicast => f.write_str("multicast"),
            RouteKind::Blackhole => f.write_str("blackhole"),
            RouteKind::Unreachable => f.write_str("unreachable"),
            RouteKind::Prohibit => f.write_str("prohibit"),
            RouteKind::Throw => f.write_str("throw"),
            RouteKind::Nat => f.write_str("nat"),
            RouteKind::Other(t) => write!(f, "type {t}"),
        }
    }
}

/// The kernel's choice for one destination ([`Netlink::route_get`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub kind: RouteKind,
    /// The output interface; `None` for routes that drop (blackhole, unreachable,
    /// prohibit).
    pub oif: Option<u32>,
    /// The next hop, when the destination is not on-link.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would pick.
    pub prefsrc: Option<IpAddr>,
    /// The table the route was found in.
    pub table: Option<u32>,
}

/// The state of a neighbour entry (`ndm_state`, NUD_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NeighbourState {
    None,
    Incomplete,
    Reachable,
    Stale,
    Delay,
    Probe,
    Failed,
    NoArp,
    Permanent,
    Other(u16),
}

impl NeighbourState {
    /// From `ndm_state` (include/uapi/linux/neighbour.h).
    pub fn from_raw(s: u16) -> Self {
        match s {
            0x00 => NeighbourState::None,
            0x01 => NeighbourState::Incomplete,
            0x02 => NeighbourState::Reachable,
            0x04 => NeighbourState::Stale,
            0x08 => NeighbourState::Delay,
            0x10 => NeighbourState::Probe,
            0x20 => NeighbourState::Failed,
            0x40 => NeighbourState::NoArp,
            0x80 => NeighbourState::Permanent,
            s => NeighbourState::Other(s),
        }
    }

    /// Whether an entry in this state holds a MAC the kernel itself would send to
    /// (NUD_VALID minus the unresolved states): REACHABLE, STALE, DELAY, PROBE,
    /// PERMANENT, NOARP. A STALE entry is used and re-confirmed by the kernel on use.
    pub fn usable(self) -> bool {
        matches!(
            self,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::NoArp
        )
    }
}

/// A resolved neighbour: its MAC and the state of the kernel's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourEntry {
    pub mac: Mac,
    pub state: NeighbourState,
}

/// How an XDP program is attached (IFLA_XDP_ATTACHED).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Generic XDP (`xdpgeneric`, XDP_FLAGS_SKB_MODE).
    Skb,
    /// Native, in the driver (`xdpdrv`, XDP_FLAGS_DRV_MODE).
    Driver,
    /// Offloaded to the NIC (`xdpoffload`, XDP_FLAGS_HW_MODE).
    Hardware,
}

impl XdpMode {
    /// The XDP_FLAGS_*_MODE bit of the mode (include/uapi/linux/if_link.h).
    fn flag(self) -> u32 {
        match self {
            XdpMode::Skb => 1 << 1,
            XdpMode::Driver => 1 << 2,
            XdpMode::Hardware => 1 << 3,
        }
    }
}

/// An XDP program attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpAttached {
    pub prog_id: u32,
    pub mode: XdpMode,
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Its Ethernet address; `None` for interfaces without one (tun, wireguard).
    pub mac: Option<Mac>,
    /// The XDP programs attached, one per mode. The kernel holds at most one program
    /// per mode and never a native and a generic one at once; an offloaded program may
    /// sit beside either (XDP_ATTACHED_MULTI).
    pub xdp: Vec<XdpAttached>,
}

/// What a route lb writes does with the packets of its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Out of an interface, to a gateway or on-link.
    Unicast { oif: u32, gateway: Option<IpAddr> },
    /// Delivered to this host (like `ip route add local ... dev lo`).
    Local { oif: u32 },
    /// Dropped silently.
    Blackhole,
    /// Dropped with ICMP host unreachable.
    Unreachable,
    /// Dropped with ICMP administratively prohibited.
    Prohibit,
}

/// A route of a table, as [`Netlink::routes`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRoute {
    /// The network address of the prefix.
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub kind: RouteKind,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub table: u32,
    pub protocol: u8,
    /// The route's metric (RTA_PRIORITY).
    pub metric: Option<u32>,
}

impl TableRoute {
    /// The route as a [`RouteTarget`], when it is one lb could have written.
    pub fn target(&self) -> Option<RouteTarget> {
        Some(match self.kind {
            RouteKind::Unicast => RouteTarget::Unicast {
                oif: self.oif?,
                gateway: self.gateway,
            },
            RouteKind::Local => RouteTarget::Local { oif: self.oif? },
            RouteKind::Blackhole => RouteTarget::Blackhole,
            RouteKind::Unreachable => RouteTarget::Unreachable,
            RouteKind::Prohibit => RouteTarget::Prohibit,
            _ => return None,
        })
    }
}

/// A change of the kernel's neighbour table ([`neighbour_events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NeighbourEvent {
    /// An entry was added or changed. `entry` is `None` while it is not usable
    /// (INCOMPLETE, FAILED, ...): see [`NeighbourState::usable`].
    Changed {
        ifindex: u32,
        addr: IpAddr,
        state: NeighbourState,
        entry: Option<NeighbourEntry>,
    },
    /// An entry was removed.
    Removed { ifindex: u32, addr: IpAddr },
    /// The kernel dropped events because the socket's buffer was full (ENOBUFS):
    /// whatever the listener keeps must be read again.
    Lost,
}

/// A handle over one rtnetlink connection; clones share it.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn full_len(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the netlink connection is closed",
    )
}

/// Sends one request and collects the answer: the messages of a dump, the one message
/// of a get, nothing for an acknowledged change. A refusal is the kernel's errno.
async fn exchange(
    handle: &rtnetlink::Handle,
    message: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut req = NetlinkMessage::from(message);
    req.header.flags = flags;
    let mut answer = handle.clone().request(req).map_err(|_| closed())?;
    let mut out = Vec::new();
    while let Some(msg) = answer.next().await {
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            NetlinkPayload::Overrun(_) => {
                return Err(io::Error::other(
                    "the kernel's answer overran the netlink socket's buffer",
                ));
            }
            _ => {}
        }
    }
    Ok(out)
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn via_addr(v: &RouteVia) -> Option<IpAddr> {
    match v {
        RouteVia::Inet(a) => Some(IpAddr::V4(*a)),
        RouteVia::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// Reads the answer to RTM_GETROUTE for one destination.
pub fn decode_route(m: &RouteMessage) -> Route {
    let mut r = Route {
        kind: RouteKind::from_raw(m.header.kind.into()),
        oif: None,
        gateway: None,
        prefsrc: None,
        table: (m.header.table != RouteHeader::RT_TABLE_UNSPEC).then_some(m.header.table.into()),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Gateway(g) => r.gateway = route_addr(g),
            RouteAttribute::Via(v) => r.gateway = via_addr(v),
            RouteAttribute::PrefSource(s) => r.prefsrc = route_addr(s),
            RouteAttribute::Table(t) => r.table = Some(*t),
            _ => {}
        }
    }
    r
}

/// A neighbour message naming `addr` on interface `ifindex`.
fn neighbour_message(ifindex: u32, addr: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(addr);
    m.header.ifindex = ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    m
}

/// The tokio runtime a netlink socket's driver is spawned on.
fn current_runtime() -> Result<tokio::runtime::Handle, NetError> {
    tokio::runtime::Handle::try_current().map_err(|source| NetError::NoRuntime { source })
}

/// Reads one route of a dump; `None` for cached clones and families other than IP.
pub fn decode_table_route(m: &RouteMessage) -> Option<TableRoute> {
    if m.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let unspecified = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut r = TableRoute {
        dst: unspecified,
        prefix_len: m.header.destination_prefix_length,
        kind: RouteKind::from_raw(m.header.kind.into()),
        oif: None,
        gateway: None,
        table: m.header.table.into(),
        protocol: m.header.protocol.into(),
        metric: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => r.dst = route_addr(d)?,
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Gateway(g) => r.gateway = route_addr(g),
            RouteAttribute::Via(v) => r.gateway = via_addr(v),
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Priority(p) => r.metric = Some(*p),
            _ => {}
        }
    }
    Some(r)
}

/// The usable MAC of a neighbour message: a usable state and a 6-byte link-layer
/// address.
pub fn usable_entry(m: &NeighbourMessage) -> Option<NeighbourEntry> {
    let state = NeighbourState::from_raw(m.header.state.into());
    if !state.usable() {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => Some(NeighbourEntry {
            mac: l.as_slice().try_into().ok()?,
            state,
        }),
        _ => None,
    })
}

fn neighbour_addr(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

/// The XDP programs an IFLA_XDP attribute reports. The kernel (`rtnl_xdp_fill`) puts
/// one IFLA_XDP_{SKB,DRV,HW}_PROG_ID per attached mode; IFLA_XDP_PROG_ID with
/// IFLA_XDP_ATTACHED is read when those are missing.
pub fn decode_xdp(attrs: &[LinkXdp]) -> Vec<XdpAttached> {
    use netlink_packet_route::link::XdpAttached as Attached;
    let mut out: Vec<XdpAttached> = attrs
        .iter()
        .filter_map(|a| {
            let (prog_id, mode) = match a {
                LinkXdp::SkbProgId(id) => (*id, XdpMode::Skb),
                LinkXdp::DrvProgId(id) => (*id, XdpMode::Driver),
                LinkXdp::HwProgId(id) => (*id, XdpMode::Hardware),
                _ => return None,
            };
            (prog_id != 0).then_some(XdpAttached { prog_id, mode })
        })
        .collect();
    if out.is_empty() {
        let mode = attrs.iter().find_map(|a| match a {
            LinkXdp::Attached(Attached::SocketBuffer) => Some(XdpMode::Skb),
            LinkXdp::Attached(Attached::Driver) => Some(XdpMode::Driver),
            LinkXdp::Attached(Attached::Hardware) => Some(XdpMode::Hardware),
            _ => None,
        });
        let id = attrs.iter().find_map(|a| match a {
            LinkXdp::ProgId(id) if *id != 0 => Some(*id),
            _ => None,
        });
        if let (Some(mode), Some(prog_id)) = (mode, id) {
            out.push(XdpAttached { prog_id, mode });
        }
    }
    out.sort_by_key(|x| x.mode.flag());
    out
}

/// Reads an RTM_NEWLINK answer.
pub fn decode_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        xdp: Vec::new(),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(mac) => l.mac = mac.as_slice().try_into().ok(),
            LinkAttribute::Xdp(x) => l.xdp = decode_xdp(x),
            _ => {}
        }
    }
    l
}

/// `dst/prefix_len` checked to be a network prefix (no host bits set).
pub fn check_prefix(dst: IpAddr, prefix_len: u8) -> Result<(), NetError> {
    let bad = NetError::BadPrefix { dst, prefix_len };
    let host_bits = match dst {
        IpAddr::V4(a) => {
            let len = u32::from(prefix_len);
            if len > 32 {
                return Err(bad);
            }
            u32::from(a).checked_shl(len).unwrap_or(0) != 0
        }
        IpAddr::V6(a) => {
            let len = u32::from(prefix_len);
            if len > 128 {
                return Err(bad);
            }
            u128::from(a).checked_shl(len).unwrap_or(0) != 0
        }
    };
    if host_bits { Err(bad) } else { Ok(()) }
}

/// The header and attributes shared by the messages that name one route of a table.
fn table_route_message(table: u32, protocol: u8, dst: IpAddr, prefix_len: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(dst);
    m.header.destination_prefix_length = prefix_len;
    // Tables above 255 only fit RTA_TABLE; rtm_table then says RT_TABLE_UNSPEC, as
    // iproute2 writes it.
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = protocol.into();
    m.attributes.push(RouteAttribute::Table(table));
    if prefix_len > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    }
    m
}

/// The RTM_NEWROUTE message of [`Netlink::route_replace`].
pub fn replace_message(
    table: u32,
    protocol: u8,
    dst: IpAddr,
    prefix_len: u8,
    target: RouteTarget,
) -> Result<RouteMessage, NetError> {
    check_prefix(dst, prefix_len)?;
    let mut m = table_route_message(table, protocol, dst, prefix_len);
    // Scopes as iproute2 picks them: a device route is link-scoped, a local route
    // host-scoped, everything else universe.
    let (kind, scope) = match target {
        RouteTarget::Unicast { oif, gateway } => {
            m.attributes.push(RouteAttribute::Oif(oif));
            match gateway {
                Some(gw) if family(gw) == family(dst) => {
                    m.attributes
                        .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
                }
                // An IPv6 next hop of an IPv4 route (RFC 8950) goes in RTA_VIA.
                Some(IpAddr::V6(gw)) => m.attributes.push(RouteAttribute::Via(gw.into())),
                Some(gw) => {
                    return Err(NetError::BadRoute {
                        what: format!(
                            "the IPv6 route {dst}/{prefix_len} cannot have the IPv4 gateway {gw}"
                        ),
                    });
                }
                None => {}
            }
            let scope = if gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            };
            (RouteKind::Unicast, scope)
        }
        RouteTarget::Local { oif } => {
            m.attributes.push(RouteAttribute::Oif(oif));
            (RouteKind::Local, RouteScope::Host)
        }
        RouteTarget::Blackhole => (RouteKind::Blackhole, RouteScope::Universe),
        RouteTarget::Unreachable => (RouteKind::Unreachable, RouteScope::Universe),
        RouteTarget::Prohibit => (RouteKind::Prohibit, RouteScope::Universe),
    };
    m.header.kind = kind.raw().into();
    m.header.scope = scope;
    Ok(m)
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its
    /// driver on the current tokio runtime (an error outside one).
    pub fn new() -> Result<Self, NetError> {
        let rt = current_runtime()?;
        let (conn, handle, messages) = rtnetlink::new_connection_with_strict_check()
            .map_err(|source| NetError::Open { source })?;
        // Nothing is subscribed: the kernel sends nothing unsolicited. Dropping the
        // receiver lets the driver end once the last handle is gone.
        drop(messages);
        rt.spawn(conn);
        Ok(Netlink { handle })
    }

    async fn ask(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        exchange(&self.handle, message, flags).await
    }

    /// The kernel's route to `dst` (RTM_GETROUTE, like `ip route get`): the FIB's own
    /// choice, policy rules included. A route that drops (blackhole, unreachable,
    /// prohibit) is returned as such; no route at all is
    /// [`NetError::NetworkUnreachable`].
    pub async fn route_get(&self, dst: IpAddr) -> Result<Route, NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst);
        m.header.destination_prefix_length = full_len(dst);
        // IPv4 reports the table the route was found in only when asked to
        // (RTM_F_LOOKUP_TABLE); IPv6 always does, and its strict check refuses the flag
        // (inet6_rtm_valid_getroute_req) with the EINVAL a blackhole also gets.
        if dst.is_ipv4() {
            m.header.flags = RouteFlags::LookupTable;
        }
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let answer = match self
            .ask(RouteNetlinkMessage::GetRoute(m), NLM_F_REQUEST)
            .await
        {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => {
                return Err(NetError::NetworkUnreachable { dst });
            }
            Err(e) => match e.raw_os_error().and_then(RouteKind::from_lookup_errno) {
                Some(kind) => {
                    return Ok(Route {
                        kind,
                        oif: None,
                        gateway: None,
                        prefsrc: None,
                        table: None,
                    });
                }
                None => {
                    return Err(NetError::Request {
                        op: format!("asking the kernel for its route to {dst}"),
                        source: e,
                    });
                }
            },
        };
        answer
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(decode_route(r)),
                _ => None,
            })
            .ok_or_else(|| NetError::Malformed {
                op: format!("asking the kernel for its route to {dst}"),
                missing: "route",
            })
    }

    /// The kernel's neighbour entry of `addr` on interface `ifindex`, when it holds a
    /// usable MAC ([`NeighbourState::usable`]); `None` when there is no entry or it is
    /// not resolved (INCOMPLETE, FAILED).
    pub async fn neighbour(
        &self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<Option<NeighbourEntry>, NetError> {
        Ok(self
            .neighbour_message(ifindex, addr)
            .await?
            .and_then(|n| usable_entry(&n)))
    }

    /// The state of the kernel's neighbour entry of `addr` on interface `ifindex`;
    /// `None` when there is no entry.
    pub async fn neighbour_state(
        &self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<Option<NeighbourState>, NetError> {
        Ok(self
            .neighbour_message(ifindex, addr)
            .await?
            .map(|n| NeighbourState::from_raw(n.header.state.into())))
    }

    async fn neighbour_message(
        &self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<Option<NeighbourMessage>, NetError> {
        let m = neighbour_message(ifindex, addr);
        match self
            .ask(RouteNetlinkMessage::GetNeighbour(m), NLM_F_REQUEST)
            .await
        {
            Ok(answer) => Ok(answer.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(source) => Err(NetError::Request {
                op: format!("asking the kernel for the neighbour {addr} on interface {ifindex}"),
                source,
            }),
        }
    }

    /// Makes the kernel resolve `addr` on interface `ifindex` (an ARP request or IPv6
    /// neighbour solicitation), as if it had a packet to send there: RTM_NEWNEIGH with
    /// NTF_USE (`ip neigh replace ADDR dev DEV use`), which creates the entry if needed
    /// and runs `neigh_event_send` on it without touching its address or state. An entry
    /// already resolved is left as it is. Returns at once; the answer comes later.
    pub async fn solicit(&self, ifindex: u32, addr: IpAddr) -> Result<(), NetError> {
        let mut m = neighbour_message(ifindex, addr);
        m.header.flags = NeighbourFlags::Use;
        self.ask(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map(drop)
        .map_err(|source| NetError::Request {
            op: format!("asking the kernel to resolve {addr} on interface {ifindex}"),
            source,
        })
    }

    /// The link a RTM_GETLINK names; `None` when there is none (ENODEV).
    async fn get_link(&self, m: LinkMessage) -> io::Result<Option<Link>> {
        match self
            .ask(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST)
            .await
        {
            Ok(answer) => Ok(answer.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(decode_link(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The interface named `name`.
    pub async fn link(&self, name: &str) -> Result<Link, NetError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.get_link(m).await {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(NetError::NoSuchLink {
                name: name.to_string(),
            }),
            Err(source) => Err(NetError::Request {
                op: format!("asking the kernel for the interface {name}"),
                source,
            }),
        }
    }

    /// The interface with index `index`.
    pub async fn link_by_index(&self, index: u32) -> Result<Link, NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.get_link(m).await {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(NetError::NoSuchLinkIndex { index }),
            Err(source) => Err(NetError::Request {
                op: format!("asking the kernel for the interface with index {index}"),
                source,
            }),
        }
    }

    /// Detaches every XDP program attached to interface `ifindex` through netlink
    /// (RTM_SETLINK with IFLA_XDP_FD -1 in each attached mode, like `ip link set dev X
    /// xdp off`). A program attached through a BPF link cannot be detached this way:
    /// [`NetError::XdpHeldByLink`]. Returns what was attached.
    pub async fn detach_xdp(&self, ifindex: u32) -> Result<Vec<XdpAttached>, NetError> {
        let attached = self.link_by_index(ifindex).await?.xdp;
        for x in &attached {
            let mut m = LinkMessage::default();
            m.header.index = ifindex;
            m.attributes.push(LinkAttribute::Xdp(vec![
                LinkXdp::Fd(-1),
                LinkXdp::Flags(x.mode.flag()),
            ]));
            match self
                .ask(RouteNetlinkMessage::SetLink(m), NLM_F_REQUEST | NLM_F_ACK)
                .await
            {
                Ok(_) => {}
                // dev_xdp_attach (net/core/dev.c): "Can't replace active BPF XDP link".
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(NetError::XdpHeldByLink { ifindex });
                }
                Err(source) => {
                    return Err(NetError::Request {
                        op: format!(
                            "detaching the XDP program {} ({:?} mode) from interface {ifindex}",
                            x.prog_id, x.mode
                        ),
                        source,
                    });
                }
            }
        }
        Ok(attached)
    }

    /// Writes the route `dst/prefix_len` into `table`, marked with `protocol`
    /// (RTM_NEWROUTE with NLM_F_CREATE|NLM_F_REPLACE, like `ip route replace`): a route
    /// of the same prefix and metric in that table is replaced.
    pub async fn route_replace(
        &self,
        table: u32,
        protocol: u8,
        dst: IpAddr,
        prefix_len: u8,
        target: RouteTarget,
    ) -> Result<(), NetError> {
        let m = replace_message(table, protocol, dst, prefix_len, target)?;
        self.ask(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map(drop)
        .map_err(|source| NetError::Request {
            op: format!("writing the route {dst}/{prefix_len} ({target:?}) into table {table}"),
            source,
        })
    }

    /// Deletes the route `dst/prefix_len` of `table` marked with `protocol`, whatever
    /// its type. Returns whether there was one.
    pub async fn route_delete(
        &self,
        table: u32,
        protocol: u8,
        dst: IpAddr,
        prefix_len: u8,
    ) -> Result<bool, NetError> {
        check_prefix(dst, prefix_len)?;
        let mut m = table_route_message(table, protocol, dst, prefix_len);
        // RT_SCOPE_NOWHERE and RTN_UNSPEC match any scope and type (fib_table_delete).
        m.header.scope = RouteScope::NoWhere;
        match self
            .ask(RouteNetlinkMessage::DelRoute(m), NLM_F_REQUEST | NLM_F_ACK)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(source) => Err(NetError::Request {
                op: format!("deleting the route {dst}/{prefix_len} from table {table}"),
                source,
            }),
        }
    }

    /// The IPv4 and IPv6 routes of `table` marked with `protocol`.
    pub async fn routes(&self, table: u32, protocol: u8) -> Result<Vec<TableRoute>, NetError> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            // With strict checking the kernel dumps only this table and protocol.
            m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
            m.header.protocol = protocol.into();
            m.attributes.push(RouteAttribute::Table(table));
            let answer = match self
                .ask(RouteNetlinkMessage::GetRoute(m), NLM_F_REQUEST | NLM_F_DUMP)
                .await
            {
                Ok(a) => a,
                // A table that does not exist yet holds nothing.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(source) => {
                    return Err(NetError::Request {
                        op: format!("listing the routes of table {table}"),
                        source,
                    });
                }
            };
            out.extend(answer.iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => {
                    decode_table_route(r).filter(|r| r.table == table && r.protocol == protocol)
                }
                _ => None,
            }));
        }
        Ok(out)
    }
}

/// Reads one message of the neighbour group.
pub fn decode_neighbour_event(m: &RouteNetlinkMessage) -> Option<NeighbourEvent> {
    match m {
        RouteNetlinkMessage::NewNeighbour(n) => Some(NeighbourEvent::Changed {
            ifindex: n.header.ifindex,
            addr: neighbour_addr(n)?,
            state: NeighbourState::from_raw(n.header.state.into()),
            entry: usable_entry(n),
        }),
        RouteNetlinkMessage::DelNeighbour(n) => Some(NeighbourEvent::Removed {
            ifindex: n.header.ifindex,
            addr: neighbour_addr(n)?,
        }),
        _ => None,
    }
}

/// The kernel's neighbour changes (RTNLGRP_NEIGH) in the calling thread's network
/// namespace, on a socket of their own whose driver runs on the current tokio runtime.
/// The stream ends if the socket fails; after [`NeighbourEvent::Lost`] events were
/// dropped and the listener must read again what it keeps.
pub fn neighbour_events() -> Result<impl Stream<Item = NeighbourEvent> + Send + Unpin, NetError> {
    let rt = current_runtime()?;
    let (conn, handle, messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Neigh])
            .map_err(|source| NetError::Open { source })?;
    let driver = rt.spawn(conn);
    // The driver ends when both the handle and the receiver are gone: keep the handle
    // with the stream, and stop the driver with it.
    let guard = Subscription {
        _handle: handle,
        driver,
    };
    Ok(messages.filter_map(move |(msg, _)| {
        let _ = &guard;
        std::future::ready(match msg.payload {
            NetlinkPayload::InnerMessage(m) => decode_neighbour_event(&m),
            NetlinkPayload::Overrun(_) => Some(NeighbourEvent::Lost),
            _ => None,
        })
    }))
}

/// Keeps a subscription's connection alive while its stream lives; aborts its driver
/// when the stream is dropped.
struct Subscription {
    _handle: rtnetlink::Handle,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        link::XdpAttached as Attached,
        neighbour::NeighbourState as NlState,
        route::{RouteProtocol, RouteType},
    };

    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_route_answer_is_read() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.kind = RouteType::Unicast;
        m.header.table = 254;
        m.attributes = vec![
            RouteAttribute::Table(1000),
            RouteAttribute::Destination(RouteAddress::Inet("192.0.2.7".parse().unwrap())),
            RouteAttribute::Oif(3),
            RouteAttribute::Gateway(RouteAddress::Inet("10.0.0.1".parse().unwrap())),
            RouteAttribute::PrefSource(RouteAddress::Inet("10.0.0.5".parse().unwrap())),
        ];
        assert_eq!(
            decode_route(&m),
            Route {
                kind: RouteKind::Unicast,
                oif: Some(3),
                gateway: Some(v4("10.0.0.1")),
                prefsrc: Some(v4("10.0.0.5")),
                table: Some(1000),
            },
            "RTA_TABLE wins over rtm_table"
        );
        // An IPv4 route through an IPv6 next hop (RTA_VIA).
        m.attributes = vec![RouteAttribute::Via(RouteVia::Inet6(
            "fe80::1".parse().unwrap(),
        ))];
        m.header.kind = RouteType::Local;
        let r = decode_route(&m);
        assert_eq!(
            (r.kind, r.gateway, r.oif, r.table),
            (
                RouteKind::Local,
                Some("fe80::1".parse().unwrap()),
                None,
                Some(254)
            )
        );
    }

    #[test]
    fn route_kinds_round_trip_and_dropping_lookups_are_named() {
        for t in 0..=12u8 {
            assert_eq!(RouteKind::from_raw(t).raw(), t);
        }
        assert_eq!(
            RouteKind::from_raw(RouteType::BlackHole.into()),
            RouteKind::Blackhole
        );
        assert_eq!(
            RouteKind::from_raw(RouteType::Prohibit.into()),
            RouteKind::Prohibit
        );
        assert_eq!(
            RouteKind::from_lookup_errno(libc::EINVAL),
            Some(RouteKind::Blackhole)
        );
        assert_eq!(
            RouteKind::from_lookup_errno(libc::EHOSTUNREACH),
            Some(RouteKind::Unreachable)
        );
        assert_eq!(
            RouteKind::from_lookup_errno(libc::EACCES),
            Some(RouteKind::Prohibit)
        );
        assert_eq!(RouteKind::from_lookup_errno(libc::ENETUNREACH), None);
        assert_eq!(RouteKind::Blackhole.to_string(), "blackhole");
    }

    fn neighbour(state: NlState, lladdr: Option<&[u8]>) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = 4;
        m.header.state = state;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                "10.0.0.9".parse().unwrap(),
            )));
        if let Some(l) = lladdr {
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(l.to_vec()));
        }
        m
    }

    #[test]
    fn only_usable_states_with_a_mac_resolve() {
        let mac = [2, 0, 0, 0, 0, 9];
        for (state, usable) in [
            (NlState::Reachable, true),
            (NlState::Stale, true),
            (NlState::Delay, true),
            (NlState::Probe, true),
            (NlState::Permanent, true),
            (NlState::Noarp, true),
            (NlState::Incomplete, false),
            (NlState::Failed, false),
            (NlState::None, false),
        ] {
            let got = usable_entry(&neighbour(state, Some(&mac)));
            assert_eq!(got.is_some(), usable, "{state:?}");
            if let Some(e) = got {
                assert_eq!(e.mac, mac);
                assert_eq!(e.state, NeighbourState::from_raw(state.into()));
            }
        }
        assert_eq!(
            usable_entry(&neighbour(NlState::Reachable, None)),
            None,
            "no link-layer address"
        );
        assert_eq!(
            usable_entry(&neighbour(NlState::Reachable, Some(&[1, 2, 3, 4]))),
            None,
            "not an Ethernet address"
        );
    }

    #[test]
    fn neighbour_events_are_read() {
        let mac = [2, 0, 0, 0, 0, 9];
        assert_eq!(
            decode_neighbour_event(&RouteNetlinkMessage::NewNeighbour(neighbour(
                NlState::Reachable,
                Some(&mac)
            ))),
            Some(NeighbourEvent::Changed {
                ifindex: 4,
                addr: v4("10.0.0.9"),
                state: NeighbourState::Reachable,
                entry: Some(NeighbourEntry {
                    mac,
                    state: NeighbourState::Reachable
                }),
            })
        );
        assert_eq!(
            decode_neighbour_event(&RouteNetlinkMessage::NewNeighbour(neighbour(
                NlState::Failed,
                None
            ))),
            Some(NeighbourEvent::Changed {
                ifindex: 4,
                addr: v4("10.0.0.9"),
                state: NeighbourState::Failed,
                entry: None,
            })
        );
        assert_eq!(
            decode_neighbour_event(&RouteNetlinkMessage::DelNeighbour(neighbour(
                NlState::Stale,
                Some(&mac)
            ))),
            Some(NeighbourEvent::Removed {
                ifindex: 4,
                addr: v4("10.0.0.9")
            })
        );
    }

    #[test]
    fn xdp_attachments_are_read_per_mode() {
        assert_eq!(
            decode_xdp(&[
                LinkXdp::Attached(Attached::SocketBuffer),
                LinkXdp::SkbProgId(42),
                LinkXdp::ProgId(42),
            ]),
            vec![XdpAttached {
                prog_id: 42,
                mode: XdpMode::Skb
            }]
        );
        assert_eq!(
            decode_xdp(&[
                LinkXdp::Attached(Attached::Multiple),
                LinkXdp::HwProgId(8),
                LinkXdp::DrvProgId(7),
            ]),
            vec![
                XdpAttached {
                    prog_id: 7,
                    mode: XdpMode::Driver
                },
                XdpAttached {
                    prog_id: 8,
                    mode: XdpMode::Hardware
                }
            ]
        );
        // Only the mode and IFLA_XDP_PROG_ID.
        assert_eq!(
            decode_xdp(&[LinkXdp::Attached(Attached::Driver), LinkXdp::ProgId(5)]),
            vec![XdpAttached {
                prog_id: 5,
                mode: XdpMode::Driver
            }]
        );
        assert_eq!(decode_xdp(&[LinkXdp::Attached(Attached::None)]), vec![]);
    }

    #[test]
    fn a_link_answer_is_read() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.attributes = vec![
            LinkAttribute::IfName("v0".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Xdp(vec![
                LinkXdp::Attached(Attached::Driver),
                LinkXdp::DrvProgId(99),
            ]),
        ];
        assert_eq!(
            decode_link(&m),
            Link {
                index: 7,
                name: "v0".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                xdp: vec![XdpAttached {
                    prog_id: 99,
                    mode: XdpMode::Driver
                }],
            }
        );
        m.attributes = vec![LinkAttribute::IfName("tun0".into())];
        assert_eq!(decode_link(&m).mac, None, "no hardware address");
    }

    #[test]
    fn prefixes_must_be_networks() {
        assert!(check_prefix(v4("10.1.0.0"), 16).is_ok());
        assert!(check_prefix(v4("10.1.0.7"), 32).is_ok());
        assert!(check_prefix(v4("0.0.0.0"), 0).is_ok());
        assert!(matches!(
            check_prefix(v4("10.1.0.1"), 24),
            Err(NetError::BadPrefix { prefix_len: 24, .. })
        ));
        assert!(check_prefix(v4("10.1.0.0"), 33).is_err());
        assert!(check_prefix("2001:db8::".parse().unwrap(), 64).is_ok());
        assert!(check_prefix("2001:db8::1".parse().unwrap(), 128).is_ok());
        assert!(check_prefix("2001:db8::1".parse().unwrap(), 64).is_err());
        assert!(check_prefix("2001:db8::".parse().unwrap(), 129).is_err());
        assert_eq!(
            check_prefix(v4("10.1.0.1"), 24).unwrap_err().to_string(),
            "10.1.0.1/24 is not a network prefix"
        );
    }

    #[test]
    fn replace_messages_carry_table_protocol_type_and_scope() {
        let m = replace_message(1000, 201, v4("10.100.0.10"), 32, RouteTarget::Blackhole).unwrap();
        assert_eq!(
            (
                m.header.table,
                m.header.protocol,
                m.header.kind,
                m.header.scope
            ),
            (
                RouteHeader::RT_TABLE_UNSPEC,
                RouteProtocol::Other(201),
                RouteType::BlackHole,
                RouteScope::Universe
            ),
            "a table above 255 only in RTA_TABLE"
        );
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(_)))
        );

        let m = replace_message(
            100,
            201,
            "2001:db8:1::".parse().unwrap(),
            64,
            RouteTarget::Unicast {
                oif: 3,
                gateway: None,
            },
        )
        .unwrap();
        assert_eq!(
            (
                m.header.address_family,
                m.header.table,
                m.header.kind,
                m.header.scope
            ),
            (
                AddressFamily::Inet6,
                100,
                RouteType::Unicast,
                RouteScope::Link
            )
        );
        assert!(m.attributes.contains(&RouteAttribute::Oif(3)));
        assert_eq!(m.header.destination_prefix_length, 64);

        let m = replace_message(
            100,
            201,
            v4("10.2.0.0"),
            16,
            RouteTarget::Unicast {
                oif: 3,
                gateway: Some(v4("10.0.0.1")),
            },
        )
        .unwrap();
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(
            m.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                    "10.0.0.1".parse().unwrap()
                )))
        );

        let m =
            replace_message(255, 201, v4("10.3.0.1"), 32, RouteTarget::Local { oif: 1 }).unwrap();
        assert_eq!(
            (m.header.table, m.header.kind, m.header.scope),
            (255, RouteType::Local, RouteScope::Host)
        );

        assert!(matches!(
            replace_message(
                100,
                201,
                "2001:db8::".parse().unwrap(),
                64,
                RouteTarget::Unicast {
                    oif: 3,
                    gateway: Some(v4("10.0.0.1"))
                }
            ),
            Err(NetError::BadRoute { .. })
        ));
        assert!(matches!(
            replace_message(100, 201, v4("10.3.0.1"), 24, RouteTarget::Blackhole),
            Err(NetError::BadPrefix { .. })
        ));
    }

    #[test]
    fn dumped_routes_are_read_and_clones_skipped() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet6;
        m.header.destination_prefix_length = 64;
        m.header.kind = RouteType::Unicast;
        m.header.table = 100;
        m.header.protocol = RouteProtocol::Other(201);
        m.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet6("2001:db8:1::".parse().unwrap())),
            RouteAttribute::Oif(3),
            RouteAttribute::Priority(1024),
        ];
        let r = decode_table_route(&m).unwrap();
        assert_eq!(
            r,
            TableRoute {
                dst: "2001:db8:1::".parse().unwrap(),
                prefix_len: 64,
                kind: RouteKind::Unicast,
                oif: Some(3),
                gateway: None,
                table: 100,
                protocol: 201,
                metric: Some(1024),
            }
        );
        assert_eq!(
            r.target(),
            Some(RouteTarget::Unicast {
                oif: 3,
                gateway: None
            })
        );
        // The default route has no RTA_DST.
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 0;
        m.attributes = vec![RouteAttribute::Table(5000)];
        m.header.kind = RouteType::Throw;
        let r = decode_table_route(&m).unwrap();
        assert_eq!((r.dst, r.table, r.target()), (v4("0.0.0.0"), 5000, None));
        m.header.flags = RouteFlags::Cloned;
        assert_eq!(decode_table_route(&m), None);
    }
}
