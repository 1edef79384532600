//! Node memory at the moment that matters: snapshots of the node's memory
//! and its largest consumers, kept by a watch thread.
//!
//! By the time a kill is reported the victim's memory is freed, and a
//! node-level OOM may have killed the hog too (a snapshot taken during that
//! second kill reads /proc/meminfo before the reaper and the cgroups after
//! it). So the watch keeps snapshots taken under memory pressure (every
//! second below 20% available, four times a second below 10%) and when a kill
//! is first seen, and the report takes the one whose top consumers held the
//! most within its window.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        mpsc::{self, RecvTimeoutError, SyncSender},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    capture::kmsg::OomLine,
    capture::{Input, KmsgSighting},
    cgroupfs::CgroupFs,
    enrich::identity::{self, Level},
    enrich::node,
    enrich::podnames::PodNames,
    report::NodeMemory,
};

/// Snapshots kept at most.
const KEEP: usize = 32;
/// How often the watch looks at available memory.
const PRESSURE_POLL: Duration = Duration::from_millis(100);
/// How often it looks while [`PLENTY`] or more is available: falling from
/// there to the first snapshot's 20% takes allocating a fifth of the node's
/// memory, several seconds even for a fast leak.
const PLENTY_POLL: Duration = Duration::from_secs(1);
/// "Plenty": 40% of the node's memory available.
const PLENTY: (u64, u64) = (2, 5);
/// At most one snapshot per this interval for kills first seen.
const SIGHTING_INTERVAL: Duration = Duration::from_millis(250);

/// How to take a snapshot.
pub struct SnapshotConfig {
    pub cgfs: CgroupFs,
    pub proc_root: PathBuf,
    /// Consumers listed.
    pub top: usize,
    pub pod_logs: PathBuf,
    pub container_logs: PathBuf,
    /// How old a snapshot may be to describe a kill being reported.
    pub max_age: Duration,
}

struct Shared {
    kept: VecDeque<(Instant, NodeMemory)>,
    taker: Taker,
}

/// Takes snapshots: reads meminfo, PSI and the cgroup tree.
struct Taker {
    cgfs: CgroupFs,
    proc_root: PathBuf,
    top: usize,
    names: PodNames,
}

impl Taker {
    fn take(&mut self) -> NodeMemory {
        let names = std::cell::RefCell::new(&mut self.names);
        node::node_memory(&self.cgfs, &self.proc_root, self.top, |path| {
            consumer_name(path, &mut names.borrow_mut())
        })
    }
}

/// A consumer's display name (`namespace/pod` for pods) and QoS class.
fn consumer_name(path: &str, names: &mut PodNames) -> (String, Option<String>) {
    let id = identity::parse(path);
    let qos = id.qos.map(|q| q.as_str().to_string());
    match id.pod_uid.as_deref() {
        Some(uid) => match names.lookup(uid, None) {
            Some(n) => (format!("{}/{}", n.namespace, n.pod), qos),
            None => (format!("pod {uid}"), qos),
        },
        None => (path.to_string(), qos),
    }
}

/// The handle the agent and the enrichment stage share.
#[derive(Clone)]
pub struct NodeSnapshots {
    shared: Arc<Mutex<Shared>>,
    max_age: Duration,
    poke: SyncSender<Instant>,
}

impl NodeSnapshots {
    /// Starts the watch thread; it ends when every handle is dropped.
    pub fn spawn(cfg: SnapshotConfig) -> std::io::Result<Self> {
        let taker = Taker {
            cgfs: cfg.cgfs,
            proc_root: cfg.proc_root.clone(),
            top: cfg.top,
            names: PodNames::new()
                .with_pods_dir(cfg.pod_logs)
                .with_containers_dir(cfg.container_logs),
        };
        let shared = Arc::new(Mutex::new(Shared {
            kept: VecDeque::new(),
            taker,
        }));
        let (poke, pokes) = mpsc::sync_channel(64);
        let watch = Arc::clone(&shared);
        let proc_root = cfg.proc_root.clone();
        thread::Builder::new()
            .name("node-watch".into())
            .spawn(move || watch_loop(&watch, &pokes, &proc_root))?;
        Ok(Self {
            shared,
            max_age: cfg.max_age,
            poke,
        })
    }

    /// A kill was first seen: keep a snapshot soon (never blocks).
    pub fn kill_seen(&self, at: Instant) {
        let _ = self.poke.try_send(at);
    }

    /// The snapshot that best describes a kill being reported now: the one
    /// whose top consumers held the most within the window, else one taken now.
    pub fn for_report(&self) -> NodeMemory {
        let Ok(mut s) = self.shared.lock() else {
            return NodeMemory::default();
        };
        let window = self.max_age;
        let best = s
            .kept
            .iter()
            .filter(|(t, _)| t.elapsed() < window)
            .max_by_key(|(_, m)| m.top.iter().map(|c| c.usage_bytes).sum::<u64>())
            .map(|(_, m)| m.clone());
        best.unwrap_or_else(|| {
            let snap = s.taker.take();
            keep(&mut s.kept, Instant::now(), snap.clone());
            snap
        })
    }
}

fn keep(kept: &mut VecDeque<(Instant, NodeMemory)>, at: Instant, snap: NodeMemory) {
    kept.push_back((at, snap));
    while kept.len() > KEEP {
        kept.pop_front();
    }
}

fn watch_loop(
    shared: &Mutex<Shared>,
    pokes: &mpsc::Receiver<Instant>,
    proc_root: &std::path::Path,
) {
    let mut warned = false;
    let mut poll = PRESSURE_POLL;
    loop {
        let interval = match pokes.recv_timeout(poll) {
            Ok(_) => Some(SIGHTING_INTERVAL),
            Err(RecvTimeoutError::Timeout) => match node::read_meminfo(proc_root) {
                Ok(m) => {
                    let memory = m.total_bytes.zip(m.available_bytes);
                    poll = poll_period(memory);
                    memory.and_then(|(total, avail)| pressure_interval(total, avail))
                }
                Err(e) => {
                    if !warned {
                        warn!(
                            "node memory watch: {e}; node context comes only from reads at report time"
                        );
                        warned = true;
                    }
                    None
                }
            },
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(interval) = interval else {
            continue;
        };
        let now = Instant::now();
        let Ok(mut s) = shared.lock() else {
            return;
        };
        if s.kept
            .back()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < interval)
        {
            continue;
        }
        let snap = s.taker.take();
        keep(&mut s.kept, now, snap);
    }
}

/// Whether a first sighting says the kill may be node-level or at the
/// node's allocatable (the kubepods cgroup or a QoS level), or is a kill by
/// a userspace OOM killer or the kubelet: the kills whose
/// report lists the node's largest consumers, so the moment is worth a
/// snapshot (a walk of the cgroup tree). A container or pod limit is not.
pub fn worth_a_snapshot(input: &Input) -> bool {
    let allocatable =
        |path: &str| matches!(identity::parse(path).level, Level::Kubepods | Level::Qos);
    match input {
        Input::TpBtf(task) => task
            .walk
            .as_ref()
            .is_some_and(|w| w.at_limit().is_none_or(|l| allocatable(&l.path))),
        Input::Decision(d) => {
            !d.memcg
                || d.domain
                    .as_ref()
                    .and_then(|w| w.leaf())
                    .is_some_and(|l| allocatable(&l.path))
        }
        // A kill replayed from the log after a restart is long past: the
        // node now says nothing about it.
        Input::Kmsg(KmsgSighting { replayed: true, .. }) => false,
        Input::Kmsg(KmsgSighting { line, .. }) => match line {
            OomLine::Killed { global, .. } => *global,
            OomLine::Summary {
                global, oom_memcg, ..
            } => *global || oom_memcg.as_deref().is_some_and(allocatable),
            OomLine::TaskInMemcg { limit_cgroup, .. } => allocatable(limit_cgroup),
            _ => false,
        },
        // Userspace OOM killers and the kubelet act on node memory pressure.
        Input::KillerSignal(_) | Input::Eviction(_) => true,
        _ => false,
    }
}

/// How long the watch waits before it looks again, given (total,
/// available) bytes: [`PLENTY_POLL`] with plenty available, else
/// [`PRESSURE_POLL`] (also when meminfo says neither).
fn poll_period(memory: Option<(u64, u64)>) -> Duration {
    let (num, den) = PLENTY;
    match memory {
        Some((total, avail))
            if total > 0 && avail.saturating_mul(den) >= total.saturating_mul(num) =>
        {
            PLENTY_POLL
        }
        _ => PRESSURE_POLL,
    }
}

/// How often to keep node snapshots with `avail` of `total` bytes available:
/// every second below 20%, four times a second below 10%.
fn pressure_interval(total: u64, avail: u64) -> Option<Duration> {
    if avail.saturating_mul(10) < total {
        Some(Duration::from_millis(250))
    } else if avail.saturating_mul(5) < total {
        Some(Duration::from_secs(1))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::capture::kmsg::parse_oom_line;

    fn kmsg(line: &str) -> Input {
        Input::Kmsg(KmsgSighting {
            seq: 1,
            ts_usec: 1,
            line: parse_oom_line(line).expect("an OOM line"),
            received: Instant::now(),
            replayed: false,
        })
    }

    #[test]
    fn only_node_and_allocatable_kills_walk_the_cgroup_tree() {
        // Real lines of the host's kubepods recording and a 6.16 global OOM.
        let container = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomtrace-sample/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a,task_memcg=/oomtrace-sample/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a,task=dd,pid=17469,uid=0";
        let allocatable = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomtrace-sample/kubepods,task_memcg=/oomtrace-sample/kubepods/besteffort/pod3e61aa2b-7c1d-4c7e-9d39-2c1f0a6b8e11/9c1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d,task=dd,pid=17473,uid=0";
        let memcg_kill = "Memory cgroup out of memory: Killed process 17469 (dd) total-vm:134048kB, anon-rss:32512kB, file-rss:1684kB, shmem-rss:0kB, UID:0 pgtables:124kB oom_score_adj:985";
        let global_kill = "Out of memory: Killed process 2423 (python3) total-vm:221368kB, anon-rss:50816kB, file-rss:6584kB, shmem-rss:0kB, UID:0 pgtables:156kB oom_score_adj:985";
        assert!(!worth_a_snapshot(&kmsg(container)));
        assert!(worth_a_snapshot(&kmsg(allocatable)));
        assert!(!worth_a_snapshot(&kmsg(memcg_kill)));
        assert!(worth_a_snapshot(&kmsg(global_kill)));
    }

    #[test]
    fn node_snapshots_come_faster_as_available_memory_shrinks() {
        // MemTotal and MemAvailable of the 512 MiB test VM, idle and near its OOM.
        let total = 483_454_976;
        assert_eq!(pressure_interval(total, 379_609_088), None);
        assert_eq!(
            pressure_interval(total, 90 << 20),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            pressure_interval(total, 30 << 20),
            Some(Duration::from_millis(250))
        );
        assert_eq!(pressure_interval(0, 0), None, "no MemTotal: no pressure");
    }

    #[test]
    fn the_watch_looks_less_often_with_plenty_available() {
        // The same VM: idle (78% available), and at 40% and below.
        let total = 483_454_976;
        assert_eq!(poll_period(Some((total, 379_609_088))), PLENTY_POLL);
        assert_eq!(poll_period(Some((total, total / 5 * 2))), PRESSURE_POLL);
        assert_eq!(poll_period(Some((total, 90 << 20))), PRESSURE_POLL);
        assert_eq!(poll_period(None), PRESSURE_POLL, "meminfo unreadable");
        assert_eq!(poll_period(Some((0, 0))), PRESSURE_POLL);
    }
}
