//! Cgroup paths: identity::parse and identity::oom_domain. Input: lines of
//! paths (`/proc/<pid>/cgroup` lines, sysfs paths, or the `path|level|...`
//! lines of oomtrace/tests/data/identity/paths.txt, the seeds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomtrace::enrich::identity::{self, Level};

fuzz_target!(|data: &[u8]| {
    oomtrace_fuzz::stack_overflow_is_a_crash();
    let text = String::from_utf8_lossy(data);
    let paths: Vec<&str> = text
        .lines()
        .flat_map(|l| [l, l.split('|').next().unwrap_or(l)])
        .collect();
    for (i, p) in paths.iter().enumerate() {
        let id = identity::parse(p);
        // Each level's path is a prefix of the next one's.
        let levels = [
            &id.kubepods_path,
            &id.qos_path,
            &id.pod_path,
            &id.container_path,
        ];
        let known: Vec<&String> = levels.iter().filter_map(|l| l.as_ref()).collect();
        for w in known.windows(2) {
            assert!(w[1].starts_with(w[0].as_str()), "{p:?}: {id:?}");
        }
        if id.level == Level::NotKubernetes {
            assert!(id.other.is_some() && id.pod_uid.is_none(), "{p:?}: {id:?}");
        }
        let next = paths.get(i + 1).copied();
        let _ = identity::oom_domain(Some(p), next);
        let _ = identity::oom_domain(next, Some(p));
        let _ = identity::oom_domain(Some(p), None);
    }
});
