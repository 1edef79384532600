//! A small stand-in for the kernel's BTF, for aya.
//!
//! aya needs the kernel's BTF to load our programs only to look up the type
//! ids of their attach targets (`btf_trace_<tracepoint>` typedefs for
//! `tp_btf`, FUNCs for `fentry`): the kernel is given that id. (Its other use,
//! CO-RE relocations, has nothing to do for Rust eBPF programs, which have
//! none.) Parsing the whole kernel BTF costs aya some 19 MiB at start-up
//! (126k types on the 6.18 host); this builds a BTF blob with the same type
//! ids in which every type but the attach targets is a 12-byte placeholder,
//! from our own parse, for a fraction of that. If aya ever needs more of it
//! (an object with CO-RE relocations), loading falls back to the real file.

use crate::capture::btf::{Btf, Kind};

/// `BTF_KIND_PTR`, `BTF_KIND_TYPEDEF`, `BTF_KIND_FUNC`.
const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
/// `BTF_FUNC_GLOBAL`, in a FUNC's vlen.
const FUNC_GLOBAL: u32 = 1;

/// One attach target: its name and kind in the kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `btf_trace_<name>` (tp_btf).
    Tracepoint(&'static str),
    /// A function (fentry).
    Func(&'static str),
}

/// A BTF blob with `btf`'s type ids where only `targets` are real types
/// (the ones `btf` has).
pub fn build(btf: &Btf, targets: &[Target]) -> Vec<u8> {
    let count = btf.type_count();
    let mut strings: Vec<u8> = vec![0];
    let mut named: Vec<(u32, u32, u32)> = Vec::new();
    for t in targets {
        let (name, kind, btf_kind) = match t {
            Target::Tracepoint(tp) => (format!("btf_trace_{tp}"), Kind::Typedef, KIND_TYPEDEF),
            Target::Func(f) => ((*f).to_string(), Kind::Func, KIND_FUNC),
        };
        let Some(id) = btf.type_id(&name, kind) else {
            continue;
        };
        let name_off = strings.len() as u32;
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
        named.push((id, name_off, btf_kind));
    }
    named.sort_unstable();
    let type_len = count as usize * 12;
    let mut blob = Vec::with_capacity(24 + type_len + strings.len());
    for v in [0xeb9f_u16.to_le_bytes().as_slice(), &[1, 0]] {
        blob.extend_from_slice(v);
    }
    for v in [
        24u32,
        0,
        type_len as u32,
        type_len as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&v.to_le_bytes());
    }
    let mut next = named.iter().peekable();
    for id in 1..=count {
        let (name_off, info) = match next.peek() {
            Some(&&(nid, off, kind)) if nid == id => {
                next.next();
                let vlen = if kind == KIND_FUNC { FUNC_GLOBAL } else { 0 };
                (off, kind << 24 | vlen)
            }
            _ => (0, KIND_PTR << 24),
        };
        for v in [name_off, info, 0] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
    }
    blob.extend_from_slice(&strings);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGETS: [Target; 3] = [
        Target::Tracepoint("mark_victim"),
        Target::Func("oom_kill_process"),
        Target::Func("not_in_this_kernel"),
    ];

    #[test]
    fn the_targets_keep_their_ids_and_aya_parses_the_blob() {
        // The agent runs on the host's BTF; so does this test.
        let Ok(real) = Btf::from_file("/sys/kernel/btf/vmlinux") else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux on this machine");
            return;
        };
        let blob = build(&real, &TARGETS);
        assert!(
            blob.len() < 24 + real.type_count() as usize * 12 + 64,
            "12 bytes a type: {} bytes",
            blob.len()
        );
        aya::Btf::parse(&blob, aya::Endianness::default()).expect("aya parses it");
        let stub = Btf::parse(blob).expect("a well-formed BTF");
        assert_eq!(stub.type_count(), real.type_count());
        for (name, kind) in [
            ("btf_trace_mark_victim", Kind::Typedef),
            ("oom_kill_process", Kind::Func),
        ] {
            let id = real.type_id(name, kind).expect("in the kernel");
            assert_eq!(stub.type_id(name, kind), Some(id), "{name}");
        }
        assert_eq!(stub.type_id("not_in_this_kernel", Kind::Func), None);
    }
}
