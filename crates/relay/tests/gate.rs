//! The pacing gate sits between "due" and "sent": what it holds goes back to
//! the queue without counting as a delivery attempt.

use mxpace_relay::config::Config;
use mxpace_relay::gate::{GateDecision, GateOutcome, PacingGate, PathKey};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Holds the first `holds` messages for 200 ms each, then lets them go.
struct HoldTwice {
    asked: AtomicU32,
    recorded: AtomicU32,
    holds: u32,
}

impl PacingGate for HoldTwice {
    fn may_connect(&self, _: &PathKey, _: i64) -> GateDecision {
        GateDecision::Go
    }
    fn may_send(&self, _: &PathKey, now_ms: i64) -> GateDecision {
        if self.asked.fetch_add(1, Ordering::SeqCst) < self.holds {
            GateDecision::HoldUntil(now_ms + 200)
        } else {
            GateDecision::Go
        }
    }
    fn record(&self, o: GateOutcome<'_>) {
        assert!(o.verdict.is_some());
        self.recorded.fetch_add(1, Ordering::SeqCst);
    }
}

/// A receiver that accepts everything and counts messages.
async fn accept_all(listener: TcpListener, count: Arc<AtomicU32>) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let count = count.clone();
        tokio::spawn(async move {
            let _ = serve(s, &count).await;
        });
    }
}

async fn serve(s: TcpStream, count: &AtomicU32) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut in_data = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if in_data {
            if line == ".\r\n" {
                in_data = false;
                count.fetch_add(1, Ordering::SeqCst);
                w.write_all(b"250 2.0.0 Ok\r\n").await?;
            }
            continue;
        }
        let cmd = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match cmd.as_str() {
            "EHLO" => b"250-sink\r\n250 PIPELINING\r\n",
            "DATA" => {
                in_data = true;
                b"354 go\r\n"
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 2.0.0 Ok\r\n",
        };
        w.write_all(reply).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_by_pacing_are_not_attempts() {
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let delivered = Arc::new(AtomicU32::new(0));
    tokio::spawn(accept_all(sink, delivered.clone()));

    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "[relay]\nlisten = [\"127.0.0.1:0\"]\nallow_clients = [\"127.0.0.0/8\"]\n\
         spool = \"{d}/spool\"\nevents = \"{d}/events.jsonl\"\n\
         [route.\"example.test\"]\nhosts = [\"{sink_addr}\"]\n",
        d = dir.path().display()
    ))
    .unwrap();
    let gate = Arc::new(HoldTwice {
        asked: AtomicU32::new(0),
        recorded: AtomicU32::new(0),
        holds: 2,
    });
    let relay = mxpace_relay::start(config, gate.clone()).await.unwrap();

    // Submit one message over SMTP.
    let s = TcpStream::connect(relay.smtp[0]).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    w.write_all(b"HELO app\r\nMAIL FROM:<a@origin.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        line.clear();
        r.read_line(&mut line).await.unwrap();
    }
    assert!(line.starts_with("354"), "{line}");
    w.write_all(b"Subject: held\r\n\r\nhi\r\n.\r\n")
        .await
        .unwrap();
    line.clear();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("250 2.0.0"), "{line}");

    // The sink counts the message when it answers 250; the relay records the outcome
    // with the gate only once it has read that 250, a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::SeqCst) == 0 || gate.recorded.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gate.asked.load(Ordering::SeqCst),
        3,
        "held twice, then sent"
    );
    assert_eq!(gate.recorded.load(Ordering::SeqCst), 1, "one real attempt");
    let read_attempts = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|e: &serde_json::Value| e["type"] == "attempt")
            .collect()
    };
    // The receiver counts before the relay has recorded the outcome.
    while read_attempts().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = read_attempts();
    assert_eq!(attempts.len(), 1, "holds write no attempt records");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["outcome"], "delivered");
    relay.abort();
}
