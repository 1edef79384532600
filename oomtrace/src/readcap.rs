//! Reading whole files with a size cap. A file that should be small (a
//! tracefs `format` file, a `/proc` or cgroup file, the kernel's BTF) but is
//! not, because the path is wrong or the file hostile, is refused rather than
//! read into memory. Files in `/proc` and `/sys` report a size of 0, so the
//! cap is enforced while reading, never from the metadata.

use std::{
    fs::File,
    io::{self, Read as _},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

/// What a whole-file read allocates first: a `/proc` or cgroup file the
/// agent reads at a kill (`status`, `meminfo`, `memory.stat`) fits, so it
/// takes one `read()` and the one that finds its end. Growing from empty, as
/// `std::fs::read_to_string` does, starts at 32 bytes and doubles: 8 to 10
/// `read()` calls for a 1.5 KiB `/proc/<pid>/status` (37 per kill in a
/// 300-kill `cargo xtask bench`, 15 with this, all files together).
const FIRST_READ: u64 = 8192;

/// Reads all of `path`, failing with [`io::ErrorKind::FileTooLarge`] when it
/// holds more than `limit` bytes.
pub fn read_capped(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_all(File::open(path)?, limit)
}

/// All of `reader`, at most `limit` bytes.
fn read_all(reader: impl io::Read, limit: u64) -> io::Result<Vec<u8>> {
    let first = limit.saturating_add(1).min(FIRST_READ);
    let mut out = Vec::with_capacity(usize::try_from(first).unwrap_or(0));
    reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(out)
}

/// Most a `/proc` or cgroup text file read at a kill may hold: a wrong or
/// hostile path (a FIFO, a huge file) is refused.
pub const KERNEL_TEXT_MAX: u64 = 1 << 20;

/// A `/proc` or cgroup text file, read in as few `read()` calls as it takes
/// ([`read_capped`] with [`KERNEL_TEXT_MAX`]).
pub fn read_kernel_text(path: impl AsRef<Path>) -> io::Result<String> {
    read_to_string_capped(path.as_ref(), KERNEL_TEXT_MAX)
}

/// [`read_capped`] for a text file; invalid UTF-8 is an
/// [`io::ErrorKind::InvalidData`] error, as with [`std::fs::read_to_string`].
pub fn read_to_string_capped(path: &Path, limit: u64) -> io::Result<String> {
    text(read_capped(path, limit)?)
}

fn text(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// How many files [`read_kernel_text_kept`] keeps open.
const KEPT_FILES: usize = 64;

/// The files [`read_kernel_text_kept`] keeps open.
static KEPT: KeptFiles = KeptFiles::new(KEPT_FILES);

/// [`read_kernel_text`] of a file the agent reads again and again
/// (`/proc/meminfo`, a cgroup's `memory.stat`), kept open: each read is a
/// `pread()` from offset 0, for which the kernel makes the text anew
/// (`seq_read_iter()` restarts at offset 0), without the path walk of
/// `open()` and the `close()`. In a kill storm these were half the system
/// calls of a lookup, each several times its cost at rest.
///
/// The last [`KEPT_FILES`] paths stay open. A file that fails to read (a
/// cgroup removed since: `ENODEV`, even when one was made again at the
/// same path) is opened again, once. Only for files whose open state holds
/// nothing of the kernel's: not `cgroup.procs` (its open file keeps a task
/// iterator, which pins a task and the cgroup's css_set), not `/proc/<pid>`
/// files (a pid is recycled).
pub fn read_kernel_text_kept(path: &Path) -> io::Result<String> {
    KEPT.read(path)
}

/// Open files by path, the one read last first.
struct KeptFiles {
    files: Mutex<Vec<(PathBuf, Arc<File>)>>,
    max: usize,
}

impl KeptFiles {
    const fn new(max: usize) -> Self {
        Self {
            files: Mutex::new(Vec::new()),
            max,
        }
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        if let Some(file) = self.kept(path) {
            match read_at_start(&file, KERNEL_TEXT_MAX) {
                Ok(text) => return Ok(text),
                Err(e) if e.kind() == io::ErrorKind::FileTooLarge => return Err(e),
                Err(_) => self.forget(path),
            }
        }
        let file = Arc::new(File::open(path)?);
        let text = read_at_start(&file, KERNEL_TEXT_MAX)?;
        self.keep(path, file);
        Ok(text)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PathBuf, Arc<File>)>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kept file of `path`, moved to the front.
    fn kept(&self, path: &Path) -> Option<Arc<File>> {
        let mut files = self.lock();
        let i = files.iter().position(|(p, _)| p == path)?;
        let entry = files.remove(i);
        let file = Arc::clone(&entry.1);
        files.insert(0, entry);
        Some(file)
    }

    fn keep(&self, path: &Path, file: Arc<File>) {
        let mut files = self.lock();
        files.retain(|(p, _)| p != path);
        files.insert(0, (path.to_path_buf(), file));
        files.truncate(self.max);
    }

    fn forget(&self, path: &Path) {
        self.lock().retain(|(p, _)| p != path);
    }
}

/// All of `file` from offset 0, at most `limit` bytes, as text.
fn read_at_start(file: &File, limit: u64) -> io::Result<String> {
    text(read_all(AtStart { file, pos: 0 }, limit)?)
}

/// `file` read with `pread()` from offset 0, whatever its own offset.
struct AtStart<'a> {
    file: &'a File,
    pos: u64,
}

impl io::Read for AtStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn reads_up_to_the_cap_and_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_capped(&path, 10).unwrap(), b"0123456789");
        assert_eq!(read_to_string_capped(&path, 100).unwrap(), "0123456789");
        let err = read_capped(&path, 9).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(err.to_string(), "larger than 9 bytes");
        std::fs::write(&path, b"\xff").unwrap();
        assert_eq!(
            read_to_string_capped(&path, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn proc_files_of_size_zero_are_read() {
        // /proc files report st_size 0 and still have content.
        let text = read_to_string_capped(Path::new("/proc/self/stat"), 4096).unwrap();
        assert!(text.starts_with(&std::process::id().to_string()), "{text}");
        assert!(matches!(
            read_capped(Path::new("/proc/self/stat"), 4),
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge
        ));
    }

    #[test]
    fn kept_files_are_read_anew_and_opened_again_when_gone() {
        let kept = KeptFiles::new(4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.stat");
        std::fs::write(&path, b"anon 1\n").unwrap();
        assert_eq!(kept.read(&path).unwrap(), "anon 1\n");
        // Rewritten in place: the kept file reads the new text from offset 0.
        std::fs::write(&path, b"anon 22\n").unwrap();
        assert_eq!(kept.read(&path).unwrap(), "anon 22\n");
        assert!(kept.kept(&path).is_some());
        // Replaced by another file: a kept file reads its own, and a cgroup
        // file of a removed cgroup fails (ENODEV); what fails is reopened.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            kept.read(&path).unwrap(),
            "anon 22\n",
            "an unlinked regular file stays readable: the kernel's files fail instead"
        );
        kept.forget(&path);
        assert_eq!(
            kept.read(&path).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(kept.kept(&path).is_none(), "a failed open keeps nothing");
    }

    #[test]
    fn kept_files_read_proc_text_whole_and_keep_the_cap() {
        let meminfo = Path::new("/proc/meminfo");
        let first = read_kernel_text_kept(meminfo).unwrap();
        let again = read_kernel_text_kept(meminfo).unwrap();
        assert!(first.starts_with("MemTotal:") && again.starts_with("MemTotal:"));
        assert_eq!(first.lines().count(), again.lines().count());
        // More than the first buffer: grown, and refused over the cap.
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 20_000]).unwrap();
        let file = File::open(&big).unwrap();
        assert_eq!(read_at_start(&file, 20_000).unwrap().len(), 20_000);
        assert_eq!(
            read_at_start(&file, 19_999).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
    }

    #[test]
    fn no_more_than_the_last_files_read_stay_open() {
        let kept = KeptFiles::new(KEPT_FILES);
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..=KEPT_FILES)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, i.to_string()).unwrap();
                p
            })
            .collect();
        for p in &paths {
            kept.read(p).unwrap();
        }
        assert!(kept.kept(&paths[0]).is_none(), "the oldest was closed");
        assert!(kept.kept(&paths[KEPT_FILES]).is_some());
        assert_eq!(kept.lock().len(), KEPT_FILES);
    }

    /// A real cgroup removed and made again at the same path: the kept
    /// file fails (ENODEV) and the new cgroup's file is opened.
    #[test]
    fn a_kept_cgroup_file_of_a_removed_cgroup_is_opened_again() {
        let Some(cgfs) = crate::cgroupfs::CgroupFs::find(None) else {
            eprintln!("skipped: no memory controller mounted");
            return;
        };
        let dir = cgfs.dir(&format!("/oomtrace-unit-kept-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("skipped: cannot make a cgroup ({e}): run as root");
            return;
        }
        let stat = dir.join("memory.stat");
        let kept = KeptFiles::new(4);
        let first = kept.read(&stat);
        let old = kept.kept(&stat).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        let gone = read_at_start(&old, KERNEL_TEXT_MAX).map_err(|e| e.raw_os_error());
        std::fs::create_dir(&dir).unwrap();
        let again = kept.read(&stat);
        let reopened = kept.kept(&stat).is_some_and(|f| !Arc::ptr_eq(&f, &old));
        std::fs::remove_dir(&dir).unwrap();
        assert!(first.unwrap().contains("cache"));
        assert_eq!(gone, Err(Some(libc::ENODEV)));
        assert!(again.unwrap().contains("cache"));
        assert!(reopened);
    }
}
