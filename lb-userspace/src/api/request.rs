//! Control requests: `{"op": "<operation>", ...fields}`, one per line.
//!
//! [`Request`] is the one definition of the operations and their fields: serde derives
//! both directions from it. On the wire the operation is a field (`"op"`); serde's
//! externally tagged form (`{"<operation>": {...fields}}`) is what the enum derives, and
//! [`Request::parse`] / [`Request::to_line`] move the name between the two shapes. That
//! keeps serde's field paths in errors (`service_add: service.vip: ...`), which an
//! internally tagged enum loses. A request is parsed and validated completely before
//! anything changes; unknown fields are refused.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{AdminState, BackendConfig, BackendRef, ServiceConfig, ServiceKey, from_value};

/// Longest request line accepted (bytes, newline excluded).
pub const MAX_LINE: usize = 64 * 1024;

/// A control request. Variant names, in snake case, are the operations' names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Services and backends with weight, state, health and connections.
    List {},
    ServiceAdd(ServiceAdd),
    ServiceDel(ServiceDel),
    BackendAdd(BackendAdd),
    BackendDel(BackendDel),
    BackendSet(BackendSet),
    /// Counters and per-service/per-backend traffic; with `rate`, per-second rates too.
    Stats {
        #[serde(default)]
        rate: bool,
    },
    /// Connection-table entries, optionally filtered, at most `limit` (default 100).
    Conns {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<ServiceKey>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<BackendRef>,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Re-read the configuration file given to `lb run`.
    Reload {},
    /// Whether the daemon serves: attached, configuration applied, not stopping
    /// (`lb status`; answered at once, whatever else the daemon is doing).
    Status {},
    /// Hand the datapath over to the asking process (`lb run --takeover`): the daemon
    /// answers with its pid and the control socket's listening descriptor (SCM_RIGHTS),
    /// then exits without detaching.
    Takeover {},
}

/// Adds a service (and its backends).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAdd {
    pub service: ServiceConfig,
}

/// Removes a service, its backends and its connection-table entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDel {
    pub service: ServiceKey,
}

/// Adds a backend to a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendAdd {
    pub service: ServiceKey,
    pub backend: BackendConfig,
}

/// Removes a backend from a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDel {
    pub service: ServiceKey,
    pub backend: BackendRef,
}

/// Changes a backend's weight and/or admin state (at least one of them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSet {
    pub service: ServiceKey,
    pub backend: BackendRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AdminState>,
}

fn default_limit() -> usize {
    100
}

/// Why a request line was refused (the messages are what the client reads).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("a request is a JSON object: {{\"op\": \"list\"}}")]
    NotAnObject,
    #[error("missing `op`: use one of {}", Request::ops().join(", "))]
    MissingOp,
    #[error("`op` must be a string naming the operation")]
    OpNotAString,
    #[error("unknown operation `{0}`: use one of {ops}", ops = Request::ops().join(", "))]
    UnknownOp(String),
    /// A field of a known operation is missing, unknown or invalid.
    #[error("{op}: {}", field_reason(.field, .reason))]
    Field {
        op: &'static str,
        field: String,
        reason: String,
    },
    #[error("backend_set: nothing to change: give `weight` and/or `state`")]
    NothingToChange,
}

fn field_reason(field: &str, reason: &str) -> String {
    if field.is_empty() {
        reason.to_string()
    } else {
        format!("{field}: {reason}")
    }
}

impl Request {
    /// The operations' names, as `op` carries them, in declaration order (read from the
    /// enum's own serde definition, so the list cannot drift from it).
    pub fn ops() -> &'static [&'static str] {
        static OPS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
        OPS.get_or_init(variants::<Request>)
    }

    /// The operation's name, as `op` carries it.
    pub fn op(&self) -> &'static str {
        match self {
            Request::List {} => "list",
            Request::ServiceAdd(_) => "service_add",
            Request::ServiceDel(_) => "service_del",
            Request::BackendAdd(_) => "backend_add",
            Request::BackendDel(_) => "backend_del",
            Request::BackendSet(_) => "backend_set",
            Request::Stats { .. } => "stats",
            Request::Conns { .. } => "conns",
            Request::Reload {} => "reload",
            Request::Status {} => "status",
            Request::Takeover {} => "takeover",
        }
    }

    /// Whether the request only reads (it never waits for the controller).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::List {} | Request::Stats { .. } | Request::Conns { .. } | Request::Status {}
        )
    }

    /// Parses one request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, RequestError> {
        let value: Value = serde_json::from_str(line).map_err(RequestError::Json)?;
        let Value::Object(mut fields) = value else {
            return Err(RequestError::NotAnObject);
        };
        let op = match fields.remove("op") {
            Some(Value::String(op)) => op,
            Some(_) => return Err(RequestError::OpNotAString),
            None => return Err(RequestError::MissingOp),
        };
        let Some(op) = Request::ops().iter().copied().find(|o| *o == op) else {
            return Err(RequestError::UnknownOp(op));
        };
        let tagged = Value::Object(Map::from_iter([(op.to_string(), Value::Object(fields))]));
        let request: Request = from_value(tagged).map_err(|e| RequestError::Field {
            op,
            // The path starts with the operation (the externally tagged form): drop it.
            field: e
                .field
                .strip_prefix(op)
                .map(|f| f.trim_start_matches('.'))
                .unwrap_or(&e.field)
                .to_string(),
            reason: e.reason,
        })?;
        if let Request::BackendSet(BackendSet {
            weight: None,
            state: None,
            ..
        }) = request
        {
            return Err(RequestError::NothingToChange);
        }
        Ok(request)
    }

    /// The request as a JSON line, without its newline (what the CLI sends).
    pub fn to_line(&self) -> String {
        let Ok(Value::Object(tagged)) = serde_json::to_value(self) else {
            unreachable!("a request serializes as an object");
        };
        let (op, fields) = tagged.into_iter().next().expect("one operation");
        let Value::Object(mut fields) = fields else {
            unreachable!("every operation's payload has named fields");
        };
        fields.insert("op".into(), Value::String(op));
        Value::Object(fields).to_string()
    }
}

/// The variant names of an enum, as its `Deserialize` implementation declares them.
fn variants<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Capture<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Capture<'_> {
        type Error = de::value::Error;

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = variants;
            Err(de::Error::custom("variants captured"))
        }

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not an enum"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            struct identifier ignored_any
        }
    }

    let mut out: &'static [&'static str] = &[];
    let _ = T::deserialize(Capture(&mut out));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_request() -> Vec<Request> {
        vec![
            Request::List {},
            Request::Reload {},
            Request::Status {},
            Request::Takeover {},
            Request::Stats { rate: true },
            Request::ServiceDel(ServiceDel {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
            }),
            Request::ServiceAdd(ServiceAdd {
                service: serde_json::from_str(
                    r#"{"vip": "10.1.1.1", "port": 80, "backends": [{"address": "10.0.0.1"}]}"#,
                )
                .unwrap(),
            }),
            Request::BackendAdd(BackendAdd {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
                backend: serde_json::from_str(
                    r#"{"address": "10.0.0.2", "weight": 5, "backup": true}"#,
                )
                .unwrap(),
            }),
            Request::BackendDel(BackendDel {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
                backend: "10.0.0.2".parse().unwrap(),
            }),
            Request::BackendSet(BackendSet {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
                backend: "10.0.0.2:80".parse().unwrap(),
                weight: Some(0),
                state: Some(AdminState::Drain),
            }),
            Request::Conns {
                service: Some("10.1.1.1:80/tcp".parse().unwrap()),
                backend: None,
                limit: 5,
            },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        let mut ops = std::collections::BTreeSet::new();
        for r in every_request() {
            assert_eq!(
                Request::parse(&r.to_line()).unwrap(),
                r.clone(),
                "{}",
                r.to_line()
            );
            let v: serde_json::Value = serde_json::from_str(&r.to_line()).unwrap();
            assert_eq!(v["op"], r.op());
            ops.insert(r.op());
        }
        assert_eq!(
            ops,
            Request::ops().iter().copied().collect(),
            "every operation is covered"
        );
    }

    #[test]
    fn operation_names_come_from_the_enum() {
        assert_eq!(
            Request::ops(),
            [
                "list",
                "service_add",
                "service_del",
                "backend_add",
                "backend_del",
                "backend_set",
                "stats",
                "conns",
                "reload",
                "status",
                "takeover"
            ]
        );
    }

    #[test]
    fn lines_are_what_clients_sent_before_the_api_was_typed() {
        // Keys in sorted order, optional fields left out, as the hand-written encoder did.
        assert_eq!(Request::List {}.to_line(), r#"{"op":"list"}"#);
        assert_eq!(
            Request::BackendSet(BackendSet {
                service: "10.1.1.1:80/tcp".parse().unwrap(),
                backend: "10.0.0.2".parse().unwrap(),
                weight: None,
                state: Some(AdminState::Drain),
            })
            .to_line(),
            r#"{"backend":"10.0.0.2","op":"backend_set","service":"10.1.1.1:80/tcp","state":"drain"}"#
        );
        assert_eq!(
            Request::Conns {
                service: None,
                backend: Some("10.0.0.2:8080".parse().unwrap()),
                limit: 100
            }
            .to_line(),
            r#"{"backend":"10.0.0.2:8080","limit":100,"op":"conns"}"#
        );
        assert_eq!(
            Request::Stats { rate: false }.to_line(),
            r#"{"op":"stats","rate":false}"#
        );
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
            let e = Request::parse(line).expect_err(line).to_string();
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
    fn field_errors_keep_their_kind_and_path() {
        match Request::parse(r#"{"op": "list", "verbose": true}"#) {
            Err(RequestError::Field { op, field, reason }) => {
                assert_eq!((op, field.as_str()), ("list", "verbose"));
                assert!(reason.starts_with("unknown field"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match Request::parse(r#"{"op": "service_del"}"#) {
            Err(RequestError::Field { op, field, .. }) => {
                assert_eq!((op, field.as_str()), ("service_del", ""));
            }
            other => panic!("{other:?}"),
        }
    }
}
