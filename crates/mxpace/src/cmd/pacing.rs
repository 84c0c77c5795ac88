//! `mxpace pacing` (state and steering of live paths) and `mxpace bench pacing` (the
//! flight simulator).

use anyhow::Context;
use mxpace_events::{Event, EventType};
use mxpace_pacing::flight::receiver::Reply;
use mxpace_pacing::flight::{self, POLICIES, Report, scenario::SCENARIOS, scenario::Scenario};
use mxpace_pacing::{PacingChange, PacingConfig, Trigger};
use mxpace_relay::http::NamedSnapshot;
use mxpace_relay::pacing_gate::{parse_path_name, path_name};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `mxpace pacing`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The relay's admin API, e.g. `http://127.0.0.1:8025` (default: found through
    /// the relay config's spool, as `mxpace queue` does).
    #[arg(long, value_name = "URL", global = true, conflicts_with = "config")]
    relay: Option<String>,
    /// Configuration file of the running relay.
    #[arg(
        long,
        short,
        env = "MXPACE_CONFIG",
        default_value = "mxpace.toml",
        global = true
    )]
    config: PathBuf,
    /// Print JSON (the relay's `GET /v1/pacing` list) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Option<PacingAction>,
}

/// Steer one path (no subcommand: show every path).
#[derive(clap::Subcommand, Debug)]
enum PacingAction {
    /// Stop a path until it is resumed (held mail stays queued; holds are not attempts).
    Pause {
        /// `IP/provider`, e.g. `203.0.113.10/microsoft` (as listed by `mxpace pacing`).
        path: String,
    },
    /// Let a paused or stopped path send again; it ramps up from its floor.
    Resume {
        /// `IP/provider`, e.g. `203.0.113.10/microsoft`.
        path: String,
    },
}

/// Flags of `mxpace bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(clap::Subcommand, Debug)]
enum BenchWhat {
    /// The pacing flight simulator: mxpace's controller, a Postfix-defaults model and a
    /// KumoMTA-default-Microsoft-rule model against the same receiver model, in virtual time.
    Pacing(FlightArgs),
}

/// Flags of `mxpace bench pacing`.
#[derive(clap::Args, Debug)]
struct FlightArgs {
    /// Run one scenario (steady, new-ip, tenant, incident, mixed); all when absent.
    #[arg(long, value_name = "NAME")]
    scenario: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Receiver to fly against: `sim` (the `mxpace sim` receiver model, crates/sim,
    /// configured per scenario) or `model` (the simulator's own compact model).
    #[arg(long, value_name = "KIND", default_value = "sim")]
    receiver: String,
    /// Seed of every random choice (same seed, same figures).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scale the message counts (1.0 = full size, 100,000 messages on `steady`).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Override the receiver model's penalty once an IP's budget is spent (seconds;
    /// default 60) — to see how much the comparison depends on it.
    #[arg(long, value_name = "SECS")]
    penalty_secs: Option<f64>,
    /// Override the seconds each attempt made while throttled adds to the penalty
    /// (default 1).
    #[arg(long, value_name = "SECS")]
    retry_penalty_secs: Option<f64>,
    /// New-IP warm-up of the `sim` receiver: a throttle sends the IP back to day 0 (the
    /// receiver simulator's default). Without this flag warm-up days count from the IP's
    /// first message, as Microsoft's guidance reads (see `SimReceiver::new`).
    #[arg(long)]
    warmup_reset_on_throttle: bool,
    /// Also write mxpace's pacing changes of each run as events (JSONL, `type: "pacing"`),
    /// timed from 2026-01-01T00:00:00Z as the simulation's start.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// A pacing config file overriding the built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Show or steer the running relay's pacing paths through its admin API.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let addr = admin_addr(&args)?;
    match &args.action {
        None => {
            let body =
                crate::admin::request_ok(addr, crate::admin::Method::Get, "/v1/pacing", None)?;
            if args.json {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).context("the relay's /v1/pacing answer")?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let paths: Vec<NamedSnapshot> =
                    serde_json::from_slice(&body).context("the relay's /v1/pacing answer")?;
                print_paths(&paths);
            }
        }
        Some(PacingAction::Pause { path } | PacingAction::Resume { path }) => {
            let verb = match &args.action {
                Some(PacingAction::Pause { .. }) => "pause",
                _ => "resume",
            };
            let p = parse_path_name(path).map_err(|e| anyhow::anyhow!(e))?;
            let url = format!("/v1/pacing/{}/{}/{verb}", p.source_ip, p.provider);
            let body = crate::admin::request_ok(addr, crate::admin::Method::Post, &url, None)?;
            if args.json {
                println!("{}", String::from_utf8_lossy(&body));
            } else {
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                let state = v["path"]["state"].as_str().unwrap_or("?");
                println!("{}: {state}", path_name(&p));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the relay's admin API listens: `--relay URL`, else the address the
/// running relay published in its spool, else `[relay] http` of the config.
fn admin_addr(args: &Args) -> anyhow::Result<SocketAddr> {
    if let Some(url) = &args.relay {
        let hostport = url
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        return hostport
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .with_context(|| format!("--relay {url:?}: expected http://HOST:PORT"));
    }
    let config = mxpace_relay::config::Config::load(&args.config)?;
    let published = std::fs::read_to_string(config.relay.spool.join(mxpace_relay::ADMIN_ADDR_FILE))
        .ok()
        .and_then(|a| a.trim().parse::<SocketAddr>().ok());
    published.or(config.relay.http).with_context(|| {
        format!(
            "{}: no running relay's admin address in the spool and no [relay] http",
            args.config.display()
        )
    })
}

fn print_paths(paths: &[NamedSnapshot]) {
    if paths.is_empty() {
        println!("no paths yet (a path appears with the first message sent on it)");
        return;
    }
    println!(
        "{:<28} {:<9} {:>9} {:>5} {:>6} {:>7} {:<8} {:<20} REASON",
        "PATH", "STATE", "RATE/MIN", "CONN", "MSG/C", "DEFER%", "BAND", "SINCE"
    );
    for p in paths {
        let s = &p.snapshot;
        let state = serde_json::to_value(s.state).unwrap_or_default();
        let band = serde_json::to_value(s.band).unwrap_or_default();
        let mut reason = s.reason.replace(['\r', '\n'], " ");
        // Ramping back, the state's own reason is "pause over" or "successes": show
        // the reply that slowed the path too.
        if let (Some(reply), Some(at)) = (&p.last_reply, p.last_reply_at)
            && !s.reason.starts_with(reply.as_str())
            && s.state != mxpace_pacing::PathState::Normal
        {
            reason = format!("{reason}; last reply {}: {reply}", utc(at.max(0) as u64));
        }
        if let Some(until) = s.until {
            reason = format!("(until {}) {reason}", utc(until.0));
        }
        println!(
            "{:<28} {:<9} {:>9.1} {:>5} {:>6} {:>6.1}% {:<8} {:<20} {}",
            p.name,
            state.as_str().unwrap_or("?"),
            s.limits.rate_per_min,
            s.limits.connections,
            s.limits.per_connection,
            100.0 * s.deferral_rate,
            band.as_str().unwrap_or("?"),
            utc(s.since.0),
            reason
        );
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for ms since the epoch (through the events crate's time type).
fn utc(ms: u64) -> String {
    let mut e: Event = match serde_json::from_value(serde_json::json!({
        "type": "pacing", "time": "1970-01-01T00:00:00Z"
    })) {
        Ok(e) => e,
        Err(_) => return ms.to_string(),
    };
    e.time += std::time::Duration::from_millis(ms);
    serde_json::to_value(&e)
        .ok()
        .and_then(|v| {
            v["time"].as_str().map(|t| {
                t.split('.')
                    .next()
                    .unwrap_or(t)
                    .trim_end_matches('Z')
                    .to_string()
                    + "Z"
            })
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Run a benchmark; today only the pacing flight simulator.
pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchWhat::Pacing(a) => bench_pacing(a),
    }
}

fn bench_pacing(a: FlightArgs) -> anyhow::Result<ExitCode> {
    if !(a.scale.is_finite() && a.scale > 0.0 && a.scale <= 10.0) {
        anyhow::bail!("--scale must be above 0 and at most 10 (got {})", a.scale);
    }
    let config = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            PacingConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => PacingConfig::builtin(),
    };
    let names: Vec<&str> = match &a.scenario {
        Some(n) if SCENARIOS.contains(&n.as_str()) => vec![n.as_str()],
        Some(n) => anyhow::bail!("unknown scenario {n:?} (known: {})", SCENARIOS.join(", ")),
        None => SCENARIOS.to_vec(),
    };
    for (flag, v) in [
        ("--penalty-secs", a.penalty_secs),
        ("--retry-penalty-secs", a.retry_penalty_secs),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && (0.0..=86_400.0).contains(&v))
        {
            anyhow::bail!("{flag} must be between 0 and 86400 (got {v})");
        }
    }
    let scenarios: Vec<Scenario> = names
        .iter()
        .filter_map(|n| Scenario::builtin(n, a.scale))
        .map(|mut s| {
            if let Some(p) = a.penalty_secs {
                s.receiver.penalty_secs = p;
            }
            if let Some(p) = a.retry_penalty_secs {
                s.receiver.retry_penalty_secs = p;
            }
            s
        })
        .collect();
    let report = match a.receiver.as_str() {
        "model" if a.warmup_reset_on_throttle => {
            anyhow::bail!("--warmup-reset-on-throttle needs --receiver sim")
        }
        "model" => flight::run_all(&scenarios, &config, a.seed),
        "sim" => flight::run_all_with(&scenarios, &config, a.seed, &mut |s, seed| {
            Box::new(SimReceiver::new(s, seed).warmup_reset(a.warmup_reset_on_throttle))
        }),
        other => anyhow::bail!("unknown --receiver {other:?} (sim or model)"),
    };
    if let Some(path) = &a.events {
        write_events(path, &scenarios, &config, a.seed)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, &names);
        if names.contains(&"new-ip") && a.receiver == "sim" {
            println!(
                "\nnew-ip warm-up: {}",
                if a.warmup_reset_on_throttle {
                    "a throttle sends the IP back to day 0 (--warmup-reset-on-throttle)"
                } else {
                    "days count from the IP's first message (a throttle does not erase them)"
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `mxpace sim` receiver model (crates/sim, Microsoft profile) behind the flight
/// simulator's receiver trait, set up with a scenario's hidden parameters. Sessions
/// run the whole dialogue (EHLO, MAIL, RCPT, DATA); recipients are `m<ID>@<tenant>.example`.
struct SimReceiver {
    rx: mxpace_sim::Receiver,
    open: std::collections::HashMap<std::net::IpAddr, Vec<mxpace_sim::SessionId>>,
    accepted: std::collections::HashSet<u64>,
    duplicates: u64,
    tenant_window: Option<(String, f64, f64)>,
    incident_window: Option<(f64, f64, f64)>,
}

impl SimReceiver {
    fn new(s: &Scenario, seed: u64) -> SimReceiver {
        let mut p = mxpace_sim::Profile::builtin("microsoft").expect("built-in profile");
        let m = &s.receiver;
        p.limits.per_ip_rate = m.per_ip_rate;
        p.limits.burst = m.burst;
        p.limits.per_ip_connections = m.per_ip_connections;
        p.limits.penalty_secs = m.penalty_secs;
        p.limits.retry_penalty_secs = m.retry_penalty_secs;
        p.limits.max_penalty_secs = m.max_penalty_secs;
        if let Some((start, growth)) = m.warmup {
            p.warmup.all_ips = true;
            p.warmup.start_rate = start;
            p.warmup.daily_growth = growth;
            p.warmup.time_compression = 1.0;
            // Warm-up days count from the IP's first message, not from its last throttle:
            // Microsoft's 4.7.500-699 page (research/analysis-anchors.md, smtp-replies.md
            // §1.5) expects these deferrals while a new IP ramps up and says they resolve
            // "as you slowly ramp up your email traffic over a period of a few days". Were
            // history erased by every deferral, ramping up would never resolve them.
            p.warmup.reset_on_throttle = false;
        }
        p.tenant_pressure.domains = Vec::new();
        p.incident.share = 0.0;
        p.incident.elsewhere_share = 0.0;
        SimReceiver {
            rx: mxpace_sim::Receiver::new(p, seed),
            open: Default::default(),
            accepted: Default::default(),
            duplicates: 0,
            tenant_window: m.tenant_pressure.clone(),
            incident_window: m.incident,
        }
    }

    /// Whether a throttle sends a warming IP back to day 0 (see `--warmup-reset-on-throttle`).
    fn warmup_reset(mut self, on: bool) -> SimReceiver {
        self.rx.profile_mut().warmup.reset_on_throttle = on;
        self
    }

    /// Tenant pressure and incidents are timed in a scenario; the sim profile's are
    /// switched on and off accordingly.
    fn apply_windows(&mut self, t: f64) {
        let p = self.rx.profile_mut();
        if let Some((tenant, from, to)) = &self.tenant_window {
            p.tenant_pressure.domains = if (*from..*to).contains(&t) {
                vec![format!("{tenant}.example")]
            } else {
                Vec::new()
            };
            p.tenant_pressure.share = 1.0;
        }
        if let Some((share, from, to)) = self.incident_window {
            p.incident.hosts = Vec::new();
            p.incident.share = if (from..to).contains(&t) { share } else { 0.0 };
        }
    }

    fn reply(r: mxpace_sim::Reply, stage: mxpace_reply::Stage, source: std::net::IpAddr) -> Reply {
        Reply {
            key: Some(format!("{}/{:?}/{source}", r.code, r.reason)),
            code: r.code,
            text: r.text,
            stage,
            meaning: None,
        }
    }
}

impl flight::receiver::Receiver for SimReceiver {
    fn connect(
        &mut self,
        source: std::net::IpAddr,
        _tenant: &str,
        now: mxpace_pacing::Moment,
    ) -> Reply {
        use mxpace_reply::Stage;
        let t = std::time::Duration::from_millis(now.0);
        self.apply_windows(now.as_secs_f64());
        match self.rx.connect(t, source, "127.0.0.1:25") {
            Ok((id, banner)) => {
                self.rx.ehlo(t, id, "flight.example");
                self.open.entry(source).or_default().push(id);
                Self::reply(banner, Stage::Connect, source)
            }
            Err(refusal) => Self::reply(refusal, Stage::Connect, source),
        }
    }

    fn deliver(
        &mut self,
        source: std::net::IpAddr,
        tenant: &str,
        id: u64,
        now: mxpace_pacing::Moment,
    ) -> Reply {
        use mxpace_reply::Stage;
        let t = std::time::Duration::from_millis(now.0);
        self.apply_windows(now.as_secs_f64());
        let session = match self.open.get(&source).and_then(|v| v.last()) {
            Some(s) => *s,
            None => match self.rx.connect(t, source, "127.0.0.1:25") {
                Ok((s, _)) => {
                    self.rx.ehlo(t, s, "flight.example");
                    self.open.entry(source).or_default().push(s);
                    s
                }
                Err(refusal) => return Self::reply(refusal, Stage::Connect, source),
            },
        };
        let mail = self.rx.mail_from(t, session, "sender@flight.example");
        if mail.code >= 400 {
            self.rx.rset(t, session);
            return Self::reply(mail, Stage::Mail, source);
        }
        let rcpt = self.rx.rcpt(t, session, &format!("m{id}@{tenant}.example"));
        if rcpt.code >= 400 {
            self.rx.rset(t, session);
            return Self::reply(rcpt, Stage::Rcpt, source);
        }
        self.rx.data(t, session);
        let out = self
            .rx
            .data_end(t, session, Some(&format!("<{id}@flight.example>")));
        if !out.accepted.is_empty() && !self.accepted.insert(id) {
            self.duplicates += 1;
        }
        Self::reply(out.reply, Stage::EndOfData, source)
    }

    fn close(&mut self, source: std::net::IpAddr, now: mxpace_pacing::Moment) {
        if let Some(s) = self.open.get_mut(&source).and_then(|v| v.pop()) {
            self.rx.close(std::time::Duration::from_millis(now.0), s);
        }
    }

    fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// Unix milliseconds of 2026-01-01T00:00:00Z, the simulated start in event files.
const SIM_START_MS: u64 = 1_767_225_600_000;

fn write_events(
    path: &std::path::Path,
    scenarios: &[Scenario],
    config: &PacingConfig,
    seed: u64,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = mxpace_events::EventWriter::new(std::io::BufWriter::new(file));
    for s in scenarios {
        let mut p = flight::policy::Mxpace::new(config.clone(), s.ips).with_change_log();
        flight::run(s, &mut p, seed);
        for change in p.change_log() {
            let mut change = change.clone();
            change.at = mxpace_pacing::Moment(change.at.0 + SIM_START_MS);
            let mut e = pacing_event(&change);
            e.origin = Some(format!("flight-simulator:{}", s.name));
            out.write(&e)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.0}"))
}

fn print_table(r: &Report, order: &[&str]) {
    println!(
        "flight simulator (seed {}; receiver-model labels used for {:.0}% of verdicts)",
        r.seed,
        100.0 * r.verdicts_from_receiver_labels
    );
    for name in order {
        let Some(s) = r.scenarios.get(*name) else {
            continue;
        };
        println!(
            "\n{name}: {} messages, ideal completion {:.0} s ({:.2} h); receiver {}/min per IP, penalty {} s (+{} s per attempt while throttled)",
            s.messages,
            s.ideal_completion_s,
            s.ideal_completion_s / 3600.0,
            s.receiver.per_ip_rate,
            s.receiver.penalty_secs,
            s.receiver.retry_penalty_secs
        );
        println!(
            "  {:<8} {:>11} {:>7} {:>9} {:>9} {:>9} {:>8} {:>5} {:>9}",
            "policy",
            "completion",
            "×ideal",
            "deferred",
            "p50 tx",
            "p95 tx",
            "expired",
            "dups",
            "attempts"
        );
        for p in POLICIES {
            let Some(x) = s.policies.get(*p) else {
                continue;
            };
            println!(
                "  {:<8} {:>9.0} s {:>7.2} {:>8.2}% {:>7} s {:>7} s {:>8} {:>5} {:>9}{}",
                p,
                x.completion_s,
                x.completion_s / s.ideal_completion_s,
                100.0 * x.deferred_share,
                opt(x.p50_transactional_s),
                opt(x.p95_transactional_s),
                x.expired,
                x.duplicates,
                x.attempts,
                if x.drained {
                    ""
                } else {
                    "  (not drained at horizon)"
                }
            );
        }
    }
}

/// A change of a path's limits or state as an event of `type: "pacing"`, for the one
/// event log. `change.at` is read as milliseconds since the Unix epoch (the relay's
/// clock). The reply that moved the limits is in `reply` when a receiver's reply did;
/// `extra` holds the trigger, the limits before and after, the states and the band.
pub fn pacing_event(change: &PacingChange) -> Event {
    // The event's time type comes from the events crate; start from the epoch through
    // the schema itself (this crate does not name the time crate) and add the offset.
    let mut e: Event = serde_json::from_value(serde_json::json!({
        "type": "pacing", "time": "1970-01-01T00:00:00Z"
    }))
    .expect("a minimal pacing event matches the schema");
    e.time += std::time::Duration::from_millis(change.at.0);
    debug_assert_eq!(e.kind, EventType::Pacing);
    e.source_ip = Some(change.path.source_ip);
    e.provider = Some(change.path.provider.clone());
    let from_reply = matches!(
        change.trigger,
        Trigger::SlowDown
            | Trigger::Pause
            | Trigger::StopSource
            | Trigger::BreakerOpen
            | Trigger::Band
    ) && change
        .reason
        .get(..3)
        .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()));
    if from_reply {
        e.reply = Some(change.reason.clone());
    }
    fn v<T: serde::Serialize>(x: &T) -> serde_json::Value {
        serde_json::to_value(x).unwrap_or(serde_json::Value::Null)
    }
    e.extra.insert("trigger".into(), v(&change.trigger));
    e.extra.insert("from".into(), v(&change.from));
    e.extra.insert("to".into(), v(&change.to));
    e.extra.insert("state_from".into(), v(&change.state_from));
    e.extra.insert("state_to".into(), v(&change.state_to));
    e.extra.insert("band".into(), v(&change.band));
    e.extra.insert(
        "reason".into(),
        serde_json::Value::String(change.reason.clone()),
    );
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxpace_pacing::{Moment, Outcome, Pacing, Path};
    use mxpace_reply::{Scope, Throttle, Verdict};

    #[test]
    fn new_ip_warm_up_days_count_from_first_sight_not_from_the_last_throttle() {
        use flight::receiver::Receiver as _;
        let s = Scenario::builtin("new-ip", 0.01).unwrap();
        let mut rx = SimReceiver::new(&s, 1);
        let ip = flight::policy::source_ip(0);
        let day = 86_400u64;
        let accepted = |rx: &mut SimReceiver, at: u64, n: u64, id0: u64| {
            rx.connect(ip, "t0", Moment::from_secs(at));
            let ok = (0..n)
                .filter(|i| rx.deliver(ip, "t0", id0 + i, Moment::from_secs(at)).is_ok())
                .count();
            rx.close(ip, Moment::from_secs(at));
            ok
        };
        // Day 0: 10/min, so a bucket of 10; the 11th is throttled.
        assert_eq!(accepted(&mut rx, 0, 11, 0), 10);
        // Throttled again late on day 0.
        assert_eq!(accepted(&mut rx, day * 9 / 10, 11, 100), 10);
        // Day 1 (counted from the first message): 20/min, a bucket of 20 — the throttle
        // at 0.9 days did not send the IP back to day 0.
        assert_eq!(accepted(&mut rx, day + 120, 25, 200), 20);
    }

    #[test]
    fn a_cut_becomes_a_pacing_event_carrying_the_reply_that_moved_it() {
        let mut p = Pacing::new(PacingConfig::builtin());
        let path: Path = "192.0.2.10@microsoft".parse().unwrap();
        let text = "451 4.7.500 Server busy. Please try again later from [192.0.2.10]. (S77714)";
        let v = Verdict {
            throttle: Throttle::SlowDown,
            scope: Scope::SendingIp,
            ips: vec!["192.0.2.10".parse().unwrap()],
            text: text.into(),
            ..Verdict::default()
        };
        // 2026-11-23T12:00:00Z
        let at = Moment(1_795_435_200_000);
        let changes = p.on_outcome(&path, Outcome::Deferred(&v), at);
        let e = pacing_event(&changes[0]);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "pacing");
        assert_eq!(json["time"], "2026-11-23T12:00:00Z");
        assert_eq!(json["source_ip"], "192.0.2.10");
        assert_eq!(json["provider"], "microsoft");
        assert_eq!(json["reply"], text);
        assert_eq!(json["extra"]["trigger"], "slow-down");
        assert_eq!(json["extra"]["state_to"], "paused");
        assert!(
            json["extra"]["to"]["rate_per_min"].as_f64().unwrap()
                < json["extra"]["from"]["rate_per_min"].as_f64().unwrap()
        );
    }
}
