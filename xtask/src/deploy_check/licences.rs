//! The licence check: `cargo deny check licenses` with the policy in
//! deny.toml (the crates must allow use under MIT OR Apache-2.0). Offline:
//! the licence check needs only the lock file and the crates' sources;
//! advisories (which need a database download) are not checked.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

pub fn check(repo_root: &Path) -> anyhow::Result<()> {
    let out = Command::new("cargo")
        .args(["deny", "--offline", "check", "licenses"])
        .current_dir(repo_root)
        .output()
        .context("running cargo deny")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("no such command") {
            bail!("cargo-deny is not installed: run `cargo xtask setup`");
        }
        bail!(
            "cargo deny check licenses failed: a dependency's licence is not allowed by deny.toml \
             (review it, then list it there with the reason):\n{}",
            stderr.trim()
        );
    }
    let summary = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("licenses"))
        .unwrap_or("licenses ok");
    println!(
        "deploy-check: cargo deny check licenses: {}",
        summary.trim()
    );
    Ok(())
}
