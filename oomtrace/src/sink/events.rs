//! `--kube`: a Kubernetes Event on the victim's pod for each kill, so
//! `kubectl describe pod` shows it.
//!
//! [`EventsSink::kill`] only `try_send`s onto a bounded queue; one task
//! posts `POST /api/v1/namespaces/{ns}/events`. A full queue drops the Event
//! (counted and said once); a kill report is never delayed by the API server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Event;
use kube::{Api, api::PostParams};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::debug;

use super::{Sink, SinkError};
use crate::{
    kube::ApiClient,
    report::{Kill, OomDomain},
    units::escape,
};

/// Events waiting to be posted; beyond this they are dropped (and counted).
pub const QUEUE: usize = 256;
/// Longest an Event POST may take before it is given up.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The Event message limit used here (the API server accepts more; kubectl
/// describe shows it whole).
pub const MESSAGE_MAX: usize = 1024;

/// Posts a Pod Event per kill from a bounded queue.
pub struct EventsSink {
    queue: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
    api: ApiClient,
}

/// The posting task, to be given time to finish at shutdown.
pub struct EventsPoster(JoinHandle<()>);

impl EventsSink {
    pub fn start(api: ApiClient) -> (Self, EventsPoster) {
        let (tx, rx) = mpsc::channel::<Event>(QUEUE);
        let poster = tokio::spawn(post_events(rx, api.clone()));
        (
            Self {
                queue: tx,
                dropped: Arc::new(AtomicU64::new(0)),
                api,
            },
            EventsPoster(poster),
        )
    }
}

impl EventsPoster {
    /// Gives queued events up to `grace` to be posted (the queue closes when
    /// the sink is dropped).
    pub async fn close(mut self, grace: Duration) {
        if tokio::time::timeout(grace, &mut self.0).await.is_err() {
            self.0.abort();
        }
    }
}

impl Sink for EventsSink {
    /// Queues the kill's Pod Event; drops it (counted) when the queue is full.
    fn kill(&mut self, kill: &Kill) -> Result<(), SinkError> {
        let Some(ev) = event_for(kill) else {
            return Ok(());
        };
        if self.queue.try_send(ev).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            self.api.problem().report(&format!(
                "event queue full ({QUEUE}): {n} Pod event(s) dropped"
            ));
        }
        Ok(())
    }
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
        "message": truncate(&escape(&message), MESSAGE_MAX),
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

async fn post_events(mut rx: mpsc::Receiver<Event>, api: ApiClient) {
    let problem = api.problem();
    while let Some(ev) = rx.recv().await {
        // Wait (bounded) for the client: the first kill may come before it is
        // built; `None` when it could not be built (already reported).
        let Some(c) = api.client().await else {
            continue;
        };
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
    use crate::report::{K8s, OomDomain};

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
}
