//! Packet behaviour of the real XDP object, proven with BPF_PROG_TEST_RUN.
//!
//! Each test thread gets a private network namespace with two veth interfaces: `cli0`
//! (client side, 192.0.2.1/24, router 192.0.2.254 to 198.51.100.0/24; 2001:db8:c::1/64,
//! router 2001:db8:c::fe to 2001:db8:cafe::/48) and `srv0` (backend side, 10.1.0.1/24;
//! 2001:db8:b::1/64), with static neighbours, so the NAT path's FIB lookups give known
//! MACs. The fixture has IPv4 services and IPv6 ones (the second half of this file). The maps are filled directly (no control plane), and every case
//! checks the action, the exact output frame (checksums computed from scratch by
//! `support::frame`) and the change of every global counter.
mod support;

use std::collections::BTreeMap;

use lb_common::{
    Addr6, BACKEND_F_IPV6, BACKEND_F_LIVE, Backend, Counter, Flow, FlowKey, FlowKey6,
    HALF_OPEN_TIMEOUT_S, NO_BACKEND, NatBackend, NatBackend6, NatBackendKey, NatBackendKey6,
    SERVICE_F_HASH_SRC, SERVICE_F_NAT, Service, ServiceKey, ServiceKey6, Timeouts,
    hash::{flow_hash, flow_hash6, ports_word, source_hash, source_hash6},
    ipv6_words,
};
use lb_userspace::dataplane::{Dataplane, Limits};
use support::{
    frame::{
        self, ACK, Ext, FIN, Frame, Frame6, ICMP, Ipv4, Ipv6, L4, Mac, PSH, RST, SYN, TCP, UDP,
        addr, addr6, ipv4, ipv6, tcp, udp,
    },
    netns,
};

use support::{
    frame::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    netns::{LB_CLI_MAC, LB_SRV_MAC, ROUTER_MAC},
};
const CLIENT: &str = "198.51.100.7";
const DSR_VIP: &str = "10.100.0.10";
const NAT_VIP: &str = "10.100.0.20";
const TABLE: u32 = 251;
/// The connection table's timeouts (the defaults of the configuration).
const TIMEOUTS: Timeouts = Timeouts {
    tcp_s: 900,
    tcp_fin_s: 120,
    udp_s: 300,
    half_open_s: HALF_OPEN_TIMEOUT_S,
};

/// MAC of a DSR backend (client-side L2).
fn dsr_mac(last: u8) -> Mac {
    [2, 0, 0, 0, 3, last]
}

/// Static neighbours of the fixture: NAT next hops and the client-side router.
const NEIGHBOURS: [(&str, Mac, &str); 5] = [
    ("192.0.2.254", ROUTER_MAC, "cli0"),
    ("192.0.2.50", [2, 0, 0, 0, 2, 0x50], "cli0"),
    ("10.1.0.11", [2, 0, 0, 0, 2, 0x11], "srv0"),
    ("10.1.0.12", [2, 0, 0, 0, 2, 0x12], "srv0"),
    ("10.1.0.21", [2, 0, 0, 0, 2, 0x21], "srv0"),
];

/// MAC of a NAT next hop (from the fixture's neighbour table).
fn nat_mac(a: &str) -> Mac {
    NEIGHBOURS
        .iter()
        .find(|(n, _, _)| *n == a)
        .unwrap_or_else(|| panic!("no neighbour {a}"))
        .1
}

fn mac_str(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ne(a: &str) -> u32 {
    u32::from_ne_bytes(addr(a).octets())
}

struct Svc {
    key: ServiceKey,
    rec: Service,
    /// Backend indexes, in table order (slot i holds backends[i % n]).
    backends: Vec<u32>,
}

struct Fixture {
    dp: Dataplane,
    cli: u32,
    srv: u32,
    services: BTreeMap<&'static str, Svc>,
    services6: BTreeMap<&'static str, Svc6>,
}

/// A backend of a DSR service reached through `ifindex`.
fn dsr_backend(a: &str, port: u16, mac: Mac, ifindex: u32, src_mac: Mac, service: u32) -> Backend {
    Backend {
        addr: ne(a),
        port: port.to_be(),
        flags: BACKEND_F_LIVE,
        epoch: 1,
        ifindex,
        mac,
        src_mac,
        service,
    }
}

/// A backend of a NAT service (the FIB finds its next hop).
fn nat_backend(a: &str, port: u16, service: u32) -> Backend {
    Backend {
        addr: ne(a),
        port: port.to_be(),
        flags: BACKEND_F_LIVE,
        epoch: 1,
        service,
        ..Default::default()
    }
}

/// The fixture's connection tables: small, so tests can fill them.
const LIMITS: Limits = Limits {
    conntrack_entries: 4096,
    conntrack6_entries: 4096,
};

impl Fixture {
    fn new() -> Self {
        support::require_root();
        let (cli, srv) = netns::enter_two_legs();
        for (a, mac, dev) in NEIGHBOURS {
            netns::ip(&format!(
                "neigh add {a} lladdr {} dev {dev} nud permanent",
                mac_str(mac)
            ));
        }
        let dp = Dataplane::load(LIMITS).expect("load the XDP object");
        let mut dp = dp;
        dp.set_timeouts(TIMEOUTS).unwrap();
        let mut f = Fixture {
            dp,
            cli,
            srv,
            services: BTreeMap::new(),
            services6: BTreeMap::new(),
        };
        f.add_ipv6_services();

        let d = |a, port, last, id| dsr_backend(a, port, dsr_mac(last), cli, LB_CLI_MAC, id);
        f.add(
            "dsr_web",
            (DSR_VIP, 80, TCP),
            0,
            0,
            &[
                (0, d("10.0.0.11", 80, 0x11, 0)),
                (1, d("10.0.0.12", 80, 0x12, 0)),
                (2, d("10.0.0.13", 80, 0x13, 0)),
            ],
        );
        f.add(
            "nat_web",
            (NAT_VIP, 8080, TCP),
            1,
            SERVICE_F_NAT,
            &[
                (10, nat_backend("10.1.0.11", 80, 1)),
                (11, nat_backend("10.1.0.12", 80, 1)),
            ],
        );
        f.add(
            "nat_dns",
            (NAT_VIP, 53, UDP),
            2,
            SERVICE_F_NAT,
            &[(20, nat_backend("10.1.0.21", 53, 2))],
        );
        f.add(
            "persist",
            (DSR_VIP, 443, TCP),
            3,
            SERVICE_F_HASH_SRC,
            &[
                (30, d("10.0.0.11", 443, 0x11, 3)),
                (31, d("10.0.0.12", 443, 0x12, 3)),
                (32, d("10.0.0.13", 443, 0x13, 3)),
            ],
        );
        f.add("empty", ("10.100.0.50", 80, TCP), 4, 0, &[]);
        f.add(
            "redir",
            ("10.100.0.60", 80, TCP),
            5,
            0,
            &[(
                50,
                dsr_backend("10.1.0.31", 80, dsr_mac(0x31), srv, LB_SRV_MAC, 5),
            )],
        );
        f.add(
            "noneigh",
            ("10.100.0.70", 80, TCP),
            6,
            SERVICE_F_NAT,
            &[(60, nat_backend("10.1.0.13", 80, 6))],
        );
        f.add(
            "nomac",
            ("10.100.0.80", 80, TCP),
            7,
            0,
            &[(70, dsr_backend("10.0.0.14", 80, [0; 6], cli, LB_CLI_MAC, 7))],
        );
        f.add(
            "onearm",
            ("10.100.0.90", 80, TCP),
            8,
            SERVICE_F_NAT,
            &[(80, nat_backend("192.0.2.50", 8080, 8))],
        );
        f.add(
            "dsr_udp",
            (DSR_VIP, 53, UDP),
            9,
            0,
            &[(90, d("10.0.0.11", 53, 0x11, 9))],
        );
        f
    }

    /// Installs a service, its backends and a table where slot i holds backend i % n.
    fn add(
        &mut self,
        name: &'static str,
        (vip, port, proto): (&str, u16, u8),
        id: u32,
        flags: u32,
        backends: &[(u32, Backend)],
    ) {
        let key = ServiceKey {
            vip: ne(vip),
            port: port.to_be(),
            proto,
            _pad: 0,
        };
        let rec = Service {
            id,
            flags,
            table_size: TABLE,
            table_gen: 0,
            key: Default::default(),
        };
        for (index, be) in backends {
            self.dp.set_backend(*index, *be).unwrap();
            if flags & SERVICE_F_NAT != 0 {
                self.dp
                    .set_nat_backend(
                        NatBackendKey {
                            addr: be.addr,
                            port: be.port,
                            proto,
                            _pad: 0,
                        },
                        Some(NatBackend {
                            vip: key.vip,
                            vport: key.port,
                            _pad: 0,
                            backend: *index,
                            service: id,
                        }),
                    )
                    .unwrap();
            }
        }
        let indexes: Vec<u32> = backends.iter().map(|(i, _)| *i).collect();
        self.set_table(id, &indexes);
        self.dp.set_service(key, rec).unwrap();
        self.dp.set_vip(key.vip, 1).unwrap();
        self.services.insert(
            name,
            Svc {
                key,
                rec,
                backends: indexes,
            },
        );
    }

    fn set_table(&mut self, id: u32, backends: &[u32]) {
        let slots: Vec<u32> = (0..TABLE as usize)
            .map(|i| {
                if backends.is_empty() {
                    NO_BACKEND
                } else {
                    backends[i % backends.len()]
                }
            })
            .collect();
        self.dp.set_table(id, &slots).unwrap();
    }

    /// The backend index the table gives a new flow.
    fn pick(&self, name: &str, src: &str, sport: u16, dport: u16) -> u32 {
        let s = &self.services[name];
        let hash = if s.rec.flags & SERVICE_F_HASH_SRC != 0 {
            source_hash(ne(src))
        } else {
            flow_hash(
                ne(src),
                s.key.vip,
                ports_word(sport.to_be(), dport.to_be()),
                s.key.proto,
            )
        };
        s.backends[((hash % TABLE) as usize) % s.backends.len()]
    }

    fn backend(&self, index: u32) -> Backend {
        self.dp.backend(index).unwrap()
    }

    fn counters(&self) -> Vec<u64> {
        self.dp.counters().unwrap()
    }

    /// Runs one case and checks action, output and every counter's change.
    fn check(&self, c: &Case) {
        let before = self.counters();
        let (r, out) = self
            .dp
            .test_run(&c.input, c.ingress)
            .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
        let after = self.counters();
        assert_eq!(r.return_value, c.action, "{}: action", c.name);
        let want = c.output.as_ref().unwrap_or(&c.input);
        assert_eq!(hex(&out), hex(want), "{}: output frame", c.name);
        let moved: Vec<(&str, u64)> = Counter::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| after[*i] != before[*i])
            .map(|(i, k)| (k.name(), after[i] - before[i]))
            .collect();
        let mut expected: Vec<(&str, u64)> =
            c.counters.iter().map(|(k, n)| (k.name(), *n)).collect();
        expected.sort_by_key(|(name, _)| Counter::ALL.iter().position(|k| k.name() == *name));
        assert_eq!(moved, expected, "{}: counters that moved", c.name);
    }
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|l| {
            l.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Case {
    name: &'static str,
    ingress: u32,
    input: Vec<u8>,
    action: u32,
    /// `None`: the frame must come out unchanged.
    output: Option<Vec<u8>>,
    counters: Vec<(Counter, u64)>,
}

fn case(
    name: &'static str,
    ingress: u32,
    input: Vec<u8>,
    action: u32,
    output: Option<Vec<u8>>,
    counters: &[(Counter, u64)],
) -> Case {
    Case {
        name,
        ingress,
        input,
        action,
        output,
        counters: counters.to_vec(),
    }
}

/// A client packet as it arrives from the router on the client side.
fn from_client(ip: Ipv4) -> Frame {
    Frame::new(ROUTER_MAC, LB_CLI_MAC, ip)
}

/// A backend's packet as it arrives on the backend side.
fn from_backend(ip: Ipv4) -> Frame {
    Frame::new(nat_mac(&ip.src.to_string()), LB_SRV_MAC, ip)
}

fn with_ttl(mut ip: Ipv4, ttl: u8) -> Ipv4 {
    ip.ttl = ttl;
    ip
}

/// The same IP packet, translated: one end rewritten, TTL decremented.
fn nat_dst(ip: &Ipv4, a: &str, port: u16) -> Ipv4 {
    let mut ip = with_ttl(ip.clone(), ip.ttl - 1);
    ip.dst = addr(a);
    set_port(&mut ip.l4, false, port);
    ip
}

fn nat_src(ip: &Ipv4, a: &str, port: u16) -> Ipv4 {
    let mut ip = with_ttl(ip.clone(), ip.ttl - 1);
    ip.src = addr(a);
    set_port(&mut ip.l4, true, port);
    ip
}

fn set_port(l4: &mut L4, src: bool, port: u16) {
    match l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
            *(if src { sport } else { dport }) = port
        }
        _ => panic!("no ports"),
    }
}

/// `n` bytes of `ip` as an ICMP error quotes them.
fn quote(ip: &Ipv4, n: usize) -> Vec<u8> {
    ip.bytes()[..n].to_vec()
}

fn icmp(kind: u8, code: u8, rest: [u8; 4], payload: Vec<u8>) -> L4 {
    L4::Icmp {
        kind,
        code,
        rest,
        payload,
    }
}

const FRAG_NEEDED: (u8, u8, [u8; 4]) = (3, 4, [0, 0, 0x05, 0x78]);

#[test]
#[expect(
    clippy::vec_init_then_push,
    reason = "cases are grouped in commented sections"
)]
fn packet_cases() {
    let f = Fixture::new();
    let (cli, srv) = (f.cli, f.srv);
    use Counter::*;
    let mut cases = Vec::new();

    // ---- not for us: passed untouched ----
    cases.push(case(
        "arp is passed",
        cli,
        frame::raw_frame(
            ROUTER_MAC,
            [0xff; 6],
            frame::ETH_P_ARP,
            &[
                0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 1, 0xfe, 192, 0, 2, 254, 0, 0, 0, 0, 0, 0, 192,
                0, 2, 1,
            ],
        ),
        XDP_PASS,
        None,
        &[(PassNotIpv4, 1)],
    ));
    cases.push(case(
        "ipv6 not for a VIP is passed",
        cli,
        frame::raw_frame(ROUTER_MAC, LB_CLI_MAC, frame::ETH_P_IPV6, &[0x60; 40]),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "tcp to a non-VIP address (ssh to the host) is passed",
        cli,
        from_client(ipv4(CLIENT, "192.0.2.1", tcp(40000, 22, SYN))).bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "tcp to a VIP port without a service is passed",
        cli,
        from_client(ipv4(CLIENT, DSR_VIP, tcp(40000, 81, SYN))).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    cases.push(case(
        "gre to a VIP is passed",
        cli,
        from_client(ipv4(
            CLIENT,
            DSR_VIP,
            L4::Raw {
                proto: 47,
                payload: vec![0; 8],
            },
        ))
        .bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    cases.push(case(
        "udp reply from a host that is no NAT backend is passed",
        srv,
        Frame::new(
            [2, 0, 0, 0, 2, 0x99],
            LB_SRV_MAC,
            ipv4("10.1.0.99", CLIENT, udp(53, 5000, b"x")),
        )
        .bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));

    // ---- DSR ----
    let syn = ipv4(CLIENT, DSR_VIP, tcp(40000, 80, SYN));
    let be = f.backend(f.pick("dsr_web", CLIENT, 40000, 80));
    cases.push(case(
        "dsr new flow: MACs rewritten, XDP_TX, IP untouched",
        cli,
        from_client(syn.clone()).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, be.mac, syn.clone()).bytes()),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let ack = ipv4(CLIENT, DSR_VIP, tcp(40000, 80, ACK | PSH));
    cases.push(case(
        "dsr handshake's ACK: the SYN's backend, a connection-table entry made",
        cli,
        from_client(ack.clone()).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, be.mac, ack.clone()).bytes()),
        &[(Tx, 1), (FlowNew, 1)],
    ));
    cases.push(case(
        "dsr established flow: served from the flow cache",
        cli,
        from_client(ack.clone()).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, be.mac, ack.clone()).bytes()),
        &[(Tx, 1), (FlowCacheHit, 1)],
    ));
    let q = ipv4(CLIENT, DSR_VIP, udp(5353, 53, b"query"));
    cases.push(case(
        "dsr udp",
        cli,
        from_client(q.clone()).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, dsr_mac(0x11), q).bytes()),
        &[(Tx, 1), (FlowNew, 1)],
    ));
    let r = ipv4(CLIENT, "10.100.0.60", tcp(40000, 80, SYN));
    cases.push(case(
        "dsr backend behind another interface: XDP_REDIRECT",
        cli,
        from_client(r.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_SRV_MAC, dsr_mac(0x31), r).bytes()),
        &[(Redirect, 1), (FlowSyn, 1)],
    ));
    for (p1, p2) in [(1000u16, 2000u16), (3000, 4000)] {
        let idx = f.pick("persist", CLIENT, p1, 443);
        assert_eq!(idx, f.pick("persist", CLIENT, p2, 443));
        let mac = f.backend(idx).mac;
        for port in [p1, p2] {
            let s = ipv4(CLIENT, DSR_VIP, tcp(port, 443, SYN));
            cases.push(case(
                "persistence: every port of a client reaches the same backend",
                cli,
                from_client(s.clone()).bytes(),
                XDP_TX,
                Some(Frame::new(LB_CLI_MAC, mac, s).bytes()),
                &[(Tx, 1), (FlowSyn, 1)],
            ));
        }
    }
    let s = ipv4(CLIENT, "10.100.0.50", tcp(40000, 80, SYN));
    cases.push(case(
        "service without usable backends drops new flows",
        cli,
        from_client(s).bytes(),
        XDP_DROP,
        None,
        &[(DropNoBackend, 1)],
    ));
    let s = ipv4(CLIENT, "10.100.0.80", tcp(40000, 80, SYN));
    cases.push(case(
        "dsr backend whose MAC is unknown: dropped",
        cli,
        from_client(s).bytes(),
        XDP_DROP,
        None,
        &[(DropNoMac, 1), (FlowSyn, 1)],
    ));
    let rst = ipv4(CLIENT, DSR_VIP, tcp(45000, 80, RST));
    let be_rst = f.backend(f.pick("dsr_web", CLIENT, 45000, 80));
    cases.push(case(
        "tcp rst of an unknown flow: forwarded, no entry",
        cli,
        from_client(rst.clone()).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, be_rst.mac, rst).bytes()),
        &[(Tx, 1), (FlowRstNoEntry, 1)],
    ));
    let synack = ipv4(CLIENT, DSR_VIP, tcp(45001, 80, SYN | ACK));
    let be_synack = f.backend(f.pick("dsr_web", CLIENT, 45001, 80));
    cases.push(case(
        "tcp syn|ack from a client (a reflection) of an unknown flow: forwarded, no entry",
        cli,
        from_client(synack.clone()).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, be_synack.mac, synack).bytes()),
        &[(Tx, 1), (FlowSynAckNoEntry, 1)],
    ));

    // ---- NAT ----
    let syn = ipv4(CLIENT, NAT_VIP, tcp(40001, 8080, SYN));
    let nat_be = f.backend(f.pick("nat_web", CLIENT, 40001, 8080));
    let rip = std::net::Ipv4Addr::from(nat_be.addr.to_ne_bytes()).to_string();
    cases.push(case(
        "nat forward: VIP:8080 -> RIP:80, TTL-1, checksums, next hop from the FIB",
        cli,
        from_client(syn.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_SRV_MAC, nat_mac(&rip), nat_dst(&syn, &rip, 80)).bytes()),
        &[(Redirect, 1), (FlowSyn, 1)],
    ));
    let reply = ipv4(&rip, CLIENT, tcp(80, 40001, SYN | ACK));
    cases.push(case(
        "nat return: RIP:80 -> VIP:8080 towards the client",
        srv,
        from_backend(reply.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_CLI_MAC, ROUTER_MAC, nat_src(&reply, NAT_VIP, 8080)).bytes()),
        &[(Redirect, 1), (NatReply, 1)],
    ));
    let unseen = ipv4(&rip, CLIENT, tcp(80, 47000, ACK | PSH));
    cases.push(case(
        "nat return of a connection this node never saw (a failover): translated",
        srv,
        from_backend(unseen.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_CLI_MAC, ROUTER_MAC, nat_src(&unseen, NAT_VIP, 8080)).bytes()),
        &[(Redirect, 1), (NatReply, 1)],
    ));
    cases.push(case(
        "a NAT backend's packet to this host (a health check's reply): untranslated",
        srv,
        from_backend(ipv4(&rip, "10.1.0.1", tcp(80, 33000, SYN | ACK))).bytes(),
        XDP_PASS,
        None,
        &[(PassNatLocal, 1)],
    ));
    let mut tagged_local = from_backend(ipv4(&rip, "10.1.0.1", tcp(80, 33001, ACK)));
    tagged_local.vlans = vec![100];
    cases.push(case(
        "a NAT backend's packet to this host with a VLAN tag: untranslated too",
        srv,
        tagged_local.bytes(),
        XDP_PASS,
        None,
        &[(PassNatLocal, 1)],
    ));
    cases.push(case(
        "a NAT backend's packet from another port: not a reply",
        srv,
        from_backend(ipv4(&rip, CLIENT, tcp(22, 40001, ACK))).bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    let ack = ipv4(CLIENT, NAT_VIP, tcp(40001, 8080, ACK));
    cases.push(case(
        "nat handshake's ACK: the SYN's backend, a connection-table entry made",
        cli,
        from_client(ack.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_SRV_MAC, nat_mac(&rip), nat_dst(&ack, &rip, 80)).bytes()),
        &[(Redirect, 1), (FlowNew, 1)],
    ));
    let s = ipv4("192.0.2.100", "10.100.0.90", tcp(40000, 80, SYN));
    cases.push(case(
        "nat one-arm (backend on the ingress side): XDP_TX, port 80 -> 8080",
        cli,
        from_client(s.clone()).bytes(),
        XDP_TX,
        Some(
            Frame::new(
                LB_CLI_MAC,
                nat_mac("192.0.2.50"),
                nat_dst(&s, "192.0.2.50", 8080),
            )
            .bytes(),
        ),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let mut q = ipv4(
        CLIENT,
        NAT_VIP,
        L4::Udp {
            sport: 5353,
            dport: 53,
            payload: b"query".to_vec(),
            zero_checksum: true,
        },
    );
    cases.push(case(
        "nat udp with checksum 0: stays 0",
        cli,
        from_client(q.clone()).bytes(),
        XDP_REDIRECT,
        Some(
            Frame::new(
                LB_SRV_MAC,
                nat_mac("10.1.0.21"),
                nat_dst(&q, "10.1.0.21", 53),
            )
            .bytes(),
        ),
        &[(Redirect, 1), (FlowNew, 1)],
    ));
    q.l4 = udp(5354, 53, b"query");
    cases.push(case(
        "nat udp with checksum: updated",
        cli,
        from_client(q.clone()).bytes(),
        XDP_REDIRECT,
        Some(
            Frame::new(
                LB_SRV_MAC,
                nat_mac("10.1.0.21"),
                nat_dst(&q, "10.1.0.21", 53),
            )
            .bytes(),
        ),
        &[(Redirect, 1), (FlowNew, 1)],
    ));
    let a = ipv4("10.1.0.21", CLIENT, udp(53, 5354, b"answer"));
    cases.push(case(
        "nat udp return",
        srv,
        from_backend(a.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_CLI_MAC, ROUTER_MAC, nat_src(&a, NAT_VIP, 53)).bytes()),
        &[(Redirect, 1), (NatReply, 1)],
    ));
    let s = ipv4(CLIENT, "10.100.0.70", tcp(40000, 80, SYN));
    let mut unresolved = from_client(nat_dst(&s, "10.1.0.13", 80)).bytes();
    unresolved[..12].copy_from_slice(&from_client(s.clone()).bytes()[..12]);
    cases.push(case(
        "nat next hop without neighbour: translated, handed to the kernel",
        cli,
        from_client(s).bytes(),
        XDP_PASS,
        Some(unresolved),
        &[(PassNoNeigh, 1), (FlowSyn, 1)],
    ));

    // ---- ICMP ----
    let echo = ipv4(
        CLIENT,
        DSR_VIP,
        icmp(8, 0, [0x12, 0x34, 0, 1], b"ping".to_vec()),
    );
    let mut answer = ipv4(
        DSR_VIP,
        CLIENT,
        icmp(0, 0, [0x12, 0x34, 0, 1], b"ping".to_vec()),
    );
    answer.id = echo.id;
    cases.push(case(
        "echo request to a VIP is answered",
        cli,
        from_client(echo).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, ROUTER_MAC, answer).bytes()),
        &[(Tx, 1), (IcmpEchoReply, 1)],
    ));
    cases.push(case(
        "echo request to another address is passed",
        cli,
        from_client(ipv4(CLIENT, "192.0.2.1", icmp(8, 0, [0, 1, 0, 1], vec![]))).bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "icmp timestamp to a VIP is passed",
        cli,
        from_client(ipv4(CLIENT, DSR_VIP, icmp(13, 0, [0; 4], vec![0; 12]))).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    let sent = ipv4(DSR_VIP, CLIENT, tcp(80, 40000, ACK));
    let (k, c, rest) = FRAG_NEEDED;
    let err = ipv4("192.0.2.254", DSR_VIP, icmp(k, c, rest, quote(&sent, 28)));
    cases.push(case(
        "frag needed about a DSR flow goes to the flow's backend",
        cli,
        from_client(err.clone()).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, be.mac, err).bytes()),
        &[(Tx, 1), (IcmpErrorToBackend, 1)],
    ));
    let sent = ipv4(NAT_VIP, CLIENT, tcp(8080, 40001, ACK));
    let err = ipv4("192.0.2.254", NAT_VIP, icmp(k, c, rest, quote(&sent, 28)));
    let back = nat_src(&sent, &rip, 80);
    let want = with_ttl(
        ipv4(
            "192.0.2.254",
            &rip,
            icmp(k, c, rest, quote(&with_ttl(back, sent.ttl), 28)),
        ),
        63,
    );
    cases.push(case(
        "frag needed about a NAT flow: outer and quoted addresses go back to the backend",
        cli,
        from_client(err).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_SRV_MAC, nat_mac(&rip), want).bytes()),
        &[(Redirect, 1), (IcmpErrorToBackend, 1)],
    ));
    let sent = ipv4(CLIENT, "10.1.0.21", udp(5354, 53, b"query"));
    let quoted_in = quote(&sent, 28);
    let err = ipv4("10.1.0.21", CLIENT, icmp(3, 3, [0; 4], quoted_in.clone()));
    let mut quoted_out = quote(
        &{
            let mut s = sent.clone();
            s.dst = addr(NAT_VIP);
            s
        },
        28,
    );
    quoted_out[26..28].copy_from_slice(&quoted_in[26..28]);
    let want = with_ttl(ipv4(NAT_VIP, CLIENT, icmp(3, 3, [0; 4], quoted_out)), 63);
    cases.push(case(
        "port unreachable from a NAT backend is translated back to the client",
        srv,
        from_backend(err).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_CLI_MAC, ROUTER_MAC, want).bytes()),
        &[(Redirect, 1), (IcmpErrorToClient, 1)],
    ));
    // An error from a NAT backend that cannot be matched to a flow may be about a
    // client's packet: it is dropped, never passed on with the backend's address.
    cases.push(case(
        "icmp error from a NAT backend with a truncated quote is dropped",
        srv,
        from_backend(ipv4(
            "10.1.0.21",
            CLIENT,
            icmp(3, 3, [0; 4], quote(&sent, 10)),
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropIcmpHeader, 1)],
    ));
    let echo = ipv4(CLIENT, "10.1.0.21", icmp(8, 0, [0; 4], vec![0; 8]));
    cases.push(case(
        "icmp error from a NAT backend quoting neither TCP nor UDP is dropped",
        srv,
        from_backend(ipv4(
            "10.1.0.21",
            CLIENT,
            icmp(3, 3, [0; 4], quote(&echo, 28)),
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropIcmpHeader, 1)],
    ));
    cases.push(case(
        "icmp error from another host with a truncated quote is passed",
        srv,
        Frame::new(
            [2, 0, 0, 0, 2, 0x99],
            LB_SRV_MAC,
            ipv4("10.1.0.99", CLIENT, icmp(3, 3, [0; 4], quote(&sent, 10))),
        )
        .bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    let sent = ipv4(NAT_VIP, CLIENT, tcp(8080, 40001, ACK));
    cases.push(case(
        "icmp error to one VIP quoting another VIP's packet is passed",
        cli,
        from_client(ipv4(
            "192.0.2.254",
            DSR_VIP,
            icmp(k, c, rest, quote(&sent, 28)),
        ))
        .bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    let sent = ipv4(DSR_VIP, CLIENT, tcp(9999, 40000, ACK));
    cases.push(case(
        "icmp error to a VIP about no service is passed",
        cli,
        from_client(ipv4(
            "192.0.2.254",
            DSR_VIP,
            icmp(k, c, rest, quote(&sent, 28)),
        ))
        .bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));

    // ---- malformed and unusual frames ----
    let good = from_client(ipv4(CLIENT, DSR_VIP, tcp(41000, 80, SYN)));
    let good_be = f.backend(f.pick("dsr_web", CLIENT, 41000, 80));
    let edit = |f: &Frame, at: usize, bytes: &[u8]| {
        let mut b = f.bytes();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    // Frames shorter than an Ethernet header never reach XDP (BPF_PROG_TEST_RUN refuses
    // them with EINVAL, as drivers drop runts); the shortest is a bare header.
    cases.push(case(
        "ethernet header only, ipv4 ethertype",
        cli,
        good.bytes()[..14].to_vec(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "ethernet header only, vlan ethertype",
        cli,
        {
            let mut t = good.clone();
            t.vlans = vec![7];
            t.bytes()[..14].to_vec()
        },
        XDP_PASS,
        None,
        &[(PassNotIpv4, 1)],
    ));
    cases.push(case(
        "truncated ipv4 header",
        cli,
        good.bytes()[..24].to_vec(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "ihl < 5 to a VIP",
        cli,
        edit(&good, 14, &[0x44]),
        XDP_DROP,
        None,
        &[(DropIpHeaderLen, 1)],
    ));
    let mut b = good.bytes()[..14 + 20 + 10].to_vec();
    b[14] = 0x4f;
    cases.push(case(
        "ihl past the end of the frame",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropIpHeaderLen, 1)],
    ));
    cases.push(case(
        "total length longer than the frame",
        cli,
        edit(&good, 16, &1000u16.to_be_bytes()),
        XDP_DROP,
        None,
        &[(DropIpTotalLen, 1)],
    ));
    cases.push(case(
        "total length shorter than the header",
        cli,
        edit(&good, 16, &12u16.to_be_bytes()),
        XDP_DROP,
        None,
        &[(DropIpTotalLen, 1)],
    ));
    cases.push(case(
        "wrong ip version in an ipv4 ethertype",
        cli,
        edit(&good, 14, &[0x65]),
        XDP_DROP,
        None,
        &[(DropIpVersion, 1)],
    ));
    let mut frag = good.clone();
    frag.ip.frag = 0x2000;
    cases.push(case(
        "first fragment (MF, offset 0) to a VIP",
        cli,
        frag.bytes(),
        XDP_DROP,
        None,
        &[(DropFragment, 1)],
    ));
    frag.ip.frag = 0x0010;
    cases.push(case(
        "later fragment to a VIP",
        cli,
        frag.bytes(),
        XDP_DROP,
        None,
        &[(DropFragment, 1)],
    ));
    let mut other = frag.clone();
    other.ip.dst = addr("192.0.2.1");
    cases.push(case(
        "fragment to another address is passed",
        cli,
        other.bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    let mut from_nat_backend = Frame::new(
        [2, 0, 0, 0, 2, 0x11],
        LB_SRV_MAC,
        ipv4("10.1.0.21", CLIENT, udp(53, 5000, b"a large answer")),
    );
    from_nat_backend.ip.frag = 0x2000;
    cases.push(case(
        "fragment from a NAT backend (a reply cannot be translated): dropped, never leaked",
        srv,
        from_nat_backend.bytes(),
        XDP_DROP,
        None,
        &[(DropFragment, 1)],
    ));
    let mut bad = good.clone();
    bad.ip.dst = addr("192.0.2.1");
    cases.push(case(
        "malformed (ihl < 5) to another address is passed untouched",
        cli,
        edit(&bad, 14, &[0x43]),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    for ttl in [0, 1] {
        cases.push(case(
            "ttl 0 or 1 to a service",
            cli,
            from_client(with_ttl(good.ip.clone(), ttl)).bytes(),
            XDP_DROP,
            None,
            &[(DropTtl, 1)],
        ));
    }
    let mut opts = ipv4(CLIENT, DSR_VIP, tcp(41001, 80, SYN));
    opts.options = vec![1, 1, 1, 0];
    let opt_be = f.backend(f.pick("dsr_web", CLIENT, 41001, 80));
    cases.push(case(
        "ip options (ihl 6) to a DSR service: forwarded as is",
        cli,
        from_client(opts.clone()).bytes(),
        XDP_TX,
        Some(Frame::new(LB_CLI_MAC, opt_be.mac, opts).bytes()),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let mut opts = ipv4(CLIENT, NAT_VIP, tcp(41002, 8080, SYN));
    opts.options = vec![1, 1, 1, 0];
    let opt_nat = f.backend(f.pick("nat_web", CLIENT, 41002, 8080));
    let opt_rip = std::net::Ipv4Addr::from(opt_nat.addr.to_ne_bytes()).to_string();
    cases.push(case(
        "ip options to a NAT service: translated behind the options",
        cli,
        from_client(opts.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame::new(LB_SRV_MAC, nat_mac(&opt_rip), nat_dst(&opts, &opt_rip, 80)).bytes()),
        &[(Redirect, 1), (FlowSyn, 1)],
    ));
    let mut tagged = good.clone();
    tagged.vlans = vec![100];
    cases.push(case(
        "one vlan tag, DSR on the same interface: forwarded with its tag",
        cli,
        tagged.bytes(),
        XDP_TX,
        Some(tagged.clone().with_macs(LB_CLI_MAC, good_be.mac).bytes()),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let mut tagged_nat = from_client(ipv4(CLIENT, NAT_VIP, tcp(41003, 8080, SYN)));
    tagged_nat.vlans = vec![100];
    cases.push(case(
        "one vlan tag to a NAT service: unsupported",
        cli,
        tagged_nat.bytes(),
        XDP_DROP,
        None,
        &[(DropVlanUnsupported, 1), (FlowSyn, 1)],
    ));
    tagged.vlans = vec![100, 200];
    cases.push(case(
        "two vlan tags are passed",
        cli,
        tagged.bytes(),
        XDP_PASS,
        None,
        &[(PassVlanNested, 1)],
    ));
    let mut padded = good.bytes();
    padded.resize(80, 0);
    let mut padded_out = good.clone().with_macs(LB_CLI_MAC, good_be.mac).bytes();
    padded_out.resize(80, 0);
    cases.push(case(
        "ethernet padding after the ip packet is fine",
        cli,
        padded,
        XDP_TX,
        Some(padded_out),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let mut b = good.bytes()[..14 + 20 + 10].to_vec();
    b[16..18].copy_from_slice(&30u16.to_be_bytes());
    cases.push(case(
        "truncated tcp header",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    cases.push(case(
        "tcp data offset < 5",
        cli,
        edit(&good, 14 + 20 + 12, &[0x40]),
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    cases.push(case(
        "tcp data offset past the packet",
        cli,
        edit(&good, 14 + 20 + 12, &[0xf0]),
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    let uq = from_client(ipv4(CLIENT, NAT_VIP, udp(6000, 53, b"query")));
    let mut b = uq.bytes()[..14 + 20 + 4].to_vec();
    b[16..18].copy_from_slice(&24u16.to_be_bytes());
    cases.push(case(
        "truncated udp header",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    cases.push(case(
        "udp length past the packet",
        cli,
        edit(&uq, 14 + 20 + 4, &100u16.to_be_bytes()),
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    cases.push(case(
        "udp length < 8",
        cli,
        edit(&uq, 14 + 20 + 4, &4u16.to_be_bytes()),
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    let mut b = from_client(ipv4(CLIENT, DSR_VIP, icmp(8, 0, [0; 4], vec![]))).bytes()
        [..14 + 20 + 4]
        .to_vec();
    b[16..18].copy_from_slice(&24u16.to_be_bytes());
    cases.push(case(
        "truncated icmp header to a VIP",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropIcmpHeader, 1)],
    ));
    let sent = ipv4(DSR_VIP, CLIENT, tcp(80, 40000, ACK));
    cases.push(case(
        "icmp error to a VIP with a truncated quote",
        cli,
        from_client(ipv4(
            "192.0.2.254",
            DSR_VIP,
            icmp(k, c, rest, quote(&sent, 10)),
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropIcmpHeader, 1)],
    ));

    assert!(
        cases
            .iter()
            .filter(
                |c| c.counters.iter().any(|(k, _)| k.name().starts_with("drop_")
                    || *k == PassNotIpv4
                    || *k == PassVlanNested)
            )
            .count()
            >= 15
    );
    for c in &cases {
        f.check(c);
    }

    // The RST created no entry; the DSR flow's handshake did.
    let key = |src: &str, dst: &str, sport: u16, dport: u16, proto| {
        FlowKey::new(ne(src), ne(dst), sport.to_be(), dport.to_be(), proto)
    };
    assert!(
        f.dp.flow(&key(CLIENT, DSR_VIP, 45000, 80, TCP))
            .unwrap()
            .is_none(),
        "RST must not create an entry"
    );
    assert!(
        f.dp.flow(&key(CLIENT, DSR_VIP, 45001, 80, TCP))
            .unwrap()
            .is_none(),
        "a client's SYN|ACK must not create an entry"
    );
    assert!(
        f.dp.flow(&key(CLIENT, DSR_VIP, 40000, 80, TCP))
            .unwrap()
            .is_some()
    );
}

/// Runs a frame and returns (action, output, counter deltas by name).
fn run(f: &Fixture, frame: &[u8], ingress: u32) -> (u32, Vec<u8>, Vec<(&'static str, u64)>) {
    let before = f.counters();
    let (r, out) = f.dp.test_run(frame, ingress).unwrap();
    let after = f.counters();
    let moved = Counter::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| after[*i] != before[*i])
        .map(|(i, k)| (k.name(), after[i] - before[i]))
        .collect();
    (r.return_value, out, moved)
}

/// Destination MAC of a forwarded frame.
fn dmac(out: &[u8]) -> Mac {
    out[..6].try_into().unwrap()
}

#[test]
fn flows_keep_their_backend_until_it_goes() {
    let mut f = Fixture::new();
    let cli = f.cli;
    let send = |f: &Fixture, sport: u16, flags: u8| {
        let (action, out, moved) = run(
            f,
            &from_client(ipv4(CLIENT, DSR_VIP, tcp(sport, 80, flags))).bytes(),
            cli,
        );
        assert_eq!(action, XDP_TX, "port {sport}: {moved:?}");
        (dmac(&out), moved)
    };
    let mac_of = |f: &Fixture, i: u32| f.backend(i).mac;
    let web = f.services["dsr_web"].backends.clone();

    // Flow A starts on the backend the table gives it (a half-open slot holds it).
    let a = f.pick("dsr_web", CLIENT, 50000, 80);
    assert_eq!(
        send(&f, 50000, SYN),
        (mac_of(&f, a), vec![("tx", 1), ("flow_syn", 1)])
    );
    let stats_before = f.dp.backend_stats(a).unwrap();

    // Swap the service's table for one that sends everything to another backend.
    let b = *web.iter().find(|&&i| i != a).unwrap();
    f.set_table(0, &[b]);
    assert_eq!(
        f.dp.table(0, TABLE).unwrap().unwrap(),
        vec![b; TABLE as usize],
        "the datapath sees the new table"
    );
    assert_eq!(
        send(&f, 50000, ACK),
        (mac_of(&f, a), vec![("tx", 1), ("flow_new", 1)]),
        "the handshake completes on its SYN's backend, which the entry now pins"
    );
    assert_eq!(
        send(&f, 50001, SYN).0,
        mac_of(&f, b),
        "a new flow follows the new table"
    );
    let stats = f.dp.backend_stats(a).unwrap();
    assert_eq!(
        (
            stats.packets - stats_before.packets,
            stats.new_flows - stats_before.new_flows
        ),
        (1, 0)
    );

    // Drain: the backend keeps its flows while it has no slots (the table has only b).
    let c = *web.iter().find(|&&i| i != a && i != b).unwrap();
    assert_eq!(send(&f, 50000, ACK).0, mac_of(&f, a));

    // Maintenance (REPICK): the flow chooses again, from the current table.
    let mut rec = f.backend(a);
    rec.flags |= lb_common::BACKEND_F_REPICK;
    f.dp.set_backend(a, rec).unwrap();
    assert_eq!(
        send(&f, 50000, ACK),
        (mac_of(&f, b), vec![("tx", 1), ("flow_repick", 1)])
    );
    assert_eq!(
        send(&f, 50000, ACK),
        (mac_of(&f, b), vec![("tx", 1), ("flow_cache_hit", 1)]),
        "re-picked flow is pinned again (and now served from the flow cache)"
    );

    // Removal: flows pinned to b choose again when b's index is cleared.
    f.set_table(0, &[c]);
    let mut gone = f.backend(b);
    gone.flags = 0;
    f.dp.set_backend(b, gone).unwrap();
    assert_eq!(
        send(&f, 50000, ACK),
        (mac_of(&f, c), vec![("tx", 1), ("flow_repick", 1)])
    );

    // Index reuse: c's index now holds another backend (new epoch, new MAC); flows
    // pinned under the old epoch must not follow the index.
    let mut reused = f.backend(c);
    reused.epoch += 1;
    reused.mac = dsr_mac(0x77);
    f.dp.set_backend(c, reused).unwrap();
    f.set_table(0, &[a]);
    let mut back = f.backend(a);
    back.flags = BACKEND_F_LIVE;
    f.dp.set_backend(a, back).unwrap();
    assert_eq!(
        send(&f, 50000, ACK),
        (mac_of(&f, a), vec![("tx", 1), ("flow_repick", 1)])
    );

    // A client reusing the port after FIN: a new connection, placed afresh.
    assert_eq!(send(&f, 50002, SYN).0, mac_of(&f, a));
    assert_eq!(
        send(&f, 50002, FIN | ACK).1,
        vec![("tx", 1), ("flow_new", 1)]
    );
    f.set_table(0, &[b]);
    gone.flags = BACKEND_F_LIVE;
    f.dp.set_backend(b, gone).unwrap();
    assert_eq!(
        send(&f, 50002, SYN),
        (mac_of(&f, b), vec![("tx", 1), ("flow_new", 1)])
    );

    // Service statistics count every forwarded packet and new flow.
    let s = f.dp.service_stats(0).unwrap();
    // 11 packets; new flows: 2 SYNs, 4 re-picks, 1 SYN reusing a closed flow's port.
    assert_eq!((s.packets, s.new_flows), (11, 7));
}

/// A new table goes into the service's other table generation and the record flips to
/// it (for every size, and for the empty table); new flows follow the live table.
#[test]
fn tables_flip_between_two_generations() {
    let mut f = Fixture::new();
    let cli = f.cli;
    let key = f.services["dsr_web"].key;
    let web = f.services["dsr_web"].backends.clone();
    let (a, b) = (web[0], web[1]);
    let new_flow_goes_to = |f: &Fixture, sport: u16| {
        let frame = from_client(ipv4(CLIENT, DSR_VIP, tcp(sport, 80, SYN))).bytes();
        let (action, out, moved) = run(f, &frame, cli);
        assert_eq!(action, XDP_TX, "port {sport}: {moved:?}");
        dmac(&out)
    };
    let table_of = |f: &Fixture, size: u32| f.dp.table(0, size).unwrap().unwrap();
    let generation = |f: &Fixture| f.dp.service(&key).unwrap().unwrap().table_gen;

    // Same size, several times in a row: each flips the generation.
    let mut was = generation(&f);
    for (round, be) in [a, b, a, b].into_iter().enumerate() {
        f.set_table(0, &[be]);
        assert_eq!(table_of(&f, TABLE), vec![be; TABLE as usize]);
        assert_eq!(
            new_flow_goes_to(&f, 51000 + round as u16),
            f.backend(be).mac
        );
        let now = generation(&f);
        assert_ne!(
            now, was,
            "round {round}: the record flips to the new generation"
        );
        was = now;
    }
    // Larger (slots past the record's size are never read), then back.
    f.dp.set_table(0, &vec![a; 4 * TABLE as usize]).unwrap();
    assert_eq!(table_of(&f, 4 * TABLE), vec![a; 4 * TABLE as usize]);
    assert_eq!(new_flow_goes_to(&f, 51010), f.backend(a).mac);
    f.set_table(0, &[b]);
    assert_eq!(table_of(&f, TABLE), vec![b; TABLE as usize]);
    assert_eq!(new_flow_goes_to(&f, 51011), f.backend(b).mac);
    // A table shorter than its array: the tail reads NO_BACKEND.
    f.dp.set_table(0, &[a; 7]).unwrap();
    let mut expect = vec![a; 7];
    expect.resize(lb_common::TABLE_CHUNK, NO_BACKEND);
    assert_eq!(table_of(&f, lb_common::TABLE_CHUNK as u32), expect);
    // Empty: the service drops new flows, counted.
    f.dp.set_table(0, &[]).unwrap();
    let frame = from_client(ipv4(CLIENT, DSR_VIP, tcp(51020, 80, SYN))).bytes();
    let (action, _, moved) = run(&f, &frame, cli);
    assert_eq!((action, moved), (XDP_DROP, vec![("drop_no_backend", 1)]));
    // And a full table again.
    f.set_table(0, &[a]);
    assert_eq!(table_of(&f, TABLE), vec![a; TABLE as usize]);
    assert_eq!(new_flow_goes_to(&f, 51021), f.backend(a).mac);
    // The service replaced under the same key by one with another id (as a reload
    // switching DSR <-> NAT does): freeing the old id's tables leaves the key's new
    // record alone.
    let mut rec = f.dp.service(&key).unwrap().unwrap();
    rec.id = 7;
    f.set_table(7, &[b]);
    f.dp.set_service(key, rec).unwrap();
    f.dp.set_table(0, &[]).unwrap();
    assert_eq!(
        f.dp.table(0, 1).unwrap(),
        None,
        "the old id's tables are freed"
    );
    let now = f.dp.service(&key).unwrap().unwrap();
    assert_eq!((now.id, now.key), (7, key));
    assert_eq!(new_flow_goes_to(&f, 51030), f.backend(b).mac);
    // Without its record, an empty table frees both generations.
    f.dp.remove_service(&key).unwrap();
    f.dp.set_table(7, &[]).unwrap();
    assert_eq!(f.dp.table(7, 1).unwrap(), None);
}

/// 100,000 random and mutated frames: nothing that is not for a VIP (or a NAT reply)
/// is rewritten, every forwarded frame keeps valid checksums when it came with valid
/// ones, no frame aborts, and the outcome counters add up to the frames sent.
/// The random generator of a randomized test: seeded from `LB_TEST_SEED` when set (to
/// replay a run), else from `default`; the seed is printed.
fn seeded_rng(default: u64) -> support::Rng {
    let seed = std::env::var("LB_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {seed} (set LB_TEST_SEED to replay)");
    support::Rng::new(seed)
}

/// The sum of the outcome counters (each packet moves exactly one).
fn outcome_sum(counters: &[u64]) -> u64 {
    Counter::ALL
        .iter()
        .zip(counters)
        .filter(|(k, _)| k.is_outcome())
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn randomized_frames() {
    const FRAMES: u64 = 100_000;
    let f = Fixture::new();
    let mut rng = seeded_rng(0x005e_ed1b);
    let vips = [
        "10.100.0.10",
        "10.100.0.20",
        "10.100.0.50",
        "10.100.0.60",
        "10.100.0.70",
        "10.100.0.80",
        "10.100.0.90",
    ];
    let nat_backends = [
        "10.1.0.11",
        "10.1.0.12",
        "10.1.0.21",
        "10.1.0.13",
        "192.0.2.50",
    ];
    let others = [
        "192.0.2.1",
        "192.0.2.100",
        "10.1.0.1",
        "203.0.113.5",
        "10.100.0.11",
    ];
    let dsts: Vec<&str> = vips
        .iter()
        .chain(&others)
        .chain(&nat_backends)
        .copied()
        .collect();
    let srcs: Vec<&str> = [CLIENT, "192.0.2.100", "203.0.113.9"]
        .iter()
        .chain(&nat_backends)
        .copied()
        .collect();
    let ports = [80u16, 8080, 53, 443, 81, 22, 40000, 5354];
    let _ = &dsts;
    let start = outcome_sum(&f.counters());
    let mut forwarded = 0u64;

    let services: Vec<(String, u16, u8)> = f
        .services
        .values()
        .map(|s| {
            (
                std::net::Ipv4Addr::from(s.key.vip.to_ne_bytes()).to_string(),
                u16::from_be(s.key.port),
                s.key.proto,
            )
        })
        .collect();
    // NAT flows seen forwarded: (backend, backend port, client, client port, proto).
    let mut nat_flows: Vec<(String, u16, String, u16, u8)> = Vec::new();

    for i in 0..FRAMES {
        let scenario = rng.below(100);
        let (mut src, mut dst) = (rng.pick(&srcs).to_string(), rng.pick(&dsts).to_string());
        let mut proto = *rng.pick(&[TCP, TCP, UDP, UDP, ICMP, 47]);
        let (mut sport, mut dport) = (*rng.pick(&ports), *rng.pick(&ports));
        if scenario < 40 {
            // A client packet to a real service.
            let (vip, port, p) = rng.pick(&services).clone();
            (src, dst, dport, proto) = (
                rng.pick(&[CLIENT, "192.0.2.100", "203.0.113.9"])
                    .to_string(),
                vip,
                port,
                p,
            );
            sport = 30000 + rng.below(64) as u16;
        } else if scenario < 55 && !nat_flows.is_empty() {
            // A backend's reply to a NAT flow.
            let (rip, rport, client, cport, p) = rng.pick(&nat_flows).clone();
            (src, sport, dst, dport, proto) = (rip, rport, client, cport, p);
        }
        let n = rng.below(48) as usize;
        let payload = rng.bytes(n);
        let l4 = match proto {
            TCP => L4::Tcp {
                sport,
                dport,
                flags: *rng.pick(&[SYN, ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK]),
                seq: rng.next_u64() as u32,
                payload,
            },
            UDP => L4::Udp {
                sport,
                dport,
                payload,
                zero_checksum: rng.chance(20),
            },
            ICMP => {
                // Errors quote a packet the other way round: often one of a real flow.
                let quoted = if rng.chance(50) && !nat_flows.is_empty() {
                    let (rip, rport, client, cport, p) = rng.pick(&nat_flows).clone();
                    let l4 = if p == TCP {
                        tcp(cport, rport, ACK)
                    } else {
                        udp(cport, rport, b"q")
                    };
                    ipv4(&client, &rip, l4)
                } else {
                    let (vip, port, p) = rng.pick(&services).clone();
                    let l4 = if p == TCP {
                        tcp(port, sport, ACK)
                    } else {
                        udp(port, sport, b"q")
                    };
                    ipv4(&vip, &src, l4)
                };
                let kind = *rng.pick(&[0u8, 3, 3, 8, 11, 12, 13]);
                L4::Icmp {
                    kind,
                    code: rng.below(5) as u8,
                    rest: [0, 0, 5, 0x78],
                    payload: quote(&quoted, 20 + 8 * rng.below(2) as usize),
                }
            }
            _ => L4::Raw { proto, payload },
        };
        let mut ip = ipv4(&src, &dst, l4);
        ip.ttl = *rng.pick(&[64u8, 64, 2, 1, 0, 255]);
        if rng.chance(10) {
            ip.options = vec![1, 1, 1, 0];
        }
        if rng.chance(5) {
            ip.frag = *rng.pick(&[0x2000u16, 0x0010, 0x2010]);
        }
        let mut fr = Frame::new(ROUTER_MAC, LB_CLI_MAC, ip);
        if rng.chance(5) {
            fr.vlans = (0..1 + rng.below(2))
                .map(|_| rng.below(4096) as u16)
                .collect();
        }
        let mut bytes = fr.bytes();
        if rng.chance(50) {
            match rng.below(3) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(bytes.len() as u64) as usize;
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
                1 => bytes.truncate(14 + rng.below(bytes.len() as u64 - 13) as usize),
                _ => {
                    let n = 1 + rng.below(32) as usize;
                    bytes.extend(rng.bytes(n));
                }
            }
        }
        let ingress = if rng.chance(50) { f.cli } else { f.srv };

        let (r, out) =
            f.dp.test_run(&bytes, ingress)
                .unwrap_or_else(|e| panic!("frame {i}: {e:#}"));
        let action = r.return_value;
        assert!(
            matches!(action, XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT),
            "frame {i}: action {action}"
        );
        let dst = frame::ip_dst(&bytes).map(|a| a.to_string());
        let src = frame::ip_src(&bytes).map(|a| a.to_string());
        let for_vip = dst.as_deref().is_some_and(|d| vips.contains(&d));
        let from_nat_backend = src.as_deref().is_some_and(|s| nat_backends.contains(&s));
        if !for_vip && !from_nat_backend && action != XDP_DROP {
            assert_eq!(
                hex(&out),
                hex(&bytes),
                "frame {i}: not for a VIP, yet rewritten"
            );
        }
        if action == XDP_PASS && out != bytes {
            // Only NAT hands a translated frame to the kernel, when the next hop's MAC is
            // unknown: the service 10.100.0.70, or a reply to a client without one.
            assert!(
                dst.as_deref() == Some("10.100.0.70") || from_nat_backend,
                "frame {i}: passed frame rewritten\n{}",
                hex(&bytes)
            );
        }
        if action == XDP_TX || action == XDP_REDIRECT {
            forwarded += 1;
            let before = frame::checksums_ok(&bytes).unwrap_or_else(|| {
                panic!("frame {i}: forwarded an unparsable frame\n{}", hex(&bytes))
            });
            let after = frame::checksums_ok(&out)
                .unwrap_or_else(|| panic!("frame {i}: forwarded frame unparsable\n{}", hex(&out)));
            assert_eq!(
                after,
                before,
                "frame {i}: checksum validity changed (in {before:?}, out {after:?})\nin:\n{}\nout:\n{}",
                hex(&bytes),
                hex(&out)
            );
            // Remember NAT flows (the output goes to a backend of a NAT service).
            let out_dst = frame::ip_dst(&out)
                .map(|a| a.to_string())
                .unwrap_or_default();
            let l3 = frame::l3_offset(&out).unwrap();
            let ihl = usize::from(out[l3] & 0x0f) * 4;
            let p = out[l3 + 9];
            if nat_backends.contains(&out_dst.as_str())
                && (p == TCP || p == UDP)
                && out.len() >= l3 + ihl + 4
                && for_vip
            {
                let port = |at: usize| u16::from_be_bytes([out[at], out[at + 1]]);
                let client = frame::ip_src(&out).unwrap().to_string();
                nat_flows.push((out_dst, port(l3 + ihl + 2), client, port(l3 + ihl), p));
            }
        }
    }
    assert_eq!(
        outcome_sum(&f.counters()) - start,
        FRAMES,
        "every frame bumps exactly one outcome counter"
    );
    println!("{forwarded} of {FRAMES} frames forwarded");
    assert!(
        forwarded > FRAMES / 10,
        "the generator must exercise the forwarding paths"
    );
}

/// The per-CPU flow cache serves established flows without the connection table, and
/// steps aside for everything that must reach it.
#[test]
fn flow_cache_serves_settled_flows_only() {
    let mut f = Fixture::new();
    let (cli, srv) = (f.cli, f.srv);
    let dsr = |flags| from_client(ipv4(CLIENT, DSR_VIP, tcp(51000, 80, flags))).bytes();
    let idx = f.pick("dsr_web", CLIENT, 51000, 80);
    let key = FlowKey::new(
        ne(CLIENT),
        ne(DSR_VIP),
        51000u16.to_be(),
        80u16.to_be(),
        TCP,
    );

    assert_eq!(run(&f, &dsr(SYN), cli).2, vec![("tx", 1), ("flow_syn", 1)]);
    // Handshake not complete: the ACK takes the full path (and makes the entry).
    assert_eq!(run(&f, &dsr(ACK), cli).2, vec![("tx", 1), ("flow_new", 1)]);
    assert_ne!(
        f.dp.flow(&key).unwrap().unwrap().state & lb_common::FLOW_ESTABLISHED,
        0
    );
    // Settled: served from the cache, even with its table entry gone.
    f.dp.remove_flow(&key).unwrap();
    let (action, out, moved) = run(&f, &dsr(ACK | PSH), cli);
    assert_eq!(
        (action, dmac(&out), moved),
        (
            XDP_TX,
            f.backend(idx).mac,
            vec![("tx", 1), ("flow_cache_hit", 1)]
        )
    );
    // FIN must reach the connection table: it bypasses the cache (and, the entry being
    // gone, makes a new one).
    assert_eq!(
        run(&f, &dsr(FIN | ACK), cli).2,
        vec![("tx", 1), ("flow_new", 1)]
    );
    assert_ne!(
        f.dp.flow(&key).unwrap().unwrap().state & lb_common::FLOW_FIN,
        0
    );
    // A closing flow is not cached.
    assert_eq!(run(&f, &dsr(ACK), cli).2, vec![("tx", 1), ("flow_hit", 1)]);

    // A cached flow whose backend goes away is re-placed at once.
    let flow = |p| from_client(ipv4(CLIENT, DSR_VIP, tcp(52000, 80, p))).bytes();
    let key = FlowKey::new(
        ne(CLIENT),
        ne(DSR_VIP),
        52000u16.to_be(),
        80u16.to_be(),
        TCP,
    );
    run(&f, &flow(SYN), cli);
    run(&f, &flow(ACK), cli);
    assert_eq!(
        run(&f, &flow(ACK), cli).2,
        vec![("tx", 1), ("flow_cache_hit", 1)]
    );
    let other = dsr_backend("10.0.0.99", 80, dsr_mac(0x99), cli, LB_CLI_MAC, 0);
    f.dp.set_backend(5, other).unwrap();
    f.set_table(0, &[5]);
    let pinned = f.dp.flow(&key).unwrap().unwrap().backend;
    let mut gone = f.backend(pinned);
    gone.flags = 0;
    f.dp.set_backend(pinned, gone).unwrap();
    let (_, out, moved) = run(&f, &flow(ACK), cli);
    assert_eq!(
        (dmac(&out), moved),
        (dsr_mac(0x99), vec![("tx", 1), ("flow_repick", 1)])
    );

    // NAT: replies are cached too, and keep being translated from the cache.
    let nat = |p| from_client(ipv4(CLIENT, NAT_VIP, tcp(53000, 8080, p))).bytes();
    let rip_idx = f.pick("nat_web", CLIENT, 53000, 8080);
    let rip = std::net::Ipv4Addr::from(f.backend(rip_idx).addr.to_ne_bytes()).to_string();
    run(&f, &nat(SYN), cli);
    let reply = |flags| from_backend(ipv4(&rip, CLIENT, tcp(80, 53000, flags))).bytes();
    assert_eq!(
        run(&f, &reply(SYN | ACK), srv).2,
        vec![("redirect", 1), ("nat_reply", 1)]
    );
    // A SYN|ACK is not cached (SYN, FIN and RST always take the full path); this ACK is.
    run(&f, &reply(ACK), srv);
    // With the translation gone from NAT_BACKENDS, only the cache can translate it.
    let nat_key = NatBackendKey {
        addr: ne(&rip),
        port: 80u16.to_be(),
        proto: TCP,
        _pad: 0,
    };
    let saved = f.dp.nat_backend(&nat_key).unwrap();
    f.dp.set_nat_backend(nat_key, None).unwrap();
    let (action, out, moved) = run(&f, &reply(ACK | PSH), srv);
    assert_eq!(
        (action, moved),
        (XDP_REDIRECT, vec![("redirect", 1), ("nat_reply", 1)])
    );
    assert_eq!(
        frame::ip_src(&out).unwrap(),
        addr(NAT_VIP),
        "translated from the cache"
    );
    // A FIN is not: it takes the full path, which no longer knows the backend.
    assert_eq!(run(&f, &reply(FIN | ACK), srv).2, vec![("pass_not_vip", 1)]);
    f.dp.set_nat_backend(nat_key, saved).unwrap();
}

/// The flow cache gives a packet what the full path would: each case is a packet the
/// cache once handled differently (and a test that failed then).
#[test]
fn flow_cache_and_full_path_agree() {
    let f = Fixture::new();
    let (cli, srv) = (f.cli, f.srv);

    // A DSR flow whose backend is behind another interface, settled and cached...
    let redir = |flags| from_client(ipv4(CLIENT, "10.100.0.60", tcp(54000, 80, flags)));
    run(&f, &redir(SYN).bytes(), cli);
    run(&f, &redir(ACK).bytes(), cli);
    assert_eq!(
        run(&f, &redir(ACK).bytes(), cli).2,
        vec![("redirect", 1), ("flow_cache_hit", 1)]
    );
    // ...then a VLAN-tagged packet of it: dropped (no redirect with a tag), and counted
    // as the drop only: not as a cache hit, not as the backend's traffic.
    let before = f.dp.backend_stats(50).unwrap();
    let mut tagged = redir(ACK | PSH);
    tagged.vlans = vec![100];
    assert_eq!(
        run(&f, &tagged.bytes(), cli).2,
        vec![("drop_vlan_unsupported", 1)]
    );
    let after = f.dp.backend_stats(50).unwrap();
    assert_eq!((after.packets, after.bytes), (before.packets, before.bytes));

    // A NAT flow, settled and cached...
    let nat = |flags| from_client(ipv4(CLIENT, NAT_VIP, tcp(54001, 8080, flags)));
    run(&f, &nat(SYN).bytes(), cli);
    run(&f, &nat(ACK).bytes(), cli);
    assert_eq!(
        run(&f, &nat(ACK).bytes(), cli).2,
        vec![("redirect", 1), ("flow_cache_hit", 1)]
    );
    // ...then a VLAN-tagged packet of it: NAT refuses tags on the full path, and so on
    // the fast one.
    let mut tagged = nat(ACK | PSH);
    tagged.vlans = vec![100];
    let (action, _, moved) = run(&f, &tagged.bytes(), cli);
    assert_eq!(
        (action, moved),
        (
            XDP_DROP,
            vec![("drop_vlan_unsupported", 1), ("flow_hit", 1)]
        )
    );
    // A NAT reply carrying SYN, FIN or RST never comes from the cache (the cached
    // translation is taken away to tell).
    let idx = f.pick("nat_web", CLIENT, 54001, 8080);
    let rip = std::net::Ipv4Addr::from(f.backend(idx).addr.to_ne_bytes()).to_string();
    let reply = |flags| from_backend(ipv4(&rip, CLIENT, tcp(80, 54001, flags))).bytes();
    run(&f, &reply(ACK), srv);
    assert_eq!(
        run(&f, &reply(ACK), srv).2,
        vec![("redirect", 1), ("nat_reply", 1)]
    );
    let mut f = f;
    let nat_key = NatBackendKey {
        addr: ne(&rip),
        port: 80u16.to_be(),
        proto: TCP,
        _pad: 0,
    };
    f.dp.set_nat_backend(nat_key, None).unwrap();
    for flags in [RST, FIN | ACK, SYN | ACK] {
        assert_eq!(
            run(&f, &reply(flags), srv).2,
            vec![("pass_not_vip", 1)],
            "flags {flags:#x}"
        );
    }
}

/// The seconds of the datapath's clock (`bpf_ktime_get_coarse_ns`).
fn now_s() -> u32 {
    // SAFETY: clock_gettime writes a timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

/// SYNs never make connection-table entries: a flood of them (twice the table) leaves
/// every established connection in place, and a table change then moves none of them;
/// handshakes in flight complete on their SYN's backend.
#[test]
fn syn_floods_evict_nothing() {
    let mut f = Fixture::new();
    let web = Web::v4(&f);
    syn_flood_evicts_nothing(&mut f, &web);
}

#[test]
fn ipv6_syn_floods_evict_nothing() {
    let mut f = Fixture::new();
    let web = Web::v6(&f);
    syn_flood_evicts_nothing(&mut f, &web);
}

/// A family's DSR web service in the fixture (the client `CLIENT`/`CLIENT6`, VIP:80),
/// for the stateful tests written once for both families.
struct Web {
    id: u32,
    backends: Vec<u32>,
    client: &'static str,
    /// A client's packet to the service: source address, source port, TCP flags.
    pkt: fn(&str, u16, u8) -> Vec<u8>,
    /// A source address made of the bits of `x` (floods).
    source: fn(u32) -> String,
    /// How many entries the family's connection table holds.
    entries: fn(&Fixture) -> usize,
    /// The entry of the client's connection from `port`.
    flow: fn(&Fixture, u16) -> Option<Flow>,
    /// Writes the entry of the client's connection from `port`.
    insert: fn(&mut Fixture, u16, Flow),
}

impl Web {
    fn v4(f: &Fixture) -> Web {
        fn key(port: u16) -> FlowKey {
            FlowKey::new(ne(CLIENT), ne(DSR_VIP), port.to_be(), 80u16.to_be(), TCP)
        }
        Web {
            id: f.services["dsr_web"].rec.id,
            backends: f.services["dsr_web"].backends.clone(),
            client: CLIENT,
            pkt: |src, sport, flags| from_client(ipv4(src, DSR_VIP, tcp(sport, 80, flags))).bytes(),
            source: |x| std::net::Ipv4Addr::from(0x0a00_0000 | (x >> 8)).to_string(),
            entries: |f| f.dp.flows().unwrap().len(),
            flow: |f, port| f.dp.flow(&key(port)).unwrap(),
            insert: |f, port, flow| f.dp.insert_flow(key(port), flow).unwrap(),
        }
    }

    fn v6(f: &Fixture) -> Web {
        fn key(port: u16) -> FlowKey6 {
            FlowKey6::new(w6(CLIENT6), w6(DSR_VIP6), port.to_be(), 80u16.to_be(), TCP)
        }
        Web {
            id: f.services6["dsr_web6"].rec.id,
            backends: f.services6["dsr_web6"].backends.clone(),
            client: CLIENT6,
            pkt: |src, sport, flags| {
                from_client6(ipv6(src, DSR_VIP6, tcp(sport, 80, flags))).bytes()
            },
            source: |x| format!("2001:db8:f00d::{:x}:{:x}", x >> 16, x & 0xffff),
            entries: |f| f.dp.flows6().unwrap().len(),
            flow: |f, port| f.dp.flow6(&key(port)).unwrap(),
            insert: |f, port, flow| f.dp.insert_flow6(key(port), flow).unwrap(),
        }
    }
}

fn syn_flood_evicts_nothing(f: &mut Fixture, web: &Web) {
    let cli = f.cli;
    let (a, b) = (web.backends[0], web.backends[1]);
    f.set_table(web.id, &[a]);
    let (pkt, client) = (web.pkt, web.client);
    // 100 established connections on a.
    for port in 20000..20100 {
        run(f, &pkt(client, port, SYN), cli);
        run(f, &pkt(client, port, ACK), cli);
    }
    assert_eq!((web.entries)(f), 100);
    // A handshake in flight: its SYN went to a.
    assert_eq!(
        dmac(&run(f, &pkt(client, 30000, SYN), cli).1),
        f.backend(a).mac
    );

    // The flood: 2 x 4096 SYNs from random sources.
    let mut x: u32 = 0x1234_5678;
    let before = f.counters();
    for _ in 0..2 * 4096 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        run(
            f,
            &pkt(&(web.source)(x), (x & 0xffff) as u16 | 1024, SYN),
            cli,
        );
    }
    let after = f.counters();
    let syns = after[Counter::FlowSyn as usize] - before[Counter::FlowSyn as usize];
    assert_eq!(syns, 2 * 4096);
    assert_eq!(
        (web.entries)(f),
        100,
        "the flood made no entry and evicted none"
    );

    // The table changes: every slot moves to b. Established connections stay on a (from
    // the connection table, or from the flow cache, which only ever holds what the
    // table decided).
    f.set_table(web.id, &[b]);
    for port in 20000..20100 {
        let (_, out, moved) = run(f, &pkt(client, port, ACK | PSH), cli);
        assert_eq!(dmac(&out), f.backend(a).mac, "port {port} kept its backend");
        assert!(
            moved == vec![("tx", 1), ("flow_hit", 1)]
                || moved == vec![("tx", 1), ("flow_cache_hit", 1)],
            "port {port}: {moved:?}"
        );
    }
    // The handshake in flight completes on a (unless the flood overwrote its half-open
    // slot: then it goes where the table says, like a flow whose SYN another node saw).
    let (_, out, moved) = run(f, &pkt(client, 30000, ACK), cli);
    assert_eq!(moved, vec![("tx", 1), ("flow_new", 1)]);
    assert!([f.backend(a).mac, f.backend(b).mac].contains(&dmac(&out)));
    // A new one follows the table, and so does its retransmitted SYN and its ACK even if
    // the table changes again meanwhile.
    assert_eq!(
        dmac(&run(f, &pkt(client, 30001, SYN), cli).1),
        f.backend(b).mac
    );
    f.set_table(web.id, &[a]);
    assert_eq!(
        dmac(&run(f, &pkt(client, 30001, SYN), cli).1),
        f.backend(b).mac
    );
    assert_eq!(
        dmac(&run(f, &pkt(client, 30001, ACK), cli).1),
        f.backend(b).mac
    );
}

/// An entry idle past its timeout is treated as gone by the datapath itself: the next
/// packet is placed afresh (`flow_expired`), without waiting for the control plane.
#[test]
fn idle_entries_expire_in_the_datapath() {
    let mut f = Fixture::new();
    let web = Web::v4(&f);
    tcp_entries_expire(&mut f, &web);
    // UDP, from the DSR UDP service's timeout.
    let cli = f.cli;
    f.dp.insert_flow(
        FlowKey::new(
            ne(CLIENT),
            ne(DSR_VIP),
            21004u16.to_be(),
            53u16.to_be(),
            UDP,
        ),
        Flow {
            backend: 90,
            epoch: f.backend(90).epoch,
            state: 0,
            last_seen: now_s() - TIMEOUTS.udp_s - 1,
        },
    )
    .unwrap();
    let (_, _, moved) = run(
        &f,
        &from_client(ipv4(CLIENT, DSR_VIP, udp(21004, 53, b"q"))).bytes(),
        cli,
    );
    assert_eq!(moved, vec![("tx", 1), ("flow_expired", 1)]);
}

#[test]
fn ipv6_idle_entries_expire_in_the_datapath() {
    let mut f = Fixture::new();
    let web = Web::v6(&f);
    tcp_entries_expire(&mut f, &web);
    // UDP, from the NAT UDP service's timeout.
    let cli = f.cli;
    let backend = f.services6["nat_dns6"].backends[0];
    f.dp.insert_flow6(
        FlowKey6::new(
            w6(CLIENT6),
            w6(NAT_VIP6),
            21004u16.to_be(),
            53u16.to_be(),
            UDP,
        ),
        Flow {
            backend,
            epoch: f.backend(backend).epoch,
            state: 0,
            last_seen: now_s() - TIMEOUTS.udp_s - 1,
        },
    )
    .unwrap();
    let (_, _, moved) = run(
        &f,
        &from_client6(ipv6(CLIENT6, NAT_VIP6, udp(21004, 53, b"q"))).bytes(),
        cli,
    );
    assert_eq!(moved, vec![("redirect", 1), ("flow_expired", 1)]);
}

/// TCP entries older than their state's timeout are re-placed by the packet that finds
/// them; a half-open slot older than its timeout no longer holds the SYN's backend.
fn tcp_entries_expire(f: &mut Fixture, web: &Web) {
    let cli = f.cli;
    let (a, b) = (web.backends[0], web.backends[1]);
    f.set_table(web.id, &[b]);
    let pinned = |idle: u32, state| Flow {
        backend: a,
        epoch: f.backend(a).epoch,
        state,
        last_seen: now_s() - idle,
    };
    let est = lb_common::FLOW_ESTABLISHED;
    for (port, flow, expired) in [
        (21000, pinned(TIMEOUTS.tcp_s - 5, est), false),
        (21001, pinned(TIMEOUTS.tcp_s + 1, est), true),
        (
            21002,
            pinned(TIMEOUTS.tcp_fin_s + 1, est | lb_common::FLOW_FIN),
            true,
        ),
        (
            21003,
            pinned(TIMEOUTS.tcp_fin_s - 5, est | lb_common::FLOW_FIN),
            false,
        ),
    ] {
        (web.insert)(f, port, flow);
        let (_, out, moved) = run(f, &(web.pkt)(web.client, port, ACK), cli);
        if expired {
            assert_eq!(
                (dmac(&out), moved),
                (f.backend(b).mac, vec![("tx", 1), ("flow_expired", 1)]),
                "port {port}"
            );
            let now = (web.flow)(f, port).unwrap();
            assert_eq!((now.backend, now.state), (b, est), "rewritten afresh");
        } else {
            assert_eq!(
                (dmac(&out), moved),
                (f.backend(a).mac, vec![("tx", 1), ("flow_hit", 1)]),
                "port {port}"
            );
        }
    }

    f.dp.set_timeouts(Timeouts {
        half_open_s: 1,
        ..TIMEOUTS
    })
    .unwrap();
    f.set_table(web.id, &[a]);
    assert_eq!(
        dmac(&run(f, &(web.pkt)(web.client, 21005, SYN), cli).1),
        f.backend(a).mac
    );
    f.set_table(web.id, &[b]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(
        dmac(&run(f, &(web.pkt)(web.client, 21005, ACK), cli).1),
        f.backend(b).mac,
        "the ACK of a handshake older than the half-open timeout follows the table"
    );
    f.dp.set_timeouts(TIMEOUTS).unwrap();
}

/// NAT replies never leak the backend's address: with the connection table filled far
/// past its capacity by one-way traffic (twice 4,096 connections that evict one
/// another), every reply of every one of them is translated back to VIP:port (from the
/// configuration, not from any per-connection state) or dropped with a counter.
/// Fills the connection table far past its size with `n` one-way NAT connections
/// (`handshake(i)`: the SYN and ACK of connection `i`), then sends every connection's
/// reply (`reply(i, ack_out)`: the reply frame, built from the ACK as forwarded, and the
/// frame it must become): each is translated, or dropped with a counter. `entries`:
/// how many entries the family's table holds. Returns the forwarded ACKs.
fn nat_replies_under_pressure(
    f: &Fixture,
    n: u32,
    handshake: impl Fn(u32) -> [Vec<u8>; 2],
    reply: impl Fn(u32, &[u8]) -> (Vec<u8>, Vec<u8>),
    entries: impl Fn(&Fixture) -> (usize, u32),
) -> Vec<Vec<u8>> {
    let (cli, srv) = (f.cli, f.srv);
    let mut acks = Vec::new();
    for i in 0..n {
        let [syn, ack] = handshake(i);
        run(f, &syn, cli);
        let (action, out, _) = run(f, &ack, cli);
        assert_eq!(action, XDP_REDIRECT);
        acks.push(out);
    }
    let (held, size) = entries(f);
    assert!(held <= size as usize, "the table holds at most its size");
    let before = f.counters();
    for (i, ack) in acks.iter().enumerate() {
        let (frame, translated) = reply(i as u32, ack);
        let (action, out, moved) = run(f, &frame, srv);
        let dropped = moved.iter().any(|(name, _)| name.starts_with("drop_"));
        if action == XDP_REDIRECT {
            assert_eq!(
                hex(&out),
                hex(&translated),
                "reply {i}: translated, checksums right"
            );
        } else {
            assert!(
                action == XDP_DROP && dropped,
                "reply {i} neither translated nor counted as dropped: {action} {moved:?}"
            );
        }
    }
    let after = f.counters();
    let translated = after[Counter::NatReply as usize] - before[Counter::NatReply as usize];
    assert_eq!(translated, u64::from(n), "every reply translated");
    acks
}

/// NAT replies never leak the backend's address: with the connection table filled far
/// past its capacity by one-way traffic (twice 4,096 connections that evict one
/// another), every reply of every one of them is translated back to VIP:port (from the
/// configuration, not from any per-connection state) or dropped with a counter.
#[test]
fn nat_replies_are_translated_whatever_the_table_holds() {
    let f = Fixture::new();
    let srv = f.srv;
    // 198.51.100.x, 256 ports each.
    let client = |i: u32| std::net::Ipv4Addr::from(0xc633_6400 | (i >> 8)).to_string();
    let port = |i: u32| 20000 + (i & 0xff) as u16;
    let acks = nat_replies_under_pressure(
        &f,
        2 * 4096,
        |i| {
            [SYN, ACK].map(|flags| {
                from_client(ipv4(&client(i), NAT_VIP, tcp(port(i), 8080, flags))).bytes()
            })
        },
        |i, ack| {
            let rip = frame::ip_dst(ack).unwrap().to_string();
            let reply = ipv4(&rip, &client(i), tcp(80, port(i), ACK | PSH));
            let translated = Frame::new(LB_CLI_MAC, ROUTER_MAC, nat_src(&reply, NAT_VIP, 8080));
            (from_backend(reply).bytes(), translated.bytes())
        },
        |f| (f.dp.flows().unwrap().len(), LIMITS.conntrack_entries),
    );
    let (client, port, rip) = (
        client(0),
        port(0),
        frame::ip_dst(&acks[0]).unwrap().to_string(),
    );

    // A backend taken out of its service is retired, not forgotten: its translation stays
    // (without a backend index, so no statistics) while its connections may be open.
    let mut f = f;
    let nat_key = NatBackendKey {
        addr: ne(&rip),
        port: 80u16.to_be(),
        proto: TCP,
        _pad: 0,
    };
    let idx = f.dp.nat_backend(&nat_key).unwrap().unwrap().backend;
    f.dp.set_nat_backend(
        nat_key,
        Some(NatBackend {
            vip: ne(NAT_VIP),
            vport: 8080u16.to_be(),
            _pad: 0,
            backend: NO_BACKEND,
            service: u32::MAX,
        }),
    )
    .unwrap();
    let mut gone = f.backend(idx);
    gone.flags = 0;
    f.dp.set_backend(idx, gone).unwrap();
    let stats = f.dp.backend_stats(idx).unwrap();
    let reply = ipv4(&rip, &client, tcp(80, port, FIN | ACK));
    let (action, out, moved) = run(&f, &from_backend(reply.clone()).bytes(), srv);
    assert_eq!(
        (action, moved),
        (XDP_REDIRECT, vec![("redirect", 1), ("nat_reply", 1)])
    );
    assert_eq!(
        hex(&out),
        hex(&Frame::new(LB_CLI_MAC, ROUTER_MAC, nat_src(&reply, NAT_VIP, 8080)).bytes())
    );
    assert_eq!(f.dp.backend_stats(idx).unwrap(), stats);
}

/// Handshakes in flight while the table keeps changing complete on their SYN's backend:
/// 1,000 connections, each with a table change (every slot moves) between its SYN, a
/// retransmission of it, and its ACK.
#[test]
fn handshakes_survive_table_changes() {
    let mut f = Fixture::new();
    let web = Web::v4(&f);
    handshakes_keep_their_backend(&mut f, &web);
}

fn handshakes_keep_their_backend(f: &mut Fixture, web: &Web) {
    let cli = f.cli;
    let (id, pkt) = (web.id, |sport, flags| (web.pkt)(web.client, sport, flags));
    let web = &web.backends;
    let mut failed = 0;
    for i in 0..1000u16 {
        let sport = 30000 + i;
        f.set_table(id, &[web[usize::from(i) % 3]]);
        let (_, out, _) = run(f, &pkt(sport, SYN), cli);
        let syn_mac = dmac(&out);
        f.set_table(id, &[web[(usize::from(i) + 1) % 3]]);
        let (_, out, _) = run(f, &pkt(sport, SYN), cli);
        let again = dmac(&out);
        f.set_table(id, &[web[(usize::from(i) + 2) % 3]]);
        let (_, out, _) = run(f, &pkt(sport, ACK), cli);
        if again != syn_mac || dmac(&out) != syn_mac {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "handshakes that lost their backend");
}

#[test]
fn ipv6_handshakes_survive_table_changes() {
    let mut f = Fixture::new();
    let web = Web::v6(&f);
    handshakes_keep_their_backend(&mut f, &web);
}

/// [`nat_replies_are_translated_whatever_the_table_holds`] for IPv6 (`CONNTRACK6`).
#[test]
fn ipv6_nat_replies_are_translated_whatever_the_table_holds() {
    let f = Fixture::new();
    let srv = f.srv;
    // 2001:db8:cafe::1:x (behind the client-side router), 256 ports each.
    let client = |i: u32| format!("2001:db8:cafe::1:{:x}", i >> 8);
    let port = |i: u32| 20000 + (i & 0xff) as u16;
    let acks = nat_replies_under_pressure(
        &f,
        2 * 4096,
        |i| {
            [SYN, ACK].map(|flags| {
                from_client6(ipv6(&client(i), NAT_VIP6, tcp(port(i), 8080, flags))).bytes()
            })
        },
        |i, ack| {
            let rip = frame::ip6_dst(ack).unwrap().to_string();
            let reply = ipv6(&rip, &client(i), tcp(80, port(i), ACK | PSH));
            let translated = Frame6::new(LB_CLI_MAC, ROUTER_MAC, nat_src6(&reply, NAT_VIP6, 8080));
            (from_backend6(reply).bytes(), translated.bytes())
        },
        |f| {
            let size = LIMITS.conntrack6_entries;
            (f.dp.flows6().unwrap().len(), size)
        },
    );
    let (client, port) = (client(0), port(0));
    let rip = frame::ip6_dst(&acks[0]).unwrap().to_string();

    // A retired backend's replies are still translated, without statistics.
    let mut f = f;
    let nat_key = NatBackendKey6 {
        addr: w6(&rip),
        port: 80u16.to_be(),
        proto: TCP,
        _pad: 0,
    };
    let idx = f.dp.nat_backend6(&nat_key).unwrap().unwrap().backend;
    f.dp.set_nat_backend6(
        nat_key,
        Some(NatBackend6 {
            vip: w6(NAT_VIP6),
            vport: 8080u16.to_be(),
            _pad: 0,
            backend: NO_BACKEND,
            service: u32::MAX,
        }),
    )
    .unwrap();
    let mut gone = f.backend(idx);
    gone.flags = 0;
    f.dp.set_backend(idx, gone).unwrap();
    let stats = f.dp.backend_stats(idx).unwrap();
    let reply = ipv6(&rip, &client, tcp(80, port, FIN | ACK));
    let (action, out, moved) = run(&f, &from_backend6(reply.clone()).bytes(), srv);
    assert_eq!(
        (action, moved),
        (XDP_REDIRECT, vec![("redirect", 1), ("nat_reply", 1)])
    );
    assert_eq!(
        hex(&out),
        hex(&Frame6::new(LB_CLI_MAC, ROUTER_MAC, nat_src6(&reply, NAT_VIP6, 8080)).bytes())
    );
    assert_eq!(f.dp.backend_stats(idx).unwrap(), stats);
}

// ---- IPv6 ------------------------------------------------------------------------

const CLIENT6: &str = "2001:db8:cafe::7";
const DSR_VIP6: &str = "2001:db8:100::10";
const NAT_VIP6: &str = "2001:db8:100::20";
/// The client-side router (a permanent neighbour on `cli0`).
const ROUTER6: &str = "2001:db8:c::fe";

/// Static IPv6 neighbours: the client-side router and NAT next hops.
const NEIGHBOURS6: [(&str, Mac, &str); 5] = [
    (ROUTER6, ROUTER_MAC, "cli0"),
    ("2001:db8:c::50", [2, 0, 0, 0, 6, 0x50], "cli0"),
    ("2001:db8:b::11", [2, 0, 0, 0, 6, 0x11], "srv0"),
    ("2001:db8:b::12", [2, 0, 0, 0, 6, 0x12], "srv0"),
    ("2001:db8:b::21", [2, 0, 0, 0, 6, 0x21], "srv0"),
];

fn nat_mac6(a: &str) -> Mac {
    let a = addr6(a);
    NEIGHBOURS6
        .iter()
        .find(|(n, _, _)| addr6(n) == a)
        .unwrap_or_else(|| panic!("no neighbour {a}"))
        .1
}

fn w6(a: &str) -> Addr6 {
    ipv6_words(addr6(a).octets())
}

/// The text form of a datapath IPv6 address.
fn text6(a: Addr6) -> String {
    std::net::Ipv6Addr::from(lb_common::ipv6_octets(a)).to_string()
}

struct Svc6 {
    key: ServiceKey6,
    rec: Service,
    backends: Vec<u32>,
}

/// A backend of an IPv6 service (its address goes to `BACKEND_ADDRS6`): DSR when `mac`
/// is given.
fn backend6(port: u16, dsr: Option<(Mac, u32, Mac)>, service: u32) -> Backend {
    let (mac, ifindex, src_mac) = dsr.unwrap_or(([0; 6], 0, [0; 6]));
    Backend {
        addr: 0,
        port: port.to_be(),
        flags: BACKEND_F_LIVE | BACKEND_F_IPV6,
        epoch: 1,
        ifindex,
        mac,
        src_mac,
        service,
    }
}

impl Fixture {
    /// The IPv6 services (ids 20.., backend indexes 200..), mirroring the IPv4 ones.
    fn add_ipv6_services(&mut self) {
        for (a, mac, dev) in NEIGHBOURS6 {
            netns::ip(&format!(
                "-6 neigh add {a} lladdr {} dev {dev} nud permanent",
                mac_str(mac)
            ));
        }
        let (cli, srv) = (self.cli, self.srv);
        let d = |last| Some((dsr_mac(last), cli, LB_CLI_MAC));
        self.add6(
            "dsr_web6",
            (DSR_VIP6, 80, TCP),
            20,
            0,
            &[
                (200, "2001:db8:a::11", backend6(80, d(0x61), 20)),
                (201, "2001:db8:a::12", backend6(80, d(0x62), 20)),
                (202, "2001:db8:a::13", backend6(80, d(0x63), 20)),
            ],
        );
        self.add6(
            "nat_web6",
            (NAT_VIP6, 8080, TCP),
            21,
            SERVICE_F_NAT,
            &[
                (210, "2001:db8:b::11", backend6(80, None, 21)),
                (211, "2001:db8:b::12", backend6(80, None, 21)),
            ],
        );
        self.add6(
            "nat_dns6",
            (NAT_VIP6, 53, UDP),
            22,
            SERVICE_F_NAT,
            &[(220, "2001:db8:b::21", backend6(53, None, 22))],
        );
        self.add6(
            "persist6",
            (DSR_VIP6, 443, TCP),
            23,
            SERVICE_F_HASH_SRC,
            &[
                (230, "2001:db8:a::11", backend6(443, d(0x61), 23)),
                (231, "2001:db8:a::12", backend6(443, d(0x62), 23)),
                (232, "2001:db8:a::13", backend6(443, d(0x63), 23)),
            ],
        );
        self.add6("empty6", ("2001:db8:100::50", 80, TCP), 24, 0, &[]);
        self.add6(
            "redir6",
            ("2001:db8:100::60", 80, TCP),
            25,
            0,
            &[(
                250,
                "2001:db8:b::31",
                backend6(80, Some((dsr_mac(0x71), srv, LB_SRV_MAC)), 25),
            )],
        );
        self.add6(
            "noneigh6",
            ("2001:db8:100::70", 80, TCP),
            26,
            SERVICE_F_NAT,
            &[(260, "2001:db8:b::13", backend6(80, None, 26))],
        );
        self.add6(
            "nomac6",
            ("2001:db8:100::80", 80, TCP),
            27,
            0,
            &[(
                270,
                "2001:db8:a::14",
                backend6(80, Some(([0; 6], cli, LB_CLI_MAC)), 27),
            )],
        );
        self.add6(
            "onearm6",
            ("2001:db8:100::90", 80, TCP),
            28,
            SERVICE_F_NAT,
            &[(280, "2001:db8:c::50", backend6(8080, None, 28))],
        );
        self.add6(
            "dsr_udp6",
            (DSR_VIP6, 53, UDP),
            29,
            0,
            &[(290, "2001:db8:a::11", backend6(53, d(0x61), 29))],
        );
    }

    /// As [`Fixture::add`], for an IPv6 service.
    fn add6(
        &mut self,
        name: &'static str,
        (vip, port, proto): (&str, u16, u8),
        id: u32,
        flags: u32,
        backends: &[(u32, &str, Backend)],
    ) {
        let key = ServiceKey6 {
            vip: w6(vip),
            port: port.to_be(),
            proto,
            _pad: 0,
        };
        let rec = Service {
            id,
            flags,
            table_size: TABLE,
            table_gen: 0,
            key: Default::default(),
        };
        for (index, a, be) in backends {
            self.dp.set_backend_addr6(*index, w6(a)).unwrap();
            self.dp.set_backend(*index, *be).unwrap();
            if flags & SERVICE_F_NAT != 0 {
                self.dp
                    .set_nat_backend6(
                        NatBackendKey6 {
                            addr: w6(a),
                            port: be.port,
                            proto,
                            _pad: 0,
                        },
                        Some(NatBackend6 {
                            vip: key.vip,
                            vport: key.port,
                            _pad: 0,
                            backend: *index,
                            service: id,
                        }),
                    )
                    .unwrap();
            }
        }
        let indexes: Vec<u32> = backends.iter().map(|(i, _, _)| *i).collect();
        self.set_table(id, &indexes);
        self.dp.set_service6(key, rec).unwrap();
        self.dp.set_vip6(key.vip, 1).unwrap();
        self.services6.insert(
            name,
            Svc6 {
                key,
                rec,
                backends: indexes,
            },
        );
    }

    /// The backend index the table gives a new IPv6 flow (hashes of lb-common, the
    /// datapath's own).
    fn pick6(&self, name: &str, src: &str, sport: u16, dport: u16) -> u32 {
        let s = &self.services6[name];
        let hash = if s.rec.flags & SERVICE_F_HASH_SRC != 0 {
            source_hash6(&w6(src))
        } else {
            flow_hash6(
                &w6(src),
                &s.key.vip,
                ports_word(sport.to_be(), dport.to_be()),
                s.key.proto,
            )
        };
        s.backends[((hash % TABLE) as usize) % s.backends.len()]
    }

    /// The address of an IPv6 backend, as text.
    fn addr6_of(&self, index: u32) -> String {
        text6(self.dp.backend_addr6(index).unwrap())
    }
}

/// An IPv6 client packet as it arrives from the router on the client side.
fn from_client6(ip: Ipv6) -> Frame6 {
    Frame6::new(ROUTER_MAC, LB_CLI_MAC, ip)
}

/// An IPv6 backend's packet as it arrives on the backend side.
fn from_backend6(ip: Ipv6) -> Frame6 {
    Frame6::new(nat_mac6(&ip.src.to_string()), LB_SRV_MAC, ip)
}

fn with_hops(mut ip: Ipv6, hops: u8) -> Ipv6 {
    ip.hop_limit = hops;
    ip
}

/// The same IPv6 packet, translated: destination (and its port) rewritten, hop limit
/// decremented.
fn nat_dst6(ip: &Ipv6, a: &str, port: u16) -> Ipv6 {
    let mut ip = with_hops(ip.clone(), ip.hop_limit - 1);
    ip.dst = addr6(a);
    set_port(&mut ip.l4, false, port);
    ip
}

fn nat_src6(ip: &Ipv6, a: &str, port: u16) -> Ipv6 {
    let mut ip = with_hops(ip.clone(), ip.hop_limit - 1);
    ip.src = addr6(a);
    set_port(&mut ip.l4, true, port);
    ip
}

/// `n` bytes of `ip` as an ICMPv6 error quotes them.
fn quote6(ip: &Ipv6, n: usize) -> Vec<u8> {
    ip.bytes()[..n].to_vec()
}

/// ICMPv6 packet too big, MTU 1280.
const TOO_BIG: (u8, u8, [u8; 4]) = (2, 0, [0, 0, 0x05, 0x00]);

#[test]
#[expect(
    clippy::vec_init_then_push,
    reason = "cases are grouped in commented sections"
)]
fn packet_cases_ipv6() {
    let f = Fixture::new();
    let (cli, srv) = (f.cli, f.srv);
    use Counter::*;
    let mut cases = Vec::new();

    // ---- not for us: passed untouched ----
    cases.push(case(
        "tcp to a non-VIP address (ssh to the host) is passed",
        cli,
        from_client6(ipv6(CLIENT6, "2001:db8:c::1", tcp(40000, 22, SYN))).bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "tcp to a VIP port without a service is passed",
        cli,
        from_client6(ipv6(CLIENT6, DSR_VIP6, tcp(40000, 81, SYN))).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    cases.push(case(
        "gre to a VIP is passed",
        cli,
        from_client6(ipv6(
            CLIENT6,
            DSR_VIP6,
            L4::Raw {
                proto: 47,
                payload: vec![0; 8],
            },
        ))
        .bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    cases.push(case(
        "udp reply from a host that is no NAT backend is passed",
        srv,
        Frame6::new(
            [2, 0, 0, 0, 6, 0x99],
            LB_SRV_MAC,
            ipv6("2001:db8:b::99", CLIENT6, udp(53, 5000, b"x")),
        )
        .bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));

    // ---- neighbour discovery: always passed, whoever it is for ----
    let nd = |kind: u8, src: &str, dst: &str, body: Vec<u8>| {
        let mut ip = ipv6(
            src,
            dst,
            L4::Icmp {
                kind,
                code: 0,
                rest: [0; 4],
                payload: body,
            },
        );
        ip.hop_limit = 255;
        Frame6::new(ROUTER_MAC, LB_CLI_MAC, ip).bytes()
    };
    let target = |a: &str| addr6(a).octets().to_vec();
    for (name, frame) in [
        (
            "neighbour solicitation for a VIP (solicited-node multicast)",
            nd(135, ROUTER6, "ff02::1:ff00:10", target(DSR_VIP6)),
        ),
        (
            "neighbour solicitation to a VIP (unicast, unreachability detection)",
            nd(135, ROUTER6, DSR_VIP6, target(DSR_VIP6)),
        ),
        (
            "neighbour advertisement to a VIP",
            nd(136, ROUTER6, DSR_VIP6, target(ROUTER6)),
        ),
        (
            "router advertisement",
            nd(134, "fe80::fe", "ff02::1", vec![0; 8]),
        ),
        ("router solicitation", nd(133, "fe80::1", "ff02::2", vec![])),
        (
            "redirect to a VIP",
            nd(
                137,
                ROUTER6,
                DSR_VIP6,
                [target(ROUTER6), target(CLIENT6)].concat(),
            ),
        ),
    ] {
        cases.push(case(name, cli, frame, XDP_PASS, None, &[(PassNdp, 1)]));
    }

    // ---- DSR ----
    let syn = ipv6(CLIENT6, DSR_VIP6, tcp(40000, 80, SYN));
    let be = f.backend(f.pick6("dsr_web6", CLIENT6, 40000, 80));
    cases.push(case(
        "dsr new flow: MACs rewritten, XDP_TX, IP untouched",
        cli,
        from_client6(syn.clone()).bytes(),
        XDP_TX,
        Some(Frame6::new(LB_CLI_MAC, be.mac, syn.clone()).bytes()),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let ack = ipv6(CLIENT6, DSR_VIP6, tcp(40000, 80, ACK | PSH));
    cases.push(case(
        "dsr handshake's ACK: the SYN's backend, a connection-table entry made",
        cli,
        from_client6(ack.clone()).bytes(),
        XDP_TX,
        Some(Frame6::new(LB_CLI_MAC, be.mac, ack.clone()).bytes()),
        &[(Tx, 1), (FlowNew, 1)],
    ));
    cases.push(case(
        "dsr established flow: served from the flow cache",
        cli,
        from_client6(ack.clone()).bytes(),
        XDP_TX,
        Some(Frame6::new(LB_CLI_MAC, be.mac, ack.clone()).bytes()),
        &[(Tx, 1), (FlowCacheHit, 1)],
    ));
    let q = ipv6(CLIENT6, DSR_VIP6, udp(5353, 53, b"query"));
    cases.push(case(
        "dsr udp",
        cli,
        from_client6(q.clone()).bytes(),
        XDP_TX,
        Some(Frame6::new(LB_CLI_MAC, dsr_mac(0x61), q).bytes()),
        &[(Tx, 1), (FlowNew, 1)],
    ));
    let r = ipv6(CLIENT6, "2001:db8:100::60", tcp(40000, 80, SYN));
    cases.push(case(
        "dsr backend behind another interface: XDP_REDIRECT",
        cli,
        from_client6(r.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_SRV_MAC, dsr_mac(0x71), r).bytes()),
        &[(Redirect, 1), (FlowSyn, 1)],
    ));
    for (p1, p2) in [(1000u16, 2000u16), (3000, 4000)] {
        let idx = f.pick6("persist6", CLIENT6, p1, 443);
        assert_eq!(idx, f.pick6("persist6", CLIENT6, p2, 443));
        let mac = f.backend(idx).mac;
        for port in [p1, p2] {
            let s = ipv6(CLIENT6, DSR_VIP6, tcp(port, 443, SYN));
            cases.push(case(
                "persistence: every port of a client reaches the same backend",
                cli,
                from_client6(s.clone()).bytes(),
                XDP_TX,
                Some(Frame6::new(LB_CLI_MAC, mac, s).bytes()),
                &[(Tx, 1), (FlowSyn, 1)],
            ));
        }
    }
    cases.push(case(
        "service without usable backends drops new flows",
        cli,
        from_client6(ipv6(CLIENT6, "2001:db8:100::50", tcp(40000, 80, SYN))).bytes(),
        XDP_DROP,
        None,
        &[(DropNoBackend, 1)],
    ));
    cases.push(case(
        "dsr backend whose MAC is unknown: dropped",
        cli,
        from_client6(ipv6(CLIENT6, "2001:db8:100::80", tcp(40000, 80, SYN))).bytes(),
        XDP_DROP,
        None,
        &[(DropNoMac, 1), (FlowSyn, 1)],
    ));
    let rst = ipv6(CLIENT6, DSR_VIP6, tcp(45000, 80, RST));
    let be_rst = f.backend(f.pick6("dsr_web6", CLIENT6, 45000, 80));
    cases.push(case(
        "tcp rst of an unknown flow: forwarded, no entry",
        cli,
        from_client6(rst.clone()).bytes(),
        XDP_TX,
        Some(Frame6::new(LB_CLI_MAC, be_rst.mac, rst).bytes()),
        &[(Tx, 1), (FlowRstNoEntry, 1)],
    ));
    let synack = ipv6(CLIENT6, DSR_VIP6, tcp(45001, 80, SYN | ACK));
    let be_synack = f.backend(f.pick6("dsr_web6", CLIENT6, 45001, 80));
    cases.push(case(
        "tcp syn|ack from a client (a reflection) of an unknown flow: forwarded, no entry",
        cli,
        from_client6(synack.clone()).bytes(),
        XDP_TX,
        Some(Frame6::new(LB_CLI_MAC, be_synack.mac, synack).bytes()),
        &[(Tx, 1), (FlowSynAckNoEntry, 1)],
    ));

    // ---- NAT66 ----
    let syn = ipv6(CLIENT6, NAT_VIP6, tcp(40001, 8080, SYN));
    let rip = f.addr6_of(f.pick6("nat_web6", CLIENT6, 40001, 8080));
    cases.push(case(
        "nat forward: [VIP]:8080 -> [RIP]:80, hop limit - 1, checksum, next hop from the FIB",
        cli,
        from_client6(syn.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_SRV_MAC, nat_mac6(&rip), nat_dst6(&syn, &rip, 80)).bytes()),
        &[(Redirect, 1), (FlowSyn, 1)],
    ));
    let reply = ipv6(&rip, CLIENT6, tcp(80, 40001, SYN | ACK));
    cases.push(case(
        "nat return: [RIP]:80 -> [VIP]:8080 towards the client",
        srv,
        from_backend6(reply.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_CLI_MAC, ROUTER_MAC, nat_src6(&reply, NAT_VIP6, 8080)).bytes()),
        &[(Redirect, 1), (NatReply, 1)],
    ));
    let unseen = ipv6(&rip, CLIENT6, tcp(80, 47000, ACK | PSH));
    cases.push(case(
        "nat return of a connection this node never saw (a failover): translated",
        srv,
        from_backend6(unseen.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_CLI_MAC, ROUTER_MAC, nat_src6(&unseen, NAT_VIP6, 8080)).bytes()),
        &[(Redirect, 1), (NatReply, 1)],
    ));
    cases.push(case(
        "a NAT backend's packet to this host (a health check's reply): untranslated",
        srv,
        from_backend6(ipv6(&rip, "2001:db8:b::1", tcp(80, 33000, SYN | ACK))).bytes(),
        XDP_PASS,
        None,
        &[(PassNatLocal, 1)],
    ));
    let mut tagged_local = from_backend6(ipv6(&rip, "2001:db8:b::1", tcp(80, 33001, ACK)));
    tagged_local.vlans = vec![100];
    cases.push(case(
        "a NAT backend's packet to this host with a VLAN tag: untranslated too",
        srv,
        tagged_local.bytes(),
        XDP_PASS,
        None,
        &[(PassNatLocal, 1)],
    ));
    let mut fragment = ipv6(&rip, CLIENT6, udp(53, 5000, b"a large answer"));
    fragment.ext = vec![Ext::Fragment {
        offset: 0,
        more: true,
    }];
    cases.push(case(
        "fragment from a NAT backend (a reply cannot be translated): dropped, never leaked",
        srv,
        from_backend6(fragment).bytes(),
        XDP_DROP,
        None,
        &[(DropFragment, 1)],
    ));
    cases.push(case(
        "a NAT backend's packet from another port: not a reply",
        srv,
        from_backend6(ipv6(&rip, CLIENT6, tcp(22, 40001, ACK))).bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    let ack = ipv6(CLIENT6, NAT_VIP6, tcp(40001, 8080, ACK));
    cases.push(case(
        "nat handshake's ACK: the SYN's backend, a connection-table entry made",
        cli,
        from_client6(ack.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_SRV_MAC, nat_mac6(&rip), nat_dst6(&ack, &rip, 80)).bytes()),
        &[(Redirect, 1), (FlowNew, 1)],
    ));
    let s = ipv6("2001:db8:c::100", "2001:db8:100::90", tcp(40000, 80, SYN));
    cases.push(case(
        "nat one-arm (backend on the ingress side): XDP_TX, port 80 -> 8080",
        cli,
        from_client6(s.clone()).bytes(),
        XDP_TX,
        Some(
            Frame6::new(
                LB_CLI_MAC,
                nat_mac6("2001:db8:c::50"),
                nat_dst6(&s, "2001:db8:c::50", 8080),
            )
            .bytes(),
        ),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let mut q = ipv6(
        CLIENT6,
        NAT_VIP6,
        L4::Udp {
            sport: 5353,
            dport: 53,
            payload: b"query".to_vec(),
            zero_checksum: true,
        },
    );
    cases.push(case(
        "nat udp with checksum 0 (invalid in IPv6): left as it came, the backend drops it",
        cli,
        from_client6(q.clone()).bytes(),
        XDP_REDIRECT,
        Some(
            Frame6::new(
                LB_SRV_MAC,
                nat_mac6("2001:db8:b::21"),
                nat_dst6(&q, "2001:db8:b::21", 53),
            )
            .bytes(),
        ),
        &[(Redirect, 1), (FlowNew, 1)],
    ));
    q.l4 = udp(5354, 53, b"query");
    cases.push(case(
        "nat udp with checksum: updated",
        cli,
        from_client6(q.clone()).bytes(),
        XDP_REDIRECT,
        Some(
            Frame6::new(
                LB_SRV_MAC,
                nat_mac6("2001:db8:b::21"),
                nat_dst6(&q, "2001:db8:b::21", 53),
            )
            .bytes(),
        ),
        &[(Redirect, 1), (FlowNew, 1)],
    ));
    let a = ipv6("2001:db8:b::21", CLIENT6, udp(53, 5354, b"answer"));
    cases.push(case(
        "nat udp return",
        srv,
        from_backend6(a.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_CLI_MAC, ROUTER_MAC, nat_src6(&a, NAT_VIP6, 53)).bytes()),
        &[(Redirect, 1), (NatReply, 1)],
    ));
    let s = ipv6(CLIENT6, "2001:db8:100::70", tcp(40000, 80, SYN));
    let mut unresolved = from_client6(nat_dst6(&s, "2001:db8:b::13", 80)).bytes();
    unresolved[..12].copy_from_slice(&from_client6(s.clone()).bytes()[..12]);
    cases.push(case(
        "nat next hop without neighbour: translated, handed to the kernel",
        cli,
        from_client6(s).bytes(),
        XDP_PASS,
        Some(unresolved),
        &[(PassNoNeigh, 1), (FlowSyn, 1)],
    ));

    // ---- ICMPv6 ----
    let echo = ipv6(
        CLIENT6,
        DSR_VIP6,
        icmp(128, 0, [0x12, 0x34, 0, 1], b"ping".to_vec()),
    );
    let answer = ipv6(
        DSR_VIP6,
        CLIENT6,
        icmp(129, 0, [0x12, 0x34, 0, 1], b"ping".to_vec()),
    );
    cases.push(case(
        "echo request to a VIP is answered",
        cli,
        from_client6(echo).bytes(),
        XDP_TX,
        Some(Frame6::new(LB_CLI_MAC, ROUTER_MAC, answer).bytes()),
        &[(Tx, 1), (IcmpEchoReply, 1)],
    ));
    cases.push(case(
        "echo request to another address is passed",
        cli,
        from_client6(ipv6(
            CLIENT6,
            "2001:db8:c::1",
            icmp(128, 0, [0, 1, 0, 1], vec![]),
        ))
        .bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "other icmpv6 (a node information query) to a VIP is passed",
        cli,
        from_client6(ipv6(CLIENT6, DSR_VIP6, icmp(139, 0, [0; 4], vec![0; 12]))).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    let sent = ipv6(DSR_VIP6, CLIENT6, tcp(80, 40000, ACK));
    let (k, c, rest) = TOO_BIG;
    let err = ipv6(ROUTER6, DSR_VIP6, icmp(k, c, rest, quote6(&sent, 48)));
    cases.push(case(
        "packet too big about a DSR flow goes to the flow's backend",
        cli,
        from_client6(err.clone()).bytes(),
        XDP_TX,
        Some(Frame6::new(LB_CLI_MAC, be.mac, err).bytes()),
        &[(Tx, 1), (IcmpErrorToBackend, 1)],
    ));
    let sent = ipv6(NAT_VIP6, CLIENT6, tcp(8080, 40001, ACK));
    let err = ipv6(ROUTER6, NAT_VIP6, icmp(k, c, rest, quote6(&sent, 48)));
    let back = nat_src6(&sent, &rip, 80);
    let want = with_hops(
        ipv6(
            ROUTER6,
            &rip,
            icmp(k, c, rest, quote6(&with_hops(back, sent.hop_limit), 48)),
        ),
        63,
    );
    cases.push(case(
        "packet too big about a NAT flow: outer and quoted addresses go back to the backend",
        cli,
        from_client6(err).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_SRV_MAC, nat_mac6(&rip), want).bytes()),
        &[(Redirect, 1), (IcmpErrorToBackend, 1)],
    ));
    let sent = ipv6(CLIENT6, "2001:db8:b::21", udp(5354, 53, b"query"));
    let quoted_in = quote6(&sent, 48);
    let err = ipv6(
        "2001:db8:b::21",
        CLIENT6,
        icmp(1, 4, [0; 4], quoted_in.clone()),
    );
    let mut quoted_out = quote6(
        &{
            let mut s = sent.clone();
            s.dst = addr6(NAT_VIP6);
            s
        },
        48,
    );
    // The quoted UDP checksum stays as quoted.
    quoted_out[46..48].copy_from_slice(&quoted_in[46..48]);
    let want = with_hops(ipv6(NAT_VIP6, CLIENT6, icmp(1, 4, [0; 4], quoted_out)), 63);
    cases.push(case(
        "port unreachable from a NAT backend is translated back to the client",
        srv,
        from_backend6(err).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_CLI_MAC, ROUTER_MAC, want).bytes()),
        &[(Redirect, 1), (IcmpErrorToClient, 1)],
    ));
    let sent = ipv6(NAT_VIP6, CLIENT6, tcp(8080, 40001, ACK));
    cases.push(case(
        "icmpv6 error to one VIP quoting another VIP's packet is passed",
        cli,
        from_client6(ipv6(ROUTER6, DSR_VIP6, icmp(k, c, rest, quote6(&sent, 48)))).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    let sent = ipv6(DSR_VIP6, CLIENT6, tcp(9999, 40000, ACK));
    cases.push(case(
        "icmpv6 error to a VIP about no service is passed",
        cli,
        from_client6(ipv6(ROUTER6, DSR_VIP6, icmp(k, c, rest, quote6(&sent, 48)))).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    let mut sent = ipv6(DSR_VIP6, CLIENT6, tcp(80, 40000, ACK));
    sent.ext = vec![Ext::DestOpts { len8: 0 }];
    cases.push(case(
        "icmpv6 error quoting a packet with extension headers is passed (not matched)",
        cli,
        from_client6(ipv6(ROUTER6, DSR_VIP6, icmp(k, c, rest, quote6(&sent, 56)))).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    // From a NAT backend, an error quoting a client's packet with extension headers
    // (lb forwards such packets) cannot be matched: dropped, not passed on with the
    // backend's address in it.
    let mut sent = ipv6(CLIENT6, "2001:db8:b::21", tcp(40001, 80, ACK));
    sent.ext = vec![Ext::DestOpts { len8: 0 }];
    cases.push(case(
        "icmpv6 error from a NAT backend quoting extension headers is dropped",
        srv,
        from_backend6(ipv6(
            "2001:db8:b::21",
            CLIENT6,
            icmp(k, c, rest, quote6(&sent, 56)),
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropIcmpHeader, 1)],
    ));
    cases.push(case(
        "icmpv6 error from a NAT backend with a truncated quote is dropped",
        srv,
        from_backend6(ipv6(
            "2001:db8:b::21",
            CLIENT6,
            icmp(k, c, rest, quote6(&sent, 30)),
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropIcmpHeader, 1)],
    ));
    cases.push(case(
        "icmpv6 error from another host quoting extension headers is passed",
        srv,
        Frame6::new(
            [2, 0, 0, 0, 6, 0x99],
            LB_SRV_MAC,
            ipv6(
                "2001:db8:b::99",
                CLIENT6,
                icmp(k, c, rest, quote6(&sent, 56)),
            ),
        )
        .bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    let sent = ipv6(DSR_VIP6, CLIENT6, tcp(80, 40000, ACK));
    cases.push(case(
        "icmpv6 error to a VIP with a truncated quote",
        cli,
        from_client6(ipv6(ROUTER6, DSR_VIP6, icmp(k, c, rest, quote6(&sent, 30)))).bytes(),
        XDP_DROP,
        None,
        &[(DropIcmpHeader, 1)],
    ));
    let mut b = from_client6(ipv6(CLIENT6, DSR_VIP6, icmp(128, 0, [0; 4], vec![]))).bytes()
        [..14 + 40 + 4]
        .to_vec();
    b[18..20].copy_from_slice(&4u16.to_be_bytes());
    cases.push(case(
        "truncated icmpv6 header to a VIP",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropIcmpHeader, 1)],
    ));

    // ---- extension headers ----
    let with_ext = |dst: &str, sport: u16, dport: u16, ext: Vec<Ext>| {
        let mut ip = ipv6(CLIENT6, dst, tcp(sport, dport, SYN));
        ip.ext = ext;
        ip
    };
    for (name, ext) in [
        (
            "hop-by-hop options to a DSR service: skipped, forwarded as they are",
            vec![Ext::HopByHop { len8: 0 }],
        ),
        (
            "destination options (24 bytes) to a DSR service: skipped, forwarded",
            vec![Ext::DestOpts { len8: 2 }],
        ),
        (
            "a routing header with no segments left: skipped, forwarded",
            vec![Ext::Routing {
                segments_left: 0,
                len8: 2,
            }],
        ),
        (
            "an atomic fragment (offset 0, no more fragments): a whole packet, forwarded",
            vec![Ext::Fragment {
                offset: 0,
                more: false,
            }],
        ),
        (
            "four extension headers (the most parsed): forwarded",
            vec![
                Ext::HopByHop { len8: 0 },
                Ext::DestOpts { len8: 0 },
                Ext::Routing {
                    segments_left: 0,
                    len8: 0,
                },
                Ext::DestOpts { len8: 1 },
            ],
        ),
    ] {
        let sport = 42000 + cases.len() as u16;
        let ip = with_ext(DSR_VIP6, sport, 80, ext);
        let mac = f.backend(f.pick6("dsr_web6", CLIENT6, sport, 80)).mac;
        cases.push(case(
            name,
            cli,
            from_client6(ip.clone()).bytes(),
            XDP_TX,
            Some(Frame6::new(LB_CLI_MAC, mac, ip).bytes()),
            &[(Tx, 1), (FlowSyn, 1), (Ipv6ExtSkipped, 1)],
        ));
    }
    let ip = with_ext(
        NAT_VIP6,
        42100,
        8080,
        vec![Ext::HopByHop { len8: 0 }, Ext::DestOpts { len8: 1 }],
    );
    let ext_rip = f.addr6_of(f.pick6("nat_web6", CLIENT6, 42100, 8080));
    cases.push(case(
        "extension headers to a NAT service: translated behind them, checksum right",
        cli,
        from_client6(ip.clone()).bytes(),
        XDP_REDIRECT,
        Some(Frame6::new(LB_SRV_MAC, nat_mac6(&ext_rip), nat_dst6(&ip, &ext_rip, 80)).bytes()),
        &[(Redirect, 1), (FlowSyn, 1), (Ipv6ExtSkipped, 1)],
    ));
    cases.push(case(
        "a routing header with segments left: the VIP is not the final destination",
        cli,
        from_client6(with_ext(
            DSR_VIP6,
            42200,
            80,
            vec![Ext::Routing {
                segments_left: 1,
                len8: 2,
            }],
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropIpv6Routing, 1)],
    ));
    cases.push(case(
        "first fragment (offset 0, more fragments) to a VIP",
        cli,
        from_client6(with_ext(
            DSR_VIP6,
            42201,
            80,
            vec![Ext::Fragment {
                offset: 0,
                more: true,
            }],
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropFragment, 1)],
    ));
    let mut later = with_ext(
        DSR_VIP6,
        42202,
        80,
        vec![Ext::Fragment {
            offset: 185,
            more: false,
        }],
    );
    later.l4 = L4::Raw {
        proto: TCP,
        payload: vec![0xab; 24],
    };
    cases.push(case(
        "later fragment to a VIP",
        cli,
        from_client6(later.clone()).bytes(),
        XDP_DROP,
        None,
        &[(DropFragment, 1)],
    ));
    later.dst = addr6("2001:db8:c::1");
    cases.push(case(
        "fragment to another address is passed",
        cli,
        from_client6(later).bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "hop-by-hop options after another extension header, to a VIP",
        cli,
        from_client6(with_ext(
            DSR_VIP6,
            42205,
            80,
            vec![Ext::DestOpts { len8: 0 }, Ext::HopByHop { len8: 0 }],
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropIpv6ExtHeader, 1)],
    ));
    cases.push(case(
        "five extension headers (one more than parsed) to a VIP",
        cli,
        from_client6(with_ext(
            DSR_VIP6,
            42203,
            80,
            vec![
                Ext::HopByHop { len8: 0 },
                Ext::DestOpts { len8: 0 },
                Ext::DestOpts { len8: 0 },
                Ext::DestOpts { len8: 0 },
                Ext::DestOpts { len8: 0 },
            ],
        ))
        .bytes(),
        XDP_DROP,
        None,
        &[(DropIpv6ExtHeader, 1)],
    ));
    let long = from_client6(with_ext(
        DSR_VIP6,
        42204,
        80,
        vec![Ext::DestOpts { len8: 3 }],
    ))
    .bytes();
    cases.push(case(
        "an extension header cut short by the frame",
        cli,
        long[..14 + 40 + 4].to_vec(),
        XDP_DROP,
        None,
        // The payload length says more than the frame holds.
        &[(DropIpTotalLen, 1)],
    ));
    let mut b = long.clone();
    // Claim a 2 KiB header inside a 32-byte one: past the payload.
    b[14 + 40 + 1] = 255;
    cases.push(case(
        "an extension header longer than the payload",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropIpv6ExtHeader, 1)],
    ));
    let mut b = long[..14 + 40 + 4].to_vec();
    b[18..20].copy_from_slice(&4u16.to_be_bytes());
    cases.push(case(
        "an extension header truncated by the payload length",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropIpv6ExtHeader, 1)],
    ));
    let mut other = with_ext(
        "2001:db8:c::1",
        42205,
        22,
        vec![Ext::Routing {
            segments_left: 2,
            len8: 2,
        }],
    );
    cases.push(case(
        "extension headers to another address are passed untouched",
        cli,
        from_client6(other.clone()).bytes(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    other.dst = addr6(DSR_VIP6);
    other.ext = vec![];
    other.l4 = L4::Raw {
        proto: 50,
        payload: vec![0; 16],
    };
    cases.push(case(
        "esp to a VIP is passed",
        cli,
        from_client6(other.clone()).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));
    other.l4 = L4::Raw {
        proto: frame::NEXT_NONE,
        payload: vec![],
    };
    cases.push(case(
        "no next header to a VIP is passed",
        cli,
        from_client6(other).bytes(),
        XDP_PASS,
        None,
        &[(PassVipOther, 1)],
    ));

    // ---- malformed and unusual frames ----
    let good = from_client6(ipv6(CLIENT6, DSR_VIP6, tcp(41000, 80, SYN)));
    let good_be = f.backend(f.pick6("dsr_web6", CLIENT6, 41000, 80));
    let edit = |f: &Frame6, at: usize, bytes: &[u8]| {
        let mut b = f.bytes();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    cases.push(case(
        "ethernet header only, ipv6 ethertype",
        cli,
        good.bytes()[..14].to_vec(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "truncated ipv6 header: cannot tell whom it is for",
        cli,
        good.bytes()[..14 + 39].to_vec(),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    cases.push(case(
        "wrong ip version in an ipv6 ethertype, to a VIP",
        cli,
        edit(&good, 14, &[0x46]),
        XDP_DROP,
        None,
        &[(DropIpVersion, 1)],
    ));
    cases.push(case(
        "payload length past the frame",
        cli,
        edit(&good, 18, &1000u16.to_be_bytes()),
        XDP_DROP,
        None,
        &[(DropIpTotalLen, 1)],
    ));
    let mut bad = good.clone();
    bad.ip.dst = addr6("2001:db8:c::1");
    cases.push(case(
        "malformed (payload past the frame) to another address is passed untouched",
        cli,
        edit(&bad, 18, &1000u16.to_be_bytes()),
        XDP_PASS,
        None,
        &[(PassNotVip, 1)],
    ));
    for hops in [0, 1] {
        cases.push(case(
            "hop limit 0 or 1 to a service",
            cli,
            from_client6(with_hops(good.ip.clone(), hops)).bytes(),
            XDP_DROP,
            None,
            &[(DropTtl, 1)],
        ));
    }
    let mut tagged = good.clone();
    tagged.vlans = vec![100];
    cases.push(case(
        "one vlan tag, DSR on the same interface: forwarded with its tag",
        cli,
        tagged.bytes(),
        XDP_TX,
        Some(tagged.clone().with_macs(LB_CLI_MAC, good_be.mac).bytes()),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let mut tagged_nat = from_client6(ipv6(CLIENT6, NAT_VIP6, tcp(41003, 8080, SYN)));
    tagged_nat.vlans = vec![100];
    cases.push(case(
        "one vlan tag to a NAT service: unsupported",
        cli,
        tagged_nat.bytes(),
        XDP_DROP,
        None,
        &[(DropVlanUnsupported, 1), (FlowSyn, 1)],
    ));
    tagged.vlans = vec![100, 200];
    cases.push(case(
        "two vlan tags are passed",
        cli,
        tagged.bytes(),
        XDP_PASS,
        None,
        &[(PassVlanNested, 1)],
    ));
    let mut padded = good.bytes();
    padded.resize(100, 0);
    let mut padded_out = good.clone().with_macs(LB_CLI_MAC, good_be.mac).bytes();
    padded_out.resize(100, 0);
    cases.push(case(
        "ethernet padding after the ip packet is fine",
        cli,
        padded,
        XDP_TX,
        Some(padded_out),
        &[(Tx, 1), (FlowSyn, 1)],
    ));
    let mut b = good.bytes()[..14 + 40 + 10].to_vec();
    b[18..20].copy_from_slice(&10u16.to_be_bytes());
    cases.push(case(
        "truncated tcp header",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    cases.push(case(
        "tcp data offset < 5",
        cli,
        edit(&good, 14 + 40 + 12, &[0x40]),
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    cases.push(case(
        "tcp data offset past the packet",
        cli,
        edit(&good, 14 + 40 + 12, &[0xf0]),
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    let uq = from_client6(ipv6(CLIENT6, NAT_VIP6, udp(6000, 53, b"query")));
    let mut b = uq.bytes()[..14 + 40 + 4].to_vec();
    b[18..20].copy_from_slice(&4u16.to_be_bytes());
    cases.push(case(
        "truncated udp header",
        cli,
        b,
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    cases.push(case(
        "udp length past the packet",
        cli,
        edit(&uq, 14 + 40 + 4, &100u16.to_be_bytes()),
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));
    cases.push(case(
        "udp length < 8",
        cli,
        edit(&uq, 14 + 40 + 4, &4u16.to_be_bytes()),
        XDP_DROP,
        None,
        &[(DropL4Header, 1)],
    ));

    assert!(cases.len() >= 75, "{} cases", cases.len());
    for c in &cases {
        f.check(c);
    }

    // The RST created no entry; the DSR flow's handshake did, in the IPv6 table (and
    // none in the IPv4 one).
    let key = |src: &str, dst: &str, sport: u16, dport: u16, proto| {
        FlowKey6::new(w6(src), w6(dst), sport.to_be(), dport.to_be(), proto)
    };
    assert!(
        f.dp.flow6(&key(CLIENT6, DSR_VIP6, 45000, 80, TCP))
            .unwrap()
            .is_none(),
        "RST must not create an entry"
    );
    assert!(
        f.dp.flow6(&key(CLIENT6, DSR_VIP6, 45001, 80, TCP))
            .unwrap()
            .is_none(),
        "a client's SYN|ACK must not create an entry"
    );
    assert!(
        f.dp.flow6(&key(CLIENT6, DSR_VIP6, 40000, 80, TCP))
            .unwrap()
            .is_some()
    );
    assert!(f.dp.flows().unwrap().is_empty(), "no IPv4 entry");
}

/// 100,000 random and mutated IPv6 frames (with random extension headers, ICMPv6 of
/// every kind, VLAN tags, hop limits): nothing that is not for a VIP (or a NAT reply) is
/// rewritten, every forwarded frame keeps the checksum validity it came with, no frame
/// aborts, and the outcome counters add up to the frames sent.
#[test]
fn randomized_frames_ipv6() {
    const FRAMES: u64 = 100_000;
    let f = Fixture::new();
    let mut rng = seeded_rng(0x0006_5eed);
    let vips: Vec<String> = f
        .services6
        .values()
        .map(|s| text6(s.key.vip))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let nat_backends = [
        "2001:db8:b::11",
        "2001:db8:b::12",
        "2001:db8:b::21",
        "2001:db8:b::13",
        "2001:db8:c::50",
    ];
    let clients = [CLIENT6, "2001:db8:c::100", "2001:db8:cafe::9"];
    let others = [
        "2001:db8:c::1",
        "2001:db8:b::1",
        "2001:db8:100::11",
        "ff02::1",
        "fe80::1",
    ];
    let dsts: Vec<String> = vips
        .iter()
        .cloned()
        .chain(others.iter().map(|s| s.to_string()))
        .chain(nat_backends.iter().map(|s| s.to_string()))
        .collect();
    let srcs: Vec<&str> = clients.iter().chain(&nat_backends).copied().collect();
    let ports = [80u16, 8080, 53, 443, 81, 22, 40000, 5354];
    let start = outcome_sum(&f.counters());
    let mut forwarded = 0u64;
    let services: Vec<(String, u16, u8)> = f
        .services6
        .values()
        .map(|s| (text6(s.key.vip), u16::from_be(s.key.port), s.key.proto))
        .collect();
    // NAT flows seen forwarded: (backend, backend port, client, client port, proto).
    let mut nat_flows: Vec<(String, u16, String, u16, u8)> = Vec::new();
    let ext_kinds = |rng: &mut support::Rng| -> Ext {
        match rng.below(6) {
            0 => Ext::HopByHop {
                len8: rng.below(3) as u8,
            },
            1 => Ext::DestOpts {
                len8: rng.below(3) as u8,
            },
            2 => Ext::Routing {
                segments_left: *rng.pick(&[0u8, 0, 1]),
                len8: 2,
            },
            3 => Ext::Fragment {
                offset: *rng.pick(&[0u16, 0, 185]),
                more: rng.chance(30),
            },
            _ => Ext::Raw {
                code: *rng.pick(&[0u8, 60, 43, 44]),
                rest: rng.bytes(7),
            },
        }
    };

    for i in 0..FRAMES {
        let scenario = rng.below(100);
        let (mut src, mut dst) = (rng.pick(&srcs).to_string(), rng.pick(&dsts).clone());
        let mut proto = *rng.pick(&[TCP, TCP, UDP, UDP, frame::ICMPV6, 47]);
        let (mut sport, mut dport) = (*rng.pick(&ports), *rng.pick(&ports));
        if scenario < 40 {
            let (vip, port, p) = rng.pick(&services).clone();
            (src, dst, dport, proto) = (rng.pick(&clients).to_string(), vip, port, p);
            sport = 30000 + rng.below(64) as u16;
        } else if scenario < 55 && !nat_flows.is_empty() {
            let (rip, rport, client, cport, p) = rng.pick(&nat_flows).clone();
            (src, sport, dst, dport, proto) = (rip, rport, client, cport, p);
        }
        let n = rng.below(48) as usize;
        let payload = rng.bytes(n);
        let l4 = match proto {
            TCP => L4::Tcp {
                sport,
                dport,
                flags: *rng.pick(&[SYN, ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK]),
                seq: rng.next_u64() as u32,
                payload,
            },
            UDP => L4::Udp {
                sport,
                dport,
                payload,
                zero_checksum: rng.chance(10),
            },
            frame::ICMPV6 => {
                // Errors quote a packet the other way round: often one of a real flow.
                let quoted = if rng.chance(50) && !nat_flows.is_empty() {
                    let (rip, rport, client, cport, p) = rng.pick(&nat_flows).clone();
                    let l4 = if p == TCP {
                        tcp(cport, rport, ACK)
                    } else {
                        udp(cport, rport, b"q")
                    };
                    ipv6(&client, &rip, l4)
                } else {
                    let (vip, port, p) = rng.pick(&services).clone();
                    let l4 = if p == TCP {
                        tcp(port, sport, ACK)
                    } else {
                        udp(port, sport, b"q")
                    };
                    ipv6(&vip, &src, l4)
                };
                let kind = *rng.pick(&[1u8, 2, 2, 3, 4, 128, 129, 133, 134, 135, 136, 137, 143]);
                L4::Icmp {
                    kind,
                    code: rng.below(5) as u8,
                    rest: [0, 0, 5, 0],
                    payload: quote6(&quoted, 40 + 8 * rng.below(2) as usize),
                }
            }
            _ => L4::Raw { proto, payload },
        };
        let mut ip = ipv6(&src, &dst, l4);
        ip.hop_limit = *rng.pick(&[64u8, 64, 2, 1, 0, 255]);
        if rng.chance(15) {
            ip.ext = (0..1 + rng.below(5)).map(|_| ext_kinds(&mut rng)).collect();
        }
        let mut fr = Frame6::new(ROUTER_MAC, LB_CLI_MAC, ip);
        if rng.chance(5) {
            fr.vlans = (0..1 + rng.below(2))
                .map(|_| rng.below(4096) as u16)
                .collect();
        }
        let mut bytes = fr.bytes();
        if rng.chance(50) {
            match rng.below(3) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(bytes.len() as u64) as usize;
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
                1 => bytes.truncate(14 + rng.below(bytes.len() as u64 - 13) as usize),
                _ => {
                    let n = 1 + rng.below(32) as usize;
                    bytes.extend(rng.bytes(n));
                }
            }
        }
        let ingress = if rng.chance(50) { f.cli } else { f.srv };

        let (r, out) =
            f.dp.test_run(&bytes, ingress)
                .unwrap_or_else(|e| panic!("frame {i}: {e:#}"));
        let action = r.return_value;
        assert!(
            matches!(action, XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT),
            "frame {i}: action {action}"
        );
        let dst = frame::ip6_dst(&bytes).map(|a| a.to_string());
        let src = frame::ip6_src(&bytes).map(|a| a.to_string());
        let for_vip = dst.as_deref().is_some_and(|d| vips.iter().any(|v| v == d));
        let from_nat_backend = src.as_deref().is_some_and(|s| nat_backends.contains(&s));
        if !for_vip && !from_nat_backend && action != XDP_DROP {
            assert_eq!(
                hex(&out),
                hex(&bytes),
                "frame {i}: not for a VIP, yet rewritten"
            );
        }
        if action == XDP_PASS && out != bytes {
            // Only NAT hands a translated frame to the kernel, when the next hop's MAC is
            // unknown: the service 2001:db8:100::70, or a reply to a client without one.
            assert!(
                dst.as_deref() == Some("2001:db8:100::70") || from_nat_backend,
                "frame {i}: passed frame rewritten\n{}",
                hex(&bytes)
            );
        }
        if action == XDP_TX || action == XDP_REDIRECT {
            forwarded += 1;
            let before = frame::checksums_ok6(&bytes).unwrap_or_else(|| {
                panic!("frame {i}: forwarded an unparsable frame\n{}", hex(&bytes))
            });
            let after = frame::checksums_ok6(&out)
                .unwrap_or_else(|| panic!("frame {i}: forwarded frame unparsable\n{}", hex(&out)));
            assert_eq!(
                after,
                before,
                "frame {i}: checksum validity changed (in {before:?}, out {after:?})\nin:\n{}\nout:\n{}",
                hex(&bytes),
                hex(&out)
            );
            // Remember NAT flows (the output goes to a backend of a NAT service).
            let out_dst = frame::ip6_dst(&out)
                .map(|a| a.to_string())
                .unwrap_or_default();
            let l3 = frame::l3_offset6(&out).unwrap();
            if let Some((p, off)) = frame::l4_of6(&out[l3..])
                && nat_backends.contains(&out_dst.as_str())
                && (p == TCP || p == UDP)
                && out.len() >= l3 + off + 4
                && for_vip
            {
                let at = l3 + off;
                let port = |at: usize| u16::from_be_bytes([out[at], out[at + 1]]);
                let client = frame::ip6_src(&out).unwrap().to_string();
                nat_flows.push((out_dst, port(at + 2), client, port(at), p));
            }
        }
    }
    assert_eq!(
        outcome_sum(&f.counters()) - start,
        FRAMES,
        "every frame bumps exactly one outcome counter"
    );
    println!("{forwarded} of {FRAMES} frames forwarded");
    assert!(
        forwarded > FRAMES / 10,
        "the generator must exercise the forwarding paths"
    );
    assert!(
        !nat_flows.is_empty(),
        "the generator must exercise NAT replies"
    );
}

/// IPv6 flows keep their backend through table changes, re-pick when it goes, and the
/// flow cache serves settled flows only (NAT replies included).
#[test]
fn ipv6_flows_keep_their_backend_and_use_the_flow_cache() {
    let mut f = Fixture::new();
    let (cli, srv) = (f.cli, f.srv);
    let send = |f: &Fixture, sport: u16, flags: u8| {
        let (action, out, moved) = run(
            f,
            &from_client6(ipv6(CLIENT6, DSR_VIP6, tcp(sport, 80, flags))).bytes(),
            cli,
        );
        assert_eq!(action, XDP_TX, "port {sport}: {moved:?}");
        (dmac(&out), moved)
    };
    let web = f.services6["dsr_web6"].backends.clone();
    let a = f.pick6("dsr_web6", CLIENT6, 50000, 80);
    assert_eq!(
        send(&f, 50000, SYN),
        (f.backend(a).mac, vec![("tx", 1), ("flow_syn", 1)])
    );
    // The whole table moves to b: the handshake completes on a, and stays there.
    let b = *web.iter().find(|&&i| i != a).unwrap();
    f.set_table(20, &[b]);
    assert_eq!(
        send(&f, 50000, ACK),
        (f.backend(a).mac, vec![("tx", 1), ("flow_new", 1)])
    );
    assert_eq!(
        send(&f, 50000, ACK | PSH),
        (f.backend(a).mac, vec![("tx", 1), ("flow_cache_hit", 1)])
    );
    assert_eq!(send(&f, 50001, SYN).0, f.backend(b).mac, "new flows follow");
    // FIN reaches the connection table; a closing flow is not cached.
    assert_eq!(
        send(&f, 50000, FIN | ACK),
        (f.backend(a).mac, vec![("tx", 1), ("flow_hit", 1)])
    );
    assert_eq!(
        send(&f, 50000, ACK),
        (f.backend(a).mac, vec![("tx", 1), ("flow_hit", 1)])
    );
    let key = FlowKey6::new(
        w6(CLIENT6),
        w6(DSR_VIP6),
        50000u16.to_be(),
        80u16.to_be(),
        TCP,
    );
    assert_ne!(
        f.dp.flow6(&key).unwrap().unwrap().state & lb_common::FLOW_FIN,
        0
    );
    // Maintenance (re-pick): the flow chooses again from the current table.
    let mut rec = f.backend(a);
    rec.flags |= lb_common::BACKEND_F_REPICK;
    f.dp.set_backend(a, rec).unwrap();
    assert_eq!(
        send(&f, 50000, ACK),
        (f.backend(b).mac, vec![("tx", 1), ("flow_repick", 1)])
    );

    // NAT66: the reply of a settled flow is cached, and keeps being translated from the
    // cache (taken out of NAT_BACKENDS6 to tell); a FIN never uses the cache.
    let nat = |p| from_client6(ipv6(CLIENT6, NAT_VIP6, tcp(53000, 8080, p))).bytes();
    let rip = f.addr6_of(f.pick6("nat_web6", CLIENT6, 53000, 8080));
    run(&f, &nat(SYN), cli);
    let reply = |flags| from_backend6(ipv6(&rip, CLIENT6, tcp(80, 53000, flags))).bytes();
    assert_eq!(
        run(&f, &reply(SYN | ACK), srv).2,
        vec![("redirect", 1), ("nat_reply", 1)]
    );
    run(&f, &reply(ACK), srv);
    let nat_key = NatBackendKey6 {
        addr: w6(&rip),
        port: 80u16.to_be(),
        proto: TCP,
        _pad: 0,
    };
    let saved = f.dp.nat_backend6(&nat_key).unwrap();
    f.dp.set_nat_backend6(nat_key, None).unwrap();
    let (action, out, moved) = run(&f, &reply(ACK | PSH), srv);
    assert_eq!(
        (action, moved),
        (XDP_REDIRECT, vec![("redirect", 1), ("nat_reply", 1)])
    );
    assert_eq!(
        frame::ip6_src(&out).unwrap(),
        addr6(NAT_VIP6),
        "translated from the cache"
    );
    assert_eq!(frame::checksums_ok6(&out), Some((true, true)));
    assert_eq!(run(&f, &reply(FIN | ACK), srv).2, vec![("pass_not_vip", 1)]);
    f.dp.set_nat_backend6(nat_key, saved).unwrap();
    // The NAT forward of the settled flow is cached too.
    run(&f, &nat(ACK), cli);
    let (action, out, moved) = run(&f, &nat(ACK | PSH), cli);
    assert_eq!(
        (action, moved),
        (XDP_REDIRECT, vec![("redirect", 1), ("flow_cache_hit", 1)])
    );
    assert_eq!(frame::ip6_dst(&out).unwrap(), addr6(&rip));
    assert_eq!(frame::checksums_ok6(&out), Some((true, true)));
}
