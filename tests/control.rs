//! Control-plane integration tests (see tests/support/daemon.rs).
//!
//! Each test runs the real `lb run` on a veth in a private network namespace, changes
//! services and backends over the control socket and the CLI, and reads the datapath's
//! maps back through [`Inspector`] (by the attached program's id) to check what the
//! datapath will see: `SERVICES`, `VIPS`, `BACKENDS` and the Maglev tables.
//!
//! Topology (one namespace): `v0` (the balancer's interface, 10.0.0.1/24, MAC
//! 02:00:00:00:00:01) paired with `v1`; DSR backends 10.0.0.11..=10.0.0.30 have static
//! neighbour entries on `v0` (MAC 02:00:00:00:00:<last octet>), so they get table slots
//! without any traffic. Health checks are off (`"kind": "none"`), so every state is
//! decided by the test alone.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use lb_common::{
    BACKEND_F_LIVE, BACKEND_F_REPICK, Backend, Counter, NO_BACKEND, SERVICE_F_HASH_SRC,
    SERVICE_F_NAT, Service,
};
use lb_userspace::{
    config::ServiceKey,
    dataplane::{Dataplane, Limits, inspect::Inspector},
    model::runtime::datapath_key,
};
use serde_json::{Value, json};
use support::daemon::{Daemon, Netns, Scratch, run_ok, topology, unique};

const VIP: &str = "10.100.0.10";
const WEB: &str = "10.100.0.10:80/tcp";
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Backend indexes scanned when reading `BACKENDS` whole (indexes are handed out lowest
/// free first, so the few backends of a test sit far below this).
const SCAN: u32 = 256;
const LIST: &str = r#"{"op":"list"}"#;

/// The benchmark object: its `floor` program is an XDP program that is not lb's.
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench"));

// ---- building configurations and requests -----------------------------------------

/// A DSR backend 10.0.0.<last> (weight 100 unless given).
fn be(last: u8) -> Value {
    json!({"address": format!("10.0.0.{last}")})
}

fn be_w(last: u8, weight: u16) -> Value {
    json!({"address": format!("10.0.0.{last}"), "weight": weight})
}

/// The DSR service 10.100.0.10:80/tcp with a 251-slot table, no health checks.
fn web(backends: &[Value]) -> Value {
    service(80, 251, backends)
}

fn service(port: u16, table_size: u32, backends: &[Value]) -> Value {
    json!({"vip": VIP, "port": port, "table_size": table_size,
           "health_check": {"kind": "none"}, "backends": backends})
}

/// A whole configuration file (small connection table: many daemons run at once).
fn config(services: &[Value]) -> String {
    json!({"conntrack": {"max_entries": 1024}, "services": services}).to_string()
}

fn backend_set(backend: &str, field: &str, value: Value) -> String {
    json!({"op": "backend_set", "service": WEB, "backend": backend, field: value}).to_string()
}

fn key(s: &str) -> lb_common::ServiceKey {
    datapath_key(&s.parse::<ServiceKey>().expect("service name"))
        .v4()
        .expect("an IPv4 service")
}

/// An address as the datapath stores it (network order).
fn ne(a: &str) -> u32 {
    u32::from_ne_bytes(a.parse::<Ipv4Addr>().expect("address").octets())
}

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().expect("backend address")
}

/// The address and port of a `BACKENDS` record.
fn record_addr(b: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(b.addr.to_ne_bytes()), u16::from_be(b.port))
}

// ---- the lab ------------------------------------------------------------------------

/// A namespace with the topology above and `lb run` on `v0`.
struct Lab {
    daemon: Daemon,
    config: PathBuf,
    _scratch: Scratch,
    ns: Netns,
}

impl Lab {
    fn new(config_text: &str) -> Self {
        support::require_root();
        let ns = topology();
        let scratch = Scratch::new("control");
        let config = scratch.write("lb.json", config_text);
        let daemon = Daemon::start(&ns, &["v0"], &config, &[]);
        Lab {
            daemon,
            config,
            _scratch: scratch,
            ns,
        }
    }

    fn inspector(&self) -> Inspector {
        self.daemon.inspector("v0")
    }

    fn list(&self) -> Value {
        self.daemon.request_ok(LIST)
    }
}

/// Everything the datapath holds for the services (what a packet can see).
#[derive(Debug, PartialEq)]
struct View {
    services: Vec<(lb_common::ServiceKey, Service)>,
    vips: Vec<(u32, u32)>,
    nat_backends: Vec<(lb_common::NatBackendKey, lb_common::NatBackend)>,
    /// Records ever written, by index.
    backends: BTreeMap<u32, Backend>,
    /// Each service's table (its first `table_size` slots), by service id.
    tables: BTreeMap<u32, Vec<u32>>,
}

fn view(insp: &Inspector) -> View {
    let services = insp.services().expect("reading SERVICES");
    let mut tables = BTreeMap::new();
    for (_, s) in &services {
        let t = insp
            .table(s, s.table_size)
            .expect("reading TABLES")
            .unwrap_or_else(|| panic!("service {} has a record but no table", s.id));
        tables.insert(s.id, t);
    }
    let backends = (0..SCAN)
        .map(|i| (i, insp.backend(i).expect("reading BACKENDS")))
        .filter(|(_, b)| *b != Backend::default())
        .collect();
    View {
        services,
        vips: insp.vips().expect("reading VIPS"),
        nat_backends: insp.nat_backends().expect("reading NAT_BACKENDS"),
        backends,
        tables,
    }
}

impl View {
    fn service(&self, key: &lb_common::ServiceKey) -> Service {
        self.services
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("no service {key:?} in SERVICES: {self:#?}"))
    }

    /// The live records of service `id`, by backend address: (index, record).
    fn live(&self, id: u32) -> BTreeMap<SocketAddrV4, (u32, Backend)> {
        let mut out = BTreeMap::new();
        for (i, b) in &self.backends {
            if b.service == id && b.flags & BACKEND_F_LIVE != 0 {
                let prev = out.insert(record_addr(b), (*i, *b));
                assert!(prev.is_none(), "two live records for {}", record_addr(b));
            }
        }
        out
    }

    /// Index of the live record of `backend` in service `id`.
    fn index(&self, id: u32, backend: &str) -> u32 {
        self.live(id)
            .get(&addr(backend))
            .unwrap_or_else(|| panic!("no live record of {backend}: {:#?}", self.live(id)))
            .0
    }

    /// Slots per backend index in service `id`'s table (`NO_BACKEND` counted too).
    fn slots(&self, id: u32) -> BTreeMap<u32, usize> {
        let mut out = BTreeMap::new();
        for s in &self.tables[&id] {
            *out.entry(*s).or_default() += 1;
        }
        out
    }

    /// The backend addresses that own slots of service `id`'s table; checks on the way
    /// that every slot names a live record of this service not flagged re-pick (what
    /// the datapath requires of a table).
    fn rotation(&self, id: u32) -> BTreeSet<SocketAddrV4> {
        let mut out = BTreeSet::new();
        for index in self.slots(id).keys().filter(|i| **i != NO_BACKEND) {
            let b = self
                .backends
                .get(index)
                .unwrap_or_else(|| panic!("a slot names index {index}, which has no record"));
            assert_eq!(
                b.flags & (BACKEND_F_LIVE | BACKEND_F_REPICK),
                BACKEND_F_LIVE,
                "a slot names {b:?}, which is not usable"
            );
            assert_eq!(b.service, id, "a slot names a backend of another service");
            out.insert(record_addr(b));
        }
        out
    }
}

fn set(addrs: &[&str]) -> BTreeSet<SocketAddrV4> {
    addrs.iter().map(|a| addr(a)).collect()
}

/// Checks each backend's share of `table` against `weights` (address -> weight), within
/// `tolerance` (a fraction of the table).
fn assert_shares(v: &View, id: u32, weights: &[(&str, u32)], tolerance: f64) {
    let slots = v.slots(id);
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    let size = v.tables[&id].len() as f64;
    assert_eq!(slots.get(&NO_BACKEND), None, "every slot has a backend");
    for (a, w) in weights {
        let got = slots[&v.index(id, a)] as f64 / size;
        let want = f64::from(*w) / f64::from(total);
        assert!(
            (got - want).abs() <= tolerance,
            "{a} (weight {w}) has {got:.3} of the table, expected {want:.3}: {slots:?}"
        );
    }
}

/// The backends of `service` in a list result, by address.
fn listed(list: &Value, service: &str) -> BTreeMap<String, Value> {
    let svc = list["services"]
        .as_array()
        .expect("services array")
        .iter()
        .find(|s| s["service"] == service)
        .unwrap_or_else(|| panic!("{service} not listed: {list}"));
    svc["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().expect("backend").to_string(),
                b.clone(),
            )
        })
        .collect()
}

/// Sets a flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Checks that the backends owning table slots of `service` in the maps are exactly
/// `want`, and that the daemon's list says the same (`in_rotation`).
fn assert_rotation(lab: &Lab, v: &View, service: &str, want: &[&str]) {
    let id = v.service(&key(service)).id;
    assert_eq!(v.rotation(id), set(want), "table of {service}");
    let listed: BTreeSet<SocketAddrV4> = listed(&lab.list(), service)
        .iter()
        .filter(|(_, b)| b["in_rotation"] == true)
        .map(|(a, _)| addr(a))
        .collect();
    assert_eq!(listed, set(want), "in_rotation of {service} in the list");
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---- services and backends over the socket ------------------------------------------

#[test]
fn backends_change_over_the_socket_and_the_maps_follow() {
    let lab = Lab::new(&config(&[]));
    let d = &lab.daemon;
    let insp = lab.inspector();
    assert_eq!(lab.list(), json!({"services": []}));
    let empty = view(&insp);
    assert!(empty.services.is_empty() && empty.vips.is_empty() && empty.backends.is_empty());

    // Add a service with two backends.
    d.request_ok(&json!({"op": "service_add", "service": web(&[be(11), be(12)])}).to_string());
    let v = view(&insp);
    let svc = v.service(&key(WEB));
    assert_eq!((svc.flags, svc.table_size), (0, 251), "{svc:?}");
    assert_eq!(v.vips, vec![(ne(VIP), 1)]);
    let ifindex = lab.ns.ifindex("v0");
    let live = v.live(svc.id);
    assert_eq!(
        live.keys().copied().collect::<BTreeSet<_>>(),
        set(&["10.0.0.11:80", "10.0.0.12:80"])
    );
    for (a, (_, b)) in &live {
        assert_eq!(b.flags, BACKEND_F_LIVE, "{a}");
        assert_eq!(b.mac, [2, 0, 0, 0, 0, a.ip().octets()[3]], "{a}: its MAC");
        assert_eq!(b.src_mac, LB_MAC, "{a}: v0's MAC");
        assert_eq!(b.ifindex, ifindex, "{a}: reached through v0");
    }
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80", "10.0.0.12:80"]);
    let counts: Vec<usize> = v.slots(svc.id).values().copied().collect();
    assert!(
        counts.len() == 2 && counts.iter().all(|c| (125..=126).contains(c)),
        "equal weights split 251 slots evenly: {counts:?}"
    );

    // A third backend.
    d.request_ok(&json!({"op": "backend_add", "service": WEB, "backend": be(13)}).to_string());
    let v = view(&insp);
    let now = v.service(&key(WEB));
    assert_eq!(
        (now.id, now.flags, now.table_size),
        (svc.id, svc.flags, svc.table_size),
        "the service record stays"
    );
    assert_ne!(
        now.table_gen, svc.table_gen,
        "the new table went into the other generation, and the record flipped to it"
    );
    assert_rotation(
        &lab,
        &v,
        WEB,
        &["10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:80"],
    );

    // Weights change slot shares.
    d.request_ok(&backend_set("10.0.0.11", "weight", json!(300)));
    let v = view(&insp);
    assert_shares(
        &v,
        svc.id,
        &[
            ("10.0.0.11:80", 300),
            ("10.0.0.12:80", 100),
            ("10.0.0.13:80", 100),
        ],
        0.03,
    );
    let b12 = v.live(svc.id)[&addr("10.0.0.12:80")];

    // Drain: the record stays as it was (its flows stay), its slots go.
    d.request_ok(&backend_set("10.0.0.12:80", "state", json!("drain")));
    let v = view(&insp);
    assert_eq!(
        v.backends[&b12.0], b12.1,
        "a drained backend's record is untouched"
    );
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80", "10.0.0.13:80"]);
    assert_eq!(v.slots(svc.id).get(&NO_BACKEND), None);

    // Maint: re-pick flag set, slots gone.
    d.request_ok(&backend_set("10.0.0.13", "state", json!("maint")));
    let v = view(&insp);
    let b13 = v.live(svc.id)[&addr("10.0.0.13:80")];
    assert_eq!(b13.1.flags, BACKEND_F_LIVE | BACKEND_F_REPICK);
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80"]);
    assert_eq!(v.slots(svc.id)[&v.index(svc.id, "10.0.0.11:80")], 251);
    let l = listed(&lab.list(), WEB);
    assert_eq!(
        (
            l["10.0.0.12:80"]["state"].as_str(),
            l["10.0.0.12:80"]["in_rotation"].as_bool(),
            l["10.0.0.13:80"]["state"].as_str(),
            l["10.0.0.13:80"]["in_rotation"].as_bool(),
            l["10.0.0.11:80"]["weight"].as_u64()
        ),
        (
            Some("drain"),
            Some(false),
            Some("maint"),
            Some(false),
            Some(300)
        )
    );

    // Back to ready: both return, the re-pick flag is cleared.
    d.request_ok(&backend_set("10.0.0.12", "state", json!("ready")));
    d.request_ok(&backend_set("10.0.0.13", "state", json!("ready")));
    let v = view(&insp);
    assert_eq!(v.backends[&b13.0].flags, BACKEND_F_LIVE);
    assert_rotation(
        &lab,
        &v,
        WEB,
        &["10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:80"],
    );

    // Weight 0 acts like drain: record untouched, no slots.
    let before = v.live(svc.id)[&addr("10.0.0.13:80")];
    d.request_ok(&backend_set("10.0.0.13", "weight", json!(0)));
    let v = view(&insp);
    assert_eq!(v.backends[&before.0], before.1);
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80", "10.0.0.12:80"]);

    // Remove a backend: its record is cleared, its slots go to the others.
    d.request_ok(
        &json!({"op": "backend_del", "service": WEB, "backend": "10.0.0.12:80"}).to_string(),
    );
    let v = view(&insp);
    assert_eq!(
        v.backends[&b12.0].flags, 0,
        "a removed backend's record is cleared"
    );
    assert!(!v.live(svc.id).contains_key(&addr("10.0.0.12:80")));
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80"]);
    assert!(!listed(&lab.list(), WEB).contains_key("10.0.0.12:80"));

    // Add another backend. The freed index is reused only after a kernel grace period
    // (a packet in flight may still name it), and then under a new epoch, so flows
    // pinned to the old backend never follow the index: either way, never the old
    // index with its old epoch.
    d.request_ok(&json!({"op": "backend_add", "service": WEB, "backend": be(14)}).to_string());
    let v = view(&insp);
    let b14 = v.live(svc.id)[&addr("10.0.0.14:80")];
    assert!(
        b14.0 != b12.0 || b14.1.epoch > b12.1.epoch,
        "a reused index keeps its old epoch: {b12:?} -> {b14:?}"
    );
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80", "10.0.0.14:80"]);

    // Remove the service: record, VIP and every backend record go; its table is
    // replaced by an empty one.
    d.request_ok(&json!({"op": "service_del", "service": WEB}).to_string());
    let v = view(&insp);
    assert_eq!(insp.service(&key(WEB)).unwrap(), None);
    assert!(v.services.is_empty() && v.vips.is_empty(), "{v:#?}");
    assert!(
        v.backends.values().all(|b| b.flags == 0),
        "every record of the service is cleared: {:#?}",
        v.backends
    );
    let table = insp
        .table(&svc, 16)
        .unwrap()
        .expect("the slot keeps a table");
    assert!(table.iter().all(|s| *s == NO_BACKEND), "{table:?}");
    assert_eq!(lab.list(), json!({"services": []}));
}

#[test]
fn nat_and_persistent_services_reach_the_datapath_with_their_flags() {
    let lab = Lab::new(&config(&[]));
    let d = &lab.daemon;
    // NAT backends need no neighbour: 10.9.0.0/24 has no route here.
    let nat = json!({"vip": "10.100.0.20", "port": 8080, "forwarding": "nat", "table_size": 251,
        "persistence": true, "health_check": {"kind": "none"},
        "backends": [{"address": "10.9.0.11", "port": 80}, {"address": "10.9.0.12", "port": 81}]});
    d.request_ok(&json!({"op": "service_add", "service": nat}).to_string());
    // A second service on another VIP port, sharing the VIP count.
    d.request_ok(
        &json!({"op": "service_add", "service": service(443, 509, &[be(11)])}).to_string(),
    );
    let v = view(&lab.inspector());
    let s = v.service(&key("10.100.0.20:8080/tcp"));
    assert_eq!(
        (s.flags, s.table_size),
        (SERVICE_F_NAT | SERVICE_F_HASH_SRC, 251)
    );
    assert_eq!(v.service(&key("10.100.0.10:443/tcp")).table_size, 509);
    assert_eq!(v.vips, {
        let mut want = vec![(ne("10.100.0.10"), 1), (ne("10.100.0.20"), 1)];
        want.sort_unstable();
        want
    });
    // Their replies are translated back to the service's VIP:port.
    let translated: Vec<_> = v
        .nat_backends
        .iter()
        .map(|(k, b)| {
            (
                (k.addr, u16::from_be(k.port), k.proto),
                (b.vip, u16::from_be(b.vport), b.service),
            )
        })
        .collect();
    assert_eq!(translated, {
        let back = (ne("10.100.0.20"), 8080, s.id);
        let mut want = vec![
            ((ne("10.9.0.11"), 80, 6), back),
            ((ne("10.9.0.12"), 81, 6), back),
        ];
        want.sort_unstable();
        want
    });
    assert_eq!(v.rotation(s.id), set(&["10.9.0.11:80", "10.9.0.12:81"]));
    for (_, b) in v.live(s.id).values() {
        assert_eq!((b.ifindex, b.mac), (0, [0; 6]), "NAT records carry no MACs");
    }
    // A DSR backend that cannot be resolved gets a live record but no slots.
    d.request_ok(
        &json!({"op": "backend_add", "service": "10.100.0.10:443/tcp", "backend": {"address": "10.0.0.99", "port": 443}})
            .to_string(),
    );
    let v = view(&lab.inspector());
    let https = v.service(&key("10.100.0.10:443/tcp"));
    assert!(v.live(https.id).contains_key(&addr("10.0.0.99:443")));
    assert_eq!(v.rotation(https.id), set(&["10.0.0.11:443"]));
    let l = listed(&lab.list(), "10.100.0.10:443/tcp");
    assert_eq!(l["10.0.0.99:443"]["in_rotation"], false);
    assert!(
        l["10.0.0.99:443"]["neighbour"]["problem"]
            .as_str()
            .is_some_and(|n| n.contains("not known")),
        "{}",
        l["10.0.0.99:443"]
    );
}

// ---- malformed requests -------------------------------------------------------------

#[test]
fn malformed_requests_are_refused_naming_the_problem_and_change_nothing() {
    let lab = Lab::new(&config(&[web(&[be(11), be(12)])]));
    let d = &lab.daemon;
    let insp = lab.inspector();
    let before = (lab.list(), view(&insp));
    assert_eq!(before.1.rotation(before.1.services[0].1.id).len(), 2);

    // A client that sent half a request and went quiet must not hold anyone up.
    let mut idle = UnixStream::connect(d.socket()).expect("connecting");
    idle.write_all(br#"{"op": "li"#).expect("writing");

    let stop = AtomicBool::new(false);
    let served = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // Stops the other client however this scope ends (a failed assertion too).
        let _stop = StopOnDrop(&stop);
        // Another client is served all along.
        let other = scope.spawn(|| {
            let mut c = d.connect();
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = c.send(LIST);
                assert_eq!(r["ok"], true, "{r}");
                served.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });

        let mut c = d.connect();
        let huge = format!(r#"{{"op":"list","pad":"{}"}}"#, "x".repeat(70_000));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (br#"{"op": "list""#.to_vec(), "invalid JSON"),
            (b"[1, 2]".to_vec(), "JSON object"),
            (br#"{"cmd": "list"}"#.to_vec(), "missing `op`"),
            (br#"{"op": "drop_all"}"#.to_vec(), "unknown operation `drop_all`"),
            (
                br#"{"op": "backend_add", "service": "10.100.0.10:80/tcp", "backend": {"address": "10.0.0.300"}}"#
                    .to_vec(),
                "backend.address",
            ),
            (
                br#"{"op": "backend_del", "service": "10.100.0.10:80/tcp", "backend": "10.0.0"}"#
                    .to_vec(),
                "is not a backend",
            ),
            (
                br#"{"op": "service_del", "service": "10.100.0.10:80"}"#.to_vec(),
                "VIP:PORT/PROTO",
            ),
            (huge.into_bytes(), "longer than 65536 bytes"),
            (b"{\"op\": \"list\xff\"}".to_vec(), "not UTF-8"),
            (
                br#"{"op": "backend_add", "service": "10.100.0.10:80/tcp", "backend": {"address": "10.0.0.11"}}"#
                    .to_vec(),
                "already in service",
            ),
            (
                br#"{"op": "service_add", "service": {"vip": "10.100.0.10", "port": 80, "table_size": 251}}"#
                    .to_vec(),
                "exists already",
            ),
            (
                br#"{"op": "backend_add", "service": "10.100.0.99:80/tcp", "backend": {"address": "10.0.0.13"}}"#
                    .to_vec(),
                "no service 10.100.0.99:80/tcp",
            ),
            (
                br#"{"op": "backend_set", "service": "10.100.0.99:80/tcp", "backend": "10.0.0.11", "weight": 5}"#
                    .to_vec(),
                "no service 10.100.0.99:80/tcp",
            ),
            (
                br#"{"op": "backend_del", "service": "10.100.0.10:80/tcp", "backend": "10.0.0.19"}"#
                    .to_vec(),
                "no backend 10.0.0.19:80",
            ),
            (
                br#"{"op": "backend_set", "service": "10.100.0.10:80/tcp", "backend": "10.0.0.11", "weight": 70000}"#
                    .to_vec(),
                "weight",
            ),
            (
                br#"{"op": "backend_add", "service": "10.100.0.10:80/tcp", "backend": {"address": "10.0.0.13", "weight": -1}}"#
                    .to_vec(),
                "backend.weight",
            ),
            (
                br#"{"op": "backend_set", "service": "10.100.0.10:80/tcp", "backend": "10.0.0.11", "wieght": 5}"#
                    .to_vec(),
                "unknown field `wieght`",
            ),
            (
                br#"{"op": "backend_add", "service": "10.100.0.10:80/tcp", "backend": {"address": "10.0.0.13", "port": 8080}}"#
                    .to_vec(),
                "DSR cannot change the port",
            ),
            (
                br#"{"op": "backend_set", "service": "10.100.0.10:80/tcp", "backend": "10.0.0.11", "state": "up"}"#
                    .to_vec(),
                "unknown variant `up`",
            ),
            (
                br#"{"op": "service_add", "service": {"vip": "10.100.0.10", "port": 81, "table_size": 1000}}"#
                    .to_vec(),
                "table_size",
            ),
        ];
        for (line, want) in &cases {
            let shown = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
            let mut bytes = line.clone();
            bytes.push(b'\n');
            let r = c.send_bytes(&bytes);
            assert_eq!(r["ok"], false, "{shown}: {r}");
            let error = r["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{shown}: {r}"));
            assert!(
                error.contains(want),
                "{shown}: `{error}` should mention `{want}`"
            );
            assert_eq!(r.get("result"), None, "{shown}: {r}");
            // The same connection still works, and nothing changed.
            assert_eq!(
                c.send(LIST),
                json!({"ok": true, "result": before.0}),
                "after {shown}"
            );
            assert_eq!(view(&insp), before.1, "after {shown}");
        }

        // The other client was served while all this went on (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(10);
        while served.load(Ordering::Relaxed) < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        other.join().expect("the other client failed");
    });
    assert!(
        served.load(Ordering::Relaxed) >= 5,
        "the other client was not served"
    );
    // The idle client can still finish its request.
    let mut idle = support::daemon::Client::from_stream(idle).expect("client");
    assert_eq!(idle.send(r#"st"}"#)["ok"], true);
    assert_eq!(view(&insp), before.1);
}

// ---- concurrency --------------------------------------------------------------------

#[test]
fn concurrent_clients_all_get_answers_and_the_final_state_is_consistent() {
    const THREADS: u8 = 8;
    const REQUESTS: usize = 50;
    let backends: Vec<Value> = (0..THREADS).map(|t| be(11 + t)).collect();
    let lab = Lab::new(&config(&[service(80, 4093, &backends)]));
    let d = &lab.daemon;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                let me = format!("10.0.0.{}", 11 + t);
                // Half the threads keep one connection, half connect per request.
                let mut kept = (t % 2 == 0).then(|| d.connect());
                for i in 0..REQUESTS {
                    let line = if i % 2 == 0 {
                        LIST.to_string()
                    } else if i == REQUESTS - 1 {
                        // The last word: weight 10 × (t + 1).
                        backend_set(&me, "weight", json!(10 * (u32::from(t) + 1)))
                    } else {
                        backend_set(&me, "weight", json!(1 + (i * 37 + usize::from(t)) % 500))
                    };
                    let r = match &mut kept {
                        Some(c) => c.send(&line),
                        None => d.request(&line),
                    };
                    assert_eq!(r["ok"], true, "thread {t}, request {i} ({line}): {r}");
                    if i % 2 == 0 {
                        let n = r["result"]["services"][0]["backends"]
                            .as_array()
                            .map(Vec::len);
                        assert_eq!(n, Some(usize::from(THREADS)), "{r}");
                    }
                }
            });
        }
    });
    let l = listed(&lab.list(), "10.100.0.10:80/tcp");
    let mut weights = Vec::new();
    for t in 0..THREADS {
        let a = format!("10.0.0.{}:80", 11 + t);
        let w = 10 * (u32::from(t) + 1);
        assert_eq!(l[&a]["weight"], w, "{a}");
        weights.push((a, w));
    }
    let v = view(&lab.inspector());
    let id = v.services[0].1.id;
    let weights: Vec<(&str, u32)> = weights.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    assert_eq!(v.rotation(id).len(), usize::from(THREADS));
    assert_shares(&v, id, &weights, 0.02);
}

// ---- the CLI ------------------------------------------------------------------------

#[test]
fn the_cli_drives_the_daemon_and_reports_its_errors() {
    let lab = Lab::new(&config(&[]));
    let d = &lab.daemon;
    let insp = lab.inspector();

    d.cli_ok(&[
        "service",
        "add",
        WEB,
        "--table-size",
        "251",
        "--check",
        "none",
        "--backend",
        "10.0.0.11",
        "--backend",
        "10.0.0.12",
    ]);
    let v = view(&insp);
    let id = v.service(&key(WEB)).id;
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80", "10.0.0.12:80"]);

    let table = d.cli_ok(&["service", "list"]);
    assert!(table.starts_with("Prot LocalAddress:Port"), "{table}");
    assert!(
        table.contains("TCP  10.100.0.10:80") && table.contains("table=251,check=none"),
        "{table}"
    );
    for b in ["10.0.0.11:80", "10.0.0.12:80"] {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("  -> {b}"))
                && l.contains(" 100 ")
                && l.contains(" yes ")),
            "{b} in\n{table}"
        );
    }
    let json: Value = serde_json::from_str(&d.cli_ok(&["service", "list", "--json"]))
        .expect("--json prints JSON");
    assert_eq!(json, lab.list(), "--json prints what the socket answers");
    assert_eq!(listed(&json, WEB).len(), 2);

    d.cli_ok(&["backend", "add", WEB, "10.0.0.13", "--weight", "50"]);
    let v = view(&insp);
    assert_shares(
        &v,
        id,
        &[
            ("10.0.0.11:80", 100),
            ("10.0.0.12:80", 100),
            ("10.0.0.13:80", 50),
        ],
        0.03,
    );
    d.cli_ok(&["backend", "set", WEB, "10.0.0.13", "--state", "maint"]);
    let v = view(&insp);
    assert_eq!(
        v.live(id)[&addr("10.0.0.13:80")].1.flags,
        BACKEND_F_LIVE | BACKEND_F_REPICK
    );
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80", "10.0.0.12:80"]);
    d.cli_ok(&[
        "backend",
        "set",
        WEB,
        "10.0.0.13:80",
        "--weight",
        "200",
        "--state",
        "ready",
    ]);
    let v = view(&insp);
    assert_shares(
        &v,
        id,
        &[
            ("10.0.0.11:80", 100),
            ("10.0.0.12:80", 100),
            ("10.0.0.13:80", 200),
        ],
        0.03,
    );
    let i12 = v.index(id, "10.0.0.12:80");
    d.cli_ok(&["backend", "del", WEB, "10.0.0.12"]);
    let v = view(&insp);
    assert_eq!(v.backends[&i12].flags, 0);
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80", "10.0.0.13:80"]);

    // stats and conns, in both forms.
    let stats = d.cli_ok(&["stats"]);
    assert!(
        stats.starts_with("Prot LocalAddress:Port")
            && stats.contains("TCP  10.100.0.10:80")
            && stats.contains("  -> 10.0.0.13:80")
            && stats.contains("Datapath counters"),
        "{stats}"
    );
    let stats: Value = serde_json::from_str(&d.cli_ok(&["stats", "--json"])).expect("JSON");
    for c in Counter::ALL {
        assert!(
            stats["counters"][c.name()].is_u64(),
            "{} in {stats}",
            c.name()
        );
    }
    assert_eq!(stats["services"][0]["service"], WEB);
    let rate = d.cli_ok(&["stats", "--rate"]);
    assert!(rate.starts_with("Rates over the last"), "{rate}");
    let conns = d.cli_ok(&["conns"]);
    assert!(conns.starts_with("Pro Idle(s) State"), "{conns}");
    let conns: Value =
        serde_json::from_str(&d.cli_ok(&["conns", "--json", "--service", WEB])).expect("JSON");
    assert_eq!(conns, json!({"conns": [], "total": 0, "truncated": false}));

    // Errors: non-zero exit, the daemon's message on stderr, nothing changed.
    let before = (lab.list(), view(&insp));
    let failures: [(&[&str], &str); 6] = [
        (
            &["backend", "add", "10.100.0.99:80/tcp", "10.0.0.14"],
            "no service 10.100.0.99:80/tcp",
        ),
        (&["backend", "add", WEB, "10.0.0.11"], "already in service"),
        (
            &["backend", "del", WEB, "10.0.0.19"],
            "no backend 10.0.0.19:80",
        ),
        (
            &["service", "add", WEB, "--table-size", "251"],
            "exists already",
        ),
        (
            &[
                "service",
                "add",
                "10.100.0.10:81/tcp",
                "--table-size",
                "1000",
            ],
            "not an offered Maglev table size",
        ),
        (&["service", "del", "10.100.0.99:80/tcp"], "no service"),
    ];
    for (args, want) in failures {
        let out = d.cli(args);
        assert!(!out.status.success(), "lb {args:?} succeeded");
        let err = stderr(&out);
        assert!(
            err.starts_with("lb: error: ") && err.contains(want),
            "lb {args:?}: stderr `{err}` should carry `{want}`"
        );
        assert_eq!((lab.list(), view(&insp)), before, "after lb {args:?}");
    }
    // Refused by the CLI itself (never sent).
    for args in [
        &["backend", "set", WEB, "10.0.0.11"][..],
        &["backend", "set", WEB, "10.0.0.11", "--weight", "70000"][..],
        &["backend", "add", WEB, "10.0.0.300"][..],
    ] {
        let out = d.cli(args);
        assert!(!out.status.success(), "lb {args:?} succeeded");
        assert!(!stderr(&out).is_empty());
        assert_eq!((lab.list(), view(&insp)), before, "after lb {args:?}");
    }
    let missing = lab.daemon.dir().join("missing.sock");
    let out = support::daemon::output_within(
        std::process::Command::new(support::daemon::LB).args([
            "--socket",
            missing.to_str().unwrap(),
            "service",
            "list",
        ]),
        support::daemon::COMMAND_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot reach lb"), "{}", stderr(&out));

    // reload: the file (no services) replaces what the CLI added.
    d.cli_ok(&["reload"]);
    let v = view(&insp);
    assert!(v.services.is_empty() && v.vips.is_empty(), "{v:#?}");
    assert!(v.backends.values().all(|b| b.flags == 0));
    std::fs::write(&lab.config, config(&[web(&[be(15)])])).unwrap();
    d.cli_ok(&["reload"]);
    let v = view(&insp);
    assert_rotation(&lab, &v, WEB, &["10.0.0.15:80"]);

    d.cli_ok(&["service", "del", WEB]);
    assert!(view(&insp).services.is_empty());
    assert_eq!(lab.list(), json!({"services": []}));
}

// ---- reload -------------------------------------------------------------------------

#[test]
fn reload_applies_a_valid_file_and_rejects_an_invalid_one_whole() {
    let lab = Lab::new(&config(&[web(&[be(11), be(12)])]));
    let d = &lab.daemon;
    let insp = lab.inspector();
    let v = view(&insp);
    let id = v.service(&key(WEB)).id;
    let i12 = v.index(id, "10.0.0.12:80");
    let i11 = v.live(id)[&addr("10.0.0.11:80")];
    let before_reload = v;

    // An edited, valid file: one backend gone, one new, a weight changed, a service new.
    std::fs::write(
        &lab.config,
        config(&[
            web(&[be_w(11, 300), be(13)]),
            service(443, 509, &[be(11), be(12)]),
        ]),
    )
    .unwrap();
    d.request_ok(r#"{"op":"reload"}"#);
    let v = view(&insp);
    assert_eq!(
        v.service(&key(WEB)).id,
        id,
        "a service that stays keeps its id"
    );
    assert_eq!(
        v.live(id)[&addr("10.0.0.11:80")],
        i11,
        "a backend that stays keeps its record"
    );
    assert!(
        !v.live(id).contains_key(&addr("10.0.0.12:80")),
        "10.0.0.12:80 left the service"
    );
    // Its index went back to the pool and may have gone to a new backend: then under a
    // new epoch, so the old backend's flows never follow it.
    let old12 = before_reload.backends[&i12];
    let now12 = v.backends[&i12];
    assert!(
        now12.flags == 0
            || (record_addr(&now12) != record_addr(&old12) && now12.epoch > old12.epoch),
        "index {i12}: {old12:?} -> {now12:?}"
    );
    assert_shares(
        &v,
        id,
        &[("10.0.0.11:80", 300), ("10.0.0.13:80", 100)],
        0.03,
    );
    let https = v.service(&key("10.100.0.10:443/tcp"));
    assert_eq!(https.table_size, 509);
    assert_eq!(
        v.rotation(https.id),
        set(&["10.0.0.11:443", "10.0.0.12:443"])
    );
    assert_eq!(v.vips, vec![(ne(VIP), 2)]);

    // Invalid files: rejected whole, naming the file and the field; nothing changes.
    let before = (lab.list(), view(&insp));
    let path = lab.config.display().to_string();
    let invalid = [
        (
            // Valid first service (a change that must not be applied), bad second one.
            config(&[
                web(&[be(14)]),
                service(
                    443,
                    509,
                    &[json!({"address": "10.0.0.11", "weight": 70000})],
                ),
            ]),
            "services[1].backends[0].weight",
            "u16",
        ),
        (
            config(&[web(&[be(14)]), service(443, 1000, &[be(11)])]),
            "services[1].table_size",
            "not an offered Maglev table size",
        ),
        (
            config(&[
                json!({"vip": VIP, "port": 80, "table_size": 251, "backends": [{"address": "10.0.0.14", "wieght": 1}]}),
            ]),
            "services[0].backends[0].wieght",
            "unknown field `wieght`",
        ),
        (
            config(&[web(&[be(14), be(14)])]),
            "services[0].backends[1]",
            "twice",
        ),
        (r#"{"services": [ {"#.to_string(), "", "EOF"),
    ];
    for (text, field, reason) in &invalid {
        std::fs::write(&lab.config, text).unwrap();
        let r = d.request(r#"{"op":"reload"}"#);
        assert_eq!(r["ok"], false, "{text}: {r}");
        let e = r["error"].as_str().unwrap();
        assert!(
            e.contains("rejected") && e.contains(&format!("{path}: {field}")) && e.contains(reason),
            "`{e}` should name {path}, {field} and {reason}"
        );
        assert_eq!((lab.list(), view(&insp)), before, "after reloading {text}");
        // The CLI reports the same, exiting non-zero.
        let out = d.cli(&["reload"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(&format!("{path}: {field}")),
            "{}",
            stderr(&out)
        );
        assert_eq!((lab.list(), view(&insp)), before);
    }
    // A missing file is rejected the same way.
    std::fs::remove_file(&lab.config).unwrap();
    let r = d.request(r#"{"op":"reload"}"#);
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains(&path) && e.contains("cannot read")),
        "{r}"
    );
    assert_eq!((lab.list(), view(&insp)), before);
}

// ---- starting and stopping ----------------------------------------------------------

#[test]
fn run_refuses_an_invalid_config_naming_file_field_and_reason_and_attaches_nothing() {
    support::require_root();
    let ns = topology();
    let scratch = Scratch::new("control");
    let cases = [
        (
            Some(config(&[
                json!({"vip": VIP, "port": 80, "backends": [{"address": "10.0.0.11", "weigth": 5}]}),
            ])),
            "services[0].backends[0].weigth",
            "unknown field `weigth`",
        ),
        (
            Some(config(&[service(80, 1000, &[be(11)])])),
            "services[0].table_size",
            "1000 is not an offered Maglev table size",
        ),
        (
            Some(config(&[json!({"vip": "10.100.0.300", "port": 80})])),
            "services[0].vip",
            "invalid IPv4 address",
        ),
        (
            Some(r#"{"conntrack": {"max_entries": 10}}"#.to_string()),
            "conntrack.max_entries",
            "10 is too small",
        ),
        (None, "", "cannot read the file"),
    ];
    for (text, field, reason) in cases {
        let path = scratch.path().join(unique("bad-"));
        if let Some(t) = &text {
            std::fs::write(&path, t).unwrap();
        }
        let mut d = Daemon::spawn(&ns, &["v0"], &path, &[]);
        let status = d
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("lb run kept running on {text:?}:\n{}", d.log()));
        assert!(!status.success(), "{text:?}");
        let log = d.log();
        let want = if field.is_empty() {
            format!("{}: {reason}", path.display())
        } else {
            format!("{}: {field}: {reason}", path.display())
        };
        assert!(
            log.contains("refusing to start") && log.contains(&want),
            "the error should carry `{want}`:\n{log}"
        );
        assert_eq!(
            ns.xdp_program("v0"),
            None,
            "nothing attached after {text:?}"
        );
        assert!(!d.socket().exists(), "no socket left behind");
    }
}

#[test]
fn sigterm_detaches_the_program_and_removes_the_socket() {
    let mut lab = Lab::new(&config(&[web(&[be(11)])]));
    let prog = lab.ns.xdp_program("v0").expect("attached");
    assert_eq!(prog.name, "lb");
    assert!(lab.daemon.socket().exists());
    let status = lab.daemon.stop();
    assert!(status.success(), "{status}:\n{}", lab.daemon.log());
    assert_eq!(lab.ns.xdp_program("v0"), None, "the program is detached");
    assert!(!lab.daemon.socket().exists(), "the socket is removed");
    assert!(
        lab.daemon.log().contains("detached from v0"),
        "{}",
        lab.daemon.log()
    );
    // Nothing holds the program any more: the kernel unloads it (after RCU; bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Inspector::for_program(prog.id).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = Inspector::for_program(prog.id)
        .err()
        .expect("program unloaded");
    assert!(e.to_string().contains("no BPF program"), "{e:#}");
}

/// A program file pinned in bpffs, removed on drop.
struct Pin(PathBuf);

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Loads `program` of `object` and attaches it to `iface` through netlink (as a crashed
/// earlier lb, or another tool, leaves a program): the attachment outlives this process
/// and its handles. Returns the program's id.
fn attach_through_netlink(ns: &Netns, object: &[u8], program: &str, iface: &str) -> u32 {
    let mut dp = Dataplane::load_object(
        object,
        &[program],
        Limits {
            conntrack_entries: 1024,
            conntrack6_entries: 1024,
        },
    )
    .expect("loading the program");
    let pin = Pin(Path::new("/sys/fs/bpf").join(unique("lb-control-test-")));
    let prog: &mut aya::programs::Xdp = dp
        .ebpf_mut()
        .program_mut(program)
        .expect("program")
        .try_into()
        .expect("an XDP program");
    prog.pin(&pin.0).expect("pinning the program");
    // nsenter, not `ip -n`: `ip -n` remounts /sys and would not see the pin.
    run_ok(&mut ns.nsenter(&[
        "ip",
        "link",
        "set",
        "dev",
        iface,
        "xdpgeneric",
        "pinned",
        pin.0.to_str().expect("path"),
    ]));
    drop(pin);
    drop(dp);
    let attached = ns.xdp_program(iface).expect("attached through netlink");
    assert_eq!(attached.name, program);
    attached.id
}

#[test]
fn a_program_left_by_a_crashed_run_is_detected_and_replaced() {
    support::require_root();
    let ns = topology();
    let stale = attach_through_netlink(&ns, lb_userspace::dataplane::object::OBJECT, "lb", "v0");
    let scratch = Scratch::new("control");
    let cfg = scratch.write("lb.json", &config(&[web(&[be(11)])]));
    let mut d = Daemon::start(&ns, &["v0"], &cfg, &[]);
    let log = d.log();
    assert!(
        log.contains("replaced") && log.contains(&format!("id {stale}")),
        "the replacement is reported:\n{log}"
    );
    let now = ns.xdp_program("v0").expect("attached");
    assert_ne!(now.id, stale, "the stale program was replaced");
    assert_eq!(now.name, "lb");
    // The running daemon's maps are the ones attached.
    let v = view(&d.inspector("v0"));
    assert_eq!(v.rotation(v.service(&key(WEB)).id), set(&["10.0.0.11:80"]));
    assert!(d.stop().success());
    assert_eq!(
        ns.xdp_program("v0"),
        None,
        "nothing is left: the stale program was detached, not shadowed"
    );
}

#[test]
fn a_foreign_program_is_left_alone_and_the_start_refused() {
    support::require_root();
    let ns = topology();
    let foreign = attach_through_netlink(&ns, BENCH_OBJECT, "floor", "v0");
    let scratch = Scratch::new("control");
    let cfg = scratch.write("lb.json", &config(&[web(&[be(11)])]));
    let mut d = Daemon::spawn(&ns, &["v0"], &cfg, &[]);
    let status = d
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("lb run started over a foreign program:\n{}", d.log()));
    assert!(!status.success());
    let log = d.log();
    assert!(
        log.contains("already runs the XDP program `floor`"),
        "{log}"
    );
    assert_eq!(
        ns.xdp_program("v0").map(|p| (p.id, p.name)),
        Some((foreign, "floor".to_string())),
        "the foreign program is untouched"
    );
}

#[test]
fn a_second_daemon_on_the_same_interface_is_refused_and_the_first_keeps_running() {
    let lab = Lab::new(&config(&[web(&[be(11)])]));
    let first = lab.ns.xdp_program("v0").expect("attached");
    let mut second = Daemon::spawn(&lab.ns, &["v0"], &lab.config, &[]);
    let status = second
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("a second lb run started:\n{}", second.log()));
    assert!(!status.success());
    assert!(
        second.log().contains("another `lb run` is attached there"),
        "{}",
        second.log()
    );
    assert_eq!(
        lab.ns.xdp_program("v0"),
        Some(first),
        "the first keeps its program"
    );
    let v = view(&lab.inspector());
    assert_eq!(v.rotation(v.service(&key(WEB)).id), set(&["10.0.0.11:80"]));
    assert_eq!(listed(&lab.list(), WEB).len(), 1);
}

// ---- health records across reloads ----------------------------------------------------

/// Polls the list until every backend of `service` has `health` and (not) in rotation.
fn wait_health(lab: &Lab, service: &str, health: &str, in_rotation: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let backends = listed(&lab.list(), service);
        if backends
            .values()
            .all(|b| b["health"]["state"] == health && b["in_rotation"] == in_rotation)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} not all {health}: {backends:?}\n{}",
            lab.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A service whose backends do not exist on the wire (static neighbours only): TCP
/// checks time out.
fn checked_web(kind: &str, forwarding: &str) -> Value {
    json!({"vip": VIP, "port": 80, "table_size": 251, "forwarding": forwarding,
           "health_check": {"kind": kind, "interval_ms": 200, "timeout_ms": 100, "rise": 1, "fall": 1},
           "backends": [be(11), be(12)]})
}

#[test]
fn health_follows_reloads_that_disable_checks_or_recreate_backends() {
    let lab = Lab::new(&config(&[checked_web("tcp", "dsr")]));
    wait_health(&lab, WEB, "down", false);
    assert!(
        lab.daemon.log().contains("is DOWN (timeout after 100 ms)"),
        "{}",
        lab.daemon.log()
    );

    // Checks off: backends are up, whatever their last probe said.
    std::fs::write(&lab.config, config(&[checked_web("none", "dsr")])).unwrap();
    lab.daemon.request_ok(r#"{"op":"reload"}"#);
    wait_health(&lab, WEB, "up", true);
    assert_rotation(
        &lab,
        &view(&lab.inspector()),
        WEB,
        &["10.0.0.11:80", "10.0.0.12:80"],
    );

    // Checks back on, and DSR -> NAT (new backend incarnations): the new backends start
    // up and their failing probes take them down again (never stuck "up" with a stale
    // "down" record).
    std::fs::write(&lab.config, config(&[checked_web("tcp", "nat")])).unwrap();
    lab.daemon.request_ok(r#"{"op":"reload"}"#);
    wait_health(&lab, WEB, "down", false);
    let v = view(&lab.inspector());
    assert_rotation(&lab, &v, WEB, &[]);
}

#[test]
fn a_reload_that_switches_forwarding_leaves_the_new_record_in_place() {
    let lab = Lab::new(&config(&[checked_web("none", "dsr")]));
    let before = view(&lab.inspector()).service(&key(WEB));
    std::fs::write(&lab.config, config(&[checked_web("none", "nat")])).unwrap();
    lab.daemon.request_ok(r#"{"op":"reload"}"#);
    let v = view(&lab.inspector());
    // The NAT service's record (a new id: the DSR one's is freed with its tables).
    let rec = v.service(&key(WEB));
    assert_eq!(rec.flags & SERVICE_F_NAT, SERVICE_F_NAT, "{rec:?}");
    assert_ne!(rec.id, before.id, "{rec:?}");
    assert_eq!(rec.key, key(WEB));
    assert_rotation(&lab, &v, WEB, &["10.0.0.11:80", "10.0.0.12:80"]);
    assert_eq!(
        lab.inspector().table(&before, 1).unwrap(),
        Some(vec![NO_BACKEND]),
        "the old id's table is freed"
    );
}

#[test]
fn sighup_reloads_the_configuration() {
    let mut lab = Lab::new(&config(&[web(&[be(11)])]));
    std::fs::write(&lab.config, config(&[web(&[be(11), be(12)])])).unwrap();
    // SAFETY: kill(2) on the PID of the daemon this test started.
    unsafe { libc::kill(lab.daemon.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed(&lab.list(), WEB).len() != 2
        || !lab.daemon.log().contains("SIGHUP: configuration reloaded")
    {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {}",
            lab.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lab.daemon.log().contains("SIGHUP: configuration reloaded"),
        "{}",
        lab.daemon.log()
    );
    assert!(
        lab.daemon.try_status().is_none(),
        "SIGHUP must not stop the daemon"
    );
}
