//! `mxpace sim`: run a receiver simulator on loopback (or any address), and
//! `mxpace sim stats`: count what a simulator's ledger says it accepted.

use anyhow::{Context, bail};
use mxpace_sim::server::{self, ServerConfig, Shared};
use mxpace_sim::{Profile, Receiver, ledger};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `mxpace sim`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    serve: Box<ServeArgs>,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Count accepted, unique and duplicate messages and deferrals in a ledger.
    Stats(StatsArgs),
    /// List the built-in profiles, or print one as TOML to start your own.
    Profiles {
        /// Print this profile's TOML.
        name: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct StatsArgs {
    /// The ledger file written by `mxpace sim --ledger`.
    #[arg(long)]
    ledger: PathBuf,
    /// Print JSON: {"accepted","unique","duplicates","deferred":{reason:count},…}.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Built-in profile (microsoft, gmail, yahoo, accept, script) or a TOML file.
    #[arg(long, default_value = "microsoft")]
    profile: String,
    /// Address to listen on; repeat for several MX hosts (budgets are per client IP
    /// across all of them). Port 0 picks a free port; the real address is printed.
    #[arg(long = "listen", default_value = "127.0.0.1:2525")]
    listen: Vec<SocketAddr>,
    /// Message budget per client IP, e.g. `120/min` (or a plain number per minute).
    #[arg(long, value_parser = parse_rate)]
    per_ip_rate: Option<f64>,
    /// Messages a quiet client may send at once before the rate applies.
    #[arg(long)]
    burst: Option<f64>,
    /// Concurrent connections per client IP (0 = unlimited).
    #[arg(long)]
    per_ip_connections: Option<u32>,
    /// Messages per minute per recipient address (0 = unlimited).
    #[arg(long, value_parser = parse_rate)]
    per_recipient_rate: Option<f64>,
    /// Seconds a client IP stays throttled once its budget is spent.
    #[arg(long)]
    penalty_secs: Option<f64>,
    /// Seconds added to the throttle for each attempt made while throttled.
    #[arg(long)]
    retry_penalty_secs: Option<f64>,
    /// Append every accepted message (and every deferral) to this JSONL file.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Seed for every random choice (ids, incident and tenant draws).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Receiving host name in banners and reply trailers; `ADDR=NAME` sets it for one
    /// listen address only (e.g. `127.0.0.5:2525=tenant-b.mail.protection.outlook.com`).
    #[arg(long)]
    host_name: Vec<String>,
    /// Client IPs on the block list (550 5.7.1 … S3150 for microsoft).
    #[arg(long)]
    blocklist: Vec<IpAddr>,
    /// Client IPs with poor reputation (smaller budget, 451 4.7.650 for microsoft).
    #[arg(long)]
    reputation: Vec<IpAddr>,
    /// Client IPs treated as new: a small budget that grows with clean days.
    #[arg(long)]
    new_ip: Vec<IpAddr>,
    /// Treat every client IP as new.
    #[arg(long)]
    new_ips: bool,
    /// Warm-up: simulated seconds per real second (1440 = one day per minute).
    #[arg(long)]
    time_compression: Option<f64>,
    /// Recipient domains under tenant pressure (deferred whoever sends).
    #[arg(long)]
    tenant_pressure: Vec<String>,
    /// Incident mode: share of sessions deferred (0..1) on the incident hosts.
    #[arg(long)]
    incident: Option<f64>,
    /// Listen addresses or host names where the incident is concentrated (default all).
    #[arg(long)]
    incident_host: Vec<String>,
    /// Connections open at once over all clients.
    #[arg(long, default_value_t = 2000)]
    max_connections: usize,
    /// Close a session idle for this many seconds.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
}

/// Run the simulator or one of its subcommands.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(Action::Stats(s)) => stats(s),
        Some(Action::Profiles { name }) => profiles(name),
        None => serve(*args.serve),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let number = s
        .strip_suffix("/min")
        .or_else(|| s.strip_suffix("/m"))
        .unwrap_or(s);
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("expected a rate like 120/min, got {s:?}"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("rate must be >= 0, got {s:?}"));
    }
    Ok(n)
}

fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let stats = ledger::Stats::read_file(&args.ledger)
        .with_context(|| format!("reading ledger {}", args.ledger.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &stats)?;
        writeln!(out)?;
    } else {
        writeln!(out, "accepted    {}", stats.accepted)?;
        writeln!(out, "unique      {}", stats.unique)?;
        writeln!(out, "duplicates  {}", stats.duplicates)?;
        writeln!(out, "deferred    {}", stats.deferred.values().sum::<u64>())?;
        for (reason, n) in &stats.deferred {
            writeln!(out, "  {reason:<20} {n}")?;
        }
        if !stats.rejected.is_empty() {
            writeln!(out, "rejected    {}", stats.rejected.values().sum::<u64>())?;
            for (reason, n) in &stats.rejected {
                writeln!(out, "  {reason:<20} {n}")?;
            }
        }
        if stats.malformed > 0 {
            writeln!(
                out,
                "malformed   {} (lines that are not ledger JSON)",
                stats.malformed
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn profiles(name: Option<String>) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match name {
        Some(name) => {
            let Some((_, text)) = mxpace_sim::profile::BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
            else {
                bail!("no built-in profile named {name:?}");
            };
            out.write_all(text.as_bytes())?;
        }
        None => {
            for (n, _) in mxpace_sim::profile::BUILTIN {
                writeln!(out, "{n}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Apply the command-line overrides to the profile.
fn configure(args: &ServeArgs) -> anyhow::Result<Profile> {
    let mut p = Profile::load(&args.profile)?;
    let l = &mut p.limits;
    if let Some(v) = args.per_ip_rate {
        l.per_ip_rate = v;
    }
    if let Some(v) = args.burst {
        l.burst = v;
    }
    if let Some(v) = args.per_ip_connections {
        l.per_ip_connections = v;
    }
    if let Some(v) = args.per_recipient_rate {
        l.per_recipient_rate = v;
    }
    if let Some(v) = args.penalty_secs {
        l.penalty_secs = v;
    }
    if let Some(v) = args.retry_penalty_secs {
        l.retry_penalty_secs = v;
    }
    for h in &args.host_name {
        match h.split_once('=') {
            Some((listen, name)) => {
                p.host_names.insert(listen.to_string(), name.to_string());
            }
            None => p.host_name = h.clone(),
        }
    }
    p.blocklist.extend(&args.blocklist);
    p.reputation.ips.extend(&args.reputation);
    p.warmup.ips.extend(&args.new_ip);
    p.warmup.all_ips |= args.new_ips;
    if let Some(v) = args.time_compression {
        p.warmup.time_compression = v;
    }
    p.tenant_pressure
        .domains
        .extend(args.tenant_pressure.iter().map(|d| d.to_ascii_lowercase()));
    if let Some(v) = args.incident {
        p.incident.share = v;
    }
    p.incident.hosts.extend(args.incident_host.iter().cloned());
    p.validate(&args.profile)?;
    Ok(p)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let profile = configure(&args)?;
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let tls = server::self_signed_tls(&profile.host_name)?;
    let (writer, ledger_thread) = match &args.ledger {
        Some(path) => {
            let (w, t) =
                ledger::open(path).with_context(|| format!("opening ledger {}", path.display()))?;
            (Some(w), Some(t))
        }
        None => (None, None),
    };
    let name = profile.name.clone();
    let config = ServerConfig {
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let shared = Shared::new(Receiver::new(profile, args.seed), writer, tls, config);
        let mut listeners = Vec::new();
        for addr in &args.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            listeners.push(l);
        }
        let mut out = std::io::stdout().lock();
        for l in &listeners {
            writeln!(out, "listening on {} (profile {name})", l.local_addr()?)?;
        }
        out.flush()?;
        drop(out);
        let tasks: Vec<_> = listeners
            .into_iter()
            .map(|l| tokio::spawn(server::serve(l, shared.clone())))
            .collect();
        drop(shared);
        shutdown_signal().await;
        for t in tasks {
            t.abort();
        }
        anyhow::Ok(())
    });
    // Dropping the runtime ends every session and with them every ledger handle, so
    // the writer thread can finish.
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(t) = ledger_thread {
        t.finish().context("writing the ledger")?;
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
