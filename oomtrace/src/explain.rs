//! The explanation and advice for each OOM domain: one or two plain
//! sentences that say which limit was hit, who was killed and why, and the
//! change that prevents it. Only facts present in the [`Kill`] (or the
//! cgroup [`Identity`]) are stated; what is missing is said to be unknown.

use crate::{
    enrich::Enriched,
    enrich::identity::{Identity, QosClass},
    report::{Consumer, Kill, KillerKind, OomDomain},
    units::Bytes,
};

/// The explain stage: fills in the explanation and advice of an enriched kill.
pub fn apply(e: &mut Enriched) {
    let (mut explanation, advice) = explain(&e.kill, e.identity.as_ref());
    let mut advice = advice;
    if let Some(o) = outcome(&e.kill, e.identity.as_ref()) {
        explanation.push(' ');
        explanation.push_str(&o);
    }
    if let Some((said, more_advice)) = memory_kind(&e.kill, e.identity.as_ref()) {
        explanation.push(' ');
        explanation.push_str(&said);
        advice.push(' ');
        advice.push_str(&more_advice);
    }
    e.kill.explanation = Some(explanation);
    e.kill.advice = Some(advice);
}

/// Who was killed, in the user's terms.
struct Victim {
    /// `prod/api-7f9`, `pod <uid>`, or `python3 (pid 2423)`.
    name: String,
    /// `container api, Burstable, oom_score_adj 985`.
    details: Vec<String>,
    qos: Option<QosClass>,
    is_pod: bool,
}

impl Victim {
    fn describe(&self) -> String {
        if self.details.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.details.join(", "))
        }
    }
}

fn victim(kill: &Kill, identity: Option<&Identity>) -> Victim {
    let k8s = kill.k8s.as_ref();
    let qos = k8s
        .and_then(|k| k.qos_class.as_deref())
        .and_then(QosClass::from_k8s)
        .or_else(|| identity.and_then(|i| i.qos));
    let process = match (&kill.victim.comm, kill.victim.pid) {
        (Some(comm), Some(pid)) => format!("{comm} (pid {pid})"),
        (Some(comm), None) => comm.clone(),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => "an unknown process".to_owned(),
    };
    let pod_name = k8s.and_then(|k| match (&k.namespace, &k.pod) {
        (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
        _ => k.pod_uid.as_ref().map(|uid| format!("pod {uid}")),
    });
    let pod_name = pod_name.or_else(|| {
        identity
            .filter(|i| i.is_pod())
            .and_then(|i| i.pod_uid.as_ref())
            .map(|uid| format!("pod {uid}"))
    });
    let mut details = Vec::new();
    let is_pod = pod_name.is_some();
    let name = match pod_name {
        Some(pod) => {
            match k8s.and_then(|k| k.container.as_ref()) {
                Some(c) => details.push(format!("container {c}")),
                None => details.push(format!("process {process}")),
            }
            pod
        }
        None => {
            let place = identity
                .and_then(|i| i.other.clone())
                .or_else(|| kill.victim.cgroup.as_ref().map(|c| format!("cgroup {c}")));
            match place {
                Some(place) => format!("{process} in {place}"),
                None => format!("{process} (cgroup unknown)"),
            }
        }
    };
    if let Some(q) = qos {
        details.push(q.as_str().to_owned());
    }
    if let Some(adj) = kill.victim.oom_score_adj {
        details.push(format!("oom_score_adj {adj}"));
    }
    Victim {
        name,
        details,
        qos,
        is_pod,
    }
}

/// Why the kernel picked this victim in a node-wide (or allocatable-wide) choice.
fn why_chosen(v: &Victim, kill: &Kill) -> String {
    let adj = kill.victim.oom_score_adj;
    match (v.qos, adj) {
        (_, Some(-998)) => "it is a pod sandbox (pause) process, which is unusual: nothing else could be killed".into(),
        (Some(QosClass::BestEffort), _) => "BestEffort pods (oom_score_adj 1000) are killed first".into(),
        (Some(QosClass::Burstable), Some(adj)) if adj >= 900 => {
            "Burstable pods with small requests score highest".into()
        }
        (Some(QosClass::Burstable), _) => {
            "its badness (memory use plus oom_score_adj, which is higher the smaller the request) was the highest".into()
        }
        (Some(QosClass::Guaranteed), _) => {
            "even Guaranteed pods (oom_score_adj -997) are killed when nothing with a higher score can free enough memory"
                .into()
        }
        (None, Some(adj)) => format!("its badness (memory use plus oom_score_adj {adj}) was the highest"),
        (None, None) => "its badness (memory use plus oom_score_adj) was the highest".into(),
    }
}

/// "it used 180 MiB of its 512 MiB limit, so its own limit was not the cause".
fn own_usage(kill: &Kill, v: &Victim) -> String {
    let whose = if v.is_pod {
        "its container"
    } else {
        "its cgroup"
    };
    match (kill.memcg.victim_usage_bytes, kill.memcg.victim_limit_bytes) {
        (Some(u), Some(l)) => format!(
            "it used {} of its {} limit, so its own limit was not the cause",
            Bytes(u),
            Bytes(l)
        ),
        (Some(u), None) => format!("it used {} and {whose} had no memory limit", Bytes(u)),
        (None, Some(l)) => format!("its usage is unknown ({whose} limit was {})", Bytes(l)),
        (None, None) => "its own usage and limit are unknown".into(),
    }
}

/// The consumers that count against the limit that was hit, largest first.
///
/// For a node-level OOM that is every consumer of the node. For a kubepods
/// (allocatable) limit only the cgroups below that kubepods cgroup count:
/// a system service's memory does not exhaust allocatable, so naming it as
/// the consumer to look at would send the reader the wrong way. Consumers of
/// unknown cgroup are kept. Consumers under 1 MiB are left out as noise.
fn domain_consumers(kill: &Kill) -> Vec<&Consumer> {
    let Some(nm) = kill.node_memory.as_ref() else {
        return Vec::new();
    };
    let scope = match kill.oom_domain {
        Some(OomDomain::NodeAllocatable) => kill
            .oom_cgroup
            .as_deref()
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty()),
        _ => None,
    };
    nm.top
        .iter()
        .filter(|c| c.usage_bytes >= 1 << 20)
        .filter(|c| {
            scope.is_none_or(|p| {
                c.cgroup.is_empty()
                    || c.cgroup == p
                    || c.cgroup
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .collect()
}

fn top_consumers(kill: &Kill) -> Option<String> {
    let top = domain_consumers(kill);
    if top.is_empty() {
        return None;
    }
    let list: Vec<String> = top
        .iter()
        .take(5)
        .map(|c| format!("{} {}", c.name, Bytes(c.usage_bytes)))
        .collect();
    Some(list.join(", "))
}

/// "find out why batch/hog uses 14.2 GiB" for the largest consumer that is not the victim.
fn largest_other(kill: &Kill, v: &Victim) -> Option<String> {
    let top = domain_consumers(kill);
    let c = top.iter().find(|c| c.name != v.name)?;
    Some(format!(
        "find out why {} uses {}",
        c.name,
        Bytes(c.usage_bytes)
    ))
}

fn qos_advice(v: &Victim) -> &'static str {
    match v.qos {
        Some(QosClass::Burstable) => {
            "Make the pod Guaranteed (requests == limits) or raise its memory request"
        }
        Some(QosClass::BestEffort) => {
            "Give the pod memory requests and limits (BestEffort pods are killed first), ideally requests == limits"
        }
        Some(QosClass::Guaranteed) => "Reduce the memory the other workloads on the node use",
        None if v.is_pod => {
            "Raise the pod's memory request (or make it Guaranteed with requests == limits)"
        }
        None => {
            "Lower this process's oom_score_adj only if it must survive, and reduce the node's memory use"
        }
    }
}

fn estimated_request(kill: &Kill) -> Option<String> {
    let est = kill.qos_check.as_ref()?.estimated_request_bytes?;
    Some(format!(
        "its oom_score_adj implies a memory request of about {}",
        Bytes(est)
    ))
}

fn oom_usage(kill: &Kill) -> Option<String> {
    match (kill.memcg.oom_usage_bytes, kill.memcg.oom_limit_bytes) {
        (Some(u), Some(l)) => Some(format!("{} of {}", Bytes(u), Bytes(l))),
        (None, Some(l)) => Some(format!("a limit of {} (usage unknown)", Bytes(l))),
        (Some(u), None) => Some(format!("{} (limit unknown)", Bytes(u))),
        (None, None) => None,
    }
}

fn sentence(parts: &[Option<String>]) -> String {
    parts
        .iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("; ")
}

/// Shared memory counted this much of the charged memory or more is said.
const SHMEM_SHARE: f64 = 0.2;
/// Page cache (without shared memory) this much or more is said.
const CACHE_SHARE: f64 = 0.5;

/// When shared memory or page cache was a large part of the memory where the
/// limit was hit: the explanation's sentence and the advice's.
pub fn memory_kind(kill: &Kill, identity: Option<&Identity>) -> Option<(String, String)> {
    let s = kill.memcg.oom_stat?;
    let anon = s.anon_bytes.unwrap_or(0);
    let file = s.file_bytes.unwrap_or(0);
    let shmem = s.shmem_bytes.unwrap_or(0);
    let total = anon + file + s.kernel_bytes.unwrap_or(0) + s.sock_bytes.unwrap_or(0);
    if total == 0 {
        return None;
    }
    let share = |b: u64| b as f64 / total as f64;
    let in_pod = kill.k8s.is_some() || identity.is_some_and(Identity::is_pod);
    let node = kill.scope == Some(crate::report::Scope::Node);
    let place = if node {
        "the node's memory"
    } else {
        "the memory charged where the limit was hit"
    };
    if share(shmem) >= SHMEM_SHARE {
        let why = if in_pod {
            "a memory-backed emptyDir (medium: Memory) or /dev/shm is not freed by the kill, and the container will \
             hit its limit again after the restart"
        } else {
            "tmpfs files are not freed by the kill, and the next process there will hit the same limit"
        };
        let advice = if in_pod {
            "Give the memory-backed emptyDir a sizeLimit well below the container's memory limit (its pages count \
             against it), or move it to disk (an emptyDir without medium: Memory)."
        } else {
            "Delete or size the tmpfs files (they count against the cgroup's limit), or move them to disk."
        };
        return Some((
            format!(
                "{} of {} ({} of {place}) was shared memory (tmpfs): {why}.",
                Bytes(shmem),
                Bytes(total),
                percent(share(shmem))
            ),
            advice.to_string(),
        ));
    }
    let cache = file.saturating_sub(shmem);
    if share(cache) >= CACHE_SHARE {
        return Some((
            format!(
                "{} of {} ({} of {place}) was page cache: the kernel could not reclaim it fast enough (dirty, \
                 written back slowly, or in use).",
                Bytes(cache),
                Bytes(total),
                percent(share(cache))
            ),
            "Check for heavy writes to files (dirty pages count against the limit until written back) or files \
             kept mapped; leave headroom for the page cache in the limit."
                .to_string(),
        ));
    }
    None
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// What the kill did to the victim's container (or cgroup): main process
/// or child, the processes left, memory.oom.group.
pub fn outcome(kill: &Kill, identity: Option<&Identity>) -> Option<String> {
    let in_pod = kill.k8s.is_some() || identity.is_some_and(Identity::is_pod);
    let unit = if in_pod { "container" } else { "cgroup" };
    let o = &kill.outcome;
    let left = match o.survivors {
        Some(0) => format!("; no process is left in its {unit}"),
        Some(1) => format!("; 1 process is left in its {unit}"),
        Some(n) => format!("; {n} processes are left in its {unit}"),
        None => String::new(),
    };
    if o.group_kill {
        return Some(format!(
            "memory.oom.group is set: the kernel killed every process of the {unit} with it{left}."
        ));
    }
    match o.main_process {
        Some(false) => Some(if in_pod {
            format!(
                "A child process was killed; the container kept running{left} (Kubernetes may still report a later \
                 exit of the container as OOMKilled)."
            )
        } else {
            format!("A child process was killed; its cgroup kept running{left}.")
        }),
        Some(true) if in_pod => Some(format!(
            "It was the container's main process: the container exited and the kubelet restarts it{left}."
        )),
        Some(true) => Some(format!("It was the first process of its cgroup{left}.")),
        None => None,
    }
}

/// The explanation and the advice for one kill.
pub fn explain(kill: &Kill, identity: Option<&Identity>) -> (String, String) {
    let v = victim(kill, identity);
    match kill.killer.kind {
        KillerKind::UserspaceOom => return userspace(kill, &v),
        KillerKind::KubeletEviction => return eviction(kill, &v),
        KillerKind::KernelOom => {}
    }
    let who = v.describe();

    if kill.trigger.order == Some(-1) {
        return (
            format!(
                "The OOM killer was forced by an administrator (echo f > /proc/sysrq-trigger); no memory shortage is \
                 implied. {who} was killed because it had the highest badness score at that moment."
            ),
            "Nothing to change in the workload; find out who triggered the sysrq OOM if it was not intended.".into(),
        );
    }

    let oom_cgroup = kill.oom_cgroup.as_deref().unwrap_or("an unknown cgroup");
    match kill.oom_domain {
        Some(OomDomain::Container) => {
            let usage = match (kill.memcg.oom_usage_bytes, kill.memcg.oom_limit_bytes) {
                (Some(u), Some(l)) => format!(": it used {} of its {} limit", Bytes(u), Bytes(l)),
                (None, Some(l)) => format!(" of {} (its usage is unknown)", Bytes(l)),
                _ => " (its usage and limit are unknown)".into(),
            };
            let whose = if v.is_pod { "container" } else { "cgroup" };
            (
                format!("{who} hit its own {whose} memory limit{usage}."),
                format!(
                    "Raise the {whose}'s memory limit or reduce its usage: keep heap settings (e.g. Java -Xmx, plus \
                     off-heap and thread stacks) well below the limit, and look for a leak if usage keeps growing."
                ),
            )
        }
        Some(OomDomain::Pod) => {
            let usage = oom_usage(kill).map(|u| format!(" ({u})")).unwrap_or_default();
            (
                format!(
                    "The pod's containers together exceeded the pod's memory limit{usage}; no single container's own \
                     limit was hit. The kernel killed {who}."
                ),
                "Raise the pod's memory limits (the pod limit is the sum of its containers' limits, or the pod-level \
                 limit) or reduce the combined usage; check which container grew, including sidecars."
                    .into(),
            )
        }
        Some(OomDomain::NodeAllocatable) => {
            let usage = oom_usage(kill).map(|u| format!(", {u}")).unwrap_or_default();
            let top = top_consumers(kill)
                .map(|t| format!(" Largest consumers: {t}."))
                .unwrap_or_else(|| " The largest consumers are unknown.".into());
            let chosen = sentence(&[Some(why_chosen(&v, kill)), estimated_request(kill)]);
            (
                format!(
                    "The pods on the node together exhausted its allocatable memory (the {oom_cgroup} limit was \
                     hit{usage}); no pod's own limit was. {who} was chosen because {chosen}.{top}"
                ),
                format!(
                    "Memory requests are too low for the real usage (the node is overcommitted): raise requests to \
                     match usage, evict or limit the largest consumers{}, and check kube-reserved/system-reserved and \
                     the eviction thresholds so the kubelet evicts before the kernel kills.",
                    largest_other(kill, &v).map(|l| format!(" ({l})")).unwrap_or_default()
                ),
            )
        }
        Some(OomDomain::Cgroup) => {
            let usage = oom_usage(kill).map(|u| format!(" ({u})")).unwrap_or_default();
            (
                format!("The memory limit of cgroup {oom_cgroup} was hit{usage}; {who} was killed."),
                format!(
                    "Raise the memory limit of {oom_cgroup} (memory.max, or MemoryMax= for a systemd unit) or reduce \
                     the memory its processes use."
                ),
            )
        }
        Some(OomDomain::Node) => {
            let chosen = sentence(&[Some(why_chosen(&v, kill)), estimated_request(kill), Some(own_usage(kill, &v))]);
            let top = top_consumers(kill)
                .map(|t| format!(" Largest consumers: {t}."))
                .unwrap_or_else(|| " The largest consumers are unknown.".into());
            let mut advice = qos_advice(&v).to_owned();
            if let Some(l) = largest_other(kill, &v) {
                advice.push_str("; ");
                advice.push_str(&l);
            }
            advice.push_str("; check kube-reserved/system-reserved.");
            (
                format!("The node ran out of memory (no cgroup limit was hit). {who} was chosen because {chosen}.{top}"),
                advice,
            )
        }
        None => (
            format!(
                "{who} was killed by the OOM killer; which limit was hit (its container, its pod, the node's \
                 allocatable, or the node itself) is unknown."
            ),
            "Check the kernel log (dmesg) for the oom-kill line to learn which cgroup's limit was hit.".into(),
        ),
    }
}

/// A userspace OOM killer's usual policy, and the advice that fits it.
fn killer_policy(name: &str) -> (String, &'static str) {
    match name {
        "earlyoom" => (
            "earlyoom kills when both MemAvailable and SwapFree are below its thresholds (by default 10% for \
             SIGTERM, 5% for SIGKILL) and picks the process with the highest oom_score, which oom_score_adj raises"
                .into(),
            "to spare a process use earlyoom's --avoid (or --prefer for expendable ones) or lower its oom_score_adj; \
             for a pod, raise its memory request (a lower oom_score_adj) or make it Guaranteed",
        ),
        "systemd-oomd" => (
            "systemd-oomd kills the cgroup with the most reclaim activity below a unit with \
             ManagedOOMMemoryPressure=kill whose memory pressure (PSI) stayed above its limit (by default 60% for \
             30 s), or, below a unit with ManagedOOMSwap=kill, the cgroup using the most swap once swap use passes \
             its limit (by default 90%)"
                .into(),
            "`oomctl` shows the monitored cgroups and their pressure; protect a unit with ManagedOOMPreference=avoid \
             (or omit), raise ManagedOOMMemoryPressureLimit=, or reduce the memory used below that slice",
        ),
        "talos-machined" => (
            "Talos's OOM controller (in machined, PID 1) kills a whole cgroup when its trigger on memory pressure \
             (PSI) fires, choosing by its ranking: by default cgroups with a memory limit score 0, BestEffort pods \
             come before Burstable ones and then by memory use, Guaranteed pods and system services last"
                .into(),
            "set memory limits on the pod's containers (the default ranking spares cgroups with a limit) or make it \
             Guaranteed; if the controller acts too early, tune the OOMConfig document (triggerExpression, \
             cgroupRankingExpression)",
        ),
        "nohang" => (
            "nohang kills when MemAvailable and SwapFree fall below its thresholds (or on memory pressure) and \
             picks the process with the highest badness (oom_score, adjusted by its configuration)"
                .into(),
            "adjust nohang's thresholds and badness rules in its configuration, or lower the process's oom_score_adj",
        ),
        "oomd" => (
            "oomd acts on the rules of its configuration (memory pressure and swap detectors) and kills what its \
             kill plugin ranks first"
                .into(),
            "check oomd's rules for the cgroup it killed in, and the detectors' thresholds",
        ),
        other => (
            format!("{other} is a userspace OOM killer whose policy oomtrace does not know"),
            "check that killer's thresholds and the processes it prefers or avoids",
        ),
    }
}

/// "MemAvailable 45 MiB of 461 MiB (9%), no swap, memory pressure (PSI some avg10) 37.1".
fn node_state(kill: &Kill) -> Option<String> {
    let nm = kill.node_memory.as_ref()?;
    let mut parts = Vec::new();
    match (nm.available_bytes, nm.total_bytes) {
        (Some(a), Some(t)) if t > 0 => parts.push(format!(
            "MemAvailable {} of {} ({}%)",
            Bytes(a),
            Bytes(t),
            a * 100 / t
        )),
        (Some(a), _) => parts.push(format!("MemAvailable {}", Bytes(a))),
        _ => {}
    }
    match (nm.swap_free_bytes, nm.swap_total_bytes) {
        (_, Some(0)) => parts.push("no swap".into()),
        (Some(f), Some(t)) => parts.push(format!("SwapFree {} of {}", Bytes(f), Bytes(t))),
        _ => {}
    }
    if let Some(p) = nm.psi_some_avg10 {
        parts.push(format!("memory pressure (PSI some avg10) {p:.1}"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn largest_sentence(kill: &Kill) -> String {
    top_consumers(kill)
        .map(|t| format!(" Largest consumers: {t}."))
        .unwrap_or_else(|| " The largest consumers are unknown.".into())
}

fn with_largest(advice: &str, kill: &Kill, v: &Victim) -> String {
    let mut a = String::new();
    if let Some(l) = largest_other(kill, v) {
        a.push_str(&capitalise(&l));
        a.push_str(", which filled the node; ");
        a.push_str(advice);
    } else {
        a.push_str("Find out what filled the node's memory; ");
        a.push_str(advice);
    }
    a.push('.');
    a
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// A kill by a userspace OOM killer: who killed, its policy, the node's state.
fn userspace(kill: &Kill, v: &Victim) -> (String, String) {
    let k = &kill.killer;
    let name = k
        .name
        .as_deref()
        .or(k.comm.as_deref())
        .unwrap_or("a userspace OOM killer");
    let killer = match k.pid {
        Some(pid) => format!("{name} (pid {pid})"),
        None => name.to_string(),
    };
    let how = match k.signal.as_deref() {
        Some("SIGTERM") => " with SIGTERM (it exited on it)",
        Some("SIGKILL") => " with SIGKILL",
        _ => "",
    };
    let (policy, advice) = killer_policy(name);
    let rss = kill
        .victim
        .anon_rss_kb
        .map(|kb| format!(" It held {} of anonymous memory.", Bytes(kb * 1024)))
        .unwrap_or_default();
    let state = node_state(kill)
        .map(|s| format!(" Node memory then: {s}."))
        .unwrap_or_default();
    (
        format!(
            "The userspace OOM killer {killer} killed {}{how}, before the kernel's OOM killer had to; no memory \
             limit was hit. {}.{rss}{state}{}",
            v.describe(),
            capitalise(&policy),
            largest_sentence(kill)
        ),
        with_largest(advice, kill, v),
    )
}

/// A kubelet eviction: what the kubelet said, and how it chooses.
fn eviction(kill: &Kill, v: &Victim) -> (String, String) {
    let e = kill.eviction.as_ref();
    let threshold = e
        .map(|e| match (e.threshold_bytes, e.available_bytes) {
            (Some(t), Some(a)) => format!(
                " (available memory {} below the eviction threshold {})",
                Bytes(a),
                Bytes(t)
            ),
            (Some(t), None) => format!(" (eviction threshold {})", Bytes(t)),
            _ => String::new(),
        })
        .unwrap_or_default();
    let over: Vec<String> = e
        .iter()
        .flat_map(|e| e.over_request.iter())
        .map(|o| {
            let usage = o
                .usage_bytes
                .map_or("?".to_string(), |u| Bytes(u).to_string());
            let request = match o.request_bytes {
                Some(0) => "no request".to_string(),
                Some(r) => format!("its request of {}", Bytes(r)),
                None => "its request".to_string(),
            };
            format!("{} {} was using {usage}, above {request}", o.level, o.name)
        })
        .collect();
    let over = match over.is_empty() {
        true => " The kubelet named no container above its request.".to_string(),
        false => format!(" The kubelet found: {}.", over.join("; ")),
    };
    let container = kill.k8s.as_ref().and_then(|k| k.container.as_deref());
    let blamed = e.and_then(|e| {
        e.over_request
            .iter()
            .find(|o| Some(o.name.as_str()) == container)
    });
    let advice = match (blamed, v.qos) {
        (Some(o), _) => {
            let use_ = o
                .usage_bytes
                .map(|u| format!(" (about {})", Bytes(u)))
                .unwrap_or_default();
            format!(
                "Raise the memory request of container {} to its real use{use_}, or make the pod Guaranteed \
                 (requests == limits): a pod within its requests is evicted last",
                o.name
            )
        }
        (None, Some(QosClass::BestEffort)) => {
            "Give the pod memory requests (BestEffort pods are evicted first), ideally requests == limits".into()
        }
        _ => "Keep the pod's memory use within its requests, or make it Guaranteed (requests == limits)".into(),
    };
    let mut advice = advice;
    if let Some(l) = largest_other(kill, v) {
        advice.push_str(&format!("; {l}"));
    }
    advice.push_str("; check the kubelet's eviction thresholds and kube-reserved/system-reserved.");
    (
        format!(
            "The kubelet evicted {} because the node was low on memory{threshold}; no memory limit was hit \
             and no process was OOM-killed.{over} The kubelet evicts first the pods whose usage exceeds their \
             requests, then by priority, then by how far usage exceeds the request; Guaranteed pods, and \
             Burstable pods within their requests, go last.{}",
            v.describe(),
            largest_sentence(kill)
        ),
        advice,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::identity;
    use crate::report::{Consumer, K8s, NodeMemory, QosCheck};

    const MI: u64 = 1024 * 1024;
    const GI: u64 = 1024 * MI;
    // istio/istio#42734's container, with a name.
    const CTR: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0330b2c1_a15b_4cdd_b5e5_72d4a90bee82.slice/docker-b27201334a41cd0749d053b18378d7ea65617b8e26277197ea25c974da1a5a8a.scope";

    fn pod_kill(domain: OomDomain) -> Kill {
        let mut k = Kill {
            oom_domain: Some(domain),
            ..Kill::default()
        };
        k.victim.pid = Some(2423);
        k.victim.comm = Some("api".into());
        k.victim.oom_score_adj = Some(985);
        k.victim.cgroup = Some(CTR.into());
        k.k8s = Some(K8s {
            namespace: Some("prod".into()),
            pod: Some("api-7f9".into()),
            container: Some("api".into()),
            qos_class: Some("Burstable".into()),
            ..K8s::default()
        });
        k.memcg.victim_usage_bytes = Some(180 * MI);
        k.memcg.victim_limit_bytes = Some(512 * MI);
        k.qos_check = Some(QosCheck {
            estimated_request_bytes: Some(256 * MI),
            ..QosCheck::default()
        });
        k.node_memory = Some(NodeMemory {
            top: vec![
                Consumer {
                    name: "batch/hog".into(),
                    usage_bytes: 14 * GI + 200 * MI,
                    ..Consumer::default()
                },
                Consumer {
                    name: "prod/api-7f9".into(),
                    usage_bytes: 180 * MI,
                    ..Consumer::default()
                },
            ],
            ..NodeMemory::default()
        });
        k
    }

    #[test]
    fn a_tmpfs_that_fills_the_limit_is_said_and_advised() {
        use crate::report::OomStat;
        let mut k = pod_kill(OomDomain::Container);
        // The figures of host-6.18.v1-tmpfs.memory.stat.
        k.memcg.oom_stat = Some(OomStat {
            anon_bytes: Some(19_623_936),
            file_bytes: Some(24 * MI),
            shmem_bytes: Some(24 * MI),
            kernel_bytes: Some(143_360),
            sock_bytes: Some(0),
        });
        let (e, a) = memory_kind(&k, None).expect("said");
        assert!(
            e.starts_with("24 MiB of 43 MiB (56% of the memory charged where the limit was hit) was shared memory (tmpfs): a memory-backed emptyDir"),
            "{e}"
        );
        assert!(
            a.contains("sizeLimit") && a.contains("move it to disk"),
            "{a}"
        );
        // Mostly page cache, little shmem.
        k.memcg.oom_stat = Some(OomStat {
            anon_bytes: Some(10 * MI),
            file_bytes: Some(40 * MI),
            shmem_bytes: Some(MI),
            kernel_bytes: None,
            sock_bytes: None,
        });
        let (e, _) = memory_kind(&k, None).expect("said");
        assert!(e.starts_with("39 MiB of 50 MiB (78%"), "{e}");
        assert!(e.contains("was page cache"), "{e}");
        // Mostly anonymous: nothing to add.
        k.memcg.oom_stat = Some(OomStat {
            anon_bytes: Some(30 * MI),
            file_bytes: Some(2 * MI),
            shmem_bytes: Some(MI),
            kernel_bytes: Some(MI),
            sock_bytes: None,
        });
        assert_eq!(memory_kind(&k, None), None);
        k.memcg.oom_stat = None;
        assert_eq!(memory_kind(&k, None), None);
    }

    #[test]
    fn a_child_killed_in_a_container_is_said_to_leave_it_running() {
        let mut k = pod_kill(OomDomain::Container);
        k.outcome.main_process = Some(false);
        k.outcome.survivors = Some(2);
        let o = outcome(&k, None).expect("said");
        assert!(
            o.starts_with("A child process was killed; the container kept running; 2 processes are left in its container"),
            "{o}"
        );
        k.outcome.main_process = Some(true);
        k.outcome.survivors = Some(0);
        let o = outcome(&k, None).expect("said");
        assert!(o.starts_with("It was the container's main process"), "{o}");
        k.outcome.group_kill = true;
        let o = outcome(&k, None).expect("said");
        assert!(o.starts_with("memory.oom.group is set"), "{o}");
        // Outside Kubernetes the cgroup is named, and nothing known says nothing.
        let mut bare = Kill::default();
        assert_eq!(outcome(&bare, None), None);
        bare.outcome.main_process = Some(false);
        bare.outcome.survivors = Some(1);
        assert_eq!(
            outcome(&bare, None).as_deref(),
            Some(
                "A child process was killed; its cgroup kept running; 1 process is left in its cgroup."
            )
        );
    }

    #[test]
    fn node_kill_of_a_burstable_pod() {
        let k = pod_kill(OomDomain::Node);
        let (e, a) = explain(&k, Some(&identity::parse(CTR)));
        assert!(
            e.starts_with("The node ran out of memory (no cgroup limit was hit)."),
            "{e}"
        );
        assert!(
            e.contains("prod/api-7f9 (container api, Burstable, oom_score_adj 985)"),
            "{e}"
        );
        assert!(
            e.contains("Burstable pods with small requests score highest"),
            "{e}"
        );
        assert!(e.contains("about 256 MiB"), "{e}");
        assert!(
            e.contains("180 MiB of its 512 MiB limit, so its own limit was not the cause"),
            "{e}"
        );
        assert!(e.contains("batch/hog 14.2 GiB"), "{e}");
        assert!(a.contains("Guaranteed (requests == limits)"), "{a}");
        assert!(a.contains("batch/hog uses 14.2 GiB"), "{a}");
        assert!(a.contains("kube-reserved/system-reserved"), "{a}");
    }

    #[test]
    fn container_limit() {
        let mut k = pod_kill(OomDomain::Container);
        k.memcg.oom_usage_bytes = Some(512 * MI);
        k.memcg.oom_limit_bytes = Some(512 * MI);
        let (e, a) = explain(&k, None);
        assert!(e.contains("prod/api-7f9 (container api"), "{e}");
        assert!(
            e.contains("its own container memory limit: it used 512 MiB of its 512 MiB limit"),
            "{e}"
        );
        assert!(!e.contains("node ran out"), "{e}");
        assert!(
            a.contains("Raise the container's memory limit") && a.contains("-Xmx"),
            "{a}"
        );
    }

    #[test]
    fn pod_limit() {
        let mut k = pod_kill(OomDomain::Pod);
        k.memcg.oom_usage_bytes = Some(200 * MI);
        k.memcg.oom_limit_bytes = Some(200 * MI);
        let (e, a) = explain(&k, None);
        assert!(
            e.contains("containers together exceeded the pod's memory limit (200 MiB of 200 MiB)"),
            "{e}"
        );
        assert!(e.contains("prod/api-7f9"), "{e}");
        assert!(a.contains("pod's memory limits"), "{a}");
    }

    #[test]
    fn node_allocatable() {
        let mut k = pod_kill(OomDomain::NodeAllocatable);
        k.oom_cgroup = Some("/kubepods.slice".into());
        k.memcg.oom_usage_bytes = Some(15 * GI);
        k.memcg.oom_limit_bytes = Some(15 * GI);
        let (e, a) = explain(&k, None);
        assert!(e.contains("exhausted its allocatable memory (the /kubepods.slice limit was hit, 15.0 GiB of 15.0 GiB)"), "{e}");
        assert!(e.contains("Largest consumers: batch/hog 14.2 GiB"), "{e}");
        assert!(
            a.contains("overcommitted") && a.contains("kube-reserved") && a.contains("batch/hog"),
            "{a}"
        );
    }

    #[test]
    fn node_allocatable_names_only_consumers_below_the_kubepods_limit() {
        let mut k = pod_kill(OomDomain::NodeAllocatable);
        k.oom_cgroup = Some("/kubepods".into());
        k.node_memory = Some(NodeMemory {
            top: vec![
                Consumer {
                    name: "/system.slice/mysqld.service".into(),
                    cgroup: "/system.slice/mysqld.service".into(),
                    usage_bytes: 9 * GI,
                    ..Consumer::default()
                },
                Consumer {
                    name: "batch/hog".into(),
                    cgroup: "/kubepods/besteffort/pod72d2f52c-fecd-44f1-9cc6-993378c35d0c".into(),
                    usage_bytes: 3 * GI,
                    ..Consumer::default()
                },
                Consumer {
                    name: "/kubepods-other".into(),
                    cgroup: "/kubepods-other".into(),
                    usage_bytes: 2 * GI,
                    ..Consumer::default()
                },
                Consumer {
                    name: "tiny/pod".into(),
                    cgroup: "/kubepods/podd1e2b7a4-0c3f-4d8e-9b1a-2f6e5c7d8a9b".into(),
                    usage_bytes: 100 * 1024,
                    ..Consumer::default()
                },
            ],
            ..NodeMemory::default()
        });
        let (e, a) = explain(&k, None);
        assert!(e.contains("Largest consumers: batch/hog 3.0 GiB."), "{e}");
        assert!(
            !e.contains("mysqld") && !e.contains("kubepods-other") && !e.contains("tiny"),
            "{e}"
        );
        assert!(
            a.contains("find out why batch/hog uses 3.0 GiB") && !a.contains("mysqld"),
            "{a}"
        );
        // A node-level OOM counts every consumer.
        k.oom_domain = Some(OomDomain::Node);
        let (e, _) = explain(&k, None);
        assert!(e.contains("/system.slice/mysqld.service 9.0 GiB"), "{e}");
    }

    #[test]
    fn other_cgroup_names_the_process_and_cgroup() {
        let mut k = Kill {
            oom_domain: Some(OomDomain::Cgroup),
            oom_cgroup: Some("/system.slice/foo.service".into()),
            ..Kill::default()
        };
        k.victim.comm = Some("foo".into());
        k.victim.pid = Some(77);
        k.victim.cgroup = Some("/system.slice/foo.service".into());
        k.memcg.oom_usage_bytes = Some(100 * MI);
        k.memcg.oom_limit_bytes = Some(100 * MI);
        let id = identity::parse("/system.slice/foo.service");
        let (e, a) = explain(&k, Some(&id));
        assert!(
            e.contains("cgroup /system.slice/foo.service was hit (100 MiB of 100 MiB)"),
            "{e}"
        );
        assert!(
            e.contains("foo (pid 77) in systemd service foo.service"),
            "{e}"
        );
        assert!(a.contains("MemoryMax="), "{a}");
    }

    #[test]
    fn sysrq_forced() {
        let mut k = pod_kill(OomDomain::Node);
        k.trigger.order = Some(-1);
        let (e, a) = explain(&k, None);
        assert!(
            e.contains("forced by an administrator (echo f > /proc/sysrq-trigger)"),
            "{e}"
        );
        assert!(e.contains("no memory shortage is implied"), "{e}");
        assert!(!e.contains("ran out of memory"), "{e}");
        assert!(a.contains("sysrq"), "{a}");
    }

    #[test]
    fn missing_data_is_said_to_be_unknown() {
        let mut k = Kill {
            oom_domain: Some(OomDomain::Node),
            ..Kill::default()
        };
        let (e, _) = explain(&k, None);
        assert!(e.contains("an unknown process (cgroup unknown)"), "{e}");
        assert!(e.contains("own usage and limit are unknown"), "{e}");
        assert!(e.contains("largest consumers are unknown"), "{e}");
        assert!(!e.contains("MiB"), "{e}");
        k.oom_domain = None;
        let (e, a) = explain(&k, None);
        assert!(e.contains("is unknown"), "{e}");
        assert!(a.contains("dmesg"), "{a}");
        // A pod known only by its cgroup: the UID stands in for the name.
        let mut k = Kill {
            oom_domain: Some(OomDomain::Node),
            ..Kill::default()
        };
        k.victim.comm = Some("java".into());
        let id = identity::parse(CTR);
        let (e, a) = explain(&k, Some(&id));
        assert!(
            e.contains("pod 0330b2c1-a15b-4cdd-b5e5-72d4a90bee82 (process java, Burstable)"),
            "{e}"
        );
        assert!(a.contains("Guaranteed"), "{a}");
    }

    fn userspace_kill(name: &str, signal: &str) -> Kill {
        let mut k = pod_kill(OomDomain::Node);
        k.killer = crate::report::Killer {
            kind: KillerKind::UserspaceOom,
            pid: Some(412),
            comm: Some(name.into()),
            name: Some(name.into()),
            exe: Some(format!("/usr/bin/{name}")),
            signal: Some(signal.into()),
            cgroup: None,
        };
        k.victim.anon_rss_kb = Some(180 * 1024);
        if let Some(nm) = k.node_memory.as_mut() {
            nm.total_bytes = Some(16 * GI);
            nm.available_bytes = Some(GI + 600 * MI);
            nm.swap_total_bytes = Some(0);
        }
        k
    }

    #[test]
    fn a_userspace_killer_is_named_with_its_policy() {
        let k = userspace_kill("earlyoom", "SIGTERM");
        let (e, a) = explain(&k, Some(&identity::parse(CTR)));
        assert!(e.starts_with("The userspace OOM killer earlyoom (pid 412) killed prod/api-7f9 (container api, Burstable, oom_score_adj 985) with SIGTERM (it exited on it)"), "{e}");
        assert!(
            e.contains("MemAvailable and SwapFree are below its thresholds"),
            "{e}"
        );
        assert!(
            e.contains("Node memory then: MemAvailable 1.6 GiB of 16.0 GiB (9%), no swap"),
            "{e}"
        );
        assert!(e.contains("batch/hog 14.2 GiB"), "{e}");
        assert!(!e.contains("kernel chose"), "{e}");
        assert!(
            a.starts_with("Find out why batch/hog uses 14.2 GiB, which filled the node"),
            "{a}"
        );
        assert!(a.contains("--avoid"), "{a}");
        let (e, a) = explain(&userspace_kill("talos-machined", "SIGKILL"), None);
        assert!(
            e.contains("with SIGKILL") && e.contains("Talos's OOM controller"),
            "{e}"
        );
        assert!(a.contains("OOMConfig"), "{a}");
        let (e, a) = explain(&userspace_kill("systemd-oomd", "SIGKILL"), None);
        assert!(e.contains("ManagedOOMMemoryPressure=kill"), "{e}");
        assert!(a.contains("oomctl"), "{a}");
    }

    #[test]
    fn a_kubelet_eviction_quotes_the_kubelet_and_its_order() {
        use crate::report::{Eviction, Killer, OverRequest};
        let mut k = pod_kill(OomDomain::Node);
        k.victim = crate::report::Victim::default();
        k.killer = Killer {
            kind: KillerKind::KubeletEviction,
            comm: Some("kubelet".into()),
            name: Some("kubelet".into()),
            ..Killer::default()
        };
        k.eviction = Some(Eviction {
            message: "The node was low on resource: memory. Threshold quantity: 100Mi, available: 58472Ki. Container api was using 3694056Ki, request is 256Mi, has larger consumption of memory. ".into(),
            threshold_bytes: Some(100 * MI),
            available_bytes: Some(58472 * 1024),
            over_request: vec![OverRequest {
                level: "container".into(),
                name: "api".into(),
                usage_bytes: Some(3_694_056 * 1024),
                request_bytes: Some(256 * MI),
            }],
        });
        let (e, a) = explain(&k, None);
        assert!(e.starts_with("The kubelet evicted prod/api-7f9 (container api, Burstable) because the node was low on memory (available memory 57 MiB below the eviction threshold 100 MiB)"), "{e}");
        assert!(
            e.contains("container api was using 3.5 GiB, above its request of 256 MiB"),
            "{e}"
        );
        assert!(
            e.contains(
                "evicts first the pods whose usage exceeds their requests, then by priority"
            ),
            "{e}"
        );
        assert!(
            a.starts_with(
                "Raise the memory request of container api to its real use (about 3.5 GiB)"
            ),
            "{a}"
        );
        assert!(a.contains("batch/hog"), "{a}");
    }
}
