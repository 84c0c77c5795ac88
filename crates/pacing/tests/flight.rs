//! The flight simulator: the policy models behave as documented, and mxpace's
//! controller meets its goals on small versions of the scenarios.

use mxpace_pacing::flight::policy::{Kumo, MessageView, Mxpace, Policy, Postfix};
use mxpace_pacing::flight::receiver::{ModelReceiver, Receiver, Reply};
use mxpace_pacing::flight::scenario::Scenario;
use mxpace_pacing::flight::{self, PolicyResult};
use mxpace_pacing::{Moment, PacingConfig, Stream};
use mxpace_reply::{Stage, Verdict};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn t(s: u64) -> Moment {
    Moment::from_secs(s)
}

fn busy(ip: &str) -> Reply {
    Reply {
        code: 451,
        text: format!("451 4.7.500 Server busy. Please try again later from [{ip}]. (S77714)"),
        stage: Stage::Rcpt,
        meaning: None,
        key: None,
    }
}

fn run(name: &str, scale: f64, policy: &str) -> (Scenario, PolicyResult) {
    let s = Scenario::builtin(name, scale).unwrap();
    let mut p = flight::policy(policy, &s, &PacingConfig::builtin()).unwrap();
    let (r, _) = flight::run(&s, p.as_mut(), 7);
    (s, r)
}

#[test]
fn postfix_does_not_slow_down_for_a_451_at_rcpt_but_does_for_refused_sessions() {
    let mut p = Postfix::new(1, 1);
    let v = Verdict::default();
    assert_eq!(
        p.sessions(0, 0, 0, t(0)),
        5,
        "initial_destination_concurrency"
    );
    for s in 0..30 {
        p.on_reply(0, 0, &busy("192.0.2.10"), &v, t(s));
    }
    assert_eq!(
        p.sessions(0, 0, 0, t(30)),
        20,
        "RCPT 4xx is positive feedback"
    );
    let refused = Reply {
        code: 421,
        text: "421 4.7.652 too many connections".into(),
        stage: Stage::Connect,
        meaning: None,
        key: None,
    };
    p.on_connect_refused(0, 0, &refused, &v, t(31));
    assert_eq!(p.sessions(0, 0, 0, t(31)), 19);
    // Failed cohorts add 1/window each: enough of them throttle the destination 300 s.
    for _ in 0..30 {
        p.on_connect_refused(0, 0, &refused, &v, t(32));
    }
    assert_eq!(p.sessions(0, 0, 0, t(100)), 0);
    assert_eq!(
        p.sessions(0, 0, 0, t(332)),
        5,
        "slow open after minimal_backoff_time"
    );
}

#[test]
fn postfix_backoff_is_the_age_clamped_and_waits_for_the_queue_scan() {
    let mut p = Postfix::new(1, 1);
    let mut rng = StdRng::seed_from_u64(1);
    let m = |arrival| MessageView {
        arrival,
        attempts: 1,
        stream: Stream::Bulk,
    };
    assert_eq!(
        p.retry_at(m(0.0), t(10), &mut rng),
        t(600),
        "300 s, then the next scan"
    );
    assert_eq!(p.retry_at(m(0.0), t(1000), &mut rng), t(2100));
    assert_eq!(
        p.retry_at(m(0.0), t(90_000), &mut rng),
        t(94_200),
        "capped at 4000 s"
    );
}

#[test]
fn kumomta_drops_a_site_to_one_message_a_minute_for_90_minutes_then_snaps_back() {
    let mut k = Kumo::new(1, 2);
    let v = Verdict::default();
    assert_eq!(
        k.sessions(0, 0, 0, t(0)),
        5,
        "provider_connection_limit for office365"
    );
    k.on_reply(0, 0, &busy("192.0.2.10"), &v, t(0));
    assert_eq!(k.sessions(0, 0, 0, t(1)), 1);
    assert_eq!(
        k.sessions(0, 1, 0, t(1)),
        5,
        "keyed per site (tenant MX), not per IP"
    );
    let sent = (1..=3600u64)
        .filter(|&s| k.admit(0, 0, Stream::Bulk, t(s)))
        .count();
    assert!((59..=61).contains(&sent), "{sent} in an hour");
    assert_eq!(
        k.sessions(0, 0, 0, t(5401)),
        5,
        "full speed after 90 min, in one step"
    );
    let burst = (0..200)
        .filter(|_| k.admit(0, 0, Stream::Bulk, t(5402)))
        .count();
    assert!(burst >= 99, "{burst}");
    let mut rng = StdRng::seed_from_u64(1);
    let m = MessageView {
        arrival: 0.0,
        attempts: 3,
        stream: Stream::Bulk,
    };
    let due = k.retry_at(m, t(0), &mut rng).as_secs_f64();
    assert!(
        (4770.0..=4830.0).contains(&due),
        "20 min × 2² ± 30 s: {due}"
    );
}

#[test]
fn mxpace_in_the_simulator_uses_the_real_controller_and_slows_only_the_named_ip() {
    let s = Scenario::builtin("steady", 0.01).unwrap();
    let mut p = Mxpace::new(PacingConfig::builtin(), 2).with_change_log();
    let v = Verdict {
        throttle: mxpace_reply::Throttle::SlowDown,
        scope: mxpace_reply::Scope::SendingIp,
        ips: vec!["192.0.2.10".parse().unwrap()],
        text: busy("192.0.2.10").text,
        ..Verdict::default()
    };
    p.on_reply(0, 3, &busy("192.0.2.10"), &v, t(5));
    let log = p.change_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].path.to_string(), "192.0.2.10@microsoft");
    assert!(log[0].to.rate_per_min < log[0].from.rate_per_min);
    assert!(!p.admit(0, 3, Stream::Transactional, t(6)), "resting");
    assert!(p.admit(1, 3, Stream::Bulk, t(6)), "the other IP goes on");
    let _ = s;
}

#[test]
fn the_model_receiver_ledger_sees_no_duplicates_and_every_message_is_accounted_for() {
    for policy in ["mxpace", "postfix", "kumomta"] {
        let (s, r) = run("mixed", 0.02, policy);
        assert_eq!(r.duplicates, 0, "{policy}");
        assert_eq!(r.delivered + r.expired, s.messages(), "{policy}: {r:?}");
        assert!(r.attempts >= r.delivered);
    }
}

#[test]
fn the_same_seed_gives_the_same_figures() {
    assert_eq!(
        run("incident", 0.02, "mxpace").1,
        run("incident", 0.02, "mxpace").1
    );
}

#[test]
fn on_a_small_steady_run_mxpace_is_near_the_ideal_with_almost_no_deferrals() {
    let (s, r) = run("steady", 0.2, "mxpace");
    let ideal = s.ideal_completion_secs();
    assert!(r.drained && r.expired == 0, "{r:?}");
    // At a fifth of the size the slow start weighs more than at full size (1.09× there).
    assert!(
        r.completion_s <= 1.25 * ideal,
        "{} vs ideal {ideal}",
        r.completion_s
    );
    assert!(r.deferred_share <= 0.02, "{r:?}");
}

#[test]
fn on_a_small_steady_run_mxpace_beats_both_models() {
    let (_, m) = run("steady", 0.05, "mxpace");
    for other in ["postfix", "kumomta"] {
        let (_, o) = run("steady", 0.05, other);
        assert!(m.completion_s < o.completion_s, "{other}: {o:?} vs {m:?}");
        assert!(
            m.deferred_share < o.deferred_share,
            "{other}: {o:?} vs {m:?}"
        );
    }
}

#[test]
fn a_receiver_that_defers_everything_cannot_stop_mxpace_probing() {
    // A receiver that answers every delivery with S77714, whatever the rate.
    struct Nonsense(ModelReceiver);
    impl Receiver for Nonsense {
        fn connect(&mut self, s: std::net::IpAddr, t: &str, now: Moment) -> Reply {
            self.0.connect(s, t, now)
        }
        fn deliver(&mut self, s: std::net::IpAddr, _t: &str, _id: u64, _now: Moment) -> Reply {
            let mut r = busy(&s.to_string());
            r.meaning = Some(Verdict {
                code: Some(451),
                throttle: mxpace_reply::Throttle::SlowDown,
                scope: mxpace_reply::Scope::SendingIp,
                ips: vec![s],
                fallback: false,
                text: r.text.clone(),
                ..Verdict::default()
            });
            r
        }
        fn close(&mut self, s: std::net::IpAddr, now: Moment) {
            self.0.close(s, now)
        }
        fn duplicates(&self) -> u64 {
            0
        }
    }
    let mut s = Scenario::builtin("steady", 0.001).unwrap();
    s.horizon_secs = 86_400.0;
    let mut p = Mxpace::new(PacingConfig::builtin(), s.ips);
    let mut rx = Nonsense(ModelReceiver::new(s.receiver.clone(), 1));
    let (r, _) = flight::run_with(&s, &mut p, &mut rx, 1);
    // Limits sink to the floor and rests grow to their maximum (2 h), but a probe still
    // goes after each: at least a dozen a day per IP, far fewer than a retry loop would.
    assert!(r.attempts >= 24, "{r:?}");
    assert!(r.attempts <= 200, "{r:?}");
}
