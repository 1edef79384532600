//! Userspace OOM killers: the senders of the SIGKILLs and SIGTERMs the
//! signal hook keeps, confirmed on a thread beside the draining.
//!
//! The kernel side keeps a signal when its sender's name is on
//! `--userspace-killers`. Any process can take any name, so a name is only a
//! prefilter: a sender is a memory killer once its executable is that
//! killer's ([`KNOWN`]) and it runs in the node's PID and mount namespaces
//! (those of `<proc>/1`), not in a container. Senders are checked once per
//! (pid, start time).
//!
//! A confirmed sender's signal goes to the correlator with what `/proc` says
//! about the victim while it is still there ([`VictimProc`]). A SIGTERM (or
//! a SIGKILL the kernel ignored) kills only if the victim exits on it: the
//! victim's `/proc` entry is pinned and polled for [`TERM_WAIT`], and its
//! fate ([`VictimFate`]) follows its signal on the same channel.

use std::{
    collections::HashMap,
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::sync::mpsc::Sender;
use tracing::{debug, info};

use super::{Input, SignalSighting};
use crate::proc::{Pinned, ProcError, boottime_ahead};

/// Signals waiting to be checked; beyond this they are dropped and counted.
const QUEUE: usize = 1024;
/// How long a SIGTERM's victim is watched for its exit. earlyoom and nohang
/// escalate to SIGKILL within 10 s of a SIGTERM that did not free memory.
pub const TERM_WAIT: Duration = Duration::from_secs(15);
/// How often watched victims are looked at.
const POLL: Duration = Duration::from_millis(50);
/// Senders remembered (confirmed or not).
const CACHE: usize = 256;
/// `enum trace_signal_result`: the target ignores the signal.
pub const RESULT_IGNORED: i32 = 1;

/// The userspace OOM killers oomtrace knows, by the process name the kernel
/// side filters on, with the executable that confirms each.
pub const KNOWN: &[Known] = &[
    Known {
        comm: "earlyoom",
        name: "earlyoom",
        exe: ExeRule::FileName("earlyoom"),
    },
    Known {
        comm: "systemd-oomd",
        name: "systemd-oomd",
        exe: ExeRule::FileName("systemd-oomd"),
    },
    Known {
        comm: "oomd",
        name: "oomd",
        exe: ExeRule::FileName("oomd"),
    },
    Known {
        comm: "nohang",
        name: "nohang",
        exe: ExeRule::PythonScript("nohang"),
    },
    Known {
        comm: "init",
        name: "talos-machined",
        exe: ExeRule::TalosInit,
    },
];

/// One known killer.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// Its `comm` (what the kernel side filters on).
    pub comm: &'static str,
    /// Its name in reports (`killer.name`).
    pub name: &'static str,
    pub exe: ExeRule,
}

/// What confirms a killer's executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExeRule {
    /// `/proc/<pid>/exe` has this file name (a package upgrade that replaced
    /// the binary under a running daemon, ` (deleted)`, is accepted).
    FileName(&'static str),
    /// A Python script: the executable is a `python3*` interpreter and an
    /// argument is a script of this file name (a script's `comm` is its file
    /// name, its executable the interpreter).
    PythonScript(&'static str),
    /// Talos Linux's `machined`: PID 1, executable `init`, on a kernel booted
    /// with `talos.platform=` (every Talos boot has it). Other systems' PID 1
    /// named `init` (sysvinit, busybox) send SIGTERM/SIGKILL at shutdown:
    /// not memory kills.
    TalosInit,
}

/// A sender confirmed as a userspace OOM killer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// `killer.name`: the known killer, else the process name.
    pub name: String,
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    /// Its memory cgroup.
    pub cgroup: Option<String>,
}

/// Why a sender is not a userspace OOM killer.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Unconfirmed {
    #[error("sender pid {pid} exited before it could be checked")]
    Gone { pid: u32 },
    #[error(
        "cannot read /proc/{pid}/{file}: {why}: the agent needs CAP_SYS_PTRACE to read another user's executable and namespaces"
    )]
    Unreadable {
        pid: u32,
        file: &'static str,
        why: String,
    },
    #[error(
        "pid {pid} ({comm}) runs {exe}, not {expected}: a process that took a memory killer's name"
    )]
    Executable {
        pid: u32,
        comm: String,
        exe: String,
        expected: String,
    },
    #[error(
        "pid {pid} ({comm}) runs in another {ns} namespace than the node's PID 1: a process in a container, not the node's memory killer"
    )]
    Namespace {
        pid: u32,
        comm: String,
        ns: &'static str,
    },
    #[error(
        "pid {pid} is named init but is not PID 1; only Talos's machined (PID 1) is taken for a memory killer under that name"
    )]
    NotPid1 { pid: u32 },
    #[error(
        "PID 1 is named init but the kernel was not booted by Talos (no talos.platform= in {cmdline}): another system's init, which signals processes at shutdown"
    )]
    NotTalos { cmdline: String },
}

/// The victim as `/proc` showed it when its killer's signal was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VictimProc {
    pub comm: String,
    pub cgroup: Option<String>,
    pub oom_score_adj: Option<i32>,
    pub uid: Option<u32>,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
}

/// A signal from a confirmed userspace OOM killer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillerSignal {
    pub sighting: SignalSighting,
    pub killer: Confirmed,
    /// `None` when the victim was gone (or another process) before `/proc` was read.
    pub victim: Option<VictimProc>,
}

impl KillerSignal {
    /// The victim's process id.
    pub fn victim_pid(&self) -> u32 {
        self.sighting
            .target_tgid
            .filter(|&t| t != 0)
            .unwrap_or(self.sighting.target_pid)
    }
}

/// Whether a watched SIGTERM victim exited within [`TERM_WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VictimFate {
    pub pid: u32,
    pub exited: bool,
}

/// What the checker counted, for the exit summary.
#[derive(Debug, Default)]
pub struct KillerStats {
    /// Signals whose sender was not confirmed (not reported).
    pub unconfirmed: AtomicU64,
    /// Signals dropped because the checker's queue was full.
    pub dropped: AtomicU64,
}

/// Asks the checker thread about signals; answers come back as
/// [`Input::KillerSignal`] and [`Input::KillerFate`] on the correlator's channel.
pub struct KillerCheck {
    requests: SyncSender<SignalSighting>,
    pub stats: Arc<KillerStats>,
}

impl KillerCheck {
    /// Starts the thread; it ends when the handle or the input channel is gone.
    pub fn spawn(proc_root: PathBuf, inputs: Sender<Input>) -> io::Result<Self> {
        let (requests, rx) = mpsc::sync_channel::<SignalSighting>(QUEUE);
        let stats = Arc::new(KillerStats::default());
        let mut checker = Checker::new(proc_root, Arc::clone(&stats));
        thread::Builder::new()
            .name("killer-check".into())
            .spawn(move || checker.run(&rx, &inputs))?;
        Ok(Self { requests, stats })
    }

    /// Queues a signal for checking (never blocks: a full queue drops it, counted).
    pub fn request(&self, s: SignalSighting) {
        match self.requests.try_send(s) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A SIGTERM victim being watched.
struct Watched {
    pid: u32,
    pinned: Option<Pinned>,
    until: Instant,
}

/// The checker's state: the sender cache and the watched victims.
pub struct Checker {
    proc_root: PathBuf,
    cache: HashMap<(u32, u64), Result<Confirmed, Unconfirmed>>,
    watched: Vec<Watched>,
    stats: Arc<KillerStats>,
    told: bool,
}

impl Checker {
    pub fn new(proc_root: PathBuf, stats: Arc<KillerStats>) -> Self {
        Self {
            proc_root,
            cache: HashMap::new(),
            watched: Vec::new(),
            stats,
            told: false,
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<SignalSighting>, inputs: &Sender<Input>) {
        loop {
            let wait = if self.watched.is_empty() {
                Duration::from_secs(3600)
            } else {
                POLL
            };
            match rx.recv_timeout(wait) {
                Ok(s) => {
                    if let Some(input) = self.check(s)
                        && inputs.blocking_send(input).is_err()
                    {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for fate in self.poll(Instant::now()) {
                if inputs.blocking_send(Input::KillerFate(fate)).is_err() {
                    return;
                }
            }
        }
    }

    /// Checks one signal: the input for the correlator when its sender is a
    /// confirmed killer (a SIGTERM's victim is then watched for its exit).
    pub fn check(&mut self, s: SignalSighting) -> Option<Input> {
        let killer = match self.sender(s.meta.trigger.tgid, &s.meta.trigger.comm) {
            Ok(k) => k,
            Err(why) => {
                self.stats.unconfirmed.fetch_add(1, Ordering::Relaxed);
                if !self.told {
                    self.told = true;
                    info!(
                        "signal {} to pid {} not reported: {why} (said once; more at debug)",
                        s.sig, s.target_pid
                    );
                } else {
                    debug!(
                        "signal {} to pid {} not reported: {why}",
                        s.sig, s.target_pid
                    );
                }
                return None;
            }
        };
        let signal = KillerSignal {
            victim: None,
            killer,
            sighting: s,
        };
        let pid = signal.victim_pid();
        let pinned = Pinned::open(&self.proc_root, pid)
            .ok()
            .filter(|p| same_task(p, signal.sighting.target_start_time_ns));
        let victim = pinned.as_ref().map(victim_proc);
        let kills_now =
            signal.sighting.sig == libc::SIGKILL && signal.sighting.result != RESULT_IGNORED;
        if !kills_now && !self.watched.iter().any(|w| w.pid == pid) {
            self.watched.push(Watched {
                pid,
                pinned,
                until: Instant::now() + TERM_WAIT,
            });
        }
        Some(Input::KillerSignal(KillerSignal { victim, ..signal }))
    }

    /// The fates of watched victims decided by `now`: exited, or still alive
    /// after [`TERM_WAIT`].
    pub fn poll(&mut self, now: Instant) -> Vec<VictimFate> {
        let mut fates = Vec::new();
        self.watched.retain(|w| {
            let exited = w.pinned.as_ref().is_none_or(Pinned::exited);
            if exited || now >= w.until {
                fates.push(VictimFate { pid: w.pid, exited });
                false
            } else {
                true
            }
        });
        fates
    }

    /// Confirms the sender `pid` (cached per pid and start time).
    pub fn sender(&mut self, pid: u32, comm: &str) -> Result<Confirmed, Unconfirmed> {
        let Ok(p) = Pinned::open(&self.proc_root, pid) else {
            return Err(Unconfirmed::Gone { pid });
        };
        let key = (pid, p.start_ticks());
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let r = confirm(&self.proc_root, &p, comm);
        if p.recheck().is_err() {
            return Err(Unconfirmed::Gone { pid });
        }
        if self.cache.len() >= CACHE {
            self.cache.clear();
        }
        self.cache.insert(key, r.clone());
        r
    }
}

/// Whether the pinned process is the signal's target: the same start time
/// (tp_btf gives it in ns; `/proc` in clock ticks), when both are known.
fn same_task(p: &Pinned, start_ns: Option<u64>) -> bool {
    let Some(ns) = start_ns else {
        return true;
    };
    let ticks = procfs::ticks_per_second().max(1);
    // /proc counts from boot on CLOCK_BOOTTIME, which runs on while suspended.
    let ns = ns + u64::try_from(boottime_ahead().as_nanos()).unwrap_or(0);
    (ns / (1_000_000_000 / ticks)).abs_diff(p.start_ticks()) <= 1
}

/// What `/proc` says about a victim that is still there (a read that fails
/// because it was reaped meanwhile leaves its field unknown).
fn victim_proc(p: &Pinned) -> VictimProc {
    let status = p.status().ok();
    let cgroup = p
        .memory_cgroup()
        .ok()
        .flatten()
        .filter(|c| c.starts_with('/') && !c.contains("/.."));
    VictimProc {
        comm: p.comm().to_string(),
        cgroup,
        oom_score_adj: p.oom_score_adj().ok(),
        uid: status.as_ref().map(|s| s.ruid),
        total_vm_kb: status.as_ref().and_then(|s| s.vmsize),
        anon_rss_kb: status.as_ref().and_then(|s| s.rssanon),
        file_rss_kb: status.as_ref().and_then(|s| s.rssfile),
        shmem_rss_kb: status.as_ref().and_then(|s| s.rssshmem),
        pgtables_kb: status.as_ref().and_then(|s| s.vmpte),
    }
}

/// The checks of one sender, in order: a known killer's executable (or,
/// for a name not in [`KNOWN`], an executable of that very name), then the
/// node's PID and mount namespaces.
fn confirm(proc_root: &Path, p: &Pinned, comm: &str) -> Result<Confirmed, Unconfirmed> {
    let pid = p.pid();
    let known = KNOWN.iter().find(|k| k.comm == comm);
    let exe = match p.exe() {
        Ok(e) => e.display().to_string(),
        Err(e) => {
            return Err(Unconfirmed::Unreadable {
                pid,
                file: "exe",
                why: root_cause(&e),
            });
        }
    };
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string();
    let expected = match known.map(|k| k.exe) {
        None => named(&exe, comm),
        Some(ExeRule::FileName(name)) => named(&exe, name),
        Some(ExeRule::PythonScript(script)) => {
            let interpreter = file_name(&exe).starts_with("python");
            let args = p.cmdline().unwrap_or_default();
            (interpreter && args.iter().skip(1).any(|a| file_name(a) == script))
                .then_some(())
                .ok_or_else(|| format!("a python3 interpreter running the {script} script"))
        }
        Some(ExeRule::TalosInit) => {
            if pid != 1 {
                return Err(Unconfirmed::NotPid1 { pid });
            }
            let cmdline = fs::read_to_string(proc_root.join("cmdline")).unwrap_or_default();
            if !cmdline
                .split_whitespace()
                .any(|w| w.starts_with("talos.platform="))
            {
                return Err(Unconfirmed::NotTalos {
                    cmdline: format!("{}/cmdline", proc_root.display()),
                });
            }
            named(&exe, "init")
        }
    };
    if let Err(expected) = expected {
        return Err(Unconfirmed::Executable {
            pid,
            comm: comm.to_string(),
            exe,
            expected,
        });
    }
    for (ns, file) in [("pid", "ns/pid"), ("mnt", "ns/mnt")] {
        let link = |pid: u32| {
            fs::read_link(proc_root.join(pid.to_string()).join(file)).map_err(|e| {
                Unconfirmed::Unreadable {
                    pid,
                    file,
                    why: e.to_string(),
                }
            })
        };
        if link(pid)? != link(1)? {
            return Err(Unconfirmed::Namespace {
                pid,
                comm: comm.to_string(),
                ns,
            });
        }
    }
    Ok(Confirmed {
        name: known.map_or(comm, |k| k.name).to_string(),
        pid,
        comm: comm.to_string(),
        exe,
        cgroup: p.memory_cgroup().ok().flatten(),
    })
}

/// `exe` is a file called `name`: the kernel keeps at most 15 bytes of a
/// file name as `comm`, so a 15-byte name matches a longer file name.
fn named(exe: &str, name: &str) -> Result<(), String> {
    let file = file_name(exe);
    (file == name || (name.len() == 15 && file.starts_with(name)))
        .then_some(())
        .ok_or_else(|| format!("an executable named {name}"))
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The innermost error of a `/proc` read, without the path it wraps.
fn root_cause(e: &ProcError) -> String {
    let mut src: &dyn std::error::Error = e;
    while let Some(next) = src.source() {
        src = next;
    }
    src.to_string()
}

impl fmt::Display for Confirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {}, {})", self.name, self.pid, self.exe)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A real `/proc/<pid>/stat` of the 6.18 host (a sleeping process).
    const STAT: &str = include_str!("../../tests/data/node/host-6.18.proc-sleep.stat");
    /// The host's own namespaces (`readlink /proc/self/ns/{pid,mnt}`).
    const HOST_PID_NS: &str = "pid:[4026531836]";
    const HOST_MNT_NS: &str = "mnt:[4026531832]";

    /// A `/proc` with the node's PID 1 and one process.
    struct FakeProc {
        root: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> Self {
            let f = Self {
                root: tempfile::tempdir().expect("tmp"),
            };
            f.process(
                1,
                "/usr/lib/systemd/systemd",
                &["/sbin/init"],
                (HOST_PID_NS, HOST_MNT_NS),
            );
            fs::write(
                f.root.path().join("cmdline"),
                "BOOT_IMAGE=/boot/vmlinuz-6.1.0-41-amd64 root=UUID=0e4a ro quiet\n",
            )
            .expect("cmdline");
            f
        }

        fn process(&self, pid: u32, exe: &str, args: &[&str], ns: (&str, &str)) {
            let dir = self.root.path().join(pid.to_string());
            fs::create_dir_all(dir.join("ns")).expect("mkdir");
            let stat = STAT.replacen("15239", &pid.to_string(), 1);
            fs::write(dir.join("stat"), stat).expect("stat");
            let _ = fs::remove_file(dir.join("exe"));
            symlink(exe, dir.join("exe")).expect("exe");
            let _ = fs::remove_file(dir.join("ns/pid"));
            let _ = fs::remove_file(dir.join("ns/mnt"));
            symlink(ns.0, dir.join("ns/pid")).expect("ns/pid");
            symlink(ns.1, dir.join("ns/mnt")).expect("ns/mnt");
            fs::write(dir.join("cmdline"), args.join("\0") + "\0").expect("cmdline");
            fs::write(dir.join("cgroup"), "0::/system.slice/earlyoom.service\n").expect("cgroup");
        }

        fn checker(&self) -> Checker {
            Checker::new(self.root.path().to_path_buf(), Arc::default())
        }
    }

    const HOST: (&str, &str) = (HOST_PID_NS, HOST_MNT_NS);

    #[test]
    fn the_node_s_earlyoom_and_systemd_oomd_are_confirmed() {
        let p = FakeProc::new();
        // Debian bookworm's packages: /usr/bin/earlyoom, /lib/systemd/systemd-oomd.
        p.process(
            412,
            "/usr/bin/earlyoom",
            &["/usr/bin/earlyoom", "-r", "3600"],
            HOST,
        );
        p.process(
            398,
            "/usr/lib/systemd/systemd-oomd",
            &["/lib/systemd/systemd-oomd"],
            HOST,
        );
        let mut c = p.checker();
        let k = c.sender(412, "earlyoom").expect("earlyoom");
        assert_eq!(
            k,
            Confirmed {
                name: "earlyoom".into(),
                pid: 412,
                comm: "earlyoom".into(),
                exe: "/usr/bin/earlyoom".into(),
                cgroup: Some("/system.slice/earlyoom.service".into()),
            }
        );
        assert_eq!(
            c.sender(398, "systemd-oomd").expect("oomd").name,
            "systemd-oomd"
        );
        // Upgraded under the running daemon.
        p.process(
            413,
            "/usr/bin/earlyoom (deleted)",
            &["/usr/bin/earlyoom"],
            HOST,
        );
        assert!(c.sender(413, "earlyoom").is_ok());
    }

    #[test]
    fn a_renamed_process_and_a_container_are_not() {
        let p = FakeProc::new();
        // `printf earlyoom > /proc/self/comm` from a shell.
        p.process(5208, "/usr/bin/dash", &["sh", "-c", "kill -9 5184"], HOST);
        let mut c = p.checker();
        let e = c.sender(5208, "earlyoom").expect_err("a renamed shell");
        assert!(
            matches!(&e, Unconfirmed::Executable { exe, .. } if exe == "/usr/bin/dash"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("runs /usr/bin/dash, not an executable named earlyoom"),
            "{e}"
        );
        // The real earlyoom, but in a container's namespaces.
        p.process(
            7001,
            "/usr/bin/earlyoom",
            &["earlyoom"],
            ("pid:[4026532301]", HOST_MNT_NS),
        );
        let e = c.sender(7001, "earlyoom").expect_err("a container");
        assert_eq!(
            e,
            Unconfirmed::Namespace {
                pid: 7001,
                comm: "earlyoom".into(),
                ns: "pid"
            }
        );
        p.process(
            7002,
            "/usr/bin/earlyoom",
            &["earlyoom"],
            (HOST_PID_NS, "mnt:[4026532299]"),
        );
        assert!(matches!(
            c.sender(7002, "earlyoom"),
            Err(Unconfirmed::Namespace { ns: "mnt", .. })
        ));
        assert_eq!(
            c.sender(9999, "earlyoom"),
            Err(Unconfirmed::Gone { pid: 9999 })
        );
    }

    #[test]
    fn a_sender_is_checked_once_per_pid_and_start_time() {
        let p = FakeProc::new();
        p.process(412, "/usr/bin/dash", &["sh"], HOST);
        let mut c = p.checker();
        assert!(c.sender(412, "earlyoom").is_err());
        // The same pid and start time: the cached answer, whatever /proc says now.
        p.process(412, "/usr/bin/earlyoom", &["earlyoom"], HOST);
        assert!(c.sender(412, "earlyoom").is_err());
        // Another process with that pid (a later start time) is checked anew.
        let dir = p.root.path().join("412");
        let later = fs::read_to_string(dir.join("stat"))
            .expect("stat")
            .replacen(" 46227 ", " 46999 ", 1);
        fs::write(dir.join("stat"), later).expect("stat");
        assert!(c.sender(412, "earlyoom").is_ok());
    }

    #[test]
    fn nohang_is_a_python_script() {
        let p = FakeProc::new();
        // nohang.service: ExecStart=/usr/sbin/nohang --monitor --config ...; `#! /usr/bin/python3`.
        let args = [
            "/usr/bin/python3",
            "/usr/sbin/nohang",
            "--monitor",
            "--config",
            "/etc/nohang/nohang.conf",
        ];
        p.process(520, "/usr/bin/python3.11", &args, HOST);
        let mut c = p.checker();
        assert_eq!(c.sender(520, "nohang").expect("nohang").name, "nohang");
        p.process(
            521,
            "/usr/bin/python3.11",
            &["python3", "/tmp/other.py"],
            HOST,
        );
        assert!(matches!(
            c.sender(521, "nohang"),
            Err(Unconfirmed::Executable { .. })
        ));
    }

    #[test]
    fn init_is_a_memory_killer_only_as_talos_s_pid_1() {
        let p = FakeProc::new();
        let mut c = p.checker();
        // systemd's or sysvinit's PID 1 named init signals at shutdown.
        assert!(matches!(
            c.sender(1, "init"),
            Err(Unconfirmed::NotTalos { .. })
        ));
        p.process(2301, "/sbin/init", &["init"], HOST);
        assert_eq!(
            c.sender(2301, "init"),
            Err(Unconfirmed::NotPid1 { pid: 2301 })
        );
        // Talos: machined is PID 1, exec'd as /sbin/init; every boot has talos.platform=.
        let p = FakeProc::new();
        p.process(1, "/sbin/init", &["/sbin/init"], HOST);
        fs::write(
            p.root.path().join("cmdline"),
            "talos.platform=metal talos.config=none console=ttyS0 init_on_alloc=1\n",
        )
        .expect("cmdline");
        let k = p.checker().sender(1, "init").expect("machined");
        assert_eq!((k.name.as_str(), k.pid), ("talos-machined", 1));
    }

    #[test]
    fn a_name_not_in_the_list_is_confirmed_by_an_executable_of_that_name() {
        let p = FakeProc::new();
        p.process(
            600,
            "/usr/local/bin/low-memory-monitor",
            &["low-memory-monitor"],
            HOST,
        );
        p.process(601, "/usr/bin/bash", &["bash"], HOST);
        let mut c = p.checker();
        // comm keeps 15 bytes of the file name.
        assert_eq!(
            c.sender(600, "low-memory-moni").expect("15 bytes").name,
            "low-memory-moni"
        );
        assert!(c.sender(601, "my-killer").is_err());
    }

    #[test]
    fn a_sigterm_victim_is_watched_until_it_exits_and_a_sigkill_is_not() {
        let p = FakeProc::new();
        p.process(412, "/usr/bin/earlyoom", &["earlyoom"], HOST);
        p.process(15239, "/usr/bin/sleep", &["sleep", "600"], HOST);
        let mut c = p.checker();
        let s = |sig: i32, target: u32| SignalSighting {
            meta: crate::capture::RecordMeta {
                ktime_ns: 1,
                trigger: crate::capture::Trigger {
                    tid: 412,
                    tgid: 412,
                    comm: "earlyoom".into(),
                },
            },
            sig,
            code: 0,
            group: true,
            result: 0,
            target_pid: target,
            target_tgid: None,
            target_comm: "sleep".into(),
            target_start_time_ns: None,
            target_oom_score_adj: None,
            walk: None,
        };
        let Some(Input::KillerSignal(k)) = c.check(s(libc::SIGTERM, 15239)) else {
            panic!("a confirmed killer's signal");
        };
        let v = k.victim.expect("read while alive");
        assert_eq!(v.comm, "sleep");
        assert_eq!(v.cgroup.as_deref(), Some("/system.slice/earlyoom.service"));
        let now = Instant::now();
        assert!(c.poll(now).is_empty(), "alive: still watched");
        // It becomes a zombie: exited.
        let dir = p.root.path().join("15239");
        let zombie = fs::read_to_string(dir.join("stat"))
            .expect("stat")
            .replacen(" S ", " Z ", 1);
        fs::write(dir.join("stat"), zombie).expect("stat");
        assert_eq!(
            c.poll(now),
            [VictimFate {
                pid: 15239,
                exited: true
            }]
        );
        // A SIGKILL is a kill at once: nothing watched.
        assert!(c.check(s(libc::SIGKILL, 15239)).is_some());
        assert!(c.poll(now + TERM_WAIT).is_empty());
        // A SIGTERM whose victim lives on past the wait: survived.
        p.process(15240, "/usr/bin/sleep", &["sleep"], HOST);
        assert!(c.check(s(libc::SIGTERM, 15240)).is_some());
        assert_eq!(
            c.poll(Instant::now() + TERM_WAIT),
            [VictimFate {
                pid: 15240,
                exited: false
            }]
        );
        // An unconfirmed sender: nothing, counted.
        p.process(5208, "/usr/bin/dash", &["sh"], HOST);
        let mut renamed = s(libc::SIGKILL, 15240);
        renamed.meta.trigger.tgid = 5208;
        assert!(c.check(renamed).is_none());
        assert_eq!(c.stats.unconfirmed.load(Ordering::Relaxed), 1);
    }
}
