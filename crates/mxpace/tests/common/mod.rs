//! Helpers shared by the relay test files: a kill-on-drop guard, polling with a
//! timeout, and starting `mxpace relay` and `mxpace sim` on free ports.

// Each test file compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mxpace");

/// Kills the child when dropped (also on panic).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 50 ms until it is true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long a child may take to print its startup lines.
const STARTUP: Duration = Duration::from_secs(30);

/// The lines a child prints on stdout, read on a thread that keeps draining the pipe
/// (so the child never blocks on a full pipe), with a timeout per line.
pub struct Output(mpsc::Receiver<String>);

impl Output {
    /// Takes the child's piped stdout.
    pub fn of(child: &mut Child) -> Output {
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The test may have stopped listening; keep draining regardless.
                let _ = tx.send(line);
            }
        });
        Output(rx)
    }

    /// The next line; panics naming `what` if none comes within the startup time or
    /// the child closed its stdout (exited).
    pub fn line(&self, what: &str) -> String {
        match self.0.recv_timeout(STARTUP) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("timed out after {STARTUP:?} waiting for {what}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the child exited before printing {what} (did it fail to start?)")
            }
        }
    }
}

/// Starts `mxpace relay --config CONFIG` in `dir` and waits for its `ready` line.
/// Returns the guard, the SMTP address and the HTTP address (when configured).
pub fn spawn_relay(dir: &Path, config: &Path) -> (Guard, SocketAddr, Option<SocketAddr>) {
    let mut child = Command::new(BIN)
        .args(["relay", "--config"])
        .arg(config)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting mxpace relay");
    let output = Output::of(&mut child);
    let guard = Guard(child);
    let mut smtp = None;
    let mut http = None;
    loop {
        let line = output.line("the relay's `ready` line");
        if let Some(a) = line.strip_prefix("smtp ") {
            smtp = Some(a.parse().unwrap());
        } else if let Some(a) = line.strip_prefix("http ") {
            http = Some(a.parse().unwrap());
        } else if line == "ready" {
            break;
        }
    }
    let smtp = smtp.expect("relay printed no smtp address");
    (guard, smtp, http)
}

/// Starts `mxpace sim ARGS...` and reads its `listening on ADDR` line.
/// Returns the guard and the address it listens on.
pub fn spawn_sim(args: &[&str]) -> (Guard, SocketAddr) {
    let (guard, addrs, _) = spawn_sim_listening(args, 1);
    (guard, addrs[0])
}

/// Starts `mxpace sim ARGS...` and reads `count` `listening on ADDR` lines (one per
/// `--listen`). Returns the guard, the addresses in order, and the rest of its output.
pub fn spawn_sim_listening(args: &[&str], count: usize) -> (Guard, Vec<SocketAddr>, Output) {
    let mut child = Command::new(BIN)
        .arg("sim")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting mxpace sim");
    let output = Output::of(&mut child);
    let guard = Guard(child);
    let addrs = (0..count)
        .map(|_| {
            let line = output.line("the sim's `listening on` line");
            line.strip_prefix("listening on ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("unexpected line from mxpace sim: {line}"))
                .parse()
                .unwrap()
        })
        .collect();
    (guard, addrs, output)
}

/// Runs `python3 -c SCRIPT ARGS...` (an independent client or parser) and returns its
/// stdout; panics naming `what`, with Python's stderr, when it fails.
pub fn python(what: &str, script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output()
        .expect("python3 is needed (scripts/install-deps installs its packages)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Submit `n` messages with Python's smtplib over `conns` parallel connections;
/// prints the Message-IDs the relay acknowledged with 250, one per line.
pub const PY_SUBMIT_LOAD: &str = r#"
import smtplib, sys, threading
host, port, n, conns, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lock = threading.Lock()
def worker(k):
    s = None
    for i in range(k, n, conns):
        mid = "<%s-%d@load.test>" % (tag, i)
        msg = "From: app@origin.test\r\nTo: load@example.test\r\nMessage-ID: %s\r\nSubject: load %d\r\n\r\n%s\r\n" % (mid, i, "x" * 2000)
        try:
            if s is None:
                s = smtplib.SMTP(host, port, timeout=10)
            s.sendmail("app@origin.test", ["load@example.test"], msg)
            with lock:
                print(mid, flush=True)
        except Exception:
            s = None
ts = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
[t.start() for t in ts]
[t.join() for t in ts]
"#;
