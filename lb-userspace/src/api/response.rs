//! Control responses: the envelope and the typed results of the reading operations.
//!
//! Every response is `{"ok": true, "result": R}` or `{"ok": false, "error": "..."}`.
//! Changes answer `{}`; `list`, `stats` and `conns` answer the structs below. The
//! daemon serializes a result through a `serde_json::Value`, so its keys go out in
//! sorted order, as they always have; the CLI reads results back into the same structs,
//! every field required: a renamed field is an error, not a blank column.
use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    config::{AdminState, Forwarding, HealthCheckConfig, Protocol, Scheduler, ServiceKey},
    health::HealthSnapshot,
};

/// A response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: &impl Serialize) -> Self {
        Response {
            ok: true,
            result: Some(serde_json::to_value(result).expect("results serialize to JSON")),
            error: None,
        }
    }

    /// A change that was made (`"result": {}`).
    pub fn done() -> Self {
        Response {
            ok: true,
            result: Some(Value::Object(Default::default())),
            error: None,
        }
    }

    pub fn error(msg: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(msg.to_string()),
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a response always serializes")
    }
}

/// `status`: what `lb status` (and keepalived's `track_script`) decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Attached, configuration applied, not stopping.
    pub serving: bool,
    /// Every interface runs the datapath.
    pub attached: bool,
    /// The configuration is in the datapath.
    pub applied: bool,
    /// A stop (SIGTERM, SIGINT) or a hand-over is under way.
    pub stopping: bool,
    pub pid: u32,
    /// The instance name (`--name`).
    pub name: String,
    /// The instance's pin directory.
    pub pin_dir: String,
    /// Each interface and the XDP program it runs.
    pub interfaces: Vec<Interface>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub prog_id: u32,
}

/// `takeover`: who is handing over (the listening socket travels beside the line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub pid: u32,
}

/// `list`: every service with its settings and backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<ServiceEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub service: ServiceKey,
    pub config: ServiceSettings,
    pub backends: Vec<BackendEntry>,
}

/// A service's configuration without its backends, with the health check in effect
/// (the default one when the configuration gives none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSettings {
    pub vip: std::net::IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub forwarding: Forwarding,
    pub scheduler: Scheduler,
    pub table_size: u32,
    pub persistence: bool,
    pub health_check: HealthCheckConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendEntry {
    #[serde(flatten)]
    pub summary: BackendSummary,
    pub backup: bool,
    /// Owns Maglev table slots: takes new connections.
    pub in_rotation: bool,
    /// DSR backends only: the MAC the datapath writes, or why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbour: Option<Neighbour>,
}

/// What `list` and `stats` both show of a backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendSummary {
    pub backend: SocketAddr,
    pub weight: u16,
    pub state: AdminState,
    /// `null` while the backend has no health record.
    pub health: Option<HealthSnapshot>,
    pub active_conns: u64,
    pub inactive_conns: u64,
}

/// Where a DSR backend is reached at layer 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Neighbour {
    Mac { mac: String },
    Problem { problem: String },
}

/// `stats`: datapath counters and per-service/per-backend traffic (and rates).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Every datapath counter by name.
    pub counters: BTreeMap<String, u64>,
    pub services: Vec<ServiceStats>,
    /// With `rate`: the window the rates are measured over, seconds (0 before two samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_window_s: Option<f64>,
    /// With `rate`: every counter's change per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters_per_s: Option<BTreeMap<String, f64>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub service: ServiceKey,
    pub traffic: Traffic,
    pub backends: Vec<BackendStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    #[serde(flatten)]
    pub summary: BackendSummary,
    pub traffic: Traffic,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

/// Traffic totals (ipvsadm's Conns InPkts OutPkts InBytes OutBytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

impl From<&lb_common::TrafficStats> for Traffic {
    fn from(t: &lb_common::TrafficStats) -> Self {
        Traffic {
            conns: t.new_flows,
            packets: t.packets,
            bytes: t.bytes,
            packets_out: t.packets_out,
            bytes_out: t.bytes_out,
        }
    }
}

/// Per-second rates (ipvsadm's CPS InPPS OutPPS InBPS OutBPS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub conns_per_s: f64,
    pub packets_per_s: f64,
    pub packets_out_per_s: f64,
    pub bytes_per_s: f64,
    pub bytes_out_per_s: f64,
}

/// `conns`: connection-table entries (like `ipvsadm -Lnc`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conns {
    pub conns: Vec<ConnEntry>,
    /// Entries that matched the filters (more than listed when `truncated`).
    pub total: usize,
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnEntry {
    pub protocol: Protocol,
    pub client: SocketAddr,
    pub service: ServiceKey,
    /// The backend the connection is pinned to; `None` (`"(removed)"` on the wire) when
    /// that backend was removed (the connection picks another at its next packet).
    #[serde(with = "removed")]
    pub backend: Option<SocketAddr>,
    pub state: ConnState,
    pub idle_s: u64,
}

/// The state of a connection-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// A UDP flow.
    Udp,
    /// TCP, reset.
    Closed,
    /// TCP, a FIN was seen.
    FinWait,
    /// TCP, past the handshake.
    Established,
    /// TCP, handshake in progress.
    Syn,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Udp => "udp",
            ConnState::Closed => "closed",
            ConnState::FinWait => "fin_wait",
            ConnState::Established => "established",
            ConnState::Syn => "syn",
        }
    }
}

/// `Option<SocketAddr>` on the wire: the address, or `"(removed)"`.
mod removed {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    const REMOVED: &str = "(removed)";

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(REMOVED),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == REMOVED {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_serialize_with_ok_and_one_of_result_or_error() {
        assert_eq!(
            Response::ok(&serde_json::json!([])).to_line(),
            r#"{"ok":true,"result":[]}"#
        );
        assert_eq!(Response::done().to_line(), r#"{"ok":true,"result":{}}"#);
        assert_eq!(
            Response::error("nope").to_line(),
            r#"{"ok":false,"error":"nope"}"#
        );
    }

    #[test]
    fn results_go_out_with_sorted_keys_and_read_back_typed() {
        let conns = Conns {
            conns: vec![ConnEntry {
                protocol: Protocol::Tcp,
                client: "198.51.100.7:40000".parse().unwrap(),
                service: "10.100.0.10:80/tcp".parse().unwrap(),
                backend: None,
                state: ConnState::FinWait,
                idle_s: 3,
            }],
            total: 1,
            truncated: false,
        };
        let line = Response::ok(&conns).to_line();
        assert_eq!(
            line,
            r#"{"ok":true,"result":{"conns":[{"backend":"(removed)","client":"198.51.100.7:40000","idle_s":3,"protocol":"tcp","service":"10.100.0.10:80/tcp","state":"fin_wait"}],"total":1,"truncated":false}}"#
        );
        let back: Response = serde_json::from_str(&line).unwrap();
        let read: Conns = serde_json::from_value(back.result.unwrap()).unwrap();
        assert_eq!(read, conns);
    }

    #[test]
    fn a_renamed_field_is_an_error_not_a_blank() {
        let e = serde_json::from_value::<Traffic>(serde_json::json!({
            "conns": 1, "packets": 2, "bytes": 3, "packets_out": 4, "bytes_in": 5
        }))
        .unwrap_err();
        assert!(e.to_string().contains("missing field `bytes_out`"), "{e}");
    }
}
