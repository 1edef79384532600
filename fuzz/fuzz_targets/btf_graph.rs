//! Generated BTF type graphs (cycles, self and dangling references, extreme
//! sizes and bit offsets, unknown kinds, corrupted and cut blobs): parse, then
//! the agent's queries and every member path of the graph.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomtrace::capture::btf::Btf;
use oomtrace_fuzz::Graph;

fuzz_target!(|graph: Graph| {
    oomtrace_fuzz::stack_overflow_is_a_crash();
    let blob = graph.encode();
    if let Ok(btf) = Btf::parse(blob) {
        oomtrace_fuzz::query_graph(&btf, &graph);
    }
});
