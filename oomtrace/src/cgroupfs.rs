//! The memory controller's cgroup filesystem: where it is mounted (cgroup
//! v1 `memory` or a cgroup2 mount with `memory` enabled), the directory of
//! a cgroup path, and its small files (usage, limit, OOM counters,
//! `cgroup.procs`). Capture (the lookups), enrichment and the
//! commands all read it.
//!
//! Cgroup paths are given the way the kernel prints them (`/proc/<pid>/cgroup`,
//! `oom_memcg=`): relative to the memory controller's mount, with a leading `/`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::readcap::{read_kernel_text, read_kernel_text_kept};

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

    /// One file of a cgroup (`memory.stat`, `cgroup.procs`, ...), read in
    /// as few `read()` calls as it takes. The memory controller's own files
    /// are kept open ([`read_kernel_text_kept`]); `cgroup.procs` is not.
    pub fn file(&self, path: &str, file: &str) -> io::Result<String> {
        let path = self.dir(path).join(file);
        match file.starts_with("memory.") {
            true => read_kernel_text_kept(&path),
            false => read_kernel_text(path),
        }
    }

    fn read(&self, path: &str, file: &str) -> Option<String> {
        self.file(path, file).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testdata::node as data;

    fn write(dir: &Path, file: &str, text: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(file), text).expect("write");
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
}
