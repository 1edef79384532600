//! Which kill a sighting belongs to: by the kill, never by a time window
//! from the first sighting.
//!
//! - A record read from the victim task (`tp_btf`, a group scan, the
//!   decision's chosen task) names the task by pid **and start time**: pids are
//!   reused, (pid, start time) is not, for the life of the boot.
//! - The classic tracepoint and the kill line name only a pid. A kill has one
//!   tracepoint record, so a second one for the same pid is another kill (the
//!   pid was reused). The tracepoint fires in the same `mark_oom_victim()` as
//!   `tp_btf`: their BPF times are microseconds apart. A kill line can come
//!   twice for one kill: a `memory.oom.group` kill takes the chosen task again
//!   (no second mark: `TIF_MEMDIE` is set), printing and counting it again
//!   within the same OOM; later than that, it is another kill.
//! - The kill line carries printk's clock, not BPF's: `bpf_ktime_get_ns()` is
//!   CLOCK_MONOTONIC, printk's timestamp is `local_clock()`, and the two drift
//!   apart (NTP slews one, not the other). They are never compared directly:
//!   [`ClockSync`] learns their offset from kills both sources saw and
//!   compares through it, with a bound.

/// How far apart two records of one `mark_oom_victim()` call can be in BPF time.
pub const SAME_EVENT_NS: u64 = 1_000_000_000;
/// How far a kill line may be from where the learned clock offset puts it.
pub const CALIBRATED_NS: i128 = 1_000_000_000;
/// Before any offset is learned: printk's and BPF's clocks start together at
/// boot and drift by at most a few hundred ppm, so this bound holds for weeks.
pub const UNCALIBRATED_NS: i128 = 30_000_000_000;

/// What a sighting says about which kill it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Read from the victim task.
    Task {
        pid: u32,
        start_time_ns: Option<u64>,
        ktime_ns: u64,
    },
    /// The classic `mark_victim` tracepoint.
    Tracepoint { pid: u32, ktime_ns: u64 },
    /// The kernel log's kill line (printk time, in ns).
    KillLine { pid: u32, ts_ns: u64 },
}

impl Claim {
    pub fn pid(&self) -> u32 {
        match *self {
            Self::Task { pid, .. } | Self::Tracepoint { pid, .. } | Self::KillLine { pid, .. } => {
                pid
            }
        }
    }
}

/// What is known of a kill (pending or reported) for matching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub pid: u32,
    pub start_time_ns: Option<u64>,
    /// BPF time of its first eBPF record.
    pub ktime_ns: Option<u64>,
    /// printk time of its kill line, in ns.
    pub kmsg_ts_ns: Option<u64>,
    pub has_task: bool,
    pub has_tracepoint: bool,
    pub has_kill_line: bool,
}

/// The offset between printk's clock and BPF's, learned from kills both saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSync {
    /// printk time minus BPF time of the last kill both sources saw.
    offset_ns: Option<i128>,
}

impl ClockSync {
    /// Learns from one kill both clocks saw: its kill line comes right after
    /// its `mark_oom_victim()` (microseconds), so the difference is the offset.
    pub fn learn(&mut self, ktime_ns: u64, kmsg_ts_ns: u64) {
        self.offset_ns = Some(i128::from(kmsg_ts_ns) - i128::from(ktime_ns));
    }

    /// How far a kill line at `ts_ns` is from a BPF record at `ktime_ns`,
    /// once the offset is taken away; `None` when out of bounds.
    pub fn distance(&self, ktime_ns: u64, ts_ns: u64) -> Option<i128> {
        let raw = i128::from(ts_ns) - i128::from(ktime_ns);
        let (d, bound) = match self.offset_ns {
            Some(o) => (raw - o, CALIBRATED_NS),
            None => (raw, UNCALIBRATED_NS),
        };
        (d.abs() < bound).then_some(d.abs())
    }
}

/// How close `claim` is to the kill `f` (smaller is closer); `None` when it
/// cannot be that kill.
pub fn distance(f: &Facts, claim: &Claim, clock: &ClockSync) -> Option<i128> {
    if f.pid != claim.pid() {
        return None;
    }
    match *claim {
        Claim::Task {
            start_time_ns,
            ktime_ns,
            ..
        } => {
            if let (Some(a), Some(b)) = (start_time_ns, f.start_time_ns) {
                return (a == b).then_some(0);
            }
            if f.has_task {
                return None;
            }
            by_time(f, ktime_ns, clock)
        }
        Claim::Tracepoint { ktime_ns, .. } => {
            if f.has_tracepoint {
                return None;
            }
            by_time(f, ktime_ns, clock)
        }
        Claim::KillLine { ts_ns, .. } => {
            if f.has_kill_line {
                // The same task killed again: a memory.oom.group kill takes
                // the chosen task a second time (its kill line is printed
                // twice, and counted twice), within the same OOM.
                return f.kmsg_ts_ns.and_then(|t| {
                    let d = t.abs_diff(ts_ns);
                    (d < SAME_EVENT_NS).then_some(i128::from(d))
                });
            }
            f.ktime_ns.and_then(|k| clock.distance(k, ts_ns))
        }
    }
}

/// A BPF-timed claim against a kill: BPF time if the kill has one, else its
/// kill line's time through the clock offset.
fn by_time(f: &Facts, ktime_ns: u64, clock: &ClockSync) -> Option<i128> {
    match (f.ktime_ns, f.kmsg_ts_ns) {
        (Some(k), _) => {
            let d = k.abs_diff(ktime_ns);
            (d < SAME_EVENT_NS).then_some(i128::from(d))
        }
        (None, Some(ts)) => clock.distance(ktime_ns, ts),
        (None, None) => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(pid: u32, start: Option<u64>, ktime: u64) -> Claim {
        Claim::Task {
            pid,
            start_time_ns: start,
            ktime_ns: ktime,
        }
    }

    #[test]
    fn pid_and_start_time_name_one_task() {
        let clock = ClockSync::default();
        let kill = Facts {
            pid: 42,
            start_time_ns: Some(1_000),
            ktime_ns: Some(5_000_000_000),
            has_task: true,
            ..Facts::default()
        };
        assert_eq!(distance(&kill, &task(42, Some(1_000), 9), &clock), Some(0));
        // The same pid, another task (reused pid), even at the same moment.
        assert_eq!(
            distance(&kill, &task(42, Some(2_000), 5_000_000_000), &clock),
            None
        );
        assert_eq!(distance(&kill, &task(43, Some(1_000), 9), &clock), None);
    }

    #[test]
    fn one_tracepoint_and_one_kill_line_per_kill() {
        let clock = ClockSync::default();
        let kill = Facts {
            pid: 42,
            ktime_ns: Some(5_000_000_000),
            has_tracepoint: true,
            has_kill_line: true,
            kmsg_ts_ns: Some(5_001_000_000),
            ..Facts::default()
        };
        let tp = Claim::Tracepoint {
            pid: 42,
            ktime_ns: 5_000_000_100,
        };
        assert_eq!(distance(&kill, &tp, &clock), None, "a second tracepoint");
        // The chosen task of a memory.oom.group kill, killed again in the
        // same OOM: the same kill, printed twice.
        let again = Claim::KillLine {
            pid: 42,
            ts_ns: 5_001_000_400,
        };
        assert!(distance(&kill, &again, &clock).is_some(), "printed twice");
        let later = Claim::KillLine {
            pid: 42,
            ts_ns: 9_001_000_000,
        };
        assert_eq!(distance(&kill, &later, &clock), None, "another kill");
    }

    #[test]
    fn the_kill_line_matches_through_the_learned_offset() {
        // The host's clocks: the kill line 1.35 ms after mark_victim.
        let bpf = 3_530_213_033_097;
        let mut clock = ClockSync::default();
        let kill = Facts {
            pid: 17469,
            ktime_ns: Some(bpf),
            has_task: true,
            ..Facts::default()
        };
        let line = |ts| Claim::KillLine {
            pid: 17469,
            ts_ns: ts,
        };
        assert!(distance(&kill, &line(3_530_214_379_000), &clock).is_some());
        // After weeks the clocks are 40 s apart, past the uncalibrated bound:
        // still the same kill once the offset is learned from an earlier kill,
        let drifted = bpf + 40_000_000_000;
        assert_eq!(distance(&kill, &line(drifted + 1_350_000), &clock), None);
        clock.learn(bpf / 2, bpf / 2 + 40_000_000_000);
        assert!(distance(&kill, &line(drifted + 1_350_000), &clock).is_some());
        // but a kill line 3 s away from where the offset puts it is another kill.
        assert_eq!(
            distance(&kill, &line(drifted + 3_000_000_000), &clock),
            None
        );
    }

    #[test]
    fn a_tracepoint_record_meets_a_kill_known_only_from_its_kill_line() {
        let clock = ClockSync::default();
        let kill = Facts {
            pid: 7,
            kmsg_ts_ns: Some(10_000_000_000),
            has_kill_line: true,
            ..Facts::default()
        };
        let tp = |k| Claim::Tracepoint {
            pid: 7,
            ktime_ns: k,
        };
        assert!(distance(&kill, &tp(9_999_000_000), &clock).is_some());
        assert_eq!(distance(&kill, &tp(60_000_000_000), &clock), None);
    }
}
