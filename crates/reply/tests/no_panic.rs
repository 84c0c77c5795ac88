//! Property tests: arbitrary bytes, reply-shaped noise and damaged corpus replies never
//! make the parser or the classifier panic, and the verdict stays self-consistent.

use mxpace_reply::{Action, explain, parse_bytes};
use proptest::prelude::*;

const CORPUS: &str = include_str!("../corpus/replies.toml");

/// Parsed once: the TOML parse costs more than a test case.
static REPLIES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(corpus_replies);

fn corpus_replies() -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Corpus {
        case: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        reply: String,
    }
    toml::from_str::<Corpus>(CORPUS)
        .unwrap()
        .case
        .into_iter()
        .map(|c| c.reply)
        .collect()
}

/// What every verdict must satisfy, whatever the input.
fn assert_consistent(bytes: &[u8]) {
    let _ = parse_bytes(bytes);
    let text = String::from_utf8_lossy(bytes);
    let v = explain(&text, None);
    assert_eq!(v.not_a_reply, v.code.is_none());
    if let Some(code) = v.code {
        assert!((200..600).contains(&code));
        match code {
            200..=399 => assert_eq!(v.action, Action::Deliver),
            500..=599 => assert_eq!(v.action, Action::Bounce),
            _ => {}
        }
    }
    if let Some(e) = &v.enhanced {
        assert!(mxpace_reply::EnhancedCode::parse(e).is_some(), "{e}");
    }
    assert!(!v.rule.is_empty() && !v.advice.is_empty());
    let _ = explain(&text, Some(&text));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        assert_consistent(&bytes);
    }

    #[test]
    fn reply_shaped_noise(s in "([2-5][0-9]{2}[- ]?(#?[245]\\.[0-9]{1,4}\\.[0-9]{1,4})? ?[ -~\\[\\]()]{0,40}(\r\n|\n|\r)?){1,4}") {
        assert_consistent(s.as_bytes());
    }

    #[test]
    fn wrapped_noise(
        wrapper in prop::sample::select(vec![
            "host mx.example[192.0.2.1] said: ",
            "SMTP error from remote mail server after RCPT TO:<a@b>: ",
            "Diagnostic-Code: smtp; ",
            "Remote Server returned '",
            "#550 5.7.1 smtp;",
            "refused to talk to me: ",
        ]),
        body in "[ -~\\n]{0,80}",
        tail in prop::sample::select(vec!["", " (in reply to RCPT TO command)", "'", "> #SMTP#", "\n    folded", " (in reply to "]),
    ) {
        assert_consistent(format!("{wrapper}{body}{tail}").as_bytes());
    }

    #[test]
    fn damaged_corpus_replies(index in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), junk in proptest::collection::vec(any::<u8>(), 0..8)) {
        let replies = &*REPLIES;
        let reply = replies[index.index(replies.len())].as_bytes();
        let at = cut.index(reply.len() + 1);
        // Cut anywhere (even inside a UTF-8 sequence) and splice in junk bytes.
        let mut damaged = reply[..at].to_vec();
        damaged.extend(&junk);
        damaged.extend(&reply[at..]);
        assert_consistent(&damaged);
        assert_consistent(&reply[..at]);
    }
}
