//! oomtrace: explains every OOM kill on a Linux or Kubernetes node.
//!
//! The folders are the pipeline (see ARCHITECTURE.md):
//!
//! ```text
//! kernel hooks ─ring buffer─┐
//!                           ├─► capture ─► correlate ─► enrich ─► explain ─► sink
//! /dev/kmsg ────────────────┘   (Input)    (one Kill     (pod,     (why,      (stdout, metrics,
//!                                           per kill)     QoS,      advice)    Events)
//!                                                         node)
//! ```
//!
//! - [`capture`]: what the kernel tells, as one [`capture::Input`] type: the eBPF
//!   [`capture::probe`] (its hook chain, [`capture::btf`], [`capture::tracefs`],
//!   [`capture::offsets`]), ring decoding, the [`capture::kmsg`] reader, userspace
//!   killers' signals and kubelet evictions.
//! - [`correlate`]: merges the sources of one kill into a [`report::Kill`]; the
//!   verdict's priority order in [`correlate::verdict`], cgroup walks in
//!   [`correlate::walk`], incidents.
//! - [`enrich`]: identity (cgroup path → pod, container, QoS), pod names, the
//!   kubelet's oom_score_adj policy ([`enrich::qos`]), node memory
//!   ([`enrich::node`]), Kubernetes metadata.
//! - [`explain`]: the explanation and advice for each OOM domain.
//! - [`sink`]: JSON lines and text, [`sink::metrics`] (and `/healthz`), Kubernetes Events.
//! - [`agent`]: wires the stages and owns shutdown; [`ledger`], [`state`] and
//!   [`health`] make restarts, losses and dead sources visible.
//! - [`cmd`]: `doctor` and `rank`.
//! - [`report`] (the JSON contract), [`units`], [`proc`] (pinned `/proc` reads),
//!   [`cgroupfs`] (the memory controller's files, read by capture and
//!   enrichment), [`readcap`], [`kube`] (the API client), [`cli`].

pub mod agent;
pub mod capture;
pub mod cgroupfs;
pub mod cli;
pub mod cmd;
pub mod correlate;
pub mod enrich;
pub mod explain;
pub mod health;
pub mod kube;
pub mod ledger;
pub mod proc;
pub mod readcap;
pub mod report;
pub mod sink;
pub mod state;
#[cfg(test)]
pub(crate) mod testdata;
pub mod units;
