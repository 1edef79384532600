//! Project tasks, run as `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `setup`: install what building and testing needs ([`setup`]);
//! - `build`, `run`: build the agent, run it as root ([`run`]);
//! - `test`: unit, privileged host and VM tests ([`test`]);
//! - `vm`: run a command inside a throwaway VM, amd64 or arm64 ([`vm`]);
//! - `image`: the multi-arch container image ([`image`], [`arch`]).

mod arch;
mod bench;
mod deploy_check;
mod image;
mod run;
mod setup;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(bin_name = "cargo xtask", about = "oomtrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing to build and test (nightly rust-src,
    /// bpf-linker, Debian packages as root, tracefs); idempotent.
    Setup,
    /// Set up, then build the agent with its eBPF object.
    Build {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
        /// Show the nested eBPF build's output.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Set up, build (release), then run `oomtrace ARGS` as root.
    Run {
        /// Show the nested eBPF build's output.
        #[arg(short, long)]
        verbose: bool,
        /// Arguments for oomtrace, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the unit, privileged host and VM tests.
    Test(test::TestArgs),
    /// Boot a kernel under qemu and run a command inside.
    Vm(vm::VmArgs),
    /// Benchmark the agent on real OOM kills: throughput, losses, delay, memory, CPU.
    Bench(bench::BenchArgs),
    /// Set up, then build the container image for each architecture from
    /// static musl binaries, and a multi-arch manifest list, with podman.
    Image(image::ImageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup().map(|_| 0),
        Task::Build { release, verbose } => run::build(release, verbose).map(|()| 0),
        Task::Run { verbose, args } => run::run(&args, verbose),
        Task::Test(args) => test::test(&args),
        Task::Vm(args) => vm::vm_command(args),
        Task::Bench(args) => bench::bench(&args),
        Task::Image(args) => image::image(&args),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Task};

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_everything_after_the_dashes_to_the_agent() {
        for argv in [
            &["xtask", "run", "--", "--format", "text", "--count", "1"][..],
            &["xtask", "run", "--format", "text", "--count", "1"][..],
        ] {
            let Ok(Cli {
                task:
                    Task::Run {
                        args,
                        verbose: false,
                    },
            }) = Cli::try_parse_from(argv)
            else {
                panic!("{argv:?} did not parse as `run`");
            };
            assert_eq!(args, ["--format", "text", "--count", "1"]);
        }
    }

    #[test]
    fn verbose_shows_the_ebpf_build_and_is_not_passed_to_the_agent() {
        let Ok(Cli {
            task: Task::Run {
                args,
                verbose: true,
            },
        }) = Cli::try_parse_from(["xtask", "run", "-v", "--", "--format", "json"])
        else {
            panic!("`run -v` did not parse");
        };
        assert_eq!(args, ["--format", "json"]);
    }

    #[test]
    fn test_options() {
        assert!(Cli::try_parse_from(["xtask", "test", "--no-vm", "--allow-skip"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "test", "--only", "host"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "test", "--only", "vm", "--no-vm"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "test", "--only", "bench"]).is_err());
    }

    #[test]
    fn image_options() {
        let Ok(Cli {
            task: Task::Image(args),
        }) = Cli::try_parse_from(["xtask", "image"])
        else {
            panic!("`image` did not parse");
        };
        assert_eq!(
            args.arches,
            [crate::arch::Arch::Amd64, crate::arch::Arch::Arm64]
        );
        assert_eq!(args.tag, "ghcr.io/oomtrace/oomtrace:0.1.0");
        if std::env::var_os("OOMTRACE_IMAGE_PROFILE").is_none() {
            // What is published is the release build.
            assert_eq!(args.profile, crate::arch::Profile::Release);
        }
        let Ok(Cli {
            task: Task::Image(args),
        }) = Cli::try_parse_from([
            "xtask",
            "image",
            "--arch",
            "aarch64",
            "--tag",
            "localhost/o:1",
            "--podman-args",
            "--root /x --storage-driver vfs",
            "--profile",
            "test-image",
        ])
        else {
            panic!("`image --arch aarch64` did not parse");
        };
        assert_eq!(args.arches, [crate::arch::Arch::Arm64]);
        assert_eq!(args.podman_args, "--root /x --storage-driver vfs");
        assert_eq!(args.profile, crate::arch::Profile::TestImage);
        assert!(Cli::try_parse_from(["xtask", "image", "--arch", "riscv64"]).is_err());
    }
}
