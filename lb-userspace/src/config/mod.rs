//! The JSON configuration (`lb run --config FILE`): parsing and validation.
//!
//! Field names are a contract (users and tests write them; docs/CONFIG.md documents each).
//! Unknown fields are errors, so a typo never passes silently. A configuration is
//! validated whole: the first problem found is reported with the field's path
//! (`services[0].backends[2].weight`) and what to do about it, and nothing is applied.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use lb_common::{DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES, TABLE_SIZES};
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Connection-table sizing and timeouts.
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    /// The virtual services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// Connection-table settings (like `ipvsadm --set tcp tcpfin udp`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Entries of the connection table. Read at start; changing it needs a restart.
    pub max_entries: u32,
    /// Entries of the IPv6 connection table (a table of its own: IPv6 keys are 40 bytes
    /// against 16). Absent: a quarter of `max_entries`, at least 1024
    /// ([`ConntrackConfig::ipv6_entries`]). Read at start; changing it needs a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries_ipv6: Option<u32>,
    /// Idle timeout of established TCP connections, seconds (IPVS: 900).
    pub tcp_timeout_s: u32,
    /// Timeout of TCP connections after FIN or RST, seconds (IPVS: 120).
    pub tcp_fin_timeout_s: u32,
    /// Idle timeout of UDP flows, seconds (IPVS: 300).
    pub udp_timeout_s: u32,
    /// How often idle entries are swept, seconds.
    pub ageing_interval_s: u32,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_entries: lb_common::DEFAULT_CONNTRACK_ENTRIES,
            max_entries_ipv6: None,
            tcp_timeout_s: 900,
            tcp_fin_timeout_s: 120,
            udp_timeout_s: 300,
            ageing_interval_s: 5,
        }
    }
}

impl ConntrackConfig {
    /// Entries of the IPv6 connection table: `max_entries_ipv6`, or a quarter of
    /// `max_entries` (at least 1024).
    pub fn ipv6_entries(&self) -> u32 {
        self.max_entries_ipv6
            .unwrap_or((self.max_entries / 4).max(1024))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Direct server return: MACs rewritten; backends hold the VIP on `lo`.
    #[default]
    Dsr,
    /// VIP:port rewritten to RIP:port and back; backends route replies via the balancer.
    Nat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Weighted Maglev consistent hashing (the only scheduler).
    #[default]
    Maglev,
}

impl Forwarding {
    pub const fn as_str(self) -> &'static str {
        match self {
            Forwarding::Dsr => "dsr",
            Forwarding::Nat => "nat",
        }
    }
}

impl Scheduler {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
        }
    }
}

/// Admin state of a backend (HAProxy's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In rotation.
    #[default]
    Ready,
    /// No new connections; existing ones continue (checks continue).
    Drain,
    /// Out of rotation; its connections choose another backend (no checks).
    Maint,
}

impl AdminState {
    pub const fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// One virtual service.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// IPv4 or IPv6; the service's backends are of the same family.
    #[serde(deserialize_with = "ip_addr::deserialize")]
    pub vip: IpAddr,
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default)]
    pub forwarding: Forwarding,
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Maglev table size M: one of `lb_common::TABLE_SIZES` (primes 251 … 131071).
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// Hash on the client address only: every connection of a client reaches one backend.
    #[serde(default)]
    pub persistence: bool,
    /// Absent: a TCP connect check for TCP services, none for UDP services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

fn default_table_size() -> u32 {
    DEFAULT_TABLE_SIZE
}

/// One real server.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    #[serde(deserialize_with = "ip_addr::deserialize")]
    pub address: IpAddr,
    /// Absent: the service's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Relative weight, 0..=65535; 0 = quiescent (no new connections).
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// Takes traffic only while no primary backend is usable.
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub state: AdminState,
}

pub const DEFAULT_WEIGHT: u16 = 100;

fn default_weight() -> u16 {
    DEFAULT_WEIGHT
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect succeeds.
    #[default]
    Tcp,
    /// An HTTP GET answers with the expected status (and body text).
    Http,
    /// No checks: backends are always up.
    None,
}

impl CheckKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::None => "none",
        }
    }
}

/// Health check of a service's backends. Defaults follow HAProxy (`inter 2s`, `rise 2`,
/// `fall 3`) with a 1 s timeout.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default)]
    pub kind: CheckKind,
    /// HTTP: path to GET.
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP: expected status, a number (`200`) or an inclusive range (`"200-399"`).
    #[serde(default)]
    pub expect_status: StatusSpec,
    /// HTTP: Host header (default: the probed address and port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP: text the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: u32,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u32,
    /// Consecutive successes to come up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures to go down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Probe this address instead of the backend's own (either family).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "ip_addr::deserialize_some"
    )]
    pub probe_address: Option<IpAddr>,
    /// Probe this port instead of the backend's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_port: Option<u16>,
}

fn default_path() -> String {
    "/".into()
}
fn default_interval() -> u32 {
    2000
}
fn default_timeout() -> u32 {
    1000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckKind::Tcp,
            path: default_path(),
            expect_status: StatusSpec::default(),
            host: None,
            body_contains: None,
            interval_ms: default_interval(),
            timeout_ms: default_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            probe_address: None,
            probe_port: None,
        }
    }
}

/// Expected HTTP status: one code or an inclusive range. Default: 200-399.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusSpec {
    pub low: u16,
    pub high: u16,
}

impl Default for StatusSpec {
    fn default() -> Self {
        StatusSpec {
            low: 200,
            high: 399,
        }
    }
}

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u16),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "expected an HTTP status (200) or an inclusive range (\"200-399\") of codes 100..=599",
            )
        };
        let spec = match Raw::deserialize(d)? {
            Raw::Code(c) => StatusSpec { low: c, high: c },
            Raw::Text(t) => {
                let (a, b) = t.split_once('-').unwrap_or((&t, &t));
                let low = a.trim().parse().map_err(|_| bad())?;
                let high = b.trim().parse().map_err(|_| bad())?;
                StatusSpec { low, high }
            }
        };
        if !(100..=599).contains(&spec.low)
            || !(100..=599).contains(&spec.high)
            || spec.low > spec.high
        {
            return Err(bad());
        }
        Ok(spec)
    }
}

impl Serialize for StatusSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.low == self.high {
            s.serialize_u16(self.low)
        } else {
            s.serialize_str(&format!("{}-{}", self.low, self.high))
        }
    }
}

/// IP addresses in the file and in requests: IPv4 or IPv6 literals. A malformed one is
/// reported in the family it looks like (a `:` makes it IPv6), with the standard
/// library's messages (`invalid IPv4 address syntax`).
mod ip_addr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use serde::{Deserialize as _, Deserializer, de::Error as _};

    pub fn parse(s: &str) -> Result<IpAddr, std::net::AddrParseError> {
        if s.contains(':') {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IpAddr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an IPv4 or IPv6 address")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<IpAddr, E> {
                parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }

    pub fn deserialize_some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse(&s).map(Some).map_err(D::Error::custom),
        }
    }
}

/// Whether two addresses are of the same family.
pub fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The name of an address's family, for messages.
pub fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// A configuration (or request) problem: where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when the problem is in a file.
    pub file: Option<PathBuf>,
    /// Path of the field (`services[0].port`), empty for the document as a whole.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: None,
        field: field.into(),
        reason: reason.into(),
    }
}

/// A field path as serde_path_to_error prints it, or "" for the document itself.
fn field_path(p: &serde_path_to_error::Path) -> String {
    let field = p.to_string();
    if field == "." || field == "?" {
        String::new()
    } else {
        field
    }
}

/// Deserializes JSON text into `T`, naming the failing field's path. serde_json adds
/// " at line L column C" to the reason, which helps find the spot in a file.
pub fn from_json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = field_path(e.path());
        err(field, e.into_inner().to_string())
    })
}

/// Deserializes an already parsed JSON value into `T`, naming the failing field's path
/// (no line/column: they would not point into what the client sent).
pub fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = field_path(e.path());
        err(field, e.into_inner().to_string())
    })
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            field: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = from_json(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything the types cannot: value ranges, references, duplicates, limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.conntrack;
        for (name, v) in [
            ("max_entries", c.max_entries),
            ("max_entries_ipv6", c.ipv6_entries()),
        ] {
            if v < 1024 {
                return Err(err(
                    format!("conntrack.{name}"),
                    format!("{v} is too small: use at least 1024"),
                ));
            }
        }
        for (name, v) in [
            ("tcp_timeout_s", c.tcp_timeout_s),
            ("tcp_fin_timeout_s", c.tcp_fin_timeout_s),
            ("udp_timeout_s", c.udp_timeout_s),
        ] {
            if v < 10 {
                return Err(err(
                    format!("conntrack.{name}"),
                    format!(
                        "{v} s is too short: active flows refresh their entry every few seconds; use 10 or more"
                    ),
                ));
            }
        }
        if c.ageing_interval_s == 0 {
            return Err(err("conntrack.ageing_interval_s", "must be at least 1"));
        }
        if self.services.len() > MAX_SERVICES as usize {
            return Err(err(
                "services",
                format!(
                    "{} services exceed the limit of {MAX_SERVICES}",
                    self.services.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut nat_owners = BTreeMap::new();
        let mut backends = 0usize;
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            s.validate(&at)?;
            if !seen.insert(s.key()) {
                return Err(err(
                    at,
                    format!(
                        "service {} is defined twice; merge the two entries",
                        s.key()
                    ),
                ));
            }
            if s.forwarding == Forwarding::Nat {
                for (j, b) in s.backends.iter().enumerate() {
                    let addr = b.socket_addr(s.port);
                    if let Some(owner) = nat_owners.insert((addr, s.protocol), s.key())
                        && owner != s.key()
                    {
                        return Err(err(
                            format!("{at}.backends[{j}]"),
                            format!(
                                "backend {addr}/{} already serves NAT service {owner}: a NAT backend's address:port can serve one NAT service only (its replies are translated back to that service's VIP:port); give it another port",
                                s.protocol.as_str()
                            ),
                        ));
                    }
                }
            }
            backends += s.backends.len();
        }
        if backends > MAX_BACKENDS as usize {
            return Err(err(
                "services",
                format!("{backends} backends in all exceed the limit of {MAX_BACKENDS}"),
            ));
        }
        Ok(())
    }
}

/// The identity of a service: `VIP:PORT/PROTO` (`[VIP]:PORT/PROTO` for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl ServiceKey {
    /// The VIP and port as a socket address (its `Display` brackets an IPv6 address).
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.port)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.socket_addr(), self.protocol.as_str())
    }
}

impl std::str::FromStr for ServiceKey {
    type Err = String;

    /// Parses `VIP:PORT/PROTO`, e.g. `10.100.0.10:80/tcp` or `[2001:db8::10]:80/tcp`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            if s.matches(':').count() > 1 && !s.starts_with('[') {
                format!(
                    "`{s}` is not a service: write an IPv6 VIP in brackets, [VIP]:PORT/PROTO, \
                     e.g. [2001:db8::10]:80/tcp"
                )
            } else {
                format!("`{s}` is not a service: write VIP:PORT/PROTO, e.g. 10.100.0.10:80/tcp")
            }
        };
        let (addr, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(format!("`{proto}` is not a protocol: use tcp or udp")),
        };
        Ok(ServiceKey {
            vip: addr.ip(),
            port: addr.port(),
            protocol,
        })
    }
}

impl Serialize for ServiceKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A backend as written on the command line or in a request: `ADDR[:PORT]`
/// (`10.0.0.11`, `10.0.0.11:8080`, `2001:db8::11`, `[2001:db8::11]:8080`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub address: IpAddr,
    pub port: Option<u16>,
}

impl BackendRef {
    /// The backend's address and port within `service` (port defaults to the service's).
    pub fn resolve(&self, service: &ServiceKey) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(service.port))
    }
}

impl std::str::FromStr for BackendRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(BackendRef {
                address: a.ip(),
                port: Some(a.port()),
            });
        }
        s.parse::<IpAddr>()
            .map(|address| BackendRef {
                address,
                port: None,
            })
            .map_err(|_| {
                format!("`{s}` is not a backend: write ADDR or ADDR:PORT, e.g. 10.0.0.11:80")
            })
    }
}

impl Serialize for BackendRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackendRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for BackendRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.address, p)),
            None => write!(f, "{}", self.address),
        }
    }
}

/// Whether `a` can be a unicast host address (VIP, backend, probe target). IPv6: not
/// unspecified, loopback, multicast or link-local (an address without its interface
/// means nothing to the datapath), and not IPv4-mapped (use the IPv4 address).
fn check_host(field: &str, what: &str, a: IpAddr) -> Result<(), ConfigError> {
    let bad = match a {
        IpAddr::V4(a) => {
            a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_loopback()
                || a.octets()[0] == 0
        }
        IpAddr::V6(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_unicast_link_local()
                || a.to_ipv4_mapped().is_some()
        }
    };
    if bad {
        return Err(err(
            field,
            format!("{a} cannot be a {what}: use a unicast host address"),
        ));
    }
    Ok(())
}

impl ServiceConfig {
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: self.vip,
            port: self.port,
            protocol: self.protocol,
        }
    }

    /// The health check in effect (the default when absent).
    pub fn effective_health_check(&self) -> HealthCheckConfig {
        self.health_check
            .clone()
            .unwrap_or_else(|| HealthCheckConfig {
                kind: match self.protocol {
                    Protocol::Tcp => CheckKind::Tcp,
                    Protocol::Udp => CheckKind::None,
                },
                ..HealthCheckConfig::default()
            })
    }

    /// Validates one service; `at` is its path for messages (`services[3]`).
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_host(&format!("{at}.vip"), "VIP", self.vip)?;
        if self.port == 0 {
            return Err(err(
                format!("{at}.port"),
                "port 0 is not a service port: use 1..=65535",
            ));
        }
        if !TABLE_SIZES.contains(&self.table_size) {
            return Err(err(
                format!("{at}.table_size"),
                format!(
                    "{} is not an offered Maglev table size: use one of {TABLE_SIZES:?} (65537 by default)",
                    self.table_size
                ),
            ));
        }
        if let Some(h) = &self.health_check {
            h.validate(&format!("{at}.health_check"), self.protocol)?;
        }
        let mut seen = BTreeSet::new();
        for (j, b) in self.backends.iter().enumerate() {
            let bat = format!("{at}.backends[{j}]");
            b.validate(&bat, self)?;
            let addr = b.socket_addr(self.port);
            if !seen.insert(addr) {
                return Err(err(
                    bat,
                    format!(
                        "backend {addr} appears twice in service {}; remove one",
                        self.key()
                    ),
                ));
            }
        }
        if self.backends.len() > MAX_BACKENDS as usize {
            return Err(err(
                format!("{at}.backends"),
                format!("more than {MAX_BACKENDS} backends"),
            ));
        }
        Ok(())
    }
}

impl BackendConfig {
    /// The backend's address and port (port defaults to the service's).
    pub fn socket_addr(&self, service_port: u16) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(service_port))
    }

    pub fn validate(&self, at: &str, service: &ServiceConfig) -> Result<(), ConfigError> {
        check_host(&format!("{at}.address"), "backend", self.address)?;
        if !same_family(self.address, service.vip) {
            let (be, vip) = (family_name(self.address), family_name(service.vip));
            return Err(err(
                format!("{at}.address"),
                format!(
                    "{} is an {be} address and the VIP {} is {vip}: a service's backends are of its VIP's family; \
                     put {be} backends in a service on an {be} VIP (lb does not translate between IPv4 and IPv6)",
                    self.address, service.vip
                ),
            ));
        }
        if self.address == service.vip {
            return Err(err(
                format!("{at}.address"),
                format!(
                    "{} is the VIP itself: a backend needs its own address",
                    self.address
                ),
            ));
        }
        match self.port {
            Some(0) => {
                return Err(err(
                    format!("{at}.port"),
                    "port 0 is not a port: use 1..=65535",
                ));
            }
            Some(p) if p != service.port && service.forwarding == Forwarding::Dsr => {
                return Err(err(
                    format!("{at}.port"),
                    format!(
                        "DSR cannot change the port ({p} differs from the service port {}): use port {} or \"forwarding\": \"nat\"",
                        service.port, service.port
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

impl HealthCheckConfig {
    pub fn validate(&self, at: &str, protocol: Protocol) -> Result<(), ConfigError> {
        if self.kind != CheckKind::None && protocol == Protocol::Udp && self.probe_port.is_none() {
            return Err(err(
                format!("{at}.kind"),
                "a UDP service cannot be checked with TCP or HTTP on its own port: set \"probe_port\" to a TCP port of the backend, or use \"kind\": \"none\"",
            ));
        }
        if self.kind == CheckKind::Http && !self.path.starts_with('/') {
            return Err(err(
                format!("{at}.path"),
                format!("`{}` must start with /", self.path),
            ));
        }
        let plain = |t: &str| !t.chars().any(|c| c.is_whitespace() || c.is_control());
        if !plain(&self.path) {
            return Err(err(
                format!("{at}.path"),
                "must not contain spaces or control characters: percent-encode them (%20)",
            ));
        }
        if let Some(h) = &self.host
            && (h.is_empty() || !plain(h))
        {
            return Err(err(
                format!("{at}.host"),
                format!("`{h}` is not a host name: no spaces or control characters"),
            ));
        }
        if self.interval_ms < 100 {
            return Err(err(
                format!("{at}.interval_ms"),
                format!("{} ms is too short: use 100 or more", self.interval_ms),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return Err(err(
                format!("{at}.timeout_ms"),
                format!(
                    "{} ms: use 1..={} (at most interval_ms, so probes never overlap)",
                    self.timeout_ms, self.interval_ms
                ),
            ));
        }
        for (name, v) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=100).contains(&v) {
                return Err(err(format!("{at}.{name}"), format!("{v}: use 1..=100")));
            }
        }
        if let Some(a) = self.probe_address {
            check_host(&format!("{at}.probe_address"), "probe address", a)?;
        }
        if self.probe_port == Some(0) {
            return Err(err(
                format!("{at}.probe_port"),
                "port 0 is not a port: use 1..=65535",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{ "services": [ {
        "vip": "10.100.0.10", "port": 80, "protocol": "tcp",
        "forwarding": "dsr", "scheduler": "maglev", "table_size": 65537, "persistence": false,
        "health_check": { "kind": "http", "path": "/", "expect_status": 200,
                          "interval_ms": 1000, "timeout_ms": 500, "rise": 2, "fall": 3 },
        "backends": [ { "address": "10.0.0.11", "port": 80, "weight": 100,
                        "backup": false, "state": "ready" } ] } ] }"#;

    fn reject(text: &str) -> ConfigError {
        Config::parse(text).expect_err("must be rejected")
    }

    fn with_service(service: &str) -> String {
        format!(r#"{{"services": [{service}]}}"#)
    }

    #[test]
    fn the_issue_example_parses_with_every_field() {
        let c = Config::parse(EXAMPLE).unwrap();
        let s = &c.services[0];
        assert_eq!(s.key().to_string(), "10.100.0.10:80/tcp");
        assert_eq!(s.forwarding, Forwarding::Dsr);
        let h = s.health_check.as_ref().unwrap();
        assert_eq!(
            (h.kind, h.expect_status, h.interval_ms, h.timeout_ms),
            (
                CheckKind::Http,
                StatusSpec {
                    low: 200,
                    high: 200
                },
                1000,
                500
            )
        );
        assert_eq!(
            s.backends[0],
            BackendConfig {
                address: "10.0.0.11".parse().unwrap(),
                port: Some(80),
                weight: 100,
                backup: false,
                state: AdminState::Ready
            }
        );
    }

    #[test]
    fn the_repository_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lb.json");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::parse(&with_service(r#"{"vip": "10.1.1.1", "port": 53, "protocol": "udp", "backends": [{"address": "10.0.0.1"}]}"#)).unwrap();
        let s = &c.services[0];
        assert_eq!(
            (s.forwarding, s.table_size, s.persistence),
            (Forwarding::Dsr, 65537, false)
        );
        assert_eq!(s.backends[0].weight, 100);
        assert_eq!(s.backends[0].socket_addr(s.port).to_string(), "10.0.0.1:53");
        assert_eq!(
            s.effective_health_check().kind,
            CheckKind::None,
            "UDP services are not checked by default"
        );
        let tcp = Config::parse(&with_service(r#"{"vip": "10.1.1.1", "port": 80}"#)).unwrap();
        let h = tcp.services[0].effective_health_check();
        assert_eq!(
            (h.kind, h.interval_ms, h.timeout_ms, h.rise, h.fall),
            (CheckKind::Tcp, 2000, 1000, 2, 3)
        );
        assert_eq!(c.conntrack, ConntrackConfig::default());
    }

    #[test]
    fn unknown_fields_are_errors_naming_the_field() {
        let e = reject(&with_service(
            r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.0.0.1", "weigth": 5}]}"#,
        ));
        assert_eq!(e.field, "services[0].backends[0].weigth");
        assert!(
            e.reason.contains("unknown field `weigth`, expected one of"),
            "{e}"
        );
        let e = reject(r#"{"service": []}"#);
        assert!(e.reason.contains("unknown field `service`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field_and_the_fix() {
        let cases = [
            (
                r#"{"vip": "10.1.1", "port": 80}"#,
                "services[0].vip",
                "IPv4 address",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 70000}"#,
                "services[0].port",
                "u16",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 0}"#,
                "services[0].port",
                "1..=65535",
            ),
            (
                r#"{"vip": "0.0.0.0", "port": 80}"#,
                "services[0].vip",
                "unicast",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "protocol": "sctp"}"#,
                "services[0].protocol",
                "unknown variant",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "forwarding": "tun"}"#,
                "services[0].forwarding",
                "unknown variant",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "scheduler": "rr"}"#,
                "services[0].scheduler",
                "unknown variant",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "table_size": 1000}"#,
                "services[0].table_size",
                "65537",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.0.0.1", "weight": 65536}]}"#,
                "services[0].backends[0].weight",
                "u16",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.0.0.1", "weight": -1}]}"#,
                "services[0].backends[0].weight",
                "u16",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.0.0.1", "state": "down"}]}"#,
                "services[0].backends[0].state",
                "unknown variant",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.0.0.1", "port": 8080}]}"#,
                "services[0].backends[0].port",
                "nat",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.0.0.1"}, {"address": "10.0.0.1", "port": 80}]}"#,
                "services[0].backends[1]",
                "twice",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.1.1.1"}]}"#,
                "services[0].backends[0].address",
                "VIP itself",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "health_check": {"kind": "icmp"}}"#,
                "services[0].health_check.kind",
                "unknown variant",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "health_check": {"kind": "http", "path": "health"}}"#,
                "services[0].health_check.path",
                "start with /",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "health_check": {"kind": "http", "path": "/a b"}}"#,
                "services[0].health_check.path",
                "spaces",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "health_check": {"kind": "http", "host": "a b"}}"#,
                "services[0].health_check.host",
                "host name",
            ),
            (
                r#"{"vip": "127.0.0.1", "port": 80}"#,
                "services[0].vip",
                "unicast",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "127.0.0.2"}]}"#,
                "services[0].backends[0].address",
                "unicast",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "health_check": {"expect_status": "2xx"}}"#,
                "services[0].health_check.expect_status",
                "range",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "health_check": {"interval_ms": 50}}"#,
                "services[0].health_check.interval_ms",
                "100",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "health_check": {"interval_ms": 1000, "timeout_ms": 2000}}"#,
                "services[0].health_check.timeout_ms",
                "interval_ms",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "health_check": {"rise": 0}}"#,
                "services[0].health_check.rise",
                "1..=100",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 53, "protocol": "udp", "health_check": {"kind": "tcp"}}"#,
                "services[0].health_check.kind",
                "probe_port",
            ),
        ];
        for (service, field, hint) in cases {
            let e = reject(&with_service(service));
            assert_eq!(e.field, field, "{service}: {e}");
            assert!(
                e.reason.contains(hint),
                "{service}: `{e}` should mention `{hint}`"
            );
        }
    }

    #[test]
    fn duplicate_services_and_limits() {
        let e = reject(
            r#"{"services": [{"vip": "10.1.1.1", "port": 80}, {"vip": "10.1.1.1", "port": 80, "protocol": "tcp"}]}"#,
        );
        assert_eq!(e.field, "services[1]");
        assert!(e.reason.contains("10.1.1.1:80/tcp"), "{e}");
        // Same VIP and port over another protocol is another service.
        Config::parse(r#"{"services": [{"vip": "10.1.1.1", "port": 53}, {"vip": "10.1.1.1", "port": 53, "protocol": "udp"}]}"#).unwrap();
        let e = reject(r#"{"conntrack": {"max_entries": 10}}"#);
        assert_eq!(e.field, "conntrack.max_entries");
    }

    #[test]
    fn a_nat_backend_serves_one_nat_service() {
        let e = reject(
            r#"{"services": [
                {"vip": "10.1.1.1", "port": 80, "forwarding": "nat", "backends": [{"address": "10.0.0.1"}]},
                {"vip": "10.1.1.2", "port": 8080, "forwarding": "nat", "backends": [{"address": "10.0.0.2", "port": 8080}, {"address": "10.0.0.1", "port": 80}]}
            ]}"#,
        );
        assert_eq!(e.field, "services[1].backends[1]");
        assert!(e.reason.contains("10.0.0.1:80/tcp"), "{e}");
        assert!(e.reason.contains("10.1.1.1:80/tcp"), "{e}");
        assert!(e.reason.contains("another port"), "{e}");
        // Another port, another protocol, or a DSR service may share the address.
        Config::parse(
            r#"{"services": [
                {"vip": "10.1.1.1", "port": 80, "forwarding": "nat", "backends": [{"address": "10.0.0.1"}]},
                {"vip": "10.1.1.2", "port": 81, "forwarding": "nat", "backends": [{"address": "10.0.0.1"}]},
                {"vip": "10.1.1.1", "port": 80, "protocol": "udp", "forwarding": "nat", "backends": [{"address": "10.0.0.1"}]},
                {"vip": "10.1.1.3", "port": 80, "backends": [{"address": "10.0.0.1"}]}
            ]}"#,
        )
        .unwrap();
    }

    #[test]
    fn file_errors_name_the_file() {
        let e = Config::load(Path::new("/nonexistent/lb.json")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/lb.json: cannot read"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("lb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.json");
        std::fs::write(
            &f,
            r#"{"services": [{"vip": "10.1.1.1", "port": 80, "table_size": 7}]}"#,
        )
        .unwrap();
        let e = Config::load(&f).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}: services[0].table_size: ", f.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let e = reject("{ not json");
        assert!(e.reason.contains("line 1"), "{e}");
        assert_eq!(e.field, "", "no `?` path for a syntax error: {e}");
    }

    #[test]
    fn service_and_backend_names() {
        let k: ServiceKey = "10.100.0.10:80/tcp".parse().unwrap();
        assert_eq!(
            k,
            ServiceKey {
                vip: "10.100.0.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(
            "10.0.0.1:53/UDP".parse::<ServiceKey>().unwrap().protocol,
            Protocol::Udp
        );
        for bad in [
            "10.100.0.10:80",
            "10.100.0.10/tcp",
            "x:80/tcp",
            "10.100.0.10:80/icmp",
            "10.100.0.10:99999/tcp",
        ] {
            assert!(bad.parse::<ServiceKey>().is_err(), "{bad}");
        }
        let b: BackendRef = "10.0.0.11".parse().unwrap();
        assert_eq!(b.resolve(&k).to_string(), "10.0.0.11:80");
        let b: BackendRef = "10.0.0.11:8080".parse().unwrap();
        assert_eq!(b.resolve(&k).to_string(), "10.0.0.11:8080");
        assert!("10.0.0".parse::<BackendRef>().is_err());
    }

    #[test]
    fn ipv6_services_and_backends() {
        let c = Config::parse(&with_service(
            r#"{"vip": "2001:db8::10", "port": 80, "forwarding": "nat", "backends": [
                {"address": "2001:db8::11", "port": 8080}, {"address": "2001:db8::12"}]}"#,
        ))
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.key().to_string(), "[2001:db8::10]:80/tcp");
        assert_eq!(
            s.backends[0].socket_addr(s.port).to_string(),
            "[2001:db8::11]:8080"
        );
        assert_eq!(
            s.backends[1].socket_addr(s.port).to_string(),
            "[2001:db8::12]:80"
        );
        let k: ServiceKey = "[2001:db8::10]:80/tcp".parse().unwrap();
        assert_eq!(k, s.key());
        assert_eq!(k.to_string(), "[2001:db8::10]:80/tcp");
        for (text, shown, port) in [
            ("2001:db8::11", "2001:db8::11", 80),
            ("[2001:db8::11]:8080", "[2001:db8::11]:8080", 8080),
        ] {
            let b: BackendRef = text.parse().unwrap();
            assert_eq!(b.to_string(), shown);
            assert_eq!(b.resolve(&k).port(), port);
        }
        // A bracketed address without a port is not a backend reference.
        assert!("[2001:db8::11]".parse::<BackendRef>().is_err());
        // An IPv6 VIP without brackets: the error says how to write it.
        let e = "2001:db8::10:80/tcp".parse::<ServiceKey>().unwrap_err();
        assert!(e.contains("[2001:db8::10]:80/tcp"), "{e}");
        let e = "10.1.1.1:80".parse::<ServiceKey>().unwrap_err();
        assert!(e.contains("e.g. 10.100.0.10:80/tcp"), "{e}");
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c);
    }

    #[test]
    fn ipv6_errors_name_the_field_and_the_fix() {
        for (service, field, hint) in [
            (
                r#"{"vip": "2001:db8::10", "port": 80, "backends": [{"address": "10.0.0.1"}]}"#,
                "services[0].backends[0].address",
                "10.0.0.1 is an IPv4 address and the VIP 2001:db8::10 is IPv6: a service's backends are of its VIP's family; put IPv4 backends in a service on an IPv4 VIP",
            ),
            (
                r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "2001:db8::1"}]}"#,
                "services[0].backends[0].address",
                "is an IPv6 address and the VIP 10.1.1.1 is IPv4",
            ),
            (
                r#"{"vip": "2001:db8::zz", "port": 80}"#,
                "services[0].vip",
                "invalid IPv6 address syntax",
            ),
            (
                r#"{"vip": "10.1.1", "port": 80}"#,
                "services[0].vip",
                "invalid IPv4 address syntax",
            ),
            (
                r#"{"vip": "::1", "port": 80}"#,
                "services[0].vip",
                "unicast",
            ),
            (r#"{"vip": "::", "port": 80}"#, "services[0].vip", "unicast"),
            (
                r#"{"vip": "fe80::1", "port": 80}"#,
                "services[0].vip",
                "unicast",
            ),
            (
                r#"{"vip": "ff02::1", "port": 80}"#,
                "services[0].vip",
                "unicast",
            ),
            (
                r#"{"vip": "::ffff:10.1.1.1", "port": 80}"#,
                "services[0].vip",
                "unicast",
            ),
            (
                r#"{"vip": "2001:db8::10", "port": 80, "backends": [{"address": "2001:db8::10"}]}"#,
                "services[0].backends[0].address",
                "VIP itself",
            ),
            (
                r#"{"vip": "2001:db8::10", "port": 80, "backends": [{"address": "2001:db8::11", "port": 81}]}"#,
                "services[0].backends[0].port",
                "DSR cannot change the port",
            ),
        ] {
            let e = reject(&with_service(service));
            assert_eq!(e.field, field, "{service}: {e}");
            assert!(
                e.reason.contains(hint),
                "{service}: `{e}` should mention `{hint}`"
            );
        }
        // The health check may probe an address of the other family (a management
        // address).
        Config::parse(&with_service(
            r#"{"vip": "2001:db8::10", "port": 80, "health_check": {"probe_address": "10.0.0.1"}, "backends": [{"address": "2001:db8::11"}]}"#,
        ))
        .unwrap();
    }

    #[test]
    fn the_ipv6_connection_table_is_a_quarter_by_default() {
        let c = Config::parse(r#"{"conntrack": {"max_entries": 1024}}"#).unwrap();
        assert_eq!(c.conntrack.ipv6_entries(), 1024);
        let c = Config::parse("{}").unwrap();
        assert_eq!(c.conntrack.ipv6_entries(), 1 << 18);
        let c = Config::parse(r#"{"conntrack": {"max_entries_ipv6": 4096}}"#).unwrap();
        assert_eq!(c.conntrack.ipv6_entries(), 4096);
        let e = reject(r#"{"conntrack": {"max_entries_ipv6": 10}}"#);
        assert_eq!(e.field, "conntrack.max_entries_ipv6");
    }

    #[test]
    fn a_config_round_trips_through_json() {
        let c = Config::parse(EXAMPLE).unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c);
    }
}
