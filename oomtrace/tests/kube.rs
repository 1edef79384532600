//! `--kube` against a fake API server on 127.0.0.1 (tests/data/kube/fake_apiserver.py,
//! real response shapes), with real memcg kills in a kubelet-shaped cgroup.
//! Privileged (root, BPF, memory cgroup); run by `cargo xtask test`.
//!
//! Not covered here (no control plane can run on these machines): TLS and
//! service-account auth of the in-cluster config, RBAC denials, watch
//! resumption after `410 Gone`, and `kubectl describe pod` rendering.

mod support;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{Agent, Memcg, i, killed_by_sigkill, run_hog, s};

const NODE: &str = "oomtrace-test-node";

/// The fake API server, killed when dropped.
struct FakeApi {
    child: Child,
    port: u16,
    events: PathBuf,
    requests: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeApi {
    fn start(pods: &[Value]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pods_file = dir.path().join("pods.json");
        fs::write(&pods_file, serde_json::to_vec(pods).expect("json")).expect("write pods");
        let events = dir.path().join("events.jsonl");
        let requests = dir.path().join("requests.log");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kube/fake_apiserver.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([&pods_file, &events, &requests])
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
            _dir: dir,
        }
    }

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
    let mut p: Value = serde_json::from_str(include_str!("data/kube/pod.json")).expect("pod.json");
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

fn in_cgroup(prefix: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| s(v, &["victim", "cgroup"]).is_some_and(|c| c.starts_with(prefix))
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_kill_in_a_pod_posts_one_pod_event_and_carries_the_watched_metadata() {
    let (uid, cid) = ids(1);
    let api = FakeApi::start(&[pod(&uid, &cid)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(dir.path(), api.port);
    let agent = Agent::start(&[
        "--kube",
        "--kubeconfig",
        kc.to_str().expect("utf-8"),
        "--node-name",
        NODE,
    ]);
    // The watch is opened after the list: the cache holds the pod by then.
    api.wait_for("the pod watch", Duration::from_secs(20), |a| {
        a.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
    });
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

    api.wait_for("an Event POST", Duration::from_secs(15), |a| {
        !a.events().is_empty()
    });
    // Late duplicates, if any, would arrive now.
    thread::sleep(Duration::from_secs(2));
    let (_, log) = agent.stop();
    let posted: Vec<Value> = api
        .events()
        .into_iter()
        .filter(|p| p["body"]["involvedObject"]["uid"] == json!(uid))
        .collect();
    assert_eq!(
        posted.len(),
        1,
        "one Event per kill: {posted:?}\nstderr:\n{log}"
    );
    let (path, ev) = (&posted[0]["path"], &posted[0]["body"]);
    assert_eq!(path, "/api/v1/namespaces/prod/events", "{ev}");
    assert_eq!(ev["apiVersion"], "v1", "{ev}");
    assert_eq!(ev["kind"], "Event", "{ev}");
    assert_eq!(ev["metadata"]["namespace"], "prod", "{ev}");
    assert!(
        s(ev, &["metadata", "name"]).is_some_and(|n| n.starts_with("api-7f9c6d5b8-x2x9q.")),
        "{ev}"
    );
    let io = &ev["involvedObject"];
    assert_eq!(io["apiVersion"], "v1", "{ev}");
    assert_eq!(io["kind"], "Pod", "{ev}");
    assert_eq!(io["namespace"], "prod", "{ev}");
    assert_eq!(io["name"], "api-7f9c6d5b8-x2x9q", "{ev}");
    assert_eq!(io["fieldPath"], "spec.containers{api}", "{ev}");
    assert_eq!(ev["reason"], "OOMKilledContainerLimit", "{ev}");
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert_eq!(ev["source"]["component"], "oomtrace", "{ev}");
    assert_eq!(ev["source"]["host"], NODE, "{ev}");
    assert_eq!(ev["count"], 1, "{ev}");
    assert_eq!(ev["firstTimestamp"], ev["lastTimestamp"], "{ev}");
    let msg = s(ev, &["message"]).expect("message");
    assert!(
        !msg.is_empty() && msg.len() <= 1024,
        "{} bytes: {msg}",
        msg.len()
    );
    assert!(
        msg.starts_with(s(e, &["explanation"]).map_or("", |x| &x[..x.len().min(40)])),
        "{msg}"
    );

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
            || r.split('?').next() == Some("POST /api/v1/namespaces/prod/events")),
        "only the documented endpoints are used: {reqs:?}"
    );
    assert!(!log.contains("Kubernetes API unavailable"), "{log}");
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
