//! `/proc/mounts` paths: node::unescape_mount_path (and the memory
//! controller detection that uses it). Input: mounts text (the seeds are
//! oomtrace/tests/data/node). A path escaped as the kernel escapes it comes
//! back unchanged.
#![no_main]

use std::os::unix::ffi::OsStrExt as _;

use libfuzzer_sys::fuzz_target;
use oomtrace::cgroupfs::{CgroupFs, unescape_mount_path};

fuzz_target!(|data: &[u8]| {
    oomtrace_fuzz::stack_overflow_is_a_crash();
    let text = String::from_utf8_lossy(data);
    let _ = CgroupFs::detect_with(&text, |_| Some("cpu memory\n".to_owned()));
    for field in text.split_whitespace() {
        let _ = unescape_mount_path(field);
    }
    if let Ok(path) = std::str::from_utf8(data) {
        let mangled = oomtrace_fuzz::mangle_mount_path(path.as_bytes());
        assert_eq!(
            unescape_mount_path(&mangled).as_os_str().as_bytes(),
            path.as_bytes()
        );
    }
});
