//! `cargo xtask setup`: installs what building and testing oomtrace needs and
//! is missing, nothing else. Every item gets one line: present, installed, or
//! what to do. Fast when everything is present (a handful of quick probes).
//!
//! Items:
//! - the `nightly` toolchain (the installed one is used, never updated) and its
//!   `rust-src` (oomtrace/build.rs compiles the eBPF crate with `-Z build-std=core`;
//!   the eBPF target needs nothing per CPU architecture);
//! - the static musl targets of the default toolchain, for the image and the
//!   arm64 VM tests (`cargo xtask image`, [`crate::arch`]);
//! - `bpf-linker`, built against the nightly's own libLLVM (see
//!   [`BpfLinker`]);
//! - `cargo-fuzz` (pinned), for the fuzz targets in `fuzz/`;
//! - the Debian packages the tests need (root only; otherwise the command);
//! - `cargo-deny`, pinned, for the licence check of the deploy stage;
//! - `kubectl` (checked, not installed: see [`kubectl`]);
//! - tracefs mounted at `/sys/kernel/tracing`.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd,
    util::{self, is_root},
};

/// Pinned: newer releases may need another rustc or LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Pinned licence checker (MIT OR Apache-2.0; needs rustc >= 1.88). Built
/// from the crate registry once: about 5 minutes of CPU on 2 cores.
const CARGO_DENY_VERSION: &str = "0.20.2";
/// Pinned: the `fuzz` test stage runs the targets in `fuzz/` with it.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What the tests need from Debian: qemu, busybox and cpio for the VM tests'
/// guests (qemu-system-arm brings qemu-system-aarch64 for the arm64 guest),
/// kmod for loading modules, python3 for test helpers, prometheus for
/// `promtool` and the server in the metrics tests, podman and runc to build
/// and run the container image, musl-tools for its static amd64 binary and
/// gcc-aarch64-linux-gnu with libc6-dev-arm64-cross (not a recommendation
/// when installed without them) for the arm64 one (ring compiles C),
/// util-linux for setpriv, bpftool as the independent check of the kernel
/// struct offsets oomtrace reads from BTF.
const DEBIAN_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "kmod",
    "cpio",
    "python3",
    "prometheus",
    "podman",
    "runc",
    "musl-tools",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "util-linux",
    "bpftool",
];

/// The static targets of the container image's binaries (and of the arm64
/// VM tests).
const MUSL_TARGETS: &[&str] = &["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

const TRACEFS: &str = "/sys/kernel/tracing";

/// What setup found for each item.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Items the user still has to act on (not root, not Debian, ...).
    pub to_do: usize,
}

pub fn setup() -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let sysroot = nightly()?;
    rust_src(&sysroot)?;
    musl_targets()?;
    BpfLinker::probe(&sysroot)?.ensure()?;
    cargo_fuzz()?;
    outcome.to_do += debian_packages()?;
    cargo_deny()?;
    outcome.to_do += kubectl();
    outcome.to_do += tracefs()?;
    let elapsed = util::human(started.elapsed());
    if outcome.to_do == 0 {
        eprintln!("setup: done in {elapsed}");
    } else {
        eprintln!(
            "setup: done in {elapsed}; {} item(s) need the action printed above",
            outcome.to_do
        );
    }
    Ok(outcome)
}

fn report(item: &str, state: impl std::fmt::Display) {
    eprintln!("setup: {item:<34} {state}");
}

/// `rustup` with automatic toolchain installation off: a probe must never
/// download a toolchain.
fn rustup() -> std::process::Command {
    let mut c = cmd!("rustup");
    c.env("RUSTUP_AUTO_INSTALL", "0");
    c
}

/// Makes sure the `nightly` toolchain exists; returns its sysroot.
fn nightly() -> anyhow::Result<PathBuf> {
    if let Some((name, sysroot)) = find_nightly()? {
        report("nightly toolchain", format!("present ({name})"));
        return Ok(sysroot);
    }
    util::run(rustup_args(&[
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))?;
    let (_, sysroot) =
        find_nightly()?.context("rustup installed the nightly toolchain but does not list it")?;
    report("nightly toolchain", "installed");
    Ok(sysroot)
}

/// The `nightly-<host>` toolchain (not a dated `nightly-2026-05-19-...`: oomtrace/build.rs
/// runs `rustup run nightly`) and its sysroot, read from `rustup toolchain
/// list -v` (much faster than asking rustc).
fn find_nightly() -> anyhow::Result<Option<(String, PathBuf)>> {
    let list = util::read(rustup_args(&["toolchain", "list", "-v"])).context(
        "rustup is needed: install it from https://rustup.rs, then run `cargo xtask setup` again",
    )?;
    let Some((name, path)) = parse_toolchains(&list) else {
        return Ok(None);
    };
    let sysroot = match path {
        Some(path) => path,
        None => {
            let mut c = cmd!("rustc", "+nightly", "--print", "sysroot");
            c.env("RUSTUP_AUTO_INSTALL", "0");
            PathBuf::from(util::read(c)?.trim())
        }
    };
    Ok(Some((name, sysroot)))
}

fn parse_toolchains(list: &str) -> Option<(String, Option<PathBuf>)> {
    list.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let name = words.next()?;
        let rest = name.strip_prefix("nightly-")?;
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let path = words.find(|w| w.starts_with('/')).map(PathBuf::from);
        Some((name.to_owned(), path))
    })
}

/// rust-src as rustup records it: a line in `lib/rustlib/components`.
fn rust_src(sysroot: &Path) -> anyhow::Result<()> {
    let components = fs::read_to_string(sysroot.join("lib/rustlib/components")).unwrap_or_default();
    if components.lines().any(|l| l.trim() == "rust-src") {
        report("rust-src (nightly)", "present");
    } else {
        util::run(rustup_args(&[
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        report("rust-src (nightly)", "installed");
    }
    Ok(())
}

/// The musl targets of the default toolchain, for the images' static binaries.
fn musl_targets() -> anyhow::Result<()> {
    let out = cmd!("rustc", "--print", "sysroot").output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for &target in MUSL_TARGETS {
        if sysroot.join("lib/rustlib").join(target).is_dir() {
            report(target, "present");
        } else {
            util::run(rustup_args(&["target", "add", target]))?;
            report(target, "installed");
        }
    }
    Ok(())
}

fn rustup_args(args: &[&str]) -> std::process::Command {
    let mut c = rustup();
    c.args(args);
    c
}

/// bpf-linker must be linked against the very libLLVM the nightly ships
/// (same major version as rustc's bitcode). It is built with
/// `LLVM_PREFIX=<prefix>`, where `<prefix>/lib` holds symlinks to the
/// nightly's libLLVM; the binary keeps `<prefix>/lib` as its runpath, so the
/// prefix lives under `$CARGO_HOME` (not /tmp). A stamp in the prefix records
/// what it was built against; any difference means a rebuild.
#[derive(Debug)]
struct BpfLinker {
    prefix: PathBuf,
    /// The real libLLVM file in the nightly's sysroot.
    libllvm: PathBuf,
    major: u32,
}

impl BpfLinker {
    fn probe(sysroot: &Path) -> anyhow::Result<Self> {
        let lib = sysroot.join("lib");
        let names: Vec<String> = fs::read_dir(&lib)
            .with_context(|| format!("reading {}", lib.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let (name, major) = find_libllvm(&names).with_context(|| {
            format!(
                "no libLLVM.so.<major>.<minor>-rust-* in {}: the nightly toolchain lacks its LLVM",
                lib.display()
            )
        })?;
        Ok(Self {
            prefix: util::cargo_home()?.join("oomtrace-llvm-prefix"),
            libllvm: lib.join(name),
            major,
        })
    }

    fn lib_name(&self) -> &str {
        self.libllvm
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    fn stamp_path(&self) -> PathBuf {
        self.prefix.join("bpf-linker.stamp")
    }

    fn stamp(&self) -> String {
        format!(
            "llvm-major={}\nlibllvm={}\nbpf-linker={BPF_LINKER_VERSION}\n",
            self.major,
            self.libllvm.display()
        )
    }

    fn ensure(&self) -> anyhow::Result<()> {
        let item = format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {})", self.major);
        self.make_prefix()?;
        match self.problem() {
            None => {
                report(&item, "present");
                return Ok(());
            }
            Some(why) => eprintln!("setup: bpf-linker must be (re)built: {why}"),
        }
        let _ = fs::remove_file(self.stamp_path());
        let mut install = cmd!(
            "cargo",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            format!("llvm-{}", self.major),
        );
        install
            .env("LLVM_PREFIX", &self.prefix)
            // Build in cargo's own temporary directory, not in a workspace's.
            .env_remove("CARGO_TARGET_DIR");
        util::run(install).context("building bpf-linker failed")?;
        if let Some(why) = self.binary_problem() {
            bail!("bpf-linker was rebuilt but still does not work: {why}");
        }
        fs::write(self.stamp_path(), self.stamp())
            .with_context(|| format!("writing {}", self.stamp_path().display()))?;
        report(&item, "installed");
        Ok(())
    }

    /// `<prefix>/lib/libLLVM.so` and `<prefix>/lib/<real name>` point at the
    /// nightly's libLLVM; stale links from an older nightly are removed.
    fn make_prefix(&self) -> anyhow::Result<()> {
        let lib = self.prefix.join("lib");
        fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
        let wanted = ["libLLVM.so", self.lib_name()];
        for entry in fs::read_dir(&lib)? {
            let entry = entry?;
            let name = entry.file_name();
            let stale = name.to_str().is_none_or(|n| !wanted.contains(&n));
            if stale {
                fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        for name in wanted {
            let link = lib.join(name);
            if fs::read_link(&link).is_ok_and(|target| target == self.libllvm) {
                continue;
            }
            let _ = fs::remove_file(&link);
            symlink(&self.libllvm, &link).with_context(|| {
                format!("linking {} to {}", link.display(), self.libllvm.display())
            })?;
        }
        Ok(())
    }

    /// Why the installed bpf-linker cannot be used, if it cannot.
    fn problem(&self) -> Option<String> {
        if let Some(why) = self.binary_problem() {
            return Some(why);
        }
        match fs::read_to_string(self.stamp_path()) {
            Ok(stamp) if stamp == self.stamp() => None,
            Ok(_) => Some(format!(
                "{} records another LLVM or version than LLVM {} from {}",
                self.stamp_path().display(),
                self.major,
                self.libllvm.display()
            )),
            Err(_) => Some(format!("no stamp at {}", self.stamp_path().display())),
        }
    }

    /// Why the bpf-linker binary itself is unusable: absent, not the pinned
    /// version, a library missing, or its libLLVM not found through the prefix.
    fn binary_problem(&self) -> Option<String> {
        let Some(path) = bpf_linker_path() else {
            return Some("not installed".to_owned());
        };
        let version = match util::read(cmd!(&path, "--version")) {
            Ok(v) => v,
            Err(e) => return Some(format!("{} does not run: {e:#}", path.display())),
        };
        if !version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
            return Some(format!(
                "{} is {}, not {BPF_LINKER_VERSION}",
                path.display(),
                version.trim()
            ));
        }
        let ldd = match util::read(cmd!("ldd", &path)) {
            Ok(out) => out,
            Err(e) => return Some(format!("ldd {}: {e:#}", path.display())),
        };
        if let Some(line) = ldd.lines().find(|l| l.contains("not found")) {
            return Some(format!("a library is missing: {}", line.trim()));
        }
        let ours = self.prefix.join("lib");
        let llvm = ldd
            .lines()
            .filter(|l| l.trim_start().starts_with("libLLVM"))
            .find_map(|l| {
                Some(PathBuf::from(
                    l.split("=>").nth(1)?.split(" (").next()?.trim(),
                ))
            });
        match llvm {
            None => Some("it is not linked against a shared libLLVM".to_owned()),
            Some(found) if !found.starts_with(&ours) => Some(format!(
                "it loads {} rather than through {}",
                found.display(),
                ours.display()
            )),
            Some(_) => None,
        }
    }
}

/// `cargo fuzz` at the pinned version, installed from crates.io when absent
/// or another version (it builds with the stable toolchain in about a minute).
fn cargo_fuzz() -> anyhow::Result<()> {
    let item = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let installed = util::read(cmd!("cargo", "fuzz", "--version")).ok();
    if installed
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION))
    {
        report(&item, "present");
        return Ok(());
    }
    let mut install = cmd!(
        "cargo",
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force"
    );
    // Build in cargo's own temporary directory, not in a workspace's.
    install.env_remove("CARGO_TARGET_DIR");
    util::run(install).context("installing cargo-fuzz failed")?;
    report(&item, "installed");
    Ok(())
}

/// bpf-linker as rustc will find it: on `PATH`, else where cargo installs.
fn bpf_linker_path() -> Option<PathBuf> {
    util::which("bpf-linker").or_else(|| {
        let path = util::cargo_home().ok()?.join("bin/bpf-linker");
        util::is_executable(&path).then_some(path)
    })
}

/// The real libLLVM among a sysroot's `lib/` file names, and its major:
/// `libLLVM.so.22.1-rust-1.97.0-nightly` (newer toolchains; the
/// `libLLVM-22-rust-*.so` beside it is a linker script) or
/// `libLLVM-17-rust-1.75.0-nightly.so` (older ones).
fn find_libllvm(names: &[String]) -> Option<(&str, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let versioned = names.iter().find_map(|n| {
        let rest = n.strip_prefix("libLLVM.so.")?;
        n.contains("-rust-").then_some(())?;
        Some((n.as_str(), digits(rest)?))
    });
    versioned.or_else(|| {
        names.iter().find_map(|n| {
            let rest = n.strip_prefix("libLLVM-")?;
            (n.contains("-rust-") && n.ends_with(".so")).then_some(())?;
            Some((n.as_str(), digits(rest)?))
        })
    })
}

/// Returns how many packages the user must install themselves.
fn debian_packages() -> anyhow::Result<usize> {
    if util::which("dpkg-query").is_none() {
        report(
            "debian packages",
            format!(
                "not a Debian system: install the equivalents of {} yourself",
                DEBIAN_PACKAGES.join(" ")
            ),
        );
        return Ok(1);
    }
    // One query for all: it lists the known packages (and exits 1 when one is
    // unknown to dpkg, which only means "not installed").
    let out = cmd!(
        "dpkg-query",
        "-W",
        "-f=${Package} ${Status}\n",
        ..DEBIAN_PACKAGES
    )
    .stdin(std::process::Stdio::null())
    .output()
    .context("could not run dpkg-query")?;
    let statuses = String::from_utf8_lossy(&out.stdout);
    let mut missing = Vec::new();
    for &package in DEBIAN_PACKAGES {
        let installed = statuses.lines().any(|line| {
            line.split_once(' ')
                .is_some_and(|(name, status)| name == package && status == "install ok installed")
        });
        if installed {
            report(&format!("package {package}"), "present");
        } else {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(0);
    }
    let install_args = ["install", "-y", "--no-install-recommends"];
    if !is_root() {
        let command = format!(
            "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get {} {}",
            install_args.join(" "),
            missing.join(" ")
        );
        for package in &missing {
            report(&format!("package {package}"), "missing (not root)");
        }
        eprintln!("setup: to install them, run: {command}");
        return Ok(missing.len());
    }
    // The package lists on a fresh machine are often stale: refresh once.
    let mut update = cmd!("apt-get", "update", "-q");
    update.env("DEBIAN_FRONTEND", "noninteractive");
    util::run(update)?;
    let mut install = cmd!("apt-get", ..install_args, "-q", ..&missing);
    install.env("DEBIAN_FRONTEND", "noninteractive");
    util::run(install)?;
    // Under systemd the package starts a server on :9090; the tests want only
    // the binaries (they start their own server). Without systemd (these
    // machines) policy-rc.d already keeps it from starting.
    if missing.contains(&"prometheus") && Path::new("/run/systemd/system").is_dir() {
        util::run(cmd!("systemctl", "disable", "--now", "prometheus.service"))?;
    }
    for package in &missing {
        report(&format!("package {package}"), "installed");
    }
    Ok(0)
}

/// `cargo deny check licenses` runs in the deploy test stage.
fn cargo_deny() -> anyhow::Result<()> {
    let item = format!("cargo-deny {CARGO_DENY_VERSION}");
    let version = util::read(cmd!("cargo", "deny", "--version")).unwrap_or_default();
    if version.split_whitespace().any(|w| w == CARGO_DENY_VERSION) {
        report(&item, "present");
        return Ok(());
    }
    let mut install = cmd!(
        "cargo",
        "install",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
        "--locked",
        "--force",
    );
    // Build in cargo's own temporary directory, not in a workspace's.
    install.env_remove("CARGO_TARGET_DIR");
    util::run(install).context("building cargo-deny failed")?;
    report(&item, "installed");
    Ok(())
}

/// The deploy stage renders the manifests with `kubectl kustomize`
/// (kustomize v5; tested with kubectl 1.32). No package registry reachable here ships a
/// current kubectl (Debian's kubernetes-client is 1.20, whose kustomize
/// knows no components), so it is only checked. Returns 1 when missing.
fn kubectl() -> usize {
    match util::read(cmd!("kubectl", "version", "--client")) {
        Ok(version) => {
            let client = version.lines().next().unwrap_or("").trim();
            report("kubectl", format!("present ({client})"));
            0
        }
        Err(_) => {
            report(
                "kubectl",
                "missing: the deploy test stage needs kubectl with kustomize v5 on PATH (tested with 1.32)",
            );
            1
        }
    }
}

/// Returns 1 when tracefs is not mounted and we may not mount it.
fn tracefs() -> anyhow::Result<usize> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next(), f.next(), f.next());
        dir == Some(TRACEFS) && kind == Some("tracefs")
    });
    if mounted {
        report(&format!("tracefs at {TRACEFS}"), "present");
        return Ok(0);
    }
    if !Path::new(TRACEFS).is_dir() {
        report(
            &format!("tracefs at {TRACEFS}"),
            "missing: this kernel has no tracefs (CONFIG_FTRACE); tracepoints cannot be used",
        );
        return Ok(1);
    }
    if !is_root() {
        report(
            &format!("tracefs at {TRACEFS}"),
            format!("not mounted: run sudo mount -t tracefs nodev {TRACEFS}"),
        );
        return Ok(1);
    }
    util::run(cmd!("mount", "-t", "tracefs", "nodev", TRACEFS))?;
    report(&format!("tracefs at {TRACEFS}"), "mounted");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn nightly_from_rustup_toolchain_list() {
        // `rustup toolchain list -v` (rustup 1.29) on the build machine.
        let list = "stable-x86_64-unknown-linux-gnu (active, default) /root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu
nightly-x86_64-unknown-linux-gnu /root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu
1.95.0-x86_64-unknown-linux-gnu /root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu
";
        assert_eq!(
            parse_toolchains(list),
            Some((
                "nightly-x86_64-unknown-linux-gnu".to_owned(),
                Some(PathBuf::from(
                    "/root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu"
                ))
            ))
        );
        let dated_only = "stable-x86_64-unknown-linux-gnu (default)\nnightly-2026-05-19-x86_64-unknown-linux-gnu\n";
        assert_eq!(parse_toolchains(dated_only), None);
    }

    #[test]
    fn libllvm_of_the_installed_nightly() {
        // `ls $(rustc +nightly --print sysroot)/lib` on the build machine.
        let n = names(&[
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
            "rustlib",
        ]);
        assert_eq!(
            find_libllvm(&n),
            Some(("libLLVM.so.22.1-rust-1.97.0-nightly", 22))
        );
    }

    #[test]
    fn libllvm_of_an_older_nightly() {
        let n = names(&[
            "librustc_driver-0f5a2e2d1a0e6b1c.so",
            "libLLVM-17-rust-1.75.0-nightly.so",
            "rustlib",
        ]);
        assert_eq!(
            find_libllvm(&n),
            Some(("libLLVM-17-rust-1.75.0-nightly.so", 17))
        );
        assert_eq!(find_libllvm(&names(&["rustlib"])), None);
    }
}
