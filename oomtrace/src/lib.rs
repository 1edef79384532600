//! oomtrace: explains every OOM kill on a Linux or Kubernetes node.
//!
//! Data flow (one concept per module):
//!
//! ```text
//! kernel hooks ──ring buffer──► probe ─► correlate ─► enrich ─► explain ─► sink
//!  (oomtrace-ebpf)              (load,    (merge the     (identity,  (verdict,  (json, text)
//!                                attach,   sources of     podnames,   advice)
//!  /dev/kmsg ───────────────► kmsg       one kill by    node)
//!                             (parse)    victim pid)
//! ```
//!
//! - [`btf`]: a minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//! - [`tracefs`]: finds tracefs and parses tracepoint `format` files.
//! - [`offsets`]: kernel struct offsets for the eBPF programs, computed from BTF.
//! - [`probe`]: loads the eBPF object, attaches the hook chain, reads the ring buffer.
//! - [`kmsg`]: reads `/dev/kmsg` and parses the OOM killer's lines of every kernel generation.
//! - [`ledger`]: what was reported: restart replay and the check against the kernel's kill counter.
//! - [`state`]: what a restart continues from, saved atomically in `--state-dir`.
//! - [`health`]: whether every source runs and every stage drains (`/healthz`, `oomtrace_ready`).
//! - [`correlate`]: merges the sources of one kill into a [`report::Kill`].
//! - [`verdict`]: which cgroup's limit was hit, from the best source available.
//! - [`identity`]: cgroup path → pod, container, QoS class, runtime.
//! - [`podnames`]: pod UID → namespace, pod and container names, from the node's log directories.
//! - [`qos`]: the kubelet's oom_score_adj policy and its inverse.
//! - [`node`]: node memory, pressure and the largest consumers at the moment of a kill.
//! - [`proc`]: processes of the node's `/proc`, each read through one pinned handle (procfs).
//! - [`explain`]: the explanation and advice for each OOM domain.
//! - [`report`]: the event a user reads (JSON field names are a contract).
//! - [`readcap`]: whole-file reads with a size cap.
//! - [`sink`]: JSON lines and text output.
//! - [`metrics`]: Prometheus/OpenMetrics counters and `/healthz` on `--metrics-addr`.
//! - [`kube`]: `--kube`: a Pod Event per kill and pod metadata from a watch of this node's pods.
//! - [`rank`]: who the kernel would kill next.
//! - [`doctor`]: what this kernel offers and what oomtrace will use.
//! - [`agent`]: the tracing loop that ties them together.

pub mod agent;
pub mod btf;
pub mod capture;
pub mod cli;
pub mod correlate;
pub mod doctor;
pub mod enrich;
pub mod explain;
pub mod health;
pub mod identity;
pub mod kmsg;
pub mod kube;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod offsets;
pub mod podnames;
pub mod probe;
pub mod proc;
pub mod qos;
pub mod rank;
pub mod readcap;
pub mod report;
pub mod sink;
pub mod state;
pub mod tracefs;
pub mod units;
pub mod verdict;
