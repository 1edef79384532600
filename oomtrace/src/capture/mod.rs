//! Capture: what the kernel says about a kill, decoded into one [`Input`]
//! type for the correlator.
//!
//! Two sources produce inputs: the eBPF programs through the ring buffer
//! ([`ring`] decodes their records) and the kernel log ([`crate::capture::kmsg`]).
//! Every input is self-contained: the correlator never reads the kernel's
//! ABI structs or a file to make sense of one.

pub mod btf;
pub mod eviction;
pub mod killer;
pub mod kmsg;
pub mod lookup;
pub mod memstat;
pub mod offsets;
pub mod probe;
pub mod ring;
pub mod tracefs;

use std::time::Instant;

use crate::{
    capture::kmsg::OomLine, capture::tracefs::MarkVictimFields, correlate::walk::Walk,
    report::Constraint,
};

/// One thing a capture source saw.
#[derive(Debug, Clone)]
pub enum Input {
    /// `tracepoint/oom/mark_victim`: one per victim.
    Tracepoint(TpSighting),
    /// `tp_btf/mark_victim`: the victim task itself.
    TpBtf(TaskSighting),
    /// `oom_kill_process`: the kernel's decision (before its victims).
    Decision(Decision),
    /// A task a memory.oom.group kill is about to take
    /// (`oom_kill_memcg_member`). It only completes a victim another source
    /// reports: the kernel skips some of the tasks it scans.
    GroupMember(TaskSighting),
    /// An OOM-killer line of the kernel log.
    Kmsg(KmsgSighting),
    /// A SIGKILL or SIGTERM from a process on the `--userspace-killers` list
    /// (`signal_generate`): maybe a userspace OOM killer at work.
    Signal(SignalSighting),
    /// A [`Input::Signal`] whose sender was confirmed as a userspace OOM
    /// killer ([`killer`]), with the victim as `/proc` showed it.
    KillerSignal(killer::KillerSignal),
    /// Whether the victim of a confirmed killer's SIGTERM exited on it.
    KillerFate(killer::VictimFate),
    /// With `--kube`: a pod of this node the kubelet evicted for memory.
    Eviction(eviction::EvictedPod),
    /// A victim's memory cgroup from `/proc/<pid>/cgroup`, looked up beside
    /// the draining while it died (`None`: already gone, or not readable).
    ProcCgroup { pid: u32, cgroup: Option<String> },
    /// Where the memory of a victim's cgroup, its ancestors and the node
    /// was, read beside the draining when the victim was first seen.
    Memory {
        pid: u32,
        memory: memstat::MemoryAtKill,
    },
}

/// The task that ran the OOM killer (`current` in the hook): often not the victim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
}

/// What every eBPF record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook ran.
    pub ktime_ns: u64,
    pub trigger: Trigger,
}

/// A classic tracepoint record, decoded with the `format` file's layout.
#[derive(Debug, Clone)]
pub struct TpSighting {
    pub meta: RecordMeta,
    pub fields: MarkVictimFields,
    /// Whether the OOM killer's own SIGKILL to this task was seen just
    /// before the mark (`VICTIM_OOM_SIGKILL`): `Some(true)` a kill,
    /// `Some(false)` the reaping of a task that was already exiting
    /// (`task_will_free_mem()`), `None` not known (the signal hook is not
    /// attached).
    pub oom_sigkill: Option<bool>,
}

impl TpSighting {
    /// The victim pid (the tracepoint always has it).
    pub fn pid(&self) -> u32 {
        self.fields.pid.unwrap_or(0)
    }
}

/// What was read from a victim `task_struct` in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSighting {
    pub meta: RecordMeta,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub oom_score_adj: Option<i32>,
    pub uid: u32,
    /// `task->start_time` (ns since boot): with the pid, it names one task
    /// for the life of the boot (`None` when it could not be read).
    pub start_time_ns: Option<u64>,
    /// Its memory cgroup and every ancestor, with usage and limit.
    pub walk: Option<Walk>,
    /// Where it stands in its PID namespace (`None`: not read).
    pub lineage: Option<Lineage>,
    /// As [`TpSighting::oom_sigkill`] (victim records only: `None` for a
    /// group member's scan, which comes before its kill).
    pub oom_sigkill: Option<bool>,
}

/// Where a task stands in its PID namespace and process tree, as the
/// kernel side read it from the task while it was alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// PID namespace depth: 0 is the node's own namespace.
    pub ns_level: u32,
    /// Its process id in its own namespace (1: the namespace's init).
    pub ns_pid: u32,
    /// Its parent (`None` when it could not be read).
    pub parent: Option<Parent>,
    /// Whether the parent is in the task's own memory cgroup (`None`: not compared).
    pub parent_same_memcg: Option<bool>,
}

/// A task's parent process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// Its pid in the node's namespace.
    pub pid: u32,
    /// Its pid in the child's namespace; 0 when it is outside that namespace.
    pub ns_pid: u32,
    pub comm: String,
    /// The task is its only child.
    pub only_child: bool,
}

/// The task `oom_kill_process` was given as the victim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// `oc->chosen_points`: its badness.
    pub points: i64,
    pub oom_score_adj: i32,
    pub start_time_ns: Option<u64>,
    pub lineage: Option<Lineage>,
}

/// `struct oom_control` at the entry of `oom_kill_process`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub meta: RecordMeta,
    /// `oc->memcg` was set: a memory cgroup's limit, not the node.
    pub memcg: bool,
    pub constraint: Option<Constraint>,
    /// `oc->order` (-1 for a sysrq-forced OOM).
    pub order: i32,
    pub gfp_mask: u32,
    /// `oc->totalpages`: what badness was scored against.
    pub totalpages: u64,
    pub chosen: Option<Chosen>,
    /// `oc->memcg` and its ancestors: the OOM domain.
    pub domain: Option<Walk>,
    pub chosen_memcg: Option<Walk>,
    pub trigger_memcg: Option<Walk>,
}

/// A SIGKILL or SIGTERM whose sender's name is on the killer list. The
/// name is only the kernel's prefilter: the sender is confirmed (by its
/// executable and namespaces) before it is called a memory killer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalSighting {
    /// The sender (`current`).
    pub meta: RecordMeta,
    pub sig: i32,
    /// `si_code`: `SI_USER` (0) for `kill(2)` and `cgroup.kill`, `SI_KERNEL` (0x80).
    pub code: i32,
    /// For the whole thread group.
    pub group: bool,
    /// `enum trace_signal_result` (0 delivered).
    pub result: i32,
    /// The target: its thread id and process id (tgid unknown from the
    /// classic tracepoint).
    pub target_pid: u32,
    pub target_tgid: Option<u32>,
    pub target_comm: String,
    pub target_start_time_ns: Option<u64>,
    pub target_oom_score_adj: Option<i32>,
    /// The target's memory cgroup walk (`tp_btf` only).
    pub walk: Option<Walk>,
}

/// One OOM-killer line of the kernel log.
#[derive(Debug, Clone)]
pub struct KmsgSighting {
    /// The record's sequence number.
    pub seq: u64,
    /// Kernel monotonic time of the record, in microseconds since boot.
    pub ts_usec: u64,
    pub line: OomLine,
    /// When the reader received it.
    pub received: Instant,
    /// Read from the kernel log's backlog after a restart (`--state-dir`):
    /// the kill happened while oomtrace was not running, so no eBPF source
    /// saw it.
    pub replayed: bool,
}
