//! `lb conns` (like `ipvsadm -Lnc`).
use anyhow::Result;
use clap::Args;

use super::{Target, print};
use crate::{
    api::{Conns, Request},
    config::{BackendRef, ServiceKey},
};

#[derive(Args)]
pub struct ConnsArgs {
    /// Only connections of this service (VIP:PORT/PROTO).
    #[arg(long)]
    service: Option<ServiceKey>,
    /// Only connections to this backend (ADDR[:PORT]).
    #[arg(long)]
    backend: Option<BackendRef>,
    /// Show at most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

impl ConnsArgs {
    pub fn run(self, target: &Target) -> Result<()> {
        let v = target.send(&Request::Conns {
            service: self.service,
            backend: self.backend,
            limit: self.limit,
        })?;
        print::<Conns>(self.json, v, |c| super::show::conns(&c))
    }
}
