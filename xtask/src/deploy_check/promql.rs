//! Just enough of PromQL's lexical structure to list the metric and label
//! names an expression uses, so the alerts and the dashboard can be compared
//! with the metrics the agent exports. Whether an expression parses at all
//! is promtool's job (see `rules.rs`); this scanner only has to be right on
//! expressions promtool accepts.

use std::collections::BTreeSet;

/// The names one expression uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Metric names of the vector selectors (`up`, `oomtrace_ready`).
    pub metrics: BTreeSet<String>,
    /// `(metric, label)` for each label matcher written after a metric name
    /// (`up{job="x"}` gives `("up", "job")`).
    pub matchers: BTreeSet<(String, String)>,
    /// Labels named by `by`, `without`, `on`, `ignoring`, `group_left`,
    /// `group_right`.
    pub grouping: BTreeSet<String>,
}

/// Words that are PromQL syntax, never metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Lists the names `expr` uses. Fails on text this scanner cannot follow
/// (an unterminated string or brace), which promtool would reject too.
pub fn names(expr: &str) -> Result<Names, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i)?;
        } else if c == '[' {
            // Range and subquery durations: `[5m]`, `[1h:1m]`.
            i = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .map(|p| i + p + 1)
                .ok_or_else(|| format!("unclosed [ in {expr:?}"))?;
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`10m`, `1.5e3`, `0x1f`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '{' {
            // A selector without a metric name: `{job="x"}`.
            i = matchers(&chars, i, None, &mut names)?;
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(&chars, i);
            let followed_by = chars.get(next).copied();
            if LABEL_LISTS.contains(&word.as_str()) {
                if followed_by == Some('(') {
                    i = label_list(&chars, next, &mut names.grouping)?;
                }
            } else if KEYWORDS.contains(&word.as_str())
                || followed_by == Some('(')
                || starts_word(&chars, next, "by")
                || starts_word(&chars, next, "without")
            {
                // Syntax, a function, or an aggregation (`sum by (x) (...)`).
            } else {
                names.metrics.insert(word.clone());
                if followed_by == Some('{') {
                    i = matchers(&chars, next, Some(&word), &mut names)?;
                }
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Whether the identifier at `i` is exactly `word`.
fn starts_word(chars: &[char], i: usize, word: &str) -> bool {
    let n = word.chars().count();
    chars.len() >= i + n
        && chars[i..i + n].iter().copied().eq(word.chars())
        && chars.get(i + n).is_none_or(|&c| !is_ident(c))
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The index after the string that starts at `i`.
fn skip_string(chars: &[char], i: usize) -> Result<usize, String> {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' if quote != '`' => j += 2,
            c if c == quote => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(format!("unterminated string starting at offset {i}"))
}

/// Reads `{name op "value", ...}` from the `{` at `i`; returns the index after `}`.
fn matchers(
    chars: &[char],
    i: usize,
    metric: Option<&str>,
    names: &mut Names,
) -> Result<usize, String> {
    let mut j = i + 1;
    loop {
        j = skip_space(chars, j);
        match chars.get(j) {
            None => return Err("unclosed {".to_owned()),
            Some('}') => return Ok(j + 1),
            Some(',') => j += 1,
            Some(&c) if is_ident_start(c) => {
                let start = j;
                while j < chars.len() && is_ident(chars[j]) {
                    j += 1;
                }
                let label: String = chars[start..j].iter().collect();
                if label == "__name__" {
                    return Err("selecting metrics by __name__ is not checked: name them".into());
                }
                if let Some(metric) = metric {
                    names.matchers.insert((metric.to_owned(), label.clone()));
                } else {
                    return Err(format!("selector {{{label}...}} has no metric name"));
                }
                // The operator, then the quoted value.
                j = skip_space(chars, j);
                while j < chars.len() && "=!~".contains(chars[j]) {
                    j += 1;
                }
                j = skip_space(chars, j);
                match chars.get(j) {
                    Some('"' | '\'' | '`') => j = skip_string(chars, j)?,
                    _ => return Err(format!("matcher on {label} has no quoted value")),
                }
            }
            Some(c) => return Err(format!("unexpected {c:?} in a label matcher")),
        }
    }
}

/// Reads `(a, b)` from the `(` at `i`; returns the index after `)`.
fn label_list(chars: &[char], i: usize, into: &mut BTreeSet<String>) -> Result<usize, String> {
    let close = chars[i..]
        .iter()
        .position(|&c| c == ')')
        .map(|p| i + p)
        .ok_or("unclosed label list")?;
    let inner: String = chars[i + 1..close].iter().collect();
    for label in inner.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        into.insert(label.to_owned());
    }
    Ok(close + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn first_kill_pattern_of_the_alerts() {
        // From deploy/components/alerts/prometheusrule.yaml.
        let n = names(
            r#"sum by (node, instance) (
                (oomtrace_kills_total{scope="node"} unless oomtrace_kills_total{scope="node"} offset 10m)
              or
                increase(oomtrace_kills_total{scope="node"}[10m])
            ) > 0"#,
        )
        .expect("scans");
        assert_eq!(n.metrics, set(&["oomtrace_kills_total"]));
        assert_eq!(
            n.matchers,
            [("oomtrace_kills_total".to_owned(), "scope".to_owned())].into()
        );
        assert_eq!(n.grouping, set(&["node", "instance"]));
    }

    #[test]
    fn functions_keywords_strings_and_durations_are_not_metrics() {
        let n = names(
            r#"topk(20, sum without(pod) (rate(a_total{x=~"up|down", y!="b{c}"}[5m:30s] offset -1h)))
               / on(job) group_left(node) max by(job)(b) and bool c > bool 1e3 # d_total in a comment"#,
        )
        .expect("scans");
        assert_eq!(n.metrics, set(&["a_total", "b", "c"]));
        assert_eq!(
            n.matchers,
            [
                ("a_total".to_owned(), "x".to_owned()),
                ("a_total".to_owned(), "y".to_owned())
            ]
            .into()
        );
        assert_eq!(n.grouping, set(&["pod", "job", "node"]));
    }

    #[test]
    fn grouping_after_the_aggregation_and_a_bare_metric() {
        let n = names("sum(oomtrace_ready) by (hook) + up").expect("scans");
        assert_eq!(n.metrics, set(&["oomtrace_ready", "up"]));
        assert_eq!(n.grouping, set(&["hook"]));
    }

    #[test]
    fn what_it_cannot_follow_is_an_error() {
        assert!(names(r#"up{job="x"#).is_err());
        assert!(names(r#"{__name__="up"}"#).is_err());
        assert!(names(r#"{job="x"}"#).is_err());
        assert!(names("rate(x[5m)").is_err());
    }
}
