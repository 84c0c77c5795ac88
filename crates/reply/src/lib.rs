//! SMTP reply intelligence: parse a reply in any wrapper users paste or logs contain,
//! and classify it into a [`Verdict`] that says what it means and what to do.
//!
//! Pure code: no I/O, no clock. The relay, the simulator, the log readers and the
//! analyzer all call [`explain`].
//!
//! - [`parse`] finds the reply (raw, flattened, Postfix, Exim, DSN, Exchange) and
//!   returns a [`Reply`] with its [`EnhancedCode`] kept exactly;
//! - [`provider_for_host`] maps a receiving MX host to a provider (`rules/providers.toml`);
//! - [`Engine`] classifies with the rules in `rules/*.toml` (embedded, overridable).

mod engine;
mod extract;
mod parse;
mod phrases;
mod provider;
mod rules;
mod scan;
mod verdict;

pub use engine::{Classified, Engine};
pub use extract::{Extracted, extract, named_host};
pub use parse::{
    EnhancedCode, NotAReply, Parsed, Reply, Wrapper, parse, parse_borrowed, parse_bytes,
};
pub use provider::{PROVIDERS, PROVIDERS_TOML, ProviderDef, provider_for_host};
pub use rules::{CodePattern, EMBEDDED_RULES, EnhancedPattern, RuleDef, RulesError, parse_rules};
pub use verdict::{Action, Category, Scope, Stage, Throttle, Verdict};

use std::sync::LazyLock;

/// The embedded rules, compiled once.
static EMBEDDED: LazyLock<Engine> =
    LazyLock::new(|| Engine::embedded().expect("embedded rules are valid (tested)"));

/// The classifier built from the embedded rules.
pub fn embedded_engine() -> &'static Engine {
    &EMBEDDED
}

/// Parse and classify one reply. `mx` is the receiving host when known (it helps to
/// recognise the provider). Never panics; input that is not an SMTP reply yields a
/// verdict with `not_a_reply: true`.
pub fn explain(reply: &str, mx: Option<&str>) -> Verdict {
    EMBEDDED.explain(reply, mx)
}

/// Parse and classify one reply without building the owned [`Verdict`]: see
/// [`Engine::classify`]. For callers that only need the class (action, category,
/// scope, throttle, provider, rule).
pub fn classify<'a>(reply: &'a str, mx: Option<&'a str>) -> Classified<'a> {
    EMBEDDED.classify(reply, mx)
}

/// One corpus entry (`corpus/replies.toml`) as unit tests use it: the reply and the MX
/// it was received from, when the entry names one.
#[cfg(test)]
pub(crate) struct CorpusCase {
    pub reply: String,
    pub mx: Option<String>,
}

/// Every corpus entry, for unit tests that check a fast path against its reference.
#[cfg(test)]
pub(crate) fn corpus_cases() -> Vec<CorpusCase> {
    let corpus: toml::Value = toml::from_str(include_str!("../corpus/replies.toml")).unwrap();
    corpus["case"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| CorpusCase {
            reply: case["reply"].as_str().unwrap().to_owned(),
            mx: case.get("mx").and_then(|m| m.as_str()).map(str::to_owned),
        })
        .collect()
}
