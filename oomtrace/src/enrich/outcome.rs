//! What the kill left of the victim's cgroup: the processes still in it
//! (`outcome.survivors`) and whether memory.oom.group took them all.
//!
//! Survivors are counted when the kill is enriched: as soon as every
//! source of the kill has reported it (usually milliseconds after the
//! kill), on the output thread, so the `cgroup.procs` read never sits in
//! front of the draining. Earlier would count the victims themselves: the
//! OOM killer marks a victim before the SIGKILL is delivered, and
//! `cgroup.procs` lists a dying process until its last thread has exited.
//! Processes with a SIGKILL still pending (the victim, other victims of a
//! group kill, a frozen task) and zombies are not counted either.

use std::{io, path::Path};

use crate::{
    cgroupfs::{CgroupFs, CgroupVersion},
    readcap::read_kernel_text,
};

/// SIGKILL's bit in the `SigPnd`/`ShdPnd` masks of `/proc/<pid>/status`.
const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);

/// The processes left in `cgroup` (v1: that cgroup only, as v2
/// `cgroup.procs`), not counting `victim` and the dying. `Ok(0)` when the
/// cgroup is gone (the runtime removes a container's cgroup when its last
/// process exits).
pub fn survivors(cgfs: &CgroupFs, proc_root: &Path, cgroup: &str, victim: u32) -> io::Result<u32> {
    let text = match cgfs.file(cgroup, "cgroup.procs") {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let live = crate::cgroupfs::parse_procs(&text)
        .into_iter()
        .filter(|&pid| pid != victim)
        .filter(|pid| {
            // A process gone since the list was read is no survivor.
            read_kernel_text(proc_root.join(pid.to_string()).join("status"))
                .is_ok_and(|s| !dying(&s))
        })
        .count();
    Ok(u32::try_from(live).unwrap_or(u32::MAX))
}

/// Whether a `/proc/<pid>/status` text is of a process that is exiting:
/// a zombie or dead, or with a SIGKILL pending for it or its thread group.
pub fn dying(status: &str) -> bool {
    let mut dying = false;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "State" => dying |= value.starts_with('Z') || value.starts_with('X'),
            "SigPnd" | "ShdPnd" => {
                dying |= u64::from_str_radix(value, 16).is_ok_and(|m| m & SIGKILL_BIT != 0);
            }
            _ => {}
        }
    }
    dying
}

/// Whether `memory.oom.group` is set on the victim's cgroup or an ancestor
/// up to the cgroup whose limit was hit (`oom_cgroup`; the root for a
/// node-level kill): the kernel then kills every process of the highest
/// such cgroup (`mem_cgroup_get_oom_group()`). cgroup v2 only; read after
/// the kill, so a cgroup removed since then reads as unset.
pub fn oom_group_set(cgfs: &CgroupFs, victim_cgroup: &str, oom_cgroup: Option<&str>) -> bool {
    if cgfs.version != CgroupVersion::V2 {
        return false;
    }
    let stop = oom_cgroup.unwrap_or("/").trim_end_matches('/');
    let mut path = victim_cgroup.trim_end_matches('/');
    loop {
        let set = cgfs
            .file(path, "memory.oom.group")
            .is_ok_and(|v| v.trim() == "1");
        if set {
            return true;
        }
        if path == stop || path.is_empty() {
            return false;
        }
        match path.rsplit_once('/') {
            Some((parent, _)) => path = parent,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use std::fs;

    use super::*;

    fn sample(name: &str) -> String {
        crate::testdata::read("proc", name)
    }

    #[test]
    fn a_killed_process_not_yet_gone_is_dying() {
        // Frozen (v1 freezer), then SIGKILLed: the signal waits in both masks.
        assert!(dying(&sample("host-6.18-frozen-sigkilled.status")));
        assert!(!dying(&sample("host-6.18-sleeping.status")));
        let zombie = sample("host-6.18-sleeping.status").replace("S (sleeping)", "Z (zombie)");
        assert!(dying(&zombie));
        // SIGTERM pending (bit 15) is not dying.
        let term = sample("host-6.18-sleeping.status")
            .replace("ShdPnd:\t0000000000000000", "ShdPnd:\t0000000000004000");
        assert!(!dying(&term));
    }

    /// A cgroup tree and a /proc in a temporary directory.
    struct Tree {
        root: PathBuf,
    }

    impl Tree {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir()
                .join(format!("oomtrace-outcome-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("cg")).expect("mkdir");
            fs::create_dir_all(root.join("proc")).expect("mkdir");
            Self { root }
        }

        fn cgfs(&self, version: CgroupVersion) -> CgroupFs {
            CgroupFs {
                root: self.root.join("cg"),
                version,
            }
        }

        fn cgroup(&self, path: &str, files: &[(&str, &str)]) {
            let dir = self.root.join("cg").join(path.trim_start_matches('/'));
            fs::create_dir_all(&dir).expect("mkdir");
            for (f, text) in files {
                fs::write(dir.join(f), text).expect("write");
            }
        }

        fn process(&self, pid: u32, status: &str) {
            let dir = self.root.join("proc").join(pid.to_string());
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("status"), status).expect("write");
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn survivors_leave_out_the_victim_the_dying_and_the_gone() {
        let t = Tree::new("survivors");
        let live = sample("host-6.18-sleeping.status");
        let killed = sample("host-6.18-frozen-sigkilled.status");
        t.cgroup("/pod/ctr", &[("cgroup.procs", "10\n11\n12\n13\n14\n")]);
        t.process(10, &live); // the shell that stays
        t.process(11, &live); // the victim, still listed
        t.process(12, &killed); // another victim of the same group kill
        t.process(13, &live); // a sidecar process
        // 14 exited since cgroup.procs was read: no /proc entry.
        let cgfs = t.cgfs(CgroupVersion::V2);
        let proc_root = t.root.join("proc");
        assert_eq!(survivors(&cgfs, &proc_root, "/pod/ctr", 11).ok(), Some(2));
        // The container's cgroup was removed: nothing survived.
        assert_eq!(survivors(&cgfs, &proc_root, "/pod/gone", 11).ok(), Some(0));
    }

    #[test]
    fn oom_group_is_looked_up_from_the_victim_to_the_oom_cgroup() {
        let t = Tree::new("group");
        t.cgroup("/", &[("memory.oom.group", "0\n")]);
        t.cgroup("/kubepods/pod", &[("memory.oom.group", "0\n")]);
        t.cgroup("/kubepods/pod/ctr", &[("memory.oom.group", "1\n")]);
        t.cgroup("/kubepods/pod/other", &[("memory.oom.group", "0\n")]);
        let v2 = t.cgfs(CgroupVersion::V2);
        assert!(oom_group_set(
            &v2,
            "/kubepods/pod/ctr",
            Some("/kubepods/pod/ctr")
        ));
        assert!(oom_group_set(&v2, "/kubepods/pod/ctr", None));
        assert!(!oom_group_set(
            &v2,
            "/kubepods/pod/other",
            Some("/kubepods/pod")
        ));
        // Set on an ancestor above the OOM cgroup: not this kill's group.
        t.cgroup("/kubepods", &[("memory.oom.group", "1\n")]);
        assert!(!oom_group_set(
            &v2,
            "/kubepods/pod/other",
            Some("/kubepods/pod")
        ));
        assert!(oom_group_set(&v2, "/kubepods/pod/other", Some("/kubepods")));
        // cgroup v1 has no memory.oom.group.
        assert!(!oom_group_set(
            &t.cgfs(CgroupVersion::V1),
            "/kubepods/pod/ctr",
            None
        ));
    }
}
