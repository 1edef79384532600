//! Command line (clap derive): the `///` comments are the help text.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Explains every OOM kill on this node: who was killed, which limit was hit
/// (container, pod, node allocatable, or the node itself), how the victim was
/// chosen, and what to do about it.
#[derive(Debug, Parser)]
#[command(name = "oomtrace", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what this kernel offers (BTF, tracepoint ABI, kprobe/fentry,
    /// kmsg, cgroups, capabilities) and what oomtrace will use.
    Doctor(DoctorArgs),
    /// Show the order in which the kernel would kill, now: in a node-level
    /// OOM, or at the limit of one cgroup (--cgroup, --pod, --allocatable).
    Rank(crate::cmd::rank::RankArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per kill (NDJSON), for log shipping and scripts.
    Json,
    /// One readable line per kill, for people at a terminal.
    Text,
}

/// Where the kernel and the node expose what oomtrace reads.
#[derive(Debug, Clone, Args)]
pub struct Paths {
    /// tracefs mount point (default: /sys/kernel/tracing, then /sys/kernel/debug/tracing).
    #[arg(long, env = "OOMTRACE_TRACEFS", global = true)]
    pub tracefs: Option<PathBuf>,

    /// The kernel's BTF.
    #[arg(
        long,
        env = "OOMTRACE_BTF",
        default_value = "/sys/kernel/btf/vmlinux",
        global = true
    )]
    pub btf: PathBuf,

    /// The kernel log device.
    #[arg(
        long,
        env = "OOMTRACE_KMSG",
        default_value = "/dev/kmsg",
        global = true
    )]
    pub kmsg: PathBuf,

    /// Mount point of the memory cgroup controller (default: found in /proc/self/mounts).
    #[arg(long, env = "OOMTRACE_CGROUP_ROOT", global = true)]
    pub cgroup_root: Option<PathBuf>,

    /// The kubelet's pod log directory (pod names without the API server).
    #[arg(
        long,
        env = "OOMTRACE_POD_LOGS",
        default_value = "/var/log/pods",
        global = true
    )]
    pub pod_logs: PathBuf,

    /// The kubelet's container log symlinks.
    #[arg(
        long,
        env = "OOMTRACE_CONTAINER_LOGS",
        default_value = "/var/log/containers",
        global = true
    )]
    pub container_logs: PathBuf,

    /// procfs of the node (in a container: the host's /proc mounted elsewhere).
    #[arg(
        long = "proc",
        env = "OOMTRACE_PROC",
        default_value = "/proc",
        global = true
    )]
    pub proc_root: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Output format [default: text at a terminal, json otherwise].
    #[arg(long, value_enum, env = "OOMTRACE_FORMAT")]
    pub format: Option<Format>,

    /// Exit 0 after this many kills (for scripts).
    #[arg(long)]
    pub count: Option<u64>,

    /// Node name in each event (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Use no eBPF at all: the kernel log alone reports every kill (degraded mode).
    #[arg(long)]
    pub no_bpf: bool,

    /// Do not read the kernel log.
    #[arg(long)]
    pub no_kmsg: bool,

    /// Do not attach the classic oom:mark_victim tracepoint.
    #[arg(long)]
    pub no_tracepoint: bool,

    /// Do not attach tp_btf programs: tp_btf/mark_victim (the victim's cgroup
    /// walk) and tp_btf/signal_generate (the classic tracepoint is used instead).
    #[arg(long)]
    pub no_tp_btf: bool,

    /// Do not attach fentry/oom_kill_process.
    #[arg(long)]
    pub no_fentry: bool,

    /// Do not attach kprobe/oom_kill_process.
    #[arg(long)]
    pub no_kprobe: bool,

    /// Do not attach the signal_generate hook (kills by userspace OOM killers).
    #[arg(long)]
    pub no_signal_hook: bool,

    /// Process names of userspace OOM killers: a SIGKILL or SIGTERM one of
    /// them sends is reported (at most 8 names, each as the kernel keeps it:
    /// up to 15 bytes). A name is only a prefilter: the sender is confirmed by
    /// its executable. Talos's machined runs as `init`.
    #[arg(
        long,
        env = "OOMTRACE_USERSPACE_KILLERS",
        value_delimiter = ',',
        value_parser = crate::capture::probe::parse_killer_name,
        default_values_t = crate::capture::probe::DEFAULT_USERSPACE_KILLERS.map(String::from)
    )]
    pub userspace_killers: Vec<String>,

    /// How long to wait for every source of one kill before reporting it with what is known.
    #[arg(long, value_parser = parse_millis, default_value = "1000")]
    pub wait_ms: Duration,

    /// Size of the kernel ring buffer in bytes (a power of two).
    #[arg(long, default_value_t = oomtrace_common::DEFAULT_RINGBUF_BYTES)]
    pub ringbuf_bytes: u32,

    /// Largest memory consumers listed in node context.
    #[arg(long, default_value_t = 5)]
    pub top: usize,

    /// Serve Prometheus/OpenMetrics metrics on /metrics and readiness on
    /// /healthz at this address (e.g. 0.0.0.0:9731).
    #[arg(long, env = "OOMTRACE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Drop the metric series of a pod (its `namespace`/`pod`/`container`
    /// labels) this long after its last kill, so that the churn of pod names
    /// on a busy cluster does not grow the metrics without bound. Keep it at
    /// least as long as the longest window your alerts and dashboards count
    /// kills over (the shipped alerts: 1h); a pod killed again after its
    /// series went starts a new series at 1.
    #[arg(
        long,
        env = "OOMTRACE_METRICS_POD_TTL",
        value_parser = parse_ttl,
        default_value = "1h"
    )]
    pub metrics_pod_ttl: Duration,

    /// Post a Kubernetes Event on the pod of each kill (one per pod, container
    /// and reason; repeats update its count at most every 30 s) and add
    /// labels, owner and memory requests/limits from a watch of this node's
    /// pods (in-cluster config, else --kubeconfig/KUBECONFIG). Without API
    /// access, kills are still reported.
    #[arg(long, env = "OOMTRACE_KUBE")]
    pub kube: bool,

    /// Kubeconfig file for --kube outside a cluster.
    #[arg(long, env = "OOMTRACE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Keep what a restart needs in this directory (created if missing; in
    /// the DaemonSet a hostPath such as /var/lib/oomtrace): where the kernel
    /// log was read up to, what was reported, and the kernel's kill counter.
    /// After a restart the kills the kernel log still holds that were not
    /// reported are reported, with "replayed": true, and kills the kernel
    /// counted while oomtrace was down that the log no longer holds are
    /// counted as unreported. Without it nothing is kept and nothing replayed.
    #[arg(long, env = "OOMTRACE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// /healthz and oomtrace_ready turn unready when the correlation loop or
    /// the output thread has made no progress for this long (e.g. a stdout
    /// nobody reads), as they do at once when a capture source ends.
    #[arg(
        long,
        env = "OOMTRACE_STALL_AFTER",
        value_parser = parse_ttl,
        default_value = "30s"
    )]
    pub stall_after: Duration,

    /// Debugging aid: also write every raw eBPF ring-buffer record to this
    /// directory (`ring-<n>.bin`), e.g. to attach to a bug report.
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<PathBuf>,

    #[command(flatten)]
    pub paths: Paths,
}

impl TraceArgs {
    /// The output format: `--format` or `OOMTRACE_FORMAT` when given, else
    /// text when stdout is a terminal (a person reads it) and JSON otherwise
    /// (a pipe, a file, a DaemonSet's log).
    pub fn format(&self) -> Format {
        use std::io::IsTerminal as _;
        self.format.unwrap_or(if std::io::stdout().is_terminal() {
            Format::Text
        } else {
            Format::Json
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("expected milliseconds: {e}"))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than 0 (e.g. 1h, 90m)".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}: expected a duration such as 1h, 90m or 2h30m")),
    }
}
