//! Looking up where DSR backends are (egress interface and MACs), off the controller:
//! when a change brings new DSR backends (waiting up to a second for ARP to answer, so the
//! backend takes traffic as soon as the change is made), and every few seconds for all of
//! them (no waiting: unresolved ones are solicited and found by the next round).
use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use super::controller::Neighbours;
use crate::net::{
    NetError, Netlink,
    neighbour::{self, Unreachable},
};

/// How long a change waits at most for new DSR backends' MACs.
const WAIT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

/// Looks `addrs` up, soliciting the unresolved ones and waiting up to [`WAIT`] for them.
pub async fn resolve_waiting(nl: &Netlink, addrs: Vec<IpAddr>) -> Result<Neighbours, NetError> {
    let mut found = lookup(nl, &addrs, true).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while found
        .values()
        .any(|r| matches!(r, Err(Unreachable::Unresolved { .. })))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
        found = lookup(nl, &addrs, false).await?;
    }
    Ok(found)
}

/// Looks `addrs` up once, soliciting the unresolved ones.
pub async fn refresh(nl: &Netlink, addrs: BTreeSet<IpAddr>) -> Result<Neighbours, NetError> {
    lookup(nl, &addrs.into_iter().collect::<Vec<_>>(), true).await
}

async fn lookup(nl: &Netlink, addrs: &[IpAddr], solicit: bool) -> Result<Neighbours, NetError> {
    let mut found = neighbour::resolve_with(nl, addrs, solicit).await?;
    Ok(addrs
        .iter()
        .filter_map(|a| found.remove(a).map(|r| (*a, r)))
        .collect())
}
