//! `cargo xtask build` and `cargo xtask run`: set up, build the agent (the
//! eBPF object comes with it, from `oomtrace/build.rs`), run it as root.

use std::{
    process::Command,
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup, util};

/// Builds the agent; returns nothing but fails as cargo did. With
/// `verbose`, the nested eBPF build's output is shown (oomtrace/build.rs).
pub fn build(release: bool, verbose: bool) -> anyhow::Result<()> {
    setup::setup()?;
    cargo_build(release, verbose)
}

fn cargo_build(release: bool, verbose: bool) -> anyhow::Result<()> {
    let mut c = cmd!("cargo", "build", "--package", "oomtrace");
    if release {
        c.arg("--release");
    }
    if verbose {
        c.env("OOMTRACE_BUILD_VERBOSE", "1");
    }
    c.current_dir(util::repo_root());
    util::run(c)
}

/// Sets up, builds (release) and runs `oomtrace ARGS` as root; returns its
/// exit code (128 + signal when a signal ended it).
pub fn run(args: &[String], verbose: bool) -> anyhow::Result<i32> {
    setup::setup()?;
    cargo_build(true, verbose)?;
    let agent = util::target_dir().join("release/oomtrace");
    let mut command = if util::is_root() {
        cmd!(&agent, ..args)
    } else {
        // Only the agent runs as root; setup and the build stay the user's.
        if util::which("sudo").is_none() {
            bail!("oomtrace needs root and sudo is not installed: run `cargo xtask run` as root");
        }
        cmd!("sudo", "-E", &agent, ..args)
    };
    eprintln!("$ {}", util::display(&command));
    let status = spawn_and_wait(&mut command)?;
    Ok(util::exit_code(status))
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let child = CHILD.load(Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our own child's.
        unsafe { libc::kill(child, signal) };
    }
}

/// Runs the child in our process group, so a Ctrl-C at the terminal reaches
/// it directly; meanwhile xtask ignores SIGINT (the child decides when to
/// stop) and passes a SIGTERM sent to xtask alone on to the child.
fn spawn_and_wait(command: &mut Command) -> anyhow::Result<std::process::ExitStatus> {
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{}`", util::display(command)))?;
    // Set after spawning: an ignored signal would be inherited across exec.
    CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::Relaxed);
    // SAFETY: `forward` only calls async-signal-safe functions; the
    // sigaction struct is fully initialised before use.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = forward as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
    let status = child.wait().context("waiting for the agent")?;
    // SAFETY: restoring default dispositions has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
    CHILD.store(0, Ordering::Relaxed);
    Ok(status)
}
