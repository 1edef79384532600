//! Privileged tests: the real agent, the real eBPF programs, real OOM kills in
//! memory cgroups. Run as root, one at a time, by `cargo xtask test`
//! (`cargo test -p oomtrace -- --ignored --test-threads=1`).
//!
//! Every kill here is a memory-cgroup kill; a node-level OOM is never caused
//! on the host (the VM tests do that).

mod support;

use std::{
    collections::HashSet,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use oomtrace::{
    probe::{Hook, KernelSupport, Probe, ProbeConfig, Stats},
    verdict::Walk,
};
use oomtrace_common::{Record, SIGNAL_HAS_TASK, Signal};
use serde_json::Value;
use support::{Agent, Memcg, i, killed_by_sigkill, run_hog, s, spawn_hog, spawn_in};

fn in_cgroup(prefix: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| s(v, &["victim", "cgroup"]).is_some_and(|c| c.starts_with(prefix))
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_kill_at_a_cgroup_limit_names_the_victim_and_the_cgroup() {
    let agent = Agent::start(&[]);
    let cg = Memcg::unique("limit");
    cg.set_limit(32 << 20);
    let (pid, status) = run_hog(&cg, 500, 128);
    assert!(
        killed_by_sigkill(&status),
        "the hog was not OOM-killed: {status:?}"
    );

    let events = agent.events(1, Duration::from_secs(15), in_cgroup(&cg.rel));
    let (_, log) = agent.stop();
    assert_eq!(
        events.len(),
        1,
        "expected one event for {}; stderr:\n{log}",
        cg.rel
    );
    let e = &events[0];
    assert_eq!(i(e, &["victim", "pid"]), Some(i64::from(pid)), "{e}");
    assert_eq!(s(e, &["victim", "comm"]), Some("dd"), "{e}");
    assert_eq!(i(e, &["victim", "oom_score_adj"]), Some(500), "{e}");
    assert_eq!(s(e, &["victim", "cgroup"]), Some(cg.rel.as_str()), "{e}");
    assert_eq!(s(e, &["scope"]), Some("cgroup"), "{e}");
    assert_eq!(s(e, &["constraint"]), Some("memcg"), "{e}");
    assert_eq!(s(e, &["oom_cgroup"]), Some(cg.rel.as_str()), "{e}");
    assert!(
        matches!(s(e, &["verdict_source"]), Some("kmsg" | "cgroup_usage")),
        "{e}"
    );
    // The dd buffer was 128 MiB, the limit 32 MiB: the kernel saw about 32 MiB resident.
    let anon = i(e, &["victim", "anon_rss_kb"]).expect("anon_rss_kb");
    assert!(
        (16 * 1024..=40 * 1024).contains(&anon),
        "anon_rss_kb {anon}: {e}"
    );
    assert_eq!(
        i(e, &["memcg", "victim_limit_bytes"]),
        Some(32 << 20),
        "{e}"
    );
    assert_eq!(i(e, &["memcg", "oom_limit_bytes"]), Some(32 << 20), "{e}");
    let usage = i(e, &["memcg", "oom_usage_bytes"]).expect("oom usage");
    assert!(usage > 28 << 20, "usage at kill time {usage}: {e}");
    // The hog triggered its own OOM here.
    assert_eq!(i(e, &["trigger", "pid"]), Some(i64::from(pid)), "{e}");
    assert!(s(e, &["time"]).is_some_and(|t| t.ends_with('Z')), "{e}");
    assert!(s(e, &["node"]).is_some_and(|n| !n.is_empty()), "{e}");
    assert!(s(e, &["incident"]).is_some_and(|n| !n.is_empty()), "{e}");
    let sources: Vec<&str> = e["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for src in ["tracepoint", "tp_btf", "kmsg"] {
        assert!(sources.contains(&src), "source {src} missing: {e}");
    }
    assert!(log.contains("ready"), "{log}");
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_limit_on_the_parent_is_the_oom_cgroup_of_a_victim_in_a_child() {
    let agent = Agent::start(&[]);
    let parent = Memcg::unique("parent");
    parent.set_limit(32 << 20);
    let child = parent.child("unlimited-child");
    let (pid, status) = run_hog(&child, 300, 128);
    assert!(killed_by_sigkill(&status), "{status:?}");

    let events = agent.events(1, Duration::from_secs(15), in_cgroup(&parent.rel));
    let (_, log) = agent.stop();
    assert_eq!(events.len(), 1, "stderr:\n{log}");
    let e = &events[0];
    assert_eq!(i(e, &["victim", "pid"]), Some(i64::from(pid)), "{e}");
    assert_eq!(s(e, &["victim", "cgroup"]), Some(child.rel.as_str()), "{e}");
    assert_eq!(s(e, &["oom_cgroup"]), Some(parent.rel.as_str()), "{e}");
    assert_eq!(s(e, &["scope"]), Some("cgroup"), "{e}");
    // The child has no limit of its own: null, not invented.
    assert!(e["memcg"]["victim_limit_bytes"].is_null(), "{e}");
    assert_eq!(i(e, &["memcg", "oom_limit_bytes"]), Some(32 << 20), "{e}");
    assert_eq!(s(e, &["oom_domain"]), Some("cgroup"), "{e}");
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_burst_of_kills_is_reported_exactly_once_each() {
    const KILLS: usize = 200;
    const PARALLEL: usize = 4;
    let agent = Agent::start(&[]);
    let cg = Memcg::unique("burst");
    cg.set_limit(16 << 20);
    let before = cg.oom_kills();
    let started = std::time::Instant::now();
    let mut pids = HashSet::new();
    let mut running = Vec::new();
    let mut spawned = 0;
    while spawned < KILLS || !running.is_empty() {
        while running.len() < PARALLEL && spawned < KILLS {
            running.push(spawn_hog(&cg, 1000, 64));
            spawned += 1;
        }
        let mut child = running.remove(0);
        pids.insert(child.id());
        let _ = child.wait();
    }
    let elapsed = started.elapsed();
    let counted = (cg.oom_kills() - before) as usize;
    assert!(counted >= KILLS, "the kernel counted only {counted} kills");

    let events = agent.events(counted, Duration::from_secs(60), in_cgroup(&cg.rel));
    // Let late duplicates, if any, arrive before judging.
    let extra = agent.events(1, Duration::from_secs(3), in_cgroup(&cg.rel));
    let (_, log) = agent.stop();
    eprintln!("{counted} kills in {elapsed:?}; {} events", events.len());
    assert!(
        extra.is_empty(),
        "duplicate event after the burst: {:?}",
        extra[0]
    );
    let reported: Vec<i64> = events
        .iter()
        .filter_map(|e| i(e, &["victim", "pid"]))
        .collect();
    let unique: HashSet<i64> = reported.iter().copied().collect();
    assert_eq!(unique.len(), reported.len(), "a kill was reported twice");
    // A ring-buffer loss does not lose a kill (the kernel log still reports
    // it), so every counted kill must be here whatever `lost_events` says.
    assert_eq!(
        events.len(),
        counted,
        "kernel counted {counted} kills, oomtrace reported {}; stderr:\n{log}",
        events.len()
    );
    for pid in &unique {
        assert!(
            pids.contains(&(*pid as u32)),
            "reported pid {pid} is not one of the hogs"
        );
    }
    assert!(
        log.contains("kernel events lost"),
        "the exit summary states losses: {log}"
    );
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn without_bpf_the_kernel_log_alone_reports_the_kill() {
    let agent = Agent::start(&["--no-bpf"]);
    let cg = Memcg::unique("kmsg-only");
    cg.set_limit(32 << 20);
    let (pid, status) = run_hog(&cg, 700, 128);
    assert!(killed_by_sigkill(&status), "{status:?}");

    let events = agent.events(1, Duration::from_secs(15), |v| {
        i(v, &["victim", "pid"]).is_some()
            && (s(v, &["victim", "cgroup"]).is_some_and(|c| c.starts_with(&cg.rel))
                || s(v, &["oom_cgroup"]).is_some_and(|c| c.starts_with(&cg.rel)))
    });
    let (_, log) = agent.stop();
    assert!(
        log.contains("degraded"),
        "degraded mode must be stated: {log}"
    );
    assert_eq!(events.len(), 1, "stderr:\n{log}");
    let e = &events[0];
    assert_eq!(i(e, &["victim", "pid"]), Some(i64::from(pid)), "{e}");
    assert_eq!(s(e, &["verdict_source"]), Some("kmsg"), "{e}");
    assert_eq!(s(e, &["scope"]), Some("cgroup"), "{e}");
    assert_eq!(s(e, &["oom_cgroup"]), Some(cg.rel.as_str()), "{e}");
    assert_eq!(i(e, &["victim", "oom_score_adj"]), Some(700), "{e}");
    assert_eq!(e["sources"], serde_json::json!(["kmsg"]), "{e}");
}

// ---- The kernel side through the library API ---------------------------------

/// The probe loaded the way the agent loads it, with its ring buffer and
/// counters taken out for the test to read directly.
struct Direct {
    probe: Probe,
    ring: RingBuf<MapData>,
    stats: Stats,
}

impl Direct {
    fn load() -> Self {
        let cfg = ProbeConfig::default();
        let support = KernelSupport::discover(&cfg);
        let mut probe = Probe::load(&cfg, support).expect("load the eBPF programs");
        let ring = probe.take_ring().expect("ring buffer");
        let stats = probe.take_stats().expect("counters");
        Self { probe, ring, stats }
    }

    /// Every record that arrives within `wait`.
    fn records(&mut self, wait: Duration) -> Vec<Record> {
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

fn signals_to(records: &[Record], pid: u32) -> Vec<Signal> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Signal(s) if s.target_pid == pid => Some(*s),
            _ => None,
        })
        .collect()
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(oomtrace_common::c_str(bytes)).expect("utf-8")
}

/// The field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
fn stat_field(pid: u32, n: usize) -> u64 {
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
fn start_time_in_ticks(start_time_ns: u64) -> u64 {
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

fn wait_comm(pid: u32, comm: &str) {
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
fn kill_as(name: &str, signal: &str, pid: u32) -> u32 {
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

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn the_signal_hook_reports_a_listed_killer_once_and_nothing_else() {
    let mut d = Direct::load();
    assert!(
        d.probe.active.contains(&Hook::TpBtfSignal),
        "tp_btf/signal_generate must attach on this kernel: {:?}",
        d.probe.inactive
    );
    let cg = Memcg::unique("signal");
    let page_size = oomtrace::verdict::page_size();

    // (a) A process named earlyoom SIGKILLs a child in another cgroup, then
    // SIGTERMs a second one: one record each, naming the child.
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

    // (b) The same from a plain shell, and SIGUSR1 traffic: nothing.
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
    assert_eq!(got.len(), 1, "one record for the SIGKILL: {got:?}");
    let s = &got[0];
    assert_eq!(s.sig, libc::SIGKILL);
    assert_eq!(text(&s.header.trigger_comm), "earlyoom");
    assert_eq!(
        s.header.trigger_tgid, killer,
        "the sender is the renamed shell"
    );
    assert_eq!((s.target_pid, s.target_tgid), (vpid, vpid));
    assert_eq!(text(&s.target_comm), "sleep");
    assert_eq!(s.flags & SIGNAL_HAS_TASK, SIGNAL_HAS_TASK);
    assert_eq!(s.target_oom_score_adj, 300, "the child's oom_score_adj");
    assert_eq!(
        (s.code, s.group, s.result),
        (0, 1, 0),
        "SI_USER, kill(2), delivered"
    );
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

    let got = signals_to(&records, tpid);
    assert_eq!(got.len(), 1, "one record for the SIGTERM: {got:?}");
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
    // The shell's SIGKILL was counted and filtered on the sender's name.
    assert!(after.fired_signal > after_usr1.fired_signal);
    assert!(after.filtered_signal > after_usr1.filtered_signal);
    assert_eq!(after.lost_signal, 0, "{after:?}");
    eprintln!("signal counters: {before:?} -> {after:?}");
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_kill_record_carries_the_victims_start_time() {
    let mut d = Direct::load();
    assert!(
        d.probe.active.contains(&Hook::TpBtf),
        "{:?}",
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
    std::thread::sleep(Duration::from_millis(300));
    let start_ticks = stat_field(pid, 22);
    let status = hog.wait().expect("wait");
    assert!(
        killed_by_sigkill(&status),
        "the hog was not OOM-killed: {status:?}"
    );
    let records = d.records(Duration::from_secs(1));
    let victims: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::BtfVictim(v) if v.pid == pid => Some(*v),
            _ => None,
        })
        .collect();
    assert_eq!(victims.len(), 1, "one tp_btf record for pid {pid}");
    let v = &victims[0];
    assert_eq!(text(&v.comm), "dd");
    let ticks = start_time_in_ticks(v.start_time_ns);
    assert!(
        ticks.abs_diff(start_ticks) <= 1,
        "start_time {} ns is {ticks} ticks; /proc said {start_ticks}",
        v.start_time_ns
    );
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn the_kernel_side_logs_a_full_ring_buffer_and_what_it_saw() {
    // A one-page ring buffer holds one tp_btf record (1.9 KiB) and a bit.
    let agent = Agent::start_with_log(
        &["--ringbuf-bytes", "4096", "--wait-ms", "500"],
        "info,oomtrace_ebpf=debug",
    );
    let cg = Memcg::unique("ring-full");
    cg.set_limit(16 << 20);
    let mut sleeper = spawn_in(&cg, 0, "sleep 60");
    let spid = sleeper.id();
    wait_comm(spid, "sleep");
    kill_as("earlyoom", "9", spid);
    let _ = sleeper.wait();
    // Wait for the agent to drain that record, then stop it: nothing reads
    // the ring buffer while the kernel fills it.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain syscalls on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let mut pids = Vec::new();
    for _ in 0..4 {
        let (pid, status) = run_hog(&cg, 1000, 64);
        assert!(killed_by_sigkill(&status), "{status:?}");
        pids.push(i64::from(pid));
    }
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    let events = agent.events(pids.len(), Duration::from_secs(20), |v| {
        i(v, &["victim", "pid"]).is_some_and(|p| pids.contains(&p))
    });
    let (_, log) = agent.stop();
    assert_eq!(
        events.len(),
        pids.len(),
        "the kernel log still reports every kill; stderr:\n{log}"
    );
    let warn = log
        .lines()
        .find(|l| {
            l.contains("WARN")
                && l.contains("oomtrace_ebpf")
                && l.contains("the ring buffer is full")
        })
        .unwrap_or_else(|| {
            panic!("no kernel-side warning about the full ring buffer; stderr:\n{log}")
        });
    assert!(
        warn.contains("tp_btf/mark_victim") || warn.contains("mark_victim"),
        "{warn}"
    );
    assert!(
        log.lines().any(|l| l.contains("DEBUG")
            && l.contains("oomtrace_ebpf")
            && l.contains("signal 9 from a listed sender")
            && l.contains(&format!("to pid {spid}"))),
        "OOMTRACE_LOG=debug shows what the kernel side saw; stderr:\n{log}"
    );
    let lost: u64 = log
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once("kills reported, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no exit summary; stderr:\n{log}"));
    assert!(lost > 0, "the exit summary counts the lost records: {log}");
    eprintln!("{warn}");
}
