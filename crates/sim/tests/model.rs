//! Behaviour of the pure receiver model, in virtual time.

use mxpace_sim::{After, Profile, Reason, Receiver, Reply, SessionId};
use std::net::IpAddr;
use std::time::Duration;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Microsoft with a small budget: 60/min (one per second), burst 2.
fn small_microsoft() -> Profile {
    let mut p = Profile::builtin("microsoft").unwrap();
    p.limits.per_ip_rate = 60.0;
    p.limits.burst = 2.0;
    p.limits.penalty_secs = 10.0;
    p.limits.retry_penalty_secs = 5.0;
    p.limits.per_ip_connections = 2;
    p
}

fn open(mx: &mut Receiver, now: Duration, client: &str, listen: &str) -> SessionId {
    let (s, banner) = mx.connect(now, ip(client), listen).expect("connect");
    assert_eq!(banner.code, 220);
    assert_eq!(mx.ehlo(now, s, "client.test").code, 250);
    assert_eq!(mx.mail_from(now, s, "a@sender.test").code, 250);
    s
}

/// Check the shape `[<host> <RFC 3339 UTC ms> <16 hex>]` of a Microsoft trailer.
fn assert_trailer(text: &str, host: &str) {
    let open = text.rfind('[').unwrap();
    let inner = text[open + 1..].strip_suffix(']').unwrap();
    let parts: Vec<&str> = inner.split(' ').collect();
    assert_eq!(parts.len(), 3, "{text}");
    assert_eq!(parts[0], host);
    let ts = parts[1];
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(parts[2].len(), 16);
    assert!(
        parts[2]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    );
}

#[test]
fn over_budget_is_451_s77714_naming_the_client_ip() {
    let mut mx = Receiver::new(small_microsoft(), 1);
    let t = Duration::ZERO;
    let s = open(&mut mx, t, "127.0.0.2", "127.0.0.1:25");
    assert_eq!(
        mx.rcpt(t, s, "b1@contoso.test").text,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(mx.rcpt(t, s, "b2@contoso.test").code, 250);
    let r = mx.rcpt(t, s, "b3@contoso.test");
    assert_eq!(r.code, 451);
    assert_eq!(r.reason, Reason::Throttle);
    assert_eq!(r.after, After::Continue);
    let prefix = "451 4.7.500 Server busy. Please try again later from [127.0.0.2]. (S77714) [";
    assert!(r.text.starts_with(prefix), "{}", r.text);
    assert_trailer(&r.text, "BL6PEPF0001AB50.namprd04.prod.outlook.com");
    // Timestamp is the epoch (2026-01-01) plus `now`.
    assert!(r.text.contains(" 2026-01-01T00:00:00.000Z "), "{}", r.text);
    // The two accepted recipients get the message.
    assert_eq!(mx.data(t, s).code, 354);
    let out = mx.data_end(t, s, Some("<m1@sender.test>"));
    assert_eq!(out.accepted, vec!["b1@contoso.test", "b2@contoso.test"]);
    assert!(
        out.reply
            .text
            .starts_with("250 2.6.0 <m1@sender.test> [InternalId=")
    );
}

#[test]
fn the_budget_is_per_source_ip_across_listen_addresses() {
    let mut mx = Receiver::new(small_microsoft(), 1);
    let t = Duration::ZERO;
    let a = open(&mut mx, t, "127.0.0.2", "127.0.0.10:25");
    let b = open(&mut mx, t, "127.0.0.2", "127.0.0.11:25");
    assert_eq!(mx.rcpt(t, a, "x@tenant-a.test").code, 250);
    assert_eq!(mx.rcpt(t, b, "y@tenant-b.test").code, 250);
    // Third message from the same IP, on either tenant's MX: over budget.
    assert_eq!(mx.rcpt(t, b, "z@tenant-b.test").code, 451);
    // Another source IP has its own budget.
    let c = open(&mut mx, t, "127.0.0.3", "127.0.0.10:25");
    assert_eq!(mx.rcpt(t, c, "x@tenant-a.test").code, 250);
}

#[test]
fn budget_refills_after_the_penalty() {
    let mut p = small_microsoft();
    p.limits.penalty_secs = 0.0;
    let mut mx = Receiver::new(p, 1);
    let s = open(&mut mx, secs(0.0), "127.0.0.2", "l");
    assert_eq!(mx.rcpt(secs(0.0), s, "a@x.test").code, 250);
    assert_eq!(mx.rcpt(secs(0.0), s, "b@x.test").code, 250);
    assert_eq!(mx.rcpt(secs(0.0), s, "c@x.test").code, 451);
    assert_eq!(mx.rcpt(secs(0.5), s, "c@x.test").code, 451);
    // One token per second at 60/min.
    assert_eq!(mx.rcpt(secs(1.6), s, "c@x.test").code, 250);
    assert_eq!(mx.rcpt(secs(1.6), s, "d@x.test").code, 451);
}

#[test]
fn hammering_while_throttled_extends_the_penalty() {
    let mut mx = Receiver::new(small_microsoft(), 1);
    let t0 = secs(0.0);
    let polite = open(&mut mx, t0, "127.0.0.2", "l");
    let hammer = open(&mut mx, t0, "127.0.0.3", "l");
    for s in [polite, hammer] {
        mx.rcpt(t0, s, "a@x.test");
        mx.rcpt(t0, s, "b@x.test");
        assert_eq!(mx.rcpt(t0, s, "c@x.test").reason, Reason::Throttle);
    }
    // The hammerer retries every second for 9 s: each retry adds 5 s.
    for i in 1..10 {
        let r = mx.rcpt(secs(i as f64), hammer, "c@x.test");
        assert_eq!(r.reason, Reason::ThrottleExtended);
        assert_eq!(r.code, 451);
    }
    // The polite sender waited out the 10 s penalty and is accepted again.
    assert_eq!(mx.rcpt(secs(10.5), polite, "c@x.test").code, 250);
    // The hammerer is still throttled long after: 10 + 9 × 5 = 55 s.
    assert!(mx.is_throttled(secs(54.0), ip("127.0.0.3")));
    assert!(!mx.is_throttled(secs(55.5), ip("127.0.0.3")));
}

#[test]
fn the_penalty_never_exceeds_its_cap() {
    let mut p = small_microsoft();
    p.limits.max_penalty_secs = 20.0;
    p.limits.retry_penalty_secs = 100.0;
    let mut mx = Receiver::new(p, 1);
    let s = open(&mut mx, secs(0.0), "127.0.0.2", "l");
    for _ in 0..3 {
        mx.rcpt(secs(0.0), s, "a@x.test");
    }
    for i in 1..5 {
        mx.rcpt(secs(i as f64), s, "a@x.test");
    }
    assert!(mx.is_throttled(secs(23.0), ip("127.0.0.2")));
    assert!(!mx.is_throttled(secs(24.1), ip("127.0.0.2")));
}

#[test]
fn too_many_connections_is_421_4_7_652_until_one_closes() {
    let mut mx = Receiver::new(small_microsoft(), 1);
    let t = Duration::ZERO;
    let a = mx.connect(t, ip("127.0.0.2"), "l").unwrap().0;
    let _b = mx.connect(t, ip("127.0.0.2"), "m").unwrap().0;
    let r: Reply = mx.connect(t, ip("127.0.0.2"), "l").unwrap_err();
    assert_eq!(r.code, 421);
    assert_eq!(r.reason, Reason::Connections);
    assert_eq!(r.after, After::Close);
    assert!(
        r.text.starts_with(
            "421 4.7.652 The mail server [127.0.0.2] has exceeded the maximum number of connections. (S3115) [Name=Protocol Filter Agent][AGT=PFA][MxId="
        ),
        "{}",
        r.text
    );
    // Another IP is not affected; closing one frees a slot.
    assert!(mx.connect(t, ip("127.0.0.3"), "l").is_ok());
    mx.close(t, a);
    assert!(mx.connect(t, ip("127.0.0.2"), "l").is_ok());
}

#[test]
fn a_new_ip_starts_small_and_grows_with_clean_days() {
    let mut p = small_microsoft();
    p.limits.per_ip_rate = 1000.0;
    p.limits.burst = 1000.0;
    p.limits.per_ip_connections = 0;
    p.limits.penalty_secs = 0.0;
    p.warmup.ips = vec![ip("127.0.0.9")];
    p.warmup.start_rate = 3.0;
    p.warmup.daily_growth = 1.0;
    // A simulated day passes every real minute.
    p.warmup.time_compression = 1440.0;
    let mut mx = Receiver::new(p, 1);
    let count = |mx: &mut Receiver, t: Duration, who: &str| {
        let s = open(mx, t, who, "l");
        let n = (0..100)
            .filter(|i| mx.rcpt(t, s, &format!("r{i}@x.test")).code == 250)
            .count();
        mx.close(t, s);
        n
    };
    // Day 0: a bucket of 3.
    assert_eq!(count(&mut mx, secs(0.0), "127.0.0.9"), 3);
    // An established IP gets the full burst.
    assert_eq!(count(&mut mx, secs(0.0), "127.0.0.2"), 100);
    // The deferral above reset the clean history: one quiet minute later (= 1 day)
    // the budget is 6/min.
    assert_eq!(count(&mut mx, secs(61.0), "127.0.0.9"), 6);
    // That run was throttled again at 61 s; three clean "days" later: 3 × 2^3 = 24.
    assert_eq!(count(&mut mx, secs(61.0 + 181.0), "127.0.0.9"), 24);
}

#[test]
fn reputation_mode_gives_4_7_650_with_a_smaller_budget() {
    let mut p = small_microsoft();
    p.limits.burst = 8.0;
    p.limits.per_ip_rate = 8.0;
    p.reputation.ips = vec![ip("127.0.0.7")];
    p.reputation.rate_factor = 0.25;
    let mut mx = Receiver::new(p, 1);
    let s = open(&mut mx, secs(0.0), "127.0.0.7", "l");
    assert_eq!(mx.rcpt(secs(0.0), s, "a@x.test").code, 250);
    assert_eq!(mx.rcpt(secs(0.0), s, "b@x.test").code, 250);
    let r = mx.rcpt(secs(0.0), s, "c@x.test");
    assert_eq!(r.reason, Reason::Reputation);
    assert!(r.text.starts_with("451 4.7.650 The mail server [127.0.0.7] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775) [Name=Protocol Filter Agent][AGT=PFA][MxId="), "{}", r.text);
}

#[test]
fn a_blocklisted_ip_gets_550_s3150_at_mail_from() {
    let mut p = small_microsoft();
    p.blocklist = vec![ip("127.0.0.6")];
    let mut mx = Receiver::new(p, 1);
    let (s, _) = mx.connect(secs(0.0), ip("127.0.0.6"), "l").unwrap();
    mx.ehlo(secs(0.0), s, "c");
    let r = mx.mail_from(secs(0.0), s, "a@sender.test");
    assert_eq!(r.code, 550);
    assert_eq!(r.reason, Reason::Blocklist);
    assert!(r.text.starts_with("550 5.7.1 Unfortunately, messages from [127.0.0.6] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150)."), "{}", r.text);
}

#[test]
fn tenant_pressure_defers_one_domain_whoever_sends() {
    let mut p = small_microsoft();
    p.limits.per_ip_rate = 0.0;
    p.tenant_pressure.domains = vec!["busy.test".into()];
    let mut mx = Receiver::new(p, 1);
    for client in ["127.0.0.2", "127.0.0.3"] {
        let s = open(&mut mx, secs(0.0), client, "l");
        let r = mx.rcpt(secs(0.0), s, "a@BUSY.test");
        assert_eq!(r.text, "450 4.7.3 Organization queue quota exceeded.");
        assert_eq!(r.reason, Reason::Tenant);
        assert_eq!(mx.rcpt(secs(0.0), s, "a@calm.test").code, 250);
    }
}

#[test]
fn an_incident_defers_a_share_of_sessions_concentrated_on_chosen_hosts() {
    let mut p = small_microsoft();
    p.limits.per_ip_rate = 0.0;
    p.limits.per_ip_connections = 0;
    p.incident.share = 0.5;
    p.incident.elsewhere_share = 0.0;
    p.incident.hosts = vec!["127.0.0.20:25".into()];
    let mut mx = Receiver::new(p, 42);
    let mut hit = [0usize; 2];
    for i in 0..2000 {
        let listen = if i % 2 == 0 {
            "127.0.0.20:25"
        } else {
            "127.0.0.21:25"
        };
        let client = format!("127.0.1.{}", i % 200);
        let s = open(&mut mx, secs(0.0), &client, listen);
        let r = mx.rcpt(secs(0.0), s, "a@x.test");
        if r.reason == Reason::Incident {
            assert!(r.text.starts_with("451 4.7.500 Server busy."));
            hit[i % 2] += 1;
        }
        mx.close(secs(0.0), s);
    }
    assert_eq!(hit[1], 0);
    assert!((400..600).contains(&hit[0]), "{hit:?}");
}

#[test]
fn gmail_replies_are_multi_line_and_421_closes() {
    let mut p = Profile::builtin("gmail").unwrap();
    p.limits.per_ip_rate = 60.0;
    p.limits.burst = 1.0;
    p.limits.per_recipient_rate = 1.0;
    let mut mx = Receiver::new(p, 3);
    let s = open(&mut mx, secs(0.0), "127.0.0.4", "l");
    assert_eq!(mx.rcpt(secs(0.0), s, "u@gmail.test").code, 250);
    // The same recipient again: per-recipient rate (450 4.2.1), multi-line.
    let r = mx.rcpt(secs(0.0), s, "u@gmail.test");
    assert_eq!(r.reason, Reason::RecipientRate);
    let lines: Vec<&str> = r.lines().collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(
        lines[0],
        "450-4.2.1 The user you are trying to contact is receiving mail at a rate that"
    );
    assert!(
        lines[4].starts_with("450 4.2.1  visit https://support.google.com/mail/?p=ReceivingRate ")
    );
    assert!(lines[4].ends_with(" - gsmtp"));
    // Another recipient: the IP budget of 1 is spent: 421-4.7.28 and close.
    let r = mx.rcpt(secs(0.0), s, "v@gmail.test");
    assert_eq!(r.reason, Reason::Throttle);
    assert_eq!(r.after, After::Close);
    let lines: Vec<&str> = r.lines().collect();
    assert_eq!(
        lines[0],
        "421-4.7.28 [127.0.0.4] Our system has detected an unusual rate of unsolicited mail"
    );
    assert!(lines[..4].iter().all(|l| l.starts_with("421-4.7.28 ")));
    assert!(lines[4].starts_with("421 4.7.28 Bulk Email Senders Guidelines. "));
}

#[test]
fn yahoo_defers_at_mail_from_with_tss04() {
    let mut p = Profile::builtin("yahoo").unwrap();
    p.limits.per_ip_rate = 60.0;
    p.limits.burst = 1.0;
    let mut mx = Receiver::new(p, 3);
    let (s, _) = mx.connect(secs(0.0), ip("127.0.0.5"), "l").unwrap();
    mx.ehlo(secs(0.0), s, "c");
    assert_eq!(mx.mail_from(secs(0.0), s, "a@s.test").code, 250);
    mx.rset(secs(0.0), s);
    let r = mx.mail_from(secs(0.0), s, "a@s.test");
    assert_eq!(
        r.text,
        "421 4.7.0 [TSS04] Messages from 127.0.0.5 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
    );
    assert_eq!(r.after, After::Close);
}

#[test]
fn script_directives_do_what_they_say() {
    let mut mx = Receiver::new(Profile::builtin("script").unwrap(), 3);
    let t = secs(0.0);
    let s = open(&mut mx, t, "127.0.0.2", "l");
    for attempt in 1..=3 {
        let r = mx.rcpt(t, s, "tempfail+3@x.test");
        assert_eq!(
            r.text,
            format!(
                "451 4.3.0 <tempfail+3@x.test>: Temporary failure {attempt} of 3 (script directive tempfail)"
            )
        );
    }
    assert_eq!(mx.rcpt(t, s, "tempfail+3@x.test").code, 250);
    assert_eq!(
        mx.rcpt(t, s, "550@x.test").text,
        "550 5.1.1 <550@x.test>: Recipient address rejected (script directive 550)"
    );
    assert_eq!(mx.data(t, s).code, 354);
    assert_eq!(mx.data_end(t, s, None).accepted, vec!["tempfail+3@x.test"]);

    mx.mail_from(t, s, "a@s.test");
    mx.rcpt(t, s, "slow+2@x.test");
    mx.rcpt(t, s, "ok@x.test");
    mx.data(t, s);
    let out = mx.data_end(t, s, None);
    assert_eq!(out.reply.delay, Duration::from_secs(2));
    assert_eq!(out.accepted.len(), 2);

    mx.mail_from(t, s, "a@s.test");
    mx.rcpt(t, s, "drop@x.test");
    mx.data(t, s);
    let out = mx.data_end(t, s, None);
    assert_eq!(out.reply.after, After::Drop);
    assert!(out.accepted.is_empty());

    mx.mail_from(t, s, "a@s.test");
    mx.rcpt(t, s, "421-at-data@x.test");
    mx.data(t, s);
    let out = mx.data_end(t, s, None);
    assert_eq!(
        out.reply.text,
        "421 4.3.2 script.mxpace.test Closing connection at end of DATA (script directive 421-at-data)"
    );
    assert_eq!(out.reply.after, After::Close);
    assert!(out.accepted.is_empty());
}

#[test]
fn commands_out_of_order_are_503() {
    let mut mx = Receiver::new(Profile::builtin("accept").unwrap(), 3);
    let t = secs(0.0);
    let (s, _) = mx.connect(t, ip("127.0.0.2"), "l").unwrap();
    assert_eq!(
        mx.mail_from(t, s, "a@s.test").text,
        "503 5.5.1 Error: send HELO/EHLO first"
    );
    mx.ehlo(t, s, "c");
    assert_eq!(
        mx.rcpt(t, s, "b@x.test").text,
        "503 5.5.1 Error: need MAIL command"
    );
    assert_eq!(mx.data(t, s).text, "503 5.5.1 Error: need MAIL command");
    mx.mail_from(t, s, "a@s.test");
    assert_eq!(
        mx.mail_from(t, s, "a@s.test").text,
        "503 5.5.1 Error: nested MAIL command"
    );
    assert_eq!(mx.data(t, s).text, "554 5.5.1 Error: no valid recipients");
    assert_eq!(mx.data_end(t, s, None).reply.code, 503);
    mx.close(t, s);
    assert_eq!(mx.open_sessions(), 0);
    assert_eq!(mx.rcpt(t, s, "b@x.test").code, 421);
}

#[test]
fn same_seed_same_replies() {
    let run = |seed| {
        let mut mx = Receiver::new(small_microsoft(), seed);
        let s = open(&mut mx, secs(0.0), "127.0.0.2", "l");
        (0..5)
            .map(|i| mx.rcpt(secs(i as f64 * 0.1), s, "a@x.test").text)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}
