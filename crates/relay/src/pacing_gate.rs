//! The relay's default gate: the pure pacing controller (`mxpace_pacing::Pacing`)
//! behind a lock, fed the relay's clock. It adds what the controller leaves to its
//! shell: counting open connections per path, naming paths for operators, and
//! turning every [`PacingChange`] into a `type: "pacing"` event.

use crate::gate::{GateDecision, GateOutcome, OperatorAction, OperatorError, PacingGate, PathKey};
use mxpace_events::{Event, EventType};
use mxpace_pacing::{
    Gate, Moment, Outcome, Pacing, PacingChange, PacingConfig, Path, PathSnapshot, Stream, Trigger,
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
/// Held messages are given successive release slots one token apart, at most this
/// many slots past their hold: further promises would be wrong once the rate grows,
/// and those beyond simply ask again then.
const RELEASE_HORIZON_SLOTS: i64 = 50;
/// Widest spacing of release slots (a path at its floor of 1/min).
const MAX_SLOT_SPACING_MS: f64 = 60_000.0;

/// The source address a path is keyed on when no `[[source]]` is configured and
/// the OS picks the address.
pub const ANY_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The gate backed by the pacing controller.
pub struct ControllerGate {
    inner: Mutex<Inner>,
}

struct Inner {
    pacing: Pacing,
    /// The configuration, for the connection limit of a path not created yet.
    config: PacingConfig,
    /// Per path, connections open or being opened: a slot is taken when the gate
    /// says Go to a connect, so workers asking at the same moment cannot all open one.
    open: HashMap<Path, u32>,
    changes: Vec<PacingChange>,
    /// Per path, the last release slot handed to a held message.
    slots: HashMap<Path, i64>,
    /// Per path, the last receiver reply that moved it, and when: a path ramping
    /// back after a pause still shows what slowed it.
    last_reply: HashMap<Path, (Moment, String)>,
}

impl ControllerGate {
    /// A gate with no paths yet, pacing by `config`.
    pub fn new(config: PacingConfig) -> ControllerGate {
        ControllerGate {
            inner: Mutex::new(Inner {
                pacing: Pacing::new(config.clone()),
                config,
                open: HashMap::new(),
                changes: Vec::new(),
                slots: HashMap::new(),
                last_reply: HashMap::new(),
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
    /// Keep changes for the event log, remembering the replies among them.
    fn note(&mut self, changes: impl IntoIterator<Item = PacingChange>) {
        for c in changes {
            if let Some(reply) = reply_of(&c) {
                self.last_reply.insert(c.path.clone(), (c.at, reply));
            }
            self.changes.push(c);
        }
    }

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
        self.may_connect_stream(key, "transactional", now_ms)
    }

    fn may_connect_stream(&self, key: &PathKey, stream: &str, now_ms: i64) -> GateDecision {
        let path = path_of(key);
        let now = moment(now_ms);
        let mut inner = self.lock();
        let limit = if inner.pacing.knows(&path) {
            // Would the message go? Asked without taking its token: a connection that
            // could not carry it must not be opened (the receiver sees every connect).
            let (gate, changes) = inner.pacing.peek_send(&path, stream_of(stream), now);
            inner.note(changes);
            let decision = inner.gate(gate, now_ms);
            if decision != GateDecision::Go {
                return decision;
            }
            inner.pacing.path(&path, now).limits().connections
        } else {
            // Nothing is known against a new path; it is created with its first
            // message (a guessed provider, before the greeting named the real one,
            // leaves no phantom path behind). Its initial connection limit still holds.
            inner.config.for_provider(&path.provider).connections.2
        };
        let open = inner.open.entry(path).or_insert(0);
        if *open >= limit.max(1) {
            return GateDecision::HoldUntil(now_ms + CONNECTIONS_FULL_RECHECK_MS);
        }
        // The slot is taken now, not when the session is up: the connect and the
        // greeting take time, and other workers ask meanwhile.
        *open += 1;
        GateDecision::Go
    }

    fn release_slot(&self, key: &PathKey, until_ms: i64) -> i64 {
        let path = path_of(key);
        let mut inner = self.lock();
        if !inner.pacing.knows(&path) {
            return until_ms;
        }
        let rate = inner
            .pacing
            .path(&path, moment(until_ms))
            .limits()
            .rate_per_min
            / 60.0;
        let spacing = (1000.0 / rate.max(1e-6)).min(MAX_SLOT_SPACING_MS) as i64;
        let last = inner.slots.get(&path).copied().unwrap_or(i64::MIN / 2);
        let slot = until_ms
            .max(last + spacing)
            .min(until_ms + RELEASE_HORIZON_SLOTS * spacing);
        inner.slots.insert(path, slot);
        slot
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
        inner.note(changes);
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
        inner.note(changes);
    }

    fn opened(&self, reserved: &PathKey, key: &PathKey) {
        // The greeting may have named another provider than the MX host suggested:
        // move the slot taken in may_connect to the path the session really is on.
        if reserved != key {
            let mut inner = self.lock();
            if let Some(n) = inner.open.get_mut(&path_of(reserved)) {
                *n = n.saturating_sub(1);
            }
            *inner.open.entry(path_of(key)).or_insert(0) += 1;
        }
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

    fn last_reply(&self, path: &Path) -> Option<(i64, String)> {
        self.lock()
            .last_reply
            .get(path)
            .map(|(at, r)| (at.0 as i64, r.clone()))
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
            inner.note(change);
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
        inner.note([change]);
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

/// The receiver's reply that moved a change, if one did. A reply starts with its
/// three-digit code; "connection failures" and the band's "deferral rate …"
/// summaries are not replies.
fn reply_of(change: &PacingChange) -> Option<String> {
    let is_reply = change
        .reason
        .get(..3)
        .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()));
    (moved_by_reply(change.trigger) && is_reply).then(|| change.reason.clone())
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
    e.reply = reply_of(change);
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
    use mxpace_pacing::PathState;
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
        // The other path connects again once its bucket has a token.
        assert_eq!(g.may_connect(&b, T0 + 2_000), GateDecision::Go);
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
        let pa = path_of(&a);
        let (at, reply) = g.last_reply(&pa).expect("the cut's reply is kept");
        assert!(reply.contains("S77714") && at == T0 + 10, "{at} {reply}");
        assert!(g.last_reply(&path_of(&b)).is_none());
    }

    #[test]
    fn a_generic_try_again_later_neither_slows_nor_pauses_the_path() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let a = PathKey {
            source_ip: Some("192.0.2.10".parse().unwrap()),
            provider: "mx.example.net".into(),
        };
        assert_eq!(g.may_send_stream(&a, "transactional", T0), GateDecision::Go);
        let before = g.snapshot(T0)[0].clone();
        for text in [
            "451 4.3.2 Try again later",
            "421 4.3.2 Closing connection at end of DATA",
        ] {
            let v = explain(text, Some("mx.example.net"));
            g.record(GateOutcome {
                path: &a,
                now_ms: T0 + 10,
                verdict: Some(&v),
                connection_failed: false,
            });
        }
        let after = g.snapshot(T0 + 20)[0].clone();
        assert_eq!(after.limits, before.limits);
        assert_eq!(after.state, before.state);
        assert!(g.last_reply(&path_of(&a)).is_none());
        // The held retry is not lost: the next message on the path waits at most one
        // token's time.
        match g.may_send_stream(&a, "transactional", T0 + 20) {
            GateDecision::Go => {}
            GateDecision::HoldUntil(t) => assert!(t <= T0 + 1_000, "{t}"),
        }
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
        // Later, with tokens in the bucket again.
        let t = T0 + 5_000;
        // Workers asking before any session is up (connect and greeting take time)
        // each take a slot: no more Go than the limit.
        for _ in 0..limit {
            assert_eq!(g.may_connect(&a, t), GateDecision::Go);
        }
        assert!(matches!(g.may_connect(&a, t), GateDecision::HoldUntil(_)));
        // A session that came up keeps its slot; a failed connect gives it back.
        g.opened(&a, &a);
        assert!(matches!(g.may_connect(&a, t), GateDecision::HoldUntil(_)));
        g.closed(&a);
        assert_eq!(g.may_connect(&a, t), GateDecision::Go);
    }

    #[test]
    fn a_new_path_gets_no_more_connections_than_its_initial_limit() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let guessed = PathKey {
            source_ip: Some("192.0.2.10".parse().unwrap()),
            provider: "mx.example.net".into(),
        };
        let initial = PacingConfig::builtin()
            .for_provider("mx.example.net")
            .connections
            .2;
        for _ in 0..initial {
            assert_eq!(g.may_connect(&guessed, T0), GateDecision::Go);
        }
        assert!(matches!(
            g.may_connect(&guessed, T0),
            GateDecision::HoldUntil(_)
        ));
        // The greeting named the provider: the slot moves to the real path.
        let real = key("192.0.2.10");
        g.opened(&guessed, &real);
        assert_eq!(g.may_connect(&guessed, T0), GateDecision::Go);
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
    fn after_a_pause_mail_is_released_at_the_paths_rate_and_paths_end_their_pauses_apart() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let (a, b) = (key("192.0.2.10"), key("192.0.2.11"));
        for k in [&a, &b] {
            assert_eq!(g.may_send_stream(k, "transactional", T0), GateDecision::Go);
            let v = throttle(&k.source_ip.unwrap().to_string());
            g.record(GateOutcome {
                path: k,
                now_ms: T0 + 1,
                verdict: Some(&v),
                connection_failed: false,
            });
        }
        let snaps = g.snapshot(T0 + 2);
        let ends: Vec<i64> = snaps.iter().map(|s| s.until.unwrap().0 as i64).collect();
        assert_ne!(ends[0], ends[1], "both paths would release at once");
        // Everything held for path a asks again right at its pause's end, every 10 ms
        // for 5 s: what goes is spaced by the path's rate, not a wave.
        let end = ends[0];
        let rate_per_s = snaps[0].limits.rate_per_min / 60.0;
        let mut went = Vec::new();
        for step in 0..500 {
            let now = end + step * 10;
            if g.may_send_stream(&a, "transactional", now) == GateDecision::Go {
                went.push(now);
            }
        }
        let most = (rate_per_s * 5.0).ceil() as usize + 1;
        assert!(
            !went.is_empty() && went.len() <= most,
            "{} released in 5 s at {rate_per_s}/s: {went:?}",
            went.len()
        );
        assert!(
            went[0] > end,
            "the first release waits for a token: {went:?}"
        );
    }

    #[test]
    fn no_connection_is_opened_for_mail_the_path_would_hold_and_held_mail_is_spread() {
        let g = ControllerGate::new(PacingConfig::builtin());
        let a = key("192.0.2.10");
        // The bucket holds one token: the first message takes it.
        assert_eq!(g.may_send_stream(&a, "bulk", T0), GateDecision::Go);
        assert!(matches!(
            g.may_connect_stream(&a, "bulk", T0),
            GateDecision::HoldUntil(_)
        ));
        // Ten messages held to the same moment come back one token apart.
        let rate_per_s = g.snapshot(T0)[0].limits.rate_per_min / 60.0;
        let spacing = (1000.0 / rate_per_s) as i64;
        let slots: Vec<i64> = (0..10).map(|_| g.release_slot(&a, T0 + 5_000)).collect();
        assert_eq!(slots[0], T0 + 5_000);
        for w in slots.windows(2) {
            assert_eq!(w[1] - w[0], spacing, "{slots:?}");
        }
        // …but never further than the horizon.
        let far: Vec<i64> = (0..200).map(|_| g.release_slot(&a, T0 + 5_000)).collect();
        assert!(
            far.iter()
                .all(|&t| t <= T0 + 5_000 + RELEASE_HORIZON_SLOTS * spacing)
        );
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
