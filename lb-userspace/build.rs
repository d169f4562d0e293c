//! Builds the XDP program (`lb-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR/lb`, where `src/dataplane/object.rs` embeds it into the `lb` binary (and the
//! benchmark object in `OUT_DIR/lb-bench`, used only by `benches/`).
//!
//! It also sets what `lb --version`, the `lb_build_info` metric and the stats page show
//! (`src/version.rs`): `LB_GIT_COMMIT`, the commit built (`git rev-parse --short=12
//! HEAD`, `-dirty` when tracked files had uncommitted changes, `unknown` outside a git
//! checkout), and `LB_OBJECT_SHA256`, the SHA-256 of the embedded XDP object.
//!
//! The eBPF crate is compiled by Debian's rustc-web, registered with rustup as the
//! toolchain `lb-bpf` by `scripts/setup.sh`, with `-Z build-std=core` (rustup's own
//! nightly here has no `rust-src`); `RUSTC_BOOTSTRAP=1` unlocks `-Z` on that stable
//! compiler, so nobody has to export anything by hand. The flags are the ones
//! aya-build uses; unlike aya-build, the inner cargo gets one fixed target directory
//! (`target/ebpf`), so the object is compiled once and reused by every outer build
//! (check, clippy, test, release) instead of once per `OUT_DIR`.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::Digest as _;

const BPF_TOOLCHAIN: &str = "lb-bpf";
const BPF_TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "lb-ebpf";
const BINARIES: [&str; 5] = ["lb", "lb-bench", "xdp-pass", "xdp-fwd", "xdp-gen"];

fn main() {
    if let Err(e) = build() {
        // A build script's error is only shown in full through panic's message.
        panic!("\n{e}\n");
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let workspace = manifest_dir
        .parent()
        .ok_or("lb-userspace has no parent directory")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    for input in [
        "lb-ebpf/src",
        "lb-ebpf/Cargo.toml",
        "lb-common/src",
        "lb-common/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }

    check_toolchain()?;

    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("ebpf"))
        .ok_or("unexpected OUT_DIR layout")?;
    let arch = env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| e.to_string())?;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        // BPF ISA v3: 32-bit jumps and ALU (kernel 5.1+). rustc passes it on to
        // bpf-linker, which does the final code generation. (LLVM 22's
        // `allows-misaligned-mem-access` would load unaligned header fields in one go,
        // but it also merges stack stores into misaligned ones, which the verifier
        // rejects.)
        "-Ctarget-cpu=v3".into(),
    ]
    .join("\x1f");

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        BPF_TOOLCHAIN,
        "cargo",
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--release",
    ])
    .args([
        "--target",
        BPF_TARGET,
        "-Z",
        "build-std=core",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(workspace)
    .env("RUSTC_BOOTSTRAP", "1")
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's settings must not leak into the BPF build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "CARGO_ENCODED_RUSTFLAGS_OUTER",
    ] {
        cmd.env_remove(key);
    }
    let out = cmd.output().map_err(|e| format!("starting {cmd:?}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "building the XDP program ({PACKAGE}) failed:\n{stderr}"
        ));
    }
    // Compiler warnings of the BPF build would otherwise vanish with its output.
    let mut in_warning = false;
    for line in stderr.lines() {
        in_warning = (in_warning && !line.trim().is_empty()) || line.starts_with("warning");
        if in_warning {
            println!("cargo:warning={line}");
        }
    }
    for binary in BINARIES {
        let object = target_dir.join(BPF_TARGET).join("release").join(binary);
        copy(&object, &out_dir.join(binary))?;
    }
    let object = out_dir.join("lb");
    let bytes = std::fs::read(&object).map_err(|e| format!("reading {}: {e}", object.display()))?;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=LB_OBJECT_SHA256={sha}");
    println!(
        "cargo:rustc-env=LB_GIT_COMMIT={}",
        git_commit(workspace, &manifest_dir)
    );
    Ok(())
}

/// The commit being built, `-dirty` when tracked files differ from it, or `unknown`
/// (not a git checkout, or no git). Asks cargo to run this script again when HEAD moves
/// or the index changes; edits of the sources of the binary rerun it anyway (above).
fn git_commit(workspace: &Path, manifest_dir: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // A worktree has its own HEAD and index (--git-dir) and shares the refs
    // (--git-common-dir); both may be relative to the workspace.
    for (dir, files) in [
        ("--git-dir", &["HEAD", "index"][..]),
        ("--git-common-dir", &["packed-refs", "refs/heads"][..]),
    ] {
        if let Some(d) = git(&["rev-parse", dir]) {
            for f in files {
                println!(
                    "cargo:rerun-if-changed={}",
                    workspace.join(&d).join(f).display()
                );
            }
        }
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("Cargo.toml").display()
    );
    // `git diff --quiet` exits 1 when tracked files differ from HEAD (untracked files do
    // not count: they are not part of the build unless added).
    let dirty = Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .current_dir(workspace)
        .status()
        .is_ok_and(|s| s.code() == Some(1));
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// Fails early, with the fix, when the eBPF toolchain or bpf-linker is missing.
fn check_toolchain() -> Result<(), String> {
    let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("rustup").args(["run", BPF_TOOLCHAIN, "rustc", "--version"])) {
        return Err(format!(
            "the eBPF toolchain `{BPF_TOOLCHAIN}` (Debian's rustc-web) is not set up; \
             run `sudo scripts/setup.sh` (or `cargo xtask setup`) once, then build again"
        ));
    }
    if !ok(Command::new("bpf-linker").arg("--version")) {
        return Err(
            "bpf-linker is not installed or not on PATH; run `sudo scripts/setup.sh` \
                    (or `cargo xtask setup`) once, then build again"
                .into(),
        );
    }
    Ok(())
}
