//! `lb stats` (like `ipvsadm -Ln --stats` / `--rate`).
use anyhow::Result;
use clap::Args;

use super::{Target, print};
use crate::api::{Request, Stats};

#[derive(Args)]
pub struct StatsArgs {
    /// Per-second rates instead of totals (like `ipvsadm -Ln --rate`).
    #[arg(long)]
    rate: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

impl StatsArgs {
    pub fn run(self, target: &Target) -> Result<()> {
        let v = target.send(&Request::Stats { rate: self.rate })?;
        print::<Stats>(self.json, v, |s| super::show::stats(&s, self.rate))
    }
}
