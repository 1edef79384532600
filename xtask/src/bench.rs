//! `cargo xtask bench`: figures for sizing and trust, from real OOM kills.
//!
//! Runs the release agent, causes `--kills` memory-cgroup OOM kills
//! (`--parallel` at a time) in a cgroup of its own, and prints: kills per
//! second caused, events reported against the kernel's own `oom_kill`
//! counter, losses (kernel ring buffer and kernel log), the delay from a
//! victim's death to its event, and the agent's memory and CPU. Root only;
//! memory-cgroup kills only (never a node-level OOM).
//!
//! Then a signal storm, the cost of the `signal_generate` hook (it runs for
//! every signal on the node, in the sender's context): `--signals` SIGUSR1
//! and as many SIGTERM to a process that ignores both (SIGUSR1 ends at the
//! hook's first test; SIGTERM goes through the sender-name test, the worst
//! case for a sender not on the list), and `--signal-kills` short-lived
//! children SIGKILLed, each measured in the sending thread's CPU time
//! (unaffected by what else the machine runs) without and with the agent
//! attached, `--signal-rounds` times alternating; the best and the median
//! rates and their differences in percent are printed.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{cmd, setup, util};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// OOM kills to cause.
    #[arg(long, default_value_t = 500)]
    kills: usize,
    /// Kills in flight at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Leave out the OOM-kill measurement (only the signal storm).
    #[arg(long)]
    no_kills: bool,
    /// Signals of each kind (SIGUSR1, SIGTERM) per storm; 0 leaves the storm out.
    #[arg(long, default_value_t = 200_000)]
    signals: usize,
    /// Short-lived children SIGKILLed per storm (the kill(2) calls are timed,
    /// not the spawning and reaping).
    #[arg(long, default_value_t = 300)]
    signal_kills: usize,
    /// Storms without and with the agent, alternating.
    #[arg(long, default_value_t = 5)]
    signal_rounds: usize,
    /// Seconds the agent is left idle after it is ready, to measure what it
    /// costs on a node with no kills (0 leaves it out).
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Run this agent binary instead of building the release one (to compare
    /// two builds on the same machine state).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Extra arguments for the agent (e.g. `--no-bpf`).
    #[arg(last = true)]
    agent_args: Vec<String>,
}

/// The memory controller: cgroup v1 `memory`, or cgroup v2 with memory enabled.
fn memory_root() -> anyhow::Result<(PathBuf, bool)> {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((v1.to_path_buf(), false));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    if fs::read_to_string(v2.join("cgroup.controllers")).is_ok_and(|c| c.contains("memory")) {
        return Ok((v2.to_path_buf(), true));
    }
    bail!("no memory cgroup controller mounted")
}

fn oom_kills(dir: &Path, v2: bool) -> u64 {
    let (file, key) = if v2 {
        ("memory.events", "oom_kill")
    } else {
        ("memory.oom_control", "oom_kill")
    };
    fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One event as the bench read it.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// The victim's pid.
    pid: u32,
    at: Instant,
    /// The event names the victim's cgroup.
    named: bool,
    /// From the kill (the event's `time`) to the event's arrival.
    since_kill: Option<Duration>,
}

/// The wall-clock time of an RFC 3339 UTC timestamp with milliseconds, as
/// the agent writes it (`2025-12-02T21:17:00.123Z`).
fn rfc3339_millis(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|v| v.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|v| v.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + hh * 3_600 + mm * 60 + ss) * 1_000) + ms;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?))
}

/// One thread's figures from `/proc/<pid>/task/<tid>/schedstat`: time on a
/// CPU and waiting for one (ns, exact, unlike the 10 ms ticks of `stat`),
/// and how often it ran.
#[derive(Debug, Clone, Default)]
struct ThreadTimes {
    name: String,
    on_cpu_ns: u64,
    waiting_ns: u64,
    runs: u64,
}

/// Every thread of `pid`, by tid.
fn thread_times(pid: u32) -> Vec<(u32, ThreadTimes)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, ThreadTimes)> = dir
        .flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let name = fs::read_to_string(e.path().join("comm")).ok()?;
            let stat = fs::read_to_string(e.path().join("schedstat")).ok()?;
            let mut f = stat
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            let t = ThreadTimes {
                name: name.trim().to_string(),
                on_cpu_ns: f.next()?,
                waiting_ns: f.next()?,
                runs: f.next()?,
            };
            Some((tid, t))
        })
        .collect();
    out.sort_by_key(|(tid, _)| *tid);
    out
}

/// What each thread (threads of one name summed) spent between `before`
/// and `after`, busiest first.
fn thread_deltas(before: &[(u32, ThreadTimes)], after: &[(u32, ThreadTimes)]) -> Vec<ThreadTimes> {
    let mut by_name: Vec<ThreadTimes> = Vec::new();
    for (tid, a) in after {
        let b = before
            .iter()
            .find(|(t, _)| t == tid)
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        let d = ThreadTimes {
            name: a.name.clone(),
            on_cpu_ns: a.on_cpu_ns.saturating_sub(b.on_cpu_ns),
            waiting_ns: a.waiting_ns.saturating_sub(b.waiting_ns),
            runs: a.runs.saturating_sub(b.runs),
        };
        match by_name.iter_mut().find(|t| t.name == d.name) {
            Some(t) => {
                t.on_cpu_ns += d.on_cpu_ns;
                t.waiting_ns += d.waiting_ns;
                t.runs += d.runs;
            }
            None => by_name.push(d),
        }
    }
    by_name.sort_by_key(|t| std::cmp::Reverse(t.on_cpu_ns));
    by_name
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<i32> {
    if !util::is_root() {
        bail!("the benchmark loads eBPF programs and causes OOM kills: run it as root");
    }
    setup::setup()?;
    let bin = match &args.agent_bin {
        Some(bin) => bin.clone(),
        None => {
            let mut c = cmd!("cargo", "build", "--release", "--package", "oomtrace");
            c.current_dir(util::repo_root());
            util::run(c)?;
            util::target_dir().join("release/oomtrace")
        }
    };
    let code = if args.no_kills {
        0
    } else {
        kill_bench(args, &bin)?
    };
    if args.signals > 0 || args.signal_kills > 0 {
        signal_bench(args, &bin)?;
    }
    Ok(code)
}

fn kill_bench(args: &BenchArgs, bin: &Path) -> anyhow::Result<i32> {
    let (mem_root, v2) = memory_root()?;
    let cg = mem_root.join(format!("oomtrace-bench-{}", std::process::id()));
    let _ = fs::create_dir(&cg);
    let limit = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    fs::write(cg.join(limit), (16u64 << 20).to_string()).context("set the bench cgroup limit")?;
    let cleanup = |cg: &Path| {
        for _ in 0..50 {
            let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if fs::remove_dir(cg).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };

    let mut agent = Command::new(bin)
        .args(["--format", "json"])
        .args(&args.agent_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let agent_pid = agent.id();
    let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let stdout = agent.stdout.take().context("agent stdout")?;
    let arr = Arc::clone(&arrivals);
    let tag = cg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            // Ours: in the bench cgroup, or with no cgroup known (kernel log
            // only, summary rate-limited); the pid is matched to a hog below.
            let cgroup = v["victim"]["cgroup"].as_str();
            let named = cgroup.is_some_and(|c| c.contains(&tag));
            if (named || cgroup.is_none())
                && let Some(pid) = v["victim"]["pid"].as_u64()
                && let Ok(mut a) = arr.lock()
            {
                let since_kill = v["time"]
                    .as_str()
                    .and_then(rfc3339_millis)
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                a.push(Arrival {
                    pid: pid as u32,
                    at: Instant::now(),
                    named,
                    since_kill,
                });
            }
        }
    });
    let stderr = agent.stderr.take().context("agent stderr")?;
    let log: Arc<Mutex<String>> = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let log2 = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready:") {
                let _ = ready_tx.send(line.clone());
            }
            if let Ok(mut l) = log2.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let ready = ready_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the agent did not become ready")?;
    let rss_idle = status_kib(agent_pid, "VmRSS:");
    let idle = (args.idle_secs > 0).then(|| {
        // After start-up's work (the kernel log's backlog, the first snapshots).
        thread::sleep(Duration::from_secs(1));
        let before = thread_times(agent_pid);
        let from = Instant::now();
        thread::sleep(Duration::from_secs(args.idle_secs));
        let spent = thread_deltas(&before, &thread_times(agent_pid));
        (from.elapsed(), spent)
    });
    let threads_idle = thread_times(agent_pid);

    let before = oom_kills(&cg, v2);
    let procs = cg.join("cgroup.procs");
    let mut running: Vec<(u32, std::process::Child)> = Vec::new();
    let mut deaths: Vec<(u32, Instant)> = Vec::new();
    let started = Instant::now();
    let mut spawned = 0;
    while spawned < args.kills || !running.is_empty() {
        while running.len() < args.parallel.max(1) && spawned < args.kills {
            let child = Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {} && exec dd if=/dev/zero of=/dev/null bs=64M count=1 status=none",
                    procs.display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            running.push((child.id(), child));
            spawned += 1;
        }
        let (pid, mut child) = running.remove(0);
        let _ = child.wait();
        deaths.push((pid, Instant::now()));
    }
    let caused = started.elapsed();
    let counted = (oom_kills(&cg, v2) - before) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().map(|a| a.len()).unwrap_or(0) < counted && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let rss_now = status_kib(agent_pid, "VmRSS:");
    let rss_peak = status_kib(agent_pid, "VmHWM:");
    let threads = thread_deltas(&threads_idle, &thread_times(agent_pid));
    // From the threads' schedstat (ns), not /proc/<pid>/stat's clock ticks
    // (10 ms each: +-0.03 ms per kill over 300 kills).
    let cpu_busy = threads.iter().map(|t| t.on_cpu_ns).sum::<u64>() as f64 / 1e9;
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(agent_pid as i32, libc::SIGTERM) };
    let _ = agent.wait();
    thread::sleep(Duration::from_millis(200));
    cleanup(&cg);

    let all = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let arrivals: Vec<_> = all
        .iter()
        .filter(|a| deaths.iter().any(|(p, _)| *p == a.pid))
        .copied()
        .collect();
    let named = arrivals.iter().filter(|a| a.named).count();
    let mut delays: Vec<Duration> = arrivals
        .iter()
        .filter_map(|a| {
            deaths
                .iter()
                .find(|(p, _)| *p == a.pid)
                .map(|(_, died)| a.at.saturating_duration_since(*died))
        })
        .collect();
    delays.sort();
    let mut since_kill: Vec<Duration> = arrivals.iter().filter_map(|a| a.since_kill).collect();
    since_kill.sort();
    let exit_line = log
        .lock()
        .map(|l| {
            l.lines()
                .find(|x| x.contains("exiting:"))
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();

    println!("oomtrace bench: {}", ready.trim());
    println!(
        "  kills caused           {} in {:.2} s ({:.0}/s, {} in flight)",
        spawned,
        caused.as_secs_f64(),
        spawned as f64 / caused.as_secs_f64(),
        args.parallel
    );
    println!("  kernel oom_kill count  {counted}");
    println!(
        "  events reported        {} ({} missing), {} naming the victim's cgroup",
        arrivals.len(),
        counted.saturating_sub(arrivals.len()),
        named
    );
    println!("  agent exit summary     {}", exit_line.trim());
    println!(
        "  death -> event delay   p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (includes the --wait-ms correlation wait when a source is missing)",
        percentile(&delays, 0.5).as_secs_f64() * 1e3,
        percentile(&delays, 0.99).as_secs_f64() * 1e3,
        delays.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  kill -> event delay    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (from the event's time, the kernel's timestamp of the kill cut to the millisecond: up to 1 ms more)",
        percentile(&since_kill, 0.5).as_secs_f64() * 1e3,
        percentile(&since_kill, 0.99).as_secs_f64() * 1e3,
        since_kill.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  agent RSS              idle {} MiB, after {} MiB, peak {} MiB",
        rss_idle / 1024,
        rss_now / 1024,
        rss_peak / 1024
    );
    println!(
        "  agent CPU              {:.3} s for {} kills ({:.2} ms per kill)",
        cpu_busy,
        arrivals.len(),
        cpu_busy * 1e3 / arrivals.len().max(1) as f64
    );
    if let Some((took, spent)) = &idle {
        let secs = took.as_secs_f64();
        let on_cpu: u64 = spent.iter().map(|t| t.on_cpu_ns).sum();
        let runs: u64 = spent.iter().map(|t| t.runs).sum();
        println!(
            "  agent CPU idle         {:.2} ms per s, {:.1} thread runs per s (over {:.0} s with no kill)",
            on_cpu as f64 / 1e6 / secs,
            runs as f64 / secs,
            secs
        );
    }
    let per_kill = |ns: u64| ns as f64 / 1e3 / arrivals.len().max(1) as f64;
    for t in threads.iter().filter(|t| t.runs > 0) {
        println!(
            "    {:<16} {:4.0} us on CPU, {:4.0} us waiting for a CPU, {:4.1} runs per kill",
            t.name,
            per_kill(t.on_cpu_ns),
            per_kill(t.waiting_ns),
            t.runs as f64 / arrivals.len().max(1) as f64
        );
    }
    Ok(if arrivals.len() == counted { 0 } else { 1 })
}

/// One storm's timings.
#[derive(Debug, Clone, Copy)]
struct Storm {
    usr1: Duration,
    term: Duration,
    kills: Duration,
}

/// Sends the storm from this process (`xtask`, not a listed killer).
fn storm(signals: usize, kills: usize) -> anyhow::Result<Storm> {
    // `trap ""` sets SIG_IGN, which survives the exec: sleep ignores both.
    let mut target = Command::new("/bin/sh")
        .arg("-c")
        .arg("trap '' USR1 TERM; exec sleep 600")
        .stdin(Stdio::null())
        .spawn()
        .context("spawn the signal target")?;
    let pid = target.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        != "sleep"
    {
        if Instant::now() > deadline {
            bail!("the signal target did not start");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let send = |sig: i32| -> anyhow::Result<Duration> {
        let started = thread_cpu();
        for _ in 0..signals {
            // SAFETY: plain syscall to our own child.
            if unsafe { libc::kill(pid as i32, sig) } != 0 {
                bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
            }
        }
        Ok(thread_cpu().saturating_sub(started))
    };
    let usr1 = send(libc::SIGUSR1)?;
    let term = send(libc::SIGTERM)?;
    let _ = target.kill();
    let _ = target.wait();

    // Short-lived children: spawned (untimed), then SIGKILLed and reaped (timed).
    let mut children = Vec::with_capacity(kills);
    for _ in 0..kills {
        children.push(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .context("spawn sleep")?,
        );
    }
    let started = thread_cpu();
    for child in &children {
        // SAFETY: plain syscall to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    }
    let kills = thread_cpu().saturating_sub(started);
    for mut child in children {
        let _ = child.wait();
    }
    Ok(Storm { usr1, term, kills })
}

/// CPU time of the calling thread: the hook runs in the sender's context,
/// so this is what it costs, whatever else the machine runs meanwhile.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (best, median) of the timings.
fn best_and_median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (
        v.first().copied().unwrap_or_default(),
        v.get(v.len() / 2).copied().unwrap_or_default(),
    )
}

fn signal_bench(args: &BenchArgs, bin: &Path) -> anyhow::Result<()> {
    let rounds = args.signal_rounds.max(1);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut hook = String::new();
    for round in 0..rounds {
        without.push(storm(args.signals, args.signal_kills)?);
        let mut agent = Command::new(bin)
            .args(["--format", "json"])
            .args(&args.agent_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stderr = agent.stderr.take().context("agent stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready:") {
                    let _ = tx.send(line);
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(60))
            .context("the agent did not become ready")?;
        if !ready.contains("signal_generate") {
            // SAFETY: plain syscall on our child.
            unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
            let _ = agent.wait();
            bail!("the agent runs without a signal_generate hook: {ready}");
        }
        if round == 0 {
            hook = ready
                .split([':', ','])
                .find(|h| h.contains("signal_generate"))
                .unwrap_or_default()
                .trim()
                .to_string();
        }
        let measured = storm(args.signals, args.signal_kills);
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let _ = agent.wait();
        with.push(measured?);
    }
    println!(
        "oomtrace bench: signal storm, {rounds} rounds without and with the agent ({hook}); best round (median round)"
    );
    let row = |what: &str, count: usize, pick: fn(&Storm) -> Duration| {
        let (a, a_med) = best_and_median(without.iter().map(pick).collect());
        let (b, b_med) = best_and_median(with.iter().map(pick).collect());
        let rate = |d: Duration| count as f64 / d.as_secs_f64().max(1e-9);
        let change = |a: Duration, b: Duration| (rate(b) - rate(a)) * 100.0 / rate(a).max(1e-9);
        println!(
            "  {what:<32} without {:>9.0}/s ({:>9.0}/s)  with {:>9.0}/s ({:>9.0}/s)  {:+.1}% ({:+.1}%), {:+.0} ns per signal",
            rate(a),
            rate(a_med),
            rate(b),
            rate(b_med),
            change(a, b),
            change(a_med, b_med),
            (b.as_secs_f64() - a.as_secs_f64()) * 1e9 / count.max(1) as f64
        );
    };
    if args.signals > 0 {
        row("SIGUSR1, ignored (number test)", args.signals, |s| s.usr1);
        row("SIGTERM, ignored (name test)", args.signals, |s| s.term);
    }
    if args.signal_kills > 0 {
        row("SIGKILL + reap of a child", args.signal_kills, |s| s.kills);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_as_the_agent_writes_it() {
        // `date -u -d 2025-12-02T21:17:00.123Z +%s%3N`
        let t = rfc3339_millis("2025-12-02T21:17:00.123Z").expect("parses");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).ok(),
            Some(Duration::from_millis(1_764_710_220_123))
        );
        let leap = rfc3339_millis("2024-02-29T00:00:00.000Z").expect("parses");
        assert_eq!(
            leap.duration_since(SystemTime::UNIX_EPOCH).ok(),
            Some(Duration::from_secs(1_709_164_800))
        );
        assert_eq!(rfc3339_millis("2025-12-02 21:17:00"), None);
    }
}
