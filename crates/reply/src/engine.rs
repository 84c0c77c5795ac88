//! The classifier: rules compiled into one Aho-Corasick automaton (every phrase of
//! every rule plus the provider markers). A reply costs one pass of the automaton over
//! its text; the phrases found select the candidate rules that need phrases, and an
//! index by (basic code, enhanced subject) selects the candidates that need none. The
//! candidates (a bitset) are masked by basic code and provider a word at a time; only
//! the survivors' other conditions are checked, in priority order — never every rule
//! in turn.
//!
//! [`Engine::classify`] does all of this without allocating for a single-line reply
//! and returns a [`Classified`] borrowing from the input and the rules;
//! [`Engine::explain`] adds the facts named in the text and builds the owned
//! [`Verdict`].

use crate::extract::{extract, named_host};
use crate::parse::{self, EnhancedCode, NotAReply, Parsed, Reply};
use crate::phrases::PhraseDfa;
use crate::provider::{self, HostIndex, ProviderDef};
use crate::rules::{self, CodePattern, EnhancedPattern, RuleDef, RulesError};
use crate::verdict::{Action, Category, Scope, Throttle, Verdict};
use std::borrow::Cow;
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
    /// The providers' MX patterns, for the provider of a host.
    hosts: HostIndex,
    /// Phrases and markers, lower-cased, deduplicated; the automaton's pattern ids.
    /// A dense DFA: one table lookup per byte of a reply's text.
    phrases: PhraseDfa,
    phrase_count: usize,
    /// Bitsets of `rule_words` words each: at `((code - 200) * BUCKETS + bucket)`, the
    /// rules without phrase conditions that may match there.
    index: Vec<u64>,
    /// Words in a bitset over the rules.
    rule_words: usize,
    /// Bitsets of `rule_words` words: at `code - 200`, the rules that accept this
    /// basic code; candidates are masked with it before any rule is looked at.
    rules_of_code: Vec<u64>,
    /// Bitsets of `rule_words` words: at `p`, the rules that hold for provider `p`
    /// (no provider condition, or this one); the last bitset is for "unknown".
    rules_of_provider: Vec<u64>,
    /// Bitsets of `rule_words` words: at [`detail_bucket`] of the reply's enhanced
    /// code, the rules whose enhanced-code patterns may match a code in that bucket
    /// (all rules without such patterns). Most phrase-less rules name one exact
    /// code (`5.7.606`); without this mask every rule of the reply's code and
    /// subject was tried in turn.
    rules_of_detail: Vec<u64>,
    /// What reaching each match state of `phrases` records (see [`MatchEffects`]).
    effects: MatchEffects,
}

/// For each match state of the phrase automaton, in one flat array (no pointer to
/// follow per match): the provider its phrases mark first, the phrases that end
/// there and the rules whose `all`/`any` name one of them. Precomputed so that a
/// match costs one offset load and a run of bit sets.
struct MatchEffects {
    /// `offsets[s]..offsets[s + 1]` is state `s`'s entry in `data`.
    offsets: Box<[u32]>,
    /// Per state: `[marker or NO_MARKER, phrase count, phrase ids…, rule ids…]`.
    data: Box<[u32]>,
}

const NO_MARKER: u32 = u32::MAX;

impl MatchEffects {
    fn new(dfa: &PhraseDfa, rules_of_phrase: &[Vec<u32>], marker_of: &[Option<u16>]) -> Self {
        let mut offsets = vec![0u32];
        let mut data = Vec::new();
        for state in 0..dfa.match_states() {
            let ids = dfa.phrases_of(state);
            let marker = ids.iter().filter_map(|&id| marker_of[id as usize]).min();
            let mut rules: Vec<u32> = ids
                .iter()
                .flat_map(|&id| rules_of_phrase[id as usize].iter().copied())
                .collect();
            rules.sort_unstable();
            rules.dedup();
            data.push(marker.map_or(NO_MARKER, u32::from));
            data.push(ids.len() as u32);
            data.extend_from_slice(ids);
            data.extend(rules);
            offsets.push(data.len() as u32);
        }
        MatchEffects {
            offsets: offsets.into(),
            data: data.into(),
        }
    }
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
        // Every phrase ending at a position is reported there (overlapping), which is
        // what "all/any/not of these phrases" needs.
        let automaton = PhraseDfa::new(&phrases).map_err(|e| RulesError::Invalid {
            file: "rules".into(),
            id: "*".into(),
            msg: format!("phrase automaton: {e}"),
        })?;
        let rule_words = rules.len().div_ceil(64).max(1);
        let mut index = vec![0u64; CODES * BUCKETS * rule_words];
        let mut rules_of_code = vec![0u64; CODES * rule_words];
        let mut rules_of_provider = vec![0u64; (providers.len() + 1) * rule_words];
        let mut rules_of_detail = vec![0u64; DETAIL_BUCKETS * rule_words];
        for (ri, r) in rules.iter().enumerate() {
            for code in 200u16..600 {
                if r.codes.is_empty() || r.codes.iter().any(|c| c.matches(code)) {
                    let at = usize::from(code - 200) * rule_words;
                    set(&mut rules_of_code[at..at + rule_words], ri as u32);
                }
            }
            for p in 0..=providers.len() {
                if r.provider.is_none_or(|rp| usize::from(rp) == p) {
                    let at = p * rule_words;
                    set(&mut rules_of_provider[at..at + rule_words], ri as u32);
                }
            }
            for bucket in 0..DETAIL_BUCKETS {
                if rule_may_match_detail_bucket(r, bucket) {
                    let at = bucket * rule_words;
                    set(&mut rules_of_detail[at..at + rule_words], ri as u32);
                }
            }
        }
        let mut rules_of_phrase = vec![Vec::new(); phrase_count];
        for (ri, r) in rules.iter().enumerate() {
            if !r.all.is_empty() || !r.any.is_empty() {
                for &id in r.all.iter().chain(&r.any) {
                    let list: &mut Vec<u32> = &mut rules_of_phrase[id as usize];
                    if list.last() != Some(&(ri as u32)) {
                        list.push(ri as u32);
                    }
                }
                continue;
            }
            for code in 200u16..600 {
                if !r.codes.is_empty() && !r.codes.iter().any(|c| c.matches(code)) {
                    continue;
                }
                for bucket in 0..BUCKETS {
                    if rule_may_match_bucket(r, bucket) {
                        let at = (usize::from(code - 200) * BUCKETS + bucket) * rule_words;
                        set(&mut index[at..at + rule_words], ri as u32);
                    }
                }
            }
        }
        let effects = MatchEffects::new(&automaton, &rules_of_phrase, &marker_of);
        Ok(Engine {
            hosts: HostIndex::new(&providers),
            rules,
            providers,
            phrases: automaton,
            phrase_count,
            index,
            rule_words,
            rules_of_code,
            rules_of_provider,
            rules_of_detail,
            effects,
        })
    }

    /// Bytes used by the phrase automaton (for benchmarks and diagnostics).
    pub fn automaton_bytes(&self) -> usize {
        self.phrases.memory_usage()
    }

    /// The rules in priority order (for `--list-rules`).
    pub fn rules(&self) -> impl Iterator<Item = &RuleDef> {
        self.rules.iter().map(|r| &r.def)
    }

    /// Parse and classify one reply; see [`crate::explain`]. Built on
    /// [`Engine::classify`], plus the facts named in the text and owned fields.
    pub fn explain(&self, input: &str, mx: Option<&str>) -> Verdict {
        self.classify(input, mx).into_verdict()
    }

    /// Parse and classify one reply without allocating (for a single-line reply):
    /// code, enhanced code, stage, the rule chosen and every classification field,
    /// borrowed from `input` and from the rules. Facts named in the text (tokens, IPs,
    /// URLs, the host block) are left for [`Classified::into_verdict`] or
    /// [`crate::extract`].
    pub fn classify<'a>(&'a self, input: &'a str, mx: Option<&'a str>) -> Classified<'a> {
        match parse::parse_borrowed(input) {
            Ok(reply) => self.classify_parsed(reply, mx, input),
            Err(e) => Classified::not_a_reply(input, e),
        }
    }

    /// Classify an already parsed reply into an owned verdict.
    pub fn classify_reply(&self, reply: &Reply, mx: Option<&str>) -> Verdict {
        let parsed = Parsed {
            code: reply.code,
            enhanced: reply.enhanced,
            raw: &reply.raw,
            text: Cow::Borrowed(&reply.text),
            stage: reply.stage,
            wrapper: reply.wrapper,
            remote_host: reply.remote_host.as_deref(),
            remote_ip: reply.remote_ip,
        };
        self.classify_parsed(parsed, mx, &reply.raw).into_verdict()
    }

    fn classify_parsed<'a>(
        &'a self,
        reply: Parsed<'a>,
        mx: Option<&'a str>,
        input: &'a str,
    ) -> Classified<'a> {
        // Bitsets on the stack (heap only for rule sets far larger than the embedded one):
        // phrases seen in the text, and candidate rules, whose set bits in ascending
        // order are the candidates in priority order.
        let (mut seen_buf, mut cand_buf) = ([0u64; STACK_WORDS], [0u64; STACK_WORDS]);
        let (mut seen_heap, mut cand_heap) = (Vec::new(), Vec::new());
        let seen = bitset(&mut seen_buf, &mut seen_heap, self.phrase_count);
        let candidates = bitset(&mut cand_buf, &mut cand_heap, self.rules.len());
        let marked = self.phrases_in(&reply.text, seen, candidates);
        let provider = self.provider(&reply, mx, marked);
        let bucket = bucket_of(reply.enhanced);
        let at = (usize::from(reply.code - 200) * BUCKETS + bucket) * self.rule_words;
        for (word, rules) in candidates.iter_mut().zip(&self.index[at..]) {
            *word |= rules;
        }
        let winner = self.first_match(candidates, &reply, provider, seen);
        let default_action = match reply.code {
            200..=399 => Action::Deliver,
            400..=499 => Action::Retry,
            _ => Action::Bounce,
        };
        let provider = provider.map_or("unknown", |p| self.providers[usize::from(p)].name.as_str());
        let mut c = match winner {
            Some(r) => Classified {
                action: r.def.action.unwrap_or(default_action),
                category: r.def.category,
                scope: r.def.scope,
                throttle: r.def.throttle,
                provider,
                rule: &r.def.id,
                advice: Cow::Borrowed(&r.def.advice),
                fallback: r.def.fallback,
                reply: Ok(reply),
                input,
            },
            None => basic_code_verdict(reply, provider, input),
        };
        if c.action == Action::Deliver {
            c.throttle = Throttle::None;
        }
        c
    }

    /// One pass of the automaton: marks in `seen` the phrases that occur in `text` and
    /// in `candidates` the rules that name them; returns the first provider (file
    /// order) one of whose markers occurs.
    // Its own function: inlined into the caller, the walk lost registers to it.
    #[inline(never)]
    fn phrases_in(&self, text: &str, seen: &mut [u64], candidates: &mut [u64]) -> Option<u16> {
        let mut marked: Option<u16> = None;
        self.phrases.for_each_match(text.as_bytes(), |state| {
            self.record_match(state, seen, candidates, &mut marked);
        });
        marked
    }

    /// Marks the phrases ending at match state `state`, the rules naming them, and the
    /// provider one of them marks (the first in file order wins). Out of line: match
    /// states are rare, and the walk keeps its registers.
    #[cold]
    #[inline(never)]
    fn record_match(
        &self,
        state: u32,
        seen: &mut [u64],
        candidates: &mut [u64],
        marked: &mut Option<u16>,
    ) {
        let e = &self.effects;
        let entry =
            &e.data[e.offsets[state as usize] as usize..e.offsets[state as usize + 1] as usize];
        let (marker, phrases) = (entry[0], entry[1] as usize);
        for &id in &entry[2..2 + phrases] {
            set(seen, id);
        }
        for &ri in &entry[2 + phrases..] {
            set(candidates, ri);
        }
        if marker != NO_MARKER {
            let p = marker as u16;
            *marked = Some(marked.map_or(p, |b| b.min(p)));
        }
    }

    /// The provider: from `--mx`, else the wrapper's remote host, else the host the
    /// reply names in its trailer, else text markers (`marked`).
    fn provider(&self, reply: &Parsed<'_>, mx: Option<&str>, marked: Option<u16>) -> Option<u16> {
        let by_host = |h: &str| self.hosts.find(h).map(|i| i as u16);
        mx.and_then(by_host)
            .or_else(|| reply.remote_host.and_then(by_host))
            // Looked for only when needed: most replies are settled by `--mx` or the
            // wrapper's host, or carry no host block at all.
            .or_else(|| named_host(&reply.text).and_then(by_host))
            .or(marked)
    }

    /// The first candidate (lowest index = highest priority) whose conditions hold.
    fn first_match(
        &self,
        candidates: &[u64],
        reply: &Parsed<'_>,
        provider: Option<u16>,
        seen: &[u64],
    ) -> Option<&Compiled> {
        // Basic code and provider by whole words: most candidates go here at once.
        let words = self.rule_words;
        let by_code = &self.rules_of_code[usize::from(reply.code - 200) * words..][..words];
        let p = provider.map_or(self.providers.len(), usize::from);
        let by_provider = &self.rules_of_provider[p * words..][..words];
        let by_detail = &self.rules_of_detail[detail_bucket(reply.enhanced) * words..][..words];
        for (w, &word) in candidates.iter().enumerate() {
            let mut rest = word & by_code[w] & by_provider[w] & by_detail[w];
            while rest != 0 {
                let ri = w * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if self.rule_matches(&self.rules[ri], reply, seen) {
                    return Some(&self.rules[ri]);
                }
            }
        }
        None
    }

    fn rule_matches(&self, r: &Compiled, reply: &Parsed<'_>, seen: &[u64]) -> bool {
        // Basic code and provider were checked by the caller, by whole words.
        (r.enhanced.is_empty() || r.enhanced.iter().any(|e| e.matches(reply.enhanced)))
            && r.def.stage.is_none_or(|s| reply.stage == Some(s))
            && r.all.iter().all(|&id| has(seen, id))
            && (r.any.is_empty() || r.any.iter().any(|&id| has(seen, id)))
            && !r.not.iter().any(|&id| has(seen, id))
    }
}

/// Bitset words kept on the stack: 1,024 bits, room for the embedded phrases and rules.
const STACK_WORDS: usize = 16;

/// A zeroed bitset of `bits` bits: in `stack` when it fits, else in `heap`.
fn bitset<'a>(
    stack: &'a mut [u64; STACK_WORDS],
    heap: &'a mut Vec<u64>,
    bits: usize,
) -> &'a mut [u64] {
    let words = bits.div_ceil(64).max(1);
    if words <= STACK_WORDS {
        &mut stack[..words]
    } else {
        heap.resize(words, 0);
        heap
    }
}

fn has(bits: &[u64], id: u32) -> bool {
    bits[id as usize / 64] & (1 << (id % 64)) != 0
}

fn set(bits: &mut [u64], id: u32) {
    bits[id as usize / 64] |= 1 << (id % 64);
}

fn bucket_of(e: Option<EnhancedCode>) -> usize {
    match e {
        None => NO_ENHANCED,
        Some(e) if e.subject <= 7 => usize::from(e.subject),
        Some(_) => 8,
    }
}

/// Buckets of enhanced codes by detail: `detail % 64`, and one for "no enhanced code".
const DETAIL_BUCKETS: usize = 65;

fn detail_bucket(e: Option<EnhancedCode>) -> usize {
    e.map_or(DETAIL_BUCKETS - 1, |e| usize::from(e.detail) % 64)
}

/// Whether one of `r`'s enhanced-code patterns (if it has any) may match a code in
/// detail bucket `bucket` (a necessary condition only: `rule_matches` decides).
fn rule_may_match_detail_bucket(r: &Compiled, bucket: usize) -> bool {
    let absent = bucket == DETAIL_BUCKETS - 1;
    r.enhanced.is_empty()
        || r.enhanced.iter().any(|p| match p {
            EnhancedPattern::Absent => absent,
            EnhancedPattern::Code { detail, .. } => {
                !absent
                    && detail
                        .is_none_or(|(lo, hi)| (lo..=hi).any(|d| usize::from(d) % 64 == bucket))
            }
        })
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
fn basic_code_verdict<'a>(reply: Parsed<'a>, provider: &'a str, input: &'a str) -> Classified<'a> {
    let (action, advice) = match reply.code {
        200..=399 => (Action::Deliver, "Accepted (or continue): nothing to do."),
        400..=499 => (
            Action::Retry,
            "Temporary failure with no recognised cause: keep the mail queued and retry with backoff. Only the basic code decided; read the text.",
        ),
        _ => (
            Action::Bounce,
            "Permanent failure with no recognised cause: do not retry this message as is; a bounce goes back to the sender. Only the basic code decided; read the text.",
        ),
    };
    Classified {
        action,
        category: Category::Other,
        scope: Scope::Session,
        throttle: Throttle::None,
        provider,
        rule: "basic-code",
        advice: Cow::Borrowed(advice),
        fallback: true,
        reply: Ok(reply),
        input,
    }
}

/// The classification of one reply, borrowing from the input and the rules: what
/// [`Engine::classify`] returns. [`Classified::into_verdict`] makes the owned
/// [`Verdict`] (adding the facts named in the text).
#[derive(Debug, Clone, PartialEq)]
pub struct Classified<'a> {
    /// Deliver, retry or bounce (the rule's, else from the basic code).
    pub action: Action,
    /// What kind of problem the reply reports.
    pub category: Category,
    /// Whom the problem is about.
    pub scope: Scope,
    /// How the pacing of (egress IP × provider) should react.
    pub throttle: Throttle,
    /// `microsoft`, `google`, … or `unknown`.
    pub provider: &'a str,
    /// Which rule matched (`basic-code` or `not-a-reply` when none did).
    pub rule: &'a str,
    /// Plain English: what it means and what to do.
    pub advice: Cow<'a, str>,
    /// True when only RFC 3463 / the basic code decided.
    pub fallback: bool,
    /// The parsed reply (code, enhanced code, stage, text, wrapper), or why the input
    /// is not an SMTP reply.
    pub reply: Result<Parsed<'a>, NotAReply>,
    /// The whole input (for the verdict's `text` when it is not a reply).
    input: &'a str,
}

impl<'a> Classified<'a> {
    /// The basic code, `None` when the input is not an SMTP reply.
    pub fn code(&self) -> Option<u16> {
        self.reply.as_ref().ok().map(|r| r.code)
    }

    /// The enhanced code, if the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.reply.as_ref().ok().and_then(|r| r.enhanced)
    }

    /// The SMTP stage the reply answered, when known.
    pub fn stage(&self) -> Option<crate::verdict::Stage> {
        self.reply.as_ref().ok().and_then(|r| r.stage)
    }

    fn not_a_reply(input: &'a str, e: NotAReply) -> Self {
        Classified {
            action: Action::default(),
            category: Category::default(),
            scope: Scope::default(),
            throttle: Throttle::default(),
            provider: "unknown",
            rule: "not-a-reply",
            advice: Cow::Owned(format!(
                "Not an SMTP reply ({e}): nothing to classify. Paste the server's reply (a line starting with a 2xx-5xx code) or the log line that contains it."
            )),
            fallback: true,
            reply: Err(e),
            input,
        }
    }

    /// The owned verdict: every field, with the facts named in the text extracted.
    pub fn into_verdict(self) -> Verdict {
        let reply = match self.reply {
            Ok(reply) => reply,
            Err(_) => {
                let mut text: String = self.input.trim().chars().take(200).collect();
                text.retain(|c| !c.is_control() || c == ' ');
                return Verdict {
                    not_a_reply: true,
                    fallback: true,
                    rule: self.rule.to_owned(),
                    provider: self.provider.to_owned(),
                    advice: self.advice.into_owned(),
                    text,
                    ..Verdict::default()
                };
            }
        };
        let facts = extract(&reply.text);
        Verdict {
            code: Some(reply.code),
            enhanced: reply.enhanced.map(|e| e.to_text()),
            enhanced_agrees: reply.enhanced_agrees(),
            stage: reply.stage,
            action: self.action,
            category: self.category,
            scope: self.scope,
            provider: self.provider.to_owned(),
            throttle: self.throttle,
            tokens: facts.tokens,
            ips: facts.ips,
            host: facts.host,
            host_time: facts.host_time,
            urls: facts.urls,
            advice: self.advice.into_owned(),
            rule: self.rule.to_owned(),
            fallback: self.fallback,
            not_a_reply: false,
            text: reply.text.into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule every condition of every rule, tried in priority order, chooses: the
    /// reference for the automaton, the index and the bitset masks together.
    fn reference_rule<'e>(engine: &'e Engine, reply: &Parsed<'_>, mx: Option<&str>) -> &'e str {
        let text = reply.text.to_ascii_lowercase();
        let has = |p: &String| text.contains(&p.to_ascii_lowercase());
        let marked = engine
            .providers
            .iter()
            .position(|p| p.markers.iter().any(has))
            .map(|p| p as u16);
        let by_host = |h: &str| engine.hosts.find(h).map(|i| i as u16);
        let provider = mx
            .and_then(by_host)
            .or_else(|| reply.remote_host.and_then(by_host))
            .or_else(|| named_host(&reply.text).and_then(by_host))
            .or(marked);
        engine
            .rules
            .iter()
            .find(|r| {
                (r.codes.is_empty() || r.codes.iter().any(|c| c.matches(reply.code)))
                    && r.provider.is_none_or(|p| Some(p) == provider)
                    && (r.enhanced.is_empty()
                        || r.enhanced.iter().any(|e| e.matches(reply.enhanced)))
                    && r.def.stage.is_none_or(|s| reply.stage == Some(s))
                    && r.def.all.iter().all(has)
                    && (r.def.any.is_empty() || r.def.any.iter().any(has))
                    && !r.def.not.iter().any(has)
            })
            .map_or("basic-code", |r| r.def.id.as_str())
    }

    #[test]
    fn chosen_rule_agrees_with_trying_every_rule_in_order() {
        let engine = Engine::embedded().unwrap();
        let mut checked = 0;
        for case in &crate::corpus_cases() {
            let input = case.reply.as_str();
            let Ok(reply) = parse::parse_borrowed(input) else {
                continue;
            };
            let given = case.mx.as_deref();
            for mx in [
                given,
                None,
                Some("mx.example.org"),
                Some("aspmx.l.google.com"),
            ] {
                let got = engine.classify(input, mx).rule;
                assert_eq!(
                    got,
                    reference_rule(&engine, &reply, mx),
                    "{input:?} mx={mx:?}"
                );
                checked += 1;
            }
            // The same reply with other enhanced codes (detail buckets, none at all).
            for (code, enhanced) in [
                (reply.code, None),
                (reply.code, EnhancedCode::parse("5.7.606")),
                (reply.code, EnhancedCode::parse("5.7.670")),
                (reply.code, EnhancedCode::parse("4.7.500")),
                (reply.code, EnhancedCode::parse("4.7.564")),
            ] {
                let varied = Parsed {
                    code,
                    enhanced,
                    ..reply.clone()
                };
                let got = engine.classify_parsed(varied.clone(), None, input).rule;
                assert_eq!(
                    got,
                    reference_rule(&engine, &varied, None),
                    "{input:?} {enhanced:?}"
                );
            }
        }
        assert!(checked > 1000, "only {checked} classifications checked");
    }
}
