//! VM scenarios: what the host cannot show (cgroup v2, the oom_kill_process
//! hook, other kernels) and must never do (a node-level OOM).
//!
//! These tests run only inside the throwaway VM of `cargo xtask vm`: each one
//! refuses to run anywhere else. `cargo xtask test` boots one VM per kernel of
//! the matrix and runs them there (xtask/vm/scenarios/*.sh call this binary
//! with `--exact`); the host stage skips them (`--skip vm_`).

mod support;

use std::{
    collections::HashSet,
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Agent, Memcg, i, killed_by_sigkill, mem_available_mib, pid_of, rank_json, run_hog, s, set_adj,
    spawn_grower_until_any_killed, spawn_grower_until_killed, spawn_holder, spawn_in,
    wait_for_comm, wait_rss,
};

/// Panics (fails the test) unless running inside the test VM.
fn require_vm() {
    let marker = Path::new("/run/oomtrace-in-vm").exists();
    let env = std::env::var("OOMTRACE_IN_VM").is_ok_and(|v| v == "1");
    assert!(
        marker && env,
        "refusing to run: this test causes node-level OOMs and runs only inside the VM of `cargo xtask vm` (marker /run/oomtrace-in-vm and OOMTRACE_IN_VM=1)"
    );
    // The harness must survive the OOMs it causes.
    set_adj(std::process::id(), -1000);
}

fn protect(agent: &Agent) {
    set_adj(agent.pid(), -1000);
}

fn uid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("uuid")
        .trim()
        .to_string()
}

fn hex64() -> String {
    let a = uid().replace('-', "");
    let b = uid().replace('-', "");
    format!("{a}{b}")
}

/// A pod in a systemd-driver kubepods hierarchy, with its log directory.
struct Pod {
    uid: String,
    container_id: String,
    pod: Memcg,
    container: Memcg,
}

impl Pod {
    fn new(qos: &str, ns: &str, name: &str, container: &str, logs: &Path) -> Self {
        let uid = uid();
        let uid_ = uid.replace('-', "_");
        let container_id = hex64();
        let slice = match qos {
            "guaranteed" => format!("kubepods.slice/kubepods-pod{uid_}.slice"),
            q => format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{uid_}.slice"),
        };
        let pod = Memcg::create(&slice);
        let container_cg = Memcg::create(&format!("{slice}/cri-containerd-{container_id}.scope"));
        let dir = logs
            .join("pods")
            .join(format!("{ns}_{name}_{uid}"))
            .join(container);
        fs::create_dir_all(&dir).expect("pod log dir");
        fs::write(dir.join("0.log"), "").expect("log");
        let containers = logs.join("containers");
        fs::create_dir_all(&containers).expect("containers dir");
        let _ = std::os::unix::fs::symlink(
            dir.join("0.log"),
            containers.join(format!("{name}_{ns}_{container}-{container_id}.log")),
        );
        Self {
            uid,
            container_id,
            pod,
            container: container_cg,
        }
    }
}

fn agent_with_logs(logs: &Path, extra: &[&str]) -> Agent {
    let pods = logs.join("pods");
    let containers = logs.join("containers");
    fs::create_dir_all(&pods).expect("pods");
    fs::create_dir_all(&containers).expect("containers");
    let mut args = vec![
        "--pod-logs".to_string(),
        pods.display().to_string(),
        "--container-logs".to_string(),
        containers.display().to_string(),
        "--wait-ms".to_string(),
        "3000".to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&refs);
    protect(&agent);
    agent
}

fn for_pid(pid: u32) -> impl Fn(&Value) -> bool {
    move |v| i(v, &["victim", "pid"]) == Some(i64::from(pid))
}

fn has_hook(log: &str, hook: &str) -> bool {
    log.lines()
        .any(|l| l.contains("ready:") && l.contains(hook))
}

#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_container_pod_and_allocatable_limits() {
    require_vm();
    let logs = tempfile::tempdir().expect("tmp");
    let agent = agent_with_logs(logs.path(), &[]);
    let pod = Pod::new("burstable", "shop", "cart-7d9f", "cart", logs.path());

    // 1. The container's own limit.
    pod.container.set_limit(32 << 20);
    let (pid, st) = run_hog(&pod.container, 900, 128);
    assert!(killed_by_sigkill(&st), "{st:?}");
    let e = agent.events(1, Duration::from_secs(60), for_pid(pid));
    assert_eq!(e.len(), 1, "{}", agent.log());
    let e = &e[0];
    assert_eq!(s(e, &["oom_domain"]), Some("container"), "{e}");
    assert_eq!(
        s(e, &["oom_cgroup"]),
        Some(pod.container.rel.as_str()),
        "{e}"
    );
    assert_eq!(s(e, &["k8s", "namespace"]), Some("shop"), "{e}");
    assert_eq!(s(e, &["k8s", "pod"]), Some("cart-7d9f"), "{e}");
    assert_eq!(s(e, &["k8s", "container"]), Some("cart"), "{e}");
    assert_eq!(s(e, &["k8s", "pod_uid"]), Some(pod.uid.as_str()), "{e}");
    assert_eq!(
        s(e, &["k8s", "container_id"]),
        Some(pod.container_id.as_str()),
        "{e}"
    );
    assert_eq!(s(e, &["k8s", "qos_class"]), Some("Burstable"), "{e}");
    assert_eq!(s(e, &["k8s", "runtime"]), Some("containerd"), "{e}");
    assert!(
        s(e, &["explanation"]).is_some_and(|x| x.contains("container")),
        "{e}"
    );

    // 2. The pod's limit (the container has none).
    pod.container.write("memory.max", "max");
    pod.pod.write("memory.max", &(40u64 << 20).to_string());
    let (pid, st) = run_hog(&pod.container, 900, 128);
    assert!(killed_by_sigkill(&st), "{st:?}");
    let e = agent.events(1, Duration::from_secs(60), for_pid(pid));
    assert_eq!(e.len(), 1, "{}", agent.log());
    assert_eq!(s(&e[0], &["oom_domain"]), Some("pod"), "{}", e[0]);
    assert_eq!(
        s(&e[0], &["oom_cgroup"]),
        Some(pod.pod.rel.as_str()),
        "{}",
        e[0]
    );

    // 3. The kubepods limit: the node's allocatable memory.
    pod.pod.write("memory.max", "max");
    let kubepods_max = Path::new("/sys/fs/cgroup/kubepods.slice/memory.max");
    fs::write(kubepods_max, (48u64 << 20).to_string()).expect("kubepods memory.max");
    let (pid, st) = run_hog(&pod.container, 900, 128);
    assert!(killed_by_sigkill(&st), "{st:?}");
    let e = agent.events(1, Duration::from_secs(60), for_pid(pid));
    fs::write(kubepods_max, "max").expect("kubepods memory.max");
    assert_eq!(e.len(), 1, "{}", agent.log());
    let e = &e[0];
    assert_eq!(s(e, &["oom_domain"]), Some("node_allocatable"), "{e}");
    assert_eq!(s(e, &["oom_cgroup"]), Some("/kubepods.slice"), "{e}");
    assert!(
        e["node_memory"]["top"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{e}"
    );
    assert!(
        s(e, &["explanation"]).is_some_and(|x| x.contains("allocatable")),
        "{e}"
    );
    let _ = agent.stop();
    drop(pod);
    let _ = fs::remove_dir("/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice");
    let _ = fs::remove_dir("/sys/fs/cgroup/kubepods.slice");
}

#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_node_level_oom_kills_the_burstable_pod_below_its_limit() {
    require_vm();
    let logs = tempfile::tempdir().expect("tmp");
    let agent = agent_with_logs(logs.path(), &[]);
    let guaranteed = Pod::new("guaranteed", "payments", "ledger-0", "ledger", logs.path());
    let burstable = Pod::new("burstable", "shop", "api-5c8d", "api", logs.path());
    guaranteed.container.set_limit(256 << 20);
    burstable.container.set_limit(256 << 20);
    // The kubelet's values: Guaranteed -997; Burstable with a 256Mi request on a 16Gi node: 985.
    let mut g = spawn_holder(&guaranteed.container, -997, 40);
    let mut b = spawn_holder(&burstable.container, 985, 40);
    wait_rss(g.id(), 30 << 10);
    wait_rss(b.id(), 30 << 10);
    let (gpid, bpid) = (g.id(), b.id());

    // A hog outside every pod exhausts the node (no swap in the guest).
    let hog_cg = Memcg::create("system.slice/batch-report.service");
    // It grows until the kernel kills the Burstable pod (its 40 MiB are
    // freed) and then holds what it has, so it is not the next victim and
    // the node context of the kill shows who ate the memory.
    // Its cap is more than the guest has, so the kernel must kill before
    // the hog stops growing (with MemAvailable + 64 MiB, one run saw no
    // kill in 180 s: MemAvailable is an estimate, and a hog that stops
    // short of the node's real limit waits forever).
    let mut hog = spawn_grower_until_killed(&hog_cg, 0, mem_available_mib() + 1024, bpid);
    // The guest thrashes before the kernel kills: its programs (python, the
    // agent, this test) are file pages of the host root over 9p, dropped
    // and read again under TCG. A 6.1 run took 177 s to its kill (PSI full
    // avg10 59%); 6.12 and 5.10 took 80-90 s.
    let e = agent.events(1, Duration::from_secs(300), for_pid(bpid));
    let _ = hog.kill();
    let _ = hog.wait();
    let guaranteed_alive = g.try_wait().ok().flatten().is_none();
    let log = agent.log();
    let _ = b.kill();
    let _ = g.kill();
    let _ = b.wait();
    let _ = g.wait();
    assert_eq!(
        e.len(),
        1,
        "the Burstable pod was not reported as killed; stderr:\n{log}"
    );
    let e = &e[0];
    eprintln!("node-level event: {e}");
    assert_eq!(s(e, &["scope"]), Some("node"), "{e}");
    assert_eq!(s(e, &["oom_domain"]), Some("node"), "{e}");
    assert!(e["oom_cgroup"].is_null(), "{e}");
    assert_eq!(s(e, &["k8s", "qos_class"]), Some("Burstable"), "{e}");
    assert_eq!(s(e, &["k8s", "pod"]), Some("api-5c8d"), "{e}");
    assert_eq!(i(e, &["victim", "oom_score_adj"]), Some(985), "{e}");
    let usage = i(e, &["memcg", "victim_usage_bytes"]).expect("usage");
    let limit = i(e, &["memcg", "victim_limit_bytes"]).expect("limit");
    assert!(
        usage < limit / 2,
        "usage {usage} should be well below the limit {limit}: {e}"
    );
    let top = e["node_memory"]["top"].as_array().expect("node_memory.top");
    assert!(
        top.first()
            .and_then(|t| t["cgroup"].as_str())
            .is_some_and(|c| c.contains("batch-report")),
        "the hog must lead the consumers: {e}"
    );
    let x = s(e, &["explanation"]).expect("explanation");
    assert!(
        x.contains("node ran out of memory") && x.contains("Burstable"),
        "{x}"
    );
    let a = s(e, &["advice"]).expect("advice");
    assert!(a.contains("Guaranteed"), "{a}");
    if has_hook(&log, "oom_kill_process") {
        assert_eq!(s(e, &["verdict_source"]), Some("oom_control"), "{e}");
        assert_eq!(s(e, &["constraint"]), Some("none"), "{e}");
        assert!(i(e, &["victim", "points"]).is_some_and(|p| p > 0), "{e}");
    }
    assert!(
        guaranteed_alive,
        "the Guaranteed pod (pid {gpid}) must survive"
    );
}

#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_oom_group_kills_are_one_incident() {
    require_vm();
    let log = group_kill(&[]);
    // Where tp_btf names each victim's cgroup, prove the fallback too: the
    // oom_kill_memcg_member hook that pid-only kernels (before 6.9) rely on.
    if has_hook(&log, "tp_btf/mark_victim") {
        let log = group_kill(&["--no-tp-btf"]);
        assert!(
            has_hook(&log, "fentry/oom_kill_memcg_member"),
            "without tp_btf the group-member hook must be active: {log}"
        );
    } else {
        assert!(
            has_hook(&log, "fentry/oom_kill_memcg_member"),
            "a kernel without tp_btf must use the group-member hook: {log}"
        );
        let log = group_kill(&["--no-fentry"]);
        assert!(
            has_hook(&log, "kprobe/oom_kill_memcg_member"),
            "without fentry the group-member kprobe must be active: {log}"
        );
    }
}

/// One memory.oom.group kill of three holders and a hog; asserts every task
/// is reported once, with its cgroup, in one incident. Returns the agent's log.
fn group_kill(agent_args: &[&str]) -> String {
    let logs = tempfile::tempdir().expect("tmp");
    let agent = agent_with_logs(logs.path(), agent_args);
    let pod = Pod::new("besteffort", "etl", "worker-1", "worker", logs.path());
    pod.container.set_limit(96 << 20);
    pod.container.write("memory.oom.group", "1");
    let mut holders: Vec<_> = (0..3)
        .map(|_| spawn_holder(&pod.container, 1000, 16))
        .collect();
    for h in &holders {
        wait_rss(h.id(), 12 << 10);
    }
    let before: u64 = pod.container.oom_kills();
    let mut killed: HashSet<i64> = holders.iter().map(|h| i64::from(h.id())).collect();
    let (hog_pid, st) = run_hog(&pod.container, 1000, 256);
    assert!(killed_by_sigkill(&st), "{st:?}");
    killed.insert(i64::from(hog_pid));
    for h in &mut holders {
        let st = h.wait().expect("wait");
        assert!(killed_by_sigkill(&st), "group member survived: {st:?}");
    }
    // The kernel counts the chosen task twice in a group kill: once as the
    // victim, once more when it scans the group (mm/oom_kill.c,
    // oom_kill_memcg_member), but marks it (mark_victim) only once.
    let counted = pod.container.oom_kills() - before;
    let ours = |v: &Value| {
        i(v, &["victim", "pid"]).is_some_and(|p| killed.contains(&p))
            || s(v, &["oom_cgroup"]) == Some(pod.container.rel.as_str())
    };
    let mut e = agent.events(killed.len(), Duration::from_secs(30), ours);
    // Anything more (a duplicate) would come within the correlation wait.
    e.extend(agent.events(1, Duration::from_secs(4), ours));
    let log = agent.log();
    let all: Vec<String> = e.iter().map(Value::to_string).collect();
    let all = all.join("\n");
    assert_eq!(counted, killed.len() as u64 + 1, "kernel oom_kill counter");
    let reported: Vec<i64> = e.iter().filter_map(|v| i(v, &["victim", "pid"])).collect();
    assert_eq!(
        reported.len(),
        killed.len(),
        "each killed task once: {reported:?} of {killed:?}\n{all}\n{log}"
    );
    assert_eq!(
        reported.iter().copied().collect::<HashSet<_>>(),
        killed,
        "{all}\n{log}"
    );
    for v in &e {
        assert_eq!(
            s(v, &["victim", "cgroup"]),
            Some(pod.container.rel.as_str()),
            "every member's own cgroup is named ({agent_args:?}): {v}\n{log}"
        );
        assert_eq!(
            s(v, &["oom_cgroup"]),
            Some(pod.container.rel.as_str()),
            "{v}"
        );
        assert_eq!(s(v, &["k8s", "pod"]), Some("worker-1"), "{v}");
        // memory.oom.group took the whole container: said on every victim.
        assert_eq!(v["outcome"]["group_kill"], true, "{v}\n{log}");
        assert!(
            s(v, &["explanation"]).is_some_and(|x| x.contains("memory.oom.group is set")),
            "{v}"
        );
    }
    let incidents: HashSet<&str> = e.iter().filter_map(|v| s(v, &["incident"])).collect();
    assert_eq!(
        incidents.len(),
        1,
        "one OOM decision, one incident: {incidents:?}\n{all}"
    );
    let _ = agent.stop();
    let ready = log
        .lines()
        .find(|l| l.contains("ready:"))
        .unwrap_or_default();
    eprintln!(
        "group kill with {agent_args:?}: {} tasks reported with their cgroup; {ready}",
        e.len()
    );
    log
}

#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_oom_control_hook_and_its_fallback() {
    require_vm();
    for (args, expect_decision) in [
        (&[][..], true),
        (&["--no-fentry"][..], true),
        (&["--no-fentry", "--no-kprobe"][..], false),
    ] {
        let logs = tempfile::tempdir().expect("tmp");
        let agent = agent_with_logs(logs.path(), args);
        let cg = Memcg::create(&format!("oomtrace-vm-decision-{}", args.len()));
        cg.set_limit(32 << 20);
        let (pid, st) = run_hog(&cg, 400, 128);
        assert!(killed_by_sigkill(&st), "{st:?}");
        let e = agent.events(1, Duration::from_secs(60), for_pid(pid));
        let (_, log) = agent.stop();
        assert_eq!(e.len(), 1, "args {args:?}: {log}");
        let e = &e[0];
        assert_eq!(s(e, &["oom_cgroup"]), Some(cg.rel.as_str()), "{e}");
        assert_eq!(s(e, &["scope"]), Some("cgroup"), "{e}");
        assert_eq!(s(e, &["constraint"]), Some("memcg"), "{e}");
        if expect_decision {
            // An arm64 kernel without ftrace direct calls refuses fentry
            // (Debian's 6.1: the attach fails), and the kprobe takes over,
            // reading its argument from `struct pt_regs` the arm64 way.
            let no_fentry = cfg!(target_arch = "aarch64")
                && !has_hook(&log, "fentry/oom_kill_process")
                && log.contains("inactive: fentry/oom_kill_process: attach");
            let hook = if args.is_empty() && !no_fentry {
                "fentry/oom_kill_process"
            } else {
                "kprobe/oom_kill_process"
            };
            assert!(
                has_hook(&log, hook),
                "{hook} must be active with {args:?}: {log}"
            );
            assert_eq!(s(e, &["verdict_source"]), Some("oom_control"), "{e}");
            assert!(i(e, &["victim", "points"]).is_some_and(|p| p > 0), "{e}");
            assert_eq!(i(e, &["trigger", "pid"]), Some(i64::from(pid)), "{e}");
            assert_eq!(s(e, &["trigger", "cgroup"]), Some(cg.rel.as_str()), "{e}");
            assert_eq!(i(e, &["memcg", "total_bytes"]), Some(32 << 20), "{e}");
        } else {
            assert!(!has_hook(&log, "oom_kill_process"), "{log}");
            assert!(
                matches!(s(e, &["verdict_source"]), Some("kmsg" | "cgroup_usage")),
                "{e}"
            );
        }
    }
}

#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_sysrq_forced_oom_is_reported_as_forced() {
    require_vm();
    let logs = tempfile::tempdir().expect("tmp");
    let agent = agent_with_logs(logs.path(), &[]);
    let cg = Memcg::create("system.slice/sacrifice.service");
    let mut victim = spawn_holder(&cg, 1000, 8);
    wait_rss(victim.id(), 6 << 10);
    let pid = victim.id();
    let _ = fs::write("/proc/sys/kernel/sysrq", "1");
    let started = Instant::now();
    fs::write("/proc/sysrq-trigger", "f").expect("sysrq");
    let e = agent.events(1, Duration::from_secs(60), for_pid(pid));
    let st = victim.wait().expect("wait");
    assert!(killed_by_sigkill(&st), "{st:?}");
    let log = agent.log();
    assert_eq!(e.len(), 1, "after {:?}: {log}", started.elapsed());
    let e = &e[0];
    assert_eq!(s(e, &["scope"]), Some("node"), "{e}");
    assert_eq!(i(e, &["trigger", "order"]), Some(-1), "{e}");
    let x = s(e, &["explanation"]).expect("explanation");
    assert!(x.contains("sysrq"), "a forced OOM must say so: {x}");
    thread::sleep(Duration::from_millis(100));
}

/// `oomtrace rank --pod` on cgroup v2: the pod's processes ranked against the
/// pod's limit, rank 1 and its `memory.oom.group` marked, and then the real
/// kill at the pod's limit takes exactly those processes.
#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_rank_of_a_pod_names_the_processes_the_kernel_kills() {
    require_vm();
    let logs = tempfile::tempdir().expect("tmp");
    let agent = agent_with_logs(logs.path(), &[]);
    let pod = Pod::new("burstable", "shop", "api-5c8d", "api", logs.path());
    let sidecar = pod.pod.child(&format!("cri-containerd-{}.scope", hex64()));
    // No swap in the guest: the kernel scores against 40960 pages (40 per adj point).
    pod.pod.set_limit(160 << 20);
    pod.container.write("memory.oom.group", "1");
    // The api container (oom.group): a big process, a small one, an unkillable one.
    let mut big = spawn_holder(&pod.container, 0, 80);
    let mut buddy = spawn_holder(&pod.container, 0, 4);
    let mut never = spawn_in(&pod.container, -1000, "sleep 3600");
    // The sidecar: high adjustments, little memory.
    let mut high = spawn_holder(&sidecar, 300, 4);
    let mut mid = spawn_holder(&sidecar, 100, 20);
    let mut sleeper = spawn_in(&sidecar, 400, "sleep 3600");
    wait_rss(big.id(), 80 << 10);
    wait_rss(buddy.id(), 4 << 10);
    wait_rss(high.id(), 4 << 10);
    wait_rss(mid.id(), 20 << 10);
    wait_for_comm(never.id(), "sleep");
    wait_for_comm(sleeper.id(), "sleep");
    let all = [
        big.id(),
        buddy.id(),
        never.id(),
        high.id(),
        mid.id(),
        sleeper.id(),
    ];

    let pods = logs.path().join("pods").display().to_string();
    let containers = logs.path().join("containers").display().to_string();
    let rows = rank_json(&[
        "--pod",
        "shop/api-5c8d",
        "--pod-logs",
        &pods,
        "--container-logs",
        &containers,
    ]);
    for r in &rows {
        eprintln!(
            "rank {} points {} adj {} rss {} pid {} {} group {} with-first {}",
            r["rank"],
            r["points"],
            r["oom_score_adj"],
            r["rss_bytes"],
            r["pid"],
            r["cgroup"],
            r["oom_group"],
            r["killed_with_first"]
        );
    }
    let listed: Vec<u32> = rows.iter().map(pid_of).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    let mut want = all.to_vec();
    want.sort_unstable();
    assert_eq!(sorted, want, "exactly the pod's processes: {rows:?}");
    assert_eq!(listed[0], big.id(), "rank 1: {rows:?}");
    assert_eq!(listed.last(), Some(&never.id()), "-1000 last: {rows:?}");
    let row = |pid: u32| rows.iter().find(|r| pid_of(r) == pid).expect("row of pid");
    assert!(row(never.id())["rank"].is_null());
    let with_first: Vec<u32> = rows
        .iter()
        .filter(|r| r["killed_with_first"] == true)
        .map(pid_of)
        .collect();
    assert_eq!(
        with_first,
        vec![big.id(), buddy.id()],
        "the api container's memory.oom.group, but not its -1000 process: {rows:?}"
    );
    assert_eq!(
        s(row(big.id()), &["oom_group"]),
        Some(pod.container.rel.as_str())
    );
    assert!(row(high.id())["oom_group"].is_null());
    assert_eq!(s(row(big.id()), &["k8s", "namespace"]), Some("shop"));
    assert_eq!(s(row(big.id()), &["k8s", "pod"]), Some("api-5c8d"));
    assert_eq!(s(row(big.id()), &["k8s", "container"]), Some("api"));
    let predicted = i(row(big.id()), &["points"]).expect("points");

    // Push the pod past its limit from the sidecar (adj 200: at most about
    // 24 MiB + 200 * 40 pages when the limit is hit, far below rank 1).
    let before = pod.pod.oom_kills();
    let hog_pids = [big.id(), buddy.id(), high.id(), mid.id(), sleeper.id()];
    let mut hog = spawn_grower_until_any_killed(&sidecar, 200, 256, &hog_pids);
    let e = agent.events(2, Duration::from_secs(120), |v| {
        i(v, &["victim", "pid"]).is_some_and(|p| all.contains(&(p as u32)))
    });
    thread::sleep(Duration::from_millis(500));
    let counted = pod.pod.oom_kills() - before;
    let log = agent.log();
    let mut dead = Vec::new();
    for c in [
        &mut big,
        &mut buddy,
        &mut never,
        &mut high,
        &mut mid,
        &mut sleeper,
    ] {
        if let Some(st) = c.try_wait().expect("try_wait") {
            assert!(killed_by_sigkill(&st), "pid {}: {st:?}", c.id());
            dead.push(c.id());
        }
    }
    let hog_alive = hog.try_wait().expect("try_wait").is_none();
    for c in [
        &mut big,
        &mut buddy,
        &mut never,
        &mut high,
        &mut mid,
        &mut sleeper,
        &mut hog,
    ] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(
        dead,
        vec![big.id(), buddy.id()],
        "killed: {dead:?}; {e:?}\n{log}"
    );
    assert!(hog_alive, "the pusher was not the victim");
    // The chosen task is counted twice in a group kill (see
    // vm_oom_group_kills_are_one_incident), but only when it still has its
    // mm when the group scan reaches it (__oom_kill_process returns early
    // for a task whose mm is gone): 2 or 3, never fewer than the victims.
    assert!(
        (2..=3).contains(&counted),
        "memory.events oom_kill of the pod: {counted}"
    );
    let first = e
        .iter()
        .find(|v| i(v, &["victim", "pid"]) == Some(i64::from(big.id())))
        .unwrap_or_else(|| panic!("no event for rank 1: {e:?}\n{log}"));
    assert_eq!(
        s(first, &["oom_cgroup"]),
        Some(pod.pod.rel.as_str()),
        "{first}"
    );
    if has_hook(&log, "oom_kill_process") {
        // The kernel's own denominator and chosen points (struct oom_control).
        assert_eq!(
            i(first, &["memcg", "total_bytes"]),
            Some(160 << 20),
            "{first}"
        );
        // Reclaim before the OOM drops some of its file pages (python's
        // mapped libraries): measured 3.7% fewer points on 5.10, 6.1 and 6.12.
        let chosen = i(first, &["victim", "points"]).expect("points");
        assert!(
            (chosen - predicted).abs() <= predicted / 20,
            "kernel chose {chosen} points, rank predicted {predicted}: {first}"
        );
        eprintln!("oom_control: chosen_points {chosen}, predicted {predicted}");
    }
    let _ = agent.stop();
}

#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_signal_hook_and_start_times() {
    require_vm();
    // Every program loads past this kernel's verifier, fires, and its records
    // say what the host test checks (5.10's verifier is the strictest).
    support::signal_hook_checks(true);
    support::signal_hook_checks(false);
    support::start_time_checks();

    // With the kernel side's debug lines on, the verifier sees more code:
    // every hook must still load, and the lines reach the agent's log.
    // (Until the struct offsets were read in place, the decision program's
    // frame and the log line's subprograms outgrew the 512-byte stack on
    // kernels before 6.8, after a minute of verifying under TCG.)
    for extra in [&[][..], &["--no-tp-btf"][..]] {
        let quiet = Agent::start(extra);
        let quiet_log = quiet.log();
        let _ = quiet.stop();
        let agent = Agent::start_with_log(extra, "info,oomtrace_ebpf=debug");
        protect(&agent);
        let ready = |log: &str| {
            log.lines()
                .find(|l| l.contains("ready:"))
                .map(|l| {
                    l.split_once("ready:")
                        .map_or("", |p| p.1)
                        .trim()
                        .to_string()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            ready(&agent.log()),
            ready(&quiet_log),
            "the same hooks with and without the debug lines ({extra:?})"
        );
        let cg = Memcg::unique("signal-debug");
        let mut sleeper = support::spawn_in(&cg, 0, "sleep 60");
        let pid = sleeper.id();
        support::wait_comm(pid, "sleep");
        support::kill_as("earlyoom", "9", pid);
        let _ = sleeper.wait();
        thread::sleep(Duration::from_secs(1));
        let (_, log) = agent.stop();
        let line = log
            .lines()
            .find(|l| l.contains("oomtrace_ebpf") && l.contains(&format!("to pid {pid}")))
            .unwrap_or_else(|| {
                panic!("no kernel-side debug line for pid {pid} ({extra:?}): {log}")
            });
        eprintln!("{line}");
    }
}

/// Creates (and closes) a 4 MiB BPF ring buffer with this process's
/// RLIMIT_MEMLOCK lowered to `limit` for the call (raised back after: root).
fn ring_buffer_under_memlock(limit: u64) -> Result<(), std::io::Error> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let low = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // `union bpf_attr` for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries, map_flags, then zeros.
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    let mut attr = [0u32; 30];
    attr[0] = BPF_MAP_TYPE_RINGBUF;
    attr[3] = 4 << 20;
    // SAFETY: plain syscalls; `attr` outlives the bpf(2) call that reads it.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut old), 0);
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &low), 0);
        let fd = libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        );
        let result = if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            libc::close(fd as i32);
            Ok(())
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &old), 0);
        result
    }
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().expect("number"));
    (parts.next().expect("major"), parts.next().expect("minor"))
}

#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_memlock_is_raised_where_the_kernel_charges_bpf_maps_to_it() {
    require_vm();
    let charged = kernel_version() < (5, 11);
    // The kernel's own behaviour, without oomtrace: a 4 MiB ring buffer
    // created under a 64 KiB memlock limit. (Not with bpftool: it raises its
    // own limit first.)
    let created = ring_buffer_under_memlock(64 << 10);
    eprintln!("a 4 MiB ring buffer under a 64 KiB RLIMIT_MEMLOCK: {created:?}");
    assert_eq!(
        created.is_err(),
        charged,
        "this kernel {} BPF maps to RLIMIT_MEMLOCK: {created:?}",
        if charged {
            "should charge"
        } else {
            "should not charge"
        }
    );

    // The agent started under the same limit loads its programs.
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("ulimit -l 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_oomtrace"))
        .args(["--format", "json", "--wait-ms", "3000"]);
    let agent = Agent::spawn(cmd, "info");
    protect(&agent);
    let log = agent.log();
    let said = if charged {
        "raised it from 64 KiB to unlimited"
    } else {
        "RLIMIT_MEMLOCK left as it is"
    };
    assert!(log.contains(said), "expected {said:?}; stderr:\n{log}");
    eprintln!(
        "agent under `ulimit -l 64`: {}",
        log.lines()
            .find(|l| l.contains("RLIMIT_MEMLOCK"))
            .unwrap_or_default()
    );
    assert!(
        has_hook(&log, "tracepoint/oom/mark_victim"),
        "the eBPF programs loaded: {log}"
    );
    let cg = Memcg::unique("memlock");
    cg.set_limit(32 << 20);
    let (pid, st) = run_hog(&cg, 500, 128);
    assert!(killed_by_sigkill(&st), "{st:?}");
    let e = agent.events(1, Duration::from_secs(60), for_pid(pid));
    let (_, log) = agent.stop();
    assert_eq!(e.len(), 1, "{log}");
    let sources = e[0]["sources"].to_string();
    assert!(sources.contains("tracepoint"), "{}", e[0]);
}

/// A process in `cg` that grows by 2 MiB every 50 ms (slowly enough for a
/// userspace OOM killer that polls every 100 ms), up to `mib`, until `pid`
/// is gone, then holds what it has.
fn spawn_slow_grower_until_killed(cg: &Memcg, mib: u64, pid: u32) -> std::process::Child {
    spawn_in(
        cg,
        0,
        &format!(
            "python3 -c '
import time
def dead(p):
    try:
        with open(\"/proc/%d/stat\" % p) as f:
            return f.read().rsplit(\")\", 1)[1].split()[0] in \"ZX\"
    except OSError:
        return True
l = []
while len(l) * 2 < {mib} and not dead({pid}):
    l.append(b\"x\" * (2 << 20))
    time.sleep(0.05)
time.sleep(3600)'"
        ),
    )
}

/// Debian's earlyoom on a node under memory pressure: it SIGTERMs (or
/// SIGKILLs) the Burstable pod's process, which the kernel never OOM-killed;
/// oomtrace reports one kill by it, with the pod and the node's memory.
#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_earlyoom_kill_is_reported_as_a_userspace_oom_kill_of_the_pod() {
    require_vm();
    let earlyoom = std::env::var("OOMTRACE_EARLYOOM").unwrap_or_else(|_| {
        panic!(
            "OOMTRACE_EARLYOOM is not set: cargo xtask test downloads Debian's earlyoom for this scenario ({})",
            std::env::var("OOMTRACE_EARLYOOM_ERROR").unwrap_or_else(|_| "no reason given".into())
        )
    });
    assert!(Path::new(&earlyoom).is_file(), "{earlyoom} is missing");
    let logs = tempfile::tempdir().expect("tmp");
    let agent = agent_with_logs(logs.path(), &[]);
    let guaranteed = Pod::new("guaranteed", "payments", "ledger-0", "ledger", logs.path());
    let burstable = Pod::new("burstable", "shop", "api-5c8d", "api", logs.path());
    guaranteed.container.set_limit(256 << 20);
    burstable.container.set_limit(256 << 20);
    let mut g = spawn_holder(&guaranteed.container, -997, 40);
    let mut b = spawn_holder(&burstable.container, 985, 40);
    wait_rss(g.id(), 30 << 10);
    wait_rss(b.id(), 30 << 10);
    let (gpid, bpid) = (g.id(), b.id());

    // earlyoom as its unit runs it, in its own service cgroup (ignoring the
    // guest's absent swap), its report on stderr.
    let eo_cg = Memcg::create("system.slice/earlyoom.service");
    let eo_log = logs.path().join("earlyoom.log");
    let mut eo = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {procs} && exec {earlyoom} -m 10 -s 100 -r 60 2> {log}",
            procs = eo_cg.dir().join("cgroup.procs").display(),
            log = eo_log.display()
        ))
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start earlyoom");
    let eo_pid = eo.id();
    support::wait_comm(eo_pid, "earlyoom");
    set_adj(eo_pid, -1000);
    let before = burstable.container.oom_kills();

    let hog_cg = Memcg::create("system.slice/batch-report.service");
    let mut hog = spawn_slow_grower_until_killed(&hog_cg, mem_available_mib() + 64, bpid);
    let e = agent.events(1, Duration::from_secs(180), for_pid(bpid));
    // A SIGKILL after the SIGTERM would come within earlyoom's 10 s: still one report.
    let again = agent.events(1, Duration::from_secs(4), for_pid(bpid));
    let kernel_kills = burstable.container.oom_kills() - before;
    let _ = hog.kill();
    let _ = hog.wait();
    let guaranteed_alive = g.try_wait().ok().flatten().is_none();
    let _ = eo.kill();
    let _ = eo.wait();
    let eo_said = fs::read_to_string(&eo_log).unwrap_or_default();
    let log = agent.log();
    let _ = b.kill();
    let _ = g.kill();
    let _ = b.wait();
    let _ = g.wait();
    assert_eq!(
        e.len(),
        1,
        "earlyoom's kill of pid {bpid} was not reported; earlyoom said:\n{eo_said}\noomtrace stderr:\n{log}"
    );
    assert!(again.is_empty(), "reported twice: {again:?}");
    let e = &e[0];
    eprintln!("earlyoom event: {e}");
    assert_eq!(
        kernel_kills, 0,
        "the kernel's OOM killer did it, not earlyoom: {e}"
    );
    let signal = s(e, &["killer", "signal"]).expect("killer.signal");
    assert!(
        eo_said.contains(&format!("sending {signal} to process {bpid}")),
        "earlyoom's own log names that signal and pid:\n{eo_said}\n{e}"
    );
    assert_eq!(s(e, &["kind"]), Some("oom_kill"), "{e}");
    assert_eq!(s(e, &["killer", "kind"]), Some("userspace_oom"), "{e}");
    assert_eq!(s(e, &["killer", "name"]), Some("earlyoom"), "{e}");
    assert_eq!(s(e, &["killer", "comm"]), Some("earlyoom"), "{e}");
    assert_eq!(i(e, &["killer", "pid"]), Some(i64::from(eo_pid)), "{e}");
    assert_eq!(s(e, &["killer", "exe"]), Some(earlyoom.as_str()), "{e}");
    assert_eq!(s(e, &["killer", "cgroup"]), Some(eo_cg.rel.as_str()), "{e}");
    assert_eq!(s(e, &["k8s", "namespace"]), Some("shop"), "{e}");
    assert_eq!(s(e, &["k8s", "pod"]), Some("api-5c8d"), "{e}");
    assert_eq!(s(e, &["k8s", "container"]), Some("api"), "{e}");
    assert_eq!(s(e, &["k8s", "qos_class"]), Some("Burstable"), "{e}");
    assert_eq!(s(e, &["victim", "comm"]), Some("python3"), "{e}");
    assert_eq!(i(e, &["victim", "oom_score_adj"]), Some(985), "{e}");
    assert_eq!(
        s(e, &["victim", "cgroup"]),
        Some(burstable.container.rel.as_str()),
        "{e}"
    );
    assert_eq!(s(e, &["scope"]), Some("node"), "{e}");
    assert_eq!(s(e, &["oom_domain"]), Some("node"), "{e}");
    assert_eq!(s(e, &["verdict_source"]), Some("killer_policy"), "{e}");
    assert!(
        e["node_memory"]["top"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{e}"
    );
    let x = s(e, &["explanation"]).expect("explanation");
    assert!(
        x.contains(&format!("earlyoom (pid {eo_pid})")) && x.contains("MemAvailable and SwapFree"),
        "{x}"
    );
    assert!(
        guaranteed_alive,
        "the Guaranteed pod (pid {gpid}) must survive"
    );
}

#[test]
#[ignore = "VM only: run by cargo xtask test inside qemu"]
fn vm_victim_lineage_and_the_oom_killers_sigkill() {
    require_vm();
    // Both signal programs and every task-reading hook past this kernel's
    // verifier (5.10's is the strictest), with real kills.
    support::deaths::lineage_and_oom_sigkill_checks(true, true);
    support::deaths::lineage_and_oom_sigkill_checks(false, false);
    let freezer = support::deaths::v1_freezer()
        .expect("the cgroup v1 freezer can be mounted in the VM (CONFIG_CGROUP_FREEZER)");
    let (tries, reaped, flagged) = support::deaths::reaped_not_killed_checks(&freezer, 1);
    eprintln!(
        "task_will_free_mem path: {reaped} of {tries} tries, {flagged} with the OOM SIGKILL flag"
    );
    assert_eq!(reaped, tries, "the frozen, killed holder was chosen");
    assert_eq!(flagged, 0, "no SIGKILL of the OOM killer's own for it");
    // What the agent makes of it on cgroup v2: main process or child, and a
    // tmpfs charged to the container.
    support::deaths::outcome_checks();
    support::deaths::oom_stat_checks();
}
