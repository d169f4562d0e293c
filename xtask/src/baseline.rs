//! Builds of an earlier commit, for benchmarks that compare it with this build side by
//! side: a detached git worktree under target/baseline/<commit>, built in release mode
//! with its own target directory (the first time takes a few minutes; later runs reuse
//! it).
use std::{path::PathBuf, process::Command};

use anyhow::{Result, ensure};

use crate::util::{root, run, step};

/// The `lb` binary of `commit`, built if needed.
pub fn lb_binary(commit: &str) -> Result<PathBuf> {
    let dir = root().join("target/baseline").join(commit);
    if !dir.join("Cargo.toml").exists() {
        step(&format!("checking out {commit} into {}", dir.display()));
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("git")
            .current_dir(root())
            .args(["worktree", "add", "--force", "--detach"])
            .arg(&dir)
            .arg(commit))?;
    }
    step(&format!("building lb at {commit} (release)"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).current_dir(&dir).args([
        "build",
        "--release",
        "--package",
        "lb-userspace",
    ]))?;
    let bin = dir.join("target/release/lb");
    ensure!(bin.exists(), "{} is missing after the build", bin.display());
    Ok(bin)
}

/// The eBPF object `name` (e.g. `lb`, the production program) of `commit`'s build, built
/// if needed: lb-userspace's build script leaves its objects in its `OUT_DIR`.
pub fn object(commit: &str, name: &str) -> Result<PathBuf> {
    lb_binary(commit)?;
    let build = root()
        .join("target/baseline")
        .join(commit)
        .join("target/release/build");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&build)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("lb-userspace-"))
        .map(|e| e.path().join("out").join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    let (_, path) = found
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no {name} object under {}", build.display()))?;
    Ok(path)
}
