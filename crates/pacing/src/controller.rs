//! The pacing controller of one path and of all paths: fast down, slow up, with a brake,
//! a circuit breaker, operator stops and stream bands. Pure: every call takes `now`.

use crate::clock::Moment;
use crate::config::{PacingConfig, PathConfig};
use crate::path::{Path, Stream};
use crate::window::{Band, DeferralWindow, next_band};
use mxpace_reply::{Scope, Throttle, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The limits of a path right now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Messages per minute.
    pub rate_per_min: f64,
    /// Concurrent connections.
    pub connections: u32,
    /// Messages per connection before it is closed.
    pub per_connection: u32,
}

/// What a path is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathState {
    /// Sending at its ceiling, or never pushed back.
    Normal,
    /// Cut by a receiver's throttle verdict, not yet growing again.
    Slowed,
    /// Resting until a time (pause verdict, open circuit breaker, operator pause with end).
    Paused,
    /// Stopped until an operator resumes it (`stop-source` verdict or `mxpace pacing pause`).
    Stopped,
    /// Growing back towards its ceiling.
    Ramping,
}

/// What the scheduler may do with one message on a path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Send it now (the token is taken).
    Go,
    /// Hold it (this is not a delivery attempt) and ask again at this moment.
    HoldUntil(Moment),
    /// The path is stopped until an operator resumes it.
    Stopped,
}

/// How one delivery attempt on a path ended, as the controller needs it.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Accepted.
    Delivered,
    /// 4xx at any stage, with its classification.
    Deferred(&'a Verdict),
    /// 5xx, with its classification.
    Bounced(&'a Verdict),
    /// No usable session: connect refused/timed out, 421 greeting, lost connection.
    ConnectionFailed(Option<&'a Verdict>),
}

/// Why a path's limits or state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// A `slow-down` verdict bearing on this path.
    SlowDown,
    /// A `pause` verdict bearing on this path.
    Pause,
    /// A `stop-source` verdict bearing on this path.
    StopSource,
    /// Consecutive failures opened the circuit breaker.
    BreakerOpen,
    /// The breaker's single probe went out.
    Probe,
    /// The probe succeeded; the path ramps from its floor.
    BreakerClosed,
    /// A pause ended.
    PauseOver,
    /// Successes earned an increase.
    Increase,
    /// The deferral band changed (streams paused or resumed).
    Band,
    /// An operator paused the path.
    OperatorPause,
    /// An operator resumed the path.
    OperatorResume,
}

/// One change of a path: an event-like record with the reply that caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PacingChange {
    /// The path.
    pub path: Path,
    /// When.
    pub at: Moment,
    /// Why.
    pub trigger: Trigger,
    /// Limits before and after.
    pub from: Limits,
    /// Limits after the change.
    pub to: Limits,
    /// State before.
    pub state_from: PathState,
    /// State after.
    pub state_to: PathState,
    /// The band after the change.
    pub band: Band,
    /// The reply text that moved it, or a short description for internal triggers.
    pub reason: String,
}

/// A path's visible state (`mxpace pacing --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathSnapshot {
    /// The path.
    pub path: Path,
    /// Limits now.
    pub limits: Limits,
    /// State now.
    pub state: PathState,
    /// Since when.
    pub since: Moment,
    /// Until when, for a timed pause.
    pub until: Option<Moment>,
    /// The reply (or action) that put it in this state.
    pub reason: String,
    /// Deferred share of attempts in the window.
    pub deferral_rate: f64,
    /// Attempts in the window.
    pub window_attempts: u32,
    /// Band of the deferral rate.
    pub band: Band,
}

/// How many increase intervals the acceptance measured at a cut spans: long enough to
/// hold more than one burst, short enough that a ramp does not drag the average down.
const MEASURE_INTERVALS: u32 = 2;

#[derive(Debug, Clone)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Moment>,
    probe_out: bool,
    cooldown: Duration,
}

/// The controller of one path.
#[derive(Debug, Clone)]
pub struct PathPacing {
    path: Path,
    cfg: PathConfig,
    /// Messages per second.
    rate: f64,
    connections: u32,
    per_connection: u32,
    state: PathState,
    since: Moment,
    reason: String,
    paused_until: Option<Moment>,
    last_cut_rate: Option<f64>,
    last_cut: Option<Moment>,
    increased_since_cut: bool,
    last_increase: Moment,
    successes_since_increase: u32,
    pauses_in_memory: u32,
    last_pause_end: Option<Moment>,
    tokens: f64,
    last_refill: Moment,
    breaker: Breaker,
    window: DeferralWindow,
    /// Deliveries over the last few intervals: what the receiver actually took lately.
    delivered: DeferralWindow,
    /// When the path was created (the window is shorter than its span until then).
    created: Moment,
    /// The last time a message waited for a token: the path was sending as fast as its
    /// rate allowed, so its deliveries measure the receiver, not our demand.
    last_token_hold: Option<Moment>,
    band: Band,
}

impl PathPacing {
    /// A new path at its initial limits, ramping towards the ceiling.
    pub fn new(path: Path, cfg: PathConfig, now: Moment) -> PathPacing {
        let state = if cfg.rate_initial >= cfg.rate_ceiling {
            PathState::Normal
        } else {
            PathState::Ramping
        };
        PathPacing {
            path,
            rate: cfg.rate_initial,
            connections: cfg.connections.2,
            per_connection: cfg.per_connection.2,
            state,
            since: now,
            reason: "new path".into(),
            paused_until: None,
            last_cut_rate: None,
            last_cut: None,
            increased_since_cut: false,
            last_increase: now,
            successes_since_increase: 0,
            pauses_in_memory: 0,
            last_pause_end: None,
            tokens: 1.0,
            last_refill: now,
            breaker: Breaker {
                consecutive_failures: 0,
                open_until: None,
                probe_out: false,
                cooldown: cfg.breaker_cooldown,
            },
            window: DeferralWindow::new(cfg.window),
            delivered: DeferralWindow::new(cfg.increase_interval * MEASURE_INTERVALS),
            created: now,
            last_token_hold: None,
            band: Band::Normal,
            cfg,
        }
    }

    /// The limits now.
    pub fn limits(&self) -> Limits {
        Limits {
            rate_per_min: self.rate * 60.0,
            connections: self.connections,
            per_connection: self.per_connection,
        }
    }

    /// The state now (after applying the passage of time).
    pub fn state(&self) -> PathState {
        self.state
    }

    /// The band now.
    pub fn band(&self) -> Band {
        self.band
    }

    /// The path's settings.
    pub fn config(&self) -> &PathConfig {
        &self.cfg
    }

    fn set_state(&mut self, state: PathState, now: Moment, reason: &str) {
        if state != self.state {
            self.state = state;
            self.since = now;
        }
        self.reason = reason.to_string();
    }

    fn change(
        &self,
        at: Moment,
        trigger: Trigger,
        from: (Limits, PathState),
        reason: &str,
    ) -> PacingChange {
        PacingChange {
            path: self.path.clone(),
            at,
            trigger,
            from: from.0,
            to: self.limits(),
            state_from: from.1,
            state_to: self.state,
            band: self.band,
            reason: reason.to_string(),
        }
    }

    /// Let time pass: a timed pause ends (with an empty bucket, so releases are spaced
    /// by the rate, not a wave). Returns the change if the pause ended.
    pub fn tick(&mut self, now: Moment) -> Option<PacingChange> {
        let until = self.paused_until?;
        if self.state != PathState::Paused || now < until || self.breaker.open_until.is_some() {
            return None;
        }
        let before = (self.limits(), self.state);
        self.paused_until = None;
        self.tokens = 0.0;
        self.last_refill = now;
        self.last_increase = now;
        self.set_state(PathState::Ramping, now, "pause over");
        Some(self.change(now, Trigger::PauseOver, before, "pause over"))
    }

    /// Whether one message of `stream` may go now; on [`Gate::Go`] its token is taken.
    /// A held message is not a delivery attempt.
    pub fn try_send(&mut self, stream: Stream, now: Moment) -> (Gate, Vec<PacingChange>) {
        self.decide(stream, now, true)
    }

    /// What [`PathPacing::try_send`] would answer now, taking nothing (no token, no
    /// probe): the shell asks this before opening a connection it could not use.
    pub fn peek_send(&mut self, stream: Stream, now: Moment) -> (Gate, Vec<PacingChange>) {
        self.decide(stream, now, false)
    }

    fn decide(&mut self, stream: Stream, now: Moment, take: bool) -> (Gate, Vec<PacingChange>) {
        let mut change: Vec<PacingChange> = self.tick(now).into_iter().collect();
        // The band also falls with time alone: held bulk must not wait for attempts
        // that will never come.
        change.extend(self.update_band(now, None));
        match self.state {
            PathState::Stopped => return (Gate::Stopped, change),
            PathState::Paused => {
                if let Some(open_until) = self.breaker.open_until {
                    if now >= open_until && !self.breaker.probe_out {
                        if !take {
                            return (Gate::Go, change);
                        }
                        self.breaker.probe_out = true;
                        let before = (self.limits(), self.state);
                        self.reason = "circuit breaker probe".into();
                        change.push(self.change(now, Trigger::Probe, before, "one probe"));
                        return (Gate::Go, change);
                    }
                    let next = if now >= open_until {
                        now.plus(self.cfg.increase_interval)
                    } else {
                        open_until
                    };
                    return (Gate::HoldUntil(next), change);
                }
                let until = self.paused_until.unwrap_or(now.plus(self.cfg.pause));
                return (Gate::HoldUntil(until), change);
            }
            _ => {}
        }
        let mut rate = self.rate;
        if self.band == Band::ActNow {
            if stream != Stream::Transactional {
                let window_step = Duration::from_millis((self.cfg.window.as_millis() / 20) as u64);
                return (Gate::HoldUntil(now.plus(window_step)), change);
            }
            rate *= self.cfg.transactional_share;
        }
        self.refill(now, rate);
        if self.tokens >= 1.0 {
            if take {
                self.tokens -= 1.0;
            }
            (Gate::Go, change)
        } else {
            self.last_token_hold = Some(now);
            let wait = (1.0 - self.tokens) / rate.max(1e-9);
            (
                Gate::HoldUntil(now.plus(Duration::from_secs_f64(wait.min(86400.0)))),
                change,
            )
        }
    }

    fn refill(&mut self, now: Moment, rate: f64) {
        let dt = now.since(self.last_refill).as_secs_f64();
        self.last_refill = now;
        // A bucket of one second's worth plus one: bursts stay small, and fractional
        // rates are kept (a cap of exactly one would round 1.5/s down to 1/s).
        let cap = rate + 1.0;
        self.tokens = (self.tokens + dt * rate).min(cap);
    }

    /// Whether a verdict is about this path: it names our IP, or it names no IP and is
    /// about the session, the sending IP or the provider (not one recipient or tenant).
    pub fn bears_on_path(&self, v: &Verdict) -> bool {
        if !v.ips.is_empty() {
            return v.ips.contains(&self.path.source_ip);
        }
        if matches!(v.scope, Scope::Recipient | Scope::Domain | Scope::Message) {
            return false;
        }
        v.provider.is_empty() || v.provider == "unknown" || v.provider == self.path.provider
    }

    /// Feed the outcome of one attempt; returns the changes it caused.
    pub fn on_outcome(&mut self, outcome: Outcome<'_>, now: Moment) -> Vec<PacingChange> {
        let mut changes: Vec<PacingChange> = self.tick(now).into_iter().collect();
        let probe = self.breaker.probe_out;
        let (path_deferral, verdict, failure) = match outcome {
            Outcome::Delivered => (false, None, false),
            Outcome::Deferred(v) => {
                let about_us = self.bears_on_path(v);
                (about_us, Some(v), about_us && v.throttle == Throttle::Pause)
            }
            Outcome::Bounced(v) => (false, Some(v), false),
            Outcome::ConnectionFailed(v) => (true, v, true),
        };
        self.window.record(now, path_deferral);
        if matches!(outcome, Outcome::Delivered) {
            self.delivered.record(now, false);
        }
        if let Some(c) = self.update_band(now, verdict) {
            changes.push(c);
        }
        if probe {
            self.breaker.probe_out = false;
            if failure || path_deferral {
                changes.push(self.open_breaker(now, verdict, true));
                return changes;
            }
            if matches!(outcome, Outcome::Delivered) {
                let before = (self.limits(), self.state);
                self.breaker = Breaker {
                    consecutive_failures: 0,
                    open_until: None,
                    probe_out: false,
                    cooldown: self.cfg.breaker_cooldown,
                };
                self.paused_until = None;
                self.rate = self.cfg.rate_floor;
                self.connections = self.cfg.connections.0;
                self.per_connection = self.cfg.per_connection.0;
                self.tokens = 0.0;
                self.last_refill = now;
                self.last_increase = now;
                self.set_state(PathState::Ramping, now, "probe delivered");
                changes.push(self.change(now, Trigger::BreakerClosed, before, "probe delivered"));
                return changes;
            }
        }
        if failure {
            self.breaker.consecutive_failures += 1;
        } else if matches!(outcome, Outcome::Delivered) {
            self.breaker.consecutive_failures = 0;
        }
        if self.state == PathState::Stopped {
            return changes;
        }
        if let Some(v) = verdict.filter(|v| self.bears_on_path(v)) {
            match v.throttle {
                Throttle::StopSource => {
                    let before = (self.limits(), self.state);
                    self.paused_until = None;
                    self.set_state(PathState::Stopped, now, &v.text);
                    changes.push(self.change(now, Trigger::StopSource, before, &v.text));
                    return changes;
                }
                Throttle::SlowDown | Throttle::Pause => {
                    if let Some(c) = self.cut(v, now) {
                        changes.push(c);
                    }
                }
                Throttle::None => {}
            }
        }
        if self.breaker.consecutive_failures >= self.cfg.breaker_failures
            && self.breaker.open_until.is_none()
        {
            changes.push(self.open_breaker(now, verdict, false));
            return changes;
        }
        if matches!(outcome, Outcome::Delivered)
            && let Some(c) = self.earn_increase(now)
        {
            changes.push(c);
        }
        changes
    }

    fn open_breaker(
        &mut self,
        now: Moment,
        v: Option<&Verdict>,
        after_probe: bool,
    ) -> PacingChange {
        let before = (self.limits(), self.state);
        if after_probe {
            self.breaker.cooldown = (self.breaker.cooldown * 2).min(self.cfg.max_pause);
        }
        // The breaker never shortens a longer pause already running.
        let until = now
            .plus(self.breaker.cooldown)
            .max(self.paused_until.unwrap_or(now));
        self.breaker.open_until = Some(until);
        self.breaker.probe_out = false;
        self.paused_until = Some(until);
        self.rate = self.cfg.rate_floor;
        self.connections = self.cfg.connections.0;
        self.per_connection = self.cfg.per_connection.0;
        let reason = v
            .map(|v| v.text.clone())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "connection failures".into());
        self.set_state(PathState::Paused, now, &reason);
        self.change(now, Trigger::BreakerOpen, before, &reason)
    }

    fn cut(&mut self, v: &Verdict, now: Moment) -> Option<PacingChange> {
        if let Some(last) = self.last_cut
            && now.since(last) < self.cfg.cut_holdoff
        {
            return None;
        }
        let pause_class = v.throttle == Throttle::Pause;
        // Replies that arrive during a rest answer messages sent before it: a slow-down
        // among them must not cut again (a pause verdict may still lengthen the rest).
        if self.state == PathState::Paused && !pause_class {
            return None;
        }
        let before = (self.limits(), self.state);
        let factor = if pause_class {
            self.cfg.pause_decrease_factor
        } else {
            self.cfg.decrease_factor
        };
        // Remember the rate that ran into trouble — but a chain of cuts with no increase
        // between them (an incident, a long throttle) keeps the first: the rate that
        // worked before, not the floor the chain drove us to.
        let taken = self.measured_acceptance(now);
        if self.last_cut_rate.is_none() || self.increased_since_cut {
            // What the receiver took is a better guess of the safe rate than what we
            // offered: a new path started far above a warming IP's budget would
            // otherwise climb straight back to the rate that failed.
            self.last_cut_rate = Some(taken.map_or(self.rate, |t| t.min(self.rate)));
        }
        self.increased_since_cut = false;
        self.last_cut = Some(now);
        let cut = self.rate * factor;
        self.rate = taken.map_or(cut, |t| t.min(cut)).max(self.cfg.rate_floor);
        self.connections =
            ((f64::from(self.connections) * factor).floor() as u32).max(self.cfg.connections.0);
        if pause_class {
            self.per_connection = ((f64::from(self.per_connection) * factor).floor() as u32)
                .max(self.cfg.per_connection.0);
        }
        self.last_increase = now;
        self.successes_since_increase = 0;
        self.tokens = self.tokens.min(0.0);
        let base = if pause_class {
            self.cfg.pause
        } else {
            self.cfg.slow_down_pause
        };
        let rest = if base.is_zero() {
            Duration::ZERO
        } else {
            // Memory counts from the end of the previous pause.
            if self
                .last_pause_end
                .is_some_and(|end| now.since(end) < self.cfg.pause_memory)
            {
                self.pauses_in_memory = (self.pauses_in_memory + 1).min(16);
            } else {
                self.pauses_in_memory = 0;
            }
            let doubled = base.saturating_mul(1u32 << self.pauses_in_memory.min(16));
            let capped = doubled.min(self.cfg.max_pause);
            let rest = capped + self.stagger(capped);
            self.last_pause_end = Some(now.plus(rest));
            rest
        };
        let trigger = if pause_class {
            Trigger::Pause
        } else {
            Trigger::SlowDown
        };
        if rest.is_zero() {
            self.set_state(PathState::Slowed, now, &v.text);
        } else {
            self.paused_until = Some(now.plus(rest));
            self.set_state(PathState::Paused, now, &v.text);
        }
        Some(self.change(now, trigger, before, &v.text))
    }

    /// Messages per second the receiver accepted over the last [`MEASURE_INTERVALS`]
    /// increase intervals — but only when
    /// the path was held by its own rate in that window (it offered more than it
    /// delivered): a quiet path's deliveries measure its demand, not the receiver.
    fn measured_acceptance(&mut self, now: Moment) -> Option<f64> {
        let busy = self
            .last_token_hold
            .is_some_and(|t| now.since(t) < self.cfg.window);
        if !busy {
            return None;
        }
        let (delivered, _) = self.delivered.counts(now);
        if delivered == 0 {
            return None;
        }
        // A young path has not lived a whole window; under one interval the sample is
        // a burst, not a rate.
        let span = now
            .since(self.created)
            .min(self.cfg.increase_interval * MEASURE_INTERVALS)
            .max(self.cfg.increase_interval)
            .as_secs_f64();
        Some(f64::from(delivered) / span)
    }

    /// Up to a tenth of `d`, the same for the same path and pause count, different
    /// between paths: their pauses end apart, not in one wave.
    fn stagger(&self, d: Duration) -> Duration {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.path.hash(&mut h);
        self.pauses_in_memory.hash(&mut h);
        let frac = (h.finish() % 1000) as f64 / 10_000.0;
        d.mul_f64(frac)
    }

    fn earn_increase(&mut self, now: Moment) -> Option<PacingChange> {
        self.successes_since_increase += 1;
        if now.since(self.last_increase) < self.cfg.increase_interval {
            return None;
        }
        // Only grow a limit that is being used: a handful of successes per interval.
        if self.successes_since_increase < 2 {
            return None;
        }
        let at_ceiling = self.rate >= self.cfg.rate_ceiling
            && self.connections >= self.cfg.connections.1
            && self.per_connection >= self.cfg.per_connection.1;
        if at_ceiling {
            self.last_increase = now;
            self.successes_since_increase = 0;
            if self.state != PathState::Normal {
                let before = (self.limits(), self.state);
                self.set_state(PathState::Normal, now, "at ceiling");
                return Some(self.change(now, Trigger::Increase, before, "at ceiling"));
            }
            return None;
        }
        let before = (self.limits(), self.state);
        let step = self.cfg.increase_step;
        let new_rate = match self.last_cut_rate {
            // Never cut yet: slow start, a share of the rate per interval.
            None => self.rate + step.max(self.rate * self.cfg.slow_start_growth),
            Some(cut) => {
                let target = cut * self.cfg.plateau_share;
                if self.rate < target {
                    // Climb back to just under where trouble started, in steps.
                    (self.rate + step.max((target - self.rate) * self.cfg.recovery_share))
                        .min(target)
                } else if self
                    .last_cut
                    .is_some_and(|c| now.since(c) < self.cfg.probe_after)
                {
                    // Plateau: hold just under the last known-bad rate for a while.
                    self.last_increase = now;
                    self.successes_since_increase = 0;
                    return None;
                } else {
                    // Probe beyond it, additively.
                    self.rate + step
                }
            }
        };
        self.rate = new_rate.min(self.cfg.rate_ceiling);
        self.increased_since_cut = true;
        // An increase earned means the last pause worked: the next one starts short again.
        self.pauses_in_memory = 0;
        self.last_pause_end = None;
        self.connections = (self.connections + 1).min(self.cfg.connections.1);
        self.per_connection =
            (self.per_connection + self.per_connection.div_ceil(4)).min(self.cfg.per_connection.1);
        self.last_increase = now;
        self.successes_since_increase = 0;
        let state = if self.rate >= self.cfg.rate_ceiling {
            PathState::Normal
        } else {
            PathState::Ramping
        };
        self.set_state(state, now, "successes");
        Some(self.change(now, Trigger::Increase, before, "successes"))
    }

    fn update_band(&mut self, now: Moment, v: Option<&Verdict>) -> Option<PacingChange> {
        let (a, d) = self.window.counts(now);
        let band = next_band(
            self.band,
            a,
            d,
            self.cfg.window_min_attempts,
            self.cfg.watch_share,
            self.cfg.act_share,
        );
        if band == self.band {
            return None;
        }
        let before = (self.limits(), self.state);
        self.band = band;
        let reason = match (band, v) {
            (Band::ActNow, Some(v)) => v.text.clone(),
            _ => format!(
                "deferral rate {:.1}% over {} attempts",
                100.0 * f64::from(d) / f64::from(a.max(1)),
                a
            ),
        };
        Some(self.change(now, Trigger::Band, before, &reason))
    }

    /// An operator stops the path until [`PathPacing::resume`].
    pub fn operator_pause(&mut self, now: Moment, why: &str) -> PacingChange {
        let before = (self.limits(), self.state);
        self.paused_until = None;
        self.set_state(PathState::Stopped, now, why);
        self.change(now, Trigger::OperatorPause, before, why)
    }

    /// An operator resumes a stopped or paused path: it ramps from its floor.
    pub fn resume(&mut self, now: Moment, why: &str) -> PacingChange {
        let before = (self.limits(), self.state);
        self.paused_until = None;
        self.breaker = Breaker {
            consecutive_failures: 0,
            open_until: None,
            probe_out: false,
            cooldown: self.cfg.breaker_cooldown,
        };
        self.rate = self
            .cfg
            .rate_floor
            .max(self.rate.min(self.cfg.rate_initial));
        self.tokens = 0.0;
        self.last_refill = now;
        self.last_increase = now;
        self.set_state(PathState::Ramping, now, why);
        self.change(now, Trigger::OperatorResume, before, why)
    }

    /// The visible state.
    pub fn snapshot(&mut self, now: Moment) -> PathSnapshot {
        let (a, _) = self.window.counts(now);
        PathSnapshot {
            path: self.path.clone(),
            limits: self.limits(),
            state: self.state,
            since: self.since,
            until: self.paused_until,
            reason: self.reason.clone(),
            deferral_rate: self.window.share(now),
            window_attempts: a,
            band: self.band,
        }
    }
}

/// The controller of every path, created on first use from the configuration.
#[derive(Debug, Clone)]
pub struct Pacing {
    config: PacingConfig,
    paths: BTreeMap<Path, PathPacing>,
}

impl Pacing {
    /// A controller with no paths yet.
    pub fn new(config: PacingConfig) -> Pacing {
        Pacing {
            config,
            paths: BTreeMap::new(),
        }
    }

    /// The controller of `path`, created at its initial limits if new.
    pub fn path(&mut self, path: &Path, now: Moment) -> &mut PathPacing {
        if !self.paths.contains_key(path) {
            let cfg = self.config.for_provider(&path.provider).clone();
            self.paths
                .insert(path.clone(), PathPacing::new(path.clone(), cfg, now));
        }
        self.paths.get_mut(path).expect("inserted above")
    }

    /// Whether `path` has been used (has a controller) yet.
    pub fn knows(&self, path: &Path) -> bool {
        self.paths.contains_key(path)
    }

    /// See [`PathPacing::try_send`].
    pub fn try_send(
        &mut self,
        path: &Path,
        stream: Stream,
        now: Moment,
    ) -> (Gate, Vec<PacingChange>) {
        self.path(path, now).try_send(stream, now)
    }

    /// See [`PathPacing::peek_send`].
    pub fn peek_send(
        &mut self,
        path: &Path,
        stream: Stream,
        now: Moment,
    ) -> (Gate, Vec<PacingChange>) {
        self.path(path, now).peek_send(stream, now)
    }

    /// See [`PathPacing::on_outcome`].
    pub fn on_outcome(
        &mut self,
        path: &Path,
        outcome: Outcome<'_>,
        now: Moment,
    ) -> Vec<PacingChange> {
        self.path(path, now).on_outcome(outcome, now)
    }

    /// Snapshots of every known path, in path order.
    pub fn snapshot(&mut self, now: Moment) -> Vec<PathSnapshot> {
        self.paths.values_mut().map(|p| p.snapshot(now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeking_takes_no_token_and_sends_no_probe() {
        let mut p = Pacing::new(PacingConfig::builtin());
        let path: Path = "192.0.2.10@google".parse().unwrap();
        let t = Moment::from_secs(1000);
        for _ in 0..5 {
            assert_eq!(p.peek_send(&path, Stream::Bulk, t).0, Gate::Go);
        }
        assert_eq!(p.try_send(&path, Stream::Bulk, t).0, Gate::Go);
        assert!(matches!(
            p.peek_send(&path, Stream::Bulk, t).0,
            Gate::HoldUntil(_)
        ));
    }
}
