//! `/proc/<pid>/cgroup` of dying victims, and where their memory was.
//!
//! Without the `tp_btf` walk (kernels before 6.9 and their backports), the
//! kernel log names a victim's cgroup only in its rate-limited summary: the
//! victim's own `/proc` entry, read while it dies, is the only other place.
//! The read races the reaper: the correlation stage makes it as soon as the
//! records already queued are correlated (it was a thread of its own; the
//! hand-offs cost more CPU per kill than the reads, see README Benchmarks).
//!
//! The same lookup reads where the memory was ([`super::memstat`]): the
//! `memory.stat` of the cgroup whose limit was hit (or, when that is not
//! known yet, of the victim's cgroup and its ancestors) and the node's
//! meminfo, as close to the kill as the agent can (the victim's anonymous
//! memory is freed within milliseconds of the kill; tmpfs pages stay).

use std::{path::PathBuf, time::Duration};

use super::{
    Input,
    memstat::{self, MemoryTargets},
};
use crate::{cgroupfs::CgroupFs, proc::victim_cgroup};

/// Lookups waiting; beyond this a victim is reported without it.
pub const QUEUE: usize = 1024;

/// One victim to look up.
#[derive(Debug)]
pub struct Request {
    pub pid: u32,
    /// CLOCK_MONOTONIC time of the kill: a process started after it holds
    /// a recycled pid.
    pub killed_at: Option<Duration>,
    /// The victim's cgroup when a record already named it (tp_btf's walk).
    pub cgroup: Option<String>,
    /// What to read of where the memory was.
    pub memory: MemoryTargets,
}

/// What a lookup reads.
#[derive(Debug, Clone)]
pub struct LookupConfig {
    pub proc_root: PathBuf,
    /// Answer with the victim's cgroup ([`Input::ProcCgroup`]).
    pub cgroups: bool,
    /// Answer with where the memory was ([`Input::Memory`]).
    pub memory: Option<CgroupFs>,
}

impl LookupConfig {
    /// Reads what `r` asks for: the inputs to correlate, the cgroup first.
    pub fn read(&self, r: &Request) -> Vec<Input> {
        let pid = r.pid;
        let from_proc = (self.cgroups || r.cgroup.is_none())
            .then(|| victim_cgroup(&self.proc_root, pid, r.killed_at))
            .flatten();
        let memory = self.memory.as_ref().map(|cgfs| {
            let cgroup = r.cgroup.as_deref().or(from_proc.as_deref());
            memstat::read(cgfs, &self.proc_root, &r.memory, cgroup)
        });
        let mut inputs = Vec::with_capacity(2);
        if self.cgroups {
            inputs.push(Input::ProcCgroup {
                pid,
                cgroup: from_proc,
            });
        }
        if let Some(memory) = memory {
            inputs.push(Input::Memory { pid, memory });
        }
        inputs
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{cgroupfs::CgroupVersion, testdata::node as sample};

    /// A cgroup v2 `/pod/ctr` of real `memory.stat` files and a real
    /// node's `meminfo`, in a tempdir; no `/proc/<pid>` entries.
    fn node() -> (tempfile::TempDir, LookupConfig) {
        let dir = tempfile::tempdir().expect("tmp");
        let cg = dir.path().join("cg");
        for p in ["pod", "pod/ctr"] {
            fs::create_dir_all(cg.join(p)).expect("mkdir");
            let stat = sample("vm-6.1.v2-tmpfs.memory.stat");
            fs::write(cg.join(p).join("memory.stat"), stat).expect("write");
        }
        fs::write(dir.path().join("meminfo"), sample("host-6.18.meminfo.txt")).expect("write");
        let cfg = LookupConfig {
            proc_root: dir.path().to_path_buf(),
            cgroups: false,
            memory: Some(CgroupFs {
                root: cg,
                version: CgroupVersion::V2,
            }),
        };
        (dir, cfg)
    }

    fn request(cgroup: Option<&str>) -> Request {
        Request {
            pid: 4242,
            killed_at: None,
            cgroup: cgroup.map(String::from),
            memory: MemoryTargets::default(),
        }
    }

    #[test]
    fn a_walked_victim_gets_where_its_memory_was() {
        let (_dir, cfg) = node();
        let inputs = cfg.read(&request(Some("/pod/ctr")));
        let [Input::Memory { pid: 4242, memory }] = inputs.as_slice() else {
            panic!("one Memory input: {inputs:?}");
        };
        let paths: Vec<&str> = memory.cgroups.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/pod/ctr", "/pod"]);
        assert!(memory.node.is_some());
    }

    #[test]
    fn a_victim_gone_from_proc_is_answered_without_its_cgroup() {
        let (_dir, mut cfg) = node();
        cfg.cgroups = true;
        let inputs = cfg.read(&request(None));
        match inputs.as_slice() {
            [
                Input::ProcCgroup {
                    pid: 4242,
                    cgroup: None,
                },
                Input::Memory { memory, .. },
            ] => assert!(memory.cgroups.is_empty() && memory.node.is_some()),
            other => panic!("the cgroup answer, then the memory: {other:?}"),
        }
        cfg.memory = None;
        assert_eq!(cfg.read(&request(None)).len(), 1, "the cgroup answer only");
    }
}
