//! The packet path of `lb`, as a library so the production object (`src/main.rs`) and
//! the benchmark object (`src/bin/lb-bench.rs`) run the very same code.
//!
//! One module per concern, as Katran's `lib/bpf` is split. Listed from the bottom
//! layer up: each module imports only modules listed before it.
//! - `maps`: every map, and the plain lookups in them (`service`, `is_vip`, ...);
//! - `csum`: incremental Internet checksum updates;
//! - `stats`: the per-CPU counters;
//! - `verdict`: what happens to a packet, an XDP action and its outcome counter;
//! - `parse`: the one bounds check, and the Ethernet, VLAN, IPv4, IPv6 (with its
//!   extension headers), TCP/UDP and ICMP headers;
//! - `scratch`: per-CPU memory the IPv6 path keeps its 128-bit values in (BPF stack);
//! - `egress`: the MACs a frame leaves with, and XDP_TX or XDP_REDIRECT;
//! - `dsr`: direct server return, a MAC rewrite towards the backend;
//! - `route`: the FIB next hop of a translated packet, and sending it there;
//! - `nat`: every NAT address and port rewrite (IPv4 and NAT66), with its checksums and TTL;
//! - `family`: what differs between IPv4 and IPv6 (maps, keys, hashes, rewrites), behind
//!   one trait, so the modules below are written once for both;
//! - `maglev`: the backend a flow's hash gives it in its service's Maglev table;
//! - `conntrack`: the connection tables (client flows, half-open SYNs);
//! - `flow_cache`: the per-CPU cache that forwards established flows (the fast path);
//! - `icmp`: echo replies and ICMP errors for VIPs;
//! - `icmp6`: ICMPv6: neighbour discovery passed, echo replies, errors (through `icmp`);
//! - `pipeline`: the program's entry, which ties the others together.
#![no_std]

pub mod conntrack;
pub mod csum;
pub mod dsr;
pub mod egress;
pub mod family;
pub mod flow_cache;
pub mod icmp;
pub mod icmp6;
pub mod maglev;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod pipeline;
pub mod route;
pub mod scratch;
pub mod stats;
pub mod verdict;
