//! Reads `/dev/kmsg` and parses the OOM killer's lines of every kernel generation.
//!
//! The kernel log is the one source every kernel has, but it is lossy:
//!
//! - The header (`<comm> invoked oom-killer: ...`) and the summary
//!   (`oom-kill:constraint=...`) are printed by `dump_header()`, which
//!   `oom_kill_process()` rate-limits with `oom_rs` (default burst 10 per 5 s).
//!   In an OOM storm most kills have neither; the rate limiter reports how many
//!   it dropped with `oom_kill_process: N callbacks suppressed` (an
//!   [`OomLine::Suppressed`]) when the next interval begins.
//! - The kill line (`... Killed process N (comm) total-vm:...`) is NOT
//!   rate-limited: there is one per victim, and its prefix says whether a memory
//!   cgroup (`Memory cgroup out of memory`) or the node (`Out of memory`) ran out.
//!   Before 5.1 the kernel printed `Kill process N (comm) score S or sacrifice
//!   child` and then an unprefixed `Killed process ...` line.
//! - The kernel's log buffer is small (a few thousand lines); a reader that falls
//!   behind gets `EPIPE` from `read()` once its next record was overwritten. The
//!   kernel then moves the reader to the oldest record still held, so the gap in
//!   sequence numbers of the next record is the number of records lost.
//!
//! - Anyone allowed to write `/dev/kmsg` can write `Out of memory: Killed
//!   process ...`, but not with the kernel's facility (0): only such records are
//!   read as kernel lines ([`KmsgRecord::is_kernel`], [`kernel_oom_line`]); the
//!   others are counted as forgeries. The names in the lines (comms, cgroup
//!   paths) are user-chosen too; the summary parser reads the line by its
//!   structure so that they cannot change its fields (see `parse_summary`).
//!
//! Parsing is pure and never panics ([`parse_record`], [`parse_oom_line`]); the
//! [`Reader`] runs a `read()` loop in a dedicated thread, one record per
//! `read()`, on a non-blocking descriptor that it `poll()`s when idle: so it
//! can read the backlog the kernel holds up to its end
//! ([`Reader::read_backlog`], restart replay) and, when asked to stop, read
//! on up to the last record written before it ends ([`Reader::spawn`]).
//! When the eBPF side has seen a victim, the correlation stage reads the log
//! itself in the same run ([`KmsgTap`]); when the kill line is not stored
//! yet, the reader looks for it every 250 µs rather than waiting for the
//! kernel's late wake-up ([`KillLinesDue`]).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::{Receiver, Sender};

/// Size of the buffer given to each `read()`: the kernel returns one record
/// per call and fails with `EINVAL` if the record does not fit
/// (`CONSOLE_EXT_LOG_MAX` is 8 KiB).
const READ_BUF: usize = 8192;
/// How long an idle reader waits in `poll()` before it looks at its stop flag.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The same with an eventfd: the stop wakes it ([`KillLinesDue::wake`]).
const IDLE_POLL_WOKEN: Duration = Duration::from_secs(1);
/// How often the reader looks for a kill line that is due ([`KillLinesDue`]).
const DUE_POLL: Duration = Duration::from_micros(250);
/// How long the reader looks for a due kill line before it waits for the
/// kernel's wake-up again (which comes once the console printed the line).
const DUE_WINDOW: Duration = Duration::from_millis(50);
/// How many kill lines already read are remembered, so that a victim
/// announced after its line was read is not looked for.
const RECENT_KILLS: usize = 256;

/// Errors of the `/dev/kmsg` reader.
#[derive(Debug, thiserror::Error)]
pub enum KmsgError {
    #[error("cannot open {}: {source}: run as root or grant CAP_SYSLOG, or pass --no-kmsg", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot seek to the end of {}: {source}: is it /dev/kmsg? pass --no-kmsg to run without kernel log lines", path.display())]
    Seek { path: PathBuf, source: io::Error },
    #[error(
        "reading the kernel log failed: {source}: kernel OOM lines are no longer reported; restart oomtrace or pass --no-kmsg"
    )]
    Read { source: io::Error },
    #[error("cannot start the kmsg reader thread: {0}: the process may be at its thread limit")]
    Spawn(io::Error),
}

/// One record of `/dev/kmsg` (see the kernel's
/// `Documentation/ABI/testing/dev-kmsg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord {
    /// Sequence number; a gap means records were lost.
    pub seq: u64,
    /// Monotonic timestamp in microseconds since boot.
    pub ts_usec: u64,
    /// `facility << 3 | level`.
    pub facility_prio: u32,
    /// Flag `c` (or `+` on pre-4.9 kernels): a fragment of a continued line.
    pub continuation: bool,
    /// The message text, with the kernel's `\xNN` escapes undone.
    pub message: String,
}

impl KmsgRecord {
    /// Whether the kernel wrote this record: its facility (`prio >> 3`) is 0
    /// (`LOG_KERN`). User space cannot write facility 0: `devkmsg_write()` in
    /// `kernel/printk/printk.c` starts from `facility = 1; /* LOG_USER */` and
    /// only takes the facility of a `<N>` prefix when it is not 0, "to be able
    /// to reliably distinguish kernel-generated messages from
    /// userspace-injected ones" (since 3.5, when `/dev/kmsg` became readable).
    pub fn is_kernel(&self) -> bool {
        self.facility_prio >> 3 == 0
    }
}

/// Parses one record as returned by one `read()` of `/dev/kmsg`:
/// `prio,seq,ts_usec,flags[,more];message\n` followed by optional
/// ` KEY=value\n` dictionary lines, which are ignored.
///
/// The kernel escapes bytes below 0x20, from 0x7f, and the backslash itself as
/// `\xNN`; they are unescaped here, and invalid UTF-8 (a comm is just bytes) is
/// replaced with U+FFFD.
pub fn parse_record(buf: &[u8]) -> Option<KmsgRecord> {
    let semi = buf.iter().position(|&b| b == b';')?;
    let header = std::str::from_utf8(&buf[..semi]).ok()?;
    let mut fields = header.split(',');
    let facility_prio = fields.next()?.trim().parse().ok()?;
    let seq = fields.next()?.trim().parse().ok()?;
    let ts_usec = fields.next()?.trim().parse().ok()?;
    let flags = fields.next().unwrap_or("");
    let continuation = flags.contains('c') || flags.contains('+');
    let body = &buf[semi + 1..];
    let end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    let message = String::from_utf8_lossy(&unescape(&body[..end])).into_owned();
    Some(KmsgRecord {
        seq,
        ts_usec,
        facility_prio,
        continuation,
        message,
    })
}

/// Undoes the kernel's `\xNN` escaping; anything malformed is kept as is.
fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' && text.get(i + 1) == Some(&b'x') {
            let hex = text
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// One OOM-killer line of the kernel log. Every field that a kernel generation
/// may omit, or that a garbled line may lack, is an `Option`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomLine {
    /// `<comm> invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0`.
    /// `comm` and `oom_score_adj` are the trigger's (the task that ran the OOM
    /// killer), not the victim's. `order` is -1 for a sysrq-forced OOM.
    /// Rate-limited.
    Header {
        comm: String,
        gfp_mask: Option<String>,
        order: Option<i32>,
        oom_score_adj: Option<i32>,
    },
    /// `oom-kill:constraint=...,nodemask=...[,cpuset=...,mems_allowed=...],(oom_memcg=...|global_oom),task_memcg=...,task=...,pid=...,uid=...`
    /// (4.19+, one line since 5.0). `cpuset`/`mems_allowed` belong to the
    /// trigger and are absent without CONFIG_CPUSETS. Rate-limited.
    Summary {
        constraint: Option<String>,
        global: bool,
        oom_memcg: Option<String>,
        task_memcg: Option<String>,
        task: Option<String>,
        pid: Option<u32>,
        uid: Option<u32>,
        cpuset: Option<String>,
    },
    /// `[Memory cgroup out of memory|Out of memory[ (oom_kill_allocating_task)]: ]Killed process N (comm) total-vm:...kB, ...`.
    /// One per victim, never rate-limited. Without a prefix (before 5.1) both
    /// `memcg` and `global` are false: the domain is unknown from this line.
    Killed {
        memcg: bool,
        global: bool,
        pid: Option<u32>,
        comm: String,
        total_vm_kb: Option<u64>,
        anon_rss_kb: Option<u64>,
        file_rss_kb: Option<u64>,
        shmem_rss_kb: Option<u64>,
        uid: Option<u32>,
        pgtables_kb: Option<u64>,
        oom_score_adj: Option<i32>,
    },
    /// Before 5.1: `Memory cgroup out of memory: Kill process N (comm) score S or sacrifice child`
    /// (or `Out of memory: ...`). The process actually killed may be a child,
    /// named by the following [`OomLine::Killed`].
    KillChosen {
        memcg: bool,
        global: bool,
        pid: Option<u32>,
        comm: String,
        score: Option<i64>,
    },
    /// Before 4.19: `Task in <task cgroup> killed as a result of limit of <memcg>`.
    TaskInMemcg {
        task_cgroup: String,
        limit_cgroup: String,
    },
    /// `Tasks in <cgroup> are going to be killed due to memory.oom.group set`.
    GroupKill { cgroup: String },
    /// `oom_kill_process: N callbacks suppressed`: N headers and summaries were
    /// dropped by the rate limiter.
    Suppressed { function: String, count: u64 },
    /// `oom_reaper: reaped process N (comm), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB`.
    Reaped {
        pid: Option<u32>,
        comm: String,
        anon_rss_kb: Option<u64>,
        file_rss_kb: Option<u64>,
        shmem_rss_kb: Option<u64>,
    },
}

/// Functions whose rate limiter guards OOM-killer output.
const OOM_RATELIMITED: &[&str] = &[
    "oom_kill_process",
    "dump_header",
    "out_of_memory",
    "pagefault_out_of_memory",
    "mem_cgroup_out_of_memory",
];

/// Recognises an OOM-killer line (the message of one record, without the
/// `[timestamp]` that dmesg adds). Returns `None` for any other line.
pub fn parse_oom_line(msg: &str) -> Option<OomLine> {
    let msg = msg.trim_end_matches(['\n', '\r']);
    if let Some(rest) = msg.strip_prefix("oom-kill:") {
        return Some(parse_summary(rest));
    }
    if let Some(at) = msg.find(" invoked oom-killer: ") {
        return Some(parse_header(
            &msg[..at],
            &msg[at + " invoked oom-killer: ".len()..],
        ));
    }
    if let Some(cgroup) = msg
        .strip_prefix("Tasks in ")
        .and_then(|r| r.strip_suffix(" are going to be killed due to memory.oom.group set"))
    {
        return Some(OomLine::GroupKill {
            cgroup: cgroup.to_owned(),
        });
    }
    if let Some(rest) = msg.strip_prefix("Task in ") {
        return parse_task_in(rest);
    }
    if let Some(rest) = msg.strip_prefix("oom_reaper: reaped process ") {
        return parse_reaped(rest);
    }
    let (memcg, global, rest) = if let Some(r) = msg.strip_prefix("Memory cgroup out of memory: ") {
        (true, false, r)
    } else if let Some(r) = msg.strip_prefix("Out of memory: ") {
        (false, true, r)
    } else if let Some(r) = msg.strip_prefix("Out of memory (oom_kill_allocating_task): ") {
        (false, true, r)
    } else {
        (false, false, msg)
    };
    if let Some(r) = rest.strip_prefix("Killed process ") {
        return parse_killed(memcg, global, r);
    }
    if let Some(r) = rest.strip_prefix("Kill process ") {
        return parse_kill_chosen(memcg, global, r);
    }
    let (function, rest) = msg.split_once(": ")?;
    let count = rest
        .strip_suffix(" callbacks suppressed")?
        .trim()
        .parse()
        .ok()?;
    OOM_RATELIMITED
        .contains(&function)
        .then(|| OomLine::Suppressed {
            function: function.to_owned(),
            count,
        })
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.trim().parse().ok()
}

fn kb(s: &str) -> Option<u64> {
    let s = s.trim();
    num(s.strip_suffix("kB").unwrap_or(s))
}

/// `gfp_mask=0x...(...), [nodemask=..., ]order=N, oom_score_adj=N`, in any
/// order (4.5 printed order first). Unknown keys and fragments are ignored.
fn parse_header(comm: &str, rest: &str) -> OomLine {
    let (mut gfp_mask, mut order, mut oom_score_adj) = (None, None, None);
    for part in rest.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        match key.trim() {
            "gfp_mask" => gfp_mask = Some(value.trim().to_owned()).filter(|v| !v.is_empty()),
            "order" => order = num(value),
            "oom_score_adj" => oom_score_adj = num(value),
            _ => {}
        }
    }
    OomLine::Header {
        comm: comm.to_owned(),
        gfp_mask,
        order,
        oom_score_adj,
    }
}

/// Longest comm the kernel prints: `TASK_COMM_LEN` (16) minus the NUL.
const COMM_MAX_BYTES: usize = 15;

/// The number a `%d` of the kernel printed, `%5d` padding allowed.
fn is_int(s: &str) -> bool {
    let s = s.trim_start();
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Splits off a `%*pbl` node list (`0`, `0-1,3`, `(null)`) at the start of
/// `s`: returns it and what follows (`,next=...`).
fn split_node_list(s: &str) -> (&str, &str) {
    if let Some(rest) = s.strip_prefix("(null)") {
        return ("(null)", rest);
    }
    let mut end = s
        .find(|c: char| !(c.is_ascii_digit() || c == ',' || c == '-'))
        .unwrap_or(s.len());
    // The list stops before the comma that starts the next key.
    while end > 0 && s.as_bytes()[end - 1] == b',' && end < s.len() {
        end -= 1;
    }
    (&s[..end], &s[end..])
}

/// Whether `s` is a whole node list, as [`split_node_list`] reads one.
fn is_node_list(s: &str) -> bool {
    split_node_list(s).1.is_empty()
}

/// Bytes of the comm as the kernel held it: the message's invalid UTF-8
/// became one U+FFFD per byte sequence, counted as one byte.
fn comm_bytes(comm: &str) -> usize {
    comm.chars()
        .map(|c| if c == '\u{fffd}' { 1 } else { c.len_utf8() })
        .sum()
}

/// Whether cgroup `path` is `ancestor` or below it.
fn within(path: &str, ancestor: &str) -> bool {
    path == ancestor
        || ancestor == "/"
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// `,cpuset=<name>,mems_allowed=<list>`: the name and whether the block
/// parsed. The name is hostile (any cgroup name but one with a `/`), the
/// list is not, so the list starts after the last `,mems_allowed=`.
fn parse_cpuset(block: &str) -> Option<String> {
    let body = block.strip_prefix(",cpuset=")?;
    Some(match body.rfind(",mems_allowed=") {
        Some(i) if is_node_list(&body[i + ",mems_allowed=".len()..]) => body[..i].to_owned(),
        _ => body.to_owned(),
    })
}

/// In the pre-5.0 order (`…,task_memcg=<path>,cpuset=<name>,mems_allowed=<list>`)
/// splits the cpuset block off the end of the task_memcg value.
fn split_trailing_cpuset(value: &str) -> (&str, Option<String>) {
    let Some(m) = value
        .rfind(",mems_allowed=")
        .filter(|&i| is_node_list(&value[i + ",mems_allowed=".len()..]))
    else {
        return (value, None);
    };
    // The name holds no `/` (it is one cgroup's name; the root's is `/`).
    match value[..m].rfind(",cpuset=") {
        Some(c) if !value[c + ",cpuset=".len()..m].contains('/') || &value[c..m] == ",cpuset=/" => {
            (&value[..c], Some(value[c + ",cpuset=".len()..m].to_owned()))
        }
        _ => (value, None),
    }
}

/// Parses what follows `oom-kill:`, as `dump_oom_summary()` (5.0+) prints it:
///
/// ```text
/// constraint=<word>,nodemask=<list>[,cpuset=<name>,mems_allowed=<list>](,oom_memcg=<path>|,global_oom),task_memcg=<path>,task=<comm>,pid=<n>,uid=<n>
/// ```
///
/// The cpuset name, both cgroup paths and the comm come from user space (a
/// process names its cgroups and its comm) and may contain `,`, `global_oom`
/// or any `key=`; everything else is a fixed word, a number or a node list.
/// So the line is read by its structure, not by splitting at commas:
///
/// - `pid` and `uid` are numbers at the end: the last `,uid=` and the last
///   `,pid=` before it are the kernel's.
/// - The memcg part starts at the first `,oom_memcg=/` or
///   `,global_oom,task_memcg=/`: what comes before it (the constraint, node
///   lists and a cpuset name, which cannot hold a `/` unless it is the
///   root's `/`) cannot contain either. `CONSTRAINT_MEMCG` always has an
///   `oom_memcg=` and `CONSTRAINT_CPUSET`/`_MEMORY_POLICY` never do, so for
///   them only that form is looked for. `CONSTRAINT_NONE` can be either: 4.19
///   and 5.0 printed it for every OOM, memcg ones included (the constraint was
///   set after the summary until the 5.1 fix).
/// - Between `oom_memcg=` and `task=` the split into oom_memcg, task_memcg
///   and comm is chosen so that task_memcg lies within oom_memcg (the victim
///   is always in the subtree of the cgroup at its limit) and the comm fits
///   in `TASK_COMM_LEN`; the leftmost such split is taken.
///
/// What remains ambiguous: a comm or a last cgroup name that itself holds
/// `,task=` (or `,task_memcg=` in a name below the OOM cgroup) admits more than
/// one split that satisfies both rules; the leftmost is taken. Every such split
/// yields paths that start with the real victim's (or OOM cgroup's) own path up
/// to the hostile name, so no choice names a cgroup outside the subtree whose
/// owner wrote the name. Without a split that satisfies the rules (a task that
/// moved between the kill and the message) `task_memcg` is `None`. The 4.19
/// development order (memcg before cpuset) is read too, with the cpuset name
/// split off the end of task_memcg by the same kind of rule. A path the kernel
/// could not print (`(name too long)`) is not recognised: `oom_memcg` is then
/// `None`. A fragment (the kernel split the line) yields the fields it holds.
fn parse_summary(rest: &str) -> OomLine {
    let line = rest.trim();
    // `,pid=<n>,uid=<n>` at the end.
    let (body, pid, uid) = match line.rfind(",uid=") {
        Some(u) if is_int(&line[u + ",uid=".len()..]) => match line[..u].rfind(",pid=") {
            Some(p) if is_int(&line[p + ",pid=".len()..u]) => (
                &line[..p],
                num(&line[p + ",pid=".len()..u]),
                num(&line[u + ",uid=".len()..]),
            ),
            _ => (line, None, None),
        },
        _ => (line, None, None),
    };
    let complete = pid.is_some();

    // `constraint=<word>,nodemask=<list>`.
    let mut pos = 0;
    let mut constraint = None;
    if let Some(r) = body.strip_prefix("constraint=") {
        let end = r.find(',').unwrap_or(r.len());
        constraint = Some(r[..end].to_owned());
        pos = "constraint=".len() + end;
    }
    if let Some(r) = body[pos..].strip_prefix(",nodemask=") {
        let (list, _) = split_node_list(r);
        pos += ",nodemask=".len() + list.len();
    }

    // The memcg part: the first authentic `,oom_memcg=/` or `,global_oom,task_memcg=/`.
    const MEMCG: &str = ",oom_memcg=";
    const GLOBAL: &str = ",global_oom";
    let after = &body[pos..];
    let memcg_at = after.find(",oom_memcg=/");
    let global_at = after.match_indices(GLOBAL).map(|(i, _)| i).find(|&i| {
        let r = &after[i + GLOBAL.len()..];
        r.starts_with(",task_memcg=/") || r.is_empty()
    });
    let block = match constraint.as_deref() {
        Some("CONSTRAINT_MEMCG") => memcg_at.map(|i| (i, false)),
        Some("CONSTRAINT_CPUSET" | "CONSTRAINT_MEMORY_POLICY") => global_at.map(|i| (i, true)),
        _ => match (memcg_at, global_at) {
            (Some(m), Some(g)) if g < m => Some((g, true)),
            (Some(m), _) => Some((m, false)),
            (None, g) => g.map(|g| (g, true)),
        },
    };

    // The cpuset block before the memcg part (5.0+ order), or the whole rest of
    // a fragment without a memcg part.
    let before = &after[..block.map_or(after.len(), |(i, _)| i)];
    let mut cpuset = parse_cpuset(before);

    let (mut oom_memcg, mut task_memcg, mut task) = (None, None, None);
    let global = block.is_some_and(|(_, g)| g);
    if let Some((at, is_global)) = block {
        let text = if is_global {
            &after[at + GLOBAL.len()..]
        } else {
            &after[at + MEMCG.len()..]
        };
        let old_order = cpuset.is_none();
        // Where oom_memcg ends: every `,task_memcg=` (global: the one at 0).
        let ends: Vec<usize> = if is_global {
            vec![0]
        } else {
            text.match_indices(",task_memcg=").map(|(i, _)| i).collect()
        };
        // Every split (oom_memcg, task_memcg, cpuset of the old order, comm), leftmost first.
        let mut splits = Vec::new();
        for &a in &ends {
            let p1 = &text[..a];
            let Some(rest) = text.get(a..).and_then(|r| r.strip_prefix(",task_memcg=")) else {
                continue;
            };
            let tasks: Vec<usize> = if complete {
                rest.match_indices(",task=").map(|(i, _)| i).collect()
            } else {
                // A fragment: task_memcg runs to its end, or to a cut-off `,task=`.
                vec![rest.rfind(",task=").unwrap_or(rest.len())]
            };
            for b in tasks {
                let (p2, cs) = if old_order {
                    split_trailing_cpuset(&rest[..b])
                } else {
                    (&rest[..b], None)
                };
                let comm = rest[b..].strip_prefix(",task=").unwrap_or("");
                splits.push((p1, p2, cs, complete.then_some(comm)));
            }
        }
        let fits = |(p1, p2, _, comm): &(&str, &str, Option<String>, Option<&str>)| {
            (is_global || within(p2, p1)) && comm.is_none_or(|c| comm_bytes(c) <= COMM_MAX_BYTES)
        };
        // Without a fitting split, a line with one split only (nothing hostile in
        // it: an abridged or racy line) is taken as it is.
        let best = match splits.iter().position(fits) {
            Some(i) => Some(splits.swap_remove(i)),
            None if splits.len() == 1 => splits.pop(),
            None => None,
        };
        match best {
            Some((p1, p2, cs, comm)) => {
                oom_memcg = (!is_global).then(|| p1.to_owned());
                task_memcg = Some(p2.to_owned());
                if cs.is_some() {
                    cpuset = cs;
                }
                task = comm.map(str::to_owned);
            }
            None => {
                // Nothing satisfies the rules: the OOM cgroup up to the first
                // `,task_memcg=` (or the whole fragment) and no task_memcg.
                if !is_global {
                    let end = ends.first().copied().unwrap_or(text.len());
                    oom_memcg = Some(text[..end].to_owned());
                }
                if complete {
                    task = text
                        .rfind(",task=")
                        .map(|i| text[i + ",task=".len()..].to_owned());
                }
            }
        }
    } else if complete {
        task = body
            .rfind(",task=")
            .map(|i| body[i + ",task=".len()..].to_owned());
    }
    OomLine::Summary {
        constraint,
        global,
        oom_memcg,
        task_memcg,
        task,
        pid,
        uid,
        cpuset,
    }
}

/// `<task cgroup> killed as a result of limit of <memcg>` (before 4.19). Both
/// paths may hold the separator; the split taken is the first whose limit
/// cgroup is the task's or one of its ancestors (the victim is always in the
/// subtree of the cgroup at its limit), else the first.
fn parse_task_in(rest: &str) -> Option<OomLine> {
    const SEP: &str = " killed as a result of limit of ";
    let split = |i: usize| (&rest[..i], rest[i + SEP.len()..].trim_end());
    let first = rest.find(SEP)?;
    let (task, limit) = rest
        .match_indices(SEP)
        .map(|(i, _)| split(i))
        .find(|(task, limit)| within(task, limit))
        .unwrap_or_else(|| split(first));
    Some(OomLine::TaskInMemcg {
        task_cgroup: task.to_owned(),
        limit_cgroup: limit.to_owned(),
    })
}

/// Splits `N (comm)...` where the comm ends at the last `)` before `limit`.
/// Returns the pid, the comm and the text after the closing parenthesis.
fn pid_comm(s: &str, limit: usize) -> Option<(Option<u32>, String, &str)> {
    let open = s.find(" (")?;
    let pid = num(&s[..open]);
    let comm_start = open + 2;
    let close = s.get(..limit)?.rfind(')').filter(|&c| c >= comm_start)?;
    Some((pid, s[comm_start..close].to_owned(), &s[close + 1..]))
}

/// Stats of the kill and reap lines: `key:NkB` tokens separated by `, ` or spaces.
#[derive(Default)]
struct Stats {
    total_vm: Option<u64>,
    anon: Option<u64>,
    file: Option<u64>,
    shmem: Option<u64>,
    uid: Option<u32>,
    pgtables: Option<u64>,
    adj: Option<i32>,
}

fn parse_stats(s: &str) -> Stats {
    let mut st = Stats::default();
    for token in s.split([',', ' ']).filter(|t| !t.is_empty()) {
        let Some((key, value)) = token.split_once(':') else {
            continue;
        };
        match key {
            "total-vm" => st.total_vm = kb(value),
            "anon-rss" => st.anon = kb(value),
            "file-rss" => st.file = kb(value),
            "shmem-rss" => st.shmem = kb(value),
            "UID" => st.uid = num(value),
            "pgtables" => st.pgtables = kb(value),
            "oom_score_adj" => st.adj = num(value),
            _ => {}
        }
    }
    st
}

fn parse_killed(memcg: bool, global: bool, rest: &str) -> Option<OomLine> {
    let limit = rest.rfind("total-vm:").unwrap_or(rest.len());
    let (pid, comm, after) = pid_comm(rest, limit)?;
    let mut st = parse_stats(after);
    // RHEL 7 backports print `(comm), UID 0, total-vm:...`.
    if st.uid.is_none() {
        st.uid = after
            .split(',')
            .find_map(|p| p.trim().strip_prefix("UID ").and_then(num));
    }
    Some(OomLine::Killed {
        memcg,
        global,
        pid,
        comm,
        total_vm_kb: st.total_vm,
        anon_rss_kb: st.anon,
        file_rss_kb: st.file,
        shmem_rss_kb: st.shmem,
        uid: st.uid,
        pgtables_kb: st.pgtables,
        oom_score_adj: st.adj,
    })
}

fn parse_kill_chosen(memcg: bool, global: bool, rest: &str) -> Option<OomLine> {
    let limit = rest.rfind(") score ").map_or(rest.len(), |i| i + 1);
    let (pid, comm, after) = pid_comm(rest, limit)?;
    let score = after
        .strip_prefix(" score ")
        .and_then(|s| s.split(' ').next())
        .and_then(num);
    Some(OomLine::KillChosen {
        memcg,
        global,
        pid,
        comm,
        score,
    })
}

fn parse_reaped(rest: &str) -> Option<OomLine> {
    let limit = rest.rfind("), now ").map_or(rest.len(), |i| i + 1);
    let (pid, comm, after) = pid_comm(rest, limit)?;
    let st = parse_stats(after);
    Some(OomLine::Reaped {
        pid,
        comm,
        anon_rss_kb: st.anon,
        file_rss_kb: st.file,
        shmem_rss_kb: st.shmem,
    })
}

/// Counters of the kmsg reader, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct KmsgStats {
    /// Records read.
    pub records: AtomicU64,
    /// Records overwritten before they were read (gaps in sequence numbers).
    pub lost_records: AtomicU64,
    /// `EPIPE`s: the reader fell behind the ring buffer and was moved forward.
    pub resyncs: AtomicU64,
    /// OOM-killer lines recognised (in records the kernel wrote).
    pub oom_lines: AtomicU64,
    /// Records that look like OOM-killer lines but were written by user space
    /// (a facility other than 0): ignored, never reported as kills.
    pub forged_oom_lines: AtomicU64,
}

/// One OOM-killer line with its record's sequence number and timestamp.
#[derive(Debug, Clone)]
pub struct KmsgOom {
    pub seq: u64,
    /// Kernel monotonic time of the record, in microseconds since boot.
    pub ts_usec: u64,
    pub line: OomLine,
    /// When the reader received the record.
    pub received: Instant,
    /// Read from the backlog after a restart ([`Reader::read_backlog`]).
    pub replayed: bool,
}

/// Records lost between the previous record and `seq`: the gap in sequence
/// numbers. Zero for the first record, and when the sequence does not
/// advance (a reader that was moved backwards is not a loss).
pub fn lost_between(prev_seq: Option<u64>, seq: u64) -> u64 {
    match prev_seq {
        Some(prev) if seq > prev => seq - prev - 1,
        _ => 0,
    }
}

/// Reads records from an open `/dev/kmsg` (one record per `read()`), counts
/// them in `stats` and hands each to `on_record` until it returns `false`;
/// ends when no record is ready (a non-blocking descriptor) or at end of file.
///
/// `EPIPE` means the ring buffer overwrote the next record: the kernel has
/// already moved the reader to the oldest record it holds, so the loop counts a
/// resync and goes on; the sequence gap of the next record is counted as lost.
/// `EINTR` is retried; `EINVAL` (a record larger than the buffer, which the
/// kernel then skips) is counted as one lost record. End of file (a regular
/// file in place of the device) ends the loop. Any other error is returned.
pub fn read_records<R: Read>(
    file: R,
    stats: &KmsgStats,
    on_record: impl FnMut(KmsgRecord) -> bool,
) -> Result<(), KmsgError> {
    read_loop(file, stats, &mut None, on_record, || false)
}

/// [`read_records`] that calls `on_idle` whenever no record is ready
/// (`EAGAIN`) and goes on while it returns `true`; `prev_seq` carries the
/// last sequence number across calls, so a gap between two calls counts.
fn read_loop<R: Read>(
    mut file: R,
    stats: &KmsgStats,
    prev_seq: &mut Option<u64>,
    mut on_record: impl FnMut(KmsgRecord) -> bool,
    mut on_idle: impl FnMut() -> bool,
) -> Result<(), KmsgError> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if on_idle() {
                    continue;
                }
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                stats.resyncs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("kernel log buffer wrapped before it was read: resynchronising");
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                stats.lost_records.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(source) => return Err(KmsgError::Read { source }),
        };
        let Some(record) = buf.get(..n).and_then(parse_record) else {
            tracing::debug!("unparseable kmsg record of {n} bytes skipped");
            continue;
        };
        stats.records.fetch_add(1, Ordering::Relaxed);
        let lost = lost_between(*prev_seq, record.seq);
        if lost > 0 {
            stats.lost_records.fetch_add(lost, Ordering::Relaxed);
            tracing::warn!(
                lost,
                "kernel log records were overwritten before they were read"
            );
        }
        *prev_seq = Some(record.seq);
        if !on_record(record) {
            return Ok(());
        }
    }
}

/// Where a [`Reader`] starts in the kernel log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// After the last record: only lines written from now on.
    End,
    /// At the oldest record the kernel still holds, to read its backlog first.
    Oldest,
}

/// What the kernel log held when a [`Reader`] opened at [`StartAt::Oldest`].
#[derive(Debug, Default)]
pub struct Backlog {
    /// The OOM-killer lines of the records the filter kept, marked replayed.
    pub lines: Vec<KmsgOom>,
    /// Sequence number of the first record read (the oldest the kernel held).
    pub first_seq: Option<u64>,
    /// Sequence number of the last record read: where the live lines start.
    pub last_seq: Option<u64>,
}

/// Tells the reader thread that the kernel is about to log a victim's kill
/// line, so that it reads the line as soon as the kernel stores it.
///
/// The kernel stores a record at once but wakes `/dev/kmsg` readers only
/// after the console has printed it (`vprintk_emit()`: `console_unlock()`
/// before `wake_up_klogd()`). The kill line is `KERN_ERR`, which a default
/// console log level prints: on a serial console that takes about 50 µs per
/// byte, 10 ms or more for one kill line, while the record can be read some
/// 15 µs after it was written. The eBPF `mark_victim` hooks run just before
/// `__oom_kill_process()` prints the line: they announce the victim here,
/// and the reader then reads every [`DUE_POLL`] until the line is in (or
/// [`DUE_WINDOW`] has passed), instead of waiting to be woken.
#[derive(Clone)]
pub struct KillLinesDue(Arc<DueInner>);

struct DueInner {
    /// An eventfd the reader `poll()`s beside the log.
    wake: std::os::fd::OwnedFd,
    pids: std::sync::Mutex<Vec<u32>>,
}

impl KillLinesDue {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; a valid descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let wake = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Self(Arc::new(DueInner {
            wake,
            pids: Default::default(),
        })))
    }

    /// The kernel is killing `pid`: its kill line is due.
    pub fn announce(&self, pid: u32) {
        if let Ok(mut pids) = self.0.pids.lock() {
            pids.push(pid);
        }
        self.wake();
    }

    /// Wakes the reader (without a victim: to look at its stop flag now).
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. A full
        // counter (EAGAIN) still leaves the reader woken.
        unsafe { libc::write(self.0.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// The victims announced since the last call.
    fn take(&self) -> Vec<u32> {
        let mut count = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer; EAGAIN (nothing
        // announced) leaves it alone.
        unsafe {
            libc::read(
                self.0.wake.as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            )
        };
        self.0
            .pids
            .lock()
            .map(|mut pids| std::mem::take(&mut *pids))
            .unwrap_or_default()
    }
}

/// The reader thread's view of the kill lines due: announced victims whose
/// line has not been read, and the victims whose line was read last.
#[derive(Default)]
struct DueLines {
    due: Vec<(u32, Instant)>,
    recent: std::collections::VecDeque<u32>,
}

impl DueLines {
    /// A kill line of `pid` was read.
    fn read(&mut self, pid: u32) {
        self.due.retain(|(p, _)| *p != pid);
        if self.recent.len() == RECENT_KILLS {
            self.recent.pop_front();
        }
        self.recent.push_back(pid);
    }

    /// Takes the newly announced victims and says how long to wait for the
    /// next record: [`DUE_POLL`] while a line is due, else `idle`.
    fn next_wait(&mut self, announced: Vec<u32>, now: Instant, idle: Duration) -> Duration {
        for pid in announced {
            if !self.recent.contains(&pid) {
                self.due.push((pid, now + DUE_WINDOW));
            }
        }
        self.due.retain(|(_, until)| *until > now);
        match self.due.is_empty() {
            true => idle,
            false => DUE_POLL,
        }
    }
}

/// An open kernel log (normally `/dev/kmsg`), read without blocking.
pub struct Reader {
    shared: Arc<Mutex<Shared>>,
    stats: Arc<KmsgStats>,
    due: Option<KillLinesDue>,
}

/// What the reader thread and the correlation stage ([`KmsgTap`]) share:
/// whoever holds it reads the next records.
struct Shared {
    file: File,
    prev_seq: Option<u64>,
    lines: DueLines,
}

impl Shared {
    /// Reads the records the kernel holds now (up to `EAGAIN`), handing
    /// each OOM-killer line to `on_line` while it returns `true`; returns
    /// whether it got to `EAGAIN` (not the end of a regular file, nor an
    /// `on_line` refusal).
    fn read_ready(
        &mut self,
        stats: &KmsgStats,
        mut on_line: impl FnMut(KmsgOom) -> bool,
        mut on_other: impl FnMut() -> bool,
    ) -> Result<bool, KmsgError> {
        let Self {
            file,
            prev_seq,
            lines,
        } = self;
        let mut idle = false;
        read_loop(
            &*file,
            stats,
            prev_seq,
            |record| match kernel_oom_line(record, stats) {
                Some(oom) => {
                    if let OomLine::Killed { pid: Some(pid), .. } = oom.line {
                        lines.read(pid);
                    }
                    on_line(oom)
                }
                None => on_other(),
            },
            || {
                idle = true;
                false
            },
        )?;
        Ok(idle)
    }
}

/// The correlation stage's own reads of the kernel log, made in the run
/// that drained a victim's `mark_victim` record: the kernel stores the kill
/// line microseconds after it, and wakes `/dev/kmsg` readers only once the
/// console has printed it ([`KillLinesDue`]). Read there, the line costs
/// no hand-off from the reader thread.
#[derive(Clone)]
pub struct KmsgTap {
    shared: Arc<Mutex<Shared>>,
    stats: Arc<KmsgStats>,
}

impl KmsgTap {
    /// What the reader thread sent on `rx` (it read those records first),
    /// then the OOM-killer lines the kernel holds now, read without
    /// waiting. While the reader thread is reading, only what `rx` holds:
    /// the thread sends its lines before it lets go of the log, so the
    /// lines come out in the log's order either way.
    pub fn read(&self, rx: &mut Receiver<KmsgOom>) -> Vec<KmsgOom> {
        let held = self.shared.try_lock();
        let mut out = Vec::new();
        while let Ok(line) = rx.try_recv() {
            out.push(line);
        }
        let Ok(mut shared) = held else {
            return out;
        };
        let read = shared.read_ready(
            &self.stats,
            |oom| {
                out.push(oom);
                true
            },
            || true,
        );
        if let Err(e) = read {
            // The reader thread meets it on its next read, and says so.
            tracing::debug!("kernel log read beside the reader thread: {e}");
        }
        out
    }
}

impl Reader {
    /// Opens `path` non-blocking, at its end or at its oldest record.
    pub fn open(path: &Path, at: StartAt, stats: Arc<KmsgStats>) -> Result<Self, KmsgError> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| KmsgError::Open {
                path: path.to_owned(),
                source,
            })?;
        if at == StartAt::End {
            file.seek(SeekFrom::End(0))
                .map_err(|source| KmsgError::Seek {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let due = KillLinesDue::new()
            .inspect_err(|e| {
                tracing::debug!(
                    "no eventfd ({e}): kill lines are read when the kernel wakes the reader"
                )
            })
            .ok();
        Ok(Self {
            shared: Arc::new(Mutex::new(Shared {
                file,
                prev_seq: None,
                lines: DueLines::default(),
            })),
            stats,
            due,
        })
    }

    /// The correlation stage's way into the log ([`KmsgTap`]).
    pub fn tap(&self) -> KmsgTap {
        KmsgTap {
            shared: Arc::clone(&self.shared),
            stats: Arc::clone(&self.stats),
        }
    }

    /// Where to announce the victims whose kill lines are due, so that the
    /// reader looks for them at once ([`KillLinesDue`]).
    pub fn kill_lines_due(&self) -> Option<KillLinesDue> {
        self.due.clone()
    }

    /// Reads every record the kernel holds now, up to the last one, and
    /// returns the OOM-killer lines of those that `keep` accepts (marked
    /// replayed; records it refuses are not parsed). Live reading
    /// ([`Reader::spawn`]) goes on from the next record.
    pub fn read_backlog(
        &mut self,
        mut keep: impl FnMut(&KmsgRecord) -> bool,
    ) -> Result<Backlog, KmsgError> {
        let mut backlog = Backlog::default();
        let stats = Arc::clone(&self.stats);
        let mut shared = lock(&self.shared);
        let Shared { file, prev_seq, .. } = &mut *shared;
        read_loop(
            &*file,
            &stats,
            prev_seq,
            |record| {
                backlog.first_seq.get_or_insert(record.seq);
                backlog.last_seq = Some(record.seq);
                if keep(&record)
                    && let Some(mut oom) = kernel_oom_line(record, &stats)
                {
                    oom.replayed = true;
                    backlog.lines.push(oom);
                }
                true
            },
            || false,
        )?;
        Ok(backlog)
    }

    /// Starts the reader thread: it sends `first` (a replayed backlog), then
    /// every OOM-killer line the kernel writes, to `tx`. Once `stop` is set
    /// it reads on up to the last record written and ends, which closes the
    /// channel: the receiver knows then that it has every line. It also ends
    /// when the receiver is gone, at end of file (a regular file in place of
    /// the device), and on a read error, which it returns (and logs).
    pub fn spawn(
        self,
        first: Vec<KmsgOom>,
        tx: Sender<KmsgOom>,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<Result<(), KmsgError>>, KmsgError> {
        let Self { shared, stats, due } = self;
        std::thread::Builder::new()
            .name("kmsg".into())
            .spawn(move || {
                for line in first {
                    if tx.blocking_send(line).is_err() {
                        return Ok(());
                    }
                }
                let fd = lock(&shared).file.as_raw_fd();
                let wake = due.as_ref().map(|d| d.0.wake.as_raw_fd());
                // Whether victims were announced: their eventfd was readable.
                let mut woken = false;
                loop {
                    let mut held = lock(&shared);
                    // Sent with the log held: a line the correlation stage
                    // reads itself ([`KmsgTap`]) comes after these.
                    let idle = held
                        .read_ready(
                            &stats,
                            |oom| tx.blocking_send(oom).is_ok(),
                            || !tx.is_closed(),
                        )
                        .inspect_err(|e| tracing::warn!("{e}"))?;
                    if !idle || stop.load(Ordering::Relaxed) || tx.is_closed() {
                        return Ok(());
                    }
                    let announced = match (&due, woken) {
                        (Some(due), true) => due.take(),
                        _ => Vec::new(),
                    };
                    let idle = match due {
                        // Woken through it when asked to stop.
                        Some(_) => IDLE_POLL_WOKEN,
                        None => IDLE_POLL,
                    };
                    let wait = held.lines.next_wait(announced, Instant::now(), idle);
                    drop(held);
                    woken = wait_readable(fd, wake, wait);
                }
            })
            .map_err(KmsgError::Spawn)
    }
}

/// The shared reading state, whoever panicked while holding it (a record
/// half-read is read again).
fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits until `fd` has a record to read, `wake` (an eventfd) was written,
/// or `timeout`; returns whether `wake` was written.
fn wait_readable(
    fd: std::os::fd::RawFd,
    wake: Option<std::os::fd::RawFd>,
    timeout: Duration,
) -> bool {
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut pfds = [pollfd(fd), pollfd(wake.unwrap_or(-1))];
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: two valid pollfds (a negative fd is ignored) and a timespec,
    // live for the duration of the call. An error or a timeout only means
    // the caller reads (and finds EAGAIN) again.
    let ready = unsafe { libc::ppoll(pfds.as_mut_ptr(), 2, &timeout, std::ptr::null()) };
    ready > 0 && pfds[1].revents & libc::POLLIN != 0
}

/// The OOM-killer line of a record the kernel wrote, counted in `stats`.
///
/// A record from user space that looks like one (anyone who may write
/// `/dev/kmsg` can write `Out of memory: Killed process ...`) is counted in
/// [`KmsgStats::forged_oom_lines`]; the first is logged at warn with what to
/// do, the later ones at debug.
pub fn kernel_oom_line(record: KmsgRecord, stats: &KmsgStats) -> Option<KmsgOom> {
    let line = parse_oom_line(&record.message)?;
    if !record.is_kernel() {
        let count = stats.forged_oom_lines.fetch_add(1, Ordering::Relaxed) + 1;
        let facility = record.facility_prio >> 3;
        if count == 1 {
            tracing::warn!(
                seq = record.seq,
                facility,
                message = ?record.message,
                "a process wrote an OOM-killer line to the kernel log (facility {facility}, not the \
                 kernel's 0): ignored, no kill is reported for it or for any later one (counted); \
                 find the writer with `dmesg -x` (facility user/daemon) and the logs of processes \
                 allowed to write /dev/kmsg, or refuse such writes with `sysctl kernel.printk_devkmsg=off`"
            );
        } else {
            tracing::debug!(
                seq = record.seq,
                facility,
                message = ?record.message,
                forged_oom_lines = count,
                "OOM-killer line from user space ignored"
            );
        }
        return None;
    }
    stats.oom_lines.fetch_add(1, Ordering::Relaxed);
    Some(KmsgOom {
        seq: record.seq,
        ts_usec: record.ts_usec,
        line,
        received: Instant::now(),
        replayed: false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// Every sample file: (name, contents). Lines are dmesg/syslog output or,
    /// for `*.kmsg.txt`, raw /dev/kmsg records.
    const SAMPLES: &[(&str, &str)] = &[
        (
            "host-6.18-memcg",
            include_str!("../../tests/data/kmsg/host-6.18-memcg.txt"),
        ),
        (
            "host-6.18-memcg.kmsg",
            include_str!("../../tests/data/kmsg/host-6.18-memcg.kmsg.txt"),
        ),
        (
            "host-6.18-memcg-storm.kmsg",
            include_str!("../../tests/data/kmsg/host-6.18-memcg-storm.kmsg.txt"),
        ),
        (
            "centos7-3.10-k8s-56891",
            include_str!("../../tests/data/kmsg/centos7-3.10-k8s-56891.txt"),
        ),
        (
            "rhel7-3.10-ltp-1080",
            include_str!("../../tests/data/kmsg/rhel7-3.10-ltp-1080.txt"),
        ),
        (
            "kata-4.14-1310",
            include_str!("../../tests/data/kmsg/kata-4.14-1310.txt"),
        ),
        (
            "istio-42734-pre4.19",
            include_str!("../../tests/data/kmsg/istio-42734-pre4.19.txt"),
        ),
        (
            "ecs-4508-4.14",
            include_str!("../../tests/data/kmsg/ecs-4508-4.14.txt"),
        ),
        (
            "moby-38352-4.19",
            include_str!("../../tests/data/kmsg/moby-38352-4.19.txt"),
        ),
        (
            "lkml-group-kill-d342a0b38674",
            include_str!("../../tests/data/kmsg/lkml-group-kill-d342a0b38674.txt"),
        ),
        (
            "relate-1383-6.16-global",
            include_str!("../../tests/data/kmsg/relate-1383-6.16-global.txt"),
        ),
        (
            "systemd-40208-6.17",
            include_str!("../../tests/data/kmsg/systemd-40208-6.17.txt"),
        ),
        (
            "db1000n-555-5.4",
            include_str!("../../tests/data/kmsg/db1000n-555-5.4.txt"),
        ),
        (
            "gpud-70-lxc",
            include_str!("../../tests/data/kmsg/gpud-70-lxc.txt"),
        ),
        (
            "lkml-sysrq-order-minus-1",
            include_str!("../../tests/data/kmsg/lkml-sysrq-order-minus-1.txt"),
        ),
        (
            "host-6.18-forged.kmsg",
            include_str!("../../tests/data/kmsg/host-6.18-forged.kmsg.txt"),
        ),
        (
            "host-6.18-hostile-names.kmsg",
            include_str!("../../tests/data/kmsg/host-6.18-hostile-names.kmsg.txt"),
        ),
    ];

    fn sample(name: &str) -> &'static str {
        SAMPLES.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// The message of a dmesg or syslog line: drops `... kernel: `, the
    /// `[timestamp]` and a `[ T123]` caller id.
    fn message(line: &str) -> String {
        let mut s = line
            .split_once("kernel: ")
            .map_or(line, |(_, m)| m)
            .trim_start();
        for _ in 0..2 {
            if s.starts_with('[') {
                s = s.split_once("] ").map_or(s, |(_, m)| m);
            }
        }
        s.to_owned()
    }

    fn lines(name: &str) -> Vec<String> {
        let text = sample(name);
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("# source: "),
            "{name} lacks its source line"
        );
        text.lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                if name.ends_with(".kmsg") {
                    parse_record(format!("{l}\n").as_bytes()).unwrap().message
                } else {
                    message(l)
                }
            })
            .collect()
    }

    fn parsed(name: &str) -> Vec<OomLine> {
        lines(name)
            .iter()
            .filter_map(|l| parse_oom_line(l))
            .collect()
    }

    #[test]
    fn kmsg_record_fields_and_dictionary() {
        let r = parse_record(
            b"6,422,331781022,-;oom-kill:constraint=CONSTRAINT_MEMCG\n SUBSYSTEM=mem\n DEVICE=+x\n",
        )
        .unwrap();
        assert_eq!(
            (r.facility_prio, r.seq, r.ts_usec, r.continuation),
            (6, 422, 331781022, false)
        );
        assert_eq!(r.message, "oom-kill:constraint=CONSTRAINT_MEMCG");
        let c = parse_record(b"4,7,9,c,caller=T12;frag").unwrap();
        assert!(c.continuation);
        assert_eq!(c.message, "frag");
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"x,1,2,-;m").is_none());
    }

    #[test]
    fn kmsg_record_unescapes_real_comms() {
        let recs: Vec<KmsgRecord> = sample("host-6.18-memcg.kmsg")
            .lines()
            .skip(1)
            .map(|l| parse_record(l.as_bytes()).unwrap())
            .collect();
        assert_eq!(recs.len(), 89);
        assert!(recs.windows(2).take(79).all(|w| w[1].seq == w[0].seq + 1));
        let comms: Vec<String> = recs
            .iter()
            .filter_map(|r| match parse_oom_line(&r.message) {
                Some(OomLine::Killed { comm, .. }) => Some(comm),
                _ => None,
            })
            .collect();
        // The kernel escaped the backslash as \x5c, the tab as \x09 and the UTF-8 bytes.
        assert_eq!(
            comms,
            ["python3", "a b) c,pid=1", "w\\xc3\\xa9 (x)", "wé (x)\t"]
        );
    }

    #[test]
    fn kmsg_host_memcg_lines() {
        let got = parsed("host-6.18-memcg");
        assert_eq!(got.len(), 9);
        assert_eq!(
            got[0],
            OomLine::Header {
                comm: "python3".into(),
                gfp_mask: Some("0xcc0(GFP_KERNEL)".into()),
                order: Some(0),
                oom_score_adj: Some(0)
            }
        );
        assert_eq!(
            got[1],
            OomLine::Summary {
                constraint: Some("CONSTRAINT_MEMCG".into()),
                global: false,
                oom_memcg: Some("/kmsgsample".into()),
                task_memcg: Some("/kmsgsample".into()),
                task: Some("python3".into()),
                pid: Some(9240),
                uid: Some(0),
                cpuset: Some("/".into())
            }
        );
        assert_eq!(
            got[2],
            OomLine::Killed {
                memcg: true,
                global: false,
                pid: Some(9240),
                comm: "python3".into(),
                total_vm_kb: Some(278712),
                anon_rss_kb: Some(65280),
                file_rss_kb: Some(6576),
                shmem_rss_kb: Some(0),
                uid: Some(0),
                pgtables_kb: Some(188),
                oom_score_adj: Some(0)
            }
        );
        // comm "a b) c,pid=1": the summary's task runs to the LAST ,pid=.
        assert!(matches!(&got[3], OomLine::Header { comm, .. } if comm == "a b) c,pid=1"));
        assert!(
            matches!(&got[4], OomLine::Summary { task: Some(t), pid: Some(9603), .. } if t == "a b) c,pid=1")
        );
        assert!(
            matches!(&got[5], OomLine::Killed { comm, pid: Some(9603), total_vm_kb: Some(278712), .. } if comm == "a b) c,pid=1")
        );
        assert!(
            matches!(&got[8], OomLine::Killed { comm, pid: Some(9647), .. } if comm == "w\\xc3\\xa9 (x)")
        );
    }

    #[test]
    fn kmsg_host_storm_rate_limit() {
        let got = parsed("host-6.18-memcg-storm.kmsg");
        let count = |f: fn(&OomLine) -> bool| got.iter().filter(|l| f(l)).count();
        // 40 kills in the storm + 1 later: every kill line arrived, most headers did not.
        assert_eq!(
            count(|l| matches!(l, OomLine::Killed { memcg: true, .. })),
            41
        );
        assert_eq!(count(|l| matches!(l, OomLine::Header { .. })), 11);
        assert_eq!(count(|l| matches!(l, OomLine::Summary { .. })), 11);
        assert!(got.contains(&OomLine::Suppressed {
            function: "oom_kill_process".into(),
            count: 30
        }));
    }

    #[test]
    fn kmsg_pre_4_19_two_line_kill() {
        let got = parsed("centos7-3.10-k8s-56891");
        assert_eq!(
            got[0],
            OomLine::KillChosen {
                memcg: true,
                global: false,
                pid: Some(24572),
                comm: "java".into(),
                score: Some(0)
            }
        );
        assert!(matches!(
            &got[1],
            OomLine::Killed {
                memcg: false,
                global: false,
                pid: Some(28438),
                total_vm_kb: Some(20255636),
                anon_rss_kb: Some(466160),
                file_rss_kb: Some(13684),
                shmem_rss_kb: None,
                uid: None,
                ..
            }
        ));
        assert_eq!(
            got[2],
            OomLine::Header {
                comm: "java".into(),
                gfp_mask: Some("0xd0".into()),
                order: Some(0),
                oom_score_adj: Some(-998)
            }
        );
        assert_eq!(got.len(), 3, "the cpuset line is not an OOM line");
    }

    #[test]
    fn kmsg_rhel7_uid_and_task_in() {
        let got = parsed("rhel7-3.10-ltp-1080");
        assert!(matches!(
            &got[0],
            OomLine::Killed { pid: Some(42452), comm, uid: Some(0), total_vm_kb: Some(7296), shmem_rss_kb: Some(0), .. }
                if comm == "memcg_test_1"
        ));
        assert!(matches!(
            &got[1],
            OomLine::KillChosen {
                memcg: true,
                score: Some(0),
                ..
            }
        ));
        assert_eq!(
            got[3],
            OomLine::TaskInMemcg {
                task_cgroup: "/13".into(),
                limit_cgroup: "/13".into()
            }
        );
        for name in ["istio-42734-pre4.19", "ecs-4508-4.14"] {
            let got = parsed(name);
            let OomLine::TaskInMemcg {
                task_cgroup,
                limit_cgroup,
            } = &got[0]
            else {
                panic!("{name}: {got:?}")
            };
            assert!(
                task_cgroup.starts_with('/') && task_cgroup == limit_cgroup,
                "{name}"
            );
        }
    }

    #[test]
    fn kmsg_headers_of_every_generation() {
        let header = |name: &str| {
            parsed(name)
                .into_iter()
                .find(|l| matches!(l, OomLine::Header { .. }))
                .unwrap()
        };
        let h = |comm: &str, gfp: &str, order, adj| OomLine::Header {
            comm: comm.into(),
            gfp_mask: Some(gfp.into()),
            order: Some(order),
            oom_score_adj: Some(adj),
        };
        assert_eq!(
            header("kata-4.14-1310"),
            h("mem", "0x14200ca(GFP_HIGHUSER_MOVABLE)", 0, 0)
        );
        assert_eq!(
            header("moby-38352-4.19"),
            h("thrash", "0x6000c0(GFP_KERNEL)", 0, 0)
        );
        assert_eq!(
            header("db1000n-555-5.4"),
            h("app", "0x100cca(GFP_HIGHUSER_MOVABLE)", 0, 0)
        );
        assert_eq!(
            header("relate-1383-6.16-global"),
            h(
                "postgres",
                "0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP)",
                0,
                0
            )
        );
        assert_eq!(
            header("systemd-40208-6.17"),
            h("systemd", "0xcc0(GFP_KERNEL)", 0, 100)
        );
        let sysrq: Vec<OomLine> = parsed("lkml-sysrq-order-minus-1")
            .into_iter()
            .filter(|l| matches!(l, OomLine::Header { .. }))
            .collect();
        assert_eq!(sysrq.len(), 3);
        assert_eq!(sysrq[0], h("kworker/2:0", "0xd0", -1, 0));
        assert!(sysrq.iter().all(|l| matches!(
            l,
            OomLine::Header {
                order: Some(-1),
                ..
            }
        )));
    }

    #[test]
    fn kmsg_global_kill_6_16() {
        assert_eq!(
            parsed("relate-1383-6.16-global")[0],
            OomLine::Killed {
                memcg: false,
                global: true,
                pid: Some(3581527),
                comm: "uwsgi".into(),
                total_vm_kb: Some(517892),
                anon_rss_kb: Some(263092),
                file_rss_kb: Some(29128),
                shmem_rss_kb: Some(0),
                uid: Some(33),
                pgtables_kb: Some(740),
                oom_score_adj: Some(0)
            }
        );
    }

    #[test]
    fn kmsg_group_kill_and_reaper() {
        let got = parsed("lkml-group-kill-d342a0b38674");
        assert!(
            matches!(&got[0], OomLine::Summary { constraint: Some(c), global: false, oom_memcg: Some(m), pid: Some(9188), .. }
            if c == "CONSTRAINT_NONE" && m == "/test1")
        );
        assert_eq!(
            got[2],
            OomLine::GroupKill {
                cgroup: "/test1".into()
            }
        );
        assert_eq!(
            got[3],
            OomLine::Reaped {
                pid: Some(9188),
                comm: "a.out".into(),
                anon_rss_kb: Some(0),
                file_rss_kb: Some(0),
                shmem_rss_kb: Some(0)
            }
        );
        assert!(
            matches!(&got[4], OomLine::Killed { memcg: true, pid: Some(1), comm, .. } if comm == "systemd")
        );
    }

    #[test]
    fn kmsg_summary_lxc_paths() {
        let OomLine::Summary {
            oom_memcg,
            task_memcg,
            cpuset,
            task,
            pid,
            uid,
            ..
        } = &parsed("gpud-70-lxc")[0]
        else {
            panic!()
        };
        assert!(
            oom_memcg
                .as_deref()
                .unwrap()
                .ends_with("podeded8c65_6e8e_4c6e_a889_3e427565c740.slice")
        );
        assert!(task_memcg.as_deref().unwrap().ends_with(".scope"));
        assert!(cpuset.as_deref().unwrap().starts_with("cri-containerd-"));
        assert_eq!(
            (task.as_deref(), *pid, *uid),
            (Some("pt_main_thread"), Some(461754), Some(0))
        );
    }

    #[test]
    fn kmsg_summary_variants() {
        // Kernel format strings: 4.19 printed %5d pids and the memcg before the
        // cpuset; global OOMs print the bare word global_oom; nodemask lists have commas.
        let s = parse_oom_line(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=0,2-3,oom_memcg=/a,b,task_memcg=/a,b/c,cpuset=/,mems_allowed=0-1,task=x,pid= 2423,uid=    0",
        )
        .unwrap();
        assert_eq!(
            s,
            OomLine::Summary {
                constraint: Some("CONSTRAINT_NONE".into()),
                global: false,
                oom_memcg: Some("/a,b".into()),
                task_memcg: Some("/a,b/c".into()),
                task: Some("x".into()),
                pid: Some(2423),
                uid: Some(0),
                cpuset: Some("/".into())
            }
        );
        let g = parse_oom_line("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),global_oom,task_memcg=/,task=bash,pid=9,uid=1000").unwrap();
        assert!(
            matches!(g, OomLine::Summary { global: true, oom_memcg: None, cpuset: None, task_memcg: Some(ref t), .. } if t == "/")
        );
        // A fragment (the kernel split a pr_cont line): fields that are there.
        let f = parse_oom_line("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null)").unwrap();
        assert!(matches!(
            f,
            OomLine::Summary {
                constraint: Some(_),
                task: None,
                pid: None,
                ..
            }
        ));
    }

    /// The records of a sample file, as the reader gets them.
    fn records(name: &str) -> Vec<KmsgRecord> {
        sample(name)
            .lines()
            .skip(1)
            .map(|l| parse_record(l.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn kmsg_user_space_records_are_counted_never_reported() {
        // What the kernel made of the issue's forgeries written to /dev/kmsg.
        let forged = records("host-6.18-forged.kmsg");
        assert_eq!(forged.len(), 5);
        assert_eq!(
            forged
                .iter()
                .map(|r| r.facility_prio >> 3)
                .collect::<Vec<_>>(),
            [1, 1, 1, 1, 3],
            "<3>, <6>, no prefix and <0> all became LOG_USER; <30> is daemon"
        );
        let stats = KmsgStats::default();
        for r in forged.clone() {
            assert!(!r.is_kernel());
            assert!(parse_oom_line(&r.message).is_some(), "{r:?}");
            assert!(kernel_oom_line(r, &stats).is_none());
        }
        assert_eq!(stats.forged_oom_lines.load(Ordering::Relaxed), 5);
        assert_eq!(stats.oom_lines.load(Ordering::Relaxed), 0);

        // The kernel's own lines (facility 0, levels 3, 4 and 6) pass.
        let real = records("host-6.18-memcg.kmsg");
        let mut kernel_lines = 0;
        for r in real {
            assert!(r.is_kernel(), "{r:?}");
            let seq = r.seq;
            if let Some(oom) = kernel_oom_line(r, &stats) {
                assert_eq!(oom.seq, seq);
                kernel_lines += 1;
            }
        }
        assert_eq!(kernel_lines, 12);
        assert_eq!(stats.oom_lines.load(Ordering::Relaxed), 12);
        assert_eq!(stats.forged_oom_lines.load(Ordering::Relaxed), 5);

        // A user-space record that is no OOM line is not a forgery.
        let other =
            parse_record(b"30,9,1,-;systemd[1]: Started Session 3 of User root.\n").unwrap();
        assert!(kernel_oom_line(other, &stats).is_none());
        assert_eq!(stats.forged_oom_lines.load(Ordering::Relaxed), 5);
    }

    /// Real kernel lines of two memcg kills on this host whose cgroup names,
    /// cpuset name and comms were chosen to break a comma splitter.
    #[test]
    fn kmsg_hostile_names_from_a_real_kernel_keep_the_real_fields() {
        let got: Vec<OomLine> = records("host-6.18-hostile-names.kmsg")
            .iter()
            .filter_map(|r| parse_oom_line(&r.message))
            .collect();
        assert_eq!(got.len(), 6);
        let p1 = "/oomtrace-hostile-2374/x,global_oom,task_memcg=/kubepods/besteffort";
        assert_eq!(
            got[1],
            OomLine::Summary {
                constraint: Some("CONSTRAINT_MEMCG".into()),
                global: false,
                oom_memcg: Some(p1.into()),
                task_memcg: Some(format!("{p1}/c,task=v,pid=1,uid=0")),
                task: Some("e,task=f,pid=7".into()),
                pid: Some(2439),
                uid: Some(0),
                cpuset: Some("cs,oom_memcg=,global_oom,mems_allowed=0".into()),
            }
        );
        assert!(
            matches!(&got[2], OomLine::Killed { memcg: true, pid: Some(2439), comm, .. } if comm == "e,task=f,pid=7")
        );
        assert!(matches!(&got[0], OomLine::Header { comm, .. } if comm == "e,task=f,pid=7"));
        // The victim directly in the OOM cgroup: the comm `w,task=q` and the
        // name `k,task=z` make two comm splits; only one keeps the victim in
        // the OOM cgroup.
        let p = "/oomtrace-hostile-2374/k,task=z";
        assert_eq!(
            got[4],
            OomLine::Summary {
                constraint: Some("CONSTRAINT_MEMCG".into()),
                global: false,
                oom_memcg: Some(p.into()),
                task_memcg: Some(p.into()),
                task: Some("w,task=q".into()),
                pid: Some(2460),
                uid: Some(0),
                cpuset: Some("/".into()),
            }
        );
    }

    /// `dump_oom_summary()` of 5.0+ as the kernel formats it.
    fn summary(
        constraint: &str,
        cpuset: Option<&str>,
        oom_memcg: Option<&str>,
        task_memcg: &str,
        comm: &str,
        pid: u32,
    ) -> String {
        let mut l = format!("oom-kill:constraint={constraint},nodemask=(null)");
        if let Some(c) = cpuset {
            l += &format!(",cpuset={c},mems_allowed=0");
        }
        match oom_memcg {
            Some(m) => l += &format!(",oom_memcg={m}"),
            None => l += ",global_oom",
        }
        l + &format!(",task_memcg={task_memcg},task={comm},pid={pid},uid=0")
    }

    /// constraint, global, oom_memcg, task_memcg, task, pid.
    type Fields = (
        Option<String>,
        bool,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<u32>,
    );

    fn summary_fields(line: &str) -> Fields {
        match parse_oom_line(line) {
            Some(OomLine::Summary {
                constraint,
                global,
                oom_memcg,
                task_memcg,
                task,
                pid,
                ..
            }) => (constraint, global, oom_memcg, task_memcg, task, pid),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn kmsg_summary_hostile_names_cannot_change_the_verdict() {
        let pod = "/kubepods/burstable/pod3e61aa2b-1b1d-4d5e-8f0a-2b8f0c9d1e2f/0123456789abcdef";
        // A memcg OOM whose cgroup is named to look global and to name another pod.
        for evil in [
            "x,global_oom,task_memcg=/kubepods/besteffort/podother",
            "y,oom_memcg=/kubepods",
            "z,pid=1,uid=0",
            ",",
            "global_oom",
            "a,task_memcg=/kubepods/besteffort/podother,task=x",
        ] {
            let oom = format!("{pod}/{evil}");
            for task_memcg in [oom.clone(), format!("{oom}/child")] {
                let line = summary(
                    "CONSTRAINT_MEMCG",
                    Some("/"),
                    Some(&oom),
                    &task_memcg,
                    "python3",
                    42,
                );
                let (c, global, m, t, comm, pid) = summary_fields(&line);
                assert_eq!(c.as_deref(), Some("CONSTRAINT_MEMCG"), "{line}");
                assert!(!global, "{line}");
                assert_eq!(m.as_deref(), Some(oom.as_str()), "{line}");
                assert_eq!(t.as_deref(), Some(task_memcg.as_str()), "{line}");
                assert_eq!(
                    (comm.as_deref(), pid),
                    (Some("python3"), Some(42)),
                    "{line}"
                );
                // 4.19/5.0 printed CONSTRAINT_NONE for memcg OOMs too.
                let old = line.replace("CONSTRAINT_MEMCG", "CONSTRAINT_NONE");
                let (_, global, m, t, _, _) = summary_fields(&old);
                assert!(!global, "{old}");
                assert_eq!(m.as_deref(), Some(oom.as_str()), "{old}");
                assert_eq!(t.as_deref(), Some(task_memcg.as_str()), "{old}");
            }
            // A global OOM of a victim with that name: still global, the victim's path whole.
            let victim = format!("{pod}/{evil}");
            for constraint in [
                "CONSTRAINT_NONE",
                "CONSTRAINT_CPUSET",
                "CONSTRAINT_MEMORY_POLICY",
            ] {
                let line = summary(constraint, Some("/"), None, &victim, "java", 7);
                let (_, global, m, t, comm, pid) = summary_fields(&line);
                assert!(global, "{line}");
                assert_eq!(m, None, "{line}");
                assert_eq!(pid, Some(7), "{line}");
                if evil.contains(",task=") {
                    // The documented ambiguity: `…,task=x` + `,task=java` splits
                    // as comm `x,task=java` too; the path stays the victim's own.
                    let t = t.unwrap();
                    assert!(victim.starts_with(&t) && t.starts_with(pod), "{line}");
                    continue;
                }
                assert_eq!(t.as_deref(), Some(victim.as_str()), "{line}");
                assert_eq!(comm.as_deref(), Some("java"), "{line}");
            }
        }
        // A hostile cpuset name (a trigger's cgroup name; no `/` possible) before the memcg part.
        for cpuset in [
            "c,oom_memcg=,global_oom",
            "d,global_oom",
            "e,mems_allowed=1,oom_memcg=",
        ] {
            let line = summary("CONSTRAINT_NONE", Some(cpuset), None, pod, "x", 9);
            let (_, global, m, t, _, _) = summary_fields(&line);
            assert!(global && m.is_none(), "{line}");
            assert_eq!(t.as_deref(), Some(pod), "{line}");
            let line = summary("CONSTRAINT_MEMCG", Some(cpuset), Some(pod), pod, "x", 9);
            let (_, global, m, _, _, _) = summary_fields(&line);
            assert!(!global, "{line}");
            assert_eq!(m.as_deref(), Some(pod), "{line}");
            let OomLine::Summary { cpuset: got, .. } = parse_oom_line(&line).unwrap() else {
                panic!()
            };
            assert_eq!(got.as_deref(), Some(cpuset), "{line}");
        }
        // A comm may hold any of it too (15 bytes at most).
        for comm in ["a,pid=1,uid=2", "b,task=c", ",global_oom", "d,uid=5"] {
            let line = summary("CONSTRAINT_MEMCG", None, Some(pod), pod, comm, 11);
            let (_, global, m, t, got, pid) = summary_fields(&line);
            assert!(!global, "{line}");
            assert_eq!(
                (m.as_deref(), t.as_deref()),
                (Some(pod), Some(pod)),
                "{line}"
            );
            assert_eq!((got.as_deref(), pid), (Some(comm), Some(11)), "{line}");
        }
        // The constraint word decides against a forged memcg part.
        let line = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),global_oom,task_memcg=/a,oom_memcg=/b,task_memcg=/b,task=x,pid=1,uid=0";
        let (_, global, m, _, _, _) = summary_fields(line);
        assert!(!global, "{line}");
        assert_eq!(m.as_deref(), Some("/b"), "{line}");
    }

    #[test]
    fn kmsg_task_in_memcg_with_hostile_names() {
        // The task's cgroup is named with the separator: the only split that
        // keeps the task below its limit cgroup is the kernel's.
        let line =
            "Task in /p/x killed as a result of limit of /y killed as a result of limit of /p";
        assert_eq!(
            parse_oom_line(line),
            Some(OomLine::TaskInMemcg {
                task_cgroup: "/p/x killed as a result of limit of /y".into(),
                limit_cgroup: "/p".into()
            })
        );
        // No split keeps it below: the first is taken.
        let line = "Task in /a killed as a result of limit of /x killed as a result of limit of /b";
        assert_eq!(
            parse_oom_line(line),
            Some(OomLine::TaskInMemcg {
                task_cgroup: "/a".into(),
                limit_cgroup: "/x killed as a result of limit of /b".into()
            })
        );
        let line =
            "Task in /p/q killed as a result of limit of /r killed as a result of limit of /p";
        assert_eq!(
            parse_oom_line(line),
            Some(OomLine::TaskInMemcg {
                task_cgroup: "/p/q killed as a result of limit of /r".into(),
                limit_cgroup: "/p".into()
            })
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// Pieces of hostile names: every separator and key of the summary.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "x",
                "0",
                ",",
                "=",
                " ",
                ")",
                "(null)",
                "task=",
                "task_memcg=",
                "oom_memcg=",
                "global_oom",
                "pid=1",
                "uid=0",
                "cpuset=",
                "mems_allowed=0",
                "nodemask=",
                "constraint=CONSTRAINT_MEMCG",
                "kubepods",
                "\u{e9}",
            ])
        }

        fn name(max: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 1..max).prop_map(|p| p.concat())
        }

        /// A comm of at most 15 bytes.
        fn comm() -> impl Strategy<Value = String> {
            name(6).prop_map(|mut c| {
                while c.len() > COMM_MAX_BYTES {
                    c.pop();
                }
                if c.is_empty() { "x".into() } else { c }
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Whatever the names: pid, uid, constraint and the OOM domain
            /// kind are the kernel's; the paths start with the real path up to
            /// the first hostile name (never another pod's); without a `,task`
            /// in any name every field is exact.
            #[test]
            fn kmsg_summary_survives_hostile_names(
                base in prop::sample::select(vec![
                    "/kubepods/burstable/pod3e61aa2b-1b1d-4d5e-8f0a-2b8f0c9d1e2f",
                    "/kubepods.slice/kubepods-pod3e61aa2b_1b1d_4d5e_8f0a_2b8f0c9d1e2f.slice",
                    "/system.slice/batch.service",
                ]),
                oom_names in prop::collection::vec(name(5), 0..3),
                below in prop::collection::vec(name(5), 0..3),
                comm in comm(),
                cpuset in prop::option::of(prop_oneof![Just("/".to_owned()), name(5)]),
                memcg in any::<bool>(),
                constraint in prop::sample::select(vec!["CONSTRAINT_NONE", "CONSTRAINT_CPUSET", "CONSTRAINT_MEMORY_POLICY"]),
                pid in 1_u32..4_194_304,
            ) {
                let oom = std::iter::once(base.to_owned()).chain(oom_names.iter().cloned()).collect::<Vec<_>>().join("/");
                let victim = std::iter::once(oom.clone()).chain(below.iter().cloned()).collect::<Vec<_>>().join("/");
                let constraint = if memcg { "CONSTRAINT_MEMCG" } else { constraint };
                let line = summary(constraint, cpuset.as_deref(), memcg.then_some(oom.as_str()), &victim, &comm, pid);
                let Some(OomLine::Summary { constraint: c, global, oom_memcg, task_memcg, task, pid: p, uid, cpuset: cs }) =
                    parse_oom_line(&line) else { panic!("{line}") };
                prop_assert_eq!(c.as_deref(), Some(constraint));
                prop_assert_eq!(p, Some(pid));
                prop_assert_eq!(uid, Some(0));
                prop_assert_eq!(global, !memcg);
                prop_assert_eq!(oom_memcg.is_some(), memcg);
                let t = task_memcg.expect("task_memcg");
                prop_assert!(t.starts_with(base), "{t}");
                if let Some(m) = &oom_memcg {
                    prop_assert!(m.starts_with(base), "{m}");
                    prop_assert!(within(&t, m), "{t} not within {m}");
                }
                let task_free = |s: &str| !s.contains(",task");
                if oom_names.iter().chain(&below).all(|n| task_free(n)) && task_free(&comm) {
                    prop_assert_eq!(t, victim);
                    prop_assert_eq!(oom_memcg, memcg.then_some(oom));
                    prop_assert_eq!(task, Some(comm));
                    prop_assert_eq!(cs, cpuset);
                }
            }

            #[test]
            fn kmsg_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
                if let Some(r) = parse_record(&bytes) {
                    let _ = parse_oom_line(&r.message);
                }
                let _ = parse_oom_line(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn kmsg_other_lines_are_not_oom() {
        for l in [
            "",
            "quiet_error: 48 callbacks suppressed",
            "Out of memory and no killable processes...",
            "java cpuset=/ mems_allowed=0",
            "Killed process",
            "oom_reaper: unable to reap pid:7 (worker)",
            "sysrq: SysRq : Manual OOM execution",
        ] {
            assert_eq!(parse_oom_line(l), None, "{l:?}");
        }
    }

    /// Truncations of every sample line and random byte mutations: no panic.
    #[test]
    fn kmsg_fuzz_no_panic() {
        let mut all: Vec<String> = SAMPLES.iter().flat_map(|(n, _)| lines(n)).collect();
        all.extend(
            SAMPLES
                .iter()
                .flat_map(|(_, t)| t.lines().map(str::to_owned)),
        );
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let alphabet = b"(),:=; 0123456789-kBxc\\\n\xff\xc3";
        for line in &all {
            let bytes = line.as_bytes();
            for cut in 0..=bytes.len() {
                let _ = parse_record(&bytes[..cut]);
                let _ = parse_oom_line(&String::from_utf8_lossy(&bytes[..cut]));
                let _ = parse_oom_line(&String::from_utf8_lossy(&bytes[cut..]));
            }
            for _ in 0..50 {
                let mut m = bytes.to_vec();
                for _ in 0..=(next() % 4) {
                    if m.is_empty() {
                        break;
                    }
                    let at = (next() as usize) % m.len();
                    match next() % 3 {
                        0 => m[at] = alphabet[(next() as usize) % alphabet.len()],
                        1 => {
                            m.remove(at);
                        }
                        _ => m.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                    }
                }
                let _ = parse_record(&m);
                let _ = parse_oom_line(&String::from_utf8_lossy(&m));
            }
        }
    }

    #[test]
    fn kmsg_due_kill_lines_are_looked_for_until_read_or_too_late() {
        let t0 = Instant::now();
        let mut lines = DueLines::default();
        assert_eq!(lines.next_wait(vec![], t0, IDLE_POLL), IDLE_POLL);
        // Both mark_victim programs announce the victim: one line is due.
        assert_eq!(lines.next_wait(vec![41, 41], t0, IDLE_POLL), DUE_POLL);
        lines.read(41);
        assert_eq!(
            lines.next_wait(vec![], t0, IDLE_POLL),
            IDLE_POLL,
            "its kill line was read"
        );
        // Announced after its line was read (a slow ring reader): not due.
        assert_eq!(lines.next_wait(vec![41], t0, IDLE_POLL), IDLE_POLL);
        // A mark without a kill line (a victim already exiting) is looked
        // for only within the window.
        assert_eq!(lines.next_wait(vec![42], t0, IDLE_POLL), DUE_POLL);
        let later = t0 + DUE_WINDOW / 2;
        assert_eq!(lines.next_wait(vec![], later, IDLE_POLL), DUE_POLL);
        let late = t0 + DUE_WINDOW;
        assert_eq!(lines.next_wait(vec![], late, IDLE_POLL), IDLE_POLL);
        // Only the last RECENT_KILLS lines are remembered.
        for pid in 1000..1000 + RECENT_KILLS as u32 {
            lines.read(pid);
        }
        assert_eq!(lines.next_wait(vec![41], late, IDLE_POLL), DUE_POLL);
        assert_eq!(lines.next_wait(vec![1000 + 5], late, IDLE_POLL), DUE_POLL);
        lines.read(41);
        assert_eq!(lines.next_wait(vec![], late, IDLE_POLL), IDLE_POLL);
    }

    #[test]
    fn kmsg_announced_victims_wake_the_reader() {
        let due = KillLinesDue::new().unwrap();
        assert!(due.take().is_empty());
        due.announce(7);
        due.announce(8);
        let mut pfd = libc::pollfd {
            fd: due.0.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no wait.
        assert_eq!(
            unsafe { libc::poll(&mut pfd, 1, 0) },
            1,
            "the eventfd is readable"
        );
        assert_eq!(due.take(), [7, 8]);
        pfd.revents = 0;
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::poll(&mut pfd, 1, 0) },
            0,
            "taken: no longer readable"
        );
    }

    #[test]
    fn kmsg_lost_between() {
        assert_eq!(lost_between(None, 500), 0);
        assert_eq!(lost_between(Some(9), 10), 0);
        assert_eq!(lost_between(Some(9), 40), 30);
        assert_eq!(lost_between(Some(40), 40), 0);
        assert_eq!(lost_between(Some(40), 3), 0);
        assert_eq!(lost_between(Some(0), u64::MAX), u64::MAX - 1);
    }

    /// A reader that returns scripted `read()` results, like /dev/kmsg does.
    struct Script(std::collections::VecDeque<io::Result<Vec<u8>>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(Err(e)) => Err(e),
                Some(Ok(rec)) => {
                    buf[..rec.len()].copy_from_slice(&rec);
                    Ok(rec.len())
                }
            }
        }
    }

    #[test]
    fn kmsg_read_records_counts_epipe_gaps() {
        let rec = |seq: u64| Ok(format!("6,{seq},1,-;line {seq}\n").into_bytes());
        let script = Script(
            [
                rec(10),
                rec(11),
                Err(io::Error::from_raw_os_error(libc::EPIPE)),
                rec(50),
                Err(io::Error::from_raw_os_error(libc::EINTR)),
                rec(51),
                Ok(b"not a record".to_vec()),
                rec(52),
            ]
            .into(),
        );
        let stats = KmsgStats::default();
        let mut seen = vec![];
        read_records(script, &stats, |r| {
            seen.push(r.seq);
            true
        })
        .unwrap();
        assert_eq!(seen, [10, 11, 50, 51, 52]);
        assert_eq!(stats.records.load(Ordering::Relaxed), 5);
        assert_eq!(stats.resyncs.load(Ordering::Relaxed), 1);
        assert_eq!(stats.lost_records.load(Ordering::Relaxed), 38);

        let stats = KmsgStats::default();
        let script = Script([rec(1), rec(2)].into());
        read_records(script, &stats, |_| false).unwrap();
        assert_eq!(stats.records.load(Ordering::Relaxed), 1, "stops when asked");
        let err = read_records(
            Script([Err(io::Error::from_raw_os_error(libc::EIO))].into()),
            &stats,
            |_| true,
        );
        assert!(matches!(err, Err(KmsgError::Read { .. })));
    }

    #[test]
    fn kmsg_open_error_says_what_to_do() {
        let err = Reader::open(Path::new("/nonexistent/kmsg"), StartAt::End, Arc::default())
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.starts_with("cannot open /nonexistent/kmsg: "), "{msg}");
        assert!(
            msg.ends_with("run as root or grant CAP_SYSLOG, or pass --no-kmsg"),
            "{msg}"
        );
    }

    #[test]
    fn kmsg_no_record_ready_ends_a_read_or_waits() {
        let rec = |seq: u64| Ok(format!("6,{seq},1,-;line {seq}\n").into_bytes());
        let would_block = || Err(io::Error::from(io::ErrorKind::WouldBlock));
        // The backlog: read up to the first EAGAIN.
        let stats = KmsgStats::default();
        let mut seen = vec![];
        read_records(
            Script([rec(7), rec(8), would_block(), rec(9)].into()),
            &stats,
            |r| {
                seen.push(r.seq);
                true
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            [7, 8],
            "a non-blocking read ends when nothing is ready"
        );

        // Live: wait while idle, carry the sequence across the wait, stop
        // when asked, at the next EAGAIN.
        let stats = KmsgStats::default();
        let mut seen = vec![];
        let mut idles = 0;
        let mut prev = Some(6);
        read_loop(
            Script([rec(7), would_block(), rec(10), would_block(), rec(11)].into()),
            &stats,
            &mut prev,
            |r| {
                seen.push(r.seq);
                true
            },
            || {
                idles += 1;
                idles < 2
            },
        )
        .unwrap();
        assert_eq!(seen, [7, 10]);
        assert_eq!(idles, 2);
        assert_eq!(prev, Some(10));
        assert_eq!(stats.lost_records.load(Ordering::Relaxed), 2, "8 and 9");
    }

    #[test]
    #[ignore = "privileged: needs root and /dev/kmsg, run by cargo xtask test"]
    fn kmsg_reads_own_line_from_dev_kmsg() {
        use std::io::Write;
        let token = format!(
            "oomtrace-selftest: {}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let reader = Reader::open(Path::new("/dev/kmsg"), StartAt::End, Arc::default()).unwrap();
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .unwrap();
        writer.write_all(format!("{token}\n").as_bytes()).unwrap();
        let stats = KmsgStats::default();
        let mut found = None;
        read_records(&lock(&reader.shared).file, &stats, |r| {
            if r.message == token {
                found = Some(r);
                return false;
            }
            stats.records.load(Ordering::Relaxed) < 100_000
        })
        .unwrap();
        let found = found.expect("own line not read back from /dev/kmsg");
        assert!(found.seq > 0 && found.ts_usec > 0);
        assert_eq!(parse_oom_line(&found.message), None);
    }

    /// The backlog is read from the oldest record up to the last one, and a
    /// stopped reader ends by itself, closing its channel.
    #[test]
    #[ignore = "privileged: needs root and /dev/kmsg, run by cargo xtask test"]
    fn kmsg_backlog_reaches_the_last_record_and_a_stopped_reader_ends() {
        use std::io::Write;
        let token = format!("oomtrace-backlog-selftest: {}", std::process::id());
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .unwrap()
            .write_all(format!("{token}\n").as_bytes())
            .unwrap();
        let stats = Arc::new(KmsgStats::default());
        let mut reader =
            Reader::open(Path::new("/dev/kmsg"), StartAt::Oldest, Arc::clone(&stats)).unwrap();
        let mut token_seq = None;
        let backlog = reader
            .read_backlog(|r| {
                if r.message == token {
                    token_seq = Some(r.seq);
                }
                true
            })
            .unwrap();
        let token_seq = token_seq.expect("the line written before opening is in the backlog");
        let (first, last) = (backlog.first_seq.unwrap(), backlog.last_seq.unwrap());
        assert!(
            first < token_seq && token_seq <= last,
            "{first} < {token_seq} <= {last}"
        );
        assert!(
            backlog
                .lines
                .iter()
                .all(|l| l.replayed && l.seq >= first && l.seq <= last)
        );

        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = reader.spawn(Vec::new(), tx, Arc::clone(&stop)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(!thread.is_finished(), "an idle reader waits for records");
        let asked = Instant::now();
        stop.store(true, Ordering::Relaxed);
        while !thread.is_finished() {
            assert!(
                asked.elapsed() < Duration::from_secs(2),
                "the reader did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join().unwrap().unwrap();
        assert!(
            rx.blocking_recv().is_none(),
            "its channel is closed once it has ended"
        );
        println!(
            "backlog: records {first}..={last}, {} read; stopped in {:?}",
            stats.records.load(Ordering::Relaxed),
            asked.elapsed()
        );
    }

    /// The reader thread and the correlation stage's tap read the same
    /// log: every record is read once, by one of them. Forged OOM lines
    /// (a user-space write) are counted by whoever reads them.
    #[test]
    #[ignore = "privileged: needs root and /dev/kmsg, run by cargo xtask test"]
    fn kmsg_the_tap_and_the_reader_thread_read_each_record_once() {
        use std::io::Write;
        const LINES: u64 = 100;
        let stats = Arc::new(KmsgStats::default());
        let reader =
            Reader::open(Path::new("/dev/kmsg"), StartAt::End, Arc::clone(&stats)).unwrap();
        let tap = reader.tap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = reader.spawn(Vec::new(), tx, Arc::clone(&stop)).unwrap();
        // The kernel lets one open /dev/kmsg write 10 lines per 5 s.
        let writer = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/kmsg")
                .unwrap()
        };
        let mut tapped = 0;
        for i in 0..LINES {
            let mut writer = writer();
            let line = format!(
                "Out of memory: Killed process {} (oomtrace-tap) total-vm:1kB\n",
                4_000_000 + i
            );
            writer.write_all(line.as_bytes()).unwrap();
            if i % 2 == 0 {
                let before = stats.records.load(Ordering::Relaxed);
                assert_eq!(
                    tap.read(&mut rx).len(),
                    0,
                    "forged lines are never handed on"
                );
                tapped += u64::from(stats.records.load(Ordering::Relaxed) > before);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.forged_oom_lines.load(Ordering::Relaxed) < LINES {
            assert!(Instant::now() < deadline, "not every line was read");
            assert_eq!(tap.read(&mut rx).len(), 0);
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap().unwrap();
        assert!(rx.try_recv().is_err(), "forged lines are never handed on");
        assert_eq!(stats.forged_oom_lines.load(Ordering::Relaxed), LINES);
        assert!(tapped > 0, "the tap read the log at least once");
        assert_eq!(stats.lost_records.load(Ordering::Relaxed), 0);
        println!("{tapped} of {} tap reads read records", LINES / 2);
    }

    /// The tap hands on what the reader thread sent before what it reads
    /// itself, and only what was sent while the thread holds the log.
    /// Real kernel records (the summary, then the kill line, of a memcg
    /// kill on the host), one per write into a FIFO in place of the log.
    #[test]
    fn kmsg_the_tap_keeps_the_logs_order() {
        let data = crate::testdata::read("kmsg", "host-6.18-memcg.kmsg.txt");
        let record = |prefix: &str| {
            let line = data.lines().find(|l| l.contains(prefix)).unwrap();
            format!("{line}\n")
        };
        let (summary, killed) = (record(";oom-kill:"), record(";Memory cgroup out of memory"));
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("kmsg");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mode bits only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Read-write: never blocks, and holds a writer open.
        let mut writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let stats = Arc::new(KmsgStats::default());
        let reader = Reader::open(&fifo, StartAt::Oldest, Arc::clone(&stats)).unwrap();
        let tap = reader.tap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let kernel = |r: &str| kernel_oom_line(parse_record(r.as_bytes()).unwrap(), &stats);
        // The reader thread read the summary and sent it; the kill line is
        // still in the log.
        tx.try_send(kernel(&summary).unwrap()).unwrap();
        std::io::Write::write_all(&mut writer, killed.as_bytes()).unwrap();
        {
            // While the thread holds the log, the tap reads none of it.
            let _thread = lock(&reader.shared);
            let sent = tap.read(&mut rx);
            assert!(matches!(
                sent[..],
                [KmsgOom {
                    line: OomLine::Summary { .. },
                    ..
                }]
            ));
            tx.try_send(kernel(&summary).unwrap()).unwrap();
        }
        let lines = tap.read(&mut rx);
        let kinds: Vec<&str> = lines
            .iter()
            .map(|l| match l.line {
                OomLine::Summary { .. } => "summary",
                OomLine::Killed {
                    pid: Some(9240), ..
                } => "killed 9240",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["summary", "killed 9240"]);
        assert_eq!(tap.read(&mut rx).len(), 0, "each record once");
    }
}
