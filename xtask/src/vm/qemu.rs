//! Boot one VM under qemu, stream or capture its console, enforce the
//! timeout, and read the command's exit code back from the scratch share.

use super::host_root;
use super::kernel::Kernel;
use crate::arch::Arch;
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Console marker lines printed by xtask/vm/init.
pub const START_MARKER: &str = "OOMTRACE-VM-START";
pub const EXIT_MARKER: &str = "OOMTRACE-VM-EXIT ";
pub const FAIL_MARKER: &str = "OOMTRACE-VM-FAILED:";
const TAIL_LINES: usize = 60;

/// What to do with the guest console as it arrives.
#[derive(Clone)]
pub enum Console {
    /// Print every line (after the guest starts the command, or all with `all`).
    Stream { all: bool },
    /// Print lines that `show` accepts, prefixed with `[label] `.
    Filtered {
        label: String,
        show: fn(&str) -> bool,
    },
}

pub struct VmSpec<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    pub memory_mib: u64,
    pub smp: u32,
    pub timeout: Duration,
    /// Host directory shared writable with the guest (holds cmd.sh, exit-code).
    pub scratch: &'a Path,
    pub append: Option<&'a str>,
    pub console: Console,
    /// Where the whole console is written, each line prefixed with the
    /// seconds since qemu started.
    pub log: PathBuf,
}

#[derive(Debug)]
pub enum Exit {
    Code(i32),
    Timeout,
    /// The VM stopped without reporting an exit code.
    Failed(String),
}

pub struct Outcome {
    pub exit: Exit,
    /// From qemu start to the guest starting the command.
    pub boot: Option<Duration>,
    pub total: Duration,
    pub tail: Vec<String>,
    pub accel: &'static str,
}

/// KVM only for a guest of the host's architecture when the CPU really has
/// VT-x/AMD-V and /dev/kvm opens: on these machines /dev/kvm exists but is a
/// paravirtual device stock kernels hang on. `OOMTRACE_VM_ACCEL=tcg|kvm`
/// overrides.
pub fn choose_accel(arch: Arch) -> &'static str {
    match std::env::var("OOMTRACE_VM_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    if Arch::host() != Some(arch) {
        return "tcg";
    }
    let cpu_ok = fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    let dev_ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if cpu_ok && dev_ok { "kvm" } else { "tcg" }
}

pub fn qemu_binary(arch: Arch) -> Result<&'static str> {
    let (bin, package) = match arch {
        Arch::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
        Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
    };
    match Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(bin),
        _ => anyhow::bail!(
            "{bin} is not installed or does not run: install the {package} package (cargo xtask setup does)"
        ),
    }
}

/// The machine, CPU and console of an `arch` guest. arm64: qemu's `virt`
/// board with a Neoverse N1 (Graviton2, Ampere Altra): under TCG `-cpu max`
/// emulates pointer authentication with QARMA and took 56 s to boot where
/// neoverse-n1 took 12 s (measured here, kernel 6.1).
fn machine(arch: Arch, accel: &str) -> (Vec<&'static str>, &'static str) {
    match arch {
        Arch::Amd64 => (
            vec!["-cpu", "max"],
            "console=ttyS0 no_timer_check tsc=reliable",
        ),
        Arch::Arm64 => (
            vec![
                "-machine",
                "virt",
                "-cpu",
                if accel == "kvm" {
                    "host"
                } else {
                    "neoverse-n1"
                },
            ],
            "console=ttyAMA0",
        ),
    }
}

pub fn run(spec: &VmSpec) -> Result<Outcome> {
    let arch = spec.kernel.arch;
    let qemu = qemu_binary(arch)?;
    let accel = choose_accel(arch);
    let scratch = spec
        .scratch
        .canonicalize()
        .with_context(|| format!("scratch dir {}", spec.scratch.display()))?;
    let _ = fs::remove_file(scratch.join("exit-code"));
    let repo = crate::util::repo_root();
    fs::write(scratch.join("repo-path"), repo.display().to_string())
        .with_context(|| format!("writing {}", scratch.join("repo-path").display()))?;
    // A guest with its own root sees the build output only through a share:
    // the repository's, or the target dir's own when it lives elsewhere.
    let target = crate::util::target_dir();
    let target_share = (!host_root(arch) && !target.starts_with(&repo)).then_some(&target);
    let _ = fs::remove_file(scratch.join("target-path"));
    if let Some(t) = target_share {
        fs::write(scratch.join("target-path"), t.display().to_string())?;
    }
    let (machine, console) = machine(arch, accel);
    let mut append = format!("{console} quiet panic=-1 oops=panic random.trust_cpu=on");
    if let Some(a) = spec.append {
        append.push(' ');
        append.push_str(a);
    }
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-no-user-config",
        "-serial",
        "stdio",
    ])
    .args(&machine)
    .args([
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.smp.to_string(),
        "-accel",
        accel,
    ])
    .arg("-kernel")
    .arg(&spec.kernel.image)
    .arg("-initrd")
    .arg(spec.initramfs)
    .args(["-append", &append, "-nic", "none"]);
    if host_root(arch) {
        cmd.args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]);
    }
    if let Some(t) = target_share {
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=target,security_model=none,readonly=on,multidevs=remap",
            t.display()
        ));
    }
    cmd.arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=scratch,security_model=none,multidevs=remap",
            scratch.display()
        ))
        // The repository again, on its own: the guest mounts tmpfs on /tmp,
        // /var/tmp and /run, which would hide a checkout that lives there.
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=repo,security_model=none,readonly=on,multidevs=remap",
            repo.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {qemu}"))?;

    let log = Arc::new(Mutex::new(
        File::create(&spec.log).with_context(|| format!("creating {}", spec.log.display()))?,
    ));
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES + 1)));
    let boot: Arc<Mutex<Option<Duration>>> = Arc::default();
    let exit_line: Arc<Mutex<Option<i32>>> = Arc::default();
    let fail_line: Arc<Mutex<Option<String>>> = Arc::default();

    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let reader = |stream: Box<dyn std::io::Read + Send>, from_qemu: bool| {
        let (log, tail, boot, exit_line, fail_line, console) = (
            log.clone(),
            tail.clone(),
            boot.clone(),
            exit_line.clone(),
            fail_line.clone(),
            spec.console.clone(),
        );
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut raw = Vec::new();
            let mut started_cmd = false;
            while r.read_until(b'\n', &mut raw).unwrap_or(0) > 0 {
                let line =
                    strip_escapes(String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']));
                raw.clear();
                let line = if from_qemu {
                    format!("[qemu] {line}")
                } else {
                    line
                };
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "{:7.2} {line}", started.elapsed().as_secs_f64());
                }
                if let Ok(mut t) = tail.lock() {
                    t.push_back(line.clone());
                    if t.len() > TAIL_LINES {
                        t.pop_front();
                    }
                }
                let marker = if line.contains(START_MARKER) {
                    if let Ok(mut b) = boot.lock() {
                        b.get_or_insert(started.elapsed());
                    }
                    started_cmd = true;
                    true
                } else if let Some(code) = line
                    .find(EXIT_MARKER)
                    .map(|i| &line[i + EXIT_MARKER.len()..])
                {
                    if let Ok(mut e) = exit_line.lock() {
                        *e = code.trim().parse().ok();
                    }
                    true
                } else if let Some(msg) = line
                    .find(FAIL_MARKER)
                    .map(|i| &line[i + FAIL_MARKER.len()..])
                {
                    if let Ok(mut f) = fail_line.lock() {
                        *f = Some(msg.trim().to_owned());
                    }
                    false
                } else {
                    false
                };
                match &console {
                    Console::Stream { all } if !marker && (*all || started_cmd || from_qemu) => {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                    Console::Filtered { label, show } if from_qemu || show(&line) => {
                        println!("[{label}] {line}")
                    }
                    _ => {}
                }
            }
        })
    };
    let t_out = reader(Box::new(stdout), false);
    let t_err = reader(Box::new(stderr), true);

    let deadline = started + spec.timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let total = started.elapsed();
    let _ = t_out.join();
    let _ = t_err.join();

    let tail: Vec<String> = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    let boot = boot.lock().ok().and_then(|b| *b);
    let from_file = fs::read_to_string(scratch.join("exit-code"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let from_console = exit_line.lock().ok().and_then(|e| *e);
    let exit = match (status, from_file.or(from_console)) {
        (None, _) => Exit::Timeout,
        (Some(_), Some(code)) => Exit::Code(code),
        (Some(st), None) => {
            let why = fail_line.lock().ok().and_then(|f| f.clone());
            Exit::Failed(match (why, boot) {
                (Some(w), _) => format!("the guest init failed: {w}"),
                (None, None) => format!(
                    "the guest never started the command (qemu {st}); the kernel or init failed to boot"
                ),
                (None, Some(_)) => format!(
                    "the guest started the command but reported no exit code (qemu {st}): kernel panic or power loss?"
                ),
            })
        }
    };
    Ok(Outcome {
        exit,
        boot,
        total,
        tail,
        accel,
    })
}

/// Drop terminal escape sequences (SeaBIOS clears the screen) and stray CRs.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters up to a final byte in @..~
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}
