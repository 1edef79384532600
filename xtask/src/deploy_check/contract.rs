//! The metrics the alerts and the dashboard may use: the agent's own (the
//! contract in README "Metrics"), checked against what the agent's source
//! registers, plus the few series other exporters provide.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::Context as _;

use super::promql::Names;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One exported metric: its exposed name and its own labels.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// What the agent exports (README "Metrics", the lead's CONTRACTS).
pub const AGENT_METRICS: &[Metric] = &[
    Metric {
        name: "oomtrace_kills_total",
        kind: Kind::Counter,
        labels: &[
            "scope",
            "oom_domain",
            "killer",
            "namespace",
            "pod",
            "container",
            "qos_class",
        ],
    },
    Metric {
        name: "oomtrace_events_lost_total",
        kind: Kind::Counter,
        labels: &[],
    },
    Metric {
        name: "oomtrace_kills_unreported_total",
        kind: Kind::Counter,
        labels: &[],
    },
    Metric {
        name: "oomtrace_reason_mismatch_total",
        kind: Kind::Counter,
        labels: &["namespace", "pod", "container"],
    },
    Metric {
        name: "oomtrace_hook_active",
        kind: Kind::Gauge,
        labels: &["hook"],
    },
    Metric {
        name: "oomtrace_ready",
        kind: Kind::Gauge,
        labels: &[],
    },
];

/// Labels Prometheus puts on every series of the agent's scrape target:
/// `job` and `instance` always, `node` from the PodMonitor's relabeling
/// (deploy/components/prometheus-operator).
pub const TARGET_LABELS: &[&str] = &["job", "instance", "node"];

/// Series of other exporters, allowed for the agent-absence alerts only
/// (why both: deploy/components/alerts/prometheusrule.yaml).
pub const EXTERNAL_METRICS: &[Metric] = &[
    // Prometheus's own scrape health of the agent's target.
    Metric {
        name: "up",
        kind: Kind::Gauge,
        labels: &[],
    },
    // kube-state-metrics: nodes the DaemonSet should cover against agents available.
    Metric {
        name: "kube_daemonset_status_desired_number_scheduled",
        kind: Kind::Gauge,
        labels: &["namespace", "daemonset"],
    },
    Metric {
        name: "kube_daemonset_status_number_available",
        kind: Kind::Gauge,
        labels: &["namespace", "daemonset"],
    },
];

/// Contract metrics the agent's source does not register yet (another
/// branch adds them). The check fails once one is registered, so the entry
/// is removed then. Empty: every contract metric is registered.
pub const AWAITING_AGENT: &[&str] = &[];

/// Contract labels of the agent's metrics that no label struct of its
/// source has yet; same rule as [`AWAITING_AGENT`]. Empty: every contract
/// label is a field of a label struct.
pub const AWAITING_LABELS: &[&str] = &[];

fn find(name: &str) -> Option<&'static Metric> {
    AGENT_METRICS
        .iter()
        .chain(EXTERNAL_METRICS)
        .find(|m| m.name == name)
}

/// Problems with the names one query uses; `at` says where it is.
pub fn check_names(at: &str, names: &Names, problems: &mut Vec<String>) {
    let mut allowed_grouping: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for metric in &names.metrics {
        match find(metric) {
            Some(m) => allowed_grouping.extend(m.labels),
            None => problems.push(format!(
                "{at}: uses {metric}, which neither the agent nor the allowed exporters export \
                 (xtask/src/deploy_check/contract.rs lists them)"
            )),
        }
    }
    for (metric, label) in &names.matchers {
        let Some(m) = find(metric) else { continue };
        if !m.labels.contains(&label.as_str()) && !TARGET_LABELS.contains(&label.as_str()) {
            problems.push(format!(
                "{at}: matches label {label} of {metric}, which has only {}",
                [m.labels, TARGET_LABELS].concat().join(", ")
            ));
        }
    }
    for label in &names.grouping {
        if !allowed_grouping.contains(label.as_str()) {
            problems.push(format!(
                "{at}: groups by {label}, a label none of its metrics has"
            ));
        }
    }
}

/// What the agent's source registers with prometheus-client.
#[derive(Debug, Default)]
pub struct Registered {
    /// Metric names as registered (a counter `x` is exposed as `x_total`).
    pub metrics: BTreeSet<String>,
    /// Field names of every `#[derive(EncodeLabelSet)]` struct: the label
    /// names any metric can have.
    pub labels: BTreeSet<String>,
}

/// Reads [`Registered`] from every `.rs` file under `src`: the first string
/// literal after each `.register(` or `.register_with_unit(`, and the fields
/// of the label structs.
pub fn registered(src: &Path) -> anyhow::Result<Registered> {
    let mut found = Registered::default();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                found.metrics.extend(registrations(&text));
                found.labels.extend(label_fields(&text));
            }
        }
    }
    Ok(found)
}

fn registrations(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for call in [".register(", ".register_with_unit("] {
        for (at, _) in source.match_indices(call) {
            let rest = source[at + call.len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"')
                && let Some(end) = literal.find('"')
            {
                names.push(literal[..end].to_owned());
            }
        }
    }
    names
}

/// The fields of the structs deriving `EncodeLabelSet` in `source`.
fn label_fields(source: &str) -> Vec<String> {
    let mut fields = Vec::new();
    for (at, _) in source.match_indices("EncodeLabelSet") {
        let rest = &source[at..];
        // The derive's own line, then the struct it applies to.
        let Some(open) = rest.find('{') else { continue };
        if !rest[..open].contains("struct ") || rest[..open].contains(';') {
            continue;
        }
        let Some(close) = rest[open..].find('}') else {
            continue;
        };
        for line in rest[open + 1..open + close].lines() {
            let line = line.trim();
            if line.starts_with("#[") || line.starts_with("//") {
                continue;
            }
            let line = line.strip_prefix("pub ").unwrap_or(line);
            if let Some((name, _)) = line.split_once(':') {
                let name = name.trim();
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    fields.push(name.to_owned());
                }
            }
        }
    }
    fields
}

/// The labels of the agent's metrics that `names` uses (matchers on them,
/// and groupings by one of their contract labels), target labels aside.
pub fn agent_labels(names: &Names) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for (metric, label) in &names.matchers {
        if AGENT_METRICS.iter().any(|m| m.name == metric)
            && !TARGET_LABELS.contains(&label.as_str())
        {
            labels.insert(label.clone());
        }
    }
    for label in &names.grouping {
        let of_agent = names.metrics.iter().any(|metric| {
            AGENT_METRICS
                .iter()
                .any(|m| m.name == metric && m.labels.contains(&label.as_str()))
        });
        if of_agent {
            labels.insert(label.clone());
        }
    }
    labels
}

/// Compares the agent labels `used` with the source's label structs.
pub fn check_labels(used: &BTreeSet<String>, registered: &BTreeSet<String>) -> Vec<String> {
    check_labels_awaiting(used, registered, AWAITING_LABELS)
}

fn check_labels_awaiting(
    used: &BTreeSet<String>,
    registered: &BTreeSet<String>,
    awaiting: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    for label in used {
        let awaited = awaiting.contains(&label.as_str());
        match (registered.contains(label), awaited) {
            (true, false) => {}
            (false, true) => println!(
                "deploy-check: label {label} is used but no label struct of oomtrace/src has it yet \
                 (awaited from another branch)"
            ),
            (false, false) => problems.push(format!(
                "label {label} is used by the alerts or the dashboard but no EncodeLabelSet struct \
                 of oomtrace/src has such a field"
            )),
            (true, true) => problems.push(format!(
                "label {label} is in oomtrace/src now: remove it from AWAITING_LABELS in \
                 xtask/src/deploy_check/contract.rs"
            )),
        }
    }
    problems
}

/// Compares the agent metrics `used` (by rules and dashboard) with what the
/// source registers; one line per problem.
pub fn check_registered(used: &BTreeSet<String>, registered: &BTreeSet<String>) -> Vec<String> {
    check_registered_awaiting(used, registered, AWAITING_AGENT)
}

fn check_registered_awaiting(
    used: &BTreeSet<String>,
    registered: &BTreeSet<String>,
    awaiting: &[&str],
) -> Vec<String> {
    let exposed: BTreeMap<String, &Metric> = AGENT_METRICS
        .iter()
        .map(|m| (m.name.to_owned(), m))
        .collect();
    let is_registered = |m: &Metric| match m.kind {
        Kind::Counter => m
            .name
            .strip_suffix("_total")
            .is_some_and(|base| registered.contains(base)),
        Kind::Gauge => registered.contains(m.name),
    };
    let mut problems = Vec::new();
    for name in used {
        let Some(metric) = exposed.get(name) else {
            continue;
        };
        let awaited = awaiting.contains(&metric.name);
        match (is_registered(metric), awaited) {
            (true, false) | (false, true) => {}
            (false, false) => problems.push(format!(
                "{name} is used by the alerts or the dashboard but oomtrace/src registers no such \
                 metric (registered: {})",
                registered.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
            (true, true) => problems.push(format!(
                "{name} is registered by oomtrace/src now: remove it from AWAITING_AGENT in \
                 xtask/src/deploy_check/contract.rs"
            )),
        }
    }
    for awaited in awaiting {
        if exposed.contains_key(*awaited) && used.contains(*awaited) {
            println!(
                "deploy-check: {awaited} is used but not registered by oomtrace/src yet \
                 (awaited from another branch)"
            );
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_check::promql;

    /// `Metrics::new` of oomtrace/src/metrics.rs at the time of writing.
    const METRICS_RS: &str = r#"
        let kills = Family::<KillLabels, Counter>::default();
        registry.register(
            "oomtrace_kills",
            "OOM kills reported, by scope, OOM domain and pod",
            kills.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "oomtrace_events_lost",
            "Capture records lost (kernel ring buffer full or kernel log wrapped)",
            lost.clone(),
        );
        registry.register("oomtrace_hook_active", "1 for each capture hook attached", hook_active.clone());
        registry.register_with_unit("oomtrace_ready", "1 once ready", Unit::Other("x".into()), g);

        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub struct KillLabels {
            pub scope: String,
            pub oom_domain: String,
            // The victim's namespace.
            pub namespace: String,
        }

        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct HookLabels {
            hook: String,
        }

        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
        }
    "#;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn registrations_are_read_from_the_source() {
        assert_eq!(
            registrations(METRICS_RS),
            [
                "oomtrace_kills",
                "oomtrace_events_lost",
                "oomtrace_hook_active",
                "oomtrace_ready"
            ]
        );
    }

    #[test]
    fn label_structs_are_read_from_the_source() {
        assert_eq!(
            label_fields(METRICS_RS),
            ["scope", "oom_domain", "namespace", "hook"]
        );
    }

    #[test]
    fn used_labels_must_be_in_a_label_struct_or_awaited() {
        let n = promql::names(
            r#"sum by (killer, namespace, node) (oomtrace_kills_total{scope="node", job="oomtrace"}) + on (instance) up"#,
        )
        .expect("scans");
        let used = agent_labels(&n);
        assert_eq!(used, set(&["killer", "namespace", "scope"]));
        let registered: BTreeSet<String> = label_fields(METRICS_RS).into_iter().collect();
        let awaiting = &["killer"];
        assert!(check_labels_awaiting(&used, &registered, awaiting).is_empty());
        assert_eq!(
            check_labels_awaiting(&set(&["qos_class"]), &registered, awaiting).len(),
            1
        );
        let mut landed = registered.clone();
        landed.insert("killer".to_owned());
        assert!(
            check_labels(&used, &landed).is_empty(),
            "nothing awaited now"
        );
        let problems = check_labels_awaiting(&used, &landed, awaiting);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("remove it from AWAITING_LABELS"));
    }

    #[test]
    fn used_metrics_must_be_registered_or_awaited() {
        let registered: BTreeSet<String> = registrations(METRICS_RS).into_iter().collect();
        let used = set(&[
            "oomtrace_kills_total",
            "oomtrace_ready",
            "oomtrace_kills_unreported_total",
            "up",
        ]);
        let awaiting = &["oomtrace_kills_unreported_total"];
        assert!(check_registered_awaiting(&used, &registered, awaiting).is_empty());
        assert_eq!(
            check_registered(&used, &registered).len(),
            1,
            "nothing is awaited now: an unregistered metric is a problem"
        );

        // A counter registered with _total would be exposed as x_total_total.
        let wrong = set(&["oomtrace_kills_total", "oomtrace_ready"]);
        let problems = check_registered(&set(&["oomtrace_kills_total"]), &wrong);
        assert_eq!(problems.len(), 1, "{problems:?}");

        // An awaited metric that lands must leave AWAITING_AGENT.
        let mut landed = registered.clone();
        landed.insert("oomtrace_kills_unreported".to_owned());
        assert!(check_registered(&used, &landed).is_empty());
        let problems = check_registered_awaiting(&used, &landed, awaiting);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("remove it from AWAITING_AGENT"));
    }

    #[test]
    fn names_outside_the_contract_are_reported() {
        let mut problems = Vec::new();
        let n = promql::names(
            r#"sum by (namespace, comm) (oomtrace_kills_total{pid="1", scope="node"}) + oomtrace_kill_total + up{job="oomtrace"}"#,
        )
        .expect("scans");
        check_names("panel 1", &n, &mut problems);
        assert_eq!(
            problems,
            [
                "panel 1: uses oomtrace_kill_total, which neither the agent nor the allowed exporters export (xtask/src/deploy_check/contract.rs lists them)",
                "panel 1: matches label pid of oomtrace_kills_total, which has only scope, oom_domain, killer, namespace, pod, container, qos_class, job, instance, node",
                "panel 1: groups by comm, a label none of its metrics has",
            ]
        );
    }
}
