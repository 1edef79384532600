//! Kernel struct offsets for the eBPF programs, computed from BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the agent resolves every member the
//! programs read (`task_struct.cgroups`, `mem_cgroup.memory.usage`, ...) in the
//! running kernel's BTF and passes the result as the `OFFSETS` global. A member
//! this kernel lacks is `u32::MAX`: the program's read of it fails (counted)
//! instead of reading garbage, and the agent says what is missing.

use oomtrace_common::KernelOffsets;

use crate::capture::btf::Btf;

/// Offsets and what could not be resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub offsets: KernelOffsets,
    /// `struct.member: reason` for every member that was not found.
    pub missing: Vec<String>,
}

impl Resolved {
    /// The memory cgroup walk (victim cgroup, usage and limit) can run.
    pub fn walk_ok(&self) -> bool {
        self.offsets.valid != 0
    }

    /// The members [`oomtrace_common::Lineage`] is read from are all known
    /// (else the kernel side leaves it empty).
    pub fn lineage_ok(&self) -> bool {
        let o = &self.offsets;
        [
            o.task_group_leader,
            o.task_real_parent,
            o.task_thread_pid,
            o.task_children,
            o.task_sibling,
            o.pid_level,
            o.pid_numbers,
            o.upid_size,
            o.upid_nr,
            o.upid_ns,
        ]
        .iter()
        .all(|&v| v != u32::MAX)
    }

    /// The `oom_control` fields the decision hook needs are all known.
    pub fn oom_control_ok(&self) -> bool {
        let o = &self.offsets;
        [o.oc_memcg, o.oc_chosen, o.oc_chosen_points, o.oc_totalpages]
            .iter()
            .all(|&v| v != u32::MAX)
    }
}

/// Resolves every offset the eBPF programs use.
pub fn resolve(btf: &Btf) -> Resolved {
    let mut missing = Vec::new();
    let mut member = |strukt: &str, path: &str| -> u32 {
        match btf.member_offset(strukt, path) {
            Ok(off) => off,
            Err(err) => {
                missing.push(format!("{strukt}.{path}: {err}"));
                u32::MAX
            }
        }
    };
    let mut o = KernelOffsets::zeroed();
    o.task_pid = member("task_struct", "pid");
    o.task_tgid = member("task_struct", "tgid");
    o.task_comm = member("task_struct", "comm");
    o.task_cgroups = member("task_struct", "cgroups");
    o.task_signal = member("task_struct", "signal");
    o.task_cred = member("task_struct", "real_cred");
    o.cred_uid = member("cred", "uid");
    o.signal_oom_score_adj = member("signal_struct", "oom_score_adj");
    let subsys = member("css_set", "subsys");
    o.css_cgroup = member("cgroup_subsys_state", "cgroup");
    o.css_parent = member("cgroup_subsys_state", "parent");
    o.cgroup_kn = member("cgroup", "kn");
    o.kn_name = member("kernfs_node", "name");
    o.kn_id = member("kernfs_node", "id");
    o.memcg_css = member("mem_cgroup", "css");
    o.memcg_usage = member("mem_cgroup", "memory.usage");
    o.memcg_max = member("mem_cgroup", "memory.max");
    o.oc_memcg = member("oom_control", "memcg");
    o.oc_gfp_mask = member("oom_control", "gfp_mask");
    o.oc_order = member("oom_control", "order");
    o.oc_totalpages = member("oom_control", "totalpages");
    o.oc_chosen = member("oom_control", "chosen");
    o.oc_chosen_points = member("oom_control", "chosen_points");
    o.oc_constraint = member("oom_control", "constraint");
    // u64, ns of CLOCK_MONOTONIC at fork (`ktime_get_ns()` in copy_process);
    // `start_boottime` is the boot-clock twin /proc/<pid>/stat shows.
    o.task_start_time = member("task_struct", "start_time");
    // `struct kernel_siginfo { struct { int si_signo; int si_errno; int si_code; ... }; }`:
    // members of an anonymous struct (si_errno and si_code swap places on MIPS).
    o.siginfo_errno = member("kernel_siginfo", "si_errno");
    o.siginfo_code = member("kernel_siginfo", "si_code");
    // Main process or child (`Lineage`): the process's pid in its own PID
    // namespace is `group_leader->thread_pid->numbers[level].nr` (include/linux/pid.h:
    // `struct pid { ...; unsigned int level; ...; struct upid numbers[]; }`,
    // `struct upid { int nr; struct pid_namespace *ns; }`).
    o.task_group_leader = member("task_struct", "group_leader");
    o.task_real_parent = member("task_struct", "real_parent");
    o.task_thread_pid = member("task_struct", "thread_pid");
    o.task_children = member("task_struct", "children");
    o.task_sibling = member("task_struct", "sibling");
    o.pid_level = member("pid", "level");
    o.pid_numbers = member("pid", "numbers");
    o.upid_nr = member("upid", "nr");
    o.upid_ns = member("upid", "ns");
    o.upid_size = match btf.struct_size("upid") {
        Ok(size) => size,
        Err(err) => {
            missing.push(format!("upid: {err}"));
            u32::MAX
        }
    };
    o.css_set_memory_subsys = match btf.enum_value("cgroup_subsys_id", "memory_cgrp_id") {
        Ok(id) if subsys != u32::MAX && (0..64).contains(&id) => {
            subsys + u32::try_from(id).unwrap_or(0) * 8
        }
        Ok(id) => {
            missing.push(format!("css_set.subsys[memory_cgrp_id={id}]: not usable"));
            u32::MAX
        }
        Err(err) => {
            missing.push(format!(
                "cgroup_subsys_id.memory_cgrp_id: {err} (kernel without CONFIG_MEMCG?)"
            ));
            u32::MAX
        }
    };
    let walk = [
        o.task_cgroups,
        o.css_set_memory_subsys,
        o.css_cgroup,
        o.css_parent,
        o.cgroup_kn,
        o.kn_name,
        o.memcg_css,
        o.memcg_usage,
        o.memcg_max,
    ];
    o.valid = u32::from(walk.iter().all(|&v| v != u32::MAX));
    Resolved {
        offsets: o,
        missing,
    }
}
