//! `mxpace analyze` end to end: files, globs, gzip, zstd, stdin, --follow, bad input,
//! JSON keys, HTML and Markdown reports.

use mxpace_analyze::generate::{DeferRule, Scenario, write_postfix};
use serde_json::Value;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mxpace");

/// 2026-11-23T08:00:00Z
const START: i64 = 1_795_420_800;

fn sender_side_log(dir: &Path) -> PathBuf {
    let mut s = Scenario::baseline_unix(START);
    s.rate_per_sec = 1.0;
    s.ramp = Some((IpAddr::from([198, 51, 100, 1]), 50, 4.0));
    s.rules.push(DeferRule {
        from_minute: 60,
        to_minute: 90,
        ip: Some(IpAddr::from([198, 51, 100, 1])),
        microsoft_only: true,
        probability: 0.9,
        ..Default::default()
    });
    let path = dir.join("mail.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    write_postfix(&s, &mut f).unwrap();
    f.flush().unwrap();
    path
}

fn analyze(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("analyze")
        .args(args)
        .output()
        .expect("run mxpace")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn json_report_has_the_documented_keys_and_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let log = sender_side_log(dir.path());
    let out = analyze(&["--json", "--year", "2026", log.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an incident was found: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    for seg in v["segments"].as_array().unwrap() {
        for key in ["dimension", "key", "attempts", "deferred", "rate", "band"] {
            assert!(seg.get(key).is_some(), "segment lacks {key}: {seg}");
        }
    }
    let path = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["dimension"] == "path" && s["key"] == "198.51.100.1 → microsoft")
        .unwrap();
    assert_eq!(path["band"], "act-now");
    let incidents = v["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1);
    let inc = &incidents[0];
    for key in ["verdict", "provider", "scope", "start", "end", "evidence"] {
        assert!(inc.get(key).is_some(), "incident lacks {key}");
    }
    assert_eq!(inc["verdict"], "sender-side");
    assert_eq!(inc["provider"], "microsoft");
    assert_eq!(inc["start"], "2026-11-23T09:00:00Z");
    let kinds: Vec<&str> = v["anti_patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "bounce-after-4xx",
            "retry-storm",
            "duplicate-delivery",
            "over-concurrency"
        ]
    );
    for a in v["anti_patterns"].as_array().unwrap() {
        assert!(a["count"].is_u64() && a["examples"].is_array());
    }
}

#[test]
fn rotated_gzip_files_by_glob_and_stdin_give_the_same_counts() {
    let dir = tempfile::tempdir().unwrap();
    let log = sender_side_log(dir.path());
    let text = std::fs::read(&log).unwrap();
    let whole = json(&analyze(&[
        "--json",
        "--year",
        "2026",
        log.to_str().unwrap(),
    ]));

    // Split into an older, gzip-compressed rotation and the current file.
    let rotated = dir.path().join("rot");
    std::fs::create_dir(&rotated).unwrap();
    let cut = text[..text.len() / 2]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let gz = flate_gzip(&text[..cut]);
    std::fs::File::create(rotated.join("mail.log.1.gz"))
        .unwrap()
        .write_all(&gz)
        .unwrap();
    std::fs::write(rotated.join("mail.log"), &text[cut..]).unwrap();
    let pattern = format!("{}/mail.log*", rotated.display());
    let split = json(&analyze(&["--json", "--year", "2026", &pattern]));
    assert_eq!(split["segments"], whole["segments"]);
    assert_eq!(split["incidents"][0]["verdict"], "sender-side");

    let mut child = Command::new(BIN)
        .args(["analyze", "--json", "--year", "2026", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&text));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert_eq!(json(&out)["segments"], whole["segments"]);
}

fn flate_gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip is needed (Debian package gzip)");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    out.stdout
}

#[test]
fn bad_input_is_counted_and_unknown_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = sender_side_log(dir.path());
    let mut text = std::fs::read(&log).unwrap();
    let clean = json(&analyze(&[
        "--json",
        "--year",
        "2026",
        log.to_str().unwrap(),
    ]));
    // Append garbage: binary, a truncated delivery line, a line from another daemon.
    text.extend_from_slice(b"\x00\x01\xff\xfe binary\n");
    text.extend_from_slice(b"Nov 23 10:00:01 mx1 postfix/smtp[3]: AAAAA11111: to=<x@contoso.com>, relay=h[52.101.1.2]:25, del\n");
    text.extend_from_slice(
        b"Nov 23 10:00:01 mx1 opendkim[77]: AAAAA11111: DKIM-Signature field added\n",
    );
    text.extend_from_slice(b"complete nonsense\n");
    let bad = dir.path().join("bad.log");
    std::fs::write(&bad, &text).unwrap();
    let out = analyze(&["--json", "--year", "2026", bad.to_str().unwrap()]);
    let v = json(&out);
    assert_eq!(v["input"]["skipped_lines"], 3);
    assert_eq!(v["input"]["skipped"]["binary"], 1);
    assert_eq!(v["input"]["skipped"]["malformed"], 1);
    assert_eq!(v["input"]["skipped"]["unrecognised"], 1);
    assert_eq!(v["segments"], clean["segments"]);

    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"\x00\x01\x02 nothing here\nhello world\n").unwrap();
    let out = analyze(&[junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown log format"));

    let out = analyze(&[dir.path().join("missing.log").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
}

#[test]
fn html_and_markdown_evidence_reports() {
    let dir = tempfile::tempdir().unwrap();
    let log = sender_side_log(dir.path());
    let html = dir.path().join("report.html");
    let md = dir.path().join("report.md");
    let out = analyze(&[
        "--year",
        "2026",
        "--color",
        "never",
        "--html",
        html.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(
        terminal.contains("sender-side · microsoft · source_ip 198.51.100.1"),
        "{terminal}"
    );
    assert!(!terminal.contains('\x1b'));
    let html = std::fs::read_to_string(&html).unwrap();
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(html.contains("sender-side"));
    assert!(html.contains("(S77714)"));
    assert!(html.contains("2026-11-23T09:"));
    assert!(!html.contains("<script"), "self-contained and static");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("### 1. sender-side — microsoft (source_ip 198.51.100.1)"));
    assert!(md.contains("1. Keep the deferred mail queued"));
    assert!(md.contains("| time (UTC) | queue ID | sending IP | receiving host |"));
}

const EXIM: &str = "\
2026-11-23 10:00:00 1vXaBc-000Abc-1x <= news@example.net H=app.example.net [192.0.2.10] P=esmtp S=2048 id=m2@example.net
2026-11-23 10:00:02 1vXaBc-000Abc-1x == a@contoso.com R=dnslookup T=remote_smtp defer (-44) H=contoso-com.mail.protection.outlook.com [52.101.1.2] I=[198.51.100.7]:4000: SMTP error from remote mail server after RCPT TO:<a@contoso.com>: 451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714)
2026-11-23 10:00:02 1vXaBc-000Abc-1x => b@gmail.com R=dnslookup T=remote_smtp H=gmail-smtp-in.l.google.com [142.250.1.26] I=[198.51.100.7]:41234 C=\"250 2.0.0 OK gsmtp\"
";

const KUMO: &str = r#"{"type":"TransientFailure","id":"k1","sender":"news@example.net","recipient":"a@contoso.com","queue":"spring:acme@contoso.com","site":"","size":4096,"response":{"code":451,"enhanced_code":{"class":4,"subject":7,"detail":500},"content":"Server busy. (S77714)","command":"RCPT TO"},"peer_address":{"name":"contoso-com.mail.protection.outlook.com.","addr":"52.101.1.2"},"timestamp":1795600060,"source_address":{"address":"198.51.100.9:41000"}}
{"type":"Delivery","id":"k2","sender":"news@example.net","recipient":"b@gmail.com","queue":"spring:acme@gmail.com","site":"","size":4096,"response":{"code":250,"content":"OK"},"peer_address":{"name":"gmail-smtp-in.l.google.com.","addr":"142.250.1.26"},"timestamp":1795600061,"source_address":{"address":"198.51.100.9:41001"}}
"#;

fn segment<'a>(v: &'a Value, dimension: &str, key: &str) -> &'a Value {
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["dimension"] == dimension && s["key"] == key)
        .unwrap_or_else(|| panic!("no {dimension} {key} in {v}"))
}

#[test]
fn exim_and_zstd_kumomta_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let exim = dir.path().join("mainlog");
    std::fs::write(&exim, EXIM).unwrap();
    let v = json(&analyze(&["--json", exim.to_str().unwrap()]));
    assert_eq!(v["input"]["format"], "exim");
    let m = segment(&v, "path", "198.51.100.7 → microsoft");
    assert_eq!(
        (m["attempts"].as_u64(), m["deferred"].as_u64()),
        (Some(1), Some(1))
    );

    let plain = dir.path().join("kumo.jsonl");
    std::fs::write(&plain, KUMO).unwrap();
    let status = Command::new("zstd")
        .args(["-q", "-f", "--rm"])
        .arg(&plain)
        .status()
        .expect("zstd is needed (Debian package zstd)");
    assert!(status.success());
    let zst = dir.path().join("kumo.jsonl.zst");
    let v = json(&analyze(&["--json", zst.to_str().unwrap()]));
    assert_eq!(v["input"]["format"], "kumomta");
    assert_eq!(segment(&v, "stream", "spring")["attempts"], 2);
    assert_eq!(
        segment(&v, "path", "198.51.100.9 → microsoft")["deferred"],
        1
    );
}

/// Kills the child if the test panics.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn follow_reads_lines_appended_after_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("live.log");
    let first = "Nov 23 10:00:00 mx1 postfix/qmgr[2]: AAAAA11111: from=<s@example.net>, size=10, nrcpt=1 (queue active)\n";
    std::fs::write(&log, first).unwrap();
    let child = Command::new(BIN)
        .args([
            "analyze",
            "--json",
            "--follow",
            "--follow-idle",
            "3",
            "--year",
            "2026",
        ])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    std::thread::sleep(Duration::from_millis(700));
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    // Written in two pieces: the reader must wait for the end of the line.
    f.write_all(b"Nov 23 10:00:01 mx1 postfix-198.51.100.7/smtp[3]: AAAAA11111: to=<x@contoso.com>, relay=contoso-com.mail.protection.outlook.com[52.101.1.2]:25, delay=1, ").unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    f.write_all(b"delays=0/0/0.5/0.5, dsn=4.7.500, status=deferred (host h[52.101.1.2] said: 451 4.7.500 Server busy. (S77714) (in reply to RCPT TO command))\n").unwrap();
    f.flush().unwrap();
    let started = Instant::now();
    let mut child = guard.0.take().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("--follow did not stop after --follow-idle");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let v = json(&out);
    let p = segment(&v, "path", "198.51.100.7 → microsoft");
    assert_eq!(p["deferred"], 1);
    assert_eq!(v["input"]["skipped_lines"], 0);
}
