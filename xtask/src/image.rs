//! `cargo xtask image`: the container image, for amd64 and arm64.
//!
//! For each architecture: the static musl agent ([`arch::build_static`],
//! all architectures in one cargo run, cross compiled for the other
//! architecture; `--profile release` unless told otherwise), checked to be static, of
//! that architecture and carrying an eBPF object built for it
//! ([`arch::check_agent`]); then an image from the repository's `Dockerfile`
//! with podman, tagged `<tag>-<arch>`; then a manifest list `<tag>` holding
//! them all, checked with `podman manifest inspect`. Nothing is pulled or
//! pushed: the Dockerfile starts `FROM scratch`, and the build runs with
//! `--network none`.

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};

use crate::{
    arch::{self, Arch, Profile},
    cmd, setup, util,
};

/// The published name of the multi-arch image (deploy/ refers to it).
pub const DEFAULT_TAG: &str = concat!("ghcr.io/oomtrace/oomtrace:", env!("CARGO_PKG_VERSION"));

/// `cargo xtask image [--arch amd64,arm64] [--tag NAME]`
#[derive(Debug, Clone, clap::Args)]
pub struct ImageArgs {
    /// Architectures to build, comma-separated.
    #[arg(long = "arch", value_delimiter = ',', default_value = "amd64,arm64")]
    pub arches: Vec<Arch>,
    /// Name of the manifest list; each architecture's image is `<tag>-<arch>`.
    #[arg(long, default_value = DEFAULT_TAG)]
    pub tag: String,
    /// Global podman options, one string split at spaces (e.g. another
    /// store: "--root /var/tmp/x/storage --runroot /run/x --storage-driver vfs").
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    pub podman_args: String,
    /// Cargo profile of the binaries: release (what is published), or
    /// test-image (opt-level 1: about half the CPU; what `cargo xtask test`
    /// builds, and passes to the image test through the variable).
    #[arg(
        long,
        value_enum,
        default_value = "release",
        env = "OOMTRACE_IMAGE_PROFILE"
    )]
    pub profile: Profile,
}

/// One architecture's image.
#[derive(Debug)]
pub struct Built {
    pub arch: Arch,
    pub image: String,
    pub agent: PathBuf,
}

pub fn image(args: &ImageArgs) -> anyhow::Result<i32> {
    setup::setup()?;
    let built = build(args)?;
    for b in &built {
        eprintln!(
            "image: {}: {} (agent {})",
            b.arch,
            b.image,
            b.agent.display()
        );
    }
    eprintln!(
        "image: {} -> {}",
        args.tag,
        built
            .iter()
            .map(|b| b.image.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(0)
}

/// Builds the images and the manifest list; returns each architecture's image.
pub fn build(args: &ImageArgs) -> anyhow::Result<Vec<Built>> {
    let mut arches = args.arches.clone();
    arches.sort();
    arches.dedup();
    if arches.is_empty() {
        bail!("--arch names no architecture: use amd64, arm64 or both");
    }
    check_tag(&args.tag)?;
    let podman = Podman::new(&args.podman_args)?;
    let dockerfile = util::repo_root().join("Dockerfile");
    let contexts = util::target_dir().join("image");
    let started = Instant::now();
    let builds = arch::build_static(&arches, args.profile)?;
    eprintln!(
        "image: {} agent(s) built ({} profile) in {}",
        builds.len(),
        args.profile.name(),
        util::human(started.elapsed())
    );
    let mut built = Vec::new();
    for (arch, build) in builds {
        let agent = build.agent;
        let facts = arch::check_agent(arch, &agent)?;
        eprintln!(
            "image: {arch}: {} ({:.1} MiB, static, eBPF object {} KiB; kprobes {} read pt_regs as on {arch})",
            agent.display(),
            facts.bytes as f64 / 1048576.0,
            facts.ebpf_bytes / 1024,
            facts.kprobes.join(", "),
        );
        // A build context of exactly the Dockerfile and the binary, this
        // run's own (two runs in one checkout must not share it).
        let ctx = contexts.join(format!("{arch}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&ctx);
        fs::create_dir_all(&ctx).with_context(|| format!("creating {}", ctx.display()))?;
        fs::copy(&dockerfile, ctx.join("Dockerfile"))
            .with_context(|| format!("copying {}", dockerfile.display()))?;
        fs::copy(&agent, ctx.join("oomtrace"))
            .with_context(|| format!("copying {}", agent.display()))?;
        let image = format!("{}-{arch}", args.tag);
        let started = Instant::now();
        // --no-cache: buildah's layer cache ignores --platform, and would
        // hand the other architecture's image back for an identical context.
        let result = podman.run(&[
            "build",
            "--no-cache",
            "--network",
            "none",
            "--pull=never",
            "--platform",
            &format!("linux/{arch}"),
            "--build-arg",
            "BINARY=oomtrace",
            "--build-arg",
            concat!("VERSION=", env!("CARGO_PKG_VERSION")),
            "-t",
            &image,
            &ctx.display().to_string(),
        ]);
        let _ = fs::remove_dir_all(&ctx);
        result?;
        let found = podman.read(&["image", "inspect", "--format", "{{.Architecture}}", &image])?;
        if found.trim() != arch.name() {
            bail!("podman built {image} for {}, not {arch}", found.trim());
        }
        eprintln!("image: {image} built in {}", util::human(started.elapsed()));
        built.push(Built { arch, image, agent });
    }

    // The manifest list, made anew.
    let _ = podman.read(&["manifest", "rm", &args.tag]);
    if podman.read(&["image", "exists", &args.tag]).is_ok() {
        podman.read(&["rmi", &args.tag])?;
    }
    podman.read(&["manifest", "create", &args.tag])?;
    for b in &built {
        podman.read(&[
            "manifest",
            "add",
            &args.tag,
            &format!("containers-storage:{}", b.image),
        ])?;
    }
    let listed = platforms(&podman.read(&["manifest", "inspect", &args.tag])?)?;
    let wanted: Vec<String> = arches.iter().map(|a| format!("linux/{a}")).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    if sorted != wanted {
        bail!(
            "the manifest list {} holds {listed:?}, not {wanted:?}",
            args.tag
        );
    }
    eprintln!(
        "image: manifest list {} holds {}",
        args.tag,
        listed.join(", ")
    );
    let store = if args.podman_args.trim().is_empty() {
        String::new()
    } else {
        format!("{} ", args.podman_args.trim())
    };
    eprintln!(
        "image: publish with `podman {store}manifest push --all {0} docker://{0}`",
        args.tag
    );
    Ok(built)
}

/// A tag podman accepts and that names a version.
fn check_tag(tag: &str) -> anyhow::Result<()> {
    let (name, version) = tag.rsplit_once(':').unwrap_or((tag, ""));
    if version.is_empty() || version.contains('/') || name.is_empty() {
        bail!("--tag {tag}: give a name with a version, e.g. {DEFAULT_TAG}");
    }
    if tag
        .chars()
        .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
    {
        bail!("--tag {tag}: image names are lowercase, without spaces");
    }
    Ok(())
}

/// `os/architecture` of every entry of `podman manifest inspect`.
fn platforms(inspect: &str) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(inspect).context("podman manifest inspect printed no JSON")?;
    let manifests = v["manifests"]
        .as_array()
        .context("podman manifest inspect: no `manifests` array")?;
    Ok(manifests
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect())
}

struct Podman {
    global: Vec<String>,
}

impl Podman {
    fn new(global: &str) -> anyhow::Result<Self> {
        let me = Self {
            global: global.split_whitespace().map(str::to_owned).collect(),
        };
        me.read(&["--version"]).context(
            "podman does not run: `cargo xtask setup` installs it (packages podman, runc)",
        )?;
        Ok(me)
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        cmd!("podman", ..&self.global, ..args)
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        util::run(self.command(args))
    }

    fn read(&self, args: &[&str]) -> anyhow::Result<String> {
        util::read(self.command(args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert!(check_tag(DEFAULT_TAG).is_ok());
        assert_eq!(DEFAULT_TAG, "ghcr.io/oomtrace/oomtrace:0.1.0");
        assert!(check_tag("localhost:5000/oomtrace:0.1.0").is_ok());
        assert!(check_tag("localhost:5000/oomtrace").is_err());
        assert!(check_tag("ghcr.io/oomtrace/oomtrace").is_err());
        assert!(check_tag("Oomtrace:1").is_err());
    }

    #[test]
    fn platforms_of_a_manifest_list() {
        // `podman manifest inspect` (podman 4.3.1) of the list this command built.
        let inspect = r#"{
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 571,
            "digest": "sha256:5226b93af3a55cd591d2292704eeb263bd372057f80e1bb44db1bf8157014341",
            "platform": {
                "architecture": "amd64",
                "os": "linux"
            }
        },
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 571,
            "digest": "sha256:f98eb8e3eb2694c18c8177ecf980156dfa76a23589739acb7f703fa37cc1a2b9",
            "platform": {
                "architecture": "arm64",
                "os": "linux"
            }
        }
    ]
}"#;
        assert_eq!(
            platforms(inspect).expect("parses"),
            ["linux/amd64", "linux/arm64"]
        );
        assert!(platforms("Error: no such manifest").is_err());
    }
}
