//! Builds the eBPF object (`oomtrace-ebpf`) with aya-build, on the nightly
//! toolchain with `-Z build-std=core`. `cargo xtask setup` installs what it needs.
//!
//! With `AYA_BUILD_SKIP=1` no object is built and an empty one is written in
//! its place: the agent then builds (for unit tests of pure logic) and says at
//! run time that it has no eBPF programs.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR not set")?).join("oomtrace");
        fs::write(&out, b"").with_context(|| format!("writing {}", out.display()))?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "oomtrace-ebpf")
        .ok_or_else(|| anyhow!("oomtrace-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("oomtrace-ebpf manifest has no parent directory"))?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
