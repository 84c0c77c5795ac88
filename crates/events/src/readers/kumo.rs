//! KumoMTA JSON log records (docs.kumomta.com `reference/log_record`, research/kumomta.md §3):
//! one JSON object per line, in zstd-compressed segments (decompression happens in
//! [`super::open_reader`]). Fields used: `type`, `id`, `sender`, `recipient` (string or
//! array), `queue` (`campaign:tenant@domain`), `site`, `size`, `response`, `peer_address`,
//! `timestamp`/`event_time`, `num_attempts`, `egress_pool`, `egress_source`,
//! `source_address`, `session_id`, `provider_name`.

use super::stamp;
use super::{LineReader, LineStatus, SkipReason, text};
use crate::{Event, EventType, Outcome};
use serde::Deserialize;
use serde_json::Value;

/// Whether a line looks like a KumoMTA log record.
pub fn looks_like(line: &[u8]) -> bool {
    line.starts_with(b"{")
        && memchr::memmem::find(line, b"\"type\"").is_some()
        && [
            &b"\"Delivery\""[..],
            b"\"TransientFailure\"",
            b"\"Reception\"",
            b"\"Bounce\"",
            b"\"Expiration\"",
        ]
        .iter()
        .any(|t| memchr::memmem::find(line, t).is_some())
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    sender: String,
    #[serde(default)]
    recipient: Value,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    response: Option<Response>,
    #[serde(default)]
    peer_address: Option<Peer>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    event_time: Option<String>,
    #[serde(default)]
    num_attempts: Option<u32>,
    #[serde(default)]
    egress_pool: Option<String>,
    #[serde(default)]
    egress_source: Option<String>,
    #[serde(default)]
    source_address: Option<SourceAddress>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    provider_name: Option<String>,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    enhanced_code: Option<Enhanced>,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct Enhanced {
    class: u8,
    subject: u16,
    detail: u16,
}

#[derive(Deserialize)]
struct Peer {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    addr: Option<String>,
}

#[derive(Deserialize)]
struct SourceAddress {
    #[serde(default)]
    address: Option<String>,
}

/// Reader for KumoMTA records; stateless (every record carries its context).
pub struct KumoReader;

/// An address that may carry a port (`10.0.0.1:25`, `[::1]:25`).
fn ip_of(s: &str) -> Option<std::net::IpAddr> {
    s.parse()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

fn event(r: Record) -> Result<Option<Event>, SkipReason> {
    let (kind, outcome) = match r.kind.as_str() {
        "Reception" => (EventType::Received, None),
        "Delivery" => (EventType::Attempt, Some(Outcome::Delivered)),
        "TransientFailure" => (EventType::Attempt, Some(Outcome::Deferred)),
        "Bounce" => (EventType::Attempt, Some(Outcome::Bounced)),
        "Expiration" => (EventType::Expired, None),
        "AdminBounce" => (EventType::Admin, Some(Outcome::Bounced)),
        _ => return Ok(None),
    };
    let time = r
        .event_time
        .as_deref()
        .and_then(|t| stamp::iso(t).map(|(t, _)| t))
        .or_else(|| match &r.timestamp {
            Some(Value::Number(n)) => n.as_f64().and_then(|f| stamp::unix(&f.to_string())),
            Some(Value::String(s)) => stamp::iso(s).map(|(t, _)| t).or_else(|| stamp::unix(s)),
            _ => None,
        })
        .ok_or(SkipReason::BadTimestamp)?;
    let mut e = Event::new(kind, time);
    e.outcome = outcome;
    e.origin = Some("kumomta".into());
    e.queue_id = r.id;
    e.sender = r.sender;
    e.recipient = match r.recipient {
        Value::String(s) => s,
        Value::Array(a) => a.first().and_then(Value::as_str).unwrap_or("").to_string(),
        _ => String::new(),
    };
    e.size = r.size;
    e.attempt = r.num_attempts;
    // `campaign:tenant@domain`; the campaign is the stream.
    if let Some((prefix, _domain)) = r.queue.rsplit_once('@') {
        let (campaign, tenant) = prefix.split_once(':').unwrap_or(("", prefix));
        if !campaign.is_empty() {
            e.stream = Some(campaign.to_string());
        }
        if !tenant.is_empty() {
            e.extra.insert("tenant".into(), tenant.into());
        }
    }
    if let Some(resp) = r.response {
        let mut reply = resp.code.map(|c| c.to_string()).unwrap_or_default();
        if let Some(x) = resp.enhanced_code {
            reply.push_str(&format!(" {}.{}.{}", x.class, x.subject, x.detail));
        }
        if !resp.content.is_empty() {
            reply.push(' ');
            reply.push_str(&resp.content);
        }
        let reply = reply.trim().to_string();
        e.reply = (!reply.is_empty()).then_some(reply);
    }
    if let Some(peer) = r.peer_address {
        e.mx_host = peer
            .name
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        e.peer_ip = peer.addr.as_deref().and_then(ip_of);
    }
    e.source_ip = r
        .source_address
        .and_then(|s| s.address)
        .as_deref()
        .and_then(ip_of);
    e.provider = r.provider_name;
    for (key, value) in [
        ("site", Some(r.site)),
        ("egress_pool", r.egress_pool),
        ("egress_source", r.egress_source),
        ("session", r.session_id),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            e.extra.insert(key.into(), v.into());
        }
    }
    Ok(Some(e))
}

impl LineReader for KumoReader {
    fn feed(&mut self, line: &[u8], out: &mut Vec<Event>) -> LineStatus {
        let s = match text(line) {
            Ok(s) => s,
            Err(r) => return LineStatus::Skipped(r),
        };
        if s.trim().is_empty() {
            return LineStatus::Ignored;
        }
        let record: Record = match serde_json::from_str(s) {
            Ok(r) => r,
            Err(_) => return LineStatus::Skipped(SkipReason::Malformed),
        };
        match event(record) {
            Ok(Some(e)) => {
                out.push(e);
                LineStatus::Used
            }
            Ok(None) => LineStatus::Ignored,
            Err(r) => LineStatus::Skipped(r),
        }
    }
}
