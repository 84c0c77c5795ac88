//! mxpace's own events: one [`Event`] as JSON per line (docs/events.md).

use super::{LineReader, LineStatus, SkipReason, text};
use crate::Event;

/// Whether a line looks like an mxpace event (lower-case `type` and an RFC 3339 `time`).
pub fn looks_like(line: &[u8]) -> bool {
    line.starts_with(b"{")
        && memchr::memmem::find(line, b"\"time\"").is_some()
        && [
            &b"\"type\":\"attempt\""[..],
            b"\"type\":\"received\"",
            b"\"type\":\"expired\"",
            b"\"type\":\"pacing\"",
        ]
        .iter()
        .any(|t| memchr::memmem::find(line, t).is_some())
}

/// Reader for mxpace JSON Lines.
pub struct NativeReader;

impl LineReader for NativeReader {
    fn feed(&mut self, line: &[u8], out: &mut Vec<Event>) -> LineStatus {
        let s = match text(line) {
            Ok(s) => s,
            Err(r) => return LineStatus::Skipped(r),
        };
        if s.trim().is_empty() {
            return LineStatus::Ignored;
        }
        match serde_json::from_str::<Event>(s) {
            Ok(mut e) => {
                if e.origin.is_none() {
                    e.origin = Some("mxpace".into());
                }
                out.push(e);
                LineStatus::Used
            }
            Err(_) => LineStatus::Skipped(SkipReason::Malformed),
        }
    }
}
