//! `cargo xtask deb`: the Debian package `lb` in target/debian/.
//!
//! 1. `lb-gen-docs` (a bin of lb-userspace) writes the man pages and shell completions,
//!    generated from the clap definitions, into target/lb-docs/ (xtask does not depend
//!    on lb-userspace: it builds before the eBPF toolchain exists);
//! 2. cargo-deb (installed by scripts/setup.sh) builds lb in release mode, with its
//!    embedded XDP object, and packs it with lb-userspace/debian/ (the systemd unit,
//!    /etc/default/lb, /etc/lb/lb.json, the maintainer scripts, changelog, copyright)
//!    as `[package.metadata.deb]` in lb-userspace/Cargo.toml lists them. (cargo-deb warns
//!    that the target/lb-docs assets are not under target/release/: they are not built
//!    by cargo, and are meant to be read as they are.)
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// Where the package goes.
pub const OUTPUT: &str = "target/debian";
/// Where lb-gen-docs writes (the package's assets read it from there).
const DOCS: &str = "target/lb-docs";

/// Builds the package; returns its path.
pub fn build() -> Result<PathBuf> {
    let root = util::root();
    if !Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!(
            "cargo-deb is not installed\n  fix: run `cargo xtask setup` (scripts/setup.sh installs it with cargo install)"
        );
    }
    util::step("man pages and shell completions (lb-gen-docs) into target/lb-docs");
    let docs = root.join(DOCS);
    // A debug build: the tests' build has compiled most of it already; cargo-deb makes
    // the one release build.
    util::cargo(&[
        "run",
        "--quiet",
        "--package",
        "lb-userspace",
        "--bin",
        "lb-gen-docs",
        "--",
        docs.to_str().context("a UTF-8 path")?,
    ])?;
    util::step("the Debian package (cargo deb) into target/debian");
    let output = root.join(OUTPUT);
    // Only this build's package is left there: the tests pick the one .deb.
    if output.exists() {
        std::fs::remove_dir_all(&output)
            .with_context(|| format!("removing {}", output.display()))?;
    }
    util::cargo(&[
        "deb",
        "--package",
        "lb-userspace",
        "--locked",
        "--output",
        output.to_str().context("a UTF-8 path")?,
    ])?;
    let debs: Vec<PathBuf> = std::fs::read_dir(&output)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    let [deb] = debs.as_slice() else {
        bail!("expected one .deb in {}, found {debs:?}", output.display());
    };
    println!("built {}", deb.display());
    Ok(deb.clone())
}
