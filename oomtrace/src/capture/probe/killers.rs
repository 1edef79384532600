//! The `--userspace-killers` list: the process names the signal hook lets
//! through to userspace, which confirms the sender before calling it a
//! memory killer.

use oomtrace_common::{COMM_LEN, KillerNames, MAX_KILLERS};

/// The default `--userspace-killers`: the process names (`comm`) of the
/// userspace OOM killers people run on Linux and Kubernetes nodes.
///
/// - `systemd-oomd` (systemd's, PSI and swap based; kills a unit's cgroup),
/// - `earlyoom` (MemAvailable/SwapFree thresholds; SIGTERM first, then SIGKILL),
/// - `oomd` (Meta's, the ancestor of systemd-oomd),
/// - `nohang` (a Python script: a script's `comm` is the script's file name),
/// - `init`: Talos Linux's `machined`. Its userspace OOM controller
///   (`runtime.OOMController`, Talos 1.12+) runs inside machined, which is PID 1:
///   Talos's initramfs execs it as `/sbin/init` ("/sbin/init is machined. We
///   call it init since this is the convention", internal/app/init/main.go),
///   and the kernel names a task after the file it executed, so its comm is
///   `init` (`talosctl cgroups` lists the init cgroup's process as `[init]`).
///   It kills by writing `cgroup.kill`, and the kernel sends those SIGKILLs in
///   the writer's context, so they reach this hook with machined as sender.
///   `init` is also the name of other systems' PID 1 and of some containers'
///   init processes: the name only lets the record through to userspace, which
///   confirms the sender by its executable and namespaces.
pub const DEFAULT_USERSPACE_KILLERS: [&str; 5] =
    ["systemd-oomd", "earlyoom", "oomd", "nohang", "init"];

/// Checks one `--userspace-killers` name: what the kernel keeps of a process
/// name is 15 bytes, compared exactly.
pub fn parse_killer_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err(
            "an empty process name: give names separated by commas, or turn the hook off with --no-signal-hook".to_string(),
        );
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains a NUL byte"));
    }
    if name.len() >= COMM_LEN {
        let mut cut = COMM_LEN - 1;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(format!(
            "{name:?} is {} bytes: the kernel keeps only the first 15 bytes of a process name, give those ({:?})",
            name.len(),
            &name[..cut]
        ));
    }
    Ok(name.to_string())
}

/// The [`KillerNames`] global for `names` (each checked by [`parse_killer_name`]).
pub fn killer_names(names: &[String]) -> Result<KillerNames, String> {
    if names.len() > MAX_KILLERS {
        return Err(format!(
            "--userspace-killers has {} names; the kernel side compares at most {MAX_KILLERS}: keep the ones this node runs",
            names.len()
        ));
    }
    let mut out = KillerNames::zeroed();
    for (slot, name) in out.names.iter_mut().zip(names) {
        let name = parse_killer_name(name)?;
        slot[..name.len()].copy_from_slice(name.as_bytes());
    }
    out.count = names.len() as u32;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn killer_names_are_the_kernels_comm_bytes() {
        let defaults: Vec<String> = DEFAULT_USERSPACE_KILLERS
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        let names = killer_names(&defaults).expect("defaults");
        assert_eq!(names.count, 5);
        assert_eq!(&names.names[0], b"systemd-oomd\0\0\0\0");
        assert_eq!(&names.names[4], b"init\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(names.names[5], [0; COMM_LEN], "unused slots stay zero");

        // 15 bytes is the longest comm; 16 are cut by the kernel.
        assert!(parse_killer_name("abcdefghijklmno").is_ok());
        let err = parse_killer_name("systemd-oomd-xyz").expect_err("16 bytes");
        assert!(err.contains("\"systemd-oomd-xy\""), "{err}");
        // A multi-byte character is not split.
        let err = parse_killer_name("oomkiller-ééééé").expect_err("too long");
        assert!(err.contains("\"oomkiller-éé\""), "{err}");
        assert!(parse_killer_name("").is_err());

        let nine: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
        let err = killer_names(&nine).expect_err("nine names");
        assert!(err.contains("at most 8"), "{err}");
    }
}
