//! JSON Lines writer.

use crate::Event;
use std::io::{self, Write};

/// Writes one event per line to any `Write`.
pub struct EventWriter<W: Write> {
    out: W,
}

impl<W: Write> EventWriter<W> {
    /// Wrap a writer (buffer it yourself if needed).
    pub fn new(out: W) -> Self {
        EventWriter { out }
    }

    /// Append one event as a JSON line.
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")
    }

    /// Flush the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The inner writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}
