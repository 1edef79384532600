//! `cargo xtask vm`: run a command as root inside a throwaway qemu VM booted
//! from a Debian kernel, with the host's root filesystem shared read-only over
//! 9p and a writable scratch directory; and the host side of the VM test
//! matrix (`run_vm_tests`).
//!
//! `--arch arm64` boots Debian's arm64 kernel under qemu-system-aarch64 (TCG
//! on an x86_64 host). Such a guest cannot run the host's programs: its root
//! is its initramfs, with Debian's arm64 busybox-static, and it sees the
//! repository (and the build output in it) over 9p at the same path as the
//! host, so static aarch64 builds of the agent and of the tests run there.
//!
//! Kernels are downloaded with `apt-get download` under a private apt
//! configuration, extracted with `dpkg-deb -x` and cached in
//! `target/vm-cache` (override with `OOMTRACE_VM_CACHE`). Guest-side files
//! live in `xtask/vm/`: `init` (PID 1 of the initramfs), `run-scenarios.sh`,
//! `lib.sh` and `scenarios/*.sh`.

pub(crate) mod elf;
mod initramfs;
mod kernel;
mod qemu;

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use kernel::Kernel;

use crate::arch::{Arch, StaticBuild};

/// Exit status of `cargo xtask vm` when the timeout killed the VM.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when the VM failed: no boot, no exit code reported.
pub const EXIT_VM_FAILURE: i32 = 125;

/// The kernel matrix of `cargo xtask test`: bookworm's 6.1, bookworm-backports'
/// 6.12, and bullseye's 5.10.223 with the pid-only `mark_victim` ABI (optional:
/// skipped with a warning when it cannot be downloaded).
pub const DEFAULT_MATRIX: &[(&str, bool)] = &[("6.1", true), ("6.12", true), ("5.10", false)];

/// The arm64 part of the matrix: bookworm's 6.1 under TCG, where emulation
/// is slow; the scenarios that prove the arm64 build: the VM smoke test, the
/// container, pod and allocatable limits, and the oom_kill_process decision
/// hook, whose kprobe reads `struct pt_regs` the arm64 way.
pub const ARM64_MATRIX: &[(&str, bool)] = &[("6.1", true)];
pub const ARM64_SCENARIOS: &[&str] = &["smoke", "k8s-limits", "oom-control"];

/// Whether an `arch` guest mounts the host's root (same architecture) or
/// keeps its initramfs as root (another architecture).
pub fn host_root(arch: Arch) -> bool {
    Arch::host() == Some(arch)
}

/// Where the guest sees the scratch share.
const GUEST_SCRATCH: &str = "/run/oomtrace-scratch";
/// Host memory one guest costs beyond its RAM (qemu, TCG code cache).
const QEMU_OVERHEAD_MIB: u64 = 400;

/// `cargo xtask vm [--kernel K] [--memory M] [--timeout S] -- COMMAND...`
#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// The guest's architecture: amd64 or arm64 (TCG on an x86_64 host; the
    /// guest's root is then busybox in its initramfs, and the repository is
    /// shared at its host path for static builds of that architecture).
    #[arg(long, default_value = "amd64")]
    pub arch: Arch,
    /// Kernel: 6.1 (bookworm), 6.12 (bookworm-backports), 5.10 (bullseye
    /// 5.10.223-1, pid-only mark_victim), bullseye, a Debian package name
    /// (linux-image-6.1.0-41-amd64[=VERSION]), or a path to a vmlinux/bzImage
    /// or to an extracted package tree.
    #[arg(long, default_value = "6.1")]
    pub kernel: String,
    /// lib/modules/<release> for a --kernel path (default: found next to it).
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Guest RAM in MiB (suffixes M and G accepted). There is no swap.
    #[arg(long, default_value = "512", value_parser = parse_mib)]
    pub memory: u64,
    /// Kill the VM after this many seconds (exit status 124).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    pub smp: u32,
    /// Extra environment for COMMAND in the guest (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Host directory to share writable as $SCRATCH (default: a fresh one
    /// under target/vm-runs, removed after a successful run).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Extra kernel command line.
    #[arg(long)]
    pub append: Option<String>,
    /// Re-resolve kernel aliases (6.1, 6.12) against fresh package lists.
    #[arg(long)]
    pub refresh: bool,
    /// Also show the kernel's boot messages.
    #[arg(long)]
    pub show_boot: bool,
    /// The command to run as root in the guest, after `--`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// Options of the VM part of `cargo xtask test`.
#[derive(clap::Args, Debug, Clone)]
pub struct VmTestOpts {
    /// Guest architectures (comma-separated; default: amd64,arm64).
    #[arg(long = "vm-arch", value_delimiter = ',')]
    pub arches: Vec<Arch>,
    /// Kernels to test on each architecture (comma-separated; default: amd64
    /// 6.1,6.12,5.10, where 5.10 is skipped with a warning if it cannot be
    /// downloaded; arm64 6.1 with the scenarios smoke, k8s-limits, oom-control).
    #[arg(long = "vm-kernels", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Guest RAM in MiB.
    #[arg(long = "vm-memory", default_value = "512", value_parser = parse_mib)]
    pub memory: u64,
    /// Per-VM timeout in seconds.
    #[arg(long = "vm-timeout", default_value_t = 900)]
    pub timeout: u64,
    /// VMs run at once (default: as many as memory allows, at most 3).
    #[arg(long = "vm-jobs")]
    pub jobs: Option<usize>,
    /// Only run scenarios whose file name contains one of these (repeatable).
    #[arg(long = "scenario")]
    pub scenarios: Vec<String>,
    /// The agent binary the scenarios run ($OOMTRACE_BIN; default: the newest
    /// of target/{release,debug}/oomtrace).
    #[arg(long = "oomtrace-bin")]
    pub oomtrace_bin: Option<PathBuf>,
    /// Print every guest console line, not only the scenario results.
    #[arg(long = "vm-verbose")]
    pub verbose: bool,
    /// Re-resolve kernel aliases against fresh package lists.
    #[arg(long = "vm-refresh")]
    pub refresh: bool,
    /// Static builds for guests of another architecture than the host's
    /// (made by `cargo xtask test`).
    #[arg(skip)]
    pub builds: Vec<(Arch, StaticBuild)>,
}

impl VmTestOpts {
    /// The guest architectures to test.
    pub fn arches(&self) -> Vec<Arch> {
        if self.arches.is_empty() {
            Arch::ALL.to_vec()
        } else {
            self.arches.clone()
        }
    }
}

impl Default for VmTestOpts {
    fn default() -> Self {
        Self {
            arches: Vec::new(),
            kernels: Vec::new(),
            memory: 512,
            timeout: 900,
            jobs: None,
            scenarios: Vec::new(),
            oomtrace_bin: None,
            verbose: false,
            refresh: false,
            builds: Vec::new(),
        }
    }
}

fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'G' | 'g')) => (&t[..i], 1024),
        Some((i, 'M' | 'm')) => (&t[..i], 1),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size in MiB (e.g. 512, 512M, 1G)"))?;
    if n * mul < 128 {
        return Err(format!("{s}: a guest needs at least 128 MiB"));
    }
    Ok(n * mul)
}

// ---- cargo xtask vm --------------------------------------------------------------

/// Run `args.command` in a VM; returns the exit status to exit with (the
/// command's, or 124 on timeout, 125 when the VM failed).
pub fn vm_command(args: VmArgs) -> Result<i32> {
    let kernel = kernel::prepare(
        &args.kernel,
        args.arch,
        args.modules.as_deref(),
        args.refresh,
    )?;
    let initramfs = initramfs::build(&kernel, &guest_dir()?.join("init"))?;
    let (scratch, temporary) = match &args.scratch {
        Some(s) => {
            fs::create_dir_all(s).with_context(|| format!("creating {}", s.display()))?;
            (s.clone(), false)
        }
        None => {
            let s = runs_dir()?.join(format!("vm-{}", std::process::id()));
            let _ = fs::remove_dir_all(&s);
            fs::create_dir_all(&s)?;
            (s, true)
        }
    };
    let mut env = guest_env(&kernel, None)?;
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv}: expected KEY=VALUE"))?;
        env.push((k.to_owned(), v.to_owned()));
    }
    write_guest_command(&scratch, &env, &args.command)?;
    eprintln!(
        "vm: booting {} [{}] with {} MiB ...",
        kernel.describe(),
        kernel.boot_notes(),
        args.memory
    );
    let log = scratch.join("console.log");
    let outcome = qemu::run(&qemu::VmSpec {
        kernel: &kernel,
        initramfs: &initramfs,
        memory_mib: args.memory,
        smp: args.smp,
        timeout: Duration::from_secs(args.timeout),
        scratch: &scratch,
        append: args.append.as_deref(),
        console: qemu::Console::Stream {
            all: args.show_boot,
        },
        log: log.clone(),
    })?;
    let boot = outcome
        .boot
        .map(|b| format!("{:.1} s to the command, ", b.as_secs_f64()))
        .unwrap_or_default();
    let code = match &outcome.exit {
        qemu::Exit::Code(c) => {
            eprintln!(
                "vm: exit status {c} ({boot}{:.1} s in all, {})",
                outcome.total.as_secs_f64(),
                outcome.accel
            );
            *c
        }
        qemu::Exit::Timeout => {
            print_tail(
                &outcome.tail,
                &format!("timed out after {} s (raise --timeout)", args.timeout),
                &log,
            );
            EXIT_TIMEOUT
        }
        qemu::Exit::Failed(why) => {
            print_tail(&outcome.tail, why, &log);
            EXIT_VM_FAILURE
        }
    };
    if temporary && code == 0 {
        let _ = fs::remove_dir_all(&scratch);
    }
    Ok(code)
}

fn print_tail(tail: &[String], why: &str, log: &Path) {
    eprintln!("vm: FAILED: {why}. Last {} console lines:", tail.len());
    for l in tail {
        eprintln!("  | {l}");
    }
    eprintln!("vm: whole console: {}", log.display());
}

/// The environment every guest command gets.
fn guest_env(kernel: &Kernel, oomtrace_bin: Option<&str>) -> Result<Vec<(String, String)>> {
    let mut env = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/tmp".into()),
        ("TERM".into(), "dumb".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("OOMTRACE_IN_VM".into(), "1".into()),
        ("KERNEL_VERSION".into(), kernel.release.clone()),
        ("OOMTRACE_KERNEL".into(), kernel.describe()),
        ("SCRATCH".into(), GUEST_SCRATCH.into()),
        ("OOMTRACE_REPO".into(), repo_root()?.display().to_string()),
    ];
    if let Some(b) = oomtrace_bin {
        env.push(("OOMTRACE_BIN".into(), b.into()));
    }
    for k in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.into(), v));
        }
    }
    Ok(env)
}

/// Write `cmd.sh`, which the guest init runs chrooted into the host root.
fn write_guest_command(scratch: &Path, env: &[(String, String)], command: &[String]) -> Result<()> {
    let mut s =
        String::from("# Written by cargo xtask vm; run by xtask/vm/init inside the guest.\n");
    for (k, v) in env {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("bad environment variable name `{k}`");
        }
        s.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "/".into());
    s.push_str(&format!("cd {} 2>/dev/null || cd /\n", sh_quote(&cwd)));
    let argv: Vec<String> = command.iter().map(|a| sh_quote(a)).collect();
    s.push_str(&format!("exec {}\n", argv.join(" ")));
    fs::write(scratch.join("cmd.sh"), s)?;
    Ok(())
}

fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---- cargo xtask test: the VM matrix ------------------------------------------------

struct KernelResult {
    name: String,
    kernel: Option<String>,
    boot: Option<Duration>,
    total: Duration,
    /// (status, scenario, seconds)
    scenarios: Vec<(String, String, f64)>,
    error: Option<String>,
}

/// One VM of the test matrix.
#[derive(Debug, Clone)]
struct Entry {
    /// `6.1` on the host's architecture, `arm64/6.1` on another.
    name: String,
    spec: String,
    arch: Arch,
    required: bool,
    /// `OOMTRACE_SCENARIOS` (empty: every scenario).
    scenarios: Vec<String>,
    /// `OOMTRACE_BIN`: the agent the scenarios run.
    bin: String,
    /// `OOMTRACE_VM_TESTS`: the compiled tests/vm.rs (None: xtask/vm/lib.sh
    /// takes the newest host build).
    vm_tests: Option<String>,
}

/// The VMs to boot: for each architecture its kernels (`--vm-kernels`, else
/// [`DEFAULT_MATRIX`] / [`ARM64_MATRIX`]); another architecture's VMs come
/// first, as they take longest under TCG.
fn matrix(opts: &VmTestOpts) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut arches = opts.arches();
    arches.sort_by_key(|&a| host_root(a));
    for arch in arches {
        let kernels: Vec<(String, bool)> = match (opts.kernels.is_empty(), arch) {
            (false, _) => opts.kernels.iter().map(|k| (k.clone(), true)).collect(),
            (true, Arch::Amd64) => DEFAULT_MATRIX
                .iter()
                .map(|&(k, r)| (k.to_owned(), r))
                .collect(),
            (true, Arch::Arm64) => ARM64_MATRIX
                .iter()
                .map(|&(k, r)| (k.to_owned(), r))
                .collect(),
        };
        let (bin, vm_tests, scenarios) = if host_root(arch) {
            (oomtrace_bin(opts)?, None, opts.scenarios.clone())
        } else {
            let build = opts
                .builds
                .iter()
                .find(|(a, _)| *a == arch)
                .map(|(_, b)| b)
                .with_context(|| {
                    format!(
                        "no static {arch} build of the agent and tests for the {arch} guests: \
                         run them through `cargo xtask test --only vm --vm-arch {arch}`, which makes it"
                    )
                })?;
            let scenarios = if opts.scenarios.is_empty() {
                ARM64_SCENARIOS.iter().map(|s| (*s).to_owned()).collect()
            } else {
                opts.scenarios.clone()
            };
            (
                build.agent.display().to_string(),
                Some(build.vm_tests.display().to_string()),
                scenarios,
            )
        };
        for (spec, required) in kernels {
            entries.push(Entry {
                name: if host_root(arch) {
                    spec.clone()
                } else {
                    format!("{arch}/{spec}")
                },
                spec,
                arch,
                required,
                scenarios: scenarios.clone(),
                bin: bin.clone(),
                vm_tests: vm_tests.clone(),
            });
        }
    }
    Ok(entries)
}

/// Boot one VM per kernel of the matrix, run `xtask/vm/run-scenarios.sh`
/// in it, and fail if any scenario failed (or a VM did).
pub fn run_vm_tests(opts: &VmTestOpts) -> Result<()> {
    let wall = Instant::now();
    let matrix = matrix(opts)?;
    let runner = guest_dir()?.join("run-scenarios.sh");
    if !runner.is_file() {
        bail!("{} is missing", runner.display());
    }

    // Downloads first, one at a time (apt and the network do not like parallel runs).
    let mut results = Vec::new();
    let mut ready = Vec::new();
    for entry in &matrix {
        let prepared = kernel::prepare(&entry.spec, entry.arch, None, opts.refresh)
            .and_then(|k| initramfs::build(&k, &guest_dir()?.join("init")).map(|i| (k, i)));
        match prepared {
            Ok(ki) => ready.push((entry.clone(), ki)),
            Err(e) if !entry.required => {
                eprintln!("vm-test: WARNING: skipping kernel {}: {e:#}", entry.name);
            }
            Err(e) => results.push(KernelResult {
                name: entry.name.clone(),
                kernel: None,
                boot: None,
                total: Duration::ZERO,
                scenarios: Vec::new(),
                error: Some(format!("cannot prepare the kernel: {e:#}")),
            }),
        }
    }

    let jobs = opts
        .jobs
        .unwrap_or_else(|| auto_jobs(opts.memory))
        .clamp(1, ready.len().max(1));
    eprintln!(
        "vm-test: {} VM(s) ({}), {} at a time, {} MiB each",
        ready.len(),
        ready
            .iter()
            .map(|(e, _)| format!("{} accel {}", e.name, qemu::choose_accel(e.arch)))
            .collect::<Vec<_>>()
            .join(", "),
        jobs,
        opts.memory,
    );
    for arch in opts.arches() {
        if let Some((e, _)) = ready.iter().find(|(e, _)| e.arch == arch) {
            eprintln!(
                "vm-test: {arch}: OOMTRACE_BIN={}{}",
                if e.bin.is_empty() { "(none)" } else { &e.bin },
                e.vm_tests
                    .as_ref()
                    .map(|t| format!(", OOMTRACE_VM_TESTS={t}"))
                    .unwrap_or_default()
            );
        }
    }
    let userland = guest_userland(&ready, opts.refresh);
    let queue = Mutex::new(ready.into_iter());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            // Not `while let`: that would hold the queue lock while the VM runs.
            #[allow(clippy::while_let_loop)]
            s.spawn(|| {
                loop {
                    let Some((entry, (k, initrd))) = queue.lock().ok().and_then(|mut q| q.next())
                    else {
                        break;
                    };
                    let r = run_one(opts, &entry, &k, &initrd, &runner, &userland);
                    if let Ok(mut d) = done.lock() {
                        d.push(r);
                    }
                }
            });
        }
    });
    results.extend(done.into_inner().unwrap_or_default());
    // The host's architecture first, in matrix order.
    let order = |n: &str| {
        matrix
            .iter()
            .position(|e| e.name == n)
            .map(|i| (!host_root(matrix[i].arch), i))
            .unwrap_or((true, usize::MAX))
    };
    results.sort_by_key(|r| order(&r.name));

    println!(
        "\nVM test summary ({:.1} s wall, {jobs} VM(s) at a time):",
        wall.elapsed().as_secs_f64()
    );
    let mut failed = 0;
    for r in &results {
        let pass = r.scenarios.iter().filter(|s| s.0 == "PASS").count();
        let fail = r.scenarios.iter().filter(|s| s.0 == "FAIL").count();
        let skip = r.scenarios.iter().filter(|s| s.0 == "SKIP").count();
        let run_s: f64 = r.scenarios.iter().map(|s| s.2).sum();
        println!(
            "  {:<9} {:<55} boot {:>5}  scenarios {:>6.1} s  VM {:>6.1} s  {pass} passed, {fail} failed, {skip} skipped{}",
            r.name,
            r.kernel.as_deref().unwrap_or("-"),
            r.boot
                .map(|b| format!("{:.1}s", b.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            run_s,
            r.total.as_secs_f64(),
            r.error
                .as_ref()
                .map(|e| format!("  ERROR: {e}"))
                .unwrap_or_default()
        );
        for (st, name, secs) in &r.scenarios {
            println!("              {st} {name} ({secs:.1} s)");
        }
        if fail > 0 {
            println!("              console: {}", console_of(&r.name)?.display());
        }
        if fail > 0 || r.error.is_some() {
            failed += 1;
        }
    }
    // Why each failed scenario failed, last: CI shows the end of the output.
    for r in &results {
        let console = fs::read_to_string(console_of(&r.name)?).unwrap_or_default();
        for (_, name, _) in r.scenarios.iter().filter(|s| s.0 == "FAIL") {
            println!("\n[{}] {name} failed:", r.name);
            for l in failure_excerpt(&console, name) {
                println!("[{}]   | {l}", r.name);
            }
        }
    }
    if failed > 0 {
        bail!(
            "VM tests failed on {failed} of {} kernel(s); consoles are in {}",
            results.len(),
            runs_dir()?.display()
        );
    }
    if results.is_empty() {
        bail!("no kernel could be prepared for the VM tests");
    }
    Ok(())
}

/// The console log of the VM test run of kernel `name`.
fn console_of(name: &str) -> Result<PathBuf> {
    Ok(runs_dir()?
        .join(format!("test-{}", kernel::sanitize(name)))
        .join("console.log"))
}

/// Lines printed at most per failed scenario in the summary.
const EXCERPT_LINES: usize = 14;
/// Characters kept of each excerpt line (an assertion may embed a whole log).
const EXCERPT_WIDTH: usize = 240;

/// Why scenario `name` failed, from the guest's console: its test's panic
/// message up to the backtrace, else the scenario's `error:` lines, else its
/// last lines. The console's uptime stamps are dropped.
fn failure_excerpt(console: &str, name: &str) -> Vec<String> {
    let lines: Vec<&str> = console
        .lines()
        .map(|l| {
            let t = l.trim_start();
            match t.split_once(' ') {
                Some((stamp, rest)) if stamp.parse::<f64>().is_ok() => rest,
                _ => t,
            }
        })
        .collect();
    let start = lines
        .iter()
        .position(|l| *l == format!("=== RUN {name}"))
        .map_or(0, |i| i + 1);
    let end = lines[start..]
        .iter()
        .position(|l| l.starts_with(&format!("FAIL {name} ")))
        .map_or(lines.len(), |i| start + i);
    let section = &lines[start..end];
    let panic = section.iter().position(|l| l.contains("panicked at"));
    let picked: Vec<&str> = if let Some(p) = panic {
        section[p..]
            .iter()
            .take_while(|l| !l.starts_with("stack backtrace:") && !l.starts_with("note: run with"))
            .copied()
            .collect()
    } else {
        let errors: Vec<&str> = section
            .iter()
            .filter(|l| l.trim_start().starts_with("error:"))
            .copied()
            .collect();
        if errors.is_empty() {
            section[section.len().saturating_sub(EXCERPT_LINES)..].to_vec()
        } else {
            errors
        }
    };
    picked
        .into_iter()
        .take(EXCERPT_LINES)
        .map(|l| match l.char_indices().nth(EXCERPT_WIDTH) {
            Some((i, _)) => format!("{}...", &l[..i]),
            None => l.to_owned(),
        })
        .collect()
}

/// Debian packages the scenarios run inside the guests that share the
/// host's root (never installed or started on the host): downloaded and
/// extracted like the kernels, passed as `OOMTRACE_<NAME>` (the program's
/// path) or `OOMTRACE_<NAME>_ERROR` (why it could not be had).
/// - `earlyoom` (bookworm's 1.7): a real userspace OOM killer for the
///   `earlyoom` scenario.
fn guest_userland(ready: &[(Entry, (Kernel, PathBuf))], refresh: bool) -> Vec<(String, String)> {
    if !ready.iter().any(|(e, _)| host_root(e.arch)) {
        return Vec::new();
    }
    let arch = ready
        .iter()
        .find(|(e, _)| host_root(e.arch))
        .map(|(e, _)| e.arch)
        .unwrap_or(Arch::Amd64);
    match kernel::fetch_userland(arch, "earlyoom", refresh) {
        Ok((tree, ver)) => {
            let bin = tree.join("usr/bin/earlyoom");
            eprintln!("vm-test: earlyoom {ver}: {}", bin.display());
            vec![("OOMTRACE_EARLYOOM".into(), bin.display().to_string())]
        }
        Err(e) => {
            eprintln!("vm-test: WARNING: cannot download earlyoom: {e:#}");
            vec![("OOMTRACE_EARLYOOM_ERROR".into(), format!("{e:#}"))]
        }
    }
}

fn run_one(
    opts: &VmTestOpts,
    entry: &Entry,
    k: &Kernel,
    initrd: &Path,
    runner: &Path,
    userland: &[(String, String)],
) -> KernelResult {
    let spec = entry.name.as_str();
    let bin = entry.bin.as_str();
    let mut r = KernelResult {
        name: spec.to_owned(),
        kernel: Some(format!("{} [{}]", k.describe(), k.boot_notes())),
        boot: None,
        total: Duration::ZERO,
        scenarios: Vec::new(),
        error: None,
    };
    let res = (|| -> Result<()> {
        let scratch = runs_dir()?.join(format!("test-{}", kernel::sanitize(spec)));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)?;
        // The guest's /tmp and /run are its own tmpfs: a binary there must
        // travel via scratch (a guest with its own root mounts the repository
        // and target shares at their paths, after its tmpfs).
        let bin = if host_root(entry.arch) && (bin.starts_with("/tmp/") || bin.starts_with("/run/"))
        {
            fs::copy(bin, scratch.join("oomtrace")).with_context(|| format!("copying {bin}"))?;
            format!("{GUEST_SCRATCH}/oomtrace")
        } else {
            bin.to_owned()
        };
        let mut env = guest_env(k, Some(&bin))?;
        if !entry.scenarios.is_empty() {
            env.push(("OOMTRACE_SCENARIOS".into(), entry.scenarios.join(" ")));
        }
        if let Some(t) = &entry.vm_tests {
            env.push(("OOMTRACE_VM_TESTS".into(), t.clone()));
        }
        if host_root(entry.arch) {
            env.extend(userland.iter().cloned());
        }
        write_guest_command(
            &scratch,
            &env,
            &["/bin/sh".into(), runner.display().to_string()],
        )?;
        let log = scratch.join("console.log");
        let show: fn(&str) -> bool = |l| {
            l.starts_with("PASS ")
                || l.starts_with("FAIL ")
                || l.starts_with("SKIP ")
                || l.contains(" passed, ")
        };
        let console = if opts.verbose {
            qemu::Console::Filtered {
                label: spec.to_owned(),
                show: |_| true,
            }
        } else {
            qemu::Console::Filtered {
                label: spec.to_owned(),
                show,
            }
        };
        let out = qemu::run(&qemu::VmSpec {
            kernel: k,
            initramfs: initrd,
            memory_mib: opts.memory,
            smp: 2,
            timeout: Duration::from_secs(opts.timeout),
            scratch: &scratch,
            // Keep OOM kill lines off the slow emulated serial console (an OOM
            // storm would crawl); they stay in the kernel log (/dev/kmsg, dmesg).
            append: if opts.verbose {
                None
            } else {
                Some("loglevel=3")
            },
            console,
            log: log.clone(),
        })?;
        r.boot = out.boot;
        r.total = out.total;
        r.scenarios = fs::read_to_string(scratch.join("results.tsv"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((
                    f.next()?.to_owned(),
                    f.next()?.to_owned(),
                    f.next()?.parse().unwrap_or(0.0),
                ))
            })
            .collect();
        let problem = match out.exit {
            qemu::Exit::Code(0) if r.scenarios.is_empty() => Some("no scenario ran".to_owned()),
            qemu::Exit::Code(0) => None,
            qemu::Exit::Code(c) if r.scenarios.iter().any(|s| s.0 == "FAIL") => {
                let _ = c;
                None // reported per scenario
            }
            qemu::Exit::Code(c) => Some(format!("run-scenarios.sh exited with {c}")),
            qemu::Exit::Timeout => Some(format!(
                "timed out after {} s (raise --vm-timeout)",
                opts.timeout
            )),
            qemu::Exit::Failed(why) => Some(why),
        };
        if let Some(p) = problem {
            eprintln!("[{spec}] last console lines:");
            for l in &out.tail {
                eprintln!("[{spec}]   | {l}");
            }
            bail!("{p} (console: {})", log.display());
        }
        Ok(())
    })();
    if let Err(e) = res {
        r.error = Some(format!("{e:#}"));
    }
    r
}

/// As many VMs as the host's available memory allows, at most 3.
fn auto_jobs(memory_mib: u64) -> usize {
    let avail_mib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(2048);
    // Keep a quarter of what is available for everything else.
    let fit = (avail_mib * 3 / 4) / (memory_mib + QEMU_OVERHEAD_MIB);
    fit.clamp(1, 3) as usize
}

fn oomtrace_bin(opts: &VmTestOpts) -> Result<String> {
    if let Some(b) = &opts.oomtrace_bin {
        let b = fs::canonicalize(b).with_context(|| format!("--oomtrace-bin {}", b.display()))?;
        return Ok(b.display().to_string());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().map(|r| r.join("target")).unwrap_or_default());
    let newest = ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("oomtrace"))
        .filter(|p| p.is_file())
        .max_by_key(|p| kernel::mtime(p));
    Ok(match newest {
        Some(p) => fs::canonicalize(&p).unwrap_or(p).display().to_string(),
        None => {
            eprintln!(
                "vm-test: no oomtrace binary in {}/{{release,debug}}: scenarios that need it will fail (build it first)",
                target.display()
            );
            String::new()
        }
    })
}

// ---- shared helpers ------------------------------------------------------------

/// The workspace root (holds xtask/vm).
fn repo_root() -> Result<PathBuf> {
    if let Ok(r) = std::env::var("OOMTRACE_REPO") {
        return Ok(PathBuf::from(r));
    }
    let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    let mut candidates: Vec<PathBuf> = from_manifest.into_iter().collect();
    if let Ok(mut d) = std::env::current_dir() {
        loop {
            candidates.push(d.clone());
            if !d.pop() {
                break;
            }
        }
    }
    candidates
        .into_iter()
        .find(|c| c.join("xtask/vm/init").is_file())
        .and_then(|c| fs::canonicalize(c).ok())
        .context("cannot find the oomtrace workspace (no xtask/vm/init above the current directory); run from the repository")
}

fn guest_dir() -> Result<PathBuf> {
    Ok(repo_root()?.join("xtask/vm"))
}

/// `$OOMTRACE_VM_CACHE`, else `<repo>/target/vm-cache`.
fn cache_dir() -> Result<PathBuf> {
    let d = match std::env::var_os("OOMTRACE_VM_CACHE") {
        Some(d) => PathBuf::from(d),
        None => repo_root()?.join("target/vm-cache"),
    };
    fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Scratch dirs and consoles of VM runs; those of `cargo xtask vm` runs older
/// than a day are pruned.
fn runs_dir() -> Result<PathBuf> {
    let d = repo_root()?.join("target/vm-runs");
    fs::create_dir_all(&d)?;
    if let Ok(rd) = fs::read_dir(&d) {
        for e in rd.flatten() {
            let old = kernel::mtime(&e.path())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > Duration::from_secs(86400));
            if old && e.file_name().to_string_lossy().starts_with("vm-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(d)
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn tool_missing_hint(tool: &str, package: &str) -> String {
    format!("is `{tool}` installed? install the {package} package")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_scenarios_panic_is_excerpted_from_the_console() {
        // A real 6.1 guest console: 68-earlyoom failed on a missing earlyoom.
        let console = include_str!("testdata/console-failed-68-earlyoom.txt");
        let got = failure_excerpt(console, "68-earlyoom");
        assert_eq!(
            got,
            [
                "thread 'vm_earlyoom_kill_is_reported_as_a_userspace_oom_kill_of_the_pod' (145) \
                 panicked at oomtrace/tests/vm.rs:852:5:",
                "/nonexistent/earlyoom is missing",
            ]
        );
        // A scenario with no panic: its `error:` lines, else its last lines.
        let shell = "  1.00 === RUN 00-smoke\n  1.10   kernel 6.1\n  1.20   error: no memory controller in cgroup v2\n  1.30 FAIL 00-smoke (exit 1, 0.3 s)\n";
        assert_eq!(
            failure_excerpt(shell, "00-smoke"),
            ["  error: no memory controller in cgroup v2"]
        );
        let quiet =
            "  1.00 === RUN 00-smoke\n  1.10   kernel 6.1\n  1.30 FAIL 00-smoke (exit 1, 0.3 s)\n";
        assert_eq!(failure_excerpt(quiet, "00-smoke"), ["  kernel 6.1"]);
        // Long lines are cut.
        let long = format!(
            "=== RUN x\nthread 't' panicked at a.rs:1:1:\n{}\n",
            "y".repeat(1000)
        );
        assert_eq!(failure_excerpt(&long, "x")[1].len(), EXCERPT_WIDTH + 3);
    }

    #[test]
    fn arm64_guests_need_a_static_build_and_run_their_scenarios() {
        let opts = VmTestOpts {
            arches: vec![Arch::Arm64],
            ..VmTestOpts::default()
        };
        let err = format!("{:#}", matrix(&opts).expect_err("no build"));
        assert!(err.contains("--vm-arch arm64"), "{err}");

        let build = StaticBuild {
            agent: PathBuf::from("/w/target/aarch64-unknown-linux-musl/release/oomtrace"),
            vm_tests: PathBuf::from("/w/target/aarch64-unknown-linux-musl/release/deps/vm-1"),
        };
        let opts = VmTestOpts {
            builds: vec![(Arch::Arm64, build)],
            ..opts
        };
        let m = matrix(&opts).expect("matrix");
        assert_eq!(m.len(), ARM64_MATRIX.len());
        let e = &m[0];
        assert_eq!((e.name.as_str(), e.spec.as_str()), ("arm64/6.1", "6.1"));
        assert_eq!(e.scenarios, ARM64_SCENARIOS);
        assert_eq!(
            e.bin,
            "/w/target/aarch64-unknown-linux-musl/release/oomtrace"
        );
        assert_eq!(
            e.vm_tests.as_deref(),
            Some("/w/target/aarch64-unknown-linux-musl/release/deps/vm-1")
        );
        assert!(!host_root(Arch::Arm64) || Arch::host() == Some(Arch::Arm64));
    }
}
