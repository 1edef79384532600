//! Prometheus/OpenMetrics metrics and the `/healthz` probe, served on `--metrics-addr`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `oomtrace_kills_total` | counter | `scope`, `oom_domain`, `killer`, `namespace`, `pod`, `container`, `qos_class` |
//! | `oomtrace_events_lost_total` | counter | (kernel ring-buffer records + kernel log records lost) |
//! | `oomtrace_kills_unreported_total` | counter | (kills the kernel counted that no source reported) |
//! | `oomtrace_reason_mismatch_total` | counter | `namespace`, `pod`, `container` |
//! | `oomtrace_forged_oom_lines_total` | counter | (kernel-log records written by a process that look like OOM-killer lines: ignored) |
//! | `oomtrace_hook_active` | gauge | `hook`: 1 for each attached hook of the chain, 0 for the others |
//! | `oomtrace_ready` | gauge | 1 once every source is attached, 0 when a source died or a stage stalled ([`crate::health`]) |
//!
//! Label names follow kube-state-metrics and cAdvisor (`namespace`, `pod`,
//! `container`, `qos_class`); a label whose value is not known is the empty
//! string; no series carries a pid, a command name or a cgroup path. A series
//! with a `pod` is dropped once that pod has had no kill for `--metrics-pod-ttl`
//! ([`Metrics::with_pod_ttl`]), so the churn of pod names on a busy cluster
//! does not grow the exposition without bound. `/healthz` answers 200 `ok`
//! while ready, else 503 with what is wrong.
//!
//! The HTTP server ([`serve`]) closes a connection that has not sent a whole
//! request head within [`HEADER_READ_TIMEOUT`] (an idle kept-alive connection
//! too: the timer re-arms for each request), and holds at most
//! [`MAX_CONNECTIONS`]: a new connection is always accepted, and when the
//! table is full the oldest connection that has not completed a request is
//! closed to make room (else the oldest connection).

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use thiserror::Error;
use tokio::{net::TcpListener, sync::oneshot};
use tracing::debug;

use crate::{
    capture::probe::Hook,
    health::Health,
    report::{Kill, OomDomain, Scope, Unreported},
    sink::{Sink, SinkError},
};

/// Every hook of the capture chain, in fallback order.
pub const HOOKS: [Hook; 9] = Hook::ALL;

/// The OpenMetrics text content type (what `prometheus-client` encodes).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for scrapers that do not ask for OpenMetrics.
pub const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client has to send a request head, from the moment the server
/// waits for one (on connect, and after each response on a kept-alive
/// connection). A scrape sends its head at once; slower clients are closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections held at once. Prometheus pairs, the kubelet's probes and a
/// person with curl need a handful; beyond this the oldest connection that
/// has not completed a request is closed for each new one.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head buffered per connection (hyper's minimum is 8 KiB);
/// a scrape's head is under 1 KiB.
const MAX_BUF: usize = 16 * 1024;

/// How long a pod's series stay after its last kill (`--metrics-pod-ttl`).
pub const DEFAULT_POD_TTL: Duration = Duration::from_secs(3600);
/// Kills prune expired series at most this often (every scrape prunes).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error(
        "cannot listen on --metrics-addr {addr}: {source}: pick a free address or leave --metrics-addr unset"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The labels of `oomtrace_kills_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KillLabels {
    pub scope: String,
    pub oom_domain: String,
    /// `kernel_oom`, `userspace_oom`, `kubelet_eviction` (`report::KillerKind`).
    pub killer: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub qos_class: String,
}

impl KillLabels {
    /// The labels of one kill; unknown values are empty strings.
    pub fn of(kill: &Kill) -> Self {
        let k8s = kill.k8s.as_ref();
        let get = |f: fn(&crate::report::K8s) -> &Option<String>| {
            k8s.and_then(|k| f(k).clone()).unwrap_or_default()
        };
        Self {
            scope: kill.scope.map(scope_str).unwrap_or_default().to_string(),
            oom_domain: kill
                .oom_domain
                .map(domain_str)
                .unwrap_or_default()
                .to_string(),
            killer: kill.killer.kind.as_str().to_string(),
            namespace: get(|k| &k.namespace),
            pod: get(|k| &k.pod),
            container: get(|k| &k.container),
            qos_class: get(|k| &k.qos_class),
        }
    }
}

/// The labels of `oomtrace_reason_mismatch_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MismatchLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
}

/// Where [`Metrics`] reads the time; tests pass their own.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// When each pod-labelled series last counted something.
#[derive(Default)]
struct LastSeen {
    kills: HashMap<KillLabels, Instant>,
    mismatches: HashMap<MismatchLabels, Instant>,
    pruned: Option<Instant>,
}

/// The agent's metrics; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    kills: Family<KillLabels, Counter>,
    mismatches: Family<MismatchLabels, Counter>,
    unreported: Counter,
    lost: Counter,
    /// The last lost total seen, so the counter follows the sources' totals.
    lost_seen: Mutex<u64>,
    forged: Counter,
    forged_seen: Mutex<u64>,
    hook_active: Family<HookLabels, Gauge>,
    ready_gauge: Gauge,
    ready: AtomicBool,
    /// Sources and stages of the running agent, once it runs.
    health: OnceLock<Arc<Health>>,
    scrapes: AtomicU64,
    pod_ttl: Duration,
    clock: Clock,
    /// Held while a pod series is counted or pruned, so a prune never
    /// removes a series in the middle of its increment.
    last_seen: Mutex<LastSeen>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics with the default pod TTL and the real clock.
    pub fn new() -> Self {
        Self::with_pod_ttl(DEFAULT_POD_TTL)
    }

    /// Metrics whose pod series go `pod_ttl` after their pod's last kill.
    pub fn with_pod_ttl(pod_ttl: Duration) -> Self {
        Self::with_clock(pod_ttl, Arc::new(Instant::now))
    }

    /// As [`Metrics::with_pod_ttl`], reading the time from `clock`.
    pub fn with_clock(pod_ttl: Duration, clock: Clock) -> Self {
        let mut registry = Registry::default();
        let kills = Family::<KillLabels, Counter>::default();
        registry.register(
            "oomtrace_kills",
            "OOM kills reported, by scope, OOM domain, killer and pod",
            kills.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "oomtrace_events_lost",
            "Capture records lost (kernel ring buffer full or kernel log wrapped)",
            lost.clone(),
        );
        let unreported = Counter::default();
        registry.register(
            "oomtrace_kills_unreported",
            "OOM kills the kernel counted that no capture source reported",
            unreported.clone(),
        );
        let forged = Counter::default();
        registry.register(
            "oomtrace_forged_oom_lines",
            "Kernel-log records written by a process (not the kernel) that look like OOM-killer lines: ignored",
            forged.clone(),
        );
        let mismatches = Family::<MismatchLabels, Counter>::default();
        registry.register(
            "oomtrace_reason_mismatch",
            "Kills whose reason as Kubernetes reports it disagrees with the OOM domain found",
            mismatches.clone(),
        );
        let hook_active = Family::<HookLabels, Gauge>::default();
        registry.register(
            "oomtrace_hook_active",
            "1 for each capture hook attached, 0 for hooks of the chain that are not",
            hook_active.clone(),
        );
        let ready_gauge = Gauge::default();
        registry.register(
            "oomtrace_ready",
            "1 once every capture source is attached; 0 when a source died or a stage stopped draining",
            ready_gauge.clone(),
        );
        for hook in HOOKS {
            hook_active.get_or_create(&hook_labels(hook)).set(0);
        }
        Self {
            registry,
            kills,
            mismatches,
            unreported,
            lost,
            lost_seen: Mutex::new(0),
            forged,
            forged_seen: Mutex::new(0),
            hook_active,
            ready_gauge,
            ready: AtomicBool::new(false),
            health: OnceLock::new(),
            scrapes: AtomicU64::new(0),
            pod_ttl,
            clock,
            last_seen: Mutex::new(LastSeen::default()),
        }
    }

    /// Counts one reported kill.
    pub fn record_kill(&self, kill: &Kill) {
        let labels = KillLabels::of(kill);
        if labels.pod.is_empty() {
            // Without a pod the label values come from short fixed lists:
            // these series are bounded and kept.
            self.kills.get_or_create(&labels).inc();
            return;
        }
        let now = (self.clock)();
        let mut seen = self.lock_seen();
        self.kills.get_or_create(&labels).inc();
        seen.kills.insert(labels, now);
        self.prune_locked(&mut seen, now, false);
    }

    /// Counts `n` kills the kernel counted that no source reported (the loss check).
    pub fn add_unreported(&self, n: u64) {
        if n > 0 {
            self.unreported.inc_by(n);
        }
    }

    /// Counts one kill whose reason as Kubernetes reports it (e.g. the
    /// container status) disagrees with the OOM domain oomtrace found.
    pub fn add_reason_mismatch(&self, namespace: &str, pod: &str, container: &str) {
        let labels = MismatchLabels {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        };
        let now = (self.clock)();
        let mut seen = self.lock_seen();
        self.mismatches.get_or_create(&labels).inc();
        if !labels.pod.is_empty() {
            seen.mismatches.insert(labels, now);
        }
        self.prune_locked(&mut seen, now, false);
    }

    /// Drops the series of pods whose last kill is `--metrics-pod-ttl` old.
    pub fn prune(&self) {
        let now = (self.clock)();
        let mut seen = self.lock_seen();
        self.prune_locked(&mut seen, now, true);
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, LastSeen> {
        // A panic elsewhere while holding it leaves plain data behind.
        self.last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn prune_locked(&self, seen: &mut LastSeen, now: Instant, always: bool) {
        if !always
            && seen
                .pruned
                .is_some_and(|p| now.duration_since(p) < PRUNE_EVERY)
        {
            return;
        }
        seen.pruned = Some(now);
        let ttl = self.pod_ttl;
        let expired = |at: &Instant| now.saturating_duration_since(*at) >= ttl;
        seen.kills.retain(|labels, at| {
            let keep = !expired(at);
            if !keep {
                self.kills.remove(labels);
            }
            keep
        });
        seen.mismatches.retain(|labels, at| {
            let keep = !expired(at);
            if !keep {
                self.mismatches.remove(labels);
            }
            keep
        });
    }

    /// Follows the sources' running total of lost records.
    pub fn set_lost(&self, total: u64) {
        if let Ok(mut seen) = self.lost_seen.lock()
            && total > *seen
        {
            self.lost.inc_by(total - *seen);
            *seen = total;
        }
    }

    /// Follows the kernel log reader's count of forged OOM-killer lines.
    pub fn set_forged(&self, total: u64) {
        if let Ok(mut seen) = self.forged_seen.lock()
            && total > *seen
        {
            self.forged.inc_by(total - *seen);
            *seen = total;
        }
    }

    /// Marks `active` hooks 1 and the rest of the chain 0.
    pub fn set_hooks(&self, active: &[Hook]) {
        for hook in HOOKS {
            self.hook_active
                .get_or_create(&hook_labels(hook))
                .set(i64::from(active.contains(&hook)));
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.ready_gauge.set(i64::from(ready));
    }

    /// Readiness follows `health` from now on: unready when a source died
    /// or a stage stalled.
    pub fn watch_health(&self, health: Arc<Health>) {
        let _ = self.health.set(health);
    }

    pub fn is_ready(&self) -> bool {
        self.ready_status().is_ok()
    }

    /// `Ok` when ready, else what is wrong (the body of a 503 `/healthz`).
    pub fn ready_status(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("capture sources are still being attached".into());
        }
        match self.health.get() {
            Some(h) => h.status(),
            None => Ok(()),
        }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`), expired pod
    /// series pruned first.
    pub fn encode(&self) -> String {
        self.prune();
        self.ready_gauge.set(i64::from(self.is_ready()));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not
    /// accept OpenMetrics (curl, older scrapers, `promtool check metrics`).
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }
}

/// The metrics sink: counts every kill it is given.
pub struct MetricsSink {
    metrics: Arc<Metrics>,
}

impl MetricsSink {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl Sink for MetricsSink {
    fn kill(&mut self, kill: &Kill) -> Result<(), SinkError> {
        self.metrics.record_kill(kill);
        Ok(())
    }

    fn unreported(&mut self, record: &Unreported) -> Result<(), SinkError> {
        self.metrics.add_unreported(record.count);
        Ok(())
    }

    fn reason_mismatch(
        &mut self,
        record: &crate::enrich::reported::ReasonMismatch,
    ) -> Result<(), SinkError> {
        let k = &record.k8s;
        let label = |v: &Option<String>| v.as_deref().unwrap_or("").to_string();
        self.metrics.add_reason_mismatch(
            &label(&k.namespace),
            &label(&k.pod),
            &label(&k.container),
        );
        Ok(())
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: a counter family `x` is named
/// `x_total` in its `# HELP`/`# TYPE` lines (its samples already are), and
/// `# UNIT` and `# EOF` go.
pub fn openmetrics_to_prometheus(om: &str) -> String {
    let counters: Vec<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn hook_labels(hook: Hook) -> HookLabels {
    HookLabels {
        hook: hook.name().to_string(),
    }
}

/// The JSON word of a scope (`report::Scope`'s serde name).
pub fn scope_str(scope: Scope) -> &'static str {
    match scope {
        Scope::Cgroup => "cgroup",
        Scope::Node => "node",
    }
}

/// The JSON word of an OOM domain (`report::OomDomain`'s serde name).
pub fn domain_str(domain: OomDomain) -> &'static str {
    match domain {
        OomDomain::Container => "container",
        OomDomain::Pod => "pod",
        OomDomain::NodeAllocatable => "node_allocatable",
        OomDomain::Cgroup => "cgroup",
        OomDomain::Node => "node",
    }
}

/// Limits of the metrics server (the defaults are [`HEADER_READ_TIMEOUT`]
/// and [`MAX_CONNECTIONS`]).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Binds `addr` and serves `/metrics` and `/healthz` on the current tokio
/// runtime with the default [`Limits`]. Returns the bound address (useful
/// with port 0).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, MetricsError> {
    serve_with(addr, metrics, Limits::default()).await
}

/// As [`serve`], with the given limits.
pub async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> Result<SocketAddr, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let table = Arc::new(Mutex::new(Connections::new(limits.max_connections.max(1))));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and the like: wait for connections to close.
                    debug!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (closed, slot) = match table.lock() {
                Ok(mut t) => t.open(),
                Err(_) => return,
            };
            if let Some(evicted) = closed {
                debug!(
                    "metrics: {} connections open: closed connection {evicted} to accept {peer}",
                    limits.max_connections
                );
            }
            tokio::spawn(serve_one(
                stream,
                peer,
                Arc::clone(&metrics),
                limits,
                slot,
                Arc::clone(&table),
            ));
        }
    });
    Ok(bound)
}

/// One accepted connection's handle in the table.
struct Slot {
    id: u64,
    served: Arc<AtomicBool>,
    close: oneshot::Receiver<()>,
}

/// The open connections, oldest first.
struct Connections {
    max: usize,
    next_id: u64,
    open: VecDeque<Open>,
}

struct Open {
    id: u64,
    /// Set once a response was produced on the connection.
    served: Arc<AtomicBool>,
    close: oneshot::Sender<()>,
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max,
            next_id: 0,
            open: VecDeque::new(),
        }
    }

    /// Registers a new connection; when full, first closes the oldest
    /// connection that has not completed a request (else the oldest) and
    /// returns its id.
    fn open(&mut self) -> (Option<u64>, Slot) {
        let mut closed = None;
        if self.open.len() >= self.max {
            let at = self
                .open
                .iter()
                .position(|c| !c.served.load(Ordering::Relaxed))
                .unwrap_or(0);
            if let Some(old) = self.open.remove(at) {
                let _ = old.close.send(());
                closed = Some(old.id);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let served = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        self.open.push_back(Open {
            id,
            served: Arc::clone(&served),
            close: tx,
        });
        (
            closed,
            Slot {
                id,
                served,
                close: rx,
            },
        )
    }

    fn remove(&mut self, id: u64) {
        self.open.retain(|c| c.id != id);
    }
}

/// Takes a finished connection out of the table.
struct Leave {
    id: u64,
    table: Arc<Mutex<Connections>>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(self.id);
        }
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
    limits: Limits,
    slot: Slot,
    table: Arc<Mutex<Connections>>,
) {
    let _leave = Leave { id: slot.id, table };
    let served = slot.served;
    let service = service_fn(move |req| {
        let metrics = Arc::clone(&metrics);
        let served = Arc::clone(&served);
        async move {
            let resp = respond(&metrics, &req);
            served.store(true, Ordering::Relaxed);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1::Builder::new();
    // hyper's header timeout needs a timer to fire at all.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                debug!("metrics: connection from {peer}: {e}");
            }
        }
        _ = slot.close => debug!("metrics: connection from {peer} closed to make room"),
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            metrics.scrapes.fetch_add(1, Ordering::Relaxed);
            let openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            if openmetrics {
                (StatusCode::OK, CONTENT_TYPE_OPENMETRICS, metrics.encode())
            } else {
                (
                    StatusCode::OK,
                    CONTENT_TYPE_PROMETHEUS,
                    metrics.encode_prometheus(),
                )
            }
        }
        (&Method::GET | &Method::HEAD, "/healthz") => match metrics.ready_status() {
            Ok(()) => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ok\n".to_string(),
            ),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {why}\n"),
            ),
        },
        (_, "/metrics" | "/healthz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET only\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{K8s, Killer, KillerKind};

    fn pod_kill(ns: &str, pod: &str) -> Kill {
        Kill {
            scope: Some(Scope::Cgroup),
            oom_domain: Some(OomDomain::Container),
            k8s: Some(K8s {
                namespace: Some(ns.into()),
                pod: Some(pod.into()),
                container: Some("api".into()),
                qos_class: Some("Burstable".into()),
                ..K8s::default()
            }),
            ..Kill::default()
        }
    }

    #[test]
    fn a_kill_is_counted_with_its_labels_and_absent_values_are_empty() {
        let m = Metrics::new();
        let mut kill = pod_kill("prod", "api-7f9");
        m.record_kill(&kill);
        m.record_kill(&kill);
        kill.k8s = None;
        kill.oom_domain = Some(OomDomain::Cgroup);
        m.record_kill(&kill);
        kill.killer = Killer {
            kind: KillerKind::KubeletEviction,
            pid: Some(1234),
            comm: Some("kubelet".into()),
            cgroup: Some("/system.slice/kubelet.service".into()),
            ..Killer::default()
        };
        m.record_kill(&kill);
        let text = m.encode();
        assert!(
            text.contains(r#"oomtrace_kills_total{scope="cgroup",oom_domain="container",killer="kernel_oom",namespace="prod",pod="api-7f9",container="api",qos_class="Burstable"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"oomtrace_kills_total{scope="cgroup",oom_domain="cgroup",killer="kernel_oom",namespace="",pod="",container="",qos_class=""} 1"#),
            "{text}"
        );
        // The killer's kind is a label; its pid, comm and cgroup never are.
        assert!(
            text.contains(r#"killer="kubelet_eviction",namespace="""#),
            "{text}"
        );
        assert!(
            !text.contains("1234")
                && !text.contains("system.slice")
                && !text.contains("\"kubelet\""),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        let classic = m.encode_prometheus();
        assert!(
            classic.contains("# TYPE oomtrace_kills_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP oomtrace_kills_total OOM kills"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE oomtrace_ready gauge\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }

    /// A clock the test moves by hand.
    fn manual_clock() -> (Clock, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = Arc::clone(&now);
        let clock: Clock = Arc::new(move || *read.lock().expect("clock"));
        (clock, now)
    }

    fn advance(now: &Mutex<Instant>, by: Duration) {
        let mut t = now.lock().expect("clock");
        *t += by;
    }

    #[test]
    fn pod_series_go_a_ttl_after_their_last_kill_and_others_stay() {
        const MIN: Duration = Duration::from_secs(60);
        let (clock, now) = manual_clock();
        let m = Metrics::with_clock(60 * MIN, clock);
        let gone = pod_kill("batch", "job-28f1x");
        let busy = pod_kill("prod", "api-7f9");
        let mut node = Kill {
            scope: Some(Scope::Node),
            oom_domain: Some(OomDomain::Node),
            ..Kill::default()
        };
        node.k8s = None;
        m.record_kill(&gone);
        m.record_kill(&busy);
        m.record_kill(&node);
        m.add_reason_mismatch("batch", "job-28f1x", "main");
        assert!(m.encode().contains(r#"pod="job-28f1x""#));

        // 59 minutes on: everything is still there; busy is killed again.
        advance(&now, 59 * MIN);
        m.record_kill(&busy);
        let text = m.encode();
        assert!(
            text.contains(r#"pod="job-28f1x",container="api",qos_class="Burstable"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pod="api-7f9",container="api",qos_class="Burstable"} 2"#),
            "{text}"
        );

        // 61 minutes after its last kill, the gone pod's series (kills and
        // mismatches) are dropped; the pod killed 2 minutes ago and the
        // series without a pod stay.
        advance(&now, 2 * MIN);
        let text = m.encode();
        assert!(!text.contains("job-28f1x"), "{text}");
        assert!(
            text.contains(r#"pod="api-7f9",container="api",qos_class="Burstable"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"oomtrace_kills_total{scope="node",oom_domain="node",killer="kernel_oom",namespace="",pod="",container="",qos_class=""} 1"#),
            "{text}"
        );
        assert!(!text.contains("oomtrace_reason_mismatch_total{"), "{text}");

        // A new kill of the gone pod starts its series again at 1.
        m.record_kill(&gone);
        assert!(
            m.encode()
                .contains(r#"pod="job-28f1x",container="api",qos_class="Burstable"} 1"#)
        );

        // The kill path prunes too (at most once a minute), without a scrape.
        advance(&now, 61 * MIN);
        m.record_kill(&pod_kill("prod", "other-1"));
        let seen = m.lock_seen();
        let pods: Vec<&str> = seen.kills.keys().map(|l| l.pod.as_str()).collect();
        assert_eq!(pods, ["other-1"]);
    }

    #[test]
    fn unreported_kills_and_reason_mismatches_are_counted() {
        let m = Metrics::new();
        m.add_unreported(3);
        m.add_unreported(0);
        m.add_unreported(2);
        m.add_reason_mismatch("prod", "api-7f9", "api");
        m.add_reason_mismatch("prod", "api-7f9", "api");
        let text = m.encode();
        assert!(text.contains("oomtrace_kills_unreported_total 5"), "{text}");
        assert!(
            text.contains(r#"oomtrace_reason_mismatch_total{namespace="prod",pod="api-7f9",container="api"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn a_full_table_closes_the_oldest_connection_without_a_completed_request() {
        let mut t = Connections::new(3);
        let (_, mut a) = t.open();
        let (_, b) = t.open();
        let (_, c) = t.open();
        a.served.store(true, Ordering::Relaxed);
        // a completed a request: b is the oldest that has not.
        let (closed, d) = t.open();
        assert_eq!(closed, Some(b.id));
        assert!(a.close.try_recv().is_err(), "a stays open");
        // c is next, then d.
        let (closed, e) = t.open();
        assert_eq!(closed, Some(c.id));
        for s in [&d, &e] {
            s.served.store(true, Ordering::Relaxed);
        }
        // Everyone has been served: the oldest goes.
        let (closed, _f) = t.open();
        assert_eq!(closed, Some(a.id));
        assert_eq!(t.open.len(), 3);
        t.remove(d.id);
        let (closed, _g) = t.open();
        assert_eq!(closed, None, "room was made by a connection that ended");
    }

    mod http {
        use tokio::{
            io::{AsyncReadExt as _, AsyncWriteExt as _},
            net::TcpStream,
            time::timeout,
        };

        use super::*;

        async fn get(addr: SocketAddr, path: &str, accept: &str) -> String {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(format!("GET {path} HTTP/1.0\r\nAccept: {accept}\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).await.expect("read");
            out
        }

        /// Reads until the server closes; `None` if it is still open after `wait`.
        async fn closed_within(c: &mut TcpStream, wait: Duration) -> Option<String> {
            let mut out = Vec::new();
            match timeout(wait, c.read_to_end(&mut out)).await {
                Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
                Err(_) => None,
            }
        }

        /// `/healthz` is 503 before ready and 200 `ok` after, over real HTTP.
        #[tokio::test]
        async fn healthz_follows_readiness() {
            let m = Arc::new(Metrics::new());
            let addr = serve("127.0.0.1:0".parse().expect("addr"), Arc::clone(&m))
                .await
                .expect("serve");
            assert!(
                get(addr, "/healthz", "*/*")
                    .await
                    .starts_with("HTTP/1.0 503")
            );
            m.set_ready(true);
            let ok = get(addr, "/healthz", "*/*").await;
            assert!(
                ok.starts_with("HTTP/1.0 200") && ok.ends_with("\r\n\r\nok\n"),
                "{ok}"
            );
            let om = get(
                addr,
                "/metrics",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )
            .await;
            assert!(
                om.contains(CONTENT_TYPE_OPENMETRICS) && om.ends_with("# EOF\n"),
                "{om}"
            );
            let text = get(addr, "/metrics", "*/*").await;
            assert!(
                text.contains(CONTENT_TYPE_PROMETHEUS) && !text.contains("# EOF"),
                "{text}"
            );
        }

        /// Idle, half-sent and kept-alive-then-idle connections are closed
        /// after the header timeout; a full table still takes a new scrape.
        #[tokio::test]
        async fn slow_clients_are_closed_and_a_fresh_scrape_always_gets_in() {
            let limits = Limits {
                header_read_timeout: Duration::from_millis(300),
                max_connections: 4,
            };
            let m = Arc::new(Metrics::new());
            let addr = serve_with("127.0.0.1:0".parse().expect("addr"), m, limits)
                .await
                .expect("serve");

            let mut idle = TcpStream::connect(addr).await.expect("connect");
            let mut half = TcpStream::connect(addr).await.expect("connect");
            half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
            let mut kept = TcpStream::connect(addr).await.expect("connect");
            kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut head = [0u8; 64];
            let n = kept.read(&mut head).await.expect("read");
            assert!(
                head[..n].starts_with(b"HTTP/1.1 503"),
                "{}",
                String::from_utf8_lossy(&head[..n])
            );
            // The connection is kept alive, and then idle: the timer re-arms.
            let started = Instant::now();
            for c in [&mut idle, &mut half, &mut kept] {
                assert!(
                    closed_within(c, Duration::from_secs(3)).await.is_some(),
                    "a connection without a request head stays open"
                );
            }
            let took = started.elapsed();
            assert!(took < Duration::from_secs(2), "{took:?}");

            // Four connections that never send anything fill the table (a
            // long timeout this time); a fifth, a real scrape, is answered
            // and the oldest of the four is closed for it.
            let limits = Limits {
                header_read_timeout: Duration::from_secs(60),
                max_connections: 4,
            };
            let m = Arc::new(Metrics::new());
            let addr = serve_with("127.0.0.1:0".parse().expect("addr"), m, limits)
                .await
                .expect("serve");
            let mut held = Vec::new();
            for _ in 0..4 {
                held.push(TcpStream::connect(addr).await.expect("connect"));
                // Accept order is connect order.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let scrape = timeout(Duration::from_secs(5), get(addr, "/metrics", "*/*"))
                .await
                .expect("the scrape is answered");
            assert!(scrape.starts_with("HTTP/1.0 200"), "{scrape}");
            assert!(
                closed_within(&mut held[0], Duration::from_secs(2))
                    .await
                    .is_some(),
                "the oldest idle connection was closed"
            );
            for c in &mut held[1..] {
                assert!(
                    closed_within(c, Duration::from_millis(200)).await.is_none(),
                    "only one connection is closed per new one"
                );
            }
        }
    }

    #[test]
    fn hooks_ready_and_lost_follow_the_agent() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains(r#"oomtrace_hook_active{hook="tp_btf/mark_victim"} 0"#),
            "{text}"
        );
        assert!(text.contains("oomtrace_ready 0"), "{text}");
        m.set_hooks(&[Hook::Tracepoint, Hook::TpBtf, Hook::Kmsg]);
        m.set_ready(true);
        m.set_lost(3);
        m.set_lost(3);
        m.set_lost(5);
        let text = m.encode();
        for (hook, v) in [
            ("tracepoint/oom/mark_victim", 1),
            ("tp_btf/mark_victim", 1),
            ("fentry/oom_kill_process", 0),
            ("kprobe/oom_kill_process", 0),
            ("/dev/kmsg", 1),
        ] {
            assert!(
                text.contains(&format!("oomtrace_hook_active{{hook=\"{hook}\"}} {v}")),
                "{text}"
            );
        }
        assert!(text.contains("oomtrace_ready 1"), "{text}");
        assert!(text.contains("oomtrace_events_lost_total 5"), "{text}");
    }
}
