//! One merge function per source: each fills only its own section of the
//! victim's [`Pending`] and returns the pid it touched.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Correlator,
    pending::{HeaderLine, KillLine, Pending, Summary, TaskIn},
};
use crate::{
    capture::{Decision, KmsgSighting, RecordMeta, TaskSighting, TpSighting},
    kmsg::OomLine,
};

/// How long kernel-log context (a header, a `Task in` line) waits for the kill line it belongs to.
const CONTEXT_MAX_AGE: Duration = Duration::from_secs(2);
/// How long a `memory.oom.group` line applies to the kill lines after it.
const GROUP_MAX_AGE: Duration = Duration::from_millis(500);
/// How long a decision waits for its victims.
const DECISION_MAX_AGE_NS: u64 = 5_000_000_000;

/// Kernel-log lines that come before the kill line they belong to.
#[derive(Debug, Default)]
pub(super) struct KmsgContext {
    header: Option<(Instant, HeaderLine)>,
    task_in: Option<(Instant, TaskIn)>,
    group: Option<(Instant, String, Option<Summary>)>,
    summary: Option<(Instant, Summary)>,
}

impl Correlator {
    /// The pending victim `pid`, created on first sight; `None` (counted as
    /// late) when it was reported already.
    fn entry(&mut self, pid: u32, now: Instant) -> Option<&mut Pending> {
        if self.emitted.iter().any(|&(_, p)| p == pid) {
            self.late += 1;
            return None;
        }
        let new = &mut self.new_victims;
        Some(self.pending.entry(pid).or_insert_with(|| {
            new.push(pid);
            Pending::new(pid, now)
        }))
    }

    /// The decision this record's trigger made within the last seconds.
    fn decision_for(&self, meta: &RecordMeta) -> Option<Arc<Decision>> {
        let d = self.decisions.get(&meta.trigger.tid)?;
        let age = meta.ktime_ns.checked_sub(d.meta.ktime_ns)?;
        (age < DECISION_MAX_AGE_NS).then(|| Arc::clone(d))
    }

    /// What every eBPF sighting gives: time, trigger, decision.
    fn merge_meta(&mut self, pid: u32, meta: &RecordMeta, now: Instant) -> Option<&mut Pending> {
        let decision = self.decision_for(meta);
        let p = self.entry(pid, now)?;
        p.ktime_ns.get_or_insert(meta.ktime_ns);
        p.trigger.get_or_insert_with(|| meta.trigger.clone());
        if p.decision.is_none() {
            p.decision = decision;
        }
        Some(p)
    }

    pub(super) fn merge_tracepoint(&mut self, tp: TpSighting, now: Instant) -> Option<u32> {
        let pid = tp.pid();
        let p = self.merge_meta(pid, &tp.meta, now)?;
        p.tp = Some(tp.fields);
        Some(pid)
    }

    /// The answer of a `/proc` lookup; late when the kill was reported.
    pub(super) fn merge_proc_cgroup(&mut self, pid: u32, cgroup: Option<String>) -> Option<u32> {
        let p = self.pending.get_mut(&pid)?;
        p.proc_looked_up = true;
        p.proc_cgroup = cgroup;
        Some(pid)
    }

    pub(super) fn merge_tp_btf(&mut self, task: TaskSighting, now: Instant) -> Option<u32> {
        let pid = task.pid;
        self.members.remove(&pid);
        let meta = task.meta.clone();
        let p = self.merge_meta(pid, &meta, now)?;
        p.btf = Some(task);
        Some(pid)
    }

    pub(super) fn merge_decision(&mut self, d: Decision) {
        self.decisions.insert(d.meta.trigger.tid, Arc::new(d));
    }

    /// A scanned group member waits for another source to report its death.
    pub(super) fn merge_group_member(&mut self, task: TaskSighting, now: Instant) {
        self.members.insert(task.pid, (now, task));
    }

    pub(super) fn merge_kmsg(&mut self, k: KmsgSighting, now: Instant) -> Option<u32> {
        let KmsgSighting { ts_usec, line, .. } = k;
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
                let summary = self.context.summary.as_ref().map(|(_, s)| s.clone());
                self.context.group = Some((now, cgroup.clone(), summary));
                None
            }
            OomLine::Summary { .. } => self.merge_summary(&line, ts_usec, now),
            OomLine::KillChosen { pid, score, .. } => {
                let pid = (*pid)?;
                let task_in = self.recent_task_in(now);
                let p = self.entry(pid, now)?;
                p.kmsg.chosen_score = *score;
                if p.kmsg.task_in.is_none() {
                    p.kmsg.task_in = task_in;
                }
                Some(pid)
            }
            OomLine::Killed { pid, .. } => self.merge_kill_line((*pid)?, &line, ts_usec, now),
            OomLine::Suppressed { .. } | OomLine::Reaped { .. } => None,
        }
    }

    fn merge_summary(&mut self, line: &OomLine, ts_usec: u64, now: Instant) -> Option<u32> {
        let summary = Summary::from_line(line)?;
        self.context.summary = Some((now, summary.clone()));
        let pid = summary.pid?;
        let header = self.take_recent_header(now);
        let p = self.entry(pid, now)?;
        p.kmsg_ts_usec.get_or_insert(ts_usec);
        p.kmsg.summary = Some(summary);
        if p.kmsg.header.is_none() {
            p.kmsg.header = header;
        }
        Some(pid)
    }

    fn merge_kill_line(
        &mut self,
        pid: u32,
        line: &OomLine,
        ts_usec: u64,
        now: Instant,
    ) -> Option<u32> {
        let header = self.take_recent_header(now);
        let task_in = self.recent_task_in(now);
        let group = self
            .context
            .group
            .as_ref()
            .filter(|(t, _, _)| now.duration_since(*t) < GROUP_MAX_AGE)
            .map(|(_, c, s)| (c.clone(), s.clone()));
        let p = self.entry(pid, now)?;
        p.kmsg_ts_usec.get_or_insert(ts_usec);
        p.kmsg.killed = KillLine::from_line(line);
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
        Some(pid)
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
}
