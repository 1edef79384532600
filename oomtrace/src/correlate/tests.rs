use oomtrace_common::{
    ABI_VERSION, BtfVictim, CgroupLevel, CgroupWalk, DECISION_HAS_CHOSEN, DECISION_HAS_MEMCG,
    Decision, Header, KIND_BTF_VICTIM, KIND_DECISION, KIND_GROUP_MEMBER, MAX_DEPTH, NAME_LEN,
    VICTIM_HAS_ADJ, VICTIM_OOM_SIGKILL, as_bytes,
};

use std::mem::size_of;

use super::*;
use crate::{
    capture::kmsg::{OomLine, parse_oom_line, parse_record},
    capture::tracefs::MarkVictimFields,
    capture::{KmsgSighting, RecordMeta, TpSighting, Trigger, ring::Decoder},
    report::{Constraint, Scope, VerdictSource},
};

/// Real records of one memcg kill on this project's 6.18 host.
const HOST: &str = include_str!("../../tests/data/kmsg/host-6.18-memcg.kmsg.txt");

fn kmsg_inputs(text: &str) -> Vec<Input> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| parse_record(l.as_bytes()))
        .filter_map(|r| {
            parse_oom_line(&r.message).map(|line| {
                Input::Kmsg(KmsgSighting {
                    seq: r.seq,
                    ts_usec: r.ts_usec,
                    line,
                    received: Instant::now(),
                    replayed: false,
                })
            })
        })
        .collect()
}

fn is_kill_line(i: &Input) -> bool {
    matches!(
        i,
        Input::Kmsg(KmsgSighting {
            line: OomLine::Killed { .. },
            ..
        })
    )
}

fn first_kill(inputs: Vec<Input>) -> Vec<Input> {
    // Up to and including the first kill line.
    let mut out = Vec::new();
    for i in inputs {
        let last = is_kill_line(&i);
        out.push(i);
        if last {
            break;
        }
    }
    out
}

fn name(s: &str) -> [u8; NAME_LEN] {
    let mut n = [0u8; NAME_LEN];
    n[..s.len()].copy_from_slice(s.as_bytes());
    n
}

fn walk(levels: &[(&str, u64, u64)]) -> CgroupWalk {
    let mut w = CgroupWalk {
        depth: levels.len() as u32,
        flags: 0,
        levels: [CgroupLevel {
            id: 0,
            usage_pages: 0,
            max_pages: 0,
            name: [0; NAME_LEN],
        }; MAX_DEPTH],
    };
    for (i, (n, usage, max)) in levels.iter().enumerate() {
        w.levels[i] = CgroupLevel {
            id: i as u64 + 1,
            usage_pages: *usage,
            max_pages: *max,
            name: name(n),
        };
    }
    w
}

const UNLIMITED: u64 = i64::MAX as u64 / 4096;

fn expect(tracepoint: bool, tp_btf: bool, kmsg: bool, decision: bool) -> Expect {
    Expect {
        tracepoint,
        tp_btf,
        kmsg,
        decision,
        proc: false,
        memory: false,
    }
}

fn header(kind: u16, len: usize, ktime_ns: u64, tid: u32) -> Header {
    let mut h = Header::zeroed();
    h.version = ABI_VERSION;
    h.kind = kind;
    h.len = len as u32;
    h.ktime_ns = ktime_ns;
    h.trigger_tid = tid;
    h.trigger_tgid = tid;
    h.trigger_comm[..2].copy_from_slice(b"dd");
    h
}

/// Records go through the real ring decoder, as in the agent.
fn decode<T: Copy>(record: &T) -> Input {
    Decoder {
        layout: None,
        page_size: 4096,
        signal_hook: false,
    }
    .decode(as_bytes(record))
    .expect("decodable record")
}

fn btf_record(pid: u32, ktime_ns: u64, trigger: u32, memcg: CgroupWalk) -> BtfVictim {
    BtfVictim {
        header: header(KIND_BTF_VICTIM, size_of::<BtfVictim>(), ktime_ns, trigger),
        pid,
        tgid: pid,
        comm: *b"dd\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        oom_score_adj: 500,
        uid: 0,
        flags: VICTIM_HAS_ADJ,
        _pad: 0,
        start_time_ns: u64::from(pid) * 1000,
        lineage: oomtrace_common::Lineage::zeroed(),
        memcg,
    }
}

fn btf_victim(pid: u32, ktime_ns: u64, memcg: CgroupWalk) -> Input {
    decode(&btf_record(pid, ktime_ns, pid, memcg))
}

fn tp_input(pid: u32, ktime_ns: u64, trigger: u32, fields: MarkVictimFields) -> Input {
    Input::Tracepoint(TpSighting {
        meta: RecordMeta {
            ktime_ns,
            trigger: Trigger {
                tid: trigger,
                tgid: trigger,
                comm: "dd".into(),
            },
        },
        fields: MarkVictimFields {
            pid: Some(pid),
            ..fields
        },
        oom_sigkill: None,
    })
}

/// What the extended tracepoint reports of a `dd` victim.
fn dd_fields() -> MarkVictimFields {
    MarkVictimFields {
        comm: Some("dd".into()),
        anon_rss_kb: Some(32_512),
        oom_score_adj: Some(500),
        uid: Some(0),
        ..MarkVictimFields::default()
    }
}

fn tp_victim(pid: u32, ktime_ns: u64) -> Input {
    tp_input(pid, ktime_ns, pid, dd_fields())
}

/// A victim in `/parent/child`, killed at `/parent`'s limit.
fn parent_at_limit() -> CgroupWalk {
    walk(&[
        ("child", 1_000, UNLIMITED),
        ("parent", 8_190, 8_192),
        ("", 90_000, UNLIMITED),
    ])
}

/// A correlator expecting the tracepoint, tp_btf and the kernel log
/// (not the decision hook), waiting 500 ms for missing sources.
fn every_source_but_the_decision() -> Correlator {
    let active = expect(true, true, true, false);
    Correlator::new(active, Duration::from_millis(500), 4096, "b".into())
}

#[test]
fn the_kernel_log_alone_gives_the_verdict_of_a_real_memcg_kill() {
    let mut c = Correlator::new(
        expect(false, false, true, false),
        Duration::from_millis(500),
        4096,
        "b".into(),
    );
    let now = Instant::now();
    let out: Vec<Correlated> = first_kill(kmsg_inputs(HOST))
        .into_iter()
        .flat_map(|i| c.push(i, now))
        .collect();
    assert_eq!(out.len(), 1, "a complete kill is emitted at once");
    let k = &out[0].kill;
    assert_eq!(k.verdict_source, Some(VerdictSource::Kmsg));
    assert_eq!(k.scope, Some(Scope::Cgroup));
    assert_eq!(k.constraint, Some(Constraint::Memcg));
    assert_eq!(k.oom_cgroup.as_deref(), Some("/kmsgsample"));
    assert_eq!(k.victim.cgroup.as_deref(), Some("/kmsgsample"));
    assert_eq!(k.victim.comm.as_deref(), Some("python3"));
    assert_eq!(k.trigger.comm.as_deref(), Some("python3"));
    assert_eq!(k.trigger.gfp_mask.as_deref(), Some("0xcc0(GFP_KERNEL)"));
    assert_eq!(k.sources, vec!["kmsg"]);
    assert!(k.victim.anon_rss_kb.is_some_and(|kb| kb > 0));
}

#[test]
fn every_source_of_one_kill_makes_one_event_and_no_duplicate() {
    let mut c = every_source_but_the_decision();
    let now = Instant::now();
    let kmsg = first_kill(kmsg_inputs(HOST));
    let (pid, ts_usec) = kill_line(&kmsg);
    // mark_victim's BPF time: 1.35 ms before printk stamps the kill line
    // (as measured on the host; the clocks are close but not the same).
    let bpf = ts_usec * 1000 - 1_350_000;
    let w = walk(&[("kmsgsample", 16_384, 16_384), ("", 90_000, UNLIMITED)]);
    assert!(c.push(tp_victim(pid, bpf), now).is_empty());
    assert!(c.push(btf_victim(pid, bpf + 1_000, w), now).is_empty());
    let out: Vec<_> = kmsg.into_iter().flat_map(|i| c.push(i, now)).collect();
    assert_eq!(out.len(), 1);
    let k = &out[0].kill;
    assert_eq!(k.sources, vec!["tracepoint", "tp_btf", "kmsg"]);
    assert_eq!(k.memcg.victim_limit_bytes, Some(16_384 * 4096));
    assert_eq!(k.memcg.oom_limit_bytes, Some(16_384 * 4096));
    assert_eq!(k.victim.oom_score_adj, Some(500));
    // A late duplicate source of this kill is dropped and counted.
    assert!(c.push(btf_victim(pid, bpf + 2_000, w), now).is_empty());
    assert_eq!(c.late, 1);
    assert!(c.tick(now + Duration::from_secs(5)).is_empty());
}

/// The pid and timestamp of the first kill line.
fn kill_line(inputs: &[Input]) -> (u32, u64) {
    inputs
        .iter()
        .find_map(|i| match i {
            Input::Kmsg(KmsgSighting {
                line: OomLine::Killed { pid, .. },
                ts_usec,
                ..
            }) => pid.map(|p| (p, *ts_usec)),
            _ => None,
        })
        .expect("kill line")
}

#[test]
fn a_mark_no_kill_line_confirms_is_no_kill_until_the_kill_line_comes() {
    // mark_victim also fires for a task that was already exiting: the OOM
    // killer marks and reaps it, prints no kill line and sends no SIGKILL.
    let mut c = every_source_but_the_decision();
    let now = Instant::now();
    let w = parent_at_limit();
    let bpf = 5_000_000_000;
    assert!(c.push(tp_victim(42, bpf), now).is_empty());
    assert!(c.push(btf_victim(42, bpf + 1_000, w), now).is_empty());
    assert!(
        c.tick(now + Duration::from_millis(100)).is_empty(),
        "not before the wait"
    );
    assert!(
        c.tick(now + Duration::from_millis(600)).is_empty(),
        "no kill line, no kernel-log loss: not a kill"
    );
    assert_eq!((c.not_killed, c.pending_count()), (1, 0));
    // A kill line that comes late (the reader was behind) makes it a kill,
    // with every source's details.
    let line = "Memory cgroup out of memory: Killed process 42 (dd) total-vm:105376kB, anon-rss:32512kB, file-rss:1624kB, shmem-rss:0kB, UID:0 pgtables:112kB oom_score_adj:500";
    let late = Input::Kmsg(KmsgSighting {
        seq: 9,
        ts_usec: (bpf + 1_400_000) / 1000,
        line: parse_oom_line(line).expect("kill line"),
        received: now,
        replayed: false,
    });
    let out = c.push(late, now + Duration::from_secs(3));
    assert_eq!(out.len(), 1);
    let k = &out[0].kill;
    assert_eq!(k.sources, vec!["tracepoint", "tp_btf", "kmsg"]);
    assert_eq!(k.oom_cgroup.as_deref(), Some("/parent"));
    assert_eq!(c.not_killed, 0);
}

/// A victim's tracepoint and tp_btf records as the kernel side makes them
/// with the signal hook attached (`signal_hook`): `sigkill` says whether the
/// OOM killer's own SIGKILL came just before the mark (`VICTIM_OOM_SIGKILL`).
fn marked(pid: u32, ktime_ns: u64, sigkill: bool, signal_hook: bool) -> [Input; 2] {
    let w = parent_at_limit();
    let flag = if sigkill { VICTIM_OOM_SIGKILL } else { 0 };
    let btf = BtfVictim {
        flags: VICTIM_HAS_ADJ | flag,
        ..btf_record(pid, ktime_ns + 1_000, pid, w)
    };
    let decoder = Decoder {
        layout: None,
        page_size: 4096,
        signal_hook,
    };
    let tp = oomtrace_common::TpVictim {
        header: header(
            oomtrace_common::KIND_TP_VICTIM,
            size_of::<oomtrace_common::TpVictim>(),
            ktime_ns,
            pid,
        ),
        pid,
        record_len: 0,
        flags: flag,
        _pad: 0,
        record: [0; oomtrace_common::TP_RECORD_MAX],
    };
    [
        decoder.decode(as_bytes(&tp)).expect("tracepoint record"),
        decoder.decode(as_bytes(&btf)).expect("tp_btf record"),
    ]
}

#[test]
fn at_shutdown_a_mark_without_the_oom_killers_sigkill_is_not_reported() {
    // The kernel log is read too: a mark waits for its kill line.
    let active = expect(true, true, true, false);
    let mut c = Correlator::new(active, Duration::from_secs(5), 4096, "b".into());
    let now = Instant::now();
    // Already exiting when chosen (no SIGKILL of the OOM killer's), and a
    // killed one, both still pending when the agent stops.
    for input in marked(43, 2_000_000_000, false, true) {
        assert!(c.push(input, now).is_empty());
    }
    for input in marked(44, 3_000_000_000, true, true) {
        assert!(c.push(input, now).is_empty());
    }
    assert_eq!(c.pending_count(), 2, "both wait for their kill lines");
    let flushed = c.flush();
    assert_eq!(flushed.len(), 1, "only the killed one: {flushed:?}");
    assert_eq!(flushed[0].kill.victim.pid, Some(44));
    assert_eq!((c.not_killed, c.pending_count()), (1, 0));
}

#[test]
fn without_the_kernel_log_the_oom_killers_sigkill_confirms_the_kill() {
    let active = expect(true, true, false, false);
    let mut c = Correlator::new(active, Duration::from_millis(500), 4096, "b".into());
    let now = Instant::now();
    // Killed: reported as soon as both programs are in, confirmed.
    let mut out = Vec::new();
    for input in marked(42, 1_000_000, true, true) {
        out.extend(c.push(input, now));
    }
    assert_eq!(out.len(), 1, "reported at once");
    let k = &out[0].kill;
    assert_eq!(k.oom_cgroup.as_deref(), Some("/parent"));
    assert!(
        !k.missing.iter().any(|m| m.starts_with("kill confirmation")),
        "{:?}",
        k.missing
    );
    // Marked without it (task_will_free_mem: already exiting): no kill.
    for input in marked(43, 2_000_000_000, false, true) {
        assert!(c.push(input, now).is_empty());
    }
    assert!(c.tick(now + Duration::from_millis(600)).is_empty());
    assert_eq!((c.not_killed, c.pending_count()), (1, 0));
    // Without the signal hook the records say nothing: reported, unconfirmed.
    let out: Vec<_> = marked(44, 4_000_000_000, false, false)
        .into_iter()
        .flat_map(|input| c.push(input, now))
        .collect();
    assert_eq!(out.len(), 1);
    assert!(
        out[0]
            .kill
            .missing
            .iter()
            .any(|m| m.starts_with("kill confirmation: without the kernel log or the signal hook")),
        "{:?}",
        out[0].kill.missing
    );
    // One program saw the SIGKILL and the other did not (its slot was
    // overwritten): the one that saw it proves the kill.
    let [tp, _] = marked(45, 6_000_000_000, false, true);
    let [_, btf] = marked(45, 6_000_000_000, true, true);
    assert!(c.push(tp, now).is_empty());
    assert_eq!(c.push(btf, now).len(), 1);
    assert_eq!(c.not_killed, 1);
}

#[test]
fn a_kill_missing_a_source_is_emitted_after_the_wait_with_what_is_missing() {
    let mut c = every_source_but_the_decision();
    let now = Instant::now();
    // The kernel log lost records while this victim was pending (its ring
    // wrapped): its kill line may be among them, so it is reported, unconfirmed.
    let w = parent_at_limit();
    assert!(c.push(tp_victim(42, 1_000), now).is_empty());
    assert!(c.push(btf_victim(42, 1_001, w), now).is_empty());
    c.note_kmsg_losses(17, now);
    assert!(
        c.tick(now + Duration::from_millis(100)).is_empty(),
        "not before the wait"
    );
    let out = c.tick(now + Duration::from_millis(600));
    assert_eq!(out.len(), 1);
    let k = &out[0].kill;
    assert_eq!(k.verdict_source, Some(VerdictSource::CgroupUsage));
    assert_eq!(k.oom_cgroup.as_deref(), Some("/parent"));
    assert_eq!(k.victim.cgroup.as_deref(), Some("/parent/child"));
    assert!(
        k.missing.iter().any(|m| m.contains("kernel log kill line")),
        "{:?}",
        k.missing
    );
    assert!(
        k.missing
            .iter()
            .any(|m| m.starts_with("kill confirmation:")),
        "{:?}",
        k.missing
    );
    assert_eq!(c.pending_count(), 0);
}

#[test]
fn victims_of_one_decision_share_an_incident_and_the_decision_decides() {
    let active = expect(true, true, false, true);
    let mut c = Correlator::new(active, Duration::from_millis(500), 4096, "b".into());
    let now = Instant::now();
    let domain = walk(&[("grp", 12_800, 12_800), ("", 90_000, UNLIMITED)]);
    let member = walk(&[
        ("w1", 6_000, UNLIMITED),
        ("grp", 12_800, 12_800),
        ("", 90_000, UNLIMITED),
    ]);
    let mut d = Decision {
        header: header(KIND_DECISION, size_of::<Decision>(), 500, 7),
        flags: DECISION_HAS_MEMCG | DECISION_HAS_CHOSEN,
        constraint: 3,
        order: 0,
        gfp_mask: 0xcc0,
        totalpages: 12_800,
        chosen_points: 7_000,
        chosen_pid: 100,
        chosen_tgid: 100,
        chosen_comm: [0; 16],
        chosen_adj: 0,
        _pad: 0,
        chosen_start_time_ns: 0,
        chosen_lineage: oomtrace_common::Lineage::zeroed(),
        domain,
        chosen_memcg: member,
        trigger_memcg: member,
    };
    d.chosen_comm[..2].copy_from_slice(b"dd");
    assert!(c.push(decode(&d), now).is_empty());
    let mut kills = Vec::new();
    for (pid, t) in [(100u32, 600u64), (101, 700), (102, 800)] {
        // The trigger (tid 7) ran the OOM killer for all three.
        let tp = tp_input(pid, t, 7, dd_fields());
        let bv = decode(&btf_record(pid, t, 7, member));
        kills.extend(c.push(tp, now));
        kills.extend(c.push(bv, now));
    }
    assert_eq!(kills.len(), 3);
    let incidents: std::collections::HashSet<_> =
        kills.iter().map(|k| k.kill.incident.clone()).collect();
    assert_eq!(incidents.len(), 1, "one decision, one incident");
    for k in &kills {
        assert_eq!(k.kill.verdict_source, Some(VerdictSource::OomControl));
        assert_eq!(k.kill.oom_cgroup.as_deref(), Some("/grp"));
        assert_eq!(k.kill.trigger.pid, Some(7));
    }
    assert_eq!(kills[0].kill.victim.points, Some(7_000));
    assert_eq!(
        kills[1].kill.victim.points, None,
        "group members are not scored"
    );
    assert_eq!(kills[0].kill.memcg.total_bytes, Some(12_800 * 4096));
}

#[test]
fn group_members_get_their_cgroup_from_the_kernels_scan_on_pid_only_kernels() {
    // 5.10: pid-only tracepoint, no tp_btf, fentry on oom_kill_process and
    // oom_kill_memcg_member. The kernel scans the group (chosen task
    // included) before marking each member.
    let active = expect(true, false, false, true);
    let mut c = Correlator::new(active, Duration::from_millis(500), 4096, "b".into());
    let now = Instant::now();
    let grp = walk(&[("grp", 24_576, 24_576), ("", 90_000, UNLIMITED)]);
    let leaf = walk(&[
        ("w1", 6_000, UNLIMITED),
        ("grp", 24_576, 24_576),
        ("", 90_000, UNLIMITED),
    ]);
    let pid_only = |pid: u32, t: u64| tp_input(pid, t, 7, MarkVictimFields::default());
    let member = |pid: u32, w: CgroupWalk| {
        let mut v = btf_record(pid, 650, 7, w);
        v.header.kind = KIND_GROUP_MEMBER;
        v.uid = u32::MAX;
        decode(&v)
    };
    // The chosen task (pid 135) is marked first, then the scan: two
    // members and one task the kernel skipped (no mm), never marked.
    let mut kills = c.push(pid_only(135, 600), now);
    for (pid, w) in [(132, grp), (133, leaf), (134, grp), (140, grp)] {
        assert!(
            c.push(member(pid, w), now).is_empty(),
            "a scan alone is no kill"
        );
    }
    for (pid, t) in [(132u32, 700u64), (133, 710), (134, 720)] {
        kills.extend(c.push(pid_only(pid, t), now));
    }
    assert_eq!(kills.len(), 4);
    let by_pid = |pid: u32| {
        &kills
            .iter()
            .find(|k| k.kill.victim.pid == Some(pid))
            .expect("reported")
            .kill
    };
    assert_eq!(by_pid(133).victim.cgroup.as_deref(), Some("/grp/w1"));
    assert_eq!(by_pid(132).victim.cgroup.as_deref(), Some("/grp"));
    assert_eq!(by_pid(132).victim.oom_score_adj, Some(500));
    assert!(by_pid(132).sources.contains(&"oom_group_scan"));
    // The chosen task was marked before the scan: nothing named its cgroup.
    assert_eq!(by_pid(135).victim.cgroup, None);
    assert!(
        by_pid(135)
            .missing
            .iter()
            .any(|m| m.starts_with("victim cgroup")),
        "{:?}",
        by_pid(135).missing
    );
    // The skipped task is never reported and is forgotten.
    assert!(c.tick(now + Duration::from_secs(61)).is_empty());
    assert!(c.members.is_empty());
}

#[test]
fn separate_decisions_are_separate_incidents() {
    let active = expect(true, false, false, false);
    let mut c = Correlator::new(active, Duration::from_millis(500), 4096, "b".into());
    let now = Instant::now();
    // Two processes each triggering their own OOM, 50 ms apart.
    let a = c.push(tp_victim(1, 1_000_000), now);
    let b = c.push(tp_victim(2, 51_000_000), now);
    assert_eq!(a.len() + b.len(), 2);
    assert_ne!(a[0].kill.incident, b[0].kill.incident);
}

/// dmesg lines (`[date] message`) as kernel-log inputs, 100 µs apart.
fn dmesg_inputs(text: &str) -> Vec<Input> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("] ").map(|(_, msg)| msg))
        .filter_map(parse_oom_line)
        .enumerate()
        .map(|(i, line)| {
            Input::Kmsg(KmsgSighting {
                seq: i as u64,
                ts_usec: 1_000_000 + 100 * i as u64,
                line,
                received: Instant::now(),
                replayed: false,
            })
        })
        .collect()
}

#[test]
fn before_5_1_only_the_process_killed_is_a_kill_not_the_one_chosen() {
    // CentOS 7 (kubernetes#56891): the kernel chose java 24572 and killed
    // its child java 28438 instead.
    let text = include_str!("../../tests/data/kmsg/centos7-3.10-k8s-56891.txt");
    let first_two: String = text.lines().take(3).collect::<Vec<_>>().join("\n");
    let mut c = Correlator::new(
        expect(false, false, true, false),
        Duration::from_millis(500),
        4096,
        "b".into(),
    );
    let now = Instant::now();
    let mut out: Vec<Correlated> = dmesg_inputs(&first_two)
        .into_iter()
        .flat_map(|i| c.push(i, now))
        .collect();
    out.extend(c.tick(now + Duration::from_secs(2)));
    let pids: Vec<Option<u32>> = out.iter().map(|k| k.kill.victim.pid).collect();
    assert_eq!(pids, [Some(28438)], "the chosen parent survived");
    assert_eq!(
        out[0].kill.victim.points, None,
        "the chosen task's score is not the child's"
    );
}

#[test]
fn a_group_kill_reports_each_task_once_and_no_task_that_was_already_exiting() {
    let text = include_str!("../../tests/data/kmsg/k8s-2025-group-kill-already-exiting.txt");
    let mut c = Correlator::new(
        expect(false, false, true, false),
        Duration::from_millis(500),
        4096,
        "b".into(),
    );
    let now = Instant::now();
    let mut out: Vec<Correlated> = dmesg_inputs(text)
        .into_iter()
        .flat_map(|i| c.push(i, now))
        .collect();
    out.extend(c.tick(now + Duration::from_secs(2)));
    let mut pids: Vec<u32> = out.iter().filter_map(|k| k.kill.victim.pid).collect();
    pids.sort_unstable();
    assert_eq!(
        pids,
        [
            3803554, 3803846, 3804873, 3804874, 3804875, 3804876, 3804879, 3804880, 3804881,
            3804883
        ],
        "ten kills; the chosen task (killed twice) once; the exiting ones never"
    );
    assert_eq!(c.repeated, 1, "the kernel counted the chosen task twice");
    let incidents: std::collections::HashSet<_> =
        out.iter().map(|k| k.kill.incident.clone()).collect();
    assert_eq!(incidents.len(), 1, "one decision");
    for k in &out {
        assert_eq!(
            k.kill.oom_cgroup.as_deref(),
            Some("/kubepods.slice/kubepods-podf9411888_a753_41f4_9520_afc45712f5b5.slice"),
            "{:?}",
            k.kill.victim.pid
        );
    }
}

#[test]
fn a_reused_pid_is_another_kill_and_a_late_source_is_not() {
    let active = expect(false, true, false, false);
    let mut c = Correlator::new(active, Duration::from_millis(500), 4096, "b".into());
    let now = Instant::now();
    let w = walk(&[("app", 8_192, 8_192), ("", 90_000, UNLIMITED)]);
    let mut first = btf_record(4242, 5_000_000_000, 4242, w);
    first.start_time_ns = 111;
    let mut second = btf_record(4242, 5_004_000_000, 4242, w);
    second.start_time_ns = 222;
    let a = c.push(decode(&first), now);
    let b = c.push(decode(&second), now);
    assert_eq!(a.len() + b.len(), 2, "two tasks with one pid, 4 ms apart");
    // The first task's record again, 30 s late (a stall): the same kill.
    let late = c.push(decode(&first), now + Duration::from_secs(30));
    assert!(late.is_empty());
    assert_eq!(c.late, 1);
}

#[test]
fn a_kill_line_long_after_its_bpf_records_makes_one_report() {
    // The kmsg reader stalled for 30 s: the BPF records waited, were set
    // aside as not (yet) shown killed, and the kill line revives them.
    let mut c = every_source_but_the_decision();
    let now = Instant::now();
    let w = walk(&[("app", 8_192, 8_192), ("", 90_000, UNLIMITED)]);
    let bpf = 7_000_000_000;
    assert!(c.push(tp_victim(77, bpf), now).is_empty());
    assert!(c.push(btf_victim(77, bpf + 500, w), now).is_empty());
    assert!(c.tick(now + Duration::from_secs(1)).is_empty());
    let line = "Memory cgroup out of memory: Killed process 77 (dd) total-vm:105376kB, anon-rss:32512kB, file-rss:1624kB, shmem-rss:0kB, UID:0 pgtables:112kB oom_score_adj:500";
    let kill_line = |seq| {
        Input::Kmsg(KmsgSighting {
            seq,
            ts_usec: (bpf + 1_350_000) / 1000,
            line: parse_oom_line(line).expect("kill line"),
            received: now,
            replayed: false,
        })
    };
    let out = c.push(kill_line(1), now + Duration::from_secs(30));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kill.sources, vec!["tracepoint", "tp_btf", "kmsg"]);
    // And the same kill line read twice (a replayed log) is no second kill.
    assert!(
        c.push(kill_line(1), now + Duration::from_secs(31))
            .is_empty()
    );
    assert!(c.tick(now + Duration::from_secs(40)).is_empty());
}

#[test]
fn once_the_kernel_log_reader_ended_a_mark_is_reported_without_a_kill_line() {
    // The reader died (the host test closes a FIFO given as --kmsg): no
    // kill line can come, so a mark is reported when its wait runs out,
    // unconfirmed, rather than set aside as "not killed".
    let mut c = Correlator::new(
        expect(true, true, true, false),
        Duration::from_millis(500),
        4096,
        "b".into(),
    );
    let now = Instant::now();
    c.kmsg_ended();
    let w = walk(&[("child", 1_000, 8_192), ("", 90_000, UNLIMITED)]);
    assert!(c.push(tp_victim(42, 5_000_000_000), now).is_empty());
    let out = c.push(btf_victim(42, 5_000_001_000, w), now);
    assert_eq!(out.len(), 1, "every source still expected has reported");
    assert_eq!(c.not_killed, 0);
    let k = &out[0].kill;
    assert_eq!(k.sources, vec!["tracepoint", "tp_btf"]);
    assert!(
        k.missing
            .iter()
            .any(|m| m.starts_with("kill confirmation: ")),
        "{:?}",
        k.missing
    );
}

#[test]
fn the_memory_read_at_the_kill_follows_what_is_known_of_the_limit() {
    use crate::capture::memstat::MemoryTargets;
    let active = expect(true, true, true, false);
    let now = Instant::now();
    // The walk alone: the pod is at its limit; the kill line may still say
    // the node ran out, so the node is read too.
    let mut c = Correlator::new(active, Duration::from_millis(500), 4096, "b".into());
    let pod = walk(&[
        ("ctr", 1_000, UNLIMITED),
        ("pod", 8_192, 8_192),
        ("", 90_000, UNLIMITED),
    ]);
    c.push(tp_victim(100, 1_000), now);
    c.push(btf_victim(100, 1_000, pod), now);
    assert_eq!(
        c.memory_targets(100),
        MemoryTargets {
            cgroups: Some(vec!["/pod".into()]),
            node: true
        }
    );
    // Nothing at its limit: the node.
    let free = walk(&[("ctr", 1_000, UNLIMITED), ("", 90_000, UNLIMITED)]);
    c.push(btf_victim(101, 2_000, free), now);
    assert_eq!(
        c.memory_targets(101),
        MemoryTargets {
            cgroups: Some(Vec::new()),
            node: true
        }
    );
    // Nothing known of the victim: everything.
    assert_eq!(c.memory_targets(4242), MemoryTargets::default());
    c.push(tp_victim(102, 3_000), now);
    assert_eq!(c.memory_targets(102), MemoryTargets::default());

    // The kernel's summary names the cgroup (a real one, from the host): that
    // cgroup only, whatever the walk says.
    let mut c = Correlator::new(active, Duration::from_millis(500), 4096, "b".into());
    let summary = kmsg_inputs(HOST)
        .into_iter()
        .find(|i| {
            matches!(
                i,
                Input::Kmsg(KmsgSighting {
                    line: OomLine::Summary { .. },
                    ..
                })
            )
        })
        .expect("a summary line");
    let Input::Kmsg(KmsgSighting { ts_usec, .. }) = &summary else {
        unreachable!("a kernel log input")
    };
    let ktime = ts_usec * 1000;
    let victim = walk(&[("kmsgsample", 100, 8_192), ("", 90_000, UNLIMITED)]);
    c.push(tp_victim(9240, ktime), now);
    c.push(btf_victim(9240, ktime, victim), now);
    c.push(summary, now);
    assert_eq!(
        c.memory_targets(9240),
        MemoryTargets {
            cgroups: Some(vec!["/kmsgsample".into()]),
            node: false
        }
    );
}

#[test]
fn a_node_level_decision_reads_the_node_only() {
    use crate::capture::memstat::MemoryTargets;
    let active = expect(true, true, false, true);
    let mut c = Correlator::new(active, Duration::from_millis(500), 4096, "b".into());
    let now = Instant::now();
    let chosen = walk(&[("grp", 12_800, 12_800), ("", 90_000, UNLIMITED)]);
    let mut d = Decision {
        header: header(KIND_DECISION, size_of::<Decision>(), 500, 7),
        flags: DECISION_HAS_CHOSEN,
        constraint: 0,
        order: 0,
        gfp_mask: 0xcc0,
        totalpages: 1 << 20,
        chosen_points: 7_000,
        chosen_pid: 100,
        chosen_tgid: 100,
        chosen_comm: [0; 16],
        chosen_adj: 0,
        _pad: 0,
        chosen_start_time_ns: 0,
        chosen_lineage: oomtrace_common::Lineage::zeroed(),
        domain: walk(&[]),
        chosen_memcg: chosen,
        trigger_memcg: chosen,
    };
    d.chosen_comm[..2].copy_from_slice(b"dd");
    c.push(decode(&d), now);
    c.push(tp_input(100, 600, 7, dd_fields()), now);
    // The walk says the cgroup is at its limit; the decision (no memcg) says
    // the node ran out, and wins.
    assert_eq!(
        c.memory_targets(100),
        MemoryTargets {
            cgroups: Some(Vec::new()),
            node: true
        }
    );
}
