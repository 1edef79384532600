#![no_std]
//! Empty library target: lets `oomtrace` declare a build-dependency on this crate so cargo
//! rebuilds the agent when the eBPF code changes. The programs are in `main.rs`.
