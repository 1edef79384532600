//! The agent: wires the stages together and owns shutdown.
//!
//! ```text
//! ring buffer ── drain task ─┐                  ┌─ enrich ─ explain ─ sinks
//!                            ├─► correlate task ┤       (output thread)
//! /dev/kmsg ──── thread ─────┘        │         └─ node snapshots (watch thread)
//!                          /proc lookups (thread)
//! ```
//!
//! Each stage runs beside the others, joined by bounded channels: nothing
//! slow (cgroup walks, `/proc` reads, the API server) ever sits in front of
//! the draining of the ring buffer or the kernel log. On SIGTERM or SIGINT
//! (or `--count` kills) the sources are drained (the ring buffer, and the
//! kernel log up to its last record), every pending kill is reported with
//! what is known, the sinks are flushed, then the agent exits.
//!
//! Beside the kills, the output thread keeps the [`crate::ledger`]: what was
//! reported, saved in `--state-dir` for the next start, and compared every
//! second with the kernel's own kill counter ([`continuity`]). The stages
//! beat a shared [`Health`] that `/healthz` reads.

mod continuity;

use std::{
    collections::VecDeque,
    fs, io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use self::continuity::Continuity;
use crate::{
    capture::kmsg::{KillLinesDue, KmsgError, KmsgOom, KmsgStats, KmsgTap, OomLine},
    capture::probe::{Hook, KernelSupport, Probe, ProbeConfig, Stats},
    capture::{
        Input, KmsgSighting,
        killer::{KillerCheck, KillerStats},
        lookup::{self, LookupConfig, Request},
        ring::Decoder,
    },
    cgroupfs::CgroupFs,
    cli::TraceArgs,
    correlate::{Correlated, Correlator, Expect},
    enrich::node,
    enrich::podnames::PodNames,
    enrich::{
        Enricher, WallClock,
        kube::{PodMetadata, PodNews},
        reported::{KillBook, ReasonMismatch, Termination},
        snapshots::{self, NodeSnapshots, SnapshotConfig},
    },
    explain,
    health::{Health, Stage},
    kube::ApiClient,
    sink::metrics::{self, Metrics, MetricsError, MetricsSink},
    sink::{
        SinkError, Sinks,
        events::{EventsPoster, EventsSink},
        stdout::Stdout,
    },
    units,
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(
        "nothing can capture OOM kills here: eBPF: {bpf}; kernel log: {kmsg}. Run `oomtrace doctor` for details"
    )]
    NoSource { bpf: String, kmsg: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Output(#[from] SinkError),
    #[error("reading the ring buffer failed: {0}: restart oomtrace")]
    Ring(#[source] io::Error),
    #[error("cannot start the {what} thread: {source}: the process may be at its thread limit")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// What a run did, for the exit summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub kills: u64,
    /// Of `kills`, found in the kernel log after a restart.
    pub replayed: u64,
    /// Kills the kernel counted that no source reported (this run's checks).
    pub unreported: u64,
    pub lost_kernel: u64,
    pub lost_kmsg: u64,
    /// Kernel-log records written by a process that looked like OOM lines.
    pub forged_kmsg: u64,
}

/// Capture records lost so far, as the kernel and the kmsg reader count them.
#[derive(Clone)]
struct Losses {
    kernel: Option<Arc<Stats>>,
    kmsg: Arc<KmsgStats>,
}

impl Losses {
    fn total(&self) -> u64 {
        self.kernel_lost() + self.kmsg_lost()
    }

    fn kernel_lost(&self) -> u64 {
        self.kernel.as_ref().map_or(0, |s| s.lost())
    }

    fn kmsg_lost(&self) -> u64 {
        self.kmsg.lost_records.load(Ordering::Relaxed)
    }

    fn forged(&self) -> u64 {
        self.kmsg.forged_oom_lines.load(Ordering::Relaxed)
    }
}

/// Runs the tracer until SIGINT/SIGTERM or `--count` kills.
pub async fn run(args: TraceArgs) -> Result<Summary, AgentError> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    run_until(args, async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    })
    .await
}

/// Runs the tracer until `shutdown` completes or `--count` kills.
pub async fn run_until(
    args: TraceArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, AgentError> {
    let node = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(hostname);
    let metrics = start_metrics(&args).await?;
    let health = Arc::new(Health::new(args.stall_after));
    if let Some(m) = &metrics {
        m.watch_health(Arc::clone(&health));
    }
    let sources = Sources::start(&args)?;
    release_freed_memory();
    let context = NodeContext::start(&args, &node)?;
    let running = Running::start(&args, node, sources, context, metrics, health)?;
    running.until(shutdown).await
}

/// What enrichment reads besides the kill: the cgroup tree, node memory
/// snapshots, and with `--kube` the API client and the pod watch.
struct NodeContext {
    cgfs: Option<CgroupFs>,
    snapshots: Option<NodeSnapshots>,
    api: Option<ApiClient>,
    pods: Option<(PodMetadata, JoinHandle<()>)>,
    /// Pods the kubelet evicted for memory, from the pod watch.
    pod_news: Option<mpsc::Receiver<PodNews>>,
}

impl NodeContext {
    fn start(args: &TraceArgs, node: &str) -> Result<Self, AgentError> {
        let cgfs = CgroupFs::find(args.paths.cgroup_root.as_deref());
        let snapshots = match &cgfs {
            Some(cgfs) => Some(
                NodeSnapshots::spawn(SnapshotConfig {
                    cgfs: cgfs.clone(),
                    proc_root: args.paths.proc_root.clone(),
                    top: args.top,
                    pod_logs: args.paths.pod_logs.clone(),
                    container_logs: args.paths.container_logs.clone(),
                    max_age: args.wait_ms + Duration::from_secs(10),
                })
                .map_err(|source| AgentError::Thread {
                    what: "node memory watch",
                    source,
                })?,
            ),
            None => None,
        };
        let api = args.kube.then(|| ApiClient::start(args.kubeconfig.clone()));
        let (news_tx, pod_news) = match &api {
            Some(_) => {
                let (tx, rx) = mpsc::channel::<PodNews>(256);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let pods = api
            .as_ref()
            .map(|api| PodMetadata::watch(api, node.to_string(), news_tx));
        Ok(Self {
            cgfs,
            snapshots,
            api,
            pods,
            pod_news,
        })
    }
}

/// The running stages, and what shutdown needs to end them in order.
struct Running {
    stop_tx: watch::Sender<bool>,
    correlate: JoinHandle<CorrelateCounts>,
    output: thread::JoinHandle<Written>,
    monitor: JoinHandle<()>,
    pod_watch: Option<JoinHandle<()>>,
    poster: Option<EventsPoster>,
    losses: Losses,
    /// Senders of listed signals that were not confirmed as memory killers.
    killer_stats: Option<Arc<KillerStats>>,
    /// Keeps the eBPF programs attached until the end.
    probe: Option<LoadedProbe>,
}

impl Running {
    /// Starts capture, correlation and output, joined by bounded channels.
    fn start(
        args: &TraceArgs,
        node: String,
        sources: Sources,
        context: NodeContext,
        metrics: Option<Arc<Metrics>>,
        health: Arc<Health>,
    ) -> Result<Self, AgentError> {
        let (stop_tx, stop) = watch::channel(false);
        let (input_tx, input_rx) = mpsc::channel::<Input>(4096);
        let (out_tx, out_rx) = mpsc::channel::<Vec<ToOutput>>(1024);
        sources.announce(metrics.as_deref(), &health);
        let Sources {
            probe,
            ring,
            kmsg,
            kmsg_stats,
            expect,
            decoder,
            active,
            continuity,
            ..
        } = sources;
        let (kmsg_rx, kmsg_stop, kmsg_thread, kill_lines) = match kmsg {
            Some(k) => (
                Some(k.rx),
                Some(k.stop),
                Some(k.thread),
                Some(KillLines {
                    tap: k.tap,
                    due: k.due,
                    victims: VictimLines::default(),
                }),
            ),
            None => (None, None, None, None),
        };
        let losses = Losses {
            kernel: probe.as_ref().and_then(|p| p.stats.clone()),
            kmsg: kmsg_stats,
        };
        let ring_task = ring.map(|ring| {
            let reader = RingReader {
                decoder,
                record_dir: args.record_dir.clone(),
                recorded: 0,
            };
            tokio::spawn(drain_ring(
                ring,
                reader,
                input_tx.clone(),
                stop.clone(),
                Arc::clone(&health),
            ))
        });
        let mut expect = expect;
        // Where the memory was is read for every kill when the memory
        // controller is known; the cgroup from /proc only without tp_btf.
        expect.memory = context.cgfs.is_some();
        let lookup = (expect.proc || expect.memory).then(|| LookupConfig {
            proc_root: args.paths.proc_root.clone(),
            cgroups: expect.proc,
            memory: context.cgfs.clone(),
        });
        let killers =
            match active.contains(&Hook::TpBtfSignal) || active.contains(&Hook::TracepointSignal) {
                true => Some(
                    KillerCheck::spawn(args.paths.proc_root.clone(), input_tx.clone()).map_err(
                        |source| AgentError::Thread {
                            what: "killer check",
                            source,
                        },
                    )?,
                ),
                false => None,
            };
        let killer_stats = killers.as_ref().map(|k| Arc::clone(&k.stats));
        drop(input_tx);
        let mut correlator = Correlator::new(expect, args.wait_ms, units::page_size(), boot_id());
        let mut stage = CorrelateStage {
            lookup,
            lookups: Vec::new(),
            kill_lines,
            killers,
            snapshots: context.snapshots.clone(),
            out: out_tx,
            batcher: Batcher::default(),
            losses: losses.clone(),
            health: Arc::clone(&health),
            kmsg_stop: kmsg_stop.clone(),
            awaiting_walk: Vec::new(),
            wait_for_walk: expect.tp_btf && expect.memory,
        };
        let pod_news = context.pod_news;
        let stage_kmsg_stop = kmsg_stop;
        let correlate = tokio::spawn({
            let stop = stop.clone();
            async move {
                stage
                    .run(
                        &mut correlator,
                        input_rx,
                        kmsg_rx,
                        pod_news,
                        stop,
                        ring_task,
                    )
                    .await;
                CorrelateCounts {
                    late: correlator.late,
                    not_killed: correlator.not_killed,
                    repeated: correlator.repeated,
                }
            }
        });
        let (sinks, poster) = sinks(args, metrics.as_ref(), context.api.as_ref());
        let (pods, pod_watch) = context.pods.unzip();
        let output = OutputStage {
            enricher: Enricher {
                node,
                cgfs: context.cgfs,
                proc_root: args.paths.proc_root.clone(),
                pod_names: PodNames::new()
                    .with_pods_dir(args.paths.pod_logs.clone())
                    .with_containers_dir(args.paths.container_logs.clone()),
                mem_total: node::read_meminfo(&args.paths.proc_root)
                    .ok()
                    .and_then(|m| m.total_bytes),
                clock: WallClock::now(),
                snapshots: context.snapshots,
                pods,
            },
            sinks,
            losses: losses.clone(),
            count: args.count,
            stop: stop_tx.clone(),
            continuity,
            health: Arc::clone(&health),
            book: KillBook::default(),
        };
        let output = thread::Builder::new()
            .name("output".into())
            .spawn(move || output.run(out_rx))
            .map_err(|source| AgentError::Thread {
                what: "output",
                source,
            })?;
        let kmsg_watch = kmsg_thread.zip(stage_kmsg_stop);
        let monitor = tokio::spawn(monitor_sources(losses.clone(), metrics, kmsg_watch, health));
        Ok(Self {
            stop_tx,
            correlate,
            output,
            monitor,
            pod_watch,
            poster,
            losses,
            killer_stats,
            probe,
        })
    }

    /// Runs until `shutdown`, `--count` or a broken output, then stops the
    /// stages in order: capture drains, correlation flushes what is pending,
    /// output writes it, Events get a grace period.
    async fn until(self, shutdown: impl Future<Output = ()>) -> Result<Summary, AgentError> {
        let mut stopped = self.stop_tx.subscribe();
        tokio::select! {
            () = shutdown => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
        let _ = self.stop_tx.send(true);
        let counts = self.correlate.await.unwrap_or_default();
        let output = self.output;
        let written = tokio::task::spawn_blocking(move || output.join())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        self.monitor.abort();
        if let Some(watch) = self.pod_watch {
            watch.abort();
        }
        if let Some(p) = self.poster {
            p.close(Duration::from_secs(2)).await;
        }
        let summary = Summary {
            kills: written.kills,
            replayed: written.replayed,
            unreported: written.unreported,
            lost_kernel: self.losses.kernel_lost(),
            lost_kmsg: self.losses.kmsg_lost(),
            forged_kmsg: self.losses.forged(),
        };
        let read_errors = self
            .losses
            .kernel
            .as_ref()
            .map_or(0, |s| s.snapshot().read_errors);
        eprintln!(
            "oomtrace: exiting: {} kills reported ({} replayed from the kernel log), {} kills counted by the kernel but unreported, {} kernel events lost, {} kernel log records lost, {} kernel read errors, {} late sources dropped, {} marked victims not killed (already exiting), {} repeated kill lines, {} forged kernel-log OOM lines ignored",
            summary.kills,
            summary.replayed,
            summary.unreported,
            summary.lost_kernel,
            summary.lost_kmsg,
            read_errors,
            counts.late,
            counts.not_killed,
            counts.repeated,
            summary.forged_kmsg
        );
        if let Some(k) = &self.killer_stats {
            let unconfirmed = k.unconfirmed.load(std::sync::atomic::Ordering::Relaxed);
            let dropped = k.dropped.load(std::sync::atomic::Ordering::Relaxed);
            if unconfirmed + dropped > 0 {
                eprintln!(
                    "oomtrace: {unconfirmed} signals from senders not confirmed as memory killers not reported, {dropped} dropped unchecked (queue full)"
                );
            }
        }
        drop(self.probe);
        match written.error {
            Some(e) => Err(e.into()),
            None => Ok(summary),
        }
    }
}

/// Every sink of this run, in order: metrics, Events, stdout.
fn sinks(
    args: &TraceArgs,
    metrics: Option<&Arc<Metrics>>,
    api: Option<&ApiClient>,
) -> (Sinks, Option<EventsPoster>) {
    let mut sinks = Sinks::default();
    if let Some(m) = metrics {
        sinks.push(MetricsSink::new(Arc::clone(m)));
    }
    let poster = api.map(|api| {
        let (sink, poster) = EventsSink::start(api.clone());
        sinks.push(sink);
        poster
    });
    // Each record is serialised into the buffer and written with one
    // write() at its flush: straight into `io::stdout()`, serde_json's
    // small writes each take stdout's lock, and its 1 KiB line buffer
    // splits a kill's JSON in two write()s.
    let out = io::BufWriter::with_capacity(STDOUT_BUFFER, io::stdout());
    sinks.push(Stdout::new(args.format(), out));
    (sinks, poster)
}

/// Bigger than any one record (a kill's JSON line is 1.5-3 KiB).
const STDOUT_BUFFER: usize = 16 * 1024;

async fn start_metrics(args: &TraceArgs) -> Result<Option<Arc<Metrics>>, AgentError> {
    let Some(addr) = args.metrics_addr else {
        return Ok(None);
    };
    let m = Arc::new(Metrics::with_pod_ttl(args.metrics_pod_ttl));
    let bound = metrics::serve(addr, Arc::clone(&m)).await?;
    info!("metrics on http://{bound}/metrics");
    Ok(Some(m))
}

/// The capture sources that could be started, and what they expect.
struct Sources {
    probe: Option<LoadedProbe>,
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    kmsg: Option<KmsgSource>,
    kmsg_stats: Arc<KmsgStats>,
    active: Vec<Hook>,
    expect: Expect,
    decoder: Decoder,
    bpf_error: Option<String>,
    continuity: Continuity,
}

/// The kernel log reader thread: its lines, how to stop it, how it ended.
struct KmsgSource {
    rx: mpsc::Receiver<KmsgOom>,
    /// Asks the reader to read up to the last record and end.
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<(), KmsgError>>,
    /// Where the correlation stage announces victims whose kill lines are
    /// due and not read yet.
    due: Option<KillLinesDue>,
    /// The correlation stage's own reads of the log.
    tap: KmsgTap,
}

/// The loaded eBPF programs (kept alive while the agent runs) and their counters.
struct LoadedProbe {
    probe: Probe,
    stats: Option<Arc<Stats>>,
}

impl Sources {
    fn start(args: &TraceArgs) -> Result<Self, AgentError> {
        // Before any source can see a kill: every kill the kernel counts
        // from here on is one a source could report.
        let mut continuity = Continuity::open(args);
        let (probe, bpf_error) = if args.no_bpf {
            (None, "disabled by --no-bpf".to_string())
        } else {
            match load_probe(args) {
                Ok(p) => (Some(p), String::new()),
                Err(e) => {
                    warn!("eBPF unavailable: {e}");
                    (None, e.to_string())
                }
            }
        };
        let kmsg_stats = Arc::new(KmsgStats::default());
        let (kmsg, kmsg_error) = if args.no_kmsg {
            (None, "disabled by --no-kmsg".to_string())
        } else {
            let (tx, rx) = mpsc::channel::<KmsgOom>(4096);
            let stop = Arc::new(AtomicBool::new(false));
            let started = continuity
                .open_kmsg(args, Arc::clone(&kmsg_stats))
                .and_then(|(reader, replay)| {
                    let (due, tap) = (reader.kill_lines_due(), reader.tap());
                    Ok((reader.spawn(replay, tx, Arc::clone(&stop))?, due, tap))
                });
            match started {
                Ok((thread, due, tap)) => (
                    Some(KmsgSource {
                        rx,
                        stop,
                        thread,
                        due,
                        tap,
                    }),
                    String::new(),
                ),
                Err(e) => {
                    warn!("kernel log unavailable: {e}");
                    (None, e.to_string())
                }
            }
        };
        continuity.sync(true);
        let mut active: Vec<Hook> = probe.as_ref().map(|p| p.active.clone()).unwrap_or_default();
        if kmsg.is_some() {
            active.push(Hook::Kmsg);
        }
        if active.is_empty() {
            return Err(AgentError::NoSource {
                bpf: bpf_error,
                kmsg: kmsg_error,
            });
        }
        let (ring, loaded) = match probe {
            Some(mut p) => {
                let ring = p
                    .take_ring()
                    .map_err(|e| AgentError::Ring(io::Error::other(e.to_string())))?;
                // SAFETY: the ring buffer's fd stays open as long as the AsyncFd owns it.
                let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                    .map_err(|e| AgentError::Ring(e.into()))?;
                let stats = p.take_stats().map(Arc::new);
                (Some(ring), Some(LoadedProbe { probe: p, stats }))
            }
            None => (None, None),
        };
        let decoder = Decoder {
            layout: loaded.as_ref().and_then(|p| p.probe.layout.clone()),
            page_size: units::page_size(),
            signal_hook: active.contains(&Hook::TpBtfSignal)
                || active.contains(&Hook::TracepointSignal),
        };
        let expect = Expect {
            tracepoint: active.contains(&Hook::Tracepoint),
            tp_btf: active.contains(&Hook::TpBtf),
            kmsg: active.contains(&Hook::Kmsg),
            decision: active.contains(&Hook::Fentry) || active.contains(&Hook::Kprobe),
            // Without the tp_btf walk, the victim's cgroup is read from /proc as it dies.
            proc: !active.contains(&Hook::TpBtf),
            // Set when lookups start with the memory controller.
            memory: false,
        };
        Ok(Self {
            probe: loaded,
            ring,
            kmsg,
            kmsg_stats,
            active,
            expect,
            decoder,
            bpf_error: (!bpf_error.is_empty()).then_some(bpf_error),
            continuity,
        })
    }

    /// Says what is active and why the rest is not, on stderr.
    fn announce(&self, metrics: Option<&Metrics>, health: &Health) {
        for hook in &self.active {
            info!("active: {hook}");
        }
        if let Some(p) = &self.probe {
            for (hook, why) in &p.probe.inactive {
                info!("inactive: {hook}: {why}");
            }
            for m in &p.probe.missing_offsets {
                info!("kernel offset not found: {m}");
            }
        }
        if let (None, Some(e)) = (&self.probe, &self.bpf_error) {
            warn!(
                "degraded mode: kernel log only ({e}); every kill is still reported, with fewer details"
            );
        }
        health.attached();
        if let Some(m) = metrics {
            m.set_hooks(&self.active);
            m.set_ready(true);
        }
        let names: Vec<&str> = self.active.iter().map(|h| h.name()).collect();
        eprintln!(
            "oomtrace: ready: {} ({})",
            names.join(", "),
            if self.probe.is_some() {
                "ebpf"
            } else {
                "degraded: kernel log only"
            }
        );
    }
}

impl std::ops::Deref for LoadedProbe {
    type Target = Probe;

    fn deref(&self) -> &Probe {
        &self.probe
    }
}

fn load_probe(args: &TraceArgs) -> Result<Probe, crate::capture::probe::ProbeError> {
    let cfg = ProbeConfig::from_args(args);
    // Before the kernel facts: see `Loader`.
    let loader = crate::capture::probe::Loader::new();
    let mut support = KernelSupport::discover(&cfg);
    Probe::load_with(&cfg, support.take_btf(), support, loader)
}

/// Drains the ring buffer into the correlator's input channel whenever it
/// is readable; on stop, drains what is left and ends.
async fn drain_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    mut reader: RingReader,
    inputs: mpsc::Sender<Input>,
    mut stop: watch::Receiver<bool>,
    health: Arc<Health>,
) {
    loop {
        let mut batch = Vec::new();
        let stopping = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("reading the ring buffer failed: {e}: eBPF events are no longer reported; restart oomtrace");
                        health.died("the ring-buffer reader", &e.to_string());
                        return;
                    }
                };
                reader.drain(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
                false
            }
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            reader.drain(ring.get_mut(), &mut batch);
            for input in batch {
                let _ = inputs.send(input).await;
            }
            return;
        }
        for input in batch {
            if inputs.send(input).await.is_err() {
                return;
            }
        }
    }
}

/// Decodes ring-buffer records (and writes them out with `--record-dir`).
struct RingReader {
    decoder: Decoder,
    record_dir: Option<std::path::PathBuf>,
    recorded: u64,
}

impl RingReader {
    fn drain(&mut self, ring: &mut RingBuf<MapData>, batch: &mut Vec<Input>) {
        while let Some(item) = ring.next() {
            self.record(&item);
            match self.decoder.decode(&item) {
                Ok(input) => batch.push(input),
                Err(e) => warn!(
                    "undecodable ring-buffer record ({e:?}): agent and eBPF object out of step? rebuild oomtrace"
                ),
            }
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        let Some(dir) = &self.record_dir else {
            return;
        };
        let path = dir.join(format!("ring-{:06}.bin", self.recorded));
        self.recorded += 1;
        if let Err(e) = fs::create_dir_all(dir).and_then(|()| fs::write(&path, bytes)) {
            warn!(
                "--record-dir: cannot write {}: {e}; recording stopped",
                path.display()
            );
            self.record_dir = None;
        }
    }
}

/// What the correlator counted, for the exit summary.
#[derive(Debug, Default, Clone, Copy)]
struct CorrelateCounts {
    late: u64,
    not_killed: u64,
    repeated: u64,
}

/// What the correlation stage hands the output thread, in order.
enum ToOutput {
    /// A kill, ready for enrichment.
    Kill(Box<Correlated>),
    /// A kernel-log kill line went into the correlator (sequence number):
    /// the ledger follows it until its kill is written.
    KillLine(u64),
    /// A kill line that will make no report of its own (its kill was
    /// reported already, from another source).
    KillLineDone(u64),
    /// Kill lines of a task killed again in the same OOM (the chosen task
    /// of a memory.oom.group kill): no report of their own, but counted in
    /// `oom_kill` like any kill.
    Repeated(u64),
    /// A container instance ended: Kubernetes' reason against the kills
    /// written for it.
    Terminated(Termination),
    /// Sent every second: the output thread beats, and compares the
    /// kernel's kill counter with what was reported; `idle`: no kill was
    /// waiting for its sources in the correlator.
    Check { idle: bool },
}

impl ToOutput {
    /// Ledger bookkeeping only: nothing is written for it.
    fn is_marker(&self) -> bool {
        matches!(
            self,
            Self::KillLine(_) | Self::KillLineDone(_) | Self::Repeated(_)
        )
    }
}

/// How often the correlation stage sends [`ToOutput::Check`].
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long the stop waits for the kernel log reader to read up to the
/// last record and end.
const KMSG_DRAIN: Duration = Duration::from_secs(2);

/// The correlation stage: inputs in, complete kills out.
struct CorrelateStage {
    /// What a victim's lookup reads; none when nothing is to be read.
    lookup: Option<LookupConfig>,
    /// Lookups asked for, made once the inputs already queued are in
    /// ([`Self::run_lookups`]).
    lookups: Vec<Request>,
    /// The kill lines of the victims just seen, read in the same run.
    kill_lines: Option<KillLines>,
    /// Confirms the senders of listed signals (userspace OOM killers).
    killers: Option<KillerCheck>,
    snapshots: Option<NodeSnapshots>,
    /// Batches: what one input made ready.
    out: mpsc::Sender<Vec<ToOutput>>,
    batcher: Batcher,
    /// The kernel log's losses tell whether a missing kill line may be lost.
    losses: Losses,
    health: Arc<Health>,
    /// Tells the kernel log reader to read up to its last record and end.
    kmsg_stop: Option<Arc<AtomicBool>>,
    /// With tp_btf, a victim first seen by the classic tracepoint (pid only)
    /// is looked up once tp_btf's walk names its cgroup (the next record of
    /// the same drain, as a rule), not from its `/proc` entry, which a
    /// victim that exits fast no longer has: pid and when it was first seen.
    awaiting_walk: Vec<(u32, Instant)>,
    wait_for_walk: bool,
}

/// The correlation stage's tick while a kill is pending: a kill is reported
/// at most this long after its wait for missing sources ran out.
const BUSY_TICK: Duration = Duration::from_millis(50);
/// Its tick when nothing is pending (20 wake-ups a second of an idle agent
/// were this tick).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// At most this many queued inputs go in before the lookups are made.
const INPUTS_BEFORE_LOOKUPS: usize = 256;

/// How long a lookup waits for tp_btf's walk before it reads `/proc`.
const WALK_WAIT: Duration = Duration::from_millis(20);

impl CorrelateStage {
    async fn run(
        &mut self,
        correlator: &mut Correlator,
        mut inputs: mpsc::Receiver<Input>,
        mut kmsg: Option<mpsc::Receiver<KmsgOom>>,
        mut pod_news: Option<mpsc::Receiver<PodNews>>,
        mut stop: watch::Receiver<bool>,
        ring: Option<JoinHandle<()>>,
    ) {
        let mut last_tick = Instant::now();
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            let next_tick = last_tick + self.tick_period(correlator);
            let mut ready = tokio::select! {
                Some(input) = inputs.recv() => self.push(correlator, input),
                line = recv(&mut kmsg) => match line {
                    Some(line) => self.push(correlator, kmsg_input(line)),
                    None => {
                        // The reader ended while the agent runs (the
                        // monitor says why and fails /healthz): kills
                        // no longer wait for kill lines that cannot come.
                        kmsg = None;
                        correlator.kmsg_ended();
                        Vec::new()
                    }
                },
                Some(news) = recv(&mut pod_news) => match news {
                    PodNews::Evicted(e) => self.push(correlator, Input::Eviction(e)),
                    PodNews::Terminated(t) => vec![ToOutput::Terminated(t)],
                },
                () = tokio::time::sleep_until(next_tick.into()) => {
                    let now = Instant::now();
                    last_tick = now;
                    self.health.beat(Stage::Correlate);
                    correlator.note_kmsg_losses(self.losses.kmsg_lost(), now);
                    self.look_up_awaiting(correlator, now);
                    correlator.tick(now).into_iter().map(|c| ToOutput::Kill(Box::new(c))).collect()
                }
                _ = check.tick() => vec![ToOutput::Check { idle: correlator.pending_count() == 0 }],
                _ = stop.wait_for(|s| *s) => break,
            };
            ready.extend(self.catch_up(correlator, &mut inputs, kmsg.as_mut()));
            if !self.send(ready, false).await {
                return;
            }
        }
        // Drain: the ring task empties the ring buffer on stop and ends;
        // the kernel log reader reads up to the last record written and
        // ends, closing its channel; then whatever the sources queued is
        // taken, and every pending kill is reported with what is known.
        if let Some(flag) = &self.kmsg_stop {
            flag.store(true, Ordering::Relaxed);
            if let Some(due) = self.kill_lines.as_ref().and_then(|k| k.due.as_ref()) {
                due.wake();
            }
        }
        if let Some(ring) = ring {
            let _ = ring.await;
        }
        let mut ready = Vec::new();
        while let Ok(input) = inputs.try_recv() {
            ready.extend(self.push(correlator, input));
        }
        ready.extend(self.run_lookups(correlator));
        if let Some(rx) = kmsg.as_mut() {
            let deadline = tokio::time::Instant::now() + KMSG_DRAIN;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(line)) => ready.extend(self.push(correlator, kmsg_input(line))),
                    Ok(None) => break,
                    Err(_) => {
                        warn!(
                            "the kernel log reader did not reach the end of the log within {} s of the stop: lines after that are not reported",
                            KMSG_DRAIN.as_secs()
                        );
                        break;
                    }
                }
            }
        }
        ready.extend(self.run_lookups(correlator));
        ready.extend(
            correlator
                .flush()
                .into_iter()
                .map(|c| ToOutput::Kill(Box::new(c))),
        );
        self.send(ready, true).await;
    }

    fn push(&mut self, correlator: &mut Correlator, input: Input) -> Vec<ToOutput> {
        let input = match input {
            Input::Signal(s) => {
                if let Some(k) = &self.killers {
                    k.request(s);
                }
                return Vec::new();
            }
            other => other,
        };
        if let Some(k) = &mut self.kill_lines {
            k.victims.note(&input);
        }
        let now = Instant::now();
        let sighting = snapshots::worth_a_snapshot(&input);
        let kill_line = match &input {
            Input::Kmsg(KmsgSighting {
                seq,
                line: OomLine::Killed { .. },
                ..
            }) => Some(*seq),
            _ => None,
        };
        let repeated = correlator.repeated;
        let ready = correlator.push(input, now);
        let repeated = correlator.repeated.saturating_sub(repeated);
        if sighting && let Some(s) = &self.snapshots {
            s.kill_seen(now);
        }
        for pid in correlator.take_new_victims() {
            // A replayed victim died long ago: its pid may be another
            // process's by now.
            if correlator.is_replayed(pid) {
                correlator.lookup_failed(pid);
                continue;
            }
            if self.wait_for_walk && correlator.known_cgroup(pid).is_none() {
                self.awaiting_walk.push((pid, now));
            } else {
                self.look_up(correlator, pid);
            }
        }
        self.look_up_awaiting(correlator, now);
        let mut out = Vec::with_capacity(ready.len() + 2);
        if repeated > 0 {
            out.push(ToOutput::Repeated(repeated));
        }
        if let Some(seq) = kill_line {
            out.push(ToOutput::KillLine(seq));
            let taken =
                ready.iter().any(|c| c.kill_seq == Some(seq)) || correlator.holds_kill_line(seq);
            if !taken {
                out.push(ToOutput::KillLineDone(seq));
            }
        }
        out.extend(ready.into_iter().map(|c| ToOutput::Kill(Box::new(c))));
        out
    }

    /// How often the stage ticks: [`BUSY_TICK`] while a kill waits for its
    /// sources or a lookup for tp_btf's walk, else [`IDLE_TICK`] (it beats
    /// for `/healthz` and forgets old records; nothing is due).
    fn tick_period(&self, correlator: &Correlator) -> Duration {
        match correlator.pending_count() > 0 || !self.awaiting_walk.is_empty() {
            true => BUSY_TICK,
            false => IDLE_TICK.min(self.health.stall_after() / 4),
        }
    }

    /// When victims were seen: the records already queued (a walk among
    /// them names a victim's cgroup), then the lookups, then the victims'
    /// kill lines, all in this run.
    fn catch_up(
        &mut self,
        correlator: &mut Correlator,
        inputs: &mut mpsc::Receiver<Input>,
        kmsg: Option<&mut mpsc::Receiver<KmsgOom>>,
    ) -> Vec<ToOutput> {
        let victims_seen = self
            .kill_lines
            .as_ref()
            .is_some_and(|k| k.victims.any_seen());
        let mut ready = Vec::new();
        if self.lookups.is_empty() && !victims_seen {
            return ready;
        }
        for _ in 0..INPUTS_BEFORE_LOOKUPS {
            let Ok(input) = inputs.try_recv() else {
                break;
            };
            ready.extend(self.push(correlator, input));
        }
        ready.extend(self.run_lookups(correlator));
        ready.extend(self.read_kill_lines(correlator, kmsg));
        ready
    }

    /// Queues `pid`'s lookup; a victim beyond [`lookup::QUEUE`] waiting
    /// lookups, or with nothing to look up, is reported without it.
    fn look_up(&mut self, correlator: &mut Correlator, pid: u32) {
        if self.lookup.is_none() || self.lookups.len() >= lookup::QUEUE {
            correlator.lookup_failed(pid);
            return;
        }
        self.lookups.push(Request {
            pid,
            killed_at: correlator.kill_time(pid),
            cgroup: correlator.known_cgroup(pid),
            memory: correlator.memory_targets(pid),
        });
    }

    /// Reads the kernel log for the kill lines of the victims just seen
    /// ([`KmsgTap::read`]: what the reader thread sent, then what the kernel
    /// holds now, in the log's order). A victim whose line is not in yet is
    /// announced to the reader thread, which then looks for it every 250 µs
    /// ([`KillLinesDue`]).
    fn read_kill_lines(
        &mut self,
        correlator: &mut Correlator,
        kmsg: Option<&mut mpsc::Receiver<KmsgOom>>,
    ) -> Vec<ToOutput> {
        let Some(k) = &mut self.kill_lines else {
            return Vec::new();
        };
        let seen = std::mem::take(&mut k.victims.seen);
        // The reader ended: nothing more is read from the log.
        let Some(rx) = kmsg else {
            return Vec::new();
        };
        let lines = k.tap.read(rx);
        let mut ready = Vec::new();
        for line in lines {
            ready.extend(self.push(correlator, kmsg_input(line)));
        }
        if let Some(k) = &mut self.kill_lines
            && let Some(due) = &k.due
        {
            for pid in k.victims.unread(seen) {
                due.announce(pid);
            }
        }
        ready
    }

    /// Makes the queued lookups and correlates what they read. The reads
    /// take some tens of µs per victim: made here, on the correlation
    /// stage, they cost no thread hand-off each way.
    fn run_lookups(&mut self, correlator: &mut Correlator) -> Vec<ToOutput> {
        let mut ready = Vec::new();
        while !self.lookups.is_empty() {
            let requests = std::mem::take(&mut self.lookups);
            let read: Vec<Input> = match &self.lookup {
                Some(lookup) => requests.iter().flat_map(|r| lookup.read(r)).collect(),
                None => Vec::new(),
            };
            for input in read {
                ready.extend(self.push(correlator, input));
            }
        }
        ready
    }

    /// Looks up the victims whose walk came, or waited long enough.
    fn look_up_awaiting(&mut self, correlator: &mut Correlator, now: Instant) {
        if self.awaiting_walk.is_empty() {
            return;
        }
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting_walk)
            .into_iter()
            .partition(|&(pid, t)| {
                correlator.known_cgroup(pid).is_some() || now.duration_since(t) >= WALK_WAIT
            });
        self.awaiting_walk = wait;
        for (pid, _) in due {
            self.look_up(correlator, pid);
        }
    }

    /// Hands what one input made ready to the output thread in one message
    /// ([`Batcher`]); `flush` at the stop.
    async fn send(&mut self, ready: Vec<ToOutput>, flush: bool) -> bool {
        match self.batcher.batch(ready, flush) {
            Some(batch) => self.out.send(batch).await.is_ok(),
            None => true,
        }
    }
}

/// Makes the output thread's messages: one per input that made something
/// ready, so one wake-up of that thread, not one per kill line and kill.
/// Ledger markers alone (a kill line was read, its kill is still pending)
/// wait for the next batch, in order: one wake-up per kill instead of two
/// in a storm. A [`ToOutput::Check`] goes every second, so a marker waits
/// a second at most (a kill line stays open for 10 minutes before the
/// ledger gives up on it).
#[derive(Default)]
struct Batcher {
    held: Vec<ToOutput>,
}

impl Batcher {
    /// The message for `ready`, if one is due; `flush` sends whatever is
    /// held.
    fn batch(&mut self, ready: Vec<ToOutput>, flush: bool) -> Option<Vec<ToOutput>> {
        if !flush && ready.iter().all(ToOutput::is_marker) {
            self.held.extend(ready);
            return None;
        }
        let mut batch = std::mem::take(&mut self.held);
        batch.extend(ready);
        (!batch.is_empty()).then_some(batch)
    }
}

/// The correlation stage's side of the kill lines: the log read in its
/// runs, where to announce victims whose line is due, and which.
struct KillLines {
    tap: KmsgTap,
    due: Option<KillLinesDue>,
    victims: VictimLines,
}

/// The victims seen since the log was last read, and the victims whose
/// kill line was read last.
#[derive(Default)]
struct VictimLines {
    /// Victims whose `mark_victim` came since the last read.
    seen: Vec<u32>,
    /// The last [`RECENT_KILL_LINES`] victims whose kill line was read.
    read: VecDeque<u32>,
    /// The victim announced last (both `mark_victim` programs see each).
    announced: Option<u32>,
}

/// How many victims' kill lines [`VictimLines`] remembers.
const RECENT_KILL_LINES: usize = 256;

impl VictimLines {
    /// Notes a victim's `mark_victim`, or a kill line read.
    fn note(&mut self, input: &Input) {
        match input {
            Input::Tracepoint(s) => self.saw(s.pid()),
            Input::TpBtf(s) => self.saw(s.pid),
            Input::Kmsg(KmsgSighting {
                line: OomLine::Killed { pid: Some(pid), .. },
                ..
            }) => self.line_read(*pid),
            _ => {}
        }
    }

    fn saw(&mut self, pid: u32) {
        if !self.seen.contains(&pid) {
            self.seen.push(pid);
        }
    }

    fn line_read(&mut self, pid: u32) {
        if self.read.len() == RECENT_KILL_LINES {
            self.read.pop_front();
        }
        self.read.push_back(pid);
    }

    /// Whether victims were seen since the log was last read.
    fn any_seen(&self) -> bool {
        !self.seen.is_empty()
    }

    /// The victims of `seen` (taken before the log was read) whose kill
    /// line was not read, each once.
    fn unread(&mut self, seen: Vec<u32>) -> Vec<u32> {
        let mut due = Vec::new();
        for pid in seen {
            if !self.read.contains(&pid) && self.announced != Some(pid) {
                self.announced = Some(pid);
                due.push(pid);
            }
        }
        due
    }
}

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn kmsg_input(line: KmsgOom) -> Input {
    Input::Kmsg(KmsgSighting {
        seq: line.seq,
        ts_usec: line.ts_usec,
        line: line.line,
        received: line.received,
        replayed: line.replayed,
    })
}

/// What the output thread wrote.
#[derive(Debug, Default)]
struct Written {
    kills: u64,
    replayed: u64,
    unreported: u64,
    /// The error that ended output, if any.
    error: Option<SinkError>,
}

/// The output stage, on its own thread: enrich, explain, hand to every
/// sink; keep the ledger (state and loss check).
struct OutputStage {
    enricher: Enricher,
    sinks: Sinks,
    losses: Losses,
    count: Option<u64>,
    stop: watch::Sender<bool>,
    continuity: Continuity,
    health: Arc<Health>,
    /// The kills written per container instance (`--kube`).
    book: KillBook,
}

impl OutputStage {
    fn run(mut self, mut rx: mpsc::Receiver<Vec<ToOutput>>) -> Written {
        let mut written = Written::default();
        'batches: while let Some(batch) = rx.blocking_recv() {
            for msg in batch {
                if let Err(err) = self.handle(msg, &mut written) {
                    let _ = self.stop.send(true);
                    written.error = Some(err);
                    break 'batches;
                }
            }
        }
        self.continuity.sync(true);
        written
    }

    fn handle(&mut self, msg: ToOutput, written: &mut Written) -> Result<(), SinkError> {
        match msg {
            ToOutput::Kill(c) => self.kill(*c, written),
            ToOutput::KillLine(seq) => {
                self.continuity.ledger.opened(seq, Instant::now());
                Ok(())
            }
            ToOutput::Repeated(n) => {
                self.continuity.ledger.repeated(n);
                Ok(())
            }
            ToOutput::KillLineDone(seq) => {
                self.continuity.ledger.handled(seq);
                Ok(())
            }
            ToOutput::Terminated(t) => match self.book.termination(t, &self.enricher.node) {
                Some(m) => self.mismatch(&m),
                None => Ok(()),
            },
            ToOutput::Check { idle } => {
                self.health.beat(Stage::Output);
                self.check(idle, written)
            }
        }
    }

    fn kill(&mut self, c: Correlated, written: &mut Written) -> Result<(), SinkError> {
        if self.count.is_some_and(|n| written.kills >= n) {
            return Ok(());
        }
        let (kill_seq, at_ns) = (c.kill_seq, c.at_ns);
        let mut e = self.enricher.enrich(c);
        explain::apply(&mut e);
        let mut kill = e.kill;
        kill.lost_events = self.losses.total();
        self.sinks.kill(&kill)?;
        if let Some(m) = self.book.kill(&kill, &self.enricher.node) {
            self.mismatch(&m)?;
        }
        // Written: only now is it in the ledger (a crash in between
        // reports it again after the restart rather than never).
        self.continuity
            .ledger
            .written(&kill, kill_seq, at_ns, crate::ledger::monotonic_ns());
        self.continuity.save();
        written.kills += 1;
        written.replayed += u64::from(kill.replayed);
        if self.count.is_some_and(|n| written.kills >= n) {
            let _ = self.stop.send(true);
        }
        Ok(())
    }

    fn mismatch(&mut self, m: &ReasonMismatch) -> Result<(), SinkError> {
        info!("{}", m.explanation);
        self.sinks.reason_mismatch(m)
    }

    fn check(&mut self, idle: bool, written: &mut Written) -> Result<(), SinkError> {
        if let Some(loss) = self.continuity.check(idle) {
            let record = self
                .continuity
                .record(loss, &self.enricher.node, self.losses.total());
            warn!(
                "{} kernel OOM kill(s) were reported by no source (the kernel counted {} since {}, {} reported)",
                loss.count, loss.kernel_count, record.since, loss.reported
            );
            written.unreported += loss.count;
            self.sinks.unreported(&record)?;
        }
        self.continuity.sync(false);
        Ok(())
    }
}

/// The kernel log reader thread and its stop flag, as the monitor follows them.
type KmsgWatch = (thread::JoinHandle<Result<(), KmsgError>>, Arc<AtomicBool>);

/// Follows the sources: the loss and forgery counters (metrics, and a
/// warning when losses grow), and the kernel log reader thread, which must
/// not end while the agent runs.
async fn monitor_sources(
    losses: Losses,
    metrics: Option<Arc<Metrics>>,
    mut kmsg: Option<KmsgWatch>,
    health: Arc<Health>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = 0;
    loop {
        tick.tick().await;
        let lost = losses.total();
        if let Some(m) = &metrics {
            m.set_lost(lost);
            m.set_forged(losses.forged());
        }
        if lost > last {
            warn!(
                "{lost} events lost so far (kernel ring buffer full or kernel log wrapped): raise --ringbuf-bytes"
            );
            last = lost;
        }
        // Asked to stop (shutdown), it ends as it should.
        if kmsg
            .as_ref()
            .is_some_and(|(t, stop)| t.is_finished() && !stop.load(Ordering::Relaxed))
            && let Some((t, _)) = kmsg.take()
        {
            let why = match t.join() {
                Ok(Ok(())) => {
                    "it reached the end of the file (is --kmsg the kernel log device?)".to_string()
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "it panicked".to_string(),
            };
            warn!(
                "the kernel log reader ended: {why}: kernel OOM lines are no longer read; /healthz now fails"
            );
            health.died("the kernel log reader", &why);
        }
    }
}

/// Gives the heap pages freed after loading (the kernel's BTF, parsed twice
/// and dropped) back to the kernel: glibc keeps freed memory of a fragmented
/// heap mapped, and the agent's idle RSS would carry it for its whole life.
/// musl (the static image build) returns freed pages itself and has no
/// malloc_trim.
#[cfg(target_env = "gnu")]
fn release_freed_memory() {
    // SAFETY: malloc_trim has no preconditions; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn release_freed_memory() {}

/// The first 8 characters of the boot id: incidents are unique per boot.
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().chars().take(8).collect())
        .unwrap_or_else(|_| "boot".to_string())
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(batch: Option<Vec<ToOutput>>) -> Option<Vec<String>> {
        let kind = |m: &ToOutput| match m {
            ToOutput::Kill(_) => "kill".to_string(),
            ToOutput::KillLine(seq) => format!("line {seq}"),
            ToOutput::KillLineDone(seq) => format!("done {seq}"),
            ToOutput::Repeated(n) => format!("repeated {n}"),
            ToOutput::Terminated(_) => "terminated".to_string(),
            ToOutput::Check { .. } => "check".to_string(),
        };
        batch.map(|b| b.iter().map(kind).collect())
    }

    #[test]
    fn victims_whose_kill_line_was_not_read_are_announced_once() {
        let mut v = VictimLines::default();
        // Both mark_victim programs see victim 10; its line is read in the
        // same run: nothing to announce.
        v.saw(10);
        v.saw(10);
        assert!(v.any_seen());
        let seen = std::mem::take(&mut v.seen);
        assert_eq!(seen, [10]);
        v.line_read(10);
        assert_eq!(v.unread(seen), Vec::<u32>::new());
        // Victim 11's line is not in yet: announced, once, even when the
        // second program's record comes in a later run.
        v.saw(11);
        let seen = std::mem::take(&mut v.seen);
        assert_eq!(v.unread(seen), [11]);
        v.saw(11);
        let seen = std::mem::take(&mut v.seen);
        assert_eq!(v.unread(seen), Vec::<u32>::new());
        assert!(!v.any_seen());
        // A victim whose line was read long ago (beyond what is
        // remembered) and is seen again is announced.
        for pid in 1000..1000 + RECENT_KILL_LINES as u32 {
            v.line_read(pid);
        }
        v.saw(10);
        let seen = std::mem::take(&mut v.seen);
        assert_eq!(v.unread(seen), [10]);
    }

    #[test]
    fn ledger_markers_wait_for_the_next_batch_in_order() {
        let mut b = Batcher::default();
        assert_eq!(kinds(b.batch(vec![], false)), None);
        assert_eq!(kinds(b.batch(vec![ToOutput::KillLine(5)], false)), None);
        assert_eq!(
            kinds(b.batch(
                vec![ToOutput::Repeated(2), ToOutput::KillLineDone(6)],
                false
            )),
            None
        );
        assert_eq!(
            kinds(b.batch(vec![ToOutput::Check { idle: false }], false)),
            Some(vec![
                "line 5".into(),
                "repeated 2".into(),
                "done 6".into(),
                "check".into()
            ]),
            "held markers go first, in the order they came"
        );
        assert_eq!(kinds(b.batch(vec![], false)), None, "nothing held any more");
        assert_eq!(
            kinds(b.batch(vec![ToOutput::KillLineDone(7)], true)),
            Some(vec!["done 7".into()]),
            "the stop sends markers alone"
        );
        assert_eq!(kinds(b.batch(vec![], true)), None);
    }
}
