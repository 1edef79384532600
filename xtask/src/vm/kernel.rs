//! Kernels for the VM runner: resolve a `--kernel` spec to a Debian package
//! of the guest's architecture, download it with `apt-get download` under a
//! private apt configuration, extract it with `dpkg-deb -x` (never install),
//! and pull the uncompressed ELF vmlinux out of an amd64 bzImage for a PVH
//! boot (an arm64 `vmlinuz` is an `Image` qemu boots as it is).
//! [`fetch_userland`] brings other packages of the guest's architecture the
//! same way (arm64's busybox-static).

use super::elf::{self, Elf};
use super::{cache_dir, run_checked, tool_missing_hint};
use crate::arch::Arch;
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// The bullseye kernel with the old, pid-only `oom:mark_victim` ABI
/// (`linux-image-5.10.0-32-<arch>`).
pub const PID_ONLY_ABI: &str = "5.10.0-32";
pub const PID_ONLY_VERSION: &str = "5.10.223-1";
/// How long downloaded package lists are trusted before `apt-get update` runs again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The guest's architecture.
    pub arch: Arch,
    /// `uname -r` inside the guest.
    pub release: String,
    /// Debian package and version, when it came from the archive.
    pub package: Option<(String, String)>,
    /// What qemu's `-kernel` gets: the ELF vmlinux (PVH) or the bzImage
    /// (amd64), the `Image` (arm64).
    pub image: PathBuf,
    pub pvh: bool,
    /// The kernel's `lib/modules/<release>` (None: everything needed is built in).
    pub modules_dir: Option<PathBuf>,
    /// The image has a `.BTF` section (None: could not tell, e.g. a bzImage only).
    pub btf: Option<bool>,
    /// Where derived files (the initramfs) are cached.
    pub work_dir: PathBuf,
}

impl Kernel {
    pub fn describe(&self) -> String {
        match &self.package {
            Some((p, v)) => format!("{} ({p} {v})", self.release),
            None => format!("{} ({})", self.release, self.image.display()),
        }
    }

    /// How it boots and whether the image has BTF.
    pub fn boot_notes(&self) -> String {
        let how = match (self.arch, self.pvh) {
            (Arch::Arm64, _) => "arm64 Image",
            (Arch::Amd64, true) => "PVH vmlinux",
            (Arch::Amd64, false) => "bzImage",
        };
        let btf = match self.btf {
            Some(true) => "BTF",
            Some(false) => "NO BTF",
            None => "BTF unknown",
        };
        format!("{how}, {btf}")
    }
}

/// An apt "channel": one private apt configuration with its own lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Bookworm,
    BookwormBackports,
    Bullseye,
}

impl Channel {
    const ALL: [Channel; 3] = [
        Channel::Bookworm,
        Channel::BookwormBackports,
        Channel::Bullseye,
    ];

    fn name(self) -> &'static str {
        match self {
            Channel::Bookworm => "bookworm",
            Channel::BookwormBackports => "bookworm-backports",
            Channel::Bullseye => "bullseye",
        }
    }

    /// (suite, from the security archive?)
    fn suites(self) -> &'static [(&'static str, bool)] {
        match self {
            Channel::Bookworm => &[
                ("bookworm", false),
                ("bookworm-updates", false),
                ("bookworm-security", true),
            ],
            Channel::BookwormBackports => &[("bookworm-backports", false)],
            Channel::Bullseye => &[("bullseye", false), ("bullseye-security", true)],
        }
    }
}

/// What a `--kernel` spec asks for.
enum Request {
    /// The package the channel's `linux-image-<arch>` depends on.
    Meta(Channel),
    /// A named package, optionally at a version; channel guessed from the name.
    Package(String, Option<String>),
    Path(PathBuf),
}

fn parse_spec(spec: &str, arch: Arch) -> Result<Request> {
    let s = spec.trim();
    Ok(match s {
        "6.1" | "bookworm" | "stable" => Request::Meta(Channel::Bookworm),
        "6.12" | "bookworm-backports" | "backports" => Request::Meta(Channel::BookwormBackports),
        "5.10" => Request::Package(
            format!("linux-image-{PID_ONLY_ABI}-{arch}"),
            Some(PID_ONLY_VERSION.into()),
        ),
        "bullseye" => Request::Meta(Channel::Bullseye),
        _ if s.starts_with("linux-image-") => match s.split_once('=') {
            Some((p, v)) => Request::Package(p.into(), Some(v.into())),
            None => Request::Package(s.into(), None),
        },
        _ if s.contains('/') || Path::new(s).exists() => Request::Path(PathBuf::from(s)),
        _ => bail!(
            "unknown kernel `{spec}`: use 6.1, 6.12, 5.10, bookworm, bullseye, a Debian package \
             name such as linux-image-6.1.0-41-amd64[=VERSION], or a path to a vmlinux/bzImage \
             or to an extracted package tree (with boot/ and lib/modules/)"
        ),
    })
}

/// Resolve, download and prepare a kernel for an `arch` guest. `refresh`
/// re-resolves aliases against fresh package lists instead of reusing the
/// cached answer.
pub fn prepare(
    spec: &str,
    arch: Arch,
    modules_override: Option<&Path>,
    refresh: bool,
) -> Result<Kernel> {
    let (root, package) = match parse_spec(spec, arch)? {
        Request::Path(p) => return prepare_path(&p, arch, modules_override),
        Request::Meta(ch) => {
            let key = match arch {
                Arch::Amd64 => spec.to_owned(),
                _ => format!("{arch}-{spec}"),
            };
            let (pkg, ver) = resolve_cached(&key, refresh, || resolve_meta(ch, arch))?;
            (fetch_package(ch, arch, &pkg, &ver)?, (pkg, ver))
        }
        Request::Package(pkg, ver) => {
            let (pkg, ver) = resolve_any(arch, &pkg, ver.as_deref(), refresh)?;
            (fetch_any(arch, &pkg, &ver)?, (pkg, ver))
        }
    };
    let mut k = from_tree(&root, arch, modules_override)?;
    k.package = Some(package);
    Ok(k)
}

/// A package of `arch` (e.g. busybox-static for an arm64 guest), downloaded
/// and extracted (never installed); returns the extracted tree and the version.
pub fn fetch_userland(arch: Arch, package: &str, refresh: bool) -> Result<(PathBuf, String)> {
    let (pkg, ver) = resolve_any(arch, package, None, refresh)?;
    Ok((fetch_any(arch, &pkg, &ver)?, ver))
}

/// The version of `pkg` to use: `ver`, else the cached or current candidate.
fn resolve_any(
    arch: Arch,
    pkg: &str,
    ver: Option<&str>,
    refresh: bool,
) -> Result<(String, String)> {
    let key = format!("{pkg}={}", ver.unwrap_or("candidate"));
    let key = match arch {
        // Kernel packages name their architecture; other packages need it in the key.
        Arch::Amd64 => key,
        _ if pkg.ends_with(&format!("-{arch}")) => key,
        _ => format!("{arch}-{key}"),
    };
    resolve_cached(&key, refresh, || resolve_package(pkg, ver, arch))
}

/// Download and extract `pkg=ver`, trying the likely channels in turn (the
/// channel only matters for downloading).
fn fetch_any(arch: Arch, pkg: &str, ver: &str) -> Result<PathBuf> {
    let mut channels = guess_channels(pkg).into_iter();
    let first = channels.next().unwrap_or(Channel::Bookworm);
    match fetch_package(first, arch, pkg, ver) {
        Ok(r) => Ok(r),
        Err(e) => channels
            .find_map(|c| fetch_package(c, arch, pkg, ver).ok())
            .ok_or(e),
    }
}

fn prepare_path(p: &Path, arch: Arch, modules_override: Option<&Path>) -> Result<Kernel> {
    if p.is_dir() {
        return from_tree(p, arch, modules_override);
    }
    if !p.is_file() {
        bail!("kernel path {} does not exist", p.display());
    }
    let p = fs::canonicalize(p)?;
    // <root>/boot/vmlinuz-X with <root>/lib/modules/X next to it?
    let modules = match modules_override {
        Some(m) => Some(m.to_path_buf()),
        None => p
            .parent()
            .and_then(Path::parent)
            .and_then(|root| find_modules_dir(root).ok()),
    };
    let work_dir = cache_dir()?
        .join("custom")
        .join(sanitize(&p.to_string_lossy()));
    fs::create_dir_all(&work_dir)?;
    let (image, pvh, btf, release) = boot_image(&p, arch, &work_dir)?;
    let release = match (&modules, release) {
        (Some(m), _) => dir_name(m),
        (None, Some(r)) => r,
        (None, None) => "unknown".into(),
    };
    Ok(Kernel {
        arch,
        release,
        package: None,
        image,
        pvh,
        modules_dir: modules,
        btf,
        work_dir,
    })
}

/// A kernel from an extracted package tree (`boot/vmlinuz-*`, `lib/modules/*`).
fn from_tree(root: &Path, arch: Arch, modules_override: Option<&Path>) -> Result<Kernel> {
    let modules = match modules_override {
        Some(m) => m.to_path_buf(),
        None => find_modules_dir(root)?,
    };
    let release = dir_name(&modules);
    let boot = root.join("boot");
    let image = ["vmlinux", "vmlinuz"]
        .iter()
        .map(|n| boot.join(format!("{n}-{release}")))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no boot/vmlinuz-{release} or boot/vmlinux-{release} in {}",
                root.display()
            )
        })?;
    let (image, pvh, mut btf, _) = boot_image(&image, arch, root)?;
    if btf.is_none() {
        // An arm64 Image is no ELF file: ask the kernel's config instead.
        btf = fs::read_to_string(boot.join(format!("config-{release}")))
            .ok()
            .map(|c| c.lines().any(|l| l == "CONFIG_DEBUG_INFO_BTF=y"));
    }
    Ok(Kernel {
        arch,
        release,
        package: None,
        image,
        pvh,
        modules_dir: Some(modules),
        btf,
        work_dir: root.to_path_buf(),
    })
}

fn find_modules_dir(root: &Path) -> Result<PathBuf> {
    let base = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir())
        .with_context(|| format!("no lib/modules in {}", root.display()))?;
    let mut dirs: Vec<PathBuf> = fs::read_dir(&base)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kernel").is_dir())
        .collect();
    dirs.sort();
    match dirs.len() {
        1 => Ok(dirs.remove(0)),
        0 => bail!("no lib/modules/<release>/kernel in {}", root.display()),
        _ => bail!(
            "several kernels in {}: pass --modules to choose",
            base.display()
        ),
    }
}

fn dir_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Choose what to boot: on amd64 an ELF vmlinux with the PVH note if we have
/// or can extract one, else the bzImage; on arm64 the Image ([`arm64_image`]).
/// Returns (image, pvh, btf, release from image).
fn boot_image(
    image: &Path,
    arch: Arch,
    work_dir: &Path,
) -> Result<(PathBuf, bool, Option<bool>, Option<String>)> {
    let data = fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    if arch == Arch::Arm64 {
        return arm64_image(image, &data, work_dir);
    }
    if elf::is_elf(&data) {
        let e = Elf::parse(&data).with_context(|| format!("parsing {}", image.display()))?;
        let (pvh, btf) = (e.has_pvh_note(), e.has_section(".BTF"));
        if !pvh {
            bail!(
                "{} is an ELF vmlinux without the PVH entry note (CONFIG_PVH): qemu cannot boot it \
                 directly; pass the bzImage instead",
                image.display()
            );
        }
        return Ok((image.to_path_buf(), true, Some(btf), linux_version(&data)));
    }
    let vmlinux = work_dir.join("vmlinux");
    let fresh = mtime(&vmlinux).is_some_and(|t| Some(t) >= mtime(image));
    if !fresh {
        match extract_vmlinux(&data) {
            Ok(v) => {
                let tmp = work_dir.join(format!("vmlinux.tmp{}", std::process::id()));
                fs::write(&tmp, v)?;
                fs::rename(&tmp, &vmlinux)?;
            }
            Err(e) => {
                eprintln!(
                    "vm: cannot extract a vmlinux from {} ({e:#}); booting the bzImage (slower)",
                    image.display()
                );
                return Ok((image.to_path_buf(), false, None, linux_version(&data)));
            }
        }
    }
    let v = fs::read(&vmlinux)?;
    let e = Elf::parse(&v)?;
    let btf = Some(e.has_section(".BTF"));
    if e.has_pvh_note() {
        Ok((vmlinux, true, btf, linux_version(&v)))
    } else {
        eprintln!(
            "vm: {} has no PVH entry note; booting the bzImage (slower)",
            image.display()
        );
        Ok((image.to_path_buf(), false, btf, linux_version(&v)))
    }
}

/// An arm64 kernel for qemu's `-kernel`: Debian's `vmlinuz` is the
/// uncompressed `Image` (magic `ARM\x64` at 0x38) in bookworm; a gzip'ed one
/// is unpacked once into the work dir. Returns (image, pvh, btf, release).
fn arm64_image(
    image: &Path,
    data: &[u8],
    work_dir: &Path,
) -> Result<(PathBuf, bool, Option<bool>, Option<String>)> {
    let is_image = |d: &[u8]| d.get(0x38..0x3c) == Some(&b"ARM\x64"[..]);
    if is_image(data) {
        return Ok((image.to_path_buf(), false, None, linux_version(data)));
    }
    if data.starts_with(b"\x1f\x8b") {
        let unpacked = work_dir.join("Image");
        if mtime(&unpacked).is_none_or(|t| Some(t) < mtime(image)) {
            let out = pipe_through("gzip", &["-dc"], data)
                .with_context(|| tool_missing_hint("gzip", "gzip"))?;
            if !is_image(&out) {
                bail!("{} unpacks to no arm64 Image", image.display());
            }
            let tmp = work_dir.join(format!("Image.tmp{}", std::process::id()));
            fs::write(&tmp, &out)?;
            fs::rename(&tmp, &unpacked)?;
        }
        let out = fs::read(&unpacked)?;
        return Ok((unpacked, false, None, linux_version(&out)));
    }
    bail!(
        "{} is neither an arm64 Image nor a gzip'ed one (an EFI zboot image needs a newer qemu): \
         pass the uncompressed Image",
        image.display()
    )
}

/// "Linux version 6.1.0-41-amd64 (...)" -> "6.1.0-41-amd64"
fn linux_version(data: &[u8]) -> Option<String> {
    let needle = b"Linux version ";
    let pos = data.windows(needle.len()).position(|w| w == needle)?;
    let rest = &data[pos + needle.len()..];
    let end = rest.iter().position(|&b| b == b' ' || b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The kernel's scripts/extract-vmlinux: find a compressed stream in the
/// bzImage that decompresses to an ELF file.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    // (magic, tool, args, package)
    const FORMATS: &[(&[u8], &str, &[&str], &str)] = &[
        (
            b"\xfd7zXZ\x00",
            "xz",
            &["-dc", "--single-stream"],
            "xz-utils",
        ),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"], "zstd"),
        (b"\x1f\x8b\x08", "gzip", &["-dc"], "gzip"),
        (b"\x02\x21\x4c\x18", "lz4", &["-dc"], "lz4"),
        (b"BZh", "bzip2", &["-dc"], "bzip2"),
        (
            b"\x5d\x00\x00\x00",
            "xz",
            &["-dc", "--format=lzma"],
            "xz-utils",
        ),
    ];
    let mut tried = Vec::new();
    for &(magic, tool, args, package) in FORMATS {
        let mut start = 0;
        let mut attempts = 0;
        while let Some(off) = bz[start..].windows(magic.len()).position(|w| w == magic) {
            let off = start + off;
            start = off + 1;
            attempts += 1;
            if attempts > 8 {
                break;
            }
            let out = match pipe_through(tool, args, &bz[off..]) {
                Ok(o) => o,
                Err(e) => {
                    tried.push(format!(
                        "{tool}: {e:#} ({})",
                        tool_missing_hint(tool, package)
                    ));
                    break;
                }
            };
            if elf::is_elf(&out) && Elf::parse(&out).is_ok() {
                return Ok(out);
            }
        }
    }
    bail!(
        "no compressed ELF kernel found in the bzImage{}",
        if tried.is_empty() {
            String::new()
        } else {
            format!(": {}", tried.join("; "))
        }
    )
}

/// Feed `input` to `tool args` and collect its stdout (exit status ignored:
/// decompressors complain about the trailing bytes after the stream).
pub fn pipe_through(tool: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run `{tool}`"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            // EPIPE once the decompressor stops at the end of its stream is expected.
            let _ = stdin.write_all(input);
        });
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    })?;
    child.wait()?;
    Ok(out)
}

// ---- resolution and download -------------------------------------------------

/// Aliases resolve to (package, version) once; the answer is cached so later
/// runs work offline. `refresh` asks apt again.
fn resolve_cached(
    key: &str,
    refresh: bool,
    resolve: impl FnOnce() -> Result<(String, String)>,
) -> Result<(String, String)> {
    let file = cache_dir()?.join("resolved").join(sanitize(key));
    let cached = if refresh {
        None
    } else {
        fs::read_to_string(&file).ok()
    };
    if let Some((p, v)) = cached.as_deref().and_then(|s| s.trim().split_once('=')) {
        return Ok((p.into(), v.into()));
    }
    let (p, v) = resolve()?;
    fs::create_dir_all(file.parent().context("no parent")?)?;
    fs::write(&file, format!("{p}={v}\n"))?;
    Ok((p, v))
}

fn resolve_meta(ch: Channel, arch: Arch) -> Result<(String, String)> {
    let apt = Apt::new(ch, arch)?;
    apt.update(false)?;
    let meta = format!("linux-image-{arch}");
    let deps = apt.query("apt-cache", &["depends", &meta])?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-") && !d.contains('<'))
        .with_context(|| {
            format!(
                "{meta} in {} depends on no linux-image-* package:\n{deps}",
                ch.name()
            )
        })?
        .to_owned();
    let ver = apt.candidate(&pkg)?;
    Ok((pkg, ver))
}

fn resolve_package(pkg: &str, ver: Option<&str>, arch: Arch) -> Result<(String, String)> {
    if let Some(v) = ver {
        return Ok((pkg.into(), v.into()));
    }
    let mut errs = Vec::new();
    for ch in guess_channels(pkg) {
        let r = Apt::new(ch, arch).and_then(|apt| {
            apt.update(false)?;
            apt.candidate(pkg)
        });
        match r {
            Ok(v) => return Ok((pkg.into(), v)),
            Err(e) => errs.push(format!("{}: {e:#}", ch.name())),
        }
    }
    bail!(
        "package {pkg} not found ({}). The archive keeps only the current kernel ABI of each suite: \
         use an alias (6.1, 6.12, 5.10), or PACKAGE=VERSION for a version still on the mirror, or \
         `--refresh` if the lists are stale",
        errs.join("; ")
    )
}

fn guess_channels(pkg: &str) -> Vec<Channel> {
    let first = if pkg.contains("bpo") {
        Channel::BookwormBackports
    } else if pkg.starts_with("linux-image-5.10") || pkg.starts_with("linux-image-4.19") {
        Channel::Bullseye
    } else {
        Channel::Bookworm
    };
    std::iter::once(first)
        .chain(Channel::ALL.into_iter().filter(|&c| c != first))
        .collect()
}

/// Download (if needed) and extract `pkg=ver`; returns the extracted tree.
fn fetch_package(ch: Channel, arch: Arch, pkg: &str, ver: &str) -> Result<PathBuf> {
    let cache = cache_dir()?;
    let name = match arch {
        Arch::Amd64 => format!("{pkg}_{ver}"),
        _ => format!("{pkg}_{ver}_{arch}"),
    };
    let root = cache.join("kernels").join(sanitize(&name));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let deb = find_deb(&debs, pkg, ver, arch);
    let deb = match deb {
        Some(d) => d,
        None => {
            let apt = Apt::new(ch, arch)?;
            apt.update(false)?;
            eprintln!(
                "vm: downloading {pkg} {ver} ({arch}) from {} ...",
                ch.name()
            );
            let target = format!("{pkg}={ver}");
            if let Err(e) = apt.run_in(&debs, "apt-get", &["download", &target]) {
                // Stale lists are the usual reason; refresh once.
                apt.update(true)?;
                apt.run_in(&debs, "apt-get", &["download", &target])
                    .map_err(|e2| {
                        e2.context(format!("first attempt: {e:#}")).context(format!(
                        "apt-get download {target} failed: the version may have left the archive; \
                         try another kernel, or `--refresh` to re-resolve aliases"
                    ))
                    })?;
            }
            find_deb(&debs, pkg, ver, arch).with_context(|| {
                format!("apt-get download left no {pkg}_*.deb in {}", debs.display())
            })?
        }
    };
    eprintln!("vm: extracting {} ...", deb.display());
    let tmp = root.with_extension(format!("partial{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run_checked(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp),
        "dpkg-deb (package dpkg)",
    )?;
    fs::write(tmp.join(".complete"), format!("{pkg} {ver}\n"))?;
    if fs::rename(&tmp, &root).is_err() {
        // Another run extracted it meanwhile (or a stale incomplete tree is in the way).
        if !root.join(".complete").exists() {
            fs::remove_dir_all(&root)?;
            fs::rename(&tmp, &root)?;
        } else {
            let _ = fs::remove_dir_all(&tmp);
        }
    }
    Ok(root)
}

fn find_deb(dir: &Path, pkg: &str, ver: &str, arch: Arch) -> Option<PathBuf> {
    // apt names files pkg_VERSION_ARCH.deb with ':' in the version encoded as %3a.
    let want = format!("{pkg}_{}_", ver.replace(':', "%3a"));
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            let n = dir_name(p);
            n.starts_with(&want)
                && (n.ends_with(&format!("_{arch}.deb")) || n.ends_with("_all.deb"))
        })
}

/// A private apt configuration: own sources, lists and cache, so the
/// machine's apt state stays untouched.
struct Apt {
    dir: PathBuf,
    opts: Vec<String>,
}

impl Apt {
    fn new(ch: Channel, arch: Arch) -> Result<Self> {
        let (main, security, signed_by) = host_archives()?;
        let dir = match arch {
            Arch::Amd64 => cache_dir()?.join("apt").join(ch.name()),
            _ => cache_dir()?
                .join("apt")
                .join(format!("{}-{arch}", ch.name())),
        };
        for d in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let signed = signed_by
            .map(|k| format!("[signed-by={k}] "))
            .unwrap_or_default();
        let mut list = String::from(
            "# Written by cargo xtask vm: a private list for downloading test kernels.\n",
        );
        for (suite, sec) in ch.suites() {
            let uri = if *sec { &security } else { &main };
            list.push_str(&format!("deb {signed}{uri} {suite} main\n"));
        }
        let src = dir.join("sources.list");
        if fs::read_to_string(&src).ok().as_deref() != Some(list.as_str()) {
            fs::write(&src, &list)?;
            // Sources changed: the old lists no longer match.
            let _ = fs::remove_file(dir.join("lists/.updated"));
        }
        let opts = vec![
            format!("Dir::Etc::SourceList={}", src.display()),
            format!(
                "Dir::Etc::SourceParts={}",
                dir.join("sources.list.d").display()
            ),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "Dir::State::status=/dev/null".into(),
            // The guest's architecture, whatever the host's.
            format!("APT::Architecture={arch}"),
            format!("APT::Architectures={arch}"),
            "APT::Sandbox::User=root".into(),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
        ];
        Ok(Self { dir, opts })
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(tool);
        for o in &self.opts {
            c.arg("-o").arg(o);
        }
        c.args(args).env("LC_ALL", "C");
        c
    }

    fn update(&self, force: bool) -> Result<()> {
        let stamp = self.dir.join("lists/.updated");
        let recent = mtime(&stamp)
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if recent && !force {
            return Ok(());
        }
        eprintln!(
            "vm: apt-get update (private lists in {}) ...",
            self.dir.display()
        );
        let mut c = self.command("apt-get", &["-q", "update"]);
        let out = c.output().map_err(|e| {
            anyhow::anyhow!("cannot run apt-get: {e} (this needs a Debian-family host with apt)")
        })?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        // apt-get update exits 0 even when a suite is missing; look for errors.
        if !out.status.success()
            || text
                .lines()
                .any(|l| l.starts_with("E:") || l.starts_with("Err:"))
        {
            bail!(
                "apt-get update with {} failed:\n{text}\nCheck network access to the archive in /etc/apt/sources.list(.d)",
                self.dir.join("sources.list").display()
            );
        }
        fs::write(&stamp, "")?;
        Ok(())
    }

    fn query(&self, tool: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(tool, args)
            .output()
            .with_context(|| format!("cannot run {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn candidate(&self, pkg: &str) -> Result<String> {
        let policy = self.query("apt-cache", &["policy", pkg])?;
        policy
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .find(|v| !v.is_empty() && *v != "(none)")
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "{pkg} is not in the package lists of {}",
                    self.dir.display()
                )
            })
    }

    fn run_in(&self, cwd: &Path, tool: &str, args: &[&str]) -> Result<()> {
        run_checked(self.command(tool, args).current_dir(cwd), tool)
    }
}

/// The Debian archive (and security archive) URIs the machine itself uses,
/// read from /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources}.
fn host_archives() -> Result<(String, String, Option<String>)> {
    if let Ok(m) = std::env::var("OOMTRACE_VM_MIRROR") {
        let m = m.trim_end_matches('/').to_owned();
        let sec = std::env::var("OOMTRACE_VM_SECURITY_MIRROR")
            .unwrap_or_else(|_| format!("{m}-security"));
        return Ok((m, sec, default_keyring()));
    }
    let mut entries: Vec<(String, Vec<String>, Option<String>)> = Vec::new(); // (uri, suites, signed-by)
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822(&text)),
            Some("list") => entries.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    const CODENAMES: &[&str] = &[
        "buster",
        "bullseye",
        "bookworm",
        "trixie",
        "forky",
        "sid",
        "stable",
        "oldstable",
        "testing",
        "unstable",
    ];
    let is_debian = |s: &str| CODENAMES.contains(&s.split('-').next().unwrap_or(s));
    let main = entries.iter().find(|(_, suites, _)| {
        suites
            .iter()
            .any(|s| is_debian(s) && !s.ends_with("-security") && !s.contains("/updates"))
    });
    let Some((main_uri, _, signed)) = main else {
        bail!(
            "found no Debian archive in /etc/apt/sources.list(.d) to download test kernels from; \
             set OOMTRACE_VM_MIRROR=http://<host>/debian"
        );
    };
    let security = entries
        .iter()
        .find(|(_, suites, _)| suites.iter().any(|s| s.ends_with("-security")))
        .map(|(u, _, _)| u.clone())
        .unwrap_or_else(|| format!("{main_uri}-security"));
    let signed = signed.clone().or_else(default_keyring);
    Ok((main_uri.clone(), security, signed))
}

fn default_keyring() -> Option<String> {
    let k = "/usr/share/keyrings/debian-archive-keyring.gpg";
    Path::new(k).exists().then(|| k.to_owned())
}

fn parse_deb822(text: &str) -> Vec<(String, Vec<String>, Option<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut types_deb = true;
        let mut enabled = true;
        let mut signed = None;
        for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let words = || v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
            match k.trim().to_ascii_lowercase().as_str() {
                "types" => types_deb = v.split_whitespace().any(|t| t == "deb"),
                "uris" => uris = words(),
                "suites" => suites = words(),
                "enabled" => enabled = v.trim() != "no",
                "signed-by" if v.trim().starts_with('/') => signed = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        if types_deb && enabled {
            for u in uris {
                out.push((
                    u.trim_end_matches('/').to_owned(),
                    suites.clone(),
                    signed.clone(),
                ));
            }
        }
    }
    out
}

fn parse_one_line(text: &str) -> Vec<(String, Vec<String>, Option<String>)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut signed = None;
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(r) => {
                let (opts, after) = r.split_once(']').unwrap_or(("", r));
                signed = opts
                    .split_whitespace()
                    .find_map(|o| o.strip_prefix("signed-by="))
                    .map(str::to_owned);
                after
            }
            None => rest,
        };
        let mut w = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (w.next(), w.next()) {
            out.push((
                uri.trim_end_matches('/').to_owned(),
                vec![suite.to_owned()],
                signed,
            ));
        }
    }
    out
}

pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_the_guests_architecture() {
        let Ok(Request::Package(p, v)) = parse_spec("5.10", Arch::Arm64) else {
            panic!("5.10 is a package");
        };
        assert_eq!(
            (p.as_str(), v.as_deref()),
            ("linux-image-5.10.0-32-arm64", Some(PID_ONLY_VERSION))
        );
        let Ok(Request::Package(p, _)) = parse_spec("5.10", Arch::Amd64) else {
            panic!("5.10 is a package");
        };
        assert_eq!(p, "linux-image-5.10.0-32-amd64");
        assert!(matches!(
            parse_spec("6.1", Arch::Arm64),
            Ok(Request::Meta(Channel::Bookworm))
        ));
    }

    #[test]
    fn debs_of_another_architecture_are_not_taken() {
        let dir = std::env::temp_dir().join(format!("oomtrace-find-deb-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp");
        // File names as `apt-get download` wrote them here.
        for f in [
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb",
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb",
        ] {
            fs::write(dir.join(f), "").expect("write");
        }
        let found = |arch| {
            find_deb(&dir, "busybox-static", "1:1.35.0-4+deb12u1+b1", arch).map(|p| dir_name(&p))
        };
        assert_eq!(
            found(Arch::Arm64).as_deref(),
            Some("busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb")
        );
        assert_eq!(
            found(Arch::Amd64).as_deref(),
            Some("busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb")
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_arm64_image_boots_as_it_is() {
        // The first 64 bytes of Debian's vmlinuz-6.1.0-57-arm64 (an EFI-stub
        // Image: "MZ", then the arm64 Image header with "ARM\x64" at 0x38),
        // and the start of the version banner found further in.
        let mut head = vec![0u8; 64];
        head[..8].copy_from_slice(b"MZ\x40\xfa\x56\xa3\x59\x14");
        head[0x10..0x18].copy_from_slice(b"\x00\x00\x01\x02\x00\x00\x00\x00");
        head[0x18..0x1a].copy_from_slice(b"\x0a\x00");
        head[0x38..0x3c].copy_from_slice(b"ARM\x64");
        head[0x3c] = 0x40;
        head.extend_from_slice(b"Linux version 6.1.0-57-arm64 (debian-kernel@lists.debian.org)");
        let dir = std::env::temp_dir();
        let (image, pvh, _, release) =
            arm64_image(Path::new("/k/vmlinuz"), &head, &dir).expect("an Image");
        assert_eq!(image, Path::new("/k/vmlinuz"));
        assert!(!pvh);
        assert_eq!(release.as_deref(), Some("6.1.0-57-arm64"));
        assert!(arm64_image(Path::new("/k/bzImage"), b"not a kernel", &dir).is_err());
    }
}
