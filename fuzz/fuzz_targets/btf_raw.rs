//! Raw BTF blobs: Btf::parse, then every query the agent makes. Seeds: a
//! real BTF blob (the .BTF section bpf-linker wrote into the oomtrace eBPF
//! object), in fuzz/seeds/btf_raw.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomtrace::capture::btf::Btf;

fuzz_target!(|data: &[u8]| {
    oomtrace_fuzz::stack_overflow_is_a_crash();
    if let Ok(btf) = Btf::parse(data) {
        oomtrace_fuzz::query_all(&btf);
    }
});
