//! `mxpace relay` against the receiver simulator `mxpace sim --profile script`:
//! the simulator's ledger (one line per accepted copy, written before its 250)
//! counts what really arrived. Python's smtplib submits. Every process started
//! is killed by a Drop guard; every port is picked free (port 0).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, Guard, wait_until};

/// A running `mxpace sim --profile script` with its ledger.
struct Sim {
    _guard: Guard,
    addr: SocketAddr,
    ledger: PathBuf,
}

impl Sim {
    fn start(dir: &Path) -> Sim {
        let ledger = dir.join("ledger.jsonl");
        let ledger_arg = ledger.to_str().unwrap();
        let (guard, addr) = common::spawn_sim(&[
            "--profile",
            "script",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "1",
            "--ledger",
            ledger_arg,
        ]);
        Sim {
            _guard: guard,
            addr,
            ledger,
        }
    }

    /// Every ledger line as JSON.
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.ledger).unwrap_or_default();
        text.lines()
            // The writer may be mid-line while we read: skip an incomplete tail.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Accepted copies (not deferrals) for `rcpt`.
    fn accepted_for(&self, rcpt: &str) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["recipient"] == rcpt && l.get("deferred").is_none())
            .collect()
    }

    fn deferred_for(&self, rcpt: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l["recipient"] == rcpt && l.get("deferred").is_some())
            .count()
    }

    /// `mxpace sim stats --json` over the ledger.
    fn stats(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["sim", "stats", "--json", "--ledger"])
            .arg(&self.ledger)
            .output()
            .unwrap();
        assert!(out.status.success(), "mxpace sim stats failed");
        serde_json::from_slice(&out.stdout).expect("sim stats prints JSON")
    }
}

/// A relay process with its directory.
struct Relay {
    guard: Option<Guard>,
    smtp: SocketAddr,
    http: Option<SocketAddr>,
    dir: PathBuf,
}

impl Relay {
    fn start(dir: &Path, config: &str) -> Relay {
        let path = dir.join("relay.toml");
        std::fs::write(&path, config.replace("{dir}", &dir.display().to_string())).unwrap();
        Relay::restart(dir)
    }

    fn restart(dir: &Path) -> Relay {
        let (guard, smtp, http) = common::spawn_relay(dir, &dir.join("relay.toml"));
        Relay {
            guard: Some(guard),
            smtp,
            http,
            dir: dir.to_owned(),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut g) = self.guard.take() {
            // SIGKILL: no chance to clean up, as in a crash.
            let _ = g.0.kill();
            let _ = g.0.wait();
        }
    }

    fn events_for(&self, rcpt: &str, kind: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("events.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["recipient"] == rcpt && e["type"] == kind)
            .collect()
    }
}

/// Config routing `example.test` (recipients) and `origin.test` (the sender,
/// so DSNs land in the ledger too) to the simulator.
fn config(sim: SocketAddr, extra: &str) -> String {
    format!(
        "[relay]\nlisten = [\"127.0.0.1:0\"]\nallow_clients = [\"127.0.0.0/8\"]\n\
         spool = \"{{dir}}/spool\"\nevents = \"{{dir}}/events.jsonl\"\nhostname = \"relay.test\"\n\
         smtp_timeout = \"10s\"\n{extra}\n\
         [[source]]\nip = \"127.0.0.2\"\nehlo = \"mta1.example.test\"\n\n\
         [route.\"example.test\"]\nhosts = [\"{sim}\"]\n\n\
         [route.\"origin.test\"]\nhosts = [\"{sim}\"]\n"
    )
}

/// Pacing (on by default) with rests short enough for tests of retries: a
/// `451 4.7.500 … from [IP]` deferral still cuts the path, but it rests 100 ms
/// instead of a minute, the breaker reopens after 100 ms, and the floor rate
/// (which spaces the release of held mail) is 10/s; mail held while the breaker's
/// probe is out asks again after 200 ms (the increase interval).
macro_rules! fast_pacing {
    () => {
        "\n[pacing.default]\nslow_down_pause = \"100ms\"\npause = \"100ms\"\n\
         breaker_cooldown = \"100ms\"\nincrease_interval = \"200ms\"\nrate_floor = \"600/min\"\nrate_initial = \"6000/min\"\nrate_ceiling = \"6000/min\"\n\
         [pacing.provider.microsoft]\nslow_down_pause = \"100ms\"\npause = \"100ms\"\n\
         breaker_cooldown = \"100ms\"\n"
    };
}

/// Quick retries, with [`fast_pacing`].
const FAST_RETRY: &str = concat!(
    "\n[retry]\nschedule = [\"300ms\", \"600ms\"]\nmax_age = \"60s\"\njitter = 0.0\n",
    fast_pacing!()
);

const PY_SEND_ONE: &str = r#"
import smtplib, sys
host, port, sender, rcpt, mid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
msg = "From: %s\r\nTo: %s\r\nMessage-ID: %s\r\nSubject: sim test\r\n\r\nhello\r\n" % (sender, rcpt, mid)
opts = sys.argv[6].split() if len(sys.argv) > 6 else []
s = smtplib.SMTP(host, port, timeout=20)
s.sendmail(sender, [rcpt], msg, rcpt_options=opts)
s.quit()
"#;

/// Submit one message through the relay with Python's smtplib.
fn submit(relay: &Relay, rcpt: &str, message_id: &str) {
    submit_with(relay, rcpt, message_id, "");
}

/// Submit with RCPT parameters (space-separated, e.g. `NOTIFY=NEVER`).
fn submit_with(relay: &Relay, rcpt: &str, message_id: &str, rcpt_options: &str) {
    let port = relay.smtp.port().to_string();
    let args = [
        "127.0.0.1",
        &port,
        "app@origin.test",
        rcpt,
        message_id,
        rcpt_options,
    ];
    common::python("submission", PY_SEND_ONE, &args);
}

fn outcomes(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn defer_then_accept_delivers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path());
    let relay = Relay::start(dir.path(), &config(sim.addr, FAST_RETRY));
    let rcpt = "tempfail+3@example.test";
    submit(&relay, rcpt, "<defer-1@origin.test>");
    wait_until("the delivery", Duration::from_secs(30), || {
        !sim.accepted_for(rcpt).is_empty()
    });
    // Give a wrongly repeated send the time to show up.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sim.accepted_for(rcpt).len(), 1, "delivered exactly once");
    assert_eq!(sim.deferred_for(rcpt), 3, "three deferrals first");
    let stats = sim.stats();
    assert_eq!(stats["accepted"], 1);
    assert_eq!(stats["duplicates"], 0);
    let attempts = relay.events_for(rcpt, "attempt");
    assert_eq!(
        outcomes(&attempts),
        ["deferred", "deferred", "deferred", "delivered"]
    );
    let numbers: Vec<u64> = attempts
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    assert!(relay.events_for(rcpt, "dsn").is_empty(), "no DSN");
    assert!(sim.accepted_for("app@origin.test").is_empty(), "no DSN");
}

#[test]
fn a_5xx_bounces_with_a_dsn_carrying_the_enhanced_code() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path());
    let relay = Relay::start(dir.path(), &config(sim.addr, FAST_RETRY));
    let rcpt = "550@example.test";
    submit(&relay, rcpt, "<bounce-1@origin.test>");
    wait_until("the DSN at the sender", Duration::from_secs(30), || {
        !sim.accepted_for("app@origin.test").is_empty()
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        sim.accepted_for(rcpt).is_empty(),
        "the 550 recipient got nothing"
    );
    assert_eq!(sim.accepted_for("app@origin.test").len(), 1, "one DSN");
    let attempts = relay.events_for(rcpt, "attempt");
    assert_eq!(outcomes(&attempts), ["bounced"], "a 5xx is not retried");
    assert!(
        attempts[0]["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1"),
        "{}",
        attempts[0]["reply"]
    );
    let dsn = relay.events_for(rcpt, "dsn");
    assert_eq!(dsn.len(), 1);
    // The status comes from the classifier's enhanced code.
    assert_eq!(dsn[0]["extra"]["status"], "5.1.1");
}

#[test]
fn notify_never_suppresses_the_bounce_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path());
    let relay = Relay::start(dir.path(), &config(sim.addr, FAST_RETRY));
    let rcpt = "550@example.test";
    submit_with(&relay, rcpt, "<never-1@origin.test>", "NOTIFY=NEVER");
    // A second bounce that asks for failure notices: its DSN proves DSNs flow.
    submit_with(
        &relay,
        rcpt,
        "<failure-1@origin.test>",
        "NOTIFY=FAILURE,DELAY",
    );
    wait_until("the NOTIFY=FAILURE DSN", Duration::from_secs(30), || {
        !sim.accepted_for("app@origin.test").is_empty()
    });
    wait_until("both bounced", Duration::from_secs(30), || {
        relay.events_for(rcpt, "attempt").len() == 2
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        relay
            .events_for(rcpt, "attempt")
            .iter()
            .all(|e| e["outcome"] == "bounced")
    );
    let dsn = relay.events_for(rcpt, "dsn");
    assert_eq!(dsn.len(), 1, "only the NOTIFY=FAILURE message gets a DSN");
    assert_eq!(dsn[0]["message_id"], "<failure-1@origin.test>");
    assert_eq!(sim.accepted_for("app@origin.test").len(), 1);
}

#[test]
fn dropped_and_421_at_data_sessions_are_retried_never_bounced() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path());
    let relay = Relay::start(
        dir.path(),
        &config(
            sim.addr,
            concat!(
                "\n[retry]\nschedule = [\"300ms\"]\nmax_age = \"5s\"\njitter = 0.0\n",
                fast_pacing!()
            ),
        ),
    );
    let drop = "drop@example.test";
    let close = "421-at-data@example.test";
    submit(&relay, drop, "<drop-1@origin.test>");
    submit(&relay, close, "<close-1@origin.test>");
    wait_until("both expire", Duration::from_secs(40), || {
        !relay.events_for(drop, "expired").is_empty()
            && !relay.events_for(close, "expired").is_empty()
    });
    wait_until("both expiry DSNs", Duration::from_secs(20), || {
        sim.accepted_for("app@origin.test").len() >= 2
    });
    for (rcpt, outcome) in [(drop, "connection-failed"), (close, "deferred")] {
        let attempts = relay.events_for(rcpt, "attempt");
        assert!(
            attempts.len() >= 3,
            "{rcpt} retried: {:?}",
            outcomes(&attempts)
        );
        assert!(
            outcomes(&attempts).iter().all(|o| o == outcome),
            "{rcpt}: every attempt {outcome}: {:?}",
            outcomes(&attempts)
        );
        assert!(sim.accepted_for(rcpt).is_empty());
        let dsn = relay.events_for(rcpt, "dsn");
        assert_eq!(dsn.len(), 1, "{rcpt}: one expiry DSN");
        assert_eq!(dsn[0]["extra"]["status"], "4.4.7");
    }
    assert_eq!(sim.accepted_for("app@origin.test").len(), 2);
}

/// POST a message to the relay's HTTP endpoint with `Idempotency-Key: key`.
fn post(http: SocketAddr, key: &str, json: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nIdempotency-Key: {key}\r\n\
         Content-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).expect("JSON answer")
}

#[test]
fn idempotency_keys_are_forgotten_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path());
    let relay = Relay::start(
        dir.path(),
        &config(
            sim.addr,
            &format!("http = \"127.0.0.1:0\"\nidempotency_retention = \"2s\"\n{FAST_RETRY}"),
        ),
    );
    let http = relay.http.expect("relay printed its http address");
    let msg = r#"{"from":"app@origin.test","to":["idem@example.test"],"message":"Message-ID: <idem-1@origin.test>\nSubject: idem\n\nhello\n"}"#;
    let first = post(http, "order-7", msg);
    let second = post(http, "order-7", msg);
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true, "within the retention: {second}");
    assert_eq!(first["queue_id"], second["queue_id"]);
    // Past the retention (2 s) and a pruning round (every 500 ms) the key is free.
    std::thread::sleep(Duration::from_millis(3000));
    let third = post(http, "order-7", msg);
    assert_eq!(third["duplicate"], false, "after the retention: {third}");
    assert_ne!(first["queue_id"], third["queue_id"]);
    wait_until("both copies delivered", Duration::from_secs(20), || {
        sim.accepted_for("idem@example.test").len() == 2
    });
}

/// Outbound sessions the relay may hold to the simulator at once.
const EGRESS_SESSIONS: usize = 4;
/// Submitting connections.
const SUBMITTERS: usize = 4;

#[test]
fn kill_9_under_load_then_restart_delivers_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path());
    let mut relay = Relay::start(
        dir.path(),
        &config(
            sim.addr,
            &format!("connections_per_domain = {EGRESS_SESSIONS}\n{FAST_RETRY}"),
        ),
    );
    let submitter = Command::new("python3")
        .args(["-c", common::PY_SUBMIT_LOAD, "127.0.0.1"])
        .arg(relay.smtp.port().to_string())
        .args(["400", &SUBMITTERS.to_string(), "k9"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed as a submitting client");
    let mut submitter = Guard(submitter);
    wait_until("some deliveries", Duration::from_secs(60), || {
        sim.accepted_for("load@example.test").len() >= 60
    });
    relay.kill9();
    assert!(submitter.0.wait().unwrap().success());
    let mut out = String::new();
    submitter
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let acked: HashSet<String> = out.lines().map(str::to_owned).collect();
    assert!(
        acked.len() >= 60,
        "acknowledged before the kill: {}",
        acked.len()
    );
    let _relay2 = Relay::restart(dir.path());
    let delivered = || -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for l in sim.accepted_for("load@example.test") {
            *m.entry(l["message_id"].as_str().unwrap_or("").to_owned())
                .or_insert(0) += 1;
        }
        m
    };
    wait_until(
        "every acknowledged message delivered",
        Duration::from_secs(90),
        || {
            let got = delivered();
            acked.iter().all(|id| got.contains_key(id))
        },
    );
    // Let the restarted relay finish whatever else it holds.
    std::thread::sleep(Duration::from_secs(2));
    let got = delivered();
    let stats = sim.stats();
    let unique = stats["unique"].as_u64().unwrap() as usize;
    let duplicates = stats["duplicates"].as_u64().unwrap() as usize;
    eprintln!(
        "acknowledged {}, ledger accepted {}, unique {unique}, duplicates {duplicates}",
        acked.len(),
        stats["accepted"]
    );
    assert!(
        got.keys().all(|id| id.starts_with("<k9-")),
        "only submitted messages arrive"
    );
    // Messages the relay made durable but whose 250 the kill cut off are
    // delivered too (at most one per submitting connection).
    assert!(
        unique >= acked.len() && unique <= acked.len() + SUBMITTERS,
        "unique {unique} vs acknowledged {}",
        acked.len()
    );
    // A re-send happens only when the receiver's 250 arrived but the
    // "delivered" commit did not finish before the kill (RFC 1047). Each
    // egress session has one message in flight and commits its outcome before
    // taking the next, so at most one per session.
    assert!(
        duplicates <= EGRESS_SESSIONS,
        "duplicates {duplicates} exceed what was in flight ({EGRESS_SESSIONS} sessions × 1)"
    );
}

/// Scrapes `GET /metrics` with Python's urllib and parses it with Prometheus's own
/// parser (`prometheus_client`); prints one `name{labels} value` line per sample,
/// labels sorted.
const PY_SCRAPE: &str = r#"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
with urllib.request.urlopen("http://%s/metrics" % sys.argv[1], timeout=20) as r:
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers["Content-Type"]
    text = r.read().decode()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s{%s} %g" % (s.name, labels, s.value))
"#;

fn scrape(http: SocketAddr) -> HashMap<String, f64> {
    common::python("scraping /metrics", PY_SCRAPE, &[&http.to_string()])
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

/// Fetches the dashboard (checks it is the page, with its policy, naming the relay) and
/// prints `GET /v1/stats`, which its script reads.
const PY_DASHBOARD: &str = r#"
import sys, urllib.request
base = "http://%s" % sys.argv[1]
with urllib.request.urlopen(base + "/", timeout=20) as r:
    assert r.headers["Content-Type"] == "text/html; charset=utf-8", r.headers["Content-Type"]
    assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
    page = r.read().decode()
assert "mxpace relay · relay.test" in page, page[:300]
for path in ["/v1/pacing", "/v1/queue", "/v1/stats"]:
    assert path in page, path
with urllib.request.urlopen(base + "/v1/stats", timeout=20) as r:
    print(r.read().decode())
"#;

/// The metric names and `label="value"` matchers the shipped alert rules use, one per
/// line (`name` or `name label value`), read with PyYAML.
const PY_RULE_REFS: &str = r#"
import re, sys, yaml
rules = [r for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]]
assert rules and all("alert" in r and "expr" in r for r in rules)
for r in rules:
    for name, matchers in re.findall(r"(mxpace_[a-z_]+)(?:\{([^}]*)\})?", str(r["expr"])):
        print(name)
        for k, v in re.findall(r'(\w+)="([^"]*)"', matchers):
            print(name, k, v)
"#;

#[test]
fn metrics_count_attempts_by_path_and_outcome_and_show_the_queue_and_pacing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path());
    let extra = format!("http = \"127.0.0.1:0\"\n{FAST_RETRY}");
    let relay = Relay::start(dir.path(), &config(sim.addr, &extra));
    let http = relay.http.expect("the relay serves HTTP");
    submit(&relay, "tempfail+2@example.test", "<m-1@origin.test>");
    submit(&relay, "ok1@example.test", "<m-2@origin.test>");
    submit(&relay, "550@example.test", "<m-3@origin.test>");
    wait_until(
        "both deliveries and the DSN",
        Duration::from_secs(30),
        || {
            !sim.accepted_for("tempfail+2@example.test").is_empty()
                && !sim.accepted_for("ok1@example.test").is_empty()
                && !sim.accepted_for("app@origin.test").is_empty()
        },
    );
    wait_until("the queue to empty", Duration::from_secs(30), || {
        scrape(http).get("mxpace_queue_messages{}") == Some(&0.0)
    });
    let sample = |m: &HashMap<String, f64>, outcome: &str| {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("mxpace_attempts_total{")
                    && k.contains("source_ip=127.0.0.2")
                    && k.contains(&format!("outcome={outcome}"))
            })
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    // The events the relay logged are the reference for the counters (an event is
    // written just after the 250 the sim's ledger saw, hence the wait).
    let logged = |outcome: &str| {
        let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "attempt" && e["outcome"] == outcome)
            .count() as f64
    };
    let outcomes = ["delivered", "deferred", "bounced"];
    wait_until(
        "the counters to match the event log",
        Duration::from_secs(10),
        || {
            let m = scrape(http);
            outcomes.iter().all(|o| sample(&m, o) == logged(o))
        },
    );
    let m = scrape(http);
    // The two messages and the bounce DSN to app@origin.test (routed to the sim too).
    assert_eq!(sample(&m, "delivered"), 3.0, "{m:?}");
    assert_eq!(sample(&m, "deferred"), 2.0, "{m:?}");
    assert_eq!(sample(&m, "bounced"), 1.0, "{m:?}");
    assert_eq!(
        m["mxpace_received_total{stream=transactional}"], 3.0,
        "{m:?}"
    );
    assert_eq!(m["mxpace_dsns_total{}"], 1.0, "one bounce DSN");
    assert_eq!(m["mxpace_queue_oldest_age_seconds{}"], 0.0);
    // Every pacing path is in exactly one state and one band.
    let paths: HashSet<String> = m
        .keys()
        .filter_map(|k| k.strip_prefix("mxpace_pacing_rate_per_minute{"))
        .map(|l| l.trim_end_matches('}').to_owned())
        .collect();
    assert!(!paths.is_empty(), "no pacing path in {m:?}");
    for p in &paths {
        let in_state: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("mxpace_pacing_state{") && k.contains(p.as_str()))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(in_state, 1.0, "{p}: {m:?}");
        let in_band: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("mxpace_pacing_band{") && k.contains(p.as_str()))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(in_band, 1.0, "{p}: {m:?}");
    }

    // The dashboard page, and the JSON its script reads, agree with the metrics.
    let out = common::python("the dashboard", PY_DASHBOARD, &[&http.to_string()]);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    let count = |outcome: &str| {
        stats["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"] == outcome)
            .map(|a| a["count"].as_f64().unwrap())
            .sum::<f64>()
    };
    for outcome in outcomes {
        assert_eq!(count(outcome), sample(&m, outcome), "{outcome}: {stats}");
    }

    // Every metric and label value the shipped alert rules ask for is exported.
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/alerts/mxpace.rules.yml");
    let refs = common::python(
        "reading the alert rules",
        PY_RULE_REFS,
        &[rules.to_str().unwrap()],
    );
    assert!(refs.lines().count() >= 6, "{refs}");
    for line in refs.lines() {
        let mut parts = line.split(' ');
        let name = parts.next().unwrap();
        let found = match (parts.next(), parts.next()) {
            (Some(k), Some(v)) => {
                let kv = format!("{k}={v}");
                m.keys()
                    .any(|key| key.starts_with(&format!("{name}{{")) && key.contains(&kv))
            }
            _ => m.keys().any(|key| key.starts_with(&format!("{name}{{"))),
        };
        assert!(
            found,
            "the alert rules use {line}, which /metrics does not export"
        );
    }
}

#[test]
fn a_long_deferral_sends_one_delay_report_to_senders_who_asked_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path());
    // Delay reports after 1 s instead of 4 h; retries at 0.3 s, then every 0.6 s.
    let extra = format!("delay_warning = \"1s\"\n{FAST_RETRY}");
    let relay = Relay::start(dir.path(), &config(sim.addr, &extra));
    let asked = "tempfail+4@example.test";
    let silent = "tempfail+5@example.test";
    submit_with(
        &relay,
        asked,
        "<slow-1@origin.test>",
        "NOTIFY=DELAY,FAILURE",
    );
    // No NOTIFY: no delay report unless delay_warning_unrequested is set.
    submit(&relay, silent, "<slow-2@origin.test>");
    wait_until(
        "both delivered after their deferrals",
        Duration::from_secs(30),
        || sim.accepted_for(asked).len() == 1 && sim.accepted_for(silent).len() == 1,
    );
    wait_until(
        "the delay report at the sender",
        Duration::from_secs(20),
        || !sim.accepted_for("app@origin.test").is_empty(),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(sim.deferred_for(asked), 4);
    assert_eq!(sim.deferred_for(silent), 5);
    let reports = sim.accepted_for("app@origin.test");
    assert_eq!(
        reports.len(),
        1,
        "one delay report, not one per deferral: {reports:?}"
    );
    let id = reports[0]["message_id"].as_str().unwrap();
    assert!(id.ends_with(".delay@relay.test>"), "{id}");
    let dsn = relay.events_for(asked, "dsn");
    assert_eq!(dsn.len(), 1, "{dsn:?}");
    assert_eq!(dsn[0]["extra"]["action"], "delayed");
    assert_eq!(dsn[0]["message_id"], "<slow-1@origin.test>");
    assert!(relay.events_for(silent, "dsn").is_empty());
    // Still delivered once: a delay report is no bounce.
    assert_eq!(
        outcomes(&relay.events_for(asked, "attempt")),
        ["deferred", "deferred", "deferred", "deferred", "delivered"]
    );
}

#[test]
fn notify_success_to_a_next_hop_without_dsn_gets_one_relayed_report() {
    let dir = tempfile::tempdir().unwrap();
    // The sim does not advertise DSN, so the notice chain ends at the relay.
    let sim = Sim::start(dir.path());
    let relay = Relay::start(dir.path(), &config(sim.addr, FAST_RETRY));
    submit_with(
        &relay,
        "ok-s@example.test",
        "<s-1@origin.test>",
        "NOTIFY=SUCCESS,FAILURE",
    );
    submit_with(
        &relay,
        "ok-f@example.test",
        "<s-2@origin.test>",
        "NOTIFY=FAILURE",
    );
    wait_until(
        "the relayed report at the sender",
        Duration::from_secs(30),
        || !sim.accepted_for("app@origin.test").is_empty(),
    );
    wait_until("both delivered", Duration::from_secs(30), || {
        sim.accepted_for("ok-s@example.test").len() == 1
            && sim.accepted_for("ok-f@example.test").len() == 1
    });
    std::thread::sleep(Duration::from_millis(1000));
    let reports = sim.accepted_for("app@origin.test");
    assert_eq!(reports.len(), 1, "only NOTIFY=SUCCESS asks: {reports:?}");
    let id = reports[0]["message_id"].as_str().unwrap();
    assert!(id.ends_with(".relayed@relay.test>"), "{id}");
    let dsn = relay.events_for("ok-s@example.test", "dsn");
    assert_eq!(dsn.len(), 1);
    assert_eq!(dsn[0]["extra"]["action"], "relayed");
    assert!(relay.events_for("ok-f@example.test", "dsn").is_empty());
}
