//! Just enough ELF64 (little-endian) reading for the VM runner and the image
//! build: section lookup (`.BTF`, `.modinfo`), ELF notes (the PVH entry note
//! of a vmlinux), the machine and interpreter of an executable, and the
//! function symbols of an eBPF object.

use anyhow::{Context, Result, bail};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point qemu needs to boot a vmlinux directly.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_NOTE: u32 = 4;
const PT_INTERP: u32 = 3;
const SHT_SYMTAB: u32 = 2;
const STT_FUNC: u8 = 2;
/// `e_machine` values.
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
pub const EM_BPF: u16 = 247;

pub struct Elf<'a> {
    data: &'a [u8],
    machine: u16,
    /// Where the file's last part (a section or the section header table) ends.
    end: usize,
    sections: Vec<Section>,
    /// (offset, size) of every PT_NOTE segment.
    note_segments: Vec<(usize, usize)>,
    /// The program interpreter (PT_INTERP) of a dynamically linked executable.
    interp: Option<String>,
}

struct Section {
    name: String,
    kind: u32,
    offset: usize,
    size: usize,
    /// SHT_SYMTAB: the section index of its string table.
    link: usize,
    /// SHT_NOBITS sections occupy no file bytes.
    nobits: bool,
}

fn u16_at(d: &[u8], off: usize) -> Result<u16> {
    let b = d.get(off..off + 2).context("ELF truncated")?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(d: &[u8], off: usize) -> Result<u32> {
    let b = d.get(off..off + 4).context("ELF truncated")?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(d: &[u8], off: usize) -> Result<u64> {
    let b = d.get(off..off + 8).context("ELF truncated")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn usize_at(d: &[u8], off: usize) -> Result<usize> {
    usize::try_from(u64_at(d, off)?).context("ELF offset does not fit in usize")
}

pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

impl<'a> Elf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        if !is_elf(data) {
            bail!("not an ELF file");
        }
        if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
            bail!("not a little-endian ELF64 file");
        }
        let machine = u16_at(data, 0x12)?;
        let phoff = usize_at(data, 0x20)?;
        let shoff = usize_at(data, 0x28)?;
        let phentsize = usize::from(u16_at(data, 0x36)?);
        let phnum = usize::from(u16_at(data, 0x38)?);
        let shentsize = usize::from(u16_at(data, 0x3a)?);
        let shnum = usize::from(u16_at(data, 0x3c)?);
        let shstrndx = usize::from(u16_at(data, 0x3e)?);

        let mut note_segments = Vec::new();
        let mut interp = None;
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            match u32_at(data, ph)? {
                PT_NOTE => {
                    note_segments.push((usize_at(data, ph + 0x08)?, usize_at(data, ph + 0x20)?))
                }
                PT_INTERP => {
                    let (off, size) = (usize_at(data, ph + 0x08)?, usize_at(data, ph + 0x20)?);
                    let path = data
                        .get(off..off.saturating_add(size))
                        .context("ELF interpreter is outside the file (truncated?)")?;
                    let path = path.split(|&b| b == 0).next().unwrap_or_default();
                    interp = Some(String::from_utf8_lossy(path).into_owned());
                }
                _ => {}
            }
        }

        let mut raw = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let sh = shoff + i * shentsize;
            let name = u32_at(data, sh)? as usize;
            let kind = u32_at(data, sh + 4)?;
            raw.push((
                name,
                kind,
                usize_at(data, sh + 0x18)?,
                usize_at(data, sh + 0x20)?,
                u32_at(data, sh + 0x28)? as usize,
            ));
        }
        let mut end = shoff.saturating_add(shnum * shentsize);
        for &(_, kind, offset, size, _) in &raw {
            if kind != 8 {
                end = end.max(offset.saturating_add(size));
            }
        }
        let mut sections = Vec::with_capacity(shnum);
        if let Some(&(_, _, str_off, str_size, _)) = raw.get(shstrndx) {
            let strtab = data
                .get(str_off..str_off + str_size)
                .context("ELF section name table is outside the file (truncated?)")?;
            for &(name, kind, offset, size, link) in &raw {
                let nobits = kind == 8;
                if !nobits && offset.checked_add(size).is_none_or(|end| end > data.len()) {
                    bail!("ELF section extends past the end of the file (truncated?)");
                }
                let name = strtab
                    .get(name..)
                    .and_then(|s| s.split(|&b| b == 0).next())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .unwrap_or_default();
                sections.push(Section {
                    name,
                    kind,
                    offset,
                    size,
                    link,
                    nobits,
                });
            }
        }
        Ok(Self {
            data,
            machine,
            end,
            sections,
            note_segments,
            interp,
        })
    }

    /// `e_machine`: [`EM_X86_64`], [`EM_AARCH64`], [`EM_BPF`], ...
    pub fn machine(&self) -> u16 {
        self.machine
    }

    /// The file's size as its headers describe it (an ELF file embedded in
    /// another ends there).
    pub fn file_size(&self) -> usize {
        self.end.min(self.data.len())
    }

    /// The program interpreter of a dynamically linked executable (None: static).
    pub fn interp(&self) -> Option<&str> {
        self.interp.as_deref()
    }

    /// The function symbols defined in section `name`, as (symbol, code).
    pub fn functions_in(&self, section: &str) -> Result<Vec<(String, &'a [u8])>> {
        let Some(index) = self.sections.iter().position(|s| s.name == section) else {
            return Ok(Vec::new());
        };
        let code = self.section(section).unwrap_or_default();
        let symtab = self
            .sections
            .iter()
            .find(|s| s.kind == SHT_SYMTAB)
            .context("ELF file has no symbol table")?;
        let syms = self
            .data
            .get(symtab.offset..symtab.offset + symtab.size)
            .context("ELF symbol table is outside the file")?;
        let strtab = self
            .sections
            .get(symtab.link)
            .and_then(|s| self.data.get(s.offset..s.offset + s.size))
            .context("ELF symbol names are outside the file")?;
        let mut out = Vec::new();
        for sym in syms.chunks_exact(24) {
            let (info, shndx) = (sym[4], u16_at(sym, 6)?);
            if info & 0xf != STT_FUNC || usize::from(shndx) != index {
                continue;
            }
            let name_off = u32_at(sym, 0)? as usize;
            let (value, size) = (usize_at(sym, 8)?, usize_at(sym, 16)?);
            let name = strtab
                .get(name_off..)
                .and_then(|s| s.split(|&b| b == 0).next())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default();
            let body = code
                .get(value..value.saturating_add(size))
                .with_context(|| format!("symbol {name} lies outside section {section}"))?;
            out.push((name, body));
        }
        Ok(out)
    }

    pub fn section(&self, name: &str) -> Option<&'a [u8]> {
        let s = self.sections.iter().find(|s| s.name == name && !s.nobits)?;
        self.data.get(s.offset..s.offset + s.size)
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s.name == name && s.size > 0)
    }

    /// Whether the image carries the PVH entry note, i.e. qemu can boot it as an ELF.
    pub fn has_pvh_note(&self) -> bool {
        self.note_segments.iter().any(|&(off, size)| {
            let Some(notes) = self.data.get(off..off + size) else {
                return false;
            };
            let mut p = 0;
            while p + 12 <= notes.len() {
                let (Ok(namesz), Ok(descsz), Ok(kind)) =
                    (u32_at(notes, p), u32_at(notes, p + 4), u32_at(notes, p + 8))
                else {
                    return false;
                };
                let name = notes
                    .get(p + 12..p + 12 + namesz as usize)
                    .unwrap_or_default();
                if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
                    return true;
                }
                p += 12
                    + (namesz as usize).next_multiple_of(4)
                    + (descsz as usize).next_multiple_of(4);
            }
            false
        })
    }
}

/// The `depends=` list of a kernel module's `.modinfo` section.
pub fn module_depends(ko: &[u8]) -> Result<Vec<String>> {
    let elf = Elf::parse(ko)?;
    let modinfo = elf
        .section(".modinfo")
        .context("module has no .modinfo section")?;
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect())
}
