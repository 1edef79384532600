//! What `/proc` says about a process, read through one handle.

use std::{fs, path::Path};

/// The memory cgroup of a (dying) process, from `/proc/<pid>/cgroup`.
/// Paths relative to a cgroup namespace (`/..`) are not the node's: ignored.
/// An exited task has been moved to the root cgroup (cgroup v1 shows `/` for
/// zombies), so a zombie, or an exiting task that shows `/`, gives `None`:
/// better missing than wrong.
pub fn victim_cgroup(proc_root: &Path, pid: u32) -> Option<String> {
    let dir = proc_root.join(pid.to_string());
    let exiting = || -> Option<(bool, bool)> {
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let mut f = after.split_whitespace();
        let state = f.next()?;
        // Fields after the comm: state, ppid, pgrp, session, tty_nr, tpgid, flags.
        let flags: u64 = f.nth(5)?.parse().ok()?;
        const PF_EXITING: u64 = 0x4;
        Some((matches!(state, "Z" | "X"), flags & PF_EXITING != 0))
    };
    let (dead, _) = exiting()?;
    if dead {
        return None;
    }
    let text = fs::read_to_string(dir.join("cgroup")).ok()?;
    let path =
        crate::rank::parse_cgroup(&text).filter(|p| p.starts_with('/') && !p.contains("/.."))?;
    let (dead, leaving) = exiting()?;
    if dead || (leaving && path == "/") {
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `/proc/<pid>/stat` of a sleeping process on the 6.18 host.
    const STAT: &str = include_str!("../tests/data/node/host-6.18.proc-sleep.stat");

    fn proc_with(pid: u32, stat: &str, cgroup: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join(pid.to_string());
        fs::create_dir(&dir).expect("mkdir");
        fs::write(dir.join("stat"), stat).expect("stat");
        fs::write(dir.join("cgroup"), cgroup).expect("cgroup");
        root
    }

    #[test]
    fn a_dying_victims_cgroup_is_read_but_never_the_root_an_exited_task_shows() {
        let v1 = "12:memory:/oomtrace-test/app\n4:pids:/\n";
        let live = proc_with(15239, STAT, v1);
        assert_eq!(
            victim_cgroup(live.path(), 15239).as_deref(),
            Some("/oomtrace-test/app")
        );
        // A zombie: cgroup v1 moved it to the root; nothing is better than "/".
        let zombie = proc_with(15239, &STAT.replacen(" S ", " Z ", 1), "12:memory:/\n");
        assert_eq!(victim_cgroup(zombie.path(), 15239), None);
        // Exiting (PF_EXITING, 0x4, in the flags field 4194304 -> 4194308) and showing "/".
        let exiting = STAT.replacen(" 4194304 ", " 4194308 ", 1);
        let leaving = proc_with(15239, &exiting, "12:memory:/\n");
        assert_eq!(victim_cgroup(leaving.path(), 15239), None);
        // Exiting but still in its own cgroup: the path is right.
        let still = proc_with(15239, &exiting, v1);
        assert_eq!(
            victim_cgroup(still.path(), 15239).as_deref(),
            Some("/oomtrace-test/app")
        );
        // Inside a cgroup namespace the path is not the node's.
        let ns = proc_with(15239, STAT, "0::/../../kubepods.slice\n");
        assert_eq!(victim_cgroup(ns.path(), 15239), None);
        assert_eq!(victim_cgroup(live.path(), 1), None, "gone");
    }
}
