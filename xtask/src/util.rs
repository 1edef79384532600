//! Helpers shared by the tasks: building and running commands, root checks,
//! paths.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// Builds a [`std::process::Command`] from a program and its arguments:
/// `cmd!("cargo", "build", "--package", "oomtrace")`. Arguments may be
/// anything `AsRef<OsStr>`; an argument written `..list` is spread.
#[macro_export]
macro_rules! cmd {
    ($program:expr $(, $($rest:tt)*)?) => {{
        #[allow(unused_mut, reason = "a command without arguments is not mutated")]
        let mut command = ::std::process::Command::new($program);
        $( $crate::cmd!(@args command; $($rest)*); )?
        command
    }};
    (@args $c:ident; ) => {};
    (@args $c:ident; ..$list:expr $(, $($rest:tt)*)?) => {
        $c.args($list);
        $( $crate::cmd!(@args $c; $($rest)*); )?
    };
    (@args $c:ident; $arg:expr $(, $($rest:tt)*)?) => {
        $c.arg($arg);
        $( $crate::cmd!(@args $c; $($rest)*); )?
    };
}

/// The command as a person would type it, with the variables it sets.
pub fn display(command: &Command) -> String {
    let mut words: Vec<String> = command
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))))
        .collect();
    words.push(quote(command.get_program()));
    words.extend(command.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints the command on stderr, runs it with inherited stdio and fails with
/// its exit status unless it succeeds.
pub fn run(mut command: Command) -> anyhow::Result<()> {
    let shown = display(&command);
    eprintln!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    check(status, &shown)
}

/// Runs the command quietly (for probes) and returns its stdout; fails with
/// its stderr when it does not succeed.
pub fn read(mut command: Command) -> anyhow::Result<String> {
    let shown = display(&command);
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check(status: ExitStatus, shown: &str) -> anyhow::Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{shown}` failed ({})", describe(status))
    }
}

/// "exit code 3" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// The exit code a shell would report for this status (128 + signal).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where cargo puts build output for this workspace.
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// `$CARGO_HOME`, or `~/.cargo`.
pub fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CARGO_HOME nor HOME is set: set CARGO_HOME")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Looks a program up in `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// "1.2 s" or "3 min 05 s".
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let whole = duration.as_secs();
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_macro_spreads_lists_and_display_quotes() {
        let extra = ["--", "--test-threads=1"];
        let mut command = cmd!("cargo", "test", "-p", "oomtrace", ..extra, "a b");
        command.env("LLVM_PREFIX", "/x/y");
        assert_eq!(
            display(&command),
            "LLVM_PREFIX=/x/y cargo test -p oomtrace -- --test-threads=1 'a b'"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(1234)), "1.2 s");
        assert_eq!(human(Duration::from_secs(185)), "3 min 05 s");
    }
}
