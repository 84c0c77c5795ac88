//! The verdict: the fixed JSON shape scripts rely on (`mxpace explain --json`).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What the sender should do with the recipient(s) the reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// 2xx/3xx: accepted (or continue).
    Deliver,
    /// Keep queued and retry later.
    #[default]
    Retry,
    /// Permanent failure: return a DSN to the sender.
    Bounce,
}

/// What kind of problem the reply reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Throttling,
    Reputation,
    Blocklist,
    Authentication,
    Dns,
    Policy,
    Recipient,
    MailboxFull,
    Content,
    Tls,
    Capacity,
    Connection,
    Protocol,
    #[default]
    Other,
}

/// Whom the problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    Recipient,
    /// The recipient domain or tenant.
    Domain,
    SendingIp,
    SenderDomain,
    Message,
    #[default]
    Session,
}

/// How the pacing of (this egress IP × this provider) should react.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Throttle {
    #[default]
    None,
    SlowDown,
    /// Pause this source × provider for a while.
    Pause,
    /// This source must not send to this provider until fixed or delisted.
    StopSource,
}

/// The SMTP stage a reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Connect,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    EndOfData,
}

/// The classification of one reply. Field names are a public contract.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// Basic reply code (e.g. 451); `None` when the input is not an SMTP reply.
    pub code: Option<u16>,
    /// Enhanced status code exactly as written, e.g. "4.7.500".
    pub enhanced: Option<String>,
    /// Whether the enhanced code's class agrees with the basic code (None without one).
    pub enhanced_agrees: Option<bool>,
    pub stage: Option<Stage>,
    pub action: Action,
    pub category: Category,
    pub scope: Scope,
    /// `microsoft`, `google`, `yahoo`, … or `unknown`.
    pub provider: String,
    pub throttle: Throttle,
    /// Provider tokens such as `S77714`, `[TSS04]`, `RL000010`.
    pub tokens: Vec<String>,
    /// IP addresses named in the text.
    pub ips: Vec<IpAddr>,
    /// Receiving host named in the reply (Microsoft's trailing block), if any.
    pub host: Option<String>,
    /// The receiving host's timestamp (UTC), if any.
    pub host_time: Option<String>,
    pub urls: Vec<String>,
    /// Plain-English meaning and what to do.
    pub advice: String,
    /// Which rule matched.
    pub rule: String,
    /// True when only RFC 3463 / the basic code decided.
    pub fallback: bool,
    /// True when the input is not recognisable as an SMTP reply (best-effort verdict).
    pub not_a_reply: bool,
    /// The reply text as parsed (lines joined with a single space).
    pub text: String,
}
