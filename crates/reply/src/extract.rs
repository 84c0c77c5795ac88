//! Facts named in a reply's text: provider tokens, IP addresses, URLs and Microsoft's
//! trailing `[host timestamp id]` block. One pass over the bytes.
//!
//! Written by hand because each token family has a fixed, tiny shape (research notes
//! §5.5 item 6) and a byte scan costs far less than running a regex per family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What [`extract`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// Provider tokens: `S77714`, `AS(201806281)`, `AS16012609`, `[TSS04]`, `RL000010`,
    /// `c=r0201`, `OFR005_505`, `RP-001`, `PRX4`, `ATTR35`.
    pub tokens: Vec<String>,
    /// IP addresses named in the text (deduplicated, in order).
    pub ips: Vec<IpAddr>,
    /// URLs (http/https).
    pub urls: Vec<String>,
    /// Receiving host from a trailing `[host …]` block, exactly as written.
    pub host: Option<String>,
    /// The receiving host's UTC timestamp from that block.
    pub host_time: Option<String>,
}

/// Scan `text` once for tokens, IPs, URLs and the host block.
pub fn extract(text: &str) -> Extracted {
    let b = text.as_bytes();
    let mut out = Extracted::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let boundary = i == 0 || !is_alnum(b[i - 1]);
        let step = match c {
            b'(' => paren_token(&b[i..], &mut out.tokens),
            b'[' => bracket(&text[i..], &mut out),
            // A word starting with `h` is a URL or nothing (never a token), as before
            // the cheap `ttp` check was added.
            b'h' | b'H' if boundary => {
                let http = b
                    .get(i + 1..i + 4)
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"ttp"));
                if http {
                    url(&text[i..], &mut out)
                } else {
                    None
                }
            }
            // Addresses are tried where a digit starts a word, or where hex letters
            // followed by `:` do (IPv6 such as `fe80::1`, `[abcd::1]`).
            b'0'..=b'9' if boundary && (i == 0 || b[i - 1] != b'.') => ip(&text[i..], &mut out.ips),
            b'a'..=b'f' | b'A'..=b'F' if boundary && hex_group_then_colon(&b[i..]) => {
                ip(&text[i..], &mut out.ips)
            }
            b'A'..=b'Z' if boundary => word_token(&b[i..], &mut out.tokens),
            _ => None,
        };
        match step {
            Some(n) => i += n.max(1),
            // Nothing starts inside a word: skip the rest of it in one go.
            None if is_alnum(c) => {
                i += 1;
                while i < b.len() && is_alnum(b[i]) {
                    i += 1;
                }
            }
            None => i += 1,
        }
    }
    out
}

/// ASCII letters and digits, by table: this test runs on nearly every byte of a reply.
const ALNUM: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c as u8).is_ascii_alphanumeric();
        c += 1;
    }
    t
};

fn is_alnum(c: u8) -> bool {
    ALNUM[usize::from(c)]
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|t| t == s) {
        v.push(s.to_owned());
    }
}

fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// `(S77714)` → `S77714`; `(AS16012609)` → `AS16012609`.
fn paren_token(b: &[u8], tokens: &mut Vec<String>) -> Option<usize> {
    let prefix = if b.get(1) == Some(&b'S') {
        2
    } else if b.get(1..3) == Some(b"AS") {
        3
    } else {
        return None;
    };
    let n = digits(&b[prefix..]);
    if n == 0 || n > 12 || b.get(prefix + n) != Some(&b')') {
        return None;
    }
    push_unique(tokens, std::str::from_utf8(&b[1..prefix + n]).ok()?);
    Some(prefix + n + 1)
}

/// Tokens that start a word: `AS(201806281)`, Comcast `RL000010`, Orange `OFR005_505`
/// / `LPN007_402`, Outlook.com `RP-001`, Microsoft `PRX4` / `ATTR35`.
fn word_token(b: &[u8], tokens: &mut Vec<String>) -> Option<usize> {
    let letters = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    let end = match (letters, b.get(letters)) {
        (2, Some(b'(')) if b.starts_with(b"AS") => {
            let n = digits(&b[3..]);
            (n > 0 && b.get(3 + n) == Some(&b')')).then_some(4 + n)?
        }
        (2, Some(b'0'..=b'9')) if digits(&b[2..]) == 6 => 8,
        (2, Some(b'-')) if digits(&b[3..]) == 3 => 6,
        (3, Some(b'0'..=b'9' | b'_')) if b.starts_with(b"OFR") || b.starts_with(b"LPN") => {
            let n = digits(&b[3..]);
            let m = digits(b.get(4 + n..)?);
            (b.get(3 + n) == Some(&b'_') && m == 3).then_some(4 + n + 3)?
        }
        (3 | 4, Some(b'0'..=b'9')) if b.starts_with(b"PRX") || b.starts_with(b"ATTR") => {
            let n = digits(&b[letters..]);
            (n <= 3).then_some(letters + n)?
        }
        _ => return None,
    };
    if b.get(end).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    push_unique(tokens, std::str::from_utf8(&b[..end]).ok()?);
    Some(end)
}

/// What a `[` opens.
enum Bracket<'a> {
    /// `[TSS04]`-style token (letters then digits); the whole bracket is the token.
    Token(&'a str),
    /// `[host timestamp id]` block.
    Host(&'a str, Option<&'a str>),
}

/// The bracket starting `s` (which starts with `[`) and its length, if it is a token
/// or a host block; the host block's timestamp only when `want_time`.
fn bracket_at(s: &str, want_time: bool) -> Option<(Bracket<'_>, usize)> {
    let b = s.as_bytes();
    let close = memchr::memchr(b']', &b[..b.len().min(200)])?;
    let inner = &s[1..close];
    let ib = inner.as_bytes();
    let letters = ib.iter().take_while(|c| c.is_ascii_uppercase()).count();
    if (1..=5).contains(&letters)
        && ib.len() > letters
        && ib.len() <= letters + 3
        && ib[letters..].iter().all(u8::is_ascii_digit)
    {
        return Some((Bracket::Token(&s[..=close]), close + 1));
    }
    // The first word (as `split_ascii_whitespace` finds it) must look like a host.
    let start = ib.iter().position(|c| !c.is_ascii_whitespace())?;
    let (len, seen) = host_run(&ib[start..]);
    let end = start + len;
    let word_ends = ib.get(end).is_none_or(u8::is_ascii_whitespace);
    if !(word_ends && len <= 253 && seen & (DOT | LETTER) == DOT | LETTER) {
        return None;
    }
    let host = &inner[start..end];
    let time = if want_time {
        inner[end..]
            .split_ascii_whitespace()
            .next()
            .filter(|t| looks_like_timestamp(t))
    } else {
        None
    };
    Some((Bracket::Host(host, time), close + 1))
}

/// Host-name byte classes, by table (one lookup per byte of a host block).
const HOST_CHAR: u8 = 1;
const DOT: u8 = 2;
const LETTER: u8 = 4;
const HOST_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphabetic() {
            HOST_CHAR | LETTER
        } else if b == b'.' {
            HOST_CHAR | DOT
        } else if b.is_ascii_digit() || b == b'-' {
            HOST_CHAR
        } else {
            0
        };
        c += 1;
    }
    t
};

/// The length of the run of host-name bytes (letters, digits, `.`, `-`) starting `b`,
/// and the classes seen in it (`DOT`, `LETTER`): 16 bytes at a time while the run
/// goes on (a host block's host is ~40 bytes; the byte loop cost ~6 instructions a
/// byte), the rest byte by byte.
fn host_run(b: &[u8]) -> (usize, u8) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        let mut seen = 0;
        let mut at = 0;
        while let Some(block) = b.get(at..at + 16) {
            let block: &[u8; 16] = block.try_into().expect("16 bytes");
            // SAFETY: `host_block_sse2` needs SSE2, which this build targets (the
            // cfg above). It does no unchecked memory access.
            let (len, block_seen) = unsafe { host_block_sse2(block) };
            seen |= block_seen;
            if len < 16 {
                return (at + len, seen);
            }
            at += 16;
        }
        let (len, tail_seen) = host_run_scalar(&b[at..]);
        (at + len, seen | tail_seen)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    host_run_scalar(b)
}

/// [`host_run`] within one 16-byte block: the run's length in it (16 when the whole
/// block is host bytes) and the classes seen in the run.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn host_block_sse2(block: &[u8; 16]) -> (usize, u8) {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8, _mm_sub_epi8,
    };
    let x = u128::from_le_bytes(*block);
    let v = _mm_set_epi64x((x >> 64) as i64, x as i64);
    // Unsigned `lo <= c <= lo + span`: (c - lo) wraps above `span` otherwise.
    let within = |c, lo: u8, span: u8| {
        let d = _mm_sub_epi8(c, _mm_set1_epi8(lo as i8));
        _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(span as i8)), d)
    };
    // `| 0x20` folds upper case onto lower case and sends no other byte into a-z.
    let letters = within(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', 25);
    let dots = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'.' as i8));
    let others = _mm_or_si128(
        within(v, b'0', 9),
        _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8)),
    );
    let host = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(letters, dots), others)) as u32;
    let len = (!host & 0xffff).trailing_zeros().min(16) as usize;
    let run = (1u32 << len) - 1;
    let mut seen = 0;
    if _mm_movemask_epi8(letters) as u32 & run != 0 {
        seen |= LETTER;
    }
    if _mm_movemask_epi8(dots) as u32 & run != 0 {
        seen |= DOT;
    }
    (len, seen)
}

/// [`host_run`] byte by byte (the reference, and the tail).
fn host_run_scalar(b: &[u8]) -> (usize, u8) {
    let mut seen = 0;
    for (i, &c) in b.iter().enumerate() {
        let class = HOST_BYTES[usize::from(c)];
        if class == 0 {
            return (i, seen);
        }
        seen |= class;
    }
    (b.len(), seen)
}

/// `[TSS04]`-style tokens, or a `[host timestamp id]` block (the last one wins).
fn bracket(s: &str, out: &mut Extracted) -> Option<usize> {
    let (found, len) = bracket_at(s, true)?;
    match found {
        Bracket::Token(t) => push_unique(&mut out.tokens, t),
        Bracket::Host(host, time) => {
            // Kept exactly as the receiver wrote it: it is escalation evidence.
            out.host = Some(host.to_owned());
            out.host_time = time.map(str::to_owned);
        }
    }
    Some(len)
}

/// The receiving host of the reply's `[host timestamp id]`
/// block, the same one [`extract`] reports, without extracting anything else: the
/// classifier needs only this, and only when neither `--mx` nor the wrapper named a
/// host.
///
/// The last host block wins, so the brackets are looked at from the end: Microsoft's
/// block closes the reply, and the `[IP]` brackets before it are then never parsed.
/// A `[` the forward scan might jump over (it follows an unclosed `[`, so it may lie
/// inside a bracket recognised before it) hands the decision to the forward scan.
pub fn named_host(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut at = memchr::memrchr(b'[', b)?;
    loop {
        // The nearest bracket byte before this `[`: a `]` (or none) means it is seen.
        let before = memchr::memrchr2(b'[', b']', &b[..at]);
        if before.is_some_and(|q| b[q] == b'[') {
            return named_host_forward(text);
        }
        if let Some(host) = host_of_block(&text[at..]) {
            return Some(host);
        }
        at = memchr::memrchr(b'[', &b[..before?])?;
    }
}

/// The host of the `[host …]` block starting `s` (which starts with `[`): what
/// [`bracket_at`] returns as [`Bracket::Host`], without its token check (a token has
/// no dot, so it is never a host) and without first looking for the `]` over the
/// whole bracket — only after the host, which holds none. This is the classifier's
/// per-reply path; `bracket_at` cost ~290 instructions a call here.
fn host_of_block(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let limit = b.len().min(200);
    let start = 1 + b[1..limit]
        .iter()
        .take_while(|c| c.is_ascii_whitespace())
        .count();
    let (len, seen) = host_run(&b[start..limit]);
    let end = start + len;
    // The word ends at whitespace or the `]`, and a `]` closes the bracket within
    // 200 bytes of the `[` (a whitespace byte is no `]`, so the search starts there).
    let closed = match b[..limit].get(end) {
        Some(b']') => true,
        Some(c) if c.is_ascii_whitespace() => memchr::memchr(b']', &b[end..limit]).is_some(),
        _ => false,
    };
    (closed && len <= 253 && seen & (DOT | LETTER) == DOT | LETTER).then(|| &s[start..end])
}

/// [`named_host`] by a scan from the start, as [`extract`] sees the brackets: the
/// reference, and the answer when brackets nest.
fn named_host_forward(text: &str) -> Option<&str> {
    let mut found = None;
    let mut pos = 0;
    while let Some(at) = memchr::memchr(b'[', &text.as_bytes()[pos..]) {
        let at = pos + at;
        pos = match bracket_at(&text[at..], false) {
            Some((Bracket::Host(host, _), len)) => {
                found = Some(host);
                at + len
            }
            Some((Bracket::Token(_), len)) => at + len,
            None => at + 1,
        };
    }
    found
}

/// `2024-07-14T14:44:43.083Z`.
fn looks_like_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 19 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

/// `http://` / `https://` up to whitespace or a closing delimiter. GMX/Web.de case codes
/// (`?c=r0201`) become tokens too.
fn url(s: &str, out: &mut Extracted) -> Option<usize> {
    let b = s.as_bytes();
    let scheme = if b.len() > 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else {
        return None;
    };
    let end = b
        .iter()
        .position(|&c| {
            c.is_ascii_whitespace() || matches!(c, b')' | b']' | b'>' | b'<' | b'\'' | b'"' | b',')
        })
        .unwrap_or(b.len());
    let u = s[..end].trim_end_matches(['.', ';', ':']);
    if u.len() <= scheme {
        return None;
    }
    if let Some(q) = case_param(u.as_bytes()) {
        let code = &u[q + 1..];
        let code = code.split('&').next().unwrap_or(code);
        if code.len() > 2 {
            push_unique(&mut out.tokens, code);
        }
    }
    push_unique(&mut out.urls, u);
    // Keep scanning inside the URL: its query often names the IP (`?ip=…`).
    Some(scheme)
}

/// Where the `c=` query parameter starts (`?c=` preferred, else the first `&c=`), by
/// one byte scan: a substring searcher per URL cost more than the rest of the URL scan.
fn case_param(u: &[u8]) -> Option<usize> {
    let mut amp = None;
    for (i, w) in u.windows(3).enumerate() {
        if w[1] == b'c' && w[2] == b'=' {
            match w[0] {
                b'?' => return Some(i),
                b'&' if amp.is_none() => amp = Some(i),
                _ => {}
            }
        }
    }
    amp
}

/// One to four hex digits then `:`: how an IPv6 address written with a leading letter
/// starts (a word such as `add:` is then refused by the address parser).
fn hex_group_then_colon(b: &[u8]) -> bool {
    // Byte by byte with an early exit: this runs at every word starting with a-f.
    for &c in b.iter().take(5).skip(1) {
        if c == b':' {
            return true;
        }
        if !c.is_ascii_hexdigit() {
            return false;
        }
    }
    false
}

/// An IPv4 or IPv6 address starting here (the run of address characters must parse).
fn ip(s: &str, ips: &mut Vec<IpAddr>) -> Option<usize> {
    let b = s.as_bytes();
    let run = b
        .iter()
        .take(64)
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, b'.' | b':'))
        .count();
    let cand = s[..run].trim_end_matches(['.', ':']);
    let colons = cand.bytes().filter(|&c| c == b':').count();
    let addr = if colons >= 2 {
        IpAddr::V6(cand.parse::<Ipv6Addr>().ok()?)
    } else if colons == 0 && cand.bytes().filter(|&c| c == b'.').count() == 3 {
        IpAddr::V4(cand.parse::<Ipv4Addr>().ok()?)
    } else {
        return None;
    };
    if b.get(run).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    // Yahoo's internal `4.16.55.1` / `#4.16.1` codes parse as addresses but are not.
    if let IpAddr::V4(v4) = addr
        && matches!(v4.octets(), [4 | 5, 16, ..])
    {
        return Some(run);
    }
    if !ips.contains(&addr) {
        ips.push(addr);
    }
    Some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference for the host-byte class tests: the run of `HOST_BYTES`.
    fn host_run_reference(b: &[u8]) -> (usize, u8) {
        let len = b
            .iter()
            .take_while(|&&c| HOST_BYTES[usize::from(c)] != 0)
            .count();
        let seen = b[..len]
            .iter()
            .fold(0, |seen, &c| seen | HOST_BYTES[usize::from(c)]);
        (len, seen & (DOT | LETTER))
    }

    #[test]
    fn host_run_agrees_with_the_byte_table_for_every_byte_at_every_position() {
        for len in 0..50usize {
            for at in 0..len.max(1) {
                for c in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    b.extend_from_slice(b" x");
                    if at < len {
                        b[at] = c;
                    }
                    let (n, seen) = host_run(&b);
                    assert_eq!((n, seen & (DOT | LETTER)), host_run_reference(&b), "{b:?}");
                }
            }
        }
        let (n, seen) = host_run(b"0123456789-0123456789.");
        assert_eq!((n, seen & (DOT | LETTER)), (22, DOT));
    }

    proptest::proptest! {
        #[test]
        fn host_run_agrees_with_the_byte_table(b in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(b"aZz09.-_ [@`{/:".to_vec()),
                proptest::num::u8::ANY,
            ],
            0..80,
        )) {
            let (n, seen) = host_run(&b);
            proptest::prop_assert_eq!((n, seen & (DOT | LETTER)), host_run_reference(&b));
        }
    }

    #[test]
    fn named_host_from_the_end_agrees_with_the_forward_scan_on_the_corpus() {
        let mut named = 0;
        for case in &crate::corpus_cases() {
            let text = case.reply.as_str();
            assert_eq!(named_host(text), named_host_forward(text), "{text:?}");
            named += usize::from(named_host(text).is_some());
        }
        assert!(named >= 20, "only {named} corpus replies name a host");
        for text in [
            "[mx.a.example [x.b.example z] tail",
            "[mx.a.example x] [TSS04] [203.0.113.5]",
            "[a [mx.b.example] c]",
            "]] [[mx.a.example]",
            "[ mx.a.example 2024-07-14T14:44:43.083Z id] [mx.c.example]",
        ] {
            assert_eq!(named_host(text), named_host_forward(text), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn named_host_from_the_end_agrees_with_the_forward_scan(
            text in "(\\[|\\]| |\t|\n|x{60}|x|mx\\.a\\.example|MX\\.B\\.example|TSS04|203\\.0\\.113\\.5|2024-07-14T14:44:43\\.083Z){0,16}"
        ) {
            proptest::prop_assert_eq!(named_host(&text), named_host_forward(&text));
        }
    }

    #[test]
    fn microsoft_server_busy() {
        let e = extract(
            "Server busy. Please try again later from [203.0.113.10]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2024-07-14T14:44:43.083Z 08DCA36F759CD546]",
        );
        assert_eq!(e.tokens, ["S77714"]);
        assert_eq!(e.ips, ["203.0.113.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            e.host.as_deref(),
            Some("BL6PEPF0001AB50.namprd04.prod.outlook.com")
        );
        assert_eq!(e.host_time.as_deref(), Some("2024-07-14T14:44:43.083Z"));
    }

    #[test]
    fn token_families() {
        let e = extract(
            "Access denied. AS(201806281) x (AS16012609) [TSS04] [TS03] [CS01] RL000010 OFR005_505 [505] RP-001 PRX4 ATTR35 [Name=Protocol Filter Agent][AGT=PFA]",
        );
        assert_eq!(
            e.tokens,
            [
                "AS(201806281)",
                "AS16012609",
                "[TSS04]",
                "[TS03]",
                "[CS01]",
                "RL000010",
                "OFR005_505",
                "RP-001",
                "PRX4",
                "ATTR35"
            ]
        );
    }

    #[test]
    fn urls_and_gmx_case() {
        let e = extract(
            "For explanation visit https://postmaster.gmx.net/en/case?c=r0201&i=ip&v=198.51.100.42&r=1A2B. Learn more at https://support.google.com/mail/?p=NoSuchUser",
        );
        assert_eq!(e.tokens, ["c=r0201"]);
        assert_eq!(e.urls.len(), 2);
        assert_eq!(e.urls[1], "https://support.google.com/mail/?p=NoSuchUser");
        assert_eq!(e.ips, ["198.51.100.42".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn case_parameter_prefers_question_mark() {
        assert_eq!(case_param(b"https://x/?a=1&c=r1&c=r2"), Some(14));
        assert_eq!(case_param(b"https://x/p&c=r1?c=r2"), Some(16));
        assert_eq!(case_param(b"https://x/?cc=1"), None);
        assert_eq!(case_param(b"c="), None);
    }

    #[test]
    fn ipv6_and_no_false_ips() {
        let e = extract("from [fe80::1] and abcd::1 and [ABCD:ef::2] but not add: or beef:");
        assert_eq!(
            e.ips,
            [
                "fe80::1".parse::<IpAddr>().unwrap(),
                "abcd::1".parse().unwrap(),
                "abcd:ef::2".parse().unwrap()
            ]
        );
        let e = extract("from [2001:db8::25] at 14:44:43 version 4.16.55.1 and 10.0.0.1.");
        assert_eq!(
            e.ips,
            [
                "2001:db8::25".parse::<IpAddr>().unwrap(),
                "10.0.0.1".parse().unwrap()
            ]
        );
    }
}
