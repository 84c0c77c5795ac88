//! The ledger: one JSON object per line for every message the simulator accepted (and
//! every deferral it gave), and the statistics read back from it.
//!
//! Accepted line: `{"message_id":…,"recipient":…,"client_ip":…,"listen":…,"time":…}`.
//! Deferral line: the same keys plus `"deferred":"<reason>"` and `"code":NNN`
//! (`message_id` null). `time` is RFC 3339 UTC.
//!
//! Durability: the server hands the accepted lines of a message to the writer thread
//! and sends its 250 only after the writer has written them to the file (group commit
//! across sessions: one `write` for every line waiting). That makes a 250 imply a
//! ledger line even if the *relay* is killed with -9. The file is not fsync'ed: a
//! crash of the whole machine may lose the tail, a kill of the simulator may not.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerLine {
    /// The Message-ID header (with angle brackets), if the message had one.
    pub message_id: Option<String>,
    /// Envelope recipient.
    pub recipient: String,
    /// Source IP of the client.
    pub client_ip: String,
    /// The listen address that received it.
    pub listen: String,
    /// RFC 3339 UTC.
    pub time: String,
    /// Set on deferral and rejection lines: the reason (see `Reason::as_str`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
    /// Set on deferral and rejection lines: the basic reply code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
}

/// Counts read back from a ledger (`mxpace sim stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Accepted message copies (one per recipient).
    pub accepted: u64,
    /// Distinct (Message-ID, recipient) pairs accepted; a line without Message-ID
    /// counts as distinct.
    pub unique: u64,
    /// Accepted copies beyond the first of the same (Message-ID, recipient).
    pub duplicates: u64,
    /// Transient failures (4xx) given, by reason.
    pub deferred: BTreeMap<String, u64>,
    /// Permanent failures (5xx) given, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Lines that are not ledger JSON (e.g. a torn last line); counted, not fatal.
    pub malformed: u64,
}

impl Stats {
    /// Read a whole ledger.
    pub fn read(input: impl BufRead) -> std::io::Result<Stats> {
        let mut stats = Stats::default();
        let mut seen: HashMap<(String, String), u32> = HashMap::new();
        for line in input.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let Ok(rec) = serde_json::from_str::<LedgerLine>(&line) else {
                stats.malformed += 1;
                continue;
            };
            match (&rec.deferred, rec.code) {
                (Some(reason), code) => {
                    let map = if code.is_some_and(|c| c >= 500) {
                        &mut stats.rejected
                    } else {
                        &mut stats.deferred
                    };
                    *map.entry(reason.clone()).or_insert(0) += 1;
                }
                (None, _) => {
                    stats.accepted += 1;
                    match rec.message_id {
                        Some(id) => {
                            let n = seen.entry((id, rec.recipient)).or_insert(0);
                            *n += 1;
                            if *n == 1 {
                                stats.unique += 1;
                            } else {
                                stats.duplicates += 1;
                            }
                        }
                        None => stats.unique += 1,
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Read a ledger file.
    pub fn read_file(path: &Path) -> std::io::Result<Stats> {
        let file = File::open(path)?;
        Stats::read(std::io::BufReader::new(file))
    }
}

/// Lines waiting to be written, with an optional acknowledgement.
struct Batch {
    lines: Vec<LedgerLine>,
    ack: Option<tokio::sync::oneshot::Sender<std::io::Result<()>>>,
}

/// Appends ledger lines from any number of sessions on one writer thread.
#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::Sender<Batch>,
}

/// Owns the writer thread; dropping every [`LedgerWriter`] and then calling
/// [`LedgerThread::finish`] flushes and closes the file.
pub struct LedgerThread {
    handle: JoinHandle<std::io::Result<()>>,
}

impl LedgerThread {
    /// Wait until every line sent has been written (all writers must be dropped first).
    pub fn finish(self) -> std::io::Result<()> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("ledger writer thread panicked")))
    }
}

/// Open (append) a ledger file and start its writer thread.
pub fn open(path: &Path) -> std::io::Result<(LedgerWriter, LedgerThread)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let (tx, rx) = mpsc::channel::<Batch>();
    let handle = std::thread::Builder::new()
        .name("sim-ledger".into())
        .spawn(move || write_loop(file, rx))?;
    Ok((LedgerWriter { tx }, LedgerThread { handle }))
}

fn write_loop(mut file: File, rx: mpsc::Receiver<Batch>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    let mut failed: Option<std::io::ErrorKind> = None;
    // Block for the first batch, then take everything else already waiting: one write
    // serves every session that is waiting for its 250.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(batch) = next {
            for line in &batch.lines {
                // Serialising our own struct cannot fail.
                let _ = serde_json::to_writer(&mut buf, line);
                buf.push(b'\n');
            }
            acks.extend(batch.ack);
            next = rx.try_recv().ok();
        }
        let result = match failed {
            Some(kind) => Err(kind),
            None => file.write_all(&buf).map_err(|e| e.kind()),
        };
        if let Err(kind) = result {
            failed = Some(kind);
        }
        buf.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(result.map_err(|k| std::io::Error::new(k, "ledger write failed")));
        }
    }
    match failed {
        Some(kind) => Err(std::io::Error::new(kind, "ledger write failed")),
        None => file.flush(),
    }
}

impl LedgerWriter {
    /// Append lines and wait until they are in the file.
    pub async fn append_durable(&self, lines: Vec<LedgerLine>) -> std::io::Result<()> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx
            .send(Batch {
                lines,
                ack: Some(ack),
            })
            .map_err(|_| std::io::Error::other("ledger writer stopped"))?;
        done.await
            .map_err(|_| std::io::Error::other("ledger writer stopped"))?
    }

    /// Append lines without waiting (deferrals).
    pub fn append(&self, lines: Vec<LedgerLine>) {
        let _ = self.tx.send(Batch { lines, ack: None });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: Option<&str>, rcpt: &str, deferred: Option<(&str, u16)>) -> String {
        serde_json::to_string(&LedgerLine {
            message_id: id.map(String::from),
            recipient: rcpt.into(),
            client_ip: "127.0.0.2".into(),
            listen: "127.0.0.1:25".into(),
            time: "2026-11-23T12:00:00Z".into(),
            deferred: deferred.map(|d| d.0.to_string()),
            code: deferred.map(|d| d.1),
        })
        .unwrap()
    }

    #[test]
    fn stats_count_unique_duplicates_and_deferrals() {
        let text = [
            line(Some("<a@x>"), "r1@y", None),
            line(Some("<a@x>"), "r2@y", None),
            line(Some("<a@x>"), "r1@y", None),
            line(Some("<a@x>"), "r1@y", None),
            line(None, "r1@y", None),
            line(None, "r1@y", None),
            line(None, "r3@y", Some(("throttle", 451))),
            line(None, "r3@y", Some(("throttle", 451))),
            line(None, "r4@y", Some(("blocklist", 550))),
            "{\"message_id\":\"<torn".to_string(),
        ]
        .join("\n");
        let s = Stats::read(text.as_bytes()).unwrap();
        assert_eq!(s.accepted, 6);
        assert_eq!(s.unique, 4);
        assert_eq!(s.duplicates, 2);
        assert_eq!(s.deferred.get("throttle"), Some(&2));
        assert_eq!(s.rejected.get("blocklist"), Some(&1));
        assert_eq!(s.malformed, 1);
    }

    #[test]
    fn the_writer_appends_every_line_before_acknowledging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (w, thread) = open(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let rec =
                serde_json::from_str::<LedgerLine>(&line(Some("<a@x>"), "r@y", None)).unwrap();
            w.append_durable(vec![rec.clone(), rec.clone()])
                .await
                .unwrap();
            // Durable means: already in the file now, before the writer stops.
            let s = Stats::read_file(&path).unwrap();
            assert_eq!((s.accepted, s.duplicates), (2, 1));
            w.append(vec![rec]);
        });
        drop(w);
        thread.finish().unwrap();
        assert_eq!(Stats::read_file(&path).unwrap().accepted, 3);
    }
}
