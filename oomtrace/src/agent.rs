//! The tracing loop: start the sources, correlate, enrich, explain, write.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use oomtrace_common::{Record, TpVictim};
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    cli::TraceArgs,
    correlate::{Correlated, Correlator, Input},
    explain, identity,
    kmsg::{self, KmsgOom, KmsgStats, OomLine},
    kube::Kube,
    metrics::{self, Metrics, MetricsError},
    node::{self, CgroupFs},
    podnames::PodNames,
    probe::{Disabled, Hook, KernelSupport, Probe, ProbeConfig, Stats},
    qos,
    report::{Kill, NodeMemory, OomDomain, Scope},
    sink::Sink,
    tracefs::{MarkVictimFields, MarkVictimLayout},
    verdict,
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(
        "nothing can capture OOM kills here: eBPF: {bpf}; kernel log: {kmsg}. Run `oomtrace doctor` for details"
    )]
    NoSource { bpf: String, kmsg: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("writing events failed: {0}")]
    Output(#[source] io::Error),
    #[error("reading the ring buffer failed: {0}")]
    Ring(#[source] io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// What a run did, for the exit summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub kills: u64,
    pub lost_kernel: u64,
    pub lost_kmsg: u64,
}

/// Everything the enrichment step reads.
struct Enricher {
    node: String,
    cgfs: Option<CgroupFs>,
    pod_names: PodNames,
    /// Node memory under pressure and when kills were first seen (newest last).
    snapshots: std::collections::VecDeque<(Instant, NodeMemory)>,
    /// How old a snapshot may be to describe a kill being reported.
    snapshot_max_age: Duration,
    proc_root: PathBuf,
    top: usize,
    mem_total: Option<u64>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns.
    realtime_offset_ns: i128,
    /// `--metrics-addr` (a sink) and `--kube` (enrichment and a sink).
    metrics: Option<Arc<Metrics>>,
    kube: Option<Kube>,
}

/// Runs the tracer until SIGINT/SIGTERM or `--count` kills.
pub async fn run(args: TraceArgs) -> Result<Summary, AgentError> {
    let node = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(hostname);
    let page_size = verdict::page_size();
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().chars().take(8).collect())
        .unwrap_or_else(|_| "boot".to_string());
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let m = Arc::new(Metrics::new());
            let bound = metrics::serve(addr, Arc::clone(&m)).await?;
            info!("metrics on http://{bound}/metrics");
            Some(m)
        }
        None => None,
    };
    let kube = args
        .kube
        .then(|| Kube::start(args.kubeconfig.clone(), node.clone()));

    // eBPF.
    let mut probe = None;
    let mut bpf_error = String::from("disabled by --no-bpf");
    if !args.no_bpf {
        let cfg = ProbeConfig {
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
        };
        let support = KernelSupport::discover(&cfg);
        match Probe::load(&cfg, support) {
            Ok(p) => probe = Some(p),
            Err(e) => {
                bpf_error = e.to_string();
                warn!("eBPF unavailable: {e}");
            }
        }
    }

    // The kernel log.
    let (kmsg_tx, mut kmsg_rx) = mpsc::channel::<KmsgOom>(4096);
    let kmsg_stats = Arc::new(KmsgStats::default());
    let mut kmsg_error = String::from("disabled by --no-kmsg");
    let mut kmsg_on = false;
    if !args.no_kmsg {
        match kmsg::spawn_reader(
            args.paths.kmsg.clone(),
            true,
            kmsg_tx,
            Arc::clone(&kmsg_stats),
        ) {
            Ok(_) => kmsg_on = true,
            Err(e) => {
                kmsg_error = e.to_string();
                warn!("kernel log unavailable: {e}");
            }
        }
    }

    let mut active: Vec<Hook> = probe.as_ref().map(|p| p.active.clone()).unwrap_or_default();
    if kmsg_on {
        active.push(Hook::Kmsg);
    }
    if active.is_empty() {
        return Err(AgentError::NoSource {
            bpf: bpf_error,
            kmsg: kmsg_error,
        });
    }

    let (mut ring, stats, layout) = match probe.as_mut() {
        Some(p) => {
            let ring = p
                .take_ring()
                .map_err(|e| AgentError::Ring(io::Error::other(e.to_string())))?;
            // SAFETY: the ring buffer's fd stays open as long as the AsyncFd owns it.
            let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| AgentError::Ring(e.into()))?;
            (Some(ring), p.take_stats(), p.layout.clone())
        }
        None => (None, None, None),
    };

    for hook in &active {
        info!("active: {hook}");
    }
    if let Some(p) = &probe {
        for (hook, why) in &p.inactive {
            info!("inactive: {hook}: {why}");
        }
        for m in &p.missing_offsets {
            info!("kernel offset not found: {m}");
        }
    }
    if probe.is_none() {
        warn!(
            "degraded mode: kernel log only ({bpf_error}); every kill is still reported, with fewer details"
        );
    }
    if let Some(m) = &metrics {
        m.set_hooks(&active);
        m.set_ready(true);
    }
    eprintln!(
        "oomtrace: ready: {} ({})",
        active
            .iter()
            .map(|h| h.name())
            .collect::<Vec<_>>()
            .join(", "),
        if probe.is_some() {
            "ebpf"
        } else {
            "degraded: kernel log only"
        }
    );

    // Without the tp_btf walk, the victim's cgroup is read from /proc as it dies.
    let walk_proc = !active.contains(&Hook::TpBtf);
    let proc_root = args.paths.proc_root.clone();
    let mut correlator = Correlator::new(&active, args.wait_ms, page_size, boot_id);
    let cgfs = match &args.paths.cgroup_root {
        Some(root) => CgroupFs::at(root.clone()),
        None => fs::read_to_string("/proc/self/mounts")
            .ok()
            .and_then(|m| CgroupFs::detect(&m)),
    };
    let mem_total = fs::read_to_string(args.paths.proc_root.join("meminfo"))
        .ok()
        .and_then(|t| node::meminfo(&t).total_bytes);
    let mut enricher = Enricher {
        node,
        cgfs,
        pod_names: PodNames::new()
            .with_pods_dir(args.paths.pod_logs.clone())
            .with_containers_dir(args.paths.container_logs.clone()),
        proc_root: args.paths.proc_root.clone(),
        top: args.top,
        mem_total,
        realtime_offset_ns: realtime_offset_ns(),
        snapshots: std::collections::VecDeque::new(),
        snapshot_max_age: args.wait_ms + Duration::from_secs(10),
        metrics,
        kube,
    };
    let mut sink = Sink::new(args.format, io::stdout());
    let mut summary = Summary::default();
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_lost = 0u64;
    let count = args.count;
    let done = |s: &Summary| count.is_some_and(|n| s.kills >= n);

    loop {
        let mut ready = Vec::new();
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            guard = readable(&mut ring) => {
                let mut guard = guard.map_err(AgentError::Ring)?;
                let ring = guard.get_inner_mut();
                let now = Instant::now();
                let mut any = false;
                while let Some(item) = ring.next() {
                    if let Some(input) = decode(&item, layout.as_ref(), walk_proc.then_some(proc_root.as_path())) {
                        any = true;
                        ready.extend(correlator.push(input, now));
                    }
                }
                guard.clear_ready();
                if any {
                    enricher.snapshot_node(now);
                }
            }
            Some(line) = kmsg_rx.recv(), if kmsg_on => {
                if matches!(line.line, OomLine::Header { .. } | OomLine::Killed { .. }) {
                    enricher.snapshot_node(line.received);
                }
                let proc_cgroup = match &line.line {
                    OomLine::Killed { pid: Some(pid), .. } if walk_proc => victim_cgroup(&proc_root, *pid),
                    _ => None,
                };
                ready.extend(correlator.push(Input::Kmsg { ts_usec: line.ts_usec, line: line.line, proc_cgroup }, line.received));
            }
            _ = tick.tick() => {
                enricher.watch_pressure(Instant::now());
                ready.extend(correlator.tick(Instant::now()));
                let lost = lost_total(stats.as_ref(), &kmsg_stats);
                if let Some(m) = &enricher.metrics {
                    m.set_lost(lost);
                }
                if lost > last_lost {
                    warn!("{} events lost so far (kernel ring buffer full or kernel log wrapped): raise --ringbuf-bytes", lost);
                    last_lost = lost;
                }
            }
        }
        if write_all(
            ready,
            &mut sink,
            &mut enricher,
            stats.as_ref(),
            &kmsg_stats,
            &mut summary,
            count,
        )? {
            break;
        }
    }
    if !done(&summary) {
        write_all(
            correlator.flush(),
            &mut sink,
            &mut enricher,
            stats.as_ref(),
            &kmsg_stats,
            &mut summary,
            count,
        )?;
    }
    if let Some(k) = enricher.kube.take() {
        k.close(Duration::from_secs(2)).await;
    }
    let snap = stats.as_ref().map(Stats::snapshot).unwrap_or_default();
    summary.lost_kernel = snap.lost();
    summary.lost_kmsg = kmsg_stats.lost_records.load(Ordering::Relaxed);
    eprintln!(
        "oomtrace: exiting: {} kills reported, {} kernel events lost, {} kernel log records lost, {} kernel read errors, {} late sources dropped",
        summary.kills, summary.lost_kernel, summary.lost_kmsg, snap.read_errors, correlator.late
    );
    Ok(summary)
}

async fn readable(
    ring: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(r) => r.readable_mut().await,
        None => std::future::pending().await,
    }
}

fn lost_total(stats: Option<&Stats>, kmsg: &KmsgStats) -> u64 {
    stats.map(|s| s.snapshot().lost()).unwrap_or(0) + kmsg.lost_records.load(Ordering::Relaxed)
}

/// The memory cgroup of a (dying) process, from `/proc/<pid>/cgroup`.
/// Paths relative to a cgroup namespace (`/..`) are not the node's: ignored.
/// An exited task has been moved to the root cgroup (cgroup v1 shows `/` for
/// zombies), so a zombie, or an exiting task that shows `/`, gives `None`:
/// better missing than wrong.
fn victim_cgroup(proc_root: &Path, pid: u32) -> Option<String> {
    let dir = proc_root.join(pid.to_string());
    let exiting = || -> Option<(bool, bool)> {
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let mut f = after.split_whitespace();
        let state = f.next()?;
        // Fields after the comm: state, ppid, pgrp, session, tty_nr, tpgid, flags.
        let flags: u64 = f.nth(5)?.parse().ok()?;
        const PF_EXITING: u64 = 0x4;
        Some((matches!(state, "Z" | "X"), flags & PF_EXITING != 0))
    };
    let (dead, _) = exiting()?;
    if dead {
        return None;
    }
    let text = fs::read_to_string(dir.join("cgroup")).ok()?;
    let path =
        crate::rank::parse_cgroup(&text).filter(|p| p.starts_with('/') && !p.contains("/.."))?;
    let (dead, leaving) = exiting()?;
    if dead || (leaving && path == "/") {
        return None;
    }
    Some(path)
}

/// Decodes a ring-buffer record; `proc_root` is given when the victim's
/// cgroup must be read from /proc (no tp_btf walk).
fn decode(
    bytes: &[u8],
    layout: Option<&MarkVictimLayout>,
    proc_root: Option<&Path>,
) -> Option<Input> {
    match oomtrace_common::decode(bytes) {
        Ok(Record::TpVictim(ev)) => {
            let fields = tp_fields(&ev, layout);
            let proc_cgroup =
                proc_root.and_then(|root| victim_cgroup(root, fields.pid.unwrap_or(ev.pid)));
            Some(Input::Tracepoint {
                header: ev.header,
                fields,
                proc_cgroup,
            })
        }
        Ok(Record::BtfVictim(ev)) => Some(Input::TpBtf(Box::new(ev))),
        Ok(Record::Decision(ev)) => Some(Input::Decision(Box::new(ev))),
        Ok(Record::GroupMember(ev)) => Some(Input::GroupMember(Box::new(ev))),
        Ok(Record::Signal(ev)) => Some(Input::Signal(Box::new(ev))),
        Err(e) => {
            warn!(
                "undecodable ring-buffer record ({e:?}): agent and eBPF object out of step? rebuild oomtrace"
            );
            None
        }
    }
}

fn tp_fields(ev: &TpVictim, layout: Option<&MarkVictimLayout>) -> MarkVictimFields {
    let len = (ev.record_len as usize).min(ev.record.len());
    let mut fields = match layout {
        Some(l) if len > 0 => l.decode(&ev.record[..len]),
        _ => MarkVictimFields::default(),
    };
    fields.pid = fields.pid.or(Some(ev.pid));
    fields
}

/// Writes kills until `--count` is reached; returns whether it was.
fn write_all<W: io::Write>(
    kills: Vec<Correlated>,
    sink: &mut Sink<W>,
    enricher: &mut Enricher,
    stats: Option<&Stats>,
    kmsg_stats: &KmsgStats,
    summary: &mut Summary,
    count: Option<u64>,
) -> Result<bool, AgentError> {
    let done = |s: &Summary| count.is_some_and(|n| s.kills >= n);
    for c in kills {
        if done(summary) {
            break;
        }
        write(sink, enricher, c, stats, kmsg_stats, summary)?;
    }
    Ok(done(summary))
}

fn write<W: io::Write>(
    sink: &mut Sink<W>,
    enricher: &mut Enricher,
    c: Correlated,
    stats: Option<&Stats>,
    kmsg_stats: &KmsgStats,
    summary: &mut Summary,
) -> Result<(), AgentError> {
    let mut kill = enricher.enrich(c);
    kill.lost_events = lost_total(stats, kmsg_stats);
    if let Some(k) = &enricher.kube {
        k.enrich(&mut kill);
    }
    sink.write(&kill).map_err(AgentError::Output)?;
    if let Some(m) = &enricher.metrics {
        m.record_kill(&kill);
    }
    if let Some(k) = &enricher.kube {
        k.post(&kill);
    }
    summary.kills += 1;
    Ok(())
}

impl Enricher {
    fn enrich(&mut self, c: Correlated) -> Kill {
        let Correlated {
            mut kill, at_ns, ..
        } = c;
        kill.node = self.node.clone();
        kill.time = rfc3339(self.wall_time(at_ns));

        // What the kernel walk did not give, read from the cgroup fs now (after the kill).
        if let Some(cgfs) = &self.cgfs {
            let mut read_late = false;
            if kill.memcg.victim_usage_bytes.is_none()
                && let Some(cg) = kill.victim.cgroup.as_deref()
            {
                kill.memcg.victim_usage_bytes = cgfs.usage(cg);
                kill.memcg.victim_limit_bytes = cgfs.limit(cg);
                read_late |= kill.memcg.victim_usage_bytes.is_some();
            }
            if kill.memcg.oom_usage_bytes.is_none()
                && let Some(cg) = kill.oom_cgroup.as_deref()
            {
                kill.memcg.oom_usage_bytes = cgfs.usage(cg);
                kill.memcg.oom_limit_bytes = cgfs.limit(cg);
                read_late |= kill.memcg.oom_usage_bytes.is_some();
            }
            if read_late {
                kill.missing.push(
                    "memcg usage at kill time: read from the cgroup fs after the kill (no kernel walk)"
                        .to_string(),
                );
            }
        }

        let ident = kill.victim.cgroup.as_deref().map(identity::parse);
        if let Some(id) = &ident {
            if let Some(uid) = id.pod_uid.as_deref() {
                let name = self.pod_names.lookup(uid, id.container_id.as_deref());
                if name.is_none() {
                    kill.missing.push(format!(
                        "pod name: pod {uid} not found under the pod log directories (pod deleted before the kill was seen, or --pod-logs points elsewhere)"
                    ));
                }
                kill.k8s = id.to_k8s(name.as_ref());
            } else {
                kill.k8s = id.to_k8s(None);
            }
        }
        kill.oom_domain = match kill.scope {
            Some(Scope::Node) => Some(OomDomain::Node),
            Some(Scope::Cgroup) => Some(identity::oom_domain(
                kill.oom_cgroup.as_deref(),
                kill.victim.cgroup.as_deref(),
            )),
            None => None,
        };
        if let Some(adj) = kill.victim.oom_score_adj {
            let qos_class = ident.as_ref().and_then(|i| i.qos);
            if ident.as_ref().is_some_and(identity::Identity::is_pod) {
                kill.qos_check = Some(qos::check(qos_class, adj, self.mem_total));
            }
        }
        if matches!(
            kill.oom_domain,
            Some(OomDomain::Node | OomDomain::NodeAllocatable)
        ) && let Some(cgfs) = &self.cgfs
        {
            // The moment the consumers held the most: by the time a kill is
            // reported the victim's memory is freed and the OOM may have
            // killed the hog too (a snapshot taken during that second kill
            // reads /proc/meminfo before the reaper and the cgroups after
            // it), so snapshots taken under pressure and at first sight are
            // kept, and the one whose top consumers held the most wins.
            let window = self.snapshot_max_age;
            let best = self
                .snapshots
                .iter()
                .filter(|(t, _)| t.elapsed() < window)
                .max_by_key(|(_, m)| m.top.iter().map(|c| c.usage_bytes).sum::<u64>())
                .map(|(_, m)| m.clone());
            kill.node_memory = Some(match best {
                Some(m) => m,
                None => {
                    let snap = node_now(cgfs, &self.proc_root, self.top, &mut self.pod_names);
                    self.keep_snapshot(Instant::now(), snap.clone());
                    snap
                }
            });
        }
        let (explanation, advice) = explain::explain(&kill, ident.as_ref());
        kill.explanation = Some(explanation);
        kill.advice = Some(advice);
        kill
    }

    /// Takes a node memory snapshot when a kill is first seen.
    fn snapshot_node(&mut self, now: Instant) {
        self.snapshot_every(now, Duration::from_millis(250));
    }

    /// Under memory pressure, keeps snapshots of the node so that the moment
    /// before a node-level OOM is on record: during the OOM itself the
    /// agent's reads wait for reclaim like everyone else's, and the consumer
    /// may be killed too. Every second below 20% available, four times a
    /// second below 10%.
    fn watch_pressure(&mut self, now: Instant) {
        let Ok(text) = fs::read_to_string(self.proc_root.join("meminfo")) else {
            return;
        };
        let m = node::meminfo(&text);
        if let (Some(total), Some(avail)) = (m.total_bytes, m.available_bytes)
            && let Some(interval) = pressure_interval(total, avail)
        {
            self.snapshot_every(now, interval);
        }
    }

    fn snapshot_every(&mut self, now: Instant, interval: Duration) {
        let Some(cgfs) = &self.cgfs else {
            return;
        };
        if self
            .snapshots
            .back()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < interval)
        {
            return;
        }
        let snap = node_now(cgfs, &self.proc_root, self.top, &mut self.pod_names);
        self.keep_snapshot(now, snap);
    }

    fn keep_snapshot(&mut self, at: Instant, snap: NodeMemory) {
        self.snapshots.push_back((at, snap));
        while self.snapshots.len() > 32 {
            self.snapshots.pop_front();
        }
    }

    fn wall_time(&self, at_ns: Option<u64>) -> SystemTime {
        let Some(ns) = at_ns else {
            return SystemTime::now();
        };
        let wall = i128::from(ns) + self.realtime_offset_ns;
        u64::try_from(wall)
            .ok()
            .map(|w| SystemTime::UNIX_EPOCH + Duration::from_nanos(w))
            .unwrap_or_else(SystemTime::now)
    }
}

/// How often to keep node snapshots with `avail` of `total` bytes available.
fn pressure_interval(total: u64, avail: u64) -> Option<Duration> {
    if avail.saturating_mul(10) < total {
        Some(Duration::from_millis(250))
    } else if avail.saturating_mul(5) < total {
        Some(Duration::from_secs(1))
    } else {
        None
    }
}

/// Node memory and the largest consumers, now.
fn node_now(cgfs: &CgroupFs, proc_root: &Path, top: usize, pod_names: &mut PodNames) -> NodeMemory {
    let names = std::cell::RefCell::new(pod_names);
    node::node_memory(cgfs, proc_root, top, |path| {
        consumer_name(path, &mut names.borrow_mut())
    })
}

/// A consumer's display name (`namespace/pod` for pods) and QoS class.
fn consumer_name(path: &str, names: &mut PodNames) -> (String, Option<String>) {
    let id = identity::parse(path);
    let qos = id.qos.map(|q| q.as_str().to_string());
    match id.pod_uid.as_deref() {
        Some(uid) => match names.lookup(uid, None) {
            Some(n) => (format!("{}/{}", n.namespace, n.pod), qos),
            None => (format!("pod {uid}"), qos),
        },
        None => (path.to_string(), qos),
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn realtime_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `/proc/<pid>/stat` of a sleeping process on the 6.18 host.
    const STAT: &str = include_str!("../tests/data/node/host-6.18.proc-sleep.stat");

    fn proc_with(pid: u32, stat: &str, cgroup: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join(pid.to_string());
        fs::create_dir(&dir).expect("mkdir");
        fs::write(dir.join("stat"), stat).expect("stat");
        fs::write(dir.join("cgroup"), cgroup).expect("cgroup");
        root
    }

    #[test]
    fn node_snapshots_come_faster_as_available_memory_shrinks() {
        // MemTotal and MemAvailable of the 512 MiB test VM, idle and near its OOM.
        let total = 483_454_976;
        assert_eq!(pressure_interval(total, 379_609_088), None);
        assert_eq!(
            pressure_interval(total, 90 << 20),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            pressure_interval(total, 30 << 20),
            Some(Duration::from_millis(250))
        );
        assert_eq!(pressure_interval(0, 0), None, "no MemTotal: no pressure");
    }

    #[test]
    fn a_dying_victims_cgroup_is_read_but_never_the_root_an_exited_task_shows() {
        let v1 = "12:memory:/oomtrace-test/app\n4:pids:/\n";
        let live = proc_with(15239, STAT, v1);
        assert_eq!(
            victim_cgroup(live.path(), 15239).as_deref(),
            Some("/oomtrace-test/app")
        );
        // A zombie: cgroup v1 moved it to the root; nothing is better than "/".
        let zombie = proc_with(15239, &STAT.replacen(" S ", " Z ", 1), "12:memory:/\n");
        assert_eq!(victim_cgroup(zombie.path(), 15239), None);
        // Exiting (PF_EXITING, 0x4, in the flags field 4194304 -> 4194308) and showing "/".
        let exiting = STAT.replacen(" 4194304 ", " 4194308 ", 1);
        let leaving = proc_with(15239, &exiting, "12:memory:/\n");
        assert_eq!(victim_cgroup(leaving.path(), 15239), None);
        // Exiting but still in its own cgroup: the path is right.
        let still = proc_with(15239, &exiting, v1);
        assert_eq!(
            victim_cgroup(still.path(), 15239).as_deref(),
            Some("/oomtrace-test/app")
        );
        // Inside a cgroup namespace the path is not the node's.
        let ns = proc_with(15239, STAT, "0::/../../kubepods.slice\n");
        assert_eq!(victim_cgroup(ns.path(), 15239), None);
        assert_eq!(victim_cgroup(live.path(), 1), None, "gone");
    }
}
