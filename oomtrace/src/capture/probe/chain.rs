//! The hook chain as data: every program, how it attaches, what it needs
//! from the kernel, and which hook makes it unnecessary. [`Probe::load`]
//! walks this table once; `oomtrace doctor` prints the same table.
//!
//! [`Probe::load`]: super::Probe::load

use std::fmt;

use oomtrace_common::{
    PROG_BTF_MARK_VICTIM, PROG_BTF_SIGNAL, PROG_FENTRY_GROUP_MEMBER, PROG_FENTRY_OOM_KILL,
    PROG_KPROBE_GROUP_MEMBER, PROG_KPROBE_OOM_KILL, PROG_TP_MARK_VICTIM, PROG_TP_SIGNAL,
};

use super::Disabled;

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
    /// Every hook, in the order of the chain (the kernel log last).
    pub const ALL: [Hook; 9] = [
        Hook::Tracepoint,
        Hook::TpBtf,
        Hook::Fentry,
        Hook::Kprobe,
        Hook::FentryGroup,
        Hook::KprobeGroup,
        Hook::TpBtfSignal,
        Hook::TracepointSignal,
        Hook::Kmsg,
    ];

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
    /// and a group scan only completes what another hook reported).
    pub fn captures_oom_kills(self) -> bool {
        !matches!(
            self,
            Self::FentryGroup | Self::KprobeGroup | Self::TpBtfSignal | Self::TracepointSignal
        )
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A classic tracepoint (`events/<category>/<name>`).
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// A BTF-typed tracepoint (`btf_trace_<name>`).
    TpBtf { name: &'static str },
    /// A BPF trampoline at a kernel function's entry.
    Fentry { function: &'static str },
    /// A kprobe at a kernel function's entry.
    Kprobe { function: &'static str },
}

/// Something a hook needs from the kernel (or the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The `oom:mark_victim` tracepoint's `format` file.
    MarkVictimLayout,
    /// The `signal:signal_generate` tracepoint's `format` file.
    SignalLayout,
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`).
    Btf,
    /// `tp_btf/mark_victim` receives the victim `task_struct *` (6.9+ and backports).
    MarkVictimTaskArg,
    /// `tp_btf/signal_generate` receives the target `task_struct *`.
    SignalTaskArg,
    /// The struct offsets of the memory cgroup walk.
    WalkOffsets,
    /// The offsets of `struct oom_control`.
    OomControlOffsets,
    /// A BTF FUNC of this name (fentry attaches to it).
    BtfFunc(&'static str),
    /// The kprobe PMU (`CONFIG_KPROBES`).
    KprobePmu,
    /// The function is in `/proc/kallsyms` (not inlined).
    Kallsyms(&'static str),
    /// A valid `--userspace-killers` list.
    Killers,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MarkVictimLayout => f.write_str("oom:mark_victim format file"),
            Self::SignalLayout => f.write_str("signal:signal_generate format file"),
            Self::Btf => f.write_str("kernel BTF"),
            Self::MarkVictimTaskArg => f.write_str("mark_victim(struct task_struct *) in BTF"),
            Self::SignalTaskArg => {
                f.write_str("signal_generate(.., struct task_struct *, ..) in BTF")
            }
            Self::WalkOffsets => f.write_str("memory cgroup walk offsets"),
            Self::OomControlOffsets => f.write_str("struct oom_control offsets"),
            Self::BtfFunc(name) => write!(f, "BTF FUNC {name}"),
            Self::KprobePmu => f.write_str("kprobe PMU"),
            Self::Kallsyms(name) => write!(f, "{name} in /proc/kallsyms"),
            Self::Killers => f.write_str("--userspace-killers"),
        }
    }
}

/// One hook of the chain.
#[derive(Clone, Copy, Debug)]
pub struct HookSpec {
    pub hook: Hook,
    /// The program's name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    /// Tried only when none of these is active, with the reason it is not
    /// needed: the better variant of the same information.
    pub unless_active: &'static [(Hook, &'static str)],
    pub needs: &'static [Need],
}

impl HookSpec {
    /// The flag that turned this hook off, if one did.
    pub fn disabled_by(&self, d: &Disabled) -> Option<&'static str> {
        let flag = |on: bool, name: &'static str| on.then_some(name);
        match self.hook {
            Hook::Tracepoint => flag(d.tracepoint, "--no-tracepoint"),
            Hook::TpBtf => flag(d.tp_btf, "--no-tp-btf"),
            Hook::Fentry | Hook::FentryGroup => flag(d.fentry, "--no-fentry"),
            Hook::Kprobe | Hook::KprobeGroup => flag(d.kprobe, "--no-kprobe"),
            Hook::TpBtfSignal => {
                flag(d.signal, "--no-signal-hook").or(flag(d.tp_btf, "--no-tp-btf"))
            }
            Hook::TracepointSignal => flag(d.signal, "--no-signal-hook"),
            Hook::Kmsg => None,
        }
    }
}

const NOT_NEEDED_FENTRY: &str = "not needed: fentry is attached";
const NOT_NEEDED_TP_BTF: &str = "not needed: tp_btf/mark_victim names every victim's cgroup";

/// The chain, in attach order (see the module documentation of
/// [`super`] for what each gives).
pub const CHAIN: [HookSpec; 8] = [
    HookSpec {
        hook: Hook::Tracepoint,
        program: PROG_TP_MARK_VICTIM,
        attach: Attach::Tracepoint {
            category: "oom",
            name: "mark_victim",
        },
        unless_active: &[],
        needs: &[Need::MarkVictimLayout],
    },
    HookSpec {
        hook: Hook::TpBtf,
        program: PROG_BTF_MARK_VICTIM,
        attach: Attach::TpBtf {
            name: "mark_victim",
        },
        unless_active: &[],
        needs: &[Need::Btf, Need::MarkVictimTaskArg, Need::WalkOffsets],
    },
    HookSpec {
        hook: Hook::Fentry,
        program: PROG_FENTRY_OOM_KILL,
        attach: Attach::Fentry {
            function: "oom_kill_process",
        },
        unless_active: &[],
        needs: &[
            Need::Btf,
            Need::OomControlOffsets,
            Need::BtfFunc("oom_kill_process"),
        ],
    },
    HookSpec {
        hook: Hook::Kprobe,
        program: PROG_KPROBE_OOM_KILL,
        attach: Attach::Kprobe {
            function: "oom_kill_process",
        },
        unless_active: &[(Hook::Fentry, NOT_NEEDED_FENTRY)],
        needs: &[
            Need::OomControlOffsets,
            Need::KprobePmu,
            Need::Kallsyms("oom_kill_process"),
        ],
    },
    HookSpec {
        hook: Hook::FentryGroup,
        program: PROG_FENTRY_GROUP_MEMBER,
        attach: Attach::Fentry {
            function: "oom_kill_memcg_member",
        },
        unless_active: &[(Hook::TpBtf, NOT_NEEDED_TP_BTF)],
        needs: &[
            Need::Btf,
            Need::WalkOffsets,
            Need::BtfFunc("oom_kill_memcg_member"),
        ],
    },
    HookSpec {
        hook: Hook::KprobeGroup,
        program: PROG_KPROBE_GROUP_MEMBER,
        attach: Attach::Kprobe {
            function: "oom_kill_memcg_member",
        },
        unless_active: &[
            (Hook::TpBtf, NOT_NEEDED_TP_BTF),
            (Hook::FentryGroup, NOT_NEEDED_FENTRY),
        ],
        needs: &[
            Need::WalkOffsets,
            Need::KprobePmu,
            Need::Kallsyms("oom_kill_memcg_member"),
        ],
    },
    HookSpec {
        hook: Hook::TpBtfSignal,
        program: PROG_BTF_SIGNAL,
        attach: Attach::TpBtf {
            name: "signal_generate",
        },
        unless_active: &[],
        needs: &[
            Need::Killers,
            Need::Btf,
            Need::SignalTaskArg,
            Need::WalkOffsets,
        ],
    },
    HookSpec {
        hook: Hook::TracepointSignal,
        program: PROG_TP_SIGNAL,
        attach: Attach::Tracepoint {
            category: "signal",
            name: "signal_generate",
        },
        unless_active: &[(
            Hook::TpBtfSignal,
            "not needed: tp_btf/signal_generate is attached",
        )],
        needs: &[Need::Killers, Need::SignalLayout],
    },
];

/// Why `spec` is not to be attached, given what is active so far and what
/// [`Need`]s are unmet (`unmet` says why a need is not met, `None` when it is).
pub fn blocked(
    spec: &HookSpec,
    disabled: &Disabled,
    active: &[Hook],
    unmet: impl Fn(Need) -> Option<String>,
) -> Option<String> {
    if let Some(flag) = spec.disabled_by(disabled) {
        return Some(format!("disabled by {flag}"));
    }
    if let Some((_, why)) = spec.unless_active.iter().find(|(h, _)| active.contains(h)) {
        return Some((*why).to_string());
    }
    spec.needs.iter().find_map(|&n| unmet(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain as `Probe::load` walks it; `refused` hooks fail to attach.
    fn walk_with(
        disabled: &Disabled,
        unmet: &dyn Fn(Need) -> Option<String>,
        refused: &[Hook],
    ) -> Vec<(Hook, Option<String>)> {
        let mut active = Vec::new();
        let mut out = Vec::new();
        for spec in &CHAIN {
            let why = blocked(spec, disabled, &active, unmet).or_else(|| {
                refused
                    .contains(&spec.hook)
                    .then(|| "the kernel refused it".to_string())
            });
            if why.is_none() {
                active.push(spec.hook);
            }
            out.push((spec.hook, why));
        }
        out
    }

    fn walk(
        disabled: &Disabled,
        unmet: &dyn Fn(Need) -> Option<String>,
    ) -> Vec<(Hook, Option<String>)> {
        walk_with(disabled, unmet, &[])
    }

    fn active(rows: &[(Hook, Option<String>)]) -> Vec<Hook> {
        rows.iter()
            .filter(|(_, w)| w.is_none())
            .map(|(h, _)| *h)
            .collect()
    }

    #[test]
    fn the_chain_of_each_kernel_we_test() {
        let none = Disabled::default();
        // 6.18 host: its needs are met but the kernel refuses fentry; no kprobes.
        let host = |n: Need| (n == Need::KprobePmu).then(|| "no kprobe PMU".to_string());
        let rows = walk_with(&none, &host, &[Hook::Fentry, Hook::FentryGroup]);
        assert_eq!(
            active(&rows),
            [Hook::Tracepoint, Hook::TpBtf, Hook::TpBtfSignal]
        );
        let why = |h: Hook| {
            rows.iter()
                .find(|(x, _)| *x == h)
                .and_then(|(_, w)| w.clone())
        };
        assert_eq!(why(Hook::Kprobe).as_deref(), Some("no kprobe PMU"));
        // Where fentry attaches, the kprobe is not needed.
        let rows = walk(&none, &host);
        let why = |h: Hook| {
            rows.iter()
                .find(|(x, _)| *x == h)
                .and_then(|(_, w)| w.clone())
        };
        assert_eq!(why(Hook::Kprobe).as_deref(), Some(NOT_NEEDED_FENTRY));
        assert_eq!(why(Hook::FentryGroup).as_deref(), Some(NOT_NEEDED_TP_BTF));
        assert!(why(Hook::TracepointSignal).is_some_and(|w| w.contains("tp_btf/signal_generate")));

        // 5.10: the pid-only tracepoint (no task argument), fentry and kprobes.
        let pid_only = |n: Need| (n == Need::MarkVictimTaskArg).then(|| "pid-only".to_string());
        assert_eq!(
            active(&walk(&none, &pid_only)),
            [
                Hook::Tracepoint,
                Hook::Fentry,
                Hook::FentryGroup,
                Hook::TpBtfSignal
            ]
        );
        let no_fentry = Disabled {
            fentry: true,
            ..Disabled::default()
        };
        assert_eq!(
            active(&walk(&no_fentry, &pid_only)),
            [
                Hook::Tracepoint,
                Hook::Kprobe,
                Hook::KprobeGroup,
                Hook::TpBtfSignal
            ]
        );
        // No BTF at all: only the classic tracepoints.
        let no_btf = |n: Need| {
            matches!(
                n,
                Need::Btf
                    | Need::WalkOffsets
                    | Need::OomControlOffsets
                    | Need::BtfFunc(_)
                    | Need::MarkVictimTaskArg
                    | Need::SignalTaskArg
            )
            .then(|| "no BTF".to_string())
        };
        assert_eq!(
            active(&walk(&none, &no_btf)),
            [Hook::Tracepoint, Hook::TracepointSignal]
        );
    }

    #[test]
    fn flags_turn_hooks_off_and_say_so() {
        let all_met = |_| None;
        let d = Disabled {
            signal: true,
            tp_btf: true,
            ..Disabled::default()
        };
        let rows = walk(&d, &all_met);
        for (h, why) in rows {
            match h {
                Hook::TpBtfSignal | Hook::TracepointSignal => {
                    assert_eq!(why.as_deref(), Some("disabled by --no-signal-hook"), "{h}")
                }
                Hook::TpBtf => assert_eq!(why.as_deref(), Some("disabled by --no-tp-btf")),
                _ => {}
            }
        }
    }
}
