//! Checks of the monitoring examples, run by `cargo xtask test`:
//! - promtool checks the alert rules and the scrape config, and runs the rules' unit
//!   tests (examples/prometheus/lb-alerts.test.yml);
//! - every PromQL expression of the Grafana dashboard parses (promtool again, with the
//!   dashboard's variables filled in);
//! - every metric the rules, their tests and the dashboard name is one lb exports (read
//!   from lb-userspace/src/daemon/metrics.rs and lb-common/src/counters.rs), so renaming
//!   a metric fails here; every drop reason is alerted on, and every datapath counter
//!   is on the dashboard.
use std::{collections::BTreeSet, io::ErrorKind, process::Command};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use lb_lab::metric_names;

use crate::util;

const RULES: &str = "examples/prometheus/lb-alerts.yml";
const RULE_TESTS: &str = "examples/prometheus/lb-alerts.test.yml";
const CONFIG: &str = "examples/prometheus/prometheus.yml";
const DASHBOARD: &str = "examples/grafana/lb-dashboard.json";
const METRICS_RS: &str = "lb-userspace/src/daemon/metrics.rs";
const COUNTERS_RS: &str = "lb-common/src/counters.rs";

pub fn check() -> Result<()> {
    match Command::new("promtool").arg("--version").output() {
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "promtool is not installed (it checks and tests the alert rules)\n  \
             fix: run `cargo xtask setup` (scripts/setup.sh installs Debian's `prometheus` \
             package, which provides promtool), or `apt-get install prometheus`"
        ),
        Err(e) => return Err(e).context("starting promtool"),
        Ok(_) => {}
    }
    promtool(&["check", "rules", RULES])?;
    promtool(&["test", "rules", RULE_TESTS])?;
    promtool(&["check", "config", CONFIG])?;
    dashboard_promql_parses()?;
    let files = [RULES, RULE_TESTS, DASHBOARD]
        .iter()
        .map(|f| Ok((*f, read(f)?)))
        .collect::<Result<Vec<_>>>()?;
    let problems = metric_name_problems(&read(METRICS_RS)?, &read(COUNTERS_RS)?, &files)?;
    if !problems.is_empty() {
        bail!("the monitoring examples:\n  {}", problems.join("\n  "));
    }
    println!("monitoring examples: every metric they name is exported");
    Ok(())
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(util::root().join(path)).with_context(|| format!("reading {path}"))
}

fn promtool(args: &[&str]) -> Result<()> {
    println!("promtool {}", args.join(" "));
    util::run(
        Command::new("promtool")
            .args(args)
            .current_dir(util::root()),
    )
}

/// Every `expr` of the dashboard, and every variable's query, as (a name saying where,
/// the PromQL with Grafana's variables replaced by values that parse).
fn dashboard_exprs(dashboard: &Value) -> Result<Vec<(String, String)>> {
    fn walk(v: &Value, panel: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let here = match (m.get("id"), m.get("refId")) {
                    (_, Some(Value::String(r))) => format!("{panel}_{r}"),
                    (Some(Value::Number(id)), _) if m.contains_key("gridPos") => {
                        format!("dashboard_panel_{id}")
                    }
                    _ => panel.to_string(),
                };
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push((here.clone(), e.clone()));
                }
                for (k, v) in m {
                    if k != "templating" {
                        walk(v, &here, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, panel, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    let vars = dashboard["templating"]["list"]
        .as_array()
        .ok_or_else(|| anyhow!("{DASHBOARD}: no templating.list"))?;
    let source = vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus");
    if !source {
        bail!("{DASHBOARD}: no `datasource` variable of Prometheus data sources");
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("?");
        let q = v["query"]
            .as_str()
            .or(v["query"]["query"].as_str())
            .ok_or_else(|| anyhow!("{DASHBOARD}: variable {name} has no query"))?;
        // label_values(SELECTOR, LABEL): the selector is the PromQL.
        let selector = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map_or(q, |(s, _)| s);
        out.push((format!("dashboard_variable_{name}"), selector.to_string()));
    }
    let ids: Vec<_> = out.iter().map(|(w, _)| w).collect();
    if ids.iter().collect::<BTreeSet<_>>().len() != ids.len() {
        bail!("{DASHBOARD}: two panels share an id, or a panel two refIds: {ids:?}");
    }
    Ok(out
        .into_iter()
        .map(|(w, e)| (w, fill_variables(&e)))
        .collect())
}

/// `$__rate_interval` and the other interval variables become `5m`; a template
/// variable (`$vip`, `${vip}`) becomes `.*`, which parses where it may appear: inside a
/// regex matcher's quotes.
fn fill_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let n = braced.find('}').unwrap_or(braced.len());
                (&braced[..n], n + 2)
            }
            None => {
                let n = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..n], n)
            }
        };
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            "" => "$",
            _ => ".*",
        });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

fn dashboard_promql_parses() -> Result<()> {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)?)
        .with_context(|| format!("{DASHBOARD} is not valid JSON"))?;
    let exprs = dashboard_exprs(&dashboard)?;
    if exprs.is_empty() {
        bail!("{DASHBOARD}: no expressions found");
    }
    // Each expression becomes a recording rule named after its panel and query.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (name, expr) in &exprs {
        rules.push_str(&format!(
            "      - record: {name}\n        expr: {}\n",
            serde_json::to_string(expr)?
        ));
    }
    let path = std::env::temp_dir().join(format!("lb-dashboard-exprs-{}.yml", std::process::id()));
    std::fs::write(&path, rules).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{DASHBOARD}: {} expressions, as recording rules in {}",
        exprs.len(),
        path.display()
    );
    let result = promtool(&["check", "rules", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    result.context("a PromQL expression of the dashboard does not parse (the rule is named after its panel id and query)")
}

/// What is wrong with the metric names of `files` ((path, text)): names lb does not
/// export, drop counters no rule or panel shows, counters the dashboard lacks.
fn metric_name_problems(
    metrics_rs: &str,
    counters_rs: &str,
    files: &[(&str, String)],
) -> Result<Vec<String>> {
    let counters =
        metric_names::counter_names(counters_rs).map_err(|e| anyhow!("{COUNTERS_RS}: {e}"))?;
    let exported =
        metric_names::exported(metrics_rs, &counters).map_err(|e| anyhow!("{METRICS_RS}: {e}"))?;
    let mut problems = Vec::new();
    for (path, text) in files {
        let names = metric_names::referenced(text);
        if names.is_empty() {
            problems.push(format!("{path}: names no lb_ metric"));
        }
        for n in names {
            if !exported.contains(&n) {
                problems.push(format!(
                    "{path}: {n} is not a metric lb exports (see {METRICS_RS} and {COUNTERS_RS})"
                ));
            }
        }
        for c in &counters {
            let name = format!("lb_datapath_{c}_total");
            let missing = !text.contains(&name);
            if *path == RULES && c.starts_with("drop_") && missing {
                problems.push(format!(
                    "{path}: no rule uses {name} (add the drop reason to lb:datapath_drops:rate5m)"
                ));
            }
            if *path == DASHBOARD && missing {
                problems.push(format!("{path}: no panel shows {name}"));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<(&'static str, String)> {
        [RULES, RULE_TESTS, DASHBOARD]
            .iter()
            .map(|f| (*f, read(f).unwrap()))
            .collect()
    }

    #[test]
    fn examples_use_only_exported_metrics() {
        let problems = metric_name_problems(
            &read(METRICS_RS).unwrap(),
            &read(COUNTERS_RS).unwrap(),
            &examples(),
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn a_renamed_metric_or_a_new_drop_reason_is_caught() {
        let metrics = read(METRICS_RS)
            .unwrap()
            .replace("\"lb_backend_in_rotation\"", "\"lb_backend_rotating\"");
        let problems =
            metric_name_problems(&metrics, &read(COUNTERS_RS).unwrap(), &examples()).unwrap();
        for file in [RULES, RULE_TESTS, DASHBOARD] {
            assert!(
                problems.contains(&format!(
                    "{file}: lb_backend_in_rotation is not a metric lb exports (see {METRICS_RS} and {COUNTERS_RS})"
                )),
                "{problems:#?}"
            );
        }
        let counters = read(COUNTERS_RS).unwrap().replace(
            "DropInternal = \"drop_internal\", outcome;",
            "DropInternal = \"drop_internal\", outcome;\n    DropNew = \"drop_new\", outcome;",
        );
        let problems =
            metric_name_problems(&read(METRICS_RS).unwrap(), &counters, &examples()).unwrap();
        assert_eq!(
            problems,
            [
                format!(
                    "{RULES}: no rule uses lb_datapath_drop_new_total (add the drop reason to lb:datapath_drops:rate5m)"
                ),
                format!("{DASHBOARD}: no panel shows lb_datapath_drop_new_total"),
            ]
        );
    }

    #[test]
    fn grafana_variables_become_parsable_values() {
        assert_eq!(
            fill_variables(r#"rate(x{vip=~"$vip",port=~"${port}"}[$__rate_interval]) $"#),
            r#"rate(x{vip=~".*",port=~".*"}[5m]) $"#
        );
    }

    #[test]
    fn references_are_whole_names_outside_recording_rules() {
        let text = r#"rate(lb_datapath_drop_ttl_total{instance=~"$i"}[5m]) / lb_conntrack_entries
            lb:datapath_drops:rate5m instance:lb_x:sum xlb_not "lb_build_info" lb_ lb_up2:x"#;
        let got: Vec<String> = metric_names::referenced(text).into_iter().collect();
        assert_eq!(
            got,
            [
                "lb_build_info",
                "lb_conntrack_entries",
                "lb_datapath_drop_ttl_total"
            ]
        );
    }

    #[test]
    fn literals_skip_comments_chars_and_lifetimes() {
        let src = r###"
            // "not this"
            fn f<'a>(x: &'a str) { x.replace('"', "\\\"").replace('\\', "b"); g('\'', "c") }
            let r = r#"raw "d""#; let s = "e\"f";
        "###;
        assert_eq!(
            metric_names::string_literals(src),
            ["\\\\\\\"", "b", "c", "raw \"d\"", "e\\\"f"]
        );
    }

    #[test]
    fn exported_names_expand_the_templates() {
        let src = r#"
            f.header("lb_build_info", "gauge", "x");
            let name = format!("lb_datapath_{}_total", c.name());
            ("packets_in_total", "Packets.", |t| t.packets), ("help text", "x", |t| t.x),
            let name = format!("lb_service_{suffix}");
            ("lb_backend_up", "Health: 1 up.", |b| b.up.into()),
            #[cfg(test)]
            assert!(text.contains("lb_not_a_metric"));
        "#;
        let counters = vec!["tx".to_string(), "drop_ttl".to_string()];
        let got: Vec<String> = metric_names::exported(src, &counters)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            got,
            [
                "lb_backend_up",
                "lb_build_info",
                "lb_datapath_drop_ttl_total",
                "lb_datapath_tx_total",
                "lb_service_packets_in_total"
            ]
        );
        // A rename that loses a well-known name is an error, not a shorter list.
        assert!(
            metric_names::exported(&src.replace("lb_build_info", "lb_info"), &counters).is_err()
        );
    }

    #[test]
    fn counter_names_come_from_the_macro_lines() {
        let src = r#"
            (@kind outcome) => { true };
            /// Sent back out (XDP_TX).
            Tx = "tx", outcome;
            DropTtl = "drop_ttl", outcome;
            FlowNew = "flow_new", event;
        "#;
        assert_eq!(
            metric_names::counter_names(src).unwrap(),
            ["tx", "drop_ttl", "flow_new"]
        );
        assert!(metric_names::counter_names("nothing here").is_err());
    }
}
