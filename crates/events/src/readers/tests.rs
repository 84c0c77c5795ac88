//! Reader tests on fixtures written from the documented formats.

use super::*;
use crate::{EventType, Outcome};
use time::macros::datetime;

fn read(format: Format, config: &ReaderConfig, log: &str) -> (Vec<Event>, ReadStats) {
    let mut reader = reader_for(format, config);
    let mut events = Vec::new();
    let mut stats = ReadStats::default();
    for line in log.as_bytes().split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let before = events.len();
        let status = reader.feed(line, &mut events);
        stats.count(status, line.len(), events.len() - before);
    }
    (events, stats)
}

fn attempts(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| e.kind == EventType::Attempt)
        .collect()
}

const POSTFIX: &str = "\
Nov 23 10:00:00 mx1 postfix/pickup[900]: 3F2A81C0D2: uid=1000 from=<app>
Nov 23 10:00:00 mx1 postfix/cleanup[901]: 3F2A81C0D2: message-id=<m1@example.net>
Nov 23 10:00:00 mx1 postfix/qmgr[902]: 3F2A81C0D2: from=<news@example.net>, size=10240, nrcpt=2 (queue active)
Nov 23 10:00:00 mx1 dovecot: imap-login: Login: user=<x>, method=PLAIN
Nov 23 10:00:01 mx1 postfix-198.51.100.7/smtp[903]: 3F2A81C0D2: to=<a@contoso.com>, relay=contoso-com.mail.protection.outlook.com[52.101.1.2]:25, delay=1.2, delays=0.1/0/0.6/0.5, tls=may, dsn=4.7.500, status=deferred (host contoso-com.mail.protection.outlook.com[52.101.1.2] said: 451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2026-11-23T10:00:01.123Z 08DE0A1B2C3D4E5F] (in reply to RCPT TO command))
Nov 23 10:00:01 mx1 postfix-198.51.100.7/smtp[903]: 3F2A81C0D2: to=<b@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.26]:25, delay=1.1, delays=0.1/0/0.5/0.5, dsn=2.0.0, status=sent (250 2.0.0 OK 1732356001 x1-20020a05.2 - gsmtp)
Nov 23 10:05:01 mx1 postfix-198.51.100.7/smtp[910]: 3F2A81C0D2: to=<a@contoso.com>, relay=contoso-com.mail.protection.outlook.com[52.101.1.2]:25, delay=301, delays=300/0/0.6/0.5, dsn=2.6.0, status=sent (250 2.6.0 <m1@example.net> [InternalId=1] Queued mail for delivery)
Nov 23 10:05:01 mx1 postfix/qmgr[902]: 3F2A81C0D2: removed
Nov 23 10:06:00 mx1 postfix/smtp[911]: 9B1C2D3E4F: to=<c@fabrikam.com>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to fabrikam-com.mail.protection.outlook.com[52.101.9.9]:25: Connection timed out)
";

#[test]
fn postfix_correlates_by_queue_id_and_reads_every_field() {
    let (events, stats) = read(
        Format::Postfix,
        &ReaderConfig {
            year: Some(2026),
            ..Default::default()
        },
        POSTFIX,
    );
    let received: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventType::Received)
        .collect();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].sender, "news@example.net");
    assert_eq!(received[0].size, Some(10240));

    let a = attempts(&events);
    assert_eq!(a.len(), 4);
    let first = a[0];
    assert_eq!(first.time, datetime!(2026-11-23 10:00:01 UTC));
    assert_eq!(first.queue_id, "3F2A81C0D2");
    assert_eq!(first.message_id, "m1@example.net");
    assert_eq!(first.sender, "news@example.net");
    assert_eq!(first.recipient, "a@contoso.com");
    assert_eq!(first.outcome, Some(Outcome::Deferred));
    assert_eq!(first.source_ip, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(
        first.mx_host.as_deref(),
        Some("contoso-com.mail.protection.outlook.com")
    );
    assert_eq!(first.peer_ip, Some("52.101.1.2".parse().unwrap()));
    assert_eq!(first.extra["tls"], "may");
    assert_eq!(first.extra["session"], "903");
    let reply = first.reply.as_deref().unwrap();
    assert!(reply.starts_with("451 4.7.500 Server busy."), "{reply}");
    assert!(reply.ends_with("08DE0A1B2C3D4E5F]"), "{reply}");
    assert_eq!(a[1].outcome, Some(Outcome::Delivered));
    assert_eq!(a[2].outcome, Some(Outcome::Delivered));
    // Unknown queue ID (its qmgr line is in an older file): still an attempt, no sender.
    assert_eq!(a[3].outcome, Some(Outcome::ConnectionFailed));
    assert_eq!(a[3].sender, "");
    assert_eq!(a[3].extra["sender_unknown"], true);
    assert!(!a[0].extra.contains_key("sender_unknown"));
    assert_eq!(a[3].source_ip, None);

    // pickup and dovecot lines are the log's, not ours: ignored, not skipped.
    assert_eq!(stats.skipped_total(), 0);
    assert_eq!(stats.ignored, 2);
}

#[test]
fn postfix_rfc3339_stamps_and_user_source_map() {
    let log = "2026-11-23T10:00:01.250+01:00 mx1 postfix-out2/smtp[903]: 4Qz8Lb1Xyz9abc: to=<a@example.org>, relay=mx.example.org[203.0.113.5]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 ok)\n";
    let mut config = ReaderConfig::default();
    config
        .source_map
        .insert("postfix-out2".into(), "192.0.2.2".parse().unwrap());
    let (events, _) = read(Format::Postfix, &config, log);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].time, datetime!(2026-11-23 09:00:01.25 UTC));
    assert_eq!(events[0].source_ip, Some("192.0.2.2".parse().unwrap()));
}

/// A mapping may name `syslog_name/daemon`, the syslog name, or the daemon; the full
/// form wins, also for names too long for the stack buffer it is put together in.
#[test]
fn postfix_source_map_by_service_and_transport() {
    let long = format!("postfix-{}", "x".repeat(130));
    let line = |name: &str, daemon: &str, qid: &str| {
        format!(
            "2026-11-23T10:00:01Z mx1 {name}/{daemon}[903]: {qid}: to=<a@example.org>, relay=mx.example.org[203.0.113.5]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 ok)\n"
        )
    };
    let log = [
        line("postfix-out3", "smtp", "AAAAA11111"),
        line("postfix-out3", "relay", "BBBBB22222"),
        line(&long, "smtp", "CCCCC33333"),
        line("postfix-in", "lmtp", "DDDDD44444"),
    ]
    .concat();
    let mut config = ReaderConfig::default();
    for (key, ip) in [
        ("postfix-out3/smtp".to_string(), "192.0.2.3"),
        ("postfix-out3".to_string(), "192.0.2.33"),
        (format!("{long}/smtp"), "192.0.2.4"),
        (long.clone(), "192.0.2.44"),
        ("lmtp".to_string(), "192.0.2.5"),
    ] {
        config.source_map.insert(key, ip.parse().unwrap());
    }
    let (events, _) = read(Format::Postfix, &config, &log);
    let ips: Vec<String> = events
        .iter()
        .map(|e| e.source_ip.map(|ip| ip.to_string()).unwrap_or_default())
        .collect();
    assert_eq!(ips, ["192.0.2.3", "192.0.2.33", "192.0.2.4", "192.0.2.5"]);
}

#[test]
fn postfix_expiry_and_operator_deletion_name_the_deferred_recipients() {
    let log = "\
Nov 23 10:00:00 mx1 postfix/qmgr[2]: AAAAA11111: from=<s@example.net>, size=10, nrcpt=1 (queue active)
Nov 23 10:00:01 mx1 postfix/smtp[3]: AAAAA11111: to=<x@contoso.com>, relay=contoso-com.mail.protection.outlook.com[52.101.1.2]:25, delay=1, delays=0/0/0.5/0.5, dsn=4.7.500, status=deferred (host h[52.101.1.2] said: 451 4.7.500 Server busy. (in reply to RCPT TO command))
Nov 23 10:00:09 mx1 postfix/postsuper[4]: AAAAA11111: removed
Nov 23 10:00:00 mx1 postfix/qmgr[2]: BBBBB22222: from=<s@example.net>, size=10, nrcpt=1 (queue active)
Nov 23 10:00:01 mx1 postfix/smtp[3]: BBBBB22222: to=<y@contoso.com>, relay=h[52.101.1.2]:25, delay=1, delays=0/0/0.5/0.5, dsn=4.7.500, status=deferred (host h[52.101.1.2] said: 451 4.7.500 Server busy. (in reply to RCPT TO command))
Nov 28 10:00:00 mx1 postfix/qmgr[2]: BBBBB22222: from=<s@example.net>, status=expired, returned to sender
Nov 28 10:00:00 mx1 postfix/bounce[5]: BBBBB22222: sender non-delivery notification: CCCCC33333
";
    let (events, stats) = read(
        Format::Postfix,
        &ReaderConfig {
            year: Some(2026),
            ..Default::default()
        },
        log,
    );
    let admin: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventType::Admin)
        .collect();
    assert_eq!(admin.len(), 1);
    assert_eq!(admin[0].recipient, "x@contoso.com");
    let expired: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventType::Expired)
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].recipient, "y@contoso.com");
    assert_eq!(
        events.iter().filter(|e| e.kind == EventType::Dsn).count(),
        1
    );
    assert_eq!(stats.skipped_total(), 0);
}

#[test]
fn postfix_bad_input_is_counted_not_fatal() {
    let log = "\
Nov 23 10:00:01 mx1 postfix/smtp[3]: AAAAA11111: to=<x@contoso.com>, relay=h[52.101.1.2]:25, delay=1, del
\u{0}\u{1}\u{2}garbage\u{7f}
this is not syslog at all
Nov 23 10:00:01 mx1 postfix/smtp[3]: AAAAA11111: to=<x@contoso.com>, relay=h[52.101.1.2]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 ok)
";
    let mut bytes = log.as_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, b'x', b'\n']);
    let mut reader = reader_for(Format::Postfix, &ReaderConfig::default());
    let mut events = Vec::new();
    let mut stats = ReadStats::default();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let before = events.len();
        let status = reader.feed(line, &mut events);
        stats.count(status, line.len(), events.len() - before);
    }
    assert_eq!(events.len(), 1);
    assert_eq!(stats.skipped[&SkipReason::Malformed], 1);
    assert_eq!(stats.skipped[&SkipReason::Binary], 2);
    assert_eq!(stats.skipped[&SkipReason::Unrecognised], 1);
}

const EXIM: &str = "\
2026-11-23 10:00:00 1vXaBc-000Abc-1x <= news@example.net H=app.example.net [192.0.2.10] P=esmtp S=2048 id=m2@example.net
2026-11-23 10:00:02 1vXaBc-000Abc-1x == a@contoso.com R=dnslookup T=remote_smtp defer (-44) H=contoso-com.mail.protection.outlook.com [52.101.1.2]: SMTP error from remote mail server after RCPT TO:<a@contoso.com>: 451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714)
2026-11-23 10:00:02 1vXaBc-000Abc-1x => b@gmail.com R=dnslookup T=remote_smtp H=gmail-smtp-in.l.google.com [142.250.1.26] I=[198.51.100.7]:41234 X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes C=\"250 2.0.0 OK 1732356001 gsmtp\"
2026-11-23 10:00:03 1vXaBc-000Abc-1x ** c@example.org R=dnslookup T=remote_smtp H=mx.example.org [203.0.113.5]: SMTP error from remote mail server after RCPT TO:<c@example.org>: 550 5.1.1 No such user
2026-11-23 10:30:00 1vXaBc-000Abc-1x == a@contoso.com R=dnslookup T=remote_smtp defer (-54): retry time not reached for any host
2026-11-23 10:30:00 Start queue run: pid=1234
";

#[test]
fn exim_main_log() {
    let mut config = ReaderConfig::default();
    config
        .source_map
        .insert("remote_smtp".into(), "198.51.100.7".parse().unwrap());
    let (events, stats) = read(Format::Exim, &config, EXIM);
    assert_eq!(events[0].kind, EventType::Received);
    assert_eq!(events[0].size, Some(2048));
    let a = attempts(&events);
    assert_eq!(a.len(), 4);
    assert_eq!(a[0].outcome, Some(Outcome::Deferred));
    assert_eq!(a[0].sender, "news@example.net");
    assert_eq!(a[0].message_id, "m2@example.net");
    assert_eq!(
        a[0].mx_host.as_deref(),
        Some("contoso-com.mail.protection.outlook.com")
    );
    assert_eq!(a[0].peer_ip, Some("52.101.1.2".parse().unwrap()));
    assert_eq!(a[0].source_ip, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(
        a[0].reply.as_deref(),
        Some("451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714)")
    );
    assert_eq!(a[1].outcome, Some(Outcome::Delivered));
    assert_eq!(a[1].reply.as_deref(), Some("250 2.0.0 OK 1732356001 gsmtp"));
    assert_eq!(a[2].outcome, Some(Outcome::Bounced));
    assert_eq!(a[2].reply.as_deref(), Some("550 5.1.1 No such user"));
    assert_eq!(a[3].extra["held"], true);
    assert_eq!(stats.ignored, 1);
    assert_eq!(stats.skipped_total(), 0);
}

const PMTA: &str = "\
type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,srcType,srcMta,dlvType,dlvSourceIp,dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,vmtaPool
t,2026-11-23 10:00:01+0000,2026-11-23 10:00:00+0000,news@example.net,a@contoso.com,,delayed,4.7.500 (server busy),\"smtp;451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714), see docs\",contoso-com.mail.protection.outlook.com (52.101.1.2),,smtp,app.example.net (192.0.2.10),smtp,198.51.100.7,52.101.1.2,\"PIPELINING,8BITMIME\",10240,vmta1,spring-sale,env-1,contoso.com/vmta1,pool1
d,2026-11-23 10:00:02+0000,2026-11-23 10:00:00+0000,news@example.net,b@gmail.com,,relayed,2.0.0 (success),smtp;250 2.0.0 OK,gmail-smtp-in.l.google.com (142.250.1.26),,smtp,app,smtp,198.51.100.8,142.250.1.26,,10240,vmta2,spring-sale,env-2,gmail.com/vmta2,pool1
x,2026-11-23 10:00:02+0000
";

#[test]
fn powermta_columns_come_from_the_header() {
    let (events, stats) = read(Format::PowerMta, &ReaderConfig::default(), PMTA);
    assert_eq!(events.len(), 2);
    let t = &events[0];
    assert_eq!(t.outcome, Some(Outcome::Deferred));
    assert_eq!(t.time, datetime!(2026-11-23 10:00:01 UTC));
    assert_eq!(t.sender, "news@example.net");
    assert_eq!(t.recipient, "a@contoso.com");
    assert_eq!(t.source_ip, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(
        t.mx_host.as_deref(),
        Some("contoso-com.mail.protection.outlook.com")
    );
    assert_eq!(t.stream.as_deref(), Some("spring-sale"));
    assert_eq!(
        t.reply.as_deref(),
        Some(
            "451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714), see docs"
        )
    );
    assert_eq!(events[1].outcome, Some(Outcome::Delivered));
    assert_eq!(stats.ignored, 1);

    // A reordered header still maps by name.
    let reordered = "type,rcpt,timeLogged,dlvSourceIp\nd,z@example.org,1795600000,192.0.2.9\n";
    let (events, _) = read(Format::PowerMta, &ReaderConfig::default(), reordered);
    assert_eq!(events[0].recipient, "z@example.org");
    assert_eq!(events[0].source_ip, Some("192.0.2.9".parse().unwrap()));
}

const KUMO: &str = r#"{"type":"Reception","id":"k1","sender":"news@example.net","recipient":"a@contoso.com","queue":"spring:acme@contoso.com","site":"","size":4096,"timestamp":1795600000}
{"type":"TransientFailure","id":"k1","sender":"news@example.net","recipient":["a@contoso.com"],"queue":"spring:acme@contoso.com","site":"ip1->contoso-com.mail.protection.outlook.com","size":4096,"response":{"code":451,"enhanced_code":{"class":4,"subject":7,"detail":500},"content":"Server busy. Please try again later from [198.51.100.7]. (S77714)","command":"RCPT TO:<a@contoso.com>\r\n"},"peer_address":{"name":"contoso-com.mail.protection.outlook.com.","addr":"52.101.1.2"},"timestamp":1795600060,"num_attempts":1,"egress_pool":"pool1","egress_source":"ip1","source_address":{"address":"198.51.100.7:41000","protocol":"tcp"},"session_id":"s-1"}
{"type":"Feedback","id":"k9","timestamp":1795600061}
{"type":"Delivery","id":"k1",
"#;

#[test]
fn kumomta_records() {
    let (events, stats) = read(Format::Kumo, &ReaderConfig::default(), KUMO);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventType::Received);
    let t = &events[1];
    assert_eq!(t.outcome, Some(Outcome::Deferred));
    assert_eq!(t.recipient, "a@contoso.com");
    assert_eq!(
        t.reply.as_deref(),
        Some("451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714)")
    );
    assert_eq!(t.source_ip, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(
        t.mx_host.as_deref(),
        Some("contoso-com.mail.protection.outlook.com")
    );
    assert_eq!(t.stream.as_deref(), Some("spring"));
    assert_eq!(t.extra["tenant"], "acme");
    assert_eq!(t.time.unix_timestamp(), 1_795_600_060);
    assert_eq!(stats.ignored, 1);
    assert_eq!(stats.skipped[&SkipReason::Malformed], 1);
}

#[test]
fn native_events_round_trip() {
    let mut e = Event::new(EventType::Attempt, datetime!(2026-11-23 10:00:00 UTC));
    e.recipient = "a@contoso.com".into();
    e.outcome = Some(Outcome::Deferred);
    let line = serde_json::to_string(&e).unwrap();
    let (events, _) = read(Format::Mxpace, &ReaderConfig::default(), &line);
    assert_eq!(events[0].recipient, "a@contoso.com");
    assert_eq!(events[0].outcome, Some(Outcome::Deferred));
    assert_eq!(detect(line.as_bytes()), Some(Format::Mxpace));
}

#[test]
fn detection_picks_each_format_and_refuses_garbage() {
    assert_eq!(detect(POSTFIX.as_bytes()), Some(Format::Postfix));
    assert_eq!(detect(EXIM.as_bytes()), Some(Format::Exim));
    assert_eq!(detect(PMTA.as_bytes()), Some(Format::PowerMta));
    assert_eq!(detect(KUMO.as_bytes()), Some(Format::Kumo));
    assert_eq!(detect(b"hello world\n\x00\x01\x02\nanother line\n"), None);
    assert_eq!(detect(b""), None);
}

#[test]
fn a_block_is_clean_text_only_if_each_of_its_lines_would_be() {
    use super::clean_text;
    assert_eq!(clean_text(b"a\tb\nc d\n"), Some("a\tb\nc d\n"));
    assert_eq!(clean_text("caf\u{e9}\n".as_bytes()), Some("caf\u{e9}\n"));
    assert_eq!(clean_text(b""), Some(""));
    for dirty in [
        &b"a\r\nb\n"[..],
        b"a\nb\x00c\n",
        b"a\x1bb",
        b"\xff\xfe\n",
        b"caf\xc3",
    ] {
        assert_eq!(clean_text(dirty), None, "{dirty:?}");
    }
}

/// The vectorised check finds a control byte wherever it is in a block (every position
/// of blocks long enough for the AVX2 path, with tails of every length), and passes tabs
/// and line ends.
#[test]
fn control_bytes_are_found_at_every_position_of_long_blocks() {
    use super::clean_text;
    for len in [255, 256, 257, 300, 511, 1000] {
        let pattern = b"ab c\t\n:";
        let mut block: Vec<u8> = (0..len).map(|i| pattern[i % pattern.len()]).collect();
        assert!(clean_text(&block).is_some(), "{len}");
        for at in 0..len {
            for bad in [0x00, 0x0d, 0x1f, 0x0b] {
                let kept = std::mem::replace(&mut block[at], bad);
                assert_eq!(clean_text(&block), None, "{len} {at} {bad}");
                block[at] = 0xff;
                assert_eq!(clean_text(&block), None, "{len} {at} 0xff");
                block[at] = kept;
            }
        }
        assert!(clean_text(&block).is_some(), "{len}");
    }
}
