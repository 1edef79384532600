//! Who dies next (`oomtrace rank`): the order in which the kernel would
//! kill, now, in a node-level OOM or in the OOM of one memory cgroup
//! (`--cgroup`, `--pod`, `--allocatable`).
//!
//! Every process with memory is read from the node's `/proc` (kernel threads
//! and zombies have none and are never chosen): `oom_score_adj`, RSS, swap,
//! page tables and the memory cgroup, through one pinned handle per process
//! ([`crate::proc`]), and each row is named with its pod, container and QoS
//! class. `oom_score_adj == -1000` is never killed: such processes are
//! listed last and marked.
//!
//! - **Node level**: sorted by the kernel's own `/proc/<pid>/oom_score`
//!   (ties by the badness of KERNEL-FACTS §4, `points`), which is computed
//!   against RAM + swap.
//! - **One cgroup** (`select_bad_process` with `oc->memcg` set): the kernel
//!   scans only the tasks of that cgroup's whole subtree and scores them
//!   against the cgroup's own maximum, `mem_cgroup_get_max()`
//!   (mm/memcontrol.c): its limit, plus, when its swappiness is not 0, the
//!   swap it may use (v1: `memory.memsw.limit_in_bytes` minus the limit; v2:
//!   `memory.swap.max`), at most all of the node's swap. `oom_score` is
//!   computed against the whole node and would mislead there: rows are
//!   sorted by `points`, the badness against that maximum.
//!
//! `memory.oom.group` (cgroup v2, `mem_cgroup_get_oom_group`): when the
//! chosen task's cgroup, or an ancestor up to the OOM cgroup, has it set, the
//! kernel kills every task of the highest such cgroup with it (except
//! `oom_score_adj` -1000). Each row names its group (`oom_group`), and the
//! rows that die together with rank 1 are marked (`killed_with_first`).

use std::{
    collections::{HashMap, VecDeque},
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::units::{Bytes, escape};

use crate::{
    cgroupfs::{self, CgroupFs, CgroupVersion},
    enrich::identity::{self, Level},
    enrich::node,
    enrich::podnames::PodNames,
    proc::{self, Pinned},
    report::K8s,
};

/// `OOM_SCORE_ADJ_MIN`: never killed.
pub const OOM_SCORE_ADJ_MIN: i32 = -1000;
/// Rows shown by default.
pub const DEFAULT_LIMIT: usize = 30;
/// Deepest cgroup level searched for a pod or the kubepods cgroup (root is
/// 0): the deepest layout of KERNEL-FACTS §6 with a nested prefix puts pods
/// at level 5.
const MAX_FIND_DEPTH: usize = 7;
/// Upper bound on the directories searched for a pod or kubepods cgroup.
const MAX_FIND_DIRS: usize = 20_000;

/// Errors of `oomtrace rank`.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error(transparent)]
    Proc(#[from] proc::ProcError),
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error(
        "no memory cgroup controller found in /proc/self/mounts: pass the memory controller's mount with --cgroup-root"
    )]
    NoCgroupFs,
    #[error(
        "no memory cgroup {cgroup} under {}: give the path as /proc/<pid>/cgroup shows it (relative to the memory controller's mount), or pass --cgroup-root",
        root.display()
    )]
    NoCgroup { cgroup: String, root: PathBuf },
    #[error("{cgroup} has no memory limit, so the kernel never runs an OOM there: {hint}")]
    Unlimited { cgroup: String, hint: String },
    #[error("--pod takes NAMESPACE/NAME (e.g. --pod shop/api-5c8d), not {0:?}")]
    BadPod(String),
    #[error(
        "pod {namespace}/{pod} not found in the kubelet's pod log directory (pod names come from there): check the name, pass --pod-logs, or rank its cgroup with --cgroup"
    )]
    PodNotFound { namespace: String, pod: String },
    #[error(
        "no cgroup of pod {namespace}/{pod} (uid {uids}) under {}: the pod may have stopped; check --cgroup-root",
        root.display()
    )]
    NoPodCgroup {
        namespace: String,
        pod: String,
        uids: String,
        root: PathBuf,
    },
    #[error(
        "no kubepods cgroup under {}: this is not a Kubernetes node, or pass --cgroup-root",
        root.display()
    )]
    NoKubepods { root: PathBuf },
    #[error("cannot encode the ranking as json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the ranking to stdout: {0}")]
    Write(#[source] io::Error),
}

/// Output format of `oomtrace rank`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RankFormat {
    /// A table, readable at 100 columns.
    #[default]
    Text,
    /// One JSON document: the list of rows.
    Json,
}

/// `oomtrace rank`: the order in which the kernel would kill, now.
#[derive(Clone, Debug, clap::Args)]
pub struct RankArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = RankFormat::Text)]
    pub format: RankFormat,
    /// Show the first N processes in kill order [default: 30].
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub limit: Option<usize>,
    /// Show every process, including the unkillable ones at the end.
    #[arg(long)]
    pub all: bool,
    /// Where the host's /proc is mounted (in a container: /host/proc); the
    /// global --proc is used when this is not given.
    // Its own id: sharing the global `proc_root` id would hide the global
    // `--proc` inside `oomtrace rank`.
    #[arg(
        long = "proc-root",
        id = "rank_proc_root",
        env = "OOMTRACE_PROC_ROOT",
        default_value = "/proc"
    )]
    pub proc_root: PathBuf,
    /// Rank for an OOM at the limit of this memory cgroup: the tasks of its
    /// whole subtree, scored against its limit (plus the swap it may use),
    /// as the kernel scores them. PATH as /proc/<pid>/cgroup shows it.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pod", "allocatable"])]
    pub cgroup: Option<String>,
    /// Rank for an OOM at the limit of this pod's cgroup (NAMESPACE/NAME,
    /// found through the kubelet's pod log directory, --pod-logs).
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "allocatable")]
    pub pod: Option<String>,
    /// Rank for an OOM at the node's allocatable memory: the limit of the
    /// kubepods cgroup.
    #[arg(long)]
    pub allocatable: bool,
    /// The memory controller's mount (the global --cgroup-root; found in
    /// /proc/self/mounts when `None`).
    #[arg(skip)]
    pub cgroup_root: Option<PathBuf>,
}

/// One process, in kill order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankEntry {
    /// 1 = killed first; `null` for unkillable processes (`oom_score_adj` -1000).
    pub rank: Option<usize>,
    /// The kernel's badness (`oom_badness()`, pages) against the ranked
    /// scope's maximum: the value the kernel compares (`null` for
    /// unkillable processes). Node level: RAM + swap; one cgroup:
    /// `mem_cgroup_get_max()`.
    pub points: Option<i64>,
    /// The kernel's `/proc/<pid>/oom_score`, always against the whole node
    /// (0..1333 on kernels since 5.9: 2/3 of 1000 + badness per mille).
    pub oom_score: u32,
    pub oom_score_adj: i32,
    /// Resident memory (anon + file + shmem), bytes.
    pub rss_bytes: u64,
    pub swap_bytes: u64,
    pub pgtables_bytes: u64,
    /// Same as `points` (kept for compatibility).
    pub badness_pages: Option<i64>,
    /// Never chosen by the OOM killer (`oom_score_adj` -1000).
    pub unkillable: bool,
    pub pid: u32,
    pub comm: String,
    /// Memory cgroup path, relative to the controller's mount.
    pub cgroup: Option<String>,
    /// The group the process belongs to: `namespace/pod` (or `pod/<uid>`
    /// without names) for a pod, else the cgroup path.
    pub group: String,
    /// Kubernetes identity (`null` when not in a pod).
    pub k8s: Option<K8s>,
    /// The cgroup whose `memory.oom.group` takes this process (and every
    /// task of that cgroup) down when it or any task of the group is
    /// chosen; `null` when none (always on cgroup v1).
    pub oom_group: Option<String>,
    /// Dies together with rank 1, through rank 1's `oom_group`.
    pub killed_with_first: bool,
}

/// The memory cgroup ranked for, and what the kernel scores against there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// The cgroup at its limit (`oc->memcg`).
    pub cgroup: String,
    pub limit_bytes: u64,
    /// Swap counted on top of the limit: 0 with swappiness 0 or no swap.
    pub swap_bytes: u64,
    /// `mem_cgroup_get_max()` in pages: `oc->totalpages`.
    pub totalpages: u64,
}

/// A ranking: its rows in kill order, and the cgroup it is for (`None`: the node).
#[derive(Clone, Debug, PartialEq)]
pub struct Ranking {
    pub scope: Option<Scope>,
    pub entries: Vec<RankEntry>,
}

/// Names the processes of a memory cgroup. The default, [`PathOnly`], reads
/// what the path says; the agent wires in pod names from the node.
pub trait Resolve {
    /// The Kubernetes identity of processes in `cgroup`; `None` when not a pod.
    fn k8s(&self, cgroup: &str) -> Option<K8s>;

    /// The UIDs of pod `namespace/pod` (`--pod`); empty when unknown.
    fn pod_uids(&self, _namespace: &str, _pod: &str) -> Vec<String> {
        Vec::new()
    }
}

impl<F: Fn(&str) -> Option<K8s>> Resolve for F {
    fn k8s(&self, cgroup: &str) -> Option<K8s> {
        self(cgroup)
    }
}

/// Identity from the cgroup path alone ([`identity::parse`]): pod UID,
/// container ID, QoS class, runtime; no namespace, pod or container names.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathOnly;

impl Resolve for PathOnly {
    fn k8s(&self, cgroup: &str) -> Option<K8s> {
        identity::parse(cgroup).to_k8s(None)
    }
}

/// Identity from the cgroup path plus namespace, pod and container names
/// from the kubelet's log directories ([`PodNames`]), as the agent names
/// its events.
#[derive(Debug)]
pub struct WithPodNames {
    names: std::cell::RefCell<PodNames>,
}

impl WithPodNames {
    pub fn new(names: PodNames) -> Self {
        Self {
            names: std::cell::RefCell::new(names),
        }
    }
}

impl Resolve for WithPodNames {
    fn k8s(&self, cgroup: &str) -> Option<K8s> {
        let id = identity::parse(cgroup);
        let name = id
            .pod_uid
            .as_deref()
            .filter(|_| id.is_pod())
            .and_then(|uid| {
                self.names
                    .borrow_mut()
                    .lookup(uid, id.container_id.as_deref())
            });
        id.to_k8s(name.as_ref())
    }

    fn pod_uids(&self, namespace: &str, pod: &str) -> Vec<String> {
        self.names.borrow_mut().uids_of(namespace, pod)
    }
}

/// The kernel's `oom_badness()` (mm/oom_kill.c) in pages: rss, plus swap
/// entries, plus page-table pages, plus `adj * (totalpages / 1000)`; `None`
/// for -1000 (never).
/// `totalpages` is RAM + swap in pages for a node-level OOM, and
/// [`memcg_max_pages`] for the OOM of a memory cgroup.
pub fn badness(
    rss_pages: u64,
    swap_pages: u64,
    pgtables_pages: u64,
    adj: i32,
    totalpages: u64,
) -> Option<i64> {
    if adj <= OOM_SCORE_ADJ_MIN {
        return None;
    }
    let points = i64::try_from(
        rss_pages
            .saturating_add(swap_pages)
            .saturating_add(pgtables_pages),
    )
    .unwrap_or(i64::MAX);
    let per_mille = i64::try_from(totalpages / 1000).unwrap_or(i64::MAX);
    Some(points.saturating_add(i64::from(adj).saturating_mul(per_mille)))
}

/// What `/proc/<pid>/oom_score` shows for a badness (fs/proc/base.c,
/// `proc_oom_score`, kernels since 5.9): `(1000 + badness * 1000 / totalpages) * 2 / 3`, 0 for never.
pub fn oom_score_of(badness: Option<i64>, totalpages: u64) -> u32 {
    let (Some(b), Ok(tp)) = (badness, i64::try_from(totalpages.max(1))) else {
        return 0;
    };
    let points = (1000 + b.saturating_mul(1000) / tp) * 2 / 3;
    u32::try_from(points.max(0)).unwrap_or(u32::MAX)
}

/// `mem_cgroup_get_max()` (mm/memcontrol.c), in pages: what the kernel
/// scores an OOM of a memory cgroup against (`oc->totalpages`, at least 1).
///
/// The cgroup's limit, plus, when `swappiness` is not 0, the swap it may
/// use, at most all of the node's swap (`total_swap`). `swap_allowance`
/// (`None` = unlimited) is, on v1 with swap accounting, the memory+swap
/// limit minus the limit; on v2 `memory.swap.max`; on v1 without swap
/// accounting the kernel counts all of the swap. Kernels 4.19 to 6.x spell
/// this three ways (one `min()` before 5.10, split by version in 5.10, by
/// `do_memsw_account()` since 6.1); all three give this value.
pub fn memcg_max_pages(
    limit: u64,
    swap_allowance: Option<u64>,
    swappiness: u64,
    total_swap: u64,
) -> u64 {
    let swap = if swappiness == 0 {
        0
    } else {
        swap_allowance.map_or(total_swap, |s| s.min(total_swap))
    };
    limit.saturating_add(swap).max(1)
}

/// Ranks as `args` asks: the node, or one cgroup (`--cgroup`, `--pod`,
/// `--allocatable`).
pub fn rank(args: &RankArgs, resolve: &dyn Resolve) -> Result<Ranking, RankError> {
    let cgfs = CgroupFs::find(args.cgroup_root.as_deref());
    let scoped = args.cgroup.is_some() || args.pod.is_some() || args.allocatable;
    if !scoped {
        let entries = collect_node(&args.proc_root, cgfs.as_ref(), resolve)?;
        return Ok(Ranking {
            scope: None,
            entries,
        });
    }
    let cgfs = cgfs.ok_or(RankError::NoCgroupFs)?;
    let cgroup = match (&args.cgroup, &args.pod) {
        (Some(path), _) => cgroup_arg(&cgfs, path)?,
        (None, Some(pod)) => pod_cgroup(&cgfs, pod, resolve)?,
        (None, None) => find_cgroup(&cgfs, |path| identity::parse(path).level == Level::Kubepods)
            .ok_or_else(|| RankError::NoKubepods {
            root: cgfs.root.clone(),
        })?,
    };
    collect_scope(&args.proc_root, &cgfs, &cgroup, resolve)
}

/// A `--cgroup` argument as a path relative to the controller's mount: also
/// accepts the directory (`/sys/fs/cgroup/memory/a/b`) and no leading `/`.
fn cgroup_arg(cgfs: &CgroupFs, arg: &str) -> Result<String, RankError> {
    let rel = Path::new(arg)
        .strip_prefix(&cgfs.root)
        .ok()
        .and_then(Path::to_str)
        .unwrap_or(arg);
    let path = format!("/{}", rel.trim_matches('/'));
    if cgfs.dir(&path).is_dir() {
        Ok(path)
    } else {
        Err(RankError::NoCgroup {
            cgroup: path,
            root: cgfs.root.clone(),
        })
    }
}

/// The cgroup of pod `NAMESPACE/NAME`: its UIDs from the kubelet's log
/// directory, then the pod cgroup named by one of them.
fn pod_cgroup(cgfs: &CgroupFs, arg: &str, resolve: &dyn Resolve) -> Result<String, RankError> {
    let (namespace, pod) = arg
        .split_once('/')
        .filter(|(ns, pod)| !ns.is_empty() && !pod.is_empty() && !pod.contains('/'))
        .ok_or_else(|| RankError::BadPod(arg.to_owned()))?;
    let uids = resolve.pod_uids(namespace, pod);
    if uids.is_empty() {
        return Err(RankError::PodNotFound {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        });
    }
    find_cgroup(cgfs, |path| {
        let id = identity::parse(path);
        id.level == Level::Pod && id.pod_uid.as_ref().is_some_and(|u| uids.contains(u))
    })
    .ok_or_else(|| RankError::NoPodCgroup {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        uids: uids.join(", "),
        root: cgfs.root.clone(),
    })
}

/// The shallowest cgroup for which `want` holds (breadth first, bounded).
fn find_cgroup(cgfs: &CgroupFs, want: impl Fn(&str) -> bool) -> Option<String> {
    let mut queue = VecDeque::from([(String::new(), 0usize)]);
    let mut budget = MAX_FIND_DIRS;
    while let Some((path, depth)) = queue.pop_front() {
        if depth > 0 && want(&path) {
            return Some(path);
        }
        if depth >= MAX_FIND_DEPTH || budget == 0 {
            continue;
        }
        budget -= 1;
        for child in node::subdirs(&cgfs.dir(&path)) {
            queue.push_back((format!("{path}/{child}"), depth + 1));
        }
    }
    None
}

/// Reads every process of `proc_root` (normally `/proc`) and returns them in
/// the order the kernel would kill them in a node-level OOM.
///
/// Processes that exit while being read are skipped. `resolve` names each
/// memory cgroup once.
pub fn collect(proc_root: &Path, resolve: &dyn Resolve) -> Result<Vec<RankEntry>, RankError> {
    collect_node(proc_root, None, resolve)
}

/// [`collect`], with the `memory.oom.group` of each row read from `cgfs`.
pub fn collect_node(
    proc_root: &Path,
    cgfs: Option<&CgroupFs>,
    resolve: &dyn Resolve,
) -> Result<Vec<RankEntry>, RankError> {
    let mem = node::read_meminfo(proc_root)?;
    let page = crate::units::page_size();
    let totalpages = (mem.total_bytes.unwrap_or(0) + mem.swap_total_bytes.unwrap_or(0)) / page;
    let mut entries = read_processes(proc_root, page, totalpages, resolve, |_| true)?;
    if let Some(cgfs) = cgfs {
        mark_oom_groups(&mut entries, cgfs, "/");
    }
    sort_and_rank(&mut entries);
    mark_killed_with_first(&mut entries);
    Ok(entries)
}

/// The processes of `cgroup`'s subtree in the order the kernel would kill
/// them in an OOM at `cgroup`'s limit, scored against [`memcg_max_pages`].
pub fn collect_scope(
    proc_root: &Path,
    cgfs: &CgroupFs,
    cgroup: &str,
    resolve: &dyn Resolve,
) -> Result<Ranking, RankError> {
    let page = crate::units::page_size();
    let scope = scope_of(proc_root, cgfs, cgroup, page)?;
    let inside = |cg: &str| {
        cgroup == "/"
            || cg == cgroup
            || cg
                .strip_prefix(cgroup)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let mut entries = read_processes(proc_root, page, scope.totalpages, resolve, |cg| {
        cg.is_some_and(inside)
    })?;
    mark_oom_groups(&mut entries, cgfs, cgroup);
    sort_by_points(&mut entries);
    mark_killed_with_first(&mut entries);
    Ok(Ranking {
        scope: Some(scope),
        entries,
    })
}

/// What the kernel scores an OOM at `cgroup`'s limit against.
fn scope_of(
    proc_root: &Path,
    cgfs: &CgroupFs,
    cgroup: &str,
    page: u64,
) -> Result<Scope, RankError> {
    let Some(limit_bytes) = cgfs.limit(cgroup) else {
        let hint = match limited_ancestor(cgfs, cgroup) {
            Some(a) => {
                format!("its nearest ancestor with a limit is {a}: rank that with --cgroup {a}")
            }
            None => "no ancestor has one either: run `oomtrace rank` for the node".to_owned(),
        };
        return Err(RankError::Unlimited {
            cgroup: cgroup.to_owned(),
            hint,
        });
    };
    let mem = node::read_meminfo(proc_root)?;
    let total_swap = mem.swap_total_bytes.unwrap_or(0) / page;
    let read = |file: &str| cgfs.file(cgroup, file).ok();
    // The kernel's default when the sysctl cannot be read.
    let global_swappiness = || {
        fs::read_to_string(proc_root.join("sys/vm/swappiness"))
            .ok()
            .and_then(|t| cgroupfs::parse_u64(&t))
            .unwrap_or(60)
    };
    let (swap_allowance, swappiness) = match cgfs.version {
        // Without swap accounting there is no memsw file: all of the swap counts.
        CgroupVersion::V1 => (
            read("memory.memsw.limit_in_bytes")
                .and_then(|t| cgroupfs::parse_limit_v1(&t))
                .map(|memsw| memsw.saturating_sub(limit_bytes) / page),
            read("memory.swappiness")
                .and_then(|t| cgroupfs::parse_u64(&t))
                .unwrap_or_else(global_swappiness),
        ),
        // cgroup v2 has no per-cgroup swappiness: the kernel uses vm.swappiness.
        CgroupVersion::V2 => (
            read("memory.swap.max")
                .and_then(|t| cgroupfs::parse_limit_v2(&t))
                .map(|b| b / page),
            global_swappiness(),
        ),
    };
    let limit = limit_bytes / page;
    let totalpages = memcg_max_pages(limit, swap_allowance, swappiness, total_swap);
    Ok(Scope {
        cgroup: cgroup.to_owned(),
        limit_bytes,
        swap_bytes: totalpages.saturating_sub(limit) * page,
        totalpages,
    })
}

fn parent(cgroup: &str) -> Option<&str> {
    match cgroup.rsplit_once('/') {
        _ if cgroup == "/" => None,
        Some(("", _)) => Some("/"),
        Some((p, _)) => Some(p),
        None => None,
    }
}

fn limited_ancestor(cgfs: &CgroupFs, cgroup: &str) -> Option<String> {
    let mut at = parent(cgroup);
    while let Some(p) = at {
        if cgfs.limit(p).is_some() {
            return Some(p.to_owned());
        }
        at = parent(p);
    }
    None
}

/// Reads the processes whose memory cgroup `keep` accepts.
fn read_processes(
    proc_root: &Path,
    page: u64,
    totalpages: u64,
    resolve: &dyn Resolve,
    keep: impl Fn(Option<&str>) -> bool,
) -> Result<Vec<RankEntry>, RankError> {
    let mut names: HashMap<String, Option<K8s>> = HashMap::new();
    let mut entries = Vec::new();
    for p in proc::all(proc_root)? {
        let Some(mut e) = read_process(&p, page, totalpages) else {
            continue;
        };
        if !keep(e.cgroup.as_deref()) {
            continue;
        }
        let k8s = match &e.cgroup {
            Some(cg) => names
                .entry(cg.clone())
                .or_insert_with(|| resolve.k8s(cg))
                .clone(),
            None => None,
        };
        e.group = group_name(k8s.as_ref(), e.cgroup.as_deref());
        e.k8s = k8s;
        entries.push(e);
    }
    Ok(entries)
}

/// One row, read through the pinned process; `None` for kernel threads,
/// processes without memory and processes that exit while being read.
fn read_process(p: &Pinned, page: u64, totalpages: u64) -> Option<RankEntry> {
    if p.is_kernel_thread() {
        return None;
    }
    let mem = p.memory().ok()?;
    let rss_kb = mem.rss_kb?; // no mm: never chosen
    let oom_score_adj = p.oom_score_adj().ok()?;
    let oom_score = p.oom_score().ok()?;
    let cgroup = p.memory_cgroup().ok()?;
    // Still the process that was opened, and alive: the figures are one process's.
    p.recheck().ok()?;
    let kb_pages = |kb: u64| kb * 1024 / page;
    let points = badness(
        kb_pages(rss_kb),
        kb_pages(mem.swap_kb),
        kb_pages(mem.pgtables_kb),
        oom_score_adj,
        totalpages,
    );
    Some(RankEntry {
        rank: None,
        points,
        oom_score,
        oom_score_adj,
        rss_bytes: rss_kb * 1024,
        swap_bytes: mem.swap_kb * 1024,
        pgtables_bytes: mem.pgtables_kb * 1024,
        badness_pages: points,
        unkillable: oom_score_adj <= OOM_SCORE_ADJ_MIN,
        pid: p.pid(),
        comm: p.comm().to_owned(),
        cgroup,
        group: String::new(),
        k8s: None,
        oom_group: None,
        killed_with_first: false,
    })
}

/// `namespace/pod`, or `pod/<uid>` without names; the cgroup path otherwise.
fn group_name(k8s: Option<&K8s>, cgroup: Option<&str>) -> String {
    match k8s {
        Some(K8s {
            namespace: Some(ns),
            pod: Some(pod),
            ..
        }) => format!("{ns}/{pod}"),
        Some(K8s {
            pod_uid: Some(uid), ..
        }) => format!("pod/{uid}"),
        _ => cgroup.unwrap_or("?").to_owned(),
    }
}

/// Sets each row's `oom_group` for an OOM at `oom_cgroup`: the highest
/// cgroup from the row's own up to `oom_cgroup` whose `memory.oom.group` is
/// 1 (`mem_cgroup_get_oom_group`, cgroup v2 only; a task in the root cgroup
/// has none).
fn mark_oom_groups(entries: &mut [RankEntry], cgfs: &CgroupFs, oom_cgroup: &str) {
    if cgfs.version != CgroupVersion::V2 {
        return;
    }
    let mut flag: HashMap<String, bool> = HashMap::new();
    let mut is_set = |path: &str| {
        *flag.entry(path.to_owned()).or_insert_with(|| {
            cgfs.file(path, "memory.oom.group")
                .is_ok_and(|t| t.trim() == "1")
        })
    };
    for e in entries.iter_mut() {
        let Some(cg) = e.cgroup.as_deref().filter(|c| *c != "/") else {
            continue;
        };
        let mut group = None;
        let mut at = Some(cg);
        while let Some(p) = at {
            if p != "/" && is_set(p) {
                group = Some(p.to_owned());
            }
            if p == oom_cgroup {
                break;
            }
            at = parent(p);
        }
        e.oom_group = group;
    }
}

/// Marks the rows that die with rank 1: every killable row of its
/// `oom_group` but the node's init (`oom_kill_memcg_member`).
fn mark_killed_with_first(entries: &mut [RankEntry]) {
    let Some(group) = entries
        .iter()
        .find(|e| e.rank == Some(1))
        .and_then(|e| e.oom_group.clone())
    else {
        return;
    };
    for e in entries.iter_mut() {
        e.killed_with_first = !e.unkillable && e.pid != 1 && e.oom_group.as_ref() == Some(&group);
    }
}

/// Node-level kill order: killable before unkillable, `oom_score`
/// descending, then the badness, then pid. Sets `rank` (1-based) on
/// killable entries.
pub fn sort_and_rank(entries: &mut [RankEntry]) {
    entries.sort_by(|a, b| {
        a.unkillable
            .cmp(&b.unkillable)
            .then(b.oom_score.cmp(&a.oom_score))
            .then(b.points.cmp(&a.points))
            .then(a.pid.cmp(&b.pid))
    });
    set_ranks(entries);
}

/// Kill order within a cgroup: killable before unkillable, `points`
/// descending (the kernel keeps the highest), then pid. Sets `rank`.
pub fn sort_by_points(entries: &mut [RankEntry]) {
    entries.sort_by(|a, b| {
        a.unkillable
            .cmp(&b.unkillable)
            .then(b.points.cmp(&a.points))
            .then(a.pid.cmp(&b.pid))
    });
    set_ranks(entries);
}

fn set_ranks(entries: &mut [RankEntry]) {
    for (i, e) in entries.iter_mut().enumerate() {
        e.rank = (!e.unkillable).then_some(i + 1);
    }
}

/// Cuts `s` to `width` characters, marking a cut with `…`.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The node-level ranking as a table of at most 100 columns; `limit` rows
/// (all when `None`).
pub fn render_text(entries: &[RankEntry], limit: Option<usize>) -> String {
    render(
        &Ranking {
            scope: None,
            entries: entries.to_vec(),
        },
        limit,
    )
}

/// A ranking as a table of at most 100 columns; `limit` rows (all when
/// `None`). Rows that die with rank 1 (`memory.oom.group`) have a `+` after
/// their rank.
pub fn render(ranking: &Ranking, limit: Option<usize>) -> String {
    let entries = &ranking.entries;
    let shown = limit.unwrap_or(entries.len()).min(entries.len());
    // The scored column: the kernel's oom_score for the node, the points for a cgroup.
    let (score_name, score_width, pod_width) = match ranking.scope {
        None => ("SCORE", 5, 24),
        Some(_) => ("POINTS", 9, 20),
    };
    let mut out = String::new();
    if let Some(s) = &ranking.scope {
        out.push_str(&format!(
            "OOM in {}: scored against its limit {} + swap {} = {} pages ({} per oom_score_adj point)\n",
            s.cgroup,
            Bytes(s.limit_bytes),
            Bytes(s.swap_bytes),
            s.totalpages,
            s.totalpages / 1000
        ));
    }
    out.push_str(&format!(
        "{:>5} {:>score_width$} {:>5} {:>8} {:<10} {:<pod_width$} {:<13} {:>7} {}\n",
        "RANK", score_name, "ADJ", "RSS", "QOS", "NAMESPACE/POD", "CONTAINER", "PID", "COMM"
    ));
    for e in &entries[..shown] {
        let mut rank = e.rank.map_or_else(|| "never".to_owned(), |r| r.to_string());
        if e.killed_with_first {
            rank.push('+');
        }
        let score = match ranking.scope {
            None => e.oom_score.to_string(),
            Some(_) => e.points.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        };
        let k = e.k8s.as_ref();
        let qos = k.and_then(|k| k.qos_class.as_deref()).unwrap_or("-");
        let container = k
            .and_then(|k| {
                k.container.clone().or_else(|| {
                    k.container_id
                        .as_ref()
                        .map(|id| id.chars().take(12).collect())
                })
            })
            .unwrap_or_else(|| "-".to_owned());
        out.push_str(&format!(
            "{:>5} {:>score_width$} {:>5} {:>8} {:<10} {:<pod_width$} {:<13} {:>7} {}\n",
            rank,
            score,
            e.oom_score_adj,
            Bytes(e.rss_bytes + e.swap_bytes),
            qos,
            fit(&escape(&e.group), pod_width),
            fit(&escape(&container), 13),
            e.pid,
            fit(&escape(&e.comm), 15),
        ));
    }
    let unkillable = entries.iter().filter(|e| e.unkillable).count();
    match &ranking.scope {
        None => out.push_str(&format!(
            "{} processes in kill order for a node-level OOM",
            entries.len()
        )),
        Some(s) => out.push_str(&format!(
            "{} processes of {} and below, in kill order for an OOM at its limit\n",
            entries.len(),
            s.cgroup
        )),
    }
    if ranking.scope.is_none() {
        out.push_str("; ");
    }
    out.push_str(&format!(
        "{unkillable} unkillable (oom_score_adj -1000, rank \"never\") listed last"
    ));
    if shown < entries.len() {
        out.push_str(&format!("; showing {shown}, --all for every process"));
    }
    out.push('\n');
    let first_group = entries
        .iter()
        .find(|e| e.rank == Some(1))
        .and_then(|e| e.oom_group.as_deref());
    if let Some(group) = first_group {
        let others = entries
            .iter()
            .filter(|e| e.killed_with_first && e.rank != Some(1))
            .count();
        out.push_str(&format!(
            "rank 1 takes {others} more processes with it (marked +): memory.oom.group of {group}\n"
        ));
    }
    out
}

/// Runs `oomtrace rank` with identity from cgroup paths ([`PathOnly`]).
pub fn run(args: &RankArgs) -> Result<(), RankError> {
    run_with(args, &PathOnly)
}

/// Runs `oomtrace rank`, naming cgroups with `resolve`, and prints to stdout.
pub fn run_with(args: &RankArgs, resolve: &dyn Resolve) -> Result<(), RankError> {
    let ranking = rank(args, resolve)?;
    let limit = if args.all {
        None
    } else {
        Some(args.limit.unwrap_or(DEFAULT_LIMIT))
    };
    let text = match args.format {
        RankFormat::Text => render(&ranking, limit),
        RankFormat::Json => {
            let entries = &ranking.entries;
            let shown = limit.unwrap_or(entries.len()).min(entries.len());
            let mut s = serde_json::to_string_pretty(&entries[..shown])?;
            s.push('\n');
            s
        }
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(RankError::Write(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use procfs::FromRead as _;

    use super::*;

    use crate::testdata::node as data;

    /// totalpages of this host when the samples were taken (no swap, 4 KiB pages).
    fn host_totalpages() -> u64 {
        node::meminfo(&data("host-6.18.meminfo.txt"))
            .total_bytes
            .expect("MemTotal")
            / 4096
    }

    fn status_mem(name: &str) -> proc::StatusMem {
        let status =
            procfs::process::Status::from_read(data(name).as_bytes()).expect("real status file");
        proc::StatusMem::from(&status)
    }

    #[test]
    fn badness_reproduces_the_kernels_oom_score() {
        let tp = host_totalpages();
        // sleep, adj 0: VmRSS 1788 kB, VmPTE 48 kB -> oom_score 666.
        let m = status_mem("host-6.18.proc-sleep.status");
        let adj: i32 = data("host-6.18.proc-sleep.oom_score_adj")
            .trim()
            .parse()
            .expect("adj");
        let b = badness(
            m.rss_kb.expect("rss") / 4,
            m.swap_kb / 4,
            m.pgtables_kb / 4,
            adj,
            tp,
        );
        assert_eq!(
            oom_score_of(b, tp).to_string(),
            data("host-6.18.proc-sleep.oom_score").trim()
        );
        // adj 985: statm resident 436 pages (VmPTE not captured; 12 pages would not change the score).
        let rss: u64 = data("host-6.18.proc-paren-comm.statm")
            .split_whitespace()
            .nth(1)
            .expect("resident")
            .parse()
            .expect("n");
        let adj: i32 = data("host-6.18.proc-paren-comm.oom_score_adj")
            .trim()
            .parse()
            .expect("adj");
        assert_eq!(
            oom_score_of(badness(rss, 0, 0, adj, tp), tp).to_string(),
            data("host-6.18.proc-paren-comm.oom_score").trim()
        );
        // -1000: never, shown as 0 like kthreadd.
        assert_eq!(badness(1 << 20, 0, 0, -1000, tp), None);
        assert_eq!(
            oom_score_of(None, tp).to_string(),
            data("host-6.18.proc-kthreadd.oom_score").trim()
        );
        // KERNEL-FACTS §4: adj 985 adds 98.5% of node memory.
        assert_eq!(badness(0, 0, 0, 985, 4_000_000), Some(3_940_000));
    }

    #[test]
    fn the_kernels_maximum_of_a_memory_cgroup() {
        let page = 4096;
        let limit = cgroupfs::parse_limit_v1(&data("host-6.18.v1-swap.memory.limit_in_bytes"))
            .expect("64M")
            / page;
        let memsw =
            cgroupfs::parse_limit_v1(&data("host-6.18.v1-swap.memory.memsw.limit_in_bytes"))
                .expect("96M")
                / page;
        let swappiness: u64 = data("host-6.18.v1-swap.memory.swappiness")
            .trim()
            .parse()
            .expect("60");
        assert_eq!((limit, memsw, swappiness), (16384, 24576, 60));
        // v1 with 32 MiB of memory+swap headroom, on a node with 1 GiB of swap.
        let gib = 262_144;
        assert_eq!(
            memcg_max_pages(limit, Some(memsw - limit), swappiness, gib),
            24576
        );
        // ... with only 8 MiB of swap on the node: at most all of it.
        assert_eq!(memcg_max_pages(limit, Some(memsw - limit), 60, 2048), 18432);
        // swappiness 0: the limit alone.
        assert_eq!(memcg_max_pages(limit, Some(memsw - limit), 0, gib), limit);
        // Unlimited memsw (the root's value) or no swap accounting: all of the swap.
        assert_eq!(
            cgroupfs::parse_limit_v1(&data("host-6.18.v1-root.memory.memsw.limit_in_bytes")),
            None
        );
        assert_eq!(memcg_max_pages(limit, None, 60, gib), limit + gib);
        // This host has no swap: the limit.
        assert_eq!(memcg_max_pages(limit, None, 60, 0), limit);
        // v2: memory.swap.max "max" is unlimited; a number caps the swap.
        let v2_limit =
            cgroupfs::parse_limit_v2(&data("v2-limited.memory.max")).expect("512M") / page;
        let swap_max = cgroupfs::parse_limit_v2(&data("v2-unlimited.memory.max"));
        assert_eq!(memcg_max_pages(v2_limit, swap_max, 60, gib), 131_072 + gib);
        assert_eq!(memcg_max_pages(v2_limit, Some(0), 60, gib), 131_072);
        // `oc->totalpages` is never 0.
        assert_eq!(memcg_max_pages(0, None, 0, 0), 1);
    }

    fn write(dir: &Path, file: &str, text: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(file), text).expect("write");
    }

    /// A fake node: `/proc` with processes made of real files (the sleep
    /// sample, with its pid, comm, VmRSS, adj and cgroup changed) and a
    /// cgroup v1 or v2 tree.
    struct Node {
        tmp: tempfile::TempDir,
        cgfs: CgroupFs,
    }

    impl Node {
        fn new(version: CgroupVersion) -> Self {
            let tmp = tempfile::tempdir().expect("tmp");
            let proc_root = tmp.path().join("proc");
            write(&proc_root, "meminfo", &data("host-6.18.meminfo.txt"));
            write(&proc_root.join("sys/vm"), "swappiness", "60\n");
            let cgfs = CgroupFs {
                root: tmp.path().join("cg"),
                version,
            };
            fs::create_dir_all(&cgfs.root).expect("cg root");
            Self { tmp, cgfs }
        }

        fn proc_root(&self) -> PathBuf {
            self.tmp.path().join("proc")
        }

        fn process(&self, pid: u32, comm: &str, rss_kb: u64, adj: i32, cgroup: &str) {
            let dir = self.proc_root().join(pid.to_string());
            let stat = data("host-6.18.proc-sleep.stat").replacen(
                "15239 (sleep)",
                &format!("{pid} ({comm})"),
                1,
            );
            let status = data("host-6.18.proc-sleep.status")
                .replace("VmRSS:\t    1788 kB", &format!("VmRSS:\t{rss_kb:>8} kB"));
            assert!(status.contains(&format!("{rss_kb} kB")), "VmRSS replaced");
            write(&dir, "stat", &stat);
            write(&dir, "status", &status);
            write(&dir, "oom_score_adj", &format!("{adj}\n"));
            // What the kernel would show against the whole node.
            let tp = host_totalpages();
            let score = oom_score_of(badness(rss_kb / 4, 0, 12, adj, tp), tp);
            write(&dir, "oom_score", &format!("{score}\n"));
            let line = match self.cgfs.version {
                CgroupVersion::V1 => format!("12:memory:{cgroup}\n4:pids:/\n0::/\n"),
                CgroupVersion::V2 => format!("0::{cgroup}\n"),
            };
            write(&dir, "cgroup", &line);
        }

        fn cgroup(&self, path: &str, files: &[(&str, String)]) {
            let dir = self.cgfs.dir(path);
            fs::create_dir_all(&dir).expect("mkdir");
            for (name, text) in files {
                write(&dir, name, text);
            }
        }
    }

    const POD: &str = "/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7";

    /// A pod with a 64 MiB limit: a big process (adj 0), a small one with a
    /// high adj, a middling one with a low adj; a process outside the pod.
    fn pod_node(version: CgroupVersion) -> Node {
        let n = Node::new(version);
        let c1 = format!("{POD}/{}", "a".repeat(64));
        let c2 = format!("{POD}/{}", "b".repeat(64));
        let (limit_file, limit) = match version {
            CgroupVersion::V1 => (
                "memory.limit_in_bytes",
                data("host-6.18.v1-swap.memory.limit_in_bytes"),
            ),
            CgroupVersion::V2 => ("memory.max", "67108864\n".to_owned()),
        };
        n.cgroup(POD, &[(limit_file, limit)]);
        n.cgroup(&c1, &[]);
        n.cgroup(&c2, &[]);
        n.cgroup("/system.slice", &[]);
        n.process(101, "java", 40 << 10, 0, &c1);
        n.process(102, "sidecar", 2 << 10, 100, &c2);
        n.process(103, "worker", 12 << 10, 20, &c1);
        n.process(104, "pause", 1 << 10, -1000, POD);
        n.process(200, "journald", 300 << 10, 0, "/system.slice");
        n
    }

    #[test]
    fn a_pod_is_ranked_against_its_own_limit_not_the_node() {
        let n = pod_node(CgroupVersion::V1);
        // The memsw file of a v1 host with swap accounting: 96M, but no swap here.
        n.cgroup(
            POD,
            &[(
                "memory.memsw.limit_in_bytes",
                data("host-6.18.v1-swap.memory.memsw.limit_in_bytes"),
            )],
        );
        let r = collect_scope(&n.proc_root(), &n.cgfs, POD, &PathOnly).expect("ranked");
        let scope = r.scope.as_ref().expect("scope");
        assert_eq!(scope.totalpages, 16384, "64 MiB, the host has no swap");
        assert_eq!(scope.swap_bytes, 0);
        let order: Vec<(u32, Option<usize>, Option<i64>)> = r
            .entries
            .iter()
            .map(|e| (e.pid, e.rank, e.points))
            .collect();
        // java: 10240 pages + 12 of page tables; sidecar 512 + 12 + 100 * 16.
        assert_eq!(
            order,
            vec![
                (101, Some(1), Some(10240 + 12)),
                (103, Some(2), Some(3072 + 12 + 20 * 16)),
                (102, Some(3), Some(512 + 12 + 100 * 16)),
                (104, None, None),
            ],
            "journald is outside the pod"
        );
        // At node level the high-adj sidecar comes before java, the kernel's own oom_score says so.
        let node = collect(&n.proc_root(), &PathOnly).expect("node");
        let node_order: Vec<u32> = node.iter().map(|e| e.pid).collect();
        assert_eq!(node_order, vec![102, 103, 200, 101, 104]);
        assert!(
            r.entries
                .iter()
                .all(|e| e.oom_group.is_none() && !e.killed_with_first)
        );

        let text = render(&r, None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(&format!(
                "OOM in {POD}: scored against its limit 64 MiB + swap 0 B = 16384 pages (16 per"
            )),
            "{text}"
        );
        assert!(lines[1].contains("POINTS"), "{text}");
        assert!(
            lines[2].starts_with("    1     10252     0   40 MiB Burstable "),
            "{text}"
        );
        assert!(lines[5].starts_with("never         - -1000"), "{text}");
        assert!(
            text.contains("4 processes of /kubepods/burstable/pod8833712d"),
            "{text}"
        );
        for line in &lines[1..=5] {
            assert!(
                line.chars().count() <= 100,
                "{} columns: {line}",
                line.chars().count()
            );
        }
    }

    #[test]
    fn v2_swap_and_the_oom_group_that_dies_with_rank_1() {
        let n = pod_node(CgroupVersion::V2);
        let c1 = format!("{POD}/{}", "a".repeat(64));
        // 32 MiB of swap allowed on a node with 1 GiB of swap.
        let meminfo = data("host-6.18.meminfo.txt")
            .replace("SwapTotal:             0 kB", "SwapTotal:       1048576 kB");
        assert!(meminfo.contains("1048576"), "SwapTotal replaced");
        write(&n.proc_root(), "meminfo", &meminfo);
        n.cgroup(
            POD,
            &[
                ("memory.swap.max", "33554432\n".into()),
                ("memory.oom.group", "0\n".into()),
            ],
        );
        n.cgroup(&c1, &[("memory.oom.group", "1\n".into())]);
        let r = collect_scope(&n.proc_root(), &n.cgfs, POD, &PathOnly).expect("ranked");
        assert_eq!(r.scope.as_ref().map(|s| s.totalpages), Some(16384 + 8192));
        let rows: Vec<(u32, Option<&str>, bool)> = r
            .entries
            .iter()
            .map(|e| (e.pid, e.oom_group.as_deref(), e.killed_with_first))
            .collect();
        assert_eq!(
            rows,
            vec![
                (101, Some(c1.as_str()), true),
                (103, Some(c1.as_str()), true),
                (102, None, false),
                (104, None, false),
            ]
        );
        assert!(render(&r, None).contains("rank 1 takes 1 more processes with it (marked +)"));
        // With the flag on the pod too, the highest cgroup up to the OOM cgroup wins: the pod.
        n.cgroup(POD, &[("memory.oom.group", "1\n".into())]);
        let r = collect_scope(&n.proc_root(), &n.cgfs, POD, &PathOnly).expect("ranked");
        let killed: Vec<u32> = r
            .entries
            .iter()
            .filter(|e| e.killed_with_first)
            .map(|e| e.pid)
            .collect();
        assert_eq!(killed, vec![101, 103, 102], "all but the -1000 pause");
        // ... but not above the OOM cgroup: an OOM of the container cgroup takes only it.
        n.cgroup(&c1, &[("memory.max", "33554432\n".into())]);
        let r = collect_scope(&n.proc_root(), &n.cgfs, &c1, &PathOnly).expect("ranked");
        assert!(
            r.entries
                .iter()
                .all(|e| e.oom_group.as_deref() == Some(c1.as_str()))
        );
        // JSON rows.
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r.entries).expect("json")).expect("parse");
        let row = &json[0];
        for key in [
            "pid",
            "comm",
            "points",
            "oom_score_adj",
            "rss_bytes",
            "cgroup",
            "k8s",
            "oom_group",
            "killed_with_first",
            "oom_score",
            "group",
        ] {
            assert!(row.get(key).is_some(), "{key} in {row}");
        }
        assert_eq!(row["comm"], "java");
        assert_eq!(row["k8s"]["qos_class"], "Burstable");
    }

    #[test]
    fn an_unlimited_cgroup_names_its_nearest_limited_ancestor() {
        let n = pod_node(CgroupVersion::V1);
        let c1 = format!("{POD}/{}", "a".repeat(64));
        n.cgroup(
            &c1,
            &[(
                "memory.limit_in_bytes",
                data("host-6.18.v1-root.memory.limit_in_bytes"),
            )],
        );
        let err = collect_scope(&n.proc_root(), &n.cgfs, &c1, &PathOnly).expect_err("unlimited");
        assert!(
            err.to_string()
                .contains(&format!("rank that with --cgroup {POD}")),
            "{err}"
        );
    }

    struct Names;

    impl Resolve for Names {
        fn k8s(&self, cgroup: &str) -> Option<K8s> {
            PathOnly.k8s(cgroup)
        }
        fn pod_uids(&self, namespace: &str, pod: &str) -> Vec<String> {
            match (namespace, pod) {
                ("shop", "api-5c8d") => vec![
                    "00000000-dead-4000-8000-000000000000".into(),
                    "3e61aa2b-7c1d-4c7e-9d39-2c1f0a6b8e11".into(),
                ],
                _ => Vec::new(),
            }
        }
    }

    #[test]
    fn pod_and_allocatable_cgroups_are_found_by_the_identity_rules() {
        let n = Node::new(CgroupVersion::V2);
        // KERNEL-FACTS §6: systemd driver under a nested prefix (kind).
        let pod = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod3e61aa2b_7c1d_4c7e_9d39_2c1f0a6b8e11.slice";
        n.cgroup(
            &format!("{pod}/cri-containerd-{}.scope", "c".repeat(64)),
            &[],
        );
        n.cgroup("/system.slice/containerd.service", &[]);
        assert_eq!(
            pod_cgroup(&n.cgfs, "shop/api-5c8d", &Names).expect("found"),
            pod
        );
        assert!(matches!(
            pod_cgroup(&n.cgfs, "shop/other", &Names),
            Err(RankError::PodNotFound { .. })
        ));
        assert!(matches!(
            pod_cgroup(&n.cgfs, "api-5c8d", &Names),
            Err(RankError::BadPod(_))
        ));
        assert_eq!(
            find_cgroup(&n.cgfs, |p| identity::parse(p).level == Level::Kubepods).as_deref(),
            Some("/kubelet.slice/kubelet-kubepods.slice")
        );
        // The pod exists in the log directory but its cgroup is gone.
        fs::remove_dir_all(n.cgfs.dir("/kubelet.slice")).expect("rm");
        let err = pod_cgroup(&n.cgfs, "shop/api-5c8d", &Names).expect_err("gone");
        assert!(
            err.to_string()
                .contains("3e61aa2b-7c1d-4c7e-9d39-2c1f0a6b8e11"),
            "{err}"
        );
        // --cgroup takes the path or the directory.
        n.cgroup("/demo/app", &[]);
        let dir = n.cgfs.dir("/demo/app").display().to_string();
        assert_eq!(cgroup_arg(&n.cgfs, &dir).expect("dir"), "/demo/app");
        assert_eq!(cgroup_arg(&n.cgfs, "demo/app/").expect("rel"), "/demo/app");
        assert!(matches!(
            cgroup_arg(&n.cgfs, "/nope"),
            Err(RankError::NoCgroup { .. })
        ));
    }

    fn entry(pid: u32, score: u32, adj: i32, points: Option<i64>) -> RankEntry {
        RankEntry {
            rank: None,
            points,
            oom_score: score,
            oom_score_adj: adj,
            rss_bytes: 3 << 20,
            swap_bytes: 0,
            pgtables_bytes: 0,
            badness_pages: points,
            unkillable: adj == -1000,
            pid,
            comm: format!("proc{pid}"),
            cgroup: Some("/system.slice/foo.service".into()),
            group: "/system.slice/foo.service".into(),
            k8s: None,
            oom_group: None,
            killed_with_first: false,
        }
    }

    #[test]
    fn order_score_then_badness_unkillable_last() {
        let mut v = vec![
            entry(1, 0, -1000, None),
            entry(2, 666, 0, Some(10)),
            entry(3, 1323, 985, Some(5)),
            entry(4, 666, 0, Some(20)),
        ];
        sort_and_rank(&mut v);
        let order: Vec<(u32, Option<usize>)> = v.iter().map(|e| (e.pid, e.rank)).collect();
        assert_eq!(
            order,
            vec![(3, Some(1)), (4, Some(2)), (2, Some(3)), (1, None)]
        );
        // Within a cgroup the points decide, whatever the node-level score.
        sort_by_points(&mut v);
        let order: Vec<u32> = v.iter().map(|e| e.pid).collect();
        assert_eq!(order, vec![4, 2, 3, 1]);
    }

    #[test]
    fn text_fits_100_columns_and_marks_unkillable() {
        let mut v = vec![
            entry(1, 0, -1000, None),
            entry(4_194_304, 1333, 1000, Some(1)),
        ];
        v[1].comm = "a-very-long-command-name".into();
        v[1].group = "some-namespace/a-pod-with-a-rather-long-generated-name-7d9f8".into();
        v[1].k8s = Some(K8s {
            qos_class: Some("BestEffort".into()),
            container_id: Some("a".repeat(64)),
            ..K8s::default()
        });
        sort_and_rank(&mut v);
        let text = render_text(&v, None);
        for line in text.lines().take(3) {
            assert!(
                line.chars().count() <= 100,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("    1  1333  1000"), "{}", lines[1]);
        assert!(
            lines[1].contains("BestEffort") && lines[1].contains("aaaaaaaaaaaa "),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("never     0 -1000"), "{}", lines[2]);
        assert!(render_text(&v, Some(1)).contains("showing 1, --all"));
    }

    #[test]
    fn json_is_one_document_with_the_group() {
        let mut v = vec![entry(7, 666, 0, Some(3))];
        sort_and_rank(&mut v);
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&v).expect("json")).expect("parse");
        assert_eq!(json[0]["rank"], 1);
        assert_eq!(json[0]["points"], 3);
        assert_eq!(json[0]["group"], "/system.slice/foo.service");
        assert_eq!(json[0]["k8s"], serde_json::Value::Null);
    }
}
