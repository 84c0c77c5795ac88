//! The durable spool: queue state and bodies in one redb file, written by one
//! thread that commits many changes per fsync (group commit across sessions).
//!
//! A message is acknowledged (250 after DATA, 200 on HTTP) only after the commit
//! that holds its body and state has returned with `Durability::Immediate`.
//! Every later change (attempt count, next-attempt time, status) is committed the
//! same way before it takes effect, so a restart sees exactly what was decided.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use tokio::sync::oneshot;

const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
/// Idempotency key → queue id, kept after delivery so a late retry of the
/// application is still recognised.
const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");

/// Most changes folded into one commit.
const MAX_BATCH: usize = 512;

/// A spool error (disk full, corrupt file, lock held by another process…).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {msg}")]
    Open { path: PathBuf, msg: String },
    #[error("spool is already open in another process (is the relay running?): {0}")]
    Locked(PathBuf),
    #[error("spool write failed: {0}")]
    Write(String),
    #[error("spool read failed: {0}")]
    Read(String),
    #[error("spool writer has stopped")]
    Closed,
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RcptStatus {
    Queued,
    Delivered,
    Bounced,
    Expired,
    Deleted,
}

impl RcptStatus {
    /// True when nothing more will be sent to this recipient.
    pub fn is_final(self) -> bool {
        !matches!(self, RcptStatus::Queued)
    }
}

/// One recipient of a message, tracked on its own (partial delivery).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    /// DSN ORCPT parameter as given.
    #[serde(default)]
    pub orcpt: Option<String>,
    /// DSN NOTIFY flags (smtp-proto's RCPT_NOTIFY_* bits).
    #[serde(default)]
    pub notify: u64,
    pub status: RcptStatus,
    /// Real delivery attempts so far (pacing holds do not count).
    pub attempts: u32,
    /// Next attempt, ms since the Unix epoch.
    pub next_attempt_ms: i64,
    /// Last reply or connection error, for `queue show` and DSNs.
    #[serde(default)]
    pub last_reply: Option<String>,
    #[serde(default)]
    pub last_mx: Option<String>,
    #[serde(default)]
    pub last_provider: Option<String>,
    #[serde(default)]
    pub last_source: Option<std::net::IpAddr>,
    /// A delay report (DSN `Action: delayed`) was sent for this recipient.
    #[serde(default)]
    pub delay_reported: bool,
}

impl Recipient {
    /// A recipient newly queued, due at `now_ms`, with its DSN parameters.
    pub fn queued(address: String, orcpt: Option<String>, notify: u64, now_ms: i64) -> Recipient {
        Recipient {
            address,
            orcpt,
            notify,
            status: RcptStatus::Queued,
            attempts: 0,
            next_attempt_ms: now_ms,
            last_reply: None,
            last_mx: None,
            last_provider: None,
            last_source: None,
            delay_reported: false,
        }
    }

    /// The domain part, lowercased ("" when there is none).
    pub fn domain(&self) -> String {
        domain_of(&self.address)
    }
}

/// The domain part of an address, lowercased.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// A queued message's envelope and state (the body is stored apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub queue_id: String,
    pub message_id: String,
    /// Envelope sender; "" for the null sender (DSNs).
    pub sender: String,
    pub received_ms: i64,
    pub stream: String,
    pub size: u64,
    /// DSN ENVID.
    #[serde(default)]
    pub env_id: Option<String>,
    /// DSN RET=FULL (else headers only).
    #[serde(default)]
    pub ret_full: bool,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Max age that applies, ms (fixed at reception, so a config change does not
    /// silently shorten the life of queued mail).
    pub expires_ms: i64,
    pub recipients: Vec<Recipient>,
}

impl QueuedMessage {
    /// True when every recipient is final.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }
}

/// One change to commit.
#[derive(Debug)]
pub enum SpoolOp {
    /// A new message and its body. Refused as `Duplicate` when its idempotency
    /// key is already known.
    Insert {
        message: QueuedMessage,
        body: Vec<u8>,
    },
    /// New state for a message already stored.
    Update(QueuedMessage),
    /// Forget a message (all recipients final); its idempotency key stays.
    Remove(String),
    /// Forget idempotency keys recorded before this time (ms since the epoch);
    /// answered with `Pruned(count)`.
    PruneIdempotency { before_ms: i64 },
}

/// Whether an idempotency record pointing at `queue_id` was made before
/// `before_ms`: queue ids are ULIDs, which carry their creation time. A value
/// that is no ULID is kept.
pub fn recorded_before(queue_id: &str, before_ms: i64) -> bool {
    ulid::Ulid::from_string(queue_id).is_ok_and(|u| (u.timestamp_ms() as i64) < before_ms)
}

/// The result of one op.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    Done,
    /// The idempotency key was seen before, for this queue id.
    Duplicate(String),
    /// This many idempotency keys were forgotten.
    Pruned(u64),
}

struct Request {
    ops: Vec<SpoolOp>,
    reply: oneshot::Sender<Result<Vec<OpResult>, SpoolError>>,
}

/// The spool: a redb database behind a committing thread.
#[derive(Clone)]
pub struct Spool {
    db: SharedDb,
    tx: std_mpsc::Sender<Request>,
    dir: PathBuf,
}

/// The open database, replaceable: after a failed write (a full disk) redb refuses every
/// further transaction until the database is closed and opened again, so the committing
/// thread reopens it; until that succeeds the slot is empty and writes answer an error
/// (ingress then says `452 4.3.1`) instead of the relay needing a restart.
type SharedDb = std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<Database>>>>;

fn current(db: &SharedDb) -> Result<std::sync::Arc<Database>, SpoolError> {
    db.read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| {
            SpoolError::Read("spool database is being reopened after a write error".into())
        })
}

impl Spool {
    /// Open (or create) the spool in `dir`, and start its committing thread.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let db = open_db(dir)?;
        let db: SharedDb =
            std::sync::Arc::new(std::sync::RwLock::new(Some(std::sync::Arc::new(db))));
        let (tx, rx) = std_mpsc::channel::<Request>();
        let worker_db = db.clone();
        let worker_dir = dir.to_owned();
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || commit_loop(&worker_db, &worker_dir, rx))
            .map_err(|e| SpoolError::Open {
                path: dir.to_owned(),
                msg: e.to_string(),
            })?;
        Ok(Spool {
            db,
            tx,
            dir: dir.to_owned(),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Commit `ops` durably; resolves once they are on disk.
    pub async fn commit(&self, ops: Vec<SpoolOp>) -> Result<Vec<OpResult>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { ops, reply })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Every stored message (at startup, and for `queue` when the relay is down).
    pub fn load_all(&self) -> Result<Vec<QueuedMessage>, SpoolError> {
        let db = current(&self.db)?;
        load_all(&db)
    }

    /// The stored body of `queue_id`.
    pub fn body(&self, queue_id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        let db = current(&self.db)?;
        let rd = db.begin_read().map_err(read_err)?;
        let table = match rd.open_table(BODIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        Ok(table
            .get(queue_id)
            .map_err(read_err)?
            .map(|v| v.value().to_vec()))
    }
}

fn open_db(dir: &Path) -> Result<Database, SpoolError> {
    std::fs::create_dir_all(dir).map_err(|e| SpoolError::Open {
        path: dir.to_owned(),
        msg: e.to_string(),
    })?;
    let path = dir.join("queue.redb");
    let db = Database::create(&path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => SpoolError::Locked(path.clone()),
        other => SpoolError::Open {
            path: path.clone(),
            msg: other.to_string(),
        },
    })?;
    // Create the tables so readers never meet a missing one.
    let wr = db.begin_write().map_err(write_err)?;
    {
        wr.open_table(MESSAGES).map_err(write_err)?;
        wr.open_table(BODIES).map_err(write_err)?;
        wr.open_table(IDEMPOTENCY).map_err(write_err)?;
    }
    wr.commit().map_err(write_err)?;
    Ok(db)
}

fn read_err(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Read(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Write(e.to_string())
}

fn load_all(db: &Database) -> Result<Vec<QueuedMessage>, SpoolError> {
    let rd = db.begin_read().map_err(read_err)?;
    let table = rd.open_table(MESSAGES).map_err(read_err)?;
    let mut out = Vec::new();
    for item in table.iter().map_err(read_err)? {
        let (k, v) = item.map_err(read_err)?;
        match serde_json::from_slice::<QueuedMessage>(v.value()) {
            Ok(m) => out.push(m),
            Err(e) => {
                // Keep going: one unreadable record must not hold up the rest.
                tracing::error!(queue_id = k.value(), "unreadable queue record: {e}");
            }
        }
    }
    Ok(out)
}

/// Take requests as they come; whatever queued up while the last commit was
/// running goes into the next one, so concurrent sessions share an fsync.
fn commit_loop(shared: &SharedDb, dir: &Path, rx: std_mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut ops = batch[0].ops.len();
        while ops < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => {
                    ops += r.ops.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let applied = match current(shared) {
            Ok(db) => apply_batch(&db, &mut batch),
            Err(e) => Err(e),
        };
        match applied {
            Ok(results) => {
                for (req, res) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(Ok(res));
                }
            }
            Err(e) => {
                tracing::error!("spool commit failed: {e}");
                for req in batch {
                    let _ = req.reply.send(Err(SpoolError::Write(e.to_string())));
                }
                reopen(shared, dir);
            }
        }
    }
}

/// Close the database and open it again (redb's recovery runs on open). If a reader
/// still holds the old handle, or the disk is still full, the slot stays empty and the
/// next commit tries again.
fn reopen(shared: &SharedDb, dir: &Path) {
    let mut slot = shared.write().unwrap_or_else(|e| e.into_inner());
    *slot = None;
    match open_db(dir) {
        Ok(db) => {
            tracing::info!("spool database reopened");
            *slot = Some(std::sync::Arc::new(db));
        }
        Err(e) => tracing::warn!("spool database not reopened yet: {e}"),
    }
}

fn apply_batch(db: &Database, batch: &mut [Request]) -> Result<Vec<Vec<OpResult>>, SpoolError> {
    let mut wr = db.begin_write().map_err(write_err)?;
    wr.set_durability(redb::Durability::Immediate)
        .map_err(write_err)?;
    let mut all = Vec::with_capacity(batch.len());
    {
        let mut messages = wr.open_table(MESSAGES).map_err(write_err)?;
        let mut bodies = wr.open_table(BODIES).map_err(write_err)?;
        let mut idem = wr.open_table(IDEMPOTENCY).map_err(write_err)?;
        for req in batch.iter_mut() {
            let mut results = Vec::with_capacity(req.ops.len());
            for op in req.ops.drain(..) {
                match op {
                    SpoolOp::Insert { message, body } => {
                        if let Some(key) = &message.idempotency_key {
                            let existing = idem
                                .get(key.as_str())
                                .map_err(write_err)?
                                .map(|v| v.value().to_owned());
                            if let Some(id) = existing {
                                results.push(OpResult::Duplicate(id));
                                continue;
                            }
                            idem.insert(key.as_str(), message.queue_id.as_str())
                                .map_err(write_err)?;
                        }
                        let json = serde_json::to_vec(&message).map_err(write_err)?;
                        messages
                            .insert(message.queue_id.as_str(), json.as_slice())
                            .map_err(write_err)?;
                        bodies
                            .insert(message.queue_id.as_str(), body.as_slice())
                            .map_err(write_err)?;
                        results.push(OpResult::Done);
                    }
                    SpoolOp::Update(message) => {
                        let json = serde_json::to_vec(&message).map_err(write_err)?;
                        messages
                            .insert(message.queue_id.as_str(), json.as_slice())
                            .map_err(write_err)?;
                        results.push(OpResult::Done);
                    }
                    SpoolOp::Remove(id) => {
                        messages.remove(id.as_str()).map_err(write_err)?;
                        bodies.remove(id.as_str()).map_err(write_err)?;
                        results.push(OpResult::Done);
                    }
                    SpoolOp::PruneIdempotency { before_ms } => {
                        let mut old = Vec::new();
                        for item in idem.iter().map_err(write_err)? {
                            let (k, v) = item.map_err(write_err)?;
                            if recorded_before(v.value(), before_ms) {
                                old.push(k.value().to_owned());
                            }
                        }
                        for k in &old {
                            idem.remove(k.as_str()).map_err(write_err)?;
                        }
                        results.push(OpResult::Pruned(old.len() as u64));
                    }
                }
            }
            all.push(results);
        }
    }
    wr.commit().map_err(write_err)?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idempotency_keys_older_than_the_cutoff_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let old_id = ulid::Ulid::from_parts(1_000, 7).to_string();
        let new_id = ulid::Ulid::from_parts(5_000, 7).to_string();
        for (id, key) in [(&old_id, "k-old"), (&new_id, "k-new")] {
            let r = spool
                .commit(vec![SpoolOp::Insert {
                    message: msg(id, Some(key)),
                    body: b"x".to_vec(),
                }])
                .await
                .unwrap();
            assert_eq!(r, [OpResult::Done]);
        }
        let r = spool
            .commit(vec![SpoolOp::PruneIdempotency { before_ms: 3_000 }])
            .await
            .unwrap();
        assert_eq!(r, [OpResult::Pruned(1)]);
        // The old key is free again, the new one still guards against a resend.
        let again = |id: &str, key: &str| SpoolOp::Insert {
            message: msg(id, Some(key)),
            body: b"x".to_vec(),
        };
        let fresh = ulid::Ulid::from_parts(6_000, 1).to_string();
        let r = spool
            .commit(vec![again(&fresh, "k-old"), again(&fresh, "k-new")])
            .await
            .unwrap();
        assert_eq!(r, [OpResult::Done, OpResult::Duplicate(new_id.clone())]);
        // The messages themselves are untouched by pruning.
        assert_eq!(spool.load_all().unwrap().len(), 3);
        assert!(!recorded_before("not-a-ulid", i64::MAX));
    }

    fn msg(id: &str, key: Option<&str>) -> QueuedMessage {
        QueuedMessage {
            queue_id: id.into(),
            message_id: format!("<{id}@t>"),
            sender: "a@b.test".into(),
            received_ms: 1,
            stream: "bulk".into(),
            size: 3,
            env_id: None,
            ret_full: false,
            idempotency_key: key.map(Into::into),
            expires_ms: 100,
            recipients: vec![Recipient {
                attempts: 2,
                ..Recipient::queued("x@Example.Test".into(), None, 0, 12345)
            }],
        }
    }

    #[tokio::test]
    async fn state_survives_reopen_exactly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            let r = spool
                .commit(vec![SpoolOp::Insert {
                    message: msg("Q1", Some("k1")),
                    body: b"abc".to_vec(),
                }])
                .await
                .unwrap();
            assert_eq!(r, [OpResult::Done]);
            let again = spool
                .commit(vec![SpoolOp::Insert {
                    message: msg("Q2", Some("k1")),
                    body: b"abc".to_vec(),
                }])
                .await
                .unwrap();
            assert_eq!(again, [OpResult::Duplicate("Q1".into())]);
        }
        // The committing thread still holds the database for a moment after the
        // last handle is dropped; wait until it is released.
        let spool = loop {
            match Spool::open(dir.path()) {
                Ok(s) => break s,
                Err(SpoolError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        };
        let all = spool.load_all().unwrap();
        assert_eq!(all, vec![msg("Q1", Some("k1"))]);
        assert_eq!(spool.body("Q1").unwrap().unwrap(), b"abc");
        assert_eq!(all[0].recipients[0].domain(), "example.test");
    }
}
