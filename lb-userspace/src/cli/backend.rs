//! `lb backend add|del|set`.
use anyhow::{Result, bail};
use clap::Subcommand;

use super::Target;
use crate::{
    api::{BackendAdd, BackendDel, BackendSet, Request},
    config::{AdminState, BackendConfig, BackendRef, ServiceKey},
};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    Ready,
    Drain,
    Maint,
}

impl From<StateArg> for AdminState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Ready => AdminState::Ready,
            StateArg::Drain => AdminState::Drain,
            StateArg::Maint => AdminState::Maint,
        }
    }
}

#[derive(Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a service.
    Add {
        /// VIP:PORT/PROTO
        service: ServiceKey,
        /// ADDR[:PORT] (the port defaults to the service's)
        backend: BackendRef,
        /// Relative weight, 0..=65535 (0: no new connections).
        #[arg(long, default_value_t = crate::config::DEFAULT_WEIGHT)]
        weight: u16,
        /// Use only while no primary backend is usable.
        #[arg(long)]
        backup: bool,
        /// Admin state to start in.
        #[arg(long, value_enum, default_value = "ready")]
        state: StateArg,
    },
    /// Remove a backend (its connections choose another backend).
    Del {
        /// VIP:PORT/PROTO
        service: ServiceKey,
        /// ADDR[:PORT]
        backend: BackendRef,
    },
    /// Change a backend's weight and/or admin state (drain: no new connections, existing
    /// ones continue; maint: out of rotation, its connections choose again).
    Set {
        /// VIP:PORT/PROTO
        service: ServiceKey,
        /// ADDR[:PORT]
        backend: BackendRef,
        /// New weight, 0..=65535.
        #[arg(long)]
        weight: Option<u16>,
        /// New admin state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
}

impl BackendCmd {
    pub fn run(self, target: &Target) -> Result<()> {
        let req = match self {
            BackendCmd::Add {
                service,
                backend,
                weight,
                backup,
                state,
            } => Request::BackendAdd(BackendAdd {
                service,
                backend: BackendConfig {
                    address: backend.address,
                    port: backend.port,
                    weight,
                    backup,
                    state: state.into(),
                },
            }),
            BackendCmd::Del { service, backend } => {
                Request::BackendDel(BackendDel { service, backend })
            }
            BackendCmd::Set {
                service,
                backend,
                weight,
                state,
            } => {
                if weight.is_none() && state.is_none() {
                    bail!("nothing to change: give --weight and/or --state");
                }
                Request::BackendSet(BackendSet {
                    service,
                    backend,
                    weight,
                    state: state.map(Into::into),
                })
            }
        };
        target.send(&req).map(drop)
    }
}
