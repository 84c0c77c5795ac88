//! Helpers shared by the relay test files: a kill-on-drop guard, polling with a
//! timeout, and starting `mxpace relay` and `mxpace sim` on free ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
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
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let mut smtp = None;
    let mut http = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("smtp ") {
            smtp = Some(a.parse().unwrap());
        } else if let Some(a) = line.strip_prefix("http ") {
            http = Some(a.parse().unwrap());
        } else if line == "ready" {
            break;
        }
    }
    // Keep draining stdout so the relay never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let smtp = smtp.expect("relay printed no smtp address (did it fail to start?)");
    (guard, smtp, http)
}

/// Starts `mxpace sim ARGS...` and reads its `listening on ADDR` line.
/// Returns the guard and the address it listens on.
// Not every test file that shares this module starts a sim.
#[allow(dead_code)]
pub fn spawn_sim(args: &[&str]) -> (Guard, SocketAddr) {
    let mut child = Command::new(BIN)
        .arg("sim")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting mxpace sim");
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("mxpace sim printed nothing (did it fail to start?)")
        .unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line from mxpace sim: {first}"))
        .parse()
        .unwrap();
    // Keep draining stdout so the sim never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (guard, addr)
}
