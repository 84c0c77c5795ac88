//! Reply rules as data: the TOML shape, the embedded rule files and the small pattern
//! types a rule's conditions use.

use crate::parse::EnhancedCode;
use crate::verdict::{Action, Category, Scope, Stage, Throttle};
use serde::{Deserialize, Serialize};

/// The embedded rule files, in priority order (earlier files win on ties; within a
/// file the first matching rule wins). `rfc3463.toml` holds the fallbacks.
pub const EMBEDDED_RULES: &[(&str, &str)] = &[
    ("microsoft.toml", include_str!("../rules/microsoft.toml")),
    ("google.toml", include_str!("../rules/google.toml")),
    ("yahoo.toml", include_str!("../rules/yahoo.toml")),
    ("others.toml", include_str!("../rules/others.toml")),
    ("generic.toml", include_str!("../rules/generic.toml")),
    ("rfc3463.toml", include_str!("../rules/rfc3463.toml")),
];

/// One rule. All given conditions must hold; absent conditions match anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Unique id, shown as the verdict's `rule`. A user rule with an embedded rule's id
    /// replaces it.
    pub id: String,
    /// Where the meaning comes from: a documentation page or a published real log.
    pub source: String,
    /// Only when the provider (from `--mx`, the wrapper's host or the text) is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Basic codes: `"451"`, `"4xx"`, `"55x"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
    /// Enhanced codes: `"4.7.500"`, `"4.7.500-699"`, `"5.7.*"`, `"*.1.1"`, or `"none"`
    /// (the reply has no enhanced code).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enhanced: Vec<String>,
    /// Only when the reply answered this SMTP stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Every one of these phrases must occur (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<String>,
    /// At least one of these phrases must occur (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<String>,
    /// None of these phrases may occur (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not: Vec<String>,
    /// A fallback rule (RFC 3463 / basic code): the verdict says `fallback: true`.
    #[serde(default)]
    pub fallback: bool,
    /// Defaults from the basic code: 2xx/3xx deliver, 4xx retry, 5xx bounce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    pub category: Category,
    pub scope: Scope,
    #[serde(default)]
    pub throttle: Throttle,
    /// Plain English: what it means and what to do.
    pub advice: String,
}

#[derive(Deserialize)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleDef>,
}

/// A rule file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{file}: {source}")]
    Toml {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{file}: rule {id}: {msg}")]
    Invalid {
        file: String,
        id: String,
        msg: String,
    },
}

/// Parse and validate one rule file.
pub fn parse_rules(file: &str, text: &str) -> Result<Vec<RuleDef>, RulesError> {
    let parsed: RuleFile = toml::from_str(text).map_err(|source| RulesError::Toml {
        file: file.to_owned(),
        source,
    })?;
    for r in &parsed.rule {
        let invalid = |msg: String| RulesError::Invalid {
            file: file.to_owned(),
            id: r.id.clone(),
            msg,
        };
        if r.id.trim().is_empty() {
            return Err(invalid("empty id".into()));
        }
        if r.source.trim().is_empty() {
            return Err(invalid(
                "no source: say where the meaning comes from".into(),
            ));
        }
        for c in &r.codes {
            CodePattern::parse(c).ok_or_else(|| invalid(format!("bad code pattern {c:?}")))?;
        }
        for e in &r.enhanced {
            EnhancedPattern::parse(e)
                .ok_or_else(|| invalid(format!("bad enhanced pattern {e:?}")))?;
        }
        if r.all
            .iter()
            .chain(&r.any)
            .chain(&r.not)
            .any(|p| p.is_empty())
        {
            return Err(invalid("empty phrase".into()));
        }
    }
    Ok(parsed.rule)
}

/// A basic-code pattern: three characters, each a digit or `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodePattern([Option<u8>; 3]);

impl CodePattern {
    /// `"451"`, `"4xx"`, `"55x"`.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 3 {
            return None;
        }
        let mut out = [None; 3];
        for (slot, &c) in out.iter_mut().zip(b) {
            *slot = match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'x' | b'X' => None,
                _ => return None,
            };
        }
        Some(CodePattern(out))
    }

    /// Whether `code` matches.
    pub fn matches(&self, code: u16) -> bool {
        let d = [
            (code / 100) as u8,
            (code / 10 % 10) as u8,
            (code % 10) as u8,
        ];
        self.0.iter().zip(d).all(|(p, c)| p.is_none_or(|p| p == c))
    }
}

/// An enhanced-code pattern: class, subject and a detail range, each optional (`*`);
/// or `none` for "the reply has no enhanced code".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnhancedPattern {
    /// The reply carries no enhanced code.
    Absent,
    /// `class.subject.detail[-max]` with `*` wildcards.
    Code {
        class: Option<u16>,
        subject: Option<u16>,
        detail: Option<(u16, u16)>,
    },
}

impl EnhancedPattern {
    /// `"4.7.500"`, `"4.7.500-699"`, `"5.7.*"`, `"*.1.1"`, `"none"`.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "none" {
            return Some(EnhancedPattern::Absent);
        }
        let mut parts = s.split('.');
        let part = |p: Option<&str>| -> Option<Option<u16>> {
            match p? {
                "*" => Some(None),
                n => n.parse().ok().filter(|&v| v < 1000).map(Some),
            }
        };
        let class = part(parts.next())?;
        let subject = part(parts.next())?;
        let detail = match parts.next()? {
            "*" => None,
            d => match d.split_once('-') {
                Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                None => {
                    let v = d.parse().ok()?;
                    Some((v, v))
                }
            },
        };
        if parts.next().is_some() || class.is_some_and(|c| !matches!(c, 2 | 4 | 5)) {
            return None;
        }
        Some(EnhancedPattern::Code {
            class,
            subject,
            detail,
        })
    }

    /// Whether `e` matches.
    pub fn matches(&self, e: Option<EnhancedCode>) -> bool {
        match (self, e) {
            (EnhancedPattern::Absent, e) => e.is_none(),
            (_, None) => false,
            (
                EnhancedPattern::Code {
                    class,
                    subject,
                    detail,
                },
                Some(e),
            ) => {
                class.is_none_or(|c| c == e.class)
                    && subject.is_none_or(|s| s == e.subject)
                    && detail.is_none_or(|(lo, hi)| (lo..=hi).contains(&e.detail))
            }
        }
    }

    /// The subject this pattern requires, if one; `None` when any subject matches.
    pub fn subject(&self) -> Option<u16> {
        match self {
            EnhancedPattern::Code { subject, .. } => *subject,
            EnhancedPattern::Absent => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match() {
        let p = CodePattern::parse("4xx").unwrap();
        assert!(p.matches(451) && !p.matches(550));
        assert!(CodePattern::parse("45").is_none());
        let e = EnhancedPattern::parse("4.7.500-699").unwrap();
        assert!(e.matches(EnhancedCode::parse("4.7.650")));
        assert!(!e.matches(EnhancedCode::parse("4.7.700")));
        assert!(!e.matches(None));
        let e = EnhancedPattern::parse("*.1.1").unwrap();
        assert!(e.matches(EnhancedCode::parse("5.1.1")) && e.matches(EnhancedCode::parse("4.1.1")));
        assert!(EnhancedPattern::parse("none").unwrap().matches(None));
        assert!(EnhancedPattern::parse("3.1.1").is_none());
        assert!(EnhancedPattern::parse("5.1").is_none());
    }

    #[test]
    fn every_embedded_rule_file_loads_and_cites_sources() {
        let mut ids = std::collections::HashSet::new();
        for (file, text) in EMBEDDED_RULES {
            let rules = parse_rules(file, text).unwrap_or_else(|e| panic!("{e}"));
            assert!(!rules.is_empty(), "{file} is empty");
            for r in rules {
                assert!(ids.insert(r.id.clone()), "duplicate rule id {}", r.id);
                assert!(r.source.len() > 10, "{}: source too thin", r.id);
                assert!(r.advice.len() > 20, "{}: advice too thin", r.id);
            }
        }
    }

    #[test]
    fn rules_without_source_are_refused() {
        let bad = "[[rule]]\nid = \"x\"\nsource = \"\"\ncategory = \"other\"\nscope = \"session\"\nadvice = \"a\"\n";
        assert!(matches!(
            parse_rules("u.toml", bad),
            Err(RulesError::Invalid { .. })
        ));
        let bad = "[[rule]]\nid = \"x\"\nsource = \"s\"\ncodes = [\"4x\"]\ncategory = \"other\"\nscope = \"session\"\nadvice = \"a\"\n";
        assert!(parse_rules("u.toml", bad).is_err());
        assert!(parse_rules("u.toml", "[[rule]]\nid = 3").is_err());
    }
}
