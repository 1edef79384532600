//! What the fuzz targets share: a structured BTF generator (type graphs with
//! cycles, dangling references and extreme sizes, encoded as btf.rst lays
//! them out), the BTF queries the agent makes, the text helpers, and
//! [`stack_overflow_is_a_crash`].

use arbitrary::{Arbitrary, Unstructured};
use oomtrace::capture::btf::Btf;

// BTF kind numbers, from include/uapi/linux/btf.h.
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// Names the agent looks up (struct, member, enum, typedef and function
/// names), so that generated graphs meet its queries.
pub const NAMES: &[&str] = &[
    "",
    "task_struct",
    "pid",
    "tgid",
    "comm",
    "cgroups",
    "signal",
    "real_cred",
    "cred",
    "uid",
    "signal_struct",
    "oom_score_adj",
    "css_set",
    "subsys",
    "cgroup_subsys_state",
    "cgroup",
    "parent",
    "kn",
    "kernfs_node",
    "name",
    "id",
    "mem_cgroup",
    "css",
    "memory",
    "usage",
    "max",
    "oom_control",
    "memcg",
    "gfp_mask",
    "order",
    "totalpages",
    "chosen",
    "chosen_points",
    "constraint",
    "cgroup_subsys_id",
    "memory_cgrp_id",
    "btf_trace_mark_victim",
    "oom_kill_process",
    "oom_kill_memcg_member",
    "uid_t",
    "long int",
];

/// An index into [`NAMES`], anonymous a third of the time.
#[derive(Debug, Clone, Copy)]
pub struct Name(usize);

impl<'a> Arbitrary<'a> for Name {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(if u.ratio(1, 3)? {
            0
        } else {
            u.choose_index(NAMES.len())?
        }))
    }
}

impl Name {
    pub fn as_str(self) -> &'static str {
        NAMES[self.0 % NAMES.len()]
    }
}

/// A type id: mostly among the generated types (so references form graphs,
/// cycles included), sometimes void or far past the end.
#[derive(Debug, Clone, Copy)]
pub struct Ref(u32);

impl<'a> Arbitrary<'a> for Ref {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(if u.ratio(1, 16)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0..=40)?
        }))
    }
}

/// A u32 that is often one of the values that break arithmetic.
#[derive(Debug, Clone, Copy)]
pub struct Word(u32);

impl<'a> Arbitrary<'a> for Word {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const EDGES: [u32; 12] = [
            0,
            1,
            4,
            8,
            16,
            64,
            96,
            0x00ff_ffff,
            0x2000_0000,
            0x8000_0000,
            0xffff_ff00,
            u32::MAX,
        ];
        Ok(Self(if u.ratio(3, 4)? {
            EDGES[u.choose_index(EDGES.len())?]
        } else {
            u.arbitrary()?
        }))
    }
}

/// One member of a struct or union.
#[derive(Debug, Clone, Arbitrary)]
pub struct Member {
    pub name: Name,
    pub ty: Ref,
    /// Bit offset (the low 24 bits with a kind_flag, the width in the top 8).
    pub offset: Word,
}

/// One type of a generated graph.
#[derive(Debug, Clone, Arbitrary)]
pub enum Type {
    Int {
        name: Name,
        size: Word,
        encoding: Word,
    },
    Ptr(Ref),
    Typedef(Name, Ref),
    Modifier {
        kind: u8,
        ty: Ref,
    },
    Array {
        elem: Ref,
        index: Ref,
        len: Word,
    },
    Composite {
        union: bool,
        name: Name,
        size: Word,
        kflag: bool,
        members: Vec<Member>,
    },
    Enum {
        name: Name,
        signed: bool,
        values: Vec<(Name, i32)>,
    },
    Enum64 {
        name: Name,
        signed: bool,
        values: Vec<(Name, u64)>,
    },
    Fwd(Name, bool),
    Func(Name, Ref),
    Proto {
        ret: Ref,
        params: Vec<Ref>,
    },
    Var(Name, Ref),
    Datasec {
        name: Name,
        vars: Vec<(Ref, Word, Word)>,
    },
    Float(Name, Word),
    DeclTag {
        name: Name,
        ty: Ref,
        component: Word,
    },
    /// A kind this reader does not know: the layout section must describe it.
    Unknown {
        kind: u8,
        vlen: u8,
        extra: Vec<u32>,
    },
}

/// A whole generated blob: types, how the header is laid out, and bytes to
/// corrupt after encoding.
#[derive(Debug, Clone, Arbitrary)]
pub struct Graph {
    pub types: Vec<Type>,
    /// Use the 32-byte header with a layout section (newer kernels).
    pub layout: bool,
    /// (position, xor) applied to the encoded blob.
    pub flips: Vec<(u16, u8)>,
    /// Cut the blob to this length (modulo its size) when set.
    pub truncate: Option<u16>,
}

#[derive(Default)]
struct Enc {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Enc {
    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn header(&mut self, name: &str, kind: u32, kflag: bool, vlen: usize, size_or_type: u32) {
        let name_off = self.string(name);
        let vlen = vlen.min(0xffff) as u32;
        let info = (u32::from(kflag) << 31) | ((kind & 0x1f) << 24) | vlen;
        self.words(&[name_off, info, size_or_type]);
    }
}

impl Graph {
    /// The raw BTF blob, laid out as `Documentation/bpf/btf.rst` says.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc {
            strings: vec![0],
            ..Enc::default()
        };
        for t in &self.types {
            match t {
                Type::Int {
                    name,
                    size,
                    encoding,
                } => {
                    e.header(name.as_str(), INT, false, 0, size.0);
                    e.words(&[encoding.0]);
                }
                Type::Ptr(r) => e.header("", PTR, false, 0, r.0),
                Type::Typedef(n, r) => e.header(n.as_str(), TYPEDEF, false, 0, r.0),
                Type::Modifier { kind, ty } => {
                    let kind = [VOLATILE, CONST, RESTRICT, TYPE_TAG][usize::from(*kind) % 4];
                    let name = if kind == TYPE_TAG { "rcu" } else { "" };
                    e.header(name, kind, false, 0, ty.0);
                }
                Type::Array { elem, index, len } => {
                    e.header("", ARRAY, false, 0, 0);
                    e.words(&[elem.0, index.0, len.0]);
                }
                Type::Composite {
                    union,
                    name,
                    size,
                    kflag,
                    members,
                } => {
                    let kind = if *union { UNION } else { STRUCT };
                    e.header(name.as_str(), kind, *kflag, members.len(), size.0);
                    for m in members.iter().take(0xffff) {
                        let name = e.string(m.name.as_str());
                        e.words(&[name, m.ty.0, m.offset.0]);
                    }
                }
                Type::Enum {
                    name,
                    signed,
                    values,
                } => {
                    e.header(name.as_str(), ENUM, *signed, values.len(), 4);
                    for (n, v) in values.iter().take(0xffff) {
                        let name = e.string(n.as_str());
                        e.words(&[name, *v as u32]);
                    }
                }
                Type::Enum64 {
                    name,
                    signed,
                    values,
                } => {
                    e.header(name.as_str(), ENUM64, *signed, values.len(), 8);
                    for (n, v) in values.iter().take(0xffff) {
                        let name = e.string(n.as_str());
                        e.words(&[name, *v as u32, (*v >> 32) as u32]);
                    }
                }
                Type::Fwd(n, union) => e.header(n.as_str(), FWD, *union, 0, 0),
                Type::Func(n, r) => e.header(n.as_str(), FUNC, false, 1, r.0),
                Type::Proto { ret, params } => {
                    e.header("", FUNC_PROTO, false, params.len(), ret.0);
                    for p in params.iter().take(0xffff) {
                        e.words(&[0, p.0]);
                    }
                }
                Type::Var(n, r) => {
                    e.header(n.as_str(), VAR, false, 0, r.0);
                    e.words(&[1]);
                }
                Type::Datasec { name, vars } => {
                    e.header(name.as_str(), DATASEC, false, vars.len(), 64);
                    for (r, off, size) in vars.iter().take(0xffff) {
                        e.words(&[r.0, off.0, size.0]);
                    }
                }
                Type::Float(n, size) => e.header(n.as_str(), FLOAT, false, 0, size.0),
                Type::DeclTag {
                    name,
                    ty,
                    component,
                } => {
                    e.header(name.as_str(), DECL_TAG, false, 0, ty.0);
                    e.words(&[component.0]);
                }
                Type::Unknown { kind, vlen, extra } => {
                    // Kinds 20..=31: newer than the reader.
                    let kind = 20 + u32::from(*kind) % 12;
                    e.header("", kind, false, usize::from(*vlen), 0);
                    let words: Vec<u32> = extra.iter().copied().take(64).collect();
                    e.words(&words);
                }
            }
        }
        let layout: Vec<u8> = if self.layout {
            // One {info_sz, elem_sz, flags} per kind up to 31, as a newer
            // encoder would describe them (the unknown ones: 4 + 8 * vlen).
            (0..32_u8)
                .flat_map(|k| {
                    let (info, elem) = if k >= 20 { (4, 8) } else { (0, 0) };
                    [info, elem, 0, 0]
                })
                .collect()
        } else {
            Vec::new()
        };
        let hdr_len: u32 = if self.layout { 32 } else { 24 };
        let type_len = e.types.len() as u32;
        let str_len = e.strings.len() as u32;
        let mut out = Vec::with_capacity(32 + e.types.len() + e.strings.len() + layout.len());
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [hdr_len, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        if self.layout {
            out.extend_from_slice(&(type_len + str_len).to_le_bytes());
            out.extend_from_slice(&(layout.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(&e.types);
        out.extend_from_slice(&e.strings);
        out.extend_from_slice(&layout);
        if !out.is_empty() {
            for &(at, x) in &self.flips {
                let i = usize::from(at) % out.len();
                out[i] ^= x;
            }
        }
        if let Some(n) = self.truncate {
            out.truncate(usize::from(n) % (out.len() + 1));
        }
        out
    }

    /// Every (struct name, member path) the graph holds, one and two members deep.
    pub fn member_paths(&self) -> Vec<(&'static str, String)> {
        let members: Vec<&'static str> = self
            .types
            .iter()
            .flat_map(|t| match t {
                Type::Composite { members, .. } => {
                    members.iter().map(|m| m.name.as_str()).collect()
                }
                _ => Vec::new(),
            })
            .take(32)
            .collect();
        let mut out = Vec::new();
        for t in &self.types {
            let Type::Composite {
                name, members: own, ..
            } = t
            else {
                continue;
            };
            for m in own.iter().take(8) {
                let first = m.name.as_str();
                out.push((name.as_str(), first.to_owned()));
                for second in &members {
                    out.push((name.as_str(), format!("{first}.{second}")));
                }
            }
        }
        out
    }
}

/// Every query the agent makes of the kernel's BTF (the offsets of
/// `oomtrace::capture::offsets::resolve`, the tracepoint ABI, the hooks' functions)
/// and the size queries.
pub fn query_all(btf: &Btf) {
    let _ = oomtrace::capture::offsets::resolve(btf);
    let _ = btf.tracepoint_args("mark_victim");
    let _ = btf.has_func("oom_kill_process");
    let _ = btf.has_func("oom_kill_memcg_member");
    let _ = btf.pointer_size();
    let _ = btf.type_count();
    for (s, m) in [
        ("task_struct", "comm"),
        ("task_struct", "cgroups"),
        ("css_set", "subsys"),
        ("mem_cgroup", "memory.usage"),
        ("kernfs_node", "id"),
    ] {
        let _ = btf.member_type_size(s, m);
        let _ = btf.member_array(s, m);
    }
    for s in [
        "task_struct",
        "mem_cgroup",
        "oom_control",
        "cgroup",
        "css_set",
    ] {
        let _ = btf.struct_size(s);
    }
    let _ = btf.enum_value("cgroup_subsys_id", "memory_cgrp_id");
}

/// Runs [`query_all`] and every member path of `graph` on `btf`.
pub fn query_graph(btf: &Btf, graph: &Graph) {
    query_all(btf);
    for (s, path) in graph.member_paths() {
        let _ = btf.member_offset(s, &path);
        let _ = btf.member_type_size(s, &path);
        let _ = btf.member_array(s, &path);
        let _ = btf.struct_size(s);
    }
}

/// The message of a dmesg or syslog line (`... kernel: [ 1.2][ T3] msg`), as
/// the kernel-log samples in `oomtrace/tests/data/kmsg` hold them.
pub fn dmesg_message(line: &str) -> &str {
    let mut s = line
        .split_once("kernel: ")
        .map_or(line, |(_, m)| m)
        .trim_start();
    for _ in 0..2 {
        if s.starts_with('[') {
            s = s.split_once("] ").map_or(s, |(_, m)| m);
        }
    }
    s
}

/// What `mangle()` in fs/proc_namespace.c writes in /proc/mounts for a path.
pub fn mangle_mount_path(path: &[u8]) -> String {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes a stack overflow a crash that libFuzzer records with its input.
///
/// Built without a sanitizer, a fuzz target has neither Rust's stack-overflow
/// handler (libFuzzer's `main` runs it, not Rust's) nor ASan's: unbounded
/// recursion faults on the guard page, libFuzzer's own SIGSEGV handler faults
/// again on the exhausted stack, and the process dies without saving the
/// input. This installs, once, a SIGSEGV handler on an alternate stack that
/// calls `abort()`; libFuzzer's SIGABRT handler then saves the input as a
/// `crash-` artifact. Called from the first run of each target (after
/// libFuzzer has installed its handlers, so this one replaces its SIGSEGV
/// handler).
pub fn stack_overflow_is_a_crash() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        const ALT_STACK: usize = 256 << 10;
        // SAFETY: plain syscalls. The mapping is leaked on purpose: the
        // alternate stack must live as long as the process.
        unsafe {
            let stack = libc::mmap(
                std::ptr::null_mut(),
                ALT_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert!(
                stack != libc::MAP_FAILED,
                "mmap of the alternate signal stack failed"
            );
            let alt = libc::stack_t {
                ss_sp: stack,
                ss_flags: 0,
                ss_size: ALT_STACK,
            };
            assert_eq!(
                libc::sigaltstack(&alt, std::ptr::null_mut()),
                0,
                "sigaltstack failed"
            );
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_segv as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_ONSTACK | libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut()),
                0,
                "sigaction(SIGSEGV) failed"
            );
        }
    });
}

extern "C" fn on_segv(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    const MSG: &[u8] = b"SIGSEGV (a stack overflow: unbounded recursion?): aborting so that libFuzzer saves the input\n";
    // SAFETY: write(2) and abort(3) are async-signal-safe.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::abort();
    }
}
