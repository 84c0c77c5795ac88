//! `mxpace demo`: the whole system on loopback in about a minute, with no config.
//!
//! It starts a Microsoft-like receiver (`mxpace sim --profile microsoft`, one of the two
//! egress IPs with a poor reputation, so the receiver throttles it with 451 4.7.650) and
//! the relay (`mxpace relay`, egress IPs 127.0.0.1 and 127.0.0.2), both as child
//! processes of this binary on free ports, injects a mixed stream (bulk at once,
//! transactional as a trickle) over the relay's HTTP API, shows per path what pacing does
//! (from the relay's `type:"pacing"` events and `GET /v1/pacing` when the relay serves
//! it), then runs the triage (crates/analyze) on the relay's event log. Everything lives
//! in one directory that is kept and named at the end; the children are killed on every
//! way out (also on Ctrl-C and on panic).

mod children;
mod inject;
mod view;

use children::{relay_config, start_relay, start_sim};
use inject::Injector;
use view::{EventTail, View, fetch_pacing};

use anyhow::{Context, bail};
use mxpace_analyze::report::Report;
use mxpace_analyze::run::{self, Options};
use mxpace_analyze::{Analyzer, Config as AnalyzeConfig, render};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Flags of `mxpace demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Messages to inject (a quarter transactional, the rest bulk).
    #[arg(long, default_value_t = 160)]
    messages: u32,
    /// Longest run in seconds before the demo stops waiting for deliveries (at most 110).
    #[arg(long, default_value_t = 90)]
    duration: u64,
    /// Directory for the spool, event log, ledger and reports (created; must be empty
    /// if it exists). Default: a new directory under the system temp dir.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Plain lines instead of a view refreshed in place (the default when stdout is not
    /// a terminal).
    #[arg(long)]
    plain: bool,
    /// Run the relay with pacing off (`[pacing] enabled = false`), to see the difference:
    /// every due message goes at once, into the receiver's throttle.
    #[arg(long)]
    no_pacing: bool,
}

/// The two egress IPs. 127.0.0.2 has a poor reputation at the receiver.
const EGRESS: [&str; 2] = ["127.0.0.1", "127.0.0.2"];
/// Recipient domains (tenants behind the one receiver).
const TENANTS: [&str; 2] = ["contoso.example", "fabrikam.example"];

/// Run the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.messages == 0 || args.messages > 5000 {
        bail!("--messages must be between 1 and 5000");
    }
    if !(5..=110).contains(&args.duration) {
        bail!("--duration must be between 5 and 110 seconds");
    }
    let dir = prepare_dir(args.dir.as_deref())?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(stop.clone())?;
    let exe = std::env::current_exe().context("finding the mxpace binary")?;
    let tty = std::io::stdout().is_terminal() && !args.plain;

    println!(
        "mxpace demo — everything on loopback; files in {}",
        dir.display()
    );
    let (mut sim, sim_addr) = start_sim(&exe, &dir)?;
    println!(
        "receiver  mxpace sim --profile microsoft on {sim_addr} (poor reputation for {})",
        EGRESS[1]
    );
    std::fs::write(
        dir.join("relay.toml"),
        relay_config(&dir, sim_addr, !args.no_pacing),
    )
    .context("writing relay.toml")?;
    let (mut relay, smtp, http) = start_relay(&exe, &dir)?;
    println!(
        "relay     mxpace relay: SMTP {smtp}, HTTP {http}, egress {} and {}{}",
        EGRESS[0],
        EGRESS[1],
        if args.no_pacing { ", pacing off" } else { "" }
    );
    println!("dashboard http://{http}/ (while the demo runs; metrics at /metrics)");

    let injector = Injector::new(http, args.messages);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut view = View::new(tty);
    let mut tail = EventTail::new(dir.join("events.jsonl"));
    let mut last_plain = Instant::now() - Duration::from_secs(10);
    let mut injector = injector;
    let outcome = loop {
        if stop.load(Ordering::SeqCst) {
            break "interrupted";
        }
        if !sim.alive() || !relay.alive() {
            // Ctrl-C on a terminal reaches the children too; they may exit first.
            std::thread::sleep(Duration::from_millis(200));
            if stop.load(Ordering::SeqCst) {
                break "interrupted";
            }
            break if sim.alive() {
                "the relay exited"
            } else {
                "the receiver exited"
            };
        }
        injector.step(started.elapsed())?;
        tail.read_new(&mut view.paths);
        view.snapshots = fetch_pacing(http);
        let done = injector.done() && view.delivered() >= u64::from(args.messages);
        if tty || last_plain.elapsed() >= Duration::from_secs(5) || done {
            view.render(started.elapsed(), &injector, args.messages);
            last_plain = Instant::now();
        }
        if done {
            break "all delivered";
        }
        if Instant::now() >= deadline {
            break "time is up";
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    drop(relay);
    drop(sim);
    // Replies already logged are final; read the tail once more after the stop.
    tail.read_new(&mut view.paths);
    println!(
        "\n{outcome} after {:.0} s: {} of {} injected delivered, {} deferrals on the way",
        started.elapsed().as_secs_f64(),
        view.delivered(),
        injector.accepted,
        view.deferred()
    );
    let ledger = dir.join("ledger.jsonl");
    print_triage(&dir)?;
    println!("\nevents    {}", dir.join("events.jsonl").display());
    println!(
        "ledger    {}  (what the receiver accepted)",
        ledger.display()
    );
    println!("report    {}", dir.join("report.md").display());
    println!(
        "again     mxpace analyze {}",
        dir.join("events.jsonl").display()
    );
    if outcome == "interrupted" {
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("mxpace-demo-{}-{nanos:08x}", std::process::id()))
        }
    };
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty; give an empty or new --dir", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Ctrl-C sets `stop`; the main loop then shuts everything down in order.
fn watch_ctrl_c(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            stop.store(true, Ordering::SeqCst);
        });
    });
    Ok(())
}

/// Triage of the relay's event log (crates/analyze), printed and written as Markdown.
fn print_triage(dir: &Path) -> anyhow::Result<()> {
    let events = dir.join("events.jsonl");
    let mut options = Options::new();
    options.parallel = false;
    let paths = run::expand(&[events.display().to_string()])?;
    // The demo's retry schedule is minutes compressed into seconds (relay.toml), so the
    // retry-storm threshold is too: a retry 7 s after a deferral here is a 7-minute
    // retry, not a storm.
    let mut analyzer = Analyzer::new(AnalyzeConfig {
        retry_storm_secs: 1,
        ..AnalyzeConfig::default()
    });
    let outcome = run::read_all(&paths, &options, &mut analyzer, &mut |_, _| {})
        .context("reading the relay's event log")?;
    let report = Report::build(
        &analyzer,
        &outcome.stats,
        vec![events.display().to_string()],
        "mxpace",
    );
    std::fs::write(dir.join("report.md"), render::markdown(&report))
        .context("writing report.md")?;
    println!("\n── triage (mxpace analyze on the relay's event log) ──");
    let colour = std::io::stdout().is_terminal();
    print!("{}", render::terminal(&report, colour));
    Ok(())
}
