//! The pure receiver model: SMTP dialogue events in, replies out.
//!
//! No I/O, no wall clock, no thread-locals: every call takes `now`, the time since the
//! simulation started, and the model is deterministic given its seed and the sequence of
//! calls. The live server feeds it real elapsed time; the pacing flight simulator feeds
//! it virtual time.

use crate::budget::{IpState, TokenBucket};
use crate::profile::{Profile, Stage};
use crate::reply::{After, Reason, Reply, ReplySpec};
use crate::script::Directive;
use crate::template::{Var, push_hex16};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;
use time::OffsetDateTime;

/// Time since the start of the simulation. The model never reads a clock itself.
pub type SimTime = Duration;

/// Identifies one SMTP session inside a [`Receiver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Where a session is in the SMTP dialogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Banner sent; waiting for EHLO/HELO.
    Greeted,
    /// EHLO done; waiting for MAIL.
    Ready,
    /// MAIL accepted; RCPTs may follow.
    Mail,
    /// DATA accepted (354); the message text is being received.
    Data,
}

#[derive(Debug)]
struct Session {
    ip: IpAddr,
    listen: String,
    phase: Phase,
    /// A provider-side incident defers every RCPT of this session.
    incident: bool,
    /// Recipients accepted in the current transaction, with their directives.
    rcpts: Vec<(String, Directive)>,
}

/// The outcome of the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutcome {
    /// The reply (for `drop@`, `after` is [`After::Drop`] and the reply is never sent).
    pub reply: Reply,
    /// Recipients whose copy of the message was accepted (empty unless the reply is 2xx,
    /// or the reply is lost after acceptance).
    pub accepted: Vec<String>,
}

/// Standard protocol replies (RFC 5321 §4.2/§4.3.2 codes, RFC 3463 enhanced codes).
mod protocol {
    pub const NEED_EHLO: &str = "503 5.5.1 Error: send HELO/EHLO first";
    pub const NESTED_MAIL: &str = "503 5.5.1 Error: nested MAIL command";
    pub const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command";
    pub const NO_VALID_RCPT: &str = "554 5.5.1 Error: no valid recipients";
    pub const NOT_IN_DATA: &str = "503 5.5.1 Error: no message in progress";
    pub const UNKNOWN_SESSION: &str = "421 4.3.0 Error: no such session";
    pub const START_DATA: &str = "354 End data with <CR><LF>.<CR><LF>";
    pub const RSET_OK: &str = "250 2.0.0 Ok";
    pub const TEMPFAIL: &str = "451 4.3.0";
    pub const REJECT: &str = "550 5.1.1";
    pub const CLOSE_AT_DATA: &str = "421 4.3.2";
}

/// A simulated receiving MX (one provider, any number of listen addresses).
pub struct Receiver {
    profile: Profile,
    rng: StdRng,
    epoch_unix_nanos: i128,
    ips: HashMap<IpAddr, IpState>,
    sessions: HashMap<SessionId, Session>,
    next_session: u64,
    recipient_buckets: HashMap<String, TokenBucket>,
    tempfails_given: HashMap<String, u32>,
}

/// Values a reply template may need, gathered per reply.
struct Ctx<'a> {
    ip: IpAddr,
    listen: &'a str,
    address: &'a str,
    message_id: &'a str,
    n: u32,
}

/// 2026-01-01T00:00:00Z: the default wall time of `now = 0`, so that replies are
/// reproducible unless the caller sets a real epoch.
const DEFAULT_EPOCH_UNIX: i64 = 1_767_225_600;

impl Receiver {
    /// A receiver answering as `profile`; `seed` fixes every random choice (ids,
    /// incident and tenant-pressure draws).
    pub fn new(profile: Profile, seed: u64) -> Receiver {
        Receiver {
            profile,
            rng: StdRng::seed_from_u64(seed),
            epoch_unix_nanos: DEFAULT_EPOCH_UNIX as i128 * 1_000_000_000,
            ips: HashMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            recipient_buckets: HashMap::new(),
            tempfails_given: HashMap::new(),
        }
    }

    /// Set the UTC wall time that `now = 0` stands for (used in reply timestamps only).
    pub fn with_epoch(mut self, epoch: OffsetDateTime) -> Receiver {
        self.epoch_unix_nanos = epoch.unix_timestamp_nanos();
        self
    }

    /// The profile in use.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The profile in use, to change while running (the pacing flight simulator starts
    /// and ends tenant pressure and incidents at scenario times).
    pub fn profile_mut(&mut self) -> &mut Profile {
        &mut self.profile
    }

    /// Open sessions (for tests and stats).
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether `ip` is throttled at `now` (every attempt would be deferred).
    pub fn is_throttled(&self, now: SimTime, ip: IpAddr) -> bool {
        self.ips
            .get(&ip)
            .and_then(|s| s.throttled_until)
            .is_some_and(|until| now < until)
    }

    /// A client at `client_ip` connects to the listen address labelled `listen`.
    /// Returns the session and the banner, or the refusal (the server then closes).
    pub fn connect(
        &mut self,
        now: SimTime,
        client_ip: IpAddr,
        listen: &str,
    ) -> Result<(SessionId, Reply), Reply> {
        let limit = self.profile.limits.per_ip_connections;
        let state = self
            .ips
            .entry(client_ip)
            .or_insert_with(|| IpState::new(now));
        if limit > 0 && state.connections >= limit {
            let spec = self
                .profile
                .replies
                .connections
                .as_ref()
                .unwrap_or(&self.profile.replies.throttle);
            let ctx = Ctx::new(client_ip, listen);
            let mut reply = render(
                spec,
                Reason::Connections,
                &self.profile,
                &mut self.rng,
                self.epoch_unix_nanos,
                now,
                &ctx,
            );
            reply.after = After::Close;
            return Err(reply);
        }
        state.connections += 1;
        let incident = self.draw_incident(listen);
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                ip: client_ip,
                listen: listen.to_string(),
                phase: Phase::Greeted,
                incident,
                rcpts: Vec::new(),
            },
        );
        let banner = self.render_ok(now, id, |r| &r.banner, "");
        Ok((id, banner))
    }

    /// EHLO or HELO. The reply is the first line only; the server adds its extensions.
    pub fn ehlo(&mut self, now: SimTime, session: SessionId, _client_name: &str) -> Reply {
        let Some(s) = self.sessions.get_mut(&session) else {
            return unknown_session();
        };
        // EHLO also resets any transaction (RFC 5321 §4.1.4).
        s.phase = Phase::Ready;
        s.rcpts.clear();
        self.render_ok(now, session, |r| &r.ehlo, "")
    }

    /// STARTTLS succeeded: the client must greet again (RFC 3207 §4.2).
    pub fn starttls(&mut self, _now: SimTime, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.phase = Phase::Greeted;
            s.rcpts.clear();
        }
    }

    /// MAIL FROM:<reverse_path>.
    pub fn mail_from(&mut self, now: SimTime, session: SessionId, reverse_path: &str) -> Reply {
        let Some(s) = self.sessions.get(&session) else {
            return unknown_session();
        };
        match s.phase {
            Phase::Greeted => return Reply::fixed(503, protocol::NEED_EHLO, Reason::Protocol),
            Phase::Mail | Phase::Data => {
                return Reply::fixed(503, protocol::NESTED_MAIL, Reason::Protocol);
            }
            Phase::Ready => {}
        }
        let ip = s.ip;
        if self.profile.blocklist.contains(&ip) {
            return self.render_for(
                now,
                session,
                |r| r.blocklist.as_ref(),
                Reason::Blocklist,
                reverse_path,
                0,
            );
        }
        if self.profile.limits.stage == Stage::Mail
            && let Err(reply) = self.charge_ip(now, session, ip, reverse_path)
        {
            return reply;
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.phase = Phase::Mail;
            s.rcpts.clear();
        }
        self.render_ok(now, session, |r| &r.mail_ok, reverse_path)
    }

    /// RCPT TO:<forward_path>.
    pub fn rcpt(&mut self, now: SimTime, session: SessionId, forward_path: &str) -> Reply {
        let Some(s) = self.sessions.get(&session) else {
            return unknown_session();
        };
        match s.phase {
            Phase::Greeted => return Reply::fixed(503, protocol::NEED_EHLO, Reason::Protocol),
            Phase::Ready | Phase::Data => {
                return Reply::fixed(503, protocol::NEED_MAIL, Reason::Protocol);
            }
            Phase::Mail => {}
        }
        let (ip, incident) = (s.ip, s.incident);
        if incident {
            return self.render_for(
                now,
                session,
                |r| r.incident.as_ref(),
                Reason::Incident,
                forward_path,
                0,
            );
        }
        let directive = if self.profile.directives {
            Directive::of(forward_path)
        } else {
            Directive::None
        };
        match directive {
            Directive::Reject => {
                let text = format!(
                    "{} <{forward_path}>: Recipient address rejected (script directive 550)",
                    protocol::REJECT
                );
                return Reply::fixed(550, &text, Reason::ScriptReject);
            }
            Directive::Tempfail(times) => {
                let given = self
                    .tempfails_given
                    .entry(forward_path.to_ascii_lowercase())
                    .or_insert(0);
                if *given < times {
                    *given += 1;
                    let text = format!(
                        "{} <{forward_path}>: Temporary failure {} of {times} (script directive tempfail)",
                        protocol::TEMPFAIL,
                        *given
                    );
                    return Reply::fixed(451, &text, Reason::ScriptTempfail);
                }
            }
            _ => {}
        }
        if self.tenant_deferred(forward_path) {
            return self.render_for(
                now,
                session,
                |r| r.tenant.as_ref(),
                Reason::Tenant,
                forward_path,
                0,
            );
        }
        if !self.recipient_allows(now, forward_path) {
            return self.render_for(
                now,
                session,
                |r| r.recipient_rate.as_ref(),
                Reason::RecipientRate,
                forward_path,
                0,
            );
        }
        if self.profile.limits.stage == Stage::Rcpt
            && let Err(reply) = self.charge_ip(now, session, ip, forward_path)
        {
            return reply;
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.rcpts.push((forward_path.to_string(), directive));
        }
        self.render_ok(now, session, |r| &r.rcpt_ok, forward_path)
    }

    /// DATA: 354 when at least one recipient was accepted.
    pub fn data(&mut self, _now: SimTime, session: SessionId) -> Reply {
        let Some(s) = self.sessions.get_mut(&session) else {
            return unknown_session();
        };
        match s.phase {
            Phase::Greeted => Reply::fixed(503, protocol::NEED_EHLO, Reason::Protocol),
            Phase::Ready | Phase::Data => Reply::fixed(503, protocol::NEED_MAIL, Reason::Protocol),
            Phase::Mail if s.rcpts.is_empty() => {
                Reply::fixed(554, protocol::NO_VALID_RCPT, Reason::Protocol)
            }
            Phase::Mail => {
                s.phase = Phase::Data;
                Reply::fixed(354, protocol::START_DATA, Reason::Ok)
            }
        }
    }

    /// The end of the message text (the lone dot). `message_id` is the Message-ID
    /// header if the message has one.
    pub fn data_end(
        &mut self,
        now: SimTime,
        session: SessionId,
        message_id: Option<&str>,
    ) -> DataOutcome {
        let refused = |reply| DataOutcome {
            reply,
            accepted: Vec::new(),
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return refused(unknown_session());
        };
        if s.phase != Phase::Data {
            return refused(Reply::fixed(503, protocol::NOT_IN_DATA, Reason::Protocol));
        }
        s.phase = Phase::Ready;
        let rcpts = std::mem::take(&mut s.rcpts);
        if rcpts.iter().any(|(_, d)| *d == Directive::Drop) {
            let mut reply = Reply::fixed(451, "451 4.4.2 connection dropped", Reason::ScriptDrop);
            reply.after = After::Drop;
            return refused(reply);
        }
        if rcpts.iter().any(|(_, d)| *d == Directive::CloseAtData) {
            let text = format!(
                "{} {} Closing connection at end of DATA (script directive 421-at-data)",
                protocol::CLOSE_AT_DATA,
                self.profile.host_for(&s.listen)
            );
            let mut reply = Reply::fixed(421, &text, Reason::ScriptDataClose);
            reply.after = After::Close;
            return refused(reply);
        }
        let delay = rcpts
            .iter()
            .filter_map(|(_, d)| match d {
                Directive::Slow(t) => Some(*t),
                _ => None,
            })
            .max()
            .unwrap_or(Duration::ZERO);
        let mut reply = self.render_ok_with(now, session, |r| &r.data_ok, "", message_id);
        reply.delay = delay;
        DataOutcome {
            reply,
            accepted: rcpts.into_iter().map(|(r, _)| r).collect(),
        }
    }

    /// RSET: abandon the transaction.
    pub fn rset(&mut self, _now: SimTime, session: SessionId) -> Reply {
        let Some(s) = self.sessions.get_mut(&session) else {
            return unknown_session();
        };
        if s.phase != Phase::Greeted {
            s.phase = Phase::Ready;
        }
        s.rcpts.clear();
        Reply::fixed(250, protocol::RSET_OK, Reason::Ok)
    }

    /// The session ended (QUIT, close, drop). Always call it once per accepted connect.
    pub fn close(&mut self, _now: SimTime, session: SessionId) {
        if let Some(s) = self.sessions.remove(&session)
            && let Some(state) = self.ips.get_mut(&s.ip)
        {
            state.connections = state.connections.saturating_sub(1);
        }
    }

    /// Charge one message to `ip`'s budget, or the deferral reply.
    fn charge_ip(
        &mut self,
        now: SimTime,
        session: SessionId,
        ip: IpAddr,
        address: &str,
    ) -> Result<(), Reply> {
        let limits = &self.profile.limits;
        let reputation = self.profile.reputation.ips.contains(&ip);
        let warm = &self.profile.warmup;
        let warming = warm.all_ips || warm.ips.contains(&ip);
        let state = self.ips.entry(ip).or_insert_with(|| IpState::new(now));

        let mut outcome = Ok(());
        if let Some(until) = state.throttled_until {
            if now < until {
                // Retrying into the throttle extends it: a busy loop makes it worse.
                let extended = until + Duration::from_secs_f64(limits.retry_penalty_secs);
                let cap = now + Duration::from_secs_f64(limits.max_penalty_secs);
                state.throttled_until = Some(extended.min(cap).max(until));
                outcome = Err(Reason::ThrottleExtended);
            } else {
                state.throttled_until = None;
            }
        }
        if outcome.is_ok() {
            let mut rate = if limits.per_ip_rate > 0.0 {
                limits.per_ip_rate
            } else {
                f64::INFINITY
            };
            if reputation {
                rate *= self.profile.reputation.rate_factor;
            }
            if warming {
                let days = now.saturating_sub(state.clean_since).as_secs_f64()
                    * warm.time_compression
                    / 86_400.0;
                let warm_rate = warm.start_rate * (1.0 + warm.daily_growth).powf(days.floor());
                rate = rate.min(warm_rate);
            }
            if rate.is_finite() {
                let burst = if limits.burst > 0.0 {
                    limits.burst
                } else {
                    rate
                };
                // Never more than a minute's worth at once, never less than one message.
                let capacity = burst.min(rate).max(1.0);
                let bucket = state
                    .bucket
                    .get_or_insert_with(|| TokenBucket::full(capacity, now));
                if !bucket.take(now, rate, capacity) {
                    state.throttled_until =
                        Some(now + Duration::from_secs_f64(limits.penalty_secs));
                    if warm.reset_on_throttle {
                        state.clean_since = now;
                    }
                    outcome = Err(Reason::Throttle);
                }
            }
        }
        outcome.map_err(|reason| {
            let spec = if reputation {
                self.profile.replies.reputation.as_ref()
            } else {
                None
            };
            let spec = spec.unwrap_or(&self.profile.replies.throttle);
            let reason = if reputation && reason == Reason::Throttle {
                Reason::Reputation
            } else {
                reason
            };
            let listen = self
                .sessions
                .get(&session)
                .map(|s| s.listen.as_str())
                .unwrap_or("");
            let ctx = Ctx::new(ip, listen);
            let ctx = Ctx { address, ..ctx };
            render(
                spec,
                reason,
                &self.profile,
                &mut self.rng,
                self.epoch_unix_nanos,
                now,
                &ctx,
            )
        })
    }

    fn draw_incident(&mut self, listen: &str) -> bool {
        let inc = &self.profile.incident;
        if inc.share <= 0.0 && inc.elsewhere_share <= 0.0 {
            return false;
        }
        let host = self.profile.host_for(listen);
        let address = crate::profile::listen_address(listen);
        let on_chosen = inc.hosts.is_empty()
            || inc
                .hosts
                .iter()
                .any(|h| h == listen || h == host || h == address);
        let share = if on_chosen {
            inc.share
        } else {
            inc.elsewhere_share
        };
        self.rng.random::<f64>() < share
    }

    fn tenant_deferred(&mut self, address: &str) -> bool {
        let tp = &self.profile.tenant_pressure;
        if tp.domains.is_empty() || tp.share <= 0.0 {
            return false;
        }
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        if !tp.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return false;
        }
        tp.share >= 1.0 || self.rng.random::<f64>() < tp.share
    }

    fn recipient_allows(&mut self, now: SimTime, address: &str) -> bool {
        let rate = self.profile.limits.per_recipient_rate;
        if rate <= 0.0 {
            return true;
        }
        let capacity = rate.max(1.0);
        self.recipient_buckets
            .entry(address.to_ascii_lowercase())
            .or_insert_with(|| TokenBucket::full(capacity, now))
            .take(now, rate, capacity)
    }

    fn render_ok(
        &mut self,
        now: SimTime,
        session: SessionId,
        pick: fn(&crate::profile::Replies) -> &ReplySpec,
        address: &str,
    ) -> Reply {
        self.render_ok_with(now, session, pick, address, None)
    }

    fn render_ok_with(
        &mut self,
        now: SimTime,
        session: SessionId,
        pick: fn(&crate::profile::Replies) -> &ReplySpec,
        address: &str,
        message_id: Option<&str>,
    ) -> Reply {
        let Some(s) = self.sessions.get(&session) else {
            return unknown_session();
        };
        let ctx = Ctx {
            ip: s.ip,
            listen: &s.listen,
            address,
            message_id: message_id.unwrap_or(""),
            n: 0,
        };
        render(
            pick(&self.profile.replies),
            Reason::Ok,
            &self.profile,
            &mut self.rng,
            self.epoch_unix_nanos,
            now,
            &ctx,
        )
    }

    /// Render the profile reply chosen by `pick`, or the throttle reply when the
    /// profile does not define that one.
    fn render_for(
        &mut self,
        now: SimTime,
        session: SessionId,
        pick: fn(&crate::profile::Replies) -> Option<&ReplySpec>,
        reason: Reason,
        address: &str,
        n: u32,
    ) -> Reply {
        let (ip, listen) = match self.sessions.get(&session) {
            Some(s) => (s.ip, s.listen.as_str()),
            None => return unknown_session(),
        };
        let ctx = Ctx {
            ip,
            listen,
            address,
            message_id: "",
            n,
        };
        let replies = &self.profile.replies;
        let spec = pick(replies).unwrap_or(&replies.throttle);
        render(
            spec,
            reason,
            &self.profile,
            &mut self.rng,
            self.epoch_unix_nanos,
            now,
            &ctx,
        )
    }
}

impl<'a> Ctx<'a> {
    fn new(ip: IpAddr, listen: &'a str) -> Ctx<'a> {
        Ctx {
            ip,
            listen,
            address: "",
            message_id: "",
            n: 0,
        }
    }
}

fn unknown_session() -> Reply {
    let mut r = Reply::fixed(421, protocol::UNKNOWN_SESSION, Reason::Protocol);
    r.after = After::Close;
    r
}

/// Render a profile reply: `NNN-` on every line but the last, `NNN ` on the last.
fn render(
    spec: &ReplySpec,
    reason: Reason,
    profile: &Profile,
    rng: &mut StdRng,
    epoch_unix_nanos: i128,
    now: SimTime,
    ctx: &Ctx<'_>,
) -> Reply {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64);
    let host = profile.host_for(ctx.listen);
    let mut id: Option<u64> = None;
    let last = spec.lines.len() - 1;
    for (i, line) in spec.lines.iter().enumerate() {
        let _ = write!(text, "{}{}", spec.code, if i == last { ' ' } else { '-' });
        line.render_into(&mut text, &mut |var, out| match var {
            Var::Ip => {
                let _ = write!(out, "{}", ctx.ip);
            }
            Var::Host => out.push_str(host),
            Var::Timestamp => push_timestamp(out, epoch_unix_nanos, now),
            Var::Id => push_hex16(out, *id.get_or_insert_with(|| rng.next_u64())),
            Var::Rcpt => out.push_str(ctx.address),
            Var::MessageId => out.push_str(ctx.message_id),
            Var::N => {
                let _ = write!(out, "{}", ctx.n);
            }
        });
        if i != last {
            text.push_str("\r\n");
        }
    }
    Reply {
        code: spec.code,
        text,
        reason,
        after: spec.after(),
        delay: Duration::ZERO,
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2024-07-14T14:44:43.083Z` (Microsoft's trailer).
fn push_timestamp(out: &mut String, epoch_unix_nanos: i128, now: SimTime) {
    use std::fmt::Write as _;
    let nanos = epoch_unix_nanos + now.as_nanos() as i128;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            );
        }
        Err(_) => out.push_str("9999-12-31T23:59:59.999Z"),
    }
}
