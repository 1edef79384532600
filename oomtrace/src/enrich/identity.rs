//! Kubernetes identity from a memory cgroup path: pod UID, container ID, QoS
//! class, runtime, and which kubelet level the cgroup is.
//!
//! The kubelet names its cgroups in two ways (KERNEL-FACTS §6):
//!
//! - **systemd driver**: every level is a slice whose name repeats its
//!   parent's, `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`
//!   (the UID with `_` for `-`); with a `cgroupRoot` such as `/kubelet` every
//!   name gains that prefix (`kubelet-kubepods-burstable-pod…`). Containers are
//!   scopes: `cri-containerd-<id>.scope`, `crio-<id>.scope` (crun on cgroup v2
//!   adds a `/container` child), `crio-conmon-<id>.scope` (CRI-O's monitor),
//!   `docker-<id>.scope` (dockershim, cri-dockerd).
//! - **cgroupfs driver**: `kubepods/burstable/pod<uid>/<64hex>` (containerd,
//!   docker) or `…/pod<uid>/crio-<64hex>` (CRI-O).
//!
//! Guaranteed pods have no QoS level. The kubepods cgroup may sit under any
//! prefix (kind nodes, LXC, a kubelet in a container), and runtimes with a
//! broken systemd setup leave the literal `slice:prefix:id` form under
//! `containerd.service`. Anything that is not a pod is named for what it is.
//!
//! The pod sandbox (pause) container has a container cgroup like any other:
//! its path cannot tell it apart, its oom_score_adj (-998) can (see
//! [`crate::enrich::qos::check`]).

use crate::enrich::podnames::PodName;
use crate::report::{K8s, OomDomain};

/// A pod's Kubernetes QoS class, as the kubelet places it in the cgroup tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    /// Requests equal limits for every container: no QoS level in the path.
    Guaranteed,
    /// Some request or limit set: under `kubepods-burstable`.
    Burstable,
    /// No request or limit: under `kubepods-besteffort`.
    BestEffort,
}

impl QosClass {
    /// The Kubernetes spelling (`status.qosClass`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }

    /// From the Kubernetes spelling (as stored in [`K8s::qos_class`]).
    pub fn from_k8s(name: &str) -> Option<Self> {
        match name {
            "Guaranteed" => Some(Self::Guaranteed),
            "Burstable" => Some(Self::Burstable),
            "BestEffort" => Some(Self::BestEffort),
            _ => None,
        }
    }
}

/// The container runtime, as far as the cgroup name tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `cri-containerd-<id>.scope` or `…:cri-containerd:<id>`.
    Containerd,
    /// `crio-<id>.scope`, `crio-conmon-<id>.scope`, cgroupfs `crio-<id>`.
    CriO,
    /// `docker-<id>.scope` (dockershim, cri-dockerd, plain docker).
    Docker,
}

impl Runtime {
    /// `containerd`, `cri-o`, `docker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
        }
    }
}

/// Which level of the kubelet's cgroup tree a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// A container's cgroup, or a cgroup below it (crun's `/container`, a
    /// nested hierarchy inside the container).
    Container,
    /// The runtime's per-container monitor in the pod cgroup (CRI-O's
    /// `crio-conmon-<id>.scope`): not a workload; `container_id` is the ID of
    /// the container it watches.
    Monitor,
    /// The pod cgroup itself (processes directly in it are unusual).
    Pod,
    /// A QoS cgroup (`kubepods-burstable`, `kubepods-besteffort`).
    Qos,
    /// The kubepods cgroup: the node's allocatable memory.
    Kubepods,
    /// Not under a kubepods cgroup: see [`Identity::other`].
    NotKubernetes,
}

/// What a memory cgroup path says about its processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub level: Level,
    /// Pod UID with dashes (static pods have a 32-hex config hash instead).
    pub pod_uid: Option<String>,
    /// Container ID as the runtime spells it (64 hex digits for CRI runtimes).
    pub container_id: Option<String>,
    /// `None` when the path does not reach a QoS level or pod cgroup.
    pub qos: Option<QosClass>,
    /// `None` when the cgroup name does not tell (cgroupfs bare IDs).
    pub runtime: Option<Runtime>,
    /// Prefix up to and including the kubepods cgroup.
    pub kubepods_path: Option<String>,
    /// Prefix up to and including the QoS cgroup (`None` for Guaranteed).
    pub qos_path: Option<String>,
    /// Prefix up to and including the pod cgroup.
    pub pod_path: Option<String>,
    /// Prefix up to and including the container (or monitor) cgroup.
    pub container_path: Option<String>,
    /// What the cgroup is when it is not a pod: "systemd service foo.service",
    /// "user session 3 of uid 1000", "root cgroup", ...
    pub other: Option<String>,
}

impl Identity {
    fn not_kubernetes(other: String) -> Self {
        Self {
            level: Level::NotKubernetes,
            pod_uid: None,
            container_id: None,
            qos: None,
            runtime: None,
            kubepods_path: None,
            qos_path: None,
            pod_path: None,
            container_path: None,
            other: Some(other),
        }
    }

    fn kubepods(level: Level, kubepods_path: Option<String>) -> Self {
        Self {
            level,
            pod_uid: None,
            container_id: None,
            qos: None,
            runtime: None,
            kubepods_path,
            qos_path: None,
            pod_path: None,
            container_path: None,
            other: None,
        }
    }

    /// Whether the path is a pod, or a container or monitor inside one.
    pub fn is_pod(&self) -> bool {
        matches!(self.level, Level::Container | Level::Monitor | Level::Pod)
    }

    /// The event's `k8s` object: `None` when the cgroup is not a pod's.
    /// `name` comes from [`crate::enrich::podnames::PodNames::lookup`].
    pub fn to_k8s(&self, name: Option<&PodName>) -> Option<K8s> {
        if !self.is_pod() {
            return None;
        }
        Some(K8s {
            namespace: name.map(|n| n.namespace.clone()),
            pod: name.map(|n| n.pod.clone()),
            pod_uid: self.pod_uid.clone(),
            container: name.and_then(|n| n.container.clone()),
            container_id: self.container_id.clone(),
            qos_class: self.qos.map(|q| q.as_str().to_owned()),
            runtime: self.runtime.map(|r| r.as_str().to_owned()),
            ..K8s::default()
        })
    }
}

/// Parses a memory cgroup path, relative to the controller's mount (v1 or
/// v2). Also accepts a `/proc/<pid>/cgroup` line (`0::/path`,
/// `4:memory:/path`) and a path under `/sys/fs/cgroup[/memory]`.
pub fn parse(path: &str) -> Identity {
    let path = normalize(path);
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let prefix = |last: usize| format!("/{}", comps[..=last].join("/"));

    // The outermost kubepods cgroup: the one the node's kubelet manages.
    if let Some((i, kp)) = comps
        .iter()
        .enumerate()
        .find_map(|(i, c)| kubepods_unit(c).map(|kp| (i, kp)))
    {
        return parse_below_kubepods(&comps, i, kp, &prefix);
    }
    // `…/kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>`: the literal
    // systemd cgroupsPath a runtime left as a directory name.
    if let Some((i, identity)) = comps
        .iter()
        .enumerate()
        .find_map(|(i, c)| colon_form(c).map(|id| (i, id)))
    {
        return Identity {
            container_path: Some(prefix(i)),
            ..identity
        };
    }
    describe_other(&comps)
}

/// How the kubelet spelled its kubepods cgroup.
#[derive(Clone, Copy)]
enum Kubepods<'a> {
    /// cgroupfs driver: `kubepods`.
    Cgroupfs,
    /// systemd driver: the unit name without `.slice` (`kubepods`, `kubelet-kubepods`).
    Systemd(&'a str),
}

fn kubepods_unit(comp: &str) -> Option<Kubepods<'_>> {
    if comp == "kubepods" {
        return Some(Kubepods::Cgroupfs);
    }
    let unit = comp.strip_suffix(".slice")?;
    (unit == "kubepods" || unit.ends_with("-kubepods")).then_some(Kubepods::Systemd(unit))
}

fn parse_below_kubepods(
    comps: &[&str],
    kp_index: usize,
    kp: Kubepods<'_>,
    prefix: &dyn Fn(usize) -> String,
) -> Identity {
    let mut id = Identity::kubepods(Level::Kubepods, Some(prefix(kp_index)));
    let mut next = kp_index + 1;
    // The unit name pod slices of this branch start with.
    let mut parent_unit = match kp {
        Kubepods::Systemd(unit) => unit.to_owned(),
        Kubepods::Cgroupfs => String::new(),
    };

    if let Some(comp) = comps.get(next) {
        let qos = match kp {
            Kubepods::Cgroupfs => qos_word(comp).map(|q| (q, String::new())),
            Kubepods::Systemd(unit) => comp
                .strip_suffix(".slice")
                .and_then(|u| u.strip_prefix(unit))
                .and_then(|u| u.strip_prefix('-'))
                .and_then(qos_word)
                .map(|q| (q, format!("{unit}-{}", q.as_str().to_ascii_lowercase()))),
        };
        if let Some((qos, unit)) = qos {
            id.level = Level::Qos;
            id.qos = Some(qos);
            id.qos_path = Some(prefix(next));
            parent_unit = unit;
            next += 1;
        }
    }

    let Some(pod_uid) = comps.get(next).and_then(|c| pod_uid(c, kp, &parent_unit)) else {
        return id;
    };
    id.level = Level::Pod;
    id.pod_uid = Some(pod_uid);
    id.qos.get_or_insert(QosClass::Guaranteed);
    id.pod_path = Some(prefix(next));
    next += 1;

    if let Some(comp) = comps.get(next) {
        let (level, runtime, container_id) = match container(comp) {
            Some(c) => c,
            // Every child of a pod cgroup is a container's (or its monitor's);
            // an unknown naming leaves ID and runtime unknown.
            None => (Level::Container, None, None),
        };
        id.level = level;
        id.runtime = runtime;
        id.container_id = container_id;
        id.container_path = Some(prefix(next));
    }
    id
}

fn qos_word(word: &str) -> Option<QosClass> {
    match word {
        "burstable" => Some(QosClass::Burstable),
        "besteffort" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// The pod UID, with dashes, of a pod cgroup name below a known kubepods unit.
fn pod_uid(comp: &str, kp: Kubepods<'_>, parent_unit: &str) -> Option<String> {
    let raw = match kp {
        Kubepods::Cgroupfs => comp.strip_prefix("pod")?,
        Kubepods::Systemd(_) => {
            let unit = comp.strip_suffix(".slice")?;
            unit.strip_prefix(parent_unit)
                .and_then(|u| u.strip_prefix("-pod"))
                .or_else(|| unit.rsplit_once("-pod").map(|(_, uid)| uid))?
        }
    };
    uid_from(raw)
}

/// A pod UID as the kubelet writes it into cgroup names, with dashes: a
/// UUID (`_` for `-` in systemd unit names), or a static pod's UID, the
/// kubelet's 32-hex hash of its manifest (`pod8b1e9057c80f383869339e73f7286d7b`).
fn uid_from(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-");
    let uuid = uid.len() == 36
        && uid.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    let static_hash = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
    (uuid || static_hash).then_some(uid)
}

/// The pod UID of a pod cgroup directory name, wherever it sits: `pod<uid>`
/// (cgroupfs driver) or `…kubepods…-pod<uid_>.slice` (systemd driver).
pub fn pod_uid_of_dir(name: &str) -> Option<String> {
    if let Some(raw) = name.strip_prefix("pod") {
        return uid_from(raw);
    }
    let unit = name.strip_suffix(".slice")?;
    if !unit.contains("kubepods") {
        return None;
    }
    uid_from(unit.rsplit_once("-pod")?.1)
}

/// The pod part of a cgroup path: (index of the pod component, pod UID).
pub fn pod_component(path: &str) -> Option<(usize, String)> {
    path.split('/')
        .enumerate()
        .find_map(|(i, c)| pod_uid_of_dir(c).map(|uid| (i, uid)))
}

fn is_hex_id(id: &str, min_len: usize) -> bool {
    id.len() >= min_len && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container (or monitor) cgroup name: level, runtime, ID.
fn container(comp: &str) -> Option<(Level, Option<Runtime>, Option<String>)> {
    let name = comp.strip_suffix(".scope").unwrap_or(comp);
    let prefixed = [
        ("crio-conmon-", Level::Monitor, Runtime::CriO),
        ("cri-containerd-", Level::Container, Runtime::Containerd),
        ("crio-", Level::Container, Runtime::CriO),
        ("docker-", Level::Container, Runtime::Docker),
    ];
    for (start, level, runtime) in prefixed {
        if let Some(id) = name.strip_prefix(start)
            && is_hex_id(id, 12)
        {
            return Some((level, Some(runtime), Some(id.to_owned())));
        }
    }
    // cgroupfs driver with containerd or docker: the bare 64-hex ID.
    (name.len() == 64 && is_hex_id(name, 64))
        .then(|| (Level::Container, None, Some(name.to_owned())))
}

/// `kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>`.
fn colon_form(comp: &str) -> Option<Identity> {
    let mut parts = comp.splitn(3, ':');
    let (slice, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
    let (parent, uid) = slice.strip_suffix(".slice")?.rsplit_once("-pod")?;
    let qos = if parent == "kubepods" || parent.ends_with("-kubepods") {
        QosClass::Guaranteed
    } else if parent.ends_with("kubepods-burstable") {
        QosClass::Burstable
    } else if parent.ends_with("kubepods-besteffort") {
        QosClass::BestEffort
    } else {
        return None;
    };
    if uid_from(uid).is_none() || !is_hex_id(id, 12) {
        return None;
    }
    let (level, runtime) = match kind {
        "cri-containerd" => (Level::Container, Some(Runtime::Containerd)),
        "crio" => (Level::Container, Some(Runtime::CriO)),
        "crio-conmon" => (Level::Monitor, Some(Runtime::CriO)),
        "docker" => (Level::Container, Some(Runtime::Docker)),
        _ => (Level::Container, None),
    };
    Some(Identity {
        level,
        pod_uid: Some(uid.replace('_', "-")),
        container_id: Some(id.to_owned()),
        qos: Some(qos),
        runtime,
        kubepods_path: None,
        qos_path: None,
        pod_path: None,
        container_path: None,
        other: None,
    })
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A container that is not a pod's: description, runtime, ID.
fn outer_container(comps: &[&str], i: usize) -> Option<(String, Option<Runtime>, Option<String>)> {
    let comp = comps[i];
    if let Some(name) = comp
        .strip_prefix("lxc.payload.")
        .or_else(|| comp.strip_prefix("lxc.payload/"))
    {
        return Some((format!("LXC container {name}"), None, None));
    }
    if let Some(name) = comp.strip_prefix("lxc.monitor.") {
        return Some((format!("LXC monitor of {name}"), None, None));
    }
    let parent = i.checked_sub(1).map(|p| comps[p]);
    if matches!(parent, Some("lxc" | "lxc.payload")) {
        return Some((format!("LXC container {comp}"), None, None));
    }
    if parent == Some("docker") && is_hex_id(comp, 64) {
        return Some((
            format!("docker container {}", short(comp)),
            Some(Runtime::Docker),
            Some(comp.to_owned()),
        ));
    }
    let scope = comp.strip_suffix(".scope")?;
    if let Some(id) = scope.strip_prefix("docker-").filter(|id| is_hex_id(id, 12)) {
        return Some((
            format!("docker container {}", short(id)),
            Some(Runtime::Docker),
            Some(id.to_owned()),
        ));
    }
    if let Some(id) = scope.strip_prefix("libpod-").filter(|id| is_hex_id(id, 12)) {
        return Some((
            format!("podman container {}", short(id)),
            None,
            Some(id.to_owned()),
        ));
    }
    if let Some(id) = scope
        .strip_prefix("cri-containerd-")
        .filter(|id| is_hex_id(id, 12))
    {
        return Some((
            format!("containerd container {} (not in a pod cgroup)", short(id)),
            Some(Runtime::Containerd),
            Some(id.to_owned()),
        ));
    }
    if let Some(id) = scope.strip_prefix("crio-").filter(|id| is_hex_id(id, 12)) {
        return Some((
            format!("cri-o container {} (not in a pod cgroup)", short(id)),
            Some(Runtime::CriO),
            Some(id.to_owned()),
        ));
    }
    if scope.starts_with("machine-") {
        return Some((format!("systemd-machined machine {comp}"), None, None));
    }
    None
}

/// A systemd unit or plain cgroup that is not a container.
fn describe_unit(comps: &[&str], i: usize) -> String {
    let comp = comps[i];
    let uid = comps[..i].iter().rev().find_map(|c| {
        c.strip_prefix("user-")
            .and_then(|u| u.strip_suffix(".slice"))
    });
    if let (Some(session), Some(uid)) = (
        comp.strip_prefix("session-")
            .and_then(|s| s.strip_suffix(".scope")),
        uid,
    ) {
        return format!("user session {session} of uid {uid}");
    }
    if comp == "init.scope" && i == 0 {
        return "systemd (init.scope)".to_owned();
    }
    if let Some(manager_uid) = comp
        .strip_prefix("user@")
        .and_then(|u| u.strip_suffix(".service"))
    {
        return format!("systemd user manager of uid {manager_uid}");
    }
    let in_user_manager = comps[..i].iter().find_map(|c| {
        c.strip_prefix("user@")
            .and_then(|u| u.strip_suffix(".service"))
    });
    let kind = if comp.ends_with(".service") {
        "systemd service"
    } else if comp.ends_with(".scope") {
        "systemd scope"
    } else if comp.ends_with(".slice") {
        "systemd slice"
    } else {
        return format!("cgroup /{}", comps[..=i].join("/"));
    };
    match in_user_manager {
        Some(uid) => format!("{kind} {comp} of uid {uid}"),
        None => format!("{kind} {comp}"),
    }
}

fn describe_other(comps: &[&str]) -> Identity {
    let Some(last) = comps.len().checked_sub(1) else {
        return Identity::not_kubernetes("root cgroup".to_owned());
    };
    let outer = (0..comps.len()).find_map(|i| outer_container(comps, i).map(|o| (i, o)));
    match outer {
        Some((i, (what, runtime, container_id)))
            if i == last || comps[i + 1..] == ["container"] =>
        {
            Identity {
                runtime,
                container_id,
                ..Identity::not_kubernetes(what)
            }
        }
        Some((_, (what, _, _))) => {
            Identity::not_kubernetes(format!("{} inside {what}", describe_unit(comps, last)))
        }
        None => Identity::not_kubernetes(describe_unit(comps, last)),
    }
}

/// Strips a `/proc/<pid>/cgroup` line or a `/sys/fs/cgroup` mount prefix,
/// trailing slashes; always starts with `/`.
fn normalize(raw: &str) -> String {
    let mut p = raw.trim();
    if p.starts_with(|c: char| c.is_ascii_digit()) {
        let mut parts = p.splitn(3, ':');
        if let (Some(hier), Some(_controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
            && hier.bytes().all(|b| b.is_ascii_digit())
        {
            p = path;
        }
    }
    for mount in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        if let Some(rest) = p.strip_prefix(mount)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            p = rest;
            break;
        }
    }
    let p = p.trim_end_matches('/');
    if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    }
}

fn same_or_below(path: &str, ancestor: &str) -> bool {
    path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// The Kubernetes level of the cgroup whose limit was hit.
///
/// `None` for the OOM cgroup (a global OOM, `global_oom` in the kernel's
/// line) is [`OomDomain::Node`]; the root cgroup has no limit, so `/` is too.
/// Otherwise the OOM cgroup is compared with the victim's container, pod and
/// kubepods/QoS cgroups; without a victim path its own shape decides.
pub fn oom_domain(oom_cgroup: Option<&str>, victim_cgroup: Option<&str>) -> OomDomain {
    let Some(oom) = oom_cgroup.map(normalize) else {
        return OomDomain::Node;
    };
    if oom == "/" {
        return OomDomain::Node;
    }
    if let Some(victim) = victim_cgroup.map(parse) {
        if let Some(container) = &victim.container_path
            && same_or_below(&oom, container)
        {
            return OomDomain::Container;
        }
        if victim.pod_path.as_deref() == Some(oom.as_str()) {
            return OomDomain::Pod;
        }
        if victim.kubepods_path.as_deref() == Some(oom.as_str())
            || victim.qos_path.as_deref() == Some(oom.as_str())
        {
            return OomDomain::NodeAllocatable;
        }
    }
    let own = parse(&oom);
    if own
        .container_path
        .as_deref()
        .is_some_and(|c| same_or_below(&oom, c))
    {
        OomDomain::Container
    } else if own.pod_path.as_deref() == Some(oom.as_str()) {
        OomDomain::Pod
    } else if own.kubepods_path.as_deref() == Some(oom.as_str())
        || own.qos_path.as_deref() == Some(oom.as_str())
    {
        OomDomain::NodeAllocatable
    } else {
        OomDomain::Cgroup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_pod_dir(name: &str) -> bool {
        pod_uid_of_dir(name).is_some()
    }

    fn qos_of_path(path: &str) -> Option<&'static str> {
        pod_component(path)?;
        parse(path).qos.map(QosClass::as_str)
    }

    #[test]
    fn pod_dirs_and_qos_from_paths_as_node_memory_sees_them() {
        assert!(is_pod_dir("pod8833712d-6e69-4f5c-95f3-aebd020ce2e7"));
        assert!(is_pod_dir(
            "kubepods-burstable-pod3e61aa2b_7c1d_4c7e_9d39_2c1f0a6b8e11.slice"
        ));
        assert!(!is_pod_dir("kubepods-burstable.slice"));
        assert!(!is_pod_dir("podman.service"));
        // Static pods: the 32-hex manifest hash (fluent/fluent-operator#855's kube-apiserver).
        assert!(is_pod_dir("pod8b1e9057c80f383869339e73f7286d7b"));
        assert!(is_pod_dir(
            "kubepods-burstable-pod8b1e9057c80f383869339e73f7286d7b.slice"
        ));
        assert_eq!(
            qos_of_path("/kubepods/burstable/pod8b1e9057c80f383869339e73f7286d7b"),
            Some("Burstable")
        );
        let p = "/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/0123";
        assert_eq!(qos_of_path(p), Some("Burstable"));
        assert_eq!(
            qos_of_path("/x/kubepods/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7"),
            Some("Guaranteed")
        );
        assert_eq!(
            qos_of_path(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3e61aa2b_7c1d_4c7e_9d39_2c1f0a6b8e11.slice"
            ),
            Some("BestEffort")
        );
        assert_eq!(qos_of_path("/system.slice/containerd.service"), None);
    }

    /// Real paths with the expected identity, from `tests/data/identity/paths.txt`
    /// (each with its `# source:`). Format: `path|level|uid|id|qos|runtime`.
    const PATHS: &str = include_str!("../../tests/data/identity/paths.txt");

    fn level(name: &str) -> Level {
        match name {
            "container" => Level::Container,
            "monitor" => Level::Monitor,
            "pod" => Level::Pod,
            "qos" => Level::Qos,
            "kubepods" => Level::Kubepods,
            "other" => Level::NotKubernetes,
            other => panic!("unknown level {other} in paths.txt"),
        }
    }

    fn opt(field: &str) -> Option<&str> {
        (field != "-").then_some(field)
    }

    #[test]
    fn every_real_path_in_the_data_file() {
        let mut checked = 0;
        for line in PATHS
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 6, "bad line {line}");
            let id = parse(f[0]);
            assert_eq!(id.level, level(f[1]), "{line}");
            assert_eq!(id.pod_uid.as_deref(), opt(f[2]), "{line}");
            assert_eq!(id.container_id.as_deref(), opt(f[3]), "{line}");
            assert_eq!(id.qos.map(QosClass::as_str), opt(f[4]), "{line}");
            assert_eq!(id.runtime.map(Runtime::as_str), opt(f[5]), "{line}");
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} paths checked");
    }

    // source: kubernetes/kubernetes#86337 (kernel log of a Guaranteed pod, systemd driver, docker)
    #[test]
    fn guaranteed_systemd_pod_and_prefixes() {
        let p = "/kubepods.slice/kubepods-pod392bf93e_1fcf_11ea_9b5b_3cfdfe576498.slice/27edbc0dd4ec2a3e9a4d8ef8b014eda12e76ff36da95b0a91e842f5dac4fc02f";
        let id = parse(p);
        assert_eq!(id.level, Level::Container);
        assert_eq!(id.qos, Some(QosClass::Guaranteed));
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("392bf93e-1fcf-11ea-9b5b-3cfdfe576498")
        );
        assert_eq!(id.kubepods_path.as_deref(), Some("/kubepods.slice"));
        assert_eq!(id.qos_path, None);
        assert_eq!(
            id.pod_path.as_deref(),
            Some("/kubepods.slice/kubepods-pod392bf93e_1fcf_11ea_9b5b_3cfdfe576498.slice")
        );
        assert_eq!(id.container_path.as_deref(), Some(p));
    }

    // source: cri-o/cri-o datadog-agent test of crun's sub-cgroup (DataDog/datadog-agent
    // TestCRIOSubCgroupInodeResolution), systemd driver, cgroup v2
    #[test]
    fn crun_container_subcgroup_keeps_the_scope_as_container_path() {
        let scope = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podb3922967_14e1_4867_9388_461bac94b37e.slice/crio-2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc40.scope";
        let id = parse(&format!("{scope}/container"));
        assert_eq!(id.level, Level::Container);
        assert_eq!(id.runtime, Some(Runtime::CriO));
        assert_eq!(id.container_path.as_deref(), Some(scope));
        assert_eq!(
            id.qos_path.as_deref(),
            Some("/kubepods.slice/kubepods-besteffort.slice")
        );
    }

    // source: kubernetes/kubernetes#114142 (cgroupfs driver, cgroup v1, /sys/fs/cgroup/memory)
    #[test]
    fn sysfs_and_proc_line_forms() {
        let id = parse(
            "/sys/fs/cgroup/memory/kubepods/burstable/pod22697648-cc63-47d6-ba97-fe420988dfc1",
        );
        assert_eq!(id.level, Level::Pod);
        assert_eq!(
            id.pod_path.as_deref(),
            Some("/kubepods/burstable/pod22697648-cc63-47d6-ba97-fe420988dfc1")
        );
        // source: opencontainers/runc#4620 (/proc/<pid>/cgroup, v1 hybrid)
        let line = "12:cpuset:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope";
        let id = parse(line);
        assert_eq!(
            id.container_id.as_deref(),
            Some("5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c")
        );
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("a5c1f8d5-1919-434d-add7-4afaafdaef89")
        );
        // v1 line of the colon form keeps its colons.
        // source: a cgroup-line parser test quoting `12:cpu,cpuacct:/system.slice/containerd.service/…`
        let line = "12:cpu,cpuacct:/system.slice/containerd.service/kubepods-besteffort-podb41662f7_b03a_4c65_8ef9_6e4e55c3cf27.slice:cri-containerd:1753b7cbbf62734d812936961224d5bc0cf8f45214e0d5cdd1a781a053e7c48f";
        let id = parse(line);
        assert_eq!(id.level, Level::Container);
        assert_eq!(id.qos, Some(QosClass::BestEffort));
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("b41662f7-b03a-4c65-8ef9-6e4e55c3cf27")
        );
        assert_eq!(
            id.pod_path, None,
            "no separate pod cgroup in the colon form"
        );
        assert!(
            id.container_path
                .as_deref()
                .is_some_and(|p| p.ends_with("e7c48f"))
        );
    }

    #[test]
    fn kind_node_prefixes_and_nested_kubelet() {
        // source: koordinator-sh/koordinator#820 (kubelet cgroupRoot /kubelet, as kind sets it; kind#3947)
        let id = parse(
            "/host-cgroup/cpuacct/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod2b43bd30_0b55_4452_9673_0ad6ef917c0a.slice",
        );
        assert_eq!(id.level, Level::Pod);
        assert_eq!(
            id.kubepods_path.as_deref(),
            Some("/host-cgroup/cpuacct/kubelet.slice/kubelet-kubepods.slice")
        );
        assert_eq!(id.qos, Some(QosClass::BestEffort));
        // source: kubernetes/minikube#11280 (systemd-cgls of a kic node: /docker/<id>/kubepods.slice/…)
        let id = parse(
            "/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_3599_498d_bb9d_4446693fa3ea.slice/crio-358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c.scope",
        );
        assert_eq!(id.level, Level::Container);
        assert_eq!(
            id.kubepods_path.as_deref(),
            Some(
                "/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/kubepods.slice"
            )
        );
    }

    #[test]
    fn not_kubernetes_is_named() {
        let other = |p: &str| parse(p).other.unwrap_or_default();
        assert_eq!(other("/"), "root cgroup");
        assert_eq!(other(""), "root cgroup");
        // source: kubernetes/kubernetes#72853 / kontena/pharos-cluster#440 (kubelet, dockerd units)
        assert_eq!(
            other("/system.slice/kubelet.service"),
            "systemd service kubelet.service"
        );
        assert_eq!(
            other("/user.slice/user-1000.slice/session-1.scope"),
            "user session 1 of uid 1000"
        );
        assert_eq!(other("/init.scope"), "systemd (init.scope)");
        // source: openshift/microshift#697 (conmon in system.slice when conmon_cgroup=system.slice)
        let conmon = "/system.slice/crio-conmon-e0c85fe7644a858988d9687c2e0736a7d31922740d0f3e001c6b2e0aa7e5f528.scope";
        assert_eq!(
            other(conmon),
            "systemd scope crio-conmon-e0c85fe7644a858988d9687c2e0736a7d31922740d0f3e001c6b2e0aa7e5f528.scope"
        );
        // source: a kind-node cgroup test: containerd of a kind node seen from the host
        let id = parse(
            "0::/system.slice/docker-89ac90181a86fdea23d87ab993ceb698aa61528123c23135ef43fe5246a1b11e.scope/system.slice/containerd.service",
        );
        assert_eq!(id.level, Level::NotKubernetes);
        assert_eq!(
            id.other.as_deref(),
            Some("systemd service containerd.service inside docker container 89ac90181a86")
        );
        let id = parse(
            "/system.slice/docker-89ac90181a86fdea23d87ab993ceb698aa61528123c23135ef43fe5246a1b11e.scope",
        );
        assert_eq!(id.runtime, Some(Runtime::Docker));
        assert_eq!(
            id.container_id.as_deref(),
            Some("89ac90181a86fdea23d87ab993ceb698aa61528123c23135ef43fe5246a1b11e")
        );
        assert_eq!(other("/lxc.payload.web1"), "LXC container web1");
        assert_eq!(
            other("/lxc.payload.web1/system.slice/nginx.service"),
            "systemd service nginx.service inside LXC container web1"
        );
        assert_eq!(
            other("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            "systemd service foo.service of uid 1000"
        );
        assert!(!parse("/system.slice/kubelet.service").is_pod());
        assert_eq!(parse("/system.slice/kubelet.service").to_k8s(None), None);
    }

    #[test]
    fn qos_and_kubepods_levels() {
        let id = parse("/kubepods.slice/kubepods-burstable.slice");
        assert_eq!((id.level, id.qos), (Level::Qos, Some(QosClass::Burstable)));
        assert_eq!(id.kubepods_path.as_deref(), Some("/kubepods.slice"));
        let id = parse("/kubepods.slice");
        assert_eq!((id.level, id.qos), (Level::Kubepods, None));
        let id = parse("/kubepods/besteffort");
        assert_eq!((id.level, id.qos), (Level::Qos, Some(QosClass::BestEffort)));
        // A malformed pod name stops at the QoS level rather than inventing a UID.
        let id =
            parse("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podNOTAUUID.slice");
        assert_eq!(id.level, Level::Qos);
        assert_eq!(id.pod_uid, None);
    }

    #[test]
    fn to_k8s_fills_names_and_spellings() {
        let id = parse(
            "/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c",
        );
        let name = PodName {
            namespace: "kube-system".into(),
            pod: "calico-node-hx7cw".into(),
            container: Some("calico-node".into()),
        };
        let k8s = id.to_k8s(Some(&name)).expect("a pod");
        assert_eq!(k8s.qos_class.as_deref(), Some("Burstable"));
        assert_eq!(k8s.runtime.as_deref(), Some("cri-o"));
        assert_eq!(k8s.namespace.as_deref(), Some("kube-system"));
        assert_eq!(k8s.container.as_deref(), Some("calico-node"));
        let k8s = id.to_k8s(None).expect("a pod");
        assert_eq!(k8s.pod, None);
        assert_eq!(
            k8s.pod_uid.as_deref(),
            Some("8833712d-6e69-4f5c-95f3-aebd020ce2e7")
        );
    }

    // Paths of kubernetes/kubernetes#86337 and istio/istio#42734 (kernel OOM reports).
    const G_POD: &str = "/kubepods.slice/kubepods-pod392bf93e_1fcf_11ea_9b5b_3cfdfe576498.slice";
    const G_CTR: &str = "/kubepods.slice/kubepods-pod392bf93e_1fcf_11ea_9b5b_3cfdfe576498.slice/27edbc0dd4ec2a3e9a4d8ef8b014eda12e76ff36da95b0a91e842f5dac4fc02f";
    const B_CTR: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0330b2c1_a15b_4cdd_b5e5_72d4a90bee82.slice/docker-b27201334a41cd0749d053b18378d7ea65617b8e26277197ea25c974da1a5a8a.scope";

    #[test]
    fn oom_domain_for_each_level() {
        // "Task in <G_CTR> killed as a result of limit of <G_POD>" (#86337): the pod limit.
        assert_eq!(oom_domain(Some(G_POD), Some(G_CTR)), OomDomain::Pod);
        // istio#42734: task and limit are the same container scope.
        assert_eq!(oom_domain(Some(B_CTR), Some(B_CTR)), OomDomain::Container);
        assert_eq!(
            oom_domain(Some(&format!("{B_CTR}/")), Some(B_CTR)),
            OomDomain::Container
        );
        assert_eq!(
            oom_domain(Some("/kubepods.slice"), Some(B_CTR)),
            OomDomain::NodeAllocatable
        );
        assert_eq!(
            oom_domain(
                Some("/kubepods.slice/kubepods-burstable.slice"),
                Some(B_CTR)
            ),
            OomDomain::NodeAllocatable
        );
        assert_eq!(oom_domain(None, Some(B_CTR)), OomDomain::Node);
        assert_eq!(oom_domain(Some("/"), Some(B_CTR)), OomDomain::Node);
        assert_eq!(
            oom_domain(
                Some("/system.slice/foo.service"),
                Some("/system.slice/foo.service")
            ),
            OomDomain::Cgroup
        );
        // The limit of a crun `/container` sub-cgroup is still the container's.
        let scope = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podb3922967_14e1_4867_9388_461bac94b37e.slice/crio-2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc40.scope";
        let sub = format!("{scope}/container");
        assert_eq!(oom_domain(Some(&sub), Some(&sub)), OomDomain::Container);
        assert_eq!(oom_domain(Some(scope), Some(&sub)), OomDomain::Container);
        // Without the victim's path, the OOM cgroup's own shape decides.
        assert_eq!(oom_domain(Some(G_POD), None), OomDomain::Pod);
        assert_eq!(
            oom_domain(Some("/kubepods/burstable"), None),
            OomDomain::NodeAllocatable
        );
        // A prefix that is not a path boundary is not an ancestor.
        assert_eq!(
            oom_domain(Some("/kubepods.slice/kubepods-pod392bf93e"), Some(G_CTR)),
            OomDomain::Cgroup
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// A kubelet-made container cgroup path (KERNEL-FACTS §6) and what it must parse to.
        #[derive(Debug, Clone)]
        struct Made {
            path: String,
            kubepods: String,
            pod: String,
            container: String,
            uid: String,
            id: String,
            qos: QosClass,
            runtime: Option<Runtime>,
        }

        fn made() -> impl Strategy<Value = Made> {
            (
                any::<bool>(),
                prop::sample::select(vec![
                    QosClass::Guaranteed,
                    QosClass::Burstable,
                    QosClass::BestEffort,
                ]),
                "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "[0-9a-f]{64}",
                0..3_usize,
                prop::sample::select(vec!["", "/lxc.payload.node-1", "/kubelet.slice"]),
                any::<bool>(),
            )
                .prop_map(|(systemd, qos, uid, id, rt, outer, crun)| {
                    let q = qos.as_str().to_ascii_lowercase();
                    let (kubepods, pod, container, runtime);
                    if systemd {
                        let unit = if outer == "/kubelet.slice" {
                            "kubelet-kubepods"
                        } else {
                            "kubepods"
                        };
                        let mut k = format!("{outer}/{unit}.slice");
                        kubepods = k.clone();
                        let parent = if qos == QosClass::Guaranteed {
                            unit.to_owned()
                        } else {
                            k += &format!("/{unit}-{q}.slice");
                            format!("{unit}-{q}")
                        };
                        pod = format!("{k}/{parent}-pod{}.slice", uid.replace('-', "_"));
                        let (name, r) = [
                            (format!("cri-containerd-{id}.scope"), Runtime::Containerd),
                            (format!("crio-{id}.scope"), Runtime::CriO),
                            (format!("docker-{id}.scope"), Runtime::Docker),
                        ][rt]
                            .clone();
                        container = format!("{pod}/{name}");
                        runtime = Some(r);
                    } else {
                        kubepods = format!("{outer}/kubepods");
                        let k = if qos == QosClass::Guaranteed {
                            kubepods.clone()
                        } else {
                            format!("{kubepods}/{q}")
                        };
                        pod = format!("{k}/pod{uid}");
                        let (name, r) = if rt == 1 {
                            (format!("crio-{id}"), Some(Runtime::CriO))
                        } else {
                            (id.clone(), None)
                        };
                        container = format!("{pod}/{name}");
                        runtime = r;
                    }
                    // crun on cgroup v2 runs the workload in a `container` child.
                    let path = if crun {
                        format!("{container}/container")
                    } else {
                        container.clone()
                    };
                    Made {
                        path,
                        kubepods,
                        pod,
                        container,
                        uid,
                        id,
                        qos,
                        runtime,
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            #[test]
            fn identity_of_a_generated_kubelet_path(m in made(), form in 0..4_usize) {
                let written = match form {
                    0 => m.path.clone(),
                    1 => format!("0::{}", m.path),
                    2 => format!("4:memory:{}/", m.path),
                    _ => format!("/sys/fs/cgroup/memory{}", m.path),
                };
                let id = parse(&written);
                prop_assert_eq!(id.level, Level::Container);
                prop_assert_eq!(id.pod_uid.as_deref(), Some(m.uid.as_str()));
                prop_assert_eq!(id.container_id.as_deref(), Some(m.id.as_str()));
                prop_assert_eq!(id.qos, Some(m.qos));
                prop_assert_eq!(id.runtime, m.runtime);
                prop_assert_eq!(id.container_path.as_deref(), Some(m.container.as_str()));
                prop_assert_eq!(id.pod_path.as_deref(), Some(m.pod.as_str()));
                prop_assert_eq!(id.kubepods_path.as_deref(), Some(m.kubepods.as_str()));
                let victim = Some(m.path.as_str());
                prop_assert_eq!(oom_domain(Some(&m.path), victim), OomDomain::Container);
                prop_assert_eq!(oom_domain(Some(&m.container), victim), OomDomain::Container);
                prop_assert_eq!(oom_domain(Some(&m.pod), victim), OomDomain::Pod);
                prop_assert_eq!(oom_domain(Some(&m.kubepods), victim), OomDomain::NodeAllocatable);
                prop_assert_eq!(oom_domain(None, victim), OomDomain::Node);
            }

            #[test]
            fn identity_never_panics(path in "[/a-z0-9:._@,-]{0,120}", other in any::<String>()) {
                for p in [&path, &other] {
                    let id = parse(p);
                    // Each level's path is a prefix of the next one's.
                    let levels = [&id.kubepods_path, &id.qos_path, &id.pod_path, &id.container_path];
                    let known: Vec<&String> = levels.iter().filter_map(|l| l.as_ref()).collect();
                    for w in known.windows(2) {
                        prop_assert!(w[1].starts_with(w[0].as_str()), "{:?}", id);
                    }
                    let _ = oom_domain(Some(p), Some(&path));
                    let _ = oom_domain(Some(&other), Some(p));
                }
            }
        }
    }
}
