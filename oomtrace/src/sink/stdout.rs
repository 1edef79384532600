//! Standard output: JSON lines (one object per kill) for log shipping, or one
//! readable line per kill for people at a terminal.

use std::io::Write;

use super::{Sink, SinkError};
use crate::{
    cli::Format,
    enrich::reported::ReasonMismatch,
    report::{Kill, KillerKind, OomDomain, Scope, Unreported},
    units::{Bytes, escape},
};

/// Writes each kill to `out` and flushes, so a pipe reader sees it at once.
pub struct Stdout<W: Write> {
    format: Format,
    out: W,
}

impl<W: Write> Stdout<W> {
    pub fn new(format: Format, out: W) -> Self {
        Self { format, out }
    }

    fn write(&mut self, kill: &Kill) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, kill).map_err(std::io::Error::other)?;
            }
            Format::Text => self.out.write_all(text_line(kill).as_bytes())?,
        }
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

impl<W: Write + Send> Sink for Stdout<W> {
    fn kill(&mut self, kill: &Kill) -> Result<(), SinkError> {
        self.write(kill).map_err(SinkError::Stdout)
    }

    fn reason_mismatch(&mut self, record: &ReasonMismatch) -> Result<(), SinkError> {
        let write = |out: &mut W| -> std::io::Result<()> {
            match self.format {
                Format::Json => {
                    serde_json::to_writer(&mut *out, record).map_err(std::io::Error::other)?
                }
                Format::Text => out.write_all(mismatch_line(record).as_bytes())?,
            }
            out.write_all(b"\n")?;
            out.flush()
        };
        write(&mut self.out).map_err(SinkError::Stdout)
    }

    fn unreported(&mut self, record: &Unreported) -> Result<(), SinkError> {
        let write = |out: &mut W| -> std::io::Result<()> {
            match self.format {
                Format::Json => {
                    serde_json::to_writer(&mut *out, record).map_err(std::io::Error::other)?
                }
                Format::Text => out.write_all(unreported_line(record).as_bytes())?,
            }
            out.write_all(b"\n")?;
            out.flush()
        };
        write(&mut self.out).map_err(SinkError::Stdout)
    }
}

/// The text form of a reason-mismatch record, on one line.
pub fn mismatch_line(r: &ReasonMismatch) -> String {
    let line = format!(
        "{} {} REASON MISMATCH {}/{} container {}: Kubernetes says {} (exit code {}), the kernel: {} | {}",
        r.time.as_deref().unwrap_or("?"),
        r.node,
        r.k8s.namespace.as_deref().unwrap_or("?"),
        r.k8s.pod.as_deref().unwrap_or("?"),
        r.k8s.container.as_deref().unwrap_or("?"),
        r.k8s.reported_reason.as_deref().unwrap_or("?"),
        r.exit_code,
        r.kernel,
        r.explanation
    );
    escape(&line).into_owned()
}

/// The text form of an unreported-kills record, on one line.
pub fn unreported_line(r: &Unreported) -> String {
    let line = format!(
        "{} {} UNREPORTED {} kernel OOM kill{} (kernel counted {} since {}, oomtrace reported {}, unreported so far {}) | {}",
        r.time,
        r.node,
        r.count,
        if r.count == 1 { "" } else { "s" },
        r.kernel_count,
        r.since,
        r.reported,
        r.unreported_total,
        r.explanation
    );
    escape(&line).into_owned()
}

fn or_unknown<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}

fn domain_word(d: OomDomain) -> &'static str {
    match d {
        OomDomain::Container => "container",
        OomDomain::Pod => "pod",
        OomDomain::NodeAllocatable => "node_allocatable",
        OomDomain::Cgroup => "cgroup",
        OomDomain::Node => "node",
    }
}

/// The limit that was hit: the OOM cgroup's usage and limit for a cgroup
/// kill, the victim's own for a node-level one.
fn usage(k: &Kill) -> String {
    let m = &k.memcg;
    match k.scope {
        Some(Scope::Cgroup) => match (m.oom_usage_bytes, m.oom_limit_bytes) {
            (Some(u), Some(l)) => format!(" usage {} of {}", Bytes(u), Bytes(l)),
            (None, Some(l)) => format!(" limit {}", Bytes(l)),
            (Some(u), None) => format!(" usage {}", Bytes(u)),
            (None, None) => String::new(),
        },
        _ => match (m.victim_usage_bytes, m.victim_limit_bytes) {
            (Some(u), Some(l)) => format!(" victim used {} of its {} limit", Bytes(u), Bytes(l)),
            (Some(u), None) => format!(" victim used {} (no limit of its own)", Bytes(u)),
            _ => String::new(),
        },
    }
}

/// The text form: who, where, which limit, and the explanation, on one line.
/// Names come from processes and cgroups, which anyone can choose: control
/// characters are escaped, so one kill is always one line.
pub fn text_line(k: &Kill) -> String {
    let who = match &k.k8s {
        Some(p) => format!(
            "{}/{} container {} ({})",
            p.namespace.as_deref().unwrap_or("?"),
            p.pod.as_deref().or(p.pod_uid.as_deref()).unwrap_or("?"),
            p.container.as_deref().unwrap_or("?"),
            p.qos_class.as_deref().unwrap_or("?")
        ),
        None => format!("cgroup {}", k.victim.cgroup.as_deref().unwrap_or("?")),
    };
    let oom_cgroup = k.oom_cgroup.as_deref().unwrap_or("?");
    let killer = k
        .killer
        .name
        .as_deref()
        .or(k.killer.comm.as_deref())
        .unwrap_or("?");
    let domain = match (k.killer.kind, k.scope, k.oom_domain) {
        (KillerKind::UserspaceOom, _, _) => {
            format!("KILLED by {killer} (userspace OOM killer, node memory low)")
        }
        (KillerKind::KubeletEviction, _, _) => {
            "EVICTED by the kubelet (node memory low)".to_string()
        }
        (_, Some(Scope::Node), _) => "NODE out of memory".to_string(),
        (_, Some(Scope::Cgroup), Some(d)) => format!("{} limit hit ({oom_cgroup})", domain_word(d)),
        (_, Some(Scope::Cgroup), None) => format!("cgroup limit hit ({oom_cgroup})"),
        (_, None, _) => "scope unknown".to_string(),
    };
    let mut line = format!(
        "{} {} OOM-KILL{} pid {} ({}) adj {} {} | {}{}",
        k.time,
        k.node,
        if k.replayed {
            " (replayed from the kernel log after a restart)"
        } else {
            ""
        },
        or_unknown(k.victim.pid),
        k.victim.comm.as_deref().unwrap_or("?"),
        or_unknown(k.victim.oom_score_adj),
        who,
        domain,
        usage(k)
    );
    if let Some(e) = &k.explanation {
        line.push_str(" | ");
        line.push_str(e);
    }
    if let Some(a) = &k.advice {
        line.push_str(" | advice: ");
        line.push_str(a);
    }
    if !k.missing.is_empty() {
        line.push_str(&format!(" | missing: {}", k.missing.join("; ")));
    }
    escape(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Memcg, Victim};

    fn kill_at_parent_limit() -> Kill {
        // The shape of the host test's kill in a child of a limited parent.
        Kill {
            time: "2026-11-28T11:22:03.955Z".into(),
            node: "vm".into(),
            scope: Some(Scope::Cgroup),
            oom_cgroup: Some("/demo".into()),
            oom_domain: Some(OomDomain::Cgroup),
            victim: Victim {
                pid: Some(20557),
                comm: Some("dd".into()),
                oom_score_adj: Some(600),
                cgroup: Some("/demo/app".into()),
                ..Victim::default()
            },
            memcg: Memcg {
                victim_usage_bytes: Some(33_542_144),
                victim_limit_bytes: None,
                oom_usage_bytes: Some(33_554_432),
                oom_limit_bytes: Some(33_554_432),
                ..Memcg::default()
            },
            explanation: Some("The memory limit of cgroup /demo was hit (32 MiB of 32 MiB); dd (pid 20557) in cgroup /demo/app (oom_score_adj 600) was killed.".into()),
            ..Kill::default()
        }
    }

    #[test]
    fn the_text_line_shows_the_limit_that_was_hit() {
        let line = text_line(&kill_at_parent_limit());
        assert!(
            line.contains("cgroup limit hit (/demo) usage 32 MiB of 32 MiB |"),
            "{line}"
        );
        assert!(!line.contains("no limit"), "{line}");
        assert!(
            line.contains("OOM-KILL pid 20557 (dd) adj 600 cgroup /demo/app"),
            "{line}"
        );
    }

    #[test]
    fn a_replayed_kill_says_so_in_text() {
        let mut k = kill_at_parent_limit();
        assert!(!text_line(&k).contains("replayed"));
        k.replayed = true;
        let line = text_line(&k);
        assert!(
            line.contains("OOM-KILL (replayed from the kernel log after a restart) pid 20557 (dd)"),
            "{line}"
        );
    }

    #[test]
    fn a_hostile_name_stays_on_one_line() {
        let mut k = kill_at_parent_limit();
        k.victim.comm = Some("\x1b[2Jx\nFAKE".into());
        k.explanation = Some("\x1b[2Jx\nFAKE (pid 20557) was killed".into());
        let line = text_line(&k);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("(\\x1b[2Jx\\x0aFAKE)"), "{line}");
        let mut out = Vec::new();
        Stdout::new(Format::Text, &mut out).kill(&k).expect("write");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn json_lines_keep_names_as_they_are() {
        let mut k = kill_at_parent_limit();
        k.victim.comm = Some("\x1b[2Jx\nFAKE".into());
        let mut out = Vec::new();
        Stdout::new(Format::Json, &mut out).kill(&k).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.matches('\n').count(), 1, "one line");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["victim"]["comm"], "\x1b[2Jx\nFAKE");
    }

    /// The record the host loss test got (8 kills, 6 reported).
    fn unreported() -> Unreported {
        Unreported {
            kind: crate::report::RecordKind::UnreportedKills,
            count: 2,
            kernel_count: 8,
            reported: 6,
            repeated: 0,
            unreported_total: 2,
            time: "2026-12-02T16:56:31.907Z".into(),
            node: "ci-1".into(),
            since: "2026-12-02T16:56:25.235Z".into(),
            lost_events: 11,
            explanation: "The kernel counted 8 OOM kill(s) since 2026-12-02T16:56:25.235Z (/proc/vmstat oom_kill) and oomtrace reported 6: 2 more were reported by no source. ".into(),
        }
    }

    #[test]
    fn an_unreported_record_is_one_json_line_of_its_kind_and_one_text_line() {
        let mut out = Vec::new();
        Stdout::new(Format::Json, &mut out)
            .unreported(&unreported())
            .expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.matches('\n').count(), 1, "one line");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["kind"], "unreported_kills");
        assert_eq!(
            (v["count"].as_u64(), v["kernel_count"].as_u64()),
            (Some(2), Some(8))
        );
        assert_eq!(
            (v["reported"].as_u64(), v["repeated"].as_u64()),
            (Some(6), Some(0))
        );
        assert_eq!(v["node"], "ci-1");
        let mut out = Vec::new();
        Stdout::new(Format::Text, &mut out)
            .unreported(&unreported())
            .expect("write");
        let line = String::from_utf8(out).expect("utf-8");
        assert!(
            line.starts_with("2026-12-02T16:56:31.907Z ci-1 UNREPORTED 2 kernel OOM kills (kernel counted 8 since 2026-12-02T16:56:25.235Z, oomtrace reported 6, unreported so far 2) | The kernel counted"),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1, "{line}");
    }
}
