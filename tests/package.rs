//! The Debian package `lb` (built by `cargo xtask deb` into target/debian/, which
//! `cargo xtask test` runs first): what it installs, that lintian reports no error, that
//! `systemd-analyze verify` accepts its unit where the package's files are in place (a
//! private mount namespace with the package's /usr over the host's), and that its
//! maintainer scripts never restart lb (which would detach the datapath) but hand over
//! with SIGUSR2 and a start that adopts.
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use support::running::LB;

/// The one .deb in target/debian/.
fn deb() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: build the package first with `cargo xtask deb`",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    match debs.as_slice() {
        [one] => one.clone(),
        other => panic!(
            "expected one .deb in {}, found {other:?}: run `cargo xtask deb`",
            dir.display()
        ),
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` (installed by scripts/setup.sh); its output and all it printed.
fn said(cmd: &mut Command) -> (Output, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?} (scripts/setup.sh installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory of this test process, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("package-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The package unpacked (`dpkg-deb -x`: the files, `-e`: the control files).
fn unpack() -> (TempDir, PathBuf, PathBuf) {
    let tmp = TempDir::new("root");
    let root = tmp.0.join("root");
    let control = tmp.0.join("control");
    let deb = deb();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    (tmp, root, control)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn the_package_installs_lb_its_unit_config_man_pages_and_completions() {
    let (_tmp, root, control) = unpack();
    let info = text(&run(Command::new("dpkg-deb").arg("-f").arg(deb())));
    for field in [
        "Package: lb",
        "Version: 0.1.0-1",
        "Section: net",
        "Architecture: amd64",
    ] {
        assert!(info.contains(field), "control lacks `{field}`:\n{info}");
    }
    assert!(info.contains("Depends: libc6"), "{info}");

    let mut files = vec![
        "usr/bin/lb",
        "usr/lib/systemd/system/lb.service",
        "etc/default/lb",
        "etc/lb/lb.json",
        "usr/share/doc/lb/copyright",
        "usr/share/doc/lb/changelog.Debian.gz",
        "usr/share/doc/lb/CONTROL.md",
        "usr/share/doc/lb/examples/grafana/lb-dashboard.json",
        "usr/share/doc/lb/examples/prometheus/lb-alerts.yml",
        "usr/share/bash-completion/completions/lb",
        "usr/share/zsh/vendor-completions/_lb",
        "usr/share/fish/vendor_completions.d/lb.fish",
        "usr/share/man/man1/lb.1.gz",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    // A man page for every subcommand (and sub-subcommand) `lb --help` lists.
    for sub in [
        "run", "service", "backend", "stats", "conns", "reload", "status", "detach",
    ] {
        files.push(format!("usr/share/man/man1/lb-{sub}.1.gz"));
    }
    for sub in ["service-list", "service-add", "service-del", "backend-set"] {
        files.push(format!("usr/share/man/man1/lb-{sub}.1.gz"));
    }
    for f in &files {
        assert!(root.join(f).is_file(), "the package has no /{f}");
    }
    // The conffiles: both files under /etc, so an upgrade keeps the operator's edits.
    let conffiles = read(&control.join("conffiles"));
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/default/lb", "/etc/lb/lb.json"]
    );

    // The packaged lb is this tree's (the same version, commit and XDP object as the
    // lb the tests built), and it runs.
    let packaged = text(&run(Command::new(root.join("usr/bin/lb")).arg("--version")));
    let ours = text(&run(Command::new(LB).arg("--version")));
    assert_eq!(
        packaged, ours,
        "the package holds another lb: rebuild it with `cargo xtask deb`"
    );
    // The default configuration is one lb accepts.
    let config = read(&root.join("etc/lb/lb.json"));
    lb_userspace::config::Config::parse(&config)
        .unwrap_or_else(|e| panic!("the packaged /etc/lb/lb.json: {e}"));
    // Every man page renders without a warning from groff.
    for page in std::fs::read_dir(root.join("usr/share/man/man1")).expect("man1") {
        let page = page.expect("man page").path();
        let out = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0"));
        assert!(
            out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{} renders empty", page.display());
    }
    let lb_1 = text(&run(Command::new("man")
        .arg("-l")
        .arg(root.join("usr/share/man/man1/lb-run.1.gz"))));
    assert!(
        lb_1.contains("--takeover") && lb_1.contains("--metrics-addr"),
        "{lb_1}"
    );
    let bash = read(&root.join("usr/share/bash-completion/completions/lb"));
    assert!(
        bash.contains("--takeover"),
        "the bash completion knows lb run's flags"
    );
}

#[test]
fn lintian_reports_no_error() {
    let (out, report) = said(
        Command::new("lintian")
            .args(["--fail-on", "error", "--display-info"])
            .arg(deb()),
    );
    // Everything lintian says is shown; warnings and notes are reviewed, not failed on.
    eprintln!("lintian:\n{report}");
    assert!(out.status.success(), "lintian failed:\n{report}");
    assert!(
        !report.lines().any(|l| l.starts_with("E: ")),
        "lintian errors:\n{report}"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_with_the_package_in_place() {
    let (_tmp, root, _control) = unpack();
    // A private mount namespace where /usr is the package's /usr over the host's (an
    // overlay, read-only): the unit's binary and its man: documentation are where the
    // unit says, nothing of the host changes.
    const SECURITY: &str = "==== systemd-analyze security";
    let script = format!(
        "mount -t overlay lb-package -o lowerdir={}:/usr /usr && \
         systemd-analyze verify lb.service && \
         echo '{SECURITY}' && \
         systemd-analyze security --offline=yes lb.service",
        root.join("usr").display()
    );
    let (out, text) = said(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    eprintln!("{text}");
    assert!(out.status.success(), "systemd-analyze:\n{text}");
    // verify prints nothing about a unit that is fine (a warning is still exit 0).
    let (verify, security) = text.split_once(SECURITY).expect("both ran");
    assert!(
        !verify.contains("lb.service"),
        "systemd-analyze verify has remarks:\n{verify}"
    );
    // The hardening as systemd rates it (0 safest, 10 unhardened; 4.5 when written):
    // a change that loosens the unit shows here.
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for lb.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    assert!(
        exposure <= 4.5,
        "lb.service's exposure rose to {exposure}:\n{security}"
    );
}

#[test]
fn the_maintainer_scripts_hand_over_and_never_restart_lb() {
    let (_tmp, _root, control) = unpack();
    let postinst = read(&control.join("postinst"));
    let prerm = read(&control.join("prerm"));
    let postrm = read(&control.join("postrm"));
    for (name, script) in [
        ("postinst", &postinst),
        ("prerm", &prerm),
        ("postrm", &postrm),
    ] {
        assert!(script.starts_with("#!/bin/sh\n"), "{name}");
        assert!(!script.contains("#DEBHELPER#"), "{name}: token left in");
        // A restart (or try-restart) is a stop and a start: it would detach the datapath.
        for word in [
            "restart lb",
            "try-restart",
            "systemctl stop",
            "systemctl restart",
        ] {
            assert!(!script.contains(word), "{name} says `{word}`:\n{script}");
        }
        run(Command::new("sh").arg("-n").arg(control.join(name)));
    }
    // The upgrade: SIGUSR2 to the running daemon, then a start that adopts.
    let usr2 = postinst
        .find("systemctl kill --kill-whom=main --signal=SIGUSR2 lb.service")
        .expect("the postinst sends SIGUSR2 on upgrade");
    let start = postinst
        .find("systemctl start lb.service")
        .expect("the postinst starts lb again");
    assert!(usr2 < start, "{postinst}");
    // No start on a first install (no interface is configured yet): the start is for
    // upgrades only (a previous version in $2), and the unit is enabled again only if it
    // was (cargo-deb's "dont-enable" snippet).
    let upgrade_only = postinst
        .find(r#"[ "$1" = "configure" ] && [ -n "$2" ]"#)
        .expect("the hand-over is guarded by an upgrade");
    assert!(upgrade_only < usr2, "{postinst}");
    assert!(
        postinst.contains("if deb-systemd-helper debian-installed lb.service; then"),
        "{postinst}"
    );
    // prerm stops lb (detaching it) only when the package is removed, not on upgrade.
    assert!(
        prerm.contains("[ \"$1\" = remove ]")
            && prerm.contains("deb-systemd-invoke stop lb.service"),
        "{prerm}"
    );
}
