//! The demo's two children, `mxpace sim` and `mxpace relay`, on free loopback ports;
//! each is killed when its guard drops.

use super::{EGRESS, TENANTS};
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process killed when dropped (also on panic and early return).
pub(super) struct ChildGuard {
    pub(super) child: Child,
    pub(super) name: &'static str,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    pub(super) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Spawn a child with stdout piped and stderr into `log`; read stdout lines until
/// `until` returns true; keep draining stdout afterwards.
pub(super) fn spawn_and_read(
    exe: &Path,
    args: &[String],
    log: &Path,
    name: &'static str,
    mut until: impl FnMut(&str) -> bool,
) -> anyhow::Result<ChildGuard> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let guard = ChildGuard { child, name };
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                if until(&line) {
                    break;
                }
            }
            _ => bail!("{} did not start; see {}", guard.name, log.display()),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(guard)
}

pub(super) fn start_sim(exe: &Path, dir: &Path) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let args: Vec<String> = [
        "sim",
        "--profile",
        "microsoft",
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "1",
        // A compressed Microsoft: a budget a demo can meet within a minute, a short
        // penalty, and one egress IP with a poor reputation (a quarter of the budget).
        "--per-ip-rate",
        "240/min",
        "--burst",
        "10",
        "--penalty-secs",
        "5",
        "--retry-penalty-secs",
        "0",
        "--reputation",
        EGRESS[1],
        "--ledger",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.join("ledger.jsonl").display().to_string()])
    .collect();
    let mut addr = None;
    let guard = spawn_and_read(exe, &args, &dir.join("sim.log"), "the receiver", |line| {
        addr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        true
    })?;
    let addr = addr.context("the receiver printed no address")?;
    Ok((guard, addr))
}

pub(super) fn relay_config(dir: &Path, sim: SocketAddr, pacing: bool) -> String {
    let d = dir.display();
    let mut routes = String::new();
    for t in TENANTS {
        routes.push_str(&format!("[route.\"{t}\"]\nhosts = [\"{sim}\"]\n\n"));
    }
    format!(
        "# Written by `mxpace demo`: loopback only, retries compressed into seconds.\n\
         [relay]\nlisten = [\"127.0.0.1:0\"]\nallow_clients = [\"127.0.0.0/8\"]\n\
         spool = \"{d}/spool\"\nevents = \"{d}/events.jsonl\"\nhttp = \"127.0.0.1:0\"\n\
         hostname = \"relay.demo.example\"\nsmtp_timeout = \"10s\"\ndefault_stream = \"transactional\"\n\n\
         [[source]]\nip = \"{}\"\nehlo = \"mta1.demo.example\"\n\n\
         [[source]]\nip = \"{}\"\nehlo = \"mta2.demo.example\"\n\n\
         {routes}\
         [retry]\nschedule = [\"1s\", \"2s\", \"4s\", \"8s\"]\nmax_age = \"10m\"\njitter = 0.2\n\n\
         [pacing]\nenabled = {pacing}\n\n\
         # The embedded pacing defaults, with their minutes compressed into seconds.\n\
         [pacing.provider.microsoft]\n\
         rate_floor = \"20/min\"\nrate_initial = \"180/min\"\nrate_ceiling = \"300/min\"\n\
         connections_initial = 2\nconnections_ceiling = 2\n\
         increase_interval = \"1s\"\nincrease_step = \"20/min\"\nprobe_after = \"5s\"\n\
         cut_holdoff = \"500ms\"\nslow_down_pause = \"1s\"\npause = \"3s\"\nmax_pause = \"10s\"\n\
         pause_memory = \"15s\"\nbreaker_cooldown = \"2s\"\nwindow = \"10s\"\nwindow_min_attempts = 10\n",
        EGRESS[0], EGRESS[1]
    )
}

pub(super) fn start_relay(
    exe: &Path,
    dir: &Path,
) -> anyhow::Result<(ChildGuard, SocketAddr, SocketAddr)> {
    let args = vec![
        "relay".to_string(),
        "--config".to_string(),
        dir.join("relay.toml").display().to_string(),
    ];
    let (mut smtp, mut http) = (None, None);
    let guard = spawn_and_read(exe, &args, &dir.join("relay.log"), "the relay", |line| {
        if let Some(a) = line.strip_prefix("smtp ") {
            smtp = a.parse().ok();
        } else if let Some(a) = line.strip_prefix("http ") {
            http = a.parse().ok();
        }
        line == "ready"
    })?;
    Ok((
        guard,
        smtp.context("the relay printed no SMTP address")?,
        http.context("the relay printed no HTTP address")?,
    ))
}
