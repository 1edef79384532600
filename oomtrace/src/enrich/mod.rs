//! Enrichment: what the node knows about a correlated kill, added to it.
//!
//! - the wall-clock time and node name;
//! - usage and limits the kernel walk did not capture, read from the cgroup
//!   filesystem after the kill (and said so);
//! - the Kubernetes identity of the victim's cgroup ([`crate::enrich::identity`]),
//!   with namespace, pod and container names from the kubelet's log
//!   directories ([`crate::enrich::podnames`]) and, with `--kube`, labels, owner and
//!   memory requests from the API server ([`kube`]);
//! - the OOM domain and the kubelet oom_score_adj policy check ([`crate::enrich::qos`]);
//! - node memory and its largest consumers for node-level and allocatable
//!   kills ([`snapshots`]).
//!
//! Everything here may read files; it runs on its own thread, beside (never
//! in front of) the draining of the ring buffer and the kernel log.

pub mod identity;
pub mod kube;
pub mod node;
pub mod outcome;
pub mod podnames;
pub mod qos;
pub mod reported;
pub mod snapshots;

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use self::{identity::Identity, kube::PodMetadata, podnames::PodNames, snapshots::NodeSnapshots};
use crate::{
    cgroupfs::CgroupFs,
    correlate::Correlated,
    report::{Kill, OomDomain, Scope},
};

/// A kill with what enrichment learned, ready to be explained.
#[derive(Debug)]
pub struct Enriched {
    pub kill: Kill,
    /// What the victim's cgroup path says (`None` when its cgroup is unknown).
    pub identity: Option<Identity>,
}

/// The enrichment stage.
pub struct Enricher {
    pub node: String,
    pub cgfs: Option<CgroupFs>,
    /// The node's `/proc` (`--proc-root`): which survivors are dying.
    pub proc_root: PathBuf,
    pub pod_names: PodNames,
    /// The node's memory, in bytes (for the kubelet policy check).
    pub mem_total: Option<u64>,
    pub clock: WallClock,
    /// Node memory snapshots kept by the watch thread.
    pub snapshots: Option<NodeSnapshots>,
    /// `--kube`: the pod watch's cache.
    pub pods: Option<PodMetadata>,
}

impl Enricher {
    pub fn enrich(&mut self, c: Correlated) -> Enriched {
        let Correlated {
            mut kill, at_ns, ..
        } = c;
        kill.node = self.node.clone();
        kill.time = rfc3339(self.clock.wall_time(at_ns));
        // A replayed kill happened before this start: what the cgroup fs
        // and the node's memory say now says nothing about it.
        if !kill.replayed {
            self.read_late_usage(&mut kill);
            self.read_outcome(&mut kill);
            self.read_late_oom_stat(&mut kill);
        }
        let identity = kill.victim.cgroup.as_deref().map(identity::parse);
        self.name_pod(&mut kill, identity.as_ref());
        kill.oom_domain = oom_domain(&kill);
        if let (Some(adj), Some(id)) = (kill.victim.oom_score_adj, &identity)
            && id.is_pod()
        {
            kill.qos_check = Some(qos::check(id.qos, adj, self.mem_total));
        }
        if !kill.replayed
            && matches!(
                kill.oom_domain,
                Some(OomDomain::Node | OomDomain::NodeAllocatable)
            )
            && let Some(s) = &self.snapshots
        {
            kill.node_memory = Some(s.for_report());
        }
        if let Some(pods) = &self.pods {
            pods.enrich(&mut kill);
        }
        Enriched { kill, identity }
    }

    /// What the kernel walk did not give, read from the cgroup fs now (after the kill).
    fn read_late_usage(&self, kill: &mut Kill) {
        let Some(cgfs) = &self.cgfs else {
            return;
        };
        let mut read_late = false;
        if kill.memcg.victim_usage_bytes.is_none()
            && let Some(cg) = kill.victim.cgroup.as_deref()
        {
            kill.memcg.victim_usage_bytes = cgfs.usage(cg);
            kill.memcg.victim_limit_bytes = cgfs.limit(cg);
            read_late |= kill.memcg.victim_usage_bytes.is_some();
        }
        if kill.memcg.oom_usage_bytes.is_none()
            && let Some(cg) = kill.oom_cgroup.as_deref()
        {
            kill.memcg.oom_usage_bytes = cgfs.usage(cg);
            kill.memcg.oom_limit_bytes = cgfs.limit(cg);
            read_late |= kill.memcg.oom_usage_bytes.is_some();
        }
        if read_late {
            kill.missing.push(
                "memcg usage at kill time: read from the cgroup fs after the kill (no kernel walk)"
                    .to_string(),
            );
        }
    }

    /// Where the memory was, when it could not be read at the first sighting:
    /// the OOM cgroup's `memory.stat` now (tmpfs pages are still there; the
    /// victim's anonymous memory is not).
    fn read_late_oom_stat(&self, kill: &mut Kill) {
        if kill.memcg.oom_stat.is_some() || kill.scope != Some(Scope::Cgroup) {
            return;
        }
        let (Some(cgfs), Some(cg)) = (&self.cgfs, kill.oom_cgroup.as_deref()) else {
            return;
        };
        if let Some(stat) = crate::capture::memstat::read_cgroup(cgfs, cg) {
            kill.memcg.oom_stat = Some(stat);
            kill.missing.push(
                "memcg.oom_stat: read from the cgroup fs after the kill (the victim's memory is already freed)"
                    .to_string(),
            );
        }
    }

    /// The processes left in the victim's cgroup, and memory.oom.group.
    fn read_outcome(&self, kill: &mut Kill) {
        let (Some(cgfs), Some(cgroup)) = (&self.cgfs, kill.victim.cgroup.as_deref()) else {
            kill.missing.push(
                "outcome.survivors: the victim's cgroup or the memory controller is unknown"
                    .to_string(),
            );
            return;
        };
        match outcome::survivors(cgfs, &self.proc_root, cgroup, kill.victim.pid.unwrap_or(0)) {
            Ok(n) => kill.outcome.survivors = Some(n),
            Err(e) => kill.missing.push(format!(
                "outcome.survivors: cannot read the cgroup.procs of {cgroup}: {e}"
            )),
        }
        if !kill.outcome.group_kill {
            let oom_cgroup = match kill.scope {
                Some(Scope::Node) => None,
                _ => kill.oom_cgroup.as_deref(),
            };
            kill.outcome.group_kill = outcome::oom_group_set(cgfs, cgroup, oom_cgroup);
        }
    }

    /// The `k8s` object from the cgroup path and the pod log directories.
    fn name_pod(&mut self, kill: &mut Kill, identity: Option<&Identity>) {
        let Some(id) = identity else {
            return;
        };
        let name = match id.pod_uid.as_deref() {
            Some(uid) => {
                let name = self.pod_names.lookup(uid, id.container_id.as_deref());
                if name.is_none() {
                    kill.missing.push(format!(
                        "pod name: pod {uid} not found under the pod log directories (pod deleted before the kill was seen, or --pod-logs points elsewhere)"
                    ));
                }
                name
            }
            None => None,
        };
        kill.k8s = id.to_k8s(name.as_ref());
    }
}

/// Which Kubernetes level the cgroup whose limit was hit is.
fn oom_domain(kill: &Kill) -> Option<OomDomain> {
    match kill.scope? {
        Scope::Node => Some(OomDomain::Node),
        Scope::Cgroup => Some(identity::oom_domain(
            kill.oom_cgroup.as_deref(),
            kill.victim.cgroup.as_deref(),
        )),
    }
}

/// Turns the kernel's monotonic clock into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns.
    realtime_offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        Self {
            realtime_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// The wall-clock time of a CLOCK_MONOTONIC instant (now when unknown).
    pub fn wall_time(&self, monotonic_ns: Option<u64>) -> SystemTime {
        let Some(ns) = monotonic_ns else {
            return SystemTime::now();
        };
        let wall = i128::from(ns) + self.realtime_offset_ns;
        u64::try_from(wall)
            .ok()
            .map(|w| SystemTime::UNIX_EPOCH + Duration::from_nanos(w))
            .unwrap_or_else(SystemTime::now)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
