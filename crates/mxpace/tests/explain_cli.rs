//! `mxpace explain` as a user runs it: arguments, stdin, --json, --mx, --rules,
//! --list-rules, bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const S77714: &str = "451 4.7.500 Server busy. Please try again later from [203.0.113.10]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2024-07-14T14:44:43.083Z 08DCA36F759CD546]";

/// Run `mxpace explain ARGS` with `stdin`, killing it if it takes more than 30 s.
fn explain(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxpace"))
        .arg("explain")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mxpace");
    let guard = KillOnDrop(child.id());
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for mxpace");
    writer.join().unwrap();
    std::mem::forget(guard);
    out
}

/// Kills the process if a test panics or hangs past the watchdog.
struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

fn watchdog() {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("explain_cli test exceeded 60 s");
        std::process::exit(101);
    });
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn human_output_is_short_and_says_what_to_do() {
    watchdog();
    let out = explain(&[S77714], b"");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("451 4.7.500  RETRY  throttling / sending-ip  provider microsoft"),
        "{text}"
    );
    assert!(text.contains("do not bounce"), "{text}");
    assert!(text.contains("tokens S77714"), "{text}");
    assert!(text.contains("rule microsoft-server-busy"), "{text}");
    assert!(text.lines().count() <= 5, "{text}");
}

#[test]
fn json_has_the_contract_fields() {
    watchdog();
    let out = explain(&["--json", S77714], b"");
    assert!(out.status.success());
    let v = &json_lines(&out)[0];
    assert_eq!(v["code"], 451);
    assert_eq!(v["enhanced"], "4.7.500");
    assert_eq!(v["action"], "retry");
    assert_eq!(v["category"], "throttling");
    assert_eq!(v["scope"], "sending-ip");
    assert_eq!(v["provider"], "microsoft");
    assert_eq!(v["throttle"], "slow-down");
    assert_eq!(v["tokens"][0], "S77714");
    assert_eq!(v["ips"][0], "203.0.113.10");
    assert_eq!(v["host"], "bl6pepf0001ab50.namprd04.prod.outlook.com");
    assert_eq!(v["host_time"], "2024-07-14T14:44:43.083Z");
    assert_eq!(v["rule"], "microsoft-server-busy");
    assert_eq!(v["fallback"], false);
    for field in ["stage", "urls", "advice", "enhanced_agrees", "not_a_reply"] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
}

#[test]
fn stdin_one_per_line_and_blank_line_separated_blocks() {
    watchdog();
    let input = format!(
        "{S77714}\r\n550 5.1.1 <a@b.example>: Recipient address rejected: User unknown\n\n421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating\n421-4.7.28 from your IP address. To protect our users from spam, mail sent from\n421 4.7.28 your IP address has been temporarily rate limited. - gsmtp\n\nDiagnostic-Code: smtp; 550 5.7.1 Unfortunately, messages from [198.51.100.7] weren't\n    sent. Please contact your Internet service provider since part of their\n    network is on our block list (S3150).\n"
    );
    let out = explain(&["--json"], input.as_bytes());
    assert!(out.status.success(), "{out:?}");
    let vs = json_lines(&out);
    assert_eq!(vs.len(), 4);
    assert_eq!(vs[0]["rule"], "microsoft-server-busy");
    assert_eq!(vs[1]["category"], "recipient");
    assert_eq!(vs[2]["provider"], "google");
    assert_eq!(vs[2]["scope"], "sending-ip");
    assert_eq!(vs[3]["category"], "blocklist");
    assert_eq!(vs[3]["throttle"], "stop-source");
}

#[test]
fn mx_flag_names_the_provider() {
    watchdog();
    let out = explain(
        &[
            "--json",
            "--mx",
            "mx01.mail.icloud.com",
            "451 4.7.1 Service unavailable - try again later",
        ],
        b"",
    );
    assert_eq!(json_lines(&out)[0]["provider"], "apple");
}

#[test]
fn rules_file_overrides_and_list_rules_shows_sources() {
    watchdog();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(
        &path,
        "[[rule]]\nid = \"acme-busy\"\nsource = \"acme.example postmaster page\"\ncodes = [\"451\"]\nall = [\"acme is busy\"]\ncategory = \"capacity\"\nscope = \"session\"\nadvice = \"Acme is busy; retry later please.\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let out = explain(&["--json", "--rules", p, "451 acme is busy today"], b"");
    assert_eq!(json_lines(&out)[0]["rule"], "acme-busy");
    let out = explain(&["--list-rules", "--rules", p], b"");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("acme-busy"), "user rules are tried first");
    assert!(
        text.contains("source: Microsoft Learn"),
        "sources are printed"
    );
    let out = explain(&["--list-rules", "--json"], b"");
    assert!(
        json_lines(&out)
            .iter()
            .all(|r| r["source"].as_str().is_some_and(|s| !s.is_empty()))
    );

    std::fs::write(&path, "[[rule]]\nid = \"x\"\n").unwrap();
    let out = explain(&["--rules", p, "451 x"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mine.toml"));
    let out = explain(&["--rules", "/nonexistent/rules.toml", "451 x"], b"");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_input_is_reported_not_a_panic() {
    watchdog();
    let mut input = b"\x00\x01\x02\x03\n".to_vec();
    input.extend(b"550 5.1.1 caf\xe9 unknown user\n");
    input.extend(b"just some words\n");
    input.extend(vec![b'z'; 100_000]);
    input.push(b'\n');
    input.extend(b"554\n");
    let out = explain(&["--json"], &input);
    assert_eq!(out.status.code(), Some(1), "some inputs were not replies");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vs = json_lines(&out);
    assert_eq!(vs.len(), 5);
    assert_eq!(vs[0]["not_a_reply"], true);
    assert_eq!(vs[1]["code"], 550);
    assert_eq!(vs[1]["category"], "recipient");
    assert_eq!(vs[2]["not_a_reply"], true);
    assert_eq!(vs[3]["not_a_reply"], true);
    assert_eq!(vs[4]["code"], 554);
    assert_eq!(vs[4]["fallback"], true);
    let out = explain(&[], b"");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let out = explain(&[""], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not an SMTP reply"));
}
