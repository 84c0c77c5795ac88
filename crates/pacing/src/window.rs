//! Deferral rate of a path over a sliding window, and the band it falls in.

use crate::clock::Moment;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// How worried to be about a path's deferral rate (issue 5: under 1% normal, 1–5%
/// watch, over 5% act now; thresholds per provider in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Band {
    /// Deferrals are rare.
    Normal,
    /// Deferrals are rising: nothing paused yet.
    Watch,
    /// Bulk and cold mail pause; transactional keeps its reserved share.
    ActNow,
}

/// Counts of attempts and deferrals in time buckets covering the window.
#[derive(Debug, Clone)]
pub struct DeferralWindow {
    bucket_ms: u64,
    buckets: VecDeque<(u64, u32, u32)>,
    span_buckets: u64,
}

/// Number of buckets the window is cut into: fine enough that the rate falls smoothly.
const BUCKETS: u64 = 20;

impl DeferralWindow {
    /// A window of length `span`.
    pub fn new(span: Duration) -> DeferralWindow {
        let bucket_ms = (span.as_millis() as u64 / BUCKETS).max(1);
        DeferralWindow {
            bucket_ms,
            buckets: VecDeque::new(),
            span_buckets: BUCKETS,
        }
    }

    fn expire(&mut self, now: Moment) {
        let current = now.0 / self.bucket_ms;
        while let Some(&(b, _, _)) = self.buckets.front() {
            if b + self.span_buckets <= current {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Count one attempt that ended at `now`, deferred or not.
    pub fn record(&mut self, now: Moment, deferred: bool) {
        self.expire(now);
        let b = now.0 / self.bucket_ms;
        match self.buckets.back_mut() {
            Some(last) if last.0 == b => {
                last.1 += 1;
                last.2 += u32::from(deferred);
            }
            _ => self.buckets.push_back((b, 1, u32::from(deferred))),
        }
    }

    /// Attempts and deferrals within the window ending at `now`.
    pub fn counts(&mut self, now: Moment) -> (u32, u32) {
        self.expire(now);
        self.buckets
            .iter()
            .fold((0, 0), |(a, d), &(_, ba, bd)| (a + ba, d + bd))
    }

    /// Deferred share of attempts in the window (0 when there were none).
    pub fn share(&mut self, now: Moment) -> f64 {
        let (a, d) = self.counts(now);
        if a == 0 {
            0.0
        } else {
            f64::from(d) / f64::from(a)
        }
    }
}

/// A band is left for a lower one only when the share has fallen below this share of
/// the threshold that entered it: at a rate hovering on a threshold, each attempt would
/// otherwise flip the band (and pause or release bulk mail) back and forth.
pub const STEP_DOWN_MARGIN: f64 = 0.8;

/// The band after `current` for a window's counts: worse at once, better only with a
/// margin ([`STEP_DOWN_MARGIN`]); a sample under `min_attempts` changes nothing, and an
/// empty window (nothing attempted for a whole window) is normal.
pub fn next_band(
    current: Band,
    attempts: u32,
    deferred: u32,
    min_attempts: u32,
    watch: f64,
    act: f64,
) -> Band {
    if attempts == 0 {
        return Band::Normal;
    }
    if attempts < min_attempts {
        return current;
    }
    let raw = band_for(attempts, deferred, min_attempts, watch, act);
    if raw >= current {
        return raw;
    }
    let with_margin = band_for(
        attempts,
        deferred,
        min_attempts,
        watch * STEP_DOWN_MARGIN,
        act * STEP_DOWN_MARGIN,
    );
    with_margin.min(current)
}

/// The band for a window's counts: with fewer than `min_attempts` attempts the sample
/// is too small to act on, and the band is normal.
pub fn band_for(attempts: u32, deferred: u32, min_attempts: u32, watch: f64, act: f64) -> Band {
    if attempts == 0 || attempts < min_attempts {
        return Band::Normal;
    }
    let share = f64::from(deferred) / f64::from(attempts);
    if share > act {
        Band::ActNow
    } else if share >= watch {
        Band::Watch
    } else {
        Band::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_hovering_on_a_threshold_does_not_flip_the_band() {
        let next = |cur, a, d| next_band(cur, a, d, 20, 0.01, 0.05);
        assert_eq!(next(Band::Watch, 1000, 51), Band::ActNow);
        // 4.5%: under the act threshold, but not by the margin.
        assert_eq!(next(Band::ActNow, 1000, 45), Band::ActNow);
        assert_eq!(next(Band::ActNow, 1000, 39), Band::Watch);
        assert_eq!(next(Band::ActNow, 1000, 5), Band::Normal);
        assert_eq!(next(Band::Watch, 1000, 9), Band::Watch);
        assert_eq!(next(Band::Watch, 1000, 7), Band::Normal);
        // Too few attempts to judge: unchanged; none at all: normal.
        assert_eq!(next(Band::ActNow, 5, 0), Band::ActNow);
        assert_eq!(next(Band::Normal, 5, 5), Band::Normal);
        assert_eq!(next(Band::ActNow, 0, 0), Band::Normal);
    }

    #[test]
    fn the_bands_follow_the_issue_thresholds() {
        assert_eq!(band_for(1000, 5, 20, 0.01, 0.05), Band::Normal);
        assert_eq!(band_for(1000, 10, 20, 0.01, 0.05), Band::Watch);
        assert_eq!(band_for(1000, 50, 20, 0.01, 0.05), Band::Watch);
        assert_eq!(band_for(1000, 51, 20, 0.01, 0.05), Band::ActNow);
        assert_eq!(
            band_for(10, 10, 20, 0.01, 0.05),
            Band::Normal,
            "too few to judge"
        );
    }

    #[test]
    fn old_deferrals_slide_out_of_the_window() {
        let mut w = DeferralWindow::new(Duration::from_secs(600));
        for s in 0..100 {
            w.record(Moment::from_secs(s), s % 2 == 0);
        }
        assert_eq!(w.counts(Moment::from_secs(100)), (100, 50));
        assert!((w.share(Moment::from_secs(100)) - 0.5).abs() < 1e-9);
        assert_eq!(w.counts(Moment::from_secs(800)), (0, 0));
    }
}
