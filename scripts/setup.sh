#!/usr/bin/env bash
# One-shot, idempotent machine setup for building, testing, running the lab and
# benchmarking lb. Everything comes from Debian's packages and crates.io, following
# the verified route in ../shared/docs/toolchain.md:
#   - Debian's rustc-web 1.96 (+ rust-web-src) builds the eBPF crate with
#     RUSTC_BOOTSTRAP=1 and -Z build-std=core; it is linked into rustup as the
#     toolchain "lb-bpf" (rustup's own nightly has no rust-src and cannot fetch it).
#   - bpf-linker 0.13 built against LLVM 22 (the LLVM of rustc-web).
#   - rustup's stable (1.95) builds the userspace crates.
# It also checks the kernel prerequisites and mounts bpffs when it is missing.
# A second run changes nothing and takes about a second.
set -euo pipefail

readonly BPF_TOOLCHAIN=lb-bpf
readonly RUSTC_WEB_MINOR=1.96
readonly BPF_LINKER_VERSION=0.13.0
readonly LLVM_MAJOR=22

# Packages: build (rustc-web ...), tests and lab (iproute2 ... socat; prometheus for
# promtool, which checks the metrics exposition; keepalived and bird2 for the redundancy
# labs and tests: a VRRP pair, BGP/ECMP with BFD), benchmarks (haproxy and wrk; nftables
# and iperf3 serve both), the Debian package and its tests (dpkg-dev for cargo-deb's
# dependency computation, lintian, systemd for systemd-analyze verify, man-db to render
# the man pages), and the stats page's browser test (chromium, headless).
readonly PACKAGES=(
    rustc-web cargo-web rust-web-src "llvm-${LLVM_MAJOR}-dev"
    iproute2 ethtool nftables iperf3 nginx-light curl bpftool procps
    socat prometheus haproxy wrk keepalived bird2
    dpkg-dev lintian systemd systemd-container man-db chromium
)
# cargo-deb builds the Debian package (`cargo xtask deb`); 3.8.0 builds with rustc 1.95.
readonly CARGO_DEB_VERSION=3.8.0

say() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: error: %s\n' "$1" >&2
    [ $# -gt 1 ] && printf 'setup:   fix: %s\n' "$2" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, loads BPF and creates network namespaces)" \
    "run it again as root, e.g. with sudo"

# ---- kernel prerequisites -------------------------------------------------------
# CONFIG_BPF_SYSCALL: this sysctl exists only when the bpf() syscall is built in.
[ -e /proc/sys/kernel/unprivileged_bpf_disabled ] ||
    die "the kernel has no bpf() syscall (CONFIG_BPF_SYSCALL is off)" \
        "boot a kernel built with CONFIG_BPF_SYSCALL=y and CONFIG_BPF_JIT=y"
[ -r /sys/kernel/btf/vmlinux ] ||
    die "the kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing)" \
        "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf ||
        die "bpffs is not mounted on /sys/fs/bpf and mounting it failed" \
            "check that CONFIG_BPF_SYSCALL is on and run: mount -t bpf bpf /sys/fs/bpf"
    say "mounted bpffs on /sys/fs/bpf"
fi
[ -d /sys/class/net ] && ip netns list >/dev/null 2>&1 ||
    die "network namespaces are not usable (ip netns list failed)" \
        "install iproute2 and boot a kernel with CONFIG_NET_NS=y"

# ---- Debian packages --------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists of a fresh machine are stale (they offer rustc-web 1.85):
    # always refresh them before installing.
    apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed" "check the network access to deb.debian.org"
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed" "run it by hand to see apt's message"
    # nginx-light's package starts a system-wide nginx; the lab runs its own
    # instances inside namespaces, so keep the system one out of the way.
    if systemctl is-active --quiet nginx 2>/dev/null; then systemctl stop nginx || true; fi
    if systemctl is-active --quiet haproxy 2>/dev/null; then systemctl stop haproxy || true; fi
    # prometheus is installed for promtool (the metrics test parses lb's exposition with it).
    if systemctl is-active --quiet prometheus 2>/dev/null; then systemctl stop prometheus || true; fi
    # keepalived and BIRD run inside the labs' namespaces with their own files; a
    # system-wide instance would announce this host's routes or addresses.
    for unit in keepalived bird; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then systemctl stop "$unit" || true; fi
    done
fi

rustc_web_version=$(/usr/bin/rustc --version 2>/dev/null | awk '{print $2}')
case "$rustc_web_version" in
    "$RUSTC_WEB_MINOR".*) ;;
    *) die "Debian's /usr/bin/rustc is '${rustc_web_version:-missing}', lb's eBPF build needs ${RUSTC_WEB_MINOR}.x (rustc-web from bookworm-security)" \
        "apt-get update && apt-get install rustc-web cargo-web rust-web-src" ;;
esac

# ---- rust-src where build-std looks for it (sysroot /usr) -------------------------
src_dir="/usr/src/rustc-${rustc_web_version}"
[ -d "$src_dir/library/core" ] || die "rust-web-src is installed but $src_dir/library/core is missing" \
    "apt-get install --reinstall rust-web-src"
if [ "$(readlink /usr/lib/rustlib/src/rust 2>/dev/null)" != "$src_dir" ]; then
    mkdir -p /usr/lib/rustlib/src
    ln -sfn "$src_dir" /usr/lib/rustlib/src/rust
    say "linked /usr/lib/rustlib/src/rust -> $src_dir"
fi

# ---- rustup: stable for userspace, Debian's compiler as toolchain lb-bpf ----------
command -v rustup >/dev/null || die "rustup is not installed" "install rustup with a stable toolchain (1.95 or newer)"
if ! rustup toolchain list | grep -q "^${BPF_TOOLCHAIN}\b"; then
    rustup toolchain link "$BPF_TOOLCHAIN" /usr
    say "registered /usr (rustc ${rustc_web_version}) as rustup toolchain ${BPF_TOOLCHAIN}"
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# ---- bpf-linker built with the same LLVM major as rustc-web -----------------------
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if [ "$("$cargo_bin/bpf-linker" --version 2>/dev/null | awk '{print $2}')" != "$BPF_LINKER_VERSION" ]; then
    say "building bpf-linker ${BPF_LINKER_VERSION} against LLVM ${LLVM_MAJOR} (about a minute)"
    PATH="/usr/lib/llvm-${LLVM_MAJOR}/bin:$PATH" cargo install --quiet --locked bpf-linker \
        --version "$BPF_LINKER_VERSION" --no-default-features --features "llvm-${LLVM_MAJOR}" ||
        die "cargo install bpf-linker ${BPF_LINKER_VERSION} failed" "check access to crates.io and that llvm-${LLVM_MAJOR}-dev is installed"
fi

# ---- cargo-deb (the Debian package) ------------------------------------------------
if [ "$("$cargo_bin/cargo-deb" --version 2>/dev/null | awk '{print $NF}')" != "$CARGO_DEB_VERSION" ]; then
    say "building cargo-deb ${CARGO_DEB_VERSION} (about a minute)"
    cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION" ||
        die "cargo install cargo-deb ${CARGO_DEB_VERSION} failed" "check access to crates.io"
fi

say "ready (eBPF toolchain ${BPF_TOOLCHAIN} = rustc ${rustc_web_version}, bpf-linker ${BPF_LINKER_VERSION}, cargo-deb ${CARGO_DEB_VERSION}, bpffs mounted)"
