//! PowerMTA accounting CSV (research/mta-designs.md §2.4): RFC 4180, a header line whose
//! first column is `type`, columns looked up by name so any `record-fields` selection
//! works. Record types: `d` delivered, `b` bounced, `t` transient failure, `tq`
//! queue-level transient failure, `r` received. Times are `YYYY-MM-DD hh:mm:ss±zzzz` or
//! Unix seconds. A new header line (log rotation, concatenated files) replaces the old.

use super::stamp;
use super::{LineReader, LineStatus, ReaderConfig, SkipReason, host_and_ip, text};
use crate::{Event, EventType, Outcome};
use std::collections::HashMap;

/// Whether a line is a PowerMTA header or record.
pub fn looks_like(line: &[u8]) -> bool {
    line.starts_with(b"type,timeLogged")
        || (line.len() > 3
            && matches!(&line[..2], b"d," | b"b," | b"t,")
            && line.iter().filter(|&&b| b == b',').count() >= 8)
}

/// Header-driven PowerMTA reader.
pub struct PowerMtaReader {
    config: ReaderConfig,
    columns: HashMap<String, usize>,
}

impl PowerMtaReader {
    /// A reader with these settings.
    pub fn new(config: ReaderConfig) -> Self {
        PowerMtaReader {
            config,
            columns: HashMap::new(),
        }
    }

    fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> &'r str {
        self.columns
            .get(name)
            .and_then(|&i| record.get(i))
            .unwrap_or("")
            .trim()
    }

    fn line(&mut self, s: &str, out: &mut Vec<Event>) -> Result<LineStatus, SkipReason> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(s.as_bytes());
        let mut record = csv::StringRecord::new();
        match reader.read_record(&mut record) {
            Ok(true) => {}
            _ => return Err(SkipReason::Malformed),
        }
        if record.get(0) == Some("type") {
            self.columns = record
                .iter()
                .enumerate()
                .map(|(i, name)| (name.trim().to_string(), i))
                .collect();
            return Ok(LineStatus::Used);
        }
        if self.columns.is_empty() {
            return Err(SkipReason::Unrecognised);
        }
        let kind = self.get(&record, "type");
        let (kind, outcome) = match kind {
            "d" => (EventType::Attempt, Some(Outcome::Delivered)),
            "b" => (EventType::Attempt, Some(Outcome::Bounced)),
            "t" => (EventType::Attempt, Some(Outcome::Deferred)),
            "tq" => (EventType::Attempt, Some(Outcome::ConnectionFailed)),
            "r" => (EventType::Received, None),
            "" => return Err(SkipReason::Malformed),
            _ => return Ok(LineStatus::Ignored),
        };
        let logged = self.get(&record, "timeLogged");
        let time = stamp::iso(logged)
            .map(|(t, _)| t)
            .or_else(|| stamp::unix(logged))
            .ok_or(SkipReason::BadTimestamp)?;
        let mut e = Event::new(kind, time);
        e.outcome = outcome;
        e.origin = Some("powermta".into());
        e.sender = self.get(&record, "orig").to_string();
        e.recipient = self.get(&record, "rcpt").to_string();
        e.message_id = self.get(&record, "envId").to_string();
        e.queue_id = match self.get(&record, "envId") {
            "" => format!("{}:{}", self.get(&record, "jobId"), e.recipient),
            env => env.to_string(),
        };
        e.size = self.get(&record, "dlvSize").parse().ok();
        e.source_ip = self.get(&record, "dlvSourceIp").parse().ok();
        if e.source_ip.is_none() {
            e.source_ip = self
                .config
                .source_map
                .get(self.get(&record, "vmta"))
                .copied();
        }
        e.peer_ip = self.get(&record, "dlvDestinationIp").parse().ok();
        // dsnMta is "host (ip)" for remote replies.
        let mta = self.get(&record, "dsnMta");
        if !mta.is_empty() {
            let (host, ip) = host_and_ip(&mta.replace('(', "[").replace(')', "]"));
            e.mx_host = host;
            e.peer_ip = e.peer_ip.or(ip);
        }
        let diag = self.get(&record, "dsnDiag");
        let diag = diag.strip_prefix("smtp;").unwrap_or(diag).trim();
        e.reply = (!diag.is_empty()).then(|| diag.to_string());
        let job = self.get(&record, "jobId");
        e.stream = (!job.is_empty()).then(|| job.to_string());
        for (column, key) in [
            ("vmta", "vmta"),
            ("dsnStatus", "dsn"),
            ("bounceCat", "bounce_category"),
        ] {
            let v = self.get(&record, column);
            if !v.is_empty() {
                e.extra.insert(key.into(), v.into());
            }
        }
        out.push(e);
        Ok(LineStatus::Used)
    }
}

impl LineReader for PowerMtaReader {
    fn feed(&mut self, line: &[u8], out: &mut Vec<Event>) -> LineStatus {
        match text(line).and_then(|s| self.line(s, out)) {
            Ok(status) => status,
            Err(reason) => LineStatus::Skipped(reason),
        }
    }
}
