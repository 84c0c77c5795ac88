//! Entry points (not built yet).

use std::process::ExitCode;

/// Flags.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Not built yet.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
