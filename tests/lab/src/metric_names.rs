//! Metric names: the ones lb exports, read from its source, and the ones a text (a
//! dashboard, alert rules) refers to.
//!
//! Used by `cargo xtask test` (xtask/src/monitoring.rs, which also holds the tests) and by
//! tests/observability.rs, which checks the referenced names against a real scrape.
use std::collections::BTreeSet;

/// The metric names a text refers to: every `lb_[a-z0-9_]+` token not part of a longer
/// word and not part of a recording rule's name (`lb:...`, `...:lb_x`, `lb_x:...`).
pub fn referenced(text: &str) -> BTreeSet<String> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let name = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(off) = text[i..].find("lb_") {
        let start = i + off;
        let mut end = start + 3;
        while end < b.len() && name(b[end]) {
            end += 1;
        }
        let standalone = (start == 0 || !word(b[start - 1])) && (end == b.len() || !word(b[end]));
        if standalone && end > start + 3 {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The datapath counter names (`pass_not_ipv4`, `drop_fragment`, ...), in order, from the
/// `counters!` invocation in lb-common/src/counters.rs: its `Variant = "name", kind;` lines.
pub fn counter_names(counters_rs: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for line in counters_rs.lines() {
        let line = line.trim();
        let Some((variant, rest)) = line.split_once('=') else {
            continue;
        };
        let variant = variant.trim();
        let Some(rest) = rest.trim().strip_prefix('"') else {
            continue;
        };
        let Some((name, kind)) = rest.split_once('"') else {
            continue;
        };
        let kind = kind.trim().trim_start_matches(',').trim();
        if variant.chars().all(|c| c.is_ascii_alphanumeric())
            && (kind == "outcome;" || kind == "event;")
        {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err("found no `Variant = \"name\", outcome|event;` line in counters.rs".into());
    }
    Ok(names)
}

/// The string literals of Rust source text, with their escapes left as written.
pub fn string_literals(src: &str) -> Vec<&str> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            // A char literal ('"', '\\', 'x'); a lifetime ('a) is a lone quote.
            b'\'' => {
                i += if b.get(i + 1) == Some(&b'\\') {
                    src.get(i + 3..)
                        .and_then(|r| r.find('\''))
                        .map_or(1, |n| n + 4)
                } else if b.get(i + 2) == Some(&b'\'') {
                    3
                } else {
                    1
                };
            }
            // A raw string: r"..." or r#"..."#.
            b'r' if (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'_')
                && matches!(b.get(i + 1), Some(b'"' | b'#')) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let open = i + 1 + hashes;
                if b.get(open) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close = format!("\"{}", "#".repeat(hashes));
                let end = src[open + 1..]
                    .find(&close)
                    .map_or(b.len(), |n| open + 1 + n);
                out.push(&src[open + 1..end]);
                i = end + close.len();
            }
            b'"' => {
                let start = i + 1;
                i = start;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push(&src[start..i.min(b.len())]);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// The metric names lb exports, from the source of lb-userspace/src/daemon/metrics.rs
/// (before its tests) and the counter names:
/// - every string literal that is a whole name (`"lb_backend_up"`);
/// - `"lb_datapath_{}_total"`, with each datapath counter's name;
/// - a literal with a named placeholder (`"lb_service_{suffix}"`), with each literal
///   that is a counter suffix (`"packets_in_total"`).
pub fn exported(metrics_rs: &str, counters: &[String]) -> Result<BTreeSet<String>, String> {
    let code = metrics_rs
        .split("#[cfg(test)]")
        .next()
        .unwrap_or(metrics_rs);
    let literals = string_literals(code);
    let is_name = |s: &str| {
        s.len() > 3
            && s.starts_with("lb_")
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    };
    let suffixes: Vec<&str> = literals
        .iter()
        .copied()
        .filter(|s| {
            s.ends_with("_total")
                && !s.starts_with("lb_")
                && s.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
        })
        .collect();
    let mut out = BTreeSet::new();
    for lit in &literals {
        if is_name(lit) {
            out.insert(lit.to_string());
            continue;
        }
        let Some((prefix, rest)) = lit.split_once('{') else {
            continue;
        };
        let Some((placeholder, suffix)) = rest.split_once('}') else {
            continue;
        };
        if !prefix.starts_with("lb_") || suffix.contains('{') {
            continue;
        }
        let fill: Vec<&str> = if placeholder.is_empty() {
            counters.iter().map(String::as_str).collect()
        } else {
            suffixes.clone()
        };
        for f in fill {
            let name = format!("{prefix}{f}{suffix}");
            if !is_name(&name) {
                return Err(format!(
                    "{lit:?} with {f:?} gives {name:?}, not a metric name"
                ));
            }
            out.insert(name);
        }
    }
    for sure in ["lb_build_info", "lb_datapath_tx_total", "lb_backend_up"] {
        if !out.contains(sure) {
            return Err(format!(
                "read {} names from metrics.rs, but not {sure}: has the way it names metrics changed?",
                out.len()
            ));
        }
    }
    Ok(out)
}
