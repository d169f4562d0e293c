//! Global datapath counters (the per-CPU `STATS` array).
//!
//! Two kinds:
//! - **outcomes**: every packet bumps exactly one, so their sum is the number of
//!   packets the program saw;
//! - **events**: extra facts about some packets (a new flow, a re-pick, an ICMP error
//!   sent to a backend, ...), counted next to their packet's outcome.
//!
//! The names are a contract: `lb stats` and the metrics endpoint print them.

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, $kind:ident; )*) => {
        /// Index into the global per-CPU `STATS` array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant),*];
            /// Number of counters; the length of the `STATS` map.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The stable name used by `lb stats` and the metrics endpoint.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }

            /// Whether this counter is a packet outcome (exactly one per packet).
            pub const fn is_outcome(self) -> bool {
                match self { $(Counter::$variant => counters!(@kind $kind),)* }
            }

            /// One-line description (the first doc line).
            pub const fn help(self) -> &'static str {
                match self { $(Counter::$variant => counters!(@first $($doc)*),)* }
            }
        }
    };
    (@kind outcome) => { true };
    (@kind event) => { false };
    (@first $first:literal $($rest:literal)*) => { $first.trim_ascii() };
}

counters! {
    // ---- outcomes: passed to the kernel untouched ----
    /// Neither IPv4 nor IPv6 (ARP, ...), or shorter than an Ethernet header: passed.
    PassNotIpv4 = "pass_not_ipv4", outcome;
    /// More than one VLAN tag: passed.
    PassVlanNested = "pass_vlan_nested", outcome;
    /// IP not for a service, not a NAT reply, or too short to tell: passed.
    PassNotVip = "pass_not_vip", outcome;
    /// For a VIP address but no service on that port/protocol (or other ICMP): passed.
    PassVipOther = "pass_vip_other", outcome;
    /// NAT: next-hop MAC unknown; the translated packet goes to the kernel to forward.
    PassNoNeigh = "pass_no_neigh", outcome;
    /// A packet from a NAT backend's address:port addressed to this host (a health
    /// check's reply), or arriving where forwarding is off: not a balanced connection's
    /// reply, passed untranslated.
    PassNatLocal = "pass_nat_local", outcome;
    /// ICMPv6 neighbour discovery (router and neighbour solicitations and
    /// advertisements, redirects: types 133–137), to any address: passed untouched.
    PassNdp = "pass_ndp", outcome;
    // ---- outcomes: forwarded ----
    /// Sent back out of the ingress interface (XDP_TX).
    Tx = "tx", outcome;
    /// Sent out of another interface (XDP_REDIRECT).
    Redirect = "redirect", outcome;
    // ---- outcomes: dropped, one counter per reason ----
    /// For a VIP, but the IP version field is not the ethertype's (4 or 6).
    DropIpVersion = "drop_ip_version", outcome;
    /// For a VIP, but the IPv4 header length is below 20 bytes or past the frame.
    DropIpHeaderLen = "drop_ip_header_len", outcome;
    /// For a VIP, but the IPv4 total length is shorter than its header or longer than the
    /// frame, or the IPv6 payload length runs past the frame.
    DropIpTotalLen = "drop_ip_total_len", outcome;
    /// For a VIP, but a fragment (first or later): ports are not in every fragment.
    DropFragment = "drop_fragment", outcome;
    /// IPv6 to a VIP whose extension headers are truncated, run past the payload, are
    /// more than the datapath parses (4), or have hop-by-hop options after the first.
    DropIpv6ExtHeader = "drop_ipv6_ext_header", outcome;
    /// IPv6 to a VIP with a routing header that has segments left: the VIP is not the
    /// packet's final destination.
    DropIpv6Routing = "drop_ipv6_routing", outcome;
    /// For a VIP with TTL (IPv6: hop limit) 0 or 1.
    DropTtl = "drop_ttl", outcome;
    /// For a service, but the TCP/UDP header is truncated or inconsistent.
    DropL4Header = "drop_l4_header", outcome;
    /// ICMP or ICMPv6 to a VIP too short for its header or quoted packet; an ICMP or
    /// ICMPv6 error from a NAT backend's address whose quoted packet cannot be matched.
    DropIcmpHeader = "drop_icmp_header", outcome;
    /// The service has no usable backend (none ready, or all down).
    DropNoBackend = "drop_no_backend", outcome;
    /// DSR: the backend's MAC is not known yet.
    DropNoMac = "drop_no_mac", outcome;
    /// NAT: no route to the destination (or forwarding disabled on the interface).
    DropNoRoute = "drop_no_route", outcome;
    /// NAT: the packet is larger than the egress MTU.
    DropMtu = "drop_mtu", outcome;
    /// VLAN-tagged, but the outcome needs a route or another interface (unsupported).
    DropVlanUnsupported = "drop_vlan_unsupported", outcome;
    /// Internal inconsistency (a map entry the control plane should have written is missing).
    DropInternal = "drop_internal", outcome;
    // ---- events ----
    /// A packet of a known flow found in the connection table.
    FlowHit = "flow_hit", event;
    /// A packet of a known flow forwarded from the per-CPU flow cache (fast path).
    FlowCacheHit = "flow_cache_hit", event;
    /// A new flow got a backend and a connection-table entry (UDP: its first packet;
    /// TCP: the first packet after the SYN, which completes the handshake).
    FlowNew = "flow_new", event;
    /// A TCP SYN got a backend and a half-open slot, no connection-table entry.
    FlowSyn = "flow_syn", event;
    /// A connection-table entry idle past its timeout: its packet was placed afresh.
    FlowExpired = "flow_expired", event;
    /// A flow's backend was removed, down or in maintenance: it chose again.
    FlowRepick = "flow_repick", event;
    /// A TCP RST for an unknown flow: forwarded, no entry created.
    FlowRstNoEntry = "flow_rst_no_entry", event;
    /// A client's TCP SYN|ACK for an unknown flow (clients do not send those: a
    /// reflection): forwarded, no entry created.
    FlowSynAckNoEntry = "flow_synack_no_entry", event;
    /// Creating a connection-table entry failed.
    FlowInsertFailed = "flow_insert_failed", event;
    /// NAT: a backend's reply translated back to VIP:port.
    NatReply = "nat_reply", event;
    /// ICMP (ICMPv6) echo request to a VIP answered by the balancer.
    IcmpEchoReply = "icmp_echo_reply", event;
    /// ICMP error about a VIP flow forwarded to the flow's backend.
    IcmpErrorToBackend = "icmp_error_to_backend", event;
    /// NAT: ICMP error from a backend translated back to the client.
    IcmpErrorToClient = "icmp_error_to_client", event;
    /// An IPv6 packet to a service (or a NAT reply) carried extension headers the
    /// datapath skipped (hop-by-hop, destination options, a routing header with no
    /// segments left, an atomic fragment header): forwarded with them as they are.
    Ipv6ExtSkipped = "ipv6_ext_skipped", event;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order_with_unique_names() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} is out of order");
            assert!(!c.help().is_empty(), "{c:?} has no description");
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len(), "duplicate counter names");
    }

    #[test]
    fn outcome_names_say_what_happened() {
        for c in Counter::ALL {
            let named_as_outcome = ["pass_", "drop_", "tx", "redirect"]
                .iter()
                .any(|p| c.name().starts_with(p));
            assert_eq!(c.is_outcome(), named_as_outcome, "{c:?}");
        }
    }
}
