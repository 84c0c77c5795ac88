//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4): counters taken
//! from the events the relay writes (every attempt, receipt, expiry and DSN passes
//! through [`Counters::observe`]), gauges read at scrape time from the queue summary
//! and the pacing gate's snapshot. [`render`] is pure: data in, text out.
//!
//! Written by hand rather than with a metrics crate: the gauges are views of state the
//! relay already keeps (queue, pacing paths), which a registry would have to copy on
//! every change; the format is a few lines per family
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>), and the tests read
//! the output back with Prometheus's own Python parser.

use crate::queue::Summary;
use mxpace_events::{Event, EventType, Outcome};
use mxpace_pacing::{Band, PathSnapshot, PathState};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Counts of what the relay did since it started.
#[derive(Debug, Default)]
pub struct Counters {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    /// (source IP, provider, outcome) → attempts.
    attempts: BTreeMap<(String, String, &'static str), u64>,
    /// Stream → recipients accepted into the queue.
    received: BTreeMap<String, u64>,
    expired: u64,
    dsns: u64,
}

impl Counters {
    /// Count `events` (called with every batch the relay writes to its event log).
    pub fn observe(&self, events: &[Event]) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            match e.kind {
                EventType::Attempt => {
                    let source = e.source_ip.map(|ip| ip.to_string()).unwrap_or_default();
                    let provider = e.provider.clone().unwrap_or_else(|| "unknown".into());
                    let outcome = outcome_name(e.outcome);
                    *c.attempts.entry((source, provider, outcome)).or_default() += 1;
                }
                EventType::Received => {
                    let stream = e.stream.clone().unwrap_or_default();
                    *c.received.entry(stream).or_default() += 1;
                }
                EventType::Expired => c.expired += 1,
                EventType::Dsn => c.dsns += 1,
                EventType::Pacing | EventType::Admin => {}
            }
        }
    }

    fn snapshot(&self) -> Counts {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The counts as JSON (`GET /v1/stats`, the dashboard): `attempts` as a list of
    /// `{source_ip, provider, outcome, count}`, `received` by stream, `expired`, `dsns`.
    pub fn to_json(&self) -> serde_json::Value {
        let c = self.snapshot();
        let attempts: Vec<serde_json::Value> = c
            .attempts
            .iter()
            .map(|((source_ip, provider, outcome), count)| {
                serde_json::json!({
                    "source_ip": source_ip,
                    "provider": provider,
                    "outcome": outcome,
                    "count": count,
                })
            })
            .collect();
        serde_json::json!({
            "attempts": attempts,
            "received": c.received,
            "expired": c.expired,
            "dsns": c.dsns,
        })
    }
}

fn outcome_name(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Delivered) => "delivered",
        Some(Outcome::Deferred) => "deferred",
        Some(Outcome::Bounced) => "bounced",
        Some(Outcome::ConnectionFailed) => "connection-failed",
        None => "unknown",
    }
}

fn state_name(s: PathState) -> &'static str {
    match s {
        PathState::Normal => "normal",
        PathState::Slowed => "slowed",
        PathState::Paused => "paused",
        PathState::Stopped => "stopped",
        PathState::Ramping => "ramping",
    }
}

fn band_name(b: Band) -> &'static str {
    match b {
        Band::Normal => "normal",
        Band::Watch => "watch",
        Band::ActNow => "act-now",
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes one family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text of `counters`, the queue `summary` and the pacing `paths`.
pub fn render(counters: &Counters, summary: &Summary, paths: &[PathSnapshot]) -> String {
    let c = counters.snapshot();
    let mut o = String::new();

    family(
        &mut o,
        "mxpace_attempts_total",
        "counter",
        "Delivery attempts per recipient since start, by egress IP, provider and outcome.",
    );
    for ((source, provider, outcome), n) in &c.attempts {
        let _ = writeln!(
            o,
            "mxpace_attempts_total{{source_ip=\"{}\",provider=\"{}\",outcome=\"{outcome}\"}} {n}",
            label(source),
            label(provider)
        );
    }
    family(
        &mut o,
        "mxpace_received_total",
        "counter",
        "Recipients accepted into the queue since start, by stream.",
    );
    for (stream, n) in &c.received {
        let _ = writeln!(
            o,
            "mxpace_received_total{{stream=\"{}\"}} {n}",
            label(stream)
        );
    }
    family(
        &mut o,
        "mxpace_expired_total",
        "counter",
        "Recipients given up at the queue's max age since start.",
    );
    let _ = writeln!(o, "mxpace_expired_total {}", c.expired);
    family(
        &mut o,
        "mxpace_dsns_total",
        "counter",
        "Delivery status notifications generated since start.",
    );
    let _ = writeln!(o, "mxpace_dsns_total {}", c.dsns);

    family(
        &mut o,
        "mxpace_queue_messages",
        "gauge",
        "Messages with at least one recipient still queued.",
    );
    let _ = writeln!(o, "mxpace_queue_messages {}", summary.messages);
    family(
        &mut o,
        "mxpace_queue_recipients",
        "gauge",
        "Recipients still queued, by the provider of their last attempt (unknown before the first).",
    );
    for (provider, g) in &summary.by_provider {
        let _ = writeln!(
            o,
            "mxpace_queue_recipients{{provider=\"{}\"}} {}",
            label(provider),
            g.recipients
        );
    }
    family(
        &mut o,
        "mxpace_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest message with a recipient still queued.",
    );
    let _ = writeln!(
        o,
        "mxpace_queue_oldest_age_seconds {}",
        summary.oldest_age_secs
    );

    let path_labels = |p: &PathSnapshot| {
        format!(
            "source_ip=\"{}\",provider=\"{}\"",
            p.path.source_ip,
            label(&p.path.provider)
        )
    };
    for (name, help, value) in [
        (
            "mxpace_pacing_rate_per_minute",
            "Messages per minute the path may send now.",
            (|p: &PathSnapshot| p.limits.rate_per_min) as fn(&PathSnapshot) -> f64,
        ),
        (
            "mxpace_pacing_connections",
            "Concurrent connections the path may open now.",
            |p| f64::from(p.limits.connections),
        ),
        (
            "mxpace_pacing_deferral_ratio",
            "Deferred share of the path's attempts in its sliding window (0-1).",
            |p| p.deferral_rate,
        ),
        (
            "mxpace_pacing_window_attempts",
            "Attempts in the path's sliding window.",
            |p| f64::from(p.window_attempts),
        ),
    ] {
        family(&mut o, name, "gauge", help);
        for p in paths {
            let _ = writeln!(o, "{name}{{{}}} {}", path_labels(p), value(p));
        }
    }
    family(
        &mut o,
        "mxpace_pacing_state",
        "gauge",
        "1 for the state each path is in (normal, slowed, paused, stopped, ramping).",
    );
    for p in paths {
        for s in [
            PathState::Normal,
            PathState::Slowed,
            PathState::Paused,
            PathState::Stopped,
            PathState::Ramping,
        ] {
            let _ = writeln!(
                o,
                "mxpace_pacing_state{{{},state=\"{}\"}} {}",
                path_labels(p),
                state_name(s),
                u8::from(p.state == s)
            );
        }
    }
    family(
        &mut o,
        "mxpace_pacing_band",
        "gauge",
        "1 for the deferral-rate band each path is in (normal under 1 %, watch 1-5 %, act-now over 5 %, per-provider baselines).",
    );
    for p in paths {
        for b in [Band::Normal, Band::Watch, Band::ActNow] {
            let _ = writeln!(
                o,
                "mxpace_pacing_band{{{},band=\"{}\"}} {}",
                path_labels(p),
                band_name(b),
                u8::from(p.band == b)
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxpace_pacing::{Limits, Path};
    use time::OffsetDateTime;

    fn attempt(source: &str, provider: &str, outcome: Outcome) -> Event {
        let mut e = Event::new(EventType::Attempt, OffsetDateTime::UNIX_EPOCH);
        e.source_ip = Some(source.parse().unwrap());
        e.provider = Some(provider.into());
        e.outcome = Some(outcome);
        e
    }

    #[test]
    fn attempts_are_counted_by_path_and_outcome() {
        let counters = Counters::default();
        counters.observe(&[
            attempt("192.0.2.1", "microsoft", Outcome::Deferred),
            attempt("192.0.2.1", "microsoft", Outcome::Deferred),
            attempt("192.0.2.1", "microsoft", Outcome::Delivered),
            attempt("192.0.2.2", "google", Outcome::Delivered),
        ]);
        let text = render(&counters, &Summary::default(), &[]);
        assert!(text.contains(
            "mxpace_attempts_total{source_ip=\"192.0.2.1\",provider=\"microsoft\",outcome=\"deferred\"} 2\n"
        ));
        assert!(text.contains(
            "mxpace_attempts_total{source_ip=\"192.0.2.1\",provider=\"microsoft\",outcome=\"delivered\"} 1\n"
        ));
        assert!(text.contains(
            "mxpace_attempts_total{source_ip=\"192.0.2.2\",provider=\"google\",outcome=\"delivered\"} 1\n"
        ));
    }

    #[test]
    fn a_path_reports_its_limits_and_exactly_one_state_and_band() {
        let snapshot = PathSnapshot {
            path: Path::new("192.0.2.1".parse().unwrap(), "microsoft"),
            limits: Limits {
                rate_per_min: 42.5,
                connections: 2,
                per_connection: 20,
            },
            state: PathState::Slowed,
            since: Default::default(),
            until: None,
            reason: "451 4.7.500 Server busy".into(),
            deferral_rate: 0.125,
            window_attempts: 80,
            band: Band::ActNow,
        };
        let text = render(&Counters::default(), &Summary::default(), &[snapshot]);
        let labels = "source_ip=\"192.0.2.1\",provider=\"microsoft\"";
        assert!(text.contains(&format!("mxpace_pacing_rate_per_minute{{{labels}}} 42.5\n")));
        assert!(text.contains(&format!("mxpace_pacing_connections{{{labels}}} 2\n")));
        assert!(text.contains(&format!("mxpace_pacing_deferral_ratio{{{labels}}} 0.125\n")));
        let ones: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mxpace_pacing_state") && l.ends_with(" 1"))
            .collect();
        assert_eq!(
            ones,
            [format!(
                "mxpace_pacing_state{{{labels},state=\"slowed\"}} 1"
            )]
        );
        let bands: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mxpace_pacing_band") && l.ends_with(" 1"))
            .collect();
        assert_eq!(
            bands,
            [format!("mxpace_pacing_band{{{labels},band=\"act-now\"}} 1")]
        );
    }

    #[test]
    fn the_json_view_has_the_same_counts() {
        let counters = Counters::default();
        counters.observe(&[
            attempt("192.0.2.1", "microsoft", Outcome::Deferred),
            attempt("192.0.2.1", "microsoft", Outcome::Deferred),
        ]);
        let v = counters.to_json();
        assert_eq!(
            v["attempts"],
            serde_json::json!([{"source_ip": "192.0.2.1", "provider": "microsoft", "outcome": "deferred", "count": 2}])
        );
        assert_eq!(v["expired"], 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
