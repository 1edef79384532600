//! Output: JSON lines (one object per kill) or one readable line per kill.

use std::io::{self, Write};

use crate::{
    cli::Format,
    report::{Kill, Scope},
};

pub struct Sink<W: Write> {
    format: Format,
    out: W,
}

impl<W: Write> Sink<W> {
    pub fn new(format: Format, out: W) -> Self {
        Self { format, out }
    }

    /// Writes one kill and flushes, so a pipe reader sees it at once.
    pub fn write(&mut self, kill: &Kill) -> io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, kill).map_err(io::Error::other)?;
                self.out.write_all(b"\n")?;
            }
            Format::Text => {
                self.out.write_all(text_line(kill).as_bytes())?;
                self.out.write_all(b"\n")?;
            }
        }
        self.out.flush()
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn or_unknown<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// The text form: who, where, which limit, and the explanation.
pub fn text_line(k: &Kill) -> String {
    let who = match &k.k8s {
        Some(p) => format!(
            "{}/{} container {} ({})",
            p.namespace.as_deref().unwrap_or("?"),
            p.pod.as_deref().or(p.pod_uid.as_deref()).unwrap_or("?"),
            p.container.as_deref().unwrap_or("?"),
            p.qos_class.as_deref().unwrap_or("?")
        ),
        None => format!("cgroup {}", k.victim.cgroup.as_deref().unwrap_or("?")),
    };
    let domain = match (k.scope, &k.oom_domain) {
        (Some(Scope::Node), _) => "NODE out of memory".to_string(),
        (Some(Scope::Cgroup), Some(d)) => format!(
            "{} limit hit ({})",
            serde_json::to_value(d)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            k.oom_cgroup.as_deref().unwrap_or("?")
        ),
        (Some(Scope::Cgroup), None) => {
            format!(
                "cgroup limit hit ({})",
                k.oom_cgroup.as_deref().unwrap_or("?")
            )
        }
        (None, _) => "scope unknown".to_string(),
    };
    let usage = match (k.memcg.victim_usage_bytes, k.memcg.victim_limit_bytes) {
        (Some(u), Some(l)) => format!(" usage {} of {}", mib(u), mib(l)),
        (Some(u), None) => format!(" usage {} (no limit)", mib(u)),
        _ => String::new(),
    };
    let mut line = format!(
        "{} {} OOM-KILL pid {} ({}) adj {} {} | {}{}",
        k.time,
        k.node,
        or_unknown(k.victim.pid),
        k.victim.comm.as_deref().unwrap_or("?"),
        or_unknown(k.victim.oom_score_adj),
        who,
        domain,
        usage
    );
    if let Some(e) = &k.explanation {
        line.push_str(" | ");
        line.push_str(e);
    }
    if let Some(a) = &k.advice {
        line.push_str(" | advice: ");
        line.push_str(a);
    }
    if !k.missing.is_empty() {
        line.push_str(&format!(" | missing: {}", k.missing.join("; ")));
    }
    line
}
