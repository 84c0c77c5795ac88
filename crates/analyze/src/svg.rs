//! Inline SVG charts, written by hand: two chart shapes (rate lines, stacked bars) do not
//! justify a plotting library, and hand-written SVG keeps the report one small file.

use crate::report::{Band, Series};
use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// Escape text for XML/HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hhmm(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| {
            format!(
                "{:02}-{:02} {:02}:{:02}",
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_default()
}

fn frame(title: &str, out: &mut String) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        escape(title)
    );
}

/// Deferral rate (0–100 %) over time, one line per series, with the band lines.
pub fn rate_chart(title: &str, series: &[&Series], window_secs: i64, bands: (f64, f64)) -> String {
    let mut out = String::new();
    frame(title, &mut out);
    let xs: Vec<i64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.start))
        .collect();
    let (Some(&x0), Some(&x1)) = (xs.iter().min(), xs.iter().max()) else {
        out.push_str("<text x=\"60\" y=\"120\">no attempts</text></svg>");
        return out;
    };
    let x1 = x1 + window_secs;
    let rates = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| rate(p.deferred, p.attempts)));
    let y_max = rates.fold(bands.1 * 2.0, f64::max).min(1.0);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: i64| LEFT + (t - x0) as f64 / (x1 - x0).max(1) as f64 * pw;
    let y = |r: f64| TOP + ph - r / y_max * ph;
    axes(&mut out, x0, x1, y_max, pw, ph);
    for (band, colour) in [(bands.0, "#e6a700"), (bands.1, "#c00000")] {
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{}" y="{:.1}" fill="{colour}">{:.0} %</text>"##,
            LEFT + pw,
            LEFT + pw + 4.0,
            y(band) + 4.0,
            band * 100.0,
            y = y(band)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .map(|p| {
                format!(
                    "{:.1},{:.1}",
                    x(p.start + window_secs / 2),
                    y(rate(p.deferred, p.attempts))
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 14.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{}" y="{:.1}" width="10" height="3" fill="{colour}"/><text x="{}" y="{:.1}">{}</text>"#,
            W - RIGHT + 40.0,
            ly + 2.0,
            W - RIGHT + 54.0,
            ly + 6.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>");
    out
}

/// Attempts per window, stacked by the band of each (provider, window).
pub fn band_chart(title: &str, series: &[&Series], window_secs: i64) -> String {
    let mut out = String::new();
    frame(title, &mut out);
    let mut windows: std::collections::BTreeMap<i64, [u64; 3]> = std::collections::BTreeMap::new();
    for s in series {
        for p in &s.points {
            windows.entry(p.start).or_default()[p.band as usize] += p.attempts;
        }
    }
    let (Some((&x0, _)), Some((&x1, _))) = (windows.first_key_value(), windows.last_key_value())
    else {
        out.push_str("<text x=\"60\" y=\"120\">no attempts</text></svg>");
        return out;
    };
    let x1 = x1 + window_secs;
    let y_max = windows
        .values()
        .map(|v| v.iter().sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let bw = (window_secs as f64 / (x1 - x0).max(1) as f64 * pw - 1.0).max(1.0);
    let _ = write!(out, r#"<text x="8" y="{}">attempts</text>"#, TOP - 6.0);
    let _ = write!(
        out,
        r#"<text x="8" y="{}">{}</text>"#,
        TOP + 10.0,
        y_max as u64
    );
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="#444"/>"##,
        TOP + ph
    );
    for (start, counts) in &windows {
        let x = LEFT + (start - x0) as f64 / (x1 - x0).max(1) as f64 * pw;
        let mut base = TOP + ph;
        for (band, colour) in [
            (Band::Normal, "#5aa05a"),
            (Band::Watch, "#e6a700"),
            (Band::ActNow, "#c00000"),
        ] {
            let h = counts[band as usize] as f64 / y_max * ph;
            if h > 0.0 {
                let _ = write!(
                    out,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}" fill="{colour}"/>"#,
                    base - h
                );
            }
            base -= h;
        }
    }
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>"##,
        H - 10.0,
        hhmm(x0),
        LEFT + pw,
        H - 10.0,
        hhmm(x1)
    );
    for (i, (label, colour)) in [
        ("normal", "#5aa05a"),
        ("watch", "#e6a700"),
        ("act now", "#c00000"),
    ]
    .iter()
    .enumerate()
    {
        let ly = TOP + 14.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{}" y="{ly}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{label}</text>"#,
            W - RIGHT + 40.0,
            W - RIGHT + 54.0,
            ly + 9.0
        );
    }
    out.push_str("</svg>");
    out
}

fn axes(out: &mut String, x0: i64, x1: i64, y_max: f64, pw: f64, ph: f64) {
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{b}" stroke="#444"/><line x1="{LEFT}" x2="{r}" y1="{b}" y2="{b}" stroke="#444"/><text x="8" y="{t}">{:.0} %</text><text x="8" y="{b}">0 %</text><text x="{LEFT}" y="{yl}">{}</text><text x="{r}" y="{yl}" text-anchor="end">{}</text>"##,
        y_max * 100.0,
        hhmm(x0),
        hhmm(x1),
        b = TOP + ph,
        r = LEFT + pw,
        t = TOP + 4.0,
        yl = H - 10.0
    );
}

fn rate(deferred: u64, attempts: u64) -> f64 {
    if attempts == 0 {
        0.0
    } else {
        deferred as f64 / attempts as f64
    }
}
