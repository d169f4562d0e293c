//! The packet path of `lb`, as a library so the production object (`src/main.rs`) and
//! the benchmark object (`src/bin/lb-bench.rs`) run the very same code.
//!
//! One module per concern, as Katran's `lib/bpf` is split: `maps` (every map),
//! `packet` (bounds-checked access and parsing), `csum` (incremental checksums),
//! `stats` (counters), `select` (connection table and Maglev lookup), `forward` (DSR and
//! NAT rewrites, FIB lookups), `icmp` (echo and errors), `cache` (the per-CPU flow
//! cache of the fast path), and `datapath` (the pipeline).
#![no_std]

pub mod conntrack;
pub mod csum;
pub mod datapath;
pub mod dsr;
pub mod egress;
pub mod flow_cache;
pub mod icmp;
pub mod maglev;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod route;
pub mod stats;
pub mod verdict;
