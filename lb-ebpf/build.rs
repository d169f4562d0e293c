//! Tells rustc which BPF target architecture this object is for (aya-ebpf uses it
//! for per-architecture helpers) and rebuilds when the shared types change.
fn main() {
    println!("cargo:rerun-if-changed=../lb-common/src");
    aya_build::emit_bpf_target_arch_cfg().expect("emitting bpf_target_arch cfg");
}
