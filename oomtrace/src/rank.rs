//! Who dies next: the order in which the kernel would kill in a node-level
//! OOM, now (`oomtrace rank`).
//!
//! For every process with memory (kernel threads and zombies have none and
//! are never chosen), reads the kernel's own `oom_score`, `oom_score_adj`,
//! RSS, swap and page tables, and the memory cgroup; sorts by `oom_score`
//! (ties by the badness estimate of KERNEL-FACTS §4) and names each process's
//! pod, container and QoS class. `oom_score_adj == -1000` is never killed:
//! such processes are listed last and marked.

use std::{
    collections::HashMap,
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{identity, node, podnames::PodNames, report::K8s};

/// `PF_KTHREAD` in `/proc/<pid>/stat` field 9 (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;
/// `OOM_SCORE_ADJ_MIN`: never killed.
pub const OOM_SCORE_ADJ_MIN: i32 = -1000;
/// Rows shown by default.
pub const DEFAULT_LIMIT: usize = 30;

/// Errors of `oomtrace rank`.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error(
        "cannot list processes in {path}: {source}; mount the host's /proc there or pass --proc-root"
    )]
    ListProc { path: PathBuf, source: io::Error },
    #[error(
        "cannot read {path}: {source}; oomtrace rank needs the host's /proc (pass --proc-root)"
    )]
    MemInfo { path: PathBuf, source: io::Error },
    #[error("{path} has no MemTotal line: pass the host's /proc with --proc-root")]
    NoMemTotal { path: PathBuf },
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
    /// One JSON document: the list of entries.
    Json,
}

/// `oomtrace rank`: the order in which the kernel would kill in a node-level OOM, now.
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
}

/// One process, in kill order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankEntry {
    /// 1 = killed first; `null` for unkillable processes (`oom_score_adj` -1000).
    pub rank: Option<usize>,
    /// The kernel's `/proc/<pid>/oom_score` (0..1333 on kernels since 5.9: 2/3 of 1000 + badness per mille).
    pub oom_score: u32,
    pub oom_score_adj: i32,
    /// Resident memory (anon + file + shmem), bytes.
    pub rss_bytes: u64,
    pub swap_bytes: u64,
    pub pgtables_bytes: u64,
    /// The kernel's badness in pages, estimated from the figures above
    /// (`null` for unkillable processes).
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
}

/// Names the processes of a memory cgroup. The default, [`PathOnly`], reads
/// what the path says; the agent wires in pod names from the node.
pub trait Resolve {
    /// The Kubernetes identity of processes in `cgroup`; `None` when not a pod.
    fn k8s(&self, cgroup: &str) -> Option<K8s>;
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
}

/// What `/proc/<pid>/status` says about a process's memory, in kB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusMem {
    /// `None` when the process has no mm (kernel thread, zombie).
    pub rss_kb: Option<u64>,
    pub swap_kb: u64,
    pub pgtables_kb: u64,
}

/// `/proc/<pid>/stat`: (comm, flags). The comm is between the first `(` and
/// the last `)`, since it may hold both.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After ") ": state ppid pgrp session tty_nr tpgid flags
    let flags = text
        .get(close + 1..)?
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()?;
    Some((comm, flags))
}

/// Whether `/proc/<pid>/stat` flags mark a kernel thread.
pub fn is_kthread(flags: u64) -> bool {
    flags & PF_KTHREAD != 0
}

/// `/proc/<pid>/status`: VmRSS, VmSwap, VmPTE.
pub fn parse_status(text: &str) -> StatusMem {
    let mut m = StatusMem::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kb = || {
            rest.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        };
        match key {
            "VmRSS" => m.rss_kb = kb(),
            "VmSwap" => m.swap_kb = kb().unwrap_or(0),
            "VmPTE" => m.pgtables_kb = kb().unwrap_or(0),
            _ => {}
        }
    }
    m
}

/// The memory cgroup of `/proc/<pid>/cgroup`: the v1 line whose controllers
/// include `memory`, else the v2 `0::` line.
pub fn parse_cgroup(text: &str) -> Option<String> {
    let mut v2 = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some(path.to_owned());
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_owned());
        }
    }
    v2
}

/// The kernel's `oom_badness()` (mm/oom_kill.c) in pages: rss, plus swap
/// entries, plus page-table pages, plus `adj * (totalpages / 1000)`; `None`
/// for -1000 (never).
/// `totalpages` is RAM + swap in pages for a node-level OOM.
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

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

/// Reads every process of `proc_root` (normally `/proc`) and returns them in
/// the order the kernel would kill them in a node-level OOM.
///
/// Processes that exit while being read are skipped. `resolve` names each
/// memory cgroup once.
pub fn collect(proc_root: &Path, resolve: &dyn Resolve) -> Result<Vec<RankEntry>, RankError> {
    let meminfo_path = proc_root.join("meminfo");
    let text = fs::read_to_string(&meminfo_path).map_err(|source| RankError::MemInfo {
        path: meminfo_path.clone(),
        source,
    })?;
    let mem = node::meminfo(&text);
    let page = page_size();
    let total_bytes = mem
        .total_bytes
        .ok_or(RankError::NoMemTotal { path: meminfo_path })?;
    let totalpages = (total_bytes + mem.swap_total_bytes.unwrap_or(0)) / page;

    let dir = fs::read_dir(proc_root).map_err(|source| RankError::ListProc {
        path: proc_root.to_owned(),
        source,
    })?;
    let mut names: HashMap<String, Option<K8s>> = HashMap::new();
    let mut entries = Vec::new();
    for ent in dir.filter_map(Result::ok) {
        let Some(pid) = ent.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Some(mut e) = read_process(&ent.path(), pid, page, totalpages) else {
            continue;
        };
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
    sort_and_rank(&mut entries);
    Ok(entries)
}

fn read_process(dir: &Path, pid: u32, page: u64, totalpages: u64) -> Option<RankEntry> {
    let (comm, flags) = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
    if is_kthread(flags) {
        return None;
    }
    let mem = parse_status(&fs::read_to_string(dir.join("status")).ok()?);
    let rss_kb = mem.rss_kb?; // no mm: never chosen
    let oom_score_adj: i32 = fs::read_to_string(dir.join("oom_score_adj"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let oom_score: u32 = fs::read_to_string(dir.join("oom_score"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cgroup = fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|t| parse_cgroup(&t));
    let kb_pages = |kb: u64| kb * 1024 / page;
    let badness_pages = badness(
        kb_pages(rss_kb),
        kb_pages(mem.swap_kb),
        kb_pages(mem.pgtables_kb),
        oom_score_adj,
        totalpages,
    );
    Some(RankEntry {
        rank: None,
        oom_score,
        oom_score_adj,
        rss_bytes: rss_kb * 1024,
        swap_bytes: mem.swap_kb * 1024,
        pgtables_bytes: mem.pgtables_kb * 1024,
        badness_pages,
        unkillable: oom_score_adj <= OOM_SCORE_ADJ_MIN,
        pid,
        comm,
        cgroup,
        group: String::new(),
        k8s: None,
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

/// Kill order: killable before unkillable, `oom_score` descending, then the
/// badness estimate, then pid. Sets `rank` (1-based) on killable entries.
pub fn sort_and_rank(entries: &mut [RankEntry]) {
    entries.sort_by(|a, b| {
        a.unkillable
            .cmp(&b.unkillable)
            .then(b.oom_score.cmp(&a.oom_score))
            .then(b.badness_pages.cmp(&a.badness_pages))
            .then(a.pid.cmp(&b.pid))
    });
    for (i, e) in entries.iter_mut().enumerate() {
        e.rank = (!e.unkillable).then_some(i + 1);
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "Ki", "Mi", "Gi", "Ti"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
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

/// The ranking as a table of at most 100 columns; `limit` rows (all when `None`).
pub fn render_text(entries: &[RankEntry], limit: Option<usize>) -> String {
    let shown = limit.unwrap_or(entries.len()).min(entries.len());
    let mut out = format!(
        "{:>5} {:>5} {:>5} {:>7} {:<10} {:<25} {:<13} {:>7} {}\n",
        "RANK", "SCORE", "ADJ", "RSS", "QOS", "NAMESPACE/POD", "CONTAINER", "PID", "COMM"
    );
    for e in &entries[..shown] {
        let rank = e.rank.map_or_else(|| "never".to_owned(), |r| r.to_string());
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
            "{:>5} {:>5} {:>5} {:>7} {:<10} {:<25} {:<13} {:>7} {}\n",
            rank,
            e.oom_score,
            e.oom_score_adj,
            human_bytes(e.rss_bytes + e.swap_bytes),
            qos,
            fit(&e.group, 25),
            fit(&container, 13),
            e.pid,
            fit(&e.comm, 15),
        ));
    }
    let unkillable = entries.iter().filter(|e| e.unkillable).count();
    out.push_str(&format!(
        "{} processes in kill order for a node-level OOM; {unkillable} unkillable (oom_score_adj -1000, rank \"never\") listed last",
        entries.len()
    ));
    if shown < entries.len() {
        out.push_str(&format!("; showing {shown}, --all for every process"));
    }
    out.push('\n');
    out
}

/// Runs `oomtrace rank` with identity from cgroup paths ([`PathOnly`]).
pub fn run(args: &RankArgs) -> Result<(), RankError> {
    run_with(args, &PathOnly)
}

/// Runs `oomtrace rank`, naming cgroups with `resolve`, and prints to stdout.
pub fn run_with(args: &RankArgs, resolve: &dyn Resolve) -> Result<(), RankError> {
    let entries = collect(&args.proc_root, resolve)?;
    let limit = if args.all {
        None
    } else {
        Some(args.limit.unwrap_or(DEFAULT_LIMIT))
    };
    let text = match args.format {
        RankFormat::Text => render_text(&entries, limit),
        RankFormat::Json => {
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
    use super::*;

    fn data(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/node")
            .join(name);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// totalpages of this host when the samples were taken (no swap, 4 KiB pages).
    fn host_totalpages() -> u64 {
        node::meminfo(&data("host-6.18.meminfo.txt"))
            .total_bytes
            .expect("MemTotal")
            / 4096
    }

    #[test]
    fn stat_of_a_process_and_a_kernel_thread() {
        let (comm, flags) = parse_stat(&data("host-6.18.proc-sleep.stat")).expect("stat");
        assert_eq!((comm.as_str(), is_kthread(flags)), ("sleep", false));
        let (comm, flags) = parse_stat(&data("host-6.18.proc-kthreadd.stat")).expect("stat");
        assert_eq!((comm.as_str(), is_kthread(flags)), ("kthreadd", true));
        assert!(data("host-6.18.proc-kthreadd.cmdline").is_empty());
        let (comm, flags) = parse_stat(&data("host-6.18.proc-paren-comm.stat")).expect("stat");
        assert_eq!((comm.as_str(), is_kthread(flags)), ("od) (x y", false));
    }

    #[test]
    fn status_memory() {
        let m = parse_status(&data("host-6.18.proc-sleep.status"));
        assert_eq!(
            m,
            StatusMem {
                rss_kb: Some(1788),
                swap_kb: 0,
                pgtables_kb: 48
            }
        );
        assert_eq!(
            parse_status(&data("host-6.18.proc-kthreadd.status")).rss_kb,
            None
        );
    }

    #[test]
    fn memory_cgroup_v1_and_v2() {
        assert_eq!(
            parse_cgroup(&data("host-6.18.proc-pid-cgroup.v1.txt")).as_deref(),
            Some("/oomtrace-capture-13480")
        );
        let v2 = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3e61aa2b_7c1d_4c7e_9d39_2c1f0a6b8e11.slice/cri-containerd-0123.scope\n";
        assert_eq!(parse_cgroup(v2).as_deref(), Some(&v2[3..v2.len() - 1]));
        assert_eq!(parse_cgroup(""), None);
    }

    #[test]
    fn badness_reproduces_the_kernels_oom_score() {
        let tp = host_totalpages();
        // sleep, adj 0: VmRSS 1788 kB, VmPTE 48 kB -> oom_score 666.
        let m = parse_status(&data("host-6.18.proc-sleep.status"));
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

    fn entry(pid: u32, score: u32, adj: i32, badness_pages: Option<i64>) -> RankEntry {
        RankEntry {
            rank: None,
            oom_score: score,
            oom_score_adj: adj,
            rss_bytes: 3 << 20,
            swap_bytes: 0,
            pgtables_bytes: 0,
            badness_pages,
            unkillable: adj == -1000,
            pid,
            comm: format!("proc{pid}"),
            cgroup: Some("/system.slice/foo.service".into()),
            group: "/system.slice/foo.service".into(),
            k8s: None,
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
        assert_eq!(json[0]["group"], "/system.slice/foo.service");
        assert_eq!(json[0]["k8s"], serde_json::Value::Null);
    }
}
