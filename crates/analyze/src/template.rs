//! Reply templates: a reply with its variable parts replaced, so that replies that mean
//! the same thing group together.
//!
//! A template is made for every deferral and bounce in a log, and in a throttled stretch
//! of a log most of them are the same provider reply with a new host, time and id at the
//! end. [`Templater`] remembers the last few replies and the state after each of their
//! words, so the next reply that starts the same way resumes after the shared words.

/// A reply with its variable parts replaced, so replies that mean the same thing group
/// together: IPs → `<ip>`, hosts → `<host>`, timestamps → `<time>`, ids → `<id>`,
/// addresses → `<addr>`. Kept: the basic and enhanced codes, provider tags such as
/// `(S77714)`, `(AS843)`, `[TSS04]`, and URLs.
pub fn template(reply: &str) -> String {
    let mut out = String::with_capacity(reply.len().min(160));
    let mut last = NONE;
    extend(reply, 0, 0, &mut out, &mut last, |_| {});
    out
}

/// The placeholder state between words: the placeholder the last word became, so that a
/// run of variable words becomes one placeholder.
type Last = &'static str;
const NONE: Last = "";

/// The state after one word of a reply: where the word ended in the reply, and the
/// template's length and [`Last`] after it.
#[derive(Debug, Clone, Copy)]
struct Mark {
    end: usize,
    out_len: usize,
    last: Last,
}

/// Template the words of `reply` from byte `from` on (the first of them being word number
/// `index`), appending to `out`; `mark` is called after each word, except the one that
/// ends the template early at its length limit.
fn extend(
    reply: &str,
    from: usize,
    index: usize,
    out: &mut String,
    last: &mut Last,
    mut mark: impl FnMut(Mark),
) {
    for (i, (start, end)) in word_spans(reply, from).enumerate() {
        let token = &reply[start..end];
        match placeholder(token, index + i == 0) {
            Some(p) if p == *last => {}
            Some(p) => {
                push_word(out, p);
                *last = p;
            }
            None => {
                push_word(out, token);
                *last = NONE;
            }
        }
        if out.len() > 200 {
            out.push_str(" …");
            return;
        }
        mark(Mark {
            end,
            out_len: out.len(),
            last,
        });
    }
}

/// What a word of a reply becomes in its template: a placeholder, or itself (`None`).
fn placeholder(token: &str, first: bool) -> Option<&'static str> {
    let inner = trim_punctuation(token);
    let is_code = first && inner.len() == 3 && inner.bytes().all(|b| b.is_ascii_digit());
    let keep = is_code || is_enhanced(inner) || is_provider_tag(inner) || token.starts_with("http");
    if keep {
        return None;
    }
    // One pass over the word for what the tests below look at (a `memchr` per test cost
    // more on these short words).
    let seen = inner
        .bytes()
        .fold(0, |seen, b| seen | BYTE_CLASS[b as usize]);
    if seen & AT != 0 {
        Some("<addr>")
    } else if seen & DIGIT == 0 {
        None
    } else if seen & NOT_IP == 0 && inner.parse::<std::net::IpAddr>().is_ok() {
        Some("<ip>")
    } else if inner.len() >= 10
        && inner.as_bytes()[4] == b'-'
        && inner[..4].bytes().all(|b| b.is_ascii_digit())
    {
        Some("<time>")
    } else if seen & DOT != 0 && seen & ALPHA != 0 {
        Some("<host>")
    } else {
        Some("<id>")
    }
}

const AT: u8 = 1;
const DIGIT: u8 = 2;
const DOT: u8 = 4;
const ALPHA: u8 = 8;
/// A byte that no IP address has (one has only hex digits, `.` and `:`).
const NOT_IP: u8 = 16;

/// The classes of each byte, for [`placeholder`].
const BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if c == b'@' {
            class |= AT;
        }
        if c.is_ascii_digit() {
            class |= DIGIT;
        }
        if c == b'.' {
            class |= DOT;
        }
        if c.is_ascii_alphabetic() {
            class |= ALPHA;
        }
        if !(c.is_ascii_hexdigit() || c == b'.' || c == b':') {
            class |= NOT_IP;
        }
        table[b] = class;
        b += 1;
    }
    table
};

/// How many recent replies a [`Templater`] remembers: a few providers' replies interleave
/// in a log.
const RECENT: usize = 4;

/// Makes [`template`]s, resuming after the words a reply shares with a recent one.
#[derive(Debug, Default)]
pub struct Templater {
    recent: Vec<Recent>,
    /// The entry to reuse for a reply that shares no word with any recent one.
    victim: usize,
}

/// A recent reply, its template and the state after each of its words.
#[derive(Debug, Default)]
struct Recent {
    reply: String,
    out: String,
    marks: Vec<Mark>,
}

impl Templater {
    /// A templater that remembers nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The [`template`] of `reply`.
    pub fn template(&mut self, reply: &str) -> String {
        // The recent reply that shares the longest start with this one.
        let (slot, shared) = self
            .recent
            .iter()
            .enumerate()
            .map(|(i, r)| (i, common_prefix(r.reply.as_bytes(), reply.as_bytes())))
            .max_by_key(|&(_, shared)| shared)
            .unwrap_or((0, 0));
        // The words that end before the first differing byte, with the whitespace after
        // them, are the same words in both replies.
        let resume = self
            .recent
            .get(slot)
            .map_or(0, |r| r.marks.partition_point(|m| m.end < shared));
        let slot = if resume > 0 {
            slot
        } else if self.recent.len() < RECENT {
            self.recent.push(Recent::default());
            self.recent.len() - 1
        } else {
            self.victim = (self.victim + 1) % RECENT;
            self.victim
        };
        let r = &mut self.recent[slot];
        let (from, mut last) = match resume.checked_sub(1).map(|k| r.marks[k]) {
            Some(m) => (m.end, m.last),
            None => (0, NONE),
        };
        r.marks.truncate(resume);
        r.out.truncate(r.marks.last().map_or(0, |m| m.out_len));
        r.reply.clear();
        r.reply.push_str(reply);
        let marks = &mut r.marks;
        extend(reply, from, resume, &mut r.out, &mut last, |m| {
            marks.push(m)
        });
        r.out.clone()
    }
}

/// The length of the longest common start of `a` and `b`, eight bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// `token` without the brackets, quotes and punctuation around it: `()[]<>.,;:'"`.
/// A byte scan through a table (this runs on every word of every failed attempt's
/// reply; a `char` closure searching a string per character cost 3 % of the analysis).
/// The characters are ASCII, so the cuts fall on character boundaries.
fn trim_punctuation(token: &str) -> &str {
    const PUNCTUATION: [bool; 256] = {
        let mut table = [false; 256];
        let chars = b"()[]<>.,;:'\"";
        let mut i = 0;
        while i < chars.len() {
            table[chars[i] as usize] = true;
            i += 1;
        }
        table
    };
    let bytes = token.as_bytes();
    let start = bytes
        .iter()
        .position(|&b| !PUNCTUATION[b as usize])
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !PUNCTUATION[b as usize])
        .map_or(start, |i| i + 1);
    &token[start..end]
}

fn push_word(out: &mut String, word: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(word);
}

/// `4.7.500`, `5.1.1`.
fn is_enhanced(s: &str) -> bool {
    // By bytes (it runs on every word of every failed attempt's reply): class, `.`, then
    // two runs of 1–3 digits joined by one `.`.
    let [b'2' | b'4' | b'5', b'.', rest @ ..] = s.as_bytes() else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (subject, detail) = (&rest[..dot], &rest[dot + 1..]);
    let digits = |p: &[u8]| (1..=3).contains(&p.len()) && p.iter().all(u8::is_ascii_digit);
    digits(subject) && digits(detail)
}

/// The words of `s` between ASCII whitespace, as `split_ascii_whitespace` gives them, by a
/// plain byte scan (the standard one goes through a generic pattern searcher).
#[cfg(test)]
fn words(s: &str) -> impl Iterator<Item = &str> {
    word_spans(s, 0).map(|(start, end)| &s[start..end])
}

/// The byte ranges of the words of `s` from byte `from` (a character boundary) on.
/// Both ends of each range are at ASCII bytes or the ends of `s`: character boundaries.
fn word_spans(s: &str, from: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let b = s.as_bytes();
    let mut at = from;
    std::iter::from_fn(move || {
        while at < b.len() && b[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while at < b.len() && !b[at].is_ascii_whitespace() {
            at += 1;
        }
        (at > start).then_some((start, at))
    })
}

/// Provider tokens: `S77714`, `AS843`, `TSS04`, `RL000010`, `ATTR17`.
fn is_provider_tag(s: &str) -> bool {
    let letters = s.bytes().take_while(u8::is_ascii_uppercase).count();
    (1..=4).contains(&letters)
        && s.len() > letters
        && s.len() <= letters + 8
        && s[letters..].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::corpus_replies;

    #[test]
    fn punctuation_is_trimmed_as_the_char_pattern_did() {
        fn reference(t: &str) -> &str {
            t.trim_matches(|c: char| "()[]<>.,;:'\"".contains(c))
        }
        for t in [
            "",
            "(S77714)",
            "[198.51.100.7].",
            "<a@b.example>,",
            "\"'x'\"",
            "...",
            "é.",
            "(é)",
            "[BL6PEPF0001AB50.namprd04.prod.outlook.com",
            "4.7.500",
            "a;b",
            "))x((",
        ] {
            assert_eq!(trim_punctuation(t), reference(t), "{t:?}");
        }
    }

    #[test]
    fn templates_group_the_same_reply_from_different_ips_and_hosts() {
        let a = "451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2026-11-23T10:00:01.123Z 08DE0A1B2C3D4E5F]";
        let b = "451 4.7.500 Server busy. Please try again later from [198.51.100.8]. (S77714) [DB1PEPF000509EF.eurprd03.prod.outlook.com 2026-11-23T11:02:09.001Z 08DDE524AD2CBD69]";
        assert_eq!(template(a), template(b));
        assert_eq!(
            template(a),
            "451 4.7.500 Server busy. Please try again later from <ip> (S77714) <host> <time> <id>"
        );
        // A different provider tag is a different template.
        assert_ne!(template(a), template(&a.replace("S77714", "S77719")));
        assert_eq!(
            template("250 2.0.0 OK 1732356001 x1-20020a05.2 - gsmtp"),
            "250 2.0.0 OK <id> <host> - gsmtp"
        );
    }

    #[test]
    fn templates_are_made_as_the_std_splitting_made_them_on_the_reply_corpus() {
        fn is_enhanced_reference(s: &str) -> bool {
            let mut parts = s.split('.');
            let class = parts.next().unwrap_or("");
            matches!(class, "2" | "4" | "5")
                && parts.clone().count() == 2
                && parts
                    .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        }
        let mut replies = corpus_replies();
        replies
            .extend(["", "  ", "\t451\t4.7.500\x0cx\r\n", " a  b ", "é 4.7.1 ü"].map(String::from));
        assert!(replies.len() > 250);
        for reply in &replies {
            let words: Vec<&str> = words(reply).collect();
            let reference: Vec<&str> = reply.split_ascii_whitespace().collect();
            assert_eq!(words, reference, "{reply:?}");
            for w in words {
                let w = trim_punctuation(w);
                assert_eq!(is_enhanced(w), is_enhanced_reference(w), "{w:?}");
            }
        }
        for w in [
            "4.7.500", "5.1.1", "2.0.0", "3.1.1", "4.7", "4.7.5000", "4..5", "4.7.5.1", "4.a.1",
            "45.1.1", "",
        ] {
            assert_eq!(is_enhanced(w), is_enhanced_reference(w), "{w:?}");
        }
    }

    #[test]
    fn words_become_the_placeholders_the_chain_of_searches_made() {
        fn reference(token: &str, first: bool) -> Option<&'static str> {
            let inner = trim_punctuation(token);
            let is_code = first && inner.len() == 3 && inner.bytes().all(|b| b.is_ascii_digit());
            if is_code || is_enhanced(inner) || is_provider_tag(inner) || token.starts_with("http")
            {
                None
            } else if inner.contains('@') {
                Some("<addr>")
            } else if !inner.bytes().any(|b| b.is_ascii_digit()) {
                None
            } else if inner.parse::<std::net::IpAddr>().is_ok() {
                Some("<ip>")
            } else if inner.len() >= 10
                && inner.as_bytes()[4] == b'-'
                && inner[..4].bytes().all(|b| b.is_ascii_digit())
            {
                Some("<time>")
            } else if inner.contains('.') && inner.bytes().any(|b| b.is_ascii_alphabetic()) {
                Some("<host>")
            } else {
                Some("<id>")
            }
        }
        let mut words_seen = 0;
        let extra = "::1 [2001:db8::7] fe80::1%eth0 ::ffff:192.0.2.1 1.2.3 1.2.3.4.5 a@1 1@ \
             é1.x 12:00 2026-11-23 2026-11-2 x1.y 1.2 abc.def9 ABC.1 0x1F 192.0.2.256";
        for reply in resuming_replies().iter().map(String::as_str).chain([extra]) {
            for (i, word) in words(reply).enumerate() {
                assert_eq!(
                    placeholder(word, i == 0),
                    reference(word, i == 0),
                    "{word:?}"
                );
                words_seen += 1;
            }
        }
        assert!(words_seen > 5000, "{words_seen}");
    }

    #[test]
    fn common_prefix_is_the_bytewise_one() {
        fn reference(a: &[u8], b: &[u8]) -> usize {
            a.iter().zip(b).take_while(|(x, y)| x == y).count()
        }
        let base = b"451 4.7.500 Server busy. Please try again later from [198.51.100.7].";
        for cut in 0..=base.len() {
            for flip in 0..cut {
                let mut other = base[..cut].to_vec();
                other[flip] ^= 0x20;
                assert_eq!(common_prefix(base, &other), reference(base, &other));
                assert_eq!(common_prefix(&other, base), reference(&other, base));
            }
            assert_eq!(common_prefix(base, &base[..cut]), cut);
        }
    }

    /// Replies that share starts of every length with each other and with the corpus,
    /// in an order that makes the templater resume, replace and reuse its entries.
    fn resuming_replies() -> Vec<String> {
        let mut replies = corpus_replies();
        let ms = "451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2026-11-23T10:00:01.123Z 08DE0A1B2C3D4E5F]";
        for cut in (0..ms.len()).step_by(3) {
            replies.push(ms[..cut].to_string());
            replies.push(format!("{} 2026-11-23T10:00:0{}Z x", &ms[..cut], cut % 10));
            replies.push(format!("{}S77719) ab@c.example", &ms[..cut]));
        }
        let long = format!("550 5.7.1 {}", "word 12345 ".repeat(40));
        for cut in (0..long.len()).step_by(7) {
            replies.push(long[..cut].to_string());
            replies.push(format!("{}é 203.0.113.{cut}", &long[..cut]));
        }
        replies.extend(
            [
                "",
                " ",
                "451",
                "451 ",
                "4510 x",
                "451\t4.7.1\tx",
                " 451 4.7.1",
                "é 451",
            ]
            .map(String::from),
        );
        replies
    }

    #[test]
    fn the_templater_makes_the_templates_that_template_makes() {
        let replies = resuming_replies();
        assert!(replies.len() > 500);
        let mut templater = Templater::new();
        for pass in 0..3 {
            for (i, reply) in replies.iter().enumerate() {
                // The third pass interleaves each reply with one from elsewhere in the list.
                if pass == 2 {
                    let other = &replies[(i * 7919) % replies.len()];
                    assert_eq!(templater.template(other), template(other), "{other:?}");
                }
                assert_eq!(templater.template(reply), template(reply), "{reply:?}");
            }
        }
        assert!(templater.recent.len() == RECENT);
    }

    #[test]
    fn the_templater_resumes_after_the_shared_words() {
        let a = "451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2026-11-23T10:00:01.123Z 08DE0A1B2C3D4E5F]";
        let b = "451 4.7.500 Server busy. Please try again later from [198.51.100.7]. (S77714) [DB1PEPF000509EF.eurprd03.prod.outlook.com 2026-11-23T11:02:09.001Z 08DDE524AD2CBD69]";
        let mut t = Templater::new();
        assert_eq!(t.template(a), template(a));
        assert_eq!(t.template(b), template(b));
        // One entry, resumed in place: its marks up to `(S77714)` came from `a`.
        assert_eq!(t.recent.len(), 1);
        assert_eq!(t.recent[0].reply, b);
        assert_eq!(t.recent[0].marks.len(), 14);
        // A reply that shares no word starts an entry of its own.
        assert_eq!(
            t.template("550 5.1.1 unknown user"),
            "550 5.1.1 unknown user"
        );
        assert_eq!(t.recent.len(), 2);
    }
}
