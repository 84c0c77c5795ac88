//! Retry policy, pacing controller per (egress IP x provider), provider rollup (pure)
