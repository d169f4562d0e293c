//! What this build of `lb` is: its version, the commit it was built from and the
//! SHA-256 of the XDP object it embeds (set by `build.rs`). `lb --version`, the
//! `lb_build_info` metric and the stats page show the same three.

/// The crate version (`0.1.0`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit built (12 hex digits), with `-dirty` when tracked files had
/// uncommitted changes, or `unknown` when the build was not in a git checkout.
pub const COMMIT: &str = env!("LB_GIT_COMMIT");

/// The SHA-256 of the embedded XDP object, in hex: the identity the pinned datapath
/// records (`LB_META`), so it tells which program an adoption keeps or replaces.
pub const OBJECT_SHA256: &str = env!("LB_OBJECT_SHA256");

/// `lb --version`'s text after the program name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit ",
    env!("LB_GIT_COMMIT"),
    "\nxdp object sha256 ",
    env!("LB_OBJECT_SHA256"),
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::object::{OBJECT, sha256};

    #[test]
    fn the_object_hash_is_the_embedded_objects() {
        let hex: String = sha256(OBJECT).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(OBJECT_SHA256, hex);
    }

    #[test]
    fn the_commit_is_hex_or_unknown() {
        let bare = COMMIT.strip_suffix("-dirty").unwrap_or(COMMIT);
        assert!(
            bare == "unknown" || (bare.len() == 12 && bare.chars().all(|c| c.is_ascii_hexdigit())),
            "{COMMIT}"
        );
    }
}
