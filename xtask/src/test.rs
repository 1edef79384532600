//! `cargo xtask test`: setup, then every test stage in order:
//! 1. `unit`: `cargo test` on every host crate (the eBPF crate only builds for
//!    bpfel, through `oomtrace/build.rs`);
//! 2. `host`: the privileged tests (`#[ignore]`d, root only), one at a time
//!    since they share kernel state (tracepoints, cgroups, kmsg);
//! 3. `vm`: the qemu tests across kernels ([`crate::vm`]), with a fresh
//!    debug build of the agent unless `--oomtrace-bin` names one, and on an
//!    arm64 guest with the static aarch64 release build of the agent and of
//!    tests/vm.rs ([`crate::arch::build_static`], the image's binary).
//!
//! A failed stage does not stop the later ones; the exit code is non-zero if
//! any stage failed.

use std::time::Instant;

use anyhow::bail;
use clap::ValueEnum;

use crate::{arch, cmd, deploy_check, setup, util, vm};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Leave out the VM tests.
    #[arg(long, conflicts_with = "only")]
    no_vm: bool,

    /// Run this stage only.
    #[arg(long, value_enum)]
    only: Option<Stage>,

    /// Count the privileged host tests as skipped, not failed, when not
    /// running as root.
    #[arg(long)]
    allow_skip: bool,

    #[command(flatten)]
    vm: vm::VmTestOpts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Unit tests of every host crate.
    Unit,
    /// Render and validate the Kubernetes manifests in deploy/.
    Deploy,
    /// Privileged tests on this host (root).
    Host,
    /// Tests inside qemu VMs across kernels.
    Vm,
}

enum Outcome {
    Passed,
    Failed(anyhow::Error),
    Skipped(String),
}

/// Returns the process exit code.
pub fn test(args: &TestArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    setup::setup()?;
    let stages: Vec<Stage> = match args.only {
        Some(stage) => vec![stage],
        None if args.no_vm => vec![Stage::Unit, Stage::Deploy, Stage::Host],
        None => vec![Stage::Unit, Stage::Deploy, Stage::Host, Stage::Vm],
    };
    let mut lines = Vec::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for stage in stages {
        let name = stage_name(stage);
        eprintln!("test: ── {name} ──");
        let begun = Instant::now();
        let outcome = match run_stage(stage, args) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(e),
        };
        let took = util::human(begun.elapsed());
        let line = match &outcome {
            Outcome::Passed => {
                passed += 1;
                format!("test: {name:<4} passed  in {took}")
            }
            Outcome::Failed(e) => {
                failed += 1;
                format!("test: {name:<4} FAILED  in {took}: {e:#}")
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                format!("test: {name:<4} skipped: {why}")
            }
        };
        eprintln!("{line}");
        lines.push(line);
    }
    eprintln!();
    for line in &lines {
        eprintln!("{line}");
    }
    eprintln!(
        "test: {passed} passed, {failed} failed, {skipped} skipped in {}",
        util::human(started.elapsed())
    );
    Ok(if failed == 0 { 0 } else { 1 })
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Unit => "unit",
        Stage::Deploy => "deploy",
        Stage::Host => "host",
        Stage::Vm => "vm",
    }
}

fn run_stage(stage: Stage, args: &TestArgs) -> anyhow::Result<Outcome> {
    let root = util::repo_root();
    match stage {
        Stage::Unit => {
            let mut c = cmd!("cargo", "test", "--workspace", "--exclude", "oomtrace-ebpf");
            c.current_dir(&root);
            util::run(c)?;
        }
        Stage::Deploy => deploy_check::check(&root)?,
        Stage::Host => {
            if !util::is_root() {
                let why = "the privileged host tests load eBPF programs and cause OOM kills \
                           in memory cgroups: they need root (run `sudo -E cargo xtask test`)";
                if args.allow_skip {
                    return Ok(Outcome::Skipped(why.to_owned()));
                }
                bail!("{why}; pass --allow-skip to count them as skipped");
            }
            let mut c = cmd!(
                "cargo",
                "test",
                "--package",
                "oomtrace",
                "--",
                "--ignored",
                "--test-threads=1",
                // The VM scenarios (tests/vm.rs) refuse to run outside a VM.
                "--skip",
                "vm_"
            );
            // Tests that need a tool `cargo xtask setup` installs fail rather than skip.
            c.env("OOMTRACE_REQUIRE_ALL", "1");
            c.current_dir(&root);
            util::run(c)?;
        }
        Stage::Vm => {
            let mut opts = args.vm.clone();
            for a in opts.arches().into_iter().filter(|&a| !vm::host_root(a)) {
                let begun = Instant::now();
                let build = arch::build_static(a)?;
                let facts = arch::check_agent(a, &build.agent)?;
                eprintln!(
                    "test: static {a} agent ({:.1} MiB, eBPF object {} KiB whose kprobes {} read \
                     pt_regs as on {a}) and tests/vm.rs built in {}",
                    facts.bytes as f64 / 1048576.0,
                    facts.ebpf_bytes / 1024,
                    facts.kprobes.join(", "),
                    util::human(begun.elapsed())
                );
                opts.builds.push((a, build));
            }
            if !opts.arches().into_iter().any(vm::host_root) {
                vm::run_vm_tests(&opts)?;
                return Ok(Outcome::Passed);
            }
            if opts.oomtrace_bin.is_none() {
                // The agent the scenarios run, fresh (after the unit stage the
                // debug build is nearly free).
                let mut c = cmd!("cargo", "build", "--package", "oomtrace");
                c.current_dir(&root);
                util::run(c)?;
                opts.oomtrace_bin = Some(util::target_dir().join("debug/oomtrace"));
            }
            // The scenarios run the compiled tests/vm.rs binary inside the guests
            // (xtask/vm/lib.sh picks the newest one).
            let mut c = cmd!(
                "cargo",
                "test",
                "--package",
                "oomtrace",
                "--test",
                "vm",
                "--no-run"
            );
            c.current_dir(&root);
            util::run(c)?;
            vm::run_vm_tests(&opts)?;
        }
    }
    Ok(Outcome::Passed)
}
