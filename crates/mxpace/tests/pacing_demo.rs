//! `mxpace demo`: runs end to end on loopback within its time bound, shows the pacing
//! view and the triage, delivers every injected message exactly once (the receiver's
//! ledger), and leaves no process or listening port behind — also when interrupted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mxpace");

/// Kills the demo when dropped (also on panic).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the demo; its stdout lines arrive on the returned channel.
fn start_demo(dir: &Path, args: &[&str]) -> (Guard, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .arg("demo")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting mxpace demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Guard(child), rx)
}

/// Waits for the demo to exit within `limit`; returns its status code and every line.
fn finish(
    guard: &mut Guard,
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    lines: &mut Vec<String>,
) -> Option<i32> {
    let start = Instant::now();
    loop {
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        if let Some(status) = guard.0.try_wait().unwrap() {
            // Collect what is still in the pipe.
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                lines.push(l);
            }
            return status.code();
        }
        assert!(
            start.elapsed() < limit,
            "mxpace demo still running after {limit:?}; output so far:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes whose command line mentions `dir` (the demo's children name files in it).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        // The demo itself (already reaped) is not counted; its children would be.
        if cmd.contains(&needle) && !cmd.contains(" demo ") {
            found.push(format!("{name}: {cmd}"));
        }
    }
    found
}

/// Addresses the demo printed for the receiver and the relay.
fn addresses(lines: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for l in lines {
        if l.starts_with("receiver") || l.starts_with("relay") {
            for word in l.split([' ', ',']) {
                if let Ok(a) = word.parse::<SocketAddr>() {
                    out.push(a);
                }
            }
        }
    }
    out
}

fn assert_nothing_left(dir: &Path, lines: &[String]) {
    let addrs = addresses(lines);
    assert!(
        addrs.len() >= 3,
        "receiver, SMTP and HTTP addresses printed: {addrs:?}"
    );
    // Children are killed and reaped before the demo exits; allow a moment anyway.
    let start = Instant::now();
    loop {
        let left = processes_mentioning(dir);
        let open: Vec<_> = addrs
            .iter()
            .filter(|a| TcpStream::connect_timeout(a, Duration::from_millis(300)).is_ok())
            .collect();
        if left.is_empty() && open.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "left behind: processes {left:?}, listening {open:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Accepted copies per recipient in the receiver's ledger.
fn ledger_accepted(dir: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(dir.join("ledger.jsonl")).expect("the ledger exists");
    let mut per = HashMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("ledger lines are JSON");
        if v.get("deferred").is_some() || v.get("rejected").is_some() {
            continue;
        }
        *per.entry(v["recipient"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    per
}

#[test]
fn the_demo_delivers_every_message_once_shows_pacing_and_triage_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let started = Instant::now();
    let (mut guard, rx) = start_demo(&dir, &["--messages", "40", "--duration", "100", "--plain"]);
    let mut lines = Vec::new();
    let code = finish(&mut guard, &rx, Duration::from_secs(115), &mut lines);
    let text = lines.join("\n");
    assert_eq!(code, Some(0), "exit status; output:\n{text}");
    assert!(started.elapsed() < Duration::from_secs(115));
    // The pacing view: a header and one row per egress IP.
    assert!(text.contains("egress"), "{text}");
    for ip in ["127.0.0.1", "127.0.0.2"] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("  {ip:<10} "))),
            "a view row for {ip}:\n{text}"
        );
    }
    assert!(text.contains("all delivered"), "{text}");
    // The pacing reacted: the relay cut the path of the IP the receiver throttles, with
    // the reply that moved it, and the view showed that path's state.
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let cuts: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["type"] == "pacing"
                && e["source_ip"] == "127.0.0.2"
                && matches!(e["extra"]["trigger"].as_str(), Some("slow-down" | "pause"))
        })
        .collect();
    assert!(!cuts.is_empty(), "no cut of 127.0.0.2's path:\n{events}");
    assert!(
        cuts[0]["reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("451 4.7.") && r.contains("[127.0.0.2]")),
        "{}",
        cuts[0]
    );
    assert!(
        lines.iter().any(|l| l.starts_with("  127.0.0.2  ")
            && ["paused", "slowed", "ramping"]
                .iter()
                .any(|s| l.contains(s))),
        "the view never showed 127.0.0.2's path reacting:\n{text}"
    );
    assert!(!text.contains("no pacing events"), "{text}");
    // The triage summary of the relay's own event log.
    assert!(text.contains("triage"), "{text}");
    assert!(text.contains("127.0.0.2 → microsoft"), "{text}");
    assert!(text.contains(&dir.join("events.jsonl").display().to_string()));
    // The receiver's ledger: each of the 40 injected recipients accepted exactly once.
    let accepted = ledger_accepted(&dir);
    let mut expected: Vec<String> = Vec::new();
    for i in 0..30 {
        let tenant = ["contoso.example", "fabrikam.example"][i % 2];
        expected.push(format!("bulk-{i}@{tenant}"));
    }
    for i in 0..10 {
        let tenant = ["contoso.example", "fabrikam.example"][i % 2];
        expected.push(format!("transactional-{i}@{tenant}"));
    }
    for r in &expected {
        assert_eq!(accepted.get(r), Some(&1), "{r} accepted once: {accepted:?}");
    }
    assert_eq!(accepted.len(), expected.len(), "nothing else: {accepted:?}");
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    // The relay's own retries (on a schedule compressed like the demo's clock) are no
    // retry storm, and it never bounces after a 4xx or delivers twice.
    for clean in [
        "| retry-storm | 0 |",
        "| bounce-after-4xx | 0 |",
        "| duplicate-delivery | 0 |",
    ] {
        assert!(report.contains(clean), "{clean} in\n{report}");
    }
    assert!(text.contains("dashboard http://127.0.0.1:"), "{text}");
    assert_nothing_left(&dir, &lines);
}

#[test]
fn an_interrupted_demo_exits_cleanly_and_leaves_nothing_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let (mut guard, rx) = start_demo(&dir, &["--messages", "400", "--duration", "100", "--plain"]);
    let mut lines = Vec::new();
    // Wait until the relay runs and the first view is drawn, then press Ctrl-C.
    let start = Instant::now();
    while !lines.iter().any(|l: &String| l.starts_with("[")) {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => lines.push(l),
            Err(_) => assert!(
                start.elapsed() < Duration::from_secs(60),
                "no view after 60 s:\n{}",
                lines.join("\n")
            ),
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &guard.0.id().to_string()])
        .status()
        .expect("kill(1) sends SIGINT");
    assert!(status.success());
    let code = finish(&mut guard, &rx, Duration::from_secs(30), &mut lines);
    let text = lines.join("\n");
    assert_eq!(code, Some(130), "interrupted exit status; output:\n{text}");
    assert!(text.contains("interrupted"), "{text}");
    // The directory is kept and named, with the event log so far.
    assert!(dir.join("events.jsonl").is_file());
    assert_nothing_left(&dir, &lines);
}

#[test]
fn with_pacing_off_the_demo_still_delivers_everything_once_and_no_path_is_paced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let (mut guard, rx) = start_demo(
        &dir,
        &[
            "--messages",
            "20",
            "--duration",
            "100",
            "--plain",
            "--no-pacing",
        ],
    );
    let mut lines = Vec::new();
    let code = finish(&mut guard, &rx, Duration::from_secs(115), &mut lines);
    let text = lines.join("\n");
    assert_eq!(code, Some(0), "exit status; output:\n{text}");
    assert!(
        text.contains("pacing off") && text.contains("all delivered"),
        "{text}"
    );
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(
        !events.contains("\"type\":\"pacing\""),
        "pacing events with pacing off"
    );
    let accepted = ledger_accepted(&dir);
    assert_eq!(accepted.len(), 20, "{accepted:?}");
    assert!(accepted.values().all(|&n| n == 1), "{accepted:?}");
    assert_nothing_left(&dir, &lines);
}
