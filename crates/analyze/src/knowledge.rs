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
/// The replies of the reply classifier's corpus (288 real-form replies).
pub(crate) fn corpus_replies() -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Corpus {
        case: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        reply: String,
    }
    let corpus: Corpus = toml::from_str(include_str!("../../reply/corpus/replies.toml")).unwrap();
    corpus.case.into_iter().map(|c| c.reply).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
