//! Retry policy: when a deferred recipient is due again, and when it expires (pure).
