//! The flight simulator with wall-clock timings, for a release build:
//! `cargo run --release -p mxpace-pacing --example flight [-- SCALE [PENALTY RETRY_PENALTY]]`.
//! (`mxpace bench pacing` prints the same figures without timings.)
use mxpace_pacing::PacingConfig;
use mxpace_pacing::flight::{self, POLICIES, scenario::SCENARIOS, scenario::Scenario};
use std::time::Instant;

fn main() {
    let arg = |i: usize| std::env::args().nth(i).and_then(|s| s.parse::<f64>().ok());
    let scale = arg(1).unwrap_or(1.0);
    let config = PacingConfig::builtin();
    println!(
        "scenario  policy   messages  ideal_s  completion_s  x_ideal  deferred  p50_tx  p95_tx  expired  dups  wall_ms"
    );
    for name in SCENARIOS {
        let mut s = Scenario::builtin(name, scale).expect("built-in");
        if let Some(p) = arg(2) {
            s.receiver.penalty_secs = p;
        }
        if let Some(p) = arg(3) {
            s.receiver.retry_penalty_secs = p;
        }
        let ideal = s.ideal_completion_secs();
        for policy in POLICIES {
            let mut p = flight::policy(policy, &s, &config).expect("known policy");
            let started = Instant::now();
            let (r, _) = flight::run(&s, p.as_mut(), 1);
            let wall = started.elapsed().as_millis();
            let o = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            println!(
                "{name:<9} {policy:<8} {:>8} {ideal:>8.0} {:>13.0} {:>8.2} {:>8.2}% {:>7} {:>7} {:>8} {:>5} {wall:>8}",
                s.messages(),
                r.completion_s,
                r.completion_s / ideal,
                100.0 * r.deferred_share,
                o(r.p50_transactional_s),
                o(r.p95_transactional_s),
                r.expired,
                r.duplicates,
            );
        }
    }
}
