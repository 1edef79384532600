//! Node memory at the moment of a kill: total, available, swap, pressure, and
//! the largest memory consumers (pods, or top-level cgroups) by usage.
//!
//! Everything here reads small text files. The parsers are pure functions so
//! that they can be tested with real file contents; the readers take their
//! root from [`CgroupFs`] so tests can point them at a temporary directory
//! shaped like a cgroup filesystem.
//!
//! Cgroup paths are given the way the kernel prints them (`/proc/<pid>/cgroup`,
//! `oom_memcg=`): relative to the memory controller's mount, with a leading `/`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use procfs::FromRead as _;

use crate::{
    enrich::identity,
    report::{Consumer, NodeMemory},
};

/// Which cgroup hierarchy holds the memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// cgroup v1: a `cgroup` mount with the `memory` option.
    V1,
    /// cgroup v2: a `cgroup2` mount whose `cgroup.controllers` lists `memory`.
    V2,
}

/// The memory controller's mount and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupFs {
    /// Memory controller mount: `/sys/fs/cgroup/memory` on v1, `/sys/fs/cgroup` on v2.
    pub root: PathBuf,
    pub version: CgroupVersion,
}

/// v1 reports "no limit" as `PAGE_COUNTER_MAX * PAGE_SIZE` (9223372036854771712
/// with 4 KiB pages, a different value with 16/64 KiB pages). Anything this
/// large is not a real limit.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// Deepest level [`top_consumers`] looks for pods (root is 0). The deepest
/// layout of KERNEL-FACTS §6 with a nested prefix puts pods at level 5.
const MAX_WALK_DEPTH: usize = 7;

/// Upper bound on directories [`top_consumers`] reads, so a huge tree cannot
/// stall the report of a kill.
const MAX_WALK_DIRS: usize = 20_000;

impl CgroupFs {
    /// Finds the memory controller from the text of `/proc/self/mounts`.
    ///
    /// Prefers a v1 `memory` mount; otherwise the first `cgroup2` mount whose
    /// `cgroup.controllers` (read from the filesystem) lists `memory`.
    pub fn detect(proc_mounts: &str) -> Option<CgroupFs> {
        Self::detect_with(proc_mounts, |dir| {
            fs::read_to_string(dir.join("cgroup.controllers")).ok()
        })
    }

    /// [`CgroupFs::detect`] with the reader of `<mount>/cgroup.controllers`
    /// given by the caller (for tests).
    pub fn detect_with(
        proc_mounts: &str,
        controllers_of: impl Fn(&Path) -> Option<String>,
    ) -> Option<CgroupFs> {
        let mounts: Vec<(PathBuf, &str, &str)> = proc_mounts
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                let _source = f.next()?;
                let target = unescape_mount_path(f.next()?);
                let fstype = f.next()?;
                let options = f.next()?;
                Some((target, fstype, options))
            })
            .collect();
        if let Some((target, _, _)) = mounts.iter().find(|(_, fstype, options)| {
            *fstype == "cgroup" && options.split(',').any(|o| o == "memory")
        }) {
            return Some(CgroupFs {
                root: target.clone(),
                version: CgroupVersion::V1,
            });
        }
        mounts
            .iter()
            .filter(|(_, fstype, _)| *fstype == "cgroup2")
            .find(|(target, _, _)| {
                controllers_of(target)
                    .is_some_and(|c| c.split_whitespace().any(|name| name == "memory"))
            })
            .map(|(target, _, _)| CgroupFs {
                root: target.clone(),
                version: CgroupVersion::V2,
            })
    }

    /// The memory controller: at `root` (`--cgroup-root`) when given, else
    /// the one found in `/proc/self/mounts`.
    pub fn find(root: Option<&Path>) -> Option<CgroupFs> {
        match root {
            Some(root) => Self::at(root.to_path_buf()),
            None => fs::read_to_string("/proc/self/mounts")
                .ok()
                .and_then(|m| Self::detect(&m)),
        }
    }

    /// The memory controller mounted at `root` (a `--cgroup-root` setting):
    /// v1 when `memory.usage_in_bytes` is there, v2 when `cgroup.controllers`
    /// lists `memory`; `None` otherwise.
    pub fn at(root: PathBuf) -> Option<CgroupFs> {
        // A cgroup v1 mount point given as the whole hierarchy (`/sys/fs/cgroup`):
        // the memory controller is its `memory` directory.
        if !root.join("memory.usage_in_bytes").exists()
            && !root.join("cgroup.controllers").exists()
            && root.join("memory/memory.usage_in_bytes").exists()
        {
            return Self::at(root.join("memory"));
        }
        if root.join("memory.usage_in_bytes").exists() {
            return Some(CgroupFs {
                root,
                version: CgroupVersion::V1,
            });
        }
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        controllers
            .split_whitespace()
            .any(|c| c == "memory")
            .then_some(CgroupFs {
                root,
                version: CgroupVersion::V2,
            })
    }

    /// The directory of a cgroup path (`/kubepods/burstable/pod…`).
    pub fn dir(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn read(&self, path: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.dir(path).join(file)).ok()
    }

    /// Memory charged to the cgroup and its descendants, in bytes
    /// (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub fn usage(&self, path: &str) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        };
        parse_u64(&self.read(path, file)?)
    }

    /// The cgroup's memory limit in bytes; `None` when unlimited or unreadable
    /// (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub fn limit(&self, path: &str) -> Option<u64> {
        match self.version {
            CgroupVersion::V1 => parse_limit_v1(&self.read(path, "memory.limit_in_bytes")?),
            CgroupVersion::V2 => parse_limit_v2(&self.read(path, "memory.max")?),
        }
    }

    /// How many processes of this cgroup the OOM killer has killed, for any
    /// reason (v1 `memory.oom_control`, v2 `memory.events`, key `oom_kill`).
    pub fn oom_kill_count(&self, path: &str) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        parse_keyed(&self.read(path, file)?, "oom_kill")
    }

    /// How often this cgroup's own limit caused an OOM (v2 `memory.events`
    /// key `oom`). v1 has no such counter: always `None`.
    pub fn oom_count(&self, path: &str) -> Option<u64> {
        match self.version {
            CgroupVersion::V1 => None,
            CgroupVersion::V2 => parse_keyed(&self.read(path, "memory.events")?, "oom"),
        }
    }

    /// The processes directly in the cgroup (`cgroup.procs`); empty when unreadable.
    pub fn procs(&self, path: &str) -> Vec<u32> {
        self.read(path, "cgroup.procs")
            .map(|t| parse_procs(&t))
            .unwrap_or_default()
    }
}

/// Undoes the escaping of a path in `/proc/mounts`: the kernel writes space,
/// tab, newline and backslash as `\ooo`, three octal digits (`mangle()` in
/// `fs/proc_namespace.c`). A backslash not followed by three octal digits of
/// a byte value (`\000` to `\377`) is kept as it is. The result keeps the
/// path's bytes as they are (a mount point need not be UTF-8).
// Kept by hand: procfs 0.18 leaves `\040` (space) escaped in mount points.
pub fn unescape_mount_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .filter(|digits| digits.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|digits| {
                let value = digits
                    .iter()
                    .fold(0_u32, |v, b| v * 8 + u32::from(b - b'0'));
                u8::try_from(value).ok()
            });
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// A file holding one unsigned number (`memory.usage_in_bytes`, `memory.current`).
pub fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// v1 `memory.limit_in_bytes`: `None` for the "unlimited" value.
pub fn parse_limit_v1(text: &str) -> Option<u64> {
    parse_u64(text).filter(|&v| v < V1_UNLIMITED_FLOOR)
}

/// v2 `memory.max`: `None` for `max`.
pub fn parse_limit_v2(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        other => other.parse().ok(),
    }
}

/// The value of `key` in a flat keyed file (`key value` per line), such as
/// `memory.events` or v1 `memory.oom_control`.
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// `cgroup.procs`: one pid per line.
pub fn parse_procs(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Errors reading the node's memory figures.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot read {}: {source}; pass the host's /proc with --proc", path.display())]
    MemInfo {
        path: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
    #[error("{} has no MemTotal: pass the host's /proc with --proc", path.display())]
    NoMemTotal { path: PathBuf },
}

/// The figures of `/proc/meminfo` that describe the node, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    pub swap_total_bytes: Option<u64>,
    pub swap_free_bytes: Option<u64>,
}

impl From<&procfs::Meminfo> for MemInfo {
    fn from(m: &procfs::Meminfo) -> Self {
        // procfs gives bytes.
        Self {
            total_bytes: Some(m.mem_total),
            available_bytes: m.mem_available,
            swap_total_bytes: Some(m.swap_total),
            swap_free_bytes: Some(m.swap_free),
        }
    }
}

/// The text of `/proc/meminfo` (`MemTotal:       24684084 kB`), parsed by
/// procfs; all `None` when it is not a meminfo file.
pub fn meminfo(text: &str) -> MemInfo {
    procfs::Meminfo::from_read(text.as_bytes())
        .map(|m| MemInfo::from(&m))
        .unwrap_or_default()
}

/// `<proc_root>/meminfo` (not `Current::current()`, which always reads the
/// reader's own `/proc`).
pub fn read_meminfo(proc_root: &Path) -> Result<MemInfo, NodeError> {
    let path = proc_root.join("meminfo");
    let m = procfs::Meminfo::from_file(&path).map_err(|source| NodeError::MemInfo {
        path: path.clone(),
        source,
    })?;
    if m.mem_total == 0 {
        return Err(NodeError::NoMemTotal { path });
    }
    Ok(MemInfo::from(&m))
}

/// Memory pressure (`/proc/pressure/memory`), the share of the last 10 s in
/// which some / all non-idle tasks stalled on memory, in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Psi {
    pub some_avg10: Option<f64>,
    pub full_avg10: Option<f64>,
}

impl From<&procfs::MemoryPressure> for Psi {
    fn from(p: &procfs::MemoryPressure) -> Self {
        // The kernel prints two decimals; procfs keeps an f32. Rounding to
        // two decimals gives back the printed value (0.08, not 0.0799999982).
        let printed = |v: f32| (f64::from(v) * 100.0).round() / 100.0;
        Self {
            some_avg10: Some(printed(p.some.avg10)),
            full_avg10: Some(printed(p.full.avg10)),
        }
    }
}

/// The text of `/proc/pressure/memory`, parsed by procfs; `None` when it is
/// not one (PSI absent or disabled gives no usable text).
pub fn psi(text: &str) -> Option<Psi> {
    procfs::MemoryPressure::from_read(text.as_bytes())
        .ok()
        .map(|p| Psi::from(&p))
}

/// `<proc_root>/pressure/memory`; `None` without PSI.
pub fn read_psi(proc_root: &Path) -> Option<Psi> {
    procfs::MemoryPressure::from_file(proc_root.join("pressure/memory"))
        .ok()
        .map(|p| Psi::from(&p))
}

/// Node memory and the `top_n` largest consumers, read now.
///
/// `proc_root` is normally `/proc` (`/host/proc` in a container). `name_of`
/// turns a consumer's cgroup path into a display name (`namespace/pod` for a
/// pod, the path otherwise) and its QoS class.
pub fn node_memory(
    cgfs: &CgroupFs,
    proc_root: &Path,
    top_n: usize,
    name_of: impl Fn(&str) -> (String, Option<String>),
) -> NodeMemory {
    let mem = read_meminfo(proc_root).unwrap_or_default();
    let pressure = read_psi(proc_root);
    NodeMemory {
        total_bytes: mem.total_bytes,
        available_bytes: mem.available_bytes,
        swap_total_bytes: mem.swap_total_bytes,
        swap_free_bytes: mem.swap_free_bytes,
        psi_some_avg10: pressure.and_then(|p| p.some_avg10),
        psi_full_avg10: pressure.and_then(|p| p.full_avg10),
        top: top_consumers(cgfs, top_n, name_of),
    }
}

/// The `top_n` largest memory consumers, by usage, largest first.
///
/// Kubernetes pods are counted at pod level, wherever they sit (under
/// `kubepods`, `kubepods.slice`, or a nested prefix such as kind's). Other
/// memory is counted at the first level below the root (`user.slice`,
/// `init.scope`), except `system.slice`, which is split into its services
/// (`system.slice/foo.service`). A consumer that contains pods (such as
/// `kubepods` itself, or a runtime service under a nested layout) is counted
/// without the pods listed separately, so no memory is counted twice. Memory
/// of processes directly in the root cgroup is not listed.
pub fn top_consumers(
    cgfs: &CgroupFs,
    top_n: usize,
    name_of: impl Fn(&str) -> (String, Option<String>),
) -> Vec<Consumer> {
    let mut groups: Vec<String> = Vec::new();
    for child in subdirs(&cgfs.dir("/")) {
        let path = format!("/{child}");
        if child == "system.slice" {
            let split: Vec<String> = subdirs(&cgfs.dir(&path))
                .into_iter()
                .map(|c| format!("{path}/{c}"))
                .collect();
            if split.is_empty() {
                groups.push(path)
            } else {
                groups.extend(split)
            }
        } else {
            groups.push(path);
        }
    }

    let mut budget = MAX_WALK_DIRS;
    let mut found: Vec<(String, u64)> = Vec::new();
    for group in &groups {
        let depth = group.matches('/').count();
        let mut pods = Vec::new();
        find_pods(cgfs, group, depth, &mut budget, &mut pods);
        let in_pods: u64 = pods.iter().map(|(_, u)| *u).sum();
        if identity::pod_component(group).is_none()
            && let Some(usage) = cgfs.usage(group)
        {
            let own = usage.saturating_sub(in_pods);
            if own > 0 {
                found.push((group.clone(), own));
            }
        }
        found.extend(pods);
    }
    found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    found.truncate(top_n);
    found
        .into_iter()
        .map(|(cgroup, usage_bytes)| {
            let (name, qos_class) = name_of(&cgroup);
            Consumer {
                name,
                cgroup,
                usage_bytes,
                qos_class,
            }
        })
        .collect()
}

/// Collects the pod cgroups at or below `path` with their usage.
fn find_pods(
    cgfs: &CgroupFs,
    path: &str,
    depth: usize,
    budget: &mut usize,
    out: &mut Vec<(String, u64)>,
) {
    let last = path.rsplit('/').next().unwrap_or_default();
    if identity::pod_uid_of_dir(last).is_some() {
        if let Some(u) = cgfs.usage(path).filter(|&u| u > 0) {
            out.push((path.to_owned(), u));
        }
        return;
    }
    if depth >= MAX_WALK_DEPTH || *budget == 0 {
        return;
    }
    *budget -= 1;
    for child in subdirs(&cgfs.dir(path)) {
        // Container-level leaves below a pod are never reached (the pod
        // returns above); runtime scopes outside pods hold no pods.
        find_pods(cgfs, &format!("{path}/{child}"), depth + 1, budget, out);
    }
}

/// The names of the subdirectories of `dir`, sorted; empty when unreadable.
pub(crate) fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn data(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/node")
            .join(name);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn detect_prefers_v1_memory_on_this_host() {
        let mounts = data("host-6.18.proc-mounts.txt");
        let unified = data("host-6.18.v2-unified.cgroup.controllers");
        let fs = CgroupFs::detect_with(&mounts, |_| Some(unified.clone())).expect("detected");
        assert_eq!(
            fs,
            CgroupFs {
                root: "/sys/fs/cgroup/memory".into(),
                version: CgroupVersion::V1
            }
        );
    }

    #[test]
    fn detect_v2_needs_memory_in_controllers() {
        // The host's cgroup2 mount, without its v1 mounts: no memory controller there.
        let mounts = data("host-6.18.proc-mounts.txt");
        let v2_only: String = mounts
            .lines()
            .filter(|l| !l.starts_with("cgroup "))
            .map(|l| format!("{l}\n"))
            .collect();
        let unified = data("host-6.18.v2-unified.cgroup.controllers");
        assert_eq!(
            CgroupFs::detect_with(&v2_only, |_| Some(unified.clone())),
            None
        );
        // A systemd v2 host: cgroup2 at /sys/fs/cgroup with memory enabled.
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0\n";
        let got = CgroupFs::detect_with(v2, |p| {
            (p == Path::new("/sys/fs/cgroup"))
                .then(|| "cpuset cpu io memory hugetlb pids rdma misc\n".into())
        });
        assert_eq!(
            got,
            Some(CgroupFs {
                root: "/sys/fs/cgroup".into(),
                version: CgroupVersion::V2
            })
        );
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/mnt/my\040cg"),
            PathBuf::from("/mnt/my cg")
        );
    }

    /// Issue 9: `\777` is three octal digits but not a byte; `(7 * 64)`
    /// overflowed u8 (a panic). Such a sequence is kept as it is.
    #[test]
    fn octal_escapes_above_a_byte_are_kept_literally() {
        use std::os::unix::ffi::OsStrExt as _;
        assert_eq!(unescape_mount_path(r"/a\777b"), PathBuf::from(r"/a\777b"));
        assert_eq!(unescape_mount_path(r"/a\400"), PathBuf::from(r"/a\400"));
        assert_eq!(
            unescape_mount_path(r"\134\011\012\377"),
            PathBuf::from(std::ffi::OsStr::from_bytes(b"\\\t\n\xff"))
        );
        assert_eq!(unescape_mount_path(r"/x\04"), PathBuf::from(r"/x\04"));
    }

    mod props {
        use std::os::unix::ffi::OsStrExt as _;

        use proptest::prelude::*;

        use super::*;

        /// What `mangle()` in fs/proc_namespace.c writes for a mount point.
        fn mangle(path: &str) -> String {
            path.chars()
                .map(|c| match c {
                    ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
                    c => c.to_string(),
                })
                .collect()
        }

        proptest! {
            #[test]
            fn mount_path_unescape_undoes_the_kernel_escape(path in any::<String>()) {
                let got = unescape_mount_path(&mangle(&path));
                prop_assert_eq!(got.as_os_str().as_bytes(), path.as_bytes());
            }

            #[test]
            fn mount_path_unescape_never_panics(field in r"[\\0-9a-z ]{0,40}", any_text in any::<String>()) {
                let _ = unescape_mount_path(&field);
                let _ = unescape_mount_path(&any_text);
                let _ = CgroupFs::detect_with(&any_text, |_| None);
            }
        }
    }

    #[test]
    fn v1_files_from_this_host() {
        assert_eq!(
            parse_u64(&data("host-6.18.v1-root.memory.usage_in_bytes")),
            Some(2_683_392_000)
        );
        assert_eq!(
            parse_limit_v1(&data("host-6.18.v1-root.memory.limit_in_bytes")),
            None
        );
        assert_eq!(
            parse_limit_v1(&data("host-6.18.v1-limited.memory.limit_in_bytes")),
            Some(50 << 20)
        );
        assert_eq!(
            parse_keyed(&data("host-6.18.v1-limited.memory.oom_control"), "oom_kill"),
            Some(0)
        );
        assert_eq!(
            parse_keyed(
                &data("host-6.18.v1-after-kill.memory.oom_control"),
                "oom_kill"
            ),
            Some(1)
        );
        // `oom` must not match `oom_kill` or `oom_kill_disable`.
        assert_eq!(
            parse_keyed(&data("host-6.18.v1-after-kill.memory.oom_control"), "oom"),
            None
        );
        let procs = parse_procs(&data("host-6.18.v1-limited.cgroup.procs"));
        assert_eq!(procs, vec![15239]);
    }

    #[test]
    fn v2_files() {
        let events = data("v2-after-kill.memory.events");
        assert_eq!(parse_keyed(&events, "oom_kill"), Some(1));
        assert_eq!(parse_keyed(&events, "oom"), Some(1));
        assert_eq!(parse_keyed(&events, "max"), Some(35));
        assert_eq!(
            parse_limit_v2(&data("v2-limited.memory.max")),
            Some(536_870_912)
        );
        assert_eq!(parse_limit_v2(&data("v2-unlimited.memory.max")), None);
        assert_eq!(
            parse_u64(&data("v2-after-kill.memory.current")),
            Some(278_528)
        );
    }

    #[test]
    fn meminfo_from_this_host() {
        let m = meminfo(&data("host-6.18.meminfo.txt"));
        assert_eq!(m.total_bytes, Some(24_684_084 * 1024));
        assert_eq!(m.swap_total_bytes, Some(0));
        assert_eq!(m.swap_free_bytes, Some(0));
        let avail = m.available_bytes.expect("MemAvailable");
        assert!(avail > 0 && avail <= 24_684_084 * 1024);
    }

    #[test]
    fn psi_from_this_host_and_absent() {
        let p = psi(&data("host-6.18.pressure-memory.txt")).expect("psi");
        assert_eq!(
            p,
            Psi {
                some_avg10: Some(0.08),
                full_avg10: Some(0.02)
            }
        );
        assert_eq!(psi(""), None);
    }

    #[test]
    fn readers_take_the_hosts_proc_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(tmp.path(), "meminfo", &data("host-6.18.meminfo.txt"));
        write(
            &tmp.path().join("pressure"),
            "memory",
            &data("host-6.18.pressure-memory.txt"),
        );
        let m = read_meminfo(tmp.path()).expect("meminfo");
        assert_eq!(m, meminfo(&data("host-6.18.meminfo.txt")));
        assert_eq!(m.total_bytes, Some(24_684_084 * 1024));
        assert_eq!(
            read_psi(tmp.path()),
            Some(Psi {
                some_avg10: Some(0.08),
                full_avg10: Some(0.02)
            })
        );
        let empty = tempfile::tempdir().expect("tempdir");
        let err = read_meminfo(empty.path()).expect_err("no meminfo");
        assert!(
            err.to_string()
                .contains("pass the host's /proc with --proc"),
            "{err}"
        );
        assert_eq!(read_psi(empty.path()), None, "no PSI");
        assert_eq!(meminfo("not meminfo"), MemInfo::default());
    }

    /// Names consumers by their path, with the QoS class the path implies.
    fn path_name(path: &str) -> (String, Option<String>) {
        let qos = crate::enrich::identity::parse(path).qos;
        (path.to_owned(), qos.map(|q| q.as_str().to_owned()))
    }

    fn write(dir: &Path, file: &str, text: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(file), text).expect("write");
    }

    /// A v1-shaped tree: 200 pods (2 containers each) under kubepods' QoS
    /// levels, 30 services in system.slice, user.slice. Pod i uses i MiB.
    fn synthetic_tree(root: &Path) {
        let mib = 1u64 << 20;
        let mut kube_total = 5 * mib; // charged to kubepods itself
        for i in 0..200u64 {
            let qos = ["burstable", "besteffort", ""][(i % 3) as usize];
            let uid = format!("{i:08x}-0000-4000-8000-{i:012x}");
            let mut pod = root.join("kubepods");
            if !qos.is_empty() {
                pod = pod.join(qos);
            }
            let pod = pod.join(format!("pod{uid}"));
            write(&pod, "memory.usage_in_bytes", &format!("{}\n", i * mib));
            for c in 0..2u64 {
                write(
                    &pod.join(format!("{:064x}", i * 2 + c)),
                    "memory.usage_in_bytes",
                    &format!("{}\n", i * mib / 2),
                );
            }
            kube_total += i * mib;
        }
        for q in ["burstable", "besteffort"] {
            write(
                &root.join("kubepods").join(q),
                "memory.usage_in_bytes",
                "0\n",
            );
        }
        write(
            &root.join("kubepods"),
            "memory.usage_in_bytes",
            &format!("{kube_total}\n"),
        );
        for s in 0..30u64 {
            write(
                &root.join(format!("system.slice/svc{s}.service")),
                "memory.usage_in_bytes",
                &format!("{}\n", s * mib),
            );
        }
        write(&root.join("system.slice"), "memory.usage_in_bytes", "1\n");
        write(
            &root.join("user.slice"),
            "memory.usage_in_bytes",
            &format!("{}\n", 198 * mib + 1),
        );
        write(root, "memory.usage_in_bytes", "1\n");
    }

    #[test]
    fn top_consumers_of_a_200_pod_tree() {
        let tmp = tempfile::tempdir().expect("tempdir");
        synthetic_tree(tmp.path());
        let cgfs = CgroupFs {
            root: tmp.path().to_owned(),
            version: CgroupVersion::V1,
        };
        let start = Instant::now();
        let top = top_consumers(&cgfs, 5, path_name);
        eprintln!(
            "top_consumers on 200 pods (600+ cgroups): {:?}",
            start.elapsed()
        );
        let got: Vec<(&str, u64, Option<&str>)> = top
            .iter()
            .map(|c| {
                (
                    c.cgroup.as_str(),
                    c.usage_bytes >> 20,
                    c.qos_class.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "/kubepods/besteffort/pod000000c7-0000-4000-8000-0000000000c7",
                    199,
                    Some("BestEffort")
                ),
                ("/user.slice", 198, None),
                (
                    "/kubepods/burstable/pod000000c6-0000-4000-8000-0000000000c6",
                    198,
                    Some("Burstable")
                ),
                (
                    "/kubepods/pod000000c5-0000-4000-8000-0000000000c5",
                    197,
                    Some("Guaranteed")
                ),
                (
                    "/kubepods/besteffort/pod000000c4-0000-4000-8000-0000000000c4",
                    196,
                    Some("BestEffort")
                ),
            ]
        );
        // kubepods is listed only with what its pods do not account for.
        let all = top_consumers(&cgfs, usize::MAX, path_name);
        assert_eq!(all.len(), 200 - 1 /* pod 0 uses nothing */ + 1 + 29 + 1);
        let kube = all
            .iter()
            .find(|c| c.cgroup == "/kubepods")
            .expect("kubepods remainder");
        assert_eq!(kube.usage_bytes, 5 << 20);
        assert!(
            all.iter()
                .any(|c| c.cgroup == "/system.slice/svc29.service")
        );
    }

    #[test]
    fn node_memory_reads_proc_and_cgroups() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cg = tmp.path().join("cg");
        synthetic_tree(&cg);
        let proc_root = tmp.path().join("proc");
        write(&proc_root, "meminfo", &data("host-6.18.meminfo.txt"));
        let cgfs = CgroupFs {
            root: cg,
            version: CgroupVersion::V1,
        };
        let start = Instant::now();
        let nm = node_memory(&cgfs, &proc_root, 5, |p| (format!("name of {p}"), None));
        eprintln!("node_memory on 200 pods: {:?}", start.elapsed());
        assert_eq!(nm.total_bytes, Some(24_684_084 * 1024));
        assert_eq!(nm.psi_some_avg10, None, "no pressure file: no PSI");
        assert_eq!(nm.top.len(), 5);
        assert_eq!(nm.top[1].name, "name of /user.slice");
    }

    #[test]
    fn v2_readers_on_a_temp_tree() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("kubepods.slice");
        write(
            &dir,
            "memory.current",
            &data("v2-after-kill.memory.current"),
        );
        write(&dir, "memory.max", &data("v2-limited.memory.max"));
        write(&dir, "memory.events", &data("v2-after-kill.memory.events"));
        write(&dir, "cgroup.procs", "");
        let cgfs = CgroupFs {
            root: tmp.path().to_owned(),
            version: CgroupVersion::V2,
        };
        assert_eq!(cgfs.usage("/kubepods.slice"), Some(278_528));
        assert_eq!(cgfs.limit("/kubepods.slice"), Some(536_870_912));
        assert_eq!(cgfs.oom_kill_count("/kubepods.slice"), Some(1));
        assert_eq!(cgfs.oom_count("/kubepods.slice"), Some(1));
        assert!(cgfs.procs("/kubepods.slice").is_empty());
        assert_eq!(cgfs.usage("/gone"), None);
    }

    /// Prints the time node_memory takes on this host (run with --ignored --nocapture).
    #[test]
    #[ignore = "measurement on the host: needs /proc/self/mounts and a memory cgroup"]
    fn measure_node_memory_on_host() {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
        let cgfs = CgroupFs::detect(&mounts).expect("memory controller");
        let start = Instant::now();
        let nm = node_memory(&cgfs, Path::new("/proc"), 5, path_name);
        eprintln!("node_memory on this host: {:?}\n{nm:#?}", start.elapsed());
        assert!(nm.total_bytes.is_some());
    }
}
