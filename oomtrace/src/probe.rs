//! Loads the eBPF object, attaches the hook chain and reads the ring buffer.
//!
//! The chain, chosen at start-up from what the running kernel offers:
//!
//! 1. `tracepoint/oom/mark_victim`: one event per victim on every kernel since
//!    ~4.13; its layout comes from the tracepoint's `format` file.
//! 2. `tp_btf/mark_victim`: the victim `task_struct` (new ABI, 6.9+ and
//!    backports): its memory cgroup, ancestors with usage and limits, and
//!    `oom_score_adj`, read with offsets from BTF.
//! 3. `fentry/oom_kill_process`, else `kprobe/oom_kill_process`: the kernel's
//!    decision (`struct oom_control`).
//! 4. `fentry/oom_kill_memcg_member`, else its kprobe, where `tp_btf` is not
//!    active: the memory cgroup of each task a memory.oom.group kill takes,
//!    which the pid-only tracepoint cannot name once the task is gone.
//! 5. `/dev/kmsg` (see [`crate::kmsg`]), which also works when nothing here loads.
//!
//! Beside the chain, for kills the kernel's OOM killer did not do:
//! `tp_btf/signal_generate`, else `tracepoint/signal/signal_generate`: a
//! SIGKILL or SIGTERM sent by a process whose name is on the
//! `--userspace-killers` list (earlyoom, systemd-oomd, ...), with the target's
//! identity and (tp_btf) its memory cgroup. The name is only the kernel's
//! prefilter: userspace confirms the sender before calling it a memory killer.
//!
//! Every hook that does not attach is reported with the reason, and the agent
//! carries on with the rest. The programs' own log lines (a full ring
//! buffer, failed kernel reads) are forwarded into `tracing` under the target
//! `oomtrace_ebpf`.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, KProbe, TracePoint},
};
use aya_log::EbpfLogger;
use oomtrace_common::{
    COMM_LEN, DEFAULT_RINGBUF_BYTES, EVENTS_MAP, KILLERS_GLOBAL, KillerNames, LOG_MAP,
    LOG_MAP_BYTES, LOG_TARGET, MAX_KILLERS, OFFSETS_GLOBAL, PROG_BTF_MARK_VICTIM, PROG_BTF_SIGNAL,
    PROG_FENTRY_GROUP_MEMBER, PROG_FENTRY_OOM_KILL, PROG_KPROBE_GROUP_MEMBER, PROG_KPROBE_OOM_KILL,
    PROG_TP_MARK_VICTIM, PROG_TP_SIGNAL, SIGNAL_LAYOUT_GLOBAL, STAT_FILTERED_SIGNAL,
    STAT_FIRED_BTF_VICTIM, STAT_FIRED_DECISION, STAT_FIRED_GROUP_MEMBER, STAT_FIRED_TP_VICTIM,
    STAT_LISTED_SIGNAL, STAT_LOST_BTF_VICTIM, STAT_LOST_DECISION, STAT_LOST_GROUP_MEMBER,
    STAT_LOST_SIGNAL, STAT_LOST_TP_VICTIM, STAT_READ_ERRORS, STAT_READ_FAILED_RUNS, STATS_MAP,
    SignalLayout, TP_LAYOUT_GLOBAL, TP_RECORD_MAX, TracepointLayout,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::{
    btf::{Btf, ParamType},
    offsets::{self, Resolved},
    tracefs::{self, Format, MarkVictimLayout},
};

/// The default `--userspace-killers`: the process names (`comm`) of the
/// userspace OOM killers people run on Linux and Kubernetes nodes.
///
/// - `systemd-oomd` (systemd's, PSI and swap based; kills a unit's cgroup),
/// - `earlyoom` (MemAvailable/SwapFree thresholds; SIGTERM first, then SIGKILL),
/// - `oomd` (Meta's, the ancestor of systemd-oomd),
/// - `nohang` (a Python script: a script's `comm` is the script's file name),
/// - `init`: Talos Linux's `machined`. Its userspace OOM controller
///   (`runtime.OOMController`, Talos 1.12+) runs inside machined, which is PID 1:
///   Talos's initramfs execs it as `/sbin/init` ("/sbin/init is machined. We
///   call it init since this is the convention", internal/app/init/main.go),
///   and the kernel names a task after the file it executed, so its comm is
///   `init` (`talosctl cgroups` lists the init cgroup's process as `[init]`).
///   It kills by writing `cgroup.kill`, and the kernel sends those SIGKILLs in
///   the writer's context, so they reach this hook with machined as sender.
///   `init` is also the name of other systems' PID 1 and of some containers'
///   init processes: the name only lets the record through to userspace, which
///   confirms the sender by its executable and namespaces.
pub const DEFAULT_USERSPACE_KILLERS: [&str; 5] =
    ["systemd-oomd", "earlyoom", "oomd", "nohang", "init"];

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oomtrace"));

/// A capture source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Tracepoint,
    TpBtf,
    Fentry,
    Kprobe,
    FentryGroup,
    KprobeGroup,
    Kmsg,
    /// `tp_btf/signal_generate`: SIGKILL/SIGTERM from a userspace OOM killer.
    TpBtfSignal,
    /// `tracepoint/signal/signal_generate`, where `tp_btf` is not available.
    TracepointSignal,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint/oom/mark_victim",
            Self::TpBtf => "tp_btf/mark_victim",
            Self::Fentry => "fentry/oom_kill_process",
            Self::Kprobe => "kprobe/oom_kill_process",
            Self::FentryGroup => "fentry/oom_kill_memcg_member",
            Self::KprobeGroup => "kprobe/oom_kill_memcg_member",
            Self::Kmsg => "/dev/kmsg",
            Self::TpBtfSignal => "tp_btf/signal_generate",
            Self::TracepointSignal => "tracepoint/signal/signal_generate",
        }
    }

    /// Whether the hook reports OOM kills (the signal hook reports senders,
    /// and does not make a kill report on its own).
    pub fn captures_oom_kills(self) -> bool {
        !matches!(
            self,
            Self::FentryGroup | Self::KprobeGroup | Self::TpBtfSignal | Self::TracepointSignal
        )
    }

    /// The word used in a kill's `sources` list.
    pub fn source(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::TpBtf => "tp_btf",
            Self::Fentry | Self::Kprobe => "oom_control",
            Self::FentryGroup | Self::KprobeGroup => "oom_group_scan",
            Self::Kmsg => "kmsg",
            Self::TpBtfSignal | Self::TracepointSignal => "signal",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which hooks the user turned off.
#[derive(Clone, Debug, Default)]
pub struct Disabled {
    pub tracepoint: bool,
    pub tp_btf: bool,
    pub fentry: bool,
    pub kprobe: bool,
    /// `--no-signal-hook`: both signal_generate hooks.
    pub signal: bool,
}

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub tracefs: Option<PathBuf>,
    pub btf: PathBuf,
    pub disabled: Disabled,
    pub ringbuf_bytes: u32,
    /// `--userspace-killers`: sender names the signal hook reports.
    pub killers: Vec<String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            tracefs: None,
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
            disabled: Disabled::default(),
            ringbuf_bytes: DEFAULT_RINGBUF_BYTES,
            killers: DEFAULT_USERSPACE_KILLERS
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
        }
    }
}

/// Checks one `--userspace-killers` name: what the kernel keeps of a process
/// name is 15 bytes, compared exactly.
pub fn parse_killer_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err(
            "an empty process name: give names separated by commas, or turn the hook off with --no-signal-hook".to_string(),
        );
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains a NUL byte"));
    }
    if name.len() >= COMM_LEN {
        let mut cut = COMM_LEN - 1;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(format!(
            "{name:?} is {} bytes: the kernel keeps only the first 15 bytes of a process name, give those ({:?})",
            name.len(),
            &name[..cut]
        ));
    }
    Ok(name.to_string())
}

/// The [`KillerNames`] global for `names` (each checked by [`parse_killer_name`]).
pub fn killer_names(names: &[String]) -> Result<KillerNames, String> {
    if names.len() > MAX_KILLERS {
        return Err(format!(
            "--userspace-killers has {} names; the kernel side compares at most {MAX_KILLERS}: keep the ones this node runs",
            names.len()
        ));
    }
    let mut out = KillerNames::zeroed();
    for (slot, name) in out.names.iter_mut().zip(names) {
        let name = parse_killer_name(name)?;
        slot[..name.len()].copy_from_slice(name.as_bytes());
    }
    out.count = names.len() as u32;
    Ok(out)
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "this oomtrace was built without its eBPF programs (AYA_BUILD_SKIP): rebuild with `cargo xtask build`, or run with --no-bpf"
    )]
    NoObject,
    #[error(
        "cannot load the eBPF object: {0}: run as root (or with CAP_BPF and CAP_PERFMON), or run with --no-bpf"
    )]
    Load(#[source] aya::EbpfError),
    #[error("no eBPF hook could be attached ({0}); run `oomtrace doctor`, or run with --no-bpf")]
    NothingAttached(String),
    #[error("the ring buffer map {EVENTS_MAP} is missing from the eBPF object: rebuild oomtrace")]
    NoRingBuf,
    #[error("cannot poll the ring buffer: {0}")]
    Poll(#[source] std::io::Error),
}

/// The loaded programs, with what is active and why the rest is not.
pub struct Probe {
    ebpf: Ebpf,
    pub active: Vec<Hook>,
    /// One line per hook that is not active, with the reason.
    pub inactive: Vec<(Hook, String)>,
    /// Layout of the classic tracepoint record, to decode [`oomtrace_common::TpVictim`].
    pub layout: Option<MarkVictimLayout>,
    /// Offsets that could not be resolved (they limit what is captured).
    pub missing_offsets: Vec<String>,
    /// The programs' log lines, when no tokio runtime was there to forward
    /// them (kept so the map outlives the programs that write to it).
    _logger: Option<EbpfLogger<&'static dyn log::Log>>,
}

/// What the kernel offers, found before loading anything (also used by `doctor`).
pub struct KernelSupport {
    pub tracefs: Result<PathBuf, String>,
    pub layout: Result<MarkVictimLayout, String>,
    pub btf: Result<Btf, String>,
    pub offsets: Option<Resolved>,
    /// Whether `tp_btf/mark_victim` receives the victim `task_struct *`.
    pub tp_btf_task_arg: Result<(), String>,
    /// Whether BTF has a FUNC `oom_kill_process` (needed for fentry).
    pub oom_kill_process_func: bool,
    /// Whether `/proc/kallsyms` lists `oom_kill_process` (needed for a kprobe).
    pub oom_kill_process_kallsyms: bool,
    /// The same two facts for `oom_kill_memcg_member`.
    pub group_member_func: bool,
    pub group_member_kallsyms: bool,
    /// The classic `signal/signal_generate` record's layout.
    pub signal_layout: Result<SignalLayout, String>,
    /// Whether `tp_btf/signal_generate` receives the target `task_struct *`.
    pub signal_tp_btf_args: Result<(), String>,
}

impl KernelSupport {
    pub fn discover(cfg: &ProbeConfig) -> Self {
        let tracefs = tracefs::find_tracefs(cfg.tracefs.as_deref()).map_err(|e| e.to_string());
        let layout = match &tracefs {
            Ok(root) => read_layout(root),
            Err(e) => Err(e.clone()),
        };
        let btf = Btf::from_file(&cfg.btf).map_err(|e| e.to_string());
        let offsets = btf.as_ref().ok().map(offsets::resolve);
        let tp_btf_task_arg = match &btf {
            Ok(btf) => match btf.tracepoint_args("mark_victim") {
                Ok(args) => match args.first() {
                    Some(ParamType::PtrToStruct(name)) if name == "task_struct" => Ok(()),
                    Some(other) => Err(format!(
                        "this kernel's mark_victim passes {other:?}, not the victim task_struct (the pid-only ABI before 6.9)"
                    )),
                    None => Err("mark_victim has no arguments in BTF".to_string()),
                },
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.clone()),
        };
        let oom_kill_process_func = btf.as_ref().is_ok_and(|b| b.has_func("oom_kill_process"));
        let group_member_func = btf
            .as_ref()
            .is_ok_and(|b| b.has_func("oom_kill_memcg_member"));
        let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let in_kallsyms = |name: &str| {
            kallsyms
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some(name))
        };
        let oom_kill_process_kallsyms = in_kallsyms("oom_kill_process");
        let group_member_kallsyms = in_kallsyms("oom_kill_memcg_member");
        let signal_layout = match &tracefs {
            Ok(root) => tracefs::read_format(root, "signal", "signal_generate")
                .map_err(|e| e.to_string())
                .and_then(|f| signal_layout(&f)),
            Err(e) => Err(e.clone()),
        };
        let signal_tp_btf_args = match &btf {
            Ok(btf) => btf
                .tracepoint_args("signal_generate")
                .map_err(|e| e.to_string())
                .and_then(|args| signal_args_ok(&args)),
            Err(e) => Err(e.clone()),
        };
        Self {
            tracefs,
            layout,
            btf,
            offsets,
            tp_btf_task_arg,
            oom_kill_process_func,
            oom_kill_process_kallsyms,
            group_member_func,
            group_member_kallsyms,
            signal_layout,
            signal_tp_btf_args,
        }
    }
}

/// The offsets the classic signal program reads, from the tracepoint's
/// `format` file: the ints must be 4 bytes and `comm` a 16-byte array.
pub fn signal_layout(format: &Format) -> Result<SignalLayout, String> {
    let field = |name: &str, size: u32| -> Result<u32, String> {
        let f = format.field(name).ok_or_else(|| {
            format!("signal_generate has no field {name} (an unknown tracepoint layout)")
        })?;
        if f.size != size || f.data_loc || f.rel_loc {
            return Err(format!(
                "signal_generate field {name} is {} bytes{} where {size} were expected",
                f.size,
                if f.data_loc || f.rel_loc {
                    " (a __data_loc string)"
                } else {
                    ""
                }
            ));
        }
        Ok(f.offset)
    };
    Ok(SignalLayout {
        valid: 1,
        sig: field("sig", 4)?,
        errno: field("errno", 4)?,
        code: field("code", 4)?,
        comm: field("comm", COMM_LEN as u32)?,
        pid: field("pid", 4)?,
        group: field("group", 4)?,
        result: field("result", 4)?,
    })
}

/// `TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)`.
fn signal_args_ok(args: &[ParamType]) -> Result<(), String> {
    match args {
        [
            ParamType::Int { size: 4, .. },
            _,
            ParamType::PtrToStruct(task),
            ..,
        ] if task == "task_struct" && args.len() == 5 => Ok(()),
        other => Err(format!(
            "this kernel's signal_generate passes {other:?}, not (int sig, siginfo, task_struct *, int group, int result)"
        )),
    }
}

/// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK (5.11
/// moved them to memory cgroup accounting), and a default limit of 64 KiB or
/// 8 MiB does not hold a 4 MiB ring buffer and the programs. There the limit
/// is raised to unlimited (or to the hard limit, without CAP_SYS_RESOURCE)
/// before anything is loaded; newer kernels ignore it. Returns what was done.
///
/// aya 0.14 also retries a map or program creation that failed with EPERM
/// on such kernels after raising the limit to unlimited (`sys/bpf.rs`,
/// `with_raised_rlimit_retry`), but silently, and without the hard-limit
/// fallback: doing it here first says what happened.
pub fn raise_memlock(release: &str) -> String {
    if !kernel_before(release, (5, 11)) {
        return format!(
            "kernel {release} accounts BPF memory to memory cgroups: RLIMIT_MEMLOCK left as it is"
        );
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `old`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut old) } != 0 {
        return format!(
            "kernel {release} charges BPF maps to RLIMIT_MEMLOCK, which cannot be read: {}",
            io_error()
        );
    }
    let show = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", v / 1024)
        }
    };
    if old.rlim_cur == libc::RLIM_INFINITY {
        return format!(
            "kernel {release} charges BPF maps to RLIMIT_MEMLOCK, which is already unlimited"
        );
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads `unlimited`.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return format!(
            "kernel {release} charges BPF maps to RLIMIT_MEMLOCK: raised it from {} to unlimited",
            show(old.rlim_cur)
        );
    }
    let err = io_error();
    let hard = libc::rlimit {
        rlim_cur: old.rlim_max,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads `hard`.
    if old.rlim_max > old.rlim_cur && unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &hard) } == 0 {
        return format!(
            "kernel {release} charges BPF maps to RLIMIT_MEMLOCK: raised it from {} to the hard limit {} (unlimited was refused: {err}; grant CAP_SYS_RESOURCE if loading fails)",
            show(old.rlim_cur),
            show(old.rlim_max)
        );
    }
    format!(
        "kernel {release} charges BPF maps to RLIMIT_MEMLOCK ({}) and it could not be raised ({err}): grant CAP_SYS_RESOURCE (deploy/components/legacy-kernel), or raise it before starting oomtrace (`ulimit -l unlimited`, LimitMEMLOCK=infinity)",
        show(old.rlim_cur)
    )
}

fn io_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Whether a kernel release string (`5.10.0-32-amd64`) is older than `version`.
/// An unreadable release counts as old (raising the limit is harmless).
fn kernel_before(release: &str, version: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < version,
        _ => true,
    }
}

fn read_layout(tracefs_root: &Path) -> Result<MarkVictimLayout, String> {
    let path = tracefs_root.join("events/oom/mark_victim/format");
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {}: {e} (kernel without the oom:mark_victim tracepoint, or tracefs not readable)",
            path.display()
        )
    })?;
    let format = tracefs::parse_format(&text).map_err(|e| e.to_string())?;
    MarkVictimLayout::from_format(&format).map_err(|e| e.to_string())
}

impl Probe {
    /// Loads the object and attaches every hook the kernel allows.
    pub fn load(cfg: &ProbeConfig, support: KernelSupport) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let KernelSupport {
            layout,
            btf,
            offsets,
            tp_btf_task_arg,
            oom_kill_process_func,
            oom_kill_process_kallsyms,
            group_member_func,
            group_member_kallsyms,
            signal_layout,
            signal_tp_btf_args,
            ..
        } = support;
        let mut inactive = Vec::new();
        let layout = match layout {
            Ok(l) => Some(l),
            Err(e) => {
                inactive.push((Hook::Tracepoint, e));
                None
            }
        };
        let tp_layout = TracepointLayout {
            pid_offset: layout.as_ref().map_or(8, |l| l.pid.offset),
            record_len: layout
                .as_ref()
                .map_or(0, |l| l.record_len.min(TP_RECORD_MAX as u32)),
        };
        let resolved = offsets.unwrap_or_else(|| Resolved {
            offsets: oomtrace_common::KernelOffsets::zeroed(),
            missing: vec!["no BTF: kernel struct offsets unknown".to_string()],
        });
        // Our parse is no longer needed: free it before aya parses the same
        // file, so start-up holds one copy of the kernel's BTF, not two.
        let btf_ok = btf.is_ok();
        drop(btf);
        let aya_btf = aya::Btf::parse_file(&cfg.btf, aya::Endianness::default()).ok();

        let killers = if cfg.disabled.signal {
            Err("disabled by --no-signal-hook".to_string())
        } else {
            killer_names(&cfg.killers)
        };
        let killers_global = killers.as_ref().copied().unwrap_or(KillerNames::zeroed());
        let signal_global = signal_layout
            .as_ref()
            .copied()
            .unwrap_or(SignalLayout::zeroed());
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        info!("{}", raise_memlock(release.trim()));
        let log_level = kernel_log_level();

        let mut ebpf = EbpfLoader::new()
            .btf(aya_btf.as_ref())
            .override_global(OFFSETS_GLOBAL, &resolved.offsets, true)
            .override_global(TP_LAYOUT_GLOBAL, &tp_layout, true)
            .override_global(SIGNAL_LAYOUT_GLOBAL, &signal_global, true)
            .override_global(KILLERS_GLOBAL, &killers_global, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .map_max_entries(EVENTS_MAP, cfg.ringbuf_bytes)
            .map_max_entries(LOG_MAP, LOG_MAP_BYTES)
            .load(OBJECT)
            .map_err(ProbeError::Load)?;

        let mut active = Vec::new();
        // 1. The classic tracepoint.
        if cfg.disabled.tracepoint {
            inactive.push((Hook::Tracepoint, "disabled by --no-tracepoint".to_string()));
        } else if layout.is_some() {
            match attach_tracepoint(&mut ebpf) {
                Ok(()) => active.push(Hook::Tracepoint),
                Err(e) => inactive.push((Hook::Tracepoint, e)),
            }
        }
        // 2. tp_btf: needs BTF, the task argument and the walk offsets.
        if cfg.disabled.tp_btf {
            inactive.push((Hook::TpBtf, "disabled by --no-tp-btf".to_string()));
        } else {
            let ready = match (&aya_btf, &tp_btf_task_arg, btf_ok) {
                (None, _, _) | (_, _, false) => {
                    Err(format!("no usable BTF at {}", cfg.btf.display()))
                }
                (_, Err(e), _) => Err(e.clone()),
                (Some(b), Ok(()), true) if resolved.walk_ok() => Ok(b),
                _ => Err(format!(
                    "kernel struct offsets missing: {}",
                    resolved.missing.join("; ")
                )),
            };
            match ready.and_then(|b| attach_tp_btf(&mut ebpf, b)) {
                Ok(()) => active.push(Hook::TpBtf),
                Err(e) => inactive.push((Hook::TpBtf, e)),
            }
        }
        // 3. The decision: fentry, else kprobe.
        let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
        let mut decision = false;
        if cfg.disabled.fentry {
            inactive.push((Hook::Fentry, "disabled by --no-fentry".to_string()));
        } else if !resolved.oom_control_ok() {
            inactive.push((Hook::Fentry, "struct oom_control not in BTF".to_string()));
        } else if !oom_kill_process_func {
            inactive.push((
                Hook::Fentry,
                "no BTF FUNC oom_kill_process (inlined or no BTF)".to_string(),
            ));
        } else if let Some(b) = &aya_btf {
            match attach_fentry(&mut ebpf, b, PROG_FENTRY_OOM_KILL, "oom_kill_process") {
                Ok(()) => {
                    active.push(Hook::Fentry);
                    decision = true;
                }
                Err(e) => inactive.push((Hook::Fentry, e)),
            }
        }
        if decision {
            inactive.push((Hook::Kprobe, "not needed: fentry is attached".to_string()));
        } else if cfg.disabled.kprobe {
            inactive.push((Hook::Kprobe, "disabled by --no-kprobe".to_string()));
        } else if !resolved.oom_control_ok() {
            inactive.push((Hook::Kprobe, "struct oom_control not in BTF".to_string()));
        } else if !kprobe_pmu {
            inactive.push((
                Hook::Kprobe,
                "no kprobe PMU (/sys/bus/event_source/devices/kprobe): kernel built without CONFIG_KPROBES".to_string(),
            ));
        } else if !oom_kill_process_kallsyms {
            inactive.push((
                Hook::Kprobe,
                "oom_kill_process is not in /proc/kallsyms (inlined, or kallsyms hidden)"
                    .to_string(),
            ));
        } else {
            match attach_kprobe(&mut ebpf, PROG_KPROBE_OOM_KILL, "oom_kill_process") {
                Ok(()) => active.push(Hook::Kprobe),
                Err(e) => inactive.push((Hook::Kprobe, e)),
            }
        }
        // 4. Group members: only where tp_btf does not already name every victim's cgroup.
        let mut group = false;
        if active.contains(&Hook::TpBtf) {
            for h in [Hook::FentryGroup, Hook::KprobeGroup] {
                inactive.push((
                    h,
                    "not needed: tp_btf/mark_victim names every victim's cgroup".to_string(),
                ));
            }
        } else if !resolved.walk_ok() {
            for h in [Hook::FentryGroup, Hook::KprobeGroup] {
                inactive.push((
                    h,
                    format!(
                        "kernel struct offsets missing: {}",
                        resolved.missing.join("; ")
                    ),
                ));
            }
        } else {
            if cfg.disabled.fentry {
                inactive.push((Hook::FentryGroup, "disabled by --no-fentry".to_string()));
            } else if !group_member_func {
                inactive.push((
                    Hook::FentryGroup,
                    "no BTF FUNC oom_kill_memcg_member (no BTF, or a kernel without memory.oom.group)".to_string(),
                ));
            } else if let Some(b) = &aya_btf {
                match attach_fentry(
                    &mut ebpf,
                    b,
                    PROG_FENTRY_GROUP_MEMBER,
                    "oom_kill_memcg_member",
                ) {
                    Ok(()) => {
                        active.push(Hook::FentryGroup);
                        group = true;
                    }
                    Err(e) => inactive.push((Hook::FentryGroup, e)),
                }
            }
            if group {
                inactive.push((
                    Hook::KprobeGroup,
                    "not needed: fentry is attached".to_string(),
                ));
            } else if cfg.disabled.kprobe {
                inactive.push((Hook::KprobeGroup, "disabled by --no-kprobe".to_string()));
            } else if !kprobe_pmu {
                inactive.push((
                    Hook::KprobeGroup,
                    "no kprobe PMU: kernel built without CONFIG_KPROBES".to_string(),
                ));
            } else if !group_member_kallsyms {
                inactive.push((
                    Hook::KprobeGroup,
                    "oom_kill_memcg_member is not in /proc/kallsyms (kallsyms hidden, or a kernel without memory.oom.group)".to_string(),
                ));
            } else {
                match attach_kprobe(&mut ebpf, PROG_KPROBE_GROUP_MEMBER, "oom_kill_memcg_member") {
                    Ok(()) => active.push(Hook::KprobeGroup),
                    Err(e) => inactive.push((Hook::KprobeGroup, e)),
                }
            }
        }
        // 5. Userspace OOM killers: signal_generate, tp_btf else the classic tracepoint.
        match killers {
            Err(why) => {
                for h in [Hook::TpBtfSignal, Hook::TracepointSignal] {
                    inactive.push((h, why.clone()));
                }
            }
            Ok(_) => {
                let tp_btf = match (&aya_btf, &signal_tp_btf_args) {
                    _ if cfg.disabled.tp_btf => Err("disabled by --no-tp-btf".to_string()),
                    (None, _) => Err(format!("no usable BTF at {}", cfg.btf.display())),
                    (_, Err(e)) => Err(e.clone()),
                    (Some(_), Ok(())) if !resolved.walk_ok() => Err(format!(
                        "kernel struct offsets missing: {}",
                        resolved.missing.join("; ")
                    )),
                    (Some(b), Ok(())) => {
                        attach_btf_by_name(&mut ebpf, b, PROG_BTF_SIGNAL, "signal_generate")
                    }
                };
                match tp_btf {
                    Ok(()) => {
                        active.push(Hook::TpBtfSignal);
                        inactive.push((
                            Hook::TracepointSignal,
                            "not needed: tp_btf/signal_generate is attached".to_string(),
                        ));
                    }
                    Err(e) => {
                        inactive.push((Hook::TpBtfSignal, e));
                        match signal_layout.and_then(|_| {
                            attach_tracepoint_by_name(
                                &mut ebpf,
                                PROG_TP_SIGNAL,
                                "signal",
                                "signal_generate",
                            )
                        }) {
                            Ok(()) => active.push(Hook::TracepointSignal),
                            Err(e) => inactive.push((Hook::TracepointSignal, e)),
                        }
                    }
                }
            }
        }
        if !active.iter().any(|h| h.captures_oom_kills()) {
            let why = inactive
                .iter()
                .map(|(h, e)| format!("{h}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProbeError::NothingAttached(why));
        }
        // After every program is loaded: the logger takes the log map's fd.
        let logger = forward_logs(&mut ebpf);
        Ok(Self {
            ebpf,
            active,
            inactive,
            layout,
            missing_offsets: resolved.missing,
            _logger: logger,
        })
    }

    /// Takes the ring buffer for the reader task.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(ProbeError::NoRingBuf)?;
        RingBuf::try_from(map).map_err(|_| ProbeError::NoRingBuf)
    }

    /// Takes the per-CPU counters.
    pub fn take_stats(&mut self) -> Option<Stats> {
        let map = self.ebpf.take_map(STATS_MAP)?;
        PerCpuArray::try_from(map).ok().map(|array| Stats { array })
    }
}

fn attach_tracepoint(ebpf: &mut Ebpf) -> Result<(), String> {
    attach_tracepoint_by_name(ebpf, PROG_TP_MARK_VICTIM, "oom", "mark_victim")
}

fn attach_tracepoint_by_name(
    ebpf: &mut Ebpf,
    prog_name: &str,
    category: &str,
    name: &str,
) -> Result<(), String> {
    let prog: &mut TracePoint = program(ebpf, prog_name)?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load()
        .map_err(|e| format!("load: {}", verifier_error(&e)))?;
    prog.attach(category, name)
        .map_err(|e| format!("attach: {e:#}"))?;
    Ok(())
}

fn attach_tp_btf(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<(), String> {
    attach_btf_by_name(ebpf, btf, PROG_BTF_MARK_VICTIM, "mark_victim")
}

fn attach_btf_by_name(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    prog_name: &str,
    tracepoint: &str,
) -> Result<(), String> {
    let prog: &mut BtfTracePoint = program(ebpf, prog_name)?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load(tracepoint, btf)
        .map_err(|e| format!("load: {}", verifier_error(&e)))?;
    prog.attach().map_err(|e| format!("attach: {e:#}"))?;
    Ok(())
}

/// The most verbose level the agent's `tracing` filter shows for
/// [`LOG_TARGET`], as aya-log's `AYA_LOG_LEVEL` global: the programs do not
/// even write the lines nobody would see.
fn kernel_log_level() -> u8 {
    use aya_log::Level;
    let level = if tracing::enabled!(target: LOG_TARGET, tracing::Level::TRACE) {
        Level::Trace
    } else if tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG) {
        Level::Debug
    } else if tracing::enabled!(target: LOG_TARGET, tracing::Level::INFO) {
        Level::Info
    } else {
        Level::Warn
    };
    level as u8
}

/// Forwards the programs' aya-log records into `tracing` (through the `log`
/// facade, which `tracing-subscriber` bridges): aya-log 0.3 writes them into
/// a ring buffer map that someone must poll, so a task on the current tokio
/// runtime does. Without a runtime the logger is returned, to be kept.
fn forward_logs(ebpf: &mut Ebpf) -> Option<EbpfLogger<&'static dyn log::Log>> {
    let logger = match EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!("the eBPF programs' log is not forwarded: {e}");
            return None;
        }
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        debug!("no tokio runtime: the eBPF programs' log is not forwarded");
        return Some(logger);
    };
    let _guard = runtime.enter();
    // SAFETY: the ring buffer's fd stays open as long as the AsyncFd owns the logger.
    let fd = match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("the eBPF programs' log is not forwarded: cannot poll it: {e}");
            return None;
        }
    };
    runtime.spawn(async move {
        let mut fd = fd;
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("the eBPF programs' log stopped: {e}");
                    return;
                }
            }
        }
    });
    None
}

fn attach_fentry(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    prog_name: &str,
    function: &str,
) -> Result<(), String> {
    let prog: &mut FEntry = program(ebpf, prog_name)?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load(function, btf).map_err(|e| {
        let text = verifier_error(&e);
        if text.contains("Operation not permitted") {
            format!("the kernel refused the fentry program (EPERM: lockdown, or a sandbox policy on tracing programs): {text}")
        } else {
            format!("load: {text}")
        }
    })?;
    prog.attach().map_err(|e| format!("attach: {e:#}"))?;
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, prog_name: &str, function: &str) -> Result<(), String> {
    let prog: &mut KProbe = program(ebpf, prog_name)?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load()
        .map_err(|e| format!("load: {}", verifier_error(&e)))?;
    prog.attach(function, 0)
        .map_err(|e| format!("attach: {e:#}"))?;
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object: rebuild oomtrace"))
}

/// A load error with the verifier log cut to its last lines (the useful part).
fn verifier_error(e: &aya::programs::ProgramError) -> String {
    let text = format!("{e:#}");
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() > 12 {
        format!("{} ... {}", lines[0], lines[lines.len() - 8..].join(" | "))
    } else {
        lines.join(" | ")
    }
}

/// The kernel-side counters (summed over CPUs).
pub struct Stats {
    array: PerCpuArray<MapData, u64>,
}

/// A snapshot of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub lost_tp: u64,
    pub lost_btf: u64,
    pub lost_decision: u64,
    pub lost_group_member: u64,
    pub read_errors: u64,
    pub fired_tp: u64,
    pub fired_btf: u64,
    pub fired_decision: u64,
    pub fired_group_member: u64,
    /// Hook runs in which a kernel read failed.
    pub read_failed_runs: u64,
    /// SIGKILL/SIGTERM seen by the signal hook (other signals are not
    /// counted): `listed_signal + filtered_signal`.
    pub fired_signal: u64,
    /// Of those, sent by a process on the `--userspace-killers` list (a
    /// record was sent, or lost).
    pub listed_signal: u64,
    /// Sent by a process not on the list: no record.
    pub filtered_signal: u64,
    pub lost_signal: u64,
}

impl StatsSnapshot {
    /// Ring-buffer records the kernel could not reserve.
    pub fn lost(&self) -> u64 {
        self.lost_tp
            + self.lost_btf
            + self.lost_decision
            + self.lost_group_member
            + self.lost_signal
    }
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |i: u32| -> u64 {
            self.array
                .get(&i, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        StatsSnapshot {
            lost_tp: get(STAT_LOST_TP_VICTIM),
            lost_btf: get(STAT_LOST_BTF_VICTIM),
            lost_decision: get(STAT_LOST_DECISION),
            lost_group_member: get(STAT_LOST_GROUP_MEMBER),
            read_errors: get(STAT_READ_ERRORS),
            fired_tp: get(STAT_FIRED_TP_VICTIM),
            fired_btf: get(STAT_FIRED_BTF_VICTIM),
            fired_decision: get(STAT_FIRED_DECISION),
            fired_group_member: get(STAT_FIRED_GROUP_MEMBER),
            read_failed_runs: get(STAT_READ_FAILED_RUNS),
            fired_signal: get(STAT_LISTED_SIGNAL) + get(STAT_FILTERED_SIGNAL),
            listed_signal: get(STAT_LISTED_SIGNAL),
            filtered_signal: get(STAT_FILTERED_SIGNAL),
            lost_signal: get(STAT_LOST_SIGNAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events/signal/signal_generate/format` of the 6.18 development host.
    const SIGNAL_6_18: &str = include_str!("../tests/data/tracefs/signal_generate-6.18.format");

    #[test]
    fn the_signal_layout_comes_from_the_format_file() {
        let format = tracefs::parse_format(SIGNAL_6_18).expect("parse");
        let layout = signal_layout(&format).expect("layout");
        assert_eq!(
            layout,
            SignalLayout {
                valid: 1,
                sig: 8,
                errno: 12,
                code: 16,
                comm: 20,
                pid: 36,
                group: 40,
                result: 44,
            }
        );
        // With PREEMPT_RT's extra common fields every field moves by 4 (as in
        // the RT trees of 5.x): the offsets follow the file, not a table.
        let shifted: String = SIGNAL_6_18
            .lines()
            .map(|l| match l.split_once("offset:") {
                Some((head, rest)) => {
                    let (n, tail) = rest.split_once(';').expect("offset;");
                    let n: u32 = n.parse().expect("number");
                    let n = if n >= 8 { n + 4 } else { n };
                    format!("{head}offset:{n};{tail}\n")
                }
                None => format!("{l}\n"),
            })
            .collect();
        let format = tracefs::parse_format(&shifted).expect("parse");
        let rt = signal_layout(&format).expect("layout");
        assert_eq!((rt.sig, rt.comm, rt.result), (12, 24, 48));
    }

    #[test]
    fn an_unexpected_signal_record_is_refused_with_the_reason() {
        let data_loc = SIGNAL_6_18.replace(
            "field:char comm[16];\toffset:20;\tsize:16;",
            "field:__data_loc char[] comm;\toffset:20;\tsize:4;",
        );
        let format = tracefs::parse_format(&data_loc).expect("parse");
        let err = signal_layout(&format).expect_err("a __data_loc comm");
        assert!(err.contains("comm") && err.contains("__data_loc"), "{err}");

        let no_result =
            SIGNAL_6_18.replace("\tfield:int result;\toffset:44;\tsize:4;\tsigned:1;\n", "");
        let format = tracefs::parse_format(&no_result).expect("parse");
        let err = signal_layout(&format).expect_err("no result field");
        assert!(err.contains("result"), "{err}");
    }

    #[test]
    fn killer_names_are_the_kernels_comm_bytes() {
        let names = killer_names(&ProbeConfig::default().killers).expect("defaults");
        assert_eq!(names.count, 5);
        assert_eq!(&names.names[0], b"systemd-oomd\0\0\0\0");
        assert_eq!(&names.names[4], b"init\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(names.names[5], [0; COMM_LEN], "unused slots stay zero");

        // 15 bytes is the longest comm; 16 are cut by the kernel.
        assert!(parse_killer_name("abcdefghijklmno").is_ok());
        let err = parse_killer_name("systemd-oomd-xyz").expect_err("16 bytes");
        assert!(err.contains("\"systemd-oomd-xy\""), "{err}");
        // A multi-byte character is not split.
        let err = parse_killer_name("oomkiller-ééééé").expect_err("too long");
        assert!(err.contains("\"oomkiller-éé\""), "{err}");
        assert!(parse_killer_name("").is_err());

        let nine: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
        let err = killer_names(&nine).expect_err("nine names");
        assert!(err.contains("at most 8"), "{err}");
    }

    #[test]
    fn memlock_is_raised_only_before_5_11() {
        assert!(kernel_before("5.10.0-32-amd64", (5, 11)));
        assert!(kernel_before("4.19.0", (5, 11)));
        assert!(!kernel_before("5.11.0", (5, 11)));
        assert!(!kernel_before("6.1.0-41-amd64", (5, 11)));
        assert!(!kernel_before("6.18.44-fc-v1045", (5, 11)));
        assert!(kernel_before("", (5, 11)), "unknown: raising is harmless");
        // On a new kernel nothing is touched.
        let said = raise_memlock("6.18.44-fc-v1045");
        assert!(said.contains("left as it is"), "{said}");
    }
}
