//! The running relay's shared state, and the two ways state changes: a message
//! is accepted, or an attempt (or an operator) decides about recipients.

use crate::config::Config;
use crate::dsn::{self, FailedRecipient, FailureKind};
use crate::event_log::EventLog;
use crate::gate::PacingGate;
use crate::headers;
use crate::metrics::Counters;
use crate::queue::{Filter, Queue};
use crate::spool::{OpResult, QueuedMessage, RcptStatus, Recipient, Spool, SpoolError, SpoolOp};
use mxpace_events::{Event, EventType, Outcome};
use mxpace_pacing::retry::RetryDecision;
use mxpace_reply::{Action, Verdict};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Wall clock in ms since the epoch (the shell's clock; cores take it as input).
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 UTC text for a time in ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    time_of(ms)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

fn time_of(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// State shared by ingress, scheduler and the HTTP endpoint.
pub struct Shared {
    pub config: Config,
    pub spool: Spool,
    pub queue: Mutex<Queue>,
    pub events: EventLog,
    /// What the events say, counted for `GET /metrics`.
    pub counters: Counters,
    /// Message data held in memory before it is spooled (`max_data_memory`).
    pub data_budget: crate::budget::DataBudget,
    /// Woken when something may have become due.
    pub wake: Notify,
    pub gate: Arc<dyn PacingGate>,
}

impl Shared {
    /// Lock the queue (a poisoned lock is still usable: the queue has no
    /// invariants a panic elsewhere could break halfway).
    pub fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write `events` to the event log and count them for the metrics.
    pub fn record(&self, events: &[Event]) {
        self.counters.observe(events);
        self.events.write_all(events);
    }

    fn dsn_from(&self) -> String {
        self.config
            .relay
            .postmaster
            .clone()
            .unwrap_or_else(|| format!("MAILER-DAEMON@{}", self.config.relay.hostname))
    }
}

/// Write the pacing gate's changes since the last call to the event log as
/// `type: "pacing"` events.
pub fn write_pacing_changes(shared: &Shared) {
    let changes = shared.gate.take_changes();
    if !changes.is_empty() {
        let events: Vec<Event> = changes
            .iter()
            .map(crate::pacing_gate::pacing_event)
            .collect();
        shared.record(&events);
    }
}

/// One envelope recipient as submitted.
#[derive(Debug, Clone)]
pub struct EnvelopeRecipient {
    pub address: String,
    pub orcpt: Option<String>,
    pub notify: u64,
}

/// A message handed to the relay by SMTP or HTTP.
#[derive(Debug, Clone)]
pub struct Submission {
    pub sender: String,
    pub recipients: Vec<EnvelopeRecipient>,
    pub env_id: Option<String>,
    pub ret_full: bool,
    /// Stream named by the channel (authenticated user, HTTP field); the
    /// `X-Mxpace-Stream` header wins over it.
    pub stream: Option<String>,
    pub idempotency_key: Option<String>,
    /// Header to prepend (Received), CRLF-terminated.
    pub trace: Option<String>,
    pub body: Vec<u8>,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub queue_id: String,
    /// True when the idempotency key was known: nothing new was queued.
    pub duplicate: bool,
}

/// A stream name is a short token; anything else falls back to the default.
fn valid_stream(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Make a submission durable, then queue it. Returns once it is on disk.
pub async fn accept(shared: &Shared, sub: Submission) -> Result<Accepted, SpoolError> {
    let now = now_ms();
    let queue_id = ulid::Ulid::new().to_string();
    let (header_stream, mut body) = headers::take_header(&sub.body, "X-Mxpace-Stream");
    let stream = header_stream
        .filter(|s| valid_stream(s))
        .or(sub.stream.filter(|s| valid_stream(s)))
        .unwrap_or_else(|| shared.config.relay.default_stream.clone());
    let message_id = match headers::header_value(&body, "Message-ID") {
        Some(id) => id,
        None => {
            // RFC 5322 makes Message-ID optional but every receiver scores its
            // absence; submission servers add one (RFC 6409 §8.3).
            let id = format!("<{queue_id}@{}>", shared.config.relay.hostname);
            let mut with = format!("Message-ID: {id}\r\n").into_bytes();
            with.extend_from_slice(&body);
            body = with;
            id
        }
    };
    if let Some(trace) = &sub.trace {
        let mut with = trace.as_bytes().to_vec();
        with.extend_from_slice(&body);
        body = with;
    }
    let policy = shared.config.retry_policy(&stream);
    let msg = QueuedMessage {
        queue_id: queue_id.clone(),
        message_id,
        sender: sub.sender,
        received_ms: now,
        stream,
        size: body.len() as u64,
        env_id: sub.env_id,
        ret_full: sub.ret_full,
        idempotency_key: sub.idempotency_key,
        expires_ms: policy.expires_at(now),
        recipients: sub
            .recipients
            .into_iter()
            .map(|r| Recipient::queued(r.address, r.orcpt, r.notify, now))
            .collect(),
    };
    let result = shared
        .spool
        .commit(vec![SpoolOp::Insert {
            message: msg.clone(),
            body,
        }])
        .await?;
    if let Some(OpResult::Duplicate(existing)) = result.first() {
        return Ok(Accepted {
            queue_id: existing.clone(),
            duplicate: true,
        });
    }
    let events: Vec<Event> = msg
        .recipients
        .iter()
        .map(|r| {
            let mut e = base_event(EventType::Received, &msg, &r.address, now);
            e.stream = Some(msg.stream.clone());
            e.size = Some(msg.size);
            e
        })
        .collect();
    shared.record(&events);
    shared.queue().insert(msg);
    shared.wake.notify_one();
    Ok(Accepted {
        queue_id,
        duplicate: false,
    })
}

fn base_event(kind: EventType, msg: &QueuedMessage, rcpt: &str, now: i64) -> Event {
    let mut e = Event::new(kind, time_of(now));
    e.queue_id = msg.queue_id.clone();
    e.message_id = msg.message_id.clone();
    e.sender = msg.sender.clone();
    e.recipient = rcpt.to_owned();
    e
}

/// Where an attempt went.
#[derive(Debug, Clone, Default)]
pub struct AttemptContext {
    pub source_ip: Option<IpAddr>,
    pub ehlo: Option<String>,
    pub mx_host: Option<String>,
    pub peer_ip: Option<IpAddr>,
    pub provider: Option<String>,
    pub tls: bool,
    /// The next hop advertised DSN (RFC 3461): NOTIFY went on with the message, and
    /// success notices are its to send.
    pub next_hop_dsn: bool,
}

/// How one recipient's attempt ended.
#[derive(Debug, Clone)]
pub enum RcptResult {
    /// The receiver answered (RCPT or end-of-data reply).
    Reply { text: String, verdict: Box<Verdict> },
    /// No usable answer: connect/TLS/timeout/lost connection.
    ConnectionFailed { error: String },
    /// Held by pacing: not an attempt; due again at this time.
    Held { until_ms: i64 },
}

/// Apply the results of one attempt on a job's recipients: decide per
/// recipient, commit the new state, write events, queue DSNs.
pub async fn finish_attempt(
    shared: &Shared,
    queue_id: &str,
    results: Vec<(usize, RcptResult)>,
    ctx: &AttemptContext,
) {
    // Time from the reply to its durable record: the window in which a crash
    // makes the message be sent again (RFC 1047).
    let started = std::time::Instant::now();
    let now = now_ms();
    let Some(mut msg) = shared.queue().get(queue_id).cloned() else {
        return;
    };
    let policy = shared.config.retry_policy(&msg.stream);
    let mut events = Vec::new();
    let mut failed = Vec::new();
    let released: Vec<usize> = results.iter().map(|(i, _)| *i).collect();
    let msg_times = (msg.received_ms, msg.sender.is_empty());
    for (i, result) in results {
        let Some(r) = msg.recipients.get_mut(i) else {
            continue;
        };
        if r.status.is_final() {
            continue;
        }
        let (action, reply, verdict, outcome_if_retry) = match result {
            RcptResult::Held { until_ms } => {
                r.next_attempt_ms = until_ms;
                continue;
            }
            RcptResult::Reply { text, verdict } => {
                (verdict.action, text, Some(*verdict), Outcome::Deferred)
            }
            // A lost connection is never a bounce, whatever else is known.
            RcptResult::ConnectionFailed { error } => {
                (Action::Retry, error, None, Outcome::ConnectionFailed)
            }
        };
        r.attempts += 1;
        r.last_reply = Some(reply.clone());
        r.last_mx = ctx.mx_host.clone();
        r.last_provider = ctx.provider.clone();
        r.last_source = ctx.source_ip;
        // Expiry is measured from the message's own deadline, fixed at reception.
        let received_for_policy = msg.expires_ms - policy.max_age.as_millis() as i64;
        let decision = policy.decide(
            action,
            r.attempts,
            received_for_policy,
            now,
            rand::random::<f64>(),
        );
        // What the attempt settles, and which DSN (if any) it owes the sender.
        let (outcome, report) = match decision {
            RetryDecision::Delivered => {
                r.status = RcptStatus::Delivered;
                // RFC 3461 §4.2: NOTIFY=SUCCESS delivered to a next hop that does not
                // speak DSN ends the notice chain here: report it as relayed.
                let relayed = r.notify & smtp_proto::RCPT_NOTIFY_SUCCESS != 0 && !ctx.next_hop_dsn;
                (Outcome::Delivered, relayed.then_some(FailureKind::Relayed))
            }
            RetryDecision::RetryAt(t) => {
                r.next_attempt_ms = t;
                let due = !r.delay_reported && delay_report_due(&shared.config, &msg_times, r, now);
                r.delay_reported |= due;
                (outcome_if_retry, due.then_some(FailureKind::Delayed))
            }
            RetryDecision::Bounce => {
                r.status = RcptStatus::Bounced;
                (Outcome::Bounced, Some(FailureKind::Bounced))
            }
            RetryDecision::Expire => {
                r.status = RcptStatus::Expired;
                (outcome_if_retry, Some(FailureKind::Expired))
            }
        };
        let (address, attempts, orcpt) = (r.address.clone(), r.attempts, r.orcpt.clone());
        let mut e = base_event(EventType::Attempt, &msg, &address, now);
        e.outcome = Some(outcome);
        e.attempt = Some(attempts);
        e.stream = Some(msg.stream.clone());
        e.source_ip = ctx.source_ip;
        e.ehlo = ctx.ehlo.clone();
        e.mx_host = ctx.mx_host.clone();
        e.peer_ip = ctx.peer_ip;
        e.provider = ctx.provider.clone();
        e.reply = Some(reply.clone());
        e.verdict = verdict.clone();
        if ctx.tls {
            e.extra.insert("tls".into(), true.into());
        }
        events.push(e);
        if report == Some(FailureKind::Expired) {
            let mut x = base_event(EventType::Expired, &msg, &address, now);
            x.stream = Some(msg.stream.clone());
            x.attempt = Some(attempts);
            x.reply = Some(reply.clone());
            events.push(x);
        }
        if let Some(kind) = report {
            failed.push(FailedRecipient {
                address: address.clone(),
                orcpt: orcpt.clone(),
                status: dsn::status_for(verdict.as_ref(), kind),
                kind,
                diagnostic: Some(reply),
                remote_mta: ctx.mx_host.clone(),
            });
        }
    }
    commit_and_notify(shared, msg, &released, failed, events, now).await;
    tracing::debug!(
        queue_id,
        commit_us = started.elapsed().as_micros() as u64,
        "attempt outcome committed"
    );
}

/// Whether a deferred recipient is due its one delay report: the message has waited
/// `delay_warning` (not off), it has a sender to report to, and the recipient asked
/// for delay reports (NOTIFY=DELAY), or gave no NOTIFY and the config reports those too.
fn delay_report_due(
    config: &Config,
    (received_ms, null_sender): &(i64, bool),
    r: &Recipient,
    now: i64,
) -> bool {
    let after = config.relay.delay_warning.as_millis() as i64;
    if after == 0 || *null_sender || now - received_ms < after {
        return false;
    }
    if r.notify == 0 {
        config.relay.delay_warning_unrequested
    } else {
        r.notify & smtp_proto::RCPT_NOTIFY_DELAY != 0
    }
}

/// A DSN about `report` (failures, or delays) of `msg`, as a queued message to its
/// sender (null sender, transactional stream) and its body.
fn dsn_message(
    shared: &Shared,
    msg: &QueuedMessage,
    report: &[FailedRecipient],
    now: i64,
) -> (QueuedMessage, Vec<u8>) {
    let original = shared
        .spool
        .body(&msg.queue_id)
        .ok()
        .flatten()
        .unwrap_or_default();
    let body = dsn::build_dsn(
        &shared.config.relay.hostname,
        &shared.dsn_from(),
        msg,
        report,
        &original,
        time_of(now),
    );
    let policy = shared.config.retry_policy("transactional");
    let suffix = match report.first().map(|f| f.kind) {
        Some(FailureKind::Delayed) => "delay",
        Some(FailureKind::Relayed) => "relayed",
        _ => "dsn",
    };
    let dsn = QueuedMessage {
        queue_id: ulid::Ulid::new().to_string(),
        message_id: format!(
            "<{}.{suffix}@{}>",
            msg.queue_id, shared.config.relay.hostname
        ),
        sender: String::new(),
        received_ms: now,
        stream: "transactional".into(),
        size: body.len() as u64,
        env_id: None,
        ret_full: false,
        idempotency_key: None,
        expires_ms: policy.expires_at(now),
        recipients: vec![Recipient::queued(msg.sender.clone(), None, 0, now)],
    };
    (dsn, body)
}

/// Persist `msg`'s new state (or remove it when done), queue a DSN for
/// `failed`, write `events`, and update the in-memory queue.
async fn commit_and_notify(
    shared: &Shared,
    msg: QueuedMessage,
    released: &[usize],
    failed: Vec<FailedRecipient>,
    mut events: Vec<Event>,
    now: i64,
) {
    let mut ops = Vec::new();
    let mut dsn_msgs = Vec::new();
    let notify_failure = |r: &FailedRecipient| {
        // NOTIFY=NEVER (or NOTIFY without FAILURE) suppresses the failure DSN; delay
        // and relay reports were chosen by NOTIFY already.
        matches!(r.kind, FailureKind::Delayed | FailureKind::Relayed)
            || msg
                .recipients
                .iter()
                .find(|x| x.address == r.address)
                .is_none_or(|x| x.notify == 0 || x.notify & smtp_proto::RCPT_NOTIFY_FAILURE != 0)
    };
    // One report per kind: failures, delays, successful relays.
    let mut reports: [Vec<FailedRecipient>; 3] = Default::default();
    for f in failed.into_iter().filter(notify_failure) {
        let at = match f.kind {
            FailureKind::Delayed => 1,
            FailureKind::Relayed => 2,
            _ => 0,
        };
        reports[at].push(f);
    }
    for report in reports {
        if report.is_empty() || msg.sender.is_empty() {
            continue;
        }
        let dsn = dsn_message(shared, &msg, &report, now);
        for f in &report {
            let mut e = base_event(EventType::Dsn, &msg, &f.address, now);
            e.stream = Some(msg.stream.clone());
            e.extra
                .insert("dsn_queue_id".into(), dsn.0.queue_id.clone().into());
            e.extra.insert("status".into(), f.status.clone().into());
            match f.kind {
                FailureKind::Delayed => {
                    e.extra.insert("action".into(), "delayed".into());
                }
                FailureKind::Relayed => {
                    e.extra.insert("action".into(), "relayed".into());
                }
                _ => {}
            }
            events.push(e);
        }
        ops.push(SpoolOp::Insert {
            message: dsn.0.clone(),
            body: dsn.1,
        });
        dsn_msgs.push(dsn.0);
    }
    if msg.is_done() {
        ops.push(SpoolOp::Remove(msg.queue_id.clone()));
    } else {
        ops.push(SpoolOp::Update(msg.clone()));
    }
    match shared.spool.commit(ops).await {
        Ok(_) => {
            shared.record(&events);
            let mut q = shared.queue();
            q.update(msg, released);
            for d in dsn_msgs {
                q.insert(d);
            }
            drop(q);
            shared.wake.notify_one();
        }
        Err(e) => {
            // Nothing was recorded: the recipients stay as they were on disk
            // and in memory, and are tried again after a pause.
            tracing::error!("spool commit after attempt failed: {e}");
            let mut q = shared.queue();
            if let Some(mut old) = q.get(&msg.queue_id).cloned() {
                for &i in released {
                    if let Some(r) = old.recipients.get_mut(i) {
                        r.next_attempt_ms = now + 30_000;
                    }
                }
                q.update(old, released);
            }
        }
    }
}

/// Forget idempotency keys older than `idempotency_retention`, now and then
/// (a quarter of the retention, between 250 ms and an hour). Runs until dropped.
pub async fn prune_idempotency_keys(shared: Arc<Shared>) {
    let retention = shared.config.relay.idempotency_retention;
    let every = (retention / 4).clamp(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(3600),
    );
    loop {
        tokio::time::sleep(every).await;
        let before_ms = now_ms() - retention.as_millis() as i64;
        match shared
            .spool
            .commit(vec![SpoolOp::PruneIdempotency { before_ms }])
            .await
        {
            Ok(r) => {
                if let Some(OpResult::Pruned(n)) = r.first()
                    && *n > 0
                {
                    tracing::info!("forgot {n} idempotency key(s) older than {retention:?}");
                }
            }
            Err(e) => tracing::warn!("pruning idempotency keys: {e}"),
        }
    }
}

/// What an operator did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminAction {
    /// Make selected recipients due now (attempt counts unchanged).
    Retry,
    /// Give up on them with a DSN.
    Bounce,
    /// Drop them silently.
    Delete,
}

/// Apply an operator action to the recipients `filter` selects (skipping those
/// in flight). Returns how many recipients were affected.
pub async fn admin(
    shared: &Shared,
    action: AdminAction,
    filter: &Filter,
) -> Result<u64, SpoolError> {
    let now = now_ms();
    let selected: Vec<QueuedMessage> = {
        let q = shared.queue();
        q.messages()
            .filter(|m| {
                (0..m.recipients.len()).any(|i| {
                    m.recipients[i].status == RcptStatus::Queued
                        && filter.matches(m, i)
                        && !q.is_in_flight(&m.queue_id, i)
                })
            })
            .cloned()
            .collect()
    };
    let mut count = 0;
    for mut msg in selected {
        let mut failed = Vec::new();
        let mut events = Vec::new();
        let mut touched = Vec::new();
        for i in 0..msg.recipients.len() {
            let in_flight = shared.queue().is_in_flight(&msg.queue_id, i);
            if msg.recipients[i].status != RcptStatus::Queued
                || !filter.matches(&msg, i)
                || in_flight
            {
                continue;
            }
            count += 1;
            touched.push(i);
            let r = &mut msg.recipients[i];
            match action {
                AdminAction::Retry => r.next_attempt_ms = now,
                AdminAction::Bounce => {
                    r.status = RcptStatus::Bounced;
                    failed.push(FailedRecipient {
                        address: r.address.clone(),
                        orcpt: r.orcpt.clone(),
                        status: "5.0.0".into(),
                        kind: FailureKind::Operator,
                        diagnostic: r.last_reply.clone(),
                        remote_mta: r.last_mx.clone(),
                    });
                }
                AdminAction::Delete => r.status = RcptStatus::Deleted,
            }
            let mut e = base_event(EventType::Admin, &msg, &msg.recipients[i].address, now);
            e.stream = Some(msg.stream.clone());
            e.extra.insert(
                "action".into(),
                serde_json::to_value(action).unwrap_or_default(),
            );
            events.push(e);
        }
        commit_and_notify(shared, msg, &[], failed, events, now).await;
    }
    Ok(count)
}
