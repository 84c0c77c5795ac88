//! Parsing: find the SMTP reply inside whatever wrapper it came in (raw multi-line
//! replies, Gmail's flattened form, Postfix and Exim log text, DSN `Diagnostic-Code`
//! fields, Exchange NDR text) and split it into code, enhanced code and text.
//!
//! Hand-written byte scanning rather than regexes: the wrappers are fixed phrases and
//! the reply grammar (RFC 5321 §4.2, RFC 3463 §2) is tiny, and this runs once per
//! reply on the relay's hot path. smtp-proto is deliberately not used: it saturates
//! three-digit details (4.7.500 would become 4.7.255).

use crate::verdict::Stage;
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::LazyLock;

/// An RFC 3463 enhanced status code, kept exactly as written (`5.7.708`, `4.7.500`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnhancedCode {
    /// 2, 4 or 5.
    pub class: u16,
    /// 0–999 (RFC 3463: one to three digits).
    pub subject: u16,
    /// 0–999 (three-digit details such as 4.7.500 are legal and common).
    pub detail: u16,
}

impl EnhancedCode {
    /// Parse exactly `class.subject.detail` (the whole string), per RFC 3463 §2:
    /// class 2/4/5, one to three digits per part, no leading zeros.
    pub fn parse(s: &str) -> Option<Self> {
        let (code, len) = Self::parse_prefix(s.as_bytes())?;
        (len == s.len()).then_some(code)
    }

    /// Parse an enhanced code at the start of `b`; returns it and its length in bytes.
    /// The code must not be followed by a digit or by `.digit` (so Yahoo's internal
    /// `4.16.55.1` is not taken for one).
    #[inline(always)]
    fn parse_prefix(b: &[u8]) -> Option<(Self, usize)> {
        let class = match b.first()? {
            b'2' => 2,
            b'4' => 4,
            b'5' => 5,
            _ => return None,
        };
        if b.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, n1) = number(&b[2..])?;
        let at = 2 + n1;
        if b.get(at) != Some(&b'.') {
            return None;
        }
        let (detail, n2) = number(&b[at + 1..])?;
        let end = at + 1 + n2;
        match (b.get(end), b.get(end + 1)) {
            (Some(c), _) if c.is_ascii_digit() => None,
            (Some(b'.'), Some(c)) if c.is_ascii_digit() => None,
            _ => Some((
                EnhancedCode {
                    class,
                    subject,
                    detail,
                },
                end,
            )),
        }
    }
}

/// One to three digits without a leading zero (a lone `0` is fine).
#[inline(always)]
fn number(b: &[u8]) -> Option<(u16, usize)> {
    // Digit by digit: an iterator chain here cost ~30 instructions per part.
    let digit = |i: usize| {
        b.get(i)
            .map(|c| c.wrapping_sub(b'0'))
            .filter(|&d| d < 10)
            .map(u16::from)
    };
    let d0 = digit(0)?;
    let Some(d1) = digit(1) else {
        return Some((d0, 1));
    };
    if d0 == 0 {
        return None;
    }
    let Some(d2) = digit(2) else {
        return Some((d0 * 10 + d1, 2));
    };
    if digit(3).is_some() {
        return None;
    }
    Some((d0 * 100 + d1 * 10 + d2, 3))
}

impl EnhancedCode {
    /// The code as text (`"4.7.500"`): same as `to_string()`, without the formatting
    /// machinery, which cost ~600 instructions per verdict on the hot path.
    pub fn to_text(self) -> String {
        let mut out = String::with_capacity(11);
        out.push(char::from(b'0' + (self.class % 10) as u8));
        for part in [self.subject, self.detail] {
            out.push('.');
            push_number(&mut out, part);
        }
        out
    }
}

/// Append `n` (< 1000 for a parsed code, but any u16 is handled) in decimal.
fn push_number(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut len = 0;
    let mut rest = n;
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &d in digits[..len].iter().rev() {
        out.push(char::from(d));
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// The container the reply was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapper {
    /// A bare reply, single- or multi-line (possibly flattened onto one line).
    Raw,
    /// Postfix: `host H[IP] said: … (in reply to X command)`.
    Postfix,
    /// Exim: `SMTP error from remote mail server after X: …`.
    Exim,
    /// RFC 3464 DSN: `Diagnostic-Code: smtp; …` (folded lines unfolded).
    Dsn,
    /// Exchange: `Remote Server returned '…'` or `#550 5.7.1 smtp;550 …> #SMTP#`.
    Exchange,
}

/// A parsed SMTP reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The basic reply code (200–599).
    pub code: u16,
    /// The enhanced status code, if the reply carries one.
    pub enhanced: Option<EnhancedCode>,
    /// The reply as found inside its wrapper, line breaks kept (see [`Reply::lines`]).
    pub raw: String,
    /// The reply text: code prefixes and repeated enhanced codes removed, lines joined
    /// with single spaces.
    pub text: String,
    /// The SMTP stage the reply answered, when the wrapper says.
    pub stage: Option<Stage>,
    /// Where the reply was found.
    pub wrapper: Wrapper,
    /// The remote host the wrapper names (Postfix `host H[IP]`, Exim `host H [IP]`,
    /// DSN `Remote-MTA`), if any.
    pub remote_host: Option<String>,
    /// The remote host's address the wrapper names, if any.
    pub remote_ip: Option<IpAddr>,
}

impl Reply {
    /// The raw reply lines (as received, code prefixes kept).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.raw.lines().flat_map(|l| l.split('\r'))
    }

    /// Whether the enhanced code's class agrees with the basic code (RFC 2034 §3:
    /// "all status codes … must agree with the primary response code").
    pub fn enhanced_agrees(&self) -> Option<bool> {
        self.enhanced.map(|e| e.class == self.code / 100)
    }
}

/// Why the input is not an SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAReply {
    #[error("empty input")]
    Empty,
    #[error("binary data, not text")]
    Binary,
    #[error("no SMTP reply code (2xx-5xx) found")]
    NoCode,
}

/// A parsed SMTP reply that borrows from its input: what [`parse_borrowed`] returns
/// and what [`crate::Engine::classify`] works on, without allocating when the reply's
/// text is a plain slice of the input (a single-line reply, the common case).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<'a> {
    /// The basic reply code (200–599).
    pub code: u16,
    /// The enhanced status code, if the reply carries one.
    pub enhanced: Option<EnhancedCode>,
    /// The reply as found inside its wrapper, line breaks kept.
    pub raw: &'a str,
    /// The reply text, as [`Reply::text`]: borrowed when it is a slice of the input,
    /// owned when lines had to be joined or continuation prefixes removed.
    pub text: Cow<'a, str>,
    /// The SMTP stage the reply answered, when the wrapper says.
    pub stage: Option<Stage>,
    /// Where the reply was found.
    pub wrapper: Wrapper,
    /// The remote host the wrapper names, if any.
    pub remote_host: Option<&'a str>,
    /// The remote host's address the wrapper names, if any.
    pub remote_ip: Option<IpAddr>,
}

impl Parsed<'_> {
    /// The owned [`Reply`].
    pub fn into_owned(self) -> Reply {
        Reply {
            code: self.code,
            enhanced: self.enhanced,
            raw: self.raw.to_owned(),
            text: self.text.into_owned(),
            stage: self.stage,
            wrapper: self.wrapper,
            remote_host: self.remote_host.map(str::to_owned),
            remote_ip: self.remote_ip,
        }
    }

    /// Whether the enhanced code's class agrees with the basic code.
    pub fn enhanced_agrees(&self) -> Option<bool> {
        self.enhanced.map(|e| e.class == self.code / 100)
    }
}

/// Parse bytes that may not be UTF-8 (invalid sequences are replaced, not dropped).
pub fn parse_bytes(input: &[u8]) -> Result<Reply, NotAReply> {
    if looks_binary(input) {
        return Err(NotAReply::Binary);
    }
    parse(&String::from_utf8_lossy(input))
}

/// Find the SMTP reply in `input` and parse it.
pub fn parse(input: &str) -> Result<Reply, NotAReply> {
    parse_borrowed(input).map(Parsed::into_owned)
}

/// Find the SMTP reply in `input` and parse it, borrowing from `input` (see [`Parsed`]).
pub fn parse_borrowed(input: &str) -> Result<Parsed<'_>, NotAReply> {
    match parse_raw(input) {
        Some(parsed) => parsed,
        None => parse_general(input),
    }
}

/// The common case, decided by one pass over the input ([`crate::scan`]): a reply
/// that starts with its code, ends in a printable ASCII byte, and holds no
/// `#SMTP#`. Nothing then needs trimming or unwrapping, and a single line with no
/// two spaces in a row and no `NNN-` continuation prefix of its own code is its own
/// text (a slice); other such replies are joined as [`parse_general`] joins them.
/// Exactly what [`parse_general`] returns (tested on the corpus and by proptest),
/// without its separate searches. `None`: anything else, for [`parse_general`].
fn parse_raw(input: &str) -> Option<Result<Parsed<'_>, NotAReply>> {
    let b = input.as_bytes();
    if !starts_with_code(b) || !matches!(b.last(), Some(0x21..=0x7e)) {
        return None;
    }
    let scan = crate::scan::scan(b, [b[0], b[1], b[2]]);
    if scan.hash && has_smtp_hash(b) {
        return None;
    }
    if scan.control && looks_binary(b) {
        return Some(Err(NotAReply::Binary));
    }
    let code = u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
    let (enhanced, text) = if scan.control || scan.double_space || scan.code_dash {
        reply_text(input, code, !scan.control)
    } else {
        let start = text_start(b);
        (start.enhanced, Cow::Borrowed(&input[start.first..]))
    };
    Some(Ok(Parsed {
        code,
        enhanced: enhanced.or_else(|| enhanced_in_text(&text, code)),
        raw: input,
        text,
        stage: None,
        wrapper: Wrapper::Raw,
        remote_host: None,
        remote_ip: None,
    }))
}

/// Any input: trimmed, unwrapped, the code found, the text joined when it has to be.
// Out of line: it keeps the common path small.
#[inline(never)]
fn parse_general(input: &str) -> Result<Parsed<'_>, NotAReply> {
    let input = input.trim();
    if input.is_empty() {
        return Err(NotAReply::Empty);
    }
    let controls = has_control_byte(input.as_bytes());
    if controls && looks_binary(input.as_bytes()) {
        return Err(NotAReply::Binary);
    }
    let found = unwrap(input);
    let body = found.body.trim();
    let start = if starts_with_code(body.as_bytes()) {
        0
    } else {
        find_code_start(body.as_bytes()).ok_or(NotAReply::NoCode)?
    };
    let body = &body[start..];
    let b = body.as_bytes();
    let code = u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
    // Without control bytes (line breaks, tabs) the text may be a plain slice.
    let (enhanced_at_start, text) = reply_text(body, code, !controls);
    let enhanced = enhanced_at_start.or_else(|| enhanced_in_text(&text, code));
    Ok(Parsed {
        code,
        enhanced,
        raw: body,
        text,
        stage: found.stage,
        wrapper: found.wrapper,
        remote_host: found.remote_host,
        remote_ip: found.remote_ip,
    })
}

/// NUL bytes, or more than one control character in eight, mean this is not text.
fn looks_binary(b: &[u8]) -> bool {
    if !has_control_byte(b) {
        return false;
    }
    let mut controls = 0usize;
    // Only the eight-byte chunks holding a byte below 0x20 are counted byte by byte:
    // a multi-line reply has a line break every ~70 bytes.
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        if has_byte_below_space(x) {
            for &c in chunk {
                if c < 0x20 {
                    if c == 0 {
                        return true;
                    }
                    controls += usize::from(!matches!(c, b'\t' | b'\n' | b'\r'));
                }
            }
        }
    }
    for &c in chunks.remainder() {
        if c < 0x20 {
            if c == 0 {
                return true;
            }
            controls += usize::from(!matches!(c, b'\t' | b'\n' | b'\r'));
        }
    }
    controls * 8 > b.len()
}

/// Whether one of the eight bytes of `x` is below 0x20: a byte below 0x20 borrows in
/// `x - 0x20…` while its high bit is clear (a borrow chain may flag a byte above it,
/// but only when one below 0x20 exists, so the answer is exact).
fn has_byte_below_space(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    x.wrapping_sub(ONES * 0x20) & !x & (ONES * 0x80) != 0
}

/// Whether any byte is below 0x20, eight bytes at a time (most replies have none, so
/// this settles [`looks_binary`] without counting).
fn has_control_byte(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        if has_byte_below_space(u64::from_le_bytes(chunk.try_into().expect("chunks of 8"))) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&c| c < 0x20)
}

/// Whether `b` contains Exchange's `#SMTP#` (exact case). `#` is rare in replies, so
/// a SIMD search for it and a look at each one is cheapest.
fn has_smtp_hash(b: &[u8]) -> bool {
    memchr::memchr_iter(b'#', b).any(|i| b[i..].starts_with(b"#SMTP#"))
}

/// `[2-5]dd` followed by end, space, tab, `-` or a line break.
fn starts_with_code(b: &[u8]) -> bool {
    b.len() >= 3
        && (b'2'..=b'5').contains(&b[0])
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && matches!(b.get(3), None | Some(b' ' | b'\t' | b'-' | b'\r' | b'\n'))
}

/// The first reply code that starts a word (after start, whitespace or one of `;:'"(<#`).
fn find_code_start(b: &[u8]) -> Option<usize> {
    (0..b.len()).find(|&i| {
        (i == 0
            || matches!(
                b[i - 1],
                b' ' | b'\t' | b'\r' | b'\n' | b';' | b':' | b'\'' | b'"' | b'(' | b'<' | b'#'
            ))
            && starts_with_code(&b[i..])
    })
}

/// What [`unwrap`] found around the reply.
struct Unwrapped<'a> {
    body: &'a str,
    wrapper: Wrapper,
    stage: Option<Stage>,
    remote_host: Option<&'a str>,
    remote_ip: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Marker {
    PostfixSaid,
    PostfixRefused,
    EximError,
    Diagnostic,
    ExchangeReturned,
    ExchangeHash,
}

const MARKERS: &[(&str, Marker)] = &[
    (" said: ", Marker::PostfixSaid),
    (" refused to talk to me: ", Marker::PostfixRefused),
    (
        "SMTP error from remote mail server after ",
        Marker::EximError,
    ),
    ("Diagnostic-Code:", Marker::Diagnostic),
    ("Remote Server returned '", Marker::ExchangeReturned),
    ("#SMTP#", Marker::ExchangeHash),
];

/// Where the wrapper marker that starts first in `input` (case-insensitive; on a tie,
/// the first in [`MARKERS`]) is: its start, end and kind.
///
/// Each marker is looked for by a SIMD search for one of its bytes that is rare in
/// log text (`:`, `'`, `#`, else its rarest letter), in either case, and a
/// comparison around each hit. Markers that share that byte (three share `:`) are
/// checked together at each hit, so a Postfix log line full of `:` is searched for
/// them once, not once per marker; hits stop counting once they lie too far past
/// the best start so far. On Postfix log lines this replaced an Aho-Corasick DFA
/// walk (~5,000 instructions for a 300-byte line: one dependent table load per byte)
/// — tested against it.
fn find_marker(input: &str) -> Option<(usize, usize, Marker)> {
    let h = input.as_bytes();
    // (start, index in MARKERS)
    let mut best: Option<(usize, usize)> = None;
    for group in ANCHOR_GROUPS.iter() {
        // Whether to stop: hits past the best start plus the largest offset cannot win.
        let mut at_hit = |hit: usize| -> bool {
            if best.is_some_and(|(start, _)| hit > start + group.max_offset) {
                return true;
            }
            for &m in &group.markers {
                let n = MARKERS[m].0.as_bytes();
                let off = ANCHORS[m];
                let Some(start) = hit.checked_sub(off) else {
                    continue;
                };
                // The byte before the anchor first: most hits end there.
                if off > 0 && (h[hit - 1] | 0x20) != (n[off - 1] | 0x20) {
                    continue;
                }
                if h.len() - start >= n.len()
                    && h[start..start + n.len()].eq_ignore_ascii_case(n)
                    && best.is_none_or(|b| (start, m) < b)
                {
                    best = Some((start, m));
                }
            }
            false
        };
        let (lower, upper) = (
            group.byte.to_ascii_lowercase(),
            group.byte.to_ascii_uppercase(),
        );
        if lower == upper {
            for hit in memchr::memchr_iter(lower, h) {
                if at_hit(hit) {
                    break;
                }
            }
        } else {
            for hit in memchr::memchr2_iter(lower, upper, h) {
                if at_hit(hit) {
                    break;
                }
            }
        }
    }
    best.map(|(start, m)| (start, start + MARKERS[m].0.len(), MARKERS[m].1))
}

/// The markers that share an anchor byte (see [`find_marker`]).
struct AnchorGroup {
    /// The anchor byte (searched for in either case).
    byte: u8,
    /// Indices into [`MARKERS`], in order.
    markers: Vec<usize>,
    /// The largest offset of the byte in one of these markers.
    max_offset: usize,
}

static ANCHOR_GROUPS: LazyLock<Vec<AnchorGroup>> = LazyLock::new(|| {
    let mut groups: Vec<AnchorGroup> = Vec::new();
    for (m, (needle, _)) in MARKERS.iter().enumerate() {
        let byte = needle.as_bytes()[ANCHORS[m]].to_ascii_lowercase();
        let at = match groups.iter().position(|g| g.byte == byte) {
            Some(at) => at,
            None => {
                groups.push(AnchorGroup {
                    byte,
                    markers: Vec::new(),
                    max_offset: 0,
                });
                groups.len() - 1
            }
        };
        groups[at].markers.push(m);
        groups[at].max_offset = groups[at].max_offset.max(ANCHORS[m]);
    }
    groups
});

/// For each of [`MARKERS`], the index of the byte [`find_marker`] searches for
/// (computed at compile time).
const ANCHORS: [usize; MARKERS.len()] = {
    let mut anchors = [0; MARKERS.len()];
    let mut i = 0;
    while i < MARKERS.len() {
        anchors[i] = anchor(MARKERS[i].0.as_bytes());
        i += 1;
    }
    anchors
};

/// The index in `needle` of the byte to search for: the first of `:'#`, else its
/// rarest letter in English text (by the usual letter-frequency order).
const fn anchor(needle: &[u8]) -> usize {
    const RAREST_FIRST: &[u8] = b"zqxjkvbpygfwmucldrhsnioate";
    let mut i = 0;
    while i < needle.len() {
        if matches!(needle[i], b':' | b'\'' | b'#') {
            return i;
        }
        i += 1;
    }
    let mut r = 0;
    while r < RAREST_FIRST.len() {
        let mut i = 0;
        while i < needle.len() {
            if needle[i].to_ascii_lowercase() == RAREST_FIRST[r] {
                return i;
            }
            i += 1;
        }
        r += 1;
    }
    0
}

fn unwrap(input: &str) -> Unwrapped<'_> {
    let raw = Unwrapped {
        body: input,
        wrapper: Wrapper::Raw,
        stage: None,
        remote_host: None,
        remote_ip: None,
    };
    // A reply at the very start is raw even if its text happens to contain a marker.
    if starts_with_code(input.as_bytes()) && !has_smtp_hash(input.as_bytes()) {
        return raw;
    }
    let Some((start, end, marker)) = find_marker(input) else {
        return raw;
    };
    let (before, after) = (&input[..start], &input[end..]);
    match marker {
        Marker::PostfixSaid | Marker::PostfixRefused => {
            let refused = matches!(marker, Marker::PostfixRefused);
            let (host, ip) = host_before(before);
            let (body, stage) = strip_in_reply_to(after);
            Unwrapped {
                body,
                wrapper: Wrapper::Postfix,
                stage: stage.or(refused.then_some(Stage::Connect)),
                remote_host: host,
                remote_ip: ip,
            }
        }
        Marker::EximError => {
            let stage = stage_from_command(after);
            let (host, ip) = exim_host(after);
            Unwrapped {
                body: after,
                wrapper: Wrapper::Exim,
                stage,
                remote_host: host,
                remote_ip: ip,
            }
        }
        Marker::Diagnostic => Unwrapped {
            body: diagnostic_value(after),
            wrapper: Wrapper::Dsn,
            stage: None,
            remote_host: remote_mta(input),
            remote_ip: None,
        },
        Marker::ExchangeReturned => {
            let inner = after.rfind('\'').map_or(after, |end| &after[..end]);
            Unwrapped {
                body: exchange_inner(inner),
                wrapper: Wrapper::Exchange,
                ..raw
            }
        }
        Marker::ExchangeHash => Unwrapped {
            body: exchange_inner(input),
            wrapper: Wrapper::Exchange,
            ..raw
        },
    }
}

/// Exchange's `#550 5.7.1 smtp;550 5.7.1 text> #SMTP#`: the reply follows `smtp;`.
fn exchange_inner(s: &str) -> &str {
    let s = match find_ci(s, "smtp;") {
        Some(i) => &s[i + 5..],
        None => s,
    };
    let s = match find(s, "#SMTP#") {
        Some(i) => &s[..i],
        None => s,
    };
    s.trim().trim_end_matches('>').trim_end()
}

/// `Diagnostic-Code: smtp; …` and its folded continuation lines (RFC 5322 §2.2.3: a
/// line starting with whitespace continues the field). The `smtp;` type is dropped.
fn diagnostic_value(after: &str) -> &str {
    let mut end = after.len();
    let mut pos = 0;
    for line in after.split_inclusive('\n') {
        if pos > 0 && !line.starts_with([' ', '\t']) {
            end = pos;
            break;
        }
        pos += line.len();
    }
    let value = after[..end].trim_start();
    match value.find(';') {
        Some(i) if i < 16 && !value[..i].contains(' ') => &value[i + 1..],
        _ => value,
    }
}

/// `Remote-MTA: dns; mx.example.com` anywhere in a DSN.
fn remote_mta(input: &str) -> Option<&str> {
    let at = find_ci(input, "Remote-MTA:")?;
    let value = input[at + 11..].lines().next()?.trim();
    let value = value.split_once(';').map_or(value, |(_, v)| v).trim();
    (!value.is_empty()).then(|| value.trim_end_matches('.'))
}

/// Postfix: `… (in reply to RCPT TO command)` at the end gives the stage; the body ends there.
fn strip_in_reply_to(after: &str) -> (&str, Option<Stage>) {
    if let Some(i) = rfind(after, ReverseNeedle::InReplyTo) {
        let tail = &after[i + 13..];
        let cmd = find(tail, " command)").map_or(tail, |e| &tail[..e]);
        return (&after[..i], stage_from_command(cmd));
    }
    // A whole Postfix log line: `status=deferred (host … said: …)`.
    let body = after.trim_end();
    let opens = body.bytes().filter(|&c| c == b'(').count();
    let closes = body.bytes().filter(|&c| c == b')').count();
    if closes > opens && body.ends_with(')') {
        return (&body[..body.len() - 1], None);
    }
    (body, None)
}

/// Map the command words MTAs write (`RCPT TO`, `end of DATA`, `initial connection`)
/// to a stage. Only the start of `s` is looked at.
fn stage_from_command(s: &str) -> Option<Stage> {
    let head = &s.as_bytes()[..s.len().min(32)];
    let has = |w: &str| {
        head.windows(w.len())
            .any(|win| win.eq_ignore_ascii_case(w.as_bytes()))
    };
    if has("end of data") || has("end of message") {
        Some(Stage::EndOfData)
    } else if has("rcpt to") {
        Some(Stage::Rcpt)
    } else if has("mail from") {
        Some(Stage::Mail)
    } else if has("data") || has("bdat") {
        Some(Stage::Data)
    } else if has("ehlo") || has("helo") || has("lhlo") {
        Some(Stage::Ehlo)
    } else if has("initial connection") || has("greeting") || has("connect") {
        Some(Stage::Connect)
    } else {
        None
    }
}

/// Postfix `host mx.example[192.0.2.1]` just before `said:`.
fn host_before(before: &str) -> (Option<&str>, Option<IpAddr>) {
    let Some(i) = rfind(before, ReverseNeedle::Host) else {
        return (None, None);
    };
    split_host_ip(before[i + 5..].trim())
}

/// Exim `…: host mx.example [192.0.2.1]: 550 …` after the command.
fn exim_host(after: &str) -> (Option<&str>, Option<IpAddr>) {
    let Some(i) = find(after, ": host ") else {
        return (None, None);
    };
    let rest = &after[i + 7..];
    let end = find(rest, "]:").map_or(rest.len().min(255), |e| e + 1);
    split_host_ip(rest[..end].trim())
}

/// `name[ip]` or `name [ip]`.
fn split_host_ip(s: &str) -> (Option<&str>, Option<IpAddr>) {
    // memchr, not `str::find`/`split`: their char searchers cost ~300 instructions here.
    let (name, ip) = match memchr::memchr(b'[', s.as_bytes()) {
        Some(i) => {
            let rest = &s[i + 1..];
            let mut ip = memchr::memchr(b']', rest.as_bytes()).map_or(rest, |e| &rest[..e]);
            while let Some(rest) = ip.strip_prefix("IPv6:") {
                ip = rest;
            }
            (s[..i].trim(), ip.parse().ok())
        }
        None => (s.split_whitespace().next().unwrap_or(""), None),
    };
    let name = name.trim_end_matches('.');
    let n = name.as_bytes();
    let usable = !n.is_empty() && memchr::memchr(b'.', n).is_some() && !n.contains(&b' ');
    (usable.then_some(name), ip)
}

/// Case-insensitive ASCII substring search: candidates by a SIMD search for the
/// needle's first byte in either case, then a comparison.
fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    let (&first, _) = n.split_first()?;
    if h.len() < n.len() {
        return None;
    }
    let last_start = h.len() - n.len();
    memchr::memchr2_iter(first.to_ascii_lowercase(), first.to_ascii_uppercase(), h)
        .take_while(|&i| i <= last_start)
        .find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Substring search with memchr's SIMD searcher. Byte offsets; the needles are
/// ASCII, so the offsets are char boundaries.
fn find(hay: &str, needle: &str) -> Option<usize> {
    memchr::memmem::find(hay.as_bytes(), needle.as_bytes())
}

/// The last occurrence of one of the wrappers' fixed needles (exact case): a
/// reverse SIMD search for its first byte and a comparison at each hit. (A
/// two-way reverse searcher cost ~350 instructions a call on a Postfix log line.)
fn rfind(hay: &str, needle: ReverseNeedle) -> Option<usize> {
    let n: &[u8] = match needle {
        ReverseNeedle::InReplyTo => b"(in reply to ",
        ReverseNeedle::Host => b"host ",
    };
    let h = hay.as_bytes();
    memchr::memrchr_iter(n[0], h).find(|&i| h[i..].starts_with(n))
}

/// The needles [`rfind`] looks for.
#[derive(Clone, Copy)]
enum ReverseNeedle {
    /// Postfix's `(in reply to `.
    InReplyTo,
    /// Postfix's `host ` before `said:`.
    Host,
}

/// Split `body` (starting with the code) into its enhanced code and its text.
///
/// Works on words so that CRLF, LF and bare CR line ends, header folding and Gmail's
/// flattened `550-5.1.1 … 550-5.1.1 … 550 5.1.1 …` all come out the same: a `NNN-`
/// prefix (same code) is always a continuation marker; a bare `NNN` word is one at
/// the start of a line or once the reply has shown it is flattened; the enhanced code
/// repeated right after such a marker is dropped (RFC 2034 §3 repeats it per line).
fn reply_text(body: &str, code: u16, may_be_plain: bool) -> (Option<EnhancedCode>, Cow<'_, str>) {
    let code_str = [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    let b = body.as_bytes();
    let TextStart {
        enhanced,
        enh_len,
        pos,
        first,
    } = text_start(b);
    // Plain single-line text (words separated by single spaces, no continuation
    // prefixes): the text is a slice of the input, nothing to build.
    if may_be_plain && is_plain_text(&b[first..], code_str) {
        return (enhanced, Cow::Borrowed(&body[first..]));
    }
    let enh_bytes = &b[pos - enh_len..pos];
    let is_enh = |w: &[u8]| {
        enh_len > 0 && (w == enh_bytes || (w.first() == Some(&b'#') && &w[1..] == enh_bytes))
    };

    let mut text = String::with_capacity(b.len() - pos);
    let mut flattened = false;
    let mut at_line_start = false;
    let mut drop_enh_next = false;
    let mut run: Option<(usize, usize)> = None;
    let mut i = pos;
    while i < b.len() {
        // Whitespace run: note whether it crossed a line break.
        let ws_start = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b[ws_start..i].iter().any(|&c| c == b'\n' || c == b'\r') {
            at_line_start = true;
        }
        if i >= b.len() {
            break;
        }
        let w_start = i;
        i = if may_be_plain {
            next_space(b, i)
        } else {
            next_whitespace(b, i)
        };
        let mut word = &b[w_start..i];
        let line_start = std::mem::take(&mut at_line_start);
        if word.len() >= 4 && word[..3] == code_str && word[3] == b'-' {
            flattened = true;
            word = &word[4..];
            if word.is_empty() || is_enh(word) {
                drop_enh_next = word.is_empty();
                continue;
            }
        } else if word == code_str && (line_start || flattened) {
            drop_enh_next = true;
            continue;
        } else if std::mem::take(&mut drop_enh_next) && is_enh(word) {
            continue;
        }
        drop_enh_next = false;
        // Kept words are copied in runs: a word that follows the run's last word
        // after exactly one space extends it; anything else (a line break, several
        // blanks, a dropped word or prefix between them) starts a new run.
        let kept = i - word.len();
        match run {
            Some((start, end)) if kept == end + 1 && b[end] == b' ' => run = Some((start, i)),
            _ => {
                push_run(&mut text, body, run);
                run = Some((kept, i));
            }
        }
    }
    push_run(&mut text, body, run);
    (enhanced, Cow::Owned(text))
}

/// Where a reply's text starts: after the first code, its separator, blanks and the
/// enhanced code (also as `#5.7.1`) when one follows.
struct TextStart {
    /// The enhanced code at the start, if any.
    enhanced: Option<EnhancedCode>,
    /// Its length in bytes (without a `#`), 0 when there is none.
    enh_len: usize,
    /// Just after the enhanced code, or after the blanks following the code.
    pos: usize,
    /// `pos` with the spaces after it skipped: where a plain text slice starts.
    first: usize,
}

/// [`TextStart`] of `b`, which starts with a reply code.
#[inline(always)]
fn text_start(b: &[u8]) -> TextStart {
    // Skip the first code and its separator.
    let mut pos = 3;
    if matches!(b.get(3), Some(b'-' | b' ' | b'\t')) {
        pos = 4;
    }
    while matches!(b.get(pos), Some(b' ' | b'\t')) {
        pos += 1;
    }
    let mut enhanced = None;
    let mut enh_len = 0;
    let hash = usize::from(b.get(pos) == Some(&b'#'));
    if let Some((e, n)) = EnhancedCode::parse_prefix(&b[pos + hash..])
        && matches!(
            b.get(pos + hash + n),
            None | Some(b' ' | b'\t' | b'\r' | b'\n')
        )
    {
        enhanced = Some(e);
        enh_len = n;
        pos += hash + n;
    }
    let mut first = pos;
    while b.get(first) == Some(&b' ') {
        first += 1;
    }
    TextStart {
        enhanced,
        enh_len,
        pos,
        first,
    }
}

/// The index of the first space at or after `i` (or `b.len()`), eight bytes at a
/// time. In a body without control bytes (`may_be_plain`), a space is the only
/// ASCII whitespace, so this is where the word starting at `i` ends; the byte loop
/// cost ~8 instructions per byte of a flattened Gmail reply.
fn next_space(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    while let Some(chunk) = b.get(i..i + 8) {
        let x =
            u64::from_le_bytes(chunk.try_into().expect("eight bytes")) ^ (ONES * u64::from(b' '));
        // The lowest flagged byte is exactly the first zero byte (a space); borrows
        // only flag bytes above it.
        let zero = x.wrapping_sub(ONES) & !x & (ONES * 0x80);
        if zero != 0 {
            return i + (zero.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i] != b' ' {
        i += 1;
    }
    i
}

/// The index of the first ASCII whitespace byte at or after `i` (or `b.len()`):
/// bytes below `!` are found eight at a time, then confirmed (a control byte that is
/// no whitespace continues the word). Multi-line and folded replies took ~8
/// instructions per byte of each word in the byte loop.
fn next_whitespace(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // The lowest flagged byte is exactly the first byte below 0x21 (bytes from
        // 0x80 up are cleared by `!x`); borrows only flag bytes above it.
        let low = x.wrapping_sub(ONES * 0x21) & !x & (ONES * 0x80);
        if low == 0 {
            i += 8;
            continue;
        }
        let at = i + (low.trailing_zeros() / 8) as usize;
        if b[at].is_ascii_whitespace() {
            return at;
        }
        i = at + 1;
    }
    while i < b.len() && !b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Append the source range `run` (words separated by single spaces) to `text`, after
/// a space if `text` has words already. Ranges start and end at ASCII whitespace
/// boundaries, so they are char boundaries.
fn push_run(text: &mut String, body: &str, run: Option<(usize, usize)>) {
    if let Some((start, end)) = run {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&body[start..end]);
    }
}

/// Whether `rest` (trimmed at its end, free of control bytes: no line breaks or
/// tabs) is already the reply text: no double spaces, and no word starting with the
/// `NNN-` continuation prefix of this reply's code. The word-by-word join remains
/// the reference; this only recognises the common case, with SIMD searches.
fn is_plain_text(rest: &[u8], code: [u8; 3]) -> bool {
    static DOUBLE_SPACE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"  "));
    if DOUBLE_SPACE.find(rest).is_some() {
        return false;
    }
    !memchr::memchr_iter(b'-', rest).any(|dash| {
        dash >= 3 && rest[dash - 3..dash] == code && (dash == 3 || rest[dash - 4] == b' ')
    })
}

/// An enhanced code inside the text (Yahoo: `553 Mail from x not allowed - 5.7.1 [BL23]`),
/// accepted only when its class agrees with the basic code.
fn enhanced_in_text(text: &str, code: u16) -> Option<EnhancedCode> {
    // A code's first dot follows its class digit, which starts the word once `#`/`(`
    // are trimmed: only those dots need a look (the text has few dots, many words).
    let b = text.as_bytes();
    let class = b'0' + (code / 100) as u8;
    memchr::memchr_iter(b'.', b).find_map(|dot| {
        let digit = dot.checked_sub(1)?;
        if b[digit] != class {
            return None;
        }
        let mut start = digit;
        while start > 0 && matches!(b[start - 1], b'#' | b'(') {
            start -= 1;
        }
        if start > 0 && !b[start - 1].is_ascii_whitespace() {
            return None;
        }
        let end = b[dot..]
            .iter()
            .position(u8::is_ascii_whitespace)
            .map_or(b.len(), |n| dot + n);
        let w = text[digit..end].trim_end_matches([',', ';', ')', ':']);
        EnhancedCode::parse(w).filter(|e| e.class == code / 100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference for [`find_marker`]: Aho-Corasick, leftmost-first, ignoring case.
    fn marker_reference(input: &str) -> Option<(usize, usize, Marker)> {
        use aho_corasick::{AhoCorasick, MatchKind};
        let ac = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(MARKERS.iter().map(|(m, _)| m))
            .unwrap();
        ac.find(input)
            .map(|m| (m.start(), m.end(), MARKERS[m.pattern().as_usize()].1))
    }

    #[test]
    fn marker_search_agrees_with_aho_corasick_on_the_corpus() {
        let mut wrapped = 0;
        for case in &crate::corpus_cases() {
            let found = find_marker(&case.reply);
            wrapped += usize::from(found.is_some());
            assert_eq!(found, marker_reference(&case.reply), "{:?}", case.reply);
        }
        assert!(
            wrapped >= 20,
            "only {wrapped} corpus replies have a wrapper marker"
        );
    }

    proptest::proptest! {
        #[test]
        fn marker_search_agrees_with_aho_corasick(
            text in "([a-zA-Z #:'-]| said: | SAID: | refused to talk to me: |SMTP error from remote mail server after |smtp ERROR from remote mail server after |Diagnostic-Code:|diagnostic-code:|Remote Server returned '|#SMTP#|#smtp#|said|:){0,12}"
        ) {
            proptest::prop_assert_eq!(find_marker(&text), marker_reference(&text));
        }
    }

    /// Whenever the one-pass path takes an input, it gives exactly what the general
    /// parse gives (which the corpus checks against the expected verdicts).
    fn plain_line_agrees(input: &str) -> bool {
        let Some(fast) = parse_raw(input) else {
            return false;
        };
        assert_eq!(fast, parse_general(input), "{input:?}");
        true
    }

    #[test]
    fn plain_line_path_agrees_with_the_general_parse_on_the_corpus() {
        let taken = crate::corpus_cases()
            .iter()
            .filter(|case| plain_line_agrees(&case.reply))
            .count();
        assert!(
            taken > 200,
            "only {taken} corpus replies took the one-pass path"
        );
        for input in [
            "550",
            "250 ok",
            "550 5.1.1",
            "550 #5.1.1 x",
            "550 5.1.1 text #SMTP#",
            "550 5.1.1 a #b",
            "250-PIPELINING",
            "550-550-x",
            "550 550-x y",
            "550 x 550- y",
            "451 Resources temporarily unavailable. Please try again later [#4.16.1].",
            "553 Mail from 203.0.113.5 not allowed - 5.7.1 [BL23] Connections not accepted",
            "550 5.1.1 caf\u{e9}!",
            "550 5.1.1 ends in a space ",
            "550\u{a0}x",
            "550-5.1.1 a\r\n550 5.1.1 b",
            "550 a\x01\x02\x03\x04b",
            "550\x01\x02\x03\x04\x05\x06\x07x",
            "550 a\u{0}b",
            "550  5.1.1  two  spaces",
            "550 a\tb",
        ] {
            plain_line_agrees(input);
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_line_path_agrees_with_the_general_parse(
            code in "[245][0-9][0-9]",
            sep in "[ \t-]?",
            rest in "([ #a-z.()\\[\\];:'-]|[245][0-9][0-9]-?|[245]\\.[0-9]{1,3}\\.[0-9]{1,3}|#SMTP#|\u{e9}|\u{a0}|\r\n|\n|\t|\x01|\x00){0,40}",
        ) {
            plain_line_agrees(&format!("{code}{sep}{rest}"));
        }
    }

    #[test]
    fn enhanced_codes_keep_three_digit_details() {
        let e = EnhancedCode::parse("4.7.500").unwrap();
        assert_eq!((e.class, e.subject, e.detail), (4, 7, 500));
        assert_eq!(e.to_string(), "4.7.500");
        for s in ["4.7.500", "5.7.708", "2.0.0", "5.1.10", "4.4.7"] {
            assert_eq!(EnhancedCode::parse(s).unwrap().to_text(), s);
        }
        assert_eq!(EnhancedCode::parse("5.7.708").unwrap().detail, 708);
        assert_eq!(EnhancedCode::parse("4.16.55.1"), None);
        assert_eq!(EnhancedCode::parse("3.1.1"), None);
        assert_eq!(EnhancedCode::parse("5.07.1"), None);
        assert_eq!(EnhancedCode::parse("5.7.1000"), None);
    }

    #[test]
    fn microsoft_server_busy_single_line() {
        let r = parse("451 4.7.500 Server busy. Please try again later from [203.0.113.10]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2024-07-14T14:44:43.083Z 08DCA36F759CD546]").unwrap();
        assert_eq!(r.code, 451);
        assert_eq!(r.enhanced.unwrap().to_string(), "4.7.500");
        assert_eq!(r.enhanced_agrees(), Some(true));
        assert!(r.text.starts_with("Server busy."));
        assert_eq!(r.wrapper, Wrapper::Raw);
    }

    #[test]
    fn multiline_with_each_line_ending() {
        for sep in ["\r\n", "\n", "\r"] {
            let input = format!(
                "550-5.7.26 Unauthenticated email is not accepted{sep}550-5.7.26 from this domain.{sep}550 5.7.26 Learn more - gsmtp"
            );
            let r = parse(&input).unwrap();
            assert_eq!(r.code, 550, "{sep:?}");
            assert_eq!(r.enhanced.unwrap().to_string(), "5.7.26");
            assert_eq!(
                r.text,
                "Unauthenticated email is not accepted from this domain. Learn more - gsmtp"
            );
            assert_eq!(r.lines().count(), 3);
        }
    }

    #[test]
    fn last_line_without_space_and_code_alone() {
        let r = parse("250-mx.example\r\n250-PIPELINING\r\n250").unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.text, "mx.example PIPELINING");
        let r = parse("550").unwrap();
        assert_eq!((r.code, r.text.as_str(), r.enhanced), (550, "", None));
    }

    #[test]
    fn gmail_flattened() {
        let r = parse("550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 double-checking the recipient's email address for typos or 550-5.1.1 unnecessary spaces. Learn more at 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp").unwrap();
        assert_eq!(r.code, 550);
        assert_eq!(
            r.text,
            "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. Learn more at https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp"
        );
    }

    #[test]
    fn postfix_wrapper() {
        let r = parse("host mx.example.com[192.0.2.1] said: 451 4.7.500 Server busy. (S77714) (in reply to RCPT TO command)").unwrap();
        assert_eq!(r.wrapper, Wrapper::Postfix);
        assert_eq!(r.stage, Some(Stage::Rcpt));
        assert_eq!(r.remote_host.as_deref(), Some("mx.example.com"));
        assert_eq!(r.remote_ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(r.text, "Server busy. (S77714)");
        let r = parse("Nov 23 10:00:01 relay postfix/smtp[123]: 4F2A: to=<a@b.example>, relay=mx.b.example[198.51.100.7]:25, delay=1, delays=0/0/0.5/0.5, dsn=5.1.1, status=bounced (host mx.b.example[198.51.100.7] said: 550 5.1.1 <a@b.example>: Recipient address rejected (in reply to end of DATA command))").unwrap();
        assert_eq!(r.code, 550);
        assert_eq!(r.stage, Some(Stage::EndOfData));
        let r = parse("host mx.b.example[198.51.100.7] refused to talk to me: 554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org").unwrap();
        assert_eq!(r.stage, Some(Stage::Connect));
        assert_eq!(r.code, 554);
    }

    #[test]
    fn exim_wrapper() {
        let r = parse("SMTP error from remote mail server after RCPT TO:<a@b.example>: host mx.b.example [192.0.2.9]: 451 4.7.1 Try later").unwrap();
        assert_eq!(r.wrapper, Wrapper::Exim);
        assert_eq!(r.stage, Some(Stage::Rcpt));
        assert_eq!(r.code, 451);
        assert_eq!(r.remote_ip, Some("192.0.2.9".parse().unwrap()));
        let r = parse("SMTP error from remote mail server after end of data: 550 5.7.1 Rejected")
            .unwrap();
        assert_eq!(r.stage, Some(Stage::EndOfData));
    }

    #[test]
    fn dsn_with_folding() {
        let r = parse("Action: failed\nStatus: 5.7.1\nRemote-MTA: dns; mx.b.example\nDiagnostic-Code: smtp; 550 5.7.1 Unfortunately, messages from\n    [203.0.113.5] weren't sent.\n    (S3150)\nLast-Attempt-Date: Mon, 23 Nov 2026").unwrap();
        assert_eq!(r.wrapper, Wrapper::Dsn);
        assert_eq!(r.code, 550);
        assert_eq!(
            r.text,
            "Unfortunately, messages from [203.0.113.5] weren't sent. (S3150)"
        );
        assert_eq!(r.remote_host.as_deref(), Some("mx.b.example"));
    }

    #[test]
    fn exchange_wrappers() {
        let r = parse(
            "Remote Server returned '550 5.7.1 RESOLVER.RST.AuthRequired; authentication required'",
        )
        .unwrap();
        assert_eq!(r.wrapper, Wrapper::Exchange);
        assert_eq!(r.code, 550);
        let r = parse("#550 5.7.1 smtp;550 5.7.1 Unfortunately, messages from [203.0.113.5] weren't sent. (S3150)> #SMTP#").unwrap();
        assert_eq!(r.wrapper, Wrapper::Exchange);
        assert_eq!(
            r.text,
            "Unfortunately, messages from [203.0.113.5] weren't sent. (S3150)"
        );
    }

    #[test]
    fn enhanced_code_in_the_middle_and_disagreeing() {
        let r =
            parse("553 Mail from 203.0.113.5 not allowed - 5.7.1 [BL23] Connections not accepted")
                .unwrap();
        assert_eq!(r.enhanced.unwrap().to_string(), "5.7.1");
        let r = parse("421 5.7.32 From header not aligned").unwrap();
        assert_eq!(r.enhanced_agrees(), Some(false));
        let r = parse("421 4.7.0 [TSS04] Messages deferred - 4.16.55.1; see x").unwrap();
        assert_eq!(r.enhanced.unwrap().to_string(), "4.7.0");
    }

    #[test]
    fn bad_input_is_not_a_reply() {
        assert_eq!(parse(""), Err(NotAReply::Empty));
        assert_eq!(parse("   \n "), Err(NotAReply::Empty));
        assert_eq!(parse("hello world"), Err(NotAReply::NoCode));
        assert_eq!(parse("12345"), Err(NotAReply::NoCode));
        assert_eq!(parse("999 nope"), Err(NotAReply::NoCode));
        assert_eq!(parse_bytes(b"\x00\x01\x02binary"), Err(NotAReply::Binary));
        // Control bytes past the first eight-byte chunk and in the tail are seen too.
        assert_eq!(
            parse_bytes(b"550 5.1.1 abcdefgh\x01\x02\x03\x04\x05\x06\x07"),
            Err(NotAReply::Binary)
        );
        assert_eq!(parse_bytes(b"550 5.1.1 ab\x00"), Err(NotAReply::Binary));
        assert!(parse("550 5.1.1 \x7f~ tab\there").is_ok());
        assert_eq!(parse_bytes(b"550 5.1.1 caf\xe9 unknown").unwrap().code, 550);
        let long = "x".repeat(100_000);
        assert_eq!(parse(&long), Err(NotAReply::NoCode));
        let long = format!("550 5.1.1 {}", "y ".repeat(50_000));
        assert_eq!(parse(&long).unwrap().code, 550);
    }

    /// The word-by-word join as first written (one `push_str` per word): the
    /// reference for the run-copying join.
    #[allow(clippy::all)]
    fn reply_text_reference(
        body: &str,
        code: u16,
        may_be_plain: bool,
    ) -> (Option<EnhancedCode>, Cow<'_, str>) {
        let code_str = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        let b = body.as_bytes();
        // The prefix (code, separator, enhanced code) is shared: the join is what this
        // reference pins down.
        let TextStart {
            enhanced,
            enh_len,
            pos,
            first,
        } = text_start(b);
        if may_be_plain && is_plain_text(&b[first..], code_str) {
            return (enhanced, Cow::Borrowed(&body[first..]));
        }
        let enh_bytes = &b[pos - enh_len..pos];
        let is_enh = |w: &[u8]| {
            enh_len > 0 && (w == enh_bytes || (w.first() == Some(&b'#') && &w[1..] == enh_bytes))
        };

        let mut text = String::with_capacity(b.len() - pos);
        let mut flattened = false;
        let mut at_line_start = false;
        let mut drop_enh_next = false;
        let mut i = pos;
        while i < b.len() {
            // Whitespace run: note whether it crossed a line break.
            let ws_start = i;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if b[ws_start..i].iter().any(|&c| c == b'\n' || c == b'\r') {
                at_line_start = true;
            }
            if i >= b.len() {
                break;
            }
            let w_start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut word = &b[w_start..i];
            let line_start = std::mem::take(&mut at_line_start);
            if word.len() >= 4 && word[..3] == code_str && word[3] == b'-' {
                flattened = true;
                word = &word[4..];
                if word.is_empty() || is_enh(word) {
                    drop_enh_next = word.is_empty();
                    continue;
                }
            } else if word == code_str && (line_start || flattened) {
                drop_enh_next = true;
                continue;
            } else if std::mem::take(&mut drop_enh_next) && is_enh(word) {
                continue;
            }
            drop_enh_next = false;
            if !text.is_empty() {
                text.push(' ');
            }
            // Word boundaries are ASCII whitespace, so these are char boundaries.
            let end = w_start + (i - w_start);
            text.push_str(&body[end - word.len()..end]);
        }
        (enhanced, Cow::Owned(text))
    }

    #[test]
    fn run_copying_join_matches_the_word_by_word_join_on_the_corpus() {
        for case in &crate::corpus_cases() {
            let body = case.reply.trim();
            if starts_with_code(body.as_bytes()) {
                let code: u16 = body[..3].parse().unwrap();
                assert_eq!(
                    reply_text(body, code, false),
                    reply_text_reference(body, code, false),
                    "{body:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn looks_binary_matches_the_byte_count(
            b in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => 0x20u8..0x7f,
                    2 => proptest::sample::select(vec![b'\t', b'\n', b'\r']),
                    1 => 0u8..0x20,
                    1 => 0x80u8..=0xff,
                ],
                0..80,
            ),
        ) {
            let reference = b.contains(&0)
                || b.iter().filter(|&&c| c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r')).count() * 8
                    > b.len();
            proptest::prop_assert_eq!(looks_binary(&b), reference);
        }

        #[test]
        fn run_copying_join_matches_the_word_by_word_join(
            code in "[245][0-9][0-9]",
            sep in "[ \t-]?",
            rest in "([ \t\r\n\x0b\x0c\x01\x7fa-z.#é]|[a-z]{7,20}|[245][0-9][0-9]-?|[245]\\.[0-9]\\.[0-9]){0,40}",
        ) {
            let body = format!("{code}{sep}{rest}");
            let code: u16 = code.parse().unwrap();
            proptest::prop_assert_eq!(
                reply_text(&body, code, false),
                reply_text_reference(&body, code, false)
            );
        }
    }

    /// The reply text taken as a slice (fast path) must equal the word-by-word join
    /// (the reference) whenever the fast path is taken.
    fn plain_slice_agrees_with_join(body: &str) {
        let body = body.trim();
        if !starts_with_code(body.as_bytes()) {
            return;
        }
        let b = body.as_bytes();
        let code =
            u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
        let may_be_plain = !has_control_byte(b);
        let (e_fast, fast) = reply_text(body, code, may_be_plain);
        let (e_ref, reference) = reply_text(body, code, false);
        assert_eq!(e_fast, e_ref, "{body:?}");
        assert_eq!(fast, reference, "{body:?}");
    }

    #[test]
    fn plain_text_slices_match_the_join_on_the_corpus() {
        let mut plain = 0;
        for case in &crate::corpus_cases() {
            let body = case.reply.as_str();
            plain_slice_agrees_with_join(body);
            plain += usize::from(starts_with_code(body.trim().as_bytes()));
        }
        assert!(plain > 200, "only {plain} raw replies checked");
        for body in [
            "550 5.1.1  two  spaces",
            "550-5.1.1 a 550-5.1.1 b 550 5.1.1 c",
            "550 x 550- y",
            "550 550-z",
            "451 4.7.500 a-b 451x-c x451-d",
            "250-PIPELINING",
            "550 5.1.1 ",
            "550 #5.1.1 text 5.1.1",
        ] {
            plain_slice_agrees_with_join(body);
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_text_slices_match_the_join(
            code in "[245][0-9][0-9]",
            sep in "[ -]?",
            rest in "([ a-z0-9.#-]|[245][0-9][0-9]-?){0,40}",
        ) {
            plain_slice_agrees_with_join(&format!("{code}{sep}{rest}"));
        }

        #[test]
        fn enhanced_in_text_matches_word_by_word(
            code in "[245][0-9][0-9]",
            text in "([ #(),;:a-z.]|[245]\\.[0-9]{1,3}\\.[0-9]{1,3}){0,30}",
        ) {
            let code: u16 = code.parse().unwrap();
            let reference = text.split_ascii_whitespace().find_map(|w| {
                let w = w
                    .trim_start_matches(['#', '('])
                    .trim_end_matches([',', ';', ')', ':']);
                EnhancedCode::parse(w).filter(|e| e.class == code / 100)
            });
            proptest::prop_assert_eq!(enhanced_in_text(&text, code), reference);
        }
    }
}
