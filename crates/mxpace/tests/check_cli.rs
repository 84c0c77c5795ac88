//! `mxpace check` and `mxpace spf flatten` as a user runs them, against nsd on loopback.

#[path = "../../identity/tests/support/nsd.rs"]
mod nsd;

use nsd::Nsd;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mxpace");

/// Runs mxpace to completion (30 s at most), reading its output as it comes.
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mxpace runs");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("mxpace output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("mxpace {args:?} did not finish in 30 s");
        }
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn check_status<'a>(report: &'a Value, id: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no {id}"))["status"]
        .as_str()
        .unwrap()
}

#[test]
fn json_report_has_every_check_and_exit_code_follows_failures() {
    let nsd = Nsd::start();
    let dns = nsd.addr.to_string();
    let out = run(&[
        "check",
        "clean.test",
        "--ip",
        "192.0.2.10",
        "--ip",
        "192.0.2.11",
        "--helo",
        "mail.clean.test",
        "--selector",
        "s1",
        "--dns",
        &dns,
        "--no-blocklists",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = json(&out);
    assert_eq!(report["domain"], "clean.test");
    for c in report["checks"].as_array().unwrap() {
        for field in ["id", "status", "summary", "evidence", "fix"] {
            assert!(c.get(field).is_some(), "{field} missing in {c}");
        }
        assert!(["pass", "warn", "fail"].contains(&c["status"].as_str().unwrap()));
    }
    for id in [
        "spf.record",
        "spf.lookups",
        "spf.void",
        "spf.size",
        "spf.authorized.192.0.2.10",
        "dkim.key.s1",
        "dmarc.record",
        "dmarc.policy",
        "dmarc.reporting",
        "mx",
        "rdns.192.0.2.11",
        "helo",
        "mta-sts",
        "tls-rpt",
        "microsoft.bulk-sender",
    ] {
        assert_eq!(check_status(&report, id), "pass", "{id}");
    }

    let out = run(&[
        "check",
        "unauth.test",
        "--ip",
        "192.0.2.10",
        "--dns",
        &dns,
        "--no-blocklists",
    ]);
    assert_eq!(out.status.code(), Some(1), "a failed check exits 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  spf.authorized.192.0.2.10"), "{text}");
    assert!(text.contains("fix: Add ip4:192.0.2.10"), "{text}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = run(&[
        "check",
        "clean.test",
        "--message",
        "/nonexistent/x.eml",
        "--dns",
        "127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/x.eml"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("zones.toml");
    std::fs::write(&bad, "[[zone]]\nname = \"x\"\n").unwrap();
    let out = run(&[
        "check",
        "clean.test",
        "--blocklists",
        bad.to_str().unwrap(),
        "--dns",
        "127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid blocklist zone file"));

    let out = run(&["check", "clean.test", "--watch", "5 days"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a bad interval");
}

#[test]
fn flatten_chains_within_limits_and_diffs_against_a_previous_result() {
    let nsd = Nsd::start();
    let dns = nsd.addr.to_string();
    let out = run(&["spf", "flatten", "spf11.test", "--dns", &dns, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flat = json(&out);
    let nets: Vec<&str> = flat["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    // h1..h9 = 192.0.2.101-109, aggregated into the fewest prefixes.
    assert_eq!(
        nets,
        [
            "192.0.2.101/32",
            "192.0.2.102/31",
            "192.0.2.104/30",
            "192.0.2.108/31"
        ]
    );
    let records = flat["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(flat["lookups"], 0, "11 lookups flattened to none");

    // The 4 KB record becomes a chain of records of at most 450 bytes, strings ≤ 255.
    let out = run(&["spf", "flatten", "big.bad.test", "--dns", &dns, "--json"]);
    let big = json(&out);
    let records = big["records"].as_array().unwrap();
    assert!(records.len() >= 9, "{}", records.len());
    assert_eq!(records[0]["name"], "big.bad.test");
    assert!(records[0]["text"].as_str().unwrap().ends_with(" -all"));
    for r in records {
        let text = r["text"].as_str().unwrap();
        assert!(text.len() <= 450, "{} bytes", text.len());
        for s in r["strings"].as_array().unwrap() {
            assert!(s.as_str().unwrap().len() <= 255);
        }
    }
    assert!(big["lookups"].as_u64().unwrap() <= 10);

    // Diff: pretend the previous resolution had one network less and one more.
    let dir = tempfile::tempdir().unwrap();
    let mut previous = flat.clone();
    let list = previous["networks"].as_array_mut().unwrap();
    list.retain(|n| n != "192.0.2.104/30");
    list.push(Value::String("203.0.113.9/32".into()));
    let prev_path = dir.path().join("previous.json");
    std::fs::write(&prev_path, previous.to_string()).unwrap();
    let out = run(&[
        "spf",
        "flatten",
        "spf11.test",
        "--dns",
        &dns,
        "--previous",
        prev_path.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "a changed set exits 1");
    let diff = &json(&out)["diff"];
    assert_eq!(diff["added"], serde_json::json!(["192.0.2.104/30"]));
    assert_eq!(diff["removed"], serde_json::json!(["203.0.113.9/32"]));

    std::fs::write(&prev_path, flat.to_string()).unwrap();
    let out = run(&[
        "spf",
        "flatten",
        "spf11.test",
        "--dns",
        &dns,
        "--previous",
        prev_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged since the previous result"));
}

/// Kills the child on drop, even when the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_reports_listing_and_delisting_as_json_lines() {
    let nsd = Nsd::start();
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones.toml");
    std::fs::write(
        &zones,
        "[[zone]]\nname = \"zen.spamhaus.org\"\nkind = \"ip\"\nsource = \"test copy of the shipped entry\"\n\
         code = [\n  { answer = \"127.0.0.2/32\", effect = \"listed\", meaning = \"SBL\" },\n  \
         { answer = \"127.255.255.0/24\", effect = \"refused\", meaning = \"refused\" },\n]\n",
    )
    .unwrap();
    let child = Command::new(BIN)
        .args([
            "check",
            "clean.test",
            "--ip",
            "192.0.2.10",
            "--dns",
            &nsd.addr.to_string(),
            "--blocklists",
            zones.to_str().unwrap(),
            "--watch",
            "200ms",
            "--watch-count",
            "100",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |what: &str| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no {what} line within 15 s"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line}"))
    };
    let first = next_line("report");
    assert_eq!(
        check_status(&first, "blocklist.zen.spamhaus.org[192.0.2.10]"),
        "pass"
    );

    let original = nsd.zone_text("zen.spamhaus.org");
    nsd.set_zone(
        "zen.spamhaus.org",
        &format!("{original}10.2.0.192 IN A 127.0.0.2\n"),
    );
    let listed = next_line("listed");
    assert_eq!(listed["event"], "listed", "{listed}");
    assert_eq!(listed["zone"], "zen.spamhaus.org");
    assert_eq!(listed["target"], "192.0.2.10");
    assert_eq!(
        (listed["from"].as_str(), listed["to"].as_str()),
        (Some("clear"), Some("listed"))
    );
    assert!(listed["time"].as_str().unwrap().ends_with('Z'));

    nsd.set_zone("zen.spamhaus.org", &original);
    let delisted = next_line("delisted");
    assert_eq!(delisted["event"], "delisted", "{delisted}");
}
