//! Kernel side of oomtrace: hooks on the OOM killer.
//!
//! Every hook writes one record into the `EVENTS` ring buffer and counts what
//! it could not send in `STATS`. What would be gone by the time userspace looks
//! (the victim's memory cgroup and its ancestors with their usage and limits,
//! the victim's `oom_score_adj`) is captured here, from the victim task, never
//! from `current`.
//!
//! Rust eBPF has no CO-RE relocations: struct offsets are computed by the agent
//! from `/sys/kernel/btf/vmlinux` and passed in through the `OFFSETS` global;
//! the classic tracepoint's layout comes from its `format` file through
//! `TP_LAYOUT`. Every kernel read goes through `bpf_probe_read_kernel`, so a
//! wrong offset yields a failed read (counted), never an unsafe access.
#![no_std]
#![no_main]
#![allow(
    static_mut_refs,
    reason = "globals are read with read_volatile so the loader's values are seen"
)]

use core::{
    ffi::c_void,
    mem::{MaybeUninit, offset_of, size_of},
    ptr::{addr_of, addr_of_mut, read_volatile},
};

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated,
    },
    macros::{btf_tracepoint, fentry, kprobe, map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use aya_log_ebpf::{debug, warn};
use oomtrace_common::{
    ABI_VERSION, BtfVictim, COMM_LEN, CgroupWalk, DECISION_HAS_CHOSEN, DECISION_HAS_MEMCG,
    DEFAULT_RINGBUF_BYTES, Decision, Header, KIND_BTF_VICTIM, KIND_DECISION, KIND_GROUP_MEMBER,
    KIND_SIGNAL, KIND_TP_VICTIM, KernelOffsets, KillerNames, LINEAGE_MEMCG_COMPARED, LINEAGE_NS,
    LINEAGE_ONLY_CHILD, LINEAGE_PARENT, LINEAGE_PARENT_SAME_MEMCG, LOG_TARGET, Lineage, MAX_DEPTH,
    MAX_KILLERS, OOM_SIGKILL_FRESH_NS, OomSigkill, SIGKILL, SIGNAL_HAS_ADJ, SIGNAL_HAS_TASK,
    SIGTERM, STAT_COUNT, STAT_FILTERED_SIGNAL, STAT_FIRED_BTF_VICTIM, STAT_FIRED_DECISION,
    STAT_FIRED_GROUP_MEMBER, STAT_FIRED_TP_VICTIM, STAT_LISTED_SIGNAL, STAT_LOST_BTF_VICTIM,
    STAT_LOST_DECISION, STAT_LOST_GROUP_MEMBER, STAT_LOST_SIGNAL, STAT_LOST_TP_VICTIM,
    STAT_OOM_SIGKILL, STAT_OOM_SIGKILL_MATCHED, STAT_READ_ERRORS, STAT_READ_FAILED_RUNS,
    STAT_READ_WHAT, Signal, SignalLayout, TP_RECORD_MAX, TpVictim, TracepointLayout,
    VICTIM_HAS_ADJ, VICTIM_OOM_SIGKILL, WALK_ABSENT, WALK_READ_FAILED, WALK_TRUNCATED,
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// The last SIGKILL the kernel sent itself on this CPU (see [`OomSigkill`]).
#[map]
static OOM_SIGKILL: PerCpuArray<OomSigkill> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

#[unsafe(no_mangle)]
static TP_LAYOUT: TracepointLayout = TracepointLayout {
    pid_offset: 8,
    record_len: 0,
};

#[unsafe(no_mangle)]
static SIGNAL_LAYOUT: SignalLayout = SignalLayout::zeroed();

#[unsafe(no_mangle)]
static KILLERS: KillerNames = KillerNames::zeroed();

/// `si_code` of a signal the kernel sent itself (`SEND_SIG_PRIV`).
const SI_KERNEL: i32 = 0x80;

/// Hook names in log lines (the agent's names for them).
const HOOK_TP_VICTIM: &str = "tracepoint/oom/mark_victim";
const HOOK_BTF_VICTIM: &str = "tp_btf/mark_victim";
const HOOK_DECISION: &str = "oom_kill_process";
const HOOK_GROUP_MEMBER: &str = "oom_kill_memcg_member";
const HOOK_BTF_SIGNAL: &str = "tp_btf/signal_generate";
const HOOK_TP_SIGNAL: &str = "tracepoint/signal/signal_generate";

/// What a kernel read was for (named in the log line, see [`Reads`]).
const R_TASK_PID: u32 = 1;
const R_TASK_TGID: u32 = 2;
const R_TASK_COMM: u32 = 3;
const R_TASK_START_TIME: u32 = 4;
const R_TASK_SIGNAL: u32 = 5;
const R_OOM_SCORE_ADJ: u32 = 6;
const R_TASK_CGROUPS: u32 = 7;
const R_CSS_SET_SUBSYS: u32 = 8;
const R_MEMCG_USAGE: u32 = 9;
const R_MEMCG_MAX: u32 = 10;
const R_CSS_CGROUP: u32 = 11;
const R_CGROUP_KN: u32 = 12;
const R_KN_ID: u32 = 13;
const R_KN_NAME: u32 = 14;
const R_CSS_PARENT: u32 = 15;
const R_OOM_CONTROL: u32 = 16;
const R_SIGINFO: u32 = 17;
const R_TP_RECORD: u32 = 18;
const R_PROBE_ARG: u32 = 19;
const R_TASK_GROUP_LEADER: u32 = 20;
const R_TASK_REAL_PARENT: u32 = 21;
const R_TASK_THREAD_PID: u32 = 22;
const R_PID_LEVEL: u32 = 23;
const R_UPID: u32 = 24;
const R_TASK_CHILDREN: u32 = 25;

/// Width of a name in [`READ_NAMES`].
const READ_NAME_LEN: usize = 32;

/// What each `R_*` code reads (indexed by the code; 0 is unknown), padded
/// with spaces to one width. The log line takes its name from here rather
/// than from a `match` with a string per code: strings of different lengths
/// give the log line's writer a different size and offsets on each arm,
/// which the verifier follows one by one to the end (about 190,000
/// instructions for each program with the line, against 6,000 to 50,000
/// for the programs themselves); a name of one width is one path.
static READ_NAMES: [[u8; READ_NAME_LEN]; R_COUNT] = read_names();

/// One past the highest `R_*` code.
const R_COUNT: usize = R_TASK_CHILDREN as usize + 1;

const fn read_names() -> [[u8; READ_NAME_LEN]; R_COUNT] {
    let mut t = [pad("?"); R_COUNT];
    t[R_TASK_PID as usize] = pad("task_struct.pid");
    t[R_TASK_TGID as usize] = pad("task_struct.tgid");
    t[R_TASK_COMM as usize] = pad("task_struct.comm");
    t[R_TASK_START_TIME as usize] = pad("task_struct.start_time");
    t[R_TASK_SIGNAL as usize] = pad("task_struct.signal");
    t[R_OOM_SCORE_ADJ as usize] = pad("signal_struct.oom_score_adj");
    t[R_TASK_CGROUPS as usize] = pad("task_struct.cgroups");
    t[R_CSS_SET_SUBSYS as usize] = pad("css_set.subsys[memory]");
    t[R_MEMCG_USAGE as usize] = pad("mem_cgroup.memory.usage");
    t[R_MEMCG_MAX as usize] = pad("mem_cgroup.memory.max");
    t[R_CSS_CGROUP as usize] = pad("cgroup_subsys_state.cgroup");
    t[R_CGROUP_KN as usize] = pad("cgroup.kn");
    t[R_KN_ID as usize] = pad("kernfs_node.id");
    t[R_KN_NAME as usize] = pad("kernfs_node.name");
    t[R_CSS_PARENT as usize] = pad("cgroup_subsys_state.parent");
    t[R_OOM_CONTROL as usize] = pad("oom_control");
    t[R_SIGINFO as usize] = pad("kernel_siginfo");
    t[R_TP_RECORD as usize] = pad("the tracepoint record");
    t[R_PROBE_ARG as usize] = pad("the probed function's argument");
    t[R_TASK_GROUP_LEADER as usize] = pad("task_struct.group_leader");
    t[R_TASK_REAL_PARENT as usize] = pad("task_struct.real_parent");
    t[R_TASK_THREAD_PID as usize] = pad("task_struct.thread_pid");
    t[R_PID_LEVEL as usize] = pad("pid.level");
    t[R_UPID as usize] = pad("pid.numbers[level]");
    t[R_TASK_CHILDREN as usize] = pad("task_struct.children");
    t
}

/// `name` padded with spaces to [`READ_NAME_LEN`] bytes (a build error if longer).
const fn pad(name: &str) -> [u8; READ_NAME_LEN] {
    let bytes = name.as_bytes();
    assert!(bytes.len() <= READ_NAME_LEN, "a read name is too long");
    let mut out = [b' '; READ_NAME_LEN];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// The padded name of what the `R_*` code `what` reads.
#[inline(always)]
fn read_name(what: u32) -> &'static str {
    let i = what as usize;
    let name = if i < READ_NAMES.len() {
        &READ_NAMES[i]
    } else {
        &READ_NAMES[0]
    };
    // SAFETY: every name is ASCII (`pad` of string literals).
    unsafe { core::str::from_utf8_unchecked(name) }
}

/// The kernel reads of one hook run: how many failed, and what the first
/// failed read was for (an `R_*` code).
///
/// Both are kept in the per-CPU [`STAT_READ_WHAT`] slot (the count in the
/// high 32 bits, the code in the low ones), not in a variable carried along
/// the program: a count or a code the verifier could follow from each read
/// to the log line would make every read's outcome a separate state for it
/// to explore (over a million instructions for the cgroup walk), and the log
/// line's code is verified again for every state that reaches it. A value
/// loaded back from a map is just "some number" to the verifier, so the
/// paths meet again after each read.
struct Reads;

impl Reads {
    /// Starts a run's tally (clearing what a run that never reached
    /// [`Reads::finish`] may have left).
    #[inline(always)]
    fn new() -> Self {
        if let Some(slot) = STATS.get_ptr_mut(STAT_READ_WHAT) {
            // SAFETY: a per-CPU slot (see `add`).
            unsafe { *slot = 0 };
        }
        Self
    }

    #[inline(always)]
    fn fail(&mut self, what: u32) {
        if let Some(slot) = STATS.get_ptr_mut(STAT_READ_WHAT) {
            // SAFETY: a per-CPU slot (see `add`).
            unsafe {
                let v = *slot;
                *slot = if v == 0 {
                    (1 << 32) | u64::from(what)
                } else {
                    v + (1 << 32)
                };
            }
        }
    }

    /// Counts this run's failed reads and logs them, rate-limited (debug).
    #[inline(always)]
    fn finish(&self, hook: &'static str) {
        let Some(slot) = STATS.get_ptr_mut(STAT_READ_WHAT) else {
            return;
        };
        // SAFETY: a per-CPU slot (see `add`).
        let tally = unsafe { core::ptr::replace(slot, 0) };
        if tally == 0 {
            return;
        }
        let failed = tally >> 32;
        add(STAT_READ_ERRORS, failed);
        let runs = count(STAT_READ_FAILED_RUNS);
        if is_power_of_two(runs) {
            debug!(
                &(),
                target: LOG_TARGET,
                "{}: {} kernel reads failed; {} runs with failed reads on this cpu (logged at powers of two); the first failed read was of {}",
                hook,
                failed,
                runs,
                read_name(tally as u32)
            );
        }
    }
}

/// The struct offsets the loader wrote into [`OFFSETS`], read in place: a
/// copy on the stack would take 152 of the 512 bytes a program and the
/// subprograms it calls (aya-log's writer and its `memcpy`) share on kernels before
/// 6.8, which round each frame up to 32 bytes.
#[inline(always)]
fn offsets() -> &'static KernelOffsets {
    // SAFETY: a plain global in .rodata. Hiding the pointer's origin keeps the
    // compiler from folding in the zeroed initialiser the loader replaces;
    // the verifier still sees loads from the frozen .rodata map (constants).
    unsafe { &*core::hint::black_box(addr_of!(OFFSETS)) }
}

#[inline(always)]
fn is_power_of_two(n: u64) -> bool {
    n != 0 && n & (n - 1) == 0
}

/// Adds `n` to a per-CPU counter; returns the new value (0 if the slot is missing).
#[inline(always)]
fn add(stat: u32, n: u64) -> u64 {
    match STATS.get_ptr_mut(stat) {
        Some(slot) => {
            // SAFETY: a per-CPU slot; no other program runs on this CPU
            // concurrently with this increment (these tracing programs do
            // not nest on one CPU).
            unsafe {
                *slot += n;
                *slot
            }
        }
        None => 0,
    }
}

#[inline(always)]
fn count(stat: u32) -> u64 {
    add(stat, 1)
}

/// Counts a record the ring buffer had no room for and logs it, rate-limited (warn).
#[inline(always)]
fn lost(stat: u32, hook: &'static str) {
    let n = count(stat);
    if is_power_of_two(n) {
        warn!(
            &(),
            target: LOG_TARGET,
            "{}: the ring buffer is full: {} records lost on this cpu (logged at powers of two); raise --ringbuf-bytes",
            hook,
            n
        );
    }
}

/// Reads a `T` at `base + off` in kernel memory; a failure is noted in `reads`.
/// A NULL `base` or an offset this kernel lacks (`u32::MAX`) is no read at all.
#[inline(always)]
unsafe fn read<T>(reads: &mut Reads, what: u32, base: *const u8, off: u32) -> Option<T> {
    if base.is_null() || off == u32::MAX {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one fails.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize).cast::<T>()) } {
        Ok(v) => Some(v),
        Err(_) => {
            reads.fail(what);
            None
        }
    }
}

/// Reads `base->comm` (at `off`) straight into `dst`, a field of a reserved
/// record: the kernel zeroes `dst` itself when the read fails, and a NULL
/// `base` gets zeros too (see [`zero_words`] for why not `[0; 16]`).
#[inline(always)]
unsafe fn read_comm(
    reads: &mut Reads,
    what: u32,
    dst: *mut [u8; COMM_LEN],
    base: *const u8,
    off: u32,
) {
    if base.is_null() || off == u32::MAX {
        // SAFETY: `dst` is a 16-byte, 4-aligned field of a reserved record.
        unsafe { zero_words::<{ COMM_LEN / 4 }>(dst.cast()) };
        return;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one fails
    // and zero-fills the 16 bytes of `dst`.
    let rc = unsafe {
        generated::bpf_probe_read_kernel(
            dst.cast::<c_void>(),
            COMM_LEN as u32,
            base.wrapping_add(off as usize).cast::<c_void>(),
        )
    };
    if rc != 0 {
        reads.fail(what);
    }
}

// The fields written by `read_comm` and `zero_words` are 4-aligned in
// their records (which the ring buffer places at 8-aligned addresses).
const _: () = assert!(
    offset_of!(Header, trigger_comm) % 4 == 0
        && offset_of!(Decision, chosen_comm) % 4 == 0
        && offset_of!(Decision, chosen_lineage) % 4 == 0
        && offset_of!(BtfVictim, comm) % 4 == 0
        && offset_of!(BtfVictim, lineage) % 4 == 0
        && offset_of!(Signal, target_comm) % 4 == 0
        && offset_of!(Lineage, parent_comm) % 4 == 0
        && size_of::<Lineage>() % 4 == 0
);

/// Zeroes `N` 32-bit words at `p`, one store each. An assignment of a
/// zeroed array or struct (`[0; 16]`, `Lineage::zeroed()`) compiles to a
/// call of a byte-wise `memset` subprogram, and on kernels before 6.4 every
/// call into a subprogram makes the verifier's precision tracking give up
/// (all scalars become precise, so fewer paths merge): the programs that
/// walk cgroups verified several times longer. Volatile stores keep LLVM
/// from merging them back into a `memset`.
///
/// # Safety
/// `p` is 4-aligned and `4 * N` bytes of it are writable.
#[inline(always)]
unsafe fn zero_words<const N: usize>(p: *mut u8) {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's promise.
        unsafe { core::ptr::write_volatile(p.cast::<u32>().add(i), 0) };
        i += 1;
    }
}

#[inline(always)]
fn fill_header(h: &mut Header, kind: u16, len: usize) {
    let pid_tgid = bpf_get_current_pid_tgid();
    h.version = ABI_VERSION;
    h.kind = kind;
    h.len = len as u32;
    // SAFETY: plain helpers without arguments.
    h.ktime_ns = unsafe { bpf_ktime_get_ns() };
    h.cpu = unsafe { bpf_get_smp_processor_id() };
    h.trigger_tid = pid_tgid as u32;
    h.trigger_tgid = (pid_tgid >> 32) as u32;
    // Zeroed first: from 5.18 to 6.3 the helper copies with strscpy, which
    // leaves the bytes after the NUL as they were (stale ring-buffer data).
    // SAFETY: `trigger_comm` is a 16-byte, 4-aligned field; the helper
    // writes at most its 16 bytes.
    unsafe {
        zero_words::<{ COMM_LEN / 4 }>(addr_of_mut!(h.trigger_comm).cast());
        generated::bpf_get_current_comm(
            addr_of_mut!(h.trigger_comm).cast::<c_void>(),
            COMM_LEN as u32,
        )
    };
    h._pad = 0;
}

/// The memory cgroup css of `task`: `task->cgroups->subsys[memory_cgrp_id]`.
#[inline(always)]
unsafe fn task_memcg_css(reads: &mut Reads, o: &KernelOffsets, task: *const u8) -> *const u8 {
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let cset: *const u8 =
            read(reads, R_TASK_CGROUPS, task, o.task_cgroups).unwrap_or(core::ptr::null());
        read(reads, R_CSS_SET_SUBSYS, cset, o.css_set_memory_subsys).unwrap_or(core::ptr::null())
    }
}

/// Walks from the memory cgroup whose css is `css` up to the root, leaf first.
#[inline(always)]
unsafe fn walk(reads: &mut Reads, o: &KernelOffsets, css: *const u8, out: *mut CgroupWalk) {
    // SAFETY: `out` points into a reserved ring-buffer record; kernel reads go
    // through bpf_probe_read_kernel.
    unsafe {
        (*out).depth = 0;
        (*out).flags = 0;
        if css.is_null() || o.valid == 0 {
            (*out).flags = WALK_ABSENT;
            return;
        }
        let mut css = css;
        let mut i = 0usize;
        while i < MAX_DEPTH {
            let level = addr_of_mut!((*out).levels[i]);
            let memcg = css.wrapping_sub(o.memcg_css as usize);
            (*level).usage_pages =
                read::<u64>(reads, R_MEMCG_USAGE, memcg, o.memcg_usage).unwrap_or(0);
            (*level).max_pages =
                read::<u64>(reads, R_MEMCG_MAX, memcg, o.memcg_max).unwrap_or(u64::MAX);
            let cgroup: *const u8 =
                read(reads, R_CSS_CGROUP, css, o.css_cgroup).unwrap_or(core::ptr::null());
            let kn: *const u8 =
                read(reads, R_CGROUP_KN, cgroup, o.cgroup_kn).unwrap_or(core::ptr::null());
            (*level).id = read::<u64>(reads, R_KN_ID, kn, o.kn_id).unwrap_or(0);
            let name: *const u8 =
                read(reads, R_KN_NAME, kn, o.kn_name).unwrap_or(core::ptr::null());
            (*level).name[0] = 0;
            if name.is_null() {
                (*out).flags |= WALK_READ_FAILED;
            } else if bpf_probe_read_kernel_str_bytes(name, &mut (*level).name).is_err() {
                (*out).flags |= WALK_READ_FAILED;
                reads.fail(R_KN_NAME);
            }
            i += 1;
            (*out).depth = i as u32;
            css = read(reads, R_CSS_PARENT, css, o.css_parent).unwrap_or(core::ptr::null());
            if css.is_null() {
                return;
            }
        }
        (*out).flags |= WALK_TRUNCATED;
    }
}

/// The process id of `leader` (a thread group leader) at PID namespace
/// `level`, and that namespace: `leader->thread_pid->numbers[level]`.
/// `None` when its pid struct is shallower than `level` (the task lives in
/// an ancestor namespace) or cannot be read.
#[inline(always)]
unsafe fn pid_at_level(
    reads: &mut Reads,
    o: &KernelOffsets,
    leader: *const u8,
    level: u32,
) -> Option<(u32, u64)> {
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let pid: *const u8 = read(reads, R_TASK_THREAD_PID, leader, o.task_thread_pid)?;
        let own = read::<u32>(reads, R_PID_LEVEL, pid, o.pid_level)?;
        if own < level || o.pid_numbers == u32::MAX || o.upid_size == u32::MAX {
            return None;
        }
        let upid = o.pid_numbers.wrapping_add(level.wrapping_mul(o.upid_size));
        let nr = read::<i32>(reads, R_UPID, pid, upid.wrapping_add(o.upid_nr))?;
        let ns = read::<u64>(reads, R_UPID, pid, upid.wrapping_add(o.upid_ns))?;
        Some((nr as u32, ns))
    }
}

/// Fills `out` with where `task` stands in its PID namespace and process
/// tree ([`Lineage`]); `css` is its memory cgroup css (to compare with the
/// parent's). What cannot be read is left out (its `LINEAGE_*` bit clear).
#[inline(always)]
unsafe fn lineage(
    reads: &mut Reads,
    o: &KernelOffsets,
    task: *const u8,
    css: *const u8,
    out: *mut Lineage,
) {
    // SAFETY: `out` points into a reserved ring-buffer record; kernel reads
    // go through bpf_probe_read_kernel.
    unsafe {
        zero_words::<{ size_of::<Lineage>() / 4 }>(out.cast());
        let Some(leader) = read::<*const u8>(reads, R_TASK_GROUP_LEADER, task, o.task_group_leader)
        else {
            return;
        };
        let Some(pid) = read::<*const u8>(reads, R_TASK_THREAD_PID, leader, o.task_thread_pid)
        else {
            return;
        };
        let Some(level) = read::<u32>(reads, R_PID_LEVEL, pid, o.pid_level) else {
            return;
        };
        // MAX_PID_NS_LEVEL is 32.
        if level > 32 {
            return;
        }
        let Some((ns_pid, ns)) = pid_at_level(reads, o, leader, level) else {
            return;
        };
        (*out).ns_level = level;
        (*out).ns_pid = ns_pid;
        (*out).flags = LINEAGE_NS;
        let Some(parent) = read::<*const u8>(reads, R_TASK_REAL_PARENT, leader, o.task_real_parent)
        else {
            return;
        };
        let Some(pleader) =
            read::<*const u8>(reads, R_TASK_GROUP_LEADER, parent, o.task_group_leader)
        else {
            return;
        };
        read_comm(
            reads,
            R_TASK_COMM,
            addr_of_mut!((*out).parent_comm),
            parent,
            o.task_comm,
        );
        (*out).ppid = read::<i32>(reads, R_TASK_TGID, pleader, o.task_tgid).unwrap_or(0) as u32;
        // The parent is in the same namespace when its pid reaches this
        // level in the same namespace; else it is outside (an ancestor's).
        (*out).ns_ppid = match pid_at_level(reads, o, pleader, level) {
            Some((nr, pns)) if pns == ns => nr,
            _ => 0,
        };
        (*out).flags |= LINEAGE_PARENT;
        // The only child: the parent's `children` list holds exactly this
        // process's `sibling` entry (list_is_singular).
        if let Some(head) = read::<[u64; 2]>(reads, R_TASK_CHILDREN, parent, o.task_children) {
            let mine = leader.wrapping_add(o.task_sibling as usize) as u64;
            if o.task_sibling != u32::MAX && head[0] == mine && head[1] == mine {
                (*out).flags |= LINEAGE_ONLY_CHILD;
            }
        }
        let parent_css = task_memcg_css(reads, o, parent);
        if !css.is_null() && !parent_css.is_null() {
            (*out).flags |= LINEAGE_MEMCG_COMPARED;
            if parent_css == css {
                (*out).flags |= LINEAGE_PARENT_SAME_MEMCG;
            }
        }
    }
}

/// Whether the kernel sent `tid` a SIGKILL of its own on this CPU, from
/// this thread, within [`OOM_SIGKILL_FRESH_NS`] of `now`: the OOM killer's
/// kill (`__oom_kill_process`: `do_send_sig_info(SIGKILL, SEND_SIG_PRIV,
/// victim, PIDTYPE_TGID)`, then `mark_oom_victim(victim)`).
#[inline(always)]
fn killed_by_oom_sigkill(tid: u32, now: u64) -> bool {
    let Some(slot) = OOM_SIGKILL.get(0) else {
        return false;
    };
    let sender = bpf_get_current_pid_tgid() as u32;
    let fresh = now.wrapping_sub(slot.ktime_ns) < OOM_SIGKILL_FRESH_NS && now >= slot.ktime_ns;
    if slot.target_tid == tid && slot.sender_tid == sender && fresh {
        count(STAT_OOM_SIGKILL_MATCHED);
        return true;
    }
    false
}

/// Parks a kernel-sent SIGKILL to `tid` in this CPU's [`OOM_SIGKILL`] slot.
#[inline(always)]
fn note_kernel_sigkill(tid: u32) {
    count(STAT_OOM_SIGKILL);
    if let Some(slot) = OOM_SIGKILL.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; these programs do not nest on one CPU.
        unsafe {
            (*slot).ktime_ns = bpf_ktime_get_ns();
            (*slot).target_tid = tid;
            (*slot).sender_tid = bpf_get_current_pid_tgid() as u32;
        }
    }
}

/// `tracepoint/oom/mark_victim`: one event per victim, on every kernel since ~4.13.
///
/// Old ABI: `TP_PROTO(int pid)`; new ABI (6.9, commit 72ba14deb40a, and
/// backports): `TP_PROTO(struct task_struct *task, uid_t uid)` with rss fields.
/// The record is copied whole and decoded in userspace with the offsets of
/// `/sys/kernel/tracing/events/oom/mark_victim/format`.
/// <https://github.com/torvalds/linux/blob/v6.9/include/trace/events/oom.h#L75>
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn tp_mark_victim(ctx: TracePointContext) -> u32 {
    match try_tp_mark_victim(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_tp_mark_victim(ctx: &TracePointContext) -> Result<u32, u32> {
    count(STAT_FIRED_TP_VICTIM);
    // SAFETY: a plain global, see `offsets`.
    let layout = unsafe { read_volatile(&TP_LAYOUT) };
    let Some(mut entry) = EVENTS.reserve::<TpVictim>(0) else {
        lost(STAT_LOST_TP_VICTIM, HOOK_TP_VICTIM);
        return Err(1);
    };
    let mut reads = Reads::new();
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved, exclusively owned record of the right size.
    unsafe {
        fill_header(&mut (*ev).header, KIND_TP_VICTIM, size_of::<TpVictim>());
        (*ev).pid = match ctx.read_at::<i32>(layout.pid_offset as usize) {
            Ok(pid) => pid as u32,
            Err(_) => {
                reads.fail(R_TP_RECORD);
                0
            }
        };
        (*ev).flags = 0;
        (*ev)._pad = 0;
        if (*ev).pid != 0 && killed_by_oom_sigkill((*ev).pid, (*ev).header.ktime_ns) {
            (*ev).flags = VICTIM_OOM_SIGKILL;
        }
        let mut len = layout.record_len as usize;
        if len > TP_RECORD_MAX {
            len = TP_RECORD_MAX;
        }
        (*ev).record_len = 0;
        if len > 0 {
            let rc = generated::bpf_probe_read_kernel(
                addr_of_mut!((*ev).record).cast::<c_void>(),
                len as u32,
                ctx.as_ptr().cast_const(),
            );
            if rc == 0 {
                (*ev).record_len = len as u32;
            } else {
                reads.fail(R_TP_RECORD);
            }
        }
    }
    entry.submit(0);
    reads.finish(HOOK_TP_VICTIM);
    Ok(0)
}

/// `tp_btf/mark_victim`: the victim `task_struct` itself (new ABI only:
/// `TP_PROTO(struct task_struct *task, uid_t uid)`; the agent checks the
/// prototype in BTF before attaching).
/// <https://github.com/torvalds/linux/blob/v6.9/include/trace/events/oom.h#L75>
#[btf_tracepoint(function = "mark_victim")]
pub fn btf_mark_victim(ctx: BtfTracePointContext) -> i32 {
    match try_btf_mark_victim(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_btf_mark_victim(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    count(STAT_FIRED_BTF_VICTIM);
    let task: *const u8 = ctx.arg(0);
    let uid: u32 = ctx.arg(1);
    if victim(task, uid, KIND_BTF_VICTIM, HOOK_BTF_VICTIM) {
        Ok(0)
    } else {
        lost(STAT_LOST_BTF_VICTIM, HOOK_BTF_VICTIM);
        Err(0)
    }
}

/// Sends a [`BtfVictim`] record of `kind` for `task`; false when the ring
/// buffer is full.
#[inline(always)]
fn victim(task: *const u8, uid: u32, kind: u16, hook: &'static str) -> bool {
    let o = offsets();
    let Some(mut entry) = EVENTS.reserve::<BtfVictim>(0) else {
        return false;
    };
    let mut reads = Reads::new();
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved record; kernel reads are probe reads.
    unsafe {
        fill_header(&mut (*ev).header, kind, size_of::<BtfVictim>());
        (*ev).pid = read::<i32>(&mut reads, R_TASK_PID, task, o.task_pid).unwrap_or(0) as u32;
        (*ev).tgid = read::<i32>(&mut reads, R_TASK_TGID, task, o.task_tgid).unwrap_or(0) as u32;
        read_comm(
            &mut reads,
            R_TASK_COMM,
            addr_of_mut!((*ev).comm),
            task,
            o.task_comm,
        );
        (*ev).start_time_ns =
            read::<u64>(&mut reads, R_TASK_START_TIME, task, o.task_start_time).unwrap_or(0);
        (*ev).uid = uid;
        (*ev).flags = 0;
        (*ev)._pad = 0;
        (*ev).oom_score_adj = 0;
        if let Some(adj) = oom_score_adj(&mut reads, o, task) {
            (*ev).oom_score_adj = adj;
            (*ev).flags |= VICTIM_HAS_ADJ;
        }
        // A group member is scanned before it is killed: no SIGKILL yet.
        if kind == KIND_BTF_VICTIM
            && (*ev).pid != 0
            && killed_by_oom_sigkill((*ev).pid, (*ev).header.ktime_ns)
        {
            (*ev).flags |= VICTIM_OOM_SIGKILL;
        }
        let css = task_memcg_css(&mut reads, o, task);
        lineage(&mut reads, o, task, css, addr_of_mut!((*ev).lineage));
        walk(&mut reads, o, css, addr_of_mut!((*ev).memcg));
    }
    entry.submit(0);
    reads.finish(hook);
    true
}

/// `task->signal->oom_score_adj`.
#[inline(always)]
unsafe fn oom_score_adj(reads: &mut Reads, o: &KernelOffsets, task: *const u8) -> Option<i32> {
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let signal: *const u8 =
            read(reads, R_TASK_SIGNAL, task, o.task_signal).unwrap_or(core::ptr::null());
        read::<i16>(reads, R_OOM_SCORE_ADJ, signal, o.signal_oom_score_adj).map(i32::from)
    }
}

/// A task of a memory.oom.group kill, seen before it is killed: its memory
/// cgroup, for kernels whose `mark_victim` passes only the pid (before 6.9),
/// where nothing else names a group member's cgroup once it is gone.
///
/// `static int oom_kill_memcg_member(struct task_struct *task, void *message)`
/// is called through a function pointer by `mem_cgroup_scan_tasks` (in
/// another file), so builds without LTO keep it as a function with a BTF FUNC
/// and a kallsyms entry (checked by the agent before attaching; Debian 5.10,
/// 6.1 and 6.12 have both).
/// <https://github.com/torvalds/linux/blob/v5.10/mm/oom_kill.c>
#[inline(always)]
fn group_member(task: *const u8) -> u32 {
    count(STAT_FIRED_GROUP_MEMBER);
    if !victim(task, u32::MAX, KIND_GROUP_MEMBER, HOOK_GROUP_MEMBER) {
        lost(STAT_LOST_GROUP_MEMBER, HOOK_GROUP_MEMBER);
        return 1;
    }
    0
}

#[fentry(function = "oom_kill_memcg_member")]
pub fn fentry_oom_kill_memcg_member(ctx: FEntryContext) -> u32 {
    let task: *const u8 = ctx.arg(0);
    group_member(task)
}

#[kprobe]
pub fn kprobe_oom_kill_memcg_member(ctx: ProbeContext) -> u32 {
    let Some(task) = ctx.arg::<*const u8>(0) else {
        let mut reads = Reads::new();
        reads.fail(R_PROBE_ARG);
        reads.finish(HOOK_GROUP_MEMBER);
        return 1;
    };
    group_member(task)
}

/// Fills a [`Decision`] from `struct oom_control *oc`.
#[inline(always)]
fn decision(oc: *const u8) -> u32 {
    count(STAT_FIRED_DECISION);
    let o = offsets();
    let Some(mut entry) = EVENTS.reserve::<Decision>(0) else {
        lost(STAT_LOST_DECISION, HOOK_DECISION);
        return 1;
    };
    let mut reads = Reads::new();
    let r = &mut reads;
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved record; kernel reads are probe reads.
    unsafe {
        fill_header(&mut (*ev).header, KIND_DECISION, size_of::<Decision>());
        (*ev).flags = 0;
        (*ev)._pad = 0;
        (*ev).constraint = read::<u32>(r, R_OOM_CONTROL, oc, o.oc_constraint).unwrap_or(u32::MAX);
        (*ev).order = read::<i32>(r, R_OOM_CONTROL, oc, o.oc_order).unwrap_or(0);
        (*ev).gfp_mask = read::<u32>(r, R_OOM_CONTROL, oc, o.oc_gfp_mask).unwrap_or(0);
        (*ev).totalpages = read::<u64>(r, R_OOM_CONTROL, oc, o.oc_totalpages).unwrap_or(0);
        (*ev).chosen_points = read::<i64>(r, R_OOM_CONTROL, oc, o.oc_chosen_points).unwrap_or(0);
        let memcg: *const u8 = read(r, R_OOM_CONTROL, oc, o.oc_memcg).unwrap_or(core::ptr::null());
        if memcg.is_null() {
            walk(r, o, core::ptr::null(), addr_of_mut!((*ev).domain));
        } else {
            (*ev).flags |= DECISION_HAS_MEMCG;
            walk(
                r,
                o,
                memcg.wrapping_add(o.memcg_css as usize),
                addr_of_mut!((*ev).domain),
            );
        }
        let chosen: *const u8 =
            read(r, R_OOM_CONTROL, oc, o.oc_chosen).unwrap_or(core::ptr::null());
        // select_bad_process() sets chosen to (void *)-1 when it aborts.
        let chosen_ok = !chosen.is_null() && chosen as usize != usize::MAX;
        (*ev).chosen_pid = 0;
        (*ev).chosen_tgid = 0;
        zero_words::<{ COMM_LEN / 4 }>(addr_of_mut!((*ev).chosen_comm).cast());
        (*ev).chosen_adj = 0;
        (*ev).chosen_start_time_ns = 0;
        zero_words::<{ size_of::<Lineage>() / 4 }>(addr_of_mut!((*ev).chosen_lineage).cast());
        if chosen_ok {
            (*ev).flags |= DECISION_HAS_CHOSEN;
            (*ev).chosen_pid = read::<i32>(r, R_TASK_PID, chosen, o.task_pid).unwrap_or(0) as u32;
            (*ev).chosen_tgid =
                read::<i32>(r, R_TASK_TGID, chosen, o.task_tgid).unwrap_or(0) as u32;
            read_comm(
                r,
                R_TASK_COMM,
                addr_of_mut!((*ev).chosen_comm),
                chosen,
                o.task_comm,
            );
            (*ev).chosen_start_time_ns =
                read::<u64>(r, R_TASK_START_TIME, chosen, o.task_start_time).unwrap_or(0);
            (*ev).chosen_adj = oom_score_adj(r, o, chosen).unwrap_or(0);
            let css = task_memcg_css(r, o, chosen);
            lineage(r, o, chosen, css, addr_of_mut!((*ev).chosen_lineage));
            walk(r, o, css, addr_of_mut!((*ev).chosen_memcg));
        } else {
            walk(r, o, core::ptr::null(), addr_of_mut!((*ev).chosen_memcg));
        }
        let current = generated::bpf_get_current_task() as *const u8;
        let css = task_memcg_css(r, o, current);
        walk(r, o, css, addr_of_mut!((*ev).trigger_memcg));
    }
    entry.submit(0);
    reads.finish(HOOK_DECISION);
    0
}

/// `fentry/oom_kill_process`: the kernel's decision, where fentry is allowed.
///
/// `static void oom_kill_process(struct oom_control *oc, const char *message)`
/// <https://github.com/torvalds/linux/blob/v6.6/mm/oom_kill.c#L1011>
#[fentry(function = "oom_kill_process")]
pub fn fentry_oom_kill_process(ctx: FEntryContext) -> u32 {
    let oc: *const u8 = ctx.arg(0);
    decision(oc)
}

/// `kprobe/oom_kill_process`: the same decision on kernels with kprobes but no fentry.
/// <https://github.com/torvalds/linux/blob/v5.10/mm/oom_kill.c#L942>
#[kprobe]
pub fn kprobe_oom_kill_process(ctx: ProbeContext) -> u32 {
    let Some(oc) = ctx.arg::<*const u8>(0) else {
        let mut reads = Reads::new();
        reads.fail(R_PROBE_ARG);
        reads.finish(HOOK_DECISION);
        return 1;
    };
    decision(oc)
}

/// Whether the sender (`current`) is named in [`KILLERS`]: an exact match of
/// the kernel's 16-byte `comm`, NUL-padded (the buffer is zeroed before
/// `bpf_get_current_comm`, which from 5.18 to 6.3 does not pad it), and the
/// agent pads the names the same way.
#[inline(always)]
fn sender_listed() -> bool {
    // Zeroed by word stores, not `[0u64; 2]`: that is a call of `memset` on
    // every SIGKILL/SIGTERM of the node (see `zero_words`).
    let mut comm = MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: `comm` is 16 bytes on the stack, 8-aligned; the helper writes
    // at most 16 bytes after the NUL-padding zeros.
    let rc = unsafe {
        zero_words::<4>(comm.as_mut_ptr().cast());
        generated::bpf_get_current_comm(comm.as_mut_ptr().cast::<c_void>(), 16)
    };
    if rc != 0 {
        return false;
    }
    // SAFETY: zeroed, then written by the helper.
    let comm = unsafe { comm.assume_init() };
    // SAFETY: plain globals in .rodata (see `offsets`); `KillerNames` is
    // 8-aligned, so each 16-byte name is two aligned u64 loads.
    let count = unsafe { read_volatile(addr_of!(KILLERS.count)) } as usize;
    let mut i = 0;
    while i < MAX_KILLERS {
        if i >= count {
            return false;
        }
        // SAFETY: as above; `i` is below MAX_KILLERS.
        let name = unsafe { read_volatile(addr_of!(KILLERS.names[i]).cast::<[u64; 2]>()) };
        if name[0] == comm[0] && name[1] == comm[1] {
            return true;
        }
        i += 1;
    }
    false
}

/// Reserves a [`Signal`] record for a SIGKILL/SIGTERM from a listed sender,
/// counting (and logging) a full ring buffer.
#[inline(always)]
fn reserve_signal(hook: &'static str) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<Signal>> {
    let entry = EVENTS.reserve::<Signal>(0);
    if entry.is_none() {
        lost(STAT_LOST_SIGNAL, hook);
    }
    entry
}

/// `tp_btf/signal_generate`: every signal the kernel generates, in the
/// sender's context. Only SIGKILL and SIGTERM from a sender named in
/// [`KILLERS`] (systemd-oomd, earlyoom, ...) make a record, with the target
/// task's identity, start time, `oom_score_adj` and memory cgroup walk.
///
/// `TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)`
/// (the same on 5.10 and 6.x; the agent checks it in BTF before attaching).
/// <https://github.com/torvalds/linux/blob/v6.6/include/trace/events/signal.h#L50>
///
/// This runs for every signal on the node (SIGCHLD included): the signal
/// number is tested first, on the context alone, before any helper call.
#[btf_tracepoint(function = "signal_generate")]
pub fn btf_signal_generate(ctx: BtfTracePointContext) -> i32 {
    let sig: i32 = ctx.arg(0);
    if sig != SIGKILL && sig != SIGTERM {
        return 0;
    }
    let info: usize = ctx.arg(1);
    let task: *const u8 = ctx.arg(2);
    // The OOM killer's own SIGKILL (SEND_SIG_PRIV is the pointer value 1),
    // whoever `current` is: parked for the mark_victim programs.
    if sig == SIGKILL && info == 1 {
        // SAFETY: a probe read.
        let tid = unsafe {
            bpf_probe_read_kernel(task.wrapping_add(offsets().task_pid as usize).cast::<i32>())
                .unwrap_or(0)
        };
        note_kernel_sigkill(tid as u32);
    }
    if !sender_listed() {
        count(STAT_FILTERED_SIGNAL);
        return 0;
    }
    count(STAT_LISTED_SIGNAL);
    let Some(mut entry) = reserve_signal(HOOK_BTF_SIGNAL) else {
        return 1;
    };
    let group: i32 = ctx.arg(3);
    let result: i32 = ctx.arg(4);
    let o = offsets();
    let mut reads = Reads::new();
    let r = &mut reads;
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved record; kernel reads are probe reads.
    unsafe {
        fill_header(&mut (*ev).header, KIND_SIGNAL, size_of::<Signal>());
        (*ev).sig = sig;
        (*ev).group = group;
        (*ev).result = result;
        // As the classic tracepoint records it (TP_STORE_SIGINFO):
        // SEND_SIG_NOINFO (0) is SI_USER, SEND_SIG_PRIV (1) is SI_KERNEL.
        (*ev).errno = 0;
        (*ev).code = match info {
            0 => 0,
            1 => 0x80,
            _ => {
                let info = info as *const u8;
                (*ev).errno = read::<i32>(r, R_SIGINFO, info, o.siginfo_errno).unwrap_or(0);
                read::<i32>(r, R_SIGINFO, info, o.siginfo_code).unwrap_or(0)
            }
        };
        (*ev).flags = SIGNAL_HAS_TASK;
        (*ev)._pad = 0;
        (*ev).target_pid = read::<i32>(r, R_TASK_PID, task, o.task_pid).unwrap_or(0) as u32;
        (*ev).target_tgid = read::<i32>(r, R_TASK_TGID, task, o.task_tgid).unwrap_or(0) as u32;
        read_comm(
            r,
            R_TASK_COMM,
            addr_of_mut!((*ev).target_comm),
            task,
            o.task_comm,
        );
        (*ev).target_start_time_ns =
            read::<u64>(r, R_TASK_START_TIME, task, o.task_start_time).unwrap_or(0);
        (*ev).target_oom_score_adj = 0;
        if let Some(adj) = oom_score_adj(r, o, task) {
            (*ev).target_oom_score_adj = adj;
            (*ev).flags |= SIGNAL_HAS_ADJ;
        }
        let css = task_memcg_css(r, o, task);
        walk(r, o, css, addr_of_mut!((*ev).memcg));
        debug!(
            &(),
            target: LOG_TARGET,
            "{}: signal {} from a listed sender (tgid {}) to pid {}",
            HOOK_BTF_SIGNAL,
            sig,
            (*ev).header.trigger_tgid,
            (*ev).target_pid
        );
    }
    entry.submit(0);
    reads.finish(HOOK_BTF_SIGNAL);
    0
}

/// The record's first field (`sig`), read directly from the context (no
/// helper) when it sits right after the 8-byte common header, as on every
/// mainline kernel: the verifier takes only constant offsets for direct
/// context reads, and the value of the read-only `SIGNAL_LAYOUT` global is a
/// constant to it, so the fallback is dropped at load time. A kernel with a
/// longer common header (out-of-tree PREEMPT_RT trees) gets a probe read.
/// (One constant arm only: with several, LLVM merges the loads into one at a
/// computed offset, which the verifier refuses.)
#[inline(always)]
fn tp_sig(ctx: &TracePointContext, offset: u32) -> Option<i32> {
    if offset == 8 {
        // SAFETY: a direct 4-byte read of the tracepoint record at offset 8,
        // which the verifier checks against the record.
        Some(unsafe { read_volatile((ctx.as_ptr() as *const u8).add(8).cast::<i32>()) })
    } else {
        // SAFETY: a probe read.
        unsafe { ctx.read_at::<i32>(offset as usize) }.ok()
    }
}

/// `tracepoint/signal/signal_generate`: the same filter where `tp_btf` is not
/// available. The record has no task pointer: the target's pid and comm only
/// (offsets from `events/signal/signal_generate/format`, see [`SignalLayout`]).
///
/// Fields: `int sig; int errno; int code; char comm[16]; pid_t pid; int group; int result;`
/// <https://github.com/torvalds/linux/blob/v5.10/include/trace/events/signal.h#L50>
#[tracepoint(category = "signal", name = "signal_generate")]
pub fn tp_signal_generate(ctx: TracePointContext) -> u32 {
    // SAFETY: a plain global, see `offsets`.
    let sig_offset = unsafe { read_volatile(addr_of!(SIGNAL_LAYOUT.sig)) };
    let Some(sig) = tp_sig(&ctx, sig_offset) else {
        return 0;
    };
    if sig != SIGKILL && sig != SIGTERM {
        return 0;
    }
    // SAFETY: as above.
    let layout = unsafe { read_volatile(&SIGNAL_LAYOUT) };
    if layout.valid == 0 {
        return 0;
    }
    // The OOM killer's own SIGKILL: SEND_SIG_PRIV is recorded as SI_KERNEL.
    if sig == SIGKILL
        // SAFETY: probe reads of the record at the format file's offsets.
        && unsafe { ctx.read_at::<i32>(layout.code as usize) } == Ok(SI_KERNEL)
        && let Ok(tid) = unsafe { ctx.read_at::<i32>(layout.pid as usize) }
    {
        note_kernel_sigkill(tid as u32);
    }
    if !sender_listed() {
        count(STAT_FILTERED_SIGNAL);
        return 0;
    }
    count(STAT_LISTED_SIGNAL);
    let Some(mut entry) = reserve_signal(HOOK_TP_SIGNAL) else {
        return 1;
    };
    let mut reads = Reads::new();
    let r = &mut reads;
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved record; the record is read with probe reads
    // at the format file's offsets.
    unsafe {
        fill_header(&mut (*ev).header, KIND_SIGNAL, size_of::<Signal>());
        (*ev).sig = sig;
        {
            let mut field = |off: u32| match ctx.read_at::<i32>(off as usize) {
                Ok(v) => v,
                Err(_) => {
                    r.fail(R_TP_RECORD);
                    0
                }
            };
            (*ev).errno = field(layout.errno);
            (*ev).code = field(layout.code);
            (*ev).target_pid = field(layout.pid) as u32;
            (*ev).group = field(layout.group);
            (*ev).result = field(layout.result);
        }
        read_comm(
            r,
            R_TP_RECORD,
            addr_of_mut!((*ev).target_comm),
            ctx.as_ptr().cast_const().cast::<u8>(),
            layout.comm,
        );
        (*ev).flags = 0;
        (*ev)._pad = 0;
        (*ev).target_tgid = 0;
        (*ev).target_start_time_ns = 0;
        (*ev).target_oom_score_adj = 0;
        (*ev).memcg.depth = 0;
        (*ev).memcg.flags = WALK_ABSENT;
        debug!(
            &(),
            target: LOG_TARGET,
            "{}: signal {} from a listed sender (tgid {}) to pid {}",
            HOOK_TP_SIGNAL,
            sig,
            (*ev).header.trigger_tgid,
            (*ev).target_pid
        );
    }
    entry.submit(0);
    reads.finish(HOOK_TP_SIGNAL);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
