//! The packet path of `lb`, as a library so the production object (`src/main.rs`) and
//! the benchmark object (`src/bin/lb-bench.rs`) run the very same code.
//!
//! One module per concern, as Katran's `lib/bpf` is split. Listed from the bottom
//! layer up: each module imports only modules listed before it.
//! - `maps`: every map, and the plain lookups in them (`service`, `is_vip`, ...);
//! - `csum`: incremental Internet checksum updates;
//! - `stats`: the per-CPU counters;
//! - `verdict`: what happens to a packet, an XDP action and its outcome counter;
//! - `parse`: the one bounds check, and the Ethernet, VLAN, IPv4, TCP/UDP and ICMP headers;
//! - `egress`: the MACs a frame leaves with, and XDP_TX or XDP_REDIRECT;
//! - `dsr`: direct server return, a MAC rewrite towards the backend;
//! - `route`: the FIB next hop of a translated packet, and sending it there;
//! - `nat`: every NAT address and port rewrite, with its checksums and TTL;
//! - `maglev`: a flow's hash, and the backend its service's Maglev table gives it;
//! - `conntrack`: the connection tables, client flows and NAT reverse entries;
//! - `flow_cache`: the per-CPU cache that forwards established flows (the fast path);
//! - `icmp`: echo replies and ICMP errors for VIPs;
//! - `pipeline`: the program's entry, which ties the others together.
#![no_std]

pub mod conntrack;
pub mod csum;
pub mod dsr;
pub mod egress;
pub mod flow_cache;
pub mod icmp;
pub mod maglev;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod pipeline;
pub mod route;
pub mod stats;
pub mod verdict;
