//! What can go wrong between lb and the kernel's BPF objects, with the cause kept.
//!
//! Every variant says what lb was doing (`what`, e.g. "writing SERVICES") and keeps the
//! kernel's or aya's error as its source, so `{:#}` (anyhow in the binary) prints the whole
//! chain: "writing SERVICES: bpf_map_update_elem failed: ...".
use std::fmt::Display;

/// A datapath operation that failed (aya's errors are large: they are boxed).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading the object (creating its maps, relocating its programs).
    #[error("{what}")]
    Load {
        what: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// Loading, attaching or running a program.
    #[error("{what}")]
    Program {
        what: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Reading or writing a map.
    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// Pinning or opening a pinned object.
    #[error("{what}")]
    Pin {
        what: String,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// Opening, updating or removing an XDP link.
    #[error("{what}")]
    Link {
        what: String,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    /// A system call outside aya (batch map operations, mmap, bpffs).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The datapath's log ring buffer.
    #[error("{what}")]
    Log {
        what: String,
        #[source]
        source: Box<aya_log::Error>,
    },
    /// Another daemon of the instance holds its pin directory.
    #[error(
        "another lb run is using the pin directory {} (the same instance): stop it first, or start this one with --takeover to replace it",
        .pin_dir.display()
    )]
    InstanceRunning { pin_dir: std::path::PathBuf },
    /// The object or the kernel is not what lb expects (no cause beyond the message).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.context(...)` for the errors the datapath code meets: names what was being done and
/// keeps the error as the source.
pub trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

macro_rules! context_for {
    ($error:ty, $variant:ident) => {
        impl<T> Context<T> for std::result::Result<T, $error> {
            fn context(self, what: impl Display) -> Result<T> {
                self.map_err(|source| Error::$variant {
                    what: what.to_string(),
                    source: source.into(),
                })
            }
            fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
                self.map_err(|source| Error::$variant {
                    what: what().to_string(),
                    source: source.into(),
                })
            }
        }
    };
}

context_for!(aya::EbpfError, Load);
context_for!(aya::programs::ProgramError, Program);
context_for!(aya::maps::MapError, Map);
context_for!(aya::pin::PinError, Pin);
context_for!(aya::programs::links::LinkError, Link);
context_for!(std::io::Error, Io);
context_for!(aya_log::Error, Log);

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(what.to_string()))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(what().to_string()))
    }
}

/// An error and its causes, as one line ("a: b: c").
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out += &format!(": {c}");
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_what_was_done_and_why() {
        let e: Result<()> =
            Err(std::io::Error::from_raw_os_error(libc::EPERM)).context("mapping a Maglev table");
        let e = e.unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
        assert_eq!(
            chain(&e),
            "mapping a Maglev table: Operation not permitted (os error 1)"
        );
        let none: Option<u8> = None;
        assert_eq!(
            none.context("the eBPF object has no map X")
                .unwrap_err()
                .to_string(),
            "the eBPF object has no map X"
        );
    }
}
