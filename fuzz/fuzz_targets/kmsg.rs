//! `/dev/kmsg` records and OOM-killer lines: parse_record, parse_oom_line,
//! kernel_oom_line. Input: one record (one `read()`), or a sample file whose
//! lines are records or dmesg lines (the seeds are oomtrace/tests/data/kmsg).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomtrace::capture::kmsg::{self, KmsgStats, OomLine};

fn check(line: &OomLine) {
    if let OomLine::Summary {
        global, oom_memcg, ..
    } = line
    {
        // A summary is either a memcg OOM or a global one, never both.
        assert!(!(*global && oom_memcg.is_some()), "{line:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    oomtrace_fuzz::stack_overflow_is_a_crash();
    let stats = KmsgStats::default();
    for record in std::iter::once(data).chain(data.split(|&b| b == b'\n')) {
        if let Some(r) = kmsg::parse_record(record) {
            let kernel = r.is_kernel();
            let line = kmsg::parse_oom_line(&r.message);
            if let Some(l) = &line {
                check(l);
            }
            let kept = kmsg::kernel_oom_line(r, &stats);
            // Only the kernel's own OOM lines go on.
            assert_eq!(kept.is_some(), kernel && line.is_some());
        }
        let text = String::from_utf8_lossy(record);
        for msg in [&*text, oomtrace_fuzz::dmesg_message(&text)] {
            if let Some(l) = kmsg::parse_oom_line(msg) {
                check(&l);
            }
        }
    }
});
