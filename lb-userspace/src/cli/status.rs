//! `lb status`: whether the daemon serves (what keepalived's `track_script` and BGP
//! health scripts call). Exit status 0 only when a daemon answers, is attached, has
//! applied its configuration and is not stopping; 1 otherwise, with one line saying why.
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::Target;
use crate::api::{Client, Request, Status};

/// How long `lb status` waits for a daemon: it answers status at once, whatever else
/// it is doing, so a daemon that does not answer within this is not serving.
const WAIT: Duration = Duration::from_secs(2);

#[derive(Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

impl StatusArgs {
    pub fn run(self, target: &Target) -> Result<()> {
        let status = Client::connect(&target.socket, Some(WAIT))
            .and_then(|mut c| c.call::<Status>(&Request::Status {}));
        let (serving, line, json) = match status {
            Err(_) => {
                let why = format!("no daemon answers on {}", target.socket.display());
                let json = serde_json::json!({"serving": false, "reason": why});
                (false, format!("not serving: {why}"), json)
            }
            Ok(s) => {
                let ifaces: Vec<String> = s
                    .interfaces
                    .iter()
                    .map(|i| format!("{} (program {})", i.name, i.prog_id))
                    .collect();
                let who = format!(
                    "lb run pid {} (instance {}, pins {})",
                    s.pid, s.name, s.pin_dir
                );
                let line = if s.serving {
                    format!("serving: {who} on {}", ifaces.join(", "))
                } else if s.stopping {
                    format!("not serving: {who} is stopping")
                } else if !s.attached {
                    format!("not serving: {who} is not attached")
                } else {
                    format!("not serving: {who} has not applied its configuration yet")
                };
                (s.serving, line, serde_json::to_value(&s)?)
            }
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&json)?);
        } else {
            println!("{line}");
        }
        if !serving {
            std::process::exit(1);
        }
        Ok(())
    }
}
