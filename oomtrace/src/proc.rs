//! Processes of the node's `/proc` (`--proc`; `/host/proc` in a DaemonSet),
//! read with the procfs crate.
//!
//! A [`Pinned`] process holds a file descriptor on its `/proc/<pid>`
//! directory and reads every file relative to it. Once the process has been
//! reaped, each read through that descriptor fails: a pid the kernel has
//! handed to a new process is never read as the old one. The start time read
//! when the process is opened is compared again after the reads that must
//! describe one living process ([`Pinned::recheck`]).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use procfs::process::{Process, Stat};

/// `PF_EXITING` in the flags of `/proc/<pid>/stat` (include/linux/sched.h).
const PF_EXITING: u32 = 0x0000_0004;
/// `PF_KTHREAD`: a kernel thread, never an OOM victim.
const PF_KTHREAD: u32 = 0x0020_0000;
/// How much later than a kill a victim's start time may read and still be
/// the victim: the start time is floored to clock ticks, and the kernel
/// log's clock (`local_clock`) and `CLOCK_MONOTONIC` drift apart by a few
/// milliseconds. A pid is handed out again only after the pid space wrapped,
/// which takes far longer.
const START_SLACK: Duration = Duration::from_millis(100);

/// Errors reading a process of the node's `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error(
        "cannot list processes in {}: {source}; mount the host's /proc there or pass --proc",
        path.display()
    )]
    List {
        path: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
    #[error("cannot open {}: {source} (the process may have exited)", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
    #[error("cannot read {file} of pid {pid}: {source} (the process may have exited)")]
    Read {
        pid: u32,
        file: &'static str,
        #[source]
        source: procfs::ProcError,
    },
    #[error(
        "pid {pid} is another process than when it was opened (start time {before}, now {after})"
    )]
    Replaced { pid: u32, before: u64, after: u64 },
}

/// A process's memory as `/proc/<pid>/status` shows it, in kB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusMem {
    /// `None` when the process has no mm (kernel thread, zombie).
    pub rss_kb: Option<u64>,
    pub swap_kb: u64,
    pub pgtables_kb: u64,
}

impl From<&procfs::process::Status> for StatusMem {
    fn from(s: &procfs::process::Status) -> Self {
        Self {
            rss_kb: s.vmrss,
            swap_kb: s.vmswap.unwrap_or(0),
            pgtables_kb: s.vmpte.unwrap_or(0),
        }
    }
}

/// One process, pinned by a descriptor on its `/proc/<pid>` directory.
#[derive(Debug)]
pub struct Pinned {
    process: Process,
    pid: u32,
    /// `/proc/<pid>/stat` as read when the process was opened.
    stat: Stat,
}

impl Pinned {
    /// Opens `<proc_root>/<pid>` and reads its `stat`.
    pub fn open(proc_root: &Path, pid: u32) -> Result<Self, ProcError> {
        let path = proc_root.join(pid.to_string());
        let process = Process::new_with_root(path.clone())
            .map_err(|source| ProcError::Open { path, source })?;
        Self::pin(process, pid)
    }

    fn pin(process: Process, pid: u32) -> Result<Self, ProcError> {
        let stat = process.stat().map_err(|source| ProcError::Read {
            pid,
            file: "stat",
            source,
        })?;
        Ok(Self { process, pid, stat })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command name (`comm`, up to 15 bytes; may hold `(`, `)`, spaces).
    pub fn comm(&self) -> &str {
        &self.stat.comm
    }

    /// Start time in clock ticks after boot (field 22 of `stat`).
    pub fn start_ticks(&self) -> u64 {
        self.stat.starttime
    }

    /// A kernel thread (`PF_KTHREAD`): it has no memory of its own.
    pub fn is_kernel_thread(&self) -> bool {
        self.stat.flags & PF_KTHREAD != 0
    }

    fn read<T>(
        &self,
        file: &'static str,
        f: impl FnOnce(&Process) -> procfs::ProcResult<T>,
    ) -> Result<T, ProcError> {
        f(&self.process).map_err(|source| ProcError::Read {
            pid: self.pid,
            file,
            source,
        })
    }

    /// RSS, swap and page tables from `status`.
    pub fn memory(&self) -> Result<StatusMem, ProcError> {
        self.read("status", Process::status)
            .map(|s| StatusMem::from(&s))
    }

    /// The whole `status` file (memory by kind, uid, namespaced pids).
    pub fn status(&self) -> Result<procfs::process::Status, ProcError> {
        self.read("status", Process::status)
    }

    /// The executable (`exe`; reading another user's needs `CAP_SYS_PTRACE`).
    pub fn exe(&self) -> Result<PathBuf, ProcError> {
        self.read("exe", Process::exe)
    }

    /// The command line, one string per argument.
    pub fn cmdline(&self) -> Result<Vec<String>, ProcError> {
        self.read("cmdline", Process::cmdline)
    }

    /// Whether the process has exited since it was opened: reaped (its
    /// `/proc` entry is gone), a zombie, or another process (never expected
    /// through a pinned descriptor).
    pub fn exited(&self) -> bool {
        self.recheck().map_or(true, |s| is_dead(&s))
    }

    /// `oom_score_adj` (-1000..=1000).
    pub fn oom_score_adj(&self) -> Result<i32, ProcError> {
        self.read("oom_score_adj", Process::oom_score_adj)
            .map(i32::from)
    }

    /// The kernel's `oom_score` (against the whole node's memory).
    pub fn oom_score(&self) -> Result<u32, ProcError> {
        self.read("oom_score", Process::oom_score).map(u32::from)
    }

    /// The memory cgroup path as `cgroup` shows it (relative to the reader's
    /// cgroup namespace); `None` when no line names one.
    pub fn memory_cgroup(&self) -> Result<Option<String>, ProcError> {
        self.read("cgroup", Process::cgroups)
            .map(|groups| memory_cgroup_of(&groups))
    }

    /// Reads `stat` again through the same descriptor: fails when the
    /// process has been reaped since it was opened, or (never expected
    /// through a pinned descriptor) when it is another process.
    pub fn recheck(&self) -> Result<Stat, ProcError> {
        let now = self.read("stat", Process::stat)?;
        if now.starttime != self.stat.starttime {
            return Err(ProcError::Replaced {
                pid: self.pid,
                before: self.stat.starttime,
                after: now.starttime,
            });
        }
        Ok(now)
    }

    /// Whether this process started after `killed_at` (time since boot on
    /// `CLOCK_MONOTONIC`, as the eBPF records and the kernel log stamp a
    /// kill): then it is not the process that was killed, but a later one
    /// that got its pid.
    pub fn started_after(&self, killed_at: Duration) -> bool {
        let ticks = procfs::ticks_per_second().max(1);
        let start = Duration::from_secs(self.stat.starttime / ticks)
            + Duration::from_nanos((self.stat.starttime % ticks) * 1_000_000_000 / ticks);
        // The start time counts on CLOCK_BOOTTIME, which also runs while suspended.
        start > killed_at + boottime_ahead() + START_SLACK
    }
}

/// Zombie (`Z`) or dead (`X`).
fn is_dead(stat: &Stat) -> bool {
    matches!(stat.state, 'Z' | 'X')
}

/// How far `CLOCK_BOOTTIME` is ahead of `CLOCK_MONOTONIC` (time suspended).
pub fn boottime_ahead() -> Duration {
    let ns = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    let ahead = ns(libc::CLOCK_BOOTTIME) - ns(libc::CLOCK_MONOTONIC);
    Duration::from_nanos(u64::try_from(ahead).unwrap_or(0))
}

/// The memory cgroup of a process from its `/proc/<pid>/cgroup`: the v1
/// line of the `memory` controller, else the v2 line (`0::/path`).
pub fn memory_cgroup_of(groups: &procfs::ProcessCGroups) -> Option<String> {
    groups
        .0
        .iter()
        .find(|g| g.controllers.iter().any(|c| c == "memory"))
        .or_else(|| {
            groups
                .0
                .iter()
                .find(|g| g.hierarchy == 0 && g.controllers.is_empty())
        })
        .map(|g| g.pathname.clone())
}

/// Every process of `proc_root`, opened and pinned. Processes that exit
/// before they are opened are skipped.
pub fn all(proc_root: &Path) -> Result<impl Iterator<Item = Pinned>, ProcError> {
    let iter =
        procfs::process::all_processes_with_root(proc_root).map_err(|source| ProcError::List {
            path: proc_root.to_owned(),
            source,
        })?;
    Ok(iter.filter_map(|p| {
        let p = p.ok()?;
        let pid = u32::try_from(p.pid).ok()?;
        Pinned::pin(p, pid).ok()
    }))
}

/// The memory cgroup of a (dying) victim, from `/proc/<pid>/cgroup`.
///
/// Paths relative to a cgroup namespace (`/..`) are not the node's: ignored.
/// An exited task has been moved to the root cgroup (cgroup v1 shows `/` for
/// zombies), so a zombie, or an exiting task that shows `/`, gives `None`:
/// better missing than wrong. `killed_at` (time since boot on
/// `CLOCK_MONOTONIC`) rejects a process that started after the kill: the
/// victim is gone and its pid belongs to another process.
pub fn victim_cgroup(proc_root: &Path, pid: u32, killed_at: Option<Duration>) -> Option<String> {
    let p = Pinned::open(proc_root, pid).ok()?;
    if is_dead(&p.stat) || killed_at.is_some_and(|t| p.started_after(t)) {
        return None;
    }
    let path = p.memory_cgroup().ok()??;
    if !path.starts_with('/') || path.contains("/..") {
        return None;
    }
    let after = p.recheck().ok()?;
    let leaving = after.flags & PF_EXITING != 0;
    if is_dead(&after) || (leaving && path == "/") {
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        process::{Command, Stdio},
    };

    use procfs::FromRead as _;

    use super::*;

    use crate::testdata::node as data;

    /// A real `/proc/<pid>/stat` of a sleeping process on the 6.18 host.
    const STAT: &str = include_str!("../tests/data/node/host-6.18.proc-sleep.stat");

    /// A `/proc` with one process directory holding real files.
    fn proc_with(pid: u32, files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join(pid.to_string());
        fs::create_dir(&dir).expect("mkdir");
        for (name, text) in files {
            fs::write(dir.join(name), text).expect("write");
        }
        root
    }

    #[test]
    fn a_process_and_a_kernel_thread_from_real_files() {
        let root = proc_with(
            15239,
            &[
                ("stat", STAT),
                ("status", &data("host-6.18.proc-sleep.status")),
                ("oom_score_adj", &data("host-6.18.proc-sleep.oom_score_adj")),
                ("oom_score", &data("host-6.18.proc-sleep.oom_score")),
                ("cgroup", &data("host-6.18.proc-pid-cgroup.v1.txt")),
            ],
        );
        let p = Pinned::open(root.path(), 15239).expect("open");
        assert_eq!((p.pid(), p.comm()), (15239, "sleep"));
        assert!(!p.is_kernel_thread());
        assert_eq!(p.start_ticks(), 46227);
        assert_eq!(
            p.memory().expect("status"),
            StatusMem {
                rss_kb: Some(1788),
                swap_kb: 0,
                pgtables_kb: 48
            }
        );
        assert_eq!(p.oom_score_adj().expect("adj"), 0);
        assert_eq!(p.oom_score().expect("score"), 666);
        assert_eq!(
            p.memory_cgroup().expect("cgroup").as_deref(),
            Some("/oomtrace-capture-13480")
        );

        let root = proc_with(
            2,
            &[
                ("stat", &data("host-6.18.proc-kthreadd.stat")),
                ("status", &data("host-6.18.proc-kthreadd.status")),
            ],
        );
        let k = Pinned::open(root.path(), 2).expect("open");
        assert_eq!(k.comm(), "kthreadd");
        assert!(k.is_kernel_thread());
        assert_eq!(k.memory().expect("status").rss_kb, None, "no mm");

        let root = proc_with(4242, &[("stat", &data("host-6.18.proc-paren-comm.stat"))]);
        let p = Pinned::open(root.path(), 4242).expect("open");
        assert_eq!(
            p.comm(),
            "od) (x y",
            "comm between the first ( and the last )"
        );
    }

    #[test]
    fn memory_cgroup_v1_and_v2() {
        let parse = |t: &str| {
            procfs::ProcessCGroups::from_read(t.as_bytes())
                .map(|g| memory_cgroup_of(&g))
                .expect("cgroup file")
        };
        assert_eq!(
            parse(&data("host-6.18.proc-pid-cgroup.v1.txt")).as_deref(),
            Some("/oomtrace-capture-13480"),
            "the memory line wins over the v2 line `0::/` of a hybrid host"
        );
        let v2 = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3e61aa2b_7c1d_4c7e_9d39_2c1f0a6b8e11.slice/cri-containerd-0123.scope\n";
        assert_eq!(parse(v2).as_deref(), Some(&v2[3..v2.len() - 1]));
        assert_eq!(parse(""), None);
    }

    #[test]
    fn a_dying_victims_cgroup_is_read_but_never_the_root_an_exited_task_shows() {
        let v1 = "12:memory:/oomtrace-test/app\n4:pids:/\n";
        let live = proc_with(15239, &[("stat", STAT), ("cgroup", v1)]);
        assert_eq!(
            victim_cgroup(live.path(), 15239, None).as_deref(),
            Some("/oomtrace-test/app")
        );
        // A zombie: cgroup v1 moved it to the root; nothing is better than "/".
        let zombie = STAT.replacen(" S ", " Z ", 1);
        let zombie = proc_with(15239, &[("stat", &zombie), ("cgroup", "12:memory:/\n")]);
        assert_eq!(victim_cgroup(zombie.path(), 15239, None), None);
        // Exiting (PF_EXITING, 0x4, in the flags field 4194304 -> 4194308) and showing "/".
        let exiting = STAT.replacen(" 4194304 ", " 4194308 ", 1);
        let leaving = proc_with(15239, &[("stat", &exiting), ("cgroup", "12:memory:/\n")]);
        assert_eq!(victim_cgroup(leaving.path(), 15239, None), None);
        // Exiting but still in its own cgroup: the path is right.
        let still = proc_with(15239, &[("stat", &exiting), ("cgroup", v1)]);
        assert_eq!(
            victim_cgroup(still.path(), 15239, None).as_deref(),
            Some("/oomtrace-test/app")
        );
        // Inside a cgroup namespace the path is not the node's.
        let ns = proc_with(
            15239,
            &[("stat", STAT), ("cgroup", "0::/../../kubepods.slice\n")],
        );
        assert_eq!(victim_cgroup(ns.path(), 15239, None), None);
        assert_eq!(victim_cgroup(live.path(), 1, None), None, "gone");
    }

    #[test]
    fn a_process_that_started_after_the_kill_is_not_the_victim() {
        let v1 = "12:memory:/oomtrace-test/app\n";
        let live = proc_with(15239, &[("stat", STAT), ("cgroup", v1)]);
        // The sample started 46227 ticks after boot.
        let ticks = procfs::ticks_per_second();
        let start = Duration::from_millis(46227 * 1000 / ticks);
        let ahead = boottime_ahead();
        assert_eq!(
            victim_cgroup(live.path(), 15239, Some(start + ahead)).as_deref(),
            Some("/oomtrace-test/app"),
            "killed right after it started"
        );
        assert_eq!(
            victim_cgroup(
                live.path(),
                15239,
                Some(start.saturating_sub(Duration::from_secs(1)))
            ),
            None,
            "started a second after the kill: another process with the victim's pid"
        );
    }

    /// A real process, pinned, reaped, and its pid given to another process
    /// (in a new pid namespace, where `ns_last_pid` picks the next pid):
    /// nothing is read from the new process through the old handle.
    #[test]
    #[ignore = "privileged: needs root (unshare --pid, ns_last_pid); run by cargo xtask test"]
    fn a_pinned_process_is_never_read_through_a_recycled_pid() {
        const INNER: &str = "OOMTRACE_TEST_PIDNS_INNER";
        if std::env::var_os(INNER).is_some() {
            return recycled_pid_inside_a_pid_namespace();
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(exe)
            .args([
                "--ignored",
                "--exact",
                "proc::tests::a_pinned_process_is_never_read_through_a_recycled_pid",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INNER, "1")
            .stdin(Stdio::null())
            .output()
            .expect("run unshare (util-linux)");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{log}");
        assert!(out.status.success(), "inner test failed: {log}");
        assert!(
            log.contains("1 passed"),
            "the inner test did not run: {log}"
        );
    }

    fn recycled_pid_inside_a_pid_namespace() {
        assert_eq!(std::process::id(), 1, "runs as init of a new pid namespace");
        let proc_root = Path::new("/proc");
        let spawn = || {
            Command::new("sleep")
                .arg("300")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep")
        };
        let mut first = spawn();
        let pid = first.id();
        let old = Pinned::open(proc_root, pid).expect("open the first process");
        assert_eq!(old.comm(), "sleep");
        assert!(old.memory().expect("status").rss_kb.is_some());
        let cgroup = old.memory_cgroup().expect("cgroup");
        first.kill().expect("kill");
        first.wait().expect("reap");
        let killed_at = monotonic();
        // Past the start-time slack, so the new process provably started later.
        std::thread::sleep(START_SLACK + Duration::from_millis(200));
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write ns_last_pid");
        let mut second = spawn();
        assert_eq!(second.id(), pid, "the pid was handed out again");

        // Through the old handle: every read fails, nothing of the new process.
        assert!(old.recheck().is_err(), "stat through a reaped handle");
        assert!(old.memory().is_err(), "status through a reaped handle");
        assert!(old.oom_score_adj().is_err());
        assert!(old.memory_cgroup().is_err());
        // Opened anew: the new process, with a later start time.
        let new = Pinned::open(proc_root, pid).expect("open the second process");
        assert!(new.start_ticks() > old.start_ticks(), "{new:?} vs {old:?}");
        assert_eq!(new.memory_cgroup().expect("cgroup"), cgroup);
        // The victim's cgroup is not taken from the process that got its pid.
        assert_eq!(victim_cgroup(proc_root, pid, Some(killed_at)), None);
        assert_eq!(victim_cgroup(proc_root, pid, None), cgroup);
        second.kill().expect("kill");
        second.wait().expect("reap");
        eprintln!(
            "pid {pid}: start {} then {} ticks; the pinned handle read nothing of the second",
            old.start_ticks(),
            new.start_ticks()
        );
    }

    fn monotonic() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Duration::new(
            u64::try_from(ts.tv_sec).expect("time"),
            u32::try_from(ts.tv_nsec).expect("ns"),
        )
    }
}
