//! Helpers for the privileged tests: run the real agent, make memory cgroups,
//! cause real OOM kills in them.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod deaths;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use oomtrace::{
    capture::probe::{Disabled, Hook, KernelSupport, Probe, ProbeConfig, Stats},
    correlate::walk::Walk,
};
use oomtrace_common::{Record, SIGNAL_HAS_TASK, Signal};
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
        Self::start_with_log(args, "info")
    }

    /// [`Agent::start`] with environment variables (`OOMTRACE_LOG` is `info`
    /// unless `env` sets it).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oomtrace"));
        cmd.args(["--format", "json"])
            .args(args)
            .envs(env.iter().copied());
        let filter = env
            .iter()
            .find(|(k, _)| *k == "OOMTRACE_LOG")
            .map_or("info", |(_, v)| *v);
        Self::spawn(cmd, filter)
    }

    /// [`Agent::start`] with `OOMTRACE_LOG` set to `filter`.
    pub fn start_with_log(args: &[&str], filter: &str) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oomtrace"));
        cmd.args(["--format", "json"]).args(args);
        Self::spawn(cmd, filter)
    }

    /// Runs `cmd` (the agent, or a wrapper that execs it) and waits for the
    /// agent's `ready` line.
    pub fn spawn(mut cmd: Command, filter: &str) -> Self {
        let mut child = cmd
            .env("OOMTRACE_LOG", filter)
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
                // Logged first, so that the ready line is in `log()` once
                // `start` returns.
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if line.contains("ready:") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let agent = Self {
            child,
            lines,
            stderr: log,
        };
        // Under qemu's emulation (TCG, three guests on two cores) a debug
        // agent's start-up (BTF, kallsyms, loading) takes tens of seconds.
        let ready_within = if std::env::var_os("OOMTRACE_IN_VM").is_some() {
            Duration::from_secs(180)
        } else {
            Duration::from_secs(60)
        };
        if ready_rx.recv_timeout(ready_within).is_err() {
            panic!(
                "oomtrace did not print ready within {} s; stderr:\n{}",
                ready_within.as_secs(),
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

/// A process in `cg` that grows by 4 MiB steps, up to `mib`, until any of
/// `pids` has been killed (a zombie, or gone), then holds what it has: it
/// pushes a cgroup past its limit for one OOM kill, whoever the kernel picks.
pub fn spawn_grower_until_any_killed(cg: &Memcg, adj: i32, mib: u64, pids: &[u32]) -> Child {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
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
pids = [{pids}]
l = []
while len(l) * 4 < {mib} and not any(dead(p) for p in pids):
    l.append(b\"x\" * (4 << 20))
    time.sleep(0.005)
time.sleep(3600)'",
            pids = pids.join(", ")
        ),
    )
}

/// `oomtrace rank --format json --all ARGS`: the rows.
pub fn rank_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_oomtrace"))
        .args(["rank", "--format", "json", "--all"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run oomtrace rank");
    assert!(
        out.status.success(),
        "oomtrace rank {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    rows.as_array().expect("a JSON array of rows").clone()
}

pub fn pid_of(row: &Value) -> u32 {
    row["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("pid")
}

/// Waits until `pid` has exec'd `comm` (and so is in its cgroup with its adj).
pub fn wait_for_comm(pid: u32, comm: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("pid {pid} did not become {comm}");
}

/// The probe loaded the way the agent loads it, with its ring buffer and
/// counters taken out for the test to read directly.
pub struct Direct {
    pub probe: Probe,
    pub ring: RingBuf<MapData>,
    pub stats: Stats,
}

impl Direct {
    pub fn load() -> Self {
        Self::load_with(&ProbeConfig::default())
    }

    pub fn load_with(cfg: &ProbeConfig) -> Self {
        let cfg = cfg.clone();
        let support = KernelSupport::discover(&cfg);
        let mut probe = Probe::load(&cfg, support).expect("load the eBPF programs");
        let ring = probe.take_ring().expect("ring buffer");
        let stats = probe.take_stats().expect("counters");
        Self { probe, ring, stats }
    }

    /// Every record that arrives within `wait`.
    pub fn records(&mut self, wait: Duration) -> Vec<Record> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            while let Some(item) = self.ring.next() {
                out.push(oomtrace_common::decode(&item).expect("a record of this ABI"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        out
    }
}

pub fn signals_to(records: &[Record], pid: u32) -> Vec<Signal> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Signal(s) if s.target_pid == pid => Some(*s),
            _ => None,
        })
        .collect()
}

pub fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(oomtrace_common::c_str(bytes)).expect("utf-8")
}

/// The field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
pub fn stat_field(pid: u32, n: usize) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').expect("comm").1;
    after
        .split_whitespace()
        .nth(n - 3)
        .expect("field")
        .parse()
        .expect("number")
}

/// `task->start_time` (CLOCK_MONOTONIC ns) in the clock ticks of boot time
/// that `/proc/<pid>/stat` field 22 (`starttime`) shows.
pub fn start_time_in_ticks(start_time_ns: u64) -> u64 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    let suspended = now(libc::CLOCK_BOOTTIME) - now(libc::CLOCK_MONOTONIC);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as i128;
    ((i128::from(start_time_ns) + suspended) * hz / 1_000_000_000) as u64
}

pub fn wait_comm(pid: u32, comm: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        != comm
    {
        assert!(Instant::now() < deadline, "pid {pid} never became {comm}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `sh` that renames itself to `name` (writing /proc/self/comm from the shell
/// itself) and then sends `signal` to `pid` with its `kill` builtin.
pub fn kill_as(name: &str, signal: &str, pid: u32) -> u32 {
    let mut killer = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "printf {name} > /proc/self/comm && kill -{signal} {pid}"
        ))
        .spawn()
        .expect("spawn the killer");
    let id = killer.id();
    assert!(killer.wait().expect("wait").success(), "the killer failed");
    id
}

/// The signal hook, loaded through the library API (`tp_btf`, else the
/// classic tracepoint): a process renamed `earlyoom` SIGKILLs and SIGTERMs
/// children in another cgroup (one record each, naming the child); a
/// `kill -9` from `sh` and 1000 SIGUSR1 make none.
pub fn signal_hook_checks(tp_btf: bool) {
    let cfg = ProbeConfig {
        disabled: Disabled {
            tp_btf: !tp_btf,
            ..Disabled::default()
        },
        ..ProbeConfig::default()
    };
    let mut d = Direct::load_with(&cfg);
    let hook = if tp_btf {
        Hook::TpBtfSignal
    } else {
        Hook::TracepointSignal
    };
    assert!(
        d.probe.active.contains(&hook),
        "{hook} must attach on this kernel: {:?}",
        d.probe.inactive
    );
    let cg = Memcg::unique("signal");
    let page_size = oomtrace::units::page_size();

    // (a) A process named earlyoom SIGKILLs a child in another cgroup, then
    // SIGTERMs a second one.
    let mut victim = spawn_in(&cg, 300, "sleep 60");
    let vpid = victim.id();
    wait_comm(vpid, "sleep");
    let start_ticks = stat_field(vpid, 22);
    let killer = kill_as("earlyoom", "9", vpid);
    let status = victim.wait().expect("wait");
    assert!(killed_by_sigkill(&status), "{status:?}");
    let mut termed = spawn_in(&cg, 0, "sleep 60");
    let tpid = termed.id();
    wait_comm(tpid, "sleep");
    kill_as("earlyoom", "TERM", tpid);
    let _ = termed.wait();

    // (b) The same from a plain shell, and SIGUSR1 traffic.
    let mut plain = spawn_in(&cg, 0, "sleep 60");
    let ppid = plain.id();
    wait_comm(ppid, "sleep");
    let mut ignoring = spawn_in(&cg, 0, "sh -c 'trap \"\" USR1; exec sleep 60'");
    let ipid = ignoring.id();
    wait_comm(ipid, "sleep");
    let before = d.stats.snapshot();
    let sent = 1000;
    for _ in 0..sent {
        // SAFETY: plain syscall to our own child, which ignores SIGUSR1.
        assert_eq!(unsafe { libc::kill(ipid as i32, libc::SIGUSR1) }, 0);
    }
    let after_usr1 = d.stats.snapshot();
    let plain_killer = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("kill -9 {ppid}"))
        .status()
        .expect("sh kill");
    assert!(plain_killer.success());
    let _ = plain.wait();
    let _ = ignoring.kill();
    let _ = ignoring.wait();
    let records = d.records(Duration::from_secs(1));
    let after = d.stats.snapshot();

    let got = signals_to(&records, vpid);
    assert_eq!(got.len(), 1, "{hook}: one record for the SIGKILL: {got:?}");
    let s = &got[0];
    assert_eq!(s.sig, libc::SIGKILL);
    assert_eq!(text(&s.header.trigger_comm), "earlyoom");
    assert_eq!(
        s.header.trigger_tgid, killer,
        "the sender is the renamed shell"
    );
    assert_eq!(s.target_pid, vpid);
    assert_eq!(text(&s.target_comm), "sleep");
    assert_eq!(
        (s.code, s.group, s.result),
        (0, 1, 0),
        "SI_USER, kill(2), delivered"
    );
    if tp_btf {
        assert_eq!(s.target_tgid, vpid);
        assert_eq!(s.flags & SIGNAL_HAS_TASK, SIGNAL_HAS_TASK);
        assert_eq!(s.target_oom_score_adj, 300, "the child's oom_score_adj");
        let walk = Walk::decode(&s.memcg, page_size).expect("the child's memcg walk");
        assert_eq!(
            walk.levels[0].path, cg.rel,
            "the child's cgroup, not the sender's"
        );
        let ticks = start_time_in_ticks(s.target_start_time_ns);
        assert!(
            ticks.abs_diff(start_ticks) <= 1,
            "start_time {} ns is {ticks} ticks; /proc says {start_ticks}",
            s.target_start_time_ns
        );
    } else {
        // The classic record has no task pointer: pid and comm only.
        assert_eq!(s.flags, 0, "{s:?}");
        assert_eq!((s.target_tgid, s.target_start_time_ns), (0, 0));
        assert!(Walk::decode(&s.memcg, page_size).is_none());
    }

    let got = signals_to(&records, tpid);
    assert_eq!(got.len(), 1, "{hook}: one record for the SIGTERM: {got:?}");
    assert_eq!(got[0].sig, libc::SIGTERM);

    assert!(
        signals_to(&records, ppid).is_empty(),
        "a kill -9 from sh is not reported"
    );
    assert!(
        signals_to(&records, ipid).is_empty(),
        "SIGUSR1 is not reported"
    );
    // SIGUSR1 never reaches the counters: the hook returns on the number.
    // (Other processes on the node may send a few SIGKILL/SIGTERM meanwhile.)
    let usr1_counted = after_usr1.fired_signal - before.fired_signal;
    assert!(
        usr1_counted < 50,
        "{sent} SIGUSR1 sent, {usr1_counted} counted as SIGKILL/SIGTERM"
    );
    // The shell's SIGKILL was counted and filtered on the sender's name; the
    // renamed shell's two signals were counted as listed.
    assert!(after.fired_signal > after_usr1.fired_signal);
    assert!(after.filtered_signal > after_usr1.filtered_signal);
    assert!(after.listed_signal >= 2, "{after:?}");
    assert_eq!(after.lost_signal, 0, "{after:?}");
    eprintln!("{hook} counters: {before:?} -> {after:?}");
}

/// A real memcg kill: the records made from the victim's task (tp_btf's
/// victim, the decision's chosen task) carry its start time, as /proc shows it.
pub fn start_time_checks() {
    let mut d = Direct::load();
    let btf = d.probe.active.contains(&Hook::TpBtf);
    let decision = d.probe.active.contains(&Hook::Fentry) || d.probe.active.contains(&Hook::Kprobe);
    assert!(
        btf || decision,
        "neither tp_btf/mark_victim nor the decision hook attached: {:?}",
        d.probe.inactive
    );
    let cg = Memcg::unique("start-time");
    cg.set_limit(32 << 20);
    // The pid and its start time stay the same across the execs.
    let mut hog = spawn_in(
        &cg,
        800,
        "sh -c 'sleep 1; exec dd if=/dev/zero of=/dev/null bs=128M count=1 status=none'",
    );
    let pid = hog.id();
    thread::sleep(Duration::from_millis(300));
    let start_ticks = stat_field(pid, 22);
    let status = hog.wait().expect("wait");
    assert!(
        killed_by_sigkill(&status),
        "the hog was not OOM-killed: {status:?}"
    );
    let records = d.records(Duration::from_secs(1));
    let mut starts = Vec::new();
    for r in &records {
        match r {
            Record::BtfVictim(v) if v.pid == pid => {
                assert_eq!(text(&v.comm), "dd");
                starts.push(("tp_btf", v.start_time_ns));
            }
            Record::Decision(dec) if dec.chosen_pid == pid => {
                assert_eq!(text(&dec.chosen_comm), "dd");
                starts.push(("decision", dec.chosen_start_time_ns));
            }
            _ => {}
        }
    }
    assert_eq!(
        starts.len(),
        usize::from(btf) + usize::from(decision),
        "one record per active hook for pid {pid}: {starts:?}"
    );
    for (from, ns) in starts {
        let ticks = start_time_in_ticks(ns);
        assert!(
            ticks.abs_diff(start_ticks) <= 1,
            "{from}: start_time {ns} ns is {ticks} ticks; /proc said {start_ticks}"
        );
        eprintln!("{from}: start_time {ns} ns = {ticks} ticks, /proc: {start_ticks}");
    }
}
