use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use oomtrace::{
    agent,
    cli::{Cli, Command},
    cmd::doctor,
    cmd::rank,
    enrich::podnames::PodNames,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            // kube-client logs every failed request at ERROR; oomtrace::kube
            // reports an unreachable API server once instead.
            EnvFilter::try_from_env("OOMTRACE_LOG")
                .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
                .unwrap_or_else(|_| EnvFilter::new("info"))
                .add_directive(oomtrace::kube::log_directive()),
        )
        .init();
    match cli.command {
        Some(Command::Doctor(args)) => {
            if doctor::run(&args, &cli.trace) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::Rank(mut args)) => {
            // The global `--proc` (OOMTRACE_PROC) names the host's /proc for
            // the agent; rank honours it unless its own --proc-root is set.
            if args.proc_root == std::path::Path::new("/proc") {
                args.proc_root = cli.trace.paths.proc_root.clone();
            }
            args.cgroup_root = cli.trace.paths.cgroup_root.clone();
            let names = rank::WithPodNames::new(
                PodNames::new()
                    .with_pods_dir(cli.trace.paths.pod_logs.clone())
                    .with_containers_dir(cli.trace.paths.container_logs.clone()),
            );
            match rank::run_with(&args, &names) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("oomtrace rank: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            // One worker: the async tasks (ring draining, correlation, the
            // metrics server, the pod watch) are light, and everything that
            // blocks has a thread of its own. A second worker woke up to
            // steal work at each input: 6.6 worker runs per kill in a storm,
            // 4.1 with one (`cargo xtask bench`).
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("oomtrace: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(agent::run(cli.trace)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("oomtrace: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
