//! The streaming fold: events in, counts out. Pure — no clock, no I/O; time comes only
//! from the events. State that grows with the log is counts per segment and per time
//! window; state per message is kept only while the recipient is open (not yet delivered,
//! bounced or expired) and is pruned past the maximum queue age.

use crate::knowledge::{self, Providers};
use crate::recent::RecentSet;
use crate::template::Templater;
use mxpace_events::{Event, EventType, Outcome};
use mxpace_reply::Verdict;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use time::OffsetDateTime;

/// A map by text key in which a count is bumped by a borrowed key (`entry_ref`): one
/// lookup, and the key is allocated only when it is new (several per attempt).
pub type KeyMap<V> = hashbrown::HashMap<String, V, rustc_hash::FxBuildHasher>;

/// Buckets of the recent-deliveries table for the duplicate-delivery check: 2^18 × 8 =
/// 2 097 152 (message, recipient) fingerprints, 16 MiB whatever the size of the log. A
/// delivery stays until 8 later ones land in its bucket: a duplicate after 500 000 other
/// deliveries is still found with probability 99.9 % (Poisson, mean 1.9 per bucket), after
/// 1 000 000 with 95 %. That is hours of traffic for a large sender, which covers retries
/// after a lost 250 reply and an application's resubmissions (see [`crate::recent`]).
pub const DUPLICATE_BUCKETS: usize = 1 << 18;

/// Settings of the analysis.
#[derive(Debug, Clone)]
pub struct Config {
    pub providers: Providers,
    /// Width of a time window, seconds.
    pub window_secs: i64,
    /// A retry sooner than this after a deferral is a retry storm, seconds. Postfix's
    /// minimal backoff is 300 s and Exim's first retry 15 min; 60 s is well below both.
    pub retry_storm_secs: i64,
    /// How many examples to keep per anti-pattern, per incident and per template.
    pub examples: usize,
    /// Open state older than this is dropped (Postfix's default maximal_queue_lifetime is 5 d).
    pub max_age_secs: i64,
    /// Width of the bucket in which parallel sessions are counted, seconds.
    pub session_bucket_secs: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            providers: Providers::builtin(),
            window_secs: 600,
            retry_storm_secs: 60,
            examples: 5,
            max_age_secs: 5 * 86400,
            session_bucket_secs: 10,
        }
    }
}

/// Attempts and deferrals of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub attempts: u64,
    pub deferred: u64,
}

impl Counts {
    /// deferred ÷ attempts (0 when there were none).
    pub fn rate(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.deferred as f64 / self.attempts as f64
        }
    }

    fn add(&mut self, deferred: bool) {
        self.attempts += 1;
        self.deferred += deferred as u64;
    }

    pub(crate) fn merge(&mut self, other: Counts) {
        self.attempts += other.attempts;
        self.deferred += other.deferred;
    }
}

/// What a segment is cut by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    Provider,
    /// Sending IP × provider: the unit receivers throttle.
    Path,
    SourceIp,
    SenderDomain,
    RecipientDomain,
    MxHost,
    /// Microsoft datacenter/region from the receiving host name (`namprd04`).
    Region,
    Stream,
}

impl Dimension {
    /// All dimensions, in report order.
    pub const ALL: [Dimension; 8] = [
        Dimension::Provider,
        Dimension::Path,
        Dimension::SourceIp,
        Dimension::SenderDomain,
        Dimension::RecipientDomain,
        Dimension::MxHost,
        Dimension::Region,
        Dimension::Stream,
    ];

    /// Name in JSON and reports.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Provider => "provider",
            Dimension::Path => "path",
            Dimension::SourceIp => "source_ip",
            Dimension::SenderDomain => "sender_domain",
            Dimension::RecipientDomain => "recipient_domain",
            Dimension::MxHost => "mx_host",
            Dimension::Region => "region",
            Dimension::Stream => "stream",
        }
    }
}

/// The dimensions kept per provider and time window for triage.
pub const CELL_DIMENSIONS: [Dimension; 5] = [
    Dimension::SourceIp,
    Dimension::SenderDomain,
    Dimension::RecipientDomain,
    Dimension::Region,
    Dimension::Stream,
];

/// One deferral kept as evidence.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub queue_id: String,
    pub recipient: String,
    pub source_ip: Option<String>,
    pub mx_host: Option<String>,
    pub reply: String,
}

/// One delivery attempt as the analyzer needs it, every text borrowed: built from an
/// [`Event`] by [`Analyzer::observe`], or straight from a parsed log line by the fast
/// Postfix path (no event, no copy per line).
#[derive(Debug, Clone, Copy)]
pub struct AttemptView<'a> {
    pub time: OffsetDateTime,
    pub queue_id: &'a str,
    pub message_id: &'a str,
    /// Envelope sender ("" for the null sender).
    pub sender: &'a str,
    /// The sender is not in the log (its queue line is in an earlier file).
    pub sender_unknown: bool,
    pub recipient: &'a str,
    pub outcome: Option<Outcome>,
    /// Held by the MTA without a connection: not an attempt on the wire.
    pub held: bool,
    pub source_ip: Option<std::net::IpAddr>,
    /// Receiving host, lower-cased.
    pub mx_host: Option<&'a str>,
    /// Provider named by the log itself (used when the host and domain match none).
    pub provider: Option<&'a str>,
    pub stream: Option<&'a str>,
    /// The reply ("" when none).
    pub reply: &'a str,
    pub verdict: Option<&'a Verdict>,
    /// SMTP session identifier, for counting parallel sessions.
    pub session: Option<&'a str>,
}

impl<'a> AttemptView<'a> {
    /// The view of an `attempt` event.
    pub fn of_event(e: &'a Event) -> Self {
        AttemptView {
            time: e.time,
            queue_id: &e.queue_id,
            message_id: &e.message_id,
            sender: &e.sender,
            sender_unknown: e.extra.contains_key("sender_unknown"),
            recipient: &e.recipient,
            outcome: e.outcome,
            held: e.extra.get("held").and_then(|v| v.as_bool()) == Some(true),
            source_ip: e.source_ip,
            mx_host: e.mx_host.as_deref(),
            provider: e.provider.as_deref(),
            stream: e.stream.as_deref(),
            reply: e.reply.as_deref().unwrap_or(""),
            verdict: e.verdict.as_ref(),
            session: e.extra.get("session").and_then(|v| v.as_str()),
        }
    }
}

/// The keys of an attempt that depend only on its own line, not on the analyzer's
/// state: computed on any thread (the Postfix path computes them on the parser threads).
#[derive(Debug, Clone)]
pub struct Derived<'a> {
    /// Recipient domain, lower-cased.
    pub rcpt_domain: Cow<'a, str>,
    pub provider: Cow<'a, str>,
    /// Microsoft datacenter/region named in the reply, lower-cased.
    pub region: Option<Cow<'a, str>>,
    /// Template of the reply of an attempt that was not delivered.
    pub template: Option<String>,
}

impl<'a> Derived<'a> {
    /// The keys of an attempt to `recipient` via `mx_host` (lower-cased) that got `reply`;
    /// its reply template by `templater`.
    pub fn of(
        providers: &'a Providers,
        recipient: &'a str,
        mx_host: Option<&str>,
        provider_hint: Option<&str>,
        reply: &'a str,
        outcome: Option<Outcome>,
        templater: &mut Templater,
    ) -> Self {
        let rcpt_domain = domain_lower(recipient);
        let mut provider = Cow::Borrowed(providers.recognise(mx_host, &rcpt_domain));
        if provider == knowledge::OTHER
            && let Some(p) = provider_hint.filter(|p| !p.is_empty())
        {
            provider = Cow::Owned(p.to_ascii_lowercase());
        }
        let region = knowledge::microsoft_host(reply).map(|(_, r)| lower(r));
        let template = (outcome.is_some_and(|o| o != Outcome::Delivered) && !reply.is_empty())
            .then(|| templater.template(reply));
        Derived {
            rcpt_domain,
            provider,
            region,
            template,
        }
    }
}

/// Counts of one provider in one time window.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub total: Counts,
    /// Per [`CELL_DIMENSIONS`] entry: key → counts.
    pub by: [KeyMap<Counts>; 5],
    pub samples: Vec<Sample>,
}

/// One reply template seen on deferrals or bounces.
#[derive(Debug, Clone)]
pub struct TemplateStats {
    pub provider: String,
    pub count: u64,
    pub deferred: u64,
    pub sample: Sample,
    pub verdict: Verdict,
}

/// Occurrences of an anti-pattern.
#[derive(Debug, Clone, Default)]
pub struct AntiPattern {
    pub count: u64,
    pub examples: Vec<String>,
}

/// Anti-pattern kinds, as named in the JSON.
pub const ANTI_PATTERNS: [&str; 4] = [
    "bounce-after-4xx",
    "retry-storm",
    "duplicate-delivery",
    "over-concurrency",
];

/// Upper bounds (seconds) of the age buckets used by queue health.
pub const AGE_BUCKETS: [(i64, &str); 8] = [
    (60, "< 1 min"),
    (300, "1–5 min"),
    (1800, "5–30 min"),
    (7200, "30 min–2 h"),
    (43200, "2–12 h"),
    (86400, "12–24 h"),
    (259200, "1–3 d"),
    (i64::MAX, "≥ 3 d"),
];

/// Upper bounds of the attempt-count buckets.
pub const RETRY_BUCKETS: [(u32, &str); 6] = [
    (1, "1"),
    (2, "2"),
    (3, "3"),
    (5, "4–5"),
    (10, "6–10"),
    (u32::MAX, "> 10"),
];

/// Retry age, retry count, time to deliver, expiries.
#[derive(Debug, Clone, Default)]
pub struct QueueHealth {
    /// Age of the message at each deferral, by [`AGE_BUCKETS`].
    pub retry_age: [u64; 8],
    /// Attempts per recipient when it left the queue, by [`RETRY_BUCKETS`].
    pub retry_count: [u64; 6],
    /// Time from arrival (or first attempt) to delivery, by [`AGE_BUCKETS`].
    pub time_to_deliver: [u64; 8],
    pub delivered: u64,
    pub bounced: u64,
    pub expired: u64,
    /// Deliveries whose arrival was not in the log (time measured from the first attempt).
    pub delivered_without_arrival: u64,
}

/// An instant as nanoseconds since the Unix epoch: the open state's times are compared
/// and subtracted on every attempt, and an integer does that in one instruction.
type Nanos = i128;

/// Whole seconds from `earlier` to `later`, truncated towards zero (as
/// `(later - earlier).whole_seconds()` on the instants).
fn secs_between(later: Nanos, earlier: Nanos) -> i64 {
    // In 64 bits when it fits (±292 years, i.e. always in a real log): a 128-bit division
    // is a library call, a 64-bit one by a constant a multiplication.
    let d = later - earlier;
    match i64::try_from(d) {
        Ok(d) => d / 1_000_000_000,
        Err(_) => (d / 1_000_000_000) as i64,
    }
}

/// Whole seconds since the epoch, rounded down (as `unix_timestamp`).
fn unix_secs(t: Nanos) -> i64 {
    match i64::try_from(t) {
        Ok(t) => t.div_euclid(1_000_000_000),
        Err(_) => t.div_euclid(1_000_000_000) as i64,
    }
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    time: Nanos,
    open: u32,
}

#[derive(Debug, Clone)]
struct RecipientState {
    first: Nanos,
    last: Nanos,
    attempts: u32,
    deferrals: u32,
    last_deferred: bool,
    last_reply: String,
}

/// The fold over events.
pub struct Analyzer {
    pub(crate) config: Config,
    /// Segments, cells and templates.
    pub(crate) tally: Tally,
    pub(crate) anti: [AntiPattern; 4],
    pub(crate) health: QueueHealth,
    pub(crate) first: Option<OffsetDateTime>,
    pub(crate) last: Option<OffsetDateTime>,
    /// `last` as [`Nanos`] (`i128::MIN` before the first event).
    last_nanos: Nanos,
    pub(crate) out_of_order: u64,
    pub(crate) events: u64,
    pub(crate) held: u64,
    /// Keyed by a 64-bit hash of (queue ID, recipient): no string copies per event.
    open: HashMap<u64, RecipientState>,
    /// Arrival time and open-recipient count per queue ID (hashed); dropped when the
    /// last open recipient leaves, so it is bounded by messages in flight.
    arrivals: HashMap<u64, Arrival>,
    /// Hashes of the most recent delivered (message, recipient): fixed size
    /// ([`DUPLICATE_BUCKETS`]), so memory does not grow with the log.
    delivered: RecentSet,
    /// (hash of source IP × provider, bucket) → hashes of session IDs.
    sessions: HashMap<(u64, i64), HashSet<u64>>,
    flagged_sessions: HashSet<(u64, i64)>,
    hasher: rustc_hash::FxBuildHasher,
    since_prune: u64,
    max_open: usize,
    /// The provider table, shared so that a provider name can be borrowed while the
    /// counts are updated.
    providers: std::sync::Arc<Providers>,
    templater: Templater,
}

impl Analyzer {
    /// An empty analysis.
    pub fn new(config: Config) -> Self {
        Analyzer {
            providers: std::sync::Arc::new(config.providers.clone()),
            templater: Templater::new(),
            config,
            tally: Tally::default(),
            anti: Default::default(),
            health: QueueHealth::default(),
            first: None,
            last: None,
            last_nanos: i128::MIN,
            out_of_order: 0,
            events: 0,
            held: 0,
            open: HashMap::default(),
            arrivals: HashMap::default(),
            delivered: RecentSet::new(DUPLICATE_BUCKETS),
            sessions: HashMap::default(),
            flagged_sessions: HashSet::default(),
            hasher: Default::default(),
            since_prune: 0,
            max_open: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Recipients currently open (bounded by messages in flight).
    pub fn open_recipients(&self) -> usize {
        self.open.len()
    }

    /// The most recipients that were open at once.
    pub fn max_open(&self) -> usize {
        self.max_open
    }

    /// Recipients whose last attempt was deferred and that have not left the queue.
    pub fn still_deferred(&self) -> u64 {
        self.open.values().filter(|s| s.last_deferred).count() as u64
    }

    /// Fold one event.
    pub fn observe(&mut self, e: &Event) {
        match e.kind {
            EventType::Attempt => self.observe_attempt(&AttemptView::of_event(e)),
            EventType::Received if !e.queue_id.is_empty() => {
                self.observe_received(e.time, &e.queue_id)
            }
            _ => {
                let t = e.time;
                self.tick(t);
                match e.kind {
                    EventType::Expired => {
                        self.health.expired += 1;
                        if let Some(state) = self.open.remove(&self.recipient_key(e)) {
                            self.release_arrival(&e.queue_id);
                            self.count_retries(state.attempts);
                        }
                    }
                    EventType::Admin if e.outcome == Some(Outcome::Bounced) => {
                        let key = self.recipient_key(e);
                        if let Some(state) = self.open.remove(&key) {
                            self.release_arrival(&e.queue_id);
                            if state.deferrals == 1 && state.last_deferred {
                                let example = format!(
                                    "{} queue {} to {}: removed after a single deferral ({})",
                                    rfc3339(t),
                                    e.queue_id,
                                    e.recipient,
                                    state.last_reply
                                );
                                self.flag(0, example);
                            }
                            self.count_retries(state.attempts);
                        }
                    }
                    _ => {}
                }
                self.after_event();
            }
        }
    }

    /// Fold the arrival of a message (a `received` event) in the queue.
    pub fn observe_received(&mut self, t: OffsetDateTime, queue_id: &str) {
        let t = self.tick(t);
        let key = self.hasher.hash_one(queue_id);
        self.arrivals
            .entry(key)
            .or_insert(Arrival { time: t, open: 0 });
        self.after_event();
    }

    /// Fold one delivery attempt (an `attempt` event).
    pub fn observe_attempt(&mut self, a: &AttemptView<'_>) {
        let providers = self.providers();
        let derived = Derived::of(
            &providers,
            a.recipient,
            a.mx_host,
            a.provider,
            a.reply,
            a.outcome,
            &mut self.templater,
        );
        self.observe_derived(a, derived);
    }

    /// Fold one delivery attempt whose line-only keys were computed already (by
    /// [`Derived::of`] with [`Analyzer::providers`]).
    pub fn observe_derived(&mut self, a: &AttemptView<'_>, derived: Derived<'_>) {
        let t = self.tick(a.time);
        self.attempt(a, t, derived);
        self.after_event();
    }

    /// The provider table, to compute [`Derived`] keys on other threads.
    pub fn providers(&self) -> std::sync::Arc<Providers> {
        std::sync::Arc::clone(&self.providers)
    }

    /// Count an event at `t` and track the span and order of the log; `t` as [`Nanos`].
    fn tick(&mut self, t: OffsetDateTime) -> Nanos {
        self.events += 1;
        let nanos = t.unix_timestamp_nanos();
        match self.last {
            // Five minutes of slack: syslog from several hosts interleaves slightly.
            Some(_) if secs_between(self.last_nanos, nanos) > 300 => self.out_of_order += 1,
            Some(_) if nanos <= self.last_nanos => {}
            _ => {
                self.last = Some(t);
                self.last_nanos = nanos;
            }
        }
        if self.first.is_none_or(|f| t < f) {
            self.first = Some(t);
        }
        nanos
    }

    fn after_event(&mut self) {
        self.since_prune += 1;
        // Pruning walks the open state: do it when as many events have passed as there
        // are entries, so its cost stays proportional to the input.
        let held = self.open.len() + self.arrivals.len() + self.sessions.len();
        if self.since_prune >= 100_000.max(held as u64) {
            self.prune();
        }
    }

    fn attempt(&mut self, e: &AttemptView<'_>, t: Nanos, derived: Derived<'_>) {
        if e.held {
            // Held by the MTA without a connection: not an attempt on the wire.
            self.held += 1;
            return;
        }
        let Some(outcome) = e.outcome else { return };
        self.tally.add(&self.config, e, &derived, outcome, true);
        self.ordered(e, t, &derived.provider, outcome);
    }

    /// Fold a delivery attempt whose order-free counts, except those by sender domain,
    /// are already in a [`Tally`] (merged with [`Analyzer::merge_tally`]).
    pub fn observe_tallied(&mut self, e: &AttemptView<'_>, provider: &str) {
        let t = self.tick(e.time);
        if e.held {
            self.held += 1;
        } else if let Some(outcome) = e.outcome {
            self.tally
                .add_sender(&self.config, e, provider, is_deferral(outcome));
            self.ordered(e, t, provider, outcome);
        }
        self.after_event();
    }

    /// Add a tally of attempts that come after every attempt folded so far.
    pub fn merge_tally(&mut self, other: Tally) {
        self.tally.merge(other, self.config.examples);
    }

    /// The part of an attempt that depends on the order of the log: sessions, the
    /// recipient's retries, its end.
    fn ordered(&mut self, e: &AttemptView<'_>, t: Nanos, provider: &str, outcome: Outcome) {
        // The duplicate check's bucket is fetched from memory while the session and the
        // recipient's state are looked at.
        let delivery = (outcome == Outcome::Delivered).then(|| {
            let (message, key) = self.delivery_key(e);
            self.delivered.prefetch(key);
            (message, key)
        });
        if let Some(session) = e.session {
            self.session(e.source_ip, provider, e.time, t, session);
        }
        self.recipient(e, t, outcome, is_deferral(outcome), e.reply, delivery);
    }

    fn session(
        &mut self,
        source_ip: Option<std::net::IpAddr>,
        provider: &str,
        t: OffsetDateTime,
        nanos: Nanos,
        session: &str,
    ) {
        let bucket = unix_secs(nanos).div_euclid(self.config.session_bucket_secs);
        // Keyed by the address itself: its text is made only for an example.
        let key = (self.hasher.hash_one((source_ip, provider)), bucket);
        let session = self.hasher.hash_one(session);
        let set = self.sessions.entry(key).or_default();
        set.insert(session);
        let n = set.len();
        let limit = self.config.providers.max_connections(provider) as usize;
        if n > limit && self.flagged_sessions.insert(key) {
            let ip = ip_name(&mut self.tally.ip_names, source_ip);
            let example = format!(
                "{} {ip} → {provider}: {n} parallel sessions within {} s (limit {limit})",
                rfc3339(t),
                self.config.session_bucket_secs
            );
            self.flag(3, example);
        }
    }

    /// `delivery`: for a delivery, the message (its id, else its queue ID) and the hash of
    /// (message, recipient) for the duplicate check.
    fn recipient(
        &mut self,
        e: &AttemptView<'_>,
        now: Nanos,
        outcome: Outcome,
        deferred: bool,
        reply: &str,
        delivery: Option<(&str, u64)>,
    ) {
        let t = e.time;
        let key = self.hasher.hash_one((e.queue_id, e.recipient));
        let qid = self.hasher.hash_one(e.queue_id);
        if let Some(state) = self.open.get(&key)
            && state.attempts > 0
            && state.last_deferred
        {
            let gap = secs_between(now, state.last);
            if gap < self.config.retry_storm_secs {
                let example = format!(
                    "{} queue {} to {}: retried {gap} s after a deferral ({})",
                    rfc3339(t),
                    e.queue_id,
                    e.recipient,
                    state.last_reply
                );
                self.flag(1, example);
            }
        }
        if deferred {
            let state = self.open.entry(key).or_insert_with(|| RecipientState {
                first: now,
                last: now,
                attempts: 0,
                deferrals: 0,
                last_deferred: false,
                last_reply: String::new(),
            });
            let first_attempt = state.attempts == 0;
            state.attempts += 1;
            state.last = now;
            state.last_deferred = true;
            state.deferrals += 1;
            // The text's buffer is reused from one deferral to the next.
            state.last_reply.clear();
            push_truncated(&mut state.last_reply, reply, 120);
            let first = state.first;
            let arrival = match self.arrivals.get_mut(&qid) {
                Some(a) => {
                    a.open += first_attempt as u32;
                    a.time
                }
                None => first,
            };
            self.health.retry_age[age_bucket(secs_between(now, arrival))] += 1;
            return;
        }
        // The recipient leaves the queue: one lookup removes its open state, if any (a
        // delivery at the first attempt never had any).
        let earlier = self.open.remove(&key);
        let first_attempt = earlier.is_none();
        let state = match earlier {
            Some(mut s) => {
                s.attempts += 1;
                s.last = now;
                s.last_deferred = false;
                s
            }
            None => RecipientState {
                first: now,
                last: now,
                attempts: 1,
                deferrals: 0,
                last_deferred: false,
                last_reply: String::new(),
            },
        };
        let arrived = match self.arrivals.get_mut(&qid) {
            Some(a) => {
                let time = a.time;
                // An open recipient leaves; one never counted as open only drops the
                // arrival if it was the message's last.
                if !first_attempt {
                    a.open = a.open.saturating_sub(1);
                }
                if a.open == 0 {
                    self.arrivals.remove(&qid);
                }
                Some(time)
            }
            None => None,
        };
        self.count_retries(state.attempts);
        match outcome {
            Outcome::Delivered => {
                self.health.delivered += 1;
                let arrival = match arrived {
                    Some(a) => a,
                    None => {
                        self.health.delivered_without_arrival += 1;
                        state.first
                    }
                };
                self.health.time_to_deliver[age_bucket(secs_between(now, arrival))] += 1;
                let (message, key) = delivery.unwrap_or_else(|| self.delivery_key(e));
                if self.delivered.check_and_insert(key) {
                    let example = format!(
                        "{} {} to {}: delivered again (queue {})",
                        rfc3339(t),
                        message,
                        e.recipient,
                        e.queue_id
                    );
                    self.flag(2, example);
                }
            }
            Outcome::Bounced => {
                self.health.bounced += 1;
                let code = knowledge::basic_code(reply);
                if code.is_some_and(|c| (400..500).contains(&c)) {
                    let example = format!(
                        "{} queue {} to {}: bounced on a temporary reply ({})",
                        rfc3339(t),
                        e.queue_id,
                        e.recipient,
                        truncate(reply, 120)
                    );
                    self.flag(0, example);
                }
            }
            _ => {}
        }
    }

    /// The message of a delivery (its id, else its queue ID) and the hash of (message,
    /// recipient) that the duplicate check remembers.
    fn delivery_key<'e>(&self, e: &AttemptView<'e>) -> (&'e str, u64) {
        let message = if e.message_id.is_empty() {
            e.queue_id
        } else {
            e.message_id
        };
        (message, self.hasher.hash_one((message, e.recipient)))
    }

    /// One open recipient of `queue_id` left the queue.
    fn release_arrival(&mut self, queue_id: &str) {
        let qid = self.hasher.hash_one(queue_id);
        if let Some(a) = self.arrivals.get_mut(&qid) {
            a.open = a.open.saturating_sub(1);
            if a.open == 0 {
                self.arrivals.remove(&qid);
            }
        }
    }

    fn recipient_key(&self, e: &Event) -> u64 {
        // Same hash as for an attempt view: (&str, &str).
        self.hasher
            .hash_one((e.queue_id.as_str(), e.recipient.as_str()))
    }

    fn count_retries(&mut self, attempts: u32) {
        if attempts == 0 {
            return;
        }
        let i = RETRY_BUCKETS
            .iter()
            .position(|(max, _)| attempts <= *max)
            .unwrap_or(RETRY_BUCKETS.len() - 1);
        self.health.retry_count[i] += 1;
    }

    fn flag(&mut self, kind: usize, example: String) {
        let a = &mut self.anti[kind];
        a.count += 1;
        if a.examples.len() < self.config.examples {
            a.examples.push(example);
        }
    }

    /// Drop per-message state that cannot matter any more (older than the queue lifetime)
    /// and session buckets behind the stream.
    fn prune(&mut self) {
        self.since_prune = 0;
        self.max_open = self.max_open.max(self.open.len());
        let Some(now) = self.last else { return };
        let now_nanos = self.last_nanos;
        let max_age = self.config.max_age_secs;
        self.open
            .retain(|_, s| secs_between(now_nanos, s.last) <= max_age);
        self.arrivals
            .retain(|_, a| secs_between(now_nanos, a.time) <= max_age);
        let bucket = now
            .unix_timestamp()
            .div_euclid(self.config.session_bucket_secs);
        self.sessions.retain(|(_, b), _| *b + 30 >= bucket);
        self.flagged_sessions.retain(|(_, b)| *b + 30 >= bucket);
    }
}

fn is_deferral(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Deferred | Outcome::ConnectionFailed)
}

/// The counts that are plain sums over attempts (segments, provider × window cells,
/// reply templates): they do not depend on the order of the log beyond keeping the
/// first samples, so tallies of consecutive parts of a log merge into the tally of the
/// whole. The parser threads keep one per piece of the log.
#[derive(Default)]
pub struct Tally {
    /// Per dimension (indexed by `Dimension as usize`): key → counts, kept only for the
    /// dimensions the cells do not hold ([`Tally::STORED`]); the others are sums over the
    /// cells, made by [`Tally::segment`] when a report asks (fewer map updates per
    /// attempt: this runs on every attempt).
    segments: [KeyMap<Counts>; 8],
    /// provider → window start (unix s) → cell.
    pub(crate) cells: KeyMap<BTreeMap<i64, Cell>>,
    /// provider → template → stats (two levels, so that a lookup borrows both texts).
    pub(crate) templates: KeyMap<KeyMap<TemplateStats>>,
    /// Text of each sending IP, made once.
    ip_names: HashMap<Option<std::net::IpAddr>, String>,
}

impl Tally {
    /// The dimensions whose counts are kept as such: the sender's segment key differs from
    /// the cells' (`<>`, `unknown`), and receiving hosts are not in the cells.
    const STORED: [Dimension; 2] = [Dimension::SenderDomain, Dimension::MxHost];

    /// The counts by `dim`: key → counts over the whole log.
    pub fn segment(&self, dim: Dimension) -> std::borrow::Cow<'_, KeyMap<Counts>> {
        let by = |i: usize| {
            let mut out = KeyMap::<Counts>::default();
            for cell in self.cells.values().flat_map(BTreeMap::values) {
                for (key, c) in &cell.by[i] {
                    out.entry_ref(key.as_str()).or_default().merge(*c);
                }
            }
            out
        };
        std::borrow::Cow::Owned(match dim {
            Dimension::SenderDomain | Dimension::MxHost => {
                return std::borrow::Cow::Borrowed(&self.segments[dim as usize]);
            }
            Dimension::Provider => self
                .cells
                .iter()
                .map(|(provider, windows)| {
                    let mut total = Counts::default();
                    windows.values().for_each(|c| total.merge(c.total));
                    (provider.clone(), total)
                })
                .collect(),
            Dimension::Path => {
                let mut out = KeyMap::<Counts>::default();
                for (provider, windows) in &self.cells {
                    for cell in windows.values() {
                        for (ip, c) in &cell.by[0] {
                            out.entry(format!("{ip} → {provider}"))
                                .or_default()
                                .merge(*c);
                        }
                    }
                }
                out
            }
            Dimension::SourceIp => by(0),
            Dimension::RecipientDomain => by(2),
            Dimension::Region => by(3),
            Dimension::Stream => by(4),
        })
    }

    /// Count one attempt (not held; `outcome` is `e.outcome`). Without `with_sender` the
    /// counts by sender domain are left out (they need the queue's correlation, which
    /// is done in order; see [`Tally::add_sender`]).
    pub fn add(
        &mut self,
        config: &Config,
        e: &AttemptView<'_>,
        derived: &Derived<'_>,
        outcome: Outcome,
        with_sender: bool,
    ) {
        let t = e.time;
        let deferred = is_deferral(outcome);
        let provider: &str = &derived.provider;
        let rcpt_domain: &str = &derived.rcpt_domain;
        let region = derived.region.as_deref();
        let sender_domain = domain_lower(e.sender);
        let reply = e.reply;
        let ip = ip_name(&mut self.ip_names, e.source_ip);
        let stream = e.stream;
        let sender_key = sender_key(e, &sender_domain);

        let keys = [with_sender.then_some(sender_key), e.mx_host];
        for (dim, key) in Self::STORED.into_iter().zip(keys) {
            if let Some(key) = key {
                bump(&mut self.segments[dim as usize], key, deferred);
            }
        }

        let cell = cell_mut(&mut self.cells, config, provider, t);
        cell.total.add(deferred);
        let cell_keys = [
            Some(ip),
            with_sender.then_some(sender_domain.as_ref()),
            Some(rcpt_domain),
            region,
            stream,
        ];
        for (i, key) in cell_keys.into_iter().enumerate() {
            if let Some(key) = key {
                bump(&mut cell.by[i], key, deferred);
            }
        }
        let sample = || Sample {
            time: t,
            queue_id: e.queue_id.to_string(),
            recipient: e.recipient.to_string(),
            source_ip: e.source_ip.map(|i| i.to_string()),
            mx_host: e.mx_host.map(str::to_string),
            reply: reply.to_string(),
        };
        if deferred && cell.samples.len() < config.examples {
            cell.samples.push(sample());
        }
        if let Some(template) = &derived.template {
            let templates = self.templates.entry_ref(provider).or_default();
            match templates.entry_ref(template.as_str()) {
                hashbrown::hash_map::EntryRef::Occupied(mut stats) => {
                    let stats = stats.get_mut();
                    stats.count += 1;
                    stats.deferred += deferred as u64;
                }
                hashbrown::hash_map::EntryRef::Vacant(slot) => {
                    let verdict = e
                        .verdict
                        .cloned()
                        .unwrap_or_else(|| mxpace_reply::explain(reply, e.mx_host));
                    slot.insert(TemplateStats {
                        provider: provider.to_string(),
                        count: 1,
                        deferred: deferred as u64,
                        sample: sample(),
                        verdict,
                    });
                }
            }
        }
    }

    /// The counts by sender domain that [`Tally::add`] leaves out without `with_sender`.
    pub fn add_sender(
        &mut self,
        config: &Config,
        e: &AttemptView<'_>,
        provider: &str,
        deferred: bool,
    ) {
        let sender_domain = domain_lower(e.sender);
        let key = sender_key(e, &sender_domain);
        bump(
            &mut self.segments[Dimension::SenderDomain as usize],
            key,
            deferred,
        );
        let cell = cell_mut(&mut self.cells, config, provider, e.time);
        bump(&mut cell.by[1], &sender_domain, deferred);
    }

    /// Add the tally of the attempts that follow this one's.
    fn merge(&mut self, other: Tally, examples: usize) {
        for (mine, map) in self.segments.iter_mut().zip(other.segments) {
            for (key, counts) in map {
                mine.entry(key).or_default().merge(counts);
            }
        }
        for (provider, windows) in other.cells {
            let mine = self.cells.entry(provider).or_default();
            for (window, cell) in windows {
                let into = mine.entry(window).or_default();
                into.total.merge(cell.total);
                for (i, by) in cell.by.into_iter().enumerate() {
                    for (key, counts) in by {
                        into.by[i].entry(key).or_default().merge(counts);
                    }
                }
                let room = examples.saturating_sub(into.samples.len());
                into.samples.extend(cell.samples.into_iter().take(room));
            }
        }
        for (provider, templates) in other.templates {
            let mine = self.templates.entry(provider).or_default();
            for (template, stats) in templates {
                match mine.get_mut(&template) {
                    Some(into) => {
                        into.count += stats.count;
                        into.deferred += stats.deferred;
                    }
                    None => {
                        mine.insert(template, stats);
                    }
                }
            }
        }
    }
}

/// The text of a sending IP, made once per address.
fn ip_name(
    names: &mut HashMap<Option<std::net::IpAddr>, String>,
    source_ip: Option<std::net::IpAddr>,
) -> &str {
    names
        .entry(source_ip)
        .or_insert_with(|| source_ip.map_or_else(|| "unknown".into(), |ip| ip.to_string()))
}

/// The segment key of the sender: its domain, `<>` for the null sender, `unknown` when
/// the queue line is not in the log.
fn sender_key<'a>(e: &AttemptView<'_>, sender_domain: &'a str) -> &'a str {
    if e.sender_unknown {
        "unknown"
    } else if sender_domain.is_empty() {
        "<>"
    } else {
        sender_domain
    }
}

/// The cell of `provider` for the window holding `t`, created if new.
fn cell_mut<'m>(
    cells: &'m mut KeyMap<BTreeMap<i64, Cell>>,
    config: &Config,
    provider: &str,
    t: OffsetDateTime,
) -> &'m mut Cell {
    let window = t.unix_timestamp().div_euclid(config.window_secs) * config.window_secs;
    cells
        .entry_ref(provider)
        .or_default()
        .entry(window)
        .or_default()
}

fn bump(map: &mut KeyMap<Counts>, key: &str, deferred: bool) {
    map.entry_ref(key).or_default().add(deferred);
}

/// The domain of an address, lower-cased, borrowed when it already is (same result as
/// [`mxpace_events::readers::domain_of`]).
fn domain_lower(address: &str) -> Cow<'_, str> {
    // By bytes (memrchr, a byte trim): `char` patterns cost several times more here, on
    // every attempt's recipient and sender.
    match memchr::memrchr(b'@', address.as_bytes()) {
        Some(at) => {
            let d = &address.as_bytes()[at + 1..];
            let end = d.iter().rposition(|&b| b != b'>').map_or(0, |i| i + 1);
            lower(&address[at + 1..at + 1 + end])
        }
        None => Cow::Borrowed(""),
    }
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

fn age_bucket(secs: i64) -> usize {
    AGE_BUCKETS
        .iter()
        .position(|(max, _)| secs < *max)
        .unwrap_or(AGE_BUCKETS.len() - 1)
}

/// Append `s`, cut after `max` characters (marked `…`), to `out`.
fn push_truncated(out: &mut String, s: &str, max: usize) {
    // Where the character `max` starts: found by bytes when the text before it is ASCII
    // (a reply on most deferrals; walking the characters cost 2 % of a throttled log).
    let cut = if s.len() <= max {
        None
    } else if s.as_bytes()[..=max].is_ascii() {
        Some(max)
    } else {
        s.char_indices().nth(max).map(|(i, _)| i)
    };
    // Room for the text and the ellipsis at once: growing the buffer for the ellipsis
    // was a second allocation per new deferred recipient.
    out.reserve(cut.map_or(s.len(), |i| i + '…'.len_utf8()));
    match cut {
        Some(i) => {
            out.push_str(&s[..i]);
            out.push('…');
        }
        None => out.push_str(s),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// RFC 3339 UTC text of an instant.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn domains_are_cut_as_the_char_pattern_cut_them() {
        fn reference(address: &str) -> String {
            match address.rsplit_once('@') {
                Some((_, d)) => d.trim_end_matches('>').to_ascii_lowercase(),
                None => String::new(),
            }
        }
        for a in [
            "",
            "a@example.com",
            "A@Example.COM",
            "a@b@c.example",
            "x@y.example>>",
            "x@>>",
            "@",
            "no-at",
            "é@dömain.example>",
            "a@b>c",
        ] {
            assert_eq!(super::domain_lower(a), reference(a), "{a:?}");
        }
    }
}

#[cfg(test)]
mod truncate_tests {
    #[test]
    fn texts_are_cut_after_max_characters_as_counting_characters_cuts_them() {
        fn reference(s: &str, max: usize) -> String {
            match s.char_indices().nth(max) {
                Some((i, _)) => format!("{}…", &s[..i]),
                None => s.to_string(),
            }
        }
        for s in [
            "",
            "abc",
            "abcd",
            "abcde",
            "ééééé",
            "ab\u{e9}de",
            "abcé",
            "abcdé",
            "a😀bcdef",
        ] {
            for max in 0..7 {
                let mut out = String::new();
                super::push_truncated(&mut out, s, max);
                assert_eq!(out, reference(s, max), "{s:?} {max}");
            }
        }
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn seconds_between_nanosecond_instants_match_the_date_arithmetic() {
        let t = |s: i64, ns: i64| {
            OffsetDateTime::from_unix_timestamp(s).unwrap() + time::Duration::nanoseconds(ns)
        };
        let pairs = [
            (t(1_795_420_800, 0), t(1_795_420_800, 0)),
            (t(1_795_420_810, 200), t(1_795_420_800, 900)),
            (t(1_795_420_800, 900), t(1_795_420_810, 200)),
            (t(-10, 5), t(3, 7)),
            (t(253_402_300_799, 0), t(-62_135_596_800, 1)), // year 9999 and year 1
        ];
        for (a, b) in pairs {
            let (na, nb) = (a.unix_timestamp_nanos(), b.unix_timestamp_nanos());
            assert_eq!(secs_between(na, nb), (a - b).whole_seconds(), "{a} {b}");
            assert_eq!(unix_secs(na), a.unix_timestamp(), "{a}");
        }
    }
}

#[cfg(test)]
mod segment_tests {
    use super::*;

    /// Segments the cells hold are sums over the cells: across windows, providers and IPs
    /// they must count each attempt once, as a direct count would.
    #[test]
    fn segments_summed_from_the_cells_count_each_attempt_once() {
        let mut analyzer = Analyzer::new(Config::default());
        let start = OffsetDateTime::from_unix_timestamp(1_795_420_800).unwrap();
        let attempts = [
            (0, "198.51.100.1", "a@contoso.com", Outcome::Deferred),
            (60, "198.51.100.1", "b@contoso.com", Outcome::Delivered),
            (7200, "198.51.100.2", "c@contoso.com", Outcome::Deferred),
            (7260, "198.51.100.2", "d@gmail.com", Outcome::Delivered),
        ];
        for (i, (secs, ip, rcpt, outcome)) in attempts.into_iter().enumerate() {
            let mut e = Event::new(EventType::Attempt, start + time::Duration::seconds(secs));
            e.queue_id = format!("Q{i}");
            e.recipient = rcpt.into();
            e.source_ip = ip.parse().ok();
            e.outcome = Some(outcome);
            e.reply = Some("451 4.7.500 Server busy".into());
            analyzer.observe(&e);
        }
        let seg = |dim| {
            let mut rows: Vec<(String, u64, u64)> = analyzer
                .tally
                .segment(dim)
                .iter()
                .map(|(k, c)| (k.clone(), c.attempts, c.deferred))
                .collect();
            rows.sort();
            rows
        };
        let provider = |d: &str| Config::default().providers.recognise(None, d).to_string();
        let (ms, google) = (provider("contoso.com"), provider("gmail.com"));
        let mut by_provider = vec![(ms.clone(), 3, 2), (google.clone(), 1, 0)];
        by_provider.sort();
        assert_eq!(seg(Dimension::Provider), by_provider);
        assert_eq!(
            seg(Dimension::SourceIp),
            [("198.51.100.1".into(), 2, 1), ("198.51.100.2".into(), 2, 1)]
        );
        let mut paths = vec![
            (format!("198.51.100.1 → {ms}"), 2, 1),
            (format!("198.51.100.2 → {ms}"), 1, 1),
            (format!("198.51.100.2 → {google}"), 1, 0),
        ];
        paths.sort();
        assert_eq!(seg(Dimension::Path), paths);
        assert_eq!(
            seg(Dimension::RecipientDomain),
            [("contoso.com".into(), 3, 2), ("gmail.com".into(), 1, 0)]
        );
    }
}
