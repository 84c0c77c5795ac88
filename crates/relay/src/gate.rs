//! The pacing gate: sits between "due" and "sent". The pacing controller
//! (crates/pacing, issue 5) implements [`PacingGate`]; until it is plugged in,
//! [`PassThrough`] lets everything through.
//!
//! A message the gate holds is put back with a new due time and its attempt
//! count unchanged: our own pacing is not a delivery attempt.

use mxpace_reply::Verdict;
use std::net::IpAddr;

/// The unit of pacing: one egress IP towards one provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathKey {
    /// `None` when no source pool is configured (the OS picks the address).
    pub source_ip: Option<IpAddr>,
    /// `microsoft`, `google`, … or the MX host's domain when unknown.
    pub provider: String,
}

/// What the gate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    Go,
    /// Not now; ask again at this time (ms since the epoch).
    HoldUntil(i64),
}

/// How an attempt on a path ended, reported back to the gate.
#[derive(Debug, Clone)]
pub struct GateOutcome<'a> {
    pub path: &'a PathKey,
    pub now_ms: i64,
    /// The classified reply; `None` for a connection failure without reply.
    pub verdict: Option<&'a Verdict>,
    pub connection_failed: bool,
}

/// Decides whether a connection or a message may start on a path.
pub trait PacingGate: Send + Sync {
    /// May a new connection to this path be opened now?
    fn may_connect(&self, path: &PathKey, now_ms: i64) -> GateDecision;
    /// May one more message be sent on this path now?
    fn may_send(&self, path: &PathKey, now_ms: i64) -> GateDecision;
    /// An attempt on the path ended.
    fn record(&self, outcome: GateOutcome<'_>);
    /// A connection on the path closed (so concurrency can be given back).
    fn closed(&self, _path: &PathKey) {}
}

/// The default gate: never holds anything.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl PacingGate for PassThrough {
    fn may_connect(&self, _: &PathKey, _: i64) -> GateDecision {
        GateDecision::Go
    }
    fn may_send(&self, _: &PathKey, _: i64) -> GateDecision {
        GateDecision::Go
    }
    fn record(&self, _: GateOutcome<'_>) {}
}
