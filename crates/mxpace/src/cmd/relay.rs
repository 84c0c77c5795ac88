//! `mxpace relay`, `mxpace init`, `mxpace queue`: run the MTA and operate its queue.
//!
//! `queue` opens the spool directly when the relay is not running; while it runs
//! (the spool is locked), it talks to the relay's HTTP admin API (`[relay] http`).

use crate::admin::{Method, request_ok};
use anyhow::{Context, bail};
use mxpace_relay::config::Config;
use mxpace_relay::gate::{PacingGate, PassThrough};
use mxpace_relay::pacing_gate::ControllerGate;
use mxpace_relay::queue::{Filter, GroupStats, Summary, summarize};
use mxpace_relay::service::{self, AdminAction, Shared};
use mxpace_relay::spool::{QueuedMessage, Spool, SpoolError};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Flags for `mxpace relay`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (see `mxpace init`).
    #[arg(long, short, env = "MXPACE_CONFIG", default_value = "mxpace.toml")]
    pub config: PathBuf,
}

/// Flags for `mxpace init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {}

/// Flags for `mxpace queue`.
#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// Configuration file of the relay whose queue to read.
    #[arg(
        long,
        short,
        env = "MXPACE_CONFIG",
        default_value = "mxpace.toml",
        global = true
    )]
    pub config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<QueueAction>,
}

/// What to do with the queue (no subcommand: show counts).
#[derive(clap::Subcommand, Debug)]
pub enum QueueAction {
    /// Show one message: envelope, recipients, attempts, next attempt, last reply.
    Show { id: String },
    /// Make matching recipients due now (attempt counts unchanged).
    Retry {
        /// A queue id, `all`, or `domain=…`, `stream=…`, `sender=…`, `id=…`.
        #[arg(required = true)]
        filter: Vec<String>,
    },
    /// Give up on matching recipients and send DSNs to their senders.
    Bounce {
        #[arg(required = true)]
        filter: Vec<String>,
    },
    /// Drop matching recipients without a DSN.
    Delete {
        #[arg(required = true)]
        filter: Vec<String>,
    },
}

/// Run the relay until SIGINT/SIGTERM. Prints `smtp ADDR` / `http ADDR` lines on
/// stdout once listening (port 0 in the config becomes a real port).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_tracing();
    let config = Config::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let gate = gate_for(&config)?;
        let handle = mxpace_relay::start(config, gate).await?;
        {
            let mut out = std::io::stdout().lock();
            for a in &handle.smtp {
                writeln!(out, "smtp {a}")?;
            }
            if let Some(h) = handle.http {
                writeln!(out, "http {h}")?;
            }
            writeln!(out, "ready")?;
            out.flush()?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Every acknowledged change is already committed; stopping here loses nothing.
        handle.abort();
        Ok(ExitCode::SUCCESS)
    })
}

/// The pacing controller as configured in `[pacing]` (the default), or no pacing
/// when `[pacing] enabled = false`.
pub fn gate_for(config: &Config) -> anyhow::Result<Arc<dyn PacingGate>> {
    if !config.pacing.enabled() {
        return Ok(Arc::new(PassThrough));
    }
    let pacing = config.pacing.resolve()?;
    Ok(Arc::new(ControllerGate::new(pacing)))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The commented sample configuration printed by `mxpace init`.
pub const SAMPLE_CONFIG: &str = mxpace_relay::config::SAMPLE;

/// Print a commented sample configuration.
pub fn init(_args: InitArgs) -> anyhow::Result<ExitCode> {
    std::io::stdout().write_all(SAMPLE_CONFIG.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Flags of `mxpace hash-password`.
#[derive(clap::Args, Debug)]
pub struct HashPasswordArgs {}

/// Read a password from stdin (its first line) and print its Argon2id PHC string for
/// `password_hash` in a `[[user]]` entry. Not a flag: a password on the command line
/// would land in the shell's history and in `ps`.
pub fn hash_password(_args: HashPasswordArgs) -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        bail!(
            "no password on stdin (e.g. `read -rs PW; printf '%s\\n' \"$PW\" | mxpace hash-password`)"
        );
    }
    let phc = mxpace_relay::password::hash(password).map_err(anyhow::Error::msg)?;
    println!("{phc}");
    Ok(ExitCode::SUCCESS)
}

/// Inspect or act on the queue.
pub fn queue(args: QueueArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match Spool::open(&config.relay.spool) {
        Ok(spool) => rt.block_on(queue_offline(config, spool, args)),
        Err(SpoolError::Locked(_)) => {
            let published =
                std::fs::read_to_string(config.relay.spool.join(mxpace_relay::ADMIN_ADDR_FILE))
                    .ok()
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            let Some(addr) = published.or(config.relay.http) else {
                bail!(
                    "the relay is running (spool locked) and has no [relay] http admin address; \
                     set one to use queue commands while it runs"
                );
            };
            queue_online(addr, &args)
        }
        Err(e) => Err(e.into()),
    }
}

async fn queue_offline(config: Config, spool: Spool, args: QueueArgs) -> anyhow::Result<ExitCode> {
    let messages = spool.load_all()?;
    match args.action {
        None => {
            let s = summarize(messages.iter(), service::now_ms());
            print_summary(&s, args.json)?;
        }
        Some(QueueAction::Show { id }) => {
            let Some(m) = messages.iter().find(|m| m.queue_id == id) else {
                bail!("{id}: not in the queue");
            };
            print_message(m, args.json)?;
        }
        Some(QueueAction::Retry { filter }) => {
            offline_admin(config, spool, messages, AdminAction::Retry, &filter).await?
        }
        Some(QueueAction::Bounce { filter }) => {
            offline_admin(config, spool, messages, AdminAction::Bounce, &filter).await?
        }
        Some(QueueAction::Delete { filter }) => {
            offline_admin(config, spool, messages, AdminAction::Delete, &filter).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn offline_admin(
    config: Config,
    spool: Spool,
    messages: Vec<QueuedMessage>,
    action: AdminAction,
    filter: &[String],
) -> anyhow::Result<()> {
    let filter = Filter::parse(filter).map_err(anyhow::Error::msg)?;
    let mut queue = mxpace_relay::queue::Queue::default();
    for m in messages {
        queue.insert(m);
    }
    let events = mxpace_relay::event_log::EventLog::open(&config.relay.events)?;
    let shared = Shared {
        config,
        spool,
        queue: std::sync::Mutex::new(queue),
        events,
        counters: Default::default(),
        data_budget: mxpace_relay::budget::DataBudget::new(1 << 20),
        wake: tokio::sync::Notify::new(),
        gate: Arc::new(PassThrough),
    };
    let n = service::admin(&shared, action, &filter).await?;
    println!("{n} recipient(s) affected");
    Ok(())
}

fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, s)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} message(s), {} recipient(s) queued, oldest {}",
        s.messages,
        s.recipients,
        human_age(s.oldest_age_secs)
    )?;
    let groups: [(&str, &BTreeMap<String, GroupStats>); 4] = [
        ("provider", &s.by_provider),
        ("domain", &s.by_domain),
        ("source", &s.by_source),
        ("stream", &s.by_stream),
    ];
    for (name, map) in groups {
        if map.is_empty() {
            continue;
        }
        writeln!(out, "\nby {name}:")?;
        writeln!(out, "  {:<40} {:>10} {:>10}", name, "recipients", "oldest")?;
        for (k, g) in map {
            writeln!(
                out,
                "  {:<40} {:>10} {:>10}",
                k,
                g.recipients,
                human_age(g.oldest_age_secs)
            )?;
        }
    }
    Ok(())
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn print_message(m: &QueuedMessage, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, m)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "queue id    {}", m.queue_id)?;
    writeln!(out, "message-id  {}", m.message_id)?;
    writeln!(out, "sender      <{}>", m.sender)?;
    writeln!(out, "stream      {}", m.stream)?;
    writeln!(out, "size        {}", m.size)?;
    writeln!(out, "received    {}", rfc3339(m.received_ms))?;
    writeln!(out, "expires     {}", rfc3339(m.expires_ms))?;
    for r in &m.recipients {
        writeln!(
            out,
            "  <{}> {:?} attempts={} next={}",
            r.address,
            r.status,
            r.attempts,
            rfc3339(r.next_attempt_ms)
        )?;
        if let Some(reply) = &r.last_reply {
            writeln!(out, "      last reply: {}", reply.replace("\r\n", " | "))?;
        }
    }
    Ok(())
}

fn rfc3339(ms: i64) -> String {
    service::rfc3339(ms)
}

fn queue_online(addr: SocketAddr, args: &QueueArgs) -> anyhow::Result<ExitCode> {
    match &args.action {
        None => {
            let body = request_ok(addr, Method::Get, "/v1/queue", None)?;
            let s: serde_json::Value = serde_json::from_slice(&body)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let s: Summary = summary_from_json(&s)?;
                print_summary(&s, false)?;
            }
        }
        Some(QueueAction::Show { id }) => {
            let body = request_ok(addr, Method::Get, &format!("/v1/queue/{id}"), None)?;
            let m: QueuedMessage = serde_json::from_slice(&body)?;
            print_message(&m, args.json)?;
        }
        Some(QueueAction::Retry { filter })
        | Some(QueueAction::Bounce { filter })
        | Some(QueueAction::Delete { filter }) => {
            let action = match &args.action {
                Some(QueueAction::Retry { .. }) => "retry",
                Some(QueueAction::Bounce { .. }) => "bounce",
                _ => "delete",
            };
            let req = serde_json::json!({ "filter": filter });
            let body = request_ok(
                addr,
                Method::Post,
                &format!("/v1/queue/action/{action}"),
                Some(&serde_json::to_vec(&req)?),
            )?;
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            println!("{} recipient(s) affected", v["affected"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summary_from_json(v: &serde_json::Value) -> anyhow::Result<Summary> {
    let group = |k: &str| -> BTreeMap<String, GroupStats> {
        v[k].as_object()
            .map(|m| {
                m.iter()
                    .map(|(name, g)| {
                        (
                            name.clone(),
                            GroupStats {
                                recipients: g["recipients"].as_u64().unwrap_or(0),
                                oldest_age_secs: g["oldest_age_secs"].as_u64().unwrap_or(0),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Summary {
        messages: v["messages"].as_u64().unwrap_or(0),
        recipients: v["recipients"].as_u64().unwrap_or(0),
        oldest_age_secs: v["oldest_age_secs"].as_u64().unwrap_or(0),
        by_provider: group("by_provider"),
        by_domain: group("by_domain"),
        by_source: group("by_source"),
        by_stream: group("by_stream"),
    })
}
