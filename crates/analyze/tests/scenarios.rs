//! Generated Postfix logs with known ground truth, read from disk through the same path
//! as `mxpace analyze`, must give the known verdicts and anti-pattern counts.

use mxpace_analyze::generate::{DeferRule, Scenario, Truth, write_postfix};
use mxpace_analyze::report::Report;
use mxpace_analyze::run::{self, Options};
use mxpace_analyze::{Analyzer, Config, Verdict};
use mxpace_events::readers::MAX_LINE;
use std::io::Write;
use std::net::IpAddr;
use time::macros::datetime;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, last])
}

/// `s` written as a Postfix log to `mail.log` in a new temporary directory.
fn write_log(s: &Scenario) -> (tempfile::TempDir, Truth) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.log");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let truth = write_postfix(s, &mut file).unwrap();
    file.flush().unwrap();
    (dir, truth)
}

fn analyze(s: &Scenario, parallel: bool) -> (Report, Truth) {
    let (dir, truth) = write_log(s);
    let path = dir.path().join("mail.log");
    let mut options = Options::new();
    options.parallel = parallel;
    // Small chunks so that queue IDs straddle chunk boundaries many times.
    options.chunk_bytes = 64 * 1024;
    options.reader.year = Some(2026);
    let mut analyzer = Analyzer::new(Config::default());
    let outcome = run::read_all(
        std::slice::from_ref(&path),
        &options,
        &mut analyzer,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(outcome.stats.skipped_total(), 0, "{:?}", outcome.stats);
    let report = Report::build(
        &analyzer,
        &outcome.stats,
        vec![path.display().to_string()],
        "postfix",
    );
    (report, truth)
}

fn base() -> Scenario {
    Scenario {
        rate_per_sec: 2.0,
        ..Scenario::baseline(datetime!(2026-11-23 08:00:00 UTC))
    }
}

fn anti(report: &Report, kind: &str) -> u64 {
    report
        .anti_patterns
        .iter()
        .find(|a| a.kind == kind)
        .unwrap()
        .count
}

#[test]
fn clean_traffic_has_no_incident_and_no_anti_pattern() {
    let (report, truth) = analyze(&base(), true);
    assert!(report.incidents.is_empty(), "{:#?}", report.incidents);
    for a in &report.anti_patterns {
        assert_eq!(a.count, 0, "{a:?}");
    }
    let microsoft = report
        .segments_of("provider")
        .find(|s| s.key == "microsoft")
        .unwrap();
    assert_eq!(microsoft.deferred, 0);
    assert_eq!(report.queue_health.delivered, truth.deliveries);
    assert_eq!(report.input.lines, truth.lines);
}

#[test]
fn one_ip_throttled_by_microsoft_is_sender_side() {
    let mut s = base();
    s.ramp = Some((ip(1), 50, 4.0));
    s.rules.push(DeferRule {
        from_minute: 60,
        to_minute: 90,
        ip: Some(ip(1)),
        microsoft_only: true,
        probability: 0.9,
        ..Default::default()
    });
    let (report, truth) = analyze(&s, true);
    let microsoft = report
        .segments_of("provider")
        .find(|x| x.key == "microsoft")
        .unwrap();
    assert_eq!(microsoft.deferred, truth.deferrals);
    assert_eq!(report.incidents.len(), 1, "{:#?}", report.incidents);
    let inc = &report.incidents[0];
    assert_eq!(inc.verdict, Verdict::SenderSide, "{inc:#?}");
    assert_eq!(inc.provider, "microsoft");
    assert_eq!(inc.scope, "source_ip 198.51.100.1");
    assert!(
        inc.evidence
            .iter()
            .any(|e| e.contains("volume from 198.51.100.1 rose")),
        "{:#?}",
        inc.evidence
    );
    assert!(
        inc.evidence
            .iter()
            .any(|e| e.contains("other receivers accept it")),
        "{:#?}",
        inc.evidence
    );
    assert!(
        inc.samples
            .iter()
            .all(|x| x.source_ip.as_deref() == Some("198.51.100.1"))
    );
    assert!(inc.samples[0].reply.contains("(S77714)"));
    let path = report
        .segments_of("path")
        .find(|x| x.key == "198.51.100.1 → microsoft")
        .unwrap();
    assert_eq!(path.band, mxpace_analyze::Band::ActNow);
    let clean = report
        .segments_of("path")
        .find(|x| x.key == "198.51.100.2 → microsoft")
        .unwrap();
    assert_eq!(clean.deferred, 0);
}

#[test]
fn microsoft_wide_incident_across_tenants_is_provider_side() {
    let mut s = base();
    s.rules.push(DeferRule {
        from_minute: 60,
        to_minute: 80,
        microsoft_only: true,
        probability: 0.5,
        ..Default::default()
    });
    let (report, _) = analyze(&s, true);
    assert_eq!(report.incidents.len(), 1, "{:#?}", report.incidents);
    let inc = &report.incidents[0];
    assert_eq!(inc.verdict, Verdict::ProviderSide, "{inc:#?}");
    assert_eq!(inc.provider, "microsoft");
    assert!(inc.start.starts_with("2026-11-23T09:0"), "{}", inc.start);
    assert!(
        inc.evidence
            .iter()
            .any(|e| e.contains("10 recipient domains and 4 of 4 sending IPs")),
        "{:#?}",
        inc.evidence
    );
}

#[test]
fn failures_clustered_on_one_region_are_provider_side() {
    let mut s = base();
    s.rules.push(DeferRule {
        from_minute: 30,
        to_minute: 60,
        region: Some("namprd04".into()),
        probability: 0.8,
        ..Default::default()
    });
    let (report, _) = analyze(&s, true);
    assert_eq!(report.incidents.len(), 1, "{:#?}", report.incidents);
    let inc = &report.incidents[0];
    assert_eq!(inc.verdict, Verdict::ProviderSide, "{inc:#?}");
    assert!(
        inc.evidence
            .iter()
            .any(|e| e.contains("receiving region namprd04")),
        "{:#?}",
        inc.evidence
    );
    let region = report
        .segments_of("region")
        .find(|x| x.key == "namprd04")
        .unwrap();
    assert!(region.deferred > 0);
}

#[test]
fn one_tenant_pressing_is_tenant_side() {
    let mut s = base();
    s.rules.push(DeferRule {
        from_minute: 40,
        to_minute: 70,
        domain: Some("tenant3.example.com".into()),
        probability: 0.9,
        ..Default::default()
    });
    let (report, _) = analyze(&s, true);
    assert_eq!(report.incidents.len(), 1, "{:#?}", report.incidents);
    let inc = &report.incidents[0];
    assert_eq!(inc.verdict, Verdict::TenantSide, "{inc:#?}");
    assert_eq!(inc.scope, "recipient_domain tenant3.example.com");
}

#[test]
fn application_suppressing_after_a_451_is_flagged_once_per_recipient() {
    let mut s = base();
    s.minutes = 30;
    s.suppress_after_4xx = true;
    s.rules.push(DeferRule {
        from_minute: 0,
        to_minute: 30,
        microsoft_only: true,
        probability: 0.05,
        ..Default::default()
    });
    let (report, truth) = analyze(&s, true);
    assert!(truth.suppressed > 100);
    assert_eq!(anti(&report, "bounce-after-4xx"), truth.suppressed);
    assert_eq!(anti(&report, "retry-storm"), 0);
}

#[test]
fn retry_storm_and_duplicates_are_counted_exactly() {
    let mut s = base();
    s.minutes = 30;
    s.retry_secs = 20;
    s.duplicate_every = Some(50);
    s.rules.push(DeferRule {
        from_minute: 0,
        to_minute: 30,
        domain: Some("tenant1.example.com".into()),
        probability: 0.5,
        ..Default::default()
    });
    let (report, truth) = analyze(&s, false);
    assert!(truth.fast_retries > 50);
    assert_eq!(anti(&report, "retry-storm"), truth.fast_retries);
    assert!(truth.duplicates > 10);
    assert_eq!(anti(&report, "duplicate-delivery"), truth.duplicates);
}

#[test]
fn too_many_parallel_sessions_to_one_provider() {
    let mut s = base();
    s.minutes = 5;
    s.rate_per_sec = 20.0;
    s.sessions_per_ip = 200;
    let (report, _) = analyze(&s, true);
    assert!(anti(&report, "over-concurrency") > 0);
    let (quiet, _) = analyze(
        &Scenario {
            minutes: 5,
            rate_per_sec: 20.0,
            ..base()
        },
        true,
    );
    assert_eq!(anti(&quiet, "over-concurrency"), 0);
}

/// Read `path` in one mode and return the whole report as JSON.
fn report_json(path: &std::path::Path, parallel: bool, chunk_bytes: usize) -> serde_json::Value {
    let mut options = Options::new();
    options.parallel = parallel;
    options.chunk_bytes = chunk_bytes;
    options.reader.year = Some(2026);
    let mut analyzer = Analyzer::new(Config::default());
    let outcome = run::read_all(
        &[path.to_path_buf()],
        &options,
        &mut analyzer,
        &mut |_, _| {},
    )
    .unwrap();
    let report = Report::build(
        &analyzer,
        &outcome.stats,
        vec![path.display().to_string()],
        "postfix",
    );
    serde_json::to_value(&report).unwrap()
}

#[test]
fn parallel_and_sequential_reads_give_the_same_report() {
    // Every kind of record and anti-pattern, and interleaved noise from other daemons,
    // so that the ordered state (queue IDs, open recipients, sessions, duplicates) is
    // exercised across chunk and piece boundaries.
    let mut retries = base();
    retries.minutes = 40;
    retries.retry_secs = 30;
    retries.duplicate_every = Some(50);
    retries.noise_per_sec = 2.0;
    retries.rules.push(DeferRule {
        from_minute: 10,
        to_minute: 30,
        ip: Some(ip(2)),
        microsoft_only: true,
        probability: 0.7,
        ..Default::default()
    });
    let mut suppressing = retries.clone();
    suppressing.retry_secs = 600;
    suppressing.suppress_after_4xx = true;
    suppressing.duplicate_every = None;
    for (name, s) in [("retries", retries), ("suppressing", suppressing)] {
        same_report_in_every_mode(name, &s);
    }
}

/// The parser threads check each piece as text once and parse its lines without checking
/// each again; pieces with binary bytes, bad UTF-8 or CRLF line ends fall back to the
/// line-by-line check. Both must count and parse exactly as the sequential read does.
#[test]
fn pieces_with_binary_lines_or_crlf_ends_read_as_in_a_sequential_read() {
    let mut s = base();
    s.minutes = 20;
    let (dir, _) = write_log(&s);
    let path = dir.path().join("mail.log");
    let text = std::fs::read(&path).unwrap();
    let mut mixed = Vec::with_capacity(text.len() + 4096);
    let mut bad = 0;
    for (i, line) in text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        mixed.extend_from_slice(line);
        match i % 997 {
            // A delivery line written with a CRLF end: parsed as without it.
            100 => mixed.extend_from_slice(b"\r\n"),
            300 => {
                mixed.extend_from_slice(b"\n\x00\x01\x02 binary\n");
                bad += 1;
            }
            700 => {
                mixed.extend_from_slice(b"\nNov 23 10:00:01 mx1 postfix/smtp[3]: \xff\xfe\n");
                bad += 1;
            }
            _ => mixed.push(b'\n'),
        }
    }
    assert!(bad >= 4, "the log must hold several bad lines");
    std::fs::write(&path, &mixed).unwrap();
    let sequential = report_json(&path, false, 64 * 1024);
    assert_eq!(
        sequential["input"]["skipped"]["binary"], bad,
        "{}",
        sequential["input"]
    );
    for chunk in [4096, 64 * 1024] {
        let parallel = report_json(&path, true, chunk);
        assert!(
            parallel == sequential,
            "chunks of {chunk} bytes: the parallel report differs from the sequential one"
        );
    }
}

/// Lines longer than `MAX_LINE` (binary data, a runaway writer) are counted once each
/// as `too-long` and not held in memory, in both modes and whatever the chunk size; the
/// lines around them are read as without them.
#[test]
fn overlong_lines_are_skipped_once_each_in_every_mode() {
    let mut s = base();
    s.minutes = 10;
    let (dir, _) = write_log(&s);
    let path = dir.path().join("mail.log");
    let text = std::fs::read(&path).unwrap();
    let clean = report_json(&path, false, 64 * 1024);
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let huge = vec![b'x'; MAX_LINE * 2 + 123];
    let mut with_long = Vec::with_capacity(text.len() + 4 * huge.len());
    for (i, line) in lines.iter().enumerate() {
        with_long.extend_from_slice(line);
        with_long.push(b'\n');
        // One just over the limit, one of several chunks, and the last line, unended.
        if i == 10 {
            with_long.extend_from_slice(&huge[..MAX_LINE + 1]);
            with_long.push(b'\n');
        }
        if i == lines.len() / 2 {
            with_long.extend_from_slice(&huge);
            with_long.push(b'\n');
        }
    }
    // A line of exactly the limit is read (and skipped as unrecognised, not too long).
    with_long.extend_from_slice(&huge[..MAX_LINE]);
    with_long.push(b'\n');
    with_long.extend_from_slice(&huge);
    std::fs::write(&path, &with_long).unwrap();
    let sequential = report_json(&path, false, 64 * 1024);
    let input = &sequential["input"];
    assert_eq!(input["skipped"]["too-long"], 3, "{input}");
    assert_eq!(input["skipped"]["unrecognised"], 1, "{input}");
    // Each line counts its end too.
    let long_bytes = (MAX_LINE + 1) + huge.len() + MAX_LINE + huge.len() + 4;
    assert_eq!(
        input["bytes"],
        clean["input"]["bytes"].as_u64().unwrap() + long_bytes as u64,
        "{input}"
    );
    assert_eq!(
        input["lines"],
        clean["input"]["lines"].as_u64().unwrap() + 4,
        "{input}"
    );
    for key in ["segments", "incidents", "anti_patterns", "queue_health"] {
        assert_eq!(sequential[key], clean[key], "{key}");
    }
    // A chunk just over MAX_LINE can lie wholly inside the 2 MiB line.
    for chunk in [4096, 64 * 1024, MAX_LINE + 4096, 8 << 20] {
        let parallel = report_json(&path, true, chunk);
        assert!(
            parallel == sequential,
            "chunks of {chunk} bytes: {} vs {}",
            parallel["input"],
            sequential["input"]
        );
    }
}

fn same_report_in_every_mode(name: &str, s: &Scenario) {
    let (dir, truth) = write_log(s);
    let path = dir.path().join("mail.log");
    let size = std::fs::metadata(&path).unwrap().len();
    // Chunks of 64 KiB: the log spans many chunks, so a message's lines (queued in one
    // chunk, deferred, retried and delivered in later ones) straddle chunk boundaries.
    assert!(
        size > 20 * 64 * 1024,
        "{name}: the log must span many chunks"
    );
    assert!(
        truth.suppressed + truth.fast_retries > 0 && truth.deferrals > 0,
        "{name}: {truth:?}"
    );
    let sequential = report_json(&path, false, 64 * 1024);
    assert!(sequential["anti_patterns"].as_array().unwrap().len() == 4);
    for chunk in [4096, 64 * 1024, 8 << 20] {
        let parallel = report_json(&path, true, chunk);
        assert!(
            parallel == sequential,
            "{name}, chunks of {chunk} bytes: the parallel report differs from the sequential one"
        );
    }
}

/// A log across New Year with a late December line after the first January ones: the
/// parser threads guess the year of each line from the state at the start of their
/// chunk, and the ordered fold must correct a wrong guess (here, the late line belongs
/// to the new year by the tracker's rule) so that both modes agree.
#[test]
fn parallel_read_across_new_year_agrees_with_sequential() {
    let reply = "451 4.7.500 Server busy. Please try again later from [198.51.100.2]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2026-12-31T23:58:00.000Z 08DE0A1B2C3D4E5F]";
    let stamps = [
        "Dec 31 23:58:00",
        "Dec 31 23:58:30",
        "Dec 31 23:59:10",
        "Jan  1 00:00:05",
        "Dec 31 23:59:59",
        "Jan  1 00:01:00",
        "Jan  1 00:02:00",
        "Jan  1 00:12:00",
    ];
    let mut log = String::new();
    for (i, stamp) in stamps.iter().enumerate() {
        let qid = format!("A{i:04}BCDEF");
        log.push_str(&format!(
            "{stamp} mx1 postfix/cleanup[2101]: {qid}: message-id=<{i}@news.example.net>\n\
             {stamp} mx1 postfix/qmgr[2102]: {qid}: from=<bounce@news.example.net>, size=4000, nrcpt=1 (queue active)\n\
             {stamp} mx1 postfix-198.51.100.2/smtp[{pid}]: {qid}: to=<user{i}@tenant1.example.com>, relay=tenant1-example-com.mail.protection.outlook.com[52.101.1.10]:25, delay=0, delays=0.1/0/0.3/0.2, tls=may, dsn=4.7.500, status=deferred (host tenant1-example-com.mail.protection.outlook.com[52.101.1.10] said: {reply} (in reply to RCPT TO command))\n",
            pid = 3000 + i
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.log");
    std::fs::write(&path, log).unwrap();
    let sequential = report_json(&path, false, 4096);
    // Windows of 10 min: 2026-12-31T23:50Z = 1798761000 (the December lines, the late
    // one included), 2027-01-01T00:00Z = 1798761600 and 00:10Z = 1798762200.
    let windows = sequential["series"][0]["points"].to_string();
    let starts: Vec<i64> = sequential["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["start"].as_i64().unwrap())
        .collect();
    assert_eq!(
        starts,
        [1798761000, 1798761600, 1798762200],
        "windows across New Year: {windows}"
    );
    for chunk in [4096, 1 << 20] {
        let parallel = report_json(&path, true, chunk);
        assert!(
            parallel == sequential,
            "chunks of {chunk} bytes: the parallel report differs from the sequential one"
        );
    }
}
