//! Where the time of `mxpace analyze` goes on a Postfix log, stage by stage:
//!
//! ```text
//! cargo run --release -p mxpace-analyze --example read_bench -- mail.log
//! ```
//!
//! Prints MB/s of: splitting lines only; parsing every line (one core); the whole read
//! (parse, correlate, analyze) sequentially and on all cores.

use mxpace_analyze::run::{self, Options};
use mxpace_analyze::{Analyzer, Config};
use mxpace_events::readers::ReaderConfig;
use mxpace_events::readers::postfix;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "mail.log".into());
    let bytes = std::fs::read(&path)?;
    let mb = bytes.len() as f64 / 1e6;
    let config = ReaderConfig {
        year: Some(2026),
        ..Default::default()
    };

    // STAGES=all (default) or par (only the parallel read, for profiling).
    let only_parallel = std::env::var("STAGES").is_ok_and(|s| s == "par");
    let t = Instant::now();
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    report("split lines", mb, t, lines);

    if !only_parallel {
        let t = Instant::now();
        let parsed = bytes
            .split(|&b| b == b'\n')
            .filter(|l| matches!(postfix::parse_line(l, &config), Ok(Some(_))))
            .count();
        report("parse (1 core)", mb, t, parsed);
    }

    let modes: &[bool] = if only_parallel {
        &[true]
    } else {
        &[false, true]
    };
    for &parallel in modes {
        let mut options = Options::new();
        options.parallel = parallel;
        options.reader = config.clone();
        let mut analyzer = Analyzer::new(Config::default());
        let t = Instant::now();
        let (fold_cpu, all_cpu) = (cpu_secs("thread-self"), cpu_secs("self"));
        let outcome = run::read_all(
            &[path.clone().into()],
            &options,
            &mut analyzer,
            &mut |_, _| {},
        )?;
        let name = if parallel {
            "read + analyze (all cores)"
        } else {
            "read + analyze (1 core)"
        };
        report(name, mb, t, outcome.stats.events as usize);
        println!(
            "{:<28} {:7.2} CPU s on the calling thread (the fold), {:.2} CPU s in all",
            "",
            cpu_secs("thread-self") - fold_cpu,
            cpu_secs("self") - all_cpu
        );
    }
    Ok(())
}

/// User + system CPU seconds of `/proc/<which>` (`self`: the process, `thread-self`:
/// the calling thread), from its `stat` file (Linux; 0 elsewhere).
fn cpu_secs(which: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name; the
    // kernel counts them in USER_HZ, 100 per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn report(stage: &str, mb: f64, start: Instant, count: usize) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{stage:<28} {secs:7.2} s {:8.1} MB/s  ({count} items)",
        mb / secs
    );
}
