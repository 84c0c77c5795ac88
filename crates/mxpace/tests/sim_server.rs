//! `mxpace sim` driven by independent SMTP clients (Python's smtplib, swaks), on
//! loopback only, asserting the exact reply texts, budgets, penalties and the ledger.

mod common;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running simulator, killed when dropped (also on panic).
struct Sim {
    guard: common::Guard,
    addrs: Vec<SocketAddr>,
}

impl Sim {
    /// `mxpace sim ARGS` (on 127.0.0.1:0 unless ARGS name `--listen`), once it listens.
    fn start(args: &[&str]) -> Sim {
        let listens = args.iter().filter(|a| **a == "--listen").count().max(1);
        let mut all = args.to_vec();
        if !args.contains(&"--listen") {
            all.extend(["--listen", "127.0.0.1:0"]);
        }
        let (guard, addrs, _) = common::spawn_sim_listening(&all, listens);
        Sim { guard, addrs }
    }

    fn port(&self, i: usize) -> String {
        self.addrs[i].port().to_string()
    }
}

/// Run a program with stdin, fail clearly if it is missing, kill it after `secs`.
fn run(program: &str, args: &[&str], stdin: &str, secs: u64) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} is needed for this test (scripts/install-deps installs it): {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    assert!(
        status.success() || program == "swaks",
        "{program} failed: {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out + &err
}

/// Run a Python script (with `port` etc. as argv) that prints one JSON value.
fn python(script: &str, args: &[&str]) -> Value {
    let mut argv = vec!["-"];
    argv.extend_from_slice(args);
    let out = run("python3", &argv, script, 60);
    let last = out.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("python output {out:?}: {e}"))
}

/// Helpers shared by the Python snippets.
const PY: &str = r#"
import json, smtplib, socket, ssl, sys, time
def connect(port, src="127.0.0.2"):
    return smtplib.SMTP("127.0.0.1", int(port), source_address=(src, 0), timeout=20)
def rcpt(s, addr):
    code, msg = s.docmd("RCPT", "TO:<%s>" % addr)
    return [code, msg.decode()]
"#;

fn py(body: &str, args: &[&str]) -> Value {
    python(&format!("{PY}\n{body}"), args)
}

fn stats(ledger: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mxpace"))
        .args(["sim", "stats", "--json", "--ledger"])
        .arg(ledger)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `[host 2026-11-23T13:11:15.469Z 0123456789ABCDEF]`
fn assert_ms_trailer(text: &str) {
    let open = text.rfind('[').unwrap();
    let parts: Vec<&str> = text[open + 1..text.len() - 1].split(' ').collect();
    assert_eq!(parts.len(), 3, "{text}");
    assert_eq!(parts[0], "BL6PEPF0001AB50.namprd04.prod.outlook.com");
    assert_eq!(parts[1].len(), 24, "{text}");
    assert!(parts[1].ends_with('Z'));
    assert_eq!(parts[2].len(), 16);
    assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn over_budget_is_the_exact_s77714_reply_and_the_budget_refills() {
    let sim = Sim::start(&[
        "--profile",
        "microsoft",
        "--per-ip-rate",
        "60/min",
        "--burst",
        "2",
        "--penalty-secs",
        "1",
    ]);
    let r = py(
        r#"
s = connect(sys.argv[1])
s.ehlo("client.test")
s.mail("a@sender.test")
first = [rcpt(s, "b%d@contoso.test" % i) for i in range(3)]
s.rset()
time.sleep(2.3)
s.mail("a@sender.test")
later = rcpt(s, "b9@contoso.test")
s.quit()
print(json.dumps({"first": first, "later": later}))
"#,
        &[&sim.port(0)],
    );
    assert_eq!(
        r["first"][0],
        serde_json::json!([250, "2.1.5 Recipient OK"])
    );
    assert_eq!(r["first"][1][0], 250);
    assert_eq!(r["first"][2][0], 451);
    let text = r["first"][2][1].as_str().unwrap();
    assert!(
        text.starts_with(
            "4.7.500 Server busy. Please try again later from [127.0.0.2]. (S77714) ["
        ),
        "{text}"
    );
    assert_ms_trailer(text);
    // One second of penalty, then the bucket has refilled.
    assert_eq!(r["later"][0], 250);
}

#[test]
fn hammering_keeps_an_ip_throttled_while_a_patient_one_recovers() {
    let sim = Sim::start(&[
        "--per-ip-rate",
        "60/min",
        "--burst",
        "1",
        "--penalty-secs",
        "1",
        "--retry-penalty-secs",
        "1",
    ]);
    let r = py(
        r#"
port = sys.argv[1]
patient, hammer = connect(port, "127.0.0.2"), connect(port, "127.0.0.3")
for s in (patient, hammer):
    s.ehlo("c.test"); s.mail("a@s.test")
    rcpt(s, "x@y.test"); assert rcpt(s, "x2@y.test")[0] == 451
t0 = time.time()
hammered = []
while time.time() - t0 < 1.5:
    hammered.append(rcpt(hammer, "x@y.test")[0])
    time.sleep(0.1)
print(json.dumps({"hammered": hammered, "patient": rcpt(patient, "x@y.test")[0],
                  "hammer": rcpt(hammer, "x@y.test")[0]}))
"#,
        &[&sim.port(0)],
    );
    assert!(r["hammered"].as_array().unwrap().iter().all(|c| c == 451));
    assert_eq!(r["patient"], 250, "{r}");
    // ~14 retries each added a second: still throttled well after the base penalty.
    assert_eq!(r["hammer"], 451, "{r}");
}

#[test]
fn the_budget_is_shared_across_listen_addresses_and_connections_are_capped() {
    let sim = Sim::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--burst",
        "2",
        "--per-ip-connections",
        "2",
    ]);
    let r = py(
        r#"
a, b = connect(sys.argv[1]), connect(sys.argv[2])
for s in (a, b):
    s.ehlo("c.test"); s.mail("a@s.test")
res = [rcpt(a, "x@tenant-a.test")[0], rcpt(b, "y@tenant-b.test")[0], rcpt(b, "z@tenant-b.test")[0]]
try:
    connect(sys.argv[1])
    third = None
except smtplib.SMTPConnectError as e:
    third = [e.smtp_code, e.smtp_error.decode()]
other = connect(sys.argv[1], "127.0.0.3")
print(json.dumps({"rcpts": res, "third": third, "other": other.noop()[0]}))
"#,
        &[&sim.port(0), &sim.port(1)],
    );
    assert_eq!(r["rcpts"], serde_json::json!([250, 250, 451]));
    assert_eq!(r["third"][0], 421);
    let text = r["third"][1].as_str().unwrap();
    assert!(
        text.starts_with(
            "4.7.652 The mail server [127.0.0.2] has exceeded the maximum number of connections. (S3115)"
        ),
        "{text}"
    );
    assert_eq!(r["other"], 250);
}

#[test]
fn ehlo_advertises_extensions_and_starttls_works_with_the_generated_certificate() {
    let sim = Sim::start(&["--profile", "accept"]);
    let r = py(
        r#"
s = connect(sys.argv[1])
code, before = s.ehlo("c.test")
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
tls = s.starttls(context=ctx)[0]
code, after = s.ehlo("c.test")
refused = s.sendmail("a@s.test", ["r@y.test"], "Message-ID: <t1@s.test>\r\n\r\nhi\r\n")
print(json.dumps({"before": before.decode(), "tls": tls, "after": after.decode(),
                  "refused": refused, "cipher": s.sock.cipher()[1]}))
"#,
        &[&sim.port(0)],
    );
    assert_eq!(
        r["before"],
        "sink.mxpace.test Hello [127.0.0.2]\nPIPELINING\nSIZE 52428800\n8BITMIME\nSTARTTLS\nENHANCEDSTATUSCODES"
    );
    assert_eq!(r["tls"], 220);
    assert!(!r["after"].as_str().unwrap().contains("STARTTLS"));
    assert_eq!(r["refused"], serde_json::json!({}));
    assert!(r["cipher"].as_str().unwrap().starts_with("TLS"));
}

#[test]
fn bad_input_gets_500_501_503_and_nothing_crashes() {
    let sim = Sim::start(&["--profile", "accept", "--max-connections", "5"]);
    let r = py(
        r#"
port = int(sys.argv[1])
def raw(lines):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = c.makefile("rb")
    f.readline()
    out = []
    c.sendall(b"".join(lines))  # all pipelined in one write
    for _ in lines:
        out.append(f.readline().decode().rstrip("\r\n"))
    c.close()
    return out
time.sleep(0.1)
answers = raw([b"HELO c.test\r\n", b"X" * 1200 + b"\r\n", b"MAIL FROM:bad\r\n",
               b"DATA\r\n", b"RCPT TO:<a@b.test>\r\n", b"\xff\xfe\x00garbage\r\n", b"MAIL FROM:<a@s.test>\r\n",
               b"MAIL FROM:<a@s.test>\r\n", b"RCPT TO:<>\r\n", b"NOOP\r\n"])
# A flood of connections beyond --max-connections: refused with 421, the server lives on.
time.sleep(0.3)
flood = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(12)]
banners = [c.makefile("rb").readline().decode()[:3] for c in flood]
for c in flood: c.close()
time.sleep(0.3)
s = connect(port)
print(json.dumps({"answers": answers, "banners": sorted(banners), "after": s.noop()[0]}))
"#,
        &[&sim.port(0)],
    );
    let a: Vec<&str> = r["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(a[0], "250 sink.mxpace.test Hello [127.0.0.1]");
    assert_eq!(a[1], "500 5.5.2 Error: line too long");
    assert_eq!(
        a[2],
        "501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]"
    );
    assert_eq!(a[3], "503 5.5.1 Error: need MAIL command");
    assert_eq!(a[4], "503 5.5.1 Error: need MAIL command");
    assert_eq!(a[5], "500 5.5.2 Error: command not recognized");
    assert_eq!(a[6], "250 2.1.0 Ok");
    assert_eq!(a[7], "503 5.5.1 Error: nested MAIL command");
    assert!(a[8].starts_with("501 5.1.3"), "{}", a[8]);
    assert_eq!(a[9], "250 2.0.0 Ok");
    let banners = r["banners"].as_array().unwrap();
    assert_eq!(banners.iter().filter(|b| *b == "220").count(), 5);
    assert_eq!(banners.iter().filter(|b| *b == "421").count(), 7);
    assert_eq!(r["after"], 250);
}

#[test]
fn swaks_sees_the_exact_script_and_blocklist_replies() {
    let sim = Sim::start(&["--profile", "script"]);
    let microsoft = Sim::start(&["--profile", "microsoft", "--blocklist", "127.0.0.6"]);
    let swaks = |port: &str, to: &str, src: &str| {
        run(
            "swaks",
            &[
                "--server",
                "127.0.0.1",
                "--port",
                port,
                "--local-interface",
                src,
                "--from",
                "a@sender.test",
                "--to",
                to,
                "--timeout",
                "20",
            ],
            "",
            60,
        )
    };
    let out = swaks(&sim.port(0), "550@x.test", "127.0.0.2");
    assert!(
        out.contains(
            "<** 550 5.1.1 <550@x.test>: Recipient address rejected (script directive 550)"
        ),
        "{out}"
    );
    for attempt in 1..=2 {
        let out = swaks(&sim.port(0), "tempfail+2@x.test", "127.0.0.2");
        let want = format!(
            "<** 451 4.3.0 <tempfail+2@x.test>: Temporary failure {attempt} of 2 (script directive tempfail)"
        );
        assert!(out.contains(&want), "{out}");
    }
    let out = swaks(&sim.port(0), "tempfail+2@x.test", "127.0.0.2");
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    let out = swaks(&microsoft.port(0), "ok@x.test", "127.0.0.6");
    assert!(
        out.contains("<** 550 5.7.1 Unfortunately, messages from [127.0.0.6] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150)."),
        "{out}"
    );
}

#[test]
fn gmail_multi_line_421_closes_the_connection() {
    let sim = Sim::start(&[
        "--profile",
        "gmail",
        "--burst",
        "1",
        "--per-ip-rate",
        "1/min",
    ]);
    let r = py(
        r#"
s = connect(sys.argv[1])
s.ehlo("c.test"); s.mail("a@s.test")
ok = rcpt(s, "u@gmail.test")
deferred = rcpt(s, "v@gmail.test")
try:
    s.noop(); closed = False
except smtplib.SMTPServerDisconnected:
    closed = True
print(json.dumps({"ok": ok[0], "deferred": deferred, "closed": closed}))
"#,
        &[&sim.port(0)],
    );
    assert_eq!(r["ok"], 250);
    assert_eq!(r["deferred"][0], 421);
    let lines: Vec<&str> = r["deferred"][1].as_str().unwrap().split('\n').collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(
        lines[0],
        "4.7.28 [127.0.0.2] Our system has detected an unusual rate of unsolicited mail"
    );
    assert!(lines[4].starts_with("4.7.28 Bulk Email Senders Guidelines. "));
    assert!(lines[4].ends_with(" - gsmtp"));
    assert_eq!(r["closed"], true);
}

#[test]
fn the_ledger_counts_accepted_unique_duplicates_and_deferrals() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let sim = Sim::start(&["--profile", "script", "--ledger", ledger.to_str().unwrap()]);
    let r = py(
        r#"
import os
ledger = sys.argv[2]
s = connect(sys.argv[1])
for i in range(5):
    s.sendmail("a@s.test", ["r1@y.test", "r2@y.test"], "Message-ID: <m%d@s.test>\r\nSubject: x\r\n\r\nbody\r\n" % i)
# The 250 came back: the line must already be in the file.
in_file = sum(1 for l in open(ledger) if '"m4@s.test' in l or '<m4@s.test>' in l)
# The same message again (a sender that retried after losing the 250): duplicates.
s.sendmail("a@s.test", ["r1@y.test", "r2@y.test"], "Message-ID: <m0@s.test>\r\n\r\nbody\r\n")
try:
    s.sendmail("a@s.test", ["tempfail+1@y.test"], "Message-ID: <m9@s.test>\r\n\r\nbody\r\n")
except smtplib.SMTPRecipientsRefused:
    pass
try:
    s.sendmail("a@s.test", ["drop@y.test"], "Message-ID: <m8@s.test>\r\n\r\nbody\r\n")
    dropped = False
except smtplib.SMTPServerDisconnected:
    dropped = True
print(json.dumps({"in_file": in_file, "dropped": dropped}))
"#,
        &[&sim.port(0), ledger.to_str().unwrap()],
    );
    assert_eq!(
        r["in_file"], 2,
        "both recipients of m4 were in the ledger before its 250"
    );
    assert_eq!(r["dropped"], true);
    // kill -9: every acknowledged message is already in the file.
    drop(sim.guard);
    let s = stats(&ledger);
    assert_eq!(s["accepted"], 12, "{s}");
    assert_eq!(s["unique"], 10, "{s}");
    assert_eq!(s["duplicates"], 2, "{s}");
    assert_eq!(
        s["deferred"],
        serde_json::json!({"script_tempfail": 1, "script_drop": 1}),
        "{s}"
    );
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&ledger)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["message_id"], "<m0@s.test>");
    assert_eq!(first["recipient"], "r1@y.test");
    assert_eq!(first["client_ip"], "127.0.0.2");
    assert_eq!(first["listen"], sim.addrs[0].to_string().as_str());
    let t = first["time"].as_str().unwrap();
    assert!(t.ends_with('Z') && t.len() >= 20, "{t}");
}

#[test]
fn tenant_pressure_and_an_incident_on_one_host_are_set_from_the_command_line() {
    let sim = Sim::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.4:0",
        "--tenant-pressure",
        "busy.test",
        "--incident",
        "1",
        "--incident-host",
        "127.0.0.4",
        "--host-name",
        "127.0.0.4=tenant-b.mail.protection.outlook.com",
    ]);
    let r = py(
        r#"
def at(host, port, src):
    s = smtplib.SMTP(host, int(port), source_address=(src, 0), timeout=20)
    s.ehlo("c.test"); s.mail("a@s.test")
    return s
calm = at("127.0.0.1", sys.argv[1], "127.0.0.2")
out = {"busy": rcpt(calm, "x@busy.test"), "calm": rcpt(calm, "x@calm.test")[0]}
hit = at("127.0.0.4", sys.argv[2], "127.0.0.3")
out["incident"] = rcpt(hit, "x@calm.test")
print(json.dumps(out))
"#,
        &[&sim.port(0), &sim.port(1)],
    );
    assert_eq!(
        r["busy"],
        serde_json::json!([450, "4.7.3 Organization queue quota exceeded."])
    );
    assert_eq!(r["calm"], 250);
    assert_eq!(r["incident"][0], 451);
    let text = r["incident"][1].as_str().unwrap();
    assert!(
        text.starts_with(
            "4.7.500 Server busy. Please try again later from [127.0.0.3]. (S77714) [tenant-b.mail.protection.outlook.com "
        ),
        "{text}"
    );
}
