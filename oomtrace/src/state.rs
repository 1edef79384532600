//! What the agent keeps across restarts (`--state-dir`): where it has read
//! the kernel log up to and what it has reported, and the kernel's kill
//! counter it compares its reports with ([`crate::ledger`]).
//!
//! One small JSON file, `state.json`, replaced atomically: written to a
//! temporary file in the same directory, then renamed over the old one, so
//! a crash at any moment leaves either the old state or the new one, never
//! a mix. It is written after each report (the report first: a crash in
//! between reports that kill again after the restart rather than never).
//! The file and the directory are `fsync`ed at most once a second and at
//! exit, not after every report: an fsync costs milliseconds (18 ms for the
//! pair on this project's CI disk), a storm brings tens of kills a second,
//! and what the fsync protects against, a power loss, also reboots the
//! node: the next start then finds another boot id and replays this boot's
//! whole kernel log whatever the file says, so only the boot id must
//! survive it, and a file lost or torn by it reads as no state.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The file in the state directory.
pub const FILE: &str = "state.json";
/// The format of the file; a file of another version reads as no state.
pub const VERSION: u32 = 1;
/// Largest state file read (a few KiB in practice; bounded sets inside).
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum StateError {
    #[error(
        "cannot use --state-dir {}: {source}: give a writable directory (the DaemonSet mounts a hostPath such as /var/lib/oomtrace), or leave --state-dir unset to keep no state", dir.display()
    )]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot read {}: {source}: check its permissions, or remove it to start afresh (kills while oomtrace was down are then not replayed)", path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not a state file of this oomtrace ({why}): remove it to start afresh (kills while oomtrace was down are then not replayed)", path.display()
    )]
    Invalid { path: PathBuf, why: String },
    #[error(
        "cannot write {}: {source}: free space or fix permissions in the state directory; until then a restart may report kills again or count them as unreported", path.display()
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a restart continues from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// `/proc/sys/kernel/random/boot_id` of the boot this state is about.
    pub boot_id: String,
    /// Milliseconds since the Unix epoch when counting started in this boot.
    pub since_unix_ms: u64,
    /// The kernel log as read so far; `None` when it was not read (`--no-kmsg`).
    pub kmsg: Option<KmsgMark>,
    /// The kernel's kill counter and what was done about its kills.
    pub oom_kill: KillCount,
}

/// How far the kernel log's kill lines have been dealt with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsgMark {
    /// Every kill line at or below this sequence number was reported (or
    /// was in the log before counting started); `None`: none yet, the log
    /// held no record then.
    pub read_up_to: Option<u64>,
    /// Kill lines above `read_up_to` that were reported already.
    pub reported_above: Vec<u64>,
    /// Kills reported without their kill line (the eBPF hooks saw them
    /// first): `(pid, CLOCK_MONOTONIC ns of the kill)`. Their line, read
    /// back in a replay, is not reported again.
    pub unlined: Vec<(u32, u64)>,
}

/// `/proc/vmstat` `oom_kill` and the kills accounted for since `base`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillCount {
    /// The counter's value when counting started (0 after a reboot).
    pub base: u64,
    /// Kernel OOM kills reported since then.
    pub reported: u64,
    /// Kills the kernel counted that no source reported, since then.
    pub unreported: u64,
    /// Second kill lines of a task killed twice in one OOM (the chosen
    /// task of a memory.oom.group kill), which the kernel counts twice.
    #[serde(default)]
    pub repeated: u64,
}

/// The state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// Saved since the last fsync.
    unsynced: bool,
}

impl StateDir {
    /// Creates `dir` if needed and checks that a file can be written there.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let err = |source| StateError::Dir {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let probe = dir.join(".oomtrace-write-test");
        fs::write(&probe, b"").map_err(err)?;
        fs::remove_file(&probe).map_err(err)?;
        Ok(Self {
            dir: dir.to_owned(),
            unsynced: false,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The saved state; `None` when there is none (a first start).
    pub fn load(&self) -> Result<Option<State>, StateError> {
        let path = self.path();
        let text = match crate::readcap::read_to_string_capped(&path, MAX_BYTES) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| StateError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if state.version != VERSION {
            return Err(StateError::Invalid {
                path,
                why: format!("version {}, expected {VERSION}", state.version),
            });
        }
        Ok(Some(state))
    }

    /// Replaces the saved state atomically (temporary file, then rename).
    pub fn save(&mut self, state: &State) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            serde_json::to_writer(&mut f, state).map_err(io::Error::other)?;
            f.write_all(b"\n")?;
            drop(f);
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })?;
        self.unsynced = true;
        Ok(())
    }

    /// Makes the last save durable: fsync of the file and of the directory
    /// (which holds the rename). Nothing to do when nothing was saved since.
    pub fn sync(&mut self) -> Result<(), StateError> {
        if !self.unsynced {
            return Ok(());
        }
        let path = self.path();
        let sync = |p: &Path| File::open(p).and_then(|f| f.sync_all());
        sync(&path)
            .and_then(|()| sync(&self.dir))
            .map_err(|source| StateError::Write { path, source })?;
        self.unsynced = false;
        Ok(())
    }
}

/// The boot id (`/proc/sys/kernel/random/boot_id` of the node's procfs).
pub fn boot_id(proc_root: &Path) -> io::Result<String> {
    let text =
        crate::readcap::read_to_string_capped(&proc_root.join("sys/kernel/random/boot_id"), 4096)?;
    let id = text.trim();
    if id.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty boot id"));
    }
    Ok(id.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            version: VERSION,
            // A real boot id (this project's CI host).
            boot_id: "f3d5650f-fc1e-4f44-9919-70cfe6135970".into(),
            since_unix_ms: 1_764_329_000_000,
            kmsg: Some(KmsgMark {
                read_up_to: Some(60_786),
                reported_above: vec![60_790, 60_795],
                unlined: vec![(21_471, 10_978_941_777_000)],
            }),
            oom_kill: KillCount {
                base: 2605,
                reported: 12,
                unreported: 1,
                repeated: 0,
            },
        }
    }

    #[test]
    fn a_saved_state_loads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut sd = StateDir::open(&dir.path().join("new/sub")).unwrap();
        assert_eq!(sd.load().unwrap(), None, "a first start");
        sd.save(&sample()).unwrap();
        assert_eq!(sd.load().unwrap(), Some(sample()));
        let mut later = sample();
        later.oom_kill.reported = 13;
        sd.save(&later).unwrap();
        sd.sync().unwrap();
        assert_eq!(sd.load().unwrap(), Some(later));
        let names: Vec<_> = fs::read_dir(dir.path().join("new/sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [FILE], "no temporary file is left behind");
    }

    #[test]
    fn a_torn_or_foreign_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        fs::write(sd.path(), b"{\"version\":1,\"boot_id\":\"f3d5").unwrap();
        let msg = sd.load().unwrap_err().to_string();
        assert!(
            msg.contains("is not a state file of this oomtrace"),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "remove it to start afresh (kills while oomtrace was down are then not replayed)"
            ),
            "{msg}"
        );
        let mut other = sample();
        other.version = 7;
        fs::write(sd.path(), serde_json::to_vec(&other).unwrap()).unwrap();
        let msg = sd.load().unwrap_err().to_string();
        assert!(msg.contains("version 7, expected 1"), "{msg}");
    }

    #[test]
    fn an_unusable_directory_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let msg = StateDir::open(&file.join("state")).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot use --state-dir {}/state: ",
                file.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("leave --state-dir unset to keep no state"),
            "{msg}"
        );
    }

    #[test]
    fn the_boot_id_is_read_from_the_nodes_procfs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sys/kernel/random");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("boot_id"), "f3d5650f-fc1e-4f44-9919-70cfe6135970\n").unwrap();
        assert_eq!(
            boot_id(dir.path()).unwrap(),
            "f3d5650f-fc1e-4f44-9919-70cfe6135970"
        );
        fs::write(p.join("boot_id"), "\n").unwrap();
        assert!(boot_id(dir.path()).is_err());
        assert_eq!(boot_id(Path::new("/proc")).unwrap().len(), 36);
    }
}
