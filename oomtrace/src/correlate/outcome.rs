//! Main process or child: whether the victim was the process its container
//! (or cgroup) lives by, from where it stood in its PID namespace and
//! process tree when the kernel side read it ([`Lineage`]).
//!
//! Killing a container's main process ends the container (Kubernetes
//! restarts it and reports `OOMKilled`); killing any other process of it
//! leaves the container running, and a later, unrelated exit may still be
//! reported as `OOMKilled` (coroot#379, kubernetes#140716). The main
//! process is:
//!
//! - the init of its PID namespace (pid 1 there: every container with its
//!   own PID namespace);
//! - the only child of an init shim (tini, dumb-init, catatonit,
//!   docker-init) that is that init: the shim forwards signals and exits
//!   with its child;
//! - with `shareProcessNamespace` (the pod's pause process is pid 1, in the
//!   pod's cgroup, not the container's) or without a PID namespace of its
//!   own: the process whose parent is outside its memory cgroup (the first
//!   process of that cgroup; every other one descends from it).
//!
//! A process that entered its namespace from outside (`kubectl exec`, or a
//! shared namespace's main process reparented to the runtime's shim) cannot
//! be told apart from the kernel's view alone: unknown.

use crate::capture::Lineage;

/// Init shims that run one child and exit with it (their `comm`).
pub const INIT_SHIMS: [&str; 4] = ["tini", "dumb-init", "catatonit", "docker-init"];

/// Whether the victim was its container's (cgroup's) main process; `Err`
/// says why it is not known (for `missing`).
pub fn main_process(lineage: Option<&Lineage>) -> Result<bool, String> {
    let Some(l) = lineage else {
        return Err("outcome.main_process: needs a record read from the victim task (tp_btf/mark_victim or the oom_kill_process hook), not available on this kernel".into());
    };
    let own_ns = l.ns_level > 0;
    if own_ns && l.ns_pid == 1 {
        return Ok(true);
    }
    let Some(parent) = &l.parent else {
        return Err("outcome.main_process: the victim's parent could not be read".into());
    };
    let parent_outside_cgroup = l.parent_same_memcg == Some(false);
    if own_ns && parent.ns_pid == 1 {
        if INIT_SHIMS.contains(&parent.comm.as_str()) {
            return if parent.only_child {
                Ok(true)
            } else {
                Err(format!(
                    "outcome.main_process: the victim is one of several children of the init shim {}",
                    parent.comm
                ))
            };
        }
        // An init in another cgroup (the pod's pause with
        // shareProcessNamespace): the victim is its own cgroup's first process.
        return Ok(parent_outside_cgroup);
    }
    if own_ns && parent.ns_pid == 0 {
        return Err("outcome.main_process: the victim entered its PID namespace from outside (kubectl exec, or a pod's main process with shareProcessNamespace)".into());
    }
    if own_ns {
        // A grandchild of the namespace's init.
        return Ok(false);
    }
    // No PID namespace of its own (hostPID, a systemd unit, a bare cgroup).
    match l.parent_same_memcg {
        Some(same) => Ok(!same),
        None => Err(
            "outcome.main_process: no PID namespace of its own and its parent's cgroup could not be compared"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Parent;

    /// The lineages the kernel side read for real kills in
    /// `tests/support/deaths.rs` (host 6.18, this test's process at level 0
    /// of the node; `unshare --pid --fork` one level below).
    fn lineage(ns_level: u32, ns_pid: u32, parent: (u32, &str, bool), same_memcg: bool) -> Lineage {
        Lineage {
            ns_level,
            ns_pid,
            parent: Some(Parent {
                pid: 4100,
                ns_pid: parent.0,
                comm: parent.1.into(),
                only_child: parent.2,
            }),
            parent_same_memcg: Some(same_memcg),
        }
    }

    #[test]
    fn the_init_of_a_pid_namespace_is_the_main_process() {
        // `unshare --pid --fork dd ...`: dd is pid 1, unshare (outside the
        // namespace, inside the cgroup) its parent.
        let l = lineage(1, 1, (0, "unshare", true), true);
        assert_eq!(main_process(Some(&l)), Ok(true));
    }

    #[test]
    fn a_child_of_the_init_is_not() {
        // `unshare --pid --fork sh -c 'dd ...; exit 0'`: dd is pid 2 under sh.
        let l = lineage(1, 2, (1, "sh", true), true);
        assert_eq!(main_process(Some(&l)), Ok(false));
        // A grandchild.
        let l = lineage(1, 9, (2, "bash", false), true);
        assert_eq!(main_process(Some(&l)), Ok(false));
    }

    #[test]
    fn the_only_child_of_an_init_shim_is_the_main_process() {
        for shim in INIT_SHIMS {
            let l = lineage(1, 7, (1, shim, true), true);
            assert_eq!(main_process(Some(&l)), Ok(true), "{shim}");
        }
        // tini reaps orphans too: with siblings, which child ran the command is unknown.
        let l = lineage(1, 7, (1, "tini", false), true);
        assert!(main_process(Some(&l)).is_err());
    }

    #[test]
    fn under_a_shared_pause_the_first_process_of_the_container_cgroup_is_main() {
        // shareProcessNamespace: pause is pid 1 in the pod cgroup.
        let l = lineage(1, 14, (1, "pause", true), false);
        assert_eq!(main_process(Some(&l)), Ok(true));
        // Reparented to the runtime's shim, or `kubectl exec`: unknown.
        let l = lineage(1, 30, (0, "containerd-shim", true), false);
        let why = main_process(Some(&l)).expect_err("ambiguous");
        assert!(why.contains("kubectl exec"), "{why}");
    }

    #[test]
    fn without_a_pid_namespace_the_cgroup_decides() {
        // dd started by the test (outside the cgroup) in a bare memory cgroup.
        let l = lineage(0, 52_000, (51_000, "privileged-44d", true), false);
        assert_eq!(main_process(Some(&l)), Ok(true));
        // A worker forked by a daemon in its own cgroup.
        let l = lineage(0, 52_001, (52_000, "gunicorn", false), true);
        assert_eq!(main_process(Some(&l)), Ok(false));
        let unknown = Lineage {
            parent_same_memcg: None,
            ..l
        };
        assert!(main_process(Some(&unknown)).is_err());
    }

    #[test]
    fn nothing_read_is_unknown_and_says_why() {
        let why = main_process(None).expect_err("unknown");
        assert!(why.starts_with("outcome.main_process: needs"), "{why}");
        let no_parent = Lineage {
            ns_level: 1,
            ns_pid: 3,
            parent: None,
            parent_same_memcg: None,
        };
        assert!(main_process(Some(&no_parent)).is_err());
    }
}
