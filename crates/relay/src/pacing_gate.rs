//! The relay's default gate: the pure pacing controller (`mxpace_pacing::Pacing`)
//! behind a lock, fed the relay's clock. It adds what the controller leaves to its
//! shell: counting open connections per path, naming paths for operators, and
//! turning every [`PacingChange`] into a `type: "pacing"` event.

use crate::gate::{GateDecision, GateOutcome, OperatorAction, OperatorError, PacingGate, PathKey};
use mxpace_events::{Event, EventType};
use mxpace_pacing::{
    Gate, Moment, Outcome, Pacing, PacingChange, PacingConfig, Path, PathSnapshot, PathState,
    Stream, Trigger,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, MutexGuard};
use time::OffsetDateTime;

/// How often a stopped path is asked about again: it only starts when an operator
/// resumes it, and a resumed path should not wait long for its held mail.
const STOPPED_RECHECK_MS: i64 = 5_000;
/// When every connection a path allows is open, ask again this much later.
const CONNECTIONS_FULL_RECHECK_MS: i64 = 250;

/// The source address a path is keyed on when no `[[source]]` is configured and
/// the OS picks the address.
pub const ANY_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The gate backed by the pacing controller.
pub struct ControllerGate {
    inner: Mutex<Inner>,
}

struct Inner {
    pacing: Pacing,
    open: HashMap<Path, u32>,
    changes: Vec<PacingChange>,
}

impl ControllerGate {
    /// A gate with no paths yet, pacing by `config`.
    pub fn new(config: PacingConfig) -> ControllerGate {
        ControllerGate {
            inner: Mutex::new(Inner {
                pacing: Pacing::new(config),
                open: HashMap::new(),
                changes: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the controller half-updated in a way that
        // matters more than stopping all mail would.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The controller's path for the relay's key.
pub fn path_of(key: &PathKey) -> Path {
    Path::new(key.source_ip.unwrap_or(ANY_SOURCE), key.provider.clone())
}

/// A path as operators write it: `203.0.113.10/microsoft`.
pub fn path_name(path: &Path) -> String {
    format!("{}/{}", path.source_ip, path.provider)
}

/// Read `IP/provider` (or the controller's own `IP@provider`).
pub fn parse_path_name(text: &str) -> Result<Path, String> {
    let t = text.trim();
    let at_form = match t.rsplit_once('/') {
        Some((ip, provider)) => format!("{ip}@{provider}"),
        None => t.to_string(),
    };
    at_form.parse::<Path>().map_err(|_| {
        format!("bad path {text:?}: expected IP/provider, e.g. 203.0.113.10/microsoft")
    })
}

/// A verdict's reply as one line with its codes: `451 4.7.500 Server busy. …`
/// (the classifier keeps the text without them).
fn reply_line(v: &mxpace_reply::Verdict) -> String {
    let mut line = String::new();
    if let Some(code) = v.code {
        line.push_str(&code.to_string());
        line.push(' ');
    }
    if let Some(enhanced) = &v.enhanced {
        line.push_str(enhanced);
        line.push(' ');
    }
    line.push_str(&v.text);
    line
}

/// The relay's clock as the controller's.
fn moment(now_ms: i64) -> Moment {
    Moment(now_ms.max(0) as u64)
}

/// Streams the controller knows; a campaign name counts as bulk (it is not
/// transactional mail, and cold is for unengaged recipients only).
fn stream_of(name: &str) -> Stream {
    match name {
        "transactional" => Stream::Transactional,
        "cold" => Stream::Cold,
        _ => Stream::Bulk,
    }
}

fn outcome_of<'a>(o: &GateOutcome<'a>) -> Outcome<'a> {
    match o.verdict {
        _ if o.connection_failed => Outcome::ConnectionFailed(o.verdict),
        None => Outcome::ConnectionFailed(None),
        Some(v) => match v.code.unwrap_or(0) {
            200..=399 => Outcome::Delivered,
            500..=599 => Outcome::Bounced(v),
            // 4xx and anything unreadable: a deferral (the controller decides whether
            // it bears on the path from the verdict's scope and IPs).
            _ => Outcome::Deferred(v),
        },
    }
}

impl Inner {
    fn gate(&mut self, gate: Gate, now_ms: i64) -> GateDecision {
        match gate {
            Gate::Go => GateDecision::Go,
            Gate::HoldUntil(m) => GateDecision::HoldUntil((m.0 as i64).max(now_ms + 1)),
            Gate::Stopped => GateDecision::HoldUntil(now_ms + STOPPED_RECHECK_MS),
        }
    }
}

impl PacingGate for ControllerGate {
    fn may_connect(&self, key: &PathKey, now_ms: i64) -> GateDecision {
        let path = path_of(key);
        let now = moment(now_ms);
        let mut inner = self.lock();
        if !inner.pacing.knows(&path) {
            // Nothing is known against a new path; it is created with its first
            // message. (A guessed provider, before the greeting named the real one,
            // leaves no phantom path behind.)
            return GateDecision::Go;
        }
        let p = inner.pacing.path(&path, now);
        let change = p.tick(now);
        let limit = p.limits().connections;
        let state = p.state();
        let snap_until = p.snapshot(now).until;
        inner.changes.extend(change);
        match state {
            PathState::Stopped => GateDecision::HoldUntil(now_ms + STOPPED_RECHECK_MS),
            // A paused path opens no connection; its probe (if any) goes on a
            // connection opened when the pause ends.
            PathState::Paused => match snap_until {
                Some(u) if (u.0 as i64) > now_ms => GateDecision::HoldUntil(u.0 as i64),
                _ => GateDecision::Go,
            },
            _ if inner.open.get(&path).copied().unwrap_or(0) >= limit => {
                GateDecision::HoldUntil(now_ms + CONNECTIONS_FULL_RECHECK_MS)
            }
            _ => GateDecision::Go,
        }
    }

    fn may_send(&self, key: &PathKey, now_ms: i64) -> GateDecision {
        self.may_send_stream(key, "transactional", now_ms)
    }

    fn may_send_stream(&self, key: &PathKey, stream: &str, now_ms: i64) -> GateDecision {
        let path = path_of(key);
        let mut inner = self.lock();
        let (gate, changes) = inner
            .pacing
            .try_send(&path, stream_of(stream), moment(now_ms));
        inner.changes.extend(changes);
        inner.gate(gate, now_ms)
    }

    fn record(&self, o: GateOutcome<'_>) {
        let path = path_of(o.path);
        // The controller keeps a verdict's text as the reason of a change; give it
        // the reply as received so events and `mxpace pacing` show the whole of it.
        let with_codes = o.verdict.map(|v| {
            let mut v = v.clone();
            v.text = reply_line(&v);
            v
        });
        let o = GateOutcome {
            verdict: with_codes.as_ref(),
            ..o
        };
        let outcome = outcome_of(&o);
        let mut inner = self.lock();
        let changes = inner.pacing.on_outcome(&path, outcome, moment(o.now_ms));
        inner.changes.extend(changes);
    }

    fn opened(&self, key: &PathKey) {
        *self.lock().open.entry(path_of(key)).or_insert(0) += 1;
    }

    fn closed(&self, key: &PathKey) {
        let mut inner = self.lock();
        if let Some(n) = inner.open.get_mut(&path_of(key)) {
            *n = n.saturating_sub(1);
        }
    }

    fn per_connection(&self, key: &PathKey) -> Option<usize> {
        let path = path_of(key);
        let mut inner = self.lock();
        let now = moment(crate::service::now_ms());
        Some(inner.pacing.path(&path, now).limits().per_connection.max(1) as usize)
    }

    fn take_changes(&self) -> Vec<PacingChange> {
        std::mem::take(&mut self.lock().changes)
    }

    fn snapshot(&self, now_ms: i64) -> Vec<PathSnapshot> {
        let now = moment(now_ms);
        let mut inner = self.lock();
        // Let time pass first: a pause that ended shows as ended.
        let paths: Vec<Path> = inner
            .pacing
            .snapshot(now)
            .into_iter()
            .map(|s| s.path)
            .collect();
        for p in &paths {
            let change = inner.pacing.path(p, now).tick(now);
            inner.changes.extend(change);
        }
        inner.pacing.snapshot(now)
    }

    fn operator(
        &self,
        path: &Path,
        action: OperatorAction,
        now_ms: i64,
    ) -> Result<(), OperatorError> {
        let now = moment(now_ms);
        let mut inner = self.lock();
        let known: Vec<Path> = inner
            .pacing
            .snapshot(now)
            .into_iter()
            .map(|s| s.path)
            .collect();
        if !known.contains(path) {
            let names: Vec<String> = known.iter().map(path_name).collect();
            return Err(OperatorError::UnknownPath {
                path: path_name(path),
                known: if names.is_empty() {
                    "none yet (a path appears with its first message)".into()
                } else {
                    names.join(", ")
                },
            });
        }
        let p = inner.pacing.path(path, now);
        let change = match action {
            OperatorAction::Pause => p.operator_pause(now, "operator pause"),
            OperatorAction::Resume => p.resume(now, "operator resume"),
        };
        inner.changes.push(change);
        Ok(())
    }
}

/// Triggers whose `reason` is the receiver's reply text (the others describe an
/// internal cause: successes, a pause ending, an operator).
fn moved_by_reply(t: Trigger) -> bool {
    matches!(
        t,
        Trigger::SlowDown
            | Trigger::Pause
            | Trigger::StopSource
            | Trigger::BreakerOpen
            | Trigger::Band
    )
}

/// A change of a path as an event of `type: "pacing"` (docs/events.md): `source_ip`,
/// `provider`, `reply` (the reply that moved it, when a reply did) and in `extra`
/// the path name, trigger, limits and states before and after, band and reason.
pub fn pacing_event(change: &PacingChange) -> Event {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(change.at.0) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut e = Event::new(EventType::Pacing, time);
    e.source_ip = Some(change.path.source_ip);
    e.provider = Some(change.path.provider.clone());
    // A reply starts with its three-digit code; "connection failures" and the
    // band's "deferral rate …" summaries are not replies.
    let is_reply = change
        .reason
        .get(..3)
        .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()));
    if moved_by_reply(change.trigger) && is_reply {
        e.reply = Some(change.reason.clone());
    }
    fn v<T: serde::Serialize>(x: &T) -> serde_json::Value {
        serde_json::to_value(x).unwrap_or(serde_json::Value::Null)
    }
    e.extra
        .insert("path".into(), path_name(&change.path).into());
    e.extra.insert("trigger".into(), v(&change.trigger));
    e.extra.insert("from".into(), v(&change.from));
    e.extra.insert("to".into(), v(&change.to));
    e.extra.insert("state_from".into(), v(&change.state_from));
    e.extra.insert("state_to".into(), v(&change.state_to));
    e.extra.insert("band".into(), v(&change.band));
    e.extra
        .insert("reason".into(), change.reason.clone().into());
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxpace_reply::explain;

    fn key(ip: &str) -> PathKey {
        PathKey {
            source_ip: Some(ip.parse().unwrap()),
            provider: "microsoft".into(),
        }
    }

    const T0: i64 = 1_795_435_200_000; // 2026-11-23T12:00:00Z

    fn throttle(ip: &str) -> mxpace_reply::Verdict {
        explain(
            &format!("451 4.7.500 Server busy. Please try again later from [{ip}]. (S77714)"),
            Some("contoso-com.mail.protection.outlook.com"),
        )
    }

    #[test]
    fn a_throttle_naming_one_ip_slows_that_path_only_and_is_written_with_its_reply() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let (a, b) = (key("192.0.2.10"), key("192.0.2.11"));
        assert_eq!(g.may_send_stream(&a, "bulk", T0), GateDecision::Go);
        assert_eq!(g.may_send_stream(&b, "bulk", T0), GateDecision::Go);
        let v = throttle("192.0.2.10");
        for k in [&a, &b] {
            g.record(GateOutcome {
                path: k,
                now_ms: T0 + 10,
                verdict: Some(&v),
                connection_failed: false,
            });
        }
        let snaps = g.snapshot(T0 + 20);
        let of = |ip: &str| {
            snaps
                .iter()
                .find(|s| s.path.source_ip.to_string() == ip)
                .unwrap()
                .clone()
        };
        assert_eq!(of("192.0.2.10").state, PathState::Paused);
        assert!(of("192.0.2.10").limits.rate_per_min < of("192.0.2.11").limits.rate_per_min);
        assert_ne!(of("192.0.2.11").state, PathState::Paused);
        assert!(matches!(
            g.may_send_stream(&a, "transactional", T0 + 30),
            GateDecision::HoldUntil(_)
        ));
        assert_eq!(g.may_connect(&b, T0 + 30), GateDecision::Go);
        let events: Vec<Event> = g.take_changes().iter().map(pacing_event).collect();
        let cut = events
            .iter()
            .find(|e| e.extra["trigger"] == "slow-down")
            .expect("a slow-down change");
        assert_eq!(cut.kind, EventType::Pacing);
        assert_eq!(cut.source_ip, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(cut.extra["path"], "192.0.2.10/microsoft");
        assert!(cut.reply.as_deref().unwrap().contains("S77714"));
        assert!(g.take_changes().is_empty(), "changes are handed out once");
    }

    #[test]
    fn connections_beyond_the_paths_limit_wait() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let a = key("192.0.2.10");
        let limit = PacingConfig::builtin()
            .for_provider("microsoft")
            .connections
            .2;
        // The path exists once a message went on it.
        assert_eq!(g.may_send_stream(&a, "bulk", T0), GateDecision::Go);
        for _ in 0..limit {
            assert_eq!(g.may_connect(&a, T0), GateDecision::Go);
            g.opened(&a);
        }
        assert!(matches!(g.may_connect(&a, T0), GateDecision::HoldUntil(_)));
        g.closed(&a);
        assert_eq!(g.may_connect(&a, T0), GateDecision::Go);
    }

    #[test]
    fn operators_pause_and_resume_known_paths_and_unknown_ones_are_named_errors() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let a = key("192.0.2.10");
        assert_eq!(g.may_send_stream(&a, "transactional", T0), GateDecision::Go);
        let p = parse_path_name("192.0.2.10/microsoft").unwrap();
        g.operator(&p, OperatorAction::Pause, T0 + 1).unwrap();
        assert!(matches!(
            g.may_connect(&a, T0 + 2),
            GateDecision::HoldUntil(_)
        ));
        assert_eq!(g.snapshot(T0 + 2)[0].state, PathState::Stopped);
        g.operator(&p, OperatorAction::Resume, T0 + 3).unwrap();
        assert_eq!(g.snapshot(T0 + 3)[0].state, PathState::Ramping);
        let other = parse_path_name("192.0.2.99/google").unwrap();
        let e = g.operator(&other, OperatorAction::Pause, T0).unwrap_err();
        assert!(e.to_string().contains("192.0.2.99/google"), "{e}");
        assert!(e.to_string().contains("192.0.2.10/microsoft"), "{e}");
        let triggers: Vec<_> = g.take_changes().iter().map(|c| c.trigger).collect();
        assert!(
            triggers.contains(&Trigger::OperatorPause)
                && triggers.contains(&Trigger::OperatorResume)
        );
    }

    #[test]
    fn in_the_act_now_band_bulk_and_cold_wait_while_transactional_keeps_its_share() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let a = key("192.0.2.10");
        // Session-level deferrals with no throttle verdict: they raise the path's
        // deferral rate (over 5%: act now) without cutting its limits.
        let v = mxpace_reply::Verdict {
            code: Some(451),
            scope: mxpace_reply::Scope::Session,
            text: "451 4.3.0 Temporary local problem".into(),
            ..Default::default()
        };
        let min = PacingConfig::builtin()
            .for_provider("microsoft")
            .window_min_attempts;
        for i in 0..min {
            g.record(GateOutcome {
                path: &a,
                now_ms: T0 + i64::from(i),
                verdict: Some(&v),
                connection_failed: false,
            });
        }
        let now = T0 + 60_000;
        assert_eq!(
            g.snapshot(now)[0].band,
            mxpace_pacing::Band::ActNow,
            "{:?}",
            g.snapshot(now)
        );
        assert!(matches!(
            g.may_send_stream(&a, "bulk", now),
            GateDecision::HoldUntil(_)
        ));
        assert!(matches!(
            g.may_send_stream(&a, "cold", now),
            GateDecision::HoldUntil(_)
        ));
        assert!(matches!(
            g.may_send_stream(&a, "newsletter-campaign", now),
            GateDecision::HoldUntil(_)
        ));
        assert_eq!(
            g.may_send_stream(&a, "transactional", now),
            GateDecision::Go
        );
        let band_change = g
            .take_changes()
            .into_iter()
            .find(|c| c.trigger == Trigger::Band)
            .expect("the band change is reported");
        assert_eq!(pacing_event(&band_change).extra["band"], "act-now");
    }

    #[test]
    fn asking_to_connect_on_a_guessed_path_leaves_no_path_behind() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let guessed = PathKey {
            source_ip: Some("192.0.2.10".parse().unwrap()),
            provider: "127.0.0.1".into(),
        };
        assert_eq!(g.may_connect(&guessed, T0), GateDecision::Go);
        assert!(g.snapshot(T0).is_empty());
    }

    #[test]
    fn path_names_read_both_spellings_and_refuse_garbage() {
        assert_eq!(
            parse_path_name("2001:db8::1/google").unwrap(),
            Path::new("2001:db8::1".parse().unwrap(), "google")
        );
        assert_eq!(
            parse_path_name("192.0.2.1@microsoft").unwrap(),
            parse_path_name("192.0.2.1/microsoft").unwrap()
        );
        for bad in ["", "microsoft", "1.2.3/microsoft", "192.0.2.1/"] {
            assert!(parse_path_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn campaign_streams_pace_as_bulk() {
        assert_eq!(stream_of("transactional"), Stream::Transactional);
        assert_eq!(stream_of("cold"), Stream::Cold);
        assert_eq!(stream_of("black-friday"), Stream::Bulk);
    }
}
