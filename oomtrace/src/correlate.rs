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
mod merge;
pub mod pending;
pub mod verdict;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use self::{incident::Incidents, killer::UserspaceKills, merge::KmsgContext, pending::Pending};
use crate::{
    capture::{Decision, Input, TaskSighting},
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
}

/// A victim ready for enrichment.
#[derive(Debug)]
pub struct Correlated {
    pub kill: Kill,
    /// CLOCK_MONOTONIC nanoseconds of the kill (BPF ktime, else the kernel log's timestamp).
    pub at_ns: Option<u64>,
}

/// How long a reported pid's late sources are recognised as late.
const EMITTED_MEMORY: Duration = Duration::from_secs(10);
/// How long a decision is kept for victims that come later.
const DECISION_KEEP_NS: u64 = 60_000_000_000;
/// How long a scanned group member waits for a source that reports its death.
const MEMBER_KEEP: Duration = Duration::from_secs(60);

/// Settings and state of the correlator.
pub struct Correlator {
    /// How long to wait for the remaining sources of a kill.
    pub wait: Duration,
    expect: Expect,
    page_size: u64,
    boot_id: String,
    pending: HashMap<u32, Pending>,
    /// Pids emitted recently: late sources for them are dropped, not re-reported.
    emitted: VecDeque<(Instant, u32)>,
    /// Decisions by the thread that made them.
    decisions: HashMap<u32, Arc<Decision>>,
    /// Group members scanned by the kernel, by pid, with when they were seen.
    members: HashMap<u32, (Instant, TaskSighting)>,
    context: KmsgContext,
    incidents: Incidents,
    /// Victims first seen since [`Correlator::take_new_victims`] was called.
    new_victims: Vec<u32>,
    /// Sources that arrived after their kill was emitted.
    pub late: u64,
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
            pending: HashMap::new(),
            emitted: VecDeque::new(),
            decisions: HashMap::new(),
            members: HashMap::new(),
            context: KmsgContext::default(),
            incidents: Incidents::default(),
            new_victims: Vec::new(),
            late: 0,
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
        match touched {
            Some(pid) if self.complete(pid) => self.emit(pid).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Every active per-victim source has reported `pid`.
    fn complete(&self, pid: u32) -> bool {
        let Some(p) = self.pending.get(&pid) else {
            return false;
        };
        (!self.expect.tracepoint || p.tp.is_some())
            && (!self.expect.tp_btf || p.btf.is_some())
            && (!self.expect.kmsg || p.kmsg.killed.is_some())
            && (!self.expect.proc || p.proc_looked_up)
    }

    /// The pids of victims first seen since the last call: their `/proc`
    /// entry is worth reading now, and a node snapshot worth keeping.
    pub fn take_new_victims(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.new_victims)
    }

    /// When the pending victim `pid` was killed (CLOCK_MONOTONIC), if known.
    pub fn kill_time(&self, pid: u32) -> Option<Duration> {
        let ns = self.pending.get(&pid)?.at_ns();
        (ns > 0).then(|| Duration::from_nanos(ns))
    }

    /// A `/proc` lookup for `pid` could not be made: do not wait for it.
    pub fn lookup_failed(&mut self, pid: u32) {
        if let Some(p) = self.pending.get_mut(&pid) {
            p.proc_looked_up = true;
        }
    }

    /// Emits every kill whose wait has run out, oldest first, and forgets
    /// what is too old to match anything.
    pub fn tick(&mut self, now: Instant) -> Vec<Correlated> {
        while self
            .emitted
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > EMITTED_MEMORY)
        {
            self.emitted.pop_front();
        }
        if let Some(newest) = self.decisions.values().map(|d| d.meta.ktime_ns).max() {
            self.decisions
                .retain(|_, d| newest.saturating_sub(d.meta.ktime_ns) < DECISION_KEEP_NS);
        }
        // Scanned tasks the kernel did not kill (no memory left to free) are
        // never reported; forget them.
        self.members
            .retain(|_, (t, _)| now.duration_since(*t) < MEMBER_KEEP);
        let mut due: Vec<(u64, u32)> = self
            .pending
            .values()
            .filter(|p| now.duration_since(p.first_seen) >= self.wait)
            .map(|p| (p.at_ns(), p.pid))
            .collect();
        due.sort_unstable();
        due.into_iter()
            .filter_map(|(_, pid)| self.emit(pid))
            .collect()
    }

    /// Emits everything still pending (at shutdown).
    pub fn flush(&mut self) -> Vec<Correlated> {
        let mut due: Vec<(u64, u32)> = self.pending.values().map(|p| (p.at_ns(), p.pid)).collect();
        due.sort_unstable();
        due.into_iter()
            .filter_map(|(_, pid)| self.emit(pid))
            .collect()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    fn emit(&mut self, pid: u32) -> Option<Correlated> {
        let p = self.pending.remove(&pid)?;
        self.emitted.push_back((p.first_seen, pid));
        Some(self.build(p))
    }
}

#[cfg(test)]
mod tests;
