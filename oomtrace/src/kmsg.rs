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
//! Parsing is pure and never panics ([`parse_record`], [`parse_oom_line`]); the
//! reader ([`spawn_reader`], [`read_records`]) runs a blocking `read()` loop in
//! a dedicated thread, one record per `read()`.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use tokio::sync::mpsc::Sender;

/// Size of the buffer given to each `read()`: the kernel returns one record
/// per call and fails with `EINVAL` if the record does not fit
/// (`CONSOLE_EXT_LOG_MAX` is 8 KiB).
const READ_BUF: usize = 8192;

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
        let (task, limit) = rest.split_once(" killed as a result of limit of ")?;
        return Some(OomLine::TaskInMemcg {
            task_cgroup: task.to_owned(),
            limit_cgroup: limit.trim_end().to_owned(),
        });
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

/// Start of `key=` at the beginning of `s` or right after a comma.
fn key_pos(s: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}=");
    if s.starts_with(&pat) {
        return Some(0);
    }
    s.find(&format!(",{pat}")).map(|i| i + 1)
}

/// Parses what follows `oom-kill:`. Values may contain commas (nodemask and
/// mems_allowed lists, cgroup paths, the comm), so each value runs up to the
/// next known key. `task,pid,uid` always come last and the comm may itself
/// contain `,pid=`: the pid is taken from the last `,pid=`.
fn parse_summary(rest: &str) -> OomLine {
    let rest = rest.trim();
    let (head, tail) = match rest
        .find(",task=")
        .or(rest.starts_with("task=").then_some(0))
    {
        Some(i) => (&rest[..i], Some(rest[i..].trim_start_matches(','))),
        None => (rest, None),
    };
    let keys = [
        "constraint",
        "nodemask",
        "cpuset",
        "mems_allowed",
        "oom_memcg",
        "task_memcg",
    ];
    let mut starts: Vec<(usize, &str)> = keys
        .iter()
        .filter_map(|k| key_pos(head, k).map(|p| (p, *k)))
        .collect();
    let global_at = head.match_indices("global_oom").map(|(i, _)| i).find(|&i| {
        (i == 0 || head.as_bytes()[i - 1] == b',')
            && matches!(
                head.as_bytes().get(i + "global_oom".len()),
                None | Some(b',')
            )
    });
    if let Some(i) = global_at {
        starts.push((i, "global_oom"));
    }
    starts.sort_unstable();
    let value = |key: &str| -> Option<String> {
        let idx = starts.iter().position(|(_, k)| *k == key)?;
        let from = starts[idx].0 + key.len() + 1;
        let to = starts
            .get(idx + 1)
            .map_or(head.len(), |(p, _)| p.saturating_sub(1));
        head.get(from..to.max(from)).map(str::to_owned)
    };
    let (mut task, mut pid, mut uid) = (None, None, None);
    if let Some(tail) = tail {
        let body = tail.strip_prefix("task=").unwrap_or(tail);
        let (before_uid, uid_str) = match body.rfind(",uid=") {
            Some(i) => (&body[..i], Some(&body[i + ",uid=".len()..])),
            None => (body, None),
        };
        uid = uid_str.and_then(num);
        match before_uid.rfind(",pid=") {
            Some(i) => {
                task = Some(before_uid[..i].to_owned());
                pid = num(&before_uid[i + ",pid=".len()..]);
            }
            None => task = Some(before_uid.to_owned()),
        }
    }
    OomLine::Summary {
        constraint: value("constraint"),
        global: global_at.is_some(),
        oom_memcg: value("oom_memcg"),
        task_memcg: value("task_memcg"),
        task,
        pid,
        uid,
        cpuset: value("cpuset"),
    }
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
    /// OOM-killer lines recognised.
    pub oom_lines: AtomicU64,
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
/// them in `stats` and hands each to `on_record` until it returns `false`.
///
/// `EPIPE` means the ring buffer overwrote the next record: the kernel has
/// already moved the reader to the oldest record it holds, so the loop counts a
/// resync and goes on; the sequence gap of the next record is counted as lost.
/// `EINTR` is retried; `EINVAL` (a record larger than the buffer, which the
/// kernel then skips) is counted as one lost record. End of file (a regular
/// file in place of the device) ends the loop. Any other error is returned.
pub fn read_records<R: Read>(
    mut file: R,
    stats: &KmsgStats,
    mut on_record: impl FnMut(KmsgRecord) -> bool,
) -> Result<(), KmsgError> {
    let mut buf = vec![0u8; READ_BUF];
    let mut prev_seq = None;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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
        let lost = lost_between(prev_seq, record.seq);
        if lost > 0 {
            stats.lost_records.fetch_add(lost, Ordering::Relaxed);
            tracing::warn!(
                lost,
                "kernel log records were overwritten before they were read"
            );
        }
        prev_seq = Some(record.seq);
        if !on_record(record) {
            return Ok(());
        }
    }
}

/// Opens `path` (normally `/dev/kmsg`) and starts a thread that sends every
/// OOM-killer line to `tx`. With `from_end`, records already in the buffer are
/// skipped (`lseek(SEEK_END)`), so only new kills are reported.
///
/// The thread blocks in `read()`; it notices that the receiver is gone at the
/// next record and then ends. Read errors end it with a warning.
pub fn spawn_reader(
    path: PathBuf,
    from_end: bool,
    tx: Sender<KmsgOom>,
    stats: Arc<KmsgStats>,
) -> Result<JoinHandle<()>, KmsgError> {
    let file = open(&path, from_end)?;
    std::thread::Builder::new()
        .name("kmsg".into())
        .spawn(move || {
            let result = read_records(file, &stats, |record| {
                let Some(line) = parse_oom_line(&record.message) else {
                    return !tx.is_closed();
                };
                stats.oom_lines.fetch_add(1, Ordering::Relaxed);
                let oom = KmsgOom {
                    seq: record.seq,
                    ts_usec: record.ts_usec,
                    line,
                    received: Instant::now(),
                };
                tx.blocking_send(oom).is_ok()
            });
            if let Err(e) = result {
                tracing::warn!("{e}");
            }
        })
        .map_err(KmsgError::Spawn)
}

fn open(path: &Path, from_end: bool) -> Result<File, KmsgError> {
    let mut file = File::open(path).map_err(|source| KmsgError::Open {
        path: path.to_owned(),
        source,
    })?;
    if from_end {
        file.seek(SeekFrom::End(0))
            .map_err(|source| KmsgError::Seek {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok(file)
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
            include_str!("../tests/data/kmsg/host-6.18-memcg.txt"),
        ),
        (
            "host-6.18-memcg.kmsg",
            include_str!("../tests/data/kmsg/host-6.18-memcg.kmsg.txt"),
        ),
        (
            "host-6.18-memcg-storm.kmsg",
            include_str!("../tests/data/kmsg/host-6.18-memcg-storm.kmsg.txt"),
        ),
        (
            "centos7-3.10-k8s-56891",
            include_str!("../tests/data/kmsg/centos7-3.10-k8s-56891.txt"),
        ),
        (
            "rhel7-3.10-ltp-1080",
            include_str!("../tests/data/kmsg/rhel7-3.10-ltp-1080.txt"),
        ),
        (
            "kata-4.14-1310",
            include_str!("../tests/data/kmsg/kata-4.14-1310.txt"),
        ),
        (
            "istio-42734-pre4.19",
            include_str!("../tests/data/kmsg/istio-42734-pre4.19.txt"),
        ),
        (
            "ecs-4508-4.14",
            include_str!("../tests/data/kmsg/ecs-4508-4.14.txt"),
        ),
        (
            "moby-38352-4.19",
            include_str!("../tests/data/kmsg/moby-38352-4.19.txt"),
        ),
        (
            "lkml-group-kill-d342a0b38674",
            include_str!("../tests/data/kmsg/lkml-group-kill-d342a0b38674.txt"),
        ),
        (
            "relate-1383-6.16-global",
            include_str!("../tests/data/kmsg/relate-1383-6.16-global.txt"),
        ),
        (
            "systemd-40208-6.17",
            include_str!("../tests/data/kmsg/systemd-40208-6.17.txt"),
        ),
        (
            "db1000n-555-5.4",
            include_str!("../tests/data/kmsg/db1000n-555-5.4.txt"),
        ),
        (
            "gpud-70-lxc",
            include_str!("../tests/data/kmsg/gpud-70-lxc.txt"),
        ),
        (
            "lkml-sysrq-order-minus-1",
            include_str!("../tests/data/kmsg/lkml-sysrq-order-minus-1.txt"),
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
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let err = spawn_reader("/nonexistent/kmsg".into(), true, tx, Arc::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("cannot open /nonexistent/kmsg: "), "{msg}");
        assert!(
            msg.ends_with("run as root or grant CAP_SYSLOG, or pass --no-kmsg"),
            "{msg}"
        );
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
        let reader = open(Path::new("/dev/kmsg"), true).unwrap();
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .unwrap();
        writer.write_all(format!("{token}\n").as_bytes()).unwrap();
        let stats = KmsgStats::default();
        let mut found = None;
        read_records(reader, &stats, |r| {
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
}
