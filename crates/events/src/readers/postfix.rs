//! Postfix via syslog. Format (Postfix `src/global/log_adhoc.c`, see
//! research/mta-designs.md §1.3):
//!
//! ```text
//! <stamp> <host> postfix[-<ip>]/smtp[PID]: QID: to=<rcpt>[, orig_to=<a>], relay=HOST[IP]:PORT[, conn_use=N],
//!     delay=D, delays=a/b/c/d[, tls=...], dsn=X.Y.Z, status=WORD (REASON)
//! <stamp> <host> postfix/qmgr[PID]: QID: from=<sender>, size=N, nrcpt=M (queue active)
//! <stamp> <host> postfix/qmgr[PID]: QID: from=<sender>, status=expired, returned to sender
//! <stamp> <host> postfix/cleanup[PID]: QID: message-id=<id>
//! <stamp> <host> postfix/qmgr[PID]: QID: removed
//! ```
//!
//! Parsing is split in two so that it can run on several cores: [`parse_line`] is
//! stateless (any line, any thread), [`Correlator::apply`] is the cheap ordered step that
//! joins lines by queue ID and gives year-less stamps their year.

use super::stamp::{self, Stamp, YearTracker};
use super::{LineReader, LineStatus, ReaderConfig, SkipReason, text};
use crate::{Event, EventType, Outcome};
use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use time::OffsetDateTime;

/// Whether a line looks like Postfix syslog (for format detection).
pub fn looks_like(line: &[u8]) -> bool {
    matches!(parse_line(line, &ReaderConfig::default()), Ok(Some(_)))
}

/// One Postfix line, parsed but not yet joined with the others of its queue ID. Every
/// text borrows from the line: parsing allocates nothing, so it can run on any thread
/// and hand its result to the ordered step without a heap copy per line.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    pub stamp: Stamp,
    pub record: Record<'a>,
}

/// The lines that matter for delivery analysis.
#[derive(Debug, Clone)]
pub enum Record<'a> {
    /// cleanup: `message-id=<...>`.
    MessageId { qid: &'a str, message_id: &'a str },
    /// qmgr: `from=<...>, size=N, nrcpt=M`.
    From {
        qid: &'a str,
        sender: &'a str,
        size: Option<u64>,
    },
    /// qmgr: `from=<...>, status=expired, returned to sender`.
    Expired { qid: &'a str, sender: &'a str },
    /// qmgr (end of life) or postsuper (operator or application deleted it).
    Removed { qid: &'a str, by_operator: bool },
    /// bounce: `sender non-delivery notification: NEWQID`.
    Notice { qid: &'a str, dsn_qid: &'a str },
    /// smtp/lmtp/local/virtual/error: one recipient's attempt; time, sender and
    /// message-id are filled in by the correlator.
    Delivery(Delivery<'a>),
}

/// One recipient's delivery attempt as logged by smtp/lmtp/local/virtual/error.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub qid: &'a str,
    pub recipient: &'a str,
    /// Sending IP (service name `postfix-<ip>` or the user's map).
    pub source_ip: Option<IpAddr>,
    /// Receiving host as logged (not lower-cased; `None` for `none`).
    pub mx_host: Option<&'a str>,
    pub peer_ip: Option<IpAddr>,
    pub tls: Option<&'a str>,
    pub dsn: Option<&'a str>,
    pub outcome: Outcome,
    /// `delivery temporarily suspended`: held by the queue manager, not tried on the wire.
    pub held: bool,
    /// The server's reply (or Postfix's reason); "" when none.
    pub reply: &'a str,
    /// The smtp process ID, which identifies the SMTP session; "" when none.
    pub session: &'a str,
}

impl Delivery<'_> {
    /// The attempt as an event at `time` (sender and message-id still empty).
    pub fn to_event(&self, time: OffsetDateTime) -> Event {
        let mut event = Event::new(EventType::Attempt, time);
        event.queue_id = self.qid.to_string();
        event.recipient = self.recipient.to_string();
        event.origin = Some("postfix".into());
        event.source_ip = self.source_ip;
        event.mx_host = self.mx_host.map(str::to_ascii_lowercase);
        event.peer_ip = self.peer_ip;
        if let Some(tls) = self.tls {
            event.extra.insert("tls".into(), tls.into());
        }
        if let Some(dsn) = self.dsn {
            event.extra.insert("dsn".into(), dsn.into());
        }
        event.outcome = Some(self.outcome);
        if self.held {
            event.extra.insert("held".into(), true.into());
        }
        event.reply = (!self.reply.is_empty()).then(|| self.reply.to_string());
        if !self.session.is_empty() {
            event.extra.insert("session".into(), self.session.into());
        }
        event
    }
}

/// Syslog header of a line: stamp, host, program tag and the message.
struct Header<'a> {
    stamp: Stamp,
    syslog_name: &'a str,
    daemon: &'a str,
    pid: &'a str,
    msg: &'a str,
}

fn header(s: &str) -> Result<Header<'_>, SkipReason> {
    let (stamp, rest) = if s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        let (t, rest) = stamp::iso(s).ok_or(SkipReason::BadTimestamp)?;
        (Stamp::Full(t), rest)
    } else {
        stamp::classic(s).ok_or(SkipReason::Unrecognised)?
    };
    let (_host, rest) = split_at_byte(rest, b' ').ok_or(SkipReason::Unrecognised)?;
    let (tag, msg) = split_pair(rest, b':').ok_or(SkipReason::Unrecognised)?;
    let (program, pid) = match tag.bytes().position(|b| b == b'[') {
        Some(i) => (&tag[..i], tag[i + 1..].trim_end_matches(']')),
        None => (tag, ""),
    };
    // Other daemons (`dovecot`, `opendkim`) have no `/daemon` part; the caller ignores them.
    let (syslog_name, daemon) = match program.bytes().rposition(|b| b == b'/') {
        Some(i) => (&program[..i], &program[i + 1..]),
        None => ("", program),
    };
    Ok(Header {
        stamp,
        syslog_name,
        daemon,
        pid,
        msg,
    })
}

/// A Postfix queue ID: short hex (`3F2A81C0D2`) or long (`4Qz8Lb1Xyz9abc`) form.
fn is_queue_id(s: &str) -> bool {
    // By table and without an early exit: queue IDs mix digits and letters at random, so
    // a test per character class mispredicts a branch on most characters.
    (5..=20).contains(&s.len())
        && s.bytes()
            .fold(true, |ok, b| ok & (QID_DIGITS[b as usize] != 0))
}

/// The 6-bit value of each queue-ID character (`0-9` 1–10, `A-Z` 11–36, `a-z` 37–62);
/// 0 for any other byte.
static QID_DIGITS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = match c as u8 {
            b'0'..=b'9' => c as u8 - b'0' + 1,
            b'A'..=b'Z' => c as u8 - b'A' + 11,
            b'a'..=b'z' => c as u8 - b'a' + 37,
            _ => 0,
        };
        c += 1;
    }
    table
};

/// Parse one line without any state. `Ok(None)`: a line of the log that carries
/// nothing we need (another daemon, `connect from`, warnings).
pub fn parse_line<'a>(
    line: &'a [u8],
    config: &ReaderConfig,
) -> Result<Option<Parsed<'a>>, SkipReason> {
    parse_text(text(line)?, config)
}

/// [`parse_line`] for a line already known to be text: valid UTF-8 without control
/// characters but tabs, and without its line end (e.g. cut from a block that passed
/// [`super::clean_text`]).
pub fn parse_text<'a>(s: &'a str, config: &ReaderConfig) -> Result<Option<Parsed<'a>>, SkipReason> {
    let h = header(s)?;
    if !h.syslog_name.starts_with("postfix") && !config.source_map.contains_key(h.syslog_name) {
        return Ok(None);
    }
    let Some((qid, body)) = split_pair(h.msg, b':') else {
        return Ok(None);
    };
    if !is_queue_id(qid) {
        return Ok(None);
    }
    let record = if let Some(rest) = body.strip_prefix("to=<") {
        Record::Delivery(delivery(&h, qid, rest, config)?)
    } else if let Some(rest) = body.strip_prefix("from=<") {
        let (sender, rest) = split_at_gt(rest)?;
        if FINDERS.expired.find(rest.as_bytes()).is_some() {
            Record::Expired { qid, sender }
        } else if h.daemon == "qmgr" {
            let size = size_field(rest).and_then(|v| v.parse().ok());
            Record::From { qid, sender, size }
        } else {
            return Ok(None);
        }
    } else if let Some(rest) = body.strip_prefix("message-id=") {
        Record::MessageId {
            qid,
            message_id: rest.trim().trim_start_matches('<').trim_end_matches('>'),
        }
    } else if body == "removed" {
        Record::Removed {
            qid,
            by_operator: h.daemon == "postsuper",
        }
    } else if let Some(rest) = body
        .strip_prefix("sender non-delivery notification: ")
        .or_else(|| body.strip_prefix("sender delivery status notification: "))
    {
        Record::Notice {
            qid,
            dsn_qid: rest.trim(),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(Parsed {
        stamp: h.stamp,
        record,
    }))
}

/// Position of `c` followed by a space (`: `, `, `), found with memchr: these splits run
/// on every line, and a `&str` pattern would build a substring searcher each time.
fn find_pair(s: &str, c: u8) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(i) = memchr::memchr(c, &b[from..]) {
        let at = from + i;
        if b.get(at + 1) == Some(&b' ') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Split at the first `c` followed by a space.
fn split_pair(s: &str, c: u8) -> Option<(&str, &str)> {
    find_pair(s, c).map(|at| (&s[..at], &s[at + 2..]))
}

/// Split at the first `c` (an ASCII byte). The texts split this way on every line are
/// a few bytes long: a plain scan costs less than a `char` pattern's searcher.
fn split_at_byte(s: &str, c: u8) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == c)?;
    Some((&s[..i], &s[i + 1..]))
}

/// Split an address field's rest at its closing `>` (memchr: a `char` pattern's
/// searcher costs more than the search on these short texts).
fn split_at_gt(s: &str) -> Result<(&str, &str), SkipReason> {
    let i = memchr::memchr(b'>', s.as_bytes()).ok_or(SkipReason::Malformed)?;
    Ok((&s[..i], &s[i + 1..]))
}

/// Where a field's `=` is: field names are a few bytes (`relay`, `delays`, `dsn`), and a
/// plain look at the first 16 bytes costs less than a `memchr` call's set-up; longer
/// text (a malformed line) goes to `memchr`.
fn field_name_end(b: &[u8]) -> Option<usize> {
    let head = b.len().min(16);
    match b[..head].iter().position(|&c| c == b'=') {
        Some(i) => Some(i),
        None => memchr::memchr(b'=', &b[head..]).map(|i| head + i),
    }
}

/// Value of `size=` in a `, `-separated field list.
fn size_field(s: &str) -> Option<&str> {
    // qmgr writes `from=<...>, size=N, ...`: the field is usually right there.
    let i = if s.starts_with(", size=") {
        2
    } else {
        FINDERS.size.find(s.as_bytes())?
    };
    let v = &s[i + "size=".len()..];
    let end = v.bytes().position(|b| b == b',' || b == b' ');
    Some(&v[..end.unwrap_or(v.len())])
}

fn delivery<'a>(
    h: &Header<'a>,
    qid: &'a str,
    rest: &'a str,
    config: &ReaderConfig,
) -> Result<Delivery<'a>, SkipReason> {
    let (recipient, mut rest) = split_at_gt(rest)?;
    let mut d = Delivery {
        qid,
        recipient,
        source_ip: source_ip(h, config),
        mx_host: None,
        peer_ip: None,
        tls: None,
        dsn: None,
        outcome: Outcome::Delivered,
        held: false,
        reply: "",
        session: h.pid,
    };
    let mut status = None;
    let mut reason = "";
    // Fields are `, name=value` until `status=WORD (REASON)`, whose REASON may hold commas.
    while let Some(next) = rest.strip_prefix(", ") {
        let eq = field_name_end(next.as_bytes()).ok_or(SkipReason::Malformed)?;
        let (name, value_and_rest) = (&next[..eq], &next[eq + 1..]);
        if name == "status" {
            let (word, tail) = split_at_byte(value_and_rest, b' ').unwrap_or((value_and_rest, ""));
            status = Some(word);
            reason = tail.trim().strip_prefix('(').unwrap_or(tail.trim());
            reason = reason.strip_suffix(')').unwrap_or(reason);
            break;
        }
        let end = find_pair(value_and_rest, b',').unwrap_or(value_and_rest.len());
        let value = &value_and_rest[..end];
        match name {
            "relay" => {
                // HOST[IP]:PORT, or `none`, `local`, `private/dovecot-lmtp`.
                // The last `]:` (found without building a substring searcher).
                let b = value.as_bytes();
                let port = memchr::memrchr_iter(b']', b).find(|&i| b.get(i + 1) == Some(&b':'));
                let host_ip = port.map_or(value, |i| &value[..i]);
                let (host, ip) = host_and_ip_raw(host_ip);
                d.mx_host = host;
                d.peer_ip = ip;
            }
            "tls" => d.tls = Some(value),
            "dsn" => d.dsn = Some(value),
            _ => {}
        }
        rest = &value_and_rest[end..];
    }
    let status = status.ok_or(SkipReason::Malformed)?;
    d.outcome = match status {
        "sent" | "delivered" => Outcome::Delivered,
        "bounced" => Outcome::Bounced,
        "deferred" => {
            if reason.starts_with("connect to ")
                || reason.starts_with("lost connection ")
                || reason.starts_with("conversation with ")
                || reason.starts_with("Host or domain name not found")
            {
                Outcome::ConnectionFailed
            } else {
                Outcome::Deferred
            }
        }
        _ => return Err(SkipReason::Malformed),
    };
    // The queue manager held it without trying: not an attempt on the wire.
    d.held = reason.starts_with("delivery temporarily suspended");
    d.reply = if reason.is_empty() {
        ""
    } else {
        reply_of(reason)
    };
    Ok(d)
}

/// A dotted-quad IPv4 address, parsed by hand for the common case (it is parsed on every
/// delivery line, from the `postfix-<ip>` service name); anything else goes to the
/// standard parser, so the result is the same.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let b = s.as_bytes();
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        let start = i;
        let mut v: u32 = 0;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 3 {
            v = v * 10 + (b[i] - b'0') as u32;
            i += 1;
        }
        let digits = i - start;
        // Leading zeros and out-of-range octets: let the standard parser decide.
        if digits == 0 || v > 255 || (digits > 1 && b[start] == b'0') {
            return s.parse().ok();
        }
        *octet = v as u8;
        if n < 3 {
            if b.get(i) != Some(&b'.') {
                return s.parse().ok();
            }
            i += 1;
        }
    }
    if i != b.len() {
        return s.parse().ok();
    }
    Some(IpAddr::from(octets))
}

/// `host[ip]` split like [`host_and_ip`], the host borrowed as logged.
fn host_and_ip_raw(s: &str) -> (Option<&str>, Option<IpAddr>) {
    let s = s.trim();
    let (host, ip) = match memchr::memchr(b'[', s.as_bytes()) {
        Some(open) => {
            let rest = &s[open + 1..];
            let close = memchr::memchr(b']', rest.as_bytes()).unwrap_or(rest.len());
            (s[..open].trim(), parse_ip(&rest[..close]))
        }
        None => (s, None),
    };
    ((!host.is_empty() && host != "none").then_some(host), ip)
}

/// Substring searchers used on every line, built once (building one costs more than
/// searching a short line).
struct Finders {
    expired: memchr::memmem::Finder<'static>,
    size: memchr::memmem::Finder<'static>,
    said: memchr::memmem::Finder<'static>,
    refused: memchr::memmem::Finder<'static>,
}

static FINDERS: std::sync::LazyLock<Finders> = std::sync::LazyLock::new(|| Finders {
    expired: memchr::memmem::Finder::new("status=expired"),
    size: memchr::memmem::Finder::new("size="),
    said: memchr::memmem::Finder::new(" said: "),
    refused: memchr::memmem::Finder::new(" refused to talk to me: "),
});

/// Where the last ` (in reply to ` of `s` starts. Each occurrence has its `(` one byte in,
/// so the `(`s are tried from the end (memrchr: a reverse substring search has no
/// vectorised path and cost more than the rest of the line's parsing together).
fn last_in_reply_to(s: &str) -> Option<usize> {
    const NEEDLE: &[u8] = b" (in reply to ";
    let b = s.as_bytes();
    memchr::memrchr_iter(b'(', b)
        .filter(|&i| i > 0)
        .map(|i| i - 1)
        .find(|&start| b[start..].starts_with(NEEDLE))
}

/// The server's reply inside a Postfix reason, e.g.
/// `host H[IP] said: 451 4.7.500 ... (in reply to RCPT TO command)` → `451 4.7.500 ...`.
fn reply_of(reason: &str) -> &str {
    let b = reason.as_bytes();
    let start = FINDERS
        .said
        .find(b)
        .map(|i| i + 7)
        .or_else(|| FINDERS.refused.find(b).map(|i| i + 24))
        .unwrap_or(0);
    let body = &reason[start..];
    match last_in_reply_to(body) {
        Some(end) if start > 0 => &body[..end],
        _ => body,
    }
}

/// The sending IP: `postfix-<ip>/smtp`, else the user's map by full tag, syslog name or daemon.
fn source_ip(h: &Header<'_>, config: &ReaderConfig) -> Option<IpAddr> {
    if let Some(ip) = h.syslog_name.strip_prefix("postfix-").and_then(parse_ip) {
        return Some(ip);
    }
    if config.source_map.is_empty() {
        return None;
    }
    // `syslog_name/daemon` put together on the stack (this runs on every line of a log
    // read with a mapping); a longer name is put together on the heap.
    let mut buf = [0u8; 128];
    let (name, daemon) = (h.syslog_name.as_bytes(), h.daemon.as_bytes());
    let joined = name.len() + 1 + daemon.len();
    let heap;
    let full = if joined <= buf.len() {
        buf[..name.len()].copy_from_slice(name);
        buf[name.len()] = b'/';
        buf[name.len() + 1..joined].copy_from_slice(daemon);
        std::str::from_utf8(&buf[..joined]).unwrap_or_default()
    } else {
        heap = format!("{}/{}", h.syslog_name, h.daemon);
        heap.as_str()
    };
    config
        .source_map
        .get(full)
        .or_else(|| config.source_map.get(h.syslog_name))
        .or_else(|| config.source_map.get(h.daemon))
        .copied()
}

#[cfg(test)]
mod key_tests {
    use super::{is_queue_id, parse_ip, qid_key};

    #[test]
    fn the_hand_made_ipv4_parser_agrees_with_the_standard_one() {
        for s in [
            "198.51.100.1",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.",
            "1.2.3.4x",
            "1..2.3",
            "",
            "2001:db8::1",
            "::1",
            "1.2.3.04",
            "10.0.0.1000",
        ] {
            assert_eq!(parse_ip(s), s.parse().ok(), "{s:?}");
        }
    }

    #[test]
    fn the_last_in_reply_to_is_found_as_a_reverse_substring_search_finds_it() {
        for s in [
            "",
            "(",
            " (in reply to ",
            "x (in reply to RCPT TO command)",
            "451 4.7.500 busy (S77714) [h] (in reply to RCPT TO command)",
            "a (in reply to b) (in reply to c)",
            "(in reply to x)",
            "a  (in reply to x) (S1)",
            "a (in reply to",
            "((((",
        ] {
            assert_eq!(
                super::last_in_reply_to(s),
                memchr::memmem::rfind(s.as_bytes(), b" (in reply to "),
                "{s:?}"
            );
        }
        assert_eq!(super::size_field(", size=4001, nrcpt=1"), Some("4001"));
        assert_eq!(super::size_field(", nrcpt=1, size=12"), Some("12"));
        assert_eq!(super::size_field(", nrcpt=1"), None);
        assert_eq!(super::split_at_gt("a@b>, x").unwrap(), ("a@b", ", x"));
        assert!(super::split_at_gt("a@b").is_err());
    }

    #[test]
    fn open_state_fits_a_cache_line_with_its_key() {
        assert_eq!(std::mem::size_of::<(u128, super::Open)>(), 64);
        let mut open = super::Open::default();
        open.set_sender("a@example.com");
        open.set_message_id("id-1@example.com");
        assert_eq!(
            (open.message_id(), open.sender()),
            ("id-1@example.com", "a@example.com")
        );
        open.set_message_id("x");
        open.set_sender("");
        assert_eq!((open.message_id(), open.sender()), ("x", ""));
        assert_eq!(open.size(), None);
    }

    #[test]
    fn deferred_recipients_share_the_buffer_and_survive_later_sender_and_id_changes() {
        let mut open = super::Open::default();
        open.defer("a@example.com");
        open.set_message_id("id-1@example.com");
        open.defer("b@example.org");
        open.defer("a@example.com"); // listed once
        open.set_sender("bounce@example.net");
        open.defer("c@example.net");
        let listed = |o: &super::Open| o.deferred().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            listed(&open),
            ["a@example.com", "b@example.org", "c@example.net"]
        );
        open.settle("b@example.org");
        open.settle("nobody@example.com");
        assert_eq!(listed(&open), ["a@example.com", "c@example.net"]);
        open.set_sender("");
        open.set_message_id("much-longer-id-2@example.com");
        assert_eq!(
            (open.message_id(), open.sender()),
            ("much-longer-id-2@example.com", "")
        );
        assert_eq!(listed(&open), ["a@example.com", "c@example.net"]);
        open.settle("a@example.com");
        open.settle("c@example.net");
        assert_eq!(listed(&open), Vec::<String>::new());
        assert_eq!(open.text, "much-longer-id-2@example.com");
        // The sender again (a retry), then another with and without recipients after it.
        let mut fresh = super::Open::default();
        fresh.set_message_id("id@x");
        fresh.set_sender("s@x");
        fresh.set_sender("s@x");
        fresh.set_sender("other@x");
        assert_eq!(fresh.text, "id@xother@x");
        fresh.defer("r@x");
        fresh.set_sender("s@x");
        assert_eq!((fresh.message_id(), fresh.sender()), ("id@x", "s@x"));
        assert_eq!(listed(&fresh), ["r@x"]);
        assert_eq!(fresh.text, "id@xs@xr@x\n");
    }

    #[test]
    fn field_names_end_where_memchr_finds_the_equals_sign() {
        let long = format!("{}=x", "n".repeat(40));
        for s in [
            "relay=a",
            "=",
            "",
            "dsn",
            "delays=1=2",
            "0123456789abcde=",
            "0123456789abcdef=",
        ]
        .into_iter()
        .chain([long.as_str()])
        {
            let b = s.as_bytes();
            assert_eq!(super::field_name_end(b), memchr::memchr(b'=', b), "{s:?}");
        }
    }

    #[test]
    fn queue_ids_are_5_to_20_letters_and_digits() {
        assert!(is_queue_id("3F2A81C0D2") && is_queue_id("4Qz8Lb1Xyz9abc"));
        assert!(!is_queue_id("3F2A") && !is_queue_id("3F2A-1C0D2") && !is_queue_id("NOQUEUE:"));
        assert!(!is_queue_id("zzzzzzzzzzzzzzzzzzzzz"));
    }

    #[test]
    fn queue_id_keys_are_exact_for_postfix_ids_and_never_collide_with_other_text() {
        let ids = [
            "3F2A81C0D2",
            "03F2A81C0D2",
            "3F2A81C0D20",
            "4Qz8Lb1Xyz9abc",
            "zzzzzzzzzzzzzzzzzzzz",
            "00000",
        ];
        let keys: std::collections::HashSet<u128> = ids.iter().map(|q| qid_key(q)).collect();
        assert_eq!(keys.len(), ids.len());
        assert_eq!(qid_key("4Qz8Lb1Xyz9abc"), qid_key("4Qz8Lb1Xyz9abc"));
        // Not a queue ID: hashed, marked by the top bit, so it cannot equal an exact key.
        assert!(qid_key("not-a-queue-id") >> 127 == 1);
        assert!(qid_key("zzzzzzzzzzzzzzzzzzzz") >> 127 == 0);
        assert!(qid_key("zzzzzzzzzzzzzzzzzzzzz") >> 127 == 1);
    }
}

/// What is known about a queue ID still in the queue.
///
/// Kept to 48 bytes (64 with its key, one cache line: the map is probed on most lines and
/// holds every queue ID in flight, so its size is cache misses). Everything textual
/// shares one buffer: one allocation per message, and one cache line to fetch when a
/// deferred message comes back hours later.
#[derive(Debug, Default)]
struct Open {
    /// The message-id, the sender, then each recipient whose last attempt was deferred
    /// (for expiry and deletion records) followed by `\n` (a log line holds none).
    text: String,
    /// Length of the message-id at the start of `text`.
    sender_at: u32,
    /// Where the sender ends and the deferred recipients begin.
    deferred_at: u32,
    announced: bool,
    has_size: bool,
    size: u64,
}

impl Open {
    fn message_id(&self) -> &str {
        &self.text[..self.sender_at as usize]
    }

    fn sender(&self) -> &str {
        &self.text[self.sender_at as usize..self.deferred_at as usize]
    }

    fn size(&self) -> Option<u64> {
        self.has_size.then_some(self.size)
    }

    fn set_message_id(&mut self, id: &str) {
        let id = self.fitting(id, self.sender_at);
        if self.text.is_empty() {
            // The usual order (cleanup's message-id, then qmgr's sender): one allocation
            // with room for both and a deferred recipient, instead of reallocations later.
            self.text.reserve(id.len() + TEXT_ROOM);
            self.text.push_str(id);
        } else {
            self.text.replace_range(..self.sender_at as usize, id);
        }
        let (old, new) = (self.sender_at, id.len() as u32);
        self.sender_at = new;
        self.deferred_at = self.deferred_at - old + new;
    }

    fn set_sender(&mut self, sender: &str) {
        // qmgr logs the sender again each time the message comes back for a retry.
        if self.sender() == sender {
            return;
        }
        let sender = self.fitting(sender, self.deferred_at - self.sender_at);
        if self.text.is_empty() {
            // A queue ID first seen at its sender (a retry, in a log that starts
            // mid-stream): room for a deferred recipient.
            self.text.reserve(sender.len() + TEXT_ROOM);
        }
        let range = self.sender_at as usize..self.deferred_at as usize;
        if range.end == self.text.len() {
            // No deferred recipient yet (the usual case): cheaper than a splice.
            self.text.truncate(range.start);
            self.text.push_str(sender);
        } else {
            self.text.replace_range(range, sender);
        }
        self.deferred_at = self.sender_at + sender.len() as u32;
    }

    /// `s` if the buffer stays within the `u32` offsets once it replaces `replaced`
    /// bytes; "" otherwise (a text over 4 GiB is not kept).
    fn fitting<'s>(&self, s: &'s str, replaced: u32) -> &'s str {
        let len = self.text.len() - replaced as usize + s.len();
        if u32::try_from(len).is_ok() { s } else { "" }
    }

    /// Recipients whose last attempt was deferred, in the order they were.
    fn deferred(&self) -> impl Iterator<Item = &str> {
        self.text[self.deferred_at as usize..].split_terminator('\n')
    }

    /// Note that `recipient` was deferred (once: it may already be listed).
    fn defer(&mut self, recipient: &str) {
        if self.deferred().all(|r| r != recipient) && !recipient.contains('\n') {
            let recipient = self.fitting(recipient, 0);
            self.text.push_str(recipient);
            self.text.push('\n');
        }
    }

    /// Note that `recipient` left the queue (delivered or bounced).
    fn settle(&mut self, recipient: &str) {
        let mut at = self.deferred_at as usize;
        let mut found = None;
        for r in self.deferred() {
            if r == recipient {
                found = Some(at..at + r.len() + 1);
                break;
            }
            at += r.len() + 1;
        }
        match found {
            // The last one listed (a message's only recipient, usually).
            Some(range) if range.end == self.text.len() => self.text.truncate(range.start),
            Some(range) => self.text.replace_range(range, ""),
            None => {}
        }
    }
}

/// Bytes reserved after the first text stored for a queue ID (its message-id, or its
/// sender when that comes first): room for the rest of the sender and message-id pair and
/// one deferred recipient (most are shorter), so that no later text reallocates.
const TEXT_ROOM: usize = 96;

/// A queue ID as a map key without an allocation: Postfix queue IDs are 5 to 20
/// characters of `[0-9A-Za-z]`, 6 bits each (1–62, 0 for "no character"), so up to 120
/// bits hold any of them exactly (distinct IDs, distinct keys). Anything else (only
/// reachable by calling the public API with a string [`parse_line`] would not accept)
/// gets bit 127 and a 64-bit hash of its text.
fn qid_key(qid: &str) -> u128 {
    let b = qid.as_bytes();
    if b.len() <= 20 {
        let mut key = 0u128;
        let mut exact = true;
        for &c in b {
            let v = QID_DIGITS[c as usize];
            exact &= v != 0;
            key = key << 6 | v as u128;
        }
        if exact {
            return key;
        }
    }
    use std::hash::BuildHasher;
    1 << 127 | rustc_hash::FxBuildHasher.hash_one(qid) as u128
}

/// Joins parsed lines by queue ID. State is only the queue IDs still open.
#[derive(Debug)]
pub struct Correlator {
    /// Keyed by [`qid_key`]: no allocation or text compare per line.
    open: HashMap<u128, Open>,
    years: YearTracker,
}

/// What the queue knows about the message of a delivery attempt.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub sender: &'a str,
    pub message_id: &'a str,
    pub size: Option<u64>,
}

impl Correlator {
    /// A correlator for a log in `config.year` (ending in `config.end_month`, if known).
    pub fn new(config: &ReaderConfig) -> Self {
        let year = config.year.unwrap_or(1970);
        let years = match config.end_month.and_then(|m| time::Month::try_from(m).ok()) {
            Some(month) => YearTracker::ending(year, month),
            None => YearTracker::new(year),
        };
        Correlator {
            open: HashMap::default(),
            years,
        }
    }

    /// Number of open queue IDs.
    pub fn open_ids(&self) -> usize {
        self.open.len()
    }

    /// The year tracker as it stands (to resolve stamps ahead, on another thread).
    pub fn years(&self) -> YearTracker {
        self.years.clone()
    }

    /// Take the year tracker as another thread left it after resolving, from the state
    /// [`Correlator::years`] gave, the stamps of the lines that come next (the same
    /// stamps in the same order give the same instants and the same final state).
    pub fn set_years(&mut self, years: YearTracker) {
        self.years = years;
    }

    /// The instant of a line's stamp (classic stamps get their year here, in order).
    pub fn resolve(&mut self, stamp: Stamp) -> Option<OffsetDateTime> {
        self.years.resolve(stamp)
    }

    /// Record a delivery attempt against its queue ID (which recipients are still
    /// deferred) and return what is known about its message: `None` when its qmgr line
    /// is in an earlier log (the sender is unknown, not null).
    pub fn delivery(&mut self, d: &Delivery<'_>) -> Option<Context<'_>> {
        let open = self.open.get_mut(&qid_key(d.qid))?;
        match d.outcome {
            Outcome::Deferred | Outcome::ConnectionFailed => open.defer(d.recipient),
            Outcome::Delivered | Outcome::Bounced => open.settle(d.recipient),
        }
        Some(Context {
            sender: open.sender(),
            message_id: open.message_id(),
            size: open.size(),
        })
    }

    /// Join one parsed line with what is known; push the resulting events.
    pub fn apply(&mut self, parsed: Parsed<'_>, out: &mut Vec<Event>) -> LineStatus {
        let Some(time) = self.years.resolve(parsed.stamp) else {
            return LineStatus::Skipped(SkipReason::BadTimestamp);
        };
        match parsed.record {
            Record::Delivery(d) => {
                let mut event = d.to_event(time);
                match self.delivery(&d) {
                    Some(ctx) => {
                        event.sender = ctx.sender.to_string();
                        event.message_id = ctx.message_id.to_string();
                        event.size = ctx.size;
                    }
                    None => {
                        event.extra.insert("sender_unknown".into(), true.into());
                    }
                }
                out.push(event);
            }
            other => self.queue_record(time, other, out),
        }
        LineStatus::Used
    }

    /// Apply a line that is not a delivery attempt (message-id, from, expired, removed,
    /// notice) at `time`; push the resulting events (`received` once per message, final
    /// records per recipient still deferred, notices).
    pub fn queue_record(&mut self, time: OffsetDateTime, record: Record<'_>, out: &mut Vec<Event>) {
        match record {
            Record::Delivery(_) => {}
            Record::MessageId { qid, message_id } => {
                self.open_mut(qid).set_message_id(message_id);
            }
            Record::From { qid, sender, size } => {
                if self.queued(qid, sender, size) {
                    let open = &self.open[&qid_key(qid)];
                    let mut e = Event::new(EventType::Received, time);
                    e.queue_id = qid.to_string();
                    e.message_id = open.message_id().to_string();
                    e.sender = open.sender().to_string();
                    e.size = open.size();
                    e.origin = Some("postfix".into());
                    out.push(e);
                }
            }
            Record::Expired { qid, sender } => {
                let open = self.open.remove(&qid_key(qid)).unwrap_or_default();
                self.final_records(EventType::Expired, time, qid, sender.to_string(), open, out);
            }
            Record::Removed { qid, by_operator } => {
                if let Some(open) = self.open.remove(&qid_key(qid))
                    && by_operator
                {
                    let sender = open.sender().to_string();
                    self.final_records(EventType::Admin, time, qid, sender, open, out);
                }
            }
            Record::Notice { qid, dsn_qid } => {
                let mut e = Event::new(EventType::Dsn, time);
                e.queue_id = qid.to_string();
                e.origin = Some("postfix".into());
                e.extra.insert("dsn_queue_id".into(), dsn_qid.into());
                out.push(e);
            }
        }
    }

    /// Apply a qmgr `from=` line. True when it announces the message (the first such
    /// line of its queue ID): the caller reports it as `received`.
    pub fn queued(&mut self, qid: &str, sender: &str, size: Option<u64>) -> bool {
        let open = self.open_mut(qid);
        open.set_sender(sender);
        if let Some(size) = size {
            open.size = size;
            open.has_size = true;
        }
        !std::mem::replace(&mut open.announced, true)
    }

    /// The open state of `qid`, created if new (allocates only then).
    fn open_mut(&mut self, qid: &str) -> &mut Open {
        self.open.entry(qid_key(qid)).or_default()
    }

    /// One record per recipient still deferred when the message left the queue.
    fn final_records(
        &self,
        kind: EventType,
        time: OffsetDateTime,
        qid: &str,
        sender: String,
        open: Open,
        out: &mut Vec<Event>,
    ) {
        let message_id = open.message_id();
        // One record for the message when no recipient is known to be deferred.
        let none = open.deferred().next().is_none();
        for recipient in open.deferred().chain(none.then_some("")) {
            let mut e = Event::new(kind, time);
            e.queue_id = qid.to_string();
            e.sender.clone_from(&sender);
            e.message_id = message_id.to_string();
            e.recipient = recipient.to_string();
            e.origin = Some("postfix".into());
            if kind == EventType::Admin {
                e.outcome = Some(Outcome::Bounced);
                e.extra.insert("action".into(), "deleted".into());
            }
            out.push(e);
        }
    }
}

/// Stateful Postfix reader: [`parse_line`] then [`Correlator::apply`].
pub struct PostfixReader {
    config: ReaderConfig,
    correlator: Correlator,
}

impl PostfixReader {
    /// A reader with these settings.
    pub fn new(config: ReaderConfig) -> Self {
        PostfixReader {
            correlator: Correlator::new(&config),
            config,
        }
    }
}

impl LineReader for PostfixReader {
    fn feed(&mut self, line: &[u8], out: &mut Vec<Event>) -> LineStatus {
        match parse_line(line, &self.config) {
            Ok(Some(parsed)) => self.correlator.apply(parsed, out),
            Ok(None) => LineStatus::Ignored,
            Err(reason) => LineStatus::Skipped(reason),
        }
    }

    fn open_ids(&self) -> usize {
        self.correlator.open_ids()
    }
}
