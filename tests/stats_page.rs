//! The live stats page (`/` on `--metrics-addr`) in a real browser: headless Chromium
//! (Debian's) runs in the lab's balancer namespace, opens the page once, and the test
//! reads what the page shows as it redraws itself: the numbers move with traffic and
//! match `lb stats`, a backend stopped in the lab turns DOWN with the check's reason, and
//! the build shown is this binary's. A screenshot is saved as target/stats-page.png.
mod support;

use std::{
    path::PathBuf,
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    browser::Browser,
    lab::Mode,
    running::{LB, QUICK_CHECK, Running, all_in_rotation},
};

const METRICS: &str = "127.0.0.1:9180";
const SERVICE: &str = "10.100.0.20:80/tcp";
const N: usize = 60;

/// What the page shows for SERVICE: its total row and its backend rows (text as shown).
const READ_PAGE: &str = r#"(() => {
  const t = document.querySelector('table[data-service="10.100.0.20:80/tcp"]');
  if (!t) return null;
  const cell = (row, f) => row.querySelector('[data-field="' + f + '"]').textContent;
  const row = (r) => ({
    health: cell(r, "health"), last_check: cell(r, "last_check"), since: cell(r, "since"),
    admin: cell(r, "admin"), weight: cell(r, "weight"), in_rotation: cell(r, "in_rotation"),
    conns: cell(r, "conns"), packets: cell(r, "packets"), packets_out: cell(r, "packets_out"),
  });
  const backends = {};
  for (const r of t.querySelectorAll("tr[data-backend]")) backends[r.dataset.backend] = row(r);
  return {
    refreshed: Number(document.body.dataset.refreshed || 0),
    error: document.getElementById("error").textContent,
    build: document.getElementById("build").textContent,
    serving: document.getElementById("serving").textContent,
    total: row(t.querySelector('tr[data-row="service"]')),
    backends,
  };
})()"#;

/// A number as the page shows it ("1,234").
fn num(v: &Value) -> u64 {
    let text = v.as_str().unwrap_or_else(|| panic!("not text: {v}"));
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("`{text}` is not a number: {e}"))
}

/// Reads the page until `cond` holds (20 s at most); returns that reading.
fn wait_page(b: &mut Browser, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = b.eval(READ_PAGE);
        if !page.is_null() && cond(&page) {
            return page;
        }
        if Instant::now() >= deadline {
            let seen = b.eval(
                "({href: location.href, text: document.body ? document.body.innerText.slice(0, 2000) : null})",
            );
            panic!("the page never showed {what}; it shows: {page:#}\n{seen:#}");
        }
        sleep(Duration::from_millis(200));
    }
}

/// `lb stats --json`'s entry of SERVICE.
fn stats_of(r: &Running) -> Value {
    let out = r.cli(&["stats", "--json"]);
    assert!(out.status.success(), "lb stats failed");
    let all: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    all["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == SERVICE))
        .cloned()
        .expect("the service in lb stats")
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .to_path_buf()
}

#[test]
fn the_stats_page_follows_traffic_and_health_in_a_browser() {
    let mut r = Running::start_with_args(
        Mode::Nat,
        "page",
        |lab| lab.config(QUICK_CHECK, false),
        &["--metrics-addr", METRICS],
        "every backend up and in rotation",
        all_in_rotation,
    );
    let profile = r.lab.dir.join("chromium-profile");
    let launcher = r.lab.exec(&r.lab.lb_ns(), &[]);
    // Redraw every 500 ms (the page's default is 2 s).
    let url = format!("http://{METRICS}/?refresh=500");
    let mut browser = Browser::open(launcher, &profile, &url, (1600, 1000));

    let first = wait_page(&mut browser, "the service with 3 backends UP", |p| {
        p["backends"].as_object().is_some_and(|b| {
            b.len() == 3
                && b.values()
                    .all(|b| b["health"] == "UP" && b["in_rotation"] == "yes")
        })
    });
    assert_eq!(first["serving"], "serving", "{first:#}");
    assert_eq!(first["error"], "", "{first:#}");
    // The build shown is this binary's (`lb --version`).
    let version = std::process::Command::new(LB)
        .arg("--version")
        .output()
        .expect("lb --version");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let commit = version
        .lines()
        .find_map(|l| l.strip_prefix("commit "))
        .expect("a commit line in lb --version");
    let object = version
        .lines()
        .find_map(|l| l.strip_prefix("xdp object sha256 "))
        .expect("an object line in lb --version");
    let build = first["build"].as_str().expect("build text");
    assert!(
        build.contains(commit) && build.contains(object),
        "the page shows `{build}`, lb --version says:\n{version}"
    );

    // Traffic: the numbers the page shows grow by what was sent, without a reload.
    let before = num(&first["total"]["conns"]);
    let before_packets = num(&first["total"]["packets"]);
    let refreshed = first["refreshed"].as_u64().expect("refresh count");
    let spread = r.spread(N);
    assert_eq!(spread.get("error"), None, "requests failed: {spread:?}");
    let moved = wait_page(&mut browser, "the new connections", |p| {
        num(&p["total"]["conns"]) >= before + N as u64
    });
    assert!(
        num(&moved["total"]["packets"]) >= before_packets + 3 * N as u64,
        "each connection is at least 3 packets from the client: {moved:#}"
    );
    assert!(
        num(&moved["total"]["packets_out"]) > num(&first["total"]["packets_out"]),
        "NAT replies are counted: {moved:#}"
    );
    assert!(
        moved["refreshed"].as_u64().unwrap() > refreshed,
        "the page redrew itself: {moved:#}"
    );
    let per_backend: u64 = moved["backends"]
        .as_object()
        .unwrap()
        .values()
        .map(|b| num(&b["conns"]))
        .sum();
    assert_eq!(
        per_backend,
        num(&moved["total"]["conns"]),
        "the backends' connections add up to the service's: {moved:#}"
    );
    // With no more traffic, the page settles on exactly what `lb stats` says.
    let daemon = stats_of(&r)["traffic"]["conns"].as_u64().unwrap();
    wait_page(
        &mut browser,
        &format!("lb stats' {daemon} connections"),
        |p| num(&p["total"]["conns"]) == daemon,
    );

    // A backend stopped in the lab turns DOWN on the page, with the check's reason; the
    // others stay UP.
    let stopped = r.lab.backends[1].addr.to_string() + ":8080";
    r.lab.stop_backend(1);
    let down = wait_page(&mut browser, &format!("{stopped} DOWN"), |p| {
        p["backends"][&stopped]["health"] == "DOWN"
    });
    let row = &down["backends"][&stopped];
    assert_eq!(row["in_rotation"], "no", "{down:#}");
    let reason = row["last_check"].as_str().unwrap();
    assert!(
        reason != "ok" && reason != "pending" && !reason.is_empty(),
        "the last check's failure is shown: {down:#}"
    );
    for (b, v) in down["backends"].as_object().unwrap() {
        if *b != stopped {
            assert_eq!(v["health"], "UP", "{b} stays up: {down:#}");
        }
    }
    assert_eq!(down["total"]["health"], "2/3 up", "{down:#}");
    // More traffic goes to the other two, and the page shows it.
    let spread = r.spread(N);
    assert_eq!(spread.get("error"), None, "requests failed: {spread:?}");
    wait_page(&mut browser, "traffic after the backend went down", |p| {
        num(&p["total"]["conns"]) >= daemon + N as u64
    });

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    let path = target_dir().join("stats-page.png");
    std::fs::write(&path, &png).expect("saving the screenshot");
    eprintln!("screenshot of the stats page: {}", path.display());
}
