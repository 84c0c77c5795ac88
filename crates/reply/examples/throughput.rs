//! Replies per second of `explain` over the corpus, on one thread:
//! `cargo run --release -p mxpace-reply --example throughput [SECONDS]`.
//!
//! Prints two figures: by wall-clock time, and by the CPU time this thread actually got
//! (Linux `/proc/thread-self/schedstat`), which stays meaningful on a shared, loaded
//! machine where other processes take turns on the cores.
//!
//! `throughput --passes N` instead runs exactly N passes over the corpus after building
//! the engine, for instruction counts that do not depend on the machine's load: run it
//! under `valgrind --tool=callgrind` with `--passes 20` and with `--passes 0`; the
//! difference of the two totals divided by 20 × corpus entries is the instructions per
//! reply (everything the caller pays, including dropping the result), whatever the
//! compiler inlined. `scripts/reply-instructions` does exactly that.
//!
//! `--classify` (first argument) measures [`mxpace_reply::classify`] (no owned
//! verdict) instead of [`mxpace_reply::explain`]; `--parse` measures
//! [`mxpace_reply::parse_borrowed`] alone. Then `--raw` or `--wrapped` keeps only the
//! corpus entries that start with a reply code, or only the others (to profile each
//! kind of input on its own), or `--reply TEXT` replaces the corpus by that one reply.

use std::hint::black_box;
use std::time::{Duration, Instant};

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

/// Nanoseconds this thread has run on a CPU (None off Linux).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let classify_only = args.first().map(String::as_str) == Some("--classify");
    let parse_only = args.first().map(String::as_str) == Some("--parse");
    if classify_only || parse_only {
        args.remove(0);
    }
    let only = match args.first().map(String::as_str) {
        Some(kind @ ("--raw" | "--wrapped")) => {
            let kind = kind.to_owned();
            args.remove(0);
            Some(kind == "--raw")
        }
        _ => None,
    };
    let one_reply = match args.first().map(String::as_str) {
        Some("--reply") if args.len() > 1 => {
            let reply = args.remove(1);
            args.remove(0);
            Some(reply)
        }
        _ => None,
    };
    // One reply, as the caller would: the owned verdict, or only the classification.
    let one = |case: &Case| {
        if parse_only {
            let _ = black_box(mxpace_reply::parse_borrowed(black_box(&case.reply)));
        } else if classify_only {
            let c = mxpace_reply::classify(black_box(&case.reply), case.mx.as_deref());
            black_box((c.action, c.category, c.scope, c.throttle, c.rule, c.code()));
        } else {
            black_box(mxpace_reply::explain(
                black_box(&case.reply),
                case.mx.as_deref(),
            ));
        }
    };
    let mut cases = toml::from_str::<Corpus>(CORPUS)
        .expect("corpus parses")
        .case;
    if let Some(reply) = one_reply {
        cases = vec![Case { reply, mx: None }];
    }
    if let Some(raw) = only {
        // A raw reply starts with its three-digit code.
        cases.retain(|c| {
            let b = c.reply.trim_start().as_bytes();
            (b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit)) == raw
        });
    }
    if args.first().map(String::as_str) == Some("--passes") {
        let passes: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
        let _ = mxpace_reply::embedded_engine(); // build outside the counted calls
        for _ in 0..passes {
            cases.iter().for_each(one);
        }
        println!("replies: {}", passes * cases.len() as u64);
        return;
    }
    let seconds: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let run = |deadline: Duration| {
        let (start, cpu0) = (Instant::now(), thread_cpu_ns());
        let mut n = 0u64;
        while start.elapsed() < deadline {
            cases.iter().for_each(one);
            n += cases.len() as u64;
        }
        let cpu = thread_cpu_ns().zip(cpu0).map(|(b, a)| (b - a) as f64 / 1e9);
        (n, start.elapsed().as_secs_f64(), cpu)
    };
    run(Duration::from_millis(300)); // warm-up: engine build, caches
    let (n, wall, cpu) = run(Duration::from_secs_f64(seconds));
    println!(
        "phrase automaton: {} KiB",
        mxpace_reply::embedded_engine().automaton_bytes() / 1024
    );
    let what = if parse_only {
        "parse"
    } else if classify_only {
        "classify"
    } else {
        "explain"
    };
    println!(
        "{what}: {n} replies ({} corpus entries per pass)",
        cases.len()
    );
    println!("wall: {:.3} s  -> {:.0} replies/s", wall, n as f64 / wall);
    if let Some(cpu) = cpu {
        println!(
            "cpu:  {:.3} s  -> {:.0} replies/s ({:.0} ns/reply)",
            cpu,
            n as f64 / cpu,
            cpu * 1e9 / n as f64
        );
    }
}
