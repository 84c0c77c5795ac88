//! Delivery status notifications (RFC 3464 multipart/report), built with mail-builder.

use crate::spool::QueuedMessage;
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// Why the recipient failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The receiver refused permanently.
    Bounced,
    /// Max age reached while deferred.
    Expired,
    /// An operator bounced it (`mxpace queue bounce`).
    Operator,
}

/// One failed recipient in a DSN.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    pub address: String,
    pub orcpt: Option<String>,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    pub kind: FailureKind,
    /// The receiver's reply, when there was one.
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
}

/// The longest diagnostic kept; DSN header lines must stay under 998 octets.
const MAX_DIAGNOSTIC: usize = 900;
/// Largest original message returned in full (RET=FULL); beyond it, headers only.
const MAX_RETURNED: usize = 1024 * 1024;

/// Build a failure DSN for `failed` recipients of `msg` (RFC 3464 §2).
pub fn build_failure_dsn(
    reporting_mta: &str,
    from: &str,
    msg: &QueuedMessage,
    failed: &[FailedRecipient],
    original: &[u8],
    now: OffsetDateTime,
) -> Vec<u8> {
    let date = |t: OffsetDateTime| t.format(&Rfc2822).unwrap_or_default();
    let arrival = OffsetDateTime::from_unix_timestamp_nanos(msg.received_ms as i128 * 1_000_000)
        .unwrap_or(now);

    let mut human = format!(
        "This is the mail system at host {reporting_mta}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\r\n"
    );
    for f in failed {
        let why = match f.kind {
            FailureKind::Bounced => "the receiving server refused it permanently",
            FailureKind::Expired => {
                "it stayed deferred (temporary failures) until the maximum queue age"
            }
            FailureKind::Operator => "an operator removed it from the queue",
        };
        human.push_str(&format!("<{}>: {why}", f.address));
        if let Some(d) = &f.diagnostic {
            human.push_str(&format!("; last reply: {}", one_line(d)));
        }
        human.push_str("\r\n");
    }

    let mut status = format!("Reporting-MTA: dns; {reporting_mta}\r\n");
    if let Some(env) = &msg.env_id {
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(env)));
    }
    status.push_str(&format!("X-Mxpace-Queue-ID: {}\r\n", msg.queue_id));
    status.push_str(&format!("Arrival-Date: {}\r\n", date(arrival)));
    for f in failed {
        status.push_str("\r\n");
        if let Some(o) = &f.orcpt {
            status.push_str(&format!("Original-Recipient: {}\r\n", one_line(o)));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.address));
        status.push_str("Action: failed\r\n");
        status.push_str(&format!("Status: {}\r\n", f.status));
        if let Some(m) = &f.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {m}\r\n"));
        }
        if let Some(d) = &f.diagnostic {
            status.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", one_line(d)));
        }
        status.push_str(&format!("Last-Attempt-Date: {}\r\n", date(now)));
        if f.kind == FailureKind::Expired {
            status.push_str(&format!("Will-Retry-Until: {}\r\n", date(now)));
        }
    }

    let returned = if msg.ret_full && original.len() <= MAX_RETURNED {
        MimePart::new("message/rfc822", original.to_vec()).transfer_encoding("8bit")
    } else {
        MimePart::new("text/rfc822-headers", headers_of(original).to_vec())
            .transfer_encoding("8bit")
    };
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new("message/delivery-status", status.into_bytes()).transfer_encoding("7bit"),
            returned,
        ],
    );
    let subject = if failed.iter().all(|f| f.kind == FailureKind::Expired) {
        "Undelivered Mail Returned to Sender (expired in queue)"
    } else {
        "Undelivered Mail Returned to Sender"
    };
    MessageBuilder::new()
        .from(("Mail Delivery System", from))
        .to(msg.sender.as_str())
        .subject(subject)
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .date(now.unix_timestamp())
        .message_id(format!("{}.dsn@{reporting_mta}", msg.queue_id))
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

/// The header block of a message (up to the first empty line).
pub fn headers_of(message: &[u8]) -> &[u8] {
    for sep in [&b"\r\n\r\n"[..], b"\n\n"] {
        if let Some(p) = memchr::memmem::find(message, sep) {
            return &message[..p + sep.len() / 2];
        }
    }
    message
}

/// Collapse a (multi-line) reply into one bounded line.
fn one_line(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_DIAGNOSTIC {
        let mut cut = MAX_DIAGNOSTIC;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The RFC 3463 status for a DSN: the enhanced code (from the verdict, else
/// read from the reply's first line) when it is of class 5, else the basic
/// code's class with `.0.0`. Expiry is always 4.4.7.
pub fn status_for(
    enhanced: Option<&str>,
    code: Option<u16>,
    reply: &str,
    kind: FailureKind,
) -> String {
    if kind == FailureKind::Expired {
        // RFC 3463 §3.5: 4.4.7 "Delivery time expired".
        return "4.4.7".into();
    }
    let found = enhanced.map(str::to_owned).or_else(|| enhanced_in(reply));
    if let Some(e) = found
        && e.starts_with('5')
    {
        return e;
    }
    match code.or_else(|| reply.get(..3).and_then(|c| c.parse().ok())) {
        Some(c) if c >= 500 => format!("{}.0.0", c / 100),
        _ => "5.0.0".into(),
    }
}

/// The enhanced status code written after the basic code on a reply's first
/// line (`550 5.1.1 …` → `5.1.1`), exactly as written.
pub fn enhanced_in(reply: &str) -> Option<String> {
    let first = reply.lines().next()?;
    let token = first.get(4..)?.split_whitespace().next()?;
    let mut parts = token.split('.');
    let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    (parts.next().is_none() && matches!(c, "2" | "4" | "5") && digits(s, 3) && digits(d, 3))
        .then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{RcptStatus, Recipient};

    #[test]
    fn dsn_is_a_multipart_report_naming_the_recipient_and_status() {
        let msg = QueuedMessage {
            queue_id: "Q1".into(),
            message_id: "<m@x>".into(),
            sender: "app@origin.test".into(),
            received_ms: 0,
            stream: "bulk".into(),
            size: 10,
            env_id: Some("ENV1".into()),
            ret_full: false,
            idempotency_key: None,
            expires_ms: 0,
            recipients: vec![Recipient {
                address: "u@x.test".into(),
                orcpt: None,
                notify: 0,
                status: RcptStatus::Bounced,
                attempts: 1,
                next_attempt_ms: 0,
                last_reply: None,
                last_mx: None,
                last_provider: None,
                last_source: None,
            }],
        };
        let failed = [FailedRecipient {
            address: "u@x.test".into(),
            orcpt: Some("rfc822;U@x.test".into()),
            status: status_for(
                None,
                Some(550),
                "550 5.1.1 no such user",
                FailureKind::Bounced,
            ),
            kind: FailureKind::Bounced,
            diagnostic: Some("550 5.1.1 no such user".into()),
            remote_mta: Some("mx.x.test".into()),
        }];
        let out = build_failure_dsn(
            "relay.test",
            "MAILER-DAEMON@relay.test",
            &msg,
            &failed,
            b"Subject: hi\r\n\r\nbody",
            OffsetDateTime::UNIX_EPOCH,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("multipart/report"), "{text}");
        assert!(
            text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status")
        );
        assert!(text.contains("Final-Recipient: rfc822; u@x.test"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Original-Envelope-Id: ENV1"));
        assert!(text.contains("Subject: hi"));
        assert!(
            !text.contains("body\r\n--"),
            "RET=HDRS returns headers only"
        );
    }
}
