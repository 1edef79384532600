//! Kernel-side checks of "main process or child" and of the OOM killer's
//! own SIGKILL, shared by the privileged host tests and the VM tests: real
//! memcg kills, the records read straight from the ring buffer.

use std::{
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use oomtrace::capture::probe::{Disabled, Hook, ProbeConfig};
use oomtrace_common::{
    LINEAGE_MEMCG_COMPARED, LINEAGE_NS, LINEAGE_ONLY_CHILD, LINEAGE_PARENT,
    LINEAGE_PARENT_SAME_MEMCG, Lineage, Record, VICTIM_OOM_SIGKILL,
};

use super::{Direct, Memcg, spawn_holder, spawn_in, text, wait_rss};

/// What one kill looked like to each hook.
#[derive(Debug, Default)]
struct Seen {
    pid: u32,
    /// `(flags)` of the classic tracepoint's record.
    tp: Vec<u32>,
    /// `(flags, lineage)` of tp_btf's record.
    btf: Vec<(u32, Lineage)>,
    /// The decision's chosen task's lineage.
    decision: Vec<Lineage>,
}

/// The records of the one `comm` victim in `cg` (by tp_btf's walk, else by
/// the decision's chosen task, else the only tracepoint record).
fn seen(records: &[Record], comm: &str, cg: &Memcg, page_size: u64) -> Seen {
    let in_cg = |w: &oomtrace_common::CgroupWalk| {
        oomtrace::correlate::walk::Walk::decode(w, page_size)
            .and_then(|w| w.leaf().map(|l| l.path.clone()))
            .is_some_and(|p| p == cg.rel)
    };
    let mut s = Seen::default();
    for r in records {
        match r {
            Record::BtfVictim(v) if text(&v.comm) == comm && in_cg(&v.memcg) => {
                s.pid = v.pid;
                s.btf.push((v.flags, v.lineage));
            }
            Record::Decision(d) if text(&d.chosen_comm) == comm && in_cg(&d.chosen_memcg) => {
                s.pid = d.chosen_pid;
                s.decision.push(d.chosen_lineage);
            }
            _ => {}
        }
    }
    for r in records {
        if let Record::TpVictim(t) = r
            && s.pid != 0
            && t.pid == s.pid
        {
            s.tp.push(t.flags);
        }
    }
    s
}

/// Waits for the victim `comm` of `cg` to show up in the records.
fn kill_records(d: &mut Direct, comm: &str, cg: &Memcg, page_size: u64) -> Seen {
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        records.extend(d.records(Duration::from_millis(300)));
        let s = seen(&records, comm, cg, page_size);
        if s.pid != 0 || Instant::now() > deadline {
            return s;
        }
    }
}

/// The lineages every task-reading hook gave for one victim: all equal.
fn one_lineage(s: &Seen, what: &str) -> Lineage {
    let all: Vec<Lineage> = s
        .btf
        .iter()
        .map(|(_, l)| *l)
        .chain(s.decision.iter().copied())
        .collect();
    assert!(!all.is_empty(), "{what}: no task record: {s:?}");
    assert!(
        all.iter().all(|l| *l == all[0]),
        "{what}: the hooks disagree: {all:?}"
    );
    all[0]
}

/// Kills in a memory cgroup whose victims stand in different places of
/// their PID namespace: each record made from the victim task says where,
/// and the OOM killer's SIGKILL is seen before `mark_victim` (by the
/// `tp_btf` signal program, or with `tp_btf` off by the classic one).
/// `namespaces`: also the three kills in a new PID namespace (else only
/// the kill in the node's namespace).
pub fn lineage_and_oom_sigkill_checks(tp_btf: bool, namespaces: bool) {
    let cfg = ProbeConfig {
        disabled: Disabled {
            tp_btf: !tp_btf,
            ..Disabled::default()
        },
        ..ProbeConfig::default()
    };
    let mut d = Direct::load_with(&cfg);
    let active = d.probe.active.clone();
    let btf = active.contains(&Hook::TpBtf);
    let decision = active.contains(&Hook::Fentry) || active.contains(&Hook::Kprobe);
    let tp = active.contains(&Hook::Tracepoint);
    let signal = if tp_btf {
        Hook::TpBtfSignal
    } else {
        Hook::TracepointSignal
    };
    assert!(
        active.contains(&signal),
        "{signal} must attach: {:?}",
        d.probe.inactive
    );
    assert!(tp, "the classic mark_victim tracepoint must attach");
    let page_size = oomtrace::units::page_size();
    let cg = Memcg::unique("lineage");
    cg.set_limit(32 << 20);
    let dd = "dd if=/dev/zero of=/dev/null bs=128M count=1 status=none";
    let before = d.stats.snapshot();

    // The node's own namespace: dd's parent is this test, outside the cgroup.
    let mut c = spawn_in(&cg, 800, dd);
    let dpid = c.id();
    let _ = c.wait();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !records
        .iter()
        .any(|r| matches!(r, Record::TpVictim(t) if t.pid == dpid))
    {
        assert!(Instant::now() < deadline, "no tracepoint record for {dpid}");
        records.extend(d.records(Duration::from_millis(300)));
    }
    let dseen = seen(&records, "dd", &cg, page_size);
    let tp_flags: Vec<u32> = records
        .iter()
        .filter_map(|r| match r {
            Record::TpVictim(t) if t.pid == dpid => Some(t.flags),
            _ => None,
        })
        .collect();
    assert_eq!(
        tp_flags,
        vec![VICTIM_OOM_SIGKILL],
        "{signal}: the OOM killer's SIGKILL came just before mark_victim"
    );
    let after = d.stats.snapshot();
    assert!(
        after.oom_sigkill > before.oom_sigkill,
        "{before:?} -> {after:?}"
    );
    if !btf && !decision {
        eprintln!("{signal}: no task-reading hook here: the lineage is not read; OOM SIGKILL seen");
        return;
    }
    assert_eq!(dseen.pid, dpid, "{dseen:?}");
    if !namespaces {
        let ld = one_lineage(&dseen, "node namespace");
        assert_eq!((ld.ns_pid, ld.ppid), (dpid, std::process::id()), "{ld:?}");
        eprintln!("{signal}: node namespace: {dseen:?}");
        return;
    }

    // (a) The init of a new PID namespace: `unshare --fork` runs dd as pid 1.
    let mut c = spawn_in(&cg, 800, &format!("unshare --pid --fork {dd}"));
    let _ = c.wait();
    let a = kill_records(&mut d, "dd", &cg, page_size);
    // (b) A child of that init: sh is pid 1, dd its only child (pid 2).
    let mut c = spawn_in(
        &cg,
        800,
        &format!("unshare --pid --fork sh -c '{dd}; exit 0'"),
    );
    let _ = c.wait();
    let b = kill_records(&mut d, "dd", &cg, page_size);
    // (c) The only child of an init shim: pid 1 renames itself tini.
    let mut c = spawn_in(
        &cg,
        800,
        &format!("unshare --pid --fork sh -c 'printf tini > /proc/self/comm; {dd}; exit 0'"),
    );
    let _ = c.wait();
    let c_seen = kill_records(&mut d, "dd", &cg, page_size);
    let after = d.stats.snapshot();

    for (what, s) in [
        ("pid 1", &a),
        ("child of pid 1", &b),
        ("child of tini", &c_seen),
        ("node namespace", &dseen),
    ] {
        assert_ne!(s.pid, 0, "{what}: no record of the kill");
        assert_eq!(s.btf.len(), usize::from(btf), "{what}: {s:?}");
        assert_eq!(s.decision.len(), usize::from(decision), "{what}: {s:?}");
        assert_eq!(s.tp.len(), 1, "{what}: {s:?}");
        // The OOM killer's own SIGKILL came just before mark_victim.
        for (flags, _) in &s.btf {
            assert_eq!(
                flags & VICTIM_OOM_SIGKILL,
                VICTIM_OOM_SIGKILL,
                "{what}: tp_btf {s:?}"
            );
        }
        assert_eq!(s.tp, vec![VICTIM_OOM_SIGKILL], "{what}: tracepoint {s:?}");
        eprintln!("{signal}: {what}: {s:?}");
    }
    let la = one_lineage(&a, "pid 1");
    let all = LINEAGE_NS | LINEAGE_PARENT | LINEAGE_MEMCG_COMPARED;
    assert_eq!(la.flags & all, all, "{la:?}");
    assert!(la.ns_level >= 1, "a new namespace below this one: {la:?}");
    assert_eq!(
        (la.ns_pid, la.ns_ppid),
        (1, 0),
        "init, parent outside: {la:?}"
    );
    assert_eq!(text(&la.parent_comm), "unshare", "{la:?}");
    assert_ne!(la.flags & LINEAGE_ONLY_CHILD, 0, "{la:?}");
    assert_ne!(
        la.flags & LINEAGE_PARENT_SAME_MEMCG,
        0,
        "unshare is in the cgroup: {la:?}"
    );

    let lb = one_lineage(&b, "child of pid 1");
    assert_eq!(lb.ns_level, la.ns_level, "{lb:?}");
    assert_eq!(lb.ns_ppid, 1, "{lb:?}");
    assert!(lb.ns_pid >= 2, "{lb:?}");
    assert_eq!(text(&lb.parent_comm), "sh", "{lb:?}");
    assert_ne!(lb.flags & LINEAGE_ONLY_CHILD, 0, "{lb:?}");
    assert_ne!(lb.flags & LINEAGE_PARENT_SAME_MEMCG, 0, "{lb:?}");

    let lc = one_lineage(&c_seen, "child of tini");
    assert_eq!((lc.ns_ppid, text(&lc.parent_comm)), (1, "tini"), "{lc:?}");
    assert_ne!(lc.flags & LINEAGE_ONLY_CHILD, 0, "{lc:?}");

    let ld = one_lineage(&dseen, "node namespace");
    assert_eq!(ld.flags & all, all, "{ld:?}");
    assert_eq!(ld.ns_level, la.ns_level - 1, "{ld:?}");
    assert_eq!(
        ld.ns_pid, dpid,
        "the node's pid at the node's level: {ld:?}"
    );
    assert_eq!(ld.ppid, std::process::id(), "{ld:?}");
    assert_eq!(ld.ns_ppid, std::process::id(), "{ld:?}");
    assert_eq!(
        ld.flags & LINEAGE_PARENT_SAME_MEMCG,
        0,
        "this test is not in the cgroup: {ld:?}"
    );
    assert!(
        after.oom_sigkill - before.oom_sigkill >= 4,
        "{before:?} -> {after:?}"
    );
    eprintln!(
        "{signal}: kernel SIGKILLs seen: {}; mark_victim runs matched: {}",
        after.oom_sigkill - before.oom_sigkill,
        after.oom_sigkill_matched - before.oom_sigkill_matched
    );
}

/// How often the kernel's `task_will_free_mem()` path was taken in `tries`
/// attempts, and what the hooks said then: a holder frozen (cgroup v1
/// freezer) and SIGKILLed by us stays alive with `SIGNAL_GROUP_EXIT` set;
/// another process then pushes the memory cgroup over its limit, the OOM
/// killer chooses the holder, sees it exiting and only marks it
/// (`mark_oom_victim`, no SIGKILL of its own) and thaws it.
///
/// Returns `(tries, reaped, flagged)`: attempts, attempts where the holder
/// was marked, and of those how many carried `VICTIM_OOM_SIGKILL` (must be 0).
pub fn reaped_not_killed_checks(freezer: &std::path::Path, tries: usize) -> (usize, usize, usize) {
    let mut d = Direct::load();
    let mut reaped = 0;
    let mut flagged = 0;
    for n in 0..tries {
        let cg = Memcg::unique(&format!("exiting-{n}"));
        cg.set_limit(96 << 20);
        let fz = freezer.join(format!("oomtrace-test-exiting-{}-{n}", std::process::id()));
        let _ = fs::create_dir(&fz);
        let mut holder = spawn_holder(&cg, 1000, 48);
        let hpid = holder.id();
        wait_rss(hpid, 48 * 1024);
        fs::write(fz.join("tasks"), hpid.to_string()).expect("freezer tasks");
        fs::write(fz.join("freezer.state"), "FROZEN").expect("freeze");
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(fz.join("freezer.state"))
            .unwrap_or_default()
            .trim()
            != "FROZEN"
        {
            assert!(Instant::now() < deadline, "the holder never froze");
            thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: plain syscall to our own child.
        unsafe { libc::kill(hpid as i32, libc::SIGKILL) };
        thread::sleep(Duration::from_millis(100));
        // A second process needs 80 MiB of the 96: the OOM killer picks the
        // frozen, dying holder (oom_score_adj 1000).
        let mut hog = spawn_in(
            &cg,
            0,
            "dd if=/dev/zero of=/dev/null bs=80M count=1 status=none",
        );
        let status = hog.wait().expect("hog");
        let _ = fs::write(fz.join("freezer.state"), "THAWED");
        let _ = holder.wait();
        let records = d.records(Duration::from_millis(500));
        let mut marked = false;
        for r in &records {
            match r {
                Record::TpVictim(t) if t.pid == hpid => {
                    marked = true;
                    if t.flags & VICTIM_OOM_SIGKILL != 0 {
                        flagged += 1;
                    }
                }
                Record::BtfVictim(v) if v.pid == hpid => {
                    marked = true;
                    if v.flags & VICTIM_OOM_SIGKILL != 0 {
                        flagged += 1;
                    }
                }
                _ => {}
            }
        }
        eprintln!(
            "try {n}: holder {hpid} marked: {marked}; hog exit {status:?}; records: {}",
            records.len()
        );
        if marked {
            reaped += 1;
        }
        let _ = fs::remove_dir(&fz);
    }
    (tries, reaped, flagged)
}

/// The cgroup v1 freezer hierarchy, where a frozen task stays frozen when
/// it is killed: the host's, else (cgroup v2 has no such freezer) mounted
/// at `/run/oomtrace-freezer` when `mount` is allowed (the VMs).
pub fn v1_freezer() -> Option<PathBuf> {
    let p = PathBuf::from("/sys/fs/cgroup/freezer");
    if p.join("tasks").exists() {
        return Some(p);
    }
    let p = PathBuf::from("/run/oomtrace-freezer");
    if p.join("tasks").exists() {
        return Some(p);
    }
    fs::create_dir_all(&p).ok()?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "cgroup", "-o", "freezer", "freezer"])
        .arg(&p)
        .status()
        .is_ok_and(|s| s.success());
    (mounted && p.join("tasks").exists()).then_some(p)
}

/// `outcome` on the agent's reports of real kills in a kubelet-shaped
/// container cgroup: the init of a new PID namespace (the container's main
/// process) and a child of that init (the container keeps running, with
/// the init and `unshare` left in its cgroup).
pub fn outcome_checks() {
    use super::{Agent, i, s};
    let agent = Agent::start(&[]);
    let rel = format!(
        "oomtrace-test-outcome-{}/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
        std::process::id()
    );
    let top = Memcg::create(rel.split('/').next().expect("top"));
    let cg = Memcg::create(&rel);
    cg.set_limit(32 << 20);
    let dd = "dd if=/dev/zero of=/dev/null bs=128M count=1 status=none";
    let in_cg = |v: &serde_json::Value| s(v, &["victim", "cgroup"]) == Some(cg.rel.as_str());

    // The init of its PID namespace.
    let mut c = spawn_in(&cg, 800, &format!("unshare --pid --fork {dd}"));
    let _ = c.wait();
    let init = agent.events(1, Duration::from_secs(15), in_cg);
    // A child of the init: sh stays (exec sleep) after dd is killed, for
    // as long as a slow guest needs to report the kill (a fixed 3 s raced
    // the report on three emulated VMs sharing two cores); removing the
    // cgroup ends it.
    let mut c = spawn_in(
        &cg,
        800,
        &format!("unshare --pid --fork sh -c '{dd}; exec sleep 120'"),
    );
    let child = agent.events(1, Duration::from_secs(15), in_cg);
    drop(cg);
    let _ = c.wait();
    let (_, log) = agent.stop();
    drop(top);
    assert_eq!(init.len(), 1, "the init's kill: stderr:\n{log}");
    assert_eq!(child.len(), 1, "the child's kill: stderr:\n{log}");
    let (init, child) = (&init[0], &child[0]);
    for e in [init, child] {
        assert_eq!(s(e, &["victim", "comm"]), Some("dd"), "{e:#}");
        assert_eq!(e["outcome"]["group_kill"], false, "{e:#}");
    }
    assert_eq!(e_main(init), Some(true), "{init:#}");
    assert!(
        s(init, &["explanation"])
            .is_some_and(|x| x.contains("It was the container's main process")),
        "{init:#}"
    );
    assert_eq!(e_main(child), Some(false), "{child:#}");
    // unshare and sh (sleeping) are left; dd is not counted.
    assert_eq!(i(child, &["outcome", "survivors"]), Some(2), "{child:#}");
    assert!(
        s(child, &["explanation"]).is_some_and(|x| x.contains(
            "A child process was killed; the container kept running; 2 processes are left in its container"
        )),
        "{child:#}"
    );
    eprintln!(
        "init: outcome {}; child: outcome {}, explanation: {}",
        init["outcome"], child["outcome"], child["explanation"]
    );
}

fn e_main(e: &serde_json::Value) -> Option<bool> {
    e["outcome"]["main_process"].as_bool()
}

/// A tmpfs holding 32 MiB of a container cgroup's 64 MiB limit (a
/// memory-backed emptyDir), then a process that needs more: the kill's
/// `memcg.oom_stat` shows the shared memory, and the explanation and advice
/// say what to do about it.
pub fn oom_stat_checks() {
    use super::{Agent, i, s};
    let agent = Agent::start(&[]);
    let rel = format!(
        "oomtrace-test-oomstat-{}/kubepods/burstable/pod3e61aa2b-7c1d-4c7e-9d39-2c1f0a6b8e11/9c1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d",
        std::process::id()
    );
    let top = Memcg::create(rel.split('/').next().expect("top"));
    let cg = Memcg::create(&rel);
    cg.set_limit(64 << 20);
    let tmpfs = std::env::temp_dir().join(format!("oomtrace-test-emptydir-{}", std::process::id()));
    fs::create_dir_all(&tmpfs).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&tmpfs)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mount a tmpfs at {}", tmpfs.display());
    // The writer's cgroup is charged for the tmpfs pages, and stays charged.
    let mut w = spawn_in(
        &cg,
        0,
        &format!(
            "dd if=/dev/zero of={}/data bs=1M count=32 status=none",
            tmpfs.display()
        ),
    );
    let written = w.wait().expect("writer");
    let (pid, status) = super::run_hog(&cg, 800, 128);
    let in_cg = |v: &serde_json::Value| s(v, &["victim", "cgroup"]) == Some(cg.rel.as_str());
    let events = agent.events(1, Duration::from_secs(15), in_cg);
    let (_, log) = agent.stop();
    let _ = std::process::Command::new("umount").arg(&tmpfs).status();
    let _ = fs::remove_dir(&tmpfs);
    drop(cg);
    drop(top);
    assert!(written.success(), "the tmpfs writer: {written:?}");
    assert!(super::killed_by_sigkill(&status), "{status:?}");
    assert_eq!(events.len(), 1, "stderr:\n{log}");
    let e = &events[0];
    assert_eq!(i(e, &["victim", "pid"]), Some(i64::from(pid)), "{e:#}");
    let stat = &e["memcg"]["oom_stat"];
    let shmem = i(e, &["memcg", "oom_stat", "shmem_bytes"]).expect("shmem_bytes");
    assert!(
        (31 << 20..=33 << 20).contains(&shmem),
        "the 32 MiB tmpfs file: {stat}"
    );
    let file = i(e, &["memcg", "oom_stat", "file_bytes"]).expect("file_bytes");
    assert!(file >= shmem, "the page cache holds the tmpfs: {stat}");
    assert!(
        i(e, &["memcg", "oom_stat", "anon_bytes"]).is_some(),
        "{stat}"
    );
    assert!(
        !e["missing"]
            .as_array()
            .expect("missing")
            .iter()
            .any(|m| m.as_str().is_some_and(|m| m.starts_with("memcg.oom_stat"))),
        "read when the victim was first seen: {e:#}"
    );
    let explanation = s(e, &["explanation"]).expect("explanation");
    assert!(
        explanation.contains("was shared memory (tmpfs): a memory-backed emptyDir"),
        "{e:#}"
    );
    assert!(
        s(e, &["advice"]).is_some_and(|a| a.contains("sizeLimit")),
        "{e:#}"
    );
    eprintln!("oom_stat {stat}; explanation: {explanation}");
}

/// The agent without the kernel log: the OOM killer's own SIGKILL, seen by
/// the signal hook, confirms a memcg kill (reported at once, nothing
/// unconfirmed in `missing`); a frozen, SIGKILLed holder the OOM killer
/// only marks (already exiting) is not reported and is counted as "not
/// killed" in the exit summary.
pub fn sigkill_confirmation_checks(freezer: &std::path::Path) {
    use super::{Agent, i, killed_by_sigkill, run_hog};
    let agent = Agent::start(&["--no-kmsg"]);
    let cg = Memcg::unique("confirm");
    cg.set_limit(32 << 20);
    let (pid, status) = run_hog(&cg, 500, 128);
    assert!(killed_by_sigkill(&status), "{status:?}");
    let killed = agent.events(1, Duration::from_secs(15), |v| {
        i(v, &["victim", "pid"]) == Some(i64::from(pid))
    });

    let ex = Memcg::unique("confirm-exiting");
    ex.set_limit(96 << 20);
    let fz = freezer.join(format!("oomtrace-test-confirm-{}", std::process::id()));
    let _ = fs::create_dir(&fz);
    let mut holder = spawn_holder(&ex, 1000, 48);
    let hpid = holder.id();
    wait_rss(hpid, 48 * 1024);
    fs::write(fz.join("tasks"), hpid.to_string()).expect("freezer tasks");
    fs::write(fz.join("freezer.state"), "FROZEN").expect("freeze");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(fz.join("freezer.state"))
        .unwrap_or_default()
        .trim()
        != "FROZEN"
    {
        assert!(Instant::now() < deadline, "the holder never froze");
        thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: plain syscall to our own child.
    unsafe { libc::kill(hpid as i32, libc::SIGKILL) };
    thread::sleep(Duration::from_millis(100));
    let mut hog = spawn_in(
        &ex,
        0,
        "dd if=/dev/zero of=/dev/null bs=80M count=1 status=none",
    );
    let hog_status = hog.wait().expect("hog");
    let _ = fs::write(fz.join("freezer.state"), "THAWED");
    let _ = holder.wait();
    // Past the correlation wait (1 s): a report would have come.
    let reaped = agent.events(1, Duration::from_secs(3), |v| {
        i(v, &["victim", "pid"]) == Some(i64::from(hpid))
    });
    let (_, log) = agent.stop();
    let _ = fs::remove_dir(&fz);
    assert_eq!(killed.len(), 1, "the memcg kill: stderr:\n{log}");
    let e = &killed[0];
    assert!(
        !e["missing"].as_array().expect("missing").iter().any(|m| m
            .as_str()
            .is_some_and(|m| m.starts_with("kill confirmation"))),
        "the SIGKILL confirms it: {e:#}"
    );
    assert!(
        log.contains("active: tp_btf/signal_generate")
            || log.contains("active: tracepoint/signal/signal_generate"),
        "{log}"
    );
    assert!(
        reaped.is_empty(),
        "the holder was only reaped, not killed: {reaped:?}\n{log}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains("oomtrace: exiting:"))
        .unwrap_or_default();
    assert!(
        summary.contains(" 1 marked victims not killed"),
        "the holder was marked and set aside: {summary}\n{log}"
    );
    eprintln!(
        "memcg kill {pid} confirmed; holder {hpid} not reported (hog {hog_status:?}); {summary}"
    );
}
