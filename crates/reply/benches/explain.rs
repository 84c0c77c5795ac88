//! Parse + classify throughput over the corpus, one core:
//! `cargo bench -p mxpace-reply --bench explain`. Criterion prints the time per pass
//! and, with the throughput set to the number of replies, replies per second.

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
    group.bench_function("corpus (parse + classify)", |b| {
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
