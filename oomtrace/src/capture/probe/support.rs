//! What the running kernel offers, found before anything is loaded: the
//! tracepoints' layouts, BTF and the struct offsets it gives, the attach
//! targets in BTF and kallsyms, the kprobe PMU. [`Probe::load`] and
//! `oomtrace doctor` read the same facts, through [`KernelSupport::unmet`].
//!
//! [`Probe::load`]: super::Probe::load

use std::{
    fs,
    path::{Path, PathBuf},
};

use oomtrace_common::{COMM_LEN, SignalLayout};

use super::{
    ProbeConfig,
    chain::{CHAIN, Need},
    killers::killer_names,
};
use crate::{
    capture::btf::{Btf, ParamType},
    capture::offsets::{self, Resolved},
    capture::tracefs::{self, Format, MarkVictimLayout},
};

/// Where the kernel lists its PMUs: `kprobe` is there with `CONFIG_KPROBES`.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// What the kernel offers.
pub struct KernelSupport {
    pub tracefs: Result<PathBuf, String>,
    pub layout: Result<MarkVictimLayout, String>,
    /// The classic `signal/signal_generate` record's layout.
    pub signal_layout: Result<SignalLayout, String>,
    /// Our parse of the kernel's BTF, for the offsets; dropped before aya
    /// parses the same file (see [`KernelSupport::take_btf`]).
    pub btf: Result<Btf, String>,
    /// Whether BTF could be read (kept after the parse is dropped).
    pub btf_ok: Result<(), String>,
    /// Types in the kernel's BTF (0 without BTF).
    pub btf_types: u32,
    pub offsets: Resolved,
    /// `tp_btf/mark_victim` receives the victim `task_struct *`.
    pub tp_btf_task_arg: Result<(), String>,
    /// `tp_btf/signal_generate` receives the target `task_struct *`.
    pub signal_tp_btf_args: Result<(), String>,
    /// The BTF FUNCs among the chain's fentry targets.
    pub btf_funcs: Vec<&'static str>,
    /// The chain's kprobe targets listed in `/proc/kallsyms`.
    pub kallsyms: Vec<&'static str>,
    /// The kprobe PMU exists (`CONFIG_KPROBES`).
    pub kprobe_pmu: bool,
    /// The `--userspace-killers` list, checked.
    pub killers: Result<oomtrace_common::KillerNames, String>,
}

impl KernelSupport {
    pub fn discover(cfg: &ProbeConfig) -> Self {
        let tracefs = tracefs::find_tracefs(cfg.tracefs.as_deref()).map_err(|e| e.to_string());
        let layout = tracefs.clone().and_then(|root| read_layout(&root));
        let signal_layout = tracefs.clone().and_then(|root| {
            tracefs::read_format(&root, "signal", "signal_generate")
                .map_err(|e| e.to_string())
                .and_then(|f| signal_layout(&f))
        });
        let btf = Btf::from_file(&cfg.btf).map_err(|e| e.to_string());
        let offsets = match &btf {
            Ok(b) => offsets::resolve(b),
            Err(_) => Resolved {
                offsets: oomtrace_common::KernelOffsets::zeroed(),
                missing: vec!["no BTF: kernel struct offsets unknown".to_string()],
            },
        };
        let tp_btf_task_arg = btf.as_ref().map_err(Clone::clone).and_then(|b| {
            b.tracepoint_args("mark_victim")
                .map_err(|e| e.to_string())
                .and_then(|args| mark_victim_args_ok(&args))
        });
        let signal_tp_btf_args = btf.as_ref().map_err(Clone::clone).and_then(|b| {
            b.tracepoint_args("signal_generate")
                .map_err(|e| e.to_string())
                .and_then(|args| signal_args_ok(&args))
        });
        let targets = attach_targets();
        let btf_funcs = match &btf {
            Ok(b) => targets.iter().copied().filter(|f| b.has_func(f)).collect(),
            Err(_) => Vec::new(),
        };
        let kallsyms = in_kallsyms(&targets);
        Self {
            tracefs,
            layout,
            signal_layout,
            btf_ok: btf.as_ref().map(|_| ()).map_err(Clone::clone),
            btf_types: btf.as_ref().map_or(0, Btf::type_count),
            btf,
            offsets,
            tp_btf_task_arg,
            signal_tp_btf_args,
            btf_funcs,
            kallsyms,
            kprobe_pmu: Path::new(KPROBE_PMU).exists(),
            killers: if cfg.disabled.signal {
                Err("disabled by --no-signal-hook".to_string())
            } else {
                killer_names(&cfg.killers)
            },
        }
    }

    /// Takes our BTF parse out (to drop it before aya parses the file).
    pub fn take_btf(&mut self) -> Option<Btf> {
        std::mem::replace(&mut self.btf, Err("taken".to_string())).ok()
    }

    /// Why `need` is not met here, `None` when it is.
    pub fn unmet(&self, need: Need) -> Option<String> {
        let err = |r: &Result<(), String>| r.as_ref().err().cloned();
        let offsets_missing = || {
            format!(
                "kernel struct offsets missing: {}",
                self.offsets.missing.join("; ")
            )
        };
        match need {
            Need::MarkVictimLayout => self.layout.as_ref().err().cloned(),
            Need::SignalLayout => self.signal_layout.as_ref().err().cloned(),
            Need::Btf => err(&self.btf_ok),
            Need::MarkVictimTaskArg => err(&self.tp_btf_task_arg),
            Need::SignalTaskArg => err(&self.signal_tp_btf_args),
            Need::WalkOffsets => (!self.offsets.walk_ok()).then(offsets_missing),
            Need::OomControlOffsets => (!self.offsets.oom_control_ok())
                .then(|| "struct oom_control not in BTF".to_string()),
            Need::BtfFunc(f) => (!self.btf_funcs.contains(&f))
                .then(|| format!("no BTF FUNC {f} (inlined, not in this kernel, or no BTF)")),
            Need::KprobePmu => (!self.kprobe_pmu).then(|| {
                format!("no kprobe PMU ({KPROBE_PMU}): kernel built without CONFIG_KPROBES")
            }),
            Need::Kallsyms(f) => (!self.kallsyms.contains(&f)).then(|| {
                format!(
                    "{f} is not in /proc/kallsyms (inlined, not in this kernel, or kallsyms hidden)"
                )
            }),
            Need::Killers => self.killers.as_ref().err().cloned(),
        }
    }
}

/// The functions the chain attaches fentry or kprobe programs to.
fn attach_targets() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = CHAIN
        .iter()
        .flat_map(|s| s.needs.iter())
        .filter_map(|n| match n {
            Need::BtfFunc(f) | Need::Kallsyms(f) => Some(*f),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Which of `names` `/proc/kallsyms` lists.
fn in_kallsyms(names: &[&'static str]) -> Vec<&'static str> {
    let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let mut found: Vec<&'static str> = kallsyms
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter_map(|sym| names.iter().copied().find(|n| *n == sym))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

fn read_layout(tracefs_root: &Path) -> Result<MarkVictimLayout, String> {
    let format = tracefs::read_format(tracefs_root, "oom", "mark_victim").map_err(|e| {
        format!("{e} (kernel without the oom:mark_victim tracepoint, or tracefs not readable)")
    })?;
    MarkVictimLayout::from_format(&format).map_err(|e| e.to_string())
}

/// `TP_PROTO(struct task_struct *task, uid_t uid)` (6.9+ and backports).
fn mark_victim_args_ok(args: &[ParamType]) -> Result<(), String> {
    match args.first() {
        Some(ParamType::PtrToStruct(name)) if name == "task_struct" => Ok(()),
        Some(other) => Err(format!(
            "this kernel's mark_victim passes {other:?}, not the victim task_struct (the pid-only ABI before 6.9)"
        )),
        None => Err("mark_victim has no arguments in BTF".to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `events/signal/signal_generate/format` of the 6.18 development host.
    const SIGNAL_6_18: &str =
        include_str!("../../../tests/data/tracefs/signal_generate-6.18.format");

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
    fn the_chains_attach_targets_are_the_oom_killers_functions() {
        assert_eq!(
            attach_targets(),
            ["oom_kill_memcg_member", "oom_kill_process"]
        );
    }
}
