//! Kubernetes' word against the kernel's (`--kube`).
//!
//! The runtime tells Kubernetes why a container ended (`lastState.terminated`
//! or `state.terminated`: a reason and an exit code); the kernel told us who
//! it killed. They disagree in two ways users trip over:
//!
//! - `OOMKilled` when the kernel killed only a child process: containerd and
//!   CRI-O report `OOMKilled` whenever the container's cgroup saw an OOM kill,
//!   so a container that later exits on its own (143 on SIGTERM, say) is
//!   reported `OOMKilled` (kubernetes#140716);
//! - `Error` with exit code 137 when the kernel did OOM-kill the main process,
//!   typically for a node-level OOM (kubernetes#53669).
//!
//! The termination appears seconds after the kill was reported (the kubelet
//! learns it from the runtime), or much later for a child's kill, so the
//! disagreement is its own record (`"kind": "reason_mismatch"`), written when
//! the termination is seen, naming the kills (their incidents) it contradicts.
//! The output thread keeps a bounded book of the kills it wrote per container
//! instance (runtime container ID) and compares each termination with it.

use std::collections::{HashMap, HashSet, VecDeque};

use k8s_openapi::api::core::v1::Pod;

use crate::report::{K8s, Kill, KillerKind, OomDomain, RecordKind, Scope};

/// Container instances whose kills are remembered; the oldest go first.
const BOOK_CONTAINERS: usize = 4096;
/// Kills remembered per container instance.
const KILLS_PER_CONTAINER: usize = 8;
/// Terminated container IDs remembered, so a termination is compared once.
const SEEN_MAX: usize = 8192;

/// How a container instance ended, as the pod's status says.
#[derive(Clone, Debug, PartialEq)]
pub struct Termination {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// Runtime ID, without the `containerd://` scheme.
    pub container_id: String,
    pub reason: String,
    pub exit_code: i32,
    /// RFC 3339, as the kubelet wrote it.
    pub finished_at: Option<String>,
}

/// Every terminated container instance in `pod`'s status (last and current
/// states of containers and init containers).
pub fn terminations_of(pod: &Pod) -> Vec<Termination> {
    let md = &pod.metadata;
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let statuses = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    let mut out = Vec::new();
    for cs in statuses {
        let states = [cs.last_state.as_ref(), cs.state.as_ref()];
        for t in states
            .into_iter()
            .flatten()
            .filter_map(|s| s.terminated.as_ref())
        {
            let Some(id) = t.container_id.as_deref() else {
                continue;
            };
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            if id.is_empty() {
                continue;
            }
            out.push(Termination {
                namespace: md.namespace.clone().unwrap_or_default(),
                pod: md.name.clone().unwrap_or_default(),
                pod_uid: md.uid.clone().unwrap_or_default(),
                container: cs.name.clone(),
                container_id: id.to_string(),
                reason: t.reason.clone().unwrap_or_default(),
                exit_code: t.exit_code,
                finished_at: t.finished_at.as_ref().map(|f| f.0.to_string()),
            });
        }
    }
    out
}

/// Passes each terminated container instance once.
#[derive(Debug, Default)]
pub struct TerminationWatch {
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl TerminationWatch {
    /// The terminations of `pod` not seen before.
    pub fn observe(&mut self, pod: &Pod) -> Vec<Termination> {
        let mut new = Vec::new();
        for t in terminations_of(pod) {
            if self.seen.insert(t.container_id.clone()) {
                self.order.push_back(t.container_id.clone());
                if self.order.len() > SEEN_MAX
                    && let Some(old) = self.order.pop_front()
                {
                    self.seen.remove(&old);
                }
                new.push(t);
            }
        }
        new
    }
}

/// What the book keeps of one written kill.
#[derive(Clone, Debug, PartialEq)]
pub struct KillNote {
    pub incident: String,
    pub time: String,
    pub killer: KillerKind,
    pub killer_name: Option<String>,
    pub scope: Option<Scope>,
    pub oom_domain: Option<OomDomain>,
    pub main_process: Option<bool>,
    pub group_kill: bool,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// The disagreement: one JSON line.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct ReasonMismatch {
    /// Always `"reason_mismatch"`.
    pub kind: RecordKind,
    /// RFC 3339, UTC: when the container ended, as the kubelet says.
    pub time: Option<String>,
    pub node: String,
    /// The container; `reported_reason` is what Kubernetes says.
    pub k8s: K8s,
    /// The container's exit code, as Kubernetes says.
    pub exit_code: i32,
    /// The kills of this container instance the agent reported (their
    /// `incident` ids).
    pub incidents: Vec<String>,
    /// What the kernel did, in one word: `child_killed` or `main_process_killed`.
    pub kernel: &'static str,
    pub explanation: String,
}

/// The kills written per container instance, and terminations seen before
/// any kill of theirs was written.
#[derive(Debug, Default)]
pub struct KillBook {
    kills: HashMap<String, Vec<KillNote>>,
    order: VecDeque<String>,
    waiting: VecDeque<Termination>,
}

/// Terminations kept while no kill of theirs is written (a kill reported
/// late, a termination listed at start).
const WAITING_MAX: usize = 256;

impl KillBook {
    /// Notes a written kill; returns the disagreement if its container's
    /// termination was seen already.
    pub fn kill(&mut self, kill: &Kill, node: &str) -> Option<ReasonMismatch> {
        let id = kill.k8s.as_ref()?.container_id.clone()?;
        let note = KillNote {
            incident: kill.incident.clone(),
            time: kill.time.clone(),
            killer: kill.killer.kind,
            killer_name: kill.killer.name.clone(),
            scope: kill.scope,
            oom_domain: kill.oom_domain,
            main_process: kill.outcome.main_process,
            group_kill: kill.outcome.group_kill,
            pid: kill.victim.pid,
            comm: kill.victim.comm.clone(),
        };
        if !self.kills.contains_key(&id) {
            self.order.push_back(id.clone());
            if self.order.len() > BOOK_CONTAINERS
                && let Some(old) = self.order.pop_front()
            {
                self.kills.remove(&old);
            }
        }
        let notes = self.kills.entry(id.clone()).or_default();
        notes.push(note);
        if notes.len() > KILLS_PER_CONTAINER {
            notes.remove(0);
        }
        let at = self.waiting.iter().position(|t| t.container_id == id)?;
        let t = self.waiting.remove(at)?;
        compare(&t, &self.kills[&id], node)
    }

    /// A container instance ended: the disagreement with the kills written
    /// for it, if any. With none written yet, it waits for one.
    pub fn termination(&mut self, t: Termination, node: &str) -> Option<ReasonMismatch> {
        match self.kills.get(&t.container_id) {
            Some(notes) => compare(&t, notes, node),
            None => {
                self.waiting.push_back(t);
                if self.waiting.len() > WAITING_MAX {
                    self.waiting.pop_front();
                }
                None
            }
        }
    }
}

/// Kubernetes' reason against the kernel's kills of the same container
/// instance; `None` when they agree or the kills cannot tell.
pub fn compare(t: &Termination, notes: &[KillNote], node: &str) -> Option<ReasonMismatch> {
    let main = notes
        .iter()
        .find(|n| n.main_process == Some(true) || n.group_kill);
    let all_children = !notes.is_empty() && notes.iter().all(|n| n.main_process == Some(false));
    let said = format!(
        "Kubernetes says {}{} for container {} of {}/{}",
        if t.reason.is_empty() {
            "(no reason)"
        } else {
            &t.reason
        },
        format_args!(" (exit code {})", t.exit_code),
        t.container,
        t.namespace,
        t.pod
    );
    let (kernel, explanation) = if t.reason == "OOMKilled" && all_children {
        let victims: Vec<String> = notes
            .iter()
            .map(|n| {
                format!(
                    "{} (pid {})",
                    n.comm.as_deref().unwrap_or("?"),
                    n.pid.map_or_else(|| "?".to_string(), |p| p.to_string())
                )
            })
            .collect();
        let exit = match t.exit_code {
            143 => "; the container exited 143 on SIGTERM",
            137 => "; the container's main process was SIGKILLed by something else",
            0 => "; the container exited 0 on its own",
            _ => "; the container exited on its own",
        };
        (
            "child_killed",
            format!(
                "{said}, but the kernel OOM-killed only a child process ({}); the main process survived it{exit}. The runtime reports OOMKilled for any OOM kill in the container's cgroup. Look at the child's memory, not the container's exit.",
                victims.join(", ")
            ),
        )
    } else if t.reason != "OOMKilled" && t.exit_code == 137 && main.is_some() {
        let n = main?;
        let what = match (n.killer, n.scope) {
            (KillerKind::UserspaceOom, _) => format!(
                "a userspace OOM killer ({}) killed the container's main process",
                n.killer_name.as_deref().unwrap_or("?")
            ),
            (KillerKind::KubeletEviction, _) => return None,
            (KillerKind::KernelOom, Some(Scope::Node)) => {
                "this was a node-level OOM kill: the node ran out of memory and the kernel chose the container's main process".to_string()
            }
            (KillerKind::KernelOom, _) => format!(
                "the kernel OOM-killed the container's main process at the {} limit",
                domain_word(n.oom_domain)
            ),
        };
        ("main_process_killed", format!("{said}; {what}."))
    } else {
        return None;
    };
    Some(ReasonMismatch {
        kind: RecordKind::ReasonMismatch,
        time: t.finished_at.clone(),
        node: node.to_string(),
        k8s: K8s {
            namespace: Some(t.namespace.clone()),
            pod: Some(t.pod.clone()),
            pod_uid: Some(t.pod_uid.clone()),
            container: Some(t.container.clone()),
            container_id: Some(t.container_id.clone()),
            reported_reason: Some(t.reason.clone()),
            ..K8s::default()
        },
        exit_code: t.exit_code,
        incidents: notes.iter().map(|n| n.incident.clone()).collect(),
        kernel,
        explanation,
    })
}

fn domain_word(d: Option<OomDomain>) -> &'static str {
    match d {
        Some(OomDomain::Container) => "container",
        Some(OomDomain::Pod) => "pod",
        Some(OomDomain::NodeAllocatable) => "node allocatable (kubepods)",
        Some(OomDomain::Cgroup) => "cgroup",
        Some(OomDomain::Node) => "node",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real-shaped pod of tests/data/kube/pod.json: container `api`
    /// restarted once, its last state `OOMKilled`, exit code 137.
    fn pod() -> Pod {
        serde_json::from_str(include_str!("../../tests/data/kube/pod.json")).expect("pod.json")
    }

    const LAST_ID: &str = "0b1c2d3e4f5a6b7c8d9e0f1aa3f1c3b5e9d24f7a8b6c0d1e2f3a4b5c6d7e8f9a";

    fn note(main_process: Option<bool>, scope: Scope) -> KillNote {
        KillNote {
            incident: "abcd1234-1".to_string(),
            time: "2025-01-02T03:01:39Z".to_string(),
            killer: KillerKind::KernelOom,
            killer_name: None,
            scope: Some(scope),
            oom_domain: Some(match scope {
                Scope::Node => OomDomain::Node,
                Scope::Cgroup => OomDomain::Container,
            }),
            main_process,
            group_kill: false,
            pid: Some(4242),
            comm: Some("java".to_string()),
        }
    }

    #[test]
    fn the_last_termination_of_a_real_pod_status_is_read_once() {
        let mut w = TerminationWatch::default();
        let t = w.observe(&pod());
        assert_eq!(t.len(), 1, "{t:?}");
        let t = &t[0];
        assert_eq!(t.container, "api");
        assert_eq!(t.container_id, LAST_ID);
        assert_eq!((t.reason.as_str(), t.exit_code), ("OOMKilled", 137));
        assert_eq!(t.namespace, "prod");
        assert_eq!(t.finished_at.as_deref(), Some("2025-01-02T03:01:40Z"));
        assert!(w.observe(&pod()).is_empty(), "seen once");
    }

    #[test]
    fn oomkilled_after_only_a_child_was_killed_disagrees() {
        let mut t = terminations_of(&pod()).remove(0);
        t.exit_code = 143;
        let m = compare(&t, &[note(Some(false), Scope::Cgroup)], "n1").expect("mismatch");
        assert_eq!(m.kernel, "child_killed");
        assert_eq!(m.k8s.reported_reason.as_deref(), Some("OOMKilled"));
        assert_eq!(m.incidents, ["abcd1234-1"]);
        assert!(
            m.explanation.starts_with(
                "Kubernetes says OOMKilled (exit code 143) for container api of prod/api-7f9c6d5b8-x2x9q, but the kernel OOM-killed only a child process (java (pid 4242))"
            ) && m.explanation.contains("exited 143 on SIGTERM"),
            "{}",
            m.explanation
        );
        let json = serde_json::to_value(&m).expect("json");
        assert_eq!(json["kind"], "reason_mismatch");
        assert_eq!(json["k8s"]["reported_reason"], "OOMKilled");
    }

    #[test]
    fn error_137_after_a_node_level_kill_of_the_main_process_disagrees() {
        let mut t = terminations_of(&pod()).remove(0);
        t.reason = "Error".to_string();
        let m = compare(&t, &[note(Some(true), Scope::Node)], "n1").expect("mismatch");
        assert_eq!(m.kernel, "main_process_killed");
        assert!(
            m.explanation
                .starts_with("Kubernetes says Error (exit code 137)")
                && m.explanation.contains("this was a node-level OOM kill"),
            "{}",
            m.explanation
        );
    }

    #[test]
    fn agreement_and_unknowns_say_nothing() {
        let t = terminations_of(&pod()).remove(0);
        // OOMKilled and the main process was killed: they agree.
        assert_eq!(compare(&t, &[note(Some(true), Scope::Cgroup)], "n"), None);
        // Whether the victim was the main process is unknown: no claim.
        assert_eq!(compare(&t, &[note(None, Scope::Cgroup)], "n"), None);
        // No kill of this container was reported: nothing to compare.
        assert_eq!(compare(&t, &[], "n"), None);
        // Error/1 is not a kill.
        let mut e = t.clone();
        (e.reason, e.exit_code) = ("Error".to_string(), 1);
        assert_eq!(compare(&e, &[note(Some(true), Scope::Node)], "n"), None);
    }

    #[test]
    fn a_termination_seen_before_its_kill_is_compared_when_the_kill_is_written() {
        let mut book = KillBook::default();
        let mut t = terminations_of(&pod()).remove(0);
        t.exit_code = 0;
        assert_eq!(book.termination(t, "n"), None, "no kill written yet");
        let kill = Kill {
            incident: "ffff0000-7".to_string(),
            k8s: Some(K8s {
                container_id: Some(LAST_ID.to_string()),
                ..K8s::default()
            }),
            outcome: crate::report::Outcome {
                main_process: Some(false),
                ..Default::default()
            },
            ..Kill::default()
        };
        let m = book
            .kill(&kill, "n")
            .expect("compared once the kill is written");
        assert_eq!(m.kernel, "child_killed");
        assert_eq!(m.incidents, ["ffff0000-7"]);
        assert!(book.kill(&kill, "n").is_none(), "compared once");
    }
}
