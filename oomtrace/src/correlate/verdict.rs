//! The verdict: which limit was hit, decided from the best evidence at hand.
//!
//! Priority, highest first (each level is exact where the one below infers):
//!
//! 1. `oom_control` from the `oom_kill_process` hook: `oc->memcg` is the OOM
//!    domain (NULL for the node), `oc->constraint` the constraint.
//! 2. The kernel log's `oom-kill:` summary (`oom_memcg=` or `global_oom`),
//!    then the pre-4.19 `Task in ... killed as a result of limit of ...` line.
//!    Both are rate-limited with the header: in a storm most kills lack them.
//! 3. The victim's cgroup walk captured in the kernel (`cgroup_usage`): the
//!    lowest ancestor within [`crate::correlate::walk::AT_LIMIT_MARGIN_BYTES`] of
//!    its limit is where the charge failed. A kill line's prefix (`Memory
//!    cgroup out of memory` / `Out of memory`, never rate-limited) says which
//!    side of the line the kill is on and wins over the walk for the node.
//! 4. The kill line's prefix alone: the scope, without the cgroup.
//!
//! [`decide`] is pure so that a table test covers the whole order.

use crate::{
    capture::Decision,
    correlate::pending::{Summary, TaskIn},
    correlate::walk::Walk,
    report::{Constraint, Scope, VerdictSource},
};

/// What the sources said about where the OOM happened.
#[derive(Debug, Default, Clone, Copy)]
pub struct Evidence<'a> {
    pub decision: Option<&'a Decision>,
    pub summary: Option<&'a Summary>,
    pub task_in: Option<&'a TaskIn>,
    /// The prefix of the victim's kill line.
    pub kill_line: Option<Scope>,
    /// The victim's memory cgroup walk, captured in the kernel.
    pub walk: Option<&'a Walk>,
    /// The kernel log is a source on this run.
    pub kmsg_expected: bool,
}

/// Which limit was hit, and how that is known.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub source: Option<VerdictSource>,
    pub scope: Option<Scope>,
    pub constraint: Option<Constraint>,
    /// The cgroup whose limit was hit (`None` for the node, or when unknown).
    pub oom_cgroup: Option<String>,
    /// Its usage and limit at kill time, when the decision captured them.
    pub oom_usage_bytes: Option<u64>,
    pub oom_limit_bytes: Option<u64>,
    /// What could not be decided, and why.
    pub missing: Vec<String>,
}

/// Decides the verdict; see the module documentation for the order.
pub fn decide(e: &Evidence<'_>) -> Verdict {
    // The kill line's prefix is printed by the kernel from `oc->memcg` and no
    // name can change it; a summary that disagrees was misread (or forged).
    let summary = e
        .summary
        .filter(|s| e.kill_line.is_none_or(|k| (k == Scope::Node) == s.global));
    let mut v = if let Some(d) = e.decision {
        from_decision(d)
    } else if let Some(s) = summary {
        from_summary(s)
    } else if let Some(t) = e.task_in {
        Verdict {
            source: Some(VerdictSource::Kmsg),
            scope: Some(Scope::Cgroup),
            constraint: Some(Constraint::Memcg),
            oom_cgroup: Some(t.limit_cgroup.clone()),
            ..Verdict::default()
        }
    } else if let Some(walk) = e.walk {
        from_walk(walk, e.kill_line, e.kmsg_expected)
    } else if let Some(scope) = e.kill_line {
        from_kill_line(scope)
    } else {
        Verdict {
            missing: vec![
                "scope: no source said whether a cgroup limit or the node ran out".to_string(),
            ],
            ..Verdict::default()
        }
    };
    if v.scope == Some(Scope::Cgroup) && v.constraint.is_none() {
        v.constraint = Some(Constraint::Memcg);
    }
    if v.scope == Some(Scope::Node) && v.constraint.is_none() {
        v.missing.push(
            "constraint: needs the oom_kill_process hook or the kernel's summary line".to_string(),
        );
    }
    v
}

fn from_decision(d: &Decision) -> Verdict {
    let mut v = Verdict {
        source: Some(VerdictSource::OomControl),
        constraint: d.constraint,
        ..Verdict::default()
    };
    if d.memcg {
        v.scope = Some(Scope::Cgroup);
        if let Some(domain) = d.domain.as_ref().and_then(Walk::leaf) {
            v.oom_cgroup = Some(domain.path.clone());
            v.oom_usage_bytes = Some(domain.usage_bytes);
            v.oom_limit_bytes = domain.limit_bytes;
        }
    } else {
        v.scope = Some(Scope::Node);
    }
    v
}

fn from_summary(s: &Summary) -> Verdict {
    let mut v = Verdict {
        source: Some(VerdictSource::Kmsg),
        constraint: s.constraint.as_deref().and_then(Constraint::from_kmsg),
        ..Verdict::default()
    };
    if s.global {
        v.scope = Some(Scope::Node);
    } else {
        v.scope = Some(Scope::Cgroup);
        v.oom_cgroup = s.oom_memcg.clone();
    }
    v
}

fn from_walk(walk: &Walk, kill_line: Option<Scope>, kmsg_expected: bool) -> Verdict {
    let mut v = match (kill_line, walk.at_limit()) {
        (Some(Scope::Node), _) => Verdict {
            source: Some(VerdictSource::Kmsg),
            scope: Some(Scope::Node),
            ..Verdict::default()
        },
        (_, Some(level)) => Verdict {
            source: Some(VerdictSource::CgroupUsage),
            scope: Some(Scope::Cgroup),
            constraint: Some(Constraint::Memcg),
            oom_cgroup: Some(level.path.clone()),
            ..Verdict::default()
        },
        (Some(Scope::Cgroup), None) => Verdict {
            source: Some(VerdictSource::Kmsg),
            scope: Some(Scope::Cgroup),
            constraint: Some(Constraint::Memcg),
            missing: vec!["oom_cgroup: the kernel log says a cgroup limit was hit, but its summary line was rate-limited and no ancestor is at its limit any more".to_string()],
            ..Verdict::default()
        },
        (None, None) => Verdict {
            source: Some(VerdictSource::CgroupUsage),
            scope: Some(Scope::Node),
            ..Verdict::default()
        },
    };
    if kill_line.is_none() && kmsg_expected {
        v.missing.push(
            "kernel log lines for this kill: scope inferred from cgroup usage only".to_string(),
        );
    }
    v
}

fn from_kill_line(scope: Scope) -> Verdict {
    let mut v = Verdict {
        source: Some(VerdictSource::Kmsg),
        scope: Some(scope),
        ..Verdict::default()
    };
    if scope == Scope::Cgroup {
        v.constraint = Some(Constraint::Memcg);
        v.missing.push("oom_cgroup: the kernel's summary line was rate-limited (\"callbacks suppressed\") and no BPF walk is available".to_string());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::{RecordMeta, Trigger},
        correlate::walk::Level,
    };

    fn level(path: &str, usage: u64, limit: Option<u64>) -> Level {
        Level {
            path: path.to_string(),
            id: 1,
            usage_bytes: usage,
            limit_bytes: limit,
        }
    }

    fn walk(levels: Vec<Level>) -> Walk {
        Walk {
            levels,
            truncated: false,
            read_failed: false,
        }
    }

    fn decision(memcg: Option<&str>) -> Decision {
        Decision {
            meta: RecordMeta {
                ktime_ns: 1,
                trigger: Trigger {
                    tid: 1,
                    tgid: 1,
                    comm: "dd".into(),
                },
            },
            memcg: memcg.is_some(),
            constraint: Some(if memcg.is_some() {
                Constraint::Memcg
            } else {
                Constraint::None
            }),
            order: 0,
            gfp_mask: 0xcc0,
            totalpages: 1,
            chosen: None,
            domain: memcg.map(|p| walk(vec![level(p, 32 << 20, Some(32 << 20))])),
            chosen_memcg: None,
            trigger_memcg: None,
        }
    }

    fn summary(global: bool, oom_memcg: Option<&str>) -> Summary {
        Summary {
            constraint: Some(
                if global {
                    "CONSTRAINT_NONE"
                } else {
                    "CONSTRAINT_MEMCG"
                }
                .into(),
            ),
            global,
            oom_memcg: oom_memcg.map(str::to_string),
            task_memcg: Some("/a/b".into()),
            pid: Some(9),
        }
    }

    /// One row per level of the order, and what wins when several speak.
    #[test]
    fn the_priority_order() {
        let parent_hit = walk(vec![
            level("/p/c", 10 << 20, None),
            level("/p", 32 << 20, Some(32 << 20)),
            level("/", 1 << 30, None),
        ]);
        let nothing_at_limit = walk(vec![level("/p/c", 10 << 20, Some(1 << 30))]);
        let node = decision(None);
        let memcg = decision(Some("/dom"));
        let s_memcg = summary(false, Some("/sum"));
        let s_global = summary(true, None);
        let task_in = TaskIn {
            task_cgroup: "/p/c".into(),
            limit_cgroup: "/old".into(),
        };
        let cg = Some(Scope::Cgroup);
        let nd = Some(Scope::Node);
        use VerdictSource::{CgroupUsage, Kmsg, OomControl};
        /// (case, evidence, expected source, scope, oom cgroup)
        type Row<'a> = (
            &'a str,
            Evidence<'a>,
            Option<VerdictSource>,
            Option<Scope>,
            Option<&'a str>,
        );
        #[rustfmt::skip]
        let rows: Vec<Row<'_>> = vec![
            ("decision beats everything", Evidence { decision: Some(&memcg), summary: Some(&s_global), task_in: Some(&task_in), kill_line: nd, walk: Some(&parent_hit), kmsg_expected: true }, Some(OomControl), cg, Some("/dom")),
            ("a node-level decision", Evidence { decision: Some(&node), walk: Some(&parent_hit), ..Evidence::default() }, Some(OomControl), nd, None),
            ("summary beats the old line and the walk", Evidence { summary: Some(&s_memcg), task_in: Some(&task_in), walk: Some(&parent_hit), ..Evidence::default() }, Some(Kmsg), cg, Some("/sum")),
            ("a global summary", Evidence { summary: Some(&s_global), walk: Some(&parent_hit), ..Evidence::default() }, Some(Kmsg), nd, None),
            ("pre-4.19 line beats the walk", Evidence { task_in: Some(&task_in), walk: Some(&parent_hit), ..Evidence::default() }, Some(Kmsg), cg, Some("/old")),
            ("the walk: lowest level at its limit", Evidence { walk: Some(&parent_hit), kill_line: cg, ..Evidence::default() }, Some(CgroupUsage), cg, Some("/p")),
            ("a node kill line beats the walk", Evidence { walk: Some(&parent_hit), kill_line: nd, ..Evidence::default() }, Some(Kmsg), nd, None),
            ("walk with nothing at its limit: the node", Evidence { walk: Some(&nothing_at_limit), ..Evidence::default() }, Some(CgroupUsage), nd, None),
            ("memcg kill line, walk no longer at its limit", Evidence { walk: Some(&nothing_at_limit), kill_line: cg, ..Evidence::default() }, Some(Kmsg), cg, None),
            ("kill line alone", Evidence { kill_line: cg, ..Evidence::default() }, Some(Kmsg), cg, None),
            ("nothing", Evidence::default(), None, None, None),
        ];
        for (name, e, source, scope, oom_cgroup) in rows {
            let v = decide(&e);
            assert_eq!(v.source, source, "{name}");
            assert_eq!(v.scope, scope, "{name}");
            assert_eq!(v.oom_cgroup.as_deref(), oom_cgroup, "{name}");
            if scope == cg {
                assert_eq!(v.constraint, Some(Constraint::Memcg), "{name}");
            }
        }
    }

    #[test]
    fn a_summary_the_kill_line_contradicts_does_not_decide() {
        // A memcg kill line with a summary read as global (a hostile name):
        // the prefix wins, the walk decides the cgroup.
        let w = walk(vec![
            level("/t/c", 10 << 20, None),
            level("/t", 32 << 20, Some(32 << 20)),
        ]);
        let forged = summary(true, None);
        let v = decide(&Evidence {
            summary: Some(&forged),
            kill_line: Some(Scope::Cgroup),
            walk: Some(&w),
            ..Evidence::default()
        });
        assert_eq!(v.scope, Some(Scope::Cgroup));
        assert_eq!(v.oom_cgroup.as_deref(), Some("/t"));
        assert_eq!(v.source, Some(VerdictSource::CgroupUsage));
        // When they agree, the summary decides.
        let real = summary(false, Some("/t"));
        let v = decide(&Evidence {
            summary: Some(&real),
            kill_line: Some(Scope::Cgroup),
            ..Evidence::default()
        });
        assert_eq!(v.source, Some(VerdictSource::Kmsg));
    }

    #[test]
    fn what_is_missing_is_said() {
        let v = decide(&Evidence {
            kill_line: Some(Scope::Cgroup),
            ..Evidence::default()
        });
        assert!(
            v.missing.iter().any(|m| m.starts_with("oom_cgroup:")),
            "{v:?}"
        );
        let v = decide(&Evidence {
            kill_line: Some(Scope::Node),
            ..Evidence::default()
        });
        assert!(
            v.missing.iter().any(|m| m.starts_with("constraint:")),
            "{v:?}"
        );
        let w = walk(vec![level("/x", 1, None)]);
        let v = decide(&Evidence {
            walk: Some(&w),
            kmsg_expected: true,
            ..Evidence::default()
        });
        assert!(
            v.missing.iter().any(|m| m.starts_with("kernel log lines")),
            "{v:?}"
        );
        let v = decide(&Evidence::default());
        assert!(v.missing.iter().any(|m| m.starts_with("scope:")), "{v:?}");
        let d = decision(Some("/dom"));
        let v = decide(&Evidence {
            decision: Some(&d),
            ..Evidence::default()
        });
        assert!(v.missing.is_empty(), "{v:?}");
        assert_eq!(
            (v.oom_usage_bytes, v.oom_limit_bytes),
            (Some(32 << 20), Some(32 << 20))
        );
    }
}
