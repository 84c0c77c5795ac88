//! Entry points (not built yet).

use std::process::ExitCode;

/// Flags.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Flags.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Flags.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Not built yet.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

/// Not built yet.
pub fn bench(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

/// Not built yet.
pub fn demo(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

