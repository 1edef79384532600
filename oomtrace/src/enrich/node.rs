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
    cgroupfs::CgroupFs,
    enrich::identity,
    readcap::read_kernel_text_kept,
    report::{Consumer, NodeMemory},
};

/// Deepest level [`top_consumers`] looks for pods (root is 0). The deepest
/// layout of KERNEL-FACTS §6 with a nested prefix puts pods at level 5.
const MAX_WALK_DEPTH: usize = 7;

/// Upper bound on directories [`top_consumers`] reads, so a huge tree cannot
/// stall the report of a kill.
const MAX_WALK_DIRS: usize = 20_000;

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
    // Read by the node watch every second or more often: kept open.
    let m = read_kernel_text_kept(&path)
        .map_err(procfs::ProcError::from)
        .and_then(|text| procfs::Meminfo::from_read(text.as_bytes()))
        .map_err(|source| NodeError::MemInfo {
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
    let text = read_kernel_text_kept(&proc_root.join("pressure/memory")).ok()?;
    psi(&text)
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
    use crate::cgroupfs::CgroupVersion;

    use crate::testdata::node as data;

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
