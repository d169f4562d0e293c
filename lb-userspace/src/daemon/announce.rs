//! `lb run --announce-table N`: the VIPs this node can serve, as routes of a kernel
//! routing table, for a routing daemon to announce by BGP (BIRD's kernel protocol with
//! `learn`, FRR's `redistribute table N`).
//!
//! While the daemon serves, every VIP of which at least one service has a backend in
//! rotation is a host route (`/32`, or `/128` for an IPv6 VIP) in table N, of type
//! blackhole and marked with lb's route protocol number [`PROTOCOL`]. A VIP none of
//! whose services has a usable backend is withdrawn at the next snapshot, and so is
//! every route of lb's protocol in the table that is not such a VIP (stale routes of a
//! crashed daemon, a VIP gone from the configuration).
//!
//! - The routes are only for announcing: nothing but the routing daemon reads table N
//!   (no `ip rule` points at it), so their type decides nothing for packets. A blackhole
//!   needs no interface and no address on the node, and BIRD 2.0.12 imports it (as it
//!   does unicast routes; `local` routes it skips).
//! - The protocol number is lb's own, not `kernel` (2) — BIRD's `learn` skips kernel
//!   routes — and not one of /etc/iproute2/rt_protos or FRR's 186–198: 252.
//! - A SIGTERM/SIGINT withdraws everything at once, before the grace (`--stop-grace-ms`),
//!   so the peers take the traffic while this node still forwards what reaches it.
//!   SIGUSR2 and a hand-over (`--takeover`) leave the routes as they are: the datapath
//!   keeps forwarding, and the next daemon reconciles the table when it serves. A crash
//!   leaves them too, for the same reason.
//!
//! The reconciliation runs after every published snapshot and every [`RESYNC`], so a
//! route removed or changed by hand comes back. A daemon owns every route of protocol
//! 252 in its table: two instances on one host need a table each.
use std::{collections::BTreeSet, net::IpAddr, sync::Arc, time::Duration};

use super::{Context, controller::Snapshot};
use crate::net::{
    NetError, Netlink,
    netlink::{RouteKind, RouteTarget, TableRoute},
};

/// The route protocol (`rtm_protocol`) of lb's announcement routes: `ip route show
/// table N proto 252`, or `proto lb` with `252 lb` in /etc/iproute2/rt_protos.d/lb.conf.
pub const PROTOCOL: u8 = 252;

/// How often the table is compared with what it should hold even without a change.
pub const RESYNC: Duration = Duration::from_secs(5);

/// Checks an `--announce-table` number: a table of its own, not one the kernel routes
/// by (main, local, default) and not 0 (unspecified).
pub fn check_table(table: u32) -> Result<u32, String> {
    match table {
        0 => Err("table 0 is not a routing table: use 1..=252 or 256 and above".into()),
        253..=255 => Err(format!(
            "table {table} is one the kernel routes by (253 default, 254 main, 255 local): give lb a table of its own, e.g. 100, and import that one into BIRD (kernel table 100) or FRR (redistribute table 100)"
        )),
        t => Ok(t),
    }
}

/// The VIPs to announce: those with at least one service that has a backend in
/// rotation.
pub fn wanted(snapshot: &Snapshot) -> BTreeSet<IpAddr> {
    snapshot
        .runtime
        .services()
        .filter(|s| !snapshot.rotation(&s.config.key()).is_empty())
        .map(|s| s.config.vip)
        .collect()
}

fn host_len(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// What reconciling a table takes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Host routes to write (missing, or present in another form).
    pub write: Vec<IpAddr>,
    /// Routes of lb's protocol to delete: (prefix, length).
    pub delete: Vec<(IpAddr, u8)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.delete.is_empty()
    }
}

/// The changes that make `present` (lb's routes of the table) hold exactly `wanted`.
pub fn plan(present: &[TableRoute], wanted: &BTreeSet<IpAddr>) -> Plan {
    let is_ours = |r: &TableRoute| {
        r.kind == RouteKind::Blackhole
            && r.prefix_len == host_len(r.dst)
            && r.metric.is_none_or(|m| m == 0)
    };
    let good: BTreeSet<IpAddr> = present
        .iter()
        .filter(|r| is_ours(r) && wanted.contains(&r.dst))
        .map(|r| r.dst)
        .collect();
    Plan {
        write: wanted.difference(&good).copied().collect(),
        delete: present
            .iter()
            .filter(|r| !(is_ours(r) && wanted.contains(&r.dst)))
            .map(|r| (r.dst, r.prefix_len))
            .collect(),
    }
}

/// Writes and deletes lb's routes in one table.
#[derive(Clone, Debug)]
pub struct Announcer {
    nl: Netlink,
    table: u32,
}

impl Announcer {
    pub fn new(nl: Netlink, table: u32) -> Self {
        Announcer { nl, table }
    }

    /// Makes the table hold exactly the VIPs `snapshot` can serve; logs every change.
    pub async fn reconcile(&self, snapshot: &Snapshot) -> Result<(), NetError> {
        let wanted = wanted(snapshot);
        let present = self.nl.routes(self.table, PROTOCOL).await?;
        let plan = plan(&present, &wanted);
        let table = self.table;
        // Deletions first: a route of the same prefix in another form is replaced.
        for (dst, len) in &plan.delete {
            if self.nl.route_delete(table, PROTOCOL, *dst, *len).await? {
                let why = match dst {
                    dst if snapshot.runtime.services().any(|s| s.config.vip == *dst) => {
                        if *len == host_len(*dst) && wanted.contains(dst) {
                            "it was not lb's blackhole route: written again"
                        } else {
                            "no service of the VIP has a backend in rotation"
                        }
                    }
                    _ => "not a VIP of the running configuration",
                };
                log::info!("withdrew {dst}/{len} from routing table {table}: {why}");
            }
        }
        for dst in &plan.write {
            self.nl
                .route_replace(
                    table,
                    PROTOCOL,
                    *dst,
                    host_len(*dst),
                    RouteTarget::Blackhole,
                )
                .await?;
            log::info!(
                "announcing {dst}/{} in routing table {table}: a backend is in rotation",
                host_len(*dst)
            );
        }
        Ok(())
    }

    /// Ends the announcing `task` ([`run`]), then withdraws every route (a stop).
    pub async fn stop(&self, task: tokio::task::JoinHandle<()>) {
        task.abort();
        let _ = task.await;
        match self.withdraw_all().await {
            Ok(n) => log::info!(
                "withdrew {n} announced VIPs from routing table {}",
                self.table
            ),
            Err(e) => log::error!(
                "withdrawing the announced VIPs from routing table {}: {e}",
                self.table
            ),
        }
    }

    /// Withdraws every route of lb's protocol from the table; returns how many.
    pub async fn withdraw_all(&self) -> Result<usize, NetError> {
        let present = self.nl.routes(self.table, PROTOCOL).await?;
        let mut n = 0;
        for r in &present {
            if self
                .nl
                .route_delete(self.table, PROTOCOL, r.dst, r.prefix_len)
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn table(&self) -> u32 {
        self.table
    }
}

/// The task: reconciles after every snapshot and every [`RESYNC`], while serving. It
/// starts once the daemon serves; once it stops serving (a stop has begun), it leaves
/// the table alone: a SIGTERM withdraws everything ([`Announcer::withdraw_all`]), a
/// SIGUSR2 leaves the routes to the next daemon.
pub async fn run(ctx: Context, announcer: Announcer) {
    let mut snapshots = ctx.subscribe();
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot: Arc<Snapshot> = snapshots.borrow_and_update().clone();
        if !ctx.lifecycle.status().serving {
            return;
        }
        if let Err(e) = announcer.reconcile(&snapshot).await {
            log::warn!(
                "announcing the VIPs in routing table {}: {e} (retrying in {} s)",
                announcer.table(),
                RESYNC.as_secs()
            );
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::{
        config::Config,
        daemon::controller::Neighbours,
        health::Health,
        model::runtime::{Neighbour, Runtime},
    };

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn route(dst: &str, len: u8, kind: RouteKind) -> TableRoute {
        TableRoute {
            dst: v4(dst),
            prefix_len: len,
            kind,
            oif: None,
            gateway: None,
            table: 100,
            protocol: PROTOCOL,
            metric: None,
        }
    }

    #[test]
    fn only_tables_of_their_own_are_accepted() {
        assert_eq!(check_table(100), Ok(100));
        assert_eq!(check_table(252), Ok(252));
        assert_eq!(check_table(1000), Ok(1000));
        for t in [0, 253, 254, 255] {
            assert!(check_table(t).is_err(), "{t}");
        }
        assert!(check_table(254).unwrap_err().contains("254 main"));
    }

    #[test]
    fn the_plan_writes_what_is_missing_and_deletes_the_rest() {
        let wanted: BTreeSet<IpAddr> = [v4("10.100.0.10"), v4("10.100.0.20")].into();
        let present = [
            route("10.100.0.10", 32, RouteKind::Blackhole),
            // A wanted VIP in another form (edited by hand): replaced.
            route("10.100.0.20", 32, RouteKind::Unicast),
            // Stale: a VIP no longer served, and a prefix lb never writes.
            route("10.100.0.30", 32, RouteKind::Blackhole),
            route("10.100.0.0", 24, RouteKind::Blackhole),
        ];
        let p = plan(&present, &wanted);
        assert_eq!(p.write, vec![v4("10.100.0.20")]);
        assert_eq!(
            p.delete,
            vec![
                (v4("10.100.0.20"), 32),
                (v4("10.100.0.30"), 32),
                (v4("10.100.0.0"), 24)
            ]
        );
        let done = [
            route("10.100.0.10", 32, RouteKind::Blackhole),
            route("10.100.0.20", 32, RouteKind::Blackhole),
        ];
        assert!(plan(&done, &wanted).is_empty(), "nothing to do twice");
        let all_gone = plan(&done, &BTreeSet::new());
        assert!(all_gone.write.is_empty());
        assert_eq!(all_gone.delete.len(), 2);
    }

    const CONFIG: &str = r#"{"services": [
        {"vip": "10.100.0.10", "port": 80, "table_size": 251, "backends": [
            {"address": "10.0.0.11"}, {"address": "10.0.0.12"}]},
        {"vip": "10.100.0.10", "port": 443, "table_size": 251, "backends": [
            {"address": "10.0.0.11", "state": "maint"}]},
        {"vip": "10.100.0.20", "port": 80, "forwarding": "nat", "table_size": 251,
         "backends": [{"address": "10.1.0.11", "weight": 0}]},
        {"vip": "10.100.0.30", "port": 53, "protocol": "udp", "forwarding": "nat", "table_size": 251,
         "backends": [{"address": "10.1.0.11", "backup": true}]}]}"#;

    fn snapshot(neighbours: &[&str], down: &[&str]) -> Snapshot {
        let config = Config::parse(CONFIG).unwrap();
        let mut runtime = Runtime::from_config(&config, Health::Up).unwrap();
        let key = "10.100.0.10:80/tcp".parse().unwrap();
        for d in down {
            runtime.set_health(&key, format!("{d}:80").parse().unwrap(), Health::Down);
        }
        let neighbours: Neighbours = neighbours
            .iter()
            .map(|a| {
                let a: IpAddr = a.parse().unwrap();
                (
                    a,
                    Ok(Neighbour {
                        ifindex: 2,
                        mac: [2, 0, 0, 0, 0, 1],
                        src_mac: [2, 0, 0, 0, 0, 2],
                    }),
                )
            })
            .collect();
        Snapshot {
            runtime,
            health: Default::default(),
            neighbours,
        }
    }

    #[test]
    fn a_vip_is_wanted_while_one_of_its_services_has_a_backend_in_rotation() {
        // 10.100.0.20's only backend has weight 0; 10.100.0.30's is a backup, which
        // takes the traffic when there is no primary: it counts.
        let s = snapshot(&["10.0.0.11", "10.0.0.12"], &[]);
        assert_eq!(wanted(&s), [v4("10.100.0.10"), v4("10.100.0.30")].into());
        // One backend down: still served.
        let s = snapshot(&["10.0.0.11", "10.0.0.12"], &["10.0.0.11"]);
        assert!(wanted(&s).contains(&v4("10.100.0.10")));
        // Every backend of :80 down, and :443's in maintenance: withdrawn.
        let s = snapshot(&["10.0.0.11", "10.0.0.12"], &["10.0.0.11", "10.0.0.12"]);
        assert_eq!(wanted(&s), [v4("10.100.0.30")].into());
        // DSR backends whose MAC is unknown get no traffic: withdrawn as well.
        let s = snapshot(&[], &[]);
        assert_eq!(wanted(&s), [v4("10.100.0.30")].into());
    }
}
