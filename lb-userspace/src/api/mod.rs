//! The control-socket protocol, typed: one JSON request per line, one JSON response per
//! line, used by the daemon, the CLI, the tests and the metrics.
//!
//! - [`request`]: the operations ([`Request`]) and how a line becomes one;
//! - [`response`]: the envelope (`{"ok": true, "result": ...}` / `{"ok": false, "error":
//!   ...}`) and the typed results ([`ServiceList`], [`Stats`], [`Conns`]);
//! - [`client`]: sending requests to a daemon over its socket.
//!
//! The keys on the wire are a contract (docs/CONTROL.md documents them; `tests/wire.rs`
//! replays recorded exchanges byte for byte): rename a field here and that test fails.
pub mod client;
pub mod request;
pub mod response;

pub use client::{Client, ClientError};
pub use request::{
    BackendAdd, BackendDel, BackendSet, MAX_LINE, Request, RequestError, ServiceAdd, ServiceDel,
};
pub use response::{
    BackendEntry, BackendStats, BackendSummary, ConnEntry, ConnState, Conns, Handover, Interface,
    Neighbour, Rate, Response, ServiceEntry, ServiceList, ServiceSettings, ServiceStats, Stats,
    Status, Traffic,
};
