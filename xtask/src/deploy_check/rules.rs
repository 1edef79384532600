//! The alerts component: the PrometheusRule's `spec` is a Prometheus rule
//! file, so it is extracted from the rendered manifests, checked with
//! `promtool check rules` and unit-tested with `promtool test rules` against
//! deploy/components/alerts/rules.test.yaml.

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::promql;

/// The rule file name rules.test.yaml refers to.
pub const RULE_FILE: &str = "oomtrace.rules.yaml";

/// One query found in the rules or the dashboard: where, and the PromQL.
#[derive(Debug, Clone)]
pub struct Query {
    pub at: String,
    pub expr: String,
}

/// The `spec` of the only PrometheusRule among `objects`.
pub fn rule_spec(objects: &[Value]) -> anyhow::Result<&Value> {
    let rules: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some("PrometheusRule"))
        .collect();
    ensure!(
        rules.len() == 1,
        "expected one PrometheusRule, found {}",
        rules.len()
    );
    Ok(&rules[0]["spec"])
}

/// Structural rules promtool does not enforce: unique alert names, a
/// severity, a summary and a description on every alert. Returns the
/// queries with where they are.
pub fn check_spec(spec: &Value, problems: &mut Vec<String>) -> Vec<Query> {
    let mut queries = Vec::new();
    let mut seen = BTreeSet::new();
    let groups = spec["groups"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if groups.is_empty() {
        problems.push("the PrometheusRule has no rule groups".to_owned());
    }
    for group in groups {
        let group_name = group["name"].as_str().unwrap_or("?");
        for rule in group["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .unwrap_or("?");
            let at = format!("rule {group_name}/{name}");
            if !seen.insert(name.to_owned()) {
                problems.push(format!("{at}: defined twice"));
            }
            if rule.get("alert").is_some() {
                if !matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ) {
                    problems.push(format!("{at}: severity is not critical, warning or info"));
                }
                for annotation in ["summary", "description"] {
                    if rule["annotations"][annotation]
                        .as_str()
                        .is_none_or(str::is_empty)
                    {
                        problems.push(format!("{at}: no {annotation} annotation"));
                    }
                }
            }
            match rule["expr"].as_str() {
                Some(expr) => queries.push(Query {
                    at,
                    expr: expr.to_owned(),
                }),
                None => problems.push(format!("{at}: no expr")),
            }
        }
    }
    queries
}

/// Writes the rule file into `dir`, checks it and runs the unit tests in
/// `tests` (a promtool test file naming [`RULE_FILE`]).
pub fn promtool_rules(spec: &Value, tests: &Path, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rules = dir.join(RULE_FILE);
    // JSON is YAML: promtool reads it as is.
    fs::write(&rules, serde_json::to_string_pretty(spec)?)
        .with_context(|| format!("writing {}", rules.display()))?;
    promtool(&["check", "rules"], &rules)?;
    let test_copy = dir.join("rules.test.yaml");
    fs::copy(tests, &test_copy)
        .with_context(|| format!("copying {} to {}", tests.display(), test_copy.display()))?;
    promtool(&["test", "rules"], &test_copy)?;
    Ok(())
}

/// Wraps queries as recording rules in `dir/<name>` and has promtool parse
/// them (a dashboard's queries have no other parser here).
pub fn promtool_parse(queries: &[Query], dir: &Path, name: &str) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("oomtrace_check:query_{i}"), "expr": q.expr}))
        .collect();
    let file = dir.join(name);
    let text = serde_json::json!({"groups": [{"name": "parse-only", "rules": rules}]});
    fs::write(&file, serde_json::to_string_pretty(&text)?)
        .with_context(|| format!("writing {}", file.display()))?;
    promtool(&["check", "rules"], &file).with_context(|| {
        let listing: Vec<String> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| format!("query_{i} = {}", q.at))
            .collect();
        format!("promtool rejects a query ({})", listing.join("; "))
    })
}

fn promtool(args: &[&str], file: &Path) -> anyhow::Result<()> {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .context("running promtool (package prometheus; `cargo xtask setup` installs it)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "promtool {} {}:\n{}",
            args.join(" "),
            file.display(),
            text.trim()
        );
    }
    println!(
        "deploy-check: promtool {} {}: {}",
        args.join(" "),
        file.file_name().unwrap_or_default().to_string_lossy(),
        text.lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("ok")
    );
    Ok(())
}

/// The names each query uses, checked against the contract; collects the
/// metrics and the agent's labels used.
pub fn check_queries(
    queries: &[Query],
    used: &mut BTreeSet<String>,
    used_labels: &mut BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    for q in queries {
        match promql::names(&q.expr) {
            Ok(names) => {
                super::contract::check_names(&q.at, &names, problems);
                used_labels.extend(super::contract::agent_labels(&names));
                used.extend(names.metrics);
            }
            Err(e) => problems.push(format!("{}: {e}", q.at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn alerts_need_severity_summary_and_description() {
        let spec = json!({"groups": [{"name": "g", "rules": [
            {"alert": "A", "expr": "up == 0", "labels": {"severity": "warning"},
             "annotations": {"summary": "s", "description": "d"}},
            {"alert": "A", "expr": "up == 0", "labels": {"severity": "page"},
             "annotations": {"summary": "s"}},
            {"record": "r:up", "expr": "sum(up)"},
            {"alert": "B"}
        ]}]});
        let mut problems = Vec::new();
        let queries = check_spec(&spec, &mut problems);
        assert_eq!(
            problems,
            [
                "rule g/A: defined twice",
                "rule g/A: severity is not critical, warning or info",
                "rule g/A: no description annotation",
                "rule g/B: severity is not critical, warning or info",
                "rule g/B: no summary annotation",
                "rule g/B: no description annotation",
                "rule g/B: no expr",
            ]
        );
        assert_eq!(queries.len(), 3);
    }

    #[test]
    fn exactly_one_prometheus_rule() {
        let rule = json!({"kind": "PrometheusRule", "spec": {"groups": []}});
        let cm = json!({"kind": "ConfigMap"});
        assert!(rule_spec(std::slice::from_ref(&cm)).is_err());
        assert!(rule_spec(&[rule.clone(), cm]).is_ok());
        assert!(rule_spec(&[rule.clone(), rule]).is_err());
    }
}
