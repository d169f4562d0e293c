//! What can go wrong when lb asks the kernel about the network.
use std::{io, net::IpAddr};

/// An rtnetlink request that failed, or an answer lb cannot use. The kernel's errno is
/// kept as the source (`io::Error::raw_os_error`).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A [`super::netlink::Netlink`] needs a tokio runtime to drive its socket.
    #[error("a netlink connection needs a tokio runtime: open it from inside one")]
    NoRuntime {
        #[source]
        source: tokio::runtime::TryCurrentError,
    },
    #[error("starting a tokio runtime to drive a netlink socket")]
    Runtime {
        #[source]
        source: io::Error,
    },
    #[error("opening a netlink socket (NETLINK_ROUTE)")]
    Open {
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request, or the connection is gone.
    #[error("{op}")]
    Request {
        /// What lb asked, e.g. "asking the kernel for the route to 10.0.0.1".
        op: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's FIB has no route to `dst` (ENETUNREACH).
    #[error("no route to {dst}: the kernel answers that its network is unreachable")]
    NetworkUnreachable { dst: IpAddr },
    #[error("no interface named {name}")]
    NoSuchLink { name: String },
    #[error("no interface with index {index}")]
    NoSuchLinkIndex { index: u32 },
    /// The XDP program on the interface was attached through a BPF link (BPF_LINK_CREATE):
    /// netlink cannot detach it (EBUSY); only closing the link does, i.e. the process
    /// that holds it ending, or unpinning a pinned link.
    #[error(
        "the XDP program on interface {ifindex} is attached through a BPF link held by a process: netlink cannot detach it"
    )]
    XdpHeldByLink { ifindex: u32 },
    /// A prefix with host bits set, or longer than the address.
    #[error("{dst}/{prefix_len} is not a network prefix")]
    BadPrefix { dst: IpAddr, prefix_len: u8 },
    /// A route lb was asked to write that the kernel cannot hold as given.
    #[error("{what}")]
    BadRoute { what: String },
    /// The kernel answered without something every answer of the kind carries.
    #[error("{op}: the kernel's answer has no {missing}")]
    Malformed { op: String, missing: &'static str },
}

impl NetError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Request { source, .. } | NetError::Open { source } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// `e` and its sources joined by ": ", as `{:#}` of anyhow prints them: for messages
/// kept as text (the reasons a backend gets no traffic).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
