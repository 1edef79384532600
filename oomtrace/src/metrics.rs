//! Prometheus/OpenMetrics metrics and the `/healthz` probe, served on `--metrics-addr`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `oomtrace_kills_total` | counter | `scope`, `oom_domain`, `namespace`, `pod`, `container`, `qos_class` |
//! | `oomtrace_events_lost_total` | counter | (kernel ring-buffer records + kernel log records lost) |
//! | `oomtrace_hook_active` | gauge | `hook`: 1 for each attached hook of the chain, 0 for the others |
//! | `oomtrace_ready` | gauge | 1 once every source is attached |
//!
//! A label whose value is not known is the empty string. `/healthz` answers
//! 200 `ok` once ready, 503 before.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use thiserror::Error;
use tokio::net::TcpListener;
use tracing::debug;

use crate::{
    probe::Hook,
    report::{Kill, OomDomain, Scope},
};

/// Every hook of the capture chain, in fallback order.
pub const HOOKS: [Hook; 9] = [
    Hook::Tracepoint,
    Hook::TpBtf,
    Hook::Fentry,
    Hook::Kprobe,
    Hook::FentryGroup,
    Hook::KprobeGroup,
    Hook::Kmsg,
    Hook::TpBtfSignal,
    Hook::TracepointSignal,
];

/// The OpenMetrics text content type (what `prometheus-client` encodes).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for scrapers that do not ask for OpenMetrics.
pub const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KillLabels {
    pub scope: String,
    pub oom_domain: String,
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
            namespace: get(|k| &k.namespace),
            pod: get(|k| &k.pod),
            container: get(|k| &k.container),
            qos_class: get(|k| &k.qos_class),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
}

/// The agent's metrics; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    kills: Family<KillLabels, Counter>,
    lost: Counter,
    /// The last lost total seen, so the counter follows the sources' totals.
    lost_seen: Mutex<u64>,
    hook_active: Family<HookLabels, Gauge>,
    ready_gauge: Gauge,
    ready: AtomicBool,
    scrapes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let kills = Family::<KillLabels, Counter>::default();
        registry.register(
            "oomtrace_kills",
            "OOM kills reported, by scope, OOM domain and pod",
            kills.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "oomtrace_events_lost",
            "Capture records lost (kernel ring buffer full or kernel log wrapped)",
            lost.clone(),
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
            "1 once every capture source is attached",
            ready_gauge.clone(),
        );
        for hook in HOOKS {
            hook_active.get_or_create(&hook_labels(hook)).set(0);
        }
        Self {
            registry,
            kills,
            lost,
            lost_seen: Mutex::new(0),
            hook_active,
            ready_gauge,
            ready: AtomicBool::new(false),
            scrapes: AtomicU64::new(0),
        }
    }

    /// Counts one reported kill.
    pub fn record_kill(&self, kill: &Kill) {
        self.kills.get_or_create(&KillLabels::of(kill)).inc();
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

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> String {
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

/// Binds `addr` and serves `/metrics` and `/healthz` on the current tokio
/// runtime. Returns the bound address (useful with port 0).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    debug!("metrics: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let metrics = Arc::clone(&metrics);
                    async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!("metrics: connection from {peer}: {e}");
                }
            });
        }
    });
    Ok(bound)
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
        (&Method::GET | &Method::HEAD, "/healthz") => {
            if metrics.is_ready() {
                (
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    "ok\n".to_string(),
                )
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "not ready: capture sources are still being attached\n".to_string(),
                )
            }
        }
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
    use crate::report::K8s;

    #[test]
    fn a_kill_is_counted_with_its_labels_and_absent_values_are_empty() {
        let m = Metrics::new();
        let mut kill = Kill {
            scope: Some(Scope::Cgroup),
            oom_domain: Some(OomDomain::Container),
            k8s: Some(K8s {
                namespace: Some("prod".into()),
                pod: Some("api-7f9".into()),
                container: Some("api".into()),
                qos_class: Some("Burstable".into()),
                ..K8s::default()
            }),
            ..Kill::default()
        };
        m.record_kill(&kill);
        m.record_kill(&kill);
        kill.k8s = None;
        kill.oom_domain = Some(OomDomain::Cgroup);
        m.record_kill(&kill);
        let text = m.encode();
        assert!(
            text.contains(r#"oomtrace_kills_total{scope="cgroup",oom_domain="container",namespace="prod",pod="api-7f9",container="api",qos_class="Burstable"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"oomtrace_kills_total{scope="cgroup",oom_domain="cgroup",namespace="",pod="",container="",qos_class=""} 1"#),
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

    /// `/healthz` is 503 before ready and 200 `ok` after, over real HTTP.
    #[tokio::test]
    async fn healthz_follows_readiness() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        async fn get(addr: SocketAddr, path: &str, accept: &str) -> String {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(format!("GET {path} HTTP/1.0\r\nAccept: {accept}\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).await.expect("read");
            out
        }
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
