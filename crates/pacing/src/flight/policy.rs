//! Sending policies the flight simulator compares: mxpace (the real controller), and
//! models of Postfix's defaults and of KumoMTA's default Microsoft rule.

use super::receiver::Reply;
use crate::clock::Moment;
use crate::config::PacingConfig;
use crate::controller::{Gate, Outcome, Pacing, PacingChange};
use crate::hold::DomainHolds;
use crate::path::{Path, Stream};
use crate::retry::{RetryDecision, RetryPolicy};
use mxpace_reply::{Action, Scope, Verdict};
use rand::Rng;
use rand::rngs::StdRng;
use std::net::IpAddr;
use std::time::Duration;

/// What a policy sees of one message when it decides its retry.
#[derive(Debug, Clone, Copy)]
pub struct MessageView {
    /// When it was queued (s).
    pub arrival: f64,
    /// Delivery attempts so far (including the one that just failed).
    pub attempts: u32,
    /// The stream.
    pub stream: Stream,
}

/// A sending policy, driven tick by tick by the simulator.
pub trait Policy {
    /// Name in the report (`mxpace`, `postfix`, `kumomta`).
    fn name(&self) -> &'static str;
    /// A new second begins.
    fn tick(&mut self, now: Moment);
    /// Sessions the policy may open this second for mail from `ip` to `tenant`, given
    /// `open_for_ip` sessions already opened this second from that IP.
    fn sessions(&mut self, ip: usize, tenant: usize, open_for_ip: u32, now: Moment) -> u32;
    /// Whether one message may be attempted now. `false` is a hold by our own pacing:
    /// not an attempt, its backoff does not advance.
    fn admit(&mut self, ip: usize, tenant: usize, stream: Stream, now: Moment) -> bool;
    /// A session could not be opened.
    fn on_connect_refused(
        &mut self,
        ip: usize,
        tenant: usize,
        reply: &Reply,
        v: &Verdict,
        now: Moment,
    );
    /// The reply to one message.
    fn on_reply(&mut self, ip: usize, tenant: usize, reply: &Reply, v: &Verdict, now: Moment);
    /// When a deferred message is due again.
    fn retry_at(&mut self, m: MessageView, now: Moment, rng: &mut StdRng) -> Moment;
    /// When a message is given up, counted from its arrival.
    fn max_age(&self) -> Duration;
}

/// Sources addressed by index in the simulator: 192.0.2.(10 + i).
pub fn source_ip(i: usize) -> IpAddr {
    IpAddr::from([192, 0, 2, 10 + (i % 200) as u8])
}

// ---------------------------------------------------------------- mxpace

/// mxpace: the real [`Pacing`] controller per (egress IP × provider), domain holds for
/// tenant-scoped deferrals, and its retry schedule.
pub struct Mxpace {
    pacing: Pacing,
    paths: Vec<Path>,
    holds: DomainHolds<usize>,
    retry: RetryPolicy,
    log: Option<Vec<PacingChange>>,
}

impl Mxpace {
    /// mxpace with `config`, for `ips` egress IPs sending to Microsoft.
    pub fn new(config: PacingConfig, ips: usize) -> Mxpace {
        Mxpace {
            pacing: Pacing::new(config),
            paths: (0..ips)
                .map(|i| Path::new(source_ip(i), "microsoft"))
                .collect(),
            holds: DomainHolds::new(Duration::from_secs(60), Duration::from_secs(1800)),
            retry: RetryPolicy::default(),
            log: None,
        }
    }

    /// Keep every change of limits the controller reports (for traces and tests).
    pub fn with_change_log(mut self) -> Mxpace {
        self.log = Some(Vec::new());
        self
    }

    /// The changes kept since [`Mxpace::with_change_log`].
    pub fn change_log(&self) -> &[PacingChange] {
        self.log.as_deref().unwrap_or(&[])
    }

    fn keep(&mut self, changes: Vec<PacingChange>) {
        if let Some(log) = &mut self.log {
            log.extend(changes);
        }
    }

    /// The controller (for inspection in tests).
    pub fn pacing(&mut self) -> &mut Pacing {
        &mut self.pacing
    }
}

impl Policy for Mxpace {
    fn name(&self) -> &'static str {
        "mxpace"
    }

    fn tick(&mut self, _now: Moment) {}

    fn sessions(&mut self, ip: usize, _tenant: usize, open_for_ip: u32, now: Moment) -> u32 {
        let limit = self.pacing.path(&self.paths[ip], now).limits().connections;
        limit.saturating_sub(open_for_ip)
    }

    fn admit(&mut self, ip: usize, tenant: usize, stream: Stream, now: Moment) -> bool {
        if !self.holds.admit(&tenant, now) {
            return false;
        }
        let (gate, changes) = self.pacing.try_send(&self.paths[ip], stream, now);
        self.keep(changes);
        let ok = matches!(gate, Gate::Go);
        if !ok {
            // A probe slot taken by the hold check must not be lost.
            self.holds.release_probe(&tenant);
        }
        ok
    }

    fn on_connect_refused(&mut self, ip: usize, _t: usize, _r: &Reply, v: &Verdict, now: Moment) {
        let changes =
            self.pacing
                .on_outcome(&self.paths[ip], Outcome::ConnectionFailed(Some(v)), now);
        self.keep(changes);
    }

    fn on_reply(&mut self, ip: usize, tenant: usize, reply: &Reply, v: &Verdict, now: Moment) {
        let outcome = if reply.is_ok() {
            self.holds.delivered(&tenant);
            Outcome::Delivered
        } else if reply.code >= 500 {
            Outcome::Bounced(v)
        } else {
            if v.scope == Scope::Domain {
                self.holds.deferred(&tenant, now);
            }
            Outcome::Deferred(v)
        };
        let changes = self.pacing.on_outcome(&self.paths[ip], outcome, now);
        self.keep(changes);
    }

    /// The relay's own retry policy ([`RetryPolicy::default`]: 5, 10, 20, 40 min, then
    /// hourly, up to +10% jitter, 72 h max age).
    fn retry_at(&mut self, m: MessageView, now: Moment, rng: &mut StdRng) -> Moment {
        let received_ms = (m.arrival * 1000.0) as i64;
        let now_ms = i64::try_from(now.0).unwrap_or(i64::MAX);
        let due = match self.retry.decide(
            Action::Retry,
            m.attempts,
            received_ms,
            now_ms,
            rng.random::<f64>(),
        ) {
            RetryDecision::RetryAt(ms) => ms,
            // Max age reached: one last attempt now; the loop expires it if it fails.
            _ => now_ms,
        };
        Moment(u64::try_from(due).unwrap_or(0))
    }

    fn max_age(&self) -> Duration {
        self.retry.max_age
    }
}

// ---------------------------------------------------------------- Postfix

/// Postfix defaults (research/mta-designs.md §1.1–1.2): per destination (IP × recipient
/// domain) a concurrency window starting at 5 (`initial_destination_concurrency`), up to
/// 20 (`default_destination_concurrency_limit`), +1 per delivery and −1 per connection or
/// handshake failure (feedback 1); `failed_cohort_limit` 1 throttles a dead destination
/// for `minimal_backoff_time` (300 s) and reopens at 5. A 4xx at RCPT is not feedback.
/// Backoff: clamp(age, 300 s, 4000 s), picked up by the queue scan every 300 s
/// (`queue_run_delay`). Lifetime 5 days (`maximal_queue_lifetime`). No rate limit.
pub struct Postfix {
    tenants: usize,
    window: Vec<f64>,
    fail_cohorts: Vec<f64>,
    dead_until: Vec<Moment>,
}

impl Postfix {
    /// Postfix for `ips` × `tenants` destinations.
    pub fn new(ips: usize, tenants: usize) -> Postfix {
        let n = ips * tenants;
        Postfix {
            tenants,
            window: vec![5.0; n],
            fail_cohorts: vec![0.0; n],
            dead_until: vec![Moment(0); n],
        }
    }

    fn q(&self, ip: usize, tenant: usize) -> usize {
        ip * self.tenants + tenant
    }
}

impl Policy for Postfix {
    fn name(&self) -> &'static str {
        "postfix"
    }

    fn tick(&mut self, _now: Moment) {}

    fn sessions(&mut self, ip: usize, tenant: usize, _open: u32, now: Moment) -> u32 {
        let q = self.q(ip, tenant);
        if now < self.dead_until[q] {
            0
        } else {
            self.window[q] as u32
        }
    }

    fn admit(&mut self, ip: usize, tenant: usize, _s: Stream, now: Moment) -> bool {
        now >= self.dead_until[self.q(ip, tenant)]
    }

    fn on_connect_refused(
        &mut self,
        ip: usize,
        tenant: usize,
        _r: &Reply,
        _v: &Verdict,
        now: Moment,
    ) {
        let q = self.q(ip, tenant);
        self.window[q] = (self.window[q] - 1.0).max(1.0);
        self.fail_cohorts[q] += 1.0 / self.window[q];
        if self.fail_cohorts[q] >= 1.0 {
            self.dead_until[q] = now.plus(Duration::from_secs(300));
            self.window[q] = 5.0;
            self.fail_cohorts[q] = 0.0;
        }
    }

    fn on_reply(&mut self, ip: usize, tenant: usize, _reply: &Reply, _v: &Verdict, _now: Moment) {
        let q = self.q(ip, tenant);
        // Any completed session counts as positive feedback, whatever the RCPT reply.
        self.fail_cohorts[q] = 0.0;
        self.window[q] = (self.window[q] + 1.0).min(20.0);
    }

    fn retry_at(&mut self, m: MessageView, now: Moment, _rng: &mut StdRng) -> Moment {
        let age = (now.as_secs_f64() - m.arrival).max(0.0);
        let delay = age.clamp(300.0, 4000.0);
        let due = now.as_secs_f64() + delay;
        // The deferred queue is scanned every queue_run_delay = 300 s.
        Moment::from_secs_f64((due / 300.0).ceil() * 300.0)
    }

    fn max_age(&self) -> Duration {
        Duration::from_secs(5 * 86_400)
    }
}

// ---------------------------------------------------------------- KumoMTA

/// KumoMTA's shipped defaults (research/kumomta.md §1.4, §2.3): per site (IP × tenant MX)
/// `connection_limit` 10 and `max_message_rate` 100/s, office365 `provider_connection_limit`
/// 5 per source; the default automation rule on "Server busy. Please try again later from"
/// (and the other Microsoft IP texts) sets 1 message/minute and 1 connection for 90 min on
/// that site, re-armed by each match, then snaps back. Retry 20 min × 2^n with ±30 s jitter,
/// max age 7 days. Throttled messages wait in the ready queue (not attempts).
pub struct Kumo {
    tenants: usize,
    throttled_until: Vec<Moment>,
    tokens: Vec<f64>,
    last: Vec<Moment>,
}

const KUMO_PATTERNS: &[&str] = &[
    "temporarily deferred",
    "will be permanently deferred",
    "has been temporarily rate limited due to IP reputation",
    "weren't sent",
    "Server busy. Please try again later from",
];

impl Kumo {
    /// KumoMTA for `ips` × `tenants` sites.
    pub fn new(ips: usize, tenants: usize) -> Kumo {
        let n = ips * tenants;
        Kumo {
            tenants,
            throttled_until: vec![Moment(0); n],
            tokens: vec![1.0; n],
            last: vec![Moment(0); n],
        }
    }

    fn q(&self, ip: usize, tenant: usize) -> usize {
        ip * self.tenants + tenant
    }

    fn rate(&self, q: usize, now: Moment) -> f64 {
        if now < self.throttled_until[q] {
            1.0 / 60.0
        } else {
            100.0
        }
    }
}

impl Policy for Kumo {
    fn name(&self) -> &'static str {
        "kumomta"
    }

    fn tick(&mut self, _now: Moment) {}

    fn sessions(&mut self, ip: usize, tenant: usize, open_for_ip: u32, now: Moment) -> u32 {
        let q = self.q(ip, tenant);
        let site = if now < self.throttled_until[q] { 1 } else { 10 };
        site.min(5u32.saturating_sub(open_for_ip))
    }

    fn admit(&mut self, ip: usize, tenant: usize, _s: Stream, now: Moment) -> bool {
        let q = self.q(ip, tenant);
        let rate = self.rate(q, now);
        let dt = now.since(self.last[q]).as_secs_f64();
        self.last[q] = now;
        self.tokens[q] = (self.tokens[q] + dt * rate).min(rate.max(1.0));
        if self.tokens[q] >= 1.0 {
            self.tokens[q] -= 1.0;
            true
        } else {
            false
        }
    }

    fn on_connect_refused(
        &mut self,
        ip: usize,
        tenant: usize,
        r: &Reply,
        v: &Verdict,
        now: Moment,
    ) {
        self.on_reply(ip, tenant, r, v, now);
    }

    fn on_reply(&mut self, ip: usize, tenant: usize, reply: &Reply, _v: &Verdict, now: Moment) {
        if KUMO_PATTERNS.iter().any(|p| reply.text.contains(p)) {
            let q = self.q(ip, tenant);
            self.throttled_until[q] = now.plus(Duration::from_secs(90 * 60));
            self.tokens[q] = self.tokens[q].min(0.0);
        }
    }

    fn retry_at(&mut self, m: MessageView, now: Moment, rng: &mut StdRng) -> Moment {
        let n = m.attempts.saturating_sub(1).min(30) as i32;
        let base = 1200.0 * 2f64.powi(n);
        let jitter = rng.random_range(-30.0..30.0);
        now.plus(Duration::from_secs_f64((base + jitter).max(1.0)))
    }

    fn max_age(&self) -> Duration {
        Duration::from_secs(7 * 86_400)
    }
}
