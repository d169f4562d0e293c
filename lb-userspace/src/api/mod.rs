//! The control-socket protocol: one JSON request per line, one JSON response per line.
//!
//! Request: `{"op": "<operation>", ...fields}`; response: `{"ok": true, "result": ...}` or
//! `{"ok": false, "error": "<what is wrong and how to fix it>"}`. Operations and their
//! fields are listed in docs/CONTROL.md. A request is parsed and validated completely
//! before anything changes.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{AdminState, BackendConfig, BackendRef, ServiceConfig, ServiceKey, from_value};

/// Longest request line accepted (bytes, newline excluded).
pub const MAX_LINE: usize = 64 * 1024;

/// A parsed control request.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Services and backends with weight, state, health and connections.
    List,
    ServiceAdd {
        service: ServiceConfig,
    },
    ServiceDel {
        service: ServiceKey,
    },
    BackendAdd {
        service: ServiceKey,
        backend: BackendConfig,
    },
    BackendDel {
        service: ServiceKey,
        backend: BackendRef,
    },
    BackendSet {
        service: ServiceKey,
        backend: BackendRef,
        weight: Option<u16>,
        state: Option<AdminState>,
    },
    /// Counters and per-service/per-backend traffic; with `rate`, per-second rates too.
    Stats {
        rate: bool,
    },
    /// Connection-table entries, optionally filtered, at most `limit` (default 100).
    Conns {
        service: Option<ServiceKey>,
        backend: Option<BackendRef>,
        limit: usize,
    },
    /// Re-read the configuration file given to `lb run`.
    Reload,
}

/// Operation names, as `op` carries them.
pub const OPS: [&str; 9] = [
    "list",
    "service_add",
    "service_del",
    "backend_add",
    "backend_del",
    "backend_set",
    "stats",
    "conns",
    "reload",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceAdd {
    service: ServiceConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDel {
    service: ServiceKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendAdd {
    service: ServiceKey,
    backend: BackendConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendDel {
    service: ServiceKey,
    backend: BackendRef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSet {
    service: ServiceKey,
    backend: BackendRef,
    #[serde(default)]
    weight: Option<u16>,
    #[serde(default)]
    state: Option<AdminState>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stats {
    #[serde(default)]
    rate: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conns {
    #[serde(default)]
    service: Option<ServiceKey>,
    #[serde(default)]
    backend: Option<BackendRef>,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// Parses one request line (without its newline).
pub fn parse(line: &str) -> Result<Request, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("a request is a JSON object: {\"op\": \"list\"}".into());
    };
    let op = match fields.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => return Err("`op` must be a string naming the operation".into()),
        None => return Err(format!("missing `op`: use one of {}", OPS.join(", "))),
    };
    let rest = Value::Object(fields);
    let fields = |e: crate::config::ConfigError| {
        if e.field.is_empty() {
            format!("{op}: {}", e.reason)
        } else {
            format!("{op}: {}: {}", e.field, e.reason)
        }
    };
    Ok(match op.as_str() {
        "list" => from_value::<Empty>(rest)
            .map(|_| Request::List)
            .map_err(fields)?,
        "reload" => from_value::<Empty>(rest)
            .map(|_| Request::Reload)
            .map_err(fields)?,
        "service_add" => Request::ServiceAdd {
            service: from_value::<ServiceAdd>(rest).map_err(fields)?.service,
        },
        "service_del" => Request::ServiceDel {
            service: from_value::<ServiceDel>(rest).map_err(fields)?.service,
        },
        "backend_add" => {
            let r: BackendAdd = from_value(rest).map_err(fields)?;
            Request::BackendAdd {
                service: r.service,
                backend: r.backend,
            }
        }
        "backend_del" => {
            let r: BackendDel = from_value(rest).map_err(fields)?;
            Request::BackendDel {
                service: r.service,
                backend: r.backend,
            }
        }
        "backend_set" => {
            let r: BackendSet = from_value(rest).map_err(fields)?;
            if r.weight.is_none() && r.state.is_none() {
                return Err("backend_set: nothing to change: give `weight` and/or `state`".into());
            }
            Request::BackendSet {
                service: r.service,
                backend: r.backend,
                weight: r.weight,
                state: r.state,
            }
        }
        "stats" => Request::Stats {
            rate: from_value::<Stats>(rest).map_err(fields)?.rate,
        },
        "conns" => {
            let r: Conns = from_value(rest).map_err(fields)?;
            Request::Conns {
                service: r.service,
                backend: r.backend,
                limit: r.limit,
            }
        }
        other => {
            return Err(format!(
                "unknown operation `{other}`: use one of {}",
                OPS.join(", ")
            ));
        }
    })
}

impl Request {
    /// The operation's name, as `op` carries it.
    pub fn op(&self) -> &'static str {
        match self {
            Request::List => "list",
            Request::ServiceAdd { .. } => "service_add",
            Request::ServiceDel { .. } => "service_del",
            Request::BackendAdd { .. } => "backend_add",
            Request::BackendDel { .. } => "backend_del",
            Request::BackendSet { .. } => "backend_set",
            Request::Stats { .. } => "stats",
            Request::Conns { .. } => "conns",
            Request::Reload => "reload",
        }
    }

    /// The request as a JSON line (what the CLI sends).
    pub fn to_line(&self) -> String {
        let v = match self {
            Request::List => serde_json::json!({"op": "list"}),
            Request::Reload => serde_json::json!({"op": "reload"}),
            Request::ServiceAdd { service } => {
                serde_json::json!({"op": "service_add", "service": service})
            }
            Request::ServiceDel { service } => {
                serde_json::json!({"op": "service_del", "service": service})
            }
            Request::BackendAdd { service, backend } => {
                serde_json::json!({"op": "backend_add", "service": service, "backend": backend})
            }
            Request::BackendDel { service, backend } => {
                serde_json::json!({"op": "backend_del", "service": service, "backend": backend.to_string()})
            }
            Request::BackendSet {
                service,
                backend,
                weight,
                state,
            } => {
                let mut v = serde_json::json!({"op": "backend_set", "service": service, "backend": backend.to_string()});
                if let Some(w) = weight {
                    v["weight"] = (*w).into();
                }
                if let Some(s) = state {
                    v["state"] = s.as_str().into();
                }
                v
            }
            Request::Stats { rate } => serde_json::json!({"op": "stats", "rate": rate}),
            Request::Conns {
                service,
                backend,
                limit,
            } => {
                let mut v = serde_json::json!({"op": "conns", "limit": limit});
                if let Some(s) = service {
                    v["service"] = s.to_string().into();
                }
                if let Some(b) = backend {
                    v["backend"] = b.to_string().into();
                }
                v
            }
        };
        v.to_string()
    }
}

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
    pub fn ok(result: Value) -> Self {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a response always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips() {
        let reqs = [
            Request::List,
            Request::Reload,
            Request::Stats { rate: true },
            Request::ServiceDel {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
            },
            Request::ServiceAdd {
                service: serde_json::from_str(
                    r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.0.0.1"}]}"#,
                )
                .unwrap(),
            },
            Request::BackendAdd {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
                backend: serde_json::from_str(
                    r#"{"address": "10.0.0.2", "weight": 5, "backup": true}"#,
                )
                .unwrap(),
            },
            Request::BackendDel {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
                backend: "10.0.0.2".parse().unwrap(),
            },
            Request::BackendSet {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
                backend: "10.0.0.2:80".parse().unwrap(),
                weight: Some(0),
                state: Some(AdminState::Drain),
            },
            Request::Conns {
                service: Some("10.1.1.1:80/tcp".parse().unwrap()),
                backend: None,
                limit: 5,
            },
        ];
        let mut ops = std::collections::BTreeSet::new();
        for r in reqs {
            assert_eq!(parse(&r.to_line()), Ok(r.clone()), "{}", r.to_line());
            let v: serde_json::Value = serde_json::from_str(&r.to_line()).unwrap();
            assert_eq!(v["op"], r.op());
            ops.insert(r.op());
        }
        assert_eq!(ops, OPS.into_iter().collect(), "every operation is covered");
    }

    #[test]
    fn every_malformed_kind_is_named() {
        let cases = [
            ("{not json", "invalid JSON"),
            ("[1, 2]", "JSON object"),
            (r#"{"cmd": "list"}"#, "missing `op`"),
            (r#"{"op": 7}"#, "`op` must be a string"),
            (r#"{"op": "drop_all"}"#, "unknown operation `drop_all`"),
            (
                r#"{"op": "list", "verbose": true}"#,
                "unknown field `verbose`",
            ),
            (r#"{"op": "service_del"}"#, "missing field `service`"),
            (
                r#"{"op": "service_del", "service": "10.1.1.1:80"}"#,
                "VIP:PORT/PROTO",
            ),
            (
                r#"{"op": "service_add", "service": {"vip": "10.1.1.300", "port": 80}}"#,
                "service.vip",
            ),
            (
                r#"{"op": "backend_add", "service": "10.1.1.1:80/tcp", "backend": {"address": "10.0.0"}}"#,
                "backend.address",
            ),
            (
                r#"{"op": "backend_add", "service": "10.1.1.1:80/tcp", "backend": {"address": "10.0.0.1", "weight": 70000}}"#,
                "backend.weight",
            ),
            (
                r#"{"op": "backend_set", "service": "10.1.1.1:80/tcp", "backend": "10.0.0.1"}"#,
                "nothing to change",
            ),
            (
                r#"{"op": "backend_set", "service": "10.1.1.1:80/tcp", "backend": "10.0.0.1", "state": "up"}"#,
                "unknown variant `up`",
            ),
            (
                r#"{"op": "backend_set", "service": "10.1.1.1:80/tcp", "backend": "10.0.0.1", "weight": -1}"#,
                "weight",
            ),
            (r#"{"op": "conns", "limit": "ten"}"#, "limit"),
        ];
        for (line, want) in cases {
            let e = parse(line).expect_err(line);
            assert!(e.contains(want), "{line}: `{e}` should mention `{want}`");
            if !line.starts_with("{not") {
                assert!(
                    !e.contains(" column "),
                    "{line}: `{e}`: a position would point into a re-serialized request"
                );
            }
        }
    }

    #[test]
    fn responses_serialize_with_ok_and_one_of_result_or_error() {
        assert_eq!(
            Response::ok(serde_json::json!([])).to_line(),
            r#"{"ok":true,"result":[]}"#
        );
        assert_eq!(
            Response::error("nope").to_line(),
            r#"{"ok":false,"error":"nope"}"#
        );
    }
}
