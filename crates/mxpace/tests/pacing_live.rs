//! The pacing controller in the live relay (issue 5, item 6): `mxpace relay` with two
//! egress IPs against `mxpace sim --profile microsoft` on loopback. The sim gives one
//! IP a poor reputation (a quarter of the per-IP budget); its path must slow while the
//! other keeps its rate, ramp back up gradually once the throttle lifts, and the sim's
//! ledger must show every message once. Also `mxpace pacing` against a live relay.
//! Every process started is killed by a Drop guard; every port is picked free.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{BIN, Guard, wait_until};

/// A running `mxpace sim` with its ledger.
struct Sim {
    _guard: Guard,
    addr: SocketAddr,
}

impl Sim {
    /// Start the Microsoft-like receiver on `listen` (port 0: a free one).
    fn start(listen: &str, ledger: &Path, extra: &[&str]) -> Sim {
        let mut args = vec!["--profile", "microsoft", "--listen", listen, "--seed", "1"];
        args.extend(["--ledger", ledger.to_str().unwrap()]);
        args.extend(extra);
        let (guard, addr) = common::spawn_sim(&args);
        Sim {
            _guard: guard,
            addr,
        }
    }
}

/// `mxpace sim stats --json` over a ledger.
fn ledger_stats(ledger: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["sim", "stats", "--json", "--ledger"])
        .arg(ledger)
        .output()
        .unwrap();
    assert!(out.status.success(), "mxpace sim stats failed");
    serde_json::from_slice(&out.stdout).expect("sim stats prints JSON")
}

/// Accepted copies per recipient in the ledger.
fn accepted(ledger: &Path) -> std::collections::HashMap<String, usize> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut m = std::collections::HashMap::new();
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v.get("deferred").is_none()
            && let Some(r) = v["recipient"].as_str()
        {
            *m.entry(r.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// One HTTP/1.1 request; returns the status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn inject(http_addr: SocketAddr, rcpt: &str, stream: &str) {
    let msg = format!("Subject: pacing {rcpt}\r\nFrom: app@origin.test\r\n\r\nhello\r\n");
    let body = serde_json::json!({
        "from": "app@origin.test", "to": [rcpt], "message": msg, "stream": stream
    });
    let (status, answer) = http(http_addr, "POST", "/v1/messages", &body.to_string());
    assert_eq!(status, 200, "injection refused: {answer}");
}

fn pacing_events(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "pacing")
        .collect()
}

fn of_path<'a>(events: &'a [serde_json::Value], path: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["extra"]["path"] == path)
        .collect()
}

fn rate(limits: &serde_json::Value) -> f64 {
    limits["rate_per_min"].as_f64().unwrap()
}

/// Relay config: two sources, `example.test` routed to the sim, HTTP admin API,
/// pacing on a small time scale (seconds instead of minutes).
fn relay_config(dir: &Path, sim: SocketAddr, sources: &[&str]) -> PathBuf {
    let mut c = format!(
        "[relay]\nlisten = [\"127.0.0.1:0\"]\nallow_clients = [\"127.0.0.0/8\"]\n\
         spool = \"{d}/spool\"\nevents = \"{d}/events.jsonl\"\nhostname = \"relay.test\"\n\
         http = \"127.0.0.1:0\"\nsmtp_timeout = \"10s\"\nconnections_per_domain = 4\n\
         [retry]\nschedule = [\"300ms\", \"600ms\", \"1s\"]\nmax_age = \"120s\"\njitter = 0.0\n\
         [route.\"example.test\"]\nhosts = [\"{sim}\"]\n\
         [pacing.provider.microsoft]\n\
         rate_floor = \"30/min\"\nrate_initial = \"300/min\"\nrate_ceiling = \"420/min\"\n\
         connections_initial = 2\nconnections_ceiling = 2\n\
         increase_interval = \"1s\"\nincrease_step = \"30/min\"\nprobe_after = \"3s\"\n\
         cut_holdoff = \"500ms\"\nslow_down_pause = \"1s\"\npause = \"2s\"\nmax_pause = \"8s\"\n\
         pause_memory = \"10s\"\nbreaker_cooldown = \"2s\"\nwindow = \"5s\"\nwindow_min_attempts = 10\n",
        d = dir.display()
    );
    for (i, ip) in sources.iter().enumerate() {
        c.push_str(&format!(
            "[[source]]\nip = \"{ip}\"\nehlo = \"mta{i}.origin.test\"\n"
        ));
    }
    let path = dir.join("relay.toml");
    std::fs::write(&path, c).unwrap();
    path
}

#[test]
fn throttling_one_ip_slows_only_its_path_and_it_ramps_back_when_the_throttle_lifts() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    // Budgets: 480/min per IP, a quarter (120/min) for 127.0.0.2. The relay's paths start
    // at 300/min and may grow to 420/min: under 127.0.0.1's budget, over 127.0.0.2's.
    let throttled = [
        "--per-ip-rate",
        "480/min",
        "--burst",
        "10",
        "--penalty-secs",
        "2",
        "--retry-penalty-secs",
        "0.5",
        "--reputation",
        "127.0.0.2",
    ];
    let sim = Sim::start("127.0.0.1:0", &ledger, &throttled);
    let config = relay_config(dir.path(), sim.addr, &["127.0.0.1", "127.0.0.2"]);
    let (_relay, _smtp, http_addr) = common::spawn_relay(dir.path(), &config);
    let http_addr = http_addr.expect("relay printed its http address");

    // Phase 1: the throttle, on a mix of transactional and bulk mail.
    let first = 120;
    for i in 0..first {
        let stream = if i % 2 == 0 { "bulk" } else { "transactional" };
        inject(http_addr, &format!("u{i}@example.test"), stream);
    }
    wait_until("phase 1 delivered", Duration::from_secs(50), || {
        accepted(&ledger).len() == first
    });
    let phase1 = pacing_events(dir.path());
    let slow = of_path(&phase1, "127.0.0.2/microsoft");
    let fast = of_path(&phase1, "127.0.0.1/microsoft");
    let cuts: Vec<_> = slow
        .iter()
        .filter(|e| matches!(e["extra"]["trigger"].as_str(), Some("slow-down" | "pause")))
        .collect();
    assert!(
        !cuts.is_empty(),
        "the throttled IP's path was never cut: {slow:#?}"
    );
    let reply = cuts[0]["reply"].as_str().unwrap_or_default();
    assert!(
        reply.starts_with("451 4.7.") && reply.contains("[127.0.0.2]"),
        "the cut carries the reply that moved it: {reply}"
    );
    assert!(rate(&cuts[0]["extra"]["to"]) < rate(&cuts[0]["extra"]["from"]));
    for e in &fast {
        assert!(
            rate(&e["extra"]["to"]) >= rate(&e["extra"]["from"]),
            "the unthrottled path was slowed: {e}"
        );
    }
    assert_no_bulk_on_a_path_acting_now(dir.path(), "127.0.0.2/microsoft", "127.0.0.2");
    let (status, body) = http(http_addr, "GET", "/v1/pacing", "");
    assert_eq!(status, 200);
    let paths: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let find = |name: &str| {
        paths
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from GET /v1/pacing: {body}"))
            .clone()
    };
    let (p1, p2) = (find("127.0.0.1/microsoft"), find("127.0.0.2/microsoft"));
    assert!(
        rate(&p2["limits"]) < rate(&p1["limits"]),
        "throttled path not slower: {p1} vs {p2}"
    );
    assert!(rate(&p1["limits"]) >= 300.0, "{p1}");
    assert!(p1["last_reply"].is_null(), "{p1}");
    assert!(
        p2["last_reply"]
            .as_str()
            .is_some_and(|r| r.contains("[127.0.0.2]")),
        "the reply that slowed the path is shown: {p2}"
    );
    let low = rate(&p2["limits"]);

    // Phase 2: the throttle lifts (the receiver restarts on the same address without
    // the poor reputation); the slowed path must ramp up in steps.
    std::thread::sleep(Duration::from_millis(2500)); // idle sessions close first
    let listen = sim.addr.to_string();
    drop(sim);
    let _sim2 = restart_sim(&listen, &ledger);
    let lifted_at = pacing_events(dir.path()).len();
    // Demand lasts until the slowed path has stepped up a few times (a ramp needs
    // successes on the path; on a loaded machine that takes longer), at most 40 s.
    let ups_after_lift = |dir: &Path| {
        of_path(&pacing_events(dir)[lifted_at..], "127.0.0.2/microsoft")
            .iter()
            .filter(|e| e["extra"]["trigger"] == "increase")
            .count()
    };
    let mut second = 0;
    let start = Instant::now();
    while (second < 150 || ups_after_lift(dir.path()) < 3)
        && start.elapsed() < Duration::from_secs(40)
    {
        for _ in 0..15 {
            inject(
                http_addr,
                &format!("u{}@example.test", first + second),
                "transactional",
            );
            second += 1;
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    wait_until("phase 2 delivered", Duration::from_secs(50), || {
        accepted(&ledger).len() == first + second
    });
    let all = pacing_events(dir.path());
    for e in &all {
        eprintln!(
            "{} {} {} {:.0}->{:.0} {}",
            e["time"].as_str().unwrap_or(""),
            e["extra"]["path"].as_str().unwrap_or(""),
            e["extra"]["trigger"].as_str().unwrap_or(""),
            rate(&e["extra"]["from"]),
            rate(&e["extra"]["to"]),
            e["extra"]["state_to"].as_str().unwrap_or("")
        );
    }
    let after = &all[lifted_at..];
    let ups: Vec<(f64, f64)> = of_path(after, "127.0.0.2/microsoft")
        .iter()
        .filter(|e| e["extra"]["trigger"] == "increase")
        .map(|e| (rate(&e["extra"]["from"]), rate(&e["extra"]["to"])))
        .collect();
    assert!(
        ups.len() >= 2,
        "the slowed path did not ramp up in steps after the lift: {ups:?}"
    );
    for (from, to) in &ups {
        assert!(to > from, "an increase that did not increase: {ups:?}");
        // Gradual: no single step jumps from the cut rate to the ceiling.
        assert!(
            to - from < 0.5 * (420.0 - 30.0),
            "a step, not a ramp: {ups:?}"
        );
    }
    let (_, body) = http(http_addr, "GET", "/v1/pacing", "");
    let paths: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let p2 = paths
        .iter()
        .find(|p| p["name"] == "127.0.0.2/microsoft")
        .unwrap();
    assert!(rate(&p2["limits"]) > low, "no ramp: {low} then {p2}");

    // Nothing lost, nothing duplicated.
    let per_rcpt = accepted(&ledger);
    assert_eq!(per_rcpt.len(), first + second);
    assert!(
        per_rcpt.values().all(|&n| n == 1),
        "a duplicate: {per_rcpt:?}"
    );
    let stats = ledger_stats(&ledger);
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert_eq!(stats["unique"], (first + second) as u64, "{stats}");
}

/// Seconds since the start of the month of an event's RFC 3339 UTC time (the test
/// runs for a minute; fractional digits vary, so strings do not compare).
fn secs(e: &serde_json::Value) -> f64 {
    let t = e["time"].as_str().unwrap();
    let (date, clock) = t.split_once('T').unwrap();
    let day: f64 = date.rsplit('-').next().unwrap().parse().unwrap();
    let mut parts = clock.trim_end_matches('Z').split(':');
    let mut next = || -> f64 { parts.next().unwrap().parse().unwrap() };
    day * 86400.0 + next() * 3600.0 + next() * 60.0 + next()
}

/// The path went into the `act-now` band, and no bulk attempt left from its IP while
/// it had been there for over a second (the grace covers messages already past the
/// gate when the band changed).
fn assert_no_bulk_on_a_path_acting_now(dir: &Path, path: &str, ip: &str) {
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // (time, band) after each band change of the path.
    let bands: Vec<(f64, String)> = events
        .iter()
        .filter(|e| e["type"] == "pacing" && e["extra"]["path"] == path)
        .filter(|e| e["extra"]["trigger"] == "band")
        .map(|e| (secs(e), e["extra"]["band"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        bands.iter().any(|(_, b)| b == "act-now"),
        "{path} never reached the act-now band: {bands:?}"
    );
    let band_at = |t: f64| {
        bands
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(_, b)| b.as_str())
            .unwrap_or("normal")
    };
    for e in events
        .iter()
        .filter(|e| e["type"] == "attempt" && e["source_ip"] == ip && e["stream"] == "bulk")
    {
        let t = secs(e);
        let since_change = bands
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(at, _)| t - at);
        assert!(
            !(band_at(t) == "act-now" && since_change.is_some_and(|d| d > 1.0)),
            "bulk went on {path} in the act-now band: {e}"
        );
    }
}

/// Start the sim again on the same address (its port was just freed), without the
/// poor reputation; retries briefly in case the port is not free yet.
fn restart_sim(listen: &str, ledger: &Path) -> Sim {
    let start = Instant::now();
    loop {
        let probe = std::net::TcpListener::bind(listen);
        if probe.is_ok() || start.elapsed() > Duration::from_secs(10) {
            drop(probe);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = Sim::start(
        listen,
        ledger,
        &["--per-ip-rate", "480/min", "--burst", "10"],
    );
    assert_eq!(s.addr.to_string(), listen);
    s
}

fn mxpace_pacing(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("pacing")
        .args(args)
        .output()
        .expect("running mxpace pacing");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn mxpace_pacing_shows_pauses_and_resumes_paths_of_a_live_relay_and_held_mail_is_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let sim = Sim::start("127.0.0.1:0", &ledger, &["--per-ip-rate", "6000/min"]);
    let config = relay_config(dir.path(), sim.addr, &["127.0.0.1"]);
    let (_relay, _smtp, http_addr) = common::spawn_relay(dir.path(), &config);
    let http_addr = http_addr.unwrap();
    let url = format!("http://{http_addr}");
    inject(http_addr, "first@example.test", "bulk");
    wait_until("the first delivery", Duration::from_secs(20), || {
        accepted(&ledger).contains_key("first@example.test")
    });

    let (ok, out) = mxpace_pacing(&["--json", "--relay", &url]);
    assert!(ok, "{out}");
    let paths: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(paths.len(), 1, "{out}");
    assert_eq!(paths[0]["name"], "127.0.0.1/microsoft");
    assert_eq!(paths[0]["path"]["provider"], "microsoft");
    assert!(paths[0]["limits"]["rate_per_min"].as_f64().unwrap() >= 30.0);
    assert!(paths[0]["state"].is_string() && paths[0]["band"].is_string());

    // The table, found through the relay's config (the spool publishes the address).
    let cfg = config.to_str().unwrap();
    let (ok, table) = mxpace_pacing(&["--config", cfg]);
    assert!(ok, "{table}");
    assert!(
        table.contains("127.0.0.1/microsoft") && table.contains("RATE/MIN"),
        "{table}"
    );

    // Pause: mail waits, and waiting is no delivery attempt.
    let (ok, out) = mxpace_pacing(&["--relay", &url, "pause", "127.0.0.1/microsoft"]);
    assert!(ok && out.contains("stopped"), "{out}");
    inject(http_addr, "held@example.test", "transactional");
    std::thread::sleep(Duration::from_millis(2000));
    assert!(!accepted(&ledger).contains_key("held@example.test"));
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let attempts = events
        .lines()
        .filter(|l| l.contains("\"type\":\"attempt\"") && l.contains("held@example.test"))
        .count();
    assert_eq!(attempts, 0, "a pacing hold was logged as an attempt");

    // An unknown path is a clear error.
    let (ok, out) = mxpace_pacing(&["--relay", &url, "pause", "127.0.0.9/google"]);
    assert!(
        !ok && out.contains("unknown path 127.0.0.9/google"),
        "{out}"
    );
    let (ok, out) = mxpace_pacing(&["--relay", &url, "resume", "not-a-path"]);
    assert!(!ok && out.contains("bad path"), "{out}");

    // Resume: the held message goes, once, as its first attempt.
    let (ok, out) = mxpace_pacing(&["--relay", &url, "resume", "127.0.0.1/microsoft"]);
    assert!(ok && out.contains("ramping"), "{out}");
    wait_until("the held delivery", Duration::from_secs(15), || {
        accepted(&ledger).contains_key("held@example.test")
    });
    wait_until("its attempt event", Duration::from_secs(5), || {
        std::fs::read_to_string(dir.path().join("events.jsonl"))
            .unwrap()
            .lines()
            .any(|l| l.contains("\"type\":\"attempt\"") && l.contains("held@example.test"))
    });
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let attempt: serde_json::Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "attempt" && e["recipient"] == "held@example.test")
        .unwrap();
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["outcome"], "delivered");
    let triggers: Vec<String> = pacing_events(dir.path())
        .iter()
        .map(|e| e["extra"]["trigger"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        triggers.iter().any(|t| t == "operator-pause")
            && triggers.iter().any(|t| t == "operator-resume"),
        "{triggers:?}"
    );
}

#[test]
fn the_relay_refuses_a_bad_pacing_config_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[pacing.provider.microsoft]\nrate_floor = \"10/s\"\nrate_ceiling = \"1/s\"\n",
            "pacing.provider.microsoft.rate_floor",
        ),
        (
            "[pacing.default]\nincrease_step = \"0/min\"\n",
            "pacing.default.increase_step",
        ),
        (
            "[pacing.provider.hotmale]\npause = \"1m\"\n",
            "pacing.provider.hotmale",
        ),
        (
            "[pacing.default]\nwindow = \"5 fortnights\"\n",
            "pacing.default.window",
        ),
    ];
    for (section, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!(
                "[relay]\nlisten = [\"127.0.0.1:0\"]\nspool = \"{d}/spool\"\nevents = \"{d}/e.jsonl\"\n{section}",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["relay", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{section} accepted");
        assert!(err.contains(key), "{section}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_path_never_has_more_connections_open_than_its_pacing_limit() {
    // The receiver refuses a fourth connection from one IP (421 4.7.652). Four
    // recipient domains on the same Microsoft host let the relay's workers ask for
    // connections at the same moment (up to 16 without pacing); the path's limit (2)
    // must hold across them, though every worker asks before any session is up. One
    // connection of slack: the receiver counts a session until it has seen it close.
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let sim = Sim::start(
        "127.0.0.1:0",
        &ledger,
        &["--per-ip-rate", "6000/min", "--per-ip-connections", "3"],
    );
    let config = relay_config(dir.path(), sim.addr, &["127.0.0.1"]);
    let domains = ["example.test", "a.test", "b.test", "c.test"];
    let mut text = std::fs::read_to_string(&config).unwrap();
    for d in &domains[1..] {
        text.push_str(&format!("[route.\"{d}\"]\nhosts = [\"{}\"]\n", sim.addr));
    }
    std::fs::write(&config, text).unwrap();
    let (_relay, _smtp, http_addr) = common::spawn_relay(dir.path(), &config);
    let http_addr = http_addr.unwrap();
    // The first session teaches the relay that this host is Microsoft (it is an IP
    // literal here, so only the greeting says so); from then on the path is known.
    inject(http_addr, "first@example.test", "bulk");
    wait_until("the first delivery", Duration::from_secs(20), || {
        accepted(&ledger).contains_key("first@example.test")
    });
    let rcpts: Vec<String> = (0..40)
        .map(|i| format!("r{i}@{}", domains[i % domains.len()]))
        .collect();
    for r in &rcpts {
        inject(http_addr, r, "bulk");
    }
    wait_until("every message accepted", Duration::from_secs(60), || {
        let got = accepted(&ledger);
        rcpts.iter().all(|r| got.contains_key(r))
    });
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let refused: Vec<&str> = events.lines().filter(|l| l.contains("4.7.652")).collect();
    assert!(
        refused.is_empty(),
        "the receiver refused connections over its per-IP cap: {refused:?}"
    );
    assert!(accepted(&ledger).values().all(|&n| n == 1), "a duplicate");
}
