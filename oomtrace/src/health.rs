//! Whether the agent is doing its job, for `/healthz` and `oomtrace_ready`.
//!
//! Ready once its capture sources are attached, and only while
//! - every source it started still runs (the kernel log reader thread has
//!   not ended, the ring-buffer task has not failed): [`Health::died`];
//! - the stages still drain: the correlation loop and the output thread
//!   each beat ([`Health::beat`]) at least once a second while they are
//!   free to run (the correlation loop on its timer, the output thread on
//!   the check message the correlation loop sends it every second). A
//!   stage stuck in a write (a stdout nobody reads) or behind a full
//!   channel misses its beats; after [`Health::stall_after`] without one,
//!   the agent is reported unready, with which stage stalled.
//!
//! A probe that restarts the pod on failure (a liveness probe on
//! `/healthz`) then restarts an agent that can no longer report kills.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// A stage that must keep beating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The correlation loop (drains the ring buffer's and the kernel log's queues).
    Correlate,
    /// The output thread (enrichment and the sinks).
    Output,
}

impl Stage {
    const ALL: [Stage; 2] = [Stage::Correlate, Stage::Output];

    fn name(self) -> &'static str {
        match self {
            Stage::Correlate => "the correlation loop",
            Stage::Output => "the output thread (enrichment and writing)",
        }
    }
}

/// Shared by the stages (writers) and the metrics server (reader).
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    stall_after: Duration,
    attached: AtomicBool,
    /// Milliseconds since `epoch` of each stage's last beat.
    beats: [AtomicU64; 2],
    /// Sources that ended, and why.
    dead: Mutex<Vec<String>>,
}

impl Health {
    /// Unready when a stage has not beaten for `stall_after`.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            stall_after,
            attached: AtomicBool::new(false),
            beats: [AtomicU64::new(0), AtomicU64::new(0)],
            dead: Mutex::new(Vec::new()),
        }
    }

    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// The capture sources are attached; stages count as beating from now.
    pub fn attached(&self) {
        let now = Instant::now();
        for stage in Stage::ALL {
            self.beat_at(stage, now);
        }
        self.attached.store(true, Ordering::Relaxed);
    }

    /// `stage` made progress.
    pub fn beat(&self, stage: Stage) {
        self.beat_at(stage, Instant::now());
    }

    fn beat_at(&self, stage: Stage, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        self.beats[stage as usize].store(ms, Ordering::Relaxed);
    }

    /// A capture source ended: `what` it was and why (said in `/healthz`).
    pub fn died(&self, what: &str, why: &str) {
        let mut dead = self.dead.lock().unwrap_or_else(PoisonError::into_inner);
        dead.push(format!("{what} ended: {why}"));
    }

    /// `Ok` when ready, else what is wrong, as `/healthz` says it.
    pub fn status(&self) -> Result<(), String> {
        self.status_at(Instant::now())
    }

    pub fn status_at(&self, now: Instant) -> Result<(), String> {
        if !self.attached.load(Ordering::Relaxed) {
            return Err("capture sources are still being attached".into());
        }
        let mut problems = self
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let now_ms = now.saturating_duration_since(self.epoch).as_millis();
        for stage in Stage::ALL {
            let last = u128::from(self.beats[stage as usize].load(Ordering::Relaxed));
            let silent = Duration::from_millis(
                u64::try_from(now_ms.saturating_sub(last)).unwrap_or(u64::MAX),
            );
            if silent >= self.stall_after {
                problems.push(format!(
                    "{} has made no progress for {} s (is stdout blocked?)",
                    stage.name(),
                    silent.as_secs()
                ));
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn ready_once_attached_and_while_every_stage_beats() {
        let h = Health::new(Duration::from_secs(5));
        assert_eq!(
            h.status().unwrap_err(),
            "capture sources are still being attached"
        );
        h.attached();
        let t = Instant::now();
        assert_eq!(h.status_at(t), Ok(()));
        h.beat(Stage::Correlate);
        let later = t + Duration::from_secs(6);
        let err = h.status_at(later).unwrap_err();
        assert!(
            err.contains("the correlation loop has made no progress for 5 s")
                || err.contains("the correlation loop has made no progress for 6 s"),
            "{err}"
        );
        assert!(
            err.contains("the output thread (enrichment and writing) has made no progress"),
            "{err}"
        );
        h.beat_at(Stage::Correlate, later);
        h.beat_at(Stage::Output, later);
        assert_eq!(h.status_at(later + Duration::from_secs(4)), Ok(()));
    }

    #[test]
    fn a_dead_source_makes_it_unready_for_good() {
        let h = Health::new(Duration::from_secs(30));
        h.attached();
        h.died(
            "the kernel log reader",
            "reading the kernel log failed: Input/output error",
        );
        h.beat(Stage::Correlate);
        h.beat(Stage::Output);
        assert_eq!(
            h.status().unwrap_err(),
            "the kernel log reader ended: reading the kernel log failed: Input/output error"
        );
    }
}
