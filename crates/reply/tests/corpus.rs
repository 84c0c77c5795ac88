//! Runs every entry of `corpus/replies.toml` through `explain` and reports every
//! mismatch at once (not just the first).

use mxpace_reply::{Verdict, explain};
use serde::Deserialize;
use serde_json::Value;

const CORPUS: &str = include_str!("../corpus/replies.toml");

#[derive(Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    source: String,
    reply: String,
    mx: Option<String>,
    code: Option<u16>,
    /// `""` means "no enhanced code expected".
    enhanced: Option<String>,
    action: Option<String>,
    category: Option<String>,
    scope: Option<String>,
    provider: Option<String>,
    throttle: Option<String>,
    stage: Option<String>,
    tokens: Option<Vec<String>>,
    ips: Option<Vec<String>>,
    urls: Option<Vec<String>>,
    host: Option<String>,
    host_time: Option<String>,
    rule: Option<String>,
    fallback: Option<bool>,
    enhanced_agrees: Option<bool>,
    not_a_reply: Option<bool>,
}

fn load() -> Vec<Case> {
    toml::from_str::<Corpus>(CORPUS)
        .expect("corpus/replies.toml parses")
        .case
}

/// Compare one expected field with the verdict's JSON; push a line on mismatch.
fn check(errors: &mut Vec<String>, name: &str, want: Option<Value>, got: &Value) {
    if let Some(want) = want
        && &want != got
    {
        errors.push(format!("{name}: want {want}, got {got}"));
    }
}

fn mismatches(case: &Case, v: &Verdict) -> Vec<String> {
    let got = serde_json::to_value(v).unwrap();
    let s = |x: &Option<String>| x.clone().map(Value::from);
    let mut e = Vec::new();
    check(&mut e, "code", case.code.map(Value::from), &got["code"]);
    let enhanced = case.enhanced.as_ref().map(|x| {
        if x.is_empty() {
            Value::Null
        } else {
            Value::from(x.clone())
        }
    });
    check(&mut e, "enhanced", enhanced, &got["enhanced"]);
    check(&mut e, "action", s(&case.action), &got["action"]);
    check(&mut e, "category", s(&case.category), &got["category"]);
    check(&mut e, "scope", s(&case.scope), &got["scope"]);
    check(&mut e, "provider", s(&case.provider), &got["provider"]);
    check(&mut e, "throttle", s(&case.throttle), &got["throttle"]);
    check(&mut e, "stage", s(&case.stage), &got["stage"]);
    check(&mut e, "host", s(&case.host), &got["host"]);
    check(&mut e, "host_time", s(&case.host_time), &got["host_time"]);
    check(&mut e, "rule", s(&case.rule), &got["rule"]);
    check(
        &mut e,
        "fallback",
        case.fallback.map(Value::from),
        &got["fallback"],
    );
    check(
        &mut e,
        "enhanced_agrees",
        case.enhanced_agrees.map(Value::from),
        &got["enhanced_agrees"],
    );
    check(
        &mut e,
        "not_a_reply",
        Some(Value::from(case.not_a_reply.unwrap_or(false))),
        &got["not_a_reply"],
    );
    check(
        &mut e,
        "tokens",
        case.tokens.clone().map(Value::from),
        &got["tokens"],
    );
    check(
        &mut e,
        "ips",
        case.ips.clone().map(Value::from),
        &got["ips"],
    );
    check(
        &mut e,
        "urls",
        case.urls.clone().map(Value::from),
        &got["urls"],
    );
    e
}

#[test]
fn every_corpus_reply_gets_its_expected_verdict() {
    let cases = load();
    let mut report = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let verdict = explain(&case.reply, case.mx.as_deref());
        let errors = mismatches(case, &verdict);
        if !errors.is_empty() {
            let reply: String = case.reply.chars().take(110).collect();
            report.push(format!(
                "#{i} [{}] {reply:?}\n    rule {} -> {}",
                case.source,
                verdict.rule,
                errors.join("; ")
            ));
        }
    }
    assert!(
        report.is_empty(),
        "{} of {} corpus replies mismatch:\n{}",
        report.len(),
        cases.len(),
        report.join("\n")
    );
}

#[test]
fn corpus_is_large_and_covers_the_providers() {
    let cases = load();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    for provider in [
        "microsoft",
        "google",
        "yahoo",
        "apple",
        "comcast",
        "gmx",
        "orange",
        "mailru",
        "proofpoint",
        "mimecast",
        "barracuda",
        "unknown",
    ] {
        let n = cases
            .iter()
            .filter(|c| c.provider.as_deref() == Some(provider))
            .count();
        assert!(n >= 3, "{provider}: only {n} cases");
    }
    for c in &cases {
        assert!(c.source.len() > 5, "case without a source: {:?}", c.reply);
    }
}
