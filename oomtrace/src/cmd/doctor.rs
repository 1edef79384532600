//! `oomtrace doctor`: what this kernel offers and what oomtrace will use.
//!
//! The hook chain's table ([`CHAIN`]) drives it: every hook with each thing it
//! needs, met or not and why, from the same facts the agent reads
//! ([`KernelSupport`]). Then it loads and attaches the real programs (and
//! detaches them), so what it says will be used is what a run would use.

use std::fs;

use serde::Serialize;

use crate::{
    capture::probe::{CHAIN, Hook, KernelSupport, Probe, ProbeConfig},
    cgroupfs::CgroupFs,
    cli::{DoctorArgs, Format, TraceArgs},
};

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// One hook of the chain and what it needs.
#[derive(Debug, Serialize)]
pub struct HookNeeds {
    pub hook: &'static str,
    pub needs: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    /// What every hook needs: the environment checks.
    pub checks: Vec<Check>,
    /// What each hook of the chain needs, met or not.
    pub hooks: Vec<HookNeeds>,
    /// Hooks that attached in a trial load.
    pub will_use: Vec<&'static str>,
    /// Hooks that did not, with the reason.
    pub will_not_use: Vec<(String, String)>,
    pub can_capture: bool,
}

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAPS: &[(&str, u32)] = &[
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_SYSLOG", 34),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];

/// Names of the capabilities oomtrace cares about that are set in an
/// effective set (`CapEff` of `/proc/<pid>/status`).
pub fn effective_caps(cap_eff: u64) -> Vec<&'static str> {
    CAPS.iter()
        .filter(|(_, bit)| cap_eff & (1u64 << bit) != 0)
        .map(|(name, _)| *name)
        .collect()
}

/// This process's effective capabilities, from `/proc/self/status`.
fn own_caps() -> Option<Vec<&'static str>> {
    let status = procfs::process::Process::myself().ok()?.status().ok()?;
    Some(effective_caps(status.capeff))
}

pub fn collect(trace: &TraceArgs) -> Report {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cfg = ProbeConfig::from_args(trace);
    let support = KernelSupport::discover(&cfg);
    let mut checks = vec![btf_check(&cfg, &support), tracefs_check(&support)];
    checks.push(mark_victim_check(&support));
    let kmsg = kmsg_check(trace);
    let kmsg_ok = kmsg.ok;
    checks.extend([kmsg, cgroup_check(trace), caps_check()]);
    let hooks = hook_needs(&support);
    let (mut will_use, mut will_not_use) = trial_load(&cfg, support);
    if kmsg_ok {
        will_use.push(Hook::Kmsg.name());
    } else {
        will_not_use.push((Hook::Kmsg.name().to_string(), "not readable".to_string()));
    }
    let can_capture = will_use.iter().any(|h| {
        Hook::ALL
            .iter()
            .any(|k| k.name() == *h && k.captures_oom_kills())
    });
    Report {
        kernel,
        checks,
        hooks,
        will_use,
        will_not_use,
        can_capture,
    }
}

fn btf_check(cfg: &ProbeConfig, support: &KernelSupport) -> Check {
    Check {
        name: "btf",
        ok: support.btf_ok.is_ok(),
        detail: match &support.btf_ok {
            Ok(()) => format!("{} ({} types)", cfg.btf.display(), support.btf_types),
            Err(e) => e.clone(),
        },
    }
}

fn tracefs_check(support: &KernelSupport) -> Check {
    Check {
        name: "tracefs",
        ok: support.tracefs.is_ok(),
        detail: match &support.tracefs {
            Ok(p) => p.display().to_string(),
            Err(e) => e.clone(),
        },
    }
}

fn mark_victim_check(support: &KernelSupport) -> Check {
    Check {
        name: "mark_victim tracepoint",
        ok: support.layout.is_ok(),
        detail: match &support.layout {
            Ok(l) if l.comm.is_some() => {
                "extended ABI (pid, comm, rss, uid, pgtables, oom_score_adj)".to_string()
            }
            Ok(_) => "pid-only ABI (before 6.9 and its backports): rss and oom_score_adj come from other sources".to_string(),
            Err(e) => e.clone(),
        },
    }
}

fn kmsg_check(trace: &TraceArgs) -> Check {
    let path = &trace.paths.kmsg;
    Check {
        name: "kernel log",
        ok: fs::File::open(path).is_ok(),
        detail: match fs::File::open(path) {
            Ok(_) => format!("{} readable", path.display()),
            Err(e) => format!("{}: {e}: run as root or grant CAP_SYSLOG", path.display()),
        },
    }
}

/// The memory controller the agent would use (`--cgroup-root` honoured).
fn cgroup_check(trace: &TraceArgs) -> Check {
    let cgfs = CgroupFs::find(trace.paths.cgroup_root.as_deref());
    Check {
        name: "memory cgroup",
        ok: cgfs.is_some(),
        detail: match &cgfs {
            Some(c) => format!("{:?} at {}", c.version, c.root.display()),
            None => match &trace.paths.cgroup_root {
                Some(root) => format!(
                    "no memory controller at --cgroup-root {}: OOM domains cannot be named",
                    root.display()
                ),
                None => {
                    "no memory cgroup controller mounted: OOM domains cannot be named".to_string()
                }
            },
        },
    }
}

fn caps_check() -> Check {
    let caps = own_caps();
    Check {
        name: "capabilities",
        ok: caps.as_ref().is_some_and(|c| {
            c.contains(&"CAP_SYS_ADMIN") || (c.contains(&"CAP_BPF") && c.contains(&"CAP_PERFMON"))
        }),
        detail: caps.map_or_else(|| "unknown".to_string(), |c| c.join(", ")),
    }
}

/// Every hook of the chain with each of its needs, met or not.
fn hook_needs(support: &KernelSupport) -> Vec<HookNeeds> {
    CHAIN
        .iter()
        .map(|spec| HookNeeds {
            hook: spec.hook.name(),
            needs: spec
                .needs
                .iter()
                .map(|&need| {
                    let unmet = support.unmet(need);
                    Check {
                        name: need_name(need),
                        ok: unmet.is_none(),
                        detail: unmet.unwrap_or_else(|| need.to_string()),
                    }
                })
                .collect(),
        })
        .collect()
}

/// A static label for a need (the detail says the rest).
fn need_name(need: crate::capture::probe::Need) -> &'static str {
    use crate::capture::probe::Need;
    match need {
        Need::MarkVictimLayout => "mark_victim format",
        Need::SignalLayout => "signal_generate format",
        Need::Btf => "btf",
        Need::MarkVictimTaskArg => "mark_victim task argument",
        Need::SignalTaskArg => "signal_generate task argument",
        Need::WalkOffsets => "cgroup walk offsets",
        Need::OomControlOffsets => "oom_control offsets",
        Need::BtfFunc(_) => "btf func",
        Need::KprobePmu => "kprobes",
        Need::Kallsyms(_) => "kallsyms",
        Need::Killers => "userspace killers",
    }
}

/// Loads and attaches the real programs: what a run would use, and why not the rest.
fn trial_load(
    cfg: &ProbeConfig,
    support: KernelSupport,
) -> (Vec<&'static str>, Vec<(String, String)>) {
    match Probe::load(cfg, support) {
        Ok(p) => (
            p.active.iter().map(|h| h.name()).collect(),
            p.inactive
                .iter()
                .map(|(h, w)| (h.name().to_string(), w.clone()))
                .collect(),
        ),
        Err(e) => (Vec::new(), vec![("ebpf".to_string(), e.to_string())]),
    }
}

pub fn render_text(r: &Report) -> String {
    let mut out = format!("kernel {}\n", r.kernel);
    for c in &r.checks {
        out.push_str(&check_line("  ", c));
    }
    out.push_str("hooks and what they need:\n");
    for h in &r.hooks {
        out.push_str(&format!("  {}\n", h.hook));
        for n in &h.needs {
            out.push_str(&check_line("    ", n));
        }
    }
    out.push_str("will use:\n");
    for h in &r.will_use {
        out.push_str(&format!("  + {h}\n"));
    }
    out.push_str("will not use:\n");
    for (h, why) in &r.will_not_use {
        out.push_str(&format!("  - {h}: {why}\n"));
    }
    out.push_str(if r.can_capture {
        "oomtrace can capture OOM kills on this machine\n"
    } else {
        "oomtrace can NOT capture OOM kills here: fix one of the failures above\n"
    });
    out
}

fn check_line(indent: &str, c: &Check) -> String {
    format!(
        "{indent}[{}] {:<24} {}\n",
        if c.ok { " ok " } else { "FAIL" },
        c.name,
        c.detail
    )
}

/// Runs `oomtrace doctor`; returns whether kills can be captured.
pub fn run(args: &DoctorArgs, trace: &TraceArgs) -> bool {
    let report = collect(trace);
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        Format::Text => print!("{}", render_text(&report)),
    }
    report.can_capture
}

#[cfg(test)]
mod tests {
    use procfs::FromRead as _;

    use super::*;

    fn cap_eff(name: &str) -> u64 {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/node")
            .join(name);
        procfs::process::Status::from_file(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .capeff
    }

    #[test]
    fn capabilities_from_real_status_files() {
        // Root on the CI host: every capability but CAP_SYS_RESOURCE (a sandbox policy).
        let root = effective_caps(cap_eff("host-6.18.proc-sleep.status"));
        assert_eq!(
            root,
            vec!["CAP_SYS_ADMIN", "CAP_SYSLOG", "CAP_PERFMON", "CAP_BPF"]
        );
        // kthreadd: the full set.
        assert!(
            effective_caps(cap_eff("host-6.18.proc-kthreadd.status")).contains(&"CAP_SYS_RESOURCE")
        );
        // The DaemonSet's set (setpriv --bounding-set=-all,+bpf,+perfmon,+syslog): BPF, PERFMON, SYSLOG only.
        assert_eq!(
            effective_caps(cap_eff("host-6.18.proc-daemonset-caps.status")),
            vec!["CAP_SYSLOG", "CAP_PERFMON", "CAP_BPF"]
        );
        assert!(effective_caps(0).is_empty());
    }

    #[test]
    fn own_capabilities_are_read() {
        assert!(
            own_caps().is_some(),
            "/proc/self/status of the test process"
        );
    }
}
