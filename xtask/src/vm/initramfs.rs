//! The VM's initramfs: busybox-static, `xtask/vm/init`, and the virtio/9p
//! modules of the kernel (with their dependencies, decompressed), as an
//! uncompressed newc cpio archive cached next to the kernel.
//!
//! A guest of the host's architecture gets the host's busybox and chroots
//! into the host root over 9p. Another architecture's guest (arm64 on an
//! x86_64 host) cannot run the host's programs: its initramfs carries
//! Debian's busybox-static of the guest's architecture (downloaded and
//! extracted, not installed) and stays the guest's root; `etc/oomtrace-root`
//! tells the init so. The agent and the tests come over the repository's 9p
//! share, built for the guest (`cargo xtask test` does).

use super::elf::{self, Elf};
use super::kernel::{self, Kernel, mtime, pipe_through};
use super::{host_root, tool_missing_hint};
use crate::arch::Arch;
use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Modules the init needs to mount the host root: their dependencies
/// (virtio, virtio_ring, netfs, fscache, ...) come from each module's modinfo.
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
const BUSYBOX_CANDIDATES: &[&str] = &[
    "/bin/busybox",
    "/usr/bin/busybox",
    "/usr/lib/initramfs-tools/bin/busybox",
];

pub fn build(kernel: &Kernel, init_script: &Path) -> Result<PathBuf> {
    let busybox = if host_root(kernel.arch) {
        find_static_busybox()?
    } else {
        guest_busybox(kernel.arch)?
    };
    let out = kernel
        .work_dir
        .join(format!("initramfs-{}.cpio", kernel.release));
    let newest_input = [init_script, busybox.as_path(), kernel.image.as_path()]
        .iter()
        .filter_map(|p| mtime(p))
        .max();
    if mtime(&out).is_some_and(|t| Some(t) >= newest_input) {
        return Ok(out);
    }
    let init =
        fs::read(init_script).with_context(|| format!("reading {}", init_script.display()))?;
    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "newroot",
        "proc",
        "run",
        "sys",
        "tmp",
        "var",
        "var/tmp",
    ] {
        cpio.dir(d);
    }
    if !host_root(kernel.arch) {
        cpio.file("etc/oomtrace-root", 0o644, b"initramfs\n");
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.node("dev/console", 0o020600, (5, 1));
    cpio.file("init", 0o755, &init);
    cpio.file("bin/busybox", 0o755, &fs::read(&busybox)?);
    cpio.symlink("bin/sh", "busybox");

    let mut order = Vec::new();
    if let Some(dir) = &kernel.modules_dir {
        for (name, data) in resolve_modules(dir)? {
            let file = format!("{name}.ko");
            cpio.file(&format!("lib/modules/{file}"), 0o644, &data);
            order.push(file);
        }
    }
    let mut list = order.join("\n");
    list.push('\n');
    cpio.file("etc/modules.load", 0o644, list.as_bytes());
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, cpio.finish()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &out)?;
    Ok(out)
}

fn find_static_busybox() -> Result<PathBuf> {
    for c in BUSYBOX_CANDIDATES {
        let p = Path::new(c);
        let Ok(data) = fs::read(p) else { continue };
        // A dynamically linked busybox has a PT_INTERP ("/lib64/ld-linux...").
        if elf::is_elf(&data) && !data.windows(12).any(|w| w == b"/lib64/ld-li") {
            return Ok(p.to_path_buf());
        }
    }
    bail!(
        "no statically linked busybox found (looked at {}): install the busybox-static package",
        BUSYBOX_CANDIDATES.join(", ")
    )
}

/// Debian's busybox-static for `arch`, downloaded and extracted once.
fn guest_busybox(arch: Arch) -> Result<PathBuf> {
    let (tree, version) = kernel::fetch_userland(arch, "busybox-static", false)?;
    let path = tree.join("bin/busybox");
    let data = fs::read(&path).with_context(|| {
        format!(
            "busybox-static {version} ({arch}) has no bin/busybox in {}",
            tree.display()
        )
    })?;
    let e = Elf::parse(&data).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(interp) = e.interp() {
        bail!(
            "{} is dynamically linked ({interp}): the {arch} guest has no C library",
            path.display()
        );
    }
    Ok(path)
}

/// The modules to load, dependencies first, as (name, uncompressed .ko).
fn resolve_modules(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let builtin: HashSet<String> = fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut index = HashMap::new();
    index_modules(&dir.join("kernel"), &mut index)?;

    let mut done = HashSet::new();
    let mut out = Vec::new();
    for root in ROOT_MODULES {
        visit(root, &builtin, &index, &mut done, &mut out, &mut Vec::new()).with_context(|| {
            format!(
                "resolving the modules for the 9p host root in {}",
                dir.display()
            )
        })?;
    }
    Ok(out)
}

fn visit(
    name: &str,
    builtin: &HashSet<String>,
    index: &HashMap<String, PathBuf>,
    done: &mut HashSet<String>,
    out: &mut Vec<(String, Vec<u8>)>,
    stack: &mut Vec<String>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if done.contains(&name) || builtin.contains(&name) {
        return Ok(());
    }
    if stack.contains(&name) {
        bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
    }
    let path = index.get(&name).with_context(|| {
        format!("module {name} is neither built in nor present: this kernel cannot mount the host root over virtio-9p")
    })?;
    let data = read_module(path)?;
    stack.push(name.clone());
    for dep in elf::module_depends(&data).with_context(|| format!("reading {}", path.display()))? {
        visit(&dep, builtin, index, done, out, stack)?;
    }
    stack.pop();
    done.insert(name.clone());
    out.push((name, data));
    Ok(())
}

fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index_modules(&p, index)?;
        } else if let Some(n) = module_name(&p) {
            index.insert(n, p);
        }
    }
    Ok(())
}

/// `.../9pnet_virtio.ko[.xz|.zst|.gz]` -> `9pnet_virtio`
fn module_name(p: &Path) -> Option<String> {
    let f = p.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|s| f.strip_suffix(s))?;
    Some(stem.replace('-', "_"))
}

fn read_module(p: &Path) -> Result<Vec<u8>> {
    let data = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    let name = p.to_string_lossy();
    let (tool, args, pkg): (&str, &[&str], &str) = if name.ends_with(".ko") {
        return Ok(data);
    } else if name.ends_with(".xz") {
        ("xz", &["-dc"], "xz-utils")
    } else if name.ends_with(".zst") {
        ("zstd", &["-dcq"], "zstd")
    } else {
        ("gzip", &["-dc"], "gzip")
    };
    let out = pipe_through(tool, args, &data).with_context(|| tool_missing_hint(tool, pkg))?;
    if !elf::is_elf(&out) {
        bail!(
            "decompressing {} with {tool} gave no ELF module ({})",
            p.display(),
            tool_missing_hint(tool, pkg)
        );
    }
    Ok(out)
}

/// A newc ("070701") cpio archive, built in memory.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data, (0, 0));
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0));
    }

    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, &[], rdev);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}
