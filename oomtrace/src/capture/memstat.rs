//! Where the memory was when a kill happened: the `memory.stat` of the
//! cgroup whose limit was hit, or the node's `/proc/meminfo`, read by the
//! lookup as soon as the victim is first seen ([`super::lookup`]).
//! What is read follows what the correlator knows by then
//! ([`MemoryTargets`]): only the OOM cgroup (or the node) when a decision
//! or the kernel's summary named it; the cgroup the walk shows at its limit
//! and the node (the kill line, still to come, may say node-level); else
//! the victim's cgroup, every ancestor and the node. Each cgroup read costs
//! (on cgroup v1 a `memory.stat` sums its whole subtree), and a storm reads
//! for every kill.
//!
//! Every figure covers the cgroup's whole subtree: cgroup v2 `memory.stat`
//! is hierarchical; on v1 the plain keys count the cgroup's own pages only,
//! so the `total_*` keys are read. `file_bytes` is the page cache as the
//! kernel counts it, tmpfs and shared memory (`shmem_bytes`) included.

use std::path::Path;

use crate::{
    cgroupfs::{CgroupFs, CgroupVersion},
    readcap::read_kernel_text_kept,
    report::OomStat,
};

/// Ancestors read at most (the deepest Kubernetes layouts are 5 levels).
const MAX_LEVELS: usize = 8;

/// The figures of one cgroup at the kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupStat {
    /// Path relative to the memory controller's mount (`/kubepods/...`).
    pub path: String,
    pub stat: OomStat,
}

/// What the lookup read for one victim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryAtKill {
    /// The victim's cgroup first, then each ancestor below the root.
    pub cgroups: Vec<CgroupStat>,
    /// From `/proc/meminfo` (for node-level kills).
    pub node: Option<OomStat>,
}

impl MemoryAtKill {
    /// The figures of `path`, if it was read.
    pub fn of(&self, path: &str) -> Option<&OomStat> {
        let path = path.trim_end_matches('/');
        self.cgroups
            .iter()
            .find(|c| c.path.trim_end_matches('/') == path)
            .map(|c| &c.stat)
    }
}

/// What to read for one victim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryTargets {
    /// The cgroups to read; `None` when which limit was hit is not known
    /// yet: then the victim's cgroup and every ancestor below the root.
    pub cgroups: Option<Vec<String>>,
    /// Read `/proc/meminfo`: the kill may be node-level.
    pub node: bool,
}

impl Default for MemoryTargets {
    /// Nothing known: everything that may be asked for.
    fn default() -> Self {
        Self {
            cgroups: None,
            node: true,
        }
    }
}

/// Reads what `targets` names; `victim_cgroup` is the victim's cgroup, for
/// targets that leave the cgroups open.
pub fn read(
    cgfs: &CgroupFs,
    proc_root: &Path,
    targets: &MemoryTargets,
    victim_cgroup: Option<&str>,
) -> MemoryAtKill {
    let mut cgroups = Vec::new();
    let mut read_into = |path: &str| {
        if let Some(stat) = read_cgroup(cgfs, path) {
            cgroups.push(CgroupStat {
                path: path.to_string(),
                stat,
            });
        }
    };
    match &targets.cgroups {
        Some(paths) => paths.iter().for_each(|p| read_into(p)),
        None => {
            let mut path = victim_cgroup.unwrap_or("").trim_end_matches('/');
            let mut levels = 0;
            while !path.is_empty() && levels < MAX_LEVELS {
                read_into(path);
                levels += 1;
                path = path.rsplit_once('/').map_or("", |(parent, _)| parent);
            }
        }
    }
    let node = targets
        .node
        .then(|| read_kernel_text_kept(&proc_root.join("meminfo")).ok())
        .flatten()
        .map(|t| from_meminfo(&t));
    MemoryAtKill { cgroups, node }
}

/// One cgroup's figures; `None` when its `memory.stat` cannot be read.
pub fn read_cgroup(cgfs: &CgroupFs, path: &str) -> Option<OomStat> {
    let text = cgfs.file(path, "memory.stat").ok()?;
    Some(match cgfs.version {
        CgroupVersion::V2 => from_v2(&text),
        CgroupVersion::V1 => {
            let read = |file: &str| {
                cgfs.file(path, file)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
            };
            from_v1(
                &text,
                read("memory.kmem.usage_in_bytes"),
                read("memory.kmem.tcp.usage_in_bytes"),
            )
        }
    })
}

fn key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// cgroup v2 `memory.stat` (bytes). `kernel` exists since 5.18; before,
/// kernel memory is the sum of its parts.
pub fn from_v2(text: &str) -> OomStat {
    let kernel = key(text, "kernel").or_else(|| {
        let parts: Vec<u64> = [
            "kernel_stack",
            "pagetables",
            "sec_pagetables",
            "percpu",
            "slab",
        ]
        .iter()
        .filter_map(|k| key(text, k))
        .collect();
        (!parts.is_empty()).then(|| parts.iter().sum())
    });
    OomStat {
        anon_bytes: key(text, "anon"),
        file_bytes: key(text, "file"),
        shmem_bytes: key(text, "shmem"),
        kernel_bytes: kernel,
        sock_bytes: key(text, "sock"),
    }
}

/// cgroup v1 `memory.stat` (`total_*`, bytes), with the kernel memory and
/// TCP buffer counters of `memory.kmem.usage_in_bytes` and
/// `memory.kmem.tcp.usage_in_bytes` (hierarchical; absent without kmem
/// accounting).
pub fn from_v1(text: &str, kmem: Option<u64>, tcp: Option<u64>) -> OomStat {
    OomStat {
        anon_bytes: key(text, "total_rss"),
        file_bytes: key(text, "total_cache"),
        shmem_bytes: key(text, "total_shmem"),
        kernel_bytes: kmem,
        sock_bytes: tcp,
    }
}

/// The node's figures from `/proc/meminfo` (kB): anon `AnonPages`, file
/// `Buffers + Cached` (Cached includes Shmem), kernel `Slab + KernelStack +
/// PageTables + SecPageTables`; sockets are not in meminfo.
pub fn from_meminfo(text: &str) -> OomStat {
    let kb = |k: &str| {
        text.lines().find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name == k).then(|| rest.split_whitespace().next()?.parse::<u64>().ok())?
        })
    };
    let sum = |keys: &[&str]| {
        let parts: Vec<u64> = keys.iter().filter_map(|k| kb(k)).collect();
        (!parts.is_empty()).then(|| parts.iter().sum::<u64>() * 1024)
    };
    OomStat {
        anon_bytes: kb("AnonPages").map(|v| v * 1024),
        file_bytes: sum(&["Buffers", "Cached"]),
        shmem_bytes: kb("Shmem").map(|v| v * 1024),
        kernel_bytes: sum(&["Slab", "KernelStack", "PageTables", "SecPageTables"]),
        sock_bytes: None,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    use crate::testdata::node as sample;

    #[test]
    fn v1_counts_the_subtree_and_the_tmpfs() {
        // 24 MiB written to a tmpfs and a 12 MiB bytearray, on the host.
        let s = from_v1(
            &sample("host-6.18.v1-tmpfs.memory.stat"),
            Some(143_360),
            Some(0),
        );
        assert_eq!(s.shmem_bytes, Some(24 << 20));
        assert_eq!(s.file_bytes, Some(24 << 20), "the tmpfs is page cache");
        assert_eq!(s.anon_bytes, Some(19_623_936));
        assert_eq!((s.kernel_bytes, s.sock_bytes), (Some(143_360), Some(0)));
        // The root's file: total_* are read, not the root's own pages.
        let root = from_v1(&sample("host-6.18.v1-root.memory.stat"), None, None);
        assert!(root.file_bytes.is_some() && root.kernel_bytes.is_none());
    }

    #[test]
    fn v2_with_and_without_the_kernel_key() {
        let s = from_v2(&sample("vm-6.1.v2-tmpfs.memory.stat"));
        assert_eq!(s.shmem_bytes, Some(24 << 20));
        assert_eq!(s.anon_bytes, Some(16 << 20));
        assert_eq!(s.file_bytes, Some(33_333_248));
        assert_eq!(s.kernel_bytes, Some(339_968));
        assert_eq!(s.sock_bytes, Some(0));
        // 5.10: kernel_stack 0 + percpu 0 + slab 131184 (no pagetables key).
        let s = from_v2(&sample("vm-5.10.v2-tmpfs.memory.stat"));
        assert_eq!(s.shmem_bytes, Some(25_141_248));
        assert_eq!(s.kernel_bytes, Some(131_184));
    }

    #[test]
    fn the_node_from_meminfo() {
        let s = from_meminfo(&sample("host-6.18.meminfo.txt"));
        assert_eq!(s.anon_bytes, Some(132_680 * 1024));
        assert_eq!(s.file_bytes, Some((18_460 + 2_468_460) * 1024));
        assert_eq!(s.shmem_bytes, Some(8_872 * 1024));
        assert_eq!(
            s.kernel_bytes,
            Some((156_812 + 1_908 + 4_964) * 1024),
            "Slab + KernelStack + PageTables + SecPageTables (0)"
        );
        assert_eq!(s.sock_bytes, None);
        assert_eq!(from_meminfo("not meminfo"), OomStat::default());
    }

    /// A cgroup v2 tree `/pod/ctr` of real `memory.stat` files (24 MiB of
    /// tmpfs each) and a real node's `meminfo`, in a tempdir.
    fn pod_and_container() -> (tempfile::TempDir, CgroupFs) {
        let dir = tempfile::tempdir().expect("tmp");
        let cg = dir.path().join("cg");
        let v2 = sample("vm-6.1.v2-tmpfs.memory.stat");
        for p in ["pod", "pod/ctr"] {
            fs::create_dir_all(cg.join(p)).expect("mkdir");
            fs::write(cg.join(p).join("memory.stat"), &v2).expect("write");
        }
        fs::write(dir.path().join("meminfo"), sample("host-6.18.meminfo.txt")).expect("write");
        let cgfs = CgroupFs {
            root: cg,
            version: CgroupVersion::V2,
        };
        (dir, cgfs)
    }

    #[test]
    fn the_victims_cgroup_and_its_ancestors_are_read() {
        let (dir, cgfs) = pod_and_container();
        let unknown = MemoryTargets::default();
        let m = read(&cgfs, dir.path(), &unknown, Some("/pod/ctr"));
        let paths: Vec<&str> = m.cgroups.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/pod/ctr", "/pod"]);
        assert_eq!(m.of("/pod/").and_then(|s| s.shmem_bytes), Some(24 << 20));
        assert!(m.node.is_some_and(|n| n.shmem_bytes == Some(8_872 * 1024)));
        assert_eq!(read(&cgfs, dir.path(), &unknown, None).cgroups, []);
    }

    #[test]
    fn a_known_limit_reads_that_cgroup_only() {
        let (dir, cgfs) = pod_and_container();
        // The pod's limit was hit (decision or summary): not the container, not the node.
        let pod = MemoryTargets {
            cgroups: Some(vec!["/pod".to_string()]),
            node: false,
        };
        let m = read(&cgfs, dir.path(), &pod, Some("/pod/ctr"));
        let paths: Vec<&str> = m.cgroups.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/pod"]);
        assert_eq!(m.node, None);
        // Node-level: the node only.
        let node = MemoryTargets {
            cgroups: Some(Vec::new()),
            node: true,
        };
        let m = read(&cgfs, dir.path(), &node, Some("/pod/ctr"));
        assert_eq!(m.cgroups, []);
        assert!(m.node.is_some_and(|n| n.anon_bytes == Some(132_680 * 1024)));
    }
}
