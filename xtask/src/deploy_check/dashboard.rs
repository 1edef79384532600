//! The dashboard component: the Grafana dashboard inside the rendered
//! ConfigMap. Checks its shape (what Grafana's sidecar and the panels need)
//! and returns every PromQL query with Grafana's variables replaced by
//! values of the same kind, ready for promtool and the contract check.

use std::collections::BTreeSet;

use serde_json::Value;

use super::rules::Query;

/// Grafana's built-in variables, and a value of the same PromQL kind.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "2m"),
    ("__interval", "1m"),
    ("__range", "1d"),
];

/// `kubectl apply` (client side) keeps the whole object in an annotation
/// that may not exceed 256 KiB.
const MAX_CONFIGMAP_BYTES: usize = 256 * 1024;

/// The dashboards among `objects`: (ConfigMap name/key, parsed JSON).
pub fn dashboards(objects: &[Value], problems: &mut Vec<String>) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for object in objects {
        let labelled = object["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1");
        if object["kind"].as_str() != Some("ConfigMap") || !labelled {
            continue;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or("?");
        let size = object.to_string().len();
        if size > MAX_CONFIGMAP_BYTES {
            problems.push(format!(
                "configmap/{name}: {size} bytes, over the {MAX_CONFIGMAP_BYTES} that kubectl apply can annotate"
            ));
        }
        let data = object["data"].as_object();
        for (key, text) in data.into_iter().flatten() {
            let at = format!("configmap/{name} {key}");
            if !key.ends_with(".json") {
                problems.push(format!("{at}: the Grafana sidecar loads only *.json keys"));
                continue;
            }
            match serde_json::from_str::<Value>(text.as_str().unwrap_or("")) {
                Ok(json) => found.push((at, json)),
                Err(e) => problems.push(format!("{at}: not JSON: {e}")),
            }
        }
    }
    found
}

/// Checks one dashboard; returns its queries (panel targets and the
/// variables' `label_values` queries) with variables substituted.
pub fn check(at: &str, dash: &Value, problems: &mut Vec<String>) -> Vec<Query> {
    let mut report = |p: String| problems.push(format!("{at}: {p}"));
    for field in ["uid", "title"] {
        if dash[field].as_str().is_none_or(str::is_empty) {
            report(format!("no {field}"));
        }
    }
    let variables: Vec<&Value> = dash["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    let names: BTreeSet<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let datasource_variable = variables.iter().any(|v| {
        v["name"].as_str() == Some("datasource")
            && v["type"].as_str() == Some("datasource")
            && v["query"].as_str() == Some("prometheus")
    });
    if !datasource_variable {
        report("no `datasource` variable of type datasource (query prometheus)".to_owned());
    }

    let mut queries = Vec::new();
    let mut add_query =
        |where_: String, expr: &str, report: &mut dyn FnMut(String)| match substitute(expr, &names)
        {
            Ok(expr) => queries.push(Query { at: where_, expr }),
            Err(e) => report(format!("{where_}: {e}")),
        };

    for v in &variables {
        if v["type"].as_str() != Some("query") {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?");
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or("");
        match label_values(query) {
            Some((selector, label)) => {
                let expr = format!("count by ({label}) ({selector})");
                add_query(format!("variable {name}"), &expr, &mut report);
            }
            None => report(format!(
                "variable {name}: query {query:?} is not label_values(<selector>, <label>)"
            )),
        }
    }

    let panels = dash["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if panels.is_empty() {
        report("no panels".to_owned());
    }
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, [u64; 4])> = Vec::new();
    for panel in panels {
        let id = panel["id"].as_u64().unwrap_or(0);
        let title = panel["title"].as_str().unwrap_or("?");
        let here = format!("panel {id} {title:?}");
        if !ids.insert(id) {
            report(format!("{here}: id used twice"));
        }
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap_or(0));
        if w == 0 || h == 0 || x + w > 24 {
            report(format!(
                "{here}: gridPos x={x} w={w} h={h} does not fit the 24 columns"
            ));
        }
        for (other, [ox, oy, ow, oh]) in &boxes {
            if x < ox + ow && ox < &(x + w) && y < oy + oh && oy < &(y + h) {
                report(format!("{here}: overlaps panel {other}"));
            }
        }
        boxes.push((id, [x, y, w, h]));
        if panel["datasource"]["uid"].as_str() != Some("${datasource}") {
            report(format!(
                "{here}: datasource is not the ${{datasource}} variable"
            ));
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            report(format!("{here}: no query"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or("?");
            if !ref_ids.insert(ref_id) {
                report(format!("{here}: refId {ref_id} used twice"));
            }
            match target["expr"].as_str() {
                Some(expr) if !expr.trim().is_empty() => {
                    add_query(format!("{here} query {ref_id}"), expr, &mut report);
                }
                _ => report(format!("{here}: query {ref_id} has no expr")),
            }
        }
    }
    queries
}

/// `label_values(selector, label)` → (selector, label).
fn label_values(query: &str) -> Option<(&str, &str)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    let (selector, label) = (selector.trim(), label.trim());
    let plain = !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (plain && !selector.is_empty()).then_some((selector, label))
}

/// Replaces `$name`, `${name}` and `[[name]]` by a value PromQL accepts in
/// the same place: Grafana's interval variables by durations, the
/// dashboard's own variables by `.*` (they are used in regex matchers).
fn substitute(expr: &str, variables: &BTreeSet<&str>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find(['$', '[']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (name, len) = if let Some(braced) = tail.strip_prefix("${") {
            let end = braced.find('}').ok_or("unclosed ${")?;
            let name = braced[..end].split(':').next().unwrap_or("");
            (name, end + 3)
        } else if let Some(old) = tail.strip_prefix("[[") {
            let end = old.find("]]").ok_or("unclosed [[")?;
            (&old[..end], end + 4)
        } else if let Some(plain) = tail.strip_prefix('$') {
            let end = plain
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(plain.len());
            (&plain[..end], end + 1)
        } else {
            // A range selector's `[`.
            out.push('[');
            rest = &tail[1..];
            continue;
        };
        if let Some((_, value)) = BUILTINS.iter().find(|(b, _)| *b == name) {
            out.push_str(value);
        } else if variables.contains(name) {
            out.push_str(".*");
        } else {
            return Err(format!("uses ${name}, which the dashboard does not define"));
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars() -> BTreeSet<&'static str> {
        ["namespace", "datasource"].into()
    }

    #[test]
    fn variables_become_values_of_their_kind() {
        assert_eq!(
            substitute(
                r#"sum(increase(k{namespace=~"$namespace", pod=~"${namespace:regex}"}[$__rate_interval])) offset [[__interval]]"#,
                &vars()
            ),
            Ok(r#"sum(increase(k{namespace=~".*", pod=~".*"}[2m])) offset 1m"#.to_owned())
        );
        assert!(substitute("up{job=~\"$job\"}", &vars()).is_err());
        assert!(substitute("up[${__range", &vars()).is_err());
    }

    #[test]
    fn label_values_queries() {
        assert_eq!(
            label_values("label_values(oomtrace_kills_total, namespace)"),
            Some(("oomtrace_kills_total", "namespace"))
        );
        assert_eq!(
            label_values(r#"label_values(up{job="a,b"}, instance)"#),
            Some((r#"up{job="a,b"}"#, "instance"))
        );
        assert_eq!(label_values("query_result(up)"), None);
    }

    fn panel(id: u64, x: u64, y: u64, w: u64, expr: &str) -> Value {
        json!({"id": id, "title": format!("p{id}"), "type": "timeseries",
               "datasource": {"type": "prometheus", "uid": "${datasource}"},
               "gridPos": {"x": x, "y": y, "w": w, "h": 4},
               "targets": [{"refId": "A", "expr": expr}]})
    }

    #[test]
    fn dashboard_shape() {
        let good = json!({"uid": "u", "title": "t",
            "templating": {"list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "namespace", "type": "query", "query": {"query": "label_values(oomtrace_kills_total, namespace)"}}
            ]},
            "panels": [panel(1, 0, 0, 12, "sum(oomtrace_ready)"), panel(2, 12, 0, 12, "up")]});
        let mut problems = Vec::new();
        let queries = check("d", &good, &mut problems);
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(queries.len(), 3);
        assert_eq!(
            queries[0].expr,
            "count by (namespace) (oomtrace_kills_total)"
        );

        let mut bad = good.clone();
        bad["templating"]["list"][0]["type"] = json!("custom");
        bad["panels"] = json!([
            panel(1, 0, 0, 12, "sum(oomtrace_ready)"),
            panel(1, 6, 2, 20, "up{x=~\"$nope\"}"),
        ]);
        bad["panels"][1]["datasource"]["uid"] = json!("prometheus");
        let mut problems = Vec::new();
        check("d", &bad, &mut problems);
        assert_eq!(
            problems,
            [
                "d: no `datasource` variable of type datasource (query prometheus)",
                "d: panel 1 \"p1\": id used twice",
                "d: panel 1 \"p1\": gridPos x=6 w=20 h=4 does not fit the 24 columns",
                "d: panel 1 \"p1\": overlaps panel 1",
                "d: panel 1 \"p1\": datasource is not the ${datasource} variable",
                "d: panel 1 \"p1\" query A: uses $nope, which the dashboard does not define",
            ]
        );
    }

    #[test]
    fn dashboards_come_from_labelled_configmaps() {
        let cm = |labels: Value, key: &str, text: &str| json!({"kind": "ConfigMap", "metadata": {"name": "d", "labels": labels}, "data": {key: text}});
        let mut problems = Vec::new();
        let found = dashboards(
            &[
                cm(json!({"grafana_dashboard": "1"}), "a.json", "{}"),
                cm(json!({}), "b.json", "{}"),
                cm(json!({"grafana_dashboard": "1"}), "c.yaml", "{}"),
                cm(json!({"grafana_dashboard": "1"}), "d.json", "{"),
            ],
            &mut problems,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
