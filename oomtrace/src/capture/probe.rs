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
//! 5. `/dev/kmsg` (see [`crate::capture::kmsg`]), which also works when nothing here loads.
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

mod btf_stub;
mod chain;
mod killers;
mod memlock;
mod support;

use std::{fs, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, KProbe, TracePoint},
};
use aya_log::EbpfLogger;
use oomtrace_common::{
    DEFAULT_RINGBUF_BYTES, EVENTS_MAP, KILLERS_GLOBAL, KernelOffsets, KillerNames, LOG_MAP,
    LOG_MAP_BYTES, LOG_TARGET, OFFSETS_GLOBAL, SIGNAL_LAYOUT_GLOBAL, STAT_FILTERED_SIGNAL,
    STAT_FIRED_BTF_VICTIM, STAT_FIRED_DECISION, STAT_FIRED_GROUP_MEMBER, STAT_FIRED_TP_VICTIM,
    STAT_LISTED_SIGNAL, STAT_LOST_BTF_VICTIM, STAT_LOST_DECISION, STAT_LOST_GROUP_MEMBER,
    STAT_LOST_SIGNAL, STAT_LOST_TP_VICTIM, STAT_OOM_SIGKILL, STAT_OOM_SIGKILL_MATCHED,
    STAT_READ_ERRORS, STAT_READ_FAILED_RUNS, STATS_MAP, SignalLayout, TP_LAYOUT_GLOBAL,
    TP_RECORD_MAX, TracepointLayout,
};
use thiserror::Error;
use tracing::{debug, info, warn};

pub use self::{
    chain::{Attach, CHAIN, Hook, HookSpec, Need},
    killers::{DEFAULT_USERSPACE_KILLERS, killer_names, parse_killer_name},
    memlock::raise_memlock,
    support::{KernelSupport, signal_layout},
};
use crate::capture::tracefs::MarkVictimLayout;

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oomtrace"));

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

impl ProbeConfig {
    /// The probe settings of a run's command line.
    pub fn from_args(args: &crate::cli::TraceArgs) -> Self {
        Self {
            tracefs: args.paths.tracefs.clone(),
            btf: args.paths.btf.clone(),
            disabled: Disabled {
                tracepoint: args.no_tracepoint,
                tp_btf: args.no_tp_btf,
                fentry: args.no_fentry,
                kprobe: args.no_kprobe,
                signal: args.no_signal_hook,
            },
            ringbuf_bytes: args.ringbuf_bytes,
            killers: args.userspace_killers.clone(),
        }
    }
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

/// aya's loader, made before anything else is held.
///
/// `EbpfLoader::new` parses the whole kernel BTF (about 19 MiB of heap on a
/// 6.18 kernel) even when it is then given another one, and aya offers no
/// other constructor: made first and its parse dropped at once, that peak
/// never stacks on our own BTF parse or the stub aya is given later.
pub struct Loader(EbpfLoader<'static>);

impl Loader {
    pub fn new() -> Self {
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        Self(loader)
    }
}

impl Default for Loader {
    fn default() -> Self {
        Self::new()
    }
}

impl Probe {
    /// Loads the object and attaches every hook of the chain the kernel allows.
    pub fn load(cfg: &ProbeConfig, mut support: KernelSupport) -> Result<Self, ProbeError> {
        Self::load_with(cfg, support.take_btf(), support, Loader::new())
    }

    /// [`Probe::load`] with a loader made before the kernel facts were
    /// gathered (see [`Loader`]) and our BTF parse taken out of them.
    pub fn load_with(
        cfg: &ProbeConfig,
        btf: Option<crate::capture::btf::Btf>,
        support: KernelSupport,
        loader: Loader,
    ) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        // aya gets a stand-in with the attach targets' ids (see btf_stub);
        // our parse is dropped before aya parses anything.
        let stub = btf.map(|b| btf_stub::build(&b, &attach_targets()));
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        info!("{}", raise_memlock(release.trim()));
        let stub_btf = stub
            .as_ref()
            .and_then(|s| aya::Btf::parse(s, aya::Endianness::default()).ok());
        drop(stub);
        let globals = Globals::of(&support);
        let full_btf;
        let mut loader: EbpfLoader<'_> = loader.0;
        let offsets = &support.offsets.offsets;
        let mut ebpf = match load_object(&mut loader, cfg, offsets, &globals, stub_btf.as_ref()) {
            Err(ProbeError::Load(aya::EbpfError::BtfRelocationError(e))) if stub_btf.is_some() => {
                debug!("the object needs the whole kernel BTF ({e}): parsing it");
                full_btf = aya::Btf::parse_file(&cfg.btf, aya::Endianness::default()).ok();
                load_object(&mut loader, cfg, offsets, &globals, full_btf.as_ref())?
            }
            other => {
                full_btf = None;
                other?
            }
        };
        drop(loader);
        let aya_btf = full_btf.or(stub_btf);

        let mut active = Vec::new();
        let mut inactive = Vec::new();
        for spec in &CHAIN {
            let attached = match chain::blocked(spec, &cfg.disabled, &active, |n| {
                support.unmet(n).or_else(|| {
                    (n == Need::Btf && aya_btf.is_none())
                        .then(|| format!("aya cannot parse the BTF at {}", cfg.btf.display()))
                })
            }) {
                Some(why) => Err(why),
                None => attach(&mut ebpf, spec, aya_btf.as_ref()),
            };
            match attached {
                Ok(()) => active.push(spec.hook),
                Err(why) => inactive.push((spec.hook, why)),
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
            layout: support.layout.ok(),
            missing_offsets: support.offsets.missing,
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

/// The chain's `tp_btf` and `fentry` targets, as BTF names.
fn attach_targets() -> Vec<btf_stub::Target> {
    CHAIN
        .iter()
        .filter_map(|spec| match spec.attach {
            Attach::TpBtf { name } => Some(btf_stub::Target::Tracepoint(name)),
            Attach::Fentry { function } => Some(btf_stub::Target::Func(function)),
            Attach::Tracepoint { .. } | Attach::Kprobe { .. } => None,
        })
        .collect()
}

/// The globals this kernel needs besides the struct offsets: the classic
/// tracepoints' layouts, the killer names, the log level.
struct Globals {
    tp_layout: TracepointLayout,
    signal_layout: SignalLayout,
    killers: KillerNames,
    log_level: u8,
}

impl Globals {
    fn of(support: &KernelSupport) -> Self {
        let tp_layout = match &support.layout {
            Ok(l) => TracepointLayout {
                pid_offset: l.pid.offset,
                record_len: l.record_len.min(TP_RECORD_MAX as u32),
            },
            Err(_) => TracepointLayout {
                pid_offset: 8,
                record_len: 0,
            },
        };
        Self {
            tp_layout,
            signal_layout: support
                .signal_layout
                .as_ref()
                .copied()
                .unwrap_or(SignalLayout::zeroed()),
            killers: support
                .killers
                .as_ref()
                .copied()
                .unwrap_or(KillerNames::zeroed()),
            log_level: kernel_log_level(),
        }
    }
}

/// Loads the object with the struct offsets and the other globals.
fn load_object<'a>(
    loader: &mut EbpfLoader<'a>,
    cfg: &ProbeConfig,
    offsets: &'a KernelOffsets,
    globals: &'a Globals,
    btf: Option<&'a aya::Btf>,
) -> Result<Ebpf, ProbeError> {
    loader
        .btf(btf)
        .override_global(OFFSETS_GLOBAL, offsets, true)
        .override_global(TP_LAYOUT_GLOBAL, &globals.tp_layout, true)
        .override_global(SIGNAL_LAYOUT_GLOBAL, &globals.signal_layout, true)
        .override_global(KILLERS_GLOBAL, &globals.killers, true)
        .override_global(aya_log::LEVEL, &globals.log_level, false)
        .map_max_entries(EVENTS_MAP, cfg.ringbuf_bytes)
        .map_max_entries(LOG_MAP, LOG_MAP_BYTES)
        .load(OBJECT)
        .map_err(ProbeError::Load)
}

/// Loads and attaches one program of the chain.
fn attach(ebpf: &mut Ebpf, spec: &HookSpec, btf: Option<&aya::Btf>) -> Result<(), String> {
    let btf = || btf.ok_or_else(|| "no usable BTF".to_string());
    match spec.attach {
        Attach::Tracepoint { category, name } => {
            attach_tracepoint_by_name(ebpf, spec.program, category, name)
        }
        Attach::TpBtf { name } => attach_btf_by_name(ebpf, btf()?, spec.program, name),
        Attach::Fentry { function } => attach_fentry(ebpf, btf()?, spec.program, function),
        Attach::Kprobe { function } => attach_kprobe(ebpf, spec.program, function),
    }
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

/// The counters of ring-buffer records the kernel could not reserve.
const LOST_STATS: [u32; 5] = [
    STAT_LOST_TP_VICTIM,
    STAT_LOST_BTF_VICTIM,
    STAT_LOST_DECISION,
    STAT_LOST_GROUP_MEMBER,
    STAT_LOST_SIGNAL,
];

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
    /// SIGKILLs the kernel sent itself, seen by the signal hook (the OOM
    /// killer's among them).
    pub oom_sigkill: u64,
    /// `mark_victim` runs (either program) whose victim had just been sent
    /// such a SIGKILL: kills the OOM killer made (not reaps of exiting tasks).
    pub oom_sigkill_matched: u64,
}

impl StatsSnapshot {
    /// Ring-buffer records the kernel could not reserve (the counters of
    /// [`LOST_STATS`]).
    pub fn lost(&self) -> u64 {
        self.lost_tp
            + self.lost_btf
            + self.lost_decision
            + self.lost_group_member
            + self.lost_signal
    }
}

impl Stats {
    fn get(&self, i: u32) -> u64 {
        self.array
            .get(&i, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// [`StatsSnapshot::lost`] alone: 5 map reads instead of 17 (it is read
    /// for every kill written).
    pub fn lost(&self) -> u64 {
        LOST_STATS.into_iter().map(|i| self.get(i)).sum()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |i: u32| self.get(i);
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
            oom_sigkill: get(STAT_OOM_SIGKILL),
            oom_sigkill_matched: get(STAT_OOM_SIGKILL_MATCHED),
        }
    }
}

#[cfg(test)]
mod tests {}
