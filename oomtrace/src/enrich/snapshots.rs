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
    identity,
    node::{self, CgroupFs},
    podnames::PodNames,
    report::NodeMemory,
};

/// Snapshots kept at most.
const KEEP: usize = 32;
/// How often the watch looks at available memory.
const PRESSURE_POLL: Duration = Duration::from_millis(100);
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
    loop {
        let interval = match pokes.recv_timeout(PRESSURE_POLL) {
            Ok(_) => Some(SIGHTING_INTERVAL),
            Err(RecvTimeoutError::Timeout) => match node::read_meminfo(proc_root) {
                Ok(m) => m
                    .total_bytes
                    .zip(m.available_bytes)
                    .and_then(|(total, avail)| pressure_interval(total, avail)),
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
    use super::*;

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
}
