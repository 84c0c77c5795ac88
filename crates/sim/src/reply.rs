//! Replies the receiver model gives: wire text, what the server does next, and a
//! machine-readable reason for statistics.

use crate::template::Template;
use serde::Deserialize;
use std::time::Duration;

/// Why the model answered as it did. `as_str` is the key used in the ledger and in
/// `mxpace sim stats` (`deferred` by reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A positive reply (2xx/3xx).
    Ok,
    /// The per-IP message budget is spent (Microsoft 4.7.500 S77714 and equivalents).
    Throttle,
    /// An attempt made while already throttled; it extended the penalty.
    ThrottleExtended,
    /// Too many concurrent connections from this IP (Microsoft 4.7.652).
    Connections,
    /// IP-reputation rate limit (Microsoft 4.7.650).
    Reputation,
    /// The IP is on the receiver's block list (Microsoft 5.7.1 S3150).
    Blocklist,
    /// The recipient's organisation (domain) is under pressure and defers everyone.
    Tenant,
    /// A provider-side incident defers a share of sessions whoever sends.
    Incident,
    /// Per-recipient receive rate (Gmail 4.2.1).
    RecipientRate,
    /// A `tempfail+N@` script directive.
    ScriptTempfail,
    /// A `550@` script directive.
    ScriptReject,
    /// A `421-at-data@` script directive.
    ScriptDataClose,
    /// A `drop@` script directive: the connection is cut during DATA.
    ScriptDrop,
    /// A command out of order, unknown or malformed.
    Protocol,
}

impl Reason {
    /// Stable lower-case name used in the ledger and statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::Throttle => "throttle",
            Reason::ThrottleExtended => "throttle_extended",
            Reason::Connections => "connections",
            Reason::Reputation => "reputation",
            Reason::Blocklist => "blocklist",
            Reason::Tenant => "tenant",
            Reason::Incident => "incident",
            Reason::RecipientRate => "recipient_rate",
            Reason::ScriptTempfail => "script_tempfail",
            Reason::ScriptReject => "script_reject",
            Reason::ScriptDataClose => "script_data_close",
            Reason::ScriptDrop => "script_drop",
            Reason::Protocol => "protocol",
        }
    }
}

/// What the server does after sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Keep reading commands.
    Continue,
    /// Close the connection after sending the reply (421 and friends).
    Close,
    /// Cut the connection without sending the reply at all (connection loss).
    Drop,
}

/// One reply of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Basic status code (e.g. 451).
    pub code: u16,
    /// Wire text without the final CRLF; lines of a multi-line reply are joined by
    /// CRLF and carry `NNN-` / `NNN ` prefixes already.
    pub text: String,
    /// Machine-readable reason.
    pub reason: Reason,
    /// What the server does next.
    pub after: After,
    /// How long the server waits before answering (`slow@` directive); zero normally.
    pub delay: Duration,
}

impl Reply {
    /// A one-line reply from a fixed text that already starts with the code.
    pub(crate) fn fixed(code: u16, text: &str, reason: Reason) -> Reply {
        Reply {
            code,
            text: text.to_string(),
            reason,
            after: After::Continue,
            delay: Duration::ZERO,
        }
    }

    /// Whether this is a positive (2xx or 3xx) reply.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Whether this is a transient failure (4xx).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The text as one string with line breaks as `\n` (handy in tests).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split("\r\n")
    }
}

/// A reply as written in a profile: code, one or more template lines (each line
/// without the code; multi-line replies get `NNN-` prefixes when rendered) and
/// whether the receiver closes the connection after it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplySpec {
    /// Basic status code.
    pub code: u16,
    /// Template lines (placeholders: ip, host, timestamp, id, rcpt, message_id, n).
    pub lines: Vec<Template>,
    /// Close the connection after this reply (a 421 always closes).
    #[serde(default)]
    pub close: bool,
}

impl ReplySpec {
    /// Build a spec from code and lines (tests and built-in fallbacks).
    pub fn new(code: u16, lines: &[&str]) -> Result<ReplySpec, crate::template::TemplateError> {
        Ok(ReplySpec {
            code,
            lines: lines
                .iter()
                .map(|l| Template::parse(l))
                .collect::<Result<_, _>>()?,
            close: code == 421,
        })
    }

    pub(crate) fn after(&self) -> After {
        if self.close || self.code == 421 {
            After::Close
        } else {
            After::Continue
        }
    }
}
