//! Holds per recipient domain (tenant): when a receiver says one tenant is over its
//! quota (`450 4.7.3 Organization queue quota exceeded`), the path is fine but mail to
//! that tenant should wait — all of it, not one message at a time. Held messages are not
//! delivery attempts. After the hold, one probe goes; its success lifts the hold.

use crate::clock::Moment;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

#[derive(Debug, Clone)]
struct Entry {
    until: Moment,
    backoff: Duration,
    probe_out: bool,
}

/// Holds keyed by domain (or any key), doubling from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct DomainHolds<K> {
    first: Duration,
    max: Duration,
    holds: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> DomainHolds<K> {
    /// Holds that start at `first` and double up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        DomainHolds {
            first,
            max: max.max(first),
            holds: HashMap::new(),
        }
    }

    /// Whether a message to `key` may go now. After a hold ends exactly one message (the
    /// probe) is let through until its result is known.
    pub fn admit(&mut self, key: &K, now: Moment) -> bool {
        match self.holds.get_mut(key) {
            None => true,
            Some(e) if now < e.until || e.probe_out => false,
            Some(e) => {
                e.probe_out = true;
                true
            }
        }
    }

    /// When `key` may be asked again (None when not held).
    pub fn held_until(&self, key: &K) -> Option<Moment> {
        self.holds.get(key).map(|e| e.until)
    }

    /// Give back a probe slot taken by [`DomainHolds::admit`] when the message did not
    /// go after all (held by the path's own pacing).
    pub fn release_probe(&mut self, key: &K) {
        if let Some(e) = self.holds.get_mut(key) {
            e.probe_out = false;
        }
    }

    /// A domain-scoped deferral for `key`: hold (or hold longer).
    pub fn deferred(&mut self, key: &K, now: Moment) {
        let first = self.first;
        let max = self.max;
        let e = self.holds.entry(key.clone()).or_insert(Entry {
            until: now,
            backoff: Duration::ZERO,
            probe_out: false,
        });
        // Several replies from before the hold may arrive: only extend a hold that ended.
        if now < e.until && !e.probe_out {
            return;
        }
        e.backoff = if e.backoff.is_zero() {
            first
        } else {
            (e.backoff * 2).min(max)
        };
        e.until = now.plus(e.backoff);
        e.probe_out = false;
    }

    /// A delivery to `key`: the hold is lifted.
    pub fn delivered(&mut self, key: &K) {
        self.holds.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_tenant_waits_then_sends_one_probe_whose_success_lifts_the_hold() {
        let mut h = DomainHolds::new(Duration::from_secs(60), Duration::from_secs(1800));
        let t = Moment::from_secs;
        assert!(h.admit(&"contoso", t(0)));
        h.deferred(&"contoso", t(0));
        assert!(!h.admit(&"contoso", t(59)));
        assert!(h.admit(&"fabrikam", t(1)), "other tenants are not held");
        assert!(h.admit(&"contoso", t(60)), "the probe");
        assert!(!h.admit(&"contoso", t(61)), "only one probe");
        h.deferred(&"contoso", t(62));
        assert_eq!(h.held_until(&"contoso"), Some(t(182)), "doubled to 120 s");
        assert!(h.admit(&"contoso", t(182)));
        h.delivered(&"contoso");
        assert!(h.admit(&"contoso", t(183)) && h.admit(&"contoso", t(183)));
    }

    #[test]
    fn replies_from_before_the_hold_do_not_extend_it() {
        let mut h = DomainHolds::new(Duration::from_secs(60), Duration::from_secs(1800));
        h.deferred(&1, Moment::from_secs(0));
        h.deferred(&1, Moment::from_secs(1));
        assert_eq!(h.held_until(&1), Some(Moment::from_secs(60)));
    }
}
