//! `--kube`: a Pod-scoped Kubernetes Event per kill, and pod metadata from a
//! watch of this node's pods.
//!
//! Nothing here is on the kill path's critical section: [`Kube::enrich`] reads
//! an in-memory cache (a short mutex), [`Kube::post`] only `try_send`s onto a
//! bounded queue. One task builds the client and watches
//! `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>` (list, then watch);
//! another posts `POST /api/v1/namespaces/{ns}/events`. When the API server is
//! unreachable, slow or refuses us, the agent keeps reporting everything else
//! and says so once on stderr.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, Client, Config,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::json;
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::report::{K8s, Kill, OomDomain};

/// Silences kube-client's per-request error log (one line per retry while
/// the API server is down); [`Kube`] says so once instead.
pub fn log_directive() -> tracing_subscriber::filter::Directive {
    use tracing_subscriber::filter::{Directive, LevelFilter};
    // A static, valid directive; the fallback is the agent's default level.
    "kube_client=off"
        .parse()
        .unwrap_or_else(|_| Directive::from(LevelFilter::INFO))
}

/// How long a deleted pod's metadata is kept (a kill is often reported after
/// the pod is gone: the kill makes the kubelet restart or delete it).
pub const KEEP_DELETED: Duration = Duration::from_secs(600);
/// Events waiting to be posted; beyond this they are dropped (and counted).
pub const QUEUE: usize = 256;
/// Longest an Event POST may take before it is given up.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The Event message limit used here (the API server accepts more; kubectl
/// describe shows it whole).
pub const MESSAGE_MAX: usize = 1024;

#[derive(Debug, Error)]
pub enum KubeError {
    #[error(
        "cannot read kubeconfig {path}: {source}: fix --kubeconfig or drop it to use the in-cluster config"
    )]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes API configuration (not in a pod with a service account, no KUBECONFIG): {0}; pass --kubeconfig or run without --kube"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// What the API knows about one pod, for enrichment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub owner_kind: Option<String>,
    pub owner_name: Option<String>,
    pub containers: Vec<ContainerMeta>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerMeta {
    pub name: String,
    /// Runtime IDs without the `containerd://` scheme, of every restart seen.
    pub ids: Vec<String>,
    pub memory_request_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

impl PodMeta {
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let md = &pod.metadata;
        let uid = md.uid.clone()?;
        let labels = md.labels.clone().unwrap_or_default();
        let owner = md
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| md.owner_references.as_deref().unwrap_or_default().first());
        let (owner_kind, owner_name) = match owner {
            Some(o) => {
                let (k, n) = workload(&o.kind, &o.name, &labels);
                (Some(k), Some(n))
            }
            None => (None, None),
        };
        let mut containers: Vec<ContainerMeta> = Vec::new();
        let spec_containers = pod.spec.iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        });
        for c in spec_containers {
            let res = c.resources.as_ref();
            let mem = |m: Option<
                &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >| {
                m.and_then(|m| m.get("memory"))
                    .and_then(|q| parse_quantity(&q.0))
            };
            containers.push(ContainerMeta {
                name: c.name.clone(),
                ids: Vec::new(),
                memory_request_bytes: mem(res.and_then(|r| r.requests.as_ref())),
                memory_limit_bytes: mem(res.and_then(|r| r.limits.as_ref())),
            });
        }
        if let Some(status) = &pod.status {
            let statuses = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten());
            for cs in statuses {
                let Some(c) = containers.iter_mut().find(|c| c.name == cs.name) else {
                    continue;
                };
                let ids = [
                    cs.container_id.as_deref(),
                    cs.last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .and_then(|t| t.container_id.as_deref()),
                ];
                for id in ids.into_iter().flatten() {
                    let id = id.split_once("://").map_or(id, |(_, id)| id).to_string();
                    if !id.is_empty() && !c.ids.contains(&id) {
                        c.ids.push(id);
                    }
                }
            }
        }
        Some(Self {
            namespace: md.namespace.clone().unwrap_or_default(),
            name: md.name.clone().unwrap_or_default(),
            uid,
            labels,
            owner_kind,
            owner_name,
            containers,
        })
    }

    /// The container a kill belongs to: by runtime ID, else by name.
    pub fn container(&self, id: Option<&str>, name: Option<&str>) -> Option<&ContainerMeta> {
        id.and_then(|id| {
            self.containers
                .iter()
                .find(|c| c.ids.iter().any(|i| i == id))
        })
        .or_else(|| name.and_then(|n| self.containers.iter().find(|c| c.name == n)))
        .or_else(|| (self.containers.len() == 1).then(|| &self.containers[0]))
    }

    /// Adds what the API knows to a kill's Kubernetes identity.
    pub fn enrich(&self, k: &mut K8s) {
        if k.namespace.is_none() && !self.namespace.is_empty() {
            k.namespace = Some(self.namespace.clone());
        }
        if k.pod.is_none() && !self.name.is_empty() {
            k.pod = Some(self.name.clone());
        }
        k.labels = Some(self.labels.clone());
        k.owner_kind.clone_from(&self.owner_kind);
        k.owner_name.clone_from(&self.owner_name);
        if let Some(c) = self.container(k.container_id.as_deref(), k.container.as_deref()) {
            if k.container.is_none() {
                k.container = Some(c.name.clone());
            }
            k.memory_request_bytes = c.memory_request_bytes;
            k.memory_limit_bytes = c.memory_limit_bytes;
        }
    }
}

/// The workload that owns a pod: a Deployment for a ReplicaSet whose name is
/// `<deployment>-<pod-template-hash>` (exact, from the pod's own label),
/// otherwise the direct controller.
fn workload(kind: &str, name: &str, labels: &BTreeMap<String, String>) -> (String, String) {
    if kind == "ReplicaSet"
        && let Some(hash) = labels.get("pod-template-hash")
        && let Some(deploy) = name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
        && !deploy.is_empty()
    {
        return ("Deployment".to_string(), deploy.to_string());
    }
    (kind.to_string(), name.to_string())
}

/// A Kubernetes memory quantity in bytes: `128974848`, `129e6`, `129M`,
/// `123Mi`, `1.5Gi`, `500m` (milli-bytes, rounded up).
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let v = (num * mult).ceil();
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

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

/// The core/v1 Event for a kill of a pod's container, or `None` when the
/// kill is not in a known pod.
pub fn event_for(kill: &Kill) -> Option<Event> {
    let k = kill.k8s.as_ref()?;
    let (ns, pod) = (k.namespace.as_deref()?, k.pod.as_deref()?);
    let mut message = String::new();
    if let Some(e) = &kill.explanation {
        message.push_str(e);
    }
    if let Some(a) = &kill.advice {
        if !message.is_empty() {
            message.push(' ');
        }
        message.push_str(a);
    }
    if message.is_empty() {
        message = format!(
            "process {} ({}) was OOM-killed",
            kill.victim
                .pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            kill.victim.comm.as_deref().unwrap_or("?")
        );
    }
    let time = (!kill.time.is_empty()).then(|| kill.time.clone());
    // Kubelet-style name: <pod>.<unique hex>.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut involved = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": ns,
        "name": pod,
    });
    if let Some(uid) = &k.pod_uid {
        involved["uid"] = json!(uid);
    }
    if let Some(c) = &k.container {
        involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
    }
    let ev = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{pod}.{stamp:x}"),
            "namespace": ns,
        },
        "involvedObject": involved,
        "reason": reason(kill.oom_domain),
        "message": truncate(&message, MESSAGE_MAX),
        "type": "Warning",
        "source": { "component": "oomtrace", "host": kill.node },
        "reportingComponent": "oomtrace",
        "reportingInstance": kill.node,
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    });
    serde_json::from_value(ev).ok()
}

/// Pods of this node by UID; deleted ones kept for [`KEEP_DELETED`].
#[derive(Debug, Default)]
pub struct PodCache {
    pods: HashMap<String, (PodMeta, Option<Instant>)>,
}

impl PodCache {
    pub fn apply(&mut self, meta: PodMeta) {
        self.pods.insert(meta.uid.clone(), (meta, None));
    }

    pub fn delete(&mut self, uid: &str, now: Instant) {
        if let Some((_, gone)) = self.pods.get_mut(uid) {
            gone.get_or_insert(now);
        }
    }

    /// After a relist: every pod not in `seen` is gone.
    pub fn relisted(&mut self, seen: &HashSet<String>, now: Instant) {
        for (uid, (_, gone)) in &mut self.pods {
            if !seen.contains(uid) {
                gone.get_or_insert(now);
            }
        }
    }

    pub fn expire(&mut self, now: Instant) {
        self.pods
            .retain(|_, (_, gone)| gone.is_none_or(|t| now.duration_since(t) < KEEP_DELETED));
    }

    pub fn get(&self, uid: &str) -> Option<&PodMeta> {
        self.pods.get(uid).map(|(m, _)| m)
    }
}

/// Reports an API problem once per run, on stderr.
#[derive(Debug, Default)]
struct Problem {
    said: AtomicBool,
}

impl Problem {
    fn report(&self, what: &str) {
        if !self.said.swap(true, Ordering::Relaxed) {
            warn!(
                "Kubernetes API unavailable ({what}): kills are still reported on stdout and in metrics, without Pod events or pod metadata from the API until it answers; this is said once"
            );
        } else {
            debug!("Kubernetes API: {what}");
        }
    }
}

/// The running `--kube` integration.
pub struct Kube {
    cache: Arc<Mutex<PodCache>>,
    queue: Option<mpsc::Sender<Event>>,
    dropped: Arc<AtomicU64>,
    problem: Arc<Problem>,
    poster: JoinHandle<()>,
    watch: JoinHandle<()>,
}

impl Kube {
    /// Starts the client, the pod watch and the event poster in the
    /// background; never fails and never waits for the API server.
    pub fn start(kubeconfig: Option<PathBuf>, node: String) -> Self {
        let cache = Arc::new(Mutex::new(PodCache::default()));
        let problem = Arc::new(Problem::default());
        let (tx, rx) = mpsc::channel::<Event>(QUEUE);
        let (client_tx, client_rx) = tokio::sync::watch::channel::<Option<Client>>(None);
        let watch = tokio::spawn({
            let cache = Arc::clone(&cache);
            let problem = Arc::clone(&problem);
            async move {
                let client = match client(kubeconfig).await {
                    Ok(c) => c,
                    Err(e) => {
                        problem.report(&e.to_string());
                        return;
                    }
                };
                let _ = client_tx.send(Some(client.clone()));
                watch_pods(client, &node, &cache, &problem).await;
            }
        });
        let poster = tokio::spawn(post_events(rx, client_rx, Arc::clone(&problem)));
        Self {
            cache,
            queue: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            problem,
            poster,
            watch,
        }
    }

    /// Adds labels, owner and memory requests/limits from the watch.
    pub fn enrich(&self, kill: &mut Kill) {
        let Some(k) = kill.k8s.as_mut() else { return };
        let Some(uid) = k.pod_uid.clone() else { return };
        let Ok(cache) = self.cache.lock() else { return };
        let Some(meta) = cache.get(&uid) else { return };
        let had_name = k.pod.is_some();
        meta.enrich(k);
        if !had_name && k.pod.is_some() {
            kill.missing.retain(|m| !m.starts_with("pod name:"));
        }
    }

    /// Queues the kill's Pod Event; drops it (counted) when the queue is full.
    pub fn post(&self, kill: &Kill) {
        let (Some(q), Some(ev)) = (&self.queue, event_for(kill)) else {
            return;
        };
        if q.try_send(ev).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            self.problem.report(&format!(
                "event queue full ({QUEUE}): {n} Pod event(s) dropped"
            ));
        }
    }

    /// Stops the watch and gives queued events up to `grace` to be posted.
    pub async fn close(mut self, grace: Duration) {
        self.watch.abort();
        self.queue = None;
        if tokio::time::timeout(grace, &mut self.poster).await.is_err() {
            self.poster.abort();
        }
    }
}

async fn client(kubeconfig: Option<PathBuf>) -> Result<Client, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(&path).map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig { path, source })?
        }
        None => Config::infer().await.map_err(KubeError::Infer)?,
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    config.write_timeout = Some(Duration::from_secs(10));
    Client::try_from(config).map_err(KubeError::Client)
}

async fn watch_pods(client: Client, node: &str, cache: &Mutex<PodCache>, problem: &Problem) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut seen = HashSet::new();
    let mut synced = false;
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                problem.report(&format!("watching this node's pods: {e}"));
                continue;
            }
        };
        let Ok(mut c) = cache.lock() else { return };
        match ev {
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                if let Some(m) = PodMeta::from_pod(&pod) {
                    seen.insert(m.uid.clone());
                    c.apply(m);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    c.delete(uid, now);
                }
            }
            watcher::Event::InitDone => {
                c.relisted(&seen, now);
                if !synced {
                    synced = true;
                    info!(
                        "Kubernetes API: watching {} pod(s) of node {node}",
                        seen.len()
                    );
                }
            }
        }
        c.expire(now);
    }
}

async fn post_events(
    mut rx: mpsc::Receiver<Event>,
    mut client: tokio::sync::watch::Receiver<Option<Client>>,
    problem: Arc<Problem>,
) {
    while let Some(ev) = rx.recv().await {
        // Wait (bounded) for the client: the first kill may come before it is built.
        let c = match tokio::time::timeout(POST_TIMEOUT, client.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone(),
            // The client could not be built (already reported) or is late.
            _ => None,
        };
        let Some(c) = c else { continue };
        let ns = ev.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(c, &ns);
        match tokio::time::timeout(POST_TIMEOUT, api.create(&PostParams::default(), &ev)).await {
            Ok(Ok(_)) => debug!(
                "posted Pod event {}",
                ev.metadata.name.as_deref().unwrap_or("")
            ),
            Ok(Err(e)) => problem.report(&format!("posting a Pod event in {ns}: {e}")),
            Err(_) => problem.report(&format!(
                "posting a Pod event in {ns}: no answer within {}s",
                POST_TIMEOUT.as_secs()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pod as `kubectl get pod -o json` prints it (trimmed): a Deployment's
    /// pod with a restarted container.
    const POD: &str = include_str!("../tests/data/kube/pod.json");

    #[test]
    fn quantities() {
        for (q, v) in [
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("123Mi", 123 * 1024 * 1024),
            ("1.5Gi", 3 * 512 * 1024 * 1024),
            ("1Ki", 1024),
            ("500m", 1),
        ] {
            assert_eq!(parse_quantity(q), Some(v), "{q}");
        }
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("12Xi"), None);
    }

    #[test]
    fn a_pod_gives_labels_deployment_and_the_containers_memory() {
        let pod: Pod = serde_json::from_str(POD).expect("pod json");
        let m = PodMeta::from_pod(&pod).expect("meta");
        assert_eq!(m.owner_kind.as_deref(), Some("Deployment"));
        assert_eq!(m.owner_name.as_deref(), Some("api"));
        assert_eq!(m.labels.get("app").map(String::as_str), Some("api"));
        let c = m
            .container(
                Some("a3f1c3b5e9d24f7a8b6c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a"),
                None,
            )
            .expect("by id");
        assert_eq!(c.name, "api");
        assert_eq!(c.memory_request_bytes, Some(256 << 20));
        assert_eq!(c.memory_limit_bytes, Some(512 << 20));
        let mut k = K8s {
            pod_uid: Some(m.uid.clone()),
            container_id: Some(c.ids[0].clone()),
            ..K8s::default()
        };
        m.enrich(&mut k);
        assert_eq!(k.pod.as_deref(), Some("api-7f9c6d5b8-x2x9q"));
        assert_eq!(k.namespace.as_deref(), Some("prod"));
        assert_eq!(k.container.as_deref(), Some("api"));
        assert_eq!(k.memory_limit_bytes, Some(512 << 20));
    }

    #[test]
    fn the_event_names_the_pod_the_domain_and_is_cut_to_1024_bytes() {
        let kill = Kill {
            node: "node-1".into(),
            time: "2025-01-02T03:04:05.678Z".into(),
            oom_domain: Some(OomDomain::Container),
            k8s: Some(K8s {
                namespace: Some("prod".into()),
                pod: Some("api-1".into()),
                pod_uid: Some("8833712d-6e69-4f5c-95f3-aebd020ce2e7".into()),
                container: Some("api".into()),
                ..K8s::default()
            }),
            explanation: Some("é".repeat(600)),
            advice: Some("raise the limit".into()),
            ..Kill::default()
        };
        let ev = event_for(&kill).expect("event");
        assert_eq!(ev.reason.as_deref(), Some("OOMKilledContainerLimit"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(ev.involved_object.name.as_deref(), Some("api-1"));
        assert_eq!(
            ev.involved_object.field_path.as_deref(),
            Some("spec.containers{api}")
        );
        assert_eq!(
            ev.source.as_ref().and_then(|s| s.host.as_deref()),
            Some("node-1")
        );
        let msg = ev.message.expect("message");
        assert!(
            msg.len() <= MESSAGE_MAX && msg.ends_with('…'),
            "{}",
            msg.len()
        );
        assert!(event_for(&Kill::default()).is_none());
    }

    #[test]
    fn deleted_pods_are_kept_for_ten_minutes() {
        let mut c = PodCache::default();
        let t0 = Instant::now();
        c.apply(PodMeta {
            uid: "u1".into(),
            ..PodMeta::default()
        });
        c.delete("u1", t0);
        c.expire(t0 + Duration::from_secs(599));
        assert!(c.get("u1").is_some());
        c.expire(t0 + Duration::from_secs(601));
        assert!(c.get("u1").is_none());
    }
}
