//! `stagecoach`: the Stagecoach operator binary.

mod admin;
mod archive;
mod audit;
mod cli;
mod client;
mod context;
mod controller;
mod error;
mod events;
mod gates;
mod kill_after_writes;
mod leader;
mod logging;
mod metrics;
mod notify;
mod ofrep;
mod operator;
mod reporting;
mod retry;
mod shutdown;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, RunArgs};

/// jemalloc rather than the system allocator, built to give freed memory back to the
/// system (`JEMALLOC_SYS_WITH_MALLOC_CONF` in .cargo/config.toml and the Dockerfile): see
/// the `tikv-jemallocator` line in Cargo.toml. Built without the
/// `jemalloc` feature the system allocator is used, which is what heap profilers such as
/// heaptrack see (`cargo build --no-default-features`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Version => {
            println!("stagecoach {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(error) = logging::init(args.log_format) {
        eprintln!("stagecoach: {error:#}");
        return ExitCode::FAILURE;
    }
    // Before the runtime starts, so that a panic anywhere is reported; dropped last, which
    // sends what is still queued.
    let _sentry = match reporting::init(&args.sentry) {
        Ok(guard) => guard,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cannot start error reporting");
            return ExitCode::FAILURE;
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(operator::run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "stagecoach stopped with an error"
            );
            ExitCode::FAILURE
        }
    }
}
