//! Builds the eBPF object (`oomtrace-ebpf`) on the nightly toolchain with
//! `-Z build-std=core`, the way aya-build does, but quietly: aya-build replays
//! every line of the nested build as a `cargo:warning`, some 40 "Compiling"
//! lines on every build that a newcomer reads as problems. Here the nested
//! build's output goes to this script's own output, which cargo shows when
//! the build fails or with `-vv`; `OOMTRACE_BUILD_VERBOSE=1` (set by
//! `cargo xtask build -v` and `run -v`) shows it as warnings again.
//! `cargo xtask setup` installs what it needs.
//!
//! With `AYA_BUILD_SKIP=1` no object is built and an empty one is written in
//! its place: the agent then builds (for unit tests of pure logic) and says at
//! run time that it has no eBPF programs.

use std::{
    env,
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, Message};

const EBPF_PACKAGE: &str = "oomtrace-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=OOMTRACE_BUILD_VERBOSE");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = out_dir.join("oomtrace");
        fs::write(&out, b"").with_context(|| format!("writing {}", out.display()))?;
        return Ok(());
    }
    let verbose = env::var("OOMTRACE_BUILD_VERBOSE").is_ok_and(|v| v == "1");
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} manifest has no parent directory"))?;
    // The build-dependency on the eBPF crate reruns this script when its
    // library changes; this covers its binary.
    println!("cargo:rerun-if-changed={root_dir}");
    build(&out_dir, verbose)
}

/// `rustup run nightly cargo build` of the eBPF binary for bpfel/bpfeb,
/// for the architecture this agent is built for (kprobe arguments are read
/// from that architecture's `pt_regs`).
fn build(out_dir: &std::path::Path, verbose: bool) -> anyhow::Result<()> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endianness {other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64".to_string()
    } else {
        arch
    };
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        EBPF_PACKAGE,
    ])
    .args([
        "--bins",
        "--message-format=json",
        "--release",
        "--target",
        target,
    ])
    .args(["-Z", "build-std=core", "--target-dir"])
    .arg(&target_dir);
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The nightly's own rustc, not the one running this build.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS"] {
        cmd.env_remove(key);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `rustup run nightly cargo`: run `cargo xtask setup`")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let echo = move |line: &str| {
        if verbose {
            println!("cargo:warning={line}");
        } else {
            eprintln!("{line}");
        }
    };
    let stderr = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            echo(&line);
        }
    });
    let stdout = child.stdout.take().context("no stdout")?;
    let mut executables = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        match message.context("the eBPF build's cargo printed invalid JSON")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(exe),
                target,
                ..
            }) => executables.push((target.name, exe.into_std_path_buf())),
            Message::CompilerMessage(m) => {
                for line in m.message.rendered.unwrap_or_default().lines() {
                    echo(line);
                }
            }
            Message::TextLine(line) => echo(&line),
            _ => {}
        }
    }
    let status = child.wait().context("waiting for the eBPF build")?;
    let _ = stderr.join();
    if !status.success() {
        bail!(
            "the eBPF build failed ({status}); its output is above. Run `cargo xtask setup` if the nightly toolchain, rust-src or bpf-linker is missing"
        );
    }
    for (name, exe) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&exe, &dst)
            .with_context(|| format!("copying {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}
