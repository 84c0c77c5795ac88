//! Parse + classify throughput over the corpus, one core:
//! `cargo bench -p mxpace-reply --bench explain`. Criterion prints the time per pass
//! and, with the throughput set to the number of replies, replies per second.
//!
//! - `classify` — [`mxpace_reply::classify`]: wrapper unwrapped, code, enhanced code,
//!   stage and text parsed, rule chosen, every classification field (action,
//!   category, scope, throttle, provider, rule, advice, fallback); borrowed, no
//!   allocation for a single-line reply. What the relay's hot path needs.
//! - `explain` — [`mxpace_reply::explain`]: the above plus the facts named in the
//!   text (tokens, IPs, URLs, host block) and the owned `Verdict`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const CORPUS: &str = include_str!("../corpus/replies.toml");

#[derive(serde::Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    reply: String,
    mx: Option<String>,
}

fn bench(c: &mut Criterion) {
    let cases = toml::from_str::<Corpus>(CORPUS)
        .expect("corpus parses")
        .case;
    // Warm the embedded engine outside the measurement.
    let _ = mxpace_reply::explain("250 ok", None);
    let mut group = c.benchmark_group("explain");
    group.throughput(Throughput::Elements(cases.len() as u64));
    group.bench_function("classify (corpus)", |b| {
        b.iter(|| {
            for case in &cases {
                let c = mxpace_reply::classify(black_box(&case.reply), case.mx.as_deref());
                black_box((
                    c.action, c.category, c.scope, c.throttle, c.provider, c.rule,
                ));
                black_box((c.code(), c.enhanced(), c.stage(), &c.advice));
            }
        })
    });
    group.bench_function("explain (corpus)", |b| {
        b.iter(|| {
            for case in &cases {
                black_box(mxpace_reply::explain(
                    black_box(&case.reply),
                    case.mx.as_deref(),
                ));
            }
        })
    });
    group.bench_function("corpus (parse only)", |b| {
        b.iter(|| {
            for case in &cases {
                let _ = black_box(mxpace_reply::parse(black_box(&case.reply)));
            }
        })
    });
    let busy = "451 4.7.500 Server busy. Please try again later from [203.0.113.10]. (S77714) [BL6PEPF0001AB50.namprd04.prod.outlook.com 2024-07-14T14:44:43.083Z 08DCA36F759CD546]";
    group.throughput(Throughput::Elements(1));
    group.bench_function("S77714 reply", |b| {
        b.iter(|| black_box(mxpace_reply::explain(black_box(busy), None)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
