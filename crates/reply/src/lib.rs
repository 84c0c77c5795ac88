//! SMTP reply intelligence: parse a reply in any wrapper users paste or logs contain,
//! and classify it into a [`Verdict`] that says what it means and what to do.
//!
//! Pure code: no I/O, no clock. The relay, the simulator, the log readers and the
//! analyzer all call [`explain`].

mod verdict;

pub use verdict::{Action, Category, Scope, Stage, Throttle, Verdict};

/// Parse and classify one reply. `mx` is the receiving host when known (it helps to
/// recognise the provider). Never panics; input that is not an SMTP reply yields a
/// verdict with `not_a_reply: true`.
pub fn explain(reply: &str, mx: Option<&str>) -> Verdict {
    // Placeholder until the rule engine lands: decide on the basic code only.
    let _ = mx;
    let code = reply
        .trim_start()
        .get(..3)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|c| (200..600).contains(c));
    let action = match code {
        Some(c) if c >= 500 => Action::Bounce,
        Some(c) if c >= 400 => Action::Retry,
        Some(_) => Action::Deliver,
        None => Action::Retry,
    };
    Verdict {
        code,
        action,
        not_a_reply: code.is_none(),
        fallback: true,
        rule: "basic-code".into(),
        ..Verdict::default()
    }
}
