//! The privileged host tests: one binary, so a 2-core machine links once.
//!
//! Every test is `#[ignore]`d (root, BPF and memory cgroups needed);
//! `cargo xtask test` runs them one at a time. Each module is one subject.

#[path = "../support/mod.rs"]
mod support;

mod image;
mod k8s;
mod kube;
mod metrics;
mod privileged;
mod rank;
mod reliability;
