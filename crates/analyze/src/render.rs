//! Renderings of a [`Report`]: terminal text (bands coloured on a TTY), Markdown and a
//! self-contained HTML evidence report with inline SVG charts.

use crate::report::{Band, Report, Segment};
use crate::svg::{self, escape};
use std::fmt::Write;

/// The segment tables of the Markdown and HTML reports, in order (the terminal summary
/// leaves out `mx_host`, whose names are too long for it).
const REPORT_DIMENSIONS: [&str; 8] = [
    "provider",
    "path",
    "source_ip",
    "recipient_domain",
    "sender_domain",
    "mx_host",
    "region",
    "stream",
];

/// Rows shown per dimension in the summaries.
const TOP_ROWS: usize = 8;

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn band_text(band: Band, colour: bool) -> String {
    let name = band.name();
    if !colour {
        return name.to_string();
    }
    let code = match band {
        Band::Normal => "32",
        Band::Watch => "33",
        Band::ActNow => "1;31",
    };
    format!("\x1b[{code}m{name}\x1b[0m")
}

/// The terminal summary.
pub fn terminal(r: &Report, colour: bool) -> String {
    let mut o = String::new();
    let i = &r.input;
    let _ = writeln!(
        o,
        "mxpace analyze: {} lines ({} MB) of {} → {} events; {} skipped, {} other lines ignored; {} → {}",
        i.lines,
        i.bytes / 1_000_000,
        if i.format.is_empty() { "?" } else { &i.format },
        i.events,
        i.skipped_lines,
        i.ignored_lines,
        i.first.as_deref().unwrap_or("-"),
        i.last.as_deref().unwrap_or("-")
    );
    if !i.skipped.is_empty() {
        let parts: Vec<String> = i.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(o, "  skipped lines by reason: {}", parts.join(", "));
    }
    if i.out_of_order_events > 0 {
        let _ = writeln!(
            o,
            "  {} events were out of time order (kept, counted in their own window)",
            i.out_of_order_events
        );
    }
    for dim in [
        "provider",
        "path",
        "source_ip",
        "recipient_domain",
        "sender_domain",
        "region",
        "stream",
    ] {
        let rows: Vec<&Segment> = r.segments_of(dim).take(TOP_ROWS).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "\n{dim:<40} {:>10} {:>10} {:>9}  band",
            "attempts", "deferred", "rate"
        );
        for s in rows {
            let _ = writeln!(
                o,
                "{:<40} {:>10} {:>10} {:>9}  {}",
                clip(&s.key, 40),
                s.attempts,
                s.deferred,
                pct(s.rate),
                band_text(s.band, colour)
            );
        }
    }
    let _ = writeln!(o, "\nincidents: {}", r.incidents.len());
    for inc in &r.incidents {
        let verdict = if colour {
            format!("\x1b[1m{}\x1b[0m", inc.verdict.name())
        } else {
            inc.verdict.name().to_string()
        };
        let _ = writeln!(
            o,
            "  {verdict} · {} · {} · {} → {} · {} of {} deferred ({})",
            inc.provider,
            inc.scope,
            inc.start,
            inc.end,
            inc.deferred,
            inc.attempts,
            pct(inc.rate)
        );
        for e in &inc.evidence {
            let _ = writeln!(o, "    - {e}");
        }
        for (n, a) in inc.actions.iter().enumerate() {
            let _ = writeln!(o, "    {}. {a}", n + 1);
        }
    }
    let _ = writeln!(o, "\nanti-patterns:");
    for a in &r.anti_patterns {
        let _ = writeln!(o, "  {:<20} {}", a.kind, a.count);
        for ex in a.examples.iter().take(3) {
            let _ = writeln!(o, "      e.g. {ex}");
        }
    }
    let q = &r.queue_health;
    let _ = writeln!(
        o,
        "\nqueue: {} delivered, {} bounced, {} expired, {} still deferred",
        q.delivered, q.bounced, q.expired, q.still_queued
    );
    let line = |b: &[crate::report::Bucket]| {
        b.iter()
            .filter(|b| b.count > 0)
            .map(|b| format!("{} {}", b.label, b.count))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(o, "  attempts per recipient: {}", line(&q.retry_count));
    let _ = writeln!(o, "  age at deferral:        {}", line(&q.retry_age));
    let _ = writeln!(o, "  time to deliver:        {}", line(&q.time_to_deliver));
    o
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// A Markdown evidence report (charts are not included; use HTML for those).
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Deferral triage — evidence report\n");
    let i = &r.input;
    let _ = writeln!(
        o,
        "Input: {} ({}), {} lines, {} events, {} skipped, from {} to {} (UTC).\n",
        i.files.join(", "),
        i.format,
        i.lines,
        i.events,
        i.skipped_lines,
        i.first.as_deref().unwrap_or("-"),
        i.last.as_deref().unwrap_or("-")
    );
    let _ = writeln!(o, "## Verdicts\n");
    if r.incidents.is_empty() {
        let _ = writeln!(
            o,
            "No incident: no provider window reached the act-now band.\n"
        );
    }
    for (n, inc) in r.incidents.iter().enumerate() {
        let _ = writeln!(
            o,
            "### {}. {} — {} ({})\n\n{} → {} UTC · {} of {} attempts deferred ({})\n",
            n + 1,
            inc.verdict.name(),
            inc.provider,
            inc.scope,
            inc.start,
            inc.end,
            inc.deferred,
            inc.attempts,
            pct(inc.rate)
        );
        let _ = writeln!(o, "**Evidence**\n");
        for e in &inc.evidence {
            let _ = writeln!(o, "- {e}");
        }
        let _ = writeln!(o, "\n**Actions, in order**\n");
        for (k, a) in inc.actions.iter().enumerate() {
            let _ = writeln!(o, "{}. {a}", k + 1);
        }
        let _ = writeln!(
            o,
            "\n**SMTP samples**\n\n| time (UTC) | queue ID | sending IP | receiving host | recipient | reply |\n|---|---|---|---|---|---|"
        );
        for s in &inc.samples {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | `{}` |",
                crate::aggregate::rfc3339(s.time),
                s.queue_id,
                s.source_ip.as_deref().unwrap_or("-"),
                s.mx_host.as_deref().unwrap_or("-"),
                s.recipient,
                s.reply.replace('|', "\\|").replace('`', "'")
            );
        }
        o.push('\n');
    }
    let _ = writeln!(o, "## Segments\n");
    for dim in REPORT_DIMENSIONS {
        let rows: Vec<&Segment> = r.segments_of(dim).take(20).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "| {dim} | attempts | deferred | rate | band |\n|---|---:|---:|---:|---|"
        );
        for s in rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                s.key,
                s.attempts,
                s.deferred,
                pct(s.rate),
                s.band.name()
            );
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "## Anti-patterns\n\n| kind | count | example |\n|---|---:|---|"
    );
    for a in &r.anti_patterns {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            a.kind,
            a.count,
            a.examples
                .first()
                .map(|e| e.replace('|', "\\|"))
                .unwrap_or_default()
        );
    }
    let q = &r.queue_health;
    let _ = writeln!(
        o,
        "\n## Queue health\n\n{} delivered, {} bounced, {} expired, {} still deferred at the end of the input.\n",
        q.delivered, q.bounced, q.expired, q.still_queued
    );
    let _ = writeln!(
        o,
        "| bucket | age at deferral | time to deliver |\n|---|---:|---:|"
    );
    for (a, d) in q.retry_age.iter().zip(&q.time_to_deliver) {
        let _ = writeln!(o, "| {} | {} | {} |", a.label, a.count, d.count);
    }
    let _ = writeln!(o, "\n| attempts per recipient | recipients |\n|---|---:|");
    for b in &q.retry_count {
        let _ = writeln!(o, "| {} | {} |", b.label, b.count);
    }
    let _ = writeln!(
        o,
        "\n## Reply templates\n\n| provider | count | deferred | template |\n|---|---:|---:|---|"
    );
    for t in r.templates.iter().take(20) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | `{}` |",
            t.provider,
            t.count,
            t.deferred,
            t.template.replace('|', "\\|").replace('`', "'")
        );
    }
    o
}

/// A self-contained HTML evidence report with inline SVG charts.
pub fn html(r: &Report) -> String {
    let mut o = String::new();
    o.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mxpace deferral triage</title><style>\
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}td.n{text-align:right}\
.normal{color:#2a7a2a}.watch{color:#a67800}.act-now{color:#c00000;font-weight:bold}code{font-size:12px}\
.verdict{font-size:1.2em;font-weight:bold}</style></head><body>",
    );
    let i = &r.input;
    let _ = write!(
        o,
        "<h1>Deferral triage — evidence report</h1><p>Input: {} ({}), {} lines, {} events, {} skipped lines, from {} to {} (UTC).</p>",
        escape(&i.files.join(", ")),
        escape(&i.format),
        i.lines,
        i.events,
        i.skipped_lines,
        escape(i.first.as_deref().unwrap_or("-")),
        escape(i.last.as_deref().unwrap_or("-"))
    );
    let _ = write!(o, "<h2>Verdicts</h2>");
    if r.incidents.is_empty() {
        o.push_str("<p>No incident: no provider window reached the act-now band.</p>");
    }
    for inc in &r.incidents {
        let _ = write!(
            o,
            "<h3><span class=\"verdict\">{}</span> — {} ({})</h3><p>{} → {} UTC · {} of {} attempts deferred ({})</p><h4>Evidence</h4><ul>",
            inc.verdict.name(),
            escape(&inc.provider),
            escape(&inc.scope),
            escape(&inc.start),
            escape(&inc.end),
            inc.deferred,
            inc.attempts,
            pct(inc.rate)
        );
        for e in &inc.evidence {
            let _ = write!(o, "<li>{}</li>", escape(e));
        }
        o.push_str("</ul><h4>Actions, in order</h4><ol>");
        for a in &inc.actions {
            let _ = write!(o, "<li>{}</li>", escape(a));
        }
        o.push_str("</ol><h4>SMTP samples</h4><table><tr><th>time (UTC)</th><th>queue ID</th><th>sending IP</th><th>receiving host</th><th>recipient</th><th>reply</th></tr>");
        for s in &inc.samples {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                crate::aggregate::rfc3339(s.time),
                escape(&s.queue_id),
                escape(s.source_ip.as_deref().unwrap_or("-")),
                escape(s.mx_host.as_deref().unwrap_or("-")),
                escape(&s.recipient),
                escape(&s.reply)
            );
        }
        o.push_str("</table>");
    }
    o.push_str("<h2>Charts</h2>");
    let providers: std::collections::HashSet<&str> =
        r.segments_of("provider").map(|s| s.key.as_str()).collect();
    let (by_provider, by_path): (Vec<_>, Vec<_>) = r
        .series
        .iter()
        .partition(|s| providers.contains(s.name.as_str()));
    let bands = (0.01, 0.05);
    o.push_str(&svg::rate_chart(
        "Deferral rate per provider",
        &by_provider,
        r.window_secs,
        bands,
    ));
    o.push_str(&svg::rate_chart(
        "Deferral rate per sending IP × provider (most deferred)",
        &by_path[..by_path.len().min(8)],
        r.window_secs,
        bands,
    ));
    o.push_str(&svg::band_chart(
        "Attempts per window by band",
        &by_provider,
        r.window_secs,
    ));
    o.push_str("<h2>Segments</h2>");
    for dim in REPORT_DIMENSIONS {
        let rows: Vec<&Segment> = r.segments_of(dim).take(20).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = write!(
            o,
            "<table><tr><th>{dim}</th><th>attempts</th><th>deferred</th><th>rate</th><th>band</th></tr>"
        );
        for s in rows {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=\"{b}\">{b}</td></tr>",
                escape(&s.key),
                s.attempts,
                s.deferred,
                pct(s.rate),
                b = s.band.name()
            );
        }
        o.push_str("</table>");
    }
    o.push_str(
        "<h2>Anti-patterns</h2><table><tr><th>kind</th><th>count</th><th>examples</th></tr>",
    );
    for a in &r.anti_patterns {
        let ex: Vec<String> = a.examples.iter().map(|e| escape(e)).collect();
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=n>{}</td><td>{}</td></tr>",
            a.kind,
            a.count,
            ex.join("<br>")
        );
    }
    let q = &r.queue_health;
    let _ = write!(
        o,
        "</table><h2>Queue health</h2><p>{} delivered, {} bounced, {} expired, {} still deferred at the end of the input.</p><table><tr><th>bucket</th><th>age at deferral</th><th>time to deliver</th></tr>",
        q.delivered, q.bounced, q.expired, q.still_queued
    );
    for (a, d) in q.retry_age.iter().zip(&q.time_to_deliver) {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            a.label, a.count, d.count
        );
    }
    o.push_str("</table><table><tr><th>attempts per recipient</th><th>recipients</th></tr>");
    for b in &q.retry_count {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=n>{}</td></tr>",
            b.label, b.count
        );
    }
    o.push_str("</table><h2>Reply templates</h2><table><tr><th>provider</th><th>count</th><th>deferred</th><th>template</th><th>sample</th></tr>");
    for t in r.templates.iter().take(20) {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            escape(&t.provider),
            t.count,
            t.deferred,
            escape(&t.template),
            escape(&t.sample.reply)
        );
    }
    o.push_str("</table></body></html>\n");
    o
}
