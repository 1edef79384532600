//! `oomtrace rank` against real processes on the host (cgroup v1):
//!
//! - node level, in a kubelet-shaped hierarchy: the ranking must follow the
//!   kernel's own `/proc/<pid>/oom_score` and name each process's QoS class,
//!   pod and container;
//! - one cgroup (`--cgroup`): rank 1 must be the process the kernel kills
//!   when that cgroup is pushed past its limit (one real memory-cgroup OOM
//!   kill, never a node-level one).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::support::{
    Memcg, is_v2, killed_by_sigkill, pid_of, rank_json, spawn_grower_until_any_killed,
    spawn_holder, spawn_in, wait_for_comm, wait_rss,
};
use oomtrace::cmd::rank::{self, PathOnly};

const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// Kills the processes and removes the cgroups (deepest first), also when
/// the test fails.
struct Guard {
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut dirs = self.dirs.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(&d);
        }
    }
}

impl Guard {
    fn mkdir_all(&mut self, path: &Path) {
        let mut cur = PathBuf::new();
        for c in path.components() {
            cur.push(c);
            if !cur.exists() {
                fs::create_dir(&cur).unwrap_or_else(|e| panic!("mkdir {}: {e}", cur.display()));
                self.dirs.push(cur.clone());
            }
        }
    }
}

struct Case {
    /// Path below the test prefix.
    rel: String,
    qos: &'static str,
    pod_uid: String,
    container_id: String,
    adj: i32,
}

#[test]
#[ignore = "privileged: needs root and cgroup v1 memory; run by cargo xtask test"]
fn rank_follows_the_kernels_oom_score_in_a_kubelet_hierarchy() {
    let pid = std::process::id();
    let prefix = format!("oomtrace-test-rank-{pid}");
    let uid = |n: u32| format!("{pid:08x}-{n:04x}-4000-8000-00000000{n:04x}");
    let cid = |n: u32| format!("{pid:08x}{n:056x}");
    // oom_score_adj as the kubelet sets it (KERNEL-FACTS §5): BestEffort 1000,
    // Burstable 1000 - 1000*request/capacity (985: 256Mi of 16Gi; 500: half the
    // node). A Guaranteed pod gets -997, which this session cannot write
    // (no CAP_SYS_RESOURCE: negative values fail with EACCES), so the
    // stand-in uses 2, below every Burstable value (the kubelet clamps those to >= 3).
    let cases = [
        Case {
            rel: format!("kubepods/burstable/pod{}/{}", uid(1), cid(1)),
            qos: "Burstable",
            pod_uid: uid(1),
            container_id: cid(1),
            adj: 985,
        },
        Case {
            rel: format!("kubepods/besteffort/pod{}/{}", uid(2), cid(2)),
            qos: "BestEffort",
            pod_uid: uid(2),
            container_id: cid(2),
            adj: 1000,
        },
        Case {
            rel: format!("kubepods/pod{}/{}", uid(3), cid(3)),
            qos: "Guaranteed",
            pod_uid: uid(3),
            container_id: cid(3),
            adj: 2,
        },
        Case {
            rel: format!("kubepods/burstable/pod{}/{}", uid(4), cid(4)),
            qos: "Burstable",
            pod_uid: uid(4),
            container_id: cid(4),
            adj: 500,
        },
    ];

    let mut guard = Guard {
        children: Vec::new(),
        dirs: Vec::new(),
    };
    let mut pids = Vec::new();
    for case in &cases {
        let dir = Path::new(MEMORY_ROOT).join(&prefix).join(&case.rel);
        guard.mkdir_all(&dir);
        let child = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let child_pid = child.id();
        guard.children.push(child);
        fs::write(dir.join("cgroup.procs"), child_pid.to_string())
            .expect("move sleep into its container cgroup");
        fs::write(
            format!("/proc/{child_pid}/oom_score_adj"),
            case.adj.to_string(),
        )
        .expect("set oom_score_adj");
        pids.push(child_pid);
    }

    let start = Instant::now();
    let entries = rank::collect(Path::new("/proc"), &PathOnly).expect("collect");
    eprintln!(
        "rank::collect over {} processes: {:?}",
        entries.len(),
        start.elapsed()
    );

    let kernel_score = |p: u32| -> u32 {
        fs::read_to_string(format!("/proc/{p}/oom_score"))
            .expect("oom_score")
            .trim()
            .parse()
            .expect("number")
    };
    let ours: Vec<&rank::RankEntry> = entries.iter().filter(|e| pids.contains(&e.pid)).collect();
    assert_eq!(
        ours.len(),
        cases.len(),
        "every test process is ranked: {ours:#?}"
    );

    // Same relative order as the kernel's oom_score, and the ranks say so.
    let mut by_kernel = pids.clone();
    by_kernel.sort_by_key(|&p| std::cmp::Reverse(kernel_score(p)));
    let ranked: Vec<u32> = ours.iter().map(|e| e.pid).collect();
    assert_eq!(
        ranked, by_kernel,
        "kill order differs from /proc/<pid>/oom_score"
    );
    assert!(
        ours.windows(2)
            .all(|w| w[0].rank < w[1].rank && w[0].rank.is_some())
    );
    // Distinct adj values give distinct scores: BestEffort, 985, 500, stand-in Guaranteed.
    let adjs: Vec<i32> = ours.iter().map(|e| e.oom_score_adj).collect();
    assert_eq!(adjs, vec![1000, 985, 500, 2]);

    for e in &ours {
        let case = &cases[pids.iter().position(|&p| p == e.pid).expect("ours")];
        assert_eq!(
            e.oom_score,
            kernel_score(e.pid),
            "oom_score is the kernel's"
        );
        assert_eq!(
            e.cgroup.as_deref(),
            Some(format!("/{prefix}/{}", case.rel).as_str())
        );
        let k8s = e
            .k8s
            .as_ref()
            .unwrap_or_else(|| panic!("{} not recognised as a pod: {e:#?}", e.pid));
        assert_eq!(k8s.qos_class.as_deref(), Some(case.qos), "{e:#?}");
        assert_eq!(k8s.pod_uid.as_deref(), Some(case.pod_uid.as_str()));
        assert_eq!(
            k8s.container_id.as_deref(),
            Some(case.container_id.as_str())
        );
        assert_eq!(e.group, format!("pod/{}", case.pod_uid));
        assert_eq!(e.comm, "sleep");
    }

    let text = rank::render_text(&entries, None);
    let first = text
        .lines()
        .find(|l| l.contains(&format!(" {} sleep", by_kernel[0])))
        .expect("row of the first test process");
    assert!(
        first.contains("BestEffort") && first.contains(" 1000 "),
        "{first}"
    );
    eprintln!("{}", text.lines().take(8).collect::<Vec<_>>().join("\n"));
}

/// OOM kills counted in a subtree: v1 counts each kill in the victim's own
/// cgroup only, v2 counts it in every ancestor too.
fn subtree_kills(top: &Memcg, children: &[&Memcg]) -> u64 {
    if is_v2(&top.root) {
        top.oom_kills()
    } else {
        top.oom_kills() + children.iter().map(|c| c.oom_kills()).sum::<u64>()
    }
}

#[test]
#[ignore = "privileged: needs root and a memory cgroup, causes one memory-cgroup OOM kill; run by cargo xtask test"]
fn rank_of_a_cgroup_names_the_process_the_kernel_kills_first() {
    let cg = Memcg::unique("rank-scope");
    let (big_cg, small_cg, hog_cg) = (cg.child("big"), cg.child("small"), cg.child("hog"));
    // 160 MiB: 40960 pages, so each oom_score_adj point is worth 40 pages
    // here, against 6000 on a 24 GiB node.
    cg.set_limit(160 << 20);
    // Positive adjustments only: this host has no CAP_SYS_RESOURCE.
    let mut big = spawn_holder(&big_cg, 0, 80);
    let mut high = spawn_holder(&small_cg, 300, 4);
    let mut mid = spawn_holder(&small_cg, 100, 20);
    let mut sleeper = spawn_in(&small_cg, 400, "sleep 3600");
    wait_rss(big.id(), 80 << 10);
    wait_rss(high.id(), 4 << 10);
    wait_rss(mid.id(), 20 << 10);
    wait_for_comm(sleeper.id(), "sleep");
    let pids = [big.id(), high.id(), mid.id(), sleeper.id()];

    let rows = rank_json(&["--cgroup", &cg.rel]);
    let listed: Vec<u32> = rows.iter().map(pid_of).collect();
    eprintln!(
        "rank --cgroup {}:\n{}",
        cg.rel,
        rows.iter()
            .map(|r| format!(
                "  rank {} points {} adj {} rss {} pid {} {}",
                r["rank"], r["points"], r["oom_score_adj"], r["rss_bytes"], r["pid"], r["cgroup"]
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    let mut want = pids.to_vec();
    want.sort_unstable();
    assert_eq!(sorted, want, "exactly the subtree's processes: {rows:?}");
    assert_eq!(
        listed[0],
        big.id(),
        "the big adj-0 process is rank 1: {rows:?}"
    );
    assert_eq!(rows[0]["rank"], 1);
    for r in &rows {
        for key in [
            "pid",
            "comm",
            "points",
            "oom_score_adj",
            "rss_bytes",
            "cgroup",
            "k8s",
        ] {
            assert!(r.get(key).is_some(), "{key} in {r}");
        }
        assert!(
            r["cgroup"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{}/", cg.rel))),
            "{r}"
        );
    }
    // A clear margin, so that the kill below cannot go the other way by noise.
    let points = |i: usize| rows[i]["points"].as_i64().expect("points");
    assert!(points(0) > points(1) + 2048, "{rows:?}");

    // Against the whole node (oom_score), the adjustments win: the sleeper
    // (adj 400) comes first and the big process last. That ranking would be wrong here.
    let node: Vec<u32> = rank_json(&[])
        .iter()
        .map(pid_of)
        .filter(|p| pids.contains(p))
        .collect();
    assert_eq!(node.first(), Some(&sleeper.id()), "node order {node:?}");
    assert_eq!(node.last(), Some(&big.id()), "node order {node:?}");

    // Push the cgroup past its limit with a new process (adj 200: at most
    // ~24 MiB + 200 * 40 pages when the limit is hit, far below rank 1).
    let before = subtree_kills(&cg, &[&big_cg, &small_cg, &hog_cg]);
    let mut hog = spawn_grower_until_any_killed(&hog_cg, 200, 256, &pids);
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let mut dead = None;
        for (i, c) in [&mut big, &mut high, &mut mid, &mut sleeper]
            .into_iter()
            .enumerate()
        {
            if let Some(st) = c.try_wait().expect("try_wait") {
                dead = Some((i, st));
            }
        }
        if let Some(d) = dead {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "no OOM kill within 60 s of pushing {} past its limit",
            cg.rel
        );
        thread::sleep(Duration::from_millis(20));
    };
    // Let a second kill, if the kernel made one, be counted before looking.
    thread::sleep(Duration::from_millis(500));
    let kills = subtree_kills(&cg, &[&big_cg, &small_cg, &hog_cg]) - before;
    assert_eq!(
        pids[victim.0],
        big.id(),
        "the kernel's first victim is rank 1 (it killed pid {})",
        pids[victim.0]
    );
    assert!(killed_by_sigkill(&victim.1), "{:?}", victim.1);
    assert_eq!(kills, 1, "one OOM kill counted in {}", cg.rel);
    for c in [&mut high, &mut mid, &mut sleeper, &mut hog] {
        assert_eq!(
            c.try_wait().expect("try_wait"),
            None,
            "pid {} survived",
            c.id()
        );
    }
    eprintln!(
        "memory.oom_control counted {kills} kill; the kernel killed pid {} (rank 1 of {}), the node-level order was {node:?}",
        big.id(),
        cg.rel
    );
    for c in [&mut high, &mut mid, &mut sleeper, &mut hog] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
