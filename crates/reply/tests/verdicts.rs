//! Behaviour of `explain` on the replies the project exists for.

use mxpace_reply::{Action, Category, Engine, Scope, Throttle, explain, provider_for_host};

const S77714: &str = "451 4.7.500 Server busy. Please try again later from [203.0.113.10]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2024-07-14T14:44:43.083Z 08DCA36F759CD546]";

#[test]
fn microsoft_server_busy_is_a_per_ip_throttle_not_a_bounce() {
    let v = explain(S77714, None);
    assert_eq!(v.code, Some(451));
    assert_eq!(v.enhanced.as_deref(), Some("4.7.500"));
    assert_eq!(v.enhanced_agrees, Some(true));
    assert_eq!(v.action, Action::Retry);
    assert_eq!(v.category, Category::Throttling);
    assert_eq!(v.scope, Scope::SendingIp);
    assert_eq!(v.provider, "microsoft");
    assert_ne!(v.throttle, Throttle::None);
    assert_eq!(v.tokens, ["S77714"]);
    assert_eq!(v.ips, ["203.0.113.10".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(
        v.host.as_deref(),
        Some("bl6pepf0001ab50.namprd04.prod.outlook.com")
    );
    assert_eq!(v.host_time.as_deref(), Some("2024-07-14T14:44:43.083Z"));
    assert_eq!(v.rule, "microsoft-server-busy");
    assert!(!v.fallback);
    assert!(v.advice.contains("do not bounce"), "{}", v.advice);
}

#[test]
fn blocklist_5xx_is_about_the_sending_ip() {
    for reply in [
        "550 5.7.1 Unfortunately, messages from [198.51.100.7] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        "550 5.7.606 Access denied, banned sending IP [198.51.100.7]. To request removal from this list please visit https://sender.office.com/ and follow the directions. (AS16012609)",
        "554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/198.51.100.7",
    ] {
        let v = explain(reply, None);
        assert_eq!(v.action, Action::Bounce, "{reply}");
        assert_eq!(v.category, Category::Blocklist, "{reply}");
        assert_eq!(v.scope, Scope::SendingIp, "{reply}");
        assert_eq!(v.throttle, Throttle::StopSource, "{reply}");
    }
}

#[test]
fn gmail_codes_are_not_iana_meanings() {
    let v = explain(
        "421-4.7.27 Your email has been rate limited because SPF authentication didn't pass for this message. Gmail requires all bulk email senders to authenticate with SPF. 421 4.7.27 Learn more - gsmtp",
        None,
    );
    assert_eq!(v.provider, "google");
    assert_eq!(v.category, Category::Authentication);
    assert_eq!(v.scope, Scope::SenderDomain);
    // Without Google's markers the same number falls back to IANA's meaning (sender null MX).
    let v = explain("550 5.7.27 Sender address has null MX", None);
    assert!(v.fallback);
    assert_eq!(v.scope, Scope::SenderDomain);
    assert_eq!(v.category, Category::Dns);
}

#[test]
fn yahoo_ts03_is_final_despite_4xx() {
    let v = explain(
        "421 4.7.1 [TS03] All messages from 203.0.113.9 permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        None,
    );
    assert_eq!(v.action, Action::Bounce);
    assert_eq!(v.throttle, Throttle::StopSource);
    let v = explain(
        "421 4.7.0 [TSS04] Messages from 203.0.113.9 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        None,
    );
    assert_eq!(v.action, Action::Retry);
    assert_eq!(v.provider, "yahoo");
    assert_eq!(v.tokens, ["[TSS04]"]);
    assert_eq!(v.ips.len(), 1, "4.16.55.1 is Yahoo's code, not an address");
}

#[test]
fn mx_host_decides_the_provider() {
    let v = explain(
        "451 4.7.1 Please try again later",
        Some("mx01.mail.icloud.com"),
    );
    assert_eq!(v.provider, "apple");
    assert_eq!(
        provider_for_host("contoso-com.mail.protection.outlook.com"),
        Some("microsoft")
    );
    // A Postfix wrapper names the host too.
    let v = explain(
        "host contoso-com.mail.protection.outlook.com[52.101.1.1] said: 550 5.7.606 Access denied, banned sending IP [198.51.100.7]. (in reply to MAIL FROM command)",
        None,
    );
    assert_eq!(v.provider, "microsoft");
    assert_eq!(v.stage, Some(mxpace_reply::Stage::Mail));
}

#[test]
fn unknown_replies_fall_back_and_say_so() {
    let v = explain("451 Something odd happened", None);
    assert!(v.fallback);
    assert_eq!(v.action, Action::Retry);
    assert_eq!(v.rule, "basic-code");
    let v = explain("550", None);
    assert!(v.fallback && !v.not_a_reply);
    assert_eq!(v.action, Action::Bounce);
    let v = explain("250 2.0.0 Ok: queued as 4F2A", None);
    assert_eq!(v.action, Action::Deliver);
}

#[test]
fn bad_input_never_panics_and_is_marked() {
    for input in [
        "",
        "   ",
        "hello",
        "\u{0}\u{1}\u{2}",
        "12345",
        "999 what",
        "-",
        "5",
    ] {
        let v = explain(input, None);
        assert!(v.not_a_reply, "{input:?}");
        assert_eq!(v.code, None);
        assert!(v.advice.starts_with("Not an SMTP reply"));
    }
    let big = format!("451 4.7.500 {}", "Server busy ".repeat(10_000));
    assert_eq!(explain(&big, None).code, Some(451));
}

#[test]
fn user_rules_override_and_extend() {
    let user = r#"
[[rule]]
id = "microsoft-server-busy"
source = "our own observation"
codes = ["451"]
enhanced = ["4.7.500"]
category = "capacity"
scope = "session"
advice = "Overridden by the user for this test."

[[rule]]
id = "acme-quota"
source = "acme.example postmaster page"
codes = ["452"]
all = ["acme quota"]
category = "mailbox-full"
scope = "recipient"
advice = "Acme's mailbox is full, retry later."
"#;
    let engine = Engine::with_user_rules("user.toml", user).unwrap();
    let v = engine.explain(S77714, None);
    assert_eq!(v.rule, "microsoft-server-busy");
    assert_eq!(v.category, Category::Capacity);
    let v = engine.explain("452 4.2.2 acme quota reached", None);
    assert_eq!(v.rule, "acme-quota");
    assert!(engine.rules().count() > 100);
    assert!(Engine::with_user_rules("bad.toml", "[[rule]]\nid = 1").is_err());
}
