//! The kernel/user ABI of oomtrace.
//!
//! Every record the eBPF programs put into the ring buffer starts with a
//! [`Header`] carrying [`ABI_VERSION`] and a kind, so the agent rejects what it
//! does not understand instead of misreading it. Structs are `#[repr(C)]`,
//! made of fixed-width integers and byte arrays, with explicit padding and a
//! compile-time size check: the same bytes mean the same thing on both sides.
//!
//! Kernel struct offsets are not known at compile time (Rust eBPF has no
//! CO-RE). The agent computes them from `/sys/kernel/btf/vmlinux` and passes
//! them in as the [`KernelOffsets`] global before loading.
#![no_std]

use core::mem::size_of;

/// Bumped whenever a struct below changes shape.
///
/// 2: `start_time_ns` in [`BtfVictim`] and [`Decision`]; [`Signal`] records;
/// the [`SignalLayout`] and [`KillerNames`] globals; `task_start_time` and
/// the `siginfo_*` members of [`KernelOffsets`]; more `STAT_*` slots.
///
/// 3: [`Lineage`] in [`BtfVictim`] and [`Decision`] (main process or
/// child); `flags` in [`TpVictim`] and [`VICTIM_OOM_SIGKILL`] (the OOM
/// killer's own SIGKILL seen, the [`OOM_SIGKILL_MAP`] slot); the members of
/// [`KernelOffsets`] they read; [`STAT_OOM_SIGKILL`] and
/// [`STAT_OOM_SIGKILL_MATCHED`].
pub const ABI_VERSION: u16 = 3;

/// Name of the ring buffer map.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counter array (indices are the `STAT_*` constants).
pub const STATS_MAP: &str = "STATS";
/// Name of the global holding [`KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";
/// Name of the global holding [`TracepointLayout`].
pub const TP_LAYOUT_GLOBAL: &str = "TP_LAYOUT";
/// Name of the global holding [`SignalLayout`].
pub const SIGNAL_LAYOUT_GLOBAL: &str = "SIGNAL_LAYOUT";
/// Name of the global holding [`KillerNames`].
pub const KILLERS_GLOBAL: &str = "KILLERS";
/// Name of the per-CPU array (one [`OomSigkill`]) where the signal hook
/// parks the last kernel-sent SIGKILL for the `mark_victim` programs.
pub const OOM_SIGKILL_MAP: &str = "OOM_SIGKILL";
/// How long after the kernel's SIGKILL (same CPU, same sending thread) a
/// `mark_victim` of the same task counts as the OOM killer's kill.
/// `__oom_kill_process()` calls `do_send_sig_info(SIGKILL, SEND_SIG_PRIV,
/// victim, PIDTYPE_TGID)` and then `mark_oom_victim(victim)` with nothing
/// that sleeps in between. Measured from the signal hook to each
/// `mark_victim` program (the second one runs after the first): 5-74 µs
/// (median 36) on the 6.18 CI host, 40 µs to 10.7 ms (median 90 µs)
/// in a TCG-emulated 6.1 VM. A wide window costs nothing: a SIGKILL the
/// kernel sent to this very task from this very thread on this CPU just
/// before is a kill by the kernel whatever the window.
pub const OOM_SIGKILL_FRESH_NS: u64 = 100_000_000;
/// Name of aya-log's ring buffer in the object (`aya_log_ebpf`'s `AYA_LOGS`).
pub const LOG_MAP: &str = "AYA_LOGS";
/// Size the agent gives [`LOG_MAP`] (aya-log-ebpf declares 128 KiB). A log
/// record of the hooks is under 256 bytes and they log O(log n) lines per
/// storm, so 16 KiB holds dozens; the mapping costs twice its size in RSS.
pub const LOG_MAP_BYTES: u32 = 16 << 10;
/// Target of the kernel side's log records, as the agent's `tracing` sees
/// them (`OOMTRACE_LOG=info,oomtrace_ebpf=debug`).
pub const LOG_TARGET: &str = "oomtrace_ebpf";

/// Program names, as the agent looks them up in the object.
pub const PROG_TP_MARK_VICTIM: &str = "tp_mark_victim";
pub const PROG_BTF_MARK_VICTIM: &str = "btf_mark_victim";
pub const PROG_KPROBE_OOM_KILL: &str = "kprobe_oom_kill_process";
pub const PROG_FENTRY_OOM_KILL: &str = "fentry_oom_kill_process";
pub const PROG_FENTRY_GROUP_MEMBER: &str = "fentry_oom_kill_memcg_member";
pub const PROG_KPROBE_GROUP_MEMBER: &str = "kprobe_oom_kill_memcg_member";
pub const PROG_BTF_SIGNAL: &str = "btf_signal_generate";
pub const PROG_TP_SIGNAL: &str = "tp_signal_generate";

/// Default size of the ring buffer in bytes (a power of two, a multiple of the page size).
/// 1 MiB holds the records of some 450 kills (tracepoint + tp_btf), 120 with
/// the decision hook, before userspace drains them; the agent maps it twice
/// (the kernel's wrap-around mapping), so it costs twice its size in RSS.
pub const DEFAULT_RINGBUF_BYTES: u32 = 1 << 20;

/// Levels of the memory cgroup hierarchy captured per walk (leaf first).
pub const MAX_DEPTH: usize = 12;
/// Bytes kept of each cgroup directory name (kernfs node name).
pub const NAME_LEN: usize = 128;
/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
/// Bytes copied of a classic tracepoint record (its fixed part and `__data_loc` comm).
pub const TP_RECORD_MAX: usize = 256;

/// Per-CPU counters in [`STATS_MAP`].
pub const STAT_LOST_TP_VICTIM: u32 = 0;
pub const STAT_LOST_BTF_VICTIM: u32 = 1;
pub const STAT_LOST_DECISION: u32 = 2;
/// A kernel read failed (the event was sent with what could be read).
pub const STAT_READ_ERRORS: u32 = 3;
pub const STAT_FIRED_TP_VICTIM: u32 = 4;
pub const STAT_FIRED_BTF_VICTIM: u32 = 5;
pub const STAT_FIRED_DECISION: u32 = 6;
pub const STAT_LOST_GROUP_MEMBER: u32 = 7;
pub const STAT_FIRED_GROUP_MEMBER: u32 = 8;
/// Hook runs in which at least one kernel read failed (the rate limit of the
/// read-failure log line: it is written when this reaches a power of two).
pub const STAT_READ_FAILED_RUNS: u32 = 9;
/// SIGKILL/SIGTERM from a sender named in [`KillerNames`]: a record was
/// reserved (or lost). Other signals are not counted: the hook returns
/// before any helper call for them. (Listed + filtered = every SIGKILL and
/// SIGTERM; one counter per signal keeps the common path short.)
pub const STAT_LISTED_SIGNAL: u32 = 10;
/// SIGKILL/SIGTERM whose sender's comm is not in [`KillerNames`]: no record.
pub const STAT_FILTERED_SIGNAL: u32 = 11;
/// SIGKILL/SIGTERM from a listed sender whose record found the ring buffer full.
pub const STAT_LOST_SIGNAL: u32 = 12;
/// Not a counter: what the last run's first failed kernel read was for (a
/// code of the eBPF side, for its log line).
pub const STAT_READ_WHAT: u32 = 13;
/// SIGKILLs the kernel sent itself (`SEND_SIG_PRIV`, or `si_code`
/// `SI_KERNEL` on the classic tracepoint), seen by the signal hook whatever
/// the sender's name: the OOM killer's among them.
pub const STAT_OOM_SIGKILL: u32 = 14;
/// `mark_victim` runs (either program) that found their victim's kernel
/// SIGKILL fresh in the [`OOM_SIGKILL_MAP`] slot.
pub const STAT_OOM_SIGKILL_MATCHED: u32 = 15;
pub const STAT_COUNT: u32 = 16;

/// Event kinds in [`Header::kind`].
pub const KIND_TP_VICTIM: u16 = 1;
pub const KIND_BTF_VICTIM: u16 = 2;
pub const KIND_DECISION: u16 = 3;
/// A task `oom_kill_memcg_member` is about to kill in a memory.oom.group kill
/// (a [`BtfVictim`] record). Not every such task dies: the kernel skips tasks
/// without memory, so this only completes a victim another source reported.
pub const KIND_GROUP_MEMBER: u16 = 4;
/// A SIGKILL or SIGTERM sent by a process whose name is in [`KillerNames`]
/// (a [`Signal`] record).
pub const KIND_SIGNAL: u16 = 5;

/// [`CgroupWalk::flags`]: the hierarchy was deeper than [`MAX_DEPTH`].
pub const WALK_TRUNCATED: u32 = 1;
/// [`CgroupWalk::flags`]: a kernel read failed part-way.
pub const WALK_READ_FAILED: u32 = 2;
/// [`CgroupWalk::flags`]: the walk was not attempted (no pointer, offsets unknown).
pub const WALK_ABSENT: u32 = 4;

/// [`Decision::flags`]: `oc->memcg` was non-NULL (a memory cgroup OOM).
pub const DECISION_HAS_MEMCG: u32 = 1;
/// [`Decision::flags`]: `oc->chosen` was a task (not NULL or the -1 "abort" marker).
pub const DECISION_HAS_CHOSEN: u32 = 2;

/// [`BtfVictim::flags`]: the victim's `signal->oom_score_adj` was read.
pub const VICTIM_HAS_ADJ: u32 = 1;
/// [`BtfVictim::flags`] and [`TpVictim::flags`]: the kernel sent this task a
/// SIGKILL of its own (`SEND_SIG_PRIV`) on this CPU, from this thread,
/// within [`OOM_SIGKILL_FRESH_NS`] before `mark_victim`: the OOM killer
/// killed it (`__oom_kill_process`). Without it the task was only marked
/// and reaped: it was already exiting (`task_will_free_mem()`). Never set
/// when the signal hook is not attached.
pub const VICTIM_OOM_SIGKILL: u32 = 2;

/// [`Lineage::flags`]: `ns_level` and `ns_pid` were read.
pub const LINEAGE_NS: u32 = 1;
/// [`Lineage::flags`]: the parent was read (`ppid`, `ns_ppid`, `parent_comm`).
pub const LINEAGE_PARENT: u32 = 2;
/// [`Lineage::flags`]: the task is its parent's only child.
pub const LINEAGE_ONLY_CHILD: u32 = 4;
/// [`Lineage::flags`]: the memory cgroups of task and parent were both read
/// (then [`LINEAGE_PARENT_SAME_MEMCG`] is meaningful).
pub const LINEAGE_MEMCG_COMPARED: u32 = 8;
/// [`Lineage::flags`]: the parent is in the task's own memory cgroup.
pub const LINEAGE_PARENT_SAME_MEMCG: u32 = 16;

/// [`Signal::flags`]: from `tp_btf/signal_generate`: the target task was
/// read (`target_tgid`, `target_start_time_ns`, `memcg`).
pub const SIGNAL_HAS_TASK: u32 = 1;
/// [`Signal::flags`]: the target's `signal->oom_score_adj` was read.
pub const SIGNAL_HAS_ADJ: u32 = 2;

/// `SIGKILL` and `SIGTERM` (the same on every Linux architecture).
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// Sender names the signal hook keeps at most.
pub const MAX_KILLERS: usize = 8;

/// The first bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub kind: u16,
    /// Size of the whole record in bytes.
    pub len: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook ran.
    pub ktime_ns: u64,
    /// The task running the OOM killer (`current`): thread id and process id.
    pub trigger_tid: u32,
    pub trigger_tgid: u32,
    pub trigger_comm: [u8; COMM_LEN],
    pub cpu: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Header>() == 48);

impl Header {
    pub const fn zeroed() -> Self {
        Self {
            version: 0,
            kind: 0,
            len: 0,
            ktime_ns: 0,
            trigger_tid: 0,
            trigger_tgid: 0,
            trigger_comm: [0; COMM_LEN],
            cpu: 0,
            _pad: 0,
        }
    }
}

/// One memory cgroup on the way from a task's memcg to the root.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLevel {
    /// `cgroup->kn->id` (the cgroup id; inode number of the directory on 64-bit).
    pub id: u64,
    /// `memcg->memory.usage` in pages.
    pub usage_pages: u64,
    /// `memcg->memory.max` in pages (`PAGE_COUNTER_MAX` when unlimited).
    pub max_pages: u64,
    /// `cgroup->kn->name`, NUL-terminated when shorter than [`NAME_LEN`].
    pub name: [u8; NAME_LEN],
}
const _: () = assert!(size_of::<CgroupLevel>() == 24 + NAME_LEN);

/// A memory cgroup and its ancestors, leaf first, as the kernel saw them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupWalk {
    /// Number of valid entries in `levels`.
    pub depth: u32,
    /// `WALK_*` bits.
    pub flags: u32,
    pub levels: [CgroupLevel; MAX_DEPTH],
}
const _: () = assert!(size_of::<CgroupWalk>() == 8 + MAX_DEPTH * size_of::<CgroupLevel>());

/// From `tracepoint/oom/mark_victim`: the raw tracepoint record, decoded in
/// userspace with the offsets of the tracepoint's `format` file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpVictim {
    pub header: Header,
    /// The victim pid, read in the kernel at the `format` file's offset.
    pub pid: u32,
    /// Bytes of `record` that were copied.
    pub record_len: u32,
    /// `VICTIM_OOM_SIGKILL` or 0.
    pub flags: u32,
    pub _pad: u32,
    pub record: [u8; TP_RECORD_MAX],
}
const _: () = assert!(size_of::<TpVictim>() == 48 + 16 + TP_RECORD_MAX);

/// Where a task stands in its PID namespace and process tree, read in the
/// kernel while it is still alive: what says whether it was its
/// container's main process (the init of its PID namespace, or the only
/// child of an init shim such as tini) or a child of it.
///
/// Everything is about the task's process (its thread group leader), and
/// the parent is `real_parent`'s process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// `LINEAGE_*` bits (0: nothing could be read).
    pub flags: u32,
    /// `task->thread_pid->level`: 0 in the node's own PID namespace.
    pub ns_level: u32,
    /// The process id in its own PID namespace
    /// (`thread_pid->numbers[level].nr`): 1 for the namespace's init.
    pub ns_pid: u32,
    /// The parent's process id in the same namespace; 0 when the parent is
    /// outside it (the parent of a namespace's init, or of a process
    /// entered into the namespace with `setns`, as `kubectl exec` does).
    pub ns_ppid: u32,
    /// The parent's process id in the node's namespace.
    pub ppid: u32,
    pub _pad: u32,
    /// The parent's `comm`.
    pub parent_comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<Lineage>() == 24 + COMM_LEN);

impl Lineage {
    pub const fn zeroed() -> Self {
        Self {
            flags: 0,
            ns_level: 0,
            ns_pid: 0,
            ns_ppid: 0,
            ppid: 0,
            _pad: 0,
            parent_comm: [0; COMM_LEN],
        }
    }
}

/// The last SIGKILL the kernel sent itself on one CPU (the
/// [`OOM_SIGKILL_MAP`] slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomSigkill {
    /// `bpf_ktime_get_ns()` when it was sent.
    pub ktime_ns: u64,
    /// The target thread (`task->pid`, as `mark_victim` reports it).
    pub target_tid: u32,
    /// The thread that sent it (`current`).
    pub sender_tid: u32,
}
const _: () = assert!(size_of::<OomSigkill>() == 16);

/// From `tp_btf/mark_victim`: what is read from the victim `task_struct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtfVictim {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
    pub oom_score_adj: i32,
    pub uid: u32,
    /// `VICTIM_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// `task->start_time`: when the victim started, in ns of CLOCK_MONOTONIC
    /// since boot (0 when it could not be read). With the pid it names one
    /// task for the life of the boot: pids are reused, (pid, start_time) is not.
    pub start_time_ns: u64,
    /// Its PID namespace and parent: main process or child.
    pub lineage: Lineage,
    /// The victim's memory cgroup and its ancestors.
    pub memcg: CgroupWalk,
}
const _: () =
    assert!(size_of::<BtfVictim>() == 48 + 48 + size_of::<Lineage>() + size_of::<CgroupWalk>());

/// From a kprobe or fentry on `oom_kill_process(struct oom_control *oc, const char *message)`:
/// the kernel's decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub header: Header,
    /// `DECISION_*` bits.
    pub flags: u32,
    /// `enum oom_constraint` (0 none, 1 cpuset, 2 memory policy, 3 memcg).
    pub constraint: u32,
    /// `oc->order` (-1 for a sysrq-forced OOM).
    pub order: i32,
    pub gfp_mask: u32,
    /// `oc->totalpages`: the memcg limit, or RAM + swap for a node-level OOM.
    pub totalpages: u64,
    /// `oc->chosen_points`: the victim's badness.
    pub chosen_points: i64,
    pub chosen_pid: u32,
    pub chosen_tgid: u32,
    pub chosen_comm: [u8; COMM_LEN],
    pub chosen_adj: i32,
    pub _pad: u32,
    /// The chosen task's `start_time` (as [`BtfVictim::start_time_ns`]; 0 when
    /// there is no chosen task or it could not be read).
    pub chosen_start_time_ns: u64,
    /// The chosen task's PID namespace and parent.
    pub chosen_lineage: Lineage,
    /// `oc->memcg` and its ancestors: the OOM domain (`WALK_ABSENT` when node-level).
    pub domain: CgroupWalk,
    /// The chosen victim's memory cgroup.
    pub chosen_memcg: CgroupWalk,
    /// The trigger's (`current`'s) memory cgroup.
    pub trigger_memcg: CgroupWalk,
}
const _: () =
    assert!(size_of::<Decision>() == 48 + 72 + size_of::<Lineage>() + 3 * size_of::<CgroupWalk>());

/// From `signal/signal_generate` (`tp_btf`, else the classic tracepoint): a
/// SIGKILL or SIGTERM whose sender's name is in [`KillerNames`]. The
/// [`Header`]'s `trigger_*` fields are the sender (`current`); the name is
/// only a prefilter (any process can take any name): userspace confirms the
/// sender before calling it a memory killer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub header: Header,
    /// [`SIGKILL`] or [`SIGTERM`].
    pub sig: i32,
    /// `info->si_errno` (0 without a siginfo).
    pub errno: i32,
    /// `info->si_code`: `SI_USER` (0) for `kill(2)` and `cgroup.kill`,
    /// `SI_KERNEL` (0x80) for the kernel's own, `SI_TKILL` (-6) for `tgkill(2)`.
    pub code: i32,
    /// Non-zero when the signal is for the whole thread group (`kill(2)`),
    /// zero for one thread (`tgkill(2)`).
    pub group: i32,
    /// `enum trace_signal_result`: 0 delivered, 1 ignored, 2 already pending,
    /// 3 overflow, 4 info lost.
    pub result: i32,
    /// `SIGNAL_*` bits.
    pub flags: u32,
    /// The target thread's id (`task->pid`).
    pub target_pid: u32,
    /// The target's process id (`task->tgid`; 0 from the classic tracepoint).
    pub target_tgid: u32,
    pub target_comm: [u8; COMM_LEN],
    /// The target's `start_time` (as [`BtfVictim::start_time_ns`]; 0 from the
    /// classic tracepoint).
    pub target_start_time_ns: u64,
    /// The target's `oom_score_adj` (valid with [`SIGNAL_HAS_ADJ`]).
    pub target_oom_score_adj: i32,
    pub _pad: u32,
    /// The target's memory cgroup and its ancestors (`WALK_ABSENT` from the
    /// classic tracepoint).
    pub memcg: CgroupWalk,
}
const _: () = assert!(size_of::<Signal>() == 48 + 64 + size_of::<CgroupWalk>());

/// Byte offsets in kernel structs, computed from BTF by the agent.
///
/// `u32::MAX` marks a member the running kernel does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Non-zero once the agent filled the struct in.
    pub valid: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_cgroups: u32,
    pub task_signal: u32,
    pub task_cred: u32,
    pub cred_uid: u32,
    pub signal_oom_score_adj: u32,
    /// Offset of `subsys[memory_cgrp_id]` inside `struct css_set`.
    pub css_set_memory_subsys: u32,
    pub css_cgroup: u32,
    pub css_parent: u32,
    pub cgroup_kn: u32,
    pub kn_name: u32,
    pub kn_id: u32,
    /// Offset of `css` inside `struct mem_cgroup` (to go from css to memcg).
    pub memcg_css: u32,
    /// Offset of `memory.usage` (an `atomic_long_t`) inside `struct mem_cgroup`.
    pub memcg_usage: u32,
    /// Offset of `memory.max` inside `struct mem_cgroup`.
    pub memcg_max: u32,
    pub oc_memcg: u32,
    pub oc_gfp_mask: u32,
    pub oc_order: u32,
    pub oc_totalpages: u32,
    pub oc_chosen: u32,
    pub oc_chosen_points: u32,
    pub oc_constraint: u32,
    /// `task_struct.start_time` (u64, ns of CLOCK_MONOTONIC).
    pub task_start_time: u32,
    /// `kernel_siginfo.si_errno` and `.si_code` (inside an anonymous struct).
    pub siginfo_errno: u32,
    pub siginfo_code: u32,
    /// For [`Lineage`]: `task_struct.group_leader`, `.real_parent`,
    /// `.thread_pid`, `.children` and `.sibling` (list heads); `pid.level`,
    /// `pid.numbers` (an array of `struct upid`, `upid_size` bytes each),
    /// `upid.nr` and `upid.ns`.
    pub task_group_leader: u32,
    pub task_real_parent: u32,
    pub task_thread_pid: u32,
    pub task_children: u32,
    pub task_sibling: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_nr: u32,
    pub upid_ns: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 38 * 4);

impl KernelOffsets {
    pub const fn zeroed() -> Self {
        Self {
            valid: 0,
            task_pid: 0,
            task_tgid: 0,
            task_comm: 0,
            task_cgroups: 0,
            task_signal: 0,
            task_cred: 0,
            cred_uid: 0,
            signal_oom_score_adj: 0,
            css_set_memory_subsys: 0,
            css_cgroup: 0,
            css_parent: 0,
            cgroup_kn: 0,
            kn_name: 0,
            kn_id: 0,
            memcg_css: 0,
            memcg_usage: 0,
            memcg_max: 0,
            oc_memcg: 0,
            oc_gfp_mask: 0,
            oc_order: 0,
            oc_totalpages: 0,
            oc_chosen: 0,
            oc_chosen_points: 0,
            oc_constraint: 0,
            task_start_time: 0,
            siginfo_errno: 0,
            siginfo_code: 0,
            task_group_leader: 0,
            task_real_parent: 0,
            task_thread_pid: 0,
            task_children: 0,
            task_sibling: 0,
            pid_level: 0,
            pid_numbers: 0,
            upid_size: 0,
            upid_nr: 0,
            upid_ns: 0,
        }
    }
}

/// What the classic tracepoint program needs from the `format` file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointLayout {
    /// Offset of the `pid` field.
    pub pid_offset: u32,
    /// Bytes to copy from the start of the record (at most [`TP_RECORD_MAX`]).
    pub record_len: u32,
}
const _: () = assert!(size_of::<TracepointLayout>() == 8);

/// Offsets of the classic `signal/signal_generate` record, from its `format`
/// file (`events/signal/signal_generate/format`): `int sig`, `int errno`,
/// `int code`, `char comm[16]`, `pid_t pid`, `int group`, `int result`.
/// `valid` is zero when the agent did not fill it in (the program then
/// sends nothing).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalLayout {
    pub valid: u32,
    pub sig: u32,
    pub errno: u32,
    pub code: u32,
    pub comm: u32,
    pub pid: u32,
    pub group: u32,
    pub result: u32,
}
const _: () = assert!(size_of::<SignalLayout>() == 32);

impl SignalLayout {
    pub const fn zeroed() -> Self {
        Self {
            valid: 0,
            sig: 0,
            errno: 0,
            code: 0,
            comm: 0,
            pid: 0,
            group: 0,
            result: 0,
        }
    }
}

/// The senders the signal hook reports: process names (`comm`, what the
/// kernel keeps of the executable's name: at most 15 bytes, NUL-padded to
/// 16) compared exactly with the sender's. Only the first `count` are used.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillerNames {
    pub count: u32,
    pub _pad: u32,
    pub names: [[u8; COMM_LEN]; MAX_KILLERS],
}
const _: () = assert!(size_of::<KillerNames>() == 8 + COMM_LEN * MAX_KILLERS);

impl KillerNames {
    pub const fn zeroed() -> Self {
        Self {
            count: 0,
            _pad: 0,
            names: [[0; COMM_LEN]; MAX_KILLERS],
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are `repr(C)` structs of integers and byte arrays
    // with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for TracepointLayout {}
    unsafe impl aya::Pod for SignalLayout {}
    unsafe impl aya::Pod for KillerNames {}
}

/// Errors from [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header, or than the kind's struct.
    Short { len: usize, need: usize },
    /// A record of another ABI version (agent and eBPF object out of step).
    Version(u16),
    /// A kind this agent does not know.
    Kind(u16),
}

/// A decoded ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "decoded once per kill and moved into a Box by the agent; no_std has no Box"
)]
pub enum Record {
    TpVictim(TpVictim),
    BtfVictim(BtfVictim),
    Decision(Decision),
    GroupMember(BtfVictim),
    Signal(Signal),
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length is checked above and every `T` used here is a
    // plain-old-data struct for which any bit pattern is valid.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record, checking its length, version and kind.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: Header = read(bytes)?;
    if header.version != ABI_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    match header.kind {
        KIND_TP_VICTIM => read(bytes).map(Record::TpVictim),
        KIND_BTF_VICTIM => read(bytes).map(Record::BtfVictim),
        KIND_DECISION => read(bytes).map(Record::Decision),
        KIND_GROUP_MEMBER => read(bytes).map(Record::GroupMember),
        KIND_SIGNAL => read(bytes).map(Record::Signal),
        other => Err(DecodeError::Kind(other)),
    }
}

/// The bytes of a record, as the eBPF side writes them (for tests and benchmarks).
pub fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: reading the bytes of a `Copy` repr(C) value is always valid.
    unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The text before the first NUL of a fixed-size kernel string buffer.
pub fn c_str(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u16, len: usize) -> Header {
        Header {
            version: ABI_VERSION,
            kind,
            len: len as u32,
            ktime_ns: 123_456_789,
            trigger_tid: 42,
            trigger_tgid: 41,
            trigger_comm: *b"python3\0\0\0\0\0\0\0\0\0",
            cpu: 1,
            _pad: 0,
        }
    }

    fn walk() -> CgroupWalk {
        let mut name = [0u8; NAME_LEN];
        name[..8].copy_from_slice(b"kubepods");
        let level = CgroupLevel {
            id: 7,
            usage_pages: 100,
            max_pages: 200,
            name,
        };
        CgroupWalk {
            depth: 2,
            flags: WALK_TRUNCATED,
            levels: [level; MAX_DEPTH],
        }
    }

    fn lineage() -> Lineage {
        Lineage {
            flags: LINEAGE_NS | LINEAGE_PARENT | LINEAGE_ONLY_CHILD,
            ns_level: 1,
            ns_pid: 7,
            ns_ppid: 1,
            ppid: 4100,
            _pad: 0,
            parent_comm: *b"tini\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn every_record_kind_round_trips() {
        let mut record = [0u8; TP_RECORD_MAX];
        record[8] = 0x2a;
        let tp = TpVictim {
            header: header(KIND_TP_VICTIM, size_of::<TpVictim>()),
            pid: 42,
            record_len: 88,
            flags: VICTIM_OOM_SIGKILL,
            _pad: 0,
            record,
        };
        assert_eq!(decode(as_bytes(&tp)), Ok(Record::TpVictim(tp)));

        let btf = BtfVictim {
            header: header(KIND_BTF_VICTIM, size_of::<BtfVictim>()),
            pid: 42,
            tgid: 41,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
            oom_score_adj: -997,
            uid: 1000,
            flags: VICTIM_HAS_ADJ | VICTIM_OOM_SIGKILL,
            _pad: 0,
            start_time_ns: 3_600_123_456_789,
            lineage: lineage(),
            memcg: walk(),
        };
        assert_eq!(decode(as_bytes(&btf)), Ok(Record::BtfVictim(btf)));
        let member = BtfVictim {
            header: header(KIND_GROUP_MEMBER, size_of::<BtfVictim>()),
            ..btf
        };
        assert_eq!(decode(as_bytes(&member)), Ok(Record::GroupMember(member)));

        let d = Decision {
            header: header(KIND_DECISION, size_of::<Decision>()),
            flags: DECISION_HAS_MEMCG | DECISION_HAS_CHOSEN,
            constraint: 3,
            order: -1,
            gfp_mask: 0xcc0,
            totalpages: 1 << 20,
            chosen_points: -5,
            chosen_pid: 9,
            chosen_tgid: 9,
            chosen_comm: [b'x'; COMM_LEN],
            chosen_adj: 985,
            _pad: 0,
            chosen_start_time_ns: 42_000_000_001,
            chosen_lineage: lineage(),
            domain: walk(),
            chosen_memcg: walk(),
            trigger_memcg: walk(),
        };
        assert_eq!(decode(as_bytes(&d)), Ok(Record::Decision(d)));

        let mut target_comm = [0u8; COMM_LEN];
        target_comm[..5].copy_from_slice(b"sleep");
        let sig = Signal {
            header: Header {
                trigger_comm: *b"earlyoom\0\0\0\0\0\0\0\0",
                ..header(KIND_SIGNAL, size_of::<Signal>())
            },
            sig: SIGKILL,
            errno: 0,
            code: 0,
            group: 1,
            result: 0,
            flags: SIGNAL_HAS_TASK | SIGNAL_HAS_ADJ,
            target_pid: 4242,
            target_tgid: 4242,
            target_comm,
            target_start_time_ns: 987_654_321,
            target_oom_score_adj: 985,
            _pad: 0,
            memcg: walk(),
        };
        assert_eq!(decode(as_bytes(&sig)), Ok(Record::Signal(sig)));
        // A record one byte short of its kind's struct is refused, not misread.
        assert_eq!(
            decode(&as_bytes(&sig)[..size_of::<Signal>() - 1]),
            Err(DecodeError::Short {
                len: size_of::<Signal>() - 1,
                need: size_of::<Signal>()
            })
        );
    }

    #[test]
    fn records_of_the_previous_abi_are_refused() {
        // A version-1 header (an old eBPF object loaded by a new agent).
        let mut old = header(KIND_BTF_VICTIM, 48 + 40 + size_of::<CgroupWalk>());
        old.version = 1;
        let mut bytes = [0u8; 48 + 40 + size_of::<CgroupWalk>()];
        bytes[..size_of::<Header>()].copy_from_slice(as_bytes(&old));
        assert_eq!(decode(&bytes), Err(DecodeError::Version(1)));
        // A version-2 record of the full version-3 length: refused by its
        // version, not misread with the new layout.
        let mut v2 = header(KIND_BTF_VICTIM, size_of::<BtfVictim>());
        v2.version = 2;
        let mut bytes = [0u8; size_of::<BtfVictim>()];
        bytes[..size_of::<Header>()].copy_from_slice(as_bytes(&v2));
        assert_eq!(decode(&bytes), Err(DecodeError::Version(2)));
    }

    #[test]
    fn short_foreign_and_unknown_records_are_rejected() {
        let tp = TpVictim {
            header: header(KIND_TP_VICTIM, size_of::<TpVictim>()),
            pid: 1,
            record_len: 0,
            flags: 0,
            _pad: 0,
            record: [0; TP_RECORD_MAX],
        };
        let bytes = as_bytes(&tp);
        assert_eq!(
            decode(&bytes[..100]),
            Err(DecodeError::Short {
                len: 100,
                need: size_of::<TpVictim>()
            })
        );
        assert!(matches!(
            decode(&bytes[..10]),
            Err(DecodeError::Short { .. })
        ));
        let mut v = bytes.to_vec();
        v[0] = 99;
        assert_eq!(decode(&v), Err(DecodeError::Version(99)));
        let mut k = bytes.to_vec();
        k[2] = 77;
        assert_eq!(decode(&k), Err(DecodeError::Kind(77)));
    }

    #[test]
    fn decoding_does_not_need_alignment() {
        let btf = BtfVictim {
            header: header(KIND_BTF_VICTIM, size_of::<BtfVictim>()),
            pid: 5,
            tgid: 5,
            comm: [0; COMM_LEN],
            oom_score_adj: 0,
            uid: 0,
            flags: 0,
            _pad: 0,
            start_time_ns: 1,
            lineage: Lineage::zeroed(),
            memcg: walk(),
        };
        let mut shifted = [0u8; size_of::<BtfVictim>() + 1];
        shifted[1..].copy_from_slice(as_bytes(&btf));
        assert_eq!(decode(&shifted[1..]), Ok(Record::BtfVictim(btf)));
    }
}
