//! Knowledge the analyzer needs that is data: which provider a receiving host or
//! recipient domain belongs to, and its bands (`data/providers.toml`, overridable).

use serde::Deserialize;

/// Bands: the deferral rate at or above which a segment is `watch` or `act-now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bands {
    pub watch: f64,
    pub act: f64,
}

impl Default for Bands {
    fn default() -> Self {
        Bands {
            watch: 0.01,
            act: 0.05,
        }
    }
}

/// One provider's recognition patterns and thresholds.
#[derive(Debug, Clone, Deserialize)]
pub struct Provider {
    pub name: String,
    #[serde(default)]
    pub mx_suffixes: Vec<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default = "default_watch")]
    pub band_watch: f64,
    #[serde(default = "default_act")]
    pub band_act: f64,
    #[serde(default = "default_connections")]
    pub max_connections: u32,
}

fn default_watch() -> f64 {
    0.01
}
fn default_act() -> f64 {
    0.05
}
fn default_connections() -> u32 {
    20
}

#[derive(Debug, Deserialize)]
struct ProvidersFile {
    provider: Vec<Provider>,
}

/// Error reading a providers file.
#[derive(Debug, thiserror::Error)]
#[error("providers file: {0}")]
pub struct ProvidersError(#[from] toml::de::Error);

/// The provider table.
#[derive(Debug, Clone)]
pub struct Providers {
    list: Vec<Provider>,
}

/// The name used for receivers that match no provider.
pub const OTHER: &str = "other";

impl Providers {
    /// The table shipped with mxpace.
    pub fn builtin() -> Self {
        Self::parse(include_str!("../data/providers.toml"))
            .expect("the shipped providers.toml parses")
    }

    /// Parse a providers file (same shape as `data/providers.toml`).
    pub fn parse(text: &str) -> Result<Self, ProvidersError> {
        let file: ProvidersFile = toml::from_str(text)?;
        Ok(Providers {
            list: file.provider,
        })
    }

    /// Which provider receives mail for this MX host / recipient domain.
    pub fn recognise(&self, mx_host: Option<&str>, recipient_domain: &str) -> &str {
        if let Some(mx) = mx_host {
            let mx = mx.trim_end_matches('.');
            // A user's providers file may name MX suffixes of its own; they win.
            for p in &self.list {
                if p.mx_suffixes
                    .iter()
                    .any(|s| mx.ends_with(s.as_str()) || mx == s.trim_start_matches('.'))
                {
                    return &p.name;
                }
            }
            // Otherwise the MX patterns live in one place: the reply classifier's table.
            if let Some(name) = mxpace_reply::provider_for_host(mx) {
                return name;
            }
        }
        for p in &self.list {
            if p.domains.iter().any(|d| d == recipient_domain) {
                return &p.name;
            }
        }
        OTHER
    }

    /// Bands for a provider (defaults for unknown ones).
    pub fn bands(&self, provider: &str) -> Bands {
        self.get(provider).map_or_else(Bands::default, |p| Bands {
            watch: p.band_watch,
            act: p.band_act,
        })
    }

    /// Parallel-session limit for a provider.
    pub fn max_connections(&self, provider: &str) -> u32 {
        self.get(provider)
            .map_or(default_connections(), |p| p.max_connections)
    }

    /// Override the bands of one provider (or of all, for `*`).
    pub fn set_bands(&mut self, provider: &str, bands: Bands) {
        if provider != "*" && self.get(provider).is_none() {
            self.list.push(Provider {
                name: provider.to_string(),
                mx_suffixes: vec![],
                domains: vec![],
                band_watch: bands.watch,
                band_act: bands.act,
                max_connections: default_connections(),
            });
        }
        for p in self
            .list
            .iter_mut()
            .filter(|p| provider == "*" || p.name == provider)
        {
            p.band_watch = bands.watch;
            p.band_act = bands.act;
        }
    }

    fn get(&self, provider: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.name == provider)
    }
}

/// A reply with its variable parts replaced, so replies that mean the same thing group
/// together: IPs → `<ip>`, hosts → `<host>`, timestamps → `<time>`, ids → `<id>`,
/// addresses → `<addr>`. Kept: the basic and enhanced codes, provider tags such as
/// `(S77714)`, `(AS843)`, `[TSS04]`, and URLs.
pub fn template(reply: &str) -> String {
    let mut out = String::with_capacity(reply.len().min(160));
    let mut last_placeholder = "";
    for (i, token) in words(reply).enumerate() {
        let inner = trim_punctuation(token);
        let is_code = i == 0 && inner.len() == 3 && inner.bytes().all(|b| b.is_ascii_digit());
        let keep =
            is_code || is_enhanced(inner) || is_provider_tag(inner) || token.starts_with("http");
        let placeholder = if keep {
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
        };
        match placeholder {
            Some(p) if p == last_placeholder => continue,
            Some(p) => {
                push_word(&mut out, p);
                last_placeholder = p;
            }
            None => {
                push_word(&mut out, token);
                last_placeholder = "";
            }
        }
        if out.len() > 200 {
            out.push_str(" …");
            break;
        }
    }
    out
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
fn words(s: &str) -> impl Iterator<Item = &str> {
    let b = s.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < b.len() && b[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while at < b.len() && !b[at].is_ascii_whitespace() {
            at += 1;
        }
        // Both ends are at ASCII bytes or the ends of `s`: character boundaries.
        (at > start).then(|| &s[start..at])
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

/// The basic reply code at the start of a reply, if any.
pub fn basic_code(reply: &str) -> Option<u16> {
    let b = reply.trim_start().as_bytes();
    if b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && (b.len() == 3 || !b[3].is_ascii_digit())
    {
        let code = (b[0] - b'0') as u16 * 100 + (b[1] - b'0') as u16 * 10 + (b[2] - b'0') as u16;
        return (200..600).contains(&code).then_some(code);
    }
    None
}

/// The Microsoft receiving host named in a reply (`[BL6PEPF0001AB50.namprd04.prod.outlook.com …]`
/// or `Hostname=…`) and its datacenter/region label (`namprd04`, `eop-nam11`).
pub fn microsoft_host(reply: &str) -> Option<(&str, &str)> {
    // Runs on every attempt, mostly on short replies that name no host: the occurrences
    // of `outlook.com` are found from the `k`s (memchr), which costs a fraction of a
    // substring search on such texts; then byte scans (`char` patterns and a second
    // search for the other suffix cost several times more).
    let occurrences = memchr::memchr_iter(b'k', reply.as_bytes()).filter_map(|k| {
        let start = k.checked_sub("outloo".len())?;
        reply.as_bytes()[start..]
            .starts_with(b"outlook.com")
            .then_some(start)
    });
    const PROD: &str = ".prod.";
    const PROTECTION: &str = ".prod.protection.";
    let before = |i: usize, s: &str| i >= s.len() && reply[..i].ends_with(s);
    // The first `.prod.outlook.com`, else the first `.prod.protection.outlook.com`.
    let mut protection = None;
    let mut prod = None;
    for i in occurrences {
        if before(i, PROD) {
            prod = Some(i - PROD.len());
            break;
        }
        if protection.is_none() && before(i, PROTECTION) {
            protection = Some(i - PROTECTION.len());
        }
    }
    let at = prod.or(protection)?;
    let b = reply.as_bytes();
    let start = b[..at]
        .iter()
        .rposition(|c| matches!(c, b'[' | b' ' | b'=' | b'('))
        .map_or(0, |i| i + 1);
    let end = b[at..]
        .iter()
        .position(|c| matches!(c, b' ' | b']' | b',' | b')'))
        .map_or(b.len(), |i| at + i);
    let host = &reply[start..end];
    let first_dot = memchr::memchr(b'.', host.as_bytes())?;
    let rest = &host[first_dot + 1..];
    let region = &rest[..memchr::memchr(b'.', rest.as_bytes()).unwrap_or(rest.len())];
    Some((host, region))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The replies of the reply classifier's corpus (288 real-form replies).
    fn corpus_replies() -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Corpus {
            case: Vec<Case>,
        }
        #[derive(serde::Deserialize)]
        struct Case {
            reply: String,
        }
        let corpus: Corpus =
            toml::from_str(include_str!("../../reply/corpus/replies.toml")).unwrap();
        corpus.case.into_iter().map(|c| c.reply).collect()
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
    fn microsoft_hosts_are_found_as_the_two_searches_found_them() {
        fn reference(reply: &str) -> Option<(&str, &str)> {
            let at = reply
                .find(".prod.outlook.com")
                .or_else(|| reply.find(".prod.protection.outlook.com"))?;
            let start = reply[..at].rfind(['[', ' ', '=', '(']).map_or(0, |i| i + 1);
            let tail = &reply[at..];
            let end = at + tail.find([' ', ']', ',', ')']).unwrap_or(tail.len());
            let host = &reply[start..end];
            Some((host, host.split('.').nth(1)?))
        }
        for r in [
            "",
            "250 2.0.0 Ok: queued as 4Qz8Lb1Xyz9abc",
            "451 4.7.500 Server busy. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2026-11-23T10:00:01Z 08DE]",
            "451 4.7.651 (S844) [DM6NAM11FT088.eop-nam11.prod.protection.outlook.com 2023]",
            "x Hostname=AM0PR01MB1234.eurprd01.prod.outlook.com, y",
            "a.prod.protection.outlook.com then b.c.prod.outlook.com",
            ".prod.outlook.com",
            "(x.prod.outlook.com)",
            "mail.protection.outlook.com only",
            "prod.outlook.com",
            "é [ü.région.prod.outlook.com]",
            "k",
            "outlook.comoutlook.com.prod.outlook.com",
        ] {
            assert_eq!(microsoft_host(r), reference(r), "{r:?}");
        }
        let corpus = corpus_replies();
        assert!(corpus.iter().filter(|r| reference(r).is_some()).count() > 10);
        for r in &corpus {
            assert_eq!(microsoft_host(r), reference(r), "{r:?}");
        }
    }

    #[test]
    fn microsoft_region_from_the_bracketed_host() {
        let r = "451 4.7.500 Server busy. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2026-11-23T10:00:01Z 08DE]";
        assert_eq!(
            microsoft_host(r),
            Some(("BL6PEPF0001AB50.namprd04.prod.outlook.com", "namprd04"))
        );
        let r = "451 4.7.651 ... (S844) [DM6NAM11FT088.eop-nam11.prod.protection.outlook.com 2023-10-28T12:19:31.847Z 08DB]";
        assert_eq!(microsoft_host(r).unwrap().1, "eop-nam11");
        assert_eq!(microsoft_host("451 try later"), None);
    }

    #[test]
    fn providers_from_mx_or_domain_and_the_shipped_file_loads() {
        let p = Providers::builtin();
        assert_eq!(
            p.recognise(
                Some("contoso-com.mail.protection.outlook.com"),
                "contoso.com"
            ),
            "microsoft"
        );
        assert_eq!(p.recognise(None, "hotmail.com"), "microsoft");
        assert_eq!(
            p.recognise(Some("gmail-smtp-in.l.google.com"), "example.org"),
            "google"
        );
        assert_eq!(p.recognise(Some("mx.example.org"), "example.org"), OTHER);
        // MX patterns come from the reply classifier's table, so providers triage has no
        // bands for are still recognised by their MX.
        assert_eq!(
            p.recognise(Some("mx1.comcast.net"), "example.net"),
            mxpace_reply::provider_for_host("mx1.comcast.net").unwrap()
        );
        assert_eq!(
            p.recognise(Some("mx1.comcast.net."), "example.net"),
            "comcast"
        );
        // A user's file may name its own MX suffixes, and they win.
        let custom = Providers::parse(
            "[[provider]]\nname = \"inhouse\"\nmx_suffixes = [\".mail.protection.outlook.com\"]\n",
        )
        .unwrap();
        assert_eq!(
            custom.recognise(Some("contoso-com.mail.protection.outlook.com"), "x.org"),
            "inhouse"
        );
        assert_eq!(basic_code("451 4.7.500 x"), Some(451));
        assert_eq!(basic_code("4510 x"), None);
        assert_eq!(basic_code("connect to x"), None);
    }
}
