//! Retry policy: when a deferred recipient is due again, and when it expires (pure).
//!
//! The decision follows the classifier's [`Action`]: `Retry` keeps the recipient
//! queued (never a bounce, whatever the basic code), `Bounce` returns it to the
//! sender, `Deliver` ends it. Time is passed in as milliseconds since the Unix epoch
//! so the same policy runs live and in virtual time.

use mxpace_reply::Action;
use std::time::Duration;

/// Default backoff: 5m, 10m, 20m, 40m, then hourly (the last step repeats).
/// Close to Postfix's doubling from `minimal_backoff_time` capped by
/// `maximal_backoff_time` (postconf(5)), with an hourly ceiling so a long
/// Microsoft 4.7.500 episode is probed often enough to notice when it clears.
pub const DEFAULT_SCHEDULE: [Duration; 5] = [
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(40 * 60),
    Duration::from_secs(60 * 60),
];

/// Default max age: 72 h. Sendmail's classic `Timeout.queuereturn` is 5 days and
/// Postfix's `maximal_queue_lifetime` is 5 d; Microsoft throttling episodes
/// usually clear within a day or two, and senders prefer an earlier answer.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(72 * 3600);

/// Shortest and longest max age allowed per stream (24–120 h, the range).
pub const STREAM_MAX_AGE_RANGE: (Duration, Duration) = (
    Duration::from_secs(24 * 3600),
    Duration::from_secs(120 * 3600),
);

/// When to try again and when to give up.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after attempt 1, 2, …; the last entry repeats. Never empty.
    pub schedule: Vec<Duration>,
    /// A recipient older than this is expired with a DSN.
    pub max_age: Duration,
    /// Fraction of the delay added at random (0.1 → up to +10 %), so that a
    /// burst of deferrals does not come back as one standing wave.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            schedule: DEFAULT_SCHEDULE.to_vec(),
            max_age: DEFAULT_MAX_AGE,
            jitter: 0.1,
        }
    }
}

/// What to do with a recipient after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Accepted by the receiver: done, never send again.
    Delivered,
    /// Keep queued; next attempt at this time (ms since the epoch).
    RetryAt(i64),
    /// Permanent failure: bounce with a DSN.
    Bounce,
    /// Max age reached while still failing temporarily: expire with a DSN.
    Expire,
}

impl RetryPolicy {
    /// The delay after the `attempts`-th attempt (1-based), before jitter.
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) as usize - 1).min(self.schedule.len().saturating_sub(1));
        self.schedule
            .get(index)
            .copied()
            .unwrap_or(DEFAULT_SCHEDULE[0])
    }

    /// The time (ms) a recipient received at `received_ms` expires.
    pub fn expires_at(&self, received_ms: i64) -> i64 {
        received_ms.saturating_add(self.max_age.as_millis() as i64)
    }

    /// Decide after attempt number `attempts` (1-based) ended with `action` at
    /// `now_ms`. `jitter_sample` is a number in `[0, 1)` supplied by the caller
    /// (a random source in the shell, a fixed value in tests).
    pub fn decide(
        &self,
        action: Action,
        attempts: u32,
        received_ms: i64,
        now_ms: i64,
        jitter_sample: f64,
    ) -> RetryDecision {
        match action {
            Action::Deliver => RetryDecision::Delivered,
            Action::Bounce => RetryDecision::Bounce,
            Action::Retry => {
                let expires = self.expires_at(received_ms);
                if now_ms >= expires {
                    return RetryDecision::Expire;
                }
                let base = self.base_delay(attempts).as_millis() as f64;
                let jitter = self.jitter.clamp(0.0, 1.0) * jitter_sample.clamp(0.0, 1.0);
                let delay = (base * (1.0 + jitter)) as i64;
                // The last try happens at max age, not after it: a recipient
                // deferred for 72 h gets its final attempt right at the deadline.
                RetryDecision::RetryAt(now_ms.saturating_add(delay.max(1)).min(expires))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn short() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
            max_age: Duration::from_secs(30),
            jitter: 0.0,
        }
    }

    #[test]
    fn default_schedule_is_5_10_20_40_then_hourly() {
        let p = RetryPolicy::default();
        let mins: Vec<u64> = (1..=7).map(|a| p.base_delay(a).as_secs() / 60).collect();
        assert_eq!(mins, [5, 10, 20, 40, 60, 60, 60]);
        assert_eq!(p.max_age, Duration::from_secs(72 * 3600));
    }

    #[test]
    fn a_4xx_retry_is_never_a_bounce_before_max_age() {
        let p = short();
        assert_eq!(
            p.decide(Action::Retry, 1, 0, 0, 0.0),
            RetryDecision::RetryAt(S)
        );
        assert_eq!(
            p.decide(Action::Retry, 2, 0, 5 * S, 0.0),
            RetryDecision::RetryAt(7 * S)
        );
        assert_eq!(
            p.decide(Action::Retry, 9, 0, 10 * S, 0.0),
            RetryDecision::RetryAt(14 * S)
        );
    }

    #[test]
    fn last_attempt_is_capped_at_max_age_then_expires() {
        let p = short();
        assert_eq!(
            p.decide(Action::Retry, 5, 0, 28 * S, 0.0),
            RetryDecision::RetryAt(30 * S)
        );
        assert_eq!(
            p.decide(Action::Retry, 6, 0, 30 * S, 0.0),
            RetryDecision::Expire
        );
    }

    #[test]
    fn bounce_and_deliver_follow_the_verdict() {
        let p = short();
        assert_eq!(
            p.decide(Action::Bounce, 1, 0, 0, 0.5),
            RetryDecision::Bounce
        );
        assert_eq!(
            p.decide(Action::Deliver, 3, 0, 0, 0.5),
            RetryDecision::Delivered
        );
    }

    #[test]
    fn jitter_adds_at_most_its_fraction() {
        let p = RetryPolicy {
            jitter: 0.1,
            ..short()
        };
        let RetryDecision::RetryAt(t) = p.decide(Action::Retry, 3, 0, 0, 0.999) else {
            panic!("expected a retry");
        };
        assert!((4 * S..=4400).contains(&t), "{t}");
    }
}
