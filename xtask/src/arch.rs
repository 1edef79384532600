//! The CPU architectures oomtrace ships for (amd64, arm64): the static musl
//! build of the agent for each, cross compiled when the host is the other
//! one, and the checks that a binary really is one: its ELF machine, no
//! program interpreter, and an embedded eBPF object built for that
//! architecture.
//!
//! The eBPF bytecode is the same on every architecture except where a
//! program reads the kernel's `struct pt_regs`: aya-ebpf's kprobe arguments
//! come from `regs->di`, `regs->si`, ... on x86_64 and from `regs->regs[n]`
//! on arm64, chosen by the `bpf_target_arch` cfg that oomtrace/build.rs sets from the
//! userspace target (`CARGO_CFG_TARGET_ARCH`). [`check_agent`] reads the
//! offset the embedded kprobe programs load their first argument from.

use std::{
    env, fmt, fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{
    cmd, util,
    vm::elf::{self, Elf},
};

/// A CPU architecture, named as Debian and OCI name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Arch {
    /// x86_64.
    #[value(name = "amd64", alias = "x86_64")]
    Amd64,
    /// aarch64.
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The architecture xtask itself runs on.
    pub fn host() -> Option<Self> {
        match env::consts::ARCH {
            "x86_64" => Some(Self::Amd64),
            "aarch64" => Some(Self::Arm64),
            _ => None,
        }
    }

    /// The Debian and OCI name (`amd64`, `arm64`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The static Rust target of the agent.
    pub fn musl_target(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-unknown-linux-musl",
            Self::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    fn elf_machine(self) -> u16 {
        match self {
            Self::Amd64 => elf::EM_X86_64,
            Self::Arm64 => elf::EM_AARCH64,
        }
    }

    /// The prefix of Debian's cross gcc for this architecture
    /// (packages gcc-x86-64-linux-gnu, gcc-aarch64-linux-gnu).
    fn gnu_triplet(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-linux-gnu",
            Self::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The Debian package of that cross gcc.
    pub fn cross_gcc_package(self) -> &'static str {
        match self {
            Self::Amd64 => "gcc-x86-64-linux-gnu",
            Self::Arm64 => "gcc-aarch64-linux-gnu",
        }
    }

    /// Where the kernel's `struct pt_regs` keeps a function's first
    /// argument: x86_64 `di`, the 15th 8-byte word
    /// (arch/x86/include/asm/ptrace.h); arm64 `regs[0]`
    /// (arch/arm64/include/asm/ptrace.h).
    fn pt_regs_arg0_offset(self) -> i16 {
        match self {
            Self::Amd64 => 112,
            Self::Arm64 => 0,
        }
    }

    fn from_pt_regs_arg0_offset(offset: i16) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.pt_regs_arg0_offset() == offset)
    }
}

/// `cargo SUBCOMMAND --target <musl target>...` in the workspace, for one or
/// more architectures in one cargo run. For another architecture than the
/// host's, C code (ring's) is compiled and the agent linked with Debian's
/// cross gcc (installed by `cargo xtask setup`); Rust's musl targets bring
/// their own C library, so the glibc cross compiler links a fully static
/// binary. Variables already set win.
pub fn cargo(arches: &[Arch], subcommand: &str) -> Command {
    let mut c = cmd!("cargo", subcommand);
    c.current_dir(util::repo_root());
    for &arch in arches {
        let target = arch.musl_target();
        c.args(["--target", target]);
        if Arch::host() == Some(arch) {
            continue;
        }
        let t = target.replace('-', "_");
        let gcc = format!("{}-gcc", arch.gnu_triplet());
        for (key, value) in [
            (format!("CC_{t}"), gcc.clone()),
            (format!("AR_{t}"), format!("{}-ar", arch.gnu_triplet())),
            (
                format!("CARGO_TARGET_{}_LINKER", t.to_ascii_uppercase()),
                gcc,
            ),
        ] {
            if env::var_os(&key).is_none() {
                c.env(key, value);
            }
        }
    }
    c
}

/// The Cargo profile of the static binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// `release`: what `cargo xtask image` publishes.
    Release,
    /// `test-image`: `release` at opt-level 1, what `cargo xtask test` builds
    /// for the image test and the arm64 VM (defined here, with `--config`).
    TestImage,
}

impl Profile {
    /// The profile's name: the directory under `target/<triple>/`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::TestImage => "test-image",
        }
    }

    /// The arguments that select (and for `test-image` define) it.
    fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Self::Release => &["--release"],
            // The same code as `release` (no debug assertions, no debug
            // info), optimised less: measured on 2 cores, a cold static
            // arm64 build takes about half the CPU of `release`.
            Self::TestImage => &[
                "--config",
                "profile.test-image.inherits=\"release\"",
                "--config",
                "profile.test-image.opt-level=1",
                "--profile",
                "test-image",
            ],
        }
    }
}

/// What [`build_static`] built for one architecture.
#[derive(Debug, Clone)]
pub struct StaticBuild {
    /// The static agent, `target/<musl target>/<profile>/oomtrace`.
    pub agent: PathBuf,
    /// The compiled tests/vm.rs, whose `CARGO_BIN_EXE_oomtrace` is `agent`.
    pub vm_tests: PathBuf,
}

/// Builds the static agent and, in the same cargo run, the VM test binary
/// (tests/vm.rs) for every architecture of `arches`, in one cargo run: one
/// feature resolution (a separate `cargo test` would add the
/// dev-dependencies' features, change every shared crate's hash and build
/// everything a second time), the build scripts and proc-macros built once,
/// and both cores busy while one target's last crates compile. So the agent
/// in the image is the very binary the arm64 VM tests run. Returns the
/// builds in the order of `arches`.
pub fn build_static(arches: &[Arch], profile: Profile) -> anyhow::Result<Vec<(Arch, StaticBuild)>> {
    let mut c = cargo(arches, "build");
    c.args(profile.cargo_args()).args([
        "--package",
        "oomtrace",
        "--bin",
        "oomtrace",
        "--test",
        "vm",
        "--message-format=json-render-diagnostics",
    ]);
    let shown = util::display(&c);
    eprintln!("$ {shown}");
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut artifacts = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's messages")?;
        if let Some(a) = artifact(&line) {
            artifacts.push(a);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        let cross: Vec<Arch> = arches
            .iter()
            .copied()
            .filter(|&a| Arch::host() != Some(a))
            .collect();
        let hint = if cross.is_empty() {
            String::new()
        } else {
            format!(
                " (cross compiling needs `rustup target add {}` and Debian's {}: `cargo xtask setup` installs both)",
                cross
                    .iter()
                    .map(|a| a.musl_target())
                    .collect::<Vec<_>>()
                    .join(" "),
                cross
                    .iter()
                    .map(|a| a.cross_gcc_package())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        bail!("`{shown}` failed ({}){hint}", util::describe(status));
    }
    arches
        .iter()
        .map(|&arch| {
            let find = |name: &str, test: bool| {
                artifacts
                    .iter()
                    .find(|(n, t, exe)| n == name && *t == test && built_for(exe, arch, profile))
                    .map(|(_, _, exe)| exe.clone())
            };
            Ok((
                arch,
                StaticBuild {
                    agent: find("oomtrace", false)
                        .with_context(|| format!("cargo reported no {arch} oomtrace binary"))?,
                    vm_tests: find("vm", true)
                        .with_context(|| format!("cargo reported no {arch} tests/vm.rs binary"))?,
                },
            ))
        })
        .collect()
}

/// Whether an executable lies in `<target dir>/<arch's musl target>/<profile>/`.
fn built_for(exe: &Path, arch: Arch, profile: Profile) -> bool {
    let mut dirs = exe.ancestors().skip(1).map(Path::file_name);
    // `deps/` holds the test binaries.
    let first = dirs.next().flatten();
    let (p, t) = if first == Some(std::ffi::OsStr::new("deps")) {
        (dirs.next().flatten(), dirs.next().flatten())
    } else {
        (first, dirs.next().flatten())
    };
    p == Some(profile.name().as_ref()) && t == Some(arch.musl_target().as_ref())
}

/// (target name, is a test, executable) of a `compiler-artifact` message.
fn artifact(line: &str) -> Option<(String, bool, PathBuf)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" {
        return None;
    }
    let exe = PathBuf::from(v["executable"].as_str()?);
    let name = v["target"]["name"].as_str()?.to_owned();
    let test = v["profile"]["test"].as_bool().unwrap_or(false);
    Some((name, test, exe))
}

/// What [`check_agent`] found.
#[derive(Debug)]
pub struct AgentFacts {
    pub bytes: u64,
    pub ebpf_bytes: usize,
    /// The kprobe programs checked, each loading its first argument from
    /// this architecture's place in `struct pt_regs`.
    pub kprobes: Vec<String>,
}

/// Checks that `path` is a static agent for `arch` carrying an eBPF object
/// built for `arch`.
pub fn check_agent(arch: Arch, path: &Path) -> anyhow::Result<AgentFacts> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let exe = Elf::parse(&data).with_context(|| format!("parsing {}", path.display()))?;
    if exe.machine() != arch.elf_machine() {
        bail!(
            "{} is an ELF for machine {}, not {arch} ({}): build it with --target {}",
            path.display(),
            exe.machine(),
            arch.elf_machine(),
            arch.musl_target()
        );
    }
    if let Some(interp) = exe.interp() {
        bail!(
            "{} is dynamically linked (interpreter {interp}): the image has no C library; build it \
             with --target {}",
            path.display(),
            arch.musl_target()
        );
    }
    let object = embedded_ebpf(&data).with_context(|| {
        format!(
            "{} embeds no eBPF object (was it built with AYA_BUILD_SKIP=1?)",
            path.display()
        )
    })?;
    let kprobes = check_ebpf_arch(arch, object)
        .with_context(|| format!("the eBPF object in {}", path.display()))?;
    Ok(AgentFacts {
        bytes: data.len() as u64,
        ebpf_bytes: object.len(),
        kprobes,
    })
}

/// Checks that an eBPF object's kprobe programs read their arguments where
/// `arch` keeps them; returns the programs' names.
fn check_ebpf_arch(arch: Arch, object: &[u8]) -> anyhow::Result<Vec<String>> {
    let kprobes = kprobe_arg0_offsets(object)?;
    if kprobes.is_empty() {
        bail!("it has no kprobe program to tell its architecture by");
    }
    for (name, offset) in &kprobes {
        if *offset != arch.pt_regs_arg0_offset() {
            let layout = Arch::from_pt_regs_arg0_offset(*offset)
                .map(|a| format!("{a}'s layout"))
                .unwrap_or_else(|| "no known layout".to_owned());
            bail!(
                "it was built for the wrong architecture: its kprobe program {name} reads its \
                 first argument at pt_regs offset {offset} ({layout}), where {arch} keeps it at \
                 {}; oomtrace/build.rs sets bpf_target_arch from the userspace target, so build the agent \
                 with --target {}",
                arch.pt_regs_arg0_offset(),
                arch.musl_target()
            );
        }
    }
    Ok(kprobes.into_iter().map(|(n, _)| n).collect())
}

/// The eBPF object (an ELF file for EM_BPF) embedded in an agent binary.
fn embedded_ebpf(data: &[u8]) -> Option<&[u8]> {
    let mut from = 1;
    while let Some(pos) = data.get(from..)?.windows(4).position(|w| w == b"\x7fELF") {
        let at = from + pos;
        let rest = &data[at..];
        let machine = rest.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if machine == Some(elf::EM_BPF)
            && let Ok(object) = Elf::parse(rest)
        {
            return Some(&rest[..object.file_size()]);
        }
        from = at + 1;
    }
    None
}

/// For every program in the object's `kprobe` section, the `struct pt_regs`
/// offset its first instruction loads from the context (`r1`).
fn kprobe_arg0_offsets(object: &[u8]) -> anyhow::Result<Vec<(String, i16)>> {
    /// BPF_LDX | BPF_MEM | BPF_DW: `dst = *(u64 *)(src + off)`.
    const LDX_DW: u8 = 0x79;
    let elf = Elf::parse(object).context("parsing the embedded eBPF object")?;
    let mut out = Vec::new();
    for (name, code) in elf.functions_in("kprobe")? {
        match code.get(..8) {
            Some(insn) if insn[0] == LDX_DW && insn[1] >> 4 == 1 => {
                out.push((name, i16::from_le_bytes([insn[2], insn[3]])));
            }
            _ => bail!(
                "the kprobe program {name} does not start by reading an argument from its context \
                 (first instruction {:02x?}): cannot tell which architecture it was built for",
                code.get(..8).unwrap_or(code)
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_builds_get_debians_cross_gcc() {
        let other = match Arch::host() {
            Some(Arch::Amd64) => Arch::Arm64,
            Some(Arch::Arm64) => Arch::Amd64,
            None => return,
        };
        let c = cargo(&[other], "build");
        let envs: Vec<(String, String)> = c
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
            .collect();
        let t = other.musl_target().replace('-', "_");
        let linker = format!("CARGO_TARGET_{}_LINKER", t.to_ascii_uppercase());
        if env::var_os(&linker).is_none() {
            assert!(
                envs.iter()
                    .any(|(k, v)| *k == linker && v.ends_with("-linux-gnu-gcc")),
                "{envs:?}"
            );
        }
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["build", "--target", other.musl_target()]);
    }

    /// The `kprobe` section and symbols of the eBPF object that oomtrace's
    /// build.rs made for each architecture (bpf_target_arch from
    /// the userspace target), cut out of the real objects with
    /// `llvm-objcopy --only-section=kprobe --only-section=.symtab
    /// --only-section=.strtab --strip-debug`.
    const KPROBES_AMD64: &[u8] = include_bytes!("testdata/ebpf-kprobe-amd64.o");
    const KPROBES_ARM64: &[u8] = include_bytes!("testdata/ebpf-kprobe-arm64.o");

    #[test]
    fn kprobe_programs_tell_the_architecture_they_were_built_for() {
        let names = ["kprobe_oom_kill_memcg_member", "kprobe_oom_kill_process"];
        let amd64 = kprobe_arg0_offsets(KPROBES_AMD64).expect("amd64 object");
        assert_eq!(amd64, names.map(|n| (n.to_owned(), 112)));
        let arm64 = kprobe_arg0_offsets(KPROBES_ARM64).expect("arm64 object");
        assert_eq!(arm64, names.map(|n| (n.to_owned(), 0)));

        assert_eq!(
            check_ebpf_arch(Arch::Amd64, KPROBES_AMD64).expect("ok"),
            names
        );
        assert_eq!(
            check_ebpf_arch(Arch::Arm64, KPROBES_ARM64).expect("ok"),
            names
        );
        let wrong = check_ebpf_arch(Arch::Arm64, KPROBES_AMD64).expect_err("x86 object for arm64");
        let wrong = format!("{wrong:#}");
        assert!(
            wrong.contains("offset 112 (amd64's layout)")
                && wrong.contains("aarch64-unknown-linux-musl"),
            "{wrong}"
        );
        assert!(check_ebpf_arch(Arch::Amd64, KPROBES_ARM64).is_err());
    }

    #[test]
    fn finds_the_ebpf_object_inside_a_binary() {
        // An executable's own ELF header comes first; the object follows.
        let mut binary = b"\x7fELF\x02\x01\x01\0host executable bytes".to_vec();
        binary.extend_from_slice(KPROBES_ARM64);
        binary.extend_from_slice(b"more code");
        let object = embedded_ebpf(&binary).expect("found");
        assert_eq!(object, KPROBES_ARM64);
        assert_eq!(embedded_ebpf(b"\x7fELF no object here"), None);
    }

    #[test]
    fn both_architectures_build_in_one_cargo_run() {
        let c = cargo(&Arch::ALL, "build");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(
            args,
            [
                "build",
                "--target",
                "x86_64-unknown-linux-musl",
                "--target",
                "aarch64-unknown-linux-musl"
            ]
        );
        // Only the other architecture gets the cross compiler.
        let cross: Vec<String> = c
            .get_envs()
            .filter_map(|(k, _)| Some(k.to_str()?.to_owned()))
            .filter(|k| k.starts_with("CC_"))
            .collect();
        if Arch::host() == Some(Arch::Amd64)
            && env::var_os("CC_aarch64_unknown_linux_musl").is_none()
        {
            assert_eq!(cross, ["CC_aarch64_unknown_linux_musl"]);
        }
    }

    #[test]
    fn artifacts_are_told_apart_by_target_and_profile() {
        // Paths of `cargo build --target x86_64-unknown-linux-musl --target
        // aarch64-unknown-linux-musl --profile test-image` (cargo 1.95).
        let agent = Path::new("/w/target/aarch64-unknown-linux-musl/test-image/oomtrace");
        let test = Path::new("/w/target/x86_64-unknown-linux-musl/test-image/deps/vm-5b1e0c7d");
        assert!(built_for(agent, Arch::Arm64, Profile::TestImage));
        assert!(!built_for(agent, Arch::Amd64, Profile::TestImage));
        assert!(!built_for(agent, Arch::Arm64, Profile::Release));
        assert!(built_for(test, Arch::Amd64, Profile::TestImage));
        assert!(!built_for(test, Arch::Arm64, Profile::TestImage));
        assert!(built_for(
            Path::new("/w/target/x86_64-unknown-linux-musl/release/oomtrace"),
            Arch::Amd64,
            Profile::Release
        ));
        assert_eq!(Profile::TestImage.name(), "test-image");
        assert!(
            Profile::TestImage
                .cargo_args()
                .ends_with(&["--profile", "test-image"])
        );
    }

    #[test]
    fn cargo_artifact_messages() {
        // Two lines of `cargo build --message-format=json-render-diagnostics`
        // (cargo 1.95), shortened to the fields read.
        let bin = r#"{"reason":"compiler-artifact","package_id":"path+file:///work/oomtrace#0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"oomtrace","src_path":"/work/oomtrace/src/main.rs","test":true},"profile":{"opt_level":"3","debuginfo":0,"test":false},"features":[],"filenames":["/work/target/aarch64-unknown-linux-musl/release/oomtrace"],"executable":"/work/target/aarch64-unknown-linux-musl/release/oomtrace","fresh":true}"#;
        let test = r#"{"reason":"compiler-artifact","package_id":"path+file:///work/oomtrace#0.1.0","target":{"kind":["test"],"crate_types":["bin"],"name":"vm","src_path":"/work/oomtrace/tests/vm.rs","test":true},"profile":{"opt_level":"3","debuginfo":0,"test":true},"features":[],"filenames":["/work/target/aarch64-unknown-linux-musl/release/deps/vm-0f3e2a"],"executable":"/work/target/aarch64-unknown-linux-musl/release/deps/vm-0f3e2a","fresh":false}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"oomtrace"},"profile":{"test":false},"filenames":["/x/liboomtrace.rlib"],"executable":null}"#;
        assert_eq!(
            artifact(bin),
            Some((
                "oomtrace".to_owned(),
                false,
                PathBuf::from("/work/target/aarch64-unknown-linux-musl/release/oomtrace")
            ))
        );
        assert_eq!(
            artifact(test).map(|(n, t, _)| (n, t)),
            Some(("vm".to_owned(), true))
        );
        assert_eq!(artifact(lib), None);
        assert_eq!(
            artifact(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }
}
