//! The DaemonSet's capability set (BPF, PERFMON, SYSLOG; nothing else) is
//! enough to capture a real memcg kill: once with `setpriv` on the plain
//! binary, once from the container image under podman with the DaemonSet's
//! capabilities, read-only root and read-only host mounts. The image is the
//! multi-arch one `cargo xtask image` builds (amd64 and arm64 from static
//! musl binaries, and a manifest list); the test runs the list, as a node
//! pulling it would, and podman picks this host's architecture.
//! Privileged (root, BPF, memory cgroup); run by `cargo xtask test`.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use crate::support::{Memcg, killed_by_sigkill, run_hog, s};
use serde_json::Value;

/// CAP_SYSLOG (34), CAP_PERFMON (38), CAP_BPF (39).
const DAEMONSET_CAPS: u64 = (1 << 34) | (1 << 38) | (1 << 39);

/// The podman invocation that works on these hosts (vfs storage, runc, own root).
const PODMAN: &[&str] = &[
    "--root",
    "/var/tmp/oomtrace-podman/storage",
    "--runroot",
    "/run/oomtrace-podman",
    "--storage-driver",
    "vfs",
    "--runtime",
    "runc",
];

/// A process printing JSON lines, killed when dropped.
struct Running {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Running {
    /// Spawns `cmd` and waits for the agent's `ready` line on stderr.
    fn start(mut cmd: Command, what: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let log2 = Arc::clone(&log);
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if l.contains("oomtrace: ready") {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut g) = log2.lock() {
                    g.push_str(&l);
                    g.push('\n');
                }
            }
        });
        let r = Self { child, lines, log };
        if ready.recv_timeout(Duration::from_secs(90)).is_err() {
            panic!(
                "{what} did not print ready within 90 s; stderr:\n{}",
                r.log()
            );
        }
        r
    }

    fn log(&self) -> String {
        self.log.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn event_in(&self, cgroup: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if s(&v, &["victim", "cgroup"]) == Some(cgroup) {
                return Some(v);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cap_eff(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Causes one kill and checks the agent reported it as a memcg kill.
fn assert_reports_a_kill(agent: &Running, name: &str) -> Value {
    let cg = Memcg::unique(name);
    cg.set_limit(32 << 20);
    let (pid, status) = run_hog(&cg, 500, 128);
    assert!(
        killed_by_sigkill(&status),
        "the hog was not OOM-killed: {status:?}"
    );
    let e = agent
        .event_in(&cg.rel, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no event for {}; stderr:\n{}", cg.rel, agent.log()));
    assert_eq!(e["victim"]["pid"], u64::from(pid), "{e}");
    assert_eq!(s(&e, &["scope"]), Some("cgroup"), "{e}");
    assert_eq!(s(&e, &["oom_cgroup"]), Some(cg.rel.as_str()), "{e}");
    e
}

fn sources(e: &Value) -> Vec<&str> {
    e["sources"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn the_daemonset_capabilities_alone_capture_a_real_kill() {
    // setpriv (util-linux): as uid 0, exec with bounding, inheritable and
    // ambient sets of exactly BPF, PERFMON and SYSLOG, so the agent's
    // permitted and effective sets are those three and nothing else.
    let caps = "-all,+bpf,+perfmon,+syslog";
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(format!("--bounding-set={caps}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_oomtrace"))
        .args(["--format", "json"])
        .env("OOMTRACE_LOG", "info");
    let agent = Running::start(cmd, "oomtrace under setpriv");
    let eff = cap_eff(agent.child.id()).expect("CapEff of the agent");
    assert_eq!(eff, DAEMONSET_CAPS, "effective capabilities {eff:#x}");
    let e = assert_reports_a_kill(&agent, "setpriv");
    for src in ["tracepoint", "tp_btf", "kmsg"] {
        assert!(
            sources(&e).contains(&src),
            "{src} missing with the DaemonSet's capabilities: {e}\n{}",
            agent.log()
        );
    }
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(PODMAN);
    c
}

/// Builds the images for amd64 and arm64 and their manifest list `tag` with
/// `cargo xtask image` (the same code as a release), in the test's podman store.
///
/// It runs as from a shell: without the variables `cargo test` gives this
/// process (`CARGO_PKG_*`, `RUSTUP_TOOLCHAIN`, `LD_LIBRARY_PATH`, ...). With
/// them, cargo took every crate for changed and rebuilt both release
/// builds (7 min here), which the VM stage then built again.
fn build_image(root: &Path, tag: &str) {
    let mut cargo = Command::new("cargo");
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let from_cargo_test =
            (k.starts_with("CARGO") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
                || matches!(
                    k.as_ref(),
                    "OUT_DIR"
                        | "LD_LIBRARY_PATH"
                        | "RUSTUP_TOOLCHAIN"
                        | "RUSTUP_TOOLCHAIN_SOURCE"
                        | "RUST_RECURSION_COUNT"
                );
        if from_cargo_test {
            cargo.env_remove(&key);
        }
    }
    let status = cargo
        .current_dir(root)
        .args(["xtask", "image", "--arch", "amd64,arm64", "--tag", tag])
        .arg(format!("--podman-args={}", PODMAN.join(" ")))
        .status()
        .expect("cargo xtask image");
    assert!(
        status.success(),
        "cargo xtask image failed: {status} (its output says why)"
    );
}

/// `os/arch` of each image in the manifest list `tag`.
fn platforms(tag: &str) -> Vec<String> {
    let out = podman()
        .args(["manifest", "inspect", tag])
        .output()
        .expect("podman manifest inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("manifest JSON");
    let mut p: Vec<String> = v["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    p.sort();
    p
}

#[test]
#[ignore = "privileged: needs root, BPF, a memory cgroup and podman; run by cargo xtask test"]
fn the_image_run_with_the_daemonsets_capabilities_reports_a_real_kill() {
    let require = std::env::var("OOMTRACE_REQUIRE_ALL").as_deref() == Ok("1");
    if podman().arg("--version").output().is_err() {
        assert!(
            !require,
            "podman not found: `cargo xtask setup` installs podman, runc and uidmap"
        );
        eprintln!(
            "SKIP: podman not found; the setpriv test proves the capability set without containers"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let tag = format!("localhost/oomtrace-test:0.1.0-{}", std::process::id());
    struct Image(String);
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = podman().args(["manifest", "rm", &self.0]).output();
            for arch in ["amd64", "arm64"] {
                let _ = podman()
                    .args(["rmi", "-f", &format!("{}-{arch}", self.0)])
                    .output();
            }
        }
    }
    let _image = Image(tag.clone());
    build_image(root, &tag);
    assert_eq!(platforms(&tag), ["linux/amd64", "linux/arm64"]);

    // deploy/daemonset.yaml: the same capabilities, read-only root, no privilege
    // escalation, the same read-only host mounts and arguments (--kube aside:
    // there is no API server here).
    let empty = tempfile::tempdir().expect("tempdir");
    let host_dir = |p: &str| -> String {
        if Path::new(p).is_dir() {
            p.to_string()
        } else {
            empty.path().display().to_string()
        }
    };
    let name = format!("oomtrace-test-{}", std::process::id());
    let mut cmd = podman();
    cmd.args(["run", "--rm", "--name", &name, "--network", "none"])
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
        ])
        .args(["--cap-drop", "ALL", "--cap-add", "BPF,PERFMON,SYSLOG"])
        .args([
            "--read-only",
            "--security-opt",
            "no-new-privileges",
            "--user",
            "0:0",
        ])
        // podman's default seccomp profile (containers/common) denies bpf(2)
        // to a container without CAP_SYS_ADMIN, unlike containerd's
        // RuntimeDefault (>= 1.6.9) that the DaemonSet relies on, which allows
        // it with CAP_BPF. This test is about capabilities, so seccomp is off;
        // see deploy/daemonset.yaml and components/legacy-kernel.
        .args(["--security-opt", "seccomp=unconfined"])
        .args(["--device", "/dev/kmsg"])
        // As in the DaemonSet: tracefs where aya attaches tracepoints.
        .args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro"])
        .args(["-v", "/sys/kernel/btf:/host/sys/kernel/btf:ro"])
        .args(["-v", "/sys/fs/cgroup:/host/sys/fs/cgroup:ro,rslave"])
        .args([
            "-v",
            &format!("{}:/var/log/pods:ro", host_dir("/var/log/pods")),
        ])
        .args([
            "-v",
            &format!("{}:/var/log/containers:ro", host_dir("/var/log/containers")),
        ])
        .args(["-v", "/proc:/host/proc:ro"])
        .args([
            "-e",
            "NODE_NAME=oomtrace-image-test",
            "-e",
            "OOMTRACE_LOG=info",
        ])
        .arg(&tag)
        .args([
            "--format=json",
            "--metrics-addr=0.0.0.0:9731",
            "--tracefs=/sys/kernel/tracing",
            "--btf=/host/sys/kernel/btf/vmlinux",
            // The memory controller's mount (cgroup v1: .../memory).
            // The DaemonSet passes the hierarchy root; on cgroup v1 the agent
            // finds the memory controller below it.
            "--cgroup-root=/host/sys/fs/cgroup",
            "--proc=/host/proc",
            "--kmsg=/dev/kmsg",
            "--pod-logs=/var/log/pods",
            "--container-logs=/var/log/containers",
        ]);
    let agent = Running::start(cmd, "the oomtrace container");
    let e = assert_reports_a_kill(&agent, "image");
    assert_eq!(s(&e, &["node"]), Some("oomtrace-image-test"), "{e}");
    let srcs = sources(&e);
    assert!(
        srcs.contains(&"tracepoint") && srcs.contains(&"tp_btf"),
        "both eBPF hooks inside the container: {e}\n{}",
        agent.log()
    );
    assert!(
        srcs.contains(&"kmsg"),
        "/dev/kmsg inside the container: {e}\n{}",
        agent.log()
    );
    // The usage the agent read through the read-only cgroup mount.
    assert_eq!(e["memcg"]["oom_limit_bytes"], 32u64 << 20, "{e}");
    drop(agent);
    let _ = podman().args(["rm", "-f", &name]).output();
}
