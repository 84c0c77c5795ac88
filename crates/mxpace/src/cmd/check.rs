//! `mxpace check` (sender identity and reputation) and `mxpace spf flatten`.
//! Flags and printing only; the checks live in `mxpace-identity`.

use anyhow::Context;
use mxpace_identity::dns::Dns;
use mxpace_identity::dnsbl::{self, Zone};
use mxpace_identity::flatten::{self, Flattened};
use mxpace_identity::{CheckRequest, Report, Status, run_checks};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `mxpace check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The sending domain (the domain of MAIL FROM and From).
    pub domain: String,
    /// An egress IP that sends for the domain (repeatable).
    #[arg(long = "ip", value_name = "IP")]
    pub ips: Vec<IpAddr>,
    /// The name your MTA gives in EHLO/HELO.
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// A DKIM selector to check (repeatable): the s= of your DKIM-Signature.
    #[arg(long = "selector", value_name = "S")]
    pub selectors: Vec<String>,
    /// A signed message as sent (.eml): verify its DKIM signatures and d= alignment.
    #[arg(long, value_name = "FILE.eml")]
    pub message: Option<PathBuf>,
    /// Ask only this DNS server (IP:PORT) instead of the system resolvers.
    #[arg(long, value_name = "IP:PORT")]
    pub dns: Option<SocketAddr>,
    /// Timeout per DNS lookup attempt, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Blocklist zones to use instead of the shipped list (TOML, same format as the default).
    #[arg(long, value_name = "FILE")]
    pub blocklists: Option<PathBuf>,
    /// Skip blocklist lookups.
    #[arg(long, conflicts_with = "blocklists")]
    pub no_blocklists: bool,
    /// Print JSON: {"domain", "checks": [{"id", "status", "summary", "evidence", "fix"}]}.
    #[arg(long)]
    pub json: bool,
    /// Keep re-checking the blocklists every INTERVAL (e.g. 30s, 10m, 1h) and report
    /// listed/delisted changes as they happen (JSON lines with --json).
    #[arg(long, value_name = "INTERVAL", value_parser = parse_interval)]
    pub watch: Option<Duration>,
    /// With --watch: stop after this many re-checks (default: run until interrupted).
    #[arg(long, value_name = "N", requires = "watch")]
    pub watch_count: Option<u64>,
}

/// Flags of `mxpace spf`.
#[derive(clap::Args, Debug)]
pub struct SpfArgs {
    #[command(subcommand)]
    command: SpfCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SpfCommand {
    /// Resolve the include tree to IP ranges and emit a record set within the limits.
    Flatten(FlattenArgs),
}

/// Flags of `mxpace spf flatten`.
#[derive(clap::Args, Debug)]
pub struct FlattenArgs {
    /// The domain whose SPF record to flatten.
    pub domain: String,
    /// Ask only this DNS server (IP:PORT) instead of the system resolvers.
    #[arg(long, value_name = "IP:PORT")]
    pub dns: Option<SocketAddr>,
    /// Timeout per DNS lookup attempt, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Name prefix of the chained records (`<prefix>1.<domain>`, ...).
    #[arg(long, default_value = "_spf")]
    pub prefix: String,
    /// A previous `--json` result: print what changed (exit 1 when the set changed).
    #[arg(long, value_name = "FILE")]
    pub previous: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 30s, 10m, 1h"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n.max(1))),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if secs == 0 {
        return Err("the interval must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_blocklists(args: &Args) -> anyhow::Result<Vec<Zone>> {
    if args.no_blocklists {
        return Ok(Vec::new());
    }
    match &args.blocklists {
        None => Ok(dnsbl::default_zones()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            dnsbl::load_zones(&text).with_context(|| format!("in {}", path.display()))
        }
    }
}

/// Runs every identity and reputation check; exit 1 when any check fails.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let message = match &args.message {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let req = CheckRequest {
        domain: args.domain.clone(),
        ips: args.ips.clone(),
        helo: args.helo.clone(),
        selectors: args.selectors.clone(),
        message,
        blocklists: load_blocklists(&args)?,
    };
    let dns = Dns::new(args.dns, Duration::from_millis(args.timeout_ms.max(1)))?;
    let rt = runtime()?;
    let report = rt.block_on(run_checks(&dns, &req));
    let mut out = std::io::stdout().lock();
    if args.json {
        if args.watch.is_some() {
            serde_json::to_writer(&mut out, &report)?;
        } else {
            serde_json::to_writer_pretty(&mut out, &report)?;
        }
        writeln!(out)?;
    } else {
        print_report(&mut out, &report)?;
    }
    out.flush()?;
    drop(out);
    let Some(interval) = args.watch else {
        return Ok(exit_for(&report));
    };
    rt.block_on(watch(&dns, &req, interval, args.watch_count, args.json))
}

use std::io::Write;

async fn watch(
    dns: &Dns,
    req: &CheckRequest,
    interval: Duration,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut previous =
        dnsbl::check_all(dns, &req.blocklists, &req.ips, &normalize(&req.domain)).await;
    let mut round = 0u64;
    while count.is_none_or(|c| round < c) {
        tokio::time::sleep(interval).await;
        round += 1;
        dns.clear_cache();
        let current =
            dnsbl::check_all(dns, &req.blocklists, &req.ips, &normalize(&req.domain)).await;
        let at = mxpace_identity::report::utc_now();
        let mut out = std::io::stdout().lock();
        for change in dnsbl::changes(&previous, &current) {
            if json {
                let mut v = serde_json::to_value(&change)?;
                v["time"] = serde_json::Value::String(at.clone());
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "{at} {:<9} {} on {}: {} -> {} {}",
                    change.event,
                    change.target,
                    change.zone,
                    change.from,
                    change.to,
                    change.detail.join("; ")
                )?;
            }
        }
        out.flush()?;
        previous = current;
    }
    let listed = previous
        .iter()
        .any(|l| matches!(l.listing, dnsbl::Listing::Listed(_)));
    Ok(if listed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn normalize(d: &str) -> String {
    mxpace_identity::dns::normalize_name(d)
}

fn exit_for(report: &Report) -> ExitCode {
    if report.worst() == Status::Fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_report(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(out, "mxpace check {}", report.domain)?;
    for c in &report.checks {
        writeln!(
            out,
            "{:<4}  {}  {}",
            c.status.to_string().to_uppercase(),
            c.id,
            c.summary
        )?;
        if c.status != Status::Pass {
            for e in &c.evidence {
                writeln!(out, "        | {e}")?;
            }
            if !c.fix.is_empty() {
                writeln!(out, "        fix: {}", c.fix)?;
            }
        }
    }
    let count = |s| report.checks.iter().filter(|c| c.status == s).count();
    writeln!(
        out,
        "{} pass, {} warn, {} fail",
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    )
}

/// Runs an `mxpace spf` subcommand.
pub fn spf(args: SpfArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SpfCommand::Flatten(a) => flatten_cmd(a),
    }
}

fn flatten_cmd(args: FlattenArgs) -> anyhow::Result<ExitCode> {
    let previous: Option<Flattened> = match &args.previous {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Some(serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a previous `mxpace spf flatten --json` result",
                    p.display()
                )
            })?)
        }
        None => None,
    };
    let dns = Dns::new(args.dns, Duration::from_millis(args.timeout_ms.max(1)))?;
    let tree = runtime()?.block_on(mxpace_identity::spf::walk(&dns, &args.domain));
    let flat = flatten::flatten(&tree, &args.prefix)?;
    let diff = previous.map(|p| flatten::diff(&p.networks, &flat.networks));
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&flat)?;
        if let Some(d) = &diff {
            v["diff"] = serde_json::to_value(d)?;
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "; {} networks, {} record(s), {} DNS lookup(s) for receivers",
            flat.networks.len(),
            flat.records.len(),
            flat.lookups
        )?;
        for p in &flat.problems {
            writeln!(out, "; warning: {p}")?;
        }
        for r in &flat.records {
            let quoted: Vec<String> = r.strings.iter().map(|s| format!("\"{s}\"")).collect();
            writeln!(out, "{}. IN TXT {}", r.name, quoted.join(" "))?;
        }
        if let Some(d) = &diff {
            if d.is_empty() {
                writeln!(out, "; unchanged since the previous result")?;
            }
            for n in &d.added {
                writeln!(out, "; added   {n}")?;
            }
            for n in &d.removed {
                writeln!(out, "; removed {n}")?;
            }
        }
    }
    Ok(match diff {
        Some(d) if !d.is_empty() => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_interval;
    use std::time::Duration;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_interval("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5d").is_err());
        assert!(parse_interval("x").is_err());
    }
}
