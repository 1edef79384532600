//! Turns one victim's [`Pending`] into the [`Kill`] a user reads: each
//! section of the report from the sources that know it, best first, and
//! what could not be learned listed in `missing`.

use super::{
    Correlated, Correlator, Expect,
    incident::IncidentKey,
    pending::Pending,
    verdict::{self, Evidence},
};
use crate::{
    capture::{TaskSighting, memstat::MemoryTargets},
    correlate::walk::Walk,
    report::{Kill, Memcg, OomStat, Outcome, Scope, Trigger, VerdictSource, Victim},
};

impl Correlator {
    /// `unconfirmed` says why nothing confirmed the OOM killer killed it.
    pub(super) fn build(&mut self, p: Pending, unconfirmed: Option<&str>) -> Correlated {
        let member = self.take_member(&p);
        let replayed = p.replayed_only();
        let mut missing = if replayed {
            vec![REPLAYED.to_string()]
        } else {
            expected_but_absent(&self.expect, &p)
        };
        if let Some(why) = unconfirmed {
            missing.push(format!("kill confirmation: {why}"));
        }
        let mut victim = victim(&p, member.as_ref());
        if replayed && victim.points.is_none() {
            missing.push("points: the kill happened while oomtrace was not running".to_string());
        } else if let Some(m) = points_missing(&p, &victim, &self.expect) {
            missing.push(m);
        }
        let walk = victim_walk(&p, member.as_ref());
        victim.cgroup = victim_cgroup(&p, walk.as_ref());
        if victim.cgroup.is_none() {
            missing.push("victim cgroup: no tp_btf walk, no kernel log summary for this pid, and /proc/<pid> was gone".to_string());
        }
        let verdict = verdict::decide(&Evidence {
            decision: p.decision.as_deref(),
            summary: p.kmsg.summary.as_ref(),
            task_in: p.kmsg.task_in.as_ref(),
            kill_line: p.kmsg.killed.as_ref().and_then(|k| k.scope),
            walk: walk.as_ref(),
            kmsg_expected: self.expect.kmsg,
        });
        missing.extend(verdict.missing.iter().cloned());
        let mut memcg = memcg(&p, &verdict, walk.as_ref(), self.page_size, &mut missing);
        memcg.oom_stat = oom_stat(&p, &verdict);
        if memcg.oom_stat.is_none() && self.expect.memory {
            missing.push(oom_stat_missing(&p, &verdict));
        }
        let outcome = outcome(&p, member.as_ref(), &mut missing);
        let trigger = trigger(&p);
        if trigger.comm.is_none() {
            missing.push("trigger: the kernel's \"invoked oom-killer\" line was rate-limited and no BPF hook saw the kill".to_string());
        }
        let at_ns = p.at_ns();
        let key = IncidentKey {
            decision_ktime: p.decision.as_ref().map(|d| d.meta.ktime_ns),
            trigger: p.trigger.as_ref().map(|t| t.tid),
            oom_cgroup: verdict.oom_cgroup.clone(),
            group: p.kmsg.group_of.clone(),
        };
        let kill = Kill {
            scope: verdict.scope,
            constraint: verdict.constraint,
            oom_cgroup: verdict.oom_cgroup,
            verdict_source: verdict.source,
            incident: self.incidents.assign(&self.boot_id, &key, at_ns),
            victim,
            trigger,
            outcome,
            memcg,
            sources: sources(&p, member.is_some()),
            missing,
            replayed,
            ..Kill::default()
        };
        Correlated {
            kill,
            at_ns: (at_ns > 0).then_some(at_ns),
            kill_seq: p.kill_seq,
        }
    }
}

/// What a replayed kill lacks, said once instead of one line per eBPF source.
const REPLAYED: &str = "eBPF sources: the kill happened while oomtrace was not running; it was read back from the kernel log after a restart (--state-dir)";

fn sources(p: &Pending, scanned: bool) -> Vec<&'static str> {
    let mut sources = Vec::new();
    if p.tp.is_some() {
        sources.push("tracepoint");
    }
    if p.btf.is_some() {
        sources.push("tp_btf");
    }
    if p.decision.is_some() {
        sources.push("oom_control");
    }
    if p.kmsg.killed.is_some() || p.kmsg.summary.is_some() {
        sources.push("kmsg");
    }
    if scanned {
        sources.push("oom_group_scan");
    }
    sources
}

/// The per-victim sources this run has that did not report this victim.
fn expected_but_absent(expect: &Expect, p: &Pending) -> Vec<String> {
    let mut missing = Vec::new();
    if expect.tracepoint && p.tp.is_none() {
        missing.push("tracepoint event (lost or late: see lost_events)".to_string());
    }
    if expect.tp_btf && p.btf.is_none() {
        missing.push("tp_btf event with the victim's cgroup (lost or late)".to_string());
    }
    if expect.kmsg && p.kmsg.killed.is_none() {
        missing.push("kernel log kill line (kmsg reader behind or its ring wrapped)".to_string());
    }
    missing
}

/// Who was killed: tp_btf's task read first, then the tracepoint's record,
/// the kill line, the decision's chosen task and a group scan.
fn victim(p: &Pending, member: Option<&TaskSighting>) -> Victim {
    let mut v = Victim {
        pid: Some(p.pid),
        ..Victim::default()
    };
    if let Some(b) = &p.btf {
        v.comm = Some(b.comm.clone()).filter(|c| !c.is_empty());
        v.oom_score_adj = b.oom_score_adj;
        v.uid = Some(b.uid);
    }
    if let Some(f) = &p.tp {
        v.comm = v.comm.or_else(|| f.comm.clone());
        v.uid = v.uid.or(f.uid);
        v.oom_score_adj = v.oom_score_adj.or(f.oom_score_adj);
        v.total_vm_kb = f.total_vm_kb;
        v.anon_rss_kb = f.anon_rss_kb;
        v.file_rss_kb = f.file_rss_kb;
        v.shmem_rss_kb = f.shmem_rss_kb;
        v.pgtables_kb = f.pgtables_kb;
    }
    if let Some(k) = &p.kmsg.killed {
        v.comm = v.comm.or_else(|| Some(k.comm.clone()));
        v.uid = v.uid.or(k.uid);
        v.oom_score_adj = v.oom_score_adj.or(k.oom_score_adj);
        v.total_vm_kb = v.total_vm_kb.or(k.total_vm_kb);
        v.anon_rss_kb = v.anon_rss_kb.or(k.anon_rss_kb);
        v.file_rss_kb = v.file_rss_kb.or(k.file_rss_kb);
        v.shmem_rss_kb = v.shmem_rss_kb.or(k.shmem_rss_kb);
        v.pgtables_kb = v.pgtables_kb.or(k.pgtables_kb);
    }
    if let Some(c) = p.chosen_by_decision() {
        v.points = Some(c.points);
        v.comm = v.comm.or_else(|| Some(c.comm.clone()));
        v.oom_score_adj = v.oom_score_adj.or(Some(c.oom_score_adj));
    }
    v.points = v.points.or(p.kmsg.chosen_score);
    if let Some(m) = member {
        v.comm = v
            .comm
            .or_else(|| Some(m.comm.clone()).filter(|c| !c.is_empty()));
        v.oom_score_adj = v.oom_score_adj.or(m.oom_score_adj);
    }
    v
}

fn points_missing(p: &Pending, v: &Victim, expect: &Expect) -> Option<String> {
    if v.points.is_some() {
        return None;
    }
    Some(if p.decision.is_some() {
        "points: this victim was killed with the chosen task (memory.oom.group or shared mm), not scored itself".to_string()
    } else if expect.decision {
        "points: no oom_kill_process event matched this kill".to_string()
    } else {
        "points: needs the oom_kill_process hook (kprobe/fentry), not available on this kernel"
            .to_string()
    })
}

/// The victim's memory cgroup walk: tp_btf, else the decision's walk of the
/// chosen task, else the kernel's scan of its memory.oom.group.
fn victim_walk(p: &Pending, member: Option<&TaskSighting>) -> Option<Walk> {
    p.btf
        .as_ref()
        .and_then(|b| b.walk.clone())
        .or_else(|| {
            p.chosen_by_decision()
                .and_then(|_| p.decision.as_ref().and_then(|d| d.chosen_memcg.clone()))
        })
        .or_else(|| member.and_then(|m| m.walk.clone()))
}

/// The victim's cgroup path: the walk, else the summary naming this pid,
/// else the pre-4.19 line, else `/proc` read as it died.
fn victim_cgroup(p: &Pending, walk: Option<&Walk>) -> Option<String> {
    walk.and_then(|w| w.leaf().map(|l| l.path.clone()))
        .or_else(|| {
            p.kmsg
                .summary
                .as_ref()
                .filter(|s| s.pid == Some(p.pid))
                .and_then(|s| s.task_memcg.clone())
        })
        .or_else(|| p.kmsg.task_in.as_ref().map(|t| t.task_cgroup.clone()))
        .or_else(|| p.proc_cgroup.clone())
}

/// Usage and limits: the OOM domain from the decision, the rest from the walk.
fn memcg(
    p: &Pending,
    verdict: &verdict::Verdict,
    walk: Option<&Walk>,
    page_size: u64,
    missing: &mut Vec<String>,
) -> Memcg {
    let mut memcg = Memcg {
        oom_usage_bytes: verdict.oom_usage_bytes,
        oom_limit_bytes: verdict.oom_limit_bytes,
        total_bytes: p
            .decision
            .as_ref()
            .map(|d| d.totalpages.saturating_mul(page_size)),
        ..Memcg::default()
    };
    let Some(walk) = walk else {
        return memcg;
    };
    if let Some(leaf) = walk.leaf() {
        memcg.victim_usage_bytes = Some(leaf.usage_bytes);
        memcg.victim_limit_bytes = leaf.limit_bytes;
    }
    if let Some(level) = verdict.oom_cgroup.as_deref().and_then(|c| walk.find(c)) {
        memcg.oom_usage_bytes = memcg.oom_usage_bytes.or(Some(level.usage_bytes));
        memcg.oom_limit_bytes = memcg.oom_limit_bytes.or(level.limit_bytes);
    }
    memcg.hierarchy = walk.usages();
    if walk.truncated {
        missing.push(
            "cgroup path: deeper than the captured levels, paths start with .../".to_string(),
        );
    }
    memcg
}

/// What the lookup should read of where the memory was, from what
/// is known of `p` when it is asked (see [`crate::capture::memstat`]): the
/// verdict as it stands. An exact one (the decision, the kernel's summary)
/// names the one cgroup or the node; one inferred from the walk names the
/// cgroup at its limit, and the node too, since the kill line (on its way)
/// can still say the node ran out. Without either, everything.
pub(super) fn memory_targets(p: &Pending, kmsg_expected: bool) -> MemoryTargets {
    let walk = victim_walk(p, None);
    let v = verdict::decide(&Evidence {
        decision: p.decision.as_deref(),
        summary: p.kmsg.summary.as_ref(),
        task_in: p.kmsg.task_in.as_ref(),
        kill_line: p.kmsg.killed.as_ref().and_then(|k| k.scope),
        walk: walk.as_ref(),
        kmsg_expected,
    });
    let exact = matches!(
        v.source,
        Some(VerdictSource::OomControl | VerdictSource::Kmsg)
    );
    match (v.scope, v.oom_cgroup) {
        (Some(Scope::Cgroup), Some(cgroup)) => MemoryTargets {
            cgroups: Some(vec![cgroup]),
            node: !exact,
        },
        (Some(Scope::Node), _) if exact || walk.is_some() => MemoryTargets {
            cgroups: Some(Vec::new()),
            node: true,
        },
        _ => MemoryTargets::default(),
    }
}

/// Where the memory was: the OOM cgroup's figures (its whole subtree), or
/// the node's for a node-level kill, as read when the victim was first seen.
fn oom_stat(p: &Pending, verdict: &verdict::Verdict) -> Option<OomStat> {
    let m = p.memory.as_ref()?;
    match verdict.scope? {
        Scope::Node => m.node,
        Scope::Cgroup => verdict.oom_cgroup.as_deref().and_then(|c| m.of(c)).copied(),
    }
}

fn oom_stat_missing(p: &Pending, verdict: &verdict::Verdict) -> String {
    match (&p.memory, verdict.scope) {
        (None, _) => "memcg.oom_stat: the lookup beside the draining was not answered (queue full or stopped)".into(),
        (Some(_), None) => "memcg.oom_stat: which limit was hit is unknown".into(),
        (Some(_), Some(_)) => "memcg.oom_stat: the memory.stat of the OOM cgroup could not be read when the victim was first seen (its cgroup was not known yet, or is gone)".into(),
    }
}

/// Main process or child, from the lineage of the first record read from
/// the victim task; a group kill when the kernel log's memory.oom.group line
/// or the group scan took this victim. Survivors are counted at enrichment.
fn outcome(p: &Pending, member: Option<&TaskSighting>, missing: &mut Vec<String>) -> Outcome {
    let lineage = p
        .btf
        .as_ref()
        .and_then(|b| b.lineage.as_ref())
        .or_else(|| p.chosen_by_decision().and_then(|c| c.lineage.as_ref()))
        .or_else(|| member.and_then(|m| m.lineage.as_ref()));
    let main_process = match super::outcome::main_process(lineage) {
        Ok(main) => Some(main),
        Err(why) => {
            missing.push(why);
            None
        }
    };
    Outcome {
        main_process,
        survivors: None,
        group_kill: p.kmsg.group_of.is_some() || member.is_some(),
    }
}

/// The task that ran the OOM killer: the eBPF records' `current`, the
/// decision's order, gfp mask and memory cgroup, the kernel log's header.
fn trigger(p: &Pending) -> Trigger {
    let mut t = Trigger::default();
    if let Some(tr) = &p.trigger {
        t.pid = Some(tr.tid);
        t.comm = Some(tr.comm.clone());
    }
    if let Some(d) = &p.decision {
        t.order = Some(d.order);
        t.gfp_mask = Some(format!("{:#x}", d.gfp_mask));
        t.cgroup = d
            .trigger_memcg
            .as_ref()
            .and_then(|w| w.leaf().map(|l| l.path.clone()));
    }
    if let Some(h) = &p.kmsg.header {
        t.comm = t.comm.or_else(|| Some(h.comm.clone()));
        t.order = t.order.or(h.order);
        t.gfp_mask = h.gfp_mask.clone().or(t.gfp_mask);
        t.oom_score_adj = h.oom_score_adj;
    }
    t
}
