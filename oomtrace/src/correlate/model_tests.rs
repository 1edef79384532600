//! A model test of the correlator: OOM decisions killing one or more tasks
//! (pids reused across decisions), their records from every source delivered
//! in random interleavings with random delays, some dropped, plus decisions
//! and summaries that kill nobody. Whatever the order: exactly one report per
//! kill any source saw, none for a task only chosen or summarised, and
//! incident ids equal exactly when the decisions are.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use oomtrace_common::{
    ABI_VERSION, BtfVictim, CgroupLevel, CgroupWalk, DECISION_HAS_CHOSEN, DECISION_HAS_MEMCG,
    Decision, Header, KIND_BTF_VICTIM, KIND_DECISION, MAX_DEPTH, NAME_LEN, VICTIM_HAS_ADJ,
    as_bytes,
};
use proptest::prelude::*;

use super::*;
use crate::{
    capture::kmsg::parse_oom_line,
    capture::tracefs::MarkVictimFields,
    capture::{KmsgSighting, RecordMeta, TpSighting, Trigger, ring::Decoder},
};

/// Pids the kills take (fewer than the kills: pids are reused).
const POOL: [u32; 4] = [4101, 4102, 4103, 4104];
/// BPF time between decisions: far apart, as a reused pid is in reality.
const SPACING_NS: u64 = 40_000_000_000;
/// printk stamps the kill line this long after `mark_oom_victim()`.
const PRINTK_LAG_NS: u64 = 1_350_000;

#[derive(Clone, Debug)]
struct KillSpec {
    tp: bool,
    btf: bool,
    line: bool,
}

#[derive(Clone, Debug)]
struct DecisionSpec {
    members: Vec<KillSpec>,
    decision_seen: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    decisions: Vec<DecisionSpec>,
    /// A decision whose chosen task is never killed (already exiting).
    decoy_chosen: bool,
    /// A summary followed by "... is already exiting. Skip killing the task".
    decoy_summary: bool,
    /// Which stream the next input comes from (true: the ring buffer).
    order: Vec<bool>,
    /// Agent-clock delay before each input, in ms.
    delays: Vec<u16>,
}

fn kill_spec() -> impl Strategy<Value = KillSpec> {
    (any::<bool>(), any::<bool>(), prop::bool::weighted(0.8)).prop_map(|(tp, btf, line)| KillSpec {
        tp,
        btf,
        line,
    })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(
            (
                prop::collection::vec(kill_spec(), 1..=3),
                prop::bool::weighted(0.9),
            )
                .prop_map(|(members, decision_seen)| DecisionSpec {
                    members,
                    decision_seen,
                }),
            1..6,
        ),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(any::<bool>(), 64),
        prop::collection::vec(0u16..400, 64),
    )
        .prop_map(
            |(decisions, decoy_chosen, decoy_summary, order, delays)| Scenario {
                decisions,
                decoy_chosen,
                decoy_summary,
                order,
                delays,
            },
        )
}

/// One kill of the model.
#[derive(Clone, Debug)]
struct Kill {
    decision: usize,
    pid: u32,
    ktime_ns: u64,
    seen: bool,
}

enum Item {
    Input(Box<Input>),
    /// The kernel-log reader lost a record (the kill line was dropped).
    KmsgLoss,
}

fn level(name: &str, usage: u64, max: u64) -> CgroupLevel {
    let mut n = [0u8; NAME_LEN];
    n[..name.len()].copy_from_slice(name.as_bytes());
    CgroupLevel {
        id: 1,
        usage_pages: usage,
        max_pages: max,
        name: n,
    }
}

fn walk(levels: &[CgroupLevel]) -> CgroupWalk {
    let mut w = CgroupWalk {
        depth: levels.len() as u32,
        flags: 0,
        levels: [level("", 0, 0); MAX_DEPTH],
    };
    w.levels[..levels.len()].copy_from_slice(levels);
    w
}

fn header(kind: u16, len: usize, ktime_ns: u64, tid: u32) -> Header {
    let mut h = Header::zeroed();
    h.version = ABI_VERSION;
    h.kind = kind;
    h.len = len as u32;
    h.ktime_ns = ktime_ns;
    h.trigger_tid = tid;
    h.trigger_tgid = tid;
    h.trigger_comm[..4].copy_from_slice(b"hog\0");
    h
}

fn decode<T: Copy>(record: &T) -> Input {
    Decoder {
        layout: None,
        page_size: 4096,
        signal_hook: false,
    }
    .decode(as_bytes(record))
    .expect("decodable")
}

const UNLIMITED: u64 = i64::MAX as u64 / 4096;

fn decision_record(t: u64, trigger: u32, chosen: u32) -> Input {
    let grp = walk(&[level("grp", 8_192, 8_192), level("", 90_000, UNLIMITED)]);
    let mut d = Decision {
        header: header(KIND_DECISION, std::mem::size_of::<Decision>(), t, trigger),
        flags: DECISION_HAS_MEMCG | DECISION_HAS_CHOSEN,
        constraint: 3,
        order: 0,
        gfp_mask: 0xcc0,
        totalpages: 8_192,
        chosen_points: 5_000,
        chosen_pid: chosen,
        chosen_tgid: chosen,
        chosen_comm: [0; 16],
        chosen_adj: 0,
        _pad: 0,
        chosen_start_time_ns: u64::from(chosen) * 7,
        chosen_lineage: oomtrace_common::Lineage::zeroed(),
        domain: grp,
        chosen_memcg: grp,
        trigger_memcg: grp,
    };
    d.chosen_comm[..3].copy_from_slice(b"app");
    decode(&d)
}

fn btf_record(pid: u32, start: u64, t: u64, trigger: u32) -> Input {
    let w = walk(&[
        level("app", 4_000, UNLIMITED),
        level("grp", 8_192, 8_192),
        level("", 90_000, UNLIMITED),
    ]);
    decode(&BtfVictim {
        header: header(
            KIND_BTF_VICTIM,
            std::mem::size_of::<BtfVictim>(),
            t,
            trigger,
        ),
        pid,
        tgid: pid,
        comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
        oom_score_adj: 0,
        uid: 0,
        flags: VICTIM_HAS_ADJ,
        _pad: 0,
        start_time_ns: start,
        lineage: oomtrace_common::Lineage::zeroed(),
        memcg: w,
    })
}

fn tp_record(pid: u32, t: u64, trigger: u32) -> Input {
    Input::Tracepoint(TpSighting {
        meta: RecordMeta {
            ktime_ns: t,
            trigger: Trigger {
                tid: trigger,
                tgid: trigger,
                comm: "hog".into(),
            },
        },
        fields: MarkVictimFields {
            pid: Some(pid),
            comm: Some("app".into()),
            ..MarkVictimFields::default()
        },
        oom_sigkill: None,
    })
}

fn kmsg(line: &str, ts_ns: u64) -> Input {
    Input::Kmsg(KmsgSighting {
        seq: 0,
        ts_usec: ts_ns / 1000,
        line: parse_oom_line(line).unwrap_or_else(|| panic!("an OOM line: {line}")),
        received: Instant::now(),
        replayed: false,
    })
}

fn summary(pid: u32) -> String {
    format!(
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/grp,task_memcg=/grp/app,task=app,pid={pid},uid=0"
    )
}

fn kill_line(pid: u32) -> String {
    format!(
        "Memory cgroup out of memory: Killed process {pid} (app) total-vm:9000kB, anon-rss:8000kB, file-rss:100kB, shmem-rss:0kB, UID:0 pgtables:40kB oom_score_adj:0"
    )
}

/// The two streams of the scenario (ring buffer, kernel log) and its kills.
fn streams(s: &Scenario) -> (Vec<Item>, Vec<Item>, Vec<Kill>) {
    let (mut ring, mut log, mut kills) = (Vec::new(), Vec::new(), Vec::new());
    for (i, d) in s.decisions.iter().enumerate() {
        let t0 = (i as u64 + 1) * SPACING_NS;
        let trigger = 9000 + i as u32;
        let pids: Vec<u32> = (0..d.members.len())
            .map(|j| POOL[(i + j) % POOL.len()])
            .collect();
        if d.decision_seen {
            ring.push(Item::Input(Box::new(decision_record(t0, trigger, pids[0]))));
        }
        log.push(Item::Input(Box::new(kmsg(&summary(pids[0]), t0 + 500))));
        for (j, (m, &pid)) in d.members.iter().zip(&pids).enumerate() {
            let t = t0 + 1_000 + j as u64 * 100_000;
            let start = (i as u64 + 1) * 1_000 + j as u64;
            if m.tp {
                ring.push(Item::Input(Box::new(tp_record(pid, t, trigger))));
            }
            if m.btf {
                ring.push(Item::Input(Box::new(btf_record(
                    pid,
                    start,
                    t + 10,
                    trigger,
                ))));
            }
            log.push(if m.line {
                Item::Input(Box::new(kmsg(&kill_line(pid), t + PRINTK_LAG_NS)))
            } else {
                Item::KmsgLoss
            });
            kills.push(Kill {
                decision: i,
                pid,
                ktime_ns: t,
                seen: m.tp || m.btf || m.line,
            });
        }
    }
    let t = (s.decisions.len() as u64 + 1) * SPACING_NS;
    if s.decoy_chosen {
        ring.push(Item::Input(Box::new(decision_record(t, 8000, 60_800))));
    }
    if s.decoy_summary {
        log.push(Item::Input(Box::new(kmsg(&summary(60_900), t + 5_000))));
    }
    (ring, log, kills)
}

fn run(s: &Scenario) -> (Vec<Correlated>, Vec<Kill>) {
    let (ring, log, kills) = streams(s);
    let expect = Expect {
        tracepoint: true,
        tp_btf: true,
        kmsg: true,
        decision: true,
        proc: false,
        memory: false,
    };
    let mut c = Correlator::new(expect, Duration::from_millis(1000), 4096, "m".into());
    let mut now = Instant::now();
    let mut out = Vec::new();
    let mut losses = 0;
    let (mut ring, mut log) = (ring.into_iter().peekable(), log.into_iter().peekable());
    let mut step = 0;
    while ring.peek().is_some() || log.peek().is_some() {
        let from_ring = match (ring.peek().is_some(), log.peek().is_some()) {
            (true, true) => s.order[step % s.order.len()],
            (r, _) => r,
        };
        let item = if from_ring { ring.next() } else { log.next() };
        now += Duration::from_millis(u64::from(s.delays[step % s.delays.len()]));
        step += 1;
        match item {
            Some(Item::Input(input)) => out.extend(c.push(*input, now)),
            Some(Item::KmsgLoss) => {
                losses += 1;
                c.note_kmsg_losses(losses, now);
            }
            None => {}
        }
        out.extend(c.tick(now));
    }
    out.extend(c.tick(now + Duration::from_secs(5)));
    out.extend(c.flush());
    (out, kills)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn one_report_per_kill_in_any_order(s in scenario()) {
        let (reports, kills) = run(&s);
        // Which kill each report is: its pid and its time.
        let mut found: HashMap<usize, &Correlated> = HashMap::new();
        for r in &reports {
            let pid = r.kill.victim.pid.expect("a pid");
            prop_assert!(pid < 60_000, "a report for a task only chosen or summarised: {pid}");
            let at = r.at_ns.expect("a time");
            let k = kills
                .iter()
                .position(|k| k.pid == pid && at.abs_diff(k.ktime_ns) < 5_000_000)
                .unwrap_or_else(|| panic!("a report of no kill: pid {pid} at {at}"));
            prop_assert!(found.insert(k, r).is_none(), "kill {k} reported twice: {:?}", kills[k]);
        }
        for (k, kill) in kills.iter().enumerate() {
            prop_assert_eq!(found.contains_key(&k), kill.seen, "kill {}: {:?}", k, kill);
        }
        // Incident ids equal exactly when the decisions are (for kills
        // reported with their decision: a BPF record named its trigger in time).
        let ids: Vec<(usize, &str)> = found
            .iter()
            .filter(|(_, r)| r.kill.sources.contains(&"oom_control"))
            .map(|(k, r)| (kills[*k].decision, r.kill.incident.as_str()))
            .collect();
        let shown: Vec<String> = reports
            .iter()
            .map(|r| format!("{:?} {} {:?} {:?}", r.kill.victim.pid, r.kill.incident, r.kill.sources, r.at_ns))
            .collect();
        for (d1, id1) in &ids {
            for (d2, id2) in &ids {
                prop_assert_eq!(d1 == d2, id1 == id2, "decisions {} and {}: {:#?}", d1, d2, shown);
            }
        }
        let distinct: HashSet<&str> = ids.iter().map(|(_, id)| *id).collect();
        let decisions: HashSet<usize> = ids.iter().map(|(d, _)| *d).collect();
        prop_assert_eq!(distinct.len(), decisions.len());
    }
}
