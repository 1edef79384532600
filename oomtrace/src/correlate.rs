//! Merges the sources of one kill into one [`Kill`].
//!
//! A victim is seen by up to five sources: the classic tracepoint (pid, rss,
//! oom_score_adj), `tp_btf` (its memory cgroup and ancestors), the
//! `oom_kill_memcg_member` hook (the same, for memory.oom.group members on
//! kernels without `tp_btf`), the
//! `oom_kill_process` hook (the decision: OOM domain, constraint, badness,
//! trigger) and the kernel log (kill line, and the rate-limited header and
//! summary). They are keyed by victim pid. A kill is emitted as soon as every
//! active per-victim source has reported it, or when [`Correlator::wait`] has
//! passed since the first sighting: then it is emitted with what is known and
//! the rest listed in `missing`. Nothing seen by any source is dropped.
//!
//! The decision arrives before its victims (the hook runs at the entry of
//! `oom_kill_process`); victims are matched to it by trigger thread and time.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use oomtrace_common::{
    BtfVictim, DECISION_HAS_CHOSEN, DECISION_HAS_MEMCG, Decision, Header, VICTIM_HAS_ADJ, c_str,
};

use crate::{
    kmsg::OomLine,
    probe::Hook,
    report::{Constraint, Kill, Memcg, Scope, Trigger, VerdictSource, Victim},
    tracefs::MarkVictimFields,
    verdict::Walk,
};

/// One input of the correlator.
#[derive(Debug)]
pub enum Input {
    Tracepoint {
        header: Header,
        fields: MarkVictimFields,
        /// The victim's memory cgroup read from `/proc/<pid>/cgroup` on arrival
        /// (when no `tp_btf` walk is available).
        proc_cgroup: Option<String>,
    },
    TpBtf(Box<BtfVictim>),
    Decision(Box<Decision>),
    /// A task a memory.oom.group kill is about to take (`oom_kill_memcg_member`).
    /// It only completes a victim another source reports: the kernel skips
    /// some of the tasks it scans.
    GroupMember(Box<BtfVictim>),
    Kmsg {
        ts_usec: u64,
        line: OomLine,
        /// As for `Tracepoint`, for kill lines.
        proc_cgroup: Option<String>,
    },
}

/// The kernel's decision, decoded.
#[derive(Debug, Clone)]
pub struct DecisionInfo {
    pub ktime_ns: u64,
    pub trigger_tid: u32,
    pub trigger_tgid: u32,
    pub trigger_comm: String,
    pub memcg: bool,
    pub constraint: Option<Constraint>,
    pub order: i32,
    pub gfp_mask: u32,
    pub totalpages: u64,
    pub chosen: Option<(u32, String, i64, i32)>,
    pub domain: Option<Walk>,
    pub chosen_memcg: Option<Walk>,
    pub trigger_memcg: Option<Walk>,
}

/// What `tp_btf/mark_victim` read from the victim task.
#[derive(Debug, Clone)]
pub struct BtfSighting {
    pub comm: String,
    pub oom_score_adj: Option<i32>,
    pub uid: u32,
    pub walk: Option<Walk>,
}

/// Everything known about one victim, before enrichment.
#[derive(Debug, Default)]
pub struct Pending {
    pub pid: u32,
    first_seen: Option<Instant>,
    pub ktime_ns: Option<u64>,
    pub kmsg_ts_usec: Option<u64>,
    pub trigger: Option<(u32, u32, String)>,
    pub tp: Option<MarkVictimFields>,
    pub btf: Option<BtfSighting>,
    pub decision: Option<Arc<DecisionInfo>>,
    pub killed: Option<OomLine>,
    pub summary: Option<OomLine>,
    pub header: Option<OomLine>,
    pub chosen_score: Option<i64>,
    pub task_in: Option<(String, String)>,
    /// Inherited from the first victim of a memory.oom.group kill.
    pub group_of: Option<String>,
    /// From `/proc/<pid>/cgroup`, read while the victim was dying.
    pub proc_cgroup: Option<String>,
}

/// A victim ready for enrichment.
#[derive(Debug)]
pub struct Correlated {
    pub kill: Kill,
    /// The victim's cgroup walk captured in the kernel.
    pub victim_walk: Option<Walk>,
    /// Whether the victim was the task the kernel chose (not a group member).
    pub chosen: bool,
    /// CLOCK_MONOTONIC nanoseconds of the kill (BPF ktime, else the kernel log's timestamp).
    pub at_ns: Option<u64>,
}

/// Settings and state of the correlator.
pub struct Correlator {
    /// How long to wait for the remaining sources of a kill.
    pub wait: Duration,
    page_size: u64,
    expect_tp: bool,
    expect_btf: bool,
    expect_kmsg: bool,
    decision_hook: bool,
    pending: HashMap<u32, Pending>,
    /// Pids emitted recently: late sources for them are dropped, not re-reported.
    emitted: VecDeque<(Instant, u32)>,
    decisions: HashMap<u32, Arc<DecisionInfo>>,
    /// Group members scanned by the kernel, by pid, with when they were seen.
    members: HashMap<u32, (Instant, BtfSighting)>,
    /// Kernel-log context that precedes the kill line it belongs to.
    last_header: Option<(Instant, OomLine)>,
    last_task_in: Option<(Instant, String, String)>,
    last_group: Option<(Instant, String, Option<OomLine>)>,
    last_summary: Option<(Instant, OomLine)>,
    incidents: Incidents,
    boot_id: String,
    /// Sources that arrived after their kill was emitted.
    pub late: u64,
    /// kmsg header lines suppressed by the kernel's rate limiter.
    pub suppressed: u64,
}

impl Correlator {
    pub fn new(active: &[Hook], wait: Duration, page_size: u64, boot_id: String) -> Self {
        Self {
            wait,
            page_size,
            expect_tp: active.contains(&Hook::Tracepoint),
            expect_btf: active.contains(&Hook::TpBtf),
            expect_kmsg: active.contains(&Hook::Kmsg),
            decision_hook: active.contains(&Hook::Fentry) || active.contains(&Hook::Kprobe),
            pending: HashMap::new(),
            emitted: VecDeque::new(),
            decisions: HashMap::new(),
            members: HashMap::new(),
            last_header: None,
            last_task_in: None,
            last_group: None,
            last_summary: None,
            incidents: Incidents::default(),
            boot_id,
            late: 0,
            suppressed: 0,
        }
    }

    fn was_emitted(&self, pid: u32) -> bool {
        self.emitted.iter().any(|&(_, p)| p == pid)
    }

    fn entry(&mut self, pid: u32, now: Instant) -> Option<&mut Pending> {
        if self.was_emitted(pid) {
            self.late += 1;
            return None;
        }
        let p = self.pending.entry(pid).or_insert_with(|| Pending {
            pid,
            ..Pending::default()
        });
        p.first_seen.get_or_insert(now);
        Some(p)
    }

    /// Takes one input; returns the kills that became complete.
    pub fn push(&mut self, input: Input, now: Instant) -> Vec<Correlated> {
        let mut touched = None;
        match input {
            Input::Tracepoint {
                header,
                fields,
                proc_cgroup,
            } => {
                let pid = fields.pid.unwrap_or(0);
                let decision = self.decision_for(&header);
                if let Some(p) = self.entry(pid, now) {
                    p.ktime_ns.get_or_insert(header.ktime_ns);
                    p.trigger.get_or_insert_with(|| trigger_of(&header));
                    if p.decision.is_none() {
                        p.decision = decision;
                    }
                    p.tp = Some(fields);
                    if p.proc_cgroup.is_none() {
                        p.proc_cgroup = proc_cgroup;
                    }
                    touched = Some(pid);
                }
            }
            Input::TpBtf(v) => {
                let pid = v.pid;
                let decision = self.decision_for(&v.header);
                let seen = sighting(&v, self.page_size);
                self.members.remove(&pid);
                if let Some(p) = self.entry(pid, now) {
                    p.ktime_ns.get_or_insert(v.header.ktime_ns);
                    p.trigger.get_or_insert_with(|| trigger_of(&v.header));
                    if p.decision.is_none() {
                        p.decision = decision;
                    }
                    p.btf = Some(seen);
                    touched = Some(pid);
                }
            }
            Input::Decision(d) => {
                let info = Arc::new(self.decode_decision(&d));
                self.decisions.insert(info.trigger_tid, info);
                return Vec::new();
            }
            Input::GroupMember(v) => {
                let sighting = sighting(&v, self.page_size);
                self.members.insert(v.pid, (now, sighting));
                return Vec::new();
            }
            Input::Kmsg {
                ts_usec,
                line,
                proc_cgroup,
            } => {
                touched = self.push_kmsg(ts_usec, line, now);
                if let Some(p) = touched.and_then(|pid| self.pending.get_mut(&pid))
                    && p.proc_cgroup.is_none()
                {
                    p.proc_cgroup = proc_cgroup;
                }
            }
        }
        match touched {
            Some(pid) if self.complete(pid) => self.emit(pid).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    fn push_kmsg(&mut self, ts_usec: u64, line: OomLine, now: Instant) -> Option<u32> {
        match line {
            OomLine::Header { .. } => {
                self.last_header = Some((now, line));
                None
            }
            OomLine::TaskInMemcg {
                ref task_cgroup,
                ref limit_cgroup,
            } => {
                self.last_task_in = Some((now, task_cgroup.clone(), limit_cgroup.clone()));
                None
            }
            OomLine::GroupKill { ref cgroup } => {
                let summary = self.last_summary.as_ref().map(|(_, s)| s.clone());
                self.last_group = Some((now, cgroup.clone(), summary));
                None
            }
            OomLine::Suppressed { count, .. } => {
                self.suppressed += count;
                None
            }
            OomLine::Summary { pid, .. } => {
                self.last_summary = Some((now, line.clone()));
                let pid = pid?;
                let header = self.take_recent_header(now);
                let p = self.entry(pid, now)?;
                p.kmsg_ts_usec.get_or_insert(ts_usec);
                p.summary = Some(line);
                if p.header.is_none() {
                    p.header = header;
                }
                Some(pid)
            }
            OomLine::KillChosen { pid, score, .. } => {
                let pid = pid?;
                let task_in = self.recent_task_in(now);
                let p = self.entry(pid, now)?;
                p.chosen_score = score;
                if p.task_in.is_none() {
                    p.task_in = task_in;
                }
                Some(pid)
            }
            OomLine::Killed { pid, .. } => {
                let pid = pid?;
                let header = self.take_recent_header(now);
                let task_in = self.recent_task_in(now);
                let group = self
                    .last_group
                    .as_ref()
                    .filter(|(t, _, _)| now.duration_since(*t) < Duration::from_millis(500))
                    .map(|(_, c, s)| (c.clone(), s.clone()));
                let p = self.entry(pid, now)?;
                p.kmsg_ts_usec.get_or_insert(ts_usec);
                p.killed = Some(line);
                if p.header.is_none() {
                    p.header = header;
                }
                if p.task_in.is_none() {
                    p.task_in = task_in;
                }
                if p.summary.is_none()
                    && let Some((cgroup, summary)) = group
                {
                    p.group_of = Some(cgroup);
                    p.summary = summary;
                }
                Some(pid)
            }
            OomLine::Reaped { .. } => None,
        }
    }

    fn take_recent_header(&mut self, now: Instant) -> Option<OomLine> {
        match &self.last_header {
            Some((t, _)) if now.duration_since(*t) < Duration::from_secs(2) => {
                self.last_header.take().map(|(_, h)| h)
            }
            _ => None,
        }
    }

    fn recent_task_in(&self, now: Instant) -> Option<(String, String)> {
        self.last_task_in
            .as_ref()
            .filter(|(t, _, _)| now.duration_since(*t) < Duration::from_secs(2))
            .map(|(_, a, b)| (a.clone(), b.clone()))
    }

    fn decision_for(&self, header: &Header) -> Option<Arc<DecisionInfo>> {
        let d = self.decisions.get(&header.trigger_tid)?;
        let age = header.ktime_ns.checked_sub(d.ktime_ns)?;
        (age < 5_000_000_000).then(|| Arc::clone(d))
    }

    fn decode_decision(&self, d: &Decision) -> DecisionInfo {
        let chosen = (d.flags & DECISION_HAS_CHOSEN != 0).then(|| {
            (
                d.chosen_pid,
                text(&d.chosen_comm),
                d.chosen_points,
                d.chosen_adj,
            )
        });
        DecisionInfo {
            ktime_ns: d.header.ktime_ns,
            trigger_tid: d.header.trigger_tid,
            trigger_tgid: d.header.trigger_tgid,
            trigger_comm: text(&d.header.trigger_comm),
            memcg: d.flags & DECISION_HAS_MEMCG != 0,
            constraint: Constraint::from_kernel(d.constraint),
            order: d.order,
            gfp_mask: d.gfp_mask,
            totalpages: d.totalpages,
            chosen,
            domain: Walk::decode(&d.domain, self.page_size),
            chosen_memcg: Walk::decode(&d.chosen_memcg, self.page_size),
            trigger_memcg: Walk::decode(&d.trigger_memcg, self.page_size),
        }
    }

    fn complete(&self, pid: u32) -> bool {
        let Some(p) = self.pending.get(&pid) else {
            return false;
        };
        (!self.expect_tp || p.tp.is_some())
            && (!self.expect_btf || p.btf.is_some())
            && (!self.expect_kmsg || p.killed.is_some())
    }

    /// Emits every kill whose wait has run out.
    pub fn tick(&mut self, now: Instant) -> Vec<Correlated> {
        while let Some(&(t, _)) = self.emitted.front() {
            if now.duration_since(t) > Duration::from_secs(10) {
                self.emitted.pop_front();
            } else {
                break;
            }
        }
        if let Some(newest) = self.decisions.values().map(|d| d.ktime_ns).max() {
            self.decisions
                .retain(|_, d| newest.saturating_sub(d.ktime_ns) < 60_000_000_000);
        }
        // Scanned tasks the kernel did not kill (no memory left to free) are
        // never reported; forget them.
        self.members
            .retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
        let mut due: Vec<(u64, u32)> = self
            .pending
            .values()
            .filter(|p| {
                p.first_seen
                    .is_some_and(|t| now.duration_since(t) >= self.wait)
            })
            .map(|p| {
                (
                    p.ktime_ns
                        .unwrap_or(p.kmsg_ts_usec.unwrap_or(0).saturating_mul(1000)),
                    p.pid,
                )
            })
            .collect();
        due.sort_unstable();
        due.into_iter()
            .filter_map(|(_, pid)| self.emit(pid))
            .collect()
    }

    /// Emits everything still pending (at shutdown).
    pub fn flush(&mut self) -> Vec<Correlated> {
        let mut pids: Vec<u32> = self.pending.keys().copied().collect();
        pids.sort_unstable();
        pids.into_iter().filter_map(|pid| self.emit(pid)).collect()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    fn emit(&mut self, pid: u32) -> Option<Correlated> {
        let p = self.pending.remove(&pid)?;
        let now = p.first_seen.unwrap_or_else(Instant::now);
        self.emitted.push_back((now, pid));
        Some(self.build(p))
    }

    fn build(&mut self, p: Pending) -> Correlated {
        let mut kill = Kill::default();
        let mut missing = Vec::new();
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
        if p.killed.is_some() || p.summary.is_some() {
            sources.push("kmsg");
        }
        if self.expect_tp && p.tp.is_none() {
            missing.push("tracepoint event (lost or late: see lost_events)".to_string());
        }
        if self.expect_btf && p.btf.is_none() {
            missing.push("tp_btf event with the victim's cgroup (lost or late)".to_string());
        }
        if self.expect_kmsg && p.killed.is_none() {
            missing
                .push("kernel log kill line (kmsg reader behind or its ring wrapped)".to_string());
        }

        // Victim.
        let mut v = Victim {
            pid: Some(p.pid),
            ..Victim::default()
        };
        let btf_walk = p.btf.as_ref().and_then(|b| b.walk.clone());
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
        let mut kmsg_scope = None;
        if let Some(OomLine::Killed {
            memcg,
            global,
            comm,
            total_vm_kb,
            anon_rss_kb,
            file_rss_kb,
            shmem_rss_kb,
            uid,
            pgtables_kb,
            oom_score_adj,
            ..
        }) = &p.killed
        {
            v.comm = v.comm.or_else(|| Some(comm.clone()));
            v.uid = v.uid.or(*uid);
            v.oom_score_adj = v.oom_score_adj.or(*oom_score_adj);
            v.total_vm_kb = v.total_vm_kb.or(*total_vm_kb);
            v.anon_rss_kb = v.anon_rss_kb.or(*anon_rss_kb);
            v.file_rss_kb = v.file_rss_kb.or(*file_rss_kb);
            v.shmem_rss_kb = v.shmem_rss_kb.or(*shmem_rss_kb);
            v.pgtables_kb = v.pgtables_kb.or(*pgtables_kb);
            kmsg_scope = match (memcg, global) {
                (true, _) => Some(Scope::Cgroup),
                (_, true) => Some(Scope::Node),
                _ => None,
            };
        }
        let decision = p.decision.clone();
        let chosen_by_decision = decision
            .as_ref()
            .and_then(|d| d.chosen.as_ref())
            .filter(|c| c.0 == p.pid);
        if let Some((_, comm, points, adj)) = chosen_by_decision {
            v.points = Some(*points);
            v.comm = v.comm.or_else(|| Some(comm.clone()));
            v.oom_score_adj = v.oom_score_adj.or(Some(*adj));
        }
        v.points = v.points.or(p.chosen_score);
        if v.points.is_none() {
            missing.push(if decision.is_some() {
                "points: this victim was killed with the chosen task (memory.oom.group or shared mm), not scored itself".to_string()
            } else if self.decision_hook {
                "points: no oom_kill_process event matched this kill".to_string()
            } else {
                "points: needs the oom_kill_process hook (kprobe/fentry), not available on this kernel".to_string()
            });
        }

        // The victim's cgroup walk: tp_btf, else the decision's walk of the
        // chosen task, else the kernel's scan of its memory.oom.group.
        let member = self.members.remove(&p.pid).map(|(_, m)| m);
        if let Some(m) = &member {
            sources.push("oom_group_scan");
            v.comm = v
                .comm
                .or_else(|| Some(m.comm.clone()).filter(|c| !c.is_empty()));
            v.oom_score_adj = v.oom_score_adj.or(m.oom_score_adj);
        }
        let victim_walk = btf_walk
            .or_else(|| {
                chosen_by_decision
                    .and_then(|_| decision.as_ref().and_then(|d| d.chosen_memcg.clone()))
            })
            .or_else(|| member.and_then(|m| m.walk));
        let summary_fields = match &p.summary {
            Some(OomLine::Summary {
                constraint,
                global,
                oom_memcg,
                task_memcg,
                pid,
                ..
            }) => Some((
                constraint.clone(),
                *global,
                oom_memcg.clone(),
                task_memcg.clone(),
                *pid,
            )),
            _ => None,
        };
        v.cgroup = victim_walk
            .as_ref()
            .and_then(|w| w.leaf().map(|l| l.path.clone()))
            .or_else(|| {
                summary_fields
                    .as_ref()
                    .filter(|s| s.4 == Some(p.pid))
                    .and_then(|s| s.3.clone())
            })
            .or_else(|| p.task_in.as_ref().map(|t| t.0.clone()))
            .or_else(|| p.proc_cgroup.clone());
        if v.cgroup.is_none() {
            missing.push("victim cgroup: no tp_btf walk, no kernel log summary for this pid, and /proc/<pid> was gone".to_string());
        }

        // Verdict: oom_control, then kmsg, then the walk.
        let mut memcg = Memcg::default();
        if let Some(d) = &decision {
            kill.verdict_source = Some(VerdictSource::OomControl);
            kill.constraint = d.constraint;
            if d.memcg {
                kill.scope = Some(Scope::Cgroup);
                let domain = d.domain.as_ref().and_then(|w| w.leaf());
                kill.oom_cgroup = domain.map(|l| l.path.clone());
                memcg.oom_usage_bytes = domain.map(|l| l.usage_bytes);
                memcg.oom_limit_bytes = domain.and_then(|l| l.limit_bytes);
            } else {
                kill.scope = Some(Scope::Node);
            }
            memcg.total_bytes = Some(d.totalpages.saturating_mul(self.page_size));
        } else if let Some((constraint, global, oom_memcg, _, _)) = &summary_fields {
            kill.verdict_source = Some(VerdictSource::Kmsg);
            kill.constraint = constraint.as_deref().and_then(Constraint::from_kmsg);
            if *global {
                kill.scope = Some(Scope::Node);
            } else {
                kill.scope = Some(Scope::Cgroup);
                kill.oom_cgroup = oom_memcg.clone();
            }
        } else if let Some((_, limit)) = &p.task_in {
            kill.verdict_source = Some(VerdictSource::Kmsg);
            kill.scope = Some(Scope::Cgroup);
            kill.constraint = Some(Constraint::Memcg);
            kill.oom_cgroup = Some(limit.clone());
        } else if let Some(walk) = &victim_walk {
            let hit = walk.at_limit();
            match (kmsg_scope, hit) {
                (Some(Scope::Node), _) => {
                    kill.verdict_source = Some(VerdictSource::Kmsg);
                    kill.scope = Some(Scope::Node);
                }
                (_, Some(level)) => {
                    kill.verdict_source = Some(VerdictSource::CgroupUsage);
                    kill.scope = Some(Scope::Cgroup);
                    kill.constraint = Some(Constraint::Memcg);
                    kill.oom_cgroup = Some(level.path.clone());
                }
                (Some(Scope::Cgroup), None) => {
                    kill.verdict_source = Some(VerdictSource::Kmsg);
                    kill.scope = Some(Scope::Cgroup);
                    kill.constraint = Some(Constraint::Memcg);
                    missing.push("oom_cgroup: the kernel log says a cgroup limit was hit, but its summary line was rate-limited and no ancestor is at its limit any more".to_string());
                }
                (None, None) => {
                    kill.verdict_source = Some(VerdictSource::CgroupUsage);
                    kill.scope = Some(Scope::Node);
                }
            }
            if kmsg_scope.is_none() && self.expect_kmsg {
                missing.push(
                    "kernel log lines for this kill: scope inferred from cgroup usage only"
                        .to_string(),
                );
            }
        } else if let Some(scope) = kmsg_scope {
            kill.verdict_source = Some(VerdictSource::Kmsg);
            kill.scope = Some(scope);
            if scope == Scope::Cgroup {
                kill.constraint = Some(Constraint::Memcg);
                missing.push("oom_cgroup: the kernel's summary line was rate-limited (\"callbacks suppressed\") and no BPF walk is available".to_string());
            }
        } else {
            missing.push(
                "scope: no source said whether a cgroup limit or the node ran out".to_string(),
            );
        }
        if let (Some(Scope::Cgroup), None) = (kill.scope, &kill.constraint) {
            kill.constraint = Some(Constraint::Memcg);
        }
        if kill.scope == Some(Scope::Node) && kill.constraint.is_none() {
            missing.push(
                "constraint: needs the oom_kill_process hook or the kernel's summary line"
                    .to_string(),
            );
        }

        // Usage and limits from the walk.
        if let Some(walk) = &victim_walk {
            if let Some(leaf) = walk.leaf() {
                memcg.victim_usage_bytes = Some(leaf.usage_bytes);
                memcg.victim_limit_bytes = leaf.limit_bytes;
            }
            if let Some(level) = kill.oom_cgroup.as_deref().and_then(|c| walk.find(c)) {
                memcg.oom_usage_bytes = memcg.oom_usage_bytes.or(Some(level.usage_bytes));
                memcg.oom_limit_bytes = memcg.oom_limit_bytes.or(level.limit_bytes);
            }
            memcg.hierarchy = walk.usages();
            if walk.truncated {
                missing.push(
                    "cgroup path: deeper than the captured levels, paths start with .../"
                        .to_string(),
                );
            }
        }
        kill.memcg = memcg;

        // Trigger.
        let mut trigger = Trigger::default();
        if let Some((tid, _tgid, comm)) = &p.trigger {
            trigger.pid = Some(*tid);
            trigger.comm = Some(comm.clone());
        }
        if let Some(d) = &decision {
            trigger.order = Some(d.order);
            trigger.gfp_mask = Some(format!("{:#x}", d.gfp_mask));
            trigger.cgroup = d
                .trigger_memcg
                .as_ref()
                .and_then(|w| w.leaf().map(|l| l.path.clone()));
        }
        if let Some(OomLine::Header {
            comm,
            gfp_mask,
            order,
            oom_score_adj,
        }) = &p.header
        {
            trigger.comm = trigger.comm.or_else(|| Some(comm.clone()));
            trigger.order = trigger.order.or(*order);
            trigger.gfp_mask = gfp_mask.clone().or(trigger.gfp_mask);
            trigger.oom_score_adj = *oom_score_adj;
        }
        if trigger.comm.is_none() {
            missing.push("trigger: the kernel's \"invoked oom-killer\" line was rate-limited and no BPF hook saw the kill".to_string());
        }
        kill.trigger = trigger;

        // Incident.
        let key = IncidentKey {
            decision_ktime: decision.as_ref().map(|d| d.ktime_ns),
            trigger: p.trigger.as_ref().map(|t| t.0),
            oom_cgroup: kill.oom_cgroup.clone(),
            group: p.group_of.clone(),
        };
        let at_ns = p
            .ktime_ns
            .or(p.kmsg_ts_usec.map(|u| u.saturating_mul(1000)))
            .unwrap_or(0);
        kill.incident = self.incidents.assign(&self.boot_id, &key, at_ns);
        kill.victim = v;
        kill.sources = sources;
        kill.missing = missing;
        let chosen = chosen_by_decision.is_some() || p.group_of.is_none();
        Correlated {
            kill,
            victim_walk,
            chosen,
            at_ns: (at_ns > 0).then_some(at_ns),
        }
    }
}

fn sighting(v: &BtfVictim, page_size: u64) -> BtfSighting {
    BtfSighting {
        comm: text(&v.comm),
        oom_score_adj: (v.flags & VICTIM_HAS_ADJ != 0).then_some(v.oom_score_adj),
        uid: v.uid,
        walk: Walk::decode(&v.memcg, page_size),
    }
}

fn trigger_of(h: &Header) -> (u32, u32, String) {
    (h.trigger_tid, h.trigger_tgid, text(&h.trigger_comm))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(c_str(bytes)).into_owned()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IncidentKey {
    decision_ktime: Option<u64>,
    trigger: Option<u32>,
    oom_cgroup: Option<String>,
    group: Option<String>,
}

/// Assigns incident ids: one per OOM decision.
#[derive(Default)]
struct Incidents {
    last: Option<(IncidentKey, u64, String)>,
}

impl Incidents {
    /// Within this time, victims with the same trigger and OOM domain belong to
    /// one decision when the decision itself was not seen.
    const SAME_DECISION_NS: u64 = 20_000_000;

    fn assign(&mut self, boot_id: &str, key: &IncidentKey, at_ns: u64) -> String {
        if let Some((last_key, last_ns, id)) = &mut self.last {
            let same = match (key.decision_ktime, last_key.decision_ktime) {
                (Some(a), Some(b)) => a == b,
                _ => {
                    let close = at_ns.abs_diff(*last_ns) < Self::SAME_DECISION_NS;
                    let grouped = key.group.is_some() && key.group == last_key.group;
                    close
                        && key.oom_cgroup == last_key.oom_cgroup
                        && (grouped || (key.trigger.is_some() && key.trigger == last_key.trigger))
                }
            };
            if same {
                *last_ns = at_ns;
                return id.clone();
            }
        }
        let id = format!("{boot_id}-{:x}", key.decision_ktime.unwrap_or(at_ns));
        self.last = Some((key.clone(), at_ns, id.clone()));
        id
    }
}

#[cfg(test)]
mod tests {
    use oomtrace_common::{CgroupLevel, CgroupWalk, MAX_DEPTH, NAME_LEN};

    use super::*;
    use crate::kmsg::{parse_oom_line, parse_record};

    /// Real records of one memcg kill on this project's 6.18 host.
    const HOST: &str = include_str!("../tests/data/kmsg/host-6.18-memcg.kmsg.txt");

    fn kmsg_inputs(text: &str) -> Vec<Input> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| parse_record(l.as_bytes()))
            .filter_map(|r| {
                parse_oom_line(&r.message).map(|line| Input::Kmsg {
                    ts_usec: r.ts_usec,
                    line,
                    proc_cgroup: None,
                })
            })
            .collect()
    }

    fn first_kill(inputs: Vec<Input>) -> Vec<Input> {
        // Up to and including the first kill line.
        let mut out = Vec::new();
        for i in inputs {
            let last = matches!(
                &i,
                Input::Kmsg {
                    line: OomLine::Killed { .. },
                    ..
                }
            );
            out.push(i);
            if last {
                break;
            }
        }
        out
    }

    fn name(s: &str) -> [u8; NAME_LEN] {
        let mut n = [0u8; NAME_LEN];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    fn walk(levels: &[(&str, u64, u64)]) -> CgroupWalk {
        let mut w = CgroupWalk {
            depth: levels.len() as u32,
            flags: 0,
            levels: [CgroupLevel {
                id: 0,
                usage_pages: 0,
                max_pages: 0,
                name: [0; NAME_LEN],
            }; MAX_DEPTH],
        };
        for (i, (n, usage, max)) in levels.iter().enumerate() {
            w.levels[i] = CgroupLevel {
                id: i as u64 + 1,
                usage_pages: *usage,
                max_pages: *max,
                name: name(n),
            };
        }
        w
    }

    const UNLIMITED: u64 = i64::MAX as u64 / 4096;

    fn header(ktime_ns: u64, tid: u32) -> Header {
        let mut h = Header::zeroed();
        h.ktime_ns = ktime_ns;
        h.trigger_tid = tid;
        h.trigger_tgid = tid;
        h.trigger_comm[..2].copy_from_slice(b"dd");
        h
    }

    fn btf_victim(pid: u32, ktime_ns: u64, memcg: CgroupWalk) -> Input {
        Input::TpBtf(Box::new(BtfVictim {
            header: header(ktime_ns, pid),
            pid,
            tgid: pid,
            comm: *b"dd\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            oom_score_adj: 500,
            uid: 0,
            flags: VICTIM_HAS_ADJ,
            _pad: 0,
            memcg,
        }))
    }

    fn tp_victim(pid: u32, ktime_ns: u64) -> Input {
        Input::Tracepoint {
            header: header(ktime_ns, pid),
            fields: MarkVictimFields {
                pid: Some(pid),
                comm: Some("dd".into()),
                anon_rss_kb: Some(32_512),
                oom_score_adj: Some(500),
                uid: Some(0),
                ..MarkVictimFields::default()
            },
            proc_cgroup: None,
        }
    }

    #[test]
    fn the_kernel_log_alone_gives_the_verdict_of_a_real_memcg_kill() {
        let mut c = Correlator::new(&[Hook::Kmsg], Duration::from_millis(500), 4096, "b".into());
        let now = Instant::now();
        let out: Vec<Correlated> = first_kill(kmsg_inputs(HOST))
            .into_iter()
            .flat_map(|i| c.push(i, now))
            .collect();
        assert_eq!(out.len(), 1, "a complete kill is emitted at once");
        let k = &out[0].kill;
        assert_eq!(k.verdict_source, Some(VerdictSource::Kmsg));
        assert_eq!(k.scope, Some(Scope::Cgroup));
        assert_eq!(k.constraint, Some(Constraint::Memcg));
        assert_eq!(k.oom_cgroup.as_deref(), Some("/kmsgsample"));
        assert_eq!(k.victim.cgroup.as_deref(), Some("/kmsgsample"));
        assert_eq!(k.victim.comm.as_deref(), Some("python3"));
        assert_eq!(k.trigger.comm.as_deref(), Some("python3"));
        assert_eq!(k.trigger.gfp_mask.as_deref(), Some("0xcc0(GFP_KERNEL)"));
        assert_eq!(k.sources, vec!["kmsg"]);
        assert!(k.victim.anon_rss_kb.is_some_and(|kb| kb > 0));
    }

    #[test]
    fn every_source_of_one_kill_makes_one_event_and_no_duplicate() {
        let active = [Hook::Tracepoint, Hook::TpBtf, Hook::Kmsg];
        let mut c = Correlator::new(&active, Duration::from_millis(500), 4096, "b".into());
        let now = Instant::now();
        let kmsg = first_kill(kmsg_inputs(HOST));
        let pid = kmsg
            .iter()
            .find_map(|i| match i {
                Input::Kmsg {
                    line: OomLine::Killed { pid, .. },
                    ..
                } => *pid,
                _ => None,
            })
            .expect("kill line");
        let w = walk(&[("kmsgsample", 16_384, 16_384), ("", 90_000, UNLIMITED)]);
        assert!(c.push(tp_victim(pid, 1_000), now).is_empty());
        assert!(c.push(btf_victim(pid, 1_001, w), now).is_empty());
        let out: Vec<_> = kmsg.into_iter().flat_map(|i| c.push(i, now)).collect();
        assert_eq!(out.len(), 1);
        let k = &out[0].kill;
        assert_eq!(k.sources, vec!["tracepoint", "tp_btf", "kmsg"]);
        assert_eq!(k.memcg.victim_limit_bytes, Some(16_384 * 4096));
        assert_eq!(k.memcg.oom_limit_bytes, Some(16_384 * 4096));
        assert_eq!(k.victim.oom_score_adj, Some(500));
        // A late duplicate source for the same pid is dropped and counted.
        assert!(c.push(tp_victim(pid, 1_002), now).is_empty());
        assert_eq!(c.late, 1);
        assert!(c.tick(now + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn a_kill_missing_a_source_is_emitted_after_the_wait_with_what_is_missing() {
        let active = [Hook::Tracepoint, Hook::TpBtf, Hook::Kmsg];
        let mut c = Correlator::new(&active, Duration::from_millis(500), 4096, "b".into());
        let now = Instant::now();
        // The summary was rate-limited and the kill line did not arrive: only BPF.
        let w = walk(&[
            ("child", 1_000, UNLIMITED),
            ("parent", 8_190, 8_192),
            ("", 90_000, UNLIMITED),
        ]);
        assert!(c.push(tp_victim(42, 1_000), now).is_empty());
        assert!(c.push(btf_victim(42, 1_001, w), now).is_empty());
        assert!(
            c.tick(now + Duration::from_millis(100)).is_empty(),
            "not before the wait"
        );
        let out = c.tick(now + Duration::from_millis(600));
        assert_eq!(out.len(), 1);
        let k = &out[0].kill;
        assert_eq!(k.verdict_source, Some(VerdictSource::CgroupUsage));
        assert_eq!(k.oom_cgroup.as_deref(), Some("/parent"));
        assert_eq!(k.victim.cgroup.as_deref(), Some("/parent/child"));
        assert!(
            k.missing.iter().any(|m| m.contains("kernel log kill line")),
            "{:?}",
            k.missing
        );
        assert_eq!(c.pending_count(), 0);
    }

    #[test]
    fn victims_of_one_decision_share_an_incident_and_the_decision_decides() {
        let active = [Hook::Tracepoint, Hook::TpBtf, Hook::Kprobe];
        let mut c = Correlator::new(&active, Duration::from_millis(500), 4096, "b".into());
        let now = Instant::now();
        let domain = walk(&[("grp", 12_800, 12_800), ("", 90_000, UNLIMITED)]);
        let member = walk(&[
            ("w1", 6_000, UNLIMITED),
            ("grp", 12_800, 12_800),
            ("", 90_000, UNLIMITED),
        ]);
        let mut d = Decision {
            header: header(500, 7),
            flags: DECISION_HAS_MEMCG | DECISION_HAS_CHOSEN,
            constraint: 3,
            order: 0,
            gfp_mask: 0xcc0,
            totalpages: 12_800,
            chosen_points: 7_000,
            chosen_pid: 100,
            chosen_tgid: 100,
            chosen_comm: [0; 16],
            chosen_adj: 0,
            _pad: 0,
            domain,
            chosen_memcg: member,
            trigger_memcg: member,
        };
        d.chosen_comm[..2].copy_from_slice(b"dd");
        assert!(c.push(Input::Decision(Box::new(d)), now).is_empty());
        let mut kills = Vec::new();
        for (pid, t) in [(100u32, 600u64), (101, 700), (102, 800)] {
            let mut tp = tp_victim(pid, t);
            let mut bv = btf_victim(pid, t, member);
            // The trigger (tid 7) ran the OOM killer for all three.
            if let Input::Tracepoint { header, .. } = &mut tp {
                header.trigger_tid = 7;
            }
            if let Input::TpBtf(v) = &mut bv {
                v.header.trigger_tid = 7;
            }
            kills.extend(c.push(tp, now));
            kills.extend(c.push(bv, now));
        }
        assert_eq!(kills.len(), 3);
        let incidents: std::collections::HashSet<_> =
            kills.iter().map(|k| k.kill.incident.clone()).collect();
        assert_eq!(incidents.len(), 1, "one decision, one incident");
        for k in &kills {
            assert_eq!(k.kill.verdict_source, Some(VerdictSource::OomControl));
            assert_eq!(k.kill.oom_cgroup.as_deref(), Some("/grp"));
            assert_eq!(k.kill.trigger.pid, Some(7));
        }
        assert_eq!(kills[0].kill.victim.points, Some(7_000));
        assert_eq!(
            kills[1].kill.victim.points, None,
            "group members are not scored"
        );
        assert_eq!(kills[0].kill.memcg.total_bytes, Some(12_800 * 4096));
    }

    #[test]
    fn group_members_get_their_cgroup_from_the_kernels_scan_on_pid_only_kernels() {
        // 5.10: pid-only tracepoint, no tp_btf, fentry on oom_kill_process and
        // oom_kill_memcg_member. The kernel scans the group (chosen task
        // included) before marking each member.
        let active = [Hook::Tracepoint, Hook::Fentry, Hook::FentryGroup];
        let mut c = Correlator::new(&active, Duration::from_millis(500), 4096, "b".into());
        let now = Instant::now();
        let grp = walk(&[("grp", 24_576, 24_576), ("", 90_000, UNLIMITED)]);
        let leaf = walk(&[
            ("w1", 6_000, UNLIMITED),
            ("grp", 24_576, 24_576),
            ("", 90_000, UNLIMITED),
        ]);
        let pid_only = |pid: u32, t: u64| Input::Tracepoint {
            header: header(t, 7),
            fields: MarkVictimFields {
                pid: Some(pid),
                ..MarkVictimFields::default()
            },
            proc_cgroup: None,
        };
        let member = |pid: u32, w: CgroupWalk| {
            let Input::TpBtf(mut v) = btf_victim(pid, 650, w) else {
                unreachable!()
            };
            v.header.kind = oomtrace_common::KIND_GROUP_MEMBER;
            v.uid = u32::MAX;
            Input::GroupMember(v)
        };
        // The chosen task (pid 135) is marked first, then the scan: two
        // members and one task the kernel skipped (no mm), never marked.
        let mut kills = c.push(pid_only(135, 600), now);
        for (pid, w) in [(132, grp), (133, leaf), (134, grp), (140, grp)] {
            assert!(
                c.push(member(pid, w), now).is_empty(),
                "a scan alone is no kill"
            );
        }
        for (pid, t) in [(132u32, 700u64), (133, 710), (134, 720)] {
            kills.extend(c.push(pid_only(pid, t), now));
        }
        assert_eq!(kills.len(), 4);
        let by_pid = |pid: u32| {
            &kills
                .iter()
                .find(|k| k.kill.victim.pid == Some(pid))
                .expect("reported")
                .kill
        };
        assert_eq!(by_pid(133).victim.cgroup.as_deref(), Some("/grp/w1"));
        assert_eq!(by_pid(132).victim.cgroup.as_deref(), Some("/grp"));
        assert_eq!(by_pid(132).victim.oom_score_adj, Some(500));
        assert!(by_pid(132).sources.contains(&"oom_group_scan"));
        // The chosen task was marked before the scan: nothing named its cgroup.
        assert_eq!(by_pid(135).victim.cgroup, None);
        assert!(
            by_pid(135)
                .missing
                .iter()
                .any(|m| m.starts_with("victim cgroup")),
            "{:?}",
            by_pid(135).missing
        );
        // The skipped task is never reported and is forgotten.
        assert!(c.tick(now + Duration::from_secs(61)).is_empty());
        assert!(c.members.is_empty());
    }

    #[test]
    fn separate_decisions_are_separate_incidents() {
        let active = [Hook::Tracepoint];
        let mut c = Correlator::new(&active, Duration::from_millis(500), 4096, "b".into());
        let now = Instant::now();
        // Two processes each triggering their own OOM, 50 ms apart.
        let a = c.push(tp_victim(1, 1_000_000), now);
        let b = c.push(tp_victim(2, 51_000_000), now);
        assert_eq!(a.len() + b.len(), 2);
        assert_ne!(a[0].kill.incident, b[0].kill.incident);
    }
}
