//! Health checks: probes and the rise/fall state machine (no aya).
//!
//! The building blocks of the health checker, pure of the datapath so that plain
//! `cargo test` covers them:
//! - [`probe`](probe()) runs one check against one backend — a TCP connect or a
//!   minimal HTTP/1.1 GET — bounded in time (one overall timeout) and in memory, and
//!   returns a [`ProbeResult`] whose failure reason operators read in logs;
//! - [`BackendHealth`] turns a backend's stream of results into its [`Health`]: `Down`
//!   after [`Thresholds::fall`] failures in a row, `Up` after [`Thresholds::rise`]
//!   successes in a row, reporting each [`Transition`] with its cause, and gives a
//!   serializable [`HealthSnapshot`] for the CLI;
//! - [`start_offset`] spreads the first probe of each backend over the interval, so a
//!   pool is not probed in lockstep.
//!
//! Scheduling the probes and acting on transitions (marking backends for the datapath)
//! belong to the caller.

pub mod machine;
pub mod probe;

pub use machine::{
    BackendHealth, DEFAULT_INTERVAL, DEFAULT_TIMEOUT, Health, HealthSnapshot, Thresholds,
    Transition, start_offset,
};
pub use probe::{MAX_BODY, MAX_HEAD, ProbeKind, ProbeResult, probe, probe_from};
