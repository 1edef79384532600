use super::*;
use crate::report::{Consumer, K8s, Memcg, NodeMemory, Victim};

const MI: u64 = 1 << 20;

/// The node-level kill the VM tests capture (README "Sample output"): a
/// batch service eats a 512 MiB node and the kernel kills a Burstable pod
/// that used 43 MiB of its 256 MiB limit. Consumers of three namespaces and
/// a system service are on the node.
fn node_kill() -> Kill {
    Kill {
        time: "2026-11-28T11:22:03.955Z".into(),
        node: "vm".into(),
        scope: Some(crate::report::Scope::Node),
        oom_domain: Some(OomDomain::Node),
        victim: Victim {
            pid: Some(198),
            comm: Some("python3".into()),
            oom_score_adj: Some(985),
            cgroup: Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda8a20432_1f6e_4b43_9d1e_0c2b8f4e7a11.slice/cri-containerd-d12fc7138a1f1c4d0f5e3a9b7c2e6d4f8a0b1c3e5d7f9a2b4c6d8e0f1a3b5c7d.scope".into()),
            ..Victim::default()
        },
        memcg: Memcg {
            victim_usage_bytes: Some(44_982_272),
            victim_limit_bytes: Some(268_435_456),
            ..Memcg::default()
        },
        k8s: Some(K8s {
            namespace: Some("shop".into()),
            pod: Some("api-5c8d".into()),
            pod_uid: Some("a8a20432-1f6e-4b43-9d1e-0c2b8f4e7a11".into()),
            container: Some("api".into()),
            qos_class: Some("Burstable".into()),
            ..K8s::default()
        }),
        node_memory: Some(NodeMemory {
            top: vec![
                Consumer {
                    name: "/system.slice/batch-report.service".into(),
                    cgroup: "/system.slice/batch-report.service".into(),
                    usage_bytes: 325_877_760,
                    qos_class: None,
                },
                Consumer {
                    name: "payments/ledger-0".into(),
                    cgroup: "/kubepods.slice/kubepods-pod3e61aa2b_5c1d_4f7e_9a2b_8c4d6e0f1a2b.slice".into(),
                    usage_bytes: 45_252_608,
                    qos_class: Some("Guaranteed".into()),
                },
                Consumer {
                    name: "shop/api-5c8d".into(),
                    cgroup: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda8a20432_1f6e_4b43_9d1e_0c2b8f4e7a11.slice".into(),
                    usage_bytes: 44_982_272,
                    qos_class: Some("Burstable".into()),
                },
                Consumer {
                    name: "shop/cart-7d9f".into(),
                    cgroup: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7e2c4a_9d3f_4e1a_8b6c_2f5d7e9a1c3b.slice".into(),
                    usage_bytes: 12 * MI,
                    qos_class: Some("Burstable".into()),
                },
                Consumer {
                    name: "pod 72d2f52c-fecd-44f1-9cc6-993378c35d0c".into(),
                    cgroup: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod72d2f52c_fecd_44f1_9cc6_993378c35d0c.slice".into(),
                    usage_bytes: 3 * MI,
                    qos_class: Some("BestEffort".into()),
                },
            ],
            ..NodeMemory::default()
        }),
        // The explanation names every namespace; the note must not use it.
        explanation: Some("Largest consumers: /system.slice/batch-report.service 311 MiB, payments/ledger-0 43 MiB, shop/api-5c8d 43 MiB.".into()),
        ..Kill::default()
    }
}

/// A kill at a container's limit in the real-shaped pod of tests/data/kube/pod.json.
fn container_kill() -> Kill {
    Kill {
        time: "2025-01-02T03:04:05.678Z".into(),
        node: "node-1".into(),
        scope: Some(crate::report::Scope::Cgroup),
        oom_domain: Some(OomDomain::Container),
        oom_cgroup: Some("/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/3e61aa2b5c1d4f7e9a2b8c4d6e0f1a2b3e61aa2b5c1d4f7e9a2b8c4d6e0f1a2b".into()),
        victim: Victim {
            pid: Some(2423),
            comm: Some("python3".into()),
            ..Victim::default()
        },
        memcg: Memcg {
            oom_usage_bytes: Some(512 * MI),
            oom_limit_bytes: Some(512 * MI),
            ..Memcg::default()
        },
        k8s: Some(K8s {
            namespace: Some("prod".into()),
            pod: Some("api-7f9c6d5b8-x2x9q".into()),
            pod_uid: Some("8833712d-6e69-4f5c-95f3-aebd020ce2e7".into()),
            container: Some("api".into()),
            qos_class: Some("Burstable".into()),
            ..K8s::default()
        }),
        ..Kill::default()
    }
}

#[test]
fn the_note_of_a_node_level_kill_names_only_pods_of_the_victims_namespace() {
    let n = note(&node_kill());
    assert_eq!(
        n,
        "python3 (pid 198) in container api was OOM-killed: the node ran out of memory; no memory limit was hit. \
         The kernel chose it (Burstable, oom_score_adj 985); it used 43 MiB of its 256 MiB limit. \
         Largest consumers: api-5c8d 43 MiB (this pod), cart-7d9f 12 MiB; other workloads: 357 MiB. \
         Raise the pod's memory request to its real use, or make it Guaranteed (requests == limits)."
    );
    for foreign in [
        "payments",
        "ledger",
        "batch-report",
        "system.slice",
        "72d2f52c",
    ] {
        assert!(!n.contains(foreign), "{foreign} in {n}");
    }
}

#[test]
fn an_allocatable_kill_counts_only_consumers_below_the_kubepods_limit() {
    let mut k = node_kill();
    k.scope = Some(crate::report::Scope::Cgroup);
    k.oom_domain = Some(OomDomain::NodeAllocatable);
    k.oom_cgroup = Some("/kubepods.slice".into());
    k.memcg.oom_usage_bytes = Some(400 * MI);
    k.memcg.oom_limit_bytes = Some(400 * MI);
    let n = note(&k);
    assert!(
        n.contains("exhausted its allocatable memory (400 MiB of 400 MiB); this pod's own limit was not hit."),
        "{n}"
    );
    // The system service is outside kubepods.slice: the other workloads are
    // the Guaranteed and the BestEffort pods (43 + 3 MiB).
    assert!(
        n.contains("Largest consumers: api-5c8d 43 MiB (this pod), cart-7d9f 12 MiB; other workloads: 46 MiB."),
        "{n}"
    );
}

#[test]
fn control_characters_are_escaped_and_the_note_stays_within_1_kib() {
    let mut k = container_kill();
    k.victim.comm = Some("\x1b[2Jx\nFAKE".into());
    let n = note(&k);
    assert!(
        n.starts_with("\\x1b[2Jx\\x0aFAKE (pid 2423) in container api was OOM-killed: the container hit its own memory limit (512 MiB of 512 MiB)."),
        "{n}"
    );
    assert!(!n.chars().any(char::is_control), "{n:?}");

    // Names as long as the kernel and the API allow still fit.
    let mut k = node_kill();
    k.oom_domain = Some(OomDomain::Cgroup);
    k.oom_cgroup = Some(format!("/{}", "é".repeat(600)));
    let n = note(&k);
    assert!(n.len() <= NOTE_MAX && n.ends_with('…'), "{}", n.len());
    let mut k = node_kill();
    if let Some(nm) = k.node_memory.as_mut() {
        for i in 0..40 {
            nm.top.push(Consumer {
                name: format!("shop/{}-{i}", "w".repeat(60)),
                usage_bytes: 2 * MI,
                ..Consumer::default()
            });
        }
    }
    let n = note(&k);
    assert!(n.len() <= NOTE_MAX, "{}", n.len());
}

#[test]
fn the_event_is_an_events_k8s_io_v1_event_on_the_pod() {
    let kill = container_kill();
    let obs = observation(&kill).expect("a pod kill");
    let ev = &obs.event;
    assert_eq!(obs.key.reason, "OOMKilledContainerLimit");
    assert_eq!(ev.reason.as_deref(), Some("OOMKilledContainerLimit"));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.action.as_deref(), Some(ACTION));
    assert_eq!(ev.reporting_controller.as_deref(), Some("oomtrace"));
    assert_eq!(ev.reporting_instance.as_deref(), Some("node-1"));
    assert_eq!(ev.metadata.namespace.as_deref(), Some("prod"));
    // Named when it starts a series.
    let mut c = Coalescer::default();
    c.observe(obs.clone(), Instant::now());
    let w = c.due(Instant::now(), false);
    let [Write::Create { event, .. }] = &w[..] else {
        panic!("{w:?}")
    };
    assert!(
        event
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("api-7f9c6d5b8-x2x9q.")),
        "{event:?}"
    );
    let r = ev.regarding.as_ref().expect("regarding");
    assert_eq!(r.kind.as_deref(), Some("Pod"));
    assert_eq!(r.api_version.as_deref(), Some("v1"));
    assert_eq!(r.name.as_deref(), Some("api-7f9c6d5b8-x2x9q"));
    assert_eq!(
        r.uid.as_deref(),
        Some("8833712d-6e69-4f5c-95f3-aebd020ce2e7")
    );
    assert_eq!(r.field_path.as_deref(), Some("spec.containers{api}"));
    let json = serde_json::to_value(ev).expect("json");
    assert_eq!(json["eventTime"], "2025-01-02T03:04:05.678000Z", "{json}");
    // What events.k8s.io/v1 refuses on create is absent.
    for gone in [
        "deprecatedCount",
        "deprecatedSource",
        "deprecatedFirstTimestamp",
        "series",
    ] {
        assert!(json.get(gone).is_none(), "{gone}: {json}");
    }
    assert_eq!(
        ev.note.as_deref(),
        Some(
            "python3 (pid 2423) in container api was OOM-killed: the container hit its own memory limit (512 MiB of 512 MiB). \
             Raise the container's memory limit or reduce its use (keep heap settings well below the limit)."
        )
    );
    assert!(observation(&Kill::default()).is_none(), "no pod, no Event");
    let names: std::collections::HashSet<String> = (0..1000)
        .map(|_| event_name("api-7f9c6d5b8-x2x9q"))
        .collect();
    assert_eq!(names.len(), 1000, "Event names are unique");
    assert!(event_name(&"p".repeat(253)).len() <= 253);
}

/// Drives a coalescer second by second as the writing task does, every
/// write succeeding; returns the writes made.
fn drive(
    c: &mut Coalescer,
    t0: Instant,
    kills: &[(Duration, Observation)],
    until: Duration,
) -> Vec<(Duration, Write)> {
    let mut made = Vec::new();
    let mut next = kills.iter().peekable();
    let mut at = Duration::ZERO;
    while at <= until {
        while let Some((when, obs)) = next.peek() {
            if *when > at {
                break;
            }
            assert!(c.observe(obs.clone(), t0 + *when));
            next.next();
        }
        for w in c.due(t0 + at, false) {
            let outcome = match w {
                Write::Create { .. } => Outcome::Created,
                Write::Patch { .. } => Outcome::Patched,
            };
            c.done(w.key(), outcome, t0 + at);
            made.push((at, w));
        }
        at += Duration::from_millis(100);
    }
    made
}

#[test]
fn two_hundred_kills_of_one_pod_make_two_writes_that_count_them_all() {
    let obs = observation(&container_kill()).expect("obs");
    // 200 kills in 12 s, as the host's burst test causes them.
    let kills: Vec<(Duration, Observation)> = (0..200)
        .map(|i| (Duration::from_millis(60 * i), obs.clone()))
        .collect();
    let mut c = Coalescer::default();
    let t0 = Instant::now();
    let made = drive(&mut c, t0, &kills, Duration::from_secs(120));
    let summary: Vec<(u64, &str, u64)> = made
        .iter()
        .map(|(at, w)| {
            let kind = match w {
                Write::Create { .. } => "create",
                Write::Patch { .. } => "patch",
            };
            (at.as_secs(), kind, w.count())
        })
        .collect();
    // Created at the first kill, the other 199 held and written once, 30 s later.
    assert_eq!(summary, [(0, "create", 1), (30, "patch", 200)]);
    let Write::Patch {
        name,
        last_observed,
        ..
    } = &made[1].1
    else {
        panic!("{made:?}")
    };
    let Write::Create { event, .. } = &made[0].1 else {
        panic!("{made:?}")
    };
    assert_eq!(Some(name), event.metadata.name.as_ref(), "the same Event");
    assert_eq!(*last_observed, obs.at);
    assert!(!c.pending());

    // A kill every 5 s for 3 minutes: one write per 30 s.
    let kills: Vec<(Duration, Observation)> = (0..36)
        .map(|i| (Duration::from_secs(5 * i), obs.clone()))
        .collect();
    let mut c = Coalescer::default();
    let made = drive(&mut c, t0, &kills, Duration::from_secs(240));
    let counts: Vec<(u64, u64)> = made
        .iter()
        .map(|(at, w)| (at.as_secs(), w.count()))
        .collect();
    assert_eq!(
        counts,
        [
            (0, 1),
            (30, 7),
            (60, 13),
            (90, 19),
            (120, 25),
            (150, 31),
            (180, 36)
        ]
    );
}

#[test]
fn a_series_ends_six_minutes_after_its_last_kill() {
    let obs = observation(&container_kill()).expect("obs");
    let mut c = Coalescer::default();
    let t0 = Instant::now();
    let kills = [
        (Duration::ZERO, obs.clone()),
        (Duration::from_secs(1), obs.clone()),
        // 6 min 30 s after the last kill: a new Event.
        (Duration::from_secs(391), obs.clone()),
    ];
    let made = drive(&mut c, t0, &kills, Duration::from_secs(400));
    let names: Vec<(u64, &str, u64)> = made
        .iter()
        .map(|(at, w)| match w {
            Write::Create { event, .. } => (
                at.as_secs(),
                event.metadata.name.as_deref().unwrap_or(""),
                1,
            ),
            Write::Patch { name, count, .. } => (at.as_secs(), name.as_str(), *count),
        })
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!((names[1].0, names[1].2), (30, 2));
    assert_eq!(names[0].1, names[1].1);
    assert_ne!(names[2].1, names[0].1, "a new series is a new Event");
    assert!(matches!(made[2].1, Write::Create { .. }));
    // Over series are forgotten.
    c.due(t0 + Duration::from_secs(391) + SERIES_END, false);
    assert!(c.is_empty());
}

#[test]
fn the_node_budget_bounds_writes_and_held_kills_are_not_lost() {
    let t0 = Instant::now();
    let mut c = Coalescer::default();
    // 50 pods killed at once (a fork bomb across a Job's pods).
    for i in 0..50 {
        let mut k = container_kill();
        if let Some(k8s) = k.k8s.as_mut() {
            k8s.pod = Some(format!("job-{i}"));
        }
        assert!(c.observe(observation(&k).expect("obs"), t0));
    }
    let mut writes = Vec::new();
    for s in 0..=60 {
        let now = t0 + Duration::from_secs(s);
        for w in c.due(now, false) {
            c.done(w.key(), Outcome::Created, now);
            writes.push(s);
        }
    }
    // 10 at once, then one a second.
    assert_eq!(writes.iter().filter(|s| **s == 0).count(), 10);
    assert_eq!(writes.len(), 50);
    assert_eq!(writes[49], 40);
    for pair in writes[10..].windows(2) {
        assert!(pair[1] - pair[0] >= 1, "{writes:?}");
    }
    assert!(!c.pending());
}

#[test]
fn failed_writes_are_retried_with_the_count_and_a_lost_event_is_recreated() {
    let obs = observation(&container_kill()).expect("obs");
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut c = Coalescer::default();
    c.observe(obs.clone(), t0);
    let w = c.due(t0, false);
    assert!(matches!(w[..], [Write::Create { .. }]));
    // The API server is down: nothing is due until the interval has passed.
    c.done(w[0].key(), Outcome::Failed, t0);
    c.observe(obs.clone(), t0 + s(5));
    assert!(c.due(t0 + s(29), false).is_empty());
    let w = c.due(t0 + s(30), false);
    let [Write::Create { event, .. }] = &w[..] else {
        panic!("{w:?}")
    };
    // Kills held before the first write are created as a series.
    assert_eq!(event.series.as_ref().map(|s| s.count), Some(2));
    c.done(w[0].key(), Outcome::Created, t0 + s(30));
    assert!(!c.pending());

    // The Event was deleted (the API server's --event-ttl): a patch finds
    // it gone, and the next write creates it again with the whole count.
    c.observe(obs.clone(), t0 + s(40));
    let w = c.due(t0 + s(60), false);
    assert!(matches!(w[..], [Write::Patch { count: 3, .. }]), "{w:?}");
    c.done(w[0].key(), Outcome::Gone, t0 + s(60));
    let w = c.due(t0 + s(60), false);
    let [Write::Create { event, .. }] = &w[..] else {
        panic!("{w:?}")
    };
    assert_eq!(event.series.as_ref().map(|s| s.count), Some(3));
}

#[test]
fn at_shutdown_held_kills_are_flushed_and_the_series_table_is_bounded() {
    let obs = observation(&container_kill()).expect("obs");
    let t0 = Instant::now();
    let mut c = Coalescer::default();
    c.observe(obs.clone(), t0);
    for w in c.due(t0, false) {
        c.done(w.key(), Outcome::Created, t0);
    }
    c.observe(obs.clone(), t0 + Duration::from_secs(1));
    assert!(c.due(t0 + Duration::from_secs(2), false).is_empty());
    let w = c.due(t0 + Duration::from_secs(2), true);
    assert!(matches!(w[..], [Write::Patch { count: 2, .. }]), "{w:?}");

    let mut c = Coalescer::default();
    for i in 0..MAX_SERIES + 5 {
        let mut k = container_kill();
        if let Some(k8s) = k.k8s.as_mut() {
            k8s.pod = Some(format!("p-{i}"));
        }
        let accepted = c.observe(observation(&k).expect("obs"), t0);
        assert_eq!(accepted, i < MAX_SERIES, "{i}");
    }
    assert_eq!((c.len(), c.dropped), (MAX_SERIES, 5));
}

#[test]
fn reasons_tell_the_domains_apart() {
    assert_eq!(
        reason(Some(OomDomain::Container)),
        "OOMKilledContainerLimit"
    );
    assert_eq!(reason(Some(OomDomain::Pod)), "OOMKilledPodLimit");
    assert_eq!(
        reason(Some(OomDomain::NodeAllocatable)),
        "OOMKilledNodeAllocatable"
    );
    assert_eq!(reason(Some(OomDomain::Node)), "OOMKilledNodeLevel");
    assert_eq!(reason(Some(OomDomain::Cgroup)), "OOMKilledCgroupLimit");
    assert_eq!(reason(None), "OOMKilled");
    assert_eq!(truncate("é".repeat(600).as_str(), 11), "éééé…");
}

#[test]
fn a_replayed_kill_gets_an_event_only_when_recent() {
    let now: Timestamp = "2026-11-28T11:30:00Z".parse().expect("a time");
    let mut k = container_kill();
    k.time = "2026-11-28T11:22:03.955Z".into();
    assert!(wanted(&k, now), "a live kill always");
    k.replayed = true;
    assert!(!wanted(&k, now), "replayed, 8 minutes old");
    k.time = "2026-11-28T11:26:30.000Z".into();
    assert!(wanted(&k, now), "replayed, 3.5 minutes old");
    k.time = "not a time".into();
    assert!(!wanted(&k, now));
}
