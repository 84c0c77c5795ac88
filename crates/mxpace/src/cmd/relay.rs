//! Entry points (not built yet).

use std::process::ExitCode;

/// Flags.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Flags.
#[derive(clap::Args, Debug)]
pub struct InitArgs {}

/// Flags.
#[derive(clap::Args, Debug)]
pub struct QueueArgs {}

/// Not built yet.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

/// Not built yet.
pub fn init(_args: InitArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

/// Not built yet.
pub fn queue(_args: QueueArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
