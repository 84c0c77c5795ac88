//! `mxpace analyze`: read MTA logs (Postfix, Exim, PowerMTA, KumoMTA, mxpace events),
//! segment deferrals, triage incidents, flag anti-patterns, write the evidence report.

use anyhow::{Context, Result, bail};
use mxpace_analyze::knowledge::{Bands, Providers};
use mxpace_analyze::report::Report;
use mxpace_analyze::run::{self, Options};
use mxpace_analyze::{Analyzer, Config, render};
use mxpace_events::readers::Format;
use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Flags (boxed: they are many, and the subcommand enum should stay small).
#[derive(clap::Args, Debug)]
#[command(after_help = "Exit status: 0 no incident, 1 at least one incident found, 2 error.")]
pub struct Args {
    #[command(flatten)]
    pub opts: Box<Opts>,
}

/// The flags of `mxpace analyze`.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Log files, globs (quote them: 'mail.log*') or `-` for stdin. gzip and zstd are
    /// recognised by content. Default: stdin.
    pub inputs: Vec<String>,
    /// Log format instead of auto-detection: postfix, exim, powermta, kumomta, mxpace.
    #[arg(long)]
    pub format: Option<Format>,
    /// Print the report as JSON on stdout instead of the terminal summary.
    #[arg(long)]
    pub json: bool,
    /// Write a self-contained HTML evidence report (inline SVG charts) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write a Markdown evidence report to FILE.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Keep reading the input as it grows (like `tail -f`); a one-line status is printed
    /// to stderr every few seconds and the report when reading stops.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: stop after this many seconds without new data.
    #[arg(long, value_name = "SECS")]
    pub follow_idle: Option<u64>,
    /// Year of classic syslog timestamps (default: the file's modification year).
    #[arg(long)]
    pub year: Option<i32>,
    /// Sending IP of a Postfix syslog name / service or Exim transport / PowerMTA vmta,
    /// e.g. `postfix-out1=192.0.2.1` (repeatable). `postfix-<ip>/smtp` needs no mapping.
    #[arg(long = "source-map", value_name = "NAME=IP")]
    pub source_map: Vec<String>,
    /// Time window for rates and incidents, e.g. 600, 10m, 1h.
    #[arg(long, default_value = "10m")]
    pub window: String,
    /// Bands of a provider in percent: `microsoft=1,5` (watch from 1 %, act over 5 %);
    /// `*=2,10` for all (repeatable).
    #[arg(long = "band", value_name = "PROVIDER=WATCH,ACT")]
    pub bands: Vec<String>,
    /// Provider table (TOML, same shape as the shipped data/providers.toml).
    #[arg(long, value_name = "FILE")]
    pub providers: Option<PathBuf>,
    /// A retry sooner than this many seconds after a deferral is a retry storm.
    #[arg(long, default_value_t = 60)]
    pub retry_storm: i64,
    /// Read on one core only.
    #[arg(long)]
    pub sequential: bool,
    /// Colour: auto (when stdout is a terminal), always, never.
    #[arg(long, default_value = "auto")]
    pub color: String,
}

fn parse_window(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: i64 = num.parse().with_context(|| format!("bad --window {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("bad --window unit in {s:?} (use s, m or h)"),
    };
    if !(60..=86400).contains(&secs) {
        bail!("--window must be between 1 minute and 1 day");
    }
    Ok(secs)
}

fn config(args: &Opts) -> Result<Config> {
    let mut providers = match &args.providers {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Providers::parse(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => Providers::builtin(),
    };
    for spec in &args.bands {
        let (provider, values) = spec
            .split_once('=')
            .with_context(|| format!("bad --band {spec:?}: expected PROVIDER=WATCH,ACT"))?;
        let (watch, act) = values
            .split_once(',')
            .with_context(|| format!("bad --band {spec:?}: expected WATCH,ACT in percent"))?;
        let watch: f64 = watch
            .trim()
            .parse()
            .with_context(|| format!("bad watch percentage in {spec:?}"))?;
        let act: f64 = act
            .trim()
            .parse()
            .with_context(|| format!("bad act percentage in {spec:?}"))?;
        if !(0.0..=100.0).contains(&watch) || !(watch..=100.0).contains(&act) {
            bail!("bad --band {spec:?}: need 0 <= WATCH <= ACT <= 100");
        }
        providers.set_bands(
            provider,
            Bands {
                watch: watch / 100.0,
                act: act / 100.0,
            },
        );
    }
    Ok(Config {
        providers,
        window_secs: parse_window(&args.window)?,
        retry_storm_secs: args.retry_storm,
        ..Config::default()
    })
}

fn options(args: &Opts) -> Result<Options> {
    let mut options = Options::new();
    options.format = args.format;
    options.parallel = !args.sequential;
    options.follow = args.follow;
    options.follow_idle = args.follow_idle.map(Duration::from_secs);
    options.reader.year = args.year;
    options.progress = std::io::stderr().is_terminal() && !args.follow;
    for spec in &args.source_map {
        let (name, ip) = spec
            .split_once('=')
            .with_context(|| format!("bad --source-map {spec:?}: expected NAME=IP"))?;
        let ip: IpAddr = ip
            .trim()
            .parse()
            .with_context(|| format!("bad IP in --source-map {spec:?}"))?;
        options
            .reader
            .source_map
            .insert(name.trim().to_string(), ip);
    }
    Ok(options)
}

/// Read the logs, triage, print and write the reports.
pub fn run(args: Args) -> Result<ExitCode> {
    let args = args.opts;
    let config = config(&args)?;
    let options = options(&args)?;
    let mut inputs = args.inputs.clone();
    if inputs.is_empty() {
        if std::io::stdin().is_terminal() {
            bail!("no input: name log files or pipe a log into stdin");
        }
        inputs.push("-".into());
    }
    let paths = run::expand(&inputs)?;
    let mut analyzer = Analyzer::new(config);
    let mut last_status = Instant::now();
    let mut status = |a: &Analyzer, stats: &mxpace_events::readers::ReadStats| {
        if last_status.elapsed() < Duration::from_secs(5) {
            return;
        }
        last_status = Instant::now();
        let report = Report::build(a, stats, Vec::new(), "");
        let parts: Vec<String> = report
            .segments_of("provider")
            .map(|s| {
                format!(
                    "{} {}/{} ({:.2} %, {})",
                    s.key,
                    s.deferred,
                    s.attempts,
                    s.rate * 100.0,
                    s.band.name()
                )
            })
            .collect();
        eprintln!(
            "[follow] {} lines, {} incidents; {}",
            stats.lines,
            report.incidents.len(),
            parts.join("; ")
        );
    };
    let outcome = run::read_all(&paths, &options, &mut analyzer, &mut status)?;
    let format = outcome
        .formats
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(",");
    let files = paths.iter().map(|p| p.display().to_string()).collect();
    let report = Report::build(&analyzer, &outcome.stats, files, &format);

    if let Some(path) = &args.html {
        std::fs::write(path, render::html(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, render::markdown(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        out.write_all(b"\n")?;
    } else {
        let colour = match args.color.as_str() {
            "always" => true,
            "never" => false,
            _ => std::io::stdout().is_terminal(),
        };
        out.write_all(render::terminal(&report, colour).as_bytes())?;
    }
    out.flush()?;
    Ok(if report.incidents.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
