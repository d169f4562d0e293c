//! `lb-gen-docs DIR`: writes lb's man pages (`DIR/man/lb.1`, `lb-run.1`, one per
//! subcommand, by clap_mangen) and shell completions (`DIR/completions/lb.bash`, `_lb`,
//! `lb.fish`, by clap_complete), all generated from the clap definitions of
//! `lb_userspace::cli::Cli`, so they cannot drift from `lb --help`. `cargo xtask deb`
//! runs it before cargo-deb packs the files.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::CommandFactory as _;
use clap_complete::Shell;
use lb_userspace::{cli::Cli, version};

fn main() {
    if let Err(e) = run() {
        eprintln!("lb-gen-docs: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        bail!("usage: lb-gen-docs DIR (writes DIR/man/*.1 and DIR/completions/*)");
    };
    let dir = PathBuf::from(dir);
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        // Only our own output lives there: start from empty, so that a removed
        // subcommand's page does not linger.
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    write_man_pages(&man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut Cli::command(), "lb", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// What `lb.1` adds to clap's sections: where things are, and the other pages.
const LB_1_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/lb/lb.json\fR
The configuration (\fBlb run \-\-config\fR), re\-read by \fBlb reload\fR or SIGHUP
(systemctl reload lb).
.TP
\fI/etc/default/lb\fR
The interfaces and options the \fBlb.service\fR systemd unit runs \fBlb run\fR with.
.TP
\fI/run/lb/lb.sock\fR
The daemon's control socket (mode 0600), used by every other subcommand.
.TP
\fI/sys/fs/bpf/lb/NAME\fR
The pinned datapath of instance NAME: it keeps forwarding while the daemon is
stopped by SIGUSR2, crashed or being upgraded, and the next \fBlb run\fR adopts it.
.SH SIGNALS
SIGHUP reloads the configuration. SIGTERM and SIGINT stop the daemon and detach the
datapath (after \fB\-\-stop\-grace\-ms\fR). SIGUSR2 stops the daemon and leaves the
datapath running, for a restart or an upgrade without a traffic gap.
.SH STATS PAGE
With \fB\-\-metrics\-addr ADDR:PORT\fR, \fBlb run\fR serves Prometheus metrics at
/metrics, a live, read\-only stats page at / and its data at /stats.json.
.SH SEE ALSO
\fBlb\-run\fR(1), \fBlb\-service\fR(1), \fBlb\-backend\fR(1), \fBlb\-stats\fR(1),
\fBlb\-conns\fR(1), \fBlb\-reload\fR(1), \fBlb\-status\fR(1), \fBlb\-detach\fR(1),
\fBsystemctl\fR(1). The full documentation is in /usr/share/doc/lb/.
"#;

/// One page per command and subcommand (`lb.1`, `lb-run.1`, `lb-service-add.1`, ...),
/// with the version in the footer; `lb.1` also gets FILES, SIGNALS, STATS PAGE and SEE
/// ALSO sections.
fn write_man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The NAME line is "lb - <about>": the about without the name repeated.
    let cmd = Cli::command()
        .version(version::VERSION)
        .about("a Layer-4 load balancer whose packet path runs in XDP");
    clap_mangen::generate_to(cmd.clone(), dir).context("writing the man pages")?;
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .context("rendering lb.1")?;
    page.extend_from_slice(LB_1_EXTRA.as_bytes());
    let lb_1 = dir.join("lb.1");
    std::fs::write(&lb_1, page).with_context(|| format!("writing {}", lb_1.display()))?;
    let mut pages: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    for p in pages {
        println!("{}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_gets_a_page_and_every_shell_a_completion() {
        let dir = std::env::temp_dir().join(format!("lb-gen-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_man_pages(&dir).unwrap();
        let lb = std::fs::read_to_string(dir.join("lb.1")).unwrap();
        assert!(lb.starts_with(".ie"), "roff: {}", &lb[..80.min(lb.len())]);
        assert!(lb.contains(".TH lb 1"), "{lb}");
        assert!(
            lb.contains("lb \\- a Layer\\-4 load balancer") && lb.contains(".SH FILES"),
            "{lb}"
        );
        let run = std::fs::read_to_string(dir.join("lb-run.1")).unwrap();
        for flag in ["\\-\\-iface", "\\-\\-takeover", "\\-\\-metrics\\-addr"] {
            assert!(run.contains(flag), "lb-run.1 documents {flag}");
        }
        for sub in Cli::command().get_subcommands() {
            let page = dir.join(format!("lb-{}.1", sub.get_name()));
            assert!(page.exists(), "{} is missing", page.display());
        }
        let mut out = Vec::new();
        clap_complete::generate(Shell::Bash, &mut Cli::command(), "lb", &mut out);
        let bash = String::from_utf8(out).unwrap();
        assert!(
            bash.contains("--takeover") && bash.contains("backend"),
            "{bash}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
