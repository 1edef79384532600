//! RLIMIT_MEMLOCK on kernels that charge BPF memory to it.

/// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK (5.11
/// moved them to memory cgroup accounting), and a default limit of 64 KiB or
/// 8 MiB does not hold a 4 MiB ring buffer and the programs. There the limit
/// is raised to unlimited (or to the hard limit, without CAP_SYS_RESOURCE)
/// before anything is loaded; newer kernels ignore it. Returns what was done.
///
/// aya 0.14 also retries a map or program creation that failed with EPERM
/// on such kernels after raising the limit to unlimited (`sys/bpf.rs`,
/// `with_raised_rlimit_retry`), but silently, and without the hard-limit
/// fallback: doing it here first says what happened.
pub fn raise_memlock(release: &str) -> String {
    if !kernel_before(release, (5, 11)) {
        return format!(
            "kernel {release} accounts BPF memory to memory cgroups: RLIMIT_MEMLOCK left as it is"
        );
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `old`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut old) } != 0 {
        return format!(
            "kernel {release} charges BPF maps to RLIMIT_MEMLOCK, which cannot be read: {}",
            io_error()
        );
    }
    let show = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", v / 1024)
        }
    };
    if old.rlim_cur == libc::RLIM_INFINITY {
        return format!(
            "kernel {release} charges BPF maps to RLIMIT_MEMLOCK, which is already unlimited"
        );
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads `unlimited`.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return format!(
            "kernel {release} charges BPF maps to RLIMIT_MEMLOCK: raised it from {} to unlimited",
            show(old.rlim_cur)
        );
    }
    let err = io_error();
    let hard = libc::rlimit {
        rlim_cur: old.rlim_max,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads `hard`.
    if old.rlim_max > old.rlim_cur && unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &hard) } == 0 {
        return format!(
            "kernel {release} charges BPF maps to RLIMIT_MEMLOCK: raised it from {} to the hard limit {} (unlimited was refused: {err}; grant CAP_SYS_RESOURCE if loading fails)",
            show(old.rlim_cur),
            show(old.rlim_max)
        );
    }
    format!(
        "kernel {release} charges BPF maps to RLIMIT_MEMLOCK ({}) and it could not be raised ({err}): grant CAP_SYS_RESOURCE (deploy/components/legacy-kernel), or raise it before starting oomtrace (`ulimit -l unlimited`, LimitMEMLOCK=infinity)",
        show(old.rlim_cur)
    )
}

fn io_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Whether a kernel release string (`5.10.0-32-amd64`) is older than `version`.
/// An unreadable release counts as old (raising the limit is harmless).
pub(super) fn kernel_before(release: &str, version: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < version,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_is_raised_only_before_5_11() {
        assert!(kernel_before("5.10.0-32-amd64", (5, 11)));
        assert!(kernel_before("4.19.0", (5, 11)));
        assert!(!kernel_before("5.11.0", (5, 11)));
        assert!(!kernel_before("6.1.0-41-amd64", (5, 11)));
        assert!(!kernel_before("6.18.44-fc-v1045", (5, 11)));
        assert!(kernel_before("", (5, 11)), "unknown: raising is harmless");
        // On a new kernel nothing is touched.
        let said = raise_memlock("6.18.44-fc-v1045");
        assert!(said.contains("left as it is"), "{said}");
    }
}
