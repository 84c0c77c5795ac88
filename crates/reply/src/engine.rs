//! The classifier: rules compiled into one Aho-Corasick automaton (every phrase of
//! every rule plus the provider markers) and an index by (basic code, enhanced
//! subject). A reply costs one pass over its text to learn which phrases occur, then
//! a walk over the few rules indexed under its code — never every rule in turn.

use crate::extract::extract;
use crate::parse::{self, EnhancedCode, NotAReply, Reply};
use crate::provider::{self, ProviderDef};
use crate::rules::{self, CodePattern, EnhancedPattern, RuleDef, RulesError};
use crate::verdict::{Action, Category, Scope, Throttle, Verdict};
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use std::collections::HashMap;

/// Buckets per code: enhanced subjects 0–7, "other subject", "no enhanced code".
const BUCKETS: usize = 10;
const NO_ENHANCED: usize = 9;
const CODES: usize = 400; // 200..=599

struct Compiled {
    def: RuleDef,
    codes: Vec<CodePattern>,
    enhanced: Vec<EnhancedPattern>,
    provider: Option<u16>,
    all: Vec<u32>,
    any: Vec<u32>,
    not: Vec<u32>,
}

/// A ready-to-use classifier. [`crate::explain`] uses the embedded one; build your
/// own with [`Engine::with_user_rules`] to override or extend the rules.
pub struct Engine {
    rules: Vec<Compiled>,
    providers: Vec<ProviderDef>,
    /// Phrases and markers, lower-cased, deduplicated; the automaton's pattern ids.
    phrases: AhoCorasick,
    phrase_count: usize,
    /// For each phrase id, the provider it marks (if it is a marker).
    marker_of: Vec<Option<u16>>,
    /// `index[(code - 200) * BUCKETS + bucket]` = rule indices in priority order.
    index: Vec<Vec<u32>>,
}

impl Engine {
    /// The embedded rules and providers.
    pub fn embedded() -> Result<Self, RulesError> {
        Self::build(Vec::new())
    }

    /// The embedded rules with a user's rule file on top: a user rule with an embedded
    /// rule's id replaces it, and user rules are tried before embedded ones.
    pub fn with_user_rules(file: &str, text: &str) -> Result<Self, RulesError> {
        Self::build(rules::parse_rules(file, text)?)
    }

    fn build(user: Vec<RuleDef>) -> Result<Self, RulesError> {
        let mut defs: Vec<RuleDef> = user;
        let mut fallbacks = Vec::new();
        for (file, text) in rules::EMBEDDED_RULES {
            for r in rules::parse_rules(file, text)? {
                if defs.iter().any(|u| u.id == r.id) {
                    continue;
                }
                if r.fallback {
                    fallbacks.push(r);
                } else {
                    defs.push(r);
                }
            }
        }
        // User fallbacks stay in user order ahead of embedded ones only among fallbacks.
        let (user_fb, specific): (Vec<_>, Vec<_>) = defs.into_iter().partition(|r| r.fallback);
        let defs: Vec<RuleDef> = specific
            .into_iter()
            .chain(user_fb)
            .chain(fallbacks)
            .collect();

        let providers = provider::PROVIDERS.clone();
        let mut phrase_ids: HashMap<String, u32> = HashMap::new();
        let mut phrases: Vec<String> = Vec::new();
        let mut marker_of: Vec<Option<u16>> = Vec::new();
        let mut intern = |p: &str, marker: Option<u16>| -> u32 {
            let key = p.to_ascii_lowercase();
            let id = *phrase_ids.entry(key.clone()).or_insert_with(|| {
                phrases.push(key);
                marker_of.push(None);
                (phrases.len() - 1) as u32
            });
            if marker.is_some() && marker_of[id as usize].is_none() {
                marker_of[id as usize] = marker;
            }
            id
        };
        for (pi, p) in providers.iter().enumerate() {
            for m in &p.markers {
                intern(m, Some(pi as u16));
            }
        }
        let mut rules = Vec::with_capacity(defs.len());
        for def in defs {
            let invalid = |msg: String| RulesError::Invalid {
                file: "rules".into(),
                id: def.id.clone(),
                msg,
            };
            let provider = match &def.provider {
                None => None,
                Some(name) => Some(
                    providers
                        .iter()
                        .position(|p| &p.name == name)
                        .ok_or_else(|| invalid(format!("unknown provider {name:?}")))?
                        as u16,
                ),
            };
            let codes = def
                .codes
                .iter()
                .filter_map(|c| CodePattern::parse(c))
                .collect();
            let enhanced = def
                .enhanced
                .iter()
                .filter_map(|e| EnhancedPattern::parse(e))
                .collect();
            let all = def.all.iter().map(|p| intern(p, None)).collect();
            let any = def.any.iter().map(|p| intern(p, None)).collect();
            let not = def.not.iter().map(|p| intern(p, None)).collect();
            rules.push(Compiled {
                def,
                codes,
                enhanced,
                provider,
                all,
                any,
                not,
            });
        }
        let phrase_count = phrases.len();
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&phrases)
            .map_err(|e| RulesError::Invalid {
                file: "rules".into(),
                id: "*".into(),
                msg: format!("phrase automaton: {e}"),
            })?;
        let mut index = vec![Vec::new(); CODES * BUCKETS];
        for (ri, r) in rules.iter().enumerate() {
            for code in 200u16..600 {
                if !r.codes.is_empty() && !r.codes.iter().any(|c| c.matches(code)) {
                    continue;
                }
                for bucket in 0..BUCKETS {
                    if rule_may_match_bucket(r, bucket) {
                        index[usize::from(code - 200) * BUCKETS + bucket].push(ri as u32);
                    }
                }
            }
        }
        Ok(Engine {
            rules,
            providers,
            phrases: automaton,
            phrase_count,
            marker_of,
            index,
        })
    }

    /// The rules in priority order (for `--list-rules`).
    pub fn rules(&self) -> impl Iterator<Item = &RuleDef> {
        self.rules.iter().map(|r| &r.def)
    }

    /// Parse and classify one reply; see [`crate::explain`].
    pub fn explain(&self, input: &str, mx: Option<&str>) -> Verdict {
        match parse::parse(input) {
            Ok(reply) => self.classify(&reply, mx),
            Err(e) => not_a_reply(input, e),
        }
    }

    /// Classify an already parsed reply.
    pub fn classify(&self, reply: &Reply, mx: Option<&str>) -> Verdict {
        let seen = self.phrases_in(&reply.text);
        let facts = extract(&reply.text);
        let provider = self.provider(reply, mx, facts.host.as_deref(), &seen);
        let bucket = bucket_of(reply.enhanced);
        let candidates = &self.index[usize::from(reply.code - 200) * BUCKETS + bucket];
        let winner = candidates
            .iter()
            .map(|&ri| &self.rules[ri as usize])
            .find(|r| self.rule_matches(r, reply, provider, &seen));
        let default_action = match reply.code {
            200..=399 => Action::Deliver,
            400..=499 => Action::Retry,
            _ => Action::Bounce,
        };
        let mut v = Verdict {
            code: Some(reply.code),
            enhanced: reply.enhanced.map(|e| e.to_string()),
            enhanced_agrees: reply.enhanced_agrees(),
            stage: reply.stage,
            action: default_action,
            provider: provider
                .map_or("unknown", |p| self.providers[usize::from(p)].name.as_str())
                .to_owned(),
            tokens: facts.tokens,
            ips: facts.ips,
            host: facts.host,
            host_time: facts.host_time,
            urls: facts.urls,
            text: reply.text.clone(),
            ..Verdict::default()
        };
        match winner {
            Some(r) => {
                v.action = r.def.action.unwrap_or(default_action);
                v.category = r.def.category;
                v.scope = r.def.scope;
                v.throttle = r.def.throttle;
                v.advice.clone_from(&r.def.advice);
                v.rule.clone_from(&r.def.id);
                v.fallback = r.def.fallback;
            }
            None => basic_code_verdict(&mut v, reply.code),
        }
        if v.action == Action::Deliver {
            v.throttle = Throttle::None;
        }
        v
    }

    /// One pass of the automaton: which phrases occur in `text`.
    fn phrases_in(&self, text: &str) -> Vec<u64> {
        let mut seen = vec![0u64; self.phrase_count.div_ceil(64).max(1)];
        for m in self.phrases.find_overlapping_iter(text) {
            let id = m.pattern().as_usize();
            seen[id / 64] |= 1 << (id % 64);
        }
        seen
    }

    /// The provider: from `--mx`, else the wrapper's remote host, else the host the
    /// reply names in its trailer, else text markers.
    fn provider(
        &self,
        reply: &Reply,
        mx: Option<&str>,
        named_host: Option<&str>,
        seen: &[u64],
    ) -> Option<u16> {
        let by_host = |h: &str| provider::host_match(&self.providers, h).map(|i| i as u16);
        for host in [mx, reply.remote_host.as_deref(), named_host] {
            if let Some(p) = host.and_then(by_host) {
                return Some(p);
            }
        }
        // The first provider (file order) with a marker present.
        let mut best: Option<u16> = None;
        for (id, m) in self.marker_of.iter().enumerate() {
            if let Some(p) = m
                && has(seen, id as u32)
                && best.is_none_or(|b| *p < b)
            {
                best = Some(*p);
            }
        }
        best
    }

    fn rule_matches(
        &self,
        r: &Compiled,
        reply: &Reply,
        provider: Option<u16>,
        seen: &[u64],
    ) -> bool {
        (r.provider.is_none() || r.provider == provider)
            && (r.enhanced.is_empty() || r.enhanced.iter().any(|e| e.matches(reply.enhanced)))
            && r.def.stage.is_none_or(|s| reply.stage == Some(s))
            && r.all.iter().all(|&id| has(seen, id))
            && (r.any.is_empty() || r.any.iter().any(|&id| has(seen, id)))
            && !r.not.iter().any(|&id| has(seen, id))
    }
}

fn has(seen: &[u64], id: u32) -> bool {
    seen[id as usize / 64] & (1 << (id % 64)) != 0
}

fn bucket_of(e: Option<EnhancedCode>) -> usize {
    match e {
        None => NO_ENHANCED,
        Some(e) if e.subject <= 7 => usize::from(e.subject),
        Some(_) => 8,
    }
}

fn rule_may_match_bucket(r: &Compiled, bucket: usize) -> bool {
    if r.enhanced.is_empty() {
        return true;
    }
    r.enhanced.iter().any(|e| match (e, bucket) {
        (EnhancedPattern::Absent, b) => b == NO_ENHANCED,
        (_, NO_ENHANCED) => false,
        (p, b) => match p.subject() {
            None => true,
            Some(s) if s <= 7 => usize::from(s) == b,
            Some(_) => b == 8,
        },
    })
}

/// No rule at all matched: decide on the basic code alone (RFC 5321 §4.2.1).
fn basic_code_verdict(v: &mut Verdict, code: u16) {
    v.fallback = true;
    v.rule = "basic-code".into();
    v.category = Category::Other;
    v.scope = Scope::Session;
    v.throttle = Throttle::None;
    v.advice = match code {
        200..=399 => "Accepted (or continue): nothing to do.".into(),
        400..=499 => "Temporary failure with no recognised cause: keep the mail queued and retry with backoff. Only the basic code decided; read the text.".into(),
        _ => "Permanent failure with no recognised cause: do not retry this message as is; a bounce goes back to the sender. Only the basic code decided; read the text.".into(),
    };
}

fn not_a_reply(input: &str, e: NotAReply) -> Verdict {
    let mut text: String = input.trim().chars().take(200).collect();
    text.retain(|c| !c.is_control() || c == ' ');
    Verdict {
        not_a_reply: true,
        fallback: true,
        rule: "not-a-reply".into(),
        provider: "unknown".into(),
        advice: format!(
            "Not an SMTP reply ({e}): nothing to classify. Paste the server's reply (a line starting with a 2xx-5xx code) or the log line that contains it."
        ),
        text,
        ..Verdict::default()
    }
}
