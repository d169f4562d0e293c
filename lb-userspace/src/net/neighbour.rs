//! Where DSR backends are: egress interface, the backend's MAC, the interface's MAC.
//!
//! DSR rewrites only MAC addresses, so every DSR backend must sit on a network directly
//! connected to the balancer. Everything is asked of the kernel over rtnetlink
//! ([`Netlink`]), in the network namespace of the caller: the route is the FIB's own
//! choice for the backend (`ip route get`, so policy rules count), the interface's MAC
//! comes from its link, the backend's MAC from the neighbour table. A backend whose MAC
//! the kernel does not know yet is solicited ([`Netlink::solicit`]: the kernel sends an
//! ARP request or neighbour solicitation); the next refresh finds it. A stale entry is
//! solicited too, so the kernel confirms it: the datapath's packets never pass through
//! the kernel, so without that a backend that went away would keep a stale MAC (and its
//! slots) forever; with it, the entry fails after the kernel's probes (about 10 s with
//! the default `delay_first_probe_time` and `ucast_solicit`) and the next refresh takes
//! the backend out of rotation.
use std::{collections::BTreeMap, net::IpAddr};

pub use super::mac::{format_mac, parse_mac};
use super::{
    error::{NetError, chain},
    netlink::{Link, NeighbourState, Netlink, RouteKind},
};
use crate::model::runtime::Neighbour;

/// Why a DSR backend cannot be reached at layer 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreachable {
    NoRoute,
    /// Behind a router: DSR needs the backend on a directly connected network.
    Routed {
        via: IpAddr,
        iface: String,
    },
    /// On-link, but its MAC is not known yet (a solicitation was sent).
    Unresolved {
        iface: String,
    },
    /// On-link, and the kernel's probes got no answer (its neighbour entry failed): the
    /// backend is gone from the link, or stopped answering ARP/ND.
    Failed {
        iface: String,
    },
    /// Anything else, said in words: a route that drops, an address of this host, an
    /// interface without an Ethernet address, a lookup the kernel refused.
    Other(String),
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::NoRoute => f.write_str("no route to it"),
            Unreachable::Routed { via, iface } => write!(
                f,
                "reached through the router {via} on {iface}: DSR needs it on a directly connected network"
            ),
            Unreachable::Unresolved { iface } => write!(f, "its MAC on {iface} is not known yet"),
            Unreachable::Failed { iface } => write!(
                f,
                "it does not answer ARP on {iface} (the kernel's neighbour entry failed)"
            ),
            Unreachable::Other(s) => f.write_str(s),
        }
    }
}

/// What one backend's lookup ends with: where it is, why it cannot be reached, or an
/// error that is not about this backend (the connection is gone) and fails the lookup.
type Outcome = Result<Result<Neighbour, Unreachable>, NetError>;

/// A refusal by the kernel is about this backend; anything else (no errno: the
/// connection failed) is about all of them.
fn per_backend(e: NetError) -> Outcome {
    match e {
        NetError::Request { .. } if e.errno().is_none() => Err(e),
        e => Ok(Err(Unreachable::Other(chain(&e)))),
    }
}

/// The link with index `index`, asked once per lookup.
async fn link<'a>(
    nl: &Netlink,
    links: &'a mut BTreeMap<u32, Link>,
    index: u32,
) -> Result<&'a Link, NetError> {
    Ok(match links.entry(index) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => e.insert(nl.link_by_index(index).await?),
    })
}

async fn resolve_one(
    nl: &Netlink,
    links: &mut BTreeMap<u32, Link>,
    addr: IpAddr,
    solicit_missing: bool,
) -> Outcome {
    let route = match nl.route_get(addr).await {
        Ok(r) => r,
        Err(NetError::NetworkUnreachable { .. }) => return Ok(Err(Unreachable::NoRoute)),
        Err(e) => return per_backend(e),
    };
    match route.kind {
        RouteKind::Unicast => {}
        RouteKind::Local => {
            return Ok(Err(Unreachable::Other(
                "it is an address of this host".into(),
            )));
        }
        kind => {
            return Ok(Err(Unreachable::Other(format!(
                "the kernel's route to it is of type {kind}"
            ))));
        }
    }
    let Some(oif) = route.oif else {
        return Ok(Err(Unreachable::Other(
            "the kernel's route to it names no interface".into(),
        )));
    };
    let iface = match link(nl, links, oif).await {
        Ok(l) => l.clone(),
        Err(e) => return per_backend(e),
    };
    if let Some(via) = route.gateway {
        return Ok(Err(Unreachable::Routed {
            via,
            iface: iface.name,
        }));
    }
    let Some(src_mac) = iface.mac else {
        return Ok(Err(Unreachable::Other(format!(
            "{} has no Ethernet address",
            iface.name
        ))));
    };
    match nl.neighbour(oif, addr).await {
        Ok(Some(entry)) => {
            // The datapath's packets bypass the kernel, so nothing else would make it
            // check a stale entry: ask it to (it probes the neighbour, and marks the
            // entry failed if it no longer answers, which the next lookup sees).
            if solicit_missing
                && entry.state == NeighbourState::Stale
                && let Err(e) = nl.solicit(oif, addr).await
            {
                log::debug!("{}", chain(&e));
            }
            Ok(Ok(Neighbour {
                ifindex: oif,
                mac: entry.mac,
                src_mac,
            }))
        }
        Ok(None) => {
            // Failed (probes unanswered) or not known (no entry, or being resolved):
            // only the first takes the backend's connections elsewhere.
            let failed = matches!(
                nl.neighbour_state(oif, addr).await,
                Ok(Some(NeighbourState::Failed))
            );
            if solicit_missing && let Err(e) = nl.solicit(oif, addr).await {
                log::debug!("{}", chain(&e));
            }
            Ok(Err(if failed {
                Unreachable::Failed { iface: iface.name }
            } else {
                Unreachable::Unresolved { iface: iface.name }
            }))
        }
        Err(e) => per_backend(e),
    }
}

/// Looks up where each of `addrs` is reached. Unresolved on-link addresses are
/// solicited when `solicit_missing` is set. Fails only when the kernel cannot be asked
/// at all; a lookup the kernel refuses for one address is that address's
/// [`Unreachable::Other`].
pub async fn resolve_with(
    nl: &Netlink,
    addrs: &[IpAddr],
    solicit_missing: bool,
) -> Result<BTreeMap<IpAddr, Result<Neighbour, Unreachable>>, NetError> {
    let mut links = BTreeMap::new();
    let mut out = BTreeMap::new();
    for &a in addrs {
        let r = resolve_one(nl, &mut links, a, solicit_missing).await?;
        out.insert(a, r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn messages_operators_read_are_kept() {
        assert_eq!(Unreachable::NoRoute.to_string(), "no route to it");
        assert_eq!(
            Unreachable::Routed {
                via: "10.0.0.1".parse().unwrap(),
                iface: "eth0".into()
            }
            .to_string(),
            "reached through the router 10.0.0.1 on eth0: DSR needs it on a directly connected network"
        );
        assert_eq!(
            Unreachable::Unresolved {
                iface: "eth0".into()
            }
            .to_string(),
            "its MAC on eth0 is not known yet"
        );
    }

    #[test]
    fn kernel_refusals_are_per_backend_and_broken_connections_are_not() {
        let refused = NetError::Request {
            op: "asking the kernel for its route to 10.0.0.9".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        match per_backend(refused) {
            Ok(Err(Unreachable::Other(s))) => {
                assert!(
                    s.starts_with("asking the kernel for its route to 10.0.0.9: "),
                    "{s}"
                )
            }
            other => panic!("{other:?}"),
        }
        let closed = NetError::Request {
            op: "asking".into(),
            source: io::Error::new(io::ErrorKind::BrokenPipe, "closed"),
        };
        assert!(per_backend(closed).is_err());
        assert!(matches!(
            per_backend(NetError::NoSuchLinkIndex { index: 9 }),
            Ok(Err(Unreachable::Other(s))) if s == "no interface with index 9"
        ));
    }
}
