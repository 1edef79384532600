//! `--kube`: pod metadata from a watch of this node's pods, for enrichment.
//!
//! One task watches `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`
//! (list, then watch) and keeps what enrichment needs in a cache; enrichment
//! reads the cache under a short lock and never waits for the API server.
//! A deleted pod is kept for [`KEEP_DELETED`]: a kill is often reported
//! after the pod is gone (the kill makes the kubelet restart or delete it).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    capture::eviction::{EvictedPod, EvictionWatch},
    enrich::reported::{Termination, TerminationWatch},
    kube::{ApiClient, Problem},
    report::{K8s, Kill},
};

/// How long a deleted pod's metadata is kept.
pub const KEEP_DELETED: Duration = Duration::from_secs(600);

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
                    .and_then(|q| crate::units::parse_quantity(&q.0))
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

/// What the pod watch tells the agent besides metadata.
#[derive(Debug)]
pub enum PodNews {
    /// The kubelet evicted a pod for memory.
    Evicted(EvictedPod),
    /// A container instance ended (compared with the kernel's kills).
    Terminated(Termination),
}

/// The enrichment side of the pod watch: a shared cache.
#[derive(Clone)]
pub struct PodMetadata {
    cache: Arc<Mutex<PodCache>>,
}

impl PodMetadata {
    /// Starts watching this node's pods once the client is built; pods the
    /// kubelet evicts for memory from then on, and containers that end, go
    /// to `news`.
    pub fn watch(
        api: &ApiClient,
        node: String,
        news: Option<mpsc::Sender<PodNews>>,
    ) -> (Self, JoinHandle<()>) {
        let cache = Arc::new(Mutex::new(PodCache::default()));
        let task = tokio::spawn({
            let cache = Arc::clone(&cache);
            let api = api.clone();
            async move {
                let Some(client) = api.client().await else {
                    return;
                };
                watch_pods(client, &node, &cache, api.problem(), news).await;
            }
        });
        (Self { cache }, task)
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
}

async fn watch_pods(
    client: Client,
    node: &str,
    cache: &Mutex<PodCache>,
    problem: &Problem,
    news: Option<mpsc::Sender<PodNews>>,
) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut seen = HashSet::new();
    let mut synced = false;
    let mut evicted = EvictionWatch::default();
    let mut ended = TerminationWatch::default();
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                problem.report(&format!("watching this node's pods: {e}"));
                continue;
            }
        };
        match &ev {
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                if let (Some(tx), Some(e)) = (&news, evicted.observe(pod))
                    && tx.try_send(PodNews::Evicted(e)).is_err()
                {
                    warn!(
                        "a pod eviction could not be queued for reporting (the agent is falling behind)"
                    );
                }
                for t in ended.observe(pod) {
                    if let Some(tx) = &news
                        && tx.try_send(PodNews::Terminated(t)).is_err()
                    {
                        warn!(
                            "a container's termination could not be queued for comparison with the kernel's kills (the agent is falling behind)"
                        );
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    evicted.forget(uid);
                }
            }
            watcher::Event::InitDone => evicted.synced(),
            watcher::Event::Init => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pod as `kubectl get pod -o json` prints it (trimmed): a Deployment's
    /// pod with a restarted container.
    const POD: &str = include_str!("../../tests/data/kube/pod.json");

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
