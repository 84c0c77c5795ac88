//! Token buckets and per-source-IP state.

use std::time::Duration;

/// A token bucket refilled continuously at `rate` per minute up to `capacity`.
/// Starts full, so a quiet sender may send a burst.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    pub(crate) fn full(capacity: f64, now: Duration) -> TokenBucket {
        TokenBucket {
            tokens: capacity,
            last: now,
        }
    }

    /// Take one token if there is one (after refilling up to `now`).
    pub(crate) fn take(&mut self, now: Duration, rate_per_min: f64, capacity: f64) -> bool {
        // A clock that went backwards (caller bug) must not mint tokens: saturate at 0.
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate_per_min / 60.0).min(capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the receiver remembers about one source IP.
#[derive(Debug, Clone)]
pub(crate) struct IpState {
    pub(crate) bucket: Option<TokenBucket>,
    /// Throttled (every attempt deferred) until this time.
    pub(crate) throttled_until: Option<Duration>,
    /// Open connections right now.
    pub(crate) connections: u32,
    /// Start of the current run of clean history (warm-up counts days from here).
    pub(crate) clean_since: Duration,
}

impl IpState {
    pub(crate) fn new(now: Duration) -> IpState {
        IpState {
            bucket: None,
            throttled_until: None,
            connections: 0,
            clean_since: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_up_to_capacity() {
        let s = Duration::from_secs;
        let mut b = TokenBucket::full(2.0, s(0));
        assert!(b.take(s(0), 60.0, 2.0));
        assert!(b.take(s(0), 60.0, 2.0));
        assert!(!b.take(s(0), 60.0, 2.0));
        // 60/min = one per second.
        assert!(b.take(s(1), 60.0, 2.0));
        assert!(!b.take(s(1), 60.0, 2.0));
        // A long pause refills only up to capacity.
        assert!(b.take(s(100), 60.0, 2.0));
        assert!(b.take(s(100), 60.0, 2.0));
        assert!(!b.take(s(100), 60.0, 2.0));
        // Time going backwards does not mint tokens.
        assert!(!b.take(s(50), 60.0, 2.0));
    }
}
