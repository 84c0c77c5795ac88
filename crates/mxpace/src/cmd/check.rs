//! Entry points (not built yet).

use std::process::ExitCode;

/// Flags.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Flags.
#[derive(clap::Args, Debug)]
pub struct SpfArgs {}

/// Not built yet.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

/// Not built yet.
pub fn spf(_args: SpfArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
