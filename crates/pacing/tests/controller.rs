//! The controller's behaviour, one rule per test.

use mxpace_pacing::{
    Band, Gate, Moment, Outcome, Pacing, PacingConfig, Path, PathState, Stream, Trigger,
};
use mxpace_reply::{Scope, Stage, Throttle, Verdict};
use std::net::IpAddr;

const IP_A: &str = "192.0.2.10";
const IP_B: &str = "192.0.2.11";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn path(ip_text: &str, provider: &str) -> Path {
    Path::new(ip(ip_text), provider)
}

fn t(secs: u64) -> Moment {
    Moment::from_secs(secs)
}

/// A 451 4.7.500 S77714 naming `ip_text`, classified as the reply crate does.
fn s77714(ip_text: &str) -> Verdict {
    Verdict {
        code: Some(451),
        enhanced: Some("4.7.500".into()),
        stage: Some(Stage::Rcpt),
        scope: Scope::SendingIp,
        provider: "microsoft".into(),
        throttle: Throttle::SlowDown,
        ips: vec![ip(ip_text)],
        tokens: vec!["S77714".into()],
        text: format!("451 4.7.500 Server busy. Please try again later from [{ip_text}]. (S77714)"),
        ..Verdict::default()
    }
}

fn with_throttle(mut v: Verdict, th: Throttle) -> Verdict {
    v.throttle = th;
    v
}

fn pacing() -> Pacing {
    Pacing::new(PacingConfig::builtin())
}

fn rate(p: &mut Pacing, path: &Path, now: Moment) -> f64 {
    p.path(path, now).limits().rate_per_min
}

/// Deliver `n` messages one per second on `path` from `start`, honouring the gate.
fn deliver_for(p: &mut Pacing, path: &Path, start: u64, secs: u64) -> u64 {
    let mut sent = 0;
    for s in start..start + secs {
        if let (Gate::Go, _) = p.try_send(path, Stream::Bulk, t(s)) {
            p.on_outcome(path, Outcome::Delivered, t(s));
            sent += 1;
        }
    }
    sent
}

#[test]
fn a_451_s77714_naming_our_ip_cuts_the_rate_of_that_path_and_no_other() {
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let b = path(IP_B, "microsoft");
    let g = path(IP_A, "google");
    let (ra, rb, rg) = (
        rate(&mut p, &a, t(0)),
        rate(&mut p, &b, t(0)),
        rate(&mut p, &g, t(0)),
    );
    let v = s77714(IP_A);
    let changes = p.on_outcome(&a, Outcome::Deferred(&v), t(1));
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].trigger, Trigger::SlowDown);
    assert!(
        changes[0].reason.contains("S77714"),
        "the change carries the reply"
    );
    assert!((rate(&mut p, &a, t(1)) - ra * 0.8).abs() < 1e-9);
    assert_eq!(rate(&mut p, &b, t(1)), rb);
    assert_eq!(rate(&mut p, &g, t(1)), rg);
    // Microsoft's slow-down rest is a minute (plus at most a tenth of stagger).
    let snap = p.path(&a, t(1)).snapshot(t(1));
    assert_eq!(snap.state, PathState::Paused);
    let rest = snap.until.unwrap().since(t(1)).as_secs();
    assert!((60..=66).contains(&rest), "{rest}");
    assert_eq!(p.path(&b, t(1)).state(), PathState::Ramping);
}

#[test]
fn a_throttle_naming_another_ip_does_not_touch_our_path() {
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let r0 = rate(&mut p, &a, t(0));
    let v = s77714(IP_B);
    assert!(p.on_outcome(&a, Outcome::Deferred(&v), t(1)).is_empty());
    assert_eq!(rate(&mut p, &a, t(1)), r0);
}

#[test]
fn a_tenant_or_recipient_deferral_is_not_a_reason_to_slow_the_path() {
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let r0 = rate(&mut p, &a, t(0));
    for scope in [Scope::Domain, Scope::Recipient] {
        let v = Verdict {
            code: Some(452),
            scope,
            throttle: Throttle::SlowDown,
            provider: "microsoft".into(),
            text: "452 4.3.2 recipient thread limit".into(),
            ..Verdict::default()
        };
        assert!(p.on_outcome(&a, Outcome::Deferred(&v), t(1)).is_empty());
    }
    assert_eq!(rate(&mut p, &a, t(1)), r0);
}

#[test]
fn replies_to_messages_already_in_flight_do_not_cut_twice() {
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let r0 = rate(&mut p, &a, t(0));
    let v = s77714(IP_A);
    for ms in [1000, 1200, 1500, 3000] {
        p.on_outcome(&a, Outcome::Deferred(&v), Moment(ms));
    }
    assert!((rate(&mut p, &a, t(4)) - r0 * 0.8).abs() < 1e-9);
    p.on_outcome(&a, Outcome::Deferred(&v), t(10));
    assert!(
        (rate(&mut p, &a, t(10)) - r0 * 0.8).abs() < 1e-9,
        "nor do replies that arrive during the rest"
    );
    p.on_outcome(&a, Outcome::Deferred(&v), t(70));
    assert!(
        (rate(&mut p, &a, t(70)) - r0 * 0.64).abs() < 1e-9,
        "one after the rest cuts again"
    );
}

#[test]
fn a_pause_verdict_rests_the_path_and_holds_messages_until_the_pause_ends() {
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let v = with_throttle(s77714(IP_A), Throttle::Pause);
    let ch = p.on_outcome(&a, Outcome::Deferred(&v), t(0));
    assert_eq!(ch[0].trigger, Trigger::Pause);
    assert_eq!(ch[0].state_to, PathState::Paused);
    let until = match p.try_send(&a, Stream::Transactional, t(1)).0 {
        Gate::HoldUntil(u) => u,
        other => panic!("expected a hold, got {other:?}"),
    };
    // microsoft pause is 10m, plus at most a tenth of stagger.
    assert!(until >= t(600) && until <= t(660), "{until:?}");
    assert!(matches!(
        p.try_send(&a, Stream::Bulk, t(599)).0,
        Gate::HoldUntil(_)
    ));
    let snap = p.path(&a, t(700)).snapshot(t(700));
    assert_eq!(
        snap.state,
        PathState::Paused,
        "a snapshot does not move time by itself"
    );
    let (_, changes) = p.try_send(&a, Stream::Bulk, t(700));
    assert_eq!(changes.first().map(|c| c.trigger), Some(Trigger::PauseOver));
    assert_eq!(p.path(&a, t(700)).state(), PathState::Ramping);
}

#[test]
fn releases_after_a_pause_are_spaced_by_the_rate_not_a_wave() {
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let v = with_throttle(s77714(IP_A), Throttle::Pause);
    p.on_outcome(&a, Outcome::Deferred(&v), t(0));
    let rate_per_s = rate(&mut p, &a, t(0)) / 60.0;
    // A thousand held messages all ask the moment the pause is over.
    let end = t(700);
    let sent = (0..1000)
        .filter(|_| matches!(p.try_send(&a, Stream::Bulk, end).0, Gate::Go))
        .count();
    assert!(sent <= 1, "{sent} released at once");
    // Over the next 60 s, about rate × 60 go.
    let mut released = 0;
    for ms in (700_000..760_000).step_by(100) {
        if matches!(p.try_send(&a, Stream::Bulk, Moment(ms)).0, Gate::Go) {
            released += 1;
        }
    }
    let expected = rate_per_s * 60.0;
    assert!(
        (released as f64 - expected).abs() <= 2.0,
        "{released} vs {expected}"
    );
}

#[test]
fn repeated_pauses_double_and_stop_at_the_maximum() {
    let mut p = pacing();
    let a = path(IP_A, "google");
    let v = with_throttle(s77714(IP_A), Throttle::Pause);
    let mut lengths = vec![];
    let mut now = 0;
    for _ in 0..8 {
        p.on_outcome(&a, Outcome::Deferred(&v), t(now));
        let until = p.path(&a, t(now)).snapshot(t(now)).until.unwrap();
        lengths.push(until.since(t(now)).as_secs());
        now = until.as_secs_f64() as u64 + 1;
        // One message gets through after each pause (else the breaker would open).
        while p.try_send(&a, Stream::Bulk, t(now)).0 != Gate::Go {
            now += 1;
        }
        p.on_outcome(&a, Outcome::Delivered, t(now));
    }
    assert!((300..=330).contains(&lengths[0]), "{lengths:?}");
    assert!((600..=660).contains(&lengths[1]), "{lengths:?}");
    assert!(lengths.iter().all(|&l| l <= 7200 + 720), "{lengths:?}");
    assert!(lengths[7] >= 7200, "{lengths:?}");
}

#[test]
fn stop_source_stops_the_path_until_an_operator_resumes_it() {
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let v = Verdict {
        code: Some(550),
        enhanced: Some("5.7.1".into()),
        throttle: Throttle::StopSource,
        scope: Scope::SendingIp,
        ips: vec![ip(IP_A)],
        text: format!("550 5.7.1 Unfortunately, messages from [{IP_A}] weren't sent. (S3150)"),
        ..Verdict::default()
    };
    let ch = p.on_outcome(&a, Outcome::Bounced(&v), t(0));
    assert_eq!(ch[0].trigger, Trigger::StopSource);
    for s in [1, 3600, 86400 * 3] {
        assert_eq!(p.try_send(&a, Stream::Transactional, t(s)).0, Gate::Stopped);
    }
    let snap = p.path(&a, t(10)).snapshot(t(10));
    assert_eq!(snap.state, PathState::Stopped);
    assert!(snap.reason.contains("S3150"));
    let resumed = p
        .path(&a, t(86400 * 3))
        .resume(t(86400 * 3), "operator: delisted");
    assert_eq!(resumed.state_to, PathState::Ramping);
    assert!(
        resumed.to.rate_per_min <= 60.0,
        "resumes low and ramps, never a step"
    );
    let s = 86400 * 3 + 1;
    assert!(deliver_for(&mut p, &a, s, 120) > 0);
}

#[test]
fn successes_raise_the_rate_at_most_once_per_interval_and_by_a_bounded_step() {
    let mut p = pacing();
    let a = path(IP_A, "google");
    let mut increases = vec![];
    for s in 0..600u64 {
        for _ in 0..5 {
            if let (Gate::Go, _) = p.try_send(&a, Stream::Bulk, t(s)) {
                for c in p.on_outcome(&a, Outcome::Delivered, t(s)) {
                    if c.trigger == Trigger::Increase {
                        increases.push((s, c.from.rate_per_min, c.to.rate_per_min));
                    }
                }
            }
        }
    }
    assert!((9..=10).contains(&increases.len()), "{increases:?}");
    for w in increases.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= 60,
            "two increases within the interval: {w:?}"
        );
    }
    for &(_, from, to) in &increases {
        // Slow start before any cut: at most 10% or 2/min per interval, never a jump.
        assert!(
            to > from && to <= (from * 1.1).max(from + 2.0) + 1e-9,
            "{from} -> {to}"
        );
    }
}

#[test]
fn after_a_cut_the_path_climbs_back_to_just_under_the_cut_rate_then_probes_additively() {
    let mut p = pacing();
    let a = path(IP_A, "google");
    let r0 = rate(&mut p, &a, t(0));
    let v = s77714(IP_A);
    p.on_outcome(&a, Outcome::Deferred(&v), t(0));
    let after_cut = rate(&mut p, &a, t(0));
    assert!((after_cut - r0 * 0.8).abs() < 1e-9);
    // Minute by minute, 5 messages a second offered.
    let mut rates = vec![after_cut];
    for minute in 0..40u64 {
        for s in 0..60u64 {
            let now = 40 + minute * 60 + s;
            for _ in 0..5 {
                if let (Gate::Go, _) = p.try_send(&a, Stream::Bulk, t(now)) {
                    p.on_outcome(&a, Outcome::Delivered, t(now));
                }
            }
        }
        rates.push(rate(&mut p, &a, t(40 + (minute + 1) * 60)));
    }
    let target = r0 * 0.95;
    let reached = rates
        .iter()
        .position(|r| (r - target).abs() < 1e-9)
        .expect("reaches plateau");
    assert!(reached >= 2, "in one step: {rates:?}");
    for w in rates[..=reached].windows(2) {
        assert!(
            w[1] - w[0] <= (target - w[0]) * 0.5 + 2.0 + 1e-9,
            "{rates:?}"
        );
    }
    // Holds the plateau until 20 minutes after the cut, then +2/min per interval.
    assert!(rates[..19].iter().all(|&r| r <= target + 1e-9), "{rates:?}");
    let last = rates[rates.len() - 1];
    assert!(last > target && last <= target + 2.0 * 21.0, "{rates:?}");
}

#[test]
fn nonsense_replies_cannot_drive_limits_below_the_floor() {
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let v = s77714(IP_A);
    for s in 0..10_000u64 {
        p.on_outcome(&a, Outcome::Deferred(&v), t(s * 10));
    }
    let l = p.path(&a, t(100_000)).limits();
    assert!((l.rate_per_min - 1.0).abs() < 1e-9, "floor is 1/min: {l:?}");
    assert!(l.connections >= 1 && l.per_connection >= 1);
    // The rest after the last cut (at most max_pause, 2 h, plus stagger) ends, the
    // deferrals slide out of the window, and bulk goes again, at the floor and growing.
    assert!(
        deliver_for(&mut p, &a, 100_000, 3 * 3600) >= 4,
        "still sends at the floor"
    );
}

#[test]
fn consecutive_connection_failures_open_the_breaker_which_reopens_with_one_probe() {
    let mut p = pacing();
    let a = path(IP_A, "google");
    let mut opened = None;
    for s in 0..5u64 {
        for c in p.on_outcome(&a, Outcome::ConnectionFailed(None), t(s)) {
            if c.trigger == Trigger::BreakerOpen {
                opened = Some(s);
            }
        }
    }
    assert_eq!(opened, Some(4), "the fifth failure opens it");
    assert!(matches!(p.try_send(&a, Stream::Bulk, t(100)).0, Gate::HoldUntil(u) if u == t(304)));
    // After the cooldown: exactly one probe, everything else held.
    let gates: Vec<Gate> = (0..5)
        .map(|_| p.try_send(&a, Stream::Bulk, t(305)).0)
        .collect();
    assert_eq!(
        gates.iter().filter(|g| **g == Gate::Go).count(),
        1,
        "{gates:?}"
    );
    // The probe fails: open again, for twice as long.
    let ch = p.on_outcome(&a, Outcome::ConnectionFailed(None), t(306));
    assert_eq!(ch.last().unwrap().trigger, Trigger::BreakerOpen);
    assert!(matches!(p.try_send(&a, Stream::Bulk, t(307)).0, Gate::HoldUntil(u) if u == t(906)));
    // The next probe succeeds: closed, ramping from the floor.
    assert_eq!(p.try_send(&a, Stream::Bulk, t(906)).0, Gate::Go);
    let ch = p.on_outcome(&a, Outcome::Delivered, t(907));
    assert_eq!(ch.last().unwrap().trigger, Trigger::BreakerClosed);
    let l = p.path(&a, t(907)).limits();
    assert_eq!((l.rate_per_min, l.connections), (1.0, 1));
    assert_eq!(p.path(&a, t(907)).state(), PathState::Ramping);
}

#[test]
fn a_success_between_failures_keeps_the_breaker_closed() {
    let mut p = pacing();
    let a = path(IP_A, "google");
    for s in 0..20u64 {
        let out = if s % 4 == 3 {
            Outcome::Delivered
        } else {
            Outcome::ConnectionFailed(None)
        };
        let ch = p.on_outcome(&a, out, t(s));
        assert!(
            ch.iter().all(|c| c.trigger != Trigger::BreakerOpen),
            "opened at {s}"
        );
    }
}

#[test]
fn over_five_percent_deferrals_pause_bulk_and_cold_while_transactional_keeps_its_share() {
    let mut p = pacing();
    let a = path(IP_A, "google");
    let deferral = Verdict {
        code: Some(421),
        scope: Scope::Session,
        provider: "google".into(),
        throttle: Throttle::None,
        text: "421 4.7.0 Try again later, closing connection.".into(),
        ..Verdict::default()
    };
    // 100 attempts in the window, 10 of them deferred about the path.
    for i in 0..100u64 {
        let out = if i % 10 == 0 {
            Outcome::Deferred(&deferral)
        } else {
            Outcome::Delivered
        };
        p.on_outcome(&a, out, Moment(i * 100));
    }
    assert_eq!(p.path(&a, t(10)).band(), Band::ActNow);
    assert!(matches!(
        p.try_send(&a, Stream::Bulk, t(11)).0,
        Gate::HoldUntil(_)
    ));
    assert!(matches!(
        p.try_send(&a, Stream::Cold, t(11)).0,
        Gate::HoldUntil(_)
    ));
    let mut tran = 0;
    for ms in (11_000..71_000).step_by(50) {
        if p.try_send(&a, Stream::Transactional, Moment(ms)).0 == Gate::Go {
            tran += 1;
        }
    }
    let share = p.path(&a, t(71)).config().transactional_share;
    let expected = rate(&mut p, &a, t(71)) * share;
    assert!(
        tran > 0 && (tran as f64 - expected).abs() <= 2.0,
        "{tran} vs {expected}"
    );
    // The deferrals slide out of the window as clean attempts continue: bulk resumes.
    for s in 72..800u64 {
        p.on_outcome(&a, Outcome::Delivered, t(s));
    }
    assert_eq!(p.path(&a, t(800)).band(), Band::Normal);
    let mut bulk_went = false;
    for ms in (800_000..803_000).step_by(100) {
        bulk_went |= p.try_send(&a, Stream::Bulk, Moment(ms)).0 == Gate::Go;
    }
    assert!(bulk_went);
}

#[test]
fn an_operator_pause_holds_every_stream_and_the_snapshot_says_why() {
    let mut p = pacing();
    let a = path(IP_A, "yahoo");
    let ch = p
        .path(&a, t(0))
        .operator_pause(t(5), "operator: investigating TSS04");
    assert_eq!(ch.state_to, PathState::Stopped);
    assert_eq!(p.try_send(&a, Stream::Transactional, t(6)).0, Gate::Stopped);
    let snaps = p.snapshot(t(7));
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].since, t(5));
    assert!(snaps[0].reason.contains("TSS04"));
    let json = serde_json::to_value(&snaps[0]).unwrap();
    assert_eq!(json["state"], "stopped");
    assert_eq!(json["path"]["provider"], "yahoo");
}

#[test]
fn after_a_chain_of_cuts_the_path_climbs_back_towards_the_rate_that_worked_before() {
    let mut p = pacing();
    let a = path(IP_A, "google");
    let r0 = rate(&mut p, &a, t(0));
    let v = s77714(IP_A);
    // An hour-long incident: a throttle after every rest, no success in between.
    let mut now = 0;
    for _ in 0..6 {
        p.on_outcome(&a, Outcome::Deferred(&v), t(now));
        now = p
            .path(&a, t(now))
            .snapshot(t(now))
            .until
            .unwrap()
            .as_secs_f64() as u64
            + 1;
    }
    let low = rate(&mut p, &a, t(now));
    assert!(low < r0 * 0.3, "{low}");
    // Ten minutes of clean sending afterwards: back near the rate before the incident.
    for s in now..now + 600 {
        for _ in 0..5 {
            if let (Gate::Go, _) = p.try_send(&a, Stream::Bulk, t(s)) {
                p.on_outcome(&a, Outcome::Delivered, t(s));
            }
        }
    }
    let back = rate(&mut p, &a, t(now + 600));
    // (The plateau's 20 minutes since the last cut are over by then, so it may have
    // probed beyond by +2/min per minute.)
    assert!(
        back >= r0 * 0.9 && back <= r0 * 0.95 + 2.0 * 10.0,
        "{low} -> {back} (r0 {r0})"
    );
}

#[test]
fn a_busy_path_cut_by_a_throttle_falls_to_what_the_receiver_took_and_stays_under_it() {
    // A new path starts at 60/min; the receiver (a warming IP) takes 10 and then
    // answers S77714. The cut goes to the measured 10/min, not to 0.8 × 60, and the
    // climb back aims just under 10/min, not back at 60.
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    let mut delivered = 0;
    let mut cut_at = None;
    for s in 0..60 {
        // A full queue: the scheduler asks again at once and is held.
        if let (Gate::Go, _) = p.try_send(&a, Stream::Bulk, t(s)) {
            let _ = p.try_send(&a, Stream::Bulk, t(s));
            if delivered < 10 {
                p.on_outcome(&a, Outcome::Delivered, t(s));
                delivered += 1;
            } else {
                p.on_outcome(&a, Outcome::Deferred(&s77714(IP_A)), t(s));
                cut_at = Some(s);
                break;
            }
        }
    }
    let cut_at = cut_at.expect("the eleventh message met the throttle");
    let after_cut = rate(&mut p, &a, t(cut_at));
    assert!(
        (9.0..=10.5).contains(&after_cut),
        "cut to what was taken (10 in the first minute), got {after_cut}/min"
    );
    deliver_for(&mut p, &a, cut_at + 1, 15 * 60);
    let later = rate(&mut p, &a, t(cut_at + 15 * 60));
    assert!(
        later <= 10.0,
        "climbs back to just under the measured rate, got {later}/min"
    );
}

#[test]
fn a_quiet_path_is_cut_by_the_factor_not_by_its_small_demand() {
    // Two messages a minute never wait for a token: their count measures our demand,
    // not the receiver, and must not drive the cut.
    let mut p = pacing();
    let a = path(IP_A, "microsoft");
    for m in 0..10 {
        let now = t(m * 30);
        assert_eq!(p.try_send(&a, Stream::Bulk, now).0, Gate::Go);
        p.on_outcome(&a, Outcome::Delivered, now);
    }
    let before = rate(&mut p, &a, t(301));
    p.on_outcome(&a, Outcome::Deferred(&s77714(IP_A)), t(301));
    let r = rate(&mut p, &a, t(301));
    assert!(
        (r - 0.8 * before).abs() < 1e-6,
        "0.8 × {before}/min, got {r}"
    );
}
