//! Readers that translate foreign MTA logs (Postfix, Exim, PowerMTA, KumoMTA) and
//! mxpace's own JSON Lines into [`crate::Event`]s.
//!
//! Every reader is a small state machine fed one line at a time ([`LineReader::feed`]);
//! state is only what correlation needs (open queue IDs), so memory is bounded by the
//! number of messages still in flight, not by the size of the log. Bad lines are
//! counted and skipped with a reason, never a panic.

mod exim;
mod input;
mod kumo;
mod native;
pub mod postfix;
mod powermta;
mod stamp;

pub use input::{Decompression, MAX_LINE, open_path, open_reader, read_line_capped};
pub use stamp::{Stamp, YearTracker};

use crate::Event;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A log format the readers understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// mxpace's own events, one JSON object per line.
    Mxpace,
    /// Postfix via syslog (classic or RFC 3339 timestamps).
    Postfix,
    /// Exim main log.
    Exim,
    /// PowerMTA accounting CSV (header-driven).
    PowerMta,
    /// KumoMTA JSON log records.
    Kumo,
}

impl Format {
    /// Every format, in detection order.
    pub const ALL: [Format; 5] = [
        Format::Mxpace,
        Format::Kumo,
        Format::PowerMta,
        Format::Exim,
        Format::Postfix,
    ];

    /// The name used on the command line and in `Event::origin`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Mxpace => "mxpace",
            Format::Postfix => "postfix",
            Format::Exim => "exim",
            Format::PowerMta => "powermta",
            Format::Kumo => "kumomta",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown `--format` name.
#[derive(Debug, thiserror::Error)]
#[error("unknown log format {0:?} (known: mxpace, postfix, exim, powermta, kumomta)")]
pub struct UnknownFormat(String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mxpace" | "jsonl" => Ok(Format::Mxpace),
            "postfix" => Ok(Format::Postfix),
            "exim" => Ok(Format::Exim),
            "powermta" | "pmta" => Ok(Format::PowerMta),
            "kumomta" | "kumo" => Ok(Format::Kumo),
            _ => Err(UnknownFormat(s.to_string())),
        }
    }
}

/// Guess the format from the first lines of a log: each format scores the lines it
/// recognises and the best score wins. `None` when no line is recognised.
pub fn detect(sample: &[u8]) -> Option<Format> {
    let mut scores = [0usize; Format::ALL.len()];
    for line in sample.split(|&b| b == b'\n').take(200) {
        let line = trim_cr(line);
        if line.is_empty() {
            continue;
        }
        for (i, format) in Format::ALL.iter().enumerate() {
            if recognises(*format, line) {
                scores[i] += 1;
            }
        }
    }
    let (best, score) = scores
        .iter()
        .enumerate()
        .max_by_key(|(i, s)| (**s, usize::MAX - *i))?;
    (*score > 0).then_some(Format::ALL[best])
}

fn recognises(format: Format, line: &[u8]) -> bool {
    match format {
        Format::Mxpace => native::looks_like(line),
        Format::Kumo => kumo::looks_like(line),
        Format::PowerMta => powermta::looks_like(line),
        Format::Exim => exim::looks_like(line),
        Format::Postfix => postfix::looks_like(line),
    }
}

/// Why a line was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// Not valid UTF-8 or contains control bytes (binary garbage).
    Binary,
    /// The line's shape matched the format but a required part was missing or cut.
    Malformed,
    /// The timestamp could not be read.
    BadTimestamp,
    /// Nothing this format recognises (another daemon, another format).
    Unrecognised,
    /// Longer than [`MAX_LINE`]: not kept in memory, not parsed.
    TooLong,
}

impl SkipReason {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            SkipReason::Binary => "binary",
            SkipReason::Malformed => "malformed",
            SkipReason::BadTimestamp => "bad-timestamp",
            SkipReason::Unrecognised => "unrecognised",
            SkipReason::TooLong => "too-long",
        }
    }
}

/// What a reader did with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStatus {
    /// The line was understood (it may or may not have produced events).
    Used,
    /// The line belongs to the log but carries nothing we need (e.g. `connect from`).
    Ignored,
    /// The line could not be read.
    Skipped(SkipReason),
}

/// Settings shared by all readers.
#[derive(Debug, Clone, Default)]
pub struct ReaderConfig {
    /// Year for syslog timestamps that carry none (the shell passes the file's year).
    pub year: Option<i32>,
    /// Month (1–12) in which the log ends, e.g. from the file's modification time.
    pub end_month: Option<u8>,
    /// Sending IP by syslog name, service or transport (e.g. `postfix-out1` → 192.0.2.1).
    pub source_map: HashMap<String, IpAddr>,
}

/// A stateful translator from log lines to events.
pub trait LineReader: Send {
    /// Read one line (without its newline); push any resulting events.
    fn feed(&mut self, line: &[u8], out: &mut Vec<Event>) -> LineStatus;
    /// Number of messages whose correlation state is held (open queue IDs).
    fn open_ids(&self) -> usize {
        0
    }
}

/// A reader for `format`.
pub fn reader_for(format: Format, config: &ReaderConfig) -> Box<dyn LineReader> {
    match format {
        Format::Mxpace => Box::new(native::NativeReader),
        Format::Postfix => Box::new(postfix::PostfixReader::new(config.clone())),
        Format::Exim => Box::new(exim::EximReader::new(config.clone())),
        Format::PowerMta => Box::new(powermta::PowerMtaReader::new(config.clone())),
        Format::Kumo => Box::new(kumo::KumoReader),
    }
}

/// Counts of lines read, used and skipped (by reason).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub lines: u64,
    pub bytes: u64,
    pub used: u64,
    pub ignored: u64,
    pub events: u64,
    pub skipped: std::collections::BTreeMap<SkipReason, u64>,
}

impl ReadStats {
    /// Record the status of one line of `len` bytes that produced `events` events.
    pub fn count(&mut self, status: LineStatus, len: usize, events: usize) {
        self.lines += 1;
        self.bytes += len as u64 + 1;
        self.events += events as u64;
        match status {
            LineStatus::Used => self.used += 1,
            LineStatus::Ignored => self.ignored += 1,
            LineStatus::Skipped(r) => *self.skipped.entry(r).or_default() += 1,
        }
    }

    /// Total skipped lines.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// Add another run's counts.
    pub fn merge(&mut self, other: &ReadStats) {
        self.lines += other.lines;
        self.bytes += other.bytes;
        self.used += other.used;
        self.ignored += other.ignored;
        self.events += other.events;
        for (r, n) in &other.skipped {
            *self.skipped.entry(*r).or_default() += n;
        }
    }
}

/// Strip a trailing `\r`.
pub(crate) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The line as text, or `Binary` when it is not UTF-8 or holds control bytes.
pub(crate) fn text(line: &[u8]) -> Result<&str, SkipReason> {
    let s = std::str::from_utf8(trim_cr(line)).map_err(|_| SkipReason::Binary)?;
    if has_control(s.as_bytes(), b'\t') {
        return Err(SkipReason::Binary);
    }
    Ok(s)
}

/// Whether `bytes` holds a control character other than `allowed` (and the tab).
fn has_control(bytes: &[u8], allowed: u8) -> bool {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= 256 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `has_control_avx2` needs AVX2, which the CPU has (checked just above).
        // It does no unchecked memory access.
        return unsafe { has_control_avx2(bytes, allowed) };
    }
    has_control_portable(bytes, allowed)
}

/// [`has_control_portable`] compiled for AVX2: the same loop, vectorised 32 bytes wide
/// (a whole 256 KB piece is checked at once, so the width counts).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn has_control_avx2(bytes: &[u8], allowed: u8) -> bool {
    has_control_portable(bytes, allowed)
}

/// The check itself, inlined into each caller so that it is compiled for the caller's
/// vector width.
#[inline(always)]
fn has_control_portable(bytes: &[u8], allowed: u8) -> bool {
    // Branch-free per block so that the compiler vectorises the scan (it runs on every
    // line, or on every block of lines).
    let control = |block: &[u8]| {
        block.iter().fold(false, |found, &b| {
            found | ((b < 0x20) & (b != b'\t') & (b != allowed))
        })
    };
    bytes.chunks(128).any(control)
}

/// A block of lines as text when every line in it would pass as text on its own:
/// valid UTF-8 with no control characters but tabs and the `\n`s between lines (so no
/// `\r` either). Checking a block once costs far less than checking each line; the
/// UTF-8 check is `simdutf8`'s (AVX2 when the CPU has it, several times the standard
/// library's speed on these mostly-ASCII blocks).
pub fn clean_text(block: &[u8]) -> Option<&str> {
    let s = simdutf8::basic::from_utf8(block).ok()?;
    (!has_control(block, b'\n')).then_some(s)
}

/// The domain part of an address (lower-cased), or "" for none.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
        .unwrap_or_default()
}

/// Split `host[ip]` or `host [ip]` into its parts.
pub(crate) fn host_and_ip(s: &str) -> (Option<String>, Option<IpAddr>) {
    let s = s.trim();
    match s.find('[') {
        Some(open) => {
            let host = s[..open].trim();
            let rest = &s[open + 1..];
            let ip = rest[..rest.find(']').unwrap_or(rest.len())].parse().ok();
            let host = (!host.is_empty() && host != "none").then(|| host.to_ascii_lowercase());
            (host, ip)
        }
        None => (
            (!s.is_empty() && s != "none").then(|| s.to_ascii_lowercase()),
            None,
        ),
    }
}

#[cfg(test)]
mod tests;
