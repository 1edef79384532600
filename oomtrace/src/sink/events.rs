//! `--kube`: a Kubernetes Event (events.k8s.io/v1) on the victim's pod, so
//! `kubectl describe pod` shows which limit killed it.
//!
//! **Bounded.** A fork-and-OOM loop in one pod must not write tens of Events
//! a second into etcd, so the agent coalesces ([`Coalescer`]):
//! - kills are grouped into a *series* per pod, container and reason. The
//!   first kill of a series is created at once; repeats are held and written
//!   at most once per [`INTERVAL`] as the series' count (a merge PATCH of
//!   `series.count` and `series.lastObservedTime`: the API server lets only
//!   the series of an events.k8s.io/v1 Event change after creation; its
//!   `note` is immutable). A series ends [`SERIES_END`] after its last kill
//!   (client-go's `finishTime` and kube-runtime's cache TTL are the same 6
//!   minutes); the next kill starts a new Event.
//! - every write of the node spends from one budget of [`BUDGET_BURST`]
//!   writes refilled at [`BUDGET_PER_SEC`] a second, below the kubelet's own
//!   default event rate (`eventRecordQPS` 50 and `eventBurst` 100 in
//!   `KubeletConfiguration`, 5 and 10 in older releases). Held kills are
//!   never dropped for want of budget: their series count grows until a
//!   write carries it.
//! - at most [`MAX_SERIES`] series are held; kills of further pods while it
//!   is full get no Event (counted, and said once).
//!
//! kube-runtime's `Recorder` is not used: it writes on every `publish` and
//! its series count is the number of publishes, so a count of kills
//! coalesced by the agent cannot be expressed through it.
//!
//! **Tenant-safe.** The Event lands in the victim's namespace, readable by
//! whoever can read that namespace, so its note is built from the kill's
//! structured fields ([`note`]) rather than from the explanation: it names
//! pods of the victim's own namespace only (the rest of the node's largest
//! consumers are one figure, "other workloads: N MiB"), escapes control
//! characters, and stays within the API's 1 KiB.
//!
//! **Never in the way.** [`EventsSink::kill`] only updates the coalescer
//! under a lock held for microseconds; one task does the writes, each given
//! [`WRITE_TIMEOUT`]. A slow or unreachable API server delays Events, never
//! a kill report.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{debug, info};

use super::{Sink, SinkError};
use crate::{
    kube::ApiClient,
    report::{Kill, KillerKind, OomDomain},
    units::{Bytes, escape},
};

/// Shortest time between two writes of one series.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// A series with no kill for this long is over; the next kill starts a new Event.
pub const SERIES_END: Duration = Duration::from_secs(6 * 60);
/// Writes the node may make at once.
pub const BUDGET_BURST: f64 = 10.0;
/// Writes a second the budget refills with.
pub const BUDGET_PER_SEC: f64 = 1.0;
/// Series held at once.
pub const MAX_SERIES: usize = 1024;
/// The API's limit on an Event's note, in bytes.
pub const NOTE_MAX: usize = 1024;
/// Longest an Event write may take before it is given up (and retried).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `reportingController` of every Event.
pub const CONTROLLER: &str = "oomtrace";
/// `action` of every Event.
pub const ACTION: &str = "Killed";
/// The API's limit on `reportingInstance`.
const INSTANCE_MAX: usize = 128;
/// A kill replayed from the kernel log after a restart gets an Event only
/// when it is at most this old.
///
/// Past it the Event would say nothing new and could mislead: the kubelet
/// already recorded the container's OOMKilled restart when it happened;
/// the pod may be gone or replaced (an Event on a pod of the same name
/// would describe someone else's container); the API server deletes
/// Events an hour after they are written (`--event-ttl`), so Events of a
/// boot's worth of old kills only churn etcd; and a reboot replays every
/// kill of the new boot's log at once, which would spend the node's
/// write budget on history before live kills. The report on stdout and
/// the metrics carry every replayed kill.
pub const REPLAY_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Whether `kill` gets an Event at `now`: every live kill, a replayed one
/// only when recent ([`REPLAY_MAX_AGE`]).
pub fn wanted(kill: &Kill, now: Timestamp) -> bool {
    if !kill.replayed {
        return true;
    }
    let Ok(at) = kill.time.parse::<Timestamp>() else {
        return false;
    };
    let max = i64::try_from(REPLAY_MAX_AGE.as_secs()).unwrap_or(i64::MAX);
    now.duration_since(at).as_secs() <= max
}

/// The Event reason for a kill by a userspace OOM killer (earlyoom,
/// systemd-oomd, Talos's machined, ...).
pub const USERSPACE_REASON: &str = "KilledByUserspaceOOMKiller";

/// The Event reason for an OOM domain.
pub fn reason(domain: Option<OomDomain>) -> &'static str {
    match domain {
        Some(OomDomain::Container) => "OOMKilledContainerLimit",
        Some(OomDomain::Pod) => "OOMKilledPodLimit",
        Some(OomDomain::NodeAllocatable) => "OOMKilledNodeAllocatable",
        Some(OomDomain::Node) => "OOMKilledNodeLevel",
        Some(OomDomain::Cgroup) => "OOMKilledCgroupLimit",
        None => "OOMKilled",
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let ell = "…";
    let mut end = max.saturating_sub(ell.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ell}", &s[..end])
}

/// What a series is counted by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub reason: &'static str,
}

/// One kill, as the Event sink sees it.
#[derive(Clone, Debug)]
pub struct Observation {
    pub key: SeriesKey,
    /// The Event to create if this kill starts a series.
    pub event: Event,
    /// When the kernel killed.
    pub at: Timestamp,
}

/// The observation for a kill of a pod's container, or `None` when the kill
/// is not in a pod whose namespace and name are known.
pub fn observation(kill: &Kill) -> Option<Observation> {
    // The kubelet posts its own `Evicted` Event on the pod it evicts.
    if kill.killer.kind == KillerKind::KubeletEviction {
        return None;
    }
    let k = kill.k8s.as_ref()?;
    let (ns, pod) = (k.namespace.as_deref()?, k.pod.as_deref()?);
    let at = kill
        .time
        .parse::<Timestamp>()
        .unwrap_or_else(|_| Timestamp::now());
    let reason = match kill.killer.kind {
        KillerKind::UserspaceOom => USERSPACE_REASON,
        _ => reason(kill.oom_domain),
    };
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.into()),
        name: Some(pod.into()),
        uid: k.pod_uid.clone(),
        field_path: k
            .container
            .as_ref()
            .map(|c| format!("spec.containers{{{c}}}")),
        ..ObjectReference::default()
    };
    let event = Event {
        metadata: ObjectMeta {
            // Named when it starts a series (`Series::new`).
            name: None,
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(at)),
        action: Some(ACTION.into()),
        reason: Some(reason.into()),
        note: Some(note(kill)),
        regarding: Some(regarding),
        reporting_controller: Some(CONTROLLER.into()),
        reporting_instance: Some(truncate(&kill.node, INSTANCE_MAX)),
        type_: Some("Warning".into()),
        ..Event::default()
    };
    Some(Observation {
        key: SeriesKey {
            namespace: ns.into(),
            pod: pod.into(),
            pod_uid: k.pod_uid.clone(),
            container: k.container.clone(),
            reason,
        },
        event,
        at,
    })
}

/// `<pod>.<hex>`, unique in this process, as the kubelet names its Events;
/// at most 253 bytes (a DNS subdomain).
fn event_name(pod: &str) -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let prev = LAST.fetch_max(now, Ordering::Relaxed);
    let stamp = if now > prev {
        now
    } else {
        LAST.fetch_add(1, Ordering::Relaxed) + 1
    };
    let pod = &pod[..pod.len().min(253 - 17)];
    format!("{pod}.{stamp:x}")
}

/// The Event's note: what happened to this pod, in at most [`NOTE_MAX`]
/// bytes, naming no pod outside the victim's namespace.
pub fn note(kill: &Kill) -> String {
    let e = |s: &str| escape(s).into_owned();
    let k = kill.k8s.as_ref();
    let ns = k.and_then(|k| k.namespace.as_deref()).unwrap_or("");
    let pod = k.and_then(|k| k.pod.as_deref()).unwrap_or("");
    let process = match (&kill.victim.comm, kill.victim.pid) {
        (Some(c), Some(p)) => format!("{} (pid {p})", e(c)),
        (Some(c), None) => e(c),
        (None, Some(p)) => format!("pid {p}"),
        (None, None) => "a process".into(),
    };
    let place = match k.and_then(|k| k.container.as_deref()) {
        Some(c) => format!("container {}", e(c)),
        None => "this pod".into(),
    };
    let usage = |u: Option<u64>, l: Option<u64>| match (u, l) {
        (Some(u), Some(l)) => format!(" ({} of {})", Bytes(u), Bytes(l)),
        (None, Some(l)) => format!(" (limit {})", Bytes(l)),
        _ => String::new(),
    };
    let oom = usage(kill.memcg.oom_usage_bytes, kill.memcg.oom_limit_bytes);
    let userspace = (kill.killer.kind == KillerKind::UserspaceOom).then(|| {
        let name = kill.killer.name.as_deref().or(kill.killer.comm.as_deref());
        e(name.unwrap_or("a userspace OOM killer"))
    });
    let mut text = match &userspace {
        Some(name) => {
            format!("{process} in {place} was killed by the userspace OOM killer {name}: ")
        }
        None => format!("{process} in {place} was OOM-killed: "),
    };
    let forced = kill.trigger.order == Some(-1);
    let cause = match kill.oom_domain {
        _ if userspace.is_some() => "the node was low on memory; no memory limit was hit.".into(),
        _ if forced => {
            "an administrator forced the OOM killer (sysrq); no memory shortage is implied.".into()
        }
        Some(OomDomain::Container) => format!("the container hit its own memory limit{oom}."),
        Some(OomDomain::Pod) => format!(
            "the pod's containers together hit the pod's memory limit{oom}; no container's own limit was hit."
        ),
        Some(OomDomain::NodeAllocatable) => format!(
            "the pods on this node together exhausted its allocatable memory{oom}; this pod's own limit was not hit."
        ),
        Some(OomDomain::Node) => "the node ran out of memory; no memory limit was hit.".into(),
        Some(OomDomain::Cgroup) => format!(
            "the memory limit of cgroup {} was hit{oom}.",
            e(kill.oom_cgroup.as_deref().unwrap_or("(unknown)"))
        ),
        None => "which memory limit was hit is unknown.".into(),
    };
    text.push_str(&cause);
    let node_wide = !forced
        && matches!(
            kill.oom_domain,
            Some(OomDomain::Node | OomDomain::NodeAllocatable)
        );
    if node_wide {
        let qos = k.and_then(|k| k.qos_class.as_deref());
        let mut chosen = Vec::new();
        if let Some(q) = qos {
            chosen.push(e(q));
        }
        if let Some(adj) = kill.victim.oom_score_adj {
            chosen.push(format!("oom_score_adj {adj}"));
        }
        if !chosen.is_empty() {
            let chooser = userspace.as_deref().unwrap_or("The kernel");
            text.push_str(&format!(" {chooser} chose it ({})", chosen.join(", ")));
            match (kill.memcg.victim_usage_bytes, kill.memcg.victim_limit_bytes) {
                (Some(u), Some(l)) => {
                    text.push_str(&format!("; it used {} of its {} limit", Bytes(u), Bytes(l)))
                }
                (Some(u), None) => text.push_str(&format!("; it used {}", Bytes(u))),
                _ => {}
            }
            text.push('.');
        }
        if let Some(c) = consumers(kill, ns, pod) {
            text.push(' ');
            text.push_str(&c);
        }
        text.push(' ');
        text.push_str(match qos {
            Some("Guaranteed") => {
                "Other workloads on the node use more than it can hold: ask the cluster operator."
            }
            Some("BestEffort") => {
                "Set memory requests and limits (BestEffort pods are killed first), ideally requests == limits."
            }
            _ => "Raise the pod's memory request to its real use, or make it Guaranteed (requests == limits).",
        });
    } else if !forced {
        text.push(' ');
        text.push_str(match kill.oom_domain {
            Some(OomDomain::Container) => {
                "Raise the container's memory limit or reduce its use (keep heap settings well below the limit)."
            }
            Some(OomDomain::Pod) => {
                "Raise the pod's memory limits or reduce its containers' combined use."
            }
            _ => "The node's oomtrace log has the details.",
        });
    }
    truncate(&text, NOTE_MAX)
}

/// "Largest consumers: api-1 60 MiB (this pod), worker-2 8 MiB; other
/// workloads: 311 MiB." Only pods of the victim's namespace `ns` are named.
/// For an allocatable kill only consumers below the kubepods cgroup count
/// (a system service does not use allocatable memory).
fn consumers(kill: &Kill, ns: &str, pod: &str) -> Option<String> {
    let nm = kill.node_memory.as_ref()?;
    let scope = match kill.oom_domain {
        Some(OomDomain::NodeAllocatable) => kill
            .oom_cgroup
            .as_deref()
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty()),
        _ => None,
    };
    let mut named = Vec::new();
    let mut other = 0u64;
    for c in &nm.top {
        let inside = scope.is_none_or(|p| {
            c.cgroup.is_empty()
                || c.cgroup == p
                || c.cgroup
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        });
        if !inside {
            continue;
        }
        // `namespace/pod` for a pod whose name is known; anything else (a
        // cgroup path, `pod <uid>`) is another workload.
        let own = (!c.name.starts_with('/'))
            .then(|| c.name.split_once('/'))
            .flatten()
            .filter(|(cns, _)| !ns.is_empty() && *cns == ns);
        match own {
            Some((_, p)) if p == pod => {
                named.push(format!("{} {} (this pod)", escape(p), Bytes(c.usage_bytes)))
            }
            Some((_, p)) => named.push(format!("{} {}", escape(p), Bytes(c.usage_bytes))),
            None => other += c.usage_bytes,
        }
    }
    if named.is_empty() && other == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if !named.is_empty() {
        parts.push(named.join(", "));
    }
    if other > 0 {
        parts.push(format!("other workloads: {}", Bytes(other)));
    }
    Some(format!("Largest consumers: {}.", parts.join("; ")))
}

/// One write to the API.
#[derive(Clone, Debug)]
pub enum Write {
    /// `POST /apis/events.k8s.io/v1/namespaces/{ns}/events` (with a series
    /// when kills were held before the first write could be made).
    Create { key: SeriesKey, event: Box<Event> },
    /// `PATCH .../events/{name}` of the series' count and last kill.
    Patch {
        key: SeriesKey,
        namespace: String,
        name: String,
        count: u64,
        last_observed: Timestamp,
    },
}

impl Write {
    pub fn key(&self) -> &SeriesKey {
        match self {
            Self::Create { key, .. } | Self::Patch { key, .. } => key,
        }
    }

    /// The kills of the series the write carries.
    pub fn count(&self) -> u64 {
        match self {
            Self::Create { event, .. } => event
                .series
                .as_ref()
                .map_or(1, |s| u64::try_from(s.count).unwrap_or(1)),
            Self::Patch { count, .. } => *count,
        }
    }
}

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Created (or found already there after a retry).
    Created,
    Patched,
    /// The series' Event is gone (the API server's event TTL, or deleted):
    /// the next write creates a new one.
    Gone,
    /// Retried after [`INTERVAL`].
    Failed,
}

/// One series in the coalescer.
#[derive(Debug)]
struct Series {
    /// The Event created for the series; its note is frozen once written.
    template: Event,
    created: bool,
    /// Kills seen in this series.
    observed: u64,
    /// Kills the API has been told of.
    written: u64,
    /// The count of the write under way.
    in_flight: Option<u64>,
    last_kill: Instant,
    last_kill_at: Timestamp,
    last_write: Option<Instant>,
}

impl Series {
    fn new(obs: Observation, now: Instant) -> Self {
        let mut template = obs.event;
        template.metadata.name = Some(event_name(&obs.key.pod));
        Self {
            template,
            created: false,
            observed: 1,
            written: 0,
            in_flight: None,
            last_kill: now,
            last_kill_at: obs.at,
            last_write: None,
        }
    }

    fn settled(&self) -> bool {
        self.observed == self.written && self.in_flight.is_none()
    }

    fn over(&self, now: Instant) -> bool {
        self.settled() && now.saturating_duration_since(self.last_kill) >= SERIES_END
    }
}

/// The node's write budget: a token bucket.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    at: Option<Instant>,
}

impl Budget {
    fn take(&mut self, now: Instant) -> bool {
        let refill = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64())
            * BUDGET_PER_SEC;
        self.tokens = (self.tokens + refill).min(BUDGET_BURST);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Holds kills per series and decides which writes are due. Pure: the time
/// is passed in, so tests drive it with their own clock.
#[derive(Debug)]
pub struct Coalescer {
    series: HashMap<SeriesKey, Series>,
    budget: Budget,
    /// Kills that got no Event because [`MAX_SERIES`] series were held.
    pub dropped: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self {
            series: HashMap::new(),
            budget: Budget {
                tokens: BUDGET_BURST,
                at: None,
            },
            dropped: 0,
        }
    }
}

impl Coalescer {
    /// Counts a kill into its series (a new one when none is running).
    /// `false` when it was dropped because [`MAX_SERIES`] series are held.
    pub fn observe(&mut self, obs: Observation, now: Instant) -> bool {
        if let Some(s) = self.series.get_mut(&obs.key) {
            if s.over(now) {
                *s = Series::new(obs, now);
            } else {
                s.observed += 1;
                s.last_kill = now;
                s.last_kill_at = obs.at;
            }
            return true;
        }
        if self.series.len() >= MAX_SERIES {
            self.collect(now);
            if self.series.len() >= MAX_SERIES {
                self.dropped += 1;
                return false;
            }
        }
        self.series.insert(obs.key.clone(), Series::new(obs, now));
        true
    }

    /// The writes to make now: series with kills the API has not been told
    /// of, whose last write is [`INTERVAL`] old (any, when `flush`), least
    /// recently written first, as far as the budget goes.
    pub fn due(&mut self, now: Instant, flush: bool) -> Vec<Write> {
        let mut ready: Vec<(&SeriesKey, &Series)> = self
            .series
            .iter()
            .filter(|(_, s)| s.observed > s.written && s.in_flight.is_none())
            .filter(|(_, s)| {
                flush
                    || s.last_write
                        .is_none_or(|w| now.saturating_duration_since(w) >= INTERVAL)
            })
            .collect();
        ready.sort_by_key(|(_, s)| (s.last_write, s.last_kill));
        let keys: Vec<SeriesKey> = ready.into_iter().map(|(k, _)| k.clone()).collect();
        let mut writes = Vec::new();
        for key in keys {
            if !self.budget.take(now) {
                break;
            }
            let Some(s) = self.series.get_mut(&key) else {
                continue;
            };
            s.in_flight = Some(s.observed);
            writes.push(if s.created {
                Write::Patch {
                    namespace: key.namespace.clone(),
                    name: s.template.metadata.name.clone().unwrap_or_default(),
                    count: s.observed,
                    last_observed: s.last_kill_at,
                    key,
                }
            } else {
                let mut event = s.template.clone();
                if s.observed >= 2 {
                    event.series = Some(EventSeries {
                        count: i32::try_from(s.observed).unwrap_or(i32::MAX),
                        last_observed_time: MicroTime(s.last_kill_at),
                    });
                }
                Write::Create {
                    key,
                    event: Box::new(event),
                }
            });
        }
        self.collect(now);
        writes
    }

    /// Records what became of a write from [`Coalescer::due`].
    pub fn done(&mut self, key: &SeriesKey, outcome: Outcome, now: Instant) {
        let Some(s) = self.series.get_mut(key) else {
            return;
        };
        let carried = s.in_flight.take();
        s.last_write = Some(now);
        match outcome {
            Outcome::Created => {
                s.created = true;
                s.written = carried.unwrap_or(s.written);
            }
            Outcome::Patched => s.written = carried.unwrap_or(s.written),
            Outcome::Gone => {
                // Create it again, with the whole count, under a new name.
                s.created = false;
                s.written = 0;
                let pod = key.pod.as_str();
                s.template.metadata.name = Some(event_name(pod));
                s.last_write = None;
            }
            Outcome::Failed => {}
        }
    }

    /// Whether kills are held that the API has not been told of.
    pub fn pending(&self) -> bool {
        self.held() > 0
    }

    /// Kills the API has not been told of.
    pub fn held(&self) -> u64 {
        self.series
            .values()
            .map(|s| s.observed.saturating_sub(s.written))
            .sum()
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Forgets the series that are over.
    fn collect(&mut self, now: Instant) {
        self.series.retain(|_, s| !s.over(now));
    }
}

/// What the sink and the writing task share.
struct Shared {
    coalescer: Mutex<Coalescer>,
    wake: Notify,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Coalescer> {
        self.coalescer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Coalesces kills into Pod Events; a task writes them.
pub struct EventsSink {
    shared: Arc<Shared>,
    api: ApiClient,
}

/// The writing task, to be given time to flush at shutdown.
pub struct EventsPoster {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl EventsSink {
    pub fn start(api: ApiClient) -> (Self, EventsPoster) {
        let shared = Arc::new(Shared {
            coalescer: Mutex::new(Coalescer::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let task = tokio::spawn(post_events(Arc::clone(&shared), api.clone()));
        let poster = EventsPoster {
            task,
            shared: Arc::clone(&shared),
        };
        (Self { shared, api }, poster)
    }
}

impl Drop for EventsSink {
    /// Tells the writing task to flush what is held and end.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

impl EventsPoster {
    /// Gives held kills up to `grace` to be written (the sink must be
    /// dropped first); says how many were not.
    pub async fn close(mut self, grace: Duration) {
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
            let held = self.shared.lock().held();
            if held > 0 {
                info!(
                    "{held} kill(s) held for Pod Events were not written within {}s of exit",
                    grace.as_secs()
                );
            }
        }
    }
}

impl Sink for EventsSink {
    /// Counts the kill into its pod's series; never waits for the API.
    fn kill(&mut self, kill: &Kill) -> Result<(), SinkError> {
        if !wanted(kill, Timestamp::now()) {
            debug!(
                "no Event for a kill at {} replayed from the kernel log: older than {} min",
                kill.time,
                REPLAY_MAX_AGE.as_secs() / 60
            );
            return Ok(());
        }
        let Some(obs) = observation(kill) else {
            return Ok(());
        };
        let (accepted, dropped) = {
            let mut c = self.shared.lock();
            (c.observe(obs, Instant::now()), c.dropped)
        };
        if accepted {
            self.shared.wake.notify_one();
        } else {
            self.api.problem().report(&format!(
                "{MAX_SERIES} pods have Event series held (the API server is slow or down): {dropped} kill(s) of other pods get no Event"
            ));
        }
        Ok(())
    }
}

/// The writing task: makes the due writes, waking on a kill or each second;
/// once the sink is gone, flushes what is held and ends.
async fn post_events(shared: Arc<Shared>, api: ApiClient) {
    let problem = api.problem();
    loop {
        let closing = shared.closed.load(Ordering::Relaxed);
        let writes = shared.lock().due(Instant::now(), closing);
        if writes.is_empty() {
            if closing && !shared.lock().pending() {
                return;
            }
            tokio::select! {
                () = shared.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        // The first kill may come before the client is built (bounded
        // wait); `None` when it could not be (already reported).
        let client = api.client().await;
        for w in writes {
            let outcome = match &client {
                Some(c) => write(c, &w, problem).await,
                None => Outcome::Failed,
            };
            shared.lock().done(w.key(), outcome, Instant::now());
        }
    }
}

async fn write(client: &Client, w: &Write, problem: &crate::kube::Problem) -> Outcome {
    let key = w.key();
    let api: Api<Event> = Api::namespaced(client.clone(), &key.namespace);
    let call = async {
        match w {
            Write::Create { event, .. } => match api.create(&PostParams::default(), event).await {
                Ok(_) => Ok(Outcome::Created),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Outcome::Created),
                Err(e) => Err(e),
            },
            Write::Patch {
                name,
                count,
                last_observed,
                ..
            } => {
                let patch = json!({
                    "series": {
                        "count": i32::try_from(*count).unwrap_or(i32::MAX),
                        "lastObservedTime": MicroTime(*last_observed),
                    }
                });
                match api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok(Outcome::Patched),
                    Err(kube::Error::Api(s)) if s.is_not_found() => Ok(Outcome::Gone),
                    Err(e) => Err(e),
                }
            }
        }
    };
    let what = match w {
        Write::Create { .. } => "creating",
        Write::Patch { .. } => "updating",
    };
    match tokio::time::timeout(WRITE_TIMEOUT, call).await {
        Ok(Ok(outcome)) => {
            debug!(
                "{what} the Event of {}/{} ({}): {} kill(s)",
                key.namespace,
                key.pod,
                key.reason,
                w.count()
            );
            outcome
        }
        Ok(Err(e)) => {
            problem.report(&format!("{what} a Pod Event in {}: {e}", key.namespace));
            Outcome::Failed
        }
        Err(_) => {
            problem.report(&format!(
                "{what} a Pod Event in {}: no answer within {}s",
                key.namespace,
                WRITE_TIMEOUT.as_secs()
            ));
            Outcome::Failed
        }
    }
}

#[cfg(test)]
mod tests;
