//! lb's netlink plumbing against the real kernel (root; `cargo xtask test`).
//!
//! Each test builds its own named network namespaces ([`Netns`], deleted on drop, also
//! when the test fails) and runs lb's [`Netlink`] inside one of them, on a thread of its
//! own that entered the namespace with setns(2). What lb reads is checked against what
//! the test set up with `ip`, and where it matters against what `ip` itself shows.
mod support;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use futures_util::StreamExt as _;
use lb_userspace::{
    dataplane::{
        Dataplane, Limits,
        object::{self as ebpf, AttachMode},
    },
    net::{
        NetError, Netlink,
        neighbour::{self, Unreachable},
        netlink::{
            NeighbourEntry, NeighbourEvent, NeighbourState, Route, RouteKind, RouteTarget,
            XdpAttached, XdpMode, neighbour_events,
        },
    },
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use support::daemon::Netns;

/// How long the kernel may take to resolve a neighbour or report an event: a bound on
/// waiting, not a speed requirement.
const WAIT: Duration = Duration::from_secs(10);

/// A protocol number for lb's routes in these tests (unassigned in rt_protos).
const PROTO: u8 = 201;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// Moves the calling thread into `ns` (setns affects only this thread; sockets it opens
/// from now on belong to `ns`).
fn enter(ns: &Netns) {
    let f = std::fs::File::open(ns.path()).expect("opening the namespace");
    // SAFETY: setns on an fd we hold open.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs `f` with a [`Netlink`] opened inside `ns`, on a fresh thread that entered it and
/// a current-thread runtime. A panic in `f` fails the test.
fn in_ns<T, F>(ns: &Netns, f: F) -> T
where
    F: AsyncFnOnce(Netlink) -> T + Send + 'static,
    T: Send + 'static,
{
    support::require_root();
    let ns = ns.clone();
    std::thread::spawn(move || {
        enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move { f(Netlink::new().expect("opening netlink")).await })
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// One namespace with two veth pairs: `r0` (10.10.0.1/24, 2001:db8:a::1/64) and `r1`
/// (10.20.0.1/24, 2001:db8:b::1/64), their peers up in the same namespace.
fn two_uplinks() -> Netns {
    let ns = Netns::new();
    ns.veth("r0", &ns, "r0p");
    ns.veth("r1", &ns, "r1p");
    ns.ip("addr add 10.10.0.1/24 dev r0");
    ns.ip("addr add 10.20.0.1/24 dev r1");
    ns.ip("-6 addr add 2001:db8:a::1/64 dev r0 nodad");
    ns.ip("-6 addr add 2001:db8:b::1/64 dev r1 nodad");
    ns
}

#[test]
fn route_get_follows_policy_rules_over_the_main_table() {
    let ns = two_uplinks();
    let (r0, r1) = (ns.ifindex("r0"), ns.ifindex("r1"));
    // The main table has the longer prefix through r0; a rule sends the destination to
    // table 100, whose shorter route goes through r1. A longest-prefix match over the
    // main table (what /proc/net/route shows) picks r0; the kernel picks r1.
    ns.ip("route add 192.0.2.0/24 via 10.10.0.254 dev r0");
    ns.ip("route add 192.0.0.0/16 via 10.20.0.254 dev r1 table 100");
    ns.ip("rule add to 192.0.2.0/24 table 100 pref 100");
    ns.ip("-6 route add 2001:db8:9::/48 via 2001:db8:a::fe dev r0");
    ns.ip("-6 route add 2001:db8::/32 via 2001:db8:b::fe dev r1 table 100");
    ns.ip("-6 rule add to 2001:db8:9::/48 table 100 pref 100");
    let ns2 = ns.clone();
    in_ns(&ns, async move |nl| {
        assert_eq!(
            nl.route_get(ip("192.0.2.7")).await.expect("route"),
            Route {
                kind: RouteKind::Unicast,
                oif: Some(r1),
                gateway: Some(ip("10.20.0.254")),
                prefsrc: Some(ip("10.20.0.1")),
                table: Some(100),
            },
            "the rule's table, not the main table's longer prefix"
        );
        let v6 = nl.route_get(ip("2001:db8:9::7")).await.expect("route");
        assert_eq!(
            (v6.kind, v6.oif, v6.gateway, v6.table),
            (
                RouteKind::Unicast,
                Some(r1),
                Some(ip("2001:db8:b::fe")),
                Some(100)
            )
        );
        // Without the rules the main table answers: the rule made the difference.
        ns2.ip("rule del to 192.0.2.0/24 table 100 pref 100");
        ns2.ip("-6 rule del to 2001:db8:9::/48 table 100 pref 100");
        let r = nl.route_get(ip("192.0.2.7")).await.expect("route");
        assert_eq!(
            (r.oif, r.gateway, r.table),
            (Some(r0), Some(ip("10.10.0.254")), Some(254))
        );
        let r = nl.route_get(ip("2001:db8:9::7")).await.expect("route");
        assert_eq!(
            (r.oif, r.gateway, r.table),
            (Some(r0), Some(ip("2001:db8:a::fe")), Some(254))
        );
    });
}

#[test]
fn route_get_names_on_link_local_dropping_and_missing_routes() {
    let ns = two_uplinks();
    let r0 = ns.ifindex("r0");
    ns.ip("route add blackhole 10.90.0.0/24");
    ns.ip("route add unreachable 10.91.0.0/24");
    ns.ip("route add prohibit 10.92.0.0/24");
    ns.ip("-6 route add blackhole 2001:db8:90::/48");
    ns.ip("-6 route add unreachable 2001:db8:91::/48");
    ns.ip("-6 route add prohibit 2001:db8:92::/48");
    in_ns(&ns, async move |nl| {
        assert_eq!(
            nl.route_get(ip("10.10.0.5")).await.expect("route"),
            Route {
                kind: RouteKind::Unicast,
                oif: Some(r0),
                gateway: None,
                prefsrc: Some(ip("10.10.0.1")),
                table: Some(254),
            },
            "on-link: no gateway"
        );
        let r = nl.route_get(ip("2001:db8:a::5")).await.expect("route");
        assert_eq!(
            (r.kind, r.oif, r.gateway),
            (RouteKind::Unicast, Some(r0), None)
        );
        for own in ["10.10.0.1", "2001:db8:a::1"] {
            let r = nl.route_get(ip(own)).await.expect("route");
            assert_eq!(r.kind, RouteKind::Local, "{own}");
        }
        for (dst, kind) in [
            ("10.90.0.1", RouteKind::Blackhole),
            ("10.91.0.1", RouteKind::Unreachable),
            ("10.92.0.1", RouteKind::Prohibit),
            ("2001:db8:90::1", RouteKind::Blackhole),
            ("2001:db8:91::1", RouteKind::Unreachable),
            ("2001:db8:92::1", RouteKind::Prohibit),
        ] {
            let r = nl.route_get(ip(dst)).await.expect("route");
            assert_eq!((r.kind, r.oif), (kind, None), "{dst}");
        }
        for dst in ["198.51.100.1", "2001:db8:77::1"] {
            match nl.route_get(ip(dst)).await {
                Err(NetError::NetworkUnreachable { dst: d }) => assert_eq!(d, ip(dst)),
                other => panic!("{dst}: {other:?}"),
            }
        }
    });
}

/// Two namespaces joined by a veth: `n0` in `a` (10.30.0.1/24, 2001:db8:30::1/64) and
/// `n1` in `b` (10.30.0.2/24, 2001:db8:30::2/64).
fn two_hosts() -> (Netns, Netns) {
    let (a, b) = (Netns::new(), Netns::new());
    a.veth("n0", &b, "n1");
    a.ip("addr add 10.30.0.1/24 dev n0");
    b.ip("addr add 10.30.0.2/24 dev n1");
    a.ip("-6 addr add 2001:db8:30::1/64 dev n0 nodad");
    b.ip("-6 addr add 2001:db8:30::2/64 dev n1 nodad");
    (a, b)
}

/// Polls the neighbour entry until it is resolved; panics after [`WAIT`].
async fn resolved(nl: &Netlink, ifindex: u32, addr: IpAddr) -> NeighbourEntry {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(e) = nl.neighbour(ifindex, addr).await.expect("neighbour") {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} not resolved within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn neighbours_are_resolved_on_request_and_unknown_ones_are_not() {
    let (a, b) = two_hosts();
    let n0 = a.ifindex("n0");
    let peer_mac = b.mac("n1");
    a.ip("neigh add 10.30.0.50 lladdr 02:00:00:00:00:50 dev n0 nud permanent");
    in_ns(&a, async move |nl| {
        for peer in [ip("10.30.0.2"), ip("2001:db8:30::2")] {
            assert_eq!(
                nl.neighbour(n0, peer).await.expect("neighbour"),
                None,
                "{peer}: no traffic yet, no entry"
            );
            nl.solicit(n0, peer).await.expect("solicit");
            let e = resolved(&nl, n0, peer).await;
            assert_eq!(e.mac, peer_mac, "{peer}");
            assert!(e.state.usable(), "{peer}: {:?}", e.state);
            // Soliciting a resolved neighbour leaves its entry as it is.
            nl.solicit(n0, peer).await.expect("solicit again");
            assert_eq!(
                nl.neighbour(n0, peer)
                    .await
                    .expect("neighbour")
                    .map(|e| e.mac),
                Some(peer_mac)
            );
        }
        assert_eq!(
            nl.neighbour(n0, ip("10.30.0.50")).await.expect("neighbour"),
            Some(NeighbourEntry {
                mac: [2, 0, 0, 0, 0, 0x50],
                state: NeighbourState::Permanent
            })
        );
        // Nobody answers for .99: the entry exists (INCOMPLETE, then FAILED) but has no
        // MAC to use.
        nl.solicit(n0, ip("10.30.0.99")).await.expect("solicit");
        assert_eq!(
            nl.neighbour(n0, ip("10.30.0.99")).await.expect("neighbour"),
            None
        );
    });
    let shown = a.ip("neigh show 10.30.0.99 dev n0");
    assert!(
        shown.contains("INCOMPLETE") || shown.contains("FAILED"),
        "the solicitation created an unresolved entry: {shown}"
    );
}

#[test]
fn dsr_backends_are_resolved_from_route_link_and_neighbour() {
    let (a, b) = two_hosts();
    let n0 = a.ifindex("n0");
    let (lb_mac, peer_mac) = (a.mac("n0"), b.mac("n1"));
    a.ip("route add 10.40.0.0/24 via 10.30.0.2 dev n0");
    a.ip("route add blackhole 10.41.0.0/24");
    let addrs = [
        "10.30.0.2",
        "2001:db8:30::2",
        "10.30.0.99",
        "10.40.0.5",
        "10.30.0.1",
        "10.41.0.1",
        "198.51.100.1",
    ]
    .map(ip);
    in_ns(&a, async move |nl| {
        // The first lookup solicits the on-link peers; a later one finds them.
        let first = neighbour::resolve_with(&nl, &addrs, true)
            .await
            .expect("resolve");
        assert_eq!(
            first[&ip("10.30.0.99")],
            Err(Unreachable::Unresolved { iface: "n0".into() })
        );
        resolved(&nl, n0, ip("10.30.0.2")).await;
        resolved(&nl, n0, ip("2001:db8:30::2")).await;
        let found = neighbour::resolve_with(&nl, &addrs, false)
            .await
            .expect("resolve");
        let on_link = Ok(lb_userspace::model::runtime::Neighbour {
            ifindex: n0,
            mac: peer_mac,
            src_mac: lb_mac,
        });
        assert_eq!(found[&ip("10.30.0.2")], on_link);
        assert_eq!(found[&ip("2001:db8:30::2")], on_link);
        assert_eq!(
            found[&ip("10.30.0.99")].as_ref().unwrap_err().to_string(),
            "its MAC on n0 is not known yet"
        );
        assert_eq!(
            found[&ip("10.40.0.5")].as_ref().unwrap_err().to_string(),
            "reached through the router 10.30.0.2 on n0: DSR needs it on a directly connected network"
        );
        assert_eq!(found[&ip("198.51.100.1")], Err(Unreachable::NoRoute));
        assert_eq!(
            found[&ip("10.30.0.1")],
            Err(Unreachable::Other("it is an address of this host".into()))
        );
        assert_eq!(
            found[&ip("10.41.0.1")],
            Err(Unreachable::Other(
                "the kernel's route to it is of type blackhole".into()
            ))
        );
    });
}

/// The next event about `addr` that `pick` keeps; panics when none comes within
/// [`WAIT`] or events were lost.
async fn next_about(
    events: &mut (impl futures_util::Stream<Item = NeighbourEvent> + Unpin),
    addr: IpAddr,
    pick: impl Fn(&NeighbourEvent) -> bool,
) -> NeighbourEvent {
    loop {
        let e = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap_or_else(|_| panic!("no event about {addr} within {WAIT:?}"))
            .expect("the event stream ended");
        match &e {
            NeighbourEvent::Changed { addr: a, .. } | NeighbourEvent::Removed { addr: a, .. }
                if *a == addr && pick(&e) =>
            {
                return e;
            }
            NeighbourEvent::Lost => panic!("events were lost"),
            _ => {}
        }
    }
}

#[test]
fn neighbour_changes_arrive_as_events() {
    let (a, _b) = two_hosts();
    let n0 = a.ifindex("n0");
    let ns = a.clone();
    in_ns(&a, async move |_nl| {
        let mut events = neighbour_events().expect("subscribing");
        ns.ip("neigh add 10.30.0.60 lladdr 02:00:00:00:00:60 dev n0 nud permanent");
        assert_eq!(
            next_about(&mut events, ip("10.30.0.60"), |_| true).await,
            NeighbourEvent::Changed {
                ifindex: n0,
                addr: ip("10.30.0.60"),
                state: NeighbourState::Permanent,
                entry: Some(NeighbourEntry {
                    mac: [2, 0, 0, 0, 0, 0x60],
                    state: NeighbourState::Permanent
                }),
            }
        );
        // The kernel reports the entry FAILED, then removed.
        ns.ip("neigh del 10.30.0.60 dev n0");
        assert_eq!(
            next_about(&mut events, ip("10.30.0.60"), |e| {
                matches!(e, NeighbourEvent::Removed { .. })
            })
            .await,
            NeighbourEvent::Removed {
                ifindex: n0,
                addr: ip("10.30.0.60")
            }
        );
    });
}

#[test]
fn links_are_found_by_name_and_index() {
    let (a, _b) = two_hosts();
    let (n0, mac) = (a.ifindex("n0"), a.mac("n0"));
    in_ns(&a, async move |nl| {
        let l = nl.link("n0").await.expect("link");
        assert_eq!(
            (l.index, l.name.as_str(), l.mac, l.xdp.len()),
            (n0, "n0", Some(mac), 0)
        );
        assert_eq!(nl.link_by_index(n0).await.expect("link"), l);
        assert!(matches!(
            nl.link("nosuch0").await,
            Err(NetError::NoSuchLink { name }) if name == "nosuch0"
        ));
        assert!(matches!(
            nl.link_by_index(999_999).await,
            Err(NetError::NoSuchLinkIndex { index: 999_999 })
        ));
    });
}

/// Attaches the program `fd` to `ifindex` through netlink in `mode_flag`
/// (XDP_FLAGS_*_MODE), as `ip link set dev X xdp...` does: no BPF link holds it.
async fn attach_through_netlink(ifindex: u32, fd: i32, mode_flag: u32) {
    let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
    let driver = tokio::spawn(conn);
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(fd),
        LinkXdp::Flags(mode_flag),
    ]));
    handle
        .link()
        .set(m)
        .execute()
        .await
        .expect("attaching through netlink");
    driver.abort();
}

#[test]
fn xdp_programs_are_seen_with_their_id_and_mode_and_detached() {
    let (a, _b) = two_hosts();
    let n0 = a.ifindex("n0");
    let ns = a.clone();
    in_ns(&a, async move |nl| {
        let mut dp = Dataplane::load(Limits {
            conntrack_entries: 1024,
            conntrack6_entries: 1024,
        })
        .expect("loading lb's program");
        let prog: &mut aya::programs::Xdp = dp
            .ebpf_mut()
            .program_mut(ebpf::PROGRAM)
            .expect("program")
            .try_into()
            .expect("an XDP program");
        let id = prog.info().expect("program info").id();
        let fd = prog.fd().expect("program fd").as_fd().as_raw_fd();
        for (flag, mode) in [(1 << 1, XdpMode::Skb), (1 << 2, XdpMode::Driver)] {
            attach_through_netlink(n0, fd, flag).await;
            let attached = vec![XdpAttached { prog_id: id, mode }];
            assert_eq!(nl.link("n0").await.expect("link").xdp, attached, "{mode:?}");
            assert_eq!(
                ns.xdp_program("n0").map(|p| p.id),
                Some(id),
                "ip -d link agrees"
            );
            assert_eq!(nl.detach_xdp(n0).await.expect("detach"), attached);
            assert_eq!(nl.link("n0").await.expect("link").xdp, vec![], "{mode:?}");
            assert_eq!(ns.xdp_program("n0"), None, "ip -d link agrees");
        }
        assert_eq!(
            nl.detach_xdp(n0).await.expect("detach"),
            vec![],
            "nothing attached: nothing to do"
        );
        // Attached through a BPF link (as `lb run` attaches): netlink cannot detach it.
        dp.attach("n0", AttachMode::Skb)
            .expect("attaching with a BPF link");
        assert!(matches!(
            nl.detach_xdp(n0).await,
            Err(NetError::XdpHeldByLink { ifindex }) if ifindex == n0
        ));
        assert_eq!(
            nl.link("n0").await.expect("link").xdp,
            vec![XdpAttached {
                prog_id: id,
                mode: XdpMode::Skb
            }],
            "still attached"
        );
        drop(dp);
        assert_eq!(
            nl.link("n0").await.expect("link").xdp,
            vec![],
            "closing the link detaches"
        );
    });
}

#[test]
fn routes_of_a_table_and_protocol_are_written_listed_and_deleted() {
    let ns = two_uplinks();
    let (r0, lo) = (ns.ifindex("r0"), ns.ifindex("lo"));
    // Routes of the same table under another protocol, and of another table: not lb's.
    ns.ip("route add 10.60.0.0/24 dev r0 table 1000 proto static");
    ns.ip("route add 10.61.0.0/24 dev r0 table 1001 proto 201");
    let ns2 = ns.clone();
    in_ns(&ns, async move |nl| {
        let wanted = [
            (
                ip("10.50.0.0"),
                24,
                RouteTarget::Unicast {
                    oif: r0,
                    gateway: None,
                },
            ),
            (
                ip("10.51.0.0"),
                16,
                RouteTarget::Unicast {
                    oif: r0,
                    gateway: Some(ip("10.10.0.254")),
                },
            ),
            (ip("10.100.0.10"), 32, RouteTarget::Blackhole),
            (ip("10.100.0.11"), 32, RouteTarget::Local { oif: lo }),
            (
                ip("2001:db8:50::"),
                64,
                RouteTarget::Unicast {
                    oif: r0,
                    gateway: Some(ip("2001:db8:a::fe")),
                },
            ),
            (ip("2001:db8:51::1"), 128, RouteTarget::Blackhole),
        ];
        for (dst, len, target) in wanted {
            nl.route_replace(1000, PROTO, dst, len, target)
                .await
                .expect("route_replace");
        }
        let listed = async || -> BTreeSet<String> {
            nl.routes(1000, PROTO)
                .await
                .expect("routes")
                .iter()
                .map(|r| {
                    assert_eq!((r.table, r.protocol), (1000, PROTO));
                    format!("{}/{} {:?}", r.dst, r.prefix_len, r.target())
                })
                .collect()
        };
        let expect = |w: &[(IpAddr, u8, RouteTarget)]| -> BTreeSet<String> {
            w.iter()
                .map(|(d, l, t)| format!("{d}/{l} {:?}", Some(*t)))
                .collect()
        };
        assert_eq!(listed().await, expect(&wanted));
        // `ip` sees them in the table, with the protocol.
        let shown = ns2.ip("route show table 1000 proto 201");
        assert!(
            shown.contains("blackhole 10.100.0.10")
                && shown.contains("10.51.0.0/16 via 10.10.0.254 dev r0"),
            "{shown}"
        );
        let shown6 = ns2.ip("-6 route show table 1000 proto 201");
        assert!(
            shown6.contains("2001:db8:50::/64 via 2001:db8:a::fe dev r0"),
            "{shown6}"
        );
        // Replacing a prefix changes its route, and adds none.
        nl.route_replace(1000, PROTO, ip("10.100.0.10"), 32, RouteTarget::Unreachable)
            .await
            .expect("route_replace");
        let mut now = wanted;
        now[2].2 = RouteTarget::Unreachable;
        assert_eq!(listed().await, expect(&now));
        // Deleting.
        assert!(
            nl.route_delete(1000, PROTO, ip("10.100.0.10"), 32)
                .await
                .expect("delete")
        );
        assert!(
            nl.route_delete(1000, PROTO, ip("2001:db8:51::1"), 128)
                .await
                .expect("delete")
        );
        assert!(
            !nl.route_delete(1000, PROTO, ip("10.100.0.10"), 32)
                .await
                .expect("delete"),
            "already gone"
        );
        // The route of another protocol is not lb's to delete.
        assert!(
            !nl.route_delete(1000, PROTO, ip("10.60.0.0"), 24)
                .await
                .expect("delete")
        );
        let left: Vec<_> = now
            .iter()
            .copied()
            .filter(|(d, ..)| *d != ip("10.100.0.10") && *d != ip("2001:db8:51::1"))
            .collect();
        assert_eq!(listed().await, expect(&left));
        assert!(
            ns2.ip("route show table 1000 proto static")
                .contains("10.60.0.0/24")
        );
        assert_eq!(
            nl.routes(1000, PROTO + 1).await.expect("routes"),
            vec![],
            "no routes of another protocol"
        );
        assert_eq!(
            nl.routes(4242, PROTO).await.expect("routes"),
            vec![],
            "a table that does not exist is empty"
        );
        assert!(matches!(
            nl.route_replace(1000, PROTO, ip("10.70.0.1"), 24, RouteTarget::Blackhole)
                .await,
            Err(NetError::BadPrefix { .. })
        ));
    });
}
