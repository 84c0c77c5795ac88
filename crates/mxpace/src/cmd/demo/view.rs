//! The live terminal view: per egress path, what pacing does, from the relay's
//! `type:"pacing"` events and `GET /v1/pacing`.

use super::EGRESS;
use super::inject::Injector;
use crate::admin::{self, Method};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `GET /v1/pacing` when the relay serves it: one row per path.
pub(super) fn fetch_pacing(http: SocketAddr) -> Option<Vec<serde_json::Value>> {
    let body = admin::request_ok(http, Method::Get, "/v1/pacing", None).ok()?;
    serde_json::from_slice(&body).ok()
}

/// What the view knows of one egress path.
#[derive(Debug, Default, Clone)]
pub(super) struct PathView {
    pub(super) delivered: u64,
    pub(super) deferred: u64,
    /// Outcomes of the recent attempts (true = deferred), newest last.
    pub(super) recent: std::collections::VecDeque<bool>,
    pub(super) state: Option<String>,
    pub(super) band: Option<String>,
    pub(super) rate_per_min: Option<f64>,
    pub(super) connections: Option<u64>,
    pub(super) pacing_events: u64,
    pub(super) last_reply: Option<String>,
}

pub(super) const RECENT: usize = 50;

/// Reads the relay's event log as it grows.
pub(super) struct EventTail {
    pub(super) path: PathBuf,
    pub(super) offset: u64,
    pub(super) partial: String,
    pub(super) delivered_recipients: HashSet<String>,
}

impl EventTail {
    pub(super) fn new(path: PathBuf) -> EventTail {
        EventTail {
            path,
            offset: 0,
            partial: String::new(),
            delivered_recipients: HashSet::new(),
        }
    }

    pub(super) fn read_new(&mut self, paths: &mut BTreeMap<String, PathView>) {
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

    pub(super) fn apply(&mut self, e: &serde_json::Value, paths: &mut BTreeMap<String, PathView>) {
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
pub(super) struct View {
    pub(super) tty: bool,
    pub(super) drawn: usize,
    pub(super) paths: BTreeMap<String, PathView>,
    pub(super) snapshots: Option<Vec<serde_json::Value>>,
}

impl View {
    pub(super) fn new(tty: bool) -> View {
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

    pub(super) fn delivered(&self) -> u64 {
        self.paths.values().map(|p| p.delivered).sum()
    }

    pub(super) fn deferred(&self) -> u64 {
        self.paths.values().map(|p| p.deferred).sum()
    }

    /// The relay's own snapshot of the path from `ip`, when it serves `/v1/pacing`.
    pub(super) fn snapshot(&self, ip: &str) -> Option<&serde_json::Value> {
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

    pub(super) fn rows(&self) -> Vec<String> {
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

    pub(super) fn render(&mut self, elapsed: Duration, injector: &Injector, total: u32) {
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
            let e = serde_json::to_value(crate::cmd::pacing::pacing_event(c)).unwrap();
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
