//! What the kernel knows about the network, asked over rtnetlink: routes, neighbours,
//! links and the XDP programs attached to them ([`netlink`]); where DSR backends are
//! reached ([`neighbour`]).
pub mod error;
pub mod mac;
pub mod neighbour;
pub mod netlink;

pub use self::{error::NetError, netlink::Netlink};
