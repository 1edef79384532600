//! Kubelet evictions for memory, seen in the pod watch (`--kube`).
//!
//! The kubelet's eviction manager, on node memory pressure, kills a pod and
//! sets its status to `phase: Failed`, `reason: Evicted`, with a message
//! built by `evictionMessage` in `pkg/kubelet/eviction/helpers.go`:
//!
//! ```text
//! The node was low on resource: memory. Threshold quantity: 100Mi, available: 58472Ki. Container mem-eater was using 3694056Ki, request is 100Mi, has larger consumption of memory.
//! The node was low on resource: memory. Container citadel was using 43536Ki, which exceeds its request of 0.
//! ```
//!
//! The second wording (`which exceeds its request of`) is the older one
//! (kubelets before 1.27 or so); the threshold sentence came later than the
//! first kubelets; with pod-level resources a `Pod <name> was using ...`
//! sentence may come first. All are parsed. The same `Evicted` reason with
//! `The node had condition: [MemoryPressure].` is a pod refused at
//! admission, which never ran: not a memory death, not reported; nor are
//! evictions for disk (`ephemeral-storage`, `nodefs`) or pids.

use std::{collections::HashSet, time::SystemTime};

use k8s_openapi::api::core::v1::Pod;

use crate::{
    report::{Eviction, OverRequest},
    units::parse_quantity,
};

/// What the kubelet writes first when it evicts for memory.
const MEMORY: &str = "The node was low on resource: memory.";

/// A pod the kubelet evicted for memory.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictedPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `status.qosClass`.
    pub qos_class: Option<String>,
    /// The container the kubelet blamed most (the largest usage above its
    /// request), else the pod's only container.
    pub container: Option<String>,
    /// That container's runtime ID, without the `containerd://` scheme.
    pub container_id: Option<String>,
    pub eviction: Eviction,
    /// When the kubelet evicted (its `DisruptionTarget` condition), if said.
    pub at: Option<SystemTime>,
}

/// Parses the kubelet's eviction message; `None` unless it is an eviction
/// for memory.
pub fn parse_message(message: &str) -> Option<Eviction> {
    let rest = message.trim().strip_prefix(MEMORY)?;
    let mut e = Eviction {
        message: message.trim().to_string(),
        ..Eviction::default()
    };
    // Sentences end with ". "; names and quantities hold no ". ".
    let rest = rest.trim().trim_end_matches('.');
    for sentence in rest.split(". ").map(str::trim) {
        if let Some(t) = sentence.strip_prefix("Threshold quantity: ") {
            let (threshold, available) = t.split_once(", available: ").unwrap_or((t, ""));
            e.threshold_bytes = parse_quantity(threshold);
            e.available_bytes = parse_quantity(available);
        } else if let Some(o) = over_request(sentence) {
            e.over_request.push(o);
        }
    }
    Some(e)
}

/// `Container <name> was using <q>, request is <q>, has larger consumption of memory`,
/// the older `Container <name> was using <q>, which exceeds its request of <q>`,
/// or `Pod <name> was using ...` (pod-level resources).
fn over_request(sentence: &str) -> Option<OverRequest> {
    let (level, rest) = match sentence.split_once(' ')? {
        ("Container", rest) => ("container", rest),
        ("Pod", rest) => ("pod", rest),
        _ => return None,
    };
    let (name, rest) = rest.split_once(" was using ")?;
    let (usage, request) = if let Some((u, r)) = rest.split_once(", request is ") {
        (u, r.split_once(',').map_or(r, |(r, _)| r))
    } else {
        rest.split_once(", which exceeds its request of ")?
    };
    Some(OverRequest {
        level: level.to_string(),
        name: name.to_string(),
        usage_bytes: parse_quantity(usage),
        request_bytes: parse_quantity(request),
    })
}

impl EvictedPod {
    /// The eviction a pod's status shows, if it was evicted for memory.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let status = pod.status.as_ref()?;
        if status.phase.as_deref() != Some("Failed") || status.reason.as_deref() != Some("Evicted")
        {
            return None;
        }
        let eviction = parse_message(status.message.as_deref()?)?;
        let md = &pod.metadata;
        let spec_containers: Vec<&str> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.as_str()))
            .collect();
        let blamed = eviction
            .over_request
            .iter()
            .filter(|o| o.level == "container")
            .max_by_key(|o| {
                o.usage_bytes
                    .unwrap_or(0)
                    .saturating_sub(o.request_bytes.unwrap_or(0))
            })
            .map(|o| o.name.clone());
        let container = blamed.or_else(|| match spec_containers.as_slice() {
            [only] => Some((*only).to_string()),
            _ => None,
        });
        let container_id = container.as_deref().and_then(|name| {
            status
                .container_statuses
                .iter()
                .flatten()
                .find(|c| c.name == name)
                .and_then(|c| {
                    c.container_id.as_deref().or_else(|| {
                        c.last_state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .and_then(|t| t.container_id.as_deref())
                    })
                })
                .map(|id| id.split_once("://").map_or(id, |(_, id)| id).to_string())
                .filter(|id| !id.is_empty())
        });
        let at = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| SystemTime::from(t.0));
        Some(Self {
            namespace: md.namespace.clone().unwrap_or_default(),
            name: md.name.clone().unwrap_or_default(),
            uid: md.uid.clone()?,
            qos_class: status.qos_class.clone(),
            container,
            container_id,
            eviction,
            at,
        })
    }
}

/// Reports each eviction once: pods already evicted when the watch first
/// listed them are from before the agent started, and a pod seen evicted is
/// remembered until it is deleted (a relist brings it again).
#[derive(Debug, Default)]
pub struct EvictionWatch {
    seen: HashSet<String>,
    synced: bool,
}

impl EvictionWatch {
    /// A pod as the watch delivered it: the eviction to report, if it is new.
    pub fn observe(&mut self, pod: &Pod) -> Option<EvictedPod> {
        let e = EvictedPod::from_pod(pod)?;
        if !self.seen.insert(e.uid.clone()) || !self.synced {
            return None;
        }
        Some(e)
    }

    /// The first list is complete: evictions from now on are reported.
    pub fn synced(&mut self) {
        self.synced = true;
    }

    /// The pod was deleted.
    pub fn forget(&mut self, uid: &str) {
        self.seen.remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;
    const KI: u64 = 1 << 10;

    #[test]
    fn the_new_wording_with_the_threshold() {
        // kubectl describe of a pod the kubelet evicted (a mem-eater test, v1.29 era).
        let e = parse_message("The node was low on resource: memory. Threshold quantity: 100Mi, available: 58472Ki. Container mem-eater was using 3694056Ki, request is 100Mi, has larger consumption of memory.").expect("memory");
        assert_eq!(e.threshold_bytes, Some(100 * MI));
        assert_eq!(e.available_bytes, Some(58472 * KI));
        assert_eq!(
            e.over_request,
            vec![OverRequest {
                level: "container".into(),
                name: "mem-eater".into(),
                usage_bytes: Some(3_694_056 * KI),
                request_bytes: Some(100 * MI),
            }]
        );
        // As the kubelet writes it, with the trailing space; a decimal request.
        let e = parse_message("The node was low on resource: memory. Threshold quantity: 12Gi, available: 12536420Ki. Container p1 was using 788244Ki, request is 128M, has larger consumption of memory. ").expect("memory");
        assert_eq!(e.over_request[0].request_bytes, Some(128_000_000));
        assert_eq!(e.over_request[0].name, "p1");
    }

    #[test]
    fn the_old_wording_with_several_containers() {
        // openebs/cstor pod status (neonKUBE#1897) and istio-citadel (kubernetes#112927).
        let e = parse_message("The node was low on resource: memory. Container cstor-pool-mgmt was using 27484Ki, which exceeds its request of 0. Container maya-exporter was using 9736Ki, which exceeds its request of 0. Container cstor-pool was using 51480Ki, which exceeds its request of 0. ").expect("memory");
        assert_eq!(e.threshold_bytes, None);
        let names: Vec<&str> = e.over_request.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["cstor-pool-mgmt", "maya-exporter", "cstor-pool"]);
        assert_eq!(e.over_request[2].usage_bytes, Some(51480 * KI));
        assert_eq!(e.over_request[2].request_bytes, Some(0));
        let e = parse_message("The node was low on resource: memory. Container citadel was using 43536Ki, which exceeds its request of 0.").expect("memory");
        assert_eq!(e.over_request[0].name, "citadel");
        assert_eq!(e.over_request[0].usage_bytes, Some(43536 * KI));
    }

    #[test]
    fn a_pod_level_request_and_the_bare_message() {
        // The kubelet's podMessageFmt (pod-level resources) before its containers.
        let e = parse_message("The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. Pod api-0 was using 1Gi, request is 512Mi, has larger consumption of memory. Container c was using 1Gi, request is 100Mi, has larger consumption of memory. ").expect("memory");
        assert_eq!(e.over_request[0].level, "pod");
        assert_eq!(e.over_request[0].request_bytes, Some(512 * MI));
        assert_eq!(e.over_request[1].level, "container");
        // No stats for the pod: the kubelet stops after the first sentence.
        let e = parse_message("The node was low on resource: memory. ").expect("memory");
        assert!(e.over_request.is_empty() && e.threshold_bytes.is_none());
    }

    #[test]
    fn other_evictions_are_not_memory_deaths() {
        for m in [
            "The node had condition: [MemoryPressure].",
            "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 9Gi. Container c was using 2Gi, request is 0, has larger consumption of ephemeral-storage. ",
            "The node was low on resource: pids. ",
            "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. ",
        ] {
            assert_eq!(parse_message(m), None, "{m}");
        }
    }

    /// tests/data/kube/pod-evicted.json: the pod of pod.json as the kubelet
    /// leaves it after a memory eviction (see tests/data/kube/README.md).
    fn evicted_pod() -> Pod {
        serde_json::from_str(include_str!("../../tests/data/kube/pod-evicted.json"))
            .expect("pod-evicted.json")
    }

    #[test]
    fn an_evicted_pod_names_the_container_over_its_request() {
        let e = EvictedPod::from_pod(&evicted_pod()).expect("evicted for memory");
        assert_eq!(
            (e.namespace.as_str(), e.name.as_str()),
            ("prod", "api-7f9c6d5b8-x2x9q")
        );
        assert_eq!(e.uid, "8833712d-6e69-4f5c-95f3-aebd020ce2e7");
        assert_eq!(e.qos_class.as_deref(), Some("Burstable"));
        assert_eq!(e.container.as_deref(), Some("api"));
        assert_eq!(
            e.container_id.as_deref(),
            Some("a3f1c3b5e9d24f7a8b6c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a")
        );
        assert_eq!(e.eviction.threshold_bytes, Some(100 * MI));
        assert_eq!(e.eviction.over_request[0].request_bytes, Some(256 * MI));
        assert!(e.at.is_some(), "the DisruptionTarget condition's time");
        // Running, or Failed for another reason: not an eviction.
        let running: Pod =
            serde_json::from_str(include_str!("../../tests/data/kube/pod.json")).expect("pod");
        assert_eq!(EvictedPod::from_pod(&running), None);
    }

    #[test]
    fn each_eviction_is_reported_once_and_none_from_before_the_start() {
        let pod = evicted_pod();
        let mut w = EvictionWatch::default();
        assert_eq!(w.observe(&pod), None, "listed before the first sync");
        w.synced();
        assert_eq!(w.observe(&pod), None, "a relist brings it again");
        w.forget("8833712d-6e69-4f5c-95f3-aebd020ce2e7");
        let e = w.observe(&pod).expect("a new eviction after the sync");
        assert_eq!(e.name, "api-7f9c6d5b8-x2x9q");
        assert_eq!(w.observe(&pod), None, "a later update of the same pod");
    }
}
