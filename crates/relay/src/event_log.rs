//! Appends events (docs/events.md) to the configured JSONL file.

use mxpace_events::{Event, EventWriter};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::Path;
use std::sync::Mutex;

/// A shared, line-atomic event log.
pub struct EventLog {
    writer: Mutex<EventWriter<BufWriter<File>>>,
}

impl EventLog {
    /// Open `path` for appending (created if missing).
    pub fn open(path: &Path) -> io::Result<EventLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(EventLog {
            writer: Mutex::new(EventWriter::new(BufWriter::new(file))),
        })
    }

    /// Write events and flush them to the file (not fsynced: the spool, not the
    /// log, is the durable record).
    pub fn write_all(&self, events: &[Event]) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let result = events
            .iter()
            .try_for_each(|e| w.write(e))
            .and_then(|_| w.flush());
        if let Err(e) = result {
            tracing::error!("writing events: {e}");
        }
    }
}
