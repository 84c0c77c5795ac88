//! Triage: group hot time windows of a provider into incidents and say whose problem each
//! one is, with the evidence. Pure: reads the analyzer's counts, returns decisions.
//!
//! The logic (issue 6, research/analysis-anchors.md §5 — a design inference, not a
//! provider rule): deferrals concentrated on one sending IP, sender domain or stream while
//! the others to the same provider are clean point to the sender (more so after a volume
//! rise); one recipient domain alone points to that tenant; many unrelated tenants failing
//! at once from most of our IPs, or failures clustered on some receiving regions, point to
//! the provider.

use crate::aggregate::{Analyzer, CELL_DIMENSIONS, Cell, Counts, Dimension, Sample, rfc3339};
use crate::knowledge::Bands;
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
use time::OffsetDateTime;

/// Whose problem an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    SenderSide,
    ProviderSide,
    TenantSide,
    Mixed,
    Unclear,
}

impl Verdict {
    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::SenderSide => "sender-side",
            Verdict::ProviderSide => "provider-side",
            Verdict::TenantSide => "tenant-side",
            Verdict::Mixed => "mixed",
            Verdict::Unclear => "unclear",
        }
    }
}

/// A run of hot windows at one provider, with its verdict and evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub verdict: Verdict,
    pub provider: String,
    /// What the deferrals are confined to, e.g. `source_ip 198.51.100.7`.
    pub scope: String,
    pub start: String,
    pub end: String,
    pub attempts: u64,
    pub deferred: u64,
    pub rate: f64,
    pub evidence: Vec<String>,
    /// What to do, in order.
    pub actions: Vec<String>,
    pub samples: Vec<Sample>,
}

/// Thresholds of the triage rules.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A window (or key within it) needs this many deferrals to count as hot.
    pub min_deferred: u64,
    /// A key needs this many attempts to serve as a clean comparison.
    pub min_attempts: u64,
    /// Share of an incident's deferrals one key must hold to be "the" scope.
    pub concentration: f64,
    /// Distinct recipient domains with deferrals that make "many tenants".
    pub many_tenants: usize,
    /// Attempts per window this many times the preceding hour's is a volume rise.
    pub ramp_factor: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            min_deferred: 5,
            min_attempts: 10,
            concentration: 0.8,
            many_tenants: 3,
            ramp_factor: 2.0,
        }
    }
}

/// Find and judge the incidents in an analysis.
pub fn incidents(analyzer: &Analyzer, rules: &Rules) -> Vec<Incident> {
    let window = analyzer.config.window_secs;
    let mut found = Vec::new();
    let mut providers: Vec<&String> = analyzer.tally.cells.keys().collect();
    providers.sort();
    for provider in providers {
        let cells = &analyzer.tally.cells[provider];
        let bands = analyzer.config.providers.bands(provider);
        let mut run: Vec<i64> = Vec::new();
        for (&start, cell) in cells {
            if !is_hot(cell, bands, rules) {
                continue;
            }
            if let Some(&last) = run.last()
                && start - last > 2 * window
            {
                found.push(judge(analyzer, provider, &run, bands, rules));
                run.clear();
            }
            run.push(start);
        }
        if !run.is_empty() {
            found.push(judge(analyzer, provider, &run, bands, rules));
        }
    }
    found.sort_by(|a, b| a.start.cmp(&b.start).then(a.provider.cmp(&b.provider)));
    found
}

fn is_hot(cell: &Cell, bands: Bands, rules: &Rules) -> bool {
    let hot = |c: &Counts| c.deferred >= rules.min_deferred && c.rate() >= bands.act;
    hot(&cell.total) || cell.by[0].values().any(hot) || cell.by[2].values().any(hot)
}

/// Counts of an incident, summed over its windows.
struct Totals {
    total: Counts,
    by: Vec<HashMap<String, Counts>>,
    samples: Vec<Sample>,
}

fn sum(cells: impl Iterator<Item = (i64, Cell)>, examples: usize) -> Totals {
    let mut t = Totals {
        total: Counts::default(),
        by: vec![HashMap::default(); CELL_DIMENSIONS.len()],
        samples: Vec::new(),
    };
    for (_, cell) in cells {
        t.total.merge(cell.total);
        for (i, map) in cell.by.iter().enumerate() {
            for (k, c) in map {
                t.by[i].entry(k.clone()).or_default().merge(*c);
            }
        }
        for s in cell.samples {
            if t.samples.len() < examples {
                t.samples.push(s);
            }
        }
    }
    t
}

/// The key holding most deferrals in a dimension, with its counts and share.
fn top(map: &HashMap<String, Counts>, total_deferred: u64) -> Option<(&str, Counts, f64)> {
    let (k, c) = map
        .iter()
        .max_by(|a, b| a.1.deferred.cmp(&b.1.deferred).then(b.0.cmp(a.0)))?;
    let share = if total_deferred == 0 {
        0.0
    } else {
        c.deferred as f64 / total_deferred as f64
    };
    Some((k, *c, share))
}

/// All keys but `except`, summed; and how many of them had enough attempts to compare.
fn others(map: &HashMap<String, Counts>, except: &str, rules: &Rules) -> (Counts, usize) {
    let mut sum = Counts::default();
    let mut n = 0;
    for (k, c) in map {
        if k != except {
            sum.merge(*c);
            n += (c.attempts >= rules.min_attempts) as usize;
        }
    }
    (sum, n)
}

/// Deferrals concentrated on one key while the others (enough of them) stay under watch.
fn concentrated<'a>(
    t: &'a Totals,
    dim: usize,
    bands: Bands,
    rules: &Rules,
) -> Option<(&'a str, Counts, f64, Counts, usize)> {
    let (key, c, share) = top(&t.by[dim], t.total.deferred)?;
    let (rest, n) = others(&t.by[dim], key, rules);
    (share >= rules.concentration
        && n >= 1
        && rest.attempts >= rules.min_attempts
        && rest.rate() < bands.watch.max(c.rate() / 10.0))
    .then_some((key, c, share, rest, n))
}

fn pct(x: f64) -> String {
    if x > 0.0 && x < 0.01 {
        format!("{:.2} %", x * 100.0)
    } else {
        format!("{:.1} %", x * 100.0)
    }
}

fn judge(
    analyzer: &Analyzer,
    provider: &str,
    windows: &[i64],
    bands: Bands,
    rules: &Rules,
) -> Incident {
    let window = analyzer.config.window_secs;
    let cells = &analyzer.tally.cells[provider];
    let (first, last) = (windows[0], *windows.last().expect("non-empty run"));
    let t = sum(
        cells.range(first..=last).map(|(k, c)| (*k, c.clone())),
        analyzer.config.examples,
    );
    let mut evidence = vec![format!(
        "{provider}: {} of {} attempts deferred ({}) from {} to {}",
        t.total.deferred,
        t.total.attempts,
        pct(t.total.rate()),
        at(first),
        at(last + window)
    )];
    let dim_index = |d: Dimension| {
        CELL_DIMENSIONS
            .iter()
            .position(|x| *x == d)
            .expect("cell dimension")
    };
    let (ip_i, sender_i, rcpt_i, region_i, stream_i) = (
        dim_index(Dimension::SourceIp),
        dim_index(Dimension::SenderDomain),
        dim_index(Dimension::RecipientDomain),
        dim_index(Dimension::Region),
        dim_index(Dimension::Stream),
    );

    let mut sender_scope = None;
    for (i, label) in [
        (ip_i, "source_ip"),
        (sender_i, "sender_domain"),
        (stream_i, "stream"),
    ] {
        if let Some((key, c, share, rest, n)) = concentrated(&t, i, bands, rules) {
            evidence.push(format!(
                "{label} {key} holds {} of the deferrals ({} of its {} attempts deferred) while the {n} other {label}s to {provider} see {} ({} attempts)",
                pct(share),
                c.deferred,
                c.attempts,
                pct(rest.rate()),
                rest.attempts
            ));
            sender_scope.get_or_insert(format!("{label} {key}"));
        }
    }
    let tenant = concentrated(&t, rcpt_i, bands, rules).map(|(key, c, share, rest, n)| {
        evidence.push(format!(
            "recipient domain {key} holds {} of the deferrals ({} of {} attempts) while {n} other domains at {provider} see {}",
            pct(share),
            c.deferred,
            c.attempts,
            pct(rest.rate())
        ));
        format!("recipient_domain {key}")
    });

    // Provider signals: spread across tenants and our IPs, or clustered on regions.
    let tenants_hit = t.by[rcpt_i].values().filter(|c| c.deferred > 0).count();
    let ips: Vec<&Counts> = t.by[ip_i]
        .values()
        .filter(|c| c.attempts >= rules.min_attempts)
        .collect();
    let hot_ips = ips.iter().filter(|c| c.rate() >= bands.act).count();
    let spread = tenants_hit >= rules.many_tenants
        && !ips.is_empty()
        && hot_ips * 2 > ips.len()
        && sender_scope.is_none()
        && tenant.is_none();
    let mut provider_scope = None;
    if spread {
        evidence.push(format!(
            "deferrals across {tenants_hit} recipient domains and {hot_ips} of {} sending IPs at the same time",
            ips.len()
        ));
        provider_scope = Some(format!("{provider}: {tenants_hit} tenants, {hot_ips} IPs"));
    }
    let regions_seen = t.by[region_i].len();
    // A region only counts as the cause when no single tenant explains the deferrals.
    if regions_seen >= 2
        && tenant.is_none()
        && let Some((key, _c, share, rest, _n)) = concentrated(&t, region_i, bands, rules)
    {
        evidence.push(format!(
            "{} of the deferrals come from receiving region {key}; the other {} regions see {}",
            pct(share),
            regions_seen - 1,
            pct(rest.rate())
        ));
        provider_scope.get_or_insert(format!("region {key}"));
    }

    // Volume before onset, and the same IP at other receivers.
    let mut sender_stable = true;
    if let Some((ip, _, _)) = top(&t.by[ip_i], t.total.deferred) {
        let per_window = |from: i64, to: i64| -> f64 {
            let mut attempts = 0u64;
            for cells in analyzer.tally.cells.values() {
                for (_, cell) in cells.range(from..to) {
                    attempts += cell.by[ip_i].get(ip).map_or(0, |c| c.attempts);
                }
            }
            attempts as f64 / ((to - from) / window).max(1) as f64
        };
        let before = per_window(first - 6 * window, first);
        let during = per_window(first, last + window);
        if before > 0.0 && during >= rules.ramp_factor * before {
            sender_stable = false;
            evidence.push(format!(
                "volume from {ip} rose {:.1}× (from {:.0} to {:.0} attempts per {} min) just before the deferrals started",
                during / before,
                before,
                during,
                window / 60
            ));
        } else if before > 0.0 {
            evidence.push(format!(
                "volume from {ip} was stable ({before:.0} attempts per {} min before, {during:.0} during)",
                window / 60
            ));
        }
        let mut elsewhere = Counts::default();
        let mut names = Vec::new();
        for (other, cells) in &analyzer.tally.cells {
            if other == provider {
                continue;
            }
            let mut c = Counts::default();
            for (_, cell) in cells.range(first..=last) {
                if let Some(x) = cell.by[ip_i].get(ip) {
                    c.merge(*x);
                }
            }
            if c.attempts > 0 {
                names.push(format!("{other} {}", pct(c.rate())));
                elsewhere.merge(c);
            }
        }
        if elsewhere.attempts >= rules.min_attempts {
            names.sort();
            let verdict = if elsewhere.rate() >= bands.act {
                "other receivers defer it too: a reputation problem of the IP"
            } else {
                "other receivers accept it: the pushback is specific to this provider"
            };
            evidence.push(format!(
                "the same IP {ip} at other receivers in the same windows: {} deferred of {} ({}); {verdict}",
                elsewhere.deferred,
                elsewhere.attempts,
                names.join(", ")
            ));
        }
    }

    let mut templates: Vec<_> = analyzer
        .tally
        .templates
        .get(provider)
        .into_iter()
        .flat_map(|templates| templates.values())
        .filter(|s| s.deferred > 0)
        .collect();
    templates.sort_by_key(|t| std::cmp::Reverse(t.deferred));
    for s in templates.iter().take(3) {
        let v = &s.verdict;
        let class = if v.rule.is_empty() || v.fallback {
            String::new()
        } else {
            format!(" [{:?} / {:?}]", v.category, v.throttle).to_lowercase()
        };
        evidence.push(format!(
            "reply seen {} times{class}: {}",
            s.deferred, s.sample.reply
        ));
    }

    let sender = sender_scope.is_some()
        || (!sender_stable && tenant.is_none() && provider_scope.is_none() && hot_ips == 1);
    let verdict = match (sender, provider_scope.is_some(), tenant.is_some()) {
        (true, false, false) => Verdict::SenderSide,
        (false, true, false) => Verdict::ProviderSide,
        (false, false, true) => Verdict::TenantSide,
        (false, false, false) => Verdict::Unclear,
        _ => Verdict::Mixed,
    };
    let scope = match verdict {
        Verdict::SenderSide => sender_scope.unwrap_or_else(|| "sending IPs".into()),
        Verdict::ProviderSide => provider_scope.unwrap_or_default(),
        Verdict::TenantSide => tenant.unwrap_or_default(),
        Verdict::Mixed => [sender_scope, tenant, provider_scope]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        Verdict::Unclear => format!("{provider}: no single IP, domain or region stands out"),
    };
    Incident {
        actions: actions(verdict, provider, &scope),
        verdict,
        provider: provider.to_string(),
        scope,
        start: at(first),
        end: at(last + window),
        attempts: t.total.attempts,
        deferred: t.total.deferred,
        rate: t.total.rate(),
        evidence,
        samples: t.samples,
    }
}

fn at(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(rfc3339)
        .unwrap_or_default()
}

/// The actions in order: keep queued; cut concurrency; pause risky streams; fix
/// identity; escalate with this evidence.
fn actions(verdict: Verdict, provider: &str, scope: &str) -> Vec<String> {
    let keep =
        "Keep the deferred mail queued: a 4xx is a queue event, never a bounce or a suppression."
            .to_string();
    match verdict {
        Verdict::SenderSide => vec![
            keep,
            format!("Cut concurrency and rate on {scope} → {provider} (halve it), then ramp back up gradually over days."),
            format!("Pause risky streams (new lists, cold re-engagement) on {scope} until the deferrals stop."),
            format!("Fix identity on {scope}: rDNS/HELO, SPF, DKIM, DMARC alignment and blocklists (`mxpace check`)."),
            "Escalate only if it persists after slowing down, with the evidence below.".into(),
        ],
        Verdict::ProviderSide => vec![
            keep,
            format!("Cut concurrency to {provider} modestly; do not push harder while it is pushing back."),
            "No stream needs pausing for this: the pattern is not specific to one of ours.".into(),
            "No identity change is indicated; check the provider's service-health page.".into(),
            format!("Escalate to {provider} with the evidence below (SMTP samples with UTC times, receiving hosts, our IPs)."),
        ],
        Verdict::TenantSide => vec![
            keep,
            format!("Slow down to {scope} only; the rest of {provider} is fine."),
            "Pause bulk streams to that domain if it persists.".into(),
            "No identity change is indicated by this pattern.".into(),
            "Tell the recipient organisation's admins (their inbound limits/connectors) with the evidence below.".into(),
        ],
        Verdict::Mixed | Verdict::Unclear => vec![
            keep,
            format!("Cut concurrency to {provider} until the rate is back under the band."),
            "Pause risky streams on the IPs most deferred.".into(),
            "Check identity of the sending IPs and domains (`mxpace check`).".into(),
            "Collect more data before escalating; attach the evidence below.".into(),
        ],
    }
}
