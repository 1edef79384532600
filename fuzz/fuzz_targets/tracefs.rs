//! Tracepoint `format` files and `mark_victim` records decoded with the
//! parsed layout. Input: format text, then optionally a NUL and a record.
//! Any input is also decoded as a record with the real layouts.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oomtrace::capture::tracefs::{self, MarkVictimLayout};

const REAL_FORMATS: [&str; 3] = [
    include_str!("../../oomtrace/tests/data/tracefs/mark_victim-6.18.format"),
    include_str!("../../oomtrace/tests/data/tracefs/mark_victim-5.10.format"),
    include_str!("../../oomtrace/tests/data/tracefs/mark_victim-synthetic-ilp32.format"),
];
const REAL_RECORD: &[u8] =
    include_bytes!("../../oomtrace/tests/data/tracefs/mark_victim-6.18.record.bin");

fn real_layouts() -> &'static [MarkVictimLayout] {
    static LAYOUTS: OnceLock<Vec<MarkVictimLayout>> = OnceLock::new();
    LAYOUTS.get_or_init(|| {
        REAL_FORMATS
            .iter()
            .filter_map(|f| tracefs::parse_format(f).ok())
            .filter_map(|f| MarkVictimLayout::from_format(&f).ok())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    oomtrace_fuzz::stack_overflow_is_a_crash();
    let (text, record) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    if let Ok(format) = tracefs::parse_format(&text) {
        for field in &format.fields {
            for r in [record, REAL_RECORD, data] {
                let _ = field.read_i64(r);
                let _ = field.read_u64(r);
                let _ = field.read_str(r);
            }
        }
        if let Ok(layout) = MarkVictimLayout::from_format(&format) {
            for r in [record, REAL_RECORD, data] {
                let fields = layout.decode(r);
                if let Some(comm) = &fields.comm {
                    assert!(!comm.is_empty());
                }
            }
        }
    }
    for layout in real_layouts() {
        let _ = layout.decode(data);
        let _ = layout.decode(record);
    }
});
