//! Exim main log (Exim spec, "Log files"; research/mta-designs.md §4.1):
//!
//! ```text
//! 2026-11-23 10:00:00 [+0000] [[pid]] MSGID <= sender H=... S=size id=message-id
//! 2026-11-23 10:00:01 MSGID => rcpt R=router T=transport H=host [ip] I=[local-ip]:port C="250 ..."
//! 2026-11-23 10:00:01 MSGID == rcpt R=router T=transport defer (-44) H=host [ip]: SMTP error from remote mail server after RCPT TO:<rcpt>: 451 ...
//! 2026-11-23 10:00:01 MSGID ** rcpt R=router T=transport H=host [ip]: SMTP error from remote mail server after RCPT TO:<rcpt>: 550 ...
//! 2026-11-23 10:00:01 MSGID Completed
//! ```
//!
//! The sending IP comes from `I=[ip]` (log_selector `+outgoing_interface`) or the user's
//! transport map.

use super::stamp;
use super::{LineReader, LineStatus, ReaderConfig, SkipReason, host_and_ip, text};
use crate::{Event, EventType, Outcome};
use std::collections::HashMap;

/// Whether a line looks like an Exim main log line with a message ID and flag.
pub fn looks_like(line: &[u8]) -> bool {
    let Ok(s) = text(line) else { return false };
    let Some((_, rest)) = stamp::iso(s) else {
        return false;
    };
    let rest = skip_pid(rest);
    let Some((id, flag)) = rest.split_once(' ') else {
        return false;
    };
    is_message_id(id)
        && ["<= ", "=> ", "== ", "** ", "-> ", "Completed"]
            .iter()
            .any(|f| flag.starts_with(f))
}

/// `1abcDE-000000-00` (classic) or `1abcDE-0000000000-0000` (4.97+ long form).
fn is_message_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts[0].len() == 6
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn skip_pid(s: &str) -> &str {
    if s.starts_with('[')
        && let Some((_, rest)) = s.split_once("] ")
    {
        return rest;
    }
    s
}

#[derive(Debug, Default)]
struct Open {
    sender: String,
    message_id: String,
    size: Option<u64>,
}

/// Exim reader; keeps sender and message-id per open message ID until `Completed`.
pub struct EximReader {
    config: ReaderConfig,
    open: HashMap<String, Open>,
}

impl EximReader {
    /// A reader with these settings.
    pub fn new(config: ReaderConfig) -> Self {
        EximReader {
            config,
            open: HashMap::new(),
        }
    }

    fn line(&mut self, s: &str, out: &mut Vec<Event>) -> Result<LineStatus, SkipReason> {
        let (time, rest) = stamp::iso(s).ok_or(SkipReason::Unrecognised)?;
        let rest = skip_pid(rest);
        let Some((id, body)) = rest.split_once(' ') else {
            return Ok(LineStatus::Ignored);
        };
        if !is_message_id(id) {
            return Ok(LineStatus::Ignored);
        }
        if body.starts_with("Completed") {
            self.open.remove(id);
            return Ok(LineStatus::Used);
        }
        let Some((flag, rest)) = body.split_once(' ') else {
            return Ok(LineStatus::Ignored);
        };
        let address = rest.split(' ').next().unwrap_or("");
        if flag == "<=" {
            let open = self.open.entry(id.to_string()).or_default();
            open.sender = if address == "<>" {
                String::new()
            } else {
                address.to_string()
            };
            open.size = tag(rest, "S=").and_then(|v| v.parse().ok());
            open.message_id = tag(rest, "id=").unwrap_or("").to_string();
            let mut e = Event::new(EventType::Received, time);
            e.queue_id = id.to_string();
            e.sender.clone_from(&open.sender);
            e.message_id.clone_from(&open.message_id);
            e.size = open.size;
            e.origin = Some("exim".into());
            out.push(e);
            return Ok(LineStatus::Used);
        }
        let outcome = match flag {
            "=>" | "->" => Outcome::Delivered,
            "**" => Outcome::Bounced,
            "==" => Outcome::Deferred,
            _ => return Ok(LineStatus::Ignored),
        };
        if address.is_empty() {
            return Err(SkipReason::Malformed);
        }
        let mut e = Event::new(EventType::Attempt, time);
        e.queue_id = id.to_string();
        e.recipient = address.trim_matches(|c| c == '<' || c == '>').to_string();
        e.origin = Some("exim".into());
        e.outcome = Some(outcome);
        if let Some(open) = self.open.get(id) {
            e.sender.clone_from(&open.sender);
            e.message_id.clone_from(&open.message_id);
            e.size = open.size;
        }
        let transport = tag(rest, "T=");
        if let Some(i) = rest.find(" H=") {
            let h = &rest[i + 3..];
            let end = h.find(']').map_or(h.len(), |e| e + 1);
            let (host, ip) = host_and_ip(&h[..end]);
            e.mx_host = host;
            e.peer_ip = ip;
        }
        e.source_ip = tag(rest, "I=")
            .and_then(|v| {
                v.trim_start_matches('[')
                    .split(']')
                    .next()
                    .and_then(|ip| ip.parse().ok())
            })
            .or_else(|| transport.and_then(|t| self.config.source_map.get(t).copied()));
        if let Some(t) = transport {
            e.extra.insert("transport".into(), t.into());
        }
        match outcome {
            Outcome::Delivered => {
                if let Some(i) = rest.find(" C=\"") {
                    let c = &rest[i + 4..];
                    e.reply = Some(c.split('"').next().unwrap_or(c).to_string());
                }
            }
            _ => {
                let message = match rest.find("SMTP error from remote mail server after ") {
                    Some(i) => rest[i..].split_once(": ").map_or("", |(_, m)| m),
                    None => rest.split_once(": ").map_or("", |(_, m)| m),
                };
                if outcome == Outcome::Deferred {
                    if rest.contains("retry time not reached") {
                        // Exim skipped the host without trying: not an attempt on the wire.
                        e.extra.insert("held".into(), true.into());
                    } else if rest.contains("defer (-43)")
                        || rest.contains("defer (-18)")
                        || rest.contains("defer (111)")
                        || message.starts_with("Connection ")
                    {
                        e.outcome = Some(Outcome::ConnectionFailed);
                    }
                }
                e.reply = (!message.is_empty()).then(|| message.trim().to_string());
            }
        }
        out.push(e);
        Ok(LineStatus::Used)
    }
}

/// Value of ` NAME=value` (up to the next space).
fn tag<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = s[from..].find(name) {
        let at = from + i;
        if at == 0 || s.as_bytes()[at - 1] == b' ' {
            let v = &s[at + name.len()..];
            return Some(v.split(' ').next().unwrap_or(v));
        }
        from = at + name.len();
    }
    None
}

impl LineReader for EximReader {
    fn feed(&mut self, line: &[u8], out: &mut Vec<Event>) -> LineStatus {
        match text(line).and_then(|s| self.line(s, out)) {
            Ok(status) => status,
            Err(reason) => LineStatus::Skipped(reason),
        }
    }

    fn open_ids(&self) -> usize {
        self.open.len()
    }
}
