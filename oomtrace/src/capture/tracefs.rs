//! Finds tracefs and parses tracepoint `format` files, in particular
//! `oom/mark_victim`, whose record layout differs between kernels.
//!
//! `oom:mark_victim` has two ABIs (see `include/trace/events/oom.h`):
//!
//! - old (4.13 until 6.8): `TP_PROTO(int pid)`, one field `int pid`;
//! - new (6.9, commit 72ba14deb40a, and stable backports):
//!   `TP_PROTO(struct task_struct *task, uid_t uid)` with `pid`, `comm`
//!   (`__data_loc char[]`), `total_vm`, `anon_rss`, `file_rss`, `shmem_rss`,
//!   `uid`, `pgtables` and `oom_score_adj`.
//!
//! The memory fields are recorded **in kB**, not pages: `TP_fast_assign` stores
//! `PG_COUNT_TO_KB(x)` (`x << (PAGE_SHIFT - 10)`) for `total_vm` and the three
//! `get_mm_counter()` RSS counters, and `mm_pgtables_bytes(mm) >> 10` for
//! `pgtables`; the print format says `total-vm=%lukB`. So the decoder returns them
//! as they are, in kB.
//!
//! Field offsets and widths are read from the running kernel's `format` file and
//! never hard-coded: vendor trees use other widths (a 32-bit `unsigned long`, or
//! `u64` fields in some backports).

use std::{
    io,
    path::{Path, PathBuf},
};

/// Where tracefs is normally mounted, in the order they are tried.
pub const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Room kept for the `__data_loc` comm string after the fixed fields
/// (`TASK_COMM_LEN`).
pub const COMM_ROOM: u32 = 16;

/// Largest `format` file read: real ones are one or two KiB.
pub const MAX_FORMAT_BYTES: u64 = 256 << 10;

/// Errors of the tracefs module. Messages say what the user can do about them.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// No candidate mount point has an `events/` directory.
    #[error(
        "tracefs not found (tried {tried}): mount it with \
         `mount -t tracefs nodev /sys/kernel/tracing`, or pass --tracefs"
    )]
    NotMounted {
        /// The paths that were tried, comma-separated.
        tried: String,
    },
    /// The path given with `--tracefs` is not a tracefs mount.
    #[error(
        "--tracefs {path} has no events/ directory: pass the tracefs mount point \
         (usually /sys/kernel/tracing), or mount it with `mount -t tracefs nodev <dir>`"
    )]
    NotTracefs {
        /// The explicit path.
        path: PathBuf,
    },
    /// A format file could not be read.
    #[error("cannot read {path}: {source}; run oomtrace as root (tracefs is root-only)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A format file is larger than [`MAX_FORMAT_BYTES`].
    #[error(
        "{path} is larger than {limit} bytes, which no tracepoint format file is: \
         pass the tracefs mount point (usually /sys/kernel/tracing) with --tracefs"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// A line of a format file could not be parsed.
    #[error("malformed tracepoint format, line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A field the caller cannot do without is missing.
    #[error(
        "tracepoint `{event}` has no usable `{field}` field: this kernel's layout is not \
         supported; oomtrace falls back to tp_btf and /dev/kmsg"
    )]
    MissingField {
        /// The event name.
        event: String,
        /// The missing field.
        field: &'static str,
    },
}

/// Finds the tracefs mount point.
///
/// With `explicit` (`--tracefs`) only that path is checked; otherwise
/// [`TRACEFS_CANDIDATES`] are tried in order. A mount point is accepted when it
/// has an `events/` directory.
pub fn find_tracefs(explicit: Option<&Path>) -> Result<PathBuf, TracefsError> {
    if let Some(path) = explicit {
        return if path.join("events").is_dir() {
            Ok(path.to_path_buf())
        } else {
            Err(TracefsError::NotTracefs {
                path: path.to_path_buf(),
            })
        };
    }
    let candidates: Vec<&Path> = TRACEFS_CANDIDATES.iter().map(Path::new).collect();
    find_in(&candidates)
}

fn find_in(candidates: &[&Path]) -> Result<PathBuf, TracefsError> {
    candidates
        .iter()
        .find(|p| p.join("events").is_dir())
        .map(|p| p.to_path_buf())
        .ok_or_else(|| TracefsError::NotMounted {
            tried: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Reads and parses `<tracefs>/events/<system>/<event>/format`.
pub fn read_format(tracefs: &Path, system: &str, event: &str) -> Result<Format, TracefsError> {
    let path = tracefs
        .join("events")
        .join(system)
        .join(event)
        .join("format");
    let text =
        crate::readcap::read_to_string_capped(&path, MAX_FORMAT_BYTES).map_err(|source| {
            if source.kind() == io::ErrorKind::FileTooLarge {
                TracefsError::TooLarge {
                    path,
                    limit: MAX_FORMAT_BYTES,
                }
            } else {
                TracefsError::Io { path, source }
            }
        })?;
    parse_format(&text)
}

/// A parsed tracepoint `format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// The event name (`name:` line).
    pub name: String,
    /// The event id (`ID:` line): the `common_type` of its records.
    pub id: u32,
    /// Every field, `common_*` ones first, in file order.
    pub fields: Vec<Field>,
    /// The `print fmt:` line's value, verbatim (empty when absent).
    pub print_fmt: String,
}

impl Format {
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field name, without any `[N]` suffix.
    pub name: String,
    /// The C type as written, e.g. `unsigned long` or `__data_loc char[]`.
    pub c_type: String,
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes in the record (4 for a `__data_loc` descriptor).
    pub size: u32,
    /// Whether the kernel marks it signed.
    pub signed: bool,
    /// A `__data_loc` field: a u32 holding offset (low 16 bits) and length
    /// (high 16 bits) of data stored later in the record.
    pub data_loc: bool,
    /// A `__rel_loc` field (5.18+): like `__data_loc`, but the offset counts from
    /// the end of this field.
    pub rel_loc: bool,
    /// The element count of a fixed array field (`char comm[16]`).
    pub array_len: Option<usize>,
}

impl Field {
    /// The raw bytes of this fixed-size field, if the record is long enough.
    fn bytes<'r>(&self, record: &'r [u8]) -> Option<&'r [u8]> {
        let start = self.offset as usize;
        record.get(start..start.checked_add(self.size as usize)?)
    }

    /// Reads an integer field of 1, 2, 4 or 8 bytes (little-endian), sign-extended
    /// when the field is signed. `None` when the record is too short, the width is
    /// unusual, or an unsigned 8-byte value does not fit in `i64`.
    pub fn read_i64(&self, record: &[u8]) -> Option<i64> {
        let b = self.bytes(record)?;
        Some(match (b.len(), self.signed) {
            (1, true) => i64::from(i8::from_le_bytes([b[0]])),
            (1, false) => i64::from(b[0]),
            (2, true) => i64::from(i16::from_le_bytes([b[0], b[1]])),
            (2, false) => i64::from(u16::from_le_bytes([b[0], b[1]])),
            (4, true) => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            (4, false) => i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            (8, signed) => {
                let raw = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                if signed {
                    i64::from_le_bytes(raw)
                } else {
                    i64::try_from(u64::from_le_bytes(raw)).ok()?
                }
            }
            _ => return None,
        })
    }

    /// Reads an integer field as unsigned: `None` for a negative signed value, a
    /// short record or an unusual width.
    pub fn read_u64(&self, record: &[u8]) -> Option<u64> {
        let b = self.bytes(record)?;
        if b.len() == 8 && !self.signed {
            return Some(u64::from_le_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]));
        }
        u64::try_from(self.read_i64(record)?).ok()
    }

    /// Reads a string field: a `__data_loc`/`__rel_loc` string or a fixed `char`
    /// array, cut at the first NUL. Every offset is bounds-checked against the record.
    pub fn read_str(&self, record: &[u8]) -> Option<String> {
        let bytes = if self.data_loc || self.rel_loc {
            let loc = u32::try_from(self.read_u64(record)?).ok()?;
            let mut start = (loc & 0xffff) as usize;
            if self.rel_loc {
                start = start.checked_add(self.offset as usize + self.size as usize)?;
            }
            let len = (loc >> 16) as usize;
            record.get(start..start.checked_add(len)?)?
        } else {
            self.bytes(record)?
        };
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }
}

/// Parses the text of a tracepoint `format` file.
///
/// ```text
/// name: mark_victim
/// ID: 609
/// format:
///     field:unsigned short common_type;   offset:0;   size:2; signed:0;
///     ...
///     field:__data_loc char[] comm;   offset:12;  size:4; signed:0;
///
/// print fmt: "pid=%d comm=%s ...", REC->pid, __get_str(comm), ...
/// ```
pub fn parse_format(text: &str) -> Result<Format, TracefsError> {
    let mut name = None;
    let mut id = None;
    let mut fields = Vec::new();
    let mut print_fmt = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let malformed = |reason: String| TracefsError::Malformed {
            line: i + 1,
            reason,
        };
        if let Some(v) = line.strip_prefix("name:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("ID:") {
            id = Some(
                v.trim()
                    .parse::<u32>()
                    .map_err(|e| malformed(format!("bad ID {v:?}: {e}")))?,
            );
        } else if let Some(v) = line.strip_prefix("print fmt:") {
            v.trim().clone_into(&mut print_fmt);
        } else if line.starts_with("field:") {
            fields.push(parse_field(line).map_err(malformed)?);
        }
    }
    let missing = |what: &str| TracefsError::Malformed {
        line: 0,
        reason: format!("no `{what}` line: not a tracepoint format file"),
    };
    Ok(Format {
        name: name.ok_or_else(|| missing("name:"))?,
        id: id.ok_or_else(|| missing("ID:"))?,
        fields,
        print_fmt,
    })
}

/// Parses `field:<decl>;\toffset:N;\tsize:N;\tsigned:N;`.
fn parse_field(line: &str) -> Result<Field, String> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not key:value"))?;
        let number = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|e| format!("bad {key} {value:?}: {e}"))
        };
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = number()? != 0,
            _ => {} // unknown keys are ignored, for forward compatibility
        }
    }
    let decl = decl.ok_or("no field declaration")?;
    // A trailing `[N]` (which may hold spaces, as in `[sizeof(struct x)]`) is the
    // array length; a length that is not a plain number is left unknown.
    let (decl, array_len) = match array_suffix_start(decl) {
        Some(open) => (
            decl[..open].trim_end(),
            decl[open + 1..decl.len() - 1].trim().parse::<usize>().ok(),
        ),
        None => (decl, None),
    };
    // The name is the last word; the type is everything before it.
    let (c_type, name) = decl
        .rsplit_once(char::is_whitespace)
        .ok_or_else(|| format!("declaration `{decl}` has no type"))?;
    let c_type = c_type.trim();
    Ok(Field {
        name: name.to_owned(),
        c_type: c_type.to_owned(),
        offset: offset.ok_or("no offset")?,
        size: size.ok_or("no size")?,
        signed,
        data_loc: c_type.starts_with("__data_loc"),
        rel_loc: c_type.starts_with("__rel_loc"),
        array_len,
    })
}

/// Byte index of the `[` that opens a trailing `[...]` group of `decl`, if any.
fn array_suffix_start(decl: &str) -> Option<usize> {
    if !decl.ends_with(']') {
        return None;
    }
    let mut depth = 0_usize;
    for (i, c) in decl.char_indices().rev() {
        match c {
            ']' => depth += 1,
            '[' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Where the fields of an `oom:mark_victim` record are, on this kernel.
///
/// `pid` is present in both ABIs; everything else only in the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkVictimLayout {
    /// `int pid`: mandatory.
    pub pid: Field,
    /// `__data_loc char[] comm` (or a fixed `char comm[16]` in some trees).
    pub comm: Option<Field>,
    /// Virtual size in kB.
    pub total_vm: Option<Field>,
    /// Anonymous RSS in kB.
    pub anon_rss: Option<Field>,
    /// File RSS in kB.
    pub file_rss: Option<Field>,
    /// Shared-memory RSS in kB.
    pub shmem_rss: Option<Field>,
    /// The victim's uid.
    pub uid: Option<Field>,
    /// Page tables in kB.
    pub pgtables: Option<Field>,
    /// The victim's `oom_score_adj`.
    pub oom_score_adj: Option<Field>,
    /// Bytes of the record the eBPF program should copy: the end of the last
    /// fixed field rounded up to 8, plus [`COMM_ROOM`] for a `__data_loc` comm.
    pub record_len: u32,
}

/// The values of one `mark_victim` record; `None` where the kernel's ABI has no
/// such field or the record was too short to hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkVictimFields {
    /// Victim pid.
    pub pid: Option<u32>,
    /// Victim command name.
    pub comm: Option<String>,
    /// Virtual size, kB.
    pub total_vm_kb: Option<u64>,
    /// Anonymous RSS, kB.
    pub anon_rss_kb: Option<u64>,
    /// File RSS, kB.
    pub file_rss_kb: Option<u64>,
    /// Shared-memory RSS, kB.
    pub shmem_rss_kb: Option<u64>,
    /// Victim uid.
    pub uid: Option<u32>,
    /// Page tables, kB.
    pub pgtables_kb: Option<u64>,
    /// Victim `oom_score_adj` (-1000..=1000).
    pub oom_score_adj: Option<i32>,
}

impl MarkVictimLayout {
    /// Builds the layout from the parsed `oom/mark_victim` format. Fails only
    /// without a 1-to-8-byte `pid` field.
    pub fn from_format(format: &Format) -> Result<Self, TracefsError> {
        let int_field = |name: &str| {
            format
                .field(name)
                .filter(|f| matches!(f.size, 1 | 2 | 4 | 8) && !f.data_loc && !f.rel_loc)
                .cloned()
        };
        let pid = int_field("pid").ok_or_else(|| TracefsError::MissingField {
            event: format.name.clone(),
            field: "pid",
        })?;
        let comm = format.field("comm").cloned();
        let fixed_end = format
            .fields
            .iter()
            .map(|f| f.offset.saturating_add(f.size))
            .max()
            .unwrap_or(0);
        let dynamic = format.fields.iter().any(|f| f.data_loc || f.rel_loc);
        let record_len = fixed_end
            .div_ceil(8)
            .saturating_mul(8)
            .saturating_add(if dynamic { COMM_ROOM } else { 0 });
        Ok(Self {
            pid,
            comm,
            total_vm: int_field("total_vm"),
            anon_rss: int_field("anon_rss"),
            file_rss: int_field("file_rss"),
            shmem_rss: int_field("shmem_rss"),
            uid: int_field("uid"),
            pgtables: int_field("pgtables"),
            oom_score_adj: int_field("oom_score_adj"),
            record_len,
        })
    }

    /// Decodes one record (starting at `common_type`, as in `trace_pipe_raw` or a
    /// classic tracepoint program's context). Reads each field at its offset with
    /// its size and signedness; a field past the end of `record` is `None`.
    pub fn decode(&self, record: &[u8]) -> MarkVictimFields {
        let kb = |f: &Option<Field>| f.as_ref().and_then(|f| f.read_u64(record));
        MarkVictimFields {
            pid: self
                .pid
                .read_i64(record)
                .and_then(|v| u32::try_from(v).ok()),
            comm: self
                .comm
                .as_ref()
                .and_then(|f| f.read_str(record))
                .filter(|c| !c.is_empty()),
            total_vm_kb: kb(&self.total_vm),
            anon_rss_kb: kb(&self.anon_rss),
            file_rss_kb: kb(&self.file_rss),
            shmem_rss_kb: kb(&self.shmem_rss),
            uid: kb(&self.uid).and_then(|v| u32::try_from(v).ok()),
            pgtables_kb: kb(&self.pgtables),
            oom_score_adj: self
                .oom_score_adj
                .as_ref()
                .and_then(|f| f.read_i64(record))
                .and_then(|v| i32::try_from(v).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::fs;

    use super::*;

    /// REAL: `/sys/kernel/tracing/events/oom/mark_victim/format` of the 6.18 development host.
    const HOST_6_18: &str = include_str!("../../tests/data/tracefs/mark_victim-6.18.format");
    /// REAL: one raw record of that event from `trace_pipe_raw`, captured during a memcg OOM kill.
    const HOST_RECORD: &[u8] =
        include_bytes!("../../tests/data/tracefs/mark_victim-6.18.record.bin");
    /// REAL: the kernel's own text rendering of the same record (`trace` file).
    const HOST_TRACE: &str = include_str!("../../tests/data/tracefs/mark_victim-6.18.trace.txt");
    /// # source
    /// RECONSTRUCTED pid-only ABI (`TP_PROTO(int pid)`, kernels 4.13 to 6.8, e.g. Debian
    /// 5.10.223): the TRACE_EVENT macros emit the same `common_*` fields as on 6.18, then
    /// `field:int pid; offset:8; size:4; signed:1;` and `print fmt: "pid=%d", REC->pid`.
    /// The ID is arbitrary. See tests/data/tracefs/README.md.
    const OLD_5_10: &str = include_str!("../../tests/data/tracefs/mark_victim-5.10.format");
    /// SYNTHETIC: the 6.18 layout with a 32-bit `unsigned long`, as on a 32-bit kernel.
    const ILP32: &str = include_str!("../../tests/data/tracefs/mark_victim-synthetic-ilp32.format");

    /// The `key=value` / `key:value` pairs of the kernel's text line for the record.
    fn trace_value(key: &str) -> String {
        let rest = HOST_TRACE.split("mark_victim: ").nth(1).unwrap();
        for word in rest.split_whitespace() {
            if let Some(v) = word
                .strip_prefix(key)
                .and_then(|v| v.strip_prefix(['=', ':']))
            {
                return v.trim_end_matches("kB").to_owned();
            }
        }
        panic!("{key} not in the trace line");
    }

    #[test]
    fn parses_the_host_format() {
        let f = parse_format(HOST_6_18).unwrap();
        assert_eq!(f.name, "mark_victim");
        assert_eq!(f.id, 609);
        assert_eq!(f.fields.len(), 13);
        assert_eq!(f.fields[0].name, "common_type");
        let comm = f.field("comm").unwrap();
        assert!(comm.data_loc && !comm.rel_loc);
        assert_eq!(comm.c_type, "__data_loc char[]");
        assert_eq!((comm.offset, comm.size), (12, 4));
        let adj = f.field("oom_score_adj").unwrap();
        assert_eq!(
            (adj.c_type.as_str(), adj.offset, adj.size, adj.signed),
            ("short", 64, 2, true)
        );
        let uid = f.field("uid").unwrap();
        assert_eq!(
            (uid.c_type.as_str(), uid.offset, uid.signed),
            ("uid_t", 48, false)
        );
        // The kernel itself says the memory fields are kB.
        assert!(f.print_fmt.contains("total-vm=%lukB"));
    }

    #[test]
    fn host_layout_has_every_field() {
        let l = MarkVictimLayout::from_format(&parse_format(HOST_6_18).unwrap()).unwrap();
        assert_eq!(l.pid.offset, 8);
        for f in [
            &l.comm,
            &l.total_vm,
            &l.anon_rss,
            &l.file_rss,
            &l.shmem_rss,
            &l.uid,
            &l.pgtables,
            &l.oom_score_adj,
        ] {
            assert!(f.is_some());
        }
        // Fixed fields end at 66 -> 72, plus 16 bytes for the comm string.
        assert_eq!(l.record_len, 88);
        assert!(l.record_len as usize >= HOST_RECORD.len());
    }

    #[test]
    fn decodes_a_real_record_like_the_kernel_prints_it() {
        let l = MarkVictimLayout::from_format(&parse_format(HOST_6_18).unwrap()).unwrap();
        let got = l.decode(HOST_RECORD);
        let num = |k: &str| trace_value(k).parse::<u64>().unwrap();
        let want = MarkVictimFields {
            pid: Some(num("pid") as u32),
            comm: Some(trace_value("comm")),
            total_vm_kb: Some(num("total-vm")),
            anon_rss_kb: Some(num("anon-rss")),
            file_rss_kb: Some(num("file-rss")),
            shmem_rss_kb: Some(num("shmem-rss")),
            uid: Some(num("uid") as u32),
            pgtables_kb: Some(num("pgtables")),
            oom_score_adj: Some(trace_value("oom_score_adj").parse().unwrap()),
        };
        assert_eq!(got, want);
        // And the literal values, so a broken text parser cannot hide a broken decoder.
        assert_eq!(got.pid, Some(9840));
        assert_eq!(got.comm.as_deref(), Some("python3"));
        assert_eq!(got.total_vm_kb, Some(278_712));
        assert_eq!(got.anon_rss_kb, Some(65_152));
    }

    #[test]
    fn short_records_yield_none_past_their_end() {
        let l = MarkVictimLayout::from_format(&parse_format(HOST_6_18).unwrap()).unwrap();
        // Every prefix decodes without panicking.
        for len in 0..=HOST_RECORD.len() {
            let _ = l.decode(&HOST_RECORD[..len]);
        }
        assert_eq!(l.decode(&HOST_RECORD[..0]), MarkVictimFields::default());
        let pid_only = l.decode(&HOST_RECORD[..12]);
        assert_eq!(pid_only.pid, Some(9840));
        assert_eq!((pid_only.comm, pid_only.total_vm_kb), (None, None));
        // The fixed part is complete at 66 bytes, but the comm string lies beyond it.
        let fixed = l.decode(&HOST_RECORD[..66]);
        assert_eq!((fixed.oom_score_adj, fixed.comm), (Some(0), None));
        assert_eq!(l.decode(&HOST_RECORD[..65]).oom_score_adj, None);
        assert_eq!(l.decode(&HOST_RECORD[..73]).comm, None);
        assert_eq!(
            l.decode(&HOST_RECORD[..74]).comm.as_deref(),
            Some("python3")
        );
    }

    #[test]
    fn old_pid_only_abi() {
        let f = parse_format(OLD_5_10).unwrap();
        assert_eq!(f.fields.len(), 5);
        assert_eq!(f.print_fmt, "\"pid=%d\", REC->pid");
        let l = MarkVictimLayout::from_format(&f).unwrap();
        assert_eq!(l.record_len, 16);
        assert!(l.comm.is_none() && l.total_vm.is_none() && l.oom_score_adj.is_none());
        // The first 12 bytes of the real record are a valid old-ABI record too.
        let got = l.decode(&HOST_RECORD[..12]);
        assert_eq!(
            got,
            MarkVictimFields {
                pid: Some(9840),
                ..MarkVictimFields::default()
            }
        );
    }

    #[test]
    fn decoding_uses_the_file_widths() {
        let l = MarkVictimLayout::from_format(&parse_format(ILP32).unwrap()).unwrap();
        assert_eq!(
            l.total_vm.as_ref().map(|f| (f.offset, f.size)),
            Some((16, 4))
        );
        assert_eq!(l.record_len, 48 + 16);
        let mut rec = vec![0_u8; 42];
        rec[0..2].copy_from_slice(&609_u16.to_le_bytes());
        rec[8..12].copy_from_slice(&4242_i32.to_le_bytes());
        rec[12..16].copy_from_slice(&((6_u32 << 16) | 42).to_le_bytes());
        for (i, v) in [1000_u32, 200, 30, 4, 1001, 12].iter().enumerate() {
            rec[16 + 4 * i..20 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        rec[40..42].copy_from_slice(&(-998_i16).to_le_bytes());
        rec.extend_from_slice(b"nginx\0");
        assert_eq!(
            l.decode(&rec),
            MarkVictimFields {
                pid: Some(4242),
                comm: Some("nginx".into()),
                total_vm_kb: Some(1000),
                anon_rss_kb: Some(200),
                file_rss_kb: Some(30),
                shmem_rss_kb: Some(4),
                uid: Some(1001),
                pgtables_kb: Some(12),
                oom_score_adj: Some(-998),
            }
        );
    }

    #[test]
    fn integers_honour_size_and_sign() {
        let field = |size, signed| Field {
            name: "x".into(),
            c_type: "t".into(),
            offset: 1,
            size,
            signed,
            data_loc: false,
            rel_loc: false,
            array_len: None,
        };
        let rec = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(field(1, true).read_i64(&rec), Some(-1));
        assert_eq!(field(1, false).read_i64(&rec), Some(255));
        assert_eq!(field(2, true).read_i64(&rec), Some(-1));
        assert_eq!(field(2, false).read_u64(&rec), Some(65_535));
        assert_eq!(field(4, true).read_i64(&rec), Some(-1));
        assert_eq!(field(4, false).read_u64(&rec), Some(u64::from(u32::MAX)));
        assert_eq!(field(8, true).read_i64(&rec), Some(-1));
        assert_eq!(field(8, false).read_u64(&rec), Some(u64::MAX));
        assert_eq!(field(8, false).read_i64(&rec), None); // does not fit
        assert_eq!(field(4, true).read_u64(&rec), None); // negative
        assert_eq!(field(3, false).read_u64(&rec), None); // unusual width
        assert_eq!(field(8, false).read_u64(&rec[..8]), None); // past the end
        let far = Field {
            offset: u32::MAX,
            ..field(8, false)
        };
        assert_eq!(far.read_u64(&rec), None);
    }

    #[test]
    fn strings_are_bounds_checked() {
        let f = parse_format(HOST_6_18).unwrap();
        let comm = f.field("comm").unwrap();
        let mut rec = HOST_RECORD.to_vec();
        // Length pointing past the end.
        rec[12..16].copy_from_slice(&((200_u32 << 16) | 66).to_le_bytes());
        assert_eq!(comm.read_str(&rec), None);
        // Offset pointing past the end.
        rec[12..16].copy_from_slice(&((4_u32 << 16) | 0xfff0).to_le_bytes());
        assert_eq!(comm.read_str(&rec), None);
        // Zero length: an empty string, which decode() reports as None.
        rec[12..16].copy_from_slice(&66_u32.to_le_bytes());
        assert_eq!(comm.read_str(&rec).as_deref(), Some(""));
        let l = MarkVictimLayout::from_format(&f).unwrap();
        assert_eq!(l.decode(&rec).comm, None);
        // Invalid UTF-8 is replaced, not rejected.
        let mut rec = HOST_RECORD.to_vec();
        rec[66] = 0xff;
        assert_eq!(comm.read_str(&rec).as_deref(), Some("\u{fffd}ython3"));
    }

    #[test]
    fn rel_loc_and_fixed_arrays() {
        let text = "name: demo\nID: 7\nformat:\n\
            \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;\n\
            \tfield:__rel_loc char[] msg;\toffset:24;\tsize:4;\tsigned:0;\n\
            \tfield:u8 raw[sizeof(struct x)];\toffset:28;\tsize:4;\tsigned:0;\n\
            \nprint fmt: \"%s\", REC->comm\n";
        let f = parse_format(text).unwrap();
        let comm = f.field("comm").unwrap();
        assert_eq!((comm.c_type.as_str(), comm.array_len), ("char", Some(16)));
        let raw = f.field("raw").unwrap();
        assert_eq!(raw.array_len, None);
        let msg = f.field("msg").unwrap();
        assert!(msg.rel_loc && !msg.data_loc);
        let mut rec = vec![0_u8; 32];
        rec[8..13].copy_from_slice(b"bash\0");
        // rel_loc: offset 4 counted from the end of the field (28) -> 32.
        rec[24..28].copy_from_slice(&((3_u32 << 16) | 4).to_le_bytes());
        rec.extend_from_slice(b"hi\0");
        assert_eq!(comm.read_str(&rec).as_deref(), Some("bash"));
        assert_eq!(msg.read_str(&rec).as_deref(), Some("hi"));
        // A fixed comm array is decoded too (vendor trees).
        let l = MarkVictimLayout::from_format(&Format {
            fields: vec![
                Field {
                    name: "pid".into(),
                    c_type: "int".into(),
                    offset: 4,
                    size: 4,
                    signed: true,
                    data_loc: false,
                    rel_loc: false,
                    array_len: None,
                },
                comm.clone(),
            ],
            ..f.clone()
        })
        .unwrap();
        assert_eq!(l.record_len, 24);
        assert_eq!(l.decode(&rec).comm.as_deref(), Some("bash"));
    }

    #[test]
    fn format_errors() {
        let err =
            parse_format("name: x\nID: 1\nformat:\n\tfield:int pid;\toffset:eight;\tsize:4;\n")
                .unwrap_err();
        assert!(
            matches!(err, TracefsError::Malformed { line: 4, .. }),
            "{err}"
        );
        assert!(parse_format("name: x\nID: 1\n\tfield:int pid;\tsize:4;\tsigned:1;\n").is_err());
        assert!(parse_format("\tfield:pid;\toffset:8;\tsize:4;\n").is_err());
        assert!(parse_format("ID: 1\n").is_err());
        assert!(parse_format("name: x\nID: one\n").is_err());
        let no_pid = HOST_6_18.replace("int pid;", "int tgid;");
        let err = MarkVictimLayout::from_format(&parse_format(&no_pid).unwrap()).unwrap_err();
        assert!(matches!(
            err,
            TracefsError::MissingField { field: "pid", .. }
        ));
        assert!(err.to_string().contains("falls back"), "{err}");
        // A `signed:` that is missing (very old kernels) means unsigned.
        let f = parse_format("name: x\nID: 1\n\tfield:int pid;\toffset:8;\tsize:4;\n").unwrap();
        assert!(!f.fields[0].signed);
    }

    #[test]
    fn finds_tracefs() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        let good = dir.path().join("tracing");
        fs::create_dir_all(&empty).unwrap();
        fs::create_dir_all(good.join("events/oom/mark_victim")).unwrap();
        fs::write(good.join("events/oom/mark_victim/format"), HOST_6_18).unwrap();

        assert_eq!(find_in(&[&empty, &good]).unwrap(), good);
        let err = find_in(&[&empty]).unwrap_err();
        assert!(
            err.to_string()
                .contains("mount -t tracefs nodev /sys/kernel/tracing"),
            "{err}"
        );
        assert!(err.to_string().contains("--tracefs"));
        assert_eq!(find_tracefs(Some(&good)).unwrap(), good);
        assert!(matches!(
            find_tracefs(Some(&empty)),
            Err(TracefsError::NotTracefs { .. })
        ));
        assert_eq!(read_format(&good, "oom", "mark_victim").unwrap().id, 609);
        assert!(matches!(
            read_format(&good, "oom", "nope"),
            Err(TracefsError::Io { .. })
        ));
        // A format file far larger than any real one is refused, not read.
        let big = good.join("events/oom/big");
        fs::create_dir_all(&big).unwrap();
        let f = fs::File::create(big.join("format")).unwrap();
        f.set_len(MAX_FORMAT_BYTES + 1).unwrap();
        let err = read_format(&good, "oom", "big").unwrap_err();
        assert!(matches!(err, TracefsError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("--tracefs"), "{err}");
    }
}
