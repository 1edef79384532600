//! Reading whole files with a size cap. A file that should be small (a
//! tracefs `format` file, a `/proc` or cgroup file, the kernel's BTF) but is
//! not, because the path is wrong or the file hostile, is refused rather than
//! read into memory. Files in `/proc` and `/sys` report a size of 0, so the
//! cap is enforced while reading, never from the metadata.

use std::{
    fs::File,
    io::{self, Read as _},
    path::Path,
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
    let first = limit.saturating_add(1).min(FIRST_READ);
    let mut out = Vec::with_capacity(usize::try_from(first).unwrap_or(0));
    File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)?;
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
    String::from_utf8(read_capped(path, limit)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
}
