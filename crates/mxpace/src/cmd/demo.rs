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

use crate::admin::{self, Method};
use anyhow::{Context, bail};
use mxpace_analyze::report::Report;
use mxpace_analyze::run::{self, Options};
use mxpace_analyze::{Analyzer, Config as AnalyzeConfig, render};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
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

/// A child process killed when dropped (also on panic and early return).
struct ChildGuard {
    child: Child,
    name: &'static str,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

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

/// Spawn a child with stdout piped and stderr into `log`; read stdout lines until
/// `until` returns true; keep draining stdout afterwards.
fn spawn_and_read(
    exe: &Path,
    args: &[String],
    log: &Path,
    name: &'static str,
    mut until: impl FnMut(&str) -> bool,
) -> anyhow::Result<ChildGuard> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let guard = ChildGuard { child, name };
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                if until(&line) {
                    break;
                }
            }
            _ => bail!("{} did not start; see {}", guard.name, log.display()),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(guard)
}

fn start_sim(exe: &Path, dir: &Path) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let args: Vec<String> = [
        "sim",
        "--profile",
        "microsoft",
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "1",
        // A compressed Microsoft: a budget a demo can meet within a minute, a short
        // penalty, and one egress IP with a poor reputation (a quarter of the budget).
        "--per-ip-rate",
        "240/min",
        "--burst",
        "10",
        "--penalty-secs",
        "5",
        "--retry-penalty-secs",
        "0",
        "--reputation",
        EGRESS[1],
        "--ledger",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.join("ledger.jsonl").display().to_string()])
    .collect();
    let mut addr = None;
    let guard = spawn_and_read(exe, &args, &dir.join("sim.log"), "the receiver", |line| {
        addr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        true
    })?;
    let addr = addr.context("the receiver printed no address")?;
    Ok((guard, addr))
}

fn relay_config(dir: &Path, sim: SocketAddr, pacing: bool) -> String {
    let d = dir.display();
    let mut routes = String::new();
    for t in TENANTS {
        routes.push_str(&format!("[route.\"{t}\"]\nhosts = [\"{sim}\"]\n\n"));
    }
    format!(
        "# Written by `mxpace demo`: loopback only, retries compressed into seconds.\n\
         [relay]\nlisten = [\"127.0.0.1:0\"]\nallow_clients = [\"127.0.0.0/8\"]\n\
         spool = \"{d}/spool\"\nevents = \"{d}/events.jsonl\"\nhttp = \"127.0.0.1:0\"\n\
         hostname = \"relay.demo.example\"\nsmtp_timeout = \"10s\"\ndefault_stream = \"transactional\"\n\n\
         [[source]]\nip = \"{}\"\nehlo = \"mta1.demo.example\"\n\n\
         [[source]]\nip = \"{}\"\nehlo = \"mta2.demo.example\"\n\n\
         {routes}\
         [retry]\nschedule = [\"1s\", \"2s\", \"4s\", \"8s\"]\nmax_age = \"10m\"\njitter = 0.2\n\n\
         [pacing]\nenabled = {pacing}\n\n\
         # The embedded pacing defaults, with their minutes compressed into seconds.\n\
         [pacing.provider.microsoft]\n\
         rate_floor = \"20/min\"\nrate_initial = \"180/min\"\nrate_ceiling = \"300/min\"\n\
         connections_initial = 2\nconnections_ceiling = 2\n\
         increase_interval = \"1s\"\nincrease_step = \"20/min\"\nprobe_after = \"5s\"\n\
         cut_holdoff = \"500ms\"\nslow_down_pause = \"1s\"\npause = \"3s\"\nmax_pause = \"10s\"\n\
         pause_memory = \"15s\"\nbreaker_cooldown = \"2s\"\nwindow = \"10s\"\nwindow_min_attempts = 10\n",
        EGRESS[0], EGRESS[1]
    )
}

fn start_relay(exe: &Path, dir: &Path) -> anyhow::Result<(ChildGuard, SocketAddr, SocketAddr)> {
    let args = vec![
        "relay".to_string(),
        "--config".to_string(),
        dir.join("relay.toml").display().to_string(),
    ];
    let (mut smtp, mut http) = (None, None);
    let guard = spawn_and_read(exe, &args, &dir.join("relay.log"), "the relay", |line| {
        if let Some(a) = line.strip_prefix("smtp ") {
            smtp = a.parse().ok();
        } else if let Some(a) = line.strip_prefix("http ") {
            http = a.parse().ok();
        }
        line == "ready"
    })?;
    Ok((
        guard,
        smtp.context("the relay printed no SMTP address")?,
        http.context("the relay printed no HTTP address")?,
    ))
}

/// Injects the mixed stream: bulk all at once, transactional one every half second.
struct Injector {
    http: SocketAddr,
    bulk: u32,
    transactional: u32,
    sent_bulk: u32,
    sent_transactional: u32,
    accepted: u32,
}

impl Injector {
    fn new(http: SocketAddr, messages: u32) -> Injector {
        let transactional = messages / 4;
        Injector {
            http,
            bulk: messages - transactional,
            transactional,
            sent_bulk: 0,
            sent_transactional: 0,
            accepted: 0,
        }
    }

    fn done(&self) -> bool {
        self.sent_bulk == self.bulk && self.sent_transactional == self.transactional
    }

    fn step(&mut self, elapsed: Duration) -> anyhow::Result<()> {
        while self.sent_bulk < self.bulk {
            let i = self.sent_bulk;
            self.inject("bulk", i)?;
            self.sent_bulk += 1;
        }
        let due = ((elapsed.as_millis() / 500) as u32 + 1).min(self.transactional);
        while self.sent_transactional < due {
            let i = self.sent_transactional;
            self.inject("transactional", i)?;
            self.sent_transactional += 1;
        }
        Ok(())
    }

    fn inject(&mut self, stream: &str, i: u32) -> anyhow::Result<()> {
        let tenant = TENANTS[i as usize % TENANTS.len()];
        let to = format!("{stream}-{i}@{tenant}");
        let message = format!(
            "From: demo@shop.example\r\nTo: {to}\r\nSubject: {stream} #{i}\r\n\
             Message-ID: <{stream}-{i}@shop.example>\r\n\r\nHello from mxpace demo.\r\n"
        );
        let body = serde_json::json!({
            "from": "demo@shop.example",
            "to": [to],
            "message": message,
            "stream": stream,
            "idempotency_key": format!("demo-{stream}-{i}"),
        })
        .to_string();
        let (status, reply) = admin::request(
            self.http,
            Method::Post,
            "/v1/messages",
            Some(body.as_bytes()),
        )
        .with_context(|| format!("injecting {stream} #{i}"))?;
        if status != 200 {
            let reply = String::from_utf8_lossy(&reply);
            bail!("the relay refused {stream} #{i}: {status} {reply}");
        }
        self.accepted += 1;
        Ok(())
    }
}

/// `GET /v1/pacing` when the relay serves it: one row per path.
fn fetch_pacing(http: SocketAddr) -> Option<Vec<serde_json::Value>> {
    let body = admin::request_ok(http, Method::Get, "/v1/pacing", None).ok()?;
    serde_json::from_slice(&body).ok()
}

/// What the view knows of one egress path.
#[derive(Debug, Default, Clone)]
struct PathView {
    delivered: u64,
    deferred: u64,
    /// Outcomes of the recent attempts (true = deferred), newest last.
    recent: std::collections::VecDeque<bool>,
    state: Option<String>,
    band: Option<String>,
    rate_per_min: Option<f64>,
    connections: Option<u64>,
    pacing_events: u64,
    last_reply: Option<String>,
}

const RECENT: usize = 50;

/// Reads the relay's event log as it grows.
struct EventTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    delivered_recipients: HashSet<String>,
}

impl EventTail {
    fn new(path: PathBuf) -> EventTail {
        EventTail {
            path,
            offset: 0,
            partial: String::new(),
            delivered_recipients: HashSet::new(),
        }
    }

    fn read_new(&mut self, paths: &mut BTreeMap<String, PathView>) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&buf);
        let Some(last_newline) = self.partial.rfind('\n') else {
            return;
        };
        let complete: String = self.partial.drain(..=last_newline).collect();
        for line in complete.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            self.apply(&e, paths);
        }
    }

    fn apply(&mut self, e: &serde_json::Value, paths: &mut BTreeMap<String, PathView>) {
        let ip = e["source_ip"].as_str().unwrap_or("-").to_string();
        match e["type"].as_str() {
            Some("attempt") => {
                let p = paths.entry(ip).or_default();
                let deferred = match e["outcome"].as_str() {
                    Some("delivered") => {
                        let rcpt = e["recipient"].as_str().unwrap_or_default();
                        if self.delivered_recipients.insert(rcpt.to_string()) {
                            p.delivered += 1;
                        }
                        false
                    }
                    Some("deferred") => {
                        p.deferred += 1;
                        p.last_reply = e["reply"].as_str().map(str::to_string);
                        true
                    }
                    _ => return,
                };
                p.recent.push_back(deferred);
                while p.recent.len() > RECENT {
                    p.recent.pop_front();
                }
            }
            Some("pacing") => {
                let p = paths.entry(ip).or_default();
                p.pacing_events += 1;
                let x = &e["extra"];
                p.state = x["state_to"].as_str().map(str::to_string);
                p.band = x["band"].as_str().map(str::to_string);
                p.rate_per_min = x["to"]["rate_per_min"].as_f64();
                p.connections = x["to"]["connections"].as_u64();
            }
            _ => {}
        }
    }
}

/// The live view: one row per egress path.
struct View {
    tty: bool,
    drawn: usize,
    paths: BTreeMap<String, PathView>,
    snapshots: Option<Vec<serde_json::Value>>,
}

impl View {
    fn new(tty: bool) -> View {
        let mut paths = BTreeMap::new();
        for ip in EGRESS {
            paths.insert(ip.to_string(), PathView::default());
        }
        View {
            tty,
            drawn: 0,
            paths,
            snapshots: None,
        }
    }

    fn delivered(&self) -> u64 {
        self.paths.values().map(|p| p.delivered).sum()
    }

    fn deferred(&self) -> u64 {
        self.paths.values().map(|p| p.deferred).sum()
    }

    /// The relay's own snapshot of the path from `ip`, when it serves `/v1/pacing`.
    fn snapshot(&self, ip: &str) -> Option<&serde_json::Value> {
        self.snapshots.as_ref()?.iter().find(|s| {
            let path = &s["path"];
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{ip}/")))
                || path
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("{ip}@")))
                || path["source_ip"].as_str() == Some(ip)
        })
    }

    fn rows(&self) -> Vec<String> {
        let mut rows = vec![format!(
            "  {:<10} {:<9} {:>9} {:>5} {:>10} {:>8} {:>9} {:>8}",
            "egress", "state", "rate/min", "conn", "deferral", "band", "delivered", "deferred"
        )];
        for (ip, p) in &self.paths {
            let snap = self.snapshot(ip);
            let state = snap
                .and_then(|s| s["state"].as_str().map(str::to_string))
                .or_else(|| p.state.clone())
                .unwrap_or_else(|| "-".into());
            let band = snap
                .and_then(|s| s["band"].as_str().map(str::to_string))
                .or_else(|| p.band.clone())
                .unwrap_or_else(|| "-".into());
            let rate = snap
                .and_then(|s| s["limits"]["rate_per_min"].as_f64())
                .or(p.rate_per_min)
                .map_or_else(|| "-".into(), |r| format!("{r:.0}"));
            let conn = snap
                .and_then(|s| s["limits"]["connections"].as_u64())
                .or(p.connections)
                .map_or_else(|| "-".into(), |c| c.to_string());
            let recent_deferred = p.recent.iter().filter(|d| **d).count();
            let share = match snap.and_then(|s| s["deferral_rate"].as_f64()) {
                Some(r) => format!("{:.0}%", 100.0 * r),
                None if p.recent.is_empty() => "-".to_string(),
                None => format!(
                    "{:.0}%",
                    100.0 * recent_deferred as f64 / p.recent.len() as f64
                ),
            };
            rows.push(format!(
                "  {:<10} {:<9} {:>9} {:>5} {:>10} {:>8} {:>9} {:>8}",
                ip, state, rate, conn, share, band, p.delivered, p.deferred
            ));
        }
        if self.paths.values().all(|p| p.pacing_events == 0) && self.snapshots.is_none() {
            rows.push("  (no pacing events from the relay yet)".into());
        }
        for (ip, p) in &self.paths {
            if let Some(reply) = &p.last_reply {
                let short: String = reply.chars().take(80).collect();
                rows.push(format!("  last deferral on {ip}: {short}"));
            }
        }
        rows
    }

    fn render(&mut self, elapsed: Duration, injector: &Injector, total: u32) {
        let head = format!(
            "[{:>3} s] injected {}/{total}, delivered {}, deferrals {}",
            elapsed.as_secs(),
            injector.accepted,
            self.delivered(),
            self.deferred()
        );
        let rows = self.rows();
        let mut out = std::io::stdout().lock();
        if self.tty {
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            let _ = writeln!(out, "\x1b[2K{head}");
            for r in &rows {
                let _ = writeln!(out, "\x1b[2K{r}");
            }
            // Clear lines left over from a taller previous frame.
            for _ in rows.len() + 1..self.drawn {
                let _ = writeln!(out, "\x1b[2K");
            }
            self.drawn = self.drawn.max(rows.len() + 1);
        } else {
            let _ = writeln!(out, "{head}");
            for r in &rows {
                let _ = writeln!(out, "{r}");
            }
        }
        let _ = out.flush();
    }
}

/// Triage of the relay's event log (crates/analyze), printed and written as Markdown.
fn print_triage(dir: &Path) -> anyhow::Result<()> {
    let events = dir.join("events.jsonl");
    let mut options = Options::new();
    options.parallel = false;
    let paths = run::expand(&[events.display().to_string()])?;
    let mut analyzer = Analyzer::new(AnalyzeConfig::default());
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

#[cfg(test)]
mod tests {
    use super::*;
    use mxpace_pacing::{Moment, Outcome, Pacing, PacingConfig, Path as PacingPath};
    use mxpace_reply::{Scope, Throttle, Verdict};

    fn throttle_127_0_0_2(p: &mut Pacing, at: Moment) -> Vec<mxpace_pacing::PacingChange> {
        let path: PacingPath = "127.0.0.2@microsoft".parse().unwrap();
        let v = Verdict {
            throttle: Throttle::SlowDown,
            scope: Scope::SendingIp,
            ips: vec!["127.0.0.2".parse().unwrap()],
            text: "451 4.7.500 Server busy. Please try again later from [127.0.0.2]. (S77714)"
                .into(),
            ..Verdict::default()
        };
        p.on_outcome(&path, Outcome::Deferred(&v), at)
    }

    #[test]
    fn the_view_shows_the_state_and_limits_of_the_relays_pacing_events() {
        let mut pacing = Pacing::new(PacingConfig::builtin());
        let changes = throttle_127_0_0_2(&mut pacing, Moment(1_795_435_200_000));
        assert!(!changes.is_empty());
        let mut tail = EventTail::new(PathBuf::new());
        let mut view = View::new(false);
        for c in &changes {
            let e = serde_json::to_value(super::super::pacing::pacing_event(c)).unwrap();
            tail.apply(&e, &mut view.paths);
        }
        let p = &view.paths["127.0.0.2"];
        assert_eq!(p.state.as_deref(), Some("paused"));
        let cut = changes.last().unwrap().to.rate_per_min;
        assert_eq!(p.rate_per_min, Some(cut));
        let rows = view.rows().join("\n");
        let row = rows
            .lines()
            .find(|l| l.starts_with("  127.0.0.2 "))
            .unwrap();
        assert!(row.contains("paused"), "{rows}");
        assert!(row.contains(&format!("{cut:.0}")), "{rows}");
        assert!(!rows.contains("no pacing events"), "{rows}");
        // The other path was never touched.
        assert!(
            rows.lines().any(|l| l.starts_with("  127.0.0.1  -")),
            "{rows}"
        );
    }

    #[test]
    fn the_relays_snapshot_wins_over_events_and_delivered_counts_each_recipient_once() {
        let mut pacing = Pacing::new(PacingConfig::builtin());
        let at = Moment(1_795_435_200_000);
        throttle_127_0_0_2(&mut pacing, at);
        let snaps = serde_json::to_value(pacing.snapshot(at)).unwrap();
        let mut view = View::new(false);
        view.snapshots = snaps.as_array().cloned();
        let mut tail = EventTail::new(PathBuf::new());
        let delivered = serde_json::json!({"type": "attempt", "outcome": "delivered",
            "recipient": "a@contoso.example", "source_ip": "127.0.0.1"});
        tail.apply(&delivered, &mut view.paths);
        tail.apply(&delivered, &mut view.paths);
        let deferred = serde_json::json!({"type": "attempt", "outcome": "deferred",
            "recipient": "b@contoso.example", "source_ip": "127.0.0.1", "reply": "451 4.7.500 x"});
        tail.apply(&deferred, &mut view.paths);
        assert_eq!(view.delivered(), 1);
        assert_eq!(view.deferred(), 1);
        let rows = view.rows().join("\n");
        let row = rows
            .lines()
            .find(|l| l.starts_with("  127.0.0.2 "))
            .unwrap();
        // The relay's own window: its one attempt was deferred.
        assert!(
            row.contains("paused") && row.contains("100%") && row.contains("normal"),
            "{rows}"
        );
        let row1 = rows
            .lines()
            .find(|l| l.starts_with("  127.0.0.1 "))
            .unwrap();
        // No snapshot for this path: the view's own count of recent attempts (the
        // repeated delivery is an attempt too, though counted delivered once).
        assert!(
            row1.contains("33%"),
            "one of three attempts deferred: {rows}"
        );
    }
}
