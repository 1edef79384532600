//! Sinks: where finished reports go. Each reads a finished [`Kill`] and
//! never changes it; the agent hands every report to every sink, in order.
//!
//! - [`stdout`]: JSON lines (one object per kill) or one readable line per kill;
//! - [`crate::sink::metrics`]: Prometheus/OpenMetrics counters on `--metrics-addr`;
//! - [`events`]: a Kubernetes Event on the victim's pod (`--kube`).

pub mod events;
pub mod metrics;
pub mod stdout;

use std::io;

use thiserror::Error;

use crate::{
    enrich::reported::ReasonMismatch,
    report::{Kill, Unreported},
};

#[derive(Debug, Error)]
pub enum SinkError {
    #[error(
        "writing events to stdout failed: {0}: the reader of oomtrace's output is gone (a closed pipe or a full disk); restart it with a working stdout"
    )]
    Stdout(#[source] io::Error),
}

/// A destination for finished reports.
pub trait Sink: Send {
    /// Takes one finished kill.
    fn kill(&mut self, kill: &Kill) -> Result<(), SinkError>;

    /// Takes a count of kills the kernel made that no source reported
    /// (the loss check). Sinks that have nothing to say about it ignore it.
    fn unreported(&mut self, _record: &Unreported) -> Result<(), SinkError> {
        Ok(())
    }

    /// Takes a disagreement between Kubernetes' reason for a container's
    /// end and the kernel's kills. Sinks with nothing to say ignore it.
    fn reason_mismatch(&mut self, _record: &ReasonMismatch) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Every sink of a run, in the order they are given each report: the
/// in-memory ones first, so a broken stdout still lets metrics and Events
/// count the kill it could not print.
#[derive(Default)]
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
}

impl Sinks {
    pub fn push(&mut self, sink: impl Sink + 'static) {
        self.sinks.push(Box::new(sink));
    }

    /// Gives the kill to every sink; the first error is returned after all
    /// sinks had it.
    pub fn kill(&mut self, kill: &Kill) -> Result<(), SinkError> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            if let Err(e) = s.kill(kill)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Gives the reason-mismatch record to every sink, as [`Sinks::kill`].
    pub fn reason_mismatch(&mut self, record: &ReasonMismatch) -> Result<(), SinkError> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            if let Err(e) = s.reason_mismatch(record)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Gives the unreported-kills record to every sink, as [`Sinks::kill`].
    pub fn unreported(&mut self, record: &Unreported) -> Result<(), SinkError> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            if let Err(e) = s.unreported(record)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}
