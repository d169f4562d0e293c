//! What the kernel knows about the network: where DSR backends are reached.
pub mod neighbour;
