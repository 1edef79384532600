//! What the correlator knows of one victim before it is reported: one
//! optional section per source, each filled only by its own merge function.

use std::{sync::Arc, time::Instant};

use super::matching::Facts;
use crate::{
    capture::kmsg::OomLine,
    capture::tracefs::MarkVictimFields,
    capture::{Decision, TaskSighting, Trigger, memstat::MemoryAtKill},
    report::Scope,
};

/// Everything known about one victim.
#[derive(Debug)]
pub struct Pending {
    pub pid: u32,
    /// The victim task's start time, from a record read from the task.
    pub start_time_ns: Option<u64>,
    pub first_seen: Instant,
    /// Kernel-log records lost before this victim was first seen: more since
    /// then means its kill line may be among them.
    pub kmsg_losses_at_first_sight: u64,
    /// BPF time of the first eBPF sighting.
    pub ktime_ns: Option<u64>,
    /// Kernel-log time of the kill line or summary.
    pub kmsg_ts_usec: Option<u64>,
    /// The task that ran the OOM killer.
    pub trigger: Option<Trigger>,
    /// `tracepoint/oom/mark_victim`.
    pub tp: Option<MarkVictimFields>,
    /// `tp_btf/mark_victim`.
    pub btf: Option<TaskSighting>,
    /// The decision this victim was killed by.
    pub decision: Option<Arc<Decision>>,
    /// What the kernel log said about this victim.
    pub kmsg: KmsgLines,
    /// From `/proc/<pid>/cgroup`, read while the victim was dying.
    pub proc_cgroup: Option<String>,
    /// The `/proc` lookup answered (or could not be made).
    pub proc_looked_up: bool,
    /// Where the memory was, read when the victim was first seen.
    pub memory: Option<MemoryAtKill>,
    /// That read answered (or could not be made).
    pub memory_looked_up: bool,
    /// The OOM killer's own SIGKILL preceded the mark (`None`: not known,
    /// the signal hook is off or the record predates it).
    pub oom_sigkill: Option<bool>,
    /// Sequence number of the kernel log's kill line for this victim.
    pub kill_seq: Option<u64>,
    /// Seen in kernel-log lines read back after a restart (`--state-dir`).
    pub replayed: bool,
    /// Seen by a live source (an eBPF hook, or the kernel log as it was written).
    pub live: bool,
}

impl Pending {
    pub fn new(pid: u32, first_seen: Instant, kmsg_losses: u64) -> Self {
        Self {
            pid,
            start_time_ns: None,
            first_seen,
            kmsg_losses_at_first_sight: kmsg_losses,
            ktime_ns: None,
            kmsg_ts_usec: None,
            trigger: None,
            tp: None,
            btf: None,
            decision: None,
            kmsg: KmsgLines::default(),
            proc_cgroup: None,
            proc_looked_up: false,
            memory: None,
            memory_looked_up: false,
            oom_sigkill: None,
            kill_seq: None,
            replayed: false,
            live: false,
        }
    }

    /// Known only from the kernel log read back after a restart: the kill
    /// happened while oomtrace was not running, and no eBPF source can
    /// report it any more.
    pub fn replayed_only(&self) -> bool {
        self.replayed && !self.live
    }

    /// Records whether a kernel-log sighting was replayed or live.
    pub fn seen_in_kmsg(&mut self, replayed: bool) {
        if replayed {
            self.replayed = true;
        } else {
            self.live = true;
        }
    }

    /// What matching needs to know of this kill.
    pub fn facts(&self) -> Facts {
        Facts {
            pid: self.pid,
            start_time_ns: self.start_time_ns,
            ktime_ns: self.ktime_ns,
            kmsg_ts_ns: self.kmsg_ts_usec.map(|u| u.saturating_mul(1000)),
            has_task: self.btf.is_some(),
            has_tracepoint: self.tp.is_some(),
            has_kill_line: self.kmsg.killed.is_some(),
        }
    }

    /// CLOCK_MONOTONIC nanoseconds of the kill: BPF time, else the kernel
    /// log's timestamp (the same clock, in microseconds), else 0.
    pub fn at_ns(&self) -> u64 {
        self.ktime_ns
            .or_else(|| self.kmsg_ts_usec.map(|u| u.saturating_mul(1000)))
            .unwrap_or(0)
    }

    /// The task the decision chose, when it is this victim.
    pub fn chosen_by_decision(&self) -> Option<&crate::capture::Chosen> {
        self.decision
            .as_ref()
            .and_then(|d| d.chosen.as_ref())
            .filter(|c| c.pid == self.pid)
    }
}

/// The kernel log's lines about one victim.
#[derive(Debug, Default)]
pub struct KmsgLines {
    /// `Killed process N ...` (never rate-limited).
    pub killed: Option<KillLine>,
    /// `oom-kill:constraint=...` (rate-limited).
    pub summary: Option<Summary>,
    /// `<comm> invoked oom-killer: ...` (rate-limited).
    pub header: Option<HeaderLine>,
    /// Before 5.1: the score of `Kill process N ... score S or sacrifice child`.
    pub chosen_score: Option<i64>,
    /// Before 4.19: `Task in <task> killed as a result of limit of <limit>`.
    pub task_in: Option<TaskIn>,
    /// Taken by a memory.oom.group kill of this cgroup.
    pub group_of: Option<String>,
}

/// The victim figures of a kill line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillLine {
    /// What the line's prefix says ran out (`None` before 5.1: no prefix).
    pub scope: Option<Scope>,
    pub comm: String,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub uid: Option<u32>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

impl KillLine {
    pub fn from_line(line: &OomLine) -> Option<Self> {
        let OomLine::Killed {
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
        } = line
        else {
            return None;
        };
        Some(Self {
            scope: line_scope(*memcg, *global),
            comm: comm.clone(),
            total_vm_kb: *total_vm_kb,
            anon_rss_kb: *anon_rss_kb,
            file_rss_kb: *file_rss_kb,
            shmem_rss_kb: *shmem_rss_kb,
            uid: *uid,
            pgtables_kb: *pgtables_kb,
            oom_score_adj: *oom_score_adj,
        })
    }
}

/// What a kill line's prefix says: `Memory cgroup out of memory` or `Out of memory`.
pub fn line_scope(memcg: bool, global: bool) -> Option<Scope> {
    match (memcg, global) {
        (true, _) => Some(Scope::Cgroup),
        (_, true) => Some(Scope::Node),
        _ => None,
    }
}

/// The `oom-kill:` summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// `CONSTRAINT_...`.
    pub constraint: Option<String>,
    /// `global_oom` instead of `oom_memcg=`.
    pub global: bool,
    pub oom_memcg: Option<String>,
    /// The victim's memory cgroup.
    pub task_memcg: Option<String>,
    /// The victim.
    pub pid: Option<u32>,
}

impl Summary {
    pub fn from_line(line: &OomLine) -> Option<Self> {
        let OomLine::Summary {
            constraint,
            global,
            oom_memcg,
            task_memcg,
            pid,
            ..
        } = line
        else {
            return None;
        };
        Some(Self {
            constraint: constraint.clone(),
            global: *global,
            oom_memcg: oom_memcg.clone(),
            task_memcg: task_memcg.clone(),
            pid: *pid,
        })
    }
}

/// The `invoked oom-killer` header: the trigger's side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderLine {
    pub comm: String,
    pub gfp_mask: Option<String>,
    pub order: Option<i32>,
    pub oom_score_adj: Option<i32>,
}

impl HeaderLine {
    pub fn from_line(line: &OomLine) -> Option<Self> {
        let OomLine::Header {
            comm,
            gfp_mask,
            order,
            oom_score_adj,
        } = line
        else {
            return None;
        };
        Some(Self {
            comm: comm.clone(),
            gfp_mask: gfp_mask.clone(),
            order: *order,
            oom_score_adj: *oom_score_adj,
        })
    }
}

/// Before 4.19: which cgroup the victim was in and whose limit was hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIn {
    pub task_cgroup: String,
    pub limit_cgroup: String,
}
