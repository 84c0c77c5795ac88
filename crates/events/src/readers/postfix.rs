//! Postfix via syslog. Format (Postfix `src/global/log_adhoc.c`, see
//! research/mta-designs.md §1.3):
//!
//! ```text
//! <stamp> <host> postfix[-<ip>]/smtp[PID]: QID: to=<rcpt>[, orig_to=<a>], relay=HOST[IP]:PORT[, conn_use=N],
//!     delay=D, delays=a/b/c/d[, tls=...], dsn=X.Y.Z, status=WORD (REASON)
//! <stamp> <host> postfix/qmgr[PID]: QID: from=<sender>, size=N, nrcpt=M (queue active)
//! <stamp> <host> postfix/qmgr[PID]: QID: from=<sender>, status=expired, returned to sender
//! <stamp> <host> postfix/cleanup[PID]: QID: message-id=<id>
//! <stamp> <host> postfix/qmgr[PID]: QID: removed
//! ```
//!
//! Parsing is split in two so that it can run on several cores: [`parse_line`] is
//! stateless (any line, any thread), [`Correlator::apply`] is the cheap ordered step that
//! joins lines by queue ID and gives year-less stamps their year.

use super::stamp::{self, Stamp, YearTracker};
use super::{LineReader, LineStatus, ReaderConfig, SkipReason, host_and_ip, text};
use crate::{Event, EventType, Outcome};
use std::collections::HashMap;
use std::net::IpAddr;
use time::OffsetDateTime;

/// Whether a line looks like Postfix syslog (for format detection).
pub fn looks_like(line: &[u8]) -> bool {
    matches!(parse_line(line, &ReaderConfig::default()), Ok(Some(_)))
}

/// One Postfix line, parsed but not yet joined with the others of its queue ID.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub stamp: Stamp,
    pub record: Record,
}

/// The lines that matter for delivery analysis.
#[derive(Debug, Clone)]
pub enum Record {
    /// cleanup: `message-id=<...>`.
    MessageId { qid: String, message_id: String },
    /// qmgr: `from=<...>, size=N, nrcpt=M`.
    From {
        qid: String,
        sender: String,
        size: Option<u64>,
    },
    /// qmgr: `from=<...>, status=expired, returned to sender`.
    Expired { qid: String, sender: String },
    /// qmgr (end of life) or postsuper (operator or application deleted it).
    Removed { qid: String, by_operator: bool },
    /// bounce: `sender non-delivery notification: NEWQID`.
    Notice { qid: String, dsn_qid: String },
    /// smtp/lmtp/local/virtual/error: one recipient's attempt; time, sender and
    /// message-id are filled in by the correlator.
    Delivery(Box<Event>),
}

/// Syslog header of a line: stamp, host, program tag and the message.
struct Header<'a> {
    stamp: Stamp,
    syslog_name: &'a str,
    daemon: &'a str,
    pid: &'a str,
    msg: &'a str,
}

fn header(s: &str) -> Result<Header<'_>, SkipReason> {
    let (stamp, rest) = if s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        let (t, rest) = stamp::iso(s).ok_or(SkipReason::BadTimestamp)?;
        (Stamp::Full(t), rest)
    } else {
        stamp::classic(s).ok_or(SkipReason::Unrecognised)?
    };
    let (_host, rest) = rest.split_once(' ').ok_or(SkipReason::Unrecognised)?;
    let (tag, msg) = rest.split_once(": ").ok_or(SkipReason::Unrecognised)?;
    let (program, pid) = match tag.find('[') {
        Some(i) => (&tag[..i], tag[i + 1..].trim_end_matches(']')),
        None => (tag, ""),
    };
    // Other daemons (`dovecot`, `opendkim`) have no `/daemon` part; the caller ignores them.
    let (syslog_name, daemon) = program.rsplit_once('/').unwrap_or(("", program));
    Ok(Header {
        stamp,
        syslog_name,
        daemon,
        pid,
        msg,
    })
}

/// A Postfix queue ID: short hex (`3F2A81C0D2`) or long (`4Qz8Lb1Xyz9abc`) form.
fn is_queue_id(s: &str) -> bool {
    (5..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Parse one line without any state. `Ok(None)`: a line of the log that carries
/// nothing we need (another daemon, `connect from`, warnings).
pub fn parse_line(line: &[u8], config: &ReaderConfig) -> Result<Option<Parsed>, SkipReason> {
    let s = text(line)?;
    let h = header(s)?;
    if !h.syslog_name.starts_with("postfix") && !config.source_map.contains_key(h.syslog_name) {
        return Ok(None);
    }
    let Some((qid, body)) = h.msg.split_once(": ") else {
        return Ok(None);
    };
    if !is_queue_id(qid) {
        return Ok(None);
    }
    let record = if let Some(rest) = body.strip_prefix("to=<") {
        Record::Delivery(Box::new(delivery(&h, qid, rest, config)?))
    } else if let Some(rest) = body.strip_prefix("from=<") {
        let (sender, rest) = rest.split_once('>').ok_or(SkipReason::Malformed)?;
        if rest.contains("status=expired") {
            Record::Expired {
                qid: qid.to_string(),
                sender: sender.to_string(),
            }
        } else if h.daemon == "qmgr" {
            let size = field(rest, "size=").and_then(|v| v.parse().ok());
            Record::From {
                qid: qid.to_string(),
                sender: sender.to_string(),
                size,
            }
        } else {
            return Ok(None);
        }
    } else if let Some(rest) = body.strip_prefix("message-id=") {
        Record::MessageId {
            qid: qid.to_string(),
            message_id: rest
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string(),
        }
    } else if body == "removed" {
        Record::Removed {
            qid: qid.to_string(),
            by_operator: h.daemon == "postsuper",
        }
    } else if let Some(rest) = body
        .strip_prefix("sender non-delivery notification: ")
        .or_else(|| body.strip_prefix("sender delivery status notification: "))
    {
        Record::Notice {
            qid: qid.to_string(),
            dsn_qid: rest.trim().to_string(),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(Parsed {
        stamp: h.stamp,
        record,
    }))
}

/// Value of `name` in a `, `-separated field list.
fn field<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let i = s.find(name)?;
    let v = &s[i + name.len()..];
    Some(v.split([',', ' ']).next().unwrap_or(v))
}

fn delivery(
    h: &Header<'_>,
    qid: &str,
    rest: &str,
    config: &ReaderConfig,
) -> Result<Event, SkipReason> {
    let (recipient, mut rest) = rest.split_once('>').ok_or(SkipReason::Malformed)?;
    let mut event = Event::new(EventType::Attempt, OffsetDateTime::UNIX_EPOCH);
    event.queue_id = qid.to_string();
    event.recipient = recipient.to_string();
    event.origin = Some("postfix".into());
    event.source_ip = source_ip(h, config);
    let mut status = None;
    let mut reason = "";
    // Fields are `, name=value` until `status=WORD (REASON)`, whose REASON may hold commas.
    while let Some(next) = rest.strip_prefix(", ") {
        let (name, value_and_rest) = next.split_once('=').ok_or(SkipReason::Malformed)?;
        if name == "status" {
            let (word, tail) = value_and_rest
                .split_once(' ')
                .unwrap_or((value_and_rest, ""));
            status = Some(word);
            reason = tail.trim().strip_prefix('(').unwrap_or(tail.trim());
            reason = reason.strip_suffix(')').unwrap_or(reason);
            break;
        }
        let end = value_and_rest.find(", ").unwrap_or(value_and_rest.len());
        let value = &value_and_rest[..end];
        match name {
            "relay" => {
                // HOST[IP]:PORT, or `none`, `local`, `private/dovecot-lmtp`.
                let host_ip = value.rsplit_once("]:").map_or(value, |(hi, _)| hi);
                let (host, ip) = host_and_ip(host_ip);
                event.mx_host = host;
                event.peer_ip = ip;
            }
            "tls" => {
                event.extra.insert("tls".into(), value.into());
            }
            "dsn" => {
                event.extra.insert("dsn".into(), value.into());
            }
            _ => {}
        }
        rest = &value_and_rest[end..];
    }
    let status = status.ok_or(SkipReason::Malformed)?;
    event.outcome = Some(match status {
        "sent" | "delivered" => Outcome::Delivered,
        "bounced" => Outcome::Bounced,
        "deferred" => {
            if reason.starts_with("connect to ")
                || reason.starts_with("lost connection ")
                || reason.starts_with("conversation with ")
                || reason.starts_with("Host or domain name not found")
            {
                Outcome::ConnectionFailed
            } else {
                Outcome::Deferred
            }
        }
        _ => return Err(SkipReason::Malformed),
    });
    if reason.starts_with("delivery temporarily suspended") {
        // The queue manager held it without trying: not an attempt on the wire.
        event.extra.insert("held".into(), true.into());
    }
    event.reply = (!reason.is_empty()).then(|| reply_of(reason).to_string());
    if !h.pid.is_empty() {
        event.extra.insert("session".into(), h.pid.into());
    }
    Ok(event)
}

/// The server's reply inside a Postfix reason, e.g.
/// `host H[IP] said: 451 4.7.500 ... (in reply to RCPT TO command)` → `451 4.7.500 ...`.
fn reply_of(reason: &str) -> &str {
    let start = reason
        .find(" said: ")
        .map(|i| i + 7)
        .or_else(|| reason.find(" refused to talk to me: ").map(|i| i + 24))
        .unwrap_or(0);
    let body = &reason[start..];
    match body.rfind(" (in reply to ") {
        Some(end) if start > 0 => &body[..end],
        _ => body,
    }
}

/// The sending IP: `postfix-<ip>/smtp`, else the user's map by full tag, syslog name or daemon.
fn source_ip(h: &Header<'_>, config: &ReaderConfig) -> Option<IpAddr> {
    if let Some(ip) = h
        .syslog_name
        .strip_prefix("postfix-")
        .and_then(|s| s.parse().ok())
    {
        return Some(ip);
    }
    if config.source_map.is_empty() {
        return None;
    }
    let full = format!("{}/{}", h.syslog_name, h.daemon);
    config
        .source_map
        .get(&full)
        .or_else(|| config.source_map.get(h.syslog_name))
        .or_else(|| config.source_map.get(h.daemon))
        .copied()
}

/// What is known about a queue ID still in the queue.
#[derive(Debug, Default)]
struct Open {
    sender: String,
    message_id: String,
    size: Option<u64>,
    announced: bool,
    /// Recipients whose last attempt was deferred (for expiry and deletion records).
    deferred: Vec<String>,
}

/// Joins parsed lines by queue ID. State is only the queue IDs still open.
#[derive(Debug)]
pub struct Correlator {
    open: HashMap<String, Open>,
    years: YearTracker,
}

impl Correlator {
    /// A correlator for a log in `config.year` (ending in `config.end_month`, if known).
    pub fn new(config: &ReaderConfig) -> Self {
        let year = config.year.unwrap_or(1970);
        let years = match config.end_month.and_then(|m| time::Month::try_from(m).ok()) {
            Some(month) => YearTracker::ending(year, month),
            None => YearTracker::new(year),
        };
        Correlator {
            open: HashMap::new(),
            years,
        }
    }

    /// Number of open queue IDs.
    pub fn open_ids(&self) -> usize {
        self.open.len()
    }

    /// Join one parsed line with what is known; push the resulting events.
    pub fn apply(&mut self, parsed: Parsed, out: &mut Vec<Event>) -> LineStatus {
        let Some(time) = self.years.resolve(parsed.stamp) else {
            return LineStatus::Skipped(SkipReason::BadTimestamp);
        };
        match parsed.record {
            Record::MessageId { qid, message_id } => {
                self.open.entry(qid).or_default().message_id = message_id;
            }
            Record::From { qid, sender, size } => {
                let open = self.open.entry(qid.clone()).or_default();
                open.sender = sender;
                open.size = size.or(open.size);
                if !open.announced {
                    open.announced = true;
                    let mut e = Event::new(EventType::Received, time);
                    e.queue_id = qid;
                    e.message_id = open.message_id.clone();
                    e.sender = open.sender.clone();
                    e.size = open.size;
                    e.origin = Some("postfix".into());
                    out.push(e);
                }
            }
            Record::Delivery(mut event) => {
                event.time = time;
                if let Some(open) = self.open.get_mut(&event.queue_id) {
                    event.sender.clone_from(&open.sender);
                    event.message_id.clone_from(&open.message_id);
                    event.size = open.size;
                    let pending = open.deferred.iter().position(|r| *r == event.recipient);
                    match (event.outcome, pending) {
                        (Some(Outcome::Deferred | Outcome::ConnectionFailed), None) => {
                            open.deferred.push(event.recipient.clone())
                        }
                        (Some(Outcome::Delivered | Outcome::Bounced), Some(i)) => {
                            open.deferred.swap_remove(i);
                        }
                        _ => {}
                    }
                }
                out.push(*event);
            }
            Record::Expired { qid, sender } => {
                let open = self.open.remove(&qid).unwrap_or_default();
                self.final_records(EventType::Expired, time, &qid, sender, open, out);
            }
            Record::Removed { qid, by_operator } => {
                if let Some(open) = self.open.remove(&qid)
                    && by_operator
                {
                    let sender = open.sender.clone();
                    self.final_records(EventType::Admin, time, &qid, sender, open, out);
                }
            }
            Record::Notice { qid, dsn_qid } => {
                let mut e = Event::new(EventType::Dsn, time);
                e.queue_id = qid;
                e.origin = Some("postfix".into());
                e.extra.insert("dsn_queue_id".into(), dsn_qid.into());
                out.push(e);
            }
        }
        LineStatus::Used
    }

    /// One record per recipient still deferred when the message left the queue.
    fn final_records(
        &self,
        kind: EventType,
        time: OffsetDateTime,
        qid: &str,
        sender: String,
        open: Open,
        out: &mut Vec<Event>,
    ) {
        let recipients = if open.deferred.is_empty() {
            vec![String::new()]
        } else {
            open.deferred
        };
        for recipient in recipients {
            let mut e = Event::new(kind, time);
            e.queue_id = qid.to_string();
            e.sender.clone_from(&sender);
            e.message_id.clone_from(&open.message_id);
            e.recipient = recipient;
            e.origin = Some("postfix".into());
            if kind == EventType::Admin {
                e.outcome = Some(Outcome::Bounced);
                e.extra.insert("action".into(), "deleted".into());
            }
            out.push(e);
        }
    }
}

/// Stateful Postfix reader: [`parse_line`] then [`Correlator::apply`].
pub struct PostfixReader {
    config: ReaderConfig,
    correlator: Correlator,
}

impl PostfixReader {
    /// A reader with these settings.
    pub fn new(config: ReaderConfig) -> Self {
        PostfixReader {
            correlator: Correlator::new(&config),
            config,
        }
    }
}

impl LineReader for PostfixReader {
    fn feed(&mut self, line: &[u8], out: &mut Vec<Event>) -> LineStatus {
        match parse_line(line, &self.config) {
            Ok(Some(parsed)) => self.correlator.apply(parsed, out),
            Ok(None) => LineStatus::Ignored,
            Err(reason) => LineStatus::Skipped(reason),
        }
    }

    fn open_ids(&self) -> usize {
        self.correlator.open_ids()
    }
}
