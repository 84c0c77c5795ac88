//! Generate a Postfix syslog with known ground truth.
//!
//! `cargo run --release -p mxpace-analyze --example gen_postfix -- OUT [MEGABYTES] [SCENARIO]`
//! SCENARIO: clean, sender (one IP throttled by Microsoft), provider (Microsoft-wide),
//! tenant (one tenant). The ground truth is printed to stderr as JSON-ish text.

use mxpace_analyze::generate::{DeferRule, Scenario, write_postfix};
use std::io::Write;
use std::net::IpAddr;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: gen_postfix OUT [MEGABYTES] [clean|sender|provider|tenant]");
        std::process::exit(2);
    };
    let megabytes: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let scenario = args.get(2).map(String::as_str).unwrap_or("sender");
    let mut s = Scenario::baseline_unix(1_795_420_800); // 2026-11-23T08:00:00Z
    s.rate_per_sec = 50.0;
    // About 715 bytes of log per message: size the run to the requested volume.
    s.minutes = ((megabytes * 1e6 / 715.0 / s.rate_per_sec / 60.0).ceil() as u32).max(10);
    let third = s.minutes / 3;
    let ip1 = IpAddr::from([198, 51, 100, 1]);
    match scenario {
        "clean" => {}
        "sender" => {
            s.ramp = Some((ip1, third.saturating_sub(5), 3.0));
            s.rules.push(DeferRule {
                from_minute: third,
                to_minute: 2 * third,
                ip: Some(ip1),
                microsoft_only: true,
                probability: 0.9,
                ..Default::default()
            });
        }
        "provider" => s.rules.push(DeferRule {
            from_minute: third,
            to_minute: 2 * third,
            microsoft_only: true,
            probability: 0.5,
            ..Default::default()
        }),
        "tenant" => s.rules.push(DeferRule {
            from_minute: third,
            to_minute: 2 * third,
            domain: Some("tenant3.example.com".into()),
            probability: 0.9,
            ..Default::default()
        }),
        other => {
            eprintln!("unknown scenario {other:?}");
            std::process::exit(2);
        }
    }
    let file = std::fs::File::create(out).unwrap_or_else(|e| {
        eprintln!("cannot create {out}: {e}");
        std::process::exit(2)
    });
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let truth = write_postfix(&s, &mut w).expect("write");
    w.flush().expect("flush");
    eprintln!("{truth:?}");
}
