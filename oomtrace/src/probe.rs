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
//! Every hook that does not attach is reported with the reason, and the agent
//! carries on with the rest.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, KProbe, TracePoint},
};
use oomtrace_common::{
    DEFAULT_RINGBUF_BYTES, EVENTS_MAP, OFFSETS_GLOBAL, PROG_BTF_MARK_VICTIM,
    PROG_FENTRY_GROUP_MEMBER, PROG_FENTRY_OOM_KILL, PROG_KPROBE_GROUP_MEMBER, PROG_KPROBE_OOM_KILL,
    PROG_TP_MARK_VICTIM, STAT_FIRED_BTF_VICTIM, STAT_FIRED_DECISION, STAT_FIRED_GROUP_MEMBER,
    STAT_FIRED_TP_VICTIM, STAT_LOST_BTF_VICTIM, STAT_LOST_DECISION, STAT_LOST_GROUP_MEMBER,
    STAT_LOST_TP_VICTIM, STAT_READ_ERRORS, STATS_MAP, TP_LAYOUT_GLOBAL, TP_RECORD_MAX,
    TracepointLayout,
};
use thiserror::Error;

use crate::{
    btf::{Btf, ParamType},
    offsets::{self, Resolved},
    tracefs::{self, MarkVictimLayout},
};

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
        }
    }

    /// The word used in a kill's `sources` list.
    pub fn source(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::TpBtf => "tp_btf",
            Self::Fentry | Self::Kprobe => "oom_control",
            Self::FentryGroup | Self::KprobeGroup => "oom_group_scan",
            Self::Kmsg => "kmsg",
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
}

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub tracefs: Option<PathBuf>,
    pub btf: PathBuf,
    pub disabled: Disabled,
    pub ringbuf_bytes: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            tracefs: None,
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
            disabled: Disabled::default(),
            ringbuf_bytes: DEFAULT_RINGBUF_BYTES,
        }
    }
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
        }
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

        let mut ebpf = EbpfLoader::new()
            .btf(aya_btf.as_ref())
            .override_global(OFFSETS_GLOBAL, &resolved.offsets, true)
            .override_global(TP_LAYOUT_GLOBAL, &tp_layout, true)
            .map_max_entries(EVENTS_MAP, cfg.ringbuf_bytes)
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
        if active
            .iter()
            .all(|h| matches!(h, Hook::FentryGroup | Hook::KprobeGroup))
        {
            let why = inactive
                .iter()
                .map(|(h, e)| format!("{h}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProbeError::NothingAttached(why));
        }
        Ok(Self {
            ebpf,
            active,
            inactive,
            layout,
            missing_offsets: resolved.missing,
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
    let prog: &mut TracePoint = program(ebpf, PROG_TP_MARK_VICTIM)?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("load: {e:#}"))?;
    prog.attach("oom", "mark_victim")
        .map_err(|e| format!("attach: {e:#}"))?;
    Ok(())
}

fn attach_tp_btf(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<(), String> {
    let prog: &mut BtfTracePoint = program(ebpf, PROG_BTF_MARK_VICTIM)?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load("mark_victim", btf)
        .map_err(|e| format!("load: {}", verifier_error(&e)))?;
    prog.attach().map_err(|e| format!("attach: {e:#}"))?;
    Ok(())
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
}

impl StatsSnapshot {
    /// Ring-buffer records the kernel could not reserve.
    pub fn lost(&self) -> u64 {
        self.lost_tp + self.lost_btf + self.lost_decision + self.lost_group_member
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
        }
    }
}
