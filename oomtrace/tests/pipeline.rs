//! The whole pipeline without a kernel: recorded ring-buffer records and
//! kernel-log records of two real kills (tests/data/pipeline) go through
//! capture decoding → correlation → enrichment (a cgroup tree, a pod log
//! directory and a /proc in a tempdir) → explanation → the JSON sink, and
//! the JSON a user would read is checked.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use oomtrace::{
    capture::kmsg::{parse_oom_line, parse_record},
    capture::tracefs::{MarkVictimLayout, parse_format},
    capture::{Input, KmsgSighting, ring::Decoder},
    cgroupfs::{CgroupFs, CgroupVersion},
    cli::Format,
    correlate::{Correlator, Expect},
    enrich::podnames::PodNames,
    enrich::{
        Enricher, WallClock,
        snapshots::{NodeSnapshots, SnapshotConfig},
    },
    explain,
    sink::{Sinks, stdout::Stdout},
};
use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
const POD1: &str = "8833712d-6e69-4f5c-95f3-aebd020ce2e7";
const CID1: &str = "4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
const POD2: &str = "3e61aa2b-7c1d-4c7e-9d39-2c1f0a6b8e11";
const CID2: &str = "9c1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";

/// Every input of the recording, in kernel time order (BPF ktime and the
/// kernel log's timestamp are the same monotonic clock).
fn recorded_inputs() -> Vec<Input> {
    let format =
        fs::read_to_string(format!("{DATA}/tracefs/mark_victim-6.18.format")).expect("format file");
    let decoder = Decoder {
        layout: Some(
            MarkVictimLayout::from_format(&parse_format(&format).expect("format")).expect("layout"),
        ),
        page_size: 4096,
        // record.sh ran the agent with its defaults: the signal hook on.
        signal_hook: true,
    };
    let mut timed: Vec<(u64, Input)> = Vec::new();
    let mut rings: Vec<PathBuf> = fs::read_dir(format!("{DATA}/pipeline"))
        .expect("pipeline dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    rings.sort();
    assert_eq!(rings.len(), 4, "two kills, two records each");
    for path in rings {
        let input = decoder
            .decode(&fs::read(&path).expect("record"))
            .unwrap_or_else(|e| panic!("{}: {e:?} (re-record: see README)", path.display()));
        let t = match &input {
            Input::Tracepoint(t) => t.meta.ktime_ns,
            Input::TpBtf(t) => t.meta.ktime_ns,
            other => panic!("unexpected record {other:?}"),
        };
        timed.push((t, input));
    }
    let kmsg =
        fs::read_to_string(format!("{DATA}/pipeline/host-6.18-kubepods.kmsg.txt")).expect("kmsg");
    for record in kmsg.lines().filter_map(|l| parse_record(l.as_bytes())) {
        if let Some(line) = parse_oom_line(&record.message) {
            timed.push((
                record.ts_usec * 1000,
                Input::Kmsg(KmsgSighting {
                    seq: record.seq,
                    ts_usec: record.ts_usec,
                    line,
                    received: Instant::now(),
                    replayed: false,
                }),
            ));
        }
    }
    timed.sort_by_key(|(t, _)| *t);
    timed.into_iter().map(|(_, i)| i).collect()
}

fn write(dir: &Path, file: &str, text: &str) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(dir.join(file), text).expect("write");
}

/// The node as the enrichment stage sees it, in a tempdir: the memory
/// cgroup tree of the recording (v1) after the kills, the kubelet's log
/// directories naming both pods, and a /proc with the host's meminfo.
struct FakeNode {
    dir: tempfile::TempDir,
}

impl FakeNode {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("cgroup");
        let kubepods = cg.join("oomtrace-sample/kubepods");
        let mib = |n: u64| format!("{}\n", n << 20);
        write(&cg, "memory.usage_in_bytes", &mib(900));
        write(
            &cg.join("oomtrace-sample"),
            "memory.usage_in_bytes",
            &mib(47),
        );
        write(&kubepods, "memory.usage_in_bytes", &mib(47));
        write(&kubepods, "memory.limit_in_bytes", &mib(48));
        let pod1 = kubepods.join(format!("burstable/pod{POD1}"));
        write(&pod1, "memory.usage_in_bytes", &mib(30));
        write(&pod1.join(CID1), "memory.usage_in_bytes", &mib(30));
        write(&pod1.join(CID1), "memory.limit_in_bytes", &mib(32));
        // The container's only process was the victim, which has exited.
        write(&pod1.join(CID1), "cgroup.procs", "");
        let pod2 = kubepods.join(format!("besteffort/pod{POD2}"));
        write(&pod2, "memory.usage_in_bytes", &mib(16));
        write(&pod2.join(CID2), "memory.usage_in_bytes", &mib(16));
        write(
            &cg.join("system.slice/batch.service"),
            "memory.usage_in_bytes",
            &mib(600),
        );
        for (ns, pod, uid, container, cid) in [
            ("shop", "api-5c8d", POD1, "api", CID1),
            ("batch", "report-7", POD2, "worker", CID2),
        ] {
            let logs = dir
                .path()
                .join(format!("pods/{ns}_{pod}_{uid}/{container}"));
            write(&logs, "0.log", "");
            fs::create_dir_all(dir.path().join("containers")).expect("mkdir");
            std::os::unix::fs::symlink(
                logs.join("0.log"),
                dir.path()
                    .join(format!("containers/{pod}_{ns}_{container}-{cid}.log")),
            )
            .expect("symlink");
        }
        let meminfo = fs::read_to_string(format!("{DATA}/node/host-6.18.meminfo.txt"))
            .expect("meminfo sample");
        write(&dir.path().join("proc"), "meminfo", &meminfo);
        Self { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cgfs(&self) -> CgroupFs {
        CgroupFs {
            root: self.path("cgroup"),
            version: CgroupVersion::V1,
        }
    }
}

/// Runs the stages as the agent wires them and returns the JSON lines.
fn run_pipeline(node: &FakeNode) -> Vec<Value> {
    let expect = Expect {
        tracepoint: true,
        tp_btf: true,
        kmsg: true,
        decision: false,
        proc: false,
        memory: false,
    };
    let mut correlator = Correlator::new(expect, Duration::from_secs(1), 4096, "b00710".into());
    let now = Instant::now();
    let mut correlated = Vec::new();
    for input in recorded_inputs() {
        correlated.extend(correlator.push(input, now));
    }
    correlated.extend(correlator.tick(now + Duration::from_secs(5)));
    assert_eq!(correlator.pending_count(), 0);

    let snapshots = NodeSnapshots::spawn(SnapshotConfig {
        cgfs: node.cgfs(),
        proc_root: node.path("proc"),
        top: 5,
        pod_logs: node.path("pods"),
        container_logs: node.path("containers"),
        max_age: Duration::from_secs(11),
    })
    .expect("snapshot thread");
    let mut enricher = Enricher {
        node: "node-a".into(),
        cgfs: Some(node.cgfs()),
        proc_root: node.path("proc"),
        pod_names: PodNames::new()
            .with_pods_dir(node.path("pods"))
            .with_containers_dir(node.path("containers")),
        mem_total: Some(24_684_084 * 1024),
        clock: WallClock::now(),
        snapshots: Some(snapshots),
        pods: None,
    };
    let out = SharedBuf::default();
    let mut sinks = Sinks::default();
    sinks.push(Stdout::new(Format::Json, out.clone()));
    for c in correlated {
        let mut e = enricher.enrich(c);
        explain::apply(&mut e);
        sinks.kill(&e.kill).expect("sink");
    }
    let bytes = out.0.lock().expect("lock").clone();
    String::from_utf8(bytes)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Stdout for the test: what the sink wrote.
#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

fn i(v: &Value, path: &[&str]) -> Option<i64> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_i64()
}

#[test]
fn two_recorded_kills_come_out_as_the_json_a_user_reads() {
    let node = FakeNode::new();
    let events = run_pipeline(&node);
    assert_eq!(events.len(), 2, "{events:#?}");

    for e in &events {
        assert_eq!(s(e, &["kind"]), Some("oom_kill"), "{e:#}");
        assert_eq!(s(e, &["killer", "kind"]), Some("kernel_oom"), "{e:#}");
        assert!(e["killer"]["pid"].is_null(), "the kernel has no pid: {e:#}");
    }

    // Kill 1: the container's own 32 MiB limit.
    let e = &events[0];
    assert_eq!(s(e, &["scope"]), Some("cgroup"), "{e:#}");
    assert_eq!(s(e, &["oom_domain"]), Some("container"), "{e:#}");
    assert_eq!(s(e, &["verdict_source"]), Some("kmsg"), "{e:#}");
    assert_eq!(s(e, &["victim", "comm"]), Some("dd"));
    assert_eq!(i(e, &["victim", "oom_score_adj"]), Some(985));
    assert_eq!(i(e, &["victim", "anon_rss_kb"]), Some(32_512));
    assert_eq!(i(e, &["memcg", "oom_limit_bytes"]), Some(32 << 20));
    assert_eq!(s(e, &["k8s", "namespace"]), Some("shop"));
    assert_eq!(s(e, &["k8s", "pod"]), Some("api-5c8d"));
    assert_eq!(s(e, &["k8s", "container"]), Some("api"));
    assert_eq!(s(e, &["k8s", "qos_class"]), Some("Burstable"));
    assert_eq!(
        e["sources"],
        serde_json::json!(["tracepoint", "tp_btf", "kmsg"]),
        "{e:#}"
    );
    assert_eq!(s(e, &["node"]), Some("node-a"));
    assert!(s(e, &["time"]).is_some_and(|t| t.ends_with('Z')));
    assert!(s(e, &["incident"]).is_some_and(|t| t.starts_with("b00710-")));
    assert!(
        s(e, &["explanation"]).is_some_and(|x| x.contains(
            "shop/api-5c8d (container api, Burstable, oom_score_adj 985) hit its own container memory limit"
        )),
        "{e:#}"
    );
    assert!(
        e["node_memory"].is_null(),
        "no node context for a container kill"
    );
    assert_eq!(e["qos_check"]["fits"], true, "{e:#}");
    // record.sh's shell (outside the cgroup) exec'd dd in the container's
    // cgroup: its first process, the container's main one.
    assert_eq!(
        e["outcome"],
        serde_json::json!({"main_process": true, "survivors": 0, "group_kill": false}),
        "{e:#}"
    );
    assert!(
        s(e, &["explanation"]).is_some_and(|x| x.contains(
            "It was the container's main process: the container exited and the kubelet restarts it; no process is left in its container."
        )),
        "{e:#}"
    );

    // Kill 2: the node's allocatable (the kubepods cgroup's 48 MiB).
    let e = &events[1];
    assert_eq!(s(e, &["oom_domain"]), Some("node_allocatable"), "{e:#}");
    assert_eq!(s(e, &["oom_cgroup"]), Some("/oomtrace-sample/kubepods"));
    assert_eq!(s(e, &["k8s", "pod"]), Some("report-7"));
    assert_eq!(s(e, &["k8s", "qos_class"]), Some("BestEffort"));
    assert_eq!(i(e, &["memcg", "oom_limit_bytes"]), Some(48 << 20));
    let top = e["node_memory"]["top"].as_array().expect("top consumers");
    assert_eq!(
        top.first().and_then(|c| c["name"].as_str()),
        Some("/system.slice/batch.service"),
        "{e:#}"
    );
    assert!(
        top.iter().any(|c| c["name"] == "shop/api-5c8d"),
        "pods are named: {e:#}"
    );
    let explanation = s(e, &["explanation"]).expect("explanation");
    assert!(
        explanation.contains("exhausted its allocatable memory")
            && explanation.contains("BestEffort pods (oom_score_adj 1000) are killed first"),
        "{explanation}"
    );
    // A system service does not count against allocatable.
    assert!(!explanation.contains("batch.service"), "{explanation}");
    assert!(i(e, &["node_memory", "total_bytes"]).is_some_and(|b| b > 0));
}
