//! `--kube` against a fake API server on 127.0.0.1 (tests/data/kube/fake_apiserver.py,
//! real response shapes, events.k8s.io/v1 validated as the API server does),
//! with real memcg kills in a kubelet-shaped cgroup. Privileged (root, BPF,
//! memory cgroup); run by `cargo xtask test`. The API calls the agent makes
//! are compared with the ClusterRole that `kubectl kustomize deploy/` renders.
//!
//! Not covered here (no control plane can run on these machines): TLS and
//! service-account auth of the in-cluster config, RBAC denials, watch
//! resumption after `410 Gone`, and `kubectl describe pod` rendering.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::support::{
    Agent, Memcg, i, killed_by_sigkill, run_hog, s, spawn_holder, spawn_in, wait_rss,
};
use serde_json::{Value, json};

const NODE: &str = "oomtrace-test-node";

/// The fake API server, killed when dropped.
struct FakeApi {
    child: Child,
    port: u16,
    events: PathBuf,
    requests: PathBuf,
    /// Watch events the server streams to the pod watch ([`FakeApi::change`]).
    watch: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeApi {
    fn start(pods: &[Value]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pods_file = dir.path().join("pods.json");
        fs::write(&pods_file, serde_json::to_vec(pods).expect("json")).expect("write pods");
        let events = dir.path().join("events.jsonl");
        let requests = dir.path().join("requests.log");
        let watch = dir.path().join("watch.jsonl");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kube/fake_apiserver.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([&pods_file, &events, &requests, &watch])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "python3 {}: {e} (cargo xtask setup installs python3)",
                    script.display()
                )
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("fake API server port {line:?}: {e}"));
        Self {
            child,
            port,
            events,
            requests,
            watch,
            _dir: dir,
        }
    }

    /// The pod changes (as the kubelet would change it): the watch streams
    /// `pod` as a MODIFIED event with the next resourceVersion.
    fn change(&self, mut pod: Value) {
        use std::io::Write as _;
        let version = 1001 + read_lines(&self.watch).len();
        pod["kind"] = json!("Pod");
        pod["apiVersion"] = json!("v1");
        pod["metadata"]["resourceVersion"] = json!(version.to_string());
        let line = json!({"type": "MODIFIED", "object": pod}).to_string();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.watch)
            .expect("watch events file");
        writeln!(f, "{line}").expect("append a watch event");
    }

    /// Accepted Event writes: `{"verb", "path", "body", "object"}`.
    fn events(&self) -> Vec<Value> {
        read_lines(&self.events)
            .iter()
            .map(|l| serde_json::from_str(l).expect("event line"))
            .collect()
    }

    fn requests(&self) -> Vec<String> {
        read_lines(&self.requests)
    }

    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "fake API server: {what} did not happen within {timeout:?}; requests:\n{}",
                self.requests().join("\n")
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
users:
- name: fake
  user:
    token: fake-token
"
    );
    fs::write(&path, text).expect("write kubeconfig");
    path
}

/// A pod UID and a 64-hex container ID unique to this run.
fn ids(tag: u32) -> (String, String) {
    let n = std::process::id();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let uid = format!("{n:08x}-{tag:04x}-4{:03x}-8000-{t:012x}", t & 0xfff);
    let cid = format!("{n:08x}{t:08x}{tag:08x}").repeat(3)[..64].to_string();
    let cid = format!("{cid:0<64}");
    (uid, cid)
}

/// The real-shaped pod of tests/data/kube/pod.json, given this run's UID,
/// container ID and node.
fn pod(uid: &str, cid: &str) -> Value {
    let mut p: Value =
        serde_json::from_str(include_str!("../data/kube/pod.json")).expect("pod.json");
    p["metadata"]["uid"] = json!(uid);
    p["spec"]["nodeName"] = json!(NODE);
    p["status"]["containerStatuses"][0]["containerID"] = json!(format!("containerd://{cid}"));
    p
}

/// `/oomtrace-test-kube-<pid>-<tag>/kubepods/burstable/pod<uid>/<cid>`, limited to 32 MiB.
fn kubelet_cgroup(tag: &str, uid: &str, cid: &str) -> (Memcg, Memcg) {
    let top = Memcg::create(&format!("oomtrace-test-kube-{}-{tag}", std::process::id()));
    let container = top.child(&format!("kubepods/burstable/pod{uid}/{cid}"));
    container.set_limit(32 << 20);
    (top, container)
}

/// An agent with `--kube` against `api`, once its pod watch is open (the
/// watch is opened after the list: the cache holds the pods by then).
fn start_watching(api: &FakeApi, dir: &Path) -> Agent {
    let kc = kubeconfig(dir, api.port);
    let agent = Agent::start(&[
        "--kube",
        "--kubeconfig",
        kc.to_str().expect("utf-8"),
        "--node-name",
        NODE,
    ]);
    api.wait_for("the pod watch", Duration::from_secs(20), |a| {
        a.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
    });
    agent
}

fn in_cgroup(prefix: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| s(v, &["victim", "cgroup"]).is_some_and(|c| c.starts_with(prefix))
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_kill_in_a_pod_posts_one_pod_event_and_carries_the_watched_metadata() {
    let (uid, cid) = ids(1);
    let api = FakeApi::start(&[pod(&uid, &cid)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start_watching(&api, dir.path());
    let (_top, container) = kubelet_cgroup("event", &uid, &cid);
    let (pid, status) = run_hog(&container, 500, 128);
    assert!(
        killed_by_sigkill(&status),
        "the hog was not OOM-killed: {status:?}"
    );

    let events = agent.events(1, Duration::from_secs(15), in_cgroup(&container.rel));
    assert_eq!(events.len(), 1, "no JSON event; stderr:\n{}", agent.log());
    let e = &events[0];
    assert_eq!(i(e, &["victim", "pid"]), Some(i64::from(pid)), "{e}");
    assert_eq!(s(e, &["oom_domain"]), Some("container"), "{e}");
    let k = &e["k8s"];
    assert_eq!(s(k, &["pod_uid"]), Some(uid.as_str()), "{e}");
    assert_eq!(s(k, &["container_id"]), Some(cid.as_str()), "{e}");
    assert_eq!(s(k, &["namespace"]), Some("prod"), "{e}");
    assert_eq!(s(k, &["pod"]), Some("api-7f9c6d5b8-x2x9q"), "{e}");
    assert_eq!(s(k, &["container"]), Some("api"), "{e}");
    assert_eq!(s(k, &["labels", "app"]), Some("api"), "{e}");
    assert_eq!(s(k, &["owner_kind"]), Some("Deployment"), "{e}");
    assert_eq!(s(k, &["owner_name"]), Some("api"), "{e}");
    assert_eq!(i(k, &["memory_request_bytes"]), Some(256 << 20), "{e}");
    assert_eq!(i(k, &["memory_limit_bytes"]), Some(512 << 20), "{e}");
    assert!(
        !e["missing"].to_string().contains("pod name:"),
        "the API gave the pod name: {e}"
    );

    api.wait_for("an Event create", Duration::from_secs(15), |a| {
        !a.events().is_empty()
    });
    // Late duplicates, if any, would arrive now.
    thread::sleep(Duration::from_secs(2));
    let (_, log) = agent.stop();
    let posted: Vec<Value> = api
        .events()
        .into_iter()
        .filter(|p| p["body"]["regarding"]["uid"] == json!(uid))
        .collect();
    assert_eq!(
        posted.len(),
        1,
        "one Event for one kill: {posted:?}\nstderr:\n{log}"
    );
    let (verb, path, ev) = (&posted[0]["verb"], &posted[0]["path"], &posted[0]["body"]);
    assert_eq!(verb, "create", "{ev}");
    assert_eq!(
        path, "/apis/events.k8s.io/v1/namespaces/prod/events",
        "{ev}"
    );
    assert_eq!(ev["apiVersion"], "events.k8s.io/v1", "{ev}");
    assert_eq!(ev["kind"], "Event", "{ev}");
    assert_eq!(ev["metadata"]["namespace"], "prod", "{ev}");
    assert!(
        s(ev, &["metadata", "name"]).is_some_and(|n| n.starts_with("api-7f9c6d5b8-x2x9q.")),
        "{ev}"
    );
    let r = &ev["regarding"];
    assert_eq!(r["apiVersion"], "v1", "{ev}");
    assert_eq!(r["kind"], "Pod", "{ev}");
    assert_eq!(r["namespace"], "prod", "{ev}");
    assert_eq!(r["name"], "api-7f9c6d5b8-x2x9q", "{ev}");
    assert_eq!(r["fieldPath"], "spec.containers{api}", "{ev}");
    assert_eq!(ev["reason"], "OOMKilledContainerLimit", "{ev}");
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert_eq!(ev["action"], "Killed", "{ev}");
    assert_eq!(ev["reportingController"], "oomtrace", "{ev}");
    assert_eq!(ev["reportingInstance"], NODE, "{ev}");
    assert!(ev["series"].is_null(), "a single kill has no series: {ev}");
    // The kill's own time, to the microsecond.
    let time = s(e, &["time"]).expect("time");
    let micros = s(ev, &["eventTime"]).expect("eventTime");
    assert_eq!(
        micros.trim_end_matches('Z').trim_end_matches('0'),
        time.trim_end_matches('Z').trim_end_matches('0'),
        "{ev}"
    );
    let note = s(ev, &["note"]).expect("note");
    assert!(
        note.starts_with(&format!(
            "dd (pid {pid}) in container api was OOM-killed: the container hit its own memory limit (32 MiB of 32 MiB)."
        )),
        "{note}"
    );
    assert!(note.len() <= 1024, "{} bytes: {note}", note.len());

    let reqs = api.requests();
    let lists: Vec<&String> = reqs
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?"))
        .collect();
    assert!(
        lists
            .iter()
            .all(|r| r.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}"))),
        "every pod request is limited to this node: {lists:?}"
    );
    assert!(
        reqs.iter().all(|r| r.starts_with("GET /api/v1/pods?")
            || r.split('?').next() == Some("POST /apis/events.k8s.io/v1/namespaces/prod/events")),
        "only the documented endpoints are used: {reqs:?}"
    );
    assert!(!log.contains("Kubernetes API unavailable"), "{log}");
}

/// A tool the test needs: fails under `cargo xtask test` (OOMTRACE_REQUIRE_ALL=1), else skips.
fn tool(name: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("OOMTRACE_REQUIRE_ALL").as_deref() == Ok("1") => {
            panic!("{name} not found ({why}): run `cargo xtask setup`")
        }
        None => {
            eprintln!("SKIP: {name} not found ({why}); `cargo xtask setup` installs it");
            None
        }
    }
}

/// (API group, resource, verb) of each request the fake API server logged.
fn api_calls(requests: &[String]) -> BTreeSet<(String, String, String)> {
    requests
        .iter()
        .map(|r| {
            let (method, target) = r.split_once(' ').unwrap_or((r, ""));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            let (group, rest) = match parts.as_slice() {
                ["api", "v1", rest @ ..] => ("", rest),
                ["apis", group, _version, rest @ ..] => (*group, rest),
                _ => ("?", &parts[..]),
            };
            let rest = match rest {
                ["namespaces", _, rest @ ..] => rest,
                rest => rest,
            };
            let (resource, named) = match rest {
                [resource] => (*resource, false),
                [resource, _name] => (*resource, true),
                _ => ("?", false),
            };
            let watch = query
                .split('&')
                .any(|kv| kv == "watch=true" || kv == "watch=1");
            let verb = match (method, named, watch) {
                ("GET", false, true) => "watch".to_string(),
                ("GET", false, false) => "list".to_string(),
                ("GET", true, _) => "get".to_string(),
                ("POST", false, _) => "create".to_string(),
                ("PATCH", true, _) => "patch".to_string(),
                ("PUT", true, _) => "update".to_string(),
                ("DELETE", true, _) => "delete".to_string(),
                // Unclassified: shown whole in the comparison.
                _ => format!("? {r}"),
            };
            (group.to_string(), resource.to_string(), verb)
        })
        .collect()
}

/// (API group, resource, verb) granted by the ClusterRole of the rendered
/// base (`kubectl kustomize deploy/`, then `kubectl label --local` for JSON,
/// as the deploy test stage does).
fn rbac_rules(kubectl: &Path) -> BTreeSet<(String, String, String)> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let rendered = Command::new(kubectl)
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        rendered.status.success(),
        "kubectl kustomize {}: {}",
        deploy.display(),
        String::from_utf8_lossy(&rendered.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("base.yaml");
    fs::write(&file, &rendered.stdout).expect("write render");
    let json = Command::new(kubectl)
        .args(["label", "--local", "--output=json", "oomtrace-test-", "-f"])
        .arg(&file)
        .output()
        .expect("run kubectl label --local");
    assert!(
        json.status.success(),
        "kubectl label --local: {}",
        String::from_utf8_lossy(&json.stderr)
    );
    let objects: Vec<Value> = serde_json::Deserializer::from_slice(&json.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("kubectl's JSON");
    let objects: Vec<&Value> = objects
        .iter()
        .flat_map(|o| match o["items"].as_array() {
            Some(items) => items.iter().collect(),
            None => vec![o],
        })
        .collect();
    let roles: Vec<&&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .collect();
    assert_eq!(roles.len(), 1, "one role in deploy/: {roles:?}");
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut granted = BTreeSet::new();
    for rule in roles[0]["rules"].as_array().expect("rules") {
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    granted.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    granted
}

/// A pod log directory as the kubelet writes it, so the agent can name a
/// consumer: `<namespace>_<pod>_<uid>/<container>/0.log`.
fn pod_log_dir(root: &Path, namespace: &str, pod: &str, uid: &str, container: &str) {
    let dir = root
        .join(format!("{namespace}_{pod}_{uid}"))
        .join(container);
    fs::create_dir_all(&dir).expect("pod log dir");
    fs::write(dir.join("0.log"), "").expect("pod log");
}

/// The kill storm of issue 11: 200 kills of one pod's container in ~15 s,
/// at the node-allocatable limit (the `kubepods` cgroup) while pods of the
/// victim's namespace and of another namespace hold memory beside it.
/// The API sees one Event for the pod, created at the first kill, and
/// patched at most every 30 s with the count of kills; the last count is
/// all 200. No name from the other namespace reaches the Event, though the
/// agent's own report names it. The calls made are exactly what the
/// ClusterRole grants.
#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn two_hundred_kills_in_one_pod_make_a_few_event_writes_that_count_all_of_them() {
    const KILLS: u64 = 200;
    let kubectl = tool(
        "kubectl",
        "renders deploy/ to compare its ClusterRole with the calls made",
    );
    let (uid, cid) = ids(3);
    let (ledger_uid, ledger_cid) = ids(4);
    let (worker_uid, worker_cid) = ids(5);
    let api = FakeApi::start(&[pod(&uid, &cid)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(dir.path(), api.port);
    let logs = dir.path().join("pods");
    pod_log_dir(&logs, "prod", "api-7f9c6d5b8-x2x9q", &uid, "api");
    pod_log_dir(&logs, "prod", "worker-1", &worker_uid, "worker");
    pod_log_dir(&logs, "payments", "ledger-0", &ledger_uid, "ledger");

    // /oomtrace-test-kube-<pid>-storm/kubepods (96 MiB: the node's
    // allocatable) / burstable / pod<uid> / <cid>, three pods.
    let top = Memcg::create(&format!("oomtrace-test-kube-{}-storm", std::process::id()));
    let kubepods = top.child("kubepods");
    kubepods.set_limit(96 << 20);
    let victim = top.child(&format!("kubepods/burstable/pod{uid}/{cid}"));
    let ledger = top.child(&format!("kubepods/burstable/pod{ledger_uid}/{ledger_cid}"));
    let worker = top.child(&format!("kubepods/burstable/pod{worker_uid}/{worker_cid}"));
    let mut holders = [spawn_holder(&ledger, 0, 24), spawn_holder(&worker, 0, 8)];
    wait_rss(holders[0].id(), 24 << 10);
    wait_rss(holders[1].id(), 8 << 10);

    let agent = Agent::start(&[
        "--kube",
        "--kubeconfig",
        kc.to_str().expect("utf-8"),
        "--node-name",
        NODE,
        "--pod-logs",
        logs.to_str().expect("utf-8"),
        // Every consumer on the host, so the test's pods are among them.
        "--top",
        "1000",
    ]);
    api.wait_for("the pod watch", Duration::from_secs(20), |a| {
        a.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
    });
    let before = victim.oom_kills();
    let started = Instant::now();
    for _ in 0..KILLS {
        let (_, status) = run_hog(&victim, 500, 128);
        assert!(
            killed_by_sigkill(&status),
            "the hog was not OOM-killed: {status:?}"
        );
    }
    let storm = started.elapsed();
    let counted = victim.oom_kills() - before;
    assert_eq!(counted, KILLS, "the kernel's own count of kills in the pod");
    for h in &mut holders {
        assert!(
            h.try_wait().expect("holder").is_none(),
            "a neighbour was killed"
        );
    }

    let reports = agent.events(
        KILLS as usize,
        Duration::from_secs(60),
        in_cgroup(&victim.rel),
    );
    assert_eq!(reports.len() as u64, KILLS, "stderr:\n{}", agent.log());
    for e in &reports {
        assert_eq!(s(e, &["oom_domain"]), Some("node_allocatable"), "{e}");
        assert_eq!(s(e, &["k8s", "pod"]), Some("api-7f9c6d5b8-x2x9q"), "{e}");
    }
    // The agent's own report names the other namespace's pod: the Event
    // must not, though the data is there.
    let named = reports
        .iter()
        .filter(|e| s(e, &["explanation"]).is_some_and(|x| x.contains("payments/ledger-0")))
        .count();
    assert!(
        named > 0,
        "no report names payments/ledger-0: {}",
        reports[0]
    );

    // The interval write carries every kill.
    let ours = |a: &FakeApi| -> Vec<Value> {
        a.events()
            .into_iter()
            .filter(|w| w["object"]["regarding"]["uid"] == json!(uid))
            .collect()
    };
    api.wait_for("a write counting all kills", Duration::from_secs(60), |a| {
        ours(a)
            .last()
            .is_some_and(|w| w["object"]["series"]["count"] == json!(KILLS))
    });
    let waited = started.elapsed();
    let (status, log) = agent.stop();
    assert!(status.success(), "{status:?}\n{log}");
    let writes = ours(&api);
    let summary: Vec<String> = writes
        .iter()
        .map(|w| format!("{} {}", w["verb"], w["object"]["series"]["count"]))
        .collect();
    eprintln!(
        "{KILLS} kills in {storm:?}; all counted by the API {waited:?} after the first; writes: {summary:?}"
    );
    // One Event (one create); at most one patch per 30 s after it.
    let creates = writes.iter().filter(|w| w["verb"] == "create").count();
    assert_eq!(creates, 1, "{summary:?}\n{log}");
    let bound = 1 + (waited.as_secs() / 30) as usize + 1;
    assert!(
        writes.len() <= bound,
        "{} writes > {bound}: {summary:?}",
        writes.len()
    );
    let last = &writes[writes.len() - 1]["object"];
    assert_eq!(last["series"]["count"], json!(KILLS), "{last}");
    assert_eq!(last["reason"], "OOMKilledNodeAllocatable", "{last}");

    // The note: the first kill, this namespace's pods by name, the rest as a sum.
    let note = s(last, &["note"]).expect("note");
    assert!(note.len() <= 1024, "{note}");
    for foreign in ["payments", "ledger", "oomtrace-test"] {
        assert!(!note.contains(foreign), "{foreign} in the Event: {note}");
    }
    let first_pid: i64 = note
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {note}"));
    let first = reports
        .iter()
        .find(|e| i(e, &["victim", "pid"]) == Some(first_pid))
        .unwrap_or_else(|| panic!("no report of pid {first_pid}"));
    let top = first["node_memory"]["top"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = |name: &str| top.iter().any(|c| c["name"] == json!(name));
    if has("payments/ledger-0") {
        assert!(note.contains("other workloads: "), "{note}\n{first}");
    }
    if has("prod/worker-1") {
        assert!(note.contains("worker-1 "), "{note}\n{first}");
    }
    eprintln!("note: {note}");

    // Every call is granted, and every grant is used.
    let calls = api_calls(&api.requests());
    assert!(
        !api.requests()
            .iter()
            .any(|r| r.contains("/api/v1/namespaces/")),
        "no core/v1 Event: {:?}",
        api.requests()
    );
    if let Some(kubectl) = kubectl {
        assert_eq!(
            calls,
            rbac_rules(&kubectl),
            "API calls made (left) and deploy/clusterrole.yaml (right)"
        );
    }
    for h in &mut holders {
        let _ = h.kill();
        let _ = h.wait();
    }
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn an_unreachable_api_server_is_said_once_and_kills_are_still_reported() {
    let (uid, cid) = ids(2);
    // A port nothing listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(dir.path(), port);
    let started = Instant::now();
    let agent = Agent::start(&[
        "--kube",
        "--kubeconfig",
        kc.to_str().expect("utf-8"),
        "--node-name",
        NODE,
    ]);
    let (_top, container) = kubelet_cgroup("down", &uid, &cid);
    const KILLS: usize = 3;
    for _ in 0..KILLS {
        let (_, status) = run_hog(&container, 500, 128);
        assert!(killed_by_sigkill(&status), "{status:?}");
    }
    let events = agent.events(KILLS, Duration::from_secs(20), in_cgroup(&container.rel));
    // Give the watcher's retries and the event posts time to fail repeatedly.
    thread::sleep(
        Duration::from_secs(5)
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(3)),
    );
    let (status, log) = agent.stop();
    assert_eq!(
        events.len(),
        KILLS,
        "every kill is reported without the API; stderr:\n{log}"
    );
    for e in &events {
        assert_eq!(s(e, &["k8s", "pod_uid"]), Some(uid.as_str()), "{e}");
        assert_eq!(s(e, &["oom_domain"]), Some("container"), "{e}");
        assert!(e["k8s"]["labels"].is_null(), "no invented metadata: {e}");
    }
    assert!(
        !log.contains("kube_client"),
        "kube-client's per-retry errors are not repeated on stderr:\n{log}"
    );
    let said = log.matches("Kubernetes API unavailable").count();
    assert_eq!(
        said, 1,
        "the API problem is said exactly once; stderr:\n{log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{port}")) || log.contains("onnect"),
        "the message names the problem: {log}"
    );
    assert!(status.success(), "clean exit on SIGTERM: {status:?}\n{log}");
}

/// The pod of [`pod`] as the kubelet leaves it when it evicts it for memory
/// (tests/data/kube/pod-evicted.json), evicted at `at`.
fn evicted_pod(uid: &str, cid: &str, at: std::time::SystemTime) -> Value {
    let mut p: Value = serde_json::from_str(include_str!("../data/kube/pod-evicted.json"))
        .expect("pod-evicted.json");
    p["metadata"]["uid"] = json!(uid);
    p["spec"]["nodeName"] = json!(NODE);
    let id = json!(format!("containerd://{cid}"));
    p["status"]["containerStatuses"][0]["containerID"] = id.clone();
    p["status"]["containerStatuses"][0]["state"]["terminated"]["containerID"] = id;
    p["status"]["conditions"][0]["lastTransitionTime"] =
        json!(humantime::format_rfc3339_seconds(at).to_string());
    p
}

/// The kubelet evicts a pod of this node for memory: the pod watch sees it
/// turn Failed/Evicted and the agent reports it once, with the kubelet's
/// message, the pod's identity and metadata, and no Pod Event of its own.
#[test]
#[ignore = "privileged: needs root (the kernel log); run by cargo xtask test"]
fn a_pod_evicted_for_memory_is_reported_once_with_the_kubelets_words() {
    let (uid, cid) = ids(7);
    let api = FakeApi::start(&[pod(&uid, &cid)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start_watching(&api, dir.path());
    let at = std::time::SystemTime::now() - Duration::from_secs(2);
    let evicted = evicted_pod(&uid, &cid, at);
    api.change(evicted.clone());
    // A later status update of the same evicted pod (the kubelet, the
    // garbage collector): not a second eviction.
    api.change(evicted);
    let evictions = |v: &Value| s(v, &["killer", "kind"]) == Some("kubelet_eviction");
    let e = agent.events(1, Duration::from_secs(20), evictions);
    let more = agent.events(1, Duration::from_secs(3), evictions);
    let (_, log) = agent.stop();
    assert_eq!(
        e.len(),
        1,
        "requests:\n{}\nstderr:\n{log}",
        api.requests().join("\n")
    );
    assert!(more.is_empty(), "reported twice: {more:?}");
    let e = &e[0];
    eprintln!("eviction event: {e}");
    assert_eq!(s(e, &["kind"]), Some("oom_kill"), "{e}");
    assert_eq!(s(e, &["killer", "comm"]), Some("kubelet"), "{e}");
    assert!(e["killer"]["pid"].is_null(), "{e}");
    assert_eq!(s(e, &["k8s", "namespace"]), Some("prod"), "{e}");
    assert_eq!(s(e, &["k8s", "pod"]), Some("api-7f9c6d5b8-x2x9q"), "{e}");
    assert_eq!(s(e, &["k8s", "pod_uid"]), Some(uid.as_str()), "{e}");
    assert_eq!(s(e, &["k8s", "container"]), Some("api"), "{e}");
    assert_eq!(s(e, &["k8s", "container_id"]), Some(cid.as_str()), "{e}");
    assert_eq!(s(e, &["k8s", "qos_class"]), Some("Burstable"), "{e}");
    // From the pod watch's cache, as for kernel kills.
    assert_eq!(s(e, &["k8s", "owner_kind"]), Some("Deployment"), "{e}");
    assert_eq!(s(e, &["k8s", "labels", "app"]), Some("api"), "{e}");
    assert_eq!(
        i(e, &["k8s", "memory_request_bytes"]),
        Some(256 << 20),
        "{e}"
    );
    assert!(
        s(e, &["eviction", "message"])
            .is_some_and(|m| m.starts_with("The node was low on resource: memory.")),
        "{e}"
    );
    assert_eq!(
        i(e, &["eviction", "threshold_bytes"]),
        Some(100 << 20),
        "{e}"
    );
    assert_eq!(
        i(e, &["eviction", "available_bytes"]),
        Some(58472 << 10),
        "{e}"
    );
    let over = &e["eviction"]["over_request"][0];
    assert_eq!(over["name"].as_str(), Some("api"), "{e}");
    assert_eq!(over["usage_bytes"].as_i64(), Some(3_694_056 << 10), "{e}");
    assert_eq!(s(e, &["scope"]), Some("node"), "{e}");
    assert_eq!(s(e, &["oom_domain"]), Some("node"), "{e}");
    assert_eq!(s(e, &["verdict_source"]), Some("killer_policy"), "{e}");
    assert!(e["node_memory"].is_object(), "node memory context: {e}");
    assert_eq!(
        s(e, &["time"]).map(|t| &t[..19]),
        Some(&humantime::format_rfc3339_seconds(at).to_string()[..19]),
        "the time the kubelet evicted: {e}"
    );
    let x = s(e, &["explanation"]).expect("explanation");
    assert!(
        x.starts_with("The kubelet evicted prod/api-7f9c6d5b8-x2x9q (container api, Burstable)")
            && x.contains("container api was using 3.5 GiB, above its request of 256 MiB"),
        "{x}"
    );
    assert!(
        s(e, &["advice"]).is_some_and(|a| a.contains("Raise the memory request of container api")),
        "{e}"
    );
    // The kubelet posts its own Evicted Event: none from the agent.
    assert!(api.events().is_empty(), "{:?}", api.events());
}

/// kubernetes#140716: the kernel OOM-kills only a child of the container's
/// main process, the container ends later on SIGTERM, and the runtime still
/// reports `OOMKilled` (any OOM kill in the container's cgroup counts). When
/// the pod's status shows that termination, the agent writes one
/// `reason_mismatch` record naming the kill it contradicts.
#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn oomkilled_for_a_container_whose_main_process_survived_is_called_out() {
    let (uid, cid) = ids(8);
    let api = FakeApi::start(&[pod(&uid, &cid)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start_watching(&api, dir.path());
    let (_top, container) = kubelet_cgroup("mismatch", &uid, &cid);
    // sh is the container's main process (its parent, this test, is outside
    // the cgroup); dd, its child, is OOM-killed and sh goes on.
    let dd = "dd if=/dev/zero of=/dev/null bs=128M count=1 status=none";
    let mut main = spawn_in(&container, 0, &format!("sh -c '{dd}; exec sleep 2'"));
    let kills = agent.events(1, Duration::from_secs(15), in_cgroup(&container.rel));
    let _ = main.wait();
    assert_eq!(kills.len(), 1, "the child's kill; stderr:\n{}", agent.log());
    let kill = &kills[0];
    assert_eq!(s(kill, &["victim", "comm"]), Some("dd"), "{kill}");
    assert_eq!(kill["outcome"]["main_process"], false, "{kill}");
    assert!(kill["k8s"]["reported_reason"].is_null(), "{kill}");
    let incident = s(kill, &["incident"]).expect("incident").to_string();

    // The kubelet's next status of the pod: this container instance ended
    // with 143 (SIGTERM) and the runtime called it OOMKilled.
    let mut p = pod(&uid, &cid);
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    p["status"]["containerStatuses"][0]["lastState"]["terminated"] = json!({
        "containerID": format!("containerd://{cid}"),
        "exitCode": 143,
        "finishedAt": now,
        "reason": "OOMKilled",
        "startedAt": "2025-01-02T03:01:41Z"
    });
    let next = format!("{:0>64}", "1");
    p["status"]["containerStatuses"][0]["containerID"] = json!(format!("containerd://{next}"));
    p["status"]["containerStatuses"][0]["restartCount"] = json!(2);
    api.change(p.clone());
    // The same status again (the kubelet rewrites it): still one record.
    api.change(p);
    let mismatch = |v: &Value| s(v, &["kind"]) == Some("reason_mismatch");
    let m = agent.events(1, Duration::from_secs(20), mismatch);
    let more = agent.events(1, Duration::from_secs(3), mismatch);
    let (_, log) = agent.stop();
    assert_eq!(
        m.len(),
        1,
        "requests:\n{}\nstderr:\n{log}",
        api.requests().join("\n")
    );
    assert!(more.is_empty(), "said twice: {more:?}");
    let m = &m[0];
    eprintln!("reason_mismatch record: {m}");
    assert_eq!(s(m, &["k8s", "reported_reason"]), Some("OOMKilled"), "{m}");
    assert_eq!(s(m, &["k8s", "container_id"]), Some(cid.as_str()), "{m}");
    assert_eq!(s(m, &["k8s", "namespace"]), Some("prod"), "{m}");
    assert_eq!(s(m, &["k8s", "pod"]), Some("api-7f9c6d5b8-x2x9q"), "{m}");
    assert_eq!(s(m, &["k8s", "container"]), Some("api"), "{m}");
    assert_eq!(i(m, &["exit_code"]), Some(143), "{m}");
    assert_eq!(s(m, &["kernel"]), Some("child_killed"), "{m}");
    assert_eq!(m["incidents"], json!([incident]), "{m}");
    assert!(
        s(m, &["explanation"]).is_some_and(|x| x.starts_with(
            "Kubernetes says OOMKilled (exit code 143) for container api of prod/api-7f9c6d5b8-x2x9q, but the kernel OOM-killed only a child process (dd (pid "
        ) && x.contains("exited 143 on SIGTERM")),
        "{m}"
    );
}
