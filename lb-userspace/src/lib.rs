//! The `lb` control plane as a library: the binary (`src/main.rs`) is a thin shell over
//! [`cli`], and the integration tests under `../tests` use the library directly.
//!
//! Layers, from the operator down to the kernel:
//! - [`cli`]: the command line (clap), one module per subcommand, human output;
//! - [`api`]: the control-socket protocol: typed requests and responses, and a client;
//! - [`config`]: the JSON configuration contract and its checks;
//! - [`daemon`]: `lb run`: the controller (the one writer of the maps), the control
//!   socket, health scheduling, housekeeping, the metrics endpoint;
//! - [`model`]: pure logic: the running services and backends, the image the datapath
//!   should hold, the order of map writes, the Maglev builder;
//! - [`health`]: probes and the rise/fall state machine;
//! - [`net`]: what the kernel knows about the network (routes, neighbours, links);
//! - [`dataplane`]: the loaded XDP object and its maps (aya);
//! - [`version`]: the version, commit and XDP object hash of this build.
//!
//! Pure logic (`config`, `model`, `health::machine`, `api`) is covered by plain
//! `cargo test` without root.
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod model;
pub mod net;
pub mod version;
