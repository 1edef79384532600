//! Kills by userspace OOM killers and the kubelet, made into [`Kill`]s.
//!
//! A confirmed killer's SIGKILL is a kill at once; its SIGTERM is a kill
//! once the victim has exited on it (the checker thread says so with a
//! [`VictimFate`]). earlyoom and nohang send SIGTERM and then, if memory is
//! still short, SIGKILL to the same victim: one report. A `cgroup.kill`
//! (systemd-oomd, Talos's machined) signals every process of the cgroup in
//! the writer's context: one report per process, sharing an incident.
//! Signals the kernel sent itself (`SI_KERNEL`, e.g. the kernel's OOM killer
//! running in a killer's context) are not the killer's and are dropped.
//!
//! Userspace killers and the kubelet act on node memory pressure: the
//! scope is the node by their policy (`verdict_source: killer_policy`).

use std::collections::{HashMap, VecDeque};

use super::Correlated;
use crate::{
    capture::{
        eviction::EvictedPod,
        killer::{KillerSignal, VictimFate},
    },
    correlate::walk::Walk,
    report::{K8s, Kill, Killer, KillerKind, Memcg, Scope, VerdictSource, Victim},
};

/// How long a reported victim's later signals are duplicates (earlyoom's
/// SIGKILL comes within 10 s of its SIGTERM).
const REPORTED_MEMORY_NS: u64 = 60_000_000_000;
/// Signals of one killer closer than this belong to one incident (one
/// `cgroup.kill`, or one pass over a cgroup's processes).
const INCIDENT_GAP_NS: u64 = 50_000_000;
/// `si_code` values above 0 are the kernel's own (`SI_KERNEL` 0x80).
const SI_USER_MAX: i32 = 0;

/// The state of userspace kills between their signals and their reports.
#[derive(Debug, Default)]
pub struct UserspaceKills {
    /// SIGTERMs waiting for their victim to exit, by victim pid.
    waiting: HashMap<u32, KillerSignal>,
    /// Victims reported: (signal ktime, pid).
    reported: VecDeque<(u64, u32)>,
    /// The last incident: (killer pid, ktime of its last signal, id).
    incident: Option<(u32, u64, String)>,
    /// Signals dropped: for a victim already reported, or from the kernel.
    pub duplicates: u64,
    /// SIGTERMs whose victim survived them (not kills).
    pub survived: u64,
}

impl UserspaceKills {
    /// A confirmed killer's signal: the kill to report now, if it is one.
    pub fn signal(&mut self, s: KillerSignal, boot_id: &str) -> Option<Correlated> {
        let at = s.sighting.meta.ktime_ns;
        self.forget_before(at);
        let pid = s.victim_pid();
        if s.sighting.code > SI_USER_MAX || self.reported.iter().any(|&(_, p)| p == pid) {
            self.duplicates += 1;
            return None;
        }
        let kills_now = s.sighting.sig == libc::SIGKILL
            && s.sighting.result != crate::capture::killer::RESULT_IGNORED;
        if !kills_now {
            self.waiting.entry(pid).or_insert(s);
            return None;
        }
        let earlier = self.waiting.remove(&pid);
        Some(self.report(s, earlier.as_ref(), boot_id))
    }

    /// Whether a SIGTERM's victim exited: the kill to report, if so.
    pub fn fate(&mut self, f: VictimFate, boot_id: &str) -> Option<Correlated> {
        let s = self.waiting.remove(&f.pid)?;
        if !f.exited {
            self.survived += 1;
            return None;
        }
        Some(self.report(s, None, boot_id))
    }

    fn forget_before(&mut self, now: u64) {
        while self
            .reported
            .front()
            .is_some_and(|&(t, _)| now.saturating_sub(t) > REPORTED_MEMORY_NS)
        {
            self.reported.pop_front();
        }
    }

    /// The report of `s` (`earlier`: the SIGTERM that came before its SIGKILL).
    fn report(
        &mut self,
        s: KillerSignal,
        earlier: Option<&KillerSignal>,
        boot_id: &str,
    ) -> Correlated {
        let at = s.sighting.meta.ktime_ns;
        let pid = s.victim_pid();
        self.reported.push_back((at, pid));
        let incident = match &mut self.incident {
            Some((killer, last, id))
                if *killer == s.killer.pid && at.saturating_sub(*last) < INCIDENT_GAP_NS =>
            {
                *last = at;
                id.clone()
            }
            _ => {
                let id = format!("{boot_id}-{at:x}");
                self.incident = Some((s.killer.pid, at, id.clone()));
                id
            }
        };
        let mut kill = kill_of(&s, earlier);
        kill.incident = incident;
        Correlated {
            kill,
            at_ns: (at > 0).then_some(at),
            kill_seq: None,
        }
    }
}

/// The report of a userspace OOM killer's kill.
pub fn kill_of(s: &KillerSignal, earlier: Option<&KillerSignal>) -> Kill {
    let sig = &s.sighting;
    let walk = sig
        .walk
        .clone()
        .or_else(|| earlier.and_then(|e| e.sighting.walk.clone()));
    let proc = s
        .victim
        .as_ref()
        .or_else(|| earlier.and_then(|e| e.victim.as_ref()));
    let mut missing = Vec::new();
    let cgroup = walk
        .as_ref()
        .and_then(|w| w.leaf().map(|l| l.path.clone()))
        .or_else(|| proc.and_then(|p| p.cgroup.clone()));
    if cgroup.is_none() {
        missing.push(
            "victim cgroup: no tp_btf walk of the target, and /proc/<pid> was gone when the signal was checked"
                .to_string(),
        );
    }
    if proc.is_none() {
        missing.push(
            "victim memory (rss): /proc/<pid> was gone when the signal was checked".to_string(),
        );
    }
    missing.push(
        "outcome.main_process: the signal hook reads no lineage of its target (main process \
         or child is told for the kernel's kills only)"
            .to_string(),
    );
    let comm = Some(sig.target_comm.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| proc.map(|p| p.comm.clone()));
    let victim = Victim {
        pid: Some(s.victim_pid()),
        comm,
        uid: proc.and_then(|p| p.uid),
        oom_score_adj: sig
            .target_oom_score_adj
            .or_else(|| proc.and_then(|p| p.oom_score_adj)),
        points: None,
        total_vm_kb: proc.and_then(|p| p.total_vm_kb),
        anon_rss_kb: proc.and_then(|p| p.anon_rss_kb),
        file_rss_kb: proc.and_then(|p| p.file_rss_kb),
        shmem_rss_kb: proc.and_then(|p| p.shmem_rss_kb),
        pgtables_kb: proc.and_then(|p| p.pgtables_kb),
        cgroup,
    };
    let signal = match sig.sig {
        libc::SIGKILL => "SIGKILL",
        _ => "SIGTERM",
    };
    Kill {
        scope: Some(Scope::Node),
        verdict_source: Some(VerdictSource::KillerPolicy),
        victim,
        killer: Killer {
            kind: KillerKind::UserspaceOom,
            pid: Some(s.killer.pid),
            comm: Some(s.killer.comm.clone()),
            cgroup: s.killer.cgroup.clone(),
            name: Some(s.killer.name.clone()),
            exe: Some(s.killer.exe.clone()),
            signal: Some(signal.to_string()),
        },
        memcg: memcg(walk.as_ref()),
        sources: vec!["signal_generate"],
        missing,
        ..Kill::default()
    }
}

/// The victim's memory cgroup usage and limits at the signal, from the walk.
fn memcg(walk: Option<&Walk>) -> Memcg {
    let Some(w) = walk else {
        return Memcg::default();
    };
    Memcg {
        victim_usage_bytes: w.leaf().map(|l| l.usage_bytes),
        victim_limit_bytes: w.leaf().and_then(|l| l.limit_bytes),
        hierarchy: w.usages(),
        ..Memcg::default()
    }
}

/// The report of a kubelet eviction for memory, at the time the kubelet
/// gave (else when it was seen).
pub fn eviction_kill(e: EvictedPod, boot_id: &str) -> Correlated {
    let at_ns = e.at.and_then(monotonic_ns);
    let blamed = e
        .container
        .as_ref()
        .and_then(|c| e.eviction.over_request.iter().find(|o| &o.name == c));
    let kill = Kill {
        scope: Some(Scope::Node),
        verdict_source: Some(VerdictSource::KillerPolicy),
        killer: Killer {
            kind: KillerKind::KubeletEviction,
            comm: Some("kubelet".to_string()),
            name: Some("kubelet".to_string()),
            ..Killer::default()
        },
        k8s: Some(K8s {
            namespace: Some(e.namespace.clone()).filter(|n| !n.is_empty()),
            pod: Some(e.name.clone()).filter(|n| !n.is_empty()),
            pod_uid: Some(e.uid.clone()),
            container: e.container.clone(),
            container_id: e.container_id.clone(),
            qos_class: e.qos_class.clone(),
            memory_request_bytes: blamed.and_then(|o| o.request_bytes),
            ..K8s::default()
        }),
        incident: format!("{boot_id}-evict-{}", e.uid),
        sources: vec!["kube_api"],
        missing: vec![
            "victim process: the kubelet stops the whole pod and names no process".to_string(),
        ],
        eviction: Some(e.eviction),
        ..Kill::default()
    };
    Correlated {
        kill,
        at_ns,
        kill_seq: None,
    }
}

/// A wall-clock time as CLOCK_MONOTONIC nanoseconds (the clock kills are
/// stamped with); `None` for a time before boot or in the future.
fn monotonic_ns(t: std::time::SystemTime) -> Option<u64> {
    let ago = std::time::SystemTime::now().duration_since(t).ok()?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?;
    now.checked_sub(u64::try_from(ago.as_nanos()).ok()?)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::capture::{
        Input, SignalSighting,
        killer::{Confirmed, VictimProc},
        ring::Decoder,
    };

    const CONTAINER: &str = "/oomtrace-sample-killers/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    /// The recorded signals (tests/data/killers), in order.
    fn recorded() -> Vec<SignalSighting> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/killers");
        let decoder = Decoder {
            layout: None,
            page_size: 4096,
            signal_hook: true,
        };
        (0..6)
            .map(|n| {
                let path = format!("{dir}/ring-{n:06}.bin");
                let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                match decoder.decode(&bytes) {
                    Ok(Input::Signal(s)) => s,
                    other => panic!("{path}: {other:?} (re-record: see README.md)"),
                }
            })
            .collect()
    }

    /// A recorded signal as the checker passes it on once its sender is
    /// confirmed (the recording's senders were renamed shells: the
    /// executable and namespaces are the checker's business, tested there).
    fn confirmed(s: &SignalSighting) -> KillerSignal {
        let name = s.meta.trigger.comm.clone();
        KillerSignal {
            killer: Confirmed {
                exe: format!("/usr/bin/{name}"),
                name: name.clone(),
                comm: name,
                pid: s.meta.trigger.tgid,
                cgroup: Some("/system.slice/earlyoom.service".into()),
            },
            victim: Some(VictimProc {
                comm: "sleep".into(),
                cgroup: Some(CONTAINER.into()),
                oom_score_adj: s.target_oom_score_adj,
                uid: Some(0),
                total_vm_kb: Some(5512),
                anon_rss_kb: Some(88),
                file_rss_kb: Some(1700),
                shmem_rss_kb: Some(0),
                pgtables_kb: Some(48),
            }),
            sighting: s.clone(),
        }
    }

    #[test]
    fn the_recording_is_what_the_kernel_side_keeps() {
        let r = recorded();
        let sigs: Vec<(i32, &str)> = r
            .iter()
            .map(|s| (s.sig, s.meta.trigger.comm.as_str()))
            .collect();
        assert_eq!(
            sigs,
            [
                (libc::SIGTERM, "earlyoom"),
                (libc::SIGTERM, "earlyoom"),
                (libc::SIGKILL, "earlyoom"),
                (libc::SIGKILL, "systemd-oomd"),
                (libc::SIGKILL, "systemd-oomd"),
                (libc::SIGKILL, "systemd-oomd"),
            ]
        );
        for s in &r {
            assert_eq!(
                (s.code, s.group),
                (0, true),
                "kill(2): SI_USER, whole group"
            );
            let leaf = s.walk.as_ref().and_then(|w| w.leaf()).expect("tp_btf walk");
            assert_eq!(leaf.path, CONTAINER);
            assert!(s.target_start_time_ns.is_some());
        }
        assert_eq!(
            r[1].target_pid, r[2].target_pid,
            "SIGTERM then SIGKILL, one victim"
        );
        assert_eq!(r[0].target_oom_score_adj, Some(985));
        assert_eq!(r[3].target_oom_score_adj, Some(500));
    }

    #[test]
    fn a_sigterm_is_a_kill_once_its_victim_exited() {
        let r = recorded();
        let mut u = UserspaceKills::default();
        assert!(
            u.signal(confirmed(&r[0]), "b00t").is_none(),
            "waits for the exit"
        );
        let pid = r[0].target_pid;
        let c = u
            .fate(VictimFate { pid, exited: true }, "b00t")
            .expect("exited: a kill");
        let k = &c.kill;
        assert_eq!(c.at_ns, Some(r[0].meta.ktime_ns), "the time of the signal");
        assert_eq!(k.killer.kind, KillerKind::UserspaceOom);
        assert_eq!(k.killer.signal.as_deref(), Some("SIGTERM"));
        assert_eq!(k.killer.name.as_deref(), Some("earlyoom"));
        assert_eq!(k.killer.pid, Some(r[0].meta.trigger.tgid));
        assert_eq!(k.victim.pid, Some(pid));
        assert_eq!(k.victim.comm.as_deref(), Some("sleep"));
        assert_eq!(k.victim.oom_score_adj, Some(985));
        assert_eq!(k.victim.cgroup.as_deref(), Some(CONTAINER));
        assert_eq!(k.victim.anon_rss_kb, Some(88));
        assert_eq!(
            (k.scope, k.verdict_source),
            (Some(Scope::Node), Some(VerdictSource::KillerPolicy))
        );
        assert!(k.memcg.victim_usage_bytes.is_some(), "usage from the walk");
        assert_eq!(k.sources, ["signal_generate"]);
        assert_eq!(
            k.missing.len(),
            1,
            "only main process or child: {:?}",
            k.missing
        );
        assert_eq!(k.incident, format!("b00t-{:x}", r[0].meta.ktime_ns));
        // Its fate again (a late duplicate) reports nothing.
        assert!(u.fate(VictimFate { pid, exited: true }, "b00t").is_none());
    }

    #[test]
    fn sigterm_then_sigkill_is_one_kill_and_a_survivor_none() {
        let r = recorded();
        let mut u = UserspaceKills::default();
        assert!(u.signal(confirmed(&r[1]), "b").is_none());
        let c = u.signal(confirmed(&r[2]), "b").expect("the SIGKILL kills");
        assert_eq!(c.kill.killer.signal.as_deref(), Some("SIGKILL"));
        assert_eq!(c.kill.victim.pid, Some(r[1].target_pid));
        // The checker still says the SIGTERM's victim exited: no second report.
        let pid = r[1].target_pid;
        assert!(u.fate(VictimFate { pid, exited: true }, "b").is_none());
        // And the same SIGKILL again (earlyoom retries): a duplicate.
        assert!(u.signal(confirmed(&r[2]), "b").is_none());
        assert_eq!(u.duplicates, 1);
        // A SIGTERM the victim survived is not a kill.
        let mut u = UserspaceKills::default();
        assert!(u.signal(confirmed(&r[1]), "b").is_none());
        assert!(u.fate(VictimFate { pid, exited: false }, "b").is_none());
        assert_eq!(u.survived, 1);
    }

    #[test]
    fn one_pass_over_a_cgroup_is_one_incident_per_process() {
        let r = recorded();
        let mut u = UserspaceKills::default();
        let first = u.signal(confirmed(&r[2]), "b").expect("kill");
        let pass: Vec<Correlated> = r[3..]
            .iter()
            .map(|s| u.signal(confirmed(s), "b").expect("each SIGKILL a kill"))
            .collect();
        let pids: Vec<Option<u32>> = pass.iter().map(|c| c.kill.victim.pid).collect();
        assert_eq!(
            pids,
            r[3..]
                .iter()
                .map(|s| Some(s.target_pid))
                .collect::<Vec<_>>()
        );
        assert!(
            pass.iter()
                .all(|c| c.kill.incident == pass[0].kill.incident)
        );
        assert_ne!(
            first.kill.incident, pass[0].kill.incident,
            "another killer, later"
        );
        assert_eq!(pass[0].kill.victim.oom_score_adj, Some(500));
    }

    #[test]
    fn the_kernels_own_sigkill_in_a_killers_context_is_not_the_killers() {
        let r = recorded();
        let mut s = confirmed(&r[2]);
        s.sighting.code = 0x80; // SI_KERNEL: the OOM killer's SEND_SIG_PRIV
        let mut u = UserspaceKills::default();
        assert!(u.signal(s, "b").is_none());
        assert_eq!(u.duplicates, 1);
    }

    #[test]
    fn a_victim_gone_before_proc_was_read_says_what_is_missing() {
        let r = recorded();
        let mut s = confirmed(&r[3]);
        s.victim = None;
        s.sighting.walk = None;
        let k = kill_of(&s, None);
        assert_eq!(k.victim.comm.as_deref(), Some("sleep"), "from the record");
        assert_eq!(k.victim.cgroup, None);
        assert_eq!(k.missing.len(), 3, "{:?}", k.missing);
        assert!(k.missing[0].starts_with("victim cgroup"));
        assert!(k.missing[2].starts_with("outcome.main_process"));
    }

    #[test]
    fn a_killers_kill_says_main_process_or_child_is_unknown() {
        let r = recorded();
        let k = kill_of(&confirmed(&r[3]), None);
        assert_eq!(k.outcome.main_process, None);
        assert_eq!(k.missing.len(), 1, "{:?}", k.missing);
        assert!(
            k.missing[0].starts_with("outcome.main_process"),
            "{:?}",
            k.missing
        );
    }
}
