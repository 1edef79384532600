//! `oomtrace doctor`: what this kernel offers and what oomtrace will use.
//!
//! It loads and attaches the real programs (then detaches them), so what it
//! says will be used is what a run would use.

use std::fs;

use serde::Serialize;

use crate::{
    cli::{DoctorArgs, Format, TraceArgs},
    node::CgroupFs,
    probe::{Disabled, Hook, KernelSupport, Probe, ProbeConfig},
};

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub checks: Vec<Check>,
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
    let cfg = ProbeConfig {
        tracefs: trace.paths.tracefs.clone(),
        btf: trace.paths.btf.clone(),
        disabled: Disabled::default(),
        ringbuf_bytes: trace.ringbuf_bytes,
        killers: trace.userspace_killers.clone(),
    };
    let support = KernelSupport::discover(&cfg);
    let mut checks = Vec::new();
    checks.push(Check {
        name: "btf",
        ok: support.btf.is_ok(),
        detail: match &support.btf {
            Ok(b) => format!("{} ({} types)", cfg.btf.display(), b.type_count()),
            Err(e) => e.clone(),
        },
    });
    checks.push(Check {
        name: "tracefs",
        ok: support.tracefs.is_ok(),
        detail: match &support.tracefs {
            Ok(p) => p.display().to_string(),
            Err(e) => e.clone(),
        },
    });
    checks.push(Check {
        name: "mark_victim tracepoint",
        ok: support.layout.is_ok(),
        detail: match &support.layout {
            Ok(l) if l.comm.is_some() => {
                "extended ABI (pid, comm, rss, uid, pgtables, oom_score_adj)".to_string()
            }
            Ok(_) => "pid-only ABI (before 6.9 and its backports): rss and oom_score_adj come from other sources".to_string(),
            Err(e) => e.clone(),
        },
    });
    checks.push(Check {
        name: "tp_btf task argument",
        ok: support.tp_btf_task_arg.is_ok(),
        detail: match &support.tp_btf_task_arg {
            Ok(()) => "mark_victim(struct task_struct *task, uid_t uid)".to_string(),
            Err(e) => e.clone(),
        },
    });
    if let Some(r) = &support.offsets {
        checks.push(Check {
            name: "kernel struct offsets",
            ok: r.walk_ok(),
            detail: if r.missing.is_empty() {
                "all found in BTF".to_string()
            } else {
                format!("missing: {}", r.missing.join("; "))
            },
        });
    }
    checks.push(Check {
        name: "oom_kill_process symbol",
        ok: support.oom_kill_process_kallsyms || support.oom_kill_process_func,
        detail: format!(
            "kallsyms: {}, BTF FUNC: {}",
            support.oom_kill_process_kallsyms, support.oom_kill_process_func
        ),
    });
    checks.push(Check {
        name: "oom_kill_memcg_member symbol",
        ok: support.group_member_kallsyms || support.group_member_func,
        detail: format!(
            "kallsyms: {}, BTF FUNC: {} (names memory.oom.group members' cgroups where tp_btf cannot)",
            support.group_member_kallsyms, support.group_member_func
        ),
    });
    let kprobes = support
        .tracefs
        .as_ref()
        .is_ok_and(|t| t.join("kprobe_events").exists());
    checks.push(Check {
        name: "kprobes",
        ok: kprobes,
        detail: if kprobes {
            "kprobe_events present".to_string()
        } else {
            "no kprobe_events in tracefs: kernel built without CONFIG_KPROBES".to_string()
        },
    });
    let kmsg = fs::File::open(&trace.paths.kmsg);
    checks.push(Check {
        name: "kernel log",
        ok: kmsg.is_ok(),
        detail: match &kmsg {
            Ok(_) => format!("{} readable", trace.paths.kmsg.display()),
            Err(e) => format!(
                "{}: {e}: run as root or grant CAP_SYSLOG",
                trace.paths.kmsg.display()
            ),
        },
    });
    drop(kmsg);
    let cgfs = fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| CgroupFs::detect(&m));
    checks.push(Check {
        name: "memory cgroup",
        ok: cgfs.is_some(),
        detail: match &cgfs {
            Some(c) => format!("{:?} at {}", c.version, c.root.display()),
            None => "no memory cgroup controller mounted: OOM domains cannot be named".to_string(),
        },
    });
    let caps = own_caps();
    checks.push(Check {
        name: "capabilities",
        ok: caps.as_ref().is_some_and(|c| {
            c.contains(&"CAP_SYS_ADMIN") || (c.contains(&"CAP_BPF") && c.contains(&"CAP_PERFMON"))
        }),
        detail: caps.map_or_else(|| "unknown".to_string(), |c| c.join(", ")),
    });

    let (will_use, will_not_use) = match Probe::load(&cfg, support) {
        Ok(p) => (
            p.active.iter().map(|h| h.name()).collect::<Vec<_>>(),
            p.inactive
                .iter()
                .map(|(h, w)| (h.name().to_string(), w.clone()))
                .collect(),
        ),
        Err(e) => (Vec::new(), vec![("ebpf".to_string(), e.to_string())]),
    };
    let mut will_use = will_use;
    let mut will_not_use = will_not_use;
    if checks.iter().any(|c| c.name == "kernel log" && c.ok) {
        will_use.push(Hook::Kmsg.name());
    } else {
        will_not_use.push((Hook::Kmsg.name().to_string(), "not readable".to_string()));
    }
    let can_capture = !will_use.is_empty();
    Report {
        kernel,
        checks,
        will_use,
        will_not_use,
        can_capture,
    }
}

pub fn render_text(r: &Report) -> String {
    let mut out = format!("kernel {}\n", r.kernel);
    for c in &r.checks {
        out.push_str(&format!(
            "  [{}] {:<24} {}\n",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        ));
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
