//! The report: what the JSON, terminal, Markdown and HTML outputs show. Built from an
//! [`Analyzer`] once the input is read.

use crate::aggregate::{
    AGE_BUCKETS, ANTI_PATTERNS, Analyzer, Counts, Dimension, RETRY_BUCKETS, Sample, rfc3339,
};
use crate::knowledge::Bands;
use crate::triage::{self, Incident, Rules};
use mxpace_events::readers::ReadStats;
use serde::Serialize;
use std::collections::BTreeMap;

/// Deferral-rate band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Band {
    Normal,
    Watch,
    ActNow,
}

impl Band {
    /// The band of `rate` under `bands`.
    pub fn of(rate: f64, bands: Bands) -> Band {
        if rate > bands.act {
            Band::ActNow
        } else if rate >= bands.watch {
            Band::Watch
        } else {
            Band::Normal
        }
    }

    /// Name as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Band::Normal => "normal",
            Band::Watch => "watch",
            Band::ActNow => "act-now",
        }
    }
}

/// One segment: `{dimension, key, attempts, deferred, rate, band}`.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub dimension: &'static str,
    pub key: String,
    pub attempts: u64,
    pub deferred: u64,
    pub rate: f64,
    pub band: Band,
}

/// One anti-pattern: `{kind, count, examples}`.
#[derive(Debug, Clone, Serialize)]
pub struct AntiPatternReport {
    pub kind: &'static str,
    pub count: u64,
    pub examples: Vec<String>,
}

/// A labelled count.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub label: &'static str,
    pub count: u64,
}

/// Queue health.
#[derive(Debug, Clone, Serialize)]
pub struct QueueHealthReport {
    pub delivered: u64,
    pub bounced: u64,
    pub expired: u64,
    /// Recipients still deferred at the end of the input.
    pub still_queued: u64,
    pub retry_age: Vec<Bucket>,
    pub retry_count: Vec<Bucket>,
    pub time_to_deliver: Vec<Bucket>,
    /// Deliveries timed from their first attempt because their arrival was not in the input.
    pub delivered_without_arrival: u64,
}

/// A reply template with its count and one full sample.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateReport {
    pub provider: String,
    pub template: String,
    pub count: u64,
    pub deferred: u64,
    pub category: String,
    pub sample: Sample,
}

/// A point of a time series: window start and counts.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub start: i64,
    pub attempts: u64,
    pub deferred: u64,
    pub band: Band,
}

/// Deferral rate over time for one provider or one path.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// What was read, and what was skipped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InputReport {
    pub files: Vec<String>,
    pub format: String,
    pub lines: u64,
    pub bytes: u64,
    pub events: u64,
    pub ignored_lines: u64,
    pub skipped_lines: u64,
    pub skipped: BTreeMap<String, u64>,
    pub out_of_order_events: u64,
    pub held_not_attempted: u64,
    pub first: Option<String>,
    pub last: Option<String>,
}

/// Everything the outputs show.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub input: InputReport,
    pub segments: Vec<Segment>,
    pub incidents: Vec<Incident>,
    pub anti_patterns: Vec<AntiPatternReport>,
    pub queue_health: QueueHealthReport,
    pub templates: Vec<TemplateReport>,
    pub window_secs: i64,
    /// Per provider, then per path (source IP × provider).
    pub series: Vec<Series>,
}

impl Report {
    /// Build the report from a finished analysis and the readers' counts.
    pub fn build(
        analyzer: &Analyzer,
        stats: &ReadStats,
        files: Vec<String>,
        format: &str,
    ) -> Report {
        let providers = &analyzer.config.providers;
        let bands_for = |dim: Dimension, key: &str| -> Bands {
            match dim {
                Dimension::Provider => providers.bands(key),
                Dimension::Path => providers.bands(key.rsplit(" → ").next().unwrap_or(key)),
                _ => Bands::default(),
            }
        };
        let mut segments = Vec::new();
        for dim in Dimension::ALL {
            let map = analyzer.tally.segment(dim);
            let mut rows: Vec<(&String, &Counts)> = map.iter().collect();
            rows.sort_by(|a, b| {
                b.1.deferred
                    .cmp(&a.1.deferred)
                    .then(b.1.attempts.cmp(&a.1.attempts))
                    .then(a.0.cmp(b.0))
            });
            for (key, c) in rows {
                segments.push(Segment {
                    dimension: dim.name(),
                    key: key.clone(),
                    attempts: c.attempts,
                    deferred: c.deferred,
                    rate: c.rate(),
                    band: Band::of(c.rate(), bands_for(dim, key)),
                });
            }
        }

        let incidents = triage::incidents(analyzer, &Rules::default());
        let anti_patterns = ANTI_PATTERNS
            .iter()
            .zip(&analyzer.anti)
            .map(|(kind, a)| AntiPatternReport {
                kind,
                count: a.count,
                examples: a.examples.clone(),
            })
            .collect();

        let h = &analyzer.health;
        let buckets = |counts: &[u64], labels: &[&'static str]| -> Vec<Bucket> {
            labels
                .iter()
                .zip(counts)
                .map(|(label, count)| Bucket {
                    label,
                    count: *count,
                })
                .collect()
        };
        let age_labels: Vec<&'static str> = AGE_BUCKETS.iter().map(|(_, l)| *l).collect();
        let retry_labels: Vec<&'static str> = RETRY_BUCKETS.iter().map(|(_, l)| *l).collect();
        let queue_health = QueueHealthReport {
            delivered: h.delivered,
            bounced: h.bounced,
            expired: h.expired,
            still_queued: analyzer.still_deferred(),
            retry_age: buckets(&h.retry_age, &age_labels),
            retry_count: buckets(&h.retry_count, &retry_labels),
            time_to_deliver: buckets(&h.time_to_deliver, &age_labels),
            delivered_without_arrival: h.delivered_without_arrival,
        };

        let mut templates: Vec<TemplateReport> = analyzer
            .tally
            .templates
            .iter()
            .flat_map(|(provider, templates)| templates.iter().map(move |t| (provider, t)))
            .map(|(provider, (template, s))| TemplateReport {
                provider: provider.clone(),
                template: template.clone(),
                count: s.count,
                deferred: s.deferred,
                category: serde_json::to_value(s.verdict.category)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                sample: s.sample.clone(),
            })
            .collect();
        // Ties broken by template, then provider: the same log gives the same report.
        templates.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.template.cmp(&b.template))
                .then(a.provider.cmp(&b.provider))
        });
        templates.truncate(50);

        let series = series(analyzer);
        let input = InputReport {
            files,
            format: format.to_string(),
            lines: stats.lines,
            bytes: stats.bytes,
            events: stats.events,
            ignored_lines: stats.ignored,
            skipped_lines: stats.skipped_total(),
            skipped: stats
                .skipped
                .iter()
                .map(|(r, n)| (r.name().to_string(), *n))
                .collect(),
            out_of_order_events: analyzer.out_of_order,
            held_not_attempted: analyzer.held,
            first: analyzer.first.map(rfc3339),
            last: analyzer.last.map(rfc3339),
        };
        Report {
            input,
            segments,
            incidents,
            anti_patterns,
            queue_health,
            templates,
            window_secs: analyzer.config.window_secs,
            series,
        }
    }

    /// Segments of one dimension.
    pub fn segments_of<'a>(&'a self, dimension: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments
            .iter()
            .filter(move |s| s.dimension == dimension)
    }
}

/// Time series per provider and per path, at most 12 paths (the most deferred).
fn series(analyzer: &Analyzer) -> Vec<Series> {
    let providers = &analyzer.config.providers;
    let mut out = Vec::new();
    let mut names: Vec<&String> = analyzer.tally.cells.keys().collect();
    names.sort();
    for provider in &names {
        let bands = providers.bands(provider);
        let points = analyzer.tally.cells[*provider]
            .iter()
            .map(|(start, cell)| Point {
                start: *start,
                attempts: cell.total.attempts,
                deferred: cell.total.deferred,
                band: Band::of(cell.total.rate(), bands),
            })
            .collect();
        out.push(Series {
            name: provider.to_string(),
            points,
        });
    }
    let mut paths: Vec<(String, u64, Vec<Point>)> = Vec::new();
    for provider in &names {
        let bands = providers.bands(provider);
        let mut per_ip: BTreeMap<&str, Vec<Point>> = BTreeMap::new();
        for (start, cell) in &analyzer.tally.cells[*provider] {
            for (ip, c) in &cell.by[0] {
                per_ip.entry(ip).or_default().push(Point {
                    start: *start,
                    attempts: c.attempts,
                    deferred: c.deferred,
                    band: Band::of(c.rate(), bands),
                });
            }
        }
        for (ip, points) in per_ip {
            let deferred = points.iter().map(|p| p.deferred).sum();
            paths.push((format!("{ip} → {provider}"), deferred, points));
        }
    }
    paths.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.extend(
        paths
            .into_iter()
            .take(12)
            .map(|(name, _, points)| Series { name, points }),
    );
    out
}
