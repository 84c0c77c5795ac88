//! Provider recognition from the receiving MX host name and from markers in reply
//! text. The knowledge lives in `rules/providers.toml` (embedded).

use serde::Deserialize;
use std::sync::LazyLock;

/// The embedded provider table.
pub const PROVIDERS_TOML: &str = include_str!("../rules/providers.toml");

/// One provider: its name, MX host patterns and text markers.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDef {
    /// Stable short name (`microsoft`, `google`, …) used in verdicts and paths.
    pub name: String,
    /// Where the patterns come from.
    pub source: String,
    /// MX host patterns: `*.suffix` or an exact host name.
    #[serde(default)]
    pub mx: Vec<String>,
    /// Case-insensitive literal phrases that identify the provider in reply text.
    #[serde(default)]
    pub markers: Vec<String>,
}

#[derive(Deserialize)]
struct ProviderFile {
    provider: Vec<ProviderDef>,
}

/// Parse a providers file (the embedded one, or a user's).
pub fn parse_providers(text: &str) -> Result<Vec<ProviderDef>, toml::de::Error> {
    Ok(toml::from_str::<ProviderFile>(text)?.provider)
}

/// The embedded providers, parsed once.
pub static PROVIDERS: LazyLock<Vec<ProviderDef>> = LazyLock::new(|| {
    parse_providers(PROVIDERS_TOML).expect("embedded providers.toml is valid (tested)")
});

/// The provider a receiving MX host belongs to, e.g.
/// `contoso-com.mail.protection.outlook.com` → `microsoft`. Case-insensitive; a
/// trailing dot is ignored.
pub fn provider_for_host(host: &str) -> Option<&'static str> {
    static INDEX: LazyLock<HostIndex> = LazyLock::new(|| HostIndex::new(&PROVIDERS));
    INDEX.find(host).map(|i| PROVIDERS[i].name.as_str())
}

/// The providers' MX patterns, ready for [`HostIndex::find`]: the same answer as
/// [`host_match`], but each pattern is first checked by its last (up to) sixteen
/// bytes (one 128-bit compare), so a host costs a few instructions per pattern, not a
/// byte-by-byte comparison each. Sixteen, not four: most patterns end in `.com`, and
/// Microsoft's four `outlook.com` patterns share their last eight bytes.
pub(crate) struct HostIndex {
    patterns: Vec<HostPattern>,
    /// The bytes every pattern has: hosts shorter than this match none.
    shortest: usize,
    /// At [`HostIndex::bucket`] of a host, the indexes (in `patterns`, ascending, so
    /// in priority order) of the patterns that may match it: only those are compared,
    /// not all ~50 (most end in `.com`, so the bucket also takes the byte `shortest`
    /// bytes from the end).
    buckets: Vec<Vec<u16>>,
}

/// Buckets of [`HostIndex::buckets`].
const HOST_BUCKETS: usize = 64;

struct HostPattern {
    /// The pattern's last (up to) sixteen bytes, each `| 0x20`, little-endian.
    tail: u128,
    /// Which bytes of `tail` are used (patterns shorter than sixteen bytes).
    mask: u128,
    /// `*.suffix` → `suffix`; an exact host → the host.
    text: Box<str>,
    suffix: bool,
    provider: usize,
    /// At most sixteen bytes, all ASCII letters, digits, `.` or `-`: equal tails
    /// then mean equal ignoring ASCII case unless the host has a byte below 0x20
    /// there (`| 0x20` maps 0x0d–0x19 onto `-`, `.`, digits), so no byte-wise
    /// comparison is needed (it cost ~190 instructions for `outlook.com`). Longer
    /// patterns are compared byte by byte (doing only the bytes before the tail so
    /// measured 17 instructions per reply worse on the corpus).
    plain: bool,
}

/// Every byte `0x20`, as a word of sixteen.
const SPACES: u128 = 0x2020_2020_2020_2020_2020_2020_2020_2020;

/// Whether one of the bytes of `raw` that `mask` selects is below 0x20 (exact: see
/// `parse::has_byte_below_space`, the same borrow argument on sixteen bytes).
fn has_byte_below_space(raw: u128, mask: u128) -> bool {
    let x = (raw & mask) | (!mask & (SPACES << 1)); // unused bytes: `@`
    x.wrapping_sub(SPACES) & !x & (SPACES << 2) != 0
}

/// The last (up to) sixteen bytes of `b`, each `| 0x20` (ASCII upper → lower case;
/// digits, `.` and `-` unchanged), at the end of a little-endian word (so the last
/// bytes of a host and of a shorter pattern line up), and the mask of the bytes
/// used. Equal-ignoring-ASCII-case strings have equal tails, so unequal tails rule a
/// pattern out; equal tails are confirmed by the exact comparison.
fn tail_of(b: &[u8]) -> (u128, u128) {
    let n = b.len().min(16);
    let mut word = [0u8; 16];
    word[16 - n..].copy_from_slice(&b[b.len() - n..]);
    let mask = if n == 0 {
        0
    } else {
        u128::MAX << (8 * (16 - n))
    };
    (
        u128::from_le_bytes(word) | (0x2020_2020_2020_2020_2020_2020_2020_2020 & mask),
        mask,
    )
}

/// The last (up to) sixteen bytes of `b` as they are, placed as [`tail_of`] places them.
fn tail_of_raw(b: &[u8]) -> u128 {
    match b.last_chunk::<16>() {
        Some(last) => u128::from_le_bytes(*last),
        None => {
            let mut word = [0u8; 16];
            word[16 - b.len()..].copy_from_slice(b);
            u128::from_le_bytes(word)
        }
    }
}

impl HostIndex {
    pub(crate) fn new(defs: &[ProviderDef]) -> Self {
        let mut patterns = Vec::new();
        for (provider, d) in defs.iter().enumerate() {
            for pat in &d.mx {
                let (text, suffix) = match pat.strip_prefix("*.") {
                    Some(s) => (s, true),
                    None => (pat.as_str(), false),
                };
                let (tail, mask) = tail_of(text.as_bytes());
                let plain = text.len() <= 16
                    && text
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
                patterns.push(HostPattern {
                    tail,
                    mask,
                    text: text.into(),
                    suffix,
                    provider,
                    plain,
                });
            }
        }
        // An empty pattern (`*.`) matches no host (hosts are non-empty, trailing dots
        // trimmed), so it joins no bucket.
        let shortest = patterns
            .iter()
            .map(|p| p.text.len())
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(1);
        let mut buckets = vec![Vec::new(); HOST_BUCKETS];
        for (i, p) in patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.text.is_empty())
        {
            buckets[Self::bucket(p.text.as_bytes(), shortest)].push(i as u16);
        }
        HostIndex {
            patterns,
            shortest,
            buckets,
        }
    }

    /// The bucket of a host or pattern of at least `shortest` bytes: from its last byte
    /// and the byte `shortest` from the end, each `| 0x20` — equal for a host and any
    /// pattern it ends with (or equals), ignoring ASCII case.
    fn bucket(b: &[u8], shortest: usize) -> usize {
        let last = usize::from(b[b.len() - 1] | 0x20);
        let inner = usize::from(b[b.len() - shortest] | 0x20);
        (last ^ inner.wrapping_mul(7)) % HOST_BUCKETS
    }

    /// Index of the first provider whose MX patterns match `host` (as [`host_match`]).
    pub(crate) fn find(&self, host: &str) -> Option<usize> {
        // Host names from the wrappers and host blocks are already trimmed: only
        // look for whitespace when an end byte could be some.
        let b = host.as_bytes();
        let host = match (b.first(), b.last()) {
            (Some(&f), Some(&l)) if f > b' ' && f < 0x80 && l > b' ' && l < 0x80 => host,
            _ => host.trim(),
        };
        let host = host.trim_end_matches('.');
        if host.is_empty() || host.len() > 253 {
            return None;
        }
        let h = host.as_bytes();
        if h.len() < self.shortest {
            return None;
        }
        let (tail, used) = tail_of(h);
        self.buckets[Self::bucket(h, self.shortest)]
            .iter()
            .find_map(|&i| {
                let p = &self.patterns[usize::from(i)];
                if tail & p.mask != p.tail {
                    return None;
                }
                let s = p.text.as_bytes();
                // The host's own bytes: `tail` with the `| 0x20` undone is not them,
                // so take them again (only for a pattern whose tail matched).
                let same = |part: &[u8]| {
                    if p.plain {
                        !has_byte_below_space(tail_of_raw(h), p.mask & used)
                    } else {
                        part.eq_ignore_ascii_case(s)
                    }
                };
                let hit = if p.suffix {
                    h.len() >= s.len()
                        && same(&h[h.len() - s.len()..])
                        && (h.len() == s.len() || h[h.len() - s.len() - 1] == b'.')
                } else {
                    h.len() == s.len() && same(h)
                };
                hit.then_some(p.provider)
            })
    }
}

/// Index of the first provider in `defs` whose MX patterns match `host` (the
/// reference for [`HostIndex::find`]).
#[cfg(test)]
pub(crate) fn host_match(defs: &[ProviderDef], host: &str) -> Option<usize> {
    let host = host.trim().trim_end_matches('.');
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let h = host.as_bytes();
    defs.iter().position(|d| {
        d.mx.iter().any(|pat| match pat.strip_prefix("*.") {
            // Bytes, not str slices: the host may be arbitrary (non-ASCII) text.
            Some(suffix) => {
                let s = suffix.as_bytes();
                h.len() >= s.len()
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
                    && (h.len() == s.len() || h[h.len() - s.len() - 1] == b'.')
            }
            None => host.eq_ignore_ascii_case(pat),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_hosts_map_to_providers() {
        let cases = [
            ("contoso-com.mail.protection.outlook.com", "microsoft"),
            ("contoso-com.a-v1.mx.microsoft", "microsoft"),
            ("hotmail-com.olc.protection.outlook.com.", "microsoft"),
            ("ASPMX.L.GOOGLE.COM", "google"),
            ("alt1.gmail-smtp-in.l.google.com", "google"),
            ("mta5.am0.yahoodns.net", "yahoo"),
            ("mx-aol.mail.gm0.yahoodns.net", "yahoo"),
            ("mx01.mail.icloud.com", "apple"),
            ("mx1a1.comcast.net", "comcast"),
            ("mx00.emig.gmx.net", "gmx"),
            ("mx-ha03.web.de", "gmx"),
            ("smtp-in.orange.fr", "orange"),
            ("mxs.mail.ru", "mailru"),
            ("mx0a-001b2d01.pphosted.com", "proofpoint"),
            ("eu-smtp-inbound-1.mimecast.com", "mimecast"),
            ("d12345a.ess.barracudanetworks.com", "barracuda"),
        ];
        for (host, want) in cases {
            assert_eq!(provider_for_host(host), Some(want), "{host}");
        }
    }

    #[test]
    fn suffixes_match_on_label_boundaries_only() {
        assert_eq!(provider_for_host("evilgoogle.com"), None);
        assert_eq!(provider_for_host("google.com.evil.example"), None);
        assert_eq!(provider_for_host("mx.example.org"), None);
        assert_eq!(provider_for_host(""), None);
        assert_eq!(provider_for_host("ü.google.com"), Some("google"));
        assert_eq!(provider_for_host("éé"), None);
    }

    #[test]
    fn the_index_agrees_with_the_reference() {
        let index = HostIndex::new(&PROVIDERS);
        let mut hosts: Vec<String> = Vec::new();
        for p in PROVIDERS.iter() {
            for pat in &p.mx {
                let bare = pat.trim_start_matches("*.");
                for h in [
                    bare.to_owned(),
                    format!("mx1.{bare}"),
                    format!("MX1.{}", bare.to_ascii_uppercase()),
                    format!("x{bare}"),
                    format!("{bare}."),
                    bare[1..].to_owned(),
                    format!("{bare}x"),
                ] {
                    hosts.push(h);
                }
            }
        }
        hosts.extend(
            [
                "",
                ".",
                "a",
                "ab",
                "m",
                "com",
                "mx.example.org",
                "ü.google.com",
                "éé",
            ]
            .map(String::from),
        );
        for h in &hosts {
            assert_eq!(index.find(h), host_match(&PROVIDERS, h), "{h:?}");
        }
    }

    #[test]
    fn the_index_agrees_with_the_reference_for_odd_patterns() {
        // An empty suffix, a one-byte pattern, an exact host, case and non-letters.
        let defs = parse_providers(
            r#"
[[provider]]
name = "a"
source = "test patterns written for this test"
mx = ["*.", "*.x", "Mx-1.Example.@"]
[[provider]]
name = "b"
source = "test patterns written for this test"
mx = ["*.`", "*.b.x", "mx.example.org"]
"#,
        )
        .unwrap();
        let index = HostIndex::new(&defs);
        for h in [
            "",
            ".",
            "x",
            "X",
            "a.x",
            "a.b.x",
            "b.x",
            "mx-1.example.@",
            "MX-1.EXAMPLE.`",
            "a.`",
            "a.@",
            "mx.example.org",
            "MX.EXAMPLE.ORG.",
            "ax",
            "é.x",
        ] {
            assert_eq!(index.find(h), host_match(&defs, h), "{h:?}");
        }
    }

    proptest::proptest! {
        /// Hosts built from the embedded patterns' pieces with case changes and the
        /// bytes `| 0x20` confuses with `.`, `-` and digits (0x0d–0x19).
        #[test]
        fn the_index_agrees_with_the_reference_on_near_misses(
            h in "([a-zA-Z0-9.-]|\x0d|\x0e|\x10|\x19|é|outlook|OUTLOOK|google|yahoodns|com|net|mail|protection|mx){0,12}",
        ) {
            let index = HostIndex::new(&PROVIDERS);
            proptest::prop_assert_eq!(index.find(&h), host_match(&PROVIDERS, &h), "{:?}", h);
        }
    }

    #[test]
    fn control_bytes_that_fold_onto_host_bytes_do_not_match() {
        let index = HostIndex::new(&PROVIDERS);
        let cases = [
            ("mx.outlook\x0ecom", None),
            ("mx.outlook.com", Some("microsoft")),
            ("a.go\x0fgle.com", None),
            ("x.mail\x0dru", None),
            ("x.mail.ru", Some("mailru")),
            ("x.\x0e\x0emx.microsoft", None),
            ("mx.gmx\x0enet", None),
            ("X.OUTLOOK.COM", Some("microsoft")),
        ];
        for (h, want) in cases {
            let got = index.find(h).map(|i| PROVIDERS[i].name.as_str());
            assert_eq!(got, want, "{h:?}");
            assert_eq!(index.find(h), host_match(&PROVIDERS, h), "{h:?}");
        }
    }

    #[test]
    fn every_provider_cites_a_source() {
        for p in PROVIDERS.iter() {
            assert!(p.source.len() > 20, "{} lacks a source", p.name);
            assert!(!p.mx.is_empty(), "{} has no MX patterns", p.name);
        }
    }
}
