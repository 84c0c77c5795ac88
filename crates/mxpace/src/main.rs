//! `mxpace`: one binary, thin. Each subcommand lives in `cmd/<name>.rs`, parses its
//! flags and wires the library crates. Errors are printed once, here.
//!
//! Exit codes: 0 ok, 1 "found something" (e.g. a failed check), 2 error.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod admin;
mod cmd;

#[derive(Parser)]
#[command(name = "mxpace", version, about = "Outbound mail that paces itself by what receivers say", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Explain an SMTP reply: what it means and what to do.
    Explain(cmd::explain::Args),
    /// Run a receiver simulator (Exchange-Online-like, Gmail, Yahoo, sink, scripted).
    Sim(cmd::sim::Args),
    /// Print a commented sample relay configuration.
    Init(cmd::relay::InitArgs),
    /// Run the relay (MTA).
    Relay(cmd::relay::Args),
    /// Hash a [[user]] password read from stdin (Argon2id PHC string for password_hash).
    HashPassword(cmd::relay::HashPasswordArgs),
    /// Inspect and act on the relay's queue.
    Queue(cmd::relay::QueueArgs),
    /// Show or steer pacing per (egress IP x provider) path.
    Pacing(cmd::pacing::Args),
    /// Benchmarks and the pacing flight simulator.
    Bench(cmd::pacing::BenchArgs),
    /// One-command demo on loopback: receiver, relay, pacing, triage.
    Demo(cmd::demo::DemoArgs),
    /// Read MTA logs, segment deferrals, triage, write the evidence report.
    Analyze(cmd::analyze::Args),
    /// Check a sender's identity and reputation (SPF, DKIM, DMARC, rDNS, HELO, blocklists).
    Check(cmd::check::Args),
    /// SPF tools (flatten).
    Spf(cmd::check::SpfArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Explain(a) => cmd::explain::run(a),
        Command::Sim(a) => cmd::sim::run(a),
        Command::Init(a) => cmd::relay::init(a),
        Command::Relay(a) => cmd::relay::run(a),
        Command::HashPassword(a) => cmd::relay::hash_password(a),
        Command::Queue(a) => cmd::relay::queue(a),
        Command::Pacing(a) => cmd::pacing::run(a),
        Command::Bench(a) => cmd::pacing::bench(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Analyze(a) => cmd::analyze::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Spf(a) => cmd::check::spf(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                // The reader went away (e.g. `| head`): graceful termination.
                return ExitCode::SUCCESS;
            }
            eprintln!("mxpace: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
