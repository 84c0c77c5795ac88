//! Retry policy, pacing controller per (egress IP × provider), provider rollup (pure).

pub mod retry;
