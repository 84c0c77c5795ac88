//! Time as the caller gives it: the controller never reads a clock itself.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A point in time, in milliseconds since an epoch the caller chooses (the Unix epoch
/// in the relay, the start of the run in the flight simulator).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Moment(pub u64);

impl Moment {
    /// The moment `secs` seconds after the epoch.
    pub fn from_secs(secs: u64) -> Moment {
        Moment(secs.saturating_mul(1000))
    }

    /// The moment `secs` seconds (fractional) after the epoch.
    pub fn from_secs_f64(secs: f64) -> Moment {
        Moment((secs.max(0.0) * 1000.0).round() as u64)
    }

    /// Seconds since the epoch.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// This moment plus `d`.
    pub fn plus(self, d: Duration) -> Moment {
        Moment(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// Time elapsed since `earlier` (zero if `earlier` is later).
    pub fn since(self, earlier: Moment) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}
