//! Helpers for the privileged tests: run the real agent, make memory cgroups,
//! cause real OOM kills in them.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The memory controller mount of the host (cgroup v1 here; v2 in the VMs).
pub fn memory_root() -> PathBuf {
    for p in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        let p = PathBuf::from(p);
        if p.join("memory.limit_in_bytes").exists() || p.join("cgroup.subtree_control").exists() {
            if p.join("cgroup.subtree_control").exists()
                && !fs::read_to_string(p.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .contains("memory")
            {
                continue;
            }
            return p;
        }
    }
    panic!(
        "no memory cgroup controller mounted: these tests need cgroup v1 memory or cgroup v2 with +memory"
    )
}

pub fn is_v2(root: &Path) -> bool {
    root.join("cgroup.subtree_control").exists()
}

/// A memory cgroup removed (with its processes killed) when dropped.
pub struct Memcg {
    pub root: PathBuf,
    /// Path relative to the controller mount, as oomtrace reports it.
    pub rel: String,
}

impl Memcg {
    pub fn create(rel: &str) -> Self {
        let root = memory_root();
        let rel = rel.trim_start_matches('/');
        let dir = root.join(rel);
        if dir.exists() {
            cleanup_dir(&dir);
        }
        // On cgroup v2 every parent must delegate the memory controller; the
        // leaf must not (a cgroup with controllers enabled holds no processes).
        let mut at = root.clone();
        for part in rel.split('/') {
            if is_v2(&root) {
                let _ = fs::write(at.join("cgroup.subtree_control"), "+memory");
            }
            at = at.join(part);
            if !at.exists() {
                fs::create_dir(&at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
            }
        }
        Self {
            root,
            rel: format!("/{rel}"),
        }
    }

    /// A unique top-level test cgroup.
    pub fn unique(name: &str) -> Self {
        Self::create(&format!("oomtrace-test-{name}-{}", std::process::id()))
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(self.rel.trim_start_matches('/'))
    }

    pub fn child(&self, name: &str) -> Memcg {
        Memcg::create(&format!("{}/{name}", self.rel))
    }

    /// Writes a cgroup file (e.g. `memory.oom.group`).
    pub fn write(&self, file: &str, value: &str) {
        fs::write(self.dir().join(file), value)
            .unwrap_or_else(|e| panic!("write {file} of {}: {e}", self.rel));
    }

    pub fn set_limit(&self, bytes: u64) {
        let (file, value) = if is_v2(&self.root) {
            ("memory.max", bytes.to_string())
        } else {
            ("memory.limit_in_bytes", bytes.to_string())
        };
        fs::write(self.dir().join(file), value).unwrap_or_else(|e| panic!("set limit: {e}"));
        if !is_v2(&self.root) {
            // No swap accounting games: make memory+swap unlimited if present.
            let _ = fs::write(self.dir().join("memory.memsw.limit_in_bytes"), "-1");
        }
    }

    /// Kills counted by the kernel for this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if is_v2(&self.root) {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let text = fs::read_to_string(self.dir().join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(key)).then(|| it.next().and_then(|v| v.parse().ok()))?
            })
            .unwrap_or(0)
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        cleanup_dir(&self.dir());
    }
}

fn cleanup_dir(dir: &Path) {
    // Deepest first: kill processes, then rmdir.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cleanup_dir(&e.path());
            }
        }
    }
    for _ in 0..50 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` (a shell command line) in `cg` with `adj` as oom_score_adj:
/// the shell moves itself into the cgroup, sets the value, then execs.
pub fn spawn_in(cg: &Memcg, adj: i32, command: &str) -> Child {
    let script = format!(
        "echo $$ > {procs} && echo {adj} > /proc/self/oom_score_adj && exec {command}",
        procs = cg.dir().join("cgroup.procs").display()
    );
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh")
}

/// Runs `dd` in `cg` with `adj` as oom_score_adj, allocating `mib` MiB
/// (dd's buffer is filled by reading /dev/zero: real, touched memory).
pub fn spawn_hog(cg: &Memcg, adj: i32, mib: u64) -> Child {
    spawn_in(
        cg,
        adj,
        &format!("dd if=/dev/zero of=/dev/null bs={mib}M count=1 status=none"),
    )
}

/// Runs a hog to completion; returns its pid and exit status.
pub fn run_hog(cg: &Memcg, adj: i32, mib: u64) -> (u32, ExitStatus) {
    let mut child = spawn_hog(cg, adj, mib);
    let pid = child.id();
    let status = child.wait().expect("wait hog");
    (pid, status)
}

pub fn killed_by_sigkill(status: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal() == Some(libc::SIGKILL)
}

/// The agent under test, reading its JSON lines on a thread.
pub struct Agent {
    child: Child,
    lines: Receiver<String>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Agent {
    /// Starts `oomtrace --format json ARGS` and waits for its `ready` line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Agent::start`] with environment variables (`OOMTRACE_LOG` is `info`
    /// unless `env` sets it).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_oomtrace"))
            .args(["--format", "json"])
            .args(args)
            .env("OOMTRACE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oomtrace");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let log2 = std::sync::Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready") {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let agent = Self {
            child,
            lines,
            stderr: log,
        };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!(
                "oomtrace did not print ready within 60 s; stderr:\n{}",
                agent.log()
            );
        }
        agent
    }

    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Collects events matching `keep` until `n` arrived or `timeout` passed.
    pub fn events(&self, n: usize, timeout: Duration, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    if keep(&v) {
                        out.push(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The agent is gone: say how (a zombie keeps its exit code in stat).
                    thread::sleep(Duration::from_millis(300));
                    let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                        .unwrap_or_default();
                    let code = stat.rsplit(' ').next().unwrap_or("?").trim().to_string();
                    eprintln!(
                        "oomtrace (pid {}) closed its output: wait status {code} (signal = status & 127); stderr:\n{}",
                        self.child.id(),
                        self.log()
                    );
                    break;
                }
            }
        }
        out
    }

    /// Stops the agent with SIGTERM; returns its stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "oomtrace did not exit within 20 s of SIGTERM; stderr:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `v[a][b]...` as a string.
pub fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// `v[a][b]...` as an integer.
pub fn i(v: &Value, path: &[&str]) -> Option<i64> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_i64()
}

/// Runs python3 in `cg` holding `mib` MiB (touched) until killed.
pub fn spawn_holder(cg: &Memcg, adj: i32, mib: u64) -> Child {
    spawn_in(
        cg,
        adj,
        &format!("python3 -c 'import time; b = b\"x\" * ({mib} << 20); time.sleep(3600)'"),
    )
}

/// Resident memory of a process in KiB (0 when gone).
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `pid` holds at least `kib` KiB.
pub fn wait_rss(pid: u32, kib: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rss_kib(pid) < kib {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never reached {kib} KiB"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sets a process's oom_score_adj (negative values need CAP_SYS_RESOURCE: VMs only).
pub fn set_adj(pid: u32, adj: i32) {
    fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
        .unwrap_or_else(|e| panic!("oom_score_adj of {pid}: {e}"));
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A process in `cg` that grows by 8 MiB steps, up to `mib`, until the
/// process `pid` is killed (a zombie, or gone), and then holds what it has:
/// a hog that exhausts the node and stops once the kernel has killed `pid`,
/// so that it is not the next victim.
pub fn spawn_grower_until_killed(cg: &Memcg, adj: i32, mib: u64, pid: u32) -> Child {
    spawn_in(
        cg,
        adj,
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
while len(l) * 8 < {mib} and not dead({pid}):
    l.append(b\"x\" * (8 << 20))
    time.sleep(0.01)
time.sleep(3600)'"
        ),
    )
}

/// `MemAvailable` of /proc/meminfo in MiB.
pub fn mem_available_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
