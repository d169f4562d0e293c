//! The control socket's wire format, byte for byte: request/response pairs recorded from
//! the daemon before its API became typed (commit 1ebdc6c, the same protocol as 341a9ec)
//! are replayed against today's daemon, which must answer each with the same line.
//!
//! `tests/fixtures/wire.txt` holds the pairs, `> request` then `< response`, in order
//! (one daemon, one connection, each request seeing the effects of the ones before).
//! A few values change from run to run (times, counters of packets the kernel happens to
//! send); [`normalize`] replaces them with 0 in both lines before comparing, and nothing
//! else: keys, key order, types and every other value must match exactly.
//!
//! Since then, on purpose: the operations `status` and `takeover` were added (the two
//! refusals that list the operations name them too; every other line is as recorded).
//!
//! To record the fixture again (only when the protocol changes on purpose, and say so in
//! docs/CONTROL.md): `LB_WIRE_RECORD=1 cargo test -p lb-userspace --features root-tests
//! --test wire`, which writes the responses of the running binary into the file.
#![cfg(feature = "root-tests")]

mod support;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use support::daemon::{Daemon, Scratch, topology};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/wire.txt")
}

/// The configuration the daemon starts with: DSR, NAT and UDP services, no health
/// checks (their results would depend on timing), a small connection table.
const CONFIG: &str = r#"{"conntrack": {"max_entries": 1024}, "services": [
  {"vip": "10.100.0.10", "port": 80, "table_size": 251, "health_check": {"kind": "none"},
   "backends": [{"address": "10.0.0.11"}, {"address": "10.0.0.12", "weight": 50},
                {"address": "10.0.0.13", "backup": true}]},
  {"vip": "10.100.0.10", "port": 53, "protocol": "udp", "table_size": 251,
   "backends": [{"address": "10.0.0.14"}]},
  {"vip": "10.100.0.20", "port": 8080, "forwarding": "nat", "table_size": 251,
   "persistence": true, "health_check": {"kind": "none"},
   "backends": [{"address": "10.1.0.11", "port": 80}, {"address": "10.1.0.12", "port": 80, "state": "drain"}]}
]}"#;

/// The requests, in order. Every operation, its options, and every kind of refusal the
/// socket gives for a request line.
const REQUESTS: &[&str] = &[
    r#"{"op":"list"}"#,
    r#"{"op":"stats"}"#,
    r#"{"op":"stats","rate":true}"#,
    r#"{"op":"stats","rate":false}"#,
    r#"{"op":"conns"}"#,
    r#"{"op":"conns","service":"10.100.0.10:80/tcp","backend":"10.0.0.11","limit":5}"#,
    r#"{"op":"conns","backend":"10.0.0.11:80"}"#,
    r#"{"op":"service_add","service":{"vip":"10.100.0.30","port":443,"table_size":509,"health_check":{"kind":"http","path":"/healthz","expect_status":"200-299","host":"example.org","body_contains":"ok","interval_ms":1500,"timeout_ms":700,"rise":3,"fall":4,"probe_port":8443},"backends":[{"address":"10.0.0.15","state":"maint"}]}}"#,
    r#"{"op":"service_add","service":{"vip":"10.100.0.30","port":443}}"#,
    r#"{"op":"service_add","service":{"vip":"10.100.0.31","port":80,"forwarding":"nat","scheduler":"maglev","health_check":{"kind":"tcp","probe_address":"10.1.0.99"},"backends":[{"address":"10.1.0.21","port":8080,"weight":7,"backup":true,"state":"maint"}]}}"#,
    r#"{"op":"list"}"#,
    r#"{"op":"backend_add","service":"10.100.0.10:80/tcp","backend":{"address":"10.0.0.16","weight":20}}"#,
    r#"{"op":"backend_add","service":"10.100.0.10:80/tcp","backend":{"address":"10.0.0.16"}}"#,
    r#"{"op":"backend_add","service":"10.100.0.10:80/tcp","backend":{"address":"10.0.0.17","port":81}}"#,
    r#"{"op":"backend_add","service":"10.9.9.9:80/tcp","backend":{"address":"10.0.0.17"}}"#,
    r#"{"op":"backend_set","service":"10.100.0.10:80/tcp","backend":"10.0.0.16","weight":0}"#,
    r#"{"op":"backend_set","service":"10.100.0.10:80/tcp","backend":"10.0.0.16:80","state":"drain"}"#,
    r#"{"op":"backend_set","service":"10.100.0.10:80/tcp","backend":"10.0.0.16","weight":30,"state":"ready"}"#,
    r#"{"op":"backend_set","service":"10.100.0.10:80/tcp","backend":"10.0.0.16"}"#,
    r#"{"op":"backend_set","service":"10.100.0.10:80/tcp","backend":"10.0.0.16","state":"up"}"#,
    r#"{"op":"backend_set","service":"10.100.0.10:80/tcp","backend":"10.0.0.99","weight":1}"#,
    r#"{"op":"backend_del","service":"10.100.0.10:80/tcp","backend":"10.0.0.16"}"#,
    r#"{"op":"backend_del","service":"10.100.0.10:80/tcp","backend":"10.0.0.16"}"#,
    r#"{"op":"service_del","service":"10.100.0.31:80/tcp"}"#,
    r#"{"op":"service_del","service":"10.100.0.31:80/tcp"}"#,
    r#"{"op":"stats"}"#,
    r#"{"op":"reload"}"#,
    r#"{"op":"list"}"#,
    r#"{not json"#,
    r#"[1, 2]"#,
    r#""list""#,
    r#"{"cmd":"list"}"#,
    r#"{"op":7}"#,
    r#"{"op":"drop_all"}"#,
    r#"{"op":"list","verbose":true}"#,
    r#"{"op":"reload","now":1}"#,
    r#"{"op":"service_del"}"#,
    r#"{"op":"service_del","service":"10.1.1.1:80"}"#,
    r#"{"op":"service_add","service":{"vip":"10.1.1.300","port":80}}"#,
    r#"{"op":"service_add","service":{"vip":"10.1.1.1","port":80,"table_size":1000}}"#,
    r#"{"op":"service_add","service":{"vip":"10.1.1.1","port":80,"colour":"red"}}"#,
    r#"{"op":"backend_add","service":"10.100.0.10:80/tcp","backend":{"address":"10.0.0"}}"#,
    r#"{"op":"backend_add","service":"10.100.0.10:80/tcp","backend":{"address":"10.0.0.1","weight":70000}}"#,
    r#"{"op":"backend_set","service":"10.100.0.10:80/tcp","backend":"10.0.0.11","weight":-1}"#,
    r#"{"op":"conns","limit":"ten"}"#,
    r#"{"op":"conns","service":"nope"}"#,
    r#"{"op":"stats","rate":"yes"}"#,
    r#"{"op":"list"}"#,
];

/// Replaces the values that differ from run to run with 0, in place in the text (so key
/// order and everything else stay as sent).
fn normalize(line: &str) -> String {
    let mut out = line.to_string();
    for key in ["last_change_unix_ms", "idle_s", "rate_window_s"] {
        out = zero_values_of(&out, &format!("\"{key}\":"));
    }
    // Datapath counters move with whatever the kernel sends on the lab's link.
    for object in ["\"counters\":{", "\"counters_per_s\":{"] {
        let mut from = 0;
        while let Some(i) = out[from..].find(object) {
            let start = from + i + object.len();
            let end = start + out[start..].find('}').expect("closing brace");
            let zeroed = out[start..end]
                .split(',')
                .map(|kv| match kv.split_once(':') {
                    Some((k, _)) => format!("{k}:0"),
                    None => kv.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            out.replace_range(start..end, &zeroed);
            from = start + zeroed.len();
        }
    }
    out
}

/// Replaces every number that follows `prefix` with 0.
fn zero_values_of(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        out.push_str(&rest[..i + prefix.len()]);
        rest = &rest[i + prefix.len()..];
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
            .unwrap_or(rest.len());
        out.push('0');
        rest = &rest[n..];
    }
    out.push_str(rest);
    out
}

#[test]
fn normalization_touches_only_the_run_dependent_values() {
    assert_eq!(
        normalize(
            r#"{"a":{"last_change_unix_ms":1764598000123,"idle_s":3},"counters":{"pass":12,"tx":0},"counters_per_s":{"pass":1.5e0},"rate_window_s":2.001,"weight":100}"#
        ),
        r#"{"a":{"last_change_unix_ms":0,"idle_s":0},"counters":{"pass":0,"tx":0},"counters_per_s":{"pass":0},"rate_window_s":0,"weight":100}"#
    );
}

/// Sends every request on one connection; returns each response line.
fn exchange(daemon: &Daemon) -> Vec<String> {
    let stream = UnixStream::connect(daemon.socket()).expect("connecting to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    REQUESTS
        .iter()
        .map(|req| {
            writer
                .write_all(format!("{req}\n").as_bytes())
                .expect("sending a request");
            let mut line = String::new();
            reader.read_line(&mut line).expect("reading a response");
            assert!(line.ends_with('\n'), "{req}: response not a whole line");
            line.trim_end_matches('\n').to_string()
        })
        .collect()
}

#[test]
fn recorded_requests_get_the_recorded_responses_byte_for_byte() {
    support::require_root();
    let ns = topology();
    let scratch = Scratch::new("wire");
    let config = scratch.write("lb.json", CONFIG);
    let daemon = Daemon::start(&ns, &["v0"], &config, &[]);
    let got = exchange(&daemon);
    if std::env::var_os("LB_WIRE_RECORD").is_some() {
        let mut text = String::new();
        for (req, resp) in REQUESTS.iter().zip(&got) {
            text += &format!("> {req}\n< {resp}\n");
        }
        std::fs::write(fixture(), text).expect("writing the fixture");
        panic!(
            "recorded {} pairs into {}: run again without LB_WIRE_RECORD to check",
            got.len(),
            fixture().display()
        );
    }
    let text = std::fs::read_to_string(fixture()).expect("reading tests/fixtures/wire.txt");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2 * REQUESTS.len(),
        "the fixture has a request and a response line for every request"
    );
    for (i, (pair, resp)) in lines.chunks(2).zip(&got).enumerate() {
        let req = pair[0].strip_prefix("> ").expect("a request line");
        let want = pair[1].strip_prefix("< ").expect("a response line");
        assert_eq!(req, REQUESTS[i], "request {i} differs from the fixture");
        assert_eq!(
            normalize(resp),
            normalize(want),
            "request {i}: {req}\nthe response differs from the recorded one"
        );
    }
}
