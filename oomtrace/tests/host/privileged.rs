//! Privileged tests: the real agent, the real eBPF programs, real OOM kills in
//! memory cgroups. Run as root, one at a time, by `cargo xtask test`
//! (`cargo test -p oomtrace -- --ignored --test-threads=1`).
//!
//! Every kill here is a memory-cgroup kill; a node-level OOM is never caused
//! on the host (the VM tests do that).

use std::{collections::HashSet, time::Duration};

use crate::support::{
    Agent, Memcg, i, kill_as, killed_by_sigkill, run_hog, s, signal_hook_checks, spawn_hog,
    spawn_in, start_time_checks, wait_comm,
};
use serde_json::Value;

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

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn the_signal_hook_reports_a_listed_killer_once_and_nothing_else() {
    signal_hook_checks(true);
    signal_hook_checks(false);
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_kill_record_carries_the_victims_start_time() {
    start_time_checks();
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
            let (before, _) = l.split_once(" kernel events lost")?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no exit summary; stderr:\n{log}"));
    assert!(lost > 0, "the exit summary counts the lost records: {log}");
    eprintln!("{warn}");
}

/// A pid no process has now, for lines about a process that does not exist.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(32_768);
    (1..max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

/// Issue 9: a process that writes the kernel's OOM lines to /dev/kmsg (any
/// root process, or one with write access to the device) made a node-level
/// kill report with advice. The kernel stores what user space writes with
/// facility LOG_USER; the agent reads only facility 0 as kernel lines, counts
/// the forgery and says so once. A real kill right after shows that the agent
/// was reading when the forgeries came.
#[test]
#[ignore = "privileged: needs root, BPF, /dev/kmsg and a memory cgroup; run by cargo xtask test"]
fn lines_written_to_the_kernel_log_by_a_process_report_no_kill() {
    use std::io::Write as _;
    for args in [&[][..], &["--no-bpf"][..]] {
        let agent = Agent::start_with_env(
            args,
            &[("OOMTRACE_LOG", "info,oomtrace::capture::kmsg=debug")],
        );
        let fake = unused_pid();
        let mut kmsg = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .expect("open /dev/kmsg for writing");
        for line in [
            format!(
                "<3>Out of memory: Killed process {fake} (x) total-vm:221368kB, anon-rss:50816kB, \
                 file-rss:6584kB, shmem-rss:0kB, UID:0 pgtables:156kB oom_score_adj:0"
            ),
            format!(
                "<6>oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,\
                 global_oom,task_memcg=/kubepods/burstable/podx,task=x,pid={fake},uid=0"
            ),
        ] {
            // One write() is one record.
            kmsg.write_all(format!("{line}\n").as_bytes())
                .expect("write /dev/kmsg");
        }
        let cg = Memcg::unique("forgery");
        cg.set_limit(32 << 20);
        let (real, status) = run_hog(&cg, 0, 128);
        assert!(killed_by_sigkill(&status), "{status:?}");
        let either = |v: &Value| {
            i(v, &["victim", "pid"]).is_some_and(|p| p == i64::from(real) || p == i64::from(fake))
        };
        let first = agent.events(1, Duration::from_secs(15), either);
        // The forged kill would wait for the other sources first: give it time.
        let later = agent.events(1, Duration::from_millis(2500), either);
        let (_, log) = agent.stop();
        assert_eq!(
            first.len(),
            1,
            "{args:?}: the real kill was not reported; stderr:\n{log}"
        );
        assert_eq!(
            i(&first[0], &["victim", "pid"]),
            Some(i64::from(real)),
            "{args:?}: the first report is not the real kill: {}",
            first[0]
        );
        assert!(
            later.is_empty(),
            "{args:?}: the forgery was reported: {later:?}"
        );
        let warned = log
            .lines()
            .filter(|l| {
                l.contains("WARN") && l.contains("wrote an OOM-killer line to the kernel log")
            })
            .count();
        assert_eq!(
            warned, 1,
            "{args:?}: the forgery is logged once at warn:\n{log}"
        );
        assert!(
            log.lines().any(|l| l.contains("forged_oom_lines=2")),
            "{args:?}: both forged lines are counted:\n{log}"
        );
        println!(
            "{args:?}: real kill {real} reported, forged pid {fake} not; forgery logged once and counted twice"
        );
    }
}

// ---- Userspace OOM killers ---------------------------------------------------

/// A process that renames itself `earlyoom` and SIGKILLs a child passes the
/// kernel side's name filter, but its executable is a shell: not confirmed,
/// not reported. A `kill -9` from a plain shell never leaves the kernel.
#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_renamed_killer_and_a_shell_kill_are_not_reported() {
    let agent = Agent::start_with_log(
        &["--wait-ms", "500"],
        "info,oomtrace::capture::killer=debug,oomtrace_ebpf=debug",
    );
    let cg = Memcg::unique("renamed-killer");
    let mut renamed_victim = spawn_in(&cg, 900, "sleep 60");
    let mut plain_victim = spawn_in(&cg, 900, "sleep 60");
    let (rpid, ppid) = (renamed_victim.id(), plain_victim.id());
    wait_comm(rpid, "sleep");
    wait_comm(ppid, "sleep");
    // The renamed sender stays alive while the agent checks it, as a real
    // killer daemon would (a sender gone before the check is not confirmed
    // either, for another reason).
    let mut renamed = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "printf earlyoom > /proc/self/comm && kill -9 {rpid} && sleep 3"
        ))
        .spawn()
        .expect("sh");
    let renamed_pid = renamed.id();
    assert!(killed_by_sigkill(&renamed_victim.wait().expect("wait")));
    let plain = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("kill -9 {ppid}"))
        .status()
        .expect("sh");
    assert!(plain.success());
    assert!(killed_by_sigkill(&plain_victim.wait().expect("wait")));
    let ours = |v: &Value| {
        i(v, &["victim", "pid"]).is_some_and(|p| p == i64::from(rpid) || p == i64::from(ppid))
    };
    let events = agent.events(1, Duration::from_secs(4), ours);
    let _ = renamed.wait();
    let (_, log) = agent.stop();
    assert!(events.is_empty(), "nothing reported: {events:?}\n{log}");
    // The renamed shell's SIGKILL reached userspace and was refused there.
    let refused = log
        .lines()
        .find(|l| l.contains(&format!("signal 9 to pid {rpid} not reported")))
        .unwrap_or_else(|| panic!("the renamed sender's signal was not checked; stderr:\n{log}"));
    assert!(
        refused.contains(&format!("pid {renamed_pid} (earlyoom) runs /"))
            && refused.contains("not an executable named earlyoom"),
        "{refused}"
    );
    // The plain shell's never left the kernel.
    assert!(
        !log.contains(&format!("to pid {ppid}")),
        "a kill -9 from sh must be filtered in the kernel: {log}"
    );
    assert!(
        log.contains("signals from senders not confirmed as memory killers not reported"),
        "{log}"
    );
    eprintln!("{refused}");
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn victim_records_say_where_the_victim_stands_in_its_pid_namespace() {
    crate::support::deaths::lineage_and_oom_sigkill_checks(true, true);
    crate::support::deaths::lineage_and_oom_sigkill_checks(false, true);
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_task_that_was_already_exiting_is_marked_without_the_oom_killers_sigkill() {
    let Some(freezer) = crate::support::deaths::v1_freezer() else {
        eprintln!(
            "SKIP: no cgroup v1 freezer on this kernel: a killed task cannot be kept from exiting"
        );
        return;
    };
    let (tries, reaped, flagged) = crate::support::deaths::reaped_not_killed_checks(&freezer, 3);
    eprintln!(
        "task_will_free_mem path: {reaped} of {tries} tries, {flagged} with the OOM SIGKILL flag"
    );
    assert_eq!(
        reaped, tries,
        "the OOM killer chose the frozen, killed holder every time"
    );
    assert_eq!(
        flagged, 0,
        "no SIGKILL of the OOM killer's own for an exiting task"
    );
}

#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn the_outcome_says_whether_the_containers_main_process_was_killed() {
    crate::support::deaths::outcome_checks();
}

#[test]
#[ignore = "privileged: needs root, BPF, a memory cgroup and tmpfs; run by cargo xtask test"]
fn a_tmpfs_in_the_cgroup_shows_as_shared_memory_and_is_explained() {
    crate::support::deaths::oom_stat_checks();
}

#[test]
#[ignore = "privileged: needs root, BPF, a memory cgroup and the v1 freezer; run by cargo xtask test"]
fn without_the_kernel_log_the_oom_killers_sigkill_tells_a_kill_from_a_reap() {
    let Some(freezer) = crate::support::deaths::v1_freezer() else {
        eprintln!(
            "SKIP: no cgroup v1 freezer on this kernel: a killed task cannot be kept from exiting"
        );
        return;
    };
    crate::support::deaths::sigkill_confirmation_checks(&freezer);
}

/// Issue 9: a process that names itself `ESC[2Jx<newline>FAKE` and is then
/// OOM-killed printed a raw escape sequence and three lines for one kill in
/// `--format text`. The name is the kernel's (the shell writes it to its own
/// /proc/self/comm and then holds 200 MB in a variable, so the renamed
/// process itself is the victim); the text line escapes it and stays one line.
#[test]
#[ignore = "privileged: needs root, BPF and a memory cgroup; run by cargo xtask test"]
fn a_hostile_process_name_is_one_escaped_text_line() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    let mut agent = Command::new(env!("CARGO_BIN_EXE_oomtrace"))
        .args(["--format", "text"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oomtrace");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = agent.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let stderr = agent.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if l.contains("oomtrace: ready") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("agent ready");
    let cg = Memcg::unique("hostile-name");
    cg.set_limit(32 << 20);
    let script = format!(
        "echo $$ > {} && printf '\\033[2Jx\\nFAKE' > /proc/self/comm && x=$(head -c 200000000 /dev/zero | tr '\\0' a)",
        cg.dir().join("cgroup.procs").display()
    );
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .expect("sh");
    let pid = shell.id();
    let status = shell.wait().expect("wait");
    assert!(
        killed_by_sigkill(&status),
        "the renamed shell was not OOM-killed: {status:?}"
    );
    // Every line the agent writes for a while: the kill's, and nothing else
    // of it (a raw newline in the name would make more lines).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ours = Vec::new();
    let mut fake = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Ok(l) = lines.recv_timeout(left) else {
            break;
        };
        assert!(
            !l.chars().any(|c| c.is_control()),
            "a control character reached the text output: {l:?}"
        );
        if l.starts_with("FAKE") {
            fake.push(l.clone());
        }
        if l.contains(&format!("pid {pid} "))
            || l.contains(&format!("({pid})"))
            || l.contains(&format!(" {pid} "))
        {
            ours.push(l);
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(fake.is_empty(), "the name split a line: {fake:?}");
    assert_eq!(
        ours.len(),
        1,
        "one line for the kill of pid {pid}: {ours:?}"
    );
    assert!(
        ours[0].contains("\\x1b[2Jx\\x0aFAKE"),
        "the name is escaped on the line: {}",
        ours[0]
    );
    eprintln!("{}", ours[0]);
}
