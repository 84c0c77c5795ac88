//! Event records, one JSON object per line.

use mxpace_reply::Verdict;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use time::OffsetDateTime;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    /// A message (one record per recipient) was accepted into the queue.
    Received,
    /// A delivery attempt to one recipient ended.
    Attempt,
    /// A recipient reached max age and was given up.
    Expired,
    /// A delivery status notification was generated.
    Dsn,
    /// A pacing path changed its limits or state.
    Pacing,
    /// An operator action on the queue (retry, bounce, delete).
    Admin,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Delivered,
    Deferred,
    Bounced,
    ConnectionFailed,
}

/// One state change. Optional fields are omitted from JSON when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    /// RFC 3339, UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(default)]
    pub queue_id: String,
    #[serde(default)]
    pub message_id: String,
    /// Envelope sender ("" for the null sender).
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Full reply text as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Size of the message in bytes (on `received`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Where this record came from when read from a foreign log (`postfix`, `exim`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Anything else a writer or reader wants to keep (e.g. campaign, job id, tls, pacing limits).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    /// A new event of `kind` at `time` with every optional field empty.
    pub fn new(kind: EventType, time: OffsetDateTime) -> Self {
        Event {
            kind,
            time,
            queue_id: String::new(),
            message_id: String::new(),
            sender: String::new(),
            recipient: String::new(),
            outcome: None,
            attempt: None,
            stream: None,
            source_ip: None,
            ehlo: None,
            mx_host: None,
            peer_ip: None,
            provider: None,
            reply: None,
            verdict: None,
            size: None,
            origin: None,
            extra: serde_json::Map::new(),
        }
    }
}
