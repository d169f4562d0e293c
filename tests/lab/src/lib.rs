//! lb's test lab, shared by the integration tests, the demo (`cargo xtask lab`) and the
//! benchmarks: no dependency on lb itself, so xtask builds it before any eBPF toolchain
//! exists.
//!
//! - [`bpffs`]: a bpffs of its own to pin lb's datapath in;
//! - [`lab`]: the built-in lab (DSR and NAT topologies with nginx and UDP echo backends);
//! - [`ha`]: balancer nodes running lb beside keepalived or BIRD, and the VRRP pair;
//! - [`ecmp`]: several lb nodes behind a BIRD router that spreads flows by ECMP;
//! - [`netns`]: a private network namespace for the calling thread;
//! - [`frame`]: building and reading Ethernet/IPv4/TCP/UDP/ICMP frames for packet tests;
//! - [`load`]: traffic that counts every failed request, and long-lived connections;
//! - [`metric_names`]: the metric names lb exports and those the monitoring examples use.
pub mod bpffs;
pub mod ecmp;
pub mod frame;
pub mod ha;
pub mod lab;
pub mod load;
pub mod metric_names;
pub mod netns;
