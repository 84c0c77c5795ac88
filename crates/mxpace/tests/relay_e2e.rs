//! End-to-end tests of `mxpace relay` against real peers on loopback:
//! swaks and Python's smtplib submit, Postfix's smtp-sink receives, and a small
//! scripted receiver (below) plays the MX whose answers each test needs.
//! Every process started is killed by a Drop guard, every port is picked free.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{BIN, Guard, wait_until};

// ---------------------------------------------------------------- helpers

fn need(cmd: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/bin",
        "/usr/lib/postfix/sbin",
    ] {
        let p = Path::new(dir).join(cmd);
        if p.exists() {
            return p;
        }
    }
    panic!("{cmd} is missing: run scripts/install-deps (the test suite needs this real peer)");
}

/// A relay process with its config directory.
struct Relay {
    guard: Option<Guard>,
    smtp: SocketAddr,
    http: Option<SocketAddr>,
    dir: PathBuf,
    config: PathBuf,
}

impl Relay {
    /// Write `config` (with `{dir}` replaced) into `dir` and start the relay there.
    fn start(dir: &Path, config: &str) -> Relay {
        let path = dir.join("relay.toml");
        std::fs::write(&path, config.replace("{dir}", &dir.display().to_string())).unwrap();
        Relay::start_existing(dir, &path)
    }

    fn start_existing(dir: &Path, config: &Path) -> Relay {
        let (guard, smtp, http) = common::spawn_relay(dir, config);
        Relay {
            guard: Some(guard),
            smtp,
            http,
            dir: dir.to_owned(),
            config: config.to_owned(),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut g) = self.guard.take() {
            // SIGKILL: no chance to clean up, as in a crash.
            let _ = g.0.kill();
            let _ = g.0.wait();
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("events.jsonl")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("event line is JSON"))
            .collect()
    }

    fn events_for(&self, rcpt: &str, kind: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["recipient"] == rcpt && e["type"] == kind)
            .collect()
    }

    /// The receiver can see a message before the relay has committed the outcome and
    /// written its `attempt` event, so tests that read events after a delivery wait here.
    fn wait_delivered_event(&self, rcpt: &str) {
        wait_until(
            &format!("the delivered attempt event for {rcpt}"),
            Duration::from_secs(10),
            || {
                self.events_for(rcpt, "attempt")
                    .iter()
                    .any(|e| e["outcome"] == "delivered")
            },
        );
    }

    fn mxpace(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

fn base_config(routes: &[(&str, Vec<SocketAddr>)], extra: &str) -> String {
    let mut c = String::from(
        "[relay]\nlisten = [\"127.0.0.1:0\"]\nallow_clients = [\"127.0.0.0/8\"]\n\
         spool = \"{dir}/spool\"\nevents = \"{dir}/events.jsonl\"\nhostname = \"relay.test\"\n\
         smtp_timeout = \"10s\"\n",
    );
    c.push_str(extra);
    c.push_str("\n[[source]]\nip = \"127.0.0.2\"\nehlo = \"mta1.example.test\"\n");
    for (domain, hosts) in routes {
        let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        c.push_str(&format!(
            "\n[route.\"{domain}\"]\nhosts = [{}]\n",
            hosts.join(", ")
        ));
    }
    c
}

/// Pacing (on by default) with rests short enough for tests of retries: a
/// `451 4.7.500 … from [IP]` deferral still cuts the path, but it rests 100 ms
/// instead of a minute, and the floor rate (which spaces the release of held
/// mail) is 10/s; mail held while the breaker's probe is out asks again after
/// 200 ms (the increase interval).
macro_rules! fast_pacing {
    () => {
        "\n[pacing.default]\nslow_down_pause = \"100ms\"\npause = \"100ms\"\n\
         breaker_cooldown = \"100ms\"\nincrease_interval = \"200ms\"\nrate_floor = \"600/min\"\nrate_initial = \"6000/min\"\nrate_ceiling = \"6000/min\"\n\
         [pacing.provider.microsoft]\nslow_down_pause = \"100ms\"\npause = \"100ms\"\n"
    };
}

/// Quick retries, with [`fast_pacing`].
const FAST_RETRY: &str = concat!(
    "\n[retry]\nschedule = [\"300ms\", \"600ms\"]\nmax_age = \"60s\"\njitter = 0.0\n",
    fast_pacing!()
);

/// [`base_config`] with both test domains (`example.test`, the recipients', and
/// `origin.test`, the senders', where DSNs go) routed to `mx`.
fn base_config_via(mx: SocketAddr, extra: &str) -> String {
    base_config(
        &[("example.test", vec![mx]), ("origin.test", vec![mx])],
        extra,
    )
}

/// Submit one message with swaks; returns its output (asserting success when `expect_ok`).
fn swaks(server: SocketAddr, from: &str, to: &str, extra: &[&str], expect_ok: bool) -> String {
    let out = Command::new(need("swaks"))
        .args(["--server", &server.to_string(), "--from", from, "--to", to])
        .args(["--timeout", "20"])
        .args(extra)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if expect_ok {
        assert!(out.status.success(), "swaks failed:\n{text}");
    }
    text
}

// ------------------------------------------------ a scripted receiving MX

/// What the scripted MX received.
#[derive(Default)]
struct MxLog {
    /// (recipient, envelope sender, message) per accepted recipient.
    accepted: Vec<(String, String, String)>,
    /// Transactions seen per recipient (RCPT commands).
    rcpt_seen: HashMap<String, u32>,
    /// EHLO names and peer addresses seen.
    ehlo: Vec<(String, SocketAddr)>,
}

/// Answers per recipient local part: `tempfail+N` → 451 4.7.500 for the first
/// N tries; `always451` → always 451; `reject` → 550 5.1.1; `drop+N` → close
/// the connection after the message body (no reply) for the first N tries;
/// anything else → accepted.
struct ScriptedMx {
    addr: SocketAddr,
    log: Arc<Mutex<MxLog>>,
}

impl ScriptedMx {
    fn start() -> ScriptedMx {
        ScriptedMx::start_on("127.0.0.1:0")
    }

    fn start_on(addr: &str) -> ScriptedMx {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(MxLog::default()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = l2.clone();
                std::thread::spawn(move || {
                    let _ = serve_scripted(conn, &log);
                });
            }
        });
        ScriptedMx { addr, log }
    }

    fn accepted_for(&self, rcpt: &str) -> Vec<(String, String, String)> {
        let log = self.log.lock().unwrap();
        log.accepted
            .iter()
            .filter(|a| a.0 == rcpt)
            .cloned()
            .collect()
    }
}

fn serve_scripted(conn: TcpStream, log: &Mutex<MxLog>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let peer = conn.peer_addr()?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 mx.scripted.test ESMTP\r\n")?;
    let mut sender = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut drop_after_data = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let arg = |l: &str| {
            l.split_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(a, _)| a.to_ascii_lowercase())
                .unwrap_or_default()
        };
        if upper.starts_with("EHLO") {
            log.lock()
                .unwrap()
                .ehlo
                .push((line[5..].trim().to_owned(), peer));
            w.write_all(
                b"250-mx.scripted.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 50000000\r\n",
            )?;
        } else if upper.starts_with("MAIL") {
            sender = arg(&line);
            rcpts.clear();
            drop_after_data = false;
            w.write_all(b"250 2.1.0 Ok\r\n")?;
        } else if upper.starts_with("RCPT") {
            let rcpt = arg(&line);
            let local = rcpt.split('@').next().unwrap_or("").to_owned();
            let seen = {
                let mut l = log.lock().unwrap();
                let n = l.rcpt_seen.entry(rcpt.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let limit = |prefix: &str| {
                local
                    .strip_prefix(prefix)
                    .and_then(|n| n.parse::<u32>().ok())
            };
            if let Some(n) = limit("tempfail+")
                && seen <= n
            {
                w.write_all(b"451 4.7.500 Server busy. Please try again later from [127.0.0.2]. (S77714) [mx.scripted.test]\r\n")?;
            } else if local == "always451" {
                w.write_all(b"451 4.3.2 Try again later\r\n")?;
            } else if local == "reject" {
                w.write_all(b"550 5.1.1 <reject>: Recipient address rejected: User unknown\r\n")?;
            } else {
                if let Some(n) = limit("drop+")
                    && seen <= n
                {
                    drop_after_data = true;
                }
                rcpts.push(rcpt);
                w.write_all(b"250 2.1.5 Ok\r\n")?;
            }
        } else if upper.starts_with("DATA") {
            if rcpts.is_empty() {
                w.write_all(b"554 5.5.1 No valid recipients\r\n")?;
                continue;
            }
            w.write_all(b"354 go ahead\r\n")?;
            let mut body = String::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l)? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                body.push_str(&l);
            }
            if drop_after_data {
                return Ok(()); // connection lost before the final reply
            }
            {
                let mut lg = log.lock().unwrap();
                for rc in &rcpts {
                    lg.accepted.push((rc.clone(), sender.clone(), body.clone()));
                }
            }
            w.write_all(b"250 2.0.0 Ok: queued\r\n")?;
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            w.write_all(b"250 2.0.0 Ok\r\n")?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"502 5.5.2 Error: command not recognized\r\n")?;
        }
    }
}

/// An address where nothing listens (connection refused).
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ----------------------------------------------------------------- tests

#[test]
fn minimal_config_from_the_issue_relays_to_smtp_sink() {
    let smtp_sink = need("smtp-sink");
    need("swaks");
    let dir = tempfile::tempdir().unwrap();
    // smtp-sink drops privileges to nobody; give it a place it may write.
    let dump = dir.path().join("sink");
    std::fs::create_dir(&dump).unwrap();
    Command::new("chmod")
        .arg("777")
        .arg(&dump)
        .status()
        .unwrap();
    // The issue's config, with only the two fixed ports made free ones.
    let sink_port = dead_addr().port();
    let _sink = Guard(
        Command::new(smtp_sink)
            .args(["-u", "nobody", "-D"])
            .arg(dump.join("all"))
            .arg(format!("127.0.0.1:{sink_port}"))
            .arg("100")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = format!(
        r#"[relay]
listen = ["127.0.0.1:0"]
allow_clients = ["127.0.0.0/8"]
spool = "./spool"
events = "./events.jsonl"

[[source]]
ip = "127.0.0.2"
ehlo = "mta1.example.test"

[route."example.test"]
hosts = ["127.0.0.1:{sink_port}"]

[retry]
schedule = ["1s", "2s", "4s"]
max_age = "30s"
"#
    );
    let relay = Relay::start(dir.path(), &config);
    swaks(
        relay.smtp,
        "app@origin.test",
        "user@example.test",
        &[
            "--header",
            "X-Mxpace-Stream: bulk",
            "--header",
            "Subject: minimal",
        ],
        true,
    );
    wait_until("delivery to smtp-sink", Duration::from_secs(20), || {
        !relay.events_for("user@example.test", "attempt").is_empty()
            && relay.events_for("user@example.test", "attempt")[0]["outcome"] == "delivered"
    });
    let e = &relay.events_for("user@example.test", "attempt")[0];
    assert_eq!(e["source_ip"], "127.0.0.2");
    assert_eq!(e["ehlo"], "mta1.example.test");
    assert_eq!(e["stream"], "bulk");
    assert_eq!(e["attempt"], 1);
    assert!(e["reply"].as_str().unwrap().starts_with("250"));
    assert!(e["verdict"].is_object());
    let received = &relay.events_for("user@example.test", "received")[0];
    assert_eq!(received["queue_id"], e["queue_id"]);
    // smtp-sink writes its dump when the session ends.
    wait_until("smtp-sink dump", Duration::from_secs(10), || {
        std::fs::read_to_string(dump.join("all")).is_ok_and(|t| t.contains("Subject: minimal"))
    });
    let dumped = std::fs::read_to_string(dump.join("all")).unwrap();
    assert!(
        !dumped.contains("X-Mxpace-Stream"),
        "stream header is removed before delivery"
    );
}

#[test]
fn defer_then_accept_delivers_exactly_once() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &base_config(&[("example.test", vec![mx.addr])], FAST_RETRY),
    );
    swaks(
        relay.smtp,
        "app@origin.test",
        "tempfail+2@example.test",
        &[],
        true,
    );
    wait_until(
        "delivery after two deferrals",
        Duration::from_secs(20),
        || mx.accepted_for("tempfail+2@example.test").len() == 1,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        mx.accepted_for("tempfail+2@example.test").len(),
        1,
        "exactly once"
    );
    let attempts = relay.events_for("tempfail+2@example.test", "attempt");
    let outcomes: Vec<_> = attempts.iter().map(|e| e["outcome"].clone()).collect();
    assert_eq!(outcomes, ["deferred", "deferred", "delivered"]);
    let numbers: Vec<_> = attempts
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    let reply = attempts[0]["reply"].as_str().unwrap();
    assert!(reply.starts_with("451 4.7.500 Server busy"), "{reply}");
    assert_eq!(attempts[0]["verdict"]["action"], "retry");
    assert!(
        relay
            .events_for("tempfail+2@example.test", "dsn")
            .is_empty()
    );
}

#[test]
fn permanent_5xx_bounces_with_a_dsn_to_the_sender() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &base_config_via(mx.addr, FAST_RETRY));
    swaks(
        relay.smtp,
        "app@origin.test",
        "reject@example.test",
        &["--header", "Subject: doomed"],
        true,
    );
    wait_until("the DSN at the sender", Duration::from_secs(20), || {
        !mx.accepted_for("app@origin.test").is_empty()
    });
    let (_, env_from, dsn) = mx.accepted_for("app@origin.test").remove(0);
    assert_eq!(env_from, "", "DSNs use the null sender");
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; reject@example.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(dsn.contains("Action: failed"));
    assert!(
        dsn.contains("Subject: doomed"),
        "original headers are returned"
    );
    let attempts = relay.events_for("reject@example.test", "attempt");
    assert_eq!(attempts.len(), 1, "a 5xx is not retried");
    assert_eq!(attempts[0]["outcome"], "bounced");
    assert_eq!(relay.events_for("reject@example.test", "dsn").len(), 1);
}

#[test]
fn max_age_expiry_sends_a_dsn() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &base_config_via(
            mx.addr,
            // Retries every 500 ms within 4 s (on a loaded machine the first try
            // alone may take a second), with pacing on the same time scale (its
            // defaults start a new path at 1 msg/s).
            concat!(
                "\n[retry]\nschedule = [\"500ms\"]\nmax_age = \"4s\"\njitter = 0.0\n",
                fast_pacing!()
            ),
        ),
    );
    swaks(
        relay.smtp,
        "app@origin.test",
        "always451@example.test",
        &[],
        true,
    );
    wait_until("the expiry DSN", Duration::from_secs(20), || {
        !mx.accepted_for("app@origin.test").is_empty()
    });
    let (_, _, dsn) = mx.accepted_for("app@origin.test").remove(0);
    assert!(dsn.contains("Status: 4.4.7"), "{dsn}");
    assert!(
        dsn.contains("451 4.3.2 Try again later"),
        "last reply is quoted: {dsn}"
    );
    let expired = relay.events_for("always451@example.test", "expired");
    assert_eq!(expired.len(), 1);
    let attempts = relay.events_for("always451@example.test", "attempt");
    assert!(
        attempts.len() >= 3,
        "retried until max age: {}",
        attempts.len()
    );
    assert!(
        attempts.iter().all(|e| e["outcome"] == "deferred"),
        "a 4xx never bounces"
    );
}

#[test]
fn falls_back_to_the_next_mx_when_the_first_is_down() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &base_config(&[("example.test", vec![dead_addr(), mx.addr])], FAST_RETRY),
    );
    swaks(relay.smtp, "app@origin.test", "u@example.test", &[], true);
    wait_until(
        "delivery via the second MX",
        Duration::from_secs(20),
        || mx.accepted_for("u@example.test").len() == 1,
    );
    relay.wait_delivered_event("u@example.test");
    let attempts = relay.events_for("u@example.test", "attempt");
    assert_eq!(attempts.len(), 1, "fallback happens within one attempt");
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[0]["peer_ip"], "127.0.0.1");
    // The source pool's address and EHLO name were used.
    let log = mx.log.lock().unwrap();
    assert_eq!(log.ehlo[0].0, "mta1.example.test");
    assert_eq!(log.ehlo[0].1.ip().to_string(), "127.0.0.2");
}

#[test]
fn recipients_of_one_message_are_tracked_separately() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &base_config_via(mx.addr, FAST_RETRY));
    swaks(
        relay.smtp,
        "app@origin.test",
        "ok@example.test,tempfail+1@example.test,reject@example.test",
        &[],
        true,
    );
    wait_until(
        "both deliverable recipients",
        Duration::from_secs(20),
        || {
            mx.accepted_for("tempfail+1@example.test").len() == 1
                && !mx.accepted_for("app@origin.test").is_empty()
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        mx.accepted_for("ok@example.test").len(),
        1,
        "a delivered recipient is never sent again"
    );
    assert_eq!(mx.accepted_for("tempfail+1@example.test").len(), 1);
    assert_eq!(mx.log.lock().unwrap().rcpt_seen["ok@example.test"], 1);
    let (_, _, dsn) = mx.accepted_for("app@origin.test").remove(0);
    assert!(dsn.contains("reject@example.test"));
    assert!(!dsn.contains("Final-Recipient: rfc822; ok@example.test"));
}

#[test]
fn connection_lost_mid_data_is_retried_not_lost() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &base_config(&[("example.test", vec![mx.addr])], FAST_RETRY),
    );
    swaks(
        relay.smtp,
        "app@origin.test",
        "drop+1@example.test",
        &[],
        true,
    );
    wait_until(
        "delivery after the lost connection",
        Duration::from_secs(20),
        || mx.accepted_for("drop+1@example.test").len() == 1,
    );
    relay.wait_delivered_event("drop+1@example.test");
    let attempts = relay.events_for("drop+1@example.test", "attempt");
    assert_eq!(attempts[0]["outcome"], "connection-failed");
    assert_eq!(attempts[1]["outcome"], "delivered");
    assert_eq!(attempts[1]["attempt"], 2);
}

#[test]
fn a_client_outside_allow_clients_cannot_relay() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&[("example.test", vec![mx.addr])], FAST_RETRY).replace(
        "allow_clients = [\"127.0.0.0/8\"]",
        "allow_clients = [\"127.0.0.9/32\"]",
    );
    let relay = Relay::start(dir.path(), &config);
    let out = swaks(relay.smtp, "spam@evil.test", "u@example.test", &[], false);
    assert!(
        out.contains("530 5.7.0") || out.contains("554 5.7.1"),
        "{out}"
    );
    // From an allowed address it works.
    swaks(
        relay.smtp,
        "app@origin.test",
        "u@example.test",
        &["--local-interface", "127.0.0.9"],
        true,
    );
    wait_until("the allowed message", Duration::from_secs(20), || {
        mx.accepted_for("u@example.test").len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let senders: Vec<_> = mx
        .accepted_for("u@example.test")
        .into_iter()
        .map(|a| a.1)
        .collect();
    assert_eq!(
        senders,
        ["app@origin.test"],
        "the refused client queued nothing"
    );
}

#[test]
fn starttls_then_auth_lets_a_remote_user_submit() {
    let openssl = need("openssl");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    make_cert(&openssl, dir.path());
    // The password is stored as the Argon2id hash `mxpace hash-password` prints.
    let mut hasher = Command::new(env!("CARGO_BIN_EXE_mxpace"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hasher.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let hashed = hasher.wait_with_output().unwrap();
    assert!(hashed.status.success());
    let phc = String::from_utf8(hashed.stdout).unwrap();
    assert!(
        phc.starts_with("$argon2id$") && !phc.contains("s3cret"),
        "{phc}"
    );
    let config = base_config(&[("example.test", vec![mx.addr])], FAST_RETRY)
        .replace("allow_clients = [\"127.0.0.0/8\"]", "allow_clients = []")
        + "\n[tls]\ncert = \"{dir}/cert.pem\"\nkey = \"{dir}/key.pem\"\n\n[[user]]\nname = \"app1\"\n"
        + &format!("password_hash = \"{}\"\nstream = \"bulk\"\n", phc.trim());
    let relay = Relay::start(dir.path(), &config);
    let out = Command::new("python3")
        .args([
            "-c",
            PY_TLS_AUTH,
            "127.0.0.1",
            &relay.smtp.port().to_string(),
        ])
        .output()
        .expect("python3 is needed as a submitting client");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("no-auth-in-plain-ehlo True"), "{text}");
    assert!(lines[1].starts_with("auth-before-tls 538"), "{text}");
    assert!(
        lines[2].starts_with("unauthenticated-rcpt 5"),
        "not an open relay: {text}"
    );
    assert!(lines[3].starts_with("wrong-password 535"), "{text}");
    assert!(lines[4].starts_with("PLAIN 235"), "{text}");
    assert!(lines[5].starts_with("LOGIN 235"), "{text}");
    wait_until(
        "both authenticated messages",
        Duration::from_secs(20),
        || mx.accepted_for("u@example.test").len() == 2,
    );
    let (_, _, body) = mx.accepted_for("u@example.test").remove(0);
    assert!(body.contains("with ESMTPSA"), "{body}");
    relay.wait_delivered_event("u@example.test");
    let e = &relay.events_for("u@example.test", "attempt")[0];
    assert_eq!(e["stream"], "bulk", "the user's stream applies");
}

fn make_cert(openssl: &Path, dir: &Path) {
    let ok = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=relay.test",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl could not make a test certificate");
}

#[test]
fn egress_uses_starttls_when_the_receiver_offers_it() {
    need("swaks");
    let openssl = need("openssl");
    let mx = ScriptedMx::start();
    // The receiving side is a second relay with a certificate (it offers STARTTLS).
    let dir_b = tempfile::tempdir().unwrap();
    make_cert(&openssl, dir_b.path());
    let config_b = base_config(&[("example.test", vec![mx.addr])], FAST_RETRY)
        + "\n[tls]\ncert = \"{dir}/cert.pem\"\nkey = \"{dir}/key.pem\"\n";
    let relay_b = Relay::start(dir_b.path(), &config_b);
    let dir_a = tempfile::tempdir().unwrap();
    let relay_a = Relay::start(
        dir_a.path(),
        &base_config(&[("example.test", vec![relay_b.smtp])], FAST_RETRY),
    );
    swaks(
        relay_a.smtp,
        "app@origin.test",
        "tls@example.test",
        &[],
        true,
    );
    wait_until(
        "delivery through both relays",
        Duration::from_secs(20),
        || mx.accepted_for("tls@example.test").len() == 1,
    );
    relay_a.wait_delivered_event("tls@example.test");
    let e = &relay_a.events_for("tls@example.test", "attempt")[0];
    assert_eq!(e["outcome"], "delivered");
    assert_eq!(e["extra"]["tls"], true, "{e}");
    let (_, _, body) = mx.accepted_for("tls@example.test").remove(0);
    assert!(
        body.contains("with ESMTPS"),
        "relay B saw a TLS session: {body}"
    );
}

/// STARTTLS + AUTH with Python's smtplib (an independent client and TLS stack).
const PY_TLS_AUTH: &str = r#"
import smtplib, ssl, sys, base64
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, port, timeout=10); s.ehlo()
print("no-auth-in-plain-ehlo", not s.has_extn("auth"))
code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0app1\0s3cret").decode())
print("auth-before-tls", code)
s.starttls(context=ctx); s.ehlo()
code, _ = s.docmd("MAIL", "FROM:<app@origin.test>")
if code == 250:
    code, _ = s.docmd("RCPT", "TO:<u@example.test>")
print("unauthenticated-rcpt", code)
s.rset()
try:
    s.login("app1", "nope")
    print("wrong-password 235")
except smtplib.SMTPAuthenticationError as e:
    print("wrong-password", e.smtp_code)
s.quit()
for mech in ["PLAIN", "LOGIN"]:
    s = smtplib.SMTP(host, port, timeout=10); s.starttls(context=ctx); s.ehlo()
    s.user, s.password = "app1", "s3cret"
    code, _ = s.auth(mech, s.auth_plain if mech == "PLAIN" else s.auth_login, initial_response_ok=(mech == "PLAIN"))
    s.sendmail("app@origin.test", ["u@example.test"], "Subject: tls %s\r\n\r\nhi\r\n" % mech)
    print(mech, code)
    s.quit()
"#;

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        dir.path(),
        &base_config(&[("example.test", vec![mx.addr])], FAST_RETRY),
    );
    let submitter = Command::new("python3")
        .args([
            "-c",
            common::PY_SUBMIT_LOAD,
            "127.0.0.1",
            &relay.smtp.port().to_string(),
            "400",
            "4",
            "k9",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed as a submitting client");
    let mut submitter = Guard(submitter);
    // Let some mail flow, then crash the relay in the middle of it.
    wait_until("some deliveries", Duration::from_secs(30), || {
        mx.log.lock().unwrap().accepted.len() >= 60
    });
    relay.kill9();
    let status = submitter.0.wait().unwrap();
    assert!(status.success());
    let mut out = String::new();
    submitter
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let acked: Vec<String> = out.lines().map(str::to_owned).collect();
    assert!(
        acked.len() >= 20,
        "some messages were acknowledged: {}",
        acked.len()
    );
    // Restart on the same spool: everything acknowledged must arrive.
    let _relay2 = Relay::start_existing(dir.path(), &dir.path().join("relay.toml"));
    let delivered_ids = || {
        let log = mx.log.lock().unwrap();
        log.accepted
            .iter()
            .filter_map(|(_, _, body)| {
                body.lines()
                    .find(|l| l.starts_with("Message-ID: "))
                    .map(|l| l["Message-ID: ".len()..].trim().to_owned())
            })
            .collect::<Vec<_>>()
    };
    wait_until(
        "every acknowledged message delivered",
        Duration::from_secs(60),
        || {
            let got: std::collections::HashSet<_> = delivered_ids().into_iter().collect();
            acked.iter().all(|id| got.contains(id))
        },
    );
    let ids = delivered_ids();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    // A crash between the receiver's 250 and our commit can re-send a message
    // (SMTP cannot avoid it, RFC 1047); it must stay within what was in flight:
    // one message per egress session, and the default `connections_per_domain`
    // is 10.
    let dupes = ids.len() - unique.len();
    eprintln!(
        "acknowledged {}, delivered {} ({} duplicates)",
        acked.len(),
        ids.len(),
        dupes
    );
    assert!(dupes <= 10, "too many duplicates after one crash: {dupes}");
}

#[test]
fn restart_keeps_attempt_counts_and_next_attempt_times_exactly() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        dir.path(),
        &base_config(
            &[("example.test", vec![mx.addr])],
            "\n[retry]\nschedule = [\"1s\", \"1h\"]\nmax_age = \"24h\"\njitter = 0.0\n",
        ),
    );
    swaks(
        relay.smtp,
        "app@origin.test",
        "always451@example.test",
        &[],
        true,
    );
    wait_until("two deferrals", Duration::from_secs(20), || {
        relay.events_for("always451@example.test", "attempt").len() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let qid = relay.events_for("always451@example.test", "attempt")[0]["queue_id"]
        .as_str()
        .unwrap()
        .to_owned();
    relay.kill9();
    let (ok, before) = relay.mxpace(&["queue", "show", &qid, "--json"]);
    assert!(ok, "{before}");
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(before["recipients"][0]["attempts"], 2);
    let next = before["recipients"][0]["next_attempt_ms"].as_i64().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms + 3_000_000..now_ms + 3_700_000).contains(&next),
        "next attempt is about an hour after the 2nd deferral: {next} vs now {now_ms}"
    );
    // After a restart the spool says the same (no inference from message age).
    let relay2 = Relay::start_existing(dir.path(), &dir.path().join("relay.toml"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        relay2.events_for("always451@example.test", "attempt").len(),
        2,
        "not retried early"
    );
    let (ok, summary) = relay2.mxpace(&["queue", "--json"]);
    assert!(
        !ok,
        "queue needs the http admin while the relay runs: {summary}"
    );
    drop(relay2);
    let (ok, after) = relay.mxpace(&["queue", "show", &qid, "--json"]);
    assert!(ok, "{after}");
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["recipients"][0], before["recipients"][0]);
}

#[test]
fn queue_commands_work_through_the_running_relay() {
    need("swaks");
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config_via(
        mx.addr,
        concat!(
            "\n[retry]\nschedule = [\"1h\"]\nmax_age = \"24h\"\n",
            fast_pacing!()
        ),
    )
    .replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nhttp = \"127.0.0.1:0\"",
    );
    let relay = Relay::start(dir.path(), &config);
    assert!(relay.http.is_some());
    swaks(
        relay.smtp,
        "app@origin.test",
        "tempfail+1@example.test",
        &[],
        true,
    );
    swaks(
        relay.smtp,
        "app@origin.test",
        "always451@example.test",
        &[],
        true,
    );
    wait_until("first deferrals", Duration::from_secs(20), || {
        relay
            .events()
            .iter()
            .filter(|e| e["type"] == "attempt")
            .count()
            == 2
    });
    let (ok, out) = relay.mxpace(&["queue", "--json"]);
    assert!(ok, "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["recipients"], 2);
    assert_eq!(s["by_domain"]["example.test"]["recipients"], 2);
    assert_eq!(s["by_source"]["127.0.0.2"]["recipients"], 2);
    let (ok, out) = relay.mxpace(&["queue", "retry", "id=nonexistent"]);
    assert!(ok && out.contains("0 recipient"), "{out}");
    // retry: due now, delivered (tempfail+1 accepts the second time).
    let qid = relay.events_for("tempfail+1@example.test", "attempt")[0]["queue_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out) = relay.mxpace(&["queue", "retry", &qid]);
    assert!(ok && out.contains("1 recipient"), "{out}");
    wait_until("the retried delivery", Duration::from_secs(20), || {
        mx.accepted_for("tempfail+1@example.test").len() == 1
    });
    // bounce: a DSN to the sender.
    let (ok, out) = relay.mxpace(&["queue", "bounce", "domain=example.test"]);
    assert!(ok && out.contains("1 recipient"), "{out}");
    wait_until("the operator's DSN", Duration::from_secs(20), || {
        !mx.accepted_for("app@origin.test").is_empty()
    });
    // The receiver holds the DSN a moment before the relay commits its delivery.
    wait_until("an empty queue", Duration::from_secs(10), || {
        let (ok, out) = relay.mxpace(&["queue"]);
        ok && out.contains("0 recipient(s) queued")
    });
}

/// Raw SMTP conversation for the bad-input tests.
fn raw_session(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("220"));
    (s, r)
}

fn read_reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[test]
fn bad_input_gets_clear_replies_and_the_session_survives() {
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &base_config(&[("example.test", vec![mx.addr])], FAST_RETRY),
    );
    let (mut w, mut r) = raw_session(relay.smtp);
    // A 1 MB command line.
    let mut long = vec![b'A'; 1024 * 1024];
    long.extend_from_slice(b"\r\n");
    w.write_all(&long).unwrap();
    assert!(read_reply(&mut r).starts_with("500 5.5.2 Line too long"));
    w.write_all(b"EH\0LO x\r\n").unwrap();
    assert!(read_reply(&mut r).starts_with("500 5.5.2"));
    w.write_all(b"MAIL FROM:<a@b.test>\r\n").unwrap();
    assert!(read_reply(&mut r).starts_with("503"), "EHLO first");
    // A pipelined burst, with bare LF line endings, and a message with a 1 MB line.
    w.write_all(
        b"EHLO client.test\nMAIL FROM:<app@origin.test>\nRCPT TO:<big@example.test>\nDATA\n",
    )
    .unwrap();
    let ehlo = read_reply(&mut r);
    assert!(
        ehlo.contains("PIPELINING") && ehlo.contains("ENHANCEDSTATUSCODES"),
        "{ehlo}"
    );
    assert!(read_reply(&mut r).starts_with("250 2.1.0"));
    assert!(read_reply(&mut r).starts_with("250 2.1.5"));
    assert!(read_reply(&mut r).starts_with("354"));
    let mut body = b"Subject: big line\n\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    body.extend_from_slice(b"\n..leading dot\n.\n");
    w.write_all(&body).unwrap();
    let done = read_reply(&mut r);
    assert!(done.starts_with("250 2.0.0"), "{done}");
    // A NUL in a message is refused, clearly.
    w.write_all(b"MAIL FROM:<app@origin.test>\r\nRCPT TO:<nul@example.test>\r\nDATA\r\n")
        .unwrap();
    read_reply(&mut r);
    read_reply(&mut r);
    read_reply(&mut r);
    w.write_all(b"a\0b\r\n.\r\n").unwrap();
    assert!(read_reply(&mut r).starts_with("554 5.6.0"));
    w.write_all(b"QUIT\r\n").unwrap();
    assert!(read_reply(&mut r).starts_with("221"));
    wait_until("the big message", Duration::from_secs(20), || {
        mx.accepted_for("big@example.test").len() == 1
    });
    let (_, _, got) = mx.accepted_for("big@example.test").remove(0);
    assert!(
        got.contains("\r\n..leading dot\r\n"),
        "dot-stuffed again on the way out"
    );
    assert!(got.len() > 1024 * 1024);
    assert!(mx.accepted_for("nul@example.test").is_empty());
}

/// One HTTP/1.1 request with the given extra header lines; the status code.
fn http_status(http: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp[9..12].parse().unwrap()
}

#[test]
fn a_cross_site_page_in_an_operators_browser_cannot_inject_mail_or_steer_the_relay() {
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&[("example.test", vec![mx.addr])], FAST_RETRY).replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nhttp = \"127.0.0.1:0\"",
    );
    let relay = Relay::start(dir.path(), &config);
    let http = relay.http.unwrap();
    let msg = r#"{"from":"app@origin.test","to":["x@example.test"],"message":"Subject: csrf\n\nhello\n"}"#;
    // What a form or a fetch() without preflight can send from another site.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let h = format!("Content-Type: {content_type}\r\nOrigin: http://evil.example\r\n");
        assert_eq!(
            http_status(http, "POST", "/v1/messages", &h, msg),
            415,
            "{content_type}"
        );
        let h = format!("Content-Type: {content_type}\r\n");
        assert_eq!(
            http_status(http, "POST", "/v1/messages", &h, msg),
            415,
            "{content_type}"
        );
    }
    // JSON with a foreign Origin (only possible after a preflight, which is never answered).
    let foreign = "Content-Type: application/json\r\nOrigin: http://evil.example\r\n";
    assert_eq!(http_status(http, "POST", "/v1/messages", foreign, msg), 403);
    assert_eq!(
        http_status(
            http,
            "POST",
            "/v1/queue/action/delete",
            foreign,
            r#"{"filter":["all"]}"#
        ),
        403
    );
    assert_eq!(
        http_status(
            http,
            "GET",
            "/v1/queue",
            "Origin: http://evil.example\r\n",
            ""
        ),
        403
    );
    // The relay's own page (same origin) and plain API clients (no Origin) are served.
    let own = format!("Content-Type: application/json\r\nOrigin: http://{http}\r\n");
    assert_eq!(http_status(http, "POST", "/v1/messages", &own, msg), 200);
    wait_until("the one accepted message", Duration::from_secs(20), || {
        mx.accepted_for("x@example.test").len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        mx.accepted_for("x@example.test").len(),
        1,
        "only the same-origin POST queued mail"
    );
}

#[test]
fn http_injection_with_an_idempotency_key_sends_once() {
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&[("example.test", vec![mx.addr])], FAST_RETRY).replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nhttp = \"127.0.0.1:0\"",
    );
    let relay = Relay::start(dir.path(), &config);
    let http = relay.http.unwrap();
    let post = |json: &str| -> (u16, serde_json::Value) {
        let mut s = TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nIdempotency-Key: order-42\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    };
    let msg = r#"{"from":"app@origin.test","to":["h@example.test"],"stream":"bulk","message":"Subject: via http\n\nhello\n"}"#;
    let (s1, a) = post(msg);
    let (s2, b) = post(msg);
    assert_eq!((s1, s2), (200, 200), "{a} {b}");
    assert_eq!(a["queue_id"], b["queue_id"]);
    assert_eq!(a["duplicate"], false);
    assert_eq!(b["duplicate"], true);
    let (bad, _) = post(r#"{"from":"app@origin.test","to":[],"message":"x"}"#);
    assert_eq!(bad, 400);
    let (bad, _) = post("not json");
    assert_eq!(bad, 400);
    wait_until("the injected message", Duration::from_secs(20), || {
        mx.accepted_for("h@example.test").len() == 1
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(mx.accepted_for("h@example.test").len(), 1);
    relay.wait_delivered_event("h@example.test");
    assert_eq!(
        relay.events_for("h@example.test", "attempt")[0]["stream"],
        "bulk"
    );
}

/// A real DNS server (NSD) on loopback serving `zone_text` for `origin`.
fn start_nsd(dir: &Path, zones: &[(&str, &str)]) -> (Guard, SocketAddr) {
    let nsd = need("nsd");
    let port = dead_addr().port();
    let mut conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  \
         zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  logfile: \"{d}/nsd.log\"\n  \
         xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  verbosity: 1\n\
         remote-control:\n  control-enable: no\n",
        d = dir.display()
    );
    for (origin, text) in zones {
        std::fs::write(dir.join(format!("{origin}.zone")), text).unwrap();
        conf.push_str(&format!(
            "zone:\n  name: \"{origin}\"\n  zonefile: \"{origin}.zone\"\n"
        ));
    }
    std::fs::write(dir.join("nsd.conf"), conf).unwrap();
    let guard = Guard(
        Command::new(nsd)
            .arg("-d")
            .arg("-c")
            .arg(dir.join("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Ready when it answers over TCP.
    wait_until("nsd to listen", Duration::from_secs(10), || {
        TcpStream::connect(addr).is_ok()
    });
    (guard, addr)
}

#[test]
fn mx_records_from_a_real_dns_server_are_tried_in_preference_order() {
    need("swaks");
    let dir = tempfile::tempdir().unwrap();
    // The good MX listens on 127.0.0.4; the preferred one (127.0.0.3, same port) is down.
    let mx = ScriptedMx::start_on("127.0.0.4:0");
    let port = mx.addr.port();
    let zone = "$ORIGIN mx.test.\n$TTL 60\n@ IN SOA ns.mx.test. admin.mx.test. 1 3600 600 86400 60\n\
                @ IN NS ns.mx.test.\nns IN A 127.0.0.1\n@ IN MX 10 mx1.mx.test.\n@ IN MX 20 mx2.mx.test.\n\
                mx1 IN A 127.0.0.3\nmx2 IN A 127.0.0.4\n";
    let null_zone = "$ORIGIN null.test.\n$TTL 60\n@ IN SOA ns.null.test. admin.null.test. 1 3600 600 86400 60\n\
                     @ IN NS ns.null.test.\nns IN A 127.0.0.1\n@ IN MX 0 .\n";
    let (_nsd, dns) = start_nsd(dir.path(), &[("mx.test", zone), ("null.test", null_zone)]);
    let config = base_config(&[("origin.test", vec![mx.addr])], FAST_RETRY)
        + &format!("\n[dns]\nservers = [\"{dns}\"]\nmx_port = {port}\n");
    let relay = Relay::start(dir.path(), &config);
    swaks(relay.smtp, "app@origin.test", "u@mx.test", &[], true);
    swaks(relay.smtp, "app@origin.test", "u@null.test", &[], true);
    swaks(
        relay.smtp,
        "app@origin.test",
        "u@nonexistent.mx.test",
        &[],
        true,
    );
    wait_until(
        "delivery via the second MX",
        Duration::from_secs(20),
        || mx.accepted_for("u@mx.test").len() == 1,
    );
    relay.wait_delivered_event("u@mx.test");
    let e = &relay.events_for("u@mx.test", "attempt")[0];
    assert_eq!(e["outcome"], "delivered");
    assert_eq!(e["mx_host"], "mx2.mx.test");
    assert_eq!(e["peer_ip"], "127.0.0.4");
    wait_until(
        "the null MX and NXDOMAIN bounces",
        Duration::from_secs(20),
        || {
            !relay.events_for("u@null.test", "attempt").is_empty()
                && !relay
                    .events_for("u@nonexistent.mx.test", "attempt")
                    .is_empty()
        },
    );
    let null = &relay.events_for("u@null.test", "attempt")[0];
    assert_eq!(null["outcome"], "bounced");
    assert!(
        null["reply"].as_str().unwrap().starts_with("556 5.1.10"),
        "{null}"
    );
    let nx = &relay.events_for("u@nonexistent.mx.test", "attempt")[0];
    assert_eq!(nx["outcome"], "bounced", "{nx}");
}

/// Unmounts the tmpfs when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_answers_452_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let spool_fs = dir.path().join("fs");
    std::fs::create_dir(&spool_fs).unwrap();
    // A 4 MB filesystem for the spool (needs root, as the test suite runs).
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&spool_fs)
        .status()
        .expect("mount is needed to make a small filesystem");
    assert!(
        ok.success(),
        "could not mount a 4 MB tmpfs (the test needs root)"
    );
    let _mount = Mount(spool_fs.clone());
    // Room to free later, to show the relay recovers without a restart.
    let filler = spool_fs.join("filler");
    std::fs::write(&filler, vec![0u8; 1_000_000]).unwrap();
    // Nothing is delivered (the only host is down), so the spool only grows.
    let config = base_config(&[("example.test", vec![dead_addr()])], FAST_RETRY)
        .replace("spool = \"{dir}/spool\"", "spool = \"{dir}/fs/spool\"");
    let mut relay = Relay::start(dir.path(), &config);
    let body = format!("Subject: filler\r\n\r\n{}\r\n", "y".repeat(200_000));
    let (mut acked, mut refused) = (0u64, 0);
    for _ in 0..60 {
        let (mut w, mut r) = raw_session(relay.smtp);
        w.write_all(b"EHLO c\r\n").unwrap();
        read_reply(&mut r);
        w.write_all(b"MAIL FROM:<app@origin.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
            .unwrap();
        read_reply(&mut r);
        read_reply(&mut r);
        assert!(read_reply(&mut r).starts_with("354"));
        w.write_all(body.as_bytes()).unwrap();
        w.write_all(b".\r\n").unwrap();
        let reply = read_reply(&mut r);
        if reply.starts_with("250") {
            acked += 1;
        } else {
            assert!(reply.starts_with("452 4.3.1"), "{reply}");
            refused += 1;
            if refused >= 3 {
                break;
            }
        }
    }
    assert!(acked > 0 && refused > 0, "acked {acked}, refused {refused}");

    // Space comes back: the same relay process accepts mail again (it reopens its spool).
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..3 {
        let (mut w, mut r) = raw_session(relay.smtp);
        w.write_all(b"EHLO c\r\n").unwrap();
        read_reply(&mut r);
        w.write_all(b"MAIL FROM:<app@origin.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
            .unwrap();
        read_reply(&mut r);
        read_reply(&mut r);
        assert!(read_reply(&mut r).starts_with("354"));
        w.write_all(b"Subject: small\r\n\r\nafter the disk was freed\r\n.\r\n")
            .unwrap();
        if read_reply(&mut r).starts_with("250") {
            acked += 1;
            recovered = true;
            break;
        }
    }
    assert!(recovered, "no 250 after space was freed");
    relay.kill9();
    let (ok, out) = relay.mxpace(&["queue", "--json"]);
    assert!(ok, "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Every acknowledged message is in the spool. One more may be: when a write fails
    // part-way, redb's recovery on reopen can keep the transaction whose commit reported
    // the error, so a message answered 452 may still be delivered (a possible duplicate
    // if the client resends it, never a loss).
    let stored = s["messages"].as_u64().unwrap();
    assert!(
        stored >= acked && stored <= acked + 1,
        "every acknowledged message is in the spool: {stored} stored, {acked} acknowledged"
    );
}

#[test]
fn notify_success_goes_on_to_a_dsn_capable_hop_which_reports_the_relay_itself() {
    let mx = ScriptedMx::start();
    // Relay B advertises DSN; the scripted MX behind it does not.
    let dir_b = tempfile::tempdir().unwrap();
    let relay_b = Relay::start(dir_b.path(), &base_config_via(mx.addr, FAST_RETRY));
    let dir_a = tempfile::tempdir().unwrap();
    let relay_a = Relay::start(
        dir_a.path(),
        &base_config(&[("example.test", vec![relay_b.smtp])], FAST_RETRY),
    );
    let send = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
msg = "From: app@origin.test\r\nTo: s@example.test\r\nSubject: chain\r\n\r\nhello\r\n"
s.sendmail("app@origin.test", ["s@example.test"], msg, rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
s.quit()
"#;
    common::python("submission", send, &[&relay_a.smtp.port().to_string()]);
    wait_until(
        "the success report from relay B",
        Duration::from_secs(30),
        || {
            mx.accepted_for("s@example.test").len() == 1
                && mx.accepted_for("app@origin.test").len() == 1
        },
    );
    relay_a.wait_delivered_event("s@example.test");
    std::thread::sleep(Duration::from_millis(800));
    // A handed NOTIFY on to B, which speaks DSN: A reports nothing.
    assert!(relay_a.events_for("s@example.test", "dsn").is_empty());
    // B delivered to a hop without DSN: B reports, once.
    let dsn = relay_b.events_for("s@example.test", "dsn");
    assert_eq!(dsn.len(), 1, "{dsn:?}");
    assert_eq!(dsn[0]["extra"]["action"], "relayed");
    let (_, _, report) = mx.accepted_for("app@origin.test").remove(0);
    assert!(report.contains("Action: relayed"), "{report}");
    assert_eq!(mx.accepted_for("app@origin.test").len(), 1);
}

#[test]
fn message_data_over_the_memory_budget_is_deferred_not_lost() {
    let mx = ScriptedMx::start();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&[("example.test", vec![mx.addr])], FAST_RETRY).replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nmax_message_size = 400000\nmax_data_memory = 400000",
    );
    let relay = Relay::start(dir.path(), &config);
    // Session 1 holds 300 KB mid-DATA; session 2's 200 KB does not fit beside it, so it
    // gets a temporary failure; once session 1 is spooled, session 2's retry goes through.
    let script = r#"
import smtplib, sys
port = int(sys.argv[1])
big = "Subject: one\r\n\r\n" + ("x" * 998 + "\r\n") * 300
mid = "Subject: two\r\n\r\n" + ("y" * 998 + "\r\n") * 200
s1 = smtplib.SMTP("127.0.0.1", port, timeout=20)
s1.ehlo("one.test"); s1.mail("app@origin.test"); s1.rcpt("one@example.test")
code, _ = s1.docmd("DATA"); assert code == 354, code
s1.send(big.encode())
s2 = smtplib.SMTP("127.0.0.1", port, timeout=20)
try:
    s2.sendmail("app@origin.test", ["two@example.test"], mid)
    print("second-first-try 250")
except smtplib.SMTPDataError as e:
    print("second-first-try", e.smtp_code, e.smtp_error.decode())
s1.send(b".\r\n")
print("first", s1.getreply()[0])
s2.sendmail("app@origin.test", ["two@example.test"], mid)
print("second-retry 250")
s1.quit(); s2.quit()
"#;
    let text = common::python("two sessions", script, &[&relay.smtp.port().to_string()]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("second-first-try 452 4.3.1"),
        "a temporary failure, not a bounce: {text}"
    );
    assert_eq!(lines[1], "first 250", "{text}");
    assert_eq!(lines[2], "second-retry 250", "{text}");
    wait_until("both delivered", Duration::from_secs(20), || {
        mx.accepted_for("one@example.test").len() == 1
            && mx.accepted_for("two@example.test").len() == 1
    });
}
