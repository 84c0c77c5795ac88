//! Inline SVG charts, written by hand: two chart shapes (rate lines, stacked bars) do not
//! justify a plotting library, and hand-written SVG keeps the report one small file.

use crate::report::{Band, Series};
use std::fmt::Write;

const W: f64 = 800.0;
const H: f64 = 260.0;
const LEFT: f64 = 56.0;
/// Room for the legend: "198.51.100.1 → microsoft" fits at 11 px.
const RIGHT: f64 = 200.0;
/// Legend names longer than this are cut (the whole name stays in a tooltip).
const LEGEND_CHARS: usize = 28;
/// Series with at most this many points get a dot (with a tooltip) at each point: a
/// single window would otherwise draw no line at all, and few points read better as dots.
const DOTS_UP_TO: usize = 48;
/// Time labels along the x axis (first and last included).
const TIME_TICKS: i64 = 5;
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
        if s.points.len() <= DOTS_UP_TO {
            for (p, xy) in s.points.iter().zip(&points) {
                let (cx, cy) = xy.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(
                    out,
                    r#"<circle cx="{cx}" cy="{cy}" r="2.6" fill="{colour}"><title>{} {} UTC: {} of {} deferred ({:.1} %)</title></circle>"#,
                    escape(&s.name),
                    hhmm(p.start),
                    p.deferred,
                    p.attempts,
                    rate(p.deferred, p.attempts) * 100.0
                );
            }
        }
        legend_entry(&mut out, i, colour, 3.0, &s.name);
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
    time_labels(&mut out, x0, x1, pw);
    for (i, (label, colour)) in [
        ("normal", "#5aa05a"),
        ("watch", "#e6a700"),
        ("act now", "#c00000"),
    ]
    .iter()
    .enumerate()
    {
        legend_entry(&mut out, i, colour, 10.0, label);
    }
    out.push_str("</svg>");
    out
}

fn axes(out: &mut String, x0: i64, x1: i64, y_max: f64, pw: f64, ph: f64) {
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{b}" stroke="#444"/><line x1="{LEFT}" x2="{r}" y1="{b}" y2="{b}" stroke="#444"/><text x="8" y="{t}">{:.0} %</text><text x="8" y="{b}">0 %</text>"##,
        y_max * 100.0,
        b = TOP + ph,
        r = LEFT + pw,
        t = TOP + 4.0,
    );
    time_labels(out, x0, x1, pw);
}

/// `TIME_TICKS` evenly spaced UTC labels under the plot, each with a tick mark.
fn time_labels(out: &mut String, x0: i64, x1: i64, pw: f64) {
    let (b, yl) = (H - BOTTOM, H - 10.0);
    for i in 0..TIME_TICKS {
        let t = x0 + (x1 - x0) * i / (TIME_TICKS - 1);
        let x = LEFT + pw * i as f64 / (TIME_TICKS - 1) as f64;
        let anchor = match i {
            0 => "start",
            i if i == TIME_TICKS - 1 => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{b}" y2="{}" stroke="#444"/><text x="{x:.1}" y="{yl}" text-anchor="{anchor}">{}</text>"##,
            b + 4.0,
            hhmm(t)
        );
    }
}

/// One legend line: a swatch `swatch_h` tall and the name (cut to `LEGEND_CHARS`, the
/// whole name in a tooltip).
fn legend_entry(out: &mut String, i: usize, colour: &str, swatch_h: f64, name: &str) {
    let ly = TOP + 14.0 * i as f64;
    let shown: String = if name.chars().count() > LEGEND_CHARS {
        name.chars()
            .take(LEGEND_CHARS - 1)
            .chain(std::iter::once('…'))
            .collect()
    } else {
        name.to_string()
    };
    let _ = write!(
        out,
        r#"<g><title>{}</title><rect x="{}" y="{:.1}" width="10" height="{swatch_h}" fill="{colour}"/><text x="{}" y="{:.1}">{}</text></g>"#,
        escape(name),
        W - RIGHT + 20.0,
        ly + 5.0 - swatch_h / 2.0,
        W - RIGHT + 34.0,
        ly + 9.0,
        escape(&shown)
    );
}

fn rate(deferred: u64, attempts: u64) -> f64 {
    if attempts == 0 {
        0.0
    } else {
        deferred as f64 / attempts as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Point;

    fn series(name: &str, points: &[(i64, u64, u64)]) -> Series {
        Series {
            name: name.to_string(),
            points: points
                .iter()
                .map(|&(start, attempts, deferred)| Point {
                    start,
                    attempts,
                    deferred,
                    band: Band::Normal,
                })
                .collect(),
        }
    }

    #[test]
    fn a_single_window_is_drawn_as_a_dot_with_its_figures() {
        let s = series("microsoft", &[(1_795_420_800, 200, 30)]);
        let svg = rate_chart("rate", &[&s], 600, (0.01, 0.05));
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(svg.contains("microsoft 11-23 08:00 UTC: 30 of 200 deferred (15.0 %)"));
    }

    #[test]
    fn long_series_are_lines_without_dots() {
        let points: Vec<_> = (0..DOTS_UP_TO as i64 + 1)
            .map(|i| (i * 600, 10, 1))
            .collect();
        let s = series("google", &points);
        let svg = rate_chart("rate", &[&s], 600, (0.01, 0.05));
        assert_eq!(svg.matches("<circle").count(), 0);
        assert_eq!(svg.matches("<polyline").count(), 1);
    }

    #[test]
    fn long_legend_names_are_cut_and_kept_whole_in_a_tooltip() {
        let name = "2001:db8:1234:5678:9abc:def0:1234:5678 → microsoft";
        let s = series(name, &[(0, 1, 0), (600, 1, 1)]);
        let svg = rate_chart("rate", &[&s], 600, (0.01, 0.05));
        assert!(svg.contains(&format!("<g><title>{name}</title>")));
        let cut: String = name.chars().take(LEGEND_CHARS - 1).collect();
        assert!(svg.contains(&format!(">{cut}…</text>")), "{svg}");
    }

    #[test]
    fn the_time_axis_has_evenly_spaced_labels() {
        let s = series("p", &[(0, 1, 0), (3000, 1, 0)]);
        let svg = band_chart("bands", &[&s], 600);
        // 0 … 3600 s in five labels: 00:00, 00:15, 00:30, 00:45, 01:00.
        for label in [
            "01-01 00:00",
            "01-01 00:15",
            "01-01 00:30",
            "01-01 00:45",
            "01-01 01:00",
        ] {
            assert!(
                svg.contains(&format!(">{label}</text>")),
                "{label} in {svg}"
            );
        }
    }
}
