//! Small process helpers for the xtask commands.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

pub fn step(what: &str) {
    println!("\n==> {what}");
}

/// Runs a command to completion; fails naming it when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs cargo (the same cargo that runs xtask) in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(root()))
}

/// Runs `scripts/setup.sh`: installs and checks what everything else needs.
pub fn setup() -> Result<()> {
    step("setup (scripts/setup.sh)");
    run(&mut Command::new(root().join("scripts/setup.sh")))
}
