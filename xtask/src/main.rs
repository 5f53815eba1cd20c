//! Project automation for Stagecoach. `cargo xtask --help` lists the commands.

mod crdgen;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Stagecoach project tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write crds/ and the chart's CRDs from the Rust types (--check: fail on drift).
    Gen {
        #[arg(long)]
        check: bool,
    },
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Gen { check } => crdgen::run(check),
    }
}
