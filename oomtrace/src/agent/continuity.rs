//! What one run of the agent hands to the next (`--state-dir`) and the
//! kernel-counted loss check: the [`Ledger`], where it is saved, and the
//! kernel log's backlog read at start.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use crate::{
    capture::kmsg::{KmsgError, KmsgOom, KmsgStats, OomLine, Reader, StartAt},
    cli::TraceArgs,
    enrich::rfc3339,
    ledger::{self, Ledger, Loss, Now, Start},
    report::{RecordKind, Unreported},
    state::{StateDir, StateError},
};

/// How often the saved state is made durable (fsync) while it changes.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The ledger and where it is kept.
pub struct Continuity {
    dir: Option<StateDir>,
    pub ledger: Ledger,
    pub start: Start,
    replay: Option<ledger::Replay>,
    proc_root: PathBuf,
    last_sync: Instant,
    /// A save failed and was said; said again only when saving works again.
    save_failed: bool,
}

impl Continuity {
    /// Reads the saved state and the kernel's kill counter: before any
    /// source is attached, so that every kill the counter counts from here
    /// on is one a source could report. Never fails: without a usable
    /// state directory the agent runs as without `--state-dir`, and says so.
    pub fn open(args: &TraceArgs) -> Self {
        let proc_root = args.paths.proc_root.clone();
        let dir = args
            .state_dir
            .as_deref()
            .and_then(|d| StateDir::open(d).map_err(|e| warn!("{e}")).ok());
        let prev = dir.as_ref().and_then(|d| match d.load() {
            Ok(s) => s,
            Err(e) => {
                warn!("{e}; starting as on a first start");
                None
            }
        });
        let oom_kill = match ledger::read_oom_kill(&proc_root) {
            Ok(Some(v)) => Some(v),
            Ok(None) => {
                info!(
                    "{}/vmstat has no oom_kill counter (kernels before 4.13): kills cannot be checked against the kernel's count",
                    proc_root.display()
                );
                None
            }
            Err(e) => {
                warn!(
                    "cannot read {}/vmstat: {e}: kills cannot be checked against the kernel's count (check --proc)",
                    proc_root.display()
                );
                None
            }
        };
        let boot_id = crate::state::boot_id(&proc_root).unwrap_or_else(|e| {
            warn!(
                "cannot read the boot id from {}/sys/kernel/random/boot_id: {e}: a restart cannot tell a reboot from a restart (check --proc)",
                proc_root.display()
            );
            String::new()
        });
        let unix_ms = unix_ms(SystemTime::now());
        let now = Now {
            boot_id,
            oom_kill,
            kmsg: !args.no_kmsg,
            unix_ms,
            boot_unix_ms: unix_ms.saturating_sub(uptime_ms()),
        };
        let settle = args.wait_ms + Duration::from_secs(2);
        let (ledger, start, replay) = Ledger::resume(prev, now, settle);
        if dir.is_some() {
            info!(
                "state: {}",
                match start {
                    Start::First =>
                        "first start in this state directory: counting from now, nothing to replay",
                    Start::SameBoot =>
                        "restart in the same boot: kills the kernel log holds that were not reported are replayed",
                    Start::NewBoot =>
                        "first start since a reboot: every kill of this boot's kernel log is replayed",
                }
            );
        }
        Self {
            dir,
            ledger,
            start,
            replay,
            proc_root,
            last_sync: Instant::now(),
            save_failed: false,
        }
    }

    /// Opens the kernel log: at its end without a state directory; else at
    /// its oldest record, reading the backlog now to replay what was not
    /// reported (or, on a first start, to learn where it ends).
    pub fn open_kmsg(
        &mut self,
        args: &TraceArgs,
        stats: Arc<KmsgStats>,
    ) -> Result<(Reader, Vec<KmsgOom>), KmsgError> {
        let path = &args.paths.kmsg;
        if self.dir.is_none() {
            return Ok((Reader::open(path, StartAt::End, stats)?, Vec::new()));
        }
        let mut reader = Reader::open(path, StartAt::Oldest, stats)?;
        let replay = self.replay.take();
        let backlog = reader.read_backlog(|r| replay.as_ref().is_some_and(|p| p.keep(r)))?;
        let kill_lines: Vec<u64> = backlog
            .lines
            .iter()
            .filter(|l| matches!(l.line, OomLine::Killed { .. }))
            .map(|l| l.seq)
            .collect();
        if let (Start::SameBoot, Some(mark), Some(first)) = (
            self.start,
            self.ledger.state().kmsg.and_then(|k| k.read_up_to),
            backlog.first_seq,
        ) && first > mark.saturating_add(1)
        {
            warn!(
                "the kernel log no longer holds records {}..{} (it wrapped while oomtrace was down): kills among them are counted as unreported by the check against the kernel's count",
                mark + 1,
                first - 1
            );
        }
        if replay.is_some() {
            info!(
                "replaying {} kill(s) from the kernel log (records {}..={})",
                kill_lines.len(),
                backlog.first_seq.unwrap_or(0),
                backlog.last_seq.unwrap_or(0)
            );
        }
        self.ledger.backlog_read(
            replay.is_some(),
            backlog.last_seq,
            kill_lines,
            Instant::now(),
        );
        Ok((reader, backlog.lines))
    }

    /// Saves the ledger when it changed (atomically: see [`crate::state`]).
    pub fn save(&mut self) {
        let Some(dir) = &mut self.dir else {
            return;
        };
        let Some(state) = self.ledger.take_state() else {
            return;
        };
        self.save_failed = report_failure(dir.save(&state), self.save_failed);
    }

    /// Saves, and makes the state durable at most every [`SYNC_EVERY`]
    /// (always when `now_or_never`).
    pub fn sync(&mut self, now_or_never: bool) {
        self.save();
        let Some(dir) = &mut self.dir else {
            return;
        };
        if now_or_never || self.last_sync.elapsed() >= SYNC_EVERY {
            self.last_sync = Instant::now();
            self.save_failed = report_failure(dir.sync(), self.save_failed);
        }
    }

    /// Samples the kernel's counter and compares it with what was reported.
    pub fn check(&mut self, idle: bool) -> Option<Loss> {
        if !self.ledger.counting() {
            return None;
        }
        let now = Instant::now();
        match ledger::read_oom_kill(&self.proc_root) {
            Ok(Some(v)) => self.ledger.sample(now, v),
            Ok(None) | Err(_) => return None,
        }
        self.ledger.expire(now);
        self.ledger.check(now, idle)
    }

    /// The record a loss is written as.
    pub fn record(&self, loss: Loss, node: &str, lost_events: u64) -> Unreported {
        let since =
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(self.ledger.since_unix_ms()));
        let mut explanation = format!(
            "The kernel counted {} OOM kill(s) since {since} (/proc/vmstat oom_kill) and oomtrace reported {}: {} more were reported by no source. ",
            loss.kernel_count, loss.reported, loss.count
        );
        explanation.push_str(if lost_events > 0 {
            "Capture records were lost (lost_events): raise --ringbuf-bytes and keep the kernel log on (its kill lines report every kill)."
        } else {
            "The kernel log wrapped while oomtrace was not running or behind: run with --state-dir so that a restart replays what the log still holds."
        });
        Unreported {
            kind: RecordKind::UnreportedKills,
            count: loss.count,
            kernel_count: loss.kernel_count,
            reported: loss.reported,
            repeated: loss.repeated,
            unreported_total: loss.unreported_total,
            time: rfc3339(SystemTime::now()),
            node: node.to_string(),
            since,
            lost_events,
            explanation,
        }
    }
}

/// Logs a failure once (until saving works again); returns whether the
/// last attempt failed.
fn report_failure(result: Result<(), StateError>, failed_before: bool) -> bool {
    match result {
        Ok(()) => {
            if failed_before {
                info!("the state directory can be written again");
            }
            false
        }
        Err(e) => {
            if !failed_before {
                warn!("{e}");
            }
            true
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since boot (CLOCK_BOOTTIME, which counts suspend).
fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1000)
        .saturating_add(u64::try_from(ts.tv_nsec / 1_000_000).unwrap_or(0))
}
