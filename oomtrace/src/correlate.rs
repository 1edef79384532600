//! Correlation: merges what every source saw of one kill into one [`Kill`].
//!
//! A victim is seen by up to five sources: the classic tracepoint (pid, rss,
//! oom_score_adj), `tp_btf` (its memory cgroup and ancestors), the
//! `oom_kill_memcg_member` hook (the same, for memory.oom.group members on
//! kernels without `tp_btf`), the `oom_kill_process` hook (the decision: OOM
//! domain, constraint, badness, trigger) and the kernel log (kill line, and
//! the rate-limited header and summary). They are keyed by victim pid. A kill
//! is emitted as soon as every active per-victim source has reported it, or
//! when [`Correlator::wait`] has passed since the first sighting: then it is
//! emitted with what is known and the rest listed in `missing`. Nothing seen
//! by any source is dropped.
//!
//! - [`merge`]: one function per source, each filling its own section of a
//!   [`pending::Pending`];
//! - [`verdict`]: the pure priority order that decides which limit was hit;
//! - [`assemble`]: a pending victim into a report;
//! - [`incident`]: one id per OOM decision.
//!
//! The decision arrives before its victims (the hook runs at the entry of
//! `oom_kill_process`); victims are matched to it by trigger thread and time.

mod assemble;
pub mod incident;
pub mod killer;
pub mod matching;
mod merge;
pub mod outcome;
pub mod pending;
pub mod verdict;
pub mod walk;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use self::{
    incident::Incidents,
    killer::UserspaceKills,
    matching::{ClockSync, Facts},
    merge::KmsgContext,
    pending::Pending,
};
use crate::{
    capture::{Decision, Input, TaskSighting, memstat::MemoryTargets},
    report::Kill,
};

/// Which per-victim sources are active on this run: a kill waits for each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    pub tracepoint: bool,
    pub tp_btf: bool,
    pub kmsg: bool,
    /// The `oom_kill_process` hook (fentry or kprobe) is attached.
    pub decision: bool,
    /// Victims' cgroups are looked up in `/proc` (no `tp_btf` walk): a kill
    /// waits for the answer.
    pub proc: bool,
    /// Where the memory was is read beside the draining at the first
    /// sighting of each victim: a kill waits for the answer.
    pub memory: bool,
}

/// A victim ready for enrichment.
#[derive(Debug)]
pub struct Correlated {
    pub kill: Kill,
    /// CLOCK_MONOTONIC nanoseconds of the kill (BPF ktime, else the kernel log's timestamp).
    pub at_ns: Option<u64>,
    /// Sequence number of the kernel log's kill line, when it was read.
    pub kill_seq: Option<u64>,
}

/// Reported kills remembered, to recognise their late sources.
const EMITTED_MAX: usize = 4096;
/// Victims marked but not shown killed, kept for a kill line that comes late.
const UNCONFIRMED_MAX: usize = 256;
/// How long such a victim waits for a late kill line.
const UNCONFIRMED_KEEP: Duration = Duration::from_secs(60);
/// A kernel-log loss noticed this long before a victim was first seen may
/// still be its kill line (the kill line follows the mark by microseconds,
/// the eBPF record reaches the agent later).
const LOSS_SLACK: Duration = Duration::from_secs(5);
const LOST_KILL_LINE: &str = "its kill line may be among the kernel-log records lost around it; no record of the OOM killer's SIGKILL confirms it";
/// Pending victims at most; beyond, the oldest is reported with what is known.
const PENDING_MAX: usize = 8192;
/// How long a decision is kept for victims that come later.
const DECISION_KEEP_NS: u64 = 60_000_000_000;
/// How long a scanned group member waits for a source that reports its death.
const MEMBER_KEEP: Duration = Duration::from_secs(60);

/// Whether the OOM killer really killed a marked victim.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Killed {
    /// Its kill line, or the OOM killer's own SIGKILL, says so.
    Yes,
    /// No: `mark_oom_victim()` also marks a task that was already exiting
    /// (`task_will_free_mem()`); the OOM killer only reaps it.
    No,
    /// Nothing that could tell was there: why.
    Unknown(&'static str),
}

/// Settings and state of the correlator.
pub struct Correlator {
    /// How long to wait for the remaining sources of a kill.
    pub wait: Duration,
    expect: Expect,
    page_size: u64,
    boot_id: String,
    /// Victims being put together; few at a time, bounded by [`PENDING_MAX`].
    pending: Vec<Pending>,
    /// Kills reported, newest last, bounded by [`EMITTED_MAX`].
    emitted: VecDeque<Facts>,
    /// Marked victims no source showed killed (newest last).
    unconfirmed: VecDeque<Pending>,
    /// Decisions by the thread that made them.
    decisions: HashMap<u32, Arc<Decision>>,
    /// Group members scanned by the kernel, by pid, with when they were seen.
    members: HashMap<u32, (Instant, TaskSighting)>,
    context: KmsgContext,
    incidents: Incidents,
    clock: ClockSync,
    /// Kernel-log records lost so far (the reader's count).
    kmsg_losses: u64,
    /// When the reader's count of lost records last grew.
    kmsg_loss_at: Option<Instant>,
    /// It grew since the last [`Correlator::tick`].
    kmsg_lost_since_tick: bool,
    /// Victims first seen since [`Correlator::take_new_victims`] was called.
    new_victims: Vec<u32>,
    /// Sources that arrived after their kill was reported.
    pub late: u64,
    /// Victims marked by the OOM killer but not killed (already exiting).
    pub not_killed: u64,
    /// Kill lines of a task killed again in the same OOM (the chosen task of
    /// a memory.oom.group kill): the kernel counts them in vmstat `oom_kill`.
    pub repeated: u64,
    /// Kills by userspace OOM killers, between their signals and reports.
    pub userspace: UserspaceKills,
}

impl Correlator {
    pub fn new(expect: Expect, wait: Duration, page_size: u64, boot_id: String) -> Self {
        Self {
            wait,
            expect,
            page_size,
            boot_id,
            pending: Vec::new(),
            emitted: VecDeque::new(),
            unconfirmed: VecDeque::new(),
            decisions: HashMap::new(),
            members: HashMap::new(),
            context: KmsgContext::default(),
            incidents: Incidents::default(),
            clock: ClockSync::default(),
            kmsg_losses: 0,
            kmsg_loss_at: None,
            kmsg_lost_since_tick: false,
            new_victims: Vec::new(),
            late: 0,
            not_killed: 0,
            repeated: 0,
            userspace: UserspaceKills::default(),
        }
    }

    /// Takes one input; returns the kills that became complete.
    pub fn push(&mut self, input: Input, now: Instant) -> Vec<Correlated> {
        let touched = match input {
            Input::Tracepoint(tp) => self.merge_tracepoint(tp, now),
            Input::TpBtf(task) => self.merge_tp_btf(task, now),
            Input::Decision(d) => {
                self.merge_decision(d);
                None
            }
            Input::GroupMember(task) => {
                self.merge_group_member(task, now);
                None
            }
            Input::Kmsg(k) => self.merge_kmsg(k, now),
            Input::ProcCgroup { pid, cgroup } => self.merge_proc_cgroup(pid, cgroup),
            Input::Memory { pid, memory } => self.merge_memory(pid, memory),
            // Checked by the killer checker first; only confirmed ones come back.
            Input::Signal(_) => None,
            Input::KillerSignal(s) => {
                return self
                    .userspace
                    .signal(s, &self.boot_id)
                    .into_iter()
                    .collect();
            }
            Input::KillerFate(f) => {
                return self.userspace.fate(f, &self.boot_id).into_iter().collect();
            }
            Input::Eviction(e) => return vec![killer::eviction_kill(e, &self.boot_id)],
        };
        let mut out = Vec::new();
        if let Some(i) = touched
            && self.complete(&self.pending[i])
        {
            let p = self.pending.swap_remove(i);
            out.extend(self.finish(p, now, false));
        }
        if self.pending.len() > PENDING_MAX {
            out.extend(self.emit_oldest(now));
        }
        out
    }

    /// Every active per-victim source has reported `p`.
    fn complete(&self, p: &Pending) -> bool {
        if p.replayed_only() {
            // Its eBPF records and /proc entry are gone with the past.
            return p.kmsg.killed.is_some();
        }
        (!self.expect.tracepoint || p.tp.is_some())
            && (!self.expect.tp_btf || p.btf.is_some())
            && (!self.expect.kmsg || p.kmsg.killed.is_some())
            && (!self.expect.proc || p.proc_looked_up)
            && (!self.expect.memory || p.memory_looked_up)
    }

    /// The pids of victims first seen since the last call: their `/proc`
    /// entry is worth reading now.
    pub fn take_new_victims(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.new_victims)
    }

    /// The newest pending victim with this pid.
    fn newest(&self, pid: u32) -> Option<&Pending> {
        self.pending
            .iter()
            .filter(|p| p.pid == pid)
            .max_by_key(|p| p.first_seen)
    }

    /// When the pending victim `pid` was killed (CLOCK_MONOTONIC), if known.
    pub fn kill_time(&self, pid: u32) -> Option<Duration> {
        let ns = self.newest(pid)?.at_ns();
        (ns > 0).then(|| Duration::from_nanos(ns))
    }

    /// Whether the newest pending victim `pid` is known only from the kernel
    /// log read back after a restart (its `/proc` entry is long gone: do not look).
    pub fn is_replayed(&self, pid: u32) -> bool {
        self.newest(pid).is_some_and(Pending::replayed_only)
    }

    /// Whether the kernel-log kill line `seq` is part of a victim still pending.
    pub fn holds_kill_line(&self, seq: u64) -> bool {
        self.pending.iter().any(|p| p.kill_seq == Some(seq))
    }

    /// The kernel log reader ended: kills no longer wait for a kill line,
    /// and a victim without one is no longer taken for "not killed" (the
    /// line may have been written after the reader ended).
    pub fn kmsg_ended(&mut self) {
        self.expect.kmsg = false;
    }

    /// A `/proc` lookup for `pid` could not be made: do not wait for it.
    pub fn lookup_failed(&mut self, pid: u32) {
        for p in self.pending.iter_mut().filter(|p| p.pid == pid) {
            p.proc_looked_up = true;
            p.memory_looked_up = true;
        }
    }

    /// The pending victim `pid`'s cgroup, when a record read from the task
    /// already named it: tp_btf's walk, else the decision's walk of the
    /// chosen task (the lookup need not read `/proc` for it).
    pub fn known_cgroup(&self, pid: u32) -> Option<String> {
        let p = self.newest(pid)?;
        let walk = p.btf.as_ref().and_then(|b| b.walk.as_ref()).or_else(|| {
            p.chosen_by_decision()?;
            p.decision.as_ref()?.chosen_memcg.as_ref()
        })?;
        walk.leaf().map(|l| l.path.clone())
    }

    /// What to read of where the memory was for the pending victim `pid`,
    /// from what is known of it now.
    pub fn memory_targets(&self, pid: u32) -> MemoryTargets {
        self.newest(pid)
            .map(|p| assemble::memory_targets(p, self.expect.kmsg))
            .unwrap_or_default()
    }

    /// The kernel-log reader's count of lost records: a victim with no kill
    /// line is only taken for "not killed" when no record was lost around
    /// the time it was seen. The reader notices a loss when it next reads,
    /// which may be after the victim's wait ran out: victims set aside are
    /// then reported (unconfirmed) at the next tick.
    pub fn note_kmsg_losses(&mut self, total: u64, now: Instant) {
        if total > self.kmsg_losses {
            self.kmsg_losses = total;
            self.kmsg_loss_at = Some(now);
            self.kmsg_lost_since_tick = true;
        }
    }

    /// Emits every kill whose wait has run out, oldest first, and forgets
    /// what is too old to match anything.
    pub fn tick(&mut self, now: Instant) -> Vec<Correlated> {
        if let Some(newest) = self.decisions.values().map(|d| d.meta.ktime_ns).max() {
            self.decisions
                .retain(|_, d| newest.saturating_sub(d.meta.ktime_ns) < DECISION_KEEP_NS);
        }
        // Scanned tasks the kernel did not kill (no memory left to free) are
        // never reported; forget them.
        self.members
            .retain(|_, (t, _)| now.duration_since(*t) < MEMBER_KEEP);
        self.unconfirmed
            .retain(|p| now.duration_since(p.first_seen) < UNCONFIRMED_KEEP);
        let mut out = Vec::new();
        if std::mem::take(&mut self.kmsg_lost_since_tick) {
            // Their kill lines may be among the records just lost.
            let aside: Vec<Pending> = self.unconfirmed.drain(..).collect();
            self.not_killed = self.not_killed.saturating_sub(aside.len() as u64);
            out.extend(
                aside
                    .into_iter()
                    .map(|p| self.emit(p, Some(LOST_KILL_LINE))),
            );
        }
        let mut due: Vec<Pending> = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if now.duration_since(self.pending[i].first_seen) >= self.wait {
                due.push(self.pending.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|p| (p.at_ns(), p.pid));
        out.extend(due.into_iter().filter_map(|p| self.finish(p, now, false)));
        out
    }

    /// Emits everything still pending (at shutdown): what no source showed
    /// killed is reported, and says so, rather than dropped unseen.
    pub fn flush(&mut self) -> Vec<Correlated> {
        let now = Instant::now();
        let mut due = std::mem::take(&mut self.pending);
        due.sort_by_key(|p| (p.at_ns(), p.pid));
        due.into_iter()
            .filter_map(|p| self.finish(p, now, true))
            .collect()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    fn emit_oldest(&mut self, now: Instant) -> Option<Correlated> {
        let oldest = (0..self.pending.len()).min_by_key(|&i| self.pending[i].first_seen)?;
        let p = self.pending.swap_remove(oldest);
        self.finish(p, now, true)
    }

    /// Reports a victim the OOM killer killed; keeps one it only marked
    /// aside for a late kill line.
    fn finish(&mut self, p: Pending, _now: Instant, flushing: bool) -> Option<Correlated> {
        let killed = self.killed(&p);
        // A mark the signal hook saw without the OOM killer's SIGKILL was
        // not killed, whenever it ends (at shutdown too): no report.
        let not_killed_for_sure = p.oom_sigkill == Some(false) && p.kmsg.killed.is_none();
        if killed == Killed::No && (!flushing || not_killed_for_sure) {
            self.not_killed += 1;
            if self.unconfirmed.len() >= UNCONFIRMED_MAX {
                self.unconfirmed.pop_front();
            }
            self.unconfirmed.push_back(p);
            return None;
        }
        let why = match killed {
            Killed::Yes => None,
            Killed::No => Some(
                "the agent stopped before a kill line or the OOM killer's SIGKILL confirmed it",
            ),
            Killed::Unknown(why) => Some(why),
        };
        Some(self.emit(p, why))
    }

    fn emit(&mut self, p: Pending, unconfirmed: Option<&str>) -> Correlated {
        self.emitted.push_back(p.facts());
        if self.emitted.len() > EMITTED_MAX {
            self.emitted.pop_front();
        }
        self.build(p, unconfirmed)
    }

    /// Whether the OOM killer killed `p`, as far as the sources tell.
    fn killed(&self, p: &Pending) -> Killed {
        if p.kmsg.killed.is_some() || p.oom_sigkill == Some(true) {
            return Killed::Yes;
        }
        if p.oom_sigkill == Some(false) {
            return Killed::No;
        }
        if self.expect.kmsg {
            let lost_around = self
                .kmsg_loss_at
                .is_some_and(|t| t + LOSS_SLACK >= p.first_seen)
                || self.kmsg_losses > p.kmsg_losses_at_first_sight;
            return if lost_around {
                Killed::Unknown(LOST_KILL_LINE)
            } else {
                Killed::No
            };
        }
        Killed::Unknown(
            "without the kernel log or the signal hook nothing confirms the OOM killer killed it (mark_victim also fires for a task that was already exiting)",
        )
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
