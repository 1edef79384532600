use std::{collections::HashMap, time::Instant};

use super::*;
use crate::{
    capture::kmsg::parse_record,
    capture::{Input, KmsgSighting},
    correlate::{Correlated, Correlator, Expect},
    report::Killer,
};

/// Real /proc/vmstat of this project's host (oom_kill 2824).
const VMSTAT: &str = include_str!("../../tests/data/node/host-6.18.vmstat.txt");
/// Real /dev/kmsg records of 41 memcg kills in a storm on this project's host.
const STORM: &str = include_str!("../../tests/data/kmsg/host-6.18-memcg-storm.kmsg.txt");
const BOOT: &str = "f3d5650f-fc1e-4f44-9919-70cfe6135970";
const SETTLE: Duration = Duration::from_secs(3);

fn records() -> Vec<KmsgRecord> {
    STORM
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| parse_record(l.as_bytes()))
        .collect()
}

/// `(seq, pid)` of every kill line of the storm sample.
fn kill_lines() -> Vec<(u64, u32)> {
    records()
        .iter()
        .filter_map(|r| match parse_oom_line(&r.message) {
            Some(OomLine::Killed { pid: Some(p), .. }) => Some((r.seq, p)),
            _ => None,
        })
        .collect()
}

fn now(oom_kill: Option<u64>, kmsg: bool) -> Now {
    Now {
        boot_id: BOOT.into(),
        oom_kill,
        kmsg,
        unix_ms: 1_764_329_000_000,
        boot_unix_ms: 1_764_318_000_000,
    }
}

fn kernel_kill(pid: u32) -> Kill {
    let mut k = Kill::default();
    k.victim.pid = Some(pid);
    k
}

#[test]
fn the_kill_counter_is_read_from_vmstat() {
    assert_eq!(parse_oom_kill(VMSTAT), Some(2824));
    // A kernel before 4.13 has no such line: no count, no check.
    let old: String = VMSTAT
        .lines()
        .filter(|l| !l.starts_with("oom_kill "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(parse_oom_kill(&old), None);
    assert!(read_oom_kill(Path::new("/proc")).unwrap().is_some());
}

#[test]
fn a_first_start_marks_where_it_starts_and_replays_nothing() {
    let (mut l, start, replay) = Ledger::resume(None, now(Some(2605), true), SETTLE);
    assert_eq!(start, Start::First);
    assert!(replay.is_none());
    let last = records().last().unwrap().seq;
    l.backlog_read(false, Some(last), [], Instant::now());
    let s = l.take_state().unwrap();
    assert_eq!(s.boot_id, BOOT);
    assert_eq!(s.since_unix_ms, 1_764_329_000_000);
    assert_eq!(s.kmsg.unwrap().read_up_to, Some(last));
    assert_eq!(
        s.oom_kill,
        KillCount {
            base: 2605,
            reported: 0,
            unreported: 0,
            repeated: 0
        }
    );
    assert!(l.take_state().is_none(), "unchanged: nothing to save");
}

#[test]
fn the_mark_moves_over_kill_lines_once_every_earlier_one_was_reported() {
    let (mut l, _, _) = Ledger::resume(None, now(Some(0), true), SETTLE);
    l.backlog_read(false, Some(5), [], Instant::now());
    let t = Instant::now();
    for seq in [10, 12, 14] {
        l.opened(seq, t);
    }
    l.written(&kernel_kill(2), Some(12), Some(1), 1);
    let k = l.state().kmsg.unwrap();
    assert_eq!(
        (k.read_up_to, k.reported_above),
        (Some(5), vec![12]),
        "10 is still open"
    );
    l.written(&kernel_kill(1), Some(10), Some(1), 1);
    let k = l.state().kmsg.unwrap();
    assert_eq!((k.read_up_to, k.reported_above), (Some(12), vec![]));
    // A late kill line (its kill was reported from eBPF) is dealt with too.
    l.handled(14);
    assert_eq!(l.state().kmsg.unwrap().read_up_to, Some(14));
    // Seen again (a replay of a line below the mark): ignored.
    l.opened(12, t);
    l.written(&kernel_kill(3), None, Some(100), 200);
    let k = l.state().kmsg.unwrap();
    assert_eq!((k.read_up_to, k.unlined), (Some(14), vec![(3, 100)]));
    assert_eq!(l.counts().reported, 3);
    // A kill by user space is not the kernel's: not counted against oom_kill.
    let mut by_oomd = kernel_kill(4);
    by_oomd.killer = Killer {
        kind: KillerKind::UserspaceOom,
        ..Killer::default()
    };
    l.written(&by_oomd, None, None, 300);
    assert_eq!(l.counts().reported, 3);
}

#[test]
fn a_kill_line_that_never_leads_to_a_report_is_given_up() {
    let (mut l, _, _) = Ledger::resume(None, now(Some(0), true), SETTLE);
    let t0 = Instant::now();
    l.backlog_read(false, Some(5), [], t0);
    l.opened(8, t0);
    l.opened(9, t0 + Duration::from_secs(300));
    l.written(&kernel_kill(1), Some(20), None, 0);
    l.expire(t0 + Duration::from_secs(601));
    let k = l.state().kmsg.unwrap();
    assert_eq!(
        (k.read_up_to, k.reported_above),
        (Some(8), vec![20]),
        "9 is not old yet"
    );
    l.expire(t0 + Duration::from_secs(901));
    assert_eq!(l.state().kmsg.unwrap().read_up_to, Some(20));
}

#[test]
fn a_restart_in_the_same_boot_replays_what_lies_above_the_mark_and_was_not_reported() {
    let kills = kill_lines();
    assert_eq!(kills.len(), 41, "the sample's kill lines");
    // Reported before: up to the 2nd kill line, and the 4th.
    let prev = State {
        version: VERSION,
        boot_id: BOOT.into(),
        since_unix_ms: 1,
        kmsg: Some(KmsgMark {
            read_up_to: Some(kills[1].0),
            reported_above: vec![kills[3].0],
            unlined: vec![],
        }),
        oom_kill: KillCount {
            base: 2605,
            reported: 3,
            unreported: 0,
            repeated: 0,
        },
    };
    let (l, start, replay) = Ledger::resume(Some(prev), now(Some(2646), true), SETTLE);
    assert_eq!(start, Start::SameBoot);
    assert_eq!(l.counts().base, 2605, "counting spans restarts");
    assert_eq!(l.since_unix_ms(), 1);
    let replay = replay.expect("a replay");
    let kept: Vec<u64> = records()
        .iter()
        .filter(|r| replay.keep(r))
        .map(|r| r.seq)
        .collect();
    let kill_seqs: Vec<u64> = kills.iter().map(|k| k.0).collect();
    let replayed_kills: Vec<u64> = kept
        .iter()
        .copied()
        .filter(|s| kill_seqs.contains(s))
        .collect();
    let mut expected: Vec<u64> = kill_seqs[2..].to_vec();
    expected.retain(|&s| s != kills[3].0);
    assert_eq!(replayed_kills, expected, "the 3rd and from the 5th on");
    assert!(kept.iter().all(|&s| s > kills[1].0));
    // The 3rd kill's summary lies below the 4th kill line: left out.
    assert!(!kept.contains(&(kills[2].0 - 1)));
    // The 5th kill's summary and header are replayed with it.
    assert!(kept.contains(&(kills[4].0 - 1)));
}

#[test]
fn a_kill_reported_without_its_line_is_not_replayed_when_its_line_comes_back() {
    let kills = kill_lines();
    let (seq, pid) = kills[5];
    let ts_ns = records().iter().find(|r| r.seq == seq).unwrap().ts_usec * 1000;
    let mark = |at: u64| KmsgMark {
        read_up_to: Some(kills[4].0),
        reported_above: vec![],
        unlined: vec![(pid, at)],
    };
    let state = |at| State {
        version: VERSION,
        boot_id: BOOT.into(),
        since_unix_ms: 1,
        kmsg: Some(mark(at)),
        oom_kill: KillCount::default(),
    };
    // BPF time a little before printk's.
    let (_, _, replay) = Ledger::resume(Some(state(ts_ns - 2_000_000)), now(Some(0), true), SETTLE);
    let r = records().into_iter().find(|r| r.seq == seq).unwrap();
    assert!(!replay.unwrap().keep(&r), "the same kill");
    // The same pid two minutes away is another kill (a reused pid).
    let (_, _, replay) = Ledger::resume(
        Some(state(ts_ns + 120_000_000_000)),
        now(Some(0), true),
        SETTLE,
    );
    assert!(replay.unwrap().keep(&r));
}

#[test]
fn after_a_reboot_the_whole_log_is_replayed_and_the_counter_counts_from_zero() {
    let prev = State {
        version: VERSION,
        boot_id: "0a1b2c3d-0000-4000-8000-000000000000".into(),
        since_unix_ms: 1,
        kmsg: Some(KmsgMark {
            read_up_to: Some(999_999),
            reported_above: vec![],
            unlined: vec![],
        }),
        oom_kill: KillCount {
            base: 50,
            reported: 7,
            unreported: 1,
            repeated: 0,
        },
    };
    let (l, start, replay) = Ledger::resume(Some(prev), now(Some(21), true), SETTLE);
    assert_eq!(start, Start::NewBoot);
    assert_eq!(l.counts(), KillCount::default());
    assert_eq!(l.since_unix_ms(), 1_764_318_000_000, "since the boot");
    let replay = replay.unwrap();
    let kept = records().iter().filter(|r| replay.keep(r)).count();
    let oom_lines = records()
        .iter()
        .filter(|r| parse_oom_line(&r.message).is_some())
        .count();
    assert_eq!(kept, oom_lines, "every OOM line of this boot's log");
    assert_eq!(l.state().boot_id, BOOT);
}

#[test]
fn a_restart_after_a_run_without_the_kernel_log_replays_nothing() {
    let prev = State {
        version: VERSION,
        boot_id: BOOT.into(),
        since_unix_ms: 1,
        kmsg: None,
        oom_kill: KillCount {
            base: 10,
            reported: 2,
            unreported: 0,
            repeated: 0,
        },
    };
    let (mut l, start, replay) = Ledger::resume(Some(prev), now(Some(30), true), SETTLE);
    assert_eq!(start, Start::SameBoot);
    assert!(replay.is_none(), "which kills it reported is unknown");
    l.backlog_read(false, Some(77), [], Instant::now());
    assert_eq!(l.state().kmsg.unwrap().read_up_to, Some(77));
    assert_eq!(l.counts().base, 10);
}

#[test]
fn kills_the_kernel_counted_and_nobody_reported_are_counted_once_after_the_settle_window() {
    let (mut l, _, _) = Ledger::resume(None, now(Some(100), false), SETTLE);
    let t0 = Instant::now();
    l.sample(t0, 100);
    assert_eq!(l.check(t0, true), None, "no sample is settled yet");
    l.sample(t0 + Duration::from_secs(1), 104);
    l.written(&kernel_kill(1), None, None, 0);
    l.written(&kernel_kill(2), None, None, 0);
    // The counter moved before the reports; 3 s later only 100 is settled.
    assert_eq!(l.check(t0 + Duration::from_secs(3), true), None);
    l.sample(t0 + Duration::from_secs(4), 104);
    // Kills still in the pipeline are not a loss.
    assert_eq!(l.check(t0 + Duration::from_secs(4), false), None);
    let loss = l.check(t0 + Duration::from_secs(4), true).unwrap();
    assert_eq!(
        loss,
        Loss {
            count: 2,
            kernel_count: 4,
            reported: 2,
            repeated: 0,
            unreported_total: 2
        }
    );
    assert_eq!(
        l.check(t0 + Duration::from_secs(9), true),
        None,
        "counted once"
    );
    assert_eq!(
        l.counts(),
        KillCount {
            base: 100,
            reported: 2,
            unreported: 2,
            repeated: 0
        }
    );
    // Without the counter (before 4.13) there is no check.
    let (mut old, _, _) = Ledger::resume(None, now(None, false), SETTLE);
    assert!(!old.counting());
    old.sample(t0, 5);
    assert_eq!(old.check(t0 + Duration::from_secs(60), true), None);
}

/// The agent's output loop in miniature: the real correlator on the kernel
/// log alone, the ledger following each kill line to its report.
struct Run {
    correlator: Correlator,
    ledger: Ledger,
    reported: Vec<(u32, bool)>,
}

impl Run {
    fn push(&mut self, r: &KmsgRecord, replayed: bool, t: Instant) {
        let Some(line) = parse_oom_line(&r.message) else {
            return;
        };
        if matches!(line, OomLine::Killed { .. }) {
            self.ledger.opened(r.seq, t);
        }
        let input = Input::Kmsg(KmsgSighting {
            seq: r.seq,
            ts_usec: r.ts_usec,
            line,
            received: t,
            replayed,
        });
        for c in self.correlator.push(input, t) {
            self.write(c);
        }
        for c in self.correlator.tick(t) {
            self.write(c);
        }
    }

    fn write(&mut self, c: Correlated) {
        self.ledger.written(&c.kill, c.kill_seq, c.at_ns, 0);
        self.reported
            .push((c.kill.victim.pid.unwrap(), c.kill.replayed));
    }
}

fn run(ledger: Ledger) -> Run {
    // The tracepoint never comes here: a live kill waits for it, a
    // replayed one does not.
    let expect = Expect {
        kmsg: true,
        tracepoint: true,
        ..Expect::default()
    };
    Run {
        correlator: Correlator::new(expect, Duration::from_secs(1), 4096, "b".into()),
        ledger,
        reported: Vec::new(),
    }
}

/// Crashes after each number of records of the storm, restarts with the
/// saved state, and checks that the two runs together report every kill
/// exactly once, the second run's as replayed. Records arrive 400 ms apart
/// and a live kill waits 1 s for a source that never comes, so a crash
/// leaves kills read but not reported, and reported out of log order.
#[test]
fn across_a_crash_at_any_record_every_kill_is_reported_exactly_once() {
    let recs = records();
    let all: Vec<u32> = kill_lines().iter().map(|k| k.1).collect();
    for crash_at in 0..=recs.len() {
        let t = Instant::now();
        // First run: started before the storm, with an empty state dir.
        let (ledger, _, _) = Ledger::resume(None, now(Some(0), true), SETTLE);
        let mut first = run(ledger);
        first.ledger.backlog_read(false, Some(600), [], t);
        for (i, r) in recs[..crash_at].iter().enumerate() {
            first.push(r, false, t + Duration::from_millis(400 * i as u64));
        }
        // SIGKILL: what is pending dies with it; the state is what was saved.
        let saved = first.ledger.state();
        let (mut ledger, start, replay) = Ledger::resume(Some(saved), now(Some(41), true), SETTLE);
        assert_eq!(start, Start::SameBoot);
        let replay = replay.unwrap();
        let backlog: Vec<&KmsgRecord> = recs.iter().filter(|r| replay.keep(r)).collect();
        let kill_seqs = kill_lines().into_iter().map(|k| k.0);
        let replayed_kills: Vec<u64> = kill_seqs
            .filter(|s| backlog.iter().any(|r| r.seq == *s))
            .collect();
        ledger.backlog_read(true, recs.last().map(|r| r.seq), replayed_kills, t);
        let mut second = run(ledger);
        let t2 = t + Duration::from_secs(3600);
        for r in backlog {
            second.push(r, true, t2);
        }
        assert_eq!(
            second.correlator.pending_count(),
            0,
            "a replayed kill waits for nothing"
        );
        for c in second.correlator.flush() {
            second.write(c);
        }
        let mut count: HashMap<u32, usize> = HashMap::new();
        for (pid, _) in first.reported.iter().chain(&second.reported) {
            *count.entry(*pid).or_default() += 1;
        }
        for pid in &all {
            assert_eq!(
                count.get(pid),
                Some(&1),
                "crash after {crash_at} records: pid {pid} reported {:?} times",
                count.get(pid)
            );
        }
        assert_eq!(count.len(), all.len(), "crash after {crash_at}: {count:?}");
        assert!(second.reported.iter().all(|(_, replayed)| *replayed));
        // Every kill of the storm is accounted for after the second run.
        assert_eq!(
            second.ledger.counts().reported,
            all.len() as u64,
            "crash after {crash_at}"
        );
        assert_eq!(
            second.ledger.state().kmsg.unwrap().read_up_to,
            kill_lines().last().map(|k| k.0)
        );
    }
}

/// A memory.oom.group kill kills its chosen task twice and the kernel
/// counts both in `oom_kill`: 11 kill lines, 10 reports, 1 repeated line,
/// and no loss found (kubernetes 2025, real dmesg of a group kill).
#[test]
fn a_task_killed_twice_in_a_group_kill_is_not_counted_as_unreported() {
    let text = include_str!("../../tests/data/kmsg/k8s-2025-group-kill-already-exiting.txt");
    let lines: Vec<OomLine> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("] ").map(|(_, msg)| msg))
        .filter_map(parse_oom_line)
        .collect();
    let kill_lines = lines
        .iter()
        .filter(|l| matches!(l, OomLine::Killed { .. }))
        .count() as u64;
    assert_eq!(kill_lines, 11);
    let (ledger, _, _) = Ledger::resume(None, now(Some(500), true), SETTLE);
    let mut r = run(ledger);
    r.correlator = Correlator::new(
        Expect {
            kmsg: true,
            ..Expect::default()
        },
        Duration::from_millis(500),
        4096,
        "b".into(),
    );
    let t0 = Instant::now();
    r.ledger.sample(t0, 500);
    r.ledger
        .sample(t0 + Duration::from_millis(10), 500 + kill_lines);
    for (i, line) in lines.into_iter().enumerate() {
        let before = r.correlator.repeated;
        let input = Input::Kmsg(KmsgSighting {
            seq: 700 + i as u64,
            ts_usec: 1_000_000 + 100 * i as u64,
            line,
            received: t0,
            replayed: false,
        });
        for c in r.correlator.push(input, t0) {
            r.write(c);
        }
        r.ledger.repeated(r.correlator.repeated - before);
    }
    for c in r.correlator.tick(t0 + Duration::from_secs(2)) {
        r.write(c);
    }
    assert_eq!(r.reported.len(), 10);
    let counts = r.ledger.counts();
    assert_eq!((counts.reported, counts.repeated), (10, 1));
    assert_eq!(r.ledger.check(t0 + Duration::from_secs(5), true), None);
    // Without the repeated line accounted for, the check would find one.
    r.ledger.count.repeated = 0;
    assert_eq!(
        r.ledger
            .check(t0 + Duration::from_secs(6), true)
            .map(|l| l.count),
        Some(1)
    );
}
