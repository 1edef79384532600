//! `cargo xtask test`: setup, then every test stage in order:
//! 1. `unit`: `cargo test` on every host crate (the eBPF crate only builds for
//!    bpfel, through `oomtrace/build.rs`);
//! 2. `fuzz`: every cargo-fuzz target of `fuzz/` for `--fuzz-secs` each
//!    (nightly, libFuzzer); a crash, a timeout or an out-of-memory fails the
//!    stage and prints the reproducer;
//! 3. `deploy`: the Kubernetes manifests;
//! 4. `host`: the privileged tests (`#[ignore]`d, root only), one at a time
//!    since they share kernel state (tracepoints, cgroups, kmsg);
//! 5. `vm`: the qemu tests across kernels ([`crate::vm`]), with a fresh
//!    debug build of the agent unless `--oomtrace-bin` names one, and on an
//!    arm64 guest with the static aarch64 release build of the agent and of
//!    tests/vm.rs ([`crate::arch::build_static`], the image's binary).
//!
//! A failed stage does not stop the later ones; the exit code is non-zero if
//! any stage failed.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::ValueEnum;

use crate::{
    arch::{self, Arch, Profile, StaticBuild},
    cmd, deploy_check, setup, util, vm,
};

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

    /// Seconds each fuzz target runs in the `fuzz` stage.
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    fuzz_secs: u64,

    #[command(flatten)]
    vm: vm::VmTestOpts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Unit tests of every host crate.
    Unit,
    /// Every fuzz target for a bounded time.
    Fuzz,
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
        None if args.no_vm => vec![Stage::Unit, Stage::Fuzz, Stage::Deploy, Stage::Host],
        None => vec![
            Stage::Unit,
            Stage::Fuzz,
            Stage::Deploy,
            Stage::Host,
            Stage::Vm,
        ],
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
        Stage::Fuzz => "fuzz",
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
        Stage::Fuzz => fuzz(&root, args.fuzz_secs)?,
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
            // The image test's static builds at opt-level 1 (about half the
            // CPU of release); the arm64 VM of the vm stage reuses them.
            c.env("OOMTRACE_IMAGE_PROFILE", Profile::TestImage.name());
            c.current_dir(&root);
            util::run(c)?;
        }
        Stage::Vm => {
            let mut opts = args.vm.clone();
            let foreign: Vec<Arch> = opts
                .arches()
                .into_iter()
                .filter(|&a| !vm::host_root(a))
                .collect();
            if !foreign.is_empty() {
                opts.builds = static_builds(&foreign)?;
            }
            if opts.arches().into_iter().any(vm::host_root) {
                // The agent the scenarios run and tests/vm.rs (xtask/vm/lib.sh
                // picks the newest build), as the unit stage built them:
                // `cargo test` also builds target/debug/oomtrace for the
                // integration tests. (`cargo build` would resolve features
                // without the dev-dependencies' and rebuild part of the tree.)
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
                if opts.oomtrace_bin.is_none() {
                    opts.oomtrace_bin = Some(util::target_dir().join("debug/oomtrace"));
                }
            }
            vm::run_vm_tests(&opts)?;
        }
    }
    Ok(Outcome::Passed)
}

/// The static builds (profile `test-image`) of the agent and tests/vm.rs for
/// `arches`, checked to be static and for their architecture.
fn static_builds(arches: &[Arch]) -> anyhow::Result<Vec<(Arch, StaticBuild)>> {
    let begun = Instant::now();
    let builds = arch::build_static(arches, Profile::TestImage)?;
    for (a, build) in &builds {
        let facts = arch::check_agent(*a, &build.agent)?;
        eprintln!(
            "test: static {a} agent ({:.1} MiB, eBPF object {} KiB whose kprobes {} read \
             pt_regs as on {a}) and tests/vm.rs",
            facts.bytes as f64 / 1048576.0,
            facts.ebpf_bytes / 1024,
            facts.kprobes.join(", "),
        );
    }
    eprintln!(
        "test: static builds ({}) in {}",
        Profile::TestImage.name(),
        util::human(begun.elapsed())
    );
    Ok(builds)
}

/// The fuzz targets of `fuzz/Cargo.toml` and their seed corpora (besides the
/// corpus libFuzzer grows in `fuzz/corpus/<target>`): the real samples the
/// unit tests use.
const FUZZ_TARGETS: &[(&str, &[&str])] = &[
    ("kmsg", &["oomtrace/tests/data/kmsg"]),
    ("tracefs", &["oomtrace/tests/data/tracefs"]),
    ("btf_raw", &["fuzz/seeds/btf_raw"]),
    ("btf_graph", &[]),
    ("identity", &["oomtrace/tests/data/identity"]),
    ("mount", &["oomtrace/tests/data/node"]),
];

/// `cargo +nightly fuzz <sub>` as the stage runs it: no sanitizer (safe Rust;
/// libFuzzer still traces coverage), debug assertions and overflow checks on,
/// and no eBPF object (`oomtrace/build.rs` skips it).
fn fuzz_command(root: &Path, sub: &str) -> std::process::Command {
    let mut c = cmd!(
        "cargo",
        "+nightly",
        "fuzz",
        sub,
        "--sanitizer",
        "none",
        "--debug-assertions"
    );
    c.env("AYA_BUILD_SKIP", "1")
        .env("RUSTUP_AUTO_INSTALL", "0")
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(root);
    // What `cargo run` set for this xtask process: ring's build script reruns
    // when CARGO_MANIFEST_DIR changes, and with it every crate above it, so a
    // fuzz build by hand and one from here would rebuild each other.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                &*key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            c.env_remove(&*key);
        }
    }
    c
}

fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// Builds every fuzz target once, then runs each for `secs` seconds, as many
/// at a time as there are CPUs (libFuzzer runs one thread). All targets run
/// even when one fails; the reproducers of the failures are printed.
fn fuzz(root: &Path, secs: u64) -> anyhow::Result<()> {
    util::run(fuzz_command(root, "build"))?;
    let jobs = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, FUZZ_TARGETS.len());
    eprintln!(
        "fuzz: {} targets, {jobs} at a time, {secs} s each",
        FUZZ_TARGETS.len()
    );
    let queue = std::sync::Mutex::new(FUZZ_TARGETS.iter());
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some(&(target, seeds)) = next else {
                        break;
                    };
                    let ok = fuzz_target(root, target, seeds, secs).unwrap_or_else(|e| {
                        eprintln!("fuzz: {target} could not run: {e:#}");
                        false
                    });
                    if !ok && let Ok(mut f) = failed.lock() {
                        f.push(target);
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_default();
    if !failed.is_empty() {
        failed.sort_unstable();
        bail!(
            "fuzz target(s) {} failed: the reproducers are printed above",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs one fuzz target for `secs` seconds; prints its result (and on a
/// failure the end of its log and its reproducers) in one piece. Returns
/// whether it passed.
fn fuzz_target(root: &Path, target: &str, seeds: &[&str], secs: u64) -> anyhow::Result<bool> {
    let corpus = root.join("fuzz/corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let artifacts = root.join("fuzz/artifacts").join(target);
    let before = files_in(&artifacts);
    let mut c = fuzz_command(root, "run");
    c.arg(target).arg(&corpus);
    for seed in seeds {
        c.arg(root.join(seed));
    }
    c.arg("--")
        .arg(format!("-max_total_time={secs}"))
        // A slow input is a failure too (an exponential search, a loop).
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]);
    let shown = util::display(&c);
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .map_or("?".to_owned(), |n| n.trim().to_owned());
    if out.status.success() {
        eprintln!(
            "fuzz: {target:<10} {secs} s, {runs} runs, corpus {} inputs: no crash",
            files_in(&corpus).len()
        );
        return Ok(true);
    }
    let mut report = format!("$ {shown}\n");
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    for line in tail.iter().rev() {
        report.push_str(&format!("  {line}\n"));
    }
    let new: Vec<PathBuf> = files_in(&artifacts).difference(&before).cloned().collect();
    if new.is_empty() {
        report.push_str(&format!(
            "fuzz: {target} failed ({}) without writing a reproducer\n",
            util::describe(out.status)
        ));
    }
    for artifact in &new {
        report.push_str(&format!(
            "fuzz: {target} FAILED: reproducer {}; run it again with:\n  \
             cd {} && AYA_BUILD_SKIP=1 cargo +nightly fuzz run --sanitizer none --debug-assertions {target} {}\n",
            artifact.display(),
            root.display(),
            artifact.display()
        ));
    }
    eprint!("{report}");
    Ok(false)
}
