//! One merge function per source: each finds the kill its sighting belongs
//! to ([`super::matching`]), fills only its own section of that kill's
//! [`Pending`], and returns where the kill is.
//!
//! Only a victim record (a tracepoint, `tp_btf`) or a kill line makes a
//! kill; the other kernel-log lines are context: the header, the summary,
//! `Task in ...`, the pre-5.1 `Kill process N ... or sacrifice child` (the
//! kernel may then kill a child M instead), and the summary printed before
//! `... is already exiting. Skip killing the task` (no kill follows).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Correlator,
    matching::{self, Claim, ClockSync},
    pending::{HeaderLine, KillLine, Pending, Summary, TaskIn},
};
use crate::{
    capture::kmsg::OomLine,
    capture::{
        Decision, KmsgSighting, RecordMeta, TaskSighting, TpSighting, memstat::MemoryAtKill,
    },
};

/// How long kernel-log context (a header, a `Task in` line) waits for the kill line it belongs to.
const CONTEXT_MAX_AGE: Duration = Duration::from_secs(2);
/// How long a `memory.oom.group` line applies to the kill lines after it.
const GROUP_MAX_AGE: Duration = Duration::from_millis(500);
/// How long a summary waits for the kill of the pid it names.
const SUMMARY_MAX_AGE: Duration = Duration::from_secs(10);
/// Summaries kept for the kills they name.
const SUMMARIES_MAX: usize = 64;
/// How long a decision waits for its victims.
const DECISION_MAX_AGE_NS: u64 = 5_000_000_000;

/// Kernel-log lines that come before the kill line they belong to.
#[derive(Debug, Default)]
pub(super) struct KmsgContext {
    header: Option<(Instant, HeaderLine)>,
    task_in: Option<(Instant, TaskIn)>,
    group: Option<(Instant, String, Option<Summary>)>,
    /// Recent summaries (newest last) with their printk time in ns, for the
    /// kill of the pid each names.
    summaries: VecDeque<(Instant, u64, Summary)>,
    /// Before 5.1: the task chosen (`Kill process N ... score S`) and its score.
    chosen: Option<(Instant, u32, Option<i64>)>,
}

impl KmsgContext {
    /// The newest summary naming the pid of `claim`, still fresh and
    /// printed at the time of that kill (the pid may be reused).
    fn summary_for(&self, claim: &Claim, clock: &ClockSync, now: Instant) -> Option<Summary> {
        self.summaries
            .iter()
            .rev()
            .take_while(|(t, _, _)| now.duration_since(*t) < SUMMARY_MAX_AGE)
            .find(|(_, ts, s)| s.pid == Some(claim.pid()) && summary_fits(claim, *ts, clock))
            .map(|(_, _, s)| s.clone())
    }
}

/// Whether a summary printed at `ts_ns` can be about the kill `claim` names:
/// the kernel prints it just before the kill line, microseconds after the
/// mark.
fn summary_fits(claim: &Claim, ts_ns: u64, clock: &ClockSync) -> bool {
    match *claim {
        Claim::KillLine { ts_ns: line, .. } => line.abs_diff(ts_ns) < matching::SAME_EVENT_NS,
        Claim::Task { ktime_ns, .. } | Claim::Tracepoint { ktime_ns, .. } => {
            clock.distance(ktime_ns, ts_ns).is_some()
        }
    }
}

impl Correlator {
    /// The pending kill `claim` belongs to, created when it is new or revived
    /// from the victims set aside as not killed; `None` (counted as late)
    /// when it belongs to a kill already reported.
    fn locate(&mut self, claim: Claim, now: Instant) -> Option<usize> {
        let clock = self.clock;
        let best = self
            .pending
            .iter()
            .enumerate()
            .filter_map(|(i, p)| matching::distance(&p.facts(), &claim, &clock).map(|d| (d, i)))
            .min_by_key(|(d, _)| *d)
            .map(|(_, i)| i);
        if best.is_some() {
            return best;
        }
        if let Some(f) = self
            .emitted
            .iter()
            .rev()
            .find(|f| matching::distance(f, &claim, &clock).is_some())
        {
            if matches!(claim, Claim::KillLine { .. }) && f.has_kill_line {
                self.repeated += 1;
            } else {
                self.late += 1;
            }
            return None;
        }
        if let Some(i) = self
            .unconfirmed
            .iter()
            .position(|p| matching::distance(&p.facts(), &claim, &clock).is_some())
            && let Some(p) = self.unconfirmed.remove(i)
        {
            self.not_killed = self.not_killed.saturating_sub(1);
            self.pending.push(p);
            return Some(self.pending.len() - 1);
        }
        let pid = claim.pid();
        self.new_victims.push(pid);
        let mut p = Pending::new(pid, now, self.kmsg_losses);
        p.kmsg.summary = self.context.summary_for(&claim, &clock, now);
        self.pending.push(p);
        Some(self.pending.len() - 1)
    }

    /// The decision this record's trigger made within the last seconds.
    fn decision_for(&self, meta: &RecordMeta) -> Option<Arc<Decision>> {
        let d = self.decisions.get(&meta.trigger.tid)?;
        let age = meta.ktime_ns.checked_sub(d.meta.ktime_ns)?;
        (age < DECISION_MAX_AGE_NS).then(|| Arc::clone(d))
    }

    /// What every eBPF sighting gives: time, trigger, decision.
    fn merge_meta(&mut self, claim: Claim, meta: &RecordMeta, now: Instant) -> Option<usize> {
        let decision = self.decision_for(meta);
        let i = self.locate(claim, now)?;
        let p = &mut self.pending[i];
        p.live = true;
        p.ktime_ns.get_or_insert(meta.ktime_ns);
        p.trigger.get_or_insert_with(|| meta.trigger.clone());
        if p.decision.is_none() {
            p.decision = decision;
        }
        Some(i)
    }

    pub(super) fn merge_tracepoint(&mut self, tp: TpSighting, now: Instant) -> Option<usize> {
        let claim = Claim::Tracepoint {
            pid: tp.pid(),
            ktime_ns: tp.meta.ktime_ns,
        };
        let i = self.merge_meta(claim, &tp.meta, now)?;
        let p = &mut self.pending[i];
        p.tp = Some(tp.fields);
        // Either program seeing the OOM killer's SIGKILL proves the kill
        // (None < Some(false) < Some(true)).
        p.oom_sigkill = p.oom_sigkill.max(tp.oom_sigkill);
        Some(i)
    }

    /// The answer of a `/proc` lookup, for the newest pending kill of the pid.
    pub(super) fn merge_proc_cgroup(&mut self, pid: u32, cgroup: Option<String>) -> Option<usize> {
        let i = (0..self.pending.len())
            .filter(|&i| self.pending[i].pid == pid && !self.pending[i].proc_looked_up)
            .max_by_key(|&i| self.pending[i].first_seen)?;
        let p = &mut self.pending[i];
        p.proc_looked_up = true;
        p.proc_cgroup = cgroup;
        Some(i)
    }

    /// Where the memory was, for the newest pending kill of the pid.
    pub(super) fn merge_memory(&mut self, pid: u32, memory: MemoryAtKill) -> Option<usize> {
        let i = (0..self.pending.len())
            .filter(|&i| self.pending[i].pid == pid && !self.pending[i].memory_looked_up)
            .max_by_key(|&i| self.pending[i].first_seen)?;
        let p = &mut self.pending[i];
        p.memory_looked_up = true;
        p.memory = Some(memory);
        Some(i)
    }

    pub(super) fn merge_tp_btf(&mut self, task: TaskSighting, now: Instant) -> Option<usize> {
        let claim = Claim::Task {
            pid: task.pid,
            start_time_ns: task.start_time_ns,
            ktime_ns: task.meta.ktime_ns,
        };
        if self
            .members
            .get(&task.pid)
            .is_some_and(|(_, m)| same_task(m, &task))
        {
            self.members.remove(&task.pid);
        }
        let meta = task.meta.clone();
        let i = self.merge_meta(claim, &meta, now)?;
        let p = &mut self.pending[i];
        p.start_time_ns = p.start_time_ns.or(task.start_time_ns);
        p.oom_sigkill = p.oom_sigkill.max(task.oom_sigkill);
        p.btf = Some(task);
        Some(i)
    }

    pub(super) fn merge_decision(&mut self, d: Decision) {
        self.decisions.insert(d.meta.trigger.tid, Arc::new(d));
    }

    /// A scanned group member waits for another source to report its death.
    pub(super) fn merge_group_member(&mut self, task: TaskSighting, now: Instant) {
        self.members.insert(task.pid, (now, task));
    }

    pub(super) fn merge_kmsg(&mut self, k: KmsgSighting, now: Instant) -> Option<usize> {
        let KmsgSighting {
            seq,
            ts_usec,
            line,
            replayed,
            ..
        } = k;
        match &line {
            OomLine::Header { .. } => {
                self.context.header = HeaderLine::from_line(&line).map(|h| (now, h));
                None
            }
            OomLine::TaskInMemcg {
                task_cgroup,
                limit_cgroup,
            } => {
                let t = TaskIn {
                    task_cgroup: task_cgroup.clone(),
                    limit_cgroup: limit_cgroup.clone(),
                };
                self.context.task_in = Some((now, t));
                None
            }
            OomLine::GroupKill { cgroup } => {
                let summary = self.context.summaries.back().map(|(_, _, s)| s.clone());
                self.context.group = Some((now, cgroup.clone(), summary));
                None
            }
            OomLine::Summary { .. } => {
                self.merge_summary(&line, ts_usec.saturating_mul(1000), now);
                None
            }
            OomLine::KillChosen { pid, score, .. } => {
                self.context.chosen = pid.map(|pid| (now, pid, *score));
                None
            }
            OomLine::Killed { pid, .. } => {
                let i = self.merge_kill_line((*pid)?, &line, ts_usec, now)?;
                let p = &mut self.pending[i];
                p.seen_in_kmsg(replayed);
                p.kill_seq.get_or_insert(seq);
                Some(i)
            }
            OomLine::Suppressed { .. } | OomLine::Reaped { .. } => None,
        }
    }

    /// Keeps the summary for the kill of the pid it names, and gives it to
    /// that kill if it is pending already: a summary alone makes no kill.
    fn merge_summary(&mut self, line: &OomLine, ts_ns: u64, now: Instant) {
        let Some(summary) = Summary::from_line(line) else {
            return;
        };
        let clock = self.clock;
        if let Some(pid) = summary.pid
            && let Some(p) = self
                .pending
                .iter_mut()
                .filter(|p| p.pid == pid && p.kmsg.summary.is_none())
                .filter(|p| match (p.ktime_ns, p.kmsg_ts_usec) {
                    (Some(k), _) => clock.distance(k, ts_ns).is_some(),
                    (None, Some(u)) => {
                        u.saturating_mul(1000).abs_diff(ts_ns) < matching::SAME_EVENT_NS
                    }
                    (None, None) => true,
                })
                .max_by_key(|p| p.first_seen)
        {
            p.kmsg.summary = Some(summary.clone());
        }
        if self.context.summaries.len() >= SUMMARIES_MAX {
            self.context.summaries.pop_front();
        }
        self.context.summaries.push_back((now, ts_ns, summary));
    }

    fn merge_kill_line(
        &mut self,
        pid: u32,
        line: &OomLine,
        ts_usec: u64,
        now: Instant,
    ) -> Option<usize> {
        let ts_ns = ts_usec.saturating_mul(1000);
        let header = self.take_recent_header(now);
        let task_in = self.recent_task_in(now);
        let chosen_score = self
            .context
            .chosen
            .filter(|(t, chosen, _)| *chosen == pid && now.duration_since(*t) < CONTEXT_MAX_AGE)
            .and_then(|(_, _, score)| score);
        let group = self
            .context
            .group
            .as_ref()
            .filter(|(t, _, _)| now.duration_since(*t) < GROUP_MAX_AGE)
            .map(|(_, c, s)| (c.clone(), s.clone()));
        let i = self.locate(Claim::KillLine { pid, ts_ns }, now)?;
        let p = &mut self.pending[i];
        if p.kmsg.killed.is_some() {
            // The same task killed again (memory.oom.group): nothing new.
            self.repeated += 1;
            return Some(i);
        }
        if let Some(k) = p.ktime_ns {
            self.clock.learn(k, ts_ns);
        }
        p.kmsg_ts_usec.get_or_insert(ts_usec);
        p.kmsg.killed = KillLine::from_line(line);
        p.kmsg.chosen_score = p.kmsg.chosen_score.or(chosen_score);
        if p.kmsg.header.is_none() {
            p.kmsg.header = header;
        }
        if p.kmsg.task_in.is_none() {
            p.kmsg.task_in = task_in;
        }
        if p.kmsg.summary.is_none()
            && let Some((cgroup, summary)) = group
        {
            p.kmsg.group_of = Some(cgroup);
            p.kmsg.summary = summary;
        }
        Some(i)
    }

    fn take_recent_header(&mut self, now: Instant) -> Option<HeaderLine> {
        match &self.context.header {
            Some((t, _)) if now.duration_since(*t) < CONTEXT_MAX_AGE => {
                self.context.header.take().map(|(_, h)| h)
            }
            _ => None,
        }
    }

    fn recent_task_in(&self, now: Instant) -> Option<TaskIn> {
        self.context
            .task_in
            .as_ref()
            .filter(|(t, _)| now.duration_since(*t) < CONTEXT_MAX_AGE)
            .map(|(_, t)| t.clone())
    }

    /// The group scan's record of this victim, if the scan saw this task.
    pub(super) fn take_member(&mut self, p: &Pending) -> Option<TaskSighting> {
        let (_, m) = self.members.get(&p.pid)?;
        let same = match (m.start_time_ns, p.start_time_ns) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if same {
            self.members.remove(&p.pid).map(|(_, m)| m)
        } else {
            None
        }
    }
}

/// Two records read from a task name the same task (pid and start time).
fn same_task(a: &TaskSighting, b: &TaskSighting) -> bool {
    a.pid == b.pid
        && match (a.start_time_ns, b.start_time_ns) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}
