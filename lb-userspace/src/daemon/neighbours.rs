//! Looking up where DSR backends are (egress interface and MACs), off the controller:
//! when a change brings new DSR backends (waiting up to a second for ARP to answer, so the
//! backend takes traffic as soon as the change is made), and every few seconds for all of
//! them (no waiting: unresolved ones are solicited and found by the next round).
use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::Result;

use super::controller::Neighbours;
use crate::net::neighbour::{self, Unreachable};

/// How long a change waits at most for new DSR backends' MACs.
const WAIT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

/// Looks `addrs` up, soliciting the unresolved ones and waiting up to [`WAIT`] for them.
pub async fn resolve_waiting(addrs: Vec<Ipv4Addr>) -> Result<Neighbours> {
    let mut found = lookup(addrs.clone(), true).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while found
        .values()
        .any(|r| matches!(r, Err(Unreachable::Unresolved { .. })))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
        found = lookup(addrs.clone(), false).await?;
    }
    Ok(found)
}

/// Looks `addrs` up once, soliciting the unresolved ones.
pub async fn refresh(addrs: BTreeSet<Ipv4Addr>) -> Result<Neighbours> {
    lookup(addrs.into_iter().collect(), true).await
}

async fn lookup(addrs: Vec<Ipv4Addr>, solicit: bool) -> Result<Neighbours> {
    tokio::task::spawn_blocking(move || neighbour::resolve(&addrs, solicit)).await?
}
