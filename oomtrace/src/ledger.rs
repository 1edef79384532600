//! The ledger: what was reported, so that a restart reports every kill it
//! missed exactly once (replay) and no kernel kill goes silently missing
//! (the kernel-counted loss check).
//!
//! **Replay.** The kernel log is the one source that outlives the agent:
//! its kill lines (`Killed process N ...`, never rate-limited, one per
//! victim) stay in the kernel's buffer until it wraps. The ledger follows
//! each kill line from the moment it is read ([`Ledger::opened`]) until
//! its kill is written ([`Ledger::written`]); `read_up_to` is the highest
//! kill line below which every kill line was dealt with, and the kill lines
//! dealt with above it are listed. `/dev/kmsg` cannot seek to a sequence
//! number, so a restart in the same boot reads the log from its oldest
//! record and reports again ([`Replay::keep`]) what lies above the mark
//! and was not reported; after a reboot (another boot id) everything in
//! the log is replayed; a first start replays nothing and marks where it
//! starts.
//!
//! **Loss check.** `/proc/vmstat` `oom_kill` (since 4.13) counts every
//! kill `__oom_kill_process()` makes (memory.oom.group members included;
//! not the tasks that only share the victim's mm, which get no kill line
//! either, and not kills by user space). It moves before the kill's signal
//! and kill line, so a check compares the reports with the counter as it
//! was a settle window ago ([`Ledger::check`]): what the kernel counted and
//! no report accounts for is counted as unreported, once. Every kernel kill
//! after the first start is then reported or counted, never silently
//! missing. The counter is node-wide (not namespaced), so it is the same
//! inside the agent's container.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    io,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    capture::kmsg::{KmsgRecord, OomLine, parse_oom_line},
    report::{Kill, KillerKind},
    state::{KillCount, KmsgMark, State, VERSION},
};

/// Kill lines dealt with above the mark, at most; beyond, the oldest
/// unreported one is given up (a crash then counts it as unreported
/// rather than replaying it).
const MAX_ABOVE: usize = 4096;
/// A kill line that has not led to a report in this long is given up.
const OPEN_MAX_AGE: Duration = Duration::from_secs(600);
/// Kills reported without their kill line, remembered at most.
const MAX_UNLINED: usize = 1024;
/// How long such a kill is remembered (its line may still come back in a replay).
const UNLINED_KEEP_NS: u64 = 600_000_000_000;
/// A kill line read back in a replay is the kill reported without it when
/// the pid is the same and the times are this close (the ring buffer's
/// clock and printk's drift apart slowly; a pid is reused rarely within it).
const UNLINED_TOLERANCE_NS: u64 = 60_000_000_000;

/// `oom_kill` of `/proc/vmstat` text; `None` when the kernel has none (before 4.13).
pub fn parse_oom_kill(vmstat: &str) -> Option<u64> {
    vmstat.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// The kernel's kill counter, from the node's procfs.
pub fn read_oom_kill(proc_root: &Path) -> io::Result<Option<u64>> {
    let text = crate::readcap::read_to_string_capped(&proc_root.join("vmstat"), 64 * 1024)?;
    Ok(parse_oom_kill(&text))
}

/// How this start relates to the saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No state: counting starts now, the kernel log's backlog is skipped.
    First,
    /// A restart in the same boot: what the log holds above the mark is replayed.
    SameBoot,
    /// Another boot: the whole log is replayed, the counter counts from 0.
    NewBoot,
}

/// Which records of the kernel log's backlog a restart reports again.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Records at or below this were dealt with (`None`: replay them all).
    after: Option<u64>,
    /// Kill lines above `after` reported already.
    reported: BTreeSet<u64>,
    /// Kills reported without their kill line.
    unlined: Vec<(u32, u64)>,
}

impl Replay {
    /// Whether the backlog record `r` is replayed: a kernel-log OOM line
    /// above the mark that was not reported. Context lines (header,
    /// summary) below the last kill line reported are left out: the kill
    /// they belong to was reported, or they would make a pending victim of
    /// their own.
    pub fn keep(&self, r: &KmsgRecord) -> bool {
        if self.after.is_some_and(|a| r.seq <= a) || self.reported.contains(&r.seq) {
            return false;
        }
        match parse_oom_line(&r.message) {
            None => false,
            Some(OomLine::Killed { pid, .. }) => !pid.is_some_and(|pid| {
                let at = r.ts_usec.saturating_mul(1000);
                self.unlined
                    .iter()
                    .any(|&(p, ns)| p == pid && ns.abs_diff(at) <= UNLINED_TOLERANCE_NS)
            }),
            Some(_) => self.reported.last().is_none_or(|&last| r.seq > last),
        }
    }
}

/// A loss found by [`Ledger::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// Kills newly counted as unreported.
    pub count: u64,
    /// What the kernel counted since counting started (as of the settled sample).
    pub kernel_count: u64,
    /// Kernel kills reported over the same span.
    pub reported: u64,
    /// Kill lines of tasks killed again over the same span (counted by the
    /// kernel, no report of their own).
    pub repeated: u64,
    /// Every kill counted as unreported over the same span.
    pub unreported_total: u64,
}

/// What was reported; see the module documentation.
#[derive(Debug)]
pub struct Ledger {
    boot_id: String,
    since_unix_ms: u64,
    count: KillCount,
    /// The counter can be read (4.13+).
    counting: bool,
    /// The kernel log is read on this run.
    kmsg: bool,
    read_up_to: Option<u64>,
    /// Kill lines read and not yet dealt with, with when they were read.
    open: BTreeMap<u64, Instant>,
    /// Kill lines dealt with above `read_up_to`.
    done: BTreeSet<u64>,
    unlined: VecDeque<(u32, u64)>,
    /// Samples of the counter, oldest first.
    samples: VecDeque<(Instant, u64)>,
    settle: Duration,
    /// Changed since the last [`Ledger::state`].
    dirty: bool,
}

/// What a start needs to know besides the saved state.
#[derive(Debug, Clone)]
pub struct Now {
    pub boot_id: String,
    /// `/proc/vmstat` `oom_kill` now (`None`: not available).
    pub oom_kill: Option<u64>,
    /// The kernel log is read on this run.
    pub kmsg: bool,
    pub unix_ms: u64,
    /// When this boot began, in milliseconds since the epoch.
    pub boot_unix_ms: u64,
}

impl Ledger {
    /// Continues from `prev` (the saved state, if any): how this start
    /// relates to it, and which backlog records to replay (`None`: read
    /// the backlog only to learn where it ends).
    pub fn resume(
        prev: Option<State>,
        now: Now,
        settle: Duration,
    ) -> (Self, Start, Option<Replay>) {
        let start = match &prev {
            None => Start::First,
            Some(s) if s.boot_id == now.boot_id => Start::SameBoot,
            Some(_) => Start::NewBoot,
        };
        let mut ledger = Self {
            boot_id: now.boot_id,
            since_unix_ms: now.unix_ms,
            count: KillCount {
                base: now.oom_kill.unwrap_or(0),
                ..KillCount::default()
            },
            counting: now.oom_kill.is_some(),
            kmsg: now.kmsg,
            read_up_to: None,
            open: BTreeMap::new(),
            done: BTreeSet::new(),
            unlined: VecDeque::new(),
            samples: VecDeque::new(),
            settle,
            dirty: true,
        };
        let replay = match (start, prev) {
            (Start::SameBoot, Some(prev)) => {
                ledger.since_unix_ms = prev.since_unix_ms;
                ledger.count = prev.oom_kill;
                match prev.kmsg {
                    Some(mark) if now.kmsg => {
                        ledger.read_up_to = mark.read_up_to;
                        ledger.done = mark.reported_above.iter().copied().collect();
                        ledger.unlined = mark.unlined.iter().copied().collect();
                        Some(Replay {
                            after: mark.read_up_to,
                            reported: ledger.done.clone(),
                            unlined: mark.unlined,
                        })
                    }
                    // The last run did not read the log: which of its
                    // kills it reported is unknown, so none is replayed;
                    // the loss check counts what this log holds.
                    _ => None,
                }
            }
            (Start::NewBoot, _) => {
                // The counter started at 0 with this boot and nothing of it
                // was reported yet.
                ledger.since_unix_ms = now.boot_unix_ms;
                ledger.count = KillCount::default();
                now.kmsg.then(Replay::default)
            }
            _ => None,
        };
        (ledger, start, replay)
    }

    /// The backlog was read up to `last_seq`; `replayed` are the kill
    /// lines of it that will be reported again. Without a replay, every
    /// kill line up to `last_seq` is in the past of this start.
    pub fn backlog_read(
        &mut self,
        replaying: bool,
        last_seq: Option<u64>,
        replayed: impl IntoIterator<Item = u64>,
        now: Instant,
    ) {
        if !replaying {
            self.read_up_to = self.read_up_to.max(last_seq);
            self.done.clear();
        }
        for seq in replayed {
            self.opened(seq, now);
        }
        self.dirty = true;
    }

    /// A kill line was read: it is open until its kill is written.
    pub fn opened(&mut self, seq: u64, now: Instant) {
        if self.read_up_to.is_some_and(|r| seq <= r) || self.done.contains(&seq) {
            return;
        }
        self.open.entry(seq).or_insert(now);
    }

    /// A kill line that leads to no report of its own (its kill was
    /// reported already): dealt with.
    pub fn handled(&mut self, seq: u64) {
        if self.read_up_to.is_some_and(|r| seq <= r) {
            return;
        }
        self.open.remove(&seq);
        self.done.insert(seq);
        self.advance();
        self.dirty = true;
    }

    /// A kill was written (to every sink): counted when the kernel's OOM
    /// killer made it, its kill line dealt with.
    pub fn written(&mut self, kill: &Kill, kill_seq: Option<u64>, at_ns: Option<u64>, now_ns: u64) {
        if kill.killer.kind != KillerKind::KernelOom {
            return;
        }
        self.count.reported += 1;
        self.dirty = true;
        match kill_seq {
            Some(seq) => self.handled(seq),
            None if self.kmsg => {
                if let (Some(pid), Some(at)) = (kill.victim.pid, at_ns) {
                    self.unlined.push_back((pid, at));
                }
                while self.unlined.len() > MAX_UNLINED
                    || self
                        .unlined
                        .front()
                        .is_some_and(|&(_, at)| now_ns.saturating_sub(at) > UNLINED_KEEP_NS)
                {
                    self.unlined.pop_front();
                }
            }
            None => {}
        }
    }

    /// `n` kill lines of tasks killed again in the same OOM (a
    /// memory.oom.group kill kills its chosen task twice, and the kernel
    /// counts both in `oom_kill`): accounted for, with no report of their own.
    pub fn repeated(&mut self, n: u64) {
        self.count.repeated += n;
        self.dirty = true;
    }

    /// Moves the mark over the kill lines dealt with, and gives up open
    /// ones that are too old or too many.
    fn advance(&mut self) {
        while let Some(&h) = self.done.first() {
            if self.open.first_key_value().is_some_and(|(&o, _)| o < h) {
                break;
            }
            self.done.remove(&h);
            self.read_up_to = Some(h);
        }
    }

    /// Gives up kill lines open for longer than [`OPEN_MAX_AGE`], and the
    /// oldest ones while too many are dealt with above the mark.
    pub fn expire(&mut self, now: Instant) {
        let old: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > OPEN_MAX_AGE)
            .map(|(&s, _)| s)
            .collect();
        for seq in old {
            self.handled(seq);
        }
        while self.done.len() > MAX_ABOVE {
            let Some((&oldest, _)) = self.open.first_key_value() else {
                break;
            };
            self.handled(oldest);
        }
    }

    /// Takes a sample of the kernel's counter.
    pub fn sample(&mut self, now: Instant, oom_kill: u64) {
        if self.counting {
            self.samples.push_back((now, oom_kill));
        }
    }

    /// Compares the counter as it was a settle window ago with what was
    /// reported and counted. `idle`: nothing is waiting in the pipeline
    /// (a kill still being correlated is not a loss).
    pub fn check(&mut self, now: Instant, idle: bool) -> Option<Loss> {
        // The newest sample at least a settle window old; older ones go.
        let settled = self
            .samples
            .iter()
            .rposition(|(t, _)| now.saturating_duration_since(*t) >= self.settle)?;
        self.samples.drain(..settled);
        let value = self.samples.front()?.1;
        if !idle {
            return None;
        }
        let kernel_count = value.saturating_sub(self.count.base);
        let count = kernel_count
            .saturating_sub(self.count.reported + self.count.repeated + self.count.unreported);
        if count == 0 {
            return None;
        }
        self.count.unreported += count;
        self.dirty = true;
        Some(Loss {
            count,
            kernel_count,
            reported: self.count.reported,
            repeated: self.count.repeated,
            unreported_total: self.count.unreported,
        })
    }

    /// Whether the counter can be read on this kernel.
    pub fn counting(&self) -> bool {
        self.counting
    }

    pub fn since_unix_ms(&self) -> u64 {
        self.since_unix_ms
    }

    pub fn counts(&self) -> KillCount {
        self.count
    }

    /// The state to save, when it changed since the last call.
    pub fn take_state(&mut self) -> Option<State> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.state())
    }

    pub fn state(&self) -> State {
        State {
            version: VERSION,
            boot_id: self.boot_id.clone(),
            since_unix_ms: self.since_unix_ms,
            kmsg: self.kmsg.then(|| KmsgMark {
                read_up_to: self.read_up_to,
                reported_above: self.done.iter().copied().collect(),
                unlined: self.unlined.iter().copied().collect(),
            }),
            oom_kill: self.count,
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests;
