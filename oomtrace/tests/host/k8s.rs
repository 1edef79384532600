//! Privileged Kubernetes tests: a kubelet-shaped memory cgroup hierarchy on
//! the host (cgroupfs-driver and systemd-driver layouts side by side), a
//! matching `/var/log/pods` + `/var/log/containers` tree in a temporary
//! directory, real OOM kills at a container's, a pod's and the kubepods
//! (node allocatable) limit, and `oomtrace rank` end to end.
//!
//! Run as root, one at a time: `cargo test -p oomtrace --test host k8s:: -- --ignored
//! --test-threads=1`. Every kill is a memory-cgroup kill; the largest limit
//! used is 160 MiB, so a node-level OOM is never caused on the host.

use std::{
    collections::HashSet,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::support::{Agent, Memcg, i, killed_by_sigkill, run_hog, s, spawn_in};
use oomtrace::{enrich::identity::QosClass, enrich::qos};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A random (version 4) UUID from the kernel.
fn random_uuid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read /proc/sys/kernel/random/uuid")
        .trim()
        .to_owned()
}

/// A random 64-hex container ID, as containerd and CRI-O make them.
fn random_container_id() -> String {
    format!("{}{}", random_uuid(), random_uuid()).replace('-', "")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// `kubepods/burstable/pod<uid>/<64hex>` (runtime not in the name).
    Cgroupfs,
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`.
    Systemd,
}

/// One pod with one container, in the cgroup tree and in the log tree.
#[derive(Clone, Debug)]
struct Pod {
    namespace: &'static str,
    name: &'static str,
    container: &'static str,
    uid: String,
    container_id: String,
    qos: QosClass,
    driver: Driver,
    /// Pod cgroup, relative to the controller mount.
    pod_rel: String,
    /// Container cgroup, relative to the controller mount.
    ctr_rel: String,
}

impl Pod {
    fn new(
        prefix: &str,
        driver: Driver,
        qos: QosClass,
        namespace: &'static str,
        name: &'static str,
        container: &'static str,
    ) -> Self {
        let uid = random_uuid();
        let container_id = random_container_id();
        let (pod_rel, ctr_rel) = match driver {
            Driver::Cgroupfs => {
                let qos_dir = match qos {
                    QosClass::Guaranteed => String::new(),
                    QosClass::Burstable => "/burstable".into(),
                    QosClass::BestEffort => "/besteffort".into(),
                };
                let pod = format!("{prefix}/kubepods{qos_dir}/pod{uid}");
                let ctr = format!("{pod}/{container_id}");
                (pod, ctr)
            }
            Driver::Systemd => {
                let uid_ = uid.replace('-', "_");
                let (qos_dir, unit) = match qos {
                    QosClass::Guaranteed => (String::new(), "kubepods".to_owned()),
                    QosClass::Burstable => (
                        "/kubepods-burstable.slice".to_owned(),
                        "kubepods-burstable".to_owned(),
                    ),
                    QosClass::BestEffort => (
                        "/kubepods-besteffort.slice".to_owned(),
                        "kubepods-besteffort".to_owned(),
                    ),
                };
                let pod = format!("{prefix}/kubepods.slice{qos_dir}/{unit}-pod{uid_}.slice");
                let ctr = format!("{pod}/cri-containerd-{container_id}.scope");
                (pod, ctr)
            }
        };
        Self {
            namespace,
            name,
            container,
            uid,
            container_id,
            qos,
            driver,
            pod_rel,
            ctr_rel,
        }
    }

    fn runtime(&self) -> Option<&'static str> {
        match self.driver {
            Driver::Cgroupfs => None,
            Driver::Systemd => Some("containerd"),
        }
    }

    fn log_dir(&self, logs: &Path) -> PathBuf {
        logs.join("pods")
            .join(format!("{}_{}_{}", self.namespace, self.name, self.uid))
    }

    fn link(&self, logs: &Path) -> PathBuf {
        logs.join("containers").join(format!(
            "{}_{}_{}-{}.log",
            self.name, self.namespace, self.container, self.container_id
        ))
    }

    /// Removes the pod's log directory and symlink, as the kubelet does when
    /// the pod is deleted.
    fn delete_logs(&self, logs: &Path) {
        fs::remove_dir_all(self.log_dir(logs)).expect("remove the pod log directory");
        fs::remove_file(self.link(logs)).expect("remove the container log symlink");
    }
}

/// The test node: cgroups, logs and processes, all removed when dropped
/// (processes killed and reaped, then cgroups deepest first), also when a
/// test fails.
struct Node {
    logs: tempfile::TempDir,
    web: Pod,
    cache: Pod,
    batch: Pod,
    db: Pod,
    api: Pod,
    gone: Pod,
    children: Vec<Child>,
    /// Every cgroup below the root, in creation order (parents first).
    cgroups: Vec<Memcg>,
    root: Memcg,
}

impl Node {
    fn new() -> Self {
        let root = Memcg::unique("k8s");
        assert!(
            !crate::support::is_v2(&root.root),
            "these tests build a cgroup v1 hierarchy (the host's memory controller)"
        );
        let p = root.rel.clone();
        let web = Pod::new(
            &p,
            Driver::Cgroupfs,
            QosClass::Burstable,
            "shop",
            "web-7d9f8b6c5-x2kqp",
            "nginx",
        );
        let cache = Pod::new(
            &p,
            Driver::Cgroupfs,
            QosClass::Burstable,
            "shop",
            "redis-6b8f7d4c9-mn2ls",
            "redis",
        );
        let batch = Pod::new(
            &p,
            Driver::Cgroupfs,
            QosClass::BestEffort,
            "batch",
            "report-28391040-w7d5j",
            "report",
        );
        let db = Pod::new(
            &p,
            Driver::Cgroupfs,
            QosClass::Guaranteed,
            "data",
            "postgres-0",
            "postgres",
        );
        let api = Pod::new(
            &p,
            Driver::Systemd,
            QosClass::Burstable,
            "prod",
            "api-5c7d9b8f6-qwz8r",
            "api",
        );
        let gone = Pod::new(
            &p,
            Driver::Cgroupfs,
            QosClass::Burstable,
            "ci",
            "runner-4k2xq",
            "build",
        );

        let logs = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(logs.path().join("pods")).expect("mkdir pods");
        fs::create_dir_all(logs.path().join("containers")).expect("mkdir containers");
        let mut node = Self {
            logs,
            web,
            cache,
            batch,
            db,
            api,
            gone,
            children: Vec::new(),
            cgroups: Vec::new(),
            root,
        };
        for pod in node.pods() {
            node.ensure_cgroup_path(&pod.ctr_rel);
            let dir = pod.log_dir(node.logs.path()).join(pod.container);
            fs::create_dir_all(&dir).expect("mkdir pod log dir");
            fs::write(dir.join("0.log"), b"").expect("write 0.log");
            symlink(dir.join("0.log"), pod.link(node.logs.path())).expect("symlink");
        }
        node
    }

    fn pods(&self) -> Vec<Pod> {
        [
            &self.web,
            &self.cache,
            &self.batch,
            &self.db,
            &self.api,
            &self.gone,
        ]
        .into_iter()
        .cloned()
        .collect()
    }

    /// Creates every level of `rel` below the root that does not exist yet
    /// (never recreates one: `Memcg::create` would wipe it).
    fn ensure_cgroup_path(&mut self, rel: &str) {
        let below = rel
            .strip_prefix(&self.root.rel)
            .expect("below the test root")
            .trim_start_matches('/');
        let mut cur = self.root.rel.clone();
        for comp in below.split('/') {
            cur = format!("{cur}/{comp}");
            if !self.cgroups.iter().any(|c| c.rel == cur) {
                self.cgroups.push(Memcg::create(&cur));
            }
        }
    }

    fn cg(&self, rel: &str) -> &Memcg {
        self.cgroups
            .iter()
            .find(|c| c.rel == rel)
            .unwrap_or_else(|| panic!("no cgroup {rel}"))
    }

    fn kubepods(&self) -> &Memcg {
        self.cg(&format!("{}/kubepods", self.root.rel))
    }

    fn pods_dir(&self) -> String {
        self.logs.path().join("pods").display().to_string()
    }

    fn containers_dir(&self) -> String {
        self.logs.path().join("containers").display().to_string()
    }

    fn log_args(&self) -> Vec<String> {
        vec![
            "--pod-logs".into(),
            self.pods_dir(),
            "--container-logs".into(),
            self.containers_dir(),
        ]
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        let args = self.log_args();
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Agent::start(&all)
    }

    /// Starts `cmd` (a shell command line) in `cg` with `adj`, kept until the node is dropped.
    fn start_in(&mut self, cg_rel: &str, adj: i32, cmd: &str) -> u32 {
        let child = spawn_in(self.cg(cg_rel), adj, cmd);
        let pid = child.id();
        self.children.push(child);
        pid
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deepest first (each drop also kills what is left in its subtree).
        while let Some(cg) = self.cgroups.pop() {
            drop(cg);
        }
        // `root` and the log tempdir go with the fields.
    }
}

/// Waits until `pid` has exec'd `comm` (and so is in its cgroup with its adj).
fn wait_for_comm(pid: u32, comm: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("pid {pid} did not become {comm}");
}

fn mem_total_bytes() -> u64 {
    let text = fs::read_to_string("/proc/meminfo").expect("meminfo");
    oomtrace::enrich::node::meminfo(&text)
        .total_bytes
        .expect("MemTotal")
}

/// Kills a `dd` hog in `cg` (adj, MiB) and returns its event.
fn kill_and_wait(agent: &Agent, cg: &Memcg, adj: i32, mib: u64) -> Value {
    let (pid, status) = run_hog(cg, adj, mib);
    assert!(
        killed_by_sigkill(&status),
        "the hog in {} was not OOM-killed: {status:?}",
        cg.rel
    );
    let events = agent.events(1, EVENT_TIMEOUT, |v| {
        i(v, &["victim", "pid"]) == Some(i64::from(pid))
    });
    assert_eq!(
        events.len(),
        1,
        "no event for pid {pid} in {}; stderr:\n{}",
        cg.rel,
        agent.log()
    );
    let e = events.into_iter().next().expect("one");
    if std::env::var_os("OOMTRACE_TEST_SHOW").is_some() {
        eprintln!("{e:#}");
    }
    e
}

/// The `k8s` object names `pod` completely.
fn assert_named(e: &Value, pod: &Pod) {
    assert_eq!(s(e, &["k8s", "namespace"]), Some(pod.namespace), "{e:#}");
    assert_eq!(s(e, &["k8s", "pod"]), Some(pod.name), "{e:#}");
    assert_eq!(s(e, &["k8s", "container"]), Some(pod.container), "{e:#}");
    assert_path_identity(e, pod);
}

/// What the cgroup path alone says: UID, container ID, QoS, runtime.
fn assert_path_identity(e: &Value, pod: &Pod) {
    assert_eq!(
        s(e, &["victim", "cgroup"]),
        Some(pod.ctr_rel.as_str()),
        "{e:#}"
    );
    assert_eq!(s(e, &["k8s", "pod_uid"]), Some(pod.uid.as_str()), "{e:#}");
    assert_eq!(
        s(e, &["k8s", "container_id"]),
        Some(pod.container_id.as_str()),
        "{e:#}"
    );
    assert_eq!(s(e, &["k8s", "qos_class"]), Some(pod.qos.as_str()), "{e:#}");
    assert_eq!(s(e, &["k8s", "runtime"]), pod.runtime(), "{e:#}");
}

/// A Burstable victim's qos_check: fits, and the request estimate is the
/// one `qos::estimate_request` gives for this node, and maps back to `adj`.
fn assert_burstable_estimate(e: &Value, adj: i32) {
    let cap = mem_total_bytes();
    assert_eq!(e["qos_check"]["fits"], Value::Bool(true), "{e:#}");
    assert_eq!(s(e, &["qos_check", "expected"]), Some("3..=999"), "{e:#}");
    let est = e["qos_check"]["estimated_request_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no request estimate: {e:#}"));
    let (min, max) = qos::estimate_request(adj, cap).expect("a range for a Burstable adj");
    assert!(
        (min..=max).contains(&est),
        "estimate {est} outside {min}..={max}: {e:#}"
    );
    assert_eq!(
        qos::kubelet_oom_score_adj(QosClass::Burstable, est, cap),
        adj
    );
    assert_eq!(
        qos::check(Some(QosClass::Burstable), adj, Some(cap)).estimated_request_bytes,
        Some(est)
    );
}

fn explanation(e: &Value) -> &str {
    s(e, &["explanation"]).unwrap_or_else(|| panic!("no explanation: {e:#}"))
}

fn advice(e: &Value) -> &str {
    s(e, &["advice"]).unwrap_or_else(|| panic!("no advice: {e:#}"))
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn container_limit_kills_name_the_container_in_both_driver_layouts() {
    let started = Instant::now();
    let node = Node::new();
    let agent = node.agent(&[]);

    // cgroupfs driver, Burstable, 256Mi-of-16Gi-style adj.
    let web = node.cg(&node.web.ctr_rel);
    web.set_limit(32 * MIB);
    let e = kill_and_wait(&agent, web, 985, 128);
    assert_eq!(s(&e, &["scope"]), Some("cgroup"), "{e:#}");
    assert_eq!(
        s(&e, &["oom_cgroup"]),
        Some(node.web.ctr_rel.as_str()),
        "{e:#}"
    );
    assert_eq!(s(&e, &["oom_domain"]), Some("container"), "{e:#}");
    assert_named(&e, &node.web);
    assert_burstable_estimate(&e, 985);
    let text = explanation(&e);
    assert!(
        text.contains("shop/web-7d9f8b6c5-x2kqp") && text.contains("container nginx"),
        "{text}"
    );
    assert!(
        text.contains("hit its own container memory limit") && text.contains("of its 32 MiB limit"),
        "{text}"
    );
    assert!(
        advice(&e).contains("Raise the container's memory limit"),
        "{}",
        advice(&e)
    );
    assert!(
        e["node_memory"].is_null(),
        "no node context for a container limit: {e:#}"
    );

    // systemd driver, containerd scope, Burstable.
    let api = node.cg(&node.api.ctr_rel);
    api.set_limit(32 * MIB);
    let e = kill_and_wait(&agent, api, 700, 128);
    assert_eq!(
        s(&e, &["oom_cgroup"]),
        Some(node.api.ctr_rel.as_str()),
        "{e:#}"
    );
    assert_eq!(s(&e, &["oom_domain"]), Some("container"), "{e:#}");
    assert_named(&e, &node.api);
    assert_burstable_estimate(&e, 700);
    let text = explanation(&e);
    assert!(
        text.contains("prod/api-5c7d9b8f6-qwz8r")
            && text.contains("hit its own container memory limit"),
        "{text}"
    );

    let (_, log) = agent.stop();
    assert!(log.contains("ready"), "{log}");
    eprintln!("container_limit: {:?}", started.elapsed());
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_pod_limit_kill_is_the_pod_domain_and_flags_a_guaranteed_adj() {
    let started = Instant::now();
    let node = Node::new();
    let agent = node.agent(&[]);

    // Guaranteed pod, limit on the pod cgroup, container unlimited. The
    // kubelet would set -997, which this session cannot (no
    // CAP_SYS_RESOURCE); a positive adj must be flagged as not fitting.
    node.cg(&node.db.pod_rel).set_limit(48 * MIB);
    let e = kill_and_wait(&agent, node.cg(&node.db.ctr_rel), 500, 128);
    assert_eq!(
        s(&e, &["oom_cgroup"]),
        Some(node.db.pod_rel.as_str()),
        "{e:#}"
    );
    assert_eq!(s(&e, &["oom_domain"]), Some("pod"), "{e:#}");
    assert_named(&e, &node.db);
    assert!(
        e["memcg"]["victim_limit_bytes"].is_null(),
        "container unlimited: {e:#}"
    );
    assert_eq!(
        i(&e, &["memcg", "oom_limit_bytes"]),
        Some((48 * MIB) as i64),
        "{e:#}"
    );
    assert_eq!(e["qos_check"]["fits"], Value::Bool(false), "{e:#}");
    assert_eq!(s(&e, &["qos_check", "expected"]), Some("-997"), "{e:#}");
    assert!(
        s(&e, &["qos_check", "note"]).is_some_and(|n| n.contains("-997") && n.contains("500")),
        "{e:#}"
    );
    let text = explanation(&e);
    assert!(
        text.contains("exceeded the pod's memory limit") && text.contains("of 48 MiB"),
        "{text}"
    );
    assert!(text.contains("data/postgres-0"), "{text}");
    assert!(
        advice(&e).contains("Raise the pod's memory limits"),
        "{}",
        advice(&e)
    );

    // The same on the systemd layout: a Burstable pod slice.
    node.cg(&node.api.pod_rel).set_limit(48 * MIB);
    let e = kill_and_wait(&agent, node.cg(&node.api.ctr_rel), 985, 128);
    assert_eq!(
        s(&e, &["oom_cgroup"]),
        Some(node.api.pod_rel.as_str()),
        "{e:#}"
    );
    assert_eq!(s(&e, &["oom_domain"]), Some("pod"), "{e:#}");
    assert_named(&e, &node.api);
    assert_burstable_estimate(&e, 985);
    assert!(
        explanation(&e).contains("exceeded the pod's memory limit"),
        "{e:#}"
    );

    agent.stop();
    eprintln!("pod_limit: {:?}", started.elapsed());
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_kubepods_limit_kill_is_node_allocatable_with_node_memory() {
    let started = Instant::now();
    let mut node = Node::new();
    // Enough rows that our pod is listed whatever else the host runs.
    let agent = node.agent(&["--top", "100"]);

    // The test's kubepods stands for the node's allocatable memory.
    node.kubepods().set_limit(160 * MIB);
    // A steady consumer in another (Burstable) pod: 40 MiB of touched memory.
    let cache_ctr = node.cache.ctr_rel.clone();
    let holder = node.start_in(
        &cache_ctr,
        300,
        r#"perl -e '$x = "a" x (40 << 20); sleep 300'"#,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(
        node.cg(&node.cache.pod_rel)
            .dir()
            .join("memory.usage_in_bytes"),
    )
    .ok()
    .and_then(|t| t.trim().parse::<u64>().ok())
    .is_none_or(|u| u < 40 * MIB)
    {
        assert!(
            Instant::now() < deadline,
            "the holder (pid {holder}) did not reach 40 MiB"
        );
        thread::sleep(Duration::from_millis(20));
    }

    // A BestEffort hog: scored highest (adj 1000), so it is the victim.
    let e = kill_and_wait(&agent, node.cg(&node.batch.ctr_rel), 1000, 256);
    let kubepods = format!("{}/kubepods", node.root.rel);
    assert_eq!(s(&e, &["oom_cgroup"]), Some(kubepods.as_str()), "{e:#}");
    assert_eq!(s(&e, &["oom_domain"]), Some("node_allocatable"), "{e:#}");
    assert_named(&e, &node.batch);
    assert_eq!(e["qos_check"]["fits"], Value::Bool(true), "{e:#}");
    assert_eq!(s(&e, &["qos_check", "expected"]), Some("1000"), "{e:#}");
    assert!(e["qos_check"]["estimated_request_bytes"].is_null(), "{e:#}");

    let nm = &e["node_memory"];
    assert!(nm.is_object(), "node_memory missing: {e:#}");
    assert!(
        nm["total_bytes"]
            .as_u64()
            .is_some_and(|t| t == mem_total_bytes()),
        "{nm:#}"
    );
    assert!(
        nm["available_bytes"].as_u64().is_some_and(|a| a > 0),
        "{nm:#}"
    );
    let top = nm["top"].as_array().expect("top");
    assert!(!top.is_empty(), "{nm:#}");
    let usages: Vec<u64> = top
        .iter()
        .filter_map(|c| c["usage_bytes"].as_u64())
        .collect();
    assert!(
        usages.windows(2).all(|w| w[0] >= w[1]),
        "top is largest first: {nm:#}"
    );
    let cache = top
        .iter()
        .find(|c| s(c, &["cgroup"]) == Some(node.cache.pod_rel.as_str()))
        .unwrap_or_else(|| panic!("the 40 MiB pod is not among the top consumers: {nm:#}"));
    assert_eq!(
        s(cache, &["name"]),
        Some("shop/redis-6b8f7d4c9-mn2ls"),
        "{cache}"
    );
    assert_eq!(s(cache, &["qos_class"]), Some("Burstable"), "{cache}");
    assert!(
        cache["usage_bytes"].as_u64().is_some_and(|u| u >= 40 * MIB),
        "{cache}"
    );

    let text = explanation(&e);
    assert!(
        text.contains("allocatable memory") && text.contains(&kubepods),
        "{text}"
    );
    assert!(
        text.contains("batch/report-28391040-w7d5j") && text.contains("BestEffort"),
        "{text}"
    );
    assert!(
        text.contains("shop/redis-6b8f7d4c9-mn2ls"),
        "largest consumers named: {text}"
    );
    let adv = advice(&e);
    assert!(
        adv.contains("kube-reserved") && adv.contains("requests"),
        "{adv}"
    );
    // Only what is below the kubepods limit exhausted allocatable: host
    // services outside it are not named as the consumers to look at.
    for c in top {
        let cg = s(c, &["cgroup"]).expect("cgroup");
        let name = s(c, &["name"]).expect("name");
        if !cg.starts_with(&format!("{kubepods}/")) {
            assert!(
                !text.contains(&format!("{name} ")),
                "{name} ({cg}) is outside {kubepods}: {text}"
            );
            assert!(
                !adv.contains(&format!("why {name} ")),
                "{name} is outside {kubepods}: {adv}"
            );
        }
    }

    agent.stop();
    eprintln!("allocatable: {:?}", started.elapsed());
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_deleted_pods_kill_keeps_its_identity() {
    let started = Instant::now();
    let node = Node::new();
    let agent = node.agent(&[]);
    // `gone` was deleted before the agent could ever read its names.
    node.gone.delete_logs(node.logs.path());

    // A first kill in `web` makes the agent look its names up.
    let web = node.cg(&node.web.ctr_rel);
    web.set_limit(32 * MIB);
    let first = kill_and_wait(&agent, web, 985, 128);
    assert_named(&first, &node.web);

    // Now `web` is deleted too: its log directory and symlink vanish.
    node.web.delete_logs(node.logs.path());

    // A kill in `gone`: a miss, and a rescan that no longer sees `web`.
    let gone = node.cg(&node.gone.ctr_rel);
    gone.set_limit(32 * MIB);
    let e = kill_and_wait(&agent, gone, 985, 128);
    assert_path_identity(&e, &node.gone);
    for field in ["namespace", "pod", "container"] {
        assert!(e["k8s"][field].is_null(), "{field} unknown: {e:#}");
    }
    let missing: Vec<&str> = e["missing"]
        .as_array()
        .expect("missing")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        missing.iter().any(|m| m.contains("pod name")
            && m.contains(&node.gone.uid)
            && m.contains("not found")),
        "{missing:?}"
    );
    assert_eq!(s(&e, &["oom_domain"]), Some("container"), "{e:#}");
    assert!(
        explanation(&e).contains(&format!("pod {}", node.gone.uid)),
        "{e:#}"
    );

    // The second kill in `web` still has its names, from the cache.
    thread::sleep(Duration::from_millis(1100)); // past the rescan interval
    let e = kill_and_wait(&agent, web, 985, 128);
    assert_named(&e, &node.web);
    assert!(
        !e["missing"]
            .as_array()
            .expect("missing")
            .iter()
            .any(|m| m.as_str().is_some_and(|m| m.contains("pod name"))),
        "{e:#}"
    );

    agent.stop();
    eprintln!("deleted_pod: {:?}", started.elapsed());
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn rank_cli_lists_the_pods_processes_in_the_kernels_order() {
    let started = Instant::now();
    let mut node = Node::new();
    // oom_score_adj as the kubelet sets it (KERNEL-FACTS §5), positive values
    // only: BestEffort 1000; Burstable 1000 - 1000*request/capacity. A
    // Guaranteed pod's -997 cannot be set here (no CAP_SYS_RESOURCE): its
    // stand-in is 1, below every Burstable value (>= 3).
    let plan: Vec<(Pod, i32)> = vec![
        (node.batch.clone(), 1000),
        (node.web.clone(), 985),
        (node.api.clone(), 700),
        (node.gone.clone(), 500),
        (node.cache.clone(), 300),
        (node.db.clone(), 1),
    ];
    node.gone.delete_logs(node.logs.path());
    let mut pids = Vec::new();
    for (pod, adj) in &plan {
        let pid = node.start_in(&pod.ctr_rel, *adj, "sleep 300");
        pids.push(pid);
    }
    for &pid in &pids {
        wait_for_comm(pid, "sleep");
    }

    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_oomtrace"))
        .arg("rank")
        .args(["--format", "json", "--all"])
        .args(node.log_args())
        .output()
        .expect("run oomtrace rank");
    let rank_time = t.elapsed();
    assert!(
        out.status.success(),
        "oomtrace rank failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("one JSON document");

    let kernel_score = |p: u32| -> u32 {
        fs::read_to_string(format!("/proc/{p}/oom_score"))
            .expect("oom_score")
            .trim()
            .parse()
            .expect("number")
    };
    let ours: Vec<&Value> = all
        .iter()
        .filter(|e| {
            e["pid"]
                .as_u64()
                .is_some_and(|p| pids.contains(&(p as u32)))
        })
        .collect();
    assert_eq!(
        ours.len(),
        plan.len(),
        "every test process is listed: {ours:#?}"
    );
    let mut by_kernel = pids.clone();
    by_kernel.sort_by_key(|&p| std::cmp::Reverse(kernel_score(p)));
    let listed: Vec<u32> = ours
        .iter()
        .map(|e| e["pid"].as_u64().expect("pid") as u32)
        .collect();
    assert_eq!(
        listed, by_kernel,
        "kill order differs from /proc/<pid>/oom_score"
    );
    assert_eq!(
        listed, pids,
        "the planned order (adj descending) is the kernel's"
    );
    let ranks: Vec<u64> = ours
        .iter()
        .map(|e| e["rank"].as_u64().expect("killable"))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");

    let unique_groups: HashSet<&str> = ours.iter().filter_map(|e| s(e, &["group"])).collect();
    assert_eq!(unique_groups.len(), plan.len(), "one group per pod");
    for e in ours {
        let pid = e["pid"].as_u64().expect("pid") as u32;
        let (pod, adj) = &plan[pids.iter().position(|&p| p == pid).expect("ours")];
        assert_eq!(
            e["oom_score"].as_u64(),
            Some(u64::from(kernel_score(pid))),
            "{e:#}"
        );
        assert_eq!(e["oom_score_adj"].as_i64(), Some(i64::from(*adj)), "{e:#}");
        assert_eq!(s(e, &["comm"]), Some("sleep"), "{e:#}");
        assert_eq!(s(e, &["cgroup"]), Some(pod.ctr_rel.as_str()), "{e:#}");
        assert_eq!(s(e, &["k8s", "pod_uid"]), Some(pod.uid.as_str()), "{e:#}");
        assert_eq!(
            s(e, &["k8s", "container_id"]),
            Some(pod.container_id.as_str()),
            "{e:#}"
        );
        assert_eq!(s(e, &["k8s", "qos_class"]), Some(pod.qos.as_str()), "{e:#}");
        assert_eq!(s(e, &["k8s", "runtime"]), pod.runtime(), "{e:#}");
        if pod.uid == node.gone.uid {
            // Deleted: no names, grouped by UID.
            assert!(
                e["k8s"]["namespace"].is_null() && e["k8s"]["pod"].is_null(),
                "{e:#}"
            );
            assert_eq!(
                s(e, &["group"]),
                Some(format!("pod/{}", pod.uid).as_str()),
                "{e:#}"
            );
        } else {
            assert_eq!(s(e, &["k8s", "namespace"]), Some(pod.namespace), "{e:#}");
            assert_eq!(s(e, &["k8s", "pod"]), Some(pod.name), "{e:#}");
            assert_eq!(s(e, &["k8s", "container"]), Some(pod.container), "{e:#}");
            assert_eq!(
                s(e, &["group"]),
                Some(format!("{}/{}", pod.namespace, pod.name).as_str()),
                "{e:#}"
            );
        }
    }

    // The text table names them too.
    let out = Command::new(env!("CARGO_BIN_EXE_oomtrace"))
        .arg("rank")
        .arg("--all")
        .args(node.log_args())
        .output()
        .expect("run oomtrace rank");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains(&format!(" {} sleep", pids[0])))
        .unwrap_or_else(|| panic!("no row for pid {}:\n{text}", pids[0]));
    assert!(
        row.contains("BestEffort")
            && row.contains("batch/report-28391040")
            && row.contains("report"),
        "{row}"
    );
    // The global --proc (the host's /proc for the agent) reaches rank too.
    let out = Command::new(env!("CARGO_BIN_EXE_oomtrace"))
        .args(["rank", "--proc", "/nonexistent-oomtrace-proc"])
        .output()
        .expect("run oomtrace rank");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent-oomtrace-proc"), "{err}");
    eprintln!(
        "rank: {} processes listed in {rank_time:?}; test {:?}",
        all.len(),
        started.elapsed()
    );
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn text_format_shows_pod_domain_and_explanation_on_one_line() {
    let started = Instant::now();
    let node = Node::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oomtrace"))
        .args(["--format", "text"])
        .args(node.log_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oomtrace");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(l).is_err() {
                break;
            }
        }
    });
    let (ready_tx, ready) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if l.contains("ready") {
                let _ = ready_tx.send(());
            }
        }
    });
    let _guard = Kill(child);
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("agent ready");

    let web = node.cg(&node.web.ctr_rel);
    web.set_limit(32 * MIB);
    let (pid, status) = run_hog(web, 985, 128);
    assert!(killed_by_sigkill(&status), "{status:?}");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = lines.recv_timeout(left).expect("a text line for the kill");
        if l.contains(&format!("pid {pid} ")) {
            break l;
        }
    };
    assert!(
        !line.trim_start().starts_with('{'),
        "text, not JSON: {line}"
    );
    assert!(line.contains("OOM-KILL") && line.contains("(dd)"), "{line}");
    assert!(
        line.contains("shop/web-7d9f8b6c5-x2kqp container nginx (Burstable)"),
        "pod: {line}"
    );
    assert!(
        line.contains(&format!("container limit hit ({})", node.web.ctr_rel)),
        "domain: {line}"
    );
    assert!(
        line.contains("hit its own container memory limit"),
        "explanation: {line}"
    );
    eprintln!("{line}");
    eprintln!("text: {:?}", started.elapsed());
}
