//! The compiled XDP object, embedded at build time, and loading/attaching it.
use super::error::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};

/// The eBPF object built from `lb-ebpf` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The SHA-256 of an XDP object: what the pins record, so a daemon knows whether the
/// running program is the one it would load.
pub fn sha256(object: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(object).into()
}

/// Name of the XDP program inside [`OBJECT`] (also what `ip link` shows).
pub const PROGRAM: &str = "lb";

/// How many times a program load is tried while the verifier gives up with EAGAIN.
const LOAD_ATTEMPTS: u32 = 5;

/// Loads the XDP program `prog` (called `name`) into the kernel. The verifier gives up
/// with EAGAIN when a signal is pending for the loading thread (it checks as it goes, so
/// the larger a program, the likelier); as libbpf does, the load is then tried again,
/// up to [`LOAD_ATTEMPTS`] times.
pub fn load(prog: &mut Xdp, name: &str) -> Result<()> {
    let mut attempt = 1;
    loop {
        match prog.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            r => {
                return r.with_context(|| {
                    format!("the kernel verifier rejected the XDP program {name}")
                });
            }
        }
    }
}

/// The XDP program of a loaded object.
pub fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf
        .program_mut(PROGRAM)
        .with_context(|| format!("the eBPF object has no program named {PROGRAM}"))?;
    <&mut Xdp>::try_from(prog).with_context(|| format!("program {PROGRAM} is not an XDP program"))
}

/// Loads the programs `lb` tail-calls (`lb_common::TAIL_PROGRAMS`: IPv6, ICMPv6) and
/// puts them in its program array, so IPv6 packets find them. Objects without them
/// (an `LB_XDP_OBJECT` of another build) are left as they are.
pub fn install_tail_programs(
    ebpf: &mut Ebpf,
    programs: &mut aya::maps::ProgramArray<aya::maps::MapData>,
) -> Result<()> {
    for (slot, name) in lb_common::TAIL_PROGRAMS {
        let Some(prog) = ebpf.program_mut(name) else {
            continue;
        };
        let prog = <&mut Xdp>::try_from(prog)
            .with_context(|| format!("program {name} is not an XDP program"))?;
        if prog.fd().is_err() {
            load(prog, name)?;
        }
        let fd = prog
            .fd()
            .with_context(|| format!("the XDP program {name} has no file descriptor"))?;
        programs
            .set(slot, fd, 0)
            .with_context(|| format!("putting the XDP program {name} into PROGRAMS"))?;
    }
    Ok(())
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// In the driver (fastest); needs driver support.
    Native,
    /// Generic XDP in the kernel stack; works on every interface, slower.
    Skb,
}

impl AttachMode {
    pub fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// Attaches the loaded program to `iface`.
pub fn attach(ebpf: &mut Ebpf, iface: &str, mode: AttachMode) -> Result<()> {
    attach_program(program_mut(ebpf)?, iface, mode).map(drop)
}

/// Attaches `prog` to `iface`; returns the link's id (the program keeps the link).
pub fn attach_program(prog: &mut Xdp, iface: &str, mode: AttachMode) -> Result<XdpLinkId> {
    let hint = match mode {
        AttachMode::Native => " — the driver may not support native XDP; try `--xdp-mode skb`",
        AttachMode::Skb => "",
    };
    prog.attach(iface, mode.xdp_mode()).with_context(|| {
        format!("attaching the XDP program to {iface} in {mode:?} mode failed{hint}")
    })
}
