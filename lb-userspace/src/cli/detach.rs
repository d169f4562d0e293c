//! `lb detach`: removes a datapath that no daemon runs (after a crash, when it should
//! not be adopted): detaches its program from every interface and removes its pins.
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::run::default_pin_dir;
use crate::dataplane::{
    error::Error,
    pins::{self, Identity, PinDir},
};

#[derive(Args)]
#[group(multiple = false)]
pub struct DetachArgs {
    /// The instance whose datapath to remove (default: lb).
    #[arg(long)]
    name: Option<String>,
    /// The pin directory of the datapath to remove.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

impl DetachArgs {
    pub fn run(self) -> Result<()> {
        let dir = self
            .pin_dir
            .unwrap_or_else(|| default_pin_dir(self.name.as_deref().unwrap_or("lb")));
        if !dir.exists() {
            bail!(
                "no datapath is pinned in {}: nothing to detach",
                dir.display()
            );
        }
        let pins = match PinDir::open_with(&dir, None, false) {
            Ok(p) => p,
            Err(Error::InstanceRunning { pin_dir }) => bail!(
                "a daemon of this instance is running (it holds {}): stop it instead (SIGTERM detaches)",
                pin_dir.display()
            ),
            Err(e) => return Err(e.into()),
        };
        match pins::identify(&dir)? {
            Identity::Foreign(entries) => bail!(
                "{} holds pins that are not an lb datapath's ({}): lb leaves them alone",
                dir.display(),
                entries.join(", ")
            ),
            Identity::Empty | Identity::Lb(_) => {}
        }
        let ifaces = pins.linked_ifaces()?;
        pins.remove()?;
        println!(
            "detached: removed the datapath pinned in {}{}",
            dir.display(),
            if ifaces.is_empty() {
                String::new()
            } else {
                format!(" (from {})", ifaces.join(", "))
            }
        );
        Ok(())
    }
}
