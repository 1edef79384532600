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
    mem::size_of,
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated,
    },
    macros::{btf_tracepoint, fentry, kprobe, map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use oomtrace_common::{
    ABI_VERSION, BtfVictim, CgroupWalk, DECISION_HAS_CHOSEN, DECISION_HAS_MEMCG,
    DEFAULT_RINGBUF_BYTES, Decision, Header, KIND_BTF_VICTIM, KIND_DECISION, KIND_GROUP_MEMBER,
    KIND_TP_VICTIM, KernelOffsets, MAX_DEPTH, STAT_COUNT, STAT_FIRED_BTF_VICTIM,
    STAT_FIRED_DECISION, STAT_FIRED_GROUP_MEMBER, STAT_FIRED_TP_VICTIM, STAT_LOST_BTF_VICTIM,
    STAT_LOST_DECISION, STAT_LOST_GROUP_MEMBER, STAT_LOST_TP_VICTIM, STAT_READ_ERRORS,
    TP_RECORD_MAX, TpVictim, TracepointLayout, VICTIM_HAS_ADJ, WALK_ABSENT, WALK_READ_FAILED,
    WALK_TRUNCATED,
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

#[unsafe(no_mangle)]
static TP_LAYOUT: TracepointLayout = TracepointLayout {
    pid_offset: 8,
    record_len: 0,
};

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a plain global in .rodata; read_volatile keeps the compiler from
    // folding in the zeroed initialiser the loader replaces.
    unsafe { read_volatile(&OFFSETS) }
}

#[inline(always)]
fn count(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: a per-CPU slot; no other program runs on this CPU concurrently
        // with this increment (tracing programs do not nest on one CPU for these hooks).
        unsafe { *slot += 1 };
    }
}

/// Reads a `T` at `base + off` in kernel memory, counting a failure.
#[inline(always)]
unsafe fn read<T>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() || off == u32::MAX {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one fails.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize).cast::<T>()) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(STAT_READ_ERRORS);
            None
        }
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
    h.trigger_comm = bpf_get_current_comm().unwrap_or([0; 16]);
    h._pad = 0;
}

/// The memory cgroup css of `task`: `task->cgroups->subsys[memory_cgrp_id]`.
#[inline(always)]
unsafe fn task_memcg_css(o: &KernelOffsets, task: *const u8) -> *const u8 {
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let cset: *const u8 = read(task, o.task_cgroups).unwrap_or(core::ptr::null());
        read(cset, o.css_set_memory_subsys).unwrap_or(core::ptr::null())
    }
}

/// Walks from the memory cgroup whose css is `css` up to the root, leaf first.
#[inline(always)]
unsafe fn walk(o: &KernelOffsets, css: *const u8, out: *mut CgroupWalk) {
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
            (*level).usage_pages = read::<u64>(memcg, o.memcg_usage).unwrap_or(0);
            (*level).max_pages = read::<u64>(memcg, o.memcg_max).unwrap_or(u64::MAX);
            let cgroup: *const u8 = read(css, o.css_cgroup).unwrap_or(core::ptr::null());
            let kn: *const u8 = read(cgroup, o.cgroup_kn).unwrap_or(core::ptr::null());
            (*level).id = read::<u64>(kn, o.kn_id).unwrap_or(0);
            let name: *const u8 = read(kn, o.kn_name).unwrap_or(core::ptr::null());
            (*level).name[0] = 0;
            if name.is_null() {
                (*out).flags |= WALK_READ_FAILED;
            } else if bpf_probe_read_kernel_str_bytes(name, &mut (*level).name).is_err() {
                (*out).flags |= WALK_READ_FAILED;
            }
            i += 1;
            (*out).depth = i as u32;
            css = read(css, o.css_parent).unwrap_or(core::ptr::null());
            if css.is_null() {
                return;
            }
        }
        (*out).flags |= WALK_TRUNCATED;
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
        count(STAT_LOST_TP_VICTIM);
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved, exclusively owned record of the right size.
    unsafe {
        fill_header(&mut (*ev).header, KIND_TP_VICTIM, size_of::<TpVictim>());
        (*ev).pid = ctx.read_at::<i32>(layout.pid_offset as usize).unwrap_or(0) as u32;
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
                count(STAT_READ_ERRORS);
            }
        }
    }
    entry.submit(0);
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
    if victim(task, uid, KIND_BTF_VICTIM) {
        Ok(0)
    } else {
        count(STAT_LOST_BTF_VICTIM);
        Err(0)
    }
}

/// Sends a [`BtfVictim`] record of `kind` for `task`; false when the ring
/// buffer is full.
#[inline(always)]
fn victim(task: *const u8, uid: u32, kind: u16) -> bool {
    let o = offsets();
    let Some(mut entry) = EVENTS.reserve::<BtfVictim>(0) else {
        return false;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved record; kernel reads are probe reads.
    unsafe {
        fill_header(&mut (*ev).header, kind, size_of::<BtfVictim>());
        (*ev).pid = read::<i32>(task, o.task_pid).unwrap_or(0) as u32;
        (*ev).tgid = read::<i32>(task, o.task_tgid).unwrap_or(0) as u32;
        (*ev).comm = read::<[u8; 16]>(task, o.task_comm).unwrap_or([0; 16]);
        (*ev).uid = uid;
        (*ev).flags = 0;
        (*ev)._pad = 0;
        (*ev).oom_score_adj = 0;
        let signal: *const u8 = read(task, o.task_signal).unwrap_or(core::ptr::null());
        if let Some(adj) = read::<i16>(signal, o.signal_oom_score_adj) {
            (*ev).oom_score_adj = i32::from(adj);
            (*ev).flags |= VICTIM_HAS_ADJ;
        }
        let css = task_memcg_css(&o, task);
        walk(&o, css, addr_of_mut!((*ev).memcg));
    }
    entry.submit(0);
    true
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
    if !victim(task, u32::MAX, KIND_GROUP_MEMBER) {
        count(STAT_LOST_GROUP_MEMBER);
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
        count(STAT_READ_ERRORS);
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
        count(STAT_LOST_DECISION);
        return 1;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved record; kernel reads are probe reads.
    unsafe {
        fill_header(&mut (*ev).header, KIND_DECISION, size_of::<Decision>());
        (*ev).flags = 0;
        (*ev)._pad = 0;
        (*ev).constraint = read::<u32>(oc, o.oc_constraint).unwrap_or(u32::MAX);
        (*ev).order = read::<i32>(oc, o.oc_order).unwrap_or(0);
        (*ev).gfp_mask = read::<u32>(oc, o.oc_gfp_mask).unwrap_or(0);
        (*ev).totalpages = read::<u64>(oc, o.oc_totalpages).unwrap_or(0);
        (*ev).chosen_points = read::<i64>(oc, o.oc_chosen_points).unwrap_or(0);
        let memcg: *const u8 = read(oc, o.oc_memcg).unwrap_or(core::ptr::null());
        if memcg.is_null() {
            walk(&o, core::ptr::null(), addr_of_mut!((*ev).domain));
        } else {
            (*ev).flags |= DECISION_HAS_MEMCG;
            walk(
                &o,
                memcg.wrapping_add(o.memcg_css as usize),
                addr_of_mut!((*ev).domain),
            );
        }
        let chosen: *const u8 = read(oc, o.oc_chosen).unwrap_or(core::ptr::null());
        // select_bad_process() sets chosen to (void *)-1 when it aborts.
        let chosen_ok = !chosen.is_null() && chosen as usize != usize::MAX;
        (*ev).chosen_pid = 0;
        (*ev).chosen_tgid = 0;
        (*ev).chosen_comm = [0; 16];
        (*ev).chosen_adj = 0;
        if chosen_ok {
            (*ev).flags |= DECISION_HAS_CHOSEN;
            (*ev).chosen_pid = read::<i32>(chosen, o.task_pid).unwrap_or(0) as u32;
            (*ev).chosen_tgid = read::<i32>(chosen, o.task_tgid).unwrap_or(0) as u32;
            (*ev).chosen_comm = read::<[u8; 16]>(chosen, o.task_comm).unwrap_or([0; 16]);
            let signal: *const u8 = read(chosen, o.task_signal).unwrap_or(core::ptr::null());
            (*ev).chosen_adj = i32::from(read::<i16>(signal, o.signal_oom_score_adj).unwrap_or(0));
            let css = task_memcg_css(&o, chosen);
            walk(&o, css, addr_of_mut!((*ev).chosen_memcg));
        } else {
            walk(&o, core::ptr::null(), addr_of_mut!((*ev).chosen_memcg));
        }
        let current = generated::bpf_get_current_task() as *const u8;
        let css = task_memcg_css(&o, current);
        walk(&o, css, addr_of_mut!((*ev).trigger_memcg));
    }
    entry.submit(0);
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
        count(STAT_READ_ERRORS);
        return 1;
    };
    decision(oc)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
