//! The event a user reads: one [`Kill`] per victim, serialised as one JSON line.
//!
//! Field names are a contract with users' scripts (see the README). A value
//! that is not known is `None` (`null` in JSON), never invented; what is
//! missing and why is listed in [`Kill::missing`].

use serde::Serialize;

/// One OOM-killed task.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Kill {
    /// The record kind: always `"oom_kill"` (other records have other kinds).
    pub kind: RecordKind,
    /// RFC 3339, UTC, of the moment the kernel marked the victim.
    pub time: String,
    /// Host name, or `NODE_NAME` when set.
    pub node: String,
    /// `"cgroup"`: a memory cgroup's limit was hit; `"node"`: the node itself ran out.
    pub scope: Option<Scope>,
    /// `"memcg"`, `"none"`, `"cpuset"`, `"memory_policy"`.
    pub constraint: Option<Constraint>,
    /// Path of the cgroup whose limit was hit (`null` for node scope), relative
    /// to the memory controller's mount.
    pub oom_cgroup: Option<String>,
    /// Which Kubernetes level that cgroup is (`container`, `pod`, `node_allocatable`, `cgroup`, `node`).
    pub oom_domain: Option<OomDomain>,
    /// Which source decided `scope` and `oom_cgroup`.
    pub verdict_source: Option<VerdictSource>,
    pub victim: Victim,
    /// Who killed: the kernel's OOM killer, a userspace OOM killer, or the kubelet.
    pub killer: Killer,
    pub trigger: Trigger,
    /// What the kill did to the victim's container or cgroup.
    pub outcome: Outcome,
    pub memcg: Memcg,
    /// Kubernetes identity of the victim (`null` when it is not in a pod).
    pub k8s: Option<K8s>,
    /// Node memory at the moment of a node-level or allocatable kill.
    pub node_memory: Option<NodeMemory>,
    /// Shared by every victim of one OOM decision.
    pub incident: String,
    /// Plain-language account of what happened.
    pub explanation: Option<String>,
    /// The change that prevents it.
    pub advice: Option<String>,
    /// Findings about the victim's oom_score_adj and QoS class.
    pub qos_check: Option<QosCheck>,
    /// The sources that reported this kill (`tracepoint`, `tp_btf`, `oom_control`, `kmsg`).
    pub sources: Vec<&'static str>,
    /// What could not be learned about this kill, and why.
    pub missing: Vec<String>,
    /// Kernel ring-buffer records lost so far (all kinds), as counted in the kernel.
    pub lost_events: u64,
    /// A kubelet eviction: what the kubelet said (`null` for other kills).
    pub eviction: Option<Eviction>,
    /// Found in the kernel log after a restart (`--state-dir`): the kill
    /// happened while oomtrace was not running, so only the kernel log
    /// describes it and `time` is the log's timestamp.
    pub replayed: bool,
}

/// What a JSON line is.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A process killed for memory.
    #[default]
    OomKill,
    /// Kills the kernel counted that no source reported ([`Unreported`]).
    UnreportedKills,
    /// Kubernetes' reason for a container's end contradicts the kernel's
    /// kills ([`crate::enrich::reported::ReasonMismatch`]).
    ReasonMismatch,
}

/// Kernel OOM kills that no source reported: the kernel's own count
/// (`/proc/vmstat` `oom_kill`) grew by more than the kills reported.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Unreported {
    /// Always `"unreported_kills"`.
    pub kind: RecordKind,
    /// Kills newly found unreported by this check.
    pub count: u64,
    /// Kills the kernel counted since `since`.
    pub kernel_count: u64,
    /// Kernel OOM kills reported over the same span (`killer.kind` `kernel_oom`).
    pub reported: u64,
    /// Kill lines of a task killed a second time in the same OOM (the
    /// chosen task of a memory.oom.group kill) over the same span: the
    /// kernel counts each, they are one report. `kernel_count` is
    /// `reported + repeated + unreported_total`.
    pub repeated: u64,
    /// Every kill found unreported over the same span, this one included.
    pub unreported_total: u64,
    /// RFC 3339, UTC, of the check.
    pub time: String,
    pub node: String,
    /// RFC 3339, UTC: when counting started (the first start of oomtrace in
    /// this boot with `--state-dir`, else this start).
    pub since: String,
    /// Capture records lost so far (ring buffer full, kernel log wrapped).
    pub lost_events: u64,
    /// What this means and what to do.
    pub explanation: String,
}

/// Who killed the victim.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Killer {
    pub kind: KillerKind,
    /// The killing process (`null` for the kernel).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The killing process's memory cgroup.
    pub cgroup: Option<String>,
    /// Which userspace OOM killer: `earlyoom`, `systemd-oomd`, `oomd`,
    /// `nohang`, `talos-machined`, else its process name (`kubelet` for an
    /// eviction; `null` for the kernel).
    pub name: Option<String>,
    /// The executable the sender was confirmed by (`/proc/<pid>/exe`).
    pub exe: Option<String>,
    /// The signal that killed: `SIGKILL`, or `SIGTERM` when the victim exited
    /// on it (`null` for the kernel and for evictions).
    pub signal: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum KillerKind {
    /// The kernel's OOM killer (a cgroup limit or the node ran out).
    #[default]
    KernelOom,
    /// A userspace OOM killer (systemd-oomd, earlyoom, ...).
    UserspaceOom,
    /// The kubelet evicted the pod for node memory pressure.
    KubeletEviction,
}

impl KillerKind {
    /// The JSON word (also the metrics label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KernelOom => "kernel_oom",
            Self::UserspaceOom => "userspace_oom",
            Self::KubeletEviction => "kubelet_eviction",
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Cgroup,
    Node,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    None,
    Cpuset,
    MemoryPolicy,
    Memcg,
}

impl Constraint {
    /// From `enum oom_constraint` in include/linux/oom.h.
    pub fn from_kernel(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::None),
            1 => Some(Self::Cpuset),
            2 => Some(Self::MemoryPolicy),
            3 => Some(Self::Memcg),
            _ => None,
        }
    }

    /// From the `constraint=CONSTRAINT_...` word of the kernel's summary line.
    pub fn from_kmsg(word: &str) -> Option<Self> {
        match word {
            "CONSTRAINT_NONE" => Some(Self::None),
            "CONSTRAINT_CPUSET" => Some(Self::Cpuset),
            "CONSTRAINT_MEMORY_POLICY" => Some(Self::MemoryPolicy),
            "CONSTRAINT_MEMCG" => Some(Self::Memcg),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OomDomain {
    /// The container's own limit.
    Container,
    /// The pod cgroup's limit.
    Pod,
    /// The kubepods (or kubepods-QoS) cgroup: the node's allocatable memory is exhausted.
    NodeAllocatable,
    /// Some other cgroup's limit.
    Cgroup,
    /// Node-level OOM: no memory cgroup involved.
    Node,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerdictSource {
    OomControl,
    Kmsg,
    CgroupUsage,
    /// Not a kernel OOM kill: a userspace OOM killer or the kubelet killed on
    /// node memory pressure, so the scope is the node by that killer's policy.
    KillerPolicy,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Victim {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub oom_score_adj: Option<i32>,
    /// Badness (`oc->chosen_points`), from the oom_control hook or a pre-5.1 kernel line.
    pub points: Option<i64>,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    /// The victim's memory cgroup path.
    pub cgroup: Option<String>,
}

/// What the kill did to the victim's container (or cgroup).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Outcome {
    /// The victim was its container's main process (the init of its PID
    /// namespace, the only child of an init shim, or the first process of
    /// its cgroup): the container exited. `false`: a child process was
    /// killed and the container kept running. `null`: unknown (see `missing`).
    pub main_process: Option<bool>,
    /// Processes left in the victim's cgroup after the kill (victims and
    /// processes with a SIGKILL pending not counted), read when the kill is
    /// enriched; 0 when the cgroup is gone. `null`: not read (see `missing`).
    pub survivors: Option<u32>,
    /// memory.oom.group made the kernel kill every process of the cgroup.
    pub group_kill: bool,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Trigger {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The trigger's memory cgroup path (from the oom_control hook).
    pub cgroup: Option<String>,
    /// The trigger's oom_score_adj (from the kernel's `invoked oom-killer` line).
    pub oom_score_adj: Option<i32>,
    /// Allocation order (-1 for a sysrq-forced OOM).
    pub order: Option<i32>,
    pub gfp_mask: Option<String>,
}

/// Memory usage and limit, in bytes, at kill time.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Memcg {
    pub victim_usage_bytes: Option<u64>,
    /// `null` when the victim's own cgroup is unlimited.
    pub victim_limit_bytes: Option<u64>,
    pub oom_usage_bytes: Option<u64>,
    pub oom_limit_bytes: Option<u64>,
    /// Every captured level of the victim's cgroup, leaf first.
    pub hierarchy: Vec<CgroupUsage>,
    /// `oc->totalpages` in bytes: the memory the kernel scored against.
    pub total_bytes: Option<u64>,
    /// Where the memory of the cgroup whose limit was hit was (its whole
    /// subtree), or of the node for a node-level kill, read when the victim
    /// was first seen.
    pub oom_stat: Option<OomStat>,
}

/// Memory by kind, in bytes (`null` where the kernel does not count it).
/// `file_bytes` is the page cache as the kernel counts it, `shmem_bytes`
/// (tmpfs, memory-backed emptyDir, /dev/shm) included.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OomStat {
    pub anon_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
    pub shmem_bytes: Option<u64>,
    pub kernel_bytes: Option<u64>,
    pub sock_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CgroupUsage {
    pub path: String,
    pub usage_bytes: u64,
    /// `null` when unlimited.
    pub limit_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct K8s {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    /// `Guaranteed`, `Burstable`, `BestEffort`.
    pub qos_class: Option<String>,
    /// `containerd`, `cri-o`, `docker`.
    pub runtime: Option<String>,
    /// The pod's labels, from the API server (`--kube`).
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// The owning workload (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`, ...), from the API server.
    pub owner_kind: Option<String>,
    pub owner_name: Option<String>,
    /// The container's memory request and limit, from the API server.
    pub memory_request_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// Kubernetes' reason for the container's end (`OOMKilled`, `Error`,
    /// ...), in `reason_mismatch` records; `null` on kills (the
    /// termination is known only after the kill was reported).
    pub reported_reason: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct NodeMemory {
    pub total_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    pub swap_total_bytes: Option<u64>,
    pub swap_free_bytes: Option<u64>,
    /// PSI `some avg10` of /proc/pressure/memory.
    pub psi_some_avg10: Option<f64>,
    /// PSI `full avg10`.
    pub psi_full_avg10: Option<f64>,
    /// The largest memory consumers at that moment.
    pub top: Vec<Consumer>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Consumer {
    /// `namespace/pod` for a pod, else the cgroup path.
    pub name: String,
    pub cgroup: String,
    pub usage_bytes: u64,
    pub qos_class: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QosCheck {
    /// The oom_score_adj the kubelet sets for this QoS class (a range for Burstable).
    pub expected: Option<String>,
    /// Whether the observed value fits the QoS class.
    pub fits: Option<bool>,
    /// For Burstable: the memory request the observed oom_score_adj implies.
    pub estimated_request_bytes: Option<u64>,
    pub note: Option<String>,
}

/// What the kubelet said when it evicted a pod for memory (`status.message`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Eviction {
    /// The kubelet's message, as it wrote it.
    pub message: String,
    /// The eviction threshold (`Threshold quantity:`), in bytes.
    pub threshold_bytes: Option<u64>,
    /// Memory available on the node when the threshold was met, in bytes.
    pub available_bytes: Option<u64>,
    /// The containers (or, with pod-level resources, the pod) the kubelet
    /// found using more than their request, in its order.
    pub over_request: Vec<OverRequest>,
}

/// One container (or pod) using more memory than it requested.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct OverRequest {
    /// `container` or `pod`.
    pub level: String,
    pub name: String,
    pub usage_bytes: Option<u64>,
    pub request_bytes: Option<u64>,
}
