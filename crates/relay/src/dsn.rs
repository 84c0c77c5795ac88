//! Delivery status notifications (RFC 3464 multipart/report), built with mail-builder.

use crate::spool::QueuedMessage;
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use mxpace_reply::Verdict;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// Why the recipient is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Still deferred and still being retried: a delay report (`Action: delayed`),
    /// sent once when the message has waited `delay_warning`.
    Delayed,
    /// Delivered (NOTIFY=SUCCESS) to a next hop that does not speak DSN, so no further
    /// notice will come: a success report (`Action: relayed`, RFC 3464 §2.3.3).
    Relayed,
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

/// Build a DSN for the `failed` (or, all of kind [`FailureKind::Delayed`], delayed)
/// recipients of `msg` (RFC 3464 §2).
pub fn build_dsn(
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

    let delayed = failed.iter().all(|f| f.kind == FailureKind::Delayed);
    let relayed = failed.iter().all(|f| f.kind == FailureKind::Relayed);
    let retry_until = OffsetDateTime::from_unix_timestamp_nanos(msg.expires_ms as i128 * 1_000_000)
        .unwrap_or(now);
    let mut human = if relayed {
        format!(
            "This is the mail system at host {reporting_mta}.\r\n\r\n\
             Your message was delivered to the mail servers of the recipients below.\r\n\
             Those servers do not send delivery notices, so this is the last notice\r\n\
             you will get about them.\r\n\r\n"
        )
    } else if delayed {
        format!(
            "This is the mail system at host {reporting_mta}.\r\n\r\n\
             Your message has not been delivered yet to the recipients below: their\r\n\
             receiving servers answered with temporary failures. It stays queued and\r\n\
             is retried until {}.\r\nYou do not need to send it again.\r\n\r\n",
            date(retry_until)
        )
    } else {
        format!(
            "This is the mail system at host {reporting_mta}.\r\n\r\n\
             Your message could not be delivered to one or more recipients.\r\n\r\n"
        )
    };
    for f in failed {
        let why = match f.kind {
            FailureKind::Delayed => "delivery is delayed (temporary failures so far)",
            FailureKind::Relayed => "delivered to the recipient's mail server",
            FailureKind::Bounced => "the receiving server refused it permanently",
            FailureKind::Expired => {
                "it stayed deferred (temporary failures) until the maximum queue age"
            }
            FailureKind::Operator => "an operator removed it from the queue",
        };
        human.push_str(&format!("<{}>: {why}", f.address));
        if let Some(d) = &f.diagnostic {
            let label = if f.kind == FailureKind::Relayed {
                "reply"
            } else {
                "last reply"
            };
            human.push_str(&format!("; {label}: {}", one_line(d)));
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
            // RFC 3464 §2.3.2 wants `type; address`; ingress keeps ORCPT decoded
            // without its type (smtp-proto accepts only rfc822).
            let o = if o.contains(';') {
                one_line(o)
            } else {
                format!("rfc822; {}", one_line(o))
            };
            status.push_str(&format!("Original-Recipient: {o}\r\n"));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.address));
        let action = match f.kind {
            FailureKind::Delayed => "delayed",
            FailureKind::Relayed => "relayed",
            _ => "failed",
        };
        status.push_str(&format!("Action: {action}\r\n"));
        status.push_str(&format!("Status: {}\r\n", f.status));
        if let Some(m) = &f.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {m}\r\n"));
        }
        if let Some(d) = &f.diagnostic {
            status.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", one_line(d)));
        }
        status.push_str(&format!("Last-Attempt-Date: {}\r\n", date(now)));
        match f.kind {
            FailureKind::Expired => {
                status.push_str(&format!("Will-Retry-Until: {}\r\n", date(now)));
            }
            FailureKind::Delayed => {
                status.push_str(&format!("Will-Retry-Until: {}\r\n", date(retry_until)));
            }
            _ => {}
        }
    }

    // Delay and success reports return the headers only (the message went, or is
    // still going, where it was sent).
    let returned = if msg.ret_full && !delayed && !relayed && original.len() <= MAX_RETURNED {
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
    let subject = if relayed {
        "Successful Mail Delivery Report"
    } else if delayed {
        "Delayed Mail (still being retried)"
    } else if failed.iter().all(|f| f.kind == FailureKind::Expired) {
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
        .message_id(if relayed {
            format!("{}.relayed@{reporting_mta}", msg.queue_id)
        } else if delayed {
            format!("{}.delay@{reporting_mta}", msg.queue_id)
        } else {
            format!("{}.dsn@{reporting_mta}", msg.queue_id)
        })
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

/// The RFC 3463 status for a DSN: the classifier's enhanced code when it is
/// of class 5, else the basic code's class with `.0.0`. Expiry is always 4.4.7; a
/// delay carries the deferral's own 4.x.x code (4.0.0 when it had none), a relay the
/// acceptance's 2.x.x (2.0.0).
pub fn status_for(verdict: Option<&Verdict>, kind: FailureKind) -> String {
    if kind == FailureKind::Expired {
        // RFC 3463 §3.5: 4.4.7 "Delivery time expired".
        return "4.4.7".into();
    }
    if kind == FailureKind::Relayed {
        return verdict
            .and_then(|v| v.enhanced.as_deref())
            .filter(|e| e.starts_with('2'))
            .unwrap_or("2.0.0")
            .to_owned();
    }
    if kind == FailureKind::Delayed {
        return verdict
            .and_then(|v| v.enhanced.as_deref())
            .filter(|e| e.starts_with('4'))
            .unwrap_or("4.0.0")
            .to_owned();
    }
    if let Some(e) = verdict.and_then(|v| v.enhanced.as_deref())
        && e.starts_with('5')
    {
        return e.to_owned();
    }
    match verdict.and_then(|v| v.code) {
        Some(c) if c >= 500 => format!("{}.0.0", c / 100),
        _ => "5.0.0".into(),
    }
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
                status: RcptStatus::Bounced,
                attempts: 1,
                ..Recipient::queued("u@x.test".into(), None, 0, 0)
            }],
        };
        let failed = [FailedRecipient {
            address: "u@x.test".into(),
            orcpt: Some("U@x.test".into()),
            status: status_for(
                Some(&mxpace_reply::explain("550 5.1.1 no such user", None)),
                FailureKind::Bounced,
            ),
            kind: FailureKind::Bounced,
            diagnostic: Some("550 5.1.1 no such user".into()),
            remote_mta: Some("mx.x.test".into()),
        }];
        let out = build_dsn(
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
        assert!(
            text.contains("Original-Recipient: rfc822; U@x.test"),
            "{text}"
        );
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Original-Envelope-Id: ENV1"));
        assert!(text.contains("Subject: hi"));
        assert!(
            !text.contains("body\r\n--"),
            "RET=HDRS returns headers only"
        );
    }

    #[test]
    fn dsn_status_comes_from_the_classifier() {
        let status =
            |reply: &str, kind| status_for(Some(&mxpace_reply::explain(reply, None)), kind);
        assert_eq!(
            status("550 5.7.1 Service unavailable", FailureKind::Bounced),
            "5.7.1"
        );
        assert_eq!(
            status("554 Transaction failed", FailureKind::Bounced),
            "5.0.0"
        );
        assert_eq!(status("552 message too big", FailureKind::Bounced), "5.0.0");
        assert_eq!(
            status("451 4.7.500 Server busy", FailureKind::Expired),
            "4.4.7"
        );
        assert_eq!(status_for(None, FailureKind::Operator), "5.0.0");
    }

    #[test]
    fn a_delay_report_says_delayed_until_when_and_returns_headers_only() {
        let day = 86_400_000;
        let msg = QueuedMessage {
            queue_id: "Q2".into(),
            message_id: "<m2@x>".into(),
            sender: "app@origin.test".into(),
            received_ms: 0,
            stream: "transactional".into(),
            size: 10,
            env_id: None,
            // Even with RET=FULL: the message is still on its way.
            ret_full: true,
            idempotency_key: None,
            expires_ms: 3 * day,
            recipients: Vec::new(),
        };
        let reply = "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)";
        let delayed = [FailedRecipient {
            address: "u@contoso.test".into(),
            orcpt: None,
            status: status_for(
                Some(&mxpace_reply::explain(reply, None)),
                FailureKind::Delayed,
            ),
            kind: FailureKind::Delayed,
            diagnostic: Some(reply.into()),
            remote_mta: Some("contoso-test.mail.protection.outlook.com".into()),
        }];
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(4);
        let out = build_dsn(
            "relay.test",
            "MAILER-DAEMON@relay.test",
            &msg,
            &delayed,
            b"Subject: order 42\r\n\r\nsecret body",
            now,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Action: delayed\r\n"), "{text}");
        assert!(!text.contains("Action: failed"));
        assert!(text.contains("Status: 4.7.500\r\n"), "{text}");
        assert!(
            text.contains("Will-Retry-Until: Sun, 04 Jan 1970 00:00:00 +0000"),
            "three days after arrival: {text}"
        );
        assert!(text.contains("Subject: Delayed Mail (still being retried)"));
        assert!(text.contains("You do not need to send it again."), "{text}");
        assert!(text.contains("Subject: order 42") && !text.contains("secret body"));
        assert!(text.contains("Q2.delay@relay.test"));
    }

    #[test]
    fn a_delay_without_an_enhanced_code_is_4_0_0() {
        let v = mxpace_reply::explain("421 try later", None);
        assert_eq!(status_for(Some(&v), FailureKind::Delayed), "4.0.0");
        assert_eq!(status_for(None, FailureKind::Delayed), "4.0.0");
    }

    #[test]
    fn a_success_report_says_relayed_with_the_acceptance_and_returns_headers_only() {
        let msg = QueuedMessage {
            queue_id: "Q3".into(),
            message_id: "<m3@x>".into(),
            sender: "app@origin.test".into(),
            received_ms: 0,
            stream: "transactional".into(),
            size: 10,
            env_id: Some("ORDER-42".into()),
            ret_full: true,
            idempotency_key: None,
            expires_ms: 0,
            recipients: Vec::new(),
        };
        let reply = "250 2.6.0 <m3@x> Queued mail for delivery";
        let relayed = [FailedRecipient {
            address: "u@contoso.test".into(),
            orcpt: None,
            status: status_for(
                Some(&mxpace_reply::explain(reply, None)),
                FailureKind::Relayed,
            ),
            kind: FailureKind::Relayed,
            diagnostic: Some(reply.into()),
            remote_mta: Some("contoso-test.mail.protection.outlook.com".into()),
        }];
        let out = build_dsn(
            "relay.test",
            "MAILER-DAEMON@relay.test",
            &msg,
            &relayed,
            b"Subject: order 42\r\n\r\nsecret body",
            OffsetDateTime::UNIX_EPOCH,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Action: relayed\r\n"), "{text}");
        assert!(text.contains("Status: 2.6.0\r\n"), "{text}");
        assert!(text.contains("Original-Envelope-Id: ORDER-42"));
        assert!(!text.contains("Will-Retry-Until"));
        assert!(text.contains("Subject: Successful Mail Delivery Report"));
        assert!(text.contains("Subject: order 42") && !text.contains("secret body"));
        assert_eq!(status_for(None, FailureKind::Relayed), "2.0.0");
    }
}
